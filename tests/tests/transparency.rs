//! The guest sees its machine state exactly as it left it, whatever the engine does between
//! blocks: red zone, RFLAGS (DF included), errno, MXCSR and the x87 control word, XMM/YMM/
//! ZMM and opmask registers, and every general purpose register. Guest functions are in
//! `tests/guest/cf_state.S`; each crosses block boundaries (direct, indirect and
//! conditional jumps) before it looks at the state.

use qbdi_core::{DEFAULT_EFLAGS, FprState, GprState, VirtualStack, Vm, allocate_virtual_stack};

unsafe extern "C" {
    safe fn cf_redzone_leaf(seed: u64) -> u64;
    safe fn cf_redzone_caller(seed: u64) -> u64;
    safe fn cf_flags_read() -> u64;
    safe fn cf_flags_std() -> u64;
    safe fn cf_flags_sub(a: u64, b: u64) -> u64;
    safe fn cf_errno_get() -> u64;
    safe fn cf_errno_set(value: u64);
    fn cf_fpctl_read(buf: *mut u8);
    fn cf_fpctl_write(mxcsr: u64, fcw: u64);
    fn cf_cvtsd2si_xmm0() -> i64;
    fn cf_x87_round(p: *const f64) -> i64;
    fn cf_store_xmm(buf: *mut u8);
    fn cf_load_xmm(buf: *const u8);
    fn cf_store_ymm(buf: *mut u8);
    fn cf_load_ymm(buf: *const u8);
    fn cf_store_zmm(buf: *mut u8);
    fn cf_load_zmm(buf: *const u8);
    fn cf_store_k(buf: *mut u8);
    fn cf_load_k(buf: *const u8);
    fn cf_store_gprs();
    safe static cf_store_gprs_end: u8;
    fn cf_load_gprs();
    safe static cf_load_gprs_end: u8;
    static mut cf_gpr_out: [u64; 16];
    static mut cf_gpr_in: [u64; 16];
}

use qbdi_tests::addr;

fn vm_for(addr: u64) -> (Vm, VirtualStack) {
    let mut vm = Vm::new();
    let stack = allocate_virtual_stack(vm.gpr_state_mut(), 1 << 20).expect("guest stack");
    vm.add_instrumented_module_from_addr(addr)
        .expect("the test executable is an executable mapping");
    (vm, stack)
}

// ------------------------------------------------------------------------------------------
// Red zone.

fn fold(values: impl Iterator<Item = u64>) -> u64 {
    values.fold(0u64, |h, v| h.rotate_left(3).wrapping_add(v))
}

#[test]
fn red_zone_written_by_a_leaf_survives_block_exits() {
    let f = addr!(cf_redzone_leaf);
    let (mut vm, _stack) = vm_for(f);
    for seed in [0x1234_5678_9abc_def1u64, 7, u64::MAX] {
        let expected = fold((0..16u64).map(|i| seed.wrapping_mul(i + 1).wrapping_add(i)));
        assert_eq!(cf_redzone_leaf(seed), expected, "native");
        assert_eq!(vm.call(f, &[seed]), Ok(expected), "seed {seed:#x}");
    }
}

#[test]
fn red_zone_of_the_caller_survives_until_it_becomes_a_frame_for_a_call() {
    let f = addr!(cf_redzone_caller);
    let (mut vm, _stack) = vm_for(f);
    for seed in [0x1234_5678_9abc_def1u64, 3, u64::MAX] {
        let expected = fold((0..16u64).map(|i| seed.wrapping_mul(i + 3) ^ i));
        assert_eq!(cf_redzone_caller(seed), expected, "native");
        assert_eq!(vm.call(f, &[seed]), Ok(expected), "seed {seed:#x}");
    }
}

// ------------------------------------------------------------------------------------------
// RFLAGS.

const CF: u64 = 1 << 0;
const PF: u64 = 1 << 2;
const AF: u64 = 1 << 4;
const ZF: u64 = 1 << 6;
const SF: u64 = 1 << 7;
const DF: u64 = 1 << 10;
const OF: u64 = 1 << 11;
const STATUS: u64 = CF | PF | AF | ZF | SF | OF;

