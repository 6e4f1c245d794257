//! Plugins on inline instrumentation (`VmRef::add_block_counter`, `VmRef::add_edge_map`):
//!
//! - the `edges` plugin's map, read through System V shared memory as AFL++ reads it, is
//!   byte for byte the map the `edgecheck` test plugin computes in the same run from a
//!   BASIC_BLOCK_ENTRY callback (on the direct path, which runs to the process's end as
//!   inline code does); without AFL++ the map is written to a file at fini;
//! - `bbcount`'s inline counts add up to what the `count` plugin's callback counted in the
//!   same run, on real programs and on eight threads.

use std::path::Path;

use qbdi_tests::cli::{artifacts, assert_same_env, scratch};

const THREADS8: &str = env!("QBDI_TEST_THREADS8");

fn plugin(name: &str) -> String {
    artifacts()
        .join(format!("libqbdi_plugin_{name}.so"))
        .to_string_lossy()
        .into_owned()
}

/// A System V shared memory segment, as AFL++ makes for its map (removed on drop).
struct Shm {
    id: i32,
    map: *const u8,
    size: usize,
}

impl Shm {
    fn new(size: usize) -> Shm {
        // SAFETY: plain System V calls; results checked.
        unsafe {
            let id = libc::shmget(libc::IPC_PRIVATE, size, libc::IPC_CREAT | 0o600);
            assert!(id >= 0, "shmget: {}", std::io::Error::last_os_error());
            let map = libc::shmat(id, std::ptr::null(), 0);
            assert!(
                map as isize != -1,
                "shmat: {}",
                std::io::Error::last_os_error()
            );
            Shm {
                id,
                map: map as *const u8,
                size,
            }
        }
    }

    fn bytes(&self) -> Vec<u8> {
        // SAFETY: attached for `size` bytes until drop; the writer has exited.
        unsafe { std::slice::from_raw_parts(self.map, self.size) }.to_vec()
    }
}

impl Drop for Shm {
    fn drop(&mut self) {
        // SAFETY: detaches and removes the segment made in `new`.
        unsafe {
            libc::shmdt(self.map.cast());
            libc::shmctl(self.id, libc::IPC_RMID, std::ptr::null_mut());
        }
    }
}

fn hits(map: &[u8]) -> usize {
    map.iter().filter(|&&b| b != 0).count()
}

