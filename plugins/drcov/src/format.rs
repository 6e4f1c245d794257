//! The drcov file, version 2 (module table version 2, binary BB table).
//!
//! ```text
//! DRCOV VERSION: 2
//! DRCOV FLAVOR: drcov
//! Module Table: version 2, count 2
//! Columns: id, base, end, entry, checksum, timestamp, path
//!   0, 0x000055d0c0a00000, 0x000055d0c0a25000, 0x0000000000000000, 0x00000000, 0x00000000, /usr/bin/ls
//!   1, ...
//! BB Table: 1234 bbs
//! <1234 records of 8 bytes: u32 offset from the module base, u16 size, u16 module id (LE)>
//! ```

use qbdi_plugin_support::maps::{Module, find_module};

/// One entry of the BB table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct BbRecord {
    /// Offset of the block's start from its module's base.
    pub offset: u32,
    /// Size in bytes (clamped to `u16::MAX`).
    pub size: u16,
    /// Index of the module in the module table.
    pub module: u16,
}

/// Size of a BB table entry in the file.
pub const RECORD_SIZE: usize = 8;

/// The records of `blocks` (`[start, end)`), each against the module containing its start
/// (`modules` sorted by base); blocks outside every module, or too far from its base for
/// 32 bits, are dropped. Sorted by module, then offset.
pub fn records(modules: &[Module], blocks: &[(u64, u64)]) -> Vec<BbRecord> {
    let mut out: Vec<BbRecord> = blocks
        .iter()
        .filter_map(|&(start, end)| {
            let id = find_module(modules, start)?;
            Some(BbRecord {
                offset: u32::try_from(start - modules[id].base).ok()?,
                size: u16::try_from(end.saturating_sub(start)).unwrap_or(u16::MAX),
                module: u16::try_from(id).ok()?,
            })
        })
        .collect();
    out.sort_unstable_by_key(|r| (r.module, r.offset, r.size));
    out
}

