//! The differential cases: guest functions written in C and assembly (`tests/guest/diff_*`)
//! run natively (called through their function pointer) and under the Vm (`vm.call`) on the
//! same inputs. Return values, output buffers (one for the native run, one for the Vm run),
//! errno and the callee-saved registers must be identical.
//!
//! Every call under the Vm starts with random values in rbx, rbp and r12-r15; they must come
//! back unchanged, the run must end at the fake return address, and the MXCSR / x87 control
//! words (callee-saved in the SysV ABI) must be the caller's.
//!
//! This file is a module of several test executables (`differential.rs`,
//! `differential_counting.rs`, `differential_fp_clobber.rs`): each gives a
//! `fn configure(vm: &mut Vm) -> AfterCall` that sets up the instrumentation of every Vm
//! the cases create, and returns a check run after each Vm call.

use iced_x86::{Decoder, DecoderOptions, FlowControl, Instruction, Mnemonic, OpKind, Register};
use qbdi_core::{FAKE_RETURN_ADDRESS, VirtualStack, Vm, aligned_alloc, allocate_virtual_stack};
use std::ffi::{CStr, c_char};
use std::hash::BuildHasher;
use std::sync::OnceLock;

type BinOp = unsafe extern "C" fn(i64, i64) -> i64;

unsafe extern "C" {
    // diff_arith.c
    fn diff_arith_mix(a: u64, b: u64, c: u64) -> u64;
    fn diff_compare_all(a: i64, b: i64) -> u32;
    fn diff_overflow_flags(a: i64, b: i64, out: *mut u64) -> u64;
    fn diff_u256_addsub(a: *const u64, b: *const u64, out: *mut u64) -> u64;
    fn diff_u256_mul_u64(a: *const u64, m: u64, out: *mut u64) -> u64;
    fn diff_divisions(a: i64, b: i64, out: *mut i64) -> i64;
    fn diff_mul128(a: u64, b: u64, out: *mut u64) -> u64;
    fn diff_bits(x: u64, out: *mut u64) -> u64;
    fn diff_bits_bmi(x: u64, m: u64, out: *mut u64) -> u64;
    fn diff_loops(n: u32) -> u64;
    fn diff_collatz_steps(x: u64) -> u32;

    // diff_control.c
    fn diff_rec_sum(n: i64) -> i64;
    fn diff_fib(n: u32) -> u64;
    fn diff_is_even(n: u32) -> i32;
    fn diff_is_odd(n: u32) -> i32;
    fn diff_ping(n: i64) -> i64;
    fn diff_switch_dense(op: i64, x: i64) -> i64;
    fn diff_switch_loop(seed: i64, n: u32) -> i64;
    fn diff_op_add(a: i64, b: i64) -> i64;
    fn diff_op_sub(a: i64, b: i64) -> i64;
    fn diff_op_mul(a: i64, b: i64) -> i64;
    fn diff_op_xor(a: i64, b: i64) -> i64;
    fn diff_op_rotl(a: i64, b: i64) -> i64;
    fn diff_fnptr_loop(seed: i64, n: u32) -> i64;
    fn diff_apply_twice(f: BinOp, a: i64, b: i64) -> i64;
    fn diff_switch_values(i: u32) -> i32;
    fn diff_rip_tables(i: u32, out: *mut f64) -> u64;
    fn diff_rip_rw(seed: u64) -> u64;
    fn diff_tail_target(x: u64, y: u64) -> u64;
    fn diff_tail_caller(x: u64) -> u64;
    fn diff_tail_indirect(f: BinOp, a: i64, b: i64) -> i64;
    fn diff_tail_countdown(n: u64, acc: u64) -> u64;
    fn diff_lexer(s: *const c_char, out: *mut u32) -> i32;
    fn diff_interp_switch(which: u32, input: i64) -> i64;
    fn diff_interp_goto(which: u32, input: i64) -> i64;
    fn diff_setjmp_loop(n: i32) -> i64;
    fn diff_va_sum(n: i32, ...) -> i32;
    fn diff_va_caller(a: i32, b: i32, c: i32, out: *mut f64) -> i64;
    fn diff_args8(a: i64, b: i64, c: i64, d: i64, e: i64, f: i64, g: i64, h: i64) -> i64;
    fn diff_args9(a: i64, b: i64, c: i64, d: i64, e: i64, f: i64, g: i64, h: i64, i: i64) -> i64;
    fn diff_args12(
        a: i8,
        b: u8,
        c: i16,
        d: u16,
        e: i32,
        f: u32,
        g: i64,
        h: u64,
        i: i32,
        j: i8,
        k: u16,
        l: i64,
    ) -> i64;
    fn diff_args10_forward(
        a: i64,
        b: i64,
        c: i64,
        d: i64,
        e: i64,
        f: i64,
        g: i64,
        h: i64,
        i: i64,
        j: i64,
    ) -> i64;
    fn diff_args8_out(a: i64, b: i64, c: i64, d: i64, e: i64, f: i64, out: *mut i64, n: i64)
    -> i64;
    fn diff_args16(
        a0: u64,
        a1: u64,
        a2: u64,
        a3: u64,
        a4: u64,
        a5: u64,
        a6: u64,
        a7: u64,
        a8: u64,
        a9: u64,
        a10: u64,
        a11: u64,
        a12: u64,
        a13: u64,
        a14: u64,
        a15: u64,
    ) -> u64;
    fn diff_struct_returns(x: i64, y: i64, out: *mut u8);

    // diff_fp.c
    fn diff_sse_double(a: i64, b: i64, out: *mut f64);
    fn diff_sse_arrays(a: *const f64, b: *const f64, n: usize, out: *mut f64);
    fn diff_mxcsr_round(a: i64, out: *mut i64);
    fn diff_avx2_kernel(a: *const i32, b: *const i32, out: *mut i32, n: usize, summary: *mut i64);
    fn diff_avx2_fma(x: *const f64, y: *const f64, out: *mut f64, n: usize, k: i64, sum: *mut f64);
    fn diff_avx512_bytes(buf: *const u8, n: usize, needle: u8, out: *mut u8) -> u64;
    fn diff_avx512_dwords(
        a: *const i32,
        b: *const i32,
        n: usize,
        out: *mut i32,
        summary: *mut i64,
    ) -> u64;
    fn diff_x87(a: i64, b: i64, out: *mut u8);
    fn diff_x87_round(a: i64, out: *mut i64);

    // diff_libc.c
    fn diff_malloc_churn(n: u32) -> u64;
    fn diff_mem_ops(src: *const u8, dst: *mut u8, n: usize) -> i64;
    fn diff_qsort(recs: *mut i64, n: usize, words: *mut u32, m: usize) -> u64;
    fn diff_snprintf(buf: *mut c_char, cap: usize, a: i64, b: u32, c: i32) -> i32;
    fn diff_strtol(s: *const c_char, base: i32, end_offset: *mut i64) -> i64;
    fn diff_strtoul_count_erange(strs: *const *const c_char, n: usize, values: *mut u64) -> i32;
    fn diff_vla(n: i32) -> i64;
    fn diff_fp_env(a: i64, out: *mut i64) -> i64;
    fn diff_alloca(n: usize) -> u64;

    // diff_algo.c
    fn diff_sha256(data: *const u8, len: usize, digest: *mut u8) -> u64;
    fn diff_crc32_table(p: *const u8, n: usize) -> u32;
    fn diff_crc32_bitwise(p: *const u8, n: usize) -> u32;
    fn diff_strlen(s: *const c_char) -> usize;
    fn diff_strrev(s: *mut c_char) -> usize;
    fn diff_atoi(s: *const c_char, consumed: *mut i64) -> i64;
    fn diff_upper_words(s: *mut c_char) -> i32;
    fn diff_insertion_sort(v: *mut i32, n: usize);
    fn diff_quicksort(v: *mut i64, n: usize);
    fn diff_matmul_f64(a: *const f64, b: *const f64, c: *mut f64, n: usize);
    fn diff_matmul_i32(a: *const i32, b: *const i32, c: *mut i32, n: usize);
    fn diff_hash_table(n: u32, seed: u64, stats: *mut u64) -> u64;

    // diff_sys.c
    fn diff_cpuid(leaf: u32, subleaf: u32, out: *mut u32);
    fn diff_rep_strings(dst: *mut u8, src: *const u8, n: usize, needle: u8, regs: *mut u64) -> u64;
    fn diff_redzone_leaf(a: i64, b: i64) -> i64;
    fn diff_redzone_switch(a: i64, op: u32) -> i64;

    // diff_asm.S
    fn diff_asm_flags_indirect(a: u64, b: u64) -> u64;
    fn diff_asm_flags_ret(a: u64, b: u64) -> u64;
    fn diff_asm_flags_chain(a: i64, b: i64) -> u32;
    fn diff_asm_loops(n: u64) -> u64;
    fn diff_asm_pushf_popf(a: u64) -> u64;
    fn diff_asm_atomics(mem: *mut u64, v: u64) -> u64;
    fn diff_asm_std_movsb(dst: *mut u8, src: *const u8, n: u64) -> u64;
    fn diff_asm_red_zone(a: u64) -> u64;
    fn diff_asm_indirect_mem(idx: u64, x: u64) -> u64;
    fn diff_asm_slot_switch(i: u64, x: u64) -> u64;
    fn diff_asm_riprel(i: u64) -> u64;
    fn diff_asm_lea_rip() -> u64;
    fn diff_asm_get_pc() -> u64;
    fn diff_asm_ret_addr() -> u64;
    fn diff_asm_getpid() -> u64;
    fn diff_asm_syscall_rcx() -> u64;
    fn diff_asm_avx512_hi(a: u64, out: *mut u8) -> u64;
}

