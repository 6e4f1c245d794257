//! Block execution counts, counted inline by translated code (no callback per block).

use std::sync::Mutex;

use qbdi_sdk::prelude::*;

use crate::fork::on_fork_child;
use crate::sync::lock;

/// The counters this plugin registered (their counts restart in a `fork` child).
static COUNTERS: Mutex<Vec<BlockCounter>> = Mutex::new(Vec::new());

/// Registers an inline block counter on `vm` (call it from init, to count from the first
/// block). In a `fork` child its counts start again from zero (the child's blocks stay
/// known: it runs the same translations, which are not reported new again).
pub fn block_counter(vm: &mut VmRef) -> Result<BlockCounter, String> {
    let counter = vm.add_block_counter().map_err(|e| e.to_string())?;
    lock(&COUNTERS).push(counter);
    on_fork_child(forget_parents_counts);
    Ok(counter)
}

/// In a `fork` child: every counter from zero (tried only: a lock another thread held at
/// the fork stays held in the child).
fn forget_parents_counts() {
    if let Ok(counters) = COUNTERS.try_lock() {
        for c in counters.iter() {
            c.reset();
        }
    }
}
