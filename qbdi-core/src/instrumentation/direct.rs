//! Direct calls of simple callbacks, DynamoRIO's "clean call" optimisation.
//!
//! The general path of a callback site (`context_switch::emit_callback`) saves every guest
//! register, the flags and the FP state, enters `callbacks::site_entry`, which finds the
//! site's callbacks and calls them through their boxes, then restores everything: about
//! 30 ns. Most analysis callbacks are far simpler than that machinery (count, set a bit,
//! compare a register), so the engine looks at the machine code of each callback's compiled
//! entry and, when every callback of a site (up to four) is a leaf that only touches
//! general purpose registers, calls them straight from the translated code, one after the
//! other, saving only what that code can change.
//!
//! - Every callback is registered with a monomorphized `extern "C"` entry
//!   ([`inst_entry`], [`event_entry`]) next to its box. Both reach the same closure.
//! - [`analyze`] decodes that entry (once per closure type): it must be a leaf (no call, no
//!   indirect branch, no system instruction), use only general purpose registers (no x87,
//!   MMX, SSE, AVX, mask registers, MXCSR), and no string instruction (so the direction
//!   flag does not matter). It records which registers the code reads before writing and
//!   which it writes.
//! - A callback whose entry reads its `VmRef` or `FprState` argument is not eligible: those
//!   exist only on the general path. The exception is the instruction's memory accesses
//!   (`inst_memory_access`: the `VmRef`'s first field, a plugin `RawVm`'s `accesses`): an
//!   entry that only loads those gets a handle the site builds (`DirectCall::view_arg`).
//!   One that reads its `GprState` gets the whole state stored in the context before the
//!   call and reloaded after (it may change registers).
//! - The site (`engine::direct_call::emit_direct_site`) switches to the host stack, saves the flags and the
//!   caller-saved registers the entry writes, calls it, and restores them. Anything unusual
//!   goes to the general path, which the site still contains: the guest's direction or
//!   alignment-check flag set, the callback deleted (a per-site flag: its closure may be
//!   freed while translated code still names it), or an action other than `Continue`,
//!   which the general path then applies without calling the callback again.
//!
//! Callee-saved registers (rbx, rbp, r12-r15) are trusted to be restored by the entry: it is
//! compiled code following the SysV ABI.

use super::callbacks::{InstCallback, VmCallback};
use super::vm_ref::VmRef;
use crate::callback::{VmAction, VmState};
use crate::maps::{Permission, current_process_maps};
use crate::memory_access::{VIEW_BYTES, slice_layout};
use crate::regs::{R8, RAX, RCX, RDI, RDX, RSI, RSP};
use crate::state::{FprState, GprState};
use iced_x86::{
    ConstantOffsets, CpuidFeature, Decoder, DecoderOptions, FlowControl, Instruction,
    InstructionInfo, InstructionInfoFactory, Mnemonic, OpAccess, OpKind, Register,
};
use std::sync::Mutex;

/// How a direct site calls one callback (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct DirectCall {
    pub kind: EntryKind,
    /// The compiled entry and the closure it is called with.
    pub func: u64,
    pub data: u64,
    /// Guest registers the site saves before the call and restores after it (bit n:
    /// emitter register n). Always includes rax (the result) and rcx (flag restore).
    pub saves: u16,
    /// The entry reads its `GprState`: the whole guest state goes through the context.
    pub gpr_arg: bool,
    /// The entry reads the memory accesses of its `VmRef` (`inst_memory_access`, and
    /// nothing else of it): the site builds them in the context and passes a `VmRef` whose
    /// view describes them.
    pub view_arg: bool,
    /// (Event callbacks) the entry reads its `VmState`.
    pub state_arg: bool,
    /// The entry uses thread-local storage: with OPT_ENABLE_FS_GS the guest's FS and GS
    /// are not the host's, so only the general path (which switches them) may call it.
    pub fs_gs: bool,
    /// The entry reads no argument and always returns `Continue`: a site copies its code
    /// instead of calling it (see [`InlineBody`]).
    pub inline: Option<InlineBody>,
}

/// Most bytes of a body copied into translated code (see [`InlineBody`]).
const INLINE_BYTES: usize = 96;
/// Most instructions of such a body.
const INLINE_INSTRUCTIONS: usize = 24;

/// The code of an entry simple enough to be copied into the site instead of called
/// (DynamoRIO's clean-call inlining, done on the entry's compiled code): straight-line
/// code (no branch) that does not touch the stack, reads no argument (no register before
/// writing it) and returns `Continue` (eax zeroed last). Such is a plugin's counter: a
/// `fetch_add` on a static, `VmAction::Continue`.
///
/// The copy is position independent: a RIP-relative `lea` becomes a `mov` of the address
/// it computes, any other RIP-relative operand is addressed through a scratch register the
/// body does not use, loaded with the address first. The final `ret` is left out. The
/// site saves what the body writes (`saves`) and the flags where they are live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct InlineBody {
    bytes: [u8; INLINE_BYTES],
    len: u8,
    /// Registers the body writes, the scratch register included (bit n: emitter register
    /// n).
    pub saves: u16,
}

impl InlineBody {
    /// The code to copy.
    pub fn code(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// The shape of a callback entry: which register holds which argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EntryKind {
    /// `(data, vm, gpr, fpr)`: rdi, rsi, rdx, rcx.
    Inst,
    /// `(data, vm, state, gpr, fpr)`: rdi, rsi, rdx, rcx, r8.
    Event,
    /// A plugin's instruction trampoline `(vm, gpr, fpr)`: rdi, rsi, rdx.
    PluginInst,
    /// A plugin's event trampoline `(vm, state, gpr, fpr)`: rdi, rsi, rdx, rcx.
    PluginEvent,
}

/// rax, rcx, rdx, rsi, rdi, r8-r11.
const CALLER_SAVED: u16 = 0b0000_1111_1100_0111;
const ALL_BUT_RSP: u16 = !(1 << RSP);

impl EntryKind {
    /// Argument registers: (data, vm, state, gpr, fpr).
    pub(crate) fn args(self) -> (Option<u8>, u8, Option<u8>, u8, u8) {
        match self {
            EntryKind::Inst => (Some(RDI), RSI, None, RDX, RCX),
            EntryKind::Event => (Some(RDI), RSI, Some(RDX), RCX, R8),
            EntryKind::PluginInst => (None, RDI, None, RSI, RDX),
            EntryKind::PluginEvent => (None, RDI, Some(RSI), RDX, RCX),
        }
    }
}

/// The calling convention of a compiled callback entry given to
/// [`Vm::set_direct_entry`](crate::Vm::set_direct_entry): that of the trampolines the
/// plugin SDK's attribute macros generate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryAbi {
    /// `extern "C" fn(vm: *const c_void, gpr: *mut GprState, fpr: *mut FprState) -> u32`,
    /// returning a [`VmAction`] as its `u32` value.
    Inst,
    /// `extern "C" fn(vm: *const c_void, state: *const VmState, gpr: *mut GprState,
    /// fpr: *mut FprState) -> u32`.
    Event,
}

