//! Running real programs natively and under `qbdi run`, and comparing what they do.
//!
//! The `qbdi` binary, its preload library and the plugins are the workspace's build
//! artifacts, next to the test executables' directory (`target/<profile>/`): the README's
//! test command builds the workspace before testing.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// `target/<profile>/`, where cargo put `qbdi`, `libqbdi_host.so` and the plugins.
pub fn artifacts() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    // target/<profile>/deps/<test>-<hash>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("tests run from target/<profile>/deps")
        .to_path_buf();
    for needed in ["qbdi", "libqbdi_host.so", "libqbdi_plugin_testkit.so"] {
        assert!(
            dir.join(needed).is_file(),
            "{} is missing: build the workspace first (`cargo build --workspace`; the README's \
             test command, .ci/run, does)",
            dir.join(needed).display()
        );
    }
    dir
}

/// The `qbdi` binary.
pub fn qbdi() -> PathBuf {
    artifacts().join("qbdi")
}

/// What a program did: its stdout, stderr, exit code or signal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Its standard output.
    pub stdout: Vec<u8>,
    /// Its standard error.
    pub stderr: String,
    /// Its exit code, if it exited.
    pub code: Option<i32>,
    /// The signal that ended it, if one did.
    pub signal: Option<i32>,
}

impl Outcome {
    fn from(out: Output) -> Outcome {
        use std::os::unix::process::ExitStatusExt;
        Outcome {
            stdout: out.stdout,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            code: out.status.code(),
            signal: out.status.signal(),
        }
    }

    /// Its standard output as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

/// Runs `program args` in `dir` with `stdin` as its input.
pub fn native(dir: &Path, program: &str, args: &[&str], stdin: Option<&[u8]>) -> Outcome {
    native_env(dir, &[], program, args, stdin)
}

/// As [`native`], with the variables `env` added to the environment.
pub fn native_env(
    dir: &Path,
    env: &[(&str, &str)],
    program: &str,
    args: &[&str],
    stdin: Option<&[u8]>,
) -> Outcome {
    run(
        Command::new(program).args(args).envs(env.iter().copied()),
        dir,
        stdin,
    )
}

/// Runs `qbdi run <qbdi_args> -- program args` in `dir` with `stdin` as its input.
pub fn under_qbdi(
    dir: &Path,
    qbdi_args: &[&str],
    program: &str,
    args: &[&str],
    stdin: Option<&[u8]>,
) -> Outcome {
    under_qbdi_env(dir, &[], qbdi_args, program, args, stdin)
}

/// As [`under_qbdi`], with the variables `env` added to the environment.
pub fn under_qbdi_env(
    dir: &Path,
    env: &[(&str, &str)],
    qbdi_args: &[&str],
    program: &str,
    args: &[&str],
    stdin: Option<&[u8]>,
) -> Outcome {
    let mut cmd = Command::new(qbdi());
    cmd.arg("run")
        .args(qbdi_args)
        .arg("--")
        .arg(program)
        .args(args)
        .envs(env.iter().copied());
    run(&mut cmd, dir, stdin)
}

/// Runs `qbdi <args>` (any subcommand).
pub fn qbdi_cmd(dir: &Path, args: &[&str]) -> Outcome {
    run(Command::new(qbdi()).args(args), dir, None)
}

/// How long one program run of a test may take before it counts as hung (seconds; the
/// variable `QBDI_TEST_RUN_TIMEOUT` sets another). The longest runs take about 20 s.
fn run_timeout() -> Duration {
    let secs = std::env::var("QBDI_TEST_RUN_TIMEOUT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    Duration::from_secs(secs)
}

/// Runs `cmd` in `dir` in a process group of its own. A run that outlives [`run_timeout`]
/// is a failure: its group is killed and the panic says what each of its threads was
/// doing, so that a hang costs minutes and says where it was, not the whole CI budget.
fn run(cmd: &mut Command, dir: &Path, stdin: Option<&[u8]>) -> Outcome {
    run_limited(cmd, dir, stdin, run_timeout())
}

/// [`run`] with the time limit `timeout`.
fn run_limited(cmd: &mut Command, dir: &Path, stdin: Option<&[u8]>, timeout: Duration) -> Outcome {
    use std::os::unix::process::CommandExt;
    cmd.current_dir(dir)
        .env_remove("QBDI_PLUGIN_PATH")
        // The plugins the user installed (`qbdi plugin install`) are not the workspace's.
        .env("XDG_DATA_HOME", no_user_plugins())
        .process_group(0)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("the program starts");
    let pid = child.id() as i32;
    let (done, finished) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if finished.recv_timeout(timeout).is_ok() {
            return None;
        }
        let report = hang_report(pid);
        // SAFETY: kill(2) on the process group the child leads.
        unsafe { libc::kill(-pid, libc::SIGKILL) };
        Some(report)
    });
    feed(&mut child, stdin);
    let out = child.wait_with_output().expect("the program ends");
    let _ = done.send(());
    if let Some(report) = watchdog.join().expect("the watchdog") {
        panic!(
            "{:?} {:?} hung: killed after {} s (QBDI_TEST_RUN_TIMEOUT sets the limit)\n\
             {report}\nstdout so far:\n{}\nstderr so far:\n{}",
            cmd.get_program(),
            cmd.get_args().collect::<Vec<_>>(),
            timeout.as_secs(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
    }
    Outcome::from(out)
}

/// What the processes of group `pgid` are doing: each thread's state, kernel wait channel
/// and system call, and gdb's backtraces where gdb is installed.
fn hang_report(pgid: i32) -> String {
    let mut report = String::new();
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return report;
    };
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let stat = read(&entry.path().join("stat"));
        // pid (comm) state ppid pgrp ...: the fields after the last ')'.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map_or(vec![], |(_, rest)| rest.split_whitespace().collect());
        if fields.get(2).and_then(|g| g.parse::<i32>().ok()) != Some(pgid) {
            continue;
        }
        let cmdline = read(&entry.path().join("cmdline")).replace('\0', " ");
        report.push_str(&format!("process {pid}: {cmdline}\n"));
        if let Ok(tasks) = std::fs::read_dir(entry.path().join("task")) {
            for t in tasks.flatten() {
                let tstat = read(&t.path().join("stat"));
                let state = tstat.rsplit_once(')').map_or("?", |(_, r)| r.trim_start());
                report.push_str(&format!(
                    "  thread {}: state {} wchan {} syscall {}\n",
                    t.file_name().to_string_lossy(),
                    state.split_whitespace().next().unwrap_or("?"),
                    read(&t.path().join("wchan")),
                    read(&t.path().join("syscall")).trim(),
                ));
            }
        }
        let gdb = Command::new("timeout")
            .args(["60", "gdb", "-p", &pid.to_string(), "-batch", "-nx"])
            .args(["-ex", "thread apply all bt 25"])
            .stdin(Stdio::null())
            .output();
        if let Ok(g) = gdb
            && g.status.success()
        {
            report.push_str(&String::from_utf8_lossy(&g.stdout));
        }
    }
    report
}

