//! `pyqbdi.VM`: PyQBDI's VM class over a `qbdi_core::Vm`.
//!
//! The VM object owns its `Vm` (`pyqbdi.VM()`), or wraps the Vm of a `qbdi run` session
//! (whole-program mode, see `preload.rs`). Python callbacks are closures registered on the
//! Vm; each holds the Python callable and its `data`, and receives the same VM object, as
//! in PyQBDI. While a callback runs, the VM object records the engine's `VmRef` and the
//! callback's registers ([`CbCtx`]): every method then goes through that `VmRef` (the
//! instrumentation methods, analyses, memory accesses) or those registers (`getGPRState`),
//! never through the `Vm`, which `run` holds mutably. Methods a `VmRef` does not have
//! (`run`, `call`, `setOptions`, `precacheBasicBlock`) raise in a callback.
//!
//! The GIL: `run` and `call` keep it for the whole run (callbacks are Python code and run
//! on this thread), so a callback only checks nothing and calls. An exception raised by a
//! callback stops the run (`STOP`) and is raised again by `run`/`call` once the Vm is back.

use std::cell::{Cell, OnceCell, RefCell, UnsafeCell};
use std::ptr;

use pyo3::exceptions::{PyRuntimeError, PyTypeError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyInt, PyList};
use pyo3::{PyTraverseError, PyVisit};
use qbdi_core::{
    AnalysisType, FprState, GprState, InstPosition, InstrRuleCallback, MemoryAccessType, Rword, Vm,
    VmAction, VmError, VmEvent, VmRef,
};

use crate::enums::{self, Options, flag_value};
use crate::state::{FPRState, GPRState, VMState};
use crate::types::{InstAnalysis, InstrRuleDataCBK, MemoryAccess};

/// The callback running now: the engine's view of the Vm and its registers (null pointers
/// when no callback runs).
#[derive(Clone, Copy)]
struct CbCtx {
    vmref: *mut VmRef<'static>,
    gpr: *mut GprState,
    fpr: *mut FprState,
}

impl CbCtx {
    const NONE: CbCtx = CbCtx {
        vmref: ptr::null_mut(),
        gpr: ptr::null_mut(),
        fpr: ptr::null_mut(),
    };
}

/// Who owns the Vm.
enum Slot {
    Owned(UnsafeCell<Box<Vm>>),
    /// A session's Vm (`qbdi run`, `python -m pyqbdipreload`): lives for the process.
    Session(*mut Vm),
}

/// The id QBDI returns when a registration fails.
const INVALID_EVENTID: u32 = 0xffff_ffff;

/// A QBDI virtual machine (PyQBDI's `pyqbdi.VM`).
#[pyclass(unsendable, module = "pyqbdi", name = "VM")]
pub struct VM {
    slot: Slot,
    ctx: Cell<CbCtx>,
    /// A run is in progress (the `Vm` is mutably borrowed by it).
    running: Cell<bool>,
    /// The first exception a callback raised during the current run.
    pending: RefCell<Option<PyErr>>,
    /// The live GPRState and FPRState views handed to callbacks and by getGPRState.
    views: OnceCell<(Py<GPRState>, Py<FPRState>)>,
    /// A VMState object reused for event callbacks while nothing else holds it.
    vmstate: RefCell<Option<Py<VMState>>>,
}

enum Target<'a> {
    Vm(&'a mut Vm),
    Ref(&'a mut VmRef<'static>),
}

/// Calls the same method on whichever of `Vm` and `VmRef` the VM currently stands for.
macro_rules! dispatch {
    ($self:expr, |$v:ident| $e:expr) => {
        match $self.target()? {
            Target::Vm($v) => $e,
            Target::Ref($v) => $e,
        }
    };
}

impl VM {
    /// A VM object over a session's Vm.
    ///
    /// # Safety
    /// `vm` must stay valid for the rest of the process and be used only through this
    /// object (on this thread) from now on.
    pub unsafe fn session(vm: *mut Vm) -> VM {
        VM::with_slot(Slot::Session(vm))
    }

    fn with_slot(slot: Slot) -> VM {
        VM {
            slot,
            ctx: Cell::new(CbCtx::NONE),
            running: Cell::new(false),
            pending: RefCell::new(None),
            views: OnceCell::new(),
            vmstate: RefCell::new(None),
        }
    }

    fn vm_ptr(&self) -> *mut Vm {
        match &self.slot {
            // SAFETY: the box lives as long as self; only a pointer is made here.
            Slot::Owned(b) => unsafe { &mut **b.get() as *mut Vm },
            Slot::Session(p) => *p,
        }
    }

