//! The fastest path for Gemini text chunks.
//!
//! Within one response, Gemini's text chunks are byte-identical except for
//! the text and the numbers of the running `usageMetadata`: same candidate
//! shape, model version and response id. After one chunk has been read the
//! slow way, its bytes become a template: the text string, then literal
//! pieces with runs of digits between them inside the usage object. A later
//! chunk that matches it can only be another text chunk of the same
//! response whose usage object has the same keys in the same order, so the
//! slow path would read the same thing from it: whether the text is empty,
//! and that usage object.
//!
//! Which of two such usage objects the report keeps depends only on which
//! of their numbers are zero (Gemini's counts are sums of those numbers, so
//! a usage is all-zero exactly when the numbers it adds up are), which the
//! match reports as a bit mask.

use memchr::memmem;

use super::event::EventInfo;
use super::template::string_end;

/// How every Gemini text chunk starts.
const PREFIX: &[u8] = br#"{"candidates":[{"content":{"parts":[{"text":""#;
/// Digits a count may have here: sums of two such counts stay far below
/// `u64::MAX`, and longer numbers take the slow path.
const MAX_DIGITS: usize = 15;
/// Most runs of digits in one usage object (the zero mask is a `u64`).
const MAX_SLOTS: usize = 64;
/// Keys that would make the rest of a chunk carry output (then whether the
/// chunk has output would not depend on the text alone) or an ending.
const FORBIDDEN: [&[u8]; 5] = [
    b"\"text\"",
    b"\"functionCall\"",
    b"\"finishReason\"",
    b"\"promptFeedback\"",
    b"\"error\"",
];

/// The learned shape of one response's text chunks.
#[derive(Clone, Debug, Default)]
pub(crate) struct GeminiTemplate {
    /// From the text's closing quote up to the usage object.
    mid: Vec<u8>,
    /// The usage object's bytes between its runs of digits (one more piece
    /// than runs).
    pieces: Vec<Vec<u8>>,
    /// Everything after the usage object.
    suffix: Vec<u8>,
    /// Bit `i` is set when the `i`-th number of the usage object is an
    /// input count (`promptTokenCount`, `toolUsePromptTokenCount`).
    inputs: u64,
}

/// What a matching chunk says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct GeminiMatch<'a> {
    /// The text is not empty.
    pub delta: bool,
    /// The raw usage object.
    pub usage: &'a [u8],
    /// Bit `i` is set when the `i`-th number of the usage object is zero.
    pub zeros: u64,
    /// Every number is at least the one at its place in the counts given
    /// to [`GeminiTemplate::matches`], and every input count the same:
    /// running totals that grew, which the slow path would take without a
    /// warning.
    pub grew: bool,
}

/// Keys whose counts make up the input tokens.
const INPUT_KEYS: [&[u8]; 2] = [b"\"promptTokenCount\":", b"\"toolUsePromptTokenCount\":"];

impl GeminiTemplate {
    /// Learns from a chunk the slow path read as a plain text chunk: output,
    /// a usage object, and no ending, error or anything else.
    pub(crate) fn learn(data: &[u8], info: &EventInfo<'_>) -> Option<Self> {
        let plain = info.delta
            && info.status.is_none()
            && info.finish_reason.is_none()
            && info.incomplete_reason.is_none()
            && info.error.is_none()
            && info.step_usage.is_none()
            && !info.finished
            && !info.terminal
            && !info.starts
            && !info.merge_usage;
        if !plain {
            return None;
        }
        let usage = info.usage?;
        let start = data.strip_prefix(PREFIX).map(|_| PREFIX.len())?;
        let end = string_end(data, start)?;
        // Where the usage object lies inside `data`.
        let at = (usage.as_ptr() as usize).checked_sub(data.as_ptr() as usize)?;
        let after = at.checked_add(usage.len())?;
        if at < end || after > data.len() {
            return None;
        }
        let (mid, suffix) = (&data[end..at], &data[after..]);
        if FORBIDDEN
            .iter()
            .any(|key| memmem::find(mid, key).is_some() || memmem::find(suffix, key).is_some())
        {
            return None;
        }
        let pieces = split_numbers(usage)?;
        let inputs = pieces
            .iter()
            .enumerate()
            .take(pieces.len() - 1)
            .filter(|(_, piece)| INPUT_KEYS.iter().any(|key| piece.ends_with(key)))
            .fold(0u64, |mask, (i, _)| mask | 1 << i);
        Some(Self {
            mid: mid.to_vec(),
            pieces,
            suffix: suffix.to_vec(),
            inputs,
        })
    }

