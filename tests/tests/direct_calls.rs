//! Direct calls (qbdi-core/src/engine/direct_call.rs): a site whose only callback compiles
//! to a leaf of integer code calls it straight from translated code. Each test runs the same
//! guest function (`tests/guest/cb_funcs.S`) with a callback the engine calls directly and,
//! where it matters, with the same callback made ineligible (it touches its `VmRef` or
//! does float math), and checks that both see and do the same: counts, registers read and
//! changed, actions, deletion, flags, VM events.
//!
//! The test crate is built with optimisations (see the workspace Cargo.toml) and these
//! callbacks use wrapping arithmetic: an overflow check would be a call to the panic
//! machinery, which no direct entry may contain.

use qbdi_core::{
    InstPosition, MemoryAccess, MemoryAccessType, Options, VirtualStack, Vm, VmAction, VmEvent,
};
use std::cell::Cell;
use std::hint::black_box;
use std::rc::Rc;

use InstPosition::{PostInst, PreInst};
use qbdi_tests::cb_funcs::*;

#[path = "../benches/kernels/mod.rs"]
mod kernels;

use qbdi_tests::addr;

/// A Vm instrumenting `[start, end)`, with a guest stack.
fn vm_over(start: u64, end: u64) -> (Vm, VirtualStack) {
    qbdi_tests::vm_over(Options::NO_OPT, start, end)
}

fn counter() -> Rc<Cell<u64>> {
    Rc::new(Cell::new(0))
}

/// cb_loop(n) executes 3n + 5 instructions (see cb_funcs.S).
fn loop_instructions(n: u64) -> u64 {
    3 * n + 5
}

/// Counts every instruction of cb_loop(n) at `position`; `GENERAL` makes the callback
/// ineligible for a direct call (it reads its VmRef). Returns (result, count, direct sites).
/// (A const parameter, not a captured flag: the callback's code must not even contain the
/// read of its VmRef.)
fn count_loop<const GENERAL: bool>(n: u64, position: InstPosition) -> (u64, u64, usize) {
    let (mut vm, _stack) = vm_over(addr!(cb_loop), addr!(cb_loop_end));
    let count = counter();
    let c = count.clone();
    vm.add_code_cb(
        position,
        move |vm, _, _| {
            let step = if GENERAL {
                u64::from(vm.current_address().is_some())
            } else {
                1
            };
            c.set(c.get().wrapping_add(step));
            VmAction::Continue
        },
        0,
    )
    .unwrap();
    let result = vm.call(addr!(cb_loop), &[n]).unwrap();
    (result, count.get(), vm.direct_call_sites())
}

#[test]
fn a_counting_callback_is_called_directly_and_counts_what_the_general_path_counts() {
    for position in [PreInst, PostInst] {
        for n in [0, 1, 7, 100] {
            let native = unsafe { cb_loop(n) };
            let (result, count, direct) = count_loop::<false>(n, position);
            let (g_result, g_count, g_direct) = count_loop::<true>(n, position);
            assert!(
                direct > 0,
                "{position:?}: the counter is not called directly"
            );
            assert_eq!(
                g_direct, 0,
                "a callback reading its VmRef has no direct call"
            );
            assert_eq!(result, native);
            assert_eq!(g_result, native);
            assert_eq!(
                count,
                loop_instructions(n),
                "{position:?} n={n}: direct count"
            );
            assert_eq!(g_count, count, "{position:?} n={n}: general count");
        }
    }
}

