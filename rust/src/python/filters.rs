//! The byte-stream filters of `ssetally._core`: `LineDecoder` and
//! `UsageChunkStripper`.

use pyo3::exceptions::{PyMemoryError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyString};

use super::convert::{chunk_bytes, memory_error, text, to_bytes};
use super::EventTooLargeError;
use crate::lines::LineSplitter;
use crate::sse::DEFAULT_MAX_EVENT_SIZE;
use crate::strip::UsageChunkStripper as CoreStripper;

/// Splits bytes into lines at CR, LF or CRLF (the SSE line rule).
#[pyclass(module = "ssetally._core")]
pub struct LineDecoder {
    inner: LineSplitter,
}

#[pymethods]
impl LineDecoder {
    #[new]
    #[pyo3(signature = (*, max_line_size=DEFAULT_MAX_EVENT_SIZE), text_signature = "(*, max_line_size=16777216)")]
    fn new(max_line_size: usize) -> PyResult<Self> {
        if max_line_size == 0 {
            return Err(PyValueError::new_err("max_line_size must be positive"));
        }
        Ok(Self {
            inner: LineSplitter::new(max_line_size),
        })
    }

    /// Returns the lines `data` completes, without their terminators.
    /// A line over `max_line_size` raises `EventTooLargeError` (its
    /// `lines` attribute holds the other lines of the call); a line that
    /// memory could not be found for raises `MemoryError`.
    fn feed<'py>(
        &mut self,
        py: Python<'py>,
        data: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyList>> {
        let chunk = chunk_bytes(data)?;
        let list = PyList::empty(py);
        let mut result = Ok(());
        let out_of_memory = self.inner.out_of_memory();
        let discarded = self.inner.feed(&chunk, |line| {
            if result.is_ok() {
                result = text(py, line).and_then(|l| list.append(l));
            }
        });
        result?;
        if self.inner.out_of_memory() > out_of_memory {
            return Err(PyMemoryError::new_err(
                "ssetally: out of memory while buffering a line; it was discarded",
            ));
        }
        if discarded > 0 {
            let err = EventTooLargeError::new_err(format!(
                "{discarded} line(s) exceeded max_line_size={} bytes and were discarded",
                self.inner.max_line_size()
            ));
            err.value(py).setattr("lines", &list)?;
            return Err(err);
        }
        Ok(list)
    }

    #[getter]
    fn max_line_size(&self) -> usize {
        self.inner.max_line_size()
    }

    /// End of input: returns the unterminated last line, if any.
    fn finish<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let lines = self
            .inner
            .finish()
            .iter()
            .map(|l| text(py, l))
            .collect::<PyResult<Vec<Bound<'py, PyString>>>>()?;
        PyList::new(py, lines)
    }
}

/// Removes what `include_usage` added to a Chat Completions stream: the
/// usage-only chunk (`choices: []` plus `usage`), and the `"usage":null`
/// member of every other chunk; every other byte is forwarded unchanged.
/// At most `max_event_size` bytes of a block are held: a longer block is
/// forwarded unchanged as it comes (counted in `oversized`).
#[pyclass(module = "ssetally._core")]
pub struct UsageChunkStripper {
    inner: CoreStripper,
}

#[pymethods]
impl UsageChunkStripper {
    #[new]
    #[pyo3(signature = (*, max_event_size=DEFAULT_MAX_EVENT_SIZE), text_signature = "(*, max_event_size=16777216)")]
    fn new(max_event_size: usize) -> PyResult<Self> {
        if max_event_size == 0 {
            return Err(PyValueError::new_err("max_event_size must be positive"));
        }
        Ok(Self {
            inner: CoreStripper::new(max_event_size),
        })
    }

    /// The bytes that can be forwarded now (held-back bytes of an
    /// unfinished event block come later). Raises `MemoryError`, with
    /// nothing consumed, when memory for the output cannot be had.
    fn feed<'py>(
        &mut self,
        py: Python<'py>,
        data: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        // The interpreter is kept (the stripper is fast, and a stripper
        // shared between threads then serialises its calls).
        let chunk = chunk_bytes(data)?;
        let mut out = Vec::new();
        self.inner.feed(&chunk, &mut out).map_err(memory_error)?;
        to_bytes(py, &out)
    }

    /// End of stream: whatever is still held back, unchanged.
    fn finish<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let mut out = Vec::new();
        self.inner.finish(&mut out).map_err(memory_error)?;
        to_bytes(py, &out)
    }

    /// How many usage-only chunks were removed.
    #[getter]
    fn stripped(&self) -> u64 {
        self.inner.stripped
    }

    /// How many `"usage":null` members were removed.
    #[getter]
    fn nulls_removed(&self) -> u64 {
        self.inner.nulls_removed
    }

    /// How many blocks were forwarded unstripped because they were longer
    /// than `max_event_size`.
    #[getter]
    fn oversized(&self) -> u64 {
        self.inner.oversized
    }

    #[getter]
    fn max_event_size(&self) -> usize {
        self.inner.max_event_size()
    }
}
