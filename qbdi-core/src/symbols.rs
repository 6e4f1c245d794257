//! Address to symbol lookup for [`AnalysisType::SYMBOL`](crate::AnalysisType::SYMBOL).
//!
//! This module owns finding which mapped file an address belongs to (`/proc/self/maps`),
//! reading that ELF file's symbol tables (`.symtab` and `.dynsym`, parsed once per file and
//! cached) and naming the symbol that contains the address. It only reads files; it never
//! maps, loads or changes anything, and knows nothing of the engine.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use object::read::elf::ElfFile64;
use object::{Endianness, Object, ObjectSegment, ObjectSymbol, SymbolKind};

/// The symbol containing `addr`: `(symbol name, offset of addr from its start, basename of
/// the module)`. `None` when `addr` is not in a file-backed mapping; a symbol name of `""`
/// (offset 0) when the file is known but no symbol covers `addr` (stripped code, or a local
/// function of a library that ships without `.symtab`).
pub fn symbolize(addr: u64) -> Option<(String, u32, String)> {
    let mapping = find_mapping(addr)?;
    let module = Path::new(&mapping.path)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let symbols = module_symbols(&mapping.path);
    let found = symbols
        .bias(&mapping)
        .and_then(|bias| symbols.lookup(addr.wrapping_sub(bias)));
    Some(match found {
        Some((name, offset)) => (name.to_owned(), offset, module),
        None => (String::new(), 0, module),
    })
}

/// The extent `[start, end)` of the sized function symbol containing `addr` (`None`
/// outside file-backed mappings, or when no sized symbol covers `addr`).
///
/// Without a symbol (a static function of a stripped library), the function's unwind
/// information (its `.eh_frame` FDE, which C and C++ code always has) gives the extent.
pub fn function_extent(addr: u64) -> Option<crate::Range> {
    let mapping = find_mapping(addr)?;
    let symbols = module_symbols(&mapping.path);
    let bias = symbols.bias(&mapping)?;
    if let Some((start, size)) = symbols.sized(addr.wrapping_sub(bias)) {
        let start = start.wrapping_add(bias);
        return Some(crate::Range::new(start, start + size));
    }
    fde_extent(addr)
}

/// `struct dwarf_eh_bases` of libgcc's unwinder.
#[repr(C)]
struct EhBases {
    tbase: *mut std::ffi::c_void,
    dbase: *mut std::ffi::c_void,
    func: *mut std::ffi::c_void,
}

unsafe extern "C" {
    /// libgcc's lookup of the FDE covering `pc` (through the loader's list of objects).
    fn _Unwind_Find_FDE(pc: *mut std::ffi::c_void, bases: *mut EhBases) -> *const u8;
}

/// The extent of the function whose FDE covers `addr`: `[func, func + pc_range)`.
fn fde_extent(addr: u64) -> Option<crate::Range> {
    let mut bases = EhBases {
        tbase: std::ptr::null_mut(),
        dbase: std::ptr::null_mut(),
        func: std::ptr::null_mut(),
    };
    // SAFETY: a lookup by address; `bases` is ours to fill.
    let fde = unsafe { _Unwind_Find_FDE(addr as *mut std::ffi::c_void, &mut bases) };
    if fde.is_null() || bases.func.is_null() {
        return None;
    }
    // SAFETY: `fde` is an FDE of a loaded object's .eh_frame (length, CIE pointer,
    // pc_begin, pc_range, ...), and its CIE precedes it in the same section.
    let size = unsafe {
        let read_u32 = |p: *const u8| (p as *const u32).read_unaligned();
        if read_u32(fde) == u32::MAX {
            return None; // 64-bit DWARF: not produced for x86-64 code
        }
        let cie_field = fde.add(4);
        let cie = cie_field.sub(read_u32(cie_field) as usize);
        let width = pointer_width(cie)?;
        let range = fde.add(8 + width);
        match width {
            2 => u64::from((range as *const u16).read_unaligned()),
            4 => u64::from(read_u32(range)),
            _ => (range as *const u64).read_unaligned(),
        }
    };
    let start = bases.func as u64;
    (size > 0 && (start..start + size).contains(&addr))
        .then(|| crate::Range::new(start, start + size))
}