    /// The Vm or the running callback's VmRef.
    fn target(&self) -> PyResult<Target<'_>> {
        let c = self.ctx.get();
        if !c.vmref.is_null() {
            // SAFETY: set by the running callback from the engine's `&mut VmRef`, which it
            // does not use while Python code runs; cleared before the callback returns.
            return Ok(Target::Ref(unsafe { &mut *c.vmref }));
        }
        if self.running.get() {
            return Err(PyRuntimeError::new_err(
                "the VM is running: use it from its callbacks (the vm argument), or after run() returns",
            ));
        }
        // SAFETY: no run is in progress, so nothing else borrows the Vm; the borrow ends
        // before any Python code runs (the methods below run none while they hold it).
        Ok(Target::Vm(unsafe { &mut *self.vm_ptr() }))
    }

    /// The Vm itself, for what only `Vm` can do (not from callbacks). Callers turn it into
    /// a `&mut Vm` only for the length of a Vm call that runs no Python code (or, in
    /// `running`, whose Python callbacks only reach the Vm through the `VmRef`).
    fn owned_vm(&self, what: &str) -> PyResult<*mut Vm> {
        if self.running.get() {
            return Err(PyRuntimeError::new_err(format!(
                "{what} cannot be used while the VM runs (from a callback): QBDI's VM is not re-entrant"
            )));
        }
        Ok(self.vm_ptr())
    }

    /// The registers getGPRState views now.
    pub fn gpr_ptr(&self) -> PyResult<*mut GprState> {
        let c = self.ctx.get();
        if !c.gpr.is_null() {
            return Ok(c.gpr);
        }
        let vm = self.owned_vm("the VM's GPRState")?;
        // SAFETY: no run is in progress (owned_vm); only a field pointer is made.
        Ok(unsafe { (*vm).gpr_state_mut() as *mut GprState })
    }

    /// The registers getFPRState views now.
    pub fn fpr_ptr(&self) -> PyResult<*mut FprState> {
        let c = self.ctx.get();
        if !c.fpr.is_null() {
            return Ok(c.fpr);
        }
        let vm = self.owned_vm("the VM's FPRState")?;
        // SAFETY: as in gpr_ptr.
        Ok(unsafe { (*vm).fpr_state_mut() as *mut FprState })
    }

    fn views(&self, slf: &Bound<'_, VM>) -> PyResult<&(Py<GPRState>, Py<FPRState>)> {
        if self.views.get().is_none() {
            let py = slf.py();
            let g = Py::new(py, GPRState::live(slf.clone().unbind()))?;
            let f = Py::new(py, FPRState::live(slf.clone().unbind()))?;
            let _ = self.views.set((g, f));
        }
        Ok(self.views.get().expect("just set"))
    }

    fn enter(&self, ctx: CbCtx) -> CbCtx {
        self.ctx.replace(ctx)
    }

    fn leave(&self, saved: CbCtx) {
        self.ctx.set(saved);
    }

    /// Turns what a Python callback returned into an action; an exception or a value that
    /// is no action is kept for `run` to raise, and stops the run.
    fn action(&self, res: PyResult<Bound<'_, PyAny>>) -> VmAction {
        let err = match res {
            Ok(ob) => match action_of(&ob) {
                Some(a) => return a,
                None => PyTypeError::new_err(format!(
                    "a pyqbdi callback must return a VMAction (pyqbdi.CONTINUE, ...), not {}",
                    ob.repr().map(|r| r.to_string()).unwrap_or_default()
                )),
            },
            Err(e) => e,
        };
        let mut p = self.pending.borrow_mut();
        if p.is_none() {
            *p = Some(err);
        }
        VmAction::Stop
    }

    /// Runs `f` as a run of the Vm: marks the VM running, and afterwards raises what a
    /// callback raised.
    fn running<R>(&self, f: impl FnOnce(&mut Vm) -> R) -> PyResult<R> {
        let vm = self.owned_vm("run() and call()")?;
        // SAFETY: no run is in progress; during this one, callbacks reach the Vm only
        // through the VmRef the engine hands them (`target` checks `running`).
        let vm = unsafe { &mut *vm };
        self.running.set(true);
        struct Reset<'a>(&'a Cell<bool>);
        impl Drop for Reset<'_> {
            fn drop(&mut self) {
                self.0.set(false);
            }
        }
        let reset = Reset(&self.running);
        let r = f(vm);
        drop(reset);
        if let Some(e) = self.pending.borrow_mut().take() {
            return Err(e);
        }
        Ok(r)
    }

    /// An instruction callback calling `cb(vm, gpr, fpr, data)`.
    fn inst_closure(
        slf: &Bound<'_, VM>,
        cb: Py<PyAny>,
        data: Py<PyAny>,
    ) -> PyResult<impl FnMut(&mut VmRef<'_>, &mut GprState, &mut FprState) -> VmAction + 'static>
    {
        let this_ref = slf.borrow();
        let (g, f) = this_ref.views(slf)?;
        let (g, f) = (g.clone_ref(slf.py()), f.clone_ref(slf.py()));
        let this: *const VM = &*this_ref;
        let obj = slf.as_ptr();
        Ok(
            move |vr: &mut VmRef<'_>, gpr: &mut GprState, fpr: &mut FprState| {
                // SAFETY: callbacks run inside `run`/`call` on the thread that called them,
                // which holds the GIL for the whole run (see the module doc).
                let py = unsafe { Python::assume_attached() };
                // SAFETY: the VM object owns (or, for a session, outlives) the Vm that holds
                // this closure, so it is alive while the closure runs.
                let this = unsafe { &*this };
                let saved = this.enter(CbCtx {
                    vmref: erase(vr),
                    gpr,
                    fpr,
                });
                // SAFETY: `obj` is the VM object, alive (above); borrowed for the call.
                let vm_obj = unsafe { Borrowed::from_ptr(py, obj) };
                let res = cb
                    .bind(py)
                    .call1((vm_obj, g.bind(py), f.bind(py), data.bind(py)));
                this.leave(saved);
                this.action(res)
            },
        )
    }

    /// A VM event callback calling `cb(vm, state, gpr, fpr, data)`.
    fn event_closure(
        slf: &Bound<'_, VM>,
        cb: Py<PyAny>,
        data: Py<PyAny>,
    ) -> PyResult<
        impl FnMut(&mut VmRef<'_>, &qbdi_core::VmState, &mut GprState, &mut FprState) -> VmAction
        + 'static,
    > {
        let this_ref = slf.borrow();
        let (g, f) = this_ref.views(slf)?;
        let (g, f) = (g.clone_ref(slf.py()), f.clone_ref(slf.py()));
        let this: *const VM = &*this_ref;
        let obj = slf.as_ptr();
        Ok(
            move |vr: &mut VmRef<'_>,
                  state: &qbdi_core::VmState,
                  gpr: &mut GprState,
                  fpr: &mut FprState| {
                // SAFETY: as in `inst_closure`.
                let py = unsafe { Python::assume_attached() };
                // SAFETY: as in `inst_closure`.
                let this = unsafe { &*this };
                let st = match this.vmstate_object(py, state) {
                    Ok(s) => s,
                    Err(e) => return this.action(Err(e)),
                };
                let saved = this.enter(CbCtx {
                    vmref: erase(vr),
                    gpr,
                    fpr,
                });
                // SAFETY: as in `inst_closure`.
                let vm_obj = unsafe { Borrowed::from_ptr(py, obj) };
                let res =
                    cb.bind(py)
                        .call1((vm_obj, st.bind(py), g.bind(py), f.bind(py), data.bind(py)));
                this.leave(saved);
                this.action(res)
            },
        )
    }

    /// The VMState object for an event: the cached one if no one else holds it (a script
    /// that keeps it gets a fresh one next time), filled from `state`.
    fn vmstate_object(&self, py: Python<'_>, state: &qbdi_core::VmState) -> PyResult<Py<VMState>> {
        let mut cache = self.vmstate.borrow_mut();
        if let Some(s) = cache.as_ref()
            // SAFETY: reads the reference count of a live object.
            && unsafe { ffi::Py_REFCNT(s.as_ptr()) } == 1
        {
            s.bind(py).borrow_mut().set_from(state);
            return Ok(s.clone_ref(py));
        }
        let mut v = VMState::default();
        v.set_from(state);
        let s = Py::new(py, v)?;
        *cache = Some(s.clone_ref(py));
        Ok(s)
    }

    /// An instrumentation rule calling `cb(vm, analysis, data)`, which returns a list of
    /// InstrRuleDataCBK.
    fn rule_closure(
        slf: &Bound<'_, VM>,
        cb: Py<PyAny>,
        analysis: AnalysisType,
        data: Py<PyAny>,
    ) -> PyResult<
        impl FnMut(&mut VmRef<'_>, &qbdi_core::InstAnalysis) -> Vec<InstrRuleCallback> + 'static,
    > {
        let this_ref = slf.borrow();
        let this: *const VM = &*this_ref;
        let obj = slf.as_ptr();
        let vm_obj_owned = slf.clone().unbind();
        Ok(
            move |vr: &mut VmRef<'_>, a: &qbdi_core::InstAnalysis| -> Vec<InstrRuleCallback> {
                // SAFETY: as in `inst_closure`.
                let py = unsafe { Python::assume_attached() };
                // SAFETY: as in `inst_closure`.
                let this = unsafe { &*this };
                let saved = this.enter(CbCtx {
                    vmref: erase(vr),
                    gpr: ptr::null_mut(),
                    fpr: ptr::null_mut(),
                });
                // SAFETY: as in `inst_closure`.
                let vm_obj = unsafe { Borrowed::from_ptr(py, obj) };
                let res = (|| -> PyResult<Vec<InstrRuleCallback>> {
                    let ana = Py::new(py, InstAnalysis::from_core(py, a, analysis)?)?;
                    let out = cb.bind(py).call1((vm_obj, ana, data.bind(py)))?;
                    let mut cbs = Vec::new();
                    if out.is_none() {
                        return Ok(cbs);
                    }
                    for item in out.try_iter()? {
                        let item = item?;
                        let d = item.cast::<InstrRuleDataCBK>()?.borrow();
                        let pos = position(d.position)?;
                        let closure = VM::inst_closure(
                            vm_obj_owned.bind(py),
                            d.cbk.clone_ref(py),
                            d.data.clone_ref(py),
                        )?;
                        cbs.push(InstrRuleCallback::new(pos, closure, d.priority));
                    }
                    Ok(cbs)
                })();
                this.leave(saved);
                match res {
                    Ok(c) => c,
                    Err(e) => {
                        let mut p = this.pending.borrow_mut();
                        if p.is_none() {
                            *p = Some(e);
                        }
                        Vec::new()
                    }
                }
            },
        )
    }
}

