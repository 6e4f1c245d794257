//! What the attribute macros register, seen as the host sees it: the callbacks below are
//! registered with the attributes in this test crate, the descriptor the plugin entry point
//! would return is read back, and each trampoline is called through a stand-in host
//! function table to check it reaches the right function with the right arguments.

use std::cell::RefCell;
use std::ffi::c_void;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::SeqCst};

use qbdi_sdk::abi::{
    self, HostApi, INVALID_ID, PANICKED, RawAction, RawClosureEventFn, RawClosureInstFn,
    RawClosureRuleFn, RawDropFn, RawInstAnalysis, RawInstSpec, RawKeyValue, RawRegistration,
    RawSymbol, RawVm, StrRef, kind, position,
};
use qbdi_sdk::prelude::*;
use qbdi_sdk::private::{self, PluginInfo, Registration, Trampoline};

// ---- The plugin's functions (order and lines matter: see `registrations_in_line_order`).

#[inst_callback(preinst, mnemonic = "CALL*", priority = 10)]
fn on_call(_vm: &mut VmRef, gpr: &mut GprState, _fpr: &mut FprState) -> VmAction {
    gpr.rax = 0x1234;
    VmAction::SkipInst
}

#[inst_callback(postinst, code = "Retnq", priority = -3)]
fn after_ret(_vm: &mut VmRef, gpr: &mut GprState, _fpr: &mut FprState) -> VmAction {
    gpr.rbx = gpr.rip;
    VmAction::Continue
}

static EVENT_BLOCK: AtomicU64 = AtomicU64::new(0);

#[vm_event(BASIC_BLOCK_ENTRY | SYSCALL_EXIT)]
fn on_event(_vm: &mut VmRef, state: &VmState, _gpr: &mut GprState, fpr: &mut FprState) -> VmAction {
    EVENT_BLOCK.store(state.basic_block_start, SeqCst);
    fpr.mxcsr = 0x1f80;
    VmAction::BreakToVm
}

#[mem_access(read_write, priority = 7)]
fn on_access(_vm: &mut VmRef, _gpr: &mut GprState, _fpr: &mut FprState) -> VmAction {
    VmAction::Stop
}

#[mem_access(read | write)]
fn on_access_union(_vm: &mut VmRef, _gpr: &mut GprState, _fpr: &mut FprState) -> VmAction {
    VmAction::Continue
}

#[instr_rule(analysis = OPERANDS | SYMBOL)]
fn calls_rule(_vm: &mut VmRef, analysis: &InstAnalysis) -> Vec<InstrRuleCallback> {
    if !analysis.is_call || analysis.mnemonic != "CALL" {
        return Vec::new();
    }
    vec![
        InstrRuleCallback::new(InstPosition::PreInst, |_vm, _g, _f| VmAction::SkipPatch, 1),
        InstrRuleCallback::new(InstPosition::PostInst, |_vm, _g, _f| VmAction::Stop, 2),
    ]
}

#[instr_rule]
fn default_rule(_vm: &mut VmRef, _analysis: &InstAnalysis) -> Vec<InstrRuleCallback> {
    Vec::new()
}

/// The per-thread edge maps `init` made with `mode=inline`.
static THREAD_MAPS: std::sync::OnceLock<ThreadEdgeMaps> = std::sync::OnceLock::new();
/// The counter `init` made with `mode=inline`.
static COUNTER: std::sync::OnceLock<BlockCounter> = std::sync::OnceLock::new();
/// The edge map `init` registers with `mode=inline`.
static EDGES: [std::sync::atomic::AtomicU8; 1024] =
    [const { std::sync::atomic::AtomicU8::new(0) }; 1024];

extern "C" fn my_hash(addr: u64) -> u64 {
    addr >> 2
}

