//! The `qbdi` command: run a program under plugins from its `main` (`qbdi run`), call one
//! function of a library under them (`qbdi call`), describe a plugin (`qbdi plugin info`),
//! create, install, list and remove plugin crates (`qbdi plugin new/install/list/remove`).
//!
//! No std runtime start (`#![no_main]`): libc calls [`main`] directly. The runtime's start
//! reads `/proc/self/maps` to place a guard page under the main thread's stack, about a
//! tenth of this launcher's time before it executes the program; a stack overflow here
//! then ends in a plain SIGSEGV. Standard output is flushed before returning.
#![cfg_attr(not(test), no_main)]
// The unit tests' build has the harness's entry instead: the command's code is unused there.
#![cfg_attr(test, allow(dead_code))]

use std::ffi::CString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand};
use qbdi_core::{Vm, allocate_virtual_stack};
use qbdi_host::config::{CONFIG_VAR, RunConfig};
use qbdi_host::elf::NotElf;
use qbdi_host::plugin::{self, LoadedPlugins, PluginSpec};
use qbdi_host::preload::QBDI_FAILURE_STATUS;
use qbdi_host::{log, session};

mod scaffold;
mod store;

/// Dynamic binary instrumentation for x86-64 Linux: run programs under analysis plugins.
#[derive(Parser, Debug)]
#[command(name = "qbdi", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run PROGRAM from its main under the plugins (its stdin, stdout, stderr, exit status and
    /// signals stay its own; qbdi's messages go to stderr prefixed `qbdi:`, or to --log).
    Run(RunArgs),
    /// Load LIBRARY, call SYMBOL under the plugins and print what it returns.
    Call(CallArgs),
    /// Plugin commands.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
}

#[derive(Subcommand, Debug)]
enum PluginCommand {
    /// Show a plugin's name, version, ABI, registrations and options.
    Info {
        /// Plugin name (looked up in QBDI_PLUGIN_PATH, the installed plugins, then next to
        /// qbdi) or path.
        plugin: String,
    },
    /// Create a plugin crate that builds as it is: a block and a call counter, a test, a
    /// README.
    New {
        /// The crate's and the plugin's name.
        name: String,
        /// Where to create it (default: ./NAME; must not exist).
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// The qbdi-sdk crate to depend on (default: the one this qbdi was built from, or
        /// the registry's of this version when those sources are gone).
        #[arg(long, value_name = "DIR")]
        sdk_path: Option<PathBuf>,
    },
    /// Build a plugin crate (cargo, release) and install it into the user's plugin
    /// directory ($XDG_DATA_HOME/qbdi/plugins), where `-p NAME` finds it.
    Install {
        /// A crate directory, a git URL (https://, ssh://, file://, git@host:path, PATH.git)
        /// or a crate name from the registry (NAME or NAME@VERSION).
        source: String,
        /// The git revision (branch, tag or commit) to build.
        #[arg(long, value_name = "REV")]
        rev: Option<String>,
    },
    /// List the installed plugins: name, version, ABI, where from.
    List,
    /// Remove an installed plugin.
    Remove {
        /// Its name (as `qbdi plugin list` shows it).
        name: String,
    },
}

#[derive(Args, Debug)]
struct PluginArgs {
    /// A plugin, with options: NAME[:key=value,...] (repeat to compose several).
    #[arg(short = 'p', long = "plugin", value_name = "PLUGIN[:key=value,...]")]
    plugins: Vec<PluginSpec>,
}

#[derive(Args, Debug)]
struct RunArgs {
    #[command(flatten)]
    plugins: PluginArgs,
    /// Also instrument this module (basename like libz.so.1, or full path); repeatable.
    #[arg(long = "module", value_name = "MODULE")]
    modules: Vec<String>,
    /// Do not instrument this module; repeatable.
    #[arg(long = "exclude", value_name = "MODULE")]
    exclude: Vec<String>,
    /// Instrument every executable mapping (libraries too), except qbdi's and the plugins'.
    #[arg(long)]
    all_maps: bool,
    /// Do not instrument the main executable (only --module ones).
    #[arg(long)]
    no_main: bool,
    /// Write qbdi's messages to this file instead of stderr.
    #[arg(long, value_name = "FILE")]
    log: Option<PathBuf>,
    /// Keep instrumenting the programs this one executes (execve, execv, execvp, execvpe).
    #[arg(long)]
    follow_exec: bool,
    /// Let native code (an uninstrumented libc, a library) run the instrumented functions
    /// it calls natively, unseen: a qsort comparator, an atexit handler, a callback. Faster
    /// for programs that make millions of such calls (each one otherwise costs a fault).
    #[arg(long)]
    native_callbacks: bool,
    /// The program and its arguments.
    #[arg(last = true, required = true, value_name = "PROGRAM [ARGS]")]
    program: Vec<String>,
}

