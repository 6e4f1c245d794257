//! The engine of one Vm: its code cache and directory, the translator, and cache
//! invalidation. The run loop is in `dispatcher`, native calls in `exec_broker`.

use super::callbacks::{CallbackEnv, site_entry};
use super::code_cache::CodeCache;
use super::context::FIRST_STUB_ID;
use super::context_switch::CallbackFp;
use super::directory::{Directory, ExitKind};
use super::ib_table::{ENTRY_HEADER_LEN, ENTRY_PREFIX_LEN};
use super::maps_reader::ReadableMaps;
use super::segments::fsgsbase_usable;
use super::translator::{
    Env, Hooks, MAX_BLOCK_HOST_BYTES, MAX_BLOCK_SITES, MAX_BLOCK_STUBS, Translator,
};
use super::xstate::XSaveKind;
use crate::callback::VmEvent;
use crate::error::VmError;
use crate::instrumentation::shared::Shared;
use crate::instrumentation::{INLINE_EVENTS, TRANSFER_EVENTS};
use crate::options::Options;
use crate::range::{Range, RangeSet};

/// No run in progress: no stop address.
pub(crate) const NO_STOP: u64 = u64::MAX;

/// Most split basic blocks remembered at once (the oldest is forgotten: its next piece then
/// reports block events of its own, as before splits were tracked).
const MAX_CONTINUATIONS: usize = 256;

pub(crate) struct Engine {
    pub(super) options: Options,
    /// How FP state is saved at each cache exit (None: OPT_DISABLE_FPR).
    pub(super) fp: Option<XSaveKind>,
    /// The guest's FP state is the CPU image `ctx.xarea` the last cache exit saved, and
    /// `ctx.fpr` is older: the conversion waits until something reads `ctx.fpr` (a callback
    /// the dispatcher calls, the end of the run), see `Engine::sync_fpr`. Most exits
    /// (translation, table misses, unlinked stubs) need none: the next entry restores
    /// the image as it was saved.
    pub(super) fpr_in_xarea: bool,
    /// The code cache and its directory, created at the first run near the guest's code.
    pub(super) cache: Option<(CodeCache, Directory)>,
    pub(super) translator: Translator,
    /// Readable memory, as last read from the process maps.
    pub(super) readable: ReadableMaps,
    /// Scratch list of block starts (reserved capacity, reused).
    pub(super) scratch: Vec<u64>,
    /// The current run's stop address.
    pub(super) stop: u64,
    /// The Vm's instrumentation and analyses (owned by the Vm, which outlives us).
    pub(super) shared: *mut Shared,
    /// What the callback routine hands to `site_entry` (boxed: its address is in the context).
    pub(super) cb_env: Box<CallbackEnv>,
    /// Blocks translated since the last entry, to report as BASIC_BLOCK_NEW.
    pub(super) new_blocks: Vec<(u64, u64)>,
    /// Where a basic block whose host code was split goes on: (continuation start, basic
    /// block start). Few (only dense instrumentation on long blocks splits), bounded, and
    /// forgotten whenever translations are dropped.
    pub(super) continuations: Vec<(u64, u64)>,
    /// How many times the cache was started over because it was full.
    pub(super) resets: u64,
    /// How many of the ranges published with `late_code` this engine took.
    pub(super) late_seen: u64,
    /// A run ends at native code it cannot come back from, instead of instrumenting it.
    pub(crate) leave_at_native: bool,
    /// Blocks go to perf's map of JIT code (`QBDI_PERF_MAP=1`, see `perf_map`).
    perf_map: bool,
    /// Times translated code came back to the dispatcher (`Vm::cache_exits`).
    pub(crate) exits: u64,
}

impl Engine {
    /// An engine for the Vm whose shared state is at `shared`.
    pub fn new(options: Options, shared: *mut Shared) -> Engine {
        Engine {
            options,
            fp: fp_mode(options),
            fpr_in_xarea: false,
            cache: None,
            translator: Translator::new(),
            perf_map: super::perf_map::enabled(),
            exits: 0,
            readable: ReadableMaps::new(),
            scratch: Vec::with_capacity(1024),
            stop: NO_STOP,
            shared,
            cb_env: Box::new(CallbackEnv {
                ctx: std::ptr::null_mut(),
                shared,
                fp: None,
                keep_errno: true,
                dir: std::ptr::null_mut(),
                table: std::ptr::null(),
            }),
            new_blocks: Vec::with_capacity(64),
            continuations: Vec::with_capacity(MAX_CONTINUATIONS),
            leave_at_native: false,
            resets: 0,
            late_seen: 0,
        }
    }

