//! Small helpers over jiter's lazy iterator. They read the few fields the
//! extractor needs as raw JSON slices of the event and skip everything else
//! with `next_skip`, so no value tree is ever built.
//!
//! Raw slices keep their JSON form: a string is `"..."` with its escapes, so
//! comparisons against ASCII names work on the bytes and only the strings
//! that end up in a report are decoded.

use jiter::{Jiter, JiterResult, Peek};
use memchr::memchr;

/// The event's data is not valid JSON.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Invalid;

impl From<jiter::JiterError> for Invalid {
    fn from(_: jiter::JiterError) -> Self {
        Invalid
    }
}

type Res<T> = JiterResult<T>;

/// Skips the next value and returns its raw text.
fn raw<'j>(j: &mut Jiter<'j>) -> Res<&'j [u8]> {
    let start = j.current_index();
    j.next_skip()?;
    Ok(j.slice_to_current(start).trim_ascii())
}

/// A jiter over `data` that can step over a member nested deeper than
/// jiter's recursion limit (see [`super::deep`]): the jiter then starts
/// again on the rest of the data, `base` bytes in.
struct Cursor<'a> {
    data: &'a [u8],
    base: usize,
    j: Jiter<'a>,
}

impl<'a> Cursor<'a> {
    fn new(data: &'a [u8]) -> Self {
        Self {
            data,
            base: 0,
            j: Jiter::new(data),
        }
    }

    /// Skips the next value and returns its raw text, whatever its depth.
    fn raw(&mut self) -> Result<&'a [u8], Invalid> {
        let start = self.base + self.j.current_index();
        match self.j.next_skip() {
            Ok(()) => Ok(self.data[start..self.base + self.j.current_index()].trim_ascii()),
            Err(err) if super::deep::too_deep(&err) => {
                let end = super::deep::skip_value(self.data, start).ok_or(Invalid)?;
                self.base = end;
                self.j = Jiter::new(&self.data[end..]);
                Ok(self.data[start..end].trim_ascii())
            }
            Err(_) => Err(Invalid),
        }
    }
}

/// Reads the raw text of top-level `keys` of the object `data` (the last
/// occurrence wins, as in most JSON parsers). A value that is not an object
/// gives all `None`; malformed JSON gives `Invalid`.
pub(crate) fn fields<'a, const N: usize>(
    data: &'a [u8],
    keys: [&[u8]; N],
) -> Result<[Option<&'a [u8]>; N], Invalid> {
    let mut out = [None; N];
    let mut c = Cursor::new(data);
    let peek = c.j.peek()?;
    if peek == Peek::Object {
        let mut next = c.j.next_object_bytes()?.map(|k| position(&keys, k));
        while let Some(found) = next {
            let value = c.raw()?;
            if let Some(i) = found {
                out[i] = Some(value);
            }
            next = c.j.next_key_bytes()?.map(|k| position(&keys, k));
        }
    } else {
        c.raw()?;
    }
    c.j.finish()?;
    Ok(out)
}

/// Like [`fields`], for the keys of the object under the top-level key
/// `outer`, in one pass (the `response` object of Responses events can be
/// large). A missing or non-object `outer` gives all `None`.
pub(crate) fn fields_in<'a, const N: usize>(
    data: &'a [u8],
    outer: &[u8],
    keys: [&[u8]; N],
) -> Result<[Option<&'a [u8]>; N], Invalid> {
    let mut out = [None; N];
    let mut j = Jiter::new(data);
    let peek = j.peek()?;
    if peek == Peek::Object {
        let mut next = j.next_object_bytes()?.map(|k| k == outer);
        while let Some(is_outer) = next {
            if is_outer && j.peek()? == Peek::Object {
                out = [None; N];
                let mut inner = j.next_object_bytes()?.map(|k| position(&keys, k));
                while let Some(found) = inner {
                    match found {
                        Some(i) => out[i] = Some(raw(&mut j)?),
                        None => j.next_skip()?,
                    }
                    inner = j.next_key_bytes()?.map(|k| position(&keys, k));
                }
            } else {
                j.next_skip()?;
            }
            next = j.next_key_bytes()?.map(|k| k == outer);
        }
    } else {
        j.known_skip(peek)?;
    }
    j.finish()?;
    Ok(out)
}

