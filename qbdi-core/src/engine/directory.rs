//! The cache directory: which guest block is translated where, its exit stubs, and which
//! stubs are linked to which block.
//!
//! It allocates nothing after creation. The guest may be anywhere when it leaves the cache,
//! including inside an instrumented `malloc` holding the heap lock; if the dispatcher then
//! called `malloc` (a `Vec` growing, a `BTreeMap` node) the thread would deadlock on itself.
//! So every table here has a fixed capacity reserved up front, links are intrusive lists
//! threaded through the stubs, and a full directory is reported to the engine, which resets
//! the whole cache.
//!
//! The reserved tables start as zeroed memory the OS hands out lazily, and "empty" is zero
//! in each, so that creating a directory touches none of their pages. The start -> block
//! map uses a small part of its reservation and grows into the next part (see
//! [`Directory::insert`]): a map spread over its whole reservation would put nearly every
//! new block on a fresh page.
//! Past their first 2 MiB the large tables are advised huge pages, as the code cache is:
//! `python3 -c 'import json, re, email.parser, decimal, argparse, csv, sqlite3'` under
//! `--all-maps` (45,000 blocks) took 6,945 page faults with small pages, 5,299 with them, and
//! its median time (`perf stat` task-clock, 25 runs interleaved with the build before)
//! went from 153 to 143 ms.

/// What an exit stub does when the guest reaches it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ExitKind {
    /// Continue at `target` (a direct branch, fall-through or return site): linkable.
    Branch,
    /// Continue at `target`, never linked: the entry of an invalidated block.
    Reentry,
    /// `target` holds undecodable bytes.
    Invalid,
    /// `target` holds an instruction the engine refuses to run.
    Unsupported,
    /// Native code called with EXEC_TRANSFER events returns here: report the return, then
    /// continue at `target` (the guest return address). One stub per return address, so a
    /// `longjmp` to a return address `setjmp` recorded in native code lands right.
    TransferReturn,
}

/// No stub / no block.
pub(crate) const NONE: u32 = u32::MAX;

/// A way out of a block to the dispatcher.
#[derive(Clone, Copy, Debug)]
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
    /// The path to this stub counted its edge: it goes to the target's linked entry
    /// (`Block::linked`).
    pub counted: bool,
    /// Its block is the last of the edge chains on the way out here (see
    /// `translator::EmittedExit::chained`).
    pub chained: bool,
    /// Next stub linked to the same block (intrusive list), or NONE.
    next_incoming: u32,
}

/// One translated basic block.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Block {
    /// Guest addresses it translates: `[start, end)`.
    pub start: u64,
    pub end: u64,
    /// Host address of its translation, where everything but the inline table enters it
    /// (the table's entry, `ib_table::ENTRY_PREFIX_LEN` bytes of it, comes just before,
    /// after the block's header, `ib_table::ENTRY_HEADER_LEN` bytes).
    pub host: u64,
    /// Where exits that counted their edge enter it (`host` when it has no edge maps; see
    /// `engine/inline.rs`).
    pub linked: u64,
    /// The basic block it belongs to starts here (`start` but for a piece of a block whose
    /// host code was split).
    pub bb_start: u64,
    /// Its stub that re-enters the dispatcher at `start` (for invalidation).
    pub reentry_stub: u32,
    /// First stub linked to this block, or NONE.
    incoming: u32,
    /// Next block (older) in the same page bucket, as block index + 1; 0: none.
    next_in_page: u32,
    pub live: bool,
}

/// Capacities. A block has 2 to 4 stubs on average; the code cache fills up before these
/// do for ordinary code (128 MiB at about 150 bytes a block).
const MAX_BLOCKS: usize = 1 << 18;
const MAX_STUBS: usize = 1 << 20;
/// Open-addressing slots of the start -> block map at its largest: twice the blocks, a
/// power of two.
const MAP_SLOTS: usize = MAX_BLOCKS * 2;
/// Slots of the map at creation and after a reset (a power of two): 64 KiB.
const MAP_MIN_SLOTS: usize = 1 << 12;
/// Slots reserved for the map: its regions of `MAP_MIN_SLOTS`, twice as many, ...,
/// `MAP_SLOTS` slots, one after the other (see [`region_base`]).
const MAP_RESERVED: usize = 2 * MAP_SLOTS - MAP_MIN_SLOTS;
/// Buckets of the page index (guest page number modulo this).
const PAGE_BUCKETS: usize = 1 << 16;
/// Slots of the guest return address -> transfer return stub cache (direct-mapped).
const TRANSFER_SLOTS: usize = 1 << 12;
/// A block never spans more guest bytes than this (the translator's limit).
const MAX_BLOCK_GUEST_BYTES: u64 = super::translator::MAX_BLOCK_INSTRUCTIONS as u64 * 15;

