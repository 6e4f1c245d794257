//! Every control-flow form the translator has a rule for, each in its own small assembly
//! function (`tests/guest/cf_branches.S`, `tests/guest/cf_special.S`), run natively and
//! under the `Vm` with the same inputs: the results must be identical. Forms the engine
//! must refuse (far transfers, transactional memory, undecodable bytes) must give the right
//! `VmError` with the guest address of the instruction, and self-modifying code must be
//! picked up after `clear_cache`.

use iced_x86::{Decoder, DecoderOptions, FlowControl, Instruction, Mnemonic};
use qbdi_core::{
    DEFAULT_EFLAGS, FAKE_RETURN_ADDRESS, VirtualStack, Vm, VmError, allocate_virtual_stack,
};

/// A Vm that instruments the module holding `addr` (the test executable), with a stack.
fn vm_for(addr: u64) -> (Vm, VirtualStack) {
    let mut vm = Vm::new();
    let stack = allocate_virtual_stack(vm.gpr_state_mut(), 1 << 20).expect("guest stack");
    vm.add_instrumented_module_from_addr(addr)
        .expect("the test executable is an executable mapping");
    (vm, stack)
}

/// Decodes the instructions of `[start, end)` of this process's code.
fn decode(start: u64, end: u64) -> Vec<Instruction> {
    assert!(end > start, "empty code range {start:#x}..{end:#x}");
    // SAFETY: the range lies inside the text of the test executable (a guest function
    // between its start symbol and its `_end` label, or a prefix shorter than the
    // function), which is mapped readable for the life of the process.
    let bytes = unsafe { std::slice::from_raw_parts(start as *const u8, (end - start) as usize) };
    Decoder::with_ip(64, bytes, start, DecoderOptions::NONE)
        .into_iter()
        .collect()
}

/// The one instruction at `addr`.
fn decode_one(addr: u64) -> Instruction {
    decode(addr, addr + 15)[0]
}

// ------------------------------------------------------------------------------------------
// jcc: every condition in both encodings, for all 32 combinations of CF/PF/ZF/SF/OF.

const CF: u64 = 1 << 0;
const PF: u64 = 1 << 2;
const ZF: u64 = 1 << 6;
const SF: u64 = 1 << 7;
const OF: u64 = 1 << 11;

fn check_jcc(f: unsafe extern "C" fn(u64) -> u64, mnemonic: &str, rel32: bool) {
    let addr = f as *const () as u64;
    // The function is `push rdi; popfq; jcc`: check the branch has the form this test names.
    let branch = decode(addr, addr + 8)[2];
    assert_eq!(format!("{:?}", branch.mnemonic()).to_lowercase(), mnemonic);
    if rel32 {
        assert!(
            branch.is_jcc_near(),
            "{mnemonic} at {addr:#x} is not rel32: {branch}"
        );
    } else {
        assert!(
            branch.is_jcc_short(),
            "{mnemonic} at {addr:#x} is not rel8: {branch}"
        );
    }

    let (mut vm, _stack) = vm_for(addr);
    let mut outcomes = [0usize; 2];
    for combo in 0..32u64 {
        let bits = [CF, PF, ZF, SF, OF];
        let flags = bits
            .iter()
            .enumerate()
            .filter(|(i, _)| combo & (1 << i) != 0)
            .fold(DEFAULT_EFLAGS, |acc, (_, b)| acc | b);
        // SAFETY: the function loads `flags` into RFLAGS (arithmetic flags only, no TF/DF)
        // and returns 0 or 1.
        let native = unsafe { f(flags) };
        let guest = vm.call(addr, &[flags]).expect("vm.call");
        assert_eq!(
            guest, native,
            "{mnemonic} (rel32: {rel32}) with rflags {flags:#x}"
        );
        outcomes[native as usize] += 1;
    }
    assert!(
        outcomes[0] > 0 && outcomes[1] > 0,
        "{mnemonic}: both paths must be exercised"
    );
}

macro_rules! jcc_tests {
    ($($test:ident => $func:ident, $mnemonic:literal, $rel32:literal;)*) => {
        unsafe extern "C" {
            $(fn $func(rflags: u64) -> u64;)*
        }
        $(
            #[test]
            fn $test() {
                check_jcc($func, $mnemonic, $rel32);
            }
        )*
    };
}