/// The size of an encoded address in the FDEs of `cie`: from the CIE's 'R' augmentation
/// (the pointer encoding), 8 without one.
///
/// # Safety
/// `cie` must point at a CIE of a loaded `.eh_frame`.
unsafe fn pointer_width(cie: *const u8) -> Option<usize> {
    // SAFETY: the caller's contract: the CIE's fields are readable in order.
    unsafe {
        let mut p = cie.add(8); // length, CIE id
        let version = *p;
        p = p.add(1);
        let augmentation = p;
        while *p != 0 {
            p = p.add(1);
        }
        p = p.add(1);
        let uleb = |p: &mut *const u8| {
            let mut v = 0u64;
            let mut shift = 0;
            loop {
                let b = **p;
                *p = p.add(1);
                v |= u64::from(b & 0x7f) << shift;
                shift += 7;
                if b & 0x80 == 0 || shift > 63 {
                    return v;
                }
            }
        };
        uleb(&mut p); // code alignment
        uleb(&mut p); // data alignment (sleb: same length)
        if version == 1 {
            p = p.add(1);
        } else {
            uleb(&mut p);
        }
        if *augmentation != b'z' {
            return Some(8);
        }
        uleb(&mut p); // augmentation data length
        let mut a = augmentation.add(1);
        while *a != 0 {
            match *a {
                b'R' => {
                    return match *p & 0x0f {
                        0x02 | 0x0a => Some(2),
                        0x03 | 0x0b => Some(4),
                        0x00 | 0x04 | 0x0c => Some(8),
                        _ => None,
                    };
                }
                b'L' => p = p.add(1),
                b'P' => {
                    let encoding = *p;
                    p = p.add(1);
                    p = p.add(match encoding & 0x0f {
                        0x02 | 0x0a => 2,
                        0x03 | 0x0b => 4,
                        0x00 | 0x04 | 0x0c => 8,
                        _ => return None,
                    });
                }
                b'S' | b'B' => {}
                _ => return None,
            }
            a = a.add(1);
        }
        Some(8)
    }
}

/// A file-backed mapping of the process.
#[derive(Debug)]
struct Mapping {
    start: u64,
    /// File offset mapped at `start`.
    offset: u64,
    path: String,
}

/// The file-backed mapping of `/proc/self/maps` that contains `addr`.
fn find_mapping(addr: u64) -> Option<Mapping> {
    let maps = crate::maps::self_maps_text();
    maps.lines().find_map(|line| {
        // "start-end perms offset dev inode   path"
        let mut fields = line.splitn(6, ' ');
        let (start, end) = fields.next()?.split_once('-')?;
        let start = u64::from_str_radix(start, 16).ok()?;
        let end = u64::from_str_radix(end, 16).ok()?;
        if !(start..end).contains(&addr) {
            return None;
        }
        let _perms = fields.next()?;
        let offset = u64::from_str_radix(fields.next()?, 16).ok()?;
        let _dev = fields.next()?;
        let _inode = fields.next()?;
        let path = fields.next()?.trim_start();
        path.starts_with('/').then(|| Mapping {
            start,
            offset,
            path: path.to_owned(),
        })
    })
}

/// Preference among symbols at one address (greater is preferred).
type Rank = (
    bool,
    bool,
    std::cmp::Reverse<usize>,
    std::cmp::Reverse<usize>,
);

/// What we keep of one ELF file: its loadable segments and its symbols.
#[derive(Debug, Default)]
struct ModuleSymbols {
    /// `(file offset, virtual address, size in the file)` of each `PT_LOAD` segment.
    segments: Vec<(u64, u64, u64)>,
    /// Functions and objects of `.symtab` and `.dynsym`, sorted by address; among symbols at
    /// the same address the preferred name comes last.
    symbols: Vec<Symbol>,
}

