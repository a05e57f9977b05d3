//! PyO3 bindings: the `ssetally._core` extension module. All Python glue of
//! the crate lives here (and in the submodules); the modules it wraps know
//! nothing of Python.

mod convert;
mod filters;

use pyo3::create_exception;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

create_exception!(
    ssetally._core,
    EventTooLargeError,
    PyValueError,
    "An event exceeded the decoder's max_event_size and was discarded."
);

create_exception!(
    ssetally._core,
    DecompressionError,
    PyValueError,
    "A compressed body is corrupt or truncated."
);

create_exception!(
    ssetally._core,
    DecompressionBombError,
    DecompressionError,
    "A compressed body decompressed past a ContentDecoder limit."
);

#[pymodule(gil_used = false)]
mod _core {
    use pyo3::exceptions::{PyMemoryError, PyValueError};
    use pyo3::prelude::*;
    use pyo3::sync::PyOnceLock;
    use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyTuple};
    use pyo3::{intern, IntoPyObjectExt};

    use jiter::JsonValue;

    use super::convert::{chunk_bytes, memory_error, text, try_copy};
    use crate::reassemble::Output;
    use crate::sse::{Decoder, DecoderConfig, EventRef, DEFAULT_MAX_EVENT_SIZE};
    use crate::usage::{ApiHint, Report, Usage, UsageTap as CoreTap};

    #[pymodule_export]
    #[allow(non_upper_case_globals)]
    const __version__: &str = env!("CARGO_PKG_VERSION");

    #[pymodule_export]
    const DEFAULT_MAX_EVENT_SIZE_BYTES: usize = DEFAULT_MAX_EVENT_SIZE;

    #[pymodule_export]
    use super::EventTooLargeError;

    #[pymodule_export]
    use super::{DecompressionBombError, DecompressionError};

    #[pymodule_export]
    use super::filters::{LineDecoder, UsageChunkStripper};

    /// Chunks at least this large are decoded with the interpreter released.
    const DETACH_THRESHOLD: usize = 64 * 1024;

    fn json_loads(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
        static LOADS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
        LOADS
            .get_or_try_init(py, || {
                Ok::<_, PyErr>(py.import("json")?.getattr("loads")?.unbind())
            })
            .map(|f| f.bind(py))
    }

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
            let chunk = chunk_bytes(data)?;
            let mut events: Vec<ServerSentEvent> = Vec::new();
            // The first failure to build an event; the rest of the chunk is
            // still decoded, so the decoder stays in step with the stream.
            let mut failed: Option<PyErr> = None;
            let status = if chunk.len() >= DETACH_THRESHOLD {
                let inner = &mut self.inner;
                let mut owned = Vec::new();
                let mut copy_failed = None;
                let status = py.detach(|| {
                    inner.feed(&chunk, |ev| match OwnedEvent::try_from(ev) {
                        Ok(ev) => owned.push(ev),
                        Err(e) => copy_failed = copy_failed.take().or(Some(e)),
                    })
                });
                failed = copy_failed.map(memory_error);
                for ev in &owned {
                    match self.cache.build(py, ev.as_ref()) {
                        Ok(ev) => events.push(ev),
                        Err(e) => failed = failed.take().or(Some(e)),
                    }
                }
                status
            } else {
                let cache = &mut self.cache;
                self.inner.feed(&chunk, |ev| match cache.build(py, ev) {
                    Ok(ev) => events.push(ev),
                    Err(e) => failed = failed.take().or(Some(e)),
                })
            };
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

    /// The usage extractor: frames the stream and reads usage natively,
    /// creating no Python object per event. `ssetally.UsageTap` subclasses
    /// it, so `feed` is called with no Python frame in between.
    #[pyclass(subclass, module = "ssetally._core")]
    pub struct UsageTap {
        inner: CoreTap,
        bytes_fed: u64,
        /// The `store` flag the last finished stream's responses echoed,
        /// readable after `finish_raw` reset the tap.
        finished_store: Option<bool>,
    }

    /// A usage record as a tuple in the field order of Python's `Usage`.
    /// A usage as a tuple in the field order of Python's `Usage`, its raw
    /// object already a dict.
    fn usage_tuple<'py>(
        py: Python<'py>,
        u: &Usage,
        note: Option<&str>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let raw = json_value(py, &u.raw)?;
        let raw = match raw.cast_into::<PyDict>() {
            Ok(dict) => dict,
            Err(_) => PyDict::new(py),
        };
        (
            u.input_tokens,
            u.output_tokens,
            u.total_tokens,
            u.cached_input_tokens,
            u.cache_write_tokens,
            u.reasoning_tokens,
            intern!(py, "stream"),
            raw,
            note,
        )
            .into_pyobject(py)
    }

    /// A report as a tuple with every field of Python's `StreamReport`, in
    /// order, so it becomes one without a call per field.
    fn report_tuple<'py>(py: Python<'py>, r: &Report) -> PyResult<Bound<'py, PyTuple>> {
        let note = r.usage_note.as_deref();
        let usage = r
            .usage
            .as_ref()
            .map(|u| usage_tuple(py, u, note))
            .transpose()?;
        let steps = r
            .step_usages
            .iter()
            .map(|u| usage_tuple(py, u, None))
            .collect::<PyResult<Vec<_>>>()?;
        let error = r.error.as_deref().map(|e| json_value(py, e)).transpose()?;
        let fields = [
            usage.into_bound_py_any(py)?,
            r.api.as_str().into_bound_py_any(py)?,
            r.response_id.as_deref().into_bound_py_any(py)?,
            r.model.as_deref().into_bound_py_any(py)?,
            r.status.as_str().into_bound_py_any(py)?,
            r.finish_reason.as_deref().into_bound_py_any(py)?,
            r.incomplete_reason.as_deref().into_bound_py_any(py)?,
            error.into_bound_py_any(py)?,
            r.events.into_bound_py_any(py)?,
            r.delta_chunks.into_bound_py_any(py)?,
            r.bytes.into_bound_py_any(py)?,
            r.done.into_bound_py_any(py)?,
            r.oversized_events.into_bound_py_any(py)?,
            r.invalid_json_events.into_bound_py_any(py)?,
            PyTuple::new(py, &r.warnings)?.into_any(),
            PyTuple::new(py, steps)?.into_any(),
            // attempts, timings, output: filled in by the client layer.
            PyTuple::empty(py).into_any(),
            py.None().into_bound(py),
            py.None().into_bound(py),
        ];
        PyTuple::new(py, fields)
    }

    /// `json.loads(text)`, or `text` itself when it is not JSON. Small
    /// objects (usage, errors) are built straight from jiter's parse; what
    /// it refuses (huge integers, lone surrogates) goes to `json.loads`.
    fn json_value<'py>(py: Python<'py>, text: &str) -> PyResult<Bound<'py, PyAny>> {
        if let Ok(value) = JsonValue::parse(text.as_bytes(), true) {
            if let Some(obj) = value_to_py(py, &value, 0)? {
                return Ok(obj);
            }
        }
        Ok(json_loads(py)?
            .call1((text,))
            .unwrap_or_else(|_| PyString::new(py, text).into_any()))
    }

    /// Nesting deeper than this is left to `json.loads`.
    const MAX_JSON_DEPTH: usize = 64;

    fn value_to_py<'py>(
        py: Python<'py>,
        value: &JsonValue<'_>,
        depth: usize,
    ) -> PyResult<Option<Bound<'py, PyAny>>> {
        if depth > MAX_JSON_DEPTH {
            return Ok(None);
        }
        Ok(Some(match value {
            JsonValue::Null => py.None().into_bound(py),
            JsonValue::Bool(b) => b.into_bound_py_any(py)?,
            JsonValue::Int(i) => i.into_bound_py_any(py)?,
            JsonValue::Float(f) => f.into_bound_py_any(py)?,
            JsonValue::Str(s) => PyString::new(py, s).into_any(),
            JsonValue::Array(items) => {
                let list = PyList::empty(py);
                for item in items.iter() {
                    match value_to_py(py, item, depth + 1)? {
                        Some(obj) => list.append(obj)?,
                        None => return Ok(None),
                    }
                }
                list.into_any()
            }
            JsonValue::Object(fields) => {
                let dict = PyDict::new(py);
                for (key, item) in fields.iter() {
                    match value_to_py(py, item, depth + 1)? {
                        Some(obj) => dict.set_item(key.as_ref(), obj)?,
                        None => return Ok(None),
                    }
                }
                dict.into_any()
            }
        }))
    }

    fn output_dict<'py>(py: Python<'py>, out: &Output) -> PyResult<Bound<'py, PyDict>> {
        let choices = PyList::empty(py);
        for (index, choice) in &out.choices {
            let c = PyDict::new(py);
            c.set_item("index", index)?;
            c.set_item("text", &choice.text)?;
            c.set_item("refusal", &choice.refusal)?;
            c.set_item("reasoning", &choice.reasoning)?;
            c.set_item("finish_reason", choice.finish_reason.as_deref())?;
            c.set_item("output_tokens", choice.output_tokens)?;
            let calls = PyList::empty(py);
            for (call_index, call) in &choice.tool_calls {
                let t = PyDict::new(py);
                t.set_item("index", call_index)?;
                t.set_item("id", &call.id)?;
                t.set_item("name", &call.name)?;
                t.set_item("arguments", &call.arguments)?;
                calls.append(t)?;
            }
            c.set_item("tool_calls", calls)?;
            choices.append(c)?;
        }
        let d = PyDict::new(py);
        d.set_item("response_id", out.response_id.as_deref())?;
        d.set_item("choices", choices)?;
        Ok(d)
    }

    #[pymethods]
    impl UsageTap {
        #[new]
        #[pyo3(
            signature = (api="auto", *, max_event_size=DEFAULT_MAX_EVENT_SIZE, collect_output=false, timeline=false),
            text_signature = "(api='auto', *, max_event_size=16777216, collect_output=False, timeline=False)"
        )]
        fn new(
            api: &str,
            max_event_size: usize,
            collect_output: bool,
            timeline: bool,
        ) -> PyResult<Self> {
            let hint: ApiHint = api
                .parse()
                .map_err(|e: crate::usage::UnknownApiHint| PyValueError::new_err(e.to_string()))?;
            if max_event_size == 0 {
                return Err(PyValueError::new_err("max_event_size must be positive"));
            }
            let config = DecoderConfig {
                max_event_size,
                retry_only_events: false,
            };
            let mut inner = CoreTap::new(hint, config);
            if collect_output {
                inner = inner.collecting_output();
            }
            if timeline {
                inner = inner.with_timeline();
            }
            Ok(Self {
                inner,
                bytes_fed: 0,
                finished_store: None,
            })
        }

        /// Tap one chunk of the stream. Never raises on any bytes.
        fn feed(&mut self, py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<()> {
            let chunk = chunk_bytes(data)?;
            if self.bytes_fed == 0 {
                // A new stream: the last one's flag no longer applies.
                self.finished_store = None;
            }
            self.bytes_fed += chunk.len() as u64;
            if chunk.len() >= DETACH_THRESHOLD {
                let inner = &mut self.inner;
                py.detach(|| inner.feed(&chunk));
            } else {
                self.inner.feed(&chunk);
            }
            Ok(())
        }

        /// End of stream: a report tuple per response in it (at least one).
        /// The tap is reset for a new stream; the output stays readable.
        fn finish_raw<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
            self.bytes_fed = 0;
            let finished = self.inner.finish();
            self.finished_store = finished.iter().rev().find_map(|r| r.store);
            let reports = finished
                .iter()
                .map(|r| report_tuple(py, r))
                .collect::<PyResult<Vec<_>>>()?;
            PyList::new(py, reports)
        }

        /// The reports so far, without ending the stream.
        fn snapshot_raw<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
            let reports = self
                .inner
                .snapshot()
                .iter()
                .map(|r| report_tuple(py, r))
                .collect::<PyResult<Vec<_>>>()?;
            PyList::new(py, reports)
        }

        /// The reassembled output (`{"choices": [...]}`), or None when the tap
        /// was not asked to collect it.
        fn output<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
            self.inner.output().map(|o| output_dict(py, o)).transpose()
        }

        /// The reassembled output of every response of the stream, in order
        /// (one per report), each `{"response_id": ..., "choices": [...]}`;
        /// empty when the tap was not asked to collect it.
        fn outputs<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
            let items = self
                .inner
                .outputs()
                .into_iter()
                .map(|o| output_dict(py, o))
                .collect::<PyResult<Vec<_>>>()?;
            PyList::new(py, items)
        }

        /// Gives the output events of the reads fed since the last call the
        /// clock reading `at` (no-op unless the tap keeps a timeline).
        fn stamp(&mut self, at: f64) {
            self.inner.stamp(at);
        }

        /// The timing log, or None unless the tap keeps one: `(at, text_end,
        /// output_tokens, text, kept_chars, dropped, dropped_chars)`, the
        /// first three lists with one item per output event.
        fn timeline_raw<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyTuple>>> {
            let Some(t) = self.inner.timeline() else {
                return Ok(None);
            };
            let entries = t.entries();
            let at = PyList::new(py, entries.iter().map(|e| e.at))?;
            let ends = PyList::new(py, entries.iter().map(|e| e.text_end))?;
            let tokens = PyList::new(py, entries.iter().map(|e| e.output_tokens))?;
            let fields = [
                at.into_any(),
                ends.into_any(),
                tokens.into_any(),
                PyString::new(py, t.text()).into_any(),
                t.kept_chars().into_bound_py_any(py)?,
                t.dropped().into_bound_py_any(py)?,
                t.dropped_chars().into_bound_py_any(py)?,
            ];
            PyTuple::new(py, fields).map(Some)
        }

        /// Clears the reassembled output (for reusing the tap).
        fn clear_output(&mut self) {
            self.inner.take_output();
        }

        /// The `store` flag the response echoed in `response.created`
        /// (Responses), for the stream being read or else the last one
        /// finished; None when it did not say.
        #[getter]
        fn store(&self) -> Option<bool> {
            self.inner.store().or(self.finished_store)
        }

        #[getter]
        fn bytes_fed(&self) -> u64 {
            self.bytes_fed
        }

        #[getter]
        fn delta_chunks(&self) -> u64 {
            self.inner.delta_chunks()
        }

        #[getter]
        fn response_id(&self) -> Option<String> {
            self.inner.response_id()
        }

        #[getter]
        fn api(&self) -> &'static str {
            self.inner.api().as_str()
        }
    }

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
            Error::Bomb { .. } => super::DecompressionBombError::new_err(e.to_string()),
            Error::OutOfMemory => pyo3::exceptions::PyMemoryError::new_err(e.to_string()),
            Error::Unsupported(msg) => PyValueError::new_err(msg),
            _ => super::DecompressionError::new_err(e.to_string()),
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
            let chunk = chunk_bytes(data)?;
            let (inner, out) = (&mut self.inner, &mut self.out);
            out.clear();
            // Decoding owns `chunk` and `out`: nothing Python can touch.
            let result = py.detach(|| inner.feed(&chunk, out));
            let bytes = PyBytes::new(py, out);
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
}
