//! The non-tensor state-dict entries that are *skipped* (not constructed, not refused): the
//! Transformer Engine objects of released Evo 2 checkpoints.
//!
//! - `*._extra_state` entries of Transformer Engine linear layers are `io.BytesIO` objects
//!   (FP8 scaling metadata, itself a `torch.save` stream). Pickled (protocol 2) they read, in
//!   the parse tree, as a call of `_io.BytesIO` with no arguments whose `BUILD` state is the
//!   tuple `(bytes, position, dict or None)`; the bytes are `Bytes` (protocol 3+), a call of
//!   `_codecs.encode(text, "latin1")` (protocol 2), or a call of `__builtin__.bytes()` when
//!   empty.
//! - Transformer Engine recipe objects (`transformer_engine.common.recipe.DelayedScaling`, its
//!   `Format` enum members, which pickle as a call of `Format` on a `_FormatHelper` named
//!   tuple, and `_OverrideLinearPrecision`) built from plain data only.
//!
//! Each shape is checked in full: anything else inside such an object (a call of `posix.system`
//! where the bytes should be, an unknown class in a recipe field) refuses the entry, so a
//! skipped object cannot smuggle a call past the allowlist.

use std::fmt;

use super::pickle::{printable, Call, Value};

/// A state-dict entry that is not loaded, and what it was.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Skipped {
    /// A tensor of a non-float dtype (`"int64"`, `"bool"`, ...): not a weight.
    NonFloat { dtype: String, shape: Vec<usize> },
    /// An `io.BytesIO` object of `bytes` bytes (Transformer Engine `_extra_state`).
    BytesIo { bytes: u64 },
    /// A Transformer Engine recipe object: its class (`transformer_engine.common.recipe.X`, or
    /// `...Format.E4M3` for an enum member named by attribute).
    TeRecipe { class: String },
}

impl fmt::Display for Skipped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Skipped::NonFloat { dtype, shape } => write!(f, "{dtype} tensor {shape:?}"),
            Skipped::BytesIo { bytes } => write!(f, "io.BytesIO ({bytes} bytes)"),
            Skipped::TeRecipe { class } => write!(f, "{class} object"),
        }
    }
}

/// The module of the Transformer Engine recipe classes.
pub const TE_RECIPE: &str = "transformer_engine.common.recipe";
/// The recipe classes that may appear (all plain-data descriptions of an FP8 recipe).
const RECIPE_CLASSES: [&str; 4] = [
    "DelayedScaling",
    "Format",
    "_FormatHelper",
    "_OverrideLinearPrecision",
];

fn is_recipe_class(v: &Value) -> bool {
    matches!(v.as_global(), Some((m, n)) if m == TE_RECIPE && RECIPE_CLASSES.contains(&n))
}

fn is_getattr(v: &Value) -> bool {
    matches!(v.as_global(), Some(("builtins" | "__builtin__", "getattr")))
}

/// `None` if `v` is not one of the skippable kinds (the caller refuses it as before);
/// otherwise what it is, or why this instance of the kind is refused.
pub(crate) fn skippable(v: &Value) -> Option<Result<Skipped, String>> {
    let Value::Call(c) = v else {
        return None;
    };
    if matches!(c.func.as_global(), Some(("_io" | "io", "BytesIO"))) {
        return Some(bytes_io(c).map(|bytes| Skipped::BytesIo { bytes }));
    }
    if is_recipe_class(&c.func) {
        let (_, name) = c.func.as_global().unwrap_or_default();
        let class = format!("{TE_RECIPE}.{name}");
        return Some(recipe(v).map(|()| Skipped::TeRecipe { class }));
    }
    if is_getattr(&c.func) {
        if let Value::Tuple(a) = &c.args {
            if let [cls, Value::Str(attr)] = a.as_slice() {
                if is_recipe_class(cls) {
                    let (_, name) = cls.as_global().unwrap_or_default();
                    let class = format!("{TE_RECIPE}.{name}.{}", printable(attr));
                    return Some(recipe(v).map(|()| Skipped::TeRecipe { class }));
                }
            }
        }
    }
    None
}

const BYTES_IO: &str = "an `io.BytesIO` object";

/// Nothing is attached to `c` beyond its arguments and state.
fn no_extras(c: &Call, what: &str) -> Result<(), String> {
    let kwargs_ok = match &c.kwargs {
        None => true,
        Some(Value::Dict(d)) => d.is_empty(),
        Some(_) => false,
    };
    if !kwargs_ok || !c.list_items.is_empty() || !c.dict_items.is_empty() {
        return Err(format!(
            "is {what} with keyword arguments or items attached, which it never has"
        ));
    }
    Ok(())
}

