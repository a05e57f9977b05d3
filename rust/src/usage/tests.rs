//! End-to-end tests of [`UsageTap`] on hand-written streams: adversarial
//! placements of `"usage"`, broken input, huge events, and the stream-level
//! rules (concatenated responses, zeroed usage, errors before detection).

use super::*;
use crate::reassemble::Output;

fn sse(events: &[&str]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in events {
        out.extend_from_slice(format!("data: {e}\n\n").as_bytes());
    }
    out
}

fn typed(events: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, data) in events {
        out.extend_from_slice(format!("event: {name}\ndata: {data}\n\n").as_bytes());
    }
    out
}

fn run(bytes: &[u8]) -> Vec<Report> {
    let mut tap = UsageTap::new(ApiHint::Auto, DecoderConfig::default());
    tap.feed(bytes);
    tap.finish()
}

fn counts(r: &Report) -> (Option<u64>, Option<u64>, Option<u64>) {
    let u = r.usage.as_ref().expect("usage");
    (u.input_tokens, u.output_tokens, u.total_tokens)
}

/// xorshift64*, for garbage and chunk sizes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

const CHUNK: &str = r#"{"id":"c1","object":"chat.completion.chunk","model":"m","choices":[{"index":0,"delta":{"content":"x"},"finish_reason":null}],"usage":null}"#;

#[test]
fn usage_in_text_arguments_and_metadata_is_ignored() {
    let stream = sse(&[
        CHUNK,
        r#"{"id":"c1","object":"chat.completion.chunk","model":"m","choices":[{"index":0,"delta":{"content":"\"usage\":{\"prompt_tokens\":999,\"completion_tokens\":999,\"total_tokens\":1998}"},"finish_reason":null}]}"#,
        r#"{"id":"c1","object":"chat.completion.chunk","model":"m","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"usage\": {\"total_tokens\": 5}}"}}]},"finish_reason":null}]}"#,
        r#"{"id":"c1","object":"chat.completion.chunk","model":"m","metadata":{"usage":{"prompt_tokens":7}},"choices":[{"index":0,"delta":{"content":"y"},"finish_reason":null}]}"#,
        r#"{"id":"c1","object":"chat.completion.chunk","model":"m","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#,
        "[DONE]",
    ]);
    let r = &run(&stream)[0];
    assert_eq!(r.usage, None);
    assert_eq!(
        (r.status, r.delta_chunks, r.events),
        (Status::Completed, 4, 6)
    );

    let responses = typed(&[
        (
            "response.created",
            r#"{"type":"response.created","response":{"id":"r1","model":"m","metadata":{"usage":"{\"input_tokens\":5}"},"usage":null}}"#,
        ),
        (
            "response.output_text.delta",
            r#"{"type":"response.output_text.delta","delta":"\"usage\":{\"input_tokens\":1}"}"#,
        ),
        (
            "response.completed",
            r#"{"type":"response.completed","response":{"id":"r1","metadata":{"usage":{"input_tokens":99}},"output":[{"usage":{"input_tokens":98}}],"usage":{"input_tokens":3,"output_tokens":4,"total_tokens":7}}}"#,
        ),
    ]);
    let r = &run(&responses)[0];
    assert_eq!(counts(r), (Some(3), Some(4), Some(7)));
    assert_eq!(
        r.usage.as_ref().unwrap().raw,
        r#"{"input_tokens":3,"output_tokens":4,"total_tokens":7}"#
    );
}

#[test]
fn empty_stream_and_reuse() {
    let mut tap = UsageTap::new(ApiHint::Auto, DecoderConfig::default());
    let reports = tap.finish();
    assert_eq!(reports.len(), 1);
    assert_eq!(
        (reports[0].status, reports[0].usage.is_none()),
        (Status::Truncated, true)
    );
    assert_eq!(reports[0].api, Api::Unknown);
    // The same tap takes a new stream after finish.
    tap.feed(&sse(&[CHUNK]));
    let r = tap.finish();
    assert_eq!(
        (r[0].api, r[0].events, r[0].status),
        (Api::ChatCompletions, 1, Status::Truncated)
    );
    let r = tap.finish();
    assert_eq!((r.len(), r[0].api, r[0].events), (1, Api::Unknown, 0));
}

