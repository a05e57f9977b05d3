//! Reassembles the output a stream delivered in pieces: text, refusals,
//! streamed reasoning and tool calls, per choice. It parses each event fully,
//! so it runs only when a caller asks for the output (or needs it to estimate
//! token counts), never on the metering hot path.

use std::borrow::Cow;
use std::collections::BTreeMap;

use jiter::JsonValue;

use crate::surrogates::replace_lone_surrogates;

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
}

/// Most choices an [`Output`] keeps (OpenAI's `n` is at most 128); events
/// for further choice indexes are ignored, so a hostile stream cannot make
/// a few bytes of `{"index":N}` cost a `Choice` each.
pub const MAX_CHOICES: usize = 128;

/// Most tool calls one choice keeps; further call indexes are ignored.
pub const MAX_TOOL_CALLS: usize = 1024;

/// The output of a stream, by choice index (0 unless the request set `n>1`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Output {
    pub choices: BTreeMap<u64, Choice>,
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
        } else {
            self.on_choices(items(get(root, "choices")));
        }
    }

    /// Whether the output hit a limit: more than [`MAX_CHOICES`] choices
    /// were seen, or a choice holds [`MAX_TOOL_CALLS`] tool calls (any more
    /// were ignored).
    #[must_use]
    pub fn capped(&self) -> bool {
        self.capped
            || self
                .choices
                .values()
                .any(|c| c.tool_calls.len() >= MAX_TOOL_CALLS)
    }

    fn choice(&mut self, index: u64) -> &mut Choice {
        if self.choices.len() >= MAX_CHOICES && !self.choices.contains_key(&index) {
            self.capped = true;
            self.spill = Choice::default();
            return &mut self.spill;
        }
        self.choices.entry(index).or_default()
    }

    /// Chat Completions and legacy Completions chunks.
    fn on_choices(&mut self, choices: &[JsonValue<'_>]) {
        for choice in choices {
            let JsonValue::Object(c) = choice else {
                continue;
            };
            let out = self.choice(index(get(c, "index")));
            push(&mut out.text, text(get(c, "text")));
            let Some(delta) = obj(get(c, "delta")) else {
                continue;
            };
            push(&mut out.text, text(get(delta, "content")));
            push(&mut out.refusal, text(get(delta, "refusal")));
            push(&mut out.reasoning, text(get(delta, "reasoning_content")));
            push(&mut out.reasoning, text(get(delta, "reasoning")));
            for call in items(get(delta, "tool_calls")) {
                let JsonValue::Object(call) = call else {
                    continue;
                };
                let Some(slot) = call_slot(out, index(get(call, "index"))) else {
                    continue;
                };
                push_ident(&mut slot.id, text(get(call, "id")));
                if let Some(function) = obj(get(call, "function")) {
                    push_ident(&mut slot.name, text(get(function, "name")));
                    push(&mut slot.arguments, text(get(function, "arguments")));
                }
            }
        }
    }

    /// Events whose `type` names them: Responses, Anthropic, Cohere.
    fn on_typed(&mut self, kind: &str, root: &Obj<'_>) {
        let output_index = index(get(root, "output_index"));
        match kind {
            "response.output_text.delta" => {
                self.text_deltas_seen = true;
                push(&mut self.choice(0).text, text(get(root, "delta")));
            }
            // Some servers send only the final text or arguments, without deltas.
            "response.output_text.done" if !self.text_deltas_seen => {
                push(&mut self.choice(0).text, text(get(root, "text")));
            }
            "response.function_call_arguments.done" | "response.custom_tool_call_input.done" => {
                let Some(slot) = call_slot(self.choice(0), output_index) else {
                    return;
                };
                if slot.arguments.is_empty() {
                    let done = text(get(root, "arguments")).or_else(|| text(get(root, "input")));
                    push(&mut slot.arguments, done);
                }
            }
            "response.refusal.delta" => push(&mut self.choice(0).refusal, text(get(root, "delta"))),
            "response.reasoning_text.delta" | "response.reasoning_summary_text.delta" => {
                push(&mut self.choice(0).reasoning, text(get(root, "delta")));
            }
            "response.output_item.added" => {
                let Some(item) = obj(get(root, "item")) else {
                    return;
                };
                if matches!(
                    text(get(item, "type")),
                    Some("function_call" | "custom_tool_call")
                ) {
                    let Some(slot) = call_slot(self.choice(0), output_index) else {
                        return;
                    };
                    push(&mut slot.id, text(get(item, "call_id")));
                    push(&mut slot.name, text(get(item, "name")));
                }
            }
            "response.function_call_arguments.delta" | "response.custom_tool_call_input.delta" => {
                if let Some(slot) = call_slot(self.choice(0), output_index) {
                    push(&mut slot.arguments, text(get(root, "delta")));
                }
            }
            "content_block_start" => {
                let Some(block) = obj(get(root, "content_block")) else {
                    return;
                };
                if matches!(
                    text(get(block, "type")),
                    Some("tool_use" | "server_tool_use")
                ) {
                    let block_index = index(get(root, "index"));
                    let Some(slot) = call_slot(self.choice(0), block_index) else {
                        return;
                    };
                    push(&mut slot.id, text(get(block, "id")));
                    push(&mut slot.name, text(get(block, "name")));
                    if let Some(input) = get(block, "input") {
                        self.initial_inputs.insert(block_index, json_text(input));
                    }
                }
            }
            "content_block_stop" => {
                let block_index = index(get(root, "index"));
                if let Some(initial) = self.initial_inputs.remove(&block_index) {
                    if let Some(slot) = self.choice(0).tool_calls.get_mut(&block_index) {
                        if slot.arguments.is_empty() {
                            slot.arguments = initial;
                        }
                    }
                }
            }
            "content_block_delta" => {
                let Some(delta) = obj(get(root, "delta")) else {
                    return;
                };
                let block = index(get(root, "index"));
                let out = self.choice(0);
                match text(get(delta, "type")) {
                    Some("text_delta") => push(&mut out.text, text(get(delta, "text"))),
                    Some("thinking_delta") => {
                        push(&mut out.reasoning, text(get(delta, "thinking")))
                    }
                    Some("input_json_delta") => {
                        if let Some(slot) = call_slot(out, block) {
                            push(&mut slot.arguments, text(get(delta, "partial_json")));
                        }
                    }
                    _ => {}
                }
            }
            "content-delta" => {
                let content = obj(get(root, "delta"))
                    .and_then(|d| obj(get(d, "message")))
                    .and_then(|m| obj(get(m, "content")));
                if let Some(content) = content {
                    push(&mut self.choice(0).text, text(get(content, "text")));
                }
            }
            _ => {}
        }
    }

    /// Gemini candidates: text parts, thought parts and function calls.
    fn on_gemini(&mut self, candidates: &[JsonValue<'_>]) {
        for candidate in candidates {
            let JsonValue::Object(c) = candidate else {
                continue;
            };
            let out = self.choice(index(get(c, "index")));
            let parts = obj(get(c, "content")).map(|content| items(get(content, "parts")));
            for part in parts.unwrap_or(&[]) {
                let JsonValue::Object(part) = part else {
                    continue;
                };
                let thought = matches!(get(part, "thought"), Some(JsonValue::Bool(true)));
                let dst = if thought {
                    &mut out.reasoning
                } else {
                    &mut out.text
                };
                push(dst, text(get(part, "text")));
                if let Some(call) = obj(get(part, "functionCall")) {
                    let slot = out.tool_calls.len() as u64;
                    let Some(entry) = call_slot(out, slot) else {
                        continue;
                    };
                    push(&mut entry.name, text(get(call, "name")));
                    if let Some(args) = get(call, "args") {
                        entry.arguments = json_text(args);
                    }
                }
            }
        }
    }
}

/// The tool call at `index` of `choice`, created unless the choice already
/// holds [`MAX_TOOL_CALLS`] calls.
fn call_slot(choice: &mut Choice, index: u64) -> Option<&mut ToolCall> {
    if choice.tool_calls.len() >= MAX_TOOL_CALLS && !choice.tool_calls.contains_key(&index) {
        return None;
    }
    Some(choice.tool_calls.entry(index).or_default())
}

/// Serialises a parsed JSON value back to compact JSON text.
fn json_text(v: &JsonValue<'_>) -> String {
    let mut out = String::new();
    write_json(v, &mut out);
    out
}

fn write_json(v: &JsonValue<'_>, out: &mut String) {
    match v {
        JsonValue::Null => out.push_str("null"),
        JsonValue::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        JsonValue::Int(i) => out.push_str(&i.to_string()),
        JsonValue::Float(f) => out.push_str(&f.to_string()),
        JsonValue::Str(s) => write_str(s, out),
        JsonValue::Array(a) => {
            out.push('[');
            for (i, item) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_json(item, out);
            }
            out.push(']');
        }
        JsonValue::Object(o) => {
            out.push('{');
            for (i, (k, item)) in o.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_str(k, out);
                out.push(':');
                write_json(item, out);
            }
            out.push('}');
        }
    }
}

