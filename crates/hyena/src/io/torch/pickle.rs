//! A Python pickle *parser* (protocols 0–5) that produces an inert [`Value`] tree.
//!
//! Why a parser and not an unpickler: a pickle is a program for a stack machine whose `GLOBAL`
//! and `REDUCE` opcodes import and call arbitrary Python callables, so loading an untrusted
//! checkpoint with `pickle.load` / `torch.load(weights_only=False)` can run anything. Here nothing
//! is ever imported or called: `GLOBAL` only records a `module.name` pair ([`Value::Global`]),
//! `REDUCE` / `NEWOBJ` / `INST` / `OBJ` only record *which* callable would have been applied to
//! *which* arguments ([`Value::Call`]), and `BUILD` / `SETITEM(S)` / `APPEND(S)` on such an object
//! only attach their data to that record. Deciding what (if anything) a tree means is left to the
//! caller, which should allow a short list of known names (see [`crate::io::torch`]).
//!
//! Robustness: every read is bounds-checked; truncated input, stack underflow, an unknown
//! opcode, a memo index that was never stored, and lengths longer than the remaining input are
//! all errors, never panics or huge allocations. Nothing recurses on the input: the machine and
//! the final conversion to a tree are iterative; the tree is capped at [`MAX_DEPTH`] levels and
//! at a node budget, which also rejects self-referencing (cyclic) and exponentially shared
//! (memo "bomb") pickles.

use std::collections::HashMap;
use std::path::Path;

use crate::error::{Error, Result};

/// Deepest nesting accepted when building the tree. Checkpoints nest far less (a tensor's
/// storage type sits 7 levels below a Lightning checkpoint's top; a nested config adds a few
/// levels per config level); the cap keeps the recursive `Drop`, `Clone`, `PartialEq` and
/// `Debug` of a [`Value`] far from a thread's stack limit, even in debug builds.
pub const MAX_DEPTH: usize = 256;

/// Budget floors when building the tree (see [`parse`]): shared memo references are copied
/// into the tree, so a pickle that references one big object many times could otherwise expand
/// exponentially in memory, and in time. A checkpoint's tree is less than twice its arena (a
/// tensor copies a few shared names: its storage class, `_rebuild_tensor_v2`, ...); the floor
/// is for small pickles. It was 2^20 nodes (and 16 per arena node), which a 439-byte pickle
/// found by fuzzing (30 `NEWOBJ_EX` over `DUP`ed objects) took about a second to reach in a
/// sanitizer build.
const MIN_NODE_BUDGET: usize = 1 << 17;
/// Times its arena a pickle's tree may hold in nodes (beyond [`MIN_NODE_BUDGET`]).
const NODE_BUDGET_PER_NODE: usize = 4;
/// Floor of the budget for string and bytes content copied into the tree.
const MIN_BYTE_BUDGET: usize = 64 << 20;

/// One pickled value, inert: nothing in it has been executed.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    /// An integer that fits an `i64` (whatever opcode wrote it).
    Int(i64),
    /// An integer outside the `i64` range, as minimal little-endian two's-complement bytes
    /// (Python ints are unbounded; e.g. a 64-bit unsigned seed in a config must not make the
    /// whole file unreadable).
    BigInt(Vec<u8>),
    Float(f64),
    /// Text: `BINUNICODE` & co., and protocol-0/1 byte strings that are valid UTF-8.
    Str(String),
    /// `BINBYTES`, `BYTEARRAY8`, and protocol-0/1 byte strings that are not UTF-8.
    Bytes(Vec<u8>),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    /// Items in pickle order; a repeated key is kept twice (a reader takes the last one).
    Dict(Vec<(Value, Value)>),
    /// `set` and `frozenset`, in pickle order.
    Set(Vec<Value>),
    /// A reference to a Python object by name (`GLOBAL`, `STACK_GLOBAL`, `INST`): recorded, never
    /// imported.
    Global {
        module: String,
        name: String,
    },
    /// What `func(*args, **kwargs)` followed by `BUILD` / item and append opcodes would have built.
    Call(Box<Call>),
    /// A persistent id (`PERSID`, `BINPERSID`): a reference the pickle's owner resolves itself
    /// (PyTorch uses it for tensor storages).
    PersId(Box<Value>),
}

/// An application that was recorded but never performed (`REDUCE`, `NEWOBJ`, `NEWOBJ_EX`, `INST`,
/// `OBJ`), plus the data later opcodes attached to its result.
#[derive(Clone, Debug, PartialEq)]
pub struct Call {
    /// The callable or class, usually a [`Value::Global`].
    pub func: Value,
    /// The positional arguments, usually a [`Value::Tuple`].
    pub args: Value,
    /// Keyword arguments (`NEWOBJ_EX` only).
    pub kwargs: Option<Value>,
    /// The argument of a `BUILD` applied to the result (`__setstate__`); the last one if several.
    pub state: Option<Value>,
    /// Values `APPEND`ed / `APPENDS`ed / `ADDITEMS`ed to the result (list-like subclasses).
    pub list_items: Vec<Value>,
    /// Items `SETITEM`ed / `SETITEMS`ed into the result (dict-like classes, e.g. `OrderedDict`).
    pub dict_items: Vec<(Value, Value)>,
}

impl Value {
    /// `("module", "name")` if this is a [`Value::Global`].
    pub fn as_global(&self) -> Option<(&str, &str)> {
        match self {
            Value::Global { module, name } => Some((module, name)),
            _ => None,
        }
    }

    /// The text if this is a [`Value::Str`].
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The integer if this is a [`Value::Int`].
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// A short human description for error messages: the kind of value, and for calls and
    /// globals the dotted name involved (what a user needs to judge a suspicious file).
    pub fn describe(&self) -> String {
        match self {
            Value::None => "None".into(),
            Value::Bool(b) => format!("a bool ({})", if *b { "True" } else { "False" }),
            Value::Int(i) => format!("an int ({i})"),
            Value::BigInt(b) => format!("a big int ({} bytes)", b.len()),
            Value::Float(f) => format!("a float ({f})"),
            Value::Str(s) => {
                let short: String = s.chars().take(40).collect();
                let more = if short.len() < s.len() { "…" } else { "" };
                format!("a string ({short:?}{more})")
            }
            Value::Bytes(b) => format!("bytes ({} bytes)", b.len()),
            Value::Tuple(v) => format!("a tuple of {} items", v.len()),
            Value::List(v) => format!("a list of {} items", v.len()),
            Value::Dict(v) => format!("a dict of {} items", v.len()),
            Value::Set(v) => format!("a set of {} items", v.len()),
            Value::Global { module, name } => {
                format!("the global `{}.{}`", printable(module), printable(name))
            }
            Value::Call(c) => match c.func.as_global() {
                Some((m, n)) => format!("a call of `{}.{}`", printable(m), printable(n)),
                None => format!("a call of {}", c.func.describe()),
            },
            Value::PersId(_) => "a persistent id (a storage reference)".into(),
        }
    }
}

