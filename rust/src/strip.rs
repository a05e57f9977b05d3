//! Removes the usage chunk that a metering layer asked for on the caller's
//! behalf (`stream_options.include_usage`), so the caller receives byte for
//! byte what it would have received without the request being changed.
//!
//! Bytes are held back only until the end of the event block they belong to;
//! every block but the usage chunk is forwarded unchanged, and so are all
//! bytes when the stream is not SSE-shaped.

use jiter::{Jiter, Peek};
use memchr::memchr2;

/// Streaming filter: feed bytes, get the bytes to forward.
#[derive(Debug, Default)]
pub struct UsageChunkStripper {
    /// Raw bytes of the block being read (not yet forwarded).
    block: Vec<u8>,
    /// Where the current (unterminated) line starts inside `block`.
    line_start: usize,
    /// The last byte seen was a CR that ended a line; a following LF belongs
    /// to it. `Some(kept)` when that CR ended a block that was already
    /// decided: the LF follows the block's fate.
    after_cr: Option<Option<bool>>,
    /// Blocks removed so far.
    pub stripped: u64,
}

impl UsageChunkStripper {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Returns the bytes of `chunk` (and of earlier held-back bytes) that
    /// can be forwarded now.
    pub fn feed(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        let mut input = chunk;
        if input.is_empty() {
            // Nothing to forward, and a pending CR must wait for real bytes.
            return;
        }
        if let Some(decided) = self.after_cr.take() {
            if input.first() == Some(&b'\n') {
                match decided {
                    Some(true) => out.push(b'\n'),
                    Some(false) => {}
                    None => self.block.push(b'\n'),
                }
                input = &input[1..];
                if decided.is_none() {
                    self.line_start = self.block.len();
                }
            }
        }
        while let Some(end) = memchr2(b'\n', b'\r', input) {
            let blank = self.block.len() == self.line_start && end == 0;
            self.block.extend_from_slice(&input[..=end]);
            let mut rest = &input[end + 1..];
            let is_cr = input[end] == b'\r';
            let mut crlf_done = !is_cr;
            if is_cr && rest.first() == Some(&b'\n') {
                self.block.push(b'\n');
                rest = &rest[1..];
                crlf_done = true;
            }
            self.line_start = self.block.len();
            if blank {
                let kept = self.decide(out);
                if !crlf_done && rest.is_empty() {
                    self.after_cr = Some(Some(kept));
                }
            } else if !crlf_done && rest.is_empty() {
                self.after_cr = Some(None);
            }
            input = rest;
        }
        self.block.extend_from_slice(input);
    }

    /// End of stream: the held-back bytes of an unfinished block, unchanged.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        out.append(&mut self.block);
        self.line_start = 0;
        self.after_cr = None;
    }

    /// A block ended: forward it unless it is the usage-only chunk.
    fn decide(&mut self, out: &mut Vec<u8>) -> bool {
        let kept = !is_usage_only_chunk(&block_data(&self.block));
        if kept {
            out.extend_from_slice(&self.block);
        } else {
            self.stripped += 1;
        }
        self.block.clear();
        self.line_start = 0;
        kept
    }
}

/// The `data` of a raw event block (field lines joined with LF).
fn block_data(block: &[u8]) -> Vec<u8> {
    let mut data = Vec::new();
    for line in block.split(|&b| b == b'\n' || b == b'\r') {
        let value = match line.strip_prefix(b"data") {
            Some([]) => &[][..],
            Some([b':', rest @ ..]) => rest.strip_prefix(b" ").unwrap_or(rest),
            _ => continue,
        };
        if !data.is_empty() {
            data.push(b'\n');
        }
        data.extend_from_slice(value);
    }
    data
}

