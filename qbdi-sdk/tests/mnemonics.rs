//! The mnemonic globs `#[inst_callback(mnemonic = "..")]` accepts at compile time are the
//! ones the engine accepts at run time (`qbdi_core::mnemonic_pattern_is_valid`), and the
//! ones it refuses (tests/ui/fail/mnemonic_no_match.rs) the engine refuses too.

use qbdi_sdk::prelude::*;
use qbdi_sdk::private::{Registration, inventory};

macro_rules! accepted {
    ($($name:ident = $glob:literal),* $(,)?) => {
        $(
            #[inst_callback(preinst, mnemonic = $glob)]
            fn $name(_vm: &mut VmRef, _gpr: &mut GprState, _fpr: &mut FprState) -> VmAction {
                VmAction::Continue
            }
        )*
        const ACCEPTED: &[&str] = &[$($glob),*];
    };
}

// Each of these compiled, so the macro accepted it.
accepted!(
    exact = "CALL",
    lower_case = "ret",
    star = "CALL*",
    questions = "J??",
    inner_star = "*MOV*",
    one_char_and_star = "?MOVAPS*",
    everything = "*",
    long = "VPBROADCASTMW2D",
    digits = "CVTSI2SD",
);

#[test]
fn accepted_globs_match_an_engine_mnemonic() {
    let registered: Vec<&str> = inventory::iter::<Registration>
        .into_iter()
        .map(|r| r.mnemonic)
        .collect();
    assert_eq!(registered.len(), ACCEPTED.len());
    for glob in ACCEPTED {
        assert!(registered.contains(glob), "{glob} registered");
        assert!(qbdi_core::mnemonic_pattern_is_valid(glob), "{glob}");
    }
}

#[test]
fn refused_globs_match_no_engine_mnemonic() {
    let ui = include_str!("ui/fail/mnemonic_no_match.rs");
    for glob in ["CALLL", "XYZ*"] {
        assert!(
            ui.contains(&format!("mnemonic = \"{glob}\"")),
            "{glob} is a compile-fail case"
        );
        assert!(!qbdi_core::mnemonic_pattern_is_valid(glob), "{glob}");
    }
}