#[plugin_init]
fn init(vm: &mut VmRef, options: &PluginOptions) -> Result<(), String> {
    match options.get("mode") {
        Some("fail") => Err("refused: mode=fail".to_owned()),
        Some("inline") => {
            let c = vm.add_block_counter().map_err(|e| e.to_string())?;
            let _ = COUNTER.set(c);
            vm.add_edge_map(&EDGES, EdgeHash::Custom(my_hash), true)
                .map_err(|e| e.to_string())?;
            vm.add_edge_map(&EDGES, EdgeHash::Afl, false)
                .map_err(|e| e.to_string())?;
            let maps = vm
                .add_thread_edge_maps(64, EdgeHash::Afl, true)
                .map_err(|e| e.to_string())?;
            let _ = THREAD_MAPS.set(maps);
            assert!(vm.add_thread_edge_maps(100, EdgeHash::Afl, true).is_err());
            Ok(())
        }
        _ => Ok(()),
    }
}

static FINIS: AtomicU32 = AtomicU32::new(0);

#[plugin_fini]
fn fini() {
    FINIS.fetch_add(1, SeqCst);
}

#[inst_callback(postinst)]
fn panics(_vm: &mut VmRef, _gpr: &mut GprState, _fpr: &mut FprState) -> VmAction {
    panic!("boom in a callback");
}

// ---- The descriptor, as the host reads it.

static INFO: PluginInfo = PluginInfo {
    name: "registrations",
    version: "1.2.3",
    description: "attribute registrations",
    options: &[],
};

fn registrations() -> &'static [RawRegistration] {
    let d = private::descriptor(&INFO);
    // SAFETY: the descriptor and its registrations are leaked statics of this crate.
    unsafe {
        let d = &*d;
        std::slice::from_raw_parts(d.registrations, d.registration_count)
    }
}

/// `s` as a `&str` (descriptor strings are this crate's static data).
fn text(s: StrRef) -> String {
    // SAFETY: every StrRef of the descriptor points at 'static data.
    unsafe { s.as_str() }.into_owned()
}

/// The 1-based line of `fn NAME(` in this file.
fn line_of_fn(name: &str) -> u32 {
    let source = include_str!("registrations.rs");
    let needle = format!("fn {name}(");
    let index = source
        .lines()
        .position(|l| l.starts_with(&needle))
        .unwrap_or_else(|| panic!("no `{needle}` in the source"));
    u32::try_from(index + 1).expect("a small file")
}

#[test]
fn registrations_in_line_order() {
    let regs = registrations();
    let names: Vec<String> = regs.iter().map(|r| text(r.name)).collect();
    assert_eq!(
        names,
        [
            "on_call",
            "after_ret",
            "on_event",
            "on_access",
            "on_access_union",
            "calls_rule",
            "default_rule",
            "init",
            "fini",
            "panics"
        ]
    );
    for r in regs {
        let name = text(r.name);
        assert_eq!(r.line, line_of_fn(&name), "line of {name}");
        assert!(!r.callback.is_null(), "{name}");
    }
    assert!(regs.windows(2).all(|w| w[0].line < w[1].line));
}