#[test]
fn broken_json_is_counted_not_fatal() {
    let stream = sse(&[
        CHUNK,
        r#"{"id":"c1","choices":[{"delta":{"content":"trunc"#,
        "not json at all",
        r#"{"id":"c1","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":"#,
        "",
        r#"{"id":"c1","choices":[],"usage":{"prompt_tokens":2,"completion_tokens":3,"total_tokens":5}}"#,
    ]);
    let r = &run(&stream)[0];
    assert_eq!(r.invalid_json_events, 3);
    assert_eq!(counts(r), (Some(2), Some(3), Some(5)));
    assert!(r.warnings.iter().any(|w| w.contains("not valid JSON")));
}

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

#[test]
fn running_totals_last_wins_and_zero_does_not_erase() {
    // Ollama legacy completions: zeroed usage on every chunk, real at the end.
    let zero = r#"{"id":"o","object":"text_completion","model":"l","choices":[{"text":"a","index":0,"finish_reason":null}],"usage":{"prompt_tokens":0,"completion_tokens":0,"total_tokens":0}}"#;
    let real = r#"{"id":"o","object":"text_completion","model":"l","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}}"#;
    let r = &run(&sse(&[zero, zero, real, zero, "[DONE]"]))[0];
    assert_eq!(counts(r), (Some(5), Some(2), Some(7)));
    assert_eq!((r.api, r.delta_chunks), (Api::Completions, 3));
    // vLLM continuous usage: cumulative values, the last one wins.
    let step = |n: u64| {
        format!(
            r#"{{"id":"v","object":"chat.completion.chunk","model":"q","choices":[{{"index":0,"delta":{{"content":"t"}},"finish_reason":null}}],"usage":{{"prompt_tokens":4,"completion_tokens":{n},"total_tokens":{}}}}}"#,
            n + 4
        )
    };
    let events: Vec<String> = (1..=5).map(step).collect();
    let refs: Vec<&str> = events.iter().map(String::as_str).collect();
    let r = &run(&sse(&refs))[0];
    assert_eq!(counts(r), (Some(4), Some(5), Some(9)));
    assert_eq!(r.status, Status::Truncated);
}

#[test]
fn chat_streams_split_on_new_id_after_finish() {
    let a = r#"{"id":"a","object":"chat.completion.chunk","model":"m","choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}"#;
    let b = r#"{"id":"b","object":"chat.completion.chunk","model":"m","choices":[{"index":0,"delta":{"content":"z"},"finish_reason":null}]}"#;
    let reports = run(&sse(&[CHUNK, a, b, "[DONE]"]));
    assert_eq!(reports.len(), 2);
    // The id of the first report is the first chunk's (`c1`).
    assert_eq!(reports[0].response_id.as_deref(), Some("c1"));
    assert_eq!(reports[1].response_id.as_deref(), Some("b"));
    assert_eq!(
        (reports[1].status, reports[1].usage.is_none()),
        (Status::Completed, true)
    );
    // A new id while the first is still streaming is not a new response.
    let reports = run(&sse(&[CHUNK, b]));
    assert_eq!(reports.len(), 1);
    // After `[DONE]` a chunk starts the next stream even with the same id.
    let reports = run(&sse(&[CHUNK, "[DONE]", CHUNK, CHUNK, "[DONE]"]));
    assert_eq!(reports.len(), 2);
    assert_eq!((reports[0].events, reports[1].events), (2, 3));
}

