//! Installed plugins: `qbdi plugin install`, `list` and `remove`.
//!
//! `install` builds a plugin crate with cargo (release) and copies its cdylib into the user's
//! plugin directory ([`plugin::user_dir`]) as `NAME.so`, NAME being the name the plugin
//! declares in `qbdi_sdk::plugin!`; `-p NAME` finds it there (after `QBDI_PLUGIN_PATH`).
//! Beside it, `NAME.plugin` records what `list` shows: the plugin's name, version, ABI and
//! SDK version as its descriptor gave them, and where it was installed from.
//!
//! Before building, the crate must build a `cdylib` and depend on `qbdi-sdk` (cargo
//! metadata says so without compiling anything); after building, the library is loaded and
//! its descriptor checked as `qbdi run` checks it (magic, ABI major and minor). Nothing is
//! installed unless every check passes.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use qbdi_host::plugin;
use qbdi_sdk::abi::{ABI_MAJOR, ABI_MINOR};
use serde_json::Value;

use crate::scaffold::{SDK_VERSION, valid_name};

/// Where a plugin crate comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// A crate directory.
    Dir(PathBuf),
    /// A git repository (cloned), at a revision or its default branch.
    Git {
        /// The URL as given.
        url: String,
        /// `--rev`.
        rev: Option<String>,
    },
    /// A crate from the registry (crates.io unless cargo is configured otherwise).
    Registry {
        /// The crate's name.
        name: String,
        /// `NAME@VERSION`: a version requirement (`1.2`, `=1.2.3`).
        version: Option<String>,
    },
}

impl Source {
    /// Reads SOURCE as `qbdi plugin install` takes it: an existing directory, a git URL
    /// (`https://`, `ssh://`, `git://`, `file://`, `git@host:`, or anything ending in
    /// `.git`), else a crate name with an optional `@VERSION`.
    pub fn parse(s: &str, rev: Option<&str>) -> Result<Source, String> {
        let is_git = ["https://", "http://", "ssh://", "git://", "file://", "git@"]
            .iter()
            .any(|p| s.starts_with(p))
            || s.trim_end_matches('/').ends_with(".git");
        if is_git {
            return Ok(Source::Git {
                url: s.to_owned(),
                rev: rev.map(str::to_owned),
            });
        }
        if rev.is_some() {
            return Err(format!(
                "--rev applies to a git source, and {s} is not a git URL (https://, ssh://, \
                 file://, git@host:path or PATH.git)"
            ));
        }
        let path = Path::new(s);
        if path.is_dir() {
            let dir = std::fs::canonicalize(path)
                .map_err(|e| format!("cannot resolve the directory {s}: {e}"))?;
            return Ok(Source::Dir(dir));
        }
        if s.contains('/') || s.starts_with('.') || path.exists() {
            return Err(format!(
                "{s} is not a directory: give a plugin crate's directory, a git URL or a crate \
                 name (NAME or NAME@VERSION)"
            ));
        }
        let (name, version) = match s.split_once('@') {
            Some((n, v)) => (n, Some(v.to_owned())),
            None => (s, None),
        };
        if !valid_name(name) || version.as_deref() == Some("") {
            return Err(format!(
                "{s} is neither a directory, a git URL nor a crate name (NAME or NAME@VERSION)"
            ));
        }
        Ok(Source::Registry {
            name: name.to_owned(),
            version,
        })
    }

    /// How `list` shows it.
    fn describe(&self) -> String {
        match self {
            Source::Dir(d) => d.display().to_string(),
            Source::Git { url, rev: Some(r) } => format!("{url} (rev {r})"),
            Source::Git { url, rev: None } => url.clone(),
            Source::Registry { name, version } => match version {
                Some(v) => format!("registry: {name}@{v}"),
                None => format!("registry: {name}"),
            },
        }
    }
}

/// The user's plugin directory, or why there is none.
fn plugin_dir() -> Result<PathBuf, String> {
    plugin::user_dir().ok_or_else(|| {
        "no plugin directory: set XDG_DATA_HOME or HOME (plugins go to \
         $XDG_DATA_HOME/qbdi/plugins, by default ~/.local/share/qbdi/plugins)"
            .to_owned()
    })
}

