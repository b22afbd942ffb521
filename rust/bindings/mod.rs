//! PyO3 bindings: thin wrappers that validate, convert errors to `ValueError` and
//! release the GIL for long work. One file per algorithm module.

use pyo3::prelude::*;

mod halton;
mod ranking;

#[pymodule]
fn _rust(m: &Bound<'_, PyModule>) -> PyResult<()> {
    halton::register(m)?;
    ranking::register(m)?;
    Ok(())
}
