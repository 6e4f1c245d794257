//! Linux `perf` symbols for translated code: with `QBDI_PERF_MAP=1` in the environment,
//! every block translated is appended to `/tmp/perf-<pid>.map` (perf's JIT map format:
//! `host_start size name`, in hex), named `qbdi:<guest start>`, so that `perf report` on an
//! instrumented run tells which guest code the time in the code cache belongs to (guest
//! addresses, to look up with the program's own symbols) instead of `[JIT] tid N`.
//!
//! Translation must not allocate: the file is opened with a path formatted on the stack,
//! and each line is one `write(2)` of a stack buffer to an `O_APPEND` descriptor (one line
//! per call: Vms of several threads append whole lines). A `fork` child opens its own
//! file, named after its pid, at its first block.

use std::sync::atomic::{AtomicI32, AtomicI64, Ordering};

/// The map's descriptor (-1: none yet), and the pid it was opened for.
static FD: AtomicI32 = AtomicI32::new(-1);
static PID: AtomicI64 = AtomicI64::new(0);

/// Whether `QBDI_PERF_MAP=1`, read once (at the first Vm's creation, when allocating is
/// fine).
pub(crate) fn enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("QBDI_PERF_MAP").is_some_and(|v| v == "1"))
}

/// Appends `host_start size qbdi:guest` for a block (nothing unless [`enabled`] said so
/// before; a failing open or write is ignored: profiling aid only).
pub(crate) fn note_block(host: u64, len: u64, guest: u64) {
    // SAFETY: getpid has no preconditions.
    let pid = i64::from(unsafe { libc::getpid() });
    let mut fd = FD.load(Ordering::Acquire);
    if fd < 0 || PID.load(Ordering::Acquire) != pid {
        fd = open(pid);
        if fd < 0 {
            return;
        }
        FD.store(fd, Ordering::Release);
        PID.store(pid, Ordering::Release);
    }
    let mut line = Line::default();
    line.hex(host);
    line.push(b' ');
    line.hex(len);
    line.push_all(b" qbdi:");
    line.hex(guest);
    line.push(b'\n');
    // SAFETY: the buffer's first `len` bytes are initialised; fd is ours (a failed write is
    // ignored).
    unsafe { libc::write(fd, line.buf.as_ptr().cast(), line.len) };
}

/// Opens `/tmp/perf-<pid>.map` for appending, creating it.
fn open(pid: i64) -> i32 {
    let mut path = Line::default();
    path.push_all(b"/tmp/perf-");
    path.dec(pid as u64);
    path.push_all(b".map\0");
    // SAFETY: a NUL-terminated path in our buffer.
    unsafe {
        libc::open(
            path.buf.as_ptr().cast(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_APPEND | libc::O_CLOEXEC,
            0o644,
        )
    }
}

/// A line built on the stack.
struct Line {
    buf: [u8; 80],
    len: usize,
}

impl Default for Line {
    fn default() -> Line {
        Line {
            buf: [0; 80],
            len: 0,
        }
    }
}

impl Line {
    fn push(&mut self, b: u8) {
        if self.len < self.buf.len() {
            self.buf[self.len] = b;
            self.len += 1;
        }
    }

    fn push_all(&mut self, bytes: &[u8]) {
        bytes.iter().for_each(|&b| self.push(b));
    }

    /// `v` in lowercase hex, without leading zeros (perf's format; no `0x`).
    fn hex(&mut self, v: u64) {
        let digits = (64 - v.leading_zeros()).div_ceil(4).max(1);
        for i in (0..digits).rev() {
            self.push(b"0123456789abcdef"[(v >> (4 * i)) as usize & 0xf]);
        }
    }

    fn dec(&mut self, mut v: u64) {
        let mut tmp = [0u8; 20];
        let mut n = 0;
        loop {
            tmp[n] = b'0' + (v % 10) as u8;
            n += 1;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        tmp[..n].iter().rev().for_each(|&b| self.push(b));
    }
}

#[cfg(test)]
mod tests {
    use super::Line;

    #[test]
    fn lines_are_perfs_format() {
        let mut l = Line::default();
        l.hex(0x5555_4910_e2c0);
        l.push(b' ');
        l.hex(0x4a);
        l.push_all(b" qbdi:");
        l.hex(0);
        l.push(b' ');
        l.dec(4_194_304);
        assert_eq!(&l.buf[..l.len], b"55554910e2c0 4a qbdi:0 4194304");
    }
}