jcc_tests! {
    je_rel8_matches_native_taken_and_not_taken => cf_je_rel8, "je", false;
    je_rel32_matches_native_taken_and_not_taken => cf_je_rel32, "je", true;
    jne_rel8_matches_native_taken_and_not_taken => cf_jne_rel8, "jne", false;
    jne_rel32_matches_native_taken_and_not_taken => cf_jne_rel32, "jne", true;
    jb_rel8_matches_native_taken_and_not_taken => cf_jb_rel8, "jb", false;
    jb_rel32_matches_native_taken_and_not_taken => cf_jb_rel32, "jb", true;
    jae_rel8_matches_native_taken_and_not_taken => cf_jae_rel8, "jae", false;
    jae_rel32_matches_native_taken_and_not_taken => cf_jae_rel32, "jae", true;
    jbe_rel8_matches_native_taken_and_not_taken => cf_jbe_rel8, "jbe", false;
    jbe_rel32_matches_native_taken_and_not_taken => cf_jbe_rel32, "jbe", true;
    ja_rel8_matches_native_taken_and_not_taken => cf_ja_rel8, "ja", false;
    ja_rel32_matches_native_taken_and_not_taken => cf_ja_rel32, "ja", true;
    jl_rel8_matches_native_taken_and_not_taken => cf_jl_rel8, "jl", false;
    jl_rel32_matches_native_taken_and_not_taken => cf_jl_rel32, "jl", true;
    jge_rel8_matches_native_taken_and_not_taken => cf_jge_rel8, "jge", false;
    jge_rel32_matches_native_taken_and_not_taken => cf_jge_rel32, "jge", true;
    jle_rel8_matches_native_taken_and_not_taken => cf_jle_rel8, "jle", false;
    jle_rel32_matches_native_taken_and_not_taken => cf_jle_rel32, "jle", true;
    jg_rel8_matches_native_taken_and_not_taken => cf_jg_rel8, "jg", false;
    jg_rel32_matches_native_taken_and_not_taken => cf_jg_rel32, "jg", true;
    js_rel8_matches_native_taken_and_not_taken => cf_js_rel8, "js", false;
    js_rel32_matches_native_taken_and_not_taken => cf_js_rel32, "js", true;
    jns_rel8_matches_native_taken_and_not_taken => cf_jns_rel8, "jns", false;
    jns_rel32_matches_native_taken_and_not_taken => cf_jns_rel32, "jns", true;
    jo_rel8_matches_native_taken_and_not_taken => cf_jo_rel8, "jo", false;
    jo_rel32_matches_native_taken_and_not_taken => cf_jo_rel32, "jo", true;
    jno_rel8_matches_native_taken_and_not_taken => cf_jno_rel8, "jno", false;
    jno_rel32_matches_native_taken_and_not_taken => cf_jno_rel32, "jno", true;
    jp_rel8_matches_native_taken_and_not_taken => cf_jp_rel8, "jp", false;
    jp_rel32_matches_native_taken_and_not_taken => cf_jp_rel32, "jp", true;
    jnp_rel8_matches_native_taken_and_not_taken => cf_jnp_rel8, "jnp", false;
    jnp_rel32_matches_native_taken_and_not_taken => cf_jnp_rel32, "jnp", true;
}

// ------------------------------------------------------------------------------------------
// Direct and indirect jumps, calls and returns.

unsafe extern "C" {
    safe fn cf_jmp_rel8() -> u64;
    safe fn cf_jmp_rel32() -> u64;
    safe fn cf_call_rel32(x: u64) -> u64;
    safe fn cf_call_reg(x: u64) -> u64;
    safe fn cf_jmp_reg(x: u64) -> u64;
    safe fn cf_call_mem_reg(x: u64) -> u64;
    safe fn cf_jmp_mem_reg(x: u64) -> u64;
    safe fn cf_call_mem_rip(x: u64) -> u64;
    safe fn cf_jmp_mem_rip(x: u64) -> u64;
    safe fn cf_slot_rdx(x: u64) -> u64;
    fn cf_slot_switch(x: u64) -> u64;
    fn cf_switch_add(x: u64) -> u64;
    fn cf_switch_mul(x: u64) -> u64;
    static mut cf_switch_slot: u64;
    fn cf_jt_base_index(index: u64, x: u64) -> u64;
    fn cf_jt_index_disp(index: u64, x: u64) -> u64;
    fn cf_jt_relative(index: u64, x: u64) -> u64;
    fn cf_jump_cycle(n: u64, k: u64) -> u64;
    fn cf_ret_to_native(dst: *mut u8, c: i32, n: usize, f: u64) -> *mut u8;
    fn cf_jmp_to_native(dst: *mut u8, c: i32, n: usize, f: u64) -> *mut u8;
    safe fn cf_ret_imm16(a: u64, b: u64) -> u64;
    fn cf_loop(n: u64) -> u64;
    fn cf_loope(n: u64, lim: u64) -> u64;
    fn cf_loopne(n: u64, lim: u64) -> u64;
    safe fn cf_jrcxz(rcx: u64) -> u64;
    safe fn cf_jecxz(rcx: u64) -> u64;
    safe fn cf_tail_call(x: u64) -> u64;
    safe fn cf_tail_target(x: u64) -> u64;
    safe fn cf_computed_goto(sel: u64) -> u64;
    safe fn cf_push_ret(x: u64) -> u64;
    safe fn cf_call_next_pop() -> u64;
    safe static cf_call_next_pop_end: u8;
    safe static cf_call_next_pop_after: u8;
    safe fn cf_lea_rip() -> u64;
    safe static cf_lea_rip_end: u8;
    safe static cf_lea_rip_after: u8;
    safe fn cf_rip_data() -> u64;
    safe fn cf_read_ret() -> u64;
    safe fn cf_call_read_ret() -> u64;
    safe static cf_call_read_ret_after: u8;
}

