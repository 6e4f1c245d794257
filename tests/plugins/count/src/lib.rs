//! Counts executed basic blocks with one BASIC_BLOCK_ENTRY callback doing a relaxed
//! `fetch_add`, and writes the total to `out` at fini: the smallest useful plugin, whose
//! cost per block the programs benchmark reports (`count` column).
//!
//! The count is sharded by thread (64 cache lines, picked by a hash of the thread pointer,
//! `fs:[0]`): threads running at once would otherwise fight over one cache line, which the
//! benchmark would charge to the engine. A thread-local would be a call to `__tls_get_addr`
//! in a cdylib, which keeps a callback off the engine's direct path.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use qbdi_sdk::prelude::*;

qbdi_sdk::plugin!(
    name: "count",
    description: "counts executed basic blocks",
    options: [("out", "file the total is written to (- for stderr)", "-")]
);

/// One counter per cache line.
#[repr(align(64))]
struct Shard(AtomicU64);

const SHARDS: usize = 64;
static BLOCKS: [Shard; SHARDS] = [const { Shard(AtomicU64::new(0)) }; SHARDS];
static OUT: OnceLock<String> = OnceLock::new();

/// This thread's shard: a hash of its thread pointer (its TCB's address, at `fs:[0]`).
#[inline(always)]
fn shard() -> &'static AtomicU64 {
    let tp: u64;
    // SAFETY: on x86-64 Linux `fs:[0]` holds the thread's own TCB address (glibc and musl
    // both set it up); reading it has no side effect.
    unsafe {
        std::arch::asm!("mov {}, qword ptr fs:[0]", out(reg) tp, options(nostack, readonly, preserves_flags));
    }
    let i = (tp.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 58) as usize;
    &BLOCKS[i % SHARDS].0
}

#[plugin_init]
fn init(_vm: &mut VmRef, options: &PluginOptions) -> Result<(), String> {
    let _ = OUT.set(options.get("out").unwrap_or("-").to_owned());
    Ok(())
}

#[vm_event(BASIC_BLOCK_ENTRY)]
fn on_block(
    _vm: &mut VmRef,
    _state: &VmState,
    _gpr: &mut GprState,
    _fpr: &mut FprState,
) -> VmAction {
    shard().fetch_add(1, Relaxed);
    VmAction::Continue
}

#[plugin_fini]
fn fini() {
    let total: u64 = BLOCKS.iter().map(|s| s.0.load(Relaxed)).sum();
    let line = format!("blocks={total}\n");
    match OUT.get().map(String::as_str) {
        Some("-") | None => eprint!("{line}"),
        Some(path) => {
            let _ = std::fs::write(path, line);
        }
    }
}
