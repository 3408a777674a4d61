//! tokio-console's live view of stalls: one `WorkerStalls` resource per process whose
//! attributes say how many workers are stalled right now, what the latest stall is polling and
//! the line it is blocked in. console-subscriber shows any `runtime.resource` span with
//! string-literal `concrete_type` and `kind`, and takes state-update events emitted in its scope
//! as attributes (one attribute per event; numbers need their `.op`).
//!
//! Emitted from the watchdog and symbolizer threads only, never from a subscriber callback.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::OnceLock;
use std::time::Duration;

use crate::engine::sites::Site;

fn resource() -> &'static tracing::Span {
    static SPAN: OnceLock<tracing::Span> = OnceLock::new();
    SPAN.get_or_init(|| {
        tracing::trace_span!(
            target: "stallscope::stalls",
            parent: None,
            "runtime.resource",
            concrete_type = "WorkerStalls",
            kind = "Watchdog",
        )
    })
}

/// Workers stalled past the threshold now (watchdog, on change only).
pub(crate) fn stalled_workers(n: u64) {
    static LAST: AtomicU64 = AtomicU64::new(u64::MAX);
    if LAST.swap(n, Relaxed) == n {
        return;
    }
    resource().in_scope(|| {
        tracing::trace!(
            target: "runtime::resource::state_update",
            stalled_workers = n,
            stalled_workers.op = "override",
        );
    });
}

/// The latest stall: its task's spawn location, how long it had run, where it is blocked.
pub(crate) fn latest_stall(site: &Site, elapsed: Duration, blocked_in: Option<&str>) {
    let location = site.location.to_string();
    resource().in_scope(|| {
        tracing::trace!(
            target: "runtime::resource::state_update",
            stalled_task = location.as_str(),
        );
        tracing::trace!(
            target: "runtime::resource::state_update",
            stall_ms = elapsed.as_millis() as u64,
            stall_ms.op = "override",
        );
        if let Some(frame) = blocked_in {
            tracing::trace!(target: "runtime::resource::state_update", blocked_in = frame);
        }
    });
}
