//! The fastest path for OpenAI-style chat content chunks (and Anthropic
//! text deltas, which have the same property).
//!
//! Within one stream, content chunks are byte-identical except for the
//! content string (and the `obfuscation` padding): same id, model, created
//! time and field order, `"finish_reason":null`, `"usage":null`. After one
//! chunk has been read the slow way, its bytes before and after the content
//! string become a template; a later chunk that matches the template exactly
//! can only be another content chunk of the same stream, so it is counted
//! with two comparisons and one string scan. Anything that differs in a
//! single byte takes the normal path.

use memchr::memchr2;
use memchr::memmem;

use super::scan::Needles;

/// Where the text of a chat content chunk starts.
pub(crate) const CHAT_CONTENT: &[u8] = b"\"delta\":{\"content\":\"";
/// Where the text of an Anthropic `text_delta` starts.
pub(crate) const ANTHROPIC_TEXT: &[u8] = b"\"delta\":{\"type\":\"text_delta\",\"text\":\"";
/// Where the output string of each Anthropic `content_block_delta` that
/// carries output starts: text, tool input and thinking (the keys the slow
/// path counts; a `signature_delta` carries none).
pub(crate) const ANTHROPIC_DELTAS: [&[u8]; 3] = [
    ANTHROPIC_TEXT,
    b"\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"",
    b"\"delta\":{\"type\":\"thinking_delta\",\"thinking\":\"",
];
const OBFUSCATION_KEY: &[u8] = b",\"obfuscation\":\"";

/// Where a template fast path found one content event and its text, in the
/// bytes it read (offsets), and which learned shape matched (see
/// [`crate::usage::UsageTap::collecting_output`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TextSpan {
    /// Counts the shapes learned in the stream: the same number, the same shape.
    pub(crate) shape: u32,
    /// The event's data.
    pub(crate) data: (usize, usize),
    /// The text's JSON string body, between its quotes (escapes not decoded).
    pub(crate) text: (usize, usize),
}

/// The learned shape of one stream's content chunks.
#[derive(Clone, Debug, Default)]
pub(crate) struct ChunkTemplate {
    /// Everything up to and including the opening quote of the content.
    prefix: Vec<u8>,
    /// Everything after the content's closing quote, up to the obfuscation
    /// padding (or the end of the chunk when there is none).
    tail: Vec<u8>,
    /// Whether the chunk ends with `,"obfuscation":"…"}`.
    obfuscated: bool,
    /// The wire bytes of such an event up to the content (its `event:` line,
    /// `data: ` and `prefix`), compared in one go on raw bytes; empty until
    /// [`ChunkTemplate::for_event`] gave it (no raw reading then).
    raw_head: Vec<u8>,
    /// `tail` and the blank line that ends the event (no obfuscation only).
    raw_tail: Vec<u8>,
    /// `raw_tail` as the low bytes of a word and their mask, when it fits
    /// in one (`"}}` and the blank line do): compared without a call.
    raw_tail_word: u64,
    raw_tail_mask: u64,
}

/// The offset just past the closing quote of the JSON string whose content
/// starts at `start`, or None if it does not close or is not valid JSON (a
/// control character or an unknown escape, which the slow path would count
/// as invalid: such an event must take it).
pub(crate) fn string_end(data: &[u8], start: usize) -> Option<usize> {
    let mut at = start;
    loop {
        let found = special(data, at)?;
        match data[found] {
            b'"' => return Some(found + 1),
            b'\\' => at = found + 1 + escape_len(data.get(found + 1..)?)?,
            _ => return None,
        }
    }
}

/// The length of the escape after a backslash, when it is a JSON escape.
fn escape_len(rest: &[u8]) -> Option<usize> {
    match rest.first()? {
        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => Some(1),
        b'u' if rest.get(1..5)?.iter().all(u8::is_ascii_hexdigit) => Some(5),
        _ => None,
    }
}

const ONES: u64 = u64::from_le_bytes([1; 8]);