#[derive(Args, Debug)]
struct CallArgs {
    #[command(flatten)]
    plugins: PluginArgs,
    /// Print the return value as a double (xmm0) instead of an integer (rax).
    #[arg(long)]
    double: bool,
    /// The shared library (a path, or a name the dynamic loader finds: libz.so.1).
    library: String,
    /// The function to call.
    symbol: String,
    /// Arguments: integers (42, -1, 0x10), doubles (1.5, 2e3), anything else is passed as a
    /// pointer to a NUL-terminated copy of the string.
    #[arg(allow_hyphen_values = true)]
    args: Vec<String>,
}

/// An exit status.
type ExitCode = u8;

/// The program's entry, called by libc (see the module's doc). Not in the unit tests'
/// build, whose harness has its own.
#[cfg(not(test))]
#[unsafe(no_mangle)]
extern "C" fn main(
    _argc: std::ffi::c_int,
    _argv: *const *const std::ffi::c_char,
) -> std::ffi::c_int {
    use std::io::Write;
    let code = cli();
    let _ = std::io::stdout().flush();
    std::ffi::c_int::from(code)
}

fn cli() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run(args),
        Command::Call(args) => call(args),
        Command::Plugin { command } => match command {
            PluginCommand::Info { plugin } => info(&plugin),
            PluginCommand::New {
                name,
                dir,
                sdk_path,
            } => say(scaffold::new_crate(
                &name,
                dir.as_deref(),
                sdk_path.as_deref(),
            )),
            PluginCommand::Install { source, rev } => say(store::install(&source, rev.as_deref())),
            PluginCommand::List => say(store::list()),
            PluginCommand::Remove { name } => say(store::remove(&name)),
        },
    };
    match result {
        Ok(code) => code,
        Err(message) => {
            log::line(&format!("error: {message}"));
            QBDI_FAILURE_STATUS as u8
        }
    }
}

/// Prints what a command has to say.
fn say(result: Result<String, String>) -> Result<ExitCode, String> {
    println!("{}", result?);
    Ok(0)
}

/// Finds, loads and checks the plugins of the command line.
fn load_plugins(specs: &[PluginSpec]) -> Result<LoadedPlugins, String> {
    let mut loaded: LoadedPlugins = Vec::new();
    for spec in specs {
        let path = plugin::find(&spec.plugin).map_err(|e| e.to_string())?;
        let p = plugin::load(&path).map_err(|e| e.to_string())?;
        p.check_options(&spec.options).map_err(|e| e.to_string())?;
        if loaded.iter().any(|(q, _)| q.path == p.path) {
            return Err(format!(
                "plugin '{}' ({}) is given twice: give it once, with all its options",
                p.name,
                p.path.display()
            ));
        }
        loaded.push((p, spec.options.clone()));
    }
    Ok(loaded)
}

/// The directory of the `qbdi` binary.
fn exe_dir() -> Result<PathBuf, String> {
    std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
        .ok_or_else(|| "cannot find where the qbdi binary is".to_owned())
}

/// Resolves PROGRAM like the shell does (a name without '/' is looked up in PATH).
fn resolve_program(program: &str) -> Result<PathBuf, String> {
    let candidates: Vec<PathBuf> = if program.contains('/') {
        vec![PathBuf::from(program)]
    } else {
        std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).map(|d| d.join(program)).collect())
            .unwrap_or_default()
    };
    candidates.into_iter().find(|p| p.is_file()).ok_or_else(|| {
        if program.contains('/') {
            format!("cannot run {program}: no such file")
        } else {
            format!("cannot run {program}: not found in PATH")
        }
    })
}

/// Checks that `path` is something the preload library can take over: a dynamically linked
/// x86-64 ELF executable, or a `#!` script (its interpreter is then the program).
fn check_program(path: &Path) -> Result<(), String> {
    let head = qbdi_host::elf::read_head(path, 64 << 10)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if head.starts_with(b"#!") {
        return Ok(());
    }
    let dynamic = match qbdi_host::elf::parse(&head) {
        Err(NotElf::NotElf) => {
            return Err(format!("{} is not a 64-bit ELF executable", path.display()));
        }
        Err(NotElf::OtherMachine) => {
            return Err(format!("{} is not an x86-64 program", path.display()));
        }
        Ok(info) => info.has_interp,
    };
    if !dynamic {
        return Err(format!(
            "{} is statically linked: qbdi run takes over a program through the dynamic loader \
             (LD_PRELOAD); use qbdi-core's Vm directly for static code",
            path.display()
        ));
    }
    Ok(())
}

