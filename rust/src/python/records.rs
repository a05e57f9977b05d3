//! The sinks' check that a usage record needs no sanitising
//! (`record_is_clean`): it runs for every record a gateway writes, so it
//! is native; `ssetally.sinks` sanitises what it refuses.

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyFloat, PyInt, PyList, PyString};

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
