//! The proxy's upstream answer body (`UpstreamBody`): the asyncio protocol
//! of an upstream connection from the end of an answer's header section to
//! the end of its body. Each read is transfer-decoded natively and its body
//! bytes go straight to the diverted `BodyRelay` (no Python frame per
//! chunk), or to the connection's `on_body` while none is diverted. What
//! happens rarely (the end, a failure, a congested client, the close) is
//! handed to the connection (the `owner`), which restores itself as the
//! transport's protocol once the body has ended.

use std::time::Instant;

use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use pyo3::{PyTraverseError, PyVisit};

use super::relay::BodyRelay;
use crate::http1::{head_end as find_head_end, BodyDecoder, Framing};

/// Where the header section in `data` ends (the index past its blank line:
/// CRLF CRLF, or a bare LF in either place), or -1 when it does not yet.
#[pyfunction]
pub fn head_end(data: &[u8]) -> isize {
    find_head_end(data, 0).map_or(-1, |end| isize::try_from(end).unwrap_or(isize::MAX))
}

/// An upstream answer's body, read as the connection's protocol.
///
/// `owner` is the connection: it is given `on_body(chunk)` while no relay
/// is diverted, `body_congested()` when the relay's client is past its
/// high-water mark, `body_done(stray)` once when the body ended (`stray`:
/// bytes followed it in the same read), `body_failed(message)` when it
/// cannot be read, and the transport's `eof_received`, `connection_lost`,
/// `pause_writing` and `resume_writing`. The framing comes from the
/// `Transfer-Encoding` and `Content-Length` values (`bodyless` for an answer
/// to HEAD, a 204 or a 304); a chunked body's trailer section holds at most
/// `max_trailer_bytes`. Raises `ValueError` for a `Content-Length` that is
/// not one number.
#[pyclass(module = "ssetally._core")]
pub struct UpstreamBody {
    owner: Option<Py<PyAny>>,
    relay: Option<Py<BodyRelay>>,
    decoder: BodyDecoder,
    /// The last read (for the upstream's silence timer).
    last: Instant,
    /// `body_done` or `body_failed` was given.
    ended: bool,
    /// The framing's name: `chunked`, `length` or `close`.
    #[pyo3(get)]
    framing: &'static str,
}

