//! OpenAI Chat Completions and legacy Completions chunks, and the many
//! OpenAI-compatible servers that speak them.
//!
//! Usage is read only at these paths, first match wins within a chunk:
//! top-level `usage`, then `x_groq.usage` (Groq), then `choices[].usage`
//! (servers that misplace it). Absent and `null` are the same. Usage on a
//! chunk that still has choices (DeepSeek, Mistral, Groq, Cerebras,
//! Moonshot) is taken like any other.
//!
//! Hot path: once the response id and model are known and no finish reason
//! has been seen, a chunk that has a `"delta"` key (legacy: `"text"`) and
//! no non-null `"usage"` or `"finish_reason"` key can change nothing but
//! the delta count, so only its delta objects are looked at. Anything else
//! (usage and finish chunks, error chunks, which have no delta) takes the
//! full parse.

use super::event::EventInfo;
use super::json::{fields, has_content, items, non_null, nonempty_str, value_at, Invalid};
use super::scan::{any_non_null, looks_like_object, values, Needles};
use super::types::{Api, Status};

/// The delta flag of a chunk that carries nothing else of interest, or
/// `None` when the chunk needs the full parse.
pub(crate) fn fast(data: &[u8], api: Api, n: &Needles) -> Option<bool> {
    if !looks_like_object(data) {
        return None;
    }
    let key = if api == Api::Completions {
        &n.text
    } else {
        &n.delta
    };
    let mut found = false;
    let mut delta = false;
    for at in values(data, key) {
        found = true;
        delta = match api {
            Api::Completions => has_content(value_at(data, at).ok()?),
            _ => delta_has_output_at(data, at)?,
        };
        if delta {
            break;
        }
    }
    if !found || any_non_null(data, &n.usage) || any_non_null(data, &n.finish_reason) {
        return None;
    }
    Some(delta)
}

/// Delta check for the object starting at `at`. The usual shapes
/// (`{"content":"Hi"}`, `{"reasoning_content":"..."}`, `{}`) are read
/// from the bytes; anything else goes through jiter.
fn delta_has_output_at(data: &[u8], at: usize) -> Option<bool> {
    let value = data.get(at..)?;
    if value.starts_with(b"{}") {
        return Some(false);
    }
    for key in [
        &b"{\"content\":\""[..],
        b"{\"reasoning_content\":\"",
        b"{\"reasoning\":\"",
    ] {
        if let Some(rest) = value.strip_prefix(key) {
            // A string that does not close at once is non-empty.
            if rest.first().is_some_and(|&b| b != b'"') {
                return Some(true);
            }
        }
    }
    delta_has_output(value_at(data, at).ok()?).ok()
}

/// The full parse of a chunk: ids, choices, usage, error.
pub(crate) fn parse(data: &[u8], api: Api) -> Result<EventInfo<'_>, Invalid> {
    let [id, model, object, choices, usage, x_groq, error] = fields(
        data,
        [
            b"id", b"model", b"object", b"choices", b"usage", b"x_groq", b"error",
        ],
    )?;
    let mut info = EventInfo {
        id: nonempty_str(id),
        model: nonempty_str(model),
        ..EventInfo::default()
    };
    let mut choice_usage = None;
    let mut n_choices = 0usize;
    if let Some(choices) = choices {
        items(choices, |choice| {
            n_choices += 1;
            let [delta, text, finish_reason, usage] =
                fields(choice, [b"delta", b"text", b"finish_reason", b"usage"])?;
            if let Some(delta) = delta {
                info.delta |= delta_has_output(delta)?;
            }
            if api == Api::Completions {
                info.delta |= text.is_some_and(has_content);
            }
            if let Some(reason) = nonempty_str(finish_reason) {
                info.end(status_of(reason), Some(reason));
            }
            choice_usage = choice_usage.or(non_null(usage));
            Ok(())
        })?;
    }
    let groq_usage = match x_groq {
        Some(x) => non_null(fields(x, [b"usage"])?[0]),
        None => None,
    };
    info.usage = non_null(usage).or(groq_usage).or(choice_usage);
    // A chunk with no choices carries the response's final usage; usage on
    // content chunks may be a running total (Perplexity, vLLM).
    info.final_usage = info.usage.is_some() && n_choices == 0;
    if let Some(error) = non_null(error) {
        info.fail(error);
    }
    // Perplexity ends its stream with a `chat.completion.done` object.
    if object == Some(b"\"chat.completion.done\"") {
        info.terminal = true;
        info.finished = true;
    }
    Ok(info)
}

/// `length` and `content_filter` mean the model was stopped; `max_tokens`
/// is the same thing under some compatible servers.
fn status_of(reason: &[u8]) -> Status {
    match reason {
        b"length" | b"content_filter" | b"max_tokens" => Status::Incomplete,
        _ => Status::Completed,
    }
}

/// Whether a chat `delta` object carries output: content, reasoning,
/// refusal or tool-call / function-call arguments.
fn delta_has_output(delta: &[u8]) -> Result<bool, Invalid> {
    let [content, reasoning_content, reasoning, refusal, tool_calls, function_call] = fields(
        delta,
        [
            b"content",
            b"reasoning_content",
            b"reasoning",
            b"refusal",
            b"tool_calls",
            b"function_call",
        ],
    )?;
    if [content, reasoning_content, reasoning, refusal]
        .into_iter()
        .flatten()
        .any(has_content)
    {
        return Ok(true);
    }
    let mut found = function_call.map_or(Ok(false), arguments_present)?;
    if let Some(calls) = tool_calls {
        items(calls, |call| {
            if let Some(function) = fields(call, [b"function"])?[0] {
                found |= arguments_present(function)?;
            }
            Ok(())
        })?;
    }
    Ok(found)
}

