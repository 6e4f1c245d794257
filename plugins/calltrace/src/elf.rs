//! Just enough ELF (64-bit little-endian) to name lazily bound calls: the `.rela.plt`
//! relocations of a file, each with its GOT slot and its symbol's name, and the file's
//! lowest load address (to place the slots in memory).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// The PLT relocations of an ELF file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PltInfo {
    /// Page-aligned `p_vaddr` of the first `PT_LOAD` segment: the load bias of the file is
    /// its lowest mapping's address minus this.
    pub first_load: u64,
    /// Per `.rela.plt` entry, in order (the index a PLT stub pushes): the GOT slot's
    /// address in the file (`r_offset`) and the symbol's name (`""` for an IRELATIVE
    /// relocation).
    pub slots: Vec<(u64, String)>,
}

const SHT_RELA: u32 = 4;
const PT_LOAD: u32 = 1;

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

/// Little-endian reads from a byte slice, failing on short data.
fn u16_at(b: &[u8], off: usize) -> io::Result<u16> {
    b.get(off..off + 2)
        .map(|s| u16::from_le_bytes([s[0], s[1]]))
        .ok_or_else(|| invalid("truncated ELF structure"))
}

fn u32_at(b: &[u8], off: usize) -> io::Result<u32> {
    b.get(off..off + 4)
        .map(|s| u32::from_le_bytes(s.try_into().expect("4 bytes")))
        .ok_or_else(|| invalid("truncated ELF structure"))
}

fn u64_at(b: &[u8], off: usize) -> io::Result<u64> {
    b.get(off..off + 8)
        .map(|s| u64::from_le_bytes(s.try_into().expect("8 bytes")))
        .ok_or_else(|| invalid("truncated ELF structure"))
}

/// A section header's fields that matter here.
#[derive(Clone, Copy, Debug)]
struct Section {
    name: u32,
    kind: u32,
    offset: u64,
    size: u64,
    link: u32,
    entsize: u64,
}

/// Reads `len` bytes at `offset` (refusing absurd sizes: these are tables of a mapped file).
fn read(file: &File, offset: u64, len: u64) -> io::Result<Vec<u8>> {
    if len > 1 << 30 {
        return Err(invalid("ELF table too large"));
    }
    let mut buf = vec![0; len as usize];
    file.read_exact_at(&mut buf, offset)?;
    Ok(buf)
}

/// The PLT relocations of the ELF file at `path` (empty when it has no `.rela.plt`).
pub fn plt_info(path: &Path) -> io::Result<PltInfo> {
    let file = File::open(path)?;
    let header = read(&file, 0, 64)?;
    if header[..4] != *b"\x7fELF" || header[4] != 2 || header[5] != 1 {
        return Err(invalid("not a 64-bit little-endian ELF file"));
    }
    let phoff = u64_at(&header, 32)?;
    let shoff = u64_at(&header, 40)?;
    let phentsize = u64::from(u16_at(&header, 54)?);
    let phnum = u64::from(u16_at(&header, 56)?);
    let shentsize = u64::from(u16_at(&header, 58)?);
    let shnum = u64::from(u16_at(&header, 60)?);
    let shstrndx = u64::from(u16_at(&header, 62)?);

    let phdrs = read(&file, phoff, phentsize * phnum)?;
    let mut first_load = None;
    for i in 0..phnum as usize {
        let p = i * phentsize as usize;
        if u32_at(&phdrs, p)? == PT_LOAD {
            let vaddr = u64_at(&phdrs, p + 16)? & !0xfff;
            first_load = Some(first_load.map_or(vaddr, |v: u64| v.min(vaddr)));
        }
    }
    let first_load = first_load.ok_or_else(|| invalid("no PT_LOAD segment"))?;

    let shdrs = read(&file, shoff, shentsize * shnum)?;
    let sections = (0..shnum as usize)
        .map(|i| {
            let s = i * shentsize as usize;
            Ok(Section {
                name: u32_at(&shdrs, s)?,
                kind: u32_at(&shdrs, s + 4)?,
                offset: u64_at(&shdrs, s + 24)?,
                size: u64_at(&shdrs, s + 32)?,
                link: u32_at(&shdrs, s + 40)?,
                entsize: u64_at(&shdrs, s + 56)?,
            })
        })
        .collect::<io::Result<Vec<Section>>>()?;
    let section = |i: u64| {
        sections
            .get(i as usize)
            .copied()
            .ok_or_else(|| invalid("section index out of range"))
    };
    let names = section(shstrndx)?;
    let names = read(&file, names.offset, names.size)?;
    let name_of = |s: &Section| c_str(&names, s.name as usize);

    let Some(rela) = sections
        .iter()
        .find(|s| s.kind == SHT_RELA && name_of(s) == ".rela.plt")
    else {
        return Ok(PltInfo {
            first_load,
            slots: Vec::new(),
        });
    };
    let symtab = section(u64::from(rela.link))?;
    let strtab = section(u64::from(symtab.link))?;
    let relocs = read(&file, rela.offset, rela.size)?;
    let syms = read(&file, symtab.offset, symtab.size)?;
    let strs = read(&file, strtab.offset, strtab.size)?;
    let rel_size = if rela.entsize == 0 {
        24
    } else {
        rela.entsize as usize
    };
    let sym_size = if symtab.entsize == 0 {
        24
    } else {
        symtab.entsize as usize
    };
    let slots = relocs
        .chunks_exact(rel_size)
        .map(|r| {
            let offset = u64_at(r, 0)?;
            let sym = (u64_at(r, 8)? >> 32) as usize;
            let name = if sym == 0 {
                String::new()
            } else {
                let st_name = u32_at(&syms, sym * sym_size)? as usize;
                c_str(&strs, st_name).to_owned()
            };
            Ok((offset, name))
        })
        .collect::<io::Result<Vec<_>>>()?;
    Ok(PltInfo { first_load, slots })
}

