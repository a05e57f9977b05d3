//! Usage reports and reassembled output as the Python values
//! `ssetally.UsageTap` builds its records from: tuples in the field order of
//! the Python dataclasses, JSON objects as dicts.

use jiter::JsonValue;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyString, PyTuple};
use pyo3::{intern, IntoPyObjectExt};

use super::convert::json_loads;
use crate::reassemble::Output;
use crate::usage::{Report, Usage};

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
pub(super) fn report_tuple<'py>(py: Python<'py>, r: &Report) -> PyResult<Bound<'py, PyTuple>> {
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

pub(super) fn value_to_py<'py>(
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

pub(super) fn output_dict<'py>(py: Python<'py>, out: &Output) -> PyResult<Bound<'py, PyDict>> {
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
