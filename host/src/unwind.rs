//! Unwinding through the code cache (C++ exceptions, forced unwinds, backtraces).
//!
//! When the guest calls native code, the exec broker swaps the return address on the stack
//! for the translation of the guest's return site. The cache has no unwind tables, so an
//! unwinder that meets such a frame stops there: a C++ exception thrown through a native
//! library would end in `std::terminate`. The preload library interposes the unwinder's
//! entry points and, first, rewrites those return addresses back to the guest's own
//! ([`Vm::restore_return_addresses`]), so the unwinder sees the program's frames and the
//! program's handler runs. The price: from that handler on, the guest call runs natively
//! (uninstrumented); if it is `main`, `main` returns to a stub that exits with its value.

use std::ffi::{c_int, c_void};
use std::sync::Mutex;

use qbdi_core::Vm;

/// The Vm of each thread running under one, and its host stack (never rewritten: the
/// host's own frames), by thread id.
struct Entry {
    tid: u32,
    vm: usize,
    host_stack: Option<(u64, u64)>,
}
static THREADS: Mutex<Vec<Entry>> = Mutex::new(Vec::new());

fn threads() -> std::sync::MutexGuard<'static, Vec<Entry>> {
    THREADS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Records that thread `tid` runs under `vm` with its host code on `host_stack`.
pub(crate) fn register_thread(tid: u32, vm: *const Vm, host_stack: Option<(u64, u64)>) {
    let mut t = threads();
    t.retain(|e| e.tid != tid);
    t.push(Entry {
        tid,
        vm: vm as usize,
        host_stack,
    });
}

/// Thread `tid` no longer runs under a Vm.
pub(crate) fn unregister_thread(tid: u32) {
    threads().retain(|e| e.tid != tid);
}

/// Records that thread `tid` also runs under `vm` (code re-entered from native code),
/// inside the run of its own Vm.
pub(crate) fn register_nested(tid: u32, vm: *const Vm, host_stack: (u64, u64)) {
    threads().push(Entry {
        tid,
        vm: vm as usize,
        host_stack: Some(host_stack),
    });
}

/// A Vm this thread runs under whose code cache holds `pc` (for a signal that interrupted
/// translated code). Allocation-free; `None` if the table is busy.
pub(crate) fn thread_vm_running_at(pc: u64) -> Option<usize> {
    let tid = qbdi_core::threads::current_thread_id();
    let t = THREADS.try_lock().ok()?;
    t.iter()
        .filter(|e| e.tid == tid)
        // SAFETY: a registered Vm is alive while registered; only its cache bounds are read.
        .find(|e| unsafe { Vm::code_cache_contains(e.vm as *const Vm, pc) })
        .map(|e| e.vm)
}

/// The Vms this thread runs under (its own, re-entries), innermost last.
pub(crate) fn thread_vms() -> Vec<usize> {
    let tid = qbdi_core::threads::current_thread_id();
    threads()
        .iter()
        .filter(|e| e.tid == tid)
        .map(|e| e.vm)
        .collect()
}

/// `vm` no longer runs (see [`register_nested`]).
pub(crate) fn unregister_nested(vm: *const Vm) {
    threads().retain(|e| e.vm != vm as usize);
}

