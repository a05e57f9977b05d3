//! Zstandard (RFC 8878) through libzstd's streaming decoder, refusing frames
//! whose window is over 8 MiB (RFC 9659's limit for HTTP), so a frame can
//! never make the decoder hold more. Frames in a row and skippable frames
//! are read as libzstd does.

use zstd::stream::raw::{DParameter, Decoder, InBuffer, Operation, OutBuffer};

use super::{Error, Progress, ZSTD_WINDOW_LOG_MAX};

pub struct Zstd {
    decoder: Decoder<'static>,
    started: bool,
    /// True between frames (libzstd said the last one was complete).
    frame_done: bool,
}

impl Zstd {
    pub fn new() -> Result<Self, Error> {
        let mut decoder = Decoder::new().map_err(|_| Error::OutOfMemory)?;
        decoder
            .set_parameter(DParameter::WindowLogMax(ZSTD_WINDOW_LOG_MAX))
            .map_err(|e| Error::Corrupt(format!("zstd: {e}")))?;
        Ok(Self {
            decoder,
            started: false,
            frame_done: true,
        })
    }

    pub fn step(&mut self, input: &[u8], out: &mut [u8]) -> Result<Progress, Error> {
        if input.is_empty() && !self.started {
            return Ok(Progress {
                consumed: 0,
                written: 0,
            });
        }
        self.started = true;
        let mut src = InBuffer::around(input);
        let mut dst = OutBuffer::around(out);
        let hint = self
            .decoder
            .run(&mut src, &mut dst)
            .map_err(|e| Error::Corrupt(format!("invalid zstd data: {e}")))?;
        let progress = Progress {
            consumed: src.pos(),
            written: dst.pos(),
        };
        // 0 ends a frame; a later call that only polls (consumes nothing)
        // must not turn that back into "inside a frame".
        if hint == 0 {
            self.frame_done = true;
        } else if progress.consumed > 0 || progress.written > 0 {
            self.frame_done = false;
        }
        Ok(progress)
    }

    pub fn finish(&self) -> Result<(), Error> {
        if self.frame_done {
            Ok(())
        } else {
            Err(Error::Truncated("zstd"))
        }
    }
}
