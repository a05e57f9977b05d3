//! The crate's JSON text of strings and floats, as Python's `json` module
//! writes them with `ensure_ascii=False`: strings with the same escapes
//! (plus U+0085, U+2028 and U+2029, which line-based readers would take for
//! line breaks), floats as `repr` writes them. Used for the usage records a
//! gateway writes (the bindings walk the record); the tool arguments
//! reassembled from JSON values take its strings.

use std::fmt::Write;

/// `value` in decimal, as JSON (and Python) write an integer: no allocation.
pub fn push_int(out: &mut String, value: i64) {
    let mut digits = [0u8; 20]; // i64::MIN has 19 digits
    let mut n = value.unsigned_abs();
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    if value < 0 {
        out.push('-');
    }
    for &d in &digits[start..] {
        out.push(char::from(d));
    }
}

/// Appends `text` as a JSON string: `"` and `\` escaped, control
/// characters as `\n`, `\r`, `\t`, `\b`, `\f` or `\u00XX`, U+0085, U+2028
/// and U+2029 as `\uXXXX`, everything else as is.
pub fn push_str(out: &mut String, text: &str) {
    out.push('"');
    push_str_body(out, text);
    out.push('"');
}

/// The escaped characters of `text` as a JSON string, without its quotes.
pub fn push_str_body(out: &mut String, text: &str) {
    push_escaped(out, text, false);
}

/// `push_str` for text that must hold no NUL: false, with part of `text`
/// written, if it does (the caller drops what it wrote).
pub fn push_str_without_nul(out: &mut String, text: &str) -> bool {
    out.push('"');
    let ok = push_escaped(out, text, true);
    out.push('"');
    ok
}

/// The first byte at or after `from` that `push_escaped` must look at.
/// Eight bytes at a time: a word with no control character, `"`, `\\` or
/// non-ASCII byte is passed over whole.
fn next_attention(bytes: &[u8], mut from: usize) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    while let Some(word) = bytes.get(from..from + 8) {
        let w = u64::from_le_bytes(word.try_into().unwrap_or([0; 8]));
        let quote = w ^ (ONES * u64::from(b'"'));
        let backslash = w ^ (ONES * u64::from(b'\\'));
        // The classic zero-byte test: the lowest flagged byte is exact (a
        // borrow only carries upward), which is the one taken.
        let flagged = (w.wrapping_sub(ONES * 0x20) & !w)
            | (quote.wrapping_sub(ONES) & !quote)
            | (backslash.wrapping_sub(ONES) & !backslash)
            | w;
        let flagged = flagged & HIGH;
        if flagged != 0 {
            let at = from + (flagged.trailing_zeros() / 8) as usize;
            if ATTENTION[usize::from(bytes[at])] {
                return Some(at);
            }
            from = at + 1; // a non-ASCII byte that needs no escape
            continue;
        }
        from += 8;
    }
    let tail = bytes.get(from..)?;
    tail.iter()
        .position(|&b| ATTENTION[usize::from(b)])
        .map(|skip| from + skip)
}

/// The escaped characters of `text`; with `refuse_nul`, false at a NUL.
fn push_escaped(out: &mut String, text: &str, refuse_nul: bool) -> bool {
    let bytes = text.as_bytes();
    let mut start = 0;
    let mut i = 0;
    while let Some(at) = next_attention(bytes, i) {
        i = at;
        let b = bytes[i];
        if b == 0 && refuse_nul {
            return false;
        }
        let (escape, width): (&str, usize) = match b {
            b'"' => ("\\\"", 1),
            b'\\' => ("\\\\", 1),
            b'\n' => ("\\n", 1),
            b'\r' => ("\\r", 1),
            b'\t' => ("\\t", 1),
            0x08 => ("\\b", 1),
            0x0c => ("\\f", 1),
            0x00..=0x1f => ("", 1),
            0xc2 if bytes.get(i + 1) == Some(&0x85) => ("\\u0085", 2),
            0xe2 if bytes.get(i + 1) == Some(&0x80) && bytes.get(i + 2) == Some(&0xa8) => {
                ("\\u2028", 3)
            }
            0xe2 if bytes.get(i + 1) == Some(&0x80) && bytes.get(i + 2) == Some(&0xa9) => {
                ("\\u2029", 3)
            }
            _ => {
                i += 1; // another character led by 0xc2 or 0xe2
                continue;
            }
        };
        // `start..i` ends before an ASCII byte or a lead byte: a char boundary.
        out.push_str(&text[start..i]);
        if escape.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.push_str("\\u00");
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        } else {
            out.push_str(escape);
        }
        i += width;
        start = i;
    }
    out.push_str(&text[start..]);
    true
}

