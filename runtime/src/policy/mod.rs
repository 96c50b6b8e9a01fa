//! Who may call, and how often: bearer tokens (JWT), scopes, signed links,
//! per-caller rate limits and CORS, written once and run as a layer of
//! every server (gRPC: [`crate::grpc`]'s layer stack; HTTP:
//! [`crate::http::layer_stack`]).
//!
//! What each call needs is the API's contract ([`nws_watermark::access`]
//! for RPCs; the gateway's [`HttpRules`] for its routes). Nothing is
//! checked when nothing is configured: the all-in-one default is open and
//! says so in one log line.

pub mod client_ip;
pub mod jwt;
pub mod limit;
pub mod signed;

use std::{collections::HashMap, fmt, net::IpAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use clap::Args;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use nws_watermark::access::{Access, RateClass};
use tokio_util::sync::CancellationToken;

pub use client_ip::Network;
pub use jwt::{Claims, TokenError};
pub use limit::{Decision, Rate, SharedLimiter};
pub use signed::{LinkError, UrlSigner};

use crate::config::parse_duration;

/// Settings of authentication, rate limits, signed links and CORS; flags
/// with `NWS_*` environment fallbacks, the same in every binary.
#[derive(Debug, Clone, Args)]
pub struct PolicyConfig {
    /// Public keys that sign bearer tokens: a JWKS file or an https URL.
    /// Fetched at start, refreshed every NWS_AUTH_JWKS_REFRESH, refetched
    /// (at most every 10 s) when a token names an unknown `kid`. Setting it
    /// turns authentication on.
    #[arg(long, env = "NWS_AUTH_JWKS")]
    pub auth_jwks: Option<String>,

    /// Shared secret for HS256 tokens, for development; turns
    /// authentication on. Never logged.
    #[arg(long, env = "NWS_AUTH_HS256_SECRET", hide_env_values = true)]
    pub auth_hs256_secret: Option<Secret>,

    /// The `iss` every token must carry; unset: not checked.
    #[arg(long, env = "NWS_AUTH_ISSUER")]
    pub auth_issuer: Option<String>,

    /// The `aud` every token must carry; unset: not checked.
    #[arg(long, env = "NWS_AUTH_AUDIENCE")]
    pub auth_audience: Option<String>,

    /// Clock skew tolerated on `exp` and `nbf`.
    #[arg(long, env = "NWS_AUTH_LEEWAY", default_value = "30s", value_parser = parse_duration)]
    pub auth_leeway: Duration,

    /// How often the JWKS is fetched again.
    #[arg(long, env = "NWS_AUTH_JWKS_REFRESH", default_value = "5m", value_parser = parse_duration)]
    pub auth_jwks_refresh: Duration,

    /// Token this process sends to the services it calls for work no
    /// caller's token covers: background renders, reads through signed
    /// links. Calls made for a caller forward the caller's token. Needed
    /// when the services check tokens. Never logged.
    #[arg(long, env = "NWS_UPSTREAM_TOKEN", hide_env_values = true)]
    pub upstream_token: Option<Secret>,

    /// Serve gRPC server reflection (what grpcurl lists and describes).
    #[arg(long, env = "NWS_REFLECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub reflection: bool,

    /// Uploads per second per caller (token `sub`, else client IP); `0`
    /// turns the limit off. Default: 2 at the HTTP edge, off on the gRPC
    /// services (their callers are gateways).
    #[arg(long, env = "NWS_RATE_LIMIT_RPS", value_parser = parse_rps)]
    pub rate_limit_rps: Option<f64>,

    /// Uploads a caller may make at once before the rate applies (default 10).
    #[arg(long, env = "NWS_RATE_LIMIT_BURST", value_parser = clap::value_parser!(u32).range(1..))]
    pub rate_limit_burst: Option<u32>,

    /// Reads (results, originals) per second per caller; `0` turns the
    /// limit off. Default: 50 at the HTTP edge, off on the gRPC services.
    #[arg(long, env = "NWS_READ_RATE_LIMIT_RPS", value_parser = parse_rps)]
    pub read_rate_limit_rps: Option<f64>,

    /// Reads a caller may make at once (default 100).
    #[arg(long, env = "NWS_READ_RATE_LIMIT_BURST", value_parser = clap::value_parser!(u32).range(1..))]
    pub read_rate_limit_burst: Option<u32>,

    /// Keep the limits in Redis (NWS_REDIS_URL), shared by every gateway
    /// replica. When Redis fails, each replica applies them alone and
    /// `/readyz` says `degraded`.
    #[arg(long, env = "NWS_RATE_LIMIT_REDIS", default_value_t = false, action = clap::ArgAction::Set)]
    pub rate_limit_redis: bool,

    /// Most callers whose buckets are kept in memory per limit (16 bytes
    /// each plus the table's slack: 100,000 stay under 4 MiB).
    #[arg(long, env = "NWS_RATE_LIMIT_MAX_KEYS", default_value_t = 100_000)]
    pub rate_limit_max_keys: usize,

    /// Proxies whose `Forwarded`/`X-Forwarded-For` name the client: CIDR
    /// networks separated by commas (e.g. `10.0.0.0/8,fd00::/8`). Unset:
    /// the connection's peer is the client.
    #[arg(long, env = "NWS_TRUSTED_PROXIES", value_parser = parse_networks)]
    pub trusted_proxies: Option<Networks>,

    /// Keys for signed links: `kid:secret` entries (secrets of 32 bytes or
    /// more) separated by commas; the first signs, all verify. Never logged.
    #[arg(long, env = "NWS_URL_SIGNING_KEY", hide_env_values = true)]
    pub url_signing_key: Option<Secret>,

    /// How long a signed link works.
    #[arg(long, env = "NWS_URL_TTL", default_value = "1h", value_parser = parse_duration)]
    pub url_ttl: Duration,

    /// Origins (e.g. `https://app.example`) whose web pages may call the
    /// HTTP API, separated by commas; none by default.
    #[arg(long, env = "NWS_CORS_ORIGINS", value_parser = parse_origins)]
    pub cors_origins: Option<Origins>,
}

/// A setting that must not be shown: `Debug` prints `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        Ok(Self(value.to_owned()))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Networks(pub Vec<Network>);

#[derive(Debug, Clone, PartialEq)]
pub struct Origins(pub Vec<HeaderValue>);

fn parse_rps(value: &str) -> Result<f64, String> {
    match value.trim().parse::<f64>() {
        Ok(rps) if rps.is_finite() && rps >= 0.0 => Ok(rps),
        _ => Err("expected requests per second, e.g. 2 or 0.5; 0 turns the limit off".to_owned()),
    }
}

fn parse_networks(value: &str) -> Result<Networks, String> {
    client_ip::parse_networks(value).map(Networks)
}

fn parse_origins(value: &str) -> Result<Origins, String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|o| !o.is_empty())
        .map(|origin| {
            let uri: http::Uri = origin
                .parse()
                .map_err(|_| format!("{origin:?} is not an origin"))?;
            match (uri.scheme_str(), uri.host(), uri.path()) {
                (Some("http" | "https"), Some(_), "/" | "") if !origin.ends_with('/') => {
                    HeaderValue::from_str(origin).map_err(|_| format!("{origin:?} is not an origin"))
                }
                _ => Err(format!(
                    "{origin:?} is not an origin: expected scheme://host[:port], no path"
                )),
            }
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Origins)
}

