//! The per-event step: detect the API, hand the event to its parser, and
//! keep one report per response, starting a new one when the stream moves
//! on to another response.

use super::builder::{Builder, Relation};
use super::delta_template::DeltaTemplate;
use super::event::EventInfo;
use super::gemini_template::{GeminiMatch, GeminiTemplate};
use super::json::{decode, fields, non_null, str_body, Invalid};
use super::scan::Needles;
use super::template::{ChunkTemplate, TextSpan, CHAT_CONTENT};
use super::timeline::Mark;
use super::types::{Api, ApiHint, Report};
use super::{anthropic, assistants, chat, cohere, detect, gemini, interactions, responses};
use crate::sse::EventRef;
use crate::surrogates::replace_lone_surrogates;

#[derive(Debug)]
pub(crate) struct Tap {
    hint: ApiHint,
    api: Api,
    needles: &'static Needles,
    max_event_size: usize,
    cur: Builder,
    reports: Vec<Report>,
    /// The learned shape of this stream's content chunks (chat and
    /// Anthropic text).
    template: Option<ChunkTemplate>,
    /// Shapes learned into `template` so far (names each one).
    shapes: u32,
    /// Where the last event read by `template` had its text (cleared at
    /// every event).
    text: Option<TextSpan>,
    /// The learned shape of this stream's delta events (Responses only).
    delta_template: Option<DeltaTemplate>,
    /// The learned shape of this stream's text chunks (Gemini only).
    gemini_template: Option<GeminiTemplate>,
    /// The usage object of the last Gemini chunk the fast path read, not yet
    /// given to the report (see [`Tap::fast_gemini`]).
    pending_usage: Vec<u8>,
    /// The zero mask of `pending_usage`; None when nothing is pending.
    pending_zeros: Option<u64>,
    /// The numbers of the usage object the Gemini fast path read last
    /// (pending, or given to the report), while that is the report's usage
    /// (empty otherwise).
    gemini_counts: Vec<u64>,
    /// The zero mask of that usage object.
    gemini_zeros: u64,
    /// Where the Gemini fast path reads a chunk's numbers.
    gemini_scratch: Vec<u64>,
    /// How many more times a template may be learned (a stream whose chunks
    /// never repeat their shape must not pay for learning on every chunk).
    relearn_budget: u8,
    /// [`MAX_REPORTS`] was reached in this stream.
    capped: bool,
    /// Every event takes the slow path: the reference the fast paths are
    /// tested against.
    #[cfg(test)]
    pub(crate) slow_only: bool,
}

const RELEARN_BUDGET: u8 = 8;

/// Most reports one stream gives: a hostile stream of tiny responses must
/// not cost a report each (memory would grow several times faster than the
/// stream).
pub const MAX_REPORTS: usize = 1024;

impl Tap {
    pub(crate) fn new(hint: ApiHint, max_event_size: usize) -> Self {
        Self {
            hint,
            api: Api::from(hint),
            needles: Needles::shared(),
            max_event_size,
            cur: Builder::default(),
            reports: Vec::new(),
            template: None,
            shapes: 0,
            text: None,
            delta_template: None,
            gemini_template: None,
            pending_usage: Vec::new(),
            pending_zeros: None,
            gemini_counts: Vec::new(),
            gemini_zeros: 0,
            gemini_scratch: Vec::new(),
            relearn_budget: RELEARN_BUDGET,
            capped: false,
            #[cfg(test)]
            slow_only: false,
        }
    }

    pub(crate) fn api(&self) -> Api {
        self.api
    }

    pub(crate) fn delta_chunks(&self) -> u64 {
        let closed: u64 = self.reports.iter().map(|r| r.delta_chunks).sum();
        closed + self.cur.report.delta_chunks
    }

    /// Where the stream stands, for the timeline to tell what an event
    /// changed.
    pub(crate) fn mark(&self) -> Mark {
        Mark {
            reports: self.reports.len(),
            deltas: self.cur.report.delta_chunks,
            usage_updates: self.cur.usage_updates,
        }
    }

    /// The running output token count of the open response.
    pub(crate) fn output_tokens(&self) -> Option<u64> {
        self.cur.output_tokens()
    }

    pub(crate) fn response_id(&self) -> Option<String> {
        self.reports
            .first()
            .and_then(|r| r.response_id.clone())
            .or_else(|| self.cur.report.response_id.clone())
    }

