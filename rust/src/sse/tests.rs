//! Unit tests of the SSE decoder.

use super::*;

#[derive(Debug, PartialEq, Eq)]
struct Ev(String, String, String, Option<u64>);

fn run(chunks: &[&[u8]], config: DecoderConfig) -> (Vec<Ev>, FinishStatus) {
    let mut d = Decoder::new(config);
    let mut out = Vec::new();
    for c in chunks {
        d.feed(c, |e| {
            out.push(Ev(
                String::from_utf8_lossy(e.event).into_owned(),
                String::from_utf8_lossy(e.data).into_owned(),
                String::from_utf8_lossy(e.id).into_owned(),
                e.retry,
            ));
        });
    }
    let fin = d.finish();
    (out, fin)
}

fn ev(event: &str, data: &str, id: &str, retry: Option<u64>) -> Ev {
    Ev(event.into(), data.into(), id.into(), retry)
}

fn every_split(input: &[u8]) -> Vec<Vec<&[u8]>> {
    let mut out = vec![vec![input]];
    for i in 0..=input.len() {
        out.push(vec![&input[..i], &input[i..]]);
    }
    out.push(input.chunks(1).collect());
    out
}

fn check(input: &[u8], expected: &[Ev]) {
    for chunks in every_split(input) {
        let (got, _) = run(&chunks, DecoderConfig::default());
        assert_eq!(got, expected, "chunks {chunks:?}");
    }
}

#[test]
fn spec_examples() {
    check(
        b"data: YHOO\ndata: +2\ndata: 10\n\n",
        &[ev("", "YHOO\n+2\n10", "", None)],
    );
    check(
        b": test stream\n\ndata: first event\nid: 1\n\ndata:second event\nid\n\ndata:  third event\n\n",
        &[
            ev("", "first event", "1", None),
            ev("", "second event", "", None),
            ev("", " third event", "", None),
        ],
    );
    check(
        b"data\n\ndata\ndata\n\ndata:",
        &[ev("", "", "", None), ev("", "\n", "", None)],
    );
}

#[test]
fn line_endings_and_bom() {
    check(
        b"\xEF\xBB\xBFdata:1\r\n\r\n\xEF\xBB\xBFdata:2\r\rdata:3\n\n",
        &[ev("", "1", "", None), ev("", "3", "", None)],
    );
    check(
        b"\xEF\xBB\xBF\xEF\xBB\xBFdata:1\n\ndata:2\n\n",
        &[ev("", "2", "", None)],
    );
    check(b"\xEF\xBBdata:1\n\n", &[]);
}

#[test]
fn cr_dispatches_without_waiting() {
    let mut d = Decoder::default();
    let mut n = 0;
    d.feed(b"data: x\r\r", |_| n += 1);
    assert_eq!(n, 1);
    d.feed(b"\ndata: y\n\n", |_| n += 1);
    assert_eq!(n, 2);
}

#[test]
fn fields() {
    check(
        b"retry:2000\nretry:1000x\nid: a\0b\nid: 7\ndata:x\n\nevent: e\n\ndata:y\n\n",
        &[ev("", "x", "7", Some(2000)), ev("", "y", "7", None)],
    );
    check(b"retry: 10000\n\ndata: z\n\n", &[ev("", "z", "", None)]);
    let (got, _) = run(
        &[b"retry: 10000\n\n"],
        DecoderConfig {
            retry_only_events: true,
            ..DecoderConfig::default()
        },
    );
    assert_eq!(got, vec![ev("", "", "", Some(10000))]);
    assert_eq!(parse_retry(b"99999999999999999999999"), None);
    assert_eq!(parse_retry(b"+5"), None);
}

#[test]
fn finish_reports_partial() {
    assert!(
        run(&[b"data: x\n"], DecoderConfig::default())
            .1
            .dropped_partial
    );
    assert!(run(&[b"dat"], DecoderConfig::default()).1.dropped_partial);
    assert!(
        !run(&[b"data: x\n\n"], DecoderConfig::default())
            .1
            .dropped_partial
    );
}

#[test]
fn finish_flushing_reads_an_unterminated_last_event() {
    let mut d = Decoder::default();
    let mut got = Vec::new();
    d.feed(b"data: a\n\nevent: stop\ndata: {\"x\"", |e| {
        got.push(e.data.to_vec())
    });
    let status = d.finish_flushing(|e| {
        assert_eq!(e.event, b"stop");
        got.push(e.data.to_vec());
    });
    assert_eq!(got, vec![b"a".to_vec(), b"{\"x\"".to_vec()]);
    assert!(status.flushed_partial && !status.dropped_partial);
    assert!(
        !d.finish_flushing(|_| panic!("nothing pending"))
            .flushed_partial
    );
}

