//! The inline indirect-branch table: guest address -> host address, looked up by generated
//! code without leaving the cache and without touching RFLAGS.
//!
//! Indexed by a 16-bit hash of the guest address (low 16 bits plus bits 16-31), so that
//! the index needs no arithmetic that touches flags: 65,536 entries of 16 bytes (1 MiB),
//! and one more. An address has two places, its index's entry and the next one: a lookup
//! compares both, so two hot targets of one index (two handlers of an interpreter's
//! dispatch, 256 KiB apart, in python3's libpython) no longer evict each other at every
//! turn, each eviction a round trip through the dispatcher (that python3 loop ran 10x
//! native, all but a tenth of it in the context switch).
//! An empty entry holds guest 0, so a lookup of any other address misses. The entry of
//! address 0 (the first place a lookup of 0 reads) holds the `ib_miss` routine as host and
//! never moves: a lookup of 0 "hits" and lands in the miss path anyway, so the generated
//! code needs no empty check. Every other empty entry is all zeros: a new table, in
//! freshly mapped memory, writes one entry and touches one page (filling all 1 MiB cost
//! 256 page faults per Vm, a fifth of `qbdi run`'s start-up).

use super::context::off;
use super::emitter::{Asm, Label, RAX, RCX, RDX};

pub(crate) const ENTRIES: usize = 1 << 16;
/// The entries, and the second place of the last index.
const SLOTS: usize = ENTRIES + 1;
pub(crate) const TABLE_BYTES: usize = SLOTS * 16;

#[repr(C)]
#[derive(Clone, Copy)]
struct Entry {
    guest: u64,
    host: u64,
}

pub(crate) struct IbTable {
    entries: *mut Entry,
    empty_host: u64,
    /// Whether any native (broker) entry was inserted since the last clear.
    has_natives: std::cell::Cell<bool>,
    /// Entries were removed since the last [`take_removed`](Self::take_removed) (the
    /// site caches must follow, see `CodeCache::prune_site_entries`).
    removed: std::cell::Cell<bool>,
}

impl IbTable {
    /// # Safety
    /// `base` points to `TABLE_BYTES` writable bytes, all zero (freshly mapped), that
    /// outlive the table.
    pub unsafe fn new(base: u64, empty_host: u64) -> IbTable {
        let t = IbTable {
            entries: base as *mut Entry,
            empty_host,
            has_natives: false.into(),
            removed: false.into(),
        };
        t.init_zero_entry();
        t
    }

    /// The entry a lookup of address 0 reads: 0 and the miss routine.
    fn init_zero_entry(&self) {
        // SAFETY: at() is in bounds.
        unsafe { self.at(0).write(self.empty()) }
    }

    /// The entry at `i` (< SLOTS).
    fn at(&self, i: usize) -> *mut Entry {
        debug_assert!(i < SLOTS);
        // SAFETY: the caller keeps i below SLOTS, the table's size.
        unsafe { self.entries.add(i) }
    }

    /// Where `guest` is, of its two places, if it is in the table.
    fn find(&self, guest: u64) -> Option<*mut Entry> {
        let i = index(guest);
        // SAFETY: at() is in bounds.
        [self.at(i), self.at(i + 1)]
            .into_iter()
            .find(|&e| unsafe { (*e).guest } == guest)
    }

    /// Enters the translated block of `guest` whose code starts at `block` (its table entry
    /// is the [`emit_entry_prefix`] just before).
    pub fn insert_block(&self, guest: u64, block: u64) {
        self.insert(guest, block - ENTRY_PREFIX_LEN);
    }

    /// Puts `guest` in its first place; what was there moves to its second place if that is
    /// where it belongs (it is evicted otherwise), as does the entry at the zero address's
    /// place (never moved: `guest` takes its second place instead).
    fn insert(&self, guest: u64, host: u64) {
        let i = index(guest);
        let (first, second) = (self.at(i), self.at(i + 1));
        let entry = Entry { guest, host };
        // SAFETY: both are in bounds; generated code reads the table only while the
        // dispatcher is not running, so there is no concurrent reader of a half-written
        // entry.
        unsafe {
            let old = *first;
            if old.guest == guest || old.guest == 0 && i != 0 {
                first.write(entry);
                if (*second).guest == guest {
                    second.write(self.empty());
                }
            } else if i == 0 || (*second).guest == guest || (*second).guest == 0 {
                second.write(entry);
            } else {
                if index(old.guest) == i {
                    second.write(old);
                }
                first.write(entry);
            }
        }
    }

