//! The host's side of the plugin ABI: the function table every plugin call receives
//! ([`HOST_API`]) and the per-call context behind its opaque pointer.
//!
//! A plugin call gets a `RawVm { api: &HOST_API, ctx, accesses }` built on the host's stack
//! (`accesses`: the instruction's memory accesses in a callback, ABI 1.3); `ctx`
//! points at a [`CallCtx`] saying which plugin is calling and what it may touch: the Vm
//! (init), the engine's `VmRef` (callbacks), or nothing (fini). Strings and arrays handed
//! to the plugin are host-owned and valid until the plugin's next host call on the thread.

use std::cell::RefCell;
use std::ffi::c_void;
use std::mem::ManuallyDrop;
use std::sync::Arc;

use qbdi_core::{
    AnalysisType, FprState, GprState, InstAnalysis, InstPosition, InstrRuleCallback, MemoryAccess,
    MemoryAccessType, Rword, Vm, VmAction, VmEvent, VmRef, VmState,
};
use qbdi_sdk::abi::{
    HostApi, INVALID_ID, PANICKED, RawAction, RawBlockHashFn, RawClosureEventFn, RawClosureInstFn,
    RawClosureRuleFn, RawCounterSlotFn, RawDropFn, RawInstAnalysis, RawInstSpec, RawLaneMapFn,
    RawOperand, RawSymbol, RawVm, StrRef, position, range_op, target,
};

use crate::log;
use crate::session;

/// What a plugin call may touch.
pub(crate) enum Target {
    /// The Vm itself (a plugin's init).
    Vm(*mut Vm),
    /// The engine's handle inside a callback.
    Ref(*mut c_void),
    /// Nothing (fini, or a call with no Vm).
    None,
}

/// The context behind `RawVm::ctx`.
pub(crate) struct CallCtx {
    /// What the call may touch.
    pub target: Target,
    /// Index of the calling plugin in the session.
    pub plugin: usize,
    /// The error an init refusing to start set.
    pub error: Option<String>,
}

impl CallCtx {
    /// A context for `plugin` over `target`.
    pub fn new(target: Target, plugin: usize) -> CallCtx {
        CallCtx {
            target,
            plugin,
            error: None,
        }
    }

