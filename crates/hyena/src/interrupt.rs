//! Cooperative interruption of long calls (a Python caller's Ctrl-C, a host that gives up).
//!
//! A caller runs work under [`scope`] with a [`Token`] and cancels the token from another
//! thread; the long loops of the library (blocks of a forward, tokens of a generation, steps
//! of a training run, variants of a scan) call [`check`] between units of work and return
//! [`Error::Interrupted`] once the token is cancelled. Units are never cut in half: what a
//! call has committed to disk (checkpoints, flushed rows) stays whole, and temporary files are
//! removed by the error path as for any other error. Without a scope, [`check`] costs one
//! thread-local read and never fails (the CLI relies on the default signal handling).

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::error::{Error, Result};

/// A cancellation flag shared between the thread doing the work and the one that may stop it.
#[derive(Clone, Debug, Default)]
pub struct Token(Arc<AtomicBool>);

impl Token {
    pub fn new() -> Self {
        Self::default()
    }
    /// Ask the work to stop at its next [`check`].
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

thread_local! {
    static CURRENT: RefCell<Option<Token>> = const { RefCell::new(None) };
}

/// Run `f` on this thread with `token` as the one [`check`] reads (the previous one is
/// restored afterwards, also when `f` panics).
pub fn scope<T>(token: &Token, f: impl FnOnce() -> T) -> T {
    struct Restore(Option<Token>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let prev = self.0.take();
            CURRENT.with(|c| *c.borrow_mut() = prev);
        }
    }
    let prev = CURRENT.with(|c| c.borrow_mut().replace(token.clone()));
    let _restore = Restore(prev);
    f()
}

/// `Err(Error::Interrupted)` when the token of the current [`scope`] was cancelled.
pub fn check() -> Result<()> {
    let stop = CURRENT.with(|c| c.borrow().as_ref().is_some_and(Token::is_cancelled));
    if stop {
        Err(Error::Interrupted)
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_fails_only_inside_a_cancelled_scope() {
        assert!(check().is_ok());
        let t = Token::new();
        scope(&t, || {
            assert!(check().is_ok());
            t.cancel();
            assert!(matches!(check(), Err(Error::Interrupted)));
            // Another thread has no scope: its checks pass.
            std::thread::spawn(|| assert!(check().is_ok()))
                .join()
                .unwrap();
        });
        // The scope is gone with its token.
        assert!(check().is_ok());
    }

    #[test]
    fn nested_scopes_restore_the_outer_token() {
        let (outer, inner) = (Token::new(), Token::new());
        outer.cancel();
        scope(&outer, || {
            scope(&inner, || assert!(check().is_ok()));
            assert!(check().is_err());
        });
    }
}
