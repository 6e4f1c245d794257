//! Inlined calls (qbdi-core/src/engine/direct_call.rs, `emit_inline_site`): a direct site
//! whose callbacks are straight-line code of no argument returning `Continue` copies their
//! code instead of calling it. Each test runs a guest of `tests/guest/cb_funcs.S` with such
//! callbacks, then with inlining turned off (`Vm::set_call_inlining`: the same callbacks,
//! called) and, where it matters, with the general path, and checks that all see and do
//! the same: counts, the guest's results and flags, deletion, block events.
//!
//! The counters are statics, a pair of their own for each test (tests run at once): their
//! RIP-relative operands are addressed through a register the copy borrows. `bump` adds
//! one with a load and a store, `bump_locked` with `lock inc`.

use qbdi_core::{CallbackId, InstPosition, Options, VirtualStack, Vm, VmAction, VmEvent};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use InstPosition::{PostInst, PreInst};
use qbdi_tests::cb_funcs::*;

use qbdi_tests::addr;

/// The tests' counters; test `t` uses `2t` and `2t + 1`.
static COUNTS: [AtomicU64; 10] = [const { AtomicU64::new(0) }; 10];

/// Adds one to counter `K` with a load and a store: no argument, straight code.
fn bump<const K: usize>() {
    COUNTS[K].store(COUNTS[K].load(Relaxed).wrapping_add(1), Relaxed);
}

/// Adds one to counter `K` with `lock inc`.
fn bump_locked<const K: usize>() {
    COUNTS[K].fetch_add(1, Relaxed);
}

fn count(k: usize) -> u64 {
    COUNTS[k].load(Relaxed)
}

fn reset(k: usize) {
    COUNTS[k].store(0, Relaxed);
}

/// A Vm instrumenting `[start, end)`, with a guest stack.
fn vm_over(start: u64, end: u64) -> (Vm, VirtualStack) {
    qbdi_tests::vm_over(Options::NO_OPT, start, end)
}

/// How a test's callbacks run.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Path {
    /// Copied into the site.
    Inlined,
    /// The same callbacks, called from the site (`set_call_inlining(false)`).
    Called,
    /// Through the general path (the callback reads its VmRef).
    General,
}

const PATHS: [Path; 3] = [Path::Inlined, Path::Called, Path::General];

/// Adds a callback counting in counter `K` at `position` on every instruction, on `path`.
fn count_instructions<const K: usize>(
    vm: &mut Vm,
    position: InstPosition,
    path: Path,
) -> CallbackId {
    vm.set_call_inlining(path == Path::Inlined);
    if path == Path::General {
        vm.add_code_cb(
            position,
            |vm, _, _| {
                if vm.current_address().is_some() {
                    bump::<K>();
                }
                VmAction::Continue
            },
            0,
        )
        .unwrap()
    } else {
        vm.add_code_cb(
            position,
            |_, _, _| {
                bump::<K>();
                VmAction::Continue
            },
            0,
        )
        .unwrap()
    }
}

/// Checks that `vm`'s sites took `path`.
fn assert_path(vm: &Vm, path: Path, what: &str) {
    let (direct, inlined) = (vm.direct_call_sites(), vm.inlined_call_sites());
    match path {
        Path::Inlined => assert!(
            inlined > 0 && inlined == direct,
            "{what}: {inlined} of {direct}"
        ),
        Path::Called => assert!(direct > 0 && inlined == 0, "{what}: {inlined} of {direct}"),
        Path::General => assert_eq!(direct, 0, "{what}"),
    }
}

#[test]
fn inlined_counters_count_what_called_ones_and_the_general_path_count() {
    for position in [PreInst, PostInst] {
        // Every path's guest registers after each call, which must be the same (the
        // registers an inlined body writes, the one it borrows included, are put back).
        let mut states = Vec::new();
        for path in PATHS {
            let (mut vm, _stack) = vm_over(addr!(cb_loop), addr!(cb_loop_end));
            count_instructions::<0>(&mut vm, position, path);
            let mut after = Vec::new();
            for n in [0u64, 1, 7, 100] {
                reset(0);
                let native = unsafe { cb_loop(n) };
                assert_eq!(vm.call(addr!(cb_loop), &[n]).unwrap(), native);
                assert_eq!(count(0), 3 * n + 5, "{position:?} {path:?} n={n}");
                let mut gpr = *vm.gpr_state();
                // Each Vm has a stack of its own (rsp and rbp point into it).
                (gpr.rsp, gpr.rbp) = (0, 0);
                after.push(gpr);
            }
            assert_path(&vm, path, &format!("{position:?} {path:?}"));
            states.push(after);
        }
        assert_eq!(
            states[0], states[2],
            "{position:?}: inlined vs general registers"
        );
        assert_eq!(
            states[1], states[2],
            "{position:?}: called vs general registers"
        );
    }
}

