//! Byte-level prefilters for the hot path.
//!
//! Inside a JSON string every `"` is escaped, so the bytes `"usage"`
//! followed by `:` can only be an object key: text, tool-call arguments
//! (JSON inside a string) and other string values never match. A match
//! can still be a key at any depth, so a hit only means "parse this event
//! structurally"; a miss means the key is absent (keys spelled with `\u`
//! escapes are not recognised, which no provider does).

use memchr::memmem::Finder;

/// Pre-built searchers for the keys the prefilters look for.
#[derive(Clone, Debug)]
pub(crate) struct Needles {
    pub usage: Finder<'static>,
    pub finish_reason: Finder<'static>,
    pub delta: Finder<'static>,
    pub text: Finder<'static>,
    /// The blank line that ends an event (LF framing).
    pub blank_line: Finder<'static>,
}

impl Needles {
    /// One set for the whole process: building the searchers costs more than
    /// metering a short stream.
    pub(crate) fn shared() -> &'static Needles {
        static SHARED: std::sync::OnceLock<Needles> = std::sync::OnceLock::new();
        SHARED.get_or_init(Needles::new)
    }

    pub(crate) fn new() -> Self {
        Self {
            usage: Finder::new(b"\"usage\""),
            finish_reason: Finder::new(b"\"finish_reason\""),
            delta: Finder::new(b"\"delta\""),
            text: Finder::new(b"\"text\""),
            blank_line: Finder::new(b"\n\n"),
        }
    }
}

fn skip_ws(data: &[u8], mut i: usize) -> usize {
    while data
        .get(i)
        .is_some_and(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
    {
        i += 1;
    }
    i
}

/// Offsets where the values of `"key":` occurrences start.
pub(crate) fn values<'a>(
    data: &'a [u8],
    key: &'a Finder<'static>,
) -> impl Iterator<Item = usize> + 'a {
    let len = key.needle().len();
    key.find_iter(data).filter_map(move |pos| {
        let colon = skip_ws(data, pos + len);
        (data.get(colon) == Some(&b':')).then(|| skip_ws(data, colon + 1))
    })
}

/// Some occurrence of `"key":` has a value other than `null`.
pub(crate) fn any_non_null(data: &[u8], key: &Finder<'static>) -> bool {
    values(data, key).any(|at| !data.get(at..).is_some_and(|v| v.starts_with(b"null")))
}

/// The data starts with `{` and ends with `}`: the cheap check applied to
/// events that are not parsed at all.
pub(crate) fn looks_like_object(data: &[u8]) -> bool {
    data.first() == Some(&b'{') && data.last() == Some(&b'}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_not_strings() {
        let n = Needles::new();
        let data = br#"{"content":"\"usage\": {\"x\":1}","usage" : null,"finish_reason":"stop"}"#;
        assert!(!any_non_null(data, &n.usage));
        assert!(any_non_null(data, &n.finish_reason));
        let data = br#"{"a":"usage","usage":{"b":1}}"#;
        assert!(any_non_null(data, &n.usage));
        assert_eq!(values(data, &n.usage).collect::<Vec<_>>(), vec![21]);
        // A key at the very end of the buffer does not read past it.
        assert!(!any_non_null(b"\"usage\"", &n.usage));
        assert!(any_non_null(b"\"usage\":", &n.usage));
    }
}
