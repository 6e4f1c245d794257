//! Compile-time behaviour of the attribute macros: each mistake is refused with its message
//! on the offending token (tests/ui/fail/*.rs against their .stderr), and the accepted forms
//! compile and register (tests/ui/pass/*.rs, which also run).
//!
//! After a deliberate change of a message: `TRYBUILD=overwrite cargo test -p qbdi-sdk --test
//! macros`, then read the new .stderr files.

#[test]
fn ui() {
    // One TestCases: trybuild builds the SDK once for all the cases.
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/ui/fail/*.rs");
    cases.pass("tests/ui/pass/*.rs");
}
