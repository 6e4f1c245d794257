//! A private heap for the qbdi host and its plugins.
//!
//! With `qbdi run --all-maps` libc runs instrumented, so host code (dispatcher, translator,
//! callbacks) and plugin callbacks may run while the guest is inside `malloc` or `free`, or
//! holds one of libc's locks. Allocating through libc's malloc there corrupts the guest's
//! heap (a single-threaded glibc takes no lock) or deadlocks. This heap never calls libc's
//! allocator and takes no libc lock:
//!
//! - **Memory** comes from one contiguous reservation (`mmap` of `PROT_NONE`,
//!   `MAP_NORESERVE`, 64 GiB of address space by default), committed from its first huge
//!   page boundary in 2 MiB steps with `mprotect` as the heap grows; the first 2 MiB may be
//!   one huge page ([`Heap::huge_start`]). Whether a pointer belongs to the heap is an
//!   address-range check ([`Heap::contains`]), so an allocator built on it can send
//!   anything else (memory `malloc` returned before the heap existed) to libc's `free`.
//! - **Small blocks** (up to 32 KiB) come in 40 size classes (16-byte steps to 128, then
//!   four per power of two), carved from 64 KiB-aligned chunks of the reservation. Freed
//!   blocks go on their class's free list and are reused; chunks are never given back.
//! - **Large blocks** are power-of-two spans (64 KiB and up, aligned to their size) with a
//!   free list per size; a freed span of 1 MiB or more gives its pages back to the kernel
//!   (`madvise(MADV_DONTNEED)`) and keeps its address range for reuse.
//! - **Threads**: freeing is lock-free (a push on the class's atomic list). Allocating takes
//!   the class's spin lock; if it stays taken (another thread, or a signal handler that
//!   interrupted this thread inside the heap), the block is carved fresh from the
//!   reservation instead, with atomics only: the heap never blocks, and never deadlocks
//!   against itself.
//!
//! Sizes and alignments are the caller's to remember, as with [`GlobalAlloc`]: a block is
//! freed with the layout it was allocated with (there are no headers).
//!
//! [`HEAP`] is the process's heap and [`PrivateAllocator`] the `#[global_allocator]` over
//! it (the qbdi host installs it; plugins reach the same heap through the plugin ABI).

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::UnsafeCell;
use std::hint::spin_loop;
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU8, AtomicUsize, Ordering};

/// Alignment every block has at least.
const MIN_ALIGN: usize = 16;
/// Largest block of a size class.
const MAX_SMALL: usize = 32 << 10;
/// Number of small size classes (see [`small_index`]).
const SMALL_CLASSES: usize = 40;
/// Alignment of the chunks small blocks are carved from (a multiple of every power-of-two
/// class, so those blocks are aligned to their size).
const CHUNK_ALIGN: usize = 64 << 10;
/// Smallest span: 64 KiB.
const MIN_SPAN_ORDER: u32 = 16;
/// Largest span: 128 TiB (more than any reservation).
const MAX_SPAN_ORDER: u32 = 47;
/// Number of span sizes.
const SPAN_ORDERS: usize = (MAX_SPAN_ORDER - MIN_SPAN_ORDER + 1) as usize;
/// Spans at least this large give their pages back to the kernel when freed.
const RELEASE_SPAN: usize = 1 << 20;
/// Size of a huge page (x86-64's 2 MiB).
const HUGE_PAGE: usize = 2 << 20;
/// The reservation is committed (made read-write) in steps of this size: a huge page, so
/// that a huge page's range is one mapping.
const COMMIT_STEP: usize = HUGE_PAGE;
/// Address space [`HEAP`] reserves.
pub const DEFAULT_RESERVE: usize = 64 << 30;
/// Smallest reservation tried when a larger one is refused.
const MIN_RESERVE: usize = 64 << 20;
/// Attempts at a taken pool lock before carving a fresh block instead.
const SPINS: u32 = 1 << 12;

const UNINIT: u8 = 0;
const INITIALIZING: u8 = 1;
const READY: u8 = 2;
const FAILED: u8 = 3;

/// A free block, linked through its first word.
struct Node {
    next: *mut Node,
}

