//! The usage target's properties (`check_usage`); part of `props`.

use serde_json::Value;
use ssetally::reassemble::Output;
use ssetally::sse::DecoderConfig;
use ssetally::usage::{ApiHint, Report, Usage, UsageTap, MAX_HELD_BYTES, MAX_HELD_READS};

use super::{chunks, clean_json, Input, Seen};

/// A report with its byte count cleared (bytes go to the report that is
/// current when a chunk begins, so only their sum is chunk-invariant).
fn comparable(reports: &[Report]) -> Vec<Report> {
    reports
        .iter()
        .map(|r| Report {
            bytes: 0,
            ..r.clone()
        })
        .collect()
}

/// Feeds `split` to a fresh tap, calling `snapshot` along the way when
/// `snapshots` is set; returns the reports and the reassembled output.
fn tap_run(
    hint: ApiHint,
    config: &DecoderConfig,
    collect: bool,
    split: &[&[u8]],
    snapshots: bool,
) -> (Vec<Report>, Option<Output>) {
    let mut tap = UsageTap::new(hint, config.clone());
    if collect {
        tap = tap.collecting_output();
    }
    let bound = super::capacity_bound(config.max_event_size);
    for (i, chunk) in split.iter().enumerate() {
        tap.feed(chunk);
        assert!(
            tap.retained_capacity() <= bound,
            "tap holds {} bytes, limit {}",
            tap.retained_capacity(),
            config.max_event_size
        );
        if snapshots && i % 7 == 3 {
            let snap = tap.snapshot();
            assert!(!snap.is_empty(), "snapshot gives at least one report");
        }
    }
    let reports = tap.finish();
    let output = tap.take_output();
    (reports, output)
}

/// A lazily collecting tap over the same reads: the reports of the eager
/// one, its output where a response has no usage, none where all have; its
/// memory within the bound of the bytes it holds.
fn check_lazy(
    hint: ApiHint,
    config: &DecoderConfig,
    split: &[&[u8]],
    eager: &[Report],
    eager_out: Option<&Output>,
) {
    let mut tap = UsageTap::new(hint, config.clone()).collecting_output_lazily();
    let bound = super::capacity_bound(config.max_event_size) + MAX_HELD_BYTES + 4 * MAX_HELD_READS;
    for chunk in split {
        tap.feed(chunk);
        assert!(tap.retained_capacity() <= bound, "lazy tap holds too much");
    }
    let reports = tap.finish();
    assert_eq!(
        comparable(&reports),
        comparable(eager),
        "lazy: other reports"
    );
    if reports.iter().any(|r| r.usage.is_none()) {
        assert_eq!(tap.output(), eager_out, "lazy: other output");
    } else {
        assert!(
            tap.output().is_none(),
            "lazy: output kept though usage came"
        );
    }
}

fn check_report(report: &Report, hint: ApiHint) {
    if hint != ApiHint::Auto {
        assert_eq!(report.api.as_str(), hint.as_str(), "the hint is the API");
    }
    if let Some(u) = &report.usage {
        assert!(u.has_counts(), "a usage object without counts was kept");
        assert!(!u.raw.is_empty(), "usage without its raw object");
        let raw: Result<Value, _> = serde_json::from_str(&u.raw);
        if let Ok(raw) = raw {
            assert!(raw.is_object(), "usage.raw is not an object: {}", u.raw);
        }
    }
    assert!(report.delta_chunks <= report.events);
    assert!(report.invalid_json_events <= report.events);
    if report.oversized_events > 0 {
        assert!(report.warnings.iter().any(|w| w.contains("max_event_size")));
    }
}

fn check_tap(
    hint: ApiHint,
    config: &DecoderConfig,
    collect: bool,
    body: &[u8],
    split: &[&[u8]],
) -> Seen {
    let (whole, whole_out) = tap_run(hint, config, collect, &[body], false);
    let (cut, cut_out) = tap_run(hint, config, collect, split, true);
    assert!(!whole.is_empty(), "finish gives at least one report");
    assert_eq!(
        whole.iter().map(|r| r.bytes).sum::<u64>(),
        body.len() as u64,
        "bytes are all counted"
    );
    assert_eq!(
        cut.iter().map(|r| r.bytes).sum::<u64>(),
        body.len() as u64,
        "bytes are all counted (chunked)"
    );
    assert_eq!(
        comparable(&whole),
        comparable(&cut),
        "tap: chunking changed the reports"
    );
    assert_eq!(whole_out, cut_out, "tap: chunking changed the output");
    assert_eq!(collect, whole_out.is_some());
    if collect {
        check_lazy(hint, config, split, &cut, cut_out.as_ref());
    }
    for r in &whole {
        check_report(r, hint);
    }
    // Deterministic, and a reused tap starts afresh.
    let mut tap = UsageTap::new(hint, config.clone());
    tap.feed(b"data: {\"id\":\"x\",\"object\":\"chat.completion.chunk\",\"choices\":[]}\n\nevent: a\ndata: partial");
    let _ = tap.finish();
    tap.feed(body);
    assert_eq!(
        comparable(&tap.finish()),
        comparable(&whole),
        "reuse after finish"
    );
    Seen {
        events: whole.iter().map(|r| r.events).sum(),
        oversized: whole.iter().map(|r| r.oversized_events).sum(),
        ..Seen::default()
    }
}