#[pymethods]
impl UpstreamBody {
    #[new]
    #[pyo3(
        signature = (owner, transfer_encoding, content_length, bodyless, max_trailer_bytes),
        text_signature = "(owner, transfer_encoding, content_length, bodyless, max_trailer_bytes)"
    )]
    fn new(
        owner: Py<PyAny>,
        transfer_encoding: Option<&[u8]>,
        content_length: Option<&[u8]>,
        bodyless: bool,
        max_trailer_bytes: usize,
    ) -> PyResult<Self> {
        let framing = Framing::of(transfer_encoding, content_length, bodyless)
            .map_err(|e| PyValueError::new_err(e.to_string()))?;
        Ok(Self {
            owner: Some(owner),
            relay: None,
            decoder: BodyDecoder::new(framing, max_trailer_bytes),
            last: Instant::now(),
            ended: false,
            framing: match framing {
                Framing::Chunked => "chunked",
                Framing::Length(_) => "length",
                Framing::Close => "close",
            },
        })
    }

    /// Hand every body byte read from now on to `relay` (None: to the
    /// owner's `on_body` again).
    #[pyo3(signature = (relay))]
    fn divert(&mut self, relay: Option<Py<BodyRelay>>) {
        self.relay = relay;
    }

    /// The body has ended (its last byte was read).
    #[getter]
    fn done(&self) -> bool {
        self.decoder.is_done()
    }

    /// Seconds since the last read.
    fn idle_seconds(&self) -> f64 {
        self.last.elapsed().as_secs_f64()
    }

    /// One read of the connection. A Python error of the relay or of
    /// `on_body` (not a metering fault: those the relay absorbs) goes up
    /// to the transport.
    fn data_received(&mut self, py: Python<'_>, data: Bound<'_, PyBytes>) -> PyResult<()> {
        self.last = Instant::now();
        if self.ended {
            return Ok(());
        }
        // Borrowed, not cloned: this runs per read.
        let Some(owner) = self.owner.as_ref() else {
            return Err(cleared());
        };
        let bytes = data.as_bytes();
        // The read's body bytes are handed on in one piece, whatever chunks
        // of the upstream they came in: one meter call and one write to the
        // client per read, as the upstream's own writes coalesced.
        let mut first: Option<&[u8]> = None;
        let mut more: Vec<&[u8]> = Vec::new();
        let read = self.decoder.decode(bytes, |body| {
            if !body.is_empty() {
                if first.is_none() {
                    first = Some(body);
                } else {
                    more.push(body);
                }
            }
            true
        });
        if let Some(body) = first {
            let chunk = if more.is_empty() && body.len() == bytes.len() {
                data.clone() // the whole read: handed on without a copy
            } else if more.is_empty() {
                super::convert::to_bytes(py, body)?
            } else {
                joined(py, body, &more)?
            };
            match self.relay.as_ref() {
                Some(relay) => {
                    let congested = relay
                        .try_borrow_mut(py)
                        .map_err(|_| PyRuntimeError::new_err("the relay is busy"))?
                        .relay(py, chunk)?;
                    if congested {
                        owner.call_method0(py, intern!(py, "body_congested"))?;
                    }
                }
                None => {
                    owner.call_method1(py, intern!(py, "on_body"), (chunk,))?;
                }
            }
        }
        match read {
            Err(err) => {
                self.ended = true;
                let message = format!("malformed answer from the upstream: {err}");
                owner.call_method1(py, intern!(py, "body_failed"), (message,))?;
            }
            Ok(read) if self.decoder.is_done() => {
                self.ended = true;
                owner.call_method1(py, intern!(py, "body_done"), (read < bytes.len(),))?;
            }
            Ok(_) => {}
        }
        Ok(())
    }

    /// The upstream closed its side: the end of a close-delimited body, a
    /// failure of any other that is not whole; then the owner's own.
    fn eof_received(&mut self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let owner = self.owner(py)?;
        if !self.ended {
            self.ended = true;
            match self.decoder.eof() {
                Ok(()) => owner.call_method1(py, intern!(py, "body_done"), (false,))?,
                Err(err) => {
                    owner.call_method1(py, intern!(py, "body_failed"), (err.to_string(),))?
                }
            };
        }
        owner.call_method0(py, intern!(py, "eof_received"))
    }

    fn connection_lost(&mut self, py: Python<'_>, exc: Py<PyAny>) -> PyResult<()> {
        let owner = self.owner(py)?;
        self.relay = None;
        owner.call_method1(py, intern!(py, "connection_lost"), (exc,))?;
        Ok(())
    }

    fn pause_writing(&self, py: Python<'_>) -> PyResult<()> {
        self.owner(py)?
            .call_method0(py, intern!(py, "pause_writing"))
            .map(drop)
    }

    fn resume_writing(&self, py: Python<'_>) -> PyResult<()> {
        self.owner(py)?
            .call_method0(py, intern!(py, "resume_writing"))
            .map(drop)
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        if let Some(owner) = &self.owner {
            visit.call(owner)?;
        }
        if let Some(relay) = &self.relay {
            visit.call(relay)?;
        }
        Ok(())
    }

    fn __clear__(&mut self) {
        self.owner = None;
        self.relay = None;
    }
}

impl UpstreamBody {
    fn owner(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.owner
            .as_ref()
            .map(|o| o.clone_ref(py))
            .ok_or_else(cleared)
    }
}

/// `first` and `more` as one `bytes` object.
fn joined<'py>(py: Python<'py>, first: &[u8], more: &[&[u8]]) -> PyResult<Bound<'py, PyBytes>> {
    let len = more.iter().fold(first.len(), |n, piece| n + piece.len());
    PyBytes::new_with(py, len, |buf| {
        buf[..first.len()].copy_from_slice(first);
        let mut at = first.len();
        for piece in more {
            buf[at..at + piece.len()].copy_from_slice(piece);
            at += piece.len();
        }
        Ok(())
    })
}

fn cleared() -> PyErr {
    PyRuntimeError::new_err("the upstream body was cleared")
}