#[test]
fn a_direct_callback_reads_the_guest_registers() {
    // Each callback folds rip and rdi of every instruction into a hash; the general path's
    // hash (same fold, plus a read of the VmRef) must be the same.
    fn run<const GENERAL: bool>() -> (u64, u64, usize) {
        let (mut vm, _stack) = vm_over(addr!(cb_straight), addr!(cb_straight_end));
        let hash = counter();
        let h = hash.clone();
        vm.add_code_cb(
            PreInst,
            move |vm, gpr, _| {
                let extra = if GENERAL {
                    u64::from(vm.current_address() == Some(0))
                } else {
                    0
                };
                let v = h.get().wrapping_mul(31).wrapping_add(gpr.rip ^ gpr.rdi);
                h.set(v.wrapping_add(extra));
                VmAction::Continue
            },
            0,
        )
        .unwrap();
        let r = vm.call(addr!(cb_straight), &[5]).unwrap();
        (r, hash.get(), vm.direct_call_sites())
    }
    let (r, hash, direct) = run::<false>();
    let (g_r, g_hash, g_direct) = run::<true>();
    assert!(direct > 0 && g_direct == 0);
    assert_eq!(r, unsafe { cb_straight(5) });
    assert_eq!(g_r, r);
    assert_ne!(hash, 0);
    assert_eq!(
        hash, g_hash,
        "direct and general callbacks saw different registers"
    );
}

#[test]
fn registers_changed_by_a_direct_callback_are_what_the_guest_sees() {
    let (mut vm, _stack) = vm_over(addr!(cb_inc), addr!(cb_inc_end));
    vm.add_code_addr_cb(
        addr!(cb_inc_ret),
        PreInst,
        |_, gpr, _| {
            gpr.rax = gpr.rax.wrapping_mul(3);
            gpr.rdx = 0xdead;
            VmAction::Continue
        },
        0,
    )
    .unwrap();
    assert_eq!(vm.call(addr!(cb_inc), &[10]).unwrap(), 27 * 3);
    assert_eq!(vm.direct_call_sites(), 1);
    assert_eq!(vm.gpr_state().rdx, 0xdead);
}

/// cb_inc(x) with one callback at `at`/`position` returning `action`; returns the result.
fn inc_with(at: u64, position: InstPosition, action: VmAction) -> (Vm, VirtualStack, u64) {
    let (mut vm, stack) = vm_over(addr!(cb_inc), addr!(cb_inc_end));
    vm.add_code_addr_cb(at, position, move |_, _, _| black_box(action), 0)
        .unwrap();
    let r = vm.call(addr!(cb_inc), &[41]).unwrap();
    assert_eq!(vm.direct_call_sites(), 1, "{action:?}: no direct call");
    (vm, stack, r)
}

#[test]
fn actions_returned_by_direct_callbacks_apply() {
    let native = unsafe { cb_inc(41) };
    assert_eq!(native, 58);
    let (_vm, _s, r) = inc_with(addr!(cb_inc_inc), PreInst, VmAction::SkipInst);
    assert_eq!(r, 57, "SkipInst skips the inc");
    let (_vm, _s, r) = inc_with(addr!(cb_inc_inc), PreInst, VmAction::SkipPatch);
    assert_eq!(r, 57, "SkipPatch from PreInst skips the inc");
    let (_vm, _s, r) = inc_with(addr!(cb_inc_inc), PostInst, VmAction::SkipInst);
    assert_eq!(r, native, "SkipInst from PostInst changes nothing");
    // Stop before the inc: the run ends with the state of that point.
    let (vm, _s, r) = inc_with(addr!(cb_inc_inc), PreInst, VmAction::Stop);
    assert_eq!(r, 41);
    assert_eq!(vm.gpr_state().rip, addr!(cb_inc_inc));
    let (vm, _s, r) = inc_with(addr!(cb_inc_inc), PostInst, VmAction::Stop);
    assert_eq!(r, 42);
    assert_eq!(vm.gpr_state().rip, addr!(cb_inc_add));
}

#[test]
fn break_to_vm_from_a_direct_callback_applies_a_changed_rip() {
    let (mut vm, _stack) = vm_over(addr!(cb_inc), addr!(cb_inc_end));
    let add = addr!(cb_inc_add);
    vm.add_code_addr_cb(
        addr!(cb_inc_inc),
        PreInst,
        move |_, gpr, _| {
            gpr.rip = add;
            VmAction::BreakToVm
        },
        0,
    )
    .unwrap();
    assert_eq!(
        vm.call(addr!(cb_inc), &[41]).unwrap(),
        57,
        "the inc was jumped over"
    );
    assert_eq!(vm.direct_call_sites(), 1);
}

