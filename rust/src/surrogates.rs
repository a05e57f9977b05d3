//! Lone UTF-16 surrogate escapes in JSON strings.
//!
//! `"\ud83d"` is valid JSON grammar but not valid Unicode; servers that
//! escape non-ASCII text and cut an emoji between two chunks send one.
//! jiter refuses such a string even when only skipping it, which would make
//! the whole event unreadable (its usage lost). This rewrites each lone
//! surrogate escape to `\ufffd` (the same six bytes long, so offsets hold),
//! as a UTF-8 decoder replaces an invalid sequence.

use memchr::memchr_iter;

const REPLACEMENT: &[u8; 6] = b"\\ufffd";

fn hex4(data: &[u8], at: usize) -> Option<u16> {
    let digits = std::str::from_utf8(data.get(at..at + 4)?).ok()?;
    u16::from_str_radix(digits, 16).ok()
}

/// The `\uXXXX` escape at `at` (the backslash), if there is one.
fn unicode_escape(data: &[u8], at: usize) -> Option<u16> {
    (data.get(at + 1) == Some(&b'u'))
        .then(|| hex4(data, at + 2))
        .flatten()
}

/// A copy of `data` with every lone surrogate escape replaced by `\ufffd`,
/// or None when there is none.
pub(crate) fn replace_lone_surrogates(data: &[u8]) -> Option<Vec<u8>> {
    let mut lone = Vec::new();
    // Index of the next byte not yet covered by an escape already read
    // (`\\` escapes a backslash, and a pair takes twelve bytes).
    let mut next = 0;
    for at in memchr_iter(b'\\', data) {
        if at < next {
            continue;
        }
        next = at + 2;
        let Some(unit) = unicode_escape(data, at) else {
            continue;
        };
        next = at + 6;
        match unit {
            0xD800..=0xDBFF => match unicode_escape(data, at + 6) {
                Some(0xDC00..=0xDFFF) => next = at + 12,
                _ => lone.push(at),
            },
            0xDC00..=0xDFFF => lone.push(at),
            _ => {}
        }
    }
    if lone.is_empty() {
        return None;
    }
    let mut fixed = data.to_vec();
    for at in lone {
        fixed[at..at + 6].copy_from_slice(REPLACEMENT);
    }
    Some(fixed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fix(s: &str) -> Option<String> {
        replace_lone_surrogates(s.as_bytes()).map(|v| String::from_utf8(v).unwrap())
    }

    #[test]
    fn only_lone_surrogates_are_replaced() {
        assert_eq!(fix(r#"{"a":"\ud83d\ude80 ok \u00e9"}"#), None);
        assert_eq!(fix(r#"{"a":"x\ud83d"}"#).unwrap(), r#"{"a":"x\ufffd"}"#);
        assert_eq!(fix(r#"{"a":"\ude80y"}"#).unwrap(), r#"{"a":"\ufffdy"}"#);
        assert_eq!(
            fix(r#"{"a":"\ud83d\ud83d\ude80"}"#).unwrap(),
            r#"{"a":"\ufffd\ud83d\ude80"}"#
        );
        // An escaped backslash followed by text that looks like an escape.
        assert_eq!(fix(r#"{"a":"\\ud800"}"#), None);
        assert_eq!(fix(r#"{"a":"\\\ud800"}"#).unwrap(), r#"{"a":"\\\ufffd"}"#);
        // Cut short or not hex: left for the parser to refuse.
        assert_eq!(fix(r#"{"a":"\ud8"#), None);
        assert_eq!(fix(r#"{"a":"\uzzzz"}"#), None);
    }
}
