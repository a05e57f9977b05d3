//! The proxy's metric counts of finished requests, added up natively per
//! series (`Tally`): reading a record's few metered fields costs a fraction
//! of doing it in Python, once per request. `ssetally._gateway._metrics`
//! applies what it `take`s to its Prometheus metrics.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyFloat, PyInt, PyString};
use pyo3::{intern, IntoPyObjectExt};

/// Label value of the model names past the bounds.
const OTHER_MODEL: &str = "other";

/// The token kinds counted: their label and the usage field they come from.
const TOKEN_KINDS: [(&str, &str); 4] = [
    ("input", "input_tokens"),
    ("output", "output_tokens"),
    ("cached_input", "cached_input_tokens"),
    ("reasoning", "reasoning_tokens"),
];

/// What finished requests added to each series since the last `take`, in
/// maps looked up by borrowed text (no allocation for a series seen before).
#[pyclass(module = "ssetally._core")]
pub struct Tally {
    /// status -> api -> requests.
    requests: HashMap<String, HashMap<String, u64>>,
    /// model -> source -> tokens of each of `TOKEN_KINDS`.
    tokens: HashMap<String, HashMap<String, [u64; 4]>>,
    /// api -> the durations of its streams.
    durations: HashMap<String, Vec<f64>>,
    client_bytes: u64,
    /// Records handed to the sink: queued, dropped.
    records: [u64; 2],
    /// Counts held since the last `take`.
    held: usize,
    models: HashSet<String>,
    max_models: usize,
    max_model_length: usize,
}

/// `str(value)`, as the label value of a field (the text of a `str` itself,
/// borrowed).
fn label<'a>(value: &'a Bound<'_, PyAny>) -> PyResult<Cow<'a, str>> {
    if let Ok(text) = value.cast_exact::<PyString>() {
        if let Ok(text) = text.to_str() {
            return Ok(Cow::Borrowed(text));
        }
    }
    Ok(Cow::Owned(value.str()?.to_string_lossy().into_owned()))
}

/// The entry of `key` in `map`, made only when missing.
fn slot<'m, V: Default>(map: &'m mut HashMap<String, V>, key: &str) -> &'m mut V {
    if !map.contains_key(key) {
        map.insert(key.to_owned(), V::default());
    }
    map.get_mut(key).expect("inserted above")
}

/// `record.get(key)` of a dict, None for what is not one.
fn field<'py>(record: &Bound<'py, PyAny>, key: &Bound<'py, PyString>) -> Option<Bound<'py, PyAny>> {
    let dict = record.cast::<PyDict>().ok()?;
    dict.get_item(key).ok().flatten().filter(|v| !v.is_none())
}

/// `record.get(key) or default` (Python's truthiness).
fn field_or<'py>(
    record: &Bound<'py, PyAny>,
    key: &Bound<'py, PyString>,
) -> PyResult<Option<Bound<'py, PyAny>>> {
    match field(record, key) {
        Some(v) if v.is_truthy()? => Ok(Some(v)),
        _ => Ok(None),
    }
}

/// A count of a record: an `int` (a `bool` too, as `isinstance(v, int)` has
/// it) above zero.
fn count(value: Option<Bound<'_, PyAny>>) -> Option<u64> {
    let value = value?;
    if value.cast::<PyInt>().is_err() {
        return None;
    }
    let n: u64 = value.extract().ok()?; // past 64 bits: not counted
    (n > 0).then_some(n)
}

#[pymethods]
impl Tally {
    /// `Tally(max_models, max_model_length)`: model names past the first
    /// `max_models` distinct ones, or longer than `max_model_length`
    /// characters, are counted as `other`.
    #[new]
    fn new(max_models: usize, max_model_length: usize) -> Self {
        Self {
            requests: HashMap::new(),
            tokens: HashMap::new(),
            durations: HashMap::new(),
            client_bytes: 0,
            records: [0, 0],
            held: 0,
            models: HashSet::new(),
            max_models,
            max_model_length,
        }
    }

