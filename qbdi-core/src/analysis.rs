//! Instruction analysis: QBDI's `InstAnalysis` / `OperandAnalysis` for one x86-64 instruction.
//!
//! This module owns turning instruction bytes into the public description callbacks and
//! instrumentation rules see (mnemonic, control flow, memory sizes, condition, disassembly,
//! operands, symbol), and the mnemonic glob patterns of `add_mnemonic_cb`. It only reads the
//! bytes it is given (and, for symbols, the process's mapped files): it never touches guest
//! state, the code cache or the engine.
//!
//! Semantics follow QBDI's, with iced-x86's names: `mnemonic` is iced's [`Mnemonic`] in upper
//! case (`"CALL"`, `"MOVAPS"`), register names are iced's in lower case (`"rax"`, `"xmm0"`).

use std::cell::RefCell;
use std::fmt;
use std::mem::ManuallyDrop;
use std::sync::OnceLock;

use iced_x86::{
    ConditionCode, Decoder, DecoderOptions, FlowControl, Formatter, GasFormatter, Instruction,
    InstructionInfoFactory, IntelFormatter, Mnemonic, OpAccess, OpKind, Register, RflagsBits,
};

use crate::state::{FprState, GPR_NAMES};

bitflags::bitflags! {
    /// Which parts of an [`InstAnalysis`] to compute (QBDI's `AnalysisType`, same values).
    /// [`INSTRUCTION`](Self::INSTRUCTION) fields are always filled.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
    pub struct AnalysisType: u32 {
        /// Mnemonic, size, control flow, memory and flags properties, condition.
        const INSTRUCTION = 1;
        /// The `disassembly` text.
        const DISASSEMBLY = 2;
        /// The `operands` list.
        const OPERANDS = 4;
        /// `symbol_name`, `symbol_offset` and `module_name`.
        const SYMBOL = 8;
    }
}

/// The condition under which a conditional instruction acts (QBDI's `ConditionType`, same
/// values: `x ^ 1` negates a condition, except `None`).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum ConditionType {
    /// The instruction is not conditional.
    #[default]
    None = 0,
    /// Always true.
    Always = 2,
    /// Always false.
    Never = 3,
    /// Equal / zero (`ZF=1`).
    Equals = 4,
    /// Not equal / not zero (`ZF=0`).
    NotEquals = 5,
    /// Unsigned above (`CF=0 and ZF=0`).
    Above = 6,
    /// Unsigned below or equal (`CF=1 or ZF=1`).
    BelowEquals = 7,
    /// Unsigned above or equal (`CF=0`).
    AboveEquals = 8,
    /// Unsigned below (`CF=1`).
    Below = 9,
    /// Signed greater (`ZF=0 and SF=OF`).
    Great = 0xa,
    /// Signed less or equal (`ZF=1 or SF!=OF`).
    LessEquals = 0xb,
    /// Signed greater or equal (`SF=OF`).
    GreatEquals = 0xc,
    /// Signed less (`SF!=OF`).
    Less = 0xd,
    /// Parity even (`PF=1`).
    Even = 0xe,
    /// Parity odd (`PF=0`).
    Odd = 0xf,
    /// Overflow (`OF=1`).
    Overflow = 0x10,
    /// No overflow (`OF=0`).
    NotOverflow = 0x11,
    /// Sign (`SF=1`).
    Sign = 0x12,
    /// No sign (`SF=0`).
    NotSign = 0x13,
}

impl ConditionType {
    /// The opposite condition (`Equals` <-> `NotEquals`, `Always` <-> `Never`...);
    /// `None` stays `None`.
    #[must_use]
    pub fn negated(self) -> Self {
        use ConditionType as C;
        match self {
            C::None => C::None,
            C::Always => C::Never,
            C::Never => C::Always,
            C::Equals => C::NotEquals,
            C::NotEquals => C::Equals,
            C::Above => C::BelowEquals,
            C::BelowEquals => C::Above,
            C::AboveEquals => C::Below,
            C::Below => C::AboveEquals,
            C::Great => C::LessEquals,
            C::LessEquals => C::Great,
            C::GreatEquals => C::Less,
            C::Less => C::GreatEquals,
            C::Even => C::Odd,
            C::Odd => C::Even,
            C::Overflow => C::NotOverflow,
            C::NotOverflow => C::Overflow,
            C::Sign => C::NotSign,
            C::NotSign => C::Sign,
        }
    }
}

/// What an operand is (QBDI's `OperandType`, same values).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum OperandType {
    /// Not a valid operand.
    #[default]
    Invalid = 0,
    /// An immediate: a constant, a branch displacement, or a part of a memory address.
    Imm = 1,
    /// A general purpose register (also `rip` as the base of RIP-relative addresses).
    Gpr = 2,
    /// A predicate register: the AVX-512 mask registers `k0`..`k7`.
    Pred = 3,
    /// A floating point or vector register: `st0`..`st7`, `mm0`..`mm7`, `xmm`, `ymm`, `zmm`.
    Fpr = 4,
    /// A segment register, or a register QBDI does not model (`cr0`, `dr7`, `tmm0`...).
    Seg = 5,
}

bitflags::bitflags! {
    /// Properties of an operand (QBDI's `OperandFlag`, same values).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
    pub struct OperandFlag: u8 {
        /// No property.
        const NONE = 0;
        /// Part of a memory address (base, scale, index, displacement, segment).
        const ADDR = 1;
        /// Relative to the address of the next instruction (branch displacements,
        /// RIP-relative addresses).
        const PCREL = 2;
        /// Part of an address that is computed but not accessed (`lea`, hinting `nop`).
        const UNDEFINED_EFFECT = 4;
        /// Not written in the instruction: used or changed implicitly (`rsp` of `push`).
        const IMPLICIT = 8;
    }
}

bitflags::bitflags! {
    /// How an instruction uses a register or the flags (QBDI's `RegisterAccessType`);
    /// empty means unused.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
    pub struct RegisterAccessType: u8 {
        /// Read.
        const READ = 1;
        /// Written.
        const WRITE = 2;
        /// Read and written.
        const READ_WRITE = 3;
    }
}

/// One operand of an analysed instruction (QBDI's `OperandAnalysis`).
///
/// A memory operand is described as QBDI does, by its parts, each flagged
/// [`OperandFlag::ADDR`] (or [`OperandFlag::UNDEFINED_EFFECT`] when the address is only
/// computed, as by `lea`): the base register if any (`rip`, flagged `PCREL`, for RIP-relative
/// addresses), the scale as an `Imm` and the index register if there is an index, the
/// displacement as an `Imm` (relative to the next instruction and flagged `PCREL` for
/// RIP-relative addresses), and the segment register for `fs:`/`gs:` overrides.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct OperandAnalysis {
    /// What the operand is.
    pub op_type: OperandType,
    /// Its properties.
    pub flag: OperandFlag,
    /// The value of an immediate (sign-extended where the encoding sign-extends; for a
    /// direct branch, the displacement from the next instruction), or, for a register,
    /// iced-x86's register number (`iced_x86::Register::RAX as i64`).
    pub value: i64,
    /// Size in bytes: of the register, of the encoded immediate or branch displacement, or
    /// 8 for the scale and displacement of a memory address.
    pub size: u16,
    /// Bit offset of the register inside its full register: 8 for `ah`, `bh`, `ch`, `dh`,
    /// else 0.
    pub reg_off: u8,
    /// Where the register lives: for a general purpose register (and `rip`), the index of its
    /// full register in [`GprState`](crate::GprState) field order (`rax`=0 ... `rsp`=15,
    /// `rip`=16); for `st`/`mm`/`xmm`/`ymm`/`zmm`/`k` registers, the byte offset of its
    /// (low) part in [`FprState`]; -1 otherwise.
    pub reg_ctx_idx: i16,
    /// iced-x86's register name in lower case (`"rax"`, `"eax"`, `"xmm0"`), `""` for
    /// immediates.
    pub reg_name: &'static str,
    /// How the instruction uses the register (empty for immediates).
    pub reg_access: RegisterAccessType,
}

