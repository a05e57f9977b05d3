//! Reassembles the output a stream delivered in pieces: text, refusals,
//! streamed reasoning and tool calls, per choice. It parses each event fully,
//! so it runs only when a caller asks for the output (or needs it to estimate
//! token counts), never on the metering hot path. The shapes are read in
//! `chat` (Chat, Completions, Assistants), `typed` (Responses, Anthropic,
//! Cohere) and `gemini`.

use std::borrow::Cow;
use std::collections::BTreeMap;

use jiter::JsonValue;

use crate::surrogates::replace_lone_surrogates;

use gemini::GeminiArgs;

mod chat;
mod gemini;
mod json_text;
#[cfg(test)]
mod tests;
mod typed;

/// One function/tool call, its arguments concatenated from their deltas.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    pub arguments: String,
}

/// What one choice (one candidate, one Responses output) produced.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Choice {
    pub text: String,
    pub refusal: String,
    pub reasoning: String,
    /// Tool calls by their stream index.
    pub tool_calls: BTreeMap<u64, ToolCall>,
    /// The choice's own finish reason (Chat `choices[].finish_reason`,
    /// Gemini `candidates[].finishReason`), the last one seen.
    pub finish_reason: Option<String>,
    /// Output tokens of this choice, where the provider reports them per
    /// choice (Gemini `candidates[].tokenCount`); the last value seen.
    pub output_tokens: Option<u64>,
    /// A tool call was ignored because the choice held [`MAX_TOOL_CALLS`].
    tool_calls_cut: bool,
}

/// Most choices an [`Output`] keeps (OpenAI's `n` is at most 128); events
/// for further choice indexes are ignored, so a hostile stream cannot make
/// a few bytes of `{"index":N}` cost a `Choice` each.
pub const MAX_CHOICES: usize = 128;

/// Most tool calls one choice keeps; further call indexes are ignored.
pub const MAX_TOOL_CALLS: usize = 1024;

/// The output of one response, by choice index (0 unless the request set
/// `n>1`). A stream that holds several responses gives one each (see
/// [`crate::usage::UsageTap::outputs`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Output {
    /// The id of the response this output belongs to, once known.
    pub response_id: Option<String>,
    pub choices: BTreeMap<u64, Choice>,
    /// Gemini function calls whose arguments are still streaming
    /// (`willContinue`), by choice index.
    gemini_args: BTreeMap<u64, GeminiArgs>,
    /// Anthropic tool blocks' initial `input`, used when no delta fills it.
    initial_inputs: BTreeMap<u64, String>,
    /// Responses outputs whose text arrived in deltas (so `.done` repeats it).
    text_deltas_seen: bool,
    /// Events over the limits were ignored (see [`Output::capped`]).
    capped: bool,
    /// Where the pieces of an ignored choice go (emptied at each use).
    spill: Choice,
}

type Obj<'a> = [(std::borrow::Cow<'a, str>, JsonValue<'a>)];

fn get<'v, 'a>(obj: &'v Obj<'a>, key: &str) -> Option<&'v JsonValue<'a>> {
    obj.iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

fn obj<'v, 'a>(v: Option<&'v JsonValue<'a>>) -> Option<&'v Obj<'a>> {
    match v {
        Some(JsonValue::Object(o)) => Some(o.as_slice()),
        _ => None,
    }
}

fn text<'v>(v: Option<&'v JsonValue<'_>>) -> Option<&'v str> {
    match v {
        Some(JsonValue::Str(s)) => Some(s),
        _ => None,
    }
}

fn index(v: Option<&JsonValue<'_>>) -> u64 {
    match v {
        Some(JsonValue::Int(i)) => u64::try_from(*i).unwrap_or(0),
        _ => 0,
    }
}

fn items<'v, 'a>(v: Option<&'v JsonValue<'a>>) -> &'v [JsonValue<'a>] {
    match v {
        Some(JsonValue::Array(a)) => a.as_slice(),
        _ => &[],
    }
}

fn push(dst: &mut String, src: Option<&str>) {
    if let Some(s) = src {
        dst.push_str(s);
    }
}

/// Appends a piece of a tool call's id or name. Some providers repeat the
/// full value in every chunk, or send the value so far: a piece equal to
/// what is there is dropped, and one that starts with it replaces it.
/// (Arguments are never deduplicated: they really are streamed in pieces.)
fn push_ident(dst: &mut String, src: Option<&str>) {
    match src {
        None | Some("") => {}
        Some(s) if s == dst.as_str() => {}
        Some(s) if !dst.is_empty() && s.starts_with(dst.as_str()) => {
            dst.clear();
            dst.push_str(s);
        }
        Some(s) => dst.push_str(s),
    }
}

impl Output {
    /// Take one event's JSON data into account; anything that is not JSON,
    /// or not a shape this knows, is ignored.
    pub fn on_event(&mut self, data: &[u8]) {
        match JsonValue::parse(data, false) {
            Ok(JsonValue::Object(root)) => self.on_root(root.as_slice()),
            Ok(_) => {}
            // Invalid UTF-8 or lone surrogate escapes inside a string: read the
            // text with U+FFFD for each bad sequence, as the SSE decoder does,
            // rather than lose the event.
            Err(_) => {
                let lossy = String::from_utf8_lossy(data);
                let fixed = replace_lone_surrogates(lossy.as_bytes());
                let repaired = match (&fixed, &lossy) {
                    (Some(fixed), _) => fixed.as_slice(),
                    (None, Cow::Owned(text)) => text.as_bytes(),
                    (None, Cow::Borrowed(_)) => return,
                };
                if let Ok(JsonValue::Object(root)) = JsonValue::parse(repaired, false) {
                    self.on_root(root.as_slice());
                }
            }
        }
    }