/// Where a server stands, for defaults that differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The public HTTP edge: rate limits on by default.
    Edge,
    /// A gRPC service deployed on its own: authenticates when keys are
    /// configured; rate limits only when set.
    Service,
    /// A service inside the all-in-one process, called only by its own
    /// gateway: authenticates only when the gateway sends a token of its
    /// own (NWS_UPSTREAM_TOKEN), since its background work has no caller
    /// whose token it could forward; never rate-limits (the gateway did).
    Embedded,
}

/// The policy of one server, cheap to clone.
#[derive(Clone)]
pub struct Policy(Arc<Inner>);

struct Inner {
    verifier: Option<jwt::Verifier>,
    upload: Option<limit::Buckets>,
    read: Option<limit::Buckets>,
    shared: Option<limit::Shared>,
    signer: Option<UrlSigner>,
    trusted_proxies: Vec<Network>,
    cors_origins: Vec<HeaderValue>,
    reflection: bool,
}

impl Policy {
    /// Builds the policy `config` describes for a server in `role`;
    /// background work (JWKS refresh, bucket sweeps) stops with `stop`.
    /// Keys that cannot be loaded stop the start, naming the setting.
    pub async fn build(config: &PolicyConfig, role: Role, stop: CancellationToken) -> anyhow::Result<Self> {
        let authenticates = match role {
            Role::Edge | Role::Service => true,
            Role::Embedded => config.upstream_token.is_some(),
        };
        let settings = jwt::VerifierSettings {
            issuer: config.auth_issuer.clone(),
            audience: config.auth_audience.clone(),
            leeway: config.auth_leeway,
        };
        let verifier = match (&config.auth_jwks, &config.auth_hs256_secret) {
            _ if !authenticates => None,
            (Some(_), Some(_)) => {
                anyhow::bail!("NWS_AUTH_JWKS and NWS_AUTH_HS256_SECRET are both set: choose one")
            }
            (Some(source), None) => Some(
                jwt::Verifier::jwks(
                    jwt::JwksSource::parse(source),
                    config.auth_jwks_refresh,
                    settings,
                    stop.clone(),
                )
                .await?,
            ),
            (None, Some(secret)) if secret.expose().len() < 32 => {
                anyhow::bail!("NWS_AUTH_HS256_SECRET is shorter than 32 bytes")
            }
            (None, Some(secret)) => Some(jwt::Verifier::hs256(secret.expose().as_bytes(), settings)),
            (None, None) => None,
        };
        let limits_by_default = role == Role::Edge;
        let buckets = |rps: Option<f64>, burst: Option<u32>, default: Rate| {
            // An embedded service sees every caller's calls through one
            // gateway, which has already counted them.
            if role == Role::Embedded {
                return None;
            }
            let rps = rps.or(limits_by_default.then_some(default.per_second))?;
            (rps > 0.0).then(|| {
                limit::Buckets::new(
                    Rate {
                        per_second: rps,
                        burst: burst.unwrap_or(default.burst),
                    },
                    config.rate_limit_max_keys,
                )
            })
        };
        let upload = buckets(
            config.rate_limit_rps,
            config.rate_limit_burst,
            Rate {
                per_second: 2.0,
                burst: 10,
            },
        );
        let read = buckets(
            config.read_rate_limit_rps,
            config.read_rate_limit_burst,
            Rate {
                per_second: 50.0,
                burst: 100,
            },
        );
        let signer = config
            .url_signing_key
            .as_ref()
            .map(|keys| UrlSigner::parse(keys.expose(), config.url_ttl))
            .transpose()
            .map_err(|reason| anyhow::anyhow!("NWS_URL_SIGNING_KEY: {reason}"))?;
        let upstream_token = config
            .upstream_token
            .as_ref()
            .map(|token| bearer_value(token.expose()))
            .transpose()
            .context("NWS_UPSTREAM_TOKEN is not a valid header value")?;
        if let Some(token) = &upstream_token {
            // Every channel of the process sends it, background work included.
            let _ = UPSTREAM_TOKEN.set(token.clone());
        }
        let policy = Self(Arc::new(Inner {
            verifier,
            upload,
            read,
            shared: None,
            signer,
            trusted_proxies: config.trusted_proxies.clone().map(|n| n.0).unwrap_or_default(),
            cors_origins: config.cors_origins.clone().map(|o| o.0).unwrap_or_default(),
            reflection: config.reflection,
        }));
        policy.spawn_sweeps(stop);
        Ok(policy)
    }