/// Reads one top-level field, stopping as soon as it is found (the cheap
/// way to read a leading `"type"`). Malformed JSON before the key is
/// `Invalid`; the rest of the object is not checked.
pub(crate) fn first_field<'a>(data: &'a [u8], key: &[u8]) -> Result<Option<&'a [u8]>, Invalid> {
    let mut j = Jiter::new(data);
    let peek = j.peek()?;
    if peek != Peek::Object {
        j.known_skip(peek)?;
        j.finish()?;
        return Ok(None);
    }
    let mut next = j.next_object_bytes()?.map(|k| k == key);
    while let Some(found) = next {
        if found {
            return Ok(Some(raw(&mut j)?));
        }
        j.next_skip()?;
        next = j.next_key_bytes()?.map(|k| k == key);
    }
    j.finish()?;
    Ok(None)
}

/// The raw value starting at `offset` of `data` (the rest is ignored).
pub(crate) fn value_at(data: &[u8], offset: usize) -> Result<&[u8], Invalid> {
    let rest = data.get(offset..).ok_or(Invalid)?;
    Ok(raw(&mut Jiter::new(rest))?)
}

/// Calls `on` with the raw text of each item of the array `raw`. A value
/// that is not an array is ignored.
pub(crate) fn items<'a>(
    raw_array: &'a [u8],
    mut on: impl FnMut(&'a [u8]) -> Result<(), Invalid>,
) -> Result<(), Invalid> {
    let mut j = Jiter::new(raw_array);
    let peek = j.peek()?;
    if peek != Peek::Array {
        return Ok(());
    }
    let mut item = j.known_array()?;
    while item.is_some() {
        on(raw(&mut j)?)?;
        item = j.array_step()?;
    }
    Ok(())
}

/// Checks that `data` is one well-formed JSON value.
pub(crate) fn validate(data: &[u8]) -> Result<(), Invalid> {
    let mut j = Jiter::new(data);
    j.next_skip()?;
    j.finish()?;
    Ok(())
}

/// Whether a string value keyed by one of `keys` somewhere under `raw`
/// (at most `depth` levels down) is non-empty. Used for the nested delta
/// shapes of Cohere, Anthropic, Interactions and Assistants.
pub(crate) fn has_text_under(raw: &[u8], keys: &[&[u8]], depth: u8) -> Result<bool, Invalid> {
    Ok(text_under(&mut Jiter::new(raw), keys, depth)?)
}

fn text_under(j: &mut Jiter<'_>, keys: &[&[u8]], depth: u8) -> Res<bool> {
    let peek = j.peek()?;
    if depth == 0 {
        j.known_skip(peek)?;
        return Ok(false);
    }
    if peek == Peek::Object {
        let mut next = j.next_object_bytes()?.map(|k| keys.contains(&k));
        while let Some(wanted) = next {
            if wanted && j.peek()? == Peek::String {
                if has_content(raw(j)?) {
                    return Ok(true);
                }
            } else if text_under(j, keys, depth - 1)? {
                return Ok(true);
            }
            next = j.next_key_bytes()?.map(|k| keys.contains(&k));
        }
    } else if peek == Peek::Array {
        let mut item = j.known_array()?;
        while item.is_some() {
            if text_under(j, keys, depth - 1)? {
                return Ok(true);
            }
            item = j.array_step()?;
        }
    } else {
        j.known_skip(peek)?;
    }
    Ok(false)
}

fn position(keys: &[&[u8]], key: &[u8]) -> Option<usize> {
    keys.iter().position(|k| *k == key)
}

/// The raw value unless it is `null`.
pub(crate) fn non_null(raw: Option<&[u8]>) -> Option<&[u8]> {
    raw.filter(|r| *r != b"null")
}

/// The body (still escaped) of a raw JSON string; `None` for other values.
pub(crate) fn str_body(raw: &[u8]) -> Option<&[u8]> {
    raw.strip_prefix(b"\"")?.strip_suffix(b"\"")
}

/// The body of a raw JSON string that is not empty.
pub(crate) fn nonempty_str(raw: Option<&[u8]>) -> Option<&[u8]> {
    raw.and_then(str_body).filter(|s| !s.is_empty())
}

