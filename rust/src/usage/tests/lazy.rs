//! Lazy output collection against eager collection: the same reports on
//! every stream, the same output wherever a response lacks usage and none
//! where every response gave it, whatever the chunking, past the bound of
//! held bytes, and across streams read by one tap.

use super::*;

fn chat(id: &str, text: &str, events: usize, usage: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..events {
        let finish = if i + 1 == events { r#""stop""# } else { "null" };
        out.extend_from_slice(
            format!(
                "data: {{\"id\":\"{id}\",\"object\":\"chat.completion.chunk\",\"model\":\"m\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{text}{i} \"}},\"finish_reason\":{finish}}}]}}\n\n"
            )
            .as_bytes(),
        );
    }
    if usage {
        out.extend_from_slice(
            format!(
                "data: {{\"id\":\"{id}\",\"object\":\"chat.completion.chunk\",\"model\":\"m\",\"choices\":[],\"usage\":{{\"prompt_tokens\":3,\"completion_tokens\":{events},\"total_tokens\":{}}}}}\n\n",
                events + 3
            )
            .as_bytes(),
        );
    }
    out.extend_from_slice(b"data: [DONE]\n\n");
    out
}

fn responses_cut() -> Vec<u8> {
    typed(&[
        (
            "response.created",
            r#"{"type":"response.created","response":{"id":"resp_1","status":"in_progress","model":"m"}}"#,
        ),
        (
            "response.output_text.delta",
            r#"{"type":"response.output_text.delta","item_id":"m1","output_index":0,"content_index":0,"delta":"Hel\"lo"}"#,
        ),
        (
            "response.output_text.delta",
            r#"{"type":"response.output_text.delta","item_id":"m1","output_index":0,"content_index":0,"delta":" world \u00e9"}"#,
        ),
    ])
}

fn tap(lazy: bool) -> UsageTap {
    let tap = UsageTap::new(ApiHint::Auto, DecoderConfig::default());
    if lazy {
        tap.collecting_output_lazily()
    } else {
        tap.collecting_output()
    }
}

/// Reports and outputs of `bytes` fed in pieces of sizes up to `max`
/// drawn from `seed` (the same pieces for the same seed: a read's bytes
/// count towards the response current when it begins).
fn read(tap: &mut UsageTap, bytes: &[u8], seed: u64, max: u64) -> (Vec<Report>, Vec<Output>) {
    let rng = &mut Rng(seed);
    let mut rest = bytes;
    while !rest.is_empty() {
        let n = ((rng.next() % max) as usize + 1).min(rest.len());
        tap.feed(&rest[..n]);
        rest = &rest[n..];
    }
    let reports = tap.finish();
    let outputs = tap.outputs().into_iter().cloned().collect();
    (reports, outputs)
}

fn streams() -> Vec<Vec<u8>> {
    let mut two = chat("a", "x", 5, true);
    two.extend(chat("b", "y", 4, false));
    let mut other_two = chat("a", "x", 5, false);
    other_two.extend(chat("b", "y", 4, true));
    vec![
        chat("c1", "hi", 20, true),
        chat("c1", "hi", 20, false),
        // Past the bound of held reads when read a byte at a time.
        chat("c1", "hi", 40, false),
        chat("c1", r#"q\"\\\u00e9"#, 9, false),
        chat("c1", "", 1, true),
        responses_cut(),
        two,
        other_two,
        b"data: {not json\n\n".to_vec(),
        Vec::new(),
        // Past the bound of held bytes: collected as it comes from there on.
        chat("long", &"z".repeat(400), MAX_HELD_BYTES / 400, true),
        chat("long", &"z".repeat(400), MAX_HELD_BYTES / 400, false),
    ]
}

#[test]
fn lazy_collection_reads_what_eager_collection_reads() {
    for (i, bytes) in streams().iter().enumerate() {
        for max in [1, 3, 64, 4096, 1 << 20] {
            if max == 1 && bytes.len() > 20_000 {
                continue; // one-byte reads of the long streams: covered by 3
            }
            let seed = 7 + i as u64;
            let (eager_reports, eager_outputs) = read(&mut tap(false), bytes, seed, max);
            let mut lazy = tap(true);
            let (reports, outputs) = read(&mut lazy, bytes, seed, max);
            assert_eq!(reports, eager_reports, "stream {i}, reads up to {max}");
            if reports.iter().all(|r| r.usage.is_some()) {
                assert!(lazy.output().is_none(), "stream {i}: output kept");
                assert!(outputs.is_empty(), "stream {i}: outputs kept");
            } else {
                assert_eq!(outputs, eager_outputs, "stream {i}, reads up to {max}");
                assert!(
                    !outputs[0].choices.is_empty() || bytes.len() < 100,
                    "stream {i}"
                );
            }
            assert!(lazy.retained_capacity() <= 2 * MAX_HELD_BYTES + (1 << 20));
        }
    }
}

#[test]
fn one_lazy_tap_reads_many_streams() {
    // Against a fresh eager tap each time: a reused one keeps the last
    // stream's output through an empty stream (no bytes began a new one).
    let mut lazy = tap(true);
    // A spilled stream, then held ones: each stream starts held again.
    for (i, bytes) in streams().iter().rev().chain(streams().iter()).enumerate() {
        let seed = 11 + i as u64;
        let (reports, outputs) = read(&mut lazy, bytes, seed, 977);
        let (eager_reports, eager_outputs) = read(&mut tap(false), bytes, seed, 977);
        assert_eq!(reports, eager_reports);
        if reports.iter().any(|r| r.usage.is_none()) {
            assert_eq!(outputs, eager_outputs);
        } else {
            assert!(outputs.is_empty());
        }
    }
}

#[test]
fn output_is_none_until_the_end() {
    let mut lazy = tap(true);
    lazy.feed(&chat("c1", "hi", 3, false));
    assert!(lazy.output().is_none());
    lazy.finish();
    let text = &lazy.output().expect("usage missing: collected").choices[&0].text;
    assert_eq!(text, "hi0 hi1 hi2 ");
}

#[test]
fn a_timeline_tap_collects_as_it_comes() {
    for tap in [
        UsageTap::new(ApiHint::Auto, DecoderConfig::default())
            .collecting_output_lazily()
            .with_timeline(),
        UsageTap::new(ApiHint::Auto, DecoderConfig::default())
            .with_timeline()
            .collecting_output_lazily(),
    ] {
        let mut tap = tap;
        tap.feed(&chat("c1", "hi", 2, true));
        assert_eq!(
            tap.output().expect("collected").choices[&0].text,
            "hi0 hi1 "
        );
    }
}
