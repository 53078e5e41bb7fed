//! Build facts for `unimask info`.

use pyo3::prelude::*;

/// Build information of the native module as a list of (key, value) pairs.
#[pyfunction]
fn build_info() -> Vec<(&'static str, String)> {
    let mut info = unimask_core::build_info();
    info.push(("bindings_version", env!("CARGO_PKG_VERSION").to_string()));
    info
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_function(wrap_pyfunction!(build_info, m)?)?;
    Ok(())
}
