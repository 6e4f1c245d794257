//! The labelled guest functions of `tests/guest/ev_blocks.S` (linked into every test
//! executable) and their basic blocks as the definition gives them, for the VM event tests.

use std::cell::RefCell;
use std::rc::Rc;

use qbdi_core::{VirtualStack, Vm, allocate_virtual_stack};

unsafe extern "C" {
    /// Two-way branch: blocks A, B, C, E.
    pub fn ev_bb_branch(x: u64) -> u64;
    static ev_bb_branch_b: u8;
    static ev_bb_branch_c: u8;
    static ev_bb_branch_e: u8;
    static ev_bb_branch_end: u8;

    /// A loop with a branch in its body: blocks H, T, O, V, N, D.
    pub fn ev_bb_loop(n: u64) -> i64;
    static ev_bb_loop_top: u8;
    static ev_bb_loop_odd: u8;
    static ev_bb_loop_even: u8;
    static ev_bb_loop_next: u8;
    static ev_bb_loop_done: u8;
    static ev_bb_loop_end: u8;
}

/// A basic block `[start, end)`.
pub type Block = (u64, u64);

/// The address of a label of the guest code.
fn label(l: &'static u8) -> u64 {
    l as *const u8 as u64
}

/// The labels of `ev_bb_branch`: `(A, B, C, E, end)`.
pub fn branch_labels() -> (u64, u64, u64, u64, u64) {
    // SAFETY: only the addresses of the guest's labels are taken, never their bytes read.
    unsafe {
        (
            ev_bb_branch as *const () as u64,
            label(&ev_bb_branch_b),
            label(&ev_bb_branch_c),
            label(&ev_bb_branch_e),
            label(&ev_bb_branch_end),
        )
    }
}

/// The blocks of `ev_bb_branch`: A, B, C, E.
pub fn branch_blocks() -> [Block; 4] {
    let (a, b, c, e, end) = branch_labels();
    [(a, b), (b, c), (c, end), (e, end)]
}

/// The blocks of `ev_bb_loop`: H, T, O, V, N, D.
pub fn loop_blocks() -> [Block; 6] {
    // SAFETY: as in branch_labels.
    unsafe {
        [
            (ev_bb_loop as *const () as u64, label(&ev_bb_loop_top)),
            (label(&ev_bb_loop_top), label(&ev_bb_loop_odd)),
            (label(&ev_bb_loop_odd), label(&ev_bb_loop_even)),
            (label(&ev_bb_loop_even), label(&ev_bb_loop_done)),
            (label(&ev_bb_loop_next), label(&ev_bb_loop_done)),
            (label(&ev_bb_loop_done), label(&ev_bb_loop_end)),
        ]
    }
}

/// The blocks `ev_bb_loop(n)` executes, in order: H, then per i = n..1 T and O N (odd i)
/// or V (even i), then D.
pub fn loop_block_sequence(n: u64) -> Vec<Block> {
    let [h, t, o, v, nb, d] = loop_blocks();
    let mut seq = vec![h];
    for i in (1..=n).rev() {
        seq.push(t);
        if i % 2 == 1 {
            seq.extend([o, nb]);
        } else {
            seq.push(v);
        }
    }
    seq.push(d);
    seq
}

/// A Vm instrumenting the test executable (where the guest code is linked), with a stack.
pub fn guest_vm() -> (Vm, VirtualStack) {
    let mut vm = Vm::new();
    let stack = allocate_virtual_stack(vm.gpr_state_mut(), 1 << 20).expect("a guest stack");
    vm.add_instrumented_module_from_addr(ev_bb_loop as *const () as u64)
        .expect("instrument the test executable");
    (vm, stack)
}

/// A value shared between a test and its callbacks.
pub fn shared<T: Default>() -> Rc<RefCell<T>> {
    Rc::new(RefCell::new(T::default()))
}
