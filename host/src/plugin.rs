//! Finding, loading and checking plugins.
//!
//! A plugin is found by path, by name in `QBDI_PLUGIN_PATH`, in the user's plugin directory
//! (`qbdi plugin install`), or by name next to the `qbdi`
//! binary. It is loaded `RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE` and never unloaded (its
//! registrations and closures point into it). Before anything else in it is called, it is
//! handed the host's heap (its `qbdi_plugin_set_heap`, ABI 1.1, looked up optionally).
//! Its descriptor is checked (magic, then ABI major/minor) before anything else in it is
//! read; then its registrations and options are copied into host-owned values.

use crate::elf::{ET_DYN, NotElf};
use std::ffi::c_void;
use std::fmt;
use std::path::{Path, PathBuf};

use qbdi_sdk::abi::{
    ABI_MAJOR, ABI_MINOR, ENTRY_SYMBOL, HEAP_SYMBOL, HeapTable, PLUGIN_MAGIC, PluginDescriptor,
    RawOptionSpec, RawRegistration, StrRef, kind,
};

/// Everything that can go wrong with a plugin; each message names the file (or the name
/// looked for) and says what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginError {
    /// No file for this name.
    NotFound {
        /// What was asked (`-p NAME`).
        name: String,
        /// Where it was looked for.
        searched: Vec<PathBuf>,
    },
    /// The file is not an ELF shared object.
    NotElf {
        /// The file.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// The dynamic loader refused it.
    Load {
        /// The file.
        path: PathBuf,
        /// dlerror's message.
        message: String,
    },
    /// No `qbdi_plugin_descriptor` in it.
    NoEntry {
        /// The file.
        path: PathBuf,
    },
    /// The descriptor is not a qbdi plugin descriptor, or is of another ABI.
    Abi {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// An option the plugin does not declare, or a malformed option.
    BadOption {
        /// The plugin.
        plugin: String,
        /// What is wrong.
        message: String,
    },
    /// A registration the engine refused (a plugin built with another SDK or by hand).
    Registration {
        /// The plugin.
        plugin: String,
        /// What was refused and why.
        message: String,
    },
    /// The plugin's init refused to start.
    InitRefused {
        /// The plugin.
        plugin: String,
        /// Its message.
        message: String,
    },
}

impl fmt::Display for PluginError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PluginError::NotFound { name, searched } => {
                write!(f, "no plugin '{name}': looked for ")?;
                for (i, p) in searched.iter().enumerate() {
                    write!(f, "{}{}", if i > 0 { ", " } else { "" }, p.display())?;
                }
                write!(
                    f,
                    "; give its path (-p ./libmyplugin.so), install it (qbdi plugin install \
                     CRATE_DIR), or put it in a directory listed in QBDI_PLUGIN_PATH"
                )
            }
            PluginError::NotElf { path, why } => write!(
                f,
                "{} is not a plugin: {why}; a plugin is a shared object built from a cdylib \
                 crate that uses qbdi-sdk",
                path.display()
            ),
            PluginError::Load { path, message } => {
                write!(f, "cannot load plugin {}: {message}", path.display())
            }
            PluginError::NoEntry { path } => write!(
                f,
                "{} has no `{ENTRY_SYMBOL}` entry point: it is not a qbdi plugin (a plugin crate \
                 calls `qbdi_sdk::plugin!(..)` once and is built as a cdylib)",
                path.display()
            ),
            PluginError::Abi { path, message } => write!(f, "plugin {}: {message}", path.display()),
            PluginError::BadOption { plugin, message }
            | PluginError::Registration { plugin, message } => {
                write!(f, "plugin '{plugin}': {message}")
            }
            PluginError::InitRefused { plugin, message } => {
                write!(f, "plugin '{plugin}' refused to start: {message}")
            }
        }
    }
}

impl std::error::Error for PluginError {}

/// One registration of a loaded plugin (host-owned copy of its descriptor's record).
#[derive(Clone, Debug)]
pub struct Registration {
    /// One of `qbdi_sdk::abi::kind`.
    pub kind: u32,
    /// Position of an instruction callback (`abi::position`).
    pub position: u32,
    /// Priority.
    pub priority: i32,
    /// Event, access or analysis bits, by kind.
    pub flags: u32,
    /// Mnemonic glob (`""`: none).
    pub mnemonic: String,
    /// iced `Code` name (`""`: none).
    pub code: String,
    /// The function's name.
    pub name: String,
    /// Its source line.
    pub line: u32,
    /// The trampoline (its type depends on `kind`).
    pub callback: *const c_void,
}

