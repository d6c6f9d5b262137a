//! A deliberately small YAML reader for flat model configs (the vortex / Evo 2 `*.yml` files):
//! one top-level mapping of `key: value` lines, read into a JSON object.
//!
//! Supported: `#` comments (whole-line, and trailing after whitespace, never inside quotes);
//! blank lines; CRLF line ends; a leading byte-order mark; scalars: integers, floats (`1e-6`,
//! `0.000001`, `.5`), `true`/`True`/`TRUE`/`false`/…, `null`/`Null`/`NULL`/`~`, bare strings
//! (`torch.nn.init.zeros_`), single-quoted (`''` is a quote) and double-quoted strings (with
//! `\\ \" \n \t \r \0 \/ \xXX \uXXXX` escapes); flow lists of scalars on one line (`[3,10,17]`,
//! `[]`); block lists of scalars (`key:` then `- 3` lines, indented or not); `key:` with nothing
//! after it is null.
//!
//! Everything else is an error naming the file, the line and what is not supported: nested
//! mappings, anchors `&` and aliases `*`, tags `!!`, block scalars `|` `>`, flow mappings `{}`,
//! nested lists, multi-line values, documents markers `---` / `...` and directives `%`, tabs
//! in indentation, quoted or complex keys, duplicate keys, and floats that are not finite.
//! Numbers follow YAML 1.2 (so `1e-6` is a float; `yes`/`on` are strings, `0x10` a string).

use std::path::Path;

use serde_json::{Map, Number, Value};

use crate::error::{Error, Result};

/// Parse the config `text` (from the file `path`, which names it in errors) into a JSON object.
pub fn parse(text: &str, path: &Path) -> Result<Value> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut map = Map::new();
    // Line of each key, for duplicate-key errors.
    let mut key_lines: Vec<(String, usize)> = Vec::new();
    // The key waiting for its block list (`key:` with nothing after it), with its line and the
    // items so far, and the items' indentation once known.
    let mut pending: Option<(String, usize, Vec<Value>, Option<usize>)> = None;

    let err = |line: usize, msg: String| {
        Error::format(
            path,
            format!("line {line}: {msg}; only flat `key: value` configs are supported"),
        )
    };

    for (i, raw) in text.split('\n').enumerate() {
        let lineno = i + 1;
        let raw = raw.strip_suffix('\r').unwrap_or(raw);
        let indent = raw.len() - raw.trim_start_matches(' ').len();
        let rest = raw.get(indent..).unwrap_or("");
        if rest.starts_with('\t') {
            // A tab after the indentation spaces: allowed only on lines with nothing else.
            if strip_comment(rest).trim().is_empty() {
                continue;
            }
            return Err(err(
                lineno,
                "a tab in the indentation (YAML indents with spaces)".into(),
            ));
        }
        let content = strip_comment(rest).trim_end_matches([' ', '\t']);
        if content.is_empty() {
            continue;
        }
        if indent == 0 && (content == "---" || content.starts_with("--- ") || content == "...") {
            return Err(err(
                lineno,
                format!("document marker `{content}` (one document per file is supported)"),
            ));
        }
        if indent == 0 && content.starts_with('%') {
            return Err(err(lineno, "a YAML directive (`%…`)".into()));
        }

        // A block-list item of the pending key.
        if let Some((key, _, items, item_indent)) = pending.as_mut() {
            if content == "-" || content.starts_with("- ") {
                let want = *item_indent.get_or_insert(indent);
                if indent != want {
                    return Err(err(
                        lineno,
                        format!(
                            "list item of `{key}` indented by {indent} spaces, the items above by \
                             {want} (nested lists are not supported)"
                        ),
                    ));
                }
                let value = content
                    .get(1..)
                    .unwrap_or("")
                    .trim_start_matches([' ', '\t']);
                if value.is_empty() {
                    return Err(err(
                        lineno,
                        format!("an empty list item in `{key}` (write `null` if meant)"),
                    ));
                }
                if value.starts_with('[') || value.starts_with('-') && value.get(1..2) == Some(" ")
                {
                    return Err(err(
                        lineno,
                        format!("a nested list in `{key}` (lists of scalars only)"),
                    ));
                }
                let v = scalar(value, "a list item").map_err(|m| err(lineno, m))?;
                items.push(v);
                continue;
            }
            if indent > 0 {
                let what = if item_indent.is_some() {
                    "a line continuing a list item, or a mapping inside a list"
                } else {
                    "a nested mapping"
                };
                return Err(err(lineno, format!("{what} under `{key}`")));
            }
            // The list (or the null) ends at the next top-level line.
            let (key, _, items, item_indent) = pending.take().unwrap_or_default();
            let v = if item_indent.is_some() {
                Value::Array(items)
            } else {
                Value::Null
            };
            map.insert(key, v);
        }

        if indent > 0 {
            return Err(err(
                lineno,
                "an indented line outside a list (nested mappings and multi-line values are not \
                 supported)"
                    .into(),
            ));
        }
        if content == "-" || content.starts_with("- ") {
            return Err(err(
                lineno,
                "a list item without a key above it (the top level must be a mapping)".into(),
            ));
        }
        let (key, value) = split_key(content).map_err(|m| err(lineno, m))?;
        if let Some((_, first)) = key_lines.iter().find(|(k, _)| *k == key) {
            return Err(err(
                lineno,
                format!("duplicate key `{key}` (first on line {first})"),
            ));
        }
        key_lines.push((key.to_string(), lineno));
        if value.is_empty() {
            pending = Some((key.to_string(), lineno, Vec::new(), None));
            continue;
        }
        let v = if value.starts_with('[') {
            flow_list(value).map_err(|m| err(lineno, format!("`{key}`: {m}")))?
        } else {
            scalar(value, "a value").map_err(|m| err(lineno, format!("`{key}`: {m}")))?
        };
        map.insert(key.to_string(), v);
    }
    if let Some((key, _, items, item_indent)) = pending {
        let v = if item_indent.is_some() {
            Value::Array(items)
        } else {
            Value::Null
        };
        map.insert(key, v);
    }
    Ok(Value::Object(map))
}

