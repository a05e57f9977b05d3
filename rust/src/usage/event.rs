//! What one event says, independent of the API it came from. The per-API
//! parsers fill an [`EventInfo`] with raw slices of the event (nothing is
//! copied); the report builder then applies it.

use super::types::Status;

#[derive(Clone, Debug, Default)]
pub(crate) struct EventInfo<'a> {
    /// Body of the response id string (non-empty).
    pub id: Option<&'a [u8]>,
    /// Body of the model string (non-empty).
    pub model: Option<&'a [u8]>,
    /// The event opens a response (`response.created`, `message_start`,
    /// ...): a different id here starts a new report even mid-stream.
    pub starts: bool,
    /// Raw usage object.
    pub usage: Option<&'a [u8]>,
    /// Overlay `usage` onto the previous usage object instead of replacing
    /// it (Anthropic `message_delta`).
    pub merge_usage: bool,
    /// `usage` is the response's final one, not a running total (chat's
    /// usage-only chunk; see [`super::builder`] for the other APIs).
    pub final_usage: bool,
    /// Raw usage object of an Assistants run step.
    pub step_usage: Option<&'a [u8]>,
    /// Body of that run step's id.
    pub step_id: Option<&'a [u8]>,
    /// The response's `store` flag, when the event says it.
    pub store: Option<bool>,
    pub status: Option<Status>,
    /// Body of the provider's finish reason string.
    pub finish_reason: Option<&'a [u8]>,
    pub incomplete_reason: Option<&'a [u8]>,
    /// Raw error payload.
    pub error: Option<&'a [u8]>,
    /// The event carries a non-empty output delta.
    pub delta: bool,
    /// The response stopped generating (finish reason, error): a new id
    /// after this starts a new report.
    pub finished: bool,
    /// The response's own end marker (sets `done`).
    pub terminal: bool,
}

impl<'a> EventInfo<'a> {
    /// Records an ending, keeping the most severe one of the event.
    pub(crate) fn end(&mut self, status: Status, reason: Option<&'a [u8]>) {
        if self
            .status
            .map_or(true, |s| status.severity() >= s.severity())
        {
            self.status = Some(status);
            if reason.is_some() {
                self.finish_reason = reason;
            }
        }
        self.finished = true;
    }

    /// Records an error payload: the response failed.
    pub(crate) fn fail(&mut self, error: &'a [u8]) {
        self.error.get_or_insert(error);
        self.end(Status::Failed, None);
    }
}