#[test]
fn errors() {
    let r = &run(&sse(&[
        CHUNK,
        r#"{"error":{"message":"overloaded","type":"server_error","param":null,"code":null}}"#,
        "[DONE]",
    ]))[0];
    assert_eq!(r.status, Status::Failed);
    assert_eq!(
        r.error.as_deref(),
        Some(r#"{"message":"overloaded","type":"server_error","param":null,"code":null}"#)
    );
    assert!(r.done);
    // Anthropic overload before message_start: the API is not known yet.
    let r = &run(&typed(&[(
        "error",
        r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
    )]))[0];
    assert_eq!((r.status, r.api), (Status::Failed, Api::Unknown));
    assert_eq!(
        r.error.as_deref(),
        Some(r#"{"type":"overloaded_error","message":"Overloaded"}"#)
    );
    // Responses flat error shape: the whole event is the payload.
    let flat =
        r#"{"type":"error","code":"server_error","message":"m","param":null,"sequence_number":1}"#;
    let r = &run(&typed(&[("error", flat)]))[0];
    assert_eq!(
        (r.status, r.api, r.error.as_deref()),
        (Status::Failed, Api::Responses, Some(flat))
    );
}

#[test]
fn responses_stream_rules() {
    let stream = typed(&[
        (
            "response.created",
            r#"{"type":"response.created","response":{"id":"r1","model":"m","usage":null}}"#,
        ),
        ("keepalive", r#"{"type":"keepalive","sequence_number":3}"#),
        (
            "response.unknown_new_thing",
            r#"{"type":"response.unknown_new_thing","x":[1]}"#,
        ),
        (
            "response.incomplete",
            r#"{"type":"response.incomplete","response":{"id":"r1","status":"incomplete","incomplete_details":{"reason":"max_output_tokens"},"usage":{"input_tokens":5,"output_tokens":9,"total_tokens":14}}}"#,
        ),
        (
            "response.created",
            r#"{"type":"response.created","response":{"id":"r2","model":"m"}}"#,
        ),
        (
            "response.failed",
            r#"{"type":"response.failed","response":{"id":"r2","status":"cancelled","usage":null}}"#,
        ),
    ]);
    let mut with_done = stream.clone();
    with_done.extend_from_slice(b"data: [DONE]\n\n");
    for bytes in [stream, with_done] {
        let reports = run(&bytes);
        assert_eq!(reports.len(), 2);
        assert_eq!(reports[0].status, Status::Incomplete);
        assert_eq!(
            reports[0].incomplete_reason.as_deref(),
            Some("max_output_tokens")
        );
        assert_eq!(counts(&reports[0]), (Some(5), Some(9), Some(14)));
        assert_eq!(
            (reports[1].status, reports[1].usage.is_none()),
            (Status::Cancelled, true)
        );
        assert!(reports.iter().all(|r| r.done && r.invalid_json_events == 0));
    }
}

#[test]
fn responses_delta_counts_do_not_depend_on_the_learned_shape() {
    let t = "response.output_text.delta";
    let a = "response.function_call_arguments.delta";
    let text = |d: &str| format!(r#"{{"type":"{t}","content_index":0,"delta":{d},"item_id":"m"}}"#);
    let args = |d: &str| format!(r#"{{"type":"{a}","delta":{d},"output_index":1}}"#);
    let events: Vec<(&str, String)> = vec![
        (
            "response.created",
            r#"{"type":"response.created","response":{"id":"r1","model":"m"}}"#.to_owned(),
        ),
        (t, text(r#""Hi""#)),
        (t, text(r#""""#)),
        (t, text(r#"" there""#)),
        // Same prefix, other event name: read the slow way.
        (a, text(r#""x""#)),
        (t, text(r#""\"usage\":{}""#)),
        (t, text(r#"{"not":"a string"}"#)),
        (t, format!(r#"{{"type":"{t}","content_index":1,"delta":"y"}}"#)),
        (a, args(r#""{\"k\""#)),
        (a, args(r#""""#)),
        (a, args(r#"":1}""#)),
        // Not an object: invalid, not a delta.
        (t, r#"{"type":"x","content_index":0,"delta":"z""#.to_owned()),
        (
            "response.completed",
            r#"{"type":"response.completed","response":{"id":"r1","status":"completed","usage":{"input_tokens":1,"output_tokens":2,"total_tokens":3}}}"#.to_owned(),
        ),
    ];
    let pairs: Vec<(&str, &str)> = events.iter().map(|(n, d)| (*n, d.as_str())).collect();
    let stream = typed(&pairs);
    // Whole, and one byte at a time: every event is read by the same rules.
    let mut tap = UsageTap::new(ApiHint::Auto, DecoderConfig::default());
    for b in &stream {
        tap.feed(std::slice::from_ref(b));
    }
    for reports in [run(&stream), tap.finish()] {
        assert_eq!(reports.len(), 1);
        assert_eq!(reports[0].delta_chunks, 8);
        assert_eq!(reports[0].invalid_json_events, 1);
        assert_eq!(counts(&reports[0]), (Some(1), Some(2), Some(3)));
    }
}

#[test]
fn lone_surrogate_escapes_do_not_lose_an_event() {
    // Servers that escape non-ASCII text can cut an emoji between its two
    // UTF-16 halves: valid JSON grammar, which the events must survive.
    let stream = sse(&[
        r#"{"id":"c","object":"chat.completion.chunk","model":"m","choices":[{"index":0,"delta":{"content":"\ud83d"},"finish_reason":null}]}"#,
        r#"{"id":"c","object":"chat.completion.chunk","model":"m","choices":[{"index":0,"delta":{"content":"\ude80"},"finish_reason":"stop"}]}"#,
        r#"{"id":"c","object":"chat.completion.chunk","model":"m","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3,"note":"\udc00"}}"#,
        "[DONE]",
    ]);
    let reports = run(&stream);
    assert_eq!(reports.len(), 1);
    let r = &reports[0];
    assert_eq!(counts(r), (Some(1), Some(2), Some(3)));
    assert_eq!((r.status, r.delta_chunks), (Status::Completed, 2));
    assert_eq!(r.finish_reason.as_deref(), Some("stop"));
    assert_eq!(r.invalid_json_events, 0);
    assert!(r.usage.as_ref().unwrap().raw.contains(r#""note":"\ufffd""#));
}

#[test]
fn assistants_run() {
    let run_obj = |status: &str, usage: &str| {
        format!(
            r#"{{"id":"run_1","object":"thread.run","model":"gpt-4o","status":"{status}","usage":{usage}}}"#
        )
    };
    let created = run_obj("queued", "null");
    let done = run_obj(
        "completed",
        r#"{"prompt_tokens":30,"completion_tokens":8,"total_tokens":38}"#,
    );
    let stream = typed(&[
        ("thread.run.created", &created),
        (
            "thread.run.step.completed",
            r#"{"id":"step_1","object":"thread.run.step","status":"completed","usage":{"prompt_tokens":10,"completion_tokens":3,"total_tokens":13}}"#,
        ),
        (
            "thread.message.delta",
            r#"{"id":"msg_1","object":"thread.message.delta","delta":{"content":[{"index":0,"type":"text","text":{"value":"Hi"}}]}}"#,
        ),
        ("thread.run.completed", &done),
        ("done", "[DONE]"),
    ]);
    let r = &run(&stream)[0];
    assert_eq!(
        (r.api, r.status, r.done, r.delta_chunks),
        (Api::Assistants, Status::Completed, true, 1)
    );
    assert_eq!(r.response_id.as_deref(), Some("run_1"));
    assert_eq!(counts(r), (Some(30), Some(8), Some(38)));
    assert_eq!(r.step_usages.len(), 1);
    assert_eq!(r.step_usages[0].total_tokens, Some(13));
}

#[test]
fn snapshot_and_on_event() {
    let mut tap = UsageTap::new(ApiHint::ChatCompletions, DecoderConfig::default());
    tap.on_event(crate::sse::EventRef {
        event: b"",
        data: CHUNK.as_bytes(),
        id: b"",
        retry: None,
    });
    tap.add_bytes(10);
    let snap = tap.snapshot();
    assert_eq!((snap.len(), snap[0].events, snap[0].bytes), (1, 1, 10));
    assert_eq!(tap.api(), Api::ChatCompletions);
    assert_eq!(tap.finish()[0].events, 1);
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

fn collect(bytes: &[u8]) -> (Vec<Report>, Vec<Output>) {
    let mut tap = UsageTap::new(ApiHint::Auto, DecoderConfig::default()).collecting_output();
    for piece in bytes.chunks(7) {
        tap.feed(piece);
    }
    let reports = tap.finish();
    let outputs = tap.outputs().into_iter().cloned().collect();
    (reports, outputs)
}

/// Regression: a run cut short (or stopped at `requires_action`) has no run
/// usage; its steps' usage was kept apart and the report said "no usage",
/// so the fallback estimated 0 output tokens. A repeated step event was
/// counted twice.
#[test]
fn assistants_run_without_run_usage_is_the_sum_of_its_steps() {
    let step = |id: &str, out: u64| {
        format!(
            r#"{{"id":"{id}","object":"thread.run.step","status":"completed","usage":{{"prompt_tokens":100,"completion_tokens":{out},"total_tokens":{}}}}}"#,
            100 + out
        )
    };
    let (s1, s2) = (step("step_1", 120), step("step_2", 180));
    let created = r#"{"id":"run_1","object":"thread.run","status":"queued","model":"gpt-4o"}"#;
    let delta = |t: &str| {
        format!(
            r#"{{"id":"msg_1","object":"thread.message.delta","delta":{{"content":[{{"index":0,"type":"text","text":{{"value":"{t}"}}}}]}}}}"#
        )
    };
    let (d1, d2) = (delta("Hel"), delta("lo"));
    let action = r#"{"id":"run_1","object":"thread.run","status":"requires_action","usage":null}"#;
    for end in [Some(action), None] {
        let mut events = vec![
            ("thread.run.created", created),
            ("thread.message.delta", d1.as_str()),
            ("thread.run.step.completed", s1.as_str()),
            ("thread.message.delta", d2.as_str()),
            ("thread.run.step.completed", s2.as_str()),
            // The same step again: counted once.
            ("thread.run.step.completed", s2.as_str()),
        ];
        if let Some(end) = end {
            events.push(("thread.run.requires_action", end));
        }
        let (reports, outputs) = collect(&typed(&events));
        let r = &reports[0];
        assert_eq!(r.step_usages.len(), 2, "{:?}", r.step_usages);
        assert_eq!(counts(r), (Some(200), Some(300), Some(500)));
        assert!(r.usage_note.as_deref().unwrap().contains("sum"), "{r:?}");
        assert_eq!(outputs[0].choices[&0].text, "Hello");
        let status = if end.is_some() {
            Status::Completed
        } else {
            Status::Truncated
        };
        assert_eq!(r.status, status);
    }
    // A run that reports its own usage keeps it, with no note.
    let done = r#"{"id":"run_1","object":"thread.run","status":"completed","usage":{"prompt_tokens":7,"completion_tokens":8,"total_tokens":15}}"#;
    let (reports, _) = collect(&typed(&[
        ("thread.run.created", created),
        ("thread.run.step.completed", s1.as_str()),
        ("thread.run.completed", done),
    ]));
    assert_eq!(counts(&reports[0]), (Some(7), Some(8), Some(15)));
    assert_eq!(reports[0].usage_note, None);
}

/// Regression: two responses in one stream had their tool-call ids, names
/// and arguments concatenated into one output (`call_acall_b`, `ff`,
/// `{}{}`).
#[test]
fn each_response_gets_its_own_output() {
    let call = |id: &str, call: &str| {
        [
            format!(
                r#"{{"id":"{id}","object":"chat.completion.chunk","model":"m","choices":[{{"index":0,"delta":{{"tool_calls":[{{"index":0,"id":"{call}","function":{{"name":"f","arguments":"{{}}"}}}}]}}}}]}}"#
            ),
            format!(
                r#"{{"id":"{id}","object":"chat.completion.chunk","model":"m","choices":[{{"index":0,"delta":{{}},"finish_reason":"tool_calls"}}]}}"#
            ),
        ]
    };
    let mut events: Vec<String> = call("r1", "call_a").into();
    events.extend(call("r2", "call_b"));
    events.push("[DONE]".to_owned());
    let refs: Vec<&str> = events.iter().map(String::as_str).collect();
    let (reports, outputs) = collect(&sse(&refs));
    assert_eq!(reports.len(), 2);
    assert_eq!(outputs.len(), 2);
    for (out, (id, call)) in outputs.iter().zip([("r1", "call_a"), ("r2", "call_b")]) {
        assert_eq!(out.response_id.as_deref(), Some(id));
        let c = &out.choices[&0].tool_calls[&0];
        assert_eq!(
            (c.id.as_str(), c.name.as_str(), c.arguments.as_str()),
            (call, "f", "{}")
        );
        assert_eq!(out.choices[&0].finish_reason.as_deref(), Some("tool_calls"));
    }
    // Responses and Anthropic repeating the id and name of a call.
    let added = r#"{"type":"response.output_item.added","output_index":0,"item":{"type":"function_call","call_id":"call_1","name":"f"}}"#;
    let created = r#"{"type":"response.created","response":{"id":"resp_1","model":"m"}}"#;
    let (_, outputs) = collect(&typed(&[
        ("response.created", created),
        ("response.output_item.added", added),
        ("response.output_item.added", added),
    ]));
    let c = &outputs[0].choices[&0].tool_calls[&0];
    assert_eq!((c.id.as_str(), c.name.as_str()), ("call_1", "f"));
    let start = r#"{"type":"message_start","message":{"id":"msg_1","model":"c","usage":{"input_tokens":1}}}"#;
    let block = r#"{"type":"content_block_start","index":0,"content_block":{"type":"tool_use","id":"toolu_1","name":"g","input":{}}}"#;
    let (_, outputs) = collect(&typed(&[
        ("message_start", start),
        ("content_block_start", block),
        ("content_block_start", block),
    ]));
    let c = &outputs[0].choices[&0].tool_calls[&0];
    assert_eq!((c.id.as_str(), c.name.as_str()), ("toolu_1", "g"));
}

/// `n > 1`: each choice keeps its own text and finish reason; Gemini's
/// per-candidate `tokenCount` is kept per choice.
#[test]
fn per_choice_figures() {
    let events = [
        r#"{"id":"c","object":"chat.completion.chunk","model":"m","choices":[{"index":0,"delta":{"content":"a"}},{"index":1,"delta":{"content":"bb"}}]}"#,
        r#"{"id":"c","object":"chat.completion.chunk","model":"m","choices":[{"index":1,"delta":{},"finish_reason":"length"}]}"#,
        r#"{"id":"c","object":"chat.completion.chunk","model":"m","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#,
        r#"{"id":"c","object":"chat.completion.chunk","model":"m","choices":[],"usage":{"prompt_tokens":2,"completion_tokens":3,"total_tokens":5}}"#,
        "[DONE]",
    ];
    let (reports, outputs) = collect(&sse(&events));
    assert_eq!(counts(&reports[0]), (Some(2), Some(3), Some(5)));
    let choices = &outputs[0].choices;
    assert_eq!(choices[&0].text, "a");
    assert_eq!(choices[&1].text, "bb");
    assert_eq!(choices[&0].finish_reason.as_deref(), Some("stop"));
    assert_eq!(choices[&1].finish_reason.as_deref(), Some("length"));
    let gemini = r#"{"candidates":[{"index":0,"content":{"parts":[{"text":"x"}]},"finishReason":"STOP","tokenCount":4},{"index":1,"content":{"parts":[{"text":"yy"}]},"finishReason":"MAX_TOKENS","tokenCount":9}],"usageMetadata":{"promptTokenCount":1,"candidatesTokenCount":13,"totalTokenCount":14},"responseId":"g1"}"#;
    let (_, outputs) = collect(&sse(&[gemini]));
    let choices = &outputs[0].choices;
    assert_eq!(
        (choices[&0].output_tokens, choices[&1].output_tokens),
        (Some(4), Some(9))
    );
    assert_eq!(choices[&1].finish_reason.as_deref(), Some("MAX_TOKENS"));
}

/// Regression: a count that is not a count (negative, fractional, huge, a
/// string, a boolean) was dropped to None with no word.
#[test]
fn rejected_counts_are_warned_about() {
    for bad in [
        "-1",
        "2.5",
        "1e308",
        "1180591620717411303424",
        "\"12\"",
        "true",
        "{\"a\":1}",
    ] {
        let chunk = format!(
            r#"{{"id":"c","object":"chat.completion.chunk","model":"m","choices":[],"usage":{{"prompt_tokens":3,"completion_tokens":{bad},"total_tokens":5}}}}"#
        );
        let r = &run(&sse(&[&chunk, "[DONE]"]))[0];
        let u = r.usage.as_ref().unwrap();
        assert_eq!((u.input_tokens, u.output_tokens), (Some(3), None), "{bad}");
        let w = r.warnings.join(" | ");
        assert!(
            w.contains("completion_tokens") && w.contains(bad),
            "{bad}: {w}"
        );
    }
    // A long or control-laden value is capped and made printable.
    let long = format!("\"{}\\u0007\"", "9".repeat(5000));
    let chunk = format!(
        r#"{{"id":"c","object":"chat.completion.chunk","model":"m","choices":[],"usage":{{"prompt_tokens":{long}}}}}"#
    );
    let r = &run(&sse(&[&chunk]))[0];
    assert_eq!(r.warnings.len(), 1, "{:?}", r.warnings);
    assert!(r.warnings[0].len() < 300 && r.warnings[0].contains("prompt_tokens"));
    // Repeated in every chunk, the warning is given once.
    let gem = r#"{"candidates":[{"content":{"parts":[{"text":"x"}]}}],"usageMetadata":{"promptTokenCount":-4,"candidatesTokenCount":1}}"#;
    let r = &run(&sse(&[gem, gem, gem]))[0];
    assert_eq!(r.warnings.len(), 1, "{:?}", r.warnings);
}

/// Regression: a second usage with other numbers replaced the first with
/// no word; running totals (Gemini) are not a disagreement.
#[test]
fn duplicate_usage_with_other_numbers_is_warned_about() {
    let usage = |o: u64| {
        format!(
            r#"{{"id":"c","object":"chat.completion.chunk","model":"m","choices":[],"usage":{{"prompt_tokens":3,"completion_tokens":{o},"total_tokens":{}}}}}"#,
            3 + o
        )
    };
    let (a, b) = (usage(5), usage(9));
    let r = &run(&sse(&[&a, &b, "[DONE]"]))[0];
    assert_eq!(counts(r), (Some(3), Some(9), Some(12)));
    assert_eq!(r.warnings.len(), 1, "{:?}", r.warnings);
    assert!(r.warnings[0].contains("3 in / 5 out") && r.warnings[0].contains("3 in / 9 out"));
    let r = &run(&sse(&[&a, &a, "[DONE]"]))[0];
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    let gem = |o: u64| {
        format!(
            r#"{{"candidates":[{{"content":{{"parts":[{{"text":"x"}}]}}}}],"usageMetadata":{{"promptTokenCount":1,"candidatesTokenCount":{o}}}}}"#
        )
    };
    let r = &run(&sse(&[&gem(1), &gem(2), &gem(3)]))[0];
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    let r = &run(&sse(&[&gem(3), &gem(2)]))[0];
    assert_eq!(r.warnings.len(), 1, "{:?}", r.warnings);
}

/// Regression: the reassembly caps (choices, tool calls) cut silently.
#[test]
fn output_caps_warn_when_they_cut() {
    let items: Vec<String> = (0..200)
        .map(|i| format!(r#"{{"index":{i},"delta":{{"content":"x"}}}}"#))
        .collect();
    let chunk = format!(
        r#"{{"id":"c","object":"chat.completion.chunk","model":"m","choices":[{}]}}"#,
        items.join(",")
    );
    let (reports, outputs) = collect(&sse(&[&chunk, &chunk, "[DONE]"]));
    assert_eq!(outputs[0].choices.len(), crate::reassemble::MAX_CHOICES);
    let w: Vec<&String> = reports[0]
        .warnings
        .iter()
        .filter(|w| w.contains("128"))
        .collect();
    assert_eq!(w.len(), 1, "{:?}", reports[0].warnings);
    let (reports, _) = collect(&sse(&[CHUNK, "[DONE]"]));
    assert!(reports[0].warnings.is_empty());
}

/// Regression (xfail `test_two_responses_without_finish_chunks`): a second
/// chat response, new id, after the first one's usage chunk but with no
/// finish chunk in between, replaced the first silently.
#[test]
fn chat_new_id_after_usage_starts_a_new_response() {
    let content = |id: &str| {
        format!(
            r#"{{"id":"{id}","object":"chat.completion.chunk","model":"m","choices":[{{"index":0,"delta":{{"content":"hi"}},"finish_reason":null}}]}}"#
        )
    };
    let usage = |id: &str, o: u64| {
        format!(
            r#"{{"id":"{id}","object":"chat.completion.chunk","model":"m","choices":[],"usage":{{"prompt_tokens":1,"completion_tokens":{o},"total_tokens":{}}}}}"#,
            1 + o
        )
    };
    let events = [
        content("first"),
        content("first"),
        usage("first", 7),
        content("second"),
        content("second"),
        usage("second", 4),
    ];
    let refs: Vec<&str> = events.iter().map(String::as_str).collect();
    let (reports, outputs) = collect(&sse(&refs));
    let ids: Vec<_> = reports.iter().map(|r| r.response_id.as_deref()).collect();
    assert_eq!(ids, [Some("first"), Some("second")]);
    assert_eq!(counts(&reports[0]).1, Some(7));
    assert_eq!(counts(&reports[1]).1, Some(4));
    let w = reports[1].warnings.join(" ");
    assert!(w.contains("first") && w.contains("second"), "{w}");
    assert_eq!(outputs[0].choices[&0].text, "hihi");
    assert_eq!(outputs[1].choices[&0].text, "hihi");
}

/// `store: false` echoed in `response.created` is reported.
#[test]
fn responses_store_flag_is_reported() {
    for (store, want) in [("false", Some(false)), ("true", Some(true)), ("null", None)] {
        let created = format!(
            r#"{{"type":"response.created","response":{{"id":"resp_1","model":"m","store":{store}}}}}"#
        );
        let r = &run(&typed(&[("response.created", &created)]))[0];
        assert_eq!(r.store, want);
    }
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
