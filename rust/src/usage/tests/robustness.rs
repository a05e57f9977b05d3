//! [`UsageTap`] under garbage, mutated, huge and deeply nested input, and
//! the bounds on what one stream may make it keep.

use super::*;

#[test]
fn garbage_never_panics() {
    let mut rng = Rng(0x1234_5678);
    for round in 0..200 {
        let len = (rng.next() % 4000) as usize;
        let alphabet: &[u8] = if round % 2 == 0 {
            b"{}[]\":,0123456789.-eE truefalsnul\\udata:event:\n\r usage choices delta"
        } else {
            &[]
        };
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                let x = rng.next();
                if alphabet.is_empty() {
                    x as u8
                } else {
                    alphabet[(x % alphabet.len() as u64) as usize]
                }
            })
            .collect();
        for hint in ApiHint::ALL {
            let mut tap = UsageTap::new(hint, DecoderConfig::default());
            let mut rest = &bytes[..];
            while !rest.is_empty() {
                let n = (1 + rng.next() % 64).min(rest.len() as u64) as usize;
                tap.feed(&rest[..n]);
                rest = &rest[n..];
            }
            assert!(!tap.finish().is_empty());
        }
    }
}

#[test]
fn mutated_streams_never_panic() {
    let base = [
        sse(&[
            CHUNK,
            r#"{"id":"c1","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3,"prompt_tokens_details":{"cached_tokens":1}}}"#,
            "[DONE]",
        ]),
        typed(&[
            (
                "message_start",
                r#"{"type":"message_start","message":{"id":"m","model":"c","usage":{"input_tokens":1,"output_tokens":1}}}"#,
            ),
            (
                "content_block_delta",
                r#"{"type":"content_block_delta","delta":{"type":"text_delta","text":"hi"}}"#,
            ),
            (
                "message_delta",
                r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":3}}"#,
            ),
            ("message_stop", r#"{"type":"message_stop"}"#),
        ]),
    ];
    let mut rng = Rng(99);
    for stream in base {
        for _ in 0..2000 {
            let mut bytes = stream.clone();
            for _ in 0..1 + rng.next() % 4 {
                let at = (rng.next() % bytes.len() as u64) as usize;
                bytes[at] = rng.next() as u8;
            }
            let _ = run(&bytes);
        }
    }
}

#[test]
fn huge_events() {
    // 50 MB in one event with the default 16 MiB limit: skipped, reported.
    let mut big = b"data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"x\":\"".to_vec();
    big.resize(big.len() + 50 * 1024 * 1024, b'a');
    big.extend_from_slice(b"\"}\n\n");
    big.extend_from_slice(&sse(&[CHUNK]));
    let mut tap = UsageTap::new(ApiHint::Auto, DecoderConfig::default());
    for chunk in big.chunks(1 << 20) {
        tap.feed(chunk);
    }
    let r = &tap.finish()[0];
    assert_eq!((r.oversized_events, r.events, r.delta_chunks), (1, 1, 1));
    assert!(r.warnings.iter().any(|w| w.contains("max_event_size")));

    // Deep nesting with no size limit: jiter's recursion limit, no overflow.
    let config = DecoderConfig {
        max_event_size: usize::MAX,
        ..DecoderConfig::default()
    };
    let depth = 1_000_000;
    let mut deep =
        b"data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":".to_vec();
    deep.extend(std::iter::repeat(b'[').take(depth));
    deep.extend(std::iter::repeat(b']').take(depth));
    deep.extend_from_slice(b"}\n\n");
    for hint in ApiHint::ALL {
        let mut tap = UsageTap::new(hint, config.clone());
        tap.feed(&deep);
        let _ = tap.finish();
    }
    let mut deep_delta = b"data: {\"type\":\"content_block_delta\",\"delta\":".to_vec();
    deep_delta.extend(
        std::iter::repeat(b"{\"a\":".as_slice())
            .take(depth)
            .flatten(),
    );
    deep_delta.extend(std::iter::repeat(b'}').take(depth + 1));
    deep_delta.extend_from_slice(b"\n\n");
    let _ = run(&deep_delta);
}

/// Regression (found while writing the fuzz targets' chunk-invariance
/// property): an oversized event went to the report current at the end of
/// the `feed` call, so with two responses in one chunk it was counted
/// against the second one, and against the first when the chunk was cut
/// before the second began.
#[test]
fn oversized_event_counts_where_it_was_discarded() {
    let first = CHUNK.replace("null}],", "\"stop\"}],");
    let mut stream = sse(&[&first, "[DONE]"]);
    stream.extend_from_slice(format!("data: {}\n\n", "x".repeat(300)).as_bytes());
    stream.extend_from_slice(&sse(&[&CHUNK.replace("c1", "c2")]));
    let config = DecoderConfig {
        max_event_size: 200,
        ..DecoderConfig::default()
    };
    for cut in [0, 120, 200, 300, stream.len() - 10, stream.len()] {
        let mut tap = UsageTap::new(ApiHint::Auto, config.clone());
        tap.feed(&stream[..cut]);
        tap.feed(&stream[cut..]);
        let reports = tap.finish();
        let oversized: Vec<u64> = reports.iter().map(|r| r.oversized_events).collect();
        assert_eq!(oversized, vec![1, 0], "cut at {cut}");
        assert_eq!(reports[1].response_id.as_deref(), Some("c2"));
    }
}

/// Regression (hardening review): each response of a stream kept a report,
/// so a hostile stream of tiny responses (50 MB of them) grew the tap by
/// about 5x its size, and 12x once turned into Python reports.
#[test]
fn reports_per_stream_are_bounded() {
    let mut stream = Vec::new();
    for i in 0..3000u64 {
        stream.extend_from_slice(
            format!(
                "data: {{\"id\":\"a{i}\",\"object\":\"chat.completion.chunk\",\"model\":\"m\",\"choices\":[{{\"index\":0,\"delta\":{{}},\"finish_reason\":\"stop\"}}],\"usage\":{{\"prompt_tokens\":1,\"completion_tokens\":{i},\"total_tokens\":{}}}}}\n\n",
                i + 1
            )
            .as_bytes(),
        );
    }
    let mut tap = UsageTap::new(ApiHint::Auto, DecoderConfig::default());
    tap.feed(&stream);
    let reports = tap.finish();
    assert_eq!(reports.len(), MAX_REPORTS);
    assert_eq!(reports.iter().map(|r| r.events).sum::<u64>(), 3000);
    assert_eq!(reports[5].usage.as_ref().unwrap().output_tokens, Some(5));
    let last = reports.last().unwrap();
    assert_eq!(last.usage.as_ref().unwrap().output_tokens, Some(2999));
    assert_eq!(last.response_id.as_deref(), Some("a1023"));
    assert!(last
        .warnings
        .iter()
        .any(|w| w.contains("more than 1024 responses")));
    assert!(reports[0].warnings.is_empty());
    // The next stream starts afresh.
    // The first three events (each one line and a blank line).
    let end = stream
        .iter()
        .enumerate()
        .filter(|(_, &b)| b == b'\n')
        .nth(5)
        .map(|(i, _)| i + 1)
        .unwrap();
    tap.feed(&stream[..end]);
    let again = tap.finish();
    assert_eq!(again.len(), 3);
    assert!(again.iter().all(|r| r.warnings.is_empty()), "{again:?}");
}

#[test]
fn step_usages_are_bounded() {
    let steps: Vec<String> = (0..MAX_STEP_USAGES + 10)
        .map(|i| format!(r#"{{"id":"step_{i}","object":"thread.run.step","status":"completed","usage":{{"prompt_tokens":10,"completion_tokens":3,"total_tokens":13}}}}"#))
        .collect();
    let events: Vec<(&str, &str)> = steps
        .iter()
        .map(|s| ("thread.run.step.completed", s.as_str()))
        .collect();
    let r = &run(&typed(&events))[0];
    assert_eq!(r.api, Api::Assistants);
    assert_eq!(r.step_usages.len(), MAX_STEP_USAGES);
    assert_eq!(r.warnings.len(), 1, "{:?}", r.warnings);
    assert!(r.warnings[0].contains("run steps"));
}

/// Regression: a usage-only chunk nested deeper than jiter's recursion
/// limit was neither read nor (by the stripper) recognised.
#[test]
fn deeply_nested_usage_is_read() {
    for depth in [1000, 100_000] {
        let nested = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        let chunk = format!(
            r#"{{"id":"c","object":"chat.completion.chunk","model":"m","choices":[],"usage":{{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3,"x":{nested}}}}}"#
        );
        let r = &run(&sse(&[&chunk, "[DONE]"]))[0];
        assert_eq!(counts(r), (Some(1), Some(2), Some(3)));
        assert_eq!(r.invalid_json_events, 0);
    }
}
