//! CI-sized mini-fuzz: the properties of the cargo-fuzz targets
//! (`rust/fuzz/src/props.rs`, included here by path) over the checked-in
//! seeds (`rust/fuzz/corpus/<target>/seed-*`) and deterministic mutations of
//! them, a few seconds in all. `cargo fuzz` explores far more (see
//! `rust/fuzz/README.md`); this keeps every CI run on the same properties.
//!
//! A failure prints the input, escaped, in the fuzz input format
//! (`[ctrl, s0..s3] + body`): save it as `rust/fuzz/corpus/<target>/seed-<name>`
//! and replay it with `cargo fuzz run --fuzz-dir rust/fuzz <target> <file>`.

#[path = "../rust/fuzz/src/props.rs"]
mod props;

use std::panic::{catch_unwind, resume_unwind};
use std::path::PathBuf;

use props::{encode, show, Rng, Seen, HEADER};

/// Mutated inputs per target (on top of every seed as it is); the
/// `SSETALLY_FUZZ_MUTANTS` environment variable asks for more (a longer
/// local run where `cargo fuzz` is not available).
const MUTANTS: usize = 1500;

fn mutants() -> usize {
    std::env::var("SSETALLY_FUZZ_MUTANTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(MUTANTS)
}

/// Bytes that matter to the parsers, spliced in by the mutator.
const TOKENS: &[&[u8]] = &[
    b"data: ",
    b"data:",
    b"event: ",
    b"id: 7",
    b"retry: 10",
    b": keep-alive",
    b"\n",
    b"\r\n",
    b"\r",
    b"\n\n",
    b"\xEF\xBB\xBF",
    b"{",
    b"}",
    b"[",
    b"]",
    b"\"",
    b"\\",
    b",",
    b":",
    b"null",
    b"[DONE]",
    b"\"usage\":",
    b",\"usage\":null",
    b"\"usage\": null, ",
    b"\"choices\":[{}]",
    b"\"choices\":[]",
    b"\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2}",
    b"\"type\":\"response.completed\"",
    b"\"finish_reason\":\"stop\"",
    b"\"delta\":{\"content\":\"x\"}",
    b"1e3",
    b"-1",
    b"18446744073709551616",
    b"\xE2\x82",
    b"\xFF",
    b"\0",
];

fn seeds(target: &str) -> Vec<Vec<u8>> {
    let dir: PathBuf = [env!("CARGO_MANIFEST_DIR"), "rust", "fuzz", "corpus", target]
        .iter()
        .collect();
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("readable corpus entry").path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("seed-"))
        })
        .collect();
    paths.sort();
    assert!(
        paths.len() >= 10,
        "{target}: too few seeds in {}",
        dir.display()
    );
    paths
        .iter()
        .map(|p| std::fs::read(p).expect("readable seed"))
        .collect()
}

/// One mutation of `input`, spliced with `other` when needed.
fn mutate(rng: &mut Rng, input: &[u8], other: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        let len = out.len();
        let at = rng.below(len + 1);
        match rng.below(8) {
            0 if len > 0 => {
                let i = rng.below(len);
                out[i] = rng.next_u64() as u8;
            }
            1 => {
                let token = TOKENS[rng.below(TOKENS.len())];
                out.splice(at..at, token.iter().copied());
            }
            2 if at < len => {
                let end = (at + 1 + rng.below(16)).min(len);
                out.drain(at..end);
            }
            3 if at < len => {
                let end = (at + 1 + rng.below(64)).min(len);
                let copy = out[at..end].to_vec();
                out.splice(at..at, copy);
            }
            4 if !other.is_empty() => {
                let from = rng.below(other.len());
                out.truncate(at);
                out.extend_from_slice(&other[from..]);
            }
            5 => out.truncate(at.max(HEADER.min(len))),
            6 if len > 0 => out[0] = rng.next_u64() as u8,
            _ if len >= HEADER => {
                let seed = rng.next_u64() as u32;
                out.splice(1..HEADER, seed.to_le_bytes());
            }
            _ => out = encode(rng.next_u64() as u8, 0, &out),
        }
    }
    out
}

/// Runs `check` on every seed, then on [`mutants`] mutants; returns what the
/// checks saw.
fn mini_fuzz(target: &str, seed: u64, check: fn(&[u8]) -> Seen) -> Seen {
    let corpus = seeds(target);
    let mut seen = Seen::default();
    let mut run = |input: &[u8]| match catch_unwind(|| check(input)) {
        Ok(s) => seen.add(s),
        Err(panic) => {
            eprintln!("{target}: failing input: b\"{}\"", show(input));
            resume_unwind(panic);
        }
    };
    for input in &corpus {
        run(input);
    }
    let mut rng = Rng::new(seed);
    for _ in 0..mutants() {
        let a = &corpus[rng.below(corpus.len())];
        let b = &corpus[rng.below(corpus.len())];
        run(&mutate(&mut rng, a, b));
    }
    seen
}

#[test]
fn framing_properties() {
    let seen = mini_fuzz("framing", 1, props::check_framing);
    // The inputs reach every comparison, so the test can fail.
    assert!(seen.decoder_reference, "{seen:?}");
    assert!(seen.events > 500 && seen.oversized > 0, "{seen:?}");
}

#[test]
fn strip_properties() {
    let seen = mini_fuzz("strip", 4, props::check_strip);
    assert!(seen.strip_reference, "{seen:?}");
    assert!(
        seen.stripped > 0 && seen.nulls_removed > 100 && seen.strip_oversized > 0,
        "{seen:?}"
    );
}

#[test]
fn usage_properties() {
    let seen = mini_fuzz("usage", 2, props::check_usage);
    assert!(seen.usage_reference && seen.usage_found, "{seen:?}");
    assert!(seen.events > 500 && seen.oversized > 0, "{seen:?}");
}

#[test]
fn reassemble_properties() {
    let seen = mini_fuzz("reassemble", 3, props::check_reassemble);
    assert!(seen.events > 0, "{seen:?}");
}

/// The chunker itself: every style joins back to the body and some produce
/// empty chunks (they found a bug in the stripper).
#[test]
fn chunkings_cover_the_styles() {
    let body = b"data: a\r\n\r\ndata: b\n\n";
    let mut empty = false;
    for seed in 0..50 {
        let chunks = props::chunks(body, seed);
        assert_eq!(chunks.concat(), body);
        empty |= chunks.iter().any(|c| c.is_empty());
    }
    assert!(empty);
}
