//! Events whose `type` names them: OpenAI Responses, Anthropic Messages
//! and Cohere v2 (text, refusal, reasoning and tool call deltas).

use super::json_text::json_text;
use super::{call_slot, get, index, obj, push, push_ident, text, Obj, Output};

impl Output {
    /// Events whose `type` names them: Responses, Anthropic, Cohere.
    pub(super) fn on_typed(&mut self, kind: &str, root: &Obj<'_>) {
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
}
