//! Real programs under whole-process instrumentation: each program of [`cases`] runs
//! natively, under `qbdi run --all-maps`, and under `qbdi run --all-maps -p drcov -p
//! calltrace -p memtrace`, and must give the same stdout, exit status (or signal) and,
//! where the program's own is deterministic, stderr; under each of three glibc settings
//! of the string routines ([`Setting`]):
//!
//! - the default;
//! - the other AVX-512 preference: glibc picks `memcpy`, `memmove`, `memset` among
//!   `*_avx2`/`*_avx`, `*_evex` (EVEX encodings on ymm16-31) and `*_avx512` (zmm); by
//!   default Intel gets the evex ones (glibc sets `Prefer_No_AVX512` there) and AMD the
//!   avx512 ones. `GLIBC_TUNABLES=glibc.cpu.hwcaps=-Prefer_No_AVX512` on Intel and
//!   `glibc.cpu.hwcaps=Prefer_No_AVX512` elsewhere flip that (the vendor from CPUID), so
//!   both variants run whatever the CPU;
//! - AVX-512 off: `glibc.cpu.hwcaps=-AVX512F,-AVX512VL,-AVX512BW,-AVX512DQ` (the avx2
//!   variants everywhere: `strlen`, `strchr`, `memcmp` too, which are evex in both others).
//!
//! What was verified (glibc 2.36 of Debian 12 on an AMD EPYC with AVX-512, libc6-dbg
//! installed): the functions that `dlsym` (which runs the IFUNC resolvers, as the loader
//! does for every program's relocations) returns for each setting, named by gdb:
//!
//! | setting | memmove, memcpy | memset | strlen, strchr | memcmp |
//! | --- | --- | --- | --- | --- |
//! | default | `__memmove_avx512_unaligned_erms` | `__memset_avx512_unaligned_erms` | `__str*_evex` | `__memcmp_evex_movbe` |
//! | `Prefer_No_AVX512` | `__memmove_evex_unaligned_erms` | `__memset_evex_unaligned_erms` | `__str*_evex` | `__memcmp_evex_movbe` |
//! | AVX-512 off | `__memmove_avx_unaligned_erms` | `__memset_avx2_unaligned_erms` | `__str*_avx2` | `__memcmp_avx2_movbe` |
//!
//! and the same under `qbdi run --all-maps` (with AVX-512 off, the setting that runs
//! there today). [`glibc_tunables_select_the_string_variants`] checks the selection on
//! any machine without debug symbols: it decodes the first instructions of the resolved
//! `memmove`, `memset` and `strlen` and classifies them by the registers they use.
//!
//! Every case prints one line per setting and plugin set; a failure names the program,
//! setting and plugins and shows the first differing lines of both outputs. Cases run two
//! at a time (the machine has two cores). `QBDI_ALL_MAPS_CASES=lua,perl` runs only the
//! cases whose name contains one of the words, `QBDI_ALL_MAPS_SETTINGS=off` only the
//! settings so named (`default`, `other`, `off`). The whole file takes 12-20 s on two
//! cores in the dev profile (144 runs under qbdi, 72 native).
//!
//! Notes on the programs: `grep -P` compiles its pattern with PCRE2's JIT (checked with
//! gdb: `pcre2_jit_compile_8` returns 0); the JIT's code is mapped after the run starts,
//! so it is outside the ranges and runs natively. `sort --parallel=2` on 140k lines
//! starts a thread (`clone3` from libc, which `--all-maps` instruments). `gunzip` is a
//! shell script, so the case runs `gzip -d`.
//!
//! What these runs found, all fixed since: the AVX-512 state the engine lost on AMD (its
//! XSAVE layout), plugins allocating with glibc's malloc in callbacks while the guest was
//! inside malloc (now a private heap), a thread made from instrumented libc running on in
//! the cache with the parent's context (now native from its first instruction), and the
//! translator asking iced to encode an out-of-reach RIP-relative operand while the guest
//! was inside malloc (iced formats its error on the heap: `lua5.4 -v` aborted).

use std::path::Path;
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use iced_x86::{Decoder, DecoderOptions, EncodingKind, Instruction, OpKind};
use qbdi_tests::cli::{self, corpus, listing_dir, python, qbdi, scratch};
use qbdi_tests::glibc::{self, has_avx512};

