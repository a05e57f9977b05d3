//! Gemini `streamGenerateContent?alt=sse` chunks (Google AI and Vertex).
//!
//! Every chunk may carry `usageMetadata` with running totals; the builder
//! keeps the last one that has counts (Vertex sends `trafficType`-only
//! objects until the last chunk). Gemini has no end marker other than the
//! chunk with `candidates[].finishReason`: STOP completes, any other reason
//! leaves the answer incomplete. A prompt blocked by `promptFeedback`
//! ends the same way, with the block reason as finish reason.

use super::event::EventInfo;
use super::json::{fields, has_content, items, non_null, nonempty_str, Invalid};
use super::types::Status;

pub(crate) fn parse(data: &[u8]) -> Result<EventInfo<'_>, Invalid> {
    let [candidates, usage, id, model, error, feedback] = fields(
        data,
        [
            b"candidates",
            b"usageMetadata",
            b"responseId",
            b"modelVersion",
            b"error",
            b"promptFeedback",
        ],
    )?;
    let mut info = EventInfo {
        id: nonempty_str(id),
        model: nonempty_str(model),
        usage: non_null(usage),
        ..EventInfo::default()
    };
    if let Some(candidates) = candidates {
        items(candidates, |candidate| {
            let [content, finish] = fields(candidate, [b"content", b"finishReason"])?;
            if let Some(content) = content {
                info.delta |= parts_have_output(content)?;
            }
            if let Some(reason) = nonempty_str(finish) {
                // Only the first candidate's reason is reported.
                if info.finish_reason.is_none() {
                    let status = if reason == b"STOP" {
                        Status::Completed
                    } else {
                        Status::Incomplete
                    };
                    info.end(status, Some(reason));
                    info.terminal = true;
                }
            }
            Ok(())
        })?;
    }
    if let Some(feedback) = non_null(feedback) {
        if let Some(reason) = nonempty_str(fields(feedback, [b"blockReason"])?[0]) {
            info.end(Status::Incomplete, Some(reason));
            info.terminal = true;
        }
    }
    if let Some(error) = non_null(error) {
        info.fail(error);
    }
    Ok(info)
}

/// A candidate produced output when one of its parts has text (answer or
/// thought summary) or a function call.
fn parts_have_output(content: &[u8]) -> Result<bool, Invalid> {
    let mut found = false;
    if let Some(parts) = fields(content, [b"parts"])?[0] {
        items(parts, |part| {
            let [text, call] = fields(part, [b"text", b"functionCall"])?;
            found |= text.is_some_and(has_content) || non_null(call).is_some();
            Ok(())
        })?;
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks() {
        let chunk = br#"{"candidates":[{"content":{"parts":[{"text":"\"usageMetadata\":{}"}]},"finishReason":"MAX_TOKENS"}],"usageMetadata":{"promptTokenCount":1},"responseId":"r","modelVersion":"g"}"#;
        let info = parse(chunk).unwrap();
        assert!(info.delta && info.terminal);
        assert_eq!(info.status, Some(Status::Incomplete));
        assert_eq!(info.finish_reason, Some(&b"MAX_TOKENS"[..]));
        assert_eq!(info.usage, Some(&br#"{"promptTokenCount":1}"#[..]));
        let blocked = br#"{"promptFeedback":{"blockReason":"SAFETY"},"usageMetadata":{"promptTokenCount":4}}"#;
        assert_eq!(parse(blocked).unwrap().finish_reason, Some(&b"SAFETY"[..]));
        let error = br#"{"error":{"code":429,"message":"quota","status":"RESOURCE_EXHAUSTED"}}"#;
        assert_eq!(parse(error).unwrap().status, Some(Status::Failed));
        let empty =
            br#"{"candidates":[{"content":{"parts":[{"text":""}]},"finishReason":"STOP"}]}"#;
        let info = parse(empty).unwrap();
        assert!(!info.delta);
        assert_eq!(info.status, Some(Status::Completed));
    }
}
