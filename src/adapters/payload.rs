//! Reading platform payloads that are not quite what Rust's JSON reader accepts.
//!
//! Slack and Discord are written in languages whose strings are UTF-16, and they pass on what
//! people type: a lone surrogate escape (`"\ud800"`) is valid to them and to the JSON grammar,
//! but cannot be a Rust string, so `serde_json` refuses the whole payload. Such a payload is
//! read with each lone surrogate replaced by U+FFFD (as a browser shows it), so the person's
//! command still runs. What cannot be read even so is answered anyway (an acknowledgement
//! needs only the envelope's id) and recorded in the ledger.

use serde::de::DeserializeOwned;

/// Parses `text` as JSON, repairing lone surrogate escapes when that is what stopped it.
pub fn parse<T: DeserializeOwned>(text: &str) -> Result<T, serde_json::Error> {
    match serde_json::from_str(text) {
        Err(e) if e.is_syntax() && text.contains("\\u") => match repair_surrogates(text) {
            Some(repaired) => serde_json::from_str(&repaired),
            None => Err(e),
        },
        other => other,
    }
}

/// `text` with every lone UTF-16 surrogate escape replaced by `\ufffd`, or `None` when it has
/// none (so the original error stands).
fn repair_surrogates(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let hex_at = |i: usize| -> Option<u16> {
        let digits = text.get(i..i + 4)?;
        u16::from_str_radix(digits, 16).ok()
    };
    let is_high = |u: u16| (0xD800..0xDC00).contains(&u);
    let is_low = |u: u16| (0xDC00..0xE000).contains(&u);
    let mut out = String::with_capacity(text.len());
    let mut changed = false;
    let mut last = 0;
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'\\' {
            i += 1;
            continue;
        }
        // An escape: `\uXXXX` is looked at, anything else (`\\`, `\"`) is skipped whole.
        if bytes.get(i + 1) != Some(&b'u') {
            i += 2;
            continue;
        }
        let Some(unit) = hex_at(i + 2) else {
            i += 2;
            continue;
        };
        let paired_low = || bytes.get(i + 6) == Some(&b'\\') && bytes.get(i + 7) == Some(&b'u');
        if is_high(unit) && paired_low() && hex_at(i + 8).is_some_and(is_low) {
            // A proper pair: keep both halves.
            i += 12;
            continue;
        }
        if is_high(unit) || is_low(unit) {
            out.push_str(&text[last..i]);
            out.push_str("\\ufffd");
            changed = true;
            last = i + 6;
        }
        i += 6;
    }
    if !changed {
        return None;
    }
    out.push_str(&text[last..]);
    Some(out)
}

/// The string value of a top-level `field` in a payload that does not parse, found by a scan
/// that needs no valid JSON: enough to acknowledge an envelope by its id.
pub fn field_of_unreadable(text: &str, field: &str) -> Option<String> {
    let key = format!("\"{field}\"");
    let at = text.find(&key)? + key.len();
    let rest = text[at..].trim_start().strip_prefix(':')?.trim_start();
    let rest = rest.strip_prefix('"')?;
    let end = rest.find(['"', '\\'])?;
    let value = &rest[..end];
    (!value.is_empty()).then(|| value.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn a_lone_surrogate_is_read_as_a_replacement_character() {
        let v: Value = parse(r#"{"text": "hi \ud800 there"}"#).unwrap();
        assert_eq!(v["text"], "hi \u{fffd} there");
        let v: Value = parse(r#"{"text": "\udc00\ud83d"}"#).unwrap();
        assert_eq!(v["text"], "\u{fffd}\u{fffd}");
    }

    #[test]
    fn proper_pairs_and_escaped_backslashes_are_left_alone() {
        let v: Value = parse(r#"{"text": "\ud83d\ude00 \\ud800 \u00e9"}"#).unwrap();
        assert_eq!(v["text"], "😀 \\ud800 é");
    }

    #[test]
    fn what_is_not_json_stays_an_error() {
        assert!(parse::<Value>(r#"{"text": "\ud800"#).is_err());
        assert!(parse::<Value>("not json").is_err());
    }

    #[test]
    fn an_envelope_id_is_found_in_a_payload_that_does_not_parse() {
        let text = r#"{"envelope_id": "57d6a792-4d35", "type": "events_api", "payload": {oops"#;
        assert_eq!(
            field_of_unreadable(text, "envelope_id").as_deref(),
            Some("57d6a792-4d35")
        );
        assert_eq!(field_of_unreadable("{}", "envelope_id"), None);
    }
}
