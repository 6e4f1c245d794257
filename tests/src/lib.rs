//! Helpers shared by the workspace-level tests.

pub mod cli;
pub mod ev_blocks;
