//! Conversions of the boundary's `#[repr(C)]` records into the engine's Rust types, on the
//! plugin's side (the plugin owns what it builds; nothing is freed across the boundary).

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use qbdi_core::{
    AnalysisType, ConditionType, InstAnalysis, OperandAnalysis, OperandFlag, OperandType,
    RegisterAccessType,
};

use crate::abi::{RawInstAnalysis, StrRef};

/// Interns `s` (mnemonics and register names: a few thousand at most) as a `&'static str`.
fn intern(s: &str) -> &'static str {
    static TABLE: OnceLock<Mutex<HashMap<String, &'static str>>> = OnceLock::new();
    let mut table = TABLE
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(&interned) = table.get(s) {
        return interned;
    }
    let leaked: &'static str = Box::leak(s.to_owned().into_boxed_str());
    table.insert(s.to_owned(), leaked);
    leaked
}

fn condition(v: u8) -> ConditionType {
    use ConditionType as C;
    [
        C::None,
        C::Always,
        C::Never,
        C::Equals,
        C::NotEquals,
        C::Above,
        C::BelowEquals,
        C::AboveEquals,
        C::Below,
        C::Great,
        C::LessEquals,
        C::GreatEquals,
        C::Less,
        C::Even,
        C::Odd,
        C::Overflow,
        C::NotOverflow,
        C::Sign,
        C::NotSign,
    ]
    .into_iter()
    .find(|c| *c as u8 == v)
    .unwrap_or(C::None)
}

fn operand_type(v: u8) -> OperandType {
    use OperandType as T;
    [T::Invalid, T::Imm, T::Gpr, T::Pred, T::Fpr, T::Seg]
        .into_iter()
        .find(|t| *t as u8 == v)
        .unwrap_or(T::Invalid)
}

/// # Safety
/// `s` must be valid for reads (host-owned, during the call).
unsafe fn owned(s: StrRef) -> String {
    // SAFETY: forwarded.
    unsafe { s.as_str() }.into_owned()
}

/// Builds the plugin's own `InstAnalysis` from the host's record.
///
/// # Safety
/// Every pointer in `raw` must be valid for reads for the duration of this call (the host
/// guarantees it for the call that handed `raw` over).
pub(crate) unsafe fn inst_analysis(raw: &RawInstAnalysis) -> InstAnalysis {
    let bool_at = |i: u32| raw.bools & (1 << i) != 0;
    let operands = if raw.operands.is_null() || raw.operand_count == 0 {
        Vec::new()
    } else {
        // SAFETY: the host passes `operand_count` records at `operands`.
        let ops = unsafe { std::slice::from_raw_parts(raw.operands, raw.operand_count) };
        ops.iter()
            .map(|o| OperandAnalysis {
                op_type: operand_type(o.op_type),
                flag: OperandFlag::from_bits_retain(o.flag),
                value: o.value,
                size: o.size,
                reg_off: o.reg_off,
                reg_ctx_idx: o.reg_ctx_idx,
                // SAFETY: host-owned string, valid during the call.
                reg_name: intern(&unsafe { o.reg_name.as_str() }),
                reg_access: RegisterAccessType::from_bits_retain(o.reg_access),
            })
            .collect()
    };
    InstAnalysis {
        address: raw.address,
        inst_size: raw.inst_size,
        // SAFETY: host-owned strings, valid during the call (all four below).
        mnemonic: intern(&unsafe { raw.mnemonic.as_str() }),
        affect_control_flow: bool_at(0),
        is_branch: bool_at(1),
        is_call: bool_at(2),
        is_return: bool_at(3),
        is_compare: bool_at(4),
        is_predicable: bool_at(5),
        is_move_imm: bool_at(6),
        may_load: bool_at(7),
        may_store: bool_at(8),
        load_size: raw.load_size,
        store_size: raw.store_size,
        condition: condition(raw.condition),
        disassembly: unsafe { owned(raw.disassembly) },
        flags_access: RegisterAccessType::from_bits_retain(raw.flags_access),
        operands,
        symbol_name: unsafe { owned(raw.symbol_name) },
        symbol_offset: raw.symbol_offset,
        module_name: unsafe { owned(raw.module_name) },
        analysis_type: AnalysisType::from_bits_retain(raw.analysis_type),
    }
}

/// The analyses this plugin has asked for, kept for the life of the process: the SDK's
/// `inst_analysis` returns references into it, as the engine's does into its own cache.
pub(crate) fn cached(
    address: u64,
    analysis: u32,
    build: impl FnOnce() -> Option<InstAnalysis>,
) -> Option<&'static InstAnalysis> {
    static CACHE: OnceLock<Mutex<HashMap<(u64, u32), &'static InstAnalysis>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(&a) = cache
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&(address, analysis))
    {
        return Some(a);
    }
    let built: &'static InstAnalysis = Box::leak(Box::new(build()?));
    cache
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert((address, analysis), built);
    Some(built)
}