/// `line` without its comment: from a `#` that starts the line or follows a space or tab,
/// outside quotes.
fn strip_comment(line: &str) -> &str {
    let mut quote: Option<char> = None;
    let mut prev_space = true;
    let mut chars = line.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match quote {
            Some('"') => {
                if c == '\\' {
                    chars.next();
                } else if c == '"' {
                    quote = None;
                }
            }
            Some(_) => {
                if c == '\'' {
                    if chars.peek().map(|&(_, n)| n) == Some('\'') {
                        chars.next();
                    } else {
                        quote = None;
                    }
                }
            }
            None => {
                // A quote opens a quoted scalar only where a scalar starts.
                if (c == '"' || c == '\'') && (prev_space || starts_scalar(line, i)) {
                    quote = Some(c);
                } else if c == '#' && prev_space {
                    return line.get(..i).unwrap_or("");
                }
            }
        }
        prev_space = c == ' ' || c == '\t';
    }
    line
}

/// Whether a scalar may start at byte `i` of `line` (after `[`, `,` or `: `).
fn starts_scalar(line: &str, i: usize) -> bool {
    let before = line.get(..i).unwrap_or("").trim_end_matches([' ', '\t']);
    before.is_empty() || before.ends_with('[') || before.ends_with(',') || before.ends_with(':')
}

/// `key: value` → `(key, value)`; the value is empty for `key:`.
fn split_key(content: &str) -> std::result::Result<(&str, &str), String> {
    let first = content.chars().next().unwrap_or(' ');
    if first == '"' || first == '\'' {
        return Err("a quoted key (plain keys only)".into());
    }
    if first == '?' {
        return Err("a complex key (`? `)".into());
    }
    if "&*!|>{}[],@`".contains(first) {
        return Err(format!(
            "a line starting with `{first}` where a key should be"
        ));
    }
    // The key ends at the first `:` followed by a space, a tab or the end of the line.
    let bytes = content.as_bytes();
    let colon = (0..bytes.len()).find(|&i| {
        bytes.get(i) == Some(&b':') && matches!(bytes.get(i + 1), None | Some(b' ' | b'\t'))
    });
    let Some(colon) = colon else {
        return Err(format!("`{}` is not a `key: value` line", shorten(content)));
    };
    let key = content
        .get(..colon)
        .unwrap_or("")
        .trim_end_matches([' ', '\t']);
    let value = content
        .get(colon + 1..)
        .unwrap_or("")
        .trim_matches([' ', '\t']);
    if key.is_empty() {
        return Err("an empty key".into());
    }
    Ok((key, value))
}

