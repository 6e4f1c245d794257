//! Instrumented code that native code must not run (re-entry from native code).
//!
//! Native code (an uninstrumented libc, a library) calls into instrumented code through
//! function pointers: a `qsort` comparator, an `atexit` handler, a callback handed to a
//! library. To catch those calls, the host takes the execute permission away from the
//! original pages of instrumented code ([`guard`]): the engine only reads them, so
//! translated code is unaffected, while a native jump or call into them faults with
//! `SEGV_ACCERR` at the target. The host's `SIGSEGV` handler recognises such a fault
//! ([`is_guarded`]), runs the code under a Vm from the faulting state, and resumes the native
//! caller with the final state ([`resume_native`]).
//!
//! The registry (kept by `maps`, which reports it) keeps the original permissions: [`current_process_maps`] and the plugins'
//! map readers (through the host's `qbdi_exec_guard_ranges` export) report guarded pages as
//! executable, and [`unguard_all`] gives the permission back.
//!
//! [`current_process_maps`]: crate::current_process_maps

use std::sync::Mutex;

use crate::engine::xstate::{XAREA_BYTES, XLayout, XSaveKind};
use crate::maps::{Permission, current_process_maps, guarded};
use crate::state::{FprState, GprState};

/// Serialises the changes of the registry (`maps::guarded` keeps it).
static WRITER: Mutex<()> = Mutex::new(());

fn prot_of(p: Permission) -> i32 {
    let mut prot = 0;
    if p.contains(Permission::READ) {
        prot |= libc::PROT_READ;
    }
    if p.contains(Permission::WRITE) {
        prot |= libc::PROT_WRITE;
    }
    if p.contains(Permission::EXEC) {
        prot |= libc::PROT_EXEC;
    }
    prot
}

/// Takes the execute permission away from the executable mappings in `[start, end)`
/// (whole pages) and records them. Returns the number of bytes guarded.
///
/// # Errors
/// The `mprotect` error of a mapping that could not be changed (those before it stay
/// guarded), or `OutOfMemory` when the registry is full.
pub fn guard(start: u64, end: u64) -> std::io::Result<u64> {
    let _w = WRITER
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut bytes = 0;
    for m in current_process_maps(false) {
        if m.permission.contains(Permission::EXEC) {
            bytes += guard_locked(m.range.start.max(start), m.range.end.min(end), m.permission)?;
        }
    }
    Ok(bytes)
}

/// [`guard`] for `[start, end)` inside one mapping whose permission the caller just read
/// (`permission`, with execute): no reading of the process maps. Returns the number of
/// bytes guarded (0 if the region is empty or guarded already).
///
/// # Errors
/// As [`guard`].
pub fn guard_mapping(start: u64, end: u64, permission: Permission) -> std::io::Result<u64> {
    let _w = WRITER
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    guard_locked(start, end, permission)
}

/// Guards `[start, end)` (whole pages) of one mapping of `permission`; `WRITER` is held.
fn guard_locked(start: u64, end: u64, permission: Permission) -> std::io::Result<u64> {
    let (s, e) = (start & !0xfff, (end + 0xfff) & !0xfff);
    if s >= e || is_guarded(s) {
        return Ok(0);
    }
    let prot = prot_of(permission);
    // Recorded before the change, so a fault right after it is recognised.
    let Some(n) = guarded::push(s, e, prot) else {
        return Err(std::io::ErrorKind::OutOfMemory.into());
    };
    // SAFETY: changes the protection of pages of an existing mapping; they stay readable
    // (the engine reads them) and only lose execute.
    if unsafe {
        libc::mprotect(
            s as *mut libc::c_void,
            (e - s) as usize,
            prot & !libc::PROT_EXEC,
        )
    } != 0
    {
        let err = std::io::Error::last_os_error();
        guarded::truncate(n);
        return Err(err);
    }
    Ok(e - s)
}

/// Whether `addr` is in a guarded region. Lock-free and allocation-free (signal handlers).
#[must_use]
pub fn is_guarded(addr: u64) -> bool {
    guarded::contains(addr)
}