// ---- harness --------------------------------------------------------------------------

const MIB: usize = 1 << 20;
const CALLEE_SAVED: [&str; 6] = ["rbx", "rbp", "r12", "r13", "r14", "r15"];

/// What a test executable checks after every call under the Vm (given the guest function's
/// name), for instance what its callbacks saw.
pub(crate) type AfterCall = Box<dyn FnMut(&str, &Vm)>;

/// A Vm instrumenting this test executable (where the guest code is linked), with its own
/// virtual stack, configured by the including test executable.
struct Guest {
    vm: Vm,
    _stack: VirtualStack,
    rng: u64,
    after_call: AfterCall,
}

impl Guest {
    /// A guest with an 8 MiB stack.
    fn new() -> Guest {
        Guest::with_stack(8 * MIB)
    }

    fn with_stack(size: usize) -> Guest {
        let mut vm = Vm::new();
        let stack = allocate_virtual_stack(vm.gpr_state_mut(), size).expect("a virtual stack");
        vm.add_instrumented_module_from_addr(diff_arith_mix as *const () as u64)
            .expect("instrument the test executable");
        let after_call = super::configure(&mut vm);
        let rng = std::collections::hash_map::RandomState::new().hash_one(0x5eed_u64) | 1;
        Guest {
            vm,
            _stack: stack,
            rng,
            after_call,
        }
    }

    fn random(&mut self) -> u64 {
        // xorshift64*
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Calls `addr` under the Vm with fresh random callee-saved registers and checks that
    /// they, the MXCSR control bits and the x87 control word survive the call, then runs the
    /// test executable's after-call check.
    fn call(&mut self, name: &str, addr: u64, args: &[u64]) -> u64 {
        let mut saved = [0u64; 6];
        let mut filled = 0;
        while filled < saved.len() {
            let v = self.random();
            if v != 0 && !saved[..filled].contains(&v) {
                saved[filled] = v;
                filled += 1;
            }
        }
        let gpr = self.vm.gpr_state_mut();
        [gpr.rbx, gpr.rbp, gpr.r12, gpr.r13, gpr.r14, gpr.r15] = saved;
        let (mxcsr, fcw) = (self.vm.fpr_state().mxcsr, self.vm.fpr_state().fcw);
        let rax = self
            .vm
            .call(addr, args)
            .unwrap_or_else(|e| panic!("{name}{args:#x?} under the Vm failed: {e}"));
        let gpr = self.vm.gpr_state();
        let after = [gpr.rbx, gpr.rbp, gpr.r12, gpr.r13, gpr.r14, gpr.r15];
        for ((reg, before), after) in CALLEE_SAVED.iter().zip(saved).zip(after) {
            assert_eq!(
                after, before,
                "{name}{args:#x?}: callee-saved {reg} is {after:#x} after the Vm call, was {before:#x}"
            );
        }
        assert_eq!(
            gpr.rip, FAKE_RETURN_ADDRESS,
            "{name}{args:#x?}: the run did not end at the return"
        );
        let fpr = self.vm.fpr_state();
        assert_eq!(
            fpr.mxcsr & !0x3f,
            mxcsr & !0x3f,
            "{name}{args:#x?}: MXCSR control bits changed under the Vm"
        );
        assert_eq!(
            fpr.fcw, fcw,
            "{name}{args:#x?}: x87 control word changed under the Vm"
        );
        (self.after_call)(name, &self.vm);
        rax
    }
}

/// A C return type, read back from the Vm's rax (narrow types ignore the upper bits, which
/// the ABI leaves undefined).
trait Ret: Copy + PartialEq + std::fmt::Debug {
    fn from_rax(rax: u64) -> Self;
}

macro_rules! impl_ret {
    ($($t:ty),*) => {$(
        impl Ret for $t {
            fn from_rax(rax: u64) -> $t {
                rax as $t
            }
        }
    )*};
}
impl_ret!(u64, i64, u32, i32, usize);

impl Ret for () {
    fn from_rax(_: u64) {}
}

/// A C argument, as the Vm receives it in a 64-bit register or stack slot (signed values
/// sign-extended, unsigned zero-extended, as a native caller does).
trait Arg: Copy {
    fn rword(self) -> u64;
}

macro_rules! impl_arg {
    ($($t:ty => $wide:ty),*) => {$(
        impl Arg for $t {
            fn rword(self) -> u64 {
                self as $wide as u64
            }
        }
    )*};
}
impl_arg!(i8 => i64, i16 => i64, i32 => i64, i64 => i64, u8 => u64, u16 => u64, u32 => u64,
          u64 => u64, usize => u64);

impl<T> Arg for *const T {
    fn rword(self) -> u64 {
        self as usize as u64
    }
}
impl<T> Arg for *mut T {
    fn rword(self) -> u64 {
        self as usize as u64
    }
}
impl Arg for BinOp {
    fn rword(self) -> u64 {
        self as usize as u64
    }
}

/// Runs `native` and the guest function at `addr` under the Vm; asserts the same result.
fn compare<T: Ret>(
    g: &mut Guest,
    name: &str,
    native: impl FnOnce() -> T,
    addr: u64,
    args: &[u64],
) -> T {
    let expected = native();
    let got = T::from_rax(g.call(name, addr, args));
    assert_eq!(
        got, expected,
        "{name}{args:#x?}: the Vm returned {got:?}, native {expected:?}"
    );
    expected
}

/// Like `compare`, for a function writing a buffer: the native run gets one copy of `init`,
/// the Vm run another; results and the final bytes must match. Returns the native result and
/// bytes.
fn compare_buf<T: Ret>(
    g: &mut Guest,
    name: &str,
    init: &[u8],
    native: impl FnOnce(*mut u8) -> T,
    addr: u64,
    args: impl FnOnce(u64) -> Vec<u64>,
) -> (T, Vec<u8>) {
    let mut nat = aligned_alloc(init.len(), 64).expect("buffer");
    nat.copy_from_slice(init);
    let mut emu = aligned_alloc(init.len(), 64).expect("buffer");
    emu.copy_from_slice(init);
    let expected = native(nat.as_mut_ptr());
    let args = args(emu.addr());
    let got = T::from_rax(g.call(name, addr, &args));
    assert_eq!(
        got, expected,
        "{name}{args:#x?}: the Vm returned {got:?}, native {expected:?}"
    );
    assert_same_bytes(name, &args, &nat, &emu);
    (expected, nat.to_vec())
}

fn assert_same_bytes(name: &str, args: &[u64], native: &[u8], vm: &[u8]) {
    if let Some(i) = native.iter().zip(vm).position(|(a, b)| a != b) {
        let end = (i + 16).min(native.len());
        panic!(
            "{name}{args:#x?}: output differs from byte {i}: native {:02x?}, Vm {:02x?}",
            &native[i..end],
            &vm[i..end]
        );
    }
}

/// Inside `same_buf!`: `OUT` is the output buffer, `(OUT + n)` the buffer plus n bytes.
macro_rules! native_arg {
    ($p:ident; OUT) => {
        $p.cast()
    };
    ($p:ident; (OUT + $off:expr)) => {
        $p.add($off).cast()
    };
    ($p:ident; ($($e:tt)*)) => {
        $($e)*
    };
    ($p:ident; $a:tt) => {
        $a
    };
}
macro_rules! vm_arg {
    ($p:ident; OUT) => {
        $p
    };
    ($p:ident; (OUT + $off:expr)) => {
        $p + ($off) as u64
    };
    ($p:ident; ($($e:tt)*)) => {
        Arg::rword($($e)*)
    };
    ($p:ident; $a:tt) => {
        Arg::rword($a)
    };
}

/// `same!(g, f(a, b, c))`: native and Vm calls of `f` with the same arguments.
macro_rules! same {
    ($g:expr, $f:ident($($a:expr),* $(,)?)) => {
        compare(
            $g,
            stringify!($f),
            // SAFETY: the guest function is declared with its C signature and gets valid
            // arguments (plain values, or pointers to live buffers).
            || unsafe { $f($($a),*) },
            $f as *const () as u64,
            &[$(Arg::rword($a)),*],
        )
    };
}

/// `same_buf!(g, init, f(a, OUT, (OUT + 32)))`: like `same!`, with `OUT` a copy of `init`
/// for each run, compared after the runs. Each argument is one token tree: parenthesize
/// expressions and negative numbers.
macro_rules! same_buf {
    ($g:expr, $init:expr, $f:ident($($a:tt),* $(,)?)) => {
        compare_buf(
            $g,
            stringify!($f),
            $init,
            // SAFETY: as in `same!`; OUT points to a live buffer as large as the function
            // writes (the caller sizes `init`).
            |out: *mut u8| unsafe { $f($(native_arg!(out; $a)),*) },
            $f as *const () as u64,
            |out: u64| vec![$(vm_arg!(out; $a)),*],
        )
    };
}

/// `inputs`, then `heavy` when the test executable runs the largest inputs
/// (`super::HEAVY_INPUTS`): the plain suite does; under a callback on every instruction they
/// would take minutes in a debug build.
fn sizes<T: Copy>(inputs: &[T], heavy: &[T]) -> Vec<T> {
    let mut all = inputs.to_vec();
    if super::HEAVY_INPUTS {
        all.extend_from_slice(heavy);
    }
    all
}

/// Deterministic test data.
fn data(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (x >> 56) as u8
        })
        .collect()
}

