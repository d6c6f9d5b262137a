//! Long calls from Python: the GIL released, Ctrl-C honoured, progress forwarded.
//!
//! [`blocking`] runs the work on a worker thread (inside the worker pool chosen by
//! `set_num_threads` or `load(threads=…)`) under an [`hyena::interrupt`] token. The calling
//! thread, which holds no GIL while it waits, wakes every 50 ms: it hands queued progress
//! events to the Python callback and calls `PyErr_CheckSignals`, which runs Python's SIGINT
//! handler. When that raises (KeyboardInterrupt) or the callback raises, the token is
//! cancelled; the library stops at its next check (between blocks, steps, variants), cleans up
//! as on any error (temp files removed, committed files kept) and the Python exception is
//! raised in the caller. Other Python threads run meanwhile: the GIL is only taken for the
//! polls.

use std::sync::mpsc::{channel, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyena::interrupt::{self, Token};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::errors::to_py;

/// One progress report: what is counted (`records`, `blocks`, `steps`, `variants`,
/// `filters`, `epochs`, `tokens`), how far, and a line of text.
#[derive(Clone, Debug, Default)]
pub struct Event {
    pub unit: &'static str,
    pub done: u64,
    pub total: u64,
    pub message: String,
}

/// Where the work sends its events (cheap to clone into library callbacks). It holds its
/// sender even without a callback: the waiting thread learns that the work ended when the
/// last sender is dropped.
#[derive(Clone)]
pub struct Reporter {
    tx: Sender<Event>,
    on: bool,
}

impl Reporter {
    pub fn send(&self, e: Event) {
        if self.on {
            let _ = self.tx.send(e);
        }
    }
}

/// The pool set by `set_num_threads` (`None`: rayon's global pool, all cores).
static POOL: Mutex<Option<Arc<rayon::ThreadPool>>> = Mutex::new(None);

fn build_pool(n: usize) -> hyena::Result<Arc<rayon::ThreadPool>> {
    if n == 0 {
        return Err(hyena::Error::config(
            "threads",
            n,
            "give at least 1 (or None for all cores)",
        ));
    }
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build()
        .map(Arc::new)
        .map_err(|e| hyena::Error::config("threads", n, format!("the pool could not start: {e}")))
}

/// A pool of `n` threads for one model (`load(threads=n)`).
pub fn model_pool(n: Option<usize>) -> hyena::Result<Option<Arc<rayon::ThreadPool>>> {
    n.map(build_pool).transpose()
}

pub fn set_threads(n: Option<usize>) -> hyena::Result<()> {
    let pool = model_pool(n)?;
    *POOL.lock().unwrap_or_else(|e| e.into_inner()) = pool;
    Ok(())
}

/// Threads a call with the model's pool `own` (if any) runs on.
pub fn num_threads(own: Option<&Arc<rayon::ThreadPool>>) -> usize {
    match own.cloned().or_else(global_pool) {
        Some(p) => p.current_num_threads(),
        None => rayon::current_num_threads(),
    }
}

fn global_pool() -> Option<Arc<rayon::ThreadPool>> {
    POOL.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Run `work` as described in the module docs. `callback` (a Python callable taking one dict:
/// `unit`, `done`, `total`, `message`) receives the events `work` sends; `pool` is the
/// model's own worker pool, if it has one.
pub fn blocking<T: Send>(
    py: Python<'_>,
    callback: Option<Py<PyAny>>,
    pool: Option<&Arc<rayon::ThreadPool>>,
    work: impl FnOnce(&Reporter) -> hyena::Result<T> + Send,
) -> PyResult<T> {
    let token = Token::new();
    let pool = pool.cloned().or_else(global_pool);
    let (tx, rx) = channel::<Event>();
    let reporter = Reporter {
        tx,
        on: callback.is_some(),
    };
    let (raised, res) = py.detach(move || {
        let mut raised: Option<PyErr> = None;
        let res = std::thread::scope(|s| {
            let tok = token.clone();
            let worker = s.spawn(move || {
                let run = move || interrupt::scope(&tok, || work(&reporter));
                match pool {
                    Some(p) => p.install(run),
                    None => run(),
                }
            });
            loop {
                let finished = worker.is_finished();
                let mut events = Vec::new();
                match rx.recv_timeout(Duration::from_millis(50)) {
                    Ok(e) => {
                        events.push(e);
                        events.extend(rx.try_iter());
                    }
                    Err(RecvTimeoutError::Timeout) => {}
                    // The work ended (its sender is gone): no wait.
                    Err(RecvTimeoutError::Disconnected) => {
                        if !finished {
                            // Dropped a moment before the thread is marked finished.
                            std::thread::yield_now();
                        }
                    }
                }
                if raised.is_none() {
                    Python::attach(|py| {
                        // Only the latest event of a burst matters to a progress bar.
                        if let (Some(cb), Some(e)) = (&callback, events.last()) {
                            if let Err(err) = call(py, cb, e) {
                                raised = Some(err);
                            }
                        }
                        if raised.is_none() {
                            if let Err(err) = py.check_signals() {
                                raised = Some(err);
                            }
                        }
                    });
                    if raised.is_some() {
                        token.cancel();
                    }
                }
                if finished {
                    break;
                }
            }
            worker.join()
        });
        (raised, res)
    });
    let res = match res {
        Ok(r) => r,
        Err(_) => {
            return Err(pyo3::exceptions::PyRuntimeError::new_err(
                "the hyena worker thread panicked (a bug: please report it with the call that \
                 caused it)",
            ))
        }
    };
    match (raised, res) {
        // The caller's exception (KeyboardInterrupt, or the callback's) wins over the
        // library's `Interrupted` it caused, and over a result that came in meanwhile.
        (Some(e), _) => Err(e),
        (None, Ok(v)) => Ok(v),
        (None, Err(e)) => Err(to_py(e)),
    }
}

fn call(py: Python<'_>, cb: &Py<PyAny>, e: &Event) -> PyResult<()> {
    let d = PyDict::new(py);
    d.set_item("unit", e.unit)?;
    d.set_item("done", e.done)?;
    d.set_item("total", e.total)?;
    d.set_item("message", &e.message)?;
    cb.call1(py, (d,))?;
    Ok(())
}
