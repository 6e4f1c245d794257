//! The inline indirect-branch table: guest address -> host address, looked up by generated
//! code without leaving the cache and without touching RFLAGS.
//!
//! Direct-mapped on a 16-bit hash of the guest address (low 16 bits plus bits 16-31):
//! 65,536 entries of 16 bytes (1 MiB), so a hot indirect target seldom collides with
//! another, and the index needs no arithmetic that touches flags.
//! An empty entry holds guest 0, so a lookup of any other address misses. The entry of
//! address 0 (the only one a lookup of 0 reads) holds the `ib_miss` routine as host: a
//! lookup of 0 "hits" and lands in the miss path anyway, so the generated code needs no
//! empty check. Every other empty entry is all zeros: a new table, in freshly mapped
//! memory, writes one entry and touches one page (filling all 1 MiB cost 256 page faults
//! per Vm, a fifth of `qbdi run`'s start-up).

use super::context::off;
use super::emitter::{Asm, Label, RAX, RCX, RDX};

pub(crate) const ENTRIES: usize = 1 << 16;
pub(crate) const TABLE_BYTES: usize = ENTRIES * 16;

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
        };
        t.init_zero_entry();
        t
    }

    /// The entry a lookup of address 0 reads: 0 and the miss routine.
    fn init_zero_entry(&self) {
        // SAFETY: slot() is in bounds.
        unsafe {
            self.slot(0).write(Entry {
                guest: 0,
                host: self.empty_host,
            })
        }
    }

    fn slot(&self, guest: u64) -> *mut Entry {
        // SAFETY: the index is masked to the table size.
        unsafe { self.entries.add(index(guest)) }
    }

    pub fn insert(&self, guest: u64, host: u64) {
        // SAFETY: slot() is in bounds; generated code reads the table only while the
        // dispatcher is not running, so there is no concurrent reader of a half-written entry.
        unsafe { self.slot(guest).write(Entry { guest, host }) }
    }

    pub fn remove(&self, guest: u64) {
        let s = self.slot(guest);
        // SAFETY: in bounds, as above.
        unsafe {
            if (*s).guest == guest {
                s.write(Entry {
                    guest: 0,
                    host: self.empty_host,
                });
            }
        }
    }

    /// Removes entries of native targets (host = `broker`) whose guest address is in
    /// `[start, end)`.
    pub fn remove_natives_in(&self, start: u64, end: u64, broker: u64) {
        if !self.has_natives.get() {
            return;
        }
        for i in 0..ENTRIES {
            // SAFETY: i < ENTRIES.
            unsafe {
                let e = self.entries.add(i);
                if (*e).host == broker && (start..end).contains(&(*e).guest) {
                    e.write(Entry {
                        guest: 0,
                        host: self.empty_host,
                    });
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
        // SAFETY: the table's ENTRIES entries are ours and writable; all zeros is an empty
        // entry (see the module's doc), then the zero address's entry is set.
        unsafe { std::ptr::write_bytes(self.entries, 0, ENTRIES) };
        self.init_zero_entry();
    }
}

/// The entry of `guest`: its low 16 bits plus bits 16-31 (byte-swapped), modulo the table
/// size. Targets 64 KiB apart (the opcode handlers of an interpreter's dispatch loop) do not
/// collide, and the generated code computes it without touching flags (`bswap`, `movzx`,
/// `lea`).
fn index(guest: u64) -> usize {
    let low = guest as u32 & 0xffff;
    let high = (guest as u32).swap_bytes() & 0xffff;
    (low.wrapping_add(high) & 0xffff) as usize
}

/// Where a lookup goes when the address is not in the table.
pub(crate) enum Miss {
    Addr(u64),
    Label(Label),
}

/// Emits the lookup of the guest address in rcx (rax, rcx, rdx already spilled). Falls
/// through on a hit with rax = host address; jumps to `miss` otherwise. When
/// `record_target`, the guest address is also stored in the context's `ib_target`.
pub(crate) fn emit_lookup(a: &mut Asm, ctx: u64, table: u64, miss: Miss, record_target: bool) {
    if record_target {
        a.store(ctx + off::IB_TARGET, RCX);
    }
    // The index (see `index`): mov eax, ecx; bswap eax; movzx eax, ax; movzx edx, cx;
    // lea edx, [rdx+rax]; movzx edx, dx.
    a.bytes(&[0x89, 0xc8, 0x0f, 0xc8, 0x0f, 0xb7, 0xc0]);
    a.bytes(&[0x0f, 0xb7, 0xd1, 0x8d, 0x14, 0x02, 0x0f, 0xb7, 0xd2]);
    a.lea_rip(RAX, table);
    // lea rdx, [rdx*8]; lea rdx, [rax+rdx*2]: rdx = &table[index] (16-byte entries)
    a.bytes(&[0x48, 0x8d, 0x14, 0xd5, 0, 0, 0, 0]);
    a.bytes(&[0x48, 0x8d, 0x14, 0x50]);
    // mov rax, [rdx]: the entry's guest address; rcx = 0 iff it is ours
    a.bytes(&[0x48, 0x8b, 0x02]);
    a.rcx_diff(RAX);
    let hit: Label = a.new_label();
    a.jrcxz_label(hit);
    match miss {
        Miss::Addr(addr) => a.jmp_to(addr),
        Miss::Label(l) => a.jmp_label(l),
    };
    a.bind(hit);
    // mov rax, [rdx+8]: the host address
    a.bytes(&[0x48, 0x8b, 0x42, 0x08]);
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
    use super::index;

    #[test]
    fn targets_64k_apart_do_not_collide() {
        let base = 0x5555_5555_1230u64;
        let slots: std::collections::HashSet<usize> =
            (0..16).map(|i| index(base + i * 0x1_0000)).collect();
        assert_eq!(slots.len(), 16);
        assert!(index(u64::MAX) < 1 << 16);
    }

    #[test]
    fn only_the_zero_address_reads_the_first_entry_as_its_own() {
        // A lookup of 0 reads entry 0, the one entry `new` writes: the zeroed others are
        // empty for every other address (their guest, 0, never matches).
        assert_eq!(index(0), 0);
    }
}