    /// Reports closed so far in this stream (the open one not counted).
    pub(crate) fn closed(&self) -> usize {
        self.reports.len()
    }

    /// The id of the last closed report.
    pub(crate) fn last_closed_id(&self) -> Option<&str> {
        self.reports.last().and_then(|r| r.response_id.as_deref())
    }

    /// The `store` flag of the open report, else of the last closed one.
    pub(crate) fn store(&self) -> Option<bool> {
        self.cur
            .report
            .store
            .or_else(|| self.reports.iter().rev().find_map(|r| r.store))
    }

    /// The id of the open report.
    pub(crate) fn current_id(&self) -> Option<&str> {
        self.cur.report.response_id.as_deref()
    }

    pub(crate) fn add_bytes(&mut self, n: u64) {
        let bytes = &mut self.cur.report.bytes;
        *bytes = bytes.saturating_add(n);
    }

    pub(crate) fn add_oversized(&mut self, n: u64) {
        let oversized = &mut self.cur.report.oversized_events;
        *oversized = oversized.saturating_add(n);
    }

    pub(crate) fn warn(&mut self, warning: String) {
        self.cur.report.warnings.push(warning);
    }

    pub(crate) fn on_event(&mut self, ev: EventRef<'_>) {
        self.text = None;
        let data = ev.data.trim_ascii();
        if data == b"[DONE]" {
            self.cur.on_done(self.api);
        } else if let Some(delta) = self.fast(ev.event, data) {
            self.cur.report.delta_chunks += u64::from(delta);
            // The span in `ev.data`, which may have led with white space.
            let lead = ev.data.len() - ev.data.trim_ascii_start().len();
            if let Some(span) = self.text.as_mut() {
                span.data = (lead, lead + data.len());
                span.text = (span.text.0 + lead, span.text.1 + lead);
            }
        } else if !data.is_empty() {
            // Empty data (a bare `data:` keep-alive) carries nothing.
            self.flush_usage();
            self.gemini_counts.clear();
            match self.parse(ev.event, data) {
                Ok(info) => {
                    if info.delta {
                        self.learn(ev.event, data, &info);
                    }
                    self.apply(&info);
                }
                Err(Invalid) => self.parse_repaired(ev.event, data),
            }
        }
        self.cur.report.events += 1;
    }

    /// An event jiter refused: lone surrogate escapes are valid JSON that it
    /// does not take, so the event is read again with them replaced.
    fn parse_repaired(&mut self, name: &[u8], data: &[u8]) {
        let read = replace_lone_surrogates(data).is_some_and(|fixed| {
            let info = self.parse(name, &fixed);
            info.map(|info| self.apply(&info)).is_ok()
        });
        if !read {
            self.cur.report.invalid_json_events += 1;
        }
    }

    /// The chat hot path (chat and legacy completions only): a plain content
    /// chunk only bumps the counters.
    fn fast_chat(&mut self, name: &[u8], data: &[u8]) -> Option<bool> {
        if !self.cur.fast_ok() {
            return None;
        }
        if let Some(delta) = self.text_template(data) {
            return Some(delta);
        }
        let delta = chat::fast(data, self.api, self.needles)?;
        if delta && self.relearn_budget > 0 && self.api == Api::ChatCompletions {
            let learned = ChunkTemplate::learn(data, CHAT_CONTENT).map(|t| t.for_event(name));
            self.adopt_text(learned);
        }
        Some(delta)
    }

    /// The chat and Anthropic template fast path: the delta flag of an
    /// event of the learned shape, with where its text is noted.
    fn text_template(&mut self, data: &[u8]) -> Option<bool> {
        let template = self.template.as_ref()?;
        let (delta, text_end) = template.matches_text(data)?;
        self.text = Some(TextSpan {
            shape: self.shapes,
            data: (0, data.len()),
            text: (template.text_start(), text_end),
        });
        Some(delta)
    }

    fn adopt_text(&mut self, learned: Option<ChunkTemplate>) {
        if learned.is_some() {
            self.shapes = self.shapes.wrapping_add(1);
        }
        adopt(&mut self.template, &mut self.relearn_budget, learned);
    }

    /// Where the last event read by the chat or Anthropic template had its
    /// text (None for any other event).
    pub(crate) fn take_text(&mut self) -> Option<TextSpan> {
        self.text.take()
    }

