//! Bindings of the core's tokenizer stage (filled in by the tokenizer work).

use pyo3::prelude::*;

pub fn register(_m: &Bound<'_, PyModule>) -> PyResult<()> {
    Ok(())
}