/// Whether `[start, end)` overlaps a guarded region.
#[must_use]
pub fn overlaps(start: u64, end: u64) -> bool {
    regions().iter().any(|&(s, e)| s < end && start < e)
}

/// The guarded regions, `(start, end)`, in the order they were guarded.
#[must_use]
pub fn regions() -> Vec<(u64, u64)> {
    guarded::regions()
}

/// Gives every guarded region its execute permission back (native code runs it natively
/// again) and empties the registry.
pub fn unguard_all() {
    let _w = WRITER
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for (s, e, prot) in guarded::entries() {
        // SAFETY: the pages `guard` changed, back to the protection they had.
        unsafe { libc::mprotect(s as *mut libc::c_void, (e - s) as usize, prot) };
    }
    guarded::truncate(0);
}

/// The `mprotect` protection to apply for a program's request `prot` on `[start, end)`:
/// without execute where it touches a guarded region (the program's own `mprotect` must
/// not make instrumented code natively runnable again).
#[must_use]
pub fn filter_protection(start: u64, end: u64, prot: i32) -> i32 {
    if prot & libc::PROT_EXEC != 0 && overlaps(start, end) {
        prot & !libc::PROT_EXEC
    } else {
        prot
    }
}

/// The guest's FP/vector state from the `fpregs` of a signal's `ucontext` (the kernel's
/// FXSAVE image, followed by its XSAVE image when the `FP_XSTATE_MAGIC1` marker says so).
/// Components in their initial state get their initial values.
///
/// # Safety
/// `fpregs` must be the `uc_mcontext.fpregs` of a signal delivery in progress (readable for
/// the size its own header gives).
pub unsafe fn fpr_from_signal_frame(fpregs: *const u8) -> FprState {
    const FP_XSTATE_MAGIC1: u32 = 0x4650_5853;
    let mut image = Image([0; XAREA_BYTES]);
    // SAFETY: the legacy image is 512 bytes; its software-reserved words (at 464) say
    // whether an XSAVE image follows and how long it is.
    let size = unsafe {
        let magic = (fpregs.add(464) as *const u32).read_unaligned();
        let xstate_size = (fpregs.add(464 + 16) as *const u32).read_unaligned() as usize;
        if magic == FP_XSTATE_MAGIC1 && XSaveKind::detect() != XSaveKind::FxSave {
            xstate_size.min(XAREA_BYTES)
        } else {
            512
        }
    };
    // SAFETY: `size` bytes are the kernel's image (see above).
    unsafe { std::ptr::copy_nonoverlapping(fpregs, image.0.as_mut_ptr(), size) };
    let mut fpr = FprState::default();
    if size == 512 {
        // No XSAVE header: SSE and x87 only.
        image.0[512..576].fill(0);
        image.0[512] = 3;
    }
    XLayout::current().native_into_fpr(&image.0, &mut fpr);
    XSaveKind::detect().complete_after_save(&mut fpr);
    fpr
}

#[repr(C, align(64))]
struct Image([u8; XAREA_BYTES]);