#[test]
fn arithmetic_flags_set_in_gpr_state_are_seen_by_the_guest() {
    let f = addr!(cf_flags_read);
    let (mut vm, _stack) = vm_for(f);
    for flags in [CF | ZF | SF | OF, PF | AF, STATUS, 0, CF | OF, ZF | SF] {
        vm.gpr_state_mut().eflags = DEFAULT_EFLAGS | flags;
        let seen = vm.call(f, &[]).expect("vm.call");
        assert_eq!(
            seen & (STATUS | DF),
            flags,
            "set {flags:#x}, guest saw {seen:#x}"
        );
        assert_eq!(
            vm.gpr_state().eflags & (STATUS | DF),
            flags,
            "flags after the run"
        );
    }
}

#[test]
fn direction_flag_set_in_gpr_state_is_seen_by_the_guest() {
    let f = addr!(cf_flags_read);
    let (mut vm, _stack) = vm_for(f);
    vm.gpr_state_mut().eflags = DEFAULT_EFLAGS | DF | CF | ZF;
    let seen = vm.call(f, &[]).expect("vm.call");
    assert_eq!(seen & (STATUS | DF), DF | CF | ZF, "guest saw {seen:#x}");
    // The guest cleared DF before returning.
    assert_eq!(vm.gpr_state().eflags & DF, 0);
}

#[test]
fn direction_flag_set_by_the_guest_survives_a_block_exit() {
    let native = cf_flags_std();
    assert_eq!(native & DF, DF, "native");
    let f = addr!(cf_flags_std);
    let (mut vm, _stack) = vm_for(f);
    for _ in 0..2 {
        // `std` changes DF only: the status flags are still those given.
        vm.gpr_state_mut().eflags = DEFAULT_EFLAGS | CF | OF;
        let seen = vm.call(f, &[]).expect("vm.call");
        assert_eq!(seen & (STATUS | DF), CF | OF | DF, "guest saw {seen:#x}");
        assert_eq!(
            vm.gpr_state().eflags & DF,
            0,
            "the guest cleared DF before returning"
        );
    }
}

#[test]
fn flags_computed_by_the_guest_survive_block_exits_and_the_end_of_the_run() {
    let f = addr!(cf_flags_sub);
    let (mut vm, _stack) = vm_for(f);
    let pairs = [
        (5u64, 5u64),
        (3, 5),
        (5, 3),
        (0x8000_0000_0000_0000, 1),
        (0, 1),
        (0x10, 0x1),
    ];
    for (a, b) in pairs {
        let native = cf_flags_sub(a, b) & STATUS;
        let seen = vm.call(f, &[a, b]).expect("vm.call");
        assert_eq!(seen & STATUS, native, "sub {a:#x}, {b:#x}");
        assert_eq!(
            vm.gpr_state().eflags & STATUS,
            native,
            "flags left in the GprState"
        );
    }
}

// ------------------------------------------------------------------------------------------
// errno.

fn thread_errno() -> i32 {
    // SAFETY: __errno_location returns this thread's errno slot.
    unsafe { *libc::__errno_location() }
}

fn set_thread_errno(v: i32) {
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = v };
}

#[test]
fn guest_reads_the_errno_given_by_set_errno() {
    let f = addr!(cf_errno_get);
    let (mut vm, _stack) = vm_for(f);
    set_thread_errno(5);
    vm.set_errno(17);
    assert_eq!(vm.call(f, &[]), Ok(17));
    vm.set_errno(0);
    assert_eq!(vm.call(f, &[]), Ok(0));
}

#[test]
fn errno_written_by_the_guest_is_reported_after_the_run() {
    let f = addr!(cf_errno_set);
    let (mut vm, _stack) = vm_for(f);
    vm.call(f, &[33]).expect("vm.call");
    assert_eq!(vm.errno(), 33);
    assert_eq!(
        thread_errno(),
        33,
        "the thread sees the guest's errno after the run"
    );
    // Without set_errno, a run starts with the thread's errno.
    let get = addr!(cf_errno_get);
    set_thread_errno(44);
    assert_eq!(vm.call(get, &[]), Ok(44));
}

