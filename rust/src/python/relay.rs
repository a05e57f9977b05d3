//! The proxy's per-chunk relay (`BodyRelay`): each body chunk the upstream
//! parser hands over is metered, framed as one HTTP/1.1 chunk and written
//! to the client's transport in one native call, with no Python frame.

use pyo3::exceptions::{PyException, PyTypeError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use super::convert::Input;
use super::filters::UsageChunkStripper;
use super::tap::UsageTap;

/// Relays one answer's body chunks to a client transport.
///
/// `write` and `is_closing` are the client transport's methods, `flow`
/// the object whose `write_paused` says that the transport is past its
/// high-water mark. `feed`, when given, meters each chunk and returns what
/// to pass on (None: the chunk itself); should it raise an `Exception`,
/// `failed` is told it, the chunk passes on and nothing more is fed.
/// `native` does what `feed` does with no Python call: a tap (its `feed`)
/// or a stripper and the tap it feeds (`stripper.feed(chunk, tap)`).
/// What a relay's `feed` does, done natively.
#[derive(FromPyObject)]
enum Native {
    /// `tap.feed(chunk)`: the chunk itself passes on.
    Tap(Py<UsageTap>),
    /// `stripper.feed(chunk, tap)`: what it returns passes on.
    Strip(Py<UsageChunkStripper>, Py<UsageTap>),
}

#[pyclass(module = "ssetally._core")]
pub struct BodyRelay {
    write: Py<PyAny>,
    is_closing: Py<PyAny>,
    flow: Py<PyAny>,
    feed: Option<Py<PyAny>>,
    /// What `feed` does, called natively (no Python call per chunk).
    native: Option<Native>,
    failed: Option<Py<PyAny>>,
    /// Body bytes received from the upstream.
    #[pyo3(get)]
    upstream_bytes: u64,
    /// Body bytes written to the client (without the chunk framing).
    #[pyo3(get)]
    client_bytes: u64,
}

#[pymethods]
impl BodyRelay {
    #[new]
    #[pyo3(
        signature = (write, is_closing, flow, feed=None, failed=None, native=None),
        text_signature = "(write, is_closing, flow, feed=None, failed=None, native=None)"
    )]
    fn new(
        write: Py<PyAny>,
        is_closing: Py<PyAny>,
        flow: Py<PyAny>,
        feed: Option<Py<PyAny>>,
        failed: Option<Py<PyAny>>,
        native: Option<Native>,
    ) -> Self {
        let native = native.filter(|_| feed.is_some());
        Self {
            write,
            is_closing,
            flow,
            feed,
            native,
            failed,
            upstream_bytes: 0,
            client_bytes: 0,
        }
    }

    /// Relays `body`; True when the client's transport is past its
    /// high-water mark (the caller then stops reading the upstream). A
    /// transport that fails or is closing is not written to: the client's
    /// disconnect ends the relay.
    fn __call__(&mut self, py: Python<'_>, body: Bound<'_, PyBytes>) -> PyResult<bool> {
        self.relay(py, body)
    }

    /// Whether chunks are still metered (`feed` given and never failed).
    #[getter]
    fn metering(&self) -> bool {
        self.feed.is_some()
    }
}

impl BodyRelay {
    /// `__call__`, for the native upstream body reader (no Python call).
    pub(super) fn relay(&mut self, py: Python<'_>, body: Bound<'_, PyBytes>) -> PyResult<bool> {
        self.upstream_bytes += body.as_bytes().len() as u64;
        let out = self.meter(py, body)?;
        let data = out.as_bytes();
        if !data.is_empty() {
            match self.is_closing.call0(py).and_then(|c| c.is_truthy(py)) {
                Ok(false) => {
                    self.client_bytes += data.len() as u64;
                    let framed = frame(py, data)?;
                    if self.write.call1(py, (framed,)).is_err() {
                        return Ok(false);
                    }
                }
                Ok(true) => {} // closing: its disconnect ends the relay
                Err(_) => return Ok(false),
            }
        }
        Ok(self
            .flow
            .getattr(py, intern!(py, "write_paused"))
            .and_then(|paused| paused.is_truthy(py))
            .unwrap_or(false))
    }

    /// What passes on of `body`: `feed`'s bytes, or `body` itself.
    fn meter<'py>(
        &mut self,
        py: Python<'py>,
        body: Bound<'py, PyBytes>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let Some(feed) = &self.feed else {
            return Ok(body);
        };
        let called = match &self.native {
            Some(Native::Tap(tap)) => tap
                .try_borrow_mut(py)
                .map_err(PyErr::from)
                .and_then(|mut tap| tap.feed_input(py, &Input::InPlace(body.clone())))
                .map(|()| py.None()),
            Some(Native::Strip(stripper, tap)) => strip_natively(py, stripper, tap, &body),
            None => feed.call1(py, (&body,)),
        };
        let fault = match called {
            Ok(out) if out.is_none(py) => return Ok(body),
            Ok(out) => match out.into_bound(py).cast_into::<PyBytes>() {
                Ok(bytes) => return Ok(bytes),
                Err(_) => PyTypeError::new_err("the metering feed returned neither bytes nor None"),
            },
            // Only an `Exception` stops metering; KeyboardInterrupt and kin go on up.
            Err(err) if err.is_instance_of::<PyException>(py) => err,
            Err(err) => return Err(err),
        };
        self.feed = None;
        self.native = None;
        if let Some(failed) = self.failed.take() {
            failed.call1(py, (fault.into_value(py),))?;
        }
        Ok(body)
    }
}

/// `stripper.feed(body, tap)`, with no Python call.
fn strip_natively(
    py: Python<'_>,
    stripper: &Py<UsageChunkStripper>,
    tap: &Py<UsageTap>,
    body: &Bound<'_, PyBytes>,
) -> PyResult<Py<PyAny>> {
    let mut stripper = stripper.try_borrow_mut(py)?;
    let tap = tap.try_borrow_mut(py)?;
    Ok(stripper
        .feed(py, body.as_any(), Some(tap))?
        .into_any()
        .unbind())
}

/// `data` as one chunk of the chunked transfer coding: its length in hex,
/// CRLF, the bytes, CRLF (one `bytes` object: one write).
fn frame<'py>(py: Python<'py>, data: &[u8]) -> PyResult<Bound<'py, PyBytes>> {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    // The length's hex digits, most significant first, then CRLF (no
    // formatter: this runs per chunk).
    let mut head = [0u8; 18]; // 16 hex digits of a u64 and CRLF
    let mut n = data.len() as u64;
    let mut start = 16;
    loop {
        start -= 1;
        head[start] = HEX[(n & 0xf) as usize];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    head[16..].copy_from_slice(b"\r\n");
    let head = &head[start..];
    PyBytes::new_with(py, head.len() + data.len() + 2, |buf| {
        buf[..head.len()].copy_from_slice(head);
        buf[head.len()..head.len() + data.len()].copy_from_slice(data);
        buf[head.len() + data.len()..].copy_from_slice(b"\r\n");
        Ok(())
    })
}
