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

    /// Chat Completions and legacy Completions chunks.
    fn on_choices(&mut self, choices: &[JsonValue<'_>]) {
        for choice in choices {
            let JsonValue::Object(c) = choice else {
                continue;
            };
            let out = self.choice(index(get(c, "index")));
            push(&mut out.text, text(get(c, "text")));
            set_reason(&mut out.finish_reason, text(get(c, "finish_reason")));
            // Servers that put usage on the choice give per-choice counts.
            if let Some(JsonValue::Int(n)) =
                obj(get(c, "usage")).and_then(|u| get(u, "completion_tokens"))
            {
                out.output_tokens = u64::try_from(*n).ok();
            }
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
                    push_ident(&mut slot.id, text(get(item, "call_id")));
                    push_ident(&mut slot.name, text(get(item, "name")));
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
                    push_ident(&mut slot.id, text(get(block, "id")));
                    push_ident(&mut slot.name, text(get(block, "name")));
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

    /// Assistants runs: message text deltas and the function calls of run
    /// step deltas.
    fn on_assistants(&mut self, object: &str, root: &Obj<'_>) {
        let Some(delta) = obj(get(root, "delta")) else {
            return;
        };
        match object {
            "thread.message.delta" => {
                for part in items(get(delta, "content")) {
                    let JsonValue::Object(part) = part else {
                        continue;
                    };
                    let value = obj(get(part, "text")).and_then(|t| text(get(t, "value")));
                    push(&mut self.choice(0).text, value);
                }
            }
            "thread.run.step.delta" => {
                let calls = obj(get(delta, "step_details")).map(|d| items(get(d, "tool_calls")));
                for call in calls.unwrap_or(&[]) {
                    let JsonValue::Object(call) = call else {
                        continue;
                    };
                    let Some(slot) = call_slot(self.choice(0), index(get(call, "index"))) else {
                        continue;
                    };
                    push_ident(&mut slot.id, text(get(call, "id")));
                    if let Some(function) = obj(get(call, "function")) {
                        push_ident(&mut slot.name, text(get(function, "name")));
                        push(&mut slot.arguments, text(get(function, "arguments")));
                    }
                }
            }
            _ => {}
        }
    }

    /// Gemini candidates: text parts, thought parts and function calls,
    /// whole (`args`) or streamed (`partialArgs` pieces while `willContinue`
    /// is true; the call ends with a `functionCall` that no longer says it
    /// continues).
    fn on_gemini(&mut self, candidates: &[JsonValue<'_>]) {
        for candidate in candidates {
            let JsonValue::Object(c) = candidate else {
                continue;
            };
            let choice_index = index(get(c, "index"));
            let out = self.choice(choice_index);
            set_reason(&mut out.finish_reason, text(get(c, "finishReason")));
            if let Some(JsonValue::Int(n)) = get(c, "tokenCount") {
                out.output_tokens = u64::try_from(*n).ok();
            }
            let parts = obj(get(c, "content")).map(|content| items(get(content, "parts")));
            for part in parts.unwrap_or(&[]) {
                let JsonValue::Object(part) = part else {
                    continue;
                };
                let thought = matches!(get(part, "thought"), Some(JsonValue::Bool(true)));
                let out = self.choice(choice_index);
                let dst = if thought {
                    &mut out.reasoning
                } else {
                    &mut out.text
                };
                push(dst, text(get(part, "text")));
                if let Some(call) = obj(get(part, "functionCall")) {
                    self.on_gemini_call(choice_index, call);
                }
            }
        }
    }

    fn on_gemini_call(&mut self, choice_index: u64, call: &Obj<'_>) {
        let continues = matches!(get(call, "willContinue"), Some(JsonValue::Bool(true)));
        let name = text(get(call, "name")).filter(|n| !n.is_empty());
        if name.is_some() {
            // A named call starts a new one (closing one still streaming).
            self.close_gemini_call(choice_index);
            let out = self.choice(choice_index);
            let slot_index = out.tool_calls.len() as u64;
            let Some(entry) = call_slot(out, slot_index) else {
                return;
            };
            push_ident(&mut entry.id, text(get(call, "id")));
            push_ident(&mut entry.name, name);
            if let Some(args) = get(call, "args") {
                entry.arguments = json_text(args);
            }
            if continues {
                let args = GeminiArgs::new(slot_index, !entry.arguments.is_empty());
                self.gemini_args.insert(choice_index, args);
            }
        } else if self.gemini_args.contains_key(&choice_index) {
            let partial = items(get(call, "partialArgs"));
            if let Some(mut args) = self.gemini_args.remove(&choice_index) {
                let out = self.choice(choice_index);
                if let Some(entry) = out.tool_calls.get_mut(&args.slot) {
                    for piece in partial {
                        if let JsonValue::Object(piece) = piece {
                            args.apply(piece, &mut entry.arguments);
                        }
                    }
                }
                self.gemini_args.insert(choice_index, args);
            }
            if !continues {
                self.close_gemini_call(choice_index);
            }
        }
        // A nameless call with nothing streaming is an empty marker: no call.
    }

    fn close_gemini_call(&mut self, choice_index: u64) {
        if let Some(args) = self.gemini_args.remove(&choice_index) {
            if let Some(entry) = self.choice(choice_index).tool_calls.get_mut(&args.slot) {
                args.close(&mut entry.arguments);
            }
        }
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

/// Deepest container a streamed Gemini argument path may open; deeper
/// pieces are ignored (each open level costs memory for its path segment).
const MAX_ARG_DEPTH: usize = 64;

/// One segment of a Gemini `jsonPath` (`$.a.b[0]['c d']`).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Seg {
    Key(String),
    Index(u64),
}

/// Parses a `jsonPath`; `None` for one this does not understand.
fn parse_path(path: &str) -> Option<Vec<Seg>> {
    let mut rest = path.strip_prefix('$')?;
    let mut segs = Vec::new();
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('.') {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            if end == 0 {
                return None;
            }
            segs.push(Seg::Key(r[..end].to_owned()));
            rest = &r[end..];
        } else if let Some(r) = rest.strip_prefix("['") {
            let end = r.find("']")?;
            segs.push(Seg::Key(r[..end].to_owned()));
            rest = &r[end + 2..];
        } else if let Some(r) = rest.strip_prefix('[') {
            let end = r.find(']')?;
            segs.push(Seg::Index(r[..end].parse().ok()?));
            rest = &r[end + 1..];
        } else {
            return None;
        }
    }
    Some(segs)
}

/// Writes the JSON text of a Gemini call's streamed arguments as the
/// pieces arrive, in order: each piece names the leaf it sets by its path;
/// the containers on the way are opened and closed as the paths move on, and
/// a string value that continues is appended to. Pieces that do not fit
/// (an unreadable path, a path that goes back into a closed container) are
/// ignored rather than allowed to make the text invalid.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct GeminiArgs {
    /// The tool call slot the arguments go to.
    slot: u64,
    /// The containers open below the root object.
    open: Vec<Open>,
    /// The root object was opened; it holds a member.
    started: bool,
    root_has_member: bool,
    /// The path of a string value that is still open (its closing quote not
    /// written yet).
    open_string: Option<Vec<Seg>>,
    /// The call came with whole `args`: pieces are not applied.
    whole: bool,
}

impl GeminiArgs {
    fn new(slot: u64, whole: bool) -> Self {
        Self {
            slot,
            whole,
            ..Self::default()
        }
    }

    fn apply(&mut self, piece: &Obj<'_>, out: &mut String) {
        if self.whole {
            return;
        }
        let Some(path) = text(get(piece, "jsonPath")).and_then(parse_path) else {
            return;
        };
        let Some((leaf, containers)) = path.split_last() else {
            return;
        };
        if containers.len() > MAX_ARG_DEPTH {
            return;
        }
        let continues = matches!(get(piece, "willContinue"), Some(JsonValue::Bool(true)));
        let string = text(get(piece, "stringValue"));
        if self.open_string.as_ref() == Some(&path) {
            if let Some(s) = string {
                write_str_body(s, out);
                if !continues {
                    out.push('"');
                    self.open_string = None;
                }
                return;
            }
        }
        if self.open_string.take().is_some() {
            out.push('"');
        }
        let value = if let Some(s) = string {
            let mut v = String::new();
            v.push('"');
            write_str_body(s, &mut v);
            if !continues {
                v.push('"');
            }
            v
        } else if let Some(v) = get(piece, "numberValue") {
            match v {
                JsonValue::Int(_) | JsonValue::Float(_) => json_text(v),
                _ => return,
            }
        } else if let Some(JsonValue::Bool(b)) = get(piece, "boolValue") {
            b.to_string()
        } else if get(piece, "nullValue").is_some() {
            "null".to_owned()
        } else {
            return;
        };
        if !self.started {
            self.started = true;
            out.push('{');
        }
        // Close what the new path leaves, then open what it enters.
        let common = self
            .open
            .iter()
            .zip(containers)
            .take_while(|(open, want)| open.seg == **want)
            .count();
        while self.open.len() > common {
            if let Some(open) = self.open.pop() {
                out.push(open.closer());
            }
        }
        for (depth, seg) in containers.iter().enumerate().skip(common) {
            self.member(seg, out);
            let array = matches!(containers.get(depth + 1).unwrap_or(leaf), Seg::Index(_));
            out.push(if array { '[' } else { '{' });
            self.open.push(Open {
                seg: seg.clone(),
                has_member: false,
                array,
            });
        }
        self.member(leaf, out);
        out.push_str(&value);
        if string.is_some() && continues {
            self.open_string = Some(path);
        }
    }

    /// Writes the separator and key of a new member of the innermost open
    /// container.
    fn member(&mut self, seg: &Seg, out: &mut String) {
        let (has, array) = match self.open.last_mut() {
            Some(open) => (&mut open.has_member, open.array),
            None => (&mut self.root_has_member, false),
        };
        if std::mem::replace(has, true) {
            out.push(',');
        }
        if let (Seg::Key(key), false) = (seg, array) {
            write_str(key, out);
            out.push(':');
        }
    }

    fn close(mut self, out: &mut String) {
        if self.whole {
            return;
        }
        if self.open_string.take().is_some() {
            out.push('"');
        }
        if !self.started {
            out.push('{');
        }
        while let Some(open) = self.open.pop() {
            out.push(open.closer());
        }
        out.push('}');
    }
}

/// A container open in [`GeminiArgs`]: the path segment that opened it,
/// whether it holds a member yet, and whether it is an array.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Open {
    seg: Seg,
    has_member: bool,
    array: bool,
}

impl Open {
    fn closer(&self) -> char {
        if self.array {
            ']'
        } else {
            '}'
        }
    }
}

/// The tool call at `index` of `choice`, created unless the choice already
/// holds [`MAX_TOOL_CALLS`] calls.
fn call_slot(choice: &mut Choice, index: u64) -> Option<&mut ToolCall> {
    if choice.tool_calls.len() >= MAX_TOOL_CALLS && !choice.tool_calls.contains_key(&index) {
        choice.tool_calls_cut = true;
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
    write_str_body(s, out);
    out.push('"');
}

/// The escaped characters of a JSON string, without its quotes.
fn write_str_body(s: &str, out: &mut String) {
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

    /// Gemini streamed arguments: values of every kind, nested paths, a
    /// string continued over pieces, unreadable pieces ignored, and a call
    /// cut before its end closed into whole JSON by [`Output::close`].
    #[test]
    fn gemini_partial_args() {
        let call = |body: &str| {
            format!(r#"{{"candidates":[{{"content":{{"parts":[{{"functionCall":{body}}}]}}}}]}}"#)
        };
        let piece = |p: &str| call(&format!(r#"{{"partialArgs":[{p}],"willContinue":true}}"#));
        let mut out = Output::default();
        for e in [
            call(r#"{"name":"f","willContinue":true}"#),
            piece(r#"{"jsonPath":"$.a","stringValue":"x\"y","willContinue":true}"#),
            piece(r#"{"jsonPath":"$.a","stringValue":"z"}"#),
            piece(r#"{"jsonPath":"$.b[0].c","numberValue":1.5}"#),
            piece(r#"{"jsonPath":"$.b[1]","boolValue":true}"#),
            piece(r#"{"jsonPath":"$['d e']","nullValue":null}"#),
            piece(r#"{"jsonPath":"nonsense","stringValue":"q"}"#),
            piece(r#"{"jsonPath":"$.g","stringValue":"open","willContinue":true}"#),
        ] {
            out.on_event(e.as_bytes());
        }
        out.close();
        let args = &out.choices[&0].tool_calls[&0].arguments;
        assert_eq!(
            args,
            r#"{"a":"x\"yz","b":[{"c":1.5},true],"d e":null,"g":"open"}"#
        );
        // Nameless empty markers make no call.
        let mut out = Output::default();
        out.on_event(call("{}").as_bytes());
        out.on_event(call(r#"{"willContinue":true}"#).as_bytes());
        assert!(out.choices[&0].tool_calls.is_empty());
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
        assert!(out.cap_warning().unwrap().contains("1024"));
        assert!(!run(&[r#"{"choices":[{"index":0,"delta":{"content":"x"}}]}"#]).capped());
    }
}