// ------------------------------------------------------------------------------------------
// MXCSR and x87 control word.

const MXCSR_DEFAULT: u32 = 0x1f80;
const MXCSR_ROUND_TOWARD_ZERO: u32 = MXCSR_DEFAULT | (3 << 13);
const MXCSR_ROUND_UP: u32 = MXCSR_DEFAULT | (2 << 13);
const FCW_DEFAULT: u16 = 0x037f;
const FCW_ROUND_TOWARD_ZERO: u16 = FCW_DEFAULT | (3 << 10);
const FCW_ROUND_UP: u16 = FCW_DEFAULT | (2 << 10);

fn host_mxcsr() -> u32 {
    let mut v: u32 = 0;
    // SAFETY: stmxcsr stores 4 bytes into `v`.
    unsafe { std::arch::asm!("stmxcsr [{}]", in(reg) &mut v, options(nostack)) };
    v
}

fn host_fcw() -> u16 {
    let mut v: u16 = 0;
    // SAFETY: fnstcw stores 2 bytes into `v`.
    unsafe { std::arch::asm!("fnstcw [{}]", in(reg) &mut v, options(nostack)) };
    v
}

#[test]
fn mxcsr_and_fcw_from_fpr_state_are_seen_by_the_guest() {
    let f = addr!(cf_fpctl_read);
    let (mut vm, _stack) = vm_for(f);
    vm.fpr_state_mut().mxcsr = MXCSR_ROUND_TOWARD_ZERO;
    vm.fpr_state_mut().fcw = FCW_ROUND_TOWARD_ZERO;
    let mut buf = [0u8; 8];
    vm.call(f, &[buf.as_mut_ptr() as u64]).expect("vm.call");
    let mxcsr = u32::from_le_bytes(buf[0..4].try_into().unwrap());
    let fcw = u16::from_le_bytes(buf[4..6].try_into().unwrap());
    assert_eq!(mxcsr, MXCSR_ROUND_TOWARD_ZERO, "guest MXCSR {mxcsr:#x}");
    assert_eq!(
        fcw, FCW_ROUND_TOWARD_ZERO,
        "guest x87 control word {fcw:#x}"
    );
}

#[test]
fn rounding_modes_from_fpr_state_govern_guest_conversions() {
    let cvt = addr!(cf_cvtsd2si_xmm0);
    let fist = addr!(cf_x87_round);
    let (mut vm, _stack) = vm_for(cvt);
    for (value, nearest, toward_zero) in [(2.7f64, 3i64, 2i64), (-2.7, -3, -2), (1.5, 2, 1)] {
        let x = Box::new(value);
        let ptr = &*x as *const f64 as u64;
        vm.fpr_state_mut().xmm_mut(0)[..8].copy_from_slice(&value.to_le_bytes());

        vm.fpr_state_mut().mxcsr = MXCSR_DEFAULT;
        vm.fpr_state_mut().fcw = FCW_DEFAULT;
        assert_eq!(
            vm.call(cvt, &[]).map(|r| r as i64),
            Ok(nearest),
            "cvtsd2si {value}"
        );
        assert_eq!(
            vm.call(fist, &[ptr]).map(|r| r as i64),
            Ok(nearest),
            "fistp {value}"
        );

        vm.fpr_state_mut().mxcsr = MXCSR_ROUND_TOWARD_ZERO;
        vm.fpr_state_mut().fcw = FCW_ROUND_TOWARD_ZERO;
        assert_eq!(
            vm.call(cvt, &[]).map(|r| r as i64),
            Ok(toward_zero),
            "cvtsd2si {value}"
        );
        assert_eq!(
            vm.call(fist, &[ptr]).map(|r| r as i64),
            Ok(toward_zero),
            "fistp {value}"
        );
    }
    // fistp natively, in the host's default mode (round to nearest).
    let x = 2.7f64;
    // SAFETY: reads one f64 through a valid pointer.
    assert_eq!(unsafe { cf_x87_round(&x) }, 3);
}