    /// The Vm's shared state.
    #[allow(clippy::mut_from_ref)]
    pub(super) fn shared<'a>(&self) -> &'a mut Shared {
        // SAFETY: the Vm owns the shared state and outlives the engine; engine methods run
        // on the Vm's thread and never while a `VmRef` (a callback) is alive, so this is the
        // only reference in use.
        unsafe { &mut *self.shared }
    }

    /// Applies the cache invalidations the instrumentation asked for. Only between two
    /// entries into the cache: nothing of this Vm is executing.
    pub fn apply_flush(&mut self) {
        let shared = self.shared();
        if shared.inst.flush.all || !shared.inst.flush.ranges.is_empty() {
            self.continuations.clear();
        }
        if shared.inst.flush.all {
            shared.inst.flush.all = false;
            shared.inst.flush.ranges.clear();
            self.clear_all_cache();
            shared.inst.reset_sites();
            shared.memory.reset();
            shared.analyses.clear();
            return;
        }
        while let Some(r) = shared.inst.flush.ranges.pop() {
            self.clear_cache(r);
        }
    }

    /// Takes the ranges published since the last look (`late_code`): they join or leave
    /// the instrumented ranges, and the cache forgets what it knew of them (native entries
    /// of the inline table, translations).
    /// Takes the published range changes now if there are new ones (see `late_code`).
    pub fn sync_published_ranges(&mut self) {
        if crate::late_code::published() != self.late_seen {
            self.take_published_ranges();
        }
    }

    pub(super) fn take_published_ranges(&mut self) {
        // Mappings changed (or their permissions did): read them again when needed, unless
        // the change is a library's code, readable and not writable, which is noted as such.
        let mut reread = false;
        while let Some(c) = crate::late_code::change_at(self.late_seen) {
            self.late_seen += 1;
            let ranges = &mut self.shared().inst.ranges;
            if c.add {
                ranges.add(c.range);
            } else {
                ranges.remove(c.range);
            }
            self.forget(c.range);
            if c.mapped {
                self.readable.note_file_code(c.range.start, c.range.end);
            } else {
                reread = true;
            }
        }
        if reread {
            self.readable.invalidate();
        }
    }

    /// New options: the shared routines depend on them, so the whole cache goes.
    pub fn set_options(&mut self, options: Options) {
        self.options = options;
        self.fp = fp_mode(options);
        self.cache = None;
        self.shared().inst.reset_sites();
        self.shared().analyses.clear();
    }

    pub fn precache(&mut self, addr: u64) -> Result<bool, VmError> {
        self.ensure_cache(addr)?;
        self.apply_flush();
        if self.dir().lookup(addr).is_some() {
            return Ok(false);
        }
        self.translate(addr)?;
        self.new_blocks.clear();
        Ok(true)
    }

    /// Drops the translations of every block overlapping `range`, and native entries of the
    /// inline table inside it.
    pub fn clear_cache(&mut self, range: Range) {
        self.readable.invalidate();
        self.forget(range);
    }

    /// [`Engine::clear_cache`] but for the readable memory, which stays as it was read.
    fn forget(&mut self, range: Range) {
        let Some((cache, _)) = &self.cache else {
            return;
        };
        if range.is_empty() {
            return;
        }
        cache
            .table
            .remove_natives_in(range.start, range.end, cache.runtime.broker);
        cache.stop_native_calls();
        self.invalidate_overlapping(range);
    }

