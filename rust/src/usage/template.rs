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
}

/// The offset just past the closing quote of the JSON string whose content
/// starts at `start`, or None if it does not close.
pub(crate) fn string_end(data: &[u8], start: usize) -> Option<usize> {
    let mut at = start;
    loop {
        let found = at + memchr2(b'"', b'\\', data.get(at..)?)?;
        if data[found] == b'"' {
            return Some(found + 1);
        }
        at = found + 2;
    }
}

impl ChunkTemplate {
    /// Learns the template from a chunk the normal path read as a plain
    /// content chunk (no usage, no finish reason, no error); `text_key` is
    /// the bytes that open its text string.
    pub(crate) fn learn(data: &[u8], text_key: &[u8]) -> Option<Self> {
        let key = memmem::find(data, text_key)?;
        // One choice only: another delta, before or after, would change
        // what a match means.
        if memmem::find(data, b"\"delta\"") != Some(key)
            || memmem::find(&data[key + 1..], b"\"delta\"").is_some()
        {
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
        })
    }

    /// Learns from an Anthropic `content_block_delta` of any output kind.
    pub(crate) fn learn_anthropic(data: &[u8]) -> Option<Self> {
        ANTHROPIC_DELTAS
            .iter()
            .find_map(|key| Self::learn(data, key))
    }

    /// `Some(non_empty_content)` when `data` has exactly this shape.
    pub(crate) fn matches(&self, data: &[u8]) -> Option<bool> {
        let body = data.strip_prefix(self.prefix.as_slice())?;
        let end = string_end(body, 0)?;
        let rest = body[end..].strip_prefix(self.tail.as_slice())?;
        let shaped = if self.obfuscated {
            rest.strip_prefix(OBFUSCATION_KEY)
                .is_some_and(is_plain_string_then_brace)
        } else {
            rest.is_empty()
        };
        shaped.then_some(end > 1)
    }
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
}
