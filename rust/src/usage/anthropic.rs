//! Anthropic Messages streams.
//!
//! Usage starts in `message_start.message.usage` and is updated by the
//! cumulative `message_delta.usage` (several may arrive): the builder
//! overlays each delta's keys onto the object it holds, never adding.
//! `message_stop` ends the message, `event: error` fails it, `ping` is
//! ignored. Duplicate and spliced `message_start` events are handled by the
//! builder through the message id.

use super::event::EventInfo;
use super::json::{fields, has_text_under, non_null, nonempty_str, str_body, Invalid};
use super::types::Status;

pub(crate) fn parse<'a>(name: &'a [u8], data: &'a [u8]) -> Result<EventInfo<'a>, Invalid> {
    let [ty, message, delta, usage, error] =
        fields(data, [b"type", b"message", b"delta", b"usage", b"error"])?;
    let mut info = EventInfo::default();
    match ty.and_then(str_body).unwrap_or(name) {
        b"message_start" => {
            if let Some(message) = message {
                let [id, model, usage] = fields(message, [b"id", b"model", b"usage"])?;
                info.id = nonempty_str(id);
                info.model = nonempty_str(model);
                info.usage = non_null(usage);
                info.starts = true;
            }
        }
        b"message_delta" => {
            if let Some(delta) = delta {
                if let Some(reason) = nonempty_str(fields(delta, [b"stop_reason"])?[0]) {
                    info.end(status_of(reason), Some(reason));
                }
            }
            info.usage = non_null(usage);
            info.merge_usage = true;
        }
        b"message_stop" => {
            info.terminal = true;
            info.finished = true;
        }
        b"content_block_delta" => {
            info.delta = match delta {
                Some(d) => has_text_under(d, &[b"text", b"partial_json", b"thinking"], 1)?,
                None => false,
            };
        }
        b"error" => info.fail(non_null(error).unwrap_or(data)),
        _ => {}
    }
    Ok(info)
}

/// `max_tokens`, `model_context_window_exceeded` and `refusal` (the
/// streaming classifier stopped the answer) are incomplete answers.
fn status_of(reason: &[u8]) -> Status {
    match reason {
        b"max_tokens" | b"model_context_window_exceeded" | b"refusal" => Status::Incomplete,
        _ => Status::Completed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events() {
        let start = br#"{"type":"message_start","message":{"id":"m1","model":"c","usage":{"input_tokens":3},"content":[{"text":"\"usage\":1"}]}}"#;
        let info = parse(b"message_start", start).unwrap();
        assert!(info.starts);
        assert_eq!(info.usage, Some(&br#"{"input_tokens":3}"#[..]));
        let delta = br#"{"type":"message_delta","delta":{"stop_reason":"max_tokens"},"usage":{"output_tokens":6}}"#;
        let info = parse(b"", delta).unwrap();
        assert!(info.merge_usage && info.finished);
        assert_eq!(info.status, Some(Status::Incomplete));
        let text = br#"{"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}}"#;
        assert!(parse(b"", text).unwrap().delta);
        let empty = br#"{"type":"content_block_delta","delta":{"type":"input_json_delta","partial_json":""}}"#;
        assert!(!parse(b"", empty).unwrap().delta);
        let error =
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
        let info = parse(b"error", error).unwrap();
        assert_eq!(info.status, Some(Status::Failed));
        assert_eq!(
            info.error,
            Some(&br#"{"type":"overloaded_error","message":"Overloaded"}"#[..])
        );
    }
}
