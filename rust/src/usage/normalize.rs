//! Maps each provider's usage object onto the six normalised counts of
//! [`Usage`]. The rules, per API:
//!
//! * OpenAI Chat / legacy Completions / Assistants (and OpenAI-compatible
//!   servers): input = `prompt_tokens`, output = `completion_tokens`,
//!   total = `total_tokens`, cached = `prompt_tokens_details.cached_tokens`
//!   (DeepSeek: `prompt_cache_hit_tokens`), cache write =
//!   `prompt_tokens_details.cache_write_tokens`, reasoning =
//!   `completion_tokens_details.reasoning_tokens` (Azure DeepSeek: top-level
//!   `reasoning_tokens`). Servers that use Responses names
//!   (`input_tokens`/`output_tokens`) are read as a fallback.
//! * Responses: `input_tokens`, `output_tokens`, `total_tokens`,
//!   `input_tokens_details.{cached_tokens, cache_write_tokens}`,
//!   `output_tokens_details.reasoning_tokens`.
//! * Reasoning outside the output (xAI): OpenAI counts reasoning inside the
//!   completion tokens, xAI chat does not (`completion_tokens` 1,
//!   `reasoning_tokens` 290, `total_tokens` 303 = 12 + 1 + 290). When
//!   input + output + reasoning == total and input + output != total, the
//!   reasoning tokens are added to the output so that `output_tokens`
//!   always includes reasoning. When the provider's numbers already add up
//!   the rule never fires.
//! * Anthropic: input = `input_tokens` + `cache_creation_input_tokens` +
//!   `cache_read_input_tokens`; output = `output_tokens`; cached =
//!   `cache_read_input_tokens`; cache write = `cache_creation_input_tokens`;
//!   reasoning = `output_tokens_details.thinking_tokens`; total = input +
//!   output (Anthropic sends none).
//! * Gemini: input = `promptTokenCount` + `toolUsePromptTokenCount`; output
//!   = `candidatesTokenCount` + `thoughtsTokenCount` (so it includes
//!   reasoning, as OpenAI's does); total = `totalTokenCount`; cached =
//!   `cachedContentTokenCount`; reasoning = `thoughtsTokenCount`.
//! * Gemini Interactions, by the same rule: input = `total_input_tokens` +
//!   `total_tool_use_tokens`; output = `total_output_tokens` +
//!   `total_thought_tokens`; total = `total_tokens`; cached =
//!   `total_cached_tokens`; reasoning = `total_thought_tokens`. In the
//!   recorded stream 7 + (26 + 115) = 148 = `total_tokens`, which confirms
//!   that `total_output_tokens` excludes the thought tokens.
//! * Cohere v2: input/output = `billed_units.{input_tokens,output_tokens}`
//!   (what is charged; `tokens.*` when `billed_units` is absent); total =
//!   their sum. `cached_tokens` counts against the raw `tokens.input_tokens`
//!   (448 of 507 while 12 are billed), so it is not comparable with the
//!   billed input and is left to `raw`; reasoning is not reported.
//!
//! In every API a missing total is input + output when both are known.

use super::json::counts_and_rejects;
use super::types::{Api, Usage};

/// Normalises the usage object `raw` of a stream of `api`. `Usage::raw` is
/// left empty for the caller to fill.
#[cfg(test)]
pub(crate) fn normalize(api: Api, raw: &[u8]) -> Usage {
    normalize_checked(api, raw, &mut Vec::new())
}

/// [`normalize`], with a warning in `warnings` for each count field whose
/// value is not a token count (negative, fractional, too large for 64 bits,
/// a string, a boolean, an object): such a value is left out of the counts,
/// never guessed at, but never dropped silently either.
pub(crate) fn normalize_checked(api: Api, raw: &[u8], warnings: &mut Vec<String>) -> Usage {
    let w = warnings;
    let mut usage = match api {
        Api::Responses => responses(raw, w),
        Api::AnthropicMessages => anthropic(raw, w),
        Api::Gemini => gemini(raw, w),
        Api::GeminiInteractions => interactions(raw, w),
        Api::Cohere => cohere(raw, w),
        Api::ChatCompletions | Api::Completions | Api::Assistants | Api::Unknown => openai(raw, w),
    };
    if usage.total_tokens.is_none() {
        if let (Some(i), Some(o)) = (usage.input_tokens, usage.output_tokens) {
            usage.total_tokens = i.checked_add(o);
        }
    }
    usage
}

/// Longest rendering of a rejected value in a warning, in characters.
const MAX_VALUE_CHARS: usize = 40;

/// The counts at `paths`, with a warning for each value that is not one.
fn read<const N: usize>(
    raw: &[u8],
    paths: [&[&[u8]]; N],
    warnings: &mut Vec<String>,
) -> [Option<u64>; N] {
    let (found, rejects) = counts_and_rejects(raw, paths);
    for (path, value) in paths.iter().zip(rejects) {
        if let Some(value) = value {
            warnings.push(rejected(path, value));
        }
    }
    found
}

