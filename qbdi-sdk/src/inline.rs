//! Inline instrumentation for plugins: counters and edge maps that translated code updates
//! itself, with no callback (the engine's `Vm::add_block_counter` and `Vm::add_edge_map`).
//! A few nanoseconds less per block than even a direct callback, and several compose on
//! one block (up to 32 counters and 8 edge maps per Vm).

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, TryLockError};
use std::time::{Duration, Instant};

use qbdi_core::Rword;

/// Locks `m` for a reader, waiting at most a fifth of a second: fini may run from a signal
/// handler that interrupted a translation on this very thread, holding the lock (`None`
/// then).
fn lock_for_reading<T>(m: &Mutex<T>) -> Option<MutexGuard<'_, T>> {
    let deadline = Instant::now() + Duration::from_millis(200);
    loop {
        match m.try_lock() {
            Ok(g) => return Some(g),
            Err(TryLockError::Poisoned(p)) => return Some(p.into_inner()),
            Err(TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(TryLockError::WouldBlock) => return None,
        }
    }
}

/// One block's execution count, from [`BlockCounter::counts`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BlockCount {
    /// First address of the block.
    pub start: Rword,
    /// End (exclusive) of the block.
    pub end: Rword,
    /// How many times it ran (0 for a block translated but never entered).
    pub count: u64,
}

/// The counters of [`VmRef::add_block_counter`](crate::VmRef::add_block_counter): one per
/// basic block and Vm (every thread's Vm counts in its own, without atomics), added up by
/// [`counts`](Self::counts). Cheap to copy; read it whenever (typically at fini: counts
/// read while threads run may lag a little).
#[derive(Clone, Copy, Debug)]
pub struct BlockCounter {
    table: &'static CounterTable,
}

/// Counters by block extent and lane (each Vm counts in its own, without atomics). Leaked:
/// translated code writes them for the life of the process.
#[derive(Debug, Default)]
pub(crate) struct CounterTable {
    slots: Mutex<HashMap<(Rword, Rword, u32), &'static AtomicU64>>,
}

impl BlockCounter {
    pub(crate) fn new() -> BlockCounter {
        BlockCounter {
            table: Box::leak(Box::default()),
        }
    }

    /// What the host calls with.
    pub(crate) fn data(self) -> *mut c_void {
        std::ptr::from_ref(self.table).cast_mut().cast()
    }

    /// Every counted block with its count, sorted by start address (empty if the table
    /// stayed locked, see `lock_for_reading`).
    #[must_use]
    pub fn counts(&self) -> Vec<BlockCount> {
        let Some(slots) = lock_for_reading(&self.table.slots) else {
            return Vec::new();
        };
        let mut sums: HashMap<(Rword, Rword), u64> = HashMap::new();
        for (&(start, end, _lane), c) in slots.iter() {
            *sums.entry((start, end)).or_default() += c.load(Ordering::Relaxed);
        }
        let mut out: Vec<BlockCount> = sums
            .into_iter()
            .map(|((start, end), count)| BlockCount { start, end, count })
            .collect();
        out.sort_unstable_by_key(|b| (b.start, b.end));
        out
    }

    /// Sets every count to zero (a `fork` child starting its own counts). False, and
    /// nothing reset, if another thread held the table (it was translating) when the
    /// process forked.
    pub fn reset(&self) -> bool {
        match self.table.slots.try_lock() {
            Ok(slots) => {
                slots.values().for_each(|c| c.store(0, Ordering::Relaxed));
                true
            }
            Err(_) => false,
        }
    }

    /// The sum of every block's count: the number of blocks executed (0 if the table
    /// stayed locked).
    #[must_use]
    pub fn total(&self) -> u64 {
        let Some(slots) = lock_for_reading(&self.table.slots) else {
            return 0;
        };
        slots.values().map(|c| c.load(Ordering::Relaxed)).sum()
    }
}

/// The slot function the host calls at translation: lane `lane`'s counter of
/// `[start, end)`.
pub(crate) extern "C" fn counter_slot(
    data: *mut c_void,
    start: Rword,
    end: Rword,
    lane: u32,
) -> *mut u64 {
    // SAFETY: `data` is the leaked table of a BlockCounter (see `BlockCounter::data`).
    let table = unsafe { &*(data as *const CounterTable) };
    let mut slots = table.slots.lock().unwrap_or_else(|e| e.into_inner());
    let c: &'static AtomicU64 = slots.entry((start, end, lane)).or_insert_with(new_counter);
    c.as_ptr()
}

/// The part of the current page of counters not given out yet: `(next, end)` addresses.
static LOW_COUNTERS: Mutex<(usize, usize)> = Mutex::new((0, 0));

/// Bytes of counters mapped at a time.
const COUNTER_PAGE: usize = 64 << 10;

