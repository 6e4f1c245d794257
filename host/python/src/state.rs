//! `GPRState`, `FPRState` (with `MMSTReg`, `FPControl`, `FPStatus`) and `VMState`.
//!
//! A state object either owns its registers (`pyqbdi.GPRState()`, a copy) or is a live view
//! of a VM's ([`VM::getGPRState`](crate::vm::VM), the `gpr`/`fpr` arguments of callbacks):
//! a view reads and writes, at each access, the VM's current state: the registers of the
//! callback running now if there is one, else the state the VM keeps between runs. That is
//! PyQBDI's behaviour (its objects point into the VM), without a pointer that could outlive
//! a callback.

use std::cell::UnsafeCell;
use std::mem::offset_of;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyTuple};
use pyo3::{PyTraverseError, PyVisit};
use qbdi_core::{FprState, GPR_NAMES, GprState, Rword};

use crate::enums::VMEvent;
use crate::vm::VM;

/// Where a state object's registers are.
pub enum Store<T> {
    /// Its own copy.
    Owned(UnsafeCell<Box<T>>),
    /// The live state of a VM.
    Live(Py<VM>),
}

impl<T: Copy> Store<T> {
    fn owned(v: T) -> Self {
        Store::Owned(UnsafeCell::new(Box::new(v)))
    }

    fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        if let Store::Live(vm) = self {
            visit.call(vm)?;
        }
        Ok(())
    }
}

/// What a live view needs from its VM: a pointer to the registers valid for the current
/// access.
pub trait LiveState: Sized {
    /// The VM's current registers of this kind.
    fn resolve(vm: &VM) -> PyResult<*mut Self>;
}

impl LiveState for GprState {
    fn resolve(vm: &VM) -> PyResult<*mut Self> {
        vm.gpr_ptr()
    }
}

impl LiveState for FprState {
    fn resolve(vm: &VM) -> PyResult<*mut Self> {
        vm.fpr_ptr()
    }
}

impl<T: Copy + LiveState> Store<T> {
    /// Runs `f` on the registers (no Python code runs meanwhile, so the pointer stays valid
    /// and unaliased for the call).
    pub fn with<R>(&self, py: Python<'_>, f: impl FnOnce(&mut T) -> R) -> PyResult<R> {
        match self {
            // SAFETY: the class is unsendable and `f` runs no Python code: no other access to
            // the box exists during the call.
            Store::Owned(cell) => Ok(f(unsafe { &mut **cell.get() })),
            Store::Live(vm) => {
                let vm = vm.bind(py).borrow();
                let p = T::resolve(&vm)?;
                // SAFETY: `resolve` returns the VM's state outside runs or the running
                // callback's registers, both valid and otherwise unused during `f`.
                Ok(f(unsafe { &mut *p }))
            }
        }
    }

    /// A copy of the registers.
    pub fn get(&self, py: Python<'_>) -> PyResult<T> {
        self.with(py, |s| *s)
    }
}

// ---- GPRState -------------------------------------------------------------------------

/// General purpose registers (QBDI's GPRState): `rax`..`r15`, `rbp`, `rsp`, `rip`,
/// `eflags`, `fs`, `gs`; also indexable in that order.
#[pyclass(unsendable, module = "pyqbdi", name = "GPRState")]
pub struct GPRState {
    pub store: Store<GprState>,
}

impl GPRState {
    /// An object owning a copy of `g`.
    pub fn owned(g: GprState) -> Self {
        GPRState {
            store: Store::owned(g),
        }
    }

    /// A live view of `vm`'s registers.
    pub fn live(vm: Py<VM>) -> Self {
        GPRState {
            store: Store::Live(vm),
        }
    }
}

fn gpr_slot(g: &mut GprState, index: usize) -> Option<&mut Rword> {
    Some(match index {
        0 => &mut g.rax,
        1 => &mut g.rbx,
        2 => &mut g.rcx,
        3 => &mut g.rdx,
        4 => &mut g.rsi,
        5 => &mut g.rdi,
        6 => &mut g.r8,
        7 => &mut g.r9,
        8 => &mut g.r10,
        9 => &mut g.r11,
        10 => &mut g.r12,
        11 => &mut g.r13,
        12 => &mut g.r14,
        13 => &mut g.r15,
        14 => &mut g.rbp,
        15 => &mut g.rsp,
        16 => &mut g.rip,
        17 => &mut g.eflags,
        18 => &mut g.fs,
        19 => &mut g.gs,
        _ => return None,
    })
}