/// A name from a file, safe to print in a message: control characters (say, a terminal escape
/// sequence in a crafted name) are shown escaped, everything else as is.
pub fn printable(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Parse one pickle (up to its `STOP` opcode; trailing bytes are ignored, as Python does).
///
/// `file` only labels errors (`Error::Format { file, .. }`); nothing is read from it.
pub fn parse(data: &[u8], file: &Path) -> Result<Value> {
    let mut m = Machine {
        data,
        pos: 0,
        file,
        nodes: Vec::new(),
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
    };
    let top = m.run()?;
    let mut budget = Budget {
        nodes: MIN_NODE_BUDGET.max(m.nodes.len().saturating_mul(NODE_BUDGET_PER_NODE)),
        bytes: MIN_BYTE_BUDGET.max(data.len().saturating_mul(4)),
    };
    m.build(top, &mut budget)
}

// === The machine ===

/// Index of a node in the arena. Objects live in an arena (not directly in `Value`s) because
/// the memo shares them: an `OrderedDict` is memoized right after `REDUCE` and only then filled
/// by `SETITEMS`, so a later `BINGET` must see the filled object, as in Python.
type Id = usize;

/// What building the tree may still copy: nodes, and bytes of string/bytes content.
struct Budget {
    nodes: usize,
    bytes: usize,
}

enum Node {
    None,
    Bool(bool),
    Int(i64),
    BigInt(Vec<u8>),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Id>),
    List(Vec<Id>),
    Dict(Vec<(Id, Id)>),
    Set(Vec<Id>),
    Global {
        module: String,
        name: String,
    },
    Call {
        func: Id,
        args: Id,
        kwargs: Option<Id>,
        state: Option<Id>,
        list_items: Vec<Id>,
        dict_items: Vec<(Id, Id)>,
    },
    PersId(Id),
}

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    file: &'a Path,
    nodes: Vec<Node>,
    stack: Vec<Id>,
    /// Stack heights at each open `MARK`; nothing below the innermost one may be popped except
    /// by the opcode that consumes the mark.
    marks: Vec<usize>,
    memo: HashMap<u64, Id>,
}

/// Opcode names, for error messages.
fn op_name(op: u8) -> &'static str {
    match op {
        b'(' => "MARK",
        b'.' => "STOP",
        b'0' => "POP",
        b'1' => "POP_MARK",
        b'2' => "DUP",
        b'F' => "FLOAT",
        b'I' => "INT",
        b'J' => "BININT",
        b'K' => "BININT1",
        b'L' => "LONG",
        b'M' => "BININT2",
        b'N' => "NONE",
        b'P' => "PERSID",
        b'Q' => "BINPERSID",
        b'R' => "REDUCE",
        b'S' => "STRING",
        b'T' => "BINSTRING",
        b'U' => "SHORT_BINSTRING",
        b'V' => "UNICODE",
        b'X' => "BINUNICODE",
        b'a' => "APPEND",
        b'b' => "BUILD",
        b'c' => "GLOBAL",
        b'd' => "DICT",
        b'}' => "EMPTY_DICT",
        b'e' => "APPENDS",
        b'g' => "GET",
        b'h' => "BINGET",
        b'i' => "INST",
        b'j' => "LONG_BINGET",
        b'l' => "LIST",
        b']' => "EMPTY_LIST",
        b'o' => "OBJ",
        b'p' => "PUT",
        b'q' => "BINPUT",
        b'r' => "LONG_BINPUT",
        b's' => "SETITEM",
        b't' => "TUPLE",
        b')' => "EMPTY_TUPLE",
        b'u' => "SETITEMS",
        b'G' => "BINFLOAT",
        b'B' => "BINBYTES",
        b'C' => "SHORT_BINBYTES",
        0x80 => "PROTO",
        0x81 => "NEWOBJ",
        0x82 => "EXT1",
        0x83 => "EXT2",
        0x84 => "EXT4",
        0x85 => "TUPLE1",
        0x86 => "TUPLE2",
        0x87 => "TUPLE3",
        0x88 => "NEWTRUE",
        0x89 => "NEWFALSE",
        0x8a => "LONG1",
        0x8b => "LONG4",
        0x8c => "SHORT_BINUNICODE",
        0x8d => "BINUNICODE8",
        0x8e => "BINBYTES8",
        0x8f => "EMPTY_SET",
        0x90 => "ADDITEMS",
        0x91 => "FROZENSET",
        0x92 => "NEWOBJ_EX",
        0x93 => "STACK_GLOBAL",
        0x94 => "MEMOIZE",
        0x95 => "FRAME",
        0x96 => "BYTEARRAY8",
        0x97 => "NEXT_BUFFER",
        0x98 => "READONLY_BUFFER",
        _ => "unknown",
    }
}

impl<'a> Machine<'a> {
    fn err(&self, msg: impl std::fmt::Display) -> Error {
        Error::Format {
            file: self.file.to_path_buf(),
            msg: format!(
                "pickle: {msg} (at byte {} of {}); the checkpoint is corrupt or not a PyTorch \
                 file: re-download or re-save it",
                self.pos,
                self.data.len()
            ),
        }
    }

    // --- input ---

