//! Incremental Server-Sent Events framing, as the WHATWG HTML standard
//! ("Parsing an event stream", "Interpreting an event stream") defines it.
//!
//! The decoder works on raw bytes cut anywhere. Line terminators (CR, LF,
//! CRLF), the colon and the field names are ASCII, so framing on bytes and
//! decoding each field as UTF-8 afterwards gives the same result as decoding
//! the whole stream first. Events are handed to a callback as borrowed slices,
//! so a consumer that only inspects them allocates nothing per event.

use memchr::{memchr, memchr2};

use crate::buf;

const BOM: &[u8; 3] = b"\xEF\xBB\xBF";

/// Longest event type remembered to recognise a repeated `event:` line.
const KNOWN_EVENT_MAX: usize = 48;

/// Default limit on the bytes one event may buffer (16 MiB).
pub const DEFAULT_MAX_EVENT_SIZE: usize = 16 * 1024 * 1024;

/// Options of a [`Decoder`].
#[derive(Clone, Debug)]
pub struct DecoderConfig {
    /// Bytes one event may hold (its data and type buffers plus the line
    /// being read, whatever the field, comments included) before it is
    /// discarded and reported as oversized. The check does not depend on how
    /// the stream is cut into chunks.
    pub max_event_size: usize,
    /// Dispatch a block that set a valid `retry` but no data as an event with
    /// empty data. Browsers dispatch nothing there; httpx-sse yields an event.
    pub retry_only_events: bool,
}

impl Default for DecoderConfig {
    fn default() -> Self {
        Self {
            max_event_size: DEFAULT_MAX_EVENT_SIZE,
            retry_only_events: false,
        }
    }
}

/// One dispatched event, borrowed from the decoder's buffers.
///
/// `event` is empty when the stream gave no type (the default type is
/// `message`). Fields are raw bytes: decode them as UTF-8 with replacement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventRef<'a> {
    pub event: &'a [u8],
    pub data: &'a [u8],
    pub id: &'a [u8],
    pub retry: Option<u64>,
}

/// What [`Decoder::feed_each`] hands its callback, in stream order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dispatch<'a> {
    /// An event was dispatched.
    Event(EventRef<'a>),
    /// An event exceeded `max_event_size` and is being discarded (once per
    /// event, at the point of the stream where it crossed the limit).
    Oversized,
}

/// What one `feed` call noticed besides the events it dispatched.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FeedStatus {
    /// Events discarded in this call because they exceeded `max_event_size`
    /// (those counted in `out_of_memory` included).
    pub oversized_events: u32,
    /// Events discarded because memory to buffer them could not be had
    /// (they are reported like oversized events, and counted here too).
    pub out_of_memory: u32,
}

/// What `finish` found at the end of the stream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FinishStatus {
    /// An event had begun but its blank line never came, so it was dropped.
    pub dropped_partial: bool,
    /// The last event lacked its blank line and was dispatched anyway (only
    /// [`Decoder::finish_flushing`] does this).
    pub flushed_partial: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Bom {
    /// This many bytes of a leading BOM have been matched so far.
    Matching(u8),
    Done,
}

/// Incremental SSE decoder: feed it byte chunks, get events back.
#[derive(Debug)]
pub struct Decoder {
    config: DecoderConfig,
    bom: Bom,
    /// The previous chunk ended with CR: an LF at the start of the next chunk
    /// belongs to that CR.
    pending_cr: bool,
    /// Bytes of an unterminated line carried over from earlier chunks.
    line: Vec<u8>,
    /// The rest of the current line is dropped (its event was oversized).
    skip_line: bool,
    /// Fields are ignored until the next blank line (the event was oversized).
    skip_event: bool,
    /// Fields of the current block have been seen.
    block_started: bool,
    data: Vec<u8>,
    event_type: Vec<u8>,
    last_id: Vec<u8>,
    retry: Option<u64>,
    /// The value of the last `event:` line (when short), so that the same
    /// line again is read without a search (`known_len` bytes of it).
    known_event: [u8; KNOWN_EVENT_MAX],
    known_len: u8,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new(DecoderConfig::default())
    }
}

impl Decoder {
    #[must_use]
    pub fn new(config: DecoderConfig) -> Self {
        Self {
            config,
            bom: Bom::Matching(0),
            pending_cr: false,
            line: Vec::new(),
            skip_line: false,
            skip_event: false,
            block_started: false,
            data: Vec::new(),
            event_type: Vec::new(),
            last_id: Vec::new(),
            retry: None,
            known_event: [0; KNOWN_EVENT_MAX],
            known_len: 0,
        }
    }

    #[must_use]
    pub fn config(&self) -> &DecoderConfig {
        &self.config
    }