/// The length of the `io.BytesIO` `c`, or why it is refused.
fn bytes_io(c: &Call) -> Result<u64, String> {
    no_extras(c, BYTES_IO)?;
    let initial = match &c.args {
        Value::Tuple(a) => match a.as_slice() {
            [] => 0,
            [b] => bytes_len(b).map_err(|e| format!("is {BYTES_IO} whose argument {e}"))?,
            _ => return Err(format!("is {BYTES_IO} with {} arguments", a.len())),
        },
        other => {
            return Err(format!(
                "is {BYTES_IO} with {} as arguments, not a tuple",
                other.describe()
            ))
        }
    };
    let Some(state) = &c.state else {
        return Ok(initial);
    };
    // BytesIO.__getstate__: (contents, position, __dict__ or None).
    let Value::Tuple(s) = state else {
        return Err(format!(
            "is {BYTES_IO} whose state is {}, not a (bytes, position, dict) tuple",
            state.describe()
        ));
    };
    let [contents, pos, dict] = s.as_slice() else {
        return Err(format!(
            "is {BYTES_IO} whose state has {} items, not 3 (bytes, position, dict)",
            s.len()
        ));
    };
    let n = bytes_len(contents).map_err(|e| format!("is {BYTES_IO} whose state {e}"))?;
    if !matches!(pos, Value::Int(_)) {
        return Err(format!(
            "is {BYTES_IO} whose position is {}, not an int",
            pos.describe()
        ));
    }
    match dict {
        Value::None => {}
        Value::Dict(_) => plain(dict).map_err(|e| format!("is {BYTES_IO} whose attributes {e}"))?,
        other => {
            return Err(format!(
                "is {BYTES_IO} whose attributes are {}, not a dict",
                other.describe()
            ))
        }
    }
    Ok(n)
}

/// The length of a pickled `bytes` value, or what is there instead ("holds …").
fn bytes_len(v: &Value) -> Result<u64, String> {
    let bad = || {
        format!(
            "holds {} where its bytes should be, which is not allowed",
            v.describe()
        )
    };
    match v {
        Value::Bytes(b) => Ok(b.len() as u64),
        Value::Call(c) => {
            no_extras(c, "a bytes value").map_err(|_| bad())?;
            if c.state.is_some() {
                return Err(bad());
            }
            let args = match &c.args {
                Value::Tuple(a) => a.as_slice(),
                _ => return Err(bad()),
            };
            match (c.func.as_global(), args) {
                // Protocol 2 writes bytes as `_codecs.encode(text, "latin1")`: one byte a char.
                (Some(("_codecs", "encode")), [Value::Str(text), Value::Str(enc)])
                    if enc == "latin1" || enc == "latin-1" =>
                {
                    if text.chars().any(|ch| u32::from(ch) > 0xff) {
                        return Err(
                            "holds a latin-1 byte string with characters above U+00FF".into()
                        );
                    }
                    Ok(text.chars().count() as u64)
                }
                // ... and `b""` as `bytes()`.
                (Some(("__builtin__" | "builtins", "bytes")), []) => Ok(0),
                _ => Err(bad()),
            }
        }
        _ => Err(bad()),
    }
}