/// How long one run may take before it is killed and reported as hung.
const TIMEOUT: Duration = Duration::from_secs(30);

/// memtrace records this many accesses, then removes its callback.
const MEMTRACE_MAX: u64 = 20_000;

/// A glibc setting of the string routines (see the module's documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Setting {
    Default,
    OtherAvx512,
    Avx512Off,
}

impl Setting {
    const ALL: [Setting; 3] = [Setting::Default, Setting::OtherAvx512, Setting::Avx512Off];

    fn name(self) -> &'static str {
        match self {
            Setting::Default => "default",
            Setting::OtherAvx512 => "other",
            Setting::Avx512Off => "off",
        }
    }

    /// The value of `GLIBC_TUNABLES` (`None`: unset).
    fn tunables(self) -> Option<&'static str> {
        match self {
            Setting::Default => None,
            Setting::OtherAvx512 => Some(glibc::other_avx512_preference()),
            Setting::Avx512Off => Some(glibc::AVX512_OFF),
        }
    }
}

/// The plugins of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Plugins {
    None,
    /// drcov, calltrace and memtrace (`max=MEMTRACE_MAX`), outputs in the scratch directory.
    Three,
}

impl Plugins {
    fn name(self) -> &'static str {
        match self {
            Plugins::None => "no plugin",
            Plugins::Three => "drcov+calltrace+memtrace",
        }
    }
}

/// One program run: the command, its input, and whether its stderr is compared.
struct Case {
    name: &'static str,
    program: String,
    args: Vec<String>,
    stdin: Option<Vec<u8>>,
    /// The program's stderr is the same every run (compared too).
    same_stderr: bool,
}

fn case(name: &'static str, program: &str, args: &[&str]) -> Case {
    Case {
        name,
        program: program.to_owned(),
        args: args.iter().map(|&a| a.to_owned()).collect(),
        stdin: None,
        same_stderr: true,
    }
}

impl Case {
    fn input(mut self, data: impl Into<Vec<u8>>) -> Case {
        self.stdin = Some(data.into());
        self
    }
}

const PYTHON: &str = r#"
import json, re, decimal
decimal.getcontext().prec = 40
d = {"k%d" % i: [i, i * i, str(decimal.Decimal(i) / 7)] for i in range(300)}
s = json.dumps(d, sort_keys=True, indent=1)
back = json.loads(s)
print(len(s), back["k17"], re.findall(r'"k1\d"', s)[:4])
print(decimal.Decimal(2).sqrt(), sum(decimal.Decimal(1) / i for i in range(1, 50)))
print(re.sub(r"(\d+)\.(\d{3})\d*", r"\2.\1", "3.14159 2.71828 1.41421"))
try:
    json.loads("{bad")
except ValueError as e:
    print("error:", type(e).__name__)
"#;

const PERL: &str = r#"
for my $i (1..3) { eval { die "oops $i\n" }; print "caught: $@" }
my $r = eval { my @a = (1) x 10; die { code => 7 } if @a; 1 };
print "hash: $@->{code}\n" unless $r;
my @s = sort { $a <=> $b } map { ($_ * 7919) % 1000 } 1..200;
printf "%d %d %s\n", $s[0], $s[-1], join(",", @s[0..4]);
my %h; $h{substr($_, 0, 1)}++ for map { sprintf "%x", $_ * 31 } 1..500;
print join(" ", map { "$_=$h{$_}" } sort keys %h), "\n";
exit 3;
"#;

const LUA: &str = r#"
for i = 1, 3 do
  local ok, e = pcall(error, "oops " .. i)
  print(ok, e)
