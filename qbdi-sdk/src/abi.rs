//! The C ABI between the `qbdi` host and a plugin cdylib.
//!
//! Only `#[repr(C)]` data and `extern "C"` functions cross the boundary: each cdylib has its
//! own copy of std (allocator, panic runtime), so no Rust-layout value (`String`, `Vec`,
//! `Box<dyn ..>`) and no panic ever crosses it. Memory is freed by the side that allocated
//! it: the host owns what it passes in (valid for the duration of the call), the plugin owns
//! its descriptor and its closures (the host calls the plugin's `drop` function for those).
//!
//! A plugin exports [`ENTRY_SYMBOL`], returning a [`PluginDescriptor`]. The host checks
//! [`PLUGIN_MAGIC`] and [`ABI_MAJOR`] before reading anything else, and reads only
//! `descriptor.size` bytes of it: fields are only ever appended (minor versions).
//!
//! Since ABI 1.1 a plugin also exports [`HEAP_SYMBOL`]: right after loading it, before
//! calling anything else in it, the host hands it a [`HeapTable`], and from then on the
//! plugin's global allocator (in the expansion of `plugin!`) allocates from the host's
//! private heap instead of libc's malloc. The host looks the symbol up optionally: plugins
//! of ABI 1.0 load as before and keep libc's malloc.

use std::ffi::c_void;

use qbdi_core::{FprState, GprState, MemoryAccess, Rword, VmState};

/// The exported entry point of every plugin: `extern "C" fn() -> *const PluginDescriptor`.
pub const ENTRY_SYMBOL: &str = "qbdi_plugin_descriptor";
/// First field of every descriptor ("QBDIPLUG").
pub const PLUGIN_MAGIC: u64 = u64::from_le_bytes(*b"QBDIPLUG");
/// Incompatible changes of this ABI bump the major version: the host refuses any other.
pub const ABI_MAJOR: u16 = 1;
/// Compatible additions bump the minor version: the host accepts plugins up to its own.
///
/// - 1.0: the descriptor, the host function table, the callback trampolines.
/// - 1.1: the host's heap: the optional export [`HEAP_SYMBOL`] taking a [`HeapTable`].
/// - 1.2: inline instrumentation: [`HostApi::add_block_counter`] and
///   [`HostApi::add_edge_map`].
/// - 1.3: [`RawVm::accesses`]: the current instruction's memory accesses in the handle.
pub const ABI_MINOR: u16 = 3;

/// The second export of a plugin (ABI 1.1, optional for the host):
/// `unsafe extern "C" fn(table: *const HeapTable) -> u32`, returning 0 if the plugin now
/// allocates from the host's heap. Called once, right after the plugin is loaded and
/// before anything else in it (its static constructors excepted, which allocate from the
/// system's heap).
pub const HEAP_SYMBOL: &str = "qbdi_plugin_set_heap";

/// The host's private heap, as a plugin reaches it (ABI 1.1).
///
/// With `qbdi run --all-maps` libc runs instrumented and callbacks may run while the guest
/// is inside `malloc` or holds a libc lock, so plugins must not allocate from libc's heap.
/// The host's heap never calls libc's allocator (see the `qbdi-heap` crate). Every block it
/// hands out lies in `[start, end)`: a plugin frees a pointer in that range through
/// [`dealloc`](HeapTable::dealloc), and anything else (allocated before the table arrived)
/// with the system's `free`. Owned by the host, valid for the life of the process;
/// append-only, like [`HostApi`].
#[repr(C)]
#[derive(Debug)]
pub struct HeapTable {
    /// `size_of::<HeapTable>()` in the host.
    pub size: usize,
    /// Allocates `size` bytes (non-zero) aligned to `align` (a power of two); null when
    /// memory is exhausted.
    pub alloc: unsafe extern "C" fn(size: usize, align: usize) -> *mut u8,
    /// As `alloc`, the block zeroed.
    pub alloc_zeroed: unsafe extern "C" fn(size: usize, align: usize) -> *mut u8,
    /// Frees a block of this heap, with the size and alignment it was allocated with (for a
    /// resized block: its last size).
    pub dealloc: unsafe extern "C" fn(ptr: *mut u8, size: usize, align: usize),
    /// Resizes a block of this heap (same alignment), moving it if needed; null (the block
    /// left as it was) when memory is exhausted.
    pub realloc:
        unsafe extern "C" fn(ptr: *mut u8, size: usize, align: usize, new_size: usize) -> *mut u8,
    /// First address of the heap's range.
    pub start: usize,
    /// End (exclusive) of the heap's range.
    pub end: usize,
}

