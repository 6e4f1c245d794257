//! Memory access recording: what `inst_memory_access()` reports in PreInst and PostInst for a
//! table of hand-written instructions (`tests/guest/mem_insns.S`, one instruction per
//! `mem_t_*` function, run alone with registers and memory set up here), the accesses of a
//! whole block at SEQUENCE_EXIT / BASIC_BLOCK_EXIT, `OPT_DISABLE_MEMORYACCESS_VALUE`, and
//! which instructions the memory callbacks (`add_mem_access_cb`, `add_mem_addr_cb`,
//! `add_mem_range_cb`) fire on.
//!
//! Expected accesses are written from the instructions' semantics: addresses from the
//! registers the test sets, values read from the memory before the run (or, for the stack
//! protector canary, read natively through fs), values written from the registers stored.

use iced_x86::{Decoder, DecoderOptions, Instruction};
use qbdi_core::*;
use std::cell::RefCell;
use std::rc::Rc;

unsafe extern "C" {
    fn smoke_fill(out: *mut i64, n: i64);
    fn smoke_sum(inp: *const i64, n: i64) -> i64;
}

// The guest functions of mem_insns.S: only their addresses are used, they are never called
// natively.
macro_rules! guest_fns {
    ($($f:ident),* $(,)?) => {
        unsafe extern "C" { $( fn $f(); )* }
    };
}

guest_fns!(
    mem_t_load8,
    mem_t_load16,
    mem_t_load32,
    mem_t_load64,
    mem_t_store8,
    mem_t_store16,
    mem_t_store32,
    mem_t_store64,
    mem_t_movzx8,
    mem_t_movzx16,
    mem_t_movsx16,
    mem_t_movsxd,
    mem_t_cmp_byte,
    mem_t_rip_load,
    mem_t_fs_load,
    mem_t_add_rw,
    mem_t_inc_dword,
    mem_t_xchg,
    mem_t_cmpxchg,
    mem_t_lock_xadd,
    mem_t_add_rax_base,
    mem_t_xchg_rax_index,
    mem_t_push_reg,
    mem_t_pop_reg,
    mem_t_push_mem,
    mem_t_pop_mem,
    mem_t_pushfq,
    mem_t_popfq,
    mem_t_enter,
    mem_t_leave,
    mem_t_call,
    mem_t_call_mem,
    mem_t_jmp_mem,
    mem_t_ret,
    mem_callee,
    mem_landing,
    mem_t_movsb,
    mem_t_movsw,
    mem_t_movsd,
    mem_t_movsq,
    mem_t_stosb,
    mem_t_stosw,
    mem_t_stosd,
    mem_t_stosq,
    mem_t_lodsb,
    mem_t_lodsw,
    mem_t_lodsd,
    mem_t_lodsq,
    mem_t_cmpsb,
    mem_t_cmpsw,
    mem_t_cmpsd,
    mem_t_cmpsq,
    mem_t_scasb,
    mem_t_scasw,
    mem_t_scasd,
    mem_t_scasq,
    mem_t_rep_movsb,
    mem_t_rep_stosq,
    mem_t_repe_cmpsb,
    mem_t_repne_scasb,
    mem_t_movaps_load,
    mem_t_movups_store,
    mem_t_movdqu_load,
    mem_t_movdqu_store,
    mem_t_vmovdqu_load,
    mem_t_vmovdqu_store,
    mem_t_zmm_store,
    mem_t_gather,
    mem_t_xsave,
    mem_t_xrstor,
    mem_t_xlatb,
    mem_t_bt_far,
    mem_t_bt_back,
    mem_t_bts_dword,
    mem_t_btr_word,
    mem_t_btc_rcx,
    mem_t_addr32,
    mem_t_fs_reg,
    mem_t_push_rsp_rel,
    mem_t_pop_rsp_rel,
    mem_t_enter_nested,
    mem_t_ret_imm,
    mem_t_lea,
    mem_t_nop_mem,
    mem_t_prefetch,
    mem_t_cmpxchg16b,
    mem_t_maskmovdqu,
    mem_t_fld80,
    mem_t_fld64,
    mem_t_fstp64,
    mem_t_vmaskmovps_store,
    mem_t_zmm_masked_store,
    mem_t_scatter,
    mem_bb4,
    mem_probe,
);

unsafe extern "C" {
    /// The quadword `mem_t_rip_load` loads (0x0123456789abcdef).
    static mem_rodata_qword: u64;
}

type GuestFn = unsafe extern "C" fn();

fn addr(f: GuestFn) -> u64 {
    f as *const () as u64
}

const R: MemoryAccessType = MemoryAccessType::READ;
const W: MemoryAccessType = MemoryAccessType::WRITE;
const RW: MemoryAccessType = MemoryAccessType::READ_WRITE;
const NO_FLAGS: MemoryAccessFlags = MemoryAccessFlags::empty();
const UNKNOWN_VALUE: MemoryAccessFlags = MemoryAccessFlags::UNKNOWN_VALUE;
const UNKNOWN_SIZE: MemoryAccessFlags = MemoryAccessFlags::UNKNOWN_SIZE;
const MINIMUM_SIZE: MemoryAccessFlags = MemoryAccessFlags::MINIMUM_SIZE;

/// EFLAGS with the direction flag set (IF and the reserved bit 1 as always).
const EFLAGS_DF: u64 = 0x602;
const EFLAGS: u64 = 0x202;

// ---- the data the guest instructions touch ----------------------------------------------

const BUF_LEN: usize = 4096;
/// Source and destination of the string instructions (offsets in the buffer). They differ
/// modulo 256, so with `pattern` the two regions never hold the same bytes at the same index.
const SRC: u64 = 0x200;
const DST: u64 = 0x310;
/// Bytes of the stack around `Env::sp` the tests own and fill: [sp - STACK_WINDOW, sp + STACK_WINDOW).
const STACK_WINDOW: u64 = 256;

/// Byte `i` of the buffer before each case: a bijection on every 256 consecutive bytes, so a
/// byte value occurs once in any 256-byte window.
fn pattern(i: u64) -> u8 {
    (i as u8).wrapping_mul(0x9d).wrapping_add(0x31)
}

/// The data buffer (64-byte aligned, for movaps and xsave) and the part of the guest stack
/// the cases use.
struct Env {
    buf: AlignedBuf,
    /// rsp of the cases: 4 KiB below the top of the virtual stack.
    sp: u64,
    _stack: VirtualStack,
    /// A page below 4 GiB (for 32-bit addressing), if the kernel gave one.
    low: Option<u64>,
}

/// Bytes of the page below 4 GiB.
const LOW_LEN: u64 = 4096;

impl Drop for Env {
    fn drop(&mut self) {
        if let Some(low) = self.low {
            // SAFETY: `low` is our own mapping of LOW_LEN bytes, unmapped once here.
            unsafe { libc::munmap(low as *mut libc::c_void, LOW_LEN as usize) };
        }
    }
}

