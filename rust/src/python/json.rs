//! JSON text of plain Python values, natively (`compact_json`): every
//! record a gateway writes, and the request bodies it re-encodes. The text
//! of each value is made by `crate::json_out`. And the other way, a
//! request body's JSON object as a dict (`json_object`).

use jiter::JsonValue;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyDict, PyFloat, PyInt, PyList, PyString};

use super::report::value_to_py;
use crate::json_out::{push_float, push_int, push_str};

/// The JSON object in `data` (UTF-8 `bytes` or `str`, read without a copy)
/// as `json.loads` gives it, built straight from jiter's parse; None when
/// it is not an object, or holds what jiter leaves to `json.loads` (lone
/// surrogates, integers past 64 bits, nesting past 64, other encodings):
/// the caller asks `json.loads` then.
#[pyfunction]
pub fn json_object<'py>(data: &Bound<'py, PyAny>) -> PyResult<Option<Bound<'py, PyAny>>> {
    let bytes = if let Ok(bytes) = data.cast_exact::<PyBytes>() {
        let bytes = bytes.as_bytes();
        // jiter reads bytes: only valid UTF-8 is given it, as `json.loads` reads text.
        if std::str::from_utf8(bytes).is_err() {
            return Ok(None);
        }
        bytes
    } else if let Ok(text) = data.cast_exact::<PyString>() {
        match text.to_str() {
            Ok(text) => text.as_bytes(),
            Err(_) => return Ok(None), // a lone surrogate
        }
    } else {
        return Ok(None);
    };
    match JsonValue::parse(bytes, true) {
        Ok(value @ JsonValue::Object(_)) => value_to_py(data.py(), &value, 0),
        _ => Ok(None),
    }
}

/// Deepest nesting `compact_json` writes (records and request bodies are
/// far shallower); deeper is left to the Python encoder.
const MAX_JSON_DEPTH: usize = 64;

/// The compact JSON text of `value` (a usage record, a request body)
/// exactly as `json.dumps(value, ensure_ascii=False, separators=(",", ":"),
/// allow_nan=False)` writes it, with U+0085, U+2028 and U+2029 escaped;
/// None for anything but exact `dict` (with `str` keys), `list`, `str`
/// (without lone surrogates), `int` within signed 64 bits, finite `float`,
/// `bool` and `None`, nested at most 64 deep: the caller's encoder handles
/// those.
#[pyfunction]
pub fn compact_json(value: &Bound<'_, PyAny>) -> PyResult<Option<String>> {
    let mut out = String::with_capacity(1536);
    Ok(write_value(value, 0, &mut out)?.then_some(out))
}

fn write_value(value: &Bound<'_, PyAny>, depth: usize, out: &mut String) -> PyResult<bool> {
    if value.is_none() {
        out.push_str("null");
        return Ok(true);
    }
    if let Ok(text) = value.cast_exact::<PyString>() {
        let Ok(text) = text.to_str() else {
            return Ok(false); // a lone surrogate
        };
        push_str(out, text);
        return Ok(true);
    }
    if value.is_exact_instance_of::<PyBool>() {
        out.push_str(if value.is_truthy()? { "true" } else { "false" });
        return Ok(true);
    }
    if value.cast_exact::<PyInt>().is_ok() {
        let Ok(number) = value.extract::<i64>() else {
            return Ok(false);
        };
        push_int(out, number);
        return Ok(true);
    }
    if let Ok(number) = value.cast_exact::<PyFloat>() {
        return Ok(push_float(out, number.value()));
    }
    if depth >= MAX_JSON_DEPTH {
        return Ok(false);
    }
    if let Ok(dict) = value.cast_exact::<PyDict>() {
        out.push('{');
        for (i, (key, item)) in dict.iter().enumerate() {
            let Ok(name) = key.cast_exact::<PyString>() else {
                return Ok(false);
            };
            let Ok(name) = name.to_str() else {
                return Ok(false);
            };
            if i > 0 {
                out.push(',');
            }
            push_str(out, name);
            out.push(':');
            if !write_value(&item, depth + 1, out)? {
                return Ok(false);
            }
        }
        out.push('}');
        return Ok(true);
    }
    if let Ok(list) = value.cast_exact::<PyList>() {
        out.push('[');
        for (i, item) in list.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            if !write_value(&item, depth + 1, out)? {
                return Ok(false);
            }
        }
        out.push(']');
        return Ok(true);
    }
    Ok(false)
}
