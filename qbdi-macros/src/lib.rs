//! Attribute macros of the plugin SDK. Issue 4 fills this crate; it exports nothing yet.