#[test]
fn registration_fields() {
    // (name, kind, position, priority, flags, mnemonic, code)
    let expected: [(&str, u32, u32, i32, u32, &str, &str); 10] = [
        (
            "on_call",
            kind::INST,
            position::PRE_INST,
            10,
            0,
            "CALL*",
            "",
        ),
        (
            "after_ret",
            kind::INST,
            position::POST_INST,
            -3,
            0,
            "",
            "Retnq",
        ),
        (
            "on_event",
            kind::EVENT,
            position::PRE_INST,
            0,
            VmEvent::BASIC_BLOCK_ENTRY.bits() | VmEvent::SYSCALL_EXIT.bits(),
            "",
            "",
        ),
        (
            "on_access",
            kind::MEM_ACCESS,
            position::PRE_INST,
            7,
            MemoryAccessType::READ_WRITE.bits().into(),
            "",
            "",
        ),
        (
            "on_access_union",
            kind::MEM_ACCESS,
            position::PRE_INST,
            0,
            MemoryAccessType::READ_WRITE.bits().into(),
            "",
            "",
        ),
        (
            "calls_rule",
            kind::INSTR_RULE,
            position::PRE_INST,
            0,
            AnalysisType::OPERANDS.bits() | AnalysisType::SYMBOL.bits(),
            "",
            "",
        ),
        (
            "default_rule",
            kind::INSTR_RULE,
            position::PRE_INST,
            0,
            AnalysisType::INSTRUCTION.bits(),
            "",
            "",
        ),
        ("init", kind::INIT, position::PRE_INST, 0, 0, "", ""),
        ("fini", kind::FINI, position::PRE_INST, 0, 0, "", ""),
        ("panics", kind::INST, position::POST_INST, 0, 0, "", ""),
    ];
    let regs = registrations();
    assert_eq!(regs.len(), expected.len());
    for (r, (name, k, pos, priority, flags, mnemonic, code)) in regs.iter().zip(expected) {
        assert_eq!(text(r.name), name);
        assert_eq!(r.kind, k, "kind of {name}");
        assert_eq!(r.position, pos, "position of {name}");
        assert_eq!(r.priority, priority, "priority of {name}");
        assert_eq!(r.flags, flags, "flags of {name}");
        assert_eq!(text(r.mnemonic), mnemonic, "mnemonic of {name}");
        assert_eq!(text(r.code), code, "code of {name}");
    }
}

// ---- A stand-in host: what the trampolines call back into.