/// The free list (and, for small classes, the current chunk) of one block size.
struct Pool {
    /// Held while popping from `local` or carving from the chunk.
    lock: AtomicBool,
    /// Freed blocks, pushed lock-free; the lock holder takes them all at once (a single
    /// consumer that takes the whole list: no ABA problem).
    freed: AtomicPtr<Node>,
    /// Blocks taken from `freed`, popped under the lock.
    local: UnsafeCell<*mut Node>,
    /// Next unused address of the current chunk (small classes), under the lock.
    cursor: UnsafeCell<usize>,
    /// End of the current chunk, under the lock.
    end: UnsafeCell<usize>,
}

impl Pool {
    const fn new() -> Pool {
        Pool {
            lock: AtomicBool::new(false),
            freed: AtomicPtr::new(ptr::null_mut()),
            local: UnsafeCell::new(ptr::null_mut()),
            cursor: UnsafeCell::new(0),
            end: UnsafeCell::new(0),
        }
    }

    /// Takes the lock, spinning a bounded time; false if it stayed taken.
    fn try_lock(&self) -> bool {
        for _ in 0..SPINS {
            if !self.lock.load(Ordering::Relaxed)
                && self
                    .lock
                    .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            {
                return true;
            }
            spin_loop();
        }
        false
    }

    fn unlock(&self) {
        self.lock.store(false, Ordering::Release);
    }

    /// A freed block, if any.
    ///
    /// # Safety
    /// The caller holds the lock.
    unsafe fn pop(&self) -> Option<*mut u8> {
        // SAFETY: `local` is only touched under the lock, which the caller holds.
        let local = unsafe { &mut *self.local.get() };
        if local.is_null() {
            *local = self.freed.swap(ptr::null_mut(), Ordering::Acquire);
        }
        let node = *local;
        if node.is_null() {
            return None;
        }
        // SAFETY: a node on the list is a freed block of this pool, at least 16 bytes,
        // written by `push` before it was published.
        *local = unsafe { (*node).next };
        Some(node.cast())
    }

    /// Puts a freed block on the list (lock-free).
    ///
    /// # Safety
    /// `block` is a block of this pool's size, allocated from the heap and no longer used.
    unsafe fn push(&self, block: *mut u8) {
        let node = block.cast::<Node>();
        let mut head = self.freed.load(Ordering::Relaxed);
        loop {
            // SAFETY: the block is the caller's to give back, writable, and aligned to 16.
            unsafe { (*node).next = head };
            match self
                .freed
                .compare_exchange_weak(head, node, Ordering::Release, Ordering::Relaxed)
            {
                Ok(_) => return,
                Err(h) => head = h,
            }
        }
    }
}

/// What a layout is served from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// A small size class (index).
    Small(usize),
    /// A span of `1 << order` bytes.
    Span(u32),
}

/// The size class of a block of `size` bytes (1..=[`MAX_SMALL`]): 16-byte steps up to 128,
/// then four classes per power of two (160, 192, 224, 256, 320, ...).
fn small_index(size: usize) -> usize {
    debug_assert!((1..=MAX_SMALL).contains(&size));
    if size <= 128 {
        (size - 1) >> 4
    } else {
        let s = size - 1;
        let lg = (usize::BITS - 1 - s.leading_zeros()) as usize;
        8 + (lg - 7) * 4 + ((s >> (lg - 2)) & 3)
    }
}

/// The block size of small class `index`.
fn small_size(index: usize) -> usize {
    if index < 8 {
        (index + 1) << 4
    } else {
        let lg = (index - 8) / 4 + 7;
        let sub = (index - 8) % 4;
        (1 << lg) + ((sub + 1) << (lg - 2))
    }
}

/// Size of the chunks class blocks of `block` bytes are carved from.
fn chunk_size(block: usize) -> usize {
    (block * 8).next_power_of_two().max(CHUNK_ALIGN)
}

/// Where a `size`/`align` request is served from (`None`: too large for any span).
fn kind_of(size: usize, align: usize) -> Option<Kind> {
    let size = size.max(1);
    if align <= MIN_ALIGN {
        if size <= MAX_SMALL {
            return Some(Kind::Small(small_index(size)));
        }
    } else {
        // Over-aligned: a power-of-two class, whose blocks are aligned to their size.
        let s = size.max(align).checked_next_power_of_two()?;
        if s <= MAX_SMALL {
            return Some(Kind::Small(small_index(s)));
        }
    }
    let span = size
        .max(align)
        .checked_next_power_of_two()?
        .max(1 << MIN_SPAN_ORDER);
    let order = span.trailing_zeros();
    (order <= MAX_SPAN_ORDER).then_some(Kind::Span(order))
}