fn shorten(s: &str) -> String {
    let short: String = s.chars().take(40).collect();
    if short.len() < s.len() {
        format!("{short}…")
    } else {
        short
    }
}

/// `[a, b, …]` of scalars, on one line.
fn flow_list(text: &str) -> std::result::Result<Value, String> {
    let Some(inner) = text.strip_prefix('[').and_then(|t| t.strip_suffix(']')) else {
        return Err(
            "a flow list must end with `]` on the same line (multi-line lists are not \
             supported)"
                .into(),
        );
    };
    // Split on commas outside quotes.
    let mut items: Vec<&str> = Vec::new();
    let mut quote: Option<char> = None;
    let mut start = 0;
    let mut chars = inner.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match quote {
            Some('"') => {
                if c == '\\' {
                    chars.next();
                } else if c == '"' {
                    quote = None;
                }
            }
            Some(_) => {
                if c == '\'' {
                    if chars.peek().map(|&(_, n)| n) == Some('\'') {
                        chars.next();
                    } else {
                        quote = None;
                    }
                }
            }
            None => match c {
                '"' | '\'' if inner.get(start..i).unwrap_or("").trim().is_empty() => {
                    quote = Some(c)
                }
                ',' => {
                    items.push(inner.get(start..i).unwrap_or(""));
                    start = i + 1;
                }
                '[' | ']' | '{' | '}' => {
                    return Err(format!(
                        "`{c}` inside a flow list (nested lists and mappings are not supported)"
                    ))
                }
                _ => {}
            },
        }
    }
    if quote.is_some() {
        return Err("an unterminated quoted string in a flow list".into());
    }
    let last = inner.get(start..).unwrap_or("");
    // A trailing comma is allowed (`[1, 2,]`), as is the empty list `[]`.
    if !last.trim().is_empty() || !items.is_empty() {
        items.push(last);
    }
    let n = items.len();
    let mut out = Vec::with_capacity(n);
    for (k, item) in items.into_iter().enumerate() {
        let item = item.trim_matches([' ', '\t']);
        if item.is_empty() {
            if k + 1 == n && n > 1 {
                continue; // the trailing comma
            }
            return Err(format!("an empty item (item {}) in a flow list", k + 1));
        }
        out.push(scalar(item, "a list item")?);
    }
    Ok(Value::Array(out))
}

/// One scalar (`what` says where, for errors).
fn scalar(text: &str, what: &str) -> std::result::Result<Value, String> {
    let first = text.chars().next().unwrap_or(' ');
    let unsupported = match first {
        '&' => Some("an anchor (`&`)"),
        '*' => Some("an alias (`*`)"),
        '!' => Some("a tag (`!`)"),
        '|' | '>' => Some("a block scalar (`|` or `>`)"),
        '{' => Some("a flow mapping (`{…}`)"),
        '[' => Some("a nested list"),
        '@' | '`' => Some("a reserved character (`@` or `` ` ``) at the start of a scalar"),
        '%' => Some("`%` at the start of a scalar"),
        ']' | '}' | ',' => Some("a stray flow indicator"),
        _ => None,
    };
    if let Some(u) = unsupported {
        return Err(format!("{what} is {u}, which is not supported"));
    }
    if first == '"' {
        return double_quoted(text).map(Value::String);
    }
    if first == '\'' {
        return single_quoted(text).map(Value::String);
    }
    if first == '-' && (text.len() == 1 || text.get(1..2) == Some(" ")) {
        return Err(format!("{what} is a block list on the key's line"));
    }
    if text.contains(": ") || text.ends_with(':') {
        return Err(format!(
            "{what} `{}` holds `: ` (a nested mapping); quote it if it is text",
            shorten(text)
        ));
    }
    if text.contains(" #") {
        return Err(format!("{what} `{}` holds ` #`", shorten(text)));
    }
    Ok(match text {
        "null" | "Null" | "NULL" | "~" => Value::Null,
        "true" | "True" | "TRUE" => Value::Bool(true),
        "false" | "False" | "FALSE" => Value::Bool(false),
        _ => {
            if let Some(n) = integer(text) {
                return n.ok_or_else(|| format!("{what} `{text}` is an integer out of range"));
            }
            if is_float(text) {
                let f: f64 = text
                    .parse()
                    .map_err(|_| format!("{what} `{text}` is not a number"))?;
                return Number::from_f64(f)
                    .map(Value::Number)
                    .ok_or_else(|| format!("{what} `{text}` is not a finite number"));
            }
            let special = text.trim_start_matches(['+', '-']);
            if matches!(special, ".inf" | ".Inf" | ".INF" | ".nan" | ".NaN" | ".NAN") {
                return Err(format!(
                    "{what} `{text}` is infinite or NaN, which JSON cannot hold"
                ));
            }
            Value::String(text.to_string())
        }
    })
}