thread_local! {
    /// What the host was told on this thread: (function, detail).
    static HOST_CALLS: RefCell<Vec<(&'static str, String)>> = const { RefCell::new(Vec::new()) };
}

fn host_calls() -> Vec<(&'static str, String)> {
    HOST_CALLS.with(|c| std::mem::take(&mut *c.borrow_mut()))
}

fn record(what: &'static str, detail: String) {
    HOST_CALLS.with(|c| c.borrow_mut().push((what, detail)));
}

extern "C" fn inst_analysis(_: *const RawVm, _: u32, _: *mut RawInstAnalysis) -> bool {
    false
}
extern "C" fn cached_inst_analysis(
    _: *const RawVm,
    _: u64,
    _: u32,
    _: *mut RawInstAnalysis,
) -> bool {
    false
}
extern "C" fn memory_access(_: *const RawVm, _: bool, _: *mut *const MemoryAccess, _: *mut usize) {}
extern "C" fn add_inst_cb(
    _: *const RawVm,
    _: *const RawInstSpec,
    _: *mut c_void,
    _: RawClosureInstFn,
    _: RawDropFn,
    _: StrRef,
) -> u32 {
    INVALID_ID
}
extern "C" fn add_event_cb(
    _: *const RawVm,
    _: u32,
    _: *mut c_void,
    _: RawClosureEventFn,
    _: RawDropFn,
    _: StrRef,
) -> u32 {
    INVALID_ID
}
#[allow(clippy::too_many_arguments)]
extern "C" fn add_instr_rule(
    _: *const RawVm,
    _: u64,
    _: u64,
    _: u32,
    _: *mut c_void,
    _: RawClosureRuleFn,
    _: RawDropFn,
    _: StrRef,
) -> u32 {
    INVALID_ID
}

/// What a rule's `sink` points at in these tests.
struct Sink {
    vm: *const RawVm,
}

/// Runs the pushed closure once (it must be callable), records (position, priority, its
/// action), and frees it as the host does when the callback is deleted.
extern "C" fn rule_push(
    sink: *mut c_void,
    position: u32,
    priority: i32,
    data: *mut c_void,
    call: RawClosureInstFn,
    drop: RawDropFn,
) {
    // SAFETY: the tests pass a `Sink` as the rule's sink.
    let sink = unsafe { &*(sink as *const Sink) };
    let (mut gpr, mut fpr) = (GprState::default(), FprState::default());
    let action = call(data, sink.vm, &mut gpr, &mut fpr);
    drop(data);
    record("rule_push", format!("{position} {priority} {action}"));
}
extern "C" fn delete_instrumentation(_: *const RawVm, _: u32) -> bool {
    false
}
extern "C" fn ranges(_: *const RawVm, _: u32, _: u64, _: u64, _: StrRef) -> bool {
    false
}
extern "C" fn record_memory_access(_: *const RawVm, _: u32) -> bool {
    false
}
extern "C" fn symbolize(_: u64, _: *mut RawSymbol) -> bool {
    false
}
extern "C" fn last_error() -> StrRef {
    StrRef::EMPTY
}
extern "C" fn set_error(_: *const RawVm, message: StrRef) {
    record("set_error", text(message));
}
extern "C" fn report_panic(_: *const RawVm, what: StrRef, message: StrRef) {
    record("report_panic", format!("{}: {}", text(what), text(message)));
}
extern "C" fn log(message: StrRef) {
    record("log", text(message));
}
/// Asks for the counters of two blocks, the first twice in lane 0 and once in lane 1, and
/// counts in them as translated code would (1 + 2 and 4 entries).
extern "C" fn add_block_counter(
    _: *const RawVm,
    data: *mut c_void,
    slot: abi::RawCounterSlotFn,
    _drop: RawDropFn,
) -> u32 {
    let a = slot(data, 0x1000, 0x1010, 0);
    let again = slot(data, 0x1000, 0x1010, 0);
    let other_lane = slot(data, 0x1000, 0x1010, 1);
    let b = slot(data, 0x2000, 0x2004, 0);
    record(
        "add_block_counter",
        format!(
            "same slot: {}, lanes apart: {}",
            a == again,
            a != other_lane
        ),
    );
    // SAFETY: the SDK's counters are AtomicU64s valid for the life of the process.
    unsafe {
        (*(a as *const AtomicU64)).fetch_add(1, SeqCst);
        (*(other_lane as *const AtomicU64)).fetch_add(2, SeqCst);
        (*(b as *const AtomicU64)).fetch_add(4, SeqCst);
    }
    7
}
/// Records the map's size, hash of 0x100 and NeverZero; with per-lane maps, asks for two
/// lanes' maps and counts in them as translated code would.
extern "C" fn add_edge_map(
    _: *const RawVm,
    _map: *mut u8,
    size: usize,
    hash: Option<abi::RawBlockHashFn>,
    never_zero: bool,
    data: *mut c_void,
    lane_map: Option<abi::RawLaneMapFn>,
) -> u32 {
    let hash = hash.map(|h| h(0x100));
    record("add_edge_map", format!("{size} {hash:?} {never_zero}"));
    if let Some(f) = lane_map {
        let (a, b) = (f(data, 0), f(data, 1));
        record("lane maps", format!("apart: {}", a != b));
        // SAFETY: the SDK's maps are `size` bytes valid for the life of the process.
        unsafe {
            *a.add(3) = 200;
            *b.add(3) = 100;
            *a.add(4) = 200;
            *b.add(4) = 56;
            *b.add(5) = 7;
        }
    }
    8
}

static API: HostApi = HostApi {
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
    set_error,
    report_panic,
    log,
    add_block_counter,
    add_edge_map,
};

fn raw_vm() -> RawVm {
    RawVm {
        api: &API,
        ctx: std::ptr::null_mut(),
        accesses: std::ptr::null(),
        accesses_len: 0,
    }
}

/// The typed trampoline registered for `name` (the same one the descriptor points at).
fn trampoline(name: &str) -> Trampoline {
    let r = private::inventory::iter::<Registration>
        .into_iter()
        .find(|r| r.name == name)
        .unwrap_or_else(|| panic!("no registration {name}"));
    let raw = registrations()
        .iter()
        .find(|raw| text(raw.name) == name)
        .expect("in the descriptor");
    let typed = match r.trampoline {
        Trampoline::Inst(f) | Trampoline::MemAccess(f) => f as *const c_void,
        Trampoline::Event(f) => f as *const c_void,
        Trampoline::Rule(f) => f as *const c_void,
        Trampoline::Init(f) => f as *const c_void,
        Trampoline::Fini(f) => f as *const c_void,
    };
    assert_eq!(
        typed, raw.callback,
        "descriptor points at the trampoline of {name}"
    );
    r.trampoline
}

fn call_inst(name: &str, gpr: &mut GprState) -> RawAction {
    let (Trampoline::Inst(f) | Trampoline::MemAccess(f)) = trampoline(name) else {
        panic!("{name} is not an instruction callback");
    };
    let vm = raw_vm();
    f(&vm, gpr, &mut FprState::default())
}

#[test]
fn inst_trampolines_call_their_function() {
    let mut gpr = GprState::default();
    assert_eq!(
        call_inst("on_call", &mut gpr),
        VmAction::SkipInst as RawAction
    );
    assert_eq!(gpr.rax, 0x1234);
    gpr.rip = 0x4000;
    assert_eq!(
        call_inst("after_ret", &mut gpr),
        VmAction::Continue as RawAction
    );
    assert_eq!(gpr.rbx, 0x4000);
    assert_eq!(
        call_inst("on_access", &mut gpr),
        VmAction::Stop as RawAction
    );
    assert_eq!(host_calls(), []);
}

#[test]
fn event_trampoline_passes_the_state() {
    let Trampoline::Event(f) = trampoline("on_event") else {
        panic!("on_event is not an event callback");
    };
    let state = VmState {
        event: VmEvent::BASIC_BLOCK_ENTRY,
        basic_block_start: 0x1000,
        basic_block_end: 0x1010,
        sequence_start: 0x1000,
        sequence_end: 0x1010,
    };
    let (mut gpr, mut fpr) = (GprState::default(), FprState::default());
    fpr.mxcsr = 0;
    let vm = raw_vm();
    assert_eq!(
        f(&vm, &state, &mut gpr, &mut fpr),
        VmAction::BreakToVm as RawAction
    );
    assert_eq!(EVENT_BLOCK.load(SeqCst), 0x1000);
    assert_eq!(fpr.mxcsr, 0x1f80);
}

#[test]
fn rule_trampoline_pushes_what_the_rule_returns() {
    let Trampoline::Rule(f) = trampoline("calls_rule") else {
        panic!("calls_rule is not a rule");
    };
    let vm = raw_vm();
    let mut sink = Sink { vm: &vm };
    let analysis = |mnemonic: &'static str, is_call: bool| RawInstAnalysis {
        address: 0x1000,
        inst_size: 5,
        analysis_type: AnalysisType::INSTRUCTION.bits(),
        bools: if is_call { 1 << 2 } else { 0 },
        load_size: 0,
        store_size: 0,
        condition: 0,
        flags_access: 0,
        symbol_offset: 0,
        mnemonic: StrRef::new(mnemonic),
        disassembly: StrRef::EMPTY,
        symbol_name: StrRef::EMPTY,
        module_name: StrRef::EMPTY,
        operands: std::ptr::null(),
        operand_count: 0,
    };
    let sink_ptr = (&raw mut sink).cast::<c_void>();
    assert_eq!(
        f(&vm, &analysis("CALL", true), sink_ptr),
        VmAction::Continue as RawAction
    );
    assert_eq!(
        host_calls(),
        [
            (
                "rule_push",
                format!("{} 1 {}", position::PRE_INST, VmAction::SkipPatch as u32)
            ),
            (
                "rule_push",
                format!("{} 2 {}", position::POST_INST, VmAction::Stop as u32)
            ),
        ]
    );
    assert_eq!(
        f(&vm, &analysis("MOV", false), sink_ptr),
        VmAction::Continue as RawAction
    );
    assert_eq!(host_calls(), []);
}

