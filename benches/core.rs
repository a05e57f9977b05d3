//! Throughput of the Rust core alone (no Python): SSE framing and UsageTap
//! over large synthetic streams shaped like the real wire formats (see
//! `tests/data/corpus`). Run with `cargo bench --bench core`.
//!
//! The streams are generated deterministically (a fixed-seed generator picks
//! the delta texts and the read sizes), so every run measures the same bytes.
//! Before timing, each benchmark checks once that the stream parses as
//! expected (event count, usage, status), so a broken parse fails instead of
//! being measured as fast.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, Criterion, SamplingMode, Throughput};
use ssetally::{Api, ApiHint, Decoder, DecoderConfig, Report, Status, UsageTap};

/// Roughly how many bytes each generated stream has.
const TARGET_BYTES: usize = 4 << 20;

/// Fixed-seed xorshift generator: the streams and read sizes never change.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[rustfmt::skip]
const WORDS: &[&str] = &[
    " the", " stream", " token", " usage", " Hello", "!", " I", "'m", " doing", " well", ",",
    " thank", " you", " for", " asking", ".", " How", " are", " model", " response", " server",
    "-sent", " events", " are", " framed", " by", " blank", " lines", "\\n\\n", " **", "bold",
    "**", " `code`", " é", " 日本", " —", " 42", " and", " then", " some",
];

/// A short delta text, already JSON-escaped (none of the words needs more).
fn word(rng: &mut Rng) -> &'static str {
    WORDS[rng.below(WORDS.len())]
}

/// `s` as a JSON string literal, quotes included.
fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

/// One SSE event: `event: <ty>` (if any) and one `data:` line.
fn event(out: &mut String, ty: Option<&str>, data: &str) {
    if let Some(ty) = ty {
        out.push_str("event: ");
        out.push_str(ty);
        out.push('\n');
    }
    out.push_str("data: ");
    out.push_str(data);
    out.push_str("\n\n");
}

/// A generated stream and what the tap must find in it.
struct Stream {
    bytes: Vec<u8>,
    api: Api,
    /// Events carrying output (text or argument deltas).
    deltas: u64,
    /// input, output, total.
    usage: [u64; 3],
}

