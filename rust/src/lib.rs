//! ssetally core: incremental Server-Sent Events framing and token-usage
//! extraction for streaming LLM APIs. Pure Rust; the Python bindings live in
//! the `python` module behind the `python` cargo feature.

mod buf;
pub mod decode;
pub mod http1;
pub mod json_out;
pub mod lines;
pub mod reassemble;
pub mod sse;
pub mod strip;
mod surrogates;
pub mod usage;

#[cfg(feature = "python")]
mod python;

pub use sse::{Decoder, DecoderConfig, EventRef, FeedStatus, FinishStatus};
pub use usage::{Api, ApiHint, Report, Status, Usage, UsageTap};
