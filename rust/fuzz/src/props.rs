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

use std::collections::BTreeSet;

use serde_json::Value;
use ssetally::lines::LineSplitter;
use ssetally::reassemble::Output;
use ssetally::sse::{Decoder, DecoderConfig, EventRef, DEFAULT_MAX_EVENT_SIZE};
use ssetally::strip::UsageChunkStripper;
use ssetally::usage::{ApiHint, Report, Usage, UsageTap};

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
        self.usage_reference |= other.usage_reference;
        self.usage_found |= other.usage_found;
    }
}

/// Framing: the decoder, the line splitter and the usage-chunk stripper give
/// the same result whatever the chunking, and agree with whole-input
/// references.
pub fn check_framing(data: &[u8]) -> Seen {
    let input = Input::parse(data);
    let body = input.body;
    let split = chunks(body, input.seed);
    let mut seen = check_decoder(&decoder_config(input.ctrl), body, &split);
    check_lines(body, &split);
    let (strip_reference, stripped) = check_stripper(body, &split);
    seen.strip_reference = strip_reference;
    seen.stripped = stripped;
    seen
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

fn strip_with(split: &[&[u8]]) -> (Vec<u8>, u64) {
    let mut s = UsageChunkStripper::new();
    let mut out = Vec::new();
    for chunk in split {
        s.feed(chunk, &mut out);
    }
    s.finish(&mut out);
    (out, s.stripped)
}

/// Returns whether the reference applied, and how many chunks were stripped.
fn check_stripper(body: &[u8], split: &[&[u8]]) -> (bool, u64) {
    let (whole, stripped) = strip_with(&[body]);
    let (cut, cut_stripped) = strip_with(split);
    assert!(
        whole == cut && stripped == cut_stripped,
        "stripper: chunking changed the output\n whole: {}\n   cut: {}",
        show(&whole),
        show(&cut)
    );
    if stripped == 0 {
        assert!(
            whole == body,
            "stripper changed a stream it stripped nothing from"
        );
    }
    assert!(whole.len() <= body.len());
    let reference = reference_strip(body);
    if let Some((expected, count)) = &reference {
        assert!(
            whole == *expected && stripped == *count,
            "stripper vs reference\n      got: {}\nreference: {}",
            show(&whole),
            show(expected)
        );
    }
    (reference.is_some(), stripped)
}

/// Event blocks (each through its blank line's terminator) and the
/// unterminated rest.
fn blocks(input: &[u8]) -> (Vec<&[u8]>, &[u8]) {
    let mut out = Vec::new();
    let mut block_start = 0;
    let mut line_start = 0;
    let mut i = 0;
    while i < input.len() {
        let b = input[i];
        if b == b'\n' || b == b'\r' {
            let blank = i == line_start;
            if b == b'\r' && input.get(i + 1) == Some(&b'\n') {
                i += 1;
            }
            line_start = i + 1;
            if blank {
                out.push(&input[block_start..=i]);
                block_start = i + 1;
            }
        }
        i += 1;
    }
    (out, &input[block_start..])
}

/// The stripper's job done on the whole input with serde_json: drop every
/// complete block whose data is `{"choices": [], "usage": {...}, ...}`.
/// `None` when some block's data is JSON-like but not clean JSON for
/// serde_json (duplicate or escaped keys, invalid text), where the
/// documented byte-level rules and a DOM parser may legitimately differ.
#[must_use]
pub fn reference_strip(input: &[u8]) -> Option<(Vec<u8>, u64)> {
    let (blocks, rest) = blocks(input);
    let mut out = Vec::new();
    let mut stripped = 0;
    for block in blocks {
        let data = block_data(block);
        let usage_only = match clean_json(&data) {
            Some(Value::Object(o)) => {
                o.get("choices")
                    .is_some_and(|c| c.as_array().is_some_and(Vec::is_empty))
                    && o.get("usage").is_some_and(Value::is_object)
            }
            Some(_) => false,
            None if data.trim_ascii_start().starts_with(b"{") => return None,
            None => false,
        };
        if usage_only {
            stripped += 1;
        } else {
            out.extend_from_slice(block);
        }
    }
    out.extend_from_slice(rest);
    Some((out, stripped))
}

fn block_data(block: &[u8]) -> Vec<u8> {
    let (lines, _) = split_lines(block);
    let mut data: Option<Vec<u8>> = None;
    for line in lines {
        let value = if line == b"data" {
            &b""[..]
        } else if let Some(v) = line.strip_prefix(b"data:") {
            v.strip_prefix(b" ").unwrap_or(v)
        } else {
            continue;
        };
        match data.as_mut() {
            Some(d) => {
                d.push(b'\n');
                d.extend_from_slice(value);
            }
            None => data = Some(value.to_vec()),
        }
    }
    data.unwrap_or_default()
}

// ---------------------------------------------------------------- JSON hygiene

/// `data` parsed by serde_json, when it is JSON whose keys are all plain
/// (no escapes) and unique within their object. The extractor compares raw
/// key bytes and lets the last duplicate win in some places and the first in
/// others (documented); the reference only speaks for clean JSON.
#[must_use]
pub fn clean_json(data: &[u8]) -> Option<Value> {
    let value: Value = serde_json::from_slice(data).ok()?;
    keys_are_clean(data).then_some(value)
}

/// Walks valid JSON text and checks every object's keys: no backslash, no
/// duplicates.
fn keys_are_clean(text: &[u8]) -> bool {
    // A stack of key sets, one per open object; arrays push `None`.
    let mut stack: Vec<Option<BTreeSet<&[u8]>>> = Vec::new();
    let mut expect_key = false;
    let mut i = 0;
    while i < text.len() {
        match text[i] {
            b'{' => {
                stack.push(Some(BTreeSet::new()));
                expect_key = true;
            }
            b'[' => {
                stack.push(None);
                expect_key = false;
            }
            b'}' | b']' => {
                stack.pop();
                expect_key = false;
            }
            b',' => expect_key = matches!(stack.last(), Some(Some(_))),
            b'"' => {
                let start = i + 1;
                let mut j = start;
                let mut escaped = false;
                while j < text.len() && text[j] != b'"' {
                    if text[j] == b'\\' {
                        escaped = true;
                        j += 1;
                    }
                    j += 1;
                }
                if expect_key {
                    if escaped {
                        return false;
                    }
                    if let Some(Some(keys)) = stack.last_mut() {
                        if !keys.insert(&text[start..j.min(text.len())]) {
                            return false;
                        }
                    }
                    expect_key = false;
                }
                i = j;
            }
            _ => {}
        }
        i += 1;
    }
    true
}

// ---------------------------------------------------------------- usage

/// A report with its byte count cleared (bytes go to the report that is
/// current when a chunk begins, so only their sum is chunk-invariant).
fn comparable(reports: &[Report]) -> Vec<Report> {
    reports
        .iter()
        .map(|r| Report {
            bytes: 0,
            ..r.clone()
        })
        .collect()
}

/// Feeds `split` to a fresh tap, calling `snapshot` along the way when
/// `snapshots` is set; returns the reports and the reassembled output.
fn tap_run(
    hint: ApiHint,
    config: &DecoderConfig,
    collect: bool,
    split: &[&[u8]],
    snapshots: bool,
) -> (Vec<Report>, Option<Output>) {
    let mut tap = UsageTap::new(hint, config.clone());
    if collect {
        tap = tap.collecting_output();
    }
    for (i, chunk) in split.iter().enumerate() {
        tap.feed(chunk);
        if snapshots && i % 7 == 3 {
            let snap = tap.snapshot();
            assert!(!snap.is_empty(), "snapshot gives at least one report");
        }
    }
    let reports = tap.finish();
    let output = tap.take_output();
    (reports, output)
}

fn check_report(report: &Report, hint: ApiHint) {
    if hint != ApiHint::Auto {
        assert_eq!(report.api.as_str(), hint.as_str(), "the hint is the API");
    }
    if let Some(u) = &report.usage {
        assert!(u.has_counts(), "a usage object without counts was kept");
        assert!(!u.raw.is_empty(), "usage without its raw object");
        let raw: Result<Value, _> = serde_json::from_str(&u.raw);
        if let Ok(raw) = raw {
            assert!(raw.is_object(), "usage.raw is not an object: {}", u.raw);
        }
    }
    assert!(report.delta_chunks <= report.events);
    assert!(report.invalid_json_events <= report.events);
    if report.oversized_events > 0 {
        assert!(report.warnings.iter().any(|w| w.contains("max_event_size")));
    }
}

fn check_tap(
    hint: ApiHint,
    config: &DecoderConfig,
    collect: bool,
    body: &[u8],
    split: &[&[u8]],
) -> Seen {
    let (whole, whole_out) = tap_run(hint, config, collect, &[body], false);
    let (cut, cut_out) = tap_run(hint, config, collect, split, true);
    assert!(!whole.is_empty(), "finish gives at least one report");
    assert_eq!(
        whole.iter().map(|r| r.bytes).sum::<u64>(),
        body.len() as u64,
        "bytes are all counted"
    );
    assert_eq!(
        cut.iter().map(|r| r.bytes).sum::<u64>(),
        body.len() as u64,
        "bytes are all counted (chunked)"
    );
    assert_eq!(
        comparable(&whole),
        comparable(&cut),
        "tap: chunking changed the reports"
    );
    assert_eq!(whole_out, cut_out, "tap: chunking changed the output");
    assert_eq!(collect, whole_out.is_some());
    for r in &whole {
        check_report(r, hint);
    }
    // Deterministic, and a reused tap starts afresh.
    let mut tap = UsageTap::new(hint, config.clone());
    tap.feed(b"data: {\"id\":\"x\",\"object\":\"chat.completion.chunk\",\"choices\":[]}\n\nevent: a\ndata: partial");
    let _ = tap.finish();
    tap.feed(body);
    assert_eq!(
        comparable(&tap.finish()),
        comparable(&whole),
        "reuse after finish"
    );
    Seen {
        events: whole.iter().map(|r| r.events).sum(),
        oversized: whole.iter().map(|r| r.oversized_events).sum(),
        ..Seen::default()
    }
}

/// The six normalised counts.
pub type Six = [Option<u64>; 6];

#[must_use]
pub fn six(u: &Usage) -> Six {
    [
        u.input_tokens,
        u.output_tokens,
        u.total_tokens,
        u.cached_input_tokens,
        u.cache_write_tokens,
        u.reasoning_tokens,
    ]
}

/// A JSON number as a token count: a non-negative integer, or a float with
/// no fractional part below 2^64 (as documented for `Usage`).
fn count_of(v: &Value) -> Option<u64> {
    let n = v.as_number()?;
    if let Some(u) = n.as_u64() {
        return Some(u);
    }
    let f = n.as_f64()?;
    let fits = f.is_finite() && f >= 0.0 && f.fract() == 0.0 && f < 18_446_744_073_709_551_616.0;
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    fits.then_some(f as u64)
}

fn at(v: &Value, path: &[&str]) -> Option<u64> {
    let mut cur = v;
    for key in path {
        cur = cur.as_object()?.get(*key)?;
    }
    count_of(cur)
}

/// normalize.rs: "When input + output + reasoning == total and input +
/// output != total, the reasoning tokens are added to the output".
fn with_reasoning(i: Option<u64>, o: Option<u64>, r: Option<u64>, t: Option<u64>) -> Option<u64> {
    if let (Some(i), Some(o), Some(r), Some(t)) = (i, o, r, t) {
        let io = i.checked_add(o);
        if r > 0 && io != Some(t) && io.and_then(|x| x.checked_add(r)) == Some(t) {
            return o.checked_add(r);
        }
    }
    o
}

fn finish_six(mut s: Six) -> Option<Six> {
    if s[2].is_none() {
        if let (Some(i), Some(o)) = (s[0], s[1]) {
            s[2] = i.checked_add(o);
        }
    }
    s.iter().any(Option::is_some).then_some(s)
}

/// OpenAI Chat / Completions usage, by the rules at the top of normalize.rs.
#[must_use]
pub fn reference_openai(u: &Value) -> Option<Six> {
    let input = at(u, &["prompt_tokens"]).or(at(u, &["input_tokens"]));
    let completion = at(u, &["completion_tokens"]).or(at(u, &["output_tokens"]));
    let total = at(u, &["total_tokens"]);
    let reasoning =
        at(u, &["completion_tokens_details", "reasoning_tokens"]).or(at(u, &["reasoning_tokens"]));
    finish_six([
        input,
        with_reasoning(input, completion, reasoning, total),
        total,
        at(u, &["prompt_tokens_details", "cached_tokens"]).or(at(u, &["prompt_cache_hit_tokens"])),
        at(u, &["prompt_tokens_details", "cache_write_tokens"]),
        reasoning,
    ])
}

/// Responses usage, by the rules at the top of normalize.rs.
#[must_use]
pub fn reference_responses(u: &Value) -> Option<Six> {
    let input = at(u, &["input_tokens"]);
    let total = at(u, &["total_tokens"]);
    let reasoning = at(u, &["output_tokens_details", "reasoning_tokens"]);
    finish_six([
        input,
        with_reasoning(input, at(u, &["output_tokens"]), reasoning, total),
        total,
        at(u, &["input_tokens_details", "cached_tokens"]),
        at(u, &["input_tokens_details", "cache_write_tokens"]),
        reasoning,
    ])
}

fn non_null(v: Option<&Value>) -> Option<&Value> {
    v.filter(|v| !v.is_null())
}

/// The usage object a Chat chunk carries: top-level `usage`, else
/// `x_groq.usage`, else the first non-null `choices[].usage`.
#[must_use]
pub fn chat_usage(chunk: &Value) -> Option<&Value> {
    let o = chunk.as_object()?;
    let groq = o
        .get("x_groq")
        .and_then(Value::as_object)
        .and_then(|x| non_null(x.get("usage")));
    let in_choice = o.get("choices").and_then(Value::as_array).and_then(|cs| {
        cs.iter()
            .find_map(|c| non_null(c.as_object()?.get("usage")))
    });
    non_null(o.get("usage")).or(groq).or(in_choice)
}

/// The usage object a Responses event carries: `response.usage` of the
/// terminal events only. `name` is the SSE event name (it wins over the
/// data's `type` when it is a Responses name).
#[must_use]
pub fn responses_usage<'v>(name: &str, event: &'v Value) -> Option<&'v Value> {
    let o = event.as_object()?;
    let named = name.starts_with("response.") || name == "error" || name == "keepalive";
    let ty = if named {
        name
    } else {
        o.get("type").and_then(Value::as_str).unwrap_or("")
    };
    let terminal = matches!(
        ty,
        "response.completed" | "response.incomplete" | "response.failed" | "response.cancelled"
    );
    if !terminal {
        return None;
    }
    non_null(o.get("response")?.as_object()?.get("usage"))
}