/// The six normalised counts.
pub type Six = [Option<u64>; 6];

#[must_use]
pub fn six(u: &Usage) -> Six {
    [
        u.input_tokens,
        u.output_tokens,
        u.total_tokens,
        u.cached_input_tokens,
        u.cache_write_tokens,
        u.reasoning_tokens,
    ]
}

/// A JSON number as a token count: a non-negative integer, or a float with
/// no fractional part below 2^64 (as documented for `Usage`).
fn count_of(v: &Value) -> Option<u64> {
    let n = v.as_number()?;
    if let Some(u) = n.as_u64() {
        return Some(u);
    }
    let f = n.as_f64()?;
    let fits = f.is_finite() && f >= 0.0 && f.fract() == 0.0 && f < 18_446_744_073_709_551_616.0;
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    fits.then_some(f as u64)
}

fn at(v: &Value, path: &[&str]) -> Option<u64> {
    let mut cur = v;
    for key in path {
        cur = cur.as_object()?.get(*key)?;
    }
    count_of(cur)
}

/// normalize.rs: "When input + output + reasoning == total and input +
/// output != total, the reasoning tokens are added to the output".
fn with_reasoning(i: Option<u64>, o: Option<u64>, r: Option<u64>, t: Option<u64>) -> Option<u64> {
    if let (Some(i), Some(o), Some(r), Some(t)) = (i, o, r, t) {
        let io = i.checked_add(o);
        if r > 0 && io != Some(t) && io.and_then(|x| x.checked_add(r)) == Some(t) {
            return o.checked_add(r);
        }
    }
    o
}

fn finish_six(mut s: Six) -> Option<Six> {
    if s[2].is_none() {
        if let (Some(i), Some(o)) = (s[0], s[1]) {
            s[2] = i.checked_add(o);
        }
    }
    s.iter().any(Option::is_some).then_some(s)
}

/// OpenAI Chat / Completions usage, by the rules at the top of normalize.rs.
#[must_use]
pub fn reference_openai(u: &Value) -> Option<Six> {
    let input = at(u, &["prompt_tokens"]).or(at(u, &["input_tokens"]));
    let completion = at(u, &["completion_tokens"]).or(at(u, &["output_tokens"]));
    let total = at(u, &["total_tokens"]);
    let reasoning =
        at(u, &["completion_tokens_details", "reasoning_tokens"]).or(at(u, &["reasoning_tokens"]));
    finish_six([
        input,
        with_reasoning(input, completion, reasoning, total),
        total,
        at(u, &["prompt_tokens_details", "cached_tokens"]).or(at(u, &["prompt_cache_hit_tokens"])),
        at(u, &["prompt_tokens_details", "cache_write_tokens"]),
        reasoning,
    ])
}

/// Responses usage, by the rules at the top of normalize.rs.
#[must_use]
pub fn reference_responses(u: &Value) -> Option<Six> {
    let input = at(u, &["input_tokens"]);
    let total = at(u, &["total_tokens"]);
    let reasoning = at(u, &["output_tokens_details", "reasoning_tokens"]);
    finish_six([
        input,
        with_reasoning(input, at(u, &["output_tokens"]), reasoning, total),
        total,
        at(u, &["input_tokens_details", "cached_tokens"]),
        at(u, &["input_tokens_details", "cache_write_tokens"]),
        reasoning,
    ])
}

fn non_null(v: Option<&Value>) -> Option<&Value> {
    v.filter(|v| !v.is_null())
}

/// The usage object a Chat chunk carries: top-level `usage`, else
/// `x_groq.usage`, else the first non-null `choices[].usage`.
#[must_use]
pub fn chat_usage(chunk: &Value) -> Option<&Value> {
    let o = chunk.as_object()?;
    let groq = o
        .get("x_groq")
        .and_then(Value::as_object)
        .and_then(|x| non_null(x.get("usage")));
    let in_choice = o.get("choices").and_then(Value::as_array).and_then(|cs| {
        cs.iter()
            .find_map(|c| non_null(c.as_object()?.get("usage")))
    });
    non_null(o.get("usage")).or(groq).or(in_choice)
}

