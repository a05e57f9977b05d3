//! API detection for `ApiHint::Auto`, from the SSE event name when it is
//! telling, else from the top-level keys of the event's JSON.

use super::json::{fields, non_null, str_body, Invalid};
use super::types::Api;

const ANTHROPIC_TYPES: [&[u8]; 7] = [
    b"message_start",
    b"content_block_start",
    b"content_block_delta",
    b"content_block_stop",
    b"message_delta",
    b"message_stop",
    b"ping",
];

const COHERE_TYPES: [&[u8]; 11] = [
    b"message-start",
    b"message-end",
    b"content-start",
    b"content-delta",
    b"content-end",
    b"tool-plan-delta",
    b"tool-call-start",
    b"tool-call-delta",
    b"tool-call-end",
    b"citation-start",
    b"citation-end",
];

/// The API of a stream from one of its events, `None` when the event does
/// not tell (an unknown object, an error without Responses shape, `ping`
/// by name only).
pub(crate) fn detect(name: &[u8], data: &[u8]) -> Result<Option<Api>, Invalid> {
    if let Some(api) = from_name(name) {
        return Ok(Some(api));
    }
    let [object, ty, event_type, candidates, usage_metadata, feedback, choices, sequence] = fields(
        data,
        [
            b"object",
            b"type",
            b"event_type",
            b"candidates",
            b"usageMetadata",
            b"promptFeedback",
            b"choices",
            b"sequence_number",
        ],
    )?;
    let object = object.and_then(str_body).unwrap_or_default();
    let ty = ty.and_then(str_body).unwrap_or_default();
    let api = match () {
        _ if matches!(
            object,
            b"chat.completion.chunk" | b"chat.completion" | b"chat.completion.done"
        ) =>
        {
            Api::ChatCompletions
        }
        _ if object == b"text_completion" => Api::Completions,
        _ if object.starts_with(b"thread.") => Api::Assistants,
        _ if ty.starts_with(b"response.") => Api::Responses,
        _ if matches!(ty, b"keepalive" | b"error") && sequence.is_some() => Api::Responses,
        _ if ANTHROPIC_TYPES.contains(&ty) => Api::AnthropicMessages,
        _ if COHERE_TYPES.contains(&ty) => Api::Cohere,
        _ if event_type.is_some() => Api::GeminiInteractions,
        _ if candidates
            .or(usage_metadata)
            .or(non_null(feedback))
            .is_some() =>
        {
            Api::Gemini
        }
        // Chat chunks without a usable `object`: Azure's leading
        // `prompt_filter_results` chunk (`"object":""`), Moonshot.
        _ if choices.is_some() => Api::ChatCompletions,
        _ => return Ok(None),
    };
    Ok(Some(api))
}

fn from_name(name: &[u8]) -> Option<Api> {
    if name.starts_with(b"thread.") {
        Some(Api::Assistants)
    } else if name.starts_with(b"response.") {
        Some(Api::Responses)
    } else if name != b"ping" && ANTHROPIC_TYPES.contains(&name) {
        Some(Api::AnthropicMessages)
    } else if COHERE_TYPES.contains(&name) {
        Some(Api::Cohere)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(name: &str, data: &str) -> Option<Api> {
        detect(name.as_bytes(), data.as_bytes()).unwrap()
    }

    #[test]
    fn detection() {
        assert_eq!(
            api("", r#"{"object":"chat.completion.chunk"}"#),
            Some(Api::ChatCompletions)
        );
        assert_eq!(
            api(
                "",
                r#"{"choices":[],"created":0,"id":"","model":"","object":"","prompt_filter_results":[]}"#
            ),
            Some(Api::ChatCompletions)
        );
        assert_eq!(
            api("", r#"{"object":"text_completion"}"#),
            Some(Api::Completions)
        );
        assert_eq!(api("thread.run.created", r#"{}"#), Some(Api::Assistants));
        assert_eq!(api("", r#"{"object":"thread.run"}"#), Some(Api::Assistants));
        assert_eq!(
            api("", r#"{"type":"response.created"}"#),
            Some(Api::Responses)
        );
        assert_eq!(
            api("", r#"{"type":"keepalive","sequence_number":4}"#),
            Some(Api::Responses)
        );
        assert_eq!(api("", r#"{"type":"error","error":{}}"#), None);
        assert_eq!(api("message_start", r#"{}"#), Some(Api::AnthropicMessages));
        assert_eq!(api("", r#"{"type":"ping"}"#), Some(Api::AnthropicMessages));
        assert_eq!(api("ping", r#"{}"#), None);
        assert_eq!(
            api("", r#"{"type":"message-start","id":"x"}"#),
            Some(Api::Cohere)
        );
        assert_eq!(
            api("", r#"{"event_type":"interaction.created"}"#),
            Some(Api::GeminiInteractions)
        );
        assert_eq!(api("", r#"{"usageMetadata":{}}"#), Some(Api::Gemini));
        assert_eq!(api("", r#"{"hello":1}"#), None);
        assert_eq!(api("", "[1]"), None);
        assert_eq!(detect(b"", b"nope"), Err(Invalid));
    }
}