    /// A removed entry.
    fn empty(&self) -> Entry {
        Entry {
            guest: 0,
            host: self.empty_host,
        }
    }

    /// Whether `guest` -> `host` is in the table.
    pub fn holds(&self, guest: u64, host: u64) -> bool {
        // SAFETY: find() gives an entry in bounds.
        self.find(guest)
            .is_some_and(|e| unsafe { (*e).host } == host)
    }

    /// Entries were removed (or a block is gone) since the last call.
    pub fn take_removed(&self) -> bool {
        self.removed.replace(false)
    }

    /// A block is gone, whether the table held it or not.
    pub fn note_removed(&self) {
        self.removed.set(true);
    }

    pub fn remove(&self, guest: u64) {
        if guest == 0 {
            return; // the zero address's entry stays
        }
        if let Some(e) = self.find(guest) {
            // SAFETY: in bounds, as above.
            unsafe { e.write(self.empty()) };
            self.removed.set(true);
        }
    }

    /// Removes entries of native targets (host = `broker`) whose guest address is in
    /// `[start, end)`.
    /// The site caches are pruned after it, whatever the table held: a native
    /// entry may be in a site's cache still when the table lost it to a colliding target.
    pub fn remove_natives_in(&self, start: u64, end: u64, broker: u64) {
        self.removed.set(true);
        if !self.has_natives.get() {
            return;
        }
        for i in 0..SLOTS {
            let e = self.at(i);
            // SAFETY: in bounds.
            unsafe {
                if (*e).host == broker && (start..end).contains(&(*e).guest) {
                    e.write(self.empty());
                }
            }
        }
    }

    /// Enters a native target: its host code is the broker routine.
    pub fn insert_native(&self, guest: u64, broker: u64) {
        self.has_natives.set(true);
        self.insert(guest, broker);
    }

    pub fn clear(&self) {
        self.has_natives.set(false);
        self.removed.set(true);
        // SAFETY: the table's SLOTS entries are ours and writable; all zeros is an empty
        // entry (see the module's doc), then the zero address's entry is set.
        unsafe { std::ptr::write_bytes(self.entries, 0, SLOTS) };
        self.init_zero_entry();
    }
}

/// Whether lookups hash with BMI2's `rorx` (3 instructions, no flags), else with `bswap`
/// (6). Fixed for the process at its first use: from CPUID, unless `QBDI_NO_BMI2` is set
/// (tests run the fallback on any CPU).
pub(crate) fn rorx_hash() -> bool {
    static RORX: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *RORX.get_or_init(|| {
        std::env::var_os("QBDI_NO_BMI2").is_none() && std::arch::is_x86_feature_detected!("bmi2")
    })
}

/// The entry of `guest`: its low 16 bits plus its bits 16-31 (as they are with `rorx`,
/// byte-swapped with `bswap`), modulo the table size. Targets 64 KiB apart (the opcode
/// handlers of an interpreter's dispatch loop) do not collide, and the generated code
/// computes it without touching flags (`rorx` or `bswap`, `movzx`, `lea`).
fn index(guest: u64) -> usize {
    index_with(guest, rorx_hash())
}

fn index_with(guest: u64, rorx: bool) -> usize {
    let low = guest as u32 & 0xffff;
    let high = if rorx {
        (guest as u32) >> 16
    } else {
        (guest as u32).swap_bytes() & 0xffff
    };
    (low.wrapping_add(high) & 0xffff) as usize
}

/// Where a lookup goes when the address is not in the table.
pub(crate) enum Miss {
    Addr(u64),
    Label(Label),
}

