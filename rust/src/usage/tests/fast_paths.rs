//! The learned-shape fast paths (chat, Anthropic, Responses and Gemini
//! templates) against the slow path on hostile text: escaped quotes and
//! backslashes, `\u0022`, `"usage":{` and the template's own bytes inside
//! strings, very long strings, invalid escapes, cut at every byte. Each
//! stream's reports must be exactly those of a tap that reads every event
//! the slow way.

use super::*;

/// Texts a delta may carry, as JSON string bodies (escaped).
const HOSTILE: &[&str] = &[
    r#"\""#,
    r#"\\"#,
    r#"\\\""#,
    r#"a\\"#,
    r#"\\\\"#,
    r#"\u0022"#,
    r#"\u005c"#,
    r#"\u005c\u0022"#,
    r#"\"usage\":{\"output_tokens\":999}"#,
    r#"\"}},\"usage\":{\"output_tokens\":7}}"#,
    r#"\"}],\"usageMetadata\":{\"promptTokenCount\":1}}"#,
    r#"\",\"finish_reason\":\"stop\"}],\"usage\":{\"total_tokens\":3}}"#,
    r#"\"},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}"#,
    "usage",
    r#"\"usage\""#,
    "\u{e9}\u{65e5}\u{672c} \\n\\n",
    r#"\ud83d\ude80"#,
    r#"\ud800"#,
    r#"\/\b\f\n\r\t"#,
    "",
];

