//! The opt-in per-event timing log of a stream ("timeline").
//!
//! When a caller asks for it, every output-bearing event leaves one
//! [`TimelineEntry`]: the clock reading of the read that delivered it
//! (stamped by the caller after the read, see [`Timeline::stamp`]), how much
//! output text the stream had carried up to and including it, and the
//! stream's running output token count right after it when the stream
//! reports one (vLLM `continuous_usage_stats`, Gemini `usageMetadata` on
//! every chunk, Anthropic `message_delta`, or a final usage chunk). The text
//! itself is kept too, bounded, so that the caller can count each event's
//! tokens with a tokenizer where the stream gives no running count.
//!
//! Nothing of this exists unless asked for: the tap holds an
//! `Option<Box<Timeline>>` and the hot path only tests it for `None`.
//!
//! Bounds: the first [`MAX_TIMELINE_EVENTS`] output events get an entry,
//! the rest are counted (with their text length); at most
//! [`MAX_TIMELINE_TEXT`] bytes of text are kept. Memory that cannot be
//! allocated stops the log (counted as dropped), never the stream.

use jiter::{Jiter, JiterResult, Peek};

/// Output events that get an entry; further ones are only counted.
pub const MAX_TIMELINE_EVENTS: usize = 100_000;

/// Bytes of output text kept for the caller's tokenizer.
pub const MAX_TIMELINE_TEXT: usize = 16 * 1024 * 1024;

/// Nesting the text walk follows (the deepest real shape, a chat tool
/// call's arguments, is 7 levels down).
const MAX_DEPTH: u8 = 12;

/// Keys whose string values are output text in some API: chat `content`,
/// `reasoning_content`, `reasoning`, `refusal`, tool-call `arguments`,
/// legacy `text`; Responses `delta`; Anthropic `text`, `thinking`,
/// `partial_json`; Gemini `text`; Interactions `thought`; Cohere
/// `tool_plan`; Assistants `value` and `input`. Only output events are
/// walked, so metadata strings under other keys never count.
const TEXT_KEYS: [&[u8]; 13] = [
    b"content",
    b"text",
    b"reasoning_content",
    b"reasoning",
    b"refusal",
    b"arguments",
    b"delta",
    b"thinking",
    b"partial_json",
    b"thought",
    b"tool_plan",
    b"value",
    b"input",
];

/// Gemini function calls carry their arguments as a JSON object: its text
/// is what a tokenizer would see.
const RAW_KEYS: [&[u8]; 1] = [b"args"];

/// One output-bearing event.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TimelineEntry {
    /// The clock reading of the read that delivered the event (NaN until
    /// [`Timeline::stamp`] is called for that read).
    pub at: f64,
    /// Characters of output text in this event and all before it.
    pub text_end: u64,
    /// The stream's running output token count right after this event:
    /// set by a usage the event itself carried, or by one carried by a
    /// later event that had no output (the last one before the next output
    /// event wins). `None` when no usage came in between.
    pub output_tokens: Option<u64>,
}

/// Where the tap stood before an event, to tell what the event changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Mark {
    /// Closed reports (a change means the event started a new response).
    pub reports: usize,
    /// Output events of the open report.
    pub deltas: u64,
    /// Usage objects the open report took.
    pub usage_updates: u32,
}

impl Mark {
    /// Whether the event between `self` and `after` carried output, and
    /// whether it set the usage.
    pub(crate) fn changes(self, after: Mark) -> (bool, bool) {
        if after.reports == self.reports {
            (
                after.deltas > self.deltas,
                after.usage_updates != self.usage_updates,
            )
        } else {
            (after.deltas > 0, after.usage_updates > 0)
        }
    }
}

/// The log itself (see the module docs).
#[derive(Clone, Debug)]
pub struct Timeline {
    entries: Vec<TimelineEntry>,
    /// Entries before this index have their clock reading.
    stamped: usize,
    /// Output text of the entries, as far as [`MAX_TIMELINE_TEXT`] allows.
    text: String,
    /// Characters kept in `text`.
    kept_chars: u64,
    /// Characters of all output text seen, kept or not.
    total_chars: u64,
    /// Output events past the cap (or past a failed allocation).
    dropped: u64,
    /// Characters of the dropped events' text.
    dropped_chars: u64,
    /// No more text is kept.
    text_full: bool,
    /// The last clock reading given to [`Timeline::stamp`] (NaN before).
    last_at: f64,
}

