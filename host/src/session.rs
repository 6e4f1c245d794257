//! A session: the plugins of one run attached to one Vm, their init, their fini (exactly
//! once, however the run ends), and what happens when plugin code panics.

use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};

use qbdi_core::{
    AnalysisType, EntryAbi, InstAnalysis, InstrRuleCallback, MemoryAccessType, Vm, VmAction,
    VmError, VmEvent, VmRef,
};
use qbdi_sdk::abi::{
    PANICKED, RawAction, RawEventFn, RawFiniFn, RawInitFn, RawInstFn, RawKeyValue, RawRuleFn,
    StrRef, kind,
};

use crate::host_api::{CallCtx, Target, position_of, ref_target, run_rule};
use crate::log;
use crate::plugin::{Plugin, PluginError, Registration};

/// What the session keeps of each plugin once attached: for messages, `--all-maps` and
/// finalisation (which may run from a signal handler, so nothing here is built late).
struct Attached {
    name: String,
    path: String,
    fini: Vec<(String, RawFiniFn)>,
}

static ATTACHED: OnceLock<Vec<Attached>> = OnceLock::new();
static FINI_DONE: AtomicBool = AtomicBool::new(false);
/// The panic message the last trampoline reported (consumed by [`take_panic_message`]).
static PANIC_MESSAGE: Mutex<Option<String>> = Mutex::new(None);
/// Why the run was stopped by the host (a plugin panicked), if it was.
static FAILURE: Mutex<Option<String>> = Mutex::new(None);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Called by the host function table when a plugin reports a panic (the host names the
/// callback itself, from its registration).
pub(crate) fn panic_reported(message: String) {
    *lock(&PANIC_MESSAGE) = Some(message);
}

/// The message of the panic the last trampoline reported.
fn take_panic_message() -> String {
    lock(&PANIC_MESSAGE)
        .take()
        .unwrap_or_else(|| "(no message)".into())
}

fn plugin_name(plugin: usize) -> String {
    ATTACHED
        .get()
        .and_then(|a| a.get(plugin))
        .map(|a| a.name.clone())
        .unwrap_or_else(|| format!("#{plugin}"))
}

/// Turns what a plugin callback returned into the engine's action. A panic (or a value that
/// is no action) stops the run and is remembered for [`failure`].
pub(crate) fn action(raw: RawAction, plugin: usize, name: &str) -> VmAction {
    match raw {
        0 => VmAction::Continue,
        1 => VmAction::SkipInst,
        2 => VmAction::SkipPatch,
        3 => VmAction::BreakToVm,
        4 => VmAction::Stop,
        PANICKED => {
            fail(format!(
                "plugin '{}': callback '{name}' panicked: {}",
                plugin_name(plugin),
                take_panic_message()
            ));
            VmAction::Stop
        }
        other => {
            fail(format!(
                "plugin '{}': callback '{name}' returned {other}, which is no VmAction",
                plugin_name(plugin)
            ));
            VmAction::Stop
        }
    }
}

fn fail(report: String) {
    let mut f = lock(&FAILURE);
    if f.is_none() {
        *f = Some(report);
    }
}

/// Why the host stopped the run (a plugin panicked), if it did.
pub fn failure() -> Option<String> {
    lock(&FAILURE).clone()
}

/// Instruments every executable mapping but the host's own code and the plugins'.
pub(crate) fn instrument_all_but_own<V: Instrument>(v: &mut V) -> Result<(), VmError> {
    v.all_maps()?;
    let own = instrument_all_but_own::<V> as *const () as u64;
    let _ = v.remove_module_of(own);
    for plugin in ATTACHED.get().into_iter().flatten() {
        let _ = v.remove_module(&plugin.path);
    }
    Ok(())
}

/// What [`instrument_all_but_own`] needs of a Vm or a VmRef.
pub(crate) trait Instrument {
    /// `instrument_all_executable_maps`.
    fn all_maps(&mut self) -> Result<(), VmError>;
    /// `remove_instrumented_module_from_addr`.
    fn remove_module_of(&mut self, addr: u64) -> Result<(), VmError>;
    /// `remove_instrumented_module`.
    fn remove_module(&mut self, name: &str) -> Result<(), VmError>;
}

macro_rules! impl_instrument {
    ($t:ty) => {
        impl Instrument for $t {
            fn all_maps(&mut self) -> Result<(), VmError> {
                self.instrument_all_executable_maps()
            }
            fn remove_module_of(&mut self, addr: u64) -> Result<(), VmError> {
                self.remove_instrumented_module_from_addr(addr)
            }
            fn remove_module(&mut self, name: &str) -> Result<(), VmError> {
                self.remove_instrumented_module(name)
            }
        }
    };
}
impl_instrument!(Vm);
impl_instrument!(VmRef<'_>);

/// Registers the plugins (in load order) on `vm`, then runs each one's init with its
/// options. Call once per process.
pub fn attach(vm: &mut Vm, plugins: &[(Plugin, Vec<(String, String)>)]) -> Result<(), PluginError> {
    let _ = ATTACHED.set(
        plugins
            .iter()
            .map(|(p, _)| Attached {
                name: p.name.clone(),
                path: p.path.to_string_lossy().into_owned(),
                fini: p
                    .registrations
                    .iter()
                    .filter(|r| r.kind == kind::FINI)
                    // SAFETY: a FINI registration's callback is the SDK's RawFiniFn.
                    .map(|r| {
                        (r.name.clone(), unsafe {
                            std::mem::transmute::<*const c_void, RawFiniFn>(r.callback)
                        })
                    })
                    .collect(),
            })
            .collect(),
    );
    let _ = REGISTRATIONS.set(StaticRegistrations(
        plugins
            .iter()
            .enumerate()
            .flat_map(|(index, (p, _))| p.registrations.iter().map(move |r| (index, r.clone())))
            .collect(),
    ));
    for (index, (plugin, _)) in plugins.iter().enumerate() {
        for reg in &plugin.registrations {
            register(vm, index, reg).map_err(|e| PluginError::Registration {
                plugin: plugin.name.clone(),
                message: format!("cannot register {} '{}': {e}", reg.kind_name(), reg.name),
            })?;
        }
    }
    for (index, (plugin, options)) in plugins.iter().enumerate() {
        for reg in plugin.registrations.iter().filter(|r| r.kind == kind::INIT) {
            // SAFETY: an INIT registration's callback is the SDK's RawInitFn.
            let init = unsafe { std::mem::transmute::<*const c_void, RawInitFn>(reg.callback) };
            let pairs: Vec<RawKeyValue> = options
                .iter()
                .map(|(k, v)| RawKeyValue {
                    key: StrRef::new(k),
                    value: StrRef::new(v),
                })
                .collect();
            let mut c = CallCtx::new(Target::Vm(vm), index);
            let raw = c.raw();
            let status = init(&raw, pairs.as_ptr(), pairs.len());
            if status == PANICKED {
                return Err(PluginError::InitRefused {
                    plugin: plugin.name.clone(),
                    message: format!("its init '{}' panicked: {}", reg.name, take_panic_message()),
                });
            }
            if status != 0 {
                return Err(PluginError::InitRefused {
                    plugin: plugin.name.clone(),
                    message: c.error.take().unwrap_or_else(|| "(no reason given)".into()),
                });
            }
        }
    }
    Ok(())
}

/// Every plugin's registrations, in attach order (what `register_again` repeats).
struct StaticRegistrations(Vec<(usize, Registration)>);
// SAFETY: the registrations' pointers are the plugins' trampolines (code, never unloaded:
// RTLD_NODELETE), callable from any thread.
unsafe impl Sync for StaticRegistrations {}
// SAFETY: as for Sync.
unsafe impl Send for StaticRegistrations {}
static REGISTRATIONS: OnceLock<StaticRegistrations> = OnceLock::new();

/// Registers on `vm` (a thread's) what `attach` registered on the session's Vm, in the
/// same order (so callback ids are the same), then what the plugins' inits added.
pub(crate) fn register_again(vm: &mut Vm) -> Result<(), VmError> {
    for (index, reg) in REGISTRATIONS.get().map(|r| r.0.as_slice()).unwrap_or(&[]) {
        register(vm, *index, reg)?;
    }
    crate::host_api::replay_init(vm);
    Ok(())
}

fn register(vm: &mut Vm, plugin: usize, reg: &Registration) -> Result<(), VmError> {
    let name = reg.name.clone();
    let pos = position_of(reg.position);
    match reg.kind {
        kind::INST | kind::MEM_ACCESS => {
            // SAFETY: INST and MEM_ACCESS registrations carry the SDK's RawInstFn.
            let f = unsafe { std::mem::transmute::<*const c_void, RawInstFn>(reg.callback) };
            let cb = move |v: &mut VmRef<'_>, gpr: &mut _, fpr: &mut _| {
                let Some(_in) = enter_callback() else {
                    return VmAction::Continue;
                };
                let mut c = CallCtx::new(ref_target(v), plugin);
                let raw = c.raw();
                action(f(&raw, gpr, fpr), plugin, &name)
            };
            let id = if reg.kind == kind::MEM_ACCESS {
                let access = MemoryAccessType::from_bits_truncate(reg.flags as u8);
                vm.add_mem_access_cb(access, cb, reg.priority)?
            } else if !reg.code.is_empty() {
                let code = reg.code.clone();
                let priority = reg.priority;
                vm.add_instr_rule(
                    move |_v, a: &InstAnalysis| {
                        if iced_code_name(a.address, a.inst_size).as_deref() == Some(code.as_str())
                        {
                            vec![InstrRuleCallback::new(pos, cb.clone(), priority)]
                        } else {
                            Vec::new()
                        }
                    },
                    AnalysisType::INSTRUCTION,
                )?;
                return Ok(());
            } else if !reg.mnemonic.is_empty() {
                vm.add_mnemonic_cb(&reg.mnemonic, pos, cb, reg.priority)?
            } else {
                vm.add_code_cb(pos, cb, reg.priority)?
            };
            direct_entry(vm, id, reg, EntryAbi::Inst)?;
        }
        kind::EVENT => {
            // SAFETY: EVENT registrations carry the SDK's RawEventFn.
            let f = unsafe { std::mem::transmute::<*const c_void, RawEventFn>(reg.callback) };
            let id = vm.add_vm_event_cb(
                VmEvent::from_bits_retain(reg.flags),
                move |v, state, gpr, fpr| {
                    let Some(_in) = enter_callback() else {
                        return VmAction::Continue;
                    };
                    let mut c = CallCtx::new(ref_target(v), plugin);
                    let raw = c.raw();
                    action(f(&raw, state, gpr, fpr), plugin, &name)
                },
            )?;
            direct_entry(vm, id, reg, EntryAbi::Event)?;
        }
        kind::INSTR_RULE => {
            // SAFETY: INSTR_RULE registrations carry the SDK's RawRuleFn.
            let f = unsafe { std::mem::transmute::<*const c_void, RawRuleFn>(reg.callback) };
            vm.add_instr_rule(
                move |v, a| run_rule(v, a, plugin, &name, |raw, an, sink| f(raw, an, sink)),
                AnalysisType::from_bits_retain(reg.flags),
            )?;
        }
        kind::INIT | kind::FINI => {}
        other => {
            return Err(VmError::InvalidArgument(format!(
                "unknown registration kind {other} (plugin built with a newer SDK?)"
            )));
        }
    }
    Ok(())
}

/// Lets translated code call the plugin's trampoline directly when it is simple enough
/// (see `Vm::set_direct_entry`): the closure registered above is then only the general
/// path. `QBDI_NO_DIRECT=1` keeps every plugin callback on the general path (to compare);
/// `QBDI_NO_INLINE=1` calls the simplest ones instead of copying their code into translated
/// code (`Vm::set_call_inlining`).
fn direct_entry(vm: &mut Vm, id: u32, reg: &Registration, abi: EntryAbi) -> Result<(), VmError> {
    static NO_DIRECT: OnceLock<bool> = OnceLock::new();
    static NO_INLINE: OnceLock<bool> = OnceLock::new();
    let set = |name: &str| std::env::var_os(name).is_some_and(|v| v == "1");
    if *NO_DIRECT.get_or_init(|| set("QBDI_NO_DIRECT")) {
        return Ok(());
    }
    if *NO_INLINE.get_or_init(|| set("QBDI_NO_INLINE")) {
        vm.set_call_inlining(false);
    }
    // SAFETY: the trampoline follows the SDK's RawInstFn / RawEventFn convention, which is
    // EntryAbi's; it does what the closure above does once that closure has checked it may
    // run (the host's per-call context only serves a VmRef, which a direct entry does not
    // read); plugins are never unloaded.
    unsafe { vm.set_direct_entry(id, reg.callback as *const (), abi) }?;
    Ok(())
}

/// The iced-x86 `Code` name of the instruction at `address` (`"Call_rm64"`).
fn iced_code_name(address: u64, size: u32) -> Option<String> {
    // SAFETY: the engine is translating this instruction: its `size` bytes are mapped and
    // readable at `address`.
    let bytes = unsafe { std::slice::from_raw_parts(address as *const u8, size as usize) };
    let mut decoder =
        iced_x86::Decoder::with_ip(64, bytes, address, iced_x86::DecoderOptions::NONE);
    let inst = decoder.decode();
    (!inst.is_invalid()).then(|| format!("{:?}", inst.code()))
}

/// Set when finalisation starts: callbacks that start after it are skipped (the program's
/// other threads go on running, without callbacks, until the process ends).
static STOPPING: AtomicBool = AtomicBool::new(false);
/// One counter per thread that ever ran a callback: callbacks in progress on it.
static IN_CALLBACK: Mutex<Vec<&'static AtomicU32>> = Mutex::new(Vec::new());

thread_local! {
    /// This thread's counter in IN_CALLBACK (a `&'static`: no destructor to register).
    static MY_COUNT: &'static AtomicU32 = {
        let c: &'static AtomicU32 = Box::leak(Box::new(AtomicU32::new(0)));
        lock(&IN_CALLBACK).push(c);
        c
    };
}

