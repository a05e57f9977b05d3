//! The event classes of `ssetally._core`: `ServerSentEvent` and the
//! `SSEDecoder` that makes them.

use pyo3::exceptions::{PyMemoryError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyList, PyString};
use pyo3::{intern, IntoPyObjectExt};

use super::convert::{json_loads, memory_error, text, try_copy, Input, DETACH_THRESHOLD};
use super::EventTooLargeError;
use crate::sse::{Decoder, DecoderConfig, EventRef, FeedStatus, DEFAULT_MAX_EVENT_SIZE};

/// One Server-Sent Event.
#[pyclass(frozen, module = "ssetally._core")]
pub struct ServerSentEvent {
    /// The event type; `"message"` when the stream named none.
    #[pyo3(get)]
    event: Py<PyString>,
    /// The data lines of the event, joined with LF.
    #[pyo3(get)]
    data: Py<PyString>,
    /// The last event ID at dispatch (it persists across events).
    #[pyo3(get)]
    id: Py<PyString>,
    /// The reconnection time in milliseconds set in this event's block.
    #[pyo3(get)]
    retry: Option<u64>,
}

#[pymethods]
impl ServerSentEvent {
    #[new]
    #[pyo3(signature = (event=None, data=None, id=None, retry=None))]
    fn new(
        py: Python<'_>,
        event: Option<Bound<'_, PyString>>,
        data: Option<Bound<'_, PyString>>,
        id: Option<Bound<'_, PyString>>,
        retry: Option<u64>,
    ) -> Self {
        let empty = || PyString::new(py, "").unbind();
        Self {
            event: match event {
                Some(e) if e.len().unwrap_or(0) > 0 => e.unbind(),
                _ => intern!(py, "message").clone().unbind(),
            },
            data: data.map_or_else(empty, Bound::unbind),
            id: id.map_or_else(empty, Bound::unbind),
            retry,
        }
    }

    /// The data parsed as JSON (`json.loads`).
    fn json<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        json_loads(py)?.call1((self.data.bind(py),))
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        let mut out = format!("ServerSentEvent(event={}", self.event.bind(py).repr()?);
        for (name, value) in [("data", &self.data), ("id", &self.id)] {
            let value = value.bind(py);
            if value.len()? > 0 {
                out.push_str(&format!(", {name}={}", value.repr()?));
            }
        }
        if let Some(retry) = self.retry {
            out.push_str(&format!(", retry={retry}"));
        }
        out.push(')');
        Ok(out)
    }

    fn __eq__(&self, py: Python<'_>, other: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        let Ok(other) = other.cast::<ServerSentEvent>() else {
            return Ok(py.NotImplemented());
        };
        let other = other.get();
        let equal = self.retry == other.retry
            && PyAnyMethods::eq(self.event.bind(py).as_any(), other.event.bind(py))?
            && PyAnyMethods::eq(self.data.bind(py).as_any(), other.data.bind(py))?
            && PyAnyMethods::eq(self.id.bind(py).as_any(), other.id.bind(py))?;
        equal.into_py_any(py)
    }

    fn __hash__(&self, py: Python<'_>) -> PyResult<isize> {
        (
            self.event.bind(py),
            self.data.bind(py),
            self.id.bind(py),
            self.retry,
        )
            .into_pyobject(py)?
            .hash()
    }
}

/// An event decoded with the interpreter released, built into a Python
/// object afterwards.
struct OwnedEvent {
    event: Vec<u8>,
    data: Vec<u8>,
    id: Vec<u8>,
    retry: Option<u64>,
}

impl TryFrom<EventRef<'_>> for OwnedEvent {
    type Error = std::collections::TryReserveError;

    fn try_from(ev: EventRef<'_>) -> Result<Self, Self::Error> {
        Ok(Self {
            event: try_copy(ev.event)?,
            data: try_copy(ev.data)?,
            id: try_copy(ev.id)?,
            retry: ev.retry,
        })
    }
}

impl OwnedEvent {
    fn as_ref(&self) -> EventRef<'_> {
        EventRef {
            event: &self.event,
            data: &self.data,
            id: &self.id,
            retry: self.retry,
        }
    }
}

/// The Python strings of the last event type and ID, reused while the
/// stream repeats them (IDs persist, types repeat).
#[derive(Default)]
struct StringCache {
    event: Option<(Vec<u8>, Py<PyString>)>,
    id: Option<(Vec<u8>, Py<PyString>)>,
}

fn cached(
    py: Python<'_>,
    slot: &mut Option<(Vec<u8>, Py<PyString>)>,
    bytes: &[u8],
) -> PyResult<Py<PyString>> {
    if let Some((key, value)) = slot {
        if key == bytes {
            return Ok(value.clone_ref(py));
        }
    }
    let value = text(py, bytes)?.unbind();
    *slot = Some((try_copy(bytes).map_err(memory_error)?, value.clone_ref(py)));
    Ok(value)
}