fn words<T: Copy>(bytes: &[u8]) -> Vec<T> {
    let size = std::mem::size_of::<T>();
    bytes
        .chunks_exact(size)
        // SAFETY: each chunk holds size_of::<T>() bytes; T is a plain integer/float type here.
        .map(|c| unsafe { c.as_ptr().cast::<T>().read_unaligned() })
        .collect()
}

fn bytes_of<T: Copy>(v: &[T]) -> Vec<u8> {
    // SAFETY: reading the initialised memory of a slice of plain values as bytes.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), std::mem::size_of_val(v)) }
        .to_vec()
}

/// Runs `f` on a thread with a 64 MiB stack (native deep recursion).
fn on_big_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .stack_size(64 * MIB)
        .spawn(f)
        .expect("spawn a thread")
        .join()
        .expect("the native run")
}

fn errno() -> i32 {
    // SAFETY: __errno_location returns this thread's errno slot.
    unsafe { *libc::__errno_location() }
}

fn set_errno(v: i32) {
    // SAFETY: as in errno().
    unsafe { *libc::__errno_location() = v }
}

const EDGE_U64: [u64; 9] = [
    0,
    1,
    2,
    0x7f,
    0x8000_0000,
    0xdead_beef_cafe_f00d,
    i64::MAX as u64,
    i64::MIN as u64,
    u64::MAX,
];

const EDGE_I64: [i64; 10] = [
    0,
    1,
    -1,
    2,
    -7,
    1000,
    i32::MIN as i64,
    i32::MAX as i64,
    i64::MIN,
    i64::MAX,
];

// ---- static checks of the guest code (the tests exercise what they claim) ------------

/// The executable's bytes (the symbol table gives the guest functions' sizes).
fn executable() -> &'static [u8] {
    static EXE: OnceLock<Vec<u8>> = OnceLock::new();
    EXE.get_or_init(|| std::fs::read("/proc/self/exe").expect("read /proc/self/exe"))
}

/// The size of function `name` from the executable's ELF symbol table.
fn symbol_size(name: &str) -> u64 {
    let elf = executable();
    let u16_at = |o: usize| u16::from_le_bytes(elf[o..o + 2].try_into().unwrap());
    let u32_at = |o: usize| u32::from_le_bytes(elf[o..o + 4].try_into().unwrap());
    let u64_at = |o: usize| u64::from_le_bytes(elf[o..o + 8].try_into().unwrap());
    let (shoff, shentsize, shnum) = (
        u64_at(0x28) as usize,
        u16_at(0x3a) as usize,
        u16_at(0x3c) as usize,
    );
    for i in 0..shnum {
        let sh = shoff + i * shentsize;
        if u32_at(sh + 4) != 2 {
            continue; // not SHT_SYMTAB
        }
        let (off, size, entsize) = (
            u64_at(sh + 0x18) as usize,
            u64_at(sh + 0x20) as usize,
            u64_at(sh + 0x38) as usize,
        );
        let strtab = u64_at(shoff + u32_at(sh + 0x28) as usize * shentsize + 0x18) as usize;
        for sym in (off..off + size).step_by(entsize) {
            let name_at = &elf[strtab + u32_at(sym) as usize..];
            let len = name_at.iter().position(|&b| b == 0).unwrap();
            if &name_at[..len] == name.as_bytes() {
                return u64_at(sym + 16);
            }
        }
    }
    panic!("{name} is not in the executable's symbol table");
}

/// The decoded instructions of guest function `name` at `addr`.
fn guest_code(name: &str, addr: u64) -> Vec<Instruction> {
    let size = symbol_size(name) as usize;
    assert!(size > 0, "{name} has a size");
    // SAFETY: [addr, addr + size) is the code of the function in this executable's mapped text.
    let bytes = unsafe { std::slice::from_raw_parts(addr as *const u8, size) };
    let mut decoder = Decoder::with_ip(64, bytes, addr, DecoderOptions::NONE);
    decoder.iter().collect()
}

fn has_jmp_through_register(code: &[Instruction]) -> bool {
    code.iter()
        .any(|i| i.mnemonic() == Mnemonic::Jmp && i.op0_kind() == OpKind::Register)
}

// ---- arithmetic and flags ---------------------------------------------------------------

#[test]
fn integer_arithmetic_shifts_and_cmov_match_native() {
    let mut g = Guest::new();
    for a in EDGE_U64 {
        for b in [0, 1, 63, 64, u64::MAX, 0x1234_5678_9abc_def0] {
            for c in [0, 5, i64::MIN as u64] {
                same!(&mut g, diff_arith_mix(a, b, c));
            }
        }
    }
}

#[test]
fn comparisons_set_every_condition_code_like_native() {
    let mut g = Guest::new();
    for a in EDGE_I64 {
        for b in EDGE_I64 {
            same!(&mut g, diff_compare_all(a, b));
            same!(&mut g, diff_asm_flags_chain(a, b));
        }
    }
}

#[test]
fn flags_survive_indirect_jumps_calls_and_returns() {
    let mut g = Guest::new();
    for a in EDGE_U64 {
        for b in EDGE_U64 {
            same!(&mut g, diff_asm_flags_indirect(a, b));
            same!(&mut g, diff_asm_flags_ret(a, b));
        }
    }
}

#[test]
fn pushf_popf_lahf_sahf_and_carry_flag_instructions() {
    let mut g = Guest::new();
    for a in EDGE_U64.into_iter().chain([
        0x8d5,
        0xc5_0001,
        0xff00_0000_0000_08d5,
        0x0041_0000,
        0x80_0040,
    ]) {
        same!(&mut g, diff_asm_pushf_popf(a));
    }
}

#[test]
fn overflow_builtins_report_the_same_overflows() {
    let mut g = Guest::new();
    for a in EDGE_I64 {
        for b in EDGE_I64 {
            let (flags, _) = same_buf!(&mut g, &[0xcc; 64], diff_overflow_flags(a, b, OUT));
            if (a, b) == (i64::MAX, 1) {
                assert_eq!(flags & 1, 1, "native: i64::MAX + 1 overflows");
            }
        }
    }
}

