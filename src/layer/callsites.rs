//! What each callsite is to the layer, decided once per callsite in `register_callsite` (as
//! console-subscriber does) from its metadata alone, and found again by the address of that
//! `&'static Metadata`: a span's or event's class costs a hash and a pointer compare, never a
//! compare of names.
//!
//! A lock-free table, open addressing by the metadata's address, each slot one word: the
//! address with the class in its low bits (a `Metadata` is aligned to 8). A callsite not found
//! (the table nearly full, or a span made on another thread while its callsite was still being
//! registered) is classified from its names right there, the same answer.

use std::sync::atomic::{
    AtomicUsize,
    Ordering::{Acquire, Relaxed},
};

use tracing::Metadata;

use crate::engine::stall;

/// What a callsite is to the layer.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(usize)]
pub(crate) enum Callsite {
    /// A span that is not tokio's (a user span, a culprit candidate), or an event the layer
    /// does not read.
    Other = 0,
    /// Another of tokio's own spans (`runtime.*`): never a culprit.
    Internal = 1,
    /// `runtime.spawn`: a task, blocking job or `block_on`.
    Spawn = 2,
    /// `runtime.resource`: a lock, channel, timer...
    Resource = 3,
    /// `runtime.resource.async_op`: an acquisition or other operation on a resource.
    AsyncOp = 4,
    /// `runtime.resource.async_op.poll`: an async op's poll.
    OpPoll = 5,
    /// `runtime::resource::poll_op` events with `is_ready`: an acquisition's poll outcome.
    PollOpEvent = 6,
    /// `runtime::resource::state_update` events with `locked`/`write_locked`: a hold begins
    /// or ends.
    LockStateEvent = 7,
}

/// The low bits of an entry, its class.
const TAG: usize = 7;

impl Callsite {
    /// The class of tag `tag` (at most [`TAG`]): the same value.
    #[inline(always)]
    fn from_tag(tag: usize) -> Callsite {
        match tag {
            1 => Callsite::Internal,
            2 => Callsite::Spawn,
            3 => Callsite::Resource,
            4 => Callsite::AsyncOp,
            5 => Callsite::OpPoll,
            6 => Callsite::PollOpEvent,
            7 => Callsite::LockStateEvent,
            _ => Callsite::Other,
        }
    }
}

/// Slots of the table (a power of two), and how many may be filled: the rest stay empty, so
/// a lookup always ends.
const SLOTS_BITS: u32 = 12;
const SLOTS: usize = 1 << SLOTS_BITS;
const MAX_FILLED: usize = SLOTS / 4 * 3;

static TABLE: [AtomicUsize; SLOTS] = [const { AtomicUsize::new(0) }; SLOTS];
static FILLED: AtomicUsize = AtomicUsize::new(0);

/// The metadata's address, the table's key.
#[inline(always)]
fn key(meta: &'static Metadata<'static>) -> usize {
    meta as *const Metadata<'static> as usize
}

/// The slot where `key`'s probe starts (a Fibonacci multiply: statics sit a few dozen bytes
/// apart, so the address's high bits and low bits alone would crowd).
#[inline(always)]
fn first_slot(key: usize) -> usize {
    ((key as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - SLOTS_BITS)) as usize
}

/// Classifies `meta`'s callsite, once: `register_callsite`. Spans all, events only those whose
/// target [`event_may_be_read`] (the others are never looked up).
pub(crate) fn register(meta: &'static Metadata<'static>) {
    if meta.is_event() && !event_may_be_read(meta) {
        return;
    }
    let key = key(meta);
    if key & TAG != 0 {
        // (Aligned to 8 on 64-bit targets. Elsewhere such a callsite is classified on each
        // lookup: no entry's address is within 8 bytes of another `Metadata`'s.)
        return;
    }
    let entry = key | classify(meta) as usize;
    let mut slot = first_slot(key);
    loop {
        let word = TABLE[slot].load(Acquire);
        if word == 0 {
            // (Approximate under concurrent registrations, which MAX_FILLED leaves room for.)
            if FILLED.load(Relaxed) >= MAX_FILLED {
                return;
            }
            match TABLE[slot].compare_exchange(0, entry, Relaxed, Relaxed) {
                Ok(_) => {
                    FILLED.fetch_add(1, Relaxed);
                    return;
                }
                Err(word) if word & !TAG == key => return,
                Err(_) => {}
            }
        } else if word & !TAG == key {
            // Registered again (for another dispatcher).
            return;
        }
        slot = (slot + 1) & (SLOTS - 1);
    }
}

