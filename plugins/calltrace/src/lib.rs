//! `calltrace`: the calls the instrumented code makes to code outside it (libc, other
//! libraries), like ltrace: target, arguments and return value, one line per call when it
//! returns (see [`calls`] for nesting).
//!
//! ```text
//! getenv@libc.so.6("LS_COLORS") = NULL
//! opendir@libc.so.6("sub") = 0x5581e1a3c6b0
//! strlen@libc.so.6("0123456789abcdefghijklmnopqrstuv"...) = 40
//! open@libc.so.6("f", O_WRONLY|O_CREAT|O_NOCTTY|O_NONBLOCK, 0666) = 3
//! free@libc.so.6(0x5581e1a3c6b0) = <void>
//! ```
//!
//! Functions of the built-in prototype table ([`protos`]: about 350 libc, libm and
//! libpthread functions and their `__*_chk` variants) have their arguments and return
//! value decoded by type ([`args`]): integers in decimal, pointers in hex (`NULL`), strings
//! quoted and cut after 32 bytes (`"..."...`), flags and constants by name, `double`s from
//! the xmm registers, a `printf` format's variadic arguments by its conversions. A function
//! the table does not know takes its prototype from the DWARF of its library, when the
//! library has debug information ([`dwarf`]). Other functions show their first three
//! argument registers (rdi, rsi, rdx) and rax in hex.
//! Strings are read with a system call that cannot fault ([`mem`]), at the call for the
//! arguments and at the return for a returned string.
//!
//! Options: `out=PATH` (default `calltrace.<pid>.log`, `-` for stderr), `format=text`
//! (the default: the lines above) or `format=jsonl`.
//!
//! # `format=jsonl`
//!
//! One JSON object per line, one per text line, in the same order:
//!
//! - `tid` (number): the thread's id;
//! - `depth` (number): the nesting depth (0: called from instrumented code with no other
//!   call in progress; the text lines' indentation);
//! - `event`: `"call"` (a line with the arguments: the call, or the call and its return)
//!   or `"resumed"` (the end of a call whose `"unfinished"` line came before; no `args`);
//! - `status`: `"returned"`, `"unfinished"` (nested calls follow before its return),
//!   `"left"` (left without returning: unwound by `longjmp`) or `"exit"` (no return before
//!   the program ended);
//! - `function`: the symbol (`"malloc"`, `"f+0x10"` inside one, the PLT slot's name for a
//!   lazily bound call whose function is not known yet), `null` where no symbol covers the
//!   target;
//! - `module`: the module's basename (`"libc.so.6"`), `null` outside modules (and for a
//!   lazy call not bound yet);
//! - `target`: the called address, a string of hexadecimal (the bound function for a lazy
//!   call that was bound);
//! - `args` (`"call"` events only): an array of `{"type", "value", "raw"}`: the type's name
//!   (`"int"`, `"size_t"`, `"pointer"`, `"string"`, `"double"`, `"open_flags"`, `"hex"` for
//!   a function without a prototype...), the text shown for it and the register or stack
//!   word it came from (hexadecimal string; a `double`'s bits);
//! - `return`: the same object for the return value (`{"type":"void","value":"<void>",..}`
//!   for a `void` function), `null` unless `status` is `"returned"`.
//!
//! When the calls in progress at exit cannot be known (fini interrupted a callback), the
//! last line is `{"event":"error","message":"..."}` (in text: a `# ...` line).
//!
//! Calls are EXEC_TRANSFER_CALL events (the Vm leaving the instrumented ranges), returns
//! EXEC_TRANSFER_RETURN events; targets are named with the host's ELF symbols, once per
//! address. A first call through a lazily bound PLT slot enters the dynamic loader's
//! resolver, not the function: it is named after the slot's symbol, then after the function
//! the slot was bound to (see [`lazy`]).

#![warn(missing_docs)]

use std::hash::BuildHasherDefault;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use qbdi_plugin_support::hash::AddrMap;
use qbdi_plugin_support::json::Format;
use qbdi_plugin_support::output::{Output, Stream};
use qbdi_plugin_support::sync::{FINI_WAIT, lock, lock_for_fini};
use qbdi_sdk::prelude::*;

pub mod args;
pub mod calls;
pub mod dwarf;
pub mod elf;
pub mod lazy;
pub mod mem;
pub mod protos;

use args::Regs;
use calls::{CallTracer, Callee};
use lazy::LazyResolver;
use mem::SelfMemory;

/// The plugin's name.
const NAME: &str = "calltrace";

qbdi_sdk::plugin!(
    name: "calltrace",
    description: "calls out of the instrumented code with arguments and return values (like ltrace)",
    options: [
        ("out", "file to write (- for stderr)", "calltrace.<pid>.log"),
        (
            "format",
            "text (one ltrace-like line per call) or jsonl (one JSON object per line)",
            "text"
        ),
    ],
);

/// The output.
static TRACE: Stream = Stream::new(NAME);
/// Calls in progress and target names, per thread. Locked before `LAZY`, which is before
/// `TRACE`.
static CALLS: Mutex<AddrMap<u32, CallTracer>> =
    Mutex::new(AddrMap::with_hasher(BuildHasherDefault::new()));

/// Whether `format=jsonl` was given.
static JSONL: AtomicBool = AtomicBool::new(false);

