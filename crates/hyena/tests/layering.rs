//! The library's module layering: every `crate::…` reference in a top-level module's source
//! (comments and unit-test modules left out) goes to a module of the same or a lower rank, and
//! the module graph has no cycle. The ranks are those of the crate docs' "Layout" section:
//! formats and kernels at the bottom, then layers, models, the run-directory module, training
//! and distillation, and the apps.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

const RANKS: &[(&str, usize)] = &[
    ("error", 0),
    ("interrupt", 0),
    ("config", 0),
    ("params", 0),
    ("plot", 0),
    ("memory", 0),
    ("io", 1),
    ("ops", 1),
    ("layers", 2),
    ("data", 2),
    ("models", 3),
    ("baselines", 3),
    ("checkpoint", 4),
    ("train", 5),
    ("distill", 5),
    ("apps", 6),
    ("testing", 6),
];

/// Items the crate root re-exports (`pub use` in lib.rs), by the module they come from.
const ROOT_ITEMS: &[(&str, &str)] = &[
    ("Error", "error"),
    ("Result", "error"),
    ("HyenaConfig", "config"),
    ("FilterConfig", "config"),
    ("FilterLayout", "config"),
];

fn rank(m: &str) -> Option<usize> {
    RANKS.iter().find(|(n, _)| *n == m).map(|r| r.1)
}

/// The source without `//` comments and without a trailing `#[cfg(test)] mod tests { … }`.
fn code(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => text,
    };
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Top-level modules named by `crate::x` paths and `use crate::{x::…, y::…}` groups.
fn referenced(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + 7..];
        if let Some(group) = rest.strip_prefix('{') {
            // `use crate::{a::b, c::{d, e}}`: the first segment of each top-level item.
            let (mut depth, mut start) = (0usize, true);
            for (j, ch) in group.char_indices() {
                match ch {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => start = true,
                    c if start && (c.is_ascii_alphabetic() || c == '_') => {
                        out.insert(ident(&group[j..]));
                        start = false;
                    }
                    c if start && !c.is_whitespace() => start = false,
                    _ => {}
                }
            }
        } else {
            out.insert(ident(rest));
        }
    }
    out
}

fn walk(dir: &Path, files: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).expect("readable source dir") {
        let p = e.expect("dir entry").path();
        if p.is_dir() {
            walk(&p, files);
        } else if p.extension().is_some_and(|x| x == "rs") {
            files.push(p);
        }
    }
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    walk(&src, &mut files);
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in files {
        let rel = f.strip_prefix(&src).expect("under src");
        let top = rel
            .components()
            .next()
            .expect("non-empty")
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        if top == "lib" {
            continue;
        }
        let text = std::fs::read_to_string(&f).expect("readable");
        let refs = referenced(&code(&text));
        let e = g.entry(top.clone()).or_default();
        let refs = refs.into_iter().map(|m| {
            ROOT_ITEMS
                .iter()
                .find(|(item, _)| *item == m)
                .map_or(m.clone(), |(_, module)| module.to_string())
        });
        e.extend(refs.filter(|m| *m != top && m != "self" && m != "super"));
    }
    g
}

#[test]
fn every_module_has_a_rank_and_imports_only_downwards() {
    let g = graph();
    let mut bad = Vec::new();
    for (m, deps) in &g {
        let rm = rank(m).unwrap_or_else(|| panic!("module `{m}` has no rank in RANKS"));
        for d in deps {
            let rd = rank(d).unwrap_or_else(|| panic!("`{m}` refers to unknown module `{d}`"));
            if rd > rm {
                bad.push(format!("{m} (rank {rm}) -> {d} (rank {rd})"));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "imports that run back up:\n{}",
        bad.join("\n")
    );
}

#[test]
fn the_module_graph_has_no_cycle() {
    let g = graph();
    // Depth-first search with colours: reaching a module still on the stack is a cycle.
    fn visit<'a>(
        m: &'a str,
        g: &'a BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<&'a str, u8>,
        stack: &mut Vec<&'a str>,
    ) -> Option<Vec<String>> {
        match state.get(m) {
            Some(1) => {
                let i = stack.iter().position(|s| *s == m).unwrap_or(0);
                let mut cyc: Vec<String> = stack[i..].iter().map(|s| s.to_string()).collect();
                cyc.push(m.to_string());
                return Some(cyc);
            }
            Some(2) => return None,
            _ => {}
        }
        state.insert(m, 1);
        stack.push(m);
        for d in g.get(m).into_iter().flatten() {
            if let Some(c) = visit(d, g, state, stack) {
                return Some(c);
            }
        }
        stack.pop();
        state.insert(m, 2);
        None
    }
    let mut state = BTreeMap::new();
    for m in g.keys() {
        let cyc = visit(m, &g, &mut state, &mut Vec::new());
        assert!(
            cyc.is_none(),
            "cycle: {}",
            cyc.unwrap_or_default().join(" -> ")
        );
    }
}

#[test]
fn the_scanner_sees_grouped_and_plain_imports() {
    let refs = referenced(&code(
        "use crate::{error::Result, models::{a, b}};\n// crate::apps in a comment\nfn f() { crate::ops::x(); }",
    ));
    let want: BTreeSet<String> = ["error", "models", "ops"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(refs, want);
}
