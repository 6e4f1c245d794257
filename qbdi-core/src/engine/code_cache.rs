//! The code cache region: one mapping holding the context, the inline indirect-branch
//! table, the shared routines, the translated blocks and the site caches of returns and
//! indirect jumps, in that order. Placed within
//! +/-2 GiB of the guest code it is created for, so RIP-relative guest operands usually
//! stay RIP-relative after translation; every piece of generated code reaches the context
//! and the table RIP-relative.
//!
//! The mapping is read-write-execute: the engine writes and patches code only from the
//! dispatcher, while no guest code of this Vm runs. It never frees code piecemeal: blocks
//! are invalidated in place (their entry becomes a jump back to the dispatcher) and the
//! space is reused only when the whole cache is reset.

use super::context::Context;
use super::context_switch::{CallbackFp, Runtime, emit_runtime};
use super::emitter::Asm;
use super::ib_table::{IbTable, TABLE_BYTES};
use super::xstate::XSaveKind;
use crate::error::VmError;

const CONTEXT_BYTES: usize = 16384;
const TABLE_OFFSET: usize = CONTEXT_BYTES;
const CODE_OFFSET: usize = TABLE_OFFSET + TABLE_BYTES;
/// Room for translated code. Reserved, not committed (MAP_NORESERVE): pages cost memory
/// only once written. 128 MiB holds on the order of a million blocks.
const CODE_BYTES: usize = 128 << 20;
/// The site caches of returns, indirect jumps and edge-counting indirect calls (two pairs
/// of a guest and a host address each, see the translator's `emit_site_check`), after the
/// code: small pages, touched as sites are made.
const SITE_OFFSET: usize = CODE_OFFSET + CODE_BYTES;
pub(crate) const SITE_ENTRIES: usize = 1 << 16;
/// Two (guest, host) pairs per site, then, for a site that counts its edge there, each
/// pair's map line and where a hit goes (see `inline::emit_counting_hits`): one cache line.
pub(crate) const SITE_ENTRY_BYTES: usize = 64;
const SITE_BYTES: usize = SITE_ENTRIES * SITE_ENTRY_BYTES;
/// One countdown (a `u32`) per entry, after them: how many more times an indirect jump's or
/// call's site may fill its entry before it stops using it (see the translator's
/// `emit_counted_fill`).
const COUNTDOWN_OFFSET: usize = SITE_OFFSET + SITE_BYTES;
const REGION_BYTES: usize = COUNTDOWN_OFFSET + SITE_ENTRIES * 4;
/// Fills an indirect jump's or call's site cache is allowed (see `COUNTDOWN_OFFSET`).
pub(crate) const SITE_FILLS: u32 = 256;
/// Placement search: try this far apart, this many times, below then above the guest.
const PLACEMENT_STEP: u64 = 64 << 20;
const PLACEMENT_TRIES: u64 = 24;

pub(crate) struct CodeCache {
    base: u64,
    /// First byte after the shared routines.
    code_start: u64,
    cursor: u64,
    end: u64,
    pub runtime: Runtime,
    pub table: IbTable,
    /// Entries of the site caches given out.
    site_used: usize,
}

impl CodeCache {
    /// A cache placed near `near`, with FP state saved as `fp` says (None: not at all) and
    /// the guest's own FS and GS bases if `fsgs`.
    pub fn new(
        near: u64,
        fp: Option<XSaveKind>,
        cb_fp: CallbackFp,
        fsgs: bool,
    ) -> Result<CodeCache, VmError> {
        let base = map_near(near)?;
        register_cache(base);
        let ctx = base;
        let table = base + TABLE_OFFSET as u64;
        let code = base + CODE_OFFSET as u64;
        let mut a = Asm::new();
        a.reset(code);
        let runtime = emit_runtime(&mut a, ctx, table, fp, cb_fp, fsgs);
        // SAFETY: the region is ours, writable, and `a` fits far inside CODE_BYTES.
        unsafe { std::ptr::copy_nonoverlapping(a.buf.as_ptr(), code as *mut u8, a.len()) };
        let code_start = (code + a.len() as u64).next_multiple_of(64);
        // SAFETY: the table lies inside the mapping, which lives as long as the cache.
        let table = unsafe { IbTable::new(table, runtime.miss_entry) };
        let cache = CodeCache {
            base,
            code_start,
            cursor: code_start,
            end: base + SITE_OFFSET as u64,
            runtime,
            table,
            site_used: 0,
        };
        cache.allow_native_calls();
        Ok(cache)
    }