macro_rules! gpr_fields {
    ($(($field:ident, $setter:ident)),* $(,)?) => {
        #[allow(non_snake_case)]
        #[pymethods]
        impl GPRState {
            $(
                #[getter]
                fn $field(&self, py: Python<'_>) -> PyResult<Rword> {
                    self.store.with(py, |g| g.$field)
                }
                #[setter]
                fn $setter(&self, py: Python<'_>, value: Rword) -> PyResult<()> {
                    self.store.with(py, |g| g.$field = value)
                }
            )*
        }
    };
}

gpr_fields!(
    (rax, set_rax),
    (rbx, set_rbx),
    (rcx, set_rcx),
    (rdx, set_rdx),
    (rsi, set_rsi),
    (rdi, set_rdi),
    (r8, set_r8),
    (r9, set_r9),
    (r10, set_r10),
    (r11, set_r11),
    (r12, set_r12),
    (r13, set_r13),
    (r14, set_r14),
    (r15, set_r15),
    (rbp, set_rbp),
    (rsp, set_rsp),
    (rip, set_rip),
    (eflags, set_eflags),
    (fs, set_fs),
    (gs, set_gs),
);

#[allow(non_snake_case)]
#[pymethods]
impl GPRState {
    #[new]
    fn py_new() -> Self {
        GPRState::owned(GprState::default())
    }

    #[classattr]
    fn REG_RETURN() -> usize {
        0
    }
    #[classattr]
    fn REG_BP() -> usize {
        14
    }
    #[classattr]
    fn REG_SP() -> usize {
        15
    }
    #[classattr]
    fn REG_PC() -> usize {
        16
    }
    #[classattr]
    fn REG_FLAG() -> usize {
        17
    }
    #[classattr]
    fn NUM_GPR() -> usize {
        17
    }
    #[classattr]
    fn AVAILABLE_GPR() -> usize {
        14
    }
    #[classattr]
    fn REG_LR(py: Python<'_>) -> Py<PyAny> {
        py.None()
    }

    fn __getitem__(&self, py: Python<'_>, index: isize) -> PyResult<Rword> {
        let i = usize::try_from(index).ok();
        self.store
            .with(py, |g| i.and_then(|i| gpr_slot(g, i).map(|s| *s)))?
            .ok_or_else(|| pyo3::exceptions::PyIndexError::new_err("Out of range of GPRState"))
    }

    fn __setitem__(&self, py: Python<'_>, index: isize, value: Rword) -> PyResult<()> {
        let i = usize::try_from(index).ok();
        self.store
            .with(py, |g| i.and_then(|i| gpr_slot(g, i)).map(|s| *s = value))?
            .ok_or_else(|| pyo3::exceptions::PyIndexError::new_err("Out of range of GPRState"))
    }

    fn __len__(&self) -> usize {
        GPR_NAMES.len()
    }

    fn __str__(&self, py: Python<'_>) -> PyResult<String> {
        let regs = self.store.get(py)?.as_array();
        let mut s = String::from("=== GPRState begin ===\n");
        for (name, v) in GPR_NAMES.iter().zip(regs) {
            s.push_str(&format!("{name:<7}: {v:#018x}\n"));
        }
        s.push_str("=== GPRState end ===");
        Ok(s)
    }

    fn __copy__(&self, py: Python<'_>) -> PyResult<GPRState> {
        Ok(GPRState::owned(self.store.get(py)?))
    }

    fn __deepcopy__(&self, py: Python<'_>, _memo: &Bound<'_, PyAny>) -> PyResult<GPRState> {
        self.__copy__(py)
    }

    fn __eq__(&self, py: Python<'_>, other: PyRef<'_, GPRState>) -> PyResult<bool> {
        Ok(self.store.get(py)? == other.store.get(py)?)
    }

    fn __getstate__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        PyTuple::new(py, self.store.get(py)?.as_array())
    }

    fn __setstate__(&self, py: Python<'_>, state: Vec<Rword>) -> PyResult<()> {
        self.store.with(py, |g| {
            for (i, v) in state.into_iter().enumerate() {
                if let Some(s) = gpr_slot(g, i) {
                    *s = v;
                }
            }
        })
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        self.store.traverse(&visit)
    }
}

// ---- FPRState -------------------------------------------------------------------------

