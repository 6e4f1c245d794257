//! The little of ELF the host checks before handing a file to the loader: is it an x86-64
//! ELF file, of which type, with a program interpreter (dynamically linked)?

use std::io::Read;
use std::path::Path;

/// `e_type` of a shared object (and of a PIE executable).
pub const ET_DYN: u16 = 3;
const PT_INTERP: u32 = 3;

/// Why a file is not an x86-64 ELF file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotElf {
    /// No ELF magic (or shorter than a header).
    NotElf,
    /// ELF, but not 64-bit x86-64.
    OtherMachine,
}

/// What the header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ElfInfo {
    /// `e_type`.
    pub e_type: u16,
    /// Whether a `PT_INTERP` program header is among the first bytes read.
    pub has_interp: bool,
}

/// The first `limit` bytes of `path` (program headers sit right after the ELF header), in
/// one read for most files (an empty buffer would grow from 32 bytes, a dozen reads).
pub fn read_head(path: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(usize::try_from(limit).unwrap_or(64 << 10));
    std::fs::File::open(path)?
        .take(limit)
        .read_to_end(&mut head)?;
    Ok(head)
}

/// Parses the ELF header (and program headers, as far as `bytes` goes).
pub fn parse(bytes: &[u8]) -> Result<ElfInfo, NotElf> {
    if bytes.len() < 64 || !bytes.starts_with(b"\x7fELF") {
        return Err(NotElf::NotElf);
    }
    let u16_at = |at: usize| u16::from_le_bytes([bytes[at], bytes[at + 1]]);
    if bytes[4] != 2 || u16_at(18) != 62 {
        return Err(NotElf::OtherMachine);
    }
    let phoff = u64::from_le_bytes(bytes[32..40].try_into().expect("8 bytes")) as usize;
    let (phentsize, phnum) = (u16_at(54) as usize, u16_at(56) as usize);
    let has_interp = (0..phnum).any(|i| {
        let at = phoff.saturating_add(i * phentsize);
        bytes
            .get(at..at.saturating_add(4))
            .is_some_and(|t| u32::from_le_bytes(t.try_into().expect("4 bytes")) == PT_INTERP)
    });
    Ok(ElfInfo {
        e_type: u16_at(16),
        has_interp,
    })
}