/// A scratch directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(what: &str) -> Result<TempDir, String> {
        let base = std::env::temp_dir();
        for n in 0..1000u32 {
            let dir = base.join(format!("qbdi-{what}-{}-{n}", std::process::id()));
            match std::fs::create_dir(&dir) {
                Ok(()) => return Ok(TempDir(dir)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(format!("cannot create {}: {e}", dir.display())),
            }
        }
        Err(format!(
            "cannot create a scratch directory in {}",
            base.display()
        ))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The cargo to run: `$CARGO` (set when run from cargo), else `cargo` from PATH.
fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// Runs `cmd` for its standard output (stderr goes to the user: cargo's progress and
/// diagnostics), or says what failed.
fn output_of(mut cmd: Command, what: &str) -> Result<Vec<u8>, String> {
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run {what}: {e} (is it installed and on PATH?)"))?;
    if !out.status.success() {
        return Err(format!(
            "{what} failed ({}): see its messages above",
            out.status
        ));
    }
    Ok(out.stdout)
}

/// The cargo build cache for sources fetched into scratch directories (git, registry):
/// `CARGO_TARGET_DIR` when set, else `$XDG_CACHE_HOME/qbdi/build` (or `~/.cache/...`), so
/// that reinstalling does not rebuild every dependency.
fn shared_target_dir() -> Option<PathBuf> {
    if std::env::var_os("CARGO_TARGET_DIR").is_some() {
        return None; // cargo uses it
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(cache.join("qbdi").join("build"))
}

/// Copies the directory tree `from` into `to` (which must not exist), skipping `target`
/// and `.git`.
fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let name = entry.file_name();
        let ty = entry.file_type()?;
        if ty.is_dir() {
            if name != "target" && name != ".git" {
                copy_tree(&entry.path(), &to.join(&name))?;
            }
        } else if ty.is_file() {
            std::fs::copy(entry.path(), to.join(&name))?;
        }
    }
    Ok(())
}

