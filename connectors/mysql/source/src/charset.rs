//! Character sets: from a collation id to a decoder.
//!
//! Row images carry text in the column's own character set, so a `latin1`
//! column must be transcoded (MySQL's latin1 is Windows-1252: `0x80` is `€`)
//! while `binary` (collation 63) means the column is bytes, not text — the
//! only thing that tells TEXT from BLOB and CHAR from BINARY in a binlog. The
//! collation → character set map comes from the server's
//! `information_schema.COLLATIONS` (exact for its version, including MariaDB's
//! UCA 14 ids above 2048); a small built-in table covers the common ids when
//! that query is not possible.

use encoding_rs::Encoding;
use std::collections::HashMap;

/// The binary pseudo-collation.
pub const BINARY_COLLATION: u16 = 63;

/// How to turn a column's bytes into canonical text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Charset {
    /// Not text: the value is bytes.
    Binary,
    /// utf8mb3 / utf8mb4 / ascii-compatible UTF-8.
    Utf8,
    /// A WHATWG encoding (single- and multi-byte legacy sets, UTF-16).
    Legacy(&'static Encoding),
    /// UTF-32 (big-endian code units).
    Utf32,
    /// A character set without a decoder here: decoded as UTF-8 with replacement characters.
    Unknown,
}

impl Charset {
    /// The decoder for a MySQL/MariaDB character set name.
    pub fn from_name(name: &str) -> Charset {
        use encoding_rs as e;
        match name.to_ascii_lowercase().as_str() {
            "binary" => Charset::Binary,
            "utf8" | "utf8mb3" | "utf8mb4" => Charset::Utf8,
            // MySQL's latin1 is cp1252 (WHATWG windows-1252 keeps 0x81 etc. as C1 controls, as
            // MySQL does); ascii is a subset.
            "latin1" | "ascii" => Charset::Legacy(e::WINDOWS_1252),
            "cp1250" => Charset::Legacy(e::WINDOWS_1250),
            "cp1251" => Charset::Legacy(e::WINDOWS_1251),
            "cp1256" => Charset::Legacy(e::WINDOWS_1256),
            "cp1257" => Charset::Legacy(e::WINDOWS_1257),
            "latin2" => Charset::Legacy(e::ISO_8859_2),
            "latin5" => Charset::Legacy(e::WINDOWS_1254),
            "latin7" => Charset::Legacy(e::ISO_8859_13),
            "greek" => Charset::Legacy(e::ISO_8859_7),
            "hebrew" => Charset::Legacy(e::ISO_8859_8),
            "koi8r" => Charset::Legacy(e::KOI8_R),
            "koi8u" => Charset::Legacy(e::KOI8_U),
            "cp866" => Charset::Legacy(e::IBM866),
            "macroman" => Charset::Legacy(e::MACINTOSH),
            "sjis" | "cp932" => Charset::Legacy(e::SHIFT_JIS),
            "ujis" | "eucjpms" => Charset::Legacy(e::EUC_JP),
            "gbk" | "gb2312" => Charset::Legacy(e::GBK),
            "gb18030" => Charset::Legacy(e::GB18030),
            "big5" => Charset::Legacy(e::BIG5),
            "euckr" => Charset::Legacy(e::EUC_KR),
            "ucs2" | "utf16" => Charset::Legacy(e::UTF_16BE),
            "utf16le" => Charset::Legacy(e::UTF_16LE),
            "utf32" => Charset::Utf32,
            _ => Charset::Unknown,
        }
    }

    /// Decodes `bytes`; `None` for [`Charset::Binary`].
    pub fn decode(self, bytes: &[u8]) -> Option<String> {
        match self {
            Charset::Binary => None,
            Charset::Utf8 | Charset::Unknown => Some(String::from_utf8_lossy(bytes).into_owned()),
            Charset::Legacy(enc) => {
                let (text, _) = enc.decode_without_bom_handling(bytes);
                Some(text.into_owned())
            }
            Charset::Utf32 => Some(
                bytes
                    .chunks(4)
                    .map(|c| {
                        let n = crate::bytes::be(c) as u32;
                        char::from_u32(n).unwrap_or(char::REPLACEMENT_CHARACTER)
                    })
                    .collect(),
            ),
        }
    }
}

/// Collation id → character set name, as the server reports it.
#[derive(Debug, Clone, Default)]
pub struct Collations {
    by_id: HashMap<u16, String>,
}

impl Collations {
    /// From `(id, charset name)` pairs of `information_schema.COLLATIONS`.
    pub fn from_pairs(pairs: impl IntoIterator<Item = (u16, String)>) -> Collations {
        Collations {
            by_id: pairs.into_iter().collect(),
        }
    }

    /// The decoder for collation `id`.
    pub fn charset(&self, id: u16) -> Charset {
        if id == BINARY_COLLATION {
            return Charset::Binary;
        }
        match self.by_id.get(&id) {
            Some(name) => Charset::from_name(name),
            None => builtin(id),
        }
    }
}

/// Common collation ids shared by MySQL and MariaDB.
fn builtin(id: u16) -> Charset {
    match id {
        63 => Charset::Binary,
        5 | 8 | 15 | 31 | 47 | 48 | 49 | 94 | 11 | 65 => Charset::Legacy(encoding_rs::WINDOWS_1252),
        33 | 45 | 46 | 76 | 83 | 192..=247 | 255..=323 => Charset::Utf8,
        _ => Charset::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latin1_is_cp1252() {
        let c = Collations::default().charset(8);
        assert_eq!(c.decode(&[b'x', 0x80]).unwrap(), "x€");
        assert_eq!(c.decode(&[0x81]).unwrap(), "\u{81}");
    }

    #[test]
    fn binary_is_not_text_and_server_names_win() {
        let c = Collations::from_pairs([(2048u16, "utf8mb4".to_string()), (9, "latin2".into())]);
        assert_eq!(c.charset(63), Charset::Binary);
        assert_eq!(c.charset(2048), Charset::Utf8);
        assert_eq!(c.charset(9).decode(&[0xa1]).unwrap(), "Ą");
        assert_eq!(Charset::Utf32.decode(&[0, 0, 0x20, 0xac]).unwrap(), "€");
        assert_eq!(
            Charset::from_name("utf16le").decode(&[0xac, 0x20]).unwrap(),
            "€"
        );
        assert_eq!(Charset::Utf8.decode(&[0xff]).unwrap(), "\u{fffd}");
    }
}
