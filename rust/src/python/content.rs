//! The content decoder of `ssetally._core`: `ContentDecoder`, bounded
//! decompression of a body for metering.

use pyo3::exceptions::{PyMemoryError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use super::convert::{to_bytes, Input};
use super::{DecompressionBombError, DecompressionError};

/// Bounded incremental decoder of a `Content-Encoding` (gzip, deflate,
/// br, zstd, identity, or several stacked), for metering a compressed
/// body while the raw bytes are forwarded.
#[pyclass(module = "ssetally._core")]
pub struct ContentDecoder {
    inner: crate::decode::ContentDecoder,
    out: Vec<u8>,
}

fn decode_err(e: crate::decode::Error) -> PyErr {
    use crate::decode::Error;
    match e {
        Error::Bomb { .. } => DecompressionBombError::new_err(e.to_string()),
        Error::OutOfMemory => PyMemoryError::new_err(e.to_string()),
        Error::Unsupported(msg) => PyValueError::new_err(msg),
        _ => DecompressionError::new_err(e.to_string()),
    }
}

#[pymethods]
impl ContentDecoder {
    #[new]
    #[pyo3(signature = (
        content_encoding,
        *,
        max_output_per_feed=crate::decode::DEFAULT_MAX_OUTPUT_PER_FEED,
        max_total_output=crate::decode::DEFAULT_MAX_TOTAL_OUTPUT,
    ),
    text_signature = "(content_encoding, *, max_output_per_feed=8388608, max_total_output=268435456)"
    )]
    fn new(
        content_encoding: &str,
        max_output_per_feed: usize,
        max_total_output: u64,
    ) -> PyResult<Self> {
        if max_output_per_feed == 0 || max_total_output == 0 {
            return Err(PyValueError::new_err("limits must be positive"));
        }
        let limits = crate::decode::Limits {
            max_output_per_feed,
            max_total_output,
        };
        let inner =
            crate::decode::ContentDecoder::new(content_encoding, limits).map_err(decode_err)?;
        Ok(Self {
            inner,
            out: Vec::new(),
        })
    }

    /// The decoded bytes this chunk completes (at most
    /// `max_output_per_feed`). Raises `DecompressionBombError` past a
    /// limit and `DecompressionError` on corrupt input; after either the
    /// decoder is finished.
    fn feed<'py>(
        &mut self,
        py: Python<'py>,
        data: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let input = Input::new(data)?;
        // The per-feed limit holds for one call of the core decoder, so a
        // buffer that is not `bytes` is copied whole (it is the compressed
        // input, which the limits do not bound anyway).
        let copy = match input.in_place() {
            Some(_) => None,
            None => Some(input.to_vec()?),
        };
        let chunk = copy.as_deref().or(input.in_place()).unwrap_or_default();
        let (inner, out) = (&mut self.inner, &mut self.out);
        out.clear();
        // Decoding owns `out` and reads immutable bytes or its own copy.
        let result = py.detach(|| inner.feed(chunk, out));
        drop(copy);
        let bytes = to_bytes(py, out)?;
        // A bomb's full buffer is not kept for the next feed.
        if out.capacity() > 1 << 20 {
            *out = Vec::new();
        }
        result.map_err(decode_err)?;
        Ok(bytes)
    }

    /// End of the body: raises `DecompressionError` if it was cut short.
    fn finish(&mut self) -> PyResult<()> {
        self.inner.finish().map_err(decode_err)
    }

    /// Decoded bytes produced so far.
    #[getter]
    fn total_output(&self) -> u64 {
        self.inner.total_output()
    }

    /// The codings in header order, normalized (`"identity"` for none).
    #[getter]
    fn encoding(&self) -> &str {
        self.inner.encoding()
    }

    #[getter]
    fn max_output_per_feed(&self) -> usize {
        self.inner.limits().max_output_per_feed
    }

    #[getter]
    fn max_total_output(&self) -> u64 {
        self.inner.limits().max_total_output
    }
}