/// The NUL-terminated string at `off` in `table` (`""` if out of range or not UTF-8).
fn c_str(table: &[u8], off: usize) -> &str {
    let Some(rest) = table.get(off..) else {
        return "";
    };
    let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    std::str::from_utf8(&rest[..end]).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF file: one PT_LOAD at 0x400000, sections null, .shstrtab, .dynsym,
    /// .dynstr, .rela.plt with three relocations (puts, IRELATIVE, malloc).
    fn tiny_elf() -> Vec<u8> {
        let shstrtab = b"\0.shstrtab\0.dynsym\0.dynstr\0.rela.plt\0".to_vec();
        let dynstr = b"\0puts\0malloc\0".to_vec();
        let mut dynsym = vec![0u8; 24 * 3];
        dynsym[24..28].copy_from_slice(&1u32.to_le_bytes()); // puts
        dynsym[48..52].copy_from_slice(&6u32.to_le_bytes()); // malloc
        let mut rela = Vec::new();
        for (offset, sym, kind) in [
            (0x404018u64, 1u64, 7u64),
            (0x404020, 0, 37),
            (0x404028, 2, 7),
        ] {
            rela.extend_from_slice(&offset.to_le_bytes());
            rela.extend_from_slice(&((sym << 32) | kind).to_le_bytes());
            rela.extend_from_slice(&0u64.to_le_bytes());
        }
        let mut f = vec![0u8; 64];
        let phoff = f.len() as u64;
        let mut ph = vec![0u8; 56];
        ph[0..4].copy_from_slice(&PT_LOAD.to_le_bytes());
        ph[16..24].copy_from_slice(&0x400040u64.to_le_bytes());
        f.extend_from_slice(&ph);
        let place = |data: &[u8], f: &mut Vec<u8>| {
            let off = f.len() as u64;
            f.extend_from_slice(data);
            off
        };
        let o_shstr = place(&shstrtab, &mut f);
        let o_sym = place(&dynsym, &mut f);
        let o_str = place(&dynstr, &mut f);
        let o_rela = place(&rela, &mut f);
        let shoff = f.len() as u64;
        let sh = |name: u32, kind: u32, off: u64, size: u64, link: u32, entsize: u64| {
            let mut s = vec![0u8; 64];
            s[0..4].copy_from_slice(&name.to_le_bytes());
            s[4..8].copy_from_slice(&kind.to_le_bytes());
            s[24..32].copy_from_slice(&off.to_le_bytes());
            s[32..40].copy_from_slice(&size.to_le_bytes());
            s[40..44].copy_from_slice(&link.to_le_bytes());
            s[56..64].copy_from_slice(&entsize.to_le_bytes());
            s
        };
        f.extend(sh(0, 0, 0, 0, 0, 0));
        f.extend(sh(1, 3, o_shstr, shstrtab.len() as u64, 0, 0));
        f.extend(sh(11, 11, o_sym, dynsym.len() as u64, 3, 24));
        f.extend(sh(19, 3, o_str, dynstr.len() as u64, 0, 0));
        f.extend(sh(27, SHT_RELA, o_rela, rela.len() as u64, 2, 24));
        f[..4].copy_from_slice(b"\x7fELF");
        f[4] = 2;
        f[5] = 1;
        f[32..40].copy_from_slice(&phoff.to_le_bytes());
        f[40..48].copy_from_slice(&shoff.to_le_bytes());
        f[54..56].copy_from_slice(&56u16.to_le_bytes());
        f[56..58].copy_from_slice(&1u16.to_le_bytes());
        f[58..60].copy_from_slice(&64u16.to_le_bytes());
        f[60..62].copy_from_slice(&5u16.to_le_bytes());
        f[62..64].copy_from_slice(&1u16.to_le_bytes());
        f
    }

    fn write_temp(name: &str, data: &[u8]) -> std::path::PathBuf {
        let p = std::env::temp_dir().join(format!("qbdi-calltrace-{name}-{}", std::process::id()));
        std::fs::write(&p, data).unwrap();
        p
    }

    #[test]
    fn reads_plt_relocations_and_their_names() {
        let p = write_temp("tiny", &tiny_elf());
        let info = plt_info(&p).unwrap();
        assert_eq!(info.first_load, 0x400000);
        assert_eq!(
            info.slots,
            [
                (0x404018, "puts".to_owned()),
                (0x404020, String::new()),
                (0x404028, "malloc".to_owned())
            ]
        );
    }

    #[test]
    fn refuses_what_is_not_elf64_and_truncated_files() {
        let p = write_temp("text", &[b'#'; 100]);
        assert!(plt_info(&p).is_err());
        let mut elf = tiny_elf();
        elf.truncate(200);
        let p = write_temp("short", &elf);
        assert!(plt_info(&p).is_err());
    }

    #[test]
    fn reads_this_test_binary() {
        let info = plt_info(Path::new("/proc/self/exe")).unwrap();
        assert!(info.slots.iter().all(|(off, _)| *off >= info.first_load));
    }
}