fn input(dir: &Path) -> String {
    let path = dir.join("in.txt");
    let text: String = (0..4000)
        .map(|i| format!("{} line {}\n", (i * 7919) % 4001, i))
        .collect();
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

#[test]
fn the_edges_map_is_read_through_shared_memory_as_afl_reads_it() {
    let dir = scratch("edges-shm");
    let input = input(&dir);
    let python = qbdi_tests::cli::python();
    let python_args: Vec<&str> = vec!["-c", "print(sum(i * i for i in range(20000)))"];
    // One thread and one process each (sort --parallel=1): edge counts, AFL's as ours, are
    // not atomic.
    for (qbdi_args, program, args) in [
        (
            &["--all-maps"][..],
            "sort",
            vec!["--parallel=1", "-n", input.as_str()],
        ),
        (&[][..], "sort", vec!["--parallel=1", "-r", input.as_str()]),
        (
            &["--all-maps"][..],
            "sed",
            vec!["-e", "s/line/enil/", input.as_str()],
        ),
        // An interpreter: its dispatch's indirect jumps, its calls through function
        // pointers and its returns count at their site caches; libc's functions are native
        // targets (the broker) without `--all-maps`.
        (&["--all-maps"][..], python.as_str(), python_args.clone()),
        (&[][..], python.as_str(), python_args.clone()),
    ] {
        let shm = Shm::new(1 << 16);
        let id = shm.id.to_string();
        let check = dir.join("check.map");
        let mut qargs = qbdi_args.to_vec();
        let edgecheck = format!("{}:out={}", plugin("edgecheck"), check.display());
        let edges = plugin("edges");
        qargs.extend(["-p", &edges, "-p", &edgecheck]);
        let env = [("__AFL_SHM_ID", id.as_str()), ("AFL_MAP_SIZE", "65536")];
        let q = assert_same_env(&dir, &env, &qargs, program, &args, None);
        assert_eq!(q.code, Some(0), "{}", q.stderr);
        let map = shm.bytes();
        let expected = std::fs::read(&check).expect("edgecheck's map");
        assert!(
            hits(&map) > 50,
            "{program} {qbdi_args:?}: {} entries hit",
            hits(&map)
        );
        assert_same_map(&format!("{program} {qbdi_args:?}"), &map, &expected);
    }
}

/// Fails naming the entries (index, the map's, the callback's) where `map` differs from
/// `expected`, the map the edgecheck plugin's callback counted.
fn assert_same_map(what: &str, map: &[u8], expected: &[u8]) {
    assert_eq!(map.len(), expected.len(), "{what}: map sizes");
    let differ: Vec<(usize, u8, u8)> = (0..map.len())
        .filter(|&i| map[i] != expected[i])
        .map(|i| (i, map[i], expected[i]))
        .collect();
    assert!(
        differ.is_empty(),
        "{what}: {} of {} hit entries differ from the callback's map (index, map, \
         callback): {:?}",
        differ.len(),
        hits(expected),
        &differ[..differ.len().min(20)]
    );
}

/// The edges plugin without AFL++ writes its map to a file when the plugins finalise: the
/// same map as the callback's, which counts up to the process's last block. With libc
/// instrumented, libc's `exit` goes on after the `atexit` handlers (the other libraries'
/// finalisers, the stdio flush of `sort`'s and python3's buffered output, `_exit`): the
/// plugins finalise at its `exit_group` system call, after those.
#[test]
fn without_afl_the_edges_map_goes_to_a_file() {
    let dir = scratch("edges-file");
    let input = input(&dir);
    let out = dir.join("edges.map");
    let check = dir.join("check.map");
    let edges = format!("{}:out={},size=65536", plugin("edges"), out.display());
    let edgecheck = format!("{}:out={}", plugin("edgecheck"), check.display());
    let python = qbdi_tests::cli::python();
    for (program, args) in [
        ("gzip", vec!["-c", input.as_str()]),
        ("sort", vec!["--parallel=1", "-n", input.as_str()]),
        (
            python.as_str(),
            vec!["-c", "print(sum(i * i for i in range(2000)))"],
        ),
    ] {
        let _ = std::fs::remove_file(&out);
        let q = assert_same_env(
            &dir,
            &[],
            &["--all-maps", "-p", &edges, "-p", &edgecheck],
            program,
            &args,
            None,
        );
        assert!(
            q.stderr.contains("map entries hit, map written to"),
            "{program}: {}",
            q.stderr
        );
        let map = std::fs::read(&out).expect("the edges map file");
        assert_eq!(map.len(), 1 << 16);
        assert!(hits(&map) > 100, "{program}: {} entries hit", hits(&map));
        assert_same_map(program, &map, &std::fs::read(&check).unwrap());
    }
    // A bad size is refused before the program runs.
    let bad = format!("{}:size=1000", plugin("edges"));
    let q = qbdi_tests::cli::under_qbdi(&dir, &["-p", &bad], "true", &[], None);
    assert_ne!(q.code, Some(0));
    assert!(q.stderr.contains("size=1000"), "{}", q.stderr);
}

/// A program that ends with the `exit_group` system call itself (no `exit`, no atexit
/// handler: a Go runtime's way, here libc's `syscall` called from python3): the plugins
/// finalise at that system call, which the engine sees with libc instrumented, and the
/// process ends with the program's status.
#[test]
fn plugins_finalise_at_a_raw_exit_group() {
    let dir = scratch("raw-exit-group");
    let out = dir.join("edges.map");
    let bb = dir.join("bb.log");
    let edges = format!("{}:out={}", plugin("edges"), out.display());
    let bbcount = format!("{}:out={}", plugin("bbcount"), bb.display());
    let python = qbdi_tests::cli::python();
    let code = "import ctypes, sys; sys.stdout.flush(); ctypes.CDLL(None).syscall(231, 3)";
    let q = qbdi_tests::cli::under_qbdi(
        &dir,
        &["--all-maps", "-p", &edges, "-p", &bbcount],
        &python,
        &["-c", code],
        None,
    );
    assert_eq!(q.code, Some(3), "{}", q.stderr);
    assert!(q.stderr.contains("map written to"), "{}", q.stderr);
    let map = std::fs::read(&out).expect("the edges map file");
    assert!(hits(&map) > 1000, "{} entries hit", hits(&map));
    let report = std::fs::read_to_string(&bb).expect("the bbcount report");
    assert!(bbcount_total(&report) > 100_000, "{report:.200}");
}

/// The total of a bbcount report's header: `# N blocks entered T times; ...`.
fn bbcount_total(report: &str) -> u64 {
    let header = report.lines().next().unwrap_or_default();
    let words: Vec<&str> = header.split_whitespace().collect();
    let at = words.iter().position(|&w| w == "entered").expect(header);
    words[at + 1].parse().expect(header)
}

/// (qbdi options, program, its arguments, GLIBC_TUNABLES)
type Run<'a> = (&'a [&'a str], &'a str, Vec<&'a str>, Option<&'static str>);

#[test]
fn inline_block_counts_are_what_a_callback_counts() {
    let dir = scratch("inline-counts");
    let input = input(&dir);
    // libc's string routines differ by CPU: its programs run under each choice glibc has
    // here (GLIBC_TUNABLES).
    let mut runs: Vec<Run<'_>> = Vec::new();
    for (_, tunables) in qbdi_tests::glibc::settings() {
        runs.push((
            &["--all-maps"],
            "sort",
            vec!["-n", input.as_str()],
            tunables,
        ));
        runs.push((
            &["--all-maps"],
            "gzip",
            vec!["-c", input.as_str()],
            tunables,
        ));
    }
    runs.push((&[], THREADS8, vec![], None));
    runs.push((&["--all-maps"], THREADS8, vec![], None));
    for (qbdi_args, program, args, tunables) in runs {
        let env: Vec<(&str, &str)> = tunables
            .map(|t| ("GLIBC_TUNABLES", t))
            .into_iter()
            .collect();
        let (b, c) = (dir.join("bb.log"), dir.join("count.log"));
        let bbcount = format!("{}:out={}", plugin("bbcount"), b.display());
        let count = format!("{}:out={}", plugin("count"), c.display());
        let mut qargs = qbdi_args.to_vec();
        qargs.extend(["-p", &bbcount, "-p", &count]);
        let q = assert_same_env(&dir, &env, &qargs, program, &args, None);
        assert_eq!(q.code, Some(0), "{}", q.stderr);
        let report = std::fs::read_to_string(&b).unwrap();
        let counted = std::fs::read_to_string(&c).unwrap();
        let blocks: u64 = counted
            .trim()
            .trim_start_matches("blocks=")
            .parse()
            .unwrap();
        assert!(blocks > 1000, "{program}: {counted}");
        assert_eq!(
            bbcount_total(&report),
            blocks,
            "{program} {qbdi_args:?} {tunables:?}"
        );
    }
}

/// Without AFL++ each thread counts in a map of its own (no thread waits for another's map
/// lines, no count is lost), added up at exit: on eight threads the map is the same run
/// after run (address randomisation off: the hash is of addresses; counts that wrap
/// without NeverZero, which is not additive), whatever the scheduling (which thread runs
/// on which Vm, and which Vm's map counts what), and it holds the workers' loops.
#[test]
fn threads_count_edges_in_maps_of_their_own() {
    let dir = scratch("edges-threads");
    let mut maps = Vec::new();
    for run in 0..2 {
        let out = dir.join(format!("edges-{run}.map"));
        let edges = format!("{}:out={},wrap", plugin("edges"), out.display());
        let status = std::process::Command::new("setarch")
            .arg("-R")
            .arg(qbdi_tests::cli::qbdi())
            .args(["run", "-p", &edges, "--", THREADS8])
            .current_dir(&dir)
            .stdout(std::process::Stdio::null())
            .status()
            .expect("setarch runs qbdi");
        assert!(status.success());
        maps.push(std::fs::read(&out).expect("the edges map file"));
    }
    assert!(hits(&maps[0]) > 10, "{} entries hit", hits(&maps[0]));
    assert!(
        maps[0] == maps[1],
        "two runs of threads8 gave different maps"
    );
}