impl Default for Timeline {
    fn default() -> Self {
        Self {
            entries: Vec::new(),
            stamped: 0,
            text: String::new(),
            kept_chars: 0,
            total_chars: 0,
            dropped: 0,
            dropped_chars: 0,
            text_full: false,
            last_at: f64::NAN,
        }
    }
}

impl Timeline {
    /// The entries so far, in stream order.
    #[must_use]
    pub fn entries(&self) -> &[TimelineEntry] {
        &self.entries
    }

    /// The output text of the entries, concatenated; entry `i`'s text is
    /// the characters from `entries[i - 1].text_end` to `entries[i].text_end`
    /// as far as [`Timeline::kept_chars`] reaches.
    #[must_use]
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Characters of [`Timeline::text`].
    #[must_use]
    pub fn kept_chars(&self) -> u64 {
        self.kept_chars
    }

    /// Output events that got no entry (past [`MAX_TIMELINE_EVENTS`]).
    #[must_use]
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Characters of output text the dropped events carried.
    #[must_use]
    pub fn dropped_chars(&self) -> u64 {
        self.dropped_chars
    }

    /// Gives every entry added since the last call the clock reading `at`
    /// (the arrival time of the read that delivered them).
    pub fn stamp(&mut self, at: f64) {
        for entry in &mut self.entries[self.stamped..] {
            entry.at = at;
        }
        self.stamped = self.entries.len();
        self.last_at = at;
    }

    /// At the end of the stream: entries of an event read only then (one
    /// whose blank line never came) arrived with the last read.
    pub(crate) fn stamp_last(&mut self) {
        self.stamp(self.last_at);
    }

    /// Takes one event: `output` when it carried output, `usage` with the
    /// running output token count when it set the usage.
    pub(crate) fn on_event(&mut self, data: &[u8], output: bool, usage: Option<Option<u64>>) {
        if output {
            self.on_output(data);
        }
        // A count that arrives after the cap belongs to dropped events.
        if let (Some(Some(tokens)), 0) = (usage, self.dropped) {
            if let Some(last) = self.entries.last_mut() {
                last.output_tokens = Some(tokens);
            }
        }
    }

    fn on_output(&mut self, data: &[u8]) {
        let room = self.dropped == 0
            && self.entries.len() < MAX_TIMELINE_EVENTS
            && self.entries.try_reserve(1).is_ok();
        let chars = if room {
            self.keep_text(data)
        } else {
            count_text(data)
        };
        self.total_chars = self.total_chars.saturating_add(chars);
        if room {
            self.entries.push(TimelineEntry {
                at: f64::NAN,
                text_end: self.total_chars,
                output_tokens: None,
            });
        } else {
            self.dropped = self.dropped.saturating_add(1);
            self.dropped_chars = self.dropped_chars.saturating_add(chars);
        }
    }

    /// Appends the event's text (whole strings, while they fit) and returns
    /// its length in characters.
    fn keep_text(&mut self, data: &[u8]) -> u64 {
        let mut chars = 0u64;
        let Self {
            text,
            kept_chars,
            text_full,
            ..
        } = self;
        walk(data, &mut |piece: &str| {
            let n = piece.chars().count() as u64;
            chars += n;
            if *text_full {
                return;
            }
            if text.len() + piece.len() > MAX_TIMELINE_TEXT
                || text.try_reserve(piece.len()).is_err()
            {
                *text_full = true;
                return;
            }
            text.push_str(piece);
            *kept_chars += n;
        });
        chars
    }
}

/// Characters of output text in one event.
fn count_text(data: &[u8]) -> u64 {
    let mut chars = 0u64;
    walk(data, &mut |piece: &str| {
        chars += piece.chars().count() as u64
    });
    chars
}

/// Calls `f` with every output text string of the event, in order. Data
/// that is not JSON gives nothing (the event then weighs nothing).
fn walk(data: &[u8], f: &mut dyn FnMut(&str)) {
    let mut j = Jiter::new(data);
    // A parse error ends the walk; what was found before it stays counted.
    let _ = visit(&mut j, data, MAX_DEPTH, false, f);
}