#[test]
fn inline_instrumentation_goes_through_the_host() {
    let Trampoline::Init(f) = trampoline("init") else {
        panic!("init is not an init");
    };
    let vm = raw_vm();
    let inline = [RawKeyValue {
        key: StrRef::new("mode"),
        value: StrRef::new("inline"),
    }];
    assert_eq!(f(&vm, inline.as_ptr(), inline.len()), 0);
    assert_eq!(
        host_calls(),
        [
            (
                "add_block_counter",
                "same slot: true, lanes apart: true".to_owned()
            ),
            ("add_edge_map", "1024 Some(64) true".to_owned()),
            ("add_edge_map", "1024 None false".to_owned()),
            ("add_edge_map", "64 None true".to_owned()),
            ("lane maps", "apart: true".to_owned()),
        ]
    );
    // 200 + 100 wraps to 44; 200 + 56 wraps to 0, which NeverZero makes 1.
    let merged = THREAD_MAPS.get().expect("init made them").merged();
    assert_eq!(merged.len(), 64);
    assert_eq!((merged[3], merged[4], merged[5], merged[0]), (44, 1, 7, 0));
    let counter = COUNTER.get().expect("init made a counter");
    assert_eq!(
        counter.counts(),
        [
            BlockCount {
                start: 0x1000,
                end: 0x1010,
                count: 3
            },
            BlockCount {
                start: 0x2000,
                end: 0x2004,
                count: 4
            }
        ]
    );
    assert_eq!(counter.total(), 7);
    assert!(counter.reset());
    assert_eq!(counter.total(), 0);
}

