//! PyQBDI's free functions: stacks and calls, aligned and plain allocations, raw memory
#![allow(non_snake_case)]
//! access, float encoding, process maps. The memory helpers take raw addresses, as PyQBDI's
//! do: a wrong address faults the process.

use pyo3::exceptions::{PyMemoryError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString};
use qbdi_core::Rword;

use crate::state::GPRState;
use crate::types::MemoryMap;

/// Allocates a `size`-byte stack for the guest with alignedAlloc (free it with
/// alignedFree) and points `rsp` and `rbp` at its top. Returns its address.
#[pyfunction]
#[pyo3(signature = (gprstate, size))]
pub fn allocateVirtualStack(
    py: Python<'_>,
    gprstate: PyRef<'_, GPRState>,
    size: usize,
) -> PyResult<Option<Rword>> {
    let Some(base) = aligned(size, 16) else {
        return Ok(None);
    };
    let top = (base + size as Rword) & !15;
    gprstate.store.with(py, |g| {
        g.rsp = top;
        g.rbp = top;
    })?;
    Ok(Some(base))
}

/// Prepares `ctx` as if `returnAddress` had just called a function with `args` (SysV:
/// rdi, rsi, rdx, rcx, r8, r9, then the stack).
#[pyfunction]
#[pyo3(signature = (ctx, returnAddress, args = Vec::new()))]
pub fn simulateCall(
    py: Python<'_>,
    ctx: PyRef<'_, GPRState>,
    returnAddress: Rword,
    args: Vec<Rword>,
) -> PyResult<()> {
    let rsp = ctx.store.with(py, |g| g.rsp)?;
    if rsp == 0 {
        return Err(PyValueError::new_err(
            "simulateCall needs a stack: call allocateVirtualStack(state, size) first",
        ));
    }
    ctx.store
        .with(py, |g| qbdi_core::simulate_call(g, returnAddress, &args))
}

fn aligned(size: usize, align: usize) -> Option<Rword> {
    let mut p = std::ptr::null_mut();
    // SAFETY: posix_memalign writes the allocation's address into `p` on success.
    let r = unsafe { libc::posix_memalign(&mut p, align.max(8), size.max(1)) };
    (r == 0).then_some(p as Rword)
}

/// `size` bytes aligned to `align` (a power of two); free with alignedFree.
#[pyfunction]
pub fn alignedAlloc(size: usize, align: usize) -> PyResult<Rword> {
    if !align.is_power_of_two() {
        return Err(PyValueError::new_err(format!(
            "alignment {align} is not a power of two"
        )));
    }
    aligned(size, align)
        .ok_or_else(|| PyMemoryError::new_err(format!("{size} bytes aligned to {align}")))
}

/// Frees what alignedAlloc or allocateVirtualStack returned.
#[pyfunction]
pub fn alignedFree(ptr: Rword) {
    // SAFETY: the caller passes an address from alignedAlloc (posix_memalign), as in QBDI.
    unsafe { libc::free(ptr as *mut libc::c_void) }
}

/// `length` bytes from malloc; free with freeMemory.
#[pyfunction]
pub fn allocateMemory(length: usize) -> PyResult<Rword> {
    // SAFETY: plain malloc.
    let p = unsafe { libc::malloc(length.max(1)) };
    if p.is_null() {
        return Err(PyMemoryError::new_err(format!("{length} bytes")));
    }
    Ok(p as Rword)
}

/// One machine word from malloc; free with freeMemory.
#[pyfunction]
pub fn allocateRword() -> PyResult<Rword> {
    allocateMemory(8)
}

/// Frees what allocateMemory or allocateRword returned.
#[pyfunction]
pub fn freeMemory(address: Rword) {
    // SAFETY: the caller passes an address from allocateMemory (malloc), as in PyQBDI.
    unsafe { libc::free(address as *mut libc::c_void) }
}

/// `size` bytes at `address`.
#[pyfunction]
pub fn readMemory(py: Python<'_>, address: Rword, size: usize) -> Bound<'_, PyBytes> {
    // SAFETY: the caller names readable memory (PyQBDI's contract).
    let s = unsafe { std::slice::from_raw_parts(address as *const u8, size) };
    PyBytes::new(py, s)
}

/// Writes `bytes` (bytes, or a str as UTF-8) at `address`.
#[pyfunction]
#[pyo3(signature = (address, bytes))]
pub fn writeMemory(address: Rword, bytes: &Bound<'_, PyAny>) -> PyResult<()> {
    let data: Vec<u8> = if let Ok(s) = bytes.cast::<PyString>() {
        s.to_str()?.as_bytes().to_vec()
    } else {
        bytes.extract()?
    };
    // SAFETY: the caller names writable memory (PyQBDI's contract).
    unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), address as *mut u8, data.len()) };
    Ok(())
}

/// The machine word at `address`.
#[pyfunction]
pub fn readRword(address: Rword) -> Rword {
    // SAFETY: as in readMemory.
    unsafe { (address as *const Rword).read_unaligned() }
}

