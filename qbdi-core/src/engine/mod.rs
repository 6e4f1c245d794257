//! The engine: everything between `Vm`'s API and the guest's instructions running.
//!
//! - [`code_cache`]: the mapping that holds the context, the inline table and the code;
//! - [`context`] and [`context_switch`]: the guest state slots and the host <-> guest switch;
//! - [`translator`] (with [`emitter`]): guest block -> host code;
//! - [`ib_table`]: inline indirect-branch lookup;
//! - [`dispatcher`]: the run loop, block linking;
//! - [`exec_broker`]: handing control to native (uninstrumented) code and back;
//! - [`blocks`]: bookkeeping of blocks and exit stubs; [`xstate`]: FP state saving.
//!
//! This module owns the cache directory (which guest block is where, which stubs are
//! linked) and its invalidation. It never runs guest code itself: the dispatcher does.

mod code_cache;
mod context;
mod context_switch;
mod directory;
mod dispatcher;
mod emitter;
mod exec_broker;
mod ib_table;
mod maps_reader;
mod translator;
mod xstate;

use crate::error::VmError;
use crate::options::Options;
use crate::range::{Range, RangeSet};
use code_cache::CodeCache;
use context::FIRST_STUB_ID;
use directory::{Directory, ExitKind};
use maps_reader::ReadableMaps;
use translator::{Env, MAX_BLOCK_HOST_BYTES, MAX_BLOCK_STUBS, Translator};
use xstate::XSaveKind;

/// No run in progress: no stop address.
const NO_STOP: u64 = u64::MAX;

pub(crate) struct Engine {
    options: Options,
    /// How FP state is saved at each cache exit (None: OPT_DISABLE_FPR).
    fp: Option<XSaveKind>,
    /// The code cache and its directory, created at the first run near the guest's code.
    cache: Option<(CodeCache, Directory)>,
    translator: Translator,
    /// Readable memory, as last read from the process maps.
    readable: ReadableMaps,
    /// Scratch list of block starts (reserved capacity, reused).
    scratch: Vec<u64>,
    /// The current run's stop address.
    stop: u64,
}

impl Engine {
    pub fn new(options: Options) -> Engine {
        Engine {
            options,
            fp: fp_mode(options),
            cache: None,
            translator: Translator::new(),
            readable: ReadableMaps::new(),
            scratch: Vec::with_capacity(1024),
            stop: NO_STOP,
        }
    }

    /// New options: the shared routines depend on them, so the whole cache goes.
    pub fn set_options(&mut self, options: Options) {
        self.options = options;
        self.fp = fp_mode(options);
        self.cache = None;
    }

    /// The instrumented ranges changed: translations made with the old ones (which calls
    /// go native, where blocks end) are dropped.
    pub fn ranges_changed(&mut self) {
        self.clear_all_cache();
    }

    pub fn precache(&mut self, addr: u64, ranges: &RangeSet) -> Result<bool, VmError> {
        self.ensure_cache(addr)?;
        if self.dir().lookup(addr).is_some() {
            return Ok(false);
        }
        self.translate(addr, ranges)?;
        Ok(true)
    }

    /// Drops the translations of every block overlapping `range`, and native entries of the
    /// inline table inside it.
    pub fn clear_cache(&mut self, range: Range) {
        self.readable.invalidate();
        let Some((cache, dir)) = &mut self.cache else {
            return;
        };
        if range.is_empty() {
            return;
        }
        cache
            .table
            .remove_natives_in(range.start, range.end, cache.runtime.broker);
        let mut doomed = std::mem::take(&mut self.scratch);
        dir.overlapping(range.start, range.end, &mut doomed);
        for &start in &doomed {
            self.invalidate_block(start);
        }
        self.scratch = doomed;
    }

    /// Drops every translation. Code memory is reused only when the cache fills up, so a
    /// translation address still held somewhere (a native frame's return address) leads
    /// back to the dispatcher instead of to freed code.
    pub fn clear_all_cache(&mut self) {
        self.readable.invalidate();
        let Some((cache, dir)) = &self.cache else {
            return;
        };
        cache.table.clear();
        let mut doomed = std::mem::take(&mut self.scratch);
        dir.all_live(&mut doomed);
        for &start in &doomed {
            self.invalidate_block(start);
        }
        doomed.clear();
        doomed.shrink_to(1024);
        self.scratch = doomed;
    }