#[test]
fn mxcsr_and_fcw_set_by_the_guest_show_in_fpr_state_not_in_the_host() {
    let f = addr!(cf_fpctl_write);
    let (mut vm, _stack) = vm_for(f);
    let (host_mxcsr_before, host_fcw_before) = (host_mxcsr(), host_fcw());
    vm.call(f, &[u64::from(MXCSR_ROUND_UP), u64::from(FCW_ROUND_UP)])
        .expect("vm.call");
    assert_eq!(vm.fpr_state().mxcsr, MXCSR_ROUND_UP);
    assert_eq!(vm.fpr_state().fcw, FCW_ROUND_UP);
    assert_eq!(
        host_mxcsr(),
        host_mxcsr_before,
        "host MXCSR changed by the guest's ldmxcsr"
    );
    assert_eq!(
        host_fcw(),
        host_fcw_before,
        "host x87 control word changed by the guest"
    );
}

// ------------------------------------------------------------------------------------------
// Vector and opmask registers.

/// A distinct byte pattern for register `n`.
fn pattern<const N: usize>(n: usize, salt: u8) -> [u8; N] {
    std::array::from_fn(|j| (n as u8).wrapping_mul(37) ^ (j as u8).wrapping_mul(11) ^ salt)
}

fn fpr_with_vectors(base: &FprState, zmm: bool) -> FprState {
    let mut fpr = *base;
    for n in 0..16 {
        *fpr.xmm_mut(n) = pattern(n, 0x5a);
        *fpr.ymm_hi_mut(n) = pattern(n, 0xc3);
        if zmm {
            fpr.zmm_hi256[n] = pattern(n, 0x3c);
        }
    }
    if zmm {
        for n in 0..16 {
            fpr.hi16_zmm[n] = pattern(n + 16, 0x99);
        }
    }
    fpr
}

#[test]
fn xmm_registers_set_in_fpr_state_are_seen_by_the_guest() {
    let f = addr!(cf_store_xmm);
    let (mut vm, _stack) = vm_for(f);
    let fpr = fpr_with_vectors(vm.fpr_state(), false);
    vm.set_fpr_state(&fpr);
    let mut buf = vec![0u8; 16 * 16];
    vm.call(f, &[buf.as_mut_ptr() as u64]).expect("vm.call");
    for n in 0..16 {
        assert_eq!(&buf[16 * n..16 * n + 16], fpr.xmm(n), "xmm{n}");
    }
}

#[test]
fn xmm_registers_set_by_the_guest_show_in_fpr_state() {
    let f = addr!(cf_load_xmm);
    let (mut vm, _stack) = vm_for(f);
    let buf: Vec<u8> = (0..16).flat_map(|n| pattern::<16>(n, 0x77)).collect();
    vm.call(f, &[buf.as_ptr() as u64]).expect("vm.call");
    for n in 0..16 {
        assert_eq!(vm.fpr_state().xmm(n), &buf[16 * n..16 * n + 16], "xmm{n}");
    }
}

#[test]
fn ymm_registers_set_in_fpr_state_are_seen_by_the_guest() {
    if !is_x86_feature_detected!("avx") {
        eprintln!("skipped: no AVX");
        return;
    }
    let f = addr!(cf_store_ymm);
    let (mut vm, _stack) = vm_for(f);
    let fpr = fpr_with_vectors(vm.fpr_state(), false);
    vm.set_fpr_state(&fpr);
    let mut buf = vec![0u8; 32 * 16];
    vm.call(f, &[buf.as_mut_ptr() as u64]).expect("vm.call");
    for n in 0..16 {
        assert_eq!(&buf[32 * n..32 * n + 16], fpr.xmm(n), "ymm{n} low half");
        assert_eq!(
            &buf[32 * n + 16..32 * n + 32],
            fpr.ymm_hi(n),
            "ymm{n} high half"
        );
    }
}