#[test]
fn a_direct_callback_deleted_by_another_stops_being_called_at_once() {
    // A direct counter on every instruction; a general callback on the loop body (higher
    // priority, so first there) deletes it the first time. The loop body's block and the
    // rest of the run must not call the counter again, though their translated code still
    // names it until the deletion reaches the dispatcher.
    let (mut vm, _stack) = vm_over(addr!(cb_loop), addr!(cb_loop_end));
    let count = counter();
    let c = count.clone();
    let id = vm
        .add_code_cb(
            PreInst,
            move |_, _, _| {
                c.set(c.get().wrapping_add(1));
                VmAction::Continue
            },
            0,
        )
        .unwrap();
    let deleted = qbdi_tests::delete_once_at(&mut vm, addr!(cb_loop_body), id);
    // Translate the loop once without running the deletion twice: the first call deletes.
    assert_eq!(vm.call(addr!(cb_loop), &[20]).unwrap(), unsafe {
        cb_loop(20)
    });
    assert!(deleted.get());
    assert_eq!(count.get(), 4, "counted xor, mov, test, jz, then nothing");
    assert_eq!(vm.call(addr!(cb_loop), &[20]).unwrap(), unsafe {
        cb_loop(20)
    });
    assert_eq!(count.get(), 4);
}

#[test]
fn a_direct_site_keeps_the_guest_flags_and_handles_the_direction_flag() {
    // cb_df runs two adds with DF set and folds the flags it then has into its result: a
    // callback that changed or lost a flag changes the result. Every instruction has a
    // direct PreInst and PostInst counter; those inside the std..cld window go through the
    // general path (the callback code may assume DF clear) and must count all the same.
    let (mut vm, _stack) = vm_over(addr!(cb_df), addr!(cb_df_end));
    let count = counter();
    for position in [PreInst, PostInst] {
        let c = count.clone();
        vm.add_code_cb(
            position,
            move |_, _, _| {
                c.set(c.get().wrapping_add(1));
                VmAction::Continue
            },
            0,
        )
        .unwrap();
    }
    for x in [0u64, 5, u64::MAX - 3, 0x7fff_ffff_ffff_fffe] {
        count.set(0);
        let native = unsafe { cb_df(x) };
        assert_eq!(vm.call(addr!(cb_df), &[x]).unwrap(), native, "x={x:#x}");
        assert_eq!(
            count.get(),
            2 * 10,
            "x={x:#x}: 10 instructions, pre and post"
        );
    }
    assert!(vm.direct_call_sites() > 0);
}

/// A direct callback at `position` on every instruction of `vm` counting its calls.
fn count_every_instruction(vm: &mut Vm, position: InstPosition) -> Rc<Cell<u64>> {
    let count = counter();
    let c = count.clone();
    vm.add_code_cb(
        position,
        move |_, _, _| {
            c.set(c.get().wrapping_add(1));
            VmAction::Continue
        },
        0,
    )
    .unwrap();
    count
}

#[test]
fn flags_are_kept_across_direct_calls_on_every_instruction() {
    // Before (or after) each instruction of cb_straight a direct counter runs; the guest's
    // flags at the end (from its last add/xor/lea) must be the native ones.
    for position in [PostInst, PreInst] {
        let (mut vm, stack) = vm_over(addr!(cb_straight), addr!(cb_straight_end));
        let count = count_every_instruction(&mut vm, position);
        // Start with every arithmetic flag set; the guest's xor clears some, its adds set
        // some.
        for start_flags in [0x202u64, 0x202 | 0x8d5] {
            let x = 0x7fff_ffff_ffff_fff0;
            let (rax, flags) =
                qbdi_tests::run_with_flags(&mut vm, &stack, addr!(cb_straight), x, start_flags);
            // The last flag-writing instruction is `xor edx, edx` (lea and mov write none):
            // ZF and PF set, the others clear.
            assert_eq!(
                flags, 0x44,
                "{position:?}: flags after cb_straight from {start_flags:#x}"
            );
            assert_eq!(rax, native_straight(x));
        }
        assert!(vm.direct_call_sites() > 0);
        assert_eq!(count.get(), 12, "{position:?}");
    }
}

