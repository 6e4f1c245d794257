//! `memtrace`: a memory access trace, one line per access of the instrumented code (see
//! [`line`](mod@line) for the text format).
//!
//! Options:
//! - `out=PATH`: file to write (default `memtrace.<pid>.log`, `-` for stderr);
//! - `range=0xA-0xB` (repeatable): only accesses that touch `[A, B)`;
//! - `max=N`: stop after N accesses;
//! - `format=text|jsonl`: lines of text (the default) or one JSON object per line.
//!
//! Memory callbacks run after each instruction with accesses (or, with `range`, only after
//! the instructions that touch a range); the trace streams through a 1 MiB buffer, flushed
//! at exit.
//!
//! # `format=jsonl`
//!
//! Every line is one JSON object; its `event` field says which kind. Addresses and values
//! are strings of hexadecimal (`"0x401000"`: JSON readers lose integers above 2^53).
//!
//! `"event":"access"`, one per access (a text line):
//! - `tid` (integer or null): the thread, for a thread other than the main one (the text
//!   line's `[tid N] ` mark); `null` on the main thread;
//! - `inst` (string, hex): address of the instruction that made the access;
//! - `type` (string): `"R"`, `"W"` or `"RW"`;
//! - `address` (string, hex): the address accessed;
//! - `size` (integer): bytes accessed (0 when unknown, see `flags`);
//! - `value` (string, hex, or null): the value read or written, `null` when not known
//!   (the text's `value ?`);
//! - `flags` (array of strings): `"unknown_size"`, `"minimum_size"`, `"unknown_value"`
//!   for an approximate access, `[]` for an exact one.
//!
//! `"event":"stopped"`, the last line when `max=N` stopped the trace (the text's
//! `# stopped after N accesses (max=N)`):
//! - `max` (integer): N, the number of accesses written.

#![warn(missing_docs)]

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

use qbdi_plugin_support::budget::{Budget, Take};
use qbdi_plugin_support::json::Format;
use qbdi_plugin_support::output::{Output, Stream};
use qbdi_sdk::parse_address_range;
use qbdi_sdk::prelude::*;

pub mod line;

/// The plugin's name.
const NAME: &str = "memtrace";

qbdi_sdk::plugin!(
    name: "memtrace",
    description: "memory access trace: instruction, address, size and value of every access",
    options: [
        ("out", "file to write (- for stderr)", "memtrace.<pid>.log"),
        ("range", "only the accesses that touch 0xSTART-0xEND (repeatable)", "all"),
        ("max", "stop after this many accesses", "unlimited"),
        ("format", "text (lines of text) or jsonl (one JSON object per line)", "text"),
    ],
);

/// The trace.
static TRACE: Stream = Stream::new(NAME);
/// The `max` option.
static BUDGET: Budget = Budget::new();
/// The `format` option: `jsonl`.
static JSONL: AtomicBool = AtomicBool::new(false);

#[plugin_init]
fn init(vm: &mut VmRef, options: &PluginOptions) -> Result<(), String> {
    let output = Output::from_options(NAME, options)?;
    let format = Format::parse(NAME, options.get("format"))?;
    JSONL.store(format == Format::Jsonl, Relaxed);
    let max = options.parse::<u64>("max")?;
    BUDGET.set_limit(max);
    let ranges = options
        .get_all("range")
        .map(|r| parse_address_range(r).map_err(|e| format!("range={r}: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    TRACE.open(&output)?;
    qbdi_plugin_support::fork::on_fork_child(|| TRACE.reopen_in_fork_child());
    if max == Some(0) {
        return Ok(());
    }
    if ranges.is_empty() {
        let id = vm
            .add_mem_access_cb(
                MemoryAccessType::READ_WRITE,
                |vm, _gpr, _fpr| record(vm, |_| true),
                PRIORITY_DEFAULT,
            )
            .map_err(|e| e.to_string())?;
        BUDGET.add_callback(id);
    }
    for (i, &(start, end)) in ranges.iter().enumerate() {
        let all = ranges.clone();
        let id = vm
            .add_mem_range_cb(
                start,
                end,
                MemoryAccessType::READ_WRITE,
                move |vm, _gpr, _fpr| record(vm, |a| line::first_range(a, &all) == Some(i)),
            )
            .map_err(|e| format!("range {start:#x}-{end:#x}: {e}"))?;
        BUDGET.add_callback(id);
    }
    Ok(())
}

/// Writes the current instruction's accesses that `keep` accepts.
fn record(vm: &mut VmRef, keep: impl Fn(&MemoryAccess) -> bool) -> VmAction {
    if BUDGET.exhausted() {
        // Spent on another thread: this thread's callbacks go too.
        BUDGET.stop(vm);
        return VmAction::Continue;
    }
    let mut last = false;
    // Lines of threads other than the main one start with `[tid N] ` (as strace -f).
    let mark = (!vm.is_main_thread()).then(|| vm.thread_id());
    let jsonl = JSONL.load(Relaxed);
    TRACE.with(|w| {
        for a in vm.inst_memory_access().iter().filter(|a| keep(a)) {
            match BUDGET.take() {
                Take::Over => break,
                Take::Last => last = true,
                Take::Record => {}
            }
            if jsonl {
                line::write_access_json(w, a, mark)?;
                continue;
            }
            if let Some(tid) = mark {
                write!(w, "[tid {tid}] ")?;
            }
            line::write_access(w, a)?;
        }
        Ok(())
    });
    if last {
        BUDGET.stop(vm);
    }
    VmAction::Continue
}

#[plugin_fini]
fn fini() {
    TRACE.finish(|w| match BUDGET.limit() {
        Some(max) if BUDGET.used() >= max => {
            if JSONL.load(Relaxed) {
                qbdi_plugin_support::json::write_stopped(w, max)
            } else {
                writeln!(w, "# stopped after {max} accesses (max={max})")
            }
        }
        _ => Ok(()),
    });
}