/// `data:` lines carrying `json` exactly (one per LF-separated segment).
fn data_lines(json: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for segment in json.split(|&b| b == b'\n') {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(segment);
        out.push(b'\n');
    }
    out.push(b'\n');
    out
}

const CHAT_PRIMER: &[u8] =
    b"data: {\"id\":\"primer\",\"object\":\"chat.completion.chunk\",\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\"}}]}\n\n";
const RESPONSES_PRIMER: &[u8] = b"event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"id\":\"primer\",\"model\":\"m\",\"usage\":null}}\n\n";

/// Usage: never panics, chunk-invariant reports for any bytes and any API
/// hint; in the JSON modes the usage read from one event equals the
/// reference computed with serde_json.
pub fn check_usage(data: &[u8]) -> Seen {
    let input = Input::parse(data);
    let ctrl = input.ctrl;
    let config = if ctrl & 0x80 != 0 {
        DecoderConfig {
            max_event_size: 256,
            ..DecoderConfig::default()
        }
    } else {
        DecoderConfig::default()
    };
    let collect = ctrl & 0x40 != 0;
    match ctrl & 3 {
        0 | 1 => {
            let hint = ApiHint::ALL[usize::from((ctrl >> 2) & 0x0F) % ApiHint::ALL.len()];
            let split = chunks(input.body, input.seed);
            check_tap(hint, &config, collect, input.body, &split)
        }
        mode => check_usage_json(input, mode == 3, collect),
    }
}

