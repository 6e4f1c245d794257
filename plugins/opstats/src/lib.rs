//! `opstats`: how many instructions ran, and how often each mnemonic did.
//!
//! Cheap: a block's mnemonics are read once, when the block is new; translated code counts
//! each block's entries itself (an inline counter, no callback); at exit the counts are
//! multiplied out (see [`stats`]). A block left in the middle (a fault, a `longjmp` from a
//! callee) still counts whole.
//!
//! Options: `out=PATH` (default `opstats.<pid>.log`, `-` for stderr), `top=N` (only the N
//! most frequent mnemonics), `format=text|json` (the text report, the default, or one
//! JSON document).
//!
//! # `format=json`
//!
//! The report is one JSON object (and a newline):
//! - `instructions` (integer): instructions executed (the text's `instructions N`);
//! - `mnemonics` (array of objects): the mnemonics the text lists, in its order (most
//!   frequent first, ties by name; the `top` first ones), each with:
//!   - `mnemonic` (string): the mnemonic as the disassembler names it (`"MOV"`;
//!     `"(unknown)"` for code the Vm could not analyse);
//!   - `count` (integer): times an instruction with this mnemonic ran;
//!   - `percent` (number): `count` in percent of `instructions`, two decimals as in the
//!     text;
//! - `other` (object or null): the mnemonics `top` left out (the text's last line
//!   `# K other mnemonics: N instructions P%`), `null` when none was:
//!   - `mnemonics` (integer): K, how many;
//!   - `count` (integer): N, the instructions they account for;
//!   - `percent` (number): P, in percent of `instructions`.

#![warn(missing_docs)]

use std::hash::BuildHasherDefault;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::{Mutex, OnceLock};

use qbdi_plugin_support::hash::AddrMap;
use qbdi_plugin_support::output::{Output, warn};
use qbdi_plugin_support::sync::{FINI_WAIT, lock, lock_for_fini};
use qbdi_sdk::prelude::*;

pub mod stats;

use stats::BlockStats;

/// The plugin's name.
const NAME: &str = "opstats";

qbdi_sdk::plugin!(
    name: "opstats",
    description: "instruction count and mnemonic histogram",
    options: [
        ("out", "file to write (- for stderr)", "opstats.<pid>.log"),
        ("top", "only the N most frequent mnemonics", "all"),
        ("format", "text (the report as text) or json (one JSON document)", "text"),
    ],
);

/// Where to write, from init.
static OUTPUT: OnceLock<Output> = OnceLock::new();
/// The `top` option (`usize::MAX`: all).
static TOP: AtomicUsize = AtomicUsize::new(usize::MAX);
/// The `format` option: `json`.
static JSON: AtomicBool = AtomicBool::new(false);
/// Entries of every block, counted inline by translated code.
static COUNTER: OnceLock<BlockCounter> = OnceLock::new();
/// Every block seen, by `[start, end)`.
static BLOCKS: Mutex<AddrMap<(u64, u64), BlockStats>> =
    Mutex::new(AddrMap::with_hasher(BuildHasherDefault::new()));

/// Mnemonic recorded for the rest of a block the Vm has no analysis for.
const UNKNOWN: &str = "(unknown)";

#[plugin_init]
fn init(vm: &mut VmRef, options: &PluginOptions) -> Result<(), String> {
    let _ = OUTPUT.set(Output::from_options(NAME, options)?);
    JSON.store(stats::parse_format(options.get("format"))?, Relaxed);
    if let Some(top) = options.parse::<usize>("top")? {
        TOP.store(top, Relaxed);
    }
    let _ = COUNTER.set(qbdi_plugin_support::counts::block_counter(vm)?);
    Ok(())
}

/// The mnemonics of the block `[start, end)`, from the Vm's analyses.
fn block_mnemonics(vm: &mut VmRef, start: u64, end: u64) -> Vec<&'static str> {
    let mut mnemonics = Vec::new();
    let mut addr = start;
    while addr < end {
        match vm.cached_inst_analysis(addr, AnalysisType::INSTRUCTION) {
            Some(a) if a.inst_size > 0 => {
                mnemonics.push(a.mnemonic);
                addr += u64::from(a.inst_size);
            }
            _ => {
                mnemonics.push(UNKNOWN);
                break;
            }
        }
    }
    mnemonics
}

/// A new block: its mnemonics (its entries are counted inline, see [`COUNTER`]).
#[vm_event(BASIC_BLOCK_NEW)]
fn on_new_block(
    vm: &mut VmRef,
    state: &VmState,
    _gpr: &mut GprState,
    _fpr: &mut FprState,
) -> VmAction {
    let key = (state.basic_block_start, state.basic_block_end);
    lock(&BLOCKS).entry(key).or_insert_with(|| BlockStats {
        mnemonics: block_mnemonics(vm, key.0, key.1),
        entries: 0,
    });
    VmAction::Continue
}

#[plugin_fini]
fn fini() {
    let (total, rows) = match lock_for_fini(&BLOCKS, FINI_WAIT) {
        Some(mut blocks) => {
            for c in COUNTER.get().map(BlockCounter::counts).unwrap_or_default() {
                // A block counted but never reported new: its instructions are unknown.
                let b = blocks.entry((c.start, c.end)).or_insert(BlockStats {
                    mnemonics: vec![UNKNOWN],
                    entries: 0,
                });
                b.entries = c.count;
            }
            stats::histogram(blocks.values())
        }
        None => {
            warn(NAME, "block table still locked at exit: no statistics");
            (0, Vec::new())
        }
    };
    let top = Some(TOP.load(Relaxed)).filter(|&t| t != usize::MAX);
    let report = if JSON.load(Relaxed) {
        stats::render_json(total, &rows, top)
    } else {
        stats::render(total, &rows, top)
    };
    let output = OUTPUT.get().cloned().unwrap_or(Output::default_for(NAME));
    output.write_all(NAME, report.as_bytes());
}