/// A direct PreInst callback whose host code leaves other flags than the guest's: where
/// the next instruction overwrites them (before cb_flags_tail's `add`) they are not put
/// back; where they are live (before `mov` and `ret`, the add's flags going back to the
/// caller) they are.
#[test]
fn direct_sites_put_the_flags_back_where_they_are_live() {
    let (mut vm, stack) = vm_over(addr!(cb_flags_tail), addr!(cb_flags_tail_end));
    let count = count_every_instruction(&mut vm, PreInst);
    for (x, flags) in [(1u64 << 63, 0x845u64), (1, 0), (3 << 62, 0x85)] {
        let got = qbdi_tests::run_with_flags(&mut vm, &stack, addr!(cb_flags_tail), x, 0x202);
        assert_eq!(got, (x.wrapping_add(x), flags), "x={x:#x}");
    }
    assert!(vm.direct_call_sites() > 0);
    assert_eq!(count.get(), 12);
}

/// cb_straight's result for `x`.
fn native_straight(x: u64) -> u64 {
    x.wrapping_add(3).wrapping_mul(5).wrapping_add(7)
}

#[test]
fn event_callbacks_are_called_directly_with_their_vm_state() {
    fn run<const GENERAL: bool>() -> (u64, u64, usize) {
        let (mut vm, _stack) = vm_over(addr!(cb_loop), addr!(cb_loop_end));
        let hash = counter();
        let h = hash.clone();
        vm.add_vm_event_cb(
            VmEvent::BASIC_BLOCK_ENTRY | VmEvent::BASIC_BLOCK_EXIT,
            move |vm, state, gpr, _| {
                let extra = if GENERAL {
                    u64::from(vm.current_address() == Some(1))
                } else {
                    0
                };
                let v = (state.event.bits() as u64)
                    ^ state.basic_block_start.rotate_left(7)
                    ^ state.basic_block_end.rotate_left(13)
                    ^ gpr.rcx;
                h.set(h.get().wrapping_mul(31).wrapping_add(v).wrapping_add(extra));
                VmAction::Continue
            },
        )
        .unwrap();
        let r = vm.call(addr!(cb_loop), &[9]).unwrap();
        (r, hash.get(), vm.direct_call_sites())
    }
    let (r, hash, direct) = run::<false>();
    let (g_r, g_hash, g_direct) = run::<true>();
    assert!(direct > 0 && g_direct == 0);
    assert_eq!(r, unsafe { cb_loop(9) });
    assert_eq!(g_r, r);
    assert_eq!(
        hash, g_hash,
        "direct and general event callbacks saw different states"
    );
}

#[test]
fn callbacks_doing_float_math_are_not_called_directly() {
    let (mut vm, _stack) = vm_over(addr!(cb_loop), addr!(cb_loop_end));
    let sum = Rc::new(Cell::new(0.0f64));
    let s = sum.clone();
    vm.add_code_cb(
        PreInst,
        move |_, gpr, _| {
            s.set(s.get() * 0.5 + gpr.rcx as f64);
            VmAction::Continue
        },
        0,
    )
    .unwrap();
    assert_eq!(vm.call(addr!(cb_loop), &[4]).unwrap(), unsafe {
        cb_loop(4)
    });
    assert_eq!(
        vm.direct_call_sites(),
        0,
        "SSE code needs the general path's FP save"
    );
    assert!(sum.get() > 0.0);
}

/// Counts of the `extern "C"` entries below (plugin trampolines' convention).
static ENTRY_COUNT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// An instruction entry in the convention of a plugin trampoline: `(vm, gpr, fpr)`.
extern "C" fn counting_entry(
    _vm: *const std::ffi::c_void,
    _gpr: *mut qbdi_core::GprState,
    _fpr: *mut qbdi_core::FprState,
) -> u32 {
    ENTRY_COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    0
}