/// A plugin callback in progress on this thread (see [`enter_callback`]).
pub(crate) struct InCallback(&'static AtomicU32);

impl Drop for InCallback {
    fn drop(&mut self) {
        if self.0.fetch_sub(1, Ordering::SeqCst) == 1 {
            // Signals that came during the callback are delivered now.
            crate::signals::run_deferred();
        }
    }
}

/// Whether a plugin callback is in progress on this thread (a signal handler that
/// interrupts it must not run plugin code again: the plugin may hold its locks).
pub(crate) fn in_callback() -> bool {
    MY_COUNT.with(|c| c.load(Ordering::Relaxed) != 0)
}

/// Marks a plugin callback in progress on this thread, or `None` once finalisation has
/// started: the caller then skips the plugin (and the guest goes on).
pub(crate) fn enter_callback() -> Option<InCallback> {
    let count = MY_COUNT.with(|c| *c);
    count.fetch_add(1, Ordering::SeqCst);
    let guard = InCallback(count);
    (!STOPPING.load(Ordering::SeqCst)).then_some(guard)
}

/// Stops new callbacks and waits (a bounded time) for those in progress on other threads.
fn stop_callbacks() {
    STOPPING.store(true, Ordering::SeqCst);
    // A callback of this thread may be what is finalising (a plugin calling exit).
    let mine = MY_COUNT.with(|c| std::ptr::from_ref(*c));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        let busy = lock(&IN_CALLBACK)
            .iter()
            .any(|c| !std::ptr::eq(*c, mine) && c.load(Ordering::SeqCst) != 0);
        if !busy || std::time::Instant::now() > deadline {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// What runs after the plugins' fini: the Python tools' (their `atexit` handlers), set by
/// the pyqbdi preload.
static EXTRA_FINI: OnceLock<fn()> = OnceLock::new();

/// Sets what [`fini_all`] runs after the plugins' fini (once per process).
pub fn set_extra_fini(f: fn()) {
    let _ = EXTRA_FINI.set(f);
}

/// Marks finalisation done without running any fini (the run never started).
pub fn skip_fini() {
    FINI_DONE.store(true, Ordering::SeqCst);
}

/// Runs every plugin's fini, once per process whatever calls it (the end of main, exit(),
/// _exit(), a fatal signal). A fini that panics is reported; the others still run.
pub fn fini_all() {
    if FINI_DONE.swap(true, Ordering::SeqCst) {
        return;
    }
    stop_callbacks();
    for (index, entry) in ATTACHED.get().into_iter().flatten().enumerate() {
        for (name, fini) in &entry.fini {
            let mut c = CallCtx::new(Target::None, index);
            let raw = c.raw();
            if fini(&raw) == PANICKED {
                log::line(&format!(
                    "plugin '{}': fini '{name}' panicked: {}",
                    entry.name,
                    take_panic_message()
                ));
            }
        }
    }
    if let Some(f) = EXTRA_FINI.get() {
        f();
    }
}
