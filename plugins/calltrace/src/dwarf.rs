//! Prototypes from DWARF: a called library built with debug information (`-g`), or whose
//! separate debug file is installed (`/usr/lib/debug/.build-id/xx/yyyy.debug`, or its
//! `.gnu_debuglink` name in `/usr/lib/debug` + its directory), describes its functions'
//! parameters; calls to a function the built-in table ([`crate::protos`]) does not know
//! are decoded from that.
//!
//! Each library is read once, on the first call into it that the table does not know: every
//! defined function (`DW_TAG_subprogram` with a name and code) with its parameter types,
//! mapped onto [`Ty`]: `char *` (through `const`, typedefs) is a string, other pointers are
//! addresses, `size_t` is a size, integers by size and signedness, `float` and `double`
//! from the xmm registers, a `char` as a character. A function with a parameter passed in
//! memory (a structure or `long double` by value) has no prototype: its registers would be
//! misread. Variadic functions are decoded up to their fixed parameters.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use gimli::{AttributeValue, DwAte, EndianSlice, LittleEndian, UnitOffset};
use object::{Object, ObjectSection};

use std::sync::Mutex;

use qbdi_plugin_support::maps::{Module, code_modules, find_module, read_self_maps};
use qbdi_plugin_support::sync::lock;

use crate::protos::{Proto, Ty};

/// Most integer and floating-point arguments passed in registers.
const INT_REGS: usize = 6;
const FLOAT_REGS: usize = 8;

/// The prototypes read from each library's DWARF, by the library's path.
#[derive(Default)]
pub struct DwarfProtos {
    modules: HashMap<PathBuf, HashMap<String, &'static Proto>>,
    /// The process's code modules, as last read from `/proc/self/maps`.
    mapped: Vec<Module>,
    /// Every mapped module was read (for [`DwarfProtos::by_name`]).
    all_read: bool,
}

/// The prototypes of the process's libraries (see [`for_function`], [`by_name`]).
static DWARF: Mutex<Option<DwarfProtos>> = Mutex::new(None);

/// The prototype, from its library's DWARF, of the function `name` that starts at `addr`.
pub fn for_function(addr: u64, name: &str) -> Option<&'static Proto> {
    let mut d = lock(&DWARF);
    let d = d.get_or_insert_with(DwarfProtos::new);
    let path = d.module_at(addr)?;
    d.prototype(&path, name)
}

/// The prototype of a function `name` from the DWARF of any library mapped in the process
/// (for a lazily bound call: its library is not known before the dynamic loader binds it).
/// The first call reads every library once.
pub fn by_name(name: &str) -> Option<&'static Proto> {
    let mut d = lock(&DWARF);
    d.get_or_insert_with(DwarfProtos::new).by_name(name)
}

impl DwarfProtos {
    /// No library read yet.
    pub fn new() -> DwarfProtos {
        DwarfProtos::default()
    }

    /// The path of the module mapped at `addr` (`/proc/self/maps` is read again when the
    /// address is in none of the modules known: a library loaded since).
    fn module_at(&mut self, addr: u64) -> Option<PathBuf> {
        let mut found = find_module(&self.mapped, addr);
        if found.is_none() {
            self.mapped = code_modules(&read_self_maps().ok()?);
            self.all_read = false;
            found = find_module(&self.mapped, addr);
        }
        Some(PathBuf::from(&self.mapped[found?].path))
    }

    /// See [`by_name`].
    fn by_name(&mut self, name: &str) -> Option<&'static Proto> {
        if !self.all_read {
            if let Ok(maps) = read_self_maps() {
                self.mapped = code_modules(&maps);
            }
            let paths: Vec<PathBuf> = self.mapped.iter().map(|m| PathBuf::from(&m.path)).collect();
            for p in paths {
                self.prototype(&p, name);
            }
            self.all_read = true;
        }
        self.modules.values().find_map(|m| m.get(name).copied())
    }

    /// The prototype of `name` in the library at `path`, read from its DWARF (the first
    /// time the library is asked about: a library without DWARF costs one look).
    pub fn prototype(&mut self, path: &Path, name: &str) -> Option<&'static Proto> {
        if !self.modules.contains_key(path) {
            let protos = read_library(path).unwrap_or_default();
            self.modules.insert(path.to_path_buf(), protos);
        }
        self.modules.get(path)?.get(name).copied()
    }
}