pub(crate) struct Directory {
    blocks: Vec<Block>,
    stubs: Vec<ExitStub>,
    /// The start -> block map: open addressing, linear probing, (guest start's low 32
    /// bits, block index + 1); 0 = empty. A slot whose key matches is the start's if its
    /// block's is (8-byte slots, half the pages of whole starts: the map's slots are
    /// touched at random). Only the region of `map_mask + 1` slots at `map_base` is in use
    /// (see [`region_base`]); every slot outside it is empty.
    map: Vec<(u32, u32)>,
    map_base: usize,
    /// Slots of the region in use, minus one (a power of two minus one).
    map_mask: usize,
    /// 64 - log2(slots of the region in use): the shift of the map's hash.
    map_shift: u32,
    /// Page index: for each bucket, the newest block starting in a page of that bucket (as
    /// block index + 1; 0: none); blocks chain through `next_in_page`. Dead blocks are
    /// unchained lazily.
    pages: Vec<u32>,
    live: usize,
    /// Guest span of all blocks ever entered since the last reset: a fast "surely not
    /// translated" test for `blocks_overlapping`.
    lo: u64,
    hi: u64,
    /// (guest return address, stub id + 1) of transfer return stubs; 0: empty.
    transfer: Vec<(u64, u32)>,
    /// The translated guest instructions that can fault, in host address order (blocks are
    /// committed in address order between resets): see [`FaultPoint`], [`PackedFault`].
    faults: Vec<PackedFault>,
    /// The host address `faults` count from: the first one's since the last reset.
    fault_base: u64,
}

/// A translated guest instruction that can fault: its host code `[host, host + len)`, its
/// guest address, and the register (hardware number) the translation borrowed and spilled
/// to `ctx.spill_far` around it (a far RIP-relative operand), or `NO_SCRATCH`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FaultPoint {
    pub host: u64,
    pub guest: u64,
    pub len: u8,
    pub scratch: u8,
}

/// A [`FaultPoint`] as the directory keeps it, in 12 bytes instead of 24: there is one per
/// translated instruction that can fault, and at 24 bytes they took as many fresh pages as
/// the code itself. The host address is an offset from [`Directory::fault_base`] (blocks
/// are committed in address order into a code cache far smaller than 4 GiB); the guest
/// address keeps its low 48 bits (sign-extended back: user addresses are below 2^47),
/// beside the length and the borrowed register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct PackedFault([u32; 3]);

impl PackedFault {
    fn new(f: &FaultPoint, base: u64) -> PackedFault {
        let off = f.host - base;
        debug_assert!(off <= u64::from(u32::MAX), "a code cache under 4 GiB");
        PackedFault([
            off as u32,
            f.guest as u32,
            (f.guest >> 32) as u32 & 0xffff | u32::from(f.len) << 16 | u32::from(f.scratch) << 24,
        ])
    }

    fn host_offset(self) -> u32 {
        self.0[0]
    }

    fn unpack(self, base: u64) -> FaultPoint {
        let [off, lo, hi] = self.0;
        FaultPoint {
            host: base + u64::from(off),
            guest: (i64::from(hi as u16 as i16) << 32) as u64 | u64::from(lo),
            len: (hi >> 16) as u8,
            scratch: (hi >> 24) as u8,
        }
    }
}

/// `FaultPoint::scratch` when no register was borrowed.
pub(crate) const NO_SCRATCH: u8 = 0xff;

/// Huge pages for the reserved memory of `v` past its first 2 MiB (see
/// `code_cache::advise_huge_past_first`).
fn advise_huge<T>(v: &Vec<T>) {
    super::code_cache::advise_huge_past_first(
        v.as_ptr() as u64,
        v.capacity() * std::mem::size_of::<T>(),
    );
}

/// Capacity of the fault map (a block has at most 128 instructions; the cache fills up
/// long before this does for ordinary code).
const MAX_FAULTS: usize = MAX_BLOCKS * 8;