#[test]
fn ymm_registers_set_by_the_guest_show_in_fpr_state() {
    if !is_x86_feature_detected!("avx") {
        eprintln!("skipped: no AVX");
        return;
    }
    let f = addr!(cf_load_ymm);
    let (mut vm, _stack) = vm_for(f);
    let buf: Vec<u8> = (0..16).flat_map(|n| pattern::<32>(n, 0x21)).collect();
    vm.call(f, &[buf.as_ptr() as u64]).expect("vm.call");
    for n in 0..16 {
        assert_eq!(
            vm.fpr_state().xmm(n),
            &buf[32 * n..32 * n + 16],
            "ymm{n} low half"
        );
        assert_eq!(
            vm.fpr_state().ymm_hi(n),
            &buf[32 * n + 16..32 * n + 32],
            "ymm{n} high"
        );
    }
}

#[test]
fn zmm_registers_set_in_fpr_state_are_seen_by_the_guest() {
    if !is_x86_feature_detected!("avx512f") {
        eprintln!("skipped: no AVX-512F");
        return;
    }
    let f = addr!(cf_store_zmm);
    let (mut vm, _stack) = vm_for(f);
    let fpr = fpr_with_vectors(vm.fpr_state(), true);
    vm.set_fpr_state(&fpr);
    let mut buf = vec![0u8; 64 * 32];
    vm.call(f, &[buf.as_mut_ptr() as u64]).expect("vm.call");
    for n in 0..16 {
        let z = &buf[64 * n..64 * n + 64];
        assert_eq!(&z[0..16], fpr.xmm(n), "zmm{n} bits 0..128");
        assert_eq!(&z[16..32], fpr.ymm_hi(n), "zmm{n} bits 128..256");
        assert_eq!(&z[32..64], &fpr.zmm_hi256[n], "zmm{n} bits 256..512");
    }
    for n in 16..32 {
        assert_eq!(&buf[64 * n..64 * n + 64], &fpr.hi16_zmm[n - 16], "zmm{n}");
    }
}

#[test]
fn zmm_registers_set_by_the_guest_show_in_fpr_state() {
    if !is_x86_feature_detected!("avx512f") {
        eprintln!("skipped: no AVX-512F");
        return;
    }
    let f = addr!(cf_load_zmm);
    let (mut vm, _stack) = vm_for(f);
    let buf: Vec<u8> = (0..32).flat_map(|n| pattern::<64>(n, 0x42)).collect();
    vm.call(f, &[buf.as_ptr() as u64]).expect("vm.call");
    let fpr = vm.fpr_state();
    for n in 0..16 {
        let z = &buf[64 * n..64 * n + 64];
        assert_eq!(fpr.xmm(n), &z[0..16], "zmm{n} bits 0..128");
        assert_eq!(fpr.ymm_hi(n), &z[16..32], "zmm{n} bits 128..256");
        assert_eq!(&fpr.zmm_hi256[n], &z[32..64], "zmm{n} bits 256..512");
    }
    for n in 16..32 {
        assert_eq!(&fpr.hi16_zmm[n - 16], &buf[64 * n..64 * n + 64], "zmm{n}");
    }
}

const K_VALUES: [u64; 8] = [
    0x0123_4567_89ab_cdef,
    0xfedc_ba98_7654_3210,
    1,
    u64::MAX,
    0x8000_0000_0000_0001,
    0x5555_aaaa_5555_aaaa,
    0xdead_beef,
    0xfeed_face_0000_0000,
];

#[test]
fn opmask_registers_set_in_fpr_state_are_seen_by_the_guest() {
    if !is_x86_feature_detected!("avx512bw") {
        eprintln!("skipped: no AVX-512BW (kmovq)");
        return;
    }
    let f = addr!(cf_store_k);
    let (mut vm, _stack) = vm_for(f);
    vm.fpr_state_mut().k = K_VALUES;
    let mut buf = [0u64; 8];
    vm.call(f, &[buf.as_mut_ptr() as u64]).expect("vm.call");
    assert_eq!(buf, K_VALUES);
}

