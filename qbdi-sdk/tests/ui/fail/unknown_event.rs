use qbdi_sdk::prelude::*;

#[vm_event(BASIC_BLOCK_ENTER | BASIC_BLOCK_EXIT | SYSCALL)]
fn typo(_vm: &mut VmRef, _s: &VmState, _gpr: &mut GprState, _fpr: &mut FprState) -> VmAction {
    VmAction::Continue
}

#[vm_event(BASIC_BLOCK_ENTRY, BASIC_BLOCK_EXIT)]
fn commas(_vm: &mut VmRef, _s: &VmState, _gpr: &mut GprState, _fpr: &mut FprState) -> VmAction {
    VmAction::Continue
}

#[vm_event(SYSCALL_ENTRY | SYSCALL_ENTRY)]
fn twice(_vm: &mut VmRef, _s: &VmState, _gpr: &mut GprState, _fpr: &mut FprState) -> VmAction {
    VmAction::Continue
}

#[vm_event(VmEvent::SYSCALL_ENTRY)]
fn path(_vm: &mut VmRef, _s: &VmState, _gpr: &mut GprState, _fpr: &mut FprState) -> VmAction {
    VmAction::Continue
}

fn main() {}