/// Whether a raw value carries something: not `null`, `""`, `[]` or `{}`.
pub(crate) fn has_content(raw: &[u8]) -> bool {
    match raw.first() {
        None => false,
        Some(b'"') => raw.len() > 2,
        Some(b'[' | b'{') => raw
            .get(1..raw.len() - 1)
            .is_some_and(|inner| !inner.trim_ascii().is_empty()),
        Some(b'n') => raw != b"null",
        Some(_) => true,
    }
}

/// Decodes the body of a JSON string (escapes included) into a `String`.
pub(crate) fn decode(body: &[u8]) -> String {
    if memchr(b'\\', body).is_none() {
        return lossy(body);
    }
    let mut quoted = Vec::with_capacity(body.len() + 2);
    quoted.push(b'"');
    quoted.extend_from_slice(body);
    quoted.push(b'"');
    match Jiter::new(&quoted).next_str() {
        Ok(s) => s.to_owned(),
        Err(_) => lossy(body),
    }
}

/// `bytes` as text, invalid UTF-8 replaced: `String::from_utf8_lossy`, with
/// the (much faster) validation of valid text first.
pub(crate) fn lossy(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) => text.to_owned(),
        Err(_) => String::from_utf8_lossy(bytes).into_owned(),
    }
}

/// A raw JSON number as a count: non-negative integers, and floats with no
/// fractional part (`12.0`). Anything else is `None`.
pub(crate) fn count(raw: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(raw).ok()?;
    if !raw.is_empty() && raw.iter().all(u8::is_ascii_digit) {
        return text.parse().ok();
    }
    if !matches!(raw.first(), Some(b'0'..=b'9' | b'-')) {
        return None;
    }
    let f: f64 = text.parse().ok()?;
    // 2^64: the first float above u64::MAX.
    let fits = f.is_finite() && f >= 0.0 && f.fract() == 0.0 && f < 18_446_744_073_709_551_616.0;
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    fits.then_some(f as u64)
}

/// Reads the counts at `paths` (each a chain of keys) from a usage object.
/// Values that are missing, `null` or not counts are `None`.
#[cfg(test)]
pub(crate) fn counts<const N: usize>(raw: &[u8], paths: [&[&[u8]]; N]) -> [Option<u64>; N] {
    counts_and_rejects(raw, paths).0
}