/// `Some(Some(n))` for a decimal integer that fits, `Some(None)` for one that does not,
/// `None` if `text` is not a decimal integer.
fn integer(text: &str) -> Option<Option<Value>> {
    let digits = text.strip_prefix(['+', '-']).unwrap_or(text);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let t = text.strip_prefix('+').unwrap_or(text);
    if let Ok(i) = t.parse::<i64>() {
        return Some(Some(Value::from(i)));
    }
    Some(t.parse::<u64>().ok().map(Value::from))
}

/// YAML 1.2 core float: `[-+]? ( \.[0-9]+ | [0-9]+ ( \.[0-9]* )? ) ( [eE] [-+]? [0-9]+ )?`.
fn is_float(text: &str) -> bool {
    let b = text.as_bytes();
    let mut i = usize::from(matches!(b.first(), Some(b'+' | b'-')));
    let digits = |i: &mut usize| {
        let s = *i;
        while b.get(*i).is_some_and(u8::is_ascii_digit) {
            *i += 1;
        }
        *i - s
    };
    let int_digits = digits(&mut i);
    let mut frac_digits = 0;
    if b.get(i) == Some(&b'.') {
        i += 1;
        frac_digits = digits(&mut i);
    }
    if int_digits == 0 && frac_digits == 0 {
        return false;
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        if digits(&mut i) == 0 {
            return false;
        }
    }
    i == b.len()
}

fn single_quoted(text: &str) -> std::result::Result<String, String> {
    let inner = text.get(1..).unwrap_or("");
    let mut out = String::new();
    let mut chars = inner.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\'' {
            if chars.peek() == Some(&'\'') {
                chars.next();
                out.push('\'');
                continue;
            }
            let rest: String = chars.collect();
            if !rest.trim().is_empty() {
                return Err(format!(
                    "text `{}` after a closing quote",
                    shorten(rest.trim())
                ));
            }
            return Ok(out);
        }
        out.push(c);
    }
    Err("an unterminated single-quoted string (multi-line strings are not supported)".into())
}

fn double_quoted(text: &str) -> std::result::Result<String, String> {
    let inner = text.get(1..).unwrap_or("");
    let mut out = String::new();
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                let rest: String = chars.collect();
                if !rest.trim().is_empty() {
                    return Err(format!(
                        "text `{}` after a closing quote",
                        shorten(rest.trim())
                    ));
                }
                return Ok(out);
            }
            '\\' => {
                let e = chars.next().ok_or("a `\\` at the end of a string")?;
                let hex = |n: usize, chars: &mut std::str::Chars<'_>| {
                    let h: String = chars.take(n).collect();
                    u32::from_str_radix(&h, 16)
                        .ok()
                        .filter(|_| h.len() == n)
                        .and_then(char::from_u32)
                        .ok_or_else(|| format!("a bad escape `\\{e}{h}`"))
                };
                out.push(match e {
                    '\\' => '\\',
                    '"' => '"',
                    '/' => '/',
                    'n' => '\n',
                    't' => '\t',
                    'r' => '\r',
                    '0' => '\0',
                    'x' => hex(2, &mut chars)?,
                    'u' => hex(4, &mut chars)?,
                    other => return Err(format!("an unsupported escape `\\{other}`")),
                });
            }
            c => out.push(c),
        }
    }
    Err("an unterminated double-quoted string (multi-line strings are not supported)".into())
}
