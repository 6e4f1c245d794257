//! The plugin's global allocator: the host's private heap.
//!
//! With `qbdi run --all-maps` libc runs instrumented, so a callback may run while the guest
//! is inside `malloc` or holds a libc lock; a plugin allocating from libc's heap there
//! corrupts the guest's. [`plugin!`](crate::plugin) therefore makes [`PluginAllocator`] the
//! plugin's `#[global_allocator]`, and exports [`HEAP_SYMBOL`](crate::abi::HEAP_SYMBOL),
//! through which the host hands over its heap ([`HeapTable`]) right after loading the
//! plugin. From then on every allocation of the plugin (its `Vec`s, `String`s, `HashMap`s,
//! and std's own) comes from the host's heap, which never calls libc's allocator.
//!
//! Before the table arrives (static constructors, or the SDK linked into an ordinary
//! program such as a plugin's unit tests) the allocator is the system's. Freeing and
//! resizing pick the right heap by address: the host's heap is one address range.
//!
//! Plugin code needs nothing for this. It should still avoid, in callbacks, what reaches
//! libc's allocator or locks by other paths: libc functions that allocate
//! (`std::fs::canonicalize`, which calls `realpath`; C stdio), spawning threads, and a
//! first access on a thread to a `thread_local!` whose type needs dropping (std registers
//! its destructor with glibc, which calls `calloc`): wrap such a value in `ManuallyDrop`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::ptr;
use std::sync::Once;
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

use crate::abi::HeapTable;

/// The host's table, once handed over (null before).
static TABLE: AtomicPtr<HeapTable> = AtomicPtr::new(ptr::null_mut());
/// The host heap's range, stored before [`TABLE`] is.
static START: AtomicUsize = AtomicUsize::new(0);
static END: AtomicUsize = AtomicUsize::new(0);
static SET: Once = Once::new();

/// Takes the host's heap (the body of the exported [`HEAP_SYMBOL`](crate::abi::HEAP_SYMBOL)):
/// 0 if the plugin allocates from it from now on, 1 if the table is unusable (null, too
/// small, an empty range) or another heap was handed over before (the first one stays).
///
/// # Safety
/// `table` is null or points at a [`HeapTable`] of at least its `size` bytes, whose
/// functions and range stay valid for the life of the process.
pub unsafe fn set_heap(table: *const HeapTable) -> u32 {
    if table.is_null() {
        return 1;
    }
    // SAFETY: the caller's table; its first field is its size in every version.
    let size = unsafe { ptr::addr_of!((*table).size).read() };
    if size < size_of::<HeapTable>() {
        return 1;
    }
    // SAFETY: checked to be at least this version's size; lives for the process.
    let t = unsafe { &*table };
    if t.start == 0 || t.start >= t.end {
        return 1;
    }
    let mut taken = false;
    SET.call_once(|| {
        START.store(t.start, Ordering::Relaxed);
        END.store(t.end, Ordering::Relaxed);
        TABLE.store(table.cast_mut(), Ordering::Release);
        taken = true;
    });
    let same = START.load(Ordering::Relaxed) == t.start && END.load(Ordering::Relaxed) == t.end;
    if taken || same { 0 } else { 1 }
}

/// The host heap's address range, once handed over.
pub fn host_heap_range() -> Option<(usize, usize)> {
    (!TABLE.load(Ordering::Acquire).is_null())
        .then(|| (START.load(Ordering::Relaxed), END.load(Ordering::Relaxed)))
}

/// Whether `ptr` lies in the host's heap (false before it is handed over).
pub fn in_host_heap(ptr: *const u8) -> bool {
    let p = ptr as usize;
    p >= START.load(Ordering::Relaxed) && p < END.load(Ordering::Relaxed)
}

/// The host's table, if handed over.
fn table() -> Option<&'static HeapTable> {
    let t = TABLE.load(Ordering::Acquire);
    // SAFETY: set_heap's caller guaranteed the table lives for the process.
    (!t.is_null()).then(|| unsafe { &*t })
}

/// The global allocator [`plugin!`](crate::plugin) installs in every plugin: the host's
/// heap once handed over, the system's before; blocks are freed by the heap they come from.
#[derive(Clone, Copy, Debug, Default)]
pub struct PluginAllocator;

// SAFETY: blocks come from the host's heap (whose table promises GlobalAlloc's guarantees)
// or from System; each is freed or resized by the heap it came from, told apart by address
// (every block of the host's heap lies in its range, and no System block does: the range
// is the host heap's reservation).
unsafe impl GlobalAlloc for PluginAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match table() {
            // SAFETY: a non-zero size and a power-of-two alignment (Layout's invariants).
            Some(t) => unsafe { (t.alloc)(layout.size(), layout.align()) },
            // SAFETY: forwarded with the caller's layout.
            None => unsafe { System.alloc(layout) },
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        match table() {
            // SAFETY: as in alloc.
            Some(t) => unsafe { (t.alloc_zeroed)(layout.size(), layout.align()) },
            // SAFETY: forwarded with the caller's layout.
            None => unsafe { System.alloc_zeroed(layout) },
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if in_host_heap(ptr) {
            if let Some(t) = table() {
                // SAFETY: a block of the host's heap, with the layout it has.
                unsafe { (t.dealloc)(ptr, layout.size(), layout.align()) }
            }
        } else {
            // SAFETY: not the host's, so System's, with its layout.
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        match table() {
            Some(t) if in_host_heap(ptr) => {
                // SAFETY: a block of the host's heap, with its layout; new_size is valid
                // (GlobalAlloc's contract).
                unsafe { (t.realloc)(ptr, layout.size(), layout.align(), new_size) }
            }
            Some(t) => {
                // A block from before the handover: moved into the host's heap.
                // SAFETY: new_size is non-zero and valid with this alignment.
                let new = unsafe { (t.alloc)(new_size, layout.align()) };
                if !new.is_null() {
                    // SAFETY: both blocks valid for the smaller size, distinct; the old one
                    // is System's and the caller's to give up.
                    unsafe {
                        ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                        System.dealloc(ptr, layout);
                    }
                }
                new
            }
            // SAFETY: System's block, forwarded.
            None => unsafe { System.realloc(ptr, layout, new_size) },
        }
    }
}
