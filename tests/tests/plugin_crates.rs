//! Plugins as crates: `qbdi plugin new` makes a crate that builds and passes its own test,
//! `qbdi plugin install` builds one (from a directory or a git repository) into the user's
//! plugin directory where `-p NAME` finds it, `list` shows it, `remove` removes it; crates
//! that are no qbdi plugins, or plugins of another ABI, are refused and nothing is
//! installed.
//!
//! The crates build (release for `install`, dev for their `cargo test`) into one target
//! directory beside the workspace's, `target/plugin-crates`, so that qbdi-sdk and its
//! dependencies compile once for all of them and stay built between runs.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use qbdi_tests::cli::{artifacts, qbdi, scratch};

/// The cargo target directory of the crates built here.
fn crates_target() -> PathBuf {
    artifacts()
        .parent()
        .expect("target/<profile> is in target/")
        .join("plugin-crates")
}

/// The workspace's qbdi-sdk directory.
fn workspace_sdk() -> PathBuf {
    std::fs::canonicalize(Path::new(env!("CARGO_MANIFEST_DIR")).join("../qbdi-sdk"))
        .expect("the workspace has qbdi-sdk")
}

/// A user's environment: plugins installed under `home/data`, crates built into
/// [`crates_target`].
struct User {
    home: PathBuf,
}

impl User {
    fn new(name: &str) -> User {
        User {
            home: scratch(name),
        }
    }

    fn plugin_dir(&self) -> PathBuf {
        self.home.join("data/qbdi/plugins")
    }

    fn command(&self, program: impl AsRef<std::ffi::OsStr>, cwd: &Path) -> Command {
        let mut cmd = Command::new(program);
        cmd.current_dir(cwd)
            .env_remove("QBDI_PLUGIN_PATH")
            .env("XDG_DATA_HOME", self.home.join("data"))
            .env("XDG_CACHE_HOME", self.home.join("cache"))
            .env("CARGO_TARGET_DIR", crates_target());
        cmd
    }

    /// `qbdi ARGS` from the user's home.
    fn qbdi(&self, args: &[&str]) -> Output {
        self.command(qbdi(), &self.home)
            .args(args)
            .output()
            .expect("qbdi runs")
    }

