//! [`Handle`]: names the instance a drop-in wrapper or [`task::spawn_blocking_in`] reports to.
//!
//! [`task::spawn_blocking_in`]: crate::task::spawn_blocking_in

use std::fmt;
use std::sync::{Arc, Weak};

use crate::engine::Engine;

/// Which stallscope instance a drop-in measures into, when it should not be the default one.
///
/// The drop-in wrappers of [`crate::sync`] and [`crate::task::spawn_blocking`] report to the
/// process's default instance: the first one started. A process with two instances (a library
/// with its own, a test) gives the others' locks and blocking jobs a handle:
/// [`Mutex::new_in`](crate::sync::Mutex::new_in) (every wrapper has `new_in` and `named_in`)
/// and [`task::spawn_blocking_in`](crate::task::spawn_blocking_in).
///
/// A handle does not keep its instance alive: once the instance's layer and guards are
/// dropped, what uses the handle is no longer measured, as with the default instance. Using a
/// handle starts its instance, like taking a guard does.
///
/// ```
/// let first = stallscope::Builder::new().build().unwrap();
/// let first_guard = first.guard(); // the default instance
/// let second = stallscope::Builder::new().build().unwrap();
/// let second_guard = second.guard();
///
/// let cache = stallscope::sync::Mutex::named_in("cache", 0u32, &second.handle());
/// *cache.lock().unwrap() += 1;
/// let measured = second_guard.snapshot().locks;
/// assert_eq!(measured[0].name.as_deref(), Some("cache"));
/// assert!(first_guard.snapshot().locks.is_empty());
/// ```
#[derive(Clone)]
pub struct Handle {
    engine: Weak<Engine>,
}

impl Handle {
    pub(crate) fn new(engine: &Arc<Engine>) -> Self {
        Handle {
            engine: Arc::downgrade(engine),
        }
    }

    /// The instance, started, while it lives.
    pub(crate) fn engine(&self) -> Option<Arc<Engine>> {
        let engine = self.engine.upgrade()?;
        Engine::start(&engine);
        Some(engine)
    }
}

impl fmt::Debug for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handle")
            .field("live", &(self.engine.strong_count() > 0))
            .finish()
    }
}
