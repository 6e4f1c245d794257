//! x86-64 general purpose register numbers (their encoding), shared by the emitter and
//! the analysis of callback code.

/// A register number (0 = rax .. 15 = r15, the encoding order).
pub(crate) type Reg = u8;
pub(crate) const RAX: Reg = 0;
pub(crate) const RCX: Reg = 1;
pub(crate) const RDX: Reg = 2;
pub(crate) const RBX: Reg = 3;
pub(crate) const RSP: Reg = 4;
pub(crate) const RBP: Reg = 5;
pub(crate) const RSI: Reg = 6;
pub(crate) const RDI: Reg = 7;
pub(crate) const R8: Reg = 8;
pub(crate) const R11: Reg = 11;
pub(crate) const R12: Reg = 12;
pub(crate) const R13: Reg = 13;
pub(crate) const R14: Reg = 14;
pub(crate) const R15: Reg = 15;
