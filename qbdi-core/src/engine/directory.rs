//! The cache directory: which guest block is translated where, its exit stubs, and which
//! stubs are linked to which block.
//!
//! It allocates nothing after creation. The guest may be anywhere when it leaves the cache,
//! including inside an instrumented `malloc` holding the heap lock; if the dispatcher then
//! called `malloc` (a `Vec` growing, a `BTreeMap` node) the thread would deadlock on itself.
//! So every table here has a fixed capacity reserved up front, links are intrusive lists
//! threaded through the stubs, and a full directory is reported to the engine, which resets
//! the whole cache.

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
    /// Next stub linked to the same block (intrusive list), or NONE.
    next_incoming: u32,
}

/// One translated basic block.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Block {
    /// Guest addresses it translates: `[start, end)`.
    pub start: u64,
    pub end: u64,
    /// Host address of its translation.
    pub host: u64,
    /// Its stub that re-enters the dispatcher at `start` (for invalidation).
    pub reentry_stub: u32,
    /// First stub linked to this block, or NONE.
    incoming: u32,
    /// Next block (older) in the same page bucket, or NONE.
    next_in_page: u32,
    pub live: bool,
}

/// Capacities. A block has 2 to 4 stubs on average; the code cache fills up before these
/// do for ordinary code (128 MiB at about 150 bytes a block).
const MAX_BLOCKS: usize = 1 << 18;
const MAX_STUBS: usize = 1 << 20;
/// Open-addressing slots of the start -> block map: twice the blocks, a power of two.
const MAP_SLOTS: usize = MAX_BLOCKS * 2;
/// Buckets of the page index (guest page number modulo this).
const PAGE_BUCKETS: usize = 1 << 16;
/// Slots of the guest return address -> transfer return stub cache (direct-mapped).
const TRANSFER_SLOTS: usize = 1 << 12;
/// A block never spans more guest bytes than this (the translator's limit).
const MAX_BLOCK_GUEST_BYTES: u64 = super::translator::MAX_BLOCK_INSTRUCTIONS as u64 * 15;

pub(crate) struct Directory {
    blocks: Vec<Block>,
    stubs: Vec<ExitStub>,
    /// Open addressing, linear probing: (guest start, block index + 1); 0 = empty, so the
    /// table starts as zeroed memory the OS hands out lazily.
    map: Vec<(u64, u32)>,
    /// Page index: for each bucket, the newest block starting in a page of that bucket;
    /// blocks chain through `next_in_page`. Dead blocks are unchained lazily.
    pages: Vec<u32>,
    live: usize,
    /// Guest span of all blocks ever entered since the last reset: a fast "surely not
    /// translated" test for `blocks_overlapping`.
    lo: u64,
    hi: u64,
    /// (guest return address, stub id + 1) of transfer return stubs; 0: empty.
    transfer: Vec<(u64, u32)>,
    /// The translated guest instructions that can fault, in host address order (blocks are
    /// committed in address order between resets): see [`FaultPoint`].
    faults: Vec<FaultPoint>,
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

/// `FaultPoint::scratch` when no register was borrowed.
pub(crate) const NO_SCRATCH: u8 = 0xff;

/// Capacity of the fault map (a block has at most 128 instructions; the cache fills up
/// long before this does for ordinary code).
const MAX_FAULTS: usize = MAX_BLOCKS * 8;

impl Directory {
    pub fn new() -> Directory {
        Directory {
            blocks: Vec::with_capacity(MAX_BLOCKS),
            stubs: Vec::with_capacity(MAX_STUBS),
            map: vec![(0, 0); MAP_SLOTS],
            pages: vec![NONE; PAGE_BUCKETS],
            live: 0,
            lo: u64::MAX,
            hi: 0,
            transfer: vec![(0, 0); TRANSFER_SLOTS],
            faults: Vec::with_capacity(MAX_FAULTS),
        }
    }

    /// Enters the fault points of a block just committed (in host address order).
    pub fn push_faults(&mut self, points: &[FaultPoint]) {
        self.faults.extend_from_slice(points);
    }

    /// The fault point whose host code contains `pc`.
    pub fn fault_at(&self, pc: u64) -> Option<FaultPoint> {
        let after = self.faults.partition_point(|f| f.host <= pc);
        let f = self.faults[..after].last()?;
        (pc < f.host + u64::from(f.len)).then_some(*f)
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
            next_incoming: NONE,
        });
    }

    fn slot_of(&self, start: u64) -> usize {
        // Fibonacci hashing spreads nearby code addresses over the table.
        (start.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - MAP_SLOTS.trailing_zeros())) as usize
    }

    /// The map slot holding `start`, if a live block starts there.
    fn find_slot(&self, start: u64) -> Option<usize> {
        let mut s = self.slot_of(start);
        loop {
            let (k, v) = self.map[s];
            if v == 0 {
                return None;
            }
            if k == start {
                return Some(s);
            }
            s = (s + 1) & (MAP_SLOTS - 1);
        }
    }

    /// Index in `blocks` of the live block starting at `start`.
    fn lookup_index(&self, start: u64) -> Option<u32> {
        self.find_slot(start).map(|s| self.map[s].1 - 1)
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
    pub fn insert(&mut self, start: u64, end: u64, host: u64, reentry_stub: u32) {
        assert!(self.blocks.len() < MAX_BLOCKS, "callers check has_room");
        let index = self.blocks.len() as u32;
        let bucket = page_bucket(start);
        let next_in_page = self.pages[bucket];
        self.pages[bucket] = index;
        self.blocks.push(Block {
            start,
            end,
            host,
            reentry_stub,
            incoming: NONE,
            next_in_page,
            live: true,
        });
        let mut s = self.slot_of(start);
        while self.map[s].1 != 0 {
            debug_assert_ne!(self.map[s].0, start, "one block per start address");
            s = (s + 1) & (MAP_SLOTS - 1);
        }
        self.map[s] = (start, index + 1);
        self.live += 1;
        self.lo = self.lo.min(start);
        self.hi = self.hi.max(end);
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
        let index = self.map[s].1 as usize - 1;
        // Backward-shift deletion keeps probe chains intact without tombstones.
        let mut hole = s;
        let mut j = (s + 1) & (MAP_SLOTS - 1);
        while self.map[j].1 != 0 {
            let home = self.slot_of(self.map[j].0);
            let distance_j = j.wrapping_sub(home) & (MAP_SLOTS - 1);
            let distance_hole = j.wrapping_sub(hole) & (MAP_SLOTS - 1);
            if distance_j >= distance_hole {
                self.map[hole] = self.map[j];
                hole = j;
            }
            j = (j + 1) & (MAP_SLOTS - 1);
        }
        self.map[hole] = (0, 0);
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
            let mut prev = NONE;
            let mut i = self.pages[bucket];
            while i != NONE {
                let b = self.blocks[i as usize];
                if !b.live {
                    // Unchain it.
                    if prev == NONE {
                        self.pages[bucket] = b.next_in_page;
                    } else {
                        self.blocks[prev as usize].next_in_page = b.next_in_page;
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

    /// Forgets everything (the code cache was reset).
    pub fn reset(&mut self) {
        self.blocks.clear();
        self.stubs.clear();
        self.map.fill((0, 0));
        self.pages.fill(NONE);
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

fn page_bucket(addr: u64) -> usize {
    (addr >> 12) as usize & (PAGE_BUCKETS - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

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
