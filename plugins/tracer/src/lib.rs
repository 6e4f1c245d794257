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
//! - `max=N`: stop after N instructions.
//!
//! The callback is registered at init: on every instrumented instruction, or on the
//! ranges the filters select. The trace streams through a 1 MiB buffer, flushed at exit.

#![warn(missing_docs)]

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

use qbdi_plugin_support::budget::{Budget, Take};
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
    ],
);

/// The trace.
static TRACE: Stream = Stream::new(NAME);
/// The `max` option.
static BUDGET: Budget = Budget::new();
/// The `regs` option.
static REGS: AtomicBool = AtomicBool::new(false);

#[plugin_init]
fn init(vm: &mut VmRef, options: &PluginOptions) -> Result<(), String> {
    let output = Output::from_options(NAME, options)?;
    let max = options.parse::<u64>("max")?;
    REGS.store(options.flag("regs"), Relaxed);
    BUDGET.set_limit(max);
    let mappings = maps::read_self_maps().map_err(|e| format!("/proc/self/maps: {e}"))?;
    let ranges = filter::code_ranges(options, &mappings)?;
    TRACE.open(&output)?;
    qbdi_plugin_support::fork::on_fork_child(|| TRACE.reopen_in_fork_child());
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
        return VmAction::Continue;
    }
    let regs = REGS.load(Relaxed).then_some(&*gpr);
    let analysis = vm.inst_analysis(AnalysisType::DISASSEMBLY);
    TRACE.with(|w| line::write_line(w, analysis.address, &analysis.disassembly, regs));
    if take == Take::Last {
        BUDGET.stop(vm);
    }
    VmAction::Continue
}

#[plugin_fini]
fn fini() {
    TRACE.finish(|w| match BUDGET.limit() {
        Some(max) if BUDGET.used() >= max => {
            use std::io::Write;
            writeln!(w, "# stopped after {max} instructions (max={max})")
        }
        _ => Ok(()),
    });
}
