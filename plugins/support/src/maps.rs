//! `/proc/self/maps`: the process's mappings, and the modules (mapped files) they form.

use std::io;

/// One line of `/proc/<pid>/maps`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    /// First address.
    pub start: u64,
    /// End address (exclusive).
    pub end: u64,
    /// `r` permission.
    pub read: bool,
    /// `w` permission.
    pub write: bool,
    /// `x` permission.
    pub exec: bool,
    /// Offset in the file.
    pub offset: u64,
    /// The file (`/usr/lib/libc.so.6`), a pseudo-name (`[stack]`, `[vdso]`) or `""`.
    pub path: String,
}

impl Mapping {
    /// Whether the mapping is of a file (its path is absolute).
    pub fn is_file(&self) -> bool {
        self.path.starts_with('/')
    }
}

/// Parses the text of a maps file; lines that do not parse are skipped.
pub fn parse_maps(text: &str) -> Vec<Mapping> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Mapping> {
    // "start-end perms offset dev inode   path" (the path may contain spaces, or be absent).
    let mut rest = line;
    let mut field = || {
        rest = rest.trim_start();
        let end = rest.find(' ').unwrap_or(rest.len());
        let (f, r) = rest.split_at(end);
        rest = r;
        f
    };
    let range = field();
    let perms = field().as_bytes();
    let offset = field();
    let _dev = field();
    let _inode = field();
    let (start, end) = range.split_once('-')?;
    let hex = |s: &str| u64::from_str_radix(s, 16).ok();
    if perms.len() < 3 {
        return None;
    }
    Some(Mapping {
        start: hex(start)?,
        end: hex(end)?,
        read: perms[0] == b'r',
        write: perms[1] == b'w',
        exec: perms[2] == b'x',
        offset: hex(offset)?,
        path: rest.trim().to_owned(),
    })
}

/// The mappings of the current process. Instrumented code whose execute permission the
/// host took away (to catch native calls into it) is reported executable, as it was.
pub fn read_self_maps() -> io::Result<Vec<Mapping>> {
    let maps = parse_maps(&std::fs::read_to_string("/proc/self/maps")?);
    Ok(with_guarded_code(maps, &guarded_ranges()))
}

/// `maps` with the pages of `guarded` executable. The kernel merges guarded pages with the
/// file's neighbouring read-only mappings: they are split out again.
fn with_guarded_code(maps: Vec<Mapping>, guarded: &[[u64; 2]]) -> Vec<Mapping> {
    let mut out = Vec::with_capacity(maps.len());
    for m in maps {
        let mut cuts: Vec<(u64, u64)> = guarded
            .iter()
            .map(|&[s, e]| (s.max(m.start), e.min(m.end)))
            .filter(|(s, e)| s < e)
            .collect();
        cuts.sort_unstable();
        let mut at = m.start;
        let piece = |start: u64, end: u64, exec: bool| Mapping {
            start,
            end,
            exec: exec || m.exec,
            offset: m.offset + (start - m.start),
            ..m.clone()
        };
        for (s, e) in cuts {
            if at < s {
                out.push(piece(at, s, false));
            }
            out.push(piece(s, e, true));
            at = e;
        }
        if at < m.end {
            out.push(piece(at, m.end, false));
        }
    }
    out
}

/// The code the host guards (`qbdi_exec_guard_ranges`, exported by `libqbdi_host.so`); none
/// outside `qbdi run`.
fn guarded_ranges() -> Vec<[u64; 2]> {
    type GuardFn = unsafe extern "C" fn(*mut [u64; 2], usize) -> usize;
    // SAFETY: looks the symbol up in the process's global scope.
    let f = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"qbdi_exec_guard_ranges".as_ptr()) };
    if f.is_null() {
        return Vec::new();
    }
    // SAFETY: the host's export has this type.
    let f = unsafe { std::mem::transmute::<*mut libc::c_void, GuardFn>(f) };
    let mut out = vec![[0u64; 2]; 64];
    loop {
        // SAFETY: `out` has room for out.len() pairs.
        let n = unsafe { f(out.as_mut_ptr(), out.len()) };
        if n <= out.len() {
            out.truncate(n);
            return out;
        }
        out.resize(n, [0; 2]);
    }
}

