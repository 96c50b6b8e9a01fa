//! Bearer tokens: JWTs verified against public keys from a JWKS (file or
//! URL, refreshed in the background, rotated by `kid`) or, for
//! development, one HS256 shared secret.
//!
//! The algorithms a key accepts come from the key itself (its `kty`, `crv`
//! and `alg`), never from the token's header: a token that names HS256
//! over an RSA key (the classic confusion, the public key used as an HMAC
//! secret) or `none` finds no key that accepts it.

use std::{
    collections::HashMap,
    hash::{BuildHasher as _, RandomState},
    path::PathBuf,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use jsonwebtoken::{
    Algorithm, DecodingKey, Validation,
    errors::ErrorKind,
    jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm},
};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

/// Why a token was refused, in words safe to send back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("no bearer token: send `Authorization: Bearer <JWT>`")]
    Missing,
    #[error("the token is not a well-formed JWT ({0})")]
    Malformed(String),
    #[error("the token's algorithm ({0}) is not accepted for its key")]
    Algorithm(String),
    #[error("the token names a key (kid {0:?}) this service does not know")]
    UnknownKey(String),
    #[error("the token's signature does not verify")]
    Signature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet (nbf)")]
    NotYetValid,
    #[error("the token was issued for another audience")]
    Audience,
    #[error("the token was issued by another issuer")]
    Issuer,
    #[error("the token has no `{0}` claim")]
    MissingClaim(&'static str),
}

/// What a verified token says about its bearer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    pub sub: String,
    pub scopes: Vec<String>,
}

#[derive(Deserialize)]
struct RawClaims {
    sub: Option<String>,
    exp: Option<u64>,
    /// OAuth 2.0's space-separated `scope` (RFC 8693), or a list (`scp`, as
    /// some issuers write it).
    #[serde(default)]
    scope: Option<ScopeClaim>,
    #[serde(default)]
    scp: Option<ScopeClaim>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ScopeClaim {
    Spaced(String),
    List(Vec<String>),
}

impl ScopeClaim {
    fn into_scopes(self) -> Vec<String> {
        match self {
            ScopeClaim::Spaced(scopes) => scopes.split_whitespace().map(str::to_owned).collect(),
            ScopeClaim::List(scopes) => scopes,
        }
    }
}

/// A key and the only algorithms it verifies.
#[derive(Clone)]
struct VerifyingKey {
    key: DecodingKey,
    algorithms: Vec<Algorithm>,
}

/// The keys in force.
#[derive(Default)]
struct KeySet {
    by_kid: HashMap<String, VerifyingKey>,
    /// Keys published without a `kid`: tried for tokens without one.
    anonymous: Vec<VerifyingKey>,
}

impl KeySet {
    fn from_jwks(jwks: &JwkSet) -> Self {
        let mut set = KeySet::default();
        for jwk in &jwks.keys {
            match verifying_key(jwk) {
                Ok(key) => match &jwk.common.key_id {
                    Some(kid) => {
                        set.by_kid.insert(kid.clone(), key);
                    }
                    None => set.anonymous.push(key),
                },
                Err(reason) => tracing::warn!(kid = ?jwk.common.key_id, %reason, "JWKS key skipped"),
            }
        }
        set
    }

