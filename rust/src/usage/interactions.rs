//! Gemini Interactions API streams (`event_type` framing).
//!
//! `interaction.created` opens an interaction; the `interaction` object of
//! any event gives id and model; `interaction.completed` (or any event
//! whose `interaction.status` is terminal) carries `interaction.usage`.
//! `step.delta` events count as output when their delta holds non-empty
//! text, arguments or thought text; a bare thought signature does not.

use super::event::EventInfo;
use super::json::{fields, has_text_under, non_null, nonempty_str, str_body, Invalid};
use super::types::Status;

pub(crate) fn parse(data: &[u8]) -> Result<EventInfo<'_>, Invalid> {
    let [ty, interaction, delta, error] =
        fields(data, [b"event_type", b"interaction", b"delta", b"error"])?;
    let ty = ty.and_then(str_body).unwrap_or_default();
    let mut info = EventInfo {
        starts: ty == b"interaction.created",
        ..EventInfo::default()
    };
    if let Some(interaction) = non_null(interaction) {
        let [id, model, status, usage] =
            fields(interaction, [b"id", b"model", b"status", b"usage"])?;
        info.id = nonempty_str(id);
        info.model = nonempty_str(model);
        let status = match nonempty_str(status) {
            Some(b"completed" | b"requires_action") => Some(Status::Completed),
            Some(b"incomplete") => Some(Status::Incomplete),
            Some(b"failed") => Some(Status::Failed),
            Some(b"cancelled") => Some(Status::Cancelled),
            _ if ty == b"interaction.completed" => Some(Status::Completed),
            _ => None,
        };
        if let Some(status) = status {
            info.usage = non_null(usage);
            info.end(status, None);
            info.terminal = true;
        }
    }
    if ty == b"step.delta" {
        if let Some(delta) = delta {
            info.delta = has_text_under(delta, &[b"text", b"arguments", b"thought"], 4)?;
        }
    }
    if let Some(error) = non_null(error) {
        info.fail(error);
    } else if ty == b"error" {
        info.fail(data);
    }
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events() {
        let done = br#"{"interaction":{"id":"i","status":"completed","usage":{"total_tokens":3},"model":"g"},"event_type":"interaction.completed"}"#;
        let info = parse(done).unwrap();
        assert_eq!(info.status, Some(Status::Completed));
        assert_eq!(info.usage, Some(&br#"{"total_tokens":3}"#[..]));
        let created = br#"{"interaction":{"id":"i","status":"in_progress"},"event_type":"interaction.created"}"#;
        let info = parse(created).unwrap();
        assert!(info.starts && !info.terminal);
        let sig = br#"{"index":0,"delta":{"signature":"abc","type":"thought_signature"},"event_type":"step.delta"}"#;
        assert!(!parse(sig).unwrap().delta);
        let text = br#"{"index":1,"delta":{"text":"Hi","type":"text"},"event_type":"step.delta"}"#;
        assert!(parse(text).unwrap().delta);
    }
}
