//! `tracer`: an instruction trace, one line per executed instruction:
//! `0x<address> <disassembly>`, optionally with the general-purpose registers before it.
//!
//! Options:
//! - `out=PATH`: file to write (default `tracer.<pid>.log`, `-` for stderr);
//! - `regs`: append the registers (` | rax=0x.. ... eflags=0x..`);
//! - `module=NAME` (basename or path, repeatable): trace only that file's code (it must be
//!   mapped when the plugin starts, and instrumented: `qbdi run --module NAME` for a
//!   library);
//! - `range=0xA-0xB` (repeatable): trace only `[A, B)`;
//! - `max=N`: stop after N instructions;
//! - `format=text|jsonl`: lines of text (the default) or one JSON object per line.
//!
//! The callback is registered at init: on every instrumented instruction, or on the
//! ranges the filters select. The trace streams through a 1 MiB buffer, flushed at exit.
//! Threads other than the main one write to files of their own (`PATH.tid<N>`); with
//! `out=-` their lines go to stderr too, marked `[tid N] `.
//!
//! # `format=jsonl`
//!
//! Every line is one JSON object; its `event` field says which kind. Addresses and
//! register values are strings of hexadecimal (`"0x401000"`: JSON readers lose integers
//! above 2^53).
//!
//! `"event":"instruction"`, one per executed instruction (a text line):
//! - `tid` (integer or null): the thread, on a line the text form marks `[tid N] ` (a
//!   thread other than the main one, with `out=-`); `null` otherwise;
//! - `address` (string, hex): the instruction's address;
//! - `disassembly` (string): the instruction, as in the text line (Intel syntax);
//! - `regs` (object, or null without the `regs` option): the general-purpose registers
//!   before the instruction, `rax`, `rbx`, `rcx`, `rdx`, `rsi`, `rdi`, `r8` to `r15`,
//!   `rbp`, `rsp`, `eflags`, each a string of hex.
//!
//! `"event":"stopped"`, the last line when `max=N` stopped the trace (the text's
//! `# stopped after N instructions (max=N)`):
//! - `max` (integer): N, the number of instructions written.

#![warn(missing_docs)]

use std::hash::BuildHasherDefault;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Mutex, OnceLock};

use qbdi_plugin_support::hash::AddrMap;
use qbdi_plugin_support::output::warn;
use qbdi_plugin_support::sync::{FINI_WAIT, lock, lock_for_fini};

use qbdi_plugin_support::budget::{Budget, Take};
use qbdi_plugin_support::json::Format;
use qbdi_plugin_support::maps;
use qbdi_plugin_support::output::{Output, Stream};
use qbdi_sdk::prelude::*;

pub mod filter;
pub mod line;

/// The plugin's name.
const NAME: &str = "tracer";

qbdi_sdk::plugin!(
    name: "tracer",
    description: "instruction trace: address and disassembly of every executed instruction",
    options: [
        ("out", "file to write (- for stderr)", "tracer.<pid>.log"),
        ("regs", "also print the general-purpose registers before each instruction", "off"),
        ("module", "trace only this module's code (basename or path; repeatable)", "all"),
        ("range", "trace only the code in 0xSTART-0xEND (repeatable)", "all"),
        ("max", "stop after this many instructions", "unlimited"),
        ("format", "text (lines of text) or jsonl (one JSON object per line)", "text"),
    ],
);

/// The trace.
static TRACE: Stream = Stream::new(NAME);
/// The `max` option.
static BUDGET: Budget = Budget::new();
/// The `regs` option.
static REGS: AtomicBool = AtomicBool::new(false);
/// The `format` option: `jsonl`.
static JSONL: AtomicBool = AtomicBool::new(false);
/// Where the main thread's trace goes.
static OUTPUT: OnceLock<Output> = OnceLock::new();
/// The traces of the other threads, one file each (`PATH.tid<N>`), by thread id.
static THREAD_TRACES: Mutex<AddrMap<u32, &'static Stream>> =
    Mutex::new(AddrMap::with_hasher(BuildHasherDefault::new()));