#[derive(Debug)]
struct Symbol {
    address: u64,
    size: u64,
    name: Box<str>,
}

impl ModuleSymbols {
    /// How far the file was moved when loaded: runtime address minus link-time address.
    ///
    /// The mapping shows file offset `m.offset` at `m.start`; the `PT_LOAD` segment holding
    /// that offset says which virtual address the offset was linked at. For a position
    /// dependent executable the result is 0.
    fn bias(&self, m: &Mapping) -> Option<u64> {
        // ld.so maps each PT_LOAD segment from its page-aligned-down offset, so a mapping
        // normally starts exactly there; prefer that segment (two segments may share a page),
        // else the one whose bytes contain the mapped offset (merged mappings).
        const PAGE: u64 = 4096;
        let starts_here = |&&(off, _, _): &&(u64, u64, u64)| off & !(PAGE - 1) == m.offset;
        let contains = |&&(off, _, size): &&(u64, u64, u64)| {
            off & !(PAGE - 1) <= m.offset && m.offset < off.saturating_add(size.max(1))
        };
        let &(file_offset, vaddr, _) = self
            .segments
            .iter()
            .find(starts_here)
            .or_else(|| self.segments.iter().find(contains))?;
        // vaddr + bias is where file_offset lives: m.start + (file_offset - m.offset).
        Some(
            m.start
                .wrapping_add(file_offset)
                .wrapping_sub(m.offset)
                .wrapping_sub(vaddr),
        )
    }

    /// The symbol covering link-time address `vaddr`, and the offset into it.
    ///
    /// A sized symbol covers `[address, address + size)`; a symbol of size 0 (assembly
    /// labels, some hand-written functions) covers everything up to the next symbol, unless a
    /// sized symbol that does not contain `vaddr` lies in between.
    fn lookup(&self, vaddr: u64) -> Option<(&str, u32)> {
        // Symbols that may contain `vaddr` start at or before it; look back from the nearest.
        const LOOK_BACK: usize = 64;
        let end = self.symbols.partition_point(|s| s.address <= vaddr);
        let mut behind_sized = false;
        for sym in self.symbols[..end].iter().rev().take(LOOK_BACK) {
            let offset = vaddr - sym.address;
            if sym.size > 0 {
                if offset < sym.size {
                    return Some((&sym.name, u32::try_from(offset).ok()?));
                }
                behind_sized = true;
            } else if !behind_sized {
                return Some((&sym.name, u32::try_from(offset).ok()?));
            }
        }
        None
    }

    /// The sized symbol covering link-time address `vaddr`: its address and size.
    fn sized(&self, vaddr: u64) -> Option<(u64, u64)> {
        let end = self.symbols.partition_point(|s| s.address <= vaddr);
        self.symbols[..end]
            .iter()
            .rev()
            .take(64)
            .find(|s| s.size > 0 && vaddr - s.address < s.size)
            .map(|s| (s.address, s.size))
    }

