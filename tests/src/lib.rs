//! Helpers shared by the workspace-level tests.

pub mod cb_funcs;
pub mod cli;
pub mod clobber;
pub mod ev_blocks;
pub mod glibc;

use qbdi_core::{
    CallbackId, FAKE_RETURN_ADDRESS, InstPosition, Options, VirtualStack, Vm, VmAction,
    allocate_virtual_stack, simulate_call,
};
use std::cell::Cell;
use std::rc::Rc;

/// The address of a function or label (`addr!(cb_loop)`): the guest code of the tests is
/// declared as `extern "C"` functions, labels included.
#[macro_export]
macro_rules! addr {
    ($f:expr) => {
        $f as *const () as u64
    };
}

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

/// Adds a general PreInst callback at `at` (priority 10, so first there) that deletes
/// callback `id` the first time it runs; the returned flag says whether it did.
pub fn delete_once_at(vm: &mut Vm, at: u64, id: CallbackId) -> Rc<Cell<bool>> {
    let deleted = Rc::new(Cell::new(false));
    let d = deleted.clone();
    vm.add_code_addr_cb(
        at,
        InstPosition::PreInst,
        move |vm, _, _| {
            if !d.get() {
                vm.delete_instrumentation(id).expect("delete the callback");
                d.set(true);
            }
            VmAction::Continue
        },
        10,
    )
    .unwrap();
    deleted
}

/// Runs `func(rdi)` in `vm` from the top of `stack` with the guest flags `eflags`; returns
/// the guest's rax and arithmetic flags after it.
pub fn run_with_flags(
    vm: &mut Vm,
    stack: &VirtualStack,
    func: u64,
    rdi: u64,
    eflags: u64,
) -> (u64, u64) {
    let gpr = vm.gpr_state_mut();
    gpr.rsp = (stack.base() + stack.size() as u64 - 64) & !15;
    gpr.eflags = eflags;
    gpr.rdi = rdi;
    simulate_call(vm.gpr_state_mut(), FAKE_RETURN_ADDRESS, &[]);
    vm.run(func, FAKE_RETURN_ADDRESS).unwrap();
    (vm.gpr_state().rax, vm.gpr_state().eflags & 0x8d5)
}