    /// Nothing of an event is buffered or pending (the byte order mark
    /// included): the next byte fed starts a new line of a new event, so a
    /// caller may read a simple event itself instead of feeding it.
    #[must_use]
    pub fn at_event_boundary(&self) -> bool {
        matches!(self.bom, Bom::Done)
            && !self.pending_cr
            && !self.skip_line
            && !self.skip_event
            && !self.block_started
            && self.line.is_empty()
            && self.data.is_empty()
            && self.event_type.is_empty()
            && self.retry.is_none()
    }

    /// The last event ID string (persists across events, as the spec says).
    #[must_use]
    pub fn last_event_id(&self) -> &[u8] {
        &self.last_id
    }

    /// Decode `chunk`, calling `on_event` for every event it completes.
    pub fn feed<F: FnMut(EventRef<'_>)>(&mut self, chunk: &[u8], mut on_event: F) -> FeedStatus {
        self.feed_each(chunk, |d| {
            if let Dispatch::Event(e) = d {
                on_event(e);
            }
        })
    }

    /// Like [`Decoder::feed`], and also tells `on` where each oversized
    /// event was discarded, in order with the events.
    pub fn feed_each<F: FnMut(Dispatch<'_>)>(&mut self, chunk: &[u8], mut on: F) -> FeedStatus {
        let mut status = FeedStatus::default();
        let on_event = &mut on;
        let mut input = self.strip_bom(chunk);
        if self.pending_cr && !input.is_empty() {
            self.pending_cr = false;
            if input[0] == b'\n' {
                input = &input[1..];
            }
        }
        // The value of a lone `data:` line still inside `chunk`: if its blank
        // line follows in the same chunk, the event is dispatched without
        // copying it (the common one-line event).
        let mut borrowed: Option<&[u8]> = None;
        let line_end = |bytes: &[u8]| {
            // The blank line that ends each event needs no search.
            if bytes.first() == Some(&b'\n') {
                return Some(0);
            }
            // One two-byte search per line is cheaper than checking each
            // chunk for CR first and searching for LF alone.
            memchr2(b'\n', b'\r', bytes)
        };
        loop {
            // (`e`: the one check a stream without event lines pays.)
            if borrowed.is_none() && input.first() == Some(&b'e') {
                if let Some(len) = self.repeated_event_line(input) {
                    input = &input[len..];
                    continue;
                }
            }
            let Some(end) = line_end(input) else {
                break;
            };
            let part = &input[..end];
            if self.skip_line {
                self.skip_line = false;
            } else if self.line.is_empty() {
                if let Some(data) = borrowed.take() {
                    if part.is_empty() {
                        self.dispatch_borrowed(data, on_event);
                    } else if self.append_data(data).is_ok() {
                        self.process_line(part, on_event, &mut status);
                    } else {
                        self.out_of_memory(&mut status, on_event);
                    }
                } else if let Some(value) = self.borrowable_data(part) {
                    self.block_started = true;
                    borrowed = Some(value);
                } else {
                    self.process_line(part, on_event, &mut status);
                }
            } else if self.skip_event {
                // The line is ignored (`process_line` would): no copy.
                self.line.clear();
            } else if self.buffered() + part.len() > self.config.max_event_size {
                // The same check `process_line` makes, before copying `part`.
                self.overflow(&mut status, on_event);
            } else {
                let mut line = std::mem::take(&mut self.line);
                if buf::extend(&mut line, part, self.config.max_event_size).is_ok() {
                    self.process_line(&line, on_event, &mut status);
                    if self.skip_event {
                        buf::release(&mut line);
                    }
                    line.clear();
                    self.line = line;
                } else {
                    self.out_of_memory(&mut status, on_event);
                }
            }
            let rest = &input[end + 1..];
            input = if input[end] == b'\r' {
                match rest.first() {
                    Some(b'\n') => &rest[1..],
                    Some(_) => rest,
                    None => {
                        self.pending_cr = true;
                        rest
                    }
                }
            } else {
                rest
            };
        }
        if let Some(data) = borrowed {
            if self.append_data(data).is_err() {
                self.out_of_memory(&mut status, on_event);
            }
        }
        if !input.is_empty() && !self.skip_line {
            // Checked before copying: an unterminated line in one huge chunk
            // must not be buffered beyond the limit.
            if self.buffered() + input.len() > self.config.max_event_size {
                self.skip_line = true;
                self.overflow(&mut status, on_event);
            } else if buf::extend(&mut self.line, input, self.config.max_event_size).is_err() {
                self.skip_line = true;
                self.out_of_memory(&mut status, on_event);
            }
        }
        self.trim();
        status
    }

