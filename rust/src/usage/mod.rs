//! Token usage extraction from LLM streams ("UsageTap").
//!
//! [`UsageTap`] takes the raw bytes of a streaming response in chunks of any
//! size, frames them as Server-Sent Events and reads, per response in the
//! stream, what it cost ([`Usage`]) and how it ended ([`Status`]). Events
//! are read lazily with jiter: only the fields that matter are looked at,
//! everything else is skipped, and usage is found only by its JSON path in
//! each API (never a `"usage"` inside text, tool arguments or metadata).
//!
//! Supported: OpenAI Chat Completions and legacy Completions (and the
//! OpenAI-compatible servers: Azure, DeepSeek, Groq, Mistral, xAI,
//! Perplexity, Cerebras, Moonshot, Alibaba, vLLM, Ollama), OpenAI Responses
//! (and Azure, xAI, LM Studio), OpenAI Assistants runs, Anthropic Messages,
//! Gemini `streamGenerateContent`, Gemini Interactions and Cohere v2.
//! How each provider's usage object maps onto [`Usage`] (and the rules
//! chosen where providers disagree, such as xAI's reasoning tokens or
//! Cohere's billed units) is documented at the top of `normalize.rs`.

mod anthropic;
mod assistants;
mod builder;
mod chat;
mod cohere;
pub(crate) mod deep;
mod delta_template;
mod detect;
mod event;
mod gemini;
mod gemini_template;
mod interactions;
mod json;
mod lazy;
mod merge;
mod normalize;
mod responses;
mod scan;
mod tap;
mod template;
#[cfg(test)]
mod tests;
mod timeline;
mod types;

pub use builder::MAX_STEP_USAGES;
pub use lazy::{MAX_HELD_BYTES, MAX_HELD_READS};
pub use tap::MAX_REPORTS;
pub use timeline::{Timeline, TimelineEntry, MAX_TIMELINE_EVENTS, MAX_TIMELINE_TEXT};
pub use types::{Api, ApiHint, Report, Status, UnknownApiHint, Usage};

use crate::reassemble::Output;
use crate::sse::{Decoder, DecoderConfig, Dispatch, EventRef};
use lazy::{Held, Reads};
use tap::Tap;
use template::TextSpan;

/// Incremental usage extractor over a byte stream.
///
/// ```
/// use ssetally::usage::{ApiHint, Status, UsageTap};
/// use ssetally::DecoderConfig;
///
/// let mut tap = UsageTap::new(ApiHint::Auto, DecoderConfig::default());
/// tap.feed(b"data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":\"m\",");
/// tap.feed(b"\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2,\"total_tokens\":5}}\n\n");
/// tap.feed(b"data: [DONE]\n\n");
/// let reports = tap.finish();
/// assert_eq!(reports[0].usage.as_ref().unwrap().total_tokens, Some(5));
/// assert_eq!(reports[0].status, Status::Completed);
/// ```
#[derive(Debug)]
pub struct UsageTap {
    decoder: Decoder,
    tap: Tap,
    /// Reassembled output, one per response, when the caller asked for it.
    output: Option<Collect>,
    /// The raw bytes held for a collection at the end, when the caller asked
    /// for the output only where usage is missing.
    held: Option<Box<Held>>,
    /// The hint given, for a replay of the held bytes.
    hint: ApiHint,
    /// The per-event timing log, when the caller asked for it.
    timeline: Option<Box<Timeline>>,
    /// `finish` was called: the output stays readable until the next stream
    /// begins.
    finished: bool,
}

impl UsageTap {
    #[must_use]
    pub fn new(api: ApiHint, config: DecoderConfig) -> Self {
        let tap = Tap::new(api, config.max_event_size);
        Self {
            decoder: Decoder::new(config),
            tap,
            output: None,
            held: None,
            hint: api,
            timeline: None,
            finished: false,
        }
    }

    /// Also reassemble the output (text, tool calls, per choice). This parses
    /// every event fully, so it is off unless asked for.
    #[must_use]
    pub fn collecting_output(mut self) -> Self {
        self.output = Some(Collect::default());
        self
    }

