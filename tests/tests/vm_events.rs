//! VM events beyond QBDI's examples: sequence events coinciding with basic-block events,
//! BASIC_BLOCK_NEW together with BASIC_BLOCK_ENTRY on one callback, SYSCALL_ENTRY/EXIT
//! around a `syscall` instruction, the Stop and BreakToVm actions returned from event
//! callbacks, and registration errors. The guest functions are in `tests/guest/ev_blocks.S`,
//! whose block boundaries are labelled.

use iced_x86::{Decoder, DecoderOptions};
use qbdi_core::{
    AnalysisType, FAKE_RETURN_ADDRESS, InstPosition, PRIORITY_DEFAULT, Vm, VmAction, VmEvent,
    VmState, simulate_call,
};
use std::cell::{Cell, RefCell};
use std::rc::Rc;

use qbdi_tests::ev_blocks::{
    Block, branch_blocks, ev_bb_branch, ev_bb_loop, guest_vm, loop_block_sequence, loop_blocks,
    shared,
};

unsafe extern "C" {

    fn ev_sys_getpid() -> u64;
    static ev_sys_getpid_syscall: u8;
    static ev_sys_getpid_after: u8;
    static ev_sys_getpid_end: u8;
}

/// The address of a guest function or label.
macro_rules! addr {
    (fn $f:ident) => {
        $f as *const () as u64
    };
    ($label:ident) => {
        (&raw const $label) as u64
    };
}

/// Records every call of a VM event callback: the state and gpr.rip.
fn record_events(vm: &mut Vm, events: VmEvent) -> Rc<RefCell<Vec<(VmState, u64)>>> {
    let log = shared::<Vec<(VmState, u64)>>();
    let l = Rc::clone(&log);
    vm.add_vm_event_cb(events, move |_vm, state, gpr, _fpr| {
        l.borrow_mut().push((*state, gpr.rip));
        VmAction::Continue
    })
    .expect("a VM event callback");
    log
}

/// Records the address of every instruction executed (PreInst).
fn record_instructions(vm: &mut Vm) -> Rc<RefCell<Vec<u64>>> {
    let log = shared::<Vec<u64>>();
    let l = Rc::clone(&log);
    vm.add_code_cb(
        InstPosition::PreInst,
        move |_vm, gpr, _fpr| {
            l.borrow_mut().push(gpr.rip);
            VmAction::Continue
        },
        PRIORITY_DEFAULT,
    )
    .expect("a PreInst callback");
    log
}

/// The addresses of the instructions in `[start, end)` of the guest code.
fn instruction_addresses(start: u64, end: u64) -> Vec<u64> {
    // SAFETY: [start, end) is code of the test executable's mapped text (between labels of
    // ev_blocks.S).
    let bytes = unsafe { std::slice::from_raw_parts(start as *const u8, (end - start) as usize) };
    Decoder::with_ip(64, bytes, start, DecoderOptions::NONE)
        .into_iter()
        .map(|i| i.ip())
        .collect()
}

fn block_of(state: &VmState) -> Block {
    (state.basic_block_start, state.basic_block_end)
}

/// Calls `ev_bb_loop(n)` under the Vm and checks the result against the native call.
fn call_loop(vm: &mut Vm, n: u64) {
    // SAFETY: plain integer function.
    let native = unsafe { ev_bb_loop(n) };
    let got = vm
        .call(addr!(fn ev_bb_loop), &[n])
        .expect("ev_bb_loop under the Vm");
    assert_eq!(got as i64, native, "ev_bb_loop({n})");
}

// ---- events that coincide ---------------------------------------------------------------

