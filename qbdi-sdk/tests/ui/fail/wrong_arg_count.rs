use qbdi_sdk::prelude::*;

#[inst_callback(preinst)]
fn too_few(_vm: &mut VmRef, _gpr: &mut GprState) -> VmAction {
    VmAction::Continue
}

#[vm_event(BASIC_BLOCK_ENTRY)]
fn too_many(
    _vm: &mut VmRef,
    _s: &VmState,
    _gpr: &mut GprState,
    _fpr: &mut FprState,
    _extra: u32,
) -> VmAction {
    VmAction::Continue
}

#[plugin_init]
fn init() -> Result<(), String> {
    Ok(())
}

#[plugin_fini]
fn fini(_vm: &mut VmRef) {}

fn main() {}