    /// Reassemble the output only where it is needed for an estimate: when
    /// some response of the stream came without usage. The stream's raw
    /// bytes are held (up to [`MAX_HELD_BYTES`]) and read again by a
    /// collecting tap at [`UsageTap::finish`]; a longer stream is collected
    /// as it comes once it passes the bound. Reports and output are those of
    /// [`UsageTap::collecting_output`], but the output is None until the
    /// stream ends, and after it when every response gave its usage. Not
    /// with a timeline (a timeline's tap collects as it comes).
    #[must_use]
    pub fn collecting_output_lazily(mut self) -> Self {
        if self.timeline.is_none() {
            self.held = Some(Box::default());
        } else {
            self.output = Some(Collect::default());
        }
        self
    }

    /// Every event read the slow way: the reference for the fast paths.
    #[cfg(test)]
    pub(crate) fn slow_only(mut self) -> Self {
        self.tap.slow_only = true;
        self
    }

    /// Also keep the per-event timing log ([`Timeline`]): each
    /// output-bearing event's read, text and running usage. Off unless
    /// asked for; give each read's clock reading with [`UsageTap::stamp`].
    #[must_use]
    pub fn with_timeline(mut self) -> Self {
        self.timeline = Some(Box::default());
        if self.held.take().is_some() {
            self.output = Some(Collect::default());
        }
        self
    }

    /// The timing log so far (None unless asked for); it stays readable
    /// after [`UsageTap::finish`] until the next stream begins.
    #[must_use]
    pub fn timeline(&self) -> Option<&Timeline> {
        self.timeline.as_deref()
    }

    /// Gives the output events of the reads since the last call the clock
    /// reading `at` (no-op without a timeline).
    pub fn stamp(&mut self, at: f64) {
        if let Some(t) = self.timeline.as_mut() {
            t.stamp(at);
        }
    }

    /// The output of the current (after [`UsageTap::finish`], the last)
    /// response reassembled so far (None unless collecting).
    #[must_use]
    pub fn output(&self) -> Option<&Output> {
        self.output.as_ref().map(|c| &c.cur)
    }

    /// The output of every response of the stream, in order (one per
    /// report of [`UsageTap::finish`]), each with its response id; empty
    /// unless collecting.
    #[must_use]
    pub fn outputs(&self) -> Vec<&Output> {
        match &self.output {
            Some(c) => c.done.iter().chain(std::iter::once(&c.cur)).collect(),
            None => Vec::new(),
        }
    }

    /// Output-bearing events seen so far, over all responses of the stream.
    #[must_use]
    pub fn delta_chunks(&self) -> u64 {
        self.tap.delta_chunks()
    }

    /// The id of the response being read (the first one of the stream).
    #[must_use]
    pub fn response_id(&self) -> Option<String> {
        self.tap.response_id()
    }

    /// Feeds the next bytes of the stream. Never panics, whatever the bytes.
    pub fn feed(&mut self, chunk: &[u8]) {
        if std::mem::take(&mut self.finished) {
            self.take_output();
            if let Some(t) = self.timeline.as_mut() {
                **t = Timeline::default();
            }
            if let Some(held) = self.held.as_mut() {
                held.reset();
                self.output = None;
            }
        }
        if let Some(held) = self.held.as_mut() {
            if held.holding() && !held.hold(chunk) {
                let reads = held.spill();
                self.take_state_of(self.replayed(&reads));
            }
        }
        let Self {
            decoder,
            tap,
            output,
            timeline,
            ..
        } = self;
        // Bytes go to the report that is current when the chunk begins; an
        // oversized event to the one current where it was discarded.
        tap.add_bytes(chunk.len() as u64);
        // The raw reading gives the text of what it reads to the output on
        // the chat and Anthropic templates only.
        let raw = timeline.is_none() && tap.reads_raw() && (output.is_none() || tap.raw_text());
        let out_of_memory = if raw {
            feed_raw(decoder, tap, output, chunk)
        } else {
            decoder
                .feed_each(chunk, |d| on_dispatch(tap, output, timeline, d))
                .out_of_memory
        };
        if out_of_memory > 0 {
            tap.warn(format!(
                "{out_of_memory} event(s) were discarded because memory to buffer them could not be allocated"
            ));
        }
    }

    /// Bytes of memory the framing buffers hold (see
    /// [`Decoder::retained_capacity`]).
    #[must_use]
    pub fn retained_capacity(&self) -> usize {
        self.decoder.retained_capacity() + self.held.as_ref().map_or(0, |h| h.capacity())
    }