impl EntryAbi {
    pub(crate) fn kind(self) -> EntryKind {
        match self {
            EntryAbi::Inst => EntryKind::PluginInst,
            EntryAbi::Event => EntryKind::PluginEvent,
        }
    }
}

/// Why the compiled entry at `func` cannot be called directly from translated code, or
/// `None` if it can (whether a given site then uses the direct path also depends on the
/// site: at most four callbacks, all eligible, no memory-range filter, see
/// `docs/architecture.md`).
///
/// `func` must be the address of code mapped in this process (a function of this process
/// or of a loaded library); anything else is refused.
pub fn direct_call_refusal(func: *const (), abi: EntryAbi) -> Option<String> {
    let func = func as u64;
    analyze(func)
        .and_then(|l| l.direct_call(abi.kind(), func, 0))
        .err()
        .map(|r| r.to_string())
}

/// Whether the compiled entry at `func`, eligible for a direct call, is also simple enough
/// for a site to copy its code instead of calling it (see
/// [`Vm::set_call_inlining`](crate::Vm::set_call_inlining)): false if it is not, or not
/// eligible at all. Same contract on `func` as [`direct_call_refusal`].
pub fn direct_call_inlined(func: *const (), abi: EntryAbi) -> bool {
    let func = func as u64;
    analyze(func)
        .and_then(|l| l.direct_call(abi.kind(), func, 0))
        .is_ok_and(|c| c.inline.is_some())
}

/// Where a refusal names the instruction that caused it.
const AT: &str = "\u{1}";

/// Why an entry cannot be called directly ([`Vm::set_direct_entry`](crate::Vm)): its text
/// (`Display`) names the instruction in question with its disassembly, formatted only
/// when the text is asked for (building iced-x86's formatter tables costs a fraction of a
/// millisecond, which a run whose refusals nobody reads should not pay).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirectRefusal {
    text: String,
    instr: Option<Instruction>,
}

impl DirectRefusal {
    /// A refusal whose `text` names `instr` where it holds [`AT`].
    fn at(instr: &Instruction, text: String) -> DirectRefusal {
        DirectRefusal {
            text,
            instr: Some(*instr),
        }
    }
}

impl From<String> for DirectRefusal {
    fn from(text: String) -> DirectRefusal {
        DirectRefusal { text, instr: None }
    }
}

impl From<&str> for DirectRefusal {
    fn from(text: &str) -> DirectRefusal {
        DirectRefusal::from(text.to_owned())
    }
}

impl std::fmt::Display for DirectRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.instr {
            Some(i) => {
                let named = format!("`{i}` at {:#x}", i.ip());
                f.write_str(&self.text.replace(AT, &named))
            }
            None => f.write_str(&self.text),
        }
    }
}

/// What the machine code of a leaf entry does with general purpose registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Leaf {
    /// Registers (bit n: emitter register n) read before being written on some path,
    /// except those counted in `view_lo` and `view_hi`.
    pub reads: u16,
    /// Registers read before being written only as the base of loads within the first
    /// `VIEW_BYTES` bytes they point to (for a closure's `VmRef`: its `view`).
    pub view_lo: u16,
    /// The same, within the next `VIEW_BYTES` bytes (for a plugin's `RawVm`: its
    /// `accesses` and `accesses_len`).
    pub view_hi: u16,
    /// Registers written anywhere.
    pub writes: u16,
    /// Whether it uses the FS or GS segment (thread-local storage).
    pub fs_gs: bool,
    /// Its code, when it can be copied into a site (see [`InlineBody`]).
    pub inline: Option<InlineBody>,
}

impl Leaf {
    /// How a site calls an entry of `kind` with this summary and closure `data`, unless
    /// the entry needs arguments only the general path provides (the error says which).
    pub fn direct_call(
        self,
        kind: EntryKind,
        func: u64,
        data: u64,
    ) -> Result<DirectCall, DirectRefusal> {
        let (data_reg, vm, state, gpr, fpr) = kind.args();
        let reads = |r: u8| (self.reads | self.view_lo | self.view_hi) & (1 << r) != 0;
        // Closures get qbdi-core's `VmRef`, with the accesses first; a plugin's trampoline
        // gets a `RawVm` (qbdi-sdk's ABI), with them 16 bytes in, as a pointer and a
        // length: the order a slice has here, or the site cannot build one view for both.
        let closure = matches!(kind, EntryKind::Inst | EntryKind::Event);
        let (view, other) = if closure {
            (self.view_lo, self.view_hi)
        } else if slice_layout() == (0, 8) {
            (self.view_hi, self.view_lo)
        } else {
            (0, self.view_lo | self.view_hi)
        };
        let view_arg = view & (1 << vm) != 0;
        if (self.reads | other) & (1 << vm) != 0 {
            return Err(
                "it reads its VmRef (which only the general path provides, but for \
                 `inst_memory_access`)"
                    .into(),
            );
        }
        if reads(fpr) {
            return Err("it reads its FprState (which only the general path provides)".into());
        }
        let gpr_arg = reads(gpr);
        let state_arg = state.is_some_and(reads);
        let mut saves = (1 << RAX) | (1 << RCX) | (self.writes & CALLER_SAVED);
        if let Some(d) = data_reg.filter(|&d| reads(d)) {
            saves |= 1 << d;
        }
        if let Some(s) = state.filter(|_| state_arg) {
            saves |= 1 << s;
        }
        if view_arg {
            saves |= 1 << vm;
        }
        if gpr_arg {
            // The whole state goes through the context.
            saves = ALL_BUT_RSP;
        }
        // A body that reads no register before writing it reads no argument (nor the
        // closure): it is the same code at every site.
        let args_read = self.reads | self.view_lo | self.view_hi;
        Ok(DirectCall {
            kind,
            func,
            data,
            saves,
            gpr_arg,
            view_arg,
            state_arg,
            fs_gs: self.fs_gs,
            inline: self.inline.filter(|_| args_read == 0),
        })
    }
}