impl Directory {
    pub fn new() -> Directory {
        let d = Directory {
            blocks: Vec::with_capacity(MAX_BLOCKS),
            stubs: Vec::with_capacity(MAX_STUBS),
            // Zeroed: fresh memory from the allocator, untouched until used.
            map: vec![(0, 0); MAP_RESERVED],
            map_base: region_base(MAP_MIN_SLOTS),
            map_mask: MAP_MIN_SLOTS - 1,
            map_shift: 64 - MAP_MIN_SLOTS.trailing_zeros(),
            pages: vec![0; PAGE_BUCKETS],
            live: 0,
            lo: u64::MAX,
            hi: 0,
            transfer: vec![(0, 0); TRANSFER_SLOTS],
            faults: Vec::with_capacity(MAX_FAULTS),
            fault_base: 0,
        };
        // The large tables fill a page at a time as blocks come (a python3 import one-liner:
        // about 3,600 page faults for 45,000 blocks); past their first 2 MiB, huge pages.
        advise_huge(&d.blocks);
        advise_huge(&d.stubs);
        advise_huge(&d.map);
        advise_huge(&d.faults);
        d
    }

    /// Enters the fault points of a block just committed (in host address order).
    pub fn push_faults(&mut self, points: &[FaultPoint]) {
        if let (true, Some(first)) = (self.faults.is_empty(), points.first()) {
            self.fault_base = first.host;
        }
        let base = self.fault_base;
        self.faults
            .extend(points.iter().map(|f| PackedFault::new(f, base)));
    }

    /// The fault point whose host code contains `pc`.
    pub fn fault_at(&self, pc: u64) -> Option<FaultPoint> {
        let off = u32::try_from(pc.checked_sub(self.fault_base)?).ok()?;
        let after = self.faults.partition_point(|f| f.host_offset() <= off);
        let f = self.faults[..after].last()?.unpack(self.fault_base);
        (pc < f.host + u64::from(f.len)).then_some(f)
    }

    /// The transfer return stub for guest return address `ret`, if one was made.
    pub fn transfer_stub(&self, ret: u64) -> Option<&ExitStub> {
        let (guest, id) = self.transfer[transfer_slot(ret)];
        (id != 0 && guest == ret).then(|| &self.stubs[id as usize - 1])
    }

    /// Records stub `id` (a TransferReturn stub) as the one for its target.
    pub fn set_transfer_stub(&mut self, id: u32) {
        let ret = self.stubs[id as usize].target;
        self.transfer[transfer_slot(ret)] = (ret, id + 1);
    }

    /// Whether a block with `stubs` more stubs still fits.
    pub fn has_room(&self, stubs: usize) -> bool {
        self.blocks.len() < MAX_BLOCKS
            && self.stubs.len() + stubs <= MAX_STUBS
            && self.faults.len() + super::translator::MAX_BLOCK_INSTRUCTIONS <= MAX_FAULTS
    }

    /// Id the next stub will get.
    pub fn next_stub(&self) -> u32 {
        self.stubs.len() as u32
    }

    pub fn stub(&self, i: u32) -> &ExitStub {
        &self.stubs[i as usize]
    }

    pub fn stub_count(&self) -> u32 {
        self.stubs.len() as u32
    }

    pub fn push_stub(&mut self, target: u64, site: u64, stub: u64, kind: ExitKind) {
        assert!(self.stubs.len() < MAX_STUBS, "callers check has_room");
        self.stubs.push(ExitStub {
            target,
            site,
            stub,
            kind,
            linked: false,
            counted: false,
            chained: false,
            next_incoming: NONE,
        });
    }

    /// Marks the last stub pushed: reached by a path that counted its edge (`counted`), and
    /// leaving its block last of the edge chains (`chained`).
    pub fn mark_last_stub(&mut self, counted: bool, chained: bool) {
        if let Some(s) = self.stubs.last_mut() {
            s.counted = counted;
            s.chained = chained;
        }
    }

    /// The home slot of `start` in the map's region in use (an index in that region).
    fn slot_of(&self, start: u64) -> usize {
        map_hash(start as u32, self.map_shift)
    }

    /// The map's region in use.
    fn region(&self) -> &[(u32, u32)] {
        &self.map[self.map_base..=self.map_base + self.map_mask]
    }