    fn len(&self) -> usize {
        self.by_kid.len() + self.anonymous.len()
    }
}

/// The algorithms a published key may verify, from its type and curve; a
/// key that states its `alg` is held to that one.
fn verifying_key(jwk: &Jwk) -> Result<VerifyingKey, String> {
    let by_type: Vec<Algorithm> = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => vec![
            Algorithm::RS256,
            Algorithm::RS384,
            Algorithm::RS512,
            Algorithm::PS256,
            Algorithm::PS384,
            Algorithm::PS512,
        ],
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => vec![Algorithm::ES256],
            EllipticCurve::P384 => vec![Algorithm::ES384],
            ref other => return Err(format!("unsupported curve {other:?}")),
        },
        AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => {
            vec![Algorithm::EdDSA]
        }
        AlgorithmParameters::OctetKeyPair(okp) => return Err(format!("unsupported curve {:?}", okp.curve)),
        // A shared secret has no place in a public key set.
        AlgorithmParameters::OctetKey(_) => {
            return Err("symmetric (oct) keys are not accepted from a JWKS".into());
        }
    };
    let algorithms = match jwk.common.key_algorithm {
        None => by_type,
        Some(stated) => {
            let stated = algorithm_of(stated).ok_or_else(|| format!("unsupported alg {stated:?}"))?;
            if !by_type.contains(&stated) {
                return Err(format!("alg {stated:?} does not fit the key type"));
            }
            vec![stated]
        }
    };
    let key = DecodingKey::from_jwk(jwk).map_err(|e| e.to_string())?;
    Ok(VerifyingKey { key, algorithms })
}

fn algorithm_of(stated: KeyAlgorithm) -> Option<Algorithm> {
    Some(match stated {
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}

/// Where a JWKS comes from.
#[derive(Debug, Clone)]
pub enum JwksSource {
    File(PathBuf),
    Url(reqwest::Url),
}

impl JwksSource {
    /// An `http(s)://` URL, else a file path.
    pub fn parse(value: &str) -> Self {
        match reqwest::Url::parse(value) {
            Ok(url) if matches!(url.scheme(), "http" | "https") => JwksSource::Url(url),
            _ => JwksSource::File(PathBuf::from(value)),
        }
    }
}

impl std::fmt::Display for JwksSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JwksSource::File(path) => write!(f, "{}", path.display()),
            JwksSource::Url(url) => write!(f, "{url}"),
        }
    }
}

/// Largest JWKS document read: a few keys are a few KB.
const MAX_JWKS_BYTES: usize = 1 << 20;

/// A JWKS kept current: fetched at start, refreshed every `refresh`, and
/// refetched at most once per `min_refetch` when a token names a `kid` it
/// does not have (a rotation the refresh has not seen yet).
struct Jwks {
    source: JwksSource,
    /// Changes whenever the keys do, so that tokens verified with a key
    /// since removed are verified again.
    generation: AtomicU64,
    http: reqwest::Client,
    keys: RwLock<Arc<KeySet>>,
    last_fetch: Mutex<Instant>,
    min_refetch: Duration,
}

impl Jwks {
    async fn fetch(&self) -> anyhow::Result<KeySet> {
        let bytes = match &self.source {
            JwksSource::File(path) => tokio::fs::read(path)
                .await
                .with_context(|| format!("reading {}", path.display()))?,
            JwksSource::Url(url) => {
                let response = self
                    .http
                    .get(url.clone())
                    .send()
                    .await
                    .and_then(reqwest::Response::error_for_status)
                    .with_context(|| format!("fetching {url}"))?;
                let bytes = response.bytes().await.with_context(|| format!("reading {url}"))?;
                bytes.to_vec()
            }
        };
        if bytes.len() > MAX_JWKS_BYTES {
            bail!("{} is over {MAX_JWKS_BYTES} bytes", self.source);
        }
        let jwks: JwkSet =
            serde_json::from_slice(&bytes).with_context(|| format!("{} is not a JWKS", self.source))?;
        let set = KeySet::from_jwks(&jwks);
        if set.len() == 0 {
            bail!("{} has no usable key", self.source);
        }
        Ok(set)
    }

    async fn refresh(&self) -> anyhow::Result<()> {
        *self.last_fetch.lock().expect("never poisoned") = Instant::now();
        let set = self.fetch().await?;
        let count = set.len();
        let kids: Vec<String> = set.by_kid.keys().cloned().collect();
        let previous = std::mem::replace(&mut *self.keys.write().expect("never poisoned"), Arc::new(set));
        if previous.len() != count || !kids.iter().all(|kid| previous.by_kid.contains_key(kid)) {
            self.generation.fetch_add(1, Ordering::Relaxed);
            tracing::info!(source = %self.source, keys = count, "JWKS keys changed");
        }
        Ok(())
    }

