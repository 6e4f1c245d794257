//! Which memory is readable, from `/proc/self/maps`, without allocating: the translator
//! needs to know how far it may read guest bytes, and it may run while the guest holds the
//! heap lock (see `directory`).

/// At most this many merged readable areas are remembered.
const MAX_AREAS: usize = 8192;
/// Buffer for one `read` of the maps file.
const CHUNK: usize = 16 << 10;

pub(crate) struct ReadableMaps {
    /// Sorted, merged (start, end) of readable mappings; capacity reserved up front.
    areas: Vec<(u64, u64)>,
    /// Sorted (start, end, executable) of readable mappings whose contents may change
    /// under code translated from them: writable, or anonymous (no file: a JIT's memory,
    /// `[stack]`, `[heap]`); not the vDSO.
    volatile: Vec<(u64, u64, bool)>,
    valid: bool,
}

impl ReadableMaps {
    pub fn new() -> ReadableMaps {
        ReadableMaps {
            areas: Vec::with_capacity(MAX_AREAS),
            volatile: Vec::with_capacity(MAX_AREAS),
            valid: false,
        }
    }

    /// Forget what was read (mappings may have changed).
    pub fn invalidate(&mut self) {
        self.valid = false;
    }

    /// End of the contiguous readable memory containing `addr`, reading the maps again if
    /// `addr` is not known to be readable.
    pub fn end_of(&mut self, addr: u64) -> Option<u64> {
        if let Some(end) = self.find(addr).filter(|_| self.valid) {
            return Some(end);
        }
        self.reload();
        self.find(addr)
    }

    /// The volatile mapping containing `addr` (see `volatile`), as last read: (start, end,
    /// executable).
    pub fn volatile_at(&self, addr: u64) -> Option<(u64, u64, bool)> {
        let i = self.volatile.partition_point(|a| a.1 <= addr);
        self.volatile.get(i).copied().filter(|a| a.0 <= addr)
    }

    /// Whether the `len` bytes at `addr` are readable, as the maps were last read (never
    /// reads them again: false when they may be stale).
    pub fn known_readable(&self, addr: u64, len: u64) -> bool {
        self.valid
            && self
                .find(addr)
                .is_some_and(|end| addr.checked_add(len).is_some_and(|e| e <= end))
    }

    /// Notes `[start, end)` readable and not volatile (a library's code the loader just
    /// mapped read-only), if the maps were read since the last change: the next question
    /// about it needs no reading of them. Anything already known there is replaced.
    pub fn note_file_code(&mut self, start: u64, end: u64) {
        if !self.valid || start >= end {
            return;
        }
        self.volatile.retain(|v| v.1 <= start || v.0 >= end);
        // Readable areas that touch or overlap the range merge with it.
        let first = self.areas.partition_point(|a| a.1 < start);
        let last = self.areas.partition_point(|a| a.0 <= end);
        let (mut s, mut e) = (start, end);
        if first < last {
            s = s.min(self.areas[first].0);
            e = e.max(self.areas[last - 1].1);
            self.areas.drain(first..last);
        } else if self.areas.len() >= MAX_AREAS {
            self.valid = false;
            return;
        }
        self.areas.insert(first, (s, e));
    }

    /// End of the contiguous readable memory containing `addr`, as the maps were last read
    /// (never reads them again: None when they may be stale).
    pub fn known_end(&self, addr: u64) -> Option<u64> {
        self.find(addr).filter(|_| self.valid)
    }

    fn find(&self, addr: u64) -> Option<u64> {
        let i = self.areas.partition_point(|a| a.1 <= addr);
        self.areas.get(i).filter(|a| a.0 <= addr).map(|a| a.1)
    }