impl Env {
    fn new(vm: &mut Vm) -> Env {
        let stack = allocate_virtual_stack(vm.gpr_state_mut(), 1 << 20).expect("guest stack");
        let sp = vm.gpr_state().rsp - 4096;
        // SAFETY: a new anonymous private mapping; the result is checked.
        let low = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                LOW_LEN as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_32BIT,
                -1,
                0,
            )
        };
        let low =
            (low != libc::MAP_FAILED && (low as u64) + LOW_LEN <= 1 << 32).then_some(low as u64);
        Env {
            buf: aligned_alloc(BUF_LEN, 64).expect("data buffer"),
            sp,
            _stack: stack,
            low,
        }
    }

    /// The page below 4 GiB (cases that need it are skipped without it).
    fn low(&self) -> u64 {
        self.low.expect("a page below 4 GiB")
    }

    /// Address of byte `off` of the buffer.
    fn b(&self, off: u64) -> u64 {
        self.buf.addr() + off
    }

    /// Panics unless `[addr, addr + len)` lies in the buffer, the stack window or the low
    /// page.
    fn assert_owned(&self, addr: u64, len: u64) {
        let in_buf = addr >= self.b(0) && addr + len <= self.b(BUF_LEN as u64);
        let in_stack = addr >= self.sp - STACK_WINDOW && addr + len <= self.sp + STACK_WINDOW;
        let in_low = self
            .low
            .is_some_and(|low| addr >= low && addr + len <= low + LOW_LEN);
        assert!(
            in_buf || in_stack || in_low,
            "{addr:#x}+{len} is outside the test's memory"
        );
    }

    /// Fills the buffer, the stack window and the low page with `pattern`.
    fn reset(&mut self) {
        for (i, byte) in self.buf.iter_mut().enumerate() {
            *byte = pattern(i as u64);
        }
        for i in 0..2 * STACK_WINDOW {
            self.write(self.sp - STACK_WINDOW + i, &[pattern(i + 77)]);
        }
        if let Some(low) = self.low {
            for i in 0..LOW_LEN {
                self.write(low + i, &[pattern(i + 151)]);
            }
        }
    }

    fn write(&mut self, addr: u64, bytes: &[u8]) {
        self.assert_owned(addr, bytes.len() as u64);
        // SAFETY: the destination lies in the buffer, the stack window or the low page
        // (checked above), all owned by this Env and not borrowed elsewhere while the guest
        // is not running.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), addr as *mut u8, bytes.len()) }
    }

    fn write_u64(&mut self, addr: u64, value: u64) {
        self.write(addr, &value.to_le_bytes());
    }

    /// The `size`-byte little-endian value at `addr`.
    fn rd(&self, addr: u64, size: u16) -> u64 {
        self.assert_owned(addr, u64::from(size));
        let mut bytes = [0u8; 8];
        // SAFETY: the source lies in the buffer, the stack window or the low page (checked
        // above), and size <= 8.
        unsafe {
            std::ptr::copy_nonoverlapping(addr as *const u8, bytes.as_mut_ptr(), usize::from(size))
        };
        u64::from_le_bytes(bytes)
    }

    /// A read of `size` bytes at `addr`, with the value memory holds now.
    fn read_at(&self, addr: u64, size: u16) -> Exp {
        read(addr, size, self.rd(addr, size))
    }
}

// ---- expected accesses ------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq)]
enum Size {
    Exact(u16),
    /// A MINIMUM_SIZE access: the reported size is a lower bound of what the instruction
    /// accesses, so at least 1 and at most this many bytes.
    AtMost(u16),
    /// Any non-zero size (gathers: element or vector size).
    NonZero,
}

#[derive(Clone, Copy, Debug)]
struct Exp {
    addr: u64,
    size: Size,
    ty: MemoryAccessType,
    value: u64,
    flags: MemoryAccessFlags,
}

impl Exp {
    fn matches(&self, a: &MemoryAccess) -> bool {
        let size_ok = match self.size {
            Size::Exact(n) => a.size == n,
            Size::AtMost(n) => a.size >= 1 && a.size <= n,
            Size::NonZero => a.size > 0,
        };
        size_ok
            && a.access_address == self.addr
            && a.access_type == self.ty
            && a.value == self.value
            && a.flags == self.flags
    }
}

fn read(addr: u64, size: u16, value: u64) -> Exp {
    Exp {
        addr,
        size: Size::Exact(size),
        ty: R,
        value,
        flags: NO_FLAGS,
    }
}

fn write(addr: u64, size: u16, value: u64) -> Exp {
    Exp {
        ty: W,
        ..read(addr, size, value)
    }
}

/// A read whose value is not recorded (wider than 8 bytes, or a `rep` span).
fn read_nv(addr: u64, size: u16) -> Exp {
    Exp {
        flags: UNKNOWN_VALUE,
        ..read(addr, size, 0)
    }
}

fn write_nv(addr: u64, size: u16) -> Exp {
    Exp {
        ty: W,
        ..read_nv(addr, size)
    }
}

/// A `rep` string read in PreInst: the start pointer, size not known yet.
fn rep_pending(addr: u64) -> Exp {
    Exp {
        flags: UNKNOWN_SIZE | UNKNOWN_VALUE,
        ..read(addr, 0, 0)
    }
}

/// What one instruction must report.
struct Expect {
    pre: Vec<Exp>,
    post: Vec<Exp>,
}

/// PostInst has `post`; PreInst has its reads.
fn plain(post: Vec<Exp>) -> Expect {
    Expect {
        pre: post.iter().filter(|e| e.ty == R).copied().collect(),
        post,
    }
}

/// The instruction under test.
#[derive(Clone, Copy)]
struct Site {
    /// The address after the instruction (a call's return address).
    next: u64,
}

type Setup = Box<dyn Fn(&mut Env, &mut GprState, &mut FprState, Site) -> Expect>;

struct Case {
    name: String,
    func: GuestFn,
    /// Where the run stops (default: after the instruction).
    stop: Option<GuestFn>,
    /// CPU feature the instruction needs.
    needs: Option<&'static str>,
    setup: Setup,
}

fn case(
    name: &str,
    func: GuestFn,
    setup: impl Fn(&mut Env, &mut GprState, &mut FprState, Site) -> Expect + 'static,
) -> Case {
    Case {
        name: name.to_string(),
        func,
        stop: None,
        needs: None,
        setup: Box::new(setup),
    }
}

impl Case {
    fn stop_at(mut self, f: GuestFn) -> Case {
        self.stop = Some(f);
        self
    }

    fn needs(mut self, feature: &'static str) -> Case {
        self.needs = Some(feature);
        self
    }
}

fn cpu_has(feature: &str) -> bool {
    match feature {
        "avx" => is_x86_feature_detected!("avx"),
        "avx2" => is_x86_feature_detected!("avx2"),
        "avx512f" => is_x86_feature_detected!("avx512f"),
        "xsave" => is_x86_feature_detected!("xsave"),
        "cmpxchg16b" => is_x86_feature_detected!("cmpxchg16b"),
        "sse2" => is_x86_feature_detected!("sse2"),
        _ => panic!("unknown feature {feature}"),
    }
}

/// This thread's FS base, from the kernel.
fn fs_base() -> u64 {
    let mut base = 0u64;
    const ARCH_GET_FS: libc::c_long = 0x1003;
    // SAFETY: ARCH_GET_FS stores the FS base into the u64 we pass a pointer to.
    let r = unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_GET_FS, &mut base as *mut u64) };
    assert_eq!(r, 0, "arch_prctl(ARCH_GET_FS)");
    base
}

/// The stack protector canary, read natively as compiled code does.
fn native_canary() -> u64 {
    let v: u64;
    // SAFETY: fs:[0x28] is the canary slot of this thread's TCB (x86-64 glibc); a plain load.
    unsafe {
        std::arch::asm!("mov {}, qword ptr fs:[0x28]", out(reg) v, options(nostack, readonly, preserves_flags))
    };
    v
}