/// Writes a machine word at `address`.
#[pyfunction]
pub fn writeRword(address: Rword, value: Rword) {
    // SAFETY: as in writeMemory.
    unsafe { (address as *mut Rword).write_unaligned(value) }
}

/// The bits of a float, as a signed 32-bit integer.
#[pyfunction]
pub fn encodeFloat(val: f64) -> i64 {
    i64::from((val as f32).to_bits() as i32)
}

/// The float with these bits (a signed 32-bit integer).
#[pyfunction]
pub fn decodeFloat(val: i64) -> f64 {
    f64::from(f32::from_bits(val as u32))
}

/// The bits of a float, as an unsigned integer.
#[pyfunction]
pub fn encodeFloatU(val: f64) -> u64 {
    u64::from((val as f32).to_bits())
}

/// The float with these bits (an unsigned integer).
#[pyfunction]
pub fn decodeFloatU(val: u64) -> f64 {
    f64::from(f32::from_bits(val as u32))
}

/// The bits of a double, as a signed 64-bit integer.
#[pyfunction]
pub fn encodeDouble(val: f64) -> i64 {
    val.to_bits() as i64
}

/// The double with these bits (a signed 64-bit integer).
#[pyfunction]
pub fn decodeDouble(val: i64) -> f64 {
    f64::from_bits(val as u64)
}

/// The bits of a double, as an unsigned integer.
#[pyfunction]
pub fn encodeDoubleU(val: f64) -> u64 {
    val.to_bits()
}

/// The double with these bits (an unsigned integer).
#[pyfunction]
pub fn decodeDoubleU(val: u64) -> f64 {
    f64::from_bits(val)
}

/// The current process's memory maps.
#[pyfunction]
#[pyo3(signature = (full_path = false))]
pub fn getCurrentProcessMaps(full_path: bool) -> Vec<MemoryMap> {
    qbdi_core::current_process_maps(full_path)
        .iter()
        .map(|m| MemoryMap::from_core(m, full_path))
        .collect()
}

/// Another process's memory maps.
#[pyfunction]
#[pyo3(signature = (pid, full_path = false))]
pub fn getRemoteProcessMaps(pid: i32, full_path: bool) -> Vec<MemoryMap> {
    qbdi_core::process_maps(pid, full_path)
        .iter()
        .map(|m| MemoryMap::from_core(m, full_path))
        .collect()
}

/// The names of the mapped modules (basenames, sorted, without duplicates).
#[pyfunction]
pub fn getModuleNames() -> Vec<String> {
    let mut names: Vec<String> = qbdi_core::current_process_maps(false)
        .into_iter()
        .map(|m| m.name)
        .filter(|n| !n.is_empty() && !n.starts_with('['))
        .collect();
    names.sort();
    names.dedup();
    names
}

/// Accepted for PyQBDI scripts; the engine has no log.
#[pyfunction]
pub fn setLogPriority(priority: &Bound<'_, PyAny>) {
    let _ = priority;
}

/// Adds the functions to the module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(allocateVirtualStack, m)?)?;
    m.add_function(wrap_pyfunction!(simulateCall, m)?)?;
    m.add_function(wrap_pyfunction!(alignedAlloc, m)?)?;
    m.add_function(wrap_pyfunction!(alignedFree, m)?)?;
    m.add_function(wrap_pyfunction!(allocateMemory, m)?)?;
    m.add_function(wrap_pyfunction!(allocateRword, m)?)?;
    m.add_function(wrap_pyfunction!(freeMemory, m)?)?;
    m.add_function(wrap_pyfunction!(readMemory, m)?)?;
    m.add_function(wrap_pyfunction!(writeMemory, m)?)?;
    m.add_function(wrap_pyfunction!(readRword, m)?)?;
    m.add_function(wrap_pyfunction!(writeRword, m)?)?;
    m.add_function(wrap_pyfunction!(encodeFloat, m)?)?;
    m.add_function(wrap_pyfunction!(decodeFloat, m)?)?;
    m.add_function(wrap_pyfunction!(encodeFloatU, m)?)?;
    m.add_function(wrap_pyfunction!(decodeFloatU, m)?)?;
    m.add_function(wrap_pyfunction!(encodeDouble, m)?)?;
    m.add_function(wrap_pyfunction!(decodeDouble, m)?)?;
    m.add_function(wrap_pyfunction!(encodeDoubleU, m)?)?;
    m.add_function(wrap_pyfunction!(decodeDoubleU, m)?)?;
    m.add_function(wrap_pyfunction!(getCurrentProcessMaps, m)?)?;
    m.add_function(wrap_pyfunction!(getRemoteProcessMaps, m)?)?;
    m.add_function(wrap_pyfunction!(getModuleNames, m)?)?;
    m.add_function(wrap_pyfunction!(setLogPriority, m)?)?;
    Ok(())
}