#[test]
fn oversized_event_is_skipped_and_decoding_recovers() {
    let config = DecoderConfig {
        max_event_size: 16,
        ..DecoderConfig::default()
    };
    let mut d = Decoder::new(config);
    let mut got = Vec::new();
    let mut status = d.feed(b"data: 0123456789abcdefghij\n\ndata: ok\n\n", |e| {
        got.push(e.data.to_vec());
    });
    assert_eq!(status.oversized_events, 1);
    // A line that never ends is cut off too, across chunks.
    for _ in 0..10 {
        status = d.feed(b"data: xxxxxxxxxxxx", |_| panic!("no event expected"));
    }
    d.feed(b"\n\ndata: after\n\n", |e| got.push(e.data.to_vec()));
    assert_eq!(got, vec![b"ok".to_vec(), b"after".to_vec()]);
    assert_eq!(status.oversized_events, 0);
}

/// Events and oversized markers, in order, for `chunks`.
fn run_each(chunks: &[&[u8]], max_event_size: usize) -> Vec<Option<Vec<u8>>> {
    let mut d = Decoder::new(DecoderConfig {
        max_event_size,
        ..DecoderConfig::default()
    });
    let mut out = Vec::new();
    for c in chunks {
        d.feed_each(c, |item| {
            out.push(match item {
                Dispatch::Event(e) => Some(e.data.to_vec()),
                Dispatch::Oversized => None,
            });
        });
    }
    out
}

/// Regression (found by the `framing` fuzz target): a line longer than
/// the limit only counted while it was unterminated at the end of a
/// chunk, so the same stream dropped an event or not depending on where
/// it was cut (a long comment line dropped its event only when split; a
/// long `id:` line set an unbounded last event id only when whole).
#[test]
fn limit_does_not_depend_on_chunking() {
    let stream: &[u8] = b"data: a\n: 0123456789abcdefghij\n\ndata: 0123456\n\nid: 0123456789\ndata: b\n\nevent: x\ndata: o\n\ndata: ok\n\ndata: ok1\n\n";
    let expected = vec![
        None,                 // the comment line overflows its event
        None,                 // a 13-byte data line
        None,                 // a 14-byte id line (the id is not kept)
        Some(b"o".to_vec()),  // type + line fit: 1 + 7
        Some(b"ok".to_vec()), // a line of exactly the limit
        None,
    ];
    for chunks in every_split(stream) {
        assert_eq!(run_each(&chunks, 8), expected, "chunks {chunks:?}");
    }
    let mut d = Decoder::new(DecoderConfig {
        max_event_size: 8,
        ..DecoderConfig::default()
    });
    d.feed(stream, |e| assert!(e.id.is_empty()));
    assert!(d.last_event_id().is_empty());
}

#[test]
fn oversized_markers_come_in_stream_order() {
    let stream: &[u8] = b"data: a\n\ndata: 0123456789\n\ndata: b\n\n";
    let expected = vec![Some(b"a".to_vec()), None, Some(b"b".to_vec())];
    for chunks in every_split(stream) {
        assert_eq!(run_each(&chunks, 8), expected);
    }
    let mut d = Decoder::new(DecoderConfig {
        max_event_size: 8,
        ..DecoderConfig::default()
    });
    d.feed(b"data: a\n\ndata: 01", |_| {});
    let mut seen = Vec::new();
    let status = d.finish_flushing_each(|item| seen.push(item == Dispatch::Oversized));
    assert_eq!(seen, vec![false]);
    assert!(status.flushed_partial);
}

#[test]
fn repeated_event_lines() {
    let long = "n".repeat(KNOWN_EVENT_MAX + 1);
    let input = format!(
        "event: a\ndata: 1\n\nevent: a\ndata: 2\n\nevent: a\r\ndata: 3\n\nevent:a\ndata: 4\n\n\
         event: ab\ndata: 5\n\nevent: a\ndata: 6\n\nevent: \ndata: 7\n\nevent: {long}\ndata: 8\n\n\
         event: {long}\ndata: 9\n\ndata: 10\nevent: a\n\nevent: a\nevent: a\n\n"
    );
    let want = [
        ev("a", "1", "", None),
        ev("a", "2", "", None),
        ev("a", "3", "", None),
        ev("a", "4", "", None),
        ev("ab", "5", "", None),
        ev("a", "6", "", None),
        ev("", "7", "", None),
        ev(&long, "8", "", None),
        ev(&long, "9", "", None),
        ev("a", "10", "", None),
    ];
    check(input.as_bytes(), &want);
    // A repeated event line still counts against the event's size limit.
    let config = DecoderConfig {
        max_event_size: 12,
        ..DecoderConfig::default()
    };
    let (got, _) = run(
        &[b"event: abcd\ndata: 1\n\nevent: abcd\ndata: 12345\n\nevent: abcd\ndata: 2\n\n"],
        config,
    );
    assert_eq!(got, [ev("abcd", "1", "", None), ev("abcd", "2", "", None)]);
}