    /// No checks at all (tests, and tools that embed a server).
    pub fn open() -> Self {
        Self(Arc::new(Inner {
            verifier: None,
            upload: None,
            read: None,
            shared: None,
            signer: None,
            trusted_proxies: Vec::new(),
            cors_origins: Vec::new(),
            reflection: true,
        }))
    }

    /// Keeps the rate limits in `limiter` (shared by replicas), falling
    /// back to this process's buckets while it fails.
    pub fn with_shared_limiter(self, limiter: Arc<dyn SharedLimiter>) -> Self {
        let Ok(mut inner) = Arc::try_unwrap(self.0) else {
            panic!("with_shared_limiter is called while building, before the policy is shared");
        };
        inner.shared = Some(limit::Shared::new(limiter));
        Self(Arc::new(inner))
    }

    fn spawn_sweeps(&self, stop: CancellationToken) {
        if self.0.upload.is_none() && self.0.read.is_none() {
            return;
        }
        let policy = Arc::downgrade(&self.0);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(10)) => {}
                    () = stop.cancelled() => return,
                }
                let Some(policy) = policy.upgrade() else { return };
                for buckets in [&policy.upload, &policy.read].into_iter().flatten() {
                    buckets.sweep();
                }
            }
        });
    }

    /// Whether tokens are checked.
    pub fn authenticates(&self) -> bool {
        self.0.verifier.is_some()
    }

    /// Whether gRPC reflection is served.
    pub fn reflection(&self) -> bool {
        self.0.reflection
    }

    /// The signer of links, when NWS_URL_SIGNING_KEY is set.
    pub fn signer(&self) -> Option<&UrlSigner> {
        self.0.signer.as_ref()
    }

    /// Origins allowed to call the HTTP API from web pages.
    pub fn cors_origins(&self) -> &[HeaderValue] {
        &self.0.cors_origins
    }

    /// `Err(reason)` while the shared limiter fails; `None` without one.
    pub fn shared_limiter_status(&self) -> Option<Result<(), String>> {
        self.0.shared.as_ref().map(limit::Shared::status)
    }

    /// One line for the start-up log: what this server checks.
    pub fn describe(&self, server: &str) {
        let auth = match &self.0.verifier {
            Some(verifier) => format!("on: {}", verifier.describe()),
            None => "off (set NWS_AUTH_JWKS or NWS_AUTH_HS256_SECRET to turn it on)".to_owned(),
        };
        let rate = |buckets: &Option<limit::Buckets>| match buckets {
            Some(b) => format!("{}/s, burst {}", b.rate().per_second, b.rate().burst),
            None => "off".to_owned(),
        };
        tracing::info!(
            server,
            authentication = %auth,
            upload_limit = %rate(&self.0.upload),
            read_limit = %rate(&self.0.read),
            shared_limits = self.0.shared.is_some(),
            signed_links = self.0.signer.is_some(),
            "policy"
        );
    }

    /// Decides whether a call that needs `access` may go on.
    pub async fn admit(&self, access: Access, request: &CallInfo<'_>) -> Result<Admitted, Refusal> {
        let Access::Scoped { scope, class } = access else {
            return Ok(Admitted::default());
        };
        let mut admitted = Admitted::default();
        // A signed link stands in for a token where the route takes them;
        // where no key signs links, its parameters mean nothing.
        let signer = self
            .0
            .signer
            .as_ref()
            .filter(|_| request.signed_links && UrlSigner::is_signed(request.query));
        if let Some(signer) = signer {
            signer
                .verify(request.path, request.query)
                .map_err(Refusal::Link)?;
        } else if let Some(verifier) = &self.0.verifier {
            let (token, value) =
                bearer_token(request.headers).ok_or(Refusal::Unauthenticated(TokenError::Missing))?;
            let claims = verifier.verify(token).await.map_err(Refusal::Unauthenticated)?;
            if !nws_watermark::access::grants(&claims.scopes, scope) {
                return Err(Refusal::Forbidden {
                    scope,
                    sub: claims.sub.clone(),
                });
            }
            admitted.caller = Some(Caller {
                claims,
                token: value.clone(),
            });
        }
        let buckets = match class {
            RateClass::Upload => &self.0.upload,
            RateClass::Read => &self.0.read,
        };
        if let Some(buckets) = buckets {
            let identity = match &admitted.caller {
                Some(caller) => Identity::Sub(caller.sub()),
                None => Identity::Ip(
                    request
                        .peer
                        .map(|peer| client_ip::client_ip(peer, request.headers, &self.0.trusted_proxies)),
                ),
            };
            let decision = self.take(buckets, class, identity).await;
            decisions_counter(class, matches!(decision, Decision::Limited { .. })).increment(1);
            let rate = buckets.rate();
            match decision {
                Decision::Allowed { remaining, reset } => {
                    admitted.rate_limit = Some(RateLimitState {
                        class,
                        rate,
                        remaining,
                        reset,
                    });
                }
                Decision::Limited { retry_after } => {
                    return Err(Refusal::Limited {
                        class,
                        rate,
                        retry_after,
                    });
                }
            }
        }
        Ok(admitted)
    }

    /// One request from `identity`'s bucket: the shared limiter's answer
    /// when it gives one, else this process's.
    async fn take(&self, buckets: &limit::Buckets, class: RateClass, identity: Identity<'_>) -> Decision {
        if let Some(shared) = &self.0.shared {
            let key = identity.to_string();
            let answer = shared.limiter.check(class.name(), &key, buckets.rate()).await;
            match answer {
                Ok(decision) => {
                    shared.record(Ok(()));
                    return decision;
                }
                Err(reason) => shared.record(Err(reason)),
            }
        }
        buckets.check(&identity)
    }
}

