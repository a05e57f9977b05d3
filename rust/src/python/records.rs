//! The sinks' check that a usage record needs no sanitising
//! (`record_is_clean`), and the JSONL line of such a record made in the
//! same walk (`clean_line`): they run for every record a gateway writes, so
//! they are native (`json::Walk` with the sink's bounds); `ssetally.sinks`
//! sanitises what they refuse.

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

use super::json::{Bounds, Walk};

/// The bounds of an `ssetally.sinks.Limits` that a clean record keeps
/// (its attributes of the same names).
#[derive(FromPyObject)]
struct Limits<'py> {
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
    let given: Limits<'_> = limits.extract()?;
    let mut long_fields = Vec::new();
    for name in given.long_fields.try_iter()? {
        long_fields.push(name?.extract::<String>()?);
    }
    let bounds = Bounds {
        string: given.string,
        long_string: given.long_string,
        long_fields,
        key: given.key,
        items: given.items,
        depth: given.depth,
        budget: given.budget,
        nodes: given.nodes,
    };
    let mut walk = Walk::new(Some(bounds), out);
    Ok(walk.container(record, 0, false)? && walk.within_budget())
}