/// A borrowed UTF-8 string: `ptr` is valid for `len` bytes for as long as the owner says.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct StrRef {
    /// First byte (dangling but non-null when `len` is 0).
    pub ptr: *const u8,
    /// Length in bytes.
    pub len: usize,
}

impl StrRef {
    /// A reference to `s` (valid as long as `s`).
    pub const fn new(s: &str) -> StrRef {
        StrRef {
            ptr: s.as_ptr(),
            len: s.len(),
        }
    }

    /// The empty string.
    pub const EMPTY: StrRef = StrRef::new("");

    /// The string, replacing invalid UTF-8 (a buggy peer) with U+FFFD.
    ///
    /// # Safety
    /// `ptr` must be valid for reads of `len` bytes for `'a`.
    pub unsafe fn as_str<'a>(self) -> std::borrow::Cow<'a, str> {
        if self.len == 0 || self.ptr.is_null() {
            return std::borrow::Cow::Borrowed("");
        }
        // SAFETY: the caller guarantees `ptr..ptr+len` is readable for 'a.
        let bytes = unsafe { std::slice::from_raw_parts(self.ptr, self.len) };
        String::from_utf8_lossy(bytes)
    }
}

// SAFETY: a StrRef in a descriptor points at `'static` data of the plugin; elsewhere it is
// only handed across a call on one thread.
unsafe impl Send for StrRef {}
// SAFETY: as above; it is read-only.
unsafe impl Sync for StrRef {}

/// What the plugin's entry point returns. Owned by the plugin, valid for the life of the
/// process (plugins are never unloaded).
#[repr(C)]
#[derive(Debug)]
pub struct PluginDescriptor {
    /// [`PLUGIN_MAGIC`].
    pub magic: u64,
    /// [`ABI_MAJOR`] of the SDK the plugin was built with.
    pub abi_major: u16,
    /// [`ABI_MINOR`] of the SDK the plugin was built with.
    pub abi_minor: u16,
    /// `size_of::<PluginDescriptor>()` in the plugin's SDK.
    pub size: u32,
    /// The plugin's name (`"drcov"`).
    pub name: StrRef,
    /// The plugin's version (its crate version).
    pub version: StrRef,
    /// The qbdi-sdk version it was built with.
    pub sdk_version: StrRef,
    /// A one-line description.
    pub description: StrRef,
    /// The registrations: attribute-registered callbacks, init and fini.
    pub registrations: *const RawRegistration,
    /// Number of registrations.
    pub registration_count: usize,
    /// The options the plugin accepts.
    pub options: *const RawOptionSpec,
    /// Number of options.
    pub option_count: usize,
}

// SAFETY: the descriptor is immutable and points only at the plugin's static data.
unsafe impl Sync for PluginDescriptor {}
// SAFETY: as above.
unsafe impl Send for PluginDescriptor {}

/// One option a plugin accepts (`-p drcov:out=cov.log`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RawOptionSpec {
    /// The key.
    pub key: StrRef,
    /// What it does, for `qbdi plugin info`.
    pub help: StrRef,
    /// Default value shown to users (`""`: none).
    pub default: StrRef,
}