impl Registration {
    /// What kind of registration this is, in words (`"inst_callback"`...).
    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            kind::INST => "inst_callback",
            kind::EVENT => "vm_event",
            kind::MEM_ACCESS => "mem_access",
            kind::INSTR_RULE => "instr_rule",
            kind::INIT => "plugin_init",
            kind::FINI => "plugin_fini",
            _ => "unknown",
        }
    }
}

/// An option a plugin declares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OptionInfo {
    /// The key.
    pub key: String,
    /// What it does.
    pub help: String,
    /// Its default, as the plugin describes it.
    pub default: String,
}

/// A loaded, checked plugin.
#[derive(Debug)]
pub struct Plugin {
    /// The file it was loaded from (absolute).
    pub path: PathBuf,
    /// Its name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// The qbdi-sdk version it was built with.
    pub sdk_version: String,
    /// Its ABI version `(major, minor)`.
    pub abi: (u16, u16),
    /// One line about it.
    pub description: String,
    /// Whether it allocates from the host's heap (it took the table; plugins of ABI 1.0
    /// allocate from libc's).
    pub host_heap: bool,
    /// Its registrations, in source order.
    pub registrations: Vec<Registration>,
    /// The options it accepts.
    pub options: Vec<OptionInfo>,
}

/// The file names `-p NAME` may refer to, in the order they are tried in each directory.
pub fn candidate_names(name: &str) -> [String; 3] {
    [
        format!("libqbdi_plugin_{name}.so"),
        format!("lib{name}.so"),
        format!("{name}.so"),
    ]
}

/// The directories of `QBDI_PLUGIN_PATH`, in order.
pub fn path_dirs() -> Vec<PathBuf> {
    std::env::var_os("QBDI_PLUGIN_PATH")
        .map(|v| {
            std::env::split_paths(&v)
                .filter(|p| !p.as_os_str().is_empty())
                .collect()
        })
        .unwrap_or_default()
}

/// The user's plugin directory, where `qbdi plugin install` puts plugins:
/// `$XDG_DATA_HOME/qbdi/plugins`, or `~/.local/share/qbdi/plugins` when `XDG_DATA_HOME` is
/// unset or empty (`None` without `HOME` either).
pub fn user_dir() -> Option<PathBuf> {
    let data = std::env::var_os("XDG_DATA_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".local/share"))
        })?;
    Some(data.join("qbdi").join("plugins"))
}

/// Finds the plugin file for `spec` (a path, or a name to look up): in the directories of
/// `QBDI_PLUGIN_PATH`, then the user's plugin directory ([`user_dir`]), then the directory
/// of the running executable (where the bundled plugins are built).
pub fn find(spec: &str) -> Result<PathBuf, PluginError> {
    if spec.contains('/') || spec.ends_with(".so") {
        let path = PathBuf::from(spec);
        if path.exists() {
            return Ok(std::fs::canonicalize(&path).unwrap_or(path));
        }
        return Err(PluginError::NotFound {
            name: spec.to_owned(),
            searched: vec![path],
        });
    }
    let mut dirs = path_dirs();
    dirs.extend(user_dir());
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        dirs.push(dir);
    }
    let mut searched = Vec::new();
    for dir in &dirs {
        for file in candidate_names(spec) {
            let path = dir.join(file);
            if path.is_file() {
                return Ok(std::fs::canonicalize(&path).unwrap_or(path));
            }
            searched.push(path);
        }
    }
    Err(PluginError::NotFound {
        name: spec.to_owned(),
        searched,
    })
}

/// Checks that `path` looks like an x86-64 ELF shared object before the loader sees it.
fn check_elf(path: &Path) -> Result<(), PluginError> {
    let not_elf = |why: String| PluginError::NotElf {
        path: path.to_owned(),
        why,
    };
    let head =
        crate::elf::read_head(path, 64).map_err(|e| not_elf(format!("cannot read it ({e})")))?;
    match crate::elf::parse(&head) {
        Err(NotElf::NotElf) => Err(not_elf("it is not an ELF file".into())),
        Err(NotElf::OtherMachine) => Err(not_elf("it is not a 64-bit x86-64 ELF file".into())),
        Ok(info) if info.e_type != ET_DYN => Err(not_elf(
            "it is an ELF executable or object, not a shared object".into(),
        )),
        Ok(_) => Ok(()),
    }
}

