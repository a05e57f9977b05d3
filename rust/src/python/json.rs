//! JSON text of plain Python values, natively (`compact_json`): every
//! record a gateway writes, and the request bodies it re-encodes. The text
//! of each value is made by `crate::json_out`. And the other way, a
//! request body's JSON object as a dict (`json_object`).

use jiter::JsonValue;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyDict, PyFloat, PyInt, PyList, PyString};

use super::report::value_to_py;
use crate::json_out::{push_float, push_int, push_str, push_str_without_nul};

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
/// far shallower; the outermost container is at depth 1); deeper is left
/// to the Python encoder.
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
    let mut walk = Walk::new(None, Some(&mut out));
    Ok(walk.value(value, 0, false)?.then_some(out))
}

/// The bounds a walk keeps (a sink's `Limits`): past one, it refuses.
pub(super) struct Bounds {
    pub(super) string: usize,
    pub(super) long_string: usize,
    /// Keys whose strings, and those nested below them, may be `long_string` long.
    pub(super) long_fields: Vec<String>,
    pub(super) key: usize,
    pub(super) items: usize,
    pub(super) depth: usize,
    pub(super) budget: i64,
    pub(super) nodes: i64,
}

/// One walk over plain Python values, for both `compact_json` (no bounds:
/// any plain value, NUL escaped) and the sinks' clean check (`Bounds`:
/// non-empty keys, no NUL, every bound kept), writing the JSON text into
/// `out` as it goes when given one (left incomplete when it refuses).
pub(super) struct Walk<'o> {
    bounds: Option<Bounds>,
    out: Option<&'o mut String>,
}

impl<'o> Walk<'o> {
    pub(super) fn new(bounds: Option<Bounds>, out: Option<&'o mut String>) -> Self {
        Self { bounds, out }
    }

    /// The budget is still positive (always, without bounds).
    pub(super) fn within_budget(&self) -> bool {
        self.bounds.as_ref().map_or(true, |b| b.budget > 0)
    }

    fn put(&mut self, text: &str) {
        if let Some(out) = self.out.as_deref_mut() {
            out.push_str(text);
        }
    }

    /// Whether the container `value` (a dict or a list) at `depth` is
    /// written (or accepted); `long` when it is below a long field.
    pub(super) fn container(
        &mut self,
        value: &Bound<'_, PyAny>,
        depth: usize,
        long: bool,
    ) -> PyResult<bool> {
        if let Some(b) = self.bounds.as_mut() {
            let len = value.len()?;
            if depth >= b.depth || len > b.items {
                return Ok(false);
            }
            b.nodes -= i64::try_from(len).unwrap_or(i64::MAX);
            if b.nodes < 0 {
                return Ok(false);
            }
        } else if depth > MAX_JSON_DEPTH {
            return Ok(false);
        }
        if let Ok(dict) = value.cast_exact::<PyDict>() {
            self.put("{");
            for (i, (key, item)) in dict.iter().enumerate() {
                let Ok(name) = key.cast_exact::<PyString>() else {
                    return Ok(false);
                };
                if i > 0 {
                    self.put(",");
                }
                let Some(text) = self.text(name, true)? else {
                    return Ok(false);
                };
                self.put(":");
                let inner = long
                    || self
                        .bounds
                        .as_ref()
                        .is_some_and(|b| b.long_fields.iter().any(|f| f == text));
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
        Ok(self.within_budget())
    }

    fn value(&mut self, value: &Bound<'_, PyAny>, depth: usize, long: bool) -> PyResult<bool> {
        if value.is_none() {
            self.put("null");
            return Ok(true);
        }
        if let Ok(text) = value.cast_exact::<PyString>() {
            return Ok(self.text_within(text, long)?.is_some());
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

    /// A string value within its bound (`long_string` below a long field).
    fn text_within<'s>(
        &mut self,
        text: &'s Bound<'_, PyString>,
        long: bool,
    ) -> PyResult<Option<&'s str>> {
        if let Some(b) = self.bounds.as_ref() {
            let limit = if long { b.long_string } else { b.string };
            if text.len()? > limit {
                return Ok(None);
            }
        }
        self.text(text, false)
    }

    /// The text of a string it accepts, written as a JSON string when
    /// writing. Always: no lone surrogate. With bounds: no NUL, a key
    /// non-empty and of at most `key` characters, and the characters
    /// counted against the budget.
    fn text<'s>(&mut self, text: &'s Bound<'_, PyString>, key: bool) -> PyResult<Option<&'s str>> {
        // In place for ASCII text (CPython keeps a UTF-8 copy of other text).
        let Ok(s) = text.to_str() else {
            return Ok(None); // a lone surrogate
        };
        let Some(b) = self.bounds.as_mut() else {
            if let Some(out) = self.out.as_deref_mut() {
                push_str(out, s);
            }
            return Ok(Some(s));
        };
        let chars = if key { text.len()? } else { 0 };
        if key && (chars == 0 || chars > b.key) {
            return Ok(None);
        }
        let chars = if key { chars } else { text.len()? };
        b.budget -= i64::try_from(chars).unwrap_or(i64::MAX);
        let clean = match self.out.as_deref_mut() {
            Some(out) => push_str_without_nul(out, s), // the NUL check in the same scan
            None => memchr::memchr(0, s.as_bytes()).is_none(),
        };
        Ok(clean.then_some(s))
    }
}