/// The usage object a Responses event carries: `response.usage` of the
/// terminal events only. `name` is the SSE event name (it wins over the
/// data's `type` when it is a Responses name).
#[must_use]
pub fn responses_usage<'v>(name: &str, event: &'v Value) -> Option<&'v Value> {
    let o = event.as_object()?;
    let named = name.starts_with("response.") || name == "error" || name == "keepalive";
    let ty = if named {
        name
    } else {
        o.get("type").and_then(Value::as_str).unwrap_or("")
    };
    let terminal = matches!(
        ty,
        "response.completed" | "response.incomplete" | "response.failed" | "response.cancelled"
    );
    if !terminal {
        return None;
    }
    non_null(o.get("response")?.as_object()?.get("usage"))
}

/// `data:` lines carrying `json` exactly (one per LF-separated segment).
fn data_lines(json: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for segment in json.split(|&b| b == b'\n') {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(segment);
        out.push(b'\n');
    }
    out.push(b'\n');
    out
}

const CHAT_PRIMER: &[u8] =
    b"data: {\"id\":\"primer\",\"object\":\"chat.completion.chunk\",\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\"}}]}\n\n";
const RESPONSES_PRIMER: &[u8] = b"event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"id\":\"primer\",\"model\":\"m\",\"usage\":null}}\n\n";

/// Usage: never panics, chunk-invariant reports for any bytes and any API
/// hint; in the JSON modes the usage read from one event equals the
/// reference computed with serde_json.
pub fn check_usage(data: &[u8]) -> Seen {
    let input = Input::parse(data);
    let ctrl = input.ctrl;
    let config = if ctrl & 0x80 != 0 {
        DecoderConfig {
            max_event_size: 256,
            ..DecoderConfig::default()
        }
    } else {
        DecoderConfig::default()
    };
    let collect = ctrl & 0x40 != 0;
    match ctrl & 3 {
        0 | 1 => {
            let hint = ApiHint::ALL[usize::from((ctrl >> 2) & 0x0F) % ApiHint::ALL.len()];
            let split = chunks(input.body, input.seed);
            check_tap(hint, &config, collect, input.body, &split)
        }
        mode => check_usage_json(input, mode == 3, collect),
    }
}

fn check_usage_json(input: Input<'_>, responses: bool, collect: bool) -> Seen {
    let body = input.body;
    let ctrl = input.ctrl;
    let mut stream = Vec::new();
    let primed = ctrl & 4 != 0;
    let named = ctrl & 8 != 0;
    let (hint, name) = match (responses, ctrl & 16 != 0) {
        (true, _) => (
            ApiHint::Responses,
            if named { "response.completed" } else { "" },
        ),
        (false, false) => (ApiHint::ChatCompletions, ""),
        (false, true) => (ApiHint::Completions, ""),
    };
    if primed {
        stream.extend_from_slice(if responses {
            RESPONSES_PRIMER
        } else {
            CHAT_PRIMER
        });
    }
    if !name.is_empty() {
        stream.extend_from_slice(format!("event: {name}\n").as_bytes());
    }
    stream.extend_from_slice(&data_lines(body));
    // Any bytes: the stream-mode properties hold.
    let split = chunks(&stream, input.seed);
    let mut seen = check_tap(hint, &DecoderConfig::default(), collect, &stream, &split);
    // Clean JSON without CR (CR would end a data line): compare with the reference.
    if body.contains(&b'\r') {
        return seen;
    }
    let Some(value) = clean_json(body) else {
        return seen;
    };
    let raw = if responses {
        responses_usage(name, &value)
    } else {
        chat_usage(&value)
    };
    let normalise = if responses {
        reference_responses
    } else {
        reference_openai
    };
    let expected = raw.and_then(|u| normalise(u).map(|s| (s, u)));
    let mut tap = UsageTap::new(hint, DecoderConfig::default());
    tap.feed(&stream);
    let reports = tap.finish();
    let (last, earlier) = reports.split_last().expect("at least one report");
    for r in earlier {
        assert_eq!(r.usage, None, "usage in a report before the fuzzed event's");
    }
    match (&last.usage, expected) {
        (None, None) => {}
        (Some(got), Some((want, want_raw))) => {
            assert_eq!(six(got), want, "usage counts vs reference");
            let got_raw: Value = serde_json::from_str(&got.raw).expect("usage.raw is JSON");
            assert_eq!(&got_raw, want_raw, "usage.raw vs the event's usage object");
        }
        (got, want) => panic!("usage {got:?}, reference {want:?}"),
    }
    assert_eq!(last.invalid_json_events, 0, "clean JSON counted as invalid");
    seen.usage_reference = true;
    seen.usage_found = last.usage.is_some();
    seen
}
