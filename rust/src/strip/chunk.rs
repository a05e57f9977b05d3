//! What the stripper does with one complete event block: drop it (the
//! usage-only chunk), cut the `"usage":null` member out of it (every other
//! chunk of an `include_usage` stream), or forward it unchanged.

use std::ops::Range;

use jiter::{Jiter, Peek};

use crate::usage::deep;

/// The fate of a block.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Verdict {
    Keep,
    /// The usage-only chunk `include_usage` added.
    Drop,
    /// Forward the block without these raw bytes (the `usage: null` member
    /// with its separating comma and whitespace).
    Cut(Range<usize>),
}

/// Judges a complete block (raw bytes, its blank line excluded).
pub(super) fn judge(block: &[u8]) -> Verdict {
    if !may_name_usage(block) {
        return Verdict::Keep; // the common chunk: no `usage` member, nothing parsed
    }
    let mut values = data_values(block);
    let Some(first) = values.next() else {
        return Verdict::Keep;
    };
    // The usual block has one `data:` line, read in place.
    let single = values.next().is_none();
    let found = if single {
        shape(&block[first.clone()])
    } else {
        joined_data(block).and_then(|data| shape(&data))
    };
    match found {
        Some(Shape::UsageOnly) => Verdict::Drop,
        Some(Shape::NullUsage(span)) if single => {
            Verdict::Cut(first.start + span.start..first.start + span.end)
        }
        Some(Shape::NullUsage(span)) => raw_range(block, span).map_or(Verdict::Keep, Verdict::Cut),
        None => Verdict::Keep,
    }
}

/// Whether a `usage` key can be in `block`: spelled out, or written with a
/// `\u` escape (the only other way JSON can spell a key). Both verdicts
/// other than `Keep` need that key.
fn may_name_usage(block: &[u8]) -> bool {
    // One pass over the `u`s (rare in chunk JSON) finds both spellings.
    memchr::memchr_iter(b'u', block)
        .any(|at| block[at..].starts_with(b"usage") || (at > 0 && block[at - 1] == b'\\'))
}

/// The raw byte ranges of the `data` field values of a block, in order.
fn data_values(block: &[u8]) -> impl Iterator<Item = Range<usize>> + '_ {
    let mut at = 0;
    block
        .split(|&b| b == b'\n' || b == b'\r')
        .filter_map(move |line| {
            let start = at;
            at += line.len() + 1;
            let rest = line.strip_prefix(b"data")?;
            match rest {
                [] => Some(start + 4..start + 4),
                [b':', b' ', ..] => Some(start + 6..start + line.len()),
                [b':', ..] => Some(start + 5..start + line.len()),
                _ => None,
            }
        })
}

/// The data of a block with several `data` lines (joined with LF), or
/// `None` when memory for it cannot be had (the block is then kept).
fn joined_data(block: &[u8]) -> Option<Vec<u8>> {
    let mut data = Vec::new();
    data.try_reserve_exact(block.len()).ok()?;
    for (i, range) in data_values(block).enumerate() {
        if i > 0 {
            data.push(b'\n');
        }
        data.extend_from_slice(&block[range]);
    }
    Some(data)
}

/// Maps a range of the joined data back to the raw block, when it lies
/// within one `data` line (a member cut across lines is left alone).
fn raw_range(block: &[u8], span: Range<usize>) -> Option<Range<usize>> {
    let mut at = 0;
    for value in data_values(block) {
        let len = value.end - value.start;
        if span.start >= at && span.end <= at + len {
            return Some(value.start + span.start - at..value.start + span.end - at);
        }
        at += len + 1;
    }
    None
}

#[derive(Debug, PartialEq, Eq)]
enum Shape {
    /// `{"choices": [], "usage": {...}, ...}`.
    UsageOnly,
    /// A chunk (it has a `choices` array) with one `usage` member, `null`:
    /// the bytes of that member and the separator that goes with it.
    NullUsage(Range<usize>),
}

#[derive(Clone, Copy, PartialEq)]
enum Key {
    Choices,
    Usage,
    Other,
}

fn classify(k: &str) -> Key {
    match k {
        "choices" => Key::Choices,
        "usage" => Key::Usage,
        _ => Key::Other,
    }
}

