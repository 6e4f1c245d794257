//! Memory access recording: the public `MemoryAccess` type and the per-block descriptors the
//! translator plants. Addresses and values are recorded inline by generated code into slots
//! of the context (one slot per access of the running block); what is known at translation
//! (instruction, size, kind, flags) lives in descriptors here. The two are joined only when
//! a callback asks (`inst_memory_access`, `bb_memory_access`).

use crate::state::Rword;

bitflags::bitflags! {
    /// Read, write, or both.
    #[repr(transparent)]
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
    pub struct MemoryAccessType: u8 {
        /// A load.
        const READ = 1;
        /// A store.
        const WRITE = 2;
        /// Both.
        const READ_WRITE = 3;
    }
}

bitflags::bitflags! {
    /// What is approximate about a recorded access.
    #[repr(transparent)]
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
    pub struct MemoryAccessFlags: u8 {
        /// The size is not known yet (a `rep` string instruction before it ran).
        const UNKNOWN_SIZE = 1;
        /// The instruction accesses at least `size` bytes (xsave/xrstor family).
        const MINIMUM_SIZE = 2;
        /// `value` is not recorded (wider than 8 bytes, a `rep` instruction, or
        /// `OPT_DISABLE_MEMORYACCESS_VALUE`).
        const UNKNOWN_VALUE = 4;
    }
}

/// One memory access of one instruction (`#[repr(C)]`: plugins receive it as is).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct MemoryAccess {
    /// Address of the instruction.
    pub inst_address: Rword,
    /// Address accessed (for a gather/scatter: the base the vector index is added to).
    pub access_address: Rword,
    /// The value read (before the instruction) or written (after it), zero-extended.
    pub value: Rword,
    /// Bytes accessed.
    pub size: u16,
    /// Read or write.
    pub access_type: MemoryAccessType,
    /// What is approximate.
    pub flags: MemoryAccessFlags,
}

/// A recorded access as the translator planned it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct MemDesc {
    pub inst_address: Rword,
    /// Index of its slot in the context (address, then value or end pointer).
    pub slot: u16,
    /// Bytes (element size for `rep` string instructions).
    pub size: u16,
    pub access_type: MemoryAccessType,
    pub flags: MemoryAccessFlags,
    /// A `rep` string access: the slot's value is the pointer register after the
    /// instruction (size = the distance covered).
    pub rep: bool,
}

/// Most slots one block records into (the context holds this many address/value pairs).
pub(crate) const MAX_SLOTS: usize = 256;
const MAX_DESCS: usize = 1 << 20;

/// The descriptors of all translated blocks, and a buffer for answers.
#[derive(Default)]
pub(crate) struct MemoryRecorder {
    /// What is recorded (empty: nothing).
    pub recorded: MemoryAccessType,
    pub descs: Vec<MemDesc>,
    pub out: Vec<MemoryAccess>,
}

impl MemoryRecorder {
    pub fn reserve(&mut self) {
        if self.descs.capacity() == 0 {
            // Once: translation then never allocates (see engine/directory.rs).
            self.descs.reserve_exact(MAX_DESCS);
            self.out.reserve(64);
        }
    }

    pub fn has_room(&self) -> bool {
        self.descs.len() + MAX_SLOTS <= self.descs.capacity()
    }

    /// Whether a whole block's descriptors fit (or nothing is recorded).
    pub fn has_room_for_block(&self) -> bool {
        self.recorded.is_empty() || self.has_room()
    }

    pub fn reset(&mut self) {
        self.descs.clear();
    }

    /// Fills `out` with the accesses of descriptors `first..first+len` given the slots.
    /// `pre_of`: the instruction whose PreInst callbacks are running (its writes have not
    /// happened, its `rep` sizes are not known yet).
    pub fn collect(
        &mut self,
        first: u32,
        len: u32,
        slots: &[[u64; 2]],
        pre_of: Option<Rword>,
    ) -> &[MemoryAccess] {
        self.out.clear();
        let range = first as usize..(first + len) as usize;
        for d in self.descs.get(range).unwrap_or(&[]) {
            let before = pre_of == Some(d.inst_address);
            if before && d.access_type == MemoryAccessType::WRITE {
                continue;
            }
            let [addr, value] = slots.get(d.slot as usize).copied().unwrap_or([0, 0]);
            let mut access = MemoryAccess {
                inst_address: d.inst_address,
                access_address: addr,
                value,
                size: d.size,
                access_type: d.access_type,
                flags: d.flags,
            };
            if d.flags.contains(MemoryAccessFlags::UNKNOWN_VALUE) {
                access.value = 0;
            }
            if d.rep {
                if before {
                    access.size = 0;
                    access.flags |= MemoryAccessFlags::UNKNOWN_SIZE;
                } else {
                    // value = the pointer after the instruction: the covered span, in
                    // either direction (DF).
                    let (start, end) = (addr, value);
                    let esize = u64::from(d.size);
                    let (lo, bytes) = if end >= start {
                        (start, end - start)
                    } else {
                        (end + esize, start - end)
                    };
                    access.access_address = lo;
                    access.size = u16::try_from(bytes).unwrap_or(u16::MAX);
                }
            }
            self.out.push(access);
        }
        &self.out
    }
}
