//! `pyqbdi`: PyQBDI's Python API (0.12) on the qbdi-rs engine, as the native module
//! `pyqbdi._pyqbdi` that the `pyqbdi` package re-exports.
//!
//! - [`vm`]: the `VM` class, its callbacks and how they reach the engine;
//! - [`state`]: `GPRState`, `FPRState`, `VMState`;
//! - [`types`]: analyses, memory accesses, ranges, maps, rule callbacks;
//! - [`enums`]: the enums and constants;
//! - [`helpers`]: the free functions;
//! - [`preload`]: whole-program mode: this same library, injected with `LD_PRELOAD`, is a
//!   `qbdi run` host (qbdi-host's preload) that runs Python tools beside Rust plugins.

#![deny(unsafe_op_in_unsafe_fn)]

mod enums;
mod helpers;
mod preload;
mod state;
mod types;
mod vm;

use pyo3::prelude::*;

/// The native module.
#[pymodule]
fn _pyqbdi(m: &Bound<'_, PyModule>) -> PyResult<()> {
    enums::register(m)?;
    helpers::register(m)?;
    m.add_class::<vm::VM>()?;
    m.add_class::<state::GPRState>()?;
    m.add_class::<state::FPRState>()?;
    m.add_class::<state::MMSTReg>()?;
    m.add_class::<state::FPControl>()?;
    m.add_class::<state::FPStatus>()?;
    m.add_class::<state::VMState>()?;
    m.add_class::<types::InstAnalysis>()?;
    m.add_class::<types::OperandAnalysis>()?;
    m.add_class::<types::MemoryAccess>()?;
    m.add_class::<types::Range>()?;
    m.add_class::<types::MemoryMap>()?;
    m.add_class::<types::InstrRuleDataCBK>()?;
    m.add("REG_RETURN", 0)?;
    m.add("REG_BP", 14)?;
    m.add("REG_SP", 15)?;
    m.add("REG_PC", 16)?;
    m.add("REG_FLAG", 17)?;
    m.add("NUM_GPR", 17)?;
    m.add("AVAILABLE_GPR", 14)?;
    m.add("REG_LR", m.py().None())?;
    m.add("__version__", "0.12.1")?;
    m.add("__engine_version__", env!("CARGO_PKG_VERSION"))?;
    m.add("__arch__", "X86_64")?;
    m.add("__platform__", "linux")?;
    m.add("__preload__", preload::is_preload())?;
    m.add("__debug__", false)?;
    preload::register(m)?;
    Ok(())
}