/// Kinds of [`RawRegistration`].
pub mod kind {
    /// An instruction callback (`#[inst_callback]`): `callback` is a [`RawInstFn`](super::RawInstFn).
    pub const INST: u32 = 1;
    /// A VM event callback (`#[vm_event]`): `callback` is a [`RawEventFn`](super::RawEventFn).
    pub const EVENT: u32 = 2;
    /// A memory access callback (`#[mem_access]`): `callback` is a [`RawInstFn`](super::RawInstFn).
    pub const MEM_ACCESS: u32 = 3;
    /// An instrumentation rule (`#[instr_rule]`): `callback` is a [`RawRuleFn`](super::RawRuleFn).
    pub const INSTR_RULE: u32 = 4;
    /// The plugin's init (`#[plugin_init]`): `callback` is a [`RawInitFn`](super::RawInitFn).
    pub const INIT: u32 = 5;
    /// The plugin's fini (`#[plugin_fini]`): `callback` is a [`RawFiniFn`](super::RawFiniFn).
    pub const FINI: u32 = 6;
}

/// Positions of an instruction callback.
pub mod position {
    /// Before the instruction.
    pub const PRE_INST: u32 = 0;
    /// After the instruction.
    pub const POST_INST: u32 = 1;
}

/// One registration of a plugin, as the host sees it.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RawRegistration {
    /// One of [`kind`].
    pub kind: u32,
    /// [`position`] of an instruction callback.
    pub position: u32,
    /// Priority (instruction and memory callbacks).
    pub priority: i32,
    /// `VmEvent` bits (event callbacks), `MemoryAccessType` bits (memory callbacks),
    /// `AnalysisType` bits (rules).
    pub flags: u32,
    /// Mnemonic glob of an instruction callback (`""`: none).
    pub mnemonic: StrRef,
    /// iced-x86 `Code` name of an instruction callback (`"Call_rm64"`; `""`: none).
    pub code: StrRef,
    /// The Rust function's name, for messages.
    pub name: StrRef,
    /// Source line of the function.
    pub line: u32,
    /// The trampoline, cast to this type; its real type depends on `kind`.
    pub callback: *const c_void,
}

// SAFETY: immutable, points at the plugin's static data and code.
unsafe impl Sync for RawRegistration {}
// SAFETY: as above.
unsafe impl Send for RawRegistration {}

/// What a plugin's callback returns: a `VmAction` value (0..=4) or [`PANICKED`].
pub type RawAction = u32;
/// Returned by a trampoline whose Rust code panicked (after calling
/// [`HostApi::report_panic`]). The host stops the run.
pub const PANICKED: RawAction = 0xdead;

/// The handle a plugin gets in every call: the host's function table and the host's
/// context for this call. Built by the host on its stack; valid for the call only.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RawVm {
    /// The host's functions.
    pub api: *const HostApi,
    /// The host's context (opaque to the plugin).
    pub ctx: *mut c_void,
    /// (ABI 1.3) The memory accesses of the instruction whose callback this is (what
    /// `inst_memory_access` returns), `accesses_len` of them; none outside callbacks.
    /// A callback called directly from translated code gets a handle in which only these
    /// two fields are valid (its machine code was checked to read nothing else of it).
    pub accesses: *const MemoryAccess,
    /// (ABI 1.3) How many accesses `accesses` points at.
    pub accesses_len: usize,
}

/// Where a direct site finds the accesses in a handle (`RawVm::accesses` and
/// `accesses_len`, in this order, 16 bytes from its start).
pub const RAW_VM_ACCESSES: usize = std::mem::offset_of!(RawVm, accesses);
const _: () = assert!(RAW_VM_ACCESSES == 16);
const _: () = assert!(std::mem::offset_of!(RawVm, accesses_len) == 24);

/// An attribute-registered instruction or memory callback.
pub type RawInstFn =
    extern "C" fn(vm: *const RawVm, gpr: *mut GprState, fpr: *mut FprState) -> RawAction;