/// A private heap: a reservation of address space, committed as it is used, served in size
/// classes and power-of-two spans. See the crate documentation.
pub struct Heap {
    /// Address space to reserve at first use.
    reserve: usize,
    state: AtomicU8,
    /// First address of the reservation (0 before it exists).
    base: AtomicUsize,
    /// End of the reservation.
    limit: AtomicUsize,
    /// Next address never handed out.
    bump: AtomicUsize,
    /// `[base, committed)` is read-write.
    committed: AtomicUsize,
    /// Back the first [`HUGE_PAGE`] of blocks with a huge page (see [`Heap::huge_start`]).
    huge_start: AtomicBool,
    small: [Pool; SMALL_CLASSES],
    spans: [Pool; SPAN_ORDERS],
}

// SAFETY: every field is an atomic, or an UnsafeCell of a Pool only touched under that
// pool's lock.
unsafe impl Sync for Heap {}
// SAFETY: as above; the heap owns nothing tied to a thread.
unsafe impl Send for Heap {}

impl Default for Heap {
    fn default() -> Heap {
        Heap::new()
    }
}

impl std::fmt::Debug for Heap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Heap")
            .field("range", &self.range_if_ready())
            .field("committed", &self.committed_bytes())
            .finish()
    }
}

impl Heap {
    /// A heap that reserves [`DEFAULT_RESERVE`] bytes of address space at first use.
    pub const fn new() -> Heap {
        Heap::with_reserve(DEFAULT_RESERVE)
    }

    /// A heap that reserves `reserve` bytes of address space at first use (less if the
    /// kernel refuses that much, down to 64 MiB).
    pub const fn with_reserve(reserve: usize) -> Heap {
        Heap {
            reserve,
            state: AtomicU8::new(UNINIT),
            base: AtomicUsize::new(0),
            limit: AtomicUsize::new(0),
            bump: AtomicUsize::new(0),
            committed: AtomicUsize::new(0),
            huge_start: AtomicBool::new(false),
            small: [const { Pool::new() }; SMALL_CLASSES],
            spans: [const { Pool::new() }; SPAN_ORDERS],
        }
    }

    /// Whether the reservation exists (making it on the first call). False if the kernel
    /// refused every size: the heap then allocates nothing.
    pub fn ready(&self) -> bool {
        match self.state.load(Ordering::Acquire) {
            READY => true,
            FAILED => false,
            _ => self.init(),
        }
    }

    #[cold]
    fn init(&self) -> bool {
        if self
            .state
            .compare_exchange(UNINIT, INITIALIZING, Ordering::Acquire, Ordering::Acquire)
            .is_ok()
        {
            let ok = match reserve(self.reserve) {
                Some((base, len)) => {
                    // Blocks start at a huge page boundary (the address space before it
                    // stays reserved and unused).
                    let first = base.next_multiple_of(HUGE_PAGE).min(base + len);
                    if self.huge_start.load(Ordering::Relaxed) && first + HUGE_PAGE <= base + len {
                        // SAFETY: advice on part of our own reservation.
                        unsafe {
                            libc::madvise(
                                first as *mut libc::c_void,
                                HUGE_PAGE,
                                libc::MADV_HUGEPAGE,
                            )
                        };
                    }
                    self.bump.store(first, Ordering::Relaxed);
                    self.committed.store(first, Ordering::Relaxed);
                    self.limit.store(base + len, Ordering::Relaxed);
                    self.base.store(base, Ordering::Relaxed);
                    true
                }
                None => false,
            };
            self.state
                .store(if ok { READY } else { FAILED }, Ordering::Release);
            return ok;
        }
        loop {
            match self.state.load(Ordering::Acquire) {
                READY => return true,
                FAILED => return false,
                _ => spin_loop(),
            }
        }
    }

