//! OpenAI Assistants run streams (`thread.*` events, deprecated API).
//!
//! The event name is in the SSE `event:` field; when a gateway dropped it,
//! it is rebuilt from the data's `object` and `status`. Run usage comes
//! from the terminal run events (completed, incomplete, failed, cancelled,
//! expired); `requires_action` ends the stream too (the run waits for tool
//! outputs, its usage is still null) and counts as completed. The run
//! status is reported as the finish reason. Usage of each completed run
//! step goes to `step_usages`.

use super::event::EventInfo;
use super::json::{fields, has_text_under, non_null, nonempty_str, str_body, Invalid};
use super::types::Status;

enum Kind<'a> {
    /// `thread.run.<phase>`
    Run(&'a [u8]),
    StepCompleted,
    Delta,
    Error,
    Other,
}

fn kind<'a>(name: &'a [u8], object: Option<&'a [u8]>, status: Option<&'a [u8]>) -> Kind<'a> {
    if name == b"error" {
        return Kind::Error;
    }
    if name.starts_with(b"thread.") {
        return match name {
            b"thread.run.step.completed" => Kind::StepCompleted,
            b"thread.message.delta" | b"thread.run.step.delta" => Kind::Delta,
            _ if name.starts_with(b"thread.run.step.") => Kind::Other,
            _ => name
                .strip_prefix(b"thread.run.")
                .map_or(Kind::Other, Kind::Run),
        };
    }
    match (object.unwrap_or_default(), status) {
        (b"thread.run", Some(phase)) => Kind::Run(phase),
        (b"thread.run.step", Some(b"completed")) => Kind::StepCompleted,
        (b"thread.message.delta" | b"thread.run.step.delta", _) => Kind::Delta,
        _ => Kind::Other,
    }
}

pub(crate) fn parse<'a>(name: &'a [u8], data: &'a [u8]) -> Result<EventInfo<'a>, Invalid> {
    let [id, object, model, status, usage, incomplete, last_error, delta] = fields(
        data,
        [
            b"id",
            b"object",
            b"model",
            b"status",
            b"usage",
            b"incomplete_details",
            b"last_error",
            b"delta",
        ],
    )?;
    let mut info = EventInfo::default();
    match kind(name, object.and_then(str_body), nonempty_str(status)) {
        Kind::Run(phase) => {
            info.id = nonempty_str(id);
            info.model = nonempty_str(model);
            info.starts = phase == b"created";
            let ending = match phase {
                b"completed" | b"requires_action" => Some(Status::Completed),
                b"incomplete" => Some(Status::Incomplete),
                b"failed" | b"expired" => Some(Status::Failed),
                b"cancelled" => Some(Status::Cancelled),
                _ => None,
            };
            if let Some(status) = ending {
                info.usage = non_null(usage);
                if let Some(details) = non_null(incomplete) {
                    info.incomplete_reason = nonempty_str(fields(details, [b"reason"])?[0]);
                }
                if let Some(error) = non_null(last_error).filter(|_| status == Status::Failed) {
                    info.error = Some(error);
                }
                info.end(status, Some(phase));
                info.terminal = true;
            }
        }
        Kind::StepCompleted => {
            info.step_usage = non_null(usage);
            info.step_id = nonempty_str(id);
        }
        Kind::Delta => {
            if let Some(delta) = delta {
                info.delta = has_text_under(delta, &[b"value", b"arguments", b"input"], 8)?;
            }
        }
        Kind::Error => info.fail(data),
        Kind::Other => {}
    }
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_events() {
        let done = br#"{"id":"run_1","object":"thread.run","status":"completed","model":"gpt","usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}}"#;
        for name in [&b"thread.run.completed"[..], b""] {
            let info = parse(name, done).unwrap();
            assert_eq!(info.status, Some(Status::Completed));
            assert_eq!(info.id, Some(&b"run_1"[..]));
            assert!(info.usage.is_some() && info.terminal);
        }
        let step = br#"{"id":"step_1","object":"thread.run.step","status":"completed","usage":{"total_tokens":3}}"#;
        let info = parse(b"thread.run.step.completed", step).unwrap();
        assert!(info.step_usage.is_some() && info.id.is_none());
        let delta = br#"{"id":"msg","object":"thread.message.delta","delta":{"content":[{"index":0,"type":"text","text":{"value":"Hi"}}]}}"#;
        assert!(parse(b"thread.message.delta", delta).unwrap().delta);
        let failed = br#"{"id":"run_1","object":"thread.run","status":"failed","last_error":{"code":"server_error"}}"#;
        let info = parse(b"thread.run.failed", failed).unwrap();
        assert_eq!(info.error, Some(&br#"{"code":"server_error"}"#[..]));
        assert_eq!(info.finish_reason, Some(&b"failed"[..]));
        let expired = br#"{"id":"run_1","object":"thread.run","status":"expired"}"#;
        assert_eq!(
            parse(b"thread.run.expired", expired).unwrap().status,
            Some(Status::Failed)
        );
    }
}
