//! The preload library's side of `qbdi run`: libqbdi_host.so, injected with `LD_PRELOAD`.
//!
//! It interposes `__libc_start_main` and hands libc its own `main`, which:
//! 1. reads the run's configuration and removes the host's variables (`LD_PRELOAD` back to
//!    the user's own value, [`CONFIG_VAR`] gone), so the program sees its own environment;
//! 2. loads the plugins, creates the Vm, instruments the main executable (and what the
//!    options add or remove), attaches the plugins and runs their init;
//! 3. arranges finalisation exactly once: in the last exit handler (registered before
//!    libc's own, so the program's exit handlers and destructors run under the engine
//!    first; Python tools finalise at the return of main and in an interposed `exit`),
//!    interposed `_exit`/`_Exit` and `exec*`, and handlers for the fatal
//!    signals that still have their default action (then the signal is raised again, so
//!    the exit status is the program's);
//! 4. runs the real `main` under the Vm **on the program's real stack**, while the host's own
//!    code (dispatcher, callbacks, plugins) runs on a private stack of its own;
//! 5. returns main's value to libc, which calls `exit` with it.
//!
//! Without [`CONFIG_VAR`] in the environment everything here passes straight through. That
//! is also what happens in the `qbdi` binary, which links this code as an rlib: its own
//! `__libc_start_main`, `exit`, `execvp` calls reach these definitions and go on to libc's.

use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, AtomicUsize, Ordering};

use qbdi_core::Vm;

use crate::config::{CONFIG_VAR, CONFIG_VAR_C, RunConfig};
use crate::{log, plugin, session};

/// Runs main for tools of another kind than plugins: given the Vm (plugins attached, guest
/// state set up as main's caller would), main's address and the stop address, it runs the
/// Vm from one to the other (or lets its tools do it). The pyqbdi preload sets one to run
/// Python tools (`RunConfig::python_tools`).
pub type ToolRunner =
    fn(vm: &mut Vm, config: &RunConfig, start: u64, stop: u64) -> Result<(), String>;

static TOOL_RUNNER: OnceLock<ToolRunner> = OnceLock::new();

/// Sets the runner of Python tools (once per process; the pyqbdi preload does, from its
/// constructor).
pub fn set_tool_runner(runner: ToolRunner) {
    let _ = TOOL_RUNNER.set(runner);
}

/// Exit status of the process when qbdi itself fails (as env(1) and timeout(1) do).
pub const QBDI_FAILURE_STATUS: c_int = 125;

type MainFn = unsafe extern "C" fn(c_int, *mut *mut c_char, *mut *mut c_char) -> c_int;
type StartMainFn = unsafe extern "C" fn(
    MainFn,
    c_int,
    *mut *mut c_char,
    *mut c_void,
    *mut c_void,
    *mut c_void,
    *mut c_void,
) -> c_int;

/// The program's own `main`.
static REAL_MAIN: AtomicUsize = AtomicUsize::new(0);
/// The configuration text, kept for `--follow-exec` after the environment is cleaned.
static CONFIG_TEXT: OnceLock<String> = OnceLock::new();
/// The decoded configuration.
static CONFIG: OnceLock<RunConfig> = OnceLock::new();
/// Whether this process is a `qbdi run` (set before main).
static ACTIVE: AtomicBool = AtomicBool::new(false);
/// The process that started the session.
static SESSION_PID: AtomicI32 = AtomicI32::new(0);

/// Whether this is the process that started the session, not a child of it. `_exit` and
/// `exec*` in a child do not finalise: the child may be a `vfork` child sharing the
/// parent's memory (finalising there would write the parent's data and mark it done), and
/// a forked child's data is a copy of its parent's. Children that end with `exit()` or a
/// signal do finalise (their own output, under their own pid).
fn in_session_process() -> bool {
    // SAFETY: getpid has no preconditions.
    ACTIVE.load(Ordering::SeqCst) && SESSION_PID.load(Ordering::SeqCst) == unsafe { libc::getpid() }
}

/// The next definition of `name` after this library (libc's).
fn next_symbol(name: &CStr) -> *mut c_void {
    // SAFETY: dlsym with RTLD_NEXT and a NUL-terminated name has no other precondition.
    unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr()) }
}

/// The definition of `name` that this library interposes (the next one after it), looked
/// up once into `cache`, as the function pointer type `F`; `None` if there is none.
///
/// # Safety
/// `F` must be the function pointer type of `name`.
pub(crate) unsafe fn next_fn<F: Copy>(cache: &OnceLock<usize>, name: &CStr) -> Option<F> {
    const { assert!(size_of::<F>() == size_of::<usize>()) };
    let p = *cache.get_or_init(|| next_symbol(name) as usize);
    // SAFETY: a non-null address of `name`, whose type is `F` (the caller's contract).
    (p != 0).then(|| unsafe { std::mem::transmute_copy::<usize, F>(&p) })
}