/// The trace the thread `vm` runs on writes to, and the thread id to mark its lines with
/// (stderr is shared: `[tid N] ` marks the lines of threads other than the main one).
fn trace_of(vm: &VmRef) -> (&'static Stream, Option<u32>) {
    if vm.is_main_thread() {
        return (&TRACE, None);
    }
    let tid = vm.thread_id();
    let Some(path) = OUTPUT.get().and_then(|o| o.thread_path(tid)) else {
        return (&TRACE, Some(tid));
    };
    let mut traces = lock(&THREAD_TRACES);
    let stream = traces.entry(tid).or_insert_with(|| {
        let stream: &'static Stream = Box::leak(Box::new(Stream::new(NAME)));
        if let Err(e) = stream.open(&Output::File(path)) {
            warn(NAME, &format!("thread {tid}: {e}"));
        }
        stream
    });
    (stream, None)
}

#[plugin_init]
fn init(vm: &mut VmRef, options: &PluginOptions) -> Result<(), String> {
    let output = Output::from_options(NAME, options)?;
    let format = Format::parse(NAME, options.get("format"))?;
    JSONL.store(format == Format::Jsonl, Relaxed);
    let max = options.parse::<u64>("max")?;
    REGS.store(options.flag("regs"), Relaxed);
    BUDGET.set_limit(max);
    let mappings = maps::read_self_maps().map_err(|e| format!("/proc/self/maps: {e}"))?;
    let ranges = filter::code_ranges(options, &mappings)?;
    TRACE.open(&output)?;
    let _ = OUTPUT.set(output);
    qbdi_plugin_support::fork::on_fork_child(|| {
        TRACE.reopen_in_fork_child();
        // The parent's other threads do not exist in the child; their buffered lines stay
        // unwritten here (the parent writes them).
        if let Ok(mut traces) = THREAD_TRACES.try_lock() {
            traces.clear();
        }
    });
    if max == Some(0) {
        return Ok(());
    }
    match ranges {
        None => {
            let id = vm
                .add_code_cb(InstPosition::PreInst, on_inst, PRIORITY_DEFAULT)
                .map_err(|e| e.to_string())?;
            BUDGET.add_callback(id);
        }
        Some(ranges) => {
            for (start, end) in ranges {
                let id = vm
                    .add_code_range_cb(start, end, InstPosition::PreInst, on_inst, PRIORITY_DEFAULT)
                    .map_err(|e| format!("{start:#x}-{end:#x}: {e}"))?;
                BUDGET.add_callback(id);
            }
        }
    }
    Ok(())
}

/// Writes the line of the current instruction.
fn on_inst(vm: &mut VmRef, gpr: &mut GprState, _fpr: &mut FprState) -> VmAction {
    let take = BUDGET.take();
    if take == Take::Over {
        // Spent (on another thread): this thread's callbacks go too.
        BUDGET.stop(vm);
        return VmAction::Continue;
    }
    let regs = REGS.load(Relaxed).then_some(&*gpr);
    let (trace, mark) = trace_of(vm);
    let analysis = vm.inst_analysis(AnalysisType::DISASSEMBLY);
    trace.with(|w| {
        if JSONL.load(Relaxed) {
            return line::write_line_json(w, mark, analysis.address, &analysis.disassembly, regs);
        }
        if let Some(tid) = mark {
            write!(w, "[tid {tid}] ")?;
        }
        line::write_line(w, analysis.address, &analysis.disassembly, regs)
    });
    if take == Take::Last {
        BUDGET.stop(vm);
    }
    VmAction::Continue
}

#[plugin_fini]
fn fini() {
    if let Some(traces) = lock_for_fini(&THREAD_TRACES, FINI_WAIT) {
        for stream in traces.values() {
            stream.finish(|_| Ok(()));
        }
    }
    TRACE.finish(|w| match BUDGET.limit() {
        Some(max) if BUDGET.used() >= max => {
            if JSONL.load(Relaxed) {
                qbdi_plugin_support::json::write_stopped(w, max)
            } else {
                writeln!(w, "# stopped after {max} instructions (max={max})")
            }
        }
        _ => Ok(()),
    });
}
