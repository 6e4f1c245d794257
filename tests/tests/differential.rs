//! Differential suite, plain: guest functions run natively and under a Vm with no
//! instrumentation callbacks; results, output buffers, errno and callee-saved registers must
//! be identical. The cases live in `differential/cases.rs`; `differential_counting.rs` and
//! `differential_fp_clobber.rs` run the same cases under instruction callbacks.

use qbdi_core::Vm;

#[path = "differential/cases.rs"]
mod cases;

/// No callbacks: the Vm runs the guest code translated, nothing else.
fn configure(_vm: &mut Vm) -> cases::AfterCall {
    Box::new(|_name, _vm| {})
}

/// The plain suite runs the largest inputs too.
const HEAVY_INPUTS: bool = true;