/// What a fatal fault at `pc` on this thread was, in the guest's terms: the guest
/// instruction and block whose translation faulted (with their symbols), the guest's own
/// code (a native library), or qbdi's own code.
pub(crate) fn describe_fault(sig: c_int, pc: u64) -> String {
    // SAFETY: strsignal returns a static description.
    let name = unsafe { std::ffi::CStr::from_ptr(libc::strsignal(sig)) }.to_string_lossy();
    let named = |addr: u64| match qbdi_core::symbolize(addr) {
        Some((sym, off, module)) if !sym.is_empty() => format!("{sym}+{off:#x} in {module}"),
        Some((_, _, module)) => format!("in {module}"),
        None => "in no file".to_owned(),
    };
    let tid = qbdi_core::threads::current_thread_id();
    let vms: Vec<usize> = THREADS
        .try_lock()
        .map(|t| t.iter().filter(|e| e.tid == tid).map(|e| e.vm).collect())
        .unwrap_or_default();
    // SAFETY: this thread's Vms, suspended by the fault; their directories are only read.
    if let Some((vm, block)) = vms
        .iter()
        .find_map(|&vm| unsafe { Vm::guest_block_at(vm as *const Vm, pc) }.map(|b| (vm, b)))
    {
        // SAFETY: as above.
        let instruction = match unsafe { Vm::guest_fault_at(vm as *const Vm, pc) } {
            Some(f) => format!(
                "at the guest's instruction {:#x} ({}), ",
                f.guest_pc,
                named(f.guest_pc)
            ),
            None => String::new(),
        };
        return format!(
            "{name} {instruction}in the guest's basic block at {:#x} ({}), translated code at {pc:#x}",
            block.start,
            named(block.start)
        );
    }
    let own = describe_fault as *const () as u64;
    let own_module = qbdi_core::current_process_maps(true)
        .into_iter()
        .find(|m| m.range.contains(own))
        .map(|m| m.range);
    if own_module.is_some_and(|r| r.contains(pc)) {
        return format!(
            "{name} in qbdi's own code at {pc:#x} ({}): a qbdi bug, please report it",
            named(pc)
        );
    }
    format!("{name} at {pc:#x} ({}), run natively", named(pc))
}

/// The end of the mapping that contains `addr`.
fn mapping_end(addr: u64) -> Option<u64> {
    qbdi_core::current_process_maps(false)
        .into_iter()
        .find(|m| m.range.contains(addr))
        .map(|m| m.range.end)
}

/// Undoes the broker's redirections on the current stack, from here to its top.
fn restore_stack() {
    let tid = qbdi_core::threads::current_thread_id();
    let vms: Vec<(usize, Option<(u64, u64)>)> = threads()
        .iter()
        .filter(|e| e.tid == tid)
        .map(|e| (e.vm, e.host_stack))
        .collect();
    let here = 0u64;
    let sp = &here as *const u64 as u64;
    if vms
        .iter()
        .any(|(_, h)| h.is_some_and(|(lo, hi)| (lo..hi).contains(&sp)))
    {
        return;
    }
    let Some(end) = mapping_end(sp) else {
        return;
    };
    for (vm, _) in vms {
        // SAFETY: [sp, end) is the rest of this thread's stack mapping (readable and
        // writable); this runs in native code the guest called, with this thread's Vms
        // suspended.
        unsafe { Vm::restore_return_addresses(vm as *const Vm, sp, end) };
    }
}

type RaiseFn = unsafe extern "C" fn(*mut c_void) -> c_int;
type ForcedFn = unsafe extern "C" fn(*mut c_void, *mut c_void, *mut c_void) -> c_int;

fn next<T>(name: &std::ffi::CStr) -> Option<T> {
    // SAFETY: dlsym with RTLD_NEXT and a NUL-terminated name.
    let p = unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr()) };
    // SAFETY: T is the fn pointer type of `name` (callers pass matching pairs); a null
    // pointer is returned as None.
    (!p.is_null()).then(|| unsafe { std::mem::transmute_copy::<*mut c_void, T>(&p) })
}

/// `_Unwind_RaiseException`, interposed (C++ `throw`).
///
/// # Safety
/// The unwinder's contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn _Unwind_RaiseException(exception: *mut c_void) -> c_int {
    restore_stack();
    match next::<RaiseFn>(c"_Unwind_RaiseException") {
        // SAFETY: forwarding to the real unwinder.
        Some(real) => unsafe { real(exception) },
        None => 5, // _URC_END_OF_STACK
    }
}

/// `_Unwind_ForcedUnwind`, interposed (thread cancellation and exit).
///
/// # Safety
/// The unwinder's contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn _Unwind_ForcedUnwind(
    exception: *mut c_void,
    stop: *mut c_void,
    arg: *mut c_void,
) -> c_int {
    restore_stack();
    match next::<ForcedFn>(c"_Unwind_ForcedUnwind") {
        // SAFETY: forwarding to the real unwinder.
        Some(real) => unsafe { real(exception, stop, arg) },
        None => 5,
    }
}