/// Texts that are not valid JSON string bodies. The slow path counts such
/// an event as invalid; so do the templates. Chat's prefilter (the path a
/// chunk takes when no template matches) does not validate the JSON it
/// skips, so chat streams are only checked with valid texts.
const INVALID: &[&str] = &[r#"\x"#, r#"\u00"#, r#"\uZZZZ"#, "a\u{1}b", "tab\there"];

/// A long text full of escapes (about 100 KB).
fn long_text() -> String {
    let mut s = String::new();
    while s.len() < 100_000 {
        s.push_str(r#"x\"usage\":{\"a\":1}\\"#);
        s.push_str(&"y".repeat(s.len() % 97));
    }
    s
}

fn texts() -> Vec<String> {
    let mut all: Vec<String> = HOSTILE.iter().map(|s| (*s).to_owned()).collect();
    all.push(long_text());
    all.extend(INVALID.iter().map(|s| (*s).to_owned()));
    all
}

fn is_valid(text: &str) -> bool {
    !INVALID.contains(&text)
}

/// A stream's reports and, when `collect`, its reassembled outputs.
type Read = (Vec<Report>, Vec<crate::reassemble::Output>);

fn read(bytes: &[u8], cut: Option<usize>, slow: bool, collect: bool) -> Read {
    let mut tap = UsageTap::new(ApiHint::Auto, DecoderConfig::default());
    if slow {
        tap = tap.slow_only();
    }
    if collect {
        tap = tap.collecting_output();
    }
    match cut {
        Some(at) => {
            tap.feed(&bytes[..at]);
            tap.feed(&bytes[at..]);
        }
        None => tap.feed(bytes),
    }
    let reports = tap.finish();
    (reports, tap.outputs().into_iter().cloned().collect())
}

fn reports(bytes: &[u8], cut: Option<usize>, slow: bool) -> Vec<Report> {
    read(bytes, cut, slow, false).0
}

/// The fast paths give the slow path's reports, whole, cut in two
/// (`every_cut`: at every byte of the last 700; otherwise at a few hundred
/// places) and fed one byte at a time; collecting the output, they give
/// the slow path's output too.
fn same_as_slow(bytes: &[u8], every_cut: bool) -> Vec<Report> {
    let reference = read(bytes, None, true, true);
    let lossy = || String::from_utf8_lossy(bytes).into_owned();
    assert_eq!(reports(bytes, None, false), reference.0, "{}", lossy());
    assert_eq!(read(bytes, None, false, true), reference, "{}", lossy());
    // Every cut over the last events (where the hostile text of a short
    // stream is), every few bytes before; one byte at a time below cuts
    // everywhere at once.
    let step = if every_cut {
        13
    } else {
        (bytes.len() / 300).max(1)
    };
    let near_end = |at: usize| every_cut && at + 700 >= bytes.len();
    for at in (0..=bytes.len()).filter(|&at| at % step == 0 || near_end(at)) {
        assert_eq!(reports(bytes, Some(at), false), reference.0, "cut at {at}");
        assert_eq!(
            read(bytes, Some(at), false, true),
            reference,
            "collecting, cut at {at}"
        );
    }
    for collect in [false, true] {
        let mut tap = UsageTap::new(ApiHint::Auto, DecoderConfig::default());
        if collect {
            tap = tap.collecting_output();
        }
        for b in bytes.chunks(1) {
            tap.feed(b);
        }
        assert_eq!(tap.finish(), reference.0, "one byte at a time");
        if collect {
            let outputs: Vec<_> = tap.outputs().into_iter().cloned().collect();
            assert_eq!(outputs, reference.1, "collecting, one byte at a time");
        }
    }
    reference.0
}

fn chat(texts: &[&str], obfuscated: bool) -> Vec<u8> {
    let head = r#"{"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"#;
    let obf = if obfuscated {
        r#","obfuscation":"Qx1""#
    } else {
        ""
    };
    let mut events = vec![format!(
        r#"{head}"role":"assistant","content":""}},"finish_reason":null}}],"usage":null{obf}}}"#
    )];
    for text in ["Hi", " there"].iter().chain(texts) {
        events.push(format!(
            r#"{head}"content":"{text}"}},"finish_reason":null}}],"usage":null{obf}}}"#
        ));
    }
    events.push(format!(
        r#"{head}}},"finish_reason":"stop"}}],"usage":null{obf}}}"#
    ));
    events.push(r#"{"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[],"usage":{"prompt_tokens":4,"completion_tokens":2,"total_tokens":6}}"#.to_owned());
    events.push("[DONE]".to_owned());
    let refs: Vec<&str> = events.iter().map(String::as_str).collect();
    sse(&refs)
}

fn anthropic(texts: &[&str]) -> Vec<u8> {
    let mut events = vec![
        ("message_start".to_owned(), r#"{"type":"message_start","message":{"id":"m1","model":"c","usage":{"input_tokens":5,"output_tokens":1}}}"#.to_owned()),
        ("content_block_start".to_owned(), r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#.to_owned()),
    ];
    let kinds = [
        ("text_delta", "text"),
        ("input_json_delta", "partial_json"),
        ("thinking_delta", "thinking"),
    ];
    for (kind, key) in kinds {
        for text in ["Hi", " there"].iter().chain(texts) {
            events.push((
                "content_block_delta".to_owned(),
                format!(
                    r#"{{"type":"content_block_delta","index":0,"delta":{{"type":"{kind}","{key}":"{text}"}}}}"#
                ),
            ));
        }
    }
    events.push(("message_delta".to_owned(), r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":9}}"#.to_owned()));
    events.push((
        "message_stop".to_owned(),
        r#"{"type":"message_stop"}"#.to_owned(),
    ));
    let refs: Vec<(&str, &str)> = events
        .iter()
        .map(|(n, d)| (n.as_str(), d.as_str()))
        .collect();
    typed(&refs)
}

fn responses(texts: &[&str]) -> Vec<u8> {
    let mut events = vec![(
        "response.created".to_owned(),
        r#"{"type":"response.created","response":{"id":"r1","model":"g","status":"in_progress","usage":null}}"#.to_owned(),
    )];
    for name in ["output_text", "function_call_arguments"] {
        for text in ["Hi", " there"].iter().chain(texts) {
            let ty = format!("response.{name}.delta");
            events.push((
                ty.clone(),
                format!(r#"{{"type":"{ty}","item_id":"i","delta":"{text}","obfuscation":"ab"}}"#),
            ));
        }
    }
    events.push(("response.completed".to_owned(), r#"{"type":"response.completed","response":{"id":"r1","model":"g","status":"completed","usage":{"input_tokens":3,"output_tokens":4,"total_tokens":7}}}"#.to_owned()));
    let refs: Vec<(&str, &str)> = events
        .iter()
        .map(|(n, d)| (n.as_str(), d.as_str()))
        .collect();
    typed(&refs)
}

fn gemini_chunk(text: &str, prompt: u64, candidates: u64, finish: &str) -> String {
    format!(
        r#"{{"candidates":[{{"content":{{"parts":[{{"text":"{text}"}}],"role":"model"}}{finish},"index":0}}],"usageMetadata":{{"promptTokenCount":{prompt},"candidatesTokenCount":{candidates},"totalTokenCount":{},"promptTokensDetails":[{{"modality":"TEXT","tokenCount":{prompt}}}]}},"modelVersion":"g","responseId":"r1"}}"#,
        prompt + candidates
    )
}

fn gemini(texts: &[&str]) -> Vec<u8> {
    let mut events = Vec::new();
    let mut n = 0;
    for text in ["Hi", " there"].iter().chain(texts) {
        n += 1;
        events.push(gemini_chunk(text, 9, n, ""));
    }
    events.push(gemini_chunk(".", 9, n + 1, r#","finishReason":"STOP""#));
    let refs: Vec<&str> = events.iter().map(String::as_str).collect();
    sse(&refs)
}

#[test]
fn hostile_text_is_read_as_the_slow_path_reads_it() {
    for text in texts() {
        let one = [text.as_str()];
        // Each stream alone, every cut for the short texts.
        let every = text.len() < 1000;
        let mut streams = vec![
            ("anthropic", anthropic(&one)),
            ("responses", responses(&one)),
            ("gemini", gemini(&one)),
        ];
        if is_valid(&text) {
            streams.push(("chat", chat(&one, true)));
            streams.push(("chat_noobf", chat(&one, false)));
        }
        for (name, bytes) in streams {
            let r = same_as_slow(&bytes, every);
            assert_eq!(r.len(), 1, "{name} {text}");
            let invalid = u64::from(!is_valid(&text));
            let per_event = if name == "anthropic" { 3 } else { 1 };
            if name != "responses" {
                assert_eq!(
                    r[0].invalid_json_events,
                    per_event * invalid,
                    "{name} {text}"
                );
            }
        }
    }
}

#[test]
fn all_hostile_texts_in_one_stream() {
    let all = texts();
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    let valid = &refs[..HOSTILE.len()];
    // Every valid text but the empty one is output; both of the learning
    // chunks ("Hi", " there") are too.
    let outputs = valid.iter().filter(|t| !t.is_empty()).count() as u64 + 2;
    let r = same_as_slow(&chat(valid, true), false);
    assert_eq!((r[0].delta_chunks, r[0].invalid_json_events), (outputs, 0));
    assert_eq!(counts(&r[0]), (Some(4), Some(2), Some(6)));
    let r = same_as_slow(&anthropic(valid), false);
    assert_eq!(r[0].delta_chunks, 3 * outputs);
    assert_eq!(counts(&r[0]), (Some(5), Some(9), Some(14)));
    let r = same_as_slow(&responses(valid), false);
    assert_eq!(r[0].delta_chunks, 2 * outputs);
    assert_eq!(counts(&r[0]), (Some(3), Some(4), Some(7)));
    let r = same_as_slow(&gemini(valid), false);
    // The finish chunk's "." is output too.
    assert_eq!(r[0].delta_chunks, outputs + 1);
    assert_eq!(r[0].status, Status::Completed);
    assert!(r[0].warnings.is_empty(), "{:?}", r[0].warnings);
    let valid_long = &refs[..=HOSTILE.len()];
    for stream in [
        chat(valid_long, true),
        chat(valid_long, false),
        anthropic(&refs),
        responses(&refs),
        gemini(&refs),
    ] {
        same_as_slow(&stream, false);
    }
}

/// The Gemini fast path keeps running totals aside; totals that go down,
/// a changed input, counts that become zero or stop being zero must give
/// the slow path's usage and warnings.
#[test]
fn gemini_running_totals_that_do_not_only_grow() {
    // Each series, and whether the slow path warns about it: a total that
    // went down or another input (an all-zero usage is not kept once a
    // real one is, so it is never compared).
    let series: [(&[(u64, u64)], bool); 6] = [
        (&[(9, 1), (9, 2), (9, 3), (9, 2), (9, 5), (9, 6)], true),
        (&[(9, 1), (9, 2), (10, 3), (10, 4)], true),
        (&[(0, 0), (0, 0), (9, 0), (9, 1), (9, 2)], true),
        (&[(9, 1), (9, 2), (0, 0), (0, 0), (9, 3)], false),
        (&[(9, 3), (9, 2), (9, 1), (9, 1)], true),
        (&[(9, 0), (9, 0), (9, 1), (9, 1), (9, 7)], false),
    ];
    for (s, warns) in series {
        let mut events: Vec<String> = s
            .iter()
            .enumerate()
            .map(|(i, &(p, c))| gemini_chunk(&format!("t{i}"), p, c, ""))
            .collect();
        let (p, c) = s[s.len() - 1];
        events.push(gemini_chunk(".", p, c, r#","finishReason":"STOP""#));
        let refs: Vec<&str> = events.iter().map(String::as_str).collect();
        let r = same_as_slow(&sse(&refs), true);
        assert_eq!(r[0].delta_chunks, s.len() as u64 + 1);
        assert_eq!(
            !r[0].warnings.is_empty(),
            warns,
            "{s:?}: {:?}",
            r[0].warnings
        );
    }
}

/// With the timeline on, each Gemini chunk's running usage is in the log.
#[test]
fn gemini_timeline_sees_every_running_total() {
    let events: Vec<String> = (1..=6).map(|n| gemini_chunk("ab", 9, n, "")).collect();
    let refs: Vec<&str> = events.iter().map(String::as_str).collect();
    let mut tap = UsageTap::new(ApiHint::Auto, DecoderConfig::default()).with_timeline();
    tap.feed(&sse(&refs));
    let outputs: Vec<Option<u64>> = tap
        .timeline()
        .unwrap()
        .entries()
        .iter()
        .map(|e| e.output_tokens)
        .collect();
    assert_eq!(outputs, (1..=6).map(Some).collect::<Vec<_>>());
    assert_eq!(
        tap.finish()[0].usage.as_ref().unwrap().output_tokens,
        Some(6)
    );
}

/// The raw path reads only simple events while the decoder is between
/// events; CRLF, ids, retries, comments, a byte order mark, several data
/// lines and events cut across reads must give the slow path's reports.
#[test]
fn raw_reads_leave_other_framing_to_the_decoder() {
    let texts = ["a", r#"\"b\""#, "c"];
    for stream in [
        chat(&texts, true),
        anthropic(&texts),
        responses(&texts),
        gemini(&texts),
    ] {
        let text = String::from_utf8(stream).unwrap();
        let events: Vec<&str> = text.split_inclusive("\n\n").collect();
        let mut variants = vec![
            text.replace('\n', "\r\n"),
            text.replace('\n', "\r"),
            format!("\u{feff}{text}"),
        ];
        for (at, extra) in [
            (3, "id: 7\n"),
            (4, "retry: 10\n"),
            (3, ": comment\n\n"),
            (4, "event: other\n"),
            (5, "data:\n"),
            (3, "\n\n"),
        ] {
            let mut v = events.clone();
            v.insert(at.min(v.len()), extra);
            variants.push(v.concat());
        }
        // An event whose data line has a second data line after it.
        variants.push(text.replacen("\n\n", "\ndata: \n\n", 4));
        for v in variants {
            same_as_slow(v.as_bytes(), true);
        }
    }
}

/// An event past `max_event_size` is skipped by the decoder, never read
/// raw.
#[test]
fn raw_reads_keep_the_event_size_limit() {
    let stream = anthropic(&["a", "bb", &"c".repeat(200)]);
    let config = DecoderConfig {
        max_event_size: 150,
        ..DecoderConfig::default()
    };
    let run = |slow: bool| {
        let mut tap = UsageTap::new(ApiHint::Auto, config.clone());
        if slow {
            tap = tap.slow_only();
        }
        for piece in stream.chunks(64) {
            tap.feed(piece);
        }
        tap.finish()
    };
    let r = run(false);
    assert_eq!(r, run(true));
    assert_eq!(r[0].oversized_events, 3);
}

/// Collecting the output, the chat and Anthropic text templates append each
/// text without parsing its event once a first event of the shape showed
/// that it adds text and nothing else; shapes that add anything else
/// (Anthropic thinking and tool input) are parsed every time. Either way the output is the
/// slow path's (the tests above).
#[test]
fn collecting_appends_template_text_without_parsing() {
    let texts = ["a", r#"b\nc\u00e9\ud83d\ude80\"d"#, "e\u{e9}f", ""];
    for (stream, fast) in [
        (chat(&texts, false), true),
        (chat(&texts, true), true),
        (anthropic(&texts), true),
        (
            String::from_utf8(anthropic(&texts))
                .unwrap()
                .replace(
                    r#""type":"text_delta","text":"#,
                    r#""type":"thinking_delta","thinking":"#,
                )
                .into_bytes(),
            false,
        ),
    ] {
        let mut tap = UsageTap::new(ApiHint::Auto, DecoderConfig::default()).collecting_output();
        for piece in stream.chunks(97) {
            tap.feed(piece);
        }
        let collect = tap.output.as_ref().unwrap();
        assert_eq!(
            collect.fast.is_some(),
            fast,
            "{}",
            String::from_utf8_lossy(&stream)
        );
        assert_eq!(same_as_slow(&stream, false), tap.finish());
    }
}