/// `Ok` if `v` holds only plain data (no global, call or storage anywhere in it).
fn plain(v: &Value) -> Result<(), String> {
    let mut stack = vec![v];
    while let Some(x) = stack.pop() {
        match x {
            Value::Global { .. } | Value::Call(_) | Value::PersId(_) => {
                return Err(format!("hold {}, which is not allowed", x.describe()))
            }
            Value::Tuple(items) | Value::List(items) | Value::Set(items) => stack.extend(items),
            Value::Dict(items) => {
                for (k, val) in items {
                    stack.push(k);
                    stack.push(val);
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// `Ok` if the recipe object `v` is built from recipe classes and plain data only.
fn recipe(v: &Value) -> Result<(), String> {
    let refuse = |x: &Value| {
        Err(format!(
            "is a Transformer Engine recipe object holding {}, which is not allowed (allowed \
             inside: plain data and the classes {})",
            x.describe(),
            RECIPE_CLASSES
                .map(|n| format!("{TE_RECIPE}.{n}"))
                .join(", ")
        ))
    };
    let mut stack = vec![v];
    while let Some(x) = stack.pop() {
        match x {
            Value::Global { .. } if is_recipe_class(x) => {}
            Value::Global { .. } | Value::PersId(_) => return refuse(x),
            Value::Call(c) => {
                if is_getattr(&c.func) {
                    // An enum member by name: getattr(<recipe class>, "NAME") and nothing more.
                    let ok = matches!(&c.args, Value::Tuple(a)
                        if matches!(a.as_slice(), [cls, Value::Str(_)] if is_recipe_class(cls)))
                        && c.state.is_none()
                        && no_extras(c, "").is_ok();
                    if !ok {
                        return refuse(x);
                    }
                    continue;
                }
                if !is_recipe_class(&c.func) {
                    return refuse(x);
                }
                stack.push(&c.args);
                stack.extend(&c.kwargs);
                stack.extend(&c.state);
                stack.extend(&c.list_items);
                for (k, val) in &c.dict_items {
                    stack.push(k);
                    stack.push(val);
                }
            }
            Value::Tuple(items) | Value::List(items) | Value::Set(items) => stack.extend(items),
            Value::Dict(items) => {
                for (k, val) in items {
                    stack.push(k);
                    stack.push(val);
                }
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(m: &str, n: &str) -> Value {
        Value::Global {
            module: m.into(),
            name: n.into(),
        }
    }

    fn call(func: Value, args: Vec<Value>, state: Option<Value>) -> Value {
        Value::Call(Box::new(Call {
            func,
            args: Value::Tuple(args),
            kwargs: None,
            state,
            list_items: Vec::new(),
            dict_items: Vec::new(),
        }))
    }

    fn s(x: &str) -> Value {
        Value::Str(x.into())
    }

    fn bio(state: Option<Value>) -> Value {
        call(g("_io", "BytesIO"), vec![], state)
    }

    fn system() -> Value {
        call(g("posix", "system"), vec![s("echo pwned")], None)
    }

    #[test]
    fn bytes_io_forms() {
        let enc = call(
            g("_codecs", "encode"),
            vec![s("ab\u{ff}"), s("latin1")],
            None,
        );
        let st = |b: Value, d: Value| Some(Value::Tuple(vec![b, Value::Int(3), d]));
        assert_eq!(
            skippable(&bio(st(enc.clone(), Value::None))),
            Some(Ok(Skipped::BytesIo { bytes: 3 }))
        );
        assert_eq!(
            skippable(&bio(st(Value::Bytes(vec![0; 7]), Value::Dict(vec![])))),
            Some(Ok(Skipped::BytesIo { bytes: 7 }))
        );
        let empty = call(g("__builtin__", "bytes"), vec![], None);
        assert_eq!(
            skippable(&bio(st(empty, Value::None))),
            Some(Ok(Skipped::BytesIo { bytes: 0 }))
        );
        assert_eq!(
            skippable(&bio(None)),
            Some(Ok(Skipped::BytesIo { bytes: 0 }))
        );
        assert_eq!(
            Skipped::BytesIo { bytes: 312 }.to_string(),
            "io.BytesIO (312 bytes)"
        );
    }

    #[test]
    fn bytes_io_cannot_carry_a_call() {
        let st = |b: Value, d: Value| Some(Value::Tuple(vec![b, Value::Int(0), d]));
        let cases = [
            bio(st(system(), Value::None)),
            bio(st(
                Value::Bytes(vec![]),
                Value::Dict(vec![(s("x"), system())]),
            )),
            call(g("_io", "BytesIO"), vec![system()], None),
            // bytes() with an argument is a call of bytes on something: refused.
            bio(st(
                call(g("builtins", "bytes"), vec![system()], None),
                Value::None,
            )),
            // _codecs.encode with another codec.
            bio(st(
                call(g("_codecs", "encode"), vec![s("x"), s("rot13")], None),
                Value::None,
            )),
        ];
        for v in &cases {
            match skippable(v) {
                // Named by the outermost call that is not a bytes value.
                Some(Err(e)) => assert!(
                    e.contains("not allowed")
                        && ["posix.system", "_codecs.encode", "builtins.bytes"]
                            .iter()
                            .any(|n| e.contains(n)),
                    "{e}"
                ),
                other => panic!("{v:?}: {other:?}"),
            }
        }
        // Wrong state shapes.
        for st in [Value::Int(1), Value::Tuple(vec![Value::Bytes(vec![])])] {
            assert!(matches!(skippable(&bio(Some(st))), Some(Err(_))));
        }
    }

    #[test]
    fn recipes_and_what_they_may_hold() {
        let r = |n: &str| g(TE_RECIPE, n);
        let helper = call(
            r("_FormatHelper"),
            vec![Value::Int(448), Value::Int(448)],
            None,
        );
        let format = call(r("Format"), vec![helper], None);
        assert_eq!(
            skippable(&format),
            Some(Ok(Skipped::TeRecipe {
                class: format!("{TE_RECIPE}.Format")
            }))
        );
        let by_name = call(
            g("builtins", "getattr"),
            vec![r("Format"), s("HYBRID")],
            None,
        );
        assert_eq!(
            skippable(&by_name),
            Some(Ok(Skipped::TeRecipe {
                class: format!("{TE_RECIPE}.Format.HYBRID")
            }))
        );
        let ds = |algo: Value| {
            call(
                r("DelayedScaling"),
                vec![],
                Some(Value::Dict(vec![
                    (s("margin"), Value::Int(0)),
                    (s("fp8_format"), format.clone()),
                    (s("scaling_factor_compute_algo"), algo),
                ])),
            )
        };
        assert!(matches!(skippable(&ds(Value::None)), Some(Ok(_))));
        for evil in [
            g("posix", "system"),
            system(),
            call(g("builtins", "getattr"), vec![g("os", "x"), s("y")], None),
            call(r("Nope"), vec![], None),
        ] {
            match skippable(&ds(evil.clone())) {
                Some(Err(e)) => assert!(e.contains("not allowed"), "{e}"),
                other => panic!("{evil:?}: {other:?}"),
            }
        }
        // Other names are not skippable at all: the caller refuses them.
        assert_eq!(skippable(&system()), None);
        assert_eq!(skippable(&call(r("Nope"), vec![], None)), None);
        assert_eq!(skippable(&Value::Int(1)), None);
    }
}