/// Whose bucket a call draws from.
#[derive(Debug, Clone, Copy, Hash)]
enum Identity<'a> {
    /// The token's subject.
    Sub(&'a str),
    /// Without a token: the client's address (unknown when the transport
    /// has none to give).
    Ip(Option<IpAddr>),
}

impl fmt::Display for Identity<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::Sub(sub) => write!(f, "sub:{sub}"),
            Identity::Ip(Some(ip)) => write!(f, "ip:{ip}"),
            Identity::Ip(None) => f.write_str("ip:unknown"),
        }
    }
}

/// `nws_rate_limit_decisions_total` for a bucket and an outcome, looked up
/// once: on the hit path, hashing the labels on every call shows.
fn decisions_counter(class: RateClass, limited: bool) -> &'static metrics::Counter {
    static COUNTERS: std::sync::OnceLock<[metrics::Counter; 4]> = std::sync::OnceLock::new();
    let counters = COUNTERS.get_or_init(|| {
        [(RateClass::Upload, "allowed"), (RateClass::Upload, "limited"), (RateClass::Read, "allowed"), (RateClass::Read, "limited")]
            .map(|(class, outcome)| {
                metrics::counter!("nws_rate_limit_decisions_total", "class" => class.name(), "outcome" => outcome)
            })
    });
    let index = match class {
        RateClass::Upload => 0,
        RateClass::Read => 2,
    } + usize::from(limited);
    &counters[index]
}

