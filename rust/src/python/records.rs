//! The sinks' check that a usage record needs no sanitising
//! (`record_is_clean`), and the JSONL line of such a record made in the
//! same walk (`clean_line`): they run for every record a gateway writes, so
//! they are native; `ssetally.sinks` sanitises what they refuse.

use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyDict, PyFloat, PyInt, PyList, PyString};

use crate::json_out::{push_float, push_int, push_str_without_nul};

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
    walk_record(record, limits, None)
}

/// The JSONL line of a record `record_is_clean` accepts: its
/// `compact_json` text and a line feed, as UTF-8, made in the same walk as
/// the check; None for a record it refuses (the sink sanitises that one).
#[pyfunction]
pub fn clean_line<'py>(
    record: &Bound<'py, PyAny>,
    limits: &Bound<'py, PyAny>,
) -> PyResult<Option<Bound<'py, PyBytes>>> {
    let mut out = String::with_capacity(1536);
    if !walk_record(record, limits, Some(&mut out))? {
        return Ok(None);
    }
    out.push('\n');
    Ok(Some(PyBytes::new(record.py(), out.as_bytes())))
}

/// The check, writing the record's JSON text into `out` as it goes when
/// given one (left incomplete when the record is refused).
fn walk_record(
    record: &Bound<'_, PyAny>,
    limits: &Bound<'_, PyAny>,
    out: Option<&mut String>,
) -> PyResult<bool> {
    if record.cast_exact::<PyDict>().is_err() {
        return Ok(false);
    }
    let bounds: Bounds<'_> = limits.extract()?;
    let mut long_fields = Vec::new();
    for name in bounds.long_fields.try_iter()? {
        long_fields.push(name?.extract::<String>()?);
    }
    let mut w = Walk {
        b: bounds,
        out,
        long_fields,
    };
    Ok(w.container(record, 0, false)? && w.b.budget > 0)
}

/// A walk over a record: the bounds left, the text written so far, and the
/// long fields' names (compared as text: cheaper than a set lookup a key).
struct Walk<'py, 'o> {
    b: Bounds<'py>,
    out: Option<&'o mut String>,
    long_fields: Vec<String>,
}

impl Walk<'_, '_> {
    fn put(&mut self, text: &str) {
        if let Some(out) = self.out.as_deref_mut() {
            out.push_str(text);
        }
    }

    /// The text of a clean string (no NUL, no lone surrogate), written as a
    /// JSON string when writing; None for one that is not clean.
    fn text<'s>(&mut self, text: &'s Bound<'_, PyString>) -> PyResult<Option<&'s str>> {
        // In place for ASCII text (CPython keeps a UTF-8 copy of other text).
        let Ok(s) = text.to_str() else {
            return Ok(None); // a lone surrogate
        };
        let clean = match self.out.as_deref_mut() {
            Some(out) => push_str_without_nul(out, s), // the NUL check in the same scan
            None => memchr::memchr(0, s.as_bytes()).is_none(),
        };
        Ok(clean.then_some(s))
    }

    /// Whether the container `value` (a dict or a list) at `depth` is clean;
    /// `long` when it is below a long field.
    fn container(&mut self, value: &Bound<'_, PyAny>, depth: usize, long: bool) -> PyResult<bool> {
        let len = value.len()?;
        if depth >= self.b.depth || len > self.b.items {
            return Ok(false);
        }
        self.b.nodes -= i64::try_from(len).unwrap_or(i64::MAX);
        if self.b.nodes < 0 {
            return Ok(false);
        }
        if let Ok(dict) = value.cast_exact::<PyDict>() {
            self.put("{");
            for (i, (key, item)) in dict.iter().enumerate() {
                let Ok(name) = key.cast_exact::<PyString>() else {
                    return Ok(false);
                };
                let chars = name.len()?;
                if chars == 0 || chars > self.b.key {
                    return Ok(false);
                }
                if i > 0 {
                    self.put(",");
                }
                let Some(text) = self.text(name)? else {
                    return Ok(false);
                };
                self.b.budget -= i64::try_from(chars).unwrap_or(i64::MAX);
                self.put(":");
                let inner = long || self.long_fields.iter().any(|f| f == text);
                if !self.value(&item, depth, inner)? {
                    return Ok(false);
                }
            }
            self.put("}");
        } else if let Ok(list) = value.cast_exact::<PyList>() {
            self.put("[");
            for (i, item) in list.iter().enumerate() {
                if i > 0 {
                    self.put(",");
                }
                if !self.value(&item, depth, long)? {
                    return Ok(false);
                }
            }
            self.put("]");
        } else {
            return Ok(false);
        }
        Ok(self.b.budget > 0)
    }

    fn value(&mut self, value: &Bound<'_, PyAny>, depth: usize, long: bool) -> PyResult<bool> {
        if value.is_none() {
            self.put("null");
            return Ok(true);
        }
        if let Ok(text) = value.cast_exact::<PyString>() {
            let chars = text.len()?;
            let limit = if long {
                self.b.long_string
            } else {
                self.b.string
            };
            if chars > limit {
                return Ok(false);
            }
            if self.text(text)?.is_none() {
                return Ok(false);
            }
            self.b.budget -= i64::try_from(chars).unwrap_or(i64::MAX);
            return Ok(true);
        }
        if value.cast_exact::<PyInt>().is_ok() {
            let Ok(number) = value.extract::<i64>() else {
                return Ok(false);
            };
            if let Some(out) = self.out.as_deref_mut() {
                push_int(out, number);
            }
            return Ok(true);
        }
        if let Ok(number) = value.cast_exact::<PyFloat>() {
            let number = number.value();
            return Ok(match self.out.as_deref_mut() {
                Some(out) => push_float(out, number),
                None => number.is_finite(),
            });
        }
        if value.cast_exact::<PyDict>().is_ok() || value.cast_exact::<PyList>().is_ok() {
            return self.container(value, depth + 1, long);
        }
        // `bool` is exact here: its subclass check above is `int`'s, never taken.
        if !value.is_exact_instance_of::<PyBool>() {
            return Ok(false);
        }
        let truth = value.is_truthy()?;
        self.put(if truth { "true" } else { "false" });
        Ok(true)
    }
}