/// Address of a label exported by the guest assembly.
fn label(l: &u8) -> u64 {
    l as *const u8 as u64
}

/// Runs the one-argument `f` natively and under a Vm on each input and compares.
fn compare_unary(f: extern "C" fn(u64) -> u64, inputs: &[u64]) {
    let addr = f as *const () as u64;
    let (mut vm, _stack) = vm_for(addr);
    for &x in inputs {
        let native = f(x);
        assert_eq!(
            vm.call(addr, &[x]),
            Ok(native),
            "function at {addr:#x} with input {x:#x}"
        );
    }
}

const INPUTS: [u64; 5] = [0, 1, 7, 0x1234_5678_9abc_def0, u64::MAX];

#[test]
fn jmp_rel8_skips_to_its_target() {
    let addr = cf_jmp_rel8 as *const () as u64;
    assert!(decode(addr, addr + 7)[1].is_jmp_short());
    let (mut vm, _stack) = vm_for(addr);
    assert_eq!(cf_jmp_rel8(), 11);
    assert_eq!(vm.call(addr, &[]), Ok(11));
}

#[test]
fn jmp_rel32_skips_to_its_target() {
    let addr = cf_jmp_rel32 as *const () as u64;
    assert!(decode(addr, addr + 10)[1].is_jmp_near());
    let (mut vm, _stack) = vm_for(addr);
    assert_eq!(cf_jmp_rel32(), 22);
    assert_eq!(vm.call(addr, &[]), Ok(22));
}

#[test]
fn call_rel32_returns_to_the_next_instruction() {
    assert_eq!(cf_call_rel32(5), 15);
    compare_unary(cf_call_rel32, &INPUTS);
}

#[test]
fn call_through_register_matches_native() {
    assert_eq!(cf_call_reg(5), 16);
    compare_unary(cf_call_reg, &INPUTS);
}

#[test]
fn jmp_through_register_matches_native() {
    assert_eq!(cf_jmp_reg(5), 10);
    compare_unary(cf_jmp_reg, &INPUTS);
}

#[test]
fn call_through_memory_with_register_base_matches_native() {
    assert_eq!(cf_call_mem_reg(5), 17);
    compare_unary(cf_call_mem_reg, &INPUTS);
}

#[test]
fn jmp_through_memory_with_register_base_matches_native() {
    assert_eq!(cf_jmp_mem_reg(5), 12);
    compare_unary(cf_jmp_mem_reg, &INPUTS);
}

#[test]
fn call_through_rip_relative_memory_matches_native() {
    assert_eq!(cf_call_mem_rip(5), 13);
    compare_unary(cf_call_mem_rip, &INPUTS);
}

#[test]
fn jmp_through_rip_relative_memory_matches_native() {
    assert_eq!(cf_jmp_mem_rip(5), 14);
    compare_unary(cf_jmp_mem_rip, &INPUTS);
}

/// A call and a jump through slots holding their expected (instrumented) targets, with
/// rdx an argument of each target: their way to the expected target must leave the guest's
/// rdx as it is, with another value at every call (what the spill slot holds is the
/// previous call's, or another branch's).
#[test]
fn calls_and_jumps_through_slots_keep_rdx_on_their_way_to_the_expected_target() {
    assert_eq!(cf_slot_rdx(2), 35);
    let inputs: Vec<u64> = (0..64)
        .map(|i| i * 0x1_0001 + (i << 40))
        .chain(INPUTS)
        .collect();
    compare_unary(cf_slot_rdx, &inputs);
}

/// A call and a jump through a slot that changes between runs: the translation expects
/// the target the slot held then, and a branch to the other one must go to that other one
/// (its site cache, then the lookup).
#[test]
fn calls_and_jumps_through_a_slot_that_changes_go_to_its_new_target() {
    let addr = cf_slot_switch as *const () as u64;
    let (mut vm, _stack) = vm_for(addr);
    let targets = [
        cf_switch_add as *const () as u64,
        cf_switch_mul as *const () as u64,
    ];
    let slot = &raw mut cf_switch_slot;
    for round in 0..12u64 {
        let t = targets[(round % 3 % 2) as usize];
        // SAFETY: the slot is a plain word of the test's data; no guest runs concurrently.
        unsafe { slot.write_volatile(t) };
        let x = round * 1000 + 1;
        let want = if t == targets[0] { x + 22 } else { 9 * x };
        // SAFETY: the slot holds one of the two functions, which take and return a u64.
        assert_eq!(unsafe { cf_slot_switch(x) }, want, "native, round {round}");
        assert_eq!(vm.call(addr, &[x]), Ok(want), "round {round}");
    }
    // SAFETY: as above.
    unsafe { slot.write_volatile(targets[0]) };
}