/// The whole file: header, module table (every module, its index as id), BB table.
pub fn render(modules: &[Module], records: &[BbRecord]) -> Vec<u8> {
    let mut text = format!(
        "DRCOV VERSION: 2\nDRCOV FLAVOR: drcov\nModule Table: version 2, count {}\n\
         Columns: id, base, end, entry, checksum, timestamp, path\n",
        modules.len()
    );
    for (id, m) in modules.iter().enumerate() {
        text.push_str(&format!(
            "{id:3}, 0x{:016x}, 0x{:016x}, 0x{:016x}, 0x{:08x}, 0x{:08x}, {}\n",
            m.base, m.end, 0, 0, 0, m.path
        ));
    }
    text.push_str(&format!("BB Table: {} bbs\n", records.len()));
    let mut out = text.into_bytes();
    out.reserve(records.len() * RECORD_SIZE);
    for r in records {
        out.extend_from_slice(&r.offset.to_le_bytes());
        out.extend_from_slice(&r.size.to_le_bytes());
        out.extend_from_slice(&r.module.to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A drcov reader written from the format description (as Lighthouse reads it: header
    /// lines, `", "`-separated module lines, then the binary table).
    struct Parsed {
        version: u32,
        flavor: String,
        columns: Vec<String>,
        /// (id, base, end, path)
        modules: Vec<(u32, u64, u64, String)>,
        /// (offset, size, module id)
        bbs: Vec<(u32, u16, u16)>,
    }

    fn parse(data: &[u8]) -> Parsed {
        let mut pos = 0;
        let mut line = || {
            let len = data[pos..]
                .iter()
                .position(|&b| b == b'\n')
                .expect("a line");
            let l = std::str::from_utf8(&data[pos..pos + len])
                .unwrap()
                .to_owned();
            pos += len + 1;
            l
        };
        let version = line()
            .strip_prefix("DRCOV VERSION: ")
            .unwrap()
            .parse()
            .unwrap();
        let flavor = line().strip_prefix("DRCOV FLAVOR: ").unwrap().to_owned();
        let table = line();
        let (ver, count) = table
            .strip_prefix("Module Table: ")
            .unwrap()
            .split_once(", ")
            .unwrap();
        assert_eq!(ver, "version 2");
        let count: usize = count.strip_prefix("count ").unwrap().parse().unwrap();
        let columns = line()
            .strip_prefix("Columns: ")
            .unwrap()
            .split(", ")
            .map(str::to_owned)
            .collect::<Vec<_>>();
        let mut modules = Vec::new();
        for _ in 0..count {
            let l = line();
            let f: Vec<&str> = l.trim().split(", ").collect();
            assert_eq!(f.len(), columns.len(), "{l}");
            let hex = |s: &str| u64::from_str_radix(s.strip_prefix("0x").unwrap(), 16).unwrap();
            assert_eq!(hex(f[3]), 0, "entry");
            modules.push((f[0].parse().unwrap(), hex(f[1]), hex(f[2]), f[6].to_owned()));
        }
        let bbs_line = line();
        let n: usize = bbs_line
            .strip_prefix("BB Table: ")
            .unwrap()
            .strip_suffix(" bbs")
            .unwrap()
            .parse()
            .unwrap();
        let table = &data[pos..];
        assert_eq!(table.len(), n * 8, "the table is the rest of the file");
        let bbs = table
            .chunks_exact(8)
            .map(|c| {
                (
                    u32::from_le_bytes(c[0..4].try_into().unwrap()),
                    u16::from_le_bytes(c[4..6].try_into().unwrap()),
                    u16::from_le_bytes(c[6..8].try_into().unwrap()),
                )
            })
            .collect();
        Parsed {
            version,
            flavor,
            columns,
            modules,
            bbs,
        }
    }

    fn module(path: &str, base: u64, end: u64) -> Module {
        Module {
            path: path.into(),
            base,
            end,
        }
    }

    #[test]
    fn writes_what_a_drcov_reader_reads_back() {
        let modules = vec![
            module("/usr/bin/prog", 0x5555_5555_4000, 0x5555_5557_9000),
            module("/usr/lib/libc.so.6", 0x7fff_f7c0_0000, 0x7fff_f7e1_5000),
        ];
        let blocks = [
            (0x7fff_f7c2_8100, 0x7fff_f7c2_8123), // libc
            (0x5555_5555_5040, 0x5555_5555_5048), // prog
            (0x1000, 0x1010),                     // no module: dropped
            (0x5555_5555_4000, 0x5555_5555_4001), // prog, at its base
            (0x5555_5557_9000, 0x5555_5557_9010), // just past prog: dropped
        ];
        let recs = records(&modules, &blocks);
        let p = parse(&render(&modules, &recs));
        assert_eq!(p.version, 2);
        assert_eq!(p.flavor, "drcov");
        assert_eq!(
            p.columns,
            [
                "id",
                "base",
                "end",
                "entry",
                "checksum",
                "timestamp",
                "path"
            ]
        );
        assert_eq!(
            p.modules,
            [
                (
                    0,
                    0x5555_5555_4000,
                    0x5555_5557_9000,
                    "/usr/bin/prog".into()
                ),
                (
                    1,
                    0x7fff_f7c0_0000,
                    0x7fff_f7e1_5000,
                    "/usr/lib/libc.so.6".into()
                ),
            ]
        );
        assert_eq!(p.bbs, [(0, 1, 0), (0x1040, 8, 0), (0x28100, 0x23, 1)]);
    }

    #[test]
    fn module_lines_have_the_drcov_layout() {
        let modules = vec![module("/bin/true", 0x400000, 0x401000)];
        let text = render(&modules, &[]);
        let text = std::str::from_utf8(&text).unwrap();
        assert_eq!(
            text,
            "DRCOV VERSION: 2\n\
             DRCOV FLAVOR: drcov\n\
             Module Table: version 2, count 1\n\
             Columns: id, base, end, entry, checksum, timestamp, path\n  \
             0, 0x0000000000400000, 0x0000000000401000, 0x0000000000000000, 0x00000000, 0x00000000, /bin/true\n\
             BB Table: 0 bbs\n"
        );
    }

    #[test]
    fn clamps_huge_blocks_and_drops_far_offsets() {
        let modules = vec![module("/big", 0x1_0000_0000, 0x3_0000_0000)];
        let recs = records(
            &modules,
            &[
                (0x1_0000_0010, 0x1_0002_0000), // 128 KiB block: size clamped
                (0x2_0000_0010, 0x2_0000_0020), // offset beyond 4 GiB: dropped
            ],
        );
        assert_eq!(
            recs,
            [BbRecord {
                offset: 0x10,
                size: u16::MAX,
                module: 0
            }]
        );
    }
}
