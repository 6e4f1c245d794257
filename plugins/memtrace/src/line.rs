//! The trace's lines, and which accesses a `range=` filter keeps.
//!
//! Text (`format=text`): `0x<instruction> R|W|RW 0x<address> size <bytes> value 0x<value>`;
//! when the value is not known (`rep` string instructions, accesses wider than 8 bytes) it
//! is `value ?`, and approximate accesses end with ` flags` and the flag names
//! (`unknown_size`, `minimum_size`, `unknown_value`).
//!
//! JSON lines (`format=jsonl`): the same record as one object (see the crate's doc for the
//! fields), `{"event":"access","tid":null,"inst":"0x401000","type":"R",
//! "address":"0x7ffd1000","size":8,"value":"0x2a","flags":[]}`.

use std::io::{self, Write};

use qbdi_plugin_support::json::{self, Object};
use qbdi_sdk::prelude::{MemoryAccess, MemoryAccessFlags, MemoryAccessType};

/// The names of the flags, in the order the line gives them.
const FLAG_NAMES: [(MemoryAccessFlags, &str); 3] = [
    (MemoryAccessFlags::UNKNOWN_SIZE, "unknown_size"),
    (MemoryAccessFlags::MINIMUM_SIZE, "minimum_size"),
    (MemoryAccessFlags::UNKNOWN_VALUE, "unknown_value"),
];

/// `R`, `W` or `RW`.
fn kind(a: &MemoryAccess) -> &'static str {
    match (
        a.access_type.contains(MemoryAccessType::READ),
        a.access_type.contains(MemoryAccessType::WRITE),
    ) {
        (true, true) => "RW",
        (false, true) => "W",
        _ => "R",
    }
}

/// The names of the flags of `a`, in order.
fn flag_names(a: &MemoryAccess) -> impl Iterator<Item = &'static str> + '_ {
    FLAG_NAMES
        .iter()
        .filter(|(flag, _)| a.flags.contains(*flag))
        .map(|&(_, name)| name)
}

/// Writes the line of one access.
pub fn write_access(w: &mut impl Write, a: &MemoryAccess) -> io::Result<()> {
    let kind = kind(a);
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
        let mut sep = b' ';
        for name in flag_names(a) {
            w.write_all(&[sep])?;
            w.write_all(name.as_bytes())?;
            sep = b',';
        }
    }
    w.write_all(b"\n")
}

/// Writes the JSON line of one access; `tid` is the thread of a line the text form marks
/// `[tid N] ` (`None`: the main thread).
pub fn write_access_json(w: &mut impl Write, a: &MemoryAccess, tid: Option<u32>) -> io::Result<()> {
    let mut o = Object::new(w)?;
    o.str("event", "access")?;
    match tid {
        Some(t) => o.int("tid", t)?,
        None => o.null("tid")?,
    };
    o.hex("inst", a.inst_address)?
        .str("type", kind(a))?
        .hex("address", a.access_address)?
        .int("size", a.size)?;
    if a.flags.contains(MemoryAccessFlags::UNKNOWN_VALUE) {
        o.null("value")?;
    } else {
        o.hex("value", a.value)?;
    }
    o.raw("flags", |w| {
        w.write_all(b"[")?;
        for (i, name) in flag_names(a).enumerate() {
            if i > 0 {
                w.write_all(b",")?;
            }
            json::write_str(w, name)?;
        }
        w.write_all(b"]")
    })?
    .end()?;
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

    fn json(a: &MemoryAccess, tid: Option<u32>) -> String {
        let mut out = Vec::new();
        write_access_json(&mut out, a, tid).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn json_lines() {
        let none = MemoryAccessFlags::empty();
        assert_eq!(
            json(&access(0x7ffd_1000, 8, MemoryAccessType::READ, none), None),
            r#"{"event":"access","tid":null,"inst":"0x401000","type":"R","address":"0x7ffd1000","size":8,"value":"0x2a","flags":[]}"#
                .to_owned()
                + "\n"
        );
        assert_eq!(
            json(
                &access(
                    0x10,
                    0,
                    MemoryAccessType::READ_WRITE,
                    MemoryAccessFlags::UNKNOWN_SIZE | MemoryAccessFlags::UNKNOWN_VALUE
                ),
                Some(42)
            ),
            r#"{"event":"access","tid":42,"inst":"0x401000","type":"RW","address":"0x10","size":0,"value":null,"flags":["unknown_size","unknown_value"]}"#
                .to_owned()
                + "\n"
        );
        let mut out = Vec::new();
        qbdi_plugin_support::json::write_stopped(&mut out, 1000).unwrap();
        assert_eq!(out, b"{\"event\":\"stopped\",\"max\":1000}\n");
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