/// The file that holds `path`'s DWARF: the library itself, or its separate debug file.
fn debug_file(path: &Path, data: &[u8]) -> Option<Vec<u8>> {
    let file = object::File::parse(data).ok()?;
    if file.section_by_name(".debug_info").is_some() {
        return None; // the library's own
    }
    let mut candidates = Vec::new();
    if let Ok(Some(id)) = file.build_id()
        && id.len() > 1
    {
        let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
        candidates.push(PathBuf::from(format!(
            "/usr/lib/debug/.build-id/{}/{}.debug",
            &hex[..2],
            &hex[2..]
        )));
    }
    if let Ok(Some((name, _crc))) = file.gnu_debuglink() {
        let name = String::from_utf8_lossy(name).into_owned();
        let dir = path.parent().unwrap_or(Path::new("/"));
        candidates.push(dir.join(&name));
        candidates.push(dir.join(".debug").join(&name));
        candidates.push(
            Path::new("/usr/lib/debug")
                .join(dir.strip_prefix("/").unwrap_or(dir))
                .join(&name),
        );
    }
    candidates.into_iter().find_map(|c| std::fs::read(c).ok())
}

/// Every function prototype of the library at `path` (`None`: no DWARF, or unreadable).
fn read_library(path: &Path) -> Option<HashMap<String, &'static Proto>> {
    let data = std::fs::read(path).ok()?;
    let separate = debug_file(path, &data);
    let bytes: &[u8] = separate.as_deref().unwrap_or(&data);
    let file = object::File::parse(bytes).ok()?;
    file.section_by_name(".debug_info")?;
    let load = |id: gimli::SectionId| -> Result<Cow<'_, [u8]>, gimli::Error> {
        Ok(file
            .section_by_name(id.name())
            .and_then(|s| s.uncompressed_data().ok())
            .unwrap_or(Cow::Borrowed(&[])))
    };
    let sections = gimli::DwarfSections::load(load).ok()?;
    let dwarf = sections.borrow(|s| EndianSlice::new(s, LittleEndian));
    let mut protos = HashMap::new();
    let mut units = dwarf.units();
    while let Ok(Some(header)) = units.next() {
        let Ok(unit) = dwarf.unit(header) else {
            continue;
        };
        read_unit(&dwarf, &unit, &mut protos);
    }
    Some(protos)
}

type R<'a> = EndianSlice<'a, LittleEndian>;

/// A function being read: its name, return type and parameters so far.
struct Pending {
    depth: isize,
    name: String,
    ret: Ty,
    args: Vec<Ty>,
    ok: bool,
}

fn read_unit(
    dwarf: &gimli::Dwarf<R<'_>>,
    unit: &gimli::Unit<R<'_>>,
    protos: &mut HashMap<String, &'static Proto>,
) {
    let mut entries = unit.entries();
    let mut depth = 0isize;
    let mut pending: Option<Pending> = None;
    while let Ok(Some((delta, entry))) = entries.next_dfs() {
        depth += delta;
        if let Some(p) = &pending
            && depth <= p.depth
        {
            finish(pending.take().expect("some"), protos);
        }
        match entry.tag() {
            gimli::DW_TAG_subprogram => {
                // Defined functions only (with code), not declarations or inlined copies.
                let has_code = entry
                    .attr_value(gimli::DW_AT_low_pc)
                    .ok()
                    .flatten()
                    .is_some()
                    || entry
                        .attr_value(gimli::DW_AT_ranges)
                        .ok()
                        .flatten()
                        .is_some();
                let name = entry
                    .attr_value(gimli::DW_AT_name)
                    .ok()
                    .flatten()
                    .and_then(|v| dwarf.attr_string(unit, v).ok())
                    .map(|s| s.to_string_lossy().into_owned());
                if let (true, Some(name)) = (has_code, name) {
                    let ret = match entry.attr_value(gimli::DW_AT_type).ok().flatten() {
                        None => Some(Ty::Void),
                        Some(t) => type_of(dwarf, unit, t, 0),
                    };
                    pending = Some(Pending {
                        depth,
                        name,
                        ret: ret.unwrap_or(Ty::Hex),
                        args: Vec::new(),
                        ok: ret.is_some(),
                    });
                }
            }
            gimli::DW_TAG_formal_parameter => {
                if let Some(p) = &mut pending
                    && depth == p.depth + 1
                {
                    match entry
                        .attr_value(gimli::DW_AT_type)
                        .ok()
                        .flatten()
                        .and_then(|t| type_of(dwarf, unit, t, 0))
                    {
                        Some(ty) => p.args.push(ty),
                        None => p.ok = false,
                    }
                }
            }
            _ => {}
        }
    }
    if let Some(p) = pending {
        finish(p, protos);
    }
}

/// Keeps a function read in full whose arguments all come from registers.
fn finish(p: Pending, protos: &mut HashMap<String, &'static Proto>) {
    let floats = p.args.iter().filter(|t| t.is_float()).count();
    let ints = p.args.len() - floats;
    if !p.ok || ints > INT_REGS || floats > FLOAT_REGS || protos.contains_key(&p.name) {
        return;
    }
    let name: &'static str = Box::leak(p.name.clone().into_boxed_str());
    let args: &'static [Ty] = Box::leak(p.args.into_boxed_slice());
    let proto: &'static Proto = Box::leak(Box::new(Proto {
        name,
        ret: p.ret,
        args,
    }));
    protos.insert(p.name, proto);
}