/// What a layer knows of a call when it decides.
pub struct CallInfo<'a> {
    pub headers: &'a HeaderMap,
    pub path: &'a str,
    pub query: Option<&'a str>,
    /// The connection's peer.
    pub peer: Option<IpAddr>,
    /// Whether a signed link may stand in for a token on this route.
    pub signed_links: bool,
}

/// Who called, when a token said so.
#[derive(Clone)]
pub struct Caller {
    /// What its token says (shared with the verified-token cache).
    pub claims: Arc<Claims>,
    /// The `authorization` value it came with, to forward upstream.
    token: HeaderValue,
}

impl Caller {
    /// The token's subject: who called.
    pub fn sub(&self) -> &str {
        &self.claims.sub
    }
}

impl fmt::Debug for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Caller")
            .field("sub", &self.claims.sub)
            .field("scopes", &self.claims.scopes)
            .finish_non_exhaustive()
    }
}

/// A call let through.
#[derive(Debug, Default)]
pub struct Admitted {
    pub caller: Option<Caller>,
    pub rate_limit: Option<RateLimitState>,
}

/// The caller's bucket after this call, for `RateLimit` headers.
#[derive(Debug, Clone, Copy)]
pub struct RateLimitState {
    pub class: RateClass,
    pub rate: Rate,
    pub remaining: u32,
    /// Until the bucket is full again.
    pub reset: Duration,
}