end
local ok, e = pcall(function() local t = nil; return t.x end)
print(ok, (e:gsub("^.-:%d+: ", "")))
print(select(2, pcall(error, { code = 7 })).code)
local t = {}
for i = 1, 2000 do t[i] = (i * 7919) % 1000 end
table.sort(t)
print(t[1], t[#t], string.format("%.10f", math.sqrt(2)), ("x"):rep(5))
local co = coroutine.wrap(function(a) local b = coroutine.yield(a + 1); error("in co " .. b) end)
print(co(1), pcall(co, 5))
"#;

const SQL: &str = "create table t (id integer primary key, name text, v real);\n\
    with recursive n(i) as (select 1 union all select i + 1 from n where i < 500)\n\
    insert into t (name, v) select printf('name%03d', i), i * 1.5 from n;\n\
    create index t_v on t (v);\n\
    select count(*), sum(v), min(name), max(name) from t;\n\
    select name, v from t where v between 100 and 110 order by v desc;\n\
    select substr(name, 5, 1) as d, count(*) from t group by d order by d;\n";

const AWK: &str = r#"{ s += $3; c[substr($1, 1, 1)]++; if (length($0) > m) m = length($0) }
END { printf "%d %d %.6f\n", NR, m, s / NR; n = asorti(c, k); for (i = 1; i <= n; i++) print k[i], c[k[i]];
      print toupper(sprintf("%x", 48879)), sqrt(2), 2 ^ 40 }"#;

const BASH: &str = r#"trap 'echo bye' EXIT
trap 'echo usr1' USR1
f() { local x=$(( $1 * 2 )); echo "f $x"; }
for i in 1 2 3; do f $i; done
kill -USR1 $$
a=(zeta alpha mid); IFS=$'\n' sorted=($(printf '%s\n' "${a[@]}" | sort)); echo "${sorted[*]}"
s="hello world"; echo "${s^^} ${#s} ${s/world/there}"
exit 4
"#;

/// The table of programs, their arguments and inputs (files under `dir`).
fn cases(dir: &Path) -> Vec<Case> {
    let d = |p: &str| dir.join(p).display().to_string();
    let listing = listing_dir(dir).display().to_string();
    // Small inputs: the whole file runs 6 x 24 programs under the Vm.
    let data = corpus()[..256 << 10].to_vec();
    std::fs::write(dir.join("data.bin"), &data).unwrap();
    let mut lines = String::new();
    let mut x: u32 = 12345;
    for i in 0..20000 {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
        lines.push_str(&format!("{x:08x} line {i}\n"));
    }
    std::fs::write(dir.join("lines.txt"), &lines).unwrap();
    let short: String = lines.lines().take(3000).map(|l| format!("{l}\n")).collect();
    // GNU sort sorts with threads from 128 Ki lines on (SUBTHREAD_LINES_HEURISTIC).
    let long: String = (0..140_000u32)
        .map(|i| format!("{:08x} {i}\n", i.wrapping_mul(2_654_435_761)))
        .collect();
    std::fs::write(dir.join("long.txt"), long).unwrap();
    std::fs::write(dir.join("short.txt"), &short).unwrap();
    std::fs::write(dir.join("script.py"), PYTHON).unwrap();
    std::fs::write(dir.join("trap.sh"), BASH).unwrap();
    let compressed = |program: &str| {
        let out = run_with_timeout(
            Command::new(program).args(["-c"]).current_dir(dir),
            Some(&data),
        );
        assert_eq!(out.code, Some(0), "{program} -c natively");
        out.stdout
    };
    let gz = compressed("gzip");
    let bz = compressed("bzip2");
    let xz = compressed("xz");
    let python = python();
    vec![
        case("ls -la", "ls", &["-la", &listing]),
        case("seq (long double)", "seq", &["0.1", "0.37", "20.5"]),
        case("gzip -9", "gzip", &["-9", "-c"]).input(data.clone()),
        // (gunzip is a shell script running `gzip -d`.)
        case("gzip -d", "gzip", &["-d", "-c"]).input(gz),
        case("bzip2", "bzip2", &["-c"]).input(data.clone()),
        case("bunzip2", "bzip2", &["-d", "-c"]).input(bz),
        case("xz", "xz", &["-c"]).input(data.clone()),
        case("unxz", "xz", &["-d", "-c"]).input(xz),
        case("sort", "sort", &[&d("lines.txt")]),
        case("sort -rn -k3", "sort", &["-r", "-n", "-k", "3"]).input(short.clone()),
        case(
            "sort (2 threads)",
            "sort",
            &["--parallel=2", &d("long.txt")],
        ),
        case("sha256sum", "sha256sum", &[&d("data.bin"), &d("lines.txt")]),
        case(
            "grep -E",
            "grep",
            &["-E", "-c", "line (12|34)[0-9]*7$", &d("lines.txt")],
        ),
        case(
            "grep -P (JIT)",
            "grep",
            &["-P", r"^[0-9a-f]{3}(?=\d)\w+ line \d*7$", &d("short.txt")],
        ),
        case(
            "sed -E",
            "sed",
            &[
                "-E",
                r"s/^([0-9a-f]{4})([0-9a-f]{4}) line ([0-9]+)$/\3:\2-\1/;/^1/d",
                &d("short.txt"),
            ],
        ),
        case("gawk", "gawk", &[AWK, &d("short.txt")]),
        case("python3", &python, &[&d("script.py")]),
        case("perl die in eval", "perl", &["-e", PERL]),
        case("lua5.4 pcall", "lua5.4", &["-e", LUA]),
        case("sqlite3", "sqlite3", &[":memory:"]).input(SQL),
        case(
            "openssl dgst",
            "openssl",
            &["dgst", "-sha256", &d("data.bin")],
        ),
        case("bc -l", "bc", &["-l"]).input("scale=50; 4*a(1)\ne(1)\nsqrt(2)\n"),
        case("c++ exceptions", env!("QBDI_TEST_CXX_EXCEPTIONS"), &[]),
        case("bash trap", "bash", &[&d("trap.sh")]),
    ]
}

/// What a run did.
struct Outcome {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    code: Option<i32>,
    signal: Option<i32>,
    hung: bool,
    seconds: f64,
}

impl Outcome {
    fn status(&self) -> String {
        match (self.hung, self.code, self.signal) {
            (true, ..) => format!("hung (killed after {}s)", TIMEOUT.as_secs()),
            (_, Some(c), _) => format!("exit {c}"),
            (_, _, Some(s)) => format!("signal {s}"),
            _ => "?".into(),
        }
    }
}

/// Runs `cmd` with `stdin`, killing it after [`TIMEOUT`].
fn run_with_timeout(cmd: &mut Command, stdin: Option<&[u8]>) -> Outcome {
    let r = cli::run_with_timeout(cmd, stdin, TIMEOUT);
    Outcome {
        stdout: r.stdout,
        stderr: r.stderr,
        code: r.code,
        signal: r.signal,
        hung: r.hung,
        seconds: r.seconds,
    }
}

/// Runs `case` natively (`qbdi_args` `None`) or under `qbdi run <qbdi_args>`.
fn run_case(dir: &Path, case: &Case, setting: Setting, qbdi_args: Option<&[String]>) -> Outcome {
    let mut cmd = match qbdi_args {
        None => Command::new(&case.program),
        Some(args) => {
            let mut c = Command::new(qbdi());
            c.arg("run").args(args).arg("--").arg(&case.program);
            c
        }
    };
    cmd.args(&case.args).current_dir(dir);
    match setting.tunables() {
        Some(t) => cmd.env("GLIBC_TUNABLES", t),
        None => cmd.env_remove("GLIBC_TUNABLES"),
    };
    run_with_timeout(&mut cmd, case.stdin.as_deref())
}

/// The first lines where `a` and `b` differ, both sides, for a failure message.
fn first_difference(a: &[u8], b: &[u8]) -> String {
    let binary = |v: &[u8]| v.contains(&0) || std::str::from_utf8(v).is_err();
    if binary(a) || binary(b) {
        let at = a
            .iter()
            .zip(b)
            .position(|(x, y)| x != y)
            .unwrap_or(a.len().min(b.len()));
        let hex = |v: &[u8]| {
            v.iter()
                .skip(at)
                .take(16)
                .map(|x| format!("{x:02x}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        return format!(
            "  binary output: native {} bytes, qbdi {} bytes, first difference at byte {at}\n  \
             native: {}\n  qbdi:   {}",
            a.len(),
            b.len(),
            hex(a),
            hex(b)
        );
    }
    let a = String::from_utf8_lossy(a);
    let b = String::from_utf8_lossy(b);
    let (la, lb): (Vec<&str>, Vec<&str>) = (a.lines().collect(), b.lines().collect());
    let at = la
        .iter()
        .zip(&lb)
        .position(|(x, y)| x != y)
        .unwrap_or(la.len().min(lb.len()));
    let show = |lines: &[&str]| {
        let part: Vec<String> = lines
            .iter()
            .skip(at)
            .take(4)
            .map(|l| format!("    | {}", l.chars().take(160).collect::<String>()))
            .collect();
        if part.is_empty() {
            "    (nothing more)".to_owned()
        } else {
            part.join("\n")
        }
    };
    format!(
        "  first difference at line {} (native {} lines, qbdi {} lines)\n  native:\n{}\n  qbdi:\n{}",
        at + 1,
        la.len(),
        lb.len(),
        show(&la),
        show(&lb)
    )
}

/// Compares a run under qbdi with the native one: `None` when they agree.
fn compare(case: &Case, native: &Outcome, q: &Outcome) -> Option<String> {
    let mut why = Vec::new();
    if (native.code, native.signal) != (q.code, q.signal) || q.hung {
        why.push(format!(
            "  status: native {}, qbdi {}",
            native.status(),
            q.status()
        ));
    }
    if native.stdout != q.stdout {
        why.push(format!(
            "  stdout differs\n{}",
            first_difference(&native.stdout, &q.stdout)
        ));
    }
    // Shown whenever something differs, to say why; a failure by itself where the
    // program's own stderr is deterministic.
    if (case.same_stderr || !why.is_empty()) && native.stderr != q.stderr {
        why.push(format!(
            "  stderr differs\n{}",
            first_difference(&native.stderr, &q.stderr)
        ));
    }
    (!why.is_empty()).then(|| why.join("\n"))
}

/// One line of the result table.
struct Row {
    case: &'static str,
    setting: Setting,
    plugins: Plugins,
    failure: Option<String>,
    seconds: f64,
}

/// Runs every setting and plugin set of one case.
fn run_all(dir: &Path, case: &Case, settings: &[Setting], index: usize) -> Vec<Row> {
    let mut rows = Vec::new();
    for &setting in settings {
        let native = run_case(dir, case, setting, None);
        assert!(
            !native.hung && native.signal.is_none(),
            "{} runs natively under {}: {}",
            case.name,
            setting.name(),
            native.status()
        );
        for plugins in [Plugins::None, Plugins::Three] {
            let mut args = vec!["--all-maps".to_owned()];
            let prefix = dir.join(format!("out-{index}-{}", setting.name()));
            if plugins == Plugins::Three {
                let p = prefix.display();
                args.extend([
                    "-p".into(),
                    format!("drcov:out={p}.drcov"),
                    "-p".into(),
                    format!("calltrace:out={p}.calls"),
                    "-p".into(),
                    format!("memtrace:out={p}.mem,max={MEMTRACE_MAX}"),
                ]);
            }
            let q = run_case(dir, case, setting, Some(&args));
            let mut failure = compare(case, &native, &q);
            if plugins == Plugins::Three && failure.is_none() {
                let cov = std::fs::read(format!("{}.drcov", prefix.display())).unwrap_or_default();
                if !cov.starts_with(b"DRCOV VERSION: 2") {
                    failure = Some("  drcov wrote no coverage file".into());
                } else if drcov_blocks_in(&cov, "/libc.so.6") == 0 {
                    // Coverage, not only output: libc must have run under the Vm.
                    failure = Some("  drcov lists no block of libc: it ran natively".into());
                }
            }
            for ext in ["drcov", "calls", "mem"] {
                let _ = std::fs::remove_file(format!("{}.{ext}", prefix.display()));
            }
            rows.push(Row {
                case: case.name,
                setting,
                plugins,
                failure,
                seconds: q.seconds,
            });
        }
    }
    rows
}

/// How many blocks of the drcov file `cov` (format 2: text module table, `BB Table: N bbs`,
/// then 8-byte records `offset: u32, size: u16, module: u16`) lie in the module whose path
/// ends with `suffix`.
fn drcov_blocks_in(cov: &[u8], suffix: &str) -> usize {
    let Some(table) = cov.windows(10).position(|w| w == b"BB Table: ") else {
        return 0;
    };
    let text = String::from_utf8_lossy(&cov[..table]);
    let ids: Vec<u16> = text
        .lines()
        .filter(|l| l.trim_end().ends_with(suffix))
        .filter_map(|l| l.split(',').next()?.trim().parse().ok())
        .collect();
    let Some(records) = cov[table..].iter().position(|&b| b == b'\n') else {
        return 0;
    };
    cov[table + records + 1..]
        .chunks_exact(8)
        .filter(|r| ids.contains(&u16::from_le_bytes([r[6], r[7]])))
        .count()
}

/// The words of a filter variable (`None`: no filter).
fn filter(var: &str) -> Option<Vec<String>> {
    let v = std::env::var(var).ok()?;
    Some(v.split(',').map(|w| w.trim().to_owned()).collect())
}

#[test]
fn real_programs_under_all_maps() {
    let dir = scratch("all-maps");
    let mut settings: Vec<Setting> = if has_avx512() {
        Setting::ALL.to_vec()
    } else {
        eprintln!("no AVX-512: glibc has one set of string routines, only the default runs");
        vec![Setting::Default]
    };
    if let Some(words) = filter("QBDI_ALL_MAPS_SETTINGS") {
        settings.retain(|s| words.iter().any(|w| w == s.name()));
    }
    let mut cases = cases(&dir);
    if let Some(words) = filter("QBDI_ALL_MAPS_CASES") {
        cases.retain(|c| words.iter().any(|w| c.name.contains(w.as_str())));
    }
    // Two workers (the machine's two cores); each takes the next case.
    let next = Mutex::new(0usize);
    let rows = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                loop {
                    let i = {
                        let mut n = next.lock().unwrap();
                        *n += 1;
                        *n - 1
                    };
                    let Some(case) = cases.get(i) else { break };
                    let r = run_all(&dir, case, &settings, i);
                    for row in &r {
                        eprintln!(
                            "{:<20} {:<8} {:<26} {:>6.2}s {}",
                            row.case,
                            row.setting.name(),
                            row.plugins.name(),
                            row.seconds,
                            if row.failure.is_some() { "FAIL" } else { "ok" }
                        );
                    }
                    rows.lock().unwrap().extend(r);
                }
            });
        }
    });
    let rows = rows.into_inner().unwrap();
    let failures: Vec<String> = rows
        .iter()
        .filter_map(|r| {
            r.failure.as_ref().map(|f| {
                format!(
                    "{} under --all-maps, {}, {}:\n{f}",
                    r.case,
                    r.setting.name(),
                    r.plugins.name()
                )
            })
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} runs differ from native:\n\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n\n")
    );
}

