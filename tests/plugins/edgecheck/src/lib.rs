//! The edges plugin's map (AFL's QEMU-mode hash, 65536 entries, NeverZero), computed from a
//! BASIC_BLOCK_ENTRY callback and its VmState instead of inline code, into the file `out`
//! mapped shared: the tests compare the two maps of one run. The callback is simple enough
//! for the engine's direct path, which (unlike the host's general path) keeps running after
//! finalisation, as inline code does: both maps see the whole process, libc's exit
//! included. `prev` is one for the process (a thread-local would be a call to
//! `__tls_get_addr` in a cdylib, off the direct path): the tests run single-threaded
//! programs.

use std::sync::atomic::{AtomicPtr, AtomicU8, AtomicU64, Ordering::Relaxed};

use qbdi_sdk::prelude::*;

qbdi_sdk::plugin!(
    name: "edgecheck",
    description: "the edges plugin's map, computed by a block callback",
    options: [("out", "file the map is mapped from (created)", "edgecheck.map")]
);

const SIZE: usize = 1 << 16;
/// The shared mapping of `out`, once init made it.
static MAP: AtomicPtr<AtomicU8> = AtomicPtr::new(std::ptr::null_mut());

static PREV: AtomicU64 = AtomicU64::new(0);

#[plugin_init]
fn init(_vm: &mut VmRef, options: &PluginOptions) -> Result<(), String> {
    use std::os::fd::AsRawFd;
    let path = options.get("out").unwrap_or("edgecheck.map");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| format!("{path}: {e}"))?;
    file.set_len(SIZE as u64)
        .map_err(|e| format!("{path}: {e}"))?;
    // SAFETY: maps the file just sized; never unmapped (the mapping outlives the file).
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            SIZE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(format!("mmap {path}: {}", std::io::Error::last_os_error()));
    }
    MAP.store(p.cast(), Relaxed);
    Ok(())
}

#[vm_event(BASIC_BLOCK_ENTRY)]
fn on_block(
    _vm: &mut VmRef,
    state: &VmState,
    _gpr: &mut GprState,
    _fpr: &mut FprState,
) -> VmAction {
    let map = MAP.load(Relaxed);
    if map.is_null() {
        return VmAction::Continue;
    }
    let addr = state.basic_block_start;
    let cur = ((addr >> 4) ^ (addr << 8)) & (SIZE as u64 - 1);
    let prev = PREV.load(Relaxed);
    // SAFETY: `map` is SIZE bytes mapped for the life of the process; the index is masked
    // to SIZE - 1.
    let slot = unsafe { &*map.add(((prev ^ cur) as usize) & (SIZE - 1)) };
    let v = slot.load(Relaxed);
    slot.store(if v == 255 { 1 } else { v.wrapping_add(1) }, Relaxed);
    PREV.store(cur >> 1, Relaxed);
    VmAction::Continue
}