    fn ensure_cache(&mut self, near: u64) -> Result<(), VmError> {
        if self.cache.is_none() {
            self.cache = Some((CodeCache::new(near, self.fp)?, Directory::new()));
        }
        Ok(())
    }

    fn cache(&self) -> &CodeCache {
        &self
            .cache
            .as_ref()
            .expect("the cache exists once a run or precache started")
            .0
    }

    fn dir(&self) -> &Directory {
        &self
            .cache
            .as_ref()
            .expect("the cache exists once a run or precache started")
            .1
    }

    /// Translates the block at `pc` and enters it in the directory and the inline table.
    /// Allocates nothing (see `directory`).
    fn translate(&mut self, pc: u64, ranges: &RangeSet) -> Result<u64, VmError> {
        let readable_end = self
            .readable
            .end_of(pc)
            .ok_or(VmError::AddressNotMapped(pc))?;
        let limit = ranges.range_containing(pc).map_or(readable_end, |r| r.end);
        let (cache, dir) = self.cache.as_mut().expect("cache exists");
        if cache.room() < MAX_BLOCK_HOST_BYTES || !dir.has_room(MAX_BLOCK_STUBS) {
            // Full: start over. Nothing of this Vm is executing (we are in the dispatcher).
            cache.reset();
            dir.reset();
        }
        let host = cache.next_addr();
        let in_range = |a: u64| ranges.contains(a);
        let env = Env {
            ctx: cache.ctx_addr(),
            table: cache.table_addr(),
            runtime: cache.runtime,
            in_range: &in_range,
            limit,
            readable_end,
            boundary: self.stop,
            first_stub_id: FIRST_STUB_ID + dir.next_stub(),
        };
        let t = self.translator.translate(pc, host, &env)?;
        cache.commit(&self.translator.asm);
        let first = dir.next_stub();
        for e in &self.translator.exits {
            dir.push_stub(e.target, e.site, e.stub, e.kind);
        }
        dir.insert(pc, t.guest_end, host, first + t.reentry as u32);
        if pc != self.stop {
            cache.table.insert(pc, host);
        }
        // Link this block's exits to blocks that already exist (itself included).
        for i in first..dir.stub_count() {
            let s = dir.stub(i);
            if s.site == 0 || s.kind != ExitKind::Branch || s.target == self.stop {
                continue;
            }
            if let Some(h) = dir.lookup(s.target).map(|b| b.host) {
                link(dir, i, h);
            }
        }
        Ok(host)
    }

    /// Points stub `i`'s branch straight at `host`.
    fn link(&mut self, i: u32, host: u64) {
        link(&mut self.cache.as_mut().expect("cache exists").1, i, host);
    }

    /// Removes a block: out of the directory and the table, its incoming links back to
    /// their stubs, and its entry turned into a jump to its reentry stub.
    fn invalidate_block(&mut self, start: u64) {
        let (cache, dir) = self.cache.as_mut().expect("blocks exist only with a cache");
        // SAFETY (closure): as in `link`: each site is a committed branch, nothing runs.
        let Some(block) = dir.remove(start, |s| unsafe { emitter::patch_rel32(s.site, s.stub) })
        else {
            return;
        };
        cache.table.remove(start);
        let reentry = dir.stub(block.reentry_stub).stub;
        // jmp rel32 to the reentry stub, written over the block's first bytes (every block
        // is longer than 5 bytes). Written rel32 first, opcode last.
        // SAFETY: the block's code is committed, writable, and not executing.
        unsafe {
            emitter::patch_rel32(block.host + 1, reentry);
            (block.host as *mut u8).write_volatile(0xe9);
        }
    }
}

/// Points stub `i`'s branch straight at `host` (the translation of its target).
fn link(dir: &mut Directory, i: u32, host: u64) {
    let s = dir.stub(i);
    debug_assert!(s.site != 0 && s.kind == ExitKind::Branch && !s.linked);
    // SAFETY: `site` is the rel32 of a branch of committed code; no guest code of this Vm
    // runs while the dispatcher links.
    unsafe { emitter::patch_rel32(s.site, host) };
    dir.mark_linked(i);
}

fn fp_mode(options: Options) -> Option<XSaveKind> {
    (!options.contains(Options::OPT_DISABLE_FPR)).then(XSaveKind::detect)
}
