//! Counts executed basic blocks with one BASIC_BLOCK_ENTRY callback that does a relaxed
//! `fetch_add`, and writes the total to `out` at fini: the smallest useful plugin, whose
//! cost per block the programs benchmark reports (`count` column).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use qbdi_sdk::prelude::*;

qbdi_sdk::plugin!(
    name: "count",
    description: "counts executed basic blocks",
    options: [("out", "file the total is written to (- for stderr)", "-")]
);

static BLOCKS: AtomicU64 = AtomicU64::new(0);
static OUT: OnceLock<String> = OnceLock::new();

#[plugin_init]
fn init(_vm: &mut VmRef, options: &PluginOptions) -> Result<(), String> {
    let _ = OUT.set(options.get("out").unwrap_or("-").to_owned());
    Ok(())
}

#[vm_event(BASIC_BLOCK_ENTRY)]
fn on_block(
    _vm: &mut VmRef,
    _state: &VmState,
    _gpr: &mut GprState,
    _fpr: &mut FprState,
) -> VmAction {
    BLOCKS.fetch_add(1, Relaxed);
    VmAction::Continue
}

#[plugin_fini]
fn fini() {
    let line = format!("blocks={}\n", BLOCKS.load(Relaxed));
    match OUT.get().map(String::as_str) {
        Some("-") | None => eprint!("{line}"),
        Some(path) => {
            let _ = std::fs::write(path, line);
        }
    }
}
