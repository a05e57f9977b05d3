//! End-to-end tests of [`UsageTap`] on hand-written streams: adversarial
//! placements of `"usage"`, broken input and the stream-level rules
//! (concatenated responses, zeroed usage, errors before detection). By
//! theme: `robustness` (garbage, huge and hostile input, bounds),
//! `regressions` (outputs, step sums, warnings) and `fast_paths` (the
//! learned-shape paths against the slow path on hostile text).

mod fast_paths;
mod lazy;
mod regressions;
mod robustness;

use super::*;

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
