//! Round trips against the reference encoders, every chunking, corrupt and
//! truncated streams, and bombs of each coding against both limits, with
//! the decoder's own heap use measured.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::Write;

use super::*;

/// Counts this thread's live heap bytes and their peak, so a test can tell
/// what decoding allocated (libzstd's own mallocs are not seen: its window
/// is capped by the frame check instead).
struct Counting;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn account(delta: isize) {
    let _ = LIVE.try_with(|live| {
        let now = live.get() + delta;
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

// SAFETY: every call is forwarded to the system allocator unchanged; the
// counters are const-initialized thread-locals without destructors.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            account(layout.size() as isize);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc_zeroed(layout);
        if !p.is_null() {
            account(layout.size() as isize);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        account(-(layout.size() as isize));
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = System.realloc(ptr, layout, new_size);
        if !p.is_null() {
            account(new_size as isize - layout.size() as isize);
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Peak heap growth of this thread while `f` runs.
fn peak_growth<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let start = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(start));
    let value = f();
    let peak = PEAK.with(Cell::get);
    (value, usize::try_from(peak - start).unwrap_or(0))
}

/// Encoders: `zlib` and `raw` are both sent as `deflate`.
const CODINGS: [&str; 5] = ["gzip", "zlib", "raw", "br", "zstd"];

fn header(coding: &str) -> &str {
    match coding {
        "zlib" | "raw" => "deflate",
        other => other,
    }
}

/// Writes a block when given one, finishes the stream when given None.
type Encoder = Box<dyn FnMut(Option<&[u8]>) -> Option<Vec<u8>>>;

fn encoder(coding: &str) -> Encoder {
    use flate2::write::{DeflateEncoder, GzEncoder, ZlibEncoder};
    use flate2::Compression;
    fn wrap<W: Write + 'static>(mut w: Option<W>, finish: fn(W) -> Vec<u8>) -> Encoder {
        Box::new(move |data| match data {
            Some(d) => {
                w.as_mut().unwrap().write_all(d).unwrap();
                None
            }
            None => Some(finish(w.take().unwrap())),
        })
    }
    let level = Compression::new(6);
    match coding {
        "gzip" => wrap(Some(GzEncoder::new(Vec::new(), level)), |w| {
            w.finish().unwrap()
        }),
        "zlib" => wrap(Some(ZlibEncoder::new(Vec::new(), level)), |w| {
            w.finish().unwrap()
        }),
        "raw" => wrap(Some(DeflateEncoder::new(Vec::new(), level)), |w| {
            w.finish().unwrap()
        }),
        "br" => wrap(
            Some(brotli::CompressorWriter::new(Vec::new(), 4096, 5, 20)),
            |w| w.into_inner(),
        ),
        "zstd" => wrap(
            Some({
                let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
                enc.include_checksum(true).unwrap();
                enc
            }),
            |w| w.finish().unwrap(),
        ),
        other => panic!("no encoder for {other}"),
    }
}

fn encode(coding: &str, data: &[u8]) -> Vec<u8> {
    let mut enc = encoder(coding);
    enc(Some(data));
    enc(None).unwrap()
}

/// `size` zero bytes compressed, written in blocks so the test never holds
/// them.
fn zeros(coding: &str, size: usize) -> Vec<u8> {
    let block = vec![0u8; 64 << 10];
    let mut enc = encoder(coding);
    for _ in 0..size / block.len() {
        enc(Some(&block));
    }
    enc(None).unwrap()
}

/// Text and binary noise, compressible but not trivially.
fn sample(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        if x % 3 == 0 {
            out.extend_from_slice(b"data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n");
        } else {
            out.extend_from_slice(&x.to_le_bytes());
        }
    }
    out.truncate(len);
    out
}

fn decode_chunked(encoding: &str, body: &[u8], chunk: usize) -> Result<Vec<u8>, Error> {
    let mut d = ContentDecoder::new(encoding, Limits::default())?;
    let mut out = Vec::new();
    for piece in body.chunks(chunk.max(1)) {
        d.feed(piece, &mut out)?;
    }
    d.finish()?;
    assert_eq!(d.total_output(), out.len() as u64);
    Ok(out)
}

#[test]
fn round_trips_every_coding_and_chunking() {
    let data = sample(150_000, 7);
    for coding in CODINGS {
        let body = encode(coding, &data);
        for chunk in [1, 2, 7, 4096, body.len()] {
            let out = decode_chunked(header(coding), &body, chunk)
                .unwrap_or_else(|e| panic!("{coding} chunk={chunk}: {e}"));
            assert!(out == data, "{coding} chunk={chunk}");
        }
    }
}

#[test]
fn round_trips_small_and_empty_payloads() {
    for coding in CODINGS {
        for len in [0, 1, 2, 3, 100] {
            let data = sample(len, len as u64 + 1);
            let body = encode(coding, &data);
            for chunk in [1, body.len()] {
                assert_eq!(decode_chunked(header(coding), &body, chunk).unwrap(), data);
            }
        }
    }
}

#[test]
fn stacked_codings_decode_in_reverse_order() {
    let data = sample(60_000, 3);
    let body = encode("zstd", &encode("br", &encode("gzip", &data)));
    for chunk in [1, 333, body.len()] {
        assert_eq!(
            decode_chunked(" GZip ,br,\tZSTD ", &body, chunk).unwrap(),
            data
        );
    }
    let d = ContentDecoder::new("gzip, identity, BR", Limits::default()).unwrap();
    assert_eq!(d.encoding(), "gzip, br");
}

#[test]
fn identity_and_unknown_codings() {
    for value in ["", "identity", " Identity , identity"] {
        let mut d = ContentDecoder::new(value, Limits::default()).unwrap();
        assert!(d.is_identity());
        assert_eq!(d.encoding(), "identity");
        let mut out = Vec::new();
        d.feed(b"abc", &mut out).unwrap();
        d.finish().unwrap();
        assert_eq!(out, b"abc");
    }
    for value in [
        "compress",
        "gzip, lzma",
        "gzip;q=1",
        "gzip, gzip, gzip, gzip, gzip",
    ] {
        let err = ContentDecoder::new(value, Limits::default()).err();
        assert!(matches!(err, Some(Error::Unsupported(_))), "{value}");
    }
}

#[test]
fn multi_member_gzip_and_multi_frame_zstd() {
    let (a, b) = (sample(5000, 1), sample(7000, 2));
    for coding in ["gzip", "zstd"] {
        let mut body = encode(coding, &a);
        body.extend(encode(coding, &b));
        let expected = [a.clone(), b.clone()].concat();
        for chunk in [1, 100, body.len()] {
            assert_eq!(decode_chunked(coding, &body, chunk).unwrap(), expected);
        }
    }
}

#[test]
fn gzip_header_fields_are_skipped() {
    let data = sample(3000, 9);
    let mut enc = flate2::GzBuilder::new()
        .filename("name.txt")
        .comment("a comment")
        .extra(vec![1, 2, 3, 4])
        .write(Vec::new(), flate2::Compression::default());
    enc.write_all(&data).unwrap();
    let body = enc.finish().unwrap();
    for chunk in [1, 5, body.len()] {
        assert_eq!(decode_chunked("x-gzip", &body, chunk).unwrap(), data);
    }
}

#[test]
fn truncated_streams_fail_at_finish() {
    let data = sample(20_000, 5);
    for coding in CODINGS {
        let body = encode(coding, &data);
        for cut in [1, body.len() / 2, body.len() - 1] {
            let mut d = ContentDecoder::new(header(coding), Limits::default()).unwrap();
            let mut out = Vec::new();
            let fed = d.feed(&body[..cut], &mut out);
            assert!(fed.is_ok(), "{coding} cut={cut}: {fed:?}");
            assert!(
                matches!(d.finish(), Err(Error::Truncated(_))),
                "{coding} cut={cut}"
            );
            assert_eq!(d.feed(b"x", &mut out), Err(Error::Finished));
        }
        // Nothing at all is an empty body, not a truncated one.
        let mut d = ContentDecoder::new(header(coding), Limits::default()).unwrap();
        d.finish().unwrap();
        d.finish().unwrap();
    }
}

#[test]
fn corrupt_streams_fail_and_stay_failed() {
    let data = sample(50_000, 11);
    for coding in CODINGS {
        let mut body = encode(coding, &data);
        let mid = body.len() / 2;
        for b in &mut body[mid..mid + 16] {
            *b ^= 0x55;
        }
        let mut d = ContentDecoder::new(header(coding), Limits::default()).unwrap();
        let mut out = Vec::new();
        let result = d.feed(&body, &mut out).and_then(|()| d.finish());
        if matches!(coding, "raw" | "br") && result.is_ok() {
            // Raw deflate and brotli have no checksum: damage may decode to
            // other bytes.
            assert!(out != data);
            continue;
        }
        assert!(
            matches!(result, Err(Error::Corrupt(_))),
            "{coding}: {result:?}"
        );
        assert_eq!(d.feed(b"", &mut out), Err(Error::Finished));
        assert_eq!(d.finish(), Err(Error::Finished));
    }
    assert!(decode_chunked("gzip", b"not gzip at all", 1).is_err());
    assert!(decode_chunked("br", &[0xff; 64], 3).is_err());
    assert!(decode_chunked("zstd", b"\x28\xb5\x2f\xfd\xff\xff\xff\xff", 1).is_err());
}

#[test]
fn trailing_garbage_and_bad_checksums_are_corrupt() {
    let data = sample(1000, 4);
    for coding in CODINGS {
        let mut body = encode(coding, &data);
        body.extend_from_slice(b"garbage");
        let result = decode_chunked(header(coding), &body, 1);
        assert!(
            matches!(result, Err(Error::Corrupt(_))),
            "{coding}: {result:?}"
        );
    }
    let mut body = encode("gzip", &data);
    let n = body.len();
    body[n - 6] ^= 1; // inside the CRC32
    assert!(matches!(
        decode_chunked("gzip", &body, 9),
        Err(Error::Corrupt(_))
    ));
    let mut body = encode("zlib", &data);
    let n = body.len();
    body[n - 1] ^= 1; // inside the Adler-32
    assert!(matches!(
        decode_chunked("deflate", &body, 9),
        Err(Error::Corrupt(_))
    ));
}

const PER_FEED: usize = 256 << 10;
const TOTAL: u64 = 1 << 20;

fn small_limits() -> Limits {
    Limits {
        max_output_per_feed: PER_FEED,
        max_total_output: TOTAL,
    }
}

/// 8 MiB of zeros in `coding`, built once per test run.
fn bomb(coding: &str) -> &'static [u8] {
    use std::sync::OnceLock;
    static BOMBS: [OnceLock<Vec<u8>>; 5] = [const { OnceLock::new() }; 5];
    let i = CODINGS.iter().position(|c| *c == coding).unwrap();
    BOMBS[i].get_or_init(|| zeros(coding, 8 << 20))
}

