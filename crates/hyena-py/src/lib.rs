//! The native module `hyena._hyena` behind the `hyena` Python package (`python/hyena`): models
//! loaded through the library's run-directory module, their embeddings, scores, logits,
//! generation and variant scores as NumPy arrays handed over without a copy, and the training
//! commands. Argument conversion only: the work is the `hyena` crate's, the same calls the CLI
//! makes, so the numbers are the CLI's.
//!
//! Every long call runs in [`run::blocking`]: the GIL released, the work on a worker thread
//! under an [`hyena::interrupt`] token, the calling thread polling for signals (Ctrl-C) and
//! forwarding progress to a Python callback.

mod errors;
mod model;
mod run;
mod tasks;

use pyo3::prelude::*;

/// Size of the worker pool of every later call (`None`: all cores).
#[pyfunction]
#[pyo3(signature = (n))]
fn set_num_threads(n: Option<usize>) -> PyResult<()> {
    run::set_threads(n).map_err(errors::to_py)
}

/// The worker threads a call uses now.
#[pyfunction]
fn get_num_threads() -> usize {
    run::num_threads(None)
}

#[pymodule]
fn _hyena(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<model::Model>()?;
    m.add_function(wrap_pyfunction!(model::load, m)?)?;
    m.add_function(wrap_pyfunction!(model::presets, m)?)?;
    m.add_function(wrap_pyfunction!(set_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(get_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(tasks::train, m)?)?;
    m.add_function(wrap_pyfunction!(tasks::train_config, m)?)?;
    m.add_function(wrap_pyfunction!(tasks::finetune, m)?)?;
    m.add_function(wrap_pyfunction!(tasks::distill, m)?)?;
    m.add_function(wrap_pyfunction!(tasks::mad, m)?)?;
    Ok(())
}
