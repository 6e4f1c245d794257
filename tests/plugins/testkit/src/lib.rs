//! qbdi's own test plugin. It counts blocks, calls and exec transfers (and distinct new
//! blocks: the blocks translated, whichever thread's or re-entry's Vm translated them) and
//! appends one report
//! line per fini to `out`; on request it refuses to start, or panics in init, in a block
//! callback or in fini, so that the host's handling of each case can be tested.

use std::collections::HashSet;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, OnceLock};

use qbdi_sdk::prelude::*;

qbdi_sdk::plugin!(
    name: "testkit",
    description: "qbdi's test plugin: counts, and misbehaves on request",
    options: [
        ("out", "file the fini appends its report line to", ""),
        ("tag", "first word of the report line", "testkit"),
        ("panic", "panic in: init, block, fini", ""),
        ("after", "with panic=block: panic at this block entry", "1"),
        ("refuse", "refuse to start, with this message", ""),
        ("transfers", "count exec transfers (a callback registered at init)", ""),
        ("stderr", "also print the report line on stderr", ""),
    ]
);

struct Config {
    out: Option<String>,
    stderr: bool,
    tag: String,
    panic: String,
    after: u64,
}

static CONFIG: OnceLock<Config> = OnceLock::new();
static BLOCKS: AtomicU64 = AtomicU64::new(0);
static NEW_BLOCKS: Mutex<Option<HashSet<u64>>> = Mutex::new(None);
static CALLS: AtomicU64 = AtomicU64::new(0);
static TRANSFERS: AtomicU64 = AtomicU64::new(0);

#[plugin_init]
fn init(vm: &mut VmRef, options: &PluginOptions) -> Result<(), String> {
    if let Some(message) = options.get("refuse") {
        return Err(message.to_owned());
    }
    let panic = options.get("panic").unwrap_or_default().to_owned();
    if panic == "init" {
        panic!("testkit panics in init, as asked");
    }
    if options.flag("transfers") {
        vm.add_vm_event_cb(VmEvent::EXEC_TRANSFER_CALL, |_vm, _state, _gpr, _fpr| {
            TRANSFERS.fetch_add(1, Relaxed);
            VmAction::Continue
        })
        .map_err(|e| e.to_string())?;
    }
    let config = Config {
        out: options.get("out").map(str::to_owned),
        stderr: options.flag("stderr"),
        tag: options.get("tag").unwrap_or("testkit").to_owned(),
        panic,
        after: options.parse("after")?.unwrap_or(1),
    };
    let _ = CONFIG.set(config);
    Ok(())
}

#[vm_event(BASIC_BLOCK_ENTRY)]
fn on_block(
    _vm: &mut VmRef,
    _state: &VmState,
    _gpr: &mut GprState,
    _fpr: &mut FprState,
) -> VmAction {
    let n = BLOCKS.fetch_add(1, Relaxed) + 1;
    if let Some(c) = CONFIG.get()
        && c.panic == "block"
        && n == c.after
    {
        panic!("testkit panics at block {n}, as asked");
    }
    VmAction::Continue
}

#[vm_event(BASIC_BLOCK_NEW)]
fn on_new_block(
    _vm: &mut VmRef,
    state: &VmState,
    _gpr: &mut GprState,
    _fpr: &mut FprState,
) -> VmAction {
    if let Ok(mut set) = NEW_BLOCKS.lock() {
        set.get_or_insert_with(HashSet::new)
            .insert(state.basic_block_start);
    }
    VmAction::Continue
}

#[inst_callback(preinst, mnemonic = "CALL*")]
fn on_call(_vm: &mut VmRef, _gpr: &mut GprState, _fpr: &mut FprState) -> VmAction {
    CALLS.fetch_add(1, Relaxed);
    VmAction::Continue
}

#[plugin_fini]
fn fini() {
    let Some(c) = CONFIG.get() else { return };
    let line = format!(
        "{} pid={} blocks={} new={} calls={} transfers={}\n",
        c.tag,
        std::process::id(),
        BLOCKS.load(Relaxed),
        NEW_BLOCKS
            .lock()
            .map_or(0, |s| s.as_ref().map_or(0, HashSet::len)),
        CALLS.load(Relaxed),
        TRANSFERS.load(Relaxed)
    );
    if c.stderr {
        eprint!("{line}");
    }
    if let Some(out) = &c.out
        && let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(out)
    {
        let _ = f.write_all(line.as_bytes());
    }
    if c.panic == "fini" {
        panic!("testkit panics in fini, as asked");
    }
}