/// A bomb fed in one piece stops at the per-feed limit, having appended
/// exactly that much and allocated little more.
#[test]
fn bombs_hit_the_per_feed_limit() {
    let limits = small_limits();
    for coding in CODINGS {
        let body = bomb(coding);
        let mut d = ContentDecoder::new(header(coding), limits).unwrap();
        let mut out = Vec::new();
        let (result, peak) = peak_growth(|| d.feed(body, &mut out));
        assert_eq!(
            result,
            Err(Error::Bomb {
                limit: Limit::PerFeed,
                value: PER_FEED as u64
            }),
            "{coding}"
        );
        assert_eq!(out.len(), PER_FEED, "{coding}");
        assert!(out.iter().all(|&b| b == 0));
        // The output itself, one step of room and a decoder's state (the
        // brotli ring buffer is the window: 1 MiB here).
        assert!(peak <= PER_FEED + STEP + (3 << 19), "{coding}: {peak}");
        assert_eq!(d.feed(b"", &mut out), Err(Error::Finished));
    }
}

/// Fed in small pieces a bomb stops exactly at the total limit, however
/// much each piece is allowed (one byte of brotli can stand for megabytes).
#[test]
fn bombs_hit_the_total_limit() {
    let limits = Limits {
        max_output_per_feed: 16 << 20,
        max_total_output: TOTAL,
    };
    for coding in CODINGS {
        for chunk in [1, 64] {
            let mut d = ContentDecoder::new(header(coding), limits).unwrap();
            let mut out = Vec::new();
            let mut result = Ok(());
            for piece in bomb(coding).chunks(chunk) {
                result = d.feed(piece, &mut out);
                if result.is_err() {
                    break;
                }
            }
            let expected = Err(Error::Bomb {
                limit: Limit::Total,
                value: TOTAL,
            });
            assert_eq!(result, expected, "{coding} chunk={chunk}");
            assert_eq!(d.total_output(), TOTAL);
            assert_eq!(out.len() as u64, TOTAL);
        }
    }
}