    /// Whether [`Tap::read_raw`] notes the text of what it reads
    /// ([`Tap::take_text`]): the text template's APIs.
    pub(crate) fn raw_text(&self) -> bool {
        matches!(self.api, Api::ChatCompletions | Api::AnthropicMessages)
    }

    /// The Gemini hot path: a text chunk shaped like an earlier one bumps the
    /// counter and keeps its usage object aside. A running total that only
    /// grew since the last one read (input unchanged, the same counts zero)
    /// is what the report would keep either way, without a warning, so it
    /// only replaces the pending one; reading it waits until another event
    /// comes. Any other usage is given to the report at once, as the slow
    /// path would.
    fn fast_gemini(&mut self, data: &[u8]) -> Option<bool> {
        if !self.cur.gemini_fast_ok() {
            return None;
        }
        let template = self.gemini_template.as_ref()?;
        let (m, end) = template.match_len(data, &self.gemini_counts, &mut self.gemini_scratch)?;
        if end != data.len() {
            return None;
        }
        self.take_gemini(m)
    }

    /// What the Gemini fast path does with a chunk that matched.
    fn take_gemini(&mut self, m: GeminiMatch<'_>) -> Option<bool> {
        // Memory that cannot be had sends the chunk the slow way.
        self.pending_usage.try_reserve(m.usage.len()).ok()?;
        std::mem::swap(&mut self.gemini_counts, &mut self.gemini_scratch);
        if m.grew && m.zeros == self.gemini_zeros {
            self.pending_usage.clear();
            self.pending_usage.extend_from_slice(m.usage);
            self.pending_zeros = Some(m.zeros);
        } else {
            self.flush_usage();
            self.cur.apply(self.api, &pending_info(m.usage));
            self.gemini_zeros = m.zeros;
        }
        Some(m.delta)
    }

