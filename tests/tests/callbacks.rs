//! Instruction callbacks and their semantics, on hand-written assembly functions
//! (`tests/guest/cb_funcs.S`) whose executed instructions are known exactly: which
//! instructions callbacks fire on and with which `rip`, what every `VmAction` does,
//! priorities, registers changed by callbacks, instrumentation changed from inside callbacks,
//! callbacks that use the host's FP/vector units, panicking callbacks, and the instruction
//! analysis callbacks see.
//!
//! Expected values come from the native run of the same function, from iced-x86's decoding
//! of the function, or from the instruction sequences written in the assembly file.

use iced_x86::{
    ConditionCode, Decoder, DecoderOptions, FlowControl, Formatter, GasFormatter, Instruction,
    IntelFormatter, Mnemonic, OpKind,
};
use qbdi_core::{
    AnalysisType, CallbackId, ConditionType, FAKE_RETURN_ADDRESS, FprState, GprState, InstAnalysis,
    InstPosition, Options, VirtualStack, Vm, VmAction, VmError, VmEvent, VmRef, simulate_call,
};
use std::cell::{Cell, RefCell};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::rc::Rc;

use InstPosition::{PostInst, PreInst};
use qbdi_tests::cb_funcs::*;

// The labels (`fn cb_x_y()`) are only used for their addresses, never called.

use qbdi_tests::addr;

const FAKE: u64 = FAKE_RETURN_ADDRESS;

/// A Vm instrumenting only `[start, end)` (one guest function), with a guest stack.
fn vm_over(start: u64, end: u64) -> (Vm, VirtualStack) {
    vm_with(Options::NO_OPT, start, end)
}

fn vm_with(options: Options, start: u64, end: u64) -> (Vm, VirtualStack) {
    qbdi_tests::vm_over(options, start, end)
}

/// Decodes the instructions of `[start, end)` of this process's code.
fn decode(start: u64, end: u64) -> Vec<Instruction> {
    assert!(end > start, "empty code range {start:#x}..{end:#x}");
    // SAFETY: the range is a guest function of the test executable (from its symbol to its
    // `_end` label), mapped readable for the life of the process.
    let bytes = unsafe { std::slice::from_raw_parts(start as *const u8, (end - start) as usize) };
    let insts: Vec<Instruction> = Decoder::with_ip(64, bytes, start, DecoderOptions::NONE)
        .into_iter()
        .collect();
    assert!(
        insts.iter().all(|i| !i.is_invalid()),
        "{start:#x}..{end:#x} does not decode"
    );
    insts
}

/// The instruction at `addr`.
fn decode_one(addr: u64) -> Instruction {
    // SAFETY: callers pass the address of an instruction of a guest function; the longest
    // instruction is 15 bytes and the functions are followed by more text (padding and the
    // next functions), all mapped.
    let bytes = unsafe { std::slice::from_raw_parts(addr as *const u8, 15) };
    Decoder::with_ip(64, bytes, addr, DecoderOptions::NONE).decode()
}

fn mnemonics(insts: &[Instruction]) -> Vec<Mnemonic> {
    insts.iter().map(Instruction::mnemonic).collect()
}

type Log<T> = Rc<RefCell<Vec<T>>>;

fn new_log<T>() -> Log<T> {
    Rc::new(RefCell::new(Vec::new()))
}

fn new_counter() -> Rc<Cell<u32>> {
    Rc::new(Cell::new(0))
}

fn bump(c: &Cell<u32>) -> u32 {
    c.set(c.get() + 1);
    c.get()
}

