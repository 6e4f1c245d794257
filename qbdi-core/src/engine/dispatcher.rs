//! The dispatcher: the run loop. It finds (or has translated) the block for the guest's next
//! address, enters the cache, and handles whatever made the guest leave it: links the exit
//! that was taken to its now-translated target, hands native targets to the exec broker,
//! reports the events it owns (BASIC_BLOCK_NEW, EXEC_TRANSFER_*), applies instrumentation
//! changes callbacks asked for, reports errors, and ends the run at the stop address or when
//! a callback says Stop.

use super::callbacks::fire_events;
use super::context::{
    EXIT_BROKER, EXIT_CALLBACK, EXIT_GROUP, EXIT_IB_MISS, EXIT_STALE, EXIT_STOP, EXIT_THREAD,
    FIRST_STUB_ID,
};
use super::directory::ExitKind;
use super::translator::disassemble_at;
use super::{Engine, NO_STOP};
use crate::callback::{VmAction, VmEvent};
use crate::error::VmError;
use crate::options::Options;
use crate::range::Range;
use crate::state::{FprState, GprState};

/// Where the dispatcher sends the guest next.
pub(super) enum Next {
    /// A translated block at this host address.
    Block(u64),
    /// Native code at this address (its return address was already redirected).
    Native(u64),
    /// A callback asked to go somewhere else first (BreakToVm): dispatch this address.
    Redispatch(u64),
    /// A callback said Stop.
    Stop,
}

/// What happens after the guest left the cache.
enum After {
    /// Go on at this guest address; link this stub once it has a translation.
    Go(u64, Option<u32>),
    /// The run is over (stop address reached or a callback said Stop).
    Finish,
}

impl Engine {
    /// Runs the guest from `gpr.rip` until it reaches `stop`.
    pub fn run(
        &mut self,
        gpr: &mut GprState,
        fpr: &mut FprState,
        errno: &mut i32,
        stop: u64,
    ) -> Result<(), VmError> {
        let start = gpr.rip;
        self.ensure_cache(start)?;
        self.apply_flush();
        self.begin_run(stop);
        let ctx = self.cache().ctx();
        // The run's FP state is `fpr`, put in the context below.
        self.fpr_in_xarea = false;
        {
            let (cache, dir) = self.cache.as_mut().expect("cache exists");
            self.cb_env.table = &cache.table;
            self.cb_env.dir = dir;
        }
        let keep_errno = !self.options.contains(Options::OPT_DISABLE_ERRNO_BACKUP);
        // SAFETY: ctx points to the context at the start of our live cache mapping, and no
        // generated code runs while we hold these references.
        unsafe {
            (*ctx).gpr = *gpr;
            (*ctx).fpr = *fpr;
            (*ctx).ext_dirty = 1;
            (*ctx).edge_prev = super::inline::thread_prev();
            // The direct sites' `VmRef` views `accesses`; each sets only the length.
            let (ptr, _) = crate::memory_access::slice_layout();
            (*ctx).vm_view[ptr as usize / 8] = (&raw const (*ctx).accesses) as u64;
            if let Some(fp) = self.fp {
                fp.prepare_for_restore(&mut (*ctx).fpr);
            }
        }
        let edges = self.shared().inst.edge_words() != 0;
        let mut pc = start;
        // The stub the guest left through, to link once its target is translated, and the
        // cache generation (`resets`) it belongs to.
        let mut link_from: Option<(u32, u64)> = None;
        // The guest address the last exit counted the edge to, if it did (a counted exit's
        // stub): its block is entered at its linked entry.
        let mut counted_to: Option<u64> = None;
        let result = loop {
            if pc == stop {
                break Ok(());
            }
            let next = match self.next_for(pc, link_from.is_some()) {
                Ok(n) => n,
                Err(e) => break Err(e),
            };
            // The exit we came through now has a translated target: link it (unless the
            // cache was started over since: the stub is gone).
            let link = link_from.take();
            let counted = counted_to.take() == Some(pc);
            let target = match next {
                Next::Block(host) => {
                    let host = if counted {
                        self.dir().lookup(pc).map_or(host, |b| b.linked)
                    } else {
                        host
                    };
                    if let Some((i, resets)) = link
                        && self.resets == resets
                    {
                        self.link(i, host);
                    }
                    host
                }
                Next::Native(addr) => addr,
                Next::Redispatch(addr) => {
                    pc = addr;
                    continue;
                }
                Next::Stop => break Ok(()),
            };
            // Blocks translated on the way are reported before they run.
            match self.report_new_blocks(pc) {
                VmAction::Stop => break Ok(()),
                VmAction::BreakToVm => {
                    self.apply_flush();
                    // SAFETY: as above.
                    pc = unsafe { (*ctx).gpr.rip };
                    continue;
                }
                _ => {}
            }
            // Returns' site caches hold no block that is gone.
            if self.cache().table.take_removed() {
                self.cache
                    .as_mut()
                    .expect("cache exists")
                    .0
                    .prune_site_entries();
            }
            let cache = self.cache();
            // SAFETY: as above; `enter` is the context switch routine of this cache, which
            // behaves as an `extern "C" fn()` preserving the host's callee-saved state.
            unsafe {
                (*ctx).target = target;
                if let Some(fp) = self.fp
                    && !self.fpr_in_xarea
                {
                    fp.fpr_to_native(&(*ctx).fpr, &mut (*ctx).xarea.0);
                }
                if keep_errno {
                    *libc::__errno_location() = *errno;
                }
                let enter: extern "C" fn() = std::mem::transmute(cache.runtime.enter as usize);
                enter();
                self.exits += 1;
                if keep_errno {
                    *errno = *libc::__errno_location();
                }
                // Every exit saved the guest's FP state to the image (the callback
                // routine's way out too): `ctx.fpr` follows when read.
                self.fpr_in_xarea = self.fp.is_some();
            }
            // SAFETY: as above.
            let exit_id = unsafe { (*ctx).exit_id };
            if edges {
                counted_to = self.hand_on_edges(exit_id);
            }
            match self.after_exit(exit_id, stop) {
                Ok(After::Go(next_pc, link)) => {
                    pc = next_pc;
                    link_from = link.map(|i| (i, self.resets));
                    self.apply_flush();
                }
                Ok(After::Finish) => {
                    // SAFETY: as above.
                    pc = unsafe { (*ctx).gpr.rip };
                    break Ok(());
                }
                Err(e) => {
                    // The guest stopped at the faulting instruction, state as it was.
                    if let VmError::InvalidInstruction(a)
                    | VmError::UnsupportedInstruction { address: a, .. } = e
                    {
                        pc = a;
                    }
                    if let VmError::ThreadExit { .. } = e {
                        // SAFETY: as above.
                        pc = unsafe { (*ctx).ib_target };
                    }
                    break Err(e);
                }
            }
        };
        self.stop = NO_STOP;
        self.new_blocks.clear();
        self.sync_fpr();
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
        self.invalidate_overlapping(Range::new(stop, stop.saturating_add(1)));
        self.cache().table.remove(stop);
    }

