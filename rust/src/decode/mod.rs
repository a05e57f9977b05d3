//! Bounded incremental decoding of HTTP content codings (`Content-Encoding`).
//!
//! Metering reads a decompressed copy of a body that is forwarded raw, so a
//! hostile body must not turn a few kilobytes into gigabytes in memory. Every
//! `feed` therefore has a hard cap on what one input chunk may produce
//! (`max_output_per_feed`) and the whole body on what it may produce in total
//! (`max_total_output`); past either the decoder fails with [`Error::Bomb`]
//! and stays failed. Output buffers grow with `try_reserve` and decoders keep
//! windows of bounded size (zstd at most 8 MiB, brotli without large windows),
//! so memory stays near the per-feed limit whatever the input.

mod br;
mod flate;
mod zst;

#[cfg(test)]
mod tests;

use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Default cap on the output of one `feed` call.
pub const DEFAULT_MAX_OUTPUT_PER_FEED: usize = 8 << 20;
/// Default cap on the output of a whole body.
pub const DEFAULT_MAX_TOTAL_OUTPUT: u64 = 256 << 20;
/// Largest zstd window accepted (RFC 9659: HTTP decoders may reject more).
pub const ZSTD_WINDOW_LOG_MAX: u32 = 23;
/// More stacked codings than this are refused (no real server sends them).
const MAX_STACKED: usize = 4;
/// Output is produced in steps of at most this much, so a stage never holds
/// room it will not fill.
const STEP: usize = 128 << 10;
const MIN_STEP: usize = 4 << 10;
/// Intermediate buffers larger than this are freed between feeds.
const KEEP_CAPACITY: usize = 1 << 20;

/// Output caps of a [`ContentDecoder`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The most bytes one `feed` may append.
    pub max_output_per_feed: usize,
    /// The most bytes the whole stream may produce.
    pub max_total_output: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_output_per_feed: DEFAULT_MAX_OUTPUT_PER_FEED,
            max_total_output: DEFAULT_MAX_TOTAL_OUTPUT,
        }
    }
}

/// Which cap a bomb passed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    PerFeed,
    Total,
}

/// Why decoding failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Error {
    /// A coding that cannot be decoded (construction only).
    Unsupported(String),
    /// The input is not a valid stream of its coding.
    Corrupt(String),
    /// The stream ended before its coding said it was complete.
    Truncated(&'static str),
    /// The output passed a limit; what was produced up to it was appended.
    Bomb { limit: Limit, value: u64 },
    /// An output buffer could not be allocated.
    OutOfMemory,
    /// The decoder already failed or finished.
    Finished,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Unsupported(msg) | Error::Corrupt(msg) => f.write_str(msg),
            Error::Truncated(coding) => write!(f, "truncated {coding} stream"),
            Error::Bomb {
                limit: Limit::PerFeed,
                value,
            } => write!(
                f,
                "one chunk decompressed to more than max_output_per_feed={value} bytes"
            ),
            Error::Bomb {
                limit: Limit::Total,
                value,
            } => write!(
                f,
                "the body decompressed to more than max_total_output={value} bytes"
            ),
            Error::OutOfMemory => f.write_str("out of memory for decompressed output"),
            Error::Finished => f.write_str("the decoder has already finished or failed"),
        }
    }
}

impl std::error::Error for Error {}

/// One decoding step's progress.
struct Progress {
    consumed: usize,
    written: usize,
}

/// One content coding's decoder.
enum Stage {
    Gzip(flate::Gzip),
    Deflate(flate::Deflate),
    Brotli(br::Brotli),
    Zstd(zst::Zstd),
}

impl Stage {
    fn new(coding: &str) -> Result<Self, Error> {
        Ok(match coding {
            "gzip" | "x-gzip" => Stage::Gzip(flate::Gzip::new()),
            "deflate" => Stage::Deflate(flate::Deflate::new()),
            "br" => Stage::Brotli(br::Brotli::new()),
            "zstd" => Stage::Zstd(zst::Zstd::new()?),
            other => {
                return Err(Error::Unsupported(format!(
                    "unsupported content-encoding {other:?}"
                )))
            }
        })
    }

