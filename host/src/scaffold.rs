//! `qbdi plugin new NAME`: a plugin crate that builds as it is (templates in
//! `host/templates/`): Cargo.toml, `src/lib.rs` with a block counter and a call counter, a
//! test that runs it under `qbdi run` on `/bin/true`, a README and a `.gitignore`.
//!
//! Its qbdi-sdk dependency is where this `qbdi` was built from, when those sources are still
//! there (a path dependency on `<source>/qbdi-sdk`), else the registry's qbdi-sdk of this
//! `qbdi`'s version; `--sdk-path` chooses another source tree.

use std::path::{Path, PathBuf};

/// The version of qbdi-sdk this `qbdi` was built with (the workspace's).
pub(crate) const SDK_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The qbdi-sdk sources this `qbdi` was built with (`host/../qbdi-sdk`).
fn built_sdk() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../qbdi-sdk")
}

/// Whether `dir` holds the qbdi-sdk crate.
fn is_sdk(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("Cargo.toml"))
        .is_ok_and(|t| t.lines().any(|l| l.trim() == "name = \"qbdi-sdk\""))
}

/// The `qbdi-sdk = ...` line of the new crate's Cargo.toml.
fn sdk_dependency(sdk_path: Option<&Path>) -> Result<String, String> {
    let dir = match sdk_path {
        Some(p) => {
            if !is_sdk(p) {
                return Err(format!(
                    "--sdk-path {}: no qbdi-sdk crate there (give the qbdi-sdk directory of a \
                     QBDI-rs source tree)",
                    p.display()
                ));
            }
            p.to_path_buf()
        }
        None => {
            let built = built_sdk();
            if !is_sdk(&built) {
                return Ok(format!("qbdi-sdk = \"{SDK_VERSION}\""));
            }
            built
        }
    };
    let dir = std::fs::canonicalize(&dir)
        .map_err(|e| format!("cannot resolve {}: {e}", dir.display()))?;
    let text = dir
        .to_str()
        .ok_or_else(|| format!("{} is not UTF-8: Cargo.toml cannot name it", dir.display()))?;
    Ok(format!(
        "qbdi-sdk = {{ path = \"{}\" }}",
        text.replace('\\', "\\\\").replace('"', "\\\"")
    ))
}

/// Whether `name` can be a crate's (and the plugin's) name: ASCII letters, digits, `-` and
/// `_`, starting with a letter.
pub(crate) fn valid_name(name: &str) -> bool {
    name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Fills a template.
fn fill(template: &str, name: &str, sdk: &str) -> String {
    template
        .replace("{{crate}}", name)
        .replace("{{name}}", name)
        .replace("{{lib}}", &name.replace('-', "_"))
        .replace("{{sdk_dependency}}", sdk)
}

/// `qbdi plugin new NAME [--dir DIR] [--sdk-path PATH]`: writes the crate into DIR
/// (default `./NAME`, which must not exist); returns what to tell the user.
pub fn new_crate(
    name: &str,
    dir: Option<&Path>,
    sdk_path: Option<&Path>,
) -> Result<String, String> {
    if !valid_name(name) {
        return Err(format!(
            "'{name}' cannot name a plugin crate: use ASCII letters, digits, '-' and '_', \
             starting with a letter"
        ));
    }
    let dir = dir.map_or_else(|| PathBuf::from(name), Path::to_path_buf);
    if dir.exists() {
        return Err(format!(
            "{} already exists: choose another name, or --dir DIR",
            dir.display()
        ));
    }
    let sdk = sdk_dependency(sdk_path)?;
    let files: [(&str, &str); 5] = [
        ("Cargo.toml", include_str!("../templates/Cargo.toml.in")),
        ("src/lib.rs", include_str!("../templates/lib.rs.in")),
        ("tests/run.rs", include_str!("../templates/test.rs.in")),
        ("README.md", include_str!("../templates/README.md.in")),
        (".gitignore", include_str!("../templates/gitignore.in")),
    ];
    for (file, template) in files {
        let path = dir.join(file);
        std::fs::create_dir_all(path.parent().expect("a file in the crate"))
            .and_then(|()| std::fs::write(&path, fill(template, name, &sdk)))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(format!(
        "created the plugin crate {name} in {} ({sdk})\n\
         build and run it:  cd {0} && cargo build --release && qbdi run -p target/release/lib{}.so -- /bin/ls\n\
         install it:        qbdi plugin install {0}",
        dir.display(),
        name.replace('-', "_")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(valid_name("demo") && valid_name("my-plugin_2"));
        assert!(!valid_name("") && !valid_name("2x") && !valid_name("a b") && !valid_name("../x"));
    }

    #[test]
    fn templates_are_filled_everywhere() {
        for t in [
            include_str!("../templates/Cargo.toml.in"),
            include_str!("../templates/lib.rs.in"),
            include_str!("../templates/test.rs.in"),
            include_str!("../templates/README.md.in"),
        ] {
            let s = fill(t, "my-demo", "qbdi-sdk = \"1\"");
            assert!(!s.contains("{{"), "{s}");
        }
        let lib = fill(include_str!("../templates/lib.rs.in"), "my-demo", "");
        assert!(lib.contains("name: \"my-demo\"") && lib.contains("libmy_demo.so"));
    }

    #[test]
    fn the_sdk_is_where_qbdi_was_built_from() {
        // This test runs from the source tree: the dependency is a path to its qbdi-sdk.
        let dep = sdk_dependency(None).unwrap();
        let expected = std::fs::canonicalize(built_sdk()).unwrap();
        assert_eq!(
            dep,
            format!("qbdi-sdk = {{ path = \"{}\" }}", expected.display())
        );
        let e = sdk_dependency(Some(Path::new("/"))).unwrap_err();
        assert!(e.contains("--sdk-path /"), "{e}");
    }
}
