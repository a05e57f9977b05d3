//! Unit tests of the usage-chunk stripper.

use super::*;

const STREAM: &[u8] = b"data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}],\"usage\":null}\r\n\r\n: keep-alive\n\ndata: {\"choices\":[],\"usage\":{\"total_tokens\":3}}\r\n\r\ndata: [DONE]\r\n\r\n";

fn expected() -> Vec<u8> {
    let without = |s: &[u8], cut: &[u8]| {
        let at = s.windows(cut.len()).position(|w| w == cut).unwrap();
        [&s[..at], &s[at + cut.len()..]].concat()
    };
    let stream = without(STREAM, b",\"usage\":null");
    without(
        &stream,
        b"data: {\"choices\":[],\"usage\":{\"total_tokens\":3}}\r\n\r\n",
    )
}

fn run_with(limit: usize, chunks: &[&[u8]]) -> (Vec<u8>, u64) {
    let mut s = UsageChunkStripper::new(limit);
    let mut out = Vec::new();
    for c in chunks {
        s.feed(c, &mut out).unwrap();
        assert!(s.held() <= limit && s.retained_capacity() <= limit.max(64));
    }
    s.finish(&mut out).unwrap();
    (out, s.stripped)
}

fn run(chunks: &[&[u8]]) -> (Vec<u8>, u64) {
    run_with(1 << 20, chunks)
}

#[test]
fn strips_only_the_usage_chunk_under_every_split() {
    assert_eq!(run(&[STREAM]), (expected(), 1));
    for i in 0..=STREAM.len() {
        assert_eq!(
            run(&[&STREAM[..i], &STREAM[i..]]).0,
            expected(),
            "split {i}"
        );
    }
    let bytewise: Vec<&[u8]> = STREAM.chunks(1).collect();
    assert_eq!(run(&bytewise).0, expected());
}

/// Regression (found by the `framing` fuzz target): an empty chunk
/// between the CR and the LF of a CRLF dropped the pending CR, so the
/// LF was read as a blank line of its own and forwarded after the
/// stripped block (or ended a block early).
#[test]
fn empty_chunks_change_nothing() {
    for i in 0..=STREAM.len() {
        let chunks = [&STREAM[..i], b"", b"", &STREAM[i..], b""];
        assert_eq!(run(&chunks), (expected(), 1), "split {i}");
    }
    let partial: &[u8] = b"data: x\r";
    assert_eq!(
        run(&[partial, b"", b"\ndata: y\r\n"]).0,
        b"data: x\r\ndata: y\r\n"
    );
}

#[test]
fn only_a_whole_json_object_is_a_usage_chunk() {
    let trailing: &[u8] = b"data: {\"choices\":[],\"usage\":{\"a\":1}} x\n\n";
    assert_eq!(run(&[trailing]), (trailing.to_vec(), 0));
    let spaced: &[u8] = b"data: {\"choices\":[],\"usage\":{\"a\":1}} \n\ndata: y\n\n";
    assert_eq!(run(&[spaced]), (b"data: y\n\n".to_vec(), 1));
}

#[test]
fn keeps_everything_else() {
    let other: &[u8] = b"data: {\"choices\":[],\"prompt_filter_results\":[]}\n\ndata: {\"choices\":[{}],\"usage\":{\"t\":1}}\n\ndata: {\"type\":\"x\",\"usage\":null}\n\ndata: nope\n\npartial";
    assert_eq!(run(&[other]), (other.to_vec(), 0));
    let cr_only: &[u8] = b"data: {\"choices\":[],\"usage\":{}}\r\rdata: x\r\r";
    for i in 0..=cr_only.len() {
        assert_eq!(
            run(&[&cr_only[..i], &cr_only[i..]]).0,
            b"data: x\r\r",
            "split {i}"
        );
    }
}

/// A block longer than the limit is forwarded unchanged as it comes (a
/// usage chunk too), the stripper never holds more than the limit, and
/// the blocks after it are stripped again, however the bytes are cut.
#[test]
fn long_blocks_pass_through_unchanged() {
    let long: &[u8] = b"data: {\"choices\":[],\"usage\":{\"total_tokens\":12345678}}\r\n\r\n";
    let short: &[u8] = b"data: {\"choices\":[{}],\"usage\":null}\r\n\r\n";
    let stream = [long, short, long].concat();
    let want = [long, b"data: {\"choices\":[{}]}\r\n\r\n", long].concat();
    for limit in [38, 50, 56] {
        for i in 0..=stream.len() {
            let chunks = [&stream[..i], &stream[i..]];
            assert_eq!(
                run_with(limit, &chunks),
                (want.clone(), 0),
                "limit {limit} split {i}"
            );
        }
        let bytewise: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(run_with(limit, &bytewise).0, want);
    }
    // A limit the usage chunk fits (its first CR included) strips it.
    let mut s = UsageChunkStripper::new(long.len() - 1);
    let mut out = Vec::new();
    s.feed(&stream, &mut out).unwrap();
    assert_eq!((s.stripped, s.oversized, s.nulls_removed), (2, 0, 1));
    let mut s = UsageChunkStripper::new(long.len() - 2);
    s.feed(&stream, &mut Vec::new()).unwrap();
    assert_eq!((s.stripped, s.oversized, s.nulls_removed), (0, 2, 1));
}

