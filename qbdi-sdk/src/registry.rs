//! The plugin's own registry (one per cdylib: every plugin links its own copy of this rlib)
//! and the descriptor its entry point returns.
//!
//! The attribute macros expand to an `inventory::submit!` of a [`Registration`]; the entry
//! point exported by [`plugin!`](crate::plugin) turns them, once, into the `#[repr(C)]`
//! [`PluginDescriptor`] the host reads.

use std::ffi::c_void;
use std::sync::OnceLock;

use crate::abi::{
    ABI_MAJOR, ABI_MINOR, PLUGIN_MAGIC, PluginDescriptor, RawEventFn, RawFiniFn, RawInitFn,
    RawInstFn, RawOptionSpec, RawRegistration, RawRuleFn, StrRef, kind, position,
};

/// The trampoline of a registration, typed.
#[derive(Clone, Copy, Debug)]
pub enum Trampoline {
    /// `#[inst_callback]`.
    Inst(RawInstFn),
    /// `#[mem_access]`.
    MemAccess(RawInstFn),
    /// `#[vm_event]`.
    Event(RawEventFn),
    /// `#[instr_rule]`.
    Rule(RawRuleFn),
    /// `#[plugin_init]`.
    Init(RawInitFn),
    /// `#[plugin_fini]`.
    Fini(RawFiniFn),
}

/// One registered function (what an attribute macro submits).
#[derive(Clone, Copy, Debug)]
pub struct Registration {
    /// The function's name.
    pub name: &'static str,
    /// Its source line (registrations are ordered by line).
    pub line: u32,
    /// PreInst (false) or PostInst (true), for instruction callbacks.
    pub post_inst: bool,
    /// Priority (instruction and memory callbacks).
    pub priority: i32,
    /// `VmEvent`, `MemoryAccessType` or `AnalysisType` bits, by kind.
    pub flags: u32,
    /// Mnemonic glob (`""`: every instruction).
    pub mnemonic: &'static str,
    /// iced-x86 `Code` name (`""`: any).
    pub code: &'static str,
    /// The trampoline.
    pub trampoline: Trampoline,
}

inventory::collect!(Registration);

/// One option of the plugin, as declared in [`plugin!`](crate::plugin).
#[derive(Clone, Copy, Debug)]
pub struct OptionSpec {
    /// The key.
    pub key: &'static str,
    /// What it does.
    pub help: &'static str,
    /// The default, as users should read it (`""`: none).
    pub default: &'static str,
}

/// What [`plugin!`](crate::plugin) declares.
#[derive(Debug)]
pub struct PluginInfo {
    /// The plugin's name.
    pub name: &'static str,
    /// Its version.
    pub version: &'static str,
    /// One line about it.
    pub description: &'static str,
    /// Its options.
    pub options: &'static [OptionSpec],
}

/// A `PluginDescriptor` pointer that may live in a static.
struct DescriptorPtr(&'static PluginDescriptor);

static DESCRIPTOR: OnceLock<DescriptorPtr> = OnceLock::new();

/// The descriptor of this plugin, built on the first call (the entry point's body).
pub fn descriptor(info: &'static PluginInfo) -> *const PluginDescriptor {
    let d = DESCRIPTOR.get_or_init(|| {
        crate::panic::install_hook();
        let mut regs: Vec<&Registration> = inventory::iter::<Registration>.into_iter().collect();
        regs.sort_by_key(|r| (r.line, r.name));
        let raw: Vec<RawRegistration> = regs.iter().map(|r| raw_registration(r)).collect();
        let options: Vec<RawOptionSpec> = info
            .options
            .iter()
            .map(|o| RawOptionSpec {
                key: StrRef::new(o.key),
                help: StrRef::new(o.help),
                default: StrRef::new(o.default),
            })
            .collect();
        let raw = Box::leak(raw.into_boxed_slice());
        let options = Box::leak(options.into_boxed_slice());
        DescriptorPtr(Box::leak(Box::new(PluginDescriptor {
            magic: PLUGIN_MAGIC,
            abi_major: ABI_MAJOR,
            abi_minor: ABI_MINOR,
            size: size_of::<PluginDescriptor>() as u32,
            name: StrRef::new(info.name),
            version: StrRef::new(info.version),
            sdk_version: StrRef::new(env!("CARGO_PKG_VERSION")),
            description: StrRef::new(info.description),
            registrations: raw.as_ptr(),
            registration_count: raw.len(),
            options: options.as_ptr(),
            option_count: options.len(),
        })))
    });
    d.0
}

fn raw_registration(r: &Registration) -> RawRegistration {
    let (k, callback) = match r.trampoline {
        Trampoline::Inst(f) => (kind::INST, f as *const c_void),
        Trampoline::MemAccess(f) => (kind::MEM_ACCESS, f as *const c_void),
        Trampoline::Event(f) => (kind::EVENT, f as *const c_void),
        Trampoline::Rule(f) => (kind::INSTR_RULE, f as *const c_void),
        Trampoline::Init(f) => (kind::INIT, f as *const c_void),
        Trampoline::Fini(f) => (kind::FINI, f as *const c_void),
    };
    RawRegistration {
        kind: k,
        position: if r.post_inst {
            position::POST_INST
        } else {
            position::PRE_INST
        },
        priority: r.priority,
        flags: r.flags,
        mnemonic: StrRef::new(r.mnemonic),
        code: StrRef::new(r.code),
        name: StrRef::new(r.name),
        line: r.line,
        callback,
    }
}
