//! Skipping one JSON value of any nesting depth without recursion.
//!
//! jiter refuses values nested deeper than its recursion limit, so a
//! hostile `[[[[...]]]]` inside an otherwise ordinary event would make the
//! whole event unreadable. Where only the extent of such a value matters
//! (a member to step over), it is found here instead: an explicit stack of
//! one bit per open container, so the cost is linear in the value's length
//! and the memory one bit per level (bounded by the event, which is bounded
//! by `max_event_size`).

use jiter::{JiterError, JiterErrorType, JsonErrorType};

/// Whether jiter gave up on `err` only because of its nesting limit (the
/// value may still be valid JSON).
pub(crate) fn too_deep(err: &JiterError) -> bool {
    matches!(
        err.error_type,
        JiterErrorType::JsonError(JsonErrorType::RecursionLimitExceeded)
    )
}

/// Open containers, one bit each (set: object).
#[derive(Default)]
struct Stack {
    words: Vec<u64>,
    depth: usize,
}

impl Stack {
    /// `None` when memory for another level cannot be had.
    fn push(&mut self, object: bool) -> Option<()> {
        let (word, bit) = (self.depth / 64, self.depth % 64);
        if word == self.words.len() {
            self.words.try_reserve(1).ok()?;
            self.words.push(0);
        }
        if object {
            self.words[word] |= 1 << bit;
        } else {
            self.words[word] &= !(1 << bit);
        }
        self.depth += 1;
        Some(())
    }

    /// The innermost open container is an object.
    fn top_is_object(&self) -> Option<bool> {
        let at = self.depth.checked_sub(1)?;
        Some(self.words[at / 64] & (1 << (at % 64)) != 0)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Want {
    Value,
    /// After `[`: a value or `]`.
    ValueOrEnd,
    /// After `{`: a key or `}`.
    KeyOrEnd,
    /// After `,` in an object.
    Key,
    Colon,
    /// After a value inside a container: `,` or its closer.
    Next,
}

fn skip_ws(data: &[u8], mut at: usize) -> usize {
    while matches!(data.get(at), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        at += 1;
    }
    at
}

/// The end (exclusive) of the JSON value that starts at `start` (leading
/// whitespace allowed), or `None` when it is not valid JSON.
pub(crate) fn skip_value(data: &[u8], start: usize) -> Option<usize> {
    let mut stack = Stack::default();
    let mut at = start;
    let mut want = Want::Value;
    loop {
        at = skip_ws(data, at);
        let b = *data.get(at)?;
        match want {
            Want::Value | Want::ValueOrEnd => {
                if want == Want::ValueOrEnd && b == b']' {
                    at += 1;
                } else {
                    match b {
                        b'{' => {
                            stack.push(true)?;
                            at += 1;
                            want = Want::KeyOrEnd;
                            continue;
                        }
                        b'[' => {
                            stack.push(false)?;
                            at += 1;
                            want = Want::ValueOrEnd;
                            continue;
                        }
                        b'"' => at = skip_string(data, at)?,
                        _ => at = skip_scalar(data, at)?,
                    }
                    if stack.depth == 0 {
                        return Some(at);
                    }
                    want = Want::Next;
                    continue;
                }
            }
            Want::KeyOrEnd | Want::Key => {
                if b == b'"' {
                    at = skip_string(data, at)?;
                    want = Want::Colon;
                    continue;
                }
                if want == Want::Key || b != b'}' {
                    return None;
                }
                at += 1;
            }
            Want::Colon => {
                if b != b':' {
                    return None;
                }
                at += 1;
                want = Want::Value;
                continue;
            }
            Want::Next => {
                let object = stack.top_is_object()?;
                match (b, object) {
                    (b',', true) => {
                        at += 1;
                        want = Want::Key;
                        continue;
                    }
                    (b',', false) => {
                        at += 1;
                        want = Want::Value;
                        continue;
                    }
                    (b'}', true) | (b']', false) => at += 1,
                    _ => return None,
                }
            }
        }
        // A container closed.
        stack.depth -= 1;
        if stack.depth == 0 {
            return Some(at);
        }
        want = Want::Next;
    }
}

/// The end of the string whose opening quote is at `at`.
fn skip_string(data: &[u8], mut at: usize) -> Option<usize> {
    at += 1;
    loop {
        match *data.get(at)? {
            b'"' => return Some(at + 1),
            b'\\' => match *data.get(at + 1)? {
                b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => at += 2,
                b'u' => {
                    let hex = data.get(at + 2..at + 6)?;
                    if !hex.iter().all(u8::is_ascii_hexdigit) {
                        return None;
                    }
                    at += 6;
                }
                _ => return None,
            },
            0..=0x1f => return None,
            _ => at += 1,
        }
    }
}

/// The end of the literal or number at `at`.
fn skip_scalar(data: &[u8], at: usize) -> Option<usize> {
    for literal in [&b"true"[..], b"false", b"null"] {
        if data.get(at..at + literal.len()) == Some(literal) {
            return Some(at + literal.len());
        }
    }
    let digits = |mut i: usize| {
        let from = i;
        while data.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        (i > from).then_some(i)
    };
    let mut i = at;
    if data.get(i) == Some(&b'-') {
        i += 1;
    }
    i = if data.get(i) == Some(&b'0') {
        i + 1
    } else {
        digits(i)?
    };
    if data.get(i) == Some(&b'.') {
        i = digits(i + 1)?;
    }
    if matches!(data.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(data.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        i = digits(i)?;
    }
    Some(i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skips_valid_values_and_refuses_invalid_ones() {
        let ok: &[&[u8]] = &[
            b"[]",
            b"{}",
            b" [1, -2.5e3, true, null, \"a\\\"\\u00e9\"] ",
            b"{\"a\":{\"b\":[{}]},\"c\":0}",
            b"\"x\"",
            b"12",
        ];
        for v in ok {
            let end = skip_value(v, 0).unwrap_or_else(|| panic!("{}", v.escape_ascii()));
            assert_eq!(v[end..].trim_ascii(), b"", "{}", v.escape_ascii());
        }
        let bad: &[&[u8]] = &[
            b"[",
            b"[1,]",
            b"{\"a\"}",
            b"{\"a\":1,}",
            b"[}",
            b"{]",
            b"01",
            b"-",
            b"\"\\x\"",
            b"tru",
            b"{1:2}",
        ];
        for v in bad {
            let end = skip_value(v, 0);
            assert!(
                end.is_none() || !v[end.unwrap()..].trim_ascii().is_empty(),
                "{}",
                v.escape_ascii()
            );
        }
        assert_eq!(skip_value(b"[1] ,x", 0), Some(3));
    }

    #[test]
    fn any_depth_without_recursion() {
        let depth = 1_000_000;
        let mut v = Vec::new();
        for i in 0..depth {
            v.extend_from_slice(if i % 2 == 0 { b"[" } else { b"{\"k\":" });
        }
        v.push(b'1');
        for i in (0..depth).rev() {
            v.push(if i % 2 == 0 { b']' } else { b'}' });
        }
        assert_eq!(skip_value(&v, 0), Some(v.len()));
        v.pop();
        assert_eq!(skip_value(&v, 0), None);
    }
}
