//! gzip (RFC 1952, any number of members in a row) and deflate (RFC 1950
//! zlib, or the raw RFC 1951 stream some servers send instead), inflated by
//! miniz_oxide through flate2's push API.

use flate2::{Crc, Decompress, FlushDecompress, Status};

use super::{Error, Progress};

const FHCRC: u8 = 0x02;
const FEXTRA: u8 = 0x04;
const FNAME: u8 = 0x08;
const FCOMMENT: u8 = 0x10;
const FRESERVED: u8 = 0xe0;

fn nothing(consumed: usize) -> Result<Progress, Error> {
    Ok(Progress {
        consumed,
        written: 0,
    })
}

/// One inflate step; the flag is true when the deflate stream ended.
fn inflate(
    z: &mut Decompress,
    input: &[u8],
    out: &mut [u8],
    coding: &str,
) -> Result<(Progress, bool), Error> {
    let (in0, out0) = (z.total_in(), z.total_out());
    let status = z
        .decompress(input, out, FlushDecompress::None)
        .map_err(|e| Error::Corrupt(format!("invalid {coding} data: {e}")))?;
    // Both deltas are bounded by the slices' lengths.
    let progress = Progress {
        consumed: (z.total_in() - in0) as usize,
        written: (z.total_out() - out0) as usize,
    };
    Ok((progress, status == Status::StreamEnd))
}

/// Copies what `buf` still lacks from `input`; true once it is full.
fn fill<const N: usize>(
    buf: &mut [u8; N],
    have: &mut usize,
    input: &[u8],
    used: &mut usize,
) -> bool {
    let n = (N - *have).min(input.len());
    buf[*have..*have + n].copy_from_slice(&input[..n]);
    *have += n;
    *used = n;
    *have == N
}

/// Where a gzip decoder is in its stream.
enum Part {
    /// The ten fixed header bytes.
    Fixed {
        buf: [u8; 10],
        have: usize,
    },
    ExtraLen {
        flags: u8,
        buf: [u8; 2],
        have: usize,
    },
    Extra {
        flags: u8,
        left: usize,
    },
    /// A zero-terminated field (file name or comment).
    Text {
        flags: u8,
    },
    HeaderCrc {
        left: usize,
    },
    Body,
    Trailer {
        buf: [u8; 8],
        have: usize,
    },
    /// After a member: the end of the body or another member.
    Between,
}

/// The header field that comes next, given the flags of those still to read.
fn header_next(flags: u8) -> Part {
    if flags & FEXTRA != 0 {
        Part::ExtraLen {
            flags: flags & !FEXTRA,
            buf: [0; 2],
            have: 0,
        }
    } else if flags & FNAME != 0 {
        Part::Text {
            flags: flags & !FNAME,
        }
    } else if flags & FCOMMENT != 0 {
        Part::Text {
            flags: flags & !FCOMMENT,
        }
    } else if flags & FHCRC != 0 {
        Part::HeaderCrc { left: 2 }
    } else {
        Part::Body
    }
}

pub struct Gzip {
    part: Part,
    inflate: Decompress,
    crc: Crc,
    /// Decoded size of the member modulo 2^32 (its trailer's ISIZE).
    size: u32,
    started: bool,
}

impl Gzip {
    pub fn new() -> Self {
        Self {
            part: Part::Fixed {
                buf: [0; 10],
                have: 0,
            },
            inflate: Decompress::new(false),
            crc: Crc::new(),
            size: 0,
            started: false,
        }
    }

