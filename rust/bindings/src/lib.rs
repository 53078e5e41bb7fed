//! `unimask._native`: the thin PyO3 layer over `unimask-core`.
//!
//! Each binding converts its arguments, runs the core call outside the GIL through
//! [`errors::run_detached`] (which also turns any Rust panic into `unimask.InternalError`),
//! and maps the core's error to a Python exception. No logic lives here.

use pyo3::prelude::*;

/// The extension's allocator: the system one, plus a few recently freed large blocks kept for
/// the next batch (output columns are megabytes; see `unimask_core::block_cache`).
#[global_allocator]
pub(crate) static ALLOC: unimask_core::block_cache::BlockCache =
    unimask_core::block_cache::BlockCache::new();

mod collate;
mod errors;
mod info;
mod tokenizer;

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    errors::register(m)?;
    info::register(m)?;
    tokenizer::register(m)?;
    collate::register(m)?;
    Ok(())
}
