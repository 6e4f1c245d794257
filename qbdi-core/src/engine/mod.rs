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

mod blocks;
mod code_cache;
mod context;
mod context_switch;
mod dispatcher;
mod emitter;
mod exec_broker;
mod ib_table;
mod translator;
mod xstate;

use crate::error::VmError;
use crate::maps::{Permission, current_process_maps};
use crate::options::Options;
use crate::range::{Range, RangeSet};
use blocks::{Block, ExitKind, ExitStub};
use code_cache::CodeCache;
use context::FIRST_STUB_ID;
use std::collections::{BTreeMap, HashMap, HashSet};
use translator::{Env, MAX_BLOCK_HOST_BYTES, MAX_BLOCK_INSTRUCTIONS, Translator};
use xstate::XSaveKind;

/// No run in progress: no stop address.
const NO_STOP: u64 = u64::MAX;
/// A block never spans more guest bytes than this.
const MAX_BLOCK_GUEST_BYTES: u64 = MAX_BLOCK_INSTRUCTIONS as u64 * 15;

pub(crate) struct Engine {
    options: Options,
    /// How FP state is saved at each cache exit (None: OPT_DISABLE_FPR).
    fp: Option<XSaveKind>,
    cache: Option<CodeCache>,
    /// Translated blocks by guest start address.
    blocks: BTreeMap<u64, Block>,
    /// Exit stubs; stub id `FIRST_STUB_ID + i` is `stubs[i]`.
    stubs: Vec<ExitStub>,
    /// For each guest address, the stubs whose branch is linked to its block.
    incoming: HashMap<u64, Vec<u32>>,
    /// Native addresses entered in the inline table (they go to the broker routine).
    natives: HashSet<u64>,
    translator: Translator,
    /// Readable memory, as last read from the process maps: merged (start, end) pairs.
    readable: Vec<(u64, u64)>,
    /// The current run's stop address.
    stop: u64,
}

impl Engine {
    pub fn new(options: Options) -> Engine {
        Engine {
            options,
            fp: fp_mode(options),
            cache: None,
            blocks: BTreeMap::new(),
            stubs: Vec::new(),
            incoming: HashMap::new(),
            natives: HashSet::new(),
            translator: Translator::new(),
            readable: Vec::new(),
            stop: NO_STOP,
        }
    }

    /// New options: the shared routines depend on them, so the whole cache goes.
    pub fn set_options(&mut self, options: Options) {
        self.options = options;
        self.fp = fp_mode(options);
        self.cache = None;
        self.forget_all();
    }

    /// The instrumented ranges changed: translations made with the old ones (which calls
    /// go native, where blocks end) are dropped.
    pub fn ranges_changed(&mut self) {
        self.clear_all_cache();
    }

    pub fn precache(&mut self, addr: u64, ranges: &RangeSet) -> Result<bool, VmError> {
        if self.blocks.contains_key(&addr) {
            return Ok(false);
        }
        self.ensure_cache(addr)?;
        self.translate(addr, ranges)?;
        Ok(true)
    }

    /// Drops the translations of every block overlapping `range`.
    pub fn clear_cache(&mut self, range: Range) {
        if range.is_empty() {
            return;
        }
        let from = range.start.saturating_sub(MAX_BLOCK_GUEST_BYTES);
        let doomed: Vec<u64> = self
            .blocks
            .range(from..range.end)
            .filter(|(_, b)| Range::new(b.start, b.end).overlaps(&range))
            .map(|(s, _)| *s)
            .collect();
        for start in doomed {
            self.invalidate_block(start);
        }
        if let Some(cache) = &self.cache {
            self.natives.retain(|n| {
                let keep = !range.contains(*n);
                if !keep {
                    cache.table.remove(*n);
                }
                keep
            });
        }
        self.readable.clear();
    }

    /// Drops every translation. Code memory is reused only when the cache fills up, so a
    /// translation address still held somewhere (a native frame's return address) leads
    /// back to the dispatcher instead of to freed code.
    pub fn clear_all_cache(&mut self) {
        let starts: Vec<u64> = self.blocks.keys().copied().collect();
        for start in starts {
            self.invalidate_block(start);
        }
        if let Some(cache) = &self.cache {
            cache.table.clear();
        }
        self.natives.clear();
        self.readable.clear();
    }

    fn forget_all(&mut self) {
        self.blocks.clear();
        self.stubs.clear();
        self.incoming.clear();
        self.natives.clear();
        self.readable.clear();
    }

    fn ensure_cache(&mut self, near: u64) -> Result<&mut CodeCache, VmError> {
        if self.cache.is_none() {
            self.cache = Some(CodeCache::new(near, self.fp)?);
        }
        Ok(self.cache.as_mut().expect("just created"))
    }

