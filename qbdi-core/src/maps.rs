//! The process's memory maps (`/proc/self/maps`) and module lookup.

use crate::range::Range;
use crate::state::Rword;

bitflags::bitflags! {
    /// Access rights of a memory mapping.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
    pub struct Permission: u8 {
        /// Readable.
        const READ = 1;
        /// Writable.
        const WRITE = 2;
        /// Executable.
        const EXEC = 4;
    }
}

/// One mapping of the process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryMap {
    /// Its addresses.
    pub range: Range,
    /// Its access rights.
    pub permission: Permission,
    /// The file it maps (basename, or full path when asked), `[stack]`-like pseudo names, or
    /// an empty string for anonymous memory.
    pub name: String,
}

/// The mappings of the current process, in address order. With `full_path` false, file
/// names are reduced to their basename (`libc.so.6`), as QBDI does.
#[must_use]
pub fn current_process_maps(full_path: bool) -> Vec<MemoryMap> {
    read_maps("/proc/self/maps", full_path)
}

thread_local! {
    /// `/proc/self/maps` as read once inside [`with_maps_snapshot`] (None: not read yet).
    static SNAPSHOT: std::cell::RefCell<Option<std::rc::Rc<String>>> =
        const { std::cell::RefCell::new(None) };
    static IN_SNAPSHOT: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with `/proc/self/maps` read at most once on this thread: every
/// [`current_process_maps`] inside it (and the module lookups built on it) answers from
/// that one reading. For sequences of lookups during which nothing is mapped, unmapped or
/// has its protection changed (an `mprotect` splits a mapping, which a stale reading would
/// show whole; `exec_guard::guard` must not run inside). Start-up uses it: each reading
/// costs about 40 us on a program with a few dozen mappings. Other threads are not
/// affected; nested calls share the outer snapshot.
pub fn with_maps_snapshot<R>(f: impl FnOnce() -> R) -> R {
    if IN_SNAPSHOT.with(std::cell::Cell::get) {
        return f();
    }
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            IN_SNAPSHOT.with(|c| c.set(false));
            SNAPSHOT.with(|s| s.borrow_mut().take());
        }
    }
    IN_SNAPSHOT.with(|c| c.set(true));
    let _reset = Reset;
    f()
}

/// The text of `/proc/self/maps`: the snapshot's inside [`with_maps_snapshot`].
pub(crate) fn self_maps_text() -> std::rc::Rc<String> {
    let read = || std::rc::Rc::new(read_proc_file("/proc/self/maps"));
    if !IN_SNAPSHOT.with(std::cell::Cell::get) {
        return read();
    }
    SNAPSHOT.with(|s| s.borrow_mut().get_or_insert_with(read).clone())
}

/// The mappings of process `pid` (QBDI's `getRemoteProcessMaps`), as
/// [`current_process_maps`]; empty if its maps cannot be read.
#[must_use]
pub fn process_maps(pid: i32, full_path: bool) -> Vec<MemoryMap> {
    read_maps(&format!("/proc/{pid}/maps"), full_path)
}

/// The whole text of a procfs file, in a few large reads: `std::fs::read_to_string`
/// sees a size of 0 and starts with small reads, a dozen system calls for a maps file.
pub(crate) fn read_proc_file(path: &str) -> String {
    use std::io::Read;
    let mut text = String::with_capacity(64 << 10);
    if let Ok(mut f) = std::fs::File::open(path)
        && f.read_to_string(&mut text).is_err()
    {
        text.clear();
    }
    text
}

fn read_maps(path: &str, full_path: bool) -> Vec<MemoryMap> {
    if path != "/proc/self/maps" {
        let text = read_proc_file(path);
        return text
            .lines()
            .filter_map(|l| parse_line(l, full_path))
            .collect();
    }
    let text = self_maps_text();
    let maps = text.lines().filter_map(|l| parse_line(l, full_path));
    // Instrumented code whose execute permission the host took away is reported with it
    // (the kernel merges such pages with the file's neighbouring read-only mappings: split
    // them out again).
    let guarded = guarded::regions();
    let mut out = Vec::new();
    for m in maps {
        let mut at = m.range.start;
        let mut cuts: Vec<(u64, u64)> = guarded
            .iter()
            .map(|&(s, e)| (s.max(m.range.start), e.min(m.range.end)))
            .filter(|(s, e)| s < e)
            .collect();
        cuts.sort_unstable();
        for (s, e) in cuts {
            if at < s {
                out.push(MemoryMap {
                    range: Range::new(at, s),
                    ..m.clone()
                });
            }
            out.push(MemoryMap {
                range: Range::new(s, e),
                permission: m.permission | Permission::EXEC,
                name: m.name.clone(),
            });
            at = e;
        }
        if at < m.range.end {
            out.push(MemoryMap {
                range: Range::new(at, m.range.end),
                ..m
            });
        }
    }
    out
}

