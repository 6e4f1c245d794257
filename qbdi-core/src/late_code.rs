//! Code mapped after the Vms started: instrumented ranges an embedder publishes for every
//! Vm of the process (the `qbdi` host publishes a library that `dlopen` maps when it
//! matches the run's range options, and withdraws the ranges of one `dlclose` unmaps).
//!
//! Each Vm takes the changes at its next dispatcher round (a cache miss, a native call, a
//! new block): the published ranges join (or leave) its instrumented ranges, and anything it
//! had learnt about those addresses (native entries of its inline table, translations) is
//! dropped. The check is one relaxed atomic load per dispatcher round.
//!
//! Code written at run time (a JIT's, an unpacker's) is found by the Vms themselves when
//! [`instrument_anonymous_code`] is on: see the function.

use crate::range::Range;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// One published change.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Change {
    /// Added (true) or removed.
    pub add: bool,
    pub range: Range,
    /// An added range of a file mapped readable and not writable (a library's code): a Vm
    /// takes it as readable memory without reading the process maps again.
    pub mapped: bool,
}

static LOG: Mutex<Vec<Change>> = Mutex::new(Vec::new());
/// How many changes were published (the length of `LOG`).
static PUBLISHED: AtomicU64 = AtomicU64::new(0);

/// Adds `add` to and removes `remove` from the instrumented ranges of every Vm of the
/// process, from each one's next dispatcher round on.
pub fn publish_ranges(add: &[Range], remove: &[Range]) {
    let mut log = LOG
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    log.extend(remove.iter().map(|&range| Change {
        add: false,
        range,
        mapped: false,
    }));
    log.extend(add.iter().map(|&range| Change {
        add: true,
        range,
        mapped: false,
    }));
    PUBLISHED.store(log.len() as u64, Ordering::Release);
}

/// As [`publish_ranges`] adding `add`, for code the caller knows to be mapped from a file,
/// readable and not writable, for as long as it stays published (a library the loader
/// mapped): every Vm then knows it readable without reading `/proc/self/maps` again, and
/// translates it without the byte checks of code that may change.
pub fn publish_mapped_code(add: &[Range]) {
    let mut log = LOG
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    log.extend(add.iter().map(|&range| Change {
        add: true,
        range,
        mapped: true,
    }));
    PUBLISHED.store(log.len() as u64, Ordering::Release);
}

/// How many changes were published so far.
pub(crate) fn published() -> u64 {
    PUBLISHED.load(Ordering::Acquire)
}

/// The change published `index`-th (from 0), if there is one.
pub(crate) fn change_at(index: u64) -> Option<Change> {
    if index >= published() {
        return None;
    }
    let log = LOG
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    log.get(index as usize).copied()
}

static ANONYMOUS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// With `on`, every Vm of the process instruments executable anonymous memory (a JIT's
/// code, code on the stack or the heap) when the guest first jumps there, as part of its
/// instrumented ranges (the `qbdi` host turns it on for `--all-maps`). Blocks translated
/// from such memory, or from any writable memory, check at each entry that their guest
/// bytes did not change, and are translated again when they did (self-modifying code).
pub fn instrument_anonymous_code(on: bool) {
    ANONYMOUS.store(on, Ordering::SeqCst);
}

/// Whether anonymous executable memory is instrumented (see [`instrument_anonymous_code`]).
pub(crate) fn anonymous_code() -> bool {
    ANONYMOUS.load(Ordering::Relaxed)
}
