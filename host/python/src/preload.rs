//! Whole-program mode (placeholder while the core builds).
use pyo3::prelude::*;
pub fn is_preload() -> bool {
    false
}
pub fn register(_m: &Bound<'_, PyModule>) -> PyResult<()> {
    Ok(())
}