/// Reads the top level of a chunk; `None` for anything that is not one
/// whole JSON object of interest (invalid JSON included).
fn shape(data: &[u8]) -> Option<Shape> {
    let mut jiter = Jiter::new(data);
    // Where `jiter` starts in `data` (it starts again past a member nested
    // deeper than its recursion limit).
    let mut base = 0;
    // Every `choices` member is an array / an empty array.
    let (mut choices, mut arrays, mut empty) = (false, true, true);
    // The last `usage` member's kind, how many there are, and where the
    // (first) one started: the end of the member before it, if any.
    let (mut usage, mut usages) = (None, 0u32);
    let mut null_span: Option<(Option<usize>, usize)> = None;
    let mut before: Option<usize> = None;
    let mut key = jiter.next_object().ok()?.map(classify);
    while let Some(k) = key {
        let peek = jiter.peek().ok()?;
        let start = base + jiter.current_index();
        let end = match jiter.known_skip(peek) {
            Ok(()) => base + jiter.current_index(),
            // Any depth is read, without recursion: an injected usage chunk
            // must be found however deep a value in it is nested.
            Err(err) if deep::too_deep(&err) => {
                let end = deep::skip_value(data, start)?;
                base = end;
                jiter = Jiter::new(&data[end..]);
                end
            }
            Err(_) => return None,
        };
        match k {
            Key::Choices => {
                choices = true;
                arrays &= peek == Peek::Array;
                empty &= peek == Peek::Array && is_empty_array(&data[start..end]);
            }
            Key::Usage => {
                usages += 1;
                usage = Some(peek);
                if peek == Peek::Null {
                    null_span = Some((before, end));
                }
            }
            Key::Other => {}
        }
        before = Some(end);
        key = jiter.next_key().ok()?.map(classify);
    }
    // Only a whole JSON object: trailing bytes make it something else.
    jiter.finish().ok()?;
    if choices && empty && matches!(usage, Some(Peek::Object)) {
        return Some(Shape::UsageOnly);
    }
    if !(choices && arrays && usages == 1) {
        return None;
    }
    let (before, end) = null_span?;
    Some(Shape::NullUsage(match before {
        // `,"usage":null` (with any whitespace): from the end of the
        // member before it.
        Some(prev_end) => prev_end..end,
        // `{"usage":null,`: from the key to the next key.
        None => {
            let key_start = skip_ws(data, data.iter().position(|&b| b == b'{')? + 1);
            let after = skip_ws(data, end);
            let next = if data.get(after) == Some(&b',') {
                skip_ws(data, after + 1)
            } else {
                end
            };
            key_start..next
        }
    }))
}

fn skip_ws(data: &[u8], mut at: usize) -> usize {
    while matches!(data.get(at), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        at += 1;
    }
    at
}

fn is_empty_array(text: &[u8]) -> bool {
    text.first() == Some(&b'[') && skip_ws(text, 1) == text.len() - 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cut(block: &[u8]) -> Vec<u8> {
        match judge(block) {
            Verdict::Cut(r) => [&block[..r.start], &block[r.end..]].concat(),
            other => panic!("{other:?} for {}", block.escape_ascii()),
        }
    }

    #[test]
    fn the_null_member_is_cut_wherever_it_is() {
        let cases: &[(&[u8], &[u8])] = &[
            (
                b"data: {\"choices\":[],\"usage\":null}",
                b"data: {\"choices\":[]}",
            ),
            (
                b"data: {\"id\":1,\"choices\":[{}],\"usage\":null,\"o\":\"x\"}",
                b"data: {\"id\":1,\"choices\":[{}],\"o\":\"x\"}",
            ),
            (
                b"data: {\"choices\": [{}], \"usage\": null}",
                b"data: {\"choices\": [{}]}",
            ),
            (
                b"data:{\"usage\":null,\"choices\":[{}]}",
                b"data:{\"choices\":[{}]}",
            ),
            (
                b"data: { \"usage\" : null , \"choices\":[]}",
                b"data: { \"choices\":[]}",
            ),
            (
                b"event: x\ndata: {\"choices\":[{}],\"usage\":null}\n",
                b"event: x\ndata: {\"choices\":[{}]}\n",
            ),
            (
                b"data: {\"choices\":\ndata: [{}],\"usage\":null}",
                b"data: {\"choices\":\ndata: [{}]}",
            ),
        ];
        for (block, want) in cases {
            assert_eq!(cut(block), *want, "{}", block.escape_ascii());
        }
    }

    #[test]
    fn everything_else_is_kept() {
        let kept: &[&[u8]] = &[
            b"data: {\"choices\":[{}],\"usage\":{\"total_tokens\":1}}",
            b"data: {\"type\":\"response.created\",\"usage\":null}",
            b"data: {\"choices\":null,\"usage\":null}",
            b"data: {\"choices\":[{}],\"usage\":null,\"usage\":null}",
            b"data: {\"choices\":[{}],\"usage\":null} x",
            b"data: {\"choices\":[{}],\"usage\":null",
            b"data: {\"choices\":[{}],\"usage\"\ndata: :null}",
            b"data: [DONE]",
            b": comment",
            b"",
        ];
        for block in kept {
            assert_eq!(judge(block), Verdict::Keep, "{}", block.escape_ascii());
        }
        let usage_only: &[u8] = b"data: {\"choices\":[ ],\"usage\":{}}";
        assert_eq!(judge(usage_only), Verdict::Drop);
    }
}