/// Brings a registry crate's sources into `scratch` (through a throw-away crate that
/// depends on it: cargo downloads and unpacks it) and returns their directory.
fn fetch_registry(name: &str, version: Option<&str>, scratch: &Path) -> Result<PathBuf, String> {
    let fetcher = scratch.join("fetch");
    std::fs::create_dir_all(fetcher.join("src"))
        .and_then(|()| {
            std::fs::write(
                fetcher.join("Cargo.toml"),
                format!(
                    "[package]\nname = \"qbdi-plugin-fetch\"\nversion = \"0.0.0\"\nedition = \
                     \"2021\"\npublish = false\n\n[dependencies]\n{name} = \"{}\"\n\n[workspace]\n",
                    version.unwrap_or("*")
                ),
            )
        })
        .and_then(|()| std::fs::write(fetcher.join("src/lib.rs"), ""))
        .map_err(|e| format!("cannot write in {}: {e}", fetcher.display()))?;
    let mut cmd = cargo();
    cmd.args(["metadata", "--format-version", "1", "--manifest-path"])
        .arg(fetcher.join("Cargo.toml"));
    let meta = output_of(cmd, &format!("cargo metadata (fetching the crate {name})"))?;
    let meta: Value = serde_json::from_slice(&meta)
        .map_err(|e| format!("cargo metadata gave unreadable output: {e}"))?;
    let manifest = meta["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == name && p["source"].is_string())
        .and_then(|p| p["manifest_path"].as_str())
        .ok_or_else(|| format!("cargo did not fetch the crate {name}"))?;
    let from = Path::new(manifest)
        .parent()
        .expect("a manifest is in a directory");
    let to = scratch.join("crate");
    copy_tree(from, &to)
        .map_err(|e| format!("cannot copy {} to {}: {e}", from.display(), to.display()))?;
    Ok(to)
}

/// What cargo metadata says about the crate at `dir`: its name, version and library
/// target's name, once checked to be a plugin crate.
struct CrateInfo {
    name: String,
    version: String,
    lib: String,
}

/// `origin` says where the crate comes from in messages (its directory, or the URL or
/// registry name it was fetched from).
fn inspect(dir: &Path, origin: &str) -> Result<CrateInfo, String> {
    let manifest = dir.join("Cargo.toml");
    if !manifest.is_file() {
        return Err(format!(
            "{} has no Cargo.toml: give the directory of a plugin crate",
            dir.display()
        ));
    }
    let mut cmd = cargo();
    cmd.args([
        "metadata",
        "--no-deps",
        "--format-version",
        "1",
        "--manifest-path",
    ])
    .arg(&manifest);
    let meta = output_of(cmd, &format!("cargo metadata in {}", dir.display()))?;
    let meta: Value = serde_json::from_slice(&meta)
        .map_err(|e| format!("cargo metadata gave unreadable output: {e}"))?;
    let manifest = std::fs::canonicalize(&manifest).unwrap_or(manifest);
    let packages = meta["packages"].as_array().cloned().unwrap_or_default();
    let Some(pkg) = packages.iter().find(|p| {
        p["manifest_path"]
            .as_str()
            .is_some_and(|m| std::fs::canonicalize(m).is_ok_and(|m| m == manifest))
    }) else {
        let members: Vec<&str> = packages.iter().filter_map(|p| p["name"].as_str()).collect();
        return Err(format!(
            "{} is a workspace, not a crate: give the directory of the plugin crate among its \
             members ({})",
            dir.display(),
            members.join(", ")
        ));
    };
    let name = pkg["name"].as_str().unwrap_or_default().to_owned();
    let version = pkg["version"].as_str().unwrap_or_default().to_owned();
    let lib = pkg["targets"].as_array().into_iter().flatten().find(|t| {
        t["crate_types"]
            .as_array()
            .is_some_and(|k| k.iter().any(|k| k == "cdylib"))
    });
    let Some(lib) = lib else {
        return Err(format!(
            "the crate {name} ({origin}) is not a qbdi plugin: it builds no cdylib (a plugin \
             crate has `[lib] crate-type = [\"cdylib\"]` in its Cargo.toml and depends on \
             qbdi-sdk; `qbdi plugin new NAME` makes one)"
        ));
    };
    let uses_sdk = pkg["dependencies"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|d| d["name"] == "qbdi-sdk" && d["kind"].is_null());
    if !uses_sdk {
        return Err(format!(
            "the crate {name} ({origin}) is not a qbdi plugin: it does not depend on qbdi-sdk \
             (a plugin crate depends on qbdi-sdk and calls `qbdi_sdk::plugin!(..)` once; \
             `qbdi plugin new NAME` makes one)"
        ));
    }
    Ok(CrateInfo {
        name,
        version,
        lib: lib["name"].as_str().unwrap_or_default().replace('-', "_"),
    })
}

/// Builds the crate at `dir` in release and returns its cdylib.
fn build(dir: &Path, info: &CrateInfo, target_dir: Option<&Path>) -> Result<PathBuf, String> {
    let manifest = dir.join("Cargo.toml");
    let mut cmd = cargo();
    cmd.args([
        "build",
        "--release",
        "--lib",
        "--message-format",
        "json-render-diagnostics",
        "--manifest-path",
    ])
    .arg(&manifest);
    if let Some(t) = target_dir {
        cmd.arg("--target-dir").arg(t);
    }
    let out = output_of(cmd, &format!("cargo build --release of {}", info.name))?;
    let so_name = format!("lib{}.so", info.lib);
    String::from_utf8_lossy(&out)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == info.lib)
        .flat_map(|m| {
            m["filenames"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
        })
        .filter_map(|f| f.as_str().map(PathBuf::from))
        .find(|f| f.file_name().is_some_and(|n| n == so_name.as_str()))
        .ok_or_else(|| format!("cargo built {} but produced no {so_name}", info.name))
}

/// The record beside an installed plugin (`NAME.plugin`): `key = value` lines.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Record {
    name: String,
    version: String,
    abi: String,
    sdk: String,
    crate_name: String,
    source: String,
}

impl Record {
    const FIELDS: [&str; 6] = ["name", "version", "abi", "sdk", "crate", "source"];

    fn write(&self) -> String {
        let values = [
            &self.name,
            &self.version,
            &self.abi,
            &self.sdk,
            &self.crate_name,
            &self.source,
        ];
        let mut s = String::from("# installed by `qbdi plugin install`\n");
        for (k, v) in Self::FIELDS.iter().zip(values) {
            s.push_str(&format!("{k} = {}\n", v.replace('\n', " ")));
        }
        s
    }