    /// Where to go for guest address `pc`, reached by a direct branch whose exit will be
    /// linked (`direct`) or otherwise.
    ///
    /// A block goes into the inline table the first time it is reached other than by a
    /// direct branch (an indirect branch's miss, a return, a native call coming back, the
    /// start of a run): only such targets are ever looked up there. Blocks reached by
    /// direct branches alone (most of them) stay out, and the table's pages, which a new
    /// entry lands in at random, are touched less (each a page fault: about 4 us on a
    /// virtual machine, half of a translation's time on large code).
    fn next_for(&mut self, pc: u64, direct: bool) -> Result<Next, VmError> {
        if crate::late_code::published() != self.late_seen {
            self.take_published_ranges();
        }
        let host = match self.dir().lookup(pc) {
            // An indirect branch missed the inline table although the block exists: it was
            // never put there, or its entry was taken by a colliding target. It is put back
            // below, or every later lookup of this target would come back here.
            Some(b) => b.host,
            None => {
                let instrumented = self.shared().inst.ranges.contains(pc)
                    || crate::late_code::anonymous_code() && self.takes_new_code(pc);
                if !instrumented {
                    if let Some(next) = self.transfer_to_native(pc)? {
                        return Ok(next);
                    }
                    if self.leave_at_native {
                        // The guest leaves the instrumented code for good: the run ends here.
                        return Ok(Next::Stop);
                    }
                    // No return address to come back through: instrument this code after
                    // all (QBDI's behaviour), until it reaches instrumented code or a call
                    // we can broker.
                }
                self.translate(pc)?
            }
        };
        if !direct {
            self.enter_table(pc, host);
        }
        Ok(Next::Block(host))
    }

    /// Puts block `host` of guest address `pc` in the inline table (see `next_for`), unless
    /// `pc` is where the run stops, which the table must not know.
    pub(super) fn enter_table(&mut self, pc: u64, host: u64) {
        if pc != self.stop {
            self.cache().table.insert_block(pc, host);
        }
    }

    /// Code written at run time (`late_code::instrument_anonymous_code`): an executable
    /// mapping that may change (anonymous or writable), not a code cache, joins the
    /// instrumented ranges.
    fn takes_new_code(&mut self, pc: u64) -> bool {
        if self.readable.end_of(pc).is_none() {
            return false;
        }
        match self.readable.volatile_at(pc) {
            Some((start, end, true)) if !super::code_cache::is_code_cache(pc) => {
                self.shared().inst.ranges.add(Range::new(start, end));
                true
            }
            _ => false,
        }
    }

    /// Reports BASIC_BLOCK_NEW for the blocks translated since the last entry.
    fn report_new_blocks(&mut self, pc: u64) -> VmAction {
        let mut action = VmAction::Continue;
        while let Some((start, end)) = self.new_blocks.pop() {
            action = action.max(self.fire(VmEvent::BASIC_BLOCK_NEW, start, end, pc));
        }
        action
    }