/// [`counts`], and for each path the raw value found there that is not a
/// count (and not `null`): a value that was left out.
pub(crate) fn counts_and_rejects<'a, const N: usize>(
    raw: &'a [u8],
    paths: [&[&[u8]]; N],
) -> ([Option<u64>; N], [Option<&'a [u8]>; N]) {
    // Paths are tracked as bits of a u32.
    const { assert!(N < 32) };
    let mut out = [None; N];
    let mut rejects = [None; N];
    let all = (1u32 << N) - 1;
    // The raw usage text was already validated when it was cut out of its
    // event, so an error here can only leave some fields unread.
    let _ = read_counts(&mut Jiter::new(raw), &paths, 0, all, &mut out, &mut rejects);
    (out, rejects)
}

fn read_counts<'a, const N: usize>(
    j: &mut Jiter<'a>,
    paths: &[&[&[u8]]; N],
    depth: usize,
    mask: u32,
    out: &mut [Option<u64>; N],
    rejects: &mut [Option<&'a [u8]>; N],
) -> Res<()> {
    let peek = j.peek()?;
    if peek != Peek::Object {
        return j.known_skip(peek);
    }
    let matching = |key: &[u8]| -> u32 {
        let mut m = 0;
        for (i, path) in paths.iter().enumerate() {
            if mask & (1 << i) != 0 && path.get(depth) == Some(&key) {
                m |= 1 << i;
            }
        }
        m
    };
    let mut next = j.next_object_bytes()?.map(matching);
    while let Some(m) = next {
        let leaves = (0..N).filter(|&i| m & (1 << i) != 0 && paths[i].len() == depth + 1);
        let leaves: u32 = leaves.fold(0, |acc, i| acc | (1 << i));
        if m == 0 {
            j.next_skip()?;
        } else if leaves != 0 {
            let text = raw(j)?;
            let value = count(text);
            let rejected = (value.is_none() && text != b"null").then_some(text);
            for i in 0..N {
                if leaves & (1 << i) != 0 {
                    out[i] = value;
                    rejects[i] = rejected;
                }
            }
        } else {
            read_counts(j, paths, depth + 1, m, out, rejects)?;
        }
        next = j.next_key_bytes()?.map(matching);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_reads_only_top_level_keys() {
        let data = br#" {"a": {"usage": 1}, "usage" : {"x":2} , "s":"u\"sage"} "#;
        let [usage, a, missing] = fields(data, [b"usage", b"a", b"zz"]).unwrap();
        assert_eq!(usage, Some(&br#"{"x":2}"#[..]));
        assert_eq!(a, Some(&br#"{"usage": 1}"#[..]));
        assert_eq!(missing, None);
        assert_eq!(fields(b"[1,2]", [b"a"]).unwrap(), [None]);
        assert_eq!(fields(b"{\"a\":", [b"a"]), Err(Invalid));
        assert_eq!(fields(b"{} x", [b"a"]), Err(Invalid));
        assert_eq!(fields(b"", [b"a"]), Err(Invalid));
    }

    #[test]
    fn fields_in_reads_one_level_down() {
        let data = br#"{"type":"x","response":{"id":"r","usage":{"a":1},"output":[{"usage":2}]},"usage":3}"#;
        let [id, usage, none] = fields_in(data, b"response", [b"id", b"usage", b"zz"]).unwrap();
        assert_eq!(
            (id, usage, none),
            (Some(&b"\"r\""[..]), Some(&br#"{"a":1}"#[..]), None)
        );
        assert_eq!(
            fields_in(br#"{"response":null}"#, b"response", [b"id"]).unwrap(),
            [None]
        );
        assert_eq!(
            fields_in(br#"{"response":{"id":"#, b"response", [b"id"]),
            Err(Invalid)
        );
    }

    #[test]
    fn first_field_stops_early() {
        let data = br#"{"type":"x","rest": this is not json"#;
        assert_eq!(first_field(data, b"type").unwrap(), Some(&b"\"x\""[..]));
        assert_eq!(first_field(b"{\"a\":1}", b"type").unwrap(), None);
        assert_eq!(first_field(b"{\"a\":", b"type"), Err(Invalid));
    }

    #[test]
    fn counts_and_numbers() {
        assert_eq!(count(b"12"), Some(12));
        assert_eq!(count(b"12.0"), Some(12));
        assert_eq!(count(b"1.2e1"), Some(12));
        assert_eq!(count(b"12.5"), None);
        assert_eq!(count(b"-1"), None);
        assert_eq!(count(b"\"12\""), None);
        assert_eq!(count(b"null"), None);
        assert_eq!(count(b"18446744073709551616"), None);
        assert_eq!(count(b"1e400"), None);
        let raw = br#"{"a":1,"d":{"b":2,"c":"x"},"e":[1],"f":3.5}"#;
        let got = counts(
            raw,
            [
                &[b"a"],
                &[b"d", b"b"],
                &[b"d", b"c"],
                &[b"e"],
                &[b"f"],
                &[b"g"],
            ],
        );
        assert_eq!(got, [Some(1), Some(2), None, None, None, None]);
    }

    #[test]
    fn content_and_strings() {
        assert!(!has_content(b"\"\""));
        assert!(!has_content(b"[ ]"));
        assert!(!has_content(b"{}"));
        assert!(!has_content(b"null"));
        assert!(has_content(b"\"a\""));
        assert!(has_content(b"[1]"));
        assert_eq!(decode(br#"a\"b\u00e9"#), "a\"b\u{e9}");
        assert_eq!(decode(b"plain"), "plain");
        assert_eq!(nonempty_str(Some(b"\"\"")), None);
        assert_eq!(nonempty_str(Some(b"3")), None);
        let nested = br#"{"message":{"content":{"text":"hi"}}}"#;
        assert!(has_text_under(nested, &[b"text"], 4).unwrap());
        assert!(!has_text_under(nested, &[b"text"], 2).unwrap());
        assert!(!has_text_under(br#"{"text":""}"#, &[b"text"], 4).unwrap());
    }
}
