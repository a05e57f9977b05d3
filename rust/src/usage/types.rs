//! Public value types of the usage extractor: which API a stream speaks, how
//! a response ended, and what it cost.

use std::fmt;
use std::str::FromStr;

/// The API the caller says the stream speaks. `Auto` detects it from the
/// first events.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ApiHint {
    #[default]
    Auto,
    ChatCompletions,
    Completions,
    Responses,
    Assistants,
    AnthropicMessages,
    Gemini,
    GeminiInteractions,
    Cohere,
}

impl ApiHint {
    pub const ALL: [ApiHint; 9] = [
        ApiHint::Auto,
        ApiHint::ChatCompletions,
        ApiHint::Completions,
        ApiHint::Responses,
        ApiHint::Assistants,
        ApiHint::AnthropicMessages,
        ApiHint::Gemini,
        ApiHint::GeminiInteractions,
        ApiHint::Cohere,
    ];

    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            ApiHint::Auto => "auto",
            ApiHint::ChatCompletions => "chat.completions",
            ApiHint::Completions => "completions",
            ApiHint::Responses => "responses",
            ApiHint::Assistants => "assistants",
            ApiHint::AnthropicMessages => "anthropic.messages",
            ApiHint::Gemini => "gemini",
            ApiHint::GeminiInteractions => "gemini.interactions",
            ApiHint::Cohere => "cohere",
        }
    }
}

/// Error of [`ApiHint::from_str`]: the name is not one of [`ApiHint::as_str`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownApiHint(pub String);

impl fmt::Display for UnknownApiHint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown api {:?}; expected one of: ", self.0)?;
        let names: Vec<&str> = ApiHint::ALL.iter().map(|h| h.as_str()).collect();
        f.write_str(&names.join(", "))
    }
}

impl std::error::Error for UnknownApiHint {}

impl FromStr for ApiHint {
    type Err = UnknownApiHint;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ApiHint::ALL
            .into_iter()
            .find(|h| h.as_str() == s)
            .ok_or_else(|| UnknownApiHint(s.to_owned()))
    }
}

impl fmt::Display for ApiHint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The API a stream turned out to speak.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Api {
    #[default]
    Unknown,
    ChatCompletions,
    Completions,
    Responses,
    Assistants,
    AnthropicMessages,
    Gemini,
    GeminiInteractions,
    Cohere,
}

impl Api {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Api::Unknown => "unknown",
            Api::ChatCompletions => "chat.completions",
            Api::Completions => "completions",
            Api::Responses => "responses",
            Api::Assistants => "assistants",
            Api::AnthropicMessages => "anthropic.messages",
            Api::Gemini => "gemini",
            Api::GeminiInteractions => "gemini.interactions",
            Api::Cohere => "cohere",
        }
    }
}

impl From<ApiHint> for Api {
    fn from(hint: ApiHint) -> Self {
        match hint {
            ApiHint::Auto => Api::Unknown,
            ApiHint::ChatCompletions => Api::ChatCompletions,
            ApiHint::Completions => Api::Completions,
            ApiHint::Responses => Api::Responses,
            ApiHint::Assistants => Api::Assistants,
            ApiHint::AnthropicMessages => Api::AnthropicMessages,
            ApiHint::Gemini => Api::Gemini,
            ApiHint::GeminiInteractions => Api::GeminiInteractions,
            ApiHint::Cohere => Api::Cohere,
        }
    }
}

