//! The per-event step's learned shapes: which deltas teach one, and the
//! relearning budget.

use super::*;

fn feed(tap: &mut Tap, name: &str, data: &str) {
    tap.on_event(EventRef {
        event: name.as_bytes(),
        data: data.as_bytes(),
        id: b"",
        retry: None,
    });
}

#[test]
fn a_delta_of_another_shape_keeps_the_learned_template() {
    let mut tap = Tap::new(ApiHint::Auto, 1 << 20);
    let start =
        r#"{"type":"message_start","message":{"id":"m1","model":"c","usage":{"input_tokens":1}}}"#;
    feed(&mut tap, "message_start", start);
    let text =
        r#"{"type":"content_block_delta","index":1,"delta":{"type":"text_delta","text":"a"}}"#;
    // Not compact: no template is learned from it.
    let spaced = r#"{"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "t"}}"#;
    for _ in 0..2 * RELEARN_BUDGET {
        feed(&mut tap, "content_block_delta", spaced);
    }
    assert!(tap.template.is_none());
    assert_eq!(tap.relearn_budget, RELEARN_BUDGET);
    feed(&mut tap, "content_block_delta", text);
    let json = r#"{"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": "{"}}"#;
    feed(&mut tap, "content_block_delta", json);
    assert!(tap
        .template
        .as_ref()
        .is_some_and(|t| t.matches(text.as_bytes()).is_some()));
    assert_eq!(tap.relearn_budget, RELEARN_BUDGET - 1);
    assert_eq!(tap.delta_chunks(), 2 * u64::from(RELEARN_BUDGET) + 2);
}

#[test]
fn anthropic_thinking_and_tool_input_deltas_are_learned() {
    let mut tap = Tap::new(ApiHint::Auto, 1 << 20);
    let start =
        r#"{"type":"message_start","message":{"id":"m1","model":"c","usage":{"input_tokens":1}}}"#;
    feed(&mut tap, "message_start", start);
    let blocks = [
        r#"{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"#,
        r#"{"type":"content_block_delta","index":1,"delta":{"type":"text_delta","text":"#,
        r#"{"type":"content_block_delta","index":2,"delta":{"type":"input_json_delta","partial_json":"#,
    ];
    for (at, head) in blocks.iter().enumerate() {
        feed(
            &mut tap,
            "content_block_delta",
            &format!(r#"{head}"a"}}}}"#),
        );
        assert_eq!(tap.relearn_budget, RELEARN_BUDGET - 1 - at as u8);
        for (text, delta) in [(r#""b\"c""#, Some(true)), (r#""""#, Some(false))] {
            let data = format!("{head}{text}}}}}");
            let t = tap.template.as_ref().unwrap();
            assert_eq!(t.matches(data.as_bytes()), delta, "{data}");
            feed(&mut tap, "content_block_delta", &data);
        }
    }
    assert_eq!(tap.relearn_budget, RELEARN_BUDGET - 3);
    assert_eq!(tap.delta_chunks(), 6);
}

#[test]
fn the_open_response_id_is_decoded() {
    let mut tap = Tap::new(ApiHint::Auto, 1 << 20);
    feed(
        &mut tap,
        "",
        r#"{"id":"a\/b","object":"chat.completion.chunk","model":"m","choices":[]}"#,
    );
    assert_eq!(tap.response_id().as_deref(), Some("a/b"));
}