/// libc's entry into the program, interposed.
///
/// # Safety
/// Called by the program's `_start` with the arguments of the real one.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn __libc_start_main(
    main: MainFn,
    argc: c_int,
    argv: *mut *mut c_char,
    init: *mut c_void,
    fini: *mut c_void,
    rtld_fini: *mut c_void,
    stack_end: *mut c_void,
) -> c_int {
    // Before anything allocates: the host's heap starts on a huge page in a process it
    // runs (not in the launcher, which allocates little).
    // SAFETY: getenv with a NUL-terminated name; no other thread runs yet.
    let has_config = !unsafe { libc::getenv(CONFIG_VAR_C.as_ptr()) }.is_null();
    if has_config {
        qbdi_heap::HEAP.huge_start();
    }
    let real = next_symbol(c"__libc_start_main");
    if real.is_null() {
        // No libc after us: nothing sensible to do but fail loudly.
        log::line("cannot find libc's __libc_start_main");
        // SAFETY: plain exit syscall.
        unsafe { libc::_exit(QBDI_FAILURE_STATUS) };
    }
    // SAFETY: RTLD_NEXT's __libc_start_main has this signature (glibc x86-64).
    let real: StartMainFn = unsafe { std::mem::transmute::<*mut c_void, StartMainFn>(real) };
    let entry: MainFn = if has_config {
        REAL_MAIN.store(main as usize, Ordering::SeqCst);
        // Registered before libc's own (the loader's finaliser, the program's constructors'
        // and main's): runs last, after every exit handler of the program has run under the
        // engine.
        // SAFETY: registering a plain extern "C" fn with atexit.
        unsafe { libc::atexit(at_exit) };
        // Before any translation: every block of the run ends the process through the hook.
        qbdi_core::threads::set_exit_group_hook(exit_group);
        qbdi_main
    } else {
        main
    };
    // SAFETY: forwarding _start's own arguments to libc's function.
    unsafe { real(entry, argc, argv, init, fini, rtld_fini, stack_end) }
}

/// Fails before main: the message, then the qbdi failure status (no plugin output exists).
fn fail_early(message: &str) -> ! {
    log::line(message);
    // SAFETY: exit without running the program or any finaliser.
    unsafe { libc::_exit(QBDI_FAILURE_STATUS) }
}

/// Reads the configuration and removes the host's variables from the environment.
fn take_config() -> RunConfig {
    let text = std::env::var(CONFIG_VAR).unwrap_or_default();
    let config = RunConfig::decode(&text).unwrap_or_else(|e| fail_early(&e));
    // SAFETY (both): single-threaded, before the program's main.
    unsafe {
        std::env::remove_var(CONFIG_VAR);
        match &config.user_preload {
            Some(v) => std::env::set_var("LD_PRELOAD", v),
            None => std::env::remove_var("LD_PRELOAD"),
        }
    }
    let _ = CONFIG_TEXT.set(text);
    config
}

/// The `main` libc runs instead of the program's.
unsafe extern "C" fn qbdi_main(
    argc: c_int,
    argv: *mut *mut c_char,
    envp: *mut *mut c_char,
) -> c_int {
    let config = take_config();
    if !config.python_tools.is_empty() && TOOL_RUNNER.get().is_none() {
        fail_early(
            "Python tools need the pyqbdi preload library (pip install host/python); this preload has no Python",
        );
    }
    if let Some(path) = &config.log
        && let Err(e) = log::to_file(path)
    {
        fail_early(&format!("cannot open the log file {}: {e}", path.display()));
    }
    let mut plugins = Vec::new();
    for (path, options) in &config.plugins {
        let p = plugin::load(path).unwrap_or_else(|e| fail_early(&e.to_string()));
        if let Err(e) = p.check_options(options) {
            fail_early(&e.to_string());
        }
        plugins.push((p, options.clone()));
    }
    let main = REAL_MAIN.load(Ordering::SeqCst);
    let vm: &'static mut Vm = Box::leak(Box::new(Vm::new()));
    let plugin_paths: Vec<String> = plugins
        .iter()
        .map(|(p, _)| p.path.to_string_lossy().into_owned())
        .collect();
    // Start-up reads the maps for many questions while no file is mapped: once.
    if let Err(e) =
        qbdi_core::with_maps_snapshot(|| instrument(vm, &config, main as u64, &plugin_paths))
    {
        fail_early(&e);
    }
    // Whole-process: code the program writes at run time (a JIT's) is its code too.
    qbdi_core::late_code::instrument_anonymous_code(config.all_maps);
    let _ = CONFIG.set(config);
    // SAFETY: getpid has no preconditions.
    SESSION_PID.store(unsafe { libc::getpid() }, Ordering::SeqCst);
    ACTIVE.store(true, Ordering::SeqCst);
    if let Err(e) = session::attach(vm, &plugins) {
        session::skip_fini();
        fail_early(&e.to_string());
    }
    install_finalisers();
    // The plugins are attached (their inits may have loaded libraries). The questions
    // below read the maps while nothing maps or unmaps a file: once. Re-entry's guard
    // reads them afresh (its own changes of protection split mappings).
    let reentry_own = qbdi_core::with_maps_snapshot(|| {
        let own_lib = own_library();
        if let Some(c) = CONFIG.get() {
            let mut own = plugin_paths.clone();
            own.extend(own_lib.clone());
            crate::late::enable(c.all_maps, &c.modules, &c.exclude, own);
        }
        if CONFIG.get().is_some_and(|c| c.python_tools.is_empty()) {
            // Python tools' callbacks are not replayed on other threads: with them, threads
            // other than main run natively.
            crate::threads::enable(vm);
            crate::signals::enable();
            if !libc_instrumented(vm) && !CONFIG.get().is_some_and(|c| c.native_callbacks) {
                let mut own = plugin_paths.clone();
                own.extend(own_lib);
                return Some(own);
            }
        }
        None
    });
    if let Some(own) = reentry_own {
        crate::reentry::enable(vm, &own);
    }

    // The guest runs main on the real stack, just below this frame; the host's code runs on
    // a stack of its own from here on, so nothing of the host's ever lands on the guest's.
    let guest_sp = (current_sp() - 1024) & !0xf;
    let mut job = MainJob {
        vm,
        main: main as u64,
        args: [argc as u64, argv as u64, envp as u64],
        guest_sp,
        result: Err(String::new()),
    };
    run_on_private_stack(&mut job);
    match job.result {
        Ok(status) if session::failure().is_none() => {
            // Plugins finalise after the program's exit handlers (`at_exit`). Python tools
            // finalise here, while the interpreter is whole.
            if python_tools() {
                session::fini_all();
            } else {
                // The program's exit handlers in guarded code re-enter under a Vm of the
                // pool: main's, whose code cache exists (a new Vm would make one, about
                // 0.1 ms of every run).
                crate::unwind::unregister_thread(qbdi_core::threads::current_thread_id());
                // SAFETY: the Vm leaked above for main's run, which is over: nothing refers
                // to it any more (its unwinder entry is gone, `job` is not used again).
                crate::threads::give_back(unsafe { Box::from_raw(std::ptr::from_mut(job.vm)) });
            }
            status
        }
        result => {
            let why = match (session::failure(), result) {
                (Some(f), _) => format!("{f}; the run stopped"),
                (None, Err(e)) => format!("running main under the Vm failed: {e}"),
                (None, Ok(_)) => unreachable!(),
            };
            log::line(&why);
            session::fini_all();
            // Flush the program's stdio buffers, then exit at once. Only if libc runs
            // natively (no stdio call of the guest is then in progress): with libc
            // instrumented (--all-maps) the guest may have stopped inside one, its FILE
            // half updated, and its buffered output is dropped instead.
            let libc_instrumented = libc_instrumented(job.vm);
            // SAFETY: fflush(NULL) flushes every stream (see above for when); _exit ends
            // the process.
            unsafe {
                if !libc_instrumented {
                    libc::fflush(std::ptr::null_mut());
                }
                libc::_exit(QBDI_FAILURE_STATUS)
            }
        }
    }
}