    /// Fires dispatcher-side events with `gpr.rip` = `rip`.
    pub(super) fn fire(&mut self, events: VmEvent, start: u64, end: u64, rip: u64) -> VmAction {
        let shared = self.shared();
        if !shared.inst.events.intersects(events) {
            return VmAction::Continue;
        }
        self.sync_fpr();
        let ctx = self.cache().ctx();
        // SAFETY: the context is live; no generated code runs; callbacks get the only
        // references to its state for the duration of the call.
        let ctx = unsafe { &mut *ctx };
        ctx.gpr.rip = rip;
        let action = fire_events(shared, ctx, events, start, end);
        if shared.inst.panic.is_some() {
            VmAction::Stop
        } else {
            action
        }
    }

    /// Makes `ctx.fpr` the guest's FP state, from the image the last exit saved, if it is
    /// not already (see `Engine::fpr_in_xarea`); the next entry then restores from it.
    fn sync_fpr(&mut self) {
        if !self.fpr_in_xarea {
            return;
        }
        self.fpr_in_xarea = false;
        let (Some(fp), Some((cache, _))) = (self.fp, self.cache.as_ref()) else {
            return;
        };
        let ctx = cache.ctx();
        // SAFETY: the context is live and no generated code runs (the dispatcher's callers).
        unsafe {
            fp.native_to_fpr(&(*ctx).xarea.0, &mut (*ctx).fpr);
            fp.complete_after_save(&mut (*ctx).fpr);
            (*ctx).ext_dirty = 1;
        }
    }

    /// At an exit, with edge maps: the thread's `prev` words become the block the guest left
    /// when the exit says which (a stub of that block, a callback site in it; the other
    /// ways out set them in translated code, or leave them as native code left them).
    /// Returns the guest address a counted exit's stub goes on at: its block is entered
    /// at its linked entry.
    fn hand_on_edges(&mut self, exit_id: u32) -> Option<u64> {
        let ctx = self.cache().ctx();
        let (bb, counted_to) = if exit_id == EXIT_CALLBACK {
            // SAFETY: the context is live and no generated code runs.
            let site = unsafe { (*ctx).cb_site } as usize;
            let bb = self.shared().inst.sites.get(site);
            (bb.map(|s| s.state.basic_block_start), None)
        } else if let Some(i) = exit_id.checked_sub(FIRST_STUB_ID) {
            let s = *self.dir().stub(i);
            if s.kind != ExitKind::Branch {
                return None;
            }
            let bb = s
                .chained
                .then(|| self.dir().containing_host(s.stub).map(|b| b.bb_start))
                .flatten();
            (bb, s.counted.then_some(s.target))
        } else {
            (None, None)
        };
        if let Some(bb) = bb {
            super::inline::chain_from(&self.shared().inst, bb);
        }
        counted_to
    }

    /// Decodes why the guest left the cache.
    fn after_exit(&mut self, exit_id: u32, stop: u64) -> Result<After, VmError> {
        let ctx = self.cache().ctx();
        // SAFETY: the context is live and no generated code runs.
        let (ib_target, rip, cb_stop) =
            unsafe { ((*ctx).ib_target, (*ctx).gpr.rip, (*ctx).cb_stop) };
        match exit_id {
            EXIT_IB_MISS | EXIT_BROKER => Ok(After::Go(ib_target, None)),
            EXIT_STALE => {
                // The block's guest bytes changed since it was translated.
                self.invalidate_overlapping(Range::new(ib_target, ib_target + 1));
                Ok(After::Go(ib_target, None))
            }
            EXIT_THREAD => Err(VmError::ThreadExit {
                // SAFETY: as above.
                status: unsafe { (*ctx).gpr.rdi } as i32,
            }),
            EXIT_GROUP => {
                // SAFETY: as above.
                let status = unsafe { (*ctx).gpr.rdi } as i32;
                let hook = crate::threads::exit_group_hook()
                    .expect("exit_group leaves the cache only with a hook set");
                hook(status)
            }
            EXIT_STOP => {
                // SAFETY: as above.
                unsafe { (*ctx).gpr.rip = stop };
                Ok(After::Finish)
            }
            EXIT_CALLBACK => {
                if cb_stop != 0 || self.shared().inst.panic.is_some() {
                    Ok(After::Finish)
                } else {
                    Ok(After::Go(rip, None))
                }
            }
            id => {
                let i = id - FIRST_STUB_ID;
                let s = self.dir().stub(i);
                match s.kind {
                    ExitKind::Branch => {
                        let link = (s.site != 0 && !s.linked && s.target != stop).then_some(i);
                        Ok(After::Go(s.target, link))
                    }
                    ExitKind::Reentry => Ok(After::Go(s.target, None)),
                    ExitKind::TransferReturn => {
                        let ret = s.target;
                        // For transfers, every VmState address is the target (QBDI's
                        // convention).
                        match self.fire(VmEvent::EXEC_TRANSFER_RETURN, ret, ret, ret) {
                            VmAction::Stop => Ok(After::Finish),
                            // SAFETY: as above.
                            VmAction::BreakToVm => Ok(After::Go(unsafe { (*ctx).gpr.rip }, None)),
                            _ => Ok(After::Go(ret, None)),
                        }
                    }
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