/// Writes `stdin` (if any) to the child's piped input from a thread: the program may write
/// before it has read everything.
fn feed(child: &mut std::process::Child, stdin: Option<&[u8]>) {
    use std::io::Write;
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("piped stdin");
        let input = input.to_vec();
        std::thread::spawn(move || {
            let _ = pipe.write_all(&input);
        });
    }
}

/// An empty data directory (`XDG_DATA_HOME` of the programs run here): `-p NAME` finds no
/// installed plugin, only the workspace's.
pub fn no_user_plugins() -> PathBuf {
    let dir = artifacts()
        .join("qbdi-test-scratch")
        .join("no-user-plugins");
    std::fs::create_dir_all(&dir).expect("scratch directory");
    dir
}

/// A fresh scratch directory under the target directory.
pub fn scratch(name: &str) -> PathBuf {
    let dir = artifacts()
        .join("qbdi-test-scratch")
        .join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch directory");
    dir
}

/// A directory under `dir` whose `ls -la` listing is the same every run: fixed files and
/// dates, its parent (`..` in the listing) one of its own, dated too, that nothing else
/// writes to (`dir` itself changes as runs write their outputs there).
pub fn listing_dir(dir: &Path) -> PathBuf {
    let parent = dir.join("listing-parent");
    let d = parent.join("listing");
    std::fs::create_dir_all(d.join("sub")).expect("listing directory");
    for (name, size) in [("a.txt", 10), ("b.bin", 2000), ("zeta", 0), (".hidden", 3)] {
        std::fs::write(d.join(name), vec![b'x'; size]).expect("listing file");
    }
    for p in ["a.txt", "b.bin", "zeta", ".hidden", "sub", ".", ".."] {
        let status = Command::new("touch")
            .args(["-h", "-d", "2024-01-02 03:04:05", p])
            .current_dir(&d)
            .status()
            .expect("touch runs");
        assert!(status.success());
    }
    d
}

