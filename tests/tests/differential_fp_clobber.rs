//! Differential suite under callbacks that behave like ordinary Rust code and clobber the FP
//! and vector state: the cases of `differential/cases.rs`, with a PreInst callback on every
//! instruction of the guest and a callback on every VM event (block entries and exits,
//! exec transfers to and from native code) that each do f64 math raising MXCSR exception
//! flags (underflow, inexact), call libc (`memcpy` of a few KiB, glibc's vector
//! implementation; `strlen`; `close(-1)`, which sets errno to EBADF), write garbage into a
//! local `[f64; 8]`, and overwrite xmm0-15, the upper halves of ymm0-15, the AVX-512
//! registers zmm16-31 and k1-k7 (where the CPU has them) and all eight x87 registers with
//! garbage. The guest sees none of it (its errno and exception flags included): its results
//! must still be the native ones.

use qbdi_core::{InstPosition, PRIORITY_DEFAULT, Vm, VmAction, VmEvent};
use std::arch::asm;
use std::cell::Cell;
use std::hint::black_box;
use std::rc::Rc;

#[path = "differential/cases.rs"]
mod cases;

/// The callback is costly: the largest inputs are left to the plain suite.
const HEAVY_INPUTS: bool = false;

/// Host work that uses the FP and vector registers, with `seed` in every value so that no
/// two calls leave the same garbage.
fn clobber_fp_state(seed: u64, src: &[u8], dst: &mut [u8]) {
    let x = black_box(seed as f64);
    let y = (x * 1.000_1 + 0.5).sqrt() / 3.0 - x.sin() * 1e-300;
    let mut junk = [0f64; 8];
    for (i, v) in junk.iter_mut().enumerate() {
        *v = y * i as f64 + f64::from_bits(seed.rotate_left(i as u32 * 8));
    }
    black_box(&mut junk);
    // Underflow and inexact in MXCSR.
    let tiny = black_box(1e-300f64) * black_box(1e-300f64);
    black_box(tiny);
    dst.copy_from_slice(black_box(src));
    black_box(&mut *dst);
    // libc calls, one of them setting errno (EBADF).
    // SAFETY: `dst` ends with a NUL (the caller's buffer), and close(-1) only fails.
    unsafe {
        black_box(libc::strlen(dst.as_ptr().cast()));
        black_box(libc::close(-1));
    }
    clobber_vector_registers(black_box(seed));
}

/// Fills xmm0-15, the upper halves of ymm0-15, zmm16-31 and k1-k7 (as far as the CPU has
/// them) with bytes of `seed`, and fills all eight x87 registers (pushed, then popped).
fn clobber_vector_registers(seed: u64) {
    // SAFETY: the asm only writes the registers it declares as clobbered, and leaves the
    // x87 stack empty as it found it (eight pushes, eight pops).
    unsafe {
        asm!(
            "movq xmm0, {s}",
            "pshufd xmm0, xmm0, 0x44",
            "movdqa xmm1, xmm0", "movdqa xmm2, xmm0", "movdqa xmm3, xmm0",
            "movdqa xmm4, xmm0", "movdqa xmm5, xmm0", "movdqa xmm6, xmm0",
            "movdqa xmm7, xmm0", "movdqa xmm8, xmm0", "movdqa xmm9, xmm0",
            "movdqa xmm10, xmm0", "movdqa xmm11, xmm0", "movdqa xmm12, xmm0",
            "movdqa xmm13, xmm0", "movdqa xmm14, xmm0", "movdqa xmm15, xmm0",
            "fld1", "fldpi", "fldl2e", "fldl2t", "fldlg2", "fldln2", "fld1", "fldpi",
            "faddp st(1), st",
            "fstp st(0)", "fstp st(0)", "fstp st(0)", "fstp st(0)", "fstp st(0)",
            "fstp st(0)", "fstp st(0)",
            s = in(reg) seed,
            out("xmm0") _, out("xmm1") _, out("xmm2") _, out("xmm3") _,
            out("xmm4") _, out("xmm5") _, out("xmm6") _, out("xmm7") _,
            out("xmm8") _, out("xmm9") _, out("xmm10") _, out("xmm11") _,
            out("xmm12") _, out("xmm13") _, out("xmm14") _, out("xmm15") _,
            out("st(0)") _, out("st(1)") _, out("st(2)") _, out("st(3)") _,
            out("st(4)") _, out("st(5)") _, out("st(6)") _, out("st(7)") _,
            options(nostack),
        );
    }
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 (checked above).
        unsafe { clobber_ymm(seed) };
    }
    qbdi_tests::clobber::clobber_avx512(seed);
}

