//! FS and GS: accesses through them are recorded at the segment base plus the offset, and
//! with `OPT_ENABLE_FS_GS` the guest has bases of its own (from its `GprState`) while the
//! host, callbacks included, keeps the thread's. Guest code: `tests/guest/segments.S`.
//!
//! The tests that run fsgsbase instructions (`rdfsbase`, `wrgsbase`...) return early, saying
//! so, where the kernel does not enable them (Linux before 5.9, or a CPU without them).

use qbdi_core::{InstPosition, MemoryAccessType, Options, Vm, VmAction};
use qbdi_tests::vm_over;
use std::cell::{Cell, RefCell};
use std::rc::Rc;

unsafe extern "C" {
    fn seg_gs_load(offset: u64) -> u64;
    fn seg_gs_load_end();
    fn seg_fs_load(offset: u64) -> u64;
    fn seg_fs_load_end();
    fn seg_gs_swap(base: u64) -> u64;
    fn seg_gs_swap_end();
    fn seg_fs_visit(base: u64) -> u64;
    fn seg_fs_visit_end();
}

use qbdi_tests::addr;

// <asm/prctl.h>
const ARCH_SET_GS: libc::c_int = 0x1001;
const ARCH_GET_FS: libc::c_int = 0x1003;
const ARCH_GET_GS: libc::c_int = 0x1004;

fn arch_get(code: libc::c_int) -> u64 {
    let mut v = 0u64;
    // SAFETY: ARCH_GET_FS/GS write one u64 to the address given.
    let r = unsafe { libc::syscall(libc::SYS_arch_prctl, code, &mut v as *mut u64) };
    assert_eq!(r, 0, "arch_prctl({code:#x})");
    v
}

/// Sets this thread's GS base (glibc does not use GS on x86-64, so a test thread may).
fn set_thread_gs(base: u64) {
    // SAFETY: ARCH_SET_GS only changes this thread's GS base, which nothing here relies on.
    let r = unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_SET_GS, base) };
    assert_eq!(r, 0, "arch_prctl(ARCH_SET_GS)");
}

fn fsgsbase_usable() -> bool {
    const HWCAP2_FSGSBASE: u64 = 1 << 1;
    // SAFETY: getauxval only reads the auxiliary vector.
    let usable = unsafe { libc::getauxval(libc::AT_HWCAP2) } & HWCAP2_FSGSBASE != 0;
    if !usable {
        eprintln!("skipped: the kernel does not enable the fsgsbase instructions here");
    }
    usable
}

/// The addresses of the reads the guest makes, as recorded.
fn record_reads(vm: &mut Vm) -> Rc<RefCell<Vec<u64>>> {
    let reads = Rc::new(RefCell::new(Vec::new()));
    let r = reads.clone();
    vm.record_memory_access(MemoryAccessType::READ).unwrap();
    vm.add_mem_access_cb(
        MemoryAccessType::READ,
        move |vm, _, _| {
            let mut r = r.borrow_mut();
            r.extend(vm.inst_memory_access().iter().map(|a| a.access_address));
            VmAction::Continue
        },
        0,
    )
    .unwrap();
    reads
}

#[test]
fn gs_relative_reads_are_recorded_at_the_gs_base_plus_the_offset() {
    let buf: Box<[u64; 4]> = Box::new([11, 22, 33, 44]);
    let base = buf.as_ptr() as u64;
    let (mut vm, _stack) = vm_over(Options::NO_OPT, addr!(seg_gs_load), addr!(seg_gs_load_end));
    let reads = record_reads(&mut vm);
    set_thread_gs(base);
    let native = unsafe { seg_gs_load(16) };
    let got = vm.call(addr!(seg_gs_load), &[16]);
    set_thread_gs(0);
    assert_eq!(native, 33);
    assert_eq!(got.unwrap(), 33);
    // The ret reads the return address too; the load is the first read.
    assert_eq!(reads.borrow()[0], base + 16);
}

#[test]
fn fs_relative_reads_are_recorded_at_the_fs_base_plus_the_offset() {
    let (mut vm, _stack) = vm_over(Options::NO_OPT, addr!(seg_fs_load), addr!(seg_fs_load_end));
    let reads = record_reads(&mut vm);
    let fs = arch_get(ARCH_GET_FS);
    // fs:[0] is the thread control block's pointer to itself on x86-64 Linux.
    assert_eq!(vm.call(addr!(seg_fs_load), &[0]).unwrap(), fs);
    assert_eq!(reads.borrow()[0], fs);
}

