use std::fmt;

use crate::StorageError;

/// A validated object key: the SHA-256 of the object's bytes as exactly 64
/// lowercase hex characters. Nothing else can name a file, so no key can
/// reach outside the store.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ObjectKey([u8; 64]);

impl ObjectKey {
    /// Accepts exactly 64 lowercase hex characters.
    pub fn parse(text: &str) -> Result<Self, StorageError> {
        let bytes = text.as_bytes();
        if bytes.len() == 64 && bytes.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            let mut key = [0u8; 64];
            key.copy_from_slice(bytes);
            Ok(Self(key))
        } else {
            Err(StorageError::InvalidKey(truncate_for_message(text)))
        }
    }

    /// The key for a finished SHA-256 digest.
    pub fn from_digest(digest: &[u8; 32]) -> Self {
        let mut key = [0u8; 64];
        hex::encode_to_slice(digest, &mut key).expect("64 bytes hold a 32-byte digest in hex");
        Self(key)
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("validated ASCII hex")
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectKey({})", self.as_str())
    }
}

/// Echoes at most 80 characters of a rejected key back to the caller.
fn truncate_for_message(text: &str) -> String {
    let mut shown: String = text.chars().take(80).collect();
    if shown.len() < text.len() {
        shown.push('…');
    }
    shown
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn accepts_only_64_lowercase_hex() {
        assert_eq!(ObjectKey::parse(GOOD).unwrap().as_str(), GOOD);
        for bad in [
            "",
            &GOOD[..63],
            &GOOD.to_uppercase(),
            "../../../../etc/passwd",
            &format!("{}/..", &GOOD[..61]),
            &format!("{GOOD}0"),
        ] {
            assert!(
                matches!(ObjectKey::parse(bad), Err(StorageError::InvalidKey(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn digest_round_trips() {
        let digest = [0xabu8; 32];
        assert_eq!(ObjectKey::from_digest(&digest).as_str(), "ab".repeat(32));
    }
}
