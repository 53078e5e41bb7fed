//! The one error type of the core. The bindings map each variant to a Python exception:
//! `InvalidInput` → `ValueError`, `Io` → `OSError`, `Internal` → `unimask.InternalError`.

use std::fmt;

/// Errors returned by the core. Messages name the offending value.
#[derive(Debug)]
pub enum Error {
    /// The caller gave a value the operation cannot accept (maps to `ValueError`).
    InvalidInput(String),
    /// Reading or writing a file failed (maps to `OSError`).
    Io(std::io::Error),
    /// A broken invariant inside unimask: a bug, never the caller's fault.
    Internal(String),
}

/// Result with the core's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidInput(m) => write!(f, "{m}"),
            Error::Io(e) => write!(f, "{e}"),
            Error::Internal(m) => write!(f, "internal error (a bug in unimask): {m}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Io(e)
    }
}

/// Shorthand for `Err(Error::InvalidInput(format!(...)))`.
#[macro_export]
macro_rules! invalid {
    ($($arg:tt)*) => { Err($crate::Error::InvalidInput(format!($($arg)*))) };
}
