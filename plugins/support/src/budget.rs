//! The `max=N` option of the trace plugins: record N events, then remove the plugin's
//! callbacks so the rest of the run pays nothing.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use qbdi_sdk::prelude::{CallbackId, VmRef};

use crate::sync::lock;

/// A count of events against a limit, and the callbacks to remove when it is reached.
#[derive(Debug)]
pub struct Budget {
    limit: AtomicU64,
    used: AtomicU64,
    callbacks: Mutex<Vec<CallbackId>>,
}

/// What [`Budget::take`] allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Take {
    /// Record this event.
    Record,
    /// Record this event, the last one: then call [`Budget::stop`].
    Last,
    /// Do not record (the limit was reached).
    Over,
}

impl Budget {
    /// An unlimited budget (for a `static`).
    pub const fn new() -> Budget {
        Budget {
            limit: AtomicU64::new(u64::MAX),
            used: AtomicU64::new(0),
            callbacks: Mutex::new(Vec::new()),
        }
    }

    /// Sets the limit (`None`: unlimited).
    pub fn set_limit(&self, limit: Option<u64>) {
        self.limit.store(limit.unwrap_or(u64::MAX), Relaxed);
    }

    /// The limit, if any.
    pub fn limit(&self) -> Option<u64> {
        Some(self.limit.load(Relaxed)).filter(|&l| l != u64::MAX)
    }

    /// Counts one event.
    pub fn take(&self) -> Take {
        let limit = self.limit.load(Relaxed);
        if limit == u64::MAX {
            return Take::Record;
        }
        let n = self.used.fetch_add(1, Relaxed);
        match (n + 1).cmp(&limit) {
            std::cmp::Ordering::Less => Take::Record,
            std::cmp::Ordering::Equal => Take::Last,
            std::cmp::Ordering::Greater => Take::Over,
        }
    }

    /// Events recorded so far (counted only when there is a limit).
    pub fn used(&self) -> u64 {
        self.used.load(Relaxed).min(self.limit.load(Relaxed))
    }

    /// Remembers a callback to remove at [`stop`](Budget::stop).
    pub fn add_callback(&self, id: CallbackId) {
        lock(&self.callbacks).push(id);
    }

    /// Whether every allowed record was taken.
    pub fn exhausted(&self) -> bool {
        self.used.load(Relaxed) >= self.limit.load(Relaxed)
    }

    /// Deletes the registered callbacks from `vm`: the Vm of the thread the calling
    /// callback runs on (each thread has its own; each one that sees the budget spent
    /// deletes them from its own, so no thread keeps paying for callbacks that record
    /// nothing).
    pub fn stop(&self, vm: &mut VmRef) {
        let ids = lock(&self.callbacks).clone();
        for id in ids {
            let _ = vm.delete_instrumentation(id);
        }
    }
}

impl Default for Budget {
    fn default() -> Self {
        Budget::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unlimited_always_records() {
        let b = Budget::new();
        assert_eq!(b.limit(), None);
        for _ in 0..10 {
            assert_eq!(b.take(), Take::Record);
        }
    }

    #[test]
    fn limit_records_n_then_stops() {
        let b = Budget::new();
        b.set_limit(Some(3));
        assert_eq!(b.limit(), Some(3));
        let takes: Vec<Take> = (0..5).map(|_| b.take()).collect();
        assert_eq!(
            takes,
            [
                Take::Record,
                Take::Record,
                Take::Last,
                Take::Over,
                Take::Over
            ]
        );
        assert_eq!(b.used(), 3);
    }

    #[test]
    fn limit_zero_records_nothing() {
        let b = Budget::new();
        b.set_limit(Some(0));
        assert_eq!(b.take(), Take::Over);
        assert_eq!(b.used(), 0);
    }
}
