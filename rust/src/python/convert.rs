//! Bytes in and text out for the bindings, every allocation that the input
//! sizes fallible: memory exhaustion becomes a Python `MemoryError`, never
//! an abort of the interpreter. A `feed` argument is read in place when it
//! is (a view of) `bytes`, and otherwise a window at a time, so no input is
//! ever copied whole.

use std::collections::TryReserveError;

use pyo3::exceptions::{PyMemoryError, PyTypeError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyByteArray, PyBytes, PyMemoryView, PySlice, PyString};

/// The most bytes of a buffer that is not `bytes` copied at once: a
/// `bytearray` (or a view of one) may be written by other threads while a
/// feed runs, so each window is copied with the interpreter held and only
/// the copy is decoded (a buffer changed meanwhile is read as one snapshot
/// per window).
pub(super) const WINDOW: usize = 1 << 20;

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

/// `json.loads`, looked up once.
pub(super) fn json_loads(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    static LOADS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    LOADS
        .get_or_try_init(py, || {
            Ok::<_, PyErr>(py.import("json")?.getattr("loads")?.unbind())
        })
        .map(|f| f.bind(py))
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

/// The bytes a `feed` was given.
pub(super) enum Input<'py> {
    /// A `bytes` object (the one given, the one a `memoryview` shows whole,
    /// or a copy of a short buffer), read in place: it cannot change.
    InPlace(Bound<'py, PyBytes>),
    /// Any other contiguous buffer longer than a [`WINDOW`] (a `bytearray`,
    /// a view of part of `bytes` or of a `bytearray`), as a flat view of
    /// its `len` bytes that is copied a window at a time.
    Windows { view: Bound<'py, PyAny>, len: usize },
}

impl<'py> Input<'py> {
    /// Accepts `bytes`, `bytearray` and `memoryview`. A buffer that is
    /// not `bytes` is copied (by Python, `bytes(data)`, so that a copy too
    /// large raises `MemoryError`) only when it is at most a [`WINDOW`]
    /// long, or not C-contiguous (a strided view, copied whole); a longer
    /// one is read a window at a time.
    pub(super) fn new(data: &Bound<'py, PyAny>) -> PyResult<Self> {
        let py = data.py();
        let copy = |data: &Bound<'py, PyAny>| -> PyResult<Self> {
            let copy = py.get_type::<PyBytes>().call1((data,))?;
            Ok(Self::InPlace(copy.cast_into::<PyBytes>()?))
        };
        if let Ok(bytes) = data.cast::<PyBytes>() {
            return Ok(Self::InPlace(bytes.clone()));
        }
        let view = if let Ok(view) = data.cast::<PyMemoryView>() {
            view.clone().into_any()
        } else if let Ok(array) = data.cast::<PyByteArray>() {
            if array.len() <= WINDOW {
                return copy(data);
            }
            PyMemoryView::from(data)?.into_any()
        } else {
            return Err(PyTypeError::new_err(format!(
                "feed() takes bytes, got {}",
                data.get_type().name()?
            )));
        };
        let len: usize = view.getattr(intern!(py, "nbytes"))?.extract()?;
        let contiguous = view.getattr(intern!(py, "c_contiguous"))?.is_truthy()?;
        if contiguous {
            // A contiguous view as long as the `bytes` it shows is all of it
            // (exactly `bytes`: a subclass may export other bytes).
            let owner = view.getattr(intern!(py, "obj"))?;
            if let Ok(owner) = owner.cast_into_exact::<PyBytes>() {
                if owner.as_bytes().len() == len {
                    return Ok(Self::InPlace(owner));
                }
            }
        }
        if len <= WINDOW || !contiguous {
            return copy(&view);
        }
        // One byte per item and one dimension, so slices count bytes.
        let view = view.call_method1(intern!(py, "cast"), (intern!(py, "B"),))?;
        Ok(Self::Windows { view, len })
    }

    pub(super) fn len(&self) -> usize {
        match self {
            Self::InPlace(bytes) => bytes.as_bytes().len(),
            Self::Windows { len, .. } => *len,
        }
    }

    /// The bytes, when they are read in place.
    pub(super) fn in_place(&self) -> Option<&[u8]> {
        match self {
            Self::InPlace(bytes) => Some(bytes.as_bytes()),
            Self::Windows { .. } => None,
        }
    }

    /// A copy of all the bytes, or `MemoryError`.
    pub(super) fn to_vec(&self) -> PyResult<Vec<u8>> {
        let mut copy = Vec::new();
        copy.try_reserve_exact(self.len()).map_err(memory_error)?;
        self.for_each(|piece| copy.extend_from_slice(piece))?;
        Ok(copy)
    }

    /// The input as a `bytes` object: the very one given when there was
    /// one, else a copy.
    pub(super) fn to_bytes(&self) -> PyResult<Bound<'py, PyBytes>> {
        match self {
            Self::InPlace(bytes) => Ok(bytes.clone()),
            Self::Windows { view, .. } => {
                let mut at = 0;
                let mut result = Ok(());
                let bytes = PyBytes::new_with(view.py(), self.len(), |buf| {
                    result = self.for_each(|piece| {
                        buf[at..at + piece.len()].copy_from_slice(piece);
                        at += piece.len();
                    });
                    Ok(())
                })?;
                result.map(|()| bytes)
            }
        }
    }

    /// Calls `f` with the bytes in order: once with all of them when they
    /// are read in place, else with one window after another, each a new
    /// `bytes` copy made with the interpreter held, so `f` may release it:
    /// what it reads is immutable and its own. Fails only when a window
    /// cannot be allocated (`MemoryError`; the windows before it were
    /// given to `f`).
    pub(super) fn for_each(&self, mut f: impl FnMut(&[u8])) -> PyResult<()> {
        match self {
            Self::InPlace(bytes) => f(bytes.as_bytes()),
            Self::Windows { view, len } => {
                let py = view.py();
                let mut at = 0;
                while at < *len {
                    let end = (at + WINDOW).min(*len);
                    let part = view.get_item(PySlice::new(py, at as isize, end as isize, 1))?;
                    let window = py.get_type::<PyBytes>().call1((part,))?;
                    f(window.cast::<PyBytes>()?.as_bytes());
                    at = end;
                }
            }
        }
        Ok(())
    }
}

/// Chunks (or windows) at least this large are decoded with the interpreter
/// released.
pub(super) const DETACH_THRESHOLD: usize = 64 * 1024;