/// Emits the lookup of the guest address in rcx (rax, rcx, rdx already spilled), in its
/// two places.
///
/// On a hit it falls through with rdx = the entry's address (its host address at
/// `[rdx+8]`), rax = the guest address and rcx = 0. On a miss it jumps to `miss` with rcx
/// = the guest address again; when `record_target`, also stored in the context's
/// `ib_target` first (on that path alone: a hit does not store it).
pub(crate) fn emit_lookup(a: &mut Asm, ctx: u64, table: u64, miss: Miss, record_target: bool) {
    emit_hash(a, rorx_hash());
    a.lea_rip(RAX, table);
    // lea rdx, [rdx*8]; lea rdx, [rax+rdx*2]: rdx = &table[index] (16-byte entries)
    a.bytes(&[0x48, 0x8d, 0x14, 0xd5, 0, 0, 0, 0]);
    a.bytes(&[0x48, 0x8d, 0x14, 0x50]);
    // mov rax, [rdx]: the entry's guest address; rcx = 0 iff it is ours
    a.bytes(&[0x48, 0x8b, 0x02]);
    a.rcx_diff(RAX);
    let hit: Label = a.new_label();
    a.jrcxz_label(hit);
    // rcx = entry - target: the same again gives the target back.
    a.rcx_diff(RAX);
    // The second place: mov rax, [rdx+16].
    a.bytes(&[0x48, 0x8b, 0x42, 0x10]);
    a.rcx_diff(RAX);
    let second: Label = a.new_label();
    a.jrcxz_label(second);
    a.rcx_diff(RAX);
    if record_target {
        a.store(ctx + off::IB_TARGET, RCX);
    }
    match miss {
        Miss::Addr(addr) => a.jmp_to(addr),
        Miss::Label(l) => a.jmp_label(l),
    };
    a.bind(second);
    a.bytes(&[0x48, 0x8d, 0x52, 0x10]); // lea rdx, [rdx+16]
    a.bind(hit);
}

/// edx = `index_with(rcx, rorx)`; clobbers rax, not the flags.
fn emit_hash(a: &mut Asm, rorx: bool) {
    if rorx {
        // rorx eax, ecx, 16; lea edx, [rax+rcx]; movzx edx, dx
        a.bytes(&[0xc4, 0xe3, 0x7b, 0xf0, 0xc1, 0x10]);
        a.bytes(&[0x8d, 0x14, 0x08, 0x0f, 0xb7, 0xd2]);
    } else {
        // mov eax, ecx; bswap eax; movzx eax, ax; movzx edx, cx; lea edx, [rdx+rax];
        // movzx edx, dx
        a.bytes(&[0x89, 0xc8, 0x0f, 0xc8, 0x0f, 0xb7, 0xc0]);
        a.bytes(&[0x0f, 0xb7, 0xd1, 0x8d, 0x14, 0x02, 0x0f, 0xb7, 0xd2]);
    }
}

/// After a hit of [`emit_lookup`] at an indirect branch: jumps to the entry's host address
/// with rdx restored; the entry (a block's [`emit_entry_prefix`], or a runtime routine's
/// table entry) restores rax and rcx. One indirect jump through a register: no store of
/// the host address to the context and no load of it back.
pub(crate) fn emit_hit_jump(a: &mut Asm, ctx: u64) {
    a.bytes(&[0x48, 0x8b, 0x4a, 0x08]); // mov rcx, [rdx+8]
    a.load(RDX, ctx + off::SPILL + 16);
    a.bytes(&[0xff, 0xe1]); // jmp rcx
}

/// Bytes of [`emit_entry_prefix`].
pub(crate) const ENTRY_PREFIX_LEN: u64 = 14;

/// Bytes of a block's **header**, just before its table entry: data, never executed. Two
/// `u32`s: the block's `cur` in its Vm's edge map (when it has one), then the offset of its
/// linked entry from its table entry (0 when the block has no linked entry past counting
/// code of one edge map). A site cache that counts edges fills from it
/// (`inline::emit_counting_fill`), so that a return, indirect jump or call that hits its
/// cache counts its edge itself and skips the counting entry.
/// The shared routines below the first block have no header.
pub(crate) const ENTRY_HEADER_LEN: u64 = 8;