/// Runs a jump-table function (index 0..4, x) natively and under a Vm, every case twice
/// (the second time the targets are translated).
fn compare_jump_table(f: unsafe extern "C" fn(u64, u64) -> u64) {
    let addr = f as *const () as u64;
    let (mut vm, _stack) = vm_for(addr);
    let x = 0x1234_5678u64;
    let expected = [x + 1, 2 * x, !x, 7 * x];
    for _ in 0..2 {
        for (index, &want) in expected.iter().enumerate() {
            let index = index as u64;
            // SAFETY: index is in 0..4, the size of the table.
            let native = unsafe { f(index, x) };
            assert_eq!(native, want, "native case {index}");
            assert_eq!(vm.call(addr, &[index, x]), Ok(native), "case {index}");
        }
    }
}

/// One jump site whose targets come in turn (`cf_jump_cycle`): with one or two targets its
/// site cache answers; with three or four it misses at every turn, fills its cache until
/// its countdown (`code_cache::SITE_FILLS`, 256) ends, and then rewrites itself into a
/// plain lookup. Every round count, before and well after that, must give the native
/// result, in a fresh Vm and in one whose site stopped already.
#[test]
fn a_jump_site_with_targets_in_turn_matches_native_before_and_after_its_cache_stops() {
    let addr = cf_jump_cycle as *const () as u64;
    for k in 1..=4u64 {
        let (mut vm, _stack) = vm_for(addr);
        for n in [0u64, 1, 7, 255, 256, 257, 600, 2000, 5] {
            // SAFETY: k is in 1..=4, the size of the table.
            let native = unsafe { cf_jump_cycle(n, k) };
            assert_eq!(vm.call(addr, &[n, k]), Ok(native), "k={k} n={n}");
        }
    }
}

/// A `ret` and an indirect `jmp` into native code (libc's `memset`, its length in rdx),
/// from the same site again and again with other lengths: once the site's cache holds the
/// native target, its hits go to the broker, which must see the guest's rdx (a quiet site
/// spills rdx only on its way to the table).
#[test]
fn returns_and_jumps_into_native_code_keep_rdx_from_their_site_cache() {
    let memset = libc::memset as *const () as u64;
    for f in [
        cf_ret_to_native as *const () as u64,
        cf_jmp_to_native as *const () as u64,
    ] {
        let (mut vm, _stack) = vm_for(f);
        let mut buf = vec![0u8; 64];
        for (round, n) in [5usize, 17, 3, 40, 1, 64, 9].into_iter().enumerate() {
            buf.fill(0);
            let c = 0x41 + round as u64;
            let dst = buf.as_mut_ptr() as u64;
            assert_eq!(vm.call(f, &[dst, c, n as u64, memset]), Ok(dst));
            let set = buf.iter().take_while(|&&b| u64::from(b) == c).count();
            assert_eq!(set, n, "round {round}: memset of {n} bytes set {set}");
        }
    }
}

#[test]
fn jump_table_base_plus_index_times_8_matches_native() {
    let addr = cf_jt_base_index as *const () as u64;
    let jmp = decode(addr, addr + 10)[1];
    assert_eq!(jmp.flow_control(), FlowControl::IndirectBranch);
    assert_eq!(jmp.memory_index_scale(), 8);
    compare_jump_table(cf_jt_base_index);
}

#[test]
fn jump_table_index_times_8_plus_displacement_without_base_matches_native() {
    let addr = cf_jt_index_disp as *const () as u64;
    let jmp = decode(addr, addr + 23)[3];
    assert_eq!(jmp.flow_control(), FlowControl::IndirectBranch);
    assert_eq!(jmp.memory_base(), iced_x86::Register::None);
    assert_eq!(jmp.memory_index_scale(), 8);
    compare_jump_table(cf_jt_index_disp);
}

#[test]
fn jump_table_of_relative_offsets_matches_native() {
    compare_jump_table(cf_jt_relative);
}

#[test]
fn ret_imm16_pops_the_arguments_the_caller_pushed() {
    // a*b + a, with 0 stack imbalance in the high half.
    assert_eq!(cf_ret_imm16(6, 7), 48);
    let addr = cf_ret_imm16 as *const () as u64;
    let (mut vm, _stack) = vm_for(addr);
    for (a, b) in [(6, 7), (0, 0), (u64::MAX, 3), (0x1_0000, 0x1_0000)] {
        assert_eq!(
            vm.call(addr, &[a, b]),
            Ok(cf_ret_imm16(a, b)),
            "a={a:#x} b={b:#x}"
        );
    }
}

#[test]
fn loop_runs_rcx_iterations() {
    let addr = cf_loop as *const () as u64;
    let (mut vm, _stack) = vm_for(addr);
    for n in [1u64, 2, 5, 1000] {
        // SAFETY: n >= 1, so the loop ends after n iterations.
        let native = unsafe { cf_loop(n) };
        assert_eq!(native, n, "native: n iterations, rcx = 0 at the end");
        assert_eq!(vm.call(addr, &[n]), Ok(native), "n = {n}");
    }
}

