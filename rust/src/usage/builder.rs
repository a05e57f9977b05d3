//! Accumulates the events of one response into its [`Report`].

use std::collections::HashMap;

use super::event::EventInfo;
use super::json::{decode, lossy};
use super::merge::overlay;
use super::normalize::normalize_checked;
use super::types::{Api, Report, Status, Usage};

/// How an event relates to the response being built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Relation {
    /// Same response (or the event names none).
    Same,
    /// A start event repeating the current id: ignored.
    Duplicate,
    /// A new response after the current one finished.
    Next,
    /// A new response started while the current one was still open.
    Spliced,
    /// Another id on an event that does not open a response, after the
    /// current response reported its usage but no finish: for chat, whose
    /// chunks all carry the id, a new response that came without the
    /// previous one's finish chunk.
    OtherAfterUsage,
}

#[derive(Clone, Debug, Default)]
pub(crate) struct Builder {
    pub report: Report,
    /// Raw body of the response id, to compare with later events.
    id: Vec<u8>,
    usage: Option<Usage>,
    status: Option<Status>,
    /// The response stopped (finish reason, terminal event, `[DONE]`).
    finished: bool,
    /// [`MAX_STEP_USAGES`] was reached.
    steps_capped: bool,
    /// Where each kept step usage is, by step id (a step reported twice is
    /// kept once, its last usage).
    step_ids: HashMap<Vec<u8>, usize>,
    /// A second usage with other numbers was warned about.
    dup_warned: bool,
    /// The kept usage was given as the final one (not a running total).
    usage_final: bool,
    /// Warnings about rejected usage values given so far.
    value_warnings: usize,
    /// Usage objects taken so far (wrapping): tells the timeline which
    /// event set the usage.
    pub usage_updates: u32,
}

/// Most warnings about rejected usage values one report gives (a stream
/// that repeats a bad value in every chunk must not repeat the warning).
const MAX_VALUE_WARNINGS: usize = 8;

/// Most run-step usages one report keeps (a copy of each usage object is
/// kept, so a hostile stream of step events must not grow without bound).
pub const MAX_STEP_USAGES: usize = 1024;

impl Builder {
    /// Whether chat chunks may take the prefiltered path: the id and model
    /// are known and no finish signal has been seen, so a plain content
    /// chunk can change nothing but the delta count. After a usage chunk
    /// the full parse is needed again: a chunk with another id then starts
    /// a new response.
    pub(crate) fn fast_ok(&self) -> bool {
        !self.id.is_empty() && self.report.model.is_some() && !self.finished && self.usage.is_none()
    }

    /// Whether Gemini text chunks may take their fast path: as for chat,
    /// but a usage seen does not stop it (every Gemini chunk carries one;
    /// a matching chunk repeats the response id of the chunk its template
    /// came from, so it cannot start another response).
    pub(crate) fn gemini_fast_ok(&self) -> bool {
        !self.id.is_empty() && self.report.model.is_some() && !self.finished
    }

    pub(crate) fn relation(&self, info: &EventInfo<'_>) -> Relation {
        let Some(id) = info.id else {
            return Relation::Same;
        };
        if self.id.is_empty() {
            return Relation::Same;
        }
        if self.id == id {
            return if info.starts {
                Relation::Duplicate
            } else {
                Relation::Same
            };
        }
        match (info.starts, self.finished) {
            (_, true) => Relation::Next,
            (true, false) => Relation::Spliced,
            (false, false) if self.usage.is_some() => Relation::OtherAfterUsage,
            (false, false) => Relation::Same,
        }
    }

    pub(crate) fn apply(&mut self, api: Api, info: &EventInfo<'_>) {
        if let Some(id) = info.id {
            if self.id.is_empty() {
                self.id = id.to_vec();
                self.report.response_id = Some(decode(id));
            }
        }
        if let (None, Some(model)) = (&self.report.model, info.model) {
            self.report.model = Some(decode(model));
        }
        if let Some(raw) = info.usage {
            self.take_usage(api, raw, info.merge_usage, info.final_usage);
        }
        if info.store.is_some() {
            self.report.store = info.store;
        }
        if let Some(raw) = info.step_usage {
            let seen = info.step_id.and_then(|id| self.step_ids.get(id).copied());
            if let Some(at) = seen {
                // A step reported again (a repeated `step.completed`): its
                // last usage replaces the first, never adds to it.
                let usage = self.usage_from(api, lossy(raw));
                if usage.has_counts() {
                    self.report.step_usages[at] = usage;
                }
            } else if self.report.step_usages.len() < MAX_STEP_USAGES {
                let usage = self.usage_from(api, lossy(raw));
                if usage.has_counts() {
                    if let Some(id) = info.step_id {
                        let at = self.report.step_usages.len();
                        self.step_ids.insert(id.to_vec(), at);
                    }
                    self.report.step_usages.push(usage);
                }
            } else if !self.steps_capped {
                self.steps_capped = true;
                self.report.warnings.push(format!(
                    "more than {MAX_STEP_USAGES} run steps with usage; the rest were not kept"
                ));
            }
        }
        if let Some(status) = info.status {
            if self
                .status
                .map_or(true, |s| status.severity() >= s.severity())
            {
                self.status = Some(status);
                if let Some(reason) = info.finish_reason {
                    self.report.finish_reason = Some(decode(reason));
                }
            }
        }
        if let Some(reason) = info.incomplete_reason {
            self.report.incomplete_reason = Some(decode(reason));
        }
        if let (None, Some(error)) = (&self.report.error, info.error) {
            self.report.error = Some(lossy(error));
        }
        self.report.delta_chunks += u64::from(info.delta);
        self.finished |= info.finished || info.terminal;
        self.report.done |= info.terminal;
    }

