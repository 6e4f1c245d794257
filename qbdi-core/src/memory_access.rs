//! Memory access recording: the public `MemoryAccess` type and the per-block descriptors the
//! translator plants. Addresses and values are recorded inline by generated code into slots
//! of the context (one slot per access of the running block); what is known at translation
//! (instruction, size, kind, flags) lives in descriptors here. The two are joined for the
//! instruction before the callbacks of a site run (`inst_memory_access`: by `site_entry`, or
//! by a direct site in translated code) and for the block when a callback asks
//! (`bb_memory_access`).

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

/// Most accesses an instruction records (ReadWrite operands count twice).
pub(crate) const MAX_PER_INSTRUCTION: usize = 8;

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
        let mut out = std::mem::take(&mut self.out);
        self.collect_into(&mut out, first, len, slots, pre_of);
        self.out = out;
        &self.out
    }

    /// Fills `out` as `collect` fills its own buffer.
    pub fn collect_into(
        &self,
        out: &mut Vec<MemoryAccess>,
        first: u32,
        len: u32,
        slots: &[[u64; 2]],
        pre_of: Option<Rword>,
    ) {
        out.clear();
        for v in Self::plan_view(&self.descs, first, len, pre_of) {
            let [addr, value] = slots.get(usize::from(v.slot)).copied().unwrap_or([0, 0]);
            out.push(v.fill(addr, value));
        }
    }

    /// What is known at translation of the accesses `collect` gives for descriptors
    /// `first..first+len` (see `collect`), in order.
    pub(crate) fn plan_view(
        descs: &[MemDesc],
        first: u32,
        len: u32,
        pre_of: Option<Rword>,
    ) -> impl Iterator<Item = ViewEntry> + '_ {
        let range = first as usize..(first as usize + len as usize);
        descs.get(range).unwrap_or(&[]).iter().filter_map(move |d| {
            let before = pre_of == Some(d.inst_address);
            if before && d.access_type == MemoryAccessType::WRITE {
                return None;
            }
            let mut access = MemoryAccess {
                inst_address: d.inst_address,
                access_address: 0,
                value: 0,
                size: d.size,
                access_type: d.access_type,
                flags: d.flags,
            };
            let rep_span = d.rep && !before;
            if d.rep && before {
                access.size = 0;
                access.flags |= MemoryAccessFlags::UNKNOWN_SIZE;
            }
            let value = !d.flags.contains(MemoryAccessFlags::UNKNOWN_VALUE) && !d.rep;
            Some(ViewEntry {
                slot: d.slot,
                access,
                value,
                rep_span,
            })
        })
    }
}

/// One access of an instruction as `inst_memory_access` gives it, planned at translation:
/// the fields known then, and where the rest comes from at run time.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct ViewEntry {
    /// The slot holding (address, value or end pointer).
    pub slot: u16,
    /// The access with its address and value still zero.
    pub access: MemoryAccess,
    /// The value is the slot's second word (else it stays 0).
    pub value: bool,
    /// A `rep` string access after the instruction: address and size are the span between
    /// the slot's two words (computed at run time).
    pub rep_span: bool,
}

impl ViewEntry {
    /// The access, given its slot's two words.
    pub fn fill(&self, addr: u64, value: u64) -> MemoryAccess {
        let mut access = self.access;
        access.access_address = addr;
        if self.value {
            access.value = value;
        }
        if self.rep_span {
            // value = the pointer after the instruction: the covered span, in either
            // direction (DF).
            let (start, end) = (addr, value);
            let esize = u64::from(access.size);
            let (lo, bytes) = if end >= start {
                (start, end - start)
            } else {
                (end + esize, start - end)
            };
            access.access_address = lo;
            access.size = u16::try_from(bytes).unwrap_or(u16::MAX);
        }
        access
    }
}

/// Bytes of a `&[MemoryAccess]` (pointer and length, in the order the compiler chose):
/// a direct entry may read its `VmRef` within this many bytes from its start, where that
/// slice is (`VmRef::view`).
pub(crate) const VIEW_BYTES: u64 = std::mem::size_of::<&[MemoryAccess]>() as u64;

/// Where the pointer and the length of a `&[MemoryAccess]` are (byte offsets): Rust does not
/// promise an order, so it is read from a slice.
pub(crate) fn slice_layout() -> (u64, u64) {
    let probe: &[MemoryAccess] = &[MemoryAccess::default(); 3];
    // SAFETY: a slice reference is two words, its data pointer and its length; only which
    // is first is not promised, and that is what this finds out.
    let words: [usize; 2] = unsafe { std::mem::transmute(probe) };
    if words[1] == 3 && words[0] == probe.as_ptr() as usize {
        (0, 8)
    } else {
        (8, 0)
    }
}