    /// An `event: <type>\n` line repeating the type of the last `event:` line
    /// (Anthropic and Responses streams name every event) at the start of
    /// `input`: it is read as `process_line` would read it, without a search
    /// for its end. Returns the bytes it took, LF included.
    fn repeated_event_line(&mut self, input: &[u8]) -> Option<usize> {
        let n = usize::from(self.known_len);
        let rest = input.strip_prefix(b"event: ")?;
        if rest.get(n) != Some(&b'\n') || rest[..n] != self.known_event[..n] {
            return None;
        }
        let name = &rest[..n];
        let line = b"event: ".len() + n;
        // Anything `process_line` would treat otherwise takes the slow way.
        if self.skip_line
            || self.skip_event
            || !self.line.is_empty()
            || line + self.data.len() + self.event_type.len() > self.config.max_event_size
        {
            return None;
        }
        self.event_type.clear();
        buf::extend(&mut self.event_type, name, self.config.max_event_size).ok()?;
        self.block_started = true;
        Some(line + 1)
    }

    /// Bytes of memory the decoder's buffers hold (their capacity): never
    /// more than twice `max_event_size` plus a constant after a `feed`.
    #[must_use]
    pub fn retained_capacity(&self) -> usize {
        self.line.capacity()
            + self.data.capacity()
            + self.event_type.capacity()
            + self.last_id.capacity()
    }

    /// Buffers emptied by earlier events keep their capacity (they are
    /// reused), each within the limit; when together they hold more than
    /// twice the limit they are cut back to what they contain, which the
    /// limit bounds (line, data and type together, and the last id).
    fn trim(&mut self) {
        let budget = self
            .config
            .max_event_size
            .saturating_mul(2)
            .saturating_add(64);
        if self.retained_capacity() > budget {
            for b in [
                &mut self.line,
                &mut self.data,
                &mut self.event_type,
                &mut self.last_id,
            ] {
                b.shrink_to_fit();
            }
        }
    }

    /// End of stream: drop any unterminated event and reset for a new stream.
    pub fn finish(&mut self) -> FinishStatus {
        let dropped_partial = self.block_started
            || self.skip_event
            || self.skip_line
            || !self.line.is_empty()
            || matches!(self.bom, Bom::Matching(n) if n > 0);
        let config = self.config.clone();
        *self = Self::new(config);
        FinishStatus {
            dropped_partial,
            flushed_partial: false,
        }
    }

    /// End of stream for a consumer that would rather read a last event
    /// whose blank line never came (a server that closed right after it)
    /// than drop it: the unterminated line and block are dispatched, then the
    /// decoder resets. Browsers discard such an event; [`Decoder::finish`]
    /// does too.
    pub fn finish_flushing<F: FnMut(EventRef<'_>)>(&mut self, mut on_event: F) -> FinishStatus {
        self.finish_flushing_each(|d| {
            if let Dispatch::Event(e) = d {
                on_event(e);
            }
        })
    }

    /// Like [`Decoder::finish_flushing`], also reporting an oversized last
    /// event.
    pub fn finish_flushing_each<F: FnMut(Dispatch<'_>)>(&mut self, mut on: F) -> FinishStatus {
        let mut status = FeedStatus::default();
        if !self.skip_line && !self.line.is_empty() {
            let line = std::mem::take(&mut self.line);
            self.process_line(&line, &mut on, &mut status);
        }
        let flushed = !self.data.is_empty() && !self.skip_event;
        if self.block_started {
            self.dispatch(&mut on);
        }
        let mut finished = self.finish();
        finished.flushed_partial = flushed;
        finished.dropped_partial &= !flushed;
        finished
    }

