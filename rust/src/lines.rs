//! Splits a byte stream into lines at CR, LF or CRLF, as SSE does, for
//! callers that want lines rather than events.

use memchr::memchr2;

/// Incremental line splitter; a CR ends its line at once, and an LF that
/// follows it in the next chunk is swallowed.
#[derive(Debug, Default)]
pub struct LineSplitter {
    partial: Vec<u8>,
    pending_cr: bool,
}

impl LineSplitter {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Calls `on_line` for every line `chunk` completes (terminator removed).
    pub fn feed<F: FnMut(&[u8])>(&mut self, chunk: &[u8], mut on_line: F) {
        let mut input = chunk;
        if self.pending_cr && !input.is_empty() {
            self.pending_cr = false;
            if input[0] == b'\n' {
                input = &input[1..];
            }
        }
        while let Some(end) = memchr2(b'\n', b'\r', input) {
            if self.partial.is_empty() {
                on_line(&input[..end]);
            } else {
                self.partial.extend_from_slice(&input[..end]);
                on_line(&self.partial);
                self.partial.clear();
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
        self.partial.extend_from_slice(input);
    }

    /// End of input: returns the unterminated last line, if any.
    pub fn finish(&mut self) -> Option<Vec<u8>> {
        self.pending_cr = false;
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
        let mut s = LineSplitter::new();
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
}
