//! Writing JSON straight into a buffer, byte for byte as serde_json writes the same
//! `Value`: for the answers that are megabytes (`GET /v1/log` and range read pages), where
//! building a `Value` first, then escaping it, cost most of the time (`log_page.rs`).

use std::io::Write as _;

use base64::Engine as _;

/// `"name":"text"` when `bytes` are UTF-8, else `"name_base64":"…"` (API.md's rule for keys
/// and values), `"name":null` when absent; never a lossy conversion.
pub(super) fn write_bytes_field(out: &mut Vec<u8>, name: &str, bytes: Option<&[u8]>) {
    match bytes.map(std::str::from_utf8) {
        None => {
            write_json_str(out, name);
            out.extend_from_slice(b":null");
        }
        Some(Ok(text)) => {
            write_json_str(out, name);
            out.push(b':');
            write_json_str(out, text);
        }
        Some(Err(_)) => {
            write_json_str(out, &format!("{name}_base64"));
            out.push(b':');
            let encoded = base64::engine::general_purpose::STANDARD.encode(bytes.unwrap_or(&[]));
            write_json_str(out, &encoded);
        }
    }
}

/// Appends `text` as a JSON string, escaped exactly as serde_json escapes it: `"` and `\`
/// with a backslash, the control characters below 0x20 as `\b \t \n \f \r` or `\u00xx`,
/// everything else (non-ASCII too) as it is.
pub(super) fn write_json_str(out: &mut Vec<u8>, text: &str) {
    const LOW_BITS: u64 = 0x0101_0101_0101_0101;
    const HIGH_BITS: u64 = 0x8080_8080_8080_8080;
    // Whether a byte of `word` is zero (exact as a yes/no answer; the bit trick from
    // "Bit Twiddling Hacks", "Determine if a word has a zero byte").
    let has_zero_byte = |word: u64| word.wrapping_sub(LOW_BITS) & !word & HIGH_BITS != 0;
    // Whether a byte of `word` is below 0x20 (same source, "has a byte less than n").
    let has_control_byte = |word: u64| word.wrapping_sub(LOW_BITS * 0x20) & !word & HIGH_BITS != 0;
    let needs_escape = |word: u64| {
        has_control_byte(word)
            || has_zero_byte(word ^ (LOW_BITS * u64::from(b'"')))
            || has_zero_byte(word ^ (LOW_BITS * u64::from(b'\\')))
    };

    let bytes = text.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    let mut copied = 0;
    let mut i = 0;
    while i < bytes.len() {
        if let Some(chunk) = bytes.get(i..i + 8) {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            if !needs_escape(u64::from_le_bytes(word)) {
                i += 8;
                continue;
            }
        }
        let escaped: &[u8] = match bytes[i] {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            0x08 => b"\\b",
            b'\t' => b"\\t",
            b'\n' => b"\\n",
            0x0c => b"\\f",
            b'\r' => b"\\r",
            byte @ 0x00..=0x1f => {
                out.extend_from_slice(&bytes[copied..i]);
                let _ = write!(out, "\\u{:04x}", byte);
                i += 1;
                copied = i;
                continue;
            }
            _ => {
                i += 1;
                continue;
            }
        };
        out.extend_from_slice(&bytes[copied..i]);
        out.extend_from_slice(escaped);
        i += 1;
        copied = i;
    }
    out.extend_from_slice(&bytes[copied..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn escaped(text: &str) -> String {
        let mut out = Vec::new();
        write_json_str(&mut out, text);
        String::from_utf8(out).expect("escaping keeps UTF-8")
    }

    #[test]
    fn strings_are_escaped_as_serde_json_escapes_them() {
        for byte in 0u8..0x80 {
            let one = (byte as char).to_string();
            assert_eq!(
                escaped(&one),
                serde_json::to_string(&one).unwrap(),
                "byte {byte:#04x}"
            );
        }
        // Special bytes at every position of an 8-byte word and across words, runs of
        // them, and non-ASCII text.
        let mut texts: Vec<String> = [
            "",
            "plain",
            "é ü 日本 \u{7f} \u{2028}",
            "\"\\\"\\",
            "a\u{1}b\u{1f}c",
        ]
        .iter()
        .map(|t| t.to_string())
        .collect();
        for special in ['"', '\\', '\n', '\u{0}', '\u{1f}'] {
            for at in 0..20 {
                let mut text: String = "v".repeat(24);
                text.replace_range(at..at + 1, &special.to_string());
                texts.push(text);
            }
        }
        for text in texts {
            assert_eq!(
                escaped(&text),
                serde_json::to_string(&text).unwrap(),
                "{text:?}"
            );
        }
    }
}
