//! Signed, expiring links: what lets an `<img>` tag or a download link
//! fetch a protected image without a bearer token.
//!
//! A link is its path plus `expires` (Unix seconds), `kid` and `sig`, the
//! HMAC-SHA256 of the method, path, expiry and key id under the key named
//! by `kid`, URL-safe base64. Keys rotate by id: the first configured key
//! signs, every configured key verifies, so links signed before a rotation
//! keep working until the old key is removed.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use ring::hmac;

/// Shortest signing secret accepted: HMAC-SHA256 wants at least 256 bits.
pub const MIN_KEY_BYTES: usize = 32;

/// Why a signed link was refused, in words safe to send back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    #[error("the link's signature parameters are incomplete: it needs `expires`, `kid` and `sig`")]
    Incomplete,
    #[error("the link expired")]
    Expired,
    #[error("the link was signed with a key this service does not have (kid {0:?})")]
    UnknownKey(String),
    #[error("the link's signature does not match its path and expiry")]
    BadSignature,
}

/// One signing key.
#[derive(Clone)]
struct SigningKey {
    id: String,
    key: hmac::Key,
}

/// Signs and checks links.
#[derive(Clone)]
pub struct UrlSigner {
    /// The first signs; all verify.
    keys: Vec<SigningKey>,
    ttl: Duration,
}

impl UrlSigner {
    /// Parses `NWS_URL_SIGNING_KEY`: `kid:secret` entries separated by
    /// commas, the signing key first.
    pub fn parse(value: &str, ttl: Duration) -> Result<Self, String> {
        let mut keys = Vec::new();
        for entry in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (id, secret) = entry
                .split_once(':')
                .ok_or("expected kid:secret entries separated by commas, e.g. k2:<secret>,k1:<old secret>")?;
            if id.is_empty()
                || !id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err("a key id is letters, digits, '-' or '_'".to_owned());
            }
            if secret.len() < MIN_KEY_BYTES {
                return Err(format!("key {id:?} is shorter than {MIN_KEY_BYTES} bytes"));
            }
            if keys.iter().any(|k: &SigningKey| k.id == id) {
                return Err(format!("key id {id:?} appears twice"));
            }
            keys.push(SigningKey {
                id: id.to_owned(),
                key: hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes()),
            });
        }
        if keys.is_empty() {
            return Err("no key given".to_owned());
        }
        Ok(Self { keys, ttl })
    }

    /// `path` with the query that makes it a link valid for the configured
    /// time.
    pub fn sign(&self, path: &str) -> String {
        let expires = now_secs() + self.ttl.as_secs();
        self.sign_until(path, expires)
    }

    fn sign_until(&self, path: &str, expires: u64) -> String {
        let signer = &self.keys[0];
        let tag = hmac::sign(&signer.key, &message(path, expires, &signer.id));
        format!(
            "{path}?expires={expires}&kid={}&sig={}",
            signer.id,
            URL_SAFE_NO_PAD.encode(tag.as_ref())
        )
    }

    /// Whether `query` carries any signature parameter (then it must verify).
    pub fn is_signed(query: Option<&str>) -> bool {
        query.is_some_and(|q| q.split('&').any(|pair| pair.starts_with("sig=")))
    }

    /// Checks the signature `query` carries for `path`.
    pub fn verify(&self, path: &str, query: Option<&str>) -> Result<(), LinkError> {
        self.verify_at(path, query, now_secs())
    }

    fn verify_at(&self, path: &str, query: Option<&str>, now: u64) -> Result<(), LinkError> {
        let (mut expires, mut kid, mut sig) = (None, None, None);
        for pair in query.unwrap_or_default().split('&') {
            match pair.split_once('=') {
                Some(("expires", v)) => expires = v.parse::<u64>().ok(),
                Some(("kid", v)) => kid = Some(v),
                Some(("sig", v)) => sig = URL_SAFE_NO_PAD.decode(v).ok(),
                _ => {}
            }
        }
        let (Some(expires), Some(kid), Some(sig)) = (expires, kid, sig) else {
            return Err(LinkError::Incomplete);
        };
        let key = self
            .keys
            .iter()
            .find(|k| k.id == kid)
            .ok_or_else(|| LinkError::UnknownKey(kid.to_owned()))?;
        // The signature first: an attacker learns nothing about expiry
        // handling from a forged link.
        hmac::verify(&key.key, &message(path, expires, kid), &sig).map_err(|_| LinkError::BadSignature)?;
        if now >= expires {
            return Err(LinkError::Expired);
        }
        Ok(())
    }
}

impl std::fmt::Debug for UrlSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|k| k.id.as_str()).collect();
        f.debug_struct("UrlSigner")
            .field("key_ids", &ids)
            .field("ttl", &self.ttl)
            .finish()
    }
}

fn message(path: &str, expires: u64, kid: &str) -> Vec<u8> {
    format!("GET\n{path}\n{expires}\n{kid}").into_bytes()
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    const OLD: &str = "k1:0123456789abcdef0123456789abcdef";
    const NEW: &str = "k2:fedcba9876543210fedcba9876543210";

    fn query(link: &str) -> Option<&str> {
        link.split_once('?').map(|(_, q)| q)
    }

    #[test]
    fn links_verify_until_they_expire() {
        let signer = UrlSigner::parse(OLD, Duration::from_secs(60)).unwrap();
        let link = signer.sign_until("/v1/images/abc", 1_000);
        assert_eq!(signer.verify_at("/v1/images/abc", query(&link), 999), Ok(()));
        assert_eq!(
            signer.verify_at("/v1/images/abc", query(&link), 1_000),
            Err(LinkError::Expired)
        );
        assert_eq!(
            signer.verify_at("/v1/images/abd", query(&link), 999),
            Err(LinkError::BadSignature)
        );
        let later = query(&link).unwrap().replace("expires=1000", "expires=9000");
        assert_eq!(
            signer.verify_at("/v1/images/abc", Some(&later), 999),
            Err(LinkError::BadSignature)
        );
        assert_eq!(
            signer.verify_at("/v1/images/abc", Some("expires=5"), 1),
            Err(LinkError::Incomplete)
        );
    }

    #[test]
    fn rotation_keeps_old_links_until_their_key_is_removed() {
        let before = UrlSigner::parse(OLD, Duration::from_secs(60)).unwrap();
        let link = before.sign_until("/image/x", 1_000);
        let rotated = UrlSigner::parse(&format!("{NEW},{OLD}"), Duration::from_secs(60)).unwrap();
        assert_eq!(rotated.verify_at("/image/x", query(&link), 10), Ok(()));
        assert!(rotated.sign_until("/image/x", 1_000).contains("kid=k2"));
        let retired = UrlSigner::parse(NEW, Duration::from_secs(60)).unwrap();
        assert_eq!(
            retired.verify_at("/image/x", query(&link), 10),
            Err(LinkError::UnknownKey("k1".into()))
        );
    }

    #[test]
    fn keys_are_checked_when_configured() {
        assert!(
            UrlSigner::parse("k1:short", Duration::ZERO)
                .unwrap_err()
                .contains("shorter")
        );
        assert!(UrlSigner::parse("nocolon", Duration::ZERO).is_err());
        assert!(
            UrlSigner::parse(&format!("{OLD},{OLD}"), Duration::ZERO)
                .unwrap_err()
                .contains("twice")
        );
        assert!(UrlSigner::parse(" ", Duration::ZERO).is_err());
    }
}