/// A raw pointer to the engine's `VmRef`, its lifetime erased (valid while the callback
/// that received it runs; see [`CbCtx`]).
fn erase(vr: &mut VmRef<'_>) -> *mut VmRef<'static> {
    (vr as *mut VmRef<'_>).cast()
}

/// The action a callback's return value stands for (None counts as CONTINUE).
fn action_of(ob: &Bound<'_, PyAny>) -> Option<VmAction> {
    let v = if let Ok(a) = ob.cast::<enums::VMAction>() {
        a.get().v
    } else if ob.is_none() {
        0
    } else if let Ok(i) = ob.cast::<PyInt>() {
        i.extract::<u32>().ok()?
    } else {
        return None;
    };
    Some(match v {
        0 => VmAction::Continue,
        1 => VmAction::SkipInst,
        2 => VmAction::SkipPatch,
        3 => VmAction::BreakToVm,
        4 => VmAction::Stop,
        _ => return None,
    })
}

fn position(v: u32) -> PyResult<InstPosition> {
    match v {
        0 => Ok(InstPosition::PreInst),
        1 => Ok(InstPosition::PostInst),
        _ => Err(PyTypeError::new_err(format!(
            "{v} is no InstPosition (PREINST or POSTINST)"
        ))),
    }
}

fn position_arg(ob: &Bound<'_, PyAny>) -> PyResult<InstPosition> {
    position(flag_value(ob)?)
}

fn access_arg(ob: &Bound<'_, PyAny>) -> PyResult<MemoryAccessType> {
    Ok(MemoryAccessType::from_bits_truncate(flag_value(ob)? as u8))
}

fn analysis_arg(ob: Option<&Bound<'_, PyAny>>, default: u32) -> PyResult<AnalysisType> {
    let v = match ob {
        Some(o) => flag_value(o)?,
        None => default,
    };
    Ok(AnalysisType::from_bits_truncate(v) | AnalysisType::INSTRUCTION)
}

fn priority_arg(ob: Option<&Bound<'_, PyAny>>) -> PyResult<i32> {
    Ok(match ob {
        Some(o) => flag_value(o)? as i32,
        None => 0,
    })
}

/// A registration's id, or QBDI's INVALID_EVENTID with a warning saying why (PyQBDI
/// returns the id of registrations that can never match; this engine refuses them).
fn id_or_invalid(py: Python<'_>, r: Result<u32, VmError>) -> PyResult<u32> {
    match r {
        Ok(id) => Ok(id),
        Err(e) => {
            let msg = std::ffi::CString::new(format!("pyqbdi: registration refused: {e}"))
                .unwrap_or_default();
            PyErr::warn(
                py,
                &py.get_type::<pyo3::exceptions::PyRuntimeWarning>(),
                &msg,
                1,
            )?;
            Ok(INVALID_EVENTID)
        }
    }
}

fn vm_error(e: VmError) -> PyErr {
    PyRuntimeError::new_err(e.to_string())
}

#[allow(non_snake_case)]
#[pymethods]
impl VM {
    #[new]
    #[pyo3(signature = (cpu = "", mattrs = Vec::new(), options = None))]
    fn py_new(
        cpu: &str,
        mattrs: Vec<String>,
        options: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let _ = (cpu, mattrs); // one CPU model: the host's
        let opts = match options {
            Some(o) => flag_value(o)?,
            None => 0,
        };
        let vm = Vm::with_options(qbdi_core::Options::from_bits_truncate(opts));
        Ok(VM::with_slot(Slot::Owned(UnsafeCell::new(Box::new(vm)))))
    }

    // ---- state -----------------------------------------------------------------------

    /// The VM's general purpose registers, live (in a callback: the callback's).
    fn getGPRState(slf: &Bound<'_, Self>) -> PyResult<Py<GPRState>> {
        let this = slf.borrow();
        Ok(this.views(slf)?.0.clone_ref(slf.py()))
    }

    /// The VM's FP and vector registers, live (in a callback: the callback's).
    fn getFPRState(slf: &Bound<'_, Self>) -> PyResult<Py<FPRState>> {
        let this = slf.borrow();
        Ok(this.views(slf)?.1.clone_ref(slf.py()))
    }

    /// Copies `gprState` into the VM's registers.
    fn setGPRState(&self, py: Python<'_>, gprState: PyRef<'_, GPRState>) -> PyResult<()> {
        let g = gprState.store.get(py)?;
        let p = self.gpr_ptr()?;
        // SAFETY: gpr_ptr's pointer is valid and unused by anything else right now.
        unsafe { *p = g };
        Ok(())
    }

    /// Copies `fprState` into the VM's registers.
    fn setFPRState(&self, py: Python<'_>, fprState: PyRef<'_, FPRState>) -> PyResult<()> {
        let f = fprState.store.get(py)?;
        let p = self.fpr_ptr()?;
        // SAFETY: as in setGPRState.
        unsafe { *p = f };
        Ok(())
    }

    /// The guest's errno as the last run left it.
    fn getErrno(&self) -> PyResult<i32> {
        Ok(
            // SAFETY: no run is in progress (owned_vm); the borrow ends with this call.
            unsafe { &mut *self.owned_vm("getErrno")? }.errno(),
        )
    }

    /// The errno the guest sees when the next run starts.
    fn setErrno(&self, errno: i32) -> PyResult<()> {
        // SAFETY: no run is in progress (owned_vm); the borrow ends with this call.
        unsafe { &mut *self.owned_vm("setErrno")? }.set_errno(errno);
        Ok(())
    }

    /// The VM's options.
    #[getter]
    fn options(&self) -> PyResult<Options> {
        self.getOptions()
    }

    #[setter]
    fn set_options(&self, options: &Bound<'_, PyAny>) -> PyResult<()> {
        self.setOptions(options)
    }

    /// The VM's options.
    fn getOptions(&self) -> PyResult<Options> {
        Ok(Options::new(
            // SAFETY: no run is in progress (owned_vm); the borrow ends with this call.
            unsafe { &mut *self.owned_vm("getOptions")? }
                .options()
                .bits(),
        ))
    }

    /// Changes the options (clears the cache if they change).
    fn setOptions(&self, options: &Bound<'_, PyAny>) -> PyResult<()> {
        let o = qbdi_core::Options::from_bits_truncate(flag_value(options)?);
        // SAFETY: no run is in progress (owned_vm); the borrow ends with this call.
        unsafe { &mut *self.owned_vm("setOptions")? }.set_options(o);
        Ok(())
    }

    // ---- ranges ----------------------------------------------------------------------

    /// Instruments `[start, end)`.
    fn addInstrumentedRange(&self, start: Rword, end: Rword) -> PyResult<()> {
        let _ = dispatch!(self, |v| v.add_instrumented_range(start, end));
        Ok(())
    }

    /// Instruments the executable maps of a module; False if none is mapped.
    fn addInstrumentedModule(&self, name: &str) -> PyResult<bool> {
        Ok(dispatch!(self, |v| v.add_instrumented_module(name)).is_ok())
    }

    /// Instruments the module (or anonymous executable map) containing `addr`.
    fn addInstrumentedModuleFromAddr(&self, addr: Rword) -> PyResult<bool> {
        Ok(dispatch!(self, |v| v.add_instrumented_module_from_addr(addr)).is_ok())
    }

    /// Instruments every executable map.
    fn instrumentAllExecutableMaps(&self) -> PyResult<bool> {
        Ok(dispatch!(self, |v| v.instrument_all_executable_maps()).is_ok())
    }

    /// Stops instrumenting `[start, end)`.
    fn removeInstrumentedRange(&self, start: Rword, end: Rword) -> PyResult<()> {
        let _ = dispatch!(self, |v| v.remove_instrumented_range(start, end));
        Ok(())
    }

    /// Stops instrumenting a module.
    fn removeInstrumentedModule(&self, name: &str) -> PyResult<bool> {
        Ok(dispatch!(self, |v| v.remove_instrumented_module(name)).is_ok())
    }

    /// Stops instrumenting the module containing `addr`.
    fn removeInstrumentedModuleFromAddr(&self, addr: Rword) -> PyResult<bool> {
        Ok(dispatch!(self, |v| v.remove_instrumented_module_from_addr(addr)).is_ok())
    }

    /// Stops instrumenting anything.
    fn removeAllInstrumentedRanges(&self) -> PyResult<()> {
        dispatch!(self, |v| v.remove_all_instrumented_ranges());
        Ok(())
    }

    // ---- running ---------------------------------------------------------------------

    /// Runs from `start` until the guest reaches `stop`, from the current state. False if
    /// `start` is not instrumented.
    fn run(&self, start: Rword, stop: Rword) -> PyResult<bool> {
        match self.running(|vm| vm.run(start, stop))? {
            Ok(()) => Ok(true),
            Err(VmError::NotInstrumented(_)) => Ok(false),
            Err(e) => Err(vm_error(e)),
        }
    }

    /// Calls `function(*args)` (SysV) on the current state and stack; returns
    /// `(success, return value)`.
    #[pyo3(signature = (function, args = Vec::new()))]
    fn call(&self, function: Rword, args: Vec<Rword>) -> PyResult<(bool, Rword)> {
        match self.running(|vm| vm.call(function, &args))? {
            Ok(r) => Ok((true, r)),
            Err(VmError::NotInstrumented(_) | VmError::NoStack) => Ok((false, 0)),
            Err(e) => Err(vm_error(e)),
        }
    }

    /// Translates the block at `pc` now; False if it was already translated.
    fn precacheBasicBlock(&self, pc: Rword) -> PyResult<bool> {
        let vm = self.owned_vm("precacheBasicBlock")?;
        // SAFETY: no run is in progress (owned_vm); the borrow ends with this call.
        Ok(unsafe { &mut *vm }
            .precache_basic_block(pc)
            .unwrap_or(false))
    }

    /// Drops the translations of `[start, end)`.
    fn clearCache(&self, start: Rword, end: Rword) -> PyResult<()> {
        dispatch!(self, |v| v.clear_cache(start, end));
        Ok(())
    }

    /// Drops every translation.
    fn clearAllCache(&self) -> PyResult<()> {
        dispatch!(self, |v| v.clear_all_cache());
        Ok(())
    }

    /// QBDI's number of ExecBlocks; this engine has one code cache (1).
    fn getNbExecBlock(&self) -> usize {
        1
    }

    /// Shrinks the cache to `nb` blocks: here, `0` clears it, other values keep it.
    fn reduceCacheTo(&self, nb: usize) -> PyResult<()> {
        if nb == 0 {
            self.clearAllCache()?;
        }
        Ok(())
    }

    // ---- callbacks -------------------------------------------------------------------

    /// Calls `cbk(vm, gpr, fpr, data)` on every instruction; returns its id.
    #[pyo3(signature = (pos, cbk, data = None, priority = None))]
    fn addCodeCB(
        slf: &Bound<'_, Self>,
        pos: &Bound<'_, PyAny>,
        cbk: Py<PyAny>,
        data: Option<Py<PyAny>>,
        priority: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<u32> {
        let py = slf.py();
        let (pos, prio) = (position_arg(pos)?, priority_arg(priority)?);
        let cb = VM::inst_closure(slf, cbk, data.unwrap_or_else(|| py.None()))?;
        let this = slf.borrow();
        id_or_invalid(py, dispatch!(this, |v| v.add_code_cb(pos, cb, prio)))
    }

    /// Calls `cbk(vm, gpr, fpr, data)` on the instruction at `address`.
    #[pyo3(signature = (address, pos, cbk, data = None, priority = None))]
    fn addCodeAddrCB(
        slf: &Bound<'_, Self>,
        address: Rword,
        pos: &Bound<'_, PyAny>,
        cbk: Py<PyAny>,
        data: Option<Py<PyAny>>,
        priority: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<u32> {
        let py = slf.py();
        let (pos, prio) = (position_arg(pos)?, priority_arg(priority)?);
        let cb = VM::inst_closure(slf, cbk, data.unwrap_or_else(|| py.None()))?;
        let this = slf.borrow();
        id_or_invalid(
            py,
            dispatch!(this, |v| v.add_code_addr_cb(address, pos, cb, prio)),
        )
    }

    /// Calls `cbk(vm, gpr, fpr, data)` on the instructions of `[start, end)`.
    #[pyo3(signature = (start, end, pos, cbk, data = None, priority = None))]
    fn addCodeRangeCB(
        slf: &Bound<'_, Self>,
        start: Rword,
        end: Rword,
        pos: &Bound<'_, PyAny>,
        cbk: Py<PyAny>,
        data: Option<Py<PyAny>>,
        priority: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<u32> {
        let py = slf.py();
        let (pos, prio) = (position_arg(pos)?, priority_arg(priority)?);
        let cb = VM::inst_closure(slf, cbk, data.unwrap_or_else(|| py.None()))?;
        let this = slf.borrow();
        id_or_invalid(
            py,
            dispatch!(this, |v| v.add_code_range_cb(start, end, pos, cb, prio)),
        )
    }

    /// Calls `cbk(vm, gpr, fpr, data)` on instructions whose mnemonic matches the glob
    /// `mnemonic` (iced-x86's mnemonics, case-insensitive: `"CALL*"`, `"j*"`).
    #[pyo3(signature = (mnemonic, pos, cbk, data = None, priority = None))]
    fn addMnemonicCB(
        slf: &Bound<'_, Self>,
        mnemonic: &str,
        pos: &Bound<'_, PyAny>,
        cbk: Py<PyAny>,
        data: Option<Py<PyAny>>,
        priority: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<u32> {
        let py = slf.py();
        let (pos, prio) = (position_arg(pos)?, priority_arg(priority)?);
        let cb = VM::inst_closure(slf, cbk, data.unwrap_or_else(|| py.None()))?;
        let this = slf.borrow();
        id_or_invalid(
            py,
            dispatch!(this, |v| v.add_mnemonic_cb(mnemonic, pos, cb, prio)),
        )
    }

    /// Calls `cbk(vm, state, gpr, fpr, data)` on the events of `mask`.
    #[pyo3(signature = (mask, cbk, data = None))]
    fn addVMEventCB(
        slf: &Bound<'_, Self>,
        mask: &Bound<'_, PyAny>,
        cbk: Py<PyAny>,
        data: Option<Py<PyAny>>,
    ) -> PyResult<u32> {
        let py = slf.py();
        let events = VmEvent::from_bits_truncate(flag_value(mask)?);
        let cb = VM::event_closure(slf, cbk, data.unwrap_or_else(|| py.None()))?;
        let this = slf.borrow();
        id_or_invalid(py, dispatch!(this, |v| v.add_vm_event_cb(events, cb)))
    }

    /// Calls `cbk(vm, gpr, fpr, data)` on instructions accessing memory as `type` says.
    #[pyo3(signature = (r#type, cbk, data = None, priority = None))]
    fn addMemAccessCB(
        slf: &Bound<'_, Self>,
        r#type: &Bound<'_, PyAny>,
        cbk: Py<PyAny>,
        data: Option<Py<PyAny>>,
        priority: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<u32> {
        let py = slf.py();
        let (access, prio) = (access_arg(r#type)?, priority_arg(priority)?);
        let cb = VM::inst_closure(slf, cbk, data.unwrap_or_else(|| py.None()))?;
        let this = slf.borrow();
        id_or_invalid(
            py,
            dispatch!(this, |v| v.add_mem_access_cb(access, cb, prio)),
        )
    }

    /// Calls `cbk(vm, gpr, fpr, data)` on accesses touching `address`.
    #[pyo3(signature = (address, r#type, cbk, data = None))]
    fn addMemAddrCB(
        slf: &Bound<'_, Self>,
        address: Rword,
        r#type: &Bound<'_, PyAny>,
        cbk: Py<PyAny>,
        data: Option<Py<PyAny>>,
    ) -> PyResult<u32> {
        let py = slf.py();
        let access = access_arg(r#type)?;
        let cb = VM::inst_closure(slf, cbk, data.unwrap_or_else(|| py.None()))?;
        let this = slf.borrow();
        id_or_invalid(
            py,
            dispatch!(this, |v| v.add_mem_addr_cb(address, access, cb)),
        )
    }

    /// Calls `cbk(vm, gpr, fpr, data)` on accesses overlapping `[start, end)`.
    #[pyo3(signature = (start, end, r#type, cbk, data = None))]
    fn addMemRangeCB(
        slf: &Bound<'_, Self>,
        start: Rword,
        end: Rword,
        r#type: &Bound<'_, PyAny>,
        cbk: Py<PyAny>,
        data: Option<Py<PyAny>>,
    ) -> PyResult<u32> {
        let py = slf.py();
        let access = access_arg(r#type)?;
        let cb = VM::inst_closure(slf, cbk, data.unwrap_or_else(|| py.None()))?;
        let this = slf.borrow();
        id_or_invalid(
            py,
            dispatch!(this, |v| v.add_mem_range_cb(start, end, access, cb)),
        )
    }

    /// At translation, calls `cbk(vm, analysis, data)` for every instruction; it returns
    /// a list of InstrRuleDataCBK to attach.
    #[pyo3(signature = (cbk, r#type, data = None))]
    fn addInstrRule(
        slf: &Bound<'_, Self>,
        cbk: Py<PyAny>,
        r#type: &Bound<'_, PyAny>,
        data: Option<Py<PyAny>>,
    ) -> PyResult<u32> {
        let py = slf.py();
        let analysis = analysis_arg(Some(r#type), 1)?;
        let rule = VM::rule_closure(slf, cbk, analysis, data.unwrap_or_else(|| py.None()))?;
        let this = slf.borrow();
        id_or_invalid(py, dispatch!(this, |v| v.add_instr_rule(rule, analysis)))
    }

    /// `addInstrRule` for the instructions of `[start, end)` only.
    #[pyo3(signature = (start, end, cbk, r#type, data = None))]
    fn addInstrRuleRange(
        slf: &Bound<'_, Self>,
        start: Rword,
        end: Rword,
        cbk: Py<PyAny>,
        r#type: &Bound<'_, PyAny>,
        data: Option<Py<PyAny>>,
    ) -> PyResult<u32> {
        let py = slf.py();
        let analysis = analysis_arg(Some(r#type), 1)?;
        let rule = VM::rule_closure(slf, cbk, analysis, data.unwrap_or_else(|| py.None()))?;
        let this = slf.borrow();
        id_or_invalid(
            py,
            dispatch!(this, |v| v.add_instr_rule_range(start, end, rule, analysis)),
        )
    }

    /// Removes one callback (unknown ids are ignored, as in QBDI).
    fn deleteInstrumentation(&self, id: &Bound<'_, PyAny>) -> PyResult<()> {
        let id = flag_value(id)?;
        let _ = dispatch!(self, |v| v.delete_instrumentation(id));
        Ok(())
    }

    /// Removes every callback.
    fn deleteAllInstrumentations(&self) -> PyResult<()> {
        dispatch!(self, |v| v.delete_all_instrumentations());
        Ok(())
    }

    // ---- analysis and memory ---------------------------------------------------------

    /// The analysis of the instruction the running callback is for (None elsewhere).
    #[pyo3(signature = (r#type = None))]
    fn getInstAnalysis(
        &self,
        py: Python<'_>,
        r#type: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Option<InstAnalysis>> {
        let what = analysis_arg(r#type, 3)?;
        let Target::Ref(v) = self.target()? else {
            return Ok(None);
        };
        if v.current_address().is_none() {
            return Ok(None);
        }
        let a = v.inst_analysis(what);
        Ok(Some(InstAnalysis::from_core(py, a, what)?))
    }

    /// The analysis of the instrumented instruction at `address` (None if none).
    #[pyo3(signature = (address, r#type = None))]
    fn getCachedInstAnalysis(
        &self,
        py: Python<'_>,
        address: Rword,
        r#type: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Option<InstAnalysis>> {
        let what = analysis_arg(r#type, 3)? & !AnalysisType::from_bits_retain(0x10);
        let a = dispatch!(self, |v| v
            .cached_inst_analysis(address, what)
            .map(|a| InstAnalysis::from_core(py, a, what)));
        a.transpose()
    }

    /// QBDI's analysis of a JIT address: this engine has none (always None).
    #[pyo3(signature = (address, r#type = None))]
    fn getJITInstAnalysis(&self, address: Rword, r#type: Option<&Bound<'_, PyAny>>) -> Option<()> {
        let _ = (address, r#type);
        None
    }

    /// Records memory accesses of the given type; True on success.
    fn recordMemoryAccess(&self, r#type: &Bound<'_, PyAny>) -> PyResult<bool> {
        let access = access_arg(r#type)?;
        Ok(dispatch!(self, |v| v.record_memory_access(access)).is_ok())
    }

    /// The memory accesses of the current instruction (in a callback).
    fn getInstMemoryAccess<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let Target::Ref(v) = self.target()? else {
            return Ok(PyList::empty(py));
        };
        let list: Vec<MemoryAccess> = v
            .inst_memory_access()
            .iter()
            .map(MemoryAccess::from_core)
            .collect();
        PyList::new(py, list)
    }

    /// The memory accesses of the current basic block so far (in a callback).
    fn getBBMemoryAccess<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let Target::Ref(v) = self.target()? else {
            return Ok(PyList::empty(py));
        };
        let list: Vec<MemoryAccess> = v
            .bb_memory_access()
            .iter()
            .map(MemoryAccess::from_core)
            .collect();
        PyList::new(py, list)
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        if let Some((g, f)) = self.views.get() {
            visit.call(g)?;
            visit.call(f)?;
        }
        if let Ok(s) = self.vmstate.try_borrow()
            && let Some(s) = s.as_ref()
        {
            visit.call(s)?;
        }
        Ok(())
    }

    fn __clear__(&mut self) {
        self.views.take();
        self.vmstate.get_mut().take();
    }
}
