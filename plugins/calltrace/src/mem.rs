//! Reading the guest's memory without faulting: argument pointers may be garbage.
//!
//! The plugin runs in the guest's process; [`SelfMemory`] reads with `process_vm_readv` on
//! the process's own pid, which fails (`EFAULT`) or stops short instead of faulting: one
//! system call per read. Where that call is refused (a seccomp filter, an old kernel), reads
//! go through `/proc/self/mem` instead.

use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU8, AtomicU32, Ordering};

/// Memory that can be read at an address.
pub trait Memory {
    /// Reads bytes at `addr` into `buf`; returns how many were read from its start (0 when
    /// `addr` is not readable).
    fn read(&self, addr: u64, buf: &mut [u8]) -> usize;
}

/// This process's memory (see the module docs).
#[derive(Clone, Copy, Debug, Default)]
pub struct SelfMemory;

/// This process's pid as cached for `process_vm_readv` (0: not known yet).
static PID: AtomicU32 = AtomicU32::new(0);

/// How reads are made: `process_vm_readv` until it is refused, then `/proc/self/mem`.
static METHOD: AtomicU8 = AtomicU8::new(VM_READV);
const VM_READV: u8 = 0;
const PROC_MEM: u8 = 1;

/// Forgets the cached pid (in a `fork` child: the parent's pid would read the parent).
pub fn forget_pid() {
    PID.store(0, Ordering::Relaxed);
}

fn pid() -> u32 {
    match PID.load(Ordering::Relaxed) {
        0 => {
            let pid = std::process::id();
            PID.store(pid, Ordering::Relaxed);
            pid
        }
        pid => pid,
    }
}

/// One `process_vm_readv` of `buf.len()` bytes at `addr`: the count read, or the error.
fn vm_readv(addr: u64, buf: &mut [u8]) -> Result<usize, i32> {
    let local = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let remote = libc::iovec {
        iov_base: addr as *mut libc::c_void,
        iov_len: buf.len(),
    };
    // SAFETY: `local` describes `buf`, writable for its length; `remote` is only read by the
    // kernel, which checks it (an unmapped address is EFAULT, not a fault).
    let n = unsafe { libc::process_vm_readv(pid() as libc::pid_t, &local, 1, &remote, 1, 0) };
    if n < 0 {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    } else {
        Ok(n as usize)
    }
}

/// Reads through `/proc/self/mem` (opened for the read: a file kept open across a `fork`
/// would read the parent).
fn proc_mem_read(addr: u64, buf: &mut [u8]) -> usize {
    let Ok(f) = std::fs::File::open("/proc/self/mem") else {
        return 0;
    };
    let mut done = 0;
    while done < buf.len() {
        match f.read_at(&mut buf[done..], addr + done as u64) {
            Ok(0) | Err(_) => break,
            Ok(n) => done += n,
        }
    }
    done
}

impl Memory for SelfMemory {
    fn read(&self, addr: u64, buf: &mut [u8]) -> usize {
        if buf.is_empty() || addr == 0 || addr.checked_add(buf.len() as u64).is_none() {
            return 0;
        }
        if METHOD.load(Ordering::Relaxed) == PROC_MEM {
            return proc_mem_read(addr, buf);
        }
        match vm_readv(addr, buf) {
            Ok(n) => n,
            Err(libc::EFAULT) => {
                // The range may run into an unmapped page: read up to the page's end.
                let to_page_end = (4096 - (addr % 4096)) as usize;
                if to_page_end < buf.len() {
                    vm_readv(addr, &mut buf[..to_page_end]).unwrap_or(0)
                } else {
                    0
                }
            }
            Err(libc::ESRCH) => {
                // A stale pid (a child made without the fork handlers): ask again.
                forget_pid();
                vm_readv(addr, buf).unwrap_or(0)
            }
            Err(_) => {
                // ENOSYS, EPERM: not allowed here.
                METHOD.store(PROC_MEM, Ordering::Relaxed);
                proc_mem_read(addr, buf)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_memory_and_refuses_bad_addresses() {
        let data = *b"hello, world";
        let mut buf = [0u8; 12];
        let m = SelfMemory;
        assert_eq!(m.read(data.as_ptr() as u64, &mut buf), 12);
        assert_eq!(&buf, b"hello, world");
        assert_eq!(m.read(0, &mut buf), 0);
        assert_eq!(m.read(8, &mut buf), 0);
        assert_eq!(m.read(u64::MAX - 4, &mut buf), 0);
    }

    #[test]
    fn a_read_running_into_an_unmapped_page_stops_there() {
        // Two pages, the second made inaccessible.
        // SAFETY: an anonymous private mapping of two pages, then its second page
        // protected; both are unmapped at the end and nothing else uses them.
        unsafe {
            let p = libc::mmap(
                std::ptr::null_mut(),
                8192,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            assert_ne!(p, libc::MAP_FAILED);
            let base = p as u64;
            std::ptr::write_bytes(p.cast::<u8>(), b'a', 4096);
            assert_eq!(libc::mprotect(p.cast::<u8>().add(4096).cast(), 4096, 0), 0);
            let mut buf = [0u8; 33];
            assert_eq!(SelfMemory.read(base + 4096 - 10, &mut buf), 10);
            assert_eq!(&buf[..10], b"aaaaaaaaaa");
            assert_eq!(SelfMemory.read(base + 4096, &mut buf), 0);
            libc::munmap(p, 8192);
        }
    }
}