    fn region_mut(&mut self) -> &mut [(u32, u32)] {
        &mut self.map[self.map_base..=self.map_base + self.map_mask]
    }

    /// The slot of the map's region in use holding `start`, if a live block starts there.
    fn find_slot(&self, start: u64) -> Option<usize> {
        let region = self.region();
        let mut s = self.slot_of(start);
        loop {
            let (k, v) = region[s];
            if v == 0 {
                return None;
            }
            if k == start as u32 && self.blocks[v as usize - 1].start == start {
                return Some(s);
            }
            s = (s + 1) & self.map_mask;
        }
    }

    /// Sets the linked entry and the basic block's start of the block just inserted.
    pub fn set_last_entries(&mut self, linked: u64, bb_start: u64) {
        if let Some(b) = self.blocks.last_mut() {
            b.linked = linked;
            b.bb_start = bb_start;
        }
    }

    /// Index in `blocks` of the live block starting at `start`.
    fn lookup_index(&self, start: u64) -> Option<u32> {
        self.find_slot(start).map(|s| self.region()[s].1 - 1)
    }

    /// The block whose translation starts at host address `host` (a linear scan: for rare
    /// paths such as stack unwinding).
    pub fn by_host(&self, host: u64) -> Option<&Block> {
        self.blocks.iter().find(|b| b.host == host)
    }

    /// The block whose host code (its body, sites and stubs) contains `pc`: blocks are
    /// entered in the order the cache hands out their code, so by increasing host address.
    pub fn containing_host(&self, pc: u64) -> Option<&Block> {
        let after = self.blocks.partition_point(|b| b.host <= pc);
        after.checked_sub(1).map(|i| &self.blocks[i])
    }

    /// The live block starting at `start`.
    pub fn lookup(&self, start: u64) -> Option<&Block> {
        self.lookup_index(start).map(|i| &self.blocks[i as usize])
    }

    /// Enters a new block; there must be none at `start`.
    ///
    /// When the block would make the map's region in use more than half full, the map first
    /// moves to its next region, twice as large (see [`region_base`]), in the memory
    /// reserved at creation: no allocation.
    pub fn insert(&mut self, start: u64, end: u64, host: u64, reentry_stub: u32) {
        assert!(self.blocks.len() < MAX_BLOCKS, "callers check has_room");
        if (self.live + 1) * 2 > self.map_mask + 1 {
            self.grow_map();
        }
        let index = self.blocks.len() as u32;
        let bucket = page_bucket(start);
        let next_in_page = self.pages[bucket];
        self.pages[bucket] = index + 1;
        self.blocks.push(Block {
            start,
            end,
            host,
            linked: host,
            bb_start: start,
            reentry_stub,
            incoming: NONE,
            next_in_page,
            live: true,
        });
        debug_assert!(
            self.find_slot(start).is_none(),
            "one block per start address"
        );
        let mask = self.map_mask;
        let mut s = self.slot_of(start);
        let region = self.region_mut();
        while region[s].1 != 0 {
            s = (s + 1) & mask;
        }
        region[s] = (start as u32, index + 1);
        self.live += 1;
        self.lo = self.lo.min(start);
        self.hi = self.hi.max(end);
    }

    /// Moves the map to its next region, twice as large, and empties the old one. The old
    /// region stays the one in use until the new one is complete.
    fn grow_map(&mut self) {
        let old_slots = self.map_mask + 1;
        let slots = old_slots * 2;
        // `live` never exceeds MAX_BLOCKS, which the largest region holds at half load.
        assert!(slots <= MAP_SLOTS, "the map outgrew its reservation");
        let (old_base, base) = (self.map_base, region_base(slots));
        let (mask, shift) = (slots - 1, 64 - slots.trailing_zeros());
        // The new region follows the old one.
        let (head, tail) = self.map.split_at_mut(base);
        let old = &mut head[old_base..];
        let new = &mut tail[..slots];
        debug_assert!(new.iter().all(|&(_, v)| v == 0), "unused regions are empty");
        for &(k, v) in old.iter() {
            if v != 0 {
                let mut s = map_hash(k, shift);
                while new[s].1 != 0 {
                    s = (s + 1) & mask;
                }
                new[s] = (k, v);
            }
        }
        self.map_base = base;
        self.map_mask = mask;
        self.map_shift = shift;
        old.fill((0, 0));
    }

