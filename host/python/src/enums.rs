//! PyQBDI's enums and flag sets (`VMAction`, `VMEvent`, `Options`, ...): each one a small
//! immutable class holding an integer, with its values as class attributes and as module
//! constants (`pyqbdi.CONTINUE`, `pyqbdi.BASIC_BLOCK_ENTRY`), as pybind11's enums are.
//!
//! They combine with `|`, `&`, `^`, compare equal to each other and to plain integers, and
//! convert with `int()`; `repr` is `<VMEvent.BASIC_BLOCK_ENTRY: 4>` and `str`
//! `VMEvent.BASIC_BLOCK_ENTRY|BASIC_BLOCK_EXIT`, as PyQBDI prints them. Functions taking one
//! accept a plain integer too ([`flag_value`]).

use pyo3::prelude::*;
use pyo3::types::PyInt;

/// Defines one enum class: `(Class, "python name", [(ATTRIBUTE, value), ...])`.
macro_rules! qbdi_enum {
    ($(#[$doc:meta])* $name:ident, $pyname:literal, [$(($attr:ident, $value:expr)),* $(,)?]) => {
        $(#[$doc])*
        #[pyclass(frozen, module = "pyqbdi", name = $pyname, from_py_object)]
        #[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
        pub struct $name {
            /// The integer value.
            pub v: u32,
        }

        impl $name {
            /// The names and values of the class, in declaration order.
            pub const VALUES: &'static [(&'static str, u32)] = &[$((stringify!($attr), $value as u32)),*];

            /// The value as a Python object.
            pub fn new(v: u32) -> Self {
                $name { v }
            }

            /// `Class.NAME`, as `str()` shows it.
            pub fn display(&self) -> String {
                format!("{}.{}", $pyname, name_of(Self::VALUES, self.v))
            }

            /// Adds the values to the module as constants.
            pub fn add_constants(m: &Bound<'_, PyModule>) -> PyResult<()> {
                for (n, v) in Self::VALUES {
                    m.add(*n, $name { v: *v })?;
                }
                Ok(())
            }
        }

        #[allow(non_snake_case)]
        #[pymethods]
        impl $name {
            #[new]
            fn py_new(value: u64) -> Self {
                $name { v: value as u32 }
            }
            $(
                #[classattr]
                fn $attr() -> Self {
                    $name { v: $value as u32 }
                }
            )*
            /// The integer value.
            #[getter]
            fn value(&self) -> u32 {
                self.v
            }
            /// The name (`A|B` for a combination, as PyQBDI prints flag sets).
            #[getter]
            fn name(&self) -> String {
                name_of(Self::VALUES, self.v)
            }
            fn __int__(&self) -> u32 {
                self.v
            }
            fn __index__(&self) -> u32 {
                self.v
            }
            fn __repr__(&self) -> String {
                format!("<{}.{}: {}>", $pyname, name_of(Self::VALUES, self.v), self.v)
            }
            fn __str__(&self) -> String {
                self.display()
            }
            fn __or__(&self, other: &Bound<'_, PyAny>) -> PyResult<Self> {
                Ok($name { v: self.v | flag_value(other)? })
            }
            fn __ror__(&self, other: &Bound<'_, PyAny>) -> PyResult<Self> {
                self.__or__(other)
            }
            fn __and__(&self, other: &Bound<'_, PyAny>) -> PyResult<Self> {
                Ok($name { v: self.v & flag_value(other)? })
            }
            fn __rand__(&self, other: &Bound<'_, PyAny>) -> PyResult<Self> {
                self.__and__(other)
            }
            fn __xor__(&self, other: &Bound<'_, PyAny>) -> PyResult<Self> {
                Ok($name { v: self.v ^ flag_value(other)? })
            }
            fn __invert__(&self) -> Self {
                $name { v: !self.v }
            }
            fn __bool__(&self) -> bool {
                self.v != 0
            }
            fn __richcmp__(
                &self,
                other: &Bound<'_, PyAny>,
                op: pyo3::basic::CompareOp,
            ) -> PyResult<Py<PyAny>> {
                let py = other.py();
                let Ok(o) = flag_value(other) else {
                    return Ok(py.NotImplemented());
                };
                Ok(pyo3::types::PyBool::new(py, op.matches(self.v.cmp(&o))).to_owned().into_any().unbind())
            }
            fn __hash__(&self) -> u64 {
                u64::from(self.v)
            }
            fn __getstate__(&self) -> u32 {
                self.v
            }
            fn __getnewargs__(&self) -> (u32,) {
                (self.v,)
            }
        }
    };
}