/// Names of the mapped modules (each file with at least one executable mapping), full
/// paths, in address order, without duplicates.
#[must_use]
pub fn module_names() -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for m in current_process_maps(true) {
        if m.permission.contains(Permission::EXEC)
            && m.name.starts_with('/')
            && !names.contains(&m.name)
        {
            names.push(m.name);
        }
    }
    names
}

fn parse_line(line: &str, full_path: bool) -> Option<MemoryMap> {
    // "start-end perms offset dev inode   name"
    let mut fields = line.splitn(6, ' ');
    let (start, end) = fields.next()?.split_once('-')?;
    let perms = fields.next()?.as_bytes();
    let name = fields.nth(3).unwrap_or("").trim_start();
    let mut permission = Permission::empty();
    if perms.first() == Some(&b'r') {
        permission |= Permission::READ;
    }
    if perms.get(1) == Some(&b'w') {
        permission |= Permission::WRITE;
    }
    let start = Rword::from_str_radix(start, 16).ok()?;
    let end = Rword::from_str_radix(end, 16).ok()?;
    if perms.get(2) == Some(&b'x') {
        permission |= Permission::EXEC;
    }
    let name = if !full_path && name.starts_with('/') {
        name.rsplit('/').next().unwrap_or(name)
    } else {
        name
    };
    Some(MemoryMap {
        range: Range::new(start, end),
        permission,
        name: name.to_string(),
    })
}

/// Whether a map's name designates `name`: same full path, or same basename.
pub(crate) fn map_is_module(map_full_name: &str, name: &str) -> bool {
    !name.is_empty()
        && (map_full_name == name
            || (map_full_name.starts_with('/') && map_full_name.rsplit('/').next() == Some(name)))
}

/// The registry of guarded code (see `exec_guard`): regions whose execute permission the
/// host took away, with the protection they had. Kept here, where the maps are reported;
/// lock-free to read (signal handlers), written under `exec_guard`'s lock.
pub(crate) mod guarded {
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

    /// At most this many guarded regions (one per guarded mapping).
    const MAX: usize = 256;
    static STARTS: [AtomicU64; MAX] = [const { AtomicU64::new(0) }; MAX];
    static ENDS: [AtomicU64; MAX] = [const { AtomicU64::new(0) }; MAX];
    static PROTS: [AtomicU64; MAX] = [const { AtomicU64::new(0) }; MAX];
    static COUNT: AtomicUsize = AtomicUsize::new(0);

    /// Records `[start, end)` with protection `prot`; its index, `None` when full.
    pub(crate) fn push(start: u64, end: u64, prot: i32) -> Option<usize> {
        let n = COUNT.load(Ordering::Acquire);
        if n == MAX {
            return None;
        }
        STARTS[n].store(start, Ordering::Relaxed);
        ENDS[n].store(end, Ordering::Relaxed);
        PROTS[n].store(prot as u64, Ordering::Relaxed);
        COUNT.store(n + 1, Ordering::Release);
        Some(n)
    }

    /// Keeps the first `n` regions.
    pub(crate) fn truncate(n: usize) {
        COUNT.store(n, Ordering::Release);
    }

    /// Whether `addr` is in a region (lock-free, allocation-free).
    pub(crate) fn contains(addr: u64) -> bool {
        let n = COUNT.load(Ordering::Acquire);
        (0..n).any(|i| {
            STARTS[i].load(Ordering::Relaxed) <= addr && addr < ENDS[i].load(Ordering::Relaxed)
        })
    }

    /// `(start, end, protection)` of each region.
    pub(crate) fn entries() -> Vec<(u64, u64, i32)> {
        let n = COUNT.load(Ordering::Acquire);
        (0..n)
            .map(|i| {
                (
                    STARTS[i].load(Ordering::Relaxed),
                    ENDS[i].load(Ordering::Relaxed),
                    PROTS[i].load(Ordering::Relaxed) as i32,
                )
            })
            .collect()
    }

    pub(crate) fn regions() -> Vec<(u64, u64)> {
        entries().into_iter().map(|(s, e, _)| (s, e)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_maps_line() {
        let m = parse_line(
            "7f1c2a000000-7f1c2a028000 r-xp 00000000 fe:01 1234   /usr/lib/x86_64-linux-gnu/libc.so.6",
            false,
        )
        .unwrap();
        assert_eq!(m.range, Range::new(0x7f1c2a000000, 0x7f1c2a028000));
        assert_eq!(m.permission, Permission::READ | Permission::EXEC);
        assert_eq!(m.name, "libc.so.6");
        let anon = parse_line("7f1c2a000000-7f1c2a028000 rw-p 00000000 00:00 0 ", true).unwrap();
        assert_eq!(anon.name, "");
    }

    #[test]
    fn own_executable_code_is_in_an_executable_map() {
        let here = parses_a_maps_line as fn() as usize as Rword;
        let maps = current_process_maps(true);
        let m = maps
            .iter()
            .find(|m| m.range.contains(here))
            .expect("a map holds our code");
        assert!(m.permission.contains(Permission::EXEC));
        assert!(module_names().iter().any(|n| n == &m.name));
        assert!(map_is_module(&m.name, m.name.rsplit('/').next().unwrap()));
    }
}
