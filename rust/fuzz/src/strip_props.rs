//! The strip target's properties (`check_strip`); part of `props`.
//!
//! `ctrl & 7` picks the stripper's `max_event_size`: the default, or 16,
//! 64, 128, 300 or 1000 bytes.

use serde_json::Value;
use ssetally::sse::DEFAULT_MAX_EVENT_SIZE;
use ssetally::strip::UsageChunkStripper;

use super::{chunks, clean_json, show, split_lines, Input, Seen};

/// Held bytes may pass the limit by nothing; capacity by this.
const HELD_SLACK: usize = 64;

fn strip_limit(ctrl: u8) -> usize {
    match ctrl & 7 {
        0..=2 => DEFAULT_MAX_EVENT_SIZE,
        3 => 16,
        4 => 64,
        5 => 128,
        6 => 300,
        _ => 1000,
    }
}

/// What a stripper run gave: the output and the three counters.
#[derive(Debug, PartialEq, Eq)]
struct Stripped {
    out: Vec<u8>,
    stripped: u64,
    nulls_removed: u64,
    oversized: u64,
}

/// Feeds `split` to one stripper, checking after every feed that it holds
/// no more than the limit.
fn strip_with(limit: usize, split: &[&[u8]]) -> Stripped {
    let mut s = UsageChunkStripper::new(limit);
    let mut out = Vec::new();
    for chunk in split {
        s.feed(chunk, &mut out).expect("memory for the output");
        assert!(s.held() <= limit, "stripper holds {} bytes", s.held());
        assert!(
            s.retained_capacity() <= limit + HELD_SLACK,
            "stripper keeps {} bytes of capacity",
            s.retained_capacity()
        );
    }
    s.finish(&mut out).expect("memory for the output");
    assert_eq!(s.held(), 0, "finish forwards everything");
    Stripped {
        out,
        stripped: s.stripped,
        nulls_removed: s.nulls_removed,
        oversized: s.oversized,
    }
}

/// Strip: the output of any chunking equals that of feeding the body at
/// once; it is the input minus exactly the stripped blocks and members (a
/// serde_json reference, whenever the blocks' data is clean JSON); the
/// stripper never holds more than its limit.
pub fn check_strip(data: &[u8]) -> Seen {
    let input = Input::parse(data);
    let body = input.body;
    let limit = strip_limit(input.ctrl);
    let split = chunks(body, input.seed);
    let whole = strip_with(limit, &[body]);
    let cut = strip_with(limit, &split);
    assert!(
        whole == cut,
        "stripper: chunking changed the output\n whole: {}\n   cut: {}",
        show(&whole.out),
        show(&cut.out)
    );
    if whole.stripped == 0 && whole.nulls_removed == 0 {
        assert!(
            whole.out == body,
            "stripper changed a stream it stripped nothing from"
        );
    }
    assert!(whole.out.len() <= body.len());
    let reference = reference_strip(body, limit);
    if let Some(expected) = &reference {
        assert!(
            whole.out == expected.out,
            "stripper vs reference\n      got: {}\nreference: {}",
            show(&whole.out),
            show(&expected.out)
        );
        assert_eq!(&whole, expected, "stripper counters vs reference");
    }
    check_injected(&input, limit, body);
    Seen {
        strip_reference: reference.is_some(),
        stripped: whole.stripped,
        nulls_removed: whole.nulls_removed,
        strip_oversized: whole.oversized,
        ..Seen::default()
    }
}

/// Usage-only chunks as `include_usage` makes upstreams send them, each a
/// whole block with its blank line.
const INJECTED: [&[u8]; 4] = [
    b"data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":5,\"total_tokens\":8}}\n\n",
    b"data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":5,\"total_tokens\":8}}\r\n\r\n",
    b"data:{\"choices\":[],\"usage\":{}}\r\r",
    b"data: {\"choices\": [ ], \"usage\": {\"total_tokens\": 1}}\n\n",
];