#[test]
fn loope_stops_on_count_or_when_zf_clears() {
    let addr = cf_loope as *const () as u64;
    let (mut vm, _stack) = vm_for(addr);
    for (n, lim) in [(100u64, 5u64), (3, 100), (1, 1), (10, 0), (7, 6)] {
        // SAFETY: n >= 1: at most n iterations.
        let native = unsafe { cf_loope(n, lim) };
        assert_eq!(vm.call(addr, &[n, lim]), Ok(native), "n = {n}, lim = {lim}");
    }
    // SAFETY: as above.
    let (by_flag, by_count) = unsafe { (cf_loope(100, 5), cf_loope(3, 100)) };
    assert_eq!(
        by_flag,
        6 | (94 << 32),
        "native: ZF stops after 6, rcx = 94 left"
    );
    assert_eq!(by_count, 3, "native: count stops after 3, rcx = 0");
}

#[test]
fn loopne_stops_on_count_or_when_zf_sets() {
    let addr = cf_loopne as *const () as u64;
    let (mut vm, _stack) = vm_for(addr);
    for (n, lim) in [(100u64, 5u64), (3, 100), (1, 1), (10, 0), (7, 7)] {
        // SAFETY: n >= 1: at most n iterations.
        let native = unsafe { cf_loopne(n, lim) };
        assert_eq!(vm.call(addr, &[n, lim]), Ok(native), "n = {n}, lim = {lim}");
    }
    // SAFETY: as above.
    let (by_flag, by_count) = unsafe { (cf_loopne(100, 5), cf_loopne(3, 100)) };
    assert_eq!(
        by_flag,
        5 | (95 << 32),
        "native: ZF stops after 5, rcx = 95 left"
    );
    assert_eq!(by_count, 3, "native: count stops after 3, rcx = 0");
}

#[test]
fn jrcxz_is_taken_only_when_rcx_is_zero() {
    // 1 << 32: ecx is 0 but rcx is not.
    let inputs = [0u64, 1, 1 << 32, u64::MAX];
    assert_eq!(inputs.map(|x| cf_jrcxz(x)), [1, 2, 2, 2]);
    compare_unary(cf_jrcxz, &inputs);
}

#[test]
fn jecxz_is_taken_when_ecx_is_zero() {
    let addr = cf_jecxz as *const () as u64;
    let jecxz = decode(addr, addr + 9)[2];
    assert_eq!(jecxz.mnemonic(), Mnemonic::Jecxz);
    let inputs = [0u64, 1, 1 << 32, u64::MAX];
    assert_eq!(inputs.map(|x| cf_jecxz(x)), [1, 2, 1, 2]);
    compare_unary(cf_jecxz, &inputs);
}

#[test]
fn tail_call_by_jmp_to_another_function_matches_native() {
    assert_eq!(cf_tail_call(2), cf_tail_target(5));
    compare_unary(cf_tail_call, &INPUTS);
}

#[test]
fn computed_goto_through_lea_rip_and_jmp_reg_matches_native() {
    assert_eq!([0, 1, 99].map(|x| cf_computed_goto(x)), [11, 22, 22]);
    compare_unary(cf_computed_goto, &[0, 1, 99, 0, 1]);
}

#[test]
fn push_and_ret_used_as_a_jump_matches_native() {
    assert_eq!(cf_push_ret(4), 7);
    compare_unary(cf_push_ret, &INPUTS);
}

#[test]
fn call_next_pop_reads_the_guest_address_of_the_next_instruction() {
    let start = cf_call_next_pop as *const () as u64;
    let end = label(&cf_call_next_pop_end);
    let after = label(&cf_call_next_pop_after);
    assert_eq!(cf_call_next_pop(), after, "native");
    let (mut vm, _stack) = vm_for(start);
    let guest = vm.call(start, &[]).expect("vm.call");
    assert!(
        (start..end).contains(&guest),
        "call $+5; pop gave {guest:#x}, outside the guest function {start:#x}..{end:#x} (a code cache address?)"
    );
    assert_eq!(guest, after);
}

#[test]
fn lea_rip_zero_gives_the_guest_address_of_the_next_instruction() {
    let start = cf_lea_rip as *const () as u64;
    let end = label(&cf_lea_rip_end);
    let after = label(&cf_lea_rip_after);
    assert_eq!(cf_lea_rip(), after, "native");
    let (mut vm, _stack) = vm_for(start);
    let guest = vm.call(start, &[]).expect("vm.call");
    assert!(
        (start..end).contains(&guest),
        "lea rax,[rip] gave {guest:#x}, not a guest address"
    );
    assert_eq!(guest, after);
}

#[test]
fn rip_relative_data_operands_address_guest_data() {
    assert_eq!(cf_rip_data(), 0x1122_3344_5566_7788, "native");
    let addr = cf_rip_data as *const () as u64;
    let (mut vm, _stack) = vm_for(addr);
    assert_eq!(vm.call(addr, &[]), Ok(0x1122_3344_5566_7788));
}

unsafe extern "C" {
    safe fn cf_far_operands(out: *mut u64);
    safe static cf_far_operands_end: u8;
}