/// The table. Every case starts with the buffer and stack window filled with `pattern`,
/// rdi = buffer, rsp = `Env::sp`, other registers 0, EFLAGS 0x202, and a default FPU state.
fn cases() -> Vec<Case> {
    let mut t = vec![
        // -- loads and stores of 1, 2, 4, 8 bytes
        case("mov al, [rdi+3]", mem_t_load8, |e, _, _, _| {
            plain(vec![e.read_at(e.b(3), 1)])
        }),
        case("mov ax, [rdi+6]", mem_t_load16, |e, _, _, _| {
            plain(vec![e.read_at(e.b(6), 2)])
        }),
        case("mov eax, [rdi+12]", mem_t_load32, |e, _, _, _| {
            plain(vec![e.read_at(e.b(12), 4)])
        }),
        case("mov rax, [rdi+rcx*8+16]", mem_t_load64, |e, g, _, _| {
            g.rcx = 2;
            plain(vec![e.read_at(e.b(32), 8)])
        }),
        case("mov [rdi+5], sil", mem_t_store8, |e, g, _, _| {
            g.rsi = 0x1122_3344_5566_7788;
            plain(vec![write(e.b(5), 1, 0x88)])
        }),
        case("mov word [rdi+10], 0xbeef", mem_t_store16, |e, _, _, _| {
            plain(vec![write(e.b(10), 2, 0xbeef)])
        }),
        case("mov [rdi+20], esi", mem_t_store32, |e, g, _, _| {
            g.rsi = 0x99aa_bbcc_ddee_ff01;
            plain(vec![write(e.b(20), 4, 0xddee_ff01)])
        }),
        case("mov [rdi+rdx-8], rsi", mem_t_store64, |e, g, _, _| {
            g.rdx = 48;
            g.rsi = 0x0123_4567_89ab_cdef;
            plain(vec![write(e.b(40), 8, 0x0123_4567_89ab_cdef)])
        }),
        case("movzx eax, byte [rdi+1]", mem_t_movzx8, |e, _, _, _| {
            plain(vec![e.read_at(e.b(1), 1)])
        }),
        case("movzx ecx, word [rdi+14]", mem_t_movzx16, |e, _, _, _| {
            plain(vec![e.read_at(e.b(14), 2)])
        }),
        // The value is the bytes read, zero-extended, not the sign-extended result.
        case("movsx rax, word [rdi+2]", mem_t_movsx16, |e, _, _, _| {
            e.write(e.b(2), &0x8001u16.to_le_bytes());
            plain(vec![read(e.b(2), 2, 0x8001)])
        }),
        case("movsxd rax, dword [rdi+4]", mem_t_movsxd, |e, _, _, _| {
            e.write(e.b(4), &0xfedc_ba98u32.to_le_bytes());
            plain(vec![read(e.b(4), 4, 0xfedc_ba98)])
        }),
        case("cmp byte [rdi+9], 0x42", mem_t_cmp_byte, |e, _, _, _| {
            plain(vec![e.read_at(e.b(9), 1)])
        }),
        case(
            "mov rax, [rip+mem_rodata_qword]",
            mem_t_rip_load,
            |_, _, _, _| {
                let at = &raw const mem_rodata_qword;
                // SAFETY: a static of the guest library, initialised and never written.
                let value = unsafe { at.read() };
                assert_eq!(value, 0x0123_4567_89ab_cdef, "the constant in mem_insns.S");
                plain(vec![read(at as u64, 8, value)])
            },
        ),
        case("mov rax, fs:[0x28]", mem_t_fs_load, |_, _, _, _| {
            plain(vec![read(fs_base() + 0x28, 8, native_canary())])
        }),
        // -- read-modify-write: one READ (value before) and one WRITE (value after)
        case("add [rdi+24], rsi", mem_t_add_rw, |e, g, _, _| {
            g.rsi = 0x1000_0000_0000_0001;
            let old = e.rd(e.b(24), 8);
            plain(vec![
                read(e.b(24), 8, old),
                write(e.b(24), 8, old.wrapping_add(g.rsi)),
            ])
        }),
        case("inc dword [rdi+60]", mem_t_inc_dword, |e, _, _, _| {
            let old = e.rd(e.b(60), 4);
            plain(vec![
                read(e.b(60), 4, old),
                write(e.b(60), 4, u64::from((old as u32).wrapping_add(1))),
            ])
        }),
        case("xchg [rdi+32], rax", mem_t_xchg, |e, g, _, _| {
            g.rax = 0xa5a5_5a5a_1234_5678;
            let old = e.rd(e.b(32), 8);
            plain(vec![read(e.b(32), 8, old), write(e.b(32), 8, g.rax)])
        }),
        case(
            "cmpxchg [rdi+40], rcx (equal)",
            mem_t_cmpxchg,
            |e, g, _, _| {
                let old = e.rd(e.b(40), 8);
                g.rax = old;
                g.rcx = 0x5555_6666_7777_8888;
                plain(vec![read(e.b(40), 8, old), write(e.b(40), 8, g.rcx)])
            },
        ),
        // A failed compare still writes (the old value back).
        case(
            "cmpxchg [rdi+40], rcx (different)",
            mem_t_cmpxchg,
            |e, g, _, _| {
                let old = e.rd(e.b(40), 8);
                g.rax = !old;
                g.rcx = 0x5555_6666_7777_8888;
                plain(vec![read(e.b(40), 8, old), write(e.b(40), 8, old)])
            },
        ),
        case("lock xadd [rdi+48], rax", mem_t_lock_xadd, |e, g, _, _| {
            g.rax = 0x10;
            let old = e.rd(e.b(48), 8);
            plain(vec![
                read(e.b(48), 8, old),
                write(e.b(48), 8, old.wrapping_add(0x10)),
            ])
        }),
        // -- stack
        case("push rbx", mem_t_push_reg, |e, g, _, _| {
            g.rbx = 0xdead_beef_0bad_f00d;
            plain(vec![write(e.sp - 8, 8, g.rbx)])
        }),
        case("pop rbx", mem_t_pop_reg, |e, _, _, _| {
            plain(vec![e.read_at(e.sp, 8)])
        }),
        case("push qword [rdi+8]", mem_t_push_mem, |e, _, _, _| {
            let v = e.rd(e.b(8), 8);
            plain(vec![read(e.b(8), 8, v), write(e.sp - 8, 8, v)])
        }),
        case("pop qword [rdi+16]", mem_t_pop_mem, |e, _, _, _| {
            let v = e.rd(e.sp, 8);
            plain(vec![read(e.sp, 8, v), write(e.b(16), 8, v)])
        }),
        case("pushfq", mem_t_pushfq, |e, g, _, _| {
            // IF, SF, ZF, CF and the reserved bit 1.
            g.eflags = 0x2c3;
            plain(vec![write(e.sp - 8, 8, 0x2c3)])
        }),
        case("popfq", mem_t_popfq, |e, _, _, _| {
            e.write_u64(e.sp, 0x2d7);
            plain(vec![read(e.sp, 8, 0x2d7)])
        }),
        case("enter 16, 0", mem_t_enter, |e, g, _, _| {
            g.rbp = 0x7766_5544_3322_1100;
            plain(vec![write(e.sp - 8, 8, g.rbp)])
        }),
        case("leave", mem_t_leave, |e, g, _, _| {
            g.rbp = e.sp + 64;
            plain(vec![e.read_at(e.sp + 64, 8)])
        }),
        // The return address pushed is the guest's: the address after the call.
        case("call mem_callee", mem_t_call, |e, _, _, at| {
            plain(vec![write(e.sp - 8, 8, at.next)])
        })
        .stop_at(mem_callee),
        case("call [rdi+64]", mem_t_call_mem, |e, _, _, at| {
            e.write_u64(e.b(64), addr(mem_callee));
            plain(vec![
                read(e.b(64), 8, addr(mem_callee)),
                write(e.sp - 8, 8, at.next),
            ])
        })
        .stop_at(mem_callee),
        case("jmp [rdi+72]", mem_t_jmp_mem, |e, _, _, _| {
            e.write_u64(e.b(72), addr(mem_landing));
            plain(vec![read(e.b(72), 8, addr(mem_landing))])
        })
        .stop_at(mem_landing),
        case("ret", mem_t_ret, |e, _, _, _| {
            e.write_u64(e.sp, addr(mem_landing));
            plain(vec![read(e.sp, 8, addr(mem_landing))])
        })
        .stop_at(mem_landing),
    ];

    // -- string instructions without rep: rsi = buf+SRC, rdi = buf+DST
    let strings: [(&str, [GuestFn; 4]); 5] = [
        ("movs", [mem_t_movsb, mem_t_movsw, mem_t_movsd, mem_t_movsq]),
        ("stos", [mem_t_stosb, mem_t_stosw, mem_t_stosd, mem_t_stosq]),
        ("lods", [mem_t_lodsb, mem_t_lodsw, mem_t_lodsd, mem_t_lodsq]),
        ("cmps", [mem_t_cmpsb, mem_t_cmpsw, mem_t_cmpsd, mem_t_cmpsq]),
        ("scas", [mem_t_scasb, mem_t_scasw, mem_t_scasd, mem_t_scasq]),
    ];
    for (op, funcs) in strings {
        for (func, (suffix, size)) in
            funcs
                .into_iter()
                .zip([("b", 1u16), ("w", 2), ("d", 4), ("q", 8)])
        {
            t.push(case(&format!("{op}{suffix}"), func, move |e, g, _, _| {
                let (src, dst) = (e.b(SRC), e.b(DST));
                g.rsi = src;
                g.rdi = dst;
                g.rax = 0x1122_3344_5566_7788;
                let mask = u64::MAX >> (64 - 8 * u32::from(size));
                plain(match op {
                    "movs" => vec![e.read_at(src, size), write(dst, size, e.rd(src, size))],
                    "stos" => vec![write(dst, size, g.rax & mask)],
                    "lods" => vec![e.read_at(src, size)],
                    "cmps" => vec![e.read_at(src, size), e.read_at(dst, size)],
                    _ => vec![e.read_at(dst, size)],
                })
            }));
        }
    }

    // -- rep string instructions, forwards (DF = 0) and backwards (DF = 1). PreInst: the
    // start pointers, size unknown; PostInst: the lowest byte covered and the bytes covered.
    t.extend([
        case("rep movsb (13 bytes)", mem_t_rep_movsb, |e, g, _, _| {
            (g.rsi, g.rdi, g.rcx) = (e.b(SRC), e.b(DST), 13);
            Expect {
                pre: vec![rep_pending(e.b(SRC))],
                post: vec![read_nv(e.b(SRC), 13), write_nv(e.b(DST), 13)],
            }
        }),
        case(
            "std; rep movsb (13 bytes)",
            mem_t_rep_movsb,
            |e, g, _, _| {
                (g.rsi, g.rdi, g.rcx) = (e.b(SRC + 12), e.b(DST + 12), 13);
                g.eflags = EFLAGS_DF;
                Expect {
                    pre: vec![rep_pending(e.b(SRC + 12))],
                    post: vec![read_nv(e.b(SRC), 13), write_nv(e.b(DST), 13)],
                }
            },
        ),
        case("rep stosq (5 quadwords)", mem_t_rep_stosq, |e, g, _, _| {
            (g.rdi, g.rcx, g.rax) = (e.b(DST), 5, 0x0102_0304_0506_0708);
            Expect {
                pre: vec![],
                post: vec![write_nv(e.b(DST), 40)],
            }
        }),
        case(
            "std; rep stosq (5 quadwords)",
            mem_t_rep_stosq,
            |e, g, _, _| {
                (g.rdi, g.rcx, g.rax) = (e.b(DST + 32), 5, 0x0102_0304_0506_0708);
                g.eflags = EFLAGS_DF;
                Expect {
                    pre: vec![],
                    post: vec![write_nv(e.b(DST), 40)],
                }
            },
        ),
        // Equal for 6 bytes, different at the 7th (pattern differs between SRC and DST):
        // 7 bytes compared out of 16.
        case(
            "repe cmpsb (stops after 7)",
            mem_t_repe_cmpsb,
            |e, g, _, _| {
                let same: Vec<u8> = (0..6).map(|i| e.rd(e.b(SRC + i), 1) as u8).collect();
                e.write(e.b(DST), &same);
                assert_ne!(e.rd(e.b(SRC + 6), 1), e.rd(e.b(DST + 6), 1));
                (g.rsi, g.rdi, g.rcx) = (e.b(SRC), e.b(DST), 16);
                Expect {
                    pre: vec![rep_pending(e.b(SRC)), rep_pending(e.b(DST))],
                    post: vec![read_nv(e.b(SRC), 7), read_nv(e.b(DST), 7)],
                }
            },
        ),
        // From index 15 down: equal at 15..=10, different at 9: bytes 9..16 compared.
        case(
            "std; repe cmpsb (stops after 7)",
            mem_t_repe_cmpsb,
            |e, g, _, _| {
                let same: Vec<u8> = (10..16).map(|i| e.rd(e.b(SRC + i), 1) as u8).collect();
                e.write(e.b(DST + 10), &same);
                assert_ne!(e.rd(e.b(SRC + 9), 1), e.rd(e.b(DST + 9), 1));
                (g.rsi, g.rdi, g.rcx) = (e.b(SRC + 15), e.b(DST + 15), 16);
                g.eflags = EFLAGS_DF;
                Expect {
                    pre: vec![rep_pending(e.b(SRC + 15)), rep_pending(e.b(DST + 15))],
                    post: vec![read_nv(e.b(SRC + 9), 7), read_nv(e.b(DST + 9), 7)],
                }
            },
        ),
        // al is the byte at DST+9, which occurs nowhere else in the 256-byte window.
        case(
            "repne scasb (found at 10th)",
            mem_t_repne_scasb,
            |e, g, _, _| {
                (g.rdi, g.rcx, g.rax) = (e.b(DST), 20, e.rd(e.b(DST + 9), 1));
                Expect {
                    pre: vec![rep_pending(e.b(DST))],
                    post: vec![read_nv(e.b(DST), 10)],
                }
            },
        ),
        case(
            "std; repne scasb (found at 10th)",
            mem_t_repne_scasb,
            |e, g, _, _| {
                (g.rdi, g.rcx, g.rax) = (e.b(DST + 19), 20, e.rd(e.b(DST + 10), 1));
                g.eflags = EFLAGS_DF;
                Expect {
                    pre: vec![rep_pending(e.b(DST + 19))],
                    post: vec![read_nv(e.b(DST + 10), 10)],
                }
            },
        ),
    ]);

    // -- vector loads and stores wider than 8 bytes: no value
    t.extend([
        case("movaps xmm0, [rdi+48]", mem_t_movaps_load, |e, _, _, _| {
            plain(vec![read_nv(e.b(48), 16)])
        }),
        case("movups [rdi+17], xmm1", mem_t_movups_store, |e, _, _, _| {
            plain(vec![write_nv(e.b(17), 16)])
        }),
        case("movdqu xmm2, [rdi+33]", mem_t_movdqu_load, |e, _, _, _| {
            plain(vec![read_nv(e.b(33), 16)])
        }),
        case("movdqu [rdi+80], xmm3", mem_t_movdqu_store, |e, _, _, _| {
            plain(vec![write_nv(e.b(80), 16)])
        }),
        case("vmovdqu ymm4, [rdi+7]", mem_t_vmovdqu_load, |e, _, _, _| {
            plain(vec![read_nv(e.b(7), 32)])
        })
        .needs("avx"),
        case(
            "vmovdqu [rdi+96], ymm5",
            mem_t_vmovdqu_store,
            |e, _, _, _| plain(vec![write_nv(e.b(96), 32)]),
        )
        .needs("avx"),
        case(
            "vmovdqu64 [rdi+128], zmm6",
            mem_t_zmm_store,
            |e, _, _, _| plain(vec![write_nv(e.b(128), 64)]),
        )
        .needs("avx512f"),
        // One access at base + displacement, not dropped.
        case(
            "vpgatherdd ymm0, [rdi+ymm1*4+8], ymm2",
            mem_t_gather,
            |e, _, f, _| {
                for i in 0..4u32 {
                    f.xmm_mut(1)[4 * i as usize..4 * i as usize + 4]
                        .copy_from_slice(&i.to_le_bytes());
                    f.ymm1[4 * i as usize..4 * i as usize + 4]
                        .copy_from_slice(&(i + 4).to_le_bytes());
                }
                *f.xmm_mut(2) = [0xff; 16];
                f.ymm2 = [0xff; 16];
                plain(vec![Exp {
                    size: Size::NonZero,
                    ..read_nv(e.b(8), 0)
                }])
            },
        )
        .needs("avx2"),
        // xsave reads the header's XSTATE_BV and writes the image; with RFBM = x87 | SSE it
        // touches the first 576 bytes.
        case("xsave [rdi] (x87|SSE)", mem_t_xsave, |e, g, _, _| {
            (g.rax, g.rdx) = (3, 0);
            e.write(e.b(512), &[0; 64]);
            let min = |ty| Exp {
                addr: e.b(0),
                size: Size::AtMost(576),
                ty,
                value: 0,
                flags: MINIMUM_SIZE | UNKNOWN_VALUE,
            };
            plain(vec![min(R), min(W)])
        })
        .needs("xsave"),
        // A valid standard-format image: FCW 0x37f, MXCSR 0x1f80, XSTATE_BV = 0 (components
        // in their initial state).
        case("xrstor [rdi] (x87|SSE)", mem_t_xrstor, |e, g, _, _| {
            (g.rax, g.rdx) = (3, 0);
            e.write(e.b(0), &[0; 576]);
            e.write(e.b(0), &0x37fu16.to_le_bytes());
            e.write(e.b(24), &0x1f80u32.to_le_bytes());
            plain(vec![Exp {
                addr: e.b(0),
                size: Size::AtMost(576),
                ty: R,
                value: 0,
                flags: MINIMUM_SIZE | UNKNOWN_VALUE,
            }])
        })
        .needs("xsave"),
    ]);

    // -- addressing forms and special instructions
    t.extend([
        // 32-bit addressing ignores the upper half of rdi.
        case("mov eax, [edi+4]", mem_t_addr32, |e, g, _, _| {
            g.rdi = 0xdead_beef_0000_0000 | e.low();
            plain(vec![e.read_at(e.low() + 4, 4)])
        })
        .needs("low32"),
        case("mov rax, fs:[rcx+8]", mem_t_fs_reg, |_, g, _, _| {
            g.rcx = 0x20;
            plain(vec![read(fs_base() + 0x28, 8, native_canary())])
        }),
        // The source address uses rsp before the push.
        case("push qword [rsp+8]", mem_t_push_rsp_rel, |e, _, _, _| {
            let v = e.rd(e.sp + 8, 8);
            plain(vec![read(e.sp + 8, 8, v), write(e.sp - 8, 8, v)])
        }),
        // The destination address uses rsp after the pop.
        case("pop qword [rsp+8]", mem_t_pop_rsp_rel, |e, _, _, _| {
            let v = e.rd(e.sp, 8);
            plain(vec![read(e.sp, 8, v), write(e.sp + 16, 8, v)])
        }),
        // Level 1: pushes rbp, then the new frame pointer.
        case("enter 16, 1", mem_t_enter_nested, |e, g, _, _| {
            g.rbp = 0x7766_5544_3322_1100;
            plain(vec![
                write(e.sp - 8, 8, g.rbp),
                write(e.sp - 16, 8, e.sp - 8),
            ])
        }),
        case("ret 16", mem_t_ret_imm, |e, _, _, _| {
            e.write_u64(e.sp, addr(mem_landing));
            plain(vec![read(e.sp, 8, addr(mem_landing))])
        })
        .stop_at(mem_landing),
        // No memory access: lea, a nop with a memory operand (rax is not a valid pointer),
        // a prefetch.
        case("lea rax, [rdi+8]", mem_t_lea, |_, _, _, _| plain(vec![])),
        case("nop dword [rax] (rax = 8)", mem_t_nop_mem, |_, g, _, _| {
            g.rax = 8;
            plain(vec![])
        }),
        case("prefetcht0 [rdi]", mem_t_prefetch, |_, _, _, _| {
            plain(vec![])
        }),
        case("cmpxchg16b [rdi+64]", mem_t_cmpxchg16b, |e, g, _, _| {
            (g.rax, g.rdx) = (e.rd(e.b(64), 8), e.rd(e.b(72), 8));
            (g.rbx, g.rcx) = (1, 2);
            plain(vec![read_nv(e.b(64), 16), write_nv(e.b(64), 16)])
        })
        .needs("cmpxchg16b"),
        // Implicit destination [rdi].
        case("maskmovdqu xmm1, xmm0", mem_t_maskmovdqu, |e, g, f, _| {
            g.rdi = e.b(96);
            *f.xmm_mut(0) = [0x80; 16];
            *f.xmm_mut(1) = [0x42; 16];
            plain(vec![write_nv(e.b(96), 16)])
        })
        .needs("sse2"),
        case("fld tbyte [rdi+16]", mem_t_fld80, |e, _, _, _| {
            plain(vec![read_nv(e.b(16), 10)])
        }),
        case("fld qword [rdi+24]", mem_t_fld64, |e, _, _, _| {
            plain(vec![e.read_at(e.b(24), 8)])
        }),
        // st0 = 1.0 (R0 valid, TOP = 0): stores 1.0 as a double.
        case("fstp qword [rdi+24]", mem_t_fstp64, |e, _, f, _| {
            f.ftw = 1;
            f.stmm0 = [0; 16];
            f.stmm0[7] = 0x80;
            f.stmm0[8..10].copy_from_slice(&0x3fffu16.to_le_bytes());
            plain(vec![write(e.b(24), 8, 1f64.to_bits())])
        }),
        case(
            "vmaskmovps [rdi+32], ymm1, ymm2",
            mem_t_vmaskmovps_store,
            |e, _, f, _| {
                *f.xmm_mut(1) = [0xff; 16];
                f.ymm1 = [0xff; 16];
                plain(vec![write_nv(e.b(32), 32)])
            },
        )
        .needs("avx"),
        case(
            "vmovdqu32 [rdi+64]{k1}, zmm0",
            mem_t_zmm_masked_store,
            |e, _, f, _| {
                f.k[1] = 0xffff;
                plain(vec![write_nv(e.b(64), 64)])
            },
        )
        .needs("avx512f"),
        // All indices 0: every element to buf+8. One access at base + displacement.
        case(
            "vpscatterdd [rdi+zmm1*4+8]{k1}, zmm2",
            mem_t_scatter,
            |e, _, f, _| {
                f.k[1] = 0xffff;
                plain(vec![Exp {
                    size: Size::NonZero,
                    ..write_nv(e.b(8), 0)
                }])
            },
        )
        .needs("avx512f"),
    ]);
    t
}