/// The path of the file this code was loaded from (libqbdi_host.so, or `qbdi`), as the
/// process maps name it (its real path). From the loader (`dladdr`): no reading of the maps.
fn own_library() -> Option<String> {
    // SAFETY: Dl_info is plain pointers (null is a valid value); dladdr fills it for an
    // address of this library; the name it points to is the loader's, valid while the
    // library is loaded (for the process's life).
    let name = unsafe {
        let mut info: libc::Dl_info = std::mem::zeroed();
        if libc::dladdr(qbdi_main as *const c_void, &mut info) == 0 || info.dli_fname.is_null() {
            return None;
        }
        CStr::from_ptr(info.dli_fname).to_str().ok()?.to_owned()
    };
    std::fs::canonicalize(&name)
        .ok()
        .map(|p| p.to_string_lossy().into_owned())
}

/// Whether libc's code runs instrumented (`--all-maps`, `--module libc.so.6`): whether one
/// of its functions is in the instrumented ranges (no reading of the maps).
fn libc_instrumented(vm: &Vm) -> bool {
    vm.instrumented_ranges()
        .contains(libc::getpid as unsafe extern "C" fn() -> libc::pid_t as usize as u64)
}

/// Sets the instrumented ranges of a run (`plugins`: the loaded plugins' paths, which
/// `--all-maps` leaves out; they are not attached yet, so `instrument_all_but_own` does
/// not know them).
fn instrument(
    vm: &mut Vm,
    config: &RunConfig,
    main: u64,
    plugins: &[String],
) -> Result<(), String> {
    if !config.no_main {
        vm.add_instrumented_module_from_addr(main)
            .map_err(|e| format!("cannot instrument the main executable: {e}"))?;
    }
    if config.all_maps {
        session::instrument_all_but_own(vm).map_err(|e| e.to_string())?;
        for path in plugins {
            let _ = vm.remove_instrumented_module(path);
        }
    }
    for m in &config.modules {
        match vm.add_instrumented_module(m) {
            // Not mapped yet: instrumented when the program loads it (see `late`).
            Err(qbdi_core::VmError::ModuleNotFound(_)) => {}
            r => r.map_err(|e| format!("--module {m}: {e}"))?,
        }
    }
    for m in &config.exclude {
        vm.remove_instrumented_module(m)
            .map_err(|e| format!("--exclude {m}: {e}"))?;
    }
    if vm.instrumented_ranges().is_empty() {
        return Err("nothing to instrument: the options left no range".into());
    }
    Ok(())
}

/// What the private-stack half of [`qbdi_main`] does.
struct MainJob {
    vm: &'static mut Vm,
    main: u64,
    args: [u64; 3],
    guest_sp: u64,
    result: Result<c_int, String>,
}

extern "C" fn main_job(job: *mut c_void) {
    // SAFETY: `job` is the MainJob of qbdi_main, alive across run_on_private_stack.
    let job = unsafe { &mut *(job as *mut MainJob) };
    // main returns to a stub that ends the process with main's value if it is reached
    // natively (after a C++ exception crossed native code, see `unwind`); under the Vm it
    // is the run's stop address.
    let stub = qbdi_main_return_stub as *const () as u64;
    let gpr = job.vm.gpr_state_mut();
    gpr.rsp = job.guest_sp;
    qbdi_core::simulate_call(gpr, stub, &job.args);
    let runner = CONFIG
        .get()
        .filter(|c| !c.python_tools.is_empty())
        .and_then(|c| Some((c, TOOL_RUNNER.get()?)));
    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match runner {
        Some((config, runner)) => runner(job.vm, config, job.main, stub),
        None => match job.vm.run(job.main, stub) {
            // The main thread ended with the exit system call (pthread_exit in main with
            // libc instrumented): the other threads go on.
            Err(qbdi_core::VmError::ThreadExit { status }) => {
                qbdi_core::threads::exit_thread(status, None)
            }
            Ok(()) => exit_under_the_vm(job.vm),
            Err(e) => Err(e.to_string()),
        },
    }));
    job.result = match run {
        Ok(Ok(())) => Ok(job.vm.gpr_state().rax as u32 as c_int),
        Ok(Err(e)) => Err(e),
        Err(_) => Err("the host panicked (a qbdi bug: please report it)".into()),
    };
}