/// Copies a string of the plugin's descriptor.
///
/// # Safety
/// `s` must point into the loaded plugin's static data.
unsafe fn owned(s: StrRef) -> String {
    // SAFETY: forwarded; plugins are never unloaded.
    unsafe { s.as_str() }.into_owned()
}

/// Loads the plugin at `path` and checks its descriptor.
pub fn load(path: &Path) -> Result<Plugin, PluginError> {
    check_elf(path)?;
    let flags = libc::RTLD_NOW | libc::RTLD_LOCAL | libc::RTLD_NODELETE;
    // SAFETY: loading runs the plugin's initialisers; a qbdi plugin's are inventory's
    // node-linking constructors only. That is the trust `-p` gives the file.
    let lib = unsafe { libloading::os::unix::Library::open(Some(path), flags) }.map_err(|e| {
        PluginError::Load {
            path: path.to_owned(),
            message: e.to_string(),
        }
    })?;
    let host_heap = hand_over_heap(&lib);
    // SAFETY: the symbol, if present, is the SDK's `extern "C" fn() -> *const
    // PluginDescriptor` (the only thing exported under this name by qbdi_sdk::plugin!).
    let entry =
        unsafe { lib.get::<extern "C" fn() -> *const PluginDescriptor>(ENTRY_SYMBOL.as_bytes()) }
            .map_err(|_| PluginError::NoEntry {
            path: path.to_owned(),
        })?;
    let descriptor = entry();
    // Plugins are never unloaded: their code and data are referenced for the whole run.
    std::mem::forget(lib);
    let abi_error = |message: String| PluginError::Abi {
        path: path.to_owned(),
        message,
    };
    if descriptor.is_null() {
        return Err(abi_error("its entry point returned no descriptor".into()));
    }
    // SAFETY: a non-null descriptor pointer from the entry point; the first 16 bytes (magic,
    // versions, size) are the same in every ABI version, so they are read first, alone.
    let (magic, major, minor, size) = unsafe {
        let d = descriptor;
        (
            std::ptr::addr_of!((*d).magic).read_unaligned(),
            std::ptr::addr_of!((*d).abi_major).read_unaligned(),
            std::ptr::addr_of!((*d).abi_minor).read_unaligned(),
            std::ptr::addr_of!((*d).size).read_unaligned(),
        )
    };
    if magic != PLUGIN_MAGIC {
        return Err(abi_error(
            "its descriptor does not start with the qbdi plugin magic: it was not built with \
             qbdi-sdk"
                .into(),
        ));
    }
    if major != ABI_MAJOR || minor > ABI_MINOR {
        return Err(abi_error(format!(
            "it was built for plugin ABI {major}.{minor}, this qbdi speaks {ABI_MAJOR}.{ABI_MINOR}: \
             rebuild the plugin against this qbdi-sdk"
        )));
    }
    if (size as usize) < size_of::<PluginDescriptor>() {
        return Err(abi_error(format!(
            "its descriptor is {size} bytes, ABI {major}.{minor} needs {}",
            size_of::<PluginDescriptor>()
        )));
    }
    // SAFETY: magic, ABI and size checked: the whole descriptor is there, with this layout,
    // and lives as long as the process (the plugin is never unloaded).
    let d = unsafe { &*descriptor };
    // SAFETY: the descriptor's arrays hold the counts it says, in the plugin's static data.
    let regs: &[RawRegistration] = unsafe { slice(d.registrations, d.registration_count) };
    // SAFETY: as above.
    let opts: &[RawOptionSpec] = unsafe { slice(d.options, d.option_count) };
    // SAFETY: every string of the descriptor points into the plugin's static data.
    unsafe {
        Ok(Plugin {
            path: path.to_owned(),
            name: owned(d.name),
            version: owned(d.version),
            sdk_version: owned(d.sdk_version),
            abi: (major, minor),
            description: owned(d.description),
            host_heap,
            registrations: regs
                .iter()
                .map(|r| Registration {
                    kind: r.kind,
                    position: r.position,
                    priority: r.priority,
                    flags: r.flags,
                    mnemonic: owned(r.mnemonic),
                    code: owned(r.code),
                    name: owned(r.name),
                    line: r.line,
                    callback: r.callback,
                })
                .collect(),
            options: opts
                .iter()
                .map(|o| OptionInfo {
                    key: owned(o.key),
                    help: owned(o.help),
                    default: owned(o.default),
                })
                .collect(),
        })
    }
}

