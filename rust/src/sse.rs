//! Incremental Server-Sent Events framing, as the WHATWG HTML standard
//! ("Parsing an event stream", "Interpreting an event stream") defines it.
//!
//! The decoder works on raw bytes cut anywhere. Line terminators (CR, LF,
//! CRLF), the colon and the field names are ASCII, so framing on bytes and
//! decoding each field as UTF-8 afterwards gives the same result as decoding
//! the whole stream first. Events are handed to a callback as borrowed slices,
//! so a consumer that only inspects them allocates nothing per event.

use memchr::{memchr, memchr2};

const BOM: &[u8; 3] = b"\xEF\xBB\xBF";

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
    /// Events discarded in this call because they exceeded `max_event_size`.
    pub oversized_events: u32,
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
        }
    }

    #[must_use]
    pub fn config(&self) -> &DecoderConfig {
        &self.config
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
        while let Some(end) = line_end(input) {
            let part = &input[..end];
            if self.skip_line {
                self.skip_line = false;
            } else if self.line.is_empty() {
                if let Some(data) = borrowed.take() {
                    if part.is_empty() {
                        self.dispatch_borrowed(data, on_event);
                    } else {
                        self.append_data(data);
                        self.process_line(part, on_event, &mut status);
                    }
                } else if let Some(value) = self.borrowable_data(part) {
                    self.block_started = true;
                    borrowed = Some(value);
                } else {
                    self.process_line(part, on_event, &mut status);
                }
            } else {
                let mut line = std::mem::take(&mut self.line);
                line.extend_from_slice(part);
                self.process_line(&line, on_event, &mut status);
                line.clear();
                self.line = line;
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
            self.append_data(data);
        }
        if !input.is_empty() && !self.skip_line {
            self.line.extend_from_slice(input);
            if self.buffered() > self.config.max_event_size {
                self.line.clear();
                self.skip_line = true;
                self.overflow(&mut status, on_event);
            }
        }
        status
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
                    // Not a BOM after all: the bytes matched so far are content.
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
        self.data = Vec::new();
        self.event_type.clear();
        self.retry = None;
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
        match name {
            b"data" => self.append_data(value),
            b"event" => {
                self.event_type.clear();
                self.event_type.extend_from_slice(value);
                // The whole line passed the limit check above.
                debug_assert!(self.buffered() <= self.config.max_event_size);
            }
            b"id" if memchr(0, value).is_none() => {
                self.last_id.clear();
                self.last_id.extend_from_slice(value);
            }
            b"retry" => {
                if let Some(ms) = parse_retry(value) {
                    self.retry = Some(ms);
                }
            }
            _ => {}
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
    fn append_data(&mut self, value: &[u8]) {
        self.data.extend_from_slice(value);
        self.data.push(b'\n');
        debug_assert!(self.buffered() <= self.config.max_event_size);
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
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Eq)]
    struct Ev(String, String, String, Option<u64>);

    fn run(chunks: &[&[u8]], config: DecoderConfig) -> (Vec<Ev>, FinishStatus) {
        let mut d = Decoder::new(config);
        let mut out = Vec::new();
        for c in chunks {
            d.feed(c, |e| {
                out.push(Ev(
                    String::from_utf8_lossy(e.event).into_owned(),
                    String::from_utf8_lossy(e.data).into_owned(),
                    String::from_utf8_lossy(e.id).into_owned(),
                    e.retry,
                ));
            });
        }
        let fin = d.finish();
        (out, fin)
    }

    fn ev(event: &str, data: &str, id: &str, retry: Option<u64>) -> Ev {
        Ev(event.into(), data.into(), id.into(), retry)
    }

    fn every_split(input: &[u8]) -> Vec<Vec<&[u8]>> {
        let mut out = vec![vec![input]];
        for i in 0..=input.len() {
            out.push(vec![&input[..i], &input[i..]]);
        }
        out.push(input.chunks(1).collect());
        out
    }

    fn check(input: &[u8], expected: &[Ev]) {
        for chunks in every_split(input) {
            let (got, _) = run(&chunks, DecoderConfig::default());
            assert_eq!(got, expected, "chunks {chunks:?}");
        }
    }

    #[test]
    fn spec_examples() {
        check(
            b"data: YHOO\ndata: +2\ndata: 10\n\n",
            &[ev("", "YHOO\n+2\n10", "", None)],
        );
        check(
            b": test stream\n\ndata: first event\nid: 1\n\ndata:second event\nid\n\ndata:  third event\n\n",
            &[
                ev("", "first event", "1", None),
                ev("", "second event", "", None),
                ev("", " third event", "", None),
            ],
        );
        check(
            b"data\n\ndata\ndata\n\ndata:",
            &[ev("", "", "", None), ev("", "\n", "", None)],
        );
    }

    #[test]
    fn line_endings_and_bom() {
        check(
            b"\xEF\xBB\xBFdata:1\r\n\r\n\xEF\xBB\xBFdata:2\r\rdata:3\n\n",
            &[ev("", "1", "", None), ev("", "3", "", None)],
        );
        check(
            b"\xEF\xBB\xBF\xEF\xBB\xBFdata:1\n\ndata:2\n\n",
            &[ev("", "2", "", None)],
        );
        check(b"\xEF\xBBdata:1\n\n", &[]);
    }

    #[test]
    fn cr_dispatches_without_waiting() {
        let mut d = Decoder::default();
        let mut n = 0;
        d.feed(b"data: x\r\r", |_| n += 1);
        assert_eq!(n, 1);
        d.feed(b"\ndata: y\n\n", |_| n += 1);
        assert_eq!(n, 2);
    }

    #[test]
    fn fields() {
        check(
            b"retry:2000\nretry:1000x\nid: a\0b\nid: 7\ndata:x\n\nevent: e\n\ndata:y\n\n",
            &[ev("", "x", "7", Some(2000)), ev("", "y", "7", None)],
        );
        check(b"retry: 10000\n\ndata: z\n\n", &[ev("", "z", "", None)]);
        let (got, _) = run(
            &[b"retry: 10000\n\n"],
            DecoderConfig {
                retry_only_events: true,
                ..DecoderConfig::default()
            },
        );
        assert_eq!(got, vec![ev("", "", "", Some(10000))]);
        assert_eq!(parse_retry(b"99999999999999999999999"), None);
        assert_eq!(parse_retry(b"+5"), None);
    }

    #[test]
    fn finish_reports_partial() {
        assert!(
            run(&[b"data: x\n"], DecoderConfig::default())
                .1
                .dropped_partial
        );
        assert!(run(&[b"dat"], DecoderConfig::default()).1.dropped_partial);
        assert!(
            !run(&[b"data: x\n\n"], DecoderConfig::default())
                .1
                .dropped_partial
        );
    }

    #[test]
    fn finish_flushing_reads_an_unterminated_last_event() {
        let mut d = Decoder::default();
        let mut got = Vec::new();
        d.feed(b"data: a\n\nevent: stop\ndata: {\"x\"", |e| {
            got.push(e.data.to_vec())
        });
        let status = d.finish_flushing(|e| {
            assert_eq!(e.event, b"stop");
            got.push(e.data.to_vec());
        });
        assert_eq!(got, vec![b"a".to_vec(), b"{\"x\"".to_vec()]);
        assert!(status.flushed_partial && !status.dropped_partial);
        assert!(
            !d.finish_flushing(|_| panic!("nothing pending"))
                .flushed_partial
        );
    }

    #[test]
    fn oversized_event_is_skipped_and_decoding_recovers() {
        let config = DecoderConfig {
            max_event_size: 16,
            ..DecoderConfig::default()
        };
        let mut d = Decoder::new(config);
        let mut got = Vec::new();
        let mut status = d.feed(b"data: 0123456789abcdefghij\n\ndata: ok\n\n", |e| {
            got.push(e.data.to_vec());
        });
        assert_eq!(status.oversized_events, 1);
        // A line that never ends is cut off too, across chunks.
        for _ in 0..10 {
            status = d.feed(b"data: xxxxxxxxxxxx", |_| panic!("no event expected"));
        }
        d.feed(b"\n\ndata: after\n\n", |e| got.push(e.data.to_vec()));
        assert_eq!(got, vec![b"ok".to_vec(), b"after".to_vec()]);
        assert_eq!(status.oversized_events, 0);
    }

    /// Events and oversized markers, in order, for `chunks`.
    fn run_each(chunks: &[&[u8]], max_event_size: usize) -> Vec<Option<Vec<u8>>> {
        let mut d = Decoder::new(DecoderConfig {
            max_event_size,
            ..DecoderConfig::default()
        });
        let mut out = Vec::new();
        for c in chunks {
            d.feed_each(c, |item| {
                out.push(match item {
                    Dispatch::Event(e) => Some(e.data.to_vec()),
                    Dispatch::Oversized => None,
                });
            });
        }
        out
    }

    /// Regression (found by the `framing` fuzz target): a line longer than
    /// the limit only counted while it was unterminated at the end of a
    /// chunk, so the same stream dropped an event or not depending on where
    /// it was cut (a long comment line dropped its event only when split; a
    /// long `id:` line set an unbounded last event id only when whole).
    #[test]
    fn limit_does_not_depend_on_chunking() {
        let stream: &[u8] = b"data: a\n: 0123456789abcdefghij\n\ndata: 0123456\n\nid: 0123456789\ndata: b\n\nevent: x\ndata: o\n\ndata: ok\n\ndata: ok1\n\n";
        let expected = vec![
            None,                 // the comment line overflows its event
            None,                 // a 13-byte data line
            None,                 // a 14-byte id line (the id is not kept)
            Some(b"o".to_vec()),  // type + line fit: 1 + 7
            Some(b"ok".to_vec()), // a line of exactly the limit
            None,
        ];
        for chunks in every_split(stream) {
            assert_eq!(run_each(&chunks, 8), expected, "chunks {chunks:?}");
        }
        let mut d = Decoder::new(DecoderConfig {
            max_event_size: 8,
            ..DecoderConfig::default()
        });
        d.feed(stream, |e| assert!(e.id.is_empty()));
        assert!(d.last_event_id().is_empty());
    }

    #[test]
    fn oversized_markers_come_in_stream_order() {
        let stream: &[u8] = b"data: a\n\ndata: 0123456789\n\ndata: b\n\n";
        let expected = vec![Some(b"a".to_vec()), None, Some(b"b".to_vec())];
        for chunks in every_split(stream) {
            assert_eq!(run_each(&chunks, 8), expected);
        }
        let mut d = Decoder::new(DecoderConfig {
            max_event_size: 8,
            ..DecoderConfig::default()
        });
        d.feed(b"data: a\n\ndata: 01", |_| {});
        let mut seen = Vec::new();
        let status = d.finish_flushing_each(|item| seen.push(item == Dispatch::Oversized));
        assert_eq!(seen, vec![false]);
        assert!(status.flushed_partial);
    }
}