/// An event entry `(vm, state, gpr, fpr)` that reads its VmState (a reference: a raw
/// pointer dereference would get an alignment check in this debug-assertion build).
extern "C" fn state_entry(
    _vm: *const std::ffi::c_void,
    state: &qbdi_core::VmState,
    _gpr: *mut qbdi_core::GprState,
    _fpr: *mut qbdi_core::FprState,
) -> u32 {
    let start = state.basic_block_start;
    ENTRY_COUNT.fetch_add(start & 1 ^ 1, std::sync::atomic::Ordering::Relaxed);
    0
}

#[test]
fn a_callback_given_a_compiled_entry_is_called_through_it() {
    use std::sync::atomic::Ordering::Relaxed;
    // The closure is the general path (it reads its VmRef: never direct by itself); the
    // entry does the same count directly.
    let (mut vm, _stack) = vm_over(addr!(cb_loop), addr!(cb_loop_end));
    let general = counter();
    let g = general.clone();
    let id = vm
        .add_code_cb(
            PreInst,
            move |vm, _, _| {
                g.set(g.get() + u64::from(vm.current_address().is_some()));
                ENTRY_COUNT.fetch_add(1, Relaxed);
                VmAction::Continue
            },
            0,
        )
        .unwrap();
    ENTRY_COUNT.store(0, Relaxed);
    let result = vm.call(addr!(cb_loop), &[10]).unwrap();
    assert_eq!(
        vm.direct_call_sites(),
        0,
        "the closure alone is not eligible"
    );
    assert_eq!(ENTRY_COUNT.load(Relaxed), loop_instructions(10));
    // SAFETY: counting_entry does what the closure does to ENTRY_COUNT.
    let refusal =
        unsafe { vm.set_direct_entry(id, counting_entry as *const (), qbdi_core::EntryAbi::Inst) }
            .unwrap();
    assert_eq!(refusal, None);
    ENTRY_COUNT.store(0, Relaxed);
    general.set(0);
    assert_eq!(vm.call(addr!(cb_loop), &[10]).unwrap(), result);
    assert!(vm.direct_call_sites() > 0, "the entry is called directly");
    assert_eq!(ENTRY_COUNT.load(Relaxed), loop_instructions(10));
    assert_eq!(general.get(), 0, "the closure is not called");
    // The wrong convention, an entry reading its VmRef, and an unknown id are refused.
    // SAFETY: refused before any use.
    unsafe {
        let wrong = vm.set_direct_entry(id, state_entry as *const (), qbdi_core::EntryAbi::Event);
        assert!(wrong.unwrap().is_some());
        assert!(
            vm.set_direct_entry(999, counting_entry as *const (), qbdi_core::EntryAbi::Inst)
                .is_err()
        );
    }
    let reads_vm = qbdi_core::direct_call_refusal(
        qbdi_core::Vm::direct_call_sites as *const (),
        qbdi_core::EntryAbi::Inst,
    );
    assert!(reads_vm.is_some());
    assert_eq!(
        qbdi_core::direct_call_refusal(state_entry as *const (), qbdi_core::EntryAbi::Event),
        None
    );
}