#[test]
fn adc_and_sbb_chains_of_256_bit_arithmetic() {
    let mut g = Guest::new();
    let code = guest_code("diff_u256_addsub", diff_u256_addsub as *const () as u64);
    assert!(
        code.iter().any(|i| i.mnemonic() == Mnemonic::Adc),
        "an adc chain"
    );
    assert!(
        code.iter().any(|i| i.mnemonic() == Mnemonic::Sbb),
        "an sbb chain"
    );
    let numbers: [[u64; 4]; 5] = [
        [0; 4],
        [u64::MAX; 4],
        [1, 0, 0, 0],
        [u64::MAX, u64::MAX, 0, 1],
        [
            0xdead_beef,
            0x1234_5678_9abc_def0,
            u64::MAX,
            0x8000_0000_0000_0000,
        ],
    ];
    for a in &numbers {
        for b in &numbers {
            let (pa, pb) = (a.as_ptr(), b.as_ptr());
            let (carries, out) = same_buf!(&mut g, &[0xcc; 64], diff_u256_addsub(pa, pb, OUT));
            // Native sanity: a + b - b == a limb-wise is not checked here; the carry of
            // MAX + 1 must be set.
            if a == &[u64::MAX; 4] && b == &[1, 0, 0, 0] {
                assert_eq!(carries & 1, 1);
                assert_eq!(words::<u64>(&out)[..4], [0; 4]);
            }
            for m in [0, 1, u64::MAX, 0x1_0000_0001] {
                same_buf!(&mut g, &[0xcc; 40], diff_u256_mul_u64(pa, m, OUT));
            }
        }
    }
}

#[test]
fn division_by_variables_signed_and_unsigned() {
    let mut g = Guest::new();
    for a in EDGE_I64
        .into_iter()
        .chain([-1_000_000_007, 123_456_789_012])
    {
        for b in EDGE_I64.into_iter().chain([3, -3, 255, 65_536]) {
            same_buf!(&mut g, &[0xcc; 96], diff_divisions(a, b, OUT));
        }
    }
}

#[test]
fn multiply_and_divide_128_bit() {
    let mut g = Guest::new();
    for a in EDGE_U64 {
        for b in EDGE_U64 {
            let (_, out) = same_buf!(&mut g, &[0xcc; 56], diff_mul128(a, b, OUT));
            let w = words::<u64>(&out);
            let p = a as u128 * b as u128;
            assert_eq!(
                (w[0], w[1]),
                (p as u64, (p >> 64) as u64),
                "native product of {a:#x} * {b:#x}"
            );
        }
    }
}

#[test]
fn bit_tricks_popcount_clz_bswap() {
    let mut g = Guest::new();
    for x in EDGE_U64
        .into_iter()
        .chain([0x8000_0000_0000_0000, 0x00f0_0000_0000_0100])
    {
        let (_, out) = same_buf!(&mut g, &[0xcc; 96], diff_bits(x, OUT));
        assert_eq!(
            words::<u64>(&out)[0],
            x.count_ones() as u64,
            "native popcount of {x:#x}"
        );
    }
}

#[test]
fn bit_tricks_with_bmi_lzcnt_popcnt_instructions() {
    if !(is_x86_feature_detected!("bmi1")
        && is_x86_feature_detected!("bmi2")
        && is_x86_feature_detected!("lzcnt")
        && is_x86_feature_detected!("popcnt"))
    {
        eprintln!("skipped: the CPU lacks BMI1/BMI2/LZCNT/POPCNT");
        return;
    }
    let mut g = Guest::new();
    for x in EDGE_U64 {
        for m in [0, u64::MAX, 0x00ff_00ff_f0f0_1234, 7, 64 + 9] {
            same_buf!(&mut g, &[0xcc; 104], diff_bits_bmi(x, m, OUT));
        }
    }
}

// ---- loops and recursion ------------------------------------------------------------------

#[test]
fn loops_nested_early_exit_and_data_dependent() {
    let mut g = Guest::new();
    for n in sizes(&[0u32, 1, 2, 7, 100], &[5000]) {
        same!(&mut g, diff_loops(n));
    }
    for x in [0u64, 1, 2, 27, 97, 871, 837_799, 1 << 40] {
        same!(&mut g, diff_collatz_steps(x));
    }
    let asm_loops = sizes(
        &[
            0u64,
            1,
            2,
            100,
            255,
            256,
            100_000,
            0x1_0000_0000,
            0x1_0000_0003,
        ],
        &[u64::MAX],
    );
    for n in asm_loops {
        same!(&mut g, diff_asm_loops(n));
    }
}

#[test]
fn deep_recursion_of_50000_frames() {
    let mut g = Guest::with_stack(64 * MIB);
    for n in [0i64, 1, -5, 1000, 50_000] {
        let (name, addr) = ("diff_rec_sum", diff_rec_sum as *const () as u64);
        // SAFETY: diff_rec_sum takes and returns plain integers; the thread's stack holds
        // 50000 frames.
        let native = on_big_stack(move || unsafe { diff_rec_sum(n) });
        if n > 0 {
            assert_eq!(native, n * (n + 1) / 2, "native sum of 1..={n}");
        }
        compare(&mut g, name, || native, addr, &[n.rword()]);
    }
    let code = guest_code("diff_rec_sum", diff_rec_sum as *const () as u64);
    assert!(
        code.iter().any(|i| i.flow_control() == FlowControl::Call
            && i.near_branch_target() == diff_rec_sum as *const () as u64),
        "diff_rec_sum really calls itself"
    );
}

#[test]
fn tree_recursion_fibonacci() {
    let mut g = Guest::new();
    for n in sizes(&[0u32, 1, 2, 10, 15], &[22]) {
        let f = same!(&mut g, diff_fib(n));
        let (mut a, mut b) = (0u64, 1u64);
        for _ in 0..n {
            (a, b) = (b, a + b);
        }
        assert_eq!(f, a, "native fib({n})");
    }
}

#[test]
fn mutual_recursion_is_even_is_odd() {
    let mut g = Guest::with_stack(64 * MIB);
    for n in sizes(&[0u32, 1, 2, 9, 2000, 2001], &[100_000, 100_001]) {
        let e = same!(&mut g, diff_is_even(n));
        same!(&mut g, diff_is_odd(n));
        assert_eq!(e, (n % 2 == 0) as i32, "native is_even({n})");
    }
    for n in [0i64, 1, 2, 3, 10, 20_000] {
        let (name, addr) = ("diff_ping", diff_ping as *const () as u64);
        // SAFETY: plain integers; the thread's stack is large enough for the depth.
        let native = on_big_stack(move || unsafe { diff_ping(n) });
        compare(&mut g, name, || native, addr, &[n.rword()]);
    }
}

// ---- indirect control flow ----------------------------------------------------------------

#[test]
fn dense_switch_compiled_to_a_jump_table() {
    let code = guest_code("diff_switch_dense", diff_switch_dense as *const () as u64);
    assert!(
        has_jmp_through_register(&code),
        "diff_switch_dense dispatches through a jump table"
    );
    let code = guest_code("diff_switch_loop", diff_switch_loop as *const () as u64);
    assert!(
        has_jmp_through_register(&code),
        "diff_switch_loop dispatches through a jump table"
    );
    let mut g = Guest::new();
    for op in -2i64..16 {
        for x in [0i64, 1, -1, 12_345, i64::MIN + 1, i64::MAX] {
            same!(&mut g, diff_switch_dense(op, x));
        }
    }
    for seed in [0i64, 1, -99, 0x7fff_ffff_1234] {
        for n in [0u32, 1, 16, 5000] {
            same!(&mut g, diff_switch_loop(seed, n));
        }
    }
}

extern "C" fn rust_op(a: i64, b: i64) -> i64 {
    a.wrapping_mul(3).wrapping_sub(b.rotate_left(5))
}

#[test]
fn function_pointer_array_called_in_a_loop() {
    let code = guest_code("diff_fnptr_loop", diff_fnptr_loop as *const () as u64);
    assert!(
        code.iter()
            .any(|i| i.flow_control() == FlowControl::IndirectCall),
        "diff_fnptr_loop calls through a pointer"
    );
    let mut g = Guest::new();
    for seed in [0i64, 1, -1, 0x1234_5678, i64::MIN] {
        for n in [0u32, 1, 8, 1000] {
            same!(&mut g, diff_fnptr_loop(seed, n));
        }
    }
    let ops: [BinOp; 6] = [
        diff_op_add,
        diff_op_sub,
        diff_op_mul,
        diff_op_xor,
        diff_op_rotl,
        rust_op,
    ];
    for f in ops {
        for (a, b) in [(0i64, 0i64), (5, -3), (i64::MAX, 1), (-77, 63)] {
            same!(&mut g, diff_apply_twice(f, a, b));
        }
    }
}

