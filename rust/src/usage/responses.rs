//! OpenAI Responses API streams (also Azure, xAI, LM Studio and other
//! Open Responses servers).
//!
//! The event type comes from the SSE `event:` name when it is a Responses
//! name, else from the data's `type` key (read without walking the rest).
//! Only a handful of types are parsed: the lifecycle events that carry the
//! `response` object, and `error`. `*.delta` events only have their
//! top-level `delta` checked; every other type (`keepalive`, unknown ones)
//! is skipped unparsed. Usage is `response.usage` of the terminal events,
//! never a `usage` key found elsewhere (`response.metadata`, output text).

use super::event::EventInfo;
use super::json::{
    fields, fields_in, first_field, has_content, non_null, nonempty_str, str_body, validate,
    value_at, Invalid,
};
use super::scan::{looks_like_object, values, Needles};
use super::types::Status;

fn is_responses_name(name: &[u8]) -> bool {
    name.starts_with(b"response.") || name == b"error" || name == b"keepalive"
}

pub(crate) fn parse<'a>(
    name: &'a [u8],
    data: &'a [u8],
    needles: &Needles,
) -> Result<EventInfo<'a>, Invalid> {
    let ty = if is_responses_name(name) {
        name
    } else {
        first_field(data, b"type")?
            .and_then(str_body)
            .unwrap_or_default()
    };
    match ty {
        b"response.created" | b"response.queued" | b"response.in_progress" => {
            lifecycle(data, ty == b"response.created")
        }
        b"response.completed"
        | b"response.incomplete"
        | b"response.failed"
        | b"response.cancelled" => terminal(data, ty),
        b"error" => error(data),
        _ if ty.ends_with(b".delta") => delta(data, needles),
        _ => ignored(data),
    }
}

/// Unparsed events still count as invalid when they are not even shaped
/// like an object.
fn ignored(data: &[u8]) -> Result<EventInfo<'_>, Invalid> {
    if !looks_like_object(data) {
        validate(data)?;
    }
    Ok(EventInfo::default())
}

/// `*.delta` events: the top-level `delta` (text, arguments, code, ...)
/// is the first `"delta"` key of the event.
fn delta<'a>(data: &'a [u8], n: &Needles) -> Result<EventInfo<'a>, Invalid> {
    if !looks_like_object(data) {
        validate(data)?;
        return Ok(EventInfo::default());
    }
    let delta = match values(data, &n.delta).next() {
        // `"delta":"x...` is a non-empty string; other shapes go through jiter.
        Some(at) if data.get(at) == Some(&b'"') && data.get(at + 1).is_some_and(|&b| b != b'"') => {
            true
        }
        Some(at) => has_content(value_at(data, at)?),
        None => false,
    };
    Ok(EventInfo {
        delta,
        ..EventInfo::default()
    })
}

fn lifecycle(data: &[u8], starts: bool) -> Result<EventInfo<'_>, Invalid> {
    let [id, model, store] = fields_in(data, b"response", [b"id", b"model", b"store"])?;
    Ok(EventInfo {
        id: nonempty_str(id),
        model: nonempty_str(model),
        starts,
        // The response echoes the request's `store`: `false` means it
        // cannot be read back afterwards.
        store: match store {
            Some(b"true") => Some(true),
            Some(b"false") => Some(false),
            _ => None,
        },
        ..EventInfo::default()
    })
}