/// Where the Python side of a run with Python tools is: pyqbdi's native module (the
/// preload, a whole host with Python), libpython, and the interpreter's paths.
struct PythonHost {
    preload: PathBuf,
    libpython: PathBuf,
    home: String,
    path: Vec<String>,
}

/// Asks the Python interpreter (`$QBDI_PYTHON`, else `python3`) where pyqbdi is installed.
fn python_host() -> Result<PythonHost, String> {
    let python = std::env::var("QBDI_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = std::process::Command::new(&python)
        .args(["-m", "pyqbdipreload", "--host-info"])
        .output()
        .map_err(|e| format!("Python tools need a Python interpreter: cannot run {python}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "Python tools need pyqbdi installed for {python} (pip install host/python): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let (mut preload, mut libpython, mut home, mut path) = (None, None, String::new(), Vec::new());
    for line in text.lines() {
        match line.split_once('=') {
            Some(("preload", v)) => preload = Some(PathBuf::from(v)),
            Some(("libpython", v)) => libpython = Some(PathBuf::from(v)),
            Some(("home", v)) => home = v.to_owned(),
            Some(("path", v)) => path.push(v.to_owned()),
            _ => {}
        }
    }
    match (preload, libpython) {
        (Some(preload), Some(libpython)) => Ok(PythonHost {
            preload,
            libpython,
            home,
            path,
        }),
        _ => Err(format!(
            "{python} -m pyqbdipreload --host-info said nothing usable: {text}"
        )),
    }
}

fn run(args: RunArgs) -> Result<ExitCode, String> {
    // `-p tool.py`: a Python tool, run by the pyqbdi preload beside the plugins.
    let (py_specs, specs): (Vec<PluginSpec>, Vec<PluginSpec>) = args
        .plugins
        .plugins
        .iter()
        .cloned()
        .partition(|s| s.plugin.ends_with(".py"));
    let mut python_tools = Vec::new();
    for s in &py_specs {
        let path = std::path::absolute(&s.plugin).unwrap_or_else(|_| PathBuf::from(&s.plugin));
        if !path.is_file() {
            return Err(format!("no Python tool {}: no such file", s.plugin));
        }
        python_tools.push(path);
    }
    let libc_module = args
        .modules
        .iter()
        .any(|m| m.starts_with("libc.so") || m.starts_with("libc-"));
    if !python_tools.is_empty() && (args.all_maps || libc_module) {
        // The interpreter allocates with libc's malloc in every callback: with libc
        // instrumented, it would do so while the guest is inside malloc.
        return Err(format!(
            "{}: a Python tool cannot run with libc instrumented (--all-maps, --module \
             libc.so.6) yet: the interpreter uses the program's libc; drop the option, or \
             write the tool as a Rust plugin",
            py_specs[0].plugin
        ));
    }
    let plugins = load_plugins(&specs)?;
    let python = if python_tools.is_empty() {
        None
    } else {
        Some(python_host()?)
    };
    let preload = match &python {
        Some(p) => p.preload.clone(),
        None => exe_dir()?.join("libqbdi_host.so"),
    };
    if !preload.is_file() {
        return Err(format!(
            "the preload library {} is missing: build the whole workspace (cargo build --release)",
            preload.display()
        ));
    }
    let program = &args.program[0];
    let path = resolve_program(program)?;
    check_program(&path)?;
    let user_preload = std::env::var("LD_PRELOAD").ok();
    let config = RunConfig {
        plugins: plugins
            .iter()
            .map(|(p, o)| (p.path.clone(), o.clone()))
            .collect(),
        modules: args.modules,
        exclude: args.exclude,
        all_maps: args.all_maps,
        no_main: args.no_main,
        log: args.log.map(|l| std::path::absolute(&l).unwrap_or(l)),
        follow_exec: args.follow_exec,
        native_callbacks: args.native_callbacks,
        preload: preload.clone(),
        user_preload: user_preload.clone(),
        python_tools,
        python_path: python.as_ref().map(|p| p.path.clone()).unwrap_or_default(),
        python_home: python.as_ref().map(|p| p.home.clone()),
    };
    // pyqbdi's module does not link libpython (an extension module must not): it is
    // preloaded first.
    let mut ld_preload = match &python {
        Some(p) => format!("{}:{}", p.libpython.display(), preload.display()),
        None => preload.display().to_string(),
    };
    if let Some(u) = user_preload.as_deref().filter(|u| !u.is_empty()) {
        ld_preload = format!("{ld_preload}:{u}");
    }
    let mut cmd = std::process::Command::new(&path);
    cmd.arg0(program)
        .args(&args.program[1..])
        .env("LD_PRELOAD", ld_preload)
        .env(CONFIG_VAR, config.encode());
    // A shell sets `_` to the path of the program it runs: the program would see qbdi's
    // where natively it sees its own.
    if let Some(underscore) = std::env::var_os("_")
        && let (Ok(named), Ok(me)) = (
            std::fs::canonicalize(&underscore),
            std::env::current_exe().and_then(std::fs::canonicalize),
        )
        && named == me
    {
        cmd.env("_", &path);
    }
    let err = cmd.exec();
    Err(format!("cannot execute {}: {err}", path.display()))
}

/// An argument of `qbdi call`.
#[derive(Debug, PartialEq)]
enum CallArg {
    Int(u64),
    Double(f64),
    Str(CString),
}

fn parse_call_arg(s: &str) -> CallArg {
    let (neg, digits) = match s.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, s),
    };
    let int = match digits
        .strip_prefix("0x")
        .or_else(|| digits.strip_prefix("0X"))
    {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => digits.parse::<u64>().ok(),
    };
    if let Some(v) = int {
        return CallArg::Int(if neg { v.wrapping_neg() } else { v });
    }
    if s.contains(['.', 'e', 'E'])
        && let Ok(d) = s.parse::<f64>()
    {
        return CallArg::Double(d);
    }
    CallArg::Str(CString::new(s.replace('\0', "")).expect("no NUL left"))
}

fn call(args: CallArgs) -> Result<ExitCode, String> {
    let plugins = load_plugins(&args.plugins.plugins)?;
    let lib = CString::new(args.library.clone()).map_err(|_| "library name has a NUL byte")?;
    // SAFETY: dlopen with a NUL-terminated name; the library's initialisers run, which is
    // what the user asked for.
    let handle = unsafe { libc::dlopen(lib.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
    if handle.is_null() {
        // SAFETY: dlerror returns a NUL-terminated message after a failed dlopen.
        let why = unsafe { std::ffi::CStr::from_ptr(libc::dlerror()) }
            .to_string_lossy()
            .into_owned();
        return Err(format!("cannot load {}: {why}", args.library));
    }
    let sym = CString::new(args.symbol.clone()).map_err(|_| "symbol name has a NUL byte")?;
    // SAFETY: dlsym on a live handle with a NUL-terminated name.
    let function = unsafe { libc::dlsym(handle, sym.as_ptr()) } as u64;
    if function == 0 {
        return Err(format!("{} has no symbol {}", args.library, args.symbol));
    }
    let mut vm = Vm::new();
    let _stack = allocate_virtual_stack(vm.gpr_state_mut(), 8 << 20).map_err(|e| e.to_string())?;
    vm.add_instrumented_module_from_addr(function)
        .map_err(|e| format!("cannot instrument {}: {e}", args.library))?;
    let parsed: Vec<CallArg> = args.args.iter().map(|a| parse_call_arg(a)).collect();
    let mut ints = Vec::new();
    let mut doubles = 0usize;
    for a in &parsed {
        match a {
            CallArg::Int(v) => ints.push(*v),
            CallArg::Str(s) => ints.push(s.as_ptr() as u64),
            CallArg::Double(d) => {
                if doubles == 8 {
                    return Err("at most 8 double arguments (xmm0-xmm7)".into());
                }
                let xmm = vm.fpr_state_mut();
                let regs = [
                    &mut xmm.xmm0,
                    &mut xmm.xmm1,
                    &mut xmm.xmm2,
                    &mut xmm.xmm3,
                    &mut xmm.xmm4,
                    &mut xmm.xmm5,
                    &mut xmm.xmm6,
                    &mut xmm.xmm7,
                ];
                regs[doubles][..8].copy_from_slice(&d.to_le_bytes());
                doubles += 1;
            }
        }
    }
    vm.gpr_state_mut().rax = doubles as u64;
    session::attach(&mut vm, &plugins).map_err(|e| e.to_string())?;
    let result = vm.call(function, &ints);
    let failure = session::failure();
    session::fini_all();
    if let Some(f) = failure {
        return Err(format!("{f}; the call stopped"));
    }
    let rax = result.map_err(|e| format!("calling {} failed: {e}", args.symbol))?;
    if args.double {
        let bytes: [u8; 8] = vm.fpr_state().xmm0[..8].try_into().expect("8 bytes");
        println!("{}", f64::from_le_bytes(bytes));
    } else {
        println!("{rax} ({rax:#x})");
    }
    Ok(0)
}

fn info(spec: &str) -> Result<ExitCode, String> {
    let path = plugin::find(spec).map_err(|e| e.to_string())?;
    let p = plugin::load(&path).map_err(|e| e.to_string())?;
    println!("name:        {}", p.name);
    println!("version:     {}", p.version);
    println!("description: {}", p.description);
    println!("file:        {}", p.path.display());
    println!(
        "abi:         {}.{} (qbdi-sdk {})",
        p.abi.0, p.abi.1, p.sdk_version
    );
    println!(
        "heap:        {}",
        if p.host_heap {
            "qbdi's private heap"
        } else {
            "libc's malloc (a plugin built before ABI 1.1: avoid --all-maps with it)"
        }
    );
    println!("registrations:");
    if p.registrations.is_empty() {
        println!("  (none)");
    }
    for r in &p.registrations {
        let mut detail = Vec::new();
        if r.kind == qbdi_sdk::abi::kind::INST {
            detail.push(if r.position == qbdi_sdk::abi::position::POST_INST {
                "postinst".to_owned()
            } else {
                "preinst".to_owned()
            });
        }
        if !r.mnemonic.is_empty() {
            detail.push(format!("mnemonic = \"{}\"", r.mnemonic));
        }
        if !r.code.is_empty() {
            detail.push(format!("code = \"{}\"", r.code));
        }
        match r.kind {
            qbdi_sdk::abi::kind::EVENT => detail.push(format!(
                "{:?}",
                qbdi_core::VmEvent::from_bits_retain(r.flags)
            )),
            qbdi_sdk::abi::kind::MEM_ACCESS => detail.push(format!(
                "{:?}",
                qbdi_core::MemoryAccessType::from_bits_retain(r.flags as u8)
            )),
            qbdi_sdk::abi::kind::INSTR_RULE => detail.push(format!(
                "{:?}",
                qbdi_core::AnalysisType::from_bits_retain(r.flags)
            )),
            _ => {}
        }
        if r.priority != 0 {
            detail.push(format!("priority = {}", r.priority));
        }
        println!(
            "  {:<13} {:<20} line {:<5} {}",
            r.kind_name(),
            r.name,
            r.line,
            detail.join(", ")
        );
        if let Some(path) = call_path(r) {
            println!("  {:<13} called {path}", "");
        }
    }
    println!("options:");
    if p.options.is_empty() {
        println!("  (none)");
    }
    for o in &p.options {
        let default = if o.default.is_empty() {
            String::new()
        } else {
            format!(" (default: {})", o.default)
        };
        println!("  {:<10} {}{default}", o.key, o.help);
    }
    Ok(0)
}

/// How translated code calls a registered callback: "directly" when its trampoline is
/// simple enough (`Vm::set_direct_entry`), or through the general path and why. `None`
/// for registrations that are no callbacks.
fn call_path(r: &plugin::Registration) -> Option<String> {
    use qbdi_sdk::abi::kind;
    let abi = match r.kind {
        kind::INST | kind::MEM_ACCESS => qbdi_core::EntryAbi::Inst,
        kind::EVENT => qbdi_core::EntryAbi::Event,
        _ => return None,
    };
    if !r.code.is_empty() {
        return Some("through the general path: `code =` callbacks come from a rule".into());
    }
    Some(
        match qbdi_core::direct_call_refusal(r.callback as *const (), abi) {
            None if qbdi_core::direct_call_inlined(r.callback as *const (), abi) => {
                "directly from translated code, inlined: its code is copied there, with no \
                 call (where every callback at its point, up to four, can be)"
                    .into()
            }
            None => "directly from translated code (where every callback at its point, up to \
                     four, can be)"
                .into(),
            Some(why) => format!("through the general path: {why}"),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_arguments_parse() {
        assert_eq!(parse_call_arg("42"), CallArg::Int(42));
        assert_eq!(parse_call_arg("-1"), CallArg::Int(u64::MAX));
        assert_eq!(parse_call_arg("0x10"), CallArg::Int(16));
        assert_eq!(parse_call_arg("1.5"), CallArg::Double(1.5));
        assert_eq!(parse_call_arg("2e3"), CallArg::Double(2000.0));
        assert_eq!(
            parse_call_arg("some bytes"),
            CallArg::Str(CString::new("some bytes").unwrap())
        );
    }
}