    pub fn step(&mut self, input: &[u8], out: &mut [u8]) -> Result<Progress, Error> {
        if input.is_empty() && !matches!(self.part, Part::Body) {
            return nothing(0);
        }
        self.started = true;
        let mut used = 0;
        match &mut self.part {
            Part::Between => {
                if input[0] != 0x1f {
                    return Err(Error::Corrupt(
                        "data after the end of the gzip stream".into(),
                    ));
                }
                self.part = Part::Fixed {
                    buf: [0; 10],
                    have: 0,
                };
                return self.step(input, out);
            }
            Part::Fixed { buf, have } => {
                if fill(buf, have, input, &mut used) {
                    let flags = buf[3];
                    if buf[..3] != [0x1f, 0x8b, 8] || flags & FRESERVED != 0 {
                        return Err(Error::Corrupt("invalid gzip header".into()));
                    }
                    self.part = header_next(flags);
                }
            }
            Part::ExtraLen { flags, buf, have } => {
                if fill(buf, have, input, &mut used) {
                    let left = usize::from(u16::from_le_bytes(*buf));
                    self.part = Part::Extra {
                        flags: *flags,
                        left,
                    };
                }
            }
            Part::Extra { flags, left } => {
                used = (*left).min(input.len());
                *left -= used;
                if *left == 0 {
                    self.part = header_next(*flags);
                }
            }
            Part::Text { flags } => match memchr::memchr(0, input) {
                Some(i) => {
                    used = i + 1;
                    self.part = header_next(*flags);
                }
                None => used = input.len(),
            },
            Part::HeaderCrc { left } => {
                used = (*left).min(input.len());
                *left -= used;
                if *left == 0 {
                    self.part = Part::Body;
                }
            }
            Part::Body => {
                let (progress, ended) = inflate(&mut self.inflate, input, out, "gzip")?;
                let written = &out[..progress.written];
                self.crc.update(written);
                self.size = self.size.wrapping_add(written.len() as u32);
                if ended {
                    self.part = Part::Trailer {
                        buf: [0; 8],
                        have: 0,
                    };
                }
                return Ok(progress);
            }
            Part::Trailer { buf, have } => {
                if fill(buf, have, input, &mut used) {
                    let crc = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]);
                    let size = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
                    if crc != self.crc.sum() || size != self.size {
                        return Err(Error::Corrupt("gzip checksum mismatch".into()));
                    }
                    self.inflate.reset(false);
                    self.crc.reset();
                    self.size = 0;
                    self.part = Part::Between;
                }
            }
        }
        nothing(used)
    }

    pub fn finish(&self) -> Result<(), Error> {
        match self.part {
            Part::Between => Ok(()),
            _ if !self.started => Ok(()),
            _ => Err(Error::Truncated("gzip")),
        }
    }
}

/// RFC 1950's header check: deflate method, a window of at most 32 KiB and
/// the two bytes a multiple of 31.
fn is_zlib_header(cmf: u8, flg: u8) -> bool {
    cmf & 0x0f == 8 && cmf >> 4 <= 7 && (u16::from(cmf) << 8 | u16::from(flg)) % 31 == 0
}

enum DeflateState {
    /// Before the first two bytes, which tell zlib from raw deflate.
    Sniff {
        first: Option<u8>,
    },
    Body(Decompress),
    Done,
}

pub struct Deflate {
    state: DeflateState,
}

impl Deflate {
    pub fn new() -> Self {
        Self {
            state: DeflateState::Sniff { first: None },
        }
    }

    pub fn step(&mut self, input: &[u8], out: &mut [u8]) -> Result<Progress, Error> {
        match &mut self.state {
            DeflateState::Sniff { first } => match (*first, input) {
                (_, []) => nothing(0),
                (None, [b]) => {
                    *first = Some(*b);
                    nothing(1)
                }
                (None, [b0, b1, ..]) => {
                    let z = Decompress::new(is_zlib_header(*b0, *b1));
                    self.state = DeflateState::Body(z);
                    self.step(input, out)
                }
                (Some(b0), [b1, ..]) => {
                    let z = Decompress::new(is_zlib_header(b0, *b1));
                    self.state = DeflateState::Body(z);
                    // The held byte goes in first, then as much of the
                    // input as the rest of `out` allows.
                    let head = self.step(&[b0], out)?;
                    if head.consumed != 1 {
                        return Err(Error::Corrupt("invalid deflate data".into()));
                    }
                    let rest = self.step(input, &mut out[head.written..])?;
                    Ok(Progress {
                        consumed: rest.consumed,
                        written: head.written + rest.written,
                    })
                }
            },
            DeflateState::Body(z) => {
                let (progress, ended) = inflate(z, input, out, "deflate")?;
                if ended {
                    self.state = DeflateState::Done;
                }
                Ok(progress)
            }
            DeflateState::Done if input.is_empty() => nothing(0),
            DeflateState::Done => Err(Error::Corrupt(
                "data after the end of the deflate stream".into(),
            )),
        }
    }

    pub fn finish(&self) -> Result<(), Error> {
        match self.state {
            DeflateState::Done | DeflateState::Sniff { first: None } => Ok(()),
            _ => Err(Error::Truncated("deflate")),
        }
    }
}
