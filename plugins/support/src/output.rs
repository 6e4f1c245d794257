//! Where a plugin writes: the `out=PATH` option.
//!
//! `out` absent: `<plugin>.<pid>.log` in the directory the program started in (the pid of
//! the process that writes it, so a forked child does not overwrite its parent's file;
//! `<plugin>.<pid>.<n>.log` for the `n`-th program a process executes under
//! `--follow-exec`, which keeps the pid: files of that name written since the process
//! started are an earlier image's);
//! `out=-`: stderr; otherwise the path, made absolute at init (the program may `chdir`),
//! with `.<pid>` appended in a `fork` child (see [`fork`](crate::fork)).

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

use qbdi_sdk::PluginOptions;

use crate::sync::{FINI_WAIT, lock, lock_for_fini};

/// The pid of the process that resolved the `out` option (0: none yet).
static INIT_PID: AtomicU32 = AtomicU32::new(0);

/// Which program image of the process that resolved the `out` option this is, for the
/// default name: `exec` keeps the pid, so with `--follow-exec` a program the first one
/// executes would write its files over the first one's. 0 for the process's first image;
/// `n` names its files `<plugin>.<pid>.<n>.log`.
static IMAGE: AtomicU32 = AtomicU32::new(0);

/// When this process started (`exec` keeps it): the boot time plus the process's start in
/// clock ticks since boot (`/proc/self/stat`).
fn process_start() -> Option<std::time::SystemTime> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Field 22, counted from the state (field 3) after the command's closing parenthesis.
    let ticks: u64 = stat
        .rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()?;
    let boot: u64 = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) })
        .ok()?
        .max(1);
    let since_boot = std::time::Duration::from_nanos(ticks.saturating_mul(1_000_000_000) / hz);
    Some(std::time::UNIX_EPOCH + std::time::Duration::from_secs(boot) + since_boot)
}

/// The image number of this program in its process: how many earlier images wrote
/// `plugin`'s default files in `dir` since the process started.
fn image_number(plugin: &str, dir: &Path, pid: u32) -> u32 {
    let Some(start) = process_start() else {
        return 0;
    };
    let mut n = 0;
    while std::fs::metadata(dir.join(default_name(plugin, pid, n)))
        .and_then(|m| m.modified())
        .is_ok_and(|written| written >= start)
    {
        n += 1;
    }
    n
}

/// `<plugin>.<pid>.log`, or `<plugin>.<pid>.<image>.log` for a later image.
fn default_name(plugin: &str, pid: u32, image: u32) -> String {
    if image == 0 {
        format!("{plugin}.{pid}.log")
    } else {
        format!("{plugin}.{pid}.{image}.log")
    }
}

/// This image's number for the default name (0 in a `fork` child: its pid is new).
fn image() -> u32 {
    if INIT_PID.load(Ordering::Acquire) == std::process::id() {
        IMAGE.load(Ordering::Acquire)
    } else {
        0
    }
}

/// The resolved `out` option.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// `out=-`.
    Stderr,
    /// An explicit path (absolute).
    File(PathBuf),
    /// No `out`: `<plugin>.<pid>.log` in `dir`.
    Default {
        /// The plugin's name.
        plugin: &'static str,
        /// The working directory at init.
        dir: PathBuf,
    },
}

impl Output {
    /// Resolves the `out` option of `plugin` against the current directory. Refuses a path
    /// whose directory does not exist (better at init than after the whole run).
    pub fn from_options(plugin: &'static str, options: &PluginOptions) -> Result<Output, String> {
        let cwd = std::env::current_dir()
            .map_err(|e| format!("cannot get the current directory: {e}"))?;
        let _ =
            INIT_PID.compare_exchange(0, std::process::id(), Ordering::AcqRel, Ordering::Acquire);
        let out = Self::resolve(plugin, options.get("out"), &cwd);
        if let Output::Default { plugin, dir } = &out {
            IMAGE.store(
                image_number(plugin, dir, std::process::id()),
                Ordering::Release,
            );
        }
        if let Output::File(path) = &out {
            let dir = path.parent().unwrap_or(Path::new("/"));
            if !dir.is_dir() {
                return Err(format!(
                    "out={}: directory {} does not exist",
                    path.display(),
                    dir.display()
                ));
            }
        }
        Ok(out)
    }

    /// The default output of `plugin`, in the current directory (for a fini that runs
    /// without an init having resolved the option).
    pub fn default_for(plugin: &'static str) -> Output {
        Output::Default {
            plugin,
            dir: std::env::current_dir().unwrap_or_else(|_| PathBuf::from(".")),
        }
    }

