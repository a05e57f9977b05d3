//! Whether a report or record mentions one of a request's credentials
//! (`mentions`), natively: it runs for every stream whose request carried a
//! key, over every text the stream could have echoed one into.

use memchr::memmem;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};

/// Deepest nesting read; deeper (or anything but the types below) is left
/// to the caller's own walk.
const MAX_DEPTH: usize = 64;

/// Whether any of `secrets` occurs in `value`: in an exact `str`, or in the
/// keys and values of an exact `dict`, or the items of a `list` or `tuple`
/// (named tuples too), at any depth; `int`, `float`, `bool` and `None`
/// hold none. None when `value` holds anything else (a `str` subclass, a
/// mapping that is not a `dict`, a lone surrogate): the caller decides.
#[pyfunction]
pub fn mentions(value: &Bound<'_, PyAny>, secrets: Vec<String>) -> PyResult<Option<bool>> {
    let finders: Vec<memmem::Finder<'_>> = secrets
        .iter()
        .map(|s| memmem::Finder::new(s.as_bytes()))
        .collect();
    walk(value, &finders, 0)
}

/// `Some(true)` once a secret is found, `Some(false)` when none is, None
/// for a value this walk does not read.
fn walk(
    value: &Bound<'_, PyAny>,
    finders: &[memmem::Finder<'_>],
    depth: usize,
) -> PyResult<Option<bool>> {
    if value.is_none()
        || value.is_exact_instance_of::<PyBool>()
        || value.is_exact_instance_of::<PyInt>()
        || value.is_exact_instance_of::<PyFloat>()
    {
        return Ok(Some(false));
    }
    if let Ok(text) = value.cast_exact::<PyString>() {
        let Ok(text) = text.to_str() else {
            return Ok(None);
        };
        let bytes = text.as_bytes();
        return Ok(Some(finders.iter().any(|f| f.find(bytes).is_some())));
    }
    if depth >= MAX_DEPTH {
        return Ok(None);
    }
    let depth = depth + 1;
    if let Ok(dict) = value.cast_exact::<PyDict>() {
        return walk_all(dict.iter().flat_map(|(k, v)| [k, v]), finders, depth);
    }
    if let Ok(list) = value.cast_exact::<PyList>() {
        return walk_all(list.iter(), finders, depth);
    }
    if let Ok(tuple) = value.cast::<PyTuple>() {
        return walk_all(tuple.iter(), finders, depth);
    }
    Ok(None)
}

/// `walk` of each of `items` until one decides (a secret found, or a value
/// not read).
fn walk_all<'py>(
    items: impl Iterator<Item = Bound<'py, PyAny>>,
    finders: &[memmem::Finder<'_>],
    depth: usize,
) -> PyResult<Option<bool>> {
    for item in items {
        match walk(&item, finders, depth)? {
            Some(false) => {}
            decided => return Ok(decided),
        }
    }
    Ok(Some(false))
}