fn check_usage_json(input: Input<'_>, responses: bool, collect: bool) -> Seen {
    let body = input.body;
    let ctrl = input.ctrl;
    let mut stream = Vec::new();
    let primed = ctrl & 4 != 0;
    let named = ctrl & 8 != 0;
    let (hint, name) = match (responses, ctrl & 16 != 0) {
        (true, _) => (
            ApiHint::Responses,
            if named { "response.completed" } else { "" },
        ),
        (false, false) => (ApiHint::ChatCompletions, ""),
        (false, true) => (ApiHint::Completions, ""),
    };
    if primed {
        stream.extend_from_slice(if responses {
            RESPONSES_PRIMER
        } else {
            CHAT_PRIMER
        });
    }
    if !name.is_empty() {
        stream.extend_from_slice(format!("event: {name}\n").as_bytes());
    }
    stream.extend_from_slice(&data_lines(body));
    // Any bytes: the stream-mode properties hold.
    let split = chunks(&stream, input.seed);
    let mut seen = check_tap(hint, &DecoderConfig::default(), collect, &stream, &split);
    // Clean JSON without CR (CR would end a data line): compare with the reference.
    if body.contains(&b'\r') {
        return seen;
    }
    let Some(value) = clean_json(body) else {
        return seen;
    };
    let raw = if responses {
        responses_usage(name, &value)
    } else {
        chat_usage(&value)
    };
    let normalise = if responses {
        reference_responses
    } else {
        reference_openai
    };
    let expected = raw.and_then(|u| normalise(u).map(|s| (s, u)));
    let mut tap = UsageTap::new(hint, DecoderConfig::default());
    tap.feed(&stream);
    let reports = tap.finish();
    let (last, earlier) = reports.split_last().expect("at least one report");
    for r in earlier {
        assert_eq!(r.usage, None, "usage in a report before the fuzzed event's");
    }
    match (&last.usage, expected) {
        (None, None) => {}
        (Some(got), Some((want, want_raw))) => {
            assert_eq!(six(got), want, "usage counts vs reference");
            let got_raw: Value = serde_json::from_str(&got.raw).expect("usage.raw is JSON");
            assert_eq!(&got_raw, want_raw, "usage.raw vs the event's usage object");
        }
        (got, want) => panic!("usage {got:?}, reference {want:?}"),
    }
    assert_eq!(last.invalid_json_events, 0, "clean JSON counted as invalid");
    seen.usage_reference = true;
    seen.usage_found = last.usage.is_some();
    seen
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