/// The table entry of a block, just before its code: restores the rax and rcx of an
/// indirect branch's lookup (rdx is back already, see [`emit_hit_jump`]), then falls into
/// the block. A block whose counting entry (edge maps, `inline::emit_counting`) starts by
/// storing rax and rcx to those slots has its table entry replaced by a jump past the
/// stores instead. Every other way in (linked branches, the dispatcher, the broker's return
/// addresses) enters the block itself, `ENTRY_PREFIX_LEN` bytes further.
pub(crate) fn emit_entry_prefix(a: &mut Asm, ctx: u64) {
    let start = a.len();
    a.load(RAX, ctx + off::SPILL);
    a.load(RCX, ctx + off::SPILL + 8);
    debug_assert_eq!((a.len() - start) as u64, ENTRY_PREFIX_LEN);
}

/// Spills the three scratch registers of an indirect branch.
pub(crate) fn emit_spill(a: &mut Asm, ctx: u64) {
    a.store(ctx + off::SPILL, RAX);
    a.store(ctx + off::SPILL + 8, RCX);
    a.store(ctx + off::SPILL + 16, RDX);
}

/// Restores the three scratch registers of an indirect branch.
pub(crate) fn emit_restore(a: &mut Asm, ctx: u64) {
    a.load(RAX, ctx + off::SPILL);
    a.load(RCX, ctx + off::SPILL + 8);
    a.load(RDX, ctx + off::SPILL + 16);
}

#[cfg(test)]
mod tests {
    use super::{IbTable, Miss, TABLE_BYTES, emit_lookup, index, index_with};

    /// Guests of one index: three of them, then one of index 0 and one of the last index.
    fn colliding() -> ([u64; 3], u64, u64) {
        let mut by_index: std::collections::HashMap<usize, Vec<u64>> = Default::default();
        let (mut zero, mut last) = (None, None);
        let mut x = 0x1234_5678u64;
        for _ in 0..1u64 << 21 {
            // Addresses of 47 bits from a linear congruential generator.
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let g = (x >> 17) | 1 << 40;
            match index(g) {
                0 => zero = zero.or(Some(g)),
                0xffff => last = last.or(Some(g)),
                i => by_index.entry(i).or_default().push(g),
            }
        }
        let three = by_index
            .values()
            .find(|v| v.len() >= 3)
            .expect("collisions");
        (
            [three[0], three[1], three[2]],
            zero.expect("an index-0 guest"),
            last.expect("a last-index guest"),
        )
    }

    /// The generated lookup over a table filled by `insert`: two targets of one index are
    /// both found in the cache (a third takes the first place, its occupant the second),
    /// removals, the zero address's
    /// entry (never moved: a lookup of 0 lands on the miss routine) and the last index.
    #[test]
    fn the_generated_lookup_finds_both_targets_of_an_index() {
        use super::super::emitter::{Asm, RWX, test_mapping};
        const LEN: usize = TABLE_BYTES + 6 * 4096;
        const MISS: u64 = 1;
        // SAFETY: a fresh private mapping (table, then code, then 16 KiB of context), unmapped
        // at the end; the generated function is a leaf (System V: rdi in, rax out) touching
        // only the table and the context.
        unsafe {
            let region = test_mapping(LEN, RWX, 0).cast::<libc::c_void>();
            let table_at = region as u64;
            let code = table_at + TABLE_BYTES.next_multiple_of(4096) as u64;
            let ctx = code + 4096;
            const { assert!(super::off::IB_TARGET + 8 <= 4 * 4096) };
            let empty_host = 0xe0e0;
            let table = IbTable::new(table_at, empty_host);
            let mut a = Asm::with_capacity(512);
            a.reset(code);
            a.bytes(&[0x48, 0x89, 0xf9]); // mov rcx, rdi
            let miss = a.new_label();
            emit_lookup(&mut a, ctx, table_at, Miss::Label(miss), true);
            a.bytes(&[0x48, 0x8b, 0x42, 0x08, 0xc3]); // mov rax, [rdx+8]; ret
            a.bind(miss);
            a.mov_imm64(super::RAX, MISS);
            a.bytes(&[0xc3]);
            a.finish();
            std::ptr::copy_nonoverlapping(a.buf.as_ptr(), code as *mut u8, a.len());
            let lookup: extern "C" fn(u64) -> u64 = std::mem::transmute(code);
            let ([g1, g2, g3], g0, glast) = colliding();
            let host = |g: u64| g ^ 0xabc0;
            assert_eq!(lookup(g1), MISS);
            table.insert(g1, host(g1));
            table.insert(g2, host(g2));
            assert_eq!(
                (lookup(g1), lookup(g2)),
                (host(g1), host(g2)),
                "two of one index"
            );
            table.insert(g3, host(g3));
            assert_eq!(lookup(g3), host(g3));
            // The one in the first place moved to the second: g2 evicted.
            assert_eq!((lookup(g1), lookup(g2)), (host(g1), MISS));
            // Again: the same entry, not a second copy.
            table.insert(g1, host(g1) + 16);
            assert_eq!(lookup(g1), host(g1) + 16);
            table.remove(g1);
            assert_eq!((lookup(g1), lookup(g3)), (MISS, host(g3)));
            // A new one goes to the free place.
            table.insert(g2, host(g2));
            assert_eq!((lookup(g2), lookup(g3)), (host(g2), host(g3)));
            // Index 0: its first place is the zero address's.
            table.insert(g0, host(g0));
            assert_eq!((lookup(g0), lookup(0)), (host(g0), empty_host));
            table.remove(0);
            assert_eq!(lookup(0), empty_host, "the zero address's entry stays");
            // The last index's second place is the extra entry.
            table.insert(glast, host(glast));
            table.insert(glast + 0x1_0000_0000, 0x77);
            assert_eq!(lookup(glast), host(glast));
            table.clear();
            assert_eq!(
                (lookup(g3), lookup(glast), lookup(0)),
                (MISS, MISS, empty_host)
            );
            libc::munmap(region, LEN);
        }
    }