/// Most instructions decoded while analysing one entry (over all paths).
const MAX_DECODED: usize = 256;

/// Features an instruction of a direct entry may need: general purpose integer code.
const ALLOWED_FEATURES: &[CpuidFeature] = &[
    CpuidFeature::INTEL8086,
    CpuidFeature::INTEL186,
    CpuidFeature::INTEL286,
    CpuidFeature::INTEL386,
    CpuidFeature::INTEL486,
    CpuidFeature::X64,
    CpuidFeature::CMOV,
    CpuidFeature::CX8,
    CpuidFeature::CMPXCHG16B,
    CpuidFeature::BMI1,
    CpuidFeature::BMI2,
    CpuidFeature::LZCNT,
    CpuidFeature::POPCNT,
    CpuidFeature::MOVBE,
    CpuidFeature::ADX,
    CpuidFeature::MULTIBYTENOP,
    CpuidFeature::PAUSE,
    CpuidFeature::CET_IBT,
];

/// Integer-feature instructions a direct entry may not contain: they change flags the site
/// does not restore, depend on the direction flag, or are system instructions.
fn forbidden(m: Mnemonic) -> bool {
    use Mnemonic::*;
    matches!(
        m,
        Popf | Popfd
            | Popfq
            | Cld
            | Std
            | Cli
            | Sti
            | Hlt
            | In
            | Out
            | Iret
            | Iretd
            | Iretq
            | Int
            | Int1
            | Int3
            | Into
            | Syscall
            | Sysenter
            | Wait
            | Movsb
            | Movsw
            | Movsd
            | Movsq
            | Stosb
            | Stosw
            | Stosd
            | Stosq
            | Lodsb
            | Lodsw
            | Lodsd
            | Lodsq
            | Scasb
            | Scasw
            | Scasd
            | Scasq
            | Cmpsb
            | Cmpsw
            | Cmpsd
            | Cmpsq
            | Insb
            | Insw
            | Insd
            | Outsb
            | Outsw
            | Outsd
            | Lss
            | Lfs
            | Lgs
    )
}

/// Emitter number (0..16) of a general purpose register, and whether writing it defines
/// the whole 64-bit register (32- and 64-bit writes do; 8- and 16-bit ones merge).
fn gpr_number(r: Register) -> Option<(u8, bool)> {
    if !r.is_gpr() {
        return None;
    }
    let full = r.full_register();
    full.is_gpr64()
        .then(|| (full.number() as u8, r.is_gpr32() || r.is_gpr64()))
}

/// Whether `instr` reads general purpose register `n` only as the base of a load within
/// one of the first two `VIEW_BYTES`-byte windows it points to (its number, 0 or 1): no
/// index, no segment override, and `n` in no other operand that is read.
fn view_load(instr: &Instruction, info: &InstructionInfo, n: u8) -> Option<u64> {
    if gpr_number(instr.memory_base()).map(|(b, _)| b) != Some(n)
        || instr.memory_index() != Register::None
        || instr.segment_prefix() != Register::None
    {
        return None;
    }
    let mem = (0..instr.op_count()).find(|&i| instr.op_kind(i) == OpKind::Memory)?;
    let disp = instr.memory_displacement64();
    let size = instr.memory_size().size() as u64;
    let window = disp / VIEW_BYTES;
    let within = size != 0 && window < 2 && (disp + size - 1) / VIEW_BYTES == window;
    let elsewhere = (0..instr.op_count()).any(|i| {
        i != mem
            && instr.op_kind(i) == OpKind::Register
            && gpr_number(instr.op_register(i)).map(|(r, _)| r) == Some(n)
            && info.op_access(i) != OpAccess::Write
    });
    (within && info.op_access(mem) == OpAccess::Read && !elsewhere).then_some(window)
}

/// Whether `instr` is `xor r, r` or `sub r, r`: it writes zero, reading nothing.
fn zero_idiom(instr: &Instruction) -> bool {
    matches!(instr.mnemonic(), Mnemonic::Xor | Mnemonic::Sub)
        && instr.op_count() == 2
        && instr.op0_kind() == OpKind::Register
        && instr.op1_kind() == OpKind::Register
        && instr.op0_register() == instr.op1_register()
}

