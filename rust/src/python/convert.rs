//! Bytes in and text out for the bindings, every allocation that the input
//! sizes fallible: memory exhaustion becomes a Python `MemoryError`, never
//! an abort of the interpreter.

use std::collections::TryReserveError;

use pyo3::exceptions::{PyMemoryError, PyTypeError};
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedBytes;
use pyo3::types::{PyByteArray, PyBytes, PyMemoryView, PyString};

/// A copy of `bytes`, or an error when memory for it cannot be had.
pub(super) fn try_copy(bytes: &[u8]) -> Result<Vec<u8>, TryReserveError> {
    let mut out = Vec::new();
    out.try_reserve_exact(bytes.len())?;
    out.extend_from_slice(bytes);
    Ok(out)
}

/// The `MemoryError` for a buffer that could not grow.
pub(super) fn memory_error(_: TryReserveError) -> PyErr {
    PyMemoryError::new_err("ssetally: out of memory while buffering the stream")
}

/// Decodes UTF-8 with U+FFFD for invalid bytes, in one pass (CPython's
/// decoder, which replaces maximal invalid subparts as WHATWG does).
pub(super) fn text<'py>(py: Python<'py>, bytes: &[u8]) -> PyResult<Bound<'py, PyString>> {
    // A slice never holds more than `isize::MAX` bytes.
    let len = isize::try_from(bytes.len()).unwrap_or(isize::MAX);
    // SAFETY: `bytes` is a live slice of `len` bytes that CPython only reads
    // (it copies them into the new string) while we hold the interpreter;
    // the error handler name is a NUL-terminated static string. The call
    // returns a new reference or NULL with an exception set (MemoryError
    // when the string cannot be allocated), which `from_owned_ptr_or_err`
    // takes over.
    let decoded = unsafe {
        Bound::from_owned_ptr_or_err(
            py,
            pyo3::ffi::PyUnicode_DecodeUTF8(bytes.as_ptr().cast(), len, c"replace".as_ptr()),
        )
    }?;
    Ok(decoded.cast_into::<PyString>()?)
}

/// Copies `bytes` into a new Python `bytes` object, failing with
/// `MemoryError` rather than aborting when it cannot be allocated.
pub(super) fn to_bytes<'py>(py: Python<'py>, bytes: &[u8]) -> PyResult<Bound<'py, PyBytes>> {
    PyBytes::new_with(py, bytes.len(), |buf| {
        buf.copy_from_slice(bytes);
        Ok(())
    })
}

/// Accepts `bytes` without a copy, and `bytearray`/`memoryview` with one
/// made by Python (`bytes(data)`), so a chunk too large to copy raises
/// `MemoryError`.
pub(super) fn chunk_bytes(data: &Bound<'_, PyAny>) -> PyResult<PyBackedBytes> {
    if let Ok(bytes) = data.cast::<PyBytes>() {
        return Ok(bytes.clone().into());
    }
    if data.cast::<PyByteArray>().is_ok() || data.cast::<PyMemoryView>().is_ok() {
        let copy = data.py().get_type::<PyBytes>().call1((data,))?;
        return Ok(copy.cast_into::<PyBytes>()?.into());
    }
    Err(PyTypeError::new_err(format!(
        "feed() takes bytes, got {}",
        data.get_type().name()?
    )))
}
