//! Growth of the buffers whose size the input decides. Each is bounded by
//! its owner's limit, grows only by fallible reservations (so a hostile
//! stream can neither take more than the limit nor abort the process when
//! memory runs out), and gives its memory back after a discard.

use std::collections::TryReserveError;

/// Capacity a buffer keeps after it was emptied by a discard: enough for
/// ordinary lines, small next to any limit worth setting.
pub(crate) const RETAINED: usize = 8 * 1024;

/// Makes room for `additional` more bytes. The capacity grows geometrically
/// (amortised appends) but never past `max(limit, needed)`, so a buffer
/// that its owner keeps within `limit` never holds more than that.
pub(crate) fn reserve(
    buf: &mut Vec<u8>,
    additional: usize,
    limit: usize,
) -> Result<(), TryReserveError> {
    if buf.capacity() - buf.len() >= additional {
        return Ok(());
    }
    let Some(needed) = buf.len().checked_add(additional) else {
        // Reports the capacity overflow as an error.
        return buf.try_reserve_exact(additional);
    };
    let doubled = buf.capacity().saturating_mul(2).max(64).min(limit);
    buf.try_reserve_exact(needed.max(doubled) - buf.len())
}

/// Appends `bytes` within the growth rule of [`reserve`].
pub(crate) fn extend(buf: &mut Vec<u8>, bytes: &[u8], limit: usize) -> Result<(), TryReserveError> {
    reserve(buf, bytes.len(), limit)?;
    buf.extend_from_slice(bytes);
    Ok(())
}

/// Empties `buf` and returns all but [`RETAINED`] bytes of its capacity.
pub(crate) fn release(buf: &mut Vec<u8>) {
    buf.clear();
    buf.shrink_to(RETAINED);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn growth_stops_at_the_limit() {
        let mut buf = Vec::new();
        for _ in 0..1000 {
            extend(&mut buf, b"0123456789", 5000).unwrap();
            assert!(buf.capacity() <= 5000.max(buf.len()));
        }
        assert_eq!(buf.len(), 10_000);
        release(&mut buf);
        assert!(buf.capacity() <= RETAINED);
        assert!(reserve(&mut buf, usize::MAX, 10).is_err());
    }
}