    /// The text and usage of `data` when it has exactly this shape.
    /// `counts` holds the numbers of the previous match (empty for none)
    /// and is given this one's when it matches.
    #[cfg(test)]
    pub(crate) fn matches<'a>(
        &self,
        data: &'a [u8],
        counts: &mut Vec<u64>,
    ) -> Option<GeminiMatch<'a>> {
        let mut out = Vec::new();
        let (m, end) = self.match_len(data, counts, &mut out)?;
        (end == data.len()).then(|| {
            *counts = out;
            m
        })
    }

    /// [`GeminiTemplate::matches`] on the start of `data` (what follows is
    /// not looked at), and the length of the chunk: `prev` holds the
    /// numbers of the previous match, `out` is given this one's.
    pub(crate) fn match_len<'a>(
        &self,
        data: &'a [u8],
        prev: &[u64],
        out: &mut Vec<u64>,
    ) -> Option<(GeminiMatch<'a>, usize)> {
        if !data.starts_with(PREFIX) {
            return None;
        }
        let end = string_end(data, PREFIX.len())?;
        let usage = data[end..].strip_prefix(self.mid.as_slice())?;
        let mut rest = usage;
        let mut zeros = 0u64;
        let (last, numbered) = self.pieces.split_last()?;
        let mut grew = !prev.is_empty() && prev.len() == numbered.len();
        out.clear();
        for (i, piece) in numbered.iter().enumerate() {
            rest = rest.strip_prefix(piece.as_slice())?;
            let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
            // JSON numbers have no leading zeros.
            if digits == 0 || digits > MAX_DIGITS || (digits > 1 && rest[0] == b'0') {
                return None;
            }
            let value = rest[..digits]
                .iter()
                .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
            if value == 0 {
                zeros |= 1 << i;
            }
            let before = prev.get(i).copied().unwrap_or_default();
            grew &= if self.inputs & 1 << i != 0 {
                value == before
            } else {
                value >= before
            };
            out.push(value);
            rest = &rest[digits..];
        }
        let tail = rest.strip_prefix(last.as_slice())?;
        if !tail.starts_with(&self.suffix) {
            return None;
        }
        let m = GeminiMatch {
            delta: end > PREFIX.len() + 1,
            usage: &usage[..usage.len() - tail.len()],
            zeros,
            grew,
        };
        Some((m, data.len() - tail.len() + self.suffix.len()))
    }
}