/// Why a call was refused.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    /// No valid token: 401 / UNAUTHENTICATED.
    Unauthenticated(TokenError),
    /// A valid token without the scope: 403 / PERMISSION_DENIED.
    Forbidden { scope: &'static str, sub: String },
    /// A signed link that does not verify: 403 / PERMISSION_DENIED.
    Link(LinkError),
    /// Over the caller's rate: 429 / RESOURCE_EXHAUSTED.
    Limited {
        class: RateClass,
        rate: Rate,
        retry_after: Duration,
    },
}

impl Refusal {
    pub fn code(&self) -> tonic::Code {
        match self {
            Refusal::Unauthenticated(_) => tonic::Code::Unauthenticated,
            Refusal::Forbidden { .. } | Refusal::Link(_) => tonic::Code::PermissionDenied,
            Refusal::Limited { .. } => tonic::Code::ResourceExhausted,
        }
    }

    pub fn message(&self) -> String {
        match self {
            Refusal::Unauthenticated(reason) => reason.to_string(),
            Refusal::Forbidden { scope, .. } => {
                format!("the token lacks the scope {scope:?} this call needs")
            }
            Refusal::Link(reason) => reason.to_string(),
            Refusal::Limited {
                class, retry_after, ..
            } => format!(
                "too many {} requests from this caller; retry in {:.1} s",
                class.name(),
                retry_after.as_secs_f64()
            ),
        }
    }

    /// The headers of the HTTP refusal besides its JSON body.
    pub fn http_headers(&self) -> HeaderMap {
        let mut headers = HeaderMap::new();
        match self {
            Refusal::Unauthenticated(TokenError::Missing) => {
                // RFC 6750 §3.1: no error code when no credentials were sent.
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"nws-watermark\""),
                );
            }
            Refusal::Unauthenticated(reason) => {
                insert(
                    &mut headers,
                    header::WWW_AUTHENTICATE,
                    format!(
                        "Bearer realm=\"nws-watermark\", error=\"invalid_token\", error_description=\"{}\"",
                        // A quoted-string holds no quotes or line breaks.
                        reason.to_string().replace('"', "'").replace(['\r', '\n'], " ")
                    ),
                );
            }
            Refusal::Forbidden { scope, .. } => insert(
                &mut headers,
                header::WWW_AUTHENTICATE,
                format!("Bearer realm=\"nws-watermark\", error=\"insufficient_scope\", scope=\"{scope}\""),
            ),
            Refusal::Link(_) => {}
            Refusal::Limited {
                class,
                rate,
                retry_after,
            } => {
                // Whole seconds, rounded up: waiting that long is enough.
                let seconds = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
                insert(&mut headers, header::RETRY_AFTER, seconds.to_string());
                insert_rate_limit(&mut headers, *class, *rate, 0, *retry_after);
            }
        }
        headers
    }

    pub fn http_status(&self) -> StatusCode {
        crate::http::http_status(self.code())
    }
}