/// The warning for a rejected count: the field's path and its value, made
/// printable and capped in length (both come from the network).
fn rejected(path: &[&[u8]], value: &[u8]) -> String {
    let name: Vec<String> = path.iter().map(|k| printable(k, MAX_VALUE_CHARS)).collect();
    format!(
        "usage field {} is {}, not a token count; it was left out of the counts",
        name.join("."),
        printable(value, MAX_VALUE_CHARS)
    )
}

/// `bytes` as text with control characters escaped, at most `max`
/// characters (then an ellipsis).
pub(crate) fn printable(bytes: &[u8], max: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut out = String::new();
    for (n, c) in text.chars().enumerate() {
        if n == max {
            out.push('\u{2026}');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Adds counts that may be missing: `None` only when all are missing.
fn sum(parts: &[Option<u64>]) -> Option<u64> {
    if parts.iter().all(Option::is_none) {
        return None;
    }
    parts
        .iter()
        .try_fold(0u64, |acc, p| acc.checked_add(p.unwrap_or(0)))
}

/// Output with reasoning folded in when the provider counted it apart
/// (see the module docs).
fn output_with_reasoning(
    input: Option<u64>,
    output: Option<u64>,
    reasoning: Option<u64>,
    total: Option<u64>,
) -> Option<u64> {
    if let (Some(i), Some(o), Some(r), Some(t)) = (input, output, reasoning, total) {
        let io = i.checked_add(o);
        if r > 0 && io != Some(t) && io.and_then(|io| io.checked_add(r)) == Some(t) {
            return o.checked_add(r);
        }
    }
    output
}

fn openai(raw: &[u8], warnings: &mut Vec<String>) -> Usage {
    let [prompt, completion, total, cached, cache_hit, cache_write, reasoning, top_reasoning, input, output] =
        read(
            raw,
            [
                &[b"prompt_tokens"],
                &[b"completion_tokens"],
                &[b"total_tokens"],
                &[b"prompt_tokens_details", b"cached_tokens"],
                &[b"prompt_cache_hit_tokens"],
                &[b"prompt_tokens_details", b"cache_write_tokens"],
                &[b"completion_tokens_details", b"reasoning_tokens"],
                &[b"reasoning_tokens"],
                &[b"input_tokens"],
                &[b"output_tokens"],
            ],
            warnings,
        );
    let input = prompt.or(input);
    let reasoning = reasoning.or(top_reasoning);
    Usage {
        input_tokens: input,
        output_tokens: output_with_reasoning(input, completion.or(output), reasoning, total),
        total_tokens: total,
        cached_input_tokens: cached.or(cache_hit),
        cache_write_tokens: cache_write,
        reasoning_tokens: reasoning,
        raw: String::new(),
    }
}

fn responses(raw: &[u8], warnings: &mut Vec<String>) -> Usage {
    let [input, output, total, cached, cache_write, reasoning] = read(
        raw,
        [
            &[b"input_tokens"],
            &[b"output_tokens"],
            &[b"total_tokens"],
            &[b"input_tokens_details", b"cached_tokens"],
            &[b"input_tokens_details", b"cache_write_tokens"],
            &[b"output_tokens_details", b"reasoning_tokens"],
        ],
        warnings,
    );
    Usage {
        input_tokens: input,
        output_tokens: output_with_reasoning(input, output, reasoning, total),
        total_tokens: total,
        cached_input_tokens: cached,
        cache_write_tokens: cache_write,
        reasoning_tokens: reasoning,
        raw: String::new(),
    }
}

fn anthropic(raw: &[u8], warnings: &mut Vec<String>) -> Usage {
    let [input, cache_write, cache_read, output, thinking] = read(
        raw,
        [
            &[b"input_tokens"],
            &[b"cache_creation_input_tokens"],
            &[b"cache_read_input_tokens"],
            &[b"output_tokens"],
            &[b"output_tokens_details", b"thinking_tokens"],
        ],
        warnings,
    );
    Usage {
        input_tokens: sum(&[input, cache_write, cache_read]),
        output_tokens: output,
        total_tokens: None,
        cached_input_tokens: cache_read,
        cache_write_tokens: cache_write,
        reasoning_tokens: thinking,
        raw: String::new(),
    }
}

fn gemini(raw: &[u8], warnings: &mut Vec<String>) -> Usage {
    let [prompt, tool_prompt, candidates, thoughts, total, cached] = read(
        raw,
        [
            &[b"promptTokenCount"],
            &[b"toolUsePromptTokenCount"],
            &[b"candidatesTokenCount"],
            &[b"thoughtsTokenCount"],
            &[b"totalTokenCount"],
            &[b"cachedContentTokenCount"],
        ],
        warnings,
    );
    Usage {
        input_tokens: sum(&[prompt, tool_prompt]),
        output_tokens: sum(&[candidates, thoughts]),
        total_tokens: total,
        cached_input_tokens: cached,
        cache_write_tokens: None,
        reasoning_tokens: thoughts,
        raw: String::new(),
    }
}

fn interactions(raw: &[u8], warnings: &mut Vec<String>) -> Usage {
    let [input, tool_use, output, thought, total, cached] = read(
        raw,
        [
            &[b"total_input_tokens"],
            &[b"total_tool_use_tokens"],
            &[b"total_output_tokens"],
            &[b"total_thought_tokens"],
            &[b"total_tokens"],
            &[b"total_cached_tokens"],
        ],
        warnings,
    );
    Usage {
        input_tokens: sum(&[input, tool_use]),
        output_tokens: sum(&[output, thought]),
        total_tokens: total,
        cached_input_tokens: cached,
        cache_write_tokens: None,
        reasoning_tokens: thought,
        raw: String::new(),
    }
}

fn cohere(raw: &[u8], warnings: &mut Vec<String>) -> Usage {
    let [billed_in, billed_out, tokens_in, tokens_out] = read(
        raw,
        [
            &[b"billed_units", b"input_tokens"],
            &[b"billed_units", b"output_tokens"],
            &[b"tokens", b"input_tokens"],
            &[b"tokens", b"output_tokens"],
        ],
        warnings,
    );
    let billed = billed_in.is_some() || billed_out.is_some();
    let (input, output) = if billed {
        (billed_in, billed_out)
    } else {
        (tokens_in, tokens_out)
    };
    Usage {
        input_tokens: input,
        output_tokens: output,
        ..Usage::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn six(u: &Usage) -> [Option<u64>; 6] {
        [
            u.input_tokens,
            u.output_tokens,
            u.total_tokens,
            u.cached_input_tokens,
            u.cache_write_tokens,
            u.reasoning_tokens,
        ]
    }

    #[test]
    fn openai_shapes() {
        let u = normalize(
            Api::ChatCompletions,
            br#"{"prompt_tokens":12,"completion_tokens":1,"total_tokens":303,"prompt_tokens_details":{"cached_tokens":11},"completion_tokens_details":{"reasoning_tokens":290}}"#,
        );
        assert_eq!(
            six(&u),
            [Some(12), Some(291), Some(303), Some(11), None, Some(290)]
        );
        // OpenAI proper: completion already includes reasoning.
        let u = normalize(
            Api::ChatCompletions,
            br#"{"completion_tokens":78,"completion_tokens_details":{"reasoning_tokens":64},"prompt_tokens":15,"total_tokens":93}"#,
        );
        assert_eq!(
            six(&u),
            [Some(15), Some(78), Some(93), None, None, Some(64)]
        );
        let u = normalize(
            Api::ChatCompletions,
            br#"{"prompt_tokens":339,"completion_tokens":83,"total_tokens":422,"prompt_cache_hit_tokens":320,"reasoning_tokens":7,"prompt_tokens_details":null}"#,
        );
        assert_eq!(
            six(&u),
            [Some(339), Some(83), Some(422), Some(320), None, Some(7)]
        );
        let u = normalize(
            Api::ChatCompletions,
            br#"{"prompt_tokens":-1,"completion_tokens":2.5,"total_tokens":"3"}"#,
        );
        assert!(!u.has_counts());
    }

    #[test]
    fn other_apis() {
        let u = normalize(
            Api::AnthropicMessages,
            br#"{"input_tokens":6,"cache_creation_input_tokens":3337,"cache_read_input_tokens":6289,"output_tokens":198,"output_tokens_details":{"thinking_tokens":0}}"#,
        );
        assert_eq!(
            six(&u),
            [
                Some(9632),
                Some(198),
                Some(9830),
                Some(6289),
                Some(3337),
                Some(0)
            ]
        );
        let u = normalize(Api::Gemini, br#"{"trafficType":"ON_DEMAND"}"#);
        assert!(!u.has_counts());
        let u = normalize(
            Api::Gemini,
            br#"{"promptTokenCount":9,"candidatesTokenCount":23,"totalTokenCount":217,"thoughtsTokenCount":185}"#,
        );
        assert_eq!(
            six(&u),
            [Some(9), Some(208), Some(217), None, None, Some(185)]
        );
        let u = normalize(
            Api::GeminiInteractions,
            br#"{"total_tokens":148,"total_input_tokens":7,"total_cached_tokens":0,"total_output_tokens":26,"total_tool_use_tokens":0,"total_thought_tokens":115}"#,
        );
        assert_eq!(
            six(&u),
            [Some(7), Some(141), Some(148), Some(0), None, Some(115)]
        );
        let u = normalize(
            Api::Cohere,
            br#"{"billed_units":{"input_tokens":12,"output_tokens":7},"tokens":{"input_tokens":507,"output_tokens":10},"cached_tokens":448}"#,
        );
        assert_eq!(six(&u), [Some(12), Some(7), Some(19), None, None, None]);
        let u = normalize(
            Api::Responses,
            br#"{"input_tokens":19,"input_tokens_details":{"cache_write_tokens":0,"cached_tokens":0},"output_tokens":105,"output_tokens_details":{"reasoning_tokens":44},"total_tokens":124}"#,
        );
        assert_eq!(
            six(&u),
            [Some(19), Some(105), Some(124), Some(0), Some(0), Some(44)]
        );
    }
}
