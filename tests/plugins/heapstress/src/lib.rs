//! qbdi's allocation test plugin. On every basic block entry it allocates, uses and frees
//! vectors, strings and boxes of varying sizes and inserts into a hash map; on every new
//! block it writes a line to `out`. Under `qbdi run --all-maps` these callbacks run while
//! the guest may be inside libc's `malloc` or `free`: they must not touch libc's heap (the
//! plugin allocates from the host's private heap, see `qbdi_sdk::heap`).
//!
//! `out` gets `heap host` (or `heap system`: where this plugin's allocations come from),
//! then `block START-END` per new block, then `entries N` at fini.

use std::collections::HashMap;
use std::fs::File;
use std::hint::black_box;
use std::io::{BufWriter, Write};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{LazyLock, Mutex};

use qbdi_sdk::prelude::*;

qbdi_sdk::plugin!(
    name: "heapstress",
    description: "allocates and frees on every basic block (qbdi's heap test)",
    options: [("out", "file to write a line per new block to", "")],
);

static OUT: Mutex<Option<BufWriter<File>>> = Mutex::new(None);
/// Recent block texts by a hash of their address and entry count (at most 4096 entries).
static MAP: LazyLock<Mutex<HashMap<u64, Vec<u8>>>> = LazyLock::new(|| Mutex::new(HashMap::new()));
static ENTRIES: AtomicU64 = AtomicU64::new(0);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[plugin_init]
fn init(_vm: &mut VmRef, options: &PluginOptions) -> Result<(), String> {
    let path = options.get("out").ok_or("heapstress needs out=FILE")?;
    let file = File::create(path).map_err(|e| format!("cannot create {path}: {e}"))?;
    let mut w = BufWriter::with_capacity(64 << 10, file);
    let probe = Box::new([0u8; 64]);
    let heap = if qbdi_sdk::heap::in_host_heap(probe.as_ptr()) {
        "host"
    } else {
        "system"
    };
    writeln!(w, "heap {heap}").map_err(|e| e.to_string())?;
    *lock(&OUT) = Some(w);
    LazyLock::force(&MAP);
    Ok(())
}

#[vm_event(BASIC_BLOCK_ENTRY)]
fn on_entry(
    _vm: &mut VmRef,
    state: &VmState,
    _gpr: &mut GprState,
    _fpr: &mut FprState,
) -> VmAction {
    let n = ENTRIES.fetch_add(1, Relaxed);
    let addr = state.basic_block_start;
    let seed = (addr ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 16;
    // A vector of 1 byte to 4 KiB, sometimes 256 KiB (a span of the heap).
    let size = if seed.is_multiple_of(512) {
        256 << 10
    } else {
        (seed % 4096) as usize + 1
    };
    let mut v = vec![0u8; size];
    v[size - 1] = n as u8;
    v[0] = v[size - 1].wrapping_add(1);
    // A string, a box, a growing vector.
    let text = format!("{addr:#x} entry {n}");
    let boxed: Box<[u64]> = vec![seed; (seed % 64) as usize + 1].into_boxed_slice();
    let mut grown = Vec::new();
    for i in 0..(seed % 40) {
        grown.push(i);
    }
    // A hash map insert (replacing, and so freeing, an older value).
    lock(&MAP).insert(seed % 4096, text.clone().into_bytes());
    black_box((&v, &text, &boxed, &grown));
    VmAction::Continue
}

#[vm_event(BASIC_BLOCK_NEW)]
fn on_new(_vm: &mut VmRef, state: &VmState, _gpr: &mut GprState, _fpr: &mut FprState) -> VmAction {
    if let Some(w) = lock(&OUT).as_mut() {
        let _ = writeln!(
            w,
            "block {:#x}-{:#x}",
            state.basic_block_start, state.basic_block_end
        );
    }
    VmAction::Continue
}

#[plugin_fini]
fn fini() {
    // try_lock: fini may run from a signal handler that interrupted a callback.
    if let Ok(mut guard) = OUT.try_lock()
        && let Some(mut w) = guard.take()
    {
        let _ = writeln!(w, "entries {}", ENTRIES.load(Relaxed));
        let _ = w.flush();
    }
}