/// The description of one instruction (QBDI's `InstAnalysis`).
///
/// Which fields are meaningful depends on [`analysis_type`](Self::analysis_type): the
/// instruction fields always are, `disassembly` needs [`AnalysisType::DISASSEMBLY`],
/// `operands` needs [`AnalysisType::OPERANDS`], the symbol fields need
/// [`AnalysisType::SYMBOL`]; the others are left empty.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct InstAnalysis {
    /// Address of the instruction.
    pub address: u64,
    /// Length in bytes.
    pub inst_size: u32,
    /// iced-x86's mnemonic in upper case (`"CALL"`, `"JNE"`, `"MOVAPS"`).
    pub mnemonic: &'static str,
    /// The instruction may change the control flow: branches, calls, returns, `xbegin`
    /// (not `syscall`, `int3` or `ud2`).
    pub affect_control_flow: bool,
    /// A jump: `jmp`, `jcc`, `loop*`, `jrcxz` (not calls or returns).
    pub is_branch: bool,
    /// A call (`call`; not `syscall` or `sysenter`).
    pub is_call: bool,
    /// A return (`ret`, `retf`, `iret`; not `sysret`).
    pub is_return: bool,
    /// A comparison whose only effect is on the flags: `cmp`, `test`, `(v)(u)comis*`,
    /// `(v)ptest`, `vtestp*`, `k(or)test*`, x87 `fcom*`/`fucom*`/`ficom*`/`ftst`.
    pub is_compare: bool,
    /// The instruction acts only under a condition: `jcc`, `cmovcc`, `setcc`, `loop*`,
    /// `jrcxz`, `cmpccxadd`... (see [`condition`](Self::condition)).
    pub is_predicable: bool,
    /// A move of an immediate into a register (`mov reg, imm`).
    pub is_move_imm: bool,
    /// The instruction may read memory (including the implicit stack reads of `pop`, `ret`).
    pub may_load: bool,
    /// The instruction may write memory (including the implicit stack writes of `push`,
    /// `call`).
    pub may_store: bool,
    /// Size in bytes of the largest memory read (0 if none, or if unknown).
    pub load_size: u32,
    /// Size in bytes of the largest memory write (0 if none, or if unknown).
    pub store_size: u32,
    /// The condition of a conditional instruction (`None` for `loop`, `jrcxz` and
    /// unconditional instructions).
    pub condition: ConditionType,
    /// The instruction in Intel syntax (`mov rax,[rsp+8]`), or AT&T syntax when asked.
    pub disassembly: String,
    /// How the instruction uses the arithmetic and control flags of RFLAGS.
    pub flags_access: RegisterAccessType,
    /// The explicit operands in instruction order, then the implicit registers (flagged
    /// [`OperandFlag::IMPLICIT`]).
    pub operands: Vec<OperandAnalysis>,
    /// Name of the symbol containing the instruction (`""` if unknown). Rust symbols are not
    /// demangled.
    pub symbol_name: String,
    /// Offset of the instruction from the start of that symbol.
    pub symbol_offset: u32,
    /// Basename of the file the instruction was loaded from (`"libc.so.6"`), `""` if none.
    pub module_name: String,
    /// Which parts were computed.
    pub analysis_type: AnalysisType,
}

impl fmt::Display for InstAnalysis {
    /// `0x401000: mov rax,[rsp+8]` (the mnemonic when no disassembly was computed).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.disassembly.is_empty() {
            write!(f, "{:#x}: {}", self.address, self.mnemonic)
        } else {
            write!(f, "{:#x}: {}", self.address, self.disassembly)
        }
    }
}

/// Decodes the instruction at `address`, whose bytes start at `code[0]`, and describes the
/// parts asked in `what` (the [`AnalysisType::INSTRUCTION`] fields are always filled).
/// `att_syntax` selects AT&T instead of Intel disassembly. Returns `None` if the bytes are
/// not a valid instruction (or are cut short).
#[must_use]
pub fn analyze(
    code: &[u8],
    address: u64,
    what: AnalysisType,
    att_syntax: bool,
) -> Option<InstAnalysis> {
    let mut decoder = Decoder::with_ip(64, code, address, DecoderOptions::NONE);
    let inst = decoder.decode();
    if inst.is_invalid() {
        return None;
    }
    let offsets = decoder.get_constant_offsets(&inst);
    let mut analysis = with_factory(|factory| {
        let info = factory.info(&inst);
        let mut a = instruction_fields(&inst, info);
        if what.contains(AnalysisType::OPERANDS) {
            a.operands = operands(&inst, info, offsets.immediate_size());
        }
        a
    });
    analysis.analysis_type = what | AnalysisType::INSTRUCTION;
    if what.contains(AnalysisType::DISASSEMBLY) {
        analysis.disassembly = disassemble(&inst, att_syntax);
    }
    if what.contains(AnalysisType::SYMBOL)
        && let Some((symbol, offset, module)) = crate::symbols::symbolize(address)
    {
        analysis.symbol_name = symbol;
        analysis.symbol_offset = offset;
        analysis.module_name = module;
    }
    Some(analysis)
}

/// All iced-x86 mnemonics in upper case (`"AAA"` ... `"XTEST"`...), without `INVALID`.
#[must_use]
pub fn mnemonic_names() -> &'static [&'static str] {
    // Mnemonic::INVALID is value 0, the first entry of the table.
    &mnemonic_table()[1..]
}

/// Whether `mnemonic` matches the glob `pattern`, ignoring case: `*` matches any run of
/// characters (also none), `?` exactly one, anything else itself; the whole name must
/// match (`"CALL*"` matches `"CALL"`, `"J*"` matches `"JMP"` and `"JNE"`, `"MOV"` only
/// `"MOV"`).
#[must_use]
pub fn mnemonic_matches(pattern: &str, mnemonic: &str) -> bool {
    let (p, s) = (pattern.as_bytes(), mnemonic.as_bytes());
    let (mut pi, mut si) = (0, 0);
    // Where the last `*` was, and how much of `s` it swallows so far: on a mismatch the
    // star takes one more character (classic linear-backtracking glob).
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, si));
            pi += 1;
        } else if pi < p.len() && (p[pi] == b'?' || p[pi].eq_ignore_ascii_case(&s[si])) {
            pi += 1;
            si += 1;
        } else if let Some((star_pi, star_si)) = star {
            pi = star_pi + 1;
            si = star_si + 1;
            star = Some((star_pi, star_si + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// Whether `pattern` matches at least one x86 mnemonic (see [`mnemonic_matches`]).
#[must_use]
pub fn mnemonic_pattern_is_valid(pattern: &str) -> bool {
    mnemonic_names()
        .iter()
        .any(|name| mnemonic_matches(pattern, name))
}

/// Upper-case names of every iced mnemonic, indexed by `Mnemonic as usize`.
fn mnemonic_table() -> &'static [&'static str] {
    static TABLE: OnceLock<Vec<&'static str>> = OnceLock::new();
    TABLE.get_or_init(|| {
        Mnemonic::values()
            .map(|m| leak(format!("{m:?}").to_ascii_uppercase()))
            .collect()
    })
}

/// Lower-case names of every iced register, indexed by `Register as usize`; `""` for
/// `Register::None`.
fn register_table() -> &'static [&'static str] {
    static TABLE: OnceLock<Vec<&'static str>> = OnceLock::new();
    TABLE.get_or_init(|| {
        Register::values()
            .map(|r| {
                if r == Register::None {
                    ""
                } else {
                    leak(format!("{r:?}").to_ascii_lowercase())
                }
            })
            .collect()
    })
}

/// Gives a name table entry a `'static` lifetime: each table is built once per process.
fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

fn mnemonic_name(m: Mnemonic) -> &'static str {
    mnemonic_table().get(m as usize).copied().unwrap_or("")
}

fn register_name(r: Register) -> &'static str {
    register_table().get(r as usize).copied().unwrap_or("")
}