    fn parse(text: &str) -> Record {
        let mut r = Record::default();
        for line in text.lines() {
            let Some((k, v)) = line.split_once(" = ") else {
                continue;
            };
            let v = v.to_owned();
            match k {
                "name" => r.name = v,
                "version" => r.version = v,
                "abi" => r.abi = v,
                "sdk" => r.sdk = v,
                "crate" => r.crate_name = v,
                "source" => r.source = v,
                _ => {}
            }
        }
        r
    }
}

/// Whether `name` can be a file name in the plugin directory.
fn safe_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// `qbdi plugin install SOURCE [--rev REV]`: builds, checks and installs; returns what to
/// tell the user.
pub fn install(source: &str, rev: Option<&str>) -> Result<String, String> {
    let source = Source::parse(source, rev)?;
    let dest = plugin_dir()?;
    let scratch;
    let (dir, target_dir) = match &source {
        Source::Dir(d) => (d.clone(), None),
        Source::Git { url, rev } => {
            scratch = TempDir::new("install")?;
            let dir = scratch.0.join("crate");
            let mut cmd = Command::new("git");
            cmd.args(["clone", "--quiet"]);
            if rev.is_none() {
                cmd.args(["--depth", "1"]);
            }
            cmd.arg(url).arg(&dir);
            output_of(cmd, &format!("git clone {url}"))?;
            if let Some(r) = rev {
                let mut cmd = Command::new("git");
                cmd.arg("-C").arg(&dir).args(["checkout", "--quiet", r]);
                output_of(cmd, &format!("git checkout {r} in the clone of {url}"))?;
            }
            (dir, shared_target_dir())
        }
        Source::Registry { name, version } => {
            scratch = TempDir::new("install")?;
            let dir = fetch_registry(name, version.as_deref(), &scratch.0)?;
            (dir, shared_target_dir())
        }
    };
    let info = inspect(&dir, &source.describe())?;
    let built = build(&dir, &info, target_dir.as_deref())?;
    let p = plugin::load(&built).map_err(|e| {
        let hint = match e {
            plugin::PluginError::Abi { .. } => format!(
                ": rebuild it against qbdi-sdk {SDK_VERSION} (plugin ABI \
                 {ABI_MAJOR}.{ABI_MINOR}), the SDK of this qbdi"
            ),
            _ => String::new(),
        };
        format!("cannot install the crate {}: {e}{hint}", info.name)
    })?;
    if !safe_name(&p.name) {
        return Err(format!(
            "cannot install the crate {}: its plugin name '{}' cannot be a file name (use \
             letters, digits, '-', '_' in `qbdi_sdk::plugin!(name: ..)`)",
            info.name, p.name
        ));
    }
    std::fs::create_dir_all(&dest)
        .map_err(|e| format!("cannot create the plugin directory {}: {e}", dest.display()))?;
    let so = dest.join(format!("{}.so", p.name));
    let tmp = dest.join(format!(".{}.so.{}", p.name, std::process::id()));
    std::fs::copy(&built, &tmp)
        .and_then(|_| std::fs::rename(&tmp, &so))
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            format!(
                "cannot install {} as {}: {e}",
                built.display(),
                so.display()
            )
        })?;
    let record = Record {
        name: p.name.clone(),
        version: p.version.clone(),
        abi: format!("{}.{}", p.abi.0, p.abi.1),
        sdk: p.sdk_version.clone(),
        crate_name: format!("{} {}", info.name, info.version),
        source: source.describe(),
    };
    let rec = dest.join(format!("{}.plugin", p.name));
    std::fs::File::create(&rec)
        .and_then(|mut f| f.write_all(record.write().as_bytes()))
        .map_err(|e| format!("cannot write {}: {e}", rec.display()))?;
    let mut msg = format!(
        "installed {} {} (ABI {}) from {} as {}\nrun it with: qbdi run -p {} -- PROGRAM",
        p.name,
        p.version,
        record.abi,
        record.source,
        so.display(),
        p.name
    );
    if plugin::path_dirs().iter().any(|d| {
        plugin::candidate_names(&p.name)
            .iter()
            .any(|f| d.join(f).is_file())
    }) {
        msg.push_str(&format!(
            "\nnote: a plugin named {} in QBDI_PLUGIN_PATH is found before this one",
            p.name
        ));
    }
    Ok(msg)
}

