//! Helpers shared by the workspace-level tests.

pub mod cli;
pub mod clobber;
pub mod ev_blocks;
pub mod glibc;

use qbdi_core::{Options, VirtualStack, Vm, allocate_virtual_stack};

/// The geometric mean of `ratios` (the benches' summary lines); NaN if empty.
pub fn geomean(ratios: &[f64]) -> f64 {
    (ratios.iter().map(|r| r.ln()).sum::<f64>() / ratios.len() as f64).exp()
}

/// A Vm with `options` instrumenting only `[start, end)` (a guest function of the test
/// executable, from its symbol to its `_end` label), with a 1 MiB guest stack (keep the
/// returned stack alive as long as the Vm runs).
pub fn vm_over(options: Options, start: u64, end: u64) -> (Vm, VirtualStack) {
    let mut vm = Vm::with_options(options);
    let stack = allocate_virtual_stack(vm.gpr_state_mut(), 1 << 20).expect("guest stack");
    vm.add_instrumented_range(start, end)
        .expect("a guest function is a valid range");
    (vm, stack)
}