#[test]
fn tail_calls_direct_and_through_pointers() {
    let target = diff_tail_target as *const () as u64;
    let code = guest_code("diff_tail_caller", diff_tail_caller as *const () as u64);
    assert!(
        code.iter()
            .any(|i| i.flow_control() == FlowControl::UnconditionalBranch
                && i.near_branch_target() == target)
            && !code.iter().any(|i| i.flow_control() == FlowControl::Call),
        "diff_tail_caller ends with a jmp to diff_tail_target"
    );
    let code = guest_code("diff_tail_indirect", diff_tail_indirect as *const () as u64);
    assert!(
        has_jmp_through_register(&code),
        "diff_tail_indirect tail-calls through a register"
    );
    let mut g = Guest::new();
    for x in EDGE_U64 {
        same!(&mut g, diff_tail_caller(x));
        same!(&mut g, diff_tail_countdown(x & 0xffff, x));
    }
    let ops: [BinOp; 3] = [diff_op_add, diff_op_rotl, rust_op];
    for f in ops {
        for (a, b) in [(0i64, 0i64), (i64::MAX, i64::MIN), (12, 34)] {
            same!(&mut g, diff_tail_indirect(f, a, b));
        }
    }
}

#[test]
fn indirect_jumps_and_calls_through_memory_and_ret_imm() {
    let mut g = Guest::new();
    for idx in 0u64..6 {
        for x in [0u64, 1, 0xffff_ffff, u64::MAX] {
            same!(&mut g, diff_asm_indirect_mem(idx, x));
        }
    }
}

#[test]
fn calls_and_jumps_through_a_slot_whose_value_changes() {
    let mut g = Guest::new();
    // Same value several times (the expected target), then the other one, then back.
    for i in [0u64, 0, 0, 1, 1, 0, 1, 0, 2, 3, 3, 2] {
        for x in [0u64, 7, u64::MAX] {
            same!(&mut g, diff_asm_slot_switch(i, x));
        }
    }
}

#[test]
fn rip_relative_tables_and_addresses() {
    let mut g = Guest::new();
    for i in 0u32..40 {
        same_buf!(&mut g, &[0xcc; 8], diff_rip_tables(i, OUT));
    }
    for i in [0u32, 3, 9, 10, 11, u32::MAX] {
        same!(&mut g, diff_switch_values(i));
    }
    for seed in [0u64, 1, u64::MAX] {
        same!(&mut g, diff_rip_rw(seed));
    }
    for i in 0u64..9 {
        same!(&mut g, diff_asm_riprel(i));
    }
    // The guest sees guest addresses: lea rip, call/pop and a pushed return address.
    for _ in 0..3 {
        same!(&mut g, diff_asm_lea_rip());
        same!(&mut g, diff_asm_get_pc());
        same!(&mut g, diff_asm_ret_addr());
    }
}

#[test]
fn red_zone_leaf_functions_keep_their_locals() {
    let code = guest_code("diff_redzone_leaf", diff_redzone_leaf as *const () as u64);
    assert!(
        code.iter()
            .any(|i| i.memory_base() == Register::RSP && (i.memory_displacement64() as i64) < 0),
        "diff_redzone_leaf stores below rsp"
    );
    assert!(
        !code
            .iter()
            .any(|i| i.op0_register() == Register::RSP && i.mnemonic() == Mnemonic::Sub),
        "diff_redzone_leaf does not move rsp"
    );
    let mut g = Guest::new();
    for a in EDGE_I64 {
        for b in [0i64, -1, 99] {
            same!(&mut g, diff_redzone_leaf(a, b));
        }
        for op in 0u32..13 {
            same!(&mut g, diff_redzone_switch(a, op));
        }
        same!(&mut g, diff_asm_red_zone(a as u64));
    }
}

// ---- floating point and vectors -----------------------------------------------------------

#[test]
fn sse_double_math() {
    let mut g = Guest::new();
    for a in EDGE_I64 {
        for b in [0i64, -12, 1, i64::MAX, i64::MIN, 77] {
            same_buf!(&mut g, &[0xcc; 104], diff_sse_double(a, b, OUT));
        }
    }
    for n in [0usize, 1, 7, 1000] {
        let x: Vec<f64> = (0..n).map(|i| (i as f64).sin() * 1e3).collect();
        let y: Vec<f64> = (0..n).map(|i| 1.0 / (i as f64 + 0.5)).collect();
        let (px, py) = (x.as_ptr(), y.as_ptr());
        same_buf!(&mut g, &[0xcc; 24], diff_sse_arrays(px, py, n, OUT));
    }
}

#[test]
fn mxcsr_rounding_modes_are_the_guests_own() {
    let mut g = Guest::new();
    for a in [0i64, 1, 2, -1, -2, 5, -5, i64::MAX, i64::MIN, 1_000_000_001] {
        let (_, out) = same_buf!(&mut g, &[0xcc; 64], diff_mxcsr_round(a, OUT));
        if a == 5 {
            // Native sanity: 5/3 rounds to 2 (nearest), 1 (down), 2 (up), 1 (toward zero).
            assert_eq!(words::<i64>(&out)[..4], [2, 1, 2, 1]);
        }
    }
}

#[test]
fn avx2_vector_loops() {
    if !(is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")) {
        eprintln!("skipped: the CPU lacks AVX2/FMA");
        return;
    }
    let mut g = Guest::new();
    for n in [0usize, 5, 8, 37, 256] {
        let a: Vec<i32> = words(&data(1, n * 4));
        let b: Vec<i32> = words(&data(2, n * 4));
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let out_len = n * 4;
        same_buf!(
            &mut g,
            &vec![0xcc; out_len + 32],
            diff_avx2_kernel(pa, pb, OUT, n, (OUT + out_len))
        );
        let x: Vec<f64> = (0..n).map(|i| i as f64 * 0.75 - 3.0).collect();
        let y: Vec<f64> = (0..n).map(|i| (i * i) as f64 / 7.0).collect();
        let (px, py) = (x.as_ptr(), y.as_ptr());
        for k in [0i64, 3, -17] {
            same_buf!(
                &mut g,
                &vec![0xcc; n * 8 + 8],
                diff_avx2_fma(px, py, OUT, n, k, (OUT + n * 8))
            );
        }
    }
}

#[test]
fn avx512_masked_vector_loops() {
    if !(is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw")) {
        eprintln!("skipped: the CPU lacks AVX-512F/BW");
        return;
    }
    let mut g = Guest::new();
    for n in [0usize, 1, 63, 64, 65, 1000] {
        let buf = data(3, n);
        let p = buf.as_ptr();
        for needle in [0u8, 0x80, buf.first().copied().unwrap_or(7)] {
            let (counts, _) =
                same_buf!(&mut g, &vec![0xcc; n], diff_avx512_bytes(p, n, needle, OUT));
            let eq = buf.iter().filter(|&&b| b == needle).count() as u64;
            assert_eq!(counts & 0xffff_ffff, eq, "native count of {needle:#x}");
        }
    }
    for n in [0usize, 1, 15, 16, 17, 300] {
        let a: Vec<i32> = words(&data(4, n * 4));
        let b: Vec<i32> = words(&data(5, n * 4));
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        same_buf!(
            &mut g,
            &vec![0xcc; n * 4 + 24],
            diff_avx512_dwords(pa, pb, n, OUT, (OUT + n * 4))
        );
    }
}