#[test]
fn sequence_entry_and_exit_coincide_with_basic_block_entry_and_exit() {
    let (mut vm, _stack) = guest_vm();
    let entries = record_events(
        &mut vm,
        VmEvent::BASIC_BLOCK_ENTRY | VmEvent::SEQUENCE_ENTRY,
    );
    let exits = record_events(&mut vm, VmEvent::BASIC_BLOCK_EXIT | VmEvent::SEQUENCE_EXIT);
    let sequence_only = record_events(&mut vm, VmEvent::SEQUENCE_ENTRY);
    for n in [5u64, 5, 2] {
        entries.borrow_mut().clear();
        exits.borrow_mut().clear();
        sequence_only.borrow_mut().clear();
        call_loop(&mut vm, n);
        let seq = loop_block_sequence(n);

        let entries = entries.borrow();
        assert_eq!(
            entries.iter().map(|(s, _)| block_of(s)).collect::<Vec<_>>(),
            seq,
            "ev_bb_loop({n}): one call per block entry"
        );
        for (state, rip) in entries.iter() {
            assert_eq!(
                state.event,
                VmEvent::BASIC_BLOCK_ENTRY | VmEvent::SEQUENCE_ENTRY,
                "both events in one call"
            );
            assert_eq!(
                (state.sequence_start, state.sequence_end),
                block_of(state),
                "the sequence is the whole block"
            );
            assert_eq!(
                *rip, state.basic_block_start,
                "rip at entry is the block's start"
            );
        }

        let exits = exits.borrow();
        let expected_exits: Vec<(Block, u64)> = seq
            .iter()
            .enumerate()
            .map(|(i, &b)| (b, seq.get(i + 1).map_or(FAKE_RETURN_ADDRESS, |next| next.0)))
            .collect();
        assert_eq!(
            exits
                .iter()
                .map(|(s, rip)| (block_of(s), *rip))
                .collect::<Vec<_>>(),
            expected_exits,
            "ev_bb_loop({n}): one call per block exit, rip = where the block went"
        );
        for (state, _) in exits.iter() {
            assert_eq!(
                state.event,
                VmEvent::BASIC_BLOCK_EXIT | VmEvent::SEQUENCE_EXIT
            );
            assert_eq!((state.sequence_start, state.sequence_end), block_of(state));
        }

        let sequence_only = sequence_only.borrow();
        assert_eq!(
            sequence_only
                .iter()
                .map(|(s, _)| block_of(s))
                .collect::<Vec<_>>(),
            seq,
            "a SEQUENCE_ENTRY callback alone sees every block too"
        );
        for (state, _) in sequence_only.iter() {
            assert_eq!(state.event, VmEvent::SEQUENCE_ENTRY, "only its own event");
        }
    }
}

#[test]
fn basic_block_new_and_entry_on_one_callback_come_together_on_first_execution() {
    let (mut vm, _stack) = guest_vm();
    let log = record_events(
        &mut vm,
        VmEvent::BASIC_BLOCK_NEW | VmEvent::BASIC_BLOCK_ENTRY,
    );
    for (run, n) in [6u64, 6, 9].into_iter().enumerate() {
        log.borrow_mut().clear();
        call_loop(&mut vm, n);
        let seq = loop_block_sequence(n);
        let got: Vec<(Block, VmEvent)> = log
            .borrow()
            .iter()
            .map(|(s, _)| (block_of(s), s.event))
            .collect();
        let mut seen = Vec::new();
        let expected: Vec<(Block, VmEvent)> = seq
            .iter()
            .map(|&b| {
                let first = run == 0 && !seen.contains(&b);
                seen.push(b);
                let event = if first {
                    VmEvent::BASIC_BLOCK_NEW | VmEvent::BASIC_BLOCK_ENTRY
                } else {
                    VmEvent::BASIC_BLOCK_ENTRY
                };
                (b, event)
            })
            .collect();
        assert_eq!(
            got, expected,
            "run {run}, ev_bb_loop({n}): one call per entry"
        );
    }
}

// ---- syscalls -----------------------------------------------------------------------------