    /// The `out` value `value` of `plugin`, relative paths taken from `cwd`.
    pub fn resolve(plugin: &'static str, value: Option<&str>, cwd: &Path) -> Output {
        match value {
            None | Some("") => Output::Default {
                plugin,
                dir: cwd.to_path_buf(),
            },
            Some("-") => Output::Stderr,
            Some(p) => Output::File(cwd.join(p)),
        }
    }

    /// The file written to (`None` for stderr); the default name takes the current pid, an
    /// explicit path gets `.<pid>` in a process other than the one that resolved it (a
    /// `fork` child).
    pub fn path(&self) -> Option<PathBuf> {
        match self {
            Output::Stderr => None,
            Output::File(p) => {
                let (init, now) = (INIT_PID.load(Ordering::Acquire), std::process::id());
                if init == 0 || init == now {
                    Some(p.clone())
                } else {
                    let mut name = p.clone().into_os_string();
                    name.push(format!(".{now}"));
                    Some(PathBuf::from(name))
                }
            }
            Output::Default { plugin, dir } => {
                Some(dir.join(default_name(plugin, std::process::id(), image())))
            }
        }
    }

    /// The file of thread `tid`'s own trace, next to this output's: `PATH.tid<N>` (or
    /// `<plugin>.<pid>.tid<N>.log` for the default name); `None` for stderr.
    pub fn thread_path(&self, tid: u32) -> Option<PathBuf> {
        match self {
            Output::Default { plugin, dir } => {
                let name = default_name(plugin, std::process::id(), image());
                let base = name.strip_suffix(".log").unwrap_or(&name);
                Some(dir.join(format!("{base}.tid{tid}.log")))
            }
            _ => self.path().map(|p| {
                let mut name = p.into_os_string();
                name.push(format!(".tid{tid}"));
                PathBuf::from(name)
            }),
        }
    }

    /// Where the output goes, for messages.
    pub fn describe(&self) -> String {
        match self.path() {
            Some(p) => p.display().to_string(),
            None => "stderr".to_owned(),
        }
    }

    /// Opens (creates or truncates) the output.
    pub fn open(&self) -> io::Result<Sink> {
        match self.path() {
            None => Ok(Sink::Stderr(io::stderr())),
            Some(p) => File::create(p).map(Sink::File),
        }
    }

    /// Writes `bytes` as the whole output; an error is printed to stderr, naming `plugin`
    /// (fini has no other way to report it).
    pub fn write_all(&self, plugin: &str, bytes: &[u8]) {
        let result = self.open().and_then(|mut s| {
            s.write_all(bytes)?;
            s.flush()
        });
        if let Err(e) = result {
            warn(plugin, &format!("cannot write {}: {e}", self.describe()));
        }
    }
}

/// Prints `qbdi plugin NAME: message` to stderr (for fini, which has no host log).
pub fn warn(plugin: &str, message: &str) {
    let _ = writeln!(io::stderr(), "qbdi plugin {plugin}: {message}");
}

/// An opened output: a file or stderr.
#[derive(Debug)]
pub enum Sink {
    /// stderr (unbuffered; wrap it in a `BufWriter`).
    Stderr(io::Stderr),
    /// A file.
    File(File),
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Sink::Stderr(s) => s.write(buf),
            Sink::File(f) => f.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Sink::Stderr(s) => s.flush(),
            Sink::File(f) => f.flush(),
        }
    }
}

/// Buffer size of a [`Stream`]: large enough that a busy trace makes few `write` calls.
pub const STREAM_BUFFER: usize = 1 << 20;

/// A buffered output written from callbacks and flushed at fini, for traces too long to
/// keep in memory. Before [`open`](Stream::open) and after [`finish`](Stream::finish),
/// writes are dropped.
#[derive(Debug)]
pub struct Stream {
    plugin: &'static str,
    writer: Mutex<Option<BufWriter<Sink>>>,
    /// What `open` opened (for [`reopen_in_fork_child`](Stream::reopen_in_fork_child)).
    output: Mutex<Option<Output>>,
}

impl Stream {
    /// A stream of `plugin` (named in error messages) with nowhere to write yet (for a
    /// `static`).
    pub const fn new(plugin: &'static str) -> Stream {
        Stream {
            plugin,
            writer: Mutex::new(None),
            output: Mutex::new(None),
        }
    }

    /// Opens `output` and writes there from now on.
    pub fn open(&self, output: &Output) -> Result<(), String> {
        let sink = output
            .open()
            .map_err(|e| format!("cannot create {}: {e}", output.describe()))?;
        *lock(&self.writer) = Some(BufWriter::with_capacity(STREAM_BUFFER, sink));
        *lock(&self.output) = Some(output.clone());
        Ok(())
    }