/// The entry a type attribute refers to, in this unit.
fn unit_offset(unit: &gimli::Unit<R<'_>>, v: AttributeValue<R<'_>>) -> Option<UnitOffset> {
    match v {
        AttributeValue::UnitRef(o) => Some(o),
        AttributeValue::DebugInfoRef(o) => o.to_unit_offset(&unit.header),
        _ => None,
    }
}

/// How a value of the type `v` is shown (`None`: not passed in one register).
fn type_of(
    dwarf: &gimli::Dwarf<R<'_>>,
    unit: &gimli::Unit<R<'_>>,
    v: AttributeValue<R<'_>>,
    level: u32,
) -> Option<Ty> {
    if level > 16 {
        return None;
    }
    let entry = unit.entry(unit_offset(unit, v)?).ok()?;
    let name = || {
        entry
            .attr_value(gimli::DW_AT_name)
            .ok()
            .flatten()
            .and_then(|n| dwarf.attr_string(unit, n).ok())
            .map(|s| s.to_string_lossy().into_owned())
    };
    let size = entry
        .attr_value(gimli::DW_AT_byte_size)
        .ok()
        .flatten()
        .and_then(|s| s.udata_value())
        .unwrap_or(0);
    let inner = || entry.attr_value(gimli::DW_AT_type).ok().flatten();
    match entry.tag() {
        gimli::DW_TAG_base_type => {
            let enc = match entry.attr_value(gimli::DW_AT_encoding).ok().flatten() {
                Some(AttributeValue::Encoding(e)) => e,
                _ => return None,
            };
            base_type(enc, size)
        }
        gimli::DW_TAG_typedef => {
            let n = name();
            match n.as_deref() {
                Some("size_t") => Some(Ty::Size),
                Some("ssize_t" | "off_t" | "off64_t" | "time_t") => Some(Ty::Long),
                _ => type_of(dwarf, unit, inner()?, level + 1),
            }
        }
        gimli::DW_TAG_const_type | gimli::DW_TAG_volatile_type | gimli::DW_TAG_restrict_type => {
            type_of(dwarf, unit, inner()?, level + 1)
        }
        gimli::DW_TAG_pointer_type | gimli::DW_TAG_reference_type => {
            // `char *` (const or not) is a string; any other pointer an address.
            let pointee = inner().and_then(|t| type_of(dwarf, unit, t, level + 1));
            Some(if pointee == Some(Ty::Char) {
                Ty::Str
            } else {
                Ty::Ptr
            })
        }
        gimli::DW_TAG_enumeration_type => Some(if size > 4 { Ty::Long } else { Ty::Int }),
        // Structures, unions, arrays by value: in memory or split over registers.
        _ => None,
    }
}

/// How a base type of encoding `enc` and `size` bytes is shown.
fn base_type(enc: DwAte, size: u64) -> Option<Ty> {
    Some(match (enc, size) {
        (gimli::DW_ATE_signed_char | gimli::DW_ATE_unsigned_char, 1) => Ty::Char,
        (gimli::DW_ATE_signed, 1..=4) | (gimli::DW_ATE_boolean, _) => Ty::Int,
        (gimli::DW_ATE_signed, 8) => Ty::Long,
        (gimli::DW_ATE_unsigned, 1..=4) => Ty::Uint,
        (gimli::DW_ATE_unsigned, 8) => Ty::Ulong,
        (gimli::DW_ATE_float, 4) => Ty::Float,
        (gimli::DW_ATE_float, 8) => Ty::Double,
        _ => return None, // long double, __int128, complex: not in one register
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_types_by_encoding_and_size() {
        assert_eq!(base_type(gimli::DW_ATE_signed, 4), Some(Ty::Int));
        assert_eq!(base_type(gimli::DW_ATE_signed, 8), Some(Ty::Long));
        assert_eq!(base_type(gimli::DW_ATE_unsigned, 8), Some(Ty::Ulong));
        assert_eq!(base_type(gimli::DW_ATE_signed_char, 1), Some(Ty::Char));
        assert_eq!(base_type(gimli::DW_ATE_float, 8), Some(Ty::Double));
        assert_eq!(base_type(gimli::DW_ATE_float, 16), None);
    }

    #[test]
    fn a_library_without_dwarf_has_no_prototypes() {
        let mut d = DwarfProtos::new();
        // libc as installed has no DWARF and, on the test machines, no debug package.
        let libc = Path::new("/lib/x86_64-linux-gnu/libc.so.6");
        if libc.exists() && debug_file(libc, &std::fs::read(libc).unwrap()).is_none() {
            assert_eq!(d.prototype(libc, "strlen"), None);
        }
        assert_eq!(d.prototype(Path::new("/nonexistent.so"), "f"), None);
    }
}
