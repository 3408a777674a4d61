//! Production mode's measurement source in a build without `--cfg tokio_unstable`: tokio has
//! no poll hooks there, so none are installed, and the engine and the clock are told of no
//! hooked task and no watchdog.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;

use crate::engine::Engine;

/// Says once that tokio's poll hooks need `--cfg tokio_unstable`, and leaves `builder` as it is.
pub(crate) fn instrument_runtime<'b>(
    engine: &Arc<Engine>,
    builder: &'b mut tokio::runtime::Builder,
) -> &'b mut tokio::runtime::Builder {
    Engine::start(engine);
    static SAID: AtomicBool = AtomicBool::new(false);
    if !SAID.swap(true, Relaxed) {
        tracing::warn!(
            target: "stallscope",
            "instrument_runtime: tokio's poll hooks need `--cfg tokio_unstable`; this runtime's polls \
             are not measured (runtime metrics still are)"
        );
    }
    builder
}

/// No task is seen by hooks, and none holds back fast polls.
pub(crate) fn sources() -> crate::engine::Sources {
    crate::engine::Sources {
        span_task: || None,
        hooked_task: || None,
        pending_fast_polls: |_| {},
        publications: Vec::new,
        publications_unchanged_since: |_| true,
    }
}

/// No watchdog looks at the slots.
pub(crate) fn upkeep() -> crate::clock::Upkeep {
    crate::clock::Upkeep {
        look: |_| false,
        polling: || false,
        unparked: || false,
        watching: false,
        no_thread: |_| {},
        counter_left: |_| {},
    }
}