#[test]
fn opmask_registers_set_by_the_guest_show_in_fpr_state() {
    if !is_x86_feature_detected!("avx512bw") {
        eprintln!("skipped: no AVX-512BW (kmovq)");
        return;
    }
    let f = addr!(cf_load_k);
    let (mut vm, _stack) = vm_for(f);
    vm.call(f, &[K_VALUES.as_ptr() as u64]).expect("vm.call");
    assert_eq!(vm.fpr_state().k, K_VALUES);
}

// ------------------------------------------------------------------------------------------
// General purpose registers (these two tests own cf_gpr_out / cf_gpr_in).

fn distinct_gprs(rsp: u64) -> GprState {
    GprState {
        rax: 0x1111_1111_1111_1101,
        rbx: 0x2222_2222_2222_2202,
        rcx: 0x3333_3333_3333_3303,
        rdx: 0x4444_4444_4444_4404,
        rsi: 0x5555_5555_5555_5505,
        rdi: 0x6666_6666_6666_6606,
        r8: 0x7777_7777_7777_7707,
        r9: 0x8888_8888_8888_8808,
        r10: 0x9999_9999_9999_9909,
        r11: 0xaaaa_aaaa_aaaa_aa0a,
        r12: 0xbbbb_bbbb_bbbb_bb0b,
        r13: 0xcccc_cccc_cccc_cc0c,
        r14: 0xdddd_dddd_dddd_dd0d,
        r15: 0xeeee_eeee_eeee_ee0e,
        rbp: 0xffff_ffff_ffff_ff0f,
        rsp,
        rip: 0,
        eflags: DEFAULT_EFLAGS | CF | ZF | SF,
        fs: 0,
        gs: 0,
    }
}

#[test]
fn all_general_purpose_registers_set_before_run_are_seen_by_the_guest() {
    let start = addr!(cf_store_gprs);
    let stop = &cf_store_gprs_end as *const u8 as u64;
    let (mut vm, _stack) = vm_for(start);
    let rsp = vm.gpr_state().rsp - 256;
    let mut gpr = distinct_gprs(rsp);
    gpr.fs = vm.gpr_state().fs;
    gpr.gs = vm.gpr_state().gs;
    vm.set_gpr_state(&gpr);
    vm.run(start, stop).expect("vm.run");
    // SAFETY: cf_gpr_out is a 128-byte guest buffer only this test uses; the guest is done.
    let stored = unsafe { (&raw const cf_gpr_out).read_volatile() };
    let want = &gpr.as_array()[..16];
    for (i, name) in qbdi_core::GPR_NAMES[..16].iter().enumerate() {
        assert_eq!(stored[i], want[i], "{name} as the guest saw it");
    }
    // The guest changed nothing: the state after the run is the one given, at `stop`.
    assert_eq!(*vm.gpr_state(), GprState { rip: stop, ..gpr });
}

#[test]
fn all_general_purpose_registers_set_by_the_guest_show_in_gpr_state() {
    let start = addr!(cf_load_gprs);
    let stop = &cf_load_gprs_end as *const u8 as u64;
    let (mut vm, _stack) = vm_for(start);
    let rsp = vm.gpr_state().rsp;
    let want = distinct_gprs(rsp);
    let mut values = want.as_array();
    values[..15].iter_mut().for_each(|v| *v ^= 0x0f0f);
    let mut input = [0u64; 16];
    input.copy_from_slice(&values[..16]);
    // SAFETY: cf_gpr_in is a 128-byte guest buffer only this test uses; no guest runs yet.
    unsafe { (&raw mut cf_gpr_in).write_volatile(input) };
    vm.run(start, stop).expect("vm.run");
    let got = vm.gpr_state().as_array();
    for (i, name) in qbdi_core::GPR_NAMES[..15].iter().enumerate() {
        assert_eq!(got[i], input[i], "{name} after the run");
    }
    assert_eq!(vm.gpr_state().rsp, rsp, "rsp unchanged");
    assert_eq!(vm.gpr_state().rip, stop);
}