    fn take(&mut self, n: u64) -> Result<&'a [u8]> {
        let rest = self.data.len() - self.pos.min(self.data.len());
        if n > rest as u64 {
            return Err(self.err(format!("truncated input: {n} bytes needed, {rest} left")));
        }
        let data: &'a [u8] = self.data;
        let start = self.pos;
        self.pos += n as usize;
        data.get(start..self.pos)
            .ok_or_else(|| self.err("truncated input"))
    }

    fn byte(&mut self) -> Result<u8> {
        Ok(self.take(1)?.first().copied().unwrap_or(0))
    }

    fn arr<const N: usize>(&mut self) -> Result<[u8; N]> {
        let s = self.take(N as u64)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.arr()?))
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.arr()?))
    }

    /// A length stored as a signed 4-byte integer (`BINSTRING`, `LONG4`).
    fn i32_len(&mut self) -> Result<u64> {
        let n = i32::from_le_bytes(self.arr()?);
        u64::try_from(n).map_err(|_| self.err(format!("negative length {n}")))
    }

    /// One `\n`-terminated line (protocol 0 arguments), without the newline.
    fn line(&mut self) -> Result<&'a [u8]> {
        let data: &'a [u8] = self.data;
        let rest = data.get(self.pos..).unwrap_or(&[]);
        let Some(n) = rest.iter().position(|&b| b == b'\n') else {
            return Err(self.err("truncated input: unterminated text argument"));
        };
        let start = self.pos;
        self.pos += n + 1;
        Ok(data.get(start..start + n).unwrap_or(&[]))
    }

    fn line_str(&mut self) -> Result<String> {
        let l = self.line()?;
        String::from_utf8(l.to_vec()).map_err(|_| self.err("text argument is not valid UTF-8"))
    }

    fn utf8(&self, b: &[u8]) -> Result<String> {
        String::from_utf8(b.to_vec()).map_err(|_| self.err("string is not valid UTF-8"))
    }

    // --- stack ---

    fn new_node(&mut self, n: Node) -> Id {
        self.nodes.push(n);
        self.nodes.len() - 1
    }

    fn push(&mut self, n: Node) {
        let id = self.new_node(n);
        self.stack.push(id);
    }

    fn base(&self) -> usize {
        self.marks.last().copied().unwrap_or(0)
    }

    fn pop(&mut self) -> Result<Id> {
        if self.stack.len() <= self.base() {
            return Err(self.err("stack underflow"));
        }
        self.stack.pop().ok_or_else(|| self.err("stack underflow"))
    }

    fn top(&self) -> Result<Id> {
        if self.stack.len() <= self.base() {
            return Err(self.err("stack underflow"));
        }
        self.stack
            .last()
            .copied()
            .ok_or_else(|| self.err("stack underflow"))
    }

    /// Everything pushed since the innermost `MARK`, removing the mark.
    fn pop_mark(&mut self) -> Result<Vec<Id>> {
        let m = self
            .marks
            .pop()
            .ok_or_else(|| self.err("no MARK to pop (malformed pickle)"))?;
        if m > self.stack.len() {
            return Err(self.err("MARK above the stack top"));
        }
        Ok(self.stack.split_off(m))
    }

    fn pairs(&self, items: Vec<Id>) -> Result<Vec<(Id, Id)>> {
        if !items.len().is_multiple_of(2) {
            return Err(self.err(format!("odd number of items ({}) for a dict", items.len())));
        }
        Ok(items.chunks_exact(2).map(|c| (c[0], c[1])).collect())
    }

    fn node_mut(&mut self, id: Id) -> Result<&mut Node> {
        // Ids come only from `new_node`, so this always succeeds; checked anyway.
        let pos = self.pos;
        let len = self.data.len();
        let file = self.file.to_path_buf();
        self.nodes.get_mut(id).ok_or(Error::Format {
            file,
            msg: format!("pickle: internal node {id} missing (at byte {pos} of {len})"),
        })
    }

    fn kind(&self, id: Id) -> &'static str {
        match self.nodes.get(id) {
            Some(Node::None) => "None",
            Some(Node::Bool(_)) => "a bool",
            Some(Node::Int(_) | Node::BigInt(_)) => "an int",
            Some(Node::Float(_)) => "a float",
            Some(Node::Str(_)) => "a string",
            Some(Node::Bytes(_)) => "bytes",
            Some(Node::Tuple(_)) => "a tuple",
            Some(Node::List(_)) => "a list",
            Some(Node::Dict(_)) => "a dict",
            Some(Node::Set(_)) => "a set",
            Some(Node::Global { .. }) => "a global",
            Some(Node::Call { .. }) => "an object",
            Some(Node::PersId(_)) => "a persistent id",
            None => "nothing",
        }
    }

    fn memo_get(&self, key: u64) -> Result<Id> {
        self.memo.get(&key).copied().ok_or_else(|| {
            self.err(format!(
                "memo index {key} was never stored ({} entries)",
                self.memo.len()
            ))
        })
    }

    fn memo_put(&mut self, key: u64) -> Result<()> {
        let top = self.top()?;
        self.memo.insert(key, top);
        Ok(())
    }

    fn call(&mut self, func: Id, args: Id, kwargs: Option<Id>) {
        self.push(Node::Call {
            func,
            args,
            kwargs,
            state: None,
            list_items: Vec::new(),
            dict_items: Vec::new(),
        });
    }

    fn append(&mut self, target: Id, items: Vec<Id>, op: u8) -> Result<()> {
        let kind = self.kind(target);
        match self.node_mut(target)? {
            Node::List(v) | Node::Set(v) => v.extend(items),
            Node::Call { list_items, .. } => list_items.extend(items),
            _ => {
                return Err(self.err(format!(
                    "{} on {kind}, expected a list or an object",
                    op_name(op)
                )))
            }
        }
        Ok(())
    }

    fn set_items(&mut self, target: Id, items: Vec<(Id, Id)>, op: u8) -> Result<()> {
        let kind = self.kind(target);
        match self.node_mut(target)? {
            Node::Dict(v) => v.extend(items),
            Node::Call { dict_items, .. } => dict_items.extend(items),
            _ => {
                return Err(self.err(format!(
                    "{} on {kind}, expected a dict or an object",
                    op_name(op)
                )))
            }
        }
        Ok(())
    }

    /// A protocol-0 `INT` / `LONG` decimal argument.
    fn text_int(&self, s: &str, op: u8) -> Result<Node> {
        let s = s.trim();
        if let Ok(v) = s.parse::<i64>() {
            return Ok(Node::Int(v));
        }
        decimal_to_twos(s)
            .map(|b| int_node(&b))
            .ok_or_else(|| self.err(format!("{} argument {s:?} is not an integer", op_name(op))))
    }

    /// Run to `STOP`; the id of the result.
    fn run(&mut self) -> Result<Id> {
        loop {
            let op = match self.data.get(self.pos) {
                Some(&op) => op,
                None => return Err(self.err("truncated input: no STOP opcode")),
            };
            self.pos += 1;
            match op {
                b'.' => return self.pop(),
                0x80 => {
                    let v = self.byte()?;
                    if v > 5 {
                        return Err(self.err(format!(
                            "unsupported pickle protocol {v} (0 to 5 are known)"
                        )));
                    }
                }
                0x95 => {
                    // Framing only groups opcodes for buffered I/O; the content is ordinary.
                    let n = self.u64()?;
                    let rest = self.data.len().saturating_sub(self.pos) as u64;
                    if n > rest {
                        return Err(
                            self.err(format!("truncated input: frame of {n} bytes, {rest} left"))
                        );
                    }
                }
                b'(' => self.marks.push(self.stack.len()),
                b'0' => {
                    if self.stack.len() > self.base() {
                        self.stack.pop();
                    } else if self.marks.pop().is_none() {
                        return Err(self.err("stack underflow"));
                    }
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let t = self.top()?;
                    self.stack.push(t);
                }

                // --- constants and numbers ---
                b'N' => self.push(Node::None),
                0x88 => self.push(Node::Bool(true)),
                0x89 => self.push(Node::Bool(false)),
                b'I' => {
                    let l = self.line_str()?;
                    let n = match l.as_str() {
                        "00" => Node::Bool(false),
                        "01" => Node::Bool(true),
                        s => self.text_int(s, op)?,
                    };
                    self.push(n);
                }
                b'L' => {
                    let l = self.line_str()?;
                    let n = self.text_int(l.trim().trim_end_matches('L'), op)?;
                    self.push(n);
                }
                b'J' => {
                    let v = i32::from_le_bytes(self.arr()?);
                    self.push(Node::Int(v.into()));
                }
                b'K' => {
                    let v = self.byte()?;
                    self.push(Node::Int(v.into()));
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.arr()?);
                    self.push(Node::Int(v.into()));
                }
                0x8a | 0x8b => {
                    let n = if op == 0x8a {
                        self.byte()?.into()
                    } else {
                        self.i32_len()?
                    };
                    let b = self.take(n)?;
                    self.push(int_node(b));
                }
                b'F' => {
                    let l = self.line_str()?;
                    let v = l
                        .trim()
                        .parse()
                        .map_err(|_| self.err(format!("FLOAT argument {l:?} is not a number")))?;
                    self.push(Node::Float(v));
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.arr()?);
                    self.push(Node::Float(v));
                }

                // --- strings and bytes ---
                b'S' => {
                    let l = self.line()?.to_vec();
                    let b = unquote_escaped(&l)
                        .ok_or_else(|| self.err("STRING argument is not a quoted Python string"))?;
                    self.push(str_or_bytes(b));
                }
                b'T' | b'U' => {
                    let n = if op == b'T' {
                        self.i32_len()?
                    } else {
                        self.byte()?.into()
                    };
                    let b = self.take(n)?.to_vec();
                    self.push(str_or_bytes(b));
                }
                b'V' => {
                    let l = self.line()?.to_vec();
                    let s = raw_unicode_unescape(&l).ok_or_else(|| {
                        self.err("UNICODE argument has an invalid \\u or \\U escape")
                    })?;
                    self.push(Node::Str(s));
                }
                b'X' | 0x8c | 0x8d => {
                    let n = match op {
                        b'X' => self.u32()?.into(),
                        0x8c => self.byte()?.into(),
                        _ => self.u64()?,
                    };
                    let b = self.take(n)?;
                    let s = self.utf8(b)?;
                    self.push(Node::Str(s));
                }
                b'B' | b'C' | 0x8e | 0x96 => {
                    let n = match op {
                        b'B' => self.u32()?.into(),
                        b'C' => self.byte()?.into(),
                        _ => self.u64()?,
                    };
                    let b = self.take(n)?.to_vec();
                    self.push(Node::Bytes(b));
                }

                // --- containers ---
                b')' => self.push(Node::Tuple(Vec::new())),
                b']' => self.push(Node::List(Vec::new())),
                b'}' => self.push(Node::Dict(Vec::new())),
                0x8f => self.push(Node::Set(Vec::new())),
                b't' => {
                    let items = self.pop_mark()?;
                    self.push(Node::Tuple(items));
                }
                0x85..=0x87 => {
                    let n = usize::from(op - 0x84);
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    self.push(Node::Tuple(items));
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    self.push(Node::List(items));
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    let pairs = self.pairs(items)?;
                    self.push(Node::Dict(pairs));
                }
                0x91 => {
                    let items = self.pop_mark()?;
                    self.push(Node::Set(items));
                }
                b'a' => {
                    let v = self.pop()?;
                    let target = self.top()?;
                    self.append(target, vec![v], op)?;
                }
                b'e' | 0x90 => {
                    let items = self.pop_mark()?;
                    let target = self.top()?;
                    self.append(target, items, op)?;
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    let target = self.top()?;
                    self.set_items(target, vec![(k, v)], op)?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    let pairs = self.pairs(items)?;
                    let target = self.top()?;
                    self.set_items(target, pairs, op)?;
                }

                // --- memo ---
                b'p' => {
                    let l = self.line_str()?;
                    let k = l
                        .trim()
                        .parse()
                        .map_err(|_| self.err(format!("PUT index {l:?} is not a number")))?;
                    self.memo_put(k)?;
                }
                b'q' => {
                    let k = self.byte()?.into();
                    self.memo_put(k)?;
                }
                b'r' => {
                    let k = self.u32()?.into();
                    self.memo_put(k)?;
                }
                0x94 => {
                    let k = self.memo.len() as u64;
                    self.memo_put(k)?;
                }
                b'g' => {
                    let l = self.line_str()?;
                    let k = l
                        .trim()
                        .parse()
                        .map_err(|_| self.err(format!("GET index {l:?} is not a number")))?;
                    let id = self.memo_get(k)?;
                    self.stack.push(id);
                }
                b'h' => {
                    let k = self.byte()?.into();
                    let id = self.memo_get(k)?;
                    self.stack.push(id);
                }
                b'j' => {
                    let k = self.u32()?.into();
                    let id = self.memo_get(k)?;
                    self.stack.push(id);
                }

                // --- names, calls and objects: recorded, never executed ---
                b'c' => {
                    let module = self.line_str()?;
                    let name = self.line_str()?;
                    self.push(Node::Global { module, name });
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (Some(Node::Str(m)), Some(Node::Str(n))) =
                        (self.nodes.get(module), self.nodes.get(name))
                    else {
                        return Err(self.err("STACK_GLOBAL needs two strings"));
                    };
                    let (module, name) = (m.clone(), n.clone());
                    self.push(Node::Global { module, name });
                }
                b'i' => {
                    let module = self.line_str()?;
                    let name = self.line_str()?;
                    let args = self.pop_mark()?;
                    let func = self.new_node(Node::Global { module, name });
                    let args = self.new_node(Node::Tuple(args));
                    self.call(func, args, None);
                }
                b'o' => {
                    let mut items = self.pop_mark()?.into_iter();
                    let func = items
                        .next()
                        .ok_or_else(|| self.err("OBJ without a class"))?;
                    let args = self.new_node(Node::Tuple(items.collect()));
                    self.call(func, args, None);
                }
                b'R' | 0x81 => {
                    let args = self.pop()?;
                    let func = self.pop()?;
                    self.call(func, args, None);
                }
                0x92 => {
                    let kwargs = self.pop()?;
                    let args = self.pop()?;
                    let func = self.pop()?;
                    self.call(func, args, Some(kwargs));
                }
                b'b' => {
                    let st = self.pop()?;
                    let target = self.top()?;
                    let kind = self.kind(target);
                    match self.node_mut(target)? {
                        Node::Call { state, .. } => *state = Some(st),
                        _ => return Err(self.err(format!("BUILD on {kind}, expected an object"))),
                    }
                }
                b'P' => {
                    let s = self.line_str()?;
                    let id = self.new_node(Node::Str(s));
                    self.push(Node::PersId(id));
                }
                b'Q' => {
                    let id = self.pop()?;
                    self.push(Node::PersId(id));
                }
                0x82..=0x84 => {
                    return Err(self.err(format!(
                        "{} (copyreg extension registry codes) is not supported",
                        op_name(op)
                    )))
                }
                0x97 => {
                    return Err(self.err(
                        "NEXT_BUFFER: out-of-band buffers (pickle protocol 5) are not supported",
                    ))
                }
                0x98 => {
                    // Marks the buffer on the stack read-only: nothing to do for inert data.
                    self.top()?;
                }
                _ => {
                    self.pos -= 1;
                    return Err(self.err(format!("unknown opcode 0x{op:02x}")));
                }
            }
        }
    }

    // --- tree ---

    /// Copy the arena graph reachable from `id` into an owned tree.
    ///
    /// Iterative (an explicit stack of half-built nodes) so that the machine's own stack use
    /// does not grow with the nesting; the depth cap is for the recursive `Drop`, `Clone` and
    /// `PartialEq` of the resulting [`Value`].
    fn build(&self, root: Id, budget: &mut Budget) -> Result<Value> {
        struct Frame {
            id: Id,
            kids: Vec<Id>,
            done: Vec<Value>,
        }
        let mut stack: Vec<Frame> = Vec::new();
        let mut next = Some(root);
        loop {
            if let Some(id) = next.take() {
                if stack.len() > MAX_DEPTH {
                    return Err(self.err(format!(
                        "nesting deeper than {MAX_DEPTH} levels (or a self-referencing object)"
                    )));
                }
                let content = match self.nodes.get(id) {
                    Some(Node::Str(s)) => s.len(),
                    Some(Node::Bytes(b) | Node::BigInt(b)) => b.len(),
                    Some(Node::Global { module, name }) => module.len() + name.len(),
                    _ => 0,
                };
                if budget.nodes == 0 || budget.bytes < content {
                    return Err(self.err(
                        "the pickle expands to too many values (a shared object referenced \
                         exponentially often?)",
                    ));
                }
                budget.nodes -= 1;
                budget.bytes -= content;
                let kids = self.children(id)?;
                stack.push(Frame {
                    id,
                    done: Vec::with_capacity(kids.len()),
                    kids,
                });
            }
            let Some(top) = stack.last_mut() else {
                return Err(self.err("internal error: empty build stack"));
            };
            if let Some(&kid) = top.kids.get(top.done.len()) {
                next = Some(kid);
                continue;
            }
            let Some(f) = stack.pop() else {
                return Err(self.err("internal error: empty build stack"));
            };
            let v = self.assemble(f.id, f.done)?;
            match stack.last_mut() {
                Some(parent) => parent.done.push(v),
                None => return Ok(v),
            }
        }
    }

    /// The direct children of a node, in the order [`Machine::assemble`] consumes them.
    fn children(&self, id: Id) -> Result<Vec<Id>> {
        let node = self
            .nodes
            .get(id)
            .ok_or_else(|| self.err(format!("internal node {id} missing")))?;
        let flat = |v: &[(Id, Id)]| v.iter().flat_map(|&(k, x)| [k, x]).collect::<Vec<_>>();
        Ok(match node {
            Node::Tuple(v) | Node::List(v) | Node::Set(v) => v.clone(),
            Node::Dict(v) => flat(v),
            Node::PersId(i) => vec![*i],
            Node::Call {
                func,
                args,
                kwargs,
                state,
                list_items,
                dict_items,
            } => {
                let mut k = vec![*func, *args];
                k.extend(kwargs.iter().chain(state));
                k.extend(list_items);
                k.extend(flat(dict_items));
                k
            }
            _ => Vec::new(),
        })
    }

    /// Build the value of node `id` from the values of its [`Machine::children`].
    fn assemble(&self, id: Id, kids: Vec<Value>) -> Result<Value> {
        let node = self
            .nodes
            .get(id)
            .ok_or_else(|| self.err(format!("internal node {id} missing")))?;
        let missing = || self.err("internal error: child count mismatch");
        let mut it = kids.into_iter();
        let pairs = |n: usize, it: &mut std::vec::IntoIter<Value>| {
            let mut out = Vec::with_capacity(n);
            for _ in 0..n {
                match (it.next(), it.next()) {
                    (Some(k), Some(v)) => out.push((k, v)),
                    _ => return Err(missing()),
                }
            }
            Ok(out)
        };
        Ok(match node {
            Node::None => Value::None,
            Node::Bool(b) => Value::Bool(*b),
            Node::Int(i) => Value::Int(*i),
            Node::BigInt(b) => Value::BigInt(b.clone()),
            Node::Float(f) => Value::Float(*f),
            Node::Str(s) => Value::Str(s.clone()),
            Node::Bytes(b) => Value::Bytes(b.clone()),
            Node::Tuple(_) => Value::Tuple(it.collect()),
            Node::List(_) => Value::List(it.collect()),
            Node::Set(_) => Value::Set(it.collect()),
            Node::Dict(v) => Value::Dict(pairs(v.len(), &mut it)?),
            Node::Global { module, name } => Value::Global {
                module: module.clone(),
                name: name.clone(),
            },
            Node::PersId(_) => Value::PersId(Box::new(it.next().ok_or_else(missing)?)),
            Node::Call {
                kwargs,
                state,
                list_items,
                dict_items,
                ..
            } => {
                let func = it.next().ok_or_else(missing)?;
                let args = it.next().ok_or_else(missing)?;
                let kwargs = match kwargs {
                    Some(_) => Some(it.next().ok_or_else(missing)?),
                    None => None,
                };
                let state = match state {
                    Some(_) => Some(it.next().ok_or_else(missing)?),
                    None => None,
                };
                let list_items = it.by_ref().take(list_items.len()).collect::<Vec<_>>();
                let dict_items = pairs(dict_items.len(), &mut it)?;
                Value::Call(Box::new(Call {
                    func,
                    args,
                    kwargs,
                    state,
                    list_items,
                    dict_items,
                }))
            }
        })
    }
}