/// Asserts that the program behaves under `qbdi run <qbdi_args>` exactly as natively:
/// same stdout, same exit code or signal; returns the instrumented outcome.
pub fn assert_same(
    dir: &Path,
    qbdi_args: &[&str],
    program: &str,
    args: &[&str],
    stdin: Option<&[u8]>,
) -> Outcome {
    assert_same_env(dir, &[], qbdi_args, program, args, stdin)
}

/// As [`assert_same`], with the variables `env` added to the environment of both runs.
pub fn assert_same_env(
    dir: &Path,
    env: &[(&str, &str)],
    qbdi_args: &[&str],
    program: &str,
    args: &[&str],
    stdin: Option<&[u8]>,
) -> Outcome {
    let n = native_env(dir, env, program, args, stdin);
    let q = under_qbdi_env(dir, env, qbdi_args, program, args, stdin);
    assert_eq!(
        (n.code, n.signal),
        (q.code, q.signal),
        "{program} {args:?} under qbdi {qbdi_args:?} (env {env:?}): exit differs\nnative stderr: {}\nqbdi stderr: {}",
        n.stderr,
        q.stderr
    );
    assert!(
        n.stdout == q.stdout,
        "{program} {args:?} under qbdi {qbdi_args:?} (env {env:?}): stdout differs\n--- native ---\n{}\n--- qbdi ---\n{}\nqbdi stderr: {}",
        n.text(),
        q.text(),
        q.stderr
    );
    q
}

/// The report lines the testkit plugin appended to `file`.
pub fn testkit_reports(file: &Path) -> Vec<String> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// A counter of a testkit report line (`blocks=12` -> 12).
pub fn report_field(line: &str, key: &str) -> u64 {
    line.split_whitespace()
        .find_map(|w| {
            w.strip_prefix(&format!("{key}="))
                .map(|v| v.parse().expect("a number"))
        })
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
}

/// Input for the compressors: 3 MB of mixed text and binary, the same every run.
pub fn corpus() -> Vec<u8> {
    let mut data = Vec::new();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let words = [
        "alpha", "beta", "gamma", "delta", "qbdi", "block", "cache", "\n",
    ];
    while data.len() < 3 << 20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        if x.is_multiple_of(5) {
            data.extend_from_slice(&x.to_le_bytes());
        } else {
            data.extend_from_slice(words[(x % words.len() as u64) as usize].as_bytes());
            data.push(b' ');
        }
    }
    data.truncate(3 << 20);
    data
}

/// The real python3 executable (not a shell shim in front of it, such as pyenv's, which
/// would make the program under test a shell script).
pub fn python() -> String {
    if Path::new("/usr/bin/python3").exists() {
        return "/usr/bin/python3".into();
    }
    let out = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .expect("python3 runs");
    String::from_utf8(out.stdout)
        .expect("a path")
        .trim()
        .to_owned()
}

/// What a run that may hang did (see [`run_with_timeout`]).
#[derive(Debug)]
pub struct TimedRun {
    /// Its standard output.
    pub stdout: Vec<u8>,
    /// Its standard error.
    pub stderr: Vec<u8>,
    /// Its exit code, if it exited.
    pub code: Option<i32>,
    /// The signal that ended it, if one did.
    pub signal: Option<i32>,
    /// Whether it was killed after the timeout.
    pub hung: bool,
    /// How long it ran.
    pub seconds: f64,
}

/// Runs `cmd` (its directory and arguments already set) with `stdin` as input, killing it
/// after `timeout`.
pub fn run_with_timeout(cmd: &mut Command, stdin: Option<&[u8]>, timeout: Duration) -> TimedRun {
    use std::io::Read;
    use std::os::unix::process::ExitStatusExt;
    let start = Instant::now();
    let mut child = cmd
        .env_remove("QBDI_PLUGIN_PATH")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "{:?} does not start ({e}): .ci/run installs the programs the tests run",
                cmd.get_program()
            )
        });
    feed(&mut child, stdin);
    let reader = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            v
        })
    };
    let out = reader(Box::new(child.stdout.take().expect("piped stdout")));
    let err = reader(Box::new(child.stderr.take().expect("piped stderr")));
    let mut hung = false;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if start.elapsed() > timeout {
            hung = true;
            let _ = child.kill();
            break child.wait().expect("wait after kill");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    TimedRun {
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
        code: status.code(),
        signal: status.signal(),
        hung,
        seconds: start.elapsed().as_secs_f64(),
    }
}

