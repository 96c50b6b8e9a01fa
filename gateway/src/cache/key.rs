//! Result keys: what identifies one rendered image.

use nws_watermark::options::{Options, PIPELINE_VERSION};
use sha2::{Digest, Sha256};

/// The SHA-256 of everything that decides a result's bytes: the original's
/// hash, the canonical options (format negotiation included) and the
/// pipeline version. Its hex form names the result everywhere: the URL
/// `/v1/images/{key}`, the ETag, the Redis key and the Storage key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ResultKey([u8; 32]);

impl ResultKey {
    pub fn derive(original_sha256: &str, options: &Options) -> Self {
        let mut hasher = Sha256::new();
        // Field boundaries are explicit, so no two inputs hash alike by
        // sliding bytes from one field into the next.
        for part in [
            b"nws-watermark result".as_slice(),
            PIPELINE_VERSION.as_bytes(),
            original_sha256.as_bytes(),
            &options.canonical(),
        ] {
            hasher.update((part.len() as u64).to_be_bytes());
            hasher.update(part);
        }
        Self(hasher.finalize().into())
    }

    /// A key as written in URLs: exactly 64 lowercase hex characters.
    pub fn parse(text: &str) -> Option<Self> {
        if text.len() != 64 || !text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return None;
        }
        let mut key = [0; 32];
        hex::decode_to_slice(text, &mut key).ok()?;
        Some(Self(key))
    }
}

impl ResultKey {
    /// The strong entity tag of the result: the key, quoted.
    pub fn etag(&self) -> http::HeaderValue {
        http::HeaderValue::try_from(format!("\"{self}\"")).expect("hex is a valid header value")
    }

    /// Where the result is served.
    pub fn location(&self) -> String {
        format!("/v1/images/{self}")
    }
}

impl std::fmt::Display for ResultKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl std::fmt::Debug for ResultKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ResultKey({self})")
    }
}

#[cfg(test)]
mod tests {
    use nws_watermark::pb::OptimizeOptions;

    use super::*;

    const ORIGINAL: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    fn options(wire: OptimizeOptions) -> Options {
        Options::try_from(wire).unwrap()
    }

    #[test]
    fn keys_follow_the_original_and_the_canonical_options() {
        let defaults = ResultKey::derive(ORIGINAL, &options(OptimizeOptions::default()));
        let same = ResultKey::derive(
            ORIGINAL,
            &options(OptimizeOptions {
                quality: 85,
                ..Default::default()
            }),
        );
        assert_eq!(defaults, same);
        let other_quality = ResultKey::derive(
            ORIGINAL,
            &options(OptimizeOptions {
                quality: 70,
                ..Default::default()
            }),
        );
        assert_ne!(defaults, other_quality);
        let other_original =
            ResultKey::derive(&ORIGINAL.replace('9', "8"), &options(OptimizeOptions::default()));
        assert_ne!(defaults, other_original);
    }

    #[test]
    fn keys_round_trip_through_text_and_refuse_anything_else() {
        let key = ResultKey::derive(ORIGINAL, &options(OptimizeOptions::default()));
        assert_eq!(ResultKey::parse(&key.to_string()), Some(key));
        for bad in [
            "",
            "abc",
            &ORIGINAL.to_uppercase(),
            &format!("{ORIGINAL}0"),
            &"../".repeat(22)[..64],
        ] {
            assert_eq!(ResultKey::parse(bad), None, "{bad}");
        }
    }
}