/// The bytes of `usage` between its runs of digits outside strings, or
/// None when its numbers are not all plain integers or there are too many.
fn split_numbers(usage: &[u8]) -> Option<Vec<Vec<u8>>> {
    let mut pieces = Vec::new();
    let mut piece = Vec::new();
    let mut in_string = false;
    let mut i = 0;
    while i < usage.len() {
        let b = usage[i];
        if in_string {
            match b {
                b'\\' => return None,
                b'"' => in_string = false,
                _ => {}
            }
        } else if b == b'"' {
            in_string = true;
        } else if b.is_ascii_digit() {
            let digits = usage[i..].iter().take_while(|b| b.is_ascii_digit()).count();
            if digits > MAX_DIGITS || pieces.len() == MAX_SLOTS {
                return None;
            }
            pieces.push(std::mem::take(&mut piece));
            i += digits;
            continue;
        } else if matches!(b, b'.' | b'e' | b'E' | b'-' | b'+') {
            // A fraction, exponent or sign, or a literal (`true`, `false`
            // and `null` all have an `e`): not learned.
            return None;
        }
        piece.push(b);
        i += 1;
    }
    pieces.push(piece);
    Some(pieces)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &[u8] = br#"{"candidates":[{"content":{"parts":[{"text":"Hi \"x\""}],"role":"model"},"index":0}],"usageMetadata":{"promptTokenCount":9,"candidatesTokenCount":13,"totalTokenCount":22,"promptTokensDetails":[{"modality":"TEXT","tokenCount":9}],"cachedContentTokenCount":0},"modelVersion":"gemini-2.5-flash","responseId":"r1"}"#;

    /// What the slow path reads from `data`.
    fn info(data: &[u8]) -> EventInfo<'_> {
        super::super::gemini::parse(data).unwrap()
    }

    #[test]
    fn learns_and_matches_text_and_usage() {
        let t = GeminiTemplate::learn(A, &info(A)).unwrap();
        let mut counts = Vec::new();
        let m = t.matches(A, &mut counts).unwrap();
        assert!(m.delta && !m.grew);
        assert_eq!(counts, [9, 13, 22, 9, 0]);
        assert_eq!(t.inputs, 1);
        assert_eq!(m.usage, info(A).usage.unwrap());
        assert_eq!(m.zeros, 1 << 4);
        let other = br#"{"candidates":[{"content":{"parts":[{"text":""}],"role":"model"},"index":0}],"usageMetadata":{"promptTokenCount":9,"candidatesTokenCount":130,"totalTokenCount":139,"promptTokensDetails":[{"modality":"TEXT","tokenCount":9}],"cachedContentTokenCount":7},"modelVersion":"gemini-2.5-flash","responseId":"r1"}"#;
        let m = t.matches(other, &mut counts).unwrap();
        assert!(!m.delta && m.grew);
        assert_eq!(m.zeros, 0);
        assert!(t.matches(A, &mut counts).is_some_and(|m| !m.grew));
        let input = std::str::from_utf8(other)
            .unwrap()
            .replace(r#""promptTokenCount":9,"#, r#""promptTokenCount":10,"#);
        assert!(t.matches(A, &mut counts).is_some_and(|m| m.grew));
        assert!(t
            .matches(input.as_bytes(), &mut counts)
            .is_some_and(|m| !m.grew));
        assert!(m.usage.ends_with(b"\"cachedContentTokenCount\":7}"));
    }

    #[test]
    fn anything_else_takes_the_slow_path() {
        let t = GeminiTemplate::learn(A, &info(A)).unwrap();
        let text = std::str::from_utf8(A).unwrap();
        for different in [
            text.replace(r#""totalTokenCount":22"#, r#""totalTokenCount":022"#),
            text.replace(r#""totalTokenCount":22"#, r#""totalTokenCount":2.5"#),
            text.replace(r#""totalTokenCount":22"#, r#""totalTokenCount":-2"#),
            text.replace(r#""totalTokenCount":22"#, r#""totalTokenCount":"22""#),
            text.replace(
                r#""totalTokenCount":22"#,
                r#""totalTokenCount":1234567890123456"#,
            ),
            text.replace(r#""totalTokenCount":22"#, r#""totalTokenCount":"#),
            text.replace(r#""index":0}"#, r#""index":0,"finishReason":"STOP"}"#),
            text.replace(r#""responseId":"r1""#, r#""responseId":"r2""#),
            text.replace(r#""TEXT""#, r#""IMAGE""#),
            text.replace(r#"}],"role""#, r#"},{"text":"b"}],"role""#),
            text[..60].to_owned(),
            format!("{text} "),
        ] {
            assert_eq!(
                t.matches(different.as_bytes(), &mut Vec::new()),
                None,
                "{different}"
            );
        }
    }

    #[test]
    fn learns_only_plain_text_chunks() {
        let mut ended = info(A);
        ended.terminal = true;
        assert!(GeminiTemplate::learn(A, &ended).is_none());
        let no_usage = EventInfo {
            delta: true,
            ..EventInfo::default()
        };
        assert!(GeminiTemplate::learn(A, &no_usage).is_none());
        let two_parts = br#"{"candidates":[{"content":{"parts":[{"text":"a"},{"text":"b"}],"role":"model"},"index":0}],"usageMetadata":{"promptTokenCount":9},"modelVersion":"g","responseId":"r1"}"#;
        assert!(GeminiTemplate::learn(two_parts, &info(two_parts)).is_none());
        let call = br#"{"candidates":[{"content":{"parts":[{"text":"a"},{"functionCall":{"name":"f"}}]},"index":0}],"usageMetadata":{"promptTokenCount":9},"modelVersion":"g","responseId":"r1"}"#;
        assert!(GeminiTemplate::learn(call, &info(call)).is_none());
        let float = br#"{"candidates":[{"content":{"parts":[{"text":"a"}]},"index":0}],"usageMetadata":{"promptTokenCount":9.0},"modelVersion":"g","responseId":"r1"}"#;
        assert!(GeminiTemplate::learn(float, &info(float)).is_none());
    }
}