#[test]
fn avx512_upper_registers_and_masks_end_in_the_vm_state() {
    if !(is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512dq"))
    {
        eprintln!("skipped: the CPU lacks AVX-512F/BW/DQ");
        return;
    }
    let mut g = Guest::new();
    for a in [0u64, 1, 0x0123_4567_89ab_cdef, u64::MAX] {
        let (_, out) = same_buf!(&mut g, &[0xcc; 1080], diff_asm_avx512_hi(a, OUT));
        let fpr = g.vm.fpr_state();
        for r in 0..16 {
            assert_eq!(
                fpr.hi16_zmm[r][..],
                out[r * 64..r * 64 + 64],
                "zmm{} in the Vm's FprState",
                r + 16
            );
        }
        let k: Vec<u64> = words(&out[1024..1080]);
        assert_eq!(fpr.k[1..], k[..], "k1-k7 in the Vm's FprState");
    }
}

#[test]
fn x87_long_double_math() {
    let mut g = Guest::new();
    for a in EDGE_I64 {
        for b in [0i64, -1, 3, i64::MAX] {
            same_buf!(&mut g, &[0xcc; 160], diff_x87(a, b, OUT));
        }
    }
}

#[test]
fn x87_rounding_control_is_the_guests_own() {
    let mut g = Guest::new();
    for a in [0i64, 1, -1, 4, -4, 5, -5, i64::MAX, i64::MIN] {
        let (_, out) = same_buf!(&mut g, &[0xcc; 32], diff_x87_round(a, OUT));
        if a == -4 {
            // Native sanity: -4/3 rounds to -1 (nearest), -2 (down), -1 (up), -1 (toward zero).
            assert_eq!(words::<i64>(&out), [-1, -2, -1, -1]);
        }
    }
}

// ---- string instructions, cpuid, syscall, atomics ---------------------------------------------

#[test]
fn rep_movsb_stosq_scasb_cmpsb() {
    let mut g = Guest::new();
    for n in [0usize, 1, 7, 64, 1000, 4099] {
        let src = data(6, n);
        let p = src.as_ptr();
        let regs_at = 2 * n + 64;
        for needle in [0x42u8, src.get(n / 2).copied().unwrap_or(1)] {
            same_buf!(
                &mut g,
                &vec![0x11; regs_at + 80],
                diff_rep_strings(OUT, p, n, needle, (OUT + regs_at))
            );
        }
        same_buf!(
            &mut g,
            &vec![0x22; n + n / 2 + 16],
            diff_asm_std_movsb(OUT, p, (n as u64))
        );
    }
}

#[test]
fn cpuid_reports_the_same_registers() {
    let mut g = Guest::new();
    let mut max = [0u32; 4];
    let mut max_ext = [0u32; 4];
    // SAFETY: diff_cpuid writes four u32 to the array.
    unsafe {
        diff_cpuid(0, 0, max.as_mut_ptr());
        diff_cpuid(0x8000_0000, 0, max_ext.as_mut_ptr());
    }
    let leaves = [
        (0u32, 0u32),
        (1, 0),
        (4, 0),
        (7, 0),
        (7, 1),
        (0xd, 0),
        (0xd, 1),
        (0xd, 2),
    ];
    let ext = [
        (0x8000_0000u32, 0u32),
        (0x8000_0001, 0),
        (0x8000_0002, 0),
        (0x8000_0003, 0),
        (0x8000_0004, 0),
        (0x8000_0008, 0),
    ];
    let mut tested = 0;
    for (leaf, sub) in leaves
        .into_iter()
        .filter(|l| l.0 <= max[0])
        .chain(ext.into_iter().filter(|l| l.0 <= max_ext[0]))
    {
        let mut nat = [0u32; 4];
        // SAFETY: as above.
        unsafe { diff_cpuid(leaf, sub, nat.as_mut_ptr()) };
        let mut emu = [0u32; 4];
        g.call(
            "diff_cpuid",
            diff_cpuid as *const () as u64,
            &[leaf as u64, sub as u64, emu.as_mut_ptr() as u64],
        );
        if leaf == 1 {
            // EBX[31:24] is the initial APIC id of the CPU the thread happens to run on.
            nat[1] &= 0x00ff_ffff;
            emu[1] &= 0x00ff_ffff;
        }
        assert_eq!(
            emu, nat,
            "cpuid({leaf:#x}, {sub}): eax ebx ecx edx under the Vm vs native"
        );
        tested += 1;
    }
    assert!(tested >= 4, "the CPU reports at least a few cpuid leaves");
}

#[test]
fn syscall_instruction_in_the_guest() {
    let mut g = Guest::new();
    for _ in 0..3 {
        let pid = same!(&mut g, diff_asm_getpid());
        assert_eq!(pid, std::process::id() as u64);
        // rcx is the guest's next address, not the cache's.
        assert_eq!(same!(&mut g, diff_asm_syscall_rcx()), 0);
    }
}

#[test]
fn locked_atomics_and_bit_instructions() {
    let mut g = Guest::new();
    for v in EDGE_U64 {
        for seed in [0u64, 9] {
            let mut init = data(seed, 48);
            if seed == 0 {
                // mem[1] == mem[0] + v after the xadd: the first cmpxchg succeeds.
                init[..8].copy_from_slice(&5u64.to_le_bytes());
                init[8..16].copy_from_slice(&5u64.wrapping_add(v).to_le_bytes());
            }
            same_buf!(&mut g, &init, diff_asm_atomics(OUT, v));
        }
    }
}

// ---- libc -------------------------------------------------------------------------------------

#[test]
fn malloc_realloc_free_churn() {
    let mut g = Guest::new();
    for n in sizes(&[0u32, 1, 13], &[50, 500]) {
        let h = same!(&mut g, diff_malloc_churn(n));
        assert_ne!(h, u64::MAX, "native allocations succeed");
    }
}

#[test]
fn memcpy_memmove_memset_memcmp_memchr() {
    let mut g = Guest::new();
    for n in [0usize, 1, 15, 100, 4096] {
        let src = data(7, n);
        let p = src.as_ptr();
        same_buf!(&mut g, &vec![0x33; 2 * n + 16], diff_mem_ops(p, OUT, n));
    }
}

#[test]
fn qsort_calls_a_comparator_in_the_guest() {
    let mut g = Guest::new();
    for (n, m) in [(0usize, 0usize), (1, 3), (5, 0), (300, 100)] {
        let keys: Vec<i64> = words::<i64>(&data(8, n * 8))
            .into_iter()
            .map(|k| k % 17)
            .collect();
        let mut recs = Vec::new();
        for (i, k) in keys.iter().enumerate() {
            recs.extend([*k, i as i64]);
        }
        let mut init = bytes_of(&recs);
        init.extend(data(9, m * 4));
        let words_at = n * 16;
        let (_, out) = same_buf!(&mut g, &init, diff_qsort(OUT, n, (OUT + words_at), m));
        let sorted: Vec<i64> = words(&out[..words_at]);
        let mut expected: Vec<(i64, i64)> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| (*k, i as i64))
            .collect();
        expected.sort();
        let got: Vec<(i64, i64)> = sorted.chunks(2).map(|c| (c[0], c[1])).collect();
        assert_eq!(got, expected, "native qsort order");
    }
}

/// MXCSR and x87 exception flags, and errno, as the guest sees them between its own
/// instructions and around native libm/libc calls: callbacks that raise flags or set errno
/// must leave no trace.
#[test]
fn fp_exception_flags_and_errno_are_the_guests_own() {
    let mut g = Guest::new();
    for a in [0i64, 1, 2, 3, -1, -2, 5, 1_000_003] {
        let (_, out) = same_buf!(&mut g, &[0xcc; 96], diff_fp_env(a, OUT));
        let w = words::<i64>(&out);
        // Native sanity: exact arithmetic raised nothing; the guest's errno survived.
        assert_eq!(w[..3], [0, 0, 0], "native flags after exact arithmetic");
        assert_eq!(w[9], 1234, "native errno kept");
        assert_eq!(w[11], 0, "native flags after an exact multiply");
    }
}

#[test]
fn snprintf_formats_like_native() {
    let mut g = Guest::new();
    for (a, b, c) in [
        (0i64, 0u32, 0i32),
        (-12_345_678_901, 0xdead_beef, -7),
        (i64::MAX, u32::MAX, i32::MIN),
        (3, 25, 1),
    ] {
        for cap in [256usize, 10, 1, 0] {
            let (len, out) = same_buf!(&mut g, &[0xee; 256], diff_snprintf(OUT, cap, a, b, c));
            if cap == 256 {
                let text = CStr::from_bytes_until_nul(&out).expect("a NUL-terminated string");
                assert_eq!(
                    text.to_bytes().len(),
                    len as usize,
                    "native snprintf length"
                );
            }
        }
    }
}

