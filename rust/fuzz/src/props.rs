//! The properties the fuzz targets check, shared with the CI-sized mini-fuzz
//! (`tests/rust_fuzz_smoke.rs` includes this file by path).
//!
//! Every fuzz input is `[ctrl, s0, s1, s2, s3, body...]`: `ctrl` picks the
//! decoder options / API hint / mode, `s0..s3` seed the pseudo-random
//! chunking, and `body` is the byte stream (or, in the usage target's JSON
//! modes, one event's JSON payload). Inputs shorter than the header are
//! zero-padded, so every byte string is a valid input.
//!
//! Each `check_*` function panics (with the failing property in the message)
//! when a property is broken, and returns normally otherwise.

use ssetally::lines::LineSplitter;
use ssetally::reassemble::Output;
use ssetally::sse::{Decoder, DecoderConfig, EventRef, DEFAULT_MAX_EVENT_SIZE};

// The targets' properties live one file each; the paths are explicit so
// that this file can also be included by path (`tests/rust_fuzz_smoke.rs`).
#[path = "clean_json.rs"]
mod clean_json;
#[path = "strip_props.rs"]
mod strip_props;
#[path = "usage_props.rs"]
mod usage_props;

pub use clean_json::clean_json;
pub use strip_props::check_strip;
pub use usage_props::check_usage;

/// Capacity the native buffers may keep beyond twice their limit.
pub const CAPACITY_SLACK: usize = 64;

/// The bound every buffer of the core keeps to after any `feed`, however
/// the bytes were cut: twice its limit plus a constant.
#[must_use]
pub fn capacity_bound(limit: usize) -> usize {
    limit.saturating_mul(2).saturating_add(CAPACITY_SLACK)
}

/// Bytes before the body: the control byte and four seed bytes.
pub const HEADER: usize = 5;

/// A fuzz input split into its header and body.
#[derive(Clone, Copy, Debug)]
pub struct Input<'a> {
    pub ctrl: u8,
    pub seed: u64,
    pub body: &'a [u8],
}

impl<'a> Input<'a> {
    #[must_use]
    pub fn parse(data: &'a [u8]) -> Self {
        let mut head = [0u8; HEADER];
        let n = data.len().min(HEADER);
        head[..n].copy_from_slice(&data[..n]);
        let seed = u64::from(u32::from_le_bytes([head[1], head[2], head[3], head[4]]));
        Self {
            ctrl: head[0],
            seed,
            body: &data[n..],
        }
    }
}

/// Builds a fuzz input from its parts (for seed files and the mini-fuzz).
#[must_use]
pub fn encode(ctrl: u8, seed: u32, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + body.len());
    out.push(ctrl);
    out.extend_from_slice(&seed.to_le_bytes());
    out.extend_from_slice(body);
    out
}

/// splitmix64: small, fast, and good enough to cut streams.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    #[must_use]
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x9E37_79B9_7F4A_7C15)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform-ish in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// Cuts `body` into chunks (empty ones included) in one of several styles
/// picked by `seed`: two pieces, tiny pieces, single bytes with empty chunks
/// between them, large pieces, or cuts on both sides of every CR and LF.
/// The chunks always join back to `body`.
#[must_use]
pub fn chunks(body: &[u8], seed: u64) -> Vec<&[u8]> {
    let mut rng = Rng::new(seed);
    let mut cuts: Vec<usize> = Vec::new();
    match seed % 5 {
        0 => cuts.push(rng.below(body.len() + 1)),
        1 => {
            let mut at = 0;
            while at < body.len() {
                at += rng.below(17);
                cuts.push(at.min(body.len()));
            }
        }
        2 => {
            for at in 0..=body.len() {
                cuts.push(at);
                if rng.below(4) == 0 {
                    cuts.push(at);
                }
            }
        }
        3 => {
            let most = (body.len() / 3).max(1);
            let mut at = 0;
            while at < body.len() {
                at += 1 + rng.below(most);
                cuts.push(at.min(body.len()));
            }
        }
        _ => {
            for (at, &b) in body.iter().enumerate() {
                if b == b'\r' || b == b'\n' {
                    cuts.push(at);
                    cuts.push(at + 1);
                }
            }
        }
    }
    cuts.sort_unstable();
    let mut out = Vec::with_capacity(cuts.len() + 1);
    let mut start = 0;
    for cut in cuts {
        out.push(&body[start..cut]);
        start = cut;
    }
    out.push(&body[start..]);
    assert_eq!(out.concat(), body, "chunking must join back to the body");
    out
}

