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
pub(crate) fn symbolize(addr: u64) -> Option<(String, u32, String)> {
    let mapping = find_mapping(addr)?;
    let module = Path::new(&mapping.path)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let symbols = module_symbols(&mapping.path);
    let found = symbols.bias(&mapping).and_then(|bias| symbols.lookup(addr.wrapping_sub(bias)));
    Some(match found {
        Some((name, offset)) => (name.to_owned(), offset, module),
        None => (String::new(), 0, module),
    })
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
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
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
        Some(m.start.wrapping_add(file_offset).wrapping_sub(m.offset).wrapping_sub(vaddr))
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

    /// Reads the file at `path`; an unreadable or non-ELF file gives an empty table.
    fn load(path: &str) -> Self {
        let Ok(data) = std::fs::read(path) else {
            return Self::default();
        };
        let Ok(file) = ElfFile64::<Endianness>::parse(data.as_slice()) else {
            return Self::default();
        };
        let segments = file
            .segments()
            .map(|s| {
                let (offset, size) = s.file_range();
                (offset, s.address(), size)
            })
            .collect();
        let mut ranked: Vec<(Symbol, (bool, bool, std::cmp::Reverse<usize>))> = file
            .symbols()
            .chain(file.dynamic_symbols())
            .filter(|s| matches!(s.kind(), SymbolKind::Text | SymbolKind::Data))
            .filter(|s| !s.is_undefined() && s.address() != 0)
            .filter_map(|s| {
                let name = s.name().ok().filter(|n| !n.is_empty())?;
                // Among aliases prefer sized, global, then less underscored names
                // (`qsort` over `__libc_qsort`).
                let underscores = name.bytes().take_while(|&b| b == b'_').count();
                let rank = (s.size() > 0, s.is_global(), std::cmp::Reverse(underscores));
                let symbol = Symbol {
                    address: s.address(),
                    size: s.size(),
                    name: name.into(),
                };
                Some((symbol, rank))
            })
            .collect();
        ranked.sort_by(|(a, ra), (b, rb)| {
            (a.address, ra, &a.name).cmp(&(b.address, rb, &b.name))
        });
        // The same symbol often appears in both tables.
        ranked.dedup_by(|(a, _), (b, _)| a.address == b.address && a.name == b.name);
        Self {
            segments,
            symbols: ranked.into_iter().map(|(s, _)| s).collect(),
        }
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
