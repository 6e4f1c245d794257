//! The trace's lines, and which accesses a `range=` filter keeps.
//!
//! `0x<instruction> R|W 0x<address> size <bytes> value 0x<value>`; when the value is not
//! known (`rep` string instructions, accesses wider than 8 bytes) it is `value ?`, and
//! approximate accesses end with ` flags` and the flag names (`unknown_size`,
//! `minimum_size`, `unknown_value`).

use std::io::{self, Write};

use qbdi_sdk::prelude::{MemoryAccess, MemoryAccessFlags, MemoryAccessType};

/// Writes the line of one access.
pub fn write_access(w: &mut impl Write, a: &MemoryAccess) -> io::Result<()> {
    let kind = match (
        a.access_type.contains(MemoryAccessType::READ),
        a.access_type.contains(MemoryAccessType::WRITE),
    ) {
        (true, true) => "RW",
        (false, true) => "W",
        _ => "R",
    };
    write!(
        w,
        "{:#x} {kind} {:#x} size {}",
        a.inst_address, a.access_address, a.size
    )?;
    if a.flags.contains(MemoryAccessFlags::UNKNOWN_VALUE) {
        w.write_all(b" value ?")?;
    } else {
        write!(w, " value {:#x}", a.value)?;
    }
    if !a.flags.is_empty() {
        w.write_all(b" flags")?;
        let names = [
            (MemoryAccessFlags::UNKNOWN_SIZE, "unknown_size"),
            (MemoryAccessFlags::MINIMUM_SIZE, "minimum_size"),
            (MemoryAccessFlags::UNKNOWN_VALUE, "unknown_value"),
        ];
        let mut sep = b' ';
        for (flag, name) in names {
            if a.flags.contains(flag) {
                w.write_all(&[sep])?;
                w.write_all(name.as_bytes())?;
                sep = b',';
            }
        }
    }
    w.write_all(b"\n")
}

/// Whether the bytes of `a` (one byte when its size is unknown) meet `[start, end)`.
pub fn overlaps(a: &MemoryAccess, (start, end): (u64, u64)) -> bool {
    let first = a.access_address;
    let last = first.saturating_add(u64::from(a.size.max(1)) - 1);
    first < end && last >= start
}

/// The index of the first of `ranges` that `a` meets. With one callback per range, the
/// callback of that range is the one that writes the access (an instruction touching two
/// ranges triggers both callbacks; each access is written once).
pub fn first_range(a: &MemoryAccess, ranges: &[(u64, u64)]) -> Option<usize> {
    ranges.iter().position(|&r| overlaps(a, r))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(
        addr: u64,
        size: u16,
        ty: MemoryAccessType,
        flags: MemoryAccessFlags,
    ) -> MemoryAccess {
        MemoryAccess {
            inst_address: 0x401000,
            access_address: addr,
            value: 0x2a,
            size,
            access_type: ty,
            flags,
        }
    }

    fn text(a: &MemoryAccess) -> String {
        let mut out = Vec::new();
        write_access(&mut out, a).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn lines() {
        let none = MemoryAccessFlags::empty();
        assert_eq!(
            text(&access(0x7ffd_1000, 8, MemoryAccessType::READ, none)),
            "0x401000 R 0x7ffd1000 size 8 value 0x2a\n"
        );
        assert_eq!(
            text(&access(0x10, 4, MemoryAccessType::WRITE, none)),
            "0x401000 W 0x10 size 4 value 0x2a\n"
        );
        assert_eq!(
            text(&access(
                0x10,
                0,
                MemoryAccessType::WRITE,
                MemoryAccessFlags::UNKNOWN_SIZE | MemoryAccessFlags::UNKNOWN_VALUE
            )),
            "0x401000 W 0x10 size 0 value ? flags unknown_size,unknown_value\n"
        );
        assert_eq!(
            text(&access(
                0x10,
                512,
                MemoryAccessType::READ,
                MemoryAccessFlags::MINIMUM_SIZE
            )),
            "0x401000 R 0x10 size 512 value 0x2a flags minimum_size\n"
        );
    }

    #[test]
    fn overlap_counts_every_byte_of_the_access() {
        let a = |addr, size| {
            access(
                addr,
                size,
                MemoryAccessType::READ,
                MemoryAccessFlags::empty(),
            )
        };
        let r = (0x1000, 0x2000);
        assert!(overlaps(&a(0x1000, 1), r));
        assert!(overlaps(&a(0xffc, 8), r), "starts below, ends inside");
        assert!(!overlaps(&a(0xff8, 8), r), "ends just below");
        assert!(overlaps(&a(0x1fff, 8), r));
        assert!(!overlaps(&a(0x2000, 8), r), "starts at the end");
        assert!(overlaps(&a(0x1800, 0), r), "unknown size: its first byte");
        assert!(!overlaps(&a(u64::MAX, 8), r), "no wrap-around");
    }

    #[test]
    fn first_range_picks_one_writer() {
        let a = access(
            0x1ffc,
            8,
            MemoryAccessType::READ,
            MemoryAccessFlags::empty(),
        );
        assert_eq!(
            first_range(&a, &[(0x5000, 0x6000), (0x2000, 0x3000), (0x1000, 0x2000)]),
            Some(1)
        );
        assert_eq!(first_range(&a, &[(0x5000, 0x6000)]), None);
    }
}
