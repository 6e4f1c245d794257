//! Differential suite under instruction callbacks: the cases of `differential/cases.rs`, with
//! a PreInst and a PostInst callback on every instruction of the guest. The callbacks only
//! count; the guest's results must still be the native ones, and after every call both
//! callbacks must have run, the same number of times (each instruction that starts also
//! finishes: calls into native code and `ret` to the fake return address included).
//! The counters are simple enough for translated code to call them directly
//! (engine/direct_call.rs): this is the differential suite of that path.

use qbdi_core::{InstPosition, PRIORITY_DEFAULT, Vm, VmAction};
use std::cell::Cell;
use std::rc::Rc;

#[path = "differential/cases.rs"]
mod cases;

/// Each input costs two callbacks per guest instruction: the largest are left to the plain
/// suite.
const HEAVY_INPUTS: bool = false;

/// Counts PreInst and PostInst callbacks on every instruction; after each call, checks that
/// both ran, equally often, and resets the counts.
fn configure(vm: &mut Vm) -> cases::AfterCall {
    let pre = Rc::new(Cell::new(0u64));
    let post = Rc::new(Cell::new(0u64));
    for (position, count) in [
        (InstPosition::PreInst, Rc::clone(&pre)),
        (InstPosition::PostInst, Rc::clone(&post)),
    ] {
        vm.add_code_cb(
            position,
            move |_vm, _gpr, _fpr| {
                // Wrapping: no overflow-check branch, so the callback stays a leaf and
                // translated code calls it directly (engine/direct_call.rs).
                count.set(count.get().wrapping_add(1));
                VmAction::Continue
            },
            PRIORITY_DEFAULT,
        )
        .expect("a callback on every instruction");
    }
    Box::new(move |name, vm| {
        let (pre, post) = (pre.take(), post.take());
        assert!(
            vm.direct_call_sites() > 0,
            "{name}: the counting callbacks were not called directly"
        );
        assert!(pre > 0, "{name}: no PreInst callback ran during the call");
        assert_eq!(
            pre, post,
            "{name}: {pre} PreInst callbacks but {post} PostInst callbacks"
        );
    })
}