/// An integer from little-endian two's-complement bytes (a `LONG1`/`LONG4` payload).
fn int_node(b: &[u8]) -> Node {
    // Drop redundant sign bytes: the top byte is pure sign extension of the one below it.
    let mut b = b;
    while let [rest @ .., below, top] = b {
        if (*top == 0x00 && below & 0x80 == 0) || (*top == 0xff && below & 0x80 != 0) {
            b = b.get(..rest.len() + 1).unwrap_or(b);
        } else {
            break;
        }
    }
    if b.len() > 8 {
        return Node::BigInt(b.to_vec());
    }
    let fill = if b.last().is_some_and(|&x| x & 0x80 != 0) {
        0xff
    } else {
        0x00
    };
    let mut a = [fill; 8];
    for (d, s) in a.iter_mut().zip(b) {
        *d = *s;
    }
    Node::Int(i64::from_le_bytes(a))
}

/// Decimal text → little-endian two's-complement bytes, for integers beyond `i64`. Capped at
/// 4300 digits, Python's own default limit for int/str conversion, so that the quadratic
/// conversion cannot be used to stall the parser.
fn decimal_to_twos(s: &str) -> Option<Vec<u8>> {
    let (negative, digits) = match s.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    if digits.is_empty() || digits.len() > 4300 || !digits.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let mut mag: Vec<u8> = Vec::new();
    for c in digits.bytes() {
        let mut carry = u32::from(c - b'0');
        for byte in mag.iter_mut() {
            let v = u32::from(*byte) * 10 + carry;
            *byte = (v & 0xff) as u8;
            carry = v >> 8;
        }
        if carry > 0 {
            mag.push(carry as u8);
        }
    }
    mag.push(0); // room for the sign bit
    if negative {
        let mut carry = true;
        for byte in mag.iter_mut() {
            let (v, c) = (!*byte).overflowing_add(u8::from(carry));
            *byte = v;
            carry = c;
        }
    }
    Some(mag)
}

