//! `Digest`: the 32 bytes of a SHA-256 digest, parsed from and printed as hex.

use std::fmt;

/// A SHA-256 digest. Printed as 64 lowercase hex characters; parsed case-insensitively.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(pub [u8; 32]);

/// Why a string is not a digest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestParseError {
    #[error("a digest has 64 hex characters, got {0}")]
    Length(usize),
    #[error("a digest has only hex characters (0-9, a-f), got {0:?} at position {1}")]
    NotHex(char, usize),
}

impl Digest {
    /// Length of the hex form.
    pub const HEX_LEN: usize = 64;

    /// Parses 64 hex characters, upper or lower case.
    pub fn from_hex(text: &str) -> Result<Digest, DigestParseError> {
        if text.len() != Self::HEX_LEN {
            return Err(DigestParseError::Length(text.chars().count()));
        }
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(text, &mut bytes).map_err(|_| first_non_hex(text))?;
        Ok(Digest(bytes))
    }

    /// The 64 lowercase hex characters.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

/// The error naming the first character of `text` that is not hex (`text` has the right length).
fn first_non_hex(text: &str) -> DigestParseError {
    text.char_indices()
        .find(|(_, c)| !c.is_ascii_hexdigit())
        .map(|(at, c)| DigestParseError::NotHex(c, at))
        .unwrap_or(DigestParseError::Length(text.len()))
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = [0u8; 64];
        // Encoding 32 bytes into 64 always fits.
        hex::encode_to_slice(self.0, &mut buf).map_err(|_| fmt::Error)?;
        f.write_str(std::str::from_utf8(&buf).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const FOO: &str = "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae";

    #[test]
    fn parses_lower_and_upper_case_to_the_same_digest() {
        let lower = Digest::from_hex(FOO).expect("valid digest");
        let upper = Digest::from_hex(&FOO.to_uppercase()).expect("valid digest");
        assert_eq!(lower, upper);
        assert_eq!(upper.to_hex(), FOO);
        assert_eq!(upper.to_string(), FOO);
    }

    #[test]
    fn rejects_wrong_length() {
        assert_eq!(Digest::from_hex("abc"), Err(DigestParseError::Length(3)));
        assert_eq!(Digest::from_hex(""), Err(DigestParseError::Length(0)));
        let long = format!("{FOO}0");
        assert_eq!(Digest::from_hex(&long), Err(DigestParseError::Length(65)));
    }

    #[test]
    fn rejects_non_hex_naming_the_character() {
        let bad = format!("{}g", &FOO[..63]);
        assert_eq!(
            Digest::from_hex(&bad),
            Err(DigestParseError::NotHex('g', 63))
        );
    }

    #[test]
    fn rejects_multibyte_text_of_64_bytes() {
        // 32 two-byte characters: 64 bytes but not hex.
        let text = "é".repeat(32);
        assert!(matches!(
            Digest::from_hex(&text),
            Err(DigestParseError::NotHex('é', 0))
        ));
    }

    proptest! {
        #[test]
        fn hex_round_trips(bytes in proptest::array::uniform32(any::<u8>())) {
            let digest = Digest(bytes);
            prop_assert_eq!(Digest::from_hex(&digest.to_hex()), Ok(digest));
            prop_assert_eq!(Digest::from_hex(&digest.to_hex().to_uppercase()), Ok(digest));
        }

        #[test]
        fn accepts_exactly_64_hex_characters(text in "\\PC{0,80}") {
            let expected = text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit());
            prop_assert_eq!(Digest::from_hex(&text).is_ok(), expected);
        }
    }
}
