//! Library errors as Python exceptions. The classes live in `hyena/_errors.py` (each derives
//! from `hyena.HyenaError` and from the built-in a Python user catches: `ValueError`,
//! `FileNotFoundError`, `OSError`, `MemoryError`, `RuntimeError`); the message is the
//! library's, the text the CLI prints after `error:`.

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::PyType;

/// The exception class of `hyena._errors` named `name`, or `RuntimeError` if the module is
/// missing (the native module imported on its own).
fn class<'py>(py: Python<'py>, name: &str) -> Option<Bound<'py, PyType>> {
    let m = py.import("hyena._errors").ok()?;
    m.getattr("BY_BUILTIN")
        .ok()?
        .get_item(name)
        .ok()?
        .cast_into::<PyType>()
        .ok()
}

fn raise(
    name: &str,
    args: impl for<'py> FnOnce(Python<'py>) -> PyResult<Bound<'py, PyAny>>,
) -> PyErr {
    Python::attach(|py| match class(py, name) {
        Some(cls) => match args(py).and_then(|a| cls.call1(a.cast_into::<pyo3::types::PyTuple>()?))
        {
            Ok(e) => PyErr::from_value(e),
            Err(e) => e,
        },
        None => PyRuntimeError::new_err(format!("{name}: hyena._errors is not importable")),
    })
}

/// A `hyena._errors` exception of class `name` with message `msg`.
pub fn new_err(name: &str, msg: String) -> PyErr {
    raise(name, move |py| Ok((msg,).into_pyobject(py)?.into_any()))
}

/// The Python exception of a library error.
pub fn to_py(e: hyena::Error) -> PyErr {
    use hyena::Error as E;
    let msg = e.to_string();
    match &e {
        E::Io { file, source } => {
            let errno = source.raw_os_error().unwrap_or(0);
            let name = match source.kind() {
                std::io::ErrorKind::NotFound => "FileNotFoundError",
                std::io::ErrorKind::PermissionDenied => "PermissionError",
                _ => "OSError",
            };
            let file = file.display().to_string();
            // OSError(errno, strerror, filename): `e.filename` names the file.
            raise(name, move |py| {
                Ok((errno, msg, file).into_pyobject(py)?.into_any())
            })
        }
        E::Memory { .. } => new_err("MemoryError", msg),
        E::Diverged { .. } | E::Rank { .. } => new_err("RuntimeError", msg),
        E::Interrupted => pyo3::exceptions::PyKeyboardInterrupt::new_err(msg),
        E::Shape { .. }
        | E::TooLong { .. }
        | E::Config { .. }
        | E::Format { .. }
        | E::MissingTensor { .. } => new_err("ValueError", msg),
    }
}
