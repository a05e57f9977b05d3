//! Top-level key merge of two JSON objects, used for Anthropic usage: the
//! cumulative `message_delta.usage` overrides the keys of the
//! `message_start` usage (delta fields win, values are never added).

use jiter::{Jiter, Peek};

use super::json::lossy;

/// The members of an object as (raw key body, raw value) pairs.
fn members(raw: &[u8]) -> Option<Vec<(Vec<u8>, &[u8])>> {
    let mut j = Jiter::new(raw);
    if j.peek().ok()? != Peek::Object {
        return None;
    }
    let mut out = Vec::new();
    let mut key = j.next_object_bytes().ok()?.map(<[u8]>::to_vec);
    while let Some(k) = key {
        let start = j.current_index();
        j.next_skip().ok()?;
        out.push((k, j.slice_to_current(start).trim_ascii()));
        key = j.next_key_bytes().ok()?.map(<[u8]>::to_vec);
    }
    Some(out)
}

/// `base` with the keys of `top` overlaid, as compact JSON. Values keep
/// their original text; keys keep `base`'s order, new keys follow. When
/// either side is not an object the other one is returned unchanged.
pub(crate) fn overlay(base: &[u8], top: &[u8]) -> String {
    let (Some(base_members), Some(top_members)) = (members(base), members(top)) else {
        let keep = if members(top).is_some() { top } else { base };
        return lossy(keep);
    };
    let mut out = Vec::with_capacity(base.len() + top.len());
    out.push(b'{');
    let mut push = |key: &[u8], value: &[u8]| {
        if out.len() > 1 {
            out.push(b',');
        }
        out.push(b'"');
        out.extend_from_slice(key);
        out.extend_from_slice(b"\":");
        out.extend_from_slice(value);
    };
    for (key, value) in &base_members {
        let newer = top_members.iter().rev().find(|(k, _)| k == key);
        push(key, newer.map_or(*value, |(_, v)| *v));
    }
    for (key, value) in &top_members {
        if !base_members.iter().any(|(k, _)| k == key) {
            push(key, value);
        }
    }
    out.push(b'}');
    String::from_utf8(out).unwrap_or_else(|e| lossy(e.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delta_keys_win() {
        let start = br#"{"input_tokens":43, "output_tokens":1,"cache_creation":{"a":1}}"#;
        let delta =
            br#"{"output_tokens":2,"input_tokens":61,"server_tool_use":{"web_search_requests":1}}"#;
        assert_eq!(
            overlay(start, delta),
            r#"{"input_tokens":61,"output_tokens":2,"cache_creation":{"a":1},"server_tool_use":{"web_search_requests":1}}"#
        );
        assert_eq!(overlay(b"null", b"{\"a\":1}"), "{\"a\":1}");
        assert_eq!(overlay(b"{\"a\":1}", b"[]"), "{\"a\":1}");
    }
}