    fn on_root(&mut self, root: &Obj<'_>) {
        if let Some(kind) = text(get(root, "type")) {
            self.on_typed(kind, root);
        } else if let Some(candidates) = get(root, "candidates") {
            self.on_gemini(items(Some(candidates)));
        } else if let Some(object) = text(get(root, "object")).filter(|o| o.starts_with("thread."))
        {
            self.on_assistants(object, root);
        } else {
            self.on_choices(items(get(root, "choices")));
        }
    }

    /// Whether the output hit a limit and left something out: a choice
    /// past [`MAX_CHOICES`] or a tool call past [`MAX_TOOL_CALLS`] was
    /// ignored.
    #[must_use]
    pub fn capped(&self) -> bool {
        self.capped || self.choices.values().any(|c| c.tool_calls_cut)
    }

    /// What [`Output::capped`] left out, in words (None when nothing was).
    #[must_use]
    pub fn cap_warning(&self) -> Option<String> {
        let choices = self
            .capped
            .then(|| format!("choices past the first {MAX_CHOICES} were not reassembled"));
        let calls = self.choices.values().any(|c| c.tool_calls_cut).then(|| {
            format!("tool calls past the first {MAX_TOOL_CALLS} of a choice were not reassembled")
        });
        match (choices, calls) {
            (None, None) => None,
            (Some(a), Some(b)) => Some(format!("{a}; {b}")),
            (a, b) => a.or(b),
        }
    }

    fn choice(&mut self, index: u64) -> &mut Choice {
        if self.choices.len() >= MAX_CHOICES && !self.choices.contains_key(&index) {
            self.capped = true;
            self.spill = Choice::default();
            return &mut self.spill;
        }
        self.choices.entry(index).or_default()
    }

    /// Appends the JSON string body `raw` (between its quotes) to the text
    /// of choice `index`; false, with the text unchanged, when it is not
    /// UTF-8, holds a surrogate escape, or memory could not be had (the
    /// caller then parses the event, which reads such text its own way).
    pub(crate) fn append_text(&mut self, index: u64, raw: &[u8]) -> bool {
        let text = &mut self.choice(index).text;
        let len = text.len();
        let done = unescape_into(text, raw).is_some();
        if !done {
            text.truncate(len);
        }
        done
    }

    /// The choice an event adds text to, when reading it from scratch adds
    /// exactly the JSON string body `raw` to that choice's text and nothing
    /// else anywhere: events of the same shape then need no parsing.
    pub(crate) fn text_only(data: &[u8], raw: &[u8]) -> Option<u64> {
        let mut read = Output::default();
        read.on_event(data);
        let index = match read.choices.keys().collect::<Vec<_>>()[..] {
            [&index] => index,
            _ => return None,
        };
        let mut expected = Output::default();
        (expected.append_text(index, raw) && read == expected).then_some(index)
    }

    /// Ends the response: arguments still streaming are closed so that
    /// they are whole JSON text.
    pub fn close(&mut self) {
        let open: Vec<u64> = self.gemini_args.keys().copied().collect();
        for choice_index in open {
            self.close_gemini_call(choice_index);
        }
    }
}

/// Appends the JSON string body `raw`, its escapes decoded (by jiter, as
/// the full parse would); None when it is not UTF-8, holds a lone
/// surrogate escape (left to the parser's repair) or memory could not be
/// had.
fn unescape_into(dst: &mut String, raw: &[u8]) -> Option<()> {
    // Decoded text is never longer than its escaped form.
    dst.try_reserve(raw.len()).ok()?;
    if memchr::memchr(b'\\', raw).is_none() {
        dst.push_str(std::str::from_utf8(raw).ok()?);
        return Some(());
    }
    let mut quoted = Vec::new();
    quoted.try_reserve_exact(raw.len() + 2).ok()?;
    quoted.push(b'"');
    quoted.extend_from_slice(raw);
    quoted.push(b'"');
    dst.push_str(jiter::Jiter::new(&quoted).next_str().ok()?);
    Some(())
}

/// Keeps a choice's finish reason (capped: it comes from the network).
fn set_reason(dst: &mut Option<String>, reason: Option<&str>) {
    if let Some(reason) = reason.filter(|r| !r.is_empty()) {
        let cut = reason
            .char_indices()
            .nth(MAX_REASON_CHARS)
            .map_or(reason.len(), |(at, _)| at);
        *dst = Some(reason[..cut].to_owned());
    }
}

/// Longest finish reason kept, in characters.
const MAX_REASON_CHARS: usize = 64;

/// The tool call at `index` of `choice`, created unless the choice already
/// holds [`MAX_TOOL_CALLS`] calls.
fn call_slot(choice: &mut Choice, index: u64) -> Option<&mut ToolCall> {
    if choice.tool_calls.len() >= MAX_TOOL_CALLS && !choice.tool_calls.contains_key(&index) {
        choice.tool_calls_cut = true;
        return None;
    }
    Some(choice.tool_calls.entry(index).or_default())
}