    /// Invalidates every live block whose guest bytes overlap `range`.
    pub(super) fn invalidate_overlapping(&mut self, range: Range) {
        self.continuations.clear();
        let mut doomed = std::mem::take(&mut self.scratch);
        if let Some((_, dir)) = &mut self.cache {
            dir.overlapping(range.start, range.end, &mut doomed);
        }
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
        self.continuations.clear();
        let Some((cache, dir)) = &self.cache else {
            return;
        };
        cache.table.clear();
        let mut doomed = std::mem::take(&mut self.scratch);
        dir.all_live(&mut doomed);
        for &start in &doomed {
            self.invalidate_block(start);
        }
        self.cache
            .as_ref()
            .expect("checked above")
            .0
            .allow_native_calls();
        doomed.clear();
        doomed.shrink_to(1024);
        self.scratch = doomed;
    }

    pub(super) fn ensure_cache(&mut self, near: u64) -> Result<(), VmError> {
        if self.cache.is_none() {
            let cb_fp = match self.fp {
                None => CallbackFp::None,
                Some(k)
                    if self.options.contains(Options::OPT_DISABLE_OPTIONAL_FPR)
                        || !k.has_xinuse() =>
                {
                    CallbackFp::Full(k)
                }
                Some(k) => CallbackFp::Optional(k),
            };
            let fsgs = self.options.contains(Options::OPT_ENABLE_FS_GS) && fsgsbase_usable();
            let cache = CodeCache::new(near, self.fp, cb_fp, fsgs)?;
            // SAFETY: the context is at the start of the new mapping; nothing runs yet.
            unsafe {
                let ctx = cache.ctx();
                (*ctx).cb_fn = site_entry as unsafe extern "C" fn(*mut CallbackEnv, u32) -> u64
                    as usize as u64;
                (*ctx).cb_data = &*self.cb_env as *const CallbackEnv as u64;
                self.cb_env.ctx = ctx;
                self.cb_env.fp = self.fp;
                self.cb_env.keep_errno = !self.options.contains(Options::OPT_DISABLE_ERRNO_BACKUP);
            }
            self.cache = Some((cache, Directory::new()));
            // Sites refer to code of the old cache, if any.
            self.shared().inst.reset_sites();
            self.shared().memory.reset();
        }
        Ok(())
    }

    /// The guest block whose translation contains host address `pc` (`None` outside this
    /// engine's translated blocks).
    /// The guest instruction whose translation contains host address `pc`, if it is one
    /// that can fault: (guest address, host start, borrowed register and the guest's value
    /// of it).
    pub fn fault_point(&self, pc: u64) -> Option<crate::vm::GuestFault> {
        let (cache, dir) = self.cache.as_ref()?;
        if !cache.contains(pc) {
            return None;
        }
        let f = dir.fault_at(pc)?;
        let scratch = (f.scratch != super::directory::NO_SCRATCH).then(|| {
            // SAFETY: the context of this live cache; its thread is suspended at `pc`.
            (f.scratch, unsafe { (*cache.ctx()).spill_far })
        });
        Some(crate::vm::GuestFault {
            guest_pc: f.guest,
            host_pc: f.host,
            scratch,
        })
    }

    /// Makes the guest of this suspended cache continue at guest address `target` when it
    /// jumps to the returned host address (the exit routine, leaving for the dispatcher).
    pub fn redirect_to(&self, target: u64) -> Option<u64> {
        let (cache, _) = self.cache.as_ref()?;
        let ctx = cache.ctx();
        // SAFETY: the context of this live cache; its thread is suspended in the cache.
        unsafe {
            (*ctx).ib_target = target;
            (*ctx).exit_id = super::context::EXIT_IB_MISS;
        }
        Some(cache.runtime.exit)
    }

    /// Sets the guest's value of the register a far RIP-relative operand borrows.
    pub fn set_spill_far(&self, value: u64) {
        if let Some((cache, _)) = &self.cache {
            // SAFETY: as above.
            unsafe { (*cache.ctx()).spill_far = value };
        }
    }

    pub fn cache_contains(&self, pc: u64) -> bool {
        self.cache
            .as_ref()
            .is_some_and(|(cache, _)| cache.contains(pc))
    }

    pub fn guest_block_at(&self, pc: u64) -> Option<crate::range::Range> {
        let (cache, dir) = self.cache.as_ref()?;
        if !cache.contains(pc) {
            return None;
        }
        dir.containing_host(pc)
            .map(|b| crate::range::Range::new(b.start, b.end))
    }