    /// Backs the heap's first [`HUGE_PAGE`] of blocks with one huge page (transparent huge
    /// pages permitting), if called before the heap's first allocation. One fault (about
    /// 0.1 ms, zeroing 2 MiB) then replaces one per 4 KiB page touched: the qbdi host
    /// touches about 160 of them before the program's main (the decoder's tables alone
    /// about 100), at about 2 us each on the machines measured. A process that allocates
    /// little (the `qbdi` launcher) is better off without.
    pub fn huge_start(&self) {
        self.huge_start.store(true, Ordering::Relaxed);
    }

    /// The reserved address range `(start, end)`, reserving it now if needed (`None`: the
    /// kernel refused it).
    pub fn range(&self) -> Option<(usize, usize)> {
        self.ready().then(|| self.range_if_ready()).flatten()
    }

    fn range_if_ready(&self) -> Option<(usize, usize)> {
        let base = self.base.load(Ordering::Acquire);
        (base != 0).then(|| (base, self.limit.load(Ordering::Acquire)))
    }

    /// Whether `ptr` is inside the heap's reservation (false before it exists).
    pub fn contains(&self, ptr: *const u8) -> bool {
        let p = ptr as usize;
        let base = self.base.load(Ordering::Acquire);
        base != 0 && p >= base && p < self.limit.load(Ordering::Acquire)
    }

    /// Bytes of the reservation made read-write so far.
    pub fn committed_bytes(&self) -> usize {
        self.committed.load(Ordering::Relaxed) - self.base.load(Ordering::Relaxed)
    }

    /// Allocates a block for `layout` (null if the heap is unavailable or full).
    pub fn alloc(&self, layout: Layout) -> *mut u8 {
        self.alloc_inner(layout).map_or(ptr::null_mut(), |(p, _)| p)
    }