fn write_str(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(events: &[&str]) -> Output {
        let mut out = Output::default();
        for e in events {
            out.on_event(e.as_bytes());
        }
        out
    }

    #[test]
    fn chat_choices_and_tool_calls() {
        let out = run(&[
            r#"{"choices":[{"index":0,"delta":{"content":"Hel"}},{"index":1,"delta":{"content":"Bon"}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"content":"lo \"usage\""}},{"index":1,"delta":{"refusal":"no"}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"c1","function":{"name":"f","arguments":"{\"a\""}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":":1}"}}]}}]}"#,
            "[DONE]",
            r#"{"choices":[],"usage":{"prompt_tokens":1}}"#,
        ]);
        assert_eq!(out.choices[&0].text, "Hello \"usage\"");
        assert_eq!(out.choices[&1].text, "Bon");
        assert_eq!(out.choices[&1].refusal, "no");
        let call = &out.choices[&0].tool_calls[&0];
        assert_eq!((call.id.as_str(), call.name.as_str()), ("c1", "f"));
        assert_eq!(call.arguments, "{\"a\":1}");
    }

    #[test]
    fn invalid_utf8_text_is_replaced_not_dropped() {
        let mut out = Output::default();
        out.on_event(b"{\"choices\":[{\"index\":0,\"delta\":{\"content\":\"caf\xc3\"}}]}");
        out.on_event(b"{\"choices\":[{\"index\":0,\"delta\":{\"content\":\"ok\xff!\"}}]}");
        out.on_event(b"{\"choices\":[{\"index\":0,\"delta\":{\"content\":\"\xff");
        assert_eq!(out.choices[&0].text, "caf\u{fffd}ok\u{fffd}!");
    }

    #[test]
    fn lone_surrogate_escapes_are_replaced_not_dropped() {
        let out = run(&[
            r#"{"choices":[{"index":0,"delta":{"content":"a\ud83d"}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"content":"\ude80b\ud83d\ude80"}}]}"#,
        ]);
        assert_eq!(out.choices[&0].text, "a\u{fffd}\u{fffd}b\u{1f680}");
    }

    #[test]
    fn responses_anthropic_gemini() {
        let out = run(&[
            r#"{"type":"response.output_text.delta","delta":"Hi","output_index":0}"#,
            r#"{"type":"response.output_item.added","output_index":1,"item":{"type":"function_call","call_id":"k","name":"g"}}"#,
            r#"{"type":"response.function_call_arguments.delta","output_index":1,"delta":"{}"}"#,
        ]);
        assert_eq!(out.choices[&0].text, "Hi");
        assert_eq!(out.choices[&0].tool_calls[&1].arguments, "{}");
        let out = run(&[
            r#"{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"t","name":"n"}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"A"}}"#,
            r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"q\":2}"}}"#,
        ]);
        assert_eq!(out.choices[&0].text, "A");
        assert_eq!(out.choices[&0].tool_calls[&1].arguments, "{\"q\":2}");
        let out = run(&[
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"tool_use","id":"t","name":"n","input":{}}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":""}}"#,
            r#"{"type":"content_block_stop","index":0}"#,
        ]);
        assert_eq!(out.choices[&0].tool_calls[&0].arguments, "{}");
        let out = run(&[
            r#"{"type":"response.output_item.added","output_index":0,"item":{"type":"function_call","call_id":"k","name":"g"}}"#,
            r#"{"type":"response.function_call_arguments.done","output_index":0,"arguments":"{\"a\":1}"}"#,
            r#"{"type":"response.output_text.done","output_index":1,"text":"T"}"#,
        ]);
        assert_eq!(out.choices[&0].tool_calls[&0].arguments, "{\"a\":1}");
        assert_eq!(out.choices[&0].text, "T");
        let out = run(&[
            r#"{"candidates":[{"content":{"parts":[{"text":"x","thought":true},{"text":"y"},{"functionCall":{"name":"f","args":{"k":"v\n"}}}]}}]}"#,
        ]);
        assert_eq!(out.choices[&0].reasoning, "x");
        assert_eq!(out.choices[&0].text, "y");
        assert_eq!(out.choices[&0].tool_calls[&0].arguments, r#"{"k":"v\n"}"#);
    }

    /// A provider that repeats the full id and name of a tool call in every
    /// chunk (or sends the value so far) gets them once; arguments append.
    #[test]
    fn repeated_tool_call_ids_and_names_are_not_doubled() {
        let chunk = |id: &str, name: &str, args: &str| {
            format!(
                r#"{{"choices":[{{"index":0,"delta":{{"tool_calls":[{{"index":0,"id":"{id}","function":{{"name":"{name}","arguments":"{args}"}}}}]}}}}]}}"#
            )
        };
        let events = [
            chunk("call_1", "get_weather", "{"),
            chunk("call_1", "get_weather", "}"),
            chunk("", "", ""),
        ];
        let out = run(&events.iter().map(String::as_str).collect::<Vec<_>>());
        let call = &out.choices[&0].tool_calls[&0];
        assert_eq!(
            (call.id.as_str(), call.name.as_str()),
            ("call_1", "get_weather")
        );
        assert_eq!(call.arguments, "{}");
        // The value so far, growing: the longer one replaces it.
        let events = [
            chunk("call_", "get", "{}"),
            chunk("call_1", "get_weather", ""),
        ];
        let out = run(&events.iter().map(String::as_str).collect::<Vec<_>>());
        let call = &out.choices[&0].tool_calls[&0];
        assert_eq!(
            (call.id.as_str(), call.name.as_str()),
            ("call_1", "get_weather")
        );
        // Pieces that do not repeat are still appended.
        let events = [chunk("call_", "get_", ""), chunk("9", "weather", "")];
        let out = run(&events.iter().map(String::as_str).collect::<Vec<_>>());
        let call = &out.choices[&0].tool_calls[&0];
        assert_eq!(
            (call.id.as_str(), call.name.as_str()),
            ("call_9", "get_weather")
        );
    }

    /// Regression (hardening review): every new choice or tool-call index
    /// cost an entry, so `{"index":N}` items a few bytes long made the
    /// output about ten times larger than the stream (45 times once turned
    /// into Python objects). Both are bounded now.
    #[test]
    fn choices_and_tool_calls_are_bounded() {
        let mut out = Output::default();
        for k in 0..10u64 {
            let items: Vec<String> = (0..100)
                .map(|i| format!(r#"{{"index":{},"delta":{{"content":"x"}}}}"#, k * 100 + i))
                .collect();
            out.on_event(format!(r#"{{"choices":[{}]}}"#, items.join(",")).as_bytes());
        }
        assert_eq!(out.choices.len(), MAX_CHOICES);
        assert!(out.capped());
        out.on_event(br#"{"choices":[{"index":5,"delta":{"content":"y"}}]}"#);
        assert_eq!(out.choices[&5].text, "xy");
        // What an ignored choice received does not pile up.
        assert_eq!(out.spill.text, "x");

        let mut out = Output::default();
        for k in 0..3000u64 {
            out.on_event(
                format!(r#"{{"type":"response.function_call_arguments.delta","output_index":{k},"delta":"a"}}"#)
                    .as_bytes(),
            );
        }
        assert_eq!(out.choices[&0].tool_calls.len(), MAX_TOOL_CALLS);
        assert!(out.capped());
        assert!(!run(&[r#"{"choices":[{"index":0,"delta":{"content":"x"}}]}"#]).capped());
    }
}