    /// A site cache's empty pair: no guest address is `u64::MAX`; its host is the miss
    /// path, as the table's empty entries.
    fn empty_pair(&self) -> [u64; 2] {
        [u64::MAX, self.runtime.miss_entry]
    }

    /// Lets calls to PLT entries cache native targets (the translator's
    /// `emit_native_slot_call`): a fresh cache, or one whose blocks are all gone.
    pub fn allow_native_calls(&self) {
        // SAFETY: the context is ours; nothing runs in the cache.
        unsafe { (*self.ctx()).native_refill = self.runtime.broker };
    }

    /// After a partial flush: a call to a PLT entry skips that entry's block, which may now
    /// have instrumentation (a callback at an address in it, code that joined the ranges),
    /// so the calls translated before stop skipping it (their cached targets are emptied,
    /// with every other site's, and no longer refilled) until every block is gone.
    pub fn stop_native_calls(&self) {
        // SAFETY: as above.
        unsafe { (*self.ctx()).native_refill = 0 };
        let empty = self.empty_pair();
        for i in 0..self.site_used {
            let e = self.site_entry(i) as *mut [u64; 2];
            // SAFETY: a taken entry's two pairs in the mapping; nothing runs in the cache.
            unsafe {
                e.write(empty);
                e.add(1).write(empty);
            }
        }
    }

    /// Whether `addr` is inside the cache's mapping.
    pub fn contains(&self, addr: u64) -> bool {
        (self.base..self.end).contains(&addr)
    }

    pub fn ctx_addr(&self) -> u64 {
        self.base
    }

    pub fn ctx(&self) -> *mut Context {
        self.base as *mut Context
    }

    pub fn table_addr(&self) -> u64 {
        self.base + TABLE_OFFSET as u64
    }

    /// Where the next block will go, if `len` more bytes fit.
    pub fn next_addr(&self) -> u64 {
        self.cursor
    }

    /// Where the blocks start (the shared routines are below).
    pub fn code_start(&self) -> u64 {
        self.code_start
    }

    pub fn room(&self) -> u64 {
        self.end - self.cursor
    }

    /// Copies assembled code to the cursor (the address it was assembled for).
    pub fn commit(&mut self, a: &Asm) {
        assert_eq!(a.base, self.cursor, "code assembled for the cursor address");
        assert!(a.len() as u64 <= self.room(), "caller checked room");
        // SAFETY: [cursor, cursor+len) is inside the writable mapping and not executing.
        unsafe { std::ptr::copy_nonoverlapping(a.buf.as_ptr(), self.cursor as *mut u8, a.len()) };
        self.cursor = (self.cursor + a.len() as u64).next_multiple_of(16);
    }

    /// The address of the next free entry of the site caches, if any is left.
    pub fn next_site_entry(&self) -> Option<u64> {
        (self.site_used < SITE_ENTRIES).then(|| self.site_entry(self.site_used))
    }

    fn site_entry(&self, i: usize) -> u64 {
        self.base + (SITE_OFFSET + SITE_ENTRY_BYTES * i) as u64
    }