/// RIP-relative operands more than 2 GiB from the code cache (`lea` as a constant, whole
/// register loads through their destination, the rest through a spilled register) give
/// the native results: the function is copied, with its data, to a page in the first
/// 2 GiB, and the cache is placed near this test executable first.
#[test]
fn far_rip_relative_operands_match_native() {
    let start = cf_far_operands as *const () as u64;
    let len = (label(&cf_far_operands_end) - start) as usize;
    let page = rwx_page(libc::MAP_32BIT);
    // SAFETY: [start, start + len) is the function and its data in this executable's text;
    // the page is ours and larger.
    unsafe { std::ptr::copy_nonoverlapping(start as *const u8, page, len) };
    let copy = page as u64;
    assert!(
        copy.abs_diff(start) > 1 << 31,
        "the copy is {:#x} bytes from the test executable: not far enough",
        copy.abs_diff(start)
    );
    // SAFETY: the copy is the whole position-independent function (code and data).
    let f: extern "C" fn(*mut u64) = unsafe { std::mem::transmute(copy) };
    let mut native = [0u64; 12];
    f(native.as_mut_ptr());
    assert_eq!(native[80 / 8], copy, "native: lea of its own address");
    assert_eq!(native[1], (native[0] as u32).into(), "native: lea r32");
    // The cache goes near the first code run: this executable.
    let near = cf_rip_data as *const () as u64;
    let (mut vm, _stack) = vm_for(near);
    assert_eq!(vm.call(near, &[]), Ok(0x1122_3344_5566_7788));
    vm.add_instrumented_range(copy, copy + 4096).expect("range");
    let mut guest = [0u64; 12];
    vm.call(copy, &[guest.as_mut_ptr() as u64])
        .expect("the copy runs");
    assert_eq!(guest, native);
    // SAFETY: mapped above, nothing runs in it any more.
    unsafe { libc::munmap(page.cast(), 4096) };
}

#[test]
fn callee_reads_the_guest_return_address_pushed_by_a_translated_call() {
    let start = cf_call_read_ret as *const () as u64;
    let after = label(&cf_call_read_ret_after);
    assert_eq!(cf_call_read_ret(), after, "native");
    let (mut vm, _stack) = vm_for(start);
    assert_eq!(vm.call(start, &[]), Ok(after));
}

#[test]
fn vm_call_pushes_the_fake_return_address() {
    let addr = cf_read_ret as *const () as u64;
    let (mut vm, _stack) = vm_for(addr);
    assert_eq!(vm.call(addr, &[]), Ok(FAKE_RETURN_ADDRESS));
}

// ------------------------------------------------------------------------------------------
// Overlapping instructions, long blocks, hot loops.

unsafe extern "C" {
    safe fn cf_overlap(sel: u64) -> u64;
    safe fn cf_long_block(x: u64) -> u64;
    safe static cf_long_block_end: u8;
    safe fn cf_hot_loop(n: u64) -> u64;
}

const OVERLAP_IMMEDIATE: u64 = 0x9090_c300_0000_2ab8;

#[test]
fn jump_into_a_movabs_immediate_runs_the_hidden_instructions() {
    assert_eq!(
        cf_overlap(0),
        OVERLAP_IMMEDIATE,
        "native, through the movabs"
    );
    assert_eq!(cf_overlap(1), 42, "native, inside the immediate");
    let addr = cf_overlap as *const () as u64;
    // Both orders of translation: the outer instruction first, then the inner one...
    let (mut vm, _stack) = vm_for(addr);
    for sel in [0, 1, 0, 1] {
        assert_eq!(vm.call(addr, &[sel]), Ok(cf_overlap(sel)), "sel = {sel}");
    }
    // ...and the inner one first.
    let (mut vm, _stack) = vm_for(addr);
    for sel in [1, 0, 1, 0] {
        assert_eq!(vm.call(addr, &[sel]), Ok(cf_overlap(sel)), "sel = {sel}");
    }
}

#[test]
fn straight_line_block_of_330_instructions_matches_native() {
    let addr = cf_long_block as *const () as u64;
    let body = decode(addr, label(&cf_long_block_end));
    assert!(
        body.len() > 300,
        "the block has {} instructions",
        body.len()
    );
    assert!(
        body[..body.len() - 1]
            .iter()
            .all(|i| i.flow_control() == FlowControl::Next),
        "no control flow before the final ret"
    );
    compare_unary(cf_long_block, &INPUTS);
}

#[test]
fn loop_of_ten_million_iterations_matches_native() {
    compare_unary(cf_hot_loop, &[10_000_000, 0, 1]);
}

// ------------------------------------------------------------------------------------------
// Instructions the engine refuses, and bytes that do not decode.

unsafe extern "C" {
    fn cf_far_jmp() -> u64;
    safe static cf_far_jmp_insn: u8;
    fn cf_far_call() -> u64;
    safe static cf_far_call_insn: u8;
    fn cf_far_ret() -> u64;
    safe static cf_far_ret_insn: u8;
    fn cf_xbegin() -> u64;
    safe static cf_xbegin_insn: u8;
    fn cf_invalid_06() -> u64;
    safe static cf_invalid_06_insn: u8;
    fn cf_invalid_07() -> u64;
    safe static cf_invalid_07_insn: u8;
    fn cf_invalid_27() -> u64;
    safe static cf_invalid_27_insn: u8;
    fn cf_invalid_37() -> u64;
    safe static cf_invalid_37_insn: u8;
}

