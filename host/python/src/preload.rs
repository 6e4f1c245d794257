//! Whole-program mode: Python tools on a program's `main`, beside Rust plugins.
//!
//! This library links qbdi-host, so it holds the whole `qbdi run` preload (the
//! `__libc_start_main` interposition, plugin loading and sessions, finalisation, main on
//! the real stack with the host on a private one). Injected with `LD_PRELOAD` after
//! libpython (by `python -m pyqbdipreload` or by `qbdi run -p tool.py`), its constructor
//! hands the preload two hooks:
//! - a [`ToolRunner`](qbdi_host::preload::ToolRunner) ([`run_tools`]): when main is
//!   reached, with the Rust plugins attached, it starts an embedded interpreter (its signal
//!   handlers, locale and C stdio left to the program), runs each tool script as
//!   `__main__`, calls their `qbdi_init(vm)` hooks, then their `pyqbdipreload_on_run(vm,
//!   start, stop)` (PyQBDI's convention: it runs the VM) or, without one, `vm.run(start,
//!   stop)`. `vm` is a `pyqbdi.VM` over the session's Vm, the one the plugins use;
//! - a fini hook ([`python_fini`]): the tools' `atexit` handlers run when the plugins'
//!   fini do, however the program ends.
//!
//! Imported normally (`import pyqbdi`), none of this runs: the interposed symbols are not
//! in the global scope, and the hooks are only called by a preload session.

use std::ffi::CString;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use qbdi_core::Vm;
use qbdi_host::config::RunConfig;

use crate::vm::VM;

/// Set once the preload started the interpreter (`pyqbdi.__preload__`).
static PRELOAD: AtomicBool = AtomicBool::new(false);
/// The session's VM object, kept for the life of the process.
static SESSION_VM: OnceLock<Py<VM>> = OnceLock::new();

/// Whether this process is a preload session running Python tools.
pub fn is_preload() -> bool {
    PRELOAD.load(Ordering::SeqCst)
}

extern "C" fn install_hooks() {
    qbdi_host::preload::set_tool_runner(run_tools);
    qbdi_host::session::set_extra_fini(python_fini);
}

/// Runs when the library is loaded (as a preload, before the program's `__libc_start_main`,
/// or when imported): only registers the hooks.
#[used]
#[unsafe(link_section = ".init_array")]
static INSTALL_HOOKS: extern "C" fn() = install_hooks;

/// Starts the embedded interpreter, leaving the program's signal handlers, locale and C
/// stdio (buffering) as they are.
fn init_interpreter(config: &RunConfig) -> Result<(), String> {
    // SAFETY: called once, on the main thread, before any other Python API call; every
    // pointer handed over is to a live, initialised config or a NUL-terminated string.
    unsafe {
        if ffi::Py_IsInitialized() != 0 {
            return Ok(());
        }
        let mut pre: ffi::PyPreConfig = std::mem::zeroed();
        ffi::PyPreConfig_InitPythonConfig(&mut pre);
        pre.configure_locale = 0;
        pre.coerce_c_locale = 0;
        pre.parse_argv = 0;
        if ffi::PyStatus_Exception(ffi::Py_PreInitialize(&pre)) != 0 {
            return Err("cannot pre-initialise the Python interpreter".into());
        }
        let mut c: ffi::PyConfig = std::mem::zeroed();
        ffi::PyConfig_InitPythonConfig(&mut c);
        c.install_signal_handlers = 0;
        c.configure_c_stdio = 0;
        c.parse_argv = 0;
        if let Some(home) = config.python_home.as_deref().filter(|h| !h.is_empty())
            && let Ok(h) = CString::new(home)
        {
            ffi::PyConfig_SetBytesString(&mut c, &mut c.home, h.as_ptr());
        }
        let status = ffi::Py_InitializeFromConfig(&c);
        ffi::PyConfig_Clear(&mut c);
        if ffi::PyStatus_Exception(status) != 0 {
            return Err(
                "cannot start the Python interpreter (is libpython the one pyqbdi was built for?)"
                    .into(),
            );
        }
        // Release the GIL taken by initialisation: every later use attaches.
        ffi::PyEval_SaveThread();
    }
    Ok(())
}