/// What `meta`'s callsite is: decided at its registration, or now if it was not found.
#[inline(always)]
pub(crate) fn of(meta: &'static Metadata<'static>) -> Callsite {
    let key = key(meta);
    let slot = first_slot(key);
    // The entry's tag when the slot holds `meta`'s entry, else a value above it.
    let tag = TABLE[slot].load(Relaxed) ^ key;
    if tag <= TAG {
        return Callsite::from_tag(tag);
    }
    probed(meta, slot)
}

/// [`of`] past its first slot: the rest of the probe, or the names if not registered.
#[inline(never)]
fn probed(meta: &'static Metadata<'static>, mut slot: usize) -> Callsite {
    let key = key(meta);
    loop {
        let word = TABLE[slot].load(Relaxed);
        if word == 0 {
            return classify(meta);
        }
        if word & !TAG == key {
            return Callsite::from_tag(word & TAG);
        }
        slot = (slot + 1) & (SLOTS - 1);
    }
}

/// Whether an event of `meta` may be one the layer reads: most events (tokio's waker events
/// on every poll among them) are told apart by the length of their target alone, before any
/// lookup.
#[inline(always)]
pub(crate) fn event_may_be_read(meta: &Metadata<'_>) -> bool {
    const POLL_OP: usize = "runtime::resource::poll_op".len();
    const STATE_UPDATE: usize = "runtime::resource::state_update".len();
    matches!(meta.target().len(), POLL_OP | STATE_UPDATE)
}

/// The class from the metadata's names and fields: the only place they are compared.
#[cold]
#[inline(never)]
fn classify(meta: &Metadata<'_>) -> Callsite {
    if meta.is_event() {
        let has = |name: &str| meta.fields().field(name).is_some();
        return match meta.target() {
            "runtime::resource::poll_op" if has("is_ready") => Callsite::PollOpEvent,
            "runtime::resource::state_update" if has("locked") || has("write_locked") => {
                Callsite::LockStateEvent
            }
            _ => Callsite::Other,
        };
    }
    match meta.name() {
        "runtime.spawn" => Callsite::Spawn,
        "runtime.resource" => Callsite::Resource,
        "runtime.resource.async_op" => Callsite::AsyncOp,
        "runtime.resource.async_op.poll" => Callsite::OpPoll,
        // tokio's own resource and async-op spans are not where user code blocks; timing them
        // would double the cost of every lock and channel operation.
        _ if stall::is_tokio_internal(meta) => Callsite::Internal,
        _ => Callsite::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Site;
    static SPAWN: Metadata<'static> = tracing::metadata! {
        name: "runtime.spawn",
        target: "tokio::task",
        level: tracing::Level::TRACE,
        fields: &[],
        callsite: &Site,
        kind: tracing::metadata::Kind::SPAN,
    };
    impl tracing::callsite::Callsite for Site {
        fn set_interest(&self, _: tracing::subscriber::Interest) {}
        fn metadata(&self) -> &Metadata<'_> {
            &SPAWN
        }
    }

    #[test]
    fn callsites_are_classified_by_their_names_registered_or_not() {
        assert_eq!(
            of(&SPAWN),
            Callsite::Spawn,
            "not registered: classified on lookup"
        );
        register(&SPAWN);
        register(&SPAWN);
        assert_eq!(of(&SPAWN), Callsite::Spawn);
        tracing::subscriber::with_default(tracing_subscriber::registry(), || {
            let spans = [
                (tracing::trace_span!("runtime.resource"), Callsite::Resource),
                (
                    tracing::trace_span!("runtime.resource.async_op"),
                    Callsite::AsyncOp,
                ),
                (
                    tracing::trace_span!("runtime.resource.async_op.poll"),
                    Callsite::OpPoll,
                ),
                (tracing::trace_span!("runtime.other"), Callsite::Internal),
                (tracing::info_span!("user"), Callsite::Other),
            ];
            for (span, class) in spans {
                let meta = span.metadata().expect("enabled");
                register(meta);
                assert_eq!(of(meta), class);
            }
        });
    }
}