/// Injection: a usage-only chunk put between two blocks of the body (or
/// before the first, or after the last complete one) is removed and nothing
/// else changes: the output of body-with-chunk, whole or cut, equals that
/// of the body, with one more chunk stripped. A chunk longer than the limit
/// is forwarded unchanged instead, counted as oversized. Blocks are
/// independent: the body split at that boundary strips to the same bytes as
/// its two halves stripped apart.
fn check_injected(input: &Input<'_>, limit: usize, body: &[u8]) {
    let (complete, _) = blocks(body);
    let k = (input.seed as usize / 5) % (complete.len() + 1);
    let at: usize = complete[..k].iter().map(|b| b.len()).sum();
    let (before, after) = body.split_at(at);
    let mut injected = INJECTED[usize::from(input.ctrl >> 3) % INJECTED.len()];
    if injected.ends_with(b"\r") && after.starts_with(b"\n") {
        // That CR and LF would be one line end: the chunk would take the
        // body's LF with it.
        injected = INJECTED[0];
    }
    let stream = [before, injected, after].concat();
    let base = strip_with(limit, &[body]);
    let whole = strip_with(limit, &[&stream]);
    let cut = strip_with(limit, &chunks(&stream, input.seed.rotate_left(7)));
    assert!(
        whole == cut,
        "stripper: chunking changed the output of an injected stream\n whole: {}\n   cut: {}",
        show(&whole.out),
        show(&cut.out)
    );
    let (head, tail) = (strip_with(limit, &[before]), strip_with(limit, &[after]));
    assert!(
        base.out == [&head.out[..], &tail.out[..]].concat(),
        "stripper: blocks are not independent at byte {at}"
    );
    let size = injected.len() - usize::from(injected.ends_with(b"\r\n"));
    let expected = if size <= limit {
        Stripped {
            out: base.out,
            stripped: base.stripped + 1,
            ..base
        }
    } else {
        Stripped {
            out: [&head.out[..], injected, &tail.out[..]].concat(),
            oversized: base.oversized + 1,
            ..base
        }
    };
    assert!(
        whole.out == expected.out,
        "stripper: injected usage chunk at byte {at} (limit {limit})\n      got: {}\n expected: {}",
        show(&whole.out),
        show(&expected.out)
    );
    assert_eq!(whole, expected, "stripper counters with an injected chunk");
}

/// Event blocks (each through its blank line's terminator) and the
/// unterminated rest.
fn blocks(input: &[u8]) -> (Vec<&[u8]>, &[u8]) {
    let mut out = Vec::new();
    let mut block_start = 0;
    let mut line_start = 0;
    let mut i = 0;
    while i < input.len() {
        let b = input[i];
        if b == b'\n' || b == b'\r' {
            let blank = i == line_start;
            if b == b'\r' && input.get(i + 1) == Some(&b'\n') {
                i += 1;
            }
            line_start = i + 1;
            if blank {
                out.push(&input[block_start..=i]);
                block_start = i + 1;
            }
        }
        i += 1;
    }
    (out, &input[block_start..])
}

/// The stripper's job done on the whole input with serde_json and a text
/// scan: a block longer than `limit` (counted through the first byte of its
/// blank line) is kept whole; of the others, every block whose data is
/// `{"choices": [], "usage": {...}, ...}` is dropped, and a chunk with a
/// `choices` array and `"usage": null` loses that member. `None` when some
/// block's data is JSON-like but not clean JSON for serde_json (duplicate
/// or escaped keys, invalid text), or is a null-usage chunk split over
/// several `data` lines, where the documented byte-level rules and a DOM
/// parser may legitimately differ.
fn reference_strip(input: &[u8], limit: usize) -> Option<Stripped> {
    let (blocks, rest) = blocks(input);
    let mut r = Stripped {
        out: Vec::new(),
        stripped: 0,
        nulls_removed: 0,
        oversized: u64::from(rest.len() > limit),
    };
    for block in blocks {
        let size = block.len() - usize::from(block.ends_with(b"\r\n"));
        if size > limit {
            r.oversized += 1;
            r.out.extend_from_slice(block);
            continue;
        }
        let (data, lines) = block_data(block);
        let value = match clean_json(&data) {
            Some(Value::Object(o)) => o,
            Some(_) => {
                r.out.extend_from_slice(block);
                continue;
            }
            None if data.trim_ascii_start().starts_with(b"{") => return None,
            None => {
                r.out.extend_from_slice(block);
                continue;
            }
        };
        let choices = value.get("choices");
        let usage_only = choices.is_some_and(|c| c.as_array().is_some_and(Vec::is_empty))
            && value.get("usage").is_some_and(Value::is_object);
        let null_usage =
            choices.is_some_and(Value::is_array) && value.get("usage").is_some_and(Value::is_null);
        if usage_only {
            r.stripped += 1;
        } else if null_usage {
            if lines != 1 {
                return None;
            }
            r.nulls_removed += 1;
            r.out.extend_from_slice(&without_null_usage(block));
        } else {
            r.out.extend_from_slice(block);
        }
    }
    r.out.extend_from_slice(rest);
    Some(r)
}

