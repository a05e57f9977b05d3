//! Cohere v2 chat streams (`message-start` ... `message-end`).
//!
//! `message-end.delta` carries `finish_reason` and `usage`
//! (`billed_units`, `tokens`, `cached_tokens`). Finish reasons: COMPLETE,
//! STOP_SEQUENCE and TOOL_CALL complete the answer, ERROR fails it, any
//! other (MAX_TOKENS, TIMEOUT, ...) leaves it incomplete.

use super::event::EventInfo;
use super::json::{fields, has_text_under, non_null, nonempty_str, str_body, Invalid};
use super::types::Status;

pub(crate) fn parse<'a>(name: &'a [u8], data: &'a [u8]) -> Result<EventInfo<'a>, Invalid> {
    let [ty, id, delta] = fields(data, [b"type", b"id", b"delta"])?;
    let mut info = EventInfo::default();
    match ty.and_then(str_body).unwrap_or(name) {
        b"message-start" => {
            info.id = nonempty_str(id);
            info.starts = true;
        }
        b"content-delta" | b"tool-call-delta" | b"tool-plan-delta" => {
            if let Some(delta) = delta {
                info.delta = has_text_under(delta, &[b"text", b"arguments", b"tool_plan"], 6)?;
            }
        }
        b"message-end" => {
            let [reason, usage, error] = fields(
                delta.unwrap_or(b"null"),
                [b"finish_reason", b"usage", b"error"],
            )?;
            info.usage = non_null(usage);
            let reason = nonempty_str(reason);
            match reason {
                Some(b"COMPLETE" | b"STOP_SEQUENCE" | b"TOOL_CALL") | None => {
                    info.end(Status::Completed, reason)
                }
                Some(b"ERROR") => info.fail(non_null(error).unwrap_or(data)),
                Some(_) => info.end(Status::Incomplete, reason),
            }
            if info.status == Some(Status::Failed) {
                info.finish_reason = reason;
            }
            info.terminal = true;
        }
        _ => {}
    }
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events() {
        let end = br#"{"type":"message-end","delta":{"finish_reason":"MAX_TOKENS","usage":{"billed_units":{"input_tokens":1}}}}"#;
        let info = parse(b"message-end", end).unwrap();
        assert_eq!(info.status, Some(Status::Incomplete));
        assert_eq!(
            info.usage,
            Some(&br#"{"billed_units":{"input_tokens":1}}"#[..])
        );
        let delta =
            br#"{"type":"content-delta","index":0,"delta":{"message":{"content":{"text":"The"}}}}"#;
        assert!(parse(b"", delta).unwrap().delta);
        let error = br#"{"type":"message-end","delta":{"finish_reason":"ERROR","error":"boom"}}"#;
        let info = parse(b"", error).unwrap();
        assert_eq!(info.status, Some(Status::Failed));
        assert_eq!(info.error, Some(&b"\"boom\""[..]));
        assert_eq!(info.finish_reason, Some(&b"ERROR"[..]));
    }
}