fn terminal<'a>(data: &'a [u8], ty: &[u8]) -> Result<EventInfo<'a>, Invalid> {
    let [id, model, status, usage, error, incomplete] = fields_in(
        data,
        b"response",
        [
            b"id",
            b"model",
            b"status",
            b"usage",
            b"error",
            b"incomplete_details",
        ],
    )?;
    let mut info = EventInfo {
        id: nonempty_str(id),
        model: nonempty_str(model),
        usage: non_null(usage),
        terminal: true,
        ..EventInfo::default()
    };
    // The response's own status wins over the event name.
    let status = match nonempty_str(status) {
        Some(b"completed") => Status::Completed,
        Some(b"incomplete") => Status::Incomplete,
        Some(b"failed") => Status::Failed,
        Some(b"cancelled") => Status::Cancelled,
        _ => match ty {
            b"response.incomplete" => Status::Incomplete,
            b"response.failed" => Status::Failed,
            b"response.cancelled" => Status::Cancelled,
            _ => Status::Completed,
        },
    };
    if let Some(details) = non_null(incomplete) {
        info.incomplete_reason = nonempty_str(fields(details, [b"reason"])?[0]);
    }
    match non_null(error) {
        Some(error) if status == Status::Failed => info.fail(error),
        _ => info.end(status, None),
    }
    Ok(info)
}

/// `error` events come flat (`code`, `message`, `param`) or nested
/// (`error: {...}`): keep the nested object, else the whole event.
fn error(data: &[u8]) -> Result<EventInfo<'_>, Invalid> {
    let [nested] = fields(data, [b"error"])?;
    let mut info = EventInfo::default();
    info.fail(non_null(nested).unwrap_or(data));
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run<'a>(name: &'a [u8], data: &'a [u8]) -> EventInfo<'a> {
        parse(name, data, &Needles::new()).unwrap()
    }

    #[test]
    fn terminal_usage_by_path() {
        let data = br#"{"type":"response.completed","response":{"id":"r1","metadata":{"usage":{"input_tokens":99}},"output":[{"text":"\"usage\":{}"}],"status":"completed","usage":{"input_tokens":1}}}"#;
        for name in [&b""[..], b"response.completed", b"message"] {
            let info = run(name, data);
            assert_eq!(info.usage, Some(&br#"{"input_tokens":1}"#[..]));
            assert_eq!(info.status, Some(Status::Completed));
            assert!(info.terminal);
            assert_eq!(info.id, Some(&b"r1"[..]));
        }
        let null_usage = br#"{"type":"response.failed","response":{"status":"failed","usage":null,"error":{"code":"x"}}}"#;
        let info = run(b"", null_usage);
        assert_eq!((info.usage, info.status), (None, Some(Status::Failed)));
        assert_eq!(info.error, Some(&br#"{"code":"x"}"#[..]));
        let incomplete = br#"{"type":"response.incomplete","response":{"status":"incomplete","incomplete_details":{"reason":"max_output_tokens"}}}"#;
        let info = run(b"", incomplete);
        assert_eq!(info.status, Some(Status::Incomplete));
        assert_eq!(info.incomplete_reason, Some(&b"max_output_tokens"[..]));
        let cancelled = br#"{"type":"response.failed","response":{"status":"cancelled"}}"#;
        assert_eq!(run(b"", cancelled).status, Some(Status::Cancelled));
    }

    #[test]
    fn errors_and_deltas() {
        let flat = br#"{"type":"error","code":"server_error","message":"m","param":null,"sequence_number":3}"#;
        assert_eq!(run(b"error", flat).error, Some(&flat[..]));
        let nested =
            br#"{"type":"error","sequence_number":2,"error":{"type":"insufficient_quota"}}"#;
        assert_eq!(
            run(b"", nested).error,
            Some(&br#"{"type":"insufficient_quota"}"#[..])
        );
        let delta =
            br#"{"type":"response.output_text.delta","item_id":"m","delta":"Hi","logprobs":[]}"#;
        assert!(run(b"response.output_text.delta", delta).delta);
        assert!(run(b"", delta).delta);
        let empty = br#"{"type":"response.function_call_arguments.delta","delta":""}"#;
        assert!(!run(b"", empty).delta);
        assert!(!run(b"", br#"{"type":"keepalive","sequence_number":466}"#).delta);
        assert_eq!(
            parse(b"keepalive", b"nope", &Needles::new()).unwrap_err(),
            Invalid
        );
    }
}