    fn cache(&self) -> &CodeCache {
        self.cache.as_ref().expect("the cache exists once a run or precache started")
    }

    /// Translates the block at `pc` and enters it in the directory and the inline table.
    fn translate(&mut self, pc: u64, ranges: &RangeSet) -> Result<u64, VmError> {
        let readable_end = self.readable_end(pc)?;
        let limit = ranges.range_containing(pc).map_or(readable_end, |r| r.end);
        if self.cache().room() < MAX_BLOCK_HOST_BYTES {
            // Full: start over. Nothing of this Vm is executing (we are in the dispatcher).
            self.forget_all();
            self.cache.as_mut().expect("cache exists").reset();
        }
        let cache = self.cache.as_ref().expect("cache exists");
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
            first_stub_id: FIRST_STUB_ID + self.stubs.len() as u32,
        };
        let t = self.translator.translate(pc, host, &env)?;
        let cache = self.cache.as_mut().expect("cache exists");
        cache.commit(&self.translator.asm);
        let first = self.stubs.len() as u32;
        for e in self.translator.exits.drain(..) {
            self.stubs.push(ExitStub {
                target: e.target,
                site: e.site,
                stub: e.stub,
                kind: e.kind,
                linked: false,
            });
        }
        let block = Block {
            start: pc,
            end: t.guest_end,
            host,
            reentry_stub: first + t.reentry as u32,
        };
        if self.blocks.insert(pc, block).is_some() {
            unreachable!("a block is translated only when absent");
        }
        if pc != self.stop {
            cache.table.insert(pc, host);
        }
        // Link this block's exits to blocks that already exist.
        for i in first..self.stubs.len() as u32 {
            let s = &self.stubs[i as usize];
            if s.site != 0 && s.target != self.stop {
                if let Some(b) = self.blocks.get(&s.target) {
                    let h = b.host;
                    self.link(i, h);
                }
            }
        }
        Ok(host)
    }

    /// Points stub `i`'s branch straight at `host`.
    fn link(&mut self, i: u32, host: u64) {
        let s = &mut self.stubs[i as usize];
        debug_assert!(s.site != 0 && s.kind == ExitKind::Branch);
        // SAFETY: `site` is the rel32 of a branch of committed code; no guest code of this
        // Vm runs while the dispatcher links.
        unsafe { emitter::patch_rel32(s.site, host) };
        s.linked = true;
        self.incoming.entry(s.target).or_default().push(i);
    }

    /// Removes a block: out of the directory and the table, its incoming links back to
    /// their stubs, and its entry turned into a jump to its reentry stub.
    fn invalidate_block(&mut self, start: u64) {
        let Some(block) = self.blocks.remove(&start) else {
            return;
        };
        let cache = self.cache.as_ref().expect("blocks exist only with a cache");
        cache.table.remove(start);
        for i in self.incoming.remove(&start).unwrap_or_default() {
            let s = &mut self.stubs[i as usize];
            if s.linked {
                // SAFETY: as in `link`.
                unsafe { emitter::patch_rel32(s.site, s.stub) };
                s.linked = false;
            }
        }
        let reentry = self.stubs[block.reentry_stub as usize].stub;
        // jmp rel32 to the reentry stub, written over the block's first bytes (every block
        // is longer than 5 bytes). Written rel32 first, opcode last.
        // SAFETY: the block's code is committed, writable, and not executing.
        unsafe {
            emitter::patch_rel32(block.host + 1, reentry);
            (block.host as *mut u8).write_volatile(0xe9);
        }
    }

    /// End of the readable memory that contains `pc` (contiguous readable mappings).
    fn readable_end(&mut self, pc: u64) -> Result<u64, VmError> {
        if let Some(end) = find_readable(&self.readable, pc) {
            return Ok(end);
        }
        self.readable.clear();
        for m in current_process_maps(false) {
            if !m.permission.contains(Permission::READ) {
                continue;
            }
            match self.readable.last_mut() {
                Some(last) if last.1 == m.range.start => last.1 = m.range.end,
                _ => self.readable.push((m.range.start, m.range.end)),
            }
        }
        find_readable(&self.readable, pc).ok_or(VmError::AddressNotMapped(pc))
    }
}

fn find_readable(readable: &[(u64, u64)], pc: u64) -> Option<u64> {
    let i = readable.partition_point(|r| r.1 <= pc);
    readable.get(i).filter(|r| r.0 <= pc).map(|r| r.1)
}

fn fp_mode(options: Options) -> Option<XSaveKind> {
    (!options.contains(Options::OPT_DISABLE_FPR)).then(XSaveKind::detect)
}