fn visit(
    j: &mut Jiter<'_>,
    data: &[u8],
    depth: u8,
    wanted: bool,
    f: &mut dyn FnMut(&str),
) -> JiterResult<()> {
    let peek = j.peek()?;
    match peek {
        Peek::String if wanted => f(j.known_str()?),
        Peek::Object if depth > 0 => {
            let mut key = j.next_object_bytes()?.map(classify);
            while let Some(kind) = key {
                match kind {
                    Key::Raw if j.peek()? != Peek::String => {
                        let start = j.current_index();
                        j.next_skip()?;
                        let raw = &data[start..j.current_index()];
                        f(&String::from_utf8_lossy(raw.trim_ascii()));
                    }
                    Key::Raw | Key::Text => visit(j, data, depth - 1, true, f)?,
                    Key::Other => visit(j, data, depth - 1, false, f)?,
                }
                key = j.next_key_bytes()?.map(classify);
            }
        }
        Peek::Array if depth > 0 => {
            let mut item = j.known_array()?;
            while item.is_some() {
                visit(j, data, depth - 1, false, f)?;
                item = j.array_step()?;
            }
        }
        _ => j.known_skip(peek)?,
    }
    Ok(())
}

#[derive(Clone, Copy)]
enum Key {
    Text,
    Raw,
    Other,
}