fn describe(accesses: &[MemoryAccess]) -> String {
    accesses
        .iter()
        .map(|a| {
            format!(
                "\n      {:?} at {:#x} size {} value {:#x} flags {:?} (inst {:#x})",
                a.access_type, a.access_address, a.size, a.value, a.flags, a.inst_address
            )
        })
        .collect()
}

fn describe_exp(expected: &[Exp]) -> String {
    expected
        .iter()
        .map(|e| {
            format!(
                "\n      {:?} at {:#x} size {:?} value {:#x} flags {:?}",
                e.ty, e.addr, e.size, e.value, e.flags
            )
        })
        .collect()
}

/// Whether `got` is `want` in some order (the order of one instruction's accesses is not
/// specified), all attributed to the instruction at `inst`.
fn same_accesses(got: &[MemoryAccess], want: &[Exp], inst: u64) -> bool {
    if got.len() != want.len() || got.iter().any(|a| a.inst_address != inst) {
        return false;
    }
    let mut used = vec![false; got.len()];
    want.iter().all(|e| {
        let hit = (0..got.len()).find(|&i| !used[i] && e.matches(&got[i]));
        hit.map(|i| used[i] = true).is_some()
    })
}

type Log = Rc<RefCell<Vec<Vec<MemoryAccess>>>>;