    /// Reads the file at `path`; an unreadable or non-ELF file gives an empty table.
    fn load(path: &str) -> Self {
        let Some(data) = MappedFile::open(path) else {
            return Self::default();
        };
        let Ok(file) = ElfFile64::<Endianness>::parse(data.bytes()) else {
            return Self::default();
        };
        let segments = file
            .segments()
            .map(|s| {
                let (offset, size) = s.file_range();
                (offset, s.address(), size)
            })
            .collect();
        let mut ranked: Vec<(Symbol, Rank)> = file
            .symbols()
            .chain(file.dynamic_symbols())
            .filter(|s| matches!(s.kind(), SymbolKind::Text | SymbolKind::Data))
            .filter(|s| !s.is_undefined() && s.address() != 0)
            .filter_map(|s| {
                let name = s.name().ok().filter(|n| !n.is_empty())?;
                // Among aliases prefer sized, global, less underscored, then shorter names
                // (`qsort` over `__libc_qsort`, `hypot` over `hypotf64`).
                let underscores = name.bytes().take_while(|&b| b == b'_').count();
                let rank = (
                    s.size() > 0,
                    s.is_global(),
                    std::cmp::Reverse(underscores),
                    std::cmp::Reverse(name.len()),
                );
                let symbol = Symbol {
                    address: s.address(),
                    size: s.size(),
                    name: name.into(),
                };
                Some((symbol, rank))
            })
            .collect();
        ranked.sort_by(|(a, ra), (b, rb)| (a.address, ra, &a.name).cmp(&(b.address, rb, &b.name)));
        // The same symbol often appears in both tables.
        ranked.dedup_by(|(a, _), (b, _)| a.address == b.address && a.name == b.name);
        Self {
            segments,
            symbols: ranked.into_iter().map(|(s, _)| s).collect(),
        }
    }
}

/// A file mapped read-only (its pages shared with the page cache): reading a library of
/// a few MiB into the heap to take its symbol tables cost a copy of all of it (the largest
/// part of `qbdi run -p calltrace -- /usr/bin/true`).
struct MappedFile {
    addr: *mut libc::c_void,
    len: usize,
}

impl MappedFile {
    fn open(path: &str) -> Option<MappedFile> {
        let file = std::fs::File::open(path).ok()?;
        let len = usize::try_from(file.metadata().ok()?.len()).ok()?;
        if len == 0 {
            return None;
        }
        use std::os::fd::AsRawFd;
        // SAFETY: a fresh private read-only mapping of an open file; the descriptor may
        // close afterwards (the mapping keeps the file).
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        (addr != libc::MAP_FAILED).then_some(MappedFile { addr, len })
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: `len` readable bytes mapped at `addr` until drop.
        unsafe { std::slice::from_raw_parts(self.addr as *const u8, self.len) }
    }
}

impl Drop for MappedFile {
    fn drop(&mut self) {
        // SAFETY: our own mapping; nothing borrows it past the drop.
        unsafe { libc::munmap(self.addr, self.len) };
    }
}