impl StringCache {
    fn build(&mut self, py: Python<'_>, ev: EventRef<'_>) -> PyResult<ServerSentEvent> {
        let event = if ev.event.is_empty() {
            intern!(py, "message").clone().unbind()
        } else {
            cached(py, &mut self.event, ev.event)?
        };
        Ok(ServerSentEvent {
            event,
            data: text(py, ev.data)?.unbind(),
            id: cached(py, &mut self.id, ev.id)?,
            retry: ev.retry,
        })
    }
}

/// Incremental WHATWG Server-Sent Events decoder.
#[pyclass(module = "ssetally._core")]
pub struct SSEDecoder {
    inner: Decoder,
    cache: StringCache,
}

impl SSEDecoder {
    /// Decodes one piece of the input into `events`. The first failure to
    /// build an event goes to `failed`; the rest of the piece is still
    /// decoded, so the decoder stays in step with the stream.
    fn feed_piece(
        &mut self,
        py: Python<'_>,
        piece: &[u8],
        events: &mut Vec<ServerSentEvent>,
        failed: &mut Option<PyErr>,
    ) -> FeedStatus {
        if piece.len() < DETACH_THRESHOLD {
            let cache = &mut self.cache;
            return self.inner.feed(piece, |ev| match cache.build(py, ev) {
                Ok(ev) => events.push(ev),
                Err(e) => *failed = failed.take().or(Some(e)),
            });
        }
        let inner = &mut self.inner;
        let mut owned = Vec::new();
        let mut copy_failed = None;
        let status = py.detach(|| {
            inner.feed(piece, |ev| match OwnedEvent::try_from(ev) {
                Ok(ev) => owned.push(ev),
                Err(e) => copy_failed = copy_failed.take().or(Some(e)),
            })
        });
        if let Some(e) = copy_failed {
            *failed = failed.take().or(Some(memory_error(e)));
        }
        for ev in &owned {
            match self.cache.build(py, ev.as_ref()) {
                Ok(ev) => events.push(ev),
                Err(e) => *failed = failed.take().or(Some(e)),
            }
        }
        status
    }
}

#[pymethods]
impl SSEDecoder {
    #[new]
    #[pyo3(signature = (*, max_event_size=DEFAULT_MAX_EVENT_SIZE, retry_only_events=false), text_signature = "(*, max_event_size=16777216, retry_only_events=False)")]
    fn new(max_event_size: usize, retry_only_events: bool) -> PyResult<Self> {
        if max_event_size == 0 {
            return Err(PyValueError::new_err("max_event_size must be positive"));
        }
        Ok(Self {
            inner: Decoder::new(DecoderConfig {
                max_event_size,
                retry_only_events,
            }),
            cache: StringCache::default(),
        })
    }

    /// Decode a chunk of bytes; returns the events it completed.
    fn feed<'py>(
        &mut self,
        py: Python<'py>,
        data: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyList>> {
        let input = Input::new(data)?;
        let mut events: Vec<ServerSentEvent> = Vec::new();
        let mut failed: Option<PyErr> = None;
        let mut status = FeedStatus::default();
        input.for_each(|piece| {
            let s = self.feed_piece(py, piece, &mut events, &mut failed);
            status.oversized_events = status.oversized_events.saturating_add(s.oversized_events);
            status.out_of_memory = status.out_of_memory.saturating_add(s.out_of_memory);
        })?;
        if let Some(err) = failed {
            return Err(err);
        }
        if status.out_of_memory > 0 {
            return Err(PyMemoryError::new_err(format!(
                "ssetally: out of memory while buffering the stream; {} event(s) were discarded",
                status.out_of_memory
            )));
        }
        let list = PyList::new(py, events)?;
        if status.oversized_events > 0 {
            let err = EventTooLargeError::new_err(format!(
                "{} event(s) exceeded max_event_size={} bytes and were discarded",
                status.oversized_events,
                self.inner.config().max_event_size
            ));
            err.value(py).setattr("events", &list)?;
            return Err(err);
        }
        Ok(list)
    }

    /// End of stream: discards an unterminated event and resets the
    /// decoder. Returns True when such a partial event was dropped.
    fn finish(&mut self) -> bool {
        self.cache = StringCache::default();
        self.inner.finish().dropped_partial
    }

    /// The last event ID seen, for a `Last-Event-ID` reconnect header.
    #[getter]
    fn last_event_id<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyString>> {
        text(py, self.inner.last_event_id())
    }

    #[getter]
    fn max_event_size(&self) -> usize {
        self.inner.config().max_event_size
    }
}
