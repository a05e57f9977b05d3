//! Splits a byte stream into lines at CR, LF or CRLF, as SSE does, for
//! callers that want lines rather than events.

use memchr::memchr2;

use crate::buf;

/// Incremental line splitter; a CR ends its line at once, and an LF that
/// follows it in the next chunk is swallowed. A line longer than
/// `max_line_size` is discarded (and counted) wherever the chunks cut it,
/// so a stream that never ends its line cannot grow the buffer: no more
/// than the limit is ever copied, and a discard gives the memory back.
#[derive(Debug)]
pub struct LineSplitter {
    partial: Vec<u8>,
    pending_cr: bool,
    max_line_size: usize,
    /// The line being read went over the limit: drop it up to its end.
    skipping: bool,
    /// Lines discarded because memory for them could not be had (they are
    /// counted as discarded too).
    out_of_memory: u64,
}

impl Default for LineSplitter {
    fn default() -> Self {
        Self::new(crate::sse::DEFAULT_MAX_EVENT_SIZE)
    }
}

impl LineSplitter {
    #[must_use]
    pub fn new(max_line_size: usize) -> Self {
        Self {
            partial: Vec::new(),
            pending_cr: false,
            max_line_size,
            skipping: false,
            out_of_memory: 0,
        }
    }

    /// Lines discarded so far because memory for them could not be had.
    #[must_use]
    pub fn out_of_memory(&self) -> u64 {
        self.out_of_memory
    }

    /// Bytes of memory the splitter holds: at most the limit (plus a
    /// constant) after any `feed`.
    #[must_use]
    pub fn retained_capacity(&self) -> usize {
        self.partial.capacity()
    }

    #[must_use]
    pub fn max_line_size(&self) -> usize {
        self.max_line_size
    }

    /// Calls `on_line` for every line `chunk` completes (terminator removed);
    /// returns how many lines over the limit were discarded in this call.
    pub fn feed<F: FnMut(&[u8])>(&mut self, chunk: &[u8], mut on_line: F) -> u32 {
        let mut discarded = 0;
        let mut input = chunk;
        if self.pending_cr && !input.is_empty() {
            self.pending_cr = false;
            if input[0] == b'\n' {
                input = &input[1..];
            }
        }
        while let Some(end) = memchr2(b'\n', b'\r', input) {
            let part = &input[..end];
            if std::mem::take(&mut self.skipping) {
                // The end of a line already counted as discarded.
            } else if self.partial.len() + part.len() > self.max_line_size {
                discarded += 1;
                buf::release(&mut self.partial);
            } else if self.partial.is_empty() {
                on_line(part);
            } else if buf::extend(&mut self.partial, part, self.max_line_size).is_ok() {
                on_line(&self.partial);
                self.partial.clear();
            } else {
                discarded += 1;
                self.out_of_memory += 1;
                buf::release(&mut self.partial);
            }
            let rest = &input[end + 1..];
            input = match (input[end], rest.first()) {
                (b'\r', Some(b'\n')) => &rest[1..],
                (b'\r', None) => {
                    self.pending_cr = true;
                    rest
                }
                _ => rest,
            };
        }
        if !input.is_empty() && !self.skipping {
            // Checked before copying, so the buffer never passes the limit.
            if self.partial.len() + input.len() > self.max_line_size {
                discarded += 1;
                buf::release(&mut self.partial);
                self.skipping = true;
            } else if buf::extend(&mut self.partial, input, self.max_line_size).is_err() {
                discarded += 1;
                self.out_of_memory += 1;
                buf::release(&mut self.partial);
                self.skipping = true;
            }
        }
        discarded
    }

    /// End of input: returns the unterminated last line, if any.
    pub fn finish(&mut self) -> Option<Vec<u8>> {
        self.pending_cr = false;
        self.skipping = false;
        if self.partial.is_empty() {
            None
        } else {
            Some(std::mem::take(&mut self.partial))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(chunks: &[&[u8]]) -> Vec<Vec<u8>> {
        let mut s = LineSplitter::default();
        let mut out = Vec::new();
        for c in chunks {
            s.feed(c, |l| out.push(l.to_vec()));
        }
        out.extend(s.finish());
        out
    }

    #[test]
    fn all_terminators_and_splits() {
        let want: Vec<Vec<u8>> = vec![b"a".to_vec(), b"b".to_vec(), b"".to_vec(), b"c".to_vec()];
        assert_eq!(split(&[b"a\r\nb\r", b"\n\nc"]), want);
        assert_eq!(split(&[b"a\r", b"\nb\n\rc"]), want);
        assert_eq!(split(&[b"a\nb\r\rc"]), want);
        assert_eq!(
            split(&[b"line1\nli", b"ne2\n"]),
            vec![b"line1".to_vec(), b"line2".to_vec()]
        );
    }

    #[test]
    fn long_lines_are_discarded_however_cut() {
        let stream: &[u8] = b"ok\r\n0123456789\nabcd\rlast";
        for cut in 0..=stream.len() {
            for step in 1..=4 {
                let mut s = LineSplitter::new(4);
                let mut lines = Vec::new();
                let mut discarded = 0;
                let (head, tail) = stream.split_at(cut);
                for piece in head.chunks(step).chain(tail.chunks(step)) {
                    discarded += s.feed(piece, |l| lines.push(l.to_vec()));
                }
                lines.extend(s.finish());
                assert_eq!(discarded, 1, "cut {cut} step {step}");
                assert_eq!(
                    lines,
                    [&b"ok"[..], b"abcd", b"last"],
                    "cut {cut} step {step}"
                );
            }
        }
    }
}
