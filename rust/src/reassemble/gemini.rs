//! Gemini candidates: text and thought parts, function calls with whole
//! `args`, and arguments streamed as `partialArgs` pieces, written out as
//! JSON text while they arrive.

use jiter::JsonValue;

use super::json_text::json_text;
use super::{call_slot, get, index, items, obj, push, push_ident, set_reason, text, Obj, Output};
use crate::json_out::{push_str, push_str_body};

impl Output {
    /// Gemini candidates: text parts, thought parts and function calls,
    /// whole (`args`) or streamed (`partialArgs` pieces while `willContinue`
    /// is true; the call ends with a `functionCall` that no longer says it
    /// continues).
    pub(super) fn on_gemini(&mut self, candidates: &[JsonValue<'_>]) {
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

    pub(super) fn close_gemini_call(&mut self, choice_index: u64) {
        if let Some(args) = self.gemini_args.remove(&choice_index) {
            if let Some(entry) = self.choice(choice_index).tool_calls.get_mut(&args.slot) {
                args.close(&mut entry.arguments);
            }
        }
    }
}

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
pub(super) struct GeminiArgs {
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
                push_str_body(out, s);
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
            push_str_body(&mut v, s);
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
            push_str(out, key);
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
