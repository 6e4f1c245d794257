//! A complete plugin using every attribute, as a plugin author writes it (no unsafe, state
//! in atomics and a Mutex). `main` stands in for the host: it reads the descriptor.
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use qbdi_sdk::prelude::*;

qbdi_sdk::plugin!(
    name: "everything",
    description: "uses every attribute",
    options: [("out", "file to write", "everything.log")],
);

static CALLS: AtomicU64 = AtomicU64::new(0);
static BLOCKS: AtomicU64 = AtomicU64::new(0);
static OUT: Mutex<String> = Mutex::new(String::new());

#[inst_callback(preinst, mnemonic = "CALL*", priority = 10)]
fn on_call(_vm: &mut VmRef, _gpr: &mut GprState, _fpr: &mut FprState) -> VmAction {
    CALLS.fetch_add(1, Relaxed);
    VmAction::Continue
}

#[inst_callback(postinst, code = "Retnq")]
fn after_ret(_vm: &mut VmRef, gpr: &mut GprState, _fpr: &mut FprState) -> VmAction {
    let _ = gpr.rip;
    VmAction::Continue
}

#[vm_event(BASIC_BLOCK_ENTRY | BASIC_BLOCK_EXIT)]
fn on_block(_vm: &mut VmRef, state: &VmState, _gpr: &mut GprState, _fpr: &mut FprState) -> VmAction {
    if state.event.contains(VmEvent::BASIC_BLOCK_ENTRY) {
        BLOCKS.fetch_add(1, Relaxed);
    }
    VmAction::Continue
}

#[mem_access(write, priority = -5)]
fn on_write(vm: &mut VmRef, _gpr: &mut GprState, _fpr: &mut FprState) -> VmAction {
    let _ = vm.inst_memory_access().len();
    VmAction::Continue
}

#[instr_rule(analysis = OPERANDS | SYMBOL)]
fn calls_only(_vm: &mut VmRef, analysis: &InstAnalysis) -> Vec<InstrRuleCallback> {
    if !analysis.is_call {
        return Vec::new();
    }
    vec![InstrRuleCallback::new(
        InstPosition::PreInst,
        |_vm: &mut VmRef<'_>, _gpr: &mut GprState, _fpr: &mut FprState| VmAction::Continue,
        0,
    )]
}

#[plugin_init]
fn init(_vm: &mut VmRef, options: &PluginOptions) -> Result<(), String> {
    let out = options.get("out").unwrap_or("everything.log");
    *OUT.lock().map_err(|e| e.to_string())? = out.to_owned();
    Ok(())
}

#[plugin_fini]
fn fini() {
    let out = OUT.lock().map(|o| o.clone()).unwrap_or_default();
    eprintln!("{} calls, {} blocks -> {out}", CALLS.load(Relaxed), BLOCKS.load(Relaxed));
}

fn main() {
    let descriptor = qbdi_plugin_descriptor();
    // The descriptor installs the plugin's panic hook, which keeps messages for the host:
    // back to the default one, so that a failed assertion here is printed.
    drop(std::panic::take_hook());
    // SAFETY: the descriptor and its arrays are the plugin's leaked statics.
    let (d, registrations) = unsafe {
        let d = &*descriptor;
        (d, std::slice::from_raw_parts(d.registrations, d.registration_count))
    };
    assert_eq!(d.magic, qbdi_sdk::abi::PLUGIN_MAGIC);
    assert_eq!(d.option_count, 1);
    let kinds: Vec<u32> = registrations.iter().map(|r| r.kind).collect();
    use qbdi_sdk::abi::kind::*;
    assert_eq!(kinds, [INST, INST, EVENT, MEM_ACCESS, INSTR_RULE, INIT, FINI]);
}