/// The bytes `push_str_body` looks at: controls, `"`, `\\`, and the lead bytes
/// of U+0085 (0xc2) and of U+2028/U+2029 (0xe2).
const ATTENTION: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = true;
        b += 1;
    }
    table[b'"' as usize] = true;
    table[b'\\' as usize] = true;
    table[0xc2] = true;
    table[0xe2] = true;
    table
};

/// Appends a finite float as Python's `repr` writes it (the shortest text
/// that reads back as the same float; an exponent below 1e-4 and from 1e16
/// on); false, and nothing appended, for NaN and the infinities, which
/// strict JSON has no text for.
pub fn push_float(out: &mut String, value: f64) -> bool {
    if !value.is_finite() {
        return false;
    }
    if value.is_sign_negative() {
        out.push('-');
    }
    // `{:e}` writes the shortest round-trip digits, `d[.ddd]e<exp>`: at most
    // 17 digits, a point and a 4-character exponent, on the stack.
    let mut sci = Stack::default();
    let _ = write!(sci, "{:e}", value.abs());
    let sci = sci.as_str();
    let (mantissa, exp) = sci.split_once('e').unwrap_or((sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (lead, rest) = mantissa.split_at(1);
    let rest = rest.strip_prefix('.').unwrap_or(rest);
    let count = 1 + rest.len();
    // Python's rule: `decpt` digits before the point, exponent form when
    // `decpt <= -4` or `decpt > 16`.
    let decpt = exp + 1;
    if decpt <= -4 || decpt > 16 {
        out.push_str(lead);
        if !rest.is_empty() {
            out.push('.');
            out.push_str(rest);
        }
        let _ = write!(
            out,
            "e{}{:02}",
            if exp < 0 { '-' } else { '+' },
            exp.unsigned_abs()
        );
    } else if decpt <= 0 {
        out.push_str("0.");
        out.extend(std::iter::repeat('0').take(decpt.unsigned_abs() as usize));
        out.push_str(lead);
        out.push_str(rest);
    } else {
        let point = decpt as usize; // 1..=16
        if point >= count {
            out.push_str(lead);
            out.push_str(rest);
            out.extend(std::iter::repeat('0').take(point - count));
            out.push_str(".0");
        } else {
            out.push_str(lead);
            out.push_str(&rest[..point - 1]);
            out.push('.');
            out.push_str(&rest[point - 1..]);
        }
    }
    true
}

/// A fixed buffer that `write!` fills, for the text of one float.
#[derive(Default)]
struct Stack {
    bytes: [u8; 32],
    len: usize,
}

impl Stack {
    fn as_str(&self) -> &str {
        // Only whole `&str`s are ever copied in (`write_str`).
        std::str::from_utf8(&self.bytes[..self.len]).unwrap_or("0e0")
    }
}

impl Write for Stack {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        let slot = self.bytes.get_mut(self.len..end).ok_or(std::fmt::Error)?;
        slot.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn float(value: f64) -> String {
        let mut out = String::new();
        assert!(push_float(&mut out, value));
        out
    }

    fn string(text: &str) -> String {
        let mut out = String::new();
        push_str(&mut out, text);
        out
    }

    #[test]
    fn integers_as_their_decimal_text() {
        for n in [
            0,
            1,
            -1,
            9,
            10,
            -10,
            99,
            1234567890,
            i64::MAX,
            i64::MIN,
            i64::MIN + 1,
        ] {
            let mut out = String::new();
            push_int(&mut out, n);
            assert_eq!(out, n.to_string());
        }
    }

    #[test]
    fn floats_as_python_repr() {
        // Pairs from CPython's repr.
        for (value, text) in [
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (1.0, "1.0"),
            (123.0, "123.0"),
            (0.1, "0.1"),
            (1e-5, "1e-05"),
            (0.0001, "0.0001"),
            (1.996899993628176e-05, "1.996899993628176e-05"),
            (0.0006638450000195917, "0.0006638450000195917"),
            (899.8273906071637, "899.8273906071637"),
            (1e16, "1e+16"),
            (1.5e16, "1.5e+16"),
            (1234567890123456.0, "1234567890123456.0"),
            (9999999999999998.0, "9999999999999998.0"),
            (1e100, "1e+100"),
            (-2.5e-300, "-2.5e-300"),
            (5e-324, "5e-324"),
            (f64::MAX, "1.7976931348623157e+308"),
            (100.0, "100.0"),
            (0.5, "0.5"),
        ] {
            assert_eq!(float(value), text, "{value:e}");
        }
    }

    #[test]
    fn no_text_for_nan_or_infinity() {
        let mut out = String::new();
        for value in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            assert!(!push_float(&mut out, value));
        }
        assert!(out.is_empty());
    }

    #[test]
    fn strings_escaped_as_python_json() {
        assert_eq!(string("plain"), "\"plain\"");
        assert_eq!(string("a\"b\\c"), "\"a\\\"b\\\\c\"");
        assert_eq!(string("\n\r\t\u{8}\u{c}"), "\"\\n\\r\\t\\b\\f\"");
        assert_eq!(string("\u{0}\u{1f}\u{7f}"), "\"\\u0000\\u001f\u{7f}\"");
        assert_eq!(string("é€😀"), "\"é€😀\"");
        assert_eq!(
            string("a\u{85}b\u{2028}c\u{2029}d"),
            "\"a\\u0085b\\u2028c\\u2029d\""
        );
        // Neighbours of the escaped line breaks stay as they are.
        assert_eq!(
            string("\u{84}\u{2027}\u{202a}"),
            "\"\u{84}\u{2027}\u{202a}\""
        );
        assert_eq!(string(""), "\"\"");
    }

    /// The escaping of one character at a time, the reference for the word
    /// at a time scan.
    fn one_by_one(text: &str) -> String {
        let mut out = String::from("\"");
        for c in text.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\u{8}' => out.push_str("\\b"),
                '\u{c}' => out.push_str("\\f"),
                '\u{0}'..='\u{1f}' | '\u{85}' | '\u{2028}' | '\u{2029}' => {
                    out.push_str(&format!("\\u{:04x}", u32::from(c)));
                }
                _ => out.push(c),
            }
        }
        out.push('"');
        out
    }

    #[test]
    fn every_special_character_at_every_offset_and_length() {
        let specials = [
            "\"", "\\", "\u{0}", "\n", "\u{1f}", "\u{7f}", "é", "\u{85}", "\u{84}", "\u{2028}",
            "\u{2029}", "\u{2027}", "€", "😀", " ", "~",
        ];
        for len in 0..40 {
            for at in 0..=len {
                for special in specials {
                    for second in ["", "\"", "\u{2029}"] {
                        let text = format!(
                            "{}{special}{}{second}",
                            "a".repeat(at),
                            "b".repeat(len - at)
                        );
                        assert_eq!(string(&text), one_by_one(&text), "{text:?}");
                        let mut out = String::new();
                        let clean = push_str_without_nul(&mut out, &text);
                        assert_eq!(clean, !text.contains('\u{0}'), "{text:?}");
                        if clean {
                            assert_eq!(out, one_by_one(&text));
                        }
                    }
                }
            }
        }
    }
}
