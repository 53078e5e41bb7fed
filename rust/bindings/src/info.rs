//! Build facts for `unimask info`.

use pyo3::prelude::*;

/// Build information of the native module as a list of (key, value) pairs.
#[pyfunction]
fn build_info() -> Vec<(&'static str, String)> {
    let mut info = unimask_core::build_info();
    info.push(("bindings_version", env!("CARGO_PKG_VERSION").to_string()));
    info
}

/// Freed large blocks the extension's allocator keeps for the next batch, as
/// `(blocks, bytes)`, or `None` while another thread is using them
/// (`unimask_core::block_cache`).
#[pyfunction]
fn kept_blocks() -> Option<(usize, usize)> {
    crate::ALLOC.kept()
}

/// Give the kept blocks back to the system allocator (for a long-lived process after a
/// one-off large job).
#[pyfunction]
fn release_kept_blocks() {
    crate::ALLOC.release_all();
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_function(wrap_pyfunction!(build_info, m)?)?;
    m.add_function(wrap_pyfunction!(kept_blocks, m)?)?;
    m.add_function(wrap_pyfunction!(release_kept_blocks, m)?)?;
    Ok(())
}