/// Runs `f` with this thread's instruction info factory (it keeps its buffers from one
/// instruction to the next). The factory is taken out of the thread-local while in use, so a
/// nested or late (thread teardown) call simply gets a fresh one.
///
/// The thread-locals here are never dropped (`ManuallyDrop`): std registers one that needs
/// dropping with glibc on its first use on a thread, and glibc allocates that record with
/// `calloc`, which must not happen in a callback while the guest is inside `malloc`.
fn with_factory<T>(f: impl FnOnce(&mut InstructionInfoFactory) -> T) -> T {
    thread_local! {
        static FACTORY: RefCell<Option<ManuallyDrop<InstructionInfoFactory>>> =
            const { RefCell::new(None) };
    }
    let mut factory = FACTORY
        .try_with(RefCell::take)
        .ok()
        .flatten()
        .map(ManuallyDrop::into_inner)
        .unwrap_or_else(InstructionInfoFactory::new);
    let result = f(&mut factory);
    let _ = FACTORY.try_with(|cell| cell.replace(Some(ManuallyDrop::new(factory))));
    result
}

/// RFLAGS bits QBDI's `flagsAccess` is about: OF SF ZF AF CF PF DF IF AC (iced also reports
/// the x87 condition bits C0-C3 and UIF, which are not in RFLAGS).
const RFLAGS_MASK: u32 = RflagsBits::OF
    | RflagsBits::SF
    | RflagsBits::ZF
    | RflagsBits::AF
    | RflagsBits::CF
    | RflagsBits::PF
    | RflagsBits::DF
    | RflagsBits::IF
    | RflagsBits::AC;

fn instruction_fields(inst: &Instruction, info: &iced_x86::InstructionInfo) -> InstAnalysis {
    let flow = inst.flow_control();
    // iced also classes `syscall`, `sysenter`, `vmcall`... as calls and `sysret`, `rsm`...
    // as returns; in user code they come back to the next instruction (or never return).
    let is_call = matches!(flow, FlowControl::Call | FlowControl::IndirectCall)
        && inst.mnemonic() == Mnemonic::Call;
    let is_return = flow == FlowControl::Return
        && matches!(
            inst.mnemonic(),
            Mnemonic::Ret | Mnemonic::Retf | Mnemonic::Iret | Mnemonic::Iretd | Mnemonic::Iretq
        );
    let is_branch = matches!(
        flow,
        FlowControl::UnconditionalBranch
            | FlowControl::IndirectBranch
            | FlowControl::ConditionalBranch
    );
    let affect_control_flow =
        is_call || is_return || is_branch || flow == FlowControl::XbeginXabortXend;

    let (mut may_load, mut may_store, mut load_size, mut store_size) = (false, false, 0u32, 0u32);
    for mem in info.used_memory() {
        // iced leaves the size of REP string accesses unknown (the count is dynamic); one
        // iteration accesses the instruction's element size.
        let size = match mem.memory_size().size() {
            0 => inst.memory_size().size(),
            size => size,
        };
        let size = u32::try_from(size).unwrap_or(u32::MAX);
        let access = access_type(mem.access());
        if access.contains(RegisterAccessType::READ) {
            may_load = true;
            load_size = load_size.max(size);
        }
        if access.contains(RegisterAccessType::WRITE) {
            may_store = true;
            store_size = store_size.max(size);
        }
    }

    let mut flags_access = RegisterAccessType::empty();
    if inst.rflags_read() & RFLAGS_MASK != 0 {
        flags_access |= RegisterAccessType::READ;
    }
    if inst.rflags_modified() & RFLAGS_MASK != 0 {
        flags_access |= RegisterAccessType::WRITE;
    }

    let condition = condition_type(inst.condition_code());
    let is_move_imm = inst.mnemonic() == Mnemonic::Mov
        && inst.op_count() == 2
        && inst.op0_kind() == OpKind::Register
        && is_immediate(inst.op1_kind());

    InstAnalysis {
        address: inst.ip(),
        inst_size: inst.len() as u32,
        mnemonic: mnemonic_name(inst.mnemonic()),
        affect_control_flow,
        is_branch,
        is_call,
        is_return,
        is_compare: is_compare(inst.mnemonic()),
        is_predicable: condition != ConditionType::None || inst.is_loop() || inst.is_jcx_short(),
        is_move_imm,
        may_load,
        may_store,
        load_size,
        store_size,
        condition,
        flags_access,
        ..InstAnalysis::default()
    }
}

fn is_compare(m: Mnemonic) -> bool {
    use Mnemonic as M;
    matches!(
        m,
        M::Cmp
            | M::Test
            | M::Comiss
            | M::Comisd
            | M::Ucomiss
            | M::Ucomisd
            | M::Vcomiss
            | M::Vcomisd
            | M::Vucomiss
            | M::Vucomisd
            | M::Vcomish
            | M::Vucomish
            | M::Ptest
            | M::Vptest
            | M::Vtestps
            | M::Vtestpd
            | M::Kortestb
            | M::Kortestw
            | M::Kortestd
            | M::Kortestq
            | M::Ktestb
            | M::Ktestw
            | M::Ktestd
            | M::Ktestq
            | M::Fcom
            | M::Fcomp
            | M::Fcompp
            | M::Fcomi
            | M::Fcomip
            | M::Fucom
            | M::Fucomp
            | M::Fucompp
            | M::Fucomi
            | M::Fucomip
            | M::Ficom
            | M::Ficomp
            | M::Ftst
    )
}

fn condition_type(cc: ConditionCode) -> ConditionType {
    use ConditionType as C;
    match cc {
        ConditionCode::o => C::Overflow,
        ConditionCode::no => C::NotOverflow,
        ConditionCode::b => C::Below,
        ConditionCode::ae => C::AboveEquals,
        ConditionCode::e => C::Equals,
        ConditionCode::ne => C::NotEquals,
        ConditionCode::be => C::BelowEquals,
        ConditionCode::a => C::Above,
        ConditionCode::s => C::Sign,
        ConditionCode::ns => C::NotSign,
        ConditionCode::p => C::Even,
        ConditionCode::np => C::Odd,
        ConditionCode::l => C::Less,
        ConditionCode::ge => C::GreatEquals,
        ConditionCode::le => C::LessEquals,
        ConditionCode::g => C::Great,
        _ => C::None,
    }
}

fn access_type(access: OpAccess) -> RegisterAccessType {
    match access {
        OpAccess::Read | OpAccess::CondRead => RegisterAccessType::READ,
        OpAccess::Write | OpAccess::CondWrite => RegisterAccessType::WRITE,
        OpAccess::ReadWrite | OpAccess::ReadCondWrite => RegisterAccessType::READ_WRITE,
        _ => RegisterAccessType::empty(),
    }
}

fn is_immediate(kind: OpKind) -> bool {
    immediate_size(kind).is_some()
}

/// Encoded size of an immediate operand kind, `None` if `kind` is no immediate.
fn immediate_size(kind: OpKind) -> Option<u16> {
    match kind {
        OpKind::Immediate8
        | OpKind::Immediate8_2nd
        | OpKind::Immediate8to16
        | OpKind::Immediate8to32
        | OpKind::Immediate8to64 => Some(1),
        OpKind::Immediate16 => Some(2),
        OpKind::Immediate32 | OpKind::Immediate32to64 => Some(4),
        OpKind::Immediate64 => Some(8),
        _ => None,
    }
}

fn immediate_operand(value: i64, size: u16, flag: OperandFlag) -> OperandAnalysis {
    OperandAnalysis {
        op_type: OperandType::Imm,
        flag,
        value,
        size,
        reg_ctx_idx: -1,
        ..OperandAnalysis::default()
    }
}

/// Describes register `reg` as an operand.
fn register_operand(
    reg: Register,
    flag: OperandFlag,
    reg_access: RegisterAccessType,
) -> OperandAnalysis {
    let (op_type, reg_ctx_idx) = register_location(reg);
    let reg_off = if matches!(
        reg,
        Register::AH | Register::BH | Register::CH | Register::DH
    ) {
        8
    } else {
        0
    };
    OperandAnalysis {
        op_type,
        flag,
        value: reg as i64,
        size: reg.size() as u16,
        reg_off,
        reg_ctx_idx,
        reg_name: register_name(reg),
        reg_access,
    }
}