/// FP and vector registers (QBDI's FPRState and more): x87 control and status, `stmm0-7`
/// (MMSTReg), `xmm0-15` and the upper halves `ymm0-15` as 16 bytes each, as in PyQBDI;
/// then `zmm0-31` (64 bytes, the whole register) and `k0-k7` (integers) where the CPU has
/// AVX-512. Setting a bytes field copies at most its size.
#[pyclass(unsendable, module = "pyqbdi", name = "FPRState")]
pub struct FPRState {
    pub store: Store<FprState>,
}

impl FPRState {
    /// An object owning a copy of `f`.
    pub fn owned(f: FprState) -> Self {
        FPRState {
            store: Store::owned(f),
        }
    }

    /// A live view of `vm`'s registers.
    pub fn live(vm: Py<VM>) -> Self {
        FPRState {
            store: Store::Live(vm),
        }
    }
}

fn fpr_bytes(f: &FprState) -> &[u8; 2688] {
    f.as_bytes()
}

fn fpr_bytes_mut(f: &mut FprState) -> &mut [u8; 2688] {
    // SAFETY: FprState is 2688 bytes of plain integers (no padding, every bit pattern
    // valid), as `FprState::as_bytes` relies on too.
    unsafe { &mut *(f as *mut FprState as *mut [u8; 2688]) }
}

const XMM0: usize = offset_of!(FprState, xmm0);
const YMM0: usize = offset_of!(FprState, ymm0);
const STMM0: usize = offset_of!(FprState, stmm0);
const ZMM_HI256: usize = offset_of!(FprState, zmm_hi256);
const HI16_ZMM: usize = offset_of!(FprState, hi16_zmm);

/// The byte ranges making up ZMM register `n` (low to high).
fn zmm_parts(n: usize) -> Vec<(usize, usize)> {
    if n < 16 {
        vec![
            (XMM0 + 16 * n, 16),
            (YMM0 + 16 * n, 16),
            (ZMM_HI256 + 32 * n, 32),
        ]
    } else {
        vec![(HI16_ZMM + 64 * (n - 16), 64)]
    }
}

fn read_parts(f: &FprState, parts: &[(usize, usize)]) -> Vec<u8> {
    let b = fpr_bytes(f);
    parts
        .iter()
        .flat_map(|&(o, l)| b[o..o + l].iter().copied())
        .collect()
}

fn write_parts(f: &mut FprState, parts: &[(usize, usize)], value: &[u8]) {
    let b = fpr_bytes_mut(f);
    let mut src = value;
    for &(o, l) in parts {
        let n = l.min(src.len());
        b[o..o + n].copy_from_slice(&src[..n]);
        src = &src[n..];
    }
}

macro_rules! fpr_bytes_fields {
    ($(($field:ident, $setter:ident, $parts:expr)),* $(,)?) => {
        #[pymethods]
        impl FPRState {
            $(
                #[getter]
                fn $field<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
                    let v = self.store.with(py, |f| read_parts(f, &$parts))?;
                    Ok(PyBytes::new(py, &v))
                }
                #[setter]
                fn $setter(&self, py: Python<'_>, value: &[u8]) -> PyResult<()> {
                    self.store.with(py, |f| write_parts(f, &$parts, value))
                }
            )*
        }
    };
}

