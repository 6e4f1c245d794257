//! `drcov`: basic block coverage in drcov format, version 2, as Lighthouse, bncov and
//! DynamoRIO's `drcov2lcov` read it.
//!
//! Every block the Vm translates (BASIC_BLOCK_NEW) is kept once; at exit the blocks are
//! assigned to the files with code mapped at that time (`/proc/self/maps`) and written as offsets from
//! each file's base. Blocks outside any mapped file (JIT code, the vdso) are dropped.
//!
//! Options: `out=PATH` (default `drcov.<pid>.log`, `-` for stderr).

#![warn(missing_docs)]

use std::hash::BuildHasherDefault;
use std::sync::{Mutex, OnceLock};

use qbdi_plugin_support::hash::AddrMap;
use qbdi_plugin_support::maps;
use qbdi_plugin_support::output::{Output, warn};
use qbdi_plugin_support::sync::{FINI_WAIT, lock, lock_for_fini};
use qbdi_sdk::prelude::*;

pub mod format;

/// The plugin's name.
const NAME: &str = "drcov";

qbdi_sdk::plugin!(
    name: "drcov",
    description: "basic block coverage in drcov format (Lighthouse, bncov, drcov2lcov)",
    options: [("out", "file to write (- for stderr)", "drcov.<pid>.log")],
);

/// Where to write, from init.
static OUTPUT: OnceLock<Output> = OnceLock::new();

/// The blocks translated so far: start -> end (the largest end seen for that start).
static BLOCKS: Mutex<AddrMap<u64, u64>> =
    Mutex::new(AddrMap::with_hasher(BuildHasherDefault::new()));

#[plugin_init]
fn init(_vm: &mut VmRef, options: &PluginOptions) -> Result<(), String> {
    let _ = OUTPUT.set(Output::from_options(NAME, options)?);
    Ok(())
}

#[vm_event(BASIC_BLOCK_NEW)]
fn on_new_block(
    _vm: &mut VmRef,
    state: &VmState,
    _gpr: &mut GprState,
    _fpr: &mut FprState,
) -> VmAction {
    let end = state.basic_block_end;
    lock(&BLOCKS)
        .entry(state.basic_block_start)
        .and_modify(|e| *e = (*e).max(end))
        .or_insert(end);
    VmAction::Continue
}

#[plugin_fini]
fn fini() {
    let blocks: Vec<(u64, u64)> = match lock_for_fini(&BLOCKS, FINI_WAIT) {
        Some(b) => b.iter().map(|(&s, &e)| (s, e)).collect(),
        None => {
            warn(NAME, "block table still locked at exit: writing no blocks");
            Vec::new()
        }
    };
    let modules = match maps::read_self_maps() {
        Ok(m) => maps::code_modules(&m),
        Err(e) => {
            warn(NAME, &format!("cannot read /proc/self/maps: {e}"));
            Vec::new()
        }
    };
    let records = format::records(&modules, &blocks);
    let text = format::render(&modules, &records);
    let output = OUTPUT.get().cloned().unwrap_or(Output::default_for(NAME));
    output.write_all(NAME, &text);
}