/// The parsed tables of the file at `path`, from the cache or read now.
fn module_symbols(path: &str) -> Arc<ModuleSymbols> {
    static CACHE: OnceLock<Mutex<HashMap<String, Arc<ModuleSymbols>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Mutex::default);
    if let Some(found) = cache.lock().unwrap_or_else(|e| e.into_inner()).get(path) {
        return Arc::clone(found);
    }
    // Parse without holding the lock: a large executable takes a while.
    let parsed = Arc::new(ModuleSymbols::load(path));
    let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
    Arc::clone(cache.entry(path.to_owned()).or_insert(parsed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::{CStr, CString};

    /// An exported function of the test executable (named in `.symtab`).
    #[unsafe(no_mangle)]
    #[inline(never)]
    pub extern "C" fn qbdi_core_symbols_test_marker(x: u64) -> u64 {
        std::hint::black_box(x).wrapping_mul(7) ^ 0x55
    }

    #[inline(never)]
    fn local_marker_function(x: u64) -> u64 {
        std::hint::black_box(x).rotate_left(3)
    }

    fn exe_name() -> String {
        let exe = std::env::current_exe().expect("test executable path");
        exe.file_name()
            .and_then(|n| n.to_str())
            .expect("utf-8 name")
            .to_owned()
    }

    /// `dlsym(handle, name)` as an address.
    fn dlsym(handle: *mut libc::c_void, name: &str) -> u64 {
        let name = CString::new(name).expect("no NUL in symbol name");
        // SAFETY: `handle` is RTLD_DEFAULT or a handle from dlopen; `name` is NUL-terminated.
        let addr = unsafe { libc::dlsym(handle, name.as_ptr()) };
        assert!(!addr.is_null(), "{name:?} not found");
        addr as u64
    }

    /// What the dynamic loader says about `addr`: (symbol, offset, module basename).
    fn dladdr(addr: u64) -> Option<(String, u64, String)> {
        // SAFETY: Dl_info is plain pointers; all-zero is a valid "nothing found" value.
        let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
        // SAFETY: dladdr only reads the loader's tables and fills `info`.
        if unsafe { libc::dladdr(addr as *const libc::c_void, &mut info) } == 0
            || info.dli_sname.is_null()
        {
            return None;
        }
        // SAFETY: on success the loader's strings are NUL-terminated and live while the
        // object is loaded (libc and libm are never unloaded).
        let (sname, fname) = unsafe {
            (
                CStr::from_ptr(info.dli_sname),
                CStr::from_ptr(info.dli_fname),
            )
        };
        let module = Path::new(&*fname.to_string_lossy())
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        Some((
            sname.to_string_lossy().into_owned(),
            addr - info.dli_saddr as u64,
            module,
        ))
    }

    /// Our answer for `addr` is the loader's: same module and offset, and a name that is the
    /// loader's or an alias of it (both resolve to the same address through `handle`).
    fn assert_same_as_loader(handle: *mut libc::c_void, addr: u64) {
        let (name, offset, module) = symbolize(addr).expect("in a loaded library");
        let (loader_name, loader_offset, loader_module) = dladdr(addr).expect("exported");
        assert_eq!(
            (u64::from(offset), &module),
            (loader_offset, &loader_module),
            "{name} vs {loader_name}"
        );
        assert_eq!(
            dlsym(handle, &name),
            dlsym(handle, &loader_name),
            "{name} vs {loader_name}"
        );
    }

    #[test]
    fn exported_function_of_the_test_executable_is_named() {
        let addr = qbdi_core_symbols_test_marker as *const () as u64;
        assert_eq!(
            symbolize(addr),
            Some(("qbdi_core_symbols_test_marker".to_owned(), 0, exe_name()))
        );
        assert_eq!(
            symbolize(addr + 1),
            Some(("qbdi_core_symbols_test_marker".to_owned(), 1, exe_name()))
        );
    }

    #[test]
    fn local_rust_function_is_found_in_symtab() {
        let addr = local_marker_function as *const () as u64;
        let (name, offset, module) = symbolize(addr).expect("in the test executable");
        // Rust names are mangled: _ZN...local_marker_function17h<hash>E or _R... (v0).
        assert!(name.contains("local_marker_function"), "{name}");
        assert_eq!((offset, module), (0, exe_name()));
    }

    #[test]
    fn libc_export_matches_the_dynamic_loader() {
        let qsort = dlsym(libc::RTLD_DEFAULT, "qsort");
        assert_eq!(
            symbolize(qsort),
            Some(("qsort".to_owned(), 0, "libc.so.6".to_owned()))
        );
        assert_same_as_loader(libc::RTLD_DEFAULT, qsort + 3);
    }

    #[test]
    fn libm_export_matches_the_dynamic_loader() {
        let lib = CString::new("libm.so.6").expect("no NUL");
        // SAFETY: loading libm runs no user code of ours; the handle is never closed.
        let handle = unsafe { libc::dlopen(lib.as_ptr(), libc::RTLD_NOW) };
        assert!(!handle.is_null(), "libm.so.6 cannot be loaded");
        let hypot = dlsym(handle, "hypot");
        assert_eq!(
            symbolize(hypot),
            Some(("hypot".to_owned(), 0, "libm.so.6".to_owned()))
        );
        assert_same_as_loader(handle, hypot + 16);
    }

    #[test]
    fn strlen_is_named_when_its_implementation_has_a_symbol() {
        // dlsym resolves the IFUNC `strlen` to the implementation this CPU uses
        // (`__strlen_avx2`, `__strlen_evex`...): a local symbol, only in `.symtab`, which
        // distributions strip from libc. Without it no symbol covers the address.
        let strlen = dlsym(libc::RTLD_DEFAULT, "strlen");
        let (name, _, module) = symbolize(strlen).expect("in libc");
        assert_eq!(module, "libc.so.6");
        assert!(name.is_empty() || name.contains("strlen"), "{name}");
        // What the loader knows (exported names only) we know too.
        if dladdr(strlen).is_some() {
            assert_same_as_loader(libc::RTLD_DEFAULT, strlen);
        }
    }

    #[test]
    fn anonymous_memory_has_no_module() {
        let on_stack = 0u64;
        assert_eq!(symbolize(&on_stack as *const u64 as u64), None);
        assert_eq!(symbolize(0), None);
    }

    fn symbols(list: &[(u64, u64, &str)]) -> ModuleSymbols {
        ModuleSymbols {
            segments: Vec::new(),
            symbols: list
                .iter()
                .map(|&(address, size, name)| Symbol {
                    address,
                    size,
                    name: name.into(),
                })
                .collect(),
        }
    }

    #[test]
    fn a_function_extent_comes_from_unwind_information_without_a_symbol() {
        // A static function of this test binary has an FDE; its extent holds the function.
        #[inline(never)]
        extern "C" fn probe(x: u64) -> u64 {
            std::hint::black_box(x).wrapping_mul(3)
        }
        let addr = probe as *const () as u64;
        let r = super::fde_extent(addr + 1).expect("an FDE covers a compiled function");
        assert_eq!(r.start, addr);
        assert!(r.end > addr + 1 && r.end - r.start < 4096, "{r:?}");
        assert_eq!(
            super::function_extent(addr + 1).map(|r| r.start),
            Some(addr)
        );
    }

    #[test]
    fn lookup_uses_sizes_and_falls_back_to_the_preceding_label() {
        let table = symbols(&[
            (0x1000, 0x20, "first"),
            (0x1040, 0, "label"),
            (0x1080, 0x10, "second"),
            (0x1080, 0x10, "second_alias"),
        ]);
        assert_eq!(table.lookup(0xfff), None);
        assert_eq!(table.lookup(0x1000), Some(("first", 0)));
        assert_eq!(table.lookup(0x101f), Some(("first", 0x1f)));
        // Past the end of `first` and before the label: nothing.
        assert_eq!(table.lookup(0x1020), None);
        assert_eq!(table.lookup(0x1050), Some(("label", 0x10)));
        // The preferred alias is sorted last.
        assert_eq!(table.lookup(0x1084), Some(("second_alias", 4)));
        assert_eq!(table.lookup(0x1090), None);
    }

    #[test]
    fn bias_comes_from_the_segment_mapped_at_the_mapping_offset() {
        // A typical PIE: text at file offset 0x1000 linked at 0x1000, data at file offset
        // 0x2db0 linked at 0x3db0 (one page further: the linker's RELRO gap).
        let mut table = symbols(&[]);
        table.segments = vec![
            (0, 0, 0x800),
            (0x1000, 0x1000, 0x500),
            (0x2db0, 0x3db0, 0x250),
        ];
        let base = 0x7f00_0000_0000;
        let text = Mapping {
            start: base + 0x1000,
            offset: 0x1000,
            path: String::new(),
        };
        assert_eq!(table.bias(&text), Some(base));
        // The data mapping starts at the page of 0x2db0, i.e. address base + 0x3000.
        let data = Mapping {
            start: base + 0x3000,
            offset: 0x2000,
            path: String::new(),
        };
        assert_eq!(table.bias(&data), Some(base));
        let unknown = Mapping {
            start: base + 0x9000,
            offset: 0x9000,
            path: String::new(),
        };
        assert_eq!(table.bias(&unknown), None);
    }
}