/// A mapped file: the span of all its mappings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Module {
    /// The file's path as the maps file gives it.
    pub path: String,
    /// Lowest start of its mappings (for an ELF file mapped from offset 0: its load base).
    pub base: u64,
    /// Highest end of its mappings (exclusive).
    pub end: u64,
}

impl Module {
    /// The file's basename (`libc.so.6`).
    pub fn name(&self) -> &str {
        basename(&self.path)
    }

    /// Whether `addr` is in `[base, end)`.
    pub fn contains(&self, addr: u64) -> bool {
        self.base <= addr && addr < self.end
    }
}

/// The last component of a path.
pub fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// The modules of `mappings` (file mappings grouped by path), sorted by base.
pub fn modules(mappings: &[Mapping]) -> Vec<Module> {
    let mut out: Vec<Module> = Vec::new();
    for m in mappings.iter().filter(|m| m.is_file()) {
        match out.iter_mut().find(|o| o.path == m.path) {
            Some(o) => {
                o.base = o.base.min(m.start);
                o.end = o.end.max(m.end);
            }
            None => out.push(Module {
                path: m.path.clone(),
                base: m.start,
                end: m.end,
            }),
        }
    }
    out.sort_by_key(|m| (m.base, m.end));
    out
}

/// The modules with code: those of [`modules`] with at least one executable mapping
/// (leaves out data files such as locale archives).
pub fn code_modules(mappings: &[Mapping]) -> Vec<Module> {
    let mut mods = modules(mappings);
    mods.retain(|m| mappings.iter().any(|x| x.exec && x.path == m.path));
    mods
}

/// The index in `modules` (sorted by base, as [`modules`] returns them) of the module
/// containing `addr`; when spans overlap, the one with the highest base.
pub fn find_module(modules: &[Module], addr: u64) -> Option<usize> {
    let candidates = modules.partition_point(|m| m.base <= addr);
    (0..candidates).rev().find(|&i| modules[i].end > addr)
}

/// Whether `name` designates the module at `path`: equal to its basename or to its path.
pub fn names_module(name: &str, path: &str) -> bool {
    name == path || name == basename(path)
}