/// Several callbacks at one point are called directly one after the other (up to four),
/// in priority order, and every action keeps its meaning: the ones after a callback that
/// returned another action than Continue run (through the general routine) unless that
/// action ends the point (SkipPatch, SkipInst before the instruction).
#[test]
fn several_callbacks_at_one_point_are_called_directly_in_order() {
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    static ORDER: AtomicU64 = AtomicU64::new(0);
    // Each callback appends its digit to ORDER (ORDER = ORDER * 10 + d), and the third
    // changes rax (it reads the GprState: the whole state goes through the context).
    fn run(action_of_first: VmAction, position: InstPosition) -> (u64, u64, usize, u64) {
        let (mut vm, _stack) = vm_over(addr!(cb_inc), addr!(cb_inc_end));
        let at = addr!(cb_inc_inc);
        for (digit, priority) in [(1u64, 30), (2, 20), (3, 10), (4, 0)] {
            vm.add_code_addr_cb(
                at,
                position,
                move |_, gpr, _| {
                    let o = ORDER.load(Relaxed);
                    ORDER.store(o.wrapping_mul(10).wrapping_add(digit), Relaxed);
                    if digit == 3 {
                        gpr.rax = gpr.rax.wrapping_add(1000);
                    }
                    if digit == 1 {
                        black_box(action_of_first)
                    } else {
                        VmAction::Continue
                    }
                },
                priority,
            )
            .unwrap();
        }
        ORDER.store(0, Relaxed);
        let r = vm.call(addr!(cb_inc), &[41]).unwrap();
        (
            r,
            ORDER.load(Relaxed),
            vm.direct_call_sites(),
            vm.gpr_state().rip,
        )
    }
    // cb_inc(41): mov rax, rdi; inc rax; add rax, 16; ret -> 58.
    let (r, order, direct, _) = run(VmAction::Continue, PreInst);
    assert_eq!((r, order), (1058, 1234), "all four, in priority order");
    assert!(direct > 0, "the four are called directly");
    let (r, order, _, _) = run(VmAction::Continue, PostInst);
    assert_eq!((r, order), (1058, 1234));
    // SkipInst before the instruction: the others do not run, the inc is skipped.
    let (r, order, _, _) = run(VmAction::SkipInst, PreInst);
    assert_eq!((r, order), (57, 1));
    // SkipPatch likewise; after the instruction SkipInst changes nothing and the rest run.
    let (r, order, _, _) = run(VmAction::SkipPatch, PreInst);
    assert_eq!((r, order), (57, 1));
    let (r, order, _, _) = run(VmAction::SkipInst, PostInst);
    assert_eq!((r, order), (1058, 1234));
    // Stop: the others still run (as on the general path), then the run ends there.
    let (r, order, _, rip) = run(VmAction::Stop, PreInst);
    assert_eq!((r, order, rip), (1041, 1234, addr!(cb_inc_inc)));
}

/// Two VM event callbacks on block entries are called directly one after the other, and
/// count what one callback counts.
#[test]
fn several_event_callbacks_are_called_directly() {
    let (mut vm, _stack) = vm_over(addr!(cb_loop), addr!(cb_loop_end));
    let counts = [counter(), counter()];
    for c in &counts {
        let c = c.clone();
        vm.add_vm_event_cb(VmEvent::BASIC_BLOCK_ENTRY, move |_, _, _, _| {
            c.set(c.get().wrapping_add(1));
            VmAction::Continue
        })
        .unwrap();
    }
    let alone = {
        let (mut vm, _stack) = vm_over(addr!(cb_loop), addr!(cb_loop_end));
        let c = counter();
        let c2 = c.clone();
        vm.add_vm_event_cb(VmEvent::BASIC_BLOCK_ENTRY, move |vm, _, _, _| {
            // Reads its VmRef: the general path.
            c2.set(c2.get() + u64::from(vm.current_address().is_none()));
            VmAction::Continue
        })
        .unwrap();
        vm.call(addr!(cb_loop), &[20]).unwrap();
        c.get()
    };
    vm.call(addr!(cb_loop), &[20]).unwrap();
    assert!(vm.direct_call_sites() > 0);
    assert!(alone > 20);
    assert_eq!([counts[0].get(), counts[1].get()], [alone, alone]);
}

/// `h` with `a` folded in (FNV-style, so order matters): every field if `exact`, else its
/// instruction, size, kind and flags (addresses and values differ between runs when the
/// guest's buffers are allocated anew).
fn fold_access(h: u64, a: &MemoryAccess, exact: bool) -> u64 {
    let meta =
        u64::from(a.size) | u64::from(a.access_type.bits()) << 16 | u64::from(a.flags.bits()) << 24;
    let (addr, value) = if exact {
        (a.access_address, a.value)
    } else {
        (0, 0)
    };
    [a.inst_address, addr, value, meta]
        .iter()
        .fold(h, |h, &w| (h ^ w).wrapping_mul(0x100_0000_01b3))
}