/// The flags of the `"`, `\` and control bytes of the word `w`: the lowest
/// flag is the first such byte (flags above it may be false).
#[inline]
fn flags(w: u64) -> u64 {
    const HIGHS: u64 = u64::from_le_bytes([0x80; 8]);
    let below = |x: u64, n: u8| x.wrapping_sub(ONES * u64::from(n)) & !x & HIGHS;
    below(w ^ (ONES * u64::from(b'"')), 1)
        | below(w ^ (ONES * u64::from(b'\\')), 1)
        | below(w, 0x20)
}

fn word_at(data: &[u8], at: usize) -> u64 {
    let mut w = [0; 8];
    w.copy_from_slice(&data[at..at + 8]);
    u64::from_le_bytes(w)
}

/// Where the first `"`, `\` or control character of `data` at or after
/// `from` is. Eight bytes at a time in a register: delta texts are mostly a
/// few bytes long, where a SIMD search costs more in setting up than it
/// saves, and this finds the control characters too. The last bytes are
/// read as the last eight of `data`, those before `from` masked out.
#[inline]
fn special(data: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while i + 8 <= data.len() {
        let hits = flags(word_at(data, i));
        if hits != 0 {
            return Some(i + (hits.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    if i >= data.len() {
        return None;
    }
    if data.len() < 8 {
        return data[i..]
            .iter()
            .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
            .map(|at| i + at);
    }
    let base = data.len() - 8;
    // Bytes before `i` become a byte that is never flagged (so no borrow
    // from them reaches the bytes that count).
    let keep = u64::MAX << ((i - base) * 8);
    let w = (word_at(data, base) & keep) | ((ONES * 0x7f) & !keep);
    let hits = flags(w);
    (hits != 0).then(|| base + (hits.trailing_zeros() / 8) as usize)
}

impl ChunkTemplate {
    /// Learns the template from a chunk the normal path read as a plain
    /// content chunk (no usage, no finish reason, no error); `text_key` is
    /// the bytes that open its text string.
    pub(crate) fn learn(data: &[u8], text_key: &[u8]) -> Option<Self> {
        // Every text key opens with `"delta"`, so the first `"delta"` must be
        // where it is. One choice only: another delta, before or after, would
        // change what a match means. (The shared searchers: building one
        // costs more than the rest of learning.)
        debug_assert!(text_key.starts_with(b"\"delta\""));
        let delta = &Needles::shared().delta;
        let key = delta.find(data)?;
        if !data[key..].starts_with(text_key) || delta.find(&data[key + 1..]).is_some() {
            return None;
        }
        let start = key + text_key.len();
        let end = string_end(data, start)?;
        let rest = &data[end..];
        let (tail, obfuscated) = match memmem::rfind(rest, OBFUSCATION_KEY) {
            Some(at) => {
                let padding = &rest[at + OBFUSCATION_KEY.len()..];
                if !is_plain_string_then_brace(padding) {
                    return None;
                }
                (&rest[..at], true)
            }
            None => (rest, false),
        };
        Some(Self {
            prefix: data[..start].to_vec(),
            tail: tail.to_vec(),
            obfuscated,
            raw_head: Vec::new(),
            raw_tail: Vec::new(),
            raw_tail_word: 0,
            raw_tail_mask: 0,
        })
    }

    /// The template with the wire bytes [`ChunkTemplate::match_raw`] reads:
    /// its events carry the SSE event name `name` (empty: no `event:` line).
    /// Memory that cannot be had leaves raw reading off.
    pub(crate) fn for_event(mut self, name: &[u8]) -> Self {
        let head_len = if name.is_empty() {
            0
        } else {
            b"event: \n".len() + name.len()
        } + b"data: ".len()
            + self.prefix.len();
        if self.raw_head.try_reserve_exact(head_len).is_ok()
            && self.raw_tail.try_reserve_exact(self.tail.len() + 2).is_ok()
        {
            if !name.is_empty() {
                self.raw_head.extend_from_slice(b"event: ");
                self.raw_head.extend_from_slice(name);
                self.raw_head.push(b'\n');
            }
            self.raw_head.extend_from_slice(b"data: ");
            self.raw_head.extend_from_slice(&self.prefix);
            self.raw_tail.extend_from_slice(&self.tail);
            self.raw_tail.extend_from_slice(b"\n\n");
            let n = self.raw_tail.len();
            if n <= 8 {
                let mut w = [0; 8];
                w[..n].copy_from_slice(&self.raw_tail);
                self.raw_tail_word = u64::from_le_bytes(w);
                self.raw_tail_mask = u64::MAX >> (64 - 8 * n);
            }
        } else {
            self.raw_head = Vec::new();
        }
        self
    }

    /// Whether `bytes` begin with one whole event of this shape on the wire
    /// (see [`ChunkTemplate::for_event`]; LF only): its delta flag, its
    /// length (the blank line included) and where its text's closing quote
    /// is. Two comparisons instead of one per line and field.
    pub(crate) fn match_raw(&self, bytes: &[u8]) -> Option<(bool, usize, usize)> {
        if self.raw_head.is_empty() || !bytes.starts_with(&self.raw_head) {
            return None;
        }
        let start = self.raw_head.len();
        let end = string_end(bytes, start)?;
        let delta = end > start + 1;
        if !self.obfuscated {
            let tail = match bytes.get(end..end + 8) {
                Some(_) if self.raw_tail_mask != 0 => {
                    word_at(bytes, end) & self.raw_tail_mask == self.raw_tail_word
                }
                _ => bytes[end..].starts_with(&self.raw_tail),
            };
            return tail.then_some((delta, end + self.raw_tail.len(), end - 1));
        }
        let after = end + self.tail.len();
        if !bytes[end..].starts_with(&self.tail) {
            return None;
        }
        let quote = obfuscation_end(bytes, after)?;
        bytes[quote..]
            .starts_with(b"\"}\n\n")
            .then_some((delta, quote + 4, end - 1))
    }

    /// Where, in the wire bytes [`ChunkTemplate::match_raw`] read, the
    /// event's data and its text begin.
    pub(crate) fn raw_starts(&self) -> (usize, usize) {
        let text = self.raw_head.len();
        (text - self.prefix.len(), text)
    }

    /// Where the text of a chunk of this shape begins (in its data).
    pub(crate) fn text_start(&self) -> usize {
        self.prefix.len()
    }

    /// Learns from an Anthropic `content_block_delta` of any output kind.
    pub(crate) fn learn_anthropic(data: &[u8]) -> Option<Self> {
        ANTHROPIC_DELTAS
            .iter()
            .find_map(|key| Self::learn(data, key))
    }

    /// `Some(non_empty_content)` when `data` has exactly this shape.
    #[cfg(test)]
    pub(crate) fn matches(&self, data: &[u8]) -> Option<bool> {
        self.matches_text(data).map(|(delta, _)| delta)
    }

    /// [`ChunkTemplate::matches`], with where the text's closing quote is.
    pub(crate) fn matches_text(&self, data: &[u8]) -> Option<(bool, usize)> {
        self.match_len(data)
            .and_then(|(delta, end, text_end)| (end == data.len()).then_some((delta, text_end)))
    }

    /// Whether `bytes` begin with this shape: its delta flag, its length
    /// and where its text's closing quote is. What follows is not looked at
    /// (an SSE event's data may go on).
    pub(crate) fn match_len(&self, bytes: &[u8]) -> Option<(bool, usize, usize)> {
        if !bytes.starts_with(&self.prefix) {
            return None;
        }
        let start = self.prefix.len();
        let end = string_end(bytes, start)?;
        let after = end + self.tail.len();
        if !bytes[end..].starts_with(&self.tail) {
            return None;
        }
        let delta = end > start + 1;
        if !self.obfuscated {
            return Some((delta, after, end - 1));
        }
        let quote = obfuscation_end(bytes, after)?;
        (bytes[quote..].starts_with(b"\"}")).then_some((delta, quote + 2, end - 1))
    }
}

/// `,"obfuscation":"abc` at `after`: where its closing quote (or whatever
/// special byte ends the plain string) is.
fn obfuscation_end(bytes: &[u8], after: usize) -> Option<usize> {
    // `,"obfuscation":"abc"}`: a plain string, then the closing brace.
    let padding = after + OBFUSCATION_KEY.len();
    if !bytes[after..].starts_with(OBFUSCATION_KEY) {
        return None;
    }
    special(bytes, padding)
}

/// `abc"}` with no quote or backslash inside: the obfuscation padding and the
/// end of the chunk.
fn is_plain_string_then_brace(rest: &[u8]) -> bool {
    match memchr2(b'"', b'\\', rest) {
        Some(at) => rest[at] == b'"' && &rest[at..] == b"\"}",
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_ends_at_every_length_and_escape() {
        for len in 0..80 {
            for at in 0..=len {
                for b in [
                    b'"', b'\\', 0, 0x1f, 0x20, 0x7f, 0x80, 0xff, b'!', b'#', b'[', b']',
                ] {
                    let mut s = vec![b'a'; len];
                    if at < len {
                        s[at] = b;
                    }
                    let expected = s.iter().position(|&c| c == b'"' || c == b'\\' || c < 0x20);
                    assert_eq!(special(&s, 0), expected, "{len} {at} {b}");
                    // From further in, with matches before the start.
                    for from in 0..=len.min(12) {
                        let mut t = s.clone();
                        t[..from].fill(b'"');
                        let expected = t[from..]
                            .iter()
                            .position(|&c| c == b'"' || c == b'\\' || c < 0x20)
                            .map(|p| p + from);
                        assert_eq!(special(&t, from), expected, "{len} {at} {b} {from}");
                    }
                }
            }
        }
        assert_eq!(string_end(br#"a\"b\\"c"#, 0), Some(7));
        assert_eq!(string_end(br#"\u0022\"\\\"""#, 0), Some(13));
        assert_eq!(string_end(br#"abc\"#, 0), None);
        assert_eq!(string_end(br#"abc\\"#, 0), None);
        for invalid in [
            &br#"\x""#[..],
            br#"\u00""#,
            br#"\uZZZZ""#,
            b"a\x01b\"",
            b"\t\"",
        ] {
            assert_eq!(string_end(invalid, 0), None);
        }
        assert_eq!(string_end(br#"\/\b\f\n\r\t\uD83d""#, 0), Some(19));
        let long = format!("{}\\\"{}\"x", "é".repeat(40), "u".repeat(70));
        assert_eq!(string_end(long.as_bytes(), 0), Some(long.len() - 1));
    }

    const A: &[u8] = br#"{"id":"c","object":"chat.completion.chunk","model":"m","choices":[{"index":0,"delta":{"content":"Hi \"there\""},"logprobs":null,"finish_reason":null}],"usage":null,"obfuscation":"xYz"}"#;

    #[test]
    fn learns_and_matches_only_the_same_shape() {
        let t = ChunkTemplate::learn(A, CHAT_CONTENT).unwrap();
        assert_eq!(t.matches(A), Some(true));
        let other = br#"{"id":"c","object":"chat.completion.chunk","model":"m","choices":[{"index":0,"delta":{"content":""},"logprobs":null,"finish_reason":null}],"usage":null,"obfuscation":"q"}"#;
        assert_eq!(t.matches(other), Some(false));
        for different in [
            &br#"{"id":"c","object":"chat.completion.chunk","model":"m","choices":[{"index":0,"delta":{"content":"x"},"logprobs":null,"finish_reason":"stop"}],"usage":null,"obfuscation":"q"}"#[..],
            br#"{"id":"c","object":"chat.completion.chunk","model":"m","choices":[{"index":0,"delta":{"content":"x"},"logprobs":null,"finish_reason":null}],"usage":{"total_tokens":1},"obfuscation":"q"}"#,
            br#"{"id":"d","object":"chat.completion.chunk","model":"m","choices":[{"index":0,"delta":{"content":"x"},"logprobs":null,"finish_reason":null}],"usage":null,"obfuscation":"q"}"#,
            br#"{"id":"c","object":"chat.completion.chunk","model":"m","choices":[{"index":0,"delta":{"content":"x"},"logprobs":null,"finish_reason":null}],"usage":null,"obfuscation":"q","usage":{"a":1}}"#,
            br#"{"id":"c","object":"chat.completion.chunk","model":"m","choices":[{"index":0,"delta":{"content":"x"},"logprobs":null,"finish_reason":null}],"usage":null,"obfuscation":"q\"}"#,
            br#"{"id":"c","object":"chat.completion.chunk","model":"m","choices":[{"index":0,"delta":{"content":"unterminated"#,
        ] {
            assert_eq!(t.matches(different), None, "{}", String::from_utf8_lossy(different));
        }
    }

    #[test]
    fn no_obfuscation_and_refusals() {
        let plain =
            br#"{"id":"c","choices":[{"index":0,"delta":{"content":"a"},"finish_reason":null}]}"#;
        let t = ChunkTemplate::learn(plain, CHAT_CONTENT).unwrap();
        assert_eq!(t.matches(plain), Some(true));
        let longer =
            br#"{"id":"c","choices":[{"index":0,"delta":{"content":"a"},"finish_reason":null}]} "#;
        assert_eq!(t.matches(longer), None);
        let two_choices = br#"{"choices":[{"index":0,"delta":{"content":"a"}},{"index":1,"delta":{"content":"b"}}]}"#;
        assert!(ChunkTemplate::learn(two_choices, CHAT_CONTENT).is_none());
    }

    #[test]
    fn anthropic_text_deltas() {
        let a = br#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi \"x\""}}"#;
        let t = ChunkTemplate::learn(a, ANTHROPIC_TEXT).unwrap();
        assert_eq!(t.matches(a), Some(true));
        let empty =
            br#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":""}}"#;
        assert_eq!(t.matches(empty), Some(false));
        for different in [
            &br#"{"type":"content_block_delta","index":1,"delta":{"type":"text_delta","text":"x"}}"#[..],
            br#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"x"},"usage":{}}"#,
            br#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"x"}"#,
        ] {
            assert_eq!(t.matches(different), None);
        }
    }

    #[test]
    fn raw_events_whole_and_cut() {
        let data = br#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi"}}"#;
        let t = ChunkTemplate::learn(data, ANTHROPIC_TEXT)
            .unwrap()
            .for_event(b"content_block_delta");
        let mut event = b"event: content_block_delta\ndata: ".to_vec();
        event.extend_from_slice(data);
        event.extend_from_slice(b"\n\n");
        let len = event.len();
        // The tail read as a word (bytes follow) and as a slice (the end).
        let mut more = event.clone();
        more.extend_from_slice(b"event: ping\n");
        let text_end = len - b"}}\n\n".len() - 1;
        assert_eq!(t.match_raw(&more), Some((true, len, text_end)));
        assert_eq!(t.match_raw(&event), Some((true, len, text_end)));
        let (data_start, text_start) = t.raw_starts();
        assert_eq!(&event[data_start..len - 2], &data[..]);
        assert_eq!(&event[text_start..text_end], b"Hi");
        for cut in 0..len {
            assert_eq!(t.match_raw(&event[..cut]), None, "{cut}");
        }
        for (at, byte) in [
            (len - 1, b'\r'),
            (len - 2, b'\r'),
            (len - 3, b']'),
            (7, b'x'),
        ] {
            let mut wrong = more.clone();
            wrong[at] = byte;
            assert_eq!(t.match_raw(&wrong), None, "{at}");
        }
        // Another event name, or none, is not this shape.
        let other = ChunkTemplate::learn(data, ANTHROPIC_TEXT)
            .unwrap()
            .for_event(b"");
        assert_eq!(other.match_raw(&more), None);
        let mut bare = b"data: ".to_vec();
        bare.extend_from_slice(data);
        bare.extend_from_slice(b"\n\n");
        let bare_end = bare.len() - b"}}\n\n".len() - 1;
        assert_eq!(other.match_raw(&bare), Some((true, bare.len(), bare_end)));
    }
}