    /// A collecting tap that read `reads` from the start of a stream.
    fn replayed(&self, reads: &Reads) -> Self {
        let mut eager = Self::new(self.hint, self.decoder.config().clone()).collecting_output();
        #[cfg(test)]
        {
            eager.tap.slow_only = self.tap.slow_only;
        }
        for read in reads.each() {
            eager.feed(read);
        }
        eager
    }

    /// Goes on from where `other` is: its framing, reports and output.
    fn take_state_of(&mut self, other: Self) {
        self.decoder = other.decoder;
        self.tap = other.tap;
        self.output = other.output;
    }

    /// Ends the stream: one report per response seen, in order, and always
    /// at least one (an empty stream gives a truncated report without
    /// usage); at most [`MAX_REPORTS`], the last one taking the rest of a
    /// stream with more responses (with a warning). The tap is reset and can
    /// take a new stream.
    ///
    /// A last event whose blank line never came is still read (servers that
    /// close right after it exist), with a warning; an unfinished line that
    /// is not valid JSON is counted as invalid.
    pub fn finish(&mut self) -> Vec<Report> {
        let reports = self.finish_read();
        let Some(held) = self.held.as_mut() else {
            return reports;
        };
        if reports.iter().all(|r| r.usage.is_some()) {
            // Collected as it came past the bound, or not at all: not needed.
            held.reset();
            self.output = None;
            return reports;
        }
        if !held.holding() {
            return reports;
        }
        // Usage is missing: the output is read from the held bytes after all.
        let reads = held.spill();
        let mut eager = self.replayed(&reads);
        let reports = eager.finish();
        self.take_state_of(eager);
        reports
    }

    /// [`UsageTap::finish`] of the bytes read so far (no replay).
    fn finish_read(&mut self) -> Vec<Report> {
        self.finished = true;
        let Self {
            decoder,
            tap,
            output,
            timeline,
            ..
        } = self;
        let status = decoder.finish_flushing_each(|d| on_dispatch(tap, output, timeline, d));
        if let Some(c) = output.as_mut() {
            c.cur.close();
            if c.cur.response_id.is_none() {
                c.cur.response_id = tap.current_id().map(str::to_owned);
            }
        }
        if let Some(t) = timeline.as_mut() {
            t.stamp_last();
        }
        if status.flushed_partial {
            tap.warn(
                "the stream ended without the blank line after its last event; it was read anyway"
                    .to_owned(),
            );
        }
        if status.dropped_partial {
            tap.warn("the stream ended inside an event; the partial event was dropped".to_owned());
        }
        tap.finish()
    }

    /// Takes the reassembled output, leaving an empty one. The output of a
    /// finished stream is also dropped when the next stream's bytes arrive.
    pub fn take_output(&mut self) -> Option<Output> {
        self.output.as_mut().map(|c| std::mem::take(c).cur)
    }

    /// The per-event step, for callers that frame SSE themselves.
    pub fn on_event(&mut self, ev: EventRef<'_>) {
        self.tap.on_event(ev);
    }

    /// Counts `n` bytes towards the current report (for callers that use
    /// [`UsageTap::on_event`] directly).
    pub fn add_bytes(&mut self, n: u64) {
        self.tap.add_bytes(n);
    }

    /// The `store` flag the open response (else the last closed one of this
    /// stream) echoed, when it said (Responses `response.created`).
    #[must_use]
    pub fn store(&self) -> Option<bool> {
        self.tap.store()
    }

    /// The API detected so far (or the one given as hint).
    #[must_use]
    pub fn api(&self) -> Api {
        self.tap.api()
    }

    /// The reports so far, the open one included, without ending the
    /// stream.
    #[must_use]
    pub fn snapshot(&self) -> Vec<Report> {
        self.tap.snapshot()
    }

    #[must_use]
    pub fn config(&self) -> &DecoderConfig {
        self.decoder.config()
    }
}

/// The reassembled outputs of a stream: one per response, as the tap
/// starts a new report.
#[derive(Debug, Default)]
struct Collect {
    /// Outputs of the responses already closed.
    done: Vec<Output>,
    cur: Output,
    /// The current output's cap warning was given.
    cap_warned: bool,
    /// The template shape whose events were seen to add their text to one
    /// choice and nothing else, and that choice: their text is appended
    /// without parsing the event.
    fast: Option<(u32, u64)>,
    /// The last template shape so checked (once each).
    checked: Option<u32>,
}