    fn reload(&mut self) {
        self.areas.clear();
        self.volatile.clear();
        self.valid = true;
        // SAFETY: a plain open(2) of a NUL-terminated path; the descriptor is closed below.
        let fd = unsafe {
            libc::open(
                c"/proc/self/maps".as_ptr(),
                libc::O_RDONLY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            self.valid = false;
            return;
        }
        let mut buf = [0u8; CHUNK];
        let mut filled = 0usize;
        loop {
            // SAFETY: reading into the unused tail of our stack buffer.
            let n = unsafe { libc::read(fd, buf[filled..].as_mut_ptr().cast(), CHUNK - filled) };
            if n <= 0 {
                break;
            }
            filled += n as usize;
            let mut consumed = 0;
            while let Some(nl) = buf[consumed..filled].iter().position(|&b| b == b'\n') {
                self.add_line(&buf[consumed..consumed + nl]);
                consumed += nl + 1;
            }
            buf.copy_within(consumed..filled, 0);
            filled -= consumed;
        }
        // SAFETY: fd is ours.
        unsafe { libc::close(fd) };
    }

    /// "start-end perms ...": keeps readable ones, merging adjacent areas.
    fn add_line(&mut self, line: &[u8]) {
        let mut fields = line.split(|&b| b == b' ');
        let (Some(range), Some(perms)) = (fields.next(), fields.next()) else {
            return;
        };
        if perms.first() != Some(&b'r') {
            return;
        }
        let Some(dash) = range.iter().position(|&b| b == b'-') else {
            return;
        };
        let (Some(start), Some(end)) = (hex(&range[..dash]), hex(&range[dash + 1..])) else {
            return;
        };
        // offset, device, inode, then the name (absent for anonymous memory).
        let name = fields.skip(3).find(|f| !f.is_empty()).unwrap_or_default();
        let anonymous = name.is_empty() || name == b"[stack]" || name == b"[heap]";
        if (anonymous || perms.get(1) == Some(&b'w')) && self.volatile.len() < MAX_AREAS {
            self.volatile
                .push((start, end, perms.get(2) == Some(&b'x')));
        }
        if let Some(last) = self.areas.last_mut().filter(|l| l.1 == start) {
            last.1 = end;
        } else if self.areas.len() < MAX_AREAS {
            self.areas.push((start, end));
        }
    }
}

fn hex(digits: &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for &d in digits {
        v = v.checked_mul(16)? + (d as char).to_digit(16)? as u64;
    }
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_stack_and_code_are_readable() {
        let mut m = ReadableMaps::new();
        let local = 5u64;
        let here = &local as *const u64 as u64;
        assert!(m.end_of(here).is_some_and(|e| e > here));
        let code = own_stack_and_code_are_readable as fn() as usize as u64;
        assert!(m.end_of(code).is_some_and(|e| e > code));
        assert_eq!(m.end_of(8), None);
        // The stack may change under code; this test's own code may not.
        assert!(m.volatile_at(here).is_some());
        assert!(m.volatile_at(code).is_none());
    }

    #[test]
    fn anonymous_executable_memory_is_volatile_code() {
        // SAFETY: a fresh anonymous mapping, unmapped below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_EXEC,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        } as u64;
        let mut m = ReadableMaps::new();
        assert!(m.end_of(p).is_some());
        let (s, e, exec) = m.volatile_at(p).expect("anonymous: volatile");
        assert!(s <= p && p < e && exec);
        // SAFETY: unmaps the page mapped above.
        unsafe { libc::munmap(p as *mut libc::c_void, 4096) };
    }

    #[test]
    fn noted_file_code_is_readable_without_reading_the_maps() {
        let mut m = ReadableMaps::new();
        // Nothing read yet: a note is not taken (the next question reads the maps).
        m.note_file_code(0x1000, 0x2000);
        assert!(!m.known_readable(0x1000, 8));
        m.reload();
        // Unmapped addresses (a page at 4 KiB and one at 64 KiB), noted as a library's code.
        assert!(!m.known_readable(0x1000, 8));
        m.note_file_code(0x1000, 0x2000);
        m.note_file_code(0x10000, 0x11000);
        assert!(m.known_readable(0x1000, 0x1000));
        assert!(
            !m.known_readable(0x1000, 0x1001),
            "ends where the note ends"
        );
        assert_eq!(
            m.end_of(0x1800),
            Some(0x2000),
            "no reading: the note answers"
        );
        assert!(m.volatile_at(0x1800).is_none());
        // Touching notes merge into one readable area.
        m.note_file_code(0x2000, 0x3000);
        assert_eq!(m.end_of(0x1000), Some(0x3000));
        assert_eq!(m.end_of(0x10000), Some(0x11000));
        // What the maps said still holds.
        let code = noted_file_code_is_readable_without_reading_the_maps as fn() as usize as u64;
        assert!(m.known_readable(code, 1));
        // After a change the Vm cannot account for, the maps are read again.
        m.invalidate();
        assert!(!m.known_readable(0x1000, 8));
        assert_eq!(m.end_of(0x1000), None);
    }
}
