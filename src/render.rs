//! What names a rendered image, and the unit of work that makes one.
//!
//! A render is fully described by the original's hash and the options with
//! the format settled: [`RenderJob`]. Its [`ResultKey`] names the result
//! everywhere (URL, ETag, cache keys, Storage), so whoever renders a job
//! (the optimizer for a waiting caller, in the background, or for a queued
//! job) produces the same object under the same name.

use sha2::{Digest, Sha256};

use crate::{
    options::{Options, PIPELINE_VERSION},
    pb::{RenderPriority, RenderRequest},
};

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
        if !is_sha256_hex(text) {
            return None;
        }
        let mut key = [0; 32];
        hex::decode_to_slice(text, &mut key).ok()?;
        Some(Self(key))
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

/// Whether `text` is a SHA-256 as every key in the mesh is written: exactly
/// 64 lowercase hex characters.
pub fn is_sha256_hex(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// One original rendered with validated options: all a result depends on.
#[derive(Debug, Clone, PartialEq)]
pub struct RenderJob {
    original_sha256: String,
    options: Options,
    key: ResultKey,
}

impl RenderJob {
    /// The job for `original_sha256` (64 lowercase hex characters, as
    /// Storage names originals) and `options`.
    pub fn new(original_sha256: String, options: Options) -> Self {
        let key = ResultKey::derive(&original_sha256, &options);
        Self {
            original_sha256,
            options,
            key,
        }
    }

    pub fn original_sha256(&self) -> &str {
        &self.original_sha256
    }

    pub fn options(&self) -> &Options {
        &self.options
    }

    /// The key its result is kept and served under.
    pub fn key(&self) -> ResultKey {
        self.key
    }

    /// The Optimizer call that renders it.
    pub fn request(&self, store_result: bool, priority: RenderPriority) -> RenderRequest {
        RenderRequest {
            original_sha256: self.original_sha256.clone(),
            options: Some(self.options.to_wire()),
            store_result,
            priority: priority.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::OptimizeOptions;

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
    fn a_job_names_its_result_by_the_original_and_options() {
        let job = RenderJob::new(ORIGINAL.to_owned(), options(OptimizeOptions::default()));
        assert_eq!(
            job.key(),
            ResultKey::derive(ORIGINAL, &options(OptimizeOptions::default()))
        );
        let request = job.request(true, RenderPriority::Background);
        assert_eq!(request.original_sha256, ORIGINAL);
        assert!(request.store_result);
        // The job survives the wire: what a queue carries is enough to rebuild it.
        let rebuilt = RenderJob::new(
            request.original_sha256,
            Options::try_from(request.options.unwrap()).unwrap(),
        );
        assert_eq!(rebuilt, job);
    }

    #[test]
    fn a_job_keeps_what_it_was_made_from_and_its_result_is_served_by_key() {
        let chosen = options(OptimizeOptions {
            watermark_text: "mine".into(),
            quality: 60,
            ..Default::default()
        });
        let job = RenderJob::new(ORIGINAL.to_owned(), chosen.clone());
        assert_eq!(job.original_sha256(), ORIGINAL);
        assert_eq!(job.options(), &chosen);
        assert_eq!(job.key().location(), format!("/v1/images/{}", job.key()));
        assert_eq!(job.key().to_string().len(), 64);
    }

    #[test]
    fn only_64_lowercase_hex_characters_are_a_sha256() {
        assert!(is_sha256_hex(ORIGINAL));
        assert!(is_sha256_hex(&"0".repeat(64)));
        for bad in [
            &ORIGINAL.to_uppercase(),
            &ORIGINAL[..63],
            &format!("{ORIGINAL}0"),
            &ORIGINAL.replace('9', "g"),
            "",
        ] {
            assert!(!is_sha256_hex(bad), "{bad}");
        }
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