#[test]
fn strtol_sets_errno_erange_like_native() {
    let mut g = Guest::new();
    let cases: [(&CStr, i32, i32); 10] = [
        (c"123", 10, 0),
        (c"-9223372036854775809", 10, 0),
        (c"99999999999999999999", 10, 0),
        (c"0x7fffffffffffffff", 16, 0),
        (c"  -42xyz", 0, 0),
        (c"", 10, 0),
        (c"zz", 36, 0),
        (c"123", 10, 1234),
        (c"9223372036854775808", 10, 77),
        (c"-0", 8, libc::EINVAL),
    ];
    let addr = diff_strtol as *const () as u64;
    for (s, base, initial) in cases {
        let mut nat_end = -1i64;
        set_errno(initial);
        // SAFETY: s is NUL-terminated and nat_end a live i64.
        let native = unsafe { diff_strtol(s.as_ptr(), base, &mut nat_end) };
        let native_errno = errno();
        let mut vm_end = -1i64;
        set_errno(initial);
        g.vm.set_errno(initial);
        let got = g.call(
            "diff_strtol",
            addr,
            &[s.as_ptr().rword(), base.rword(), (&raw mut vm_end).rword()],
        ) as i64;
        let (vm_errno, thread_errno) = (g.vm.errno(), errno());
        assert_eq!(
            (got, vm_end),
            (native, nat_end),
            "strtol({s:?}, {base}) value and end"
        );
        assert_eq!(vm_errno, native_errno, "strtol({s:?}, {base}): vm.errno()");
        assert_eq!(
            thread_errno, native_errno,
            "strtol({s:?}, {base}): errno after the run"
        );
        if s == c"99999999999999999999" {
            assert_eq!(
                (native, native_errno),
                (i64::MAX, libc::ERANGE),
                "native overflow"
            );
        }
    }
    // Lists of strings for strtoul; the guest resets errno before each and counts ERANGE:
    // (strings, ERANGE count, errno left by the last one).
    let lists: [(&[&CStr], i32, i32); 3] = [
        (
            &[
                c"1",
                c"18446744073709551616",
                c"0x10",
                c"-1",
                c"99999999999999999999999",
                c"7",
            ],
            2,
            0,
        ),
        (&[c"18446744073709551615", c"0", c"", c"0777"], 0, 0),
        (&[c"0xffffffffffffffffff"], 1, libc::ERANGE),
    ];
    for (strs, erange, last) in lists {
        let ptrs: Vec<*const c_char> = strs.iter().map(|s| s.as_ptr()).collect();
        let p = ptrs.as_ptr();
        let n = ptrs.len();
        set_errno(0);
        g.vm.set_errno(0);
        let (ranges, _) = same_buf!(&mut g, &[0xcc; 48], diff_strtoul_count_erange(p, n, OUT));
        assert_eq!(ranges, erange, "native ERANGE count of {strs:?}");
        assert_eq!(
            g.vm.errno(),
            last,
            "vm.errno() after the last strtoul of {strs:?}"
        );
        assert_eq!(
            errno(),
            last,
            "errno after the run, last strtoul of {strs:?}"
        );
    }
}

#[test]
fn setjmp_and_longjmp_between_guest_frames() {
    let mut g = Guest::new();
    for n in [0i32, 1, 2, 7, 50] {
        same!(&mut g, diff_setjmp_loop(n));
    }
}

#[test]
fn alloca_and_variable_length_arrays() {
    let mut g = Guest::new();
    for n in sizes(&[-5i32, 0, 1, 10, 97, 1000], &[20_000]) {
        same!(&mut g, diff_vla(n));
    }
    for n in sizes(&[0usize, 1, 100, 5000], &[100_000]) {
        same!(&mut g, diff_alloca(n));
    }
}

// ---- calling convention -------------------------------------------------------------------------

#[test]
fn varargs_function_called_by_a_guest_function() {
    let mut g = Guest::new();
    for (a, b, c) in [
        (0i32, 0i32, 0i32),
        (1, 2, 3),
        (-100, 7, i32::MAX),
        (i32::MIN, -1, 12_345),
    ] {
        let (_, out) = same_buf!(&mut g, &[0xcc; 8], diff_va_caller(a, b, c, OUT));
        assert_ne!(out, [0xcc; 8], "native wrote the double sum");
    }
    // Called directly too (al is whatever rax holds: the prologue must cope).
    let addr = diff_va_sum as *const () as u64;
    for (n, args) in [
        (0i32, [0i32; 8]),
        (3, [5, -6, 7, 0, 0, 0, 0, 0]),
        (8, [1, 2, 3, 4, 5, 6, 7, 8]),
    ] {
        let [a0, a1, a2, a3, a4, a5, a6, a7] = args;
        // SAFETY: n counts the int arguments that follow (never more than the 8 passed).
        let native = || unsafe { diff_va_sum(n, a0, a1, a2, a3, a4, a5, a6, a7) };
        let mut vm_args = vec![n.rword()];
        vm_args.extend(args.iter().map(|a| a.rword()));
        compare(&mut g, "diff_va_sum", native, addr, &vm_args);
    }
}

#[test]
fn struct_returns_by_value_through_the_hidden_pointer() {
    let mut g = Guest::new();
    for x in EDGE_I64 {
        for y in [0i64, -3, 1 << 40] {
            same_buf!(&mut g, &[0xcc; 88], diff_struct_returns(x, y, OUT));
        }
    }
}

#[test]
fn stack_args_eight_integer_arguments() {
    let mut g = Guest::new();
    for v in EDGE_I64 {
        same!(&mut g, diff_args8(v, 1, 2, 3, 4, 5, 6, 7));
        same!(
            &mut g,
            diff_args8(0, 0, 0, 0, 0, 0, v, v.wrapping_add(1).wrapping_neg())
        );
        same!(&mut g, diff_args8(v, v, v, v, v, v, v, v));
    }
}

#[test]
fn stack_args_nine_arguments_odd_count_keeps_alignment() {
    let mut g = Guest::new();
    for v in EDGE_I64 {
        same!(&mut g, diff_args9(1, 2, 3, 4, 5, 6, 7, 8, v));
        same!(&mut g, diff_args9(v, -1, v, -1, v, -1, v, -1, 9));
        same!(&mut g, diff_args9(i64::MIN, i64::MAX, 0, 0, 0, 0, v, v, v));
    }
}

#[test]
fn stack_args_twelve_mixed_width_signed_and_unsigned() {
    let mut g = Guest::new();
    type Args12 = (i8, u8, i16, u16, i32, u32, i64, u64, i32, i8, u16, i64);
    let cases: [Args12; 4] = [
        (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0),
        (
            -1,
            255,
            -1,
            65_535,
            -1,
            u32::MAX,
            -1,
            u64::MAX,
            -1,
            -1,
            65_535,
            -1,
        ),
        (
            i8::MIN,
            128,
            i16::MIN,
            32_768,
            i32::MIN,
            1 << 31,
            i64::MIN,
            1 << 63,
            i32::MAX,
            i8::MAX,
            1,
            i64::MAX,
        ),
        (5, 6, -7, 8, -9, 10, -11, 12, -13, 14, 15, -16),
    ];
    for (a, b, c, d, e, f, gg, h, i, j, k, l) in cases {
        same!(&mut g, diff_args12(a, b, c, d, e, f, gg, h, i, j, k, l));
    }
}

#[test]
fn stack_args_forwarded_between_guest_functions() {
    let mut g = Guest::new();
    for v in EDGE_I64 {
        same!(&mut g, diff_args10_forward(v, 2, 3, 4, 5, 6, 7, 8, 9, 10));
        same!(
            &mut g,
            diff_args10_forward(
                -1,
                v,
                -300,
                v,
                70_000,
                v.wrapping_mul(3).wrapping_neg(),
                v,
                1,
                v,
                -128
            )
        );
        same!(&mut g, diff_args10_forward(v, v, v, v, v, v, v, v, v, v));
    }
}

#[test]
fn stack_args_pointer_and_count_on_the_stack() {
    let mut g = Guest::new();
    for n in [0i64, 1, 6, 13, 100] {
        for v in [0i64, -1, i64::MAX] {
            same_buf!(
                &mut g,
                &vec![0xcc; 8 * n as usize + 8],
                diff_args8_out(v, 2, (-3), 4, v, 6, OUT, n)
            );
        }
    }
}

#[test]
fn stack_args_sixteen_arguments() {
    let mut g = Guest::new();
    for v in EDGE_U64 {
        same!(
            &mut g,
            diff_args16(v, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15)
        );
        same!(
            &mut g,
            diff_args16(0, 0, 0, 0, 0, 0, v, v, v, v, v, v, v, v, v, !v)
        );
    }
}

// ---- programs -----------------------------------------------------------------------------------