/// main returned: with libc instrumented, libc's `exit` runs under the Vm with main's value
/// (the program's exit handlers and destructors are its code too; the last handler
/// finalises, see `at_exit`). Otherwise libc calls it natively once `qbdi_main` returns, and
/// the handlers in guarded code come back under the engine (`reentry`).
fn exit_under_the_vm(vm: &mut Vm) -> Result<(), String> {
    let exit = next_symbol(c"exit") as u64;
    if exit == 0 || !vm.instrumented_ranges().contains(exit) {
        return Ok(());
    }
    let status = vm.gpr_state().rax;
    let saved = *vm.gpr_state();
    match vm.call(exit, &[status as u32 as u64]) {
        // exit returned (it does not): main's value as it was.
        Ok(_) => {
            vm.set_gpr_state(&saved);
            Ok(())
        }
        Err(qbdi_core::VmError::ThreadExit { status }) => {
            qbdi_core::threads::exit_thread(status, None)
        }
        Err(e) => Err(e.to_string()),
    }
}

unsafe extern "C" {
    /// Where the program's main returns (see `main_job`).
    fn qbdi_main_return_stub();
}

// main's value is in eax; the stack is the guest's, its alignment unknown.
std::arch::global_asm!(
    ".globl qbdi_main_return_stub",
    ".hidden qbdi_main_return_stub",
    ".type qbdi_main_return_stub, @function",
    "qbdi_main_return_stub:",
    "mov edi, eax",
    "and rsp, -16",
    "call {exit}",
    "ud2",
    exit = sym main_returned_natively,
);

/// main returned outside the Vm: end the process as libc would have.
extern "C" fn main_returned_natively(status: c_int) -> ! {
    // SAFETY: exit runs the atexit handlers (ours finalises the plugins) and flushes stdio.
    unsafe { libc::exit(status) }
}

/// The caller's stack pointer.
pub(crate) fn current_sp() -> u64 {
    let sp: u64;
    // SAFETY: reads rsp.
    unsafe {
        std::arch::asm!("mov {}, rsp", out(reg) sp, options(nomem, nostack, preserves_flags))
    };
    sp
}

/// Size of the host's private stack.
const HOST_STACK: usize = 64 << 20;

fn run_on_private_stack(job: &mut MainJob) {
    // SAFETY: a fresh private anonymous mapping; never unmapped (the host may still be on it
    // when exit handlers run).
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            HOST_STACK,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_STACK,
            -1,
            0,
        )
    };
    if base == libc::MAP_FAILED {
        fail_early("cannot map the host's stack");
    }
    // A guard page at the bottom.
    // SAFETY: the first page of the mapping just made.
    unsafe { libc::mprotect(base, 4096, libc::PROT_NONE) };
    let top = (base as usize + HOST_STACK - 64) & !0xf;
    crate::unwind::register_thread(
        qbdi_core::threads::current_thread_id(),
        job.vm,
        Some((base as u64, (base as usize + HOST_STACK) as u64)),
    );
    // SAFETY: switches rsp to the top of the private stack (16-byte aligned, so the callee
    // sees the ABI's alignment after `call`), calls main_job(job) there and switches back;
    // r12 (callee-saved) keeps the old rsp across the call.
    unsafe {
        std::arch::asm!(
            "mov r12, rsp",
            "mov rsp, {top}",
            "call {f}",
            "mov rsp, r12",
            top = in(reg) top,
            f = in(reg) main_job as extern "C" fn(*mut c_void),
            in("rdi") job as *mut MainJob as *mut c_void,
            out("r12") _,
            clobber_abi("C"),
        );
    }
}

/// Set when `exit` is called through this library's [`exit`]: libc's `exit` then runs
/// natively, whatever runs under a Vm on the thread.
static NATIVE_EXIT: AtomicBool = AtomicBool::new(false);

/// The last exit handler: finalises the plugins, then lets what still runs natively run
/// natively. When libc's exit runs under a Vm (libc instrumented, called by the guest
/// rather than through [`exit`], this handler reached from the loader's finaliser in a
/// native call of that Vm, not from a plugin's callback), it leaves them to the guest's
/// `exit_group` system call ([`exit_group`]), which comes after the rest of `exit`: the
/// other libraries' finalisers, libc's stdio flush, `_exit`. The tools then see those
/// too.
extern "C" fn at_exit() {
    let exit_translated = !NATIVE_EXIT.load(Ordering::SeqCst)
        && instrumented_exit()
        && !crate::unwind::thread_vms().is_empty()
        && !session::in_callback();
    if exit_translated {
        FINI_DEFERRED.store(true, Ordering::SeqCst);
    } else {
        restore_stderr();
        session::fini_all();
    }
    crate::reentry::disable();
}