    /// Rewrites, in the words of `[lo, hi)`, every return address the exec broker redirected
    /// into the cache back to the guest address it stands for. Returns how many it rewrote.
    ///
    /// # Safety
    /// `[lo, hi)` must be readable and writable memory of a stack of this thread, and no
    /// guest code of this Vm may run concurrently.
    pub unsafe fn restore_return_addresses(&self, lo: u64, hi: u64) -> usize {
        let Some((cache, dir)) = self.cache.as_ref() else {
            return 0;
        };
        let mut count = 0;
        let mut at = (lo + 7) & !7;
        while at + 8 <= hi {
            let slot = at as *mut u64;
            // SAFETY: inside [lo, hi), readable and writable (caller), aligned.
            let value = unsafe { slot.read() };
            if cache.contains(value) {
                let guest = if value == cache.runtime.stop_return {
                    Some(self.stop)
                } else {
                    dir.by_host(value)
                        .map(|b| b.start)
                        .or_else(|| {
                            cache
                                .contains(value + 10)
                                .then(|| transfer_stub_target(dir, value))
                                .flatten()
                        })
                        .or_else(|| return_site_target(dir, value))
                };
                if let Some(guest) = guest {
                    // SAFETY: as above.
                    unsafe { slot.write(guest) };
                    count += 1;
                }
            }
            at += 8;
        }
        count
    }

    /// Starts the code cache over because it (or the directory, or the site tables) is
    /// full. Only from the dispatcher: nothing of this Vm is executing. Stub ids and host
    /// addresses from before are meaningless afterwards (`resets` tells).
    pub(super) fn reset_full_cache(&mut self) {
        self.continuations.clear();
        let (cache, dir) = self.cache.as_mut().expect("cache exists");
        cache.reset();
        dir.reset();
        self.resets += 1;
        let shared = self.shared();
        shared.inst.reset_sites();
        shared.memory.reset();
    }

    pub(super) fn cache(&self) -> &CodeCache {
        &self
            .cache
            .as_ref()
            .expect("the cache exists once a run or precache started")
            .0
    }

    pub(super) fn dir(&self) -> &Directory {
        &self
            .cache
            .as_ref()
            .expect("the cache exists once a run or precache started")
            .1
    }

    /// Translates the block at `pc` and enters it in the directory and the inline table.
    /// Allocates nothing (see `directory`).
    pub(super) fn translate(&mut self, pc: u64) -> Result<u64, VmError> {
        // Plugin code runs during translation (inline counters' slots, rules): a signal
        // handler must not translate on this thread meanwhile (see `threads::translating`).
        let _translating = crate::threads::Translating::start();
        self.translate_block(pc)
    }

