//! The usage extractor of `ssetally._core`: `UsageTap`, the native base of
//! `ssetally.UsageTap`.

use std::time::Instant;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBool, PyDict, PyList, PyString, PyTuple};
use pyo3::IntoPyObjectExt;

use super::convert::{Input, DETACH_THRESHOLD};
use super::report::{output_dict, report_tuple};
use crate::sse::{DecoderConfig, DEFAULT_MAX_EVENT_SIZE};
use crate::usage::{ApiHint, UsageTap as CoreTap};

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
    /// Whether `feed` reads the clock itself (`clock=True`).
    clock: bool,
    /// The current stream has had its first `feed`.
    started: bool,
    /// `time.monotonic()` at the stream's first feed, at its first and its
    /// last feed that completed an output-bearing event (`clock=True`).
    first_read: Option<f64>,
    first_output: Option<f64>,
    last_output: Option<f64>,
}

/// `time.monotonic()`, read natively: Python's clock is read once, and then
/// advanced by `Instant`, which reads the same clock (`CLOCK_MONOTONIC` on
/// Linux) without a Python call. `Instant` is read first, so a reading is
/// never earlier than one Python took before it (at most the cost of one
/// Python clock call later than the clock).
fn monotonic(py: Python<'_>) -> PyResult<f64> {
    static BASE: PyOnceLock<(Instant, f64)> = PyOnceLock::new();
    let (then, at) = BASE.get_or_try_init(py, || {
        let clock = py.import("time")?.getattr("monotonic")?;
        let then = Instant::now();
        let at: f64 = clock.call0()?.extract()?;
        Ok::<_, PyErr>((then, at))
    })?;
    Ok(at + then.elapsed().as_secs_f64())
}

/// What `collect_output` asks for.
enum Collection {
    Off,
    Always,
    /// `"lazy"`: only where a response has no usage.
    Lazy,
}

fn collection(value: Option<&Bound<'_, PyAny>>) -> PyResult<Collection> {
    let Some(value) = value else {
        return Ok(Collection::Off);
    };
    if let Ok(flag) = value.cast::<PyBool>() {
        return Ok(if flag.is_true() {
            Collection::Always
        } else {
            Collection::Off
        });
    }
    if value
        .cast::<PyString>()
        .is_ok_and(|s| s.to_str().is_ok_and(|s| s == "lazy"))
    {
        return Ok(Collection::Lazy);
    }
    Err(PyValueError::new_err(
        "collect_output must be True, False or \"lazy\"",
    ))
}

#[pymethods]
impl UsageTap {
    #[new]
    #[pyo3(
        signature = (api="auto", *, max_event_size=DEFAULT_MAX_EVENT_SIZE, collect_output=None, timeline=false, clock=false),
        text_signature = "(api='auto', *, max_event_size=16777216, collect_output=False, timeline=False, clock=False)"
    )]
    fn new(
        api: &str,
        max_event_size: usize,
        collect_output: Option<&Bound<'_, PyAny>>,
        timeline: bool,
        clock: bool,
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
        inner = match collection(collect_output)? {
            Collection::Off => inner,
            Collection::Always => inner.collecting_output(),
            Collection::Lazy => inner.collecting_output_lazily(),
        };
        if timeline {
            inner = inner.with_timeline();
        }
        Ok(Self {
            inner,
            bytes_fed: 0,
            finished_store: None,
            clock,
            started: false,
            first_read: None,
            first_output: None,
            last_output: None,
        })
    }

    /// Tap one chunk of the stream. Never raises on any bytes. With
    /// `clock=True` it also notes when the stream's first chunk came and
    /// when chunks completed output-bearing events (and gives the timeline
    /// that reading).
    fn feed(&mut self, py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        self.feed_input(py, &Input::new(data)?)
    }

    /// `time.monotonic()` at the first `feed` of the stream (the last one
    /// after `finish_raw`); None without `clock=True` or before any feed.
    #[getter]
    fn first_read_at(&self) -> Option<f64> {
        self.first_read
    }

    /// `time.monotonic()` at the first `feed` that completed an
    /// output-bearing event; None without `clock=True` or before one.
    #[getter]
    fn first_output_at(&self) -> Option<f64> {
        self.first_output
    }

    /// `time.monotonic()` at the last `feed` that completed an
    /// output-bearing event; None without `clock=True` or before one.
    #[getter]
    fn last_output_at(&self) -> Option<f64> {
        self.last_output
    }

    /// End of stream: a report tuple per response in it (at least one).
    /// The tap is reset for a new stream; the output stays readable.
    fn finish_raw<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        self.bytes_fed = 0;
        self.started = false;
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

impl UsageTap {
    /// `feed` of bytes already taken in (shared with the stripper's
    /// `feed(data, tap=...)`).
    pub(super) fn feed_input(&mut self, py: Python<'_>, input: &Input<'_>) -> PyResult<()> {
        if self.bytes_fed == 0 {
            // A new stream: the last one's flag no longer applies.
            self.finished_store = None;
        }
        let mut now = None;
        if self.clock && !self.started {
            self.started = true;
            now = Some(monotonic(py)?);
            self.first_read = now;
            self.first_output = None;
            self.last_output = None;
        }
        self.bytes_fed += input.len() as u64;
        let before = if self.clock {
            self.inner.delta_chunks()
        } else {
            0
        };
        let inner = &mut self.inner;
        input.for_each(|piece| {
            if piece.len() >= DETACH_THRESHOLD {
                py.detach(|| inner.feed(piece));
            } else {
                inner.feed(piece);
            }
        })?;
        if self.clock && self.inner.delta_chunks() != before {
            let at = match now {
                Some(at) => at,
                None => monotonic(py)?,
            };
            self.first_output.get_or_insert(at);
            self.last_output = Some(at);
            self.inner.stamp(at);
        }
        Ok(())
    }
}