fn logger(
    log: &Log,
) -> impl FnMut(&mut VmRef<'_>, &mut GprState, &mut FprState) -> VmAction + 'static {
    let log = Rc::clone(log);
    move |vm, _gpr, _fpr| {
        log.borrow_mut().push(vm.inst_memory_access().to_vec());
        VmAction::Continue
    }
}

fn decode_one(at: u64) -> Instruction {
    // SAFETY: `at` is the start of a guest function in this executable's text; 15 bytes (the
    // longest instruction) are readable there (each function is followed by at least a ret
    // and padding or another function).
    let bytes = unsafe { std::slice::from_raw_parts(at as *const u8, 15) };
    Decoder::with_ip(64, bytes, at, DecoderOptions::NONE).decode()
}

/// The instructions of the guest function at `at`, up to and including its first `ret`.
fn decode_until_ret(at: u64) -> Vec<Instruction> {
    let mut out = Vec::new();
    let mut ip = at;
    loop {
        let i = decode_one(ip);
        out.push(i);
        ip = i.next_ip();
        if i.mnemonic() == iced_x86::Mnemonic::Ret {
            return out;
        }
    }
}

/// Runs each case alone (its instruction, from the state its setup gives) with PreInst and
/// PostInst callbacks on the instruction, and panics listing every case whose accesses
/// differ from the expected ones.
fn run_cases(table: &[Case]) {
    let mut vm = Vm::new();
    let mut env = Env::new(&mut vm);
    vm.add_instrumented_module_from_addr(addr(mem_t_load8))
        .unwrap();
    vm.record_memory_access(RW).unwrap();
    let base = GprState {
        rsp: env.sp,
        eflags: EFLAGS,
        ..GprState::default()
    };
    let mut failures: Vec<String> = Vec::new();
    let mut failed = 0;
    let mut ran = 0;
    for c in table {
        if let Some(feature) = c.needs {
            let available = if feature == "low32" {
                env.low.is_some()
            } else {
                cpu_has(feature)
            };
            if !available {
                eprintln!("skipped (no {feature}): {}", c.name);
                continue;
            }
        }
        // Printed first: if the engine crashes the process, the last line names the case.
        eprintln!("case: {}", c.name);
        let start = addr(c.func);
        let site = Site {
            next: decode_one(start).next_ip(),
        };
        let stop = c.stop.map_or(site.next, addr);
        env.reset();
        let mut gpr = GprState {
            rdi: env.b(0),
            ..base
        };
        let mut fpr = FprState::default();
        let want = (c.setup)(&mut env, &mut gpr, &mut fpr, site);
        vm.set_gpr_state(&gpr);
        vm.set_fpr_state(&fpr);
        let (pre_log, post_log): (Log, Log) = Default::default();
        let pre_id = vm
            .add_code_addr_cb(start, InstPosition::PreInst, logger(&pre_log), 0)
            .unwrap();
        let post_id = vm
            .add_code_addr_cb(start, InstPosition::PostInst, logger(&post_log), 0)
            .unwrap();
        let result = vm.run(start, stop);
        vm.delete_instrumentation(pre_id).unwrap();
        vm.delete_instrumentation(post_id).unwrap();
        ran += 1;
        let name = &c.name;
        let mut problems = Vec::new();
        if let Err(err) = result {
            problems.push(format!("{name}: run failed: {err}"));
        } else if vm.gpr_state().rip != stop {
            problems.push(format!(
                "{name}: stopped at {:#x}, not {stop:#x}",
                vm.gpr_state().rip
            ));
        }
        for (when, log, want) in [
            ("PreInst", &pre_log, &want.pre),
            ("PostInst", &post_log, &want.post),
        ] {
            let log = log.borrow();
            if log.len() != 1 {
                problems.push(format!("{name}: {when} callback ran {} times", log.len()));
            } else if !same_accesses(&log[0], want, start) {
                problems.push(format!(
                    "{name} ({start:#x}): {when} accesses differ\n    got:{}\n    expected:{}",
                    describe(&log[0]),
                    describe_exp(want)
                ));
            }
        }
        // The expected written values are what memory holds after the instruction.
        for w in want.post.iter().filter(|w| w.ty == W && w.flags.is_empty()) {
            let Size::Exact(size) = w.size else { continue };
            let now = env.rd(w.addr, size);
            assert_eq!(
                now, w.value,
                "{name}: the guest wrote {now:#x} at {:#x}",
                w.addr
            );
        }
        failed += usize::from(!problems.is_empty());
        failures.extend(problems);
    }
    eprintln!("{ran} of {} cases ran", table.len());
    assert!(
        failures.is_empty(),
        "{failed} of {ran} cases failed:\n{}",
        failures.join("\n")
    );
}

#[test]
fn each_instruction_of_the_table_reports_its_exact_accesses_before_and_after() {
    let table = cases();
    assert!(table.len() >= 30);
    run_cases(&table);
}

/// Read-modify-write instructions whose address uses rax: the write's address must be
/// computed from the guest's rax, not from the value just loaded for the read.
#[test]
fn read_write_operands_addressed_through_rax() {
    run_cases(&[
        case(
            "add dword [rax+4], ecx",
            mem_t_add_rax_base,
            |e, g, _, _| {
                g.rax = e.b(0);
                g.rcx = 7;
                let old = e.rd(e.b(4), 4);
                plain(vec![
                    read(e.b(4), 4, old),
                    write(e.b(4), 4, u64::from((old as u32).wrapping_add(7))),
                ])
            },
        ),
        case(
            "xchg [rdi+rax*8], rdx",
            mem_t_xchg_rax_index,
            |e, g, _, _| {
                g.rax = 2;
                g.rdx = 0x0f0e_0d0c_0b0a_0908;
                let old = e.rd(e.b(16), 8);
                plain(vec![read(e.b(16), 8, old), write(e.b(16), 8, g.rdx)])
            },
        ),
    ]);
}

/// `xlat`: the index is al, an 8-bit register, [rbx + al].
#[test]
fn xlat_reads_the_byte_at_rbx_plus_al() {
    run_cases(&[case("xlatb", mem_t_xlatb, |e, g, _, _| {
        g.rbx = e.b(0);
        g.rax = 0x1234_5678_9abc_de21;
        plain(vec![e.read_at(e.b(0x21), 1)])
    })]);
}

/// `bt`/`bts`/`btr`/`btc` on memory with a register bit offset access the word that holds
/// the bit: the signed offset selects it relative to the operand (bit 100 of a qword
/// operand at [rdi] is in [rdi + 8]; bit -1 in the qword before the operand).
#[test]
fn bit_tests_with_a_register_offset_report_the_word_they_access() {
    run_cases(&[
        case(
            "bt qword [rdi], rsi (bit 100)",
            mem_t_bt_far,
            |e, g, _, _| {
                g.rsi = 100;
                plain(vec![e.read_at(e.b(8), 8)])
            },
        ),
        case(
            "bt qword [rdi+64], rsi (bit -1)",
            mem_t_bt_back,
            |e, g, _, _| {
                g.rsi = u64::MAX;
                plain(vec![e.read_at(e.b(56), 8)])
            },
        ),
        case(
            "bts dword [rdi], esi (bit 70)",
            mem_t_bts_dword,
            |e, g, _, _| {
                // The upper half of rsi is not part of the 32-bit offset.
                g.rsi = 0xffff_ffff_0000_0046;
                let old = e.rd(e.b(8), 4);
                plain(vec![read(e.b(8), 4, old), write(e.b(8), 4, old | 1 << 6)])
            },
        ),
        case(
            "btr word [rdi+32], si (bit -17)",
            mem_t_btr_word,
            |e, g, _, _| {
                g.rsi = 0xffef; // -17: bit 15 of the word at [rdi + 32 - 4]
                let old = e.rd(e.b(28), 2);
                plain(vec![
                    read(e.b(28), 2, old),
                    write(e.b(28), 2, old & !(1 << 15)),
                ])
            },
        ),
        case(
            "btc qword [rdi], rcx (bit 130)",
            mem_t_btc_rcx,
            |e, g, _, _| {
                g.rcx = 130;
                let old = e.rd(e.b(16), 8);
                plain(vec![read(e.b(16), 8, old), write(e.b(16), 8, old ^ 1 << 2)])
            },
        ),
    ]);
}

// ---- whole blocks -----------------------------------------------------------------------

/// Runs `mem_bb4(buf, buf + 100)` (returning to `mem_landing`) under a Vm with `options`;
/// returns what `bb_memory_access()` held at SEQUENCE_EXIT and at BASIC_BLOCK_EXIT (one list
/// per callback), and the four expected accesses with values.
fn run_bb4(
    options: Options,
) -> (
    Vec<Vec<MemoryAccess>>,
    Vec<Vec<MemoryAccess>>,
    Vec<MemoryAccess>,
) {
    let mut vm = Vm::with_options(options);
    let mut env = Env::new(&mut vm);
    vm.add_instrumented_module_from_addr(addr(mem_bb4)).unwrap();
    vm.record_memory_access(RW).unwrap();
    env.reset();
    env.write_u64(env.sp, addr(mem_landing));
    let mut out = Vec::new();
    for event in [VmEvent::SEQUENCE_EXIT, VmEvent::BASIC_BLOCK_EXIT] {
        let log: Log = Default::default();
        let l = Rc::clone(&log);
        vm.add_vm_event_cb(event, move |vm, _state, _gpr, _fpr| {
            l.borrow_mut().push(vm.bb_memory_access().to_vec());
            VmAction::Continue
        })
        .unwrap();
        out.push(log);
    }
    let code = decode_until_ret(addr(mem_bb4));
    assert_eq!(code.len(), 4, "mem_bb4 is 4 instructions");
    let access = |i: usize, access_address, size, access_type, value| MemoryAccess {
        inst_address: code[i].ip(),
        access_address,
        value,
        size,
        access_type,
        flags: NO_FLAGS,
    };
    let v0 = env.rd(env.b(0), 8);
    let expected = vec![
        access(0, env.b(0), 8, R, v0),
        access(1, env.b(8), 8, W, v0),
        access(2, env.b(100), 1, R, env.rd(env.b(100), 1)),
        access(3, env.sp, 8, R, addr(mem_landing)),
    ];
    let gpr = vm.gpr_state_mut();
    (gpr.rdi, gpr.rsi, gpr.rsp) = (env.b(0), env.b(100), env.sp);
    vm.run(addr(mem_bb4), addr(mem_landing)).unwrap();
    assert_eq!(vm.gpr_state().rip, addr(mem_landing));
    assert_eq!(env.rd(env.b(8), 8), v0, "the guest copied [p] to [p+8]");
    let seq = out[0].borrow().clone();
    let bb = out[1].borrow().clone();
    (seq, bb, expected)
}

#[test]
fn block_exit_events_see_the_four_accesses_of_the_block_in_order() {
    let (seq, bb, expected) = run_bb4(Options::NO_OPT);
    assert_eq!(
        seq,
        vec![expected.clone()],
        "bb_memory_access at SEQUENCE_EXIT"
    );
    assert_eq!(bb, vec![expected], "bb_memory_access at BASIC_BLOCK_EXIT");
}

#[test]
fn disabled_memory_values_leave_value_zero_and_unknown_value_flag() {
    let (seq, bb, expected) = run_bb4(Options::OPT_DISABLE_MEMORYACCESS_VALUE);
    let without_values: Vec<MemoryAccess> = expected
        .iter()
        .map(|a| MemoryAccess {
            value: 0,
            flags: UNKNOWN_VALUE,
            ..*a
        })
        .collect();
    assert_eq!(seq, vec![without_values.clone()]);
    assert_eq!(bb, vec![without_values]);
}

#[test]
fn disabled_memory_values_in_instruction_callbacks() {
    let mut vm = Vm::with_options(Options::OPT_DISABLE_MEMORYACCESS_VALUE);
    let _stack = allocate_virtual_stack(vm.gpr_state_mut(), 1 << 20).unwrap();
    vm.add_instrumented_module_from_addr(addr(mem_probe))
        .unwrap();
    let log: Log = Default::default();
    vm.add_mem_access_cb(RW, logger(&log), PRIORITY_DEFAULT)
        .unwrap();
    let mut buf = vec![0x5au8; 64];
    vm.call(addr(mem_probe), &[buf.as_mut_ptr() as u64])
        .unwrap();
    let all: Vec<MemoryAccess> = log.borrow().iter().flatten().copied().collect();
    // 14 instructions; add [m] has two accesses.
    assert_eq!(all.len(), 15, "{}", describe(&all));
    for a in &all {
        assert_eq!((a.value, a.flags), (0, UNKNOWN_VALUE), "{a:?}");
    }
    // Addresses and sizes are still recorded: the buffer accesses are PROBE's.
    let base = buf.as_ptr() as u64;
    let mut got: Vec<(u64, u64, bool)> = all
        .iter()
        .filter(|a| a.access_address >= base && a.access_address < base + 64)
        .map(|a| {
            let start = a.access_address - base;
            (start, start + u64::from(a.size), a.access_type == W)
        })
        .collect();
    let mut want: Vec<(u64, u64, bool)> = PROBE
        .iter()
        .flat_map(|(r, w)| {
            let r = r.map(|(a, b)| (a, b, false));
            let w = w.map(|(a, b)| (a, b, true));
            r.into_iter().chain(w)
        })
        .collect();
    got.sort_unstable();
    want.sort_unstable();
    assert_eq!(got, want);
}

// ---- memory callbacks: which instructions they fire on ---------------------------------

/// A half-open range of buffer offsets an instruction accesses.
type Span = Option<(u64, u64)>;

/// How `mem_probe(buf)`'s instructions access buf (offsets, from mem_insns.S), in order:
/// (reads, writes). The 14th, `ret`, reads the stack.
const PROBE: [(Span, Span); 13] = [
    (Some((13, 14)), None),
    (Some((12, 13)), None),
    (None, Some((10, 14))),
    (None, Some((14, 16))),
    (Some((8, 16)), None),
    (Some((16, 24)), None),
    (None, Some((5, 13))),
    (Some((13, 14)), Some((13, 14))),
    (Some((40, 48)), None),
    (None, Some((47, 48))),
    (None, Some((48, 56))),
    (Some((24, 32)), None),
    (Some((20, 36)), None),
];

/// Indices of the `mem_probe` instructions with an access of type `ty` overlapping
/// `[start, end)` (buffer offsets), from the table above.
fn probe_expected(start: u64, end: u64, ty: MemoryAccessType) -> Vec<usize> {
    let overlaps = |r: Span| r.is_some_and(|(a, b)| a < end && start < b);
    PROBE
        .iter()
        .enumerate()
        .filter(|(_, (r, w))| (ty.contains(R) && overlaps(*r)) || (ty.contains(W) && overlaps(*w)))
        .map(|(i, _)| i)
        .collect()
}

/// Which callbacks ran: (instruction address, whether in PreInst).
type Hits = Rc<RefCell<Vec<(u64, bool)>>>;

/// Runs `mem_probe(buf)` with a memory callback registered by `register`, and returns the
/// instruction (index) each callback ran for, and whether it ran before the instruction.
fn probe_hits(register: impl FnOnce(&mut Vm, u64, Hits)) -> Vec<(usize, bool)> {
    let mut vm = Vm::new();
    let _stack = allocate_virtual_stack(vm.gpr_state_mut(), 1 << 20).unwrap();
    vm.add_instrumented_module_from_addr(addr(mem_probe))
        .unwrap();
    let mut buf = vec![0u8; 64];
    let base = buf.as_mut_ptr() as u64;
    let hits: Hits = Default::default();
    register(&mut vm, base, Rc::clone(&hits));
    let code = decode_until_ret(addr(mem_probe));
    assert_eq!(code.len(), 14, "mem_probe is 14 instructions");
    vm.call(addr(mem_probe), &[base]).unwrap();
    let raw = hits.borrow().clone();
    raw.into_iter()
        .map(|(inst, pre)| {
            let index = code.iter().position(|i| i.ip() == inst).unwrap_or_else(|| {
                panic!("callback for {inst:#x}, not an instruction of mem_probe")
            });
            (index, pre)
        })
        .collect()
}

/// A callback recording the instruction it runs for (from the instruction analysis) and
/// whether it runs in PreInst (rip still at the instruction).
fn hit_logger(
    hits: Hits,
) -> impl FnMut(&mut VmRef<'_>, &mut GprState, &mut FprState) -> VmAction + 'static {
    move |vm, gpr, _fpr| {
        let inst = vm.inst_analysis(AnalysisType::INSTRUCTION).address;
        hits.borrow_mut().push((inst, gpr.rip == inst));
        VmAction::Continue
    }
}

#[test]
fn mem_addr_cb_fires_only_for_instructions_touching_the_byte() {
    for ty in [RW, R, W] {
        let hits = probe_hits(|vm, base, hits| {
            vm.add_mem_addr_cb(base + 13, ty, hit_logger(hits)).unwrap();
        });
        let indices: Vec<usize> = hits.iter().map(|h| h.0).collect();
        let expected = probe_expected(13, 14, ty);
        assert_eq!(indices, expected, "add_mem_addr_cb(buf+13, {ty:?})");
    }
    // Independent of the table: the read-write counts by hand.
    let hits = probe_hits(|vm, base, hits| {
        vm.add_mem_addr_cb(base + 13, RW, hit_logger(hits)).unwrap();
    });
    assert_eq!(
        hits.len(),
        4,
        "mov al,[13]; mov dword [10]; mov rax,[8]; add byte [13]"
    );
}

#[test]
fn mem_range_cb_fires_for_reads_or_writes_overlapping_the_range() {
    for (ty, by_hand) in [(R, vec![8, 12]), (W, vec![9]), (RW, vec![8, 9, 12])] {
        let hits = probe_hits(|vm, base, hits| {
            vm.add_mem_range_cb(base + 32, base + 48, ty, hit_logger(hits))
                .unwrap();
        });
        let indices: Vec<usize> = hits.iter().map(|h| h.0).collect();
        assert_eq!(indices, by_hand, "add_mem_range_cb(buf+32..buf+48, {ty:?})");
        assert_eq!(indices, probe_expected(32, 48, ty));
    }
}

#[test]
fn mem_access_cb_runs_before_reading_instructions_and_after_writing_ones() {
    // READ_WRITE: every instruction (the final ret reads the stack), PreInst unless it writes.
    let hits = probe_hits(|vm, _, hits| {
        vm.add_mem_access_cb(RW, hit_logger(hits), PRIORITY_DEFAULT)
            .unwrap();
    });
    let expected: Vec<(usize, bool)> = (0..14)
        .map(|i| (i, PROBE.get(i).is_none_or(|(_, w)| w.is_none())))
        .collect();
    assert_eq!(hits, expected, "add_mem_access_cb(READ_WRITE)");
    // READ: the reading instructions, all before they run (add [m] included).
    let hits = probe_hits(|vm, _, hits| {
        vm.add_mem_access_cb(R, hit_logger(hits), PRIORITY_DEFAULT)
            .unwrap();
    });
    let expected: Vec<(usize, bool)> = (0..14)
        .filter(|&i| PROBE.get(i).is_none_or(|(r, _)| r.is_some()))
        .map(|i| (i, true))
        .collect();
    assert_eq!(hits, expected, "add_mem_access_cb(READ)");
    // WRITE: the writing instructions, after they ran.
    let hits = probe_hits(|vm, _, hits| {
        vm.add_mem_access_cb(W, hit_logger(hits), PRIORITY_DEFAULT)
            .unwrap();
    });
    let expected: Vec<(usize, bool)> = (0..13)
        .filter(|&i| PROBE[i].1.is_some())
        .map(|i| (i, false))
        .collect();
    assert_eq!(hits, expected, "add_mem_access_cb(WRITE)");
}

// ---- a C loop ---------------------------------------------------------------------------

#[test]
fn recorded_writes_and_range_reads_have_addresses_and_values() {
    let mut vm = Vm::new();
    let _stack = allocate_virtual_stack(vm.gpr_state_mut(), 8 << 20).unwrap();
    vm.add_instrumented_module_from_addr(smoke_fill as *const () as u64)
        .unwrap();
    let writes = Rc::new(RefCell::new(Vec::new()));
    let w = writes.clone();
    vm.add_mem_access_cb(
        MemoryAccessType::WRITE,
        move |vm, _g, _f| {
            for a in vm.inst_memory_access() {
                if a.access_type == MemoryAccessType::WRITE {
                    w.borrow_mut().push(*a);
                }
            }
            VmAction::Continue
        },
        PRIORITY_DEFAULT,
    )
    .unwrap();
    let mut buf = vec![0i64; 20];
    vm.call(
        smoke_fill as *const () as u64,
        &[buf.as_mut_ptr() as u64, 20],
    )
    .unwrap();
    let ws = writes.borrow();
    let base = buf.as_ptr() as u64;
    let mine: Vec<_> = ws
        .iter()
        .filter(|a| a.access_address >= base && a.access_address < base + 160)
        .collect();
    eprintln!(
        "{} writes, {} in buf; first {:?}",
        ws.len(),
        mine.len(),
        mine.first()
    );
    assert_eq!(mine.len(), 20);
    for (i, a) in mine.iter().enumerate() {
        assert_eq!(a.access_address, base + 8 * i as u64);
        assert_eq!(a.value, (i * 3 + 1) as u64);
        assert_eq!(a.size, 8);
    }
    let reads = Rc::new(RefCell::new(Vec::new()));
    let r = reads.clone();
    vm.add_mem_range_cb(
        base + 16,
        base + 24,
        MemoryAccessType::READ,
        move |vm, _g, _f| {
            r.borrow_mut()
                .extend(vm.inst_memory_access().iter().copied());
            VmAction::Continue
        },
    )
    .unwrap();
    let s = vm
        .call(smoke_sum as *const () as u64, &[buf.as_ptr() as u64, 20])
        .unwrap();
    // SAFETY: smoke_sum reads 20 i64 from buf, which holds 20.
    assert_eq!(s as i64, unsafe { smoke_sum(buf.as_ptr(), 20) });
    eprintln!("range reads {:?}", reads.borrow());
    assert!(
        reads
            .borrow()
            .iter()
            .any(|a| a.access_address == base + 16 && a.value == 7)
    );
}