/// The installed plugins' records, by name, with whether their library is there.
fn installed(dir: &Path) -> Vec<(Record, bool)> {
    let mut all = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return all;
    };
    for e in entries.flatten() {
        let path = e.path();
        if path.extension().is_some_and(|x| x == "plugin")
            && let Ok(text) = std::fs::read_to_string(&path)
        {
            let mut r = Record::parse(&text);
            if r.name.is_empty() {
                r.name = path
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default();
            }
            let present = dir.join(format!("{}.so", r.name)).is_file();
            all.push((r, present));
        }
    }
    all.sort_by(|a, b| a.0.name.cmp(&b.0.name));
    all
}

/// `qbdi plugin list`: one line per installed plugin (name, version, ABI, source).
pub fn list() -> Result<String, String> {
    let dir = plugin_dir()?;
    let all = installed(&dir);
    if all.is_empty() {
        return Ok(format!(
            "no plugins installed in {} (qbdi plugin install SOURCE installs one)",
            dir.display()
        ));
    }
    let mut out = format!("plugins installed in {}:\n", dir.display());
    out.push_str(&format!(
        "{:<16} {:<10} {:<6} {}\n",
        "NAME", "VERSION", "ABI", "SOURCE"
    ));
    for (r, present) in all {
        let mut note = String::new();
        if !present {
            note.push_str(&format!("  (its library {}.so is missing)", r.name));
        }
        let major = r.abi.split('.').next().and_then(|m| m.parse::<u16>().ok());
        if major.is_some_and(|m| m != ABI_MAJOR) {
            note.push_str(&format!(
                "  (built for ABI {}: this qbdi speaks {ABI_MAJOR}.{ABI_MINOR}; reinstall it)",
                r.abi
            ));
        }
        out.push_str(&format!(
            "{:<16} {:<10} {:<6} {}{note}\n",
            r.name, r.version, r.abi, r.source
        ));
    }
    Ok(out.trim_end().to_owned())
}

/// `qbdi plugin remove NAME`.
pub fn remove(name: &str) -> Result<String, String> {
    let dir = plugin_dir()?;
    if !safe_name(name) {
        return Err(format!("'{name}' is not a plugin name"));
    }
    let so = dir.join(format!("{name}.so"));
    let rec = dir.join(format!("{name}.plugin"));
    if !so.exists() && !rec.exists() {
        let names: Vec<String> = installed(&dir).into_iter().map(|(r, _)| r.name).collect();
        return Err(format!(
            "no installed plugin named {name} in {} (installed: {})",
            dir.display(),
            if names.is_empty() {
                "none".to_owned()
            } else {
                names.join(", ")
            }
        ));
    }
    for f in [&so, &rec] {
        match std::fs::remove_file(f) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("cannot remove {}: {e}", f.display())),
        }
    }
    Ok(format!("removed {name} from {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_parse() {
        assert_eq!(
            Source::parse("https://example.com/p.git", None),
            Ok(Source::Git {
                url: "https://example.com/p.git".into(),
                rev: None
            })
        );
        assert!(matches!(
            Source::parse("/srv/repos/plugin.git", Some("v1")),
            Ok(Source::Git { rev: Some(_), .. })
        ));
        assert_eq!(
            Source::parse("qbdi-drcov@0.2", None),
            Ok(Source::Registry {
                name: "qbdi-drcov".into(),
                version: Some("0.2".into())
            })
        );
        assert!(matches!(Source::parse("/", None), Ok(Source::Dir(_))));
        let e = Source::parse("./no/such/dir", None).unwrap_err();
        assert!(
            e.contains("./no/such/dir") && e.contains("not a directory"),
            "{e}"
        );
        let e = Source::parse("bad name!", None).unwrap_err();
        assert!(e.contains("bad name!"), "{e}");
        let e = Source::parse("crate", Some("v1")).unwrap_err();
        assert!(e.contains("--rev"), "{e}");
    }

    #[test]
    fn records_round_trip() {
        let r = Record {
            name: "demo".into(),
            version: "0.1.0".into(),
            abi: "1.2".into(),
            sdk: "0.1.0".into(),
            crate_name: "demo 0.1.0".into(),
            source: "/home/me/demo".into(),
        };
        assert_eq!(Record::parse(&r.write()), r);
    }

    #[test]
    fn plugin_names_that_are_no_file_names_are_refused() {
        assert!(safe_name("demo") && safe_name("my-plugin_2"));
        assert!(!safe_name("") && !safe_name("../x") && !safe_name(".hidden") && !safe_name("a/b"));
    }
}