/// The entries bbcount's report (`count start-end symbol module` lines) gives the blocks
/// named `symbol` (the block starting at it), or 0.
pub fn bbcount_entries(report: &str, symbol: &str) -> u64 {
    report
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 4 && f[2] == symbol).then(|| f[0].parse::<u64>().unwrap_or(0))
        })
        .sum()
}

/// [`assert_same`] with the bbcount plugin added to `qbdi_args` (its report in
/// `dir/bb.txt`): the qbdi run's outcome and the report.
pub fn assert_same_bbcount(
    dir: &Path,
    qbdi_args: &[&str],
    program: &str,
    args: &[&str],
) -> (Outcome, String) {
    let out = dir.join("bb.txt");
    let _ = std::fs::remove_file(&out);
    let spec = format!("bbcount:out={}", out.display());
    let mut all = qbdi_args.to_vec();
    all.extend(["-p", &spec]);
    let q = assert_same(dir, &all, program, args, None);
    let report = std::fs::read_to_string(&out)
        .unwrap_or_else(|e| panic!("no bbcount report ({e}): {}", q.stderr));
    (q, report)
}

/// The modules of a drcov file (paths) with the number of blocks of each in its BB table,
/// for those that have some.
pub fn drcov_blocks_by_module(path: &Path) -> Vec<(String, usize)> {
    let data = std::fs::read(path).expect("drcov log");
    let at = data
        .windows(9)
        .position(|w| w == b"BB Table:")
        .expect("a BB table");
    let header = String::from_utf8_lossy(&data[..at]).into_owned();
    let modules: Vec<(u16, String)> = header
        .lines()
        .filter_map(|l| {
            let (id, rest) = l.trim().split_once(',')?;
            let id = id.trim().parse::<u16>().ok()?;
            Some((id, rest.rsplit(',').next()?.trim().to_owned()))
        })
        .collect();
    let body_start = at + data[at..].iter().position(|&b| b == b'\n').expect("line") + 1;
    let ids: Vec<u16> = data[body_start..]
        .chunks_exact(8)
        .map(|e| u16::from_le_bytes([e[6], e[7]]))
        .collect();
    modules
        .into_iter()
        .map(|(id, p)| (p, ids.iter().filter(|&&i| i == id).count()))
        .filter(|(_, n)| *n > 0)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run past its time limit is killed, with its process group, and the failure says
    /// what its threads were doing.
    #[test]
    fn a_hung_run_is_killed_and_reported() {
        let dir = std::env::temp_dir();
        let started = Instant::now();
        let hung = std::panic::catch_unwind(|| {
            let mut cmd = Command::new("sh");
            // A child of its own in the group, which must die too.
            cmd.args(["-c", "sleep 60 & echo started; wait"]);
            run_limited(&mut cmd, &dir, None, Duration::from_secs(1))
        });
        let message = *hung
            .expect_err("the run fails")
            .downcast::<String>()
            .expect("a message");
        assert!(started.elapsed() < Duration::from_secs(30), "{message}");
        assert!(message.contains("hung: killed after 1 s"), "{message}");
        assert!(message.contains("stdout so far:\nstarted"), "{message}");
        assert!(
            message.contains("process ") && message.contains("sleep 60"),
            "both processes of the group are named: {message}"
        );
        assert!(message.contains("state S"), "{message}");
    }

    /// A run within its limit gives its outcome.
    #[test]
    fn a_run_within_its_limit_gives_its_outcome() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo out; echo err >&2; exit 3"]);
        let o = run_limited(
            &mut cmd,
            &std::env::temp_dir(),
            None,
            Duration::from_secs(60),
        );
        assert_eq!(
            (o.stdout.as_slice(), o.stderr.as_str(), o.code),
            (&b"out\n"[..], "err\n", Some(3))
        );
    }
}