    fn current(&self) -> Arc<KeySet> {
        self.keys.read().expect("never poisoned").clone()
    }

    /// Whether an unknown `kid` may trigger a refetch now.
    fn may_refetch(&self) -> bool {
        let mut last = self.last_fetch.lock().expect("never poisoned");
        if last.elapsed() < self.min_refetch {
            return false;
        }
        *last = Instant::now();
        true
    }
}

/// Verification settings.
#[derive(Debug, Clone)]
pub struct VerifierSettings {
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub leeway: Duration,
}

enum Keys {
    Secret(VerifyingKey),
    Jwks(Arc<Jwks>),
}

/// Verifies bearer tokens.
pub struct Verifier {
    keys: Keys,
    settings: VerifierSettings,
    verified: Verified,
}

impl Verifier {
    /// HS256 with a shared secret (development, or a single trusted issuer).
    pub fn hs256(secret: &[u8], settings: VerifierSettings) -> Self {
        Self {
            keys: Keys::Secret(VerifyingKey {
                key: DecodingKey::from_secret(secret),
                algorithms: vec![Algorithm::HS256],
            }),
            settings,
            verified: Verified::new(),
        }
    }

    /// Public keys from `source`, fetched now (a set that cannot be read
    /// stops the start), then every `refresh` until `stop`.
    pub async fn jwks(
        source: JwksSource,
        refresh: Duration,
        settings: VerifierSettings,
        stop: CancellationToken,
    ) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .context("building the JWKS client")?;
        let jwks = Jwks {
            source,
            generation: AtomicU64::new(0),
            http,
            keys: RwLock::new(Arc::default()),
            last_fetch: Mutex::new(Instant::now()),
            min_refetch: Duration::from_secs(10).min(refresh),
        };
        jwks.refresh()
            .await
            .with_context(|| format!("NWS_AUTH_JWKS: cannot load the key set from {}", jwks.source))?;
        let jwks = Arc::new(jwks);
        let refreshing = Arc::downgrade(&jwks);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = tokio::time::sleep(refresh) => {}
                    () = stop.cancelled() => return,
                }
                let Some(jwks) = refreshing.upgrade() else { return };
                if let Err(error) = jwks.refresh().await {
                    tracing::warn!(
                        error = format!("{error:#}"),
                        "JWKS refresh failed; the keys in force stay"
                    );
                }
            }
        });
        Ok(Self {
            keys: Keys::Jwks(jwks),
            settings,
            verified: Verified::new(),
        })
    }

    /// A short description for the start-up log line.
    pub fn describe(&self) -> String {
        let keys = match &self.keys {
            Keys::Secret(_) => "HS256 shared secret (NWS_AUTH_HS256_SECRET)".to_owned(),
            Keys::Jwks(jwks) => format!("{} keys from {}", jwks.current().len(), jwks.source),
        };
        let issuer = self
            .settings
            .issuer
            .as_deref()
            .unwrap_or("any (NWS_AUTH_ISSUER unset)");
        let audience = self
            .settings
            .audience
            .as_deref()
            .unwrap_or("any (NWS_AUTH_AUDIENCE unset)");
        format!("{keys}; issuer {issuer}; audience {audience}")
    }

    /// Verifies `token` and returns what it says. A client sends the same
    /// token with every request until it expires, so a token verified
    /// once is remembered until then (at most five minutes, and only while
    /// the keys stay the same): its signature, tens of microseconds for
    /// ES256, is checked once.
    pub async fn verify(&self, token: &str) -> Result<Arc<Claims>, TokenError> {
        let generation = self.generation();
        let now = unix_now();
        if let Some(claims) = self.verified.get(token, generation, now) {
            return Ok(claims);
        }
        let (claims, expires) = self.verify_signed(token).await?;
        let claims = Arc::new(claims);
        if let Some(expires) = expires {
            self.verified
                .insert(token, &claims, generation, expires.min(now + MAX_REMEMBERED_SECS));
        }
        Ok(claims)
    }

    fn generation(&self) -> u64 {
        match &self.keys {
            Keys::Secret(_) => 0,
            Keys::Jwks(jwks) => jwks.generation.load(Ordering::Relaxed),
        }
    }

    async fn verify_signed(&self, token: &str) -> Result<(Claims, Option<u64>), TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| match e.kind() {
            // `none` (or anything else unknown) is no algorithm at all.
            ErrorKind::Json(_) if header_names_alg_none(token) => TokenError::Algorithm("none".to_owned()),
            _ => TokenError::Malformed(e.to_string()),
        })?;
        let key = self.key_for(header.kid.as_deref(), header.alg).await?;
        let mut validation = Validation::new(header.alg);
        validation.algorithms = key.algorithms.clone();
        validation.leeway = self.settings.leeway.as_secs();
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        match &self.settings.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                validation.required_spec_claims.insert("aud".to_owned());
            }
            None => validation.validate_aud = false,
        }
        if let Some(issuer) = &self.settings.issuer {
            validation.set_issuer(&[issuer]);
            validation.required_spec_claims.insert("iss".to_owned());
        }
        let data =
            jsonwebtoken::decode::<RawClaims>(token, &key.key, &validation).map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => TokenError::Expired,
                ErrorKind::ImmatureSignature => TokenError::NotYetValid,
                ErrorKind::InvalidAudience => TokenError::Audience,
                ErrorKind::InvalidIssuer => TokenError::Issuer,
                ErrorKind::InvalidSignature => TokenError::Signature,
                ErrorKind::InvalidAlgorithm => TokenError::Algorithm(format!("{:?}", header.alg)),
                ErrorKind::MissingRequiredClaim(claim) => TokenError::MissingClaim(match claim.as_str() {
                    "exp" => "exp",
                    "aud" => "aud",
                    "iss" => "iss",
                    _ => "sub",
                }),
                _ => TokenError::Malformed(e.to_string()),
            })?;
        let claims = data.claims;
        let scopes = claims
            .scope
            .or(claims.scp)
            .map(ScopeClaim::into_scopes)
            .unwrap_or_default();
        let verified = Claims {
            sub: claims.sub.ok_or(TokenError::MissingClaim("sub"))?,
            scopes,
        };
        Ok((verified, claims.exp))
    }

    async fn key_for(&self, kid: Option<&str>, alg: Algorithm) -> Result<VerifyingKey, TokenError> {
        let jwks = match &self.keys {
            Keys::Secret(key) => {
                return accepting(key, alg).cloned();
            }
            Keys::Jwks(jwks) => jwks,
        };
        let find = |set: &KeySet| -> Option<Result<VerifyingKey, TokenError>> {
            match kid {
                Some(kid) => set.by_kid.get(kid).map(|key| accepting(key, alg).cloned()),
                None => {
                    let mut keys = set.anonymous.iter().chain(set.by_kid.values());
                    Some(
                        keys.find(|key| key.algorithms.contains(&alg))
                            .cloned()
                            .ok_or_else(|| TokenError::Algorithm(format!("{alg:?}"))),
                    )
                }
            }
        };
        if let Some(found) = find(&jwks.current()) {
            return found;
        }
        let kid = kid.unwrap_or_default().to_owned();
        // A kid we have never seen: maybe the issuer rotated. Ask once.
        if jwks.may_refetch() {
            if let Err(error) = jwks.refresh().await {
                tracing::warn!(
                    error = format!("{error:#}"),
                    "JWKS refetch for an unknown kid failed"
                );
            }
            if let Some(found) = find(&jwks.current()) {
                return found;
            }
        }
        Err(TokenError::UnknownKey(kid))
    }
}

