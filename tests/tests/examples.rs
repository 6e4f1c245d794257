//! QBDI's examples as tests: an instruction tracer of libm's `sin`, the basic-block
//! example (BASIC_BLOCK_ENTRY), block coverage (BASIC_BLOCK_NEW), edge coverage
//! (BASIC_BLOCK_EXIT) and the libc calls of a guest function (EXEC_TRANSFER_CALL/RETURN).
//! Each runs the guest under the Vm and compares with the native run and with what the
//! code is known to do (the block boundaries of `tests/guest/ev_blocks.S` are labelled).

use iced_x86::{Decoder, DecoderOptions, FlowControl, Formatter, IntelFormatter};
use qbdi_core::{
    AnalysisType, FAKE_RETURN_ADDRESS, InstPosition, PRIORITY_DEFAULT, Permission, Range, Vm,
    VmAction, VmEvent, VmState, allocate_virtual_stack, current_process_maps, simulate_call,
};
use std::collections::BTreeSet;
use std::ffi::{CStr, c_char, c_void};
use std::rc::Rc;

use qbdi_tests::ev_blocks::{
    Block, branch_labels, ev_bb_branch, ev_bb_loop, guest_vm, loop_block_sequence, loop_blocks,
    shared,
};

unsafe extern "C" {

    fn ev_libc_roundtrip(s: *const c_char, n: usize) -> i64;
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

// ---- instruction tracer of libm's sin ---------------------------------------------------

/// `sin` from libm (through dlopen/dlsym), and libm's executable mappings.
fn libm_sin() -> (u64, Vec<Range>) {
    // SAFETY: dlopen and dlsym get NUL-terminated names; libm stays loaded (the handle is
    // never closed, and the test executable links it anyway).
    let sin = unsafe {
        let handle = libc::dlopen(c"libm.so.6".as_ptr(), libc::RTLD_NOW);
        assert!(!handle.is_null(), "dlopen(libm.so.6)");
        libc::dlsym(handle, c"sin".as_ptr()) as u64
    };
    assert_ne!(sin, 0, "dlsym(libm, sin)");
    let maps = current_process_maps(false);
    let text: Vec<Range> = maps
        .iter()
        .filter(|m| m.name == "libm.so.6" && m.permission.contains(Permission::EXEC))
        .map(|m| m.range)
        .collect();
    assert!(
        text.iter().any(|r| r.start <= sin && sin < r.end),
        "sin ({sin:#x}) is in libm's executable mappings {text:x?}"
    );
    (sin, text)
}

/// iced's Intel disassembly of the instruction at `addr`, which lies in `text`.
fn iced_intel(addr: u64, text: &[Range]) -> String {
    let map = text
        .iter()
        .find(|r| r.start <= addr && addr < r.end)
        .expect("the address is in libm's text");
    let len = (map.end - addr).min(15) as usize;
    // SAFETY: [addr, addr + len) lies in a mapped, readable and executable mapping of libm,
    // which stays loaded.
    let bytes = unsafe { std::slice::from_raw_parts(addr as *const u8, len) };
    let inst = Decoder::with_ip(64, bytes, addr, DecoderOptions::NONE).decode();
    assert!(!inst.is_invalid(), "libm code at {addr:#x} decodes");
    let mut text = String::new();
    IntelFormatter::new().format(&inst, &mut text);
    text
}

#[test]
fn instruction_trace_of_libm_sin_has_libm_addresses_iced_disassembly_and_native_results() {
    let (sin, text) = libm_sin();
    // SAFETY: `sin` is libm's `double sin(double)`.
    let native_sin: extern "C" fn(f64) -> f64 = unsafe { std::mem::transmute(sin as usize) };
    let mut vm = Vm::new();
    let _stack = allocate_virtual_stack(vm.gpr_state_mut(), 1 << 20).expect("a guest stack");
    vm.add_instrumented_module_from_addr(sin)
        .expect("instrument libm");
    let trace = shared::<Vec<(u64, u64, String)>>();
    let t = Rc::clone(&trace);
    vm.add_code_cb(
        InstPosition::PreInst,
        move |vm, gpr, _fpr| {
            let a = vm.inst_analysis(AnalysisType::INSTRUCTION | AnalysisType::DISASSEMBLY);
            t.borrow_mut()
                .push((a.address, gpr.rip, a.disassembly.clone()));
            VmAction::Continue
        },
        PRIORITY_DEFAULT,
    )
    .expect("a PreInst callback on every instruction");

    let inputs = [
        0.0,
        -0.0,
        0.5,
        1.0,
        -2.5,
        std::f64::consts::PI,
        1e6,
        1e22,
        1e300,
        5e-324,
        f64::INFINITY,
        f64::NAN,
    ];
    for x in inputs {
        // SAFETY: errno is this thread's.
        unsafe { *libc::__errno_location() = 0 };
        let native = native_sin(x);
        // SAFETY: as above.
        let native_errno = unsafe { *libc::__errno_location() };

        trace.borrow_mut().clear();
        let mut xmm0 = [0u8; 16];
        xmm0[..8].copy_from_slice(&x.to_le_bytes());
        vm.fpr_state_mut().xmm0 = xmm0;
        simulate_call(vm.gpr_state_mut(), FAKE_RETURN_ADDRESS, &[]);
        vm.set_errno(0);
        vm.run(sin, FAKE_RETURN_ADDRESS)
            .unwrap_or_else(|e| panic!("sin({x:e}) under the Vm: {e}"));
        assert_eq!(
            vm.gpr_state().rip,
            FAKE_RETURN_ADDRESS,
            "sin({x:e}) returned"
        );
        let got = f64::from_le_bytes(vm.fpr_state().xmm0[..8].try_into().unwrap());
        assert_eq!(
            got.to_bits(),
            native.to_bits(),
            "sin({x:e}): the Vm gives {got:e}, native {native:e}"
        );
        assert_eq!(vm.errno(), native_errno, "errno after sin({x:e})");

        let trace = trace.borrow();
        assert!(!trace.is_empty(), "sin({x:e}): the trace is empty");
        assert_eq!(trace[0].0, sin, "sin({x:e}): the trace starts at sin");
        for (address, rip, disassembly) in trace.iter() {
            assert_eq!(rip, address, "PreInst rip is the instruction's address");
            assert!(
                text.iter().any(|r| r.start <= *address && *address < r.end),
                "sin({x:e}): traced {address:#x} is outside libm's text {text:x?}"
            );
            assert_eq!(
                *disassembly,
                iced_intel(*address, &text),
                "sin({x:e}): disassembly at {address:#x}"
            );
        }
    }
}

// ---- the basic-block example: BASIC_BLOCK_ENTRY -----------------------------------------

#[test]
fn basic_block_entry_reports_the_blocks_of_each_branch_outcome() {
    let (a, b, c, e, end) = branch_labels();
    let (mut vm, _stack) = guest_vm();
    let entries = shared::<Vec<(Block, u64)>>();
    let log = Rc::clone(&entries);
    vm.add_vm_event_cb(VmEvent::BASIC_BLOCK_ENTRY, move |_vm, state, gpr, _fpr| {
        assert_eq!(state.event, VmEvent::BASIC_BLOCK_ENTRY);
        log.borrow_mut()
            .push(((state.basic_block_start, state.basic_block_end), gpr.rip));
        VmAction::Continue
    })
    .expect("a BASIC_BLOCK_ENTRY callback");

    // Twice each: the second run goes through the warm (linked) cache.
    for x in [0u64, 7, 0, 7] {
        entries.borrow_mut().clear();
        // SAFETY: plain integer function.
        let native = unsafe { ev_bb_branch(x) };
        let got = vm.call(a, &[x]).expect("ev_bb_branch under the Vm");
        assert_eq!(got, native, "ev_bb_branch({x})");
        let expected: Vec<Block> = if x == 0 {
            vec![(a, b), (b, c), (e, end)]
        } else {
            vec![(a, b), (c, end)]
        };
        let got: Vec<(Block, u64)> = entries.borrow().clone();
        let blocks: Vec<Block> = got.iter().map(|&(block, _)| block).collect();
        assert_eq!(
            blocks, expected,
            "ev_bb_branch({x}): entered blocks (A={a:#x} B={b:#x} C={c:#x} E={e:#x} end={end:#x})"
        );
        for ((start, _), rip) in got {
            assert_eq!(rip, start, "rip at BASIC_BLOCK_ENTRY is the block's start");
        }
    }
}

// ---- block coverage: BASIC_BLOCK_NEW ------------------------------------------------------

/// Native `ev_bb_loop`, from its description.
fn loop_model(n: u64) -> i64 {
    (1..=n)
        .map(|i| if i % 2 == 1 { i as i64 } else { -1 })
        .sum()
}

#[test]
fn basic_block_new_reports_each_entered_block_once_until_the_cache_is_cleared() {
    let (mut vm, _stack) = guest_vm();
    let new = shared::<Vec<Block>>();
    let entered = shared::<Vec<Block>>();
    let n_log = Rc::clone(&new);
    vm.add_vm_event_cb(VmEvent::BASIC_BLOCK_NEW, move |_vm, state, _gpr, _fpr| {
        assert_eq!(state.event, VmEvent::BASIC_BLOCK_NEW);
        n_log
            .borrow_mut()
            .push((state.basic_block_start, state.basic_block_end));
        VmAction::Continue
    })
    .expect("a BASIC_BLOCK_NEW callback");
    let e_log = Rc::clone(&entered);
    vm.add_vm_event_cb(VmEvent::BASIC_BLOCK_ENTRY, move |_vm, state, _gpr, _fpr| {
        e_log
            .borrow_mut()
            .push((state.basic_block_start, state.basic_block_end));
        VmAction::Continue
    })
    .expect("a BASIC_BLOCK_ENTRY callback");

    let all: BTreeSet<Block> = loop_blocks().into_iter().collect();
    let run = |vm: &mut Vm, n: u64| -> (Vec<Block>, Vec<Block>) {
        new.borrow_mut().clear();
        entered.borrow_mut().clear();
        // SAFETY: plain integer function.
        let native = unsafe { ev_bb_loop(n) };
        assert_eq!(native, loop_model(n), "native ev_bb_loop({n})");
        let got = vm
            .call(addr!(fn ev_bb_loop), &[n])
            .expect("ev_bb_loop under the Vm");
        assert_eq!(got as i64, native, "ev_bb_loop({n}) under the Vm");
        let entered = entered.borrow().clone();
        assert_eq!(
            entered,
            loop_block_sequence(n),
            "ev_bb_loop({n}): entered blocks"
        );
        (new.borrow().clone(), entered)
    };

    // Cold cache: every block is new once, although T, O, V and N run several times.
    let (first, entered) = run(&mut vm, 10);
    let first_set: BTreeSet<Block> = first.iter().copied().collect();
    assert_eq!(
        first.len(),
        first_set.len(),
        "a block reported NEW twice: {first:x?}"
    );
    assert_eq!(first_set, entered.into_iter().collect::<BTreeSet<_>>());
    assert_eq!(first_set, all, "the six blocks of ev_bb_loop");

    // Warm cache: nothing new.
    for n in [10, 3, 0] {
        let (again, _) = run(&mut vm, n);
        assert!(
            again.is_empty(),
            "warm cache, n={n}: NEW reported {again:x?}"
        );
    }

    // After clear_all_cache: new again, once each.
    vm.clear_all_cache();
    let (after, entered) = run(&mut vm, 4);
    let after_set: BTreeSet<Block> = after.iter().copied().collect();
    assert_eq!(
        after.len(),
        after_set.len(),
        "a block reported NEW twice: {after:x?}"
    );
    assert_eq!(after_set, entered.into_iter().collect::<BTreeSet<_>>());
    // n = 4 runs 4 3 2 1: both paths of the loop, all six blocks.
    assert_eq!(after_set, all);
}

#[test]
fn basic_block_new_covers_each_branch_outcome_when_first_taken() {
    let (a, b, c, e, end) = branch_labels();
    let (mut vm, _stack) = guest_vm();
    let new = shared::<Vec<Block>>();
    let log = Rc::clone(&new);
    vm.add_vm_event_cb(VmEvent::BASIC_BLOCK_NEW, move |_vm, state, _gpr, _fpr| {
        log.borrow_mut()
            .push((state.basic_block_start, state.basic_block_end));
        VmAction::Continue
    })
    .expect("a BASIC_BLOCK_NEW callback");
    let run = |vm: &mut Vm, x: u64| {
        new.borrow_mut().clear();
        // SAFETY: plain integer function.
        let native = unsafe { ev_bb_branch(x) };
        assert_eq!(vm.call(a, &[x]).expect("ev_bb_branch"), native);
        new.borrow().iter().copied().collect::<BTreeSet<Block>>()
    };
    assert_eq!(run(&mut vm, 0), BTreeSet::from([(a, b), (b, c), (e, end)]));
    assert_eq!(run(&mut vm, 1), BTreeSet::from([(c, end)]), "only C is new");
    assert_eq!(run(&mut vm, 0), BTreeSet::new());
    assert_eq!(run(&mut vm, 2), BTreeSet::new());
}

// ---- edge coverage: BASIC_BLOCK_EXIT ------------------------------------------------------

#[test]
fn basic_block_exit_gives_the_edges_of_a_loop_with_a_branch() {
    let [h, t, o, v, nb, d] = loop_blocks();
    let (mut vm, _stack) = guest_vm();
    let exits = shared::<Vec<(Block, u64)>>();
    let log = Rc::clone(&exits);
    vm.add_vm_event_cb(VmEvent::BASIC_BLOCK_EXIT, move |_vm, state, gpr, _fpr| {
        assert_eq!(state.event, VmEvent::BASIC_BLOCK_EXIT);
        log.borrow_mut()
            .push(((state.basic_block_start, state.basic_block_end), gpr.rip));
        VmAction::Continue
    })
    .expect("a BASIC_BLOCK_EXIT callback");

    for n in [0u64, 1, 2, 5, 8] {
        exits.borrow_mut().clear();
        // SAFETY: plain integer function.
        let native = unsafe { ev_bb_loop(n) };
        let got = vm
            .call(addr!(fn ev_bb_loop), &[n])
            .expect("ev_bb_loop under the Vm");
        assert_eq!(got as i64, native, "ev_bb_loop({n})");

        // Every executed block exits to the start of the next one, the last to the caller.
        let seq = loop_block_sequence(n);
        let expected: Vec<(Block, u64)> = seq
            .iter()
            .enumerate()
            .map(|(i, &block)| {
                let next = seq.get(i + 1).map_or(FAKE_RETURN_ADDRESS, |b| b.0);
                (block, next)
            })
            .collect();
        let got = exits.borrow().clone();
        assert_eq!(
            got, expected,
            "ev_bb_loop({n}): block exits and where they go"
        );

        // The edges (basic_block_end, next rip), as QBDI's edge coverage example collects
        // them, against the edges read off the assembly.
        let edges: BTreeSet<(u64, u64)> = got.iter().map(|&((_, end), rip)| (end, rip)).collect();
        let mut want = BTreeSet::from([(d.1, FAKE_RETURN_ADDRESS)]);
        if n == 0 {
            want.insert((h.1, d.0)); // jz done
        } else {
            want.insert((h.1, t.0)); // fall into the loop
            if n >= 1 {
                want.insert((t.1, o.0)); // odd: fall through
                want.insert((o.1, nb.0)); // jmp next
            }
            if n >= 2 {
                want.insert((t.1, v.0)); // even: jz
                want.insert((v.1, t.0)); // jnz top (V and N share their end)
            }
            // The last iteration (i = 1, odd) leaves through N's fall-through.
            want.insert((nb.1, d.0));
        }
        assert_eq!(edges, want, "ev_bb_loop({n}): edges");
    }
}

// ---- libc calls: EXEC_TRANSFER_CALL / EXEC_TRANSFER_RETURN --------------------------------

/// The address `dlsym` gives for `name` (the implementation an ifunc selected).
fn libc_symbol(name: &CStr) -> u64 {
    // SAFETY: NUL-terminated name; RTLD_DEFAULT searches the loaded objects.
    let p = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
    assert!(!p.is_null(), "dlsym({name:?})");
    p as u64
}

/// The object file and symbol `dladdr` gives for `addr` (the symbol is empty when no
/// exported symbol covers it).
fn dladdr_names(addr: u64) -> (String, String) {
    // SAFETY: an all-zero Dl_info is valid; dladdr only writes it.
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    // SAFETY: dladdr reads no memory at addr, only the loader's tables.
    let found = unsafe { libc::dladdr(addr as *const c_void, &mut info) };
    assert_ne!(found, 0, "dladdr({addr:#x}) finds an object");
    let string = |p: *const c_char| {
        if p.is_null() {
            String::new()
        } else {
            // SAFETY: dladdr's strings are NUL-terminated names in the loader's tables.
            unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
        }
    };
    (string(info.dli_fname), string(info.dli_sname))
}

/// The instruction that ends just before `ret` in `function`, decoding forward from the
/// function's start (gcc leaves no data in its functions).
fn instruction_before(function: u64, ret: u64) -> iced_x86::Instruction {
    assert!(
        ret > function && ret - function < 4096,
        "{ret:#x} is inside the function"
    );
    // SAFETY: [function, ret) is code of the test executable's mapped text.
    let bytes =
        unsafe { std::slice::from_raw_parts(function as *const u8, (ret - function) as usize) };
    let mut decoder = Decoder::with_ip(64, bytes, function, DecoderOptions::NONE);
    let mut last = None;
    while decoder.can_decode() {
        last = Some(decoder.decode());
    }
    let last = last.expect("at least one instruction");
    assert_eq!(last.next_ip(), ret, "{ret:#x} is an instruction boundary");
    last
}

#[test]
fn exec_transfer_events_name_the_libc_functions_a_guest_calls() {
    let f = addr!(fn ev_libc_roundtrip);
    let (mut vm, _stack) = guest_vm();
    // Per call: (VmState, rip, the return address at [rsp]); per return: (VmState, rip).
    let calls = shared::<Vec<(VmState, u64, u64)>>();
    let returns = shared::<Vec<(VmState, u64)>>();
    let log = Rc::clone(&calls);
    vm.add_vm_event_cb(VmEvent::EXEC_TRANSFER_CALL, move |_vm, state, gpr, _fpr| {
        // SAFETY: the guest just called: [rsp] on its stack holds the return address.
        let ret = unsafe { *(gpr.rsp as *const u64) };
        log.borrow_mut().push((*state, gpr.rip, ret));
        VmAction::Continue
    })
    .expect("an EXEC_TRANSFER_CALL callback");
    let log = Rc::clone(&returns);
    vm.add_vm_event_cb(
        VmEvent::EXEC_TRANSFER_RETURN,
        move |_vm, state, gpr, _fpr| {
            log.borrow_mut().push((*state, gpr.rip));
            VmAction::Continue
        },
    )
    .expect("an EXEC_TRANSFER_RETURN callback");

    let expected_targets = [
        libc_symbol(c"malloc"),
        libc_symbol(c"memcpy"),
        libc_symbol(c"strlen"),
        libc_symbol(c"free"),
    ];
    for text in [
        "",
        "x",
        "Hello, instrumented world! 0123456789",
        &"abcdefgh".repeat(100),
    ] {
        calls.borrow_mut().clear();
        returns.borrow_mut().clear();
        // SAFETY: text is a live buffer of text.len() bytes.
        let native = unsafe { ev_libc_roundtrip(text.as_ptr().cast(), text.len()) };
        let got = vm
            .call(f, &[text.as_ptr() as u64, text.len() as u64])
            .expect("ev_libc_roundtrip under the Vm");
        assert_eq!(got as i64, native, "ev_libc_roundtrip({text:?})");

        let calls = calls.borrow().clone();
        let targets: Vec<u64> = calls.iter().map(|&(_, rip, _)| rip).collect();
        assert_eq!(
            targets, expected_targets,
            "{text:?}: EXEC_TRANSFER_CALL rip, in order (malloc memcpy strlen free)"
        );
        // dladdr names exported symbols only: malloc and free, but not the implementations
        // the memcpy and strlen ifuncs selected (__memmove_avx_unaligned_erms,
        // __strlen_evex...: local symbols of a stripped libc), which the comparison with
        // dlsym above identifies. All four are in libc.
        let names: Vec<(String, String)> = targets.iter().map(|&t| dladdr_names(t)).collect();
        for (file, _) in &names {
            assert!(file.ends_with("/libc.so.6"), "{names:?}");
        }
        let symbol = |i: usize| names[i].1.as_str();
        assert!(
            ["malloc", "__libc_malloc"].contains(&symbol(0)),
            "{names:?}"
        );
        assert!(
            symbol(1).is_empty() || symbol(1).contains("memcpy") || symbol(1).contains("memmove"),
            "{names:?}"
        );
        assert!(
            symbol(2).is_empty() || symbol(2).contains("strlen"),
            "{names:?}"
        );
        assert!(["free", "__libc_free"].contains(&symbol(3)), "{names:?}");

        let returns = returns.borrow().clone();
        assert_eq!(returns.len(), calls.len(), "{text:?}: one return per call");
        for (&(_, _, ret), &(_, back)) in calls.iter().zip(&returns) {
            assert_eq!(
                back, ret,
                "EXEC_TRANSFER_RETURN: rip is the guest's return address"
            );
            let call = instruction_before(f, ret);
            assert_eq!(
                call.flow_control(),
                FlowControl::Call,
                "the return address {ret:#x} follows a call in ev_libc_roundtrip: {call}"
            );
        }

        // The API: for exec transfers, the four VmState addresses are the transfer target,
        // which is also gpr.rip.
        let states = calls
            .iter()
            .map(|&(state, rip, _)| (state, rip, VmEvent::EXEC_TRANSFER_CALL))
            .chain(
                returns
                    .iter()
                    .map(|&(state, rip)| (state, rip, VmEvent::EXEC_TRANSFER_RETURN)),
            );
        for (state, rip, event) in states {
            assert_eq!(state.event, event);
            let addresses = [
                state.basic_block_start,
                state.basic_block_end,
                state.sequence_start,
                state.sequence_end,
            ];
            assert_eq!(
                addresses, [rip; 4],
                "{event:?}: the VmState addresses are rip ({rip:#x})"
            );
        }
    }
}
