//! Accumulates the events of one response into its [`Report`].

use super::event::EventInfo;
use super::json::decode;
use super::merge::overlay;
use super::normalize::normalize;
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
    /// Usage objects taken so far (wrapping): tells the timeline which
    /// event set the usage.
    pub usage_updates: u32,
}

/// Most run-step usages one report keeps (a copy of each usage object is
/// kept, so a hostile stream of step events must not grow without bound).
pub const MAX_STEP_USAGES: usize = 1024;

impl Builder {
    /// Whether chat chunks may take the prefiltered path: the id and model
    /// are known and no finish signal has been seen, so a plain content
    /// chunk can change nothing but the delta count.
    pub(crate) fn fast_ok(&self) -> bool {
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
            self.take_usage(api, raw, info.merge_usage);
        }
        if let Some(raw) = info.step_usage {
            if self.report.step_usages.len() < MAX_STEP_USAGES {
                let usage = usage_from(api, String::from_utf8_lossy(raw).into_owned());
                if usage.has_counts() {
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
            self.report.error = Some(String::from_utf8_lossy(error).into_owned());
        }
        self.report.delta_chunks += u64::from(info.delta);
        self.finished |= info.finished || info.terminal;
        self.report.done |= info.terminal;
    }

    /// The last usage wins, never a sum; a usage object without counts
    /// (Vertex's `trafficType`-only metadata) is ignored, and an all-zero
    /// one (Ollama's placeholders) does not replace a real one.
    fn take_usage(&mut self, api: Api, raw: &[u8], merge: bool) {
        let usage = match (&self.usage, merge) {
            (Some(previous), true) => usage_from(api, overlay(previous.raw.as_bytes(), raw)),
            _ => {
                // Normalise first: most ignored objects are never copied.
                let usage = normalize(api, raw);
                let keeps_real = self.usage.as_ref().is_some_and(|u| !u.is_zero());
                if !usage.has_counts() || (usage.is_zero() && keeps_real) {
                    return;
                }
                Usage {
                    raw: String::from_utf8_lossy(raw).into_owned(),
                    ..usage
                }
            }
        };
        if usage.has_counts() {
            self.usage = Some(usage);
            self.usage_updates = self.usage_updates.wrapping_add(1);
        }
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

fn usage_from(api: Api, raw: String) -> Usage {
    let mut usage = normalize(api, raw.as_bytes());
    usage.raw = raw;
    usage
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