/// The kind of register `reg` is, and where it lives in `GprState` (field index) or
/// `FprState` (byte offset); -1 when neither holds it.
fn register_location(reg: Register) -> (OperandType, i16) {
    let n = reg.number();
    let fpr = |offset: usize| (OperandType::Fpr, i16::try_from(offset).unwrap_or(-1));
    if reg.is_gpr() || reg.is_ip() {
        let full = register_name(reg.full_register());
        let idx = GPR_NAMES.iter().position(|&name| name == full);
        (OperandType::Gpr, idx.map_or(-1, |i| i as i16))
    } else if reg.is_xmm() || reg.is_ymm() || reg.is_zmm() {
        // Registers 0-15 start in the legacy xmm area (their upper parts are in `ymm0..` and
        // `zmm_hi256`); registers 16-31 are whole in `hi16_zmm`.
        if n < 16 {
            fpr(core::mem::offset_of!(FprState, xmm0) + 16 * n)
        } else {
            fpr(core::mem::offset_of!(FprState, hi16_zmm) + 64 * (n - 16))
        }
    } else if reg.is_st() || reg.is_mm() {
        // FXSAVE stores ST(0)..ST(7) in stack order; MMX code runs with TOP = 0, so mmN is
        // in the same slot as stN.
        fpr(core::mem::offset_of!(FprState, stmm0) + 16 * n)
    } else if reg.is_k() {
        let offset = core::mem::offset_of!(FprState, k) + 8 * n;
        (OperandType::Pred, i16::try_from(offset).unwrap_or(-1))
    } else {
        (OperandType::Seg, -1)
    }
}

/// The operand list: explicit operands in instruction order, then implicit registers.
fn operands(
    inst: &Instruction,
    info: &iced_x86::InstructionInfo,
    branch_size: usize,
) -> Vec<OperandAnalysis> {
    let mut ops = Vec::with_capacity(8);
    let next_ip = inst.next_ip();
    for i in 0..inst.op_count() {
        let kind = inst.op_kind(i);
        let access = info.op_access(i);
        match kind {
            OpKind::Register => ops.push(register_operand(
                inst.op_register(i),
                OperandFlag::NONE,
                access_type(access),
            )),
            OpKind::NearBranch16 | OpKind::NearBranch32 | OpKind::NearBranch64 => {
                let displacement = inst.near_branch_target().wrapping_sub(next_ip) as i64;
                let size = if branch_size == 0 {
                    4
                } else {
                    branch_size as u16
                };
                ops.push(immediate_operand(displacement, size, OperandFlag::PCREL));
            }
            OpKind::FarBranch16 | OpKind::FarBranch32 => {
                let size = if kind == OpKind::FarBranch16 { 2 } else { 4 };
                ops.push(immediate_operand(
                    i64::from(inst.far_branch32()),
                    size,
                    OperandFlag::NONE,
                ));
            }
            OpKind::MemorySegSI
            | OpKind::MemorySegESI
            | OpKind::MemorySegRSI
            | OpKind::MemorySegDI
            | OpKind::MemorySegEDI
            | OpKind::MemorySegRDI
            | OpKind::MemoryESDI
            | OpKind::MemoryESEDI
            | OpKind::MemoryESRDI => {
                let base = match kind {
                    OpKind::MemorySegSI => Register::SI,
                    OpKind::MemorySegESI => Register::ESI,
                    OpKind::MemorySegRSI => Register::RSI,
                    OpKind::MemorySegDI | OpKind::MemoryESDI => Register::DI,
                    OpKind::MemorySegEDI | OpKind::MemoryESEDI => Register::EDI,
                    _ => Register::RDI,
                };
                ops.push(register_operand(
                    base,
                    OperandFlag::ADDR,
                    RegisterAccessType::READ,
                ));
            }
            OpKind::Memory => memory_operands(inst, access, &mut ops),
            _ => match immediate_size(kind) {
                Some(size) => ops.push(immediate_operand(
                    immediate_value(inst, i, kind),
                    size,
                    OperandFlag::NONE,
                )),
                None => ops.push(OperandAnalysis {
                    reg_ctx_idx: -1,
                    ..OperandAnalysis::default()
                }),
            },
        }
    }

    // Implicit registers: those iced reports as used that no explicit operand already shows
    // with at least the same access. The base of `[rsi]` is read explicitly, but `movsb` also
    // writes rsi, so rsi comes again, implicit, read-write. A write to the full register of
    // an explicitly written one is the CPU's zero-extension (`mov eax, 1` clears the top of
    // rax, a VEX write of ymm0 the top of zmm0): not shown again.
    let explicit: Vec<(Register, RegisterAccessType)> = ops
        .iter()
        .filter(|op| !op.reg_name.is_empty())
        .filter_map(|op| Some((register_from_value(op.value)?, op.reg_access)))
        .collect();
    let mut used: Vec<(Register, RegisterAccessType)> = Vec::new();
    for u in info.used_registers() {
        // iced may list a register twice (rep movsb: rdi conditionally read, then written).
        let access = access_type(u.access());
        match used.iter_mut().find(|(r, _)| *r == u.register()) {
            Some((_, a)) => *a |= access,
            None => used.push((u.register(), access)),
        }
    }
    for (reg, access) in used {
        let shown = explicit.iter().any(|&(r, a)| {
            a.contains(access)
                && (r == reg || (reg == r.full_register() && access == RegisterAccessType::WRITE))
        });
        if !access.is_empty() && !shown {
            ops.push(register_operand(reg, OperandFlag::IMPLICIT, access));
        }
    }
    ops
}

/// The iced register whose number is `value` (see [`OperandAnalysis::value`]).
fn register_from_value(value: i64) -> Option<Register> {
    Register::try_from(usize::try_from(value).ok()?).ok()
}

/// The value of immediate operand `i`: sign-extended for the kinds the CPU sign-extends,
/// as encoded (zero-extended) otherwise.
fn immediate_value(inst: &Instruction, i: u32, kind: OpKind) -> i64 {
    match kind {
        OpKind::Immediate8 => i64::from(inst.immediate8()),
        OpKind::Immediate8_2nd => i64::from(inst.immediate8_2nd()),
        OpKind::Immediate16 => i64::from(inst.immediate16()),
        OpKind::Immediate32 => i64::from(inst.immediate32()),
        // immediate() sign-extends the `*to*` kinds to 64 bits.
        _ => inst.immediate(i) as i64,
    }
}

/// Appends the parts of the memory operand of `inst` (see [`OperandAnalysis`]).
fn memory_operands(inst: &Instruction, access: OpAccess, ops: &mut Vec<OperandAnalysis>) {
    let flag = if access == OpAccess::NoMemAccess {
        OperandFlag::UNDEFINED_EFFECT
    } else {
        OperandFlag::ADDR
    };
    let base = inst.memory_base();
    let index = inst.memory_index();
    let ip_relative = base.is_ip();
    if base != Register::None {
        let base_flag = if ip_relative {
            flag | OperandFlag::PCREL
        } else {
            flag
        };
        ops.push(register_operand(base, base_flag, RegisterAccessType::READ));
    }
    if index != Register::None {
        ops.push(immediate_operand(
            i64::from(inst.memory_index_scale()),
            8,
            flag,
        ));
        ops.push(register_operand(index, flag, RegisterAccessType::READ));
    }
    let displacement = if ip_relative {
        // iced resolves RIP-relative displacements to the target address.
        inst.memory_displacement64().wrapping_sub(inst.next_ip()) as i64
    } else if base.size() == 4 || (base == Register::None && index.size() == 4) {
        // 32-bit addressing (0x67 prefix): the displacement is 32 bits, sign-extended.
        i64::from(inst.memory_displacement32() as i32)
    } else {
        inst.memory_displacement64() as i64
    };
    let disp_flag = if ip_relative {
        flag | OperandFlag::PCREL
    } else {
        flag
    };
    ops.push(immediate_operand(displacement, 8, disp_flag));
    let segment = inst.segment_prefix();
    if segment == Register::FS || segment == Register::GS {
        ops.push(register_operand(segment, flag, RegisterAccessType::READ));
    }
}