    fn translate_block(&mut self, pc: u64) -> Result<u64, VmError> {
        let readable_end = self
            .readable
            .end_of(pc)
            .ok_or(VmError::AddressNotMapped(pc))?;
        let shared = self.shared();
        let limit = shared
            .inst
            .ranges
            .range_containing(pc)
            .map_or(readable_end, |r| r.end);
        let with_sites = shared.inst.has_sites() || !shared.memory.recorded.is_empty();
        let events = shared.inst.events;
        let (cache, dir) = self.cache.as_mut().expect("cache exists");
        let sites_full = with_sites
            && (!shared.inst.has_room(MAX_BLOCK_SITES, MAX_BLOCK_SITES * 8)
                || !shared.memory.has_room_for_block());
        if cache.room() < MAX_BLOCK_HOST_BYTES || !dir.has_room(MAX_BLOCK_STUBS) || sites_full {
            self.reset_full_cache();
        }
        let shared = self.shared();
        let (cache, dir) = self.cache.as_mut().expect("cache exists");
        let host = cache.next_addr();
        let ranges: *const RangeSet = &shared.inst.ranges;
        // SAFETY: translation plants sites but never changes the ranges.
        let in_range = |a: u64| unsafe { (*ranges).contains(a) };
        let readable = &self.readable;
        let read_word = |a: u64| {
            // SAFETY: the 8 bytes are in a readable mapping as the maps were last read
            // (and those are read again after any change the host sees).
            readable
                .known_readable(a, 8)
                .then(|| unsafe { (a as *const u64).read_unaligned() })
        };
        // A block an exit may reach: its flags' liveness from its first bytes, if they are
        // known readable and do not change (no byte check).
        let flags_live_at = |a: u64| {
            if readable.volatile_at(a).is_some() {
                return None;
            }
            let end = readable.known_end(a)?;
            let len = (end - a).min(super::inline::FLAGS_LOOKAHEAD_BYTES) as usize;
            // SAFETY: [a, a + len) is readable memory as the maps were last read.
            let bytes = unsafe { std::slice::from_raw_parts(a as *const u8, len) };
            Some(super::inline::status_flags_live(bytes, a))
        };
        let code_bytes = |a: u64| {
            if readable.volatile_at(a).is_some() || !readable.known_readable(a, 16) {
                return None;
            }
            // SAFETY: as for `read_word`.
            Some(unsafe { (a as *const [u8; 16]).read_unaligned() })
        };
        let env = Env {
            ctx: cache.ctx_addr(),
            table: cache.table_addr(),
            runtime: cache.runtime,
            in_range: &in_range,
            limit,
            readable_end,
            boundary: self.stop,
            first_stub_id: FIRST_STUB_ID + dir.next_stub(),
            inline_broker: !events.intersects(TRANSFER_EVENTS),
            new_blocks_reported: events.contains(VmEvent::BASIC_BLOCK_NEW),
            code_bytes: &code_bytes,
            check_bytes: self.readable.volatile_at(pc).is_some(),
            read_word: &read_word,
            flags_live_at: &flags_live_at,
            site_entry: cache.next_site_entry().map(|e| (e, cache.countdown_of(e))),
            code_start: cache.code_start(),
        };
        let values = !self
            .options
            .contains(Options::OPT_DISABLE_MEMORYACCESS_VALUE);
        // The basic block this translation belongs to (a split one takes several).
        let block_start = self
            .continuations
            .iter()
            .find(|c| c.0 == pc)
            .map_or(pc, |c| c.1);
        let hooks = with_sites.then(|| Hooks {
            inst: &mut shared.inst,
            mem: &mut shared.memory,
            analyses: &mut shared.analyses,
            values,
            block_start,
            seq_start: pc,
            events: events & INLINE_EVENTS,
        });
        let t = self.translator.translate(pc, host, &env, hooks)?;
        let block_end = t.block_end;
        if t.cut {
            if self.continuations.len() == self.continuations.capacity() {
                self.continuations.remove(0);
            }
            self.continuations.push((t.guest_end, block_start));
        }
        cache.commit(&self.translator.asm);
        if self.perf_map {
            super::perf_map::note_block(host, self.translator.asm.len() as u64, pc);
        }
        if t.site_entry {
            cache.take_site_entry();
        }
        dir.push_faults(&self.translator.faults);
        for &(site, at, general) in &self.translator.inline_addrs {
            let s = &mut shared.inst.sites[site as usize];
            s.inline_at = at;
            s.inline_general = general;
        }
        for &(site, skip_inst, skip_patch) in &self.translator.site_addrs {
            let s = &mut shared.inst.sites[site as usize];
            s.skip_inst = skip_inst;
            s.skip_patch = skip_patch;
            s.block_end = block_end;
            s.seq_end = t.guest_end;
            s.state.basic_block_end = block_end;
            s.state.sequence_end = t.guest_end;
        }
        // A basic block is new once, at its first piece.
        if events.contains(VmEvent::BASIC_BLOCK_NEW)
            && block_start == pc
            && self.new_blocks.len() < self.new_blocks.capacity()
        {
            self.new_blocks.push((pc, block_end));
        }
        let first = dir.next_stub();
        for e in &self.translator.exits {
            dir.push_stub(e.target, e.site, e.stub, e.kind);
            dir.mark_last_stub(e.counted, e.chained);
        }
        // The block's header is at `host`, then the table entry, where indirect branches
        // enter; everything else (links, the dispatcher, the directory) uses the block
        // itself, after it.
        let entry = host + ENTRY_HEADER_LEN + ENTRY_PREFIX_LEN;
        dir.insert(pc, t.guest_end, entry, first + t.reentry as u32);
        dir.set_last_entries(entry + t.linked, block_start);
        // Not in the inline table yet: the dispatcher puts it there when an indirect branch
        // (or anything but a direct branch) first comes to it (see `next_for`).
        // Link this block's exits to blocks that already exist (itself included).
        for i in first..dir.stub_count() {
            let s = dir.stub(i);
            if s.site == 0 || s.kind != ExitKind::Branch || s.target == self.stop {
                continue;
            }
            if let Some(h) = dir
                .lookup(s.target)
                .map(|b| if s.counted { b.linked } else { b.host })
            {
                link(dir, i, h);
            }
        }
        // With BASIC_BLOCK_NEW reported, a call site skips a PLT entry's block only once
        // that block is in the table (translated, so reported; see the translator's
        // `emit_native_slot_call`).
        if events.contains(VmEvent::BASIC_BLOCK_NEW) && pc != self.stop && readable_end - pc >= 16 {
            // SAFETY: [pc, readable_end) is readable: the block's bytes were read from it.
            let head = unsafe { (pc as *const [u8; 16]).read_unaligned() };
            if super::translator::plt_slot(&head, pc).is_some() {
                cache.table.insert_block(pc, entry);
            }
        }
        Ok(entry)
    }