#[test]
fn bytecode_interpreter_with_switch_dispatch() {
    let code = guest_code("diff_interp_switch", diff_interp_switch as *const () as u64);
    assert!(
        has_jmp_through_register(&code),
        "diff_interp_switch dispatches through a jump table"
    );
    interpreter_cases(diff_interp_switch, "diff_interp_switch");
}

#[test]
fn bytecode_interpreter_with_computed_goto_dispatch() {
    let code = guest_code("diff_interp_goto", diff_interp_goto as *const () as u64);
    assert!(
        has_jmp_through_register(&code),
        "diff_interp_goto dispatches with goto *"
    );
    interpreter_cases(diff_interp_goto, "diff_interp_goto");
}

fn interpreter_cases(f: unsafe extern "C" fn(u32, i64) -> i64, name: &str) {
    let mut g = Guest::new();
    let addr = f as *const () as u64;
    let cases: [(u32, Vec<i64>); 5] = [
        (0, sizes(&[0, 1, 10, 300], &[100_000])),
        (1, vec![1, 27, 97, 871]),
        (2, vec![0, 1, 2, 50, 90, 200]),
        (3, vec![0, -1, 12_345, i64::MIN]),
        (7, vec![5]),
    ];
    for (which, inputs) in cases {
        for input in inputs {
            // SAFETY: plain integers.
            let native = compare(
                &mut g,
                name,
                || unsafe { f(which, input) },
                addr,
                &[which.rword(), input.rword()],
            );
            let expected = match which {
                0 => Some(
                    (1..=input as u64).fold(0u64, |s, i| s.wrapping_add(i.wrapping_mul(i))) as i64,
                ),
                1 => {
                    let (mut x, mut steps) = (input as u64, 0i64);
                    while x != 1 {
                        x = if x % 2 == 1 { 3 * x + 1 } else { x / 2 };
                        steps += 1;
                    }
                    Some(steps)
                }
                2 => {
                    let (mut a, mut b) = (0u64, 1u64);
                    for _ in 0..input {
                        (a, b) = (b, a.wrapping_add(b));
                    }
                    Some(a as i64)
                }
                7 => Some(i64::MIN),
                _ => None,
            };
            if let Some(e) = expected {
                assert_eq!(native, e, "native program {which} on {input}");
            }
        }
    }
}

#[test]
fn state_machine_lexer() {
    let mut g = Guest::new();
    let long: String = (0..200)
        .map(|i| format!("v{i} = {i}.5 * \"s\\\"{i}\" + {i};\n"))
        .collect();
    let long = std::ffi::CString::new(long).unwrap();
    let inputs: [&CStr; 6] = [
        c"",
        c"x = 42 + y1*3.14",
        c"\"str\\\"ing\" 12.5.6 @# <<= foo_bar",
        c"\"unterminated",
        c"a\\",
        &long,
    ];
    for s in inputs {
        let p = s.as_ptr();
        let (tokens, out) = same_buf!(&mut g, &[0xcc; 24], diff_lexer(p, OUT));
        if s == c"x = 42 + y1*3.14" {
            assert_eq!(
                (tokens, words::<u32>(&out)),
                (7, vec![1, 1, 2, 3, 0, 0]),
                "native lexer"
            );
        }
    }
}

#[test]
fn sha256_of_buffers() {
    let mut g = Guest::new();
    for len in sizes(&[0usize, 3, 55, 56, 63, 64, 65, 1000], &[100_000]) {
        let input = if len == 3 {
            b"abc".to_vec()
        } else {
            data(10, len)
        };
        let p = input.as_ptr();
        let (_, digest) = same_buf!(&mut g, &[0xcc; 32], diff_sha256(p, len, OUT));
        if len == 3 {
            let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(
                hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
                "native sha256(abc)"
            );
        }
    }
}

#[test]
fn crc32_table_and_bitwise() {
    let mut g = Guest::new();
    for len in sizes(&[0usize, 1, 9, 1000], &[65_536]) {
        let input = if len == 9 {
            b"123456789".to_vec()
        } else {
            data(11, len)
        };
        let p = input.as_ptr();
        let t = same!(&mut g, diff_crc32_table(p, len));
        let b = same!(&mut g, diff_crc32_bitwise(p, len));
        assert_eq!(t, b, "native table and bitwise CRCs agree");
        if len == 9 {
            assert_eq!(t, 0xcbf4_3926, "native crc32(123456789)");
        }
    }
}

#[test]
fn string_functions_in_c() {
    let mut g = Guest::new();
    let long = std::ffi::CString::new("ab c".repeat(300)).unwrap();
    let texts: [&CStr; 6] = [
        c"",
        c"a",
        c"hello world",
        c"  two  words\t\nthree ",
        c"\x01\x7f\xff",
        &long,
    ];
    for s in texts {
        let p = s.as_ptr();
        let n = same!(&mut g, diff_strlen(p));
        assert_eq!(n, s.to_bytes().len());
        let init = s.to_bytes_with_nul();
        let (_, out) = same_buf!(&mut g, init, diff_strrev(OUT));
        let mut rev = s.to_bytes().to_vec();
        rev.reverse();
        assert_eq!(&out[..n], &rev[..], "native strrev");
        same_buf!(&mut g, init, diff_upper_words(OUT));
    }
    let numbers: [&CStr; 10] = [
        c"",
        c"  -123abc",
        c"+42",
        c"9223372036854775807",
        c"9223372036854775808",
        c"-9223372036854775808",
        c"-99999999999999999999999",
        c"abc",
        c"-",
        c"\t007",
    ];
    for s in numbers {
        let p = s.as_ptr();
        let (v, out) = same_buf!(&mut g, &[0xcc; 8], diff_atoi(p, OUT));
        if s == c"  -123abc" {
            assert_eq!((v, words::<i64>(&out)[0]), (-123, 6), "native atoi");
        }
    }
}

#[test]
fn insertion_sort_and_quicksort_in_c() {
    let mut g = Guest::new();
    for n in [0usize, 1, 2, 50, 300] {
        let mut v: Vec<i32> = words(&data(12, n * 4));
        if n > 2 {
            v[1] = i32::MIN;
            v[2] = i32::MAX;
            v[n - 1] = v[0];
        }
        let (_, out) = same_buf!(&mut g, &bytes_of(&v), diff_insertion_sort(OUT, n));
        v.sort();
        assert_eq!(words::<i32>(&out), v, "native insertion sort");
    }
    for n in sizes(&[0usize, 1, 2, 1000], &[5000]) {
        let mut v: Vec<i64> = words(&data(13, n * 8));
        if n > 2 {
            v[0] = i64::MIN;
            v[1] = i64::MAX;
            for i in (0..n).step_by(7) {
                v[i] %= 10;
            }
        }
        let (_, out) = same_buf!(&mut g, &bytes_of(&v), diff_quicksort(OUT, n));
        v.sort();
        assert_eq!(words::<i64>(&out), v, "native quicksort");
    }
}

#[test]
fn matrix_multiply() {
    let mut g = Guest::new();
    for n in [1usize, 3, 8, 17] {
        let a: Vec<f64> = (0..n * n).map(|i| (i as f64 * 0.37).cos()).collect();
        let b: Vec<f64> = (0..n * n).map(|i| i as f64 / 3.0 - 2.0).collect();
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        same_buf!(
            &mut g,
            &vec![0xcc; n * n * 8],
            diff_matmul_f64(pa, pb, OUT, n)
        );
        let ai: Vec<i32> = words(&data(14, n * n * 4));
        let bi: Vec<i32> = words(&data(15, n * n * 4));
        let (pa, pb) = (ai.as_ptr(), bi.as_ptr());
        let (_, out) = same_buf!(
            &mut g,
            &vec![0xcc; n * n * 4],
            diff_matmul_i32(pa, pb, OUT, n)
        );
        let c: Vec<i32> = words(&out);
        let c00 = (0..n).fold(0i32, |s, k| s.wrapping_add(ai[k].wrapping_mul(bi[k * n])));
        assert_eq!(c[0], c00, "native c[0][0]");
    }
}

#[test]
fn hash_table_in_c() {
    let mut g = Guest::new();
    for n in sizes(&[0u32, 100, 2000], &[20_000]) {
        for seed in [0u64, 42, u64::MAX] {
            let (_, out) = same_buf!(&mut g, &[0xcc; 32], diff_hash_table(n, seed, OUT));
            let stats: Vec<u64> = words(&out);
            assert_eq!(stats[2] + stats[3], 334, "native lookups of 0, 3, .. 999");
        }
    }
}
