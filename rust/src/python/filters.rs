//! The byte-stream filters of `ssetally._core`: `LineDecoder` and
//! `UsageChunkStripper`.

use pyo3::exceptions::{PyMemoryError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyString};

use super::convert::{memory_error, text, to_bytes, Input};
use super::tap::UsageTap;
use super::EventTooLargeError;
use crate::lines::LineSplitter;
use crate::sse::DEFAULT_MAX_EVENT_SIZE;
use crate::strip::{Count, Sink, UsageChunkStripper as CoreStripper};

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
        let input = Input::new(data)?;
        let list = PyList::empty(py);
        let mut result = Ok(());
        let out_of_memory = self.inner.out_of_memory();
        let mut discarded = 0u32;
        input.for_each(|piece| {
            let n = self.inner.feed(piece, |line| {
                if result.is_ok() {
                    result = text(py, line).and_then(|l| list.append(l));
                }
            });
            discarded = discarded.saturating_add(n);
        })?;
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

/// Chunks at least this long are stripped in two passes (counting, then
/// writing the output in place); shorter ones through a `Vec`, which costs
/// at most twice their output.
const COUNT_FIRST: usize = 1 << 20;

/// Writes forwarded bytes into a `bytes` object made at the length the
/// counting pass found. The writing pass gives the same bytes unless an
/// allocation failed in one pass only (or a buffer was changed by a
/// writer outside the interpreter): what does not fit then goes to
/// `spill`, and [`Fill::diverged`] says so.
struct Fill<'a> {
    buf: &'a mut [u8],
    at: usize,
    spill: Vec<u8>,
    lost: bool,
}

/// The output of a writing pass that diverged from its count: the first
/// `at` bytes of the `bytes` object made, then `spill`.
struct Diverged {
    at: usize,
    spill: Vec<u8>,
    lost: bool,
}

impl<'a> Fill<'a> {
    fn new(buf: &'a mut [u8]) -> Self {
        Self {
            buf,
            at: 0,
            spill: Vec::new(),
            lost: false,
        }
    }

    fn diverged(self) -> Option<Diverged> {
        (self.at != self.buf.len() || !self.spill.is_empty() || self.lost).then_some(Diverged {
            at: self.at,
            spill: self.spill,
            lost: self.lost,
        })
    }
}

impl Sink for Fill<'_> {
    fn put(&mut self, bytes: &[u8]) {
        let n = bytes.len().min(self.buf.len() - self.at);
        self.buf[self.at..self.at + n].copy_from_slice(&bytes[..n]);
        self.at += n;
        let rest = &bytes[n..];
        if rest.is_empty() {
        } else if self.spill.try_reserve(rest.len()).is_ok() {
            self.spill.extend_from_slice(rest);
        } else {
            self.lost = true;
        }
    }
}

impl Diverged {
    /// The output the writing pass really gave, as one `bytes` object.
    fn join<'py>(
        self,
        py: Python<'py>,
        made: &Bound<'py, PyBytes>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        if self.lost {
            return Err(PyMemoryError::new_err(
                "ssetally: out of memory while forwarding a chunk; part of it was lost",
            ));
        }
        let head = &made.as_bytes()[..self.at];
        PyBytes::new_with(py, head.len() + self.spill.len(), |buf| {
            buf[..head.len()].copy_from_slice(head);
            buf[head.len()..].copy_from_slice(&self.spill);
            Ok(())
        })
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
    /// unfinished event block come later); the very `data` object when it
    /// is `bytes` that passes whole. Raises `MemoryError`, with nothing
    /// consumed, when memory for the output cannot be had (unless a copy
    /// of a window of a large buffer that is not `bytes` fails between the
    /// two passes: then the chunk is consumed and lost, and said so).
    /// With `tap`, the tap is fed `data` first, as it came (one call per
    /// chunk for a relay that meters what it strips).
    #[pyo3(signature = (data, tap=None))]
    pub(super) fn feed<'py>(
        &mut self,
        py: Python<'py>,
        data: &Bound<'py, PyAny>,
        tap: Option<PyRefMut<'py, UsageTap>>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        // The interpreter is kept (the stripper is fast, and a stripper
        // shared between threads then serialises its calls).
        let input = Input::new(data)?;
        if let Some(mut tap) = tap {
            tap.feed_input(py, &input)?;
        }
        let held = self.inner.held();
        // Nothing held and nothing left out: the output is the input.
        let unchanged = |forwarded: usize, input: &Input<'_>| held == 0 && forwarded == input.len();
        if input.len() < COUNT_FIRST {
            let mut out = Vec::new();
            out.try_reserve(held + input.len()).map_err(memory_error)?;
            input.for_each(|piece| self.inner.feed_into(piece, &mut out))?;
            return match input {
                Input::InPlace(bytes) if unchanged(out.len(), &input) => Ok(bytes),
                _ => to_bytes(py, &out),
            };
        }
        // A large chunk: its output is counted on a copy of the state, then
        // written straight into a `bytes` object of that length, so it
        // exists once (no intermediate buffer the size of the chunk).
        let mut probe = self.inner.try_clone().map_err(memory_error)?;
        let mut count = Count(0);
        input.for_each(|piece| probe.feed_into(piece, &mut count))?;
        if unchanged(count.0, &input) {
            let bytes = input.to_bytes()?;
            self.inner = probe;
            return Ok(bytes);
        }
        drop(probe);
        let mut diverged = None;
        let bytes = PyBytes::new_with(py, count.0, |buf| {
            let mut fill = Fill::new(buf);
            // A window that cannot be allocated now leaves the stream cut
            // (the count's windows were had a moment ago): MemoryError.
            let fed = input.for_each(|piece| self.inner.feed_into(piece, &mut fill));
            diverged = fill.diverged();
            fed
        })?;
        match diverged {
            None => Ok(bytes),
            Some(rest) => rest.join(py, &bytes),
        }
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