/// Set when [`at_exit`] left the finalisation to [`exit_group`] (in this process: a
/// forked child finalises its own copy of the plugins there too, as at its `exit`).
static FINI_DEFERRED: AtomicBool = AtomicBool::new(false);

/// Whether libc's `_exit`, which makes the `exit_group` system call, is instrumented.
fn instrumented_exit() -> bool {
    let f = next_symbol(c"_exit");
    !f.is_null() && crate::threads::instrumented(f as u64)
}

/// The guest's `exit_group` system call, under a Vm (see
/// `qbdi_core::threads::set_exit_group_hook`): finalise the plugins if the exit handlers
/// did not (in the session's process, or where [`at_exit`] left it to here), then end the
/// process with the guest's status.
fn exit_group(status: c_int) -> ! {
    if in_session_process() || FINI_DEFERRED.load(Ordering::SeqCst) {
        restore_stderr();
        session::fini_all();
    }
    loop {
        // SAFETY: the exit_group system call ends the process; it does not return.
        unsafe { libc::syscall(libc::SYS_exit_group, status) };
    }
}

/// Puts back the stderr the program started with if it closed its own (GNU tools close
/// stdout and stderr in their exit handlers), for the plugins' last words.
fn restore_stderr() {
    let saved = SAVED_STDERR.load(Ordering::SeqCst);
    // SAFETY: fcntl on fd 2 only queries it; dup2 puts the saved copy back in its place.
    unsafe {
        if saved >= 0 && libc::fcntl(2, libc::F_GETFD) == -1 {
            libc::dup2(saved, 2);
        }
    }
}

/// A copy of the program's stderr at start (close-on-exec), for [`at_exit`]; -1 if none.
static SAVED_STDERR: AtomicI32 = AtomicI32::new(-1);

/// Whether the run has Python tools (they finalise before the program's exit handlers).
fn python_tools() -> bool {
    CONFIG.get().is_some_and(|c| !c.python_tools.is_empty())
}

/// Signals whose default action ends the process.
const FATAL_SIGNALS: [c_int; 15] = [
    libc::SIGHUP,
    libc::SIGINT,
    libc::SIGQUIT,
    libc::SIGILL,
    libc::SIGABRT,
    libc::SIGFPE,
    libc::SIGSEGV,
    libc::SIGBUS,
    libc::SIGPIPE,
    libc::SIGTERM,
    libc::SIGSYS,
    libc::SIGXCPU,
    libc::SIGXFSZ,
    libc::SIGALRM,
    libc::SIGTRAP,
];

extern "C" fn on_fatal_signal(sig: c_int, info: *mut libc::siginfo_t, uctx: *mut c_void) {
    fatal_signal(sig, info, uctx);
}

/// The address of the host's fatal-signal finaliser, as `sa_sigaction` holds it.
pub(crate) fn fatal_signal_handler() -> usize {
    on_fatal_signal as extern "C" fn(c_int, *mut libc::siginfo_t, *mut c_void) as usize
}

/// A signal whose action is to end the process: says where a fault was, finalises, and
/// raises it again with the default action (same signal, same status as natively).
pub(crate) fn fatal_signal(sig: c_int, info: *mut libc::siginfo_t, uctx: *mut c_void) {
    // A fault the kernel raised at an instruction (not a signal sent to the process): say
    // where, in the guest's terms.
    // SAFETY: the kernel's siginfo and ucontext for this delivery (SA_SIGINFO).
    let fault_pc = unsafe {
        let synchronous = [
            libc::SIGSEGV,
            libc::SIGBUS,
            libc::SIGFPE,
            libc::SIGILL,
            libc::SIGTRAP,
        ]
        .contains(&sig)
            && !info.is_null()
            && (*info).si_code > 0;
        (synchronous && !uctx.is_null()).then(|| {
            (*(uctx as *const libc::ucontext_t)).uc_mcontext.gregs[libc::REG_RIP as usize] as u64
        })
    };
    if let Some(pc) = fault_pc {
        log::line(&crate::unwind::describe_fault(sig, pc));
    }
    session::fini_all();
    // Back to the default action, unblocked, and raised again: the process ends as it would
    // have without qbdi (same signal, same status).
    crate::signals::set_default_action(sig);
    // SAFETY: unblocks and raises `sig` on this thread.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, sig);
        libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        libc::raise(sig);
    }
}