/// Analyses the machine code of an entry starting at `ip`, given as `code` (the bytes from
/// `ip` to the end of their mapping). The error says why it is not a leaf of general purpose
/// code.
pub(crate) fn analyze_code(code: &[u8], ip: u64) -> Result<Leaf, DirectRefusal> {
    let mut factory = InstructionInfoFactory::new();
    let mut leaf = Leaf {
        reads: 0,
        view_lo: 0,
        view_hi: 0,
        writes: 0,
        fs_gs: false,
        inline: None,
    };
    // Paths to explore: (address, registers defined so far). A state already explored
    // with a superset of definitions adds nothing.
    let mut work: Vec<(u64, u16)> = vec![(ip, 0)];
    let mut seen: Vec<(u64, u16)> = Vec::new();
    let mut decoded = 0usize;
    let mut instr = Instruction::default();
    while let Some((mut pc, mut defined)) = work.pop() {
        loop {
            if seen.iter().any(|&(a, d)| a == pc && d & defined == d) {
                break;
            }
            seen.push((pc, defined));
            decoded += 1;
            if decoded > MAX_DECODED {
                return Err(format!("it is longer than {MAX_DECODED} instructions").into());
            }
            let offset = pc
                .checked_sub(ip)
                .and_then(|o| usize::try_from(o).ok())
                .filter(|&o| o < code.len())
                .ok_or_else(|| {
                    DirectRefusal::from(format!(
                        "it jumps out of its code, to {pc:#x} (a tail call)"
                    ))
                })?;
            let mut decoder = Decoder::with_ip(64, &code[offset..], pc, DecoderOptions::NONE);
            decoder.decode_out(&mut instr);
            if instr.is_invalid() {
                return Err(format!("undecodable bytes at {pc:#x}").into());
            }
            if forbidden(instr.mnemonic()) || instr.has_rep_prefix() || instr.has_repne_prefix() {
                return Err(DirectRefusal::at(
                    &instr,
                    format!("it contains {AT} (flags, string or system instruction)"),
                ));
            }
            if !instr
                .cpuid_features()
                .iter()
                .all(|f| ALLOWED_FEATURES.contains(f))
            {
                return Err(DirectRefusal::at(
                    &instr,
                    format!("it uses {AT} (not integer code)"),
                ));
            }
            let zero_idiom = zero_idiom(&instr);
            if matches!(instr.segment_prefix(), Register::FS | Register::GS) {
                leaf.fs_gs = true;
            }
            let info = factory.info(&instr);
            // Definitions count from the next instruction on (this one may read first).
            let mut defines = 0u16;
            for used in info.used_registers() {
                let r = used.register();
                let Some((n, whole)) = gpr_number(r) else {
                    // Segment registers may be read (fs: for thread locals), nothing else
                    // (vector, x87, mask, control registers) may appear.
                    let segment_read = r.is_segment_register() && used.access() == OpAccess::Read;
                    if segment_read || r == Register::RIP {
                        continue;
                    }
                    return Err(DirectRefusal::at(&instr, format!("it uses {r:?} in {AT}")));
                };
                if n == RSP {
                    continue; // the site gives the entry a stack of its own
                }
                let bit = 1u16 << n;
                let (read, write) = match used.access() {
                    OpAccess::Read | OpAccess::CondRead => (true, false),
                    OpAccess::Write => (false, true),
                    OpAccess::CondWrite | OpAccess::ReadWrite | OpAccess::ReadCondWrite => {
                        (true, true)
                    }
                    OpAccess::None | OpAccess::NoMemAccess => (false, false),
                };
                if read && !zero_idiom && defined & bit == 0 {
                    match view_load(&instr, info, n) {
                        Some(0) => leaf.view_lo |= bit,
                        Some(_) => leaf.view_hi |= bit,
                        None => leaf.reads |= bit,
                    }
                }
                if write {
                    leaf.writes |= bit;
                    if (whole && used.access() == OpAccess::Write) || zero_idiom {
                        defines |= bit;
                    }
                }
            }
            defined |= defines;
            let next = instr.next_ip();
            match instr.flow_control() {
                FlowControl::Next => pc = next,
                FlowControl::Return => {
                    // `ret imm16` would leave the stack unbalanced for the site.
                    if instr.op_count() != 0 {
                        return Err(DirectRefusal::at(&instr, format!("it returns with {AT}")));
                    }
                    break;
                }
                FlowControl::UnconditionalBranch if instr.op0_kind() == OpKind::NearBranch64 => {
                    pc = instr.near_branch_target();
                }
                FlowControl::ConditionalBranch if instr.op0_kind() == OpKind::NearBranch64 => {
                    work.push((instr.near_branch_target(), defined));
                    pc = next;
                }
                FlowControl::Call | FlowControl::IndirectCall => {
                    return Err(DirectRefusal::at(
                        &instr,
                        format!(
                            "it calls other code ({AT}): not a leaf (a function it calls was \
                             not inlined, or it may panic)"
                        ),
                    ));
                }
                _ => {
                    return Err(DirectRefusal::at(
                        &instr,
                        format!("it leaves by {AT} (an indirect or far branch, or a trap)"),
                    ));
                }
            }
        }
    }
    leaf.inline = inline_body(code, ip, leaf.writes);
    Ok(leaf)
}

/// `mov r64, imm64` (`wide`) or `mov r32, imm32`.
fn mov_imm(out: &mut Vec<u8>, reg: u8, value: u64, wide: bool) {
    let rex = (if wide { 0x48 } else { 0x40 }) | (reg >> 3);
    if rex != 0x40 {
        out.push(rex);
    }
    out.push(0xb8 + (reg & 7));
    if wide {
        out.extend_from_slice(&value.to_le_bytes());
    } else {
        out.extend_from_slice(&(value as u32).to_le_bytes());
    }
}

/// The bytes of `instr` (`bytes`, a legacy-encoded instruction with a RIP-relative memory
/// operand) addressing `[reg]` instead (`reg` 0-7 but rsp and rbp), with a zero 32-bit
/// displacement: ModRM's mod 10 and rm `reg`, REX.B cleared (RIP-relative addressing
/// ignores it). Done on the bytes, not with iced's encoder, whose tables would cost
/// start-up about 0.4 ms (see `engine/encode.rs`). `offsets`: where the decoder found the
/// instruction's displacement. Checked by decoding the result.
fn rebase(
    instr: &Instruction,
    offsets: &ConstantOffsets,
    bytes: &[u8],
    reg: u8,
) -> Option<Vec<u8>> {
    if instr.encoding() != iced_x86::EncodingKind::Legacy || matches!(reg, 4 | 5) || reg > 7 {
        return None;
    }
    let disp = offsets.displacement_offset();
    if offsets.displacement_size() != 4 || disp + 4 > bytes.len() {
        return None;
    }
    let modrm = disp.checked_sub(1)?;
    let mut out = bytes.to_vec();
    // Legacy prefixes, then REX if any, then the opcode.
    let rex = out.iter().position(|b| {
        !matches!(
            b,
            0xf0 | 0xf2 | 0xf3 | 0x2e | 0x36 | 0x3e | 0x26 | 0x64 | 0x65 | 0x66 | 0x67
        )
    })?;
    if out[rex] & 0xf0 == 0x40 {
        out[rex] &= !1;
    }
    out[modrm] = 0x80 | (out[modrm] & 0x38) | reg;
    out[disp..disp + 4].fill(0);
    let check = Decoder::with_ip(64, &out, 0, DecoderOptions::NONE).decode();
    let same = check.len() == out.len()
        && check.code() == instr.code()
        && check.memory_base() == Register::RAX + u32::from(reg)
        && check.memory_index() == instr.memory_index()
        && check.memory_displacement64() == 0;
    same.then_some(out)
}

