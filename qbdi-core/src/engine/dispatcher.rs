//! The dispatcher: the run loop. It finds (or has translated) the block for the guest's next
//! address, enters the cache, and handles whatever made the guest leave it: links the exit
//! that was taken to its now-translated target, hands native targets to the exec broker,
//! reports errors, and ends the run at the stop address.

use super::context::{EXIT_BROKER, EXIT_IB_MISS, EXIT_STOP, FIRST_STUB_ID};
use super::directory::ExitKind;
use super::translator::disassemble_at;
use super::{Engine, NO_STOP};
use crate::error::VmError;
use crate::options::Options;
use crate::range::RangeSet;
use crate::state::{FprState, GprState};

/// Where the dispatcher sends the guest next.
pub(super) enum Next {
    /// A translated block at this host address.
    Block(u64),
    /// Native code at this address (its return address was already redirected).
    Native(u64),
}

impl Engine {
    /// Runs the guest from `gpr.rip` until it reaches `stop`.
    pub fn run(
        &mut self,
        gpr: &mut GprState,
        fpr: &mut FprState,
        errno: &mut i32,
        ranges: &RangeSet,
        stop: u64,
    ) -> Result<(), VmError> {
        let start = gpr.rip;
        self.ensure_cache(start)?;
        self.begin_run(stop);
        let ctx = self.cache().ctx();
        let keep_errno = !self.options.contains(Options::OPT_DISABLE_ERRNO_BACKUP);
        // SAFETY: ctx points to the context at the start of our live cache mapping, and no
        // generated code runs while we hold these references.
        unsafe {
            (*ctx).gpr = *gpr;
            (*ctx).fpr = *fpr;
            if let Some(fp) = self.fp {
                fp.prepare_for_restore(&mut (*ctx).fpr);
            }
        }
        let mut pc = start;
        let mut link_from: Option<u32> = None;
        let result = loop {
            if pc == stop {
                break Ok(());
            }
            let next = match self.next_for(pc, ranges) {
                Ok(n) => n,
                Err(e) => break Err(e),
            };
            // The exit we came through now has a translated target: link it.
            let link = link_from.take();
            let target = match next {
                Next::Block(host) => {
                    if let Some(i) = link {
                        self.link(i, host);
                    }
                    host
                }
                Next::Native(addr) => addr,
            };
            let cache = self.cache();
            // SAFETY: as above; `enter` is the context switch routine of this cache, which
            // behaves as an `extern "C" fn()` preserving the host's callee-saved state.
            unsafe {
                (*ctx).target = target;
                if keep_errno {
                    *libc::__errno_location() = *errno;
                }
                let enter: extern "C" fn() = std::mem::transmute(cache.runtime.enter as usize);
                enter();
                if keep_errno {
                    *errno = *libc::__errno_location();
                }
                if let Some(fp) = self.fp {
                    fp.complete_after_save(&mut (*ctx).fpr);
                }
            }
            // SAFETY: as above.
            let exit_id = unsafe { (*ctx).exit_id };
            match self.after_exit(exit_id, stop) {
                Ok((next_pc, link)) => {
                    pc = next_pc;
                    link_from = link;
                }
                Err(e) => {
                    // The guest stopped at the faulting instruction, state as it was.
                    if let VmError::InvalidInstruction(a)
                    | VmError::UnsupportedInstruction { address: a, .. } = e
                    {
                        pc = a;
                    }
                    break Err(e);
                }
            }
        };
        self.stop = NO_STOP;
        // SAFETY: as above.
        unsafe {
            *gpr = (*ctx).gpr;
            *fpr = (*ctx).fpr;
        }
        gpr.rip = pc;
        result
    }

    /// Prepares the cache for a run that must stop at `stop`: no block may contain it or be
    /// linked to it, and the inline table must not know it.
    fn begin_run(&mut self, stop: u64) {
        self.stop = stop;
        let mut doomed = std::mem::take(&mut self.scratch);
        let (_, dir) = self.cache.as_mut().expect("cache exists");
        dir.overlapping(stop, stop.saturating_add(1), &mut doomed);
        for &start in &doomed {
            self.invalidate_block(start);
        }
        self.scratch = doomed;
        self.cache().table.remove(stop);
    }

    /// Where to go for guest address `pc`.
    fn next_for(&mut self, pc: u64, ranges: &RangeSet) -> Result<Next, VmError> {
        if let Some(b) = self.dir().lookup(pc) {
            return Ok(Next::Block(b.host));
        }
        if ranges.contains(pc) {
            return self.translate(pc, ranges).map(Next::Block);
        }
        if self.transfer_to_native(pc, ranges)? {
            return Ok(Next::Native(pc));
        }
        // No return address to come back through: instrument this code after all (QBDI's
        // behaviour), until it reaches instrumented code or a call we can broker.
        self.translate(pc, ranges).map(Next::Block)
    }

    /// Decodes why the guest left the cache: the next guest address, and the stub to link
    /// once that address has a translation.
    fn after_exit(&mut self, exit_id: u32, stop: u64) -> Result<(u64, Option<u32>), VmError> {
        // SAFETY: the context is live and no generated code runs.
        let ib_target = unsafe { (*self.cache().ctx()).ib_target };
        match exit_id {
            EXIT_IB_MISS | EXIT_BROKER => Ok((ib_target, None)),
            EXIT_STOP => Ok((stop, None)),
            id => {
                let i = id - FIRST_STUB_ID;
                let s = self.dir().stub(i);
                match s.kind {
                    ExitKind::Branch => {
                        let link = (s.site != 0 && !s.linked && s.target != stop).then_some(i);
                        Ok((s.target, link))
                    }
                    ExitKind::Reentry => Ok((s.target, None)),
                    ExitKind::Invalid => Err(VmError::InvalidInstruction(s.target)),
                    ExitKind::Unsupported => Err(VmError::UnsupportedInstruction {
                        address: s.target,
                        disassembly: disassemble_at(s.target),
                    }),
                }
            }
        }
    }
}
