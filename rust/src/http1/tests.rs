use super::*;

/// The body `input` decodes to, fed in reads of the given sizes (cycled),
/// and how many input bytes were read in all.
fn decode_in(
    framing: Framing,
    input: &[u8],
    sizes: &[usize],
) -> Result<(Vec<u8>, usize), BodyError> {
    let mut dec = BodyDecoder::new(framing, 1024);
    let mut out = Vec::new();
    let mut at = 0;
    let mut k = 0;
    while at < input.len() {
        let end = (at + sizes[k % sizes.len()].max(1)).min(input.len());
        k += 1;
        let read = dec.decode(&input[at..end], |d| {
            out.extend_from_slice(d);
            true
        })?;
        at += read;
        if dec.is_done() {
            break;
        }
        assert_eq!(at, end, "a read stops short only at the body's end");
    }
    Ok((out, at))
}

fn chunked(parts: &[&[u8]]) -> Vec<u8> {
    let mut v = Vec::new();
    for p in parts {
        v.extend_from_slice(format!("{:x}\r\n", p.len()).as_bytes());
        v.extend_from_slice(p);
        v.extend_from_slice(b"\r\n");
    }
    v.extend_from_slice(b"0\r\n\r\n");
    v
}

#[test]
fn head_end_finds_the_first_blank_line() {
    assert_eq!(
        head_end(b"HTTP/1.1 200 OK\r\nA: b\r\n\r\nbody", 0),
        Some(25)
    );
    assert_eq!(head_end(b"HTTP/1.1 200 OK\nA: b\n\nbody", 0), Some(22));
    assert_eq!(head_end(b"HTTP/1.1 200 OK\r\nA: b\n\r\nx", 0), Some(24));
    assert_eq!(head_end(b"HTTP/1.1 200 OK\r\nA: b\r\n", 0), None);
    assert_eq!(head_end(b"", 0), None);
    assert_eq!(head_end(b"abc", 10), None);
    // Resumed 3 bytes before the previous end: a blank line split over reads is found.
    let buf = b"HTTP/1.1 200 OK\r\nA: b\r\n\r\n";
    for split in 0..buf.len() {
        assert_eq!(head_end(&buf[..split], 0), None, "{split}");
        assert_eq!(
            head_end(buf, split.saturating_sub(3)),
            Some(buf.len()),
            "{split}"
        );
    }
}

#[test]
fn framing_follows_the_fields() {
    assert_eq!(
        Framing::of(Some(b"chunked"), None, false),
        Ok(Framing::Chunked)
    );
    assert_eq!(
        Framing::of(Some(b"gzip, Chunked "), Some(b"12"), false),
        Ok(Framing::Chunked)
    );
    assert_eq!(
        Framing::of(Some(b"chunked, gzip"), None, false),
        Ok(Framing::Close)
    );
    assert_eq!(
        Framing::of(Some(b"identity"), None, false),
        Ok(Framing::Close)
    );
    assert_eq!(
        Framing::of(None, Some(b"42"), false),
        Ok(Framing::Length(42))
    );
    assert_eq!(
        Framing::of(None, Some(b" 7 , 7"), false),
        Ok(Framing::Length(7))
    );
    assert_eq!(Framing::of(None, None, false), Ok(Framing::Close));
    assert_eq!(
        Framing::of(Some(b"chunked"), Some(b"9"), true),
        Ok(Framing::Length(0))
    );
    for bad in [
        &b"7, 8"[..],
        b"-1",
        b"1e3",
        b"",
        b"0x10",
        b"99999999999999999999999",
    ] {
        assert!(Framing::of(None, Some(bad), false).is_err(), "{bad:?}");
    }
    let max = u64::MAX.to_string();
    assert_eq!(
        Framing::of(None, Some(max.as_bytes()), false),
        Ok(Framing::Length(u64::MAX))
    );
}

#[test]
fn chunked_bodies_decode_at_every_split() {
    let body = chunked(&[b"data: {\"a\":1}\n\n", b"x", &[b'y'; 300], b"\r\n\r\n"]);
    let want: Vec<u8> = [&b"data: {\"a\":1}\n\n"[..], b"x", &[b'y'; 300], b"\r\n\r\n"].concat();
    for sizes in [&[body.len()][..], &[1], &[2], &[3, 7], &[5, 1, 64], &[17]] {
        let (out, read) = decode_in(Framing::Chunked, &body, sizes).unwrap();
        assert_eq!(out, want, "{sizes:?}");
        assert_eq!(read, body.len());
    }
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..200 {
        let sizes: Vec<usize> = (0..8)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                (seed % 40) as usize + 1
            })
            .collect();
        assert_eq!(decode_in(Framing::Chunked, &body, &sizes).unwrap().0, want);
    }
}