fn install_finalisers() {
    // SAFETY: duplicates fd 2 (if open) above the program's usual descriptors.
    SAVED_STDERR.store(
        unsafe { libc::fcntl(2, libc::F_DUPFD_CLOEXEC, 100) },
        Ordering::SeqCst,
    );
    // An alternate stack, so a stack overflow of the guest still finalises.
    const ALT: usize = 1 << 20;
    // SAFETY: a fresh anonymous mapping handed to sigaltstack, never freed.
    unsafe {
        let stack = libc::mmap(
            std::ptr::null_mut(),
            ALT,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        if stack != libc::MAP_FAILED {
            let ss = libc::stack_t {
                ss_sp: stack,
                ss_flags: 0,
                ss_size: ALT,
            };
            libc::sigaltstack(&ss, std::ptr::null_mut());
        }
    }
    for sig in FATAL_SIGNALS {
        // SAFETY: reads the current disposition, and replaces it only if it is the default
        // (a signal the program's parent ignores stays ignored).
        unsafe {
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(sig, std::ptr::null(), &mut old) != 0
                || old.sa_sigaction != libc::SIG_DFL
            {
                continue;
            }
            if libc::sigaction(sig, &finaliser(), std::ptr::null_mut()) == 0 {
                FINALISED_SIGNALS.fetch_or(1 << sig, Ordering::SeqCst);
            }
        }
    }
}

/// The fatal signals whose default action [`install_finalisers`] replaced with
/// [`on_fatal_signal`], a bit each.
static FINALISED_SIGNALS: AtomicU64 = AtomicU64::new(0);

/// The disposition that finalises the plugins before a fatal signal's default action.
fn finaliser() -> libc::sigaction {
    // SAFETY: an all-zero sigaction is valid; sigemptyset initialises its mask.
    let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
    sa.sa_sigaction =
        on_fatal_signal as extern "C" fn(c_int, *mut libc::siginfo_t, *mut c_void) as usize;
    sa.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_RESETHAND | libc::SA_NODEFER;
    // SAFETY: as above.
    unsafe { libc::sigemptyset(&mut sa.sa_mask) };
    sa
}

/// What the kernel gets when the program asks for the default action of `sig`: the
/// finaliser again when the host put it in place of that default at start (a program
/// that sets the defaults it was started with, as shells do, would otherwise take it
/// away, and a fatal signal then would end the run without the plugins' outputs).
pub(crate) fn default_action(sig: c_int) -> Option<libc::sigaction> {
    let finalised =
        (1..64).contains(&sig) && FINALISED_SIGNALS.load(Ordering::SeqCst) & 1 << sig != 0;
    finalised.then(finaliser)
}

/// Whether `handler` is the finaliser (reported to the program as the default action).
pub(crate) fn is_finaliser(handler: usize) -> bool {
    handler == on_fatal_signal as extern "C" fn(c_int, *mut libc::siginfo_t, *mut c_void) as usize
}

type ExitFn = unsafe extern "C" fn(c_int) -> !;

/// `exit`, interposed: libc's `exit`, whose last exit handler finalises the plugins
/// (`at_exit`); Python tools finalise first, before the program's own handlers.
#[unsafe(no_mangle)]
pub extern "C" fn exit(status: c_int) -> ! {
    NATIVE_EXIT.store(true, Ordering::SeqCst);
    if in_session_process() && python_tools() {
        session::fini_all();
    }
    let real = next_symbol(c"exit");
    if real.is_null() {
        exit_now(status);
    }
    // SAFETY: libc's exit has this signature and does not return.
    unsafe { std::mem::transmute::<*mut c_void, ExitFn>(real)(status) }
}

/// `_exit`, interposed: finalise, then end the process.
#[unsafe(no_mangle)]
pub extern "C" fn _exit(status: c_int) -> ! {
    exit_now(status)
}

/// `_Exit`, interposed: as `_exit`.
#[unsafe(no_mangle)]
pub extern "C" fn _Exit(status: c_int) -> ! {
    exit_now(status)
}

fn exit_now(status: c_int) -> ! {
    if in_session_process() {
        session::fini_all();
    }
    loop {
        // SAFETY: the exit_group system call ends the process; it does not return.
        unsafe { libc::syscall(libc::SYS_exit_group, status) };
    }
}

/// The environment for a program executed by the guest, if not `envp` itself: with
/// `--follow-exec`, the host's variables are put back so the new program is instrumented
/// too. Without it, they are taken out of an `envp` that still has them: the host removes
/// them from `environ` at start, but a program may pass its own copy of the environment
/// (bash does), and the new program would then run instrumented, its plugins' outputs
/// written over this one's (the same pid, the same file names).
fn exec_env(envp: *const *const c_char) -> Option<Vec<CString>> {
    let config = CONFIG.get()?;
    let (mut env, user_preload, had_config) = split_env(config, envp);
    if !config.follow_exec {
        if !had_config {
            return None;
        }
        if let Some(u) = user_preload.filter(|u| !u.is_empty()) {
            env.push(CString::new(format!("LD_PRELOAD={u}")).ok()?);
        }
        return Some(env);
    }
    let mut child = config.clone();
    child.user_preload = user_preload;
    env.push(CString::new(format!("LD_PRELOAD={}", host_preload(&child))).ok()?);
    env.push(CString::new(format!("{CONFIG_VAR}={}", child.encode())).ok()?);
    Some(env)
}

/// The `LD_PRELOAD` a program runs with under `config`: the host's library, then the
/// user's own preloads.
fn host_preload(config: &RunConfig) -> String {
    match &config.user_preload {
        Some(u) if !u.is_empty() => format!("{}:{u}", config.preload.display()),
        _ => config.preload.display().to_string(),
    }
}

/// `envp` split: its entries but `LD_PRELOAD` and the host's configuration variable; the
/// user's `LD_PRELOAD` (the one the run started with where `envp` has the host's own);
/// whether it has the configuration variable.
fn split_env(
    config: &RunConfig,
    envp: *const *const c_char,
) -> (Vec<CString>, Option<String>, bool) {
    let ours = host_preload(config);
    let config_prefix = format!("{CONFIG_VAR}=");
    let (mut env, mut user_preload, mut had_config) = (Vec::new(), None, false);
    let mut p = envp;
    // SAFETY: envp is a NULL-terminated array of C strings (execve's contract).
    unsafe {
        while !p.is_null() && !(*p).is_null() {
            let entry = CStr::from_ptr(*p);
            let bytes = entry.to_bytes();
            if let Some(v) = bytes.strip_prefix(b"LD_PRELOAD=") {
                // The host's own (an environment kept from the start): the user's.
                user_preload = if v == ours.as_bytes() {
                    config.user_preload.clone()
                } else {
                    Some(String::from_utf8_lossy(v).into_owned())
                };
            } else if bytes.starts_with(config_prefix.as_bytes()) {
                had_config = true;
            } else {
                env.push(entry.to_owned());
            }
            p = p.add(1);
        }
    }
    (env, user_preload, had_config)
}

type ExecveFn =
    unsafe extern "C" fn(*const c_char, *const *const c_char, *const *const c_char) -> c_int;

fn with_env(envp: *const *const c_char, f: impl FnOnce(*const *const c_char) -> c_int) -> c_int {
    // The process image is about to be replaced: what the plugins collected so far is
    // written now (exec does not run atexit handlers).
    if in_session_process() {
        session::fini_all();
    }
    match exec_env(envp) {
        None => f(envp),
        Some(env) => {
            let mut ptrs: Vec<*const c_char> = env.iter().map(|c| c.as_ptr()).collect();
            ptrs.push(std::ptr::null());
            f(ptrs.as_ptr())
        }
    }
}

fn environ() -> *const *const c_char {
    unsafe extern "C" {
        static environ: *const *const c_char;
    }
    // SAFETY: reading libc's environ pointer.
    unsafe { environ }
}

/// `execve`, interposed for `--follow-exec`.
///
/// # Safety
/// execve's contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn execve(
    path: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
) -> c_int {
    // SAFETY: libc's execve has this signature.
    let real: ExecveFn =
        unsafe { std::mem::transmute::<*mut c_void, ExecveFn>(next_symbol(c"execve")) };
    // SAFETY: forwarding execve's arguments with an environment of the same shape.
    with_env(envp, |env| unsafe { real(path, argv, env) })
}

