//! Value classes: `InstAnalysis`, `OperandAnalysis`, `MemoryAccess`, `Range`, `MemoryMap`,
//! `InstrRuleDataCBK`. Each is a snapshot (a copy of the engine's data), so it stays valid
//! after the callback that produced it.

use pyo3::prelude::*;
use pyo3::types::PyTuple;
use qbdi_core::{AnalysisType, Rword};

use crate::enums::{
    ConditionType, InstPosition, MemoryAccessFlags, MemoryAccessType, OperandFlag, OperandType,
    Permission, RegisterAccessType, flag_value,
};

/// One operand of an analysed instruction (QBDI's OperandAnalysis). `regName` is upper case
/// as in QBDI (`"RAX"`); `value` of a register is iced-x86's register number.
#[pyclass(frozen, module = "pyqbdi", name = "OperandAnalysis")]
#[allow(non_snake_case)]
pub struct OperandAnalysis {
    #[pyo3(get, name = "type")]
    op_type: OperandType,
    #[pyo3(get)]
    flag: OperandFlag,
    #[pyo3(get)]
    value: i64,
    #[pyo3(get)]
    size: u16,
    #[pyo3(get)]
    regOff: u8,
    #[pyo3(get)]
    regCtxIdx: i16,
    #[pyo3(get)]
    regName: Option<String>,
    #[pyo3(get)]
    regAccess: RegisterAccessType,
}

#[pymethods]
impl OperandAnalysis {
    fn __repr__(&self) -> String {
        format!(
            "<OperandAnalysis type={} flag={:#x} value={:#x} size={} regName={:?}>",
            self.op_type.v,
            self.flag.v,
            self.value,
            self.size,
            self.regName.as_deref().unwrap_or("")
        )
    }
}

/// The description of one instruction (QBDI's InstAnalysis). Fields of analyses that were
/// not asked for are None, as in PyQBDI. `mnemonic` is iced-x86's (`"CALL"`), not LLVM's.
#[pyclass(frozen, module = "pyqbdi", name = "InstAnalysis")]
#[allow(non_snake_case)]
pub struct InstAnalysis {
    #[pyo3(get)]
    address: Rword,
    #[pyo3(get)]
    instSize: u32,
    #[pyo3(get)]
    mnemonic: String,
    #[pyo3(get)]
    affectControlFlow: bool,
    #[pyo3(get)]
    isBranch: bool,
    #[pyo3(get)]
    isCall: bool,
    #[pyo3(get)]
    isReturn: bool,
    #[pyo3(get)]
    isCompare: bool,
    #[pyo3(get)]
    isPredicable: bool,
    #[pyo3(get)]
    isMoveImm: bool,
    #[pyo3(get)]
    mayLoad: bool,
    #[pyo3(get)]
    mayStore: bool,
    #[pyo3(get)]
    loadSize: u32,
    #[pyo3(get)]
    storeSize: u32,
    #[pyo3(get)]
    condition: ConditionType,
    #[pyo3(get)]
    disassembly: Option<String>,
    #[pyo3(get)]
    flagsAccess: Option<RegisterAccessType>,
    #[pyo3(get)]
    numOperands: Option<usize>,
    #[pyo3(get)]
    operands: Option<Py<PyAny>>,
    #[pyo3(get)]
    symbolName: Option<String>,
    #[pyo3(get)]
    symbolOffset: Option<u32>,
    #[pyo3(get)]
    moduleName: Option<String>,
    #[pyo3(get)]
    patchAddress: Option<Rword>,
    #[pyo3(get)]
    patchSize: Option<u32>,
    #[pyo3(get)]
    patchInstOffset: Option<u32>,
    #[pyo3(get)]
    patchInstSize: Option<u32>,
}

