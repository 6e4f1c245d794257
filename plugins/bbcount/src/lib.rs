//! `bbcount`: how many times each basic block ran, hottest first (see [`report`]).
//!
//! A block is known by its start address; its symbol is resolved once, when it is new
//! (fini runs without a Vm to ask). Executions are counted inline by translated code (no
//! callback per block, see `VmRef::add_block_counter`).
//!
//! Options: `out=PATH` (default `bbcount.<pid>.log`, `-` for stderr), `top=N` (only the N
//! hottest blocks), `format=text|json` (the text report, the default, or one JSON
//! document).
//!
//! # `format=json`
//!
//! The report is one JSON object (and a newline). Addresses are strings of hexadecimal
//! (`"0x401000"`: JSON readers lose integers above 2^53).
//! - `entered_blocks` (integer): blocks entered at least once (the text's
//!   `# N blocks entered ...`), all of them, whatever `top`;
//! - `entries` (integer): the sum of their counts (the text's `... entered T times`);
//! - `blocks` (array of objects): the blocks the text lists, in its order (highest count
//!   first, ties by address; the `top` first ones), each with:
//!   - `count` (integer): times the block was entered;
//!   - `start` (string, hex): its first instruction's address;
//!   - `end` (string, hex): the end of its last instruction (exclusive);
//!   - `symbol` (string or null): the symbol containing `start`, `null` when none (`?`);
//!   - `offset` (integer or null): `start`'s offset from `symbol` (`null` with no symbol);
//!   - `module` (string or null): basename of the file mapped at `start`, `null` when
//!     none (`?`).

#![warn(missing_docs)]

use std::hash::BuildHasherDefault;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::{Mutex, OnceLock};

use qbdi_plugin_support::hash::AddrMap;
use qbdi_plugin_support::output::{Output, warn};
use qbdi_plugin_support::sync::{FINI_WAIT, lock, lock_for_fini};
use qbdi_sdk::prelude::*;

pub mod report;

use report::Block;

/// The plugin's name.
const NAME: &str = "bbcount";

qbdi_sdk::plugin!(
    name: "bbcount",
    description: "execution count per basic block, hottest first",
    options: [
        ("out", "file to write (- for stderr)", "bbcount.<pid>.log"),
        ("top", "only the N hottest blocks", "all"),
        ("format", "text (the report as text) or json (one JSON document)", "text"),
    ],
);

/// Where to write, from init.
static OUTPUT: OnceLock<Output> = OnceLock::new();
/// The `top` option (`usize::MAX`: all).
static TOP: AtomicUsize = AtomicUsize::new(usize::MAX);
/// The `format` option: `json`.
static JSON: AtomicBool = AtomicBool::new(false);
/// Executions of every block, counted inline by translated code.
static COUNTER: OnceLock<BlockCounter> = OnceLock::new();
/// Every block seen, by start address.
static BLOCKS: Mutex<AddrMap<u64, Block>> =
    Mutex::new(AddrMap::with_hasher(BuildHasherDefault::new()));

#[plugin_init]
fn init(vm: &mut VmRef, options: &PluginOptions) -> Result<(), String> {
    let _ = OUTPUT.set(Output::from_options(NAME, options)?);
    JSON.store(report::parse_format(options.get("format"))?, Relaxed);
    if let Some(top) = options.parse::<usize>("top")? {
        TOP.store(top, Relaxed);
    }
    let _ = COUNTER.set(qbdi_plugin_support::counts::block_counter(vm)?);
    Ok(())
}

/// A new block: its extent and symbol (counting is inline, see [`COUNTER`]).
#[vm_event(BASIC_BLOCK_NEW)]
fn on_new_block(
    vm: &mut VmRef,
    state: &VmState,
    _gpr: &mut GprState,
    _fpr: &mut FprState,
) -> VmAction {
    let start = state.basic_block_start;
    let mut blocks = lock(&BLOCKS);
    match blocks.get_mut(&start) {
        Some(b) => b.end = state.basic_block_end,
        None => {
            let block = Block {
                end: state.basic_block_end,
                count: 0,
                symbol: vm.symbolize(start),
            };
            blocks.insert(start, block);
        }
    }
    VmAction::Continue
}

#[plugin_fini]
fn fini() {
    let text = match lock_for_fini(&BLOCKS, FINI_WAIT) {
        Some(mut blocks) => {
            // The counters are per translated extent: a start translated with two ends
            // (a block split differently after a flush) adds up.
            for c in COUNTER.get().map(BlockCounter::counts).unwrap_or_default() {
                let b = blocks.entry(c.start).or_insert(Block {
                    end: c.end,
                    count: 0,
                    symbol: None,
                });
                b.count += c.count;
            }
            // Blocks a fork child knows from its parent but never ran are not reported.
            let list: Vec<(u64, &Block)> = blocks
                .iter()
                .filter(|(_, b)| b.count > 0)
                .map(|(&s, b)| (s, b))
                .collect();
            let top = Some(TOP.load(Relaxed)).filter(|&t| t != usize::MAX);
            if JSON.load(Relaxed) {
                report::render_json(&list, top)
            } else {
                report::render(&list, top)
            }
        }
        None => {
            warn(NAME, "block table still locked at exit: no counts");
            return;
        }
    };
    let output = OUTPUT.get().cloned().unwrap_or(Output::default_for(NAME));
    output.write_all(NAME, text.as_bytes());
}