/// An instruction callback that counts its calls and returns `action`.
fn counting(
    c: &Rc<Cell<u32>>,
    action: VmAction,
) -> impl FnMut(&mut VmRef<'_>, &mut GprState, &mut FprState) -> VmAction + 'static {
    let c = c.clone();
    move |_, _, _| {
        bump(&c);
        action
    }
}

/// An instruction callback that logs `gpr.rip`.
fn rip_logger(
    log: &Log<u64>,
) -> impl FnMut(&mut VmRef<'_>, &mut GprState, &mut FprState) -> VmAction + 'static {
    let log = log.clone();
    move |_, gpr, _| {
        log.borrow_mut().push(gpr.rip);
        VmAction::Continue
    }
}

/// An instruction callback that logs `name`.
fn name_logger(
    log: &Log<&'static str>,
    name: &'static str,
) -> impl FnMut(&mut VmRef<'_>, &mut GprState, &mut FprState) -> VmAction + 'static {
    let log = log.clone();
    move |_, _, _| {
        log.borrow_mut().push(name);
        VmAction::Continue
    }
}

/// The addresses of `insts[i]` for `i` in `path`.
fn path_ips(insts: &[Instruction], path: &[usize]) -> Vec<u64> {
    path.iter().map(|&i| insts[i].ip()).collect()
}

/// The executed path of `cb_loop(n)` as indices into its 8 instructions
/// (xor mov test jz | add dec jnz | ret).
fn loop_path(n: u64) -> Vec<usize> {
    let mut path = vec![0, 1, 2, 3];
    for _ in 0..n {
        path.extend([4, 5, 6]);
    }
    path.push(7);
    path
}

/// The conditional branches of `cb_loop(n)`'s path, in order: taken or not.
fn loop_branches(n: u64) -> Vec<bool> {
    let mut taken = vec![n == 0];
    taken.extend((0..n).map(|i| i + 1 < n));
    taken
}

/// The path of `cb_call_ret` as indices into its listing
/// (push mov call add pop ret | lea ret).
const CALL_RET_PATH: [usize; 8] = [0, 1, 2, 6, 7, 3, 4, 5];

/// The path of `cb_mnem(x)` (see the assembly file), `x == -3` takes the `je`.
fn mnem_path(x: u64) -> Vec<usize> {
    if x.wrapping_add(3) == 0 {
        vec![0, 1, 2, 4, 5, 3, 6, 7, 8, 10, 11, 15, 16, 12, 13, 14]
    } else {
        vec![0, 1, 2, 4, 5, 3, 6, 7, 8, 9, 10, 11, 15, 16, 12, 13, 14]
    }
}

/// The decoded listing of `cb_mnem`, checked against the assembly source.
fn mnem_listing() -> Vec<Instruction> {
    let insts = decode(addr!(cb_mnem), addr!(cb_mnem_end));
    use Mnemonic as M;
    assert_eq!(
        mnemonics(&insts),
        [
            M::Mov,
            M::Mov,
            M::Call,
            M::Jmp,
            M::Add,
            M::Ret,
            M::Movzx,
            M::Test,
            M::Je,
            M::Cmovne,
            M::Lea,
            M::Call,
            M::Movsxd,
            M::Add,
            M::Ret,
            M::Mov,
            M::Ret
        ]
    );
    insts
}

/// The `rip` each instruction of `path` leaves behind, from iced's description of the
/// instructions alone: the next instruction, the target of a direct call or jump, the
/// callee of an indirect call (`indirect_target`), the return address of the matching call
/// (`FAKE` for the function's own `ret`), and for a conditional branch its target or the
/// next instruction, as `taken` (one entry per conditional branch of the path) says.
fn expected_post_rips(
    insts: &[Instruction],
    path: &[usize],
    taken: &[bool],
    indirect_target: u64,
) -> Vec<u64> {
    let mut returns = vec![FAKE];
    let mut taken = taken.iter();
    path.iter()
        .map(|&i| {
            let ins = &insts[i];
            match ins.flow_control() {
                FlowControl::Next => ins.next_ip(),
                FlowControl::Call => {
                    returns.push(ins.next_ip());
                    ins.near_branch_target()
                }
                FlowControl::IndirectCall => {
                    returns.push(ins.next_ip());
                    indirect_target
                }
                FlowControl::Return => returns.pop().expect("a ret without its call"),
                FlowControl::UnconditionalBranch => ins.near_branch_target(),
                FlowControl::ConditionalBranch => {
                    if *taken.next().expect("one outcome per conditional branch") {
                        ins.near_branch_target()
                    } else {
                        ins.next_ip()
                    }
                }
                other => panic!("no rule for {ins} ({other:?})"),
            }
        })
        .collect()
}

// ------------------------------------------------------------------------------------------
// Callbacks on every instruction.

/// Calls `f(args)` under a Vm with a PreInst and a PostInst callback on every instruction:
/// (result, PreInst calls, PostInst calls).
fn count_pre_post(f: u64, end: u64, args: &[u64]) -> (u64, u32, u32) {
    let (mut vm, _stack) = vm_over(f, end);
    let (pre, post) = (new_counter(), new_counter());
    vm.add_code_cb(PreInst, counting(&pre, VmAction::Continue), 0)
        .unwrap();
    vm.add_code_cb(PostInst, counting(&post, VmAction::Continue), 0)
        .unwrap();
    let result = vm.call(f, args).expect("vm.call");
    (result, pre.get(), post.get())
}

#[test]
fn pre_and_post_callbacks_fire_once_per_executed_instruction() {
    // SAFETY: the guest functions take and return integers only.
    let (straight, call_ret) = unsafe { (cb_straight(9), cb_call_ret(11)) };
    let (s, e) = (addr!(cb_straight), addr!(cb_straight_end));
    assert_eq!(count_pre_post(s, e, &[9]), (straight, 6, 6));
    let (s, e) = (addr!(cb_call_ret), addr!(cb_call_ret_end));
    assert_eq!(count_pre_post(s, e, &[11]), (call_ret, 8, 8));
    for n in [0u64, 1, 7, 100] {
        // SAFETY: as above.
        let native = unsafe { cb_loop(n) };
        let executed = if n == 0 { 5 } else { 3 * n as u32 + 5 };
        let (s, e) = (addr!(cb_loop), addr!(cb_loop_end));
        assert_eq!(
            count_pre_post(s, e, &[n]),
            (native, executed, executed),
            "cb_loop({n})"
        );
    }
}

/// Runs `f(args)` with a PreInst and a PostInst rip logger on every instruction.
fn trace(f: u64, end: u64, args: &[u64]) -> (u64, Vec<u64>, Vec<u64>) {
    let (mut vm, _stack) = vm_over(f, end);
    let (pre, post) = (new_log(), new_log());
    vm.add_code_cb(PreInst, rip_logger(&pre), 0).unwrap();
    vm.add_code_cb(PostInst, rip_logger(&post), 0).unwrap();
    let result = vm.call(f, args).expect("vm.call");
    let (pre, post) = (pre.borrow().clone(), post.borrow().clone());
    (result, pre, post)
}

#[test]
fn preinst_rips_are_the_executed_instruction_addresses() {
    let (s, e) = (addr!(cb_straight), addr!(cb_straight_end));
    let insts = decode(s, e);
    assert_eq!(insts.len(), 6);
    let (_, pre, _) = trace(s, e, &[1]);
    assert_eq!(pre, path_ips(&insts, &[0, 1, 2, 3, 4, 5]));

    let (s, e) = (addr!(cb_loop), addr!(cb_loop_end));
    let insts = decode(s, e);
    use Mnemonic as M;
    assert_eq!(
        mnemonics(&insts),
        [
            M::Xor,
            M::Mov,
            M::Test,
            M::Je,
            M::Add,
            M::Dec,
            M::Jne,
            M::Ret
        ]
    );
    for n in [0u64, 1, 4] {
        let (_, pre, _) = trace(s, e, &[n]);
        assert_eq!(pre, path_ips(&insts, &loop_path(n)), "cb_loop({n})");
    }

    let (s, e) = (addr!(cb_call_ret), addr!(cb_call_ret_end));
    let insts = decode(s, e);
    assert_eq!(
        mnemonics(&insts),
        [
            M::Push,
            M::Mov,
            M::Call,
            M::Add,
            M::Pop,
            M::Ret,
            M::Lea,
            M::Ret
        ]
    );
    let (_, pre, _) = trace(s, e, &[3]);
    assert_eq!(pre, path_ips(&insts, &CALL_RET_PATH));

    let insts = mnem_listing();
    for x in [5u64, 3u64.wrapping_neg()] {
        let (result, pre, _) = trace(addr!(cb_mnem), addr!(cb_mnem_end), &[x]);
        // SAFETY: integers in and out.
        assert_eq!(result, unsafe { cb_mnem(x) });
        assert_eq!(pre, path_ips(&insts, &mnem_path(x)), "cb_mnem({x:#x})");
    }
}

/// Checks PostInst rips against iced's semantics and against the next PreInst rip.
fn check_post_rips(f: u64, end: u64, args: &[u64], expected: &[u64]) {
    let (_, pre, post) = trace(f, end, args);
    assert_eq!(post, expected, "PostInst rips of {f:#x}({args:x?})");
    // Each PostInst rip is where the next instruction starts, and the last one is the
    // return address of the call.
    assert_eq!(post[..post.len() - 1], pre[1..]);
    assert_eq!(post.last(), Some(&FAKE));
}

#[test]
fn postinst_rip_is_the_next_address_or_the_transfer_target() {
    let (s, e) = (addr!(cb_straight), addr!(cb_straight_end));
    let insts = decode(s, e);
    check_post_rips(
        s,
        e,
        &[2],
        &expected_post_rips(&insts, &[0, 1, 2, 3, 4, 5], &[], 0),
    );

    // Taken and not-taken jcc (the jnz is taken back to the loop head n - 1 times).
    let (s, e) = (addr!(cb_loop), addr!(cb_loop_end));
    let insts = decode(s, e);
    for n in [0u64, 1, 5] {
        let expected = expected_post_rips(&insts, &loop_path(n), &loop_branches(n), 0);
        if n == 5 {
            assert_eq!(
                expected
                    .iter()
                    .filter(|&&r| r == addr!(cb_loop_body))
                    .count(),
                5,
                "entering the loop once and 4 taken jnz"
            );
        }
        check_post_rips(s, e, &[n], &expected);
    }

    // A call leaves rip at the callee, its ret at the instruction after the call.
    let (s, e) = (addr!(cb_call_ret), addr!(cb_call_ret_end));
    let insts = decode(s, e);
    let expected = expected_post_rips(&insts, &CALL_RET_PATH, &[], 0);
    assert_eq!(insts[2].ip(), addr!(cb_call_ret_call));
    assert_eq!(expected[2], addr!(cb_call_ret_callee));
    assert_eq!(expected[4], addr!(cb_call_ret_after));
    check_post_rips(s, e, &[7], &expected);

    // Direct and indirect calls, jmp, je taken and not.
    let insts = mnem_listing();
    let indirect = insts[10].ip_rel_memory_address();
    assert_eq!(indirect, insts[15].ip());
    for (x, je_taken) in [(5u64, false), (3u64.wrapping_neg(), true)] {
        let expected = expected_post_rips(&insts, &mnem_path(x), &[je_taken], indirect);
        check_post_rips(addr!(cb_mnem), addr!(cb_mnem_end), &[x], &expected);
    }
}

// ------------------------------------------------------------------------------------------
// Address, range and mnemonic callbacks.

#[test]
fn code_addr_callback_fires_once_per_execution_of_its_instruction() {
    let (s, e) = (addr!(cb_loop), addr!(cb_loop_end));
    let n = 7u64;
    // SAFETY: integers in and out.
    let native = unsafe { cb_loop(n) };
    let (mut vm, _stack) = vm_over(s, e);
    let sites = [
        (addr!(cb_loop), PreInst, 1),
        (addr!(cb_loop_jz), PreInst, 1),
        (addr!(cb_loop_body), PreInst, n as u32),
        (addr!(cb_loop_jnz), PostInst, n as u32),
        (addr!(cb_loop_ret), PreInst, 1),
        (addr!(cb_loop_ret), PostInst, 1),
        // Inside the `add` (not an instruction start): never.
        (addr!(cb_loop_body) + 1, PreInst, 0),
    ];
    let mut logs = Vec::new();
    for (at, pos, _) in sites {
        let log = new_log();
        vm.add_code_addr_cb(at, pos, rip_logger(&log), 0).unwrap();
        logs.push(log);
    }
    assert_eq!(vm.call(s, &[n]).unwrap(), native);
    let insts = decode(s, e);
    for ((at, pos, times), log) in sites.iter().zip(&logs) {
        let log = log.borrow();
        assert_eq!(
            log.len(),
            *times as usize,
            "callback at {at:#x} {pos:?}: {log:x?}"
        );
        if *pos == PreInst {
            assert!(log.iter().all(|r| r == at), "PreInst rips {log:x?}");
        }
    }
    // PostInst of the jnz: back to the loop head n - 1 times, then past the jnz.
    let jnz = &insts[6];
    let mut expected = vec![addr!(cb_loop_body); n as usize - 1];
    expected.push(jnz.next_ip());
    assert_eq!(*logs[3].borrow(), expected);
    assert_eq!(*logs[5].borrow(), [FAKE]);
}

#[test]
fn code_range_callback_fires_only_inside_its_range() {
    let (s, e) = (addr!(cb_loop), addr!(cb_loop_end));
    let (body, ret) = (addr!(cb_loop_body), addr!(cb_loop_ret));
    let insts = decode(s, e);
    let n = 6u64;
    // SAFETY: integers in and out.
    let native = unsafe { cb_loop(n) };
    let (mut vm, _stack) = vm_over(s, e);
    let (pre, post) = (new_log(), new_counter());
    vm.add_code_range_cb(body, ret, PreInst, rip_logger(&pre), 0)
        .unwrap();
    vm.add_code_range_cb(body, ret, PostInst, counting(&post, VmAction::Continue), 0)
        .unwrap();
    assert_eq!(vm.call(s, &[n]).unwrap(), native);
    let body_path: Vec<usize> = (0..n).flat_map(|_| [4, 5, 6]).collect();
    assert_eq!(*pre.borrow(), path_ips(&insts, &body_path));
    assert_eq!(post.get(), 3 * n as u32);

    for (start, end) in [(ret, body), (body, body)] {
        let err = vm
            .add_code_range_cb(start, end, PreInst, |_, _, _| VmAction::Continue, 0)
            .expect_err("an empty or inverted range is refused");
        assert!(
            matches!(err, VmError::InvalidRange { start: s, end: e } if s == start && e == end),
            "{err:?}"
        );
    }
}

#[test]
fn mnemonic_callbacks_fire_on_matching_instructions_only() {
    let insts = mnem_listing();
    let (s, e) = (addr!(cb_mnem), addr!(cb_mnem_end));
    let x = 5u64;
    // SAFETY: integers in and out.
    let native = unsafe { cb_mnem(x) };
    let (mut vm, _stack) = vm_over(s, e);
    // (pattern, indices of the matching executed instructions, in execution order)
    let cases: [(&str, &[usize]); 7] = [
        ("CALL*", &[2, 11]),
        ("Call", &[2, 11]),
        ("J*", &[3, 8]),
        ("mov", &[0, 1, 15]),
        ("ret", &[5, 16, 14]),
        ("cmov*", &[9]),
        ("MOV?X*", &[6, 12]),
    ];
    let mut logs = Vec::new();
    for (pattern, _) in cases {
        let log = new_log();
        vm.add_mnemonic_cb(pattern, PreInst, rip_logger(&log), 0)
            .unwrap_or_else(|err| panic!("pattern {pattern:?}: {err}"));
        logs.push(log);
    }
    assert_eq!(vm.call(s, &[x]).unwrap(), native);
    for ((pattern, indices), log) in cases.iter().zip(&logs) {
        assert_eq!(
            *log.borrow(),
            path_ips(&insts, indices),
            "pattern {pattern:?}"
        );
    }
}

#[test]
fn mnemonic_pattern_matching_nothing_is_an_error_naming_it() {
    let (mut vm, _stack) = vm_over(addr!(cb_mnem), addr!(cb_mnem_end));
    for pattern in ["CALL64r", "NOTANOPCODE", "MOV64rr"] {
        let err = vm
            .add_mnemonic_cb(pattern, PreInst, |_, _, _| VmAction::Continue, 0)
            .expect_err("a pattern matching no mnemonic");
        assert!(err.to_string().contains(pattern), "{pattern}: {err}");
    }
    // Nothing was registered: a run fires nothing and gives the native result.
    let count = new_counter();
    vm.add_vm_event_cb(VmEvent::BASIC_BLOCK_ENTRY, {
        let count = count.clone();
        move |_, _, _, _| {
            bump(&count);
            VmAction::Continue
        }
    })
    .unwrap();
    // SAFETY: integers in and out.
    assert_eq!(vm.call(addr!(cb_mnem), &[1]).unwrap(), unsafe {
        cb_mnem(1)
    });
    assert!(count.get() > 0);
}

// ------------------------------------------------------------------------------------------
// VmAction.

fn inc_vm() -> (Vm, VirtualStack) {
    vm_over(addr!(cb_inc), addr!(cb_inc_end))
}

fn inc_native(x: u64) -> u64 {
    // SAFETY: integers in and out.
    unsafe { cb_inc(x) }
}

#[test]
fn skip_inst_skips_the_instruction_and_later_preinst_callbacks_not_postinst() {
    let (inc, add) = (addr!(cb_inc_inc), addr!(cb_inc_add));
    let (mut vm, _stack) = inc_vm();
    let (first, skipper, later_pre, post, next_pre) = (
        new_counter(),
        new_counter(),
        new_counter(),
        new_counter(),
        new_counter(),
    );
    let post_seen = new_log();
    vm.add_code_addr_cb(inc, PreInst, counting(&first, VmAction::Continue), 20)
        .unwrap();
    vm.add_code_addr_cb(inc, PreInst, counting(&skipper, VmAction::SkipInst), 10)
        .unwrap();
    vm.add_code_addr_cb(inc, PreInst, counting(&later_pre, VmAction::Continue), 0)
        .unwrap();
    vm.add_code_addr_cb(
        inc,
        PostInst,
        {
            let (post, post_seen) = (post.clone(), post_seen.clone());
            move |_, gpr, _| {
                bump(&post);
                post_seen.borrow_mut().push((gpr.rip, gpr.rax));
                VmAction::Continue
            }
        },
        0,
    )
    .unwrap();
    vm.add_code_addr_cb(add, PreInst, counting(&next_pre, VmAction::Continue), 0)
        .unwrap();
    let x = 1000;
    assert_eq!(vm.call(addr!(cb_inc), &[x]).unwrap(), inc_native(x) - 1);
    assert_eq!(first.get(), 1, "higher-priority PreInst callback");
    assert_eq!(skipper.get(), 1);
    assert_eq!(later_pre.get(), 0, "PreInst callbacks after a SkipInst");
    assert_eq!(post.get(), 1, "PostInst callbacks of a skipped instruction");
    assert_eq!(
        *post_seen.borrow(),
        [(add, x)],
        "after the skipped inc: rip at the next instruction, rax not incremented"
    );
    assert_eq!(next_pre.get(), 1);
}

#[test]
fn skip_patch_from_preinst_skips_the_instruction_and_all_its_callbacks() {
    let (inc, add) = (addr!(cb_inc_inc), addr!(cb_inc_add));
    let (mut vm, _stack) = inc_vm();
    let (skipper, later_pre, post, next_pre, next_post) = (
        new_counter(),
        new_counter(),
        new_counter(),
        new_counter(),
        new_counter(),
    );
    vm.add_code_addr_cb(inc, PreInst, counting(&skipper, VmAction::SkipPatch), 10)
        .unwrap();
    vm.add_code_addr_cb(inc, PreInst, counting(&later_pre, VmAction::Continue), 0)
        .unwrap();
    vm.add_code_addr_cb(inc, PostInst, counting(&post, VmAction::Continue), 0)
        .unwrap();
    vm.add_code_addr_cb(add, PreInst, counting(&next_pre, VmAction::Continue), 0)
        .unwrap();
    vm.add_code_addr_cb(add, PostInst, counting(&next_post, VmAction::Continue), 0)
        .unwrap();
    let x = 77;
    assert_eq!(vm.call(addr!(cb_inc), &[x]).unwrap(), inc_native(x) - 1);
    assert_eq!(skipper.get(), 1);
    assert_eq!(later_pre.get(), 0, "later PreInst callbacks");
    assert_eq!(
        post.get(),
        0,
        "PostInst callbacks after a PreInst SkipPatch"
    );
    assert_eq!(
        (next_pre.get(), next_post.get()),
        (1, 1),
        "next instruction"
    );
}

#[test]
fn skip_patch_from_postinst_skips_the_later_postinst_callbacks_only() {
    let (inc, add) = (addr!(cb_inc_inc), addr!(cb_inc_add));
    let (mut vm, _stack) = inc_vm();
    let (pre, skipper, later_post, next_pre) =
        (new_counter(), new_counter(), new_counter(), new_counter());
    vm.add_code_addr_cb(inc, PreInst, counting(&pre, VmAction::Continue), 0)
        .unwrap();
    vm.add_code_addr_cb(inc, PostInst, counting(&skipper, VmAction::SkipPatch), 10)
        .unwrap();
    vm.add_code_addr_cb(inc, PostInst, counting(&later_post, VmAction::Continue), 0)
        .unwrap();
    vm.add_code_addr_cb(add, PreInst, counting(&next_pre, VmAction::Continue), 0)
        .unwrap();
    let x = 5;
    assert_eq!(
        vm.call(addr!(cb_inc), &[x]).unwrap(),
        inc_native(x),
        "the instruction ran"
    );
    assert_eq!((pre.get(), skipper.get()), (1, 1));
    assert_eq!(later_post.get(), 0, "PostInst callbacks after a SkipPatch");
    assert_eq!(next_pre.get(), 1);
}

/// A PreInst callback on `cb_inc`'s `inc` that moves rip to `to` and returns `action`;
/// returns (result, how many times the callback ran).
fn move_rip_at_inc(to: u64, action: VmAction, x: u64) -> (u64, u32) {
    let (mut vm, _stack) = inc_vm();
    let calls = new_counter();
    vm.add_code_addr_cb(
        addr!(cb_inc_inc),
        PreInst,
        {
            let calls = calls.clone();
            move |_, gpr, _| {
                bump(&calls);
                gpr.rip = to;
                action
            }
        },
        0,
    )
    .unwrap();
    let result = vm.call(addr!(cb_inc), &[x]).unwrap();
    (result, calls.get())
}

#[test]
fn break_to_vm_with_a_changed_rip_continues_there() {
    let x = 300;
    let next = decode_one(addr!(cb_inc_inc)).next_ip();
    assert_eq!(next, addr!(cb_inc_add));
    assert_eq!(
        move_rip_at_inc(next, VmAction::BreakToVm, x),
        (inc_native(x) - 1, 1),
        "inc skipped"
    );
    // Past the `add` as well, straight to the ret.
    assert_eq!(
        move_rip_at_inc(addr!(cb_inc_ret), VmAction::BreakToVm, x),
        (x, 1)
    );
}

#[test]
fn a_rip_changed_with_continue_is_ignored() {
    let x = 300;
    assert_eq!(
        move_rip_at_inc(addr!(cb_inc_add), VmAction::Continue, x),
        (inc_native(x), 1)
    );
    assert_eq!(
        move_rip_at_inc(addr!(cb_inc_ret), VmAction::Continue, x),
        (inc_native(x), 1)
    );
}

#[test]
fn break_to_vm_with_rip_unchanged_runs_the_preinst_callbacks_again() {
    let (mut vm, _stack) = inc_vm();
    let calls = new_counter();
    vm.add_code_addr_cb(
        addr!(cb_inc_inc),
        PreInst,
        {
            let calls = calls.clone();
            move |_, _, _| {
                if bump(&calls) < 3 {
                    VmAction::BreakToVm
                } else {
                    VmAction::Continue
                }
            }
        },
        0,
    )
    .unwrap();
    let post = new_counter();
    vm.add_code_addr_cb(
        addr!(cb_inc_inc),
        PostInst,
        counting(&post, VmAction::Continue),
        0,
    )
    .unwrap();
    let x = 8;
    assert_eq!(vm.call(addr!(cb_inc), &[x]).unwrap(), inc_native(x));
    assert_eq!(calls.get(), 3);
    assert_eq!(post.get(), 1, "the inc executed once");
}

/// Sets up `cb_inc(x)` as a call to run with `vm.run` (stack and arguments) and returns
/// the stack pointer at the function's entry.
fn prepare_inc_run(vm: &mut Vm, x: u64) -> u64 {
    simulate_call(vm.gpr_state_mut(), FAKE, &[x]);
    vm.gpr_state().rsp
}

#[test]
fn stop_from_preinst_ends_the_run_before_the_instruction_and_run_resumes() {
    let (inc, f) = (addr!(cb_inc_inc), addr!(cb_inc));
    let (mut vm, _stack) = inc_vm();
    let calls = new_counter();
    vm.add_code_addr_cb(
        inc,
        PreInst,
        {
            let calls = calls.clone();
            move |_, _, _| {
                if bump(&calls) == 1 {
                    VmAction::Stop
                } else {
                    VmAction::Continue
                }
            }
        },
        0,
    )
    .unwrap();
    let x = 41;
    let entry_rsp = prepare_inc_run(&mut vm, x);
    vm.run(f, FAKE).expect("a Stop ends the run with Ok");
    let gpr = *vm.gpr_state();
    assert_eq!(gpr.rip, inc, "stopped at the instruction");
    assert_eq!(gpr.rax, x, "the mov ran, the inc not");
    assert_eq!(gpr.rsp, entry_rsp);
    vm.run(gpr.rip, FAKE).expect("resumed run");
    let gpr = *vm.gpr_state();
    assert_eq!(gpr.rax, inc_native(x));
    assert_eq!(gpr.rip, FAKE);
    assert_eq!(gpr.rsp, entry_rsp + 8, "the ret popped the return address");
    assert_eq!(calls.get(), 2);
}

#[test]
fn stop_from_postinst_ends_the_run_after_the_instruction_and_run_resumes() {
    let (inc, add, f) = (addr!(cb_inc_inc), addr!(cb_inc_add), addr!(cb_inc));
    let (mut vm, _stack) = inc_vm();
    let calls = new_counter();
    vm.add_code_addr_cb(
        inc,
        PostInst,
        {
            let calls = calls.clone();
            move |_, _, _| {
                if bump(&calls) == 1 {
                    VmAction::Stop
                } else {
                    VmAction::Continue
                }
            }
        },
        0,
    )
    .unwrap();
    let x = 41;
    prepare_inc_run(&mut vm, x);
    vm.run(f, FAKE).expect("a Stop ends the run with Ok");
    assert_eq!(vm.gpr_state().rip, add);
    assert_eq!(vm.gpr_state().rax, x + 1);
    vm.run(add, FAKE).expect("resumed run");
    assert_eq!(vm.gpr_state().rax, inc_native(x));
    assert_eq!(vm.gpr_state().rip, FAKE);
    assert_eq!(calls.get(), 1);
}

#[test]
fn call_ended_by_stop_returns_rax_as_it_is() {
    let (mut vm, _stack) = inc_vm();
    vm.add_code_addr_cb(addr!(cb_inc_inc), PostInst, |_, _, _| VmAction::Stop, 0)
        .unwrap();
    assert_eq!(vm.call(addr!(cb_inc), &[9]).unwrap(), 10);
    assert_eq!(vm.gpr_state().rip, addr!(cb_inc_add));
}

#[test]
fn largest_action_wins_break_to_vm_over_continue() {
    // One callback moves rip past the inc and returns Continue, another returns
    // BreakToVm: BreakToVm wins, so the new rip takes effect. Both orders.
    for (mover_priority, breaker_priority) in [(10, 0), (0, 10)] {
        let (mut vm, _stack) = inc_vm();
        let (mover, breaker) = (new_counter(), new_counter());
        let next = addr!(cb_inc_add);
        vm.add_code_addr_cb(
            addr!(cb_inc_inc),
            PreInst,
            {
                let mover = mover.clone();
                move |_, gpr, _| {
                    bump(&mover);
                    gpr.rip = next;
                    VmAction::Continue
                }
            },
            mover_priority,
        )
        .unwrap();
        vm.add_code_addr_cb(
            addr!(cb_inc_inc),
            PreInst,
            counting(&breaker, VmAction::BreakToVm),
            breaker_priority,
        )
        .unwrap();
        let x = 50;
        assert_eq!(
            vm.call(addr!(cb_inc), &[x]).unwrap(),
            inc_native(x) - 1,
            "mover priority {mover_priority}"
        );
        assert_eq!((mover.get(), breaker.get()), (1, 1));
    }
}

#[test]
fn largest_action_wins_skip_inst_over_continue() {
    let (mut vm, _stack) = inc_vm();
    let (first, second) = (new_counter(), new_counter());
    vm.add_code_addr_cb(
        addr!(cb_inc_inc),
        PreInst,
        counting(&first, VmAction::Continue),
        5,
    )
    .unwrap();
    vm.add_code_addr_cb(
        addr!(cb_inc_inc),
        PreInst,
        counting(&second, VmAction::SkipInst),
        0,
    )
    .unwrap();
    let x = 50;
    assert_eq!(vm.call(addr!(cb_inc), &[x]).unwrap(), inc_native(x) - 1);
    assert_eq!((first.get(), second.get()), (1, 1));
}

/// A callback that returns `action` the first time, Continue afterwards.
fn once(
    c: &Rc<Cell<u32>>,
    action: VmAction,
) -> impl FnMut(&mut VmRef<'_>, &mut GprState, &mut FprState) -> VmAction + 'static {
    let c = c.clone();
    move |_, _, _| {
        if bump(&c) == 1 {
            action
        } else {
            VmAction::Continue
        }
    }
}

#[test]
fn largest_action_wins_stop_over_break_to_vm_and_continue() {
    let (mut vm, _stack) = inc_vm();
    let inc = addr!(cb_inc_inc);
    let (a, b, c) = (new_counter(), new_counter(), new_counter());
    vm.add_code_addr_cb(inc, PreInst, counting(&a, VmAction::Continue), 10)
        .unwrap();
    vm.add_code_addr_cb(inc, PreInst, once(&b, VmAction::Stop), 5)
        .unwrap();
    vm.add_code_addr_cb(inc, PreInst, once(&c, VmAction::BreakToVm), 0)
        .unwrap();
    let x = 60;
    assert_eq!(
        vm.call(addr!(cb_inc), &[x]).unwrap(),
        x,
        "stopped before the inc"
    );
    assert_eq!(vm.gpr_state().rip, inc);
    assert_eq!((a.get(), b.get(), c.get()), (1, 1, 1));

    // In PostInst: Continue then Stop, Stop wins.
    let (mut vm, _stack) = inc_vm();
    let (a, b) = (new_counter(), new_counter());
    vm.add_code_addr_cb(inc, PostInst, counting(&a, VmAction::Continue), 10)
        .unwrap();
    vm.add_code_addr_cb(inc, PostInst, counting(&b, VmAction::Stop), 0)
        .unwrap();
    assert_eq!(vm.call(addr!(cb_inc), &[x]).unwrap(), x + 1);
    assert_eq!(vm.gpr_state().rip, addr!(cb_inc_add));
    assert_eq!((a.get(), b.get()), (1, 1));
}

// ------------------------------------------------------------------------------------------
// Priorities.

#[test]
fn callbacks_run_by_priority_then_registration_order() {
    let inc = addr!(cb_inc_inc);
    let (mut vm, _stack) = inc_vm();
    let order = new_log();
    // Scrambled registration.
    vm.add_code_addr_cb(inc, PreInst, name_logger(&order, "0"), 0)
        .unwrap();
    vm.add_code_addr_cb(inc, PreInst, name_logger(&order, "-5"), -5)
        .unwrap();
    vm.add_code_addr_cb(inc, PreInst, name_logger(&order, "10"), 10)
        .unwrap();
    // Same priority: registration order.
    for name in ["a", "b", "c", "d"] {
        vm.add_code_addr_cb(inc, PostInst, name_logger(&order, name), 3)
            .unwrap();
    }
    let expected = ["10", "0", "-5", "a", "b", "c", "d"];
    for run in 0..2 {
        order.borrow_mut().clear();
        assert_eq!(vm.call(addr!(cb_inc), &[1]).unwrap(), inc_native(1));
        assert_eq!(*order.borrow(), expected, "run {run}");
    }
}

#[test]
fn priorities_order_callbacks_of_different_kinds_on_one_instruction() {
    let (inc, add) = (addr!(cb_inc_inc), addr!(cb_inc_add));
    let (mut vm, _stack) = inc_vm();
    let order = new_log();
    vm.add_mnemonic_cb("INC", PreInst, name_logger(&order, "mnemonic -5"), -5)
        .unwrap();
    vm.add_code_range_cb(inc, add, PreInst, name_logger(&order, "range 0"), 0)
        .unwrap();
    vm.add_code_addr_cb(inc, PreInst, name_logger(&order, "addr 10"), 10)
        .unwrap();
    vm.add_code_range_cb(inc, add, PreInst, name_logger(&order, "range 10"), 10)
        .unwrap();
    vm.add_mnemonic_cb("inc", PreInst, name_logger(&order, "mnemonic 0"), 0)
        .unwrap();
    assert_eq!(vm.call(addr!(cb_inc), &[1]).unwrap(), inc_native(1));
    assert_eq!(
        *order.borrow(),
        [
            "addr 10",
            "range 10",
            "range 0",
            "mnemonic 0",
            "mnemonic -5"
        ]
    );
}

// ------------------------------------------------------------------------------------------
// Registers changed by callbacks.

#[test]
fn gpr_changed_in_a_callback_is_what_the_guest_sees() {
    // rdi at the first instruction of (x) -> 2x.
    let (mut vm, _stack) = vm_over(addr!(cb_double), addr!(cb_double_end));
    vm.add_code_addr_cb(
        addr!(cb_double),
        PreInst,
        |_, gpr, _| {
            gpr.rdi = 21;
            VmAction::Continue
        },
        0,
    )
    .unwrap();
    // SAFETY: integers in and out.
    assert_eq!(unsafe { cb_double(5) }, 10);
    assert_eq!(vm.call(addr!(cb_double), &[5]).unwrap(), 42);

    // rax after the lea, from a PostInst callback.
    let (mut vm, _stack) = vm_over(addr!(cb_double), addr!(cb_double_end));
    vm.add_code_addr_cb(
        addr!(cb_double),
        PostInst,
        |_, gpr, _| {
            assert_eq!(gpr.rax, 10);
            gpr.rax = 1234;
            VmAction::Continue
        },
        0,
    )
    .unwrap();
    assert_eq!(vm.call(addr!(cb_double), &[5]).unwrap(), 1234);

    // ZF before the jz of cb_loop: the loop is skipped.
    let (s, e) = (addr!(cb_loop), addr!(cb_loop_end));
    let (mut vm, _stack) = vm_over(s, e);
    vm.add_code_addr_cb(
        addr!(cb_loop_jz),
        PreInst,
        |_, gpr, _| {
            assert_eq!(gpr.eflags & 0x40, 0, "rcx = 5: test cleared ZF");
            gpr.eflags |= 0x40;
            VmAction::Continue
        },
        0,
    )
    .unwrap();
    // SAFETY: integers in and out.
    assert_eq!(unsafe { cb_loop(5) }, 15);
    assert_eq!(vm.call(s, &[5]).unwrap(), 0);

    // rcx at the first pass through the loop body: two iterations, 2 + 1.
    let (mut vm, _stack) = vm_over(s, e);
    let first = new_counter();
    vm.add_code_addr_cb(
        addr!(cb_loop_body),
        PreInst,
        {
            let first = first.clone();
            move |_, gpr, _| {
                if bump(&first) == 1 {
                    assert_eq!(gpr.rcx, 100);
                    gpr.rcx = 2;
                }
                VmAction::Continue
            }
        },
        0,
    )
    .unwrap();
    assert_eq!(vm.call(s, &[100]).unwrap(), 3);
    assert_eq!(first.get(), 2);
}

#[test]
fn xmm_changed_in_a_callback_is_what_the_guest_sees() {
    let (f, probe) = (addr!(cb_xmm_io), addr!(cb_xmm_io_probe));
    let (mut vm, _stack) = vm_over(f, addr!(cb_xmm_io_end));
    let seen = new_log();
    let value = 0x1122_3344_5566_7788u64;
    vm.add_code_addr_cb(
        probe,
        PreInst,
        {
            let seen = seen.clone();
            move |_, _, fpr| {
                let xmm1 = fpr.xmm(1);
                seen.borrow_mut().push(u128::from_le_bytes(*xmm1));
                assert_eq!(*fpr.xmm(0), [0; 16], "the guest zeroed xmm0");
                fpr.xmm_mut(0)[..8].copy_from_slice(&value.to_le_bytes());
                VmAction::Continue
            }
        },
        0,
    )
    .unwrap();
    let x = 0xfeed_f00d_u64;
    // SAFETY: integers in and out (and xmm0/xmm1, caller-saved).
    assert_eq!(unsafe { cb_xmm_io(x) }, 0);
    assert_eq!(vm.call(f, &[x]).unwrap(), value);
    assert_eq!(
        *seen.borrow(),
        [u128::from(x)],
        "the callback sees the guest's xmm1 (movq zeroes the upper half)"
    );
}

#[test]
fn ymm_upper_half_changed_in_a_callback_is_what_the_guest_sees() {
    if !std::arch::is_x86_feature_detected!("avx2") {
        eprintln!("no AVX2: skipped");
        return;
    }
    let (f, probe) = (addr!(cb_ymm_io), addr!(cb_ymm_io_probe));
    let (mut vm, _stack) = vm_over(f, addr!(cb_ymm_io_end));
    let seen = new_log();
    let value = 0x0bad_cafe_dead_beefu64;
    vm.add_code_addr_cb(
        probe,
        PreInst,
        {
            let seen = seen.clone();
            move |_, _, fpr| {
                seen.borrow_mut().push((*fpr.xmm(2), *fpr.ymm_hi(2)));
                fpr.ymm_hi_mut(0)[..8].copy_from_slice(&value.to_le_bytes());
                VmAction::Continue
            }
        },
        0,
    )
    .unwrap();
    let x = 0x0123_4567_89ab_cdefu64;
    // SAFETY: integers in and out (the function checks nothing, the test checked AVX2).
    assert_eq!(unsafe { cb_ymm_io(x) }, 0);
    assert_eq!(vm.call(f, &[x]).unwrap(), value);
    let mut both = [0u8; 16];
    both[..8].copy_from_slice(&x.to_le_bytes());
    both[8..].copy_from_slice(&x.to_le_bytes());
    assert_eq!(
        *seen.borrow(),
        [(both, both)],
        "ymm2 holds x four times at the probe"
    );
}

// ------------------------------------------------------------------------------------------
// Instrumentation changed from inside callbacks.

#[test]
fn callback_added_from_a_callback_fires_after_break_to_vm() {
    let (mut vm, _stack) = inc_vm();
    let added = new_log();
    let adder = new_counter();
    vm.add_code_addr_cb(
        addr!(cb_inc_inc),
        PreInst,
        {
            let (added, adder) = (added.clone(), adder.clone());
            move |vm, _, _| {
                if bump(&adder) == 1 {
                    vm.add_code_cb(PreInst, rip_logger(&added), 0)
                        .expect("add_code_cb from a callback");
                    VmAction::BreakToVm
                } else {
                    VmAction::Continue
                }
            }
        },
        0,
    )
    .unwrap();
    let x = 3;
    assert_eq!(vm.call(addr!(cb_inc), &[x]).unwrap(), inc_native(x));
    assert_eq!(
        adder.get(),
        2,
        "BreakToVm with rip unchanged reruns the PreInst callbacks"
    );
    let (f, inc, add, ret) = (
        addr!(cb_inc),
        addr!(cb_inc_inc),
        addr!(cb_inc_add),
        addr!(cb_inc_ret),
    );
    assert_eq!(*added.borrow(), [inc, add, ret]);
    // It stays registered.
    added.borrow_mut().clear();
    assert_eq!(vm.call(f, &[x]).unwrap(), inc_native(x));
    assert_eq!(*added.borrow(), [f, inc, add, ret]);
    assert_eq!(adder.get(), 3);
}

#[test]
fn callback_deleting_itself_fires_once() {
    let (s, e) = (addr!(cb_loop), addr!(cb_loop_end));
    let (mut vm, _stack) = vm_over(s, e);
    let own_id: Rc<Cell<CallbackId>> = Rc::new(Cell::new(CallbackId::MAX));
    let calls = new_counter();
    let id = vm
        .add_code_cb(
            PreInst,
            {
                let (own_id, calls) = (own_id.clone(), calls.clone());
                move |vm, _, _| {
                    bump(&calls);
                    vm.delete_instrumentation(own_id.get())
                        .expect("deleting itself");
                    VmAction::Continue
                }
            },
            0,
        )
        .unwrap();
    own_id.set(id);
    let other = new_counter();
    vm.add_code_cb(PreInst, counting(&other, VmAction::Continue), 0)
        .unwrap();
    // SAFETY: integers in and out.
    let native = unsafe { cb_loop(10) };
    assert_eq!(vm.call(s, &[10]).unwrap(), native);
    assert_eq!(calls.get(), 1);
    assert_eq!(other.get(), 35, "the other callback is untouched");
    assert_eq!(vm.call(s, &[10]).unwrap(), native);
    assert_eq!(calls.get(), 1);
    assert!(vm.delete_instrumentation(id).is_err(), "already deleted");
}

#[test]
fn deleting_an_unknown_id_is_an_error() {
    let (mut vm, _stack) = inc_vm();
    assert!(vm.delete_instrumentation(12345).is_err());
    let calls = new_counter();
    let id = vm
        .add_code_cb(PreInst, counting(&calls, VmAction::Continue), 0)
        .unwrap();
    assert!(vm.delete_instrumentation(id.wrapping_add(1000)).is_err());
    vm.delete_instrumentation(id).expect("a registered id");
    assert!(vm.delete_instrumentation(id).is_err(), "deleted twice");
    assert_eq!(vm.call(addr!(cb_inc), &[1]).unwrap(), inc_native(1));
    assert_eq!(calls.get(), 0);
}

#[test]
fn delete_all_instrumentations_removes_every_callback() {
    let (inc, add) = (addr!(cb_inc_inc), addr!(cb_inc_add));
    let (mut vm, _stack) = inc_vm();
    let calls = new_counter();
    let mut ids = vec![
        vm.add_code_cb(PreInst, counting(&calls, VmAction::SkipInst), 0)
            .unwrap(),
        vm.add_code_addr_cb(inc, PostInst, counting(&calls, VmAction::Stop), 0)
            .unwrap(),
        vm.add_code_range_cb(inc, add, PreInst, counting(&calls, VmAction::Continue), 0)
            .unwrap(),
        vm.add_mnemonic_cb("ADD", PreInst, counting(&calls, VmAction::Continue), 0)
            .unwrap(),
    ];
    ids.push(
        vm.add_vm_event_cb(VmEvent::BASIC_BLOCK_ENTRY | VmEvent::BASIC_BLOCK_NEW, {
            let calls = calls.clone();
            move |_, _, _, _| {
                bump(&calls);
                VmAction::Continue
            }
        })
        .unwrap(),
    );
    vm.delete_all_instrumentations();
    assert_eq!(vm.call(addr!(cb_inc), &[4]).unwrap(), inc_native(4));
    assert_eq!(calls.get(), 0);
    for id in ids {
        assert!(
            vm.delete_instrumentation(id).is_err(),
            "id {id} after delete_all"
        );
    }
    // New callbacks work.
    let after = new_counter();
    vm.add_code_cb(PostInst, counting(&after, VmAction::Continue), 0)
        .unwrap();
    assert_eq!(vm.call(addr!(cb_inc), &[4]).unwrap(), inc_native(4));
    assert_eq!(after.get(), 4);
}

#[test]
fn delete_all_instrumentations_from_a_callback() {
    let (mut vm, _stack) = inc_vm();
    let (deleter, all) = (new_counter(), new_counter());
    vm.add_code_addr_cb(
        addr!(cb_inc_inc),
        PreInst,
        {
            let deleter = deleter.clone();
            move |vm, _, _| {
                bump(&deleter);
                vm.delete_all_instrumentations();
                VmAction::BreakToVm
            }
        },
        10,
    )
    .unwrap();
    vm.add_code_cb(PreInst, counting(&all, VmAction::Continue), 0)
        .unwrap();
    let x = 12;
    assert_eq!(vm.call(addr!(cb_inc), &[x]).unwrap(), inc_native(x));
    assert_eq!(deleter.get(), 1);
    assert_eq!(
        all.get(),
        1,
        "fired on the mov only: deleted before its turn on the inc"
    );
}

/// How a test listens to BASIC_BLOCK_NEW: with a callback for that event alone, or with one
/// also registered for BASIC_BLOCK_ENTRY (called once, with both events, for a new block).
#[derive(Clone, Copy, Debug)]
enum NewListener {
    Alone,
    WithEntry,
}

/// Registers a listener for new blocks; the log gets the start of each new block.
fn log_new_blocks(vm: &mut Vm, listener: NewListener) -> Log<u64> {
    let log = new_log();
    let l = log.clone();
    let events = match listener {
        NewListener::Alone => VmEvent::BASIC_BLOCK_NEW,
        NewListener::WithEntry => VmEvent::BASIC_BLOCK_NEW | VmEvent::BASIC_BLOCK_ENTRY,
    };
    vm.add_vm_event_cb(events, move |_, state, _, _| {
        if state.event.contains(VmEvent::BASIC_BLOCK_NEW) {
            l.borrow_mut().push(state.basic_block_start);
        }
        VmAction::Continue
    })
    .unwrap();
    log
}

/// Calls `cb_loop(10)` three times with a PreInst callback on its `dec` that, on its 5th
/// call of the first run, clears the whole cache and returns `action`. Returns the starts of
/// the new blocks of each call, and how many times the callback ran.
fn clear_during_loop(action: VmAction, listener: NewListener) -> (Vec<Vec<u64>>, u32) {
    let (s, e) = (addr!(cb_loop), addr!(cb_loop_end));
    let dec = decode(s, e)[5].ip();
    let n = 10u64;
    // SAFETY: integers in and out.
    let native = unsafe { cb_loop(n) };
    let (mut vm, _stack) = vm_over(s, e);
    let news = log_new_blocks(&mut vm, listener);
    let seen = new_counter();
    vm.add_code_addr_cb(
        dec,
        PreInst,
        {
            let seen = seen.clone();
            move |vm, _, _| {
                if bump(&seen) == 5 {
                    vm.clear_all_cache();
                    action
                } else {
                    VmAction::Continue
                }
            }
        },
        0,
    )
    .unwrap();
    let mut per_call = Vec::new();
    for _ in 0..3 {
        assert_eq!(vm.call(s, &[n]).unwrap(), native);
        per_call.push(news.take());
    }
    (per_call, seen.get())
}

#[test]
fn new_block_events_fire_once_per_translation() {
    let (s, e) = (addr!(cb_loop), addr!(cb_loop_end));
    let (body, ret) = (addr!(cb_loop_body), addr!(cb_loop_ret));
    for listener in [NewListener::Alone, NewListener::WithEntry] {
        let (mut vm, _stack) = vm_over(s, e);
        let news = log_new_blocks(&mut vm, listener);
        // SAFETY: integers in and out.
        let native = unsafe { cb_loop(10) };
        assert_eq!(vm.call(s, &[10]).unwrap(), native);
        assert_eq!(news.take(), [s, body, ret], "{listener:?}: three blocks");
        assert_eq!(vm.call(s, &[10]).unwrap(), native);
        assert_eq!(news.take(), [], "{listener:?}: all cached");
        vm.clear_all_cache();
        assert_eq!(vm.call(s, &[10]).unwrap(), native);
        assert_eq!(
            news.take(),
            [s, body, ret],
            "{listener:?}: after clear_all_cache"
        );
    }
}

#[test]
fn clear_all_cache_from_a_callback_retranslates_the_following_blocks() {
    let (s, body, ret) = (addr!(cb_loop), addr!(cb_loop_body), addr!(cb_loop_ret));
    for listener in [NewListener::Alone, NewListener::WithEntry] {
        let (news, seen) = clear_during_loop(VmAction::Continue, listener);
        assert_eq!(seen, 30);
        // Cleared during the 5th pass through the loop block: once that pass has left the
        // block, the 6th pass runs a new translation of it; then the ret block is new.
        assert_eq!(news[0], [s, body, body, ret], "{listener:?}: first call");
        // The entry block was cleared and has not run since.
        assert_eq!(news[1], [s], "{listener:?}: second call");
        assert_eq!(news[2], [], "{listener:?}: third call");
    }
}

#[test]
fn clear_all_cache_and_break_to_vm_retranslate_from_the_current_instruction() {
    let (s, body, ret) = (addr!(cb_loop), addr!(cb_loop_body), addr!(cb_loop_ret));
    let dec = decode(s, addr!(cb_loop_end))[5].ip();
    for listener in [NewListener::Alone, NewListener::WithEntry] {
        let (news, seen) = clear_during_loop(VmAction::BreakToVm, listener);
        // BreakToVm with rip unchanged: the dec's PreInst callback runs again, from a new
        // block that starts at the dec.
        assert_eq!(seen, 31);
        assert_eq!(
            news[0],
            [s, body, dec, body, ret],
            "{listener:?}: first call"
        );
        assert_eq!(news[1], [s], "{listener:?}: second call");
        assert_eq!(news[2], [], "{listener:?}: third call");
    }
}

// ------------------------------------------------------------------------------------------
// Callbacks using the host's FP and vector units.

/// A callback that works the host's FP/vector units: a 3000-byte `copy_from_slice` (memcpy,
/// below glibc's `rep movsb` threshold, so glibc copies through vector registers, on
/// AVX-512 machines ymm16-31) and f64 sin/sqrt.
fn fp_heavy(
    sink: &Rc<Cell<f64>>,
) -> impl FnMut(&mut VmRef<'_>, &mut GprState, &mut FprState) -> VmAction + 'static {
    let sink = sink.clone();
    let src: Vec<u8> = (0..3000u32).map(|i| (i * 7 + 3) as u8).collect();
    let mut dst = vec![0u8; 3000];
    move |_, _, _| {
        dst.copy_from_slice(std::hint::black_box(&src));
        let mut acc = sink.get();
        for (i, b) in dst.iter().step_by(128).enumerate() {
            let v = f64::from(*b) + i as f64 * 0.25;
            acc += v.sin() * v.sqrt();
        }
        sink.set(std::hint::black_box(acc));
        VmAction::Continue
    }
}

/// Deterministic pseudo-random bytes (xorshift64).
fn pseudo_random_bytes(len: usize, mut seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        out.extend_from_slice(&seed.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The bytes of vector register `n` (`width` 32 or 64 bytes) in an FprState.
fn vector_register(fpr: &FprState, n: usize, width: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(width);
    if n < 16 {
        v.extend_from_slice(fpr.xmm(n));
        v.extend_from_slice(fpr.ymm_hi(n));
        if width == 64 {
            v.extend_from_slice(&fpr.zmm_hi256[n]);
        }
    } else {
        v.extend_from_slice(&fpr.hi16_zmm[n - 16]);
    }
    v
}

/// Runs `f(in, out)` natively and under a Vm whose every instruction has FP-heavy PreInst
/// and PostInst callbacks; the outputs must be equal, and the FprState a callback sees at
/// `done` must hold the registers the function then stores.
fn check_vector_state_kept(
    options: Options,
    f: unsafe extern "C" fn(*const u8, *mut u8),
    end: u64,
    done: u64,
    avx512: bool,
) {
    let (regs, width) = if avx512 { (32, 64) } else { (16, 32) };
    let len = regs * width + if avx512 { 64 } else { 0 };
    let input = pseudo_random_bytes(len, 0x9e37_79b9_7f4a_7c15);
    let mut native = vec![0u8; len];
    // SAFETY: `f` reads `len` bytes from `input` and writes `len` bytes to `native`; the
    // caller checked the CPU has the instructions it uses.
    unsafe { f(input.as_ptr(), native.as_mut_ptr()) };

    let (mut vm, _stack) = vm_with(options, addr!(f), end);
    let sink = Rc::new(Cell::new(0.0));
    vm.add_code_cb(PreInst, fp_heavy(&sink), 0).unwrap();
    vm.add_code_cb(PostInst, fp_heavy(&sink), 0).unwrap();
    let snapshot: Rc<RefCell<Option<Box<FprState>>>> = Rc::new(RefCell::new(None));
    vm.add_code_addr_cb(
        done,
        PreInst,
        {
            let snapshot = snapshot.clone();
            move |_, _, fpr| {
                *snapshot.borrow_mut() = Some(Box::new(*fpr));
                VmAction::Continue
            }
        },
        -1,
    )
    .unwrap();
    let mut out = vec![0u8; len];
    vm.call(addr!(f), &[input.as_ptr() as u64, out.as_mut_ptr() as u64])
        .expect("vm.call");
    assert!(sink.get().is_finite() && sink.get() != 0.0);
    for r in 0..regs {
        assert_eq!(
            out[r * width..(r + 1) * width],
            native[r * width..(r + 1) * width],
            "vector register {r} ({options:?})"
        );
    }
    assert_eq!(
        out[regs * width..],
        native[regs * width..],
        "k0..k7 ({options:?})"
    );

    let fpr = snapshot
        .borrow_mut()
        .take()
        .expect("the callback at `done` ran");
    for r in 0..regs {
        assert_eq!(
            vector_register(&fpr, r, width),
            native[r * width..(r + 1) * width],
            "FprState of register {r} in a callback ({options:?})"
        );
    }
    if avx512 {
        for k in 0..8 {
            let at = regs * width + k * 8;
            let native_k = u64::from_le_bytes(native[at..at + 8].try_into().unwrap());
            assert_eq!(
                fpr.k[k], native_k,
                "FprState k{k} in a callback ({options:?})"
            );
        }
    }
}

#[test]
fn fp_heavy_callbacks_keep_guest_ymm_registers() {
    if !std::arch::is_x86_feature_detected!("avx2") {
        eprintln!("no AVX2: skipped");
        return;
    }
    for options in [Options::NO_OPT, Options::OPT_DISABLE_OPTIONAL_FPR] {
        check_vector_state_kept(
            options,
            cb_vec_avx2,
            addr!(cb_vec_avx2_end),
            addr!(cb_vec_avx2_done),
            false,
        );
    }
}

#[test]
fn fp_heavy_callbacks_keep_guest_zmm_and_mask_registers() {
    if !(std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512dq"))
    {
        eprintln!("no AVX-512 F/BW/DQ: skipped");
        return;
    }
    for options in [Options::NO_OPT, Options::OPT_DISABLE_OPTIONAL_FPR] {
        check_vector_state_kept(
            options,
            cb_vec_avx512,
            addr!(cb_vec_avx512_end),
            addr!(cb_vec_avx512_done),
            true,
        );
    }
}

/// zmm16-31 and k1-k7 a callback writes, which the guest has not used (a fresh Vm: their
/// initial state, zero), read as zero by the guest afterwards, on every FP path; and the
/// guest's final state shows them zero too. (Host code dirties them: glibc's AVX-512
/// `memcpy`; the fast path zeroes them again instead of an `xrstor`.)
#[test]
fn avx512_registers_a_callback_dirties_read_as_zero_when_the_guest_never_set_them() {
    if !(std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw"))
    {
        eprintln!("no AVX-512 F/BW: skipped");
        return;
    }
    for options in [Options::NO_OPT, Options::OPT_DISABLE_OPTIONAL_FPR] {
        let (mut vm, _stack) = vm_with(options, addr!(cb_read_hi16), addr!(cb_read_hi16_end));
        vm.add_code_cb(
            PreInst,
            |_: &mut VmRef<'_>, gpr: &mut GprState, _: &mut FprState| -> VmAction {
                qbdi_tests::clobber::clobber_avx512(gpr.rip | 0x8080_0000_0000_0001);
                VmAction::Continue
            },
            0,
        )
        .unwrap();
        let mut out = vec![0xeeu8; 1080];
        vm.call(addr!(cb_read_hi16), &[out.as_mut_ptr() as u64])
            .expect("vm.call");
        assert!(
            out.iter().all(|&b| b == 0),
            "{options:?}: the guest read {out:x?}"
        );
        let fpr = vm.fpr_state();
        assert!(
            fpr.hi16_zmm.iter().flatten().all(|&b| b == 0),
            "{options:?}: FprState zmm16-31"
        );
        assert_eq!(fpr.k[1..], [0; 7], "{options:?}: FprState k1-k7");
    }
}

// ------------------------------------------------------------------------------------------
// Panics.

#[test]
fn panicking_callback_propagates_and_leaves_the_vm_usable() {
    let (mut vm, _stack) = inc_vm();
    let id = vm
        .add_code_addr_cb(
            addr!(cb_inc_add),
            PreInst,
            |_: &mut VmRef<'_>, _: &mut GprState, _: &mut FprState| -> VmAction {
                panic!("cb_boom at {:#x}", 0x66)
            },
            0,
        )
        .unwrap();
    let result = catch_unwind(AssertUnwindSafe(|| vm.call(addr!(cb_inc), &[5])));
    let payload = result.expect_err("the callback's panic comes out of vm.call");
    let message = payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()));
    assert_eq!(message.as_deref(), Some("cb_boom at 0x66"));
    assert_eq!(
        vm.gpr_state().rax,
        6,
        "the guest state at the panic is kept: mov and inc ran"
    );
    vm.delete_instrumentation(id).unwrap();
    let counter = new_counter();
    vm.add_code_cb(PreInst, counting(&counter, VmAction::Continue), 0)
        .unwrap();
    assert_eq!(vm.call(addr!(cb_inc), &[5]).unwrap(), inc_native(5));
    assert_eq!(counter.get(), 4);
}

// ------------------------------------------------------------------------------------------
// Instruction analysis.

fn intel(ins: &Instruction) -> String {
    let mut s = String::new();
    IntelFormatter::new().format(ins, &mut s);
    s
}

fn att(ins: &Instruction) -> String {
    let mut s = String::new();
    GasFormatter::new().format(ins, &mut s);
    s
}

/// Runs `cb_mnem(x)` with a PreInst callback logging the analysis of every instruction.
fn analyses(vm: &mut Vm, x: u64) -> Vec<InstAnalysis> {
    let log = new_log();
    let id = vm
        .add_code_cb(
            PreInst,
            {
                let log = log.clone();
                move |vm, gpr, _| {
                    let a = vm
                        .inst_analysis(AnalysisType::INSTRUCTION | AnalysisType::DISASSEMBLY)
                        .clone();
                    assert_eq!(a.address, gpr.rip);
                    log.borrow_mut().push(a);
                    VmAction::Continue
                }
            },
            0,
        )
        .unwrap();
    // SAFETY: integers in and out.
    assert_eq!(vm.call(addr!(cb_mnem), &[x]).unwrap(), unsafe {
        cb_mnem(x)
    });
    vm.delete_instrumentation(id).unwrap();
    log.take()
}

/// Checks an analysis against iced's decoding of the instruction it describes.
fn check_analysis(a: &InstAnalysis, index: usize, ins: &Instruction) {
    let what = format!("instruction {index} `{ins}`: {a:?}");
    let flow = ins.flow_control();
    assert_eq!(a.address, ins.ip(), "{what}");
    assert_eq!(a.inst_size as usize, ins.len(), "{what}");
    assert_eq!(
        a.mnemonic,
        format!("{:?}", ins.mnemonic()).to_uppercase(),
        "{what}"
    );
    assert_eq!(
        a.is_call,
        matches!(flow, FlowControl::Call | FlowControl::IndirectCall),
        "{what}"
    );
    assert_eq!(a.is_return, flow == FlowControl::Return, "{what}");
    assert_eq!(
        a.is_branch,
        matches!(
            flow,
            FlowControl::UnconditionalBranch
                | FlowControl::ConditionalBranch
                | FlowControl::IndirectBranch
        ),
        "{what}"
    );
    assert_eq!(a.affect_control_flow, flow != FlowControl::Next, "{what}");
    assert_eq!(a.is_compare, ins.mnemonic() == Mnemonic::Test, "{what}");
    assert_eq!(
        a.is_predicable,
        ins.condition_code() != ConditionCode::None,
        "{what}"
    );
    assert_eq!(
        a.is_move_imm,
        ins.mnemonic() == Mnemonic::Mov && ins.op1_kind() == OpKind::Immediate32,
        "{what}"
    );
    let condition = match ins.condition_code() {
        ConditionCode::None => ConditionType::None,
        ConditionCode::e => ConditionType::Equals,
        ConditionCode::ne => ConditionType::NotEquals,
        other => panic!("{what}: unexpected condition {other:?}"),
    };
    assert_eq!(a.condition, condition, "{what}");
    // Calls write the return address, rets read it; nothing else of cb_mnem touches memory.
    assert_eq!(a.may_store, a.is_call, "{what}");
    assert_eq!(a.may_load, a.is_return, "{what}");
}

#[test]
fn inst_analysis_in_a_callback_describes_the_current_instruction() {
    let insts = mnem_listing();
    let (mut vm, _stack) = vm_over(addr!(cb_mnem), addr!(cb_mnem_end));
    let x = 5;
    let path = mnem_path(x);

    let intel_analyses = analyses(&mut vm, x);
    assert_eq!(intel_analyses.len(), path.len());
    for (a, &i) in intel_analyses.iter().zip(&path) {
        check_analysis(a, i, &insts[i]);
        assert_eq!(a.disassembly, intel(&insts[i]), "instruction {i}");
        assert!(
            !a.disassembly.contains('%'),
            "Intel syntax: {}",
            a.disassembly
        );
    }

    vm.set_options(Options::OPT_ATT_SYNTAX);
    let att_analyses = analyses(&mut vm, x);
    assert_eq!(att_analyses.len(), path.len());
    for (a, &i) in att_analyses.iter().zip(&path) {
        check_analysis(a, i, &insts[i]);
        assert_eq!(a.disassembly, att(&insts[i]), "instruction {i}");
    }
    // mov rax, rdi
    assert!(
        att_analyses[0].disassembly.contains("%rdi,%rax"),
        "{:?}",
        att_analyses[0]
    );

    vm.set_options(Options::NO_OPT);
    let again = analyses(&mut vm, x);
    assert_eq!(again, intel_analyses, "back to Intel syntax");
}

#[test]
fn cached_inst_analysis_outside_a_run() {
    let insts = mnem_listing();
    let (mut vm, _stack) = vm_over(addr!(cb_mnem), addr!(cb_mnem_end));
    vm.add_code_cb(PreInst, |_, _, _| VmAction::Continue, 0)
        .unwrap();
    // SAFETY: integers in and out.
    assert_eq!(vm.call(addr!(cb_mnem), &[2]).unwrap(), unsafe {
        cb_mnem(2)
    });
    for i in [2usize, 8, 11, 14] {
        let ins = &insts[i];
        let a = vm
            .cached_inst_analysis(
                ins.ip(),
                AnalysisType::INSTRUCTION | AnalysisType::DISASSEMBLY,
            )
            .unwrap_or_else(|| panic!("no analysis of instruction {i} `{ins}`"))
            .clone();
        check_analysis(&a, i, ins);
        assert_eq!(a.disassembly, intel(ins));
    }
    assert!(
        vm.cached_inst_analysis(addr!(cb_straight), AnalysisType::INSTRUCTION)
            .is_none(),
        "not instrumented"
    );
}
