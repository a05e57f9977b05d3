//! HTTP/1.1 message framing of an upstream's answer (RFC 9112 §6-7): where
//! a header section ends, how its body is delimited, and the body's
//! transfer decoding (chunked, `Content-Length` or to the close),
//! incremental over reads of any size and bounded in what it buffers
//! (nothing: it keeps a few counters; body bytes are handed on as slices of
//! the read).

#[cfg(test)]
mod tests;

/// Longest chunk-size line accepted, extensions included (bytes).
pub const MAX_CHUNK_LINE: usize = 4096;

/// Where the header section in `buf` ends: the index just past its blank
/// line (`CRLF CRLF`, or a bare `LF` in either place), searching from
/// `from` (a resumed search: give the previous length less 3). None when no
/// blank line is there yet.
#[must_use]
pub fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    let mut at = from.min(buf.len());
    while let Some(i) = memchr::memchr(b'\n', &buf[at..]) {
        let lf = at + i;
        // The line this LF ends is empty: LF LF, or LF CR LF.
        if lf >= 1 && buf[lf - 1] == b'\n'
            || lf >= 2 && buf[lf - 1] == b'\r' && buf[lf - 2] == b'\n'
        {
            return Some(lf + 1);
        }
        at = lf + 1;
    }
    None
}

/// How an answer's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// The chunked transfer coding.
    Chunked,
    /// Exactly this many bytes (`Content-Length`, or 0 for an answer that
    /// has no body).
    Length(u64),
    /// Everything until the upstream closes the connection.
    Close,
}

/// A body the decoder cannot read: the connection carries nothing more.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyError(pub &'static str);

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for BodyError {}

impl Framing {
    /// The framing of an answer from its `Transfer-Encoding` and
    /// `Content-Length` field values (repeated fields joined with commas);
    /// `bodyless` for an answer that has none whatever its fields say (to
    /// `HEAD`, 204, 304). A transfer coding that does not end in `chunked`
    /// is read to the close (§6.3); a `Content-Length` beside a transfer
    /// coding is ignored.
    ///
    /// # Errors
    /// A `Content-Length` that is not one decimal number (repeats of the
    /// same number allowed), or past `u64`.
    pub fn of(
        transfer_encoding: Option<&[u8]>,
        content_length: Option<&[u8]>,
        bodyless: bool,
    ) -> Result<Self, BodyError> {
        if bodyless {
            return Ok(Self::Length(0));
        }
        if let Some(te) = transfer_encoding {
            let last = te.rsplit(|&b| b == b',').next().unwrap_or_default();
            return Ok(if last.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                Self::Chunked
            } else {
                Self::Close
            });
        }
        let Some(cl) = content_length else {
            return Ok(Self::Close);
        };
        let mut value: Option<u64> = None;
        for part in cl.split(|&b| b == b',') {
            let part = part.trim_ascii();
            if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
                return Err(BodyError("the Content-Length is not a number"));
            }
            let n = part.iter().try_fold(0u64, |n, &d| {
                n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
            });
            let n = n.ok_or(BodyError("the Content-Length is too large"))?;
            if value.is_some_and(|v| v != n) {
                return Err(BodyError("the Content-Length fields disagree"));
            }
            value = Some(n);
        }
        Ok(Self::Length(value.unwrap_or_default()))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// In a chunk-size line: `sized` once a hex digit was read, `ext` in
    /// the white space or extension after the size.
    Size {
        sized: bool,
        ext: bool,
    },
    /// After the size line's CR.
    SizeLf,
    /// In a chunk's data, this many bytes left.
    Data(u64),
    /// After a chunk's data: its CR, then its LF.
    DataCr,
    DataLf,
    /// In the trailer section: at a line's start, in a line, after a CR.
    TrailerStart,
    Trailer,
    TrailerLf {
        empty: bool,
    },
    /// A `Content-Length` body, this many bytes left.
    Length(u64),
    /// Read to the close.
    Close,
    Done,
    /// Refused, for good: every later byte is too.
    Failed(&'static str),
}

/// Incremental transfer decoding of one answer's body.
#[derive(Debug, Clone)]
pub struct BodyDecoder {
    state: State,
    /// The chunk size being read, or the bytes of the current line.
    size: u64,
    line: usize,
    /// Trailer section bytes so far, and their bound.
    trailers: usize,
    max_trailers: usize,
}

impl BodyDecoder {
    /// A decoder of a body framed as `framing`, with at most
    /// `max_trailers` bytes of trailer fields (a chunked body's).
    #[must_use]
    pub fn new(framing: Framing, max_trailers: usize) -> Self {
        let state = match framing {
            Framing::Chunked => State::Size {
                sized: false,
                ext: false,
            },
            Framing::Length(0) => State::Done,
            Framing::Length(n) => State::Length(n),
            Framing::Close => State::Close,
        };
        Self {
            state,
            size: 0,
            line: 0,
            trailers: 0,
            max_trailers,
        }
    }