/// An attribute-registered VM event callback.
pub type RawEventFn = extern "C" fn(
    vm: *const RawVm,
    state: *const VmState,
    gpr: *mut GprState,
    fpr: *mut FprState,
) -> RawAction;
/// An attribute-registered instrumentation rule: it pushes the callbacks it wants on the
/// instruction through [`HostApi::rule_push`] (with `sink`).
pub type RawRuleFn = extern "C" fn(
    vm: *const RawVm,
    analysis: *const RawInstAnalysis,
    sink: *mut c_void,
) -> RawAction;
/// The plugin's init: options as `count` key/value pairs; on refusal returns non-zero after
/// calling [`HostApi::set_error`].
pub type RawInitFn =
    extern "C" fn(vm: *const RawVm, options: *const RawKeyValue, count: usize) -> u32;
/// The plugin's fini.
pub type RawFiniFn = extern "C" fn(vm: *const RawVm) -> u32;

/// A closure-backed instruction callback registered at run time: `data` is the plugin's
/// boxed closure.
pub type RawClosureInstFn = extern "C" fn(
    data: *mut c_void,
    vm: *const RawVm,
    gpr: *mut GprState,
    fpr: *mut FprState,
) -> RawAction;
/// A closure-backed VM event callback registered at run time.
pub type RawClosureEventFn = extern "C" fn(
    data: *mut c_void,
    vm: *const RawVm,
    state: *const VmState,
    gpr: *mut GprState,
    fpr: *mut FprState,
) -> RawAction;
/// A closure-backed instrumentation rule registered at run time.
pub type RawClosureRuleFn = extern "C" fn(
    data: *mut c_void,
    vm: *const RawVm,
    analysis: *const RawInstAnalysis,
    sink: *mut c_void,
) -> RawAction;
/// Frees a closure the plugin boxed (called by the host when the callback is deleted).
pub type RawDropFn = extern "C" fn(data: *mut c_void);
/// (ABI 1.2) Gives the counter of the block `[start, end)` being translated by the Vm
/// numbered `lane` (null: not counted). Called at translation, on any thread. Translated
/// code increments it without atomics: each lane (each Vm) needs counters of its own.
pub type RawCounterSlotFn =
    extern "C" fn(data: *mut c_void, start: Rword, end: Rword, lane: u32) -> *mut u64;
/// (ABI 1.2) An edge map's block hash, called at translation, on any thread.
pub type RawBlockHashFn = extern "C" fn(start: Rword) -> u64;
/// (ABI 1.2) Gives the edge map of the Vm numbered `lane` (its own: updated without
/// atomics by that Vm only). Called once per Vm, on any thread.
pub type RawLaneMapFn = extern "C" fn(data: *mut c_void, lane: u32) -> *mut u8;

/// A plugin option given on the command line.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RawKeyValue {
    /// The key.
    pub key: StrRef,
    /// The value (`""` for a bare `key`).
    pub value: StrRef,
}

/// One operand of [`RawInstAnalysis`] (the fields of `OperandAnalysis`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RawOperand {
    /// `OperandType` value.
    pub op_type: u8,
    /// `OperandFlag` bits.
    pub flag: u8,
    /// `reg_off`.
    pub reg_off: u8,
    /// `RegisterAccessType` bits.
    pub reg_access: u8,
    /// `size`.
    pub size: u16,
    /// `reg_ctx_idx`.
    pub reg_ctx_idx: i16,
    /// `value`.
    pub value: i64,
    /// `reg_name`.
    pub reg_name: StrRef,
}

/// An `InstAnalysis` across the boundary (host-owned, valid for the call).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RawInstAnalysis {
    /// `address`.
    pub address: Rword,
    /// `inst_size`.
    pub inst_size: u32,
    /// `AnalysisType` bits computed.
    pub analysis_type: u32,
    /// Bit i set: boolean field i, in the order `affect_control_flow, is_branch, is_call,
    /// is_return, is_compare, is_predicable, is_move_imm, may_load, may_store`.
    pub bools: u32,
    /// `load_size`.
    pub load_size: u32,
    /// `store_size`.
    pub store_size: u32,
    /// `ConditionType` value.
    pub condition: u8,
    /// `RegisterAccessType` bits of `flags_access`.
    pub flags_access: u8,
    /// `symbol_offset`.
    pub symbol_offset: u32,
    /// `mnemonic`.
    pub mnemonic: StrRef,
    /// `disassembly`.
    pub disassembly: StrRef,
    /// `symbol_name`.
    pub symbol_name: StrRef,
    /// `module_name`.
    pub module_name: StrRef,
    /// `operands`.
    pub operands: *const RawOperand,
    /// Number of operands.
    pub operand_count: usize,
}