/// Hands the host's heap to a just-loaded plugin, before anything else in it is called:
/// true if it allocates from it from now on.
fn hand_over_heap(lib: &libloading::os::unix::Library) -> bool {
    let Some(table) = crate::heap::table() else {
        return false;
    };
    type SetHeap = unsafe extern "C" fn(*const HeapTable) -> u32;
    // SAFETY: the symbol, if present, is the one qbdi_sdk::plugin! exports under this name,
    // of this type (ABI 1.1); plugins of ABI 1.0 lack it.
    let Ok(set_heap) = (unsafe { lib.get::<SetHeap>(HEAP_SYMBOL.as_bytes()) }) else {
        return false;
    };
    // SAFETY: the table is the host's, static, valid for the life of the process.
    unsafe { set_heap(table) == 0 }
}

/// # Safety
/// `ptr` must be null (then `len` is ignored) or valid for `len` elements for `'a`.
unsafe fn slice<'a, T>(ptr: *const T, len: usize) -> &'a [T] {
    if ptr.is_null() || len == 0 {
        &[]
    } else {
        // SAFETY: guaranteed by the caller.
        unsafe { std::slice::from_raw_parts(ptr, len) }
    }
}

/// Plugins loaded for a run, each with its options, in load order.
pub type LoadedPlugins = Vec<(Plugin, Vec<(String, String)>)>;

/// A plugin as given on the command line: `NAME[:key=value,...]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PluginSpec {
    /// The name or path.
    pub plugin: String,
    /// Its options, in order.
    pub options: Vec<(String, String)>,
}

impl std::str::FromStr for PluginSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (plugin, opts) = match s.split_once(':') {
            Some((p, o)) => (p, Some(o)),
            None => (s, None),
        };
        if plugin.is_empty() {
            return Err(format!("'{s}': no plugin name before ':'"));
        }
        let mut options = Vec::new();
        for item in opts.into_iter().flat_map(|o| o.split(',')) {
            if item.is_empty() {
                continue;
            }
            let (k, v) = item.split_once('=').unwrap_or((item, ""));
            if k.is_empty() {
                return Err(format!(
                    "'{s}': option '{item}' has no key (write key=value)"
                ));
            }
            if k.contains(['\t', '\n']) || v.contains(['\t', '\n']) {
                return Err(format!("'{s}': options cannot contain tabs or newlines"));
            }
            options.push((k.to_owned(), v.to_owned()));
        }
        Ok(PluginSpec {
            plugin: plugin.to_owned(),
            options,
        })
    }
}

impl Plugin {
    /// Checks that every option of `spec` is one the plugin declares.
    pub fn check_options(&self, options: &[(String, String)]) -> Result<(), PluginError> {
        for (key, _) in options {
            if !self.options.iter().any(|o| &o.key == key) {
                let known: Vec<&str> = self.options.iter().map(|o| o.key.as_str()).collect();
                let message = if known.is_empty() {
                    format!("unknown option '{key}': this plugin takes no options")
                } else {
                    format!(
                        "unknown option '{key}': its options are {} (see `qbdi plugin info {}`)",
                        known.join(", "),
                        self.name
                    )
                };
                return Err(PluginError::BadOption {
                    plugin: self.name.clone(),
                    message,
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_specs_parse() {
        let s: PluginSpec = "drcov:out=a.log,regs".parse().unwrap();
        assert_eq!(s.plugin, "drcov");
        assert_eq!(
            s.options,
            vec![
                ("out".into(), "a.log".into()),
                ("regs".into(), String::new())
            ]
        );
        let s: PluginSpec = "./x/libp.so".parse().unwrap();
        assert_eq!(s.plugin, "./x/libp.so");
        assert!(s.options.is_empty());
        assert!(":a=b".parse::<PluginSpec>().is_err());
        assert!("p:=v".parse::<PluginSpec>().is_err());
    }

    #[test]
    fn missing_and_non_elf_files_are_named() {
        let e = find("/nonexistent/libp.so").unwrap_err();
        assert!(e.to_string().contains("/nonexistent/libp.so"), "{e}");
        let e = load(Path::new("/etc/passwd")).unwrap_err();
        assert!(matches!(e, PluginError::NotElf { .. }), "{e}");
        assert!(e.to_string().contains("/etc/passwd"));
        let e = find("no-such-plugin-name").unwrap_err();
        assert!(
            e.to_string()
                .contains("libqbdi_plugin_no-such-plugin-name.so"),
            "{e}"
        );
    }
}