    /// The countdown of the entry at `e` (an address [`next_site_entry`] gave).
    ///
    /// [`next_site_entry`]: Self::next_site_entry
    pub fn countdown_of(&self, e: u64) -> u64 {
        let i = (e - self.site_entry(0)) / SITE_ENTRY_BYTES as u64;
        self.base + COUNTDOWN_OFFSET as u64 + 4 * i
    }

    /// Takes the entry [`next_site_entry`](Self::next_site_entry) gave: both pairs empty (no
    /// guest address is `u64::MAX`; its host is the miss path, as the table's empty
    /// entries).
    pub fn take_site_entry(&mut self) {
        let e = self.site_entry(self.site_used) as *mut [u64; 2];
        let empty = self.empty_pair();
        let countdown = self.countdown_of(e as u64) as *mut u32;
        // SAFETY: the entry's two pairs and its countdown lie in the mapping, in the ret
        // area, and no code reads them yet.
        unsafe {
            e.write(empty);
            e.add(1).write(empty);
            countdown.write(SITE_FILLS);
        }
        self.site_used += 1;
    }

    /// Empties every pair of the site caches that is not in the table (after
    /// blocks were removed: a pair's host may be one of them).
    pub fn prune_site_entries(&mut self) {
        let empty = self.empty_pair();
        for i in 0..self.site_used {
            let e = self.site_entry(i) as *mut [u64; 2];
            for k in 0..2 {
                // SAFETY: a taken entry's pair in the mapping; nothing runs in the cache.
                unsafe {
                    let [guest, host] = *e.add(k);
                    if guest != u64::MAX && !self.table.holds(guest, host) {
                        e.add(k).write(empty);
                    }
                }
            }
        }
    }

    /// Forgets every block: the space after the shared routines is reused.
    pub fn reset(&mut self) {
        self.cursor = self.code_start;
        self.site_used = 0;
        self.table.clear();
        self.allow_native_calls();
    }
}

/// The code caches of the process (their bases; 0: free), so that no Vm takes another's
/// translated code for the guest's own (see `late_code::instrument_anonymous_code`).
const MAX_CACHES: usize = 1024;
static CACHES: [std::sync::atomic::AtomicU64; MAX_CACHES] =
    [const { std::sync::atomic::AtomicU64::new(0) }; MAX_CACHES];

fn register_cache(base: u64) {
    use std::sync::atomic::Ordering;
    for c in &CACHES {
        if c.compare_exchange(0, base, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            return;
        }
    }
}

fn unregister_cache(base: u64) {
    use std::sync::atomic::Ordering;
    for c in &CACHES {
        if c.compare_exchange(base, 0, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            return;
        }
    }
}

/// Whether `addr` is in the code cache of any Vm of the process.
pub(crate) fn is_code_cache(addr: u64) -> bool {
    CACHES.iter().any(|c| {
        let base = c.load(std::sync::atomic::Ordering::Acquire);
        base != 0 && base <= addr && addr < base + REGION_BYTES as u64
    })
}

impl Drop for CodeCache {
    fn drop(&mut self) {
        unregister_cache(self.base);
        // SAFETY: the region was mapped by map_near with this size; nothing runs in it now.
        unsafe { libc::munmap(self.base as *mut libc::c_void, REGION_BYTES) };
    }
}

fn try_map(addr: u64, flags: libc::c_int) -> Option<u64> {
    try_map_len(addr, flags, REGION_BYTES)
}

fn try_map_len(addr: u64, flags: libc::c_int, len: usize) -> Option<u64> {
    // SAFETY: anonymous mapping; with MAP_FIXED_NOREPLACE it never replaces an existing one.
    let p = unsafe {
        libc::mmap(
            addr as *mut libc::c_void,
            len,
            libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | flags,
            -1,
            0,
        )
    };
    (p != libc::MAP_FAILED).then_some(p as u64)
}

