//! Output collected only when the stream turns out to need it.
//!
//! A meter that wants the output only for an estimate (when the stream
//! gives no usage) need not reassemble it on every stream: the tap keeps the
//! stream's raw bytes instead, up to [`MAX_HELD_BYTES`], and reads them again
//! with a collecting tap at the end, only if some response came without
//! usage. A stream that outgrows the bound is replayed at once and collected
//! as it goes from there on. The tap frames the same bytes the same way
//! however they are cut, so the replay's state is the state a collecting tap
//! would have had: the reports and the output are those of eager collection.

/// Raw bytes of a stream held for a later collection; past them (or when
/// memory for them cannot be had) the output is collected as it comes.
pub const MAX_HELD_BYTES: usize = 256 * 1024;
/// Reads held: each is replayed as it came (a read's bytes count towards
/// the response that is current when it begins); past them, the same.
pub const MAX_HELD_READS: usize = 4096;

/// What a stream's first read reserves, of bytes and of reads: a few
/// reallocations less for the common answer of some tens of KiB.
const FIRST_BYTES: usize = 32 * 1024;
const FIRST_READS: usize = 128;

/// The bytes of the current stream, while they are held.
#[derive(Debug, Default)]
pub(super) struct Held {
    bytes: Vec<u8>,
    /// Where each read ends in `bytes`.
    ends: Vec<u32>,
    /// This stream outgrew the bound: it is being collected as it comes.
    spilled: bool,
}

impl Held {
    /// Whether the stream's output is still left for later.
    pub(super) fn holding(&self) -> bool {
        !self.spilled
    }

    /// Keeps `chunk`; false (nothing kept) past the bound or when the memory
    /// cannot be had: the caller then collects from here on.
    pub(super) fn hold(&mut self, chunk: &[u8]) -> bool {
        let len = self.bytes.len().saturating_add(chunk.len());
        if len > MAX_HELD_BYTES || self.ends.len() >= MAX_HELD_READS {
            return false;
        }
        if self.ends.len() == self.ends.capacity()
            && self
                .ends
                .try_reserve(self.ends.len().max(FIRST_READS))
                .is_err()
        {
            return false;
        }
        if self.bytes.capacity() < len {
            // Doubling from a size most answers fit in, never past the bound.
            let want = len
                .max(self.bytes.capacity() * 2)
                .clamp(FIRST_BYTES, MAX_HELD_BYTES);
            if self
                .bytes
                .try_reserve_exact(want - self.bytes.len())
                .is_err()
            {
                return false;
            }
        }
        self.bytes.extend_from_slice(chunk);
        // At most MAX_HELD_BYTES: fits.
        self.ends.push(len as u32);
        true
    }

    /// The reads held, given up: the stream is collected from here on.
    pub(super) fn spill(&mut self) -> Reads {
        self.spilled = true;
        Reads {
            bytes: std::mem::take(&mut self.bytes),
            ends: std::mem::take(&mut self.ends),
        }
    }

    /// A new stream begins.
    pub(super) fn reset(&mut self) {
        self.spilled = false;
        self.bytes.clear();
        self.ends.clear();
    }

    /// Bytes of memory held.
    pub(super) fn capacity(&self) -> usize {
        self.bytes.capacity() + self.ends.capacity() * 4
    }
}

/// The reads of a stream, as they came.
pub(super) struct Reads {
    bytes: Vec<u8>,
    ends: Vec<u32>,
}

impl Reads {
    /// Each read, in order.
    pub(super) fn each(&self) -> impl Iterator<Item = &[u8]> {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts
            .zip(self.ends.iter().copied())
            .map(|(start, end)| &self.bytes[start as usize..end as usize])
    }
}
