//! Bookkeeping of translated code: blocks, their exit stubs, and which stubs are linked.

/// What an exit stub does when the guest reaches it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ExitKind {
    /// Continue at `target` (a direct branch, fall-through or return site): linkable.
    Branch,
    /// Continue at `target`, never linked: the entry of an invalidated block.
    Reentry,
    /// `target` holds undecodable bytes.
    Invalid,
    /// `target` holds an instruction the engine refuses to run; its disassembly.
    Unsupported(String),
}

/// A way out of a block to the dispatcher.
#[derive(Clone, Debug)]
pub(crate) struct ExitStub {
    /// Guest address the guest continues at.
    pub target: u64,
    /// Address of the rel32 field of the branch that goes to this stub, which linking
    /// retargets to the translation of `target` (0: none).
    pub site: u64,
    /// Address of the stub's code.
    pub stub: u64,
    pub kind: ExitKind,
    /// Whether `site` currently jumps to a translation instead of the stub.
    pub linked: bool,
}

/// One translated basic block.
#[derive(Clone, Debug)]
pub(crate) struct Block {
    /// Guest addresses it translates: `[start, end)`.
    pub start: u64,
    pub end: u64,
    /// Host address of its translation.
    pub host: u64,
    /// Its stub that re-enters the dispatcher at `start` (for invalidation).
    pub reentry_stub: u32,
}