/// `RateLimit-Policy` and `RateLimit` as draft-ietf-httpapi-ratelimit-headers
/// writes them: `"upload";q=10;w=5` and `"upload";r=9;t=1`.
pub fn insert_rate_limit(
    headers: &mut HeaderMap,
    class: RateClass,
    rate: Rate,
    remaining: u32,
    reset: Duration,
) {
    const RATELIMIT_POLICY: http::HeaderName = http::HeaderName::from_static("ratelimit-policy");
    const RATELIMIT: http::HeaderName = http::HeaderName::from_static("ratelimit");
    let window = rate.window().as_secs_f64().ceil() as u64;
    let reset = reset.as_secs() + u64::from(reset.subsec_nanos() > 0);
    insert(
        headers,
        RATELIMIT_POLICY,
        format!("\"{}\";q={};w={window}", class.name(), rate.burst),
    );
    insert(
        headers,
        RATELIMIT,
        format!("\"{}\";r={remaining};t={reset}", class.name()),
    );
}

fn insert(headers: &mut HeaderMap, name: http::HeaderName, value: String) {
    if let Ok(value) = HeaderValue::try_from(value) {
        headers.insert(name, value);
    }
}

fn bearer_value(token: &str) -> anyhow::Result<HeaderValue> {
    let mut value = HeaderValue::try_from(format!("Bearer {token}"))?;
    value.set_sensitive(true);
    Ok(value)
}

/// The token of an `authorization: Bearer …` header, and the header.
fn bearer_token(headers: &HeaderMap) -> Option<(&str, &HeaderValue)> {
    let value = headers.get(header::AUTHORIZATION)?;
    let text = value.to_str().ok()?;
    let (scheme, token) = text.split_once(' ')?;
    (scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty()).then_some((token.trim(), value))
}

/// The access rule of each HTTP route, by method and route template.
#[derive(Debug, Clone, Default)]
pub struct HttpRules {
    rules: HashMap<(Method, String), HttpRule>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpRule {
    pub access: Access,
    /// A signed link may stand in for a token.
    pub signed_links: bool,
}

impl HttpRules {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(&mut self, method: Method, template: &str, access: Access) -> &mut Self {
        self.rules.insert(
            (method, template.to_owned()),
            HttpRule {
                access,
                signed_links: false,
            },
        );
        self
    }

    /// A read route that signed links open too.
    pub fn insert_signed(&mut self, method: Method, template: &str, access: Access) -> &mut Self {
        self.rules.insert(
            (method, template.to_owned()),
            HttpRule {
                access,
                signed_links: true,
            },
        );
        self
    }

