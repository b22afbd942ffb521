//! Thin PyO3 wrappers over `crate::ranking`: parse mode/tie strings, borrow numpy
//! arrays as slices, release the GIL for the long loops, map errors to `ValueError`.

use numpy::{PyArray1, PyArray2, PyArrayMethods, PyReadonlyArray1};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::ranking::{self, Mode, RankingError, Tie};

fn value_error(error: RankingError) -> PyErr {
    PyValueError::new_err(error.to_string())
}

fn parse_mode(mode: &str) -> PyResult<Mode> {
    match mode {
        "min" => Ok(Mode::Min),
        "max" => Ok(Mode::Max),
        other => Err(PyValueError::new_err(format!("mode must be 'min' or 'max', got {other:?}"))),
    }
}

fn parse_tie(tie: &str) -> PyResult<Tie> {
    match tie {
        "earlier" => Ok(Tie::Earlier),
        "later" => Ok(Tie::Later),
        other => Err(PyValueError::new_err(format!("tie must be 'earlier' or 'later', got {other:?}"))),
    }
}

fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Min => "min",
        Mode::Max => "max",
    }
}

fn slice<'a, T: numpy::Element>(array: &'a PyReadonlyArray1<'_, T>, name: &str) -> PyResult<&'a [T]> {
    array
        .as_slice()
        .map_err(|_| PyValueError::new_err(format!("{name} must be a contiguous 1-D array")))
}

fn to_usize(values: &[i64], name: &str) -> PyResult<Vec<usize>> {
    values
        .iter()
        .map(|&v| usize::try_from(v).map_err(|_| PyValueError::new_err(format!("{name} must be >= 0, got {v}"))))
        .collect()
}

/// The k best (step, value) pairs seen so far, best first; see `crate::ranking::TopK`.
#[pyclass(module = "tunebook._rust", name = "TopK")]
struct PyTopK {
    inner: ranking::TopK,
}

#[pymethods]
impl PyTopK {
    #[new]
    #[pyo3(signature = (k, mode = "min", tie = "earlier"))]
    fn new(k: usize, mode: &str, tie: &str) -> PyResult<Self> {
        let inner = ranking::TopK::new(k, parse_mode(mode)?, parse_tie(tie)?).map_err(value_error)?;
        Ok(PyTopK { inner })
    }

    /// Offers a step's value; returns (admitted, evicted steps).
    fn offer(&mut self, step: i64, value: f64) -> PyResult<(bool, Vec<i64>)> {
        let offer = self.inner.offer(step, value).map_err(value_error)?;
        Ok((offer.admitted, offer.evicted))
    }

    /// What `offer` would return, without changing anything.
    fn preview(&self, step: i64, value: f64) -> PyResult<(bool, Vec<i64>)> {
        let offer = self.inner.preview(step, value).map_err(value_error)?;
        Ok((offer.admitted, offer.evicted))
    }

    /// Changes k; returns the evicted steps, worst last.
    fn resize(&mut self, k: usize) -> PyResult<Vec<i64>> {
        self.inner.resize(k).map_err(value_error)
    }

    /// The admitted (step, value) pairs, best first.
    fn entries(&self) -> Vec<(i64, f64)> {
        self.inner.entries().iter().map(|e| (e.step, e.value)).collect()
    }

    fn __contains__(&self, step: i64) -> bool {
        self.inner.contains(step)
    }

    fn __len__(&self) -> usize {
        self.inner.entries().len()
    }

    #[getter]
    fn k(&self) -> usize {
        self.inner.k()
    }

    #[getter]
    fn mode(&self) -> &'static str {
        mode_name(self.inner.mode())
    }

    #[getter]
    fn tie(&self) -> &'static str {
        match self.inner.tie() {
            Tie::Earlier => "earlier",
            Tie::Later => "later",
        }
    }
}

/// Best value per CSR row: (position within the row or -1, value or NaN).
#[pyfunction]
#[pyo3(signature = (values, offsets, steps = None, mode = "min", tie = "earlier"))]
fn best_per_row<'py>(
    py: Python<'py>,
    values: PyReadonlyArray1<'py, f64>,
    offsets: PyReadonlyArray1<'py, i64>,
    steps: Option<PyReadonlyArray1<'py, i64>>,
    mode: &str,
    tie: &str,
) -> PyResult<(Bound<'py, PyArray1<i64>>, Bound<'py, PyArray1<f64>>)> {
    let (mode, tie) = (parse_mode(mode)?, parse_tie(tie)?);
    let values = slice(&values, "values")?;
    let offsets = to_usize(slice(&offsets, "offsets")?, "offsets")?;
    let steps = match &steps {
        Some(s) => Some(slice(s, "steps")?),
        None => None,
    };
    let (positions, bests) = py
        .detach(|| ranking::best_per_row(values, steps, &offsets, mode, tie))
        .map_err(value_error)?;
    Ok((PyArray1::from_vec(py, positions), PyArray1::from_vec(py, bests)))
}