impl InstAnalysis {
    /// A snapshot of `a` with the parts of `what`.
    pub fn from_core(
        py: Python<'_>,
        a: &qbdi_core::InstAnalysis,
        what: AnalysisType,
    ) -> PyResult<InstAnalysis> {
        let ops = what.contains(AnalysisType::OPERANDS);
        let sym = what.contains(AnalysisType::SYMBOL);
        let operands = if ops {
            let list: Vec<OperandAnalysis> = a
                .operands
                .iter()
                .map(|o| OperandAnalysis {
                    op_type: OperandType::new(o.op_type as u32),
                    flag: OperandFlag::new(u32::from(o.flag.bits())),
                    value: o.value,
                    size: o.size,
                    regOff: o.reg_off,
                    regCtxIdx: o.reg_ctx_idx,
                    regName: (!o.reg_name.is_empty()).then(|| o.reg_name.to_uppercase()),
                    regAccess: RegisterAccessType::new(u32::from(o.reg_access.bits())),
                })
                .collect();
            Some(pyo3::types::PyList::new(py, list)?.into_any().unbind())
        } else {
            None
        };
        Ok(InstAnalysis {
            address: a.address,
            instSize: a.inst_size,
            mnemonic: a.mnemonic.to_owned(),
            affectControlFlow: a.affect_control_flow,
            isBranch: a.is_branch,
            isCall: a.is_call,
            isReturn: a.is_return,
            isCompare: a.is_compare,
            isPredicable: a.is_predicable,
            isMoveImm: a.is_move_imm,
            mayLoad: a.may_load,
            mayStore: a.may_store,
            loadSize: a.load_size,
            storeSize: a.store_size,
            condition: ConditionType::new(a.condition as u32),
            disassembly: what
                .contains(AnalysisType::DISASSEMBLY)
                .then(|| a.disassembly.clone()),
            flagsAccess: ops.then(|| RegisterAccessType::new(u32::from(a.flags_access.bits()))),
            numOperands: ops.then_some(a.operands.len()),
            operands,
            symbolName: sym.then(|| a.symbol_name.clone()),
            symbolOffset: sym.then_some(a.symbol_offset),
            moduleName: sym.then(|| a.module_name.clone()),
            patchAddress: None,
            patchSize: None,
            patchInstOffset: None,
            patchInstSize: None,
        })
    }
}

#[pymethods]
impl InstAnalysis {
    /// Deprecated alias of `symbolName` (PyQBDI keeps it).
    #[getter]
    fn symbol(&self) -> Option<String> {
        self.symbolName.clone()
    }

    /// Deprecated alias of `moduleName` (PyQBDI keeps it).
    #[getter]
    fn module(&self) -> Option<String> {
        self.moduleName.clone()
    }

    fn __repr__(&self) -> String {
        format!(
            "<InstAnalysis {:#x}: {}>",
            self.address,
            self.disassembly.as_deref().unwrap_or(&self.mnemonic)
        )
    }
}

/// One memory access (QBDI's MemoryAccess).
#[pyclass(module = "pyqbdi", name = "MemoryAccess")]
#[derive(Clone)]
#[allow(non_snake_case)]
pub struct MemoryAccess {
    #[pyo3(get, set)]
    instAddress: Rword,
    #[pyo3(get, set)]
    accessAddress: Rword,
    #[pyo3(get, set)]
    value: Rword,
    #[pyo3(get, set)]
    size: u16,
    #[pyo3(get, set, name = "type")]
    access_type: MemoryAccessType,
    #[pyo3(get, set)]
    flags: MemoryAccessFlags,
}

impl MemoryAccess {
    /// A copy of the engine's record.
    pub fn from_core(m: &qbdi_core::MemoryAccess) -> Self {
        MemoryAccess {
            instAddress: m.inst_address,
            accessAddress: m.access_address,
            value: m.value,
            size: m.size,
            access_type: MemoryAccessType::new(u32::from(m.access_type.bits())),
            flags: MemoryAccessFlags::new(u32::from(m.flags.bits())),
        }
    }
}

#[pymethods]
impl MemoryAccess {
    #[new]
    fn py_new() -> Self {
        MemoryAccess::from_core(&qbdi_core::MemoryAccess::default())
    }

    fn __repr__(&self) -> String {
        format!(
            "<MemoryAccess inst={:#x} addr={:#x} value={:#x} size={} type={}>",
            self.instAddress, self.accessAddress, self.value, self.size, self.access_type.v
        )
    }
}

/// A half-open address range `[start, end)`.
#[pyclass(module = "pyqbdi", name = "Range", from_py_object)]
#[derive(Clone, Copy)]
pub struct Range {
    #[pyo3(get, set)]
    start: Rword,
    #[pyo3(get, set)]
    end: Rword,
}

impl Range {
    /// The range `[start, end)`.
    pub fn new(start: Rword, end: Rword) -> Self {
        Range { start, end }
    }

    fn core(&self) -> qbdi_core::Range {
        qbdi_core::Range::new(self.start, self.end)
    }
}