    /// Records that stub `i` is linked to the block at its target.
    pub fn mark_linked(&mut self, i: u32) {
        let target = self.stubs[i as usize].target;
        let b = self
            .lookup_index(target)
            .expect("linked only to live blocks");
        let head = self.blocks[b as usize].incoming;
        let s = &mut self.stubs[i as usize];
        s.linked = true;
        s.next_incoming = head;
        self.blocks[b as usize].incoming = i;
    }

    /// Removes the block at `start` from the map. Calls `unlink(stub)` for each stub linked
    /// to it (marked unlinked here) and returns the block.
    pub fn remove(&mut self, start: u64, mut unlink: impl FnMut(&ExitStub)) -> Option<Block> {
        let s = self.find_slot(start)?;
        let (mask, shift) = (self.map_mask, self.map_shift);
        let region = self.region_mut();
        let index = region[s].1 as usize - 1;
        // Backward-shift deletion keeps probe chains intact without tombstones.
        let mut hole = s;
        let mut j = (s + 1) & mask;
        while region[j].1 != 0 {
            let home = map_hash(region[j].0, shift);
            let distance_j = j.wrapping_sub(home) & mask;
            let distance_hole = j.wrapping_sub(hole) & mask;
            if distance_j >= distance_hole {
                region[hole] = region[j];
                hole = j;
            }
            j = (j + 1) & mask;
        }
        region[hole] = (0, 0);
        self.live -= 1;
        let block = &mut self.blocks[index];
        block.live = false;
        let mut i = std::mem::replace(&mut block.incoming, NONE);
        let block = *block;
        while i != NONE {
            let stub = &mut self.stubs[i as usize];
            let next = stub.next_incoming;
            stub.next_incoming = NONE;
            if stub.linked && stub.target == start {
                stub.linked = false;
                unlink(stub);
            }
            i = next;
        }
        Some(block)
    }

    /// Starts of the live blocks whose guest bytes overlap `[start, end)`, into `out`
    /// (cleared first; its capacity is the caller's). Dead blocks met on the way are
    /// unchained from the page index.
    pub fn overlapping(&mut self, start: u64, end: u64, out: &mut Vec<u64>) {
        out.clear();
        if end <= self.lo || start >= self.hi || end <= start {
            return;
        }
        let first_page = start.saturating_sub(MAX_BLOCK_GUEST_BYTES) >> 12;
        let last_page = (end - 1) >> 12;
        if last_page - first_page >= PAGE_BUCKETS as u64 {
            out.extend(
                self.blocks
                    .iter()
                    .filter(|b| b.live && b.start < end && start < b.end)
                    .map(|b| b.start),
            );
            return;
        }
        for page in first_page..=last_page {
            let bucket = page_bucket(page << 12);
            // Block indices + 1, 0: none (as in `pages`).
            let mut prev = 0;
            let mut i = self.pages[bucket];
            while i != 0 {
                let b = self.blocks[i as usize - 1];
                if !b.live {
                    // Unchain it.
                    if prev == 0 {
                        self.pages[bucket] = b.next_in_page;
                    } else {
                        self.blocks[prev as usize - 1].next_in_page = b.next_in_page;
                    }
                } else {
                    if b.start >> 12 == page && b.start < end && start < b.end {
                        out.push(b.start);
                    }
                    prev = i;
                }
                i = b.next_in_page;
            }
        }
    }

    /// Unlinks every linked stub (calling `unlink` for each), so that every block exit goes
    /// back to the dispatcher. Safe while a block runs: only branch targets change.
    pub fn unlink_all(&mut self, mut unlink: impl FnMut(&ExitStub)) {
        for b in &mut self.blocks {
            b.incoming = NONE;
        }
        for s in &mut self.stubs {
            s.next_incoming = NONE;
            if s.linked {
                s.linked = false;
                unlink(s);
            }
        }
    }

    /// Starts of every live block, into `out`.
    pub fn all_live(&self, out: &mut Vec<u64>) {
        out.clear();
        out.extend(self.blocks.iter().filter(|b| b.live).map(|b| b.start));
    }