impl fmt::Display for Api {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a response ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Status {
    /// The model finished normally (stop, tool call, end of turn).
    Completed,
    /// The model stopped at a limit or a filter (length, max_tokens,
    /// content filter, refusal, Gemini non-STOP finish reasons).
    Incomplete,
    /// An error event, a failed response or a failed run.
    Failed,
    /// The response or run was cancelled.
    Cancelled,
    /// The stream ended without any terminal signal (cut mid-stream).
    #[default]
    Truncated,
}

impl Status {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Completed => "completed",
            Status::Incomplete => "incomplete",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
            Status::Truncated => "truncated",
        }
    }

    /// When one response reports several endings (for example `n > 1`
    /// choices, or an error event followed by `response.failed`), the most
    /// severe one is kept.
    pub(crate) fn severity(self) -> u8 {
        match self {
            Status::Truncated => 0,
            Status::Completed => 1,
            Status::Incomplete => 2,
            Status::Cancelled => 3,
            Status::Failed => 4,
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Token counts normalised across providers, plus the provider's own usage
/// object. A field is `None` when the provider did not report it (or
/// reported something that is not a non-negative integer).
///
/// Across all APIs: `input_tokens` includes cached and cache-write input,
/// `output_tokens` includes reasoning tokens, `total_tokens` is the
/// provider's total when it gives one and `input + output` otherwise.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
    pub total_tokens: Option<u64>,
    pub cached_input_tokens: Option<u64>,
    pub cache_write_tokens: Option<u64>,
    pub reasoning_tokens: Option<u64>,
    /// The provider's usage object as JSON text, untouched (for Anthropic,
    /// the `message_start` usage with the `message_delta` keys overlaid).
    pub raw: String,
}

impl Usage {
    /// At least one count was reported.
    #[must_use]
    pub fn has_counts(&self) -> bool {
        self.counts().iter().any(Option::is_some)
    }

    /// Every reported count is zero (Ollama's placeholder usage objects).
    #[must_use]
    pub fn is_zero(&self) -> bool {
        self.counts().iter().all(|c| matches!(c, None | Some(0)))
    }

    fn counts(&self) -> [Option<u64>; 6] {
        [
            self.input_tokens,
            self.output_tokens,
            self.total_tokens,
            self.cached_input_tokens,
            self.cache_write_tokens,
            self.reasoning_tokens,
        ]
    }
}

/// What one response in a stream cost and how it ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// `None` when the stream carried no usage for this response.
    pub usage: Option<Usage>,
    pub api: Api,
    pub response_id: Option<String>,
    pub model: Option<String>,
    pub status: Status,
    /// The provider's own finish / stop reason string.
    pub finish_reason: Option<String>,
    /// Responses `incomplete_details.reason` (Assistants: the run's).
    pub incomplete_reason: Option<String>,
    /// Raw JSON text of the error payload.
    pub error: Option<String>,
    /// SSE events dispatched, `[DONE]` included.
    pub events: u64,
    /// Events that carried a non-empty output delta.
    pub delta_chunks: u64,
    /// Bytes fed while this response was the current one.
    pub bytes: u64,
    /// The stream's own end marker was seen (a terminal event or `[DONE]`).
    pub done: bool,
    pub oversized_events: u64,
    pub invalid_json_events: u64,
    pub warnings: Vec<String>,
    /// Usage of each completed Assistants run step, in order (a step
    /// reported twice is kept once).
    pub step_usages: Vec<Usage>,
    /// How `usage` was arrived at when the stream did not report it as
    /// such (an Assistants run without run usage: the sum of its steps).
    pub usage_note: Option<String>,
    /// The `store` flag the response echoed (Responses `response.created`),
    /// when it said.
    pub store: Option<bool>,
}

impl Default for Report {
    fn default() -> Self {
        Self {
            usage: None,
            api: Api::Unknown,
            response_id: None,
            model: None,
            status: Status::Truncated,
            finish_reason: None,
            incomplete_reason: None,
            error: None,
            events: 0,
            delta_chunks: 0,
            bytes: 0,
            done: false,
            oversized_events: 0,
            invalid_json_events: 0,
            warnings: Vec::new(),
            step_usages: Vec::new(),
            usage_note: None,
            store: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for hint in ApiHint::ALL {
            assert_eq!(hint.as_str().parse::<ApiHint>(), Ok(hint));
            if hint != ApiHint::Auto {
                assert_eq!(Api::from(hint).as_str(), hint.as_str());
            }
        }
        assert_eq!(Api::Unknown.as_str(), "unknown");
        let err = "chat".parse::<ApiHint>().unwrap_err();
        assert!(err.to_string().contains("chat.completions"));
        assert_eq!(Status::Cancelled.to_string(), "cancelled");
    }

    #[test]
    fn zero_and_empty_usage() {
        let mut u = Usage::default();
        assert!(!u.has_counts());
        u.input_tokens = Some(0);
        assert!(u.has_counts() && u.is_zero());
        u.output_tokens = Some(3);
        assert!(!u.is_zero());
    }
}