    /// The last usage wins, never a sum; a usage object without counts
    /// (Vertex's `trafficType`-only metadata) is ignored, and an all-zero
    /// one (Ollama's placeholders) does not replace a real one.
    fn take_usage(&mut self, api: Api, raw: &[u8], merge: bool, final_usage: bool) {
        let usage = match (&self.usage, merge) {
            (Some(previous), true) => {
                let merged = overlay(previous.raw.as_bytes(), raw);
                self.usage_from(api, merged)
            }
            _ => {
                // Normalise first: most ignored objects are never copied.
                let usage = self.normalize(api, raw);
                let keeps_real = self.usage.as_ref().is_some_and(|u| !u.is_zero());
                if !usage.has_counts() || (usage.is_zero() && keeps_real) {
                    return;
                }
                if let Some(previous) = self.usage.as_ref().filter(|_| !self.dup_warned) {
                    if differs(api, previous, &usage, self.usage_final) {
                        self.dup_warned = true;
                        let warning = format!(
                            "usage was reported more than once with different numbers ({} then {}); the last one is kept",
                            brief(previous),
                            brief(&usage)
                        );
                        self.report.warnings.push(warning);
                    }
                }
                Usage {
                    raw: lossy(raw),
                    ..usage
                }
            }
        };
        if usage.has_counts() {
            self.usage = Some(usage);
            // Only chat and Gemini send usage before the end (running totals).
            self.usage_final = final_usage
                || !matches!(
                    api,
                    Api::ChatCompletions | Api::Completions | Api::Gemini | Api::GeminiInteractions
                );
            self.usage_updates = self.usage_updates.wrapping_add(1);
        }
    }

    /// [`normalize_checked`], its warnings (a few per report) added to the
    /// report.
    fn normalize(&mut self, api: Api, raw: &[u8]) -> Usage {
        let mut warnings = Vec::new();
        let usage = normalize_checked(api, raw, &mut warnings);
        for warning in warnings {
            if self.value_warnings < MAX_VALUE_WARNINGS && !self.report.warnings.contains(&warning)
            {
                self.value_warnings += 1;
                self.report.warnings.push(warning);
            }
        }
        usage
    }

    fn usage_from(&mut self, api: Api, raw: String) -> Usage {
        let mut usage = self.normalize(api, raw.as_bytes());
        usage.raw = raw;
        usage
    }

    /// `data: [DONE]`: the transport-level end of the stream. For chat and
    /// legacy completions it also means the answer completed when no finish
    /// reason said otherwise; event-typed APIs end only with their own
    /// terminal events.
    pub(crate) fn on_done(&mut self, api: Api) {
        self.report.done = true;
        self.finished = true;
        if matches!(api, Api::ChatCompletions | Api::Completions) && self.status.is_none() {
            self.status = Some(Status::Completed);
        }
    }

    /// The running output token count (the last usage's).
    pub(crate) fn output_tokens(&self) -> Option<u64> {
        self.usage.as_ref().and_then(|u| u.output_tokens)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.report.events == 0 && self.report.bytes == 0
    }

    pub(crate) fn finish(mut self, api: Api, max_event_size: usize) -> Report {
        let report = &mut self.report;
        report.api = api;
        report.status = self.status.unwrap_or(Status::Truncated);
        report.usage = self.usage;
        if report.usage.is_none() && !report.step_usages.is_empty() {
            // An Assistants run cut short or waiting for tool outputs
            // (`requires_action`) reports no usage of its own: what its
            // steps used is the best count there is, and says so.
            report.usage = Some(step_sum(&report.step_usages));
            report.usage_note = Some(format!(
                "the sum of the usage of the run's {} step(s): the run reported no usage of its own",
                report.step_usages.len()
            ));
        }
        if report.oversized_events > 0 {
            report.warnings.push(format!(
                "{} event(s) larger than max_event_size ({max_event_size} bytes) were skipped",
                report.oversized_events
            ));
        }
        if report.invalid_json_events > 0 {
            report.warnings.push(format!(
                "{} event(s) carried data that is not valid JSON",
                report.invalid_json_events
            ));
        }
        self.report
    }
}