    /// Strips one leading UTF-8 BOM, even when it is split across chunks.
    fn strip_bom<'a>(&mut self, chunk: &'a [u8]) -> &'a [u8] {
        let Bom::Matching(mut matched) = self.bom else {
            return chunk;
        };
        let mut input = chunk;
        while (matched as usize) < BOM.len() {
            match input.first() {
                None => {
                    self.bom = Bom::Matching(matched);
                    return input;
                }
                Some(&b) if b == BOM[matched as usize] => {
                    matched += 1;
                    input = &input[1..];
                }
                Some(_) => {
                    // Not a BOM after all: the bytes matched so far are content
                    // (at most two bytes, checked with the rest of the line).
                    self.line.extend_from_slice(&BOM[..matched as usize]);
                    break;
                }
            }
        }
        self.bom = Bom::Done;
        input
    }

    fn buffered(&self) -> usize {
        self.line.len() + self.data.len() + self.event_type.len()
    }

    fn overflow<F: FnMut(Dispatch<'_>)>(&mut self, status: &mut FeedStatus, on: &mut F) {
        if !self.skip_event {
            status.oversized_events += 1;
            on(Dispatch::Oversized);
        }
        self.skip_event = true;
        self.block_started = true;
        // The discarded event's memory goes back at once.
        buf::release(&mut self.line);
        self.data = Vec::new();
        buf::release(&mut self.event_type);
        self.retry = None;
    }

    /// An event is discarded because memory for it could not be had: it is
    /// reported as oversized, and counted apart.
    fn out_of_memory<F: FnMut(Dispatch<'_>)>(&mut self, status: &mut FeedStatus, on: &mut F) {
        if !self.skip_event {
            status.out_of_memory += 1;
        }
        self.overflow(status, on);
    }

    fn process_line<F: FnMut(Dispatch<'_>)>(
        &mut self,
        line: &[u8],
        on_event: &mut F,
        status: &mut FeedStatus,
    ) {
        if line.is_empty() {
            self.dispatch(on_event);
            return;
        }
        if self.skip_event {
            return;
        }
        // A complete line counts against the limit exactly as it would have
        // while it was still being read (`feed` checks the unterminated line
        // the same way), so where the chunks were cut never matters.
        if line.len() + self.data.len() + self.event_type.len() > self.config.max_event_size {
            self.overflow(status, on_event);
            return;
        }
        if line[0] == b':' {
            return;
        }
        let (name, value) = match memchr(b':', line) {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &line[line.len()..]),
        };
        self.block_started = true;
        let limit = self.config.max_event_size;
        let stored = match name {
            b"data" => self.append_data(value),
            b"event" => {
                if value.len() <= KNOWN_EVENT_MAX {
                    self.known_event[..value.len()].copy_from_slice(value);
                    // The bound above makes the cast lossless.
                    self.known_len = value.len() as u8;
                }
                self.event_type.clear();
                // The whole line passed the limit check above.
                buf::extend(&mut self.event_type, value, limit)
            }
            b"id" if memchr(0, value).is_none() => {
                self.last_id.clear();
                buf::extend(&mut self.last_id, value, limit)
            }
            b"retry" => {
                if let Some(ms) = parse_retry(value) {
                    self.retry = Some(ms);
                }
                Ok(())
            }
            _ => Ok(()),
        };
        debug_assert!(self.buffered() <= limit);
        if stored.is_err() {
            self.out_of_memory(status, on_event);
        }
    }

    /// The value of `line` if it is a `data` field that can start an event
    /// without being copied: nothing else of the block buffered yet.
    fn borrowable_data<'a>(&self, line: &'a [u8]) -> Option<&'a [u8]> {
        if self.skip_event || !self.data.is_empty() {
            return None;
        }
        let value = match line.strip_prefix(b"data")? {
            [] => &[][..],
            [b':', rest @ ..] => rest.strip_prefix(b" ").unwrap_or(rest),
            _ => return None,
        };
        // The same line check as `process_line` (data is empty here).
        (line.len() + self.event_type.len() <= self.config.max_event_size).then_some(value)
    }

    /// Appends one data line's value. The limit was checked on the whole
    /// line before (value and LF are shorter than `data:` plus the value).
    fn append_data(&mut self, value: &[u8]) -> Result<(), std::collections::TryReserveError> {
        buf::reserve(&mut self.data, value.len() + 1, self.config.max_event_size)?;
        self.data.extend_from_slice(value);
        self.data.push(b'\n');
        debug_assert!(self.buffered() <= self.config.max_event_size);
        Ok(())
    }

    /// Dispatch a one-line event whose data was never copied.
    fn dispatch_borrowed<F: FnMut(Dispatch<'_>)>(&mut self, data: &[u8], on_event: &mut F) {
        on_event(Dispatch::Event(EventRef {
            event: &self.event_type,
            data,
            id: &self.last_id,
            retry: self.retry.take(),
        }));
        self.block_started = false;
        self.event_type.clear();
    }

    fn dispatch<F: FnMut(Dispatch<'_>)>(&mut self, on_event: &mut F) {
        let retry = self.retry.take();
        let skipped = std::mem::replace(&mut self.skip_event, false);
        self.block_started = false;
        if !skipped {
            if let Some((_, data)) = self.data.split_last() {
                on_event(Dispatch::Event(EventRef {
                    event: &self.event_type,
                    data,
                    id: &self.last_id,
                    retry,
                }));
            } else if retry.is_some() && self.config.retry_only_events {
                on_event(Dispatch::Event(EventRef {
                    event: &self.event_type,
                    data: b"",
                    id: &self.last_id,
                    retry,
                }));
            }
        }
        self.data.clear();
        self.event_type.clear();
    }
}

/// A `retry` value counts only if it is one or more ASCII digits (no sign,
/// no spaces) that fit in a `u64`.
fn parse_retry(value: &[u8]) -> Option<u64> {
    if value.is_empty() {
        return None;
    }
    value.iter().try_fold(0u64, |acc, &b| {
        if b.is_ascii_digit() {
            acc.checked_mul(10)?.checked_add(u64::from(b - b'0'))
        } else {
            None
        }
    })
}

#[cfg(test)]
mod tests;