/// `execv`, interposed for `--follow-exec`.
///
/// # Safety
/// execv's contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn execv(path: *const c_char, argv: *const *const c_char) -> c_int {
    // SAFETY: forwarded.
    unsafe { execve(path, argv, environ()) }
}

/// `execvpe`, interposed for `--follow-exec`.
///
/// # Safety
/// execvpe's contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn execvpe(
    file: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
) -> c_int {
    // SAFETY: libc's execvpe has execve's signature.
    let real: ExecveFn =
        unsafe { std::mem::transmute::<*mut c_void, ExecveFn>(next_symbol(c"execvpe")) };
    // SAFETY: forwarding with an environment of the same shape.
    with_env(envp, |env| unsafe { real(file, argv, env) })
}

/// `execvp`, interposed for `--follow-exec`.
///
/// # Safety
/// execvp's contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn execvp(file: *const c_char, argv: *const *const c_char) -> c_int {
    // SAFETY: forwarded.
    unsafe { execvpe(file, argv, environ()) }
}

/// Runs `f` with `environ` holding the host's variables (`--follow-exec`), for the libc
/// functions that start a program with the caller's environment internally (`system`,
/// `popen`, `posix_spawn` given `environ`): their internal `execve` is past any
/// interposition. `environ` is swapped, not edited (no libc allocation), and put back after.
fn with_exec_environ<R>(f: impl FnOnce() -> R) -> R {
    unsafe extern "C" {
        #[link_name = "environ"]
        static mut ENVIRON: *const *const c_char;
    }
    let Some(env) = exec_env(environ()) else {
        return f();
    };
    let mut ptrs: Vec<*const c_char> = env.iter().map(|c| c.as_ptr()).collect();
    ptrs.push(std::ptr::null());
    // SAFETY: `ptrs` (and the strings it points to) outlive the call; the previous value is
    // put back before they are dropped. Another thread reading environ meanwhile sees a
    // valid environment either way.
    unsafe {
        let saved = ENVIRON;
        ENVIRON = ptrs.as_ptr();
        let r = f();
        ENVIRON = saved;
        r
    }
}

/// `system`, interposed for `--follow-exec` (the shell it starts is instrumented, and so
/// are the programs the shell executes).
///
/// # Safety
/// system's contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn system(command: *const c_char) -> c_int {
    type SystemFn = unsafe extern "C" fn(*const c_char) -> c_int;
    // SAFETY: libc's system has this signature.
    let real: SystemFn = unsafe { std::mem::transmute(next_symbol(c"system")) };
    // SAFETY: forwarded.
    with_exec_environ(|| unsafe { real(command) })
}

/// `popen`, interposed for `--follow-exec`.
///
/// # Safety
/// popen's contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn popen(command: *const c_char, mode: *const c_char) -> *mut c_void {
    type PopenFn = unsafe extern "C" fn(*const c_char, *const c_char) -> *mut c_void;
    // SAFETY: libc's popen has this signature (FILE* as an opaque pointer).
    let real: PopenFn = unsafe { std::mem::transmute(next_symbol(c"popen")) };
    // SAFETY: forwarded.
    with_exec_environ(|| unsafe { real(command, mode) })
}

type SpawnFn = unsafe extern "C" fn(
    *mut libc::pid_t,
    *const c_char,
    *const c_void,
    *const c_void,
    *const *const c_char,
    *const *const c_char,
) -> c_int;

