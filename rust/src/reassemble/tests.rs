//! Reassembly of every supported stream shape, and its limits.

use super::*;

fn run(events: &[&str]) -> Output {
    let mut out = Output::default();
    for e in events {
        out.on_event(e.as_bytes());
    }
    out
}

#[test]
fn chat_choices_and_tool_calls() {
    let out = run(&[
        r#"{"choices":[{"index":0,"delta":{"content":"Hel"}},{"index":1,"delta":{"content":"Bon"}}]}"#,
        r#"{"choices":[{"index":0,"delta":{"content":"lo \"usage\""}},{"index":1,"delta":{"refusal":"no"}}]}"#,
        r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"c1","function":{"name":"f","arguments":"{\"a\""}}]}}]}"#,
        r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":":1}"}}]}}]}"#,
        "[DONE]",
        r#"{"choices":[],"usage":{"prompt_tokens":1}}"#,
    ]);
    assert_eq!(out.choices[&0].text, "Hello \"usage\"");
    assert_eq!(out.choices[&1].text, "Bon");
    assert_eq!(out.choices[&1].refusal, "no");
    let call = &out.choices[&0].tool_calls[&0];
    assert_eq!((call.id.as_str(), call.name.as_str()), ("c1", "f"));
    assert_eq!(call.arguments, "{\"a\":1}");
}

#[test]
fn invalid_utf8_text_is_replaced_not_dropped() {
    let mut out = Output::default();
    out.on_event(b"{\"choices\":[{\"index\":0,\"delta\":{\"content\":\"caf\xc3\"}}]}");
    out.on_event(b"{\"choices\":[{\"index\":0,\"delta\":{\"content\":\"ok\xff!\"}}]}");
    out.on_event(b"{\"choices\":[{\"index\":0,\"delta\":{\"content\":\"\xff");
    assert_eq!(out.choices[&0].text, "caf\u{fffd}ok\u{fffd}!");
}

#[test]
fn lone_surrogate_escapes_are_replaced_not_dropped() {
    let out = run(&[
        r#"{"choices":[{"index":0,"delta":{"content":"a\ud83d"}}]}"#,
        r#"{"choices":[{"index":0,"delta":{"content":"\ude80b\ud83d\ude80"}}]}"#,
    ]);
    assert_eq!(out.choices[&0].text, "a\u{fffd}\u{fffd}b\u{1f680}");
}

#[test]
fn responses_anthropic_gemini() {
    let out = run(&[
        r#"{"type":"response.output_text.delta","delta":"Hi","output_index":0}"#,
        r#"{"type":"response.output_item.added","output_index":1,"item":{"type":"function_call","call_id":"k","name":"g"}}"#,
        r#"{"type":"response.function_call_arguments.delta","output_index":1,"delta":"{}"}"#,
    ]);
    assert_eq!(out.choices[&0].text, "Hi");
    assert_eq!(out.choices[&0].tool_calls[&1].arguments, "{}");
    let out = run(&[
        r#"{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"t","name":"n"}}"#,
        r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"A"}}"#,
        r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"q\":2}"}}"#,
    ]);
    assert_eq!(out.choices[&0].text, "A");
    assert_eq!(out.choices[&0].tool_calls[&1].arguments, "{\"q\":2}");
    let out = run(&[
        r#"{"type":"content_block_start","index":0,"content_block":{"type":"tool_use","id":"t","name":"n","input":{}}}"#,
        r#"{"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":""}}"#,
        r#"{"type":"content_block_stop","index":0}"#,
    ]);
    assert_eq!(out.choices[&0].tool_calls[&0].arguments, "{}");
    let out = run(&[
        r#"{"type":"response.output_item.added","output_index":0,"item":{"type":"function_call","call_id":"k","name":"g"}}"#,
        r#"{"type":"response.function_call_arguments.done","output_index":0,"arguments":"{\"a\":1}"}"#,
        r#"{"type":"response.output_text.done","output_index":1,"text":"T"}"#,
    ]);
    assert_eq!(out.choices[&0].tool_calls[&0].arguments, "{\"a\":1}");
    assert_eq!(out.choices[&0].text, "T");
    let out = run(&[
        r#"{"candidates":[{"content":{"parts":[{"text":"x","thought":true},{"text":"y"},{"functionCall":{"name":"f","args":{"k":"v\n"}}}]}}]}"#,
    ]);
    assert_eq!(out.choices[&0].reasoning, "x");
    assert_eq!(out.choices[&0].text, "y");
    assert_eq!(out.choices[&0].tool_calls[&0].arguments, r#"{"k":"v\n"}"#);
}