/// The executable mappings, as `[start, end)` ranges, of the module named `name` (basename
/// or full path).
pub fn exec_ranges(mappings: &[Mapping], name: &str) -> Vec<(u64, u64)> {
    mappings
        .iter()
        .filter(|m| m.exec && m.is_file() && names_module(name, &m.path))
        .map(|m| (m.start, m.end))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
55d0c0a00000-55d0c0a04000 r--p 00000000 08:01 1234                       /usr/bin/ls
55d0c0a04000-55d0c0a19000 r-xp 00004000 08:01 1234                       /usr/bin/ls
55d0c0a19000-55d0c0a22000 r--p 00019000 08:01 1234                       /usr/bin/ls
55d0c0a23000-55d0c0a25000 rw-p 00022000 08:01 1234                       /usr/bin/ls
55d0c1e5e000-55d0c1e7f000 rw-p 00000000 00:00 0                          [heap]
7f2a3c000000-7f2a3c028000 r--p 00000000 08:01 5678                       /usr/lib/x86_64-linux-gnu/libc.so.6
7f2a3c028000-7f2a3c1bd000 r-xp 00028000 08:01 5678                       /usr/lib/x86_64-linux-gnu/libc.so.6
7f2a3c1bd000-7f2a3c215000 r--p 001bd000 08:01 5678                       /usr/lib/x86_64-linux-gnu/libc.so.6
7f2a3c300000-7f2a3c301000 rw-p 00000000 00:00 0 
7f2a3c400000-7f2a3c401000 r-xp 00000000 08:01 9999                       /tmp/my dir/lib odd.so
7ffd4e1de000-7ffd4e1ff000 rw-p 00000000 00:00 0                          [stack]
7ffd4e1ff000-7ffd4e201000 r-xp 00000000 00:00 0                          [vdso]
garbage line
";

    #[test]
    fn parses_lines_with_and_without_paths() {
        let maps = parse_maps(MAPS);
        assert_eq!(maps.len(), 12, "the garbage line is skipped");
        assert_eq!(
            maps[1],
            Mapping {
                start: 0x55d0c0a04000,
                end: 0x55d0c0a19000,
                read: true,
                write: false,
                exec: true,
                offset: 0x4000,
                path: "/usr/bin/ls".into(),
            }
        );
        assert_eq!(maps[8].path, "");
        assert!(!maps[8].is_file());
        assert_eq!(maps[9].path, "/tmp/my dir/lib odd.so");
        assert_eq!(maps[11].path, "[vdso]");
        assert!(maps[11].exec && !maps[11].is_file());
    }

    #[test]
    fn groups_file_mappings_into_modules() {
        let mods = modules(&parse_maps(MAPS));
        let summary: Vec<(&str, u64, u64)> =
            mods.iter().map(|m| (m.name(), m.base, m.end)).collect();
        assert_eq!(
            summary,
            [
                ("ls", 0x55d0c0a00000, 0x55d0c0a25000),
                ("libc.so.6", 0x7f2a3c000000, 0x7f2a3c215000),
                ("lib odd.so", 0x7f2a3c400000, 0x7f2a3c401000),
            ]
        );
        assert_eq!(find_module(&mods, 0x55d0c0a04abc), Some(0));
        assert_eq!(find_module(&mods, 0x55d0c0a24fff), Some(0));
        assert_eq!(find_module(&mods, 0x55d0c0a25000), None);
        assert_eq!(find_module(&mods, 0x7f2a3c028000), Some(1));
        assert_eq!(
            find_module(&mods, 0x7ffd4e1ff100),
            None,
            "vdso is not a file"
        );
        assert_eq!(find_module(&mods, 0), None);
    }

    #[test]
    fn code_modules_leave_out_data_files() {
        let mut maps = parse_maps(MAPS);
        maps.extend(parse_maps(
            "7f2a3c500000-7f2a3c600000 r--p 00000000 08:01 7 /usr/lib/locale/locale-archive\n",
        ));
        assert_eq!(modules(&maps).len(), 4);
        let names: Vec<String> = code_modules(&maps)
            .iter()
            .map(|m| m.name().to_owned())
            .collect();
        assert_eq!(names, ["ls", "libc.so.6", "lib odd.so"]);
        assert_eq!(
            code_modules(&maps)[0].base,
            0x55d0c0a00000,
            "base from all mappings"
        );
    }

    #[test]
    fn finds_a_module_inside_another_ones_span() {
        let mods = vec![
            Module {
                path: "/a".into(),
                base: 0x1000,
                end: 0x9000,
            },
            Module {
                path: "/b".into(),
                base: 0x4000,
                end: 0x5000,
            },
        ];
        assert_eq!(find_module(&mods, 0x4800), Some(1));
        assert_eq!(find_module(&mods, 0x6000), Some(0));
    }

    #[test]
    fn exec_ranges_by_basename_or_path() {
        let maps = parse_maps(MAPS);
        let want = vec![(0x7f2a3c028000, 0x7f2a3c1bd000)];
        assert_eq!(exec_ranges(&maps, "libc.so.6"), want);
        assert_eq!(
            exec_ranges(&maps, "/usr/lib/x86_64-linux-gnu/libc.so.6"),
            want
        );
        assert!(exec_ranges(&maps, "libc.so").is_empty());
        assert!(exec_ranges(&maps, "[vdso]").is_empty());
    }

    #[test]
    fn guarded_pages_are_split_out_executable() {
        let maps = parse_maps(
            "1000-4000 r--p 00000000 fe:00 7 /bin/x\n4000-5000 rw-p 00003000 fe:00 7 /bin/x\n",
        );
        let split = with_guarded_code(maps, &[[0x2000, 0x3000]]);
        let view: Vec<(u64, u64, bool, u64)> = split
            .iter()
            .map(|m| (m.start, m.end, m.exec, m.offset))
            .collect();
        assert_eq!(
            view,
            [
                (0x1000, 0x2000, false, 0),
                (0x2000, 0x3000, true, 0x1000),
                (0x3000, 0x4000, false, 0x2000),
                (0x4000, 0x5000, false, 0x3000),
            ]
        );
        assert_eq!(code_modules(&split).len(), 1);
    }

    #[test]
    fn reads_this_process() {
        let maps = read_self_maps().unwrap();
        let here = reads_this_process as fn() as usize as u64;
        let mods = modules(&maps);
        let i = find_module(&mods, here).expect("this test's code is in a file");
        assert!(mods[i].path.starts_with('/'));
    }
}
