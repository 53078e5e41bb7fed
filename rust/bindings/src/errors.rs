//! Error conversion and panic containment for every binding.

use std::panic::{catch_unwind, AssertUnwindSafe};

use pyo3::exceptions::{PyOSError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use unimask_core::Error;

pyo3::create_exception!(
    unimask,
    InternalError,
    PyRuntimeError,
    "A broken invariant inside unimask (a bug): please report it with the input that caused it."
);

/// Map a core error to the Python exception a caller expects.
pub fn to_py(err: Error) -> PyErr {
    match err {
        Error::InvalidInput(m) => PyValueError::new_err(m),
        Error::Io(e) => PyOSError::new_err(e.to_string()),
        e @ Error::Internal(_) => InternalError::new_err(e.to_string()),
    }
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic payload".to_string()
    }
}

/// Run `f` without the GIL; a panic inside becomes `InternalError`, a core error its Python twin.
pub fn run_detached<T: Send>(
    py: Python<'_>,
    f: impl FnOnce() -> unimask_core::Result<T> + Send,
) -> PyResult<T> {
    py.detach(|| catch_unwind(AssertUnwindSafe(f)))
        .map_err(|p| {
            InternalError::new_err(format!(
                "internal error (a bug in unimask): Rust panic: {}",
                panic_message(p)
            ))
        })?
        .map_err(to_py)
}

/// Test hook: exercises the panic and error paths of [`run_detached`].
/// `kind` is "panic", "internal", "invalid" or "ok".
#[pyfunction]
fn _debug_fail(py: Python<'_>, kind: &str) -> PyResult<String> {
    let kind = kind.to_string();
    run_detached(py, move || match kind.as_str() {
        "panic" => panic!("deliberate panic from _debug_fail"),
        "internal" => Err(Error::Internal("deliberate internal error".into())),
        "invalid" => Err(Error::InvalidInput("deliberate invalid input".into())),
        "ok" => Ok("ok".to_string()),
        other => Err(Error::InvalidInput(format!(
            "_debug_fail: kind must be panic/internal/invalid/ok, got {other:?}"
        ))),
    })
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("InternalError", m.py().get_type::<InternalError>())?;
    m.add_function(wrap_pyfunction!(_debug_fail, m)?)?;
    Ok(())
}
