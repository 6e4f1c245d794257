//! Which code the trace covers: the `module=` and `range=` options.

use qbdi_plugin_support::maps::{self, Mapping};
use qbdi_sdk::{PluginOptions, parse_address_range};

/// The `[start, end)` code ranges the options select, or `None` for every instrumented
/// instruction. `module=NAME` (basename or path, repeatable) selects the executable
/// mappings of that file, which must be mapped now; `range=0xA-0xB` (repeatable) adds a
/// range.
pub fn code_ranges(
    options: &PluginOptions,
    mappings: &[Mapping],
) -> Result<Option<Vec<(u64, u64)>>, String> {
    let mut ranges = Vec::new();
    let mut any = false;
    for name in options.get_all("module") {
        any = true;
        let found = maps::exec_ranges(mappings, name);
        if found.is_empty() {
            let loaded: Vec<&str> = mappings
                .iter()
                .filter(|m| m.exec && m.is_file())
                .map(|m| maps::basename(&m.path))
                .collect();
            return Err(format!(
                "module={name}: no executable mapping of that file (mapped: {})",
                loaded.join(", ")
            ));
        }
        ranges.extend(found);
    }
    for r in options.get_all("range") {
        any = true;
        ranges.push(parse_address_range(r).map_err(|e| format!("range={r}: {e}"))?);
    }
    Ok(any.then_some(ranges))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(pairs: &[(&str, &str)]) -> PluginOptions {
        PluginOptions::new(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        )
    }

    fn maps() -> Vec<Mapping> {
        maps::parse_maps(
            "400000-401000 r--p 00000000 08:01 1 /usr/bin/prog\n\
             401000-402000 r-xp 00001000 08:01 1 /usr/bin/prog\n\
             7f0000000000-7f0000100000 r-xp 00000000 08:01 2 /lib/libz.so.1\n\
             7f0000200000-7f0000300000 r-xp 00000000 00:00 0 \n",
        )
    }

    #[test]
    fn no_filter_option_means_everything() {
        assert_eq!(code_ranges(&opts(&[("regs", "")]), &maps()), Ok(None));
    }

    #[test]
    fn modules_and_ranges_add_up() {
        let got = code_ranges(
            &opts(&[
                ("module", "prog"),
                ("range", "0x10-0x20"),
                ("module", "/lib/libz.so.1"),
            ]),
            &maps(),
        );
        assert_eq!(
            got,
            Ok(Some(vec![
                (0x401000, 0x402000),
                (0x7f0000000000, 0x7f0000100000),
                (0x10, 0x20)
            ]))
        );
    }

    #[test]
    fn unknown_module_and_bad_range_are_errors() {
        let e = code_ranges(&opts(&[("module", "libfoo.so")]), &maps()).unwrap_err();
        assert!(
            e.contains("libfoo.so") && e.contains("prog, libz.so.1"),
            "{e}"
        );
        let e = code_ranges(&opts(&[("range", "0x20-0x10")]), &maps()).unwrap_err();
        assert!(e.starts_with("range=0x20-0x10"), "{e}");
    }
}