#[pymethods]
impl Range {
    #[new]
    fn py_new(start: Rword, end: Rword) -> Self {
        Range { start, end }
    }

    /// Its size (end - start).
    fn size(&self) -> Rword {
        self.core().size()
    }

    /// Whether it contains an address, or a whole range.
    fn contains(&self, what: &Bound<'_, PyAny>) -> PyResult<bool> {
        if let Ok(r) = what.cast::<Range>() {
            let r = *r.borrow();
            return Ok(self.start <= r.start && r.end <= self.end);
        }
        Ok(self.core().contains(what.extract()?))
    }

    fn __contains__(&self, what: &Bound<'_, PyAny>) -> PyResult<bool> {
        self.contains(what)
    }

    /// Whether the two ranges share an address.
    fn overlaps(&self, r: Range) -> bool {
        self.core().overlaps(&r.core())
    }

    /// The common part of the two ranges.
    fn intersect(&self, r: Range) -> Range {
        Range {
            start: self.start.max(r.start),
            end: self.end.min(r.end),
        }
    }

    fn __getitem__(&self, i: isize) -> PyResult<Rword> {
        match i {
            0 => Ok(self.start),
            1 => Ok(self.end),
            _ => Err(pyo3::exceptions::PyIndexError::new_err(
                "a Range has 2 items",
            )),
        }
    }

    fn __eq__(&self, other: Range) -> bool {
        (self.start, self.end) == (other.start, other.end)
    }

    fn __str__(&self) -> String {
        format!("({:#x}, {:#x})", self.start, self.end)
    }

    fn __repr__(&self) -> String {
        format!("<Range ({:#x}, {:#x})>", self.start, self.end)
    }
}

/// One mapping of a process (QBDI's MemoryMap).
#[pyclass(module = "pyqbdi", name = "MemoryMap")]
pub struct MemoryMap {
    #[pyo3(get, set)]
    range: Range,
    #[pyo3(get, set)]
    permission: Permission,
    #[pyo3(get, set)]
    name: String,
}

impl MemoryMap {
    /// A copy of the engine's record; with `full_path` false, pseudo maps (`[stack]`) get
    /// an empty name, as in QBDI.
    pub fn from_core(m: &qbdi_core::MemoryMap, full_path: bool) -> Self {
        let name = if full_path || !m.name.starts_with('[') {
            m.name.clone()
        } else {
            String::new()
        };
        MemoryMap {
            range: Range::new(m.range.start, m.range.end),
            permission: Permission::new(u32::from(m.permission.bits())),
            name,
        }
    }
}

#[pymethods]
impl MemoryMap {
    fn __repr__(&self) -> String {
        format!(
            "<MemoryMap [{:x}, {:x}), {}, \"{}\">",
            self.range.start,
            self.range.end,
            self.permission.display(),
            self.name
        )
    }
}

/// A callback an instrumentation rule attaches to an instruction.
#[pyclass(module = "pyqbdi", name = "InstrRuleDataCBK")]
pub struct InstrRuleDataCBK {
    #[pyo3(get, set)]
    pub cbk: Py<PyAny>,
    #[pyo3(get, set)]
    pub data: Py<PyAny>,
    pub position: u32,
    #[pyo3(get, set)]
    pub priority: i32,
}

#[pymethods]
impl InstrRuleDataCBK {
    #[new]
    #[pyo3(signature = (cbk, data, position, priority = None))]
    fn py_new(
        cbk: Py<PyAny>,
        data: Py<PyAny>,
        position: &Bound<'_, PyAny>,
        priority: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        Ok(InstrRuleDataCBK {
            cbk,
            data,
            position: flag_value(position)?,
            priority: match priority {
                Some(p) => flag_value(p)? as i32,
                None => 0,
            },
        })
    }

    /// PREINST or POSTINST.
    #[getter]
    fn position(&self) -> InstPosition {
        InstPosition::new(self.position)
    }

    #[setter]
    fn set_position(&mut self, value: &Bound<'_, PyAny>) -> PyResult<()> {
        self.position = flag_value(value)?;
        Ok(())
    }

    fn __getnewargs__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        PyTuple::new(
            py,
            [
                self.cbk.clone_ref(py),
                self.data.clone_ref(py),
                InstPosition::new(self.position)
                    .into_pyobject(py)?
                    .into_any()
                    .unbind(),
            ],
        )
    }
}