fpr_bytes_fields!(
    (xmm0, set_xmm0, [(XMM0, 16)]),
    (xmm1, set_xmm1, [(XMM0 + 16, 16)]),
    (xmm2, set_xmm2, [(XMM0 + 32, 16)]),
    (xmm3, set_xmm3, [(XMM0 + 48, 16)]),
    (xmm4, set_xmm4, [(XMM0 + 64, 16)]),
    (xmm5, set_xmm5, [(XMM0 + 80, 16)]),
    (xmm6, set_xmm6, [(XMM0 + 96, 16)]),
    (xmm7, set_xmm7, [(XMM0 + 112, 16)]),
    (xmm8, set_xmm8, [(XMM0 + 128, 16)]),
    (xmm9, set_xmm9, [(XMM0 + 144, 16)]),
    (xmm10, set_xmm10, [(XMM0 + 160, 16)]),
    (xmm11, set_xmm11, [(XMM0 + 176, 16)]),
    (xmm12, set_xmm12, [(XMM0 + 192, 16)]),
    (xmm13, set_xmm13, [(XMM0 + 208, 16)]),
    (xmm14, set_xmm14, [(XMM0 + 224, 16)]),
    (xmm15, set_xmm15, [(XMM0 + 240, 16)]),
    (ymm0, set_ymm0, [(YMM0, 16)]),
    (ymm1, set_ymm1, [(YMM0 + 16, 16)]),
    (ymm2, set_ymm2, [(YMM0 + 32, 16)]),
    (ymm3, set_ymm3, [(YMM0 + 48, 16)]),
    (ymm4, set_ymm4, [(YMM0 + 64, 16)]),
    (ymm5, set_ymm5, [(YMM0 + 80, 16)]),
    (ymm6, set_ymm6, [(YMM0 + 96, 16)]),
    (ymm7, set_ymm7, [(YMM0 + 112, 16)]),
    (ymm8, set_ymm8, [(YMM0 + 128, 16)]),
    (ymm9, set_ymm9, [(YMM0 + 144, 16)]),
    (ymm10, set_ymm10, [(YMM0 + 160, 16)]),
    (ymm11, set_ymm11, [(YMM0 + 176, 16)]),
    (ymm12, set_ymm12, [(YMM0 + 192, 16)]),
    (ymm13, set_ymm13, [(YMM0 + 208, 16)]),
    (ymm14, set_ymm14, [(YMM0 + 224, 16)]),
    (ymm15, set_ymm15, [(YMM0 + 240, 16)]),
    (zmm0, set_zmm0, zmm_parts(0)),
    (zmm1, set_zmm1, zmm_parts(1)),
    (zmm2, set_zmm2, zmm_parts(2)),
    (zmm3, set_zmm3, zmm_parts(3)),
    (zmm4, set_zmm4, zmm_parts(4)),
    (zmm5, set_zmm5, zmm_parts(5)),
    (zmm6, set_zmm6, zmm_parts(6)),
    (zmm7, set_zmm7, zmm_parts(7)),
    (zmm8, set_zmm8, zmm_parts(8)),
    (zmm9, set_zmm9, zmm_parts(9)),
    (zmm10, set_zmm10, zmm_parts(10)),
    (zmm11, set_zmm11, zmm_parts(11)),
    (zmm12, set_zmm12, zmm_parts(12)),
    (zmm13, set_zmm13, zmm_parts(13)),
    (zmm14, set_zmm14, zmm_parts(14)),
    (zmm15, set_zmm15, zmm_parts(15)),
    (zmm16, set_zmm16, zmm_parts(16)),
    (zmm17, set_zmm17, zmm_parts(17)),
    (zmm18, set_zmm18, zmm_parts(18)),
    (zmm19, set_zmm19, zmm_parts(19)),
    (zmm20, set_zmm20, zmm_parts(20)),
    (zmm21, set_zmm21, zmm_parts(21)),
    (zmm22, set_zmm22, zmm_parts(22)),
    (zmm23, set_zmm23, zmm_parts(23)),
    (zmm24, set_zmm24, zmm_parts(24)),
    (zmm25, set_zmm25, zmm_parts(25)),
    (zmm26, set_zmm26, zmm_parts(26)),
    (zmm27, set_zmm27, zmm_parts(27)),
    (zmm28, set_zmm28, zmm_parts(28)),
    (zmm29, set_zmm29, zmm_parts(29)),
    (zmm30, set_zmm30, zmm_parts(30)),
    (zmm31, set_zmm31, zmm_parts(31)),
);

macro_rules! fpr_int_fields {
    ($(($field:ident, $setter:ident, $ty:ty, |$f:ident| $place:expr)),* $(,)?) => {
        #[pymethods]
        impl FPRState {
            $(
                #[getter]
                fn $field(&self, py: Python<'_>) -> PyResult<$ty> {
                    self.store.with(py, |$f| $place)
                }
                #[setter]
                fn $setter(&self, py: Python<'_>, value: $ty) -> PyResult<()> {
                    self.store.with(py, |$f| $place = value)
                }
            )*
        }
    };
}

fpr_int_fields!(
    (rfcw, set_rfcw, u16, |f| f.fcw),
    (rfsw, set_rfsw, u16, |f| f.fsw),
    (ftw, set_ftw, u8, |f| f.ftw),
    (fop, set_fop, u16, |f| f.fop),
    (ip, set_ip, u32, |f| f.ip),
    (cs, set_cs, u16, |f| f.cs),
    (dp, set_dp, u32, |f| f.dp),
    (ds, set_ds, u16, |f| f.ds),
    (mxcsr, set_mxcsr, u32, |f| f.mxcsr),
    (mxcsrmask, set_mxcsrmask, u32, |f| f.mxcsrmask),
    (k0, set_k0, u64, |f| f.k[0]),
    (k1, set_k1, u64, |f| f.k[1]),
    (k2, set_k2, u64, |f| f.k[2]),
    (k3, set_k3, u64, |f| f.k[3]),
    (k4, set_k4, u64, |f| f.k[4]),
    (k5, set_k5, u64, |f| f.k[5]),
    (k6, set_k6, u64, |f| f.k[6]),
    (k7, set_k7, u64, |f| f.k[7]),
);