/// The body of the leaf entry at `ip` (`code`, its bytes), when it can be copied into a
/// site (see [`InlineBody`]); `writes` is what [`analyze_code`] found it writes.
fn inline_body(code: &[u8], ip: u64, writes: u16) -> Option<InlineBody> {
    let mut factory = InstructionInfoFactory::new();
    let mut decoder = Decoder::with_ip(64, code, ip, DecoderOptions::NONE);
    let mut body: Vec<(Instruction, ConstantOffsets)> = Vec::new();
    let mut used = 0u16;
    // Whether eax holds zero (Continue) at this point.
    let mut continues = false;
    loop {
        if body.len() > INLINE_INSTRUCTIONS || !decoder.can_decode() {
            return None;
        }
        let instr = decoder.decode();
        match instr.flow_control() {
            FlowControl::Next => {}
            FlowControl::Return if instr.op_count() == 0 && continues => break,
            _ => return None,
        }
        let zeroes_eax =
            zero_idiom(&instr) && matches!(instr.op0_register(), Register::EAX | Register::RAX);
        for u in factory.info(&instr).used_registers() {
            let Some((n, _)) = gpr_number(u.register()) else {
                continue;
            };
            if n == RSP {
                return None; // push, pop, a stack slot: the site's stack is the guest's
            }
            used |= 1 << n;
            if n == RAX && !matches!(u.access(), OpAccess::Read | OpAccess::CondRead) {
                continues = false;
            }
        }
        continues |= zeroes_eax;
        body.push((instr, decoder.get_constant_offsets(&instr)));
    }
    // A low register: the rewrite then needs no REX.B (see `rebase`).
    let scratch = [RCX, RDX, RSI, RDI]
        .into_iter()
        .find(|&r| used & (1 << r) == 0);
    let mut out = Vec::with_capacity(INLINE_BYTES);
    let mut saves = writes;
    for (instr, offsets) in &body {
        let at = usize::try_from(instr.ip() - ip).ok()?;
        let bytes = code.get(at..at + instr.len())?;
        if !instr.is_ip_rel_memory_operand() {
            out.extend_from_slice(bytes);
            continue;
        }
        let target = instr.ip_rel_memory_address();
        if instr.mnemonic() == Mnemonic::Lea {
            let dest = instr.op0_register();
            let (n, _) = gpr_number(dest)?;
            if !(dest.is_gpr64() || dest.is_gpr32()) {
                return None;
            }
            mov_imm(&mut out, n, target, dest.is_gpr64());
            continue;
        }
        let s = scratch?;
        saves |= 1 << s;
        mov_imm(&mut out, s, target, true);
        out.extend_from_slice(&rebase(instr, offsets, bytes, s)?);
    }
    if out.len() > INLINE_BYTES {
        return None;
    }
    let mut bytes = [0u8; INLINE_BYTES];
    bytes[..out.len()].copy_from_slice(&out);
    Some(InlineBody {
        bytes,
        len: out.len() as u8,
        saves: saves & !(1 << RSP),
    })
}

/// An analysed entry: its address, its first bytes (up to 64, within its page) and the
/// answer.
struct Known {
    func: u64,
    prefix: Vec<u8>,
    leaf: Result<Leaf, DirectRefusal>,
}

/// The first bytes of the code at `func` that are surely mapped: up to 64, within its page.
///
/// # Safety
/// `func` must be in a readable mapping.
unsafe fn code_prefix(func: u64) -> &'static [u8] {
    let len = (64).min(4096 - (func % 4096)) as usize;
    // SAFETY: the page holding `func` is mapped readable (per the contract) and the slice
    // stays inside it.
    unsafe { std::slice::from_raw_parts(func as *const u8, len) }
}

/// Analyses the compiled entry at `func` (code of this process), remembering the answer per
/// address. A remembered answer counts only if the code there starts with the same bytes
/// (a library unloaded and another loaded at its address would not).
pub(crate) fn analyze(func: u64) -> Result<Leaf, DirectRefusal> {
    static KNOWN: Mutex<Vec<Known>> = Mutex::new(Vec::new());
    let mut known = KNOWN.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(i) = known.iter().position(|k| k.func == func) {
        // SAFETY: `func` is the entry of a callback being registered: its code is mapped,
        // and was readable when it was analysed (a non-empty prefix was read then).
        if known[i].prefix.is_empty() || unsafe { code_prefix(func) } == known[i].prefix {
            return known[i].leaf.clone();
        }
        known.swap_remove(i);
    }
    let mapping = current_process_maps(false)
        .into_iter()
        .find(|m| m.range.contains(func) && m.permission.contains(Permission::READ));
    let (prefix, leaf) = match mapping {
        Some(m) => {
            let len = usize::try_from(m.range.end - func).unwrap_or(0);
            // SAFETY: [func, end of its mapping) is mapped readable memory of this process,
            // holding the code of a callback being registered (it stays mapped while the
            // callback exists).
            let code = unsafe { std::slice::from_raw_parts(func as *const u8, len) };
            // SAFETY: as above.
            let prefix = unsafe { code_prefix(func) }.to_vec();
            (prefix, analyze_code(code, func))
        }
        None => (
            Vec::new(),
            Err(format!("{func:#x} is not in a readable mapping").into()),
        ),
    };
    known.push(Known {
        func,
        prefix,
        leaf: leaf.clone(),
    });
    leaf
}