impl Collect {
    fn on_event(&mut self, tap: &mut Tap, closed_before: usize, data: &[u8]) {
        if tap.closed() > closed_before {
            // The event began a new response: the output so far was the
            // previous one's.
            let mut old = std::mem::take(&mut self.cur);
            old.close();
            old.response_id = tap.last_closed_id().map(str::to_owned);
            self.done.push(old);
            self.cap_warned = false;
        }
        let span = tap.take_text();
        if !self.fast_text(span, data) {
            let data = span.map_or(data, |s| &data[s.data.0..s.data.1]);
            self.cur.on_event(data);
        }
        if self.cur.response_id.is_none() {
            self.cur.response_id = tap.current_id().map(str::to_owned);
        }
        if !self.cap_warned {
            if let Some(warning) = self.cur.cap_warning() {
                self.cap_warned = true;
                tap.warn(warning);
            }
        }
    }

    /// Appends the text of an event a template fast path read (`span`, in
    /// `bytes`), when events of that shape were seen to add their text to
    /// one choice and nothing else: the first event of each shape is parsed
    /// in full as well to see it. False when the event must be parsed.
    fn fast_text(&mut self, span: Option<TextSpan>, bytes: &[u8]) -> bool {
        let Some(span) = span else {
            return false;
        };
        let text = &bytes[span.text.0..span.text.1];
        if let Some((shape, choice)) = self.fast {
            if shape == span.shape {
                return self.cur.append_text(choice, text);
            }
        }
        if self.checked == Some(span.shape) {
            return false;
        }
        self.checked = Some(span.shape);
        match Output::text_only(&bytes[span.data.0..span.data.1], text) {
            Some(choice) => {
                self.fast = Some((span.shape, choice));
                self.cur.append_text(choice, text)
            }
            None => false,
        }
    }
}

/// Feeds `chunk` to the decoder, except the events the tap reads from the
/// raw bytes ([`Tap::read_raw`]) while the decoder is between events: the
/// decoder gets the bytes up to each blank line that the tap did not read.
/// Returns the count of events discarded for want of memory.
fn feed_raw(
    decoder: &mut Decoder,
    tap: &mut Tap,
    output: &mut Option<Collect>,
    chunk: &[u8],
) -> u32 {
    let mut rest = chunk;
    let mut out_of_memory = 0u32;
    loop {
        if decoder.at_event_boundary() {
            let mut closed = tap.closed();
            while let Some(len) = tap.read_raw(rest) {
                if let Some(c) = output.as_mut() {
                    c.on_event(tap, closed, &rest[..len]);
                    closed = tap.closed();
                }
                rest = &rest[len..];
            }
        }
        let head = match tap.needles().blank_line.find(rest) {
            Some(at) if at + 2 < rest.len() && tap.reads_raw() => &rest[..at + 2],
            _ => rest,
        };
        let status = decoder.feed_each(head, |d| on_dispatch(tap, output, &mut None, d));
        out_of_memory = out_of_memory.saturating_add(status.out_of_memory);
        rest = &rest[head.len()..];
        if rest.is_empty() {
            return out_of_memory;
        }
    }
}

fn on_dispatch(
    tap: &mut Tap,
    output: &mut Option<Collect>,
    timeline: &mut Option<Box<Timeline>>,
    d: Dispatch<'_>,
) {
    match d {
        Dispatch::Event(ev) => {
            let closed = tap.closed();
            match timeline.as_mut() {
                None => tap.on_event(ev),
                Some(t) => {
                    let before = tap.mark();
                    tap.on_event(ev);
                    // The log shows the running usage after each event.
                    tap.flush_usage();
                    let (carried, set_usage) = before.changes(tap.mark());
                    t.on_event(ev.data, carried, set_usage.then(|| tap.output_tokens()));
                }
            }
            if let Some(c) = output.as_mut() {
                c.on_event(tap, closed, ev.data);
            }
        }
        Dispatch::Oversized => tap.add_oversized(1),
    }
}

// The Python binding moves taps between threads.
const _: fn() = || {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<UsageTap>();
};