#[test]
fn inlined_sites_keep_the_guest_flags_and_registers() {
    // cb_flags_tail returns x + x with the add's flags; its PreInst sites before `mov` and
    // `ret` have those flags live, and the inlined `inc` changes them.
    for path in [Path::Inlined, Path::Called] {
        let (mut vm, stack) = vm_over(addr!(cb_flags_tail), addr!(cb_flags_tail_end));
        count_instructions::<2>(&mut vm, PreInst, path);
        reset(2);
        for (x, flags) in [(1u64 << 63, 0x845u64), (1, 0), (3 << 62, 0x85)] {
            let got = qbdi_tests::run_with_flags(&mut vm, &stack, addr!(cb_flags_tail), x, 0x202);
            assert_eq!(got, (x.wrapping_add(x), flags), "{path:?} x={x:#x}");
        }
        assert_eq!(count(2), 12, "{path:?}");
        assert_path(&vm, path, "cb_flags_tail");
    }
    // cb_straight's flags at the end come from its last `xor`; its result from rax, rdx
    // and rdi, which an inlined body must give back as they were.
    for position in [PreInst, PostInst] {
        let (mut vm, stack) = vm_over(addr!(cb_straight), addr!(cb_straight_end));
        count_instructions::<2>(&mut vm, position, Path::Inlined);
        for start_flags in [0x202u64, 0x202 | 0x8d5] {
            let x = 0x7fff_ffff_ffff_fff0;
            let native = unsafe { cb_straight(x) };
            let got =
                qbdi_tests::run_with_flags(&mut vm, &stack, addr!(cb_straight), x, start_flags);
            assert_eq!(got, (native, 0x44), "{position:?} from {start_flags:#x}");
        }
        assert_path(&vm, Path::Inlined, "cb_straight");
    }
}

#[test]
fn a_locked_counter_is_inlined() {
    // `fetch_add` on a static: `lock inc [rip+x]`, with PreInst and PostInst sites.
    for path in [Path::Inlined, Path::Called] {
        let (mut vm, _stack) = vm_over(addr!(cb_loop), addr!(cb_loop_end));
        vm.set_call_inlining(path == Path::Inlined);
        for position in [PreInst, PostInst] {
            vm.add_code_cb(
                position,
                |_, _, _| {
                    bump_locked::<4>();
                    VmAction::Continue
                },
                0,
            )
            .unwrap();
        }
        reset(4);
        let native = unsafe { cb_loop(50) };
        assert_eq!(vm.call(addr!(cb_loop), &[50]).unwrap(), native, "{path:?}");
        assert_eq!(count(4), 2 * (3 * 50 + 5), "{path:?}");
        assert_path(&vm, path, "static counter");
    }
}

#[test]
fn an_inlined_callback_deleted_by_another_stops_being_run_at_once() {
    // As for called sites (tests/direct_calls.rs): the loop body's translated code still
    // holds the counter's copy when a general callback deletes it; it must not run again.
    let (mut vm, _stack) = vm_over(addr!(cb_loop), addr!(cb_loop_end));
    let id = count_instructions::<6>(&mut vm, PreInst, Path::Inlined);
    let deleted = qbdi_tests::delete_once_at(&mut vm, addr!(cb_loop_body), id);
    // cb_loop(0) skips the loop body: the counter is not deleted yet, and inlined.
    reset(6);
    assert_eq!(vm.call(addr!(cb_loop), &[0]).unwrap(), unsafe {
        cb_loop(0)
    });
    assert_eq!(count(6), 5);
    assert!(!deleted.get());
    assert_path(&vm, Path::Inlined, "before the deletion");
    reset(6);
    assert_eq!(vm.call(addr!(cb_loop), &[20]).unwrap(), unsafe {
        cb_loop(20)
    });
    assert!(deleted.get());
    assert_eq!(count(6), 4, "counted xor, mov, test, jz, then nothing");
    assert_eq!(vm.call(addr!(cb_loop), &[20]).unwrap(), unsafe {
        cb_loop(20)
    });
    assert_eq!(count(6), 4);
}

#[test]
fn inlined_block_entry_counters_count_the_blocks_events_report() {
    // Two inlinable BASIC_BLOCK_ENTRY callbacks at one point, one after the other; the
    // general path's count of the same events is the reference.
    let mut counts = Vec::new();
    for path in PATHS {
        let (mut vm, _stack) = vm_over(addr!(cb_loop), addr!(cb_loop_end));
        vm.set_call_inlining(path == Path::Inlined);
        if path == Path::General {
            vm.add_vm_event_cb(VmEvent::BASIC_BLOCK_ENTRY, |vm, _, _, _| {
                if vm.current_address().is_none() {
                    bump::<8>();
                    bump::<9>();
                }
                VmAction::Continue
            })
            .unwrap();
        } else {
            vm.add_vm_event_cb(VmEvent::BASIC_BLOCK_ENTRY, |_, _, _, _| {
                bump::<8>();
                VmAction::Continue
            })
            .unwrap();
            vm.add_vm_event_cb(VmEvent::BASIC_BLOCK_ENTRY, |_, _, _, _| {
                bump_locked::<9>();
                VmAction::Continue
            })
            .unwrap();
        }
        reset(8);
        reset(9);
        assert_eq!(vm.call(addr!(cb_loop), &[30]).unwrap(), unsafe {
            cb_loop(30)
        });
        assert_eq!(count(8), count(9), "{path:?}");
        assert_path(&vm, path, &format!("{path:?}"));
        counts.push(count(8));
    }
    assert!(
        counts[0] > 30,
        "one entry per iteration at least: {counts:?}"
    );
    assert_eq!(counts[0], counts[2], "inlined vs general");
    assert_eq!(counts[1], counts[2], "called vs general");
}