/// Leaves host code for native code with the guest state `gpr`/`fpr`: loads the FP/vector
/// state and every general register (RFLAGS included; FS and GS are not changed) and jumps
/// to `gpr.rip`. The word below `gpr.rsp` is overwritten with the target (the slot a `ret`
/// to it has just popped).
///
/// # Safety
/// `gpr.rsp - 8` must be writable guest stack with nothing live in it, and `gpr.rip` code
/// that may run with this state. Nothing of the caller's runs again.
pub unsafe fn resume_native(gpr: &GprState, fpr: &FprState) -> ! {
    let kind = XSaveKind::detect();
    let mut fpr = *fpr;
    kind.prepare_for_restore(&mut fpr);
    let mut image = Image([0; XAREA_BYTES]);
    kind.fpr_to_native(&fpr, &mut image.0);
    let gpr = *gpr;
    let mask = match kind {
        XSaveKind::XSave(mask) => mask,
        XSaveKind::FxSave => 0,
    };
    // SAFETY: the caller's contract. `image` and `gpr` are on this (host) stack, which is
    // no longer needed once rsp is the guest's; they are read before the final jump only.
    unsafe {
        std::arch::asm!(
            "test eax, eax",
            "jnz 2f",
            "fxrstor64 [rsi]",
            "jmp 3f",
            "2:",
            "xrstor64 [rsi]",
            "3:",
            "mov rax, [rdi + 120]",
            "mov rcx, [rdi + 128]",
            "mov [rax - 8], rcx",
            "push qword ptr [rdi + 136]",
            "popfq",
            "mov rax, [rdi]",
            "mov rbx, [rdi + 8]",
            "mov rcx, [rdi + 16]",
            "mov rdx, [rdi + 24]",
            "mov rsi, [rdi + 32]",
            "mov r8, [rdi + 48]",
            "mov r9, [rdi + 56]",
            "mov r10, [rdi + 64]",
            "mov r11, [rdi + 72]",
            "mov r12, [rdi + 80]",
            "mov r13, [rdi + 88]",
            "mov r14, [rdi + 96]",
            "mov r15, [rdi + 104]",
            "mov rbp, [rdi + 112]",
            "mov rsp, [rdi + 120]",
            "mov rdi, [rdi + 40]",
            "jmp qword ptr [rsp - 8]",
            in("rdi") &raw const gpr,
            in("rsi") image.0.as_ptr(),
            in("eax") mask as u32,
            in("edx") (mask >> 32) as u32,
            options(noreturn),
        );
    }
}

const _: () = assert!(std::mem::offset_of!(GprState, rsp) == 120);
const _: () = assert!(std::mem::offset_of!(GprState, rip) == 128);
const _: () = assert!(std::mem::offset_of!(GprState, eflags) == 136);
const _: () = assert!(std::mem::offset_of!(GprState, rdi) == 40);

#[cfg(test)]
mod tests {
    use super::*;

    fn actual_perms(addr: u64) -> String {
        let text = std::fs::read_to_string("/proc/self/maps").expect("maps");
        text.lines()
            .find(|l| {
                let (s, rest) = l.split_once('-').expect("range");
                let e = rest.split(' ').next().expect("end");
                u64::from_str_radix(s, 16).unwrap() <= addr
                    && addr < u64::from_str_radix(e, 16).unwrap()
            })
            .expect("mapped")
            .split(' ')
            .nth(1)
            .expect("perms")
            .to_owned()
    }

    #[test]
    fn guarded_code_loses_execute_but_reports_it_and_gets_it_back() {
        // SAFETY: a fresh anonymous mapping of this test, made executable code below.
        let page = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(page, libc::MAP_FAILED);
        let addr = page as u64;
        // mov eax, 42; ret
        // SAFETY: the page is ours and writable.
        unsafe {
            std::ptr::copy_nonoverlapping(
                [0xb8u8, 42, 0, 0, 0, 0xc3].as_ptr(),
                page.cast::<u8>(),
                6,
            )
        };
        assert_eq!(guard(addr, addr + 6).expect("guard"), 4096);
        assert!(is_guarded(addr) && is_guarded(addr + 4095) && !is_guarded(addr + 4096));
        assert_eq!(actual_perms(addr), "rw-p");
        let reported = current_process_maps(false)
            .into_iter()
            .find(|m| m.range.contains(addr))
            .expect("mapped");
        assert!(reported.permission.contains(Permission::EXEC));
        assert_eq!(
            filter_protection(addr, addr + 4096, libc::PROT_READ | libc::PROT_EXEC),
            libc::PROT_READ
        );
        assert_eq!(
            filter_protection(addr + 4096, addr + 8192, libc::PROT_EXEC),
            libc::PROT_EXEC
        );
        unguard_all();
        assert!(!is_guarded(addr));
        assert_eq!(actual_perms(addr), "rwxp");
        // SAFETY: the page holds a complete function again runnable.
        let f = unsafe { std::mem::transmute::<*mut libc::c_void, extern "C" fn() -> u32>(page) };
        assert_eq!(f(), 42);
        // SAFETY: unmaps the page mapped above.
        unsafe { libc::munmap(page, 4096) };
    }
}