/// A line that never ends is forwarded as it comes, never held whole.
#[test]
fn an_endless_line_is_not_held() {
    let mut s = UsageChunkStripper::new(1000);
    let mut forwarded = 0;
    let piece = vec![b'x'; 700];
    for _ in 0..100 {
        let mut out = Vec::new();
        s.feed(&piece, &mut out).unwrap();
        forwarded += out.len();
        assert!(s.held() <= 1000 && s.retained_capacity() <= 1000);
    }
    assert_eq!(forwarded, 100 * 700);
    let mut out = Vec::new();
    s.feed(b"\n\ndata: {\"choices\":[],\"usage\":{}}\n\n", &mut out)
        .unwrap();
    assert_eq!(out, b"\n\n");
    assert_eq!((s.stripped, s.oversized), (1, 1));
}

/// Regression: jiter's nesting limit (128) made a usage-only chunk with a
/// deeper value unrecognised, so the caller saw a chunk it never asked for;
/// any depth is read now, without recursion. The `"usage":null` member of
/// a deep content chunk is cut as usual.
#[test]
fn deeply_nested_chunks_are_judged_like_shallow_ones() {
    for depth in [200, 100_000] {
        let nested = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        let content = format!(
            "data: {{\"choices\":[{{\"delta\":{{\"content\":\"hi\"}},\"x\":{nested}}}],\"usage\":null}}\n\n"
        );
        let usage =
            format!("data: {{\"choices\":[],\"usage\":{{\"total_tokens\":3,\"x\":{nested}}}}}\n\n");
        let stream = format!("{content}{usage}data: [DONE]\n\n");
        let (out, stripped) = run(&[stream.as_bytes()]);
        let want = format!(
            "data: {{\"choices\":[{{\"delta\":{{\"content\":\"hi\"}},\"x\":{nested}}}]}}\n\ndata: [DONE]\n\n"
        );
        assert_eq!(stripped, 1, "depth {depth}");
        assert!(out == want.as_bytes(), "depth {depth}");
        // Invalid deep JSON is still kept unchanged.
        let broken = format!(
            "data: {{\"choices\":[],\"usage\":{{\"x\":{}}}}}\n\n",
            "[".repeat(depth)
        );
        assert_eq!(run(&[broken.as_bytes()]), (broken.clone().into_bytes(), 0));
    }
}

/// Counting on a copy of the state gives the length of what the real feed
/// then forwards, under every split, and the copy ends in the same state;
/// an output as long as its chunk, with nothing held before, is the chunk.
#[test]
fn a_count_on_a_copy_matches_the_feed() {
    let long: &[u8] = b"data: {\"choices\":[],\"usage\":{\"total_tokens\":12345678}}\r\n\r\n";
    let stream = [STREAM, long, b"data: x\n\n", STREAM].concat();
    for limit in [40, 1 << 20] {
        for i in 0..=stream.len() {
            let mut s = UsageChunkStripper::new(limit);
            let mut all = Vec::new();
            for chunk in [&stream[..i], &stream[i..]] {
                let held = s.held();
                let mut probe = s.try_clone().unwrap();
                let mut count = Count(0);
                probe.feed_into(chunk, &mut count);
                let mut out = Vec::new();
                s.feed(chunk, &mut out).unwrap();
                assert_eq!(count.0, out.len(), "limit {limit} split {i}");
                assert_eq!(
                    (
                        probe.held(),
                        probe.stripped,
                        probe.nulls_removed,
                        probe.oversized
                    ),
                    (s.held(), s.stripped, s.nulls_removed, s.oversized)
                );
                if held == 0 && out.len() == chunk.len() {
                    assert_eq!(out, chunk);
                }
                all.extend(out);
            }
            s.finish(&mut all).unwrap();
            assert_eq!(all.len(), run_with(limit, &[&stream]).0.len());
        }
    }
}

#[test]
fn a_usage_key_spelled_with_escapes_is_still_found() {
    // `\u0075sage` and `u\u0073age` are the key `usage`: the chunks are judged as if
    // it were spelled out, not passed on because the literal is missing.
    for key in [&b"\\u0075sage"[..], b"u\\u0073ag\\u0065"] {
        let chunk = [
            b"data: {\"choices\":[{\"delta\":{}}],\"".as_slice(),
            key,
            b"\":null}\n\n",
        ]
        .concat();
        let only = [
            b"data: {\"choices\":[],\"".as_slice(),
            key,
            b"\":{\"total_tokens\":3}}\n\n",
        ]
        .concat();
        let (out, stripped) = run(&[&chunk, &only]);
        assert_eq!(out, b"data: {\"choices\":[{\"delta\":{}}]}\n\n", "{key:?}");
        assert_eq!(stripped, 1);
    }
}

#[test]
fn chunks_without_a_usage_key_are_forwarded_unparsed_and_unchanged() {
    // No `usage` and no `\u`: kept whatever else the block holds (invalid JSON too).
    let chunks: [&[u8]; 3] = [
        b"data: {\"choices\":[{\"delta\":{\"content\":\"a\\\"b\\n\"}}]}\n\n",
        b"data: {\"choices\":[],\"use\":{}}\n\n",
        b"data: {not json\n\n",
    ];
    for chunk in chunks {
        assert_eq!(run(&[chunk]), (chunk.to_vec(), 0));
    }
}