fn str_or_bytes(b: Vec<u8>) -> Node {
    match String::from_utf8(b) {
        Ok(s) => Node::Str(s),
        Err(e) => Node::Bytes(e.into_bytes()),
    }
}

/// The protocol-0 `STRING` argument: a Python 2 `repr` of a byte string, quoted with `'` or `"`,
/// with backslash escapes (Python's `codecs.escape_decode`).
fn unquote_escaped(l: &[u8]) -> Option<Vec<u8>> {
    let q = *l.first()?;
    if l.len() < 2 || !(q == b'\'' || q == b'"') || l.last() != Some(&q) {
        return None;
    }
    let inner = l.get(1..l.len() - 1)?;
    let mut out = Vec::with_capacity(inner.len());
    let mut it = inner.iter().copied().peekable();
    while let Some(c) = it.next() {
        if c != b'\\' {
            out.push(c);
            continue;
        }
        let Some(e) = it.next() else {
            out.push(b'\\');
            break;
        };
        match e {
            b'\n' => {}
            b'\\' | b'\'' | b'"' => out.push(e),
            b'a' => out.push(7),
            b'b' => out.push(8),
            b'f' => out.push(12),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'v' => out.push(11),
            b'x' => {
                let h = [it.next()?, it.next()?];
                let s = std::str::from_utf8(&h).ok()?;
                out.push(u8::from_str_radix(s, 16).ok()?);
            }
            b'0'..=b'7' => {
                let mut v = u32::from(e - b'0');
                for _ in 0..2 {
                    match it.peek() {
                        Some(&d @ b'0'..=b'7') => {
                            v = v * 8 + u32::from(d - b'0');
                            it.next();
                        }
                        _ => break,
                    }
                }
                out.push((v & 0xff) as u8);
            }
            other => {
                out.push(b'\\');
                out.push(other);
            }
        }
    }
    Some(out)
}