/// Huge pages (2 MiB) for the region past its first 2 MiB (the context, the inline table,
/// the shared routines and the first ~900 KiB of code), where the kernel grants them
/// (transparent huge pages in `madvise` or `always` mode): a cache that grows large then
/// seldom meets a page never touched (a fault per 4 KiB page otherwise: about a fifth of
/// translation time on large code) and its code takes fewer iTLB entries. The first 2 MiB
/// keep small pages: a huge page there would be cleared whole by the first write, about
/// 0.3 ms at every start-up and per thread. `QBDI_HUGEPAGES=0` turns the advice off.
const HUGE_PAGE: u64 = 2 << 20;

fn advise_huge(p: u64) {
    advise_huge_past_first(p, SITE_OFFSET);
}

/// Advises huge pages for `[start + 2 MiB, start + len)` rounded in to whole huge pages (a
/// huge page needs a whole aligned 2 MiB inside the advice), unless `QBDI_HUGEPAGES=0`.
/// The memory is ours and anonymous; a refusal (no transparent huge pages) is harmless.
pub(crate) fn advise_huge_past_first(start: u64, len: usize) {
    // SAFETY: getenv returns null or a NUL-terminated string that lives while the
    // environment is not changed; it is read at once and not kept (no allocation here: a
    // cache may be created while the guest holds the heap's lock).
    let off = unsafe {
        let v = libc::getenv(c"QBDI_HUGEPAGES".as_ptr());
        !v.is_null() && std::ffi::CStr::from_ptr(v).to_bytes() == b"0"
    };
    let from = (start + HUGE_PAGE).next_multiple_of(HUGE_PAGE);
    let to = (start + len as u64) / HUGE_PAGE * HUGE_PAGE;
    if off || from >= to {
        return;
    }
    // SAFETY: advice on whole pages of memory we own (see above).
    unsafe {
        libc::madvise(
            from as *mut libc::c_void,
            (to - from) as usize,
            libc::MADV_HUGEPAGE,
        )
    };
}

/// Maps the region within reach of `near` if possible, anywhere otherwise.
fn map_near(near: u64) -> Result<u64, VmError> {
    let size = REGION_BYTES as u64;
    let near = near & !(HUGE_PAGE - 1);
    for i in 0..PLACEMENT_TRIES {
        let below = near
            .checked_sub(size + (i + 1) * PLACEMENT_STEP)
            .map(|b| b & !(HUGE_PAGE - 1));
        let above = near.checked_add((i + 1) * PLACEMENT_STEP);
        for cand in [below, above].into_iter().flatten() {
            if cand < 0x1_0000 || cand + size >= 0x7fff_ffff_f000 {
                continue;
            }
            if let Some(p) = try_map(cand, libc::MAP_FIXED_NOREPLACE) {
                if p == cand {
                    advise_huge(p);
                    return Ok(p);
                }
                // An old kernel ignoring MAP_FIXED_NOREPLACE put it elsewhere.
                // SAFETY: we just mapped it.
                unsafe { libc::munmap(p as *mut libc::c_void, REGION_BYTES) };
            }
        }
    }
    // Anywhere: over-map by a huge page to align the region for `advise_huge`.
    if let Some(p) = try_map_len(0, 0, REGION_BYTES + HUGE_PAGE as usize) {
        let aligned = p.next_multiple_of(HUGE_PAGE);
        // SAFETY: both pieces lie in the mapping just made, outside the aligned region.
        unsafe {
            if aligned > p {
                libc::munmap(p as *mut libc::c_void, (aligned - p) as usize);
            }
            let tail = aligned + REGION_BYTES as u64;
            let end = p + (REGION_BYTES as u64 + HUGE_PAGE);
            libc::munmap(tail as *mut libc::c_void, (end - tail) as usize);
        }
        advise_huge(aligned);
        return Ok(aligned);
    }
    try_map(0, 0).ok_or_else(|| {
        VmError::OutOfMemory(format!(
            "cannot map a {} MiB code cache: {}",
            REGION_BYTES >> 20,
            std::io::Error::last_os_error()
        ))
    })
}