    #[test]
    fn targets_64k_apart_do_not_collide() {
        let base = 0x5555_5555_1230u64;
        let slots: std::collections::HashSet<usize> =
            (0..16).map(|i| index(base + i * 0x1_0000)).collect();
        assert_eq!(slots.len(), 16);
        assert!(index(u64::MAX) < 1 << 16);
        for rorx in [false, true] {
            let slots: std::collections::HashSet<usize> = (0..16)
                .map(|i| index_with(base + i * 0x1_0000, rorx))
                .collect();
            assert_eq!(slots.len(), 16, "rorx: {rorx}");
        }
    }

    /// The hash the generated code computes (both forms), run on this CPU, is `index`'s.
    #[test]
    fn generated_hash_is_index() {
        use super::super::emitter::{Asm, test_mapping};
        for rorx in [false, true] {
            if rorx && !std::arch::is_x86_feature_detected!("bmi2") {
                continue;
            }
            let mut a = Asm::with_capacity(64);
            a.bytes(&[0x48, 0x89, 0xf9]); // mov rcx, rdi
            super::emit_hash(&mut a, rorx);
            a.bytes(&[0x89, 0xd0, 0xc3]); // mov eax, edx; ret
            let code = &a.buf[..a.len()];
            // SAFETY: an anonymous private mapping, written then made executable; the code
            // is the leaf function above (System V: argument in rdi, result in eax).
            unsafe {
                let m = test_mapping(4096, libc::PROT_READ | libc::PROT_WRITE, 0)
                    .cast::<libc::c_void>();
                std::ptr::copy_nonoverlapping(code.as_ptr(), m.cast::<u8>(), code.len());
                assert_eq!(
                    libc::mprotect(m, 4096, libc::PROT_READ | libc::PROT_EXEC),
                    0
                );
                let f: extern "C" fn(u64) -> u32 = std::mem::transmute(m);
                for g in [
                    0u64,
                    1,
                    0xffff,
                    0x1_0000,
                    0x5555_5555_1230,
                    0x7fff_dead_beef,
                    u64::MAX,
                ] {
                    assert_eq!(f(g) as usize, index_with(g, rorx), "{g:#x}, rorx: {rorx}");
                }
                libc::munmap(m, 4096);
            }
        }
    }

    #[test]
    fn only_the_zero_address_reads_the_first_entry_as_its_own() {
        // A lookup of 0 reads entry 0, the one entry `new` writes: the zeroed others are
        // empty for every other address (their guest, 0, never matches).
        assert_eq!(index(0), 0);
    }
}