/// The tracer of the thread `vm` runs on; lines of threads other than the process's main
/// one start with `[tid N] ` (as `strace -f` marks them).
fn tracer<'a>(calls: &'a mut AddrMap<u32, CallTracer>, vm: &VmRef) -> &'a mut CallTracer {
    let (tid, main) = (vm.thread_id(), vm.is_main_thread());
    calls.entry(tid).or_insert_with(|| {
        let prefix = if main {
            String::new()
        } else {
            format!("[tid {tid}] ")
        };
        let format = if JSONL.load(Ordering::Relaxed) {
            Format::Jsonl
        } else {
            Format::Text
        };
        CallTracer::for_thread(tid, prefix, format)
    })
}
/// Naming of lazily bound calls.
static LAZY: Mutex<LazyResolver> = Mutex::new(LazyResolver::new());

#[plugin_init]
fn init(_vm: &mut VmRef, options: &PluginOptions) -> Result<(), String> {
    let format = Format::parse(NAME, options.get("format"))?;
    JSONL.store(format == Format::Jsonl, Ordering::Relaxed);
    TRACE.open(&Output::from_options(NAME, options)?)?;
    // A fork child traces into a file of its own (the calls in progress, fork's included,
    // are the child's too).
    qbdi_plugin_support::fork::on_fork_child(|| {
        TRACE.reopen_in_fork_child();
        mem::forget_pid();
        // The child's only thread is the one that forked: if that was the parent's main
        // thread, its calls in progress go on as the child's main thread's.
        if let Ok(mut all) = CALLS.try_lock() {
            let parent = std::os::unix::process::parent_id();
            let forked = all.remove(&parent);
            all.clear();
            if let Some(mut t) = forked {
                let pid = std::process::id();
                t.set_thread(pid, String::new());
                all.insert(pid, t);
            }
        }
    });
    Ok(())
}

/// The callee at `target` (see [`Callee::new`]); when the host has no symbol there,
/// `slot_name` (the PLT slot the call went through) names it.
fn name_target(vm: &VmRef, target: u64, slot_name: impl FnOnce() -> Option<String>) -> Callee {
    let symbol = vm.symbolize(target);
    if let Some(s) = &symbol
        && s.name.is_empty()
        && let Some(name) = slot_name()
    {
        let named = Symbol {
            name,
            offset: 0,
            module: s.module.clone(),
        };
        return with_dwarf(Callee::new(Some(&named), target), &named, target);
    }
    match symbol {
        Some(s) => with_dwarf(Callee::new(Some(&s), target), &s, target),
        None => Callee::new(None, target),
    }
}

/// `callee` with the prototype its library's DWARF gives, when the built-in table has none
/// and `target` is the start of the function `symbol` names.
fn with_dwarf(mut callee: Callee, symbol: &Symbol, target: u64) -> Callee {
    if callee.proto.is_none() && symbol.offset == 0 && !symbol.name.is_empty() {
        callee.proto = dwarf::for_function(target, &symbol.name);
    }
    callee
}

#[vm_event(EXEC_TRANSFER_CALL)]
fn on_call(vm: &mut VmRef, _state: &VmState, gpr: &mut GprState, fpr: &mut FprState) -> VmAction {
    let (target, rsp) = (gpr.rip, gpr.rsp);
    let mut all = lock(&CALLS);
    let calls = tracer(&mut all, vm);
    let mut lazy = lock(&LAZY);
    if !calls.knows(target) {
        let callee = name_target(vm, target, || lazy.slot_name(target, rsp));
        calls.set_callee(target, callee);
    }
    let pending = lazy.pending(target, rsp);
    drop(lazy);
    // The stack arguments start above the return address, and above the two words a PLT
    // stub pushes for the resolver.
    let stack = rsp + if pending.is_some() { 24 } else { 8 };
    let regs = Regs {
        gp: [gpr.rdi, gpr.rsi, gpr.rdx, gpr.rcx, gpr.r8, gpr.r9],
        xmm: [
            fpr.xmm0, fpr.xmm1, fpr.xmm2, fpr.xmm3, fpr.xmm4, fpr.xmm5, fpr.xmm6, fpr.xmm7,
        ],
        stack,
    };
    let decoded = args::decode_args(calls.proto(target, pending.as_ref()), &regs, &SelfMemory);
    TRACE.with(|w| calls.call(w, target, decoded, rsp, pending));
    VmAction::Continue
}

#[vm_event(EXEC_TRANSFER_RETURN)]
fn on_return(vm: &mut VmRef, _state: &VmState, gpr: &mut GprState, fpr: &mut FprState) -> VmAction {
    let mut all = lock(&CALLS);
    let calls = tracer(&mut all, vm);
    let (rax, xmm0) = (gpr.rax, fpr.xmm0);
    let value = |p: Option<&'static protos::Proto>| {
        args::decode_return(p.map(|p| p.ret), rax, xmm0, &SelfMemory)
    };
    let resolve = |l: &calls::Lazy| {
        let bound = lock(&LAZY).resolved(l)?;
        Some((bound, name_target(vm, bound, || Some(l.name.clone()))))
    };
    TRACE.with(|w| calls.ret(w, gpr.rsp, value, resolve));
    VmAction::Continue
}

#[plugin_fini]
fn fini() {
    let calls = lock_for_fini(&CALLS, FINI_WAIT);
    TRACE.finish(|w| match calls {
        Some(mut all) => {
            let mut tids: Vec<u32> = all.keys().copied().collect();
            tids.sort_unstable();
            for tid in tids {
                all.get_mut(&tid).expect("listed").finish(w)?;
            }
            Ok(())
        }
        None => {
            use std::io::Write;
            let why = "calls in progress unknown: a callback was interrupted at exit";
            if JSONL.load(Ordering::Relaxed) {
                qbdi_plugin_support::json::Object::new(w)?
                    .str("event", "error")?
                    .str("message", why)?
                    .end()?;
                writeln!(w)
            } else {
                writeln!(w, "# {why}")
            }
        }
    });
}