    /// Forgets everything (the code cache was reset). The map goes back to its first
    /// region.
    pub fn reset(&mut self) {
        self.blocks.clear();
        self.stubs.clear();
        self.region_mut().fill((0, 0));
        self.map_base = region_base(MAP_MIN_SLOTS);
        self.map_mask = MAP_MIN_SLOTS - 1;
        self.map_shift = 64 - MAP_MIN_SLOTS.trailing_zeros();
        self.pages.fill(0);
        self.live = 0;
        self.lo = u64::MAX;
        self.hi = 0;
        self.transfer.fill((0, 0));
        self.faults.clear();
    }
}

fn transfer_slot(ret: u64) -> usize {
    ((ret ^ (ret >> 12)) as usize) & (TRANSFER_SLOTS - 1)
}

/// Where the map's region of `slots` slots (`MAP_MIN_SLOTS` times a power of two) starts
/// in its reservation: the regions lie one after the other by increasing size, so that the
/// next one never overlaps the one in use and the first ones stay small and dense.
fn region_base(slots: usize) -> usize {
    slots - MAP_MIN_SLOTS
}

/// The home slot of a start (its low 32 bits, `key`) in a map region of
/// `1 << (64 - shift)` slots: Fibonacci hashing spreads nearby code addresses over the
/// region.
fn map_hash(key: u32, shift: u32) -> usize {
    (u64::from(key).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> shift) as usize
}