macro_rules! fpr_stmm_fields {
    ($(($field:ident, $setter:ident, $n:expr)),* $(,)?) => {
        #[pymethods]
        impl FPRState {
            $(
                #[getter]
                fn $field(&self, py: Python<'_>) -> PyResult<MMSTReg> {
                    let v = self.store.with(py, |f| read_parts(f, &[(STMM0 + 16 * $n, 16)]))?;
                    let mut reg = [0u8; 16];
                    reg.copy_from_slice(&v);
                    Ok(MMSTReg { reg })
                }
                #[setter]
                fn $setter(&self, py: Python<'_>, value: &Bound<'_, PyAny>) -> PyResult<()> {
                    let bytes: Vec<u8> = match value.cast::<MMSTReg>() {
                        Ok(r) => r.borrow().reg.to_vec(),
                        Err(_) => value.extract()?,
                    };
                    self.store.with(py, |f| write_parts(f, &[(STMM0 + 16 * $n, 16)], &bytes))
                }
            )*
        }
    };
}

fpr_stmm_fields!(
    (stmm0, set_stmm0, 0),
    (stmm1, set_stmm1, 1),
    (stmm2, set_stmm2, 2),
    (stmm3, set_stmm3, 3),
    (stmm4, set_stmm4, 4),
    (stmm5, set_stmm5, 5),
    (stmm6, set_stmm6, 6),
    (stmm7, set_stmm7, 7),
);

#[pymethods]
impl FPRState {
    #[new]
    fn py_new() -> Self {
        FPRState::owned(FprState::default())
    }

    /// The x87 control word as bit fields (a copy; assign it back to change it).
    #[getter]
    fn fcw(&self, py: Python<'_>) -> PyResult<FPControl> {
        Ok(FPControl {
            v: self.store.with(py, |f| f.fcw)?,
        })
    }

    #[setter]
    fn set_fcw(&self, py: Python<'_>, value: &Bound<'_, PyAny>) -> PyResult<()> {
        let v = match value.cast::<FPControl>() {
            Ok(c) => c.borrow().v,
            Err(_) => value.extract()?,
        };
        self.store.with(py, |f| f.fcw = v)
    }

    /// The x87 status word as bit fields (a copy; assign it back to change it).
    #[getter]
    fn fsw(&self, py: Python<'_>) -> PyResult<FPStatus> {
        Ok(FPStatus {
            v: self.store.with(py, |f| f.fsw)?,
        })
    }

    #[setter]
    fn set_fsw(&self, py: Python<'_>, value: &Bound<'_, PyAny>) -> PyResult<()> {
        let v = match value.cast::<FPStatus>() {
            Ok(c) => c.borrow().v,
            Err(_) => value.extract()?,
        };
        self.store.with(py, |f| f.fsw = v)
    }

    fn __copy__(&self, py: Python<'_>) -> PyResult<FPRState> {
        Ok(FPRState::owned(self.store.get(py)?))
    }

    fn __deepcopy__(&self, py: Python<'_>, _memo: &Bound<'_, PyAny>) -> PyResult<FPRState> {
        self.__copy__(py)
    }

    fn __eq__(&self, py: Python<'_>, other: PyRef<'_, FPRState>) -> PyResult<bool> {
        Ok(self.store.get(py)?.as_bytes() == other.store.get(py)?.as_bytes())
    }

    fn __getstate__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let f = self.store.get(py)?;
        Ok(PyBytes::new(py, f.as_bytes()))
    }

    fn __setstate__(&self, py: Python<'_>, state: &[u8]) -> PyResult<()> {
        self.store.with(py, |f| write_parts(f, &[(0, 2688)], state))
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        self.store.traverse(&visit)
    }
}

/// One x87/MMX register slot: `st` is its 10 bytes.
#[pyclass(module = "pyqbdi", name = "MMSTReg", from_py_object)]
#[derive(Clone)]
pub struct MMSTReg {
    reg: [u8; 16],
}

#[pymethods]
impl MMSTReg {
    #[new]
    fn py_new() -> Self {
        MMSTReg { reg: [0; 16] }
    }