    /// `qbdi ARGS`, which must succeed; its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.qbdi(args);
        assert!(
            out.status.success(),
            "qbdi {args:?} failed: {}",
            printed(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `qbdi ARGS`, which must fail with qbdi's status and say every one of `needles`.
    fn refused(&self, args: &[&str], needles: &[&str]) -> String {
        let out = self.qbdi(args);
        let text = printed(&out);
        assert_eq!(
            out.status.code(),
            Some(125),
            "qbdi {args:?} should fail: {text}"
        );
        for n in needles {
            assert!(text.contains(n), "qbdi {args:?} should say {n:?}: {text}");
        }
        text
    }
}

/// What a command printed, stdout then stderr.
fn printed(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Writes `files` (path, contents) under `dir`.
fn write_crate(dir: &Path, files: &[(&str, &str)]) {
    for (file, text) in files {
        let path = dir.join(file);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
    }
}

/// A Cargo.toml of a standalone crate.
fn manifest(name: &str, lib_kinds: &str, sdk: bool) -> String {
    let dep = if sdk {
        format!("qbdi-sdk = {{ path = \"{}\" }}", workspace_sdk().display())
    } else {
        String::new()
    };
    format!(
        "[package]\nname = \"{name}\"\nversion = \"0.3.1\"\nedition = \"2024\"\n\n[lib]\n\
         crate-type = [{lib_kinds}]\n\n[dependencies]\n{dep}\n\n[workspace]\n"
    )
}

#[test]
fn a_new_crate_builds_passes_its_test_installs_and_runs_by_name() {
    let user = User::new("plugin_new");
    let demo = user.home.join("demo");
    let said = user.ok(&["plugin", "new", "demo", "--dir", demo.to_str().unwrap()]);
    assert!(said.contains("created the plugin crate demo"), "{said}");
    for f in [
        "Cargo.toml",
        "src/lib.rs",
        "tests/run.rs",
        "README.md",
        ".gitignore",
    ] {
        assert!(demo.join(f).is_file(), "plugin new wrote no {f}");
    }
    // The SDK is the one this qbdi was built from, by path.
    let cargo_toml = std::fs::read_to_string(demo.join("Cargo.toml")).unwrap();
    let dep = format!("qbdi-sdk = {{ path = \"{}\" }}", workspace_sdk().display());
    assert!(cargo_toml.contains(&dep), "{cargo_toml}");
    // Never over an existing directory; names are checked.
    user.refused(
        &["plugin", "new", "demo", "--dir", demo.to_str().unwrap()],
        &["already exists"],
    );
    user.refused(&["plugin", "new", "2demo"], &["'2demo'", "letter"]);

    // Its own test runs it under `qbdi run` on /bin/true.
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = user
        .command(&cargo, &demo)
        .args(["test", "--quiet"])
        .env("QBDI", qbdi())
        .output()
        .expect("cargo runs");
    let text = printed(&out);
    assert!(
        out.status.success(),
        "the new crate's cargo test failed: {text}"
    );
    assert!(
        text.contains("1 passed"),
        "the new crate's test did not run: {text}"
    );

    // Installed, it runs by name, from anywhere.
    let said = user.ok(&["plugin", "install", demo.to_str().unwrap()]);
    assert!(said.contains("installed demo 0.1.0 (ABI 1."), "{said}");
    assert!(user.plugin_dir().join("demo.so").is_file());
    let elsewhere = user.home.join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let out = user
        .command(qbdi(), &elsewhere)
        .args(["run", "-p", "demo", "--", "/bin/true", "--version"])
        .output()
        .expect("qbdi runs");
    let text = printed(&out);
    assert!(out.status.success(), "{text}");
    let counts = text
        .lines()
        .find_map(|l| l.strip_prefix("demo: "))
        .unwrap_or_else(|| panic!("the installed plugin printed no counts: {text}"));
    let n: Vec<u64> = counts
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|s| s.parse().ok())
        .collect();
    assert!(n.len() == 2 && n[0] > 0 && n[1] > 0, "{counts}");
    let info = user.ok(&["plugin", "info", "demo"]);
    assert!(
        info.contains(&format!("{}", user.plugin_dir().join("demo.so").display())),
        "{info}"
    );

    let list = user.ok(&["plugin", "list"]);
    let line = list
        .lines()
        .find(|l| l.starts_with("demo "))
        .unwrap_or_else(|| panic!("list shows no demo: {list}"));
    assert!(
        line.contains("0.1.0") && line.contains(" 1.") && line.contains(demo.to_str().unwrap()),
        "{line}"
    );

    // From a git repository: another plugin, at a tagged revision.
    let repo = user.home.join("repo");
    write_crate(
        &repo,
        &[
            ("Cargo.toml", &manifest("gitplug", "\"cdylib\"", true)),
            (
                "src/lib.rs",
                &std::fs::read_to_string(demo.join("src/lib.rs"))
                    .unwrap()
                    .replace("\"demo\"", "\"gitplug\"")
                    .replace("\"demo: ", "\"gitplug: "),
            ),
        ],
    );
    let git = |args: &[&str]| {
        let ok = Command::new("git")
            .current_dir(&repo)
            .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
            .args(args)
            .output()
            .expect("git runs")
            .status
            .success();
        assert!(ok, "git {args:?}");
    };
    git(&["init", "-q"]);
    git(&["add", "."]);
    git(&["commit", "-q", "-m", "plugin"]);
    git(&["tag", "v1"]);
    let url = format!("file://{}", repo.display());
    let said = user.ok(&["plugin", "install", &url, "--rev", "v1"]);
    assert!(said.contains("installed gitplug 0.3.1"), "{said}");
    let list = user.ok(&["plugin", "list"]);
    assert!(
        list.lines()
            .any(|l| l.starts_with("gitplug ") && l.contains(&url) && l.contains("rev v1")),
        "{list}"
    );
    let out = user
        .command(qbdi(), &elsewhere)
        .args(["run", "-p", "gitplug", "--", "/bin/true"])
        .output()
        .expect("qbdi runs");
    let text = printed(&out);
    assert!(out.status.success() && text.contains("gitplug: "), "{text}");

    // Removed, it is gone; removing it again says there is no such plugin.
    let said = user.ok(&["plugin", "remove", "demo"]);
    assert!(said.contains("removed demo"), "{said}");
    assert!(!user.plugin_dir().join("demo.so").exists());
    let list = user.ok(&["plugin", "list"]);
    assert!(!list.contains("demo "), "{list}");
    assert!(list.contains("gitplug "), "{list}");
    user.refused(
        &["run", "-p", "demo", "--", "/bin/true"],
        &["no plugin 'demo'"],
    );
    user.refused(
        &["plugin", "remove", "demo"],
        &["no installed plugin named demo", "gitplug"],
    );
}

#[test]
fn crates_that_are_no_plugins_of_this_abi_are_refused() {
    let user = User::new("plugin_refusals");
    // A cdylib that does not use the SDK.
    let plain = user.home.join("plain");
    write_crate(
        &plain,
        &[
            ("Cargo.toml", &manifest("plain", "\"cdylib\"", false)),
            ("src/lib.rs", "pub fn f() {}\n"),
        ],
    );
    user.refused(
        &["plugin", "install", plain.to_str().unwrap()],
        &[
            "plain",
            "is not a qbdi plugin",
            "does not depend on qbdi-sdk",
        ],
    );
    // A library crate that builds no cdylib.
    let rlib = user.home.join("rlibonly");
    write_crate(
        &rlib,
        &[
            ("Cargo.toml", &manifest("rlibonly", "\"rlib\"", true)),
            ("src/lib.rs", "pub fn f() {}\n"),
        ],
    );
    user.refused(
        &["plugin", "install", rlib.to_str().unwrap()],
        &["rlibonly", "is not a qbdi plugin", "builds no cdylib"],
    );
    // A plugin of ABI 99 (tests/plugins/bad_abi, as a crate of its own).
    let future = user.home.join("future");
    let bad_abi = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("plugins/bad_abi/src/lib.rs"),
    )
    .unwrap();
    write_crate(
        &future,
        &[
            ("Cargo.toml", &manifest("future", "\"cdylib\"", true)),
            ("src/lib.rs", &bad_abi),
        ],
    );
    user.refused(
        &["plugin", "install", future.to_str().unwrap()],
        &[
            "cannot install the crate future",
            "ABI 99.0",
            "rebuild it against qbdi-sdk",
        ],
    );
    // Neither a directory, a URL nor a crate name.
    user.refused(
        &["plugin", "install", "./no/such/crate"],
        &["not a directory"],
    );
    // Nothing was installed.
    let list = user.ok(&["plugin", "list"]);
    assert!(list.starts_with("no plugins installed"), "{list}");
    assert!(
        std::fs::read_dir(user.plugin_dir()).map_or(true, |mut d| d.next().is_none()),
        "files were left in the plugin directory"
    );
}

/// The crates a plugin author depends on: qbdi-sdk, qbdi-macros, and what they depend on.
const PUBLISHED: [&str; 4] = ["qbdi-sdk", "qbdi-macros", "qbdi-core", "qbdi-heap"];

#[test]
fn the_sdk_crates_carry_their_metadata_package_cleanly_and_document_without_warnings() {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(&cargo)
        .current_dir(&workspace)
        .args(["metadata", "--no-deps", "--format-version", "1"])
        .output()
        .expect("cargo runs");
    assert!(out.status.success(), "{}", printed(&out));
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for name in PUBLISHED {
        let pkg = meta["packages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("no package {name}"));
        for field in [
            "description",
            "license",
            "repository",
            "readme",
            "documentation",
        ] {
            assert!(
                pkg[field].as_str().is_some_and(|v| !v.is_empty()),
                "{name} has no {field}"
            );
        }
        assert!(
            pkg["keywords"]
                .as_array()
                .is_some_and(|k| !k.is_empty() && k.len() <= 5),
            "{name}: 1 to 5 keywords"
        );
        // Its workspace dependencies name a version (crates.io needs one).
        for dep in pkg["dependencies"].as_array().unwrap() {
            if dep["path"].is_string() && dep["kind"].is_null() {
                assert_ne!(
                    dep["req"], "*",
                    "{name}'s dependency {} has no version",
                    dep["name"]
                );
            }
        }
        let out = Command::new(&cargo)
            .current_dir(&workspace)
            .args(["package", "--list", "--allow-dirty", "-p", name])
            .output()
            .expect("cargo runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "cargo package --list -p {name}: {stderr}"
        );
        assert!(
            !stderr.contains("warning"),
            "cargo package --list -p {name}: {stderr}"
        );
        let files = String::from_utf8_lossy(&out.stdout);
        for f in ["Cargo.toml", "README.md", "src/lib.rs"] {
            assert!(
                files.lines().any(|l| l == f),
                "{name}'s package lacks {f}: {files}"
            );
        }
        assert!(
            !files.lines().any(|l| l.starts_with("target/")),
            "{name}'s package holds build output: {files}"
        );
    }
    // The plugin author's documentation builds without a warning.
    let out = Command::new(&cargo)
        .current_dir(&workspace)
        .args(["doc", "--no-deps", "-p", "qbdi-sdk", "-p", "qbdi-macros"])
        .env("RUSTDOCFLAGS", "-D warnings")
        .env("CARGO_TARGET_DIR", crates_target())
        .output()
        .expect("cargo runs");
    assert!(out.status.success(), "cargo doc: {}", printed(&out));
}