    /// Count one finished request's record (a dict), and with `queued` a
    /// record handed to the sink (queued, else dropped); returns the counts
    /// held so far. Its cost is left to the caller.
    #[pyo3(signature = (record, queued = None))]
    fn observe(&mut self, record: &Bound<'_, PyAny>, queued: Option<bool>) -> PyResult<usize> {
        let py = record.py();
        if let Some(queued) = queued {
            self.record(queued);
        }
        let api_value = field_or(record, intern!(py, "api"))?;
        let api = match &api_value {
            Some(v) => label(v)?,
            None => Cow::Borrowed("unknown"),
        };
        let status_value = record.cast::<PyDict>()?.get_item(intern!(py, "status"))?;
        let status = match &status_value {
            Some(v) => label(v)?,
            None => Cow::Borrowed("None"),
        };
        *slot(slot(&mut self.requests, &status), &api) += 1;
        if let Some(sizes) = field(record, intern!(py, "bytes")) {
            if let Some(n) = count(field(&sizes, intern!(py, "client"))) {
                self.client_bytes = self.client_bytes.saturating_add(n);
            }
        }
        let model_value = match field_or(record, intern!(py, "model"))? {
            Some(v) => Some(v),
            None => field_or(record, intern!(py, "requested_model"))?,
        };
        let model = match &model_value {
            Some(v) => label(v)?,
            None => Cow::Borrowed("unknown"),
        };
        let model = self.label_of(&model);
        if let Some(usage) = field_or(record, intern!(py, "usage"))? {
            let source_value = field_or(&usage, intern!(py, "source"))?;
            let source = match &source_value {
                Some(v) => label(v)?,
                None => Cow::Borrowed("stream"),
            };
            let keys = [
                intern!(py, "input_tokens"),
                intern!(py, "output_tokens"),
                intern!(py, "cached_input_tokens"),
                intern!(py, "reasoning_tokens"),
            ];
            let mut counts = [0u64; 4];
            for (n, key) in counts.iter_mut().zip(keys) {
                *n = count(field(&usage, key)).unwrap_or(0);
            }
            if counts.iter().any(|&n| n > 0) {
                let totals = slot(slot(&mut self.tokens, model), &source);
                for (total, n) in totals.iter_mut().zip(counts) {
                    *total = total.saturating_add(n);
                }
            }
        }
        let streamed = match field(record, intern!(py, "stream")) {
            Some(v) => v.is_truthy()?,
            None => false,
        };
        if streamed {
            if let Some(timings) = field(record, intern!(py, "timings")) {
                if let Some(d) = field(&timings, intern!(py, "duration")) {
                    if d.cast::<PyFloat>().is_ok() || d.cast::<PyInt>().is_ok() {
                        if let Ok(seconds) = d.extract::<f64>() {
                            slot(&mut self.durations, &api).push(seconds);
                        }
                    }
                }
            }
        }
        self.held += 1;
        Ok(self.held)
    }

    /// Count one record handed to the sink (`queued`, else dropped);
    /// returns the counts held so far.
    fn record(&mut self, queued: bool) -> usize {
        self.records[usize::from(!queued)] += 1;
        self.held += 1;
        self.held
    }

    /// The model label of `model` (what `observe` counts it under).
    fn model_label(&mut self, model: &str) -> String {
        self.label_of(model).to_owned()
    }

    /// What was counted since the last call, and nothing held after it:
    /// `(requests, tokens, durations, client_bytes, records)`, the first
    /// three as lists of `((labels...), n)` and `(api, seconds)`, records
    /// as `(queued, dropped)`.
    fn take<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let mut requests = Vec::new();
        for (status, apis) in self.requests.drain() {
            for (api, n) in apis {
                requests.push(((status.clone(), api), n));
            }
        }
        let mut tokens = Vec::new();
        for (model, sources) in self.tokens.drain() {
            for (source, counts) in sources {
                for ((kind, _), n) in TOKEN_KINDS.iter().zip(counts) {
                    if n > 0 {
                        tokens.push(((model.clone(), source.clone(), *kind), n));
                    }
                }
            }
        }
        let mut durations = Vec::new();
        for (api, seconds) in self.durations.drain() {
            durations.extend(seconds.into_iter().map(|s| (api.clone(), s)));
        }
        let taken = (
            requests,
            tokens,
            durations,
            std::mem::take(&mut self.client_bytes),
            (self.records[0], self.records[1]),
        )
            .into_bound_py_any(py);
        self.records = [0, 0];
        self.held = 0;
        taken
    }
}

impl Tally {
    /// The label `model` is counted under: itself while there are few model
    /// names and it is not too long, else `other`.
    fn label_of<'a>(&mut self, model: &'a str) -> &'a str {
        if model.is_empty() || self.models.contains(model) {
            return model;
        }
        if model.chars().count() > self.max_model_length || self.models.len() >= self.max_models {
            return OTHER_MODEL;
        }
        self.models.insert(model.to_owned());
        model
    }
}