    /// The 80-bit value, as 10 bytes.
    #[getter]
    fn st<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.reg[..10])
    }

    #[setter]
    fn set_st(&mut self, value: &[u8]) {
        let n = value.len().min(10);
        self.reg[..n].copy_from_slice(&value[..n]);
    }

    /// The 6 reserved bytes.
    #[getter]
    fn reserved<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.reg[10..])
    }
}

macro_rules! bit_fields {
    ($class:ident, $(($field:ident, $setter:ident, $shift:expr, $width:expr)),* $(,)?) => {
        #[pymethods]
        impl $class {
            #[new]
            fn py_new() -> Self {
                $class { v: 0 }
            }
            $(
                #[getter]
                fn $field(&self) -> u16 {
                    (self.v >> $shift) & ((1u16 << $width) - 1)
                }
                #[setter]
                fn $setter(&mut self, value: u16) {
                    let mask = ((1u16 << $width) - 1) << $shift;
                    self.v = (self.v & !mask) | ((value << $shift) & mask);
                }
            )*
            fn __int__(&self) -> u16 {
                self.v
            }
        }
    };
}

/// The x87 control word, as bit fields.
#[pyclass(module = "pyqbdi", name = "FPControl", from_py_object)]
#[derive(Clone)]
pub struct FPControl {
    v: u16,
}

bit_fields!(
    FPControl,
    (invalid, set_invalid, 0, 1),
    (denorm, set_denorm, 1, 1),
    (zdiv, set_zdiv, 2, 1),
    (ovrfl, set_ovrfl, 3, 1),
    (undfl, set_undfl, 4, 1),
    (precis, set_precis, 5, 1),
    (pc, set_pc, 8, 2),
    (rc, set_rc, 10, 2),
);

/// The x87 status word, as bit fields.
#[pyclass(module = "pyqbdi", name = "FPStatus", from_py_object)]
#[derive(Clone)]
pub struct FPStatus {
    v: u16,
}

bit_fields!(
    FPStatus,
    (invalid, set_invalid, 0, 1),
    (denorm, set_denorm, 1, 1),
    (zdiv, set_zdiv, 2, 1),
    (ovrfl, set_ovrfl, 3, 1),
    (undfl, set_undfl, 4, 1),
    (precis, set_precis, 5, 1),
    (stkflt, set_stkflt, 6, 1),
    (errsumm, set_errsumm, 7, 1),
    (c0, set_c0, 8, 1),
    (c1, set_c1, 9, 1),
    (c2, set_c2, 10, 1),
    (tos, set_tos, 11, 3),
    (c3, set_c3, 14, 1),
    (busy, set_busy, 15, 1),
);

// ---- VMState --------------------------------------------------------------------------

/// What a VM event callback is told (QBDI's VMState). The block and sequence ends are
/// exclusive.
#[pyclass(module = "pyqbdi", name = "VMState")]
#[derive(Clone, Default)]
#[allow(non_snake_case)]
pub struct VMState {
    pub event: u32,
    #[pyo3(get, set)]
    pub basicBlockStart: Rword,
    #[pyo3(get, set)]
    pub basicBlockEnd: Rword,
    #[pyo3(get, set)]
    pub sequenceStart: Rword,
    #[pyo3(get, set)]
    pub sequenceEnd: Rword,
    #[pyo3(get, set)]
    pub lastSignal: Rword,
}

impl VMState {
    /// Fills the object from the engine's state.
    pub fn set_from(&mut self, s: &qbdi_core::VmState) {
        self.event = s.event.bits();
        self.basicBlockStart = s.basic_block_start;
        self.basicBlockEnd = s.basic_block_end;
        self.sequenceStart = s.sequence_start;
        self.sequenceEnd = s.sequence_end;
    }
}

#[pymethods]
impl VMState {
    #[new]
    fn py_new() -> Self {
        VMState::default()
    }

    /// The events that happened.
    #[getter]
    fn event(&self) -> VMEvent {
        VMEvent::new(self.event)
    }

    #[setter]
    fn set_event(&mut self, value: &Bound<'_, PyAny>) -> PyResult<()> {
        self.event = crate::enums::flag_value(value)?;
        Ok(())
    }

    fn __repr__(&self) -> String {
        format!(
            "<VMState {}, {:x}, {:x}, {:x}, {:x}>",
            crate::enums::VMEvent::new(self.event).display(),
            self.basicBlockStart,
            self.basicBlockEnd,
            self.sequenceStart,
            self.sequenceEnd
        )
    }
}