/// The Vm still runs ordinary code after an error.
fn assert_vm_still_usable(vm: &mut Vm) {
    assert_eq!(
        vm.call(cf_jmp_rel8 as *const () as u64, &[]),
        Ok(11),
        "a normal call after the error"
    );
    assert_eq!(vm.call(cf_call_rel32 as *const () as u64, &[4]), Ok(12));
}

fn expect_unsupported(function: u64, insn: u64) {
    let (mut vm, _stack) = vm_for(function);
    match vm.call(function, &[]) {
        Err(e @ VmError::UnsupportedInstruction { .. }) => {
            let VmError::UnsupportedInstruction {
                address,
                disassembly,
            } = &e
            else {
                unreachable!()
            };
            assert_eq!(
                *address, insn,
                "address of the refused instruction ({disassembly})"
            );
            assert!(!disassembly.is_empty());
            let msg = e.to_string();
            assert!(
                msg.contains(&format!("{insn:#x}")),
                "message names the address: {msg}"
            );
        }
        other => panic!("expected UnsupportedInstruction at {insn:#x}, got {other:?}"),
    }
    assert_vm_still_usable(&mut vm);
}

#[test]
fn far_jmp_is_refused_with_its_guest_address() {
    let insn = label(&cf_far_jmp_insn);
    assert!(
        decode_one(insn).is_jmp_far_indirect(),
        "{}",
        decode_one(insn)
    );
    expect_unsupported(cf_far_jmp as *const () as u64, insn);
}

#[test]
fn far_call_is_refused_with_its_guest_address() {
    let insn = label(&cf_far_call_insn);
    assert!(
        decode_one(insn).is_call_far_indirect(),
        "{}",
        decode_one(insn)
    );
    expect_unsupported(cf_far_call as *const () as u64, insn);
}

#[test]
fn far_ret_is_refused_with_its_guest_address() {
    let insn = label(&cf_far_ret_insn);
    assert_eq!(decode_one(insn).mnemonic(), Mnemonic::Retf);
    expect_unsupported(cf_far_ret as *const () as u64, insn);
}

#[test]
fn xbegin_is_refused_with_its_guest_address() {
    let insn = label(&cf_xbegin_insn);
    assert_eq!(decode_one(insn).mnemonic(), Mnemonic::Xbegin);
    expect_unsupported(cf_xbegin as *const () as u64, insn);
}

fn expect_invalid(function: u64, insn: u64) {
    assert_eq!(
        decode_one(insn).mnemonic(),
        Mnemonic::INVALID,
        "byte at {insn:#x}"
    );
    let (mut vm, _stack) = vm_for(function);
    let result = vm.call(function, &[]);
    assert_eq!(result, Err(VmError::InvalidInstruction(insn)));
    let msg = result.unwrap_err().to_string();
    assert!(
        msg.contains(&format!("{insn:#x}")),
        "message names the address: {msg}"
    );
    assert_vm_still_usable(&mut vm);
}

#[test]
fn undecodable_byte_06_is_invalid_instruction_at_its_address() {
    expect_invalid(
        cf_invalid_06 as *const () as u64,
        label(&cf_invalid_06_insn),
    );
}

#[test]
fn undecodable_byte_07_is_invalid_instruction_at_its_address() {
    expect_invalid(
        cf_invalid_07 as *const () as u64,
        label(&cf_invalid_07_insn),
    );
}

#[test]
fn undecodable_byte_27_is_invalid_instruction_at_its_address() {
    expect_invalid(
        cf_invalid_27 as *const () as u64,
        label(&cf_invalid_27_insn),
    );
}

#[test]
fn undecodable_byte_37_is_invalid_instruction_at_its_address() {
    expect_invalid(
        cf_invalid_37 as *const () as u64,
        label(&cf_invalid_37_insn),
    );
}

#[test]
fn invalid_instruction_stops_with_the_state_before_it() {
    // The error message promises "the guest state as it was before them": the valid
    // instructions ran (rax = 1 + 2) and the guest stands at the bad byte.
    let function = cf_invalid_06 as *const () as u64;
    let insn = label(&cf_invalid_06_insn);
    let (mut vm, _stack) = vm_for(function);
    assert_eq!(
        vm.call(function, &[]),
        Err(VmError::InvalidInstruction(insn))
    );
    assert_eq!(vm.gpr_state().rax, 3);
    assert_eq!(vm.gpr_state().rip, insn);
}

// ------------------------------------------------------------------------------------------
// Self-modifying code and cache control.

/// A fresh read-write-execute page (`flags` added to the mapping's: `MAP_32BIT`), checked;
/// the caller unmaps it.
fn rwx_page(flags: libc::c_int) -> *mut u8 {
    // SAFETY: anonymous private mapping, no hint; the result is checked.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | flags,
            -1,
            0,
        )
    };
    assert_ne!(
        p,
        libc::MAP_FAILED,
        "mmap RWX: {}",
        std::io::Error::last_os_error()
    );
    p.cast()
}