/// Whether memory holds `a`'s value now (a read before its instruction, a write after).
/// Loads in assembly: a raw pointer dereference gets a null and alignment check in this
/// debug-assertion build, a call no direct entry may contain.
///
/// # Safety
/// `a.access_address` must be readable for `a.size` bytes.
unsafe fn holds(a: &MemoryAccess) -> bool {
    use std::arch::asm;
    let p = a.access_address;
    let now: u64;
    // SAFETY: per the caller; each load reads `a.size` bytes at `p` and nothing else.
    unsafe {
        match a.size {
            1 => asm!("movzx {v:e}, byte ptr [{p}]", p = in(reg) p, v = out(reg) now,
                      options(readonly, nostack, preserves_flags)),
            2 => asm!("movzx {v:e}, word ptr [{p}]", p = in(reg) p, v = out(reg) now,
                      options(readonly, nostack, preserves_flags)),
            4 => asm!("mov {v:e}, dword ptr [{p}]", p = in(reg) p, v = out(reg) now,
                      options(readonly, nostack, preserves_flags)),
            _ => asm!("mov {v}, qword ptr [{p}]", p = in(reg) p, v = out(reg) now,
                      options(readonly, nostack, preserves_flags)),
        }
    }
    now == a.value
}

/// What callbacks folding `inst_memory_access` saw while `vm` ran `func(args)`.
#[derive(Debug, PartialEq, Eq)]
struct Folded {
    result: u64,
    hash: u64,
    accesses: u64,
    /// Values compared with memory, and how many differed.
    checked: u64,
    wrong: u64,
    direct_sites: usize,
}

/// Runs `func(args)` under `vm` with callbacks folding `inst_memory_access` into a hash
/// (`EXACT`: see `fold_access`) and checking values against memory: writes, and reads of
/// instructions that do not write (their memory is as read). `CODE`: a PreInst and a
/// PostInst callback on every instruction, with recording on (PreInst views of writing
/// instructions, empty views); else one memory callback (READ_WRITE: reads before, writes
/// after). `GENERAL` makes the callbacks also read their VmRef otherwise, which keeps them
/// on the general path.
fn fold_accesses<const CODE: bool, const GENERAL: bool, const EXACT: bool>(
    mut vm: Vm,
    func: u64,
    args: &[u64],
) -> Folded {
    let cells: Rc<[Cell<u64>; 4]> = Rc::new(Default::default());
    let callback = {
        let cells = cells.clone();
        move |vm: &mut qbdi_core::VmRef<'_>,
              _: &mut qbdi_core::GprState,
              _: &mut qbdi_core::FprState| {
            let extra = if GENERAL {
                u64::from(vm.current_address() == Some(0))
            } else {
                0
            };
            let accesses = vm.inst_memory_access();
            let writes = accesses
                .iter()
                .any(|a| a.access_type == MemoryAccessType::WRITE);
            let [hash, seen, checked, wrong] = &*cells;
            let mut h = hash.get();
            for a in accesses {
                h = fold_access(h, a, EXACT);
                seen.set(seen.get().wrapping_add(1));
                let sized = matches!(a.size, 1 | 2 | 4 | 8) && a.flags.is_empty();
                if sized && (writes == (a.access_type == MemoryAccessType::WRITE)) {
                    checked.set(checked.get().wrapping_add(1));
                    // SAFETY: the guest just accessed these bytes.
                    wrong.set(wrong.get().wrapping_add(u64::from(!unsafe { holds(a) })));
                }
            }
            hash.set(h.wrapping_add(extra));
            VmAction::Continue
        }
    };
    if CODE {
        vm.record_memory_access(MemoryAccessType::READ_WRITE)
            .unwrap();
        vm.add_code_cb(PreInst, callback.clone(), 0).unwrap();
        vm.add_code_cb(PostInst, callback, 0).unwrap();
    } else {
        vm.add_mem_access_cb(MemoryAccessType::READ_WRITE, callback, 0)
            .unwrap();
    }
    let result = vm.call(func, args).unwrap();
    let [hash, accesses, checked, wrong] = std::array::from_fn(|i| cells[i].get());
    Folded {
        result,
        hash,
        accesses,
        checked,
        wrong,
        direct_sites: vm.direct_call_sites(),
    }
}