    /// Allocates a zeroed block for `layout` (null if the heap is unavailable or full).
    pub fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        match self.alloc_inner(layout) {
            Some((p, true)) => p,
            Some((p, false)) => {
                // SAFETY: a block of at least `layout.size()` bytes, just allocated.
                unsafe { ptr::write_bytes(p, 0, layout.size()) };
                p
            }
            None => ptr::null_mut(),
        }
    }

    /// Frees a block.
    ///
    /// # Safety
    /// `ptr` was returned by this heap's `alloc`, `alloc_zeroed` or `realloc` for `layout`
    /// (for `realloc`: its `new_size` and the same alignment), and is not used afterwards.
    pub unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        match kind_of(layout.size(), layout.align()) {
            Some(Kind::Small(i)) => {
                // SAFETY: the caller gives back a block of class i.
                unsafe { self.small[i].push(ptr) }
            }
            Some(Kind::Span(order)) => {
                let size = 1usize << order;
                if size >= RELEASE_SPAN {
                    // SAFETY: the span is ours and unused: its pages may go back to the
                    // kernel (they read as zero when touched again).
                    unsafe { libc::madvise(ptr.cast(), size, libc::MADV_DONTNEED) };
                }
                // SAFETY: the caller gives back a span of this order.
                unsafe { self.spans[(order - MIN_SPAN_ORDER) as usize].push(ptr) }
            }
            // Never allocated: nothing to free.
            None => {}
        }
    }

    /// Resizes a block to `new_size` bytes (same alignment), in place when the size class
    /// or span stays the same; null (and the old block untouched) if no memory is left.
    ///
    /// # Safety
    /// As [`dealloc`](Heap::dealloc) for `ptr` and `layout`; `new_size`, rounded up to
    /// `layout.align()`, must not overflow `isize`.
    pub unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new_kind = kind_of(new_size, layout.align());
        if new_kind.is_some() && new_kind == kind_of(layout.size(), layout.align()) {
            return ptr;
        }
        let Ok(new_layout) = Layout::from_size_align(new_size, layout.align()) else {
            return ptr::null_mut();
        };
        let new = self.alloc(new_layout);
        if !new.is_null() {
            // SAFETY: both blocks are valid for the smaller size and distinct; the old one
            // is the caller's to give back.
            unsafe {
                ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
        }
        new
    }

    /// A block and whether it is known to be zeroed (fresh from the kernel).
    fn alloc_inner(&self, layout: Layout) -> Option<(*mut u8, bool)> {
        if !self.ready() {
            return None;
        }
        match kind_of(layout.size(), layout.align())? {
            Kind::Small(i) => self.alloc_small(i),
            Kind::Span(order) => self.alloc_span(order),
        }
    }

    fn alloc_small(&self, index: usize) -> Option<(*mut u8, bool)> {
        let pool = &self.small[index];
        let block = small_size(index);
        if !pool.try_lock() {
            // Taken for too long (another thread, or this thread interrupted inside the
            // pool): a fresh block from the reservation, aligned as a carved one would be.
            let align = (1usize << block.trailing_zeros()).min(CHUNK_ALIGN);
            return self.carve(block, align).map(|p| (p as *mut u8, true));
        }
        // SAFETY: the pool's lock is held until `unlock` below.
        let result = unsafe {
            if let Some(p) = pool.pop() {
                Some((p, false))
            } else {
                let cursor = &mut *pool.cursor.get();
                let end = &mut *pool.end.get();
                if *cursor != 0 && *cursor + block <= *end {
                    let p = *cursor;
                    *cursor += block;
                    Some((p as *mut u8, true))
                } else {
                    let chunk = chunk_size(block);
                    self.carve(chunk, CHUNK_ALIGN).map(|start| {
                        *cursor = start + block;
                        *end = start + chunk;
                        (start as *mut u8, true)
                    })
                }
            }
        };
        pool.unlock();
        result
    }

    fn alloc_span(&self, order: u32) -> Option<(*mut u8, bool)> {
        let pool = &self.spans[(order - MIN_SPAN_ORDER) as usize];
        let size = 1usize << order;
        if pool.try_lock() {
            // SAFETY: the pool's lock is held.
            let reused = unsafe { pool.pop() };
            pool.unlock();
            if let Some(p) = reused {
                // A released span reads as zero but for the list link in its first word.
                // SAFETY: the span is ours, at least 64 KiB.
                unsafe { p.cast::<usize>().write(0) };
                return Some((p, size >= RELEASE_SPAN));
            }
        }
        self.carve(size, size).map(|p| (p as *mut u8, true))
    }

    /// `size` fresh bytes aligned to `align` (a power of two) from the reservation,
    /// committed; lock-free.
    fn carve(&self, size: usize, align: usize) -> Option<usize> {
        let limit = self.limit.load(Ordering::Relaxed);
        let mut cur = self.bump.load(Ordering::Relaxed);
        let (start, end) = loop {
            let start = cur.checked_add(align - 1)? & !(align - 1);
            let end = start.checked_add(size)?;
            if end > limit {
                return None;
            }
            match self
                .bump
                .compare_exchange_weak(cur, end, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => break (start, end),
                Err(v) => cur = v,
            }
        };
        self.commit(end).then_some(start)
    }

    /// Makes `[base, end)` read-write (in [`COMMIT_STEP`]s). Concurrent callers may
    /// `mprotect` overlapping ranges: making read-write memory read-write changes nothing.
    fn commit(&self, end: usize) -> bool {
        let limit = self.limit.load(Ordering::Relaxed);
        loop {
            let done = self.committed.load(Ordering::Acquire);
            if end <= done {
                return true;
            }
            let to = end
                .checked_next_multiple_of(COMMIT_STEP)
                .unwrap_or(limit)
                .min(limit);
            // SAFETY: `[done, to)` is inside the reservation, which only this heap uses;
            // it never goes back to PROT_NONE, so this cannot take access away from a block.
            let r = unsafe {
                libc::mprotect(
                    done as *mut libc::c_void,
                    to - done,
                    libc::PROT_READ | libc::PROT_WRITE,
                )
            };
            if r != 0 {
                return false;
            }
            if self
                .committed
                .compare_exchange(done, to, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                return true;
            }
        }
    }
}