fn page_bucket(addr: u64) -> usize {
    (addr >> 12) as usize & (PAGE_BUCKETS - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fault points come back whole from their packed form, each found from any byte of
    /// its host code and from none outside, before and after a reset (a new base).
    #[test]
    fn fault_points_are_found_by_host_address() {
        let mut d = Directory::new();
        for base in [0x7f12_3450_0000u64, 0x5555_0000_1000] {
            let point = |k: u64, guest: u64| FaultPoint {
                host: base + k * 40,
                guest,
                len: 7 + k as u8,
                scratch: if k.is_multiple_of(2) { NO_SCRATCH } else { 3 },
            };
            // Guest addresses with high bits: the top of user space and the vsyscall page.
            let guests = [0x40_1000, 0x7fff_ffff_f123, 0xffff_ffff_ff60_0000, 0x1234];
            let points: Vec<FaultPoint> = (0..4).map(|k| point(k, guests[k as usize])).collect();
            d.push_faults(&points[..2]);
            d.push_faults(&points[2..]);
            for p in &points {
                for pc in [p.host, p.host + u64::from(p.len) - 1] {
                    assert_eq!(d.fault_at(pc), Some(*p), "pc {pc:#x}");
                }
                assert_eq!(d.fault_at(p.host + u64::from(p.len)), None);
            }
            assert_eq!(d.fault_at(base - 1), None);
            assert_eq!(d.fault_at(0), None);
            assert_eq!(d.fault_at(base + (1 << 33)), None);
            d.reset();
            assert_eq!(d.fault_at(points[0].host), None);
        }
    }

    #[test]
    fn map_survives_colliding_inserts_and_removals() {
        let mut d = Directory::new();
        let starts: Vec<u64> = (0..5000u64).map(|i| 0x40_0000 + i * 16).collect();
        for (n, s) in starts.iter().enumerate() {
            d.push_stub(*s, 0, 0, ExitKind::Reentry);
            d.insert(*s, s + 4, 0x1000 + n as u64, n as u32);
        }
        for s in starts.iter().step_by(3) {
            assert!(d.remove(*s, |_| {}).is_some());
        }
        for (n, s) in starts.iter().enumerate() {
            let found = d.lookup(*s).map(|b| b.host);
            if n % 3 == 0 {
                assert_eq!(found, None);
            } else {
                assert_eq!(found, Some(0x1000 + n as u64));
            }
        }
        let mut out = Vec::with_capacity(16);
        d.overlapping(0x40_0010, 0x40_0012, &mut out);
        assert_eq!(out, vec![0x40_0010]);
    }

    /// Whether every map slot outside the region in use is empty.
    fn outside_region_empty(d: &Directory) -> bool {
        let (lo, hi) = (d.map_base, d.map_base + d.map_mask + 1);
        d.map[..lo].iter().chain(&d.map[hi..]).all(|&e| e == (0, 0))
    }

    #[test]
    fn map_grows_through_its_regions_and_resets() {
        let mut d = Directory::new();
        assert_eq!(d.map_mask + 1, MAP_MIN_SLOTS);
        let n = 40_000u64;
        // Spread and clustered starts, removals interleaved with the growth.
        let start = |i: u64| {
            if i.is_multiple_of(2) {
                0x40_0000 + i * 16
            } else {
                0x7f00_0000_0000 + i * 4096 + 7
            }
        };
        for i in 0..n {
            d.push_stub(start(i), 0, 0, ExitKind::Reentry);
            d.insert(start(i), start(i) + 4, 0x1000 + i, i as u32);
            if i % 5 == 4 {
                assert!(d.remove(start(i - 2), |_| {}).is_some());
            }
        }
        assert!(d.map_mask + 1 >= 2 * d.live && d.map_mask + 1 > MAP_MIN_SLOTS);
        assert!(outside_region_empty(&d));
        for i in 0..n {
            let removed = i % 5 == 2 && i + 2 < n;
            let found = d.lookup(start(i)).map(|b| b.host);
            assert_eq!(found, (!removed).then_some(0x1000 + i), "block {i}");
        }
        let mut out = Vec::with_capacity(16);
        d.overlapping(start(1), start(1) + 1, &mut out);
        assert_eq!(out, vec![start(1)]);
        d.reset();
        assert_eq!(d.map_mask + 1, MAP_MIN_SLOTS);
        assert!(d.map.iter().all(|&e| e == (0, 0)));
        assert!(d.pages.iter().all(|&p| p == 0));
        assert_eq!(d.lookup(start(1)).map(|b| b.host), None);
        for i in 0..10_000 {
            d.push_stub(start(i), 0, 0, ExitKind::Reentry);
            d.insert(start(i), start(i) + 4, 0x2000 + i, i as u32);
        }
        assert!(outside_region_empty(&d));
        for i in 0..10_000 {
            assert_eq!(d.lookup(start(i)).map(|b| b.host), Some(0x2000 + i));
        }
    }

    /// Starts that share their low 32 bits (the map's key) are told apart by their blocks,
    /// through insertions, removals and the map's growth.
    #[test]
    fn starts_with_the_same_low_bits_are_told_apart() {
        let mut d = Directory::new();
        let start = |i: u64, high: u64| (high << 32) | (0x40_1000 + i * 16);
        let highs = [0u64, 1, 0x7fff];
        let n = 3000u64;
        for i in 0..n {
            for (k, &h) in highs.iter().enumerate() {
                d.insert(start(i, h), start(i, h) + 4, i * 4 + k as u64, 0);
            }
        }
        for i in (0..n).step_by(3) {
            assert!(d.remove(start(i, 1), |_| {}).is_some());
        }
        for i in 0..n {
            for (k, &h) in highs.iter().enumerate() {
                let removed = h == 1 && i.is_multiple_of(3);
                let found = d.lookup(start(i, h)).map(|b| b.host);
                assert_eq!(found, (!removed).then_some(i * 4 + k as u64), "{i} {h:#x}");
            }
        }
        assert!(d.lookup(start(0, 2)).is_none());
    }

    #[test]
    fn map_reaches_its_largest_region() {
        let mut d = Directory::new();
        for i in 0..MAX_BLOCKS as u64 {
            d.insert(0x1000 + i * 3, 0x1000 + i * 3 + 1, i, 0);
        }
        assert_eq!(d.map_mask + 1, MAP_SLOTS);
        assert_eq!(d.map_base + MAP_SLOTS, MAP_RESERVED);
        assert!(!d.has_room(0));
        for i in (0..MAX_BLOCKS as u64).step_by(97) {
            assert_eq!(d.lookup(0x1000 + i * 3).map(|b| b.host), Some(i));
        }
        assert!(d.lookup(0x1000 + 1).is_none());
    }

    #[test]
    fn removal_unlinks_the_stubs_linked_to_the_block() {
        let mut d = Directory::new();
        d.push_stub(0x100, 0, 0, ExitKind::Reentry);
        d.insert(0x100, 0x110, 0x5000, 0);
        d.push_stub(0x100, 0x6001, 0x6010, ExitKind::Branch);
        d.push_stub(0x100, 0x7001, 0x7010, ExitKind::Branch);
        d.mark_linked(1);
        d.mark_linked(2);
        let mut unlinked = Vec::new();
        d.remove(0x100, |s| unlinked.push(s.site));
        unlinked.sort();
        assert_eq!(unlinked, vec![0x6001, 0x7001]);
        assert!(!d.stub(1).linked && !d.stub(2).linked);
    }
}