/// The [`ToolRunner`](qbdi_host::preload::ToolRunner) of Python tools.
fn run_tools(vm: &mut Vm, config: &RunConfig, start: u64, stop: u64) -> Result<(), String> {
    init_interpreter(config)?;
    PRELOAD.store(true, Ordering::SeqCst);
    Python::attach(|py| {
        run_tools_in(py, vm, config, start, stop).map_err(|e| {
            e.print(py);
            "a Python tool failed (its traceback is above)".to_owned()
        })
    })
}

fn run_tools_in(
    py: Python<'_>,
    vm: &mut Vm,
    config: &RunConfig,
    start: u64,
    stop: u64,
) -> PyResult<()> {
    let sys = py.import("sys")?;
    let path = sys.getattr("path")?.cast_into::<PyList>()?;
    for (i, p) in config.python_path.iter().enumerate() {
        path.insert(i, p)?;
    }
    let pyqbdi = py.import("pyqbdi")?;
    pyqbdi.setattr("__preload__", true)?;
    // SAFETY: the session's Vm lives for the process; from now on the preload reaches it
    // only through this object (the runner returns before the preload reads its state).
    let vm_obj = Py::new(py, unsafe { VM::session(vm) })?;
    let _ = SESSION_VM.set(vm_obj.clone_ref(py));
    let runpy = py.import("runpy")?;
    let mut on_run = None;
    let mut inits = Vec::new();
    for tool in &config.python_tools {
        let tool = tool.to_string_lossy().into_owned();
        sys.setattr("argv", PyList::new(py, [tool.as_str()])?)?;
        let kwargs = PyDict::new(py);
        kwargs.set_item("run_name", "__main__")?;
        let globals = runpy.call_method("run_path", (tool.as_str(),), Some(&kwargs))?;
        if let Ok(Some(f)) = globals.cast::<PyDict>()?.get_item("pyqbdipreload_on_run") {
            on_run = Some(f);
        }
        if let Ok(Some(f)) = globals.cast::<PyDict>()?.get_item("qbdi_init") {
            inits.push(f);
        }
    }
    for f in inits {
        f.call1((vm_obj.bind(py),))?;
    }
    match on_run {
        Some(f) => f.call1((vm_obj.bind(py), start, stop))?,
        None => vm_obj.bind(py).call_method1("run", (start, stop))?,
    };
    Ok(())
}

/// The fini hook: the tools' `atexit` handlers, then their buffered output.
fn python_fini() {
    if !is_preload() {
        return;
    }
    Python::attach(|py| {
        let r = (|| -> PyResult<()> {
            py.import("atexit")?.call_method0("_run_exitfuncs")?;
            let sys = py.import("sys")?;
            sys.getattr("stdout")?.call_method0("flush")?;
            sys.getattr("stderr")?.call_method0("flush")?;
            Ok(())
        })();
        if let Err(e) = r {
            e.print(py);
        }
    });
}

/// The run configuration of a preload session running Python tools (for
/// `pyqbdipreload`): the host's own encoding.
#[pyfunction]
#[pyo3(signature = (tools, preload, python_path, python_home, user_preload = None))]
fn _preload_config(
    tools: Vec<String>,
    preload: String,
    python_path: Vec<String>,
    python_home: String,
    user_preload: Option<String>,
) -> String {
    RunConfig {
        python_tools: tools.into_iter().map(Into::into).collect(),
        preload: preload.into(),
        python_path,
        python_home: Some(python_home),
        user_preload,
        ..RunConfig::default()
    }
    .encode()
}

/// The environment variable of the run configuration.
#[pyfunction]
fn _config_var() -> &'static str {
    qbdi_host::config::CONFIG_VAR
}

/// Adds the preload helpers to the module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(_preload_config, m)?)?;
    m.add_function(wrap_pyfunction!(_config_var, m)?)?;
    Ok(())
}
