//! Regression tests of [`UsageTap`]: per-response outputs, step sums,
//! warnings about rejected and repeated usage, responses without finish
//! chunks.

use super::*;
use crate::reassemble::Output;

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
