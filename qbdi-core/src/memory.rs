//! Memory helpers for setting up guest calls: virtual stacks, aligned buffers, and
//! `simulate_call`.

use crate::error::VmError;
use crate::state::{GprState, Rword};
use std::ops::{Deref, DerefMut};

/// A stack allocated for the guest; unmapped on drop.
#[derive(Debug)]
pub struct VirtualStack {
    base: *mut u8,
    size: usize,
}

impl VirtualStack {
    /// Lowest address of the stack.
    #[must_use]
    pub fn base(&self) -> Rword {
        self.base as Rword
    }

    /// Size in bytes.
    #[must_use]
    pub fn size(&self) -> usize {
        self.size
    }
}

impl Drop for VirtualStack {
    fn drop(&mut self) {
        // SAFETY: base/size come from a successful mmap of ours, unmapped exactly once here.
        unsafe {
            libc::munmap(self.base.cast(), self.size);
        }
    }
}

/// Allocates a guest stack of `size` bytes and points `gpr.rsp` and `gpr.rbp` at its top
/// (16-byte aligned). The stack is freed when the returned value is dropped: keep it alive
/// as long as the guest uses it.
pub fn allocate_virtual_stack(gpr: &mut GprState, size: usize) -> Result<VirtualStack, VmError> {
    if size < 64 {
        return Err(VmError::InvalidArgument(format!(
            "a virtual stack of {size} bytes is too small: ask for at least a few KiB"
        )));
    }
    let size = size.next_multiple_of(4096);
    // SAFETY: anonymous private mapping with no address hint; the result is checked.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(VmError::OutOfMemory(format!(
            "mmap of a {size}-byte virtual stack failed: {}",
            std::io::Error::last_os_error()
        )));
    }
    let top = (p as Rword + size as Rword) & !15;
    gpr.rsp = top;
    gpr.rbp = top;
    Ok(VirtualStack {
        base: p.cast(),
        size,
    })
}

/// Prepares `gpr` as if a `call` had just been made with the SysV x86-64 convention: the
/// first six arguments in rdi, rsi, rdx, rcx, r8, r9, the rest on the stack, then
/// `return_address` pushed. The stack pointer is aligned so that the callee sees
/// `rsp + 8` 16-byte aligned. The stack memory at `gpr.rsp` is written.
///
/// # Panics
/// If `gpr.rsp` is 0 (no stack).
pub fn simulate_call(gpr: &mut GprState, return_address: Rword, args: &[Rword]) {
    assert!(
        gpr.rsp != 0,
        "simulate_call needs a stack: call allocate_virtual_stack first"
    );
    let regs = [
        &mut gpr.rdi as *mut Rword,
        &mut gpr.rsi,
        &mut gpr.rdx,
        &mut gpr.rcx,
        &mut gpr.r8,
        &mut gpr.r9,
    ];
    for (slot, value) in regs.iter().zip(args) {
        // SAFETY: each pointer is a distinct field of `gpr`, which we borrow mutably.
        unsafe { **slot = *value };
    }
    let stack_args = args.get(6..).unwrap_or(&[]);
    let mut sp = gpr.rsp & !15;
    if stack_args.len() % 2 == 1 {
        sp -= 8;
    }
    for value in stack_args
        .iter()
        .rev()
        .chain(std::iter::once(&return_address))
    {
        sp -= 8;
        // SAFETY: the caller gave the guest a stack at rsp; we write just below it, as a
        // native caller would.
        unsafe { (sp as *mut Rword).write(*value) };
    }
    gpr.rsp = sp;
}

/// A zero-initialised heap buffer with a chosen alignment; freed on drop.
#[derive(Debug)]
pub struct AlignedBuf {
    ptr: *mut u8,
    len: usize,
    layout: std::alloc::Layout,
}

/// Allocates `size` zeroed bytes aligned to `align` (a power of two).
pub fn aligned_alloc(size: usize, align: usize) -> Result<AlignedBuf, VmError> {
    let layout = std::alloc::Layout::from_size_align(size.max(1), align).map_err(|_| {
        VmError::InvalidArgument(format!(
            "alignment {align} is not a power of two (or {size} bytes is too large for it)"
        ))
    })?;
    // SAFETY: the layout has a non-zero size.
    let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
    if ptr.is_null() {
        return Err(VmError::OutOfMemory(format!(
            "{size} bytes aligned to {align}"
        )));
    }
    Ok(AlignedBuf {
        ptr,
        len: size,
        layout,
    })
}

impl AlignedBuf {
    /// Address of the first byte.
    #[must_use]
    pub fn addr(&self) -> Rword {
        self.ptr as Rword
    }
}

impl Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: ptr is valid for len initialised bytes for the life of self.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in deref, and we hold &mut self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: ptr was allocated with this layout by aligned_alloc.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simulate_call_places_stack_arguments_and_aligns() {
        let mut gpr = GprState::default();
        let _stack = allocate_virtual_stack(&mut gpr, 0x4000).unwrap();
        let top = gpr.rsp;
        simulate_call(&mut gpr, 0x42, &[1, 2, 3, 4, 5, 6, 7, 8, 9]);
        assert_eq!(
            (gpr.rdi, gpr.rsi, gpr.rdx, gpr.rcx, gpr.r8, gpr.r9),
            (1, 2, 3, 4, 5, 6)
        );
        assert_eq!((gpr.rsp + 8) % 16, 0);
        // SAFETY: the addresses read are the words simulate_call just wrote on the stack.
        let read = |a: Rword| unsafe { *(a as *const Rword) };
        assert_eq!(read(gpr.rsp), 0x42);
        assert_eq!(
            [read(gpr.rsp + 8), read(gpr.rsp + 16), read(gpr.rsp + 24)],
            [7, 8, 9]
        );
        assert!(gpr.rsp < top);
    }

    #[test]
    fn aligned_alloc_honours_alignment() {
        let b = aligned_alloc(100, 4096).unwrap();
        assert_eq!(b.addr() % 4096, 0);
        assert_eq!(b.len(), 100);
        assert!(aligned_alloc(10, 3).is_err());
    }
}