/// Where a callback registered at run time applies.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RawInstSpec {
    /// One of [`target`].
    pub target: u32,
    /// [`position`] (instruction callbacks).
    pub position: u32,
    /// Priority (instruction and memory-access callbacks).
    pub priority: i32,
    /// `MemoryAccessType` bits (memory callbacks).
    pub access: u32,
    /// Address, or range start.
    pub start: Rword,
    /// Range end (exclusive).
    pub end: Rword,
    /// Mnemonic glob ([`target::MNEMONIC`]).
    pub pattern: StrRef,
}

/// Targets of [`RawInstSpec`].
pub mod target {
    /// Every instrumented instruction (`add_code_cb`).
    pub const ALL: u32 = 0;
    /// One address (`add_code_addr_cb`).
    pub const ADDR: u32 = 1;
    /// A range (`add_code_range_cb`).
    pub const RANGE: u32 = 2;
    /// A mnemonic glob (`add_mnemonic_cb`).
    pub const MNEMONIC: u32 = 3;
    /// Every memory access of a type (`add_mem_access_cb`).
    pub const MEM_ACCESS: u32 = 4;
    /// Accesses touching one address (`add_mem_addr_cb`).
    pub const MEM_ADDR: u32 = 5;
    /// Accesses touching a range (`add_mem_range_cb`).
    pub const MEM_RANGE: u32 = 6;
}

/// Range operations of [`HostApi::ranges`].
pub mod range_op {
    /// `add_instrumented_range(start, end)`.
    pub const ADD_RANGE: u32 = 0;
    /// `remove_instrumented_range(start, end)`.
    pub const REMOVE_RANGE: u32 = 1;
    /// `add_instrumented_module(name)`.
    pub const ADD_MODULE: u32 = 2;
    /// `remove_instrumented_module(name)`.
    pub const REMOVE_MODULE: u32 = 3;
    /// `add_instrumented_module_from_addr(start)`.
    pub const ADD_MODULE_FROM_ADDR: u32 = 4;
    /// `remove_instrumented_module_from_addr(start)`.
    pub const REMOVE_MODULE_FROM_ADDR: u32 = 5;
    /// `instrument_all_executable_maps()`.
    pub const ALL_MAPS: u32 = 6;
    /// `remove_all_instrumented_ranges()`.
    pub const REMOVE_ALL: u32 = 7;
    /// `clear_cache(start, end)`.
    pub const CLEAR_CACHE: u32 = 8;
    /// `clear_all_cache()`.
    pub const CLEAR_ALL_CACHE: u32 = 9;
}

/// A symbol (host-owned strings, valid until the next host call on this thread).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RawSymbol {
    /// Symbol name (`""` if none covers the address).
    pub name: StrRef,
    /// Offset of the address from the symbol.
    pub offset: u32,
    /// Basename of the module.
    pub module: StrRef,
}

/// Returned by host functions that register something, on failure (then
/// [`HostApi::last_error`] says why).
pub const INVALID_ID: u32 = u32::MAX;