/// The protocol-0 `UNICODE` argument (`raw-unicode-escape`): Latin-1 bytes, except `\uXXXX` and
/// `\UXXXXXXXX` escapes.
fn raw_unicode_unescape(l: &[u8]) -> Option<String> {
    let mut out = String::with_capacity(l.len());
    let mut i = 0;
    while let Some(&c) = l.get(i) {
        let width = match (c, l.get(i + 1)) {
            (b'\\', Some(b'u')) => 4,
            (b'\\', Some(b'U')) => 8,
            _ => 0,
        };
        if width == 0 {
            out.push(char::from(c));
            i += 1;
            continue;
        }
        let hex = std::str::from_utf8(l.get(i + 2..i + 2 + width)?).ok()?;
        out.push(char::from_u32(u32::from_str_radix(hex, 16).ok()?)?);
        i += 2 + width;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(b: &[u8]) -> Result<Value> {
        parse(b, Path::new("test.pkl"))
    }

    fn msg(r: Result<Value>) -> String {
        match r {
            Err(e) => e.to_string(),
            Ok(v) => panic!("expected an error, got {v:?}"),
        }
    }

    fn s(x: &str) -> Value {
        Value::Str(x.into())
    }

    #[test]
    fn protocol0_mixed() {
        // pickle.dumps([1, 'a', (2.5, None), {'k': True}, b'\x00\xff', -3], protocol=0)
        // as written by Python 3 (bytes via _codecs.encode), assembled by hand.
        let b: &[u8] = b"(lp0\nI1\naVa\np1\na(F2.5\nNtp2\na(dp3\nVk\np4\nI01\nsa\
c_codecs\nencode\np5\n(V\\u0000\\u00ff\np6\nVlatin1\np7\ntp8\nRp9\naI-3\na.";
        let v = p(b).unwrap();
        let Value::List(items) = v else {
            panic!("not a list: {v:?}")
        };
        assert_eq!(items.len(), 6);
        assert_eq!(items[0], Value::Int(1));
        assert_eq!(items[1], s("a"));
        assert_eq!(items[2], Value::Tuple(vec![Value::Float(2.5), Value::None]));
        assert_eq!(items[3], Value::Dict(vec![(s("k"), Value::Bool(true))]));
        let Value::Call(c) = &items[4] else {
            panic!("not a call: {:?}", items[4])
        };
        assert_eq!(c.func.as_global(), Some(("_codecs", "encode")));
        assert_eq!(c.args, Value::Tuple(vec![s("\u{0}\u{ff}"), s("latin1")]));
        assert_eq!(items[5], Value::Int(-3));
    }

    #[test]
    fn protocol0_strings_and_longs() {
        // STRING with escapes, LONG with the L suffix, GET of a memoized value, INST.
        let b: &[u8] = b"(S'a\\'b\\n\\x41\\101'\np0\nL12345678901L\ng0\ni__main__\nThing\n.";
        let Value::Call(c) = p(b).unwrap() else {
            panic!("not a call")
        };
        assert_eq!(c.func.as_global(), Some(("__main__", "Thing")));
        assert_eq!(
            c.args,
            Value::Tuple(vec![s("a'b\nAA"), Value::Int(12_345_678_901), s("a'b\nAA")])
        );
    }

    #[test]
    fn protocol2_ints_and_memo_sharing() {
        // An OrderedDict memoized before SETITEMS, then fetched again: the copy must see the
        // items (memo entries are shared objects, not snapshots).
        let b: &[u8] = b"\x80\x02ccollections\nOrderedDict\nq\x00)Rq\x01(X\x01\x00\x00\x00a\
K\x07X\x01\x00\x00\x00bJ\xfe\xff\xff\xffX\x01\x00\x00\x00c\x8a\x08\x00\x00\x00\x00\x00\x00\x00\x80\
uh\x01\x86q\x02.";
        let Value::Tuple(t) = p(b).unwrap() else {
            panic!("not a tuple")
        };
        assert_eq!(t.len(), 2);
        assert_eq!(t[0], t[1]);
        let Value::Call(c) = &t[0] else {
            panic!("not a call")
        };
        assert_eq!(c.func.as_global(), Some(("collections", "OrderedDict")));
        assert_eq!(
            c.dict_items,
            vec![
                (s("a"), Value::Int(7)),
                (s("b"), Value::Int(-2)),
                (s("c"), Value::Int(i64::MIN))
            ]
        );
    }

    #[test]
    fn protocol4_frames_sets_and_stack_global() {
        // FRAME, SHORT_BINUNICODE, MEMOIZE, STACK_GLOBAL, NEWOBJ, BUILD, EMPTY_SET + ADDITEMS,
        // FROZENSET, BINBYTES, BINFLOAT, LONG1 with sign extension beyond 8 bytes.
        let mut b = vec![0x80, 4, 0x95];
        let body: &[u8] = b"\x8c\x08__main__\x94\x8c\x05Thing\x94\x93\x94)\x81\x94}\x94\
\x8c\x01x\x94K\x01sb(\x8f\x94(K\x01K\x02\x90(K\x03\x91C\x02\x01\x02G?\xf8\x00\x00\x00\x00\x00\x00\
\x8a\x0a\xff\xff\xff\xff\xff\xff\xff\xff\xff\xfft\x86.";
        b.extend_from_slice(&(body.len() as u64).to_le_bytes());
        b.extend_from_slice(body);
        let Value::Tuple(t) = p(&b).unwrap() else {
            panic!("not a tuple")
        };
        let Value::Call(c) = &t[0] else {
            panic!("not a call")
        };
        assert_eq!(c.func.as_global(), Some(("__main__", "Thing")));
        assert_eq!(c.args, Value::Tuple(vec![]));
        assert_eq!(c.state, Some(Value::Dict(vec![(s("x"), Value::Int(1))])));
        assert_eq!(
            t[1],
            Value::Tuple(vec![
                Value::Set(vec![Value::Int(1), Value::Int(2)]),
                Value::Set(vec![Value::Int(3)]),
                Value::Bytes(vec![1, 2]),
                Value::Float(1.5),
                Value::Int(-1),
            ])
        );
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn persistent_ids_and_calls_are_inert() {
        // ('storage', torch.FloatStorage, '0', 'cpu', 6) via BINPERSID, then REDUCE of os.system:
        // recorded as a Call, never run.
        let b: &[u8] = b"\x80\x02cposix\nsystem\n(X\x07\x00\x00\x00storagectorch\nFloatStorage\n\
X\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x06tQ\x85R.";
        let Value::Call(c) = p(b).unwrap() else {
            panic!("not a call")
        };
        assert_eq!(c.func.as_global(), Some(("posix", "system")));
        let Value::Tuple(a) = &c.args else {
            panic!("args not a tuple")
        };
        let Value::PersId(pid) = &a[0] else {
            panic!("not a persid")
        };
        let Value::Tuple(pt) = pid.as_ref() else {
            panic!("persid not a tuple")
        };
        assert_eq!(pt[1].as_global(), Some(("torch", "FloatStorage")));
        assert_eq!(pt[4].as_int(), Some(6));
        assert_eq!(p(b).unwrap().describe(), "a call of `posix.system`");
    }

    #[test]
    fn truncated_input_is_an_error() {
        let full: &[u8] = b"\x80\x02X\x05\x00\x00\x00hello\x85q\x00.";
        for n in 0..full.len() {
            let m = msg(p(&full[..n]));
            assert!(m.contains("test.pkl"), "{m}");
            assert!(
                m.contains("truncated") || m.contains("underflow"),
                "cut at {n}: {m}"
            );
        }
        assert_eq!(p(full).unwrap(), Value::Tuple(vec![s("hello")]));
    }

    #[test]
    fn absurd_lengths_are_errors_not_allocations() {
        for b in [
            &b"\x80\x04\x8d\xff\xff\xff\xff\xff\xff\xff\x7f."[..],
            b"\x80\x04\x8e\xff\xff\xff\xff\xff\xff\xff\xff.",
            b"\x80\x04\x95\xff\xff\xff\xff\xff\xff\xff\x7fN.",
            b"\x80\x02X\xff\xff\xff\xffab.",
            b"\x80\x02\x8b\xff\xff\xff\x7f\x00.",
            b"T\xff\xff\xff\xff.",
        ] {
            let m = msg(p(b));
            assert!(m.contains("truncated") || m.contains("negative"), "{m}");
        }
    }

    #[test]
    fn bad_memo_index() {
        assert!(msg(p(b"\x80\x02h\x05.")).contains("memo index 5 was never stored"));
        assert!(msg(p(b"\x80\x02N\x94j\x01\x00\x00\x00.")).contains("memo index 1"));
        assert!(msg(p(b"g7\n.")).contains("memo index 7"));
        // PUT with an empty stack.
        assert!(msg(p(b"\x80\x02q\x00N.")).contains("underflow"));
    }

    #[test]
    fn unknown_and_unsupported_opcodes() {
        let m = msg(p(b"\x80\x02\xffN."));
        assert!(
            m.contains("unknown opcode 0xff") && m.contains("at byte 2"),
            "{m}"
        );
        assert!(msg(p(b"\x80\x02\x82\x01.")).contains("EXT1"));
        assert!(msg(p(b"\x80\x05\x97.")).contains("out-of-band"));
        assert!(msg(p(b"\x80\x09N.")).contains("protocol 9"));
    }

    #[test]
    fn stack_underflow_and_mark_errors() {
        for b in [
            &b"."[..],
            b"\x80\x02R.",
            b"\x80\x02N(R.",                    // REDUCE may not reach below the MARK
            b"\x80\x02t.",                      // TUPLE without MARK
            b"\x80\x02(K\x01a.",                // APPEND with only a value above the mark
            b"\x80\x02}(K\x01u.",               // odd number of SETITEMS items
            b"\x80\x02K\x01K\x02b.",            // BUILD on an int
            b"\x80\x02NK\x01a.",                // APPEND to None
            b"\x80\x02X\x01\x00\x00\x00a\x93.", // STACK_GLOBAL with one string
        ] {
            assert!(p(b).is_err(), "{b:?}");
        }
    }

    #[test]
    fn big_ints() {
        // 2**63 needs 9 bytes: kept as a big int, not truncated and not an error.
        let two63 = Value::BigInt(vec![0, 0, 0, 0, 0, 0, 0, 0x80, 0]);
        assert_eq!(
            p(b"\x80\x02\x8a\x09\x00\x00\x00\x00\x00\x00\x00\x80\x00.").unwrap(),
            two63
        );
        assert_eq!(p(b"L9223372036854775808L\n.").unwrap(), two63);
        // -(2**64) = ...ff 00*8 in two's complement; from LONG4 and from text.
        let neg = Value::BigInt(vec![0, 0, 0, 0, 0, 0, 0, 0, 0xff]);
        assert_eq!(
            p(b"\x80\x02\x8b\x09\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\xff.").unwrap(),
            neg
        );
        assert_eq!(p(b"L-18446744073709551616L\n.").unwrap(), neg);
        // Values that fit are Ints whatever their encoding (redundant sign bytes included).
        assert_eq!(p(b"\x80\x02\x8a\x03\xff\xff\xff.").unwrap(), Value::Int(-1));
        assert_eq!(
            p(b"\x80\x02\x8a\x0a\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00.").unwrap(),
            Value::Int(1)
        );
        assert_eq!(p(b"\x80\x02\x8a\x00.").unwrap(), Value::Int(0));
        assert_eq!(
            p(b"L-9223372036854775808L\n.").unwrap(),
            Value::Int(i64::MIN)
        );
        assert_eq!(p(b"I-7\n.").unwrap(), Value::Int(-7));
        // Not numbers, or absurdly long.
        assert!(msg(p(b"L12x3L\n.")).contains("not an integer"));
        let mut long = b"L".to_vec();
        long.extend(std::iter::repeat_n(b'9', 5000));
        long.extend_from_slice(b"L\n.");
        assert!(msg(p(&long)).contains("not an integer"));
    }

    #[test]
    fn deep_nesting_is_capped() {
        // 100k nested one-element lists: MARK … LIST, no recursion while parsing, an error
        // (not a stack overflow) when building the tree.
        let n = 100_000;
        let mut b = vec![0x80, 2];
        b.extend(std::iter::repeat_n(b'(', n));
        b.push(b'N');
        b.extend(std::iter::repeat_n(b'l', n));
        b.push(b'.');
        assert!(msg(p(&b)).contains("nesting deeper"));
        // Just under the cap is fine.
        let n = MAX_DEPTH - 1;
        let mut b = vec![0x80, 2];
        b.extend(std::iter::repeat_n(b'(', n));
        b.push(b'N');
        b.extend(std::iter::repeat_n(b'l', n));
        b.push(b'.');
        let mut v = p(&b).unwrap();
        let mut depth = 0;
        while let Value::List(mut items) = v {
            v = items.pop().unwrap();
            depth += 1;
        }
        assert_eq!((depth, v), (n, Value::None));
    }

    #[test]
    fn self_reference_and_memo_bomb_are_errors() {
        // l = []; l.append(l)
        assert!(msg(p(b"\x80\x02]q\x00h\x00a.")).contains("self-referencing"));
        // x0 = [None]; x_{i+1} = (x_i, x_i): 2^60 leaves if expanded.
        let mut b = b"\x80\x02N\x85".to_vec();
        for _ in 0..60 {
            b.extend_from_slice(b"2\x86");
        }
        b.push(b'.');
        assert!(msg(p(&b)).contains("too many values"));
        // A 1 MiB string referenced 2^10 times: few nodes, but 1 GiB if copied.
        let mut b = b"\x80\x02B\x00\x00\x10\x00".to_vec();
        b.extend(std::iter::repeat_n(b'x', 1 << 20));
        b.push(0x85);
        for _ in 0..10 {
            b.extend_from_slice(b"2\x86");
        }
        b.push(b'.');
        assert!(msg(p(&b)).contains("too many values"));
    }

    #[test]
    fn pop_mark_and_dup() {
        // MARK 1 2 POP_MARK, 3 DUP TUPLE2, with a POP of a mark.
        let v = p(b"\x80\x02(K\x01K\x021(0K\x032\x86.").unwrap();
        assert_eq!(v, Value::Tuple(vec![Value::Int(3), Value::Int(3)]));
    }
}