/// One RWX page holding `mov eax, imm32; ret`; unmapped on drop.
struct CodePage(*mut u8);

impl CodePage {
    fn new(imm: u32) -> CodePage {
        let page = CodePage(rwx_page(0));
        // SAFETY: the page is ours, 4096 bytes, writable.
        unsafe { page.0.write(0xb8) };
        page.set_imm(imm);
        // SAFETY: as above.
        unsafe { page.0.add(5).write(0xc3) };
        page
    }

    fn set_imm(&self, imm: u32) {
        // SAFETY: bytes 1..5 of our writable page.
        unsafe { self.0.add(1).cast::<u32>().write_unaligned(imm) };
    }

    fn addr(&self) -> u64 {
        self.0 as u64
    }

    fn run_native(&self) -> u64 {
        // SAFETY: the page holds `mov eax, imm32; ret`, a complete function.
        let f: extern "C" fn() -> u64 = unsafe { std::mem::transmute(self.0) };
        f()
    }
}

impl Drop for CodePage {
    fn drop(&mut self) {
        // SAFETY: our mapping of 4096 bytes, unmapped once.
        unsafe { libc::munmap(self.0.cast(), 4096) };
    }
}

fn vm_for_page(page: &CodePage) -> (Vm, VirtualStack) {
    let mut vm = Vm::new();
    let stack = allocate_virtual_stack(vm.gpr_state_mut(), 1 << 16).expect("guest stack");
    vm.add_instrumented_range(page.addr(), page.addr() + 4096)
        .expect("range");
    (vm, stack)
}

#[test]
fn clear_cache_picks_up_modified_code() {
    let page = CodePage::new(1);
    let (mut vm, _stack) = vm_for_page(&page);
    assert_eq!(page.run_native(), 1);
    assert_eq!(vm.call(page.addr(), &[]), Ok(1));
    page.set_imm(2);
    assert_eq!(page.run_native(), 2);
    // Without clearing, the cached translation may legitimately still return 1.
    let stale = vm.call(page.addr(), &[]);
    assert!(matches!(stale, Ok(1) | Ok(2)), "{stale:?}");
    vm.clear_cache(page.addr(), page.addr() + 6);
    assert_eq!(vm.call(page.addr(), &[]), Ok(2));
}

/// A return whose site is translated again after a change goes to the new translation: the
/// callee's `ret` (in a page that stays translated) has learned its return site in its
/// site cache; the caller's page changes and is cleared from the cache.
#[test]
fn a_return_goes_to_the_new_translation_of_its_site() {
    let callee = CodePage::new(40);
    let (mut vm, _stack) = vm_for_page(&callee);
    let caller = rwx_page(0);
    // mov rax, callee; call rax; add eax, imm32 (the return site, imm at 13); ret
    let mut code = vec![0x48, 0xb8];
    code.extend_from_slice(&callee.addr().to_le_bytes());
    code.extend_from_slice(&[0xff, 0xd0, 0x05, 1, 0, 0, 0, 0xc3]);
    // SAFETY: the page is ours and writable; 18 bytes.
    unsafe { std::ptr::copy_nonoverlapping(code.as_ptr(), caller, code.len()) };
    let at = caller as u64;
    vm.add_instrumented_range(at, at + 4096).expect("range");
    for _ in 0..3 {
        assert_eq!(vm.call(at, &[]), Ok(41));
    }
    // SAFETY: the imm32 of the add, in our writable page.
    unsafe { caller.add(13).cast::<u32>().write_unaligned(2) };
    vm.clear_cache(at, at + code.len() as u64);
    for _ in 0..3 {
        assert_eq!(vm.call(at, &[]), Ok(42));
    }
    // SAFETY: mapped above; nothing runs in it any more.
    unsafe { libc::munmap(caller.cast(), 4096) };
}

#[test]
fn clear_all_cache_picks_up_modified_code() {
    let page = CodePage::new(1);
    let (mut vm, _stack) = vm_for_page(&page);
    assert_eq!(vm.call(page.addr(), &[]), Ok(1));
    page.set_imm(3);
    assert_eq!(page.run_native(), 3);
    vm.clear_all_cache();
    assert_eq!(vm.call(page.addr(), &[]), Ok(3));
}

#[test]
fn precache_basic_block_translates_once() {
    let page = CodePage::new(5);
    let (mut vm, _stack) = vm_for_page(&page);
    assert_eq!(
        vm.precache_basic_block(page.addr()),
        Ok(true),
        "first: newly translated"
    );
    assert_eq!(
        vm.precache_basic_block(page.addr()),
        Ok(false),
        "second: already cached"
    );
    assert_eq!(vm.call(page.addr(), &[]), Ok(5));
    vm.clear_cache(page.addr(), page.addr() + 6);
    assert_eq!(
        vm.precache_basic_block(page.addr()),
        Ok(true),
        "after clear_cache"
    );
    vm.clear_all_cache();
    assert_eq!(
        vm.precache_basic_block(page.addr()),
        Ok(true),
        "after clear_all_cache"
    );
    assert_eq!(vm.precache_basic_block(page.addr()), Ok(false));
}
