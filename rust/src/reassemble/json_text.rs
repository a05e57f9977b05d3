//! Compact JSON text of parsed values and strings, for tool call arguments
//! that arrive as JSON values rather than text.

use jiter::JsonValue;

use crate::json_out::push_str;

/// Serialises a parsed JSON value back to compact JSON text.
pub(super) fn json_text(v: &JsonValue<'_>) -> String {
    let mut out = String::new();
    write_json(v, &mut out);
    out
}

fn write_json(v: &JsonValue<'_>, out: &mut String) {
    match v {
        JsonValue::Null => out.push_str("null"),
        JsonValue::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        JsonValue::Int(i) => out.push_str(&i.to_string()),
        JsonValue::Float(f) => out.push_str(&f.to_string()),
        JsonValue::Str(s) => push_str(out, s),
        JsonValue::Array(a) => {
            out.push('[');
            for (i, item) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_json(item, out);
            }
            out.push(']');
        }
        JsonValue::Object(o) => {
            out.push('{');
            for (i, (k, item)) in o.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                push_str(out, k);
                out.push(':');
                write_json(item, out);
            }
            out.push('}');
        }
    }
}