/// The inline table's lookups without BMI2 (`QBDI_NO_BMI2`: the `bswap` hash, which CPUs
/// without `rorx` run): interpreters and sqlite3, whose indirect branches go through the
/// table millions of times, give native's output, and libc ran under the Vm (drcov).
#[test]
fn real_programs_without_bmi2_hash() {
    let dir = scratch("all-maps-no-bmi2");
    let cases: Vec<Case> = cases(&dir)
        .into_iter()
        .filter(|c| matches!(c.name, "python3" | "perl die in eval" | "sqlite3" | "sort"))
        .collect();
    assert_eq!(cases.len(), 4, "the cases this test picks exist");
    let mut failures = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let native = run_case(&dir, case, Setting::Default, None);
        let cov = dir.join(format!("no-bmi2-{i}.drcov"));
        let mut cmd = Command::new(qbdi());
        cmd.args(["run", "--all-maps", "-p"])
            .arg(format!("drcov:out={}", cov.display()))
            .arg("--")
            .arg(&case.program)
            .args(&case.args)
            .current_dir(&dir)
            .env("QBDI_NO_BMI2", "1")
            .env_remove("GLIBC_TUNABLES");
        let q = run_with_timeout(&mut cmd, case.stdin.as_deref());
        let covered = std::fs::read(&cov).unwrap_or_default();
        let _ = std::fs::remove_file(&cov);
        if let Some(f) = compare(case, &native, &q) {
            failures.push(format!(
                "{} under --all-maps, QBDI_NO_BMI2=1:\n{f}",
                case.name
            ));
        } else if drcov_blocks_in(&covered, "/libc.so.6") == 0 {
            // Coverage, not only output: libc ran under the Vm.
            failures.push(format!(
                "{} under --all-maps, QBDI_NO_BMI2=1: drcov lists no block of libc",
                case.name
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// The variant of a string routine, from the registers its first instructions use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Variant {
    Sse2,
    Avx2,
    Evex,
    Avx512,
}

fn classify(code: &[u8], address: u64) -> Variant {
    let mut decoder = Decoder::with_ip(64, code, address, DecoderOptions::NONE);
    let mut variant = Variant::Sse2;
    let mut inst = Instruction::default();
    for _ in 0..48 {
        if !decoder.can_decode() {
            break;
        }
        decoder.decode_out(&mut inst);
        if inst.is_invalid() {
            break;
        }
        for i in 0..inst.op_count() {
            if inst.op_kind(i) != OpKind::Register {
                continue;
            }
            let r = inst.op_register(i);
            let v = if r.is_zmm() {
                Variant::Avx512
            } else if r.is_ymm() && (inst.encoding() == EncodingKind::EVEX || r.number() >= 16) {
                Variant::Evex
            } else if r.is_ymm() {
                Variant::Avx2
            } else {
                continue;
            };
            variant = variant.max(v);
        }
    }
    variant
}

/// The variants of memmove, memset and strlen that `dlsym` (the IFUNC resolvers) gives
/// python3 under `setting`.
fn variants(dir: &Path, setting: Setting) -> [Variant; 3] {
    let probe = "import ctypes\n\
                 c = ctypes.CDLL(None)\n\
                 for f in ('memmove', 'memset', 'strlen'):\n\
                 \x20   a = ctypes.cast(getattr(c, f), ctypes.c_void_p).value\n\
                 \x20   print(a, ctypes.string_at(a, 256).hex())\n";
    let mut c = case("probe", &python(), &["-c", probe]);
    c.same_stderr = false;
    let out = run_case(dir, &c, setting, None);
    assert_eq!(
        out.code,
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let v: Vec<Variant> = text
        .lines()
        .map(|l| {
            let (addr, hex) = l.split_once(' ').expect("address and bytes");
            let bytes: Vec<u8> = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                .collect();
            classify(&bytes, addr.parse().unwrap())
        })
        .collect();
    v.try_into().expect("three functions")
}

#[test]
fn glibc_tunables_select_the_string_variants() {
    let dir = scratch("all-maps-variants");
    let [memmove, memset, strlen] = variants(&dir, Setting::Default);
    if !std::arch::is_x86_feature_detected!("avx512f") {
        assert!(memmove < Variant::Evex && strlen < Variant::Evex);
        return;
    }
    if !has_avx512() {
        // AVX512F without VL/BW (Xeon Phi): glibc's choice is neither of the two below.
        return;
    }
    // Default and the other preference: avx512 and evex, in some order.
    let [other_memmove, other_memset, other_strlen] = variants(&dir, Setting::OtherAvx512);
    let mut pair = [memmove, other_memmove];
    pair.sort();
    assert_eq!(pair, [Variant::Evex, Variant::Avx512], "memmove");
    assert_eq!(memset, memmove, "memset follows memmove's choice");
    assert_eq!(other_memset, other_memmove);
    assert_eq!((strlen, other_strlen), (Variant::Evex, Variant::Evex));
    // Off: nothing uses an EVEX encoding.
    let off = variants(&dir, Setting::Avx512Off);
    assert!(off.iter().all(|&v| v < Variant::Evex), "{off:?}");
}

#[test]
fn all_maps_leaves_the_plugins_out() {
    // The program calls into an attached plugin's code (tracer's descriptor function);
    // tracer traces its own module: left out of the ranges, that code runs natively and
    // the trace is empty. AVX-512 off: the string routines qbdi runs correctly on every
    // CPU today.
    let dir = scratch("all-maps-own");
    let plugin = qbdi_tests::cli::artifacts().join("libqbdi_plugin_tracer.so");
    let trace = dir.join("trace.txt");
    let mut c = case(
        "calls the plugin",
        env!("QBDI_TEST_CALL_PLUGIN"),
        &[plugin.to_str().unwrap()],
    );
    c.same_stderr = false;
    let args = [
        "--all-maps".to_owned(),
        "-p".to_owned(),
        format!(
            "tracer:out={},module=libqbdi_plugin_tracer.so",
            trace.display()
        ),
    ];
    let out = run_case(&dir, &c, Setting::Avx512Off, Some(&args));
    assert_eq!(
        (out.code, String::from_utf8_lossy(&out.stdout).as_ref()),
        (Some(0), "descriptor\n"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&trace).unwrap_or_default();
    let traced: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
    assert!(
        traced.is_empty(),
        "the plugin's own code ran under the Vm: {:?}",
        &traced[..traced.len().min(5)]
    );
}