#[test]
fn stacked_bombs_are_limited_at_every_layer() {
    let limits = small_limits();
    // Outer gzip around an inner gzip bomb: the outer layer's output is
    // small, the inner one's is not.
    let body = encode("gzip", bomb("gzip"));
    let mut d = ContentDecoder::new("gzip, gzip", limits).unwrap();
    let mut out = Vec::new();
    let (result, peak) = peak_growth(|| d.feed(&body, &mut out));
    assert!(matches!(result, Err(Error::Bomb { .. })), "{result:?}");
    assert!(out.len() <= limits.max_output_per_feed);
    assert!(peak <= 2 * PER_FEED + 2 * STEP + (1 << 20), "{peak}");
    // A middle layer that expands (brotli data that is mostly zeros).
    let body = encode("gzip", &vec![0u8; 2 << 20]);
    let mut d = ContentDecoder::new("br, gzip", limits).unwrap();
    let result = d.feed(&body, &mut Vec::new());
    assert!(
        matches!(
            result,
            Err(Error::Bomb {
                limit: Limit::PerFeed,
                ..
            })
        ),
        "{result:?}"
    );
}

#[test]
fn output_exactly_at_the_limits_is_accepted() {
    let limits = Limits {
        max_output_per_feed: 300_000,
        max_total_output: 300_000,
    };
    let data = sample(300_000, 8);
    for coding in CODINGS {
        let body = encode(coding, &data);
        let mut d = ContentDecoder::new(header(coding), limits).unwrap();
        let mut out = Vec::new();
        d.feed(&body, &mut out).unwrap();
        d.finish().unwrap();
        assert!(out == data, "{coding}");
        let data = sample(300_001, 8);
        let mut d = ContentDecoder::new(header(coding), limits).unwrap();
        let err = d.feed(&encode(coding, &data), &mut Vec::new());
        assert!(matches!(err, Err(Error::Bomb { .. })), "{coding}");
    }
}