/// Reserves `size` bytes of address space (or less: at most a quarter of an address space
/// limit, `RLIMIT_AS`, which counts reservations too; then halving down to [`MIN_RESERVE`]
/// while the kernel refuses): `(start, length)`.
fn reserve(mut size: usize) -> Option<(usize, usize)> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut limit) } == 0
        && limit.rlim_cur != libc::RLIM_INFINITY
    {
        size = size.min((limit.rlim_cur / 4) as usize);
    }
    size = size.max(MIN_RESERVE);
    loop {
        // SAFETY: a fresh private anonymous mapping, inaccessible until committed; the
        // kernel picks its place.
        let p = unsafe {
            libc::mmap(
                ptr::null_mut(),
                size,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p != libc::MAP_FAILED {
            return Some((p as usize, size));
        }
        if size <= MIN_RESERVE {
            return None;
        }
        size /= 2;
    }
}

/// The process's private heap (the qbdi host's, which plugins reach through the ABI).
pub static HEAP: Heap = Heap::new();

/// A `#[global_allocator]` over [`HEAP`]. Memory the heap did not hand out (only possible
/// if its reservation failed, when this falls back to the system allocator) goes back to
/// the system allocator.
#[derive(Clone, Copy, Debug, Default)]
pub struct PrivateAllocator;

// SAFETY: blocks come from HEAP (valid, aligned, for the layout) or from System; each is
// freed or resized by the allocator it came from, told apart by address.
unsafe impl GlobalAlloc for PrivateAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if HEAP.ready() {
            HEAP.alloc(layout)
        } else {
            // SAFETY: forwarded with the caller's non-zero-size layout.
            unsafe { System.alloc(layout) }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if HEAP.ready() {
            HEAP.alloc_zeroed(layout)
        } else {
            // SAFETY: forwarded with the caller's non-zero-size layout.
            unsafe { System.alloc_zeroed(layout) }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if HEAP.contains(ptr) {
            // SAFETY: a block of HEAP, freed with its layout (GlobalAlloc's contract).
            unsafe { HEAP.dealloc(ptr, layout) }
        } else {
            // SAFETY: not HEAP's, so System's, freed with its layout.
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if HEAP.contains(ptr) {
            // SAFETY: a block of HEAP (GlobalAlloc's contract holds for HEAP's).
            unsafe { HEAP.realloc(ptr, layout, new_size) }
        } else {
            // SAFETY: not HEAP's, so System's.
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    /// A heap of its own for a test (4 GiB of address space).
    fn heap() -> Heap {
        Heap::with_reserve(4 << 30)
    }

    /// With a huge start, blocks start at a huge page boundary of the reservation, advised
    /// for huge pages (the mapping's `hg` flag), and the first ones are carved there.
    #[test]
    fn a_huge_start_carves_from_an_advised_huge_page() {
        let h = heap();
        h.huge_start();
        let p = h.alloc(Layout::from_size_align(64, 16).unwrap()) as usize;
        assert!(h.contains(p as *const u8));
        let first = p & !(HUGE_PAGE - 1);
        assert!(
            p - first < CHUNK_ALIGN,
            "the first chunk starts the huge page"
        );
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut flags_of_first = None;
        let mut inside = false;
        for line in smaps.lines() {
            if let Some((range, _)) = line.split_once(' ')
                && let Some((a, b)) = range.split_once('-')
                && let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
            {
                inside = a <= first && first < b;
            } else if inside && let Some(flags) = line.strip_prefix("VmFlags:") {
                flags_of_first = Some(flags.to_owned());
            }
        }
        let flags = flags_of_first.expect("the heap's first block is mapped");
        assert!(
            flags.split_whitespace().any(|f| f == "hg"),
            "advised: {flags}"
        );
    }

    fn layout(size: usize, align: usize) -> Layout {
        Layout::from_size_align(size, align).unwrap()
    }

    /// Fills a block with a pattern derived from `seed`.
    fn fill(p: *mut u8, size: usize, seed: usize) {
        for i in 0..size {
            // SAFETY: the block has `size` bytes.
            unsafe { p.add(i).write((seed.wrapping_mul(31) ^ i) as u8) };
        }
    }

    fn check(p: *const u8, size: usize, seed: usize) {
        for i in 0..size {
            // SAFETY: the block has `size` bytes.
            let b = unsafe { p.add(i).read() };
            assert_eq!(b, (seed.wrapping_mul(31) ^ i) as u8, "byte {i} of {p:?}");
        }
    }

    #[test]
    fn size_classes_cover_every_small_size() {
        let mut last = 0;
        for i in 0..SMALL_CLASSES {
            let s = small_size(i);
            assert!(s > last && s.is_multiple_of(MIN_ALIGN), "class {i}: {s}");
            assert_eq!(small_index(s), i, "size {s}");
            assert_eq!(small_index(last + 1), i, "size {}", last + 1);
            last = s;
        }
        assert_eq!(last, MAX_SMALL);
        for size in 1..=MAX_SMALL {
            let s = small_size(small_index(size));
            // At most 25% (or 15 bytes) of slack.
            assert!(
                s >= size && (s - size <= 15 || (s - size) * 4 <= size),
                "{size} -> {s}"
            );
        }
        assert_eq!(kind_of(MAX_SMALL + 1, 8), Some(Kind::Span(16)));
        assert_eq!(kind_of(0, 1), Some(Kind::Small(0)));
        assert_eq!(kind_of(24, 64), Some(Kind::Small(small_index(64))));
        assert_eq!(kind_of(100, 1 << 20), Some(Kind::Span(20)));
        assert_eq!(kind_of(usize::MAX / 2, 8), None);
    }

    #[test]
    fn blocks_of_every_size_and_alignment_are_usable_and_inside() {
        let h = heap();
        let (start, end) = h.range().unwrap();
        let mut live = Vec::new();
        let sizes = (1..300)
            .chain((300..70_000).step_by(997))
            .chain([1 << 20, (3 << 20) + 5]);
        for (n, size) in sizes.enumerate() {
            for align in [1, 2, 8, 16, 32, 64, 256, 4096, 1 << 16, 1 << 21] {
                if align == 1 << 21 && n % 16 != 0 {
                    continue;
                }
                let l = layout(size, align);
                let p = h.alloc(l);
                assert!(!p.is_null(), "{l:?}");
                assert_eq!(p as usize % align, 0, "{l:?}");
                assert!((start..end).contains(&(p as usize)) && h.contains(p));
                assert!(p as usize + size <= end);
                fill(p, size.min(4096), n ^ align);
                live.push((p, l, n ^ align));
            }
        }
        // No two live blocks overlap.
        let mut spans: Vec<(usize, usize)> = live
            .iter()
            .map(|(p, l, _)| (*p as usize, *p as usize + l.size()))
            .collect();
        spans.sort();
        for w in spans.windows(2) {
            assert!(w[0].1 <= w[1].0, "{w:x?} overlap");
        }
        for (p, l, seed) in live {
            check(p, l.size().min(4096), seed);
            // SAFETY: allocated above with `l`.
            unsafe { h.dealloc(p, l) };
        }
        assert!(!h.contains(std::ptr::null()));
        assert!(!h.contains(end as *const u8));
    }

    #[test]
    fn realloc_keeps_contents_and_stays_in_place_within_a_class() {
        let h = heap();
        let l = layout(100, 8);
        let p = h.alloc(l);
        fill(p, 100, 7);
        // 100 and 112 share the 112 class.
        // SAFETY: p was allocated with l.
        let q = unsafe { h.realloc(p, l, 112) };
        assert_eq!(p, q);
        let mut cur = (q, layout(112, 8));
        for new_size in [5000, 40_000, 3 << 20, 200, 17] {
            // SAFETY: cur is the live block with its layout.
            let n = unsafe { h.realloc(cur.0, cur.1, new_size) };
            assert!(!n.is_null() && h.contains(n));
            check(n, 17, 7);
            cur = (n, layout(new_size, 8));
        }
        // SAFETY: the live block.
        unsafe { h.dealloc(cur.0, cur.1) };
        // Over-aligned blocks keep their alignment when moved.
        let l = layout(48, 128);
        let p = h.alloc(l);
        // SAFETY: p was allocated with l.
        let q = unsafe { h.realloc(p, l, 5000) };
        assert_eq!(q as usize % 128, 0);
        // SAFETY: q is live with this layout.
        unsafe { h.dealloc(q, layout(5000, 128)) };
    }

    #[test]
    fn freed_memory_is_reused() {
        let h = heap();
        for size in [16, 100, 3000, 32 << 10, 100 << 10, 4 << 20] {
            let l = layout(size, 8);
            let p = h.alloc(l);
            // SAFETY: allocated with l.
            unsafe { h.dealloc(p, l) };
            assert_eq!(h.alloc(l), p, "size {size}");
            // SAFETY: as above.
            unsafe { h.dealloc(p, l) };
        }
        // A steady state of allocations and frees commits no more memory.
        let churn = |h: &Heap| {
            let mut v = Vec::new();
            for i in 0..20_000usize {
                let l = layout(1 + (i * 7919) % 9000, 8);
                v.push((h.alloc(l), l));
            }
            for (p, l) in v {
                // SAFETY: allocated above with l.
                unsafe { h.dealloc(p, l) };
            }
        };
        churn(&h);
        let committed = h.committed_bytes();
        for _ in 0..5 {
            churn(&h);
        }
        assert_eq!(h.committed_bytes(), committed);
    }

    #[test]
    fn zeroed_blocks_are_zero_even_when_reused() {
        let h = heap();
        for size in [24, 5000, 70_000, 2 << 20] {
            let l = layout(size, 16);
            let p = h.alloc(l);
            // SAFETY: p has `size` bytes.
            unsafe { ptr::write_bytes(p, 0xa5, size) };
            // SAFETY: allocated with l.
            unsafe { h.dealloc(p, l) };
            let z = h.alloc_zeroed(l);
            assert_eq!(z, p);
            // SAFETY: z has `size` bytes.
            let bytes = unsafe { std::slice::from_raw_parts(z, size) };
            assert!(bytes.iter().all(|&b| b == 0), "size {size}");
        }
    }

    #[test]
    fn a_taken_pool_lock_does_not_block_allocation() {
        // As when a signal handler allocates while its thread is inside the heap.
        let h = heap();
        let l = layout(64, 8);
        let first = h.alloc(l);
        let pool = &h.small[small_index(64)];
        assert!(pool.try_lock());
        let p = h.alloc(l);
        assert!(!p.is_null() && h.contains(p) && p != first);
        assert_eq!(p as usize % 64, 0);
        fill(p, 64, 1);
        // SAFETY: allocated with l; freeing never takes the lock.
        unsafe { h.dealloc(p, l) };
        pool.unlock();
        assert_eq!(h.alloc(l), p, "the fresh block was freed into the pool");
        let big = layout(1 << 20, 8);
        let s = h.alloc(big);
        // SAFETY: allocated with big.
        unsafe { h.dealloc(s, big) };
        let spans = &h.spans[(20 - MIN_SPAN_ORDER) as usize];
        assert!(spans.try_lock());
        let t = h.alloc(big);
        assert!(!t.is_null() && t != s);
        spans.unlock();
    }

    #[test]
    fn threads_allocate_and_free_concurrently_across_threads() {
        let h: &'static Heap = Box::leak(Box::new(heap()));
        let (tx, rx) = std::sync::mpsc::channel::<Vec<(usize, Layout, usize)>>();
        let producers: Vec<_> = (0..4)
            .map(|t| {
                let tx = tx.clone();
                std::thread::spawn(move || {
                    let mut x: usize = 0x9e37_79b9 + t;
                    let mut mine: Vec<(usize, Layout, usize)> = Vec::new();
                    for i in 0..40_000usize {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        let size = match x % 16 {
                            0 => 1 + x % 200_000,
                            _ => 1 + x % 600,
                        };
                        let align = 1 << (x % 7);
                        let l = layout(size, align);
                        let p = h.alloc(l);
                        assert!(!p.is_null() && (p as usize).is_multiple_of(align));
                        fill(p, size.min(64), i);
                        mine.push((p as usize, l, i));
                        if mine.len() > 64 {
                            // Half freed here, half handed to another thread.
                            let batch: Vec<_> = mine.drain(..32).collect();
                            if i % 2 == 0 {
                                tx.send(batch).unwrap();
                            } else {
                                for (p, l, seed) in batch {
                                    check(p as *const u8, l.size().min(64), seed);
                                    // SAFETY: allocated above with l.
                                    unsafe { h.dealloc(p as *mut u8, l) };
                                }
                            }
                        }
                    }
                    tx.send(mine).unwrap();
                })
            })
            .collect();
        drop(tx);
        let consumer = std::thread::spawn(move || {
            let mut seen = HashSet::new();
            for batch in rx {
                for (p, l, seed) in batch {
                    check(p as *const u8, l.size().min(64), seed);
                    seen.insert(p);
                    // SAFETY: allocated by a producer with l, handed over.
                    unsafe { h.dealloc(p as *mut u8, l) };
                }
            }
            seen.len()
        });
        for p in producers {
            p.join().unwrap();
        }
        assert!(consumer.join().unwrap() > 1000);
    }
}
