//! Chat Completions and legacy Completions chunks, and Assistants run
//! events: `choices[]` deltas, thread message deltas and run step tool calls.

use jiter::JsonValue;

use super::{call_slot, get, index, items, obj, push, push_ident, set_reason, text, Obj, Output};

impl Output {
    /// Chat Completions and legacy Completions chunks.
    pub(super) fn on_choices(&mut self, choices: &[JsonValue<'_>]) {
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

    /// Assistants runs: message text deltas and the function calls of run
    /// step deltas.
    pub(super) fn on_assistants(&mut self, object: &str, root: &Obj<'_>) {
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
}