/// Indices ordered best first; non-finite values last; ties by lower index.
#[pyfunction]
#[pyo3(signature = (values, mode = "min"))]
fn rank<'py>(py: Python<'py>, values: PyReadonlyArray1<'py, f64>, mode: &str) -> PyResult<Bound<'py, PyArray1<i64>>> {
    let mode = parse_mode(mode)?;
    let values = slice(&values, "values")?;
    let order = py.detach(|| ranking::rank(values, mode));
    Ok(PyArray1::from_vec(py, order.into_iter().map(|i| i as i64).collect()))
}

/// bins + 1 edges spanning the finite x (log-spaced when log).
#[pyfunction]
#[pyo3(signature = (x, bins, log = false))]
fn bucket_edges<'py>(
    py: Python<'py>,
    x: PyReadonlyArray1<'py, f64>,
    bins: usize,
    log: bool,
) -> PyResult<Bound<'py, PyArray1<f64>>> {
    let edges = ranking::bucket_edges(slice(&x, "x")?, bins, log).map_err(value_error)?;
    Ok(PyArray1::from_vec(py, edges))
}

/// Best trial per bucket of x judged by y: (index or -1, value or NaN).
#[pyfunction]
#[pyo3(signature = (x, y, edges, mode = "min"))]
fn best_per_bucket<'py>(
    py: Python<'py>,
    x: PyReadonlyArray1<'py, f64>,
    y: PyReadonlyArray1<'py, f64>,
    edges: PyReadonlyArray1<'py, f64>,
    mode: &str,
) -> PyResult<(Bound<'py, PyArray1<i64>>, Bound<'py, PyArray1<f64>>)> {
    let mode = parse_mode(mode)?;
    let (x, y, edges) = (slice(&x, "x")?, slice(&y, "y")?, slice(&edges, "edges")?);
    let (index, best) = py.detach(|| ranking::best_per_bucket(x, y, edges, mode)).map_err(value_error)?;
    Ok((PyArray1::from_vec(py, index), PyArray1::from_vec(py, best)))
}

/// Bootstrap samples of the best of k trials: shape (len(budgets), n_boot).
#[pyfunction]
#[pyo3(signature = (best_values, budgets, n_boot, seed = 0, mode = "min"))]
fn bootstrap_best_of_k<'py>(
    py: Python<'py>,
    best_values: PyReadonlyArray1<'py, f64>,
    budgets: PyReadonlyArray1<'py, i64>,
    n_boot: usize,
    seed: u64,
    mode: &str,
) -> PyResult<Bound<'py, PyArray2<f64>>> {
    let mode = parse_mode(mode)?;
    let best = slice(&best_values, "best_values")?;
    let budgets = to_usize(slice(&budgets, "budgets")?, "budgets")?;
    let samples = py
        .detach(|| ranking::bootstrap_best_of_k(best, &budgets, n_boot, seed, mode))
        .map_err(value_error)?;
    PyArray1::from_vec(py, samples).reshape([budgets.len(), n_boot])
}

/// Quantiles of the bootstrap samples: shape (len(budgets), len(quantiles)).
#[pyfunction]
#[pyo3(signature = (best_values, budgets, n_boot, quantiles, seed = 0, mode = "min"))]
fn bootstrap_quantiles<'py>(
    py: Python<'py>,
    best_values: PyReadonlyArray1<'py, f64>,
    budgets: PyReadonlyArray1<'py, i64>,
    n_boot: usize,
    quantiles: PyReadonlyArray1<'py, f64>,
    seed: u64,
    mode: &str,
) -> PyResult<Bound<'py, PyArray2<f64>>> {
    let mode = parse_mode(mode)?;
    let best = slice(&best_values, "best_values")?;
    let quantiles = slice(&quantiles, "quantiles")?;
    let budgets = to_usize(slice(&budgets, "budgets")?, "budgets")?;
    let out = py
        .detach(|| ranking::bootstrap_quantiles(best, &budgets, n_boot, quantiles, seed, mode))
        .map_err(value_error)?;
    PyArray1::from_vec(py, out).reshape([budgets.len(), quantiles.len()])
}

pub(super) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyTopK>()?;
    m.add_function(wrap_pyfunction!(best_per_row, m)?)?;
    m.add_function(wrap_pyfunction!(rank, m)?)?;
    m.add_function(wrap_pyfunction!(bucket_edges, m)?)?;
    m.add_function(wrap_pyfunction!(best_per_bucket, m)?)?;
    m.add_function(wrap_pyfunction!(bootstrap_best_of_k, m)?)?;
    m.add_function(wrap_pyfunction!(bootstrap_quantiles, m)?)?;
    Ok(())
}