    /// The rule for a matched route. A route nobody listed needs an
    /// upload's rights: forgetting a rule never opens a route.
    pub fn get(&self, method: &Method, template: Option<&str>) -> HttpRule {
        let Some(template) = template else {
            // No route matched: the answer is a 404 whoever asks.
            return HttpRule {
                access: Access::Open,
                signed_links: false,
            };
        };
        let method = if method == Method::HEAD {
            &Method::GET
        } else {
            method
        };
        self.rules
            .get(&(method.clone(), template.to_owned()))
            .copied()
            .unwrap_or(HttpRule {
                access: Access::WRITE,
                signed_links: false,
            })
    }
}

/// Records the caller in the current span (`enduser.id`) and log. The
/// attribute goes to the OpenTelemetry span only: recording a `tracing`
/// field makes the JSON log layer re-serialise every field of the span,
/// which cost a cache hit 7% of its CPU.
pub fn record_caller(admitted: &Admitted) {
    if let Some(caller) = &admitted.caller {
        crate::telemetry::set_attribute(&tracing::Span::current(), "enduser.id", caller.sub().to_owned());
        tracing::debug!(sub = %caller.sub(), "caller authenticated");
    }
}

tokio::task_local! {
    /// The caller of the request this task serves, for the channels that
    /// forward its token upstream.
    pub static CALLER: Option<Caller>;
}

/// The caller of the current request, if this task serves one.
pub fn current_caller() -> Option<Caller> {
    CALLER.try_with(Clone::clone).ok().flatten()
}

/// NWS_UPSTREAM_TOKEN, as every upstream call of this process sends it.
static UPSTREAM_TOKEN: std::sync::OnceLock<HeaderValue> = std::sync::OnceLock::new();

/// Runs `work` (e.g. a spawned task) on behalf of the current caller, so
/// the calls it makes upstream carry the caller's token.
pub fn on_behalf_of_caller<F: Future>(work: F) -> impl Future<Output = F::Output> {
    CALLER.scope(current_caller(), work)
}

/// Puts the credentials of an upstream call in its headers, unless it has
/// some: the token of the caller it works for, so that services deployed
/// apart enforce the same policy on the same identity; else, for work no
/// caller's token covers (background renders, reads through signed
/// links), this process's own (NWS_UPSTREAM_TOKEN).
pub(crate) fn authorize_upstream(headers: &mut HeaderMap) {
    if headers.contains_key(header::AUTHORIZATION) {
        return;
    }
    let value = current_caller()
        .map(|caller| caller.token)
        .or_else(|| UPSTREAM_TOKEN.get().cloned());
    if let Some(value) = value {
        headers.insert(header::AUTHORIZATION, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_fall_back_to_the_strictest() {
        let mut rules = HttpRules::new();
        rules.insert(Method::GET, "/healthz", Access::Open);
        rules.insert_signed(Method::GET, "/v1/images/{key}", Access::READ);
        assert_eq!(rules.get(&Method::GET, Some("/healthz")).access, Access::Open);
        assert!(rules.get(&Method::HEAD, Some("/v1/images/{key}")).signed_links);
        assert_eq!(rules.get(&Method::POST, Some("/forgotten")).access, Access::WRITE);
        assert_eq!(rules.get(&Method::POST, None).access, Access::Open);
    }

    #[test]
    fn refusals_carry_the_headers_clients_act_on() {
        let limited = Refusal::Limited {
            class: RateClass::Upload,
            rate: Rate {
                per_second: 2.0,
                burst: 10,
            },
            retry_after: Duration::from_millis(400),
        };
        let headers = limited.http_headers();
        assert_eq!(headers[header::RETRY_AFTER], "1");
        assert_eq!(headers["ratelimit-policy"], "\"upload\";q=10;w=5");
        assert_eq!(headers["ratelimit"], "\"upload\";r=0;t=1");
        assert_eq!(limited.http_status(), StatusCode::TOO_MANY_REQUESTS);

        let missing = Refusal::Unauthenticated(TokenError::Missing).http_headers();
        assert_eq!(
            missing[header::WWW_AUTHENTICATE],
            "Bearer realm=\"nws-watermark\""
        );
        let expired = Refusal::Unauthenticated(TokenError::Expired).http_headers();
        assert!(
            expired[header::WWW_AUTHENTICATE]
                .to_str()
                .unwrap()
                .contains("error=\"invalid_token\"")
        );
        let scope = Refusal::Forbidden {
            scope: "images:write",
            sub: "u".into(),
        };
        assert_eq!(scope.http_status(), StatusCode::FORBIDDEN);
    }

    #[test]
    fn origins_and_rates_parse_or_explain() {
        assert!(parse_origins("https://app.example, http://localhost:5173").is_ok());
        assert!(parse_origins("https://app.example/path").is_err());
        assert!(parse_origins("app.example").is_err());
        assert_eq!(parse_rps("0.5"), Ok(0.5));
        assert!(parse_rps("-1").is_err());
        assert!(parse_rps("NaN").is_err());
    }
}
