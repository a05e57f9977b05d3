//! Which JSON the serde_json references speak for; part of `props`.

use std::collections::BTreeSet;

use serde_json::Value;

/// `data` parsed by serde_json, when it is JSON whose keys are all plain
/// (no escapes) and unique within their object. The extractor compares raw
/// key bytes and lets the last duplicate win in some places and the first in
/// others (documented); the reference only speaks for clean JSON.
#[must_use]
pub fn clean_json(data: &[u8]) -> Option<Value> {
    let value: Value = serde_json::from_slice(data).ok()?;
    keys_are_clean(data).then_some(value)
}

/// Walks valid JSON text and checks every object's keys: no backslash, no
/// duplicates.
fn keys_are_clean(text: &[u8]) -> bool {
    // A stack of key sets, one per open object; arrays push `None`.
    let mut stack: Vec<Option<BTreeSet<&[u8]>>> = Vec::new();
    let mut expect_key = false;
    let mut i = 0;
    while i < text.len() {
        match text[i] {
            b'{' => {
                stack.push(Some(BTreeSet::new()));
                expect_key = true;
            }
            b'[' => {
                stack.push(None);
                expect_key = false;
            }
            b'}' | b']' => {
                stack.pop();
                expect_key = false;
            }
            b',' => expect_key = matches!(stack.last(), Some(Some(_))),
            b'"' => {
                let start = i + 1;
                let mut j = start;
                let mut escaped = false;
                while j < text.len() && text[j] != b'"' {
                    if text[j] == b'\\' {
                        escaped = true;
                        j += 1;
                    }
                    j += 1;
                }
                if expect_key {
                    if escaped {
                        return false;
                    }
                    if let Some(Some(keys)) = stack.last_mut() {
                        if !keys.insert(&text[start..j.min(text.len())]) {
                            return false;
                        }
                    }
                    expect_key = false;
                }
                i = j;
            }
            _ => {}
        }
        i += 1;
    }
    true
}