#[test]
fn syscall_entry_and_exit_surround_the_syscall_instruction() {
    let (f, at, after, end) = (
        addr!(fn ev_sys_getpid),
        addr!(ev_sys_getpid_syscall),
        addr!(ev_sys_getpid_after),
        addr!(ev_sys_getpid_end),
    );
    let (mut vm, _stack) = guest_vm();
    // (state, rax, rip, mnemonic and address of the analysed instruction)
    let log = shared::<Vec<(VmState, u64, u64, &'static str, u64)>>();
    let l = Rc::clone(&log);
    vm.add_vm_event_cb(
        VmEvent::SYSCALL_ENTRY | VmEvent::SYSCALL_EXIT,
        move |vm, state, gpr, _fpr| {
            let a = vm.inst_analysis(AnalysisType::INSTRUCTION);
            l.borrow_mut()
                .push((*state, gpr.rax, gpr.rip, a.mnemonic, a.address));
            VmAction::Continue
        },
    )
    .expect("a SYSCALL_ENTRY | SYSCALL_EXIT callback");
    let blocks = record_events(&mut vm, VmEvent::BASIC_BLOCK_ENTRY);

    let pid = u64::from(std::process::id());
    for _ in 0..2 {
        log.borrow_mut().clear();
        blocks.borrow_mut().clear();
        // SAFETY: no arguments; returns getpid().
        assert_eq!(unsafe { ev_sys_getpid() }, pid, "native");
        assert_eq!(vm.call(f, &[]).expect("ev_sys_getpid under the Vm"), pid);

        let log = log.borrow();
        assert_eq!(
            log.len(),
            2,
            "one SYSCALL_ENTRY and one SYSCALL_EXIT call: {log:x?}"
        );
        let (entry, entry_rax, entry_rip, entry_mnemonic, entry_addr) = log[0];
        assert_eq!(entry.event, VmEvent::SYSCALL_ENTRY);
        assert_eq!(
            entry_rax, 39,
            "rax holds getpid's number before the syscall"
        );
        assert_eq!(entry_rip, at, "rip is the syscall's address before it");
        assert_eq!((entry_mnemonic, entry_addr), ("SYSCALL", at));
        let (exit, exit_rax, exit_rip, exit_mnemonic, exit_addr) = log[1];
        assert_eq!(exit.event, VmEvent::SYSCALL_EXIT);
        assert_eq!(exit_rax, pid, "rax holds the pid after the syscall");
        assert_eq!(
            exit_rip, after,
            "rip is the next instruction after the syscall"
        );
        assert_eq!((exit_mnemonic, exit_addr), ("SYSCALL", at));
        for state in [entry, exit] {
            assert_eq!(block_of(&state), (f, end), "the syscall's basic block");
        }

        // syscall does not end a basic block.
        let blocks: Vec<Block> = blocks.borrow().iter().map(|(s, _)| block_of(s)).collect();
        assert_eq!(blocks, vec![(f, end)], "ev_sys_getpid is one basic block");
    }
}

#[test]
fn syscall_entry_callback_changes_the_syscall_number() {
    let (mut vm, _stack) = guest_vm();
    vm.add_vm_event_cb(VmEvent::SYSCALL_ENTRY, |_vm, _state, gpr, _fpr| {
        assert_eq!(gpr.rax, 39);
        gpr.rax = libc::SYS_getppid as u64;
        VmAction::Continue
    })
    .expect("a SYSCALL_ENTRY callback");
    // SAFETY: getppid has no preconditions.
    let ppid = unsafe { libc::getppid() } as u64;
    assert_ne!(ppid, u64::from(std::process::id()));
    let got = vm
        .call(addr!(fn ev_sys_getpid), &[])
        .expect("ev_sys_getpid under the Vm");
    assert_eq!(got, ppid, "the guest made the syscall the callback chose");
}

// ---- Stop and BreakToVm from event callbacks --------------------------------------------

#[test]
fn stop_at_the_third_block_entry_ends_the_run_at_that_block_and_can_resume() {
    let (mut vm, _stack) = guest_vm();
    let entries = shared::<Vec<Block>>();
    let (l, count) = (Rc::clone(&entries), Rc::new(Cell::new(0u32)));
    vm.add_vm_event_cb(VmEvent::BASIC_BLOCK_ENTRY, move |_vm, state, _gpr, _fpr| {
        l.borrow_mut().push(block_of(state));
        count.set(count.get() + 1);
        if count.get() == 3 {
            VmAction::Stop
        } else {
            VmAction::Continue
        }
    })
    .expect("a BASIC_BLOCK_ENTRY callback");
    let executed = record_instructions(&mut vm);

    let n = 3u64;
    let seq = loop_block_sequence(n); // H T O N T V T O N D
    simulate_call(vm.gpr_state_mut(), FAKE_RETURN_ADDRESS, &[n]);
    vm.run(addr!(fn ev_bb_loop), FAKE_RETURN_ADDRESS)
        .expect("a run ended by Stop is Ok");
    assert_eq!(*entries.borrow(), seq[..3], "entries up to the stop");
    assert_eq!(
        vm.gpr_state().rip,
        seq[2].0,
        "the run stopped at the third block's start"
    );
    let mut ran = instruction_addresses(seq[0].0, seq[0].1);
    ran.extend(instruction_addresses(seq[1].0, seq[1].1));
    assert_eq!(*executed.borrow(), ran, "only the first two blocks ran");

    // The state is kept: running on from rip finishes the call.
    entries.borrow_mut().clear();
    let rip = vm.gpr_state().rip;
    vm.run(rip, FAKE_RETURN_ADDRESS).expect("resume after Stop");
    assert_eq!(vm.gpr_state().rip, FAKE_RETURN_ADDRESS);
    // SAFETY: plain integer function.
    let native = unsafe { ev_bb_loop(n) };
    assert_eq!(
        vm.gpr_state().rax as i64,
        native,
        "the resumed run's result"
    );
    assert_eq!(
        *entries.borrow(),
        seq[2..],
        "the resumed run enters the stopped block"
    );
}

#[test]
fn stop_at_a_block_exit_ends_the_run_where_the_block_went() {
    let [h, t, o, ..] = loop_blocks();
    let (mut vm, _stack) = guest_vm();
    let count = Rc::new(Cell::new(0u32));
    let c = Rc::clone(&count);
    vm.add_vm_event_cb(VmEvent::BASIC_BLOCK_EXIT, move |_vm, _state, _gpr, _fpr| {
        c.set(c.get() + 1);
        if c.get() == 2 {
            VmAction::Stop
        } else {
            VmAction::Continue
        }
    })
    .expect("a BASIC_BLOCK_EXIT callback");
    let executed = record_instructions(&mut vm);
    simulate_call(vm.gpr_state_mut(), FAKE_RETURN_ADDRESS, &[7]);
    vm.run(h.0, FAKE_RETURN_ADDRESS)
        .expect("Stop ends the run with Ok");
    // H then T (7 is odd: T falls through into O); stopped after T.
    assert_eq!(vm.gpr_state().rip, o.0, "rip is where T went");
    let mut ran = instruction_addresses(h.0, h.1);
    ran.extend(instruction_addresses(t.0, t.1));
    assert_eq!(*executed.borrow(), ran, "H and T ran, nothing of O");
    let rip = vm.gpr_state().rip;
    vm.run(rip, FAKE_RETURN_ADDRESS).expect("resume after Stop");
    // SAFETY: plain integer function.
    let native = unsafe { ev_bb_loop(7) };
    assert_eq!(vm.gpr_state().rax as i64, native);
}

/// Runs `ev_bb_branch(0)` (blocks A B E) with a BASIC_BLOCK_ENTRY callback that moves rip
/// from B to C and returns `action`; returns the result and the entered blocks.
fn redirect_at_block_b(action: VmAction) -> (u64, Vec<Block>) {
    let [a, b, c, _] = branch_blocks();
    let (mut vm, _stack) = guest_vm();
    let entries = shared::<Vec<Block>>();
    let l = Rc::clone(&entries);
    vm.add_vm_event_cb(VmEvent::BASIC_BLOCK_ENTRY, move |_vm, state, gpr, _fpr| {
        l.borrow_mut().push(block_of(state));
        if state.basic_block_start == b.0 {
            gpr.rip = c.0;
            action
        } else {
            VmAction::Continue
        }
    })
    .expect("a BASIC_BLOCK_ENTRY callback");
    let got = vm.call(a.0, &[0]).expect("ev_bb_branch under the Vm");
    let entries = entries.borrow().clone();
    (got, entries)
}

#[test]
fn break_to_vm_from_block_entry_applies_a_changed_rip() {
    let [a, b, c, _] = branch_blocks();
    let (got, entries) = redirect_at_block_b(VmAction::BreakToVm);
    assert_eq!(got, 2, "C ran instead of B");
    assert_eq!(
        entries,
        vec![a, b, c],
        "B entered but left for C before running"
    );
}

#[test]
fn continue_from_block_entry_ignores_a_changed_rip() {
    let [a, b, _, e] = branch_blocks();
    let (got, entries) = redirect_at_block_b(VmAction::Continue);
    // SAFETY: plain integer function.
    assert_eq!(got, unsafe { ev_bb_branch(0) }, "B ran as native");
    assert_eq!(entries, vec![a, b, e]);
}

#[test]
fn break_to_vm_from_block_entry_applies_a_callback_added_there() {
    let [a, b, _, e] = branch_blocks();
    let (mut vm, _stack) = guest_vm();
    let entries = shared::<Vec<Block>>();
    let executed = shared::<Vec<u64>>();
    let (l, x) = (Rc::clone(&entries), Rc::clone(&executed));
    vm.add_vm_event_cb(VmEvent::BASIC_BLOCK_ENTRY, move |vm, state, _gpr, _fpr| {
        l.borrow_mut().push(block_of(state));
        if l.borrow().len() > 1 {
            return VmAction::Continue;
        }
        let x = Rc::clone(&x);
        vm.add_code_cb(
            InstPosition::PreInst,
            move |_vm, gpr, _fpr| {
                x.borrow_mut().push(gpr.rip);
                VmAction::Continue
            },
            PRIORITY_DEFAULT,
        )
        .expect("add a callback from an event callback");
        VmAction::BreakToVm
    })
    .expect("a BASIC_BLOCK_ENTRY callback");
    let got = vm.call(a.0, &[0]).expect("ev_bb_branch under the Vm");
    assert_eq!(got, 1);
    assert_eq!(
        *entries.borrow(),
        vec![a, a, b, e],
        "A is entered again after BreakToVm, then runs"
    );
    let mut all = instruction_addresses(a.0, a.1);
    all.extend(instruction_addresses(b.0, b.1));
    all.extend(instruction_addresses(e.0, e.1));
    assert_eq!(
        *executed.borrow(),
        all,
        "the new callback sees every instruction, from A's first"
    );
}

// ---- registration --------------------------------------------------------------------------

#[test]
fn registering_for_no_event_is_an_error() {
    let (mut vm, _stack) = guest_vm();
    let called = Rc::new(Cell::new(false));
    let c = Rc::clone(&called);
    let result = vm.add_vm_event_cb(VmEvent::empty(), move |_vm, _state, _gpr, _fpr| {
        c.set(true);
        VmAction::Continue
    });
    assert!(result.is_err(), "add_vm_event_cb(empty) gave {result:?}");
    call_loop(&mut vm, 4);
    assert!(!called.get());
}

#[test]
fn a_deleted_event_callback_is_no_longer_called() {
    let (mut vm, _stack) = guest_vm();
    let kept = record_events(&mut vm, VmEvent::BASIC_BLOCK_ENTRY);
    let count = Rc::new(Cell::new(0u32));
    let c = Rc::clone(&count);
    let id = vm
        .add_vm_event_cb(
            VmEvent::BASIC_BLOCK_ENTRY,
            move |_vm, _state, _gpr, _fpr| {
                c.set(c.get() + 1);
                VmAction::Continue
            },
        )
        .expect("a BASIC_BLOCK_ENTRY callback");
    call_loop(&mut vm, 2);
    let entries = loop_block_sequence(2).len() as u32;
    assert_eq!(count.get(), entries);
    vm.delete_instrumentation(id).expect("delete the callback");
    kept.borrow_mut().clear();
    call_loop(&mut vm, 2);
    assert_eq!(count.get(), entries, "not called after deletion");
    assert_eq!(
        kept.borrow().len(),
        entries as usize,
        "the other callback still is"
    );
}

// ---- a basic block longer than one translation ------------------------------------------

unsafe extern "C" {
    fn ev_long_block(buf: *mut u64) -> u64;
    static ev_long_block_end: u8;
}

/// QBDI's block semantics when a basic block's host code must be split: with PreInst and
/// PostInst callbacks on every instruction and memory recording, `ev_long_block` (1802
/// instructions, 1201 memory accesses, one basic block) takes several translations. Block
/// events still come once per execution, with the whole block; sequence events come once
/// per piece, the pieces tiling the block; BASIC_BLOCK_NEW comes once; every instruction
/// runs once, in order; the result is native.
#[test]
fn a_long_basic_block_split_in_sequences_reports_block_events_once() {
    let (start, end) = (addr!(fn ev_long_block), addr!(ev_long_block_end));
    let (mut vm, _stack) = guest_vm();
    vm.record_memory_access(qbdi_core::MemoryAccessType::READ_WRITE)
        .expect("memory recording");
    let instructions = record_instructions(&mut vm);
    let posts = Rc::new(Cell::new(0u64));
    let p = Rc::clone(&posts);
    vm.add_code_cb(
        InstPosition::PostInst,
        move |_vm, _gpr, _fpr| {
            p.set(p.get() + 1);
            VmAction::Continue
        },
        PRIORITY_DEFAULT,
    )
    .unwrap();
    let events = record_events(
        &mut vm,
        VmEvent::BASIC_BLOCK_ENTRY
            | VmEvent::BASIC_BLOCK_EXIT
            | VmEvent::SEQUENCE_ENTRY
            | VmEvent::SEQUENCE_EXIT
            | VmEvent::BASIC_BLOCK_NEW,
    );
    let expected_instructions = instruction_addresses(start, end);
    assert_eq!(expected_instructions.len(), 1802);
    for round in 0..2u64 {
        let mut buf = [5u64];
        let got = vm.call(start, &[(&raw mut buf) as u64]).unwrap();
        assert_eq!((got, buf[0]), (5 + 600 * 7, 5 + 600 * 7), "round {round}");
        assert_eq!(
            *instructions.borrow(),
            expected_instructions,
            "round {round}"
        );
        assert_eq!(posts.get(), 1802, "round {round}");
        let log = events.borrow();
        let with = |e: VmEvent| -> Vec<VmState> {
            log.iter()
                .filter(|(s, _)| s.event.contains(e))
                .map(|(s, _)| *s)
                .collect()
        };
        for e in [VmEvent::BASIC_BLOCK_ENTRY, VmEvent::BASIC_BLOCK_EXIT] {
            let states = with(e);
            assert_eq!(
                states.len(),
                1,
                "round {round}: {e:?} once per execution: {log:?}"
            );
            assert_eq!(block_of(&states[0]), (start, end), "round {round}: {e:?}");
        }
        assert_eq!(
            with(VmEvent::BASIC_BLOCK_NEW).len(),
            usize::from(round == 0),
            "new once, at the first execution"
        );
        let entries = with(VmEvent::SEQUENCE_ENTRY);
        let exits = with(VmEvent::SEQUENCE_EXIT);
        assert!(entries.len() > 1, "the block was split: {entries:?}");
        assert_eq!(entries.len(), exits.len());
        // The sequences tile the block, each reported with the whole block.
        let mut at = start;
        for (n, x) in entries.iter().zip(&exits) {
            assert_eq!(
                (n.sequence_start, n.sequence_end),
                (x.sequence_start, x.sequence_end)
            );
            assert_eq!(n.sequence_start, at);
            assert_eq!(block_of(n), (start, end));
            at = n.sequence_end;
        }
        assert_eq!(at, end);
        drop(log);
        events.borrow_mut().clear();
        instructions.borrow_mut().clear();
        posts.set(0);
    }
}