/// Chat Completions: a role chunk, content chunks, the finish chunk, the
/// usage chunk (`stream_options.include_usage`) and `[DONE]`; with or
/// without the `obfuscation` padding.
fn chat_stream(obfuscated: bool) -> Stream {
    let mut rng = Rng(0x5EED_C4A7);
    let head = r#"{"id":"chatcmpl-D8Z5oo6uDh67AD85p73ksdT1KxhE0","object":"chat.completion.chunk","created":1770933892,"model":"gpt-4.1-nano-2025-04-14","service_tier":"default","system_fingerprint":"fp_de604bd877","choices":[{"index":0,"delta":{"#;
    let mut out = String::with_capacity(TARGET_BYTES + 4096);
    event(
        &mut out,
        None,
        &format!(
            r#"{head}"role":"assistant","content":"","refusal":null}},"logprobs":null,"finish_reason":null}}],"usage":null,"obfuscation":"Qup1BsQ3"}}"#
        ),
    );
    let mut deltas = 0;
    while out.len() < TARGET_BYTES {
        let text = word(&mut rng);
        let padding = &"abcdefghijklmnopqrst"[..4 + rng.below(12)];
        let obfuscation = if obfuscated {
            format!(r#","obfuscation":"{padding}""#)
        } else {
            String::new()
        };
        event(
            &mut out,
            None,
            &format!(
                r#"{head}"content":"{text}"}},"logprobs":null,"finish_reason":null}}],"usage":null{obfuscation}}}"#
            ),
        );
        deltas += 1;
    }
    event(
        &mut out,
        None,
        &format!(
            r#"{head}}},"logprobs":null,"finish_reason":"stop"}}],"usage":null,"obfuscation":"zap0"}}"#
        ),
    );
    let usage = [16, deltas, 16 + deltas];
    event(
        &mut out,
        None,
        &format!(
            r#"{{"id":"chatcmpl-D8Z5oo6uDh67AD85p73ksdT1KxhE0","object":"chat.completion.chunk","created":1770933892,"model":"gpt-4.1-nano-2025-04-14","service_tier":"default","system_fingerprint":"fp_de604bd877","choices":[],"usage":{{"prompt_tokens":{},"completion_tokens":{},"total_tokens":{},"prompt_tokens_details":{{"cached_tokens":0,"audio_tokens":0}},"completion_tokens_details":{{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}}}},"obfuscation":"h9RiQLL"}}"#,
            usage[0], usage[1], usage[2]
        ),
    );
    event(&mut out, None, "[DONE]");
    Stream {
        bytes: out.into_bytes(),
        api: Api::ChatCompletions,
        deltas,
        usage,
    }
}

const RESP_ID: &str = "resp_0a63f40a2632b74300699f8818e5648196a8fa657ae8091421";
const RESP_HEAD: &str =
    r#""object":"response","created_at":1772062745,"model":"gpt-5.3-codex","service_tier":"auto""#;

/// Responses: `response.created` / `in_progress`, then one output item
/// (text deltas, or function call argument deltas), its done events, and
/// `response.completed` carrying the whole output and the usage.
fn responses_stream(tools: bool) -> Stream {
    let mut rng = Rng(if tools { 0x7001_CA11 } else { 0x7E47_0001 });
    let mut out = String::with_capacity(TARGET_BYTES + (1 << 20));
    let mut seq = 0u64;
    let mut emit = |out: &mut String, ty: &str, body: &str| {
        let data = format!(r#"{{"type":"{ty}",{body},"sequence_number":{seq}}}"#);
        seq += 1;
        event(out, Some(ty), &data);
    };
    for (ty, status) in [
        ("response.created", "in_progress"),
        ("response.in_progress", "in_progress"),
    ] {
        emit(
            &mut out,
            ty,
            &format!(
                r#""response":{{"id":"{RESP_ID}",{RESP_HEAD},"status":"{status}","output":[],"usage":null}}"#
            ),
        );
    }
    let item_id;
    let item;
    let mut deltas = 0;
    if tools {
        item_id = "fc_01830d662ab3856501693c32151234819091cfca267e98cc5f";
        emit(
            &mut out,
            "response.output_item.added",
            &format!(
                r#""output_index":0,"item":{{"id":"{item_id}","type":"function_call","status":"in_progress","arguments":"","call_id":"call_hKtg6o5cWUSdCa","name":"write_file"}}"#
            ),
        );
        // The arguments are a JSON object, streamed as fragments of a few
        // characters (`{"`, `path`, `":"`, ...) as models send them; each
        // fragment is a JSON string in its delta event.
        let mut args = String::new();
        let mut line = 0;
        let mut fragments = [
            "{\"", "path", "\":\"", "src", "/gener", "ated.rs", "\",\"", "content", "\":\"",
        ]
        .map(String::from)
        .to_vec();
        // Leave room for the done events, which repeat the whole arguments.
        while out.len() + args.len() * 5 < TARGET_BYTES {
            fragments.push(match rng.below(8) {
                0 => {
                    line += 1;
                    format!("\\n    let x{line} = ")
                }
                1 => "\\\"q\\\"".to_owned(),
                _ => word(&mut rng).to_owned(),
            });
            for fragment in fragments.drain(..) {
                args.push_str(&fragment);
                let obfuscation = &"HKZ10wAgZXjkicLqrst"[..4 + rng.below(12)];
                emit(
                    &mut out,
                    "response.function_call_arguments.delta",
                    &format!(
                        r#""item_id":"{item_id}","output_index":0,"delta":{},"obfuscation":"{obfuscation}""#,
                        json_str(&fragment)
                    ),
                );
                deltas += 1;
            }
        }
        args.push_str("\"}");
        emit(
            &mut out,
            "response.function_call_arguments.delta",
            &format!(
                r#""item_id":"{item_id}","output_index":0,"delta":{},"obfuscation":"zap0""#,
                json_str("\"}")
            ),
        );
        deltas += 1;
        assert!(serde_json::from_str::<serde_json::Value>(&args).is_ok());
        emit(
            &mut out,
            "response.function_call_arguments.done",
            &format!(
                r#""item_id":"{item_id}","output_index":0,"arguments":{}"#,
                json_str(&args)
            ),
        );
        item = format!(
            r#"{{"id":"{item_id}","type":"function_call","status":"completed","arguments":{},"call_id":"call_hKtg6o5cWUSdCa","name":"write_file"}}"#,
            json_str(&args)
        );
    } else {
        item_id = "msg_0a63f40a2632b74300699f8819a5e08196ac270722d369af5a";
        emit(
            &mut out,
            "response.output_item.added",
            &format!(
                r#""output_index":0,"item":{{"id":"{item_id}","type":"message","status":"in_progress","content":[],"phase":"final_answer","role":"assistant"}}"#
            ),
        );
        emit(
            &mut out,
            "response.content_part.added",
            &format!(
                r#""content_index":0,"item_id":"{item_id}","output_index":0,"part":{{"type":"output_text","annotations":[],"logprobs":[],"text":""}}"#
            ),
        );
        let mut text = String::new();
        // Leave room for the done events, which repeat the whole text.
        while out.len() + text.len() * 4 < TARGET_BYTES {
            let piece = word(&mut rng);
            text.push_str(piece);
            let obfuscation = &"abcdefghijklmnopqrstu"[..4 + rng.below(12)];
            emit(
                &mut out,
                "response.output_text.delta",
                &format!(
                    r#""content_index":0,"delta":"{piece}","item_id":"{item_id}","logprobs":[],"output_index":0,"obfuscation":"{obfuscation}""#
                ),
            );
            deltas += 1;
        }
        let part =
            format!(r#"{{"type":"output_text","annotations":[],"logprobs":[],"text":"{text}"}}"#);
        emit(
            &mut out,
            "response.output_text.done",
            &format!(
                r#""content_index":0,"item_id":"{item_id}","logprobs":[],"output_index":0,"text":"{text}""#
            ),
        );
        emit(
            &mut out,
            "response.content_part.done",
            &format!(r#""content_index":0,"item_id":"{item_id}","output_index":0,"part":{part}"#),
        );
        item = format!(
            r#"{{"id":"{item_id}","type":"message","status":"completed","content":[{part}],"phase":"final_answer","role":"assistant"}}"#
        );
    }
    emit(
        &mut out,
        "response.output_item.done",
        &format!(r#""output_index":0,"item":{item}"#),
    );
    let usage = [7112, deltas, 7112 + deltas];
    emit(
        &mut out,
        "response.completed",
        &format!(
            r#""response":{{"id":"{RESP_ID}",{RESP_HEAD},"status":"completed","output":[{item}],"usage":{{"input_tokens":{},"input_tokens_details":{{"cached_tokens":3072}},"output_tokens":{},"output_tokens_details":{{"reasoning_tokens":64}},"total_tokens":{}}}}}"#,
            usage[0], usage[1], usage[2]
        ),
    );
    Stream {
        bytes: out.into_bytes(),
        api: Api::Responses,
        deltas,
        usage,
    }
}

/// Anthropic Messages: `message_start` (input usage), a text block of
/// `text_delta`s, a `tool_use` block of `input_json_delta`s, then
/// `message_delta` (cumulative usage) and `message_stop`.
fn anthropic_stream() -> Stream {
    let mut rng = Rng(0xA174_0C1C);
    let mut out = String::with_capacity(TARGET_BYTES + 4096);
    let emit = |out: &mut String, ty: &str, body: &str| {
        let data = if body.is_empty() {
            format!(r#"{{"type":"{ty}"}}"#)
        } else {
            format!(r#"{{"type":"{ty}",{body}}}"#)
        };
        event(out, Some(ty), &data);
    };
    emit(
        &mut out,
        "message_start",
        r#""message":{"model":"claude-sonnet-4-5-20250929","id":"msg_01QC4g3HwBThD4BaNtBckFDJ","type":"message","role":"assistant","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":12,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"cache_creation":{"ephemeral_5m_input_tokens":0,"ephemeral_1h_input_tokens":0},"output_tokens":1,"service_tier":"standard","inference_geo":"not_available"}}"#,
    );
    emit(
        &mut out,
        "content_block_start",
        r#""index":0,"content_block":{"type":"text","text":""}"#,
    );
    emit(&mut out, "ping", "");
    let mut deltas = 0;
    while out.len() < TARGET_BYTES * 4 / 5 {
        let text = word(&mut rng);
        emit(
            &mut out,
            "content_block_delta",
            &format!(r#""index":0,"delta":{{"type":"text_delta","text":"{text}"}}"#),
        );
        deltas += 1;
    }
    emit(&mut out, "content_block_stop", r#""index":0"#);
    emit(
        &mut out,
        "content_block_start",
        r#""index":1,"content_block":{"type":"tool_use","id":"toolu_01T1x1fJ34qAmk2tNTrN7Up6","name":"get_weather","input":{}}"#,
    );
    let mut n = 0;
    while out.len() < TARGET_BYTES {
        n += 1;
        let partial = if n == 1 {
            json_str(r#"{"cities": ["#)
        } else {
            json_str(&format!(r#""city {}{}", "#, n, word(&mut rng).trim()))
        };
        emit(
            &mut out,
            "content_block_delta",
            &format!(r#""index":1,"delta":{{"type":"input_json_delta","partial_json":{partial}}}"#),
        );
        deltas += 1;
    }
    emit(
        &mut out,
        "content_block_delta",
        &format!(
            r#""index":1,"delta":{{"type":"input_json_delta","partial_json":{}}}"#,
            json_str(r#""end"]}"#)
        ),
    );
    deltas += 1;
    emit(&mut out, "content_block_stop", r#""index":1"#);
    let usage = [12, deltas, 12 + deltas];
    emit(
        &mut out,
        "message_delta",
        &format!(
            r#""delta":{{"stop_reason":"tool_use","stop_sequence":null}},"usage":{{"input_tokens":12,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":{}}}"#,
            usage[1]
        ),
    );
    emit(&mut out, "message_stop", "");
    Stream {
        bytes: out.into_bytes(),
        api: Api::AnthropicMessages,
        deltas,
        usage,
    }
}

/// Gemini `streamGenerateContent?alt=sse`: text chunks of a few words,
/// each with the running `usageMetadata`, the last one with
/// `finishReason`; no end marker.
fn gemini_stream() -> Stream {
    let mut rng = Rng(0x6E41_1A1C);
    let mut out = String::with_capacity(TARGET_BYTES + 4096);
    let prompt = 9;
    let mut candidates = 0u64;
    let mut deltas = 0;
    let chunk = |out: &mut String, text: &str, finish: &str, candidates: u64| {
        event(
            out,
            None,
            &format!(
                r#"{{"candidates":[{{"content":{{"parts":[{{"text":"{text}"}}],"role":"model"}}{finish},"index":0}}],"usageMetadata":{{"promptTokenCount":{prompt},"candidatesTokenCount":{candidates},"totalTokenCount":{},"promptTokensDetails":[{{"modality":"TEXT","tokenCount":{prompt}}}]}},"modelVersion":"gemini-2.5-flash","responseId":"M3iLaY-AI7zTxN8P3Piw4Qg"}}"#,
                prompt + candidates
            ),
        );
    };
    while out.len() < TARGET_BYTES {
        let n = 1 + rng.below(4);
        let text: String = (0..n).map(|_| word(&mut rng)).collect();
        candidates += n as u64;
        chunk(&mut out, &text, "", candidates);
        deltas += 1;
    }
    candidates += 1;
    chunk(&mut out, ".", r#","finishReason":"STOP""#, candidates);
    deltas += 1;
    Stream {
        bytes: out.into_bytes(),
        api: Api::Gemini,
        deltas,
        usage: [prompt, candidates, prompt + candidates],
    }
}

/// `bytes` cut into reads of 1 to 4 KiB (a socket's worth), fixed seed.
fn reads(bytes: &[u8]) -> Vec<&[u8]> {
    let mut rng = Rng(0x0BAD_5EED);
    let mut out = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let n = (1024 + rng.below(3 * 1024 + 1)).min(rest.len());
        let (head, tail) = rest.split_at(n);
        out.push(head);
        rest = tail;
    }
    out
}

/// Events the decoder dispatches for `chunks`.
fn decode(chunks: &[&[u8]]) -> u64 {
    let mut decoder = Decoder::new(DecoderConfig::default());
    let mut events = 0u64;
    let mut data_bytes = 0usize;
    for chunk in chunks {
        decoder.feed(chunk, |ev| {
            events += 1;
            data_bytes += ev.data.len();
        });
    }
    black_box(data_bytes);
    assert!(!decoder.finish().dropped_partial);
    events
}

// Not inlined: `SSETALLY_CORE_ONCE` (below) counts instructions inside it.
#[inline(never)]
fn tap(chunks: &[&[u8]]) -> Vec<Report> {
    let mut tap = UsageTap::new(ApiHint::Auto, DecoderConfig::default());
    for chunk in chunks {
        tap.feed(chunk);
    }
    tap.finish()
}

/// The one check before timing: the tap read the whole stream right.
fn check(name: &str, stream: &Stream, reports: &[Report]) {
    assert_eq!(reports.len(), 1, "{name}: one response");
    let r = &reports[0];
    assert_eq!(r.api, stream.api, "{name}: api");
    assert_eq!(r.status, Status::Completed, "{name}: status");
    // Gemini has no end marker: its finish reason ends the stream.
    assert!(
        r.done || stream.api == Api::Gemini,
        "{name}: end marker seen"
    );
    assert_eq!(r.delta_chunks, stream.deltas, "{name}: delta events");
    assert_eq!(r.bytes, stream.bytes.len() as u64, "{name}: bytes");
    assert_eq!(
        (r.invalid_json_events, r.oversized_events),
        (0, 0),
        "{name}: clean parse"
    );
    assert!(r.warnings.is_empty(), "{name}: {:?}", r.warnings);
    let usage = r.usage.as_ref().expect("usage found");
    assert_eq!(
        [usage.input_tokens, usage.output_tokens, usage.total_tokens],
        stream.usage.map(Some),
        "{name}: usage"
    );
}

/// Every tap corpus, by benchmark name.
fn tap_streams() -> Vec<(&'static str, Stream)> {
    vec![
        ("chat", chat_stream(true)),
        ("chat_noobf", chat_stream(false)),
        ("responses_text", responses_stream(false)),
        ("responses_tool_args", responses_stream(true)),
        ("anthropic", anthropic_stream()),
        ("gemini", gemini_stream()),
    ]
}

fn sse_framing(c: &mut Criterion) {
    let stream = chat_stream(true);
    let bytes = &stream.bytes[..];
    let chunks = reads(bytes);
    // Role chunk, content chunks, finish chunk, usage chunk, [DONE].
    let events = stream.deltas + 4;
    assert_eq!(decode(&chunks), events, "sse: events in reads");
    assert_eq!(decode(&[bytes]), events, "sse: events in one feed");

    let mut group = c.benchmark_group("sse");
    group.sampling_mode(SamplingMode::Flat);
    group.throughput(Throughput::Bytes(bytes.len() as u64));
    group.bench_function("chat/reads_1-4KiB", |b| {
        b.iter(|| decode(black_box(&chunks)))
    });
    group.bench_function("chat/one_feed", |b| b.iter(|| decode(black_box(&[bytes]))));
    group.finish();
}

fn usage_tap(c: &mut Criterion) {
    let streams = tap_streams();
    let mut group = c.benchmark_group("usage_tap");
    // Flat sampling: a stream on a slow path (several ms each) would not fit
    // linear sampling's growing iteration counts in the measurement time.
    group.sampling_mode(SamplingMode::Flat);
    for (name, stream) in &streams {
        let chunks = reads(&stream.bytes);
        check(name, stream, &tap(&chunks));
        group.throughput(Throughput::Bytes(stream.bytes.len() as u64));
        group.bench_function(format!("{name}/reads_1-4KiB"), |b| {
            b.iter(|| tap(black_box(&chunks)))
        });
    }
    group.finish();
}

/// `SSETALLY_CORE_ONCE=<name>[,<name>...]` feeds each named corpus (or
/// `all`) through the tap ten times and exits, without criterion: for an
/// instruction count that load on the machine does not change, e.g.
/// `valgrind --tool=callgrind --toggle-collect='*core::tap' <bench binary>`
/// (the count covers the ten runs of `tap` only, not the generators).
fn once(names: &str) {
    for (name, stream) in tap_streams() {
        if names != "all" && !names.split(',').any(|n| n == name) {
            continue;
        }
        let chunks = reads(&stream.bytes);
        check(name, &stream, &tap(&chunks));
        for _ in 0..9 {
            black_box(tap(black_box(&chunks)));
        }
        println!("{name}: {} bytes x 10", stream.bytes.len());
    }
}

/// The streams of a file of recorded reads (see [`recorded`]), each as its
/// reads.
fn parse_reads(bytes: &[u8]) -> Vec<Vec<&[u8]>> {
    fn take<'a>(bytes: &'a [u8], at: &mut usize, n: usize) -> &'a [u8] {
        *at += n;
        &bytes[*at - n..*at]
    }
    let u32_at = |at: &mut usize| u32::from_le_bytes(take(bytes, at, 4).try_into().unwrap());
    let mut at = 0;
    let mut streams = Vec::new();
    while at < bytes.len() {
        let n = u32_at(&mut at);
        let reads = (0..n)
            .map(|_| {
                let len = u32_at(&mut at) as usize;
                take(bytes, &mut at, len)
            })
            .collect();
        streams.push(reads);
    }
    streams
}

/// `SSETALLY_CORE_READS=<file>[,<file>...]` feeds recorded reads through the
/// tap once, each stream with a fresh tap, and exits: the Python benchmark's
/// workloads (`benches/corpus.py`, cut into its reads) measured in the core
/// alone. A file holds streams one after another, each a little-endian
/// `u32` count of reads, then each read as a `u32` length and its bytes.
/// Count instructions with the same `--toggle-collect` as above.
fn recorded(files: &str) {
    for file in files.split(',') {
        let bytes = std::fs::read(file).unwrap_or_else(|e| panic!("{file}: {e}"));
        let streams = parse_reads(&bytes);
        let mut bad = 0;
        for reads in &streams {
            let reports = tap(reads);
            let ok = reports.len() == 1
                && reports[0].status == Status::Completed
                && reports[0].usage.is_some()
                && reports[0].warnings.is_empty();
            bad += usize::from(!ok);
        }
        let total: usize = streams.iter().flatten().map(|r| r.len()).sum();
        println!("{file}: {} streams, {total} bytes", streams.len());
        assert_eq!(bad, 0, "{file}: streams not read right");
    }
}

criterion_group! {
    name = benches;
    // Streams of ~4 MiB take about 1 ms each: 20 samples over 3 s keep the
    // whole run near 30 s and the noise low enough to see regressions.
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = sse_framing, usage_tap
}
fn main() {
    if let Ok(files) = std::env::var("SSETALLY_CORE_READS") {
        recorded(&files);
        return;
    }
    if let Ok(names) = std::env::var("SSETALLY_CORE_ONCE") {
        once(&names);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