/// A flag set's name: its value's name, else the names of its bits joined with `|`.
fn name_of(values: &[(&str, u32)], v: u32) -> String {
    if let Some((n, _)) = values.iter().find(|(_, x)| *x == v) {
        return (*n).to_owned();
    }
    let mut parts = Vec::new();
    let mut rest = v;
    for (n, x) in values {
        if *x != 0 && x.is_power_of_two() && v & x == *x {
            parts.push(*n);
            rest &= !x;
        }
    }
    if parts.is_empty() || rest != 0 {
        return format!("{v:#x}");
    }
    parts.join("|")
}

/// The integer value of an enum object or of a plain integer.
pub fn flag_value(ob: &Bound<'_, PyAny>) -> PyResult<u32> {
    if let Ok(i) = ob.cast::<PyInt>() {
        return Ok(i.extract::<i64>()? as u32);
    }
    macro_rules! try_class {
        ($($t:ty),*) => {
            $(if let Ok(e) = ob.cast::<$t>() {
                return Ok(e.get().v);
            })*
        };
    }
    try_class!(
        VMAction,
        VMEvent,
        InstPosition,
        AnalysisType,
        Options,
        MemoryAccessType,
        MemoryAccessFlags,
        OperandType,
        OperandFlag,
        RegisterAccessType,
        ConditionType,
        Permission,
        CallbackPriority,
        VMError,
        LogPriority
    );
    Ok(ob.call_method0("__int__")?.extract::<i64>()? as u32)
}