#[target_feature(enable = "avx2")]
fn clobber_ymm(seed: u64) {
    // SAFETY: writes only the declared registers; AVX2 is enabled for this function.
    unsafe {
        asm!(
            "vmovq xmm0, {s}",
            "vpbroadcastq ymm0, xmm0",
            "vmovdqa ymm1, ymm0", "vmovdqa ymm2, ymm0", "vmovdqa ymm3, ymm0",
            "vmovdqa ymm4, ymm0", "vmovdqa ymm5, ymm0", "vmovdqa ymm6, ymm0",
            "vmovdqa ymm7, ymm0", "vmovdqa ymm8, ymm0", "vmovdqa ymm9, ymm0",
            "vmovdqa ymm10, ymm0", "vmovdqa ymm11, ymm0", "vmovdqa ymm12, ymm0",
            "vmovdqa ymm13, ymm0", "vmovdqa ymm14, ymm0", "vmovdqa ymm15, ymm0",
            s = in(reg) seed,
            out("ymm0") _, out("ymm1") _, out("ymm2") _, out("ymm3") _,
            out("ymm4") _, out("ymm5") _, out("ymm6") _, out("ymm7") _,
            out("ymm8") _, out("ymm9") _, out("ymm10") _, out("ymm11") _,
            out("ymm12") _, out("ymm13") _, out("ymm14") _, out("ymm15") _,
            options(nostack),
        );
    }
}

/// A PreInst callback on every instruction clobbering the FP state; after each call, checks
/// that it ran.
fn configure(vm: &mut Vm) -> cases::AfterCall {
    let runs = Rc::new(Cell::new(0u64));
    let count = Rc::clone(&runs);
    let src: Vec<u8> = (0..4096u32)
        .map(|i| (i * 131 + 7) as u8 | 1)
        .chain([0])
        .collect();
    let mut dst = vec![0u8; src.len()];
    vm.add_code_cb(
        InstPosition::PreInst,
        move |_vm, gpr, _fpr| {
            count.set(count.get() + 1);
            clobber_fp_state(gpr.rip ^ count.get().rotate_left(32), &src, &mut dst);
            VmAction::Continue
        },
        PRIORITY_DEFAULT,
    )
    .expect("a callback on every instruction");
    let events = Rc::new(Cell::new(0u64));
    let count = Rc::clone(&events);
    let src: Vec<u8> = (0..2048u32)
        .map(|i| (i * 7 + 1) as u8 | 1)
        .chain([0])
        .collect();
    let mut dst = vec![0u8; src.len()];
    vm.add_vm_event_cb(
        VmEvent::BASIC_BLOCK_ENTRY
            | VmEvent::BASIC_BLOCK_EXIT
            | VmEvent::EXEC_TRANSFER_CALL
            | VmEvent::EXEC_TRANSFER_RETURN,
        move |_vm, state, gpr, _fpr| {
            count.set(count.get() + 1);
            clobber_fp_state(gpr.rip ^ state.basic_block_start, &src, &mut dst);
            VmAction::Continue
        },
    )
    .expect("a callback on every event");
    Box::new(move |name, _vm| {
        assert!(runs.take() > 0, "{name}: the clobbering callback never ran");
        assert!(
            events.take() > 0,
            "{name}: the clobbering event callback never ran"
        );
    })
}