/// Whether a later usage object says something else than the earlier one
/// did. Running totals (Gemini in every chunk, chat servers such as
/// Perplexity on content chunks) only grow, with the same input: there only
/// a count that goes down or another input is a disagreement. After a usage
/// given as final, any other number is one.
fn differs(api: Api, before: &Usage, after: &Usage, before_final: bool) -> bool {
    let pairs = [
        (before.input_tokens, after.input_tokens),
        (before.output_tokens, after.output_tokens),
        (before.total_tokens, after.total_tokens),
        (before.cached_input_tokens, after.cached_input_tokens),
        (before.cache_write_tokens, after.cache_write_tokens),
        (before.reasoning_tokens, after.reasoning_tokens),
    ];
    if before_final && !matches!(api, Api::Gemini | Api::GeminiInteractions) {
        return pairs.iter().any(|(b, a)| b != a);
    }
    let decreased = pairs
        .iter()
        .any(|(b, a)| matches!((b, a), (Some(b), Some(a)) if a < b));
    let other_input = matches!(
        (before.input_tokens, after.input_tokens),
        (Some(b), Some(a)) if a != b
    );
    decreased || other_input
}

/// `in/out/total` of a usage, for a warning.
fn brief(u: &Usage) -> String {
    let n = |c: Option<u64>| c.map_or_else(|| "?".to_owned(), |c| c.to_string());
    format!(
        "{} in / {} out / {} total",
        n(u.input_tokens),
        n(u.output_tokens),
        n(u.total_tokens)
    )
}

/// The field-wise sum of step usages (a field is None when no step has it;
/// a sum past 64 bits is None too).
fn step_sum(steps: &[Usage]) -> Usage {
    let add = |get: fn(&Usage) -> Option<u64>| {
        steps
            .iter()
            .filter_map(get)
            .try_fold(None, |acc: Option<u64>, c| {
                Some(Some(acc.unwrap_or(0).checked_add(c)?))
            })?
    };
    Usage {
        input_tokens: add(|u| u.input_tokens),
        output_tokens: add(|u| u.output_tokens),
        total_tokens: add(|u| u.total_tokens),
        cached_input_tokens: add(|u| u.cached_input_tokens),
        cache_write_tokens: add(|u| u.cache_write_tokens),
        reasoning_tokens: add(|u| u.reasoning_tokens),
        raw: String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_usage(raw: &[u8]) -> EventInfo<'_> {
        EventInfo {
            usage: Some(raw),
            ..EventInfo::default()
        }
    }

    #[test]
    fn last_usage_wins_but_zero_does_not_erase() {
        let mut b = Builder::default();
        let api = Api::ChatCompletions;
        b.apply(
            api,
            &with_usage(br#"{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}"#),
        );
        b.apply(
            api,
            &with_usage(br#"{"prompt_tokens":1,"completion_tokens":5,"total_tokens":6}"#),
        );
        b.apply(
            api,
            &with_usage(br#"{"prompt_tokens":0,"completion_tokens":0,"total_tokens":0}"#),
        );
        b.apply(api, &with_usage(br#"{"other":1}"#));
        let report = b.finish(api, 10);
        let usage = report.usage.unwrap();
        assert_eq!(
            (usage.output_tokens, usage.total_tokens),
            (Some(5), Some(6))
        );
        assert_eq!(report.status, Status::Truncated);
    }

    #[test]
    fn anthropic_overlay() {
        let mut b = Builder::default();
        let api = Api::AnthropicMessages;
        b.apply(
            api,
            &with_usage(br#"{"input_tokens":43,"output_tokens":1}"#),
        );
        for out in [br#"{"output_tokens":2}"#, br#"{"output_tokens":9}"#] {
            let mut info = with_usage(out);
            info.merge_usage = true;
            b.apply(api, &info);
        }
        let usage = b.finish(api, 10).usage.unwrap();
        assert_eq!(
            (usage.input_tokens, usage.output_tokens),
            (Some(43), Some(9))
        );
        assert_eq!(usage.raw, r#"{"input_tokens":43,"output_tokens":9}"#);
    }

    #[test]
    fn relations() {
        let mut b = Builder::default();
        let open = EventInfo {
            id: Some(b"a"),
            starts: true,
            ..EventInfo::default()
        };
        assert_eq!(b.relation(&open), Relation::Same);
        b.apply(Api::Responses, &open);
        assert_eq!(b.relation(&open), Relation::Duplicate);
        let other = EventInfo {
            id: Some(b"b"),
            ..EventInfo::default()
        };
        assert_eq!(b.relation(&other), Relation::Same);
        let other_start = EventInfo {
            starts: true,
            ..other.clone()
        };
        assert_eq!(b.relation(&other_start), Relation::Spliced);
        b.on_done(Api::Responses);
        assert_eq!(b.relation(&other), Relation::Next);
    }
}
