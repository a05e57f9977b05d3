//! The fastest path for Responses `*.delta` events.
//!
//! Within one output item, delta events repeat the same bytes up to the
//! `delta` string: `{"type":"response.output_text.delta","content_index":0,"delta":"`.
//! The first delta event read the slow way gives that prefix and its SSE
//! event name; a later event with the same name that starts with the same
//! bytes has its first `"delta":` key at the same place, so the slow path
//! would find exactly what this finds: whether the string is empty.

use super::scan::{looks_like_object, values, Needles};

/// Longest prefix worth keeping (real ones are under 100 bytes).
const MAX_PREFIX: usize = 256;

/// The learned shape of one stream's delta events.
#[derive(Clone, Debug, Default)]
pub(crate) struct DeltaTemplate {
    name: Vec<u8>,
    /// Everything up to and including the opening quote of the delta string.
    prefix: Vec<u8>,
}

impl DeltaTemplate {
    /// Learns from a delta event the slow path read: `name` is its SSE event
    /// name, which must be given (a type read from the data could differ).
    pub(crate) fn learn(name: &[u8], data: &[u8], needles: &Needles) -> Option<Self> {
        if name.is_empty() || !looks_like_object(data) {
            return None;
        }
        let at = values(data, &needles.delta).next()?;
        if data.get(at) != Some(&b'"') || at >= MAX_PREFIX {
            return None;
        }
        Some(Self {
            name: name.to_vec(),
            prefix: data[..=at].to_vec(),
        })
    }

    /// The SSE event name of the events this template matches.
    pub(crate) fn name(&self) -> &[u8] {
        &self.name
    }

    /// `Some(non_empty_delta)` when the event has this name and prefix.
    pub(crate) fn matches(&self, name: &[u8], data: &[u8]) -> Option<bool> {
        if name != self.name.as_slice() || data.last() != Some(&b'}') {
            return None;
        }
        let rest = data.strip_prefix(self.prefix.as_slice())?;
        // The closing brace is after the prefix, so `rest` is never empty.
        rest.first().map(|&b| b != b'"')
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAME: &[u8] = b"response.output_text.delta";
    const A: &[u8] = br#"{"type":"response.output_text.delta","content_index":0,"delta":"Hi","item_id":"m","output_index":0,"sequence_number":4}"#;

    #[test]
    fn learns_and_matches_the_same_prefix_and_name() {
        let t = DeltaTemplate::learn(NAME, A, &Needles::new()).unwrap();
        assert_eq!(t.matches(NAME, A), Some(true));
        let empty = br#"{"type":"response.output_text.delta","content_index":0,"delta":"","item_id":"m","sequence_number":5}"#;
        assert_eq!(t.matches(NAME, empty), Some(false));
        let other_index = br#"{"type":"response.output_text.delta","content_index":1,"delta":"x"}"#;
        assert_eq!(t.matches(NAME, other_index), None);
        assert_eq!(t.matches(b"response.refusal.delta", A), None);
        let unclosed = br#"{"type":"response.output_text.delta","content_index":0,"delta":"x"#;
        assert_eq!(t.matches(NAME, unclosed), None);
    }

    #[test]
    fn learns_only_plain_string_deltas_with_a_name() {
        let n = Needles::new();
        assert!(DeltaTemplate::learn(b"", A, &n).is_none());
        let object = br#"{"type":"response.x.delta","delta":{"a":1}}"#;
        assert!(DeltaTemplate::learn(b"response.x.delta", object, &n).is_none());
        assert!(DeltaTemplate::learn(NAME, b"{\"delta\":\"x\"", &n).is_none());
    }
}
