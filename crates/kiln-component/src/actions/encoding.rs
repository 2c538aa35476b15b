//! The text encodings of CreateFile, AppendFile, ReadFile and SetFileEncoding.
//!
//! AWSTOE accepts utf8, utf16 and utf32 (little-endian unless `-BE` is named), case-insensitive
//! and with or without dashes. All are written by hand on top of `std` (`str::encode_utf16`,
//! `String::from_utf16`, `char::from_u32`): `encoding_rs` follows the WHATWG Encoding standard,
//! which can *decode* UTF-16 but never encodes into it and has no UTF-32 at all, so it would
//! add nothing here.
//!
//! Files are written without a byte-order mark (AWSTOE's documentation names the byte order in
//! the encoding instead). On reading, a byte-order mark at the start is honoured and removed.

/// The names AWSTOE documents, for messages and suggestions.
pub(crate) const ENCODING_NAMES: &[&str] = &[
    "utf8",
    "utf-8",
    "utf16",
    "utf-16",
    "utf16-LE",
    "utf-16-LE",
    "utf16-BE",
    "utf-16-BE",
    "utf32",
    "utf-32",
    "utf32-LE",
    "utf-32-LE",
    "utf32-BE",
    "utf-32-BE",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TextEncoding {
    Utf8,
    Utf16Le,
    Utf16Be,
    Utf32Le,
    Utf32Be,
}

impl TextEncoding {
    /// Parses an encoding name: case-insensitive, dashes and underscores optional.
    pub fn parse(name: &str) -> Option<TextEncoding> {
        let n: String =
            name.trim().chars().filter(|c| *c != '-' && *c != '_').map(|c| c.to_ascii_lowercase()).collect();
        Some(match n.as_str() {
            "utf8" => TextEncoding::Utf8,
            "utf16" | "utf16le" => TextEncoding::Utf16Le,
            "utf16be" => TextEncoding::Utf16Be,
            "utf32" | "utf32le" => TextEncoding::Utf32Le,
            "utf32be" => TextEncoding::Utf32Be,
            _ => return None,
        })
    }

    pub fn encode(self, text: &str) -> Vec<u8> {
        match self {
            TextEncoding::Utf8 => text.as_bytes().to_vec(),
            TextEncoding::Utf16Le => text.encode_utf16().flat_map(u16::to_le_bytes).collect(),
            TextEncoding::Utf16Be => text.encode_utf16().flat_map(u16::to_be_bytes).collect(),
            TextEncoding::Utf32Le => text.chars().flat_map(|c| (c as u32).to_le_bytes()).collect(),
            TextEncoding::Utf32Be => text.chars().flat_map(|c| (c as u32).to_be_bytes()).collect(),
        }
    }

    /// Decodes `bytes`; a byte-order mark overrides the byte order of the named encoding
    /// family and is removed.
    pub fn decode(self, bytes: &[u8]) -> Result<String, String> {
        let (enc, body) = self.with_bom(bytes);
        match enc {
            TextEncoding::Utf8 => {
                String::from_utf8(body.to_vec()).map_err(|e| format!("not valid UTF-8: {e}"))
            }
            TextEncoding::Utf16Le | TextEncoding::Utf16Be => {
                if body.len() % 2 != 0 {
                    return Err("not valid UTF-16: odd number of bytes".into());
                }
                let units: Vec<u16> = body
                    .chunks_exact(2)
                    .map(|c| {
                        if enc == TextEncoding::Utf16Le {
                            u16::from_le_bytes([c[0], c[1]])
                        } else {
                            u16::from_be_bytes([c[0], c[1]])
                        }
                    })
                    .collect();
                String::from_utf16(&units).map_err(|e| format!("not valid UTF-16: {e}"))
            }
            TextEncoding::Utf32Le | TextEncoding::Utf32Be => {
                if body.len() % 4 != 0 {
                    return Err("not valid UTF-32: length is not a multiple of 4 bytes".into());
                }
                body.chunks_exact(4)
                    .map(|c| {
                        let v = if enc == TextEncoding::Utf32Le {
                            u32::from_le_bytes([c[0], c[1], c[2], c[3]])
                        } else {
                            u32::from_be_bytes([c[0], c[1], c[2], c[3]])
                        };
                        char::from_u32(v)
                            .ok_or_else(|| format!("not valid UTF-32: {v:#x} is not a character"))
                    })
                    .collect()
            }
        }
    }

    fn with_bom(self, b: &[u8]) -> (TextEncoding, &[u8]) {
        match self {
            TextEncoding::Utf8 => (self, b.strip_prefix(&[0xEF, 0xBB, 0xBF]).unwrap_or(b)),
            TextEncoding::Utf16Le | TextEncoding::Utf16Be => {
                if let Some(rest) = b.strip_prefix(&[0xFF, 0xFE]) {
                    (TextEncoding::Utf16Le, rest)
                } else if let Some(rest) = b.strip_prefix(&[0xFE, 0xFF]) {
                    (TextEncoding::Utf16Be, rest)
                } else {
                    (self, b)
                }
            }
            TextEncoding::Utf32Le | TextEncoding::Utf32Be => {
                if let Some(rest) = b.strip_prefix(&[0xFF, 0xFE, 0, 0]) {
                    (TextEncoding::Utf32Le, rest)
                } else if let Some(rest) = b.strip_prefix(&[0, 0, 0xFE, 0xFF]) {
                    (TextEncoding::Utf32Be, rest)
                } else {
                    (self, b)
                }
            }
        }
    }

    /// The encoding a byte-order mark at the start of `b` announces, if any.
    pub fn sniff_bom(b: &[u8]) -> Option<TextEncoding> {
        if b.starts_with(&[0xFF, 0xFE, 0, 0]) {
            Some(TextEncoding::Utf32Le)
        } else if b.starts_with(&[0, 0, 0xFE, 0xFF]) {
            Some(TextEncoding::Utf32Be)
        } else if b.starts_with(&[0xFF, 0xFE]) {
            Some(TextEncoding::Utf16Le)
        } else if b.starts_with(&[0xFE, 0xFF]) {
            Some(TextEncoding::Utf16Be)
        } else if b.starts_with(&[0xEF, 0xBB, 0xBF]) {
            Some(TextEncoding::Utf8)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(TextEncoding::parse("UTF-32"), Some(TextEncoding::Utf32Le));
        assert_eq!(TextEncoding::parse("utf16-BE"), Some(TextEncoding::Utf16Be));
        assert_eq!(TextEncoding::parse("utf-16-le"), Some(TextEncoding::Utf16Le));
        assert_eq!(TextEncoding::parse("Utf8"), Some(TextEncoding::Utf8));
        assert_eq!(TextEncoding::parse("latin1"), None);
        for n in ENCODING_NAMES {
            assert!(TextEncoding::parse(n).is_some(), "{n}");
        }
    }

    #[test]
    fn round_trips() {
        let s = "héllo 😀\n";
        for e in [
            TextEncoding::Utf8,
            TextEncoding::Utf16Le,
            TextEncoding::Utf16Be,
            TextEncoding::Utf32Le,
            TextEncoding::Utf32Be,
        ] {
            assert_eq!(e.decode(&e.encode(s)).unwrap(), s, "{e:?}");
        }
        assert_eq!(TextEncoding::Utf16Le.encode("A"), vec![0x41, 0]);
        assert_eq!(TextEncoding::Utf32Be.encode("A"), vec![0, 0, 0, 0x41]);
        // A byte-order mark wins over the declared byte order.
        assert_eq!(TextEncoding::Utf16Le.decode(&[0xFE, 0xFF, 0, 0x41]).unwrap(), "A");
        assert!(TextEncoding::Utf32Le.decode(&[0, 0xD8, 0, 0]).is_err());
        assert!(TextEncoding::Utf8.decode(&[0xFF]).is_err());
    }
}
