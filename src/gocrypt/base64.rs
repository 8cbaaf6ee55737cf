//! Base64 with the URL-safe alphabet (RFC 4648 §5), as gocryptfs writes
//! encrypted names and symlink targets: unpadded with `Raw64`, padded
//! without. Decoding is strict, as gocryptfs' (`Strict()`): a padding bit
//! that is not zero, a missing or stray `=`, or any other byte is refused,
//! so one name has one spelling.

/// The bytes `text` encodes, or None where it is not strict base64.
pub fn decode(text: &[u8], padded: bool) -> Option<Vec<u8>> {
    let body = match padded {
        true => strip_padding(text)?,
        false => text,
    };
    if body.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(body.len() * 3 / 4);
    for chunk in body.chunks(4) {
        let mut acc = 0u32;
        for &c in chunk {
            acc = (acc << 6) | u32::from(value(c)?);
        }
        let bits = chunk.len() * 6;
        let bytes = bits / 8;
        // The bits below the last whole byte must be zero.
        let spare = bits - bytes * 8;
        if acc & ((1 << spare) - 1) != 0 {
            return None;
        }
        let acc = acc >> spare;
        for i in (0..bytes).rev() {
            out.push((acc >> (i * 8)) as u8);
        }
    }
    Some(out)
}

/// `text` without its `=` padding, where it has exactly the padding its
/// length needs.
fn strip_padding(text: &[u8]) -> Option<&[u8]> {
    if !text.len().is_multiple_of(4) {
        return None;
    }
    let pad = text.iter().rev().take_while(|&&c| c == b'=').count();
    match pad {
        0..=2 => Some(&text[..text.len() - pad]),
        _ => None,
    }
}

fn value(c: u8) -> Option<u8> {
    match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'-' => Some(62),
        b'_' => Some(63),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::decode;

    #[test]
    fn decodes_the_rfc_4648_vectors_raw_and_padded() {
        let vectors: [(&str, &str, &[u8]); 7] = [
            ("", "", b""),
            ("Zg", "Zg==", b"f"),
            ("Zm8", "Zm8=", b"fo"),
            ("Zm9v", "Zm9v", b"foo"),
            ("Zm9vYg", "Zm9vYg==", b"foob"),
            ("Zm9vYmE", "Zm9vYmE=", b"fooba"),
            ("Zm9vYmFy", "Zm9vYmFy", b"foobar"),
        ];
        for (raw, padded, bytes) in vectors {
            assert_eq!(
                decode(raw.as_bytes(), false).as_deref(),
                Some(bytes),
                "{raw}"
            );
            assert_eq!(
                decode(padded.as_bytes(), true).as_deref(),
                Some(bytes),
                "{padded}"
            );
        }
    }

    #[test]
    fn uses_the_url_safe_alphabet() {
        assert_eq!(decode(b"-_8", false), Some(vec![0xfb, 0xff]));
        assert_eq!(decode(b"+/8", false), None);
    }

    #[test]
    fn refuses_what_is_not_strict() {
        for bad in ["Zh", "Z", "Zg=", "Zm9v\n", "Zg==", "a b"] {
            assert_eq!(decode(bad.as_bytes(), false), None, "raw {bad:?}");
        }
        for bad in ["Zg", "Zg=", "Zg===", "Z===", "Zh=="] {
            assert_eq!(decode(bad.as_bytes(), true), None, "padded {bad:?}");
        }
    }
}
