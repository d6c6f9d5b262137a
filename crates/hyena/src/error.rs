//! The library's one error type. Every fallible call returns `Result<T, hyena::Error>`;
//! each variant names the operation, the offending shape or value, and what to do about it.

use std::path::PathBuf;

/// Errors returned by the `hyena` library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    // === Shape and length errors ===
    /// A buffer's length or a tensor's shape disagrees with what the operation needs.
    #[error("{op}: shape mismatch for `{what}`: expected {expected}, got {got}")]
    Shape {
        op: &'static str,
        what: String,
        expected: String,
        got: String,
    },
    /// The sequence is longer than the filter was built for (`l_max`).
    #[error(
        "{op}: sequence length L={len} exceeds l_max={l_max}; \
         build the operator with l_max >= {len} or feed shorter windows"
    )]
    TooLong {
        op: &'static str,
        len: usize,
        l_max: usize,
    },
    /// A configuration value is out of its valid range.
    #[error("invalid config `{field}` = {value}: {hint}")]
    Config {
        field: &'static str,
        value: String,
        hint: String,
    },
    /// The estimated memory of an operation exceeds what the machine has available
    /// (`memory::check_fits`): refused before allocating, instead of an abort.
    #[error(
        "{what} needs about {} of memory, but {} are available; reduce {hint}",
        gib(*need),
        gib(*available)
    )]
    Memory {
        what: String,
        need: u64,
        available: u64,
        hint: String,
    },

    /// Training produced a loss or gradient norm that is not finite.
    #[error(
        "training diverged at step {step}: loss {loss}, gradient norm {grad_norm} at learning \
         rate {lr:e}{}; the weights of that step were not applied and the last good checkpoint \
         is kept. Lower the learning rate (--lr) or raise the warm-up, or pass \
         --skip-nonfinite N to skip up to N such steps",
        if *skipped > 0 { format!(" ({skipped} bad steps skipped before)") } else { String::new() }
    )]
    Diverged {
        step: u64,
        loss: f64,
        grad_norm: f32,
        lr: f32,
        skipped: u64,
    },

    /// The caller cancelled the call ([`crate::interrupt`]) between two units of work.
    #[error("interrupted: stopped between two units of work; files already committed are whole")]
    Interrupted,

    /// A data-parallel run stopped because one rank failed ([`crate::train::dist::agree`]):
    /// every rank returns this same error, with the failing rank's message.
    #[error("rank {rank} of {ranks}: {msg}")]
    Rank {
        rank: usize,
        ranks: usize,
        msg: String,
    },

    // === Checkpoint / file errors ===
    /// A named tensor is missing from a checkpoint or fixture.
    #[error("{file}: tensor `{name}` not found; the file has {available} tensors (is it the right checkpoint?)")]
    MissingTensor {
        file: PathBuf,
        name: String,
        available: usize,
    },
    /// A file could not be parsed.
    #[error("{file}: {msg}")]
    Format { file: PathBuf, msg: String },
    /// An I/O error with the file it concerns.
    #[error("{file}: {source}")]
    Io {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Shorthand used throughout the library.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Build a [`Error::Shape`] from displayable parts.
    pub fn shape(
        op: &'static str,
        what: impl Into<String>,
        expected: impl std::fmt::Display,
        got: impl std::fmt::Display,
    ) -> Self {
        Error::Shape {
            op,
            what: what.into(),
            expected: expected.to_string(),
            got: got.to_string(),
        }
    }

    /// Build a [`Error::Format`]: `file` could not be read as what it should be.
    pub fn format(file: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Format {
            file: file.into(),
            msg: msg.into(),
        }
    }

    /// A `map_err` adapter turning an I/O error on `file` into [`Error::Io`].
    pub fn io(file: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let file = file.into();
        move |source| Error::Io { file, source }
    }

    /// Build a [`Error::Config`].
    pub fn config(
        field: &'static str,
        value: impl std::fmt::Display,
        hint: impl Into<String>,
    ) -> Self {
        Error::Config {
            field,
            value: value.to_string(),
            hint: hint.into(),
        }
    }
}

/// `bytes` in GiB with two decimals, or in MiB below a tenth of a GiB (a small limit would
/// read "0.00 GiB").
fn gib(bytes: u64) -> String {
    let g = bytes as f64 / (1u64 << 30) as f64;
    if g >= 0.1 {
        format!("{g:.2} GiB")
    } else {
        format!("{:.3} MiB", bytes as f64 / (1u64 << 20) as f64)
    }
}

/// Check that a buffer holds exactly `expected` elements.
pub(crate) fn check_len(op: &'static str, what: &str, got: usize, expected: usize) -> Result<()> {
    if got != expected {
        return Err(Error::shape(
            op,
            what,
            format!("{expected} elements"),
            format!("{got} elements"),
        ));
    }
    Ok(())
}