/// `{"choices": [], "usage": {...}, ...}`: the chunk `include_usage` adds.
fn is_usage_only_chunk(data: &[u8]) -> bool {
    #[derive(PartialEq)]
    enum Key {
        Choices,
        Usage,
        Other,
    }
    let classify = |k: &str| match k {
        "choices" => Key::Choices,
        "usage" => Key::Usage,
        _ => Key::Other,
    };
    let mut jiter = Jiter::new(data);
    let (mut empty_choices, mut usage) = (false, false);
    let mut key = match jiter.next_object() {
        Ok(k) => k.map(classify),
        Err(_) => return false,
    };
    while let Some(k) = key {
        let ok = match k {
            Key::Choices => match jiter.next_array() {
                Ok(None) => {
                    empty_choices = true;
                    true
                }
                _ => return false,
            },
            Key::Usage => {
                usage = matches!(jiter.peek(), Ok(Peek::Object));
                jiter.next_skip().is_ok()
            }
            Key::Other => jiter.next_skip().is_ok(),
        };
        if !ok {
            return false;
        }
        key = match jiter.next_key() {
            Ok(k) => k.map(classify),
            Err(_) => return false,
        };
    }
    // Only a whole JSON object: trailing bytes make it something else.
    empty_choices && usage && jiter.finish().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &[u8] = b"data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}],\"usage\":null}\r\n\r\n: keep-alive\n\ndata: {\"choices\":[],\"usage\":{\"total_tokens\":3}}\r\n\r\ndata: [DONE]\r\n\r\n";

    fn expected() -> Vec<u8> {
        let drop: &[u8] = b"data: {\"choices\":[],\"usage\":{\"total_tokens\":3}}\r\n\r\n";
        let at = STREAM.windows(drop.len()).position(|w| w == drop).unwrap();
        [&STREAM[..at], &STREAM[at + drop.len()..]].concat()
    }

    fn run(chunks: &[&[u8]]) -> (Vec<u8>, u64) {
        let mut s = UsageChunkStripper::new();
        let mut out = Vec::new();
        for c in chunks {
            s.feed(c, &mut out);
        }
        s.finish(&mut out);
        (out, s.stripped)
    }

    #[test]
    fn strips_only_the_usage_chunk_under_every_split() {
        assert_eq!(run(&[STREAM]), (expected(), 1));
        for i in 0..=STREAM.len() {
            assert_eq!(
                run(&[&STREAM[..i], &STREAM[i..]]).0,
                expected(),
                "split {i}"
            );
        }
        let bytewise: Vec<&[u8]> = STREAM.chunks(1).collect();
        assert_eq!(run(&bytewise).0, expected());
    }

    /// Regression (found by the `framing` fuzz target): an empty chunk
    /// between the CR and the LF of a CRLF dropped the pending CR, so the
    /// LF was read as a blank line of its own and forwarded after the
    /// stripped block (or ended a block early).
    #[test]
    fn empty_chunks_change_nothing() {
        for i in 0..=STREAM.len() {
            let chunks = [&STREAM[..i], b"", b"", &STREAM[i..], b""];
            assert_eq!(run(&chunks), (expected(), 1), "split {i}");
        }
        let partial: &[u8] = b"data: x\r";
        assert_eq!(
            run(&[partial, b"", b"\ndata: y\r\n"]).0,
            b"data: x\r\ndata: y\r\n"
        );
    }

    #[test]
    fn only_a_whole_json_object_is_a_usage_chunk() {
        let trailing: &[u8] = b"data: {\"choices\":[],\"usage\":{\"a\":1}} x\n\n";
        assert_eq!(run(&[trailing]), (trailing.to_vec(), 0));
        let spaced: &[u8] = b"data: {\"choices\":[],\"usage\":{\"a\":1}} \n\ndata: y\n\n";
        assert_eq!(run(&[spaced]), (b"data: y\n\n".to_vec(), 1));
    }

    #[test]
    fn keeps_everything_else() {
        let other: &[u8] = b"data: {\"choices\":[],\"prompt_filter_results\":[]}\n\ndata: {\"choices\":[{}],\"usage\":{\"t\":1}}\n\ndata: {\"choices\":[],\"usage\":null}\n\ndata: nope\n\npartial";
        assert_eq!(run(&[other]), (other.to_vec(), 0));
        let cr_only: &[u8] = b"data: {\"choices\":[],\"usage\":{}}\r\rdata: x\r\r";
        for i in 0..=cr_only.len() {
            assert_eq!(
                run(&[&cr_only[..i], &cr_only[i..]]).0,
                b"data: x\r\r",
                "split {i}"
            );
        }
    }
}