    /// Points stub `i`'s branch straight at `host`.
    pub(super) fn link(&mut self, i: u32, host: u64) {
        link(&mut self.cache.as_mut().expect("cache exists").1, i, host);
    }

    /// Removes a block: out of the directory and the table, its incoming links back to
    /// their stubs, and its entry turned into a jump to its reentry stub.
    pub(super) fn invalidate_block(&mut self, start: u64) {
        let (cache, dir) = self.cache.as_mut().expect("blocks exist only with a cache");
        // SAFETY (closure): as in `link`: each site is a committed branch, nothing runs.
        let Some(block) = dir.remove(start, |s| unsafe {
            super::emitter::patch_rel32(s.site, s.stub)
        }) else {
            return;
        };
        cache.table.remove(start);
        cache.table.note_removed();
        let reentry = dir.stub(block.reentry_stub).stub;
        // jmp rel32 to the reentry stub, written over the block's first bytes (every block
        // is longer than 5 bytes). Written rel32 first, opcode last.
        // SAFETY: the block's code is committed, writable, and not executing.
        unsafe {
            super::emitter::patch_rel32(block.host + 1, reentry);
            (block.host as *mut u8).write_volatile(0xe9);
        }
    }
}

/// Points stub `i`'s branch straight at `host` (the translation of its target).
pub(super) fn link(dir: &mut Directory, i: u32, host: u64) {
    let s = dir.stub(i);
    debug_assert!(s.site != 0 && s.kind == ExitKind::Branch && !s.linked);
    // SAFETY: `site` is the rel32 of a branch of committed code; no guest code of this Vm
    // runs while the dispatcher links.
    unsafe { super::emitter::patch_rel32(s.site, host) };
    dir.mark_linked(i);
}

pub(super) fn fp_mode(options: Options) -> Option<XSaveKind> {
    (!options.contains(Options::OPT_DISABLE_FPR)).then(XSaveKind::detect)
}

/// The guest return address a real `call` of native code from translated code stands
/// for: such a call returns to the jump of an exit (`jmp rel32`, whose rel32 field is the
/// exit's site) to the guest address after the call. A linear scan: for stack unwinding.
fn return_site_target(dir: &Directory, host: u64) -> Option<u64> {
    (0..dir.stub_count())
        .map(|i| dir.stub(i))
        .find(|s| s.site == host + 1 && s.kind == ExitKind::Branch)
        .map(|s| s.target)
}

/// The guest return address of the transfer return stub at host address `host`, if `host`
/// is one (the stub's first instruction holds its id: `mov dword [rip+d], FIRST_STUB_ID +
/// id`).
pub(super) fn transfer_stub_target(dir: &Directory, host: u64) -> Option<u64> {
    // SAFETY: `host..host + 10` is inside the code cache mapping (the caller checked).
    let id = unsafe { ((host + 6) as *const u32).read_unaligned() };
    let i = id.checked_sub(super::context::FIRST_STUB_ID)?;
    (i < dir.stub_count())
        .then(|| dir.stub(i))
        .filter(|s| s.kind == ExitKind::TransferReturn && s.stub == host)
        .map(|s| s.target)
}