    /// The body has ended (the bytes after it, if any, are not the body's).
    #[must_use]
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Decodes `input`, handing each run of body bytes to `emit` as a slice
    /// of it; `emit` returns false to stop there. Returns how many bytes of
    /// `input` were read: all of them, unless the body ended inside it (the
    /// rest lies past the answer) or `emit` stopped.
    ///
    /// # Errors
    /// Bytes that break the chunked framing, or a chunk-size line or
    /// trailer section past its bound; the decoder then stays failed.
    pub fn decode<'a>(
        &mut self,
        input: &'a [u8],
        mut emit: impl FnMut(&'a [u8]) -> bool,
    ) -> Result<usize, BodyError> {
        let mut i = 0;
        while i < input.len() {
            match self.state {
                State::Done => return Ok(i),
                State::Failed(why) => return Err(BodyError(why)),
                State::Close => {
                    emit(&input[i..]);
                    return Ok(input.len());
                }
                State::Length(left) | State::Data(left) => {
                    let take =
                        usize::try_from(left).map_or(input.len() - i, |l| l.min(input.len() - i));
                    let n = take as u64;
                    let data = matches!(self.state, State::Data(_));
                    self.state = match (n == left, data) {
                        (true, false) => State::Done,
                        (true, true) => State::DataCr,
                        (false, false) => State::Length(left - n),
                        (false, true) => State::Data(left - n),
                    };
                    let go = emit(&input[i..i + take]);
                    i += take;
                    if !go {
                        return Ok(i);
                    }
                }
                _ => {
                    self.framing_byte(input[i])?;
                    i += 1;
                }
            }
        }
        Ok(i)
    }

    /// The upstream closed the connection: fine when that ends the body.
    ///
    /// # Errors
    /// The body was not whole.
    pub fn eof(&self) -> Result<(), BodyError> {
        match self.state {
            State::Done | State::Close => Ok(()),
            State::Failed(why) => Err(BodyError(why)),
            _ => Err(BodyError("the upstream closed the connection mid-body")),
        }
    }

    /// One byte of chunked framing (a size line, a data CRLF, a trailer).
    fn framing_byte(&mut self, b: u8) -> Result<(), BodyError> {
        self.state = match self.state {
            State::Size { sized, ext } => {
                self.line += 1;
                if self.line > MAX_CHUNK_LINE {
                    return self.fail("a chunk-size line is too long");
                }
                match (b, ext) {
                    (b'\r', _) if sized => State::SizeLf,
                    (b'\n', _) => return self.fail("a chunk-size line does not end in CRLF"),
                    (_, true) if b == b'\t' || (b' '..0x7f).contains(&b) || b >= 0x80 => {
                        State::Size { sized, ext }
                    }
                    (b';' | b' ' | b'\t', false) if sized => State::Size { sized, ext: true },
                    (_, false) if b.is_ascii_hexdigit() => {
                        if self.size > u64::MAX >> 4 {
                            return self.fail("a chunk size is too large");
                        }
                        let d = (b as char).to_digit(16).map_or(0, u64::from);
                        self.size = self.size << 4 | d;
                        State::Size { sized: true, ext }
                    }
                    _ => return self.fail("a chunk-size line is malformed"),
                }
            }
            State::SizeLf => {
                if b != b'\n' {
                    return self.fail("a chunk-size line does not end in CRLF");
                }
                self.line = 0;
                let size = std::mem::take(&mut self.size);
                if size == 0 {
                    State::TrailerStart
                } else {
                    State::Data(size)
                }
            }
            State::DataCr if b == b'\r' => State::DataLf,
            State::DataLf if b == b'\n' => State::Size {
                sized: false,
                ext: false,
            },
            State::DataCr | State::DataLf => {
                return self.fail("a chunk's data does not end in CRLF")
            }
            State::TrailerStart | State::Trailer => {
                let empty = self.state == State::TrailerStart;
                // The section's closing CRLF is not counted: no trailers fit in 0.
                if !(empty && b == b'\r') {
                    self.trailers += 1;
                    if self.trailers > self.max_trailers {
                        return self.fail("the trailer section is too large");
                    }
                }
                match b {
                    b'\r' => State::TrailerLf { empty },
                    b'\n' => return self.fail("a trailer line does not end in CRLF"),
                    _ => State::Trailer,
                }
            }
            State::TrailerLf { empty } => {
                if b != b'\n' {
                    return self.fail("a trailer line does not end in CRLF");
                }
                if empty {
                    State::Done
                } else {
                    State::TrailerStart
                }
            }
            State::Data(_) | State::Length(_) | State::Close | State::Done | State::Failed(_) => {
                self.state
            }
        };
        Ok(())
    }

    fn fail(&mut self, why: &'static str) -> Result<(), BodyError> {
        self.state = State::Failed(why);
        Err(BodyError(why))
    }
}
