//! Brotli (RFC 7932) through brotli-decompressor's push API, without the
//! large-window extension: the window, and so the ring buffer, stays within
//! the format's 16 MiB.

use brotli_decompressor::{BrotliDecompressStream, BrotliResult, BrotliState, StandardAlloc};

use super::{Error, Progress};

type State = BrotliState<StandardAlloc, StandardAlloc, StandardAlloc>;

pub struct Brotli {
    /// Boxed: the state is a few kilobytes.
    state: Box<State>,
    started: bool,
    done: bool,
}

impl Brotli {
    pub fn new() -> Self {
        // `new` would accept large windows (up to 1 GiB); `new_strict` not.
        let state = State::new_strict(
            StandardAlloc::default(),
            StandardAlloc::default(),
            StandardAlloc::default(),
        );
        Self {
            state: Box::new(state),
            started: false,
            done: false,
        }
    }

    pub fn step(&mut self, input: &[u8], out: &mut [u8]) -> Result<Progress, Error> {
        if self.done {
            if input.is_empty() {
                return Ok(Progress {
                    consumed: 0,
                    written: 0,
                });
            }
            return Err(Error::Corrupt(
                "data after the end of the brotli stream".into(),
            ));
        }
        if input.is_empty() && !self.started {
            return Ok(Progress {
                consumed: 0,
                written: 0,
            });
        }
        self.started = true;
        let (mut avail_in, mut in_off) = (input.len(), 0);
        let (mut avail_out, mut out_off) = (out.len(), 0);
        let mut total = 0;
        let result = BrotliDecompressStream(
            &mut avail_in,
            &mut in_off,
            input,
            &mut avail_out,
            &mut out_off,
            out,
            &mut total,
            &mut self.state,
        );
        match result {
            BrotliResult::ResultFailure => Err(Error::Corrupt("invalid brotli data".into())),
            BrotliResult::ResultSuccess => {
                self.done = true;
                if in_off < input.len() {
                    return Err(Error::Corrupt(
                        "data after the end of the brotli stream".into(),
                    ));
                }
                Ok(Progress {
                    consumed: in_off,
                    written: out_off,
                })
            }
            BrotliResult::NeedsMoreInput | BrotliResult::NeedsMoreOutput => Ok(Progress {
                consumed: in_off,
                written: out_off,
            }),
        }
    }

    pub fn finish(&self) -> Result<(), Error> {
        if self.done || !self.started {
            Ok(())
        } else {
            Err(Error::Truncated("brotli"))
        }
    }
}