#[test]
fn extensions_trailers_and_what_follows_the_body() {
    let body =
        b"5;name=\"v;x\"\r\nhello\r\n3 ; a=b\r\n!!!\r\n000\r\nX-Trailer: 1\r\nY: 2\r\n\r\nHTTP/1.1";
    for sizes in [&[body.len()][..], &[1], &[4]] {
        let (out, read) = decode_in(Framing::Chunked, body, sizes).unwrap();
        assert_eq!(out, b"hello!!!");
        assert_eq!(&body[read..], b"HTTP/1.1", "{sizes:?}");
    }
    let mut dec = BodyDecoder::new(Framing::Chunked, 1024);
    assert_eq!(dec.decode(b"0\r\n\r\n", |_| true), Ok(5));
    assert!(dec.is_done());
    assert_eq!(dec.decode(b"more", |_| panic!("past the end")), Ok(0));
    assert!(dec.eof().is_ok());
}

#[test]
fn broken_chunked_framing_is_refused_for_good() {
    let cases: &[&[u8]] = &[
        b"g\r\n",                 // not hex
        b"\r\n",                  // no size
        b";x\r\n",                // extension without a size
        b"5\nhello\r\n",          // bare LF after the size
        b"5\r\nhelloXX",          // data not followed by CRLF
        b"5\r\nhello\n0\r\n\r\n", // bare LF after the data
        b"5 x\x01\r\n",           // control byte in an extension
        b"10000000000000000\r\n", // past u64
        b"0\r\nA: b\n\r\n",       // bare LF in a trailer
    ];
    for case in cases {
        let mut dec = BodyDecoder::new(Framing::Chunked, 1024);
        let err = dec.decode(case, |_| true);
        assert!(err.is_err(), "{:?}", String::from_utf8_lossy(case));
        // Stays refused, and the close does not make the body whole.
        assert!(dec.decode(b"0\r\n\r\n", |_| true).is_err());
        assert!(dec.eof().is_err());
    }
    assert!(decode_in(
        Framing::Chunked,
        b"0000000000000000000005\r\nhello\r\n0\r\n\r\n",
        &[3]
    )
    .is_ok());
}

#[test]
fn framing_lines_are_bounded() {
    let mut line = b"1;".to_vec();
    line.resize(MAX_CHUNK_LINE - 2, b'a');
    line.extend_from_slice(b"\r\nz\r\n0\r\n\r\n");
    assert_eq!(decode_in(Framing::Chunked, &line, &[100]).unwrap().0, b"z");
    let mut long = b"1;".to_vec();
    long.resize(MAX_CHUNK_LINE + 1, b'a');
    assert_eq!(
        BodyDecoder::new(Framing::Chunked, 1024).decode(&long, |_| true),
        Err(BodyError("a chunk-size line is too long"))
    );
    let mut trailers = b"0\r\n".to_vec();
    trailers.extend(
        std::iter::repeat(b"A: bbbbbbbbbbbbbbbbbbbbbbbbbbbbbb\r\n")
            .take(40)
            .flatten(),
    );
    trailers.extend_from_slice(b"\r\n");
    let mut small = BodyDecoder::new(Framing::Chunked, 1024);
    assert_eq!(
        small.decode(&trailers, |_| true),
        Err(BodyError("the trailer section is too large"))
    );
    let mut big = BodyDecoder::new(Framing::Chunked, 4096);
    assert_eq!(big.decode(&trailers, |_| true), Ok(trailers.len()));
    assert!(big.is_done());
}

#[test]
fn length_and_close_bodies() {
    let (out, read) = decode_in(Framing::Length(5), b"helloHTTP", &[2]).unwrap();
    assert_eq!((out.as_slice(), read), (&b"hello"[..], 5));
    let mut none = BodyDecoder::new(Framing::Length(0), 0);
    assert!(none.is_done());
    assert_eq!(none.decode(b"x", |_| panic!("no body")), Ok(0));
    let mut cut = BodyDecoder::new(Framing::Length(10), 0);
    assert_eq!(cut.decode(b"abc", |_| true), Ok(3));
    assert_eq!(
        cut.eof(),
        Err(BodyError("the upstream closed the connection mid-body"))
    );
    let mut close = BodyDecoder::new(Framing::Close, 0);
    let mut out = Vec::new();
    for part in [&b"any"[..], b"\r\n0\r\n\r\n", b"thing"] {
        assert_eq!(
            close.decode(part, |d| {
                out.extend_from_slice(d);
                true
            }),
            Ok(part.len())
        );
    }
    assert_eq!(out, b"any\r\n0\r\n\r\nthing");
    assert!(!close.is_done() && close.eof().is_ok());
    let mut mid = BodyDecoder::new(Framing::Chunked, 0);
    assert_eq!(mid.decode(b"5\r\nhe", |_| true), Ok(5));
    assert!(mid.eof().is_err());
}

#[test]
fn emit_can_stop_the_read() {
    let body = chunked(&[b"one", b"two"]);
    let mut dec = BodyDecoder::new(Framing::Chunked, 0);
    let mut seen = Vec::new();
    let read = dec
        .decode(&body, |d| {
            seen.push(d.to_vec());
            false
        })
        .unwrap();
    assert_eq!(seen, [b"one".to_vec()]);
    assert_eq!(&body[..read], b"3\r\none");
    let mut rest = Vec::new();
    dec.decode(&body[read..], |d| {
        rest.extend_from_slice(d);
        true
    })
    .unwrap();
    assert_eq!(rest, b"two");
    assert!(dec.is_done());
}