#[test]
fn identity_is_not_limited() {
    let mut d = ContentDecoder::new("identity", small_limits()).unwrap();
    let mut out = Vec::new();
    d.feed(&vec![1u8; 2 << 20], &mut out).unwrap();
    assert_eq!(d.total_output(), 2 << 20);
}

fn zstd_with_window_log(log: u32, data: &[u8]) -> Vec<u8> {
    use zstd::stream::raw::CParameter;
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
    enc.set_parameter(CParameter::WindowLog(log)).unwrap();
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

#[test]
fn zstd_windows_over_8_mib_are_refused() {
    let data = sample(100_000, 12);
    let ok = zstd_with_window_log(ZSTD_WINDOW_LOG_MAX, &data);
    assert_eq!(decode_chunked("zstd", &ok, 1000).unwrap(), data);
    let big = zstd_with_window_log(ZSTD_WINDOW_LOG_MAX + 1, &data);
    assert!(matches!(
        decode_chunked("zstd", &big, 1000),
        Err(Error::Corrupt(_))
    ));
}

#[test]
fn brotli_large_windows_are_refused() {
    let params = brotli::enc::BrotliEncoderParams {
        large_window: true,
        lgwin: 26,
        quality: 5,
        ..Default::default()
    };
    let mut body = Vec::new();
    brotli::BrotliCompress(&mut &sample(10_000, 13)[..], &mut body, &params).unwrap();
    assert!(matches!(
        decode_chunked("br", &body, 100),
        Err(Error::Corrupt(_))
    ));
}