/// The host's functions, given to the plugin in every [`RawVm`]. Append-only: a plugin reads
/// only `size` bytes of it.
#[repr(C)]
#[derive(Debug)]
pub struct HostApi {
    /// `size_of::<HostApi>()` in the host.
    pub size: usize,
    /// The analysis of the current instruction into `*out` (false outside an instruction
    /// callback).
    pub inst_analysis:
        extern "C" fn(vm: *const RawVm, analysis: u32, out: *mut RawInstAnalysis) -> bool,
    /// The analysis of the instrumented instruction at `addr` (false if none).
    pub cached_inst_analysis: extern "C" fn(
        vm: *const RawVm,
        addr: Rword,
        analysis: u32,
        out: *mut RawInstAnalysis,
    ) -> bool,
    /// The recorded accesses of the current instruction (`bb` false) or block (`bb` true).
    pub memory_access:
        extern "C" fn(vm: *const RawVm, bb: bool, out: *mut *const MemoryAccess, count: *mut usize),
    /// Registers an instruction or memory callback backed by a plugin closure.
    pub add_inst_cb: extern "C" fn(
        vm: *const RawVm,
        spec: *const RawInstSpec,
        data: *mut c_void,
        call: RawClosureInstFn,
        drop: RawDropFn,
        name: StrRef,
    ) -> u32,
    /// Registers a VM event callback backed by a plugin closure.
    pub add_event_cb: extern "C" fn(
        vm: *const RawVm,
        events: u32,
        data: *mut c_void,
        call: RawClosureEventFn,
        drop: RawDropFn,
        name: StrRef,
    ) -> u32,
    /// Registers an instrumentation rule backed by a plugin closure, over `[start, end)`
    /// (`0, u64::MAX`: everywhere).
    pub add_instr_rule: extern "C" fn(
        vm: *const RawVm,
        start: Rword,
        end: Rword,
        analysis: u32,
        data: *mut c_void,
        call: RawClosureRuleFn,
        drop: RawDropFn,
        name: StrRef,
    ) -> u32,
    /// From inside a rule: attach a closure callback to the instruction being ruled.
    pub rule_push: extern "C" fn(
        sink: *mut c_void,
        position: u32,
        priority: i32,
        data: *mut c_void,
        call: RawClosureInstFn,
        drop: RawDropFn,
    ),
    /// `delete_instrumentation(id)` (false: no such id).
    pub delete_instrumentation: extern "C" fn(vm: *const RawVm, id: u32) -> bool,
    /// A [`range_op`] with its operands (`name` for the module operations). False on error.
    pub ranges:
        extern "C" fn(vm: *const RawVm, op: u32, start: Rword, end: Rword, name: StrRef) -> bool,
    /// `record_memory_access(access)`. False on error.
    pub record_memory_access: extern "C" fn(vm: *const RawVm, access: u32) -> bool,
    /// The symbol containing `addr` into `*out` (false: not in a file-backed mapping).
    pub symbolize: extern "C" fn(addr: Rword, out: *mut RawSymbol) -> bool,
    /// The message of the last failed host call on this thread.
    pub last_error: extern "C" fn() -> StrRef,
    /// Sets the error an init refusing to start returns.
    pub set_error: extern "C" fn(vm: *const RawVm, message: StrRef),
    /// Tells the host that plugin code panicked (`what`: the callback, `message`: the panic's).
    pub report_panic: extern "C" fn(vm: *const RawVm, what: StrRef, message: StrRef),
    /// Prints a line to the host's log (stderr with a `qbdi:` prefix, or `--log FILE`).
    pub log: extern "C" fn(message: StrRef),
    /// (ABI 1.2) `add_block_counter`: an inline counter per block, whose address `slot`
    /// gives (see [`RawCounterSlotFn`]; every address must stay valid for the life of the
    /// process). Returns the id, or [`INVALID_ID`].
    pub add_block_counter: extern "C" fn(
        vm: *const RawVm,
        data: *mut c_void,
        slot: RawCounterSlotFn,
        drop: RawDropFn,
    ) -> u32,
    /// (ABI 1.2) `add_edge_map`: an inline AFL edge map of `size` bytes at `map` (valid for
    /// the life of the process), shared by every Vm, or, with `lane_map`, one map per Vm
    /// that `lane_map(data, lane)` gives; blocks hashed with `hash` (None: AFL's QEMU mode
    /// hash). Returns the id, or [`INVALID_ID`].
    pub add_edge_map: extern "C" fn(
        vm: *const RawVm,
        map: *mut u8,
        size: usize,
        hash: Option<RawBlockHashFn>,
        never_zero: bool,
        data: *mut c_void,
        lane_map: Option<RawLaneMapFn>,
    ) -> u32,
}