/// The longest a verified token is remembered, whatever its `exp`.
const MAX_REMEMBERED_SECS: u64 = 300;

/// Tokens remembered per shard; a full shard forgets its expired tokens,
/// or all of them.
const REMEMBERED_PER_SHARD: usize = 1024;

const VERIFIED_SHARDS: usize = 16;

/// Tokens whose signature and claims were checked, by the whole token
/// (compared in full: a hash alone would let a collision pass), until
/// their `exp`.
struct Verified {
    hasher: RandomState,
    shards: Box<[Mutex<HashMap<u64, Remembered>>]>,
}

struct Remembered {
    token: Box<str>,
    claims: Arc<Claims>,
    generation: u64,
    until: u64,
}

impl Verified {
    fn new() -> Self {
        Self {
            hasher: RandomState::new(),
            shards: (0..VERIFIED_SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    fn shard(&self, token: &str) -> (u64, &Mutex<HashMap<u64, Remembered>>) {
        let hash = self.hasher.hash_one(token);
        (hash, &self.shards[(hash as usize) % VERIFIED_SHARDS])
    }

    fn get(&self, token: &str, generation: u64, now: u64) -> Option<Arc<Claims>> {
        let (hash, shard) = self.shard(token);
        let shard = shard.lock().expect("never poisoned");
        let remembered = shard.get(&hash)?;
        (remembered.generation == generation && now < remembered.until && &*remembered.token == token)
            .then(|| remembered.claims.clone())
    }

    fn insert(&self, token: &str, claims: &Arc<Claims>, generation: u64, until: u64) {
        let (hash, shard) = self.shard(token);
        let mut shard = shard.lock().expect("never poisoned");
        if shard.len() >= REMEMBERED_PER_SHARD {
            let now = unix_now();
            shard.retain(|_, r| now < r.until && r.generation == generation);
            if shard.len() >= REMEMBERED_PER_SHARD {
                shard.clear();
            }
        }
        shard.insert(
            hash,
            Remembered {
                token: token.into(),
                claims: claims.clone(),
                generation,
                until,
            },
        );
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

fn accepting(key: &VerifyingKey, alg: Algorithm) -> Result<&VerifyingKey, TokenError> {
    if key.algorithms.contains(&alg) {
        Ok(key)
    } else {
        Err(TokenError::Algorithm(format!("{alg:?}")))
    }
}

/// Whether a token's header says `"alg": "none"` (to name the refusal).
fn header_names_alg_none(token: &str) -> bool {
    use base64::Engine as _;
    let Some(header) = token.split('.').next() else {
        return false;
    };
    let Ok(bytes) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(header) else {
        return false;
    };
    serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| v.get("alg")?.as_str().map(|alg| alg.eq_ignore_ascii_case("none")))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_verified_token_is_remembered_only_while_valid_and_while_the_keys_stay() {
        let verified = Verified::new();
        let claims = Arc::new(Claims {
            sub: "alice".into(),
            scopes: vec!["images:read".into()],
        });
        verified.insert("header.payload.sig", &claims, 7, 1_000);
        assert_eq!(verified.get("header.payload.sig", 7, 999), Some(claims));
        assert_eq!(verified.get("header.payload.sig", 7, 1_000), None, "expired");
        assert_eq!(
            verified.get("header.payload.sig", 8, 999),
            None,
            "the keys changed"
        );
        assert_eq!(verified.get("header.payload.sih", 7, 999), None, "another token");
    }

    #[test]
    fn alg_none_is_named_as_such() {
        let token = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.";
        assert!(header_names_alg_none(token));
        assert!(!header_names_alg_none("eyJhbGciOiJIUzI1NiJ9.e30.sig"));
    }
}