// ---------------------------------------------------------------- framing

/// Bytes as readable text for assertion messages.
#[must_use]
pub fn show(bytes: &[u8]) -> String {
    bytes.escape_ascii().to_string()
}

/// One dispatched event (owned), or an oversized event, in stream order.
#[derive(Clone, PartialEq, Eq)]
pub enum Item {
    Event {
        event: Vec<u8>,
        data: Vec<u8>,
        id: Vec<u8>,
        retry: Option<u64>,
    },
    Oversized,
}

impl std::fmt::Debug for Item {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Item::Event {
                event,
                data,
                id,
                retry,
            } => write!(
                f,
                "Event(event={:?}, data={:?}, id={:?}, retry={retry:?})",
                show(event),
                show(data),
                show(id)
            ),
            Item::Oversized => f.write_str("Oversized"),
        }
    }
}

impl From<EventRef<'_>> for Item {
    fn from(e: EventRef<'_>) -> Self {
        Item::Event {
            event: e.event.to_vec(),
            data: e.data.to_vec(),
            id: e.id.to_vec(),
            retry: e.retry,
        }
    }
}

/// Everything a decoder run produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decoded {
    pub items: Vec<Item>,
    pub oversized: u64,
    pub dropped_partial: bool,
    pub flushed_partial: bool,
    pub last_id: Vec<u8>,
}

/// Decodes `chunks` with one decoder; `flush` picks `finish_flushing` over
/// `finish`.
#[must_use]
pub fn decode(config: &DecoderConfig, chunks: &[&[u8]], flush: bool) -> Decoded {
    let mut d = Decoder::new(config.clone());
    let mut items = Vec::new();
    let mut oversized = 0;
    for chunk in chunks {
        let status = d.feed_each(chunk, |item| items.push(own(item)));
        oversized += u64::from(status.oversized_events);
    }
    let last_id = d.last_event_id().to_vec();
    let fin = if flush {
        d.finish_flushing(|e| items.push(Item::from(e)))
    } else {
        d.finish()
    };
    assert!(
        d.last_event_id().is_empty(),
        "finish must reset the decoder"
    );
    Decoded {
        items,
        oversized,
        dropped_partial: fin.dropped_partial,
        flushed_partial: fin.flushed_partial,
        last_id,
    }
}

fn own(item: ssetally::sse::Dispatch<'_>) -> Item {
    match item {
        ssetally::sse::Dispatch::Event(e) => Item::from(e),
        ssetally::sse::Dispatch::Oversized => Item::Oversized,
    }
}

/// The WHATWG "interpret an event stream" algorithm run over the whole input
/// at once, written from the spec (and the documented ssetally choices: one
/// leading BOM stripped, `retry` reported on the event of its block, `id`
/// with NUL ignored, `retry` only as ASCII digits). No size limit.
#[must_use]
pub fn reference_decode(input: &[u8], retry_only_events: bool, flush: bool) -> Decoded {
    let bom = b"\xEF\xBB\xBF";
    let partial_bom = !input.is_empty() && input.len() < 3 && bom.starts_with(input);
    let input = input.strip_prefix(bom).unwrap_or(input);
    let (lines, rest) = split_lines(input);
    let mut st = RefState::default();
    let mut items = Vec::new();
    for line in &lines {
        st.line(line, retry_only_events, &mut items);
    }
    let last_id = st.last_id.clone();
    let mut flushed = false;
    let dropped;
    if flush {
        // The unterminated line is read and the block dispatched: only a
        // partial BOM is left to drop.
        if !rest.is_empty() {
            st.line(rest, retry_only_events, &mut items);
        }
        flushed = !st.data.is_empty();
        if st.started {
            st.dispatch(retry_only_events, &mut items);
        }
        dropped = partial_bom;
    } else {
        dropped = st.started || !rest.is_empty() || partial_bom;
    }
    Decoded {
        items,
        oversized: 0,
        dropped_partial: dropped,
        flushed_partial: flushed,
        last_id,
    }
}

#[derive(Default)]
struct RefState {
    data: Vec<u8>,
    event: Vec<u8>,
    last_id: Vec<u8>,
    retry: Option<u64>,
    started: bool,
}

