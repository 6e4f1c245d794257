//! Callbacks simple enough for the engine's direct path (a leaf of integer code that does
//! not read its `VmRef`): block and call counts, a register change and a `SkipInst`. The
//! tests run it on the `direct_paths` program with and without `QBDI_NO_DIRECT=1` (which
//! keeps every plugin callback on the general path) and compare.
//!
//! - every block entry is counted;
//! - every `call` is counted (preinst);
//! - `xchg r12, r12` with r12 = 0x5ca1ab1e (the program's marker) gets `rax = 3 * rax + 1`
//!   before it runs (other `xchg`s, as in libc under `--all-maps`, are only counted);
//! - `ud2` is skipped (preinst, `SkipInst`), so the program survives it;
//! - every memory access is counted and folded into two hashes, read with
//!   `inst_memory_access`: `access_hash` (its instruction, address, value, size, kind and
//!   flags) and `access_shape` (the same but the value: the two runs' environments differ
//!   in one byte, `QBDI_NO_DIRECT`, which libc reads when it looks for a variable).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use qbdi_sdk::prelude::*;

qbdi_sdk::plugin!(
    name: "direct",
    description: "simple callbacks for the engine's direct path",
    options: [("out", "file the counts are written to at fini", "-")]
);

static BLOCKS: AtomicU64 = AtomicU64::new(0);
static CALLS: AtomicU64 = AtomicU64::new(0);
static MARKERS: AtomicU64 = AtomicU64::new(0);
static SKIPPED: AtomicU64 = AtomicU64::new(0);
static ACCESSES: AtomicU64 = AtomicU64::new(0);
static ACCESS_HASH: AtomicU64 = AtomicU64::new(0);
static ACCESS_SHAPE: AtomicU64 = AtomicU64::new(0);
static OUT: OnceLock<String> = OnceLock::new();
/// r12 at the program's marker.
const MAGIC: u64 = 0x5ca1_ab1e;

#[plugin_init]
fn init(_vm: &mut VmRef, options: &PluginOptions) -> Result<(), String> {
    let _ = OUT.set(options.get("out").unwrap_or("-").to_owned());
    Ok(())
}

#[vm_event(BASIC_BLOCK_ENTRY)]
fn on_block(_vm: &mut VmRef, _s: &VmState, _gpr: &mut GprState, _fpr: &mut FprState) -> VmAction {
    BLOCKS.fetch_add(1, Relaxed);
    VmAction::Continue
}

#[inst_callback(preinst, mnemonic = "CALL*")]
fn on_call(_vm: &mut VmRef, _gpr: &mut GprState, _fpr: &mut FprState) -> VmAction {
    CALLS.fetch_add(1, Relaxed);
    VmAction::Continue
}

#[inst_callback(preinst, mnemonic = "XCHG")]
fn on_marker(_vm: &mut VmRef, gpr: &mut GprState, _fpr: &mut FprState) -> VmAction {
    if gpr.r12 == MAGIC {
        MARKERS.fetch_add(1, Relaxed);
        gpr.rax = gpr.rax.wrapping_mul(3).wrapping_add(1);
    }
    VmAction::Continue
}

#[inst_callback(preinst, mnemonic = "UD2")]
fn on_ud2(_vm: &mut VmRef, _gpr: &mut GprState, _fpr: &mut FprState) -> VmAction {
    SKIPPED.fetch_add(1, Relaxed);
    VmAction::SkipInst
}

#[mem_access(read_write)]
fn on_access(vm: &mut VmRef, _gpr: &mut GprState, _fpr: &mut FprState) -> VmAction {
    let (mut h, mut shape, mut n) = (0u64, 0u64, 0u64);
    let fold = |h: u64, w: u64| (h ^ w).wrapping_mul(0x100_0000_01b3);
    for a in vm.inst_memory_access() {
        let meta = u64::from(a.size)
            | u64::from(a.access_type.bits()) << 16
            | u64::from(a.flags.bits()) << 24;
        for w in [a.inst_address, a.access_address, meta] {
            h = fold(h, w);
            shape = fold(shape, w);
        }
        h = fold(h, a.value);
        n = n.wrapping_add(1);
    }
    ACCESSES.fetch_add(n, Relaxed);
    // Added up: the totals do not depend on the order of the instructions' callbacks.
    ACCESS_HASH.fetch_add(h, Relaxed);
    ACCESS_SHAPE.fetch_add(shape, Relaxed);
    VmAction::Continue
}

#[plugin_fini]
fn fini() {
    let line = format!(
        "blocks={} calls={} markers={} skipped={} accesses={} access_shape={:#x} \
         access_hash={:#x}\n",
        BLOCKS.load(Relaxed),
        CALLS.load(Relaxed),
        MARKERS.load(Relaxed),
        SKIPPED.load(Relaxed),
        ACCESSES.load(Relaxed),
        ACCESS_SHAPE.load(Relaxed),
        ACCESS_HASH.load(Relaxed)
    );
    match OUT.get().map(String::as_str) {
        Some("-") | None => eprint!("{line}"),
        Some(path) => {
            let _ = std::fs::write(path, line);
        }
    }
}