    /// In a `fork` child (see [`fork::on_fork_child`](crate::fork::on_fork_child)): drops
    /// what the parent had buffered without writing it (the parent writes it), and opens
    /// this process's own output (`<plugin>.<child pid>.log`, `PATH.<child pid>`, or
    /// stderr). Only tries the locks: a lock held by another thread at the fork stays held
    /// in the child, whose stream then stays closed.
    pub fn reopen_in_fork_child(&self) {
        let (Ok(mut writer), Ok(output)) = (self.writer.try_lock(), self.output.try_lock()) else {
            return;
        };
        let Some(old) = writer.take() else {
            return;
        };
        // The parent's buffered bytes are discarded, not flushed.
        let (sink, _parents_bytes) = old.into_parts();
        drop(sink);
        let Some(output) = output.as_ref() else {
            return;
        };
        match output.open() {
            Ok(sink) => *writer = Some(BufWriter::with_capacity(STREAM_BUFFER, sink)),
            Err(e) => warn(
                self.plugin,
                &format!("fork child: cannot create {}: {e}", output.describe()),
            ),
        }
    }

    /// Runs `f` on the writer, if open. A write error closes the stream (reported at
    /// finish), instead of failing again on every callback.
    pub fn with<R>(&self, f: impl FnOnce(&mut BufWriter<Sink>) -> io::Result<R>) -> Option<R> {
        let mut guard = lock(&self.writer);
        let w = guard.as_mut()?;
        match f(w) {
            Ok(r) => Some(r),
            Err(e) => {
                *guard = None;
                drop(guard);
                warn(
                    self.plugin,
                    &format!("write error, output stopped here: {e}"),
                );
                None
            }
        }
    }

    /// Flushes and closes the stream (for fini): `f` may append a last part first. Errors
    /// go to stderr.
    pub fn finish(&self, f: impl FnOnce(&mut BufWriter<Sink>) -> io::Result<()>) {
        let Some(mut guard) = lock_for_fini(&self.writer, FINI_WAIT) else {
            warn(
                self.plugin,
                "output still in use by a callback at exit; its last buffered part is lost",
            );
            return;
        };
        let Some(mut w) = guard.take() else {
            return;
        };
        drop(guard);
        if let Err(e) = f(&mut w).and_then(|()| w.flush()) {
            warn(self.plugin, &format!("cannot write output: {e}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(tag: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("qbdi-plugin-support-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn resolves_the_out_option() {
        let cwd = Path::new("/work/dir");
        assert_eq!(Output::resolve("x", Some("-"), cwd), Output::Stderr);
        assert_eq!(
            Output::resolve("x", Some("cov.log"), cwd),
            Output::File("/work/dir/cov.log".into())
        );
        assert_eq!(
            Output::resolve("x", Some("/tmp/a.log"), cwd),
            Output::File("/tmp/a.log".into())
        );
        let default = Output::resolve("drcov", None, cwd);
        assert_eq!(
            default.path().unwrap(),
            PathBuf::from(format!("/work/dir/drcov.{}.log", std::process::id()))
        );
        assert_eq!(Output::resolve("drcov", Some(""), cwd), default);
        assert_eq!(Output::Stderr.describe(), "stderr");
    }

    #[test]
    fn refuses_a_missing_directory() {
        let opts = PluginOptions::new(vec![("out".into(), "/nonexistent-dir-qbdi/x.log".into())]);
        let err = Output::from_options("x", &opts).unwrap_err();
        assert!(err.contains("/nonexistent-dir-qbdi"), "{err}");
    }

    #[test]
    fn write_all_creates_and_truncates() {
        let path = temp_dir("write").join("out.log");
        let out = Output::File(path.clone());
        out.write_all("t", b"first, longer contents\n");
        out.write_all("t", b"second\n");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "second\n");
    }

    #[test]
    fn stream_buffers_until_finish_then_drops_writes() {
        let path = temp_dir("stream").join("trace.log");
        let s = Stream::new("t");
        assert_eq!(s.with(|w| w.write_all(b"before open\n")), None);
        s.open(&Output::File(path.clone())).unwrap();
        s.with(|w| w.write_all(b"one\n")).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "",
            "still buffered"
        );
        s.finish(|w| w.write_all(b"end\n"));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "one\nend\n");
        assert_eq!(s.with(|w| w.write_all(b"after\n")), None);
        s.finish(|w| w.write_all(b"twice\n"));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "one\nend\n");
    }
}
