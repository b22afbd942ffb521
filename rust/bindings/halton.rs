//! `tunebook._rust.halton`: the scrambled, shifted Halton sequence into a new numpy
//! array, computed with the GIL released.

use numpy::{PyArray1, PyArray2, PyArrayMethods};
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;

use crate::halton::{halton_into, MAX_DIMENSION};

fn in_range(name: &str, value: i128, max: i128, fix: &str) -> PyResult<()> {
    if value < 0 {
        return Err(PyValueError::new_err(format!(
            "{name}={value} must be >= 0: {fix}"
        )));
    }
    if value > max {
        return Err(PyValueError::new_err(format!(
            "{name}={value} must be <= {max}: {fix}"
        )));
    }
    Ok(())
}

/// Points `start .. start + n` of the scrambled, shifted Halton sequence in `d`
/// dimensions for `seed`, as a C-contiguous float64 array of shape `(n, d)`.
#[pyfunction]
#[pyo3(signature = (n, d, seed=0, start=0))]
fn halton<'py>(
    py: Python<'py>,
    n: i128,
    d: i128,
    seed: i128,
    start: i128,
) -> PyResult<Bound<'py, PyArray2<f64>>> {
    in_range(
        "n",
        n,
        i128::from(u32::MAX) * 1024,
        "ask for a non-negative number of points",
    )?;
    if d < 1 {
        return Err(PyValueError::new_err(format!(
            "d={d} must be >= 1: ask for at least one dimension"
        )));
    }
    in_range(
        "d",
        d,
        MAX_DIMENSION as i128,
        "tunebook's Halton sequence uses the first 1000 primes as bases; use fewer dimensions",
    )?;
    in_range(
        "seed",
        seed,
        i128::from(u64::MAX),
        "use an integer in [0, 2**64)",
    )?;
    in_range(
        "start",
        start,
        i128::from(u64::MAX),
        "use a point index in [0, 2**64)",
    )?;
    let (n, d, seed, start) = (n as usize, d as usize, seed as u64, start as u64);
    if (start as u128) + (n as u128) >= 1u128 << 64 {
        return Err(PyValueError::new_err(format!(
            "start={start} plus n={n} must be < 2**64: point indices are 64-bit; use a smaller start"
        )));
    }
    if n.checked_mul(d)
        .and_then(|v| v.checked_mul(8))
        .map_or(true, |bytes| bytes > isize::MAX as usize)
    {
        return Err(PyValueError::new_err(format!(
            "n={n} times d={d} values do not fit in memory: ask for fewer points"
        )));
    }
    let mut values = zeroed(n * d).ok_or_else(|| {
        PyValueError::new_err(format!(
            "n={n} times d={d} values do not fit in memory: ask for fewer points"
        ))
    })?;
    let result = py.detach(|| {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            halton_into(&mut values, n, d, seed, start, 0)
        }))
    });
    match result {
        Ok(Ok(())) => {}
        Ok(Err(error)) => return Err(PyValueError::new_err(error.to_string())),
        Err(_) => return Err(PyRuntimeError::new_err(
            "internal error in tunebook._rust.halton (a Rust panic was caught); please report it",
        )),
    }
    // The Vec becomes the array's buffer: no copy.
    PyArray1::from_vec(py, values).reshape([n, d])
}

/// `len` zeros, allocated like calloc (untouched pages cost nothing until written), or
/// None when the allocation fails, instead of aborting the process.
fn zeroed(len: usize) -> Option<Vec<f64>> {
    if len == 0 {
        return Some(Vec::new());
    }
    let layout = std::alloc::Layout::array::<f64>(len).ok()?;
    // SAFETY: the layout is non-zero-sized; all-zero bits are 0.0_f64; the pointer, if
    // non-null, comes from the global allocator with exactly this layout, as
    // Vec::from_raw_parts requires.
    unsafe {
        let ptr = std::alloc::alloc_zeroed(layout).cast::<f64>();
        (!ptr.is_null()).then(|| Vec::from_raw_parts(ptr, len, len))
    }
}

pub(super) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(halton, m)?)?;
    m.add("HALTON_MAX_DIMENSION", MAX_DIMENSION)?;
    Ok(())
}