    /// The handle to give the plugin (valid while `self` is), with the memory accesses of
    /// the instruction when the call is a callback's.
    pub fn raw(&mut self) -> RawVm {
        let accesses: &[MemoryAccess] = match self.target {
            // SAFETY: the engine's VmRef of the running callback (`ref_target`), alive
            // for the whole call; its accesses stay in place until the callback returns.
            Target::Ref(v) => unsafe { (*(v as *mut VmRef<'_>)).inst_memory_access() },
            _ => &[],
        };
        RawVm {
            api: &HOST_API,
            ctx: self as *mut CallCtx as *mut c_void,
            accesses: accesses.as_ptr(),
            accesses_len: accesses.len(),
        }
    }
}

/// The engine's `VmRef` of a callback, as a context target.
pub(crate) fn ref_target(vm: &mut VmRef<'_>) -> Target {
    Target::Ref(vm as *mut VmRef<'_> as *mut c_void)
}

// Never dropped: std registers a thread-local that needs dropping with glibc on its first
// use on a thread, and glibc allocates the record with calloc; the first use may be in a
// callback, while the guest is inside malloc.
thread_local! {
    static LAST_ERROR: RefCell<ManuallyDrop<String>> =
        const { RefCell::new(ManuallyDrop::new(String::new())) };
    static SYMBOL: RefCell<ManuallyDrop<(String, String)>> =
        const { RefCell::new(ManuallyDrop::new((String::new(), String::new()))) };
    static OPERANDS: RefCell<ManuallyDrop<Vec<RawOperand>>> =
        const { RefCell::new(ManuallyDrop::new(Vec::new())) };
}

fn set_error(message: String) {
    LAST_ERROR.with(|e| **e.borrow_mut() = message);
}

/// # Safety
/// `vm` must be a handle built by [`CallCtx::raw`] whose context is alive.
unsafe fn ctx<'a>(vm: *const RawVm) -> &'a mut CallCtx {
    // SAFETY: guaranteed by the caller: the plugin passes back the handle of its current call.
    unsafe { &mut *((*vm).ctx as *mut CallCtx) }
}

/// Runs `$body` with `$v` bound to the Vm or the engine's VmRef of the call (both have the
/// instrumentation methods), or evaluates `$none` when the call has neither.
macro_rules! with_target {
    ($vm:expr, |$v:ident| $body:expr, $none:expr) => {{
        // SAFETY: the plugin passes back the handle of its current call, whose context (and
        // the Vm or VmRef it points at) outlives the call.
        let c = unsafe { ctx($vm) };
        match c.target {
            // SAFETY: the Vm of an init call is exclusively the host's, lent for the call.
            Target::Vm(p) => {
                let $v = unsafe { &mut *p };
                $body
            }
            // SAFETY: the engine's VmRef of the running callback, lent for the call.
            Target::Ref(p) => {
                let $v = unsafe { &mut *(p as *mut VmRef<'_>) };
                $body
            }
            Target::None => $none,
        }
    }};
}

fn no_vm() -> bool {
    set_error("this call has no Vm (plugin fini): register and query in init and callbacks".into());
    false
}

fn raw_analysis(a: &InstAnalysis) -> RawInstAnalysis {
    let bools = [
        a.affect_control_flow,
        a.is_branch,
        a.is_call,
        a.is_return,
        a.is_compare,
        a.is_predicable,
        a.is_move_imm,
        a.may_load,
        a.may_store,
    ]
    .iter()
    .enumerate()
    .fold(0u32, |acc, (i, &b)| acc | (u32::from(b) << i));
    let (operands, operand_count) = OPERANDS.with(|ops| {
        let mut ops = ops.borrow_mut();
        ops.clear();
        ops.extend(a.operands.iter().map(|o| RawOperand {
            op_type: o.op_type as u8,
            flag: o.flag.bits(),
            reg_off: o.reg_off,
            reg_access: o.reg_access.bits(),
            size: o.size,
            reg_ctx_idx: o.reg_ctx_idx,
            value: o.value,
            reg_name: StrRef::new(o.reg_name),
        }));
        (ops.as_ptr(), ops.len())
    });
    RawInstAnalysis {
        address: a.address,
        inst_size: a.inst_size,
        analysis_type: a.analysis_type.bits(),
        bools,
        load_size: a.load_size,
        store_size: a.store_size,
        condition: a.condition as u8,
        flags_access: a.flags_access.bits(),
        symbol_offset: a.symbol_offset,
        mnemonic: StrRef::new(a.mnemonic),
        disassembly: StrRef::new(&a.disassembly),
        symbol_name: StrRef::new(&a.symbol_name),
        module_name: StrRef::new(&a.module_name),
        operands,
        operand_count,
    }
}

extern "C" fn inst_analysis(vm: *const RawVm, analysis: u32, out: *mut RawInstAnalysis) -> bool {
    // SAFETY: the plugin passes back its call's handle.
    let c = unsafe { ctx(vm) };
    let Target::Ref(p) = c.target else {
        return false;
    };
    // SAFETY: the engine's VmRef of the running callback.
    let r = unsafe { &mut *(p as *mut VmRef<'_>) };
    if r.current_address().is_none() {
        return false;
    }
    let a = r.inst_analysis(AnalysisType::from_bits_retain(analysis));
    // SAFETY: `out` is the plugin's MaybeUninit record for this call.
    unsafe { out.write(raw_analysis(a)) };
    true
}

extern "C" fn cached_inst_analysis(
    vm: *const RawVm,
    addr: Rword,
    analysis: u32,
    out: *mut RawInstAnalysis,
) -> bool {
    let what = AnalysisType::from_bits_retain(analysis);
    with_target!(
        vm,
        |v| match v.cached_inst_analysis(addr, what) {
            Some(a) => {
                // SAFETY: `out` is the plugin's MaybeUninit record for this call.
                unsafe { out.write(raw_analysis(a)) };
                true
            }
            None => false,
        },
        false
    )
}

extern "C" fn memory_access(
    vm: *const RawVm,
    bb: bool,
    out: *mut *const MemoryAccess,
    count: *mut usize,
) {
    // SAFETY: the plugin passes back its call's handle.
    let c = unsafe { ctx(vm) };
    let (ptr, len) = match c.target {
        Target::Ref(p) => {
            // SAFETY: the engine's VmRef of the running callback.
            let r = unsafe { &mut *(p as *mut VmRef<'_>) };
            let s = if bb {
                r.bb_memory_access()
            } else {
                r.inst_memory_access()
            };
            (s.as_ptr(), s.len())
        }
        _ => (std::ptr::null(), 0),
    };
    // SAFETY: the plugin's out-parameters for this call.
    unsafe {
        out.write(ptr);
        count.write(len);
    }
}

/// A plugin closure the host holds: freed through the plugin when dropped.
pub(crate) struct PluginClosure {
    data: *mut c_void,
    drop: RawDropFn,
}

impl PluginClosure {
    /// The plugin's closure. A method, not a field access, so that a `move` closure using it
    /// captures (and keeps alive) the whole `PluginClosure`, not just the pointer.
    fn data(&self) -> *mut c_void {
        self.data
    }
}

impl Drop for PluginClosure {
    fn drop(&mut self) {
        (self.drop)(self.data);
    }
}

// SAFETY: the SDK only hands over closures that are `Send + Sync` (its registration
// methods require it), so calling one from several threads, and freeing it from any, is
// what the plugin allowed.
unsafe impl Send for PluginClosure {}
// SAFETY: as for Send.
unsafe impl Sync for PluginClosure {}

/// What a plugin's init did to the Vm, to do again on the Vm of every thread the program
/// starts (see `threads`): callbacks and rules (same ids, same order), deletions, memory
/// recording. Ranges are copied from the Vm as init left them.
type Replay = Box<dyn Fn(&mut Vm) + Send + Sync>;
static INIT_LOG: std::sync::Mutex<Vec<Replay>> = std::sync::Mutex::new(Vec::new());

/// Keeps `op` for the threads' Vms when the call is an init's (its target is the Vm).
fn record_for_threads(vm: *const RawVm, op: impl Fn(&mut Vm) + Send + Sync + 'static) {
    // SAFETY: the plugin passes back its call's handle.
    if let Target::Vm(_) = unsafe { ctx(vm) }.target {
        INIT_LOG
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(Box::new(op));
    }
}

/// Does on `vm` what the plugins' inits did on the session's Vm.
pub(crate) fn replay_init(vm: &mut Vm) {
    for op in INIT_LOG
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .iter()
    {
        op(vm);
    }
}

/// The engine's position for an ABI position value.
pub(crate) fn position_of(raw: u32) -> InstPosition {
    if raw == position::POST_INST {
        InstPosition::PostInst
    } else {
        InstPosition::PreInst
    }
}

/// A host callback calling a plugin's closure-backed instruction callback.
pub(crate) fn inst_closure(
    plugin: usize,
    name: String,
    data: *mut c_void,
    call: RawClosureInstFn,
    drop: RawDropFn,
) -> impl FnMut(&mut VmRef<'_>, &mut GprState, &mut FprState) -> VmAction + Clone + Send + Sync + 'static
{
    let closure = Arc::new(PluginClosure { data, drop });
    move |vm, gpr, fpr| {
        let Some(_in) = session::enter_callback() else {
            return VmAction::Continue;
        };
        let mut c = CallCtx::new(ref_target(vm), plugin);
        let raw = c.raw();
        let action = call(closure.data(), &raw, gpr, fpr);
        session::action(action, plugin, &name)
    }
}

extern "C" fn add_inst_cb(
    vm: *const RawVm,
    spec: *const RawInstSpec,
    data: *mut c_void,
    call: RawClosureInstFn,
    drop: RawDropFn,
    name: StrRef,
) -> u32 {
    // SAFETY: the plugin's spec and name, valid for the call.
    let (spec, name) = unsafe { (*spec, name.as_str().into_owned()) };
    // SAFETY: the plugin passes back its call's handle.
    let plugin = unsafe { ctx(vm) }.plugin;
    let cb = inst_closure(plugin, name, data, call, drop);
    let pos = position_of(spec.position);
    let access = MemoryAccessType::from_bits_truncate(spec.access as u8);
    // SAFETY: the pattern is the plugin's, valid for the call.
    let pattern = unsafe { spec.pattern.as_str() }.into_owned();
    macro_rules! add {
        ($v:ident, $cb:expr) => {
            match spec.target {
                target::ALL => $v.add_code_cb(pos, $cb, spec.priority),
                target::ADDR => $v.add_code_addr_cb(spec.start, pos, $cb, spec.priority),
                target::RANGE => {
                    $v.add_code_range_cb(spec.start, spec.end, pos, $cb, spec.priority)
                }
                target::MNEMONIC => $v.add_mnemonic_cb(&pattern, pos, $cb, spec.priority),
                target::MEM_ACCESS => $v.add_mem_access_cb(access, $cb, spec.priority),
                target::MEM_ADDR => $v.add_mem_addr_cb(spec.start, access, $cb),
                target::MEM_RANGE => $v.add_mem_range_cb(spec.start, spec.end, access, $cb),
                other => Err(qbdi_core::VmError::InvalidArgument(format!(
                    "unknown callback target {other} (plugin built with a newer SDK?)"
                ))),
            }
        };
    }
    let result = with_target!(vm, |v| add!(v, cb.clone()), {
        no_vm();
        return INVALID_ID;
    });
    if result.is_ok() {
        record_for_threads(vm, move |v: &mut Vm| {
            let _ = add!(v, cb.clone());
        });
    }
    id_or_error(result)
}

/// `true`, or `false` with the error kept for `last_error`.
fn ok_or_error(result: Result<(), qbdi_core::VmError>) -> bool {
    match result {
        Ok(()) => true,
        Err(e) => {
            set_error(e.to_string());
            false
        }
    }
}

fn id_or_error(result: Result<u32, qbdi_core::VmError>) -> u32 {
    match result {
        Ok(id) => id,
        Err(e) => {
            set_error(e.to_string());
            INVALID_ID
        }
    }
}

/// A host callback calling a plugin's closure-backed VM event callback.
pub(crate) fn event_closure(
    plugin: usize,
    name: String,
    data: *mut c_void,
    call: RawClosureEventFn,
    drop: RawDropFn,
) -> impl FnMut(&mut VmRef<'_>, &VmState, &mut GprState, &mut FprState) -> VmAction
+ Clone
+ Send
+ Sync
+ 'static {
    let closure = Arc::new(PluginClosure { data, drop });
    move |vm, state, gpr, fpr| {
        let Some(_in) = session::enter_callback() else {
            return VmAction::Continue;
        };
        let mut c = CallCtx::new(ref_target(vm), plugin);
        let raw = c.raw();
        let action = call(closure.data(), &raw, state, gpr, fpr);
        session::action(action, plugin, &name)
    }
}

extern "C" fn add_event_cb(
    vm: *const RawVm,
    events: u32,
    data: *mut c_void,
    call: RawClosureEventFn,
    drop: RawDropFn,
    name: StrRef,
) -> u32 {
    // SAFETY: the plugin's name, valid for the call; its call's handle.
    let (name, plugin) = unsafe { (name.as_str().into_owned(), ctx(vm).plugin) };
    let cb = event_closure(plugin, name, data, call, drop);
    let events = VmEvent::from_bits_retain(events);
    let result = with_target!(vm, |v| v.add_vm_event_cb(events, cb.clone()), {
        no_vm();
        return INVALID_ID;
    });
    if result.is_ok() {
        record_for_threads(vm, move |v: &mut Vm| {
            let _ = v.add_vm_event_cb(events, cb.clone());
        });
    }
    id_or_error(result)
}

/// What a rule pushes its callbacks into (`sink` of the ABI).
pub(crate) struct RuleSink {
    plugin: usize,
    name: String,
    out: Vec<InstrRuleCallback>,
}

/// Runs a plugin rule (`call` with the plugin's arguments already bound) on `analysis`
/// and returns the callbacks it attached.
pub(crate) fn run_rule(
    vm: &mut VmRef<'_>,
    analysis: &InstAnalysis,
    plugin: usize,
    name: &str,
    call: impl FnOnce(*const RawVm, *const RawInstAnalysis, *mut c_void) -> RawAction,
) -> Vec<InstrRuleCallback> {
    let mut sink = RuleSink {
        plugin,
        name: name.to_owned(),
        out: Vec::new(),
    };
    let Some(_in) = session::enter_callback() else {
        return Vec::new();
    };
    let raw_analysis = raw_analysis(analysis);
    let mut c = CallCtx::new(ref_target(vm), plugin);
    let raw = c.raw();
    let action = call(
        &raw,
        &raw_analysis,
        &mut sink as *mut RuleSink as *mut c_void,
    );
    if action == PANICKED {
        session::action(action, plugin, name);
        return Vec::new();
    }
    sink.out
}

extern "C" fn add_instr_rule(
    vm: *const RawVm,
    start: Rword,
    end: Rword,
    analysis: u32,
    data: *mut c_void,
    call: RawClosureRuleFn,
    drop: RawDropFn,
    name: StrRef,
) -> u32 {
    // SAFETY: the plugin's name, valid for the call; its call's handle.
    let (name, plugin) = unsafe { (name.as_str().into_owned(), ctx(vm).plugin) };
    let closure = Arc::new(PluginClosure { data, drop });
    let rule = move |vm: &mut VmRef<'_>, a: &InstAnalysis| {
        run_rule(vm, a, plugin, &name, |raw, an, sink| {
            call(closure.data(), raw, an, sink)
        })
    };
    let what = AnalysisType::from_bits_retain(analysis);
    macro_rules! add {
        ($v:ident) => {
            if start == 0 && end == u64::MAX {
                $v.add_instr_rule(rule.clone(), what)
            } else {
                $v.add_instr_rule_range(start, end, rule.clone(), what)
            }
        };
    }
    let result = with_target!(vm, |v| add!(v), {
        no_vm();
        return INVALID_ID;
    });
    if result.is_ok() {
        record_for_threads(vm, move |v: &mut Vm| {
            let _ = add!(v);
        });
    }
    id_or_error(result)
}

extern "C" fn rule_push(
    sink: *mut c_void,
    position: u32,
    priority: i32,
    data: *mut c_void,
    call: RawClosureInstFn,
    drop: RawDropFn,
) {
    // SAFETY: `sink` is the RuleSink the host passed into the rule call the plugin is in.
    let sink = unsafe { &mut *(sink as *mut RuleSink) };
    let cb = inst_closure(sink.plugin, sink.name.clone(), data, call, drop);
    sink.out
        .push(InstrRuleCallback::new(position_of(position), cb, priority));
}

extern "C" fn delete_instrumentation(vm: *const RawVm, id: u32) -> bool {
    let deleted = with_target!(vm, |v| v.delete_instrumentation(id).is_ok(), no_vm());
    if deleted {
        record_for_threads(vm, move |v: &mut Vm| {
            let _ = v.delete_instrumentation(id);
        });
    }
    deleted
}

extern "C" fn ranges(vm: *const RawVm, op: u32, start: Rword, end: Rword, name: StrRef) -> bool {
    // SAFETY: the plugin's string, valid for the call.
    let name = unsafe { name.as_str() }.into_owned();
    let result: Result<(), qbdi_core::VmError> = with_target!(
        vm,
        |v| match op {
            range_op::ADD_RANGE => v.add_instrumented_range(start, end),
            range_op::REMOVE_RANGE => v.remove_instrumented_range(start, end),
            range_op::ADD_MODULE => v.add_instrumented_module(&name),
            range_op::REMOVE_MODULE => v.remove_instrumented_module(&name),
            range_op::ADD_MODULE_FROM_ADDR => v.add_instrumented_module_from_addr(start),
            range_op::REMOVE_MODULE_FROM_ADDR => v.remove_instrumented_module_from_addr(start),
            range_op::ALL_MAPS => session::instrument_all_but_own(v),
            range_op::REMOVE_ALL => {
                v.remove_all_instrumented_ranges();
                Ok(())
            }
            range_op::CLEAR_CACHE => {
                v.clear_cache(start, end);
                Ok(())
            }
            range_op::CLEAR_ALL_CACHE => {
                v.clear_all_cache();
                Ok(())
            }
            other => Err(qbdi_core::VmError::InvalidArgument(format!(
                "unknown range operation {other}"
            ))),
        },
        return no_vm()
    );
    ok_or_error(result)
}

extern "C" fn record_memory_access(vm: *const RawVm, access: u32) -> bool {
    let access = MemoryAccessType::from_bits_truncate(access as u8);
    let result = with_target!(vm, |v| v.record_memory_access(access), return no_vm());
    if result.is_ok() {
        record_for_threads(vm, move |v: &mut Vm| {
            let _ = v.record_memory_access(access);
        });
    }
    ok_or_error(result)
}

/// Numbers for the Vms one registration is made on (0 for the session's, then each
/// thread's as it is created): the lanes of inline instrumentation that is per Vm.
fn lanes() -> impl Fn() -> u32 + Send + Sync + 'static {
    let next = std::sync::atomic::AtomicU32::new(0);
    move || next.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

extern "C" fn add_block_counter(
    vm: *const RawVm,
    data: *mut c_void,
    slot: RawCounterSlotFn,
    drop: RawDropFn,
) -> u32 {
    let closure = Arc::new(PluginClosure { data, drop });
    // Each Vm (the session's, every thread's) gets a lane of its own: its counters are
    // incremented without atomics.
    let next_lane = lanes();
    let make = move || {
        let c = Arc::clone(&closure);
        let lane = next_lane();
        move |start, end| slot(c.data(), start, end, lane)
    };
    // SAFETY: the ABI's contract: every address the plugin's slot function returns stays
    // valid for the life of the process and belongs to the lane it was asked for, which is
    // this Vm's alone.
    let result = with_target!(vm, |v| unsafe { v.add_block_counter(make()) }, {
        no_vm();
        return INVALID_ID;
    });
    if result.is_ok() {
        record_for_threads(vm, move |v: &mut Vm| {
            // SAFETY: as above.
            let _ = unsafe { v.add_block_counter(make()) };
        });
    }
    id_or_error(result)
}

extern "C" fn add_edge_map(
    vm: *const RawVm,
    map: *mut u8,
    size: usize,
    hash: Option<RawBlockHashFn>,
    never_zero: bool,
    data: *mut c_void,
    lane_map: Option<RawLaneMapFn>,
) -> u32 {
    let hash = move |start| hash.map_or_else(|| qbdi_core::afl_block_hash(start), |h| h(start));
    let (map_addr, data_addr) = (map as usize, data as usize);
    // Each Vm's map: the shared one, or the lane's own.
    let next_lane = lanes();
    let map_of_next_vm = move || match lane_map {
        Some(f) => f(data_addr as *mut c_void, next_lane()),
        None => map_addr as *mut u8,
    };
    // SAFETY: the ABI's contract: each map stays valid for the life of the process (a
    // lane's map is that Vm's alone).
    let result = with_target!(
        vm,
        |v| unsafe { v.add_edge_map(map_of_next_vm(), size, hash, never_zero) },
        {
            no_vm();
            return INVALID_ID;
        }
    );
    if result.is_ok() {
        record_for_threads(vm, move |v: &mut Vm| {
            // SAFETY: as above.
            let _ = unsafe { v.add_edge_map(map_of_next_vm(), size, hash, never_zero) };
        });
    }
    id_or_error(result)
}

extern "C" fn symbolize(addr: Rword, out: *mut RawSymbol) -> bool {
    let Some((name, offset, module)) = qbdi_core::symbolize(addr) else {
        return false;
    };
    SYMBOL.with(|s| {
        let mut s = s.borrow_mut();
        **s = (name, module);
        // SAFETY: the plugin's out-parameter; the strings stay in SYMBOL until the next call.
        unsafe {
            out.write(RawSymbol {
                name: StrRef::new(&s.0),
                offset,
                module: StrRef::new(&s.1),
            })
        };
    });
    true
}

extern "C" fn last_error() -> StrRef {
    // The string stays in LAST_ERROR until the next failing call on this thread.
    LAST_ERROR.with(|e| StrRef::new(&e.borrow()))
}

extern "C" fn init_error(vm: *const RawVm, message: StrRef) {
    // SAFETY: the plugin passes back its call's handle and its own message.
    let (c, message) = unsafe { (ctx(vm), message.as_str().into_owned()) };
    c.error = Some(message);
}

extern "C" fn report_panic(_vm: *const RawVm, _what: StrRef, message: StrRef) {
    // SAFETY: the plugin's string, valid for the call.
    session::panic_reported(unsafe { message.as_str() }.into_owned());
}

extern "C" fn host_log(message: StrRef) {
    // SAFETY: the plugin's string, valid for the call.
    log::line(&unsafe { message.as_str() });
}

/// The function table every plugin call receives.
pub(crate) static HOST_API: HostApi = HostApi {
    size: size_of::<HostApi>(),
    inst_analysis,
    cached_inst_analysis,
    memory_access,
    add_inst_cb,
    add_event_cb,
    add_instr_rule,
    rule_push,
    delete_instrumentation,
    ranges,
    record_memory_access,
    symbolize,
    last_error,
    set_error: init_error,
    report_panic,
    log: host_log,
    add_block_counter,
    add_edge_map,
};