/// Callbacks reading their instruction's memory accesses are called directly, the site
/// building the accesses, and see exactly what the general path gives them: every field of
/// every access, in order, before and after instructions, `rep` strings included (their
/// span after the instruction is the general path's).
#[test]
fn callbacks_reading_memory_accesses_are_called_directly_and_see_the_general_paths_accesses() {
    fn fill(buf: &mut [u64; 8]) {
        for (i, w) in buf.iter_mut().enumerate() {
            *w = 0x0101_0101_0101_0101 * (i as u64 + 1);
        }
    }
    let mut buf = Box::new([0u64; 8]);
    fill(&mut buf);
    let native = unsafe { cb_mem(buf.as_mut_ptr()) };
    let native_buf = *buf;
    // One stack and one buffer for every run: the accesses' addresses are the same.
    let mut regs = qbdi_core::GprState::default();
    let _stack = qbdi_core::allocate_virtual_stack(&mut regs, 1 << 20).unwrap();
    let mut run = |f: fn(Vm, u64, &[u64]) -> Folded| {
        let (mut vm, _) = vm_over(addr!(cb_mem), addr!(cb_mem_end));
        vm.gpr_state_mut().rsp = regs.rsp;
        vm.gpr_state_mut().rbp = regs.rbp;
        fill(&mut buf);
        let folded = f(vm, addr!(cb_mem), &[buf.as_mut_ptr() as u64]);
        assert_eq!(*buf, native_buf, "the guest's stores");
        folded
    };
    let memory = (
        run(fold_accesses::<false, false, true>),
        run(fold_accesses::<false, true, true>),
    );
    let code = (
        run(fold_accesses::<true, false, true>),
        run(fold_accesses::<true, true, true>),
    );
    // 13 instructions access memory: 11 reads (an add, an xchg, a push and both string
    // instructions read and write) and 7 writes. The code callbacks see the reads twice
    // (before and after).
    for (what, (direct, general), accesses) in [("memory", memory, 18), ("code", code, 29)] {
        assert!(direct.direct_sites > 0, "{what}: no direct site");
        assert_eq!(
            general.direct_sites, 0,
            "{what}: the general version went direct"
        );
        assert_eq!(direct.result, native, "{what}: direct run");
        assert_eq!(direct.accesses, accesses, "{what}: direct accesses");
        assert_eq!(direct.wrong, 0, "{what}: values that memory does not hold");
        assert!(
            direct.checked >= 10,
            "{what}: {} values checked",
            direct.checked
        );
        assert_eq!(
            Folded {
                direct_sites: 0,
                ..direct
            },
            general,
            "{what}: the paths saw different accesses"
        );
    }
}

/// The same comparison on the compiled kernels of the overhead bench (every addressing
/// mode the compiler uses, calls, returns, pushes). Their buffers move between runs: the
/// hash leaves addresses and values out, and each run checks values against memory.
#[test]
fn direct_memory_callbacks_see_the_general_paths_accesses_in_compiled_code() {
    for kernel in kernels::KERNELS {
        let size = kernel.size_for(true);
        let native = kernel.run_native(size, kernels::SEED);
        let run = |f: fn(Vm, u64, &[u64]) -> Folded| {
            let mut vm = Vm::new();
            let _stack = qbdi_core::allocate_virtual_stack(vm.gpr_state_mut(), 8 << 20).unwrap();
            vm.add_instrumented_module_from_addr(kernel.addr()).unwrap();
            f(vm, kernel.addr(), &[size, kernels::SEED])
        };
        let direct = run(fold_accesses::<false, false, false>);
        let general = run(fold_accesses::<false, true, false>);
        let name = kernel.name;
        assert!(direct.direct_sites > 0, "{name}: no direct site");
        assert_eq!(
            general.direct_sites, 0,
            "{name}: the general version went direct"
        );
        assert_eq!(direct.result, native, "{name}: checksum");
        assert!(
            direct.accesses > 0 && direct.checked > 0,
            "{name}: {direct:?}"
        );
        assert_eq!(direct.wrong, 0, "{name}: values that memory does not hold");
        assert_eq!(
            Folded {
                direct_sites: 0,
                ..direct
            },
            general,
            "{name}: the paths saw different accesses"
        );
    }
}