    pub(crate) fn needles(&self) -> &'static Needles {
        self.needles
    }

    /// Whether [`Tap::read_raw`] may read events: a shape was learned.
    pub(crate) fn reads_raw(&self) -> bool {
        match self.api {
            Api::ChatCompletions | Api::AnthropicMessages => self.template.is_some(),
            Api::Responses => self.delta_template.is_some(),
            Api::Gemini => self.gemini_template.is_some(),
            _ => false,
        }
    }

    /// The hot paths on raw bytes: when `bytes` begin with a whole event
    /// (`event: <name>` when the template's events had one (Responses: the
    /// template's name), one `data: `
    /// line and the blank line, LF only, within `max_event_size`) whose
    /// data has the learned shape, the event is counted as
    /// [`Tap::on_event`] would count it and its length returned. The SSE
    /// decoder must be between events.
    pub(crate) fn read_raw(&mut self, bytes: &[u8]) -> Option<usize> {
        #[cfg(test)]
        if self.slow_only {
            return None;
        }
        self.text = None;
        if self.api == Api::Responses {
            return self.read_raw_delta(bytes);
        }
        let template = match self.api {
            Api::ChatCompletions | Api::AnthropicMessages => self.template.as_ref(),
            Api::Gemini => return self.read_raw_gemini(bytes),
            _ => return None,
        }?;
        if self.api == Api::ChatCompletions && !self.cur.fast_ok() {
            return None;
        }
        let (delta, len, text_end) = template.match_raw(bytes)?;
        if len > self.max_event_size {
            return None;
        }
        let (data_start, text_start) = template.raw_starts();
        self.text = Some(TextSpan {
            shape: self.shapes,
            data: (data_start, len - 2),
            text: (text_start, text_end),
        });
        self.cur.report.delta_chunks += u64::from(delta);
        self.cur.report.events += 1;
        Some(len)
    }

    /// [`Tap::read_raw`] for Gemini (which sends no event names).
    fn read_raw_gemini(&mut self, bytes: &[u8]) -> Option<usize> {
        if !self.cur.gemini_fast_ok() {
            return None;
        }
        let data = bytes.strip_prefix(b"data: ")?;
        let at = b"data: ".len();
        let template = self.gemini_template.as_ref()?;
        let (m, end) = template.match_len(data, &self.gemini_counts, &mut self.gemini_scratch)?;
        if !data[end..].starts_with(b"\n\n") || at + end + 2 > self.max_event_size {
            return None;
        }
        let delta = self.take_gemini(m)?;
        self.cur.report.delta_chunks += u64::from(delta);
        self.cur.report.events += 1;
        Some(at + end + 2)
    }

    /// Gives the pending Gemini usage to the report, as the slow path would
    /// have on its chunk.
    pub(crate) fn flush_usage(&mut self) {
        if self.pending_zeros.take().is_some() {
            let info = pending_info(&self.pending_usage);
            self.cur.apply(self.api, &info);
        }
    }

    /// The hot paths: an output delta shaped like an earlier one only bumps
    /// the counter (such an event changes nothing else in a report; a
    /// Gemini chunk's usage is kept aside).
    fn fast(&mut self, name: &[u8], data: &[u8]) -> Option<bool> {
        #[cfg(test)]
        if self.slow_only {
            return None;
        }
        match self.api {
            Api::ChatCompletions | Api::Completions => self.fast_chat(name, data),
            Api::Responses => self.delta_template.as_ref()?.matches(name, data),
            Api::AnthropicMessages => self.text_template(data),
            Api::Gemini => self.fast_gemini(data),
            _ => None,
        }
    }

    /// [`Tap::read_raw`] for Responses delta events: their data ends in
    /// bytes that change (`sequence_number`), so the line end is searched.
    fn read_raw_delta(&mut self, bytes: &[u8]) -> Option<usize> {
        let template = self.delta_template.as_ref()?;
        let name = template.name();
        let line = bytes.strip_prefix(b"event: ")?.strip_prefix(name)?;
        let data = line.strip_prefix(b"\n")?.strip_prefix(b"data: ")?;
        let end = memchr::memchr2(b'\n', b'\r', data)?;
        let at = b"event: \ndata: ".len() + name.len();
        if !data[end..].starts_with(b"\n\n") || at + end + 2 > self.max_event_size {
            return None;
        }
        let delta = template.matches(name, &data[..end])?;
        self.cur.report.delta_chunks += u64::from(delta);
        self.cur.report.events += 1;
        Some(at + end + 2)
    }

    /// Learns the shape of a delta event the slow path just read (chat
    /// learns in [`Tap::fast_chat`]).
    fn learn(&mut self, name: &[u8], data: &[u8], info: &EventInfo<'_>) {
        if self.relearn_budget == 0 {
            return;
        }
        match self.api {
            Api::Responses if name.ends_with(b".delta") => {
                let learned = DeltaTemplate::learn(name, data, self.needles);
                adopt(&mut self.delta_template, &mut self.relearn_budget, learned);
            }
            Api::AnthropicMessages => {
                let learned = ChunkTemplate::learn_anthropic(data).map(|t| t.for_event(name));
                self.adopt_text(learned);
            }
            Api::Gemini => {
                let learned = GeminiTemplate::learn(data, info);
                adopt(&mut self.gemini_template, &mut self.relearn_budget, learned);
                self.gemini_counts.clear();
            }
            _ => {}
        }
    }

    fn parse<'a>(&mut self, name: &'a [u8], data: &'a [u8]) -> Result<EventInfo<'a>, Invalid> {
        if self.api == Api::Unknown {
            match detect::detect(name, data)? {
                Some(api) => self.api = api,
                None => return unknown(data),
            }
        }
        match self.api {
            Api::ChatCompletions | Api::Completions => chat::parse(data, self.api),
            Api::Responses => responses::parse(name, data, self.needles),
            Api::Assistants => assistants::parse(name, data),
            Api::AnthropicMessages => anthropic::parse(name, data),
            Api::Gemini => gemini::parse(data),
            Api::GeminiInteractions => interactions::parse(data),
            Api::Cohere => cohere::parse(name, data),
            Api::Unknown => unknown(data),
        }
    }

    fn apply(&mut self, info: &EventInfo<'_>) {
        // Nothing follows `[DONE]` in a chat stream: a chunk after it starts
        // the next stream, even one that reuses the id.
        let chat_like = matches!(self.api, Api::ChatCompletions | Api::Completions);
        if chat_like && self.cur.report.done && info.id.is_some() {
            self.rotate(None);
        }
        match self.cur.relation(info) {
            Relation::Same => {}
            Relation::Duplicate => return,
            Relation::Next => self.rotate(None),
            Relation::Spliced => {
                let new = info.id.map(decode).unwrap_or_default();
                let old = self.cur.report.response_id.clone().unwrap_or_default();
                let warning = format!(
                    "response {new} started before response {old} finished; they are reported separately"
                );
                self.rotate(Some(warning));
            }
            Relation::OtherAfterUsage if chat_like => self.rotate_unfinished(info),
            Relation::OtherAfterUsage => {}
        }
        self.cur.apply(self.api, info);
    }

    /// A chat chunk with a new id after the current response's usage but
    /// before any finish chunk: a second response whose first one never
    /// finished. It is reported apart, with a warning naming both.
    fn rotate_unfinished(&mut self, info: &EventInfo<'_>) {
        let new = info.id.map(decode).unwrap_or_default();
        let old = self.cur.report.response_id.clone().unwrap_or_default();
        let warning = format!(
            "response {new} began after response {old} reported its usage but without its finish chunk; they are reported separately"
        );
        self.rotate(Some(warning));
    }

    /// Closes the current report and starts the next one; past
    /// [`MAX_REPORTS`] the current report takes the rest of the stream.
    fn rotate(&mut self, warning: Option<String>) {
        self.flush_usage();
        if self.reports.len() + 1 >= MAX_REPORTS {
            if !self.capped {
                self.capped = true;
                self.cur.report.warnings.push(format!(
                    "more than {MAX_REPORTS} responses in one stream; the rest were read into this report (its usage is the last one seen)"
                ));
            }
            return;
        }
        let mut old = std::mem::take(&mut self.cur);
        if let Some(w) = warning {
            old.report.warnings.push(w.clone());
            self.cur.report.warnings.push(w);
        }
        self.reports.push(old.finish(self.api, self.max_event_size));
        self.template = None;
        self.delta_template = None;
        self.gemini_template = None;
        self.gemini_counts.clear();
        self.relearn_budget = RELEARN_BUDGET;
    }

    /// All reports so far, the open one included, without resetting.
    pub(crate) fn snapshot(&self) -> Vec<Report> {
        let mut out = self.reports.clone();
        if out.is_empty() || !self.cur.is_empty() {
            let mut cur = self.cur.clone();
            if self.pending_zeros.is_some() {
                cur.apply(self.api, &pending_info(&self.pending_usage));
            }
            out.push(cur.finish(self.api, self.max_event_size));
        }
        out
    }

    /// Closes the stream: every report, in order (at least one), and a
    /// fresh state for the next stream.
    pub(crate) fn finish(&mut self) -> Vec<Report> {
        self.flush_usage();
        let cur = std::mem::take(&mut self.cur);
        let mut reports = std::mem::take(&mut self.reports);
        if reports.is_empty() || !cur.is_empty() {
            reports.push(cur.finish(self.api, self.max_event_size));
        }
        self.api = Api::from(self.hint);
        self.template = None;
        self.delta_template = None;
        self.gemini_template = None;
        self.gemini_counts.clear();
        self.pending_usage = Vec::new();
        self.relearn_budget = RELEARN_BUDGET;
        self.capped = false;
        reports
    }
}

/// Takes a newly learned shape. An event that gives none (a reasoning or
/// tool-call delta between text deltas) keeps the shape already learned and
/// costs no budget: the budget bounds shapes that stop matching.
fn adopt<T>(slot: &mut Option<T>, budget: &mut u8, learned: Option<T>) {
    if let Some(shape) = learned {
        *slot = Some(shape);
        *budget -= 1;
    }
}

/// What the slow path would apply for a Gemini text chunk's usage (its
/// other effects, the delta, were counted already).
fn pending_info(usage: &[u8]) -> EventInfo<'_> {
    EventInfo {
        usage: Some(usage),
        ..EventInfo::default()
    }
}

/// Before the API is known, only a top-level error is understood (for
/// example Anthropic's `event: error` sent before `message_start`).
fn unknown(data: &[u8]) -> Result<EventInfo<'_>, Invalid> {
    let [error, ty] = fields(data, [b"error", b"type"])?;
    let mut info = EventInfo::default();
    if let Some(error) = non_null(error) {
        info.fail(error);
    } else if ty.and_then(str_body) == Some(b"error") {
        info.fail(data);
    }
    Ok(info)
}

#[cfg(test)]
mod tests;
