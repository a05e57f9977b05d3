//! Removes what a metering layer added to a Chat Completions stream when
//! it asked for usage on the caller's behalf (`stream_options.include_usage`):
//! the usage-only chunk, and the `"usage":null` member OpenAI then writes
//! into every other chunk. The caller receives byte for byte what it would
//! have received without the request being changed.
//!
//! Bytes are held back only until the end of the event block they belong
//! to, and at most `max_event_size` of them: a longer block is forwarded
//! unchanged as it arrives (and counted). Every other block is forwarded
//! unchanged, and so are all bytes when the stream is not SSE-shaped.

mod chunk;
#[cfg(test)]
mod tests;

use std::collections::TryReserveError;

use memchr::memchr2;

use crate::buf;
use crate::sse::DEFAULT_MAX_EVENT_SIZE;
use chunk::{judge, Verdict};

/// What becomes of an LF that follows a CR which ended the previous chunk
/// (it belongs to the CR's line).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lf {
    /// Held with the block being read.
    Hold,
    Forward,
    /// The CR ended a block that was dropped.
    Drop,
}

/// Where the stripper puts the bytes it forwards, in order. `put` cannot
/// fail: a sink that allocates makes its room before the feed.
pub trait Sink {
    fn put(&mut self, bytes: &[u8]);
}

/// Appends; `feed` reserves the room first, so nothing reallocates.
impl Sink for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

/// Counts the forwarded bytes, keeping none: the length of an output, so
/// that it can be written straight into a buffer of that size.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Count(pub usize);

impl Sink for Count {
    fn put(&mut self, bytes: &[u8]) {
        self.0 += bytes.len();
    }
}

/// Streaming filter: feed bytes, get the bytes to forward.
#[derive(Debug)]
pub struct UsageChunkStripper {
    max_event_size: usize,
    /// Raw bytes of the block being read (not yet forwarded); never more
    /// than `max_event_size`.
    block: Vec<u8>,
    /// No byte of the current line has been read: a line terminator here
    /// is a blank line, which ends the block.
    at_line_start: bool,
    /// The last byte seen was a CR that ended a line.
    after_cr: Option<Lf>,
    /// The block being read went over the limit: its bytes are forwarded as
    /// they come until it ends.
    passing: bool,
    /// Usage-only blocks removed so far.
    pub stripped: u64,
    /// `"usage":null` members removed so far.
    pub nulls_removed: u64,
    /// Blocks forwarded unchanged because they were longer than
    /// `max_event_size`.
    pub oversized: u64,
}

impl Default for UsageChunkStripper {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_EVENT_SIZE)
    }
}

impl UsageChunkStripper {
    /// A stripper that holds at most `max_event_size` bytes of a block.
    #[must_use]
    pub fn new(max_event_size: usize) -> Self {
        Self {
            max_event_size,
            block: Vec::new(),
            at_line_start: true,
            after_cr: None,
            passing: false,
            stripped: 0,
            nulls_removed: 0,
            oversized: 0,
        }
    }

    #[must_use]
    pub fn max_event_size(&self) -> usize {
        self.max_event_size
    }

    /// Bytes of memory the stripper holds (at most `max_event_size` plus a
    /// constant).
    #[must_use]
    pub fn retained_capacity(&self) -> usize {
        self.block.capacity()
    }

    /// Bytes held back right now.
    #[must_use]
    pub fn held(&self) -> usize {
        self.block.len()
    }

    /// A copy with the same state and counters, or an error when memory
    /// for the held bytes cannot be had.
    pub fn try_clone(&self) -> Result<Self, TryReserveError> {
        let mut block = Vec::new();
        block.try_reserve_exact(self.block.len())?;
        block.extend_from_slice(&self.block);
        Ok(Self {
            max_event_size: self.max_event_size,
            block,
            at_line_start: self.at_line_start,
            after_cr: self.after_cr,
            passing: self.passing,
            stripped: self.stripped,
            nulls_removed: self.nulls_removed,
            oversized: self.oversized,
        })
    }

