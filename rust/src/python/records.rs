//! What the sinks do with every record a gateway writes, natively: the
//! check that it needs no sanitising (`record_is_clean`; `ssetally.sinks`
//! sanitises what it refuses) and its JSON text (`compact_json`).

use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString};

use crate::json_out::{push_float, push_str};

/// The bounds of an `ssetally.sinks.Limits` that a clean record keeps
/// (its attributes of the same names).
#[derive(FromPyObject)]
struct Bounds<'py> {
    #[pyo3(attribute)]
    string: usize,
    #[pyo3(attribute)]
    long_string: usize,
    #[pyo3(attribute)]
    long_fields: Bound<'py, PyAny>,
    #[pyo3(attribute)]
    key: usize,
    #[pyo3(attribute)]
    items: usize,
    #[pyo3(attribute)]
    depth: usize,
    #[pyo3(attribute)]
    budget: i64,
    #[pyo3(attribute)]
    nodes: i64,
}

/// Whether `sanitize_record` would change nothing in `record` under
/// `limits` (an `ssetally.sinks.Limits`): an exact `dict` holding only
/// exact `dict`, `list`, `str`, `int`, `float`, `bool` and `None` values,
/// every key a non-empty `str` of at most `key` characters, strings of at
/// most `string` characters (`long_string` at and below the keys in
/// `long_fields`) without NUL or lone surrogates, integers within signed 64
/// bits, finite floats, containers of at most `items` entries nested fewer
/// than `depth` deep, at most `nodes` values and fewer than `budget`
/// characters of strings and keys in all.
#[pyfunction]
pub fn record_is_clean(record: &Bound<'_, PyAny>, limits: &Bound<'_, PyAny>) -> PyResult<bool> {
    if record.cast_exact::<PyDict>().is_err() {
        return Ok(false);
    }
    let mut bounds: Bounds<'_> = limits.extract()?;
    Ok(clean(record, 0, false, &mut bounds)? && bounds.budget > 0)
}

/// Whether the container `value` (a dict or a list) at `depth` is clean;
/// `long` when it is below a long field.
fn clean(value: &Bound<'_, PyAny>, depth: usize, long: bool, b: &mut Bounds<'_>) -> PyResult<bool> {
    let len = value.len()?;
    if depth >= b.depth || len > b.items {
        return Ok(false);
    }
    b.nodes -= i64::try_from(len).unwrap_or(i64::MAX);
    if b.nodes < 0 {
        return Ok(false);
    }
    if let Ok(dict) = value.cast_exact::<PyDict>() {
        for (key, item) in dict.iter() {
            let Ok(name) = key.cast_exact::<PyString>() else {
                return Ok(false);
            };
            let chars = name.len()?;
            if chars == 0 || chars > b.key || !clean_text(name)? {
                return Ok(false);
            }
            b.budget -= i64::try_from(chars).unwrap_or(i64::MAX);
            let inner = long || b.long_fields.contains(name)?;
            if !clean_value(&item, depth, inner, b)? {
                return Ok(false);
            }
        }
    } else if let Ok(list) = value.cast_exact::<PyList>() {
        for item in list.iter() {
            if !clean_value(&item, depth, long, b)? {
                return Ok(false);
            }
        }
    } else {
        return Ok(false);
    }
    Ok(b.budget > 0)
}

fn clean_value(
    value: &Bound<'_, PyAny>,
    depth: usize,
    long: bool,
    b: &mut Bounds<'_>,
) -> PyResult<bool> {
    if value.is_none() {
        return Ok(true);
    }
    if let Ok(text) = value.cast_exact::<PyString>() {
        let chars = text.len()?;
        if chars > (if long { b.long_string } else { b.string }) || !clean_text(text)? {
            return Ok(false);
        }
        b.budget -= i64::try_from(chars).unwrap_or(i64::MAX);
        return Ok(true);
    }
    if value.cast_exact::<PyInt>().is_ok() {
        return Ok(value.extract::<i64>().is_ok());
    }
    if let Ok(number) = value.cast_exact::<PyFloat>() {
        return Ok(number.value().is_finite());
    }
    if value.cast_exact::<PyDict>().is_ok() || value.cast_exact::<PyList>().is_ok() {
        return clean(value, depth + 1, long, b);
    }
    // `bool` is exact here: its subclass check above is `int`'s, never taken.
    Ok(value.is_exact_instance_of::<pyo3::types::PyBool>())
}

/// No NUL and no lone surrogate (text that does not encode as UTF-8).
fn clean_text(text: &Bound<'_, PyString>) -> PyResult<bool> {
    // In place for ASCII text (CPython keeps a UTF-8 copy of other text).
    Ok(match text.to_str() {
        Ok(s) => memchr::memchr(0, s.as_bytes()).is_none(),
        Err(_) => false,
    })
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
        out.push_str(&number.to_string());
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