/// The entry direct sites call for an instruction callback `F`; `data` is the closure.
/// References, not raw pointers: a raw pointer dereference would get an alignment check in
/// builds with debug assertions, which reads every argument and calls the panic machinery.
///
/// Only direct sites call it (see the module docs): the analysis of its machine code
/// rejected it if it reads `vm` or `fpr`, which a direct site does not provide.
extern "C" fn inst_entry<F>(
    data: &mut F,
    vm: &mut VmRef<'_>,
    gpr: &mut GprState,
    fpr: &mut FprState,
) -> VmAction
where
    F: FnMut(&mut VmRef<'_>, &mut GprState, &mut FprState) -> VmAction,
{
    data(vm, gpr, fpr)
}

/// The entry direct sites call for a VM event callback `F`; see [`inst_entry`] (`state` is
/// provided when the machine code reads it).
extern "C" fn event_entry<F>(
    data: &mut F,
    vm: &mut VmRef<'_>,
    state: &VmState,
    gpr: &mut GprState,
    fpr: &mut FprState,
) -> VmAction
where
    F: FnMut(&mut VmRef<'_>, &VmState, &mut GprState, &mut FprState) -> VmAction,
{
    data(vm, state, gpr, fpr)
}

/// Boxes an instruction callback, with its direct call if it is eligible.
pub(crate) fn inst_callback<F>(f: F) -> (InstCallback, Option<DirectCall>)
where
    F: FnMut(&mut VmRef<'_>, &mut GprState, &mut FprState) -> VmAction + 'static,
{
    let boxed = Box::new(f);
    let data = &*boxed as *const F as u64;
    let func = inst_entry::<F> as *const () as u64;
    let direct = analyze(func).and_then(|l| l.direct_call(EntryKind::Inst, func, data));
    (boxed, direct.ok())
}

/// Boxes a VM event callback, with its direct call if it is eligible.
pub(crate) fn event_callback<F>(f: F) -> (VmCallback, Option<DirectCall>)
where
    F: FnMut(&mut VmRef<'_>, &VmState, &mut GprState, &mut FprState) -> VmAction + 'static,
{
    let boxed = Box::new(f);
    let data = &*boxed as *const F as u64;
    let func = event_entry::<F> as *const () as u64;
    let direct = analyze(func).and_then(|l| l.direct_call(EntryKind::Event, func, data));
    (boxed, direct.ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(code: &[u8]) -> Option<Leaf> {
        analyze_code(code, 0x1000).ok()
    }

    const fn bit(r: u8) -> u16 {
        1 << r
    }

    #[test]
    fn a_counter_is_a_leaf_that_reads_its_closure() {
        // mov rax,[rdi]; inc rax; mov [rdi],rax; xor eax,eax; ret
        let code = [
            0x48, 0x8b, 0x07, 0x48, 0xff, 0xc0, 0x48, 0x89, 0x07, 0x31, 0xc0, 0xc3,
        ];
        let l = leaf(&code).expect("leaf");
        assert_eq!(l.reads, bit(RDI));
        assert_eq!(l.writes, bit(RAX));
        let d = l.direct_call(EntryKind::Inst, 1, 2).expect("eligible");
        assert_eq!(d.saves, bit(RAX) | bit(RCX) | bit(RDI));
        assert!(!d.gpr_arg && !d.state_arg);
    }

    #[test]
    fn branches_are_followed_and_registers_defined_first_are_not_inputs() {
        // mov ecx,5; test rdx,rdx; je +3; add rcx,[rdx]; mov eax,ecx; ret
        let code = [
            0xb9, 0x05, 0, 0, 0, 0x48, 0x85, 0xd2, 0x74, 0x03, 0x48, 0x03, 0x0a, 0x89, 0xc8, 0xc3,
        ];
        let l = leaf(&code).expect("leaf");
        assert_eq!(l.reads, bit(RDX), "rcx is written before it is read");
        assert_eq!(l.writes, bit(RAX) | bit(RCX));
        let d = l.direct_call(EntryKind::Inst, 1, 2).expect("eligible");
        assert!(d.gpr_arg, "rdx is the GprState of an instruction callback");
        assert_eq!(d.saves, ALL_BUT_RSP);
        // For an event callback rdx is the VmState and rcx (written first) the GprState.
        let e = l.direct_call(EntryKind::Event, 1, 2).expect("eligible");
        assert!(e.state_arg && !e.gpr_arg);
        assert_eq!(e.saves, bit(RAX) | bit(RCX) | bit(RDX));
    }

    #[test]
    fn a_partial_write_does_not_define_the_register() {
        // mov cl,1; mov rax,rcx; ret: rcx's upper bytes come from the caller (the FprState).
        let l = leaf(&[0xb1, 0x01, 0x48, 0x89, 0xc8, 0xc3]).expect("leaf");
        assert_eq!(l.reads, bit(RCX));
        let refusal = l
            .direct_call(EntryKind::Inst, 1, 2)
            .expect_err("reads the FprState")
            .to_string();
        assert!(refusal.contains("FprState"), "{refusal}");
    }

    #[test]
    fn what_is_not_a_leaf_of_integer_code_is_refused() {
        // (what, code, a word of the reason given)
        let refused: &[(&str, &[u8], &str)] = &[
            ("call", &[0xe8, 0, 0, 0, 0, 0xc3], "not a leaf"),
            ("indirect jump", &[0xff, 0xe0], "indirect"),
            (
                "tail jump out of the code",
                &[0xe9, 0x00, 0x10, 0, 0],
                "tail call",
            ),
            ("sse", &[0x66, 0x0f, 0xef, 0xc0, 0xc3], "not integer code"),
            ("avx", &[0xc5, 0xf9, 0xef, 0xc0, 0xc3], "not integer code"),
            ("x87", &[0xd9, 0xe8, 0xc3], "not integer code"),
            ("rep stosb", &[0xf3, 0xaa, 0xc3], "string"),
            ("cld", &[0xfc, 0xc3], "cld"),
            ("popfq", &[0x9d, 0xc3], "popfq"),
            ("syscall", &[0x0f, 0x05, 0xc3], "syscall"),
            ("ud2", &[0x0f, 0x0b], "trap"),
            ("ret imm16", &[0xc2, 0x08, 0x00], "ret"),
            ("runs off the end", &[0x90, 0x90], "out of its code"),
            (
                "reads the VmRef past its view",
                &[0x48, 0x8b, 0x46, 0x20, 0xc3],
                "VmRef",
            ),
            (
                "takes the VmRef's address",
                &[0x48, 0x8d, 0x46, 0x08, 0xc3],
                "VmRef",
            ),
            (
                "compares the VmRef",
                &[0x48, 0x3b, 0x76, 0x08, 0xc3],
                "VmRef",
            ),
        ];
        for (what, code, reason) in refused {
            // The instruction is disassembled into the text only when it is displayed.
            let refusal = analyze_code(code, 0x1000)
                .and_then(|l| l.direct_call(EntryKind::Inst, 1, 2))
                .expect_err(what)
                .to_string();
            assert!(refusal.contains(reason), "{what}: {refusal}");
            assert!(!refusal.contains(AT), "{what}: {refusal}");
        }
    }

    #[test]
    fn plugin_trampolines_have_no_closure_argument() {
        // A plugin's event trampoline (vm, state, gpr, fpr): lock inc qword [rip+x];
        // xor eax,eax; ret. It reads nothing: no register is loaded for it.
        let code = [0xf0, 0x48, 0xff, 0x05, 0x10, 0, 0, 0, 0x31, 0xc0, 0xc3];
        let l = leaf(&code).expect("leaf");
        assert_eq!(l.reads, 0);
        let d = l
            .direct_call(EntryKind::PluginEvent, 1, 0)
            .expect("eligible");
        assert_eq!(d.saves, bit(RAX) | bit(RCX));
        assert!(!d.gpr_arg && !d.state_arg);
        // mov rax,[rdi] reads the VmRef of a plugin trampoline, and [rsi] its VmState
        // (event) or GprState (instruction).
        let vm = leaf(&[0x48, 0x8b, 0x07, 0xc3]).expect("leaf");
        assert!(vm.direct_call(EntryKind::PluginInst, 1, 0).is_err());
        let second = leaf(&[0x48, 0x8b, 0x06, 0x31, 0xc0, 0xc3]).expect("leaf");
        assert!(
            second
                .direct_call(EntryKind::PluginEvent, 1, 0)
                .expect("ok")
                .state_arg
        );
        assert!(
            second
                .direct_call(EntryKind::PluginInst, 1, 0)
                .expect("ok")
                .gpr_arg
        );
    }

    #[test]
    fn reading_the_accesses_of_the_vm_ref_or_raw_vm_is_allowed() {
        // mov rax,[rsi+8]; add rax,[rsi]; ret: a closure's VmRef view (length, pointer).
        let code = [0x48, 0x8b, 0x46, 0x08, 0x48, 0x03, 0x06, 0xc3];
        let l = leaf(&code).expect("leaf");
        assert_eq!(l.reads, 0);
        assert_eq!((l.view_lo, l.view_hi), (bit(RSI), 0));
        let d = l.direct_call(EntryKind::Inst, 1, 2).expect("eligible");
        assert!(d.view_arg && !d.gpr_arg);
        assert_eq!(d.saves, bit(RAX) | bit(RCX) | bit(RSI));
        // For a plugin's trampoline rsi is its GprState, and the view a read of it.
        let p = l
            .direct_call(EntryKind::PluginInst, 1, 0)
            .expect("eligible");
        assert!(p.gpr_arg && !p.view_arg);
        // mov rax,[rdi+0x18]; add rax,[rdi+0x10]; ret: a plugin's RawVm accesses.
        let raw = leaf(&[0x48, 0x8b, 0x47, 0x18, 0x48, 0x03, 0x47, 0x10, 0xc3]).expect("leaf");
        assert_eq!((raw.view_lo, raw.view_hi), (0, bit(RDI)));
        let d = raw
            .direct_call(EntryKind::PluginInst, 1, 0)
            .expect("eligible");
        assert!(d.view_arg);
        assert_eq!(d.saves, bit(RAX) | bit(RCX) | bit(RDI));
        // ... but for a closure rdi is its data, read as anything.
        assert!(
            !raw.direct_call(EntryKind::Inst, 1, 2)
                .expect("eligible")
                .view_arg
        );
        // mov rax,[rdi+8]; ret: a RawVm's `ctx` (only the general path has one).
        let ctx = leaf(&[0x48, 0x8b, 0x47, 0x08, 0xc3]).expect("leaf");
        assert!(ctx.direct_call(EntryKind::PluginInst, 1, 0).is_err());
        // mov rax,[rsi+0x10]; ret: past a closure VmRef's view.
        let past = leaf(&[0x48, 0x8b, 0x46, 0x10, 0xc3]).expect("leaf");
        assert!(past.direct_call(EntryKind::Inst, 1, 2).is_err());
        // A load across the two windows is no view read: mov rax,[rsi+0xc]; ret.
        let across = leaf(&[0x48, 0x8b, 0x46, 0x0c, 0xc3]).expect("leaf");
        assert_eq!(across.reads, bit(RSI));
        // A later read of rsi as a whole makes it an ordinary read.
        // mov rax,[rsi+8]; mov rcx,rsi; ret
        let both = leaf(&[0x48, 0x8b, 0x46, 0x08, 0x48, 0x89, 0xf1, 0xc3]).expect("leaf");
        assert_eq!(both.reads & bit(RSI), bit(RSI));
        assert!(both.direct_call(EntryKind::Inst, 1, 2).is_err());
    }

    #[test]
    fn thread_local_access_is_noted() {
        // mov rax, fs:[0]; inc qword [rax-8]; xor eax,eax; ret
        let code = [
            0x64, 0x48, 0x8b, 0x04, 0x25, 0, 0, 0, 0, 0x48, 0xff, 0x40, 0xf8, 0x31, 0xc0, 0xc3,
        ];
        let l = leaf(&code).expect("leaf");
        assert!(l.fs_gs);
        assert!(!leaf(&[0x31, 0xc0, 0xc3]).expect("leaf").fs_gs);
    }

    #[test]
    fn a_loop_terminates() {
        // l: dec rdi; jnz l; xor eax,eax; ret
        let l = leaf(&[0x48, 0xff, 0xcf, 0x75, 0xfb, 0x31, 0xc0, 0xc3]).expect("leaf");
        assert_eq!(l.reads, bit(RDI));
    }

    /// The instructions of an inline body, in Intel syntax.
    fn listing(body: &InlineBody) -> Vec<String> {
        let mut f = iced_x86::IntelFormatter::new();
        Decoder::with_ip(64, body.code(), 0, DecoderOptions::NONE)
            .into_iter()
            .map(|i| {
                let mut s = String::new();
                iced_x86::Formatter::format(&mut f, &i, &mut s);
                s
            })
            .collect()
    }

    #[test]
    fn a_sharded_counter_is_copied_with_its_address_made_absolute() {
        // The count test plugin's trampoline: mov rax,fs:[0]; mov rcx,K; imul rcx,rax;
        // shr rcx,58; shl ecx,6; lea rax,[rip+0x100]; lock inc qword [rcx+rax];
        // xor eax,eax; ret
        let mut code = vec![0x64, 0x48, 0x8b, 0x04, 0x25, 0, 0, 0, 0, 0x48, 0xb9];
        code.extend_from_slice(&0x9e37_79b9_7f4a_7c15u64.to_le_bytes());
        code.extend_from_slice(&[0x48, 0x0f, 0xaf, 0xc8, 0x48, 0xc1, 0xe9, 0x3a, 0xc1, 0xe1]);
        code.extend_from_slice(&[0x06, 0x48, 0x8d, 0x05, 0, 1, 0, 0]);
        let lea_end = 0x1000 + code.len() as u64;
        code.extend_from_slice(&[0xf0, 0x48, 0xff, 0x04, 0x01, 0x31, 0xc0, 0xc3]);
        let l = leaf(&code).expect("leaf");
        let d = l
            .direct_call(EntryKind::PluginEvent, 0x1000, 0)
            .expect("direct");
        let body = d.inline.expect("inlined");
        assert_eq!(body.saves, bit(RAX) | bit(RCX));
        let text = listing(&body);
        assert_eq!(text.len(), 8, "{text:?}: the ret is left out");
        assert_eq!(
            text[5],
            format!("mov rax,{:X}h", lea_end + 0x100),
            "{text:?}"
        );
        assert_eq!(text[6], "lock inc qword ptr [rcx+rax]", "{text:?}");
    }

    #[test]
    fn a_rip_relative_operand_goes_through_a_scratch_register() {
        // lock inc qword [rip+0x40]; xor eax,eax; ret
        let code = [0xf0, 0x48, 0xff, 0x05, 0x40, 0, 0, 0, 0x31, 0xc0, 0xc3];
        let body = leaf(&code).and_then(|l| l.inline).expect("inlined");
        assert_eq!(body.saves, bit(RAX) | bit(RCX), "rcx is borrowed");
        assert_eq!(
            listing(&body),
            ["mov rcx,1048h", "lock inc qword ptr [rcx]", "xor eax,eax"]
        );
        // With rcx used, the next free low register; with REX.B set (ignored by RIP-relative
        // addressing) it is cleared: mov ecx,1; lock add qword [rip+0x40] (REX.WB), ecx;
        // xor eax,eax; ret
        let wide = [
            0xb9, 1, 0, 0, 0, 0xf0, 0x49, 0x01, 0x0d, 0x40, 0, 0, 0, 0x31, 0xc0, 0xc3,
        ];
        let body = leaf(&wide).and_then(|l| l.inline).expect("inlined");
        assert_eq!(body.saves, bit(RAX) | bit(RCX) | bit(RDX));
        assert_eq!(
            listing(&body),
            [
                "mov ecx,1",
                "mov rdx,104Dh",
                "lock add [rdx],rcx",
                "xor eax,eax"
            ]
        );
        // The copy runs: it adds one to the word the original addressed.
        static WORD: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let at = &WORD as *const _ as u64;
        let ip = at - 8 - 0x40;
        let body = analyze_code(&code, ip)
            .ok()
            .and_then(|l| l.inline)
            .expect("inlined");
        let page = crate::engine::emitter::test_mapping(
            4096,
            libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC,
            0,
        );
        // SAFETY: `page` is a fresh RWX page; the body (rcx and rax clobbered, both
        // caller-saved) plus `ret` is a function of no argument.
        unsafe {
            std::ptr::copy_nonoverlapping(body.code().as_ptr(), page, body.code().len());
            *page.add(body.code().len()) = 0xc3;
            let f: extern "C" fn() = std::mem::transmute(page);
            f();
            f();
        }
        assert_eq!(WORD.load(std::sync::atomic::Ordering::Relaxed), 2);
    }

    #[test]
    fn only_straight_code_of_no_argument_that_continues_is_inlined() {
        let inlined = |code: &[u8]| {
            leaf(code)
                .and_then(|l| l.direct_call(EntryKind::Inst, 1, 2).ok())
                .is_some_and(|d| d.inline.is_some())
        };
        assert!(inlined(&[0x31, 0xc0, 0xc3]), "xor eax,eax; ret");
        let refused: &[(&str, &[u8])] = &[
            // mov rax,[rdi]; inc rax; mov [rdi],rax; xor eax,eax; ret
            (
                "reads its closure",
                &[
                    0x48, 0x8b, 0x07, 0x48, 0xff, 0xc0, 0x48, 0x89, 0x07, 0x31, 0xc0, 0xc3,
                ],
            ),
            ("returns another action", &[0xb8, 0x01, 0, 0, 0, 0xc3]),
            ("sets eax after zeroing it", &[0x31, 0xc0, 0xb0, 0x01, 0xc3]),
            ("branches", &[0x31, 0xc0, 0x74, 0x00, 0xc3]),
            ("uses the stack", &[0x51, 0x59, 0x31, 0xc0, 0xc3]),
        ];
        for (what, code) in refused {
            assert!(leaf(code).is_some(), "{what}: a leaf");
            assert!(!inlined(code), "{what}: inlined");
        }
    }
}
