//! Plugins that allocate in their callbacks while libc runs instrumented (`--all-maps`):
//! the callbacks run while the guest may be inside `malloc` or `free`, so they must not
//! touch libc's heap. The heapstress test plugin allocates and frees on every basic block
//! (vectors, strings, boxes of varying sizes, a hash map insert) and writes a line per new
//! block; the programs (python3, perl) build dictionaries and strings, mallocing all along.
//! Their output and status must be the native ones, and the plugin's file complete.
//!
//! Each program runs twice: with glibc told not to use AVX-512 (`GLIBC_TUNABLES`), and as
//! is. The second separates the heap from the engine's handling of AVX-512 state in glibc's
//! EVEX routines: it fails on a CPU with AVX-512 while the engine mishandles that state.

use qbdi_tests::cli::{artifacts, assert_same_env, python, scratch};

/// glibc without its AVX-512 routines.
const NO_AVX512: (&str, &str) = (
    "GLIBC_TUNABLES",
    "glibc.cpu.hwcaps=-AVX512F,-AVX512VL,-AVX512BW,-AVX512DQ",
);

const PYTHON: &str = "\
d = {}
for i in range(1500):
    d[str(i) * (i % 7 + 1)] = [i] * (i % 13)
s = sorted(d, key=len)
print(len(d), sum(len(k) for k in s), len(repr(d)))
";

const PERL: &str = r#"
my %h;
for my $i (1..5000) { $h{"k" . ($i * 7)} = ("x" x ($i % 100)) . $i }
my @k = sort keys %h;
my $s = join(",", @k);
print scalar(@k), " ", length($s), "\n";
"#;

/// Runs python3 and perl under `--all-maps` and heapstress with `env`, and checks them.
fn check_programs(tag: &str, env: &[(&str, &str)]) {
    assert!(
        artifacts().join("libqbdi_plugin_heapstress.so").is_file(),
        "the heapstress test plugin is missing: build the workspace first"
    );
    let dir = scratch(tag);
    let python = python();
    let programs: [(&str, &str, &str); 2] = [("python", &python, PYTHON), ("perl", "perl", PERL)];
    for (name, program, source) in programs {
        let out = dir.join(format!("{name}.txt"));
        let spec = format!("heapstress:out={}", out.display());
        let flag = if name == "perl" { "-e" } else { "-c" };
        let run = assert_same_env(
            &dir,
            env,
            &["--all-maps", "-p", &spec],
            program,
            &[flag, source],
            None,
        );
        assert!(!run.stdout.is_empty(), "{name} printed nothing");
        let text = std::fs::read_to_string(&out).unwrap_or_else(|e| panic!("{name}: {e}"));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines.first(),
            Some(&"heap host"),
            "{name}: the plugin does not allocate from the host's heap"
        );
        let blocks = lines.iter().filter(|l| l.starts_with("block 0x")).count();
        assert!(blocks > 1000, "{name}: {blocks} blocks");
        let entries: u64 = lines
            .last()
            .and_then(|l| l.strip_prefix("entries "))
            .unwrap_or_else(|| panic!("{name}: no fini line in {:?}", lines.last()))
            .parse()
            .unwrap();
        assert!(entries > blocks as u64, "{name}: {entries} block entries");
    }
}

#[test]
fn allocating_plugin_under_all_maps_without_avx512_routines() {
    check_programs("heap-noavx512", &[NO_AVX512]);
}

/// Fails on AVX-512 CPUs until the engine handles glibc's EVEX routines' state under
/// `--all-maps` (a bug of the engine, not of the heap: see the test above).
#[test]
fn allocating_plugin_under_all_maps() {
    check_programs("heap-default", &[]);
}