fn arguments_present(function: &[u8]) -> Result<bool, Invalid> {
    Ok(fields(function, [b"arguments"])?[0].is_some_and(has_content))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slow(data: &[u8]) -> EventInfo<'_> {
        parse(data, Api::ChatCompletions).unwrap()
    }

    #[test]
    fn usage_only_by_path() {
        let n = Needles::new();
        let content = br#"{"id":"a","choices":[{"index":0,"delta":{"content":"\"usage\":{\"prompt_tokens\":5}"},"finish_reason":null}]}"#;
        assert_eq!(fast(content, Api::ChatCompletions, &n), Some(true));
        let info = slow(content);
        assert!(info.delta && info.usage.is_none() && info.status.is_none());
        let tool = br#"{"id":"a","choices":[{"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"usage\":{\"total_tokens\":9}}"}}]}}]}"#;
        let info = slow(tool);
        assert!(info.delta && info.usage.is_none());
        let meta = br#"{"id":"a","metadata":{"usage":{"prompt_tokens":1}},"choices":[]}"#;
        assert!(slow(meta).usage.is_none());
    }

    #[test]
    fn usage_placements() {
        let groq = br#"{"choices":[{"delta":{},"finish_reason":"stop"}],"x_groq":{"usage":{"prompt_tokens":1}}}"#;
        let info = slow(groq);
        assert_eq!(info.usage, Some(&br#"{"prompt_tokens":1}"#[..]));
        assert_eq!(info.status, Some(Status::Completed));
        let both = br#"{"usage":{"prompt_tokens":2},"x_groq":{"usage":{"prompt_tokens":1}}}"#;
        assert_eq!(slow(both).usage, Some(&br#"{"prompt_tokens":2}"#[..]));
        let misplaced = br#"{"choices":[{"delta":{},"usage":{"prompt_tokens":3}}],"usage":null}"#;
        assert_eq!(slow(misplaced).usage, Some(&br#"{"prompt_tokens":3}"#[..]));
    }

    #[test]
    fn deltas_and_endings() {
        assert!(!slow(br#"{"choices":[{"delta":{"role":"assistant","content":""}}]}"#).delta);
        assert!(!slow(br#"{"choices":[{"delta":{"tool_calls":[{"function":{"name":"f","arguments":""}}]}}]}"#).delta);
        assert!(slow(br#"{"choices":[{"delta":{"reasoning_content":"hm"}}]}"#).delta);
        let two = br#"{"choices":[{"delta":{},"finish_reason":"length"},{"delta":{},"finish_reason":"stop"}]}"#;
        let info = slow(two);
        assert_eq!(info.status, Some(Status::Incomplete));
        assert_eq!(info.finish_reason, Some(&b"length"[..]));
        let err = slow(br#"{"error":{"message":"boom","type":"server_error"}}"#);
        assert_eq!(err.status, Some(Status::Failed));
        assert_eq!(
            err.error,
            Some(&br#"{"message":"boom","type":"server_error"}"#[..])
        );
        let legacy =
            br#"{"object":"text_completion","choices":[{"text":"hi","finish_reason":null}]}"#;
        assert_eq!(fast(legacy, Api::Completions, &Needles::new()), Some(true));
        assert!(parse(legacy, Api::Completions).unwrap().delta);
        assert_eq!(
            parse(b"{\"choices\":[", Api::ChatCompletions).unwrap_err(),
            Invalid
        );
    }

    #[test]
    fn fast_path_agrees_with_full_parse() {
        let n = Needles::new();
        let chunks: [&[u8]; 9] = [
            br#"{"id":"a","choices":[{"delta":{"content":"Hi"},"finish_reason":null}],"usage":null}"#,
            br#"{"id":"a","choices":[{"delta":{"content":"\"q\""}}]}"#,
            br#"{"id":"a","choices":[{"delta":{"role":"assistant","content":"","refusal":null}}]}"#,
            br#"{"id":"a","choices":[{"delta":{"content":""}}]}"#,
            br#"{"id":"a","choices":[{"delta":{}}]}"#,
            br#"{"id":"a","choices":[{"delta":{"content":null,"reasoning_content":"x"}}]}"#,
            br#"{"id":"a","choices":[{"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{}"}}]}}]}"#,
            br#"{"id":"a","choices":[{"delta":{"content":"a"}},{"delta":{"content":""}}]}"#,
            br#"{"id":"a","choices":[{"delta":{"reasoning":"r"}}]}"#,
        ];
        for chunk in chunks {
            let full = parse(chunk, Api::ChatCompletions).unwrap().delta;
            assert_eq!(
                fast(chunk, Api::ChatCompletions, &n),
                Some(full),
                "{}",
                String::from_utf8_lossy(chunk)
            );
        }
        // Chunks that can change more than the delta count take the full parse.
        let full_parse: [&[u8]; 4] = [
            br#"{"id":"a","choices":[{"delta":{},"finish_reason":"stop"}]}"#,
            br#"{"id":"a","choices":[],"usage":{"prompt_tokens":1}}"#,
            br#"{"error":{"message":"boom"}}"#,
            br#"{"id":"a","choices":[{"delta":{"content":"x"}}]"#,
        ];
        for chunk in full_parse {
            assert_eq!(fast(chunk, Api::ChatCompletions, &n), None);
        }
    }
}