#[test]
fn init_trampoline_passes_options_and_reports_errors() {
    let Trampoline::Init(f) = trampoline("init") else {
        panic!("init is not an init");
    };
    let vm = raw_vm();
    let ok = [RawKeyValue {
        key: StrRef::new("mode"),
        value: StrRef::new("fast"),
    }];
    assert_eq!(f(&vm, ok.as_ptr(), ok.len()), 0);
    assert_eq!(f(&vm, std::ptr::null(), 0), 0);
    assert_eq!(host_calls(), []);
    let refused = [RawKeyValue {
        key: StrRef::new("mode"),
        value: StrRef::new("fail"),
    }];
    assert_eq!(f(&vm, refused.as_ptr(), refused.len()), 1);
    assert_eq!(
        host_calls(),
        [("set_error", "refused: mode=fail".to_owned())]
    );
}

#[test]
fn fini_trampoline_calls_fini() {
    let Trampoline::Fini(f) = trampoline("fini") else {
        panic!("fini is not a fini");
    };
    let vm = raw_vm();
    let before = FINIS.load(SeqCst);
    assert_eq!(f(&vm), 0);
    assert_eq!(FINIS.load(SeqCst), before + 1);
}

#[test]
fn a_panic_is_reported_with_the_function_name() {
    // The descriptor installs the plugin's panic hook (as the host's first call does).
    registrations();
    let mut gpr = GprState::default();
    assert_eq!(call_inst("panics", &mut gpr), PANICKED);
    let calls = host_calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0].0, "report_panic");
    assert!(
        calls[0].1.starts_with("panics: boom in a callback"),
        "{}",
        calls[0].1
    );
}

#[test]
fn descriptor_header() {
    let d = private::descriptor(&INFO);
    // SAFETY: a leaked static of this crate.
    let d = unsafe { &*d };
    assert_eq!(d.magic, abi::PLUGIN_MAGIC);
    assert_eq!(d.abi_major, abi::ABI_MAJOR);
    assert_eq!(text(d.name), "registrations");
    assert_eq!(d.registration_count, 10);
}