fn classify(key: &[u8]) -> Key {
    if TEXT_KEYS.contains(&key) {
        Key::Text
    } else if RAW_KEYS.contains(&key) {
        Key::Raw
    } else {
        Key::Other
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sse::DecoderConfig;
    use crate::usage::{ApiHint, UsageTap};

    fn texts(data: &str) -> Vec<String> {
        let mut out = Vec::new();
        walk(data.as_bytes(), &mut |s: &str| out.push(s.to_owned()));
        out
    }

    #[test]
    fn finds_the_text_of_every_api() {
        let chat = r#"{"id":"c","object":"chat.completion.chunk","model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":"Hi \u00e9"},"logprobs":{"content":[{"token":"Hi","logprob":-1}]},"finish_reason":null}]}"#;
        assert_eq!(texts(chat), ["Hi é"]);
        let tool = r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"f","arguments":"{\"a\":1}"}}]}}]}"#;
        assert_eq!(texts(tool), [r#"{"a":1}"#]);
        let responses = r#"{"type":"response.output_text.delta","item_id":"msg_1","output_index":0,"content_index":0,"delta":"lo","obfuscation":"xyz"}"#;
        assert_eq!(texts(responses), ["lo"]);
        let anthropic = r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hey"}}"#;
        assert_eq!(texts(anthropic), ["Hey"]);
        let gemini = r#"{"candidates":[{"content":{"parts":[{"text":"A"},{"functionCall":{"name":"f","args":{"x": 1}}}],"role":"model"}}],"usageMetadata":{"promptTokenCount":3},"modelVersion":"g"}"#;
        assert_eq!(texts(gemini), ["A", r#"{"x": 1}"#]);
        let assistants = r#"{"id":"msg","object":"thread.message.delta","delta":{"content":[{"index":0,"type":"text","text":{"value":"V"}}]}}"#;
        assert_eq!(texts(assistants), ["V"]);
        let cohere =
            r#"{"type":"content-delta","index":0,"delta":{"message":{"content":{"text":"C"}}}}"#;
        assert_eq!(texts(cohere), ["C"]);
        assert!(texts("not json").is_empty());
        assert_eq!(texts(r#"{"delta":"x","#), ["x"]);
    }

    fn tap() -> UsageTap {
        UsageTap::new(ApiHint::Auto, DecoderConfig::default()).with_timeline()
    }

    fn chunk(content: &str, usage: Option<u64>) -> String {
        let usage = usage.map_or(String::new(), |n| {
            format!(
                r#","usage":{{"prompt_tokens":5,"completion_tokens":{n},"total_tokens":{}}}"#,
                n + 5
            )
        });
        format!(
            "data: {{\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":\"m\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{content}\"}},\"finish_reason\":null}}]{usage}}}\n\n"
        )
    }

    #[test]
    fn entries_are_stamped_per_read_and_take_running_usage() {
        let mut t = tap();
        // The role chunk carries no output: no entry.
        t.feed(b"data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":0,\"total_tokens\":5}}\n\n");
        t.stamp(0.5);
        t.feed(chunk("Hello", Some(1)).as_bytes());
        t.stamp(1.0);
        let two = chunk(" big", Some(3)) + &chunk(" world", Some(4));
        t.feed(two.as_bytes());
        t.stamp(2.0);
        t.feed(b"data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":\"m\",\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":4,\"total_tokens\":9}}\n\ndata: [DONE]\n\n");
        t.stamp(3.0);
        let tl = t.timeline().unwrap();
        let got: Vec<_> = tl
            .entries()
            .iter()
            .map(|e| (e.at, e.text_end, e.output_tokens))
            .collect();
        assert_eq!(
            got,
            [(1.0, 5, Some(1)), (2.0, 9, Some(3)), (2.0, 15, Some(4))]
        );
        assert_eq!(tl.text(), "Hello big world");
        assert_eq!(t.delta_chunks(), 3);
    }

    #[test]
    fn a_later_usage_without_output_lands_on_the_last_entry() {
        let mut t = tap();
        let events = [
            "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m1\",\"model\":\"c\",\"usage\":{\"input_tokens\":9,\"output_tokens\":1}}}\n\n",
            "event: ping\ndata: {\"type\":\"ping\"}\n\n",
            "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\" there\"}}\n\n",
            "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":7}}\n\n",
            "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
        ];
        for (i, e) in events.iter().enumerate() {
            t.feed(e.as_bytes());
            t.stamp(i as f64);
        }
        let tl = t.timeline().unwrap();
        let got: Vec<_> = tl
            .entries()
            .iter()
            .map(|e| (e.at, e.output_tokens))
            .collect();
        // message_start's count comes before any output: no entry takes it.
        assert_eq!(got, [(3.0, None), (4.0, Some(7))]);
    }

    #[test]
    fn the_cap_counts_the_rest() {
        let mut tl = Timeline::default();
        let data = br#"{"delta":"ab"}"#;
        for _ in 0..MAX_TIMELINE_EVENTS + 3 {
            tl.on_event(data, true, None);
        }
        tl.on_event(b"{}", false, Some(Some(9)));
        assert_eq!(tl.entries().len(), MAX_TIMELINE_EVENTS);
        assert_eq!((tl.dropped(), tl.dropped_chars()), (3, 6));
        assert_eq!(tl.entries().last().unwrap().output_tokens, None);
        assert_eq!(tl.kept_chars(), 2 * MAX_TIMELINE_EVENTS as u64);
        assert!(tl.entries()[0].at.is_nan());
        tl.stamp(1.5);
        assert!(tl.entries().iter().all(|e| e.at == 1.5));
    }

    #[test]
    fn text_past_the_limit_is_counted_not_kept() {
        let mut tl = Timeline::default();
        let big = format!(r#"{{"delta":"{}"}}"#, "x".repeat(MAX_TIMELINE_TEXT - 1));
        tl.on_event(big.as_bytes(), true, None);
        tl.on_event(br#"{"delta":"yy"}"#, true, None);
        tl.on_event(br#"{"delta":"z"}"#, true, None);
        // Whole strings only: "yy" no longer fits, and nothing is kept after it.
        assert_eq!(tl.kept_chars(), MAX_TIMELINE_TEXT as u64 - 1);
        assert_eq!(tl.text().len(), MAX_TIMELINE_TEXT - 1);
        let ends: Vec<_> = tl.entries().iter().map(|e| e.text_end).collect();
        let n = MAX_TIMELINE_TEXT as u64;
        assert_eq!(ends, [n - 1, n + 1, n + 2]);
    }

    #[test]
    fn a_new_response_is_seen_through_the_mark() {
        let before = Mark {
            reports: 0,
            deltas: 4,
            usage_updates: 2,
        };
        let rotated = Mark {
            reports: 1,
            deltas: 1,
            usage_updates: 0,
        };
        assert_eq!(before.changes(rotated), (true, false));
        let same = Mark {
            usage_updates: 3,
            ..before
        };
        assert_eq!(before.changes(same), (false, true));
    }

    #[test]
    fn off_unless_asked_for() {
        let mut t = UsageTap::new(ApiHint::Auto, DecoderConfig::default());
        t.feed(chunk("x", None).as_bytes());
        t.stamp(1.0);
        assert!(t.timeline().is_none());
    }

    #[test]
    fn the_next_stream_starts_a_new_timeline() {
        let mut t = tap();
        t.feed(chunk("x", None).as_bytes());
        t.stamp(1.0);
        t.finish();
        assert_eq!(t.timeline().unwrap().entries().len(), 1);
        t.feed(chunk("y", None).as_bytes());
        assert_eq!(t.timeline().unwrap().entries().len(), 1);
        assert_eq!(t.timeline().unwrap().text(), "y");
    }
}