impl RefState {
    fn line(&mut self, line: &[u8], retry_only: bool, items: &mut Vec<Item>) {
        if line.is_empty() {
            self.dispatch(retry_only, items);
            return;
        }
        if line[0] == b':' {
            return;
        }
        self.started = true;
        let (name, value) = match line.iter().position(|&b| b == b':') {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        match name {
            b"data" => {
                self.data.extend_from_slice(value);
                self.data.push(b'\n');
            }
            b"event" => self.event = value.to_vec(),
            b"id" if !value.contains(&0) => self.last_id = value.to_vec(),
            // ASCII digits only (no sign, no space), and the value must fit.
            b"retry" if !value.is_empty() && value.iter().all(u8::is_ascii_digit) => {
                if let Ok(ms) = std::str::from_utf8(value).unwrap_or("x").parse::<u64>() {
                    self.retry = Some(ms);
                }
            }
            _ => {}
        }
    }

    fn dispatch(&mut self, retry_only: bool, items: &mut Vec<Item>) {
        let retry = self.retry.take();
        self.started = false;
        if let Some((_, data)) = self.data.split_last() {
            items.push(Item::Event {
                event: self.event.clone(),
                data: data.to_vec(),
                id: self.last_id.clone(),
                retry,
            });
        } else if retry.is_some() && retry_only {
            items.push(Item::Event {
                event: self.event.clone(),
                data: Vec::new(),
                id: self.last_id.clone(),
                retry,
            });
        }
        self.data.clear();
        self.event.clear();
    }
}

/// Complete lines (terminated by CR, LF or CRLF, terminator removed) and the
/// unterminated rest.
#[must_use]
pub fn split_lines(input: &[u8]) -> (Vec<&[u8]>, &[u8]) {
    let mut lines = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < input.len() {
        match input[i] {
            b'\n' => {
                lines.push(&input[start..i]);
                start = i + 1;
            }
            b'\r' => {
                lines.push(&input[start..i]);
                if input.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    (lines, &input[start..])
}

fn decoder_config(ctrl: u8) -> DecoderConfig {
    let max_event_size = match ctrl & 7 {
        0..=2 => DEFAULT_MAX_EVENT_SIZE,
        3 => 1,
        4 => 8,
        5 => 24,
        6 => 64,
        _ => 300,
    };
    DecoderConfig {
        max_event_size,
        retry_only_events: ctrl & 8 != 0,
    }
}

/// What a check could compare (the mini-fuzz asserts that its inputs reach
/// the reference comparisons, so they are not vacuous).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Seen {
    /// Events dispatched (whole-input run).
    pub events: u64,
    /// Oversized events.
    pub oversized: u64,
    /// Compared with the whole-input SSE reference decoder.
    pub decoder_reference: bool,
    /// Compared with the serde_json stripping reference.
    pub strip_reference: bool,
    /// Usage chunks the stripper removed.
    pub stripped: u64,
    /// `"usage":null` members the stripper removed.
    pub nulls_removed: u64,
    /// Blocks the stripper passed through for their size.
    pub strip_oversized: u64,
    /// Usage compared with the serde_json normalisation reference.
    pub usage_reference: bool,
    /// ... and that reference expected usage.
    pub usage_found: bool,
}

impl Seen {
    /// Adds up what several checks saw.
    pub fn add(&mut self, other: Seen) {
        self.events += other.events;
        self.oversized += other.oversized;
        self.decoder_reference |= other.decoder_reference;
        self.strip_reference |= other.strip_reference;
        self.stripped += other.stripped;
        self.nulls_removed += other.nulls_removed;
        self.strip_oversized += other.strip_oversized;
        self.usage_reference |= other.usage_reference;
        self.usage_found |= other.usage_found;
    }
}

/// Framing: the decoder and the line splitter give the same result
/// whatever the chunking, agree with whole-input references, and keep their
/// buffers within the limit (the stripper has its own target, `strip`).
pub fn check_framing(data: &[u8]) -> Seen {
    let input = Input::parse(data);
    let body = input.body;
    let split = chunks(body, input.seed);
    let config = decoder_config(input.ctrl);
    let seen = check_decoder(&config, body, &split);
    check_lines(body, &split);
    check_decoder_capacity(&config, body, &split);
    seen
}

/// After every `feed`, the decoder holds at most [`capacity_bound`] bytes:
/// for the chunking, for the whole body, and for the body repeated into one
/// long stream fed in pieces (so that buffers are reused).
fn check_decoder_capacity(config: &DecoderConfig, body: &[u8], split: &[&[u8]]) {
    let bound = capacity_bound(config.max_event_size);
    let mut d = Decoder::new(config.clone());
    for chunk in split.iter().chain([&body]).chain(split) {
        d.feed_each(chunk, |_| {});
        assert!(
            d.retained_capacity() <= bound,
            "decoder holds {} bytes, limit {}",
            d.retained_capacity(),
            config.max_event_size
        );
    }
}

fn check_decoder(config: &DecoderConfig, body: &[u8], split: &[&[u8]]) -> Seen {
    let mut seen = Seen::default();
    for flush in [false, true] {
        let whole = decode(config, &[body], flush);
        let cut = decode(config, split, flush);
        assert_eq!(
            whole, cut,
            "decoder: chunking changed the result (flush={flush})"
        );
        let oversized = whole
            .items
            .iter()
            .filter(|i| **i == Item::Oversized)
            .count();
        assert_eq!(
            oversized as u64, whole.oversized,
            "oversized count vs items"
        );
        for item in &whole.items {
            if let Item::Event { event, data, .. } = item {
                assert!(
                    data.len() + event.len() <= config.max_event_size,
                    "an event over max_event_size was dispatched"
                );
                assert!(!event.contains(&b'\n') && !event.contains(&b'\r'));
            }
        }
        if !flush {
            seen.events = (whole.items.len() - oversized) as u64;
            seen.oversized = whole.oversized;
        }
        if config.max_event_size == DEFAULT_MAX_EVENT_SIZE {
            seen.decoder_reference = true;
            let reference = reference_decode(body, config.retry_only_events, flush);
            assert_eq!(
                whole.items, reference.items,
                "decoder vs reference (flush={flush})"
            );
            assert_eq!(
                whole.dropped_partial, reference.dropped_partial,
                "dropped_partial"
            );
            assert_eq!(
                whole.flushed_partial, reference.flushed_partial,
                "flushed_partial"
            );
            assert!(
                whole.last_id == reference.last_id,
                "last event id vs reference"
            );
        }
    }
    seen
}

/// The lines and the count of discarded long lines; the small limit makes
/// the discarding path as chunk-invariant as the splitting.
fn split_with(split: &[&[u8]]) -> (Vec<Vec<u8>>, u32) {
    let mut s = LineSplitter::new(64);
    let mut out = Vec::new();
    let mut discarded = 0;
    for chunk in split {
        discarded += s.feed(chunk, |l| out.push(l.to_vec()));
        assert!(
            s.retained_capacity() <= capacity_bound(64),
            "line splitter holds {} bytes",
            s.retained_capacity()
        );
    }
    out.extend(s.finish());
    (out, discarded)
}

fn check_lines(body: &[u8], split: &[&[u8]]) {
    let whole = split_with(&[body]);
    assert!(
        whole == split_with(split),
        "line splitter: chunking changed the lines"
    );
    let (mut lines, rest) = split_lines(body);
    if !rest.is_empty() {
        lines.push(rest);
    }
    let (kept, long): (Vec<&[u8]>, Vec<&[u8]>) = lines.into_iter().partition(|l| l.len() <= 64);
    let reference: Vec<Vec<u8>> = kept.iter().map(|l| l.to_vec()).collect();
    assert!(
        whole == (reference, long.len() as u32),
        "line splitter vs reference"
    );
}

// ---------------------------------------------------------------- reassemble

/// Reassembly: `Output::on_event` never panics on any bytes, event by event
/// (the body split at LF) or whole, and is deterministic.
pub fn check_reassemble(data: &[u8]) -> Seen {
    let input = Input::parse(data);
    let body = input.body;
    let mut a = Output::default();
    a.on_event(body);
    let mut b = Output::default();
    for event in body.split(|&c| c == b'\n') {
        b.on_event(event);
    }
    let mut c = Output::default();
    for event in body.split(|&c| c == b'\n') {
        c.on_event(event);
    }
    assert_eq!(b, c, "reassembly is deterministic");
    let mut d = Output::default();
    for event in body.split(|&c| c == b'\n') {
        d.on_event(event.trim_ascii());
    }
    let choices = [&a, &b, &d].iter().map(|o| o.choices.len() as u64).sum();
    Seen {
        events: choices,
        ..Seen::default()
    }
}
