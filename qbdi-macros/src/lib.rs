//! Attribute macros of the QBDI-rs plugin SDK (placeholder: passes items through).
use proc_macro::TokenStream;

#[proc_macro_attribute]
pub fn inst_callback(_a: TokenStream, item: TokenStream) -> TokenStream {
    item
}
#[proc_macro_attribute]
pub fn vm_event(_a: TokenStream, item: TokenStream) -> TokenStream {
    item
}
#[proc_macro_attribute]
pub fn mem_access(_a: TokenStream, item: TokenStream) -> TokenStream {
    item
}
#[proc_macro_attribute]
pub fn instr_rule(_a: TokenStream, item: TokenStream) -> TokenStream {
    item
}
#[proc_macro_attribute]
pub fn plugin_init(_a: TokenStream, item: TokenStream) -> TokenStream {
    item
}
#[proc_macro_attribute]
pub fn plugin_fini(_a: TokenStream, item: TokenStream) -> TokenStream {
    item
}