/// The instruction as text, with iced's default Intel or AT&T (GNU as) formatting. The
/// formatters are kept per thread, taken out while in use, never dropped (as in
/// [`with_factory`]).
fn disassemble(inst: &Instruction, att_syntax: bool) -> String {
    thread_local! {
        static INTEL: RefCell<Option<ManuallyDrop<IntelFormatter>>> = const { RefCell::new(None) };
        static GAS: RefCell<Option<ManuallyDrop<GasFormatter>>> = const { RefCell::new(None) };
    }
    let mut text = String::new();
    if att_syntax {
        let mut formatter = GAS
            .try_with(RefCell::take)
            .ok()
            .flatten()
            .map(ManuallyDrop::into_inner)
            .unwrap_or_default();
        formatter.format(inst, &mut text);
        let _ = GAS.try_with(|cell| cell.replace(Some(ManuallyDrop::new(formatter))));
    } else {
        let mut formatter = INTEL
            .try_with(RefCell::take)
            .ok()
            .flatten()
            .map(ManuallyDrop::into_inner)
            .unwrap_or_default();
        formatter.format(inst, &mut text);
        let _ = INTEL.try_with(|cell| cell.replace(Some(ManuallyDrop::new(formatter))));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use ConditionType as Cond;
    use OperandFlag as F;
    use RegisterAccessType as A;

    const ADDR: u64 = 0x40_1000;

    fn analyze_all(bytes: &[u8]) -> InstAnalysis {
        let what = AnalysisType::INSTRUCTION | AnalysisType::DISASSEMBLY | AnalysisType::OPERANDS;
        analyze(bytes, ADDR, what, false).unwrap_or_else(|| panic!("{bytes:02x?} did not decode"))
    }

    /// The boolean properties as letters: Affects control flow, Branch, Call, Return,
    /// comPare, predicable (Q), Move immediate, Load, Store.
    fn letters(a: &InstAnalysis) -> String {
        [
            (a.affect_control_flow, 'A'),
            (a.is_branch, 'B'),
            (a.is_call, 'C'),
            (a.is_return, 'R'),
            (a.is_compare, 'P'),
            (a.is_predicable, 'Q'),
            (a.is_move_imm, 'M'),
            (a.may_load, 'L'),
            (a.may_store, 'S'),
        ]
        .iter()
        .filter(|(set, _)| *set)
        .map(|(_, c)| *c)
        .collect()
    }

    /// (bytes, mnemonic, properties as in [`letters`], load size, store size, condition)
    type Row = (
        &'static [u8],
        &'static str,
        &'static str,
        u32,
        u32,
        ConditionType,
    );

    #[test]
    fn instruction_properties_match_the_x86_manual() {
        // (bytes, mnemonic, properties, load size, store size, condition); encodings checked
        // with GNU as, expectations from the Intel SDM.
        #[rustfmt::skip]
        let table: &[Row] = &[
            (&[0xe8, 0x10, 0, 0, 0], "CALL", "ACS", 0, 8, Cond::None),             // call rel32
            (&[0xff, 0xd0], "CALL", "ACS", 0, 8, Cond::None),                      // call rax
            (&[0xff, 0x50, 0x0a], "CALL", "ACLS", 8, 8, Cond::None),               // call [rax+0xa]
            (&[0xc3], "RET", "ARL", 8, 0, Cond::None),                             // ret
            (&[0xc2, 0x10, 0x00], "RET", "ARL", 8, 0, Cond::None),                 // ret 0x10
            (&[0xe9, 0, 1, 0, 0], "JMP", "AB", 0, 0, Cond::None),                  // jmp rel32
            (&[0xeb, 0xfe], "JMP", "AB", 0, 0, Cond::None),                        // jmp short $
            (&[0xff, 0xe0], "JMP", "AB", 0, 0, Cond::None),                        // jmp rax
            (&[0xff, 0x25, 0x10, 0, 0, 0], "JMP", "ABL", 8, 0, Cond::None),        // jmp [rip+0x10]
            (&[0x74, 0x05], "JE", "ABQ", 0, 0, Cond::Equals),
            (&[0x0f, 0x85, 0, 1, 0, 0], "JNE", "ABQ", 0, 0, Cond::NotEquals),
            (&[0x70, 0], "JO", "ABQ", 0, 0, Cond::Overflow),
            (&[0x71, 0], "JNO", "ABQ", 0, 0, Cond::NotOverflow),
            (&[0x72, 0], "JB", "ABQ", 0, 0, Cond::Below),
            (&[0x73, 0], "JAE", "ABQ", 0, 0, Cond::AboveEquals),
            (&[0x76, 0], "JBE", "ABQ", 0, 0, Cond::BelowEquals),
            (&[0x77, 0], "JA", "ABQ", 0, 0, Cond::Above),
            (&[0x78, 0], "JS", "ABQ", 0, 0, Cond::Sign),
            (&[0x79, 0], "JNS", "ABQ", 0, 0, Cond::NotSign),
            (&[0x7a, 0], "JP", "ABQ", 0, 0, Cond::Even),
            (&[0x7b, 0], "JNP", "ABQ", 0, 0, Cond::Odd),
            (&[0x7c, 0], "JL", "ABQ", 0, 0, Cond::Less),
            (&[0x7d, 0], "JGE", "ABQ", 0, 0, Cond::GreatEquals),
            (&[0x7e, 0], "JLE", "ABQ", 0, 0, Cond::LessEquals),
            (&[0x7f, 0], "JG", "ABQ", 0, 0, Cond::Great),
            (&[0xe2, 0xfe], "LOOP", "ABQ", 0, 0, Cond::None),
            (&[0xe1, 0xfe], "LOOPE", "ABQ", 0, 0, Cond::Equals),
            (&[0xe3, 0x00], "JRCXZ", "ABQ", 0, 0, Cond::None),
            (&[0x48, 0x39, 0xd8], "CMP", "P", 0, 0, Cond::None),                   // cmp rax,rbx
            (&[0x85, 0xc0], "TEST", "P", 0, 0, Cond::None),                        // test eax,eax
            (&[0x48, 0x39, 0x0c, 0x10], "CMP", "PL", 8, 0, Cond::None),            // cmp [rax+rdx],rcx
            (&[0x66, 0x0f, 0x2e, 0xc1], "UCOMISD", "P", 0, 0, Cond::None),
            (&[0x48, 0x8b, 0x44, 0x24, 0x08], "MOV", "L", 8, 0, Cond::None),       // mov rax,[rsp+8]
            (&[0x48, 0x89, 0x07], "MOV", "S", 0, 8, Cond::None),                   // mov [rdi],rax
            (&[0xb8, 0x78, 0x56, 0x34, 0x12], "MOV", "M", 0, 0, Cond::None),       // mov eax,imm32
            (&[0x48, 0xb8, 0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11], "MOV", "M", 0, 0, Cond::None),
            (&[0xc7, 0x00, 1, 0, 0, 0], "MOV", "S", 0, 4, Cond::None),             // mov dword [rax],1
            (&[0x48, 0x89, 0xcb], "MOV", "", 0, 0, Cond::None),                    // mov rbx,rcx
            (&[0x50], "PUSH", "S", 0, 8, Cond::None),
            (&[0x5b], "POP", "L", 8, 0, Cond::None),
            (&[0xff, 0x30], "PUSH", "LS", 8, 8, Cond::None),                       // push [rax]
            (&[0x48, 0x8d, 0x18], "LEA", "", 0, 0, Cond::None),                    // lea rbx,[rax]
            (&[0x48, 0x8d, 0x05, 0, 0, 0, 0], "LEA", "", 0, 0, Cond::None),        // lea rax,[rip]
            (&[0xa4], "MOVSB", "LS", 1, 1, Cond::None),
            (&[0xf3, 0x48, 0xa5], "MOVSQ", "LS", 8, 8, Cond::None),                // rep movsq
            (&[0xa6], "CMPSB", "L", 1, 0, Cond::None),
            (&[0x48, 0x81, 0x01, 0x57, 0x41, 0, 0], "ADD", "LS", 8, 8, Cond::None), // add qword [rcx],0x4157
            (&[0x48, 0x0f, 0x44, 0xc3], "CMOVE", "Q", 0, 0, Cond::Equals),
            (&[0x0f, 0x4f, 0xc1], "CMOVG", "Q", 0, 0, Cond::Great),
            (&[0x0f, 0x94, 0xc0], "SETE", "Q", 0, 0, Cond::Equals),
            (&[0x0f, 0x28, 0x00], "MOVAPS", "L", 16, 0, Cond::None),
            (&[0x0f, 0x11, 0x0f], "MOVUPS", "S", 0, 16, Cond::None),
            (&[0xc5, 0xfe, 0x6f, 0x06], "VMOVDQU", "L", 32, 0, Cond::None),
            (&[0x0f, 0x05], "SYSCALL", "", 0, 0, Cond::None),
            (&[0x90], "NOP", "", 0, 0, Cond::None),
            (&[0x48, 0x87, 0xcb], "XCHG", "", 0, 0, Cond::None),
            (&[0xf0, 0x48, 0x0f, 0xb1, 0x0f], "CMPXCHG", "LS", 8, 8, Cond::None),   // lock cmpxchg [rdi],rcx
            (&[0xc9], "LEAVE", "L", 8, 0, Cond::None),
            (&[0x64, 0x48, 0x8b, 0x04, 0x25, 0x28, 0, 0, 0], "MOV", "L", 8, 0, Cond::None), // mov rax,fs:[0x28]
            (&[0x0f, 0x0b], "UD2", "", 0, 0, Cond::None),
            (&[0xcc], "INT3", "", 0, 0, Cond::None),
            (&[0xdb, 0x28], "FLD", "L", 10, 0, Cond::None),                        // fld tbyte [rax]
            (&[0x0f, 0xae, 0x00], "FXSAVE", "S", 0, 512, Cond::None),
            (&[0xc8, 0x10, 0x00, 0x00], "ENTER", "S", 0, 8, Cond::None),
            (&[0xc7, 0xf8, 0, 0, 0, 0], "XBEGIN", "A", 0, 0, Cond::None),
            (&[0x6b, 0xc1, 0x40], "IMUL", "", 0, 0, Cond::None),
        ];
        assert!(table.len() >= 30);
        for &(bytes, mnemonic, props, load, store, condition) in table {
            let a = analyze_all(bytes);
            let props_got = letters(&a);
            let got = (
                a.mnemonic,
                props_got.as_str(),
                a.load_size,
                a.store_size,
                a.condition,
            );
            assert_eq!(
                got,
                (mnemonic, props, load, store, condition),
                "for {bytes:02x?} ({})",
                a.disassembly
            );
            assert_eq!(a.address, ADDR);
            assert_eq!(a.inst_size as usize, bytes.len(), "for {bytes:02x?}");
        }
    }

    #[test]
    fn flags_access_covers_rflags_only() {
        #[rustfmt::skip]
        let table: &[(&[u8], RegisterAccessType)] = &[
            (&[0x48, 0x39, 0xd8], A::WRITE),       // cmp rax,rbx
            (&[0x74, 0x05], A::READ),              // je
            (&[0x48, 0x11, 0xce], A::READ_WRITE),  // adc rsi,rcx
            (&[0x48, 0x89, 0xcb], A::empty()),     // mov rbx,rcx
            (&[0x48, 0x0f, 0x44, 0xc3], A::READ),  // cmove rax,rbx
            (&[0xfd], A::WRITE),                   // std
            (&[0x9c], A::READ),                    // pushfq
            (&[0x9d], A::WRITE),                   // popfq
            (&[0xdb, 0x28], A::empty()),           // fld tbyte [rax]: x87 C0-C3 only
            (&[0xdb, 0xf1], A::WRITE),             // fcomi st,st(1): ZF PF CF
        ];
        for &(bytes, access) in table {
            assert_eq!(analyze_all(bytes).flags_access, access, "for {bytes:02x?}");
        }
    }

    fn reg(
        name: &'static str,
        r: Register,
        size: u16,
        ctx: i16,
        flag: OperandFlag,
        access: A,
    ) -> OperandAnalysis {
        OperandAnalysis {
            op_type: OperandType::Gpr,
            flag,
            value: r as i64,
            size,
            reg_off: 0,
            reg_ctx_idx: ctx,
            reg_name: name,
            reg_access: access,
        }
    }

    fn typed(
        op_type: OperandType,
        name: &'static str,
        r: Register,
        size: u16,
        ctx: i16,
        access: A,
    ) -> OperandAnalysis {
        OperandAnalysis {
            op_type,
            ..reg(name, r, size, ctx, F::NONE, access)
        }
    }

    fn imm(value: i64, size: u16, flag: OperandFlag) -> OperandAnalysis {
        OperandAnalysis {
            op_type: OperandType::Imm,
            flag,
            value,
            size,
            reg_off: 0,
            reg_ctx_idx: -1,
            reg_name: "",
            reg_access: A::empty(),
        }
    }

    #[test]
    fn register_operands_name_their_register_and_context_slot() {
        use Register as R;
        #[rustfmt::skip]
        let cases: Vec<(&[u8], Vec<OperandAnalysis>)> = vec![
            // mov rbx,rcx
            (&[0x48, 0x89, 0xcb], vec![
                reg("rbx", R::RBX, 8, 1, F::NONE, A::WRITE),
                reg("rcx", R::RCX, 8, 2, F::NONE, A::READ),
            ]),
            // mov bl,ch: ch is bits 8..16 of rcx
            (&[0x88, 0xeb], vec![
                reg("bl", R::BL, 1, 1, F::NONE, A::WRITE),
                OperandAnalysis { reg_off: 8, ..reg("ch", R::CH, 1, 2, F::NONE, A::READ) },
            ]),
            // xchg rbx,rcx
            (&[0x48, 0x87, 0xcb], vec![
                reg("rbx", R::RBX, 8, 1, F::NONE, A::READ_WRITE),
                reg("rcx", R::RCX, 8, 2, F::NONE, A::READ_WRITE),
            ]),
            // add eax,0x10 (imm8 sign-extended)
            (&[0x83, 0xc0, 0x10], vec![
                reg("eax", R::EAX, 4, 0, F::NONE, A::READ_WRITE),
                imm(0x10, 1, F::NONE),
            ]),
            // add rax,-1
            (&[0x48, 0x83, 0xc0, 0xff], vec![
                reg("rax", R::RAX, 8, 0, F::NONE, A::READ_WRITE),
                imm(-1, 1, F::NONE),
            ]),
            // mov eax,0xffffffff: not sign-extended
            (&[0xb8, 0xff, 0xff, 0xff, 0xff], vec![
                reg("eax", R::EAX, 4, 0, F::NONE, A::WRITE),
                imm(0xffff_ffff, 4, F::NONE),
            ]),
            // mov r13w,r8w
            (&[0x66, 0x45, 0x89, 0xc5], vec![
                reg("r13w", R::R13W, 2, 11, F::NONE, A::WRITE),
                reg("r8w", R::R8W, 2, 6, F::NONE, A::READ),
            ]),
            // vaddps ymm1,ymm2,ymm3: FprState offsets of xmm1..3 (160 + 16 n)
            (&[0xc5, 0xec, 0x58, 0xcb], vec![
                typed(OperandType::Fpr, "ymm1", R::YMM1, 32, 176, A::WRITE),
                typed(OperandType::Fpr, "ymm2", R::YMM2, 32, 192, A::READ),
                typed(OperandType::Fpr, "ymm3", R::YMM3, 32, 208, A::READ),
            ]),
            // vaddps zmm17,zmm18,zmm19: in hi16_zmm (1664 + 64 (n - 16))
            (&[0x62, 0xa1, 0x6c, 0x40, 0x58, 0xcb], vec![
                typed(OperandType::Fpr, "zmm17", R::ZMM17, 64, 1728, A::WRITE),
                typed(OperandType::Fpr, "zmm18", R::ZMM18, 64, 1792, A::READ),
                typed(OperandType::Fpr, "zmm19", R::ZMM19, 64, 1856, A::READ),
            ]),
            // kmovw k1,k2: opmask registers at 1088 + 8 n
            (&[0xc5, 0xf8, 0x90, 0xca], vec![
                typed(OperandType::Pred, "k1", R::K1, 8, 1096, A::WRITE),
                typed(OperandType::Pred, "k2", R::K2, 8, 1104, A::READ),
            ]),
        ];
        for (bytes, expected) in cases {
            let a = analyze_all(bytes);
            assert_eq!(a.operands, expected, "for {} ({bytes:02x?})", a.disassembly);
        }
    }

    #[test]
    fn memory_operands_are_described_by_their_parts() {
        use Register as R;
        let rip_rel = F::ADDR | F::PCREL;
        #[rustfmt::skip]
        let cases: Vec<(&[u8], Vec<OperandAnalysis>)> = vec![
            // mov rbx,[rax+rdx*4+0x45]
            (&[0x48, 0x8b, 0x5c, 0x90, 0x45], vec![
                reg("rbx", R::RBX, 8, 1, F::NONE, A::WRITE),
                reg("rax", R::RAX, 8, 0, F::ADDR, A::READ),
                imm(4, 8, F::ADDR),
                reg("rdx", R::RDX, 8, 3, F::ADDR, A::READ),
                imm(0x45, 8, F::ADDR),
            ]),
            // mov rax,[rip+0x100]
            (&[0x48, 0x8b, 0x05, 0x00, 0x01, 0, 0], vec![
                reg("rax", R::RAX, 8, 0, F::NONE, A::WRITE),
                reg("rip", R::RIP, 8, 16, rip_rel, A::READ),
                imm(0x100, 8, rip_rel),
            ]),
            // lea rbx,[rax]: the address is computed, not accessed
            (&[0x48, 0x8d, 0x18], vec![
                reg("rbx", R::RBX, 8, 1, F::NONE, A::WRITE),
                reg("rax", R::RAX, 8, 0, F::UNDEFINED_EFFECT, A::READ),
                imm(0, 8, F::UNDEFINED_EFFECT),
            ]),
            // add qword [rcx],0x4157
            (&[0x48, 0x81, 0x01, 0x57, 0x41, 0, 0], vec![
                reg("rcx", R::RCX, 8, 2, F::ADDR, A::READ),
                imm(0, 8, F::ADDR),
                imm(0x4157, 4, F::NONE),
            ]),
            // mov rax,fs:[0x28]
            (&[0x64, 0x48, 0x8b, 0x04, 0x25, 0x28, 0, 0, 0], vec![
                reg("rax", R::RAX, 8, 0, F::NONE, A::WRITE),
                imm(0x28, 8, F::ADDR),
                OperandAnalysis { op_type: OperandType::Seg, ..reg("fs", R::FS, 2, -1, F::ADDR, A::READ) },
            ]),
            // mov ecx,[eax-8] (32-bit addressing)
            (&[0x67, 0x8b, 0x48, 0xf8], vec![
                reg("ecx", R::ECX, 4, 2, F::NONE, A::WRITE),
                reg("eax", R::EAX, 4, 0, F::ADDR, A::READ),
                imm(-8, 8, F::ADDR),
            ]),
        ];
        for (bytes, expected) in cases {
            let a = analyze_all(bytes);
            assert_eq!(a.operands, expected, "for {} ({bytes:02x?})", a.disassembly);
        }
    }

    #[test]
    fn implicit_registers_follow_the_explicit_operands() {
        use Register as R;
        let implicit = F::IMPLICIT;
        #[rustfmt::skip]
        let cases: Vec<(&[u8], Vec<OperandAnalysis>)> = vec![
            // push rax
            (&[0x50], vec![
                reg("rax", R::RAX, 8, 0, F::NONE, A::READ),
                reg("rsp", R::RSP, 8, 15, implicit, A::READ_WRITE),
            ]),
            // ret
            (&[0xc3], vec![reg("rsp", R::RSP, 8, 15, implicit, A::READ_WRITE)]),
            // call $+0x15: displacement from the next instruction
            (&[0xe8, 0x10, 0, 0, 0], vec![
                imm(0x10, 4, F::PCREL),
                reg("rsp", R::RSP, 8, 15, implicit, A::READ_WRITE),
            ]),
            // call [rax+0xa]
            (&[0xff, 0x50, 0x0a], vec![
                reg("rax", R::RAX, 8, 0, F::ADDR, A::READ),
                imm(0xa, 8, F::ADDR),
                reg("rsp", R::RSP, 8, 15, implicit, A::READ_WRITE),
            ]),
            // je $+7
            (&[0x74, 0x05], vec![imm(5, 1, F::PCREL)]),
            // jmp $ (backwards)
            (&[0xeb, 0xfe], vec![imm(-2, 1, F::PCREL)]),
            // movsb: rdi and rsi address the bytes, and both advance
            (&[0xa4], vec![
                reg("rdi", R::RDI, 8, 5, F::ADDR, A::READ),
                reg("rsi", R::RSI, 8, 4, F::ADDR, A::READ),
                reg("rdi", R::RDI, 8, 5, implicit, A::READ_WRITE),
                reg("rsi", R::RSI, 8, 4, implicit, A::READ_WRITE),
            ]),
        ];
        for (bytes, expected) in cases {
            let a = analyze_all(bytes);
            let mut got = a.operands.clone();
            // iced lists implicit registers in its own order: compare them as a set.
            let explicit_len = got
                .iter()
                .take_while(|op| !op.flag.contains(F::IMPLICIT))
                .count();
            got[explicit_len..].sort_by_key(|op| op.value);
            let mut want = expected;
            let want_explicit = explicit_len.min(want.len());
            want[want_explicit..].sort_by_key(|op| op.value);
            assert_eq!(got, want, "for {} ({bytes:02x?})", a.disassembly);
        }
    }

    #[test]
    fn x87_registers_live_in_the_stmm_slots() {
        // fld st(1)
        let a = analyze_all(&[0xd9, 0xc1]);
        assert_eq!(
            a.operands.first(),
            Some(&typed(
                OperandType::Fpr,
                "st1",
                Register::ST1,
                10,
                48,
                A::READ
            ))
        );
    }

    #[test]
    fn disassembly_is_intel_or_att_as_asked() {
        let what = AnalysisType::DISASSEMBLY;
        #[rustfmt::skip]
        let table: &[(&[u8], &str, &str)] = &[
            (&[0x48, 0x8b, 0x44, 0x24, 0x08], "mov rax,[rsp+8]", "mov 8(%rsp),%rax"),
            (&[0x48, 0x89, 0x07], "mov [rdi],rax", "mov %rax,(%rdi)"),
            (&[0x48, 0x81, 0x01, 0x57, 0x41, 0, 0], "add qword ptr [rcx],4157h", "addq $0x4157,(%rcx)"),
            (&[0xc3], "ret", "ret"),
            (&[0xff, 0xd0], "call rax", "call *%rax"),
            (&[0x88, 0xeb], "mov bl,ch", "mov %ch,%bl"),
        ];
        for &(bytes, intel, att) in table {
            assert_eq!(
                analyze(bytes, ADDR, what, false)
                    .map(|a| a.disassembly)
                    .as_deref(),
                Some(intel)
            );
            assert_eq!(
                analyze(bytes, ADDR, what, true)
                    .map(|a| a.disassembly)
                    .as_deref(),
                Some(att)
            );
        }
        // Branch targets are absolute, computed from the given address.
        let call = analyze(&[0xe8, 0x10, 0, 0, 0], ADDR, what, false).map(|a| a.disassembly);
        assert_eq!(call.as_deref(), Some("call 0000000000401015h"));
    }

    #[test]
    fn only_the_asked_parts_are_computed() {
        let bytes = [0x48, 0x8b, 0x44, 0x24, 0x08];
        let a = analyze(&bytes, ADDR, AnalysisType::empty(), false).expect("valid instruction");
        assert_eq!(a.analysis_type, AnalysisType::INSTRUCTION);
        assert_eq!(a.mnemonic, "MOV");
        assert!(a.disassembly.is_empty() && a.operands.is_empty() && a.module_name.is_empty());
        assert_eq!(a.to_string(), "0x401000: MOV");

        let a = analyze(&bytes, ADDR, AnalysisType::DISASSEMBLY, false).expect("valid instruction");
        assert_eq!(
            a.analysis_type,
            AnalysisType::INSTRUCTION | AnalysisType::DISASSEMBLY
        );
        assert!(a.operands.is_empty());
        assert_eq!(a.to_string(), "0x401000: mov rax,[rsp+8]");

        let a = analyze(&bytes, ADDR, AnalysisType::OPERANDS, false).expect("valid instruction");
        assert!(a.disassembly.is_empty());
        assert_eq!(a.operands.len(), 3);
    }

    #[test]
    fn undecodable_bytes_give_none() {
        assert_eq!(analyze(&[], ADDR, AnalysisType::INSTRUCTION, false), None);
        // push es does not exist in 64-bit mode.
        assert_eq!(
            analyze(&[0x06], ADDR, AnalysisType::INSTRUCTION, false),
            None
        );
        // mov rax,[rsp+8] cut short.
        assert_eq!(
            analyze(
                &[0x48, 0x8b, 0x44, 0x24],
                ADDR,
                AnalysisType::INSTRUCTION,
                false
            ),
            None
        );
        // Bytes after the instruction are ignored.
        let a = analyze(&[0xc3, 0xff, 0xff], ADDR, AnalysisType::INSTRUCTION, false);
        assert_eq!(a.map(|a| a.inst_size), Some(1));
    }

    #[test]
    fn symbol_analysis_names_the_function_and_module() {
        #[inline(never)]
        extern "C" fn analysed_function(x: u64) -> u64 {
            std::hint::black_box(x).wrapping_mul(3)
        }
        let address = analysed_function as *const () as u64;
        // SAFETY: the function's first bytes are mapped code; 16 bytes is within any function
        // body plus the padding that follows it in .text.
        let code = unsafe { std::slice::from_raw_parts(address as *const u8, 16) };
        let a = analyze(code, address, AnalysisType::SYMBOL, false).expect("compiled code decodes");
        assert!(a.analysis_type.contains(AnalysisType::SYMBOL));
        assert!(
            a.symbol_name.contains("analysed_function"),
            "{}",
            a.symbol_name
        );
        assert_eq!(a.symbol_offset, 0);
        let exe = std::env::current_exe().expect("test executable path");
        assert_eq!(
            Some(a.module_name.as_str()),
            exe.file_name().and_then(|n| n.to_str())
        );
    }

    #[test]
    fn random_bytes_never_panic_and_stay_consistent() {
        // A fixed LCG: the same 20000 byte strings on every run.
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let what = AnalysisType::INSTRUCTION | AnalysisType::DISASSEMBLY | AnalysisType::OPERANDS;
        let mut decoded = 0;
        for _ in 0..20_000 {
            let mut bytes = [0u8; 15];
            for b in &mut bytes {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                *b = (state >> 56) as u8;
            }
            for att in [false, true] {
                if let Some(a) = analyze(&bytes, ADDR, what, att) {
                    decoded += 1;
                    assert!((1..=15).contains(&a.inst_size));
                    assert!(mnemonic_names().contains(&a.mnemonic), "{}", a.mnemonic);
                    assert!(!a.disassembly.is_empty());
                    assert!(a.load_size == 0 || a.may_load, "{a}");
                    assert!(a.store_size == 0 || a.may_store, "{a}");
                    assert!(
                        !(a.is_branch || a.is_call || a.is_return) || a.affect_control_flow,
                        "{a}"
                    );
                    // Explicit operands first, then implicit ones; registers are named.
                    let explicit = a
                        .operands
                        .iter()
                        .take_while(|op| !op.flag.contains(F::IMPLICIT))
                        .count();
                    assert!(
                        a.operands[explicit..]
                            .iter()
                            .all(|op| op.flag.contains(F::IMPLICIT)),
                        "{a}"
                    );
                    for op in &a.operands {
                        let is_register = matches!(
                            op.op_type,
                            OperandType::Gpr
                                | OperandType::Fpr
                                | OperandType::Pred
                                | OperandType::Seg
                        );
                        assert_eq!(is_register, !op.reg_name.is_empty(), "{a}: {op:?}");
                    }
                }
            }
        }
        assert!(decoded > 10_000, "only {decoded} decoded");
    }

    #[test]
    fn mnemonic_names_are_upper_case_unique_and_complete() {
        let names = mnemonic_names();
        assert!(names.len() > 1500, "{}", names.len());
        assert!(!names.contains(&"INVALID"));
        for expected in [
            "CALL",
            "RET",
            "MOV",
            "MOVAPS",
            "JNE",
            "VPGATHERDD",
            "SYSCALL",
        ] {
            assert!(names.contains(&expected), "{expected} missing");
        }
        assert!(names.iter().all(|n| {
            !n.is_empty()
                && n.bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
        }));
        let mut sorted = names.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), names.len());
        // The table is indexed by iced's mnemonic value.
        assert_eq!(mnemonic_name(Mnemonic::Movaps), "MOVAPS");
        assert_eq!(mnemonic_name(Mnemonic::INVALID), "INVALID");
    }

    #[test]
    fn mnemonic_globs_match_whole_names_ignoring_case() {
        assert!(mnemonic_matches("CALL*", "CALL"));
        assert!(mnemonic_matches("call*", "CALL"));
        assert!(mnemonic_matches("CALL", "call"));
        assert!(mnemonic_matches("mov", "MOV"));
        assert!(!mnemonic_matches("mov", "MOVAPS"));
        assert!(!mnemonic_matches("MOV", "CMOVE"));
        assert!(mnemonic_matches("MOV*", "MOVAPS"));
        assert!(mnemonic_matches("MOV*", "MOV"));
        assert!(!mnemonic_matches("MOV*", "CMOVE"));
        assert!(mnemonic_matches("*MOV*", "CMOVE"));
        assert!(mnemonic_matches("J*", "JMP"));
        assert!(mnemonic_matches("J*", "JNE"));
        assert!(!mnemonic_matches("J*", "CALL"));
        assert!(mnemonic_matches("JMP", "JMP"));
        assert!(!mnemonic_matches("JMP", "JMPE"));
        assert!(mnemonic_matches("J?", "JE"));
        assert!(!mnemonic_matches("J?", "JNE"));
        assert!(mnemonic_matches("J??", "JNE"));
        assert!(mnemonic_matches("*", "NOP"));
        assert!(mnemonic_matches("V*PS", "VADDPS"));
        assert!(!mnemonic_matches("V*PS", "VADDPD"));
        assert!(mnemonic_matches("*A*A*", "AAA"));
        assert!(!mnemonic_matches("*A*A*", "VADDPS"));
        assert!(!mnemonic_matches("", "NOP"));
        assert!(!mnemonic_matches("NOP", ""));
    }

    #[test]
    fn mnemonic_patterns_are_valid_when_they_match_something() {
        let count = |p: &str| {
            mnemonic_names()
                .iter()
                .filter(|n| mnemonic_matches(p, n))
                .count()
        };
        assert!(count("J*") > 20, "J* matched {}", count("J*"));
        assert_eq!(count("CALL*"), 1, "iced has one CALL mnemonic");
        assert_eq!(count("JMP"), 1);
        assert_eq!(count("mov"), 1);
        assert!(count("MOV*") > 20);
        assert_eq!(count("CALL64*"), 0);
        assert!(mnemonic_pattern_is_valid("CALL*"));
        assert!(mnemonic_pattern_is_valid("j*"));
        assert!(mnemonic_pattern_is_valid("ret"));
        assert!(!mnemonic_pattern_is_valid("CALL64*"));
        assert!(!mnemonic_pattern_is_valid("CALL64pcrel32"));
        assert!(!mnemonic_pattern_is_valid(""));
        assert!(!mnemonic_pattern_is_valid("NOTANOPCODE"));
    }

    #[test]
    fn condition_values_are_qbdis_and_negate_by_xor_one() {
        use ConditionType::*;
        let all = [
            (None, 0),
            (Always, 2),
            (Never, 3),
            (Equals, 4),
            (NotEquals, 5),
            (Above, 6),
            (BelowEquals, 7),
            (AboveEquals, 8),
            (Below, 9),
            (Great, 0xa),
            (LessEquals, 0xb),
            (GreatEquals, 0xc),
            (Less, 0xd),
            (Even, 0xe),
            (Odd, 0xf),
            (Overflow, 0x10),
            (NotOverflow, 0x11),
            (Sign, 0x12),
            (NotSign, 0x13),
        ];
        for (c, value) in all {
            assert_eq!(c as u8, value);
            let negated_value = if c == None { 0 } else { value ^ 1 };
            assert_eq!(c.negated() as u8, negated_value, "{c:?}");
        }
        assert_eq!(OperandType::Seg as u8, 5);
        assert_eq!(OperandFlag::IMPLICIT.bits(), 8);
        assert_eq!(AnalysisType::SYMBOL.bits(), 8);
        assert_eq!(
            RegisterAccessType::READ_WRITE,
            RegisterAccessType::READ | RegisterAccessType::WRITE
        );
    }
}