/// Gemini streamed arguments: values of every kind, nested paths, a
/// string continued over pieces, unreadable pieces ignored, and a call
/// cut before its end closed into whole JSON by [`Output::close`].
#[test]
fn gemini_partial_args() {
    let call = |body: &str| {
        format!(r#"{{"candidates":[{{"content":{{"parts":[{{"functionCall":{body}}}]}}}}]}}"#)
    };
    let piece = |p: &str| call(&format!(r#"{{"partialArgs":[{p}],"willContinue":true}}"#));
    let mut out = Output::default();
    for e in [
        call(r#"{"name":"f","willContinue":true}"#),
        piece(r#"{"jsonPath":"$.a","stringValue":"x\"y","willContinue":true}"#),
        piece(r#"{"jsonPath":"$.a","stringValue":"z"}"#),
        piece(r#"{"jsonPath":"$.b[0].c","numberValue":1.5}"#),
        piece(r#"{"jsonPath":"$.b[1]","boolValue":true}"#),
        piece(r#"{"jsonPath":"$['d e']","nullValue":null}"#),
        piece(r#"{"jsonPath":"nonsense","stringValue":"q"}"#),
        piece(r#"{"jsonPath":"$.g","stringValue":"open","willContinue":true}"#),
    ] {
        out.on_event(e.as_bytes());
    }
    out.close();
    let args = &out.choices[&0].tool_calls[&0].arguments;
    assert_eq!(
        args,
        r#"{"a":"x\"yz","b":[{"c":1.5},true],"d e":null,"g":"open"}"#
    );
    // Nameless empty markers make no call.
    let mut out = Output::default();
    out.on_event(call("{}").as_bytes());
    out.on_event(call(r#"{"willContinue":true}"#).as_bytes());
    assert!(out.choices[&0].tool_calls.is_empty());
}

/// A provider that repeats the full id and name of a tool call in every
/// chunk (or sends the value so far) gets them once; arguments append.
#[test]
fn repeated_tool_call_ids_and_names_are_not_doubled() {
    let chunk = |id: &str, name: &str, args: &str| {
        format!(
            r#"{{"choices":[{{"index":0,"delta":{{"tool_calls":[{{"index":0,"id":"{id}","function":{{"name":"{name}","arguments":"{args}"}}}}]}}}}]}}"#
        )
    };
    let events = [
        chunk("call_1", "get_weather", "{"),
        chunk("call_1", "get_weather", "}"),
        chunk("", "", ""),
    ];
    let out = run(&events.iter().map(String::as_str).collect::<Vec<_>>());
    let call = &out.choices[&0].tool_calls[&0];
    assert_eq!(
        (call.id.as_str(), call.name.as_str()),
        ("call_1", "get_weather")
    );
    assert_eq!(call.arguments, "{}");
    // The value so far, growing: the longer one replaces it.
    let events = [
        chunk("call_", "get", "{}"),
        chunk("call_1", "get_weather", ""),
    ];
    let out = run(&events.iter().map(String::as_str).collect::<Vec<_>>());
    let call = &out.choices[&0].tool_calls[&0];
    assert_eq!(
        (call.id.as_str(), call.name.as_str()),
        ("call_1", "get_weather")
    );
    // Pieces that do not repeat are still appended.
    let events = [chunk("call_", "get_", ""), chunk("9", "weather", "")];
    let out = run(&events.iter().map(String::as_str).collect::<Vec<_>>());
    let call = &out.choices[&0].tool_calls[&0];
    assert_eq!(
        (call.id.as_str(), call.name.as_str()),
        ("call_9", "get_weather")
    );
}

/// Regression (hardening review): every new choice or tool-call index
/// cost an entry, so `{"index":N}` items a few bytes long made the
/// output about ten times larger than the stream (45 times once turned
/// into Python objects). Both are bounded now.
#[test]
fn choices_and_tool_calls_are_bounded() {
    let mut out = Output::default();
    for k in 0..10u64 {
        let items: Vec<String> = (0..100)
            .map(|i| format!(r#"{{"index":{},"delta":{{"content":"x"}}}}"#, k * 100 + i))
            .collect();
        out.on_event(format!(r#"{{"choices":[{}]}}"#, items.join(",")).as_bytes());
    }
    assert_eq!(out.choices.len(), MAX_CHOICES);
    assert!(out.capped());
    out.on_event(br#"{"choices":[{"index":5,"delta":{"content":"y"}}]}"#);
    assert_eq!(out.choices[&5].text, "xy");
    // What an ignored choice received does not pile up.
    assert_eq!(out.spill.text, "x");

    let mut out = Output::default();
    for k in 0..3000u64 {
        out.on_event(
            format!(r#"{{"type":"response.function_call_arguments.delta","output_index":{k},"delta":"a"}}"#)
                .as_bytes(),
        );
    }
    assert_eq!(out.choices[&0].tool_calls.len(), MAX_TOOL_CALLS);
    assert!(out.capped());
    assert!(out.cap_warning().unwrap().contains("1024"));
    assert!(!run(&[r#"{"choices":[{"index":0,"delta":{"content":"x"}}]}"#]).capped());
}
