//! The six attributes and what each one registers.

/// Which attribute is being expanded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `#[inst_callback]`.
    Inst,
    /// `#[mem_access]`.
    MemAccess,
    /// `#[vm_event]`.
    Event,
    /// `#[instr_rule]`.
    Rule,
    /// `#[plugin_init]`.
    Init,
    /// `#[plugin_fini]`.
    Fini,
}

impl Kind {
    /// The attribute's name (`inst_callback`).
    pub fn name(self) -> &'static str {
        match self {
            Kind::Inst => "inst_callback",
            Kind::MemAccess => "mem_access",
            Kind::Event => "vm_event",
            Kind::Rule => "instr_rule",
            Kind::Init => "plugin_init",
            Kind::Fini => "plugin_fini",
        }
    }

    /// The attribute with its article, to start a sentence about its functions
    /// ("an #[inst_callback]", "a #[vm_event]").
    pub fn a(self) -> String {
        let article = if self.name().starts_with(['a', 'e', 'i', 'o', 'u']) {
            "an"
        } else {
            "a"
        };
        format!("{article} #[{}]", self.name())
    }

    /// The `key = value` arguments the attribute accepts.
    pub fn keys(self) -> &'static [&'static str] {
        match self {
            Kind::Inst => &["priority", "mnemonic", "code"],
            Kind::MemAccess => &["priority"],
            Kind::Rule => &["analysis"],
            Kind::Event | Kind::Init | Kind::Fini => &[],
        }
    }
}