    /// Decodes from `input` into `out` (fully or partly filled), reporting
    /// how much of each was used. Must consume or write something whenever
    /// `input` is not empty.
    fn step(&mut self, input: &[u8], out: &mut [u8]) -> Result<Progress, Error> {
        match self {
            Stage::Gzip(s) => s.step(input, out),
            Stage::Deflate(s) => s.step(input, out),
            Stage::Brotli(s) => s.step(input, out),
            Stage::Zstd(s) => s.step(input, out),
        }
    }

    /// Ok when the stream seen so far is complete (or empty).
    fn finish(&self) -> Result<(), Error> {
        match self {
            Stage::Gzip(s) => s.finish(),
            Stage::Deflate(s) => s.finish(),
            Stage::Brotli(s) => s.finish(),
            Stage::Zstd(s) => s.finish(),
        }
    }
}

/// A stage with its running output total.
struct Layer {
    stage: Stage,
    total: u64,
}

impl Layer {
    /// Decodes all of `input`, appending to `out` within the limits.
    fn run(&mut self, limits: &Limits, mut input: &[u8], out: &mut Vec<u8>) -> Result<(), Error> {
        let start = out.len();
        // Room starts near what the input may need and doubles while it
        // fills, so small feeds do not clear a whole step each.
        let mut grow = input.len().saturating_mul(4).clamp(MIN_STEP, STEP);
        loop {
            let produced = out.len() - start;
            let feed_left = limits.max_output_per_feed.saturating_sub(produced);
            let total_left = limits.max_total_output.saturating_sub(self.total);
            let allowed = feed_left.min(usize::try_from(total_left).unwrap_or(usize::MAX));
            // One byte more than allowed tells a bomb from a stream that
            // ends exactly at the limit.
            let room = grow.min(allowed.saturating_add(1));
            reserve(
                out,
                room,
                out.len().saturating_add(allowed).saturating_add(1),
            )?;
            let len = out.len();
            out.resize(len + room, 0);
            let step = self.stage.step(input, &mut out[len..]);
            let Progress { consumed, written } = match step {
                Ok(p) => p,
                Err(e) => {
                    out.truncate(len);
                    return Err(e);
                }
            };
            if written > allowed {
                out.truncate(len + allowed);
                self.total += allowed as u64;
                let (limit, value) = if feed_left <= allowed {
                    (Limit::PerFeed, limits.max_output_per_feed as u64)
                } else {
                    (Limit::Total, limits.max_total_output)
                };
                return Err(Error::Bomb { limit, value });
            }
            out.truncate(len + written);
            self.total += written as u64;
            input = &input[consumed..];
            if written == room {
                grow = (grow * 2).min(STEP);
            }
            if input.is_empty() && written < room {
                return Ok(());
            }
            if consumed == 0 && written == 0 {
                return Err(Error::Corrupt("decoder made no progress".into()));
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Open,
    Finished,
    Failed,
}

/// Makes room for `room` more bytes, growing geometrically (as `Vec` does)
/// but never past `most`, the length this feed can reach.
fn reserve(out: &mut Vec<u8>, room: usize, most: usize) -> Result<(), Error> {
    let need = out.len() + room;
    if need <= out.capacity() {
        return Ok(());
    }
    let target = out
        .capacity()
        .saturating_mul(2)
        .max(need)
        .min(most.max(need));
    out.try_reserve_exact(target - out.len())
        .map_err(|_| Error::OutOfMemory)
}

/// Incremental, bounded decoder of a `Content-Encoding` header's codings.
pub struct ContentDecoder {
    /// In decoding order: the last coding listed comes first.
    layers: Vec<Layer>,
    limits: Limits,
    encoding: String,
    /// Output of identity streams (not limited: nothing is amplified).
    identity_total: u64,
    state: State,
    scratch: [Vec<u8>; 2],
}

impl ContentDecoder {
    /// A decoder for a `Content-Encoding` value such as `"gzip"`, `"br"` or
    /// `"gzip, br"` (applied in that order, so decoded in reverse). Case and
    /// whitespace are ignored and `identity` entries skipped; an empty value
    /// means identity.
    pub fn new(content_encoding: &str, limits: Limits) -> Result<Self, Error> {
        let codings: Vec<String> = content_encoding
            .split(',')
            .map(|c| c.trim().to_ascii_lowercase())
            .filter(|c| !c.is_empty() && c != "identity")
            .collect();
        if codings.len() > MAX_STACKED {
            return Err(Error::Unsupported(format!(
                "more than {MAX_STACKED} stacked content codings: {content_encoding:?}"
            )));
        }
        let layers = codings
            .iter()
            .rev()
            .map(|c| Stage::new(c).map(|stage| Layer { stage, total: 0 }))
            .collect::<Result<Vec<_>, _>>()?;
        let encoding = if codings.is_empty() {
            "identity".to_owned()
        } else {
            codings.join(", ")
        };
        Ok(Self {
            layers,
            limits,
            encoding,
            identity_total: 0,
            state: State::Open,
            scratch: Default::default(),
        })
    }

    /// The codings in header order, normalized (`"identity"` when none).
    pub fn encoding(&self) -> &str {
        &self.encoding
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// True when nothing is decoded (the output is the input).
    pub fn is_identity(&self) -> bool {
        self.layers.is_empty()
    }

    /// Decoded bytes produced so far.
    pub fn total_output(&self) -> u64 {
        self.layers.last().map_or(self.identity_total, |l| l.total)
    }

    /// Decodes `input` (any split of the body), appending what it completes
    /// to `out`. On error `out` holds what was decoded before it (for a bomb,
    /// up to the limit) and the decoder is finished.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), Error> {
        if self.state != State::Open {
            return Err(Error::Finished);
        }
        // A panic inside a decoding crate must not leave a usable decoder
        // in an unknown state; it is reported as corrupt input instead.
        let result = catch_unwind(AssertUnwindSafe(|| self.feed_layers(input, out)))
            .unwrap_or_else(|_| Err(Error::Corrupt("decoder panicked on this input".into())));
        if result.is_err() {
            self.state = State::Failed;
            self.scratch = Default::default();
        }
        result
    }

    fn feed_layers(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), Error> {
        let Some(last) = self.layers.len().checked_sub(1) else {
            out.try_reserve(input.len())
                .map_err(|_| Error::OutOfMemory)?;
            out.extend_from_slice(input);
            self.identity_total += input.len() as u64;
            return Ok(());
        };
        let [mut prev, mut next] = std::mem::take(&mut self.scratch);
        for (i, layer) in self.layers.iter_mut().enumerate() {
            let src: &[u8] = if i == 0 { input } else { &prev };
            if i == last {
                layer.run(&self.limits, src, out)?;
            } else {
                next.clear();
                layer.run(&self.limits, src, &mut next)?;
                std::mem::swap(&mut prev, &mut next);
            }
        }
        for buf in [&mut prev, &mut next] {
            buf.clear();
            if buf.capacity() > KEEP_CAPACITY {
                *buf = Vec::new();
            }
        }
        self.scratch = [prev, next];
        Ok(())
    }

    /// End of the body: an error when a stream was cut short. The decoder
    /// is finished either way; finishing again repeats a success.
    pub fn finish(&mut self) -> Result<(), Error> {
        match self.state {
            State::Finished => return Ok(()),
            State::Failed => return Err(Error::Finished),
            State::Open => {}
        }
        self.scratch = Default::default();
        let result = self.layers.iter().try_for_each(|l| l.stage.finish());
        self.state = if result.is_ok() {
            State::Finished
        } else {
            State::Failed
        };
        result
    }
}
