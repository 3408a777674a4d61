//! tokio's resource and async-op poll spans entered on this thread, innermost last: where
//! tokio's lock events come from. A `poll_op` event is emitted inside its op's poll span, a
//! lock's `state_update` and its acquisitions' `async_op` spans inside its resource span; the
//! innermost scope names them without asking the registry for the current span (a sharded-slab
//! lookup per event, and a lock operation makes several).
//!
//! Every span the layer ignores is kept too (as [`Scope::Ignored`]): tokio enters and exits
//! about fifty of them per lock operation, and an exit that matches the innermost entry then
//! ends with one comparison, before any class lookup. An exit matches the innermost entry by
//! span id, so a span missed on entry can never pop another's.

use std::cell::Cell;

use super::lock_holds::TrackedLock;
use super::resources::OpRef;

/// A span of tokio's whose events the layer reads.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Scope {
    /// A `runtime.resource` span: its lock, if the layer tracks it.
    Resource(Option<TrackedLock>),
    /// A `runtime.resource.async_op.poll` span: its acquisition (the parent async op), if the
    /// layer tracks it.
    OpPoll(Option<OpRef>),
    /// Any other span whose enters and exits the layer ignores: kept only so its exit is
    /// matched at once; never the scope of an event.
    Ignored,
}

/// Scopes nest a resource, an async op and its poll per lock operation, and a tokio lock's
/// operation nests its semaphore's: six deep, inside a task span the layer may ignore. Deeper
/// ones are counted, not kept.
const MAX_SCOPES: usize = 32;

struct ThreadScopes {
    entries: [Cell<(u64, Scope)>; MAX_SCOPES],
    /// Scopes entered and not exited; above `MAX_SCOPES`, the ones above are not kept.
    depth: Cell<usize>,
}

thread_local! {
    static SCOPES: ThreadScopes = const {
        ThreadScopes {
            entries: [const { Cell::new((0, Scope::OpPoll(None))) }; MAX_SCOPES],
            depth: Cell::new(0),
        }
    };
}

/// `span`, a scope, was entered on this thread.
#[inline]
pub(crate) fn enter(span: u64, scope: Scope) {
    let _ = SCOPES.try_with(|s| {
        let depth = s.depth.get();
        if let Some(entry) = s.entries.get(depth) {
            entry.set((span, scope));
        }
        s.depth.set(depth + 1);
    });
}

/// A span was exited: if it is the innermost scope, that scope ends (true).
#[inline]
pub(crate) fn exit_innermost(span: u64) -> bool {
    SCOPES
        .try_with(|s| {
            let depth = s.depth.get();
            let matches = match depth {
                0 => false,
                // Not kept: taken on trust (a scope's class said so, see `exit_kept`).
                d if d > MAX_SCOPES => false,
                d => s.entries[d - 1].get().0 == span,
            };
            if matches {
                s.depth.set(depth - 1);
            }
            matches
        })
        .unwrap_or(false)
}

/// A scope span that was not the innermost kept one exited: beyond the kept depth, the depth
/// drops; within it (spans exited out of order, which tracing allows), its entry is removed.
#[cold]
pub(crate) fn exit_not_innermost(span: u64) {
    let _ = SCOPES.try_with(|s| {
        let depth = s.depth.get();
        if depth > MAX_SCOPES {
            return s.depth.set(depth - 1);
        }
        let Some(at) = (0..depth).rev().find(|&i| s.entries[i].get().0 == span) else {
            return;
        };
        for i in at..depth - 1 {
            s.entries[i].set(s.entries[i + 1].get());
        }
        s.depth.set(depth - 1);
    });
}

/// The innermost scope (not [`Scope::Ignored`]) entered on this thread and its span, if it is
/// kept (`None` too when none is entered: the caller asks the registry).
#[inline]
pub(crate) fn innermost() -> Option<(u64, Scope)> {
    SCOPES
        .try_with(|s| match s.depth.get() {
            d if d > MAX_SCOPES => None,
            d => s.entries[..d]
                .iter()
                .rev()
                .map(Cell::get)
                .find(|(_, scope)| *scope != Scope::Ignored),
        })
        .ok()
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_on_new_thread(f: impl FnOnce() + Send + 'static) {
        std::thread::spawn(f).join().unwrap();
    }

    #[test]
    fn the_innermost_scope_is_the_last_entered_and_not_exited() {
        run_on_new_thread(|| {
            assert_eq!(innermost(), None);
            enter(1, Scope::Resource(None));
            enter(2, Scope::OpPoll(Some(OpRef::for_tests(7))));
            assert_eq!(
                innermost(),
                Some((2, Scope::OpPoll(Some(OpRef::for_tests(7)))))
            );
            // Another span's exit pops nothing.
            assert!(!exit_innermost(3));
            assert!(exit_innermost(2));
            assert_eq!(innermost(), Some((1, Scope::Resource(None))));
            assert!(exit_innermost(1));
            assert_eq!(innermost(), None);
        });
    }

    #[test]
    fn ignored_spans_are_matched_on_exit_but_never_an_events_scope() {
        run_on_new_thread(|| {
            enter(1, Scope::Ignored);
            assert_eq!(innermost(), None);
            enter(2, Scope::Resource(None));
            enter(3, Scope::Ignored);
            assert_eq!(innermost(), Some((2, Scope::Resource(None))));
            assert!(exit_innermost(3));
            assert!(exit_innermost(2));
            assert!(exit_innermost(1));
            assert_eq!(innermost(), None);
        });
    }

    #[test]
    fn a_scope_exited_out_of_order_leaves_the_others() {
        run_on_new_thread(|| {
            enter(1, Scope::Resource(None));
            enter(2, Scope::OpPoll(None));
            enter(3, Scope::OpPoll(Some(OpRef::for_tests(9))));
            exit_not_innermost(2);
            assert_eq!(
                innermost(),
                Some((3, Scope::OpPoll(Some(OpRef::for_tests(9)))))
            );
            assert!(exit_innermost(3));
            assert_eq!(innermost(), Some((1, Scope::Resource(None))));
        });
    }

    #[test]
    fn scopes_deeper_than_kept_are_unknown_until_they_exit() {
        run_on_new_thread(|| {
            for span in 1..=MAX_SCOPES as u64 + 2 {
                enter(span, Scope::OpPoll(None));
            }
            assert_eq!(
                innermost(),
                None,
                "beyond the kept depth the caller asks the registry"
            );
            // The two not kept exit on their class's word.
            assert!(!exit_innermost(MAX_SCOPES as u64 + 2));
            exit_not_innermost(MAX_SCOPES as u64 + 2);
            exit_not_innermost(MAX_SCOPES as u64 + 1);
            assert_eq!(innermost(), Some((MAX_SCOPES as u64, Scope::OpPoll(None))));
        });
    }
}