    /// Appends to `out` the bytes of `chunk` (and of earlier held-back
    /// bytes) that can be forwarded now. Fails, changing nothing, only when
    /// memory for the output cannot be had.
    pub fn feed(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> Result<(), TryReserveError> {
        // Each held and each new byte is forwarded at most once: with this
        // room, nothing below allocates for the output.
        out.try_reserve(self.block.len() + chunk.len())?;
        self.feed_into(chunk, out);
        Ok(())
    }

    /// [`feed`](Self::feed) into any sink. What is forwarded is always the
    /// held bytes and `chunk`, in order, less what was stripped or is held
    /// back: when nothing was held before, an output as long as `chunk` is
    /// `chunk` itself.
    pub fn feed_into<S: Sink + ?Sized>(&mut self, chunk: &[u8], out: &mut S) {
        if chunk.is_empty() {
            // Nothing to forward, and a pending CR must wait for real bytes.
            return;
        }
        let mut input = chunk;
        if let Some(lf) = self.after_cr.take() {
            if input[0] == b'\n' {
                match lf {
                    Lf::Hold => self.take(b"\n", out),
                    Lf::Forward => out.put(b"\n"),
                    Lf::Drop => {}
                }
                input = &input[1..];
            }
        }
        while let Some(end) = memchr2(b'\n', b'\r', input) {
            let blank = self.at_line_start && end == 0;
            let is_cr = input[end] == b'\r';
            let crlf = is_cr && input.get(end + 1) == Some(&b'\n');
            let line_end = end + 1 + usize::from(crlf);
            let line = &input[..line_end];
            input = &input[line_end..];
            self.at_line_start = true;
            let lf = if blank {
                self.end_block(line, out)
            } else {
                self.take(line, out);
                if self.passing {
                    Lf::Forward
                } else {
                    Lf::Hold
                }
            };
            if is_cr && !crlf && input.is_empty() {
                self.after_cr = Some(lf);
            }
        }
        if !input.is_empty() {
            self.at_line_start = false;
            self.take(input, out);
        }
    }

    /// End of stream: the held-back bytes of an unfinished block, unchanged.
    pub fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), TryReserveError> {
        out.try_reserve(self.block.len())?;
        out.extend_from_slice(&self.block);
        buf::release(&mut self.block);
        self.at_line_start = true;
        self.after_cr = None;
        self.passing = false;
        Ok(())
    }

    /// Bytes of the block being read: held, or forwarded once the block is
    /// too long to hold (or memory to hold it cannot be had).
    fn take<S: Sink + ?Sized>(&mut self, bytes: &[u8], out: &mut S) {
        if self.passing {
            out.put(bytes);
        } else if self.block.len() + bytes.len() > self.max_event_size
            || buf::extend(&mut self.block, bytes, self.max_event_size).is_err()
        {
            self.pass(out);
            out.put(bytes);
        }
    }

    /// The block goes over the limit: what is held is forwarded, and so is
    /// the rest of the block as it comes.
    fn pass<S: Sink + ?Sized>(&mut self, out: &mut S) {
        out.put(&self.block);
        buf::release(&mut self.block);
        self.passing = true;
        self.oversized += 1;
    }

    /// A blank line (`line`, its terminator) ended the block: forward the
    /// block, cut or not, or drop it. Returns the fate of an LF that may
    /// still follow a CR.
    fn end_block<S: Sink + ?Sized>(&mut self, line: &[u8], out: &mut S) -> Lf {
        // The first terminator byte counts; a CRLF's LF may come in the next
        // chunk, so it must not decide anything.
        if !self.passing && self.block.len() + 1 > self.max_event_size {
            self.pass(out);
        }
        if std::mem::take(&mut self.passing) {
            out.put(line);
            return Lf::Forward;
        }
        let lf = match judge(&self.block) {
            Verdict::Keep => {
                out.put(&self.block);
                Lf::Forward
            }
            Verdict::Drop => {
                self.stripped += 1;
                Lf::Drop
            }
            Verdict::Cut(range) => {
                self.nulls_removed += 1;
                out.put(&self.block[..range.start]);
                out.put(&self.block[range.end..]);
                Lf::Forward
            }
        };
        if lf == Lf::Forward {
            out.put(line);
        }
        self.block.clear();
        lf
    }
}