/// A new counter at zero, for the life of the process: from pages in the first 2 GiB,
/// densely, where translated code increments it with one instruction and no register
/// (`inc qword [slot]`, see the engine's `engine/inline.rs`); from the heap if no such page
/// can be mapped.
fn new_counter() -> &'static AtomicU64 {
    let mut low = LOW_COUNTERS.lock().unwrap_or_else(|e| e.into_inner());
    if low.0 == low.1 {
        match low_map(COUNTER_PAGE) {
            Some(page) => {
                *low = (
                    page.as_ptr() as usize,
                    page.as_ptr() as usize + COUNTER_PAGE,
                )
            }
            None => return Box::leak(Box::new(AtomicU64::new(0))),
        }
    }
    let at = low.0;
    low.0 += size_of::<AtomicU64>();
    // SAFETY: `at` is 8-aligned (pages are, and counters are 8 bytes), zeroed, mapped for the
    // life of the process, and given out once.
    unsafe { &*(at as *const AtomicU64) }
}

/// Nothing to free: the table outlives the instrumentation.
pub(crate) extern "C" fn keep(_data: *mut c_void) {}

/// The block hash of an edge map (see [`VmRef::add_edge_map`](crate::VmRef::add_edge_map)).
#[derive(Clone, Copy, Debug, Default)]
pub enum EdgeHash {
    /// AFL's QEMU mode's: `(addr >> 4) ^ (addr << 8)`, masked to the map's size.
    #[default]
    Afl,
    /// The plugin's own, called once per translated block with its start address (masked
    /// to the map's size by the engine).
    Custom(extern "C" fn(Rword) -> u64),
}

/// An edge map: `size` counters of one byte, `size` a power of two.
pub type EdgeMap = &'static [AtomicU8];

/// The per-thread edge maps of
/// [`VmRef::add_thread_edge_maps`](crate::VmRef::add_thread_edge_maps): one map per Vm
/// (per thread), so that threads never fight over map lines; [`merged`](Self::merged)
/// adds them up. Cheap to copy.
#[derive(Clone, Copy, Debug)]
pub struct ThreadEdgeMaps {
    table: &'static LaneMaps,
}

/// Maps by lane. Leaked: translated code writes them for the life of the process.
#[derive(Debug)]
pub(crate) struct LaneMaps {
    size: usize,
    never_zero: bool,
    maps: Mutex<Vec<EdgeMap>>,
}

impl ThreadEdgeMaps {
    pub(crate) fn new(size: usize, never_zero: bool) -> ThreadEdgeMaps {
        ThreadEdgeMaps {
            table: Box::leak(Box::new(LaneMaps {
                size,
                never_zero,
                maps: Mutex::new(Vec::new()),
            })),
        }
    }

    /// What the host calls with.
    pub(crate) fn data(self) -> *mut c_void {
        std::ptr::from_ref(self.table).cast_mut().cast()
    }

    /// The maps added up entry by entry, modulo 256: what one map shared by every thread
    /// would hold without lost increments. With NeverZero each map skipped 0 on its own
    /// wraps and a sum that wraps to 0 counts 1: the hot entries' low bits then depend on
    /// how the counts spread over the maps (a fuzzer classifies counts in buckets, where
    /// it does not matter).
    #[must_use]
    pub fn merged(&self) -> Vec<u8> {
        let mut out = vec![0u8; self.table.size];
        let Some(maps) = lock_for_reading(&self.table.maps) else {
            return out;
        };
        for map in maps.iter() {
            for (o, b) in out.iter_mut().zip(map.iter()) {
                let v = b.load(Ordering::Relaxed);
                if v != 0 {
                    *o = o.wrapping_add(v);
                    if *o == 0 && self.table.never_zero {
                        *o = 1;
                    }
                }
            }
        }
        out
    }

    /// Clears every map (a `fork` child starting its own). False, and nothing cleared, if
    /// another thread held the table when the process forked.
    pub fn reset(&self) -> bool {
        match self.table.maps.try_lock() {
            Ok(maps) => {
                maps.iter()
                    .for_each(|m| m.iter().for_each(|b| b.store(0, Ordering::Relaxed)));
                true
            }
            Err(_) => false,
        }
    }
}

/// The map function the host calls once per Vm: lane `lane`'s own map.
pub(crate) extern "C" fn lane_map(data: *mut c_void, _lane: u32) -> *mut u8 {
    // SAFETY: `data` is the leaked table of a ThreadEdgeMaps (see `ThreadEdgeMaps::data`).
    let table = unsafe { &*(data as *const LaneMaps) };
    let map: EdgeMap = low_map(table.size)
        .unwrap_or_else(|| Box::leak((0..table.size).map(|_| AtomicU8::new(0)).collect()));
    table
        .maps
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(map);
    map.as_ptr().cast::<u8>().cast_mut()
}

/// A zeroed map of `size` bytes in the first 2 GiB of the address space, if there is room:
/// translated code then reaches its lines with a 32-bit absolute address, with no register
/// (the engine's counted exits, see its `engine/inline.rs`). Never unmapped.
fn low_map(size: usize) -> Option<EdgeMap> {
    // SAFETY: a fresh private anonymous mapping; MAP_32BIT only chooses where.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_32BIT,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return None;
    }
    // SAFETY: `size` zeroed bytes, mapped for the life of the process; AtomicU8 has u8's
    // layout.
    Some(unsafe { std::slice::from_raw_parts(p as *const AtomicU8, size) })
}