/// `posix_spawn` and `posix_spawnp` with `name`'s libc definition, the host's variables
/// put back into `envp` (`--follow-exec`). The caller goes on: no finalisation.
///
/// # Safety
/// posix_spawn's contract.
unsafe fn spawn(
    name: &CStr,
    pid: *mut libc::pid_t,
    path: *const c_char,
    actions: *const c_void,
    attr: *const c_void,
    argv: *const *const c_char,
    envp: *const *const c_char,
) -> c_int {
    // SAFETY: libc's posix_spawn(p) have this signature (the file actions and attributes
    // as opaque pointers).
    let real: SpawnFn = unsafe { std::mem::transmute(next_symbol(name)) };
    match exec_env(envp) {
        // SAFETY: forwarded.
        None => unsafe { real(pid, path, actions, attr, argv, envp) },
        Some(env) => {
            let mut ptrs: Vec<*const c_char> = env.iter().map(|c| c.as_ptr()).collect();
            ptrs.push(std::ptr::null());
            // SAFETY: forwarded with an environment of the same shape, alive for the call
            // (posix_spawn copies what it needs before returning).
            unsafe { real(pid, path, actions, attr, argv, ptrs.as_ptr()) }
        }
    }
}

/// `posix_spawn`, interposed for `--follow-exec`.
///
/// # Safety
/// posix_spawn's contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn posix_spawn(
    pid: *mut libc::pid_t,
    path: *const c_char,
    actions: *const c_void,
    attr: *const c_void,
    argv: *const *const c_char,
    envp: *const *const c_char,
) -> c_int {
    // SAFETY: forwarded.
    unsafe { spawn(c"posix_spawn", pid, path, actions, attr, argv, envp) }
}

/// `posix_spawnp`, interposed for `--follow-exec`.
///
/// # Safety
/// posix_spawnp's contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn posix_spawnp(
    pid: *mut libc::pid_t,
    file: *const c_char,
    actions: *const c_void,
    attr: *const c_void,
    argv: *const *const c_char,
    envp: *const *const c_char,
) -> c_int {
    // SAFETY: forwarded.
    unsafe { spawn(c"posix_spawnp", pid, file, actions, attr, argv, envp) }
}

/// Most arguments the `execl*` interposers read (6 in registers, the rest from the stack).
const EXECL_MAX_ARGS: usize = 6 + 26;

/// The `execl*` family is variadic, which stable Rust cannot define; the SysV x86-64 ABI
/// passes a variadic call's integer arguments like a fixed one's, so these interposers take
/// a fixed list of words: the first six from registers, the others from the caller's stack
/// (words above the return address the caller wrote or, past its arguments, older words of
/// its frame: only read up to the terminating NULL). A call with more arguments fails with
/// E2BIG. The argument vector is then handed to the interposed `execv*`.
macro_rules! execl_words {
    ($name:ident, $doc:literal, |$first:ident, $words:ident| $body:expr) => {
        #[doc = $doc]
        ///
        /// # Safety
        /// The libc function's contract.
        #[unsafe(no_mangle)]
        #[allow(clippy::too_many_arguments)]
        pub unsafe extern "C" fn $name(
            $first: *const c_char,
            w0: usize,
            w1: usize,
            w2: usize,
            w3: usize,
            w4: usize,
            s0: usize,
            s1: usize,
            s2: usize,
            s3: usize,
            s4: usize,
            s5: usize,
            s6: usize,
            s7: usize,
            s8: usize,
            s9: usize,
            s10: usize,
            s11: usize,
            s12: usize,
            s13: usize,
            s14: usize,
            s15: usize,
            s16: usize,
            s17: usize,
            s18: usize,
            s19: usize,
            s20: usize,
            s21: usize,
            s22: usize,
            s23: usize,
            s24: usize,
            s25: usize,
        ) -> c_int {
            let $words: [usize; EXECL_MAX_ARGS - 1] = [
                w0, w1, w2, w3, w4, s0, s1, s2, s3, s4, s5, s6, s7, s8, s9, s10, s11, s12, s13,
                s14, s15, s16, s17, s18, s19, s20, s21, s22, s23, s24, s25,
            ];
            $body
        }
    };
}

/// The argument vector of an `execl*` call (`words` from `arg0` on, NULL-terminated), and
/// the word after its NULL (execle's envp). None: no NULL among the words.
fn execl_argv(words: &[usize]) -> Option<(Vec<*const c_char>, usize)> {
    let end = words.iter().position(|&w| w == 0)?;
    let argv = words[..=end].iter().map(|&w| w as *const c_char).collect();
    Some((argv, words.get(end + 1).copied().unwrap_or(0)))
}

fn too_many_arguments() -> c_int {
    // SAFETY: __errno_location returns this thread's errno.
    unsafe { *libc::__errno_location() = libc::E2BIG };
    -1
}

execl_words!(
    execl,
    "`execl`, interposed for `--follow-exec`.",
    |path, words| {
        match execl_argv(&words) {
            // SAFETY: a NULL-terminated argument vector of the caller's strings.
            Some((argv, _)) => unsafe { execv(path, argv.as_ptr()) },
            None => too_many_arguments(),
        }
    }
);

execl_words!(
    execlp,
    "`execlp`, interposed for `--follow-exec`.",
    |file, words| {
        match execl_argv(&words) {
            // SAFETY: as in execl.
            Some((argv, _)) => unsafe { execvp(file, argv.as_ptr()) },
            None => too_many_arguments(),
        }
    }
);

execl_words!(
    execle,
    "`execle`, interposed for `--follow-exec`.",
    |path, words| {
        match execl_argv(&words) {
            // SAFETY: as in execl; the word after the NULL is the environment (execle's
            // contract).
            Some((argv, envp)) => unsafe {
                execve(path, argv.as_ptr(), envp as *const *const c_char)
            },
            None => too_many_arguments(),
        }
    }
);