/// The data of a block and how many `data` lines it has.
fn block_data(block: &[u8]) -> (Vec<u8>, usize) {
    let (lines, _) = split_lines(block);
    let mut data: Option<Vec<u8>> = None;
    let mut count = 0;
    for line in lines {
        let value = if line == b"data" {
            &b""[..]
        } else if let Some(v) = line.strip_prefix(b"data:") {
            v.strip_prefix(b" ").unwrap_or(v)
        } else {
            continue;
        };
        count += 1;
        match data.as_mut() {
            Some(d) => {
                d.push(b'\n');
                d.extend_from_slice(value);
            }
            None => data = Some(value.to_vec()),
        }
    }
    (data.unwrap_or_default(), count)
}

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// `block` (one `data` line of clean JSON with a top-level `"usage": null`)
/// without that member: found by a string- and depth-aware scan of the
/// text, then cut with the comma before it (and the whitespace before that
/// comma), or, when it is the first member, with the comma after it (and
/// the whitespace after that comma).
fn without_null_usage(block: &[u8]) -> Vec<u8> {
    // The `data` line's value: the only part scanned.
    let mut line_start = 0;
    let mut range = None;
    for line in block.split(|&b| b == b'\n' || b == b'\r') {
        if let Some(v) = line.strip_prefix(b"data:") {
            let skip = usize::from(v.first() == Some(&b' '));
            range = Some(line_start + 5 + skip..line_start + line.len());
        }
        line_start += line.len() + 1;
    }
    let range = range.expect("one data line");
    let (head, value) = block.split_at(range.start);
    let (value, tail) = value.split_at(range.end - range.start);
    [head, &cut_null_usage(value), tail].concat()
}

fn cut_null_usage(block: &[u8]) -> Vec<u8> {
    let mut depth = 0;
    let mut i = 0;
    let mut key_at = None;
    while i < block.len() {
        match block[i] {
            b'{' | b'[' => depth += 1,
            b'}' | b']' => depth -= 1,
            b'"' => {
                let start = i;
                i += 1;
                while block[i] != b'"' {
                    i += if block[i] == b'\\' { 2 } else { 1 };
                }
                let after_colon = block[i + 1..].iter().position(|&b| !is_ws(b));
                let is_key = after_colon.is_some_and(|p| block[i + 1 + p] == b':');
                if depth == 1 && is_key && &block[start..=i] == b"\"usage\"" {
                    key_at = Some(start);
                    break;
                }
            }
            _ => {}
        }
        i += 1;
    }
    let key = key_at.expect("the usage key is in the block");
    let null_at = block[key..].windows(4).position(|w| w == b"null").unwrap() + key;
    let null_end = null_at + 4;
    let before = block[..key].iter().rposition(|&b| !is_ws(b)).unwrap();
    let (start, end) = if block[before] == b',' {
        let start = block[..before].iter().rposition(|&b| !is_ws(b)).unwrap() + 1;
        (start, null_end)
    } else {
        assert_eq!(block[before], b'{', "the usage member opens the object");
        let mut end = null_end;
        while is_ws(block[end]) {
            end += 1;
        }
        if block[end] == b',' {
            end += 1;
            while is_ws(block[end]) {
                end += 1;
            }
        } else {
            end = null_end;
        }
        (key, end)
    };
    [&block[..start], &block[end..]].concat()
}