qbdi_enum!(
    /// What a callback asks the VM to do next (the largest of several wins).
    VMAction, "VMAction",
    [(CONTINUE, 0), (SKIP_INST, 1), (SKIP_PATCH, 2), (BREAK_TO_VM, 3), (STOP, 4)]
);
qbdi_enum!(
    /// VM events (a flag set).
    VMEvent, "VMEvent",
    [
        (NO_EVENT, 0), (SEQUENCE_ENTRY, 1), (SEQUENCE_EXIT, 2), (BASIC_BLOCK_ENTRY, 4),
        (BASIC_BLOCK_EXIT, 8), (BASIC_BLOCK_NEW, 0x10), (EXEC_TRANSFER_CALL, 0x20),
        (EXEC_TRANSFER_RETURN, 0x40), (SYSCALL_ENTRY, 0x80), (SYSCALL_EXIT, 0x100),
        (SIGNAL, 0x200),
    ]
);
qbdi_enum!(
    /// Where an instruction callback runs.
    InstPosition, "InstPosition", [(PREINST, 0), (POSTINST, 1)]
);
qbdi_enum!(
    /// Which parts of an InstAnalysis to compute (a flag set).
    AnalysisType, "AnalysisType",
    [
        (ANALYSIS_INSTRUCTION, 1), (ANALYSIS_DISASSEMBLY, 2), (ANALYSIS_OPERANDS, 4),
        (ANALYSIS_SYMBOL, 8), (ANALYSIS_JIT, 0x10),
    ]
);
qbdi_enum!(
    /// VM options (a flag set).
    Options, "Options",
    [
        (NO_OPT, 0), (OPT_DISABLE_FPR, 1), (OPT_DISABLE_OPTIONAL_FPR, 2),
        (OPT_DISABLE_MEMORYACCESS_VALUE, 4), (OPT_DISABLE_ERRNO_BACKUP, 8),
        (OPT_ATT_SYNTAX, 1 << 24), (OPT_ENABLE_FS_GS, 1 << 25),
    ]
);
qbdi_enum!(
    /// Memory read, write or both.
    MemoryAccessType, "MemoryAccessType",
    [(MEMORY_READ, 1), (MEMORY_WRITE, 2), (MEMORY_READ_WRITE, 3)]
);
qbdi_enum!(
    /// What is approximate about a memory access (a flag set).
    MemoryAccessFlags, "MemoryAccessFlags",
    [(MEMORY_NO_FLAGS, 0), (MEMORY_UNKNOWN_SIZE, 1), (MEMORY_MINIMUM_SIZE, 2), (MEMORY_UNKNOWN_VALUE, 4)]
);
qbdi_enum!(
    /// What an operand is.
    OperandType, "OperandType",
    [
        (OPERAND_INVALID, 0), (OPERAND_IMM, 1), (OPERAND_GPR, 2), (OPERAND_PRED, 3),
        (OPERAND_FPR, 4), (OPERAND_SEG, 5),
    ]
);
qbdi_enum!(
    /// Properties of an operand (a flag set).
    OperandFlag, "OperandFlag",
    [
        (OPERANDFLAG_NONE, 0), (OPERANDFLAG_ADDR, 1), (OPERANDFLAG_PCREL, 2),
        (OPERANDFLAG_UNDEFINED_EFFECT, 4), (OPERANDFLAG_IMPLICIT, 8),
    ]
);
qbdi_enum!(
    /// How a register is used.
    RegisterAccessType, "RegisterAccessType",
    [(REGISTER_UNUSED, 0), (REGISTER_READ, 1), (REGISTER_WRITE, 2), (REGISTER_READ_WRITE, 3)]
);
qbdi_enum!(
    /// The condition of a conditional instruction.
    ConditionType, "ConditionType",
    [
        (CONDITION_NONE, 0), (CONDITION_ALWAYS, 2), (CONDITION_NEVER, 3), (CONDITION_EQUALS, 4),
        (CONDITION_NOT_EQUALS, 5), (CONDITION_ABOVE, 6), (CONDITION_BELOW_EQUALS, 7),
        (CONDITION_ABOVE_EQUALS, 8), (CONDITION_BELOW, 9), (CONDITION_GREAT, 0xa),
        (CONDITION_LESS_EQUALS, 0xb), (CONDITION_GREAT_EQUALS, 0xc), (CONDITION_LESS, 0xd),
        (CONDITION_EVEN, 0xe), (CONDITION_ODD, 0xf), (CONDITION_OVERFLOW, 0x10),
        (CONDITION_NOT_OVERFLOW, 0x11), (CONDITION_SIGN, 0x12), (CONDITION_NOT_SIGN, 0x13),
    ]
);
qbdi_enum!(
    /// Access rights of a memory map (a flag set).
    Permission, "Permission", [(PF_NONE, 0), (PF_READ, 1), (PF_WRITE, 2), (PF_EXEC, 4)]
);
qbdi_enum!(
    /// Callback priorities.
    CallbackPriority, "CallbackPriority",
    [(PRIORITY_DEFAULT, 0), (PRIORITY_MEMACCESS_LIMIT, 0x0100_0000)]
);
qbdi_enum!(
    /// The id QBDI returns when a registration fails.
    VMError, "VMError", [(INVALID_EVENTID, 0xffff_ffffu32)]
);
qbdi_enum!(
    /// Log levels (accepted by setLogPriority; the engine logs nothing).
    LogPriority, "LogPriority",
    [(DEBUG, 0), (INFO, 1), (WARNING, 2), (ERROR, 3), (DISABLE, 0xff)]
);

/// Adds every enum class and its values to the module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    macro_rules! add {
        ($($t:ident),*) => {
            $(
                m.add_class::<$t>()?;
                $t::add_constants(m)?;
            )*
        };
    }
    add!(
        VMAction,
        VMEvent,
        InstPosition,
        AnalysisType,
        Options,
        MemoryAccessType,
        MemoryAccessFlags,
        OperandType,
        OperandFlag,
        RegisterAccessType,
        ConditionType,
        Permission,
        CallbackPriority,
        VMError,
        LogPriority
    );
    Ok(())
}
