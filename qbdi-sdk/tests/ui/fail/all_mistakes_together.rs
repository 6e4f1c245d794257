use qbdi_sdk::prelude::*;

// Every mistake of one attribute is reported at once, each where it is.
#[inst_callback(preinstt, priority = "x", prio = 2, mnemonic = "CALLL", code = "Call_rm64")]
unsafe fn everything(_vm: &VmRef, _gpr: &mut GprState) {}

fn main() {}