#[test]
fn with_own_fs_gs_the_guest_starts_with_the_thread_bases() {
    let vm = Vm::with_options(Options::OPT_ENABLE_FS_GS);
    assert_eq!(vm.gpr_state().fs, arch_get(ARCH_GET_FS));
    assert_eq!(vm.gpr_state().gs, arch_get(ARCH_GET_GS));
    let vm = Vm::new();
    assert_eq!((vm.gpr_state().fs, vm.gpr_state().gs), (0, 0));
}

#[test]
fn with_own_fs_gs_the_guest_reads_through_its_own_gs_base() {
    if !fsgsbase_usable() {
        return;
    }
    let buf: Box<[u64; 4]> = Box::new([5, 6, 7, 8]);
    let (mut vm, _stack) = vm_over(
        Options::OPT_ENABLE_FS_GS,
        addr!(seg_gs_load),
        addr!(seg_gs_load_end),
    );
    let reads = record_reads(&mut vm);
    let host_gs = arch_get(ARCH_GET_GS);
    vm.gpr_state_mut().gs = buf.as_ptr() as u64;
    assert_eq!(vm.call(addr!(seg_gs_load), &[24]).unwrap(), 8);
    assert_eq!(reads.borrow()[0], buf.as_ptr() as u64 + 24);
    assert_eq!(arch_get(ARCH_GET_GS), host_gs, "the host's GS base changed");
    assert_eq!(vm.gpr_state().gs, buf.as_ptr() as u64);
}

#[test]
fn with_own_fs_gs_a_base_the_guest_sets_is_kept_in_its_state() {
    if !fsgsbase_usable() {
        return;
    }
    let (mut vm, _stack) = vm_over(
        Options::OPT_ENABLE_FS_GS,
        addr!(seg_gs_swap),
        addr!(seg_gs_swap_end),
    );
    let host_gs = arch_get(ARCH_GET_GS);
    vm.gpr_state_mut().gs = 0x1000;
    assert_eq!(vm.call(addr!(seg_gs_swap), &[0x5000]).unwrap(), 0x1000);
    assert_eq!(vm.gpr_state().gs, 0x5000, "the guest's new GS base");
    assert_eq!(arch_get(ARCH_GET_GS), host_gs, "the host's GS base changed");
    assert_eq!(vm.call(addr!(seg_gs_swap), &[0x6000]).unwrap(), 0x5000);
}

thread_local! {
    static SEEN: Cell<u64> = const { Cell::new(0) };
}

/// Runs `f(arg)` (instrumented from `f` to `end`) counting every instruction in a
/// thread-local of the host: the callback compiles to a leaf that uses FS, which translated
/// code may call directly only if the guest's FS is the host's. Returns (result, count,
/// direct sites).
fn count_in_tls(options: Options, f: u64, end: u64, arg: u64) -> (u64, u64, usize) {
    let (mut vm, _stack) = vm_over(options, f, end);
    vm.add_code_cb(
        InstPosition::PreInst,
        |_, _, _| {
            SEEN.with(|s| s.set(s.get().wrapping_add(1)));
            VmAction::Continue
        },
        0,
    )
    .unwrap();
    SEEN.with(|s| s.set(0));
    let r = vm.call(f, &[arg]).unwrap();
    (r, SEEN.with(Cell::get), vm.direct_call_sites())
}

#[test]
fn callbacks_use_the_host_thread_locals_while_the_guest_has_another_fs_base() {
    if !fsgsbase_usable() {
        return;
    }
    let host_fs = arch_get(ARCH_GET_FS);
    // Without the option the same callback is called directly (guest FS = host FS).
    let (f, end) = (addr!(seg_fs_load), addr!(seg_fs_load_end));
    let (r, seen, direct) = count_in_tls(Options::NO_OPT, f, end, 0);
    assert_eq!((r, seen), (host_fs, 2));
    assert!(
        direct > 0,
        "without the option the TLS counter is called directly"
    );
    // seg_fs_visit: 7 instructions, 3 of them (mov, nop, nop) with the FS base elsewhere.
    let buf: Box<[u64; 2]> = Box::new([0xfeed, 0]);
    let (f, end) = (addr!(seg_fs_visit), addr!(seg_fs_visit_end));
    let (r, seen, direct) = count_in_tls(Options::OPT_ENABLE_FS_GS, f, end, buf.as_ptr() as u64);
    assert_eq!((r, seen), (0xfeed, 7), "a callback saw the guest's FS base");
    assert_eq!(
        direct, 0,
        "with the option, TLS code takes the general path"
    );
    assert_eq!(arch_get(ARCH_GET_FS), host_fs);
}
