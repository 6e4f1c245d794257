//! What `qbdi run` tells the preload library, through one environment variable
//! ([`CONFIG_VAR`]) that the preload removes before the program's `main` (with
//! `LD_PRELOAD`), so the program sees its own environment.

use std::path::PathBuf;

/// The environment variable carrying the run's configuration.
pub const CONFIG_VAR: &str = "QBDI_RUN_CONFIG";
/// [`CONFIG_VAR`] for libc (`getenv` before anything allocates).
pub const CONFIG_VAR_C: &std::ffi::CStr = c"QBDI_RUN_CONFIG";

/// How the program is to be instrumented.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunConfig {
    /// Plugins (absolute paths, already checked) with their options, in load order.
    pub plugins: Vec<(PathBuf, Vec<(String, String)>)>,
    /// Modules to instrument besides the main executable.
    pub modules: Vec<String>,
    /// Modules not to instrument.
    pub exclude: Vec<String>,
    /// Instrument every executable mapping (but qbdi's own and the plugins').
    pub all_maps: bool,
    /// Do not instrument the main executable (only `modules`).
    pub no_main: bool,
    /// Where the host's messages go (stderr if none).
    pub log: Option<PathBuf>,
    /// Keep instrumenting the programs this one executes.
    pub follow_exec: bool,
    /// Let native code run the instrumented functions it calls natively (no re-entry).
    pub native_callbacks: bool,
    /// The preload library itself (for `follow_exec`).
    pub preload: PathBuf,
    /// The user's own `LD_PRELOAD`, restored before main (`None`: there was none).
    pub user_preload: Option<String>,
    /// Python tools (scripts), in load order, run by the pyqbdi preload on the same Vm as
    /// the plugins (`preload` is then pyqbdi's native module, after libpython).
    pub python_tools: Vec<PathBuf>,
    /// The Python interpreter's `sys.path` of whoever started the run (so its venv's
    /// packages are found), and its `sys.base_prefix` (where the standard library is).
    pub python_path: Vec<String>,
    /// `sys.base_prefix` of that interpreter.
    pub python_home: Option<String>,
}

impl RunConfig {
    /// The configuration as one line-based string (fields cannot hold tabs or newlines).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        for (path, options) in &self.plugins {
            out.push_str("plugin\t");
            out.push_str(&path.to_string_lossy());
            for (k, v) in options {
                out.push_str(&format!("\t{k}={v}"));
            }
            out.push('\n');
        }
        for m in &self.modules {
            out.push_str(&format!("module\t{m}\n"));
        }
        for m in &self.exclude {
            out.push_str(&format!("exclude\t{m}\n"));
        }
        if self.all_maps {
            out.push_str("all_maps\n");
        }
        if self.no_main {
            out.push_str("no_main\n");
        }
        if let Some(log) = &self.log {
            out.push_str(&format!("log\t{}\n", log.to_string_lossy()));
        }
        if self.follow_exec {
            out.push_str("follow_exec\n");
        }
        if self.native_callbacks {
            out.push_str("native_callbacks\n");
        }
        out.push_str(&format!("preload\t{}\n", self.preload.to_string_lossy()));
        if let Some(u) = &self.user_preload {
            out.push_str(&format!("user_preload\t{u}\n"));
        }
        for t in &self.python_tools {
            out.push_str(&format!("python\t{}\n", t.to_string_lossy()));
        }
        for p in &self.python_path {
            out.push_str(&format!("pypath\t{p}\n"));
        }
        if let Some(h) = &self.python_home {
            out.push_str(&format!("pyhome\t{h}\n"));
        }
        out
    }

    /// Parses what [`encode`](Self::encode) wrote.
    pub fn decode(s: &str) -> Result<RunConfig, String> {
        let mut c = RunConfig::default();
        for line in s.lines().filter(|l| !l.is_empty()) {
            let mut fields = line.split('\t');
            let key = fields.next().unwrap_or_default();
            let value = fields.next();
            match (key, value) {
                ("plugin", Some(path)) => {
                    let options = fields
                        .map(|kv| {
                            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                            (k.to_owned(), v.to_owned())
                        })
                        .collect();
                    c.plugins.push((PathBuf::from(path), options));
                }
                ("module", Some(m)) => c.modules.push(m.to_owned()),
                ("exclude", Some(m)) => c.exclude.push(m.to_owned()),
                ("all_maps", None) => c.all_maps = true,
                ("no_main", None) => c.no_main = true,
                ("log", Some(p)) => c.log = Some(PathBuf::from(p)),
                ("follow_exec", None) => c.follow_exec = true,
                ("native_callbacks", None) => c.native_callbacks = true,
                ("preload", Some(p)) => c.preload = PathBuf::from(p),
                ("user_preload", v) => c.user_preload = Some(v.unwrap_or_default().to_owned()),
                ("python", Some(p)) => c.python_tools.push(PathBuf::from(p)),
                ("pypath", v) => c.python_path.push(v.unwrap_or_default().to_owned()),
                ("pyhome", Some(h)) => c.python_home = Some(h.to_owned()),
                _ => return Err(format!("bad line in {CONFIG_VAR}: {line:?}")),
            }
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_round_trips() {
        let c = RunConfig {
            plugins: vec![
                (
                    PathBuf::from("/a/libqbdi_plugin_drcov.so"),
                    vec![("out".into(), "x.log".into())],
                ),
                (PathBuf::from("/b/p.so"), vec![]),
            ],
            modules: vec!["libz.so.1".into()],
            exclude: vec!["libc.so.6".into()],
            all_maps: true,
            no_main: false,
            log: Some(PathBuf::from("/tmp/q.log")),
            follow_exec: true,
            native_callbacks: true,
            preload: PathBuf::from("/x/libqbdi_host.so"),
            user_preload: Some("/u/libmine.so".into()),
            python_tools: vec![PathBuf::from("/t/cov.py")],
            python_path: vec!["/v/lib/python3.11/site-packages".into(), "".into()],
            python_home: Some("/usr".into()),
        };
        assert_eq!(RunConfig::decode(&c.encode()).unwrap(), c);
        assert!(RunConfig::decode("bogus\tline\n").is_err());
    }
}
