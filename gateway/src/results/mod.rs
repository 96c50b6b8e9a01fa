//! The one seam that answers "the result for this original and these
//! options": found in the fastest place that has it, else rendered.
//!
//! Tiers, fastest first: L1 in this process (byte-bounded, TinyLFU
//! admission), L2 in Redis (shared by every gateway), L3 in Storage
//! (durable), and only then the optimizer, which reads the original from
//! Storage and keeps the result there itself. A hit fills the tiers above
//! it; a rendered result fills L1 and L2 (L3 already has it).
//!
//! Identical lookups in flight at the same time are coalesced: one of them
//! (the leader) walks the tiers and renders, the rest wait for its result.
//! If the leader's client goes away, a waiting caller takes over.
//!
//! `format=auto` answers with the fast format and makes the compact one
//! the caller accepts (AVIF, WebP) in the background, for the next request
//! ([`Plan`]): AVIF takes a second or more to encode, JPEG milliseconds.

mod redis;

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::Instant,
};

use bytes::Bytes;
use http::HeaderValue;
use moka::future::Cache;
use nws_runtime::telemetry::{GATEWAY, propagation::follows_current};
use nws_watermark::{
    media,
    options::Options,
    pb::{ImageFormat, Namespace, OptimizeHeader, RenderPriority},
    render::{RenderJob, ResultKey},
};
use tokio::sync::Semaphore;
use tonic::Code;
use tracing::{Instrument as _, Span, field::Empty};

pub use self::redis::RedisTier;
use crate::{
    error::{ApiError, Upstream},
    timing::ServerTiming,
    upstream::Upstreams,
};

/// A finished result, as every tier keeps it: the bytes alone (the media
/// type is judged from them, so Redis holds nothing but the image), with
/// the response headers that follow from them and their key made once, not
/// on every hit.
#[derive(Debug)]
pub struct CachedImage {
    pub bytes: Bytes,
    pub media_type: &'static str,
    /// `"<key>"`
    pub etag: HeaderValue,
    /// `/v1/images/<key>`
    pub location: HeaderValue,
}

/// The strong entity tag of a result: its key, quoted.
pub fn etag(key: &ResultKey) -> HeaderValue {
    HeaderValue::try_from(format!("\"{key}\"")).expect("hex is a valid header value")
}

impl CachedImage {
    pub fn new(key: &ResultKey, bytes: Bytes) -> Arc<Self> {
        Arc::new(Self {
            media_type: media::sniff_media_type(&bytes),
            etag: etag(key),
            location: HeaderValue::try_from(key.location()).expect("hex is a valid header value"),
            bytes,
        })
    }
}

/// Where a response's image came from: the `X-Cache` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Memory,
    Redis,
    Store,
    Rendered,
    /// Waited for an identical request's result.
    Coalesced,
}

impl Source {
    pub fn header_value(self) -> &'static str {
        match self {
            Source::Memory => "HIT-L1",
            Source::Redis => "HIT-L2",
            Source::Store => "HIT-STORE",
            Source::Rendered => "MISS",
            Source::Coalesced => "COALESCED",
        }
    }
}

/// What a lookup found.
pub struct Found {
    pub image: Arc<CachedImage>,
    pub source: Source,
    /// The optimizer's description, when this request rendered the result.
    pub header: Option<OptimizeHeader>,
}

/// What an upload asks for: the job to answer with now and, when
/// `format=auto` leaves the format to us, a more compact variant to make
/// for later requests.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub now: RenderJob,
    pub later: Option<RenderJob>,
}

impl Plan {
    /// With `auto_avif` (NWS_AUTO_AVIF), the request waits for the most
    /// compact format its Accept names; without, it gets the fast format
    /// (JPEG, or PNG for transparency) and the compact one comes later.
    pub fn new(original_sha256: &str, options: Options, auto_avif: bool) -> Self {
        let job = |options: Options| RenderJob::new(original_sha256.to_owned(), options);
        if !options.format_follows_accept() {
            return Self {
                now: job(options),
                later: None,
            };
        }
        let compact = nws_watermark::options::preferred_by_accept(&options.accept);
        match compact {
            Some(format) if auto_avif => Self {
                now: job(options.with_format(format)),
                later: None,
            },
            Some(format) => Self {
                now: job(options.clone().with_format(ImageFormat::Unspecified)),
                later: Some(job(options.with_format(format))),
            },
            None => Self {
                now: job(options.with_format(ImageFormat::Unspecified)),
                later: None,
            },
        }
    }
}

#[derive(Clone)]
pub struct Results {
    memory: Cache<ResultKey, Arc<CachedImage>>,
    redis: Option<RedisTier>,
    upstreams: Upstreams,
    background: Arc<Background>,
}

/// Renders nobody waits for: bounded, and never two of the same job.
struct Background {
    permits: Arc<Semaphore>,
    in_flight: Mutex<HashSet<ResultKey>>,
}

impl Results {
    /// `# HELP` for the cache's series.
    fn describe_metrics() {
        use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
        describe_counter!(
            "nws_results_total",
            "Results answered, by where they came from (X-Cache)"
        );
        describe_counter!("nws_cache_lookups_total", "Lookups per cache tier, by outcome");
        describe_histogram!(
            "nws_cache_lookup_duration_seconds",
            Unit::Seconds,
            "Time of a lookup in a cache tier"
        );
        describe_gauge!(
            "nws_redis_up",
            "1 while Redis answers, 0 while the L2 tier is skipped"
        );
    }

    pub fn new(
        memory_bytes: u64,
        redis: Option<RedisTier>,
        upstreams: Upstreams,
        background_renders: usize,
    ) -> Self {
        Self::describe_metrics();
        let memory = Cache::builder()
            .max_capacity(memory_bytes)
            // Entries weigh their bytes plus the bookkeeping around them.
            .weigher(|_key, image: &Arc<CachedImage>| {
                u32::try_from(image.bytes.len() + 256).unwrap_or(u32::MAX)
            })
            .build();
        Self {
            memory,
            redis,
            upstreams,
            background: Arc::new(Background {
                permits: Arc::new(Semaphore::new(background_renders)),
                in_flight: Mutex::new(HashSet::new()),
            }),
        }
    }

    pub fn redis(&self) -> Option<&RedisTier> {
        self.redis.as_ref()
    }

    /// The answer to an upload: the compact variant when a tier has it,
    /// else the job for now (found or rendered), with the compact variant
    /// then made in the background.
    pub async fn answer(&self, plan: Plan, timing: &mut ServerTiming) -> Result<Found, ApiError> {
        if let Some(later) = &plan.later {
            let started = Instant::now();
            let ready = self.lookup(later.key(), &mut ServerTiming::start(), None).await;
            timing.since("variant", "cache: the compact variant", started);
            match ready {
                Ok(found) => return Ok(found),
                Err(ApiError::NotFound(_)) => {}
                Err(error) => {
                    tracing::warn!(%error, "looking up the compact variant failed; answering without it")
                }
            }
        }
        let found = self.lookup(plan.now.key(), timing, Some(&plan.now)).await?;
        if let Some(later) = plan.later {
            self.render_later(later);
        }
        Ok(found)
    }

    /// The result named `key` from the first tier that has it; NOT_FOUND
    /// when none does.
    pub async fn find(&self, key: ResultKey, timing: &mut ServerTiming) -> Result<Found, ApiError> {
        self.lookup(key, timing, None).await
    }

    async fn lookup(
        &self,
        key: ResultKey,
        timing: &mut ServerTiming,
        render: Option<&RenderJob>,
    ) -> Result<Found, ApiError> {
        let in_memory = Tier::Memory
            .look(timing, self.memory.get(&key), |found| {
                Outcome::of(found.is_some())
            })
            .await;
        if let Some(image) = in_memory {
            return Ok(Found::counted(image, Source::Memory, None));
        }

        // Set only when this call is the one that walks the tiers.
        let mut led: Option<(Source, Option<OptimizeHeader>)> = None;
        let waiting = Instant::now();
        let lead = async {
            let (image, source, header) = self.below_memory(key, timing, render).await?;
            led = Some((source, header));
            Ok::<_, ApiError>(image)
        };
        let image = self
            .memory
            .try_get_with(key, lead)
            .await
            .map_err(|shared| (*shared).clone())?;

        let Some((source, header)) = led else {
            timing.since("wait", "coalesced: waited for an identical request", waiting);
            return Ok(Found::counted(image, Source::Coalesced, None));
        };
        if header.as_ref().is_some_and(|h| h.result_key != key.to_string()) {
            // Made under another name (an optimizer of another pipeline
            // version): serve it, keep it nowhere under ours.
            self.memory.invalidate(&key).await;
        }
        Ok(Found::counted(image, source, header))
    }

    async fn below_memory(
        &self,
        key: ResultKey,
        timing: &mut ServerTiming,
        render: Option<&RenderJob>,
    ) -> Result<(Arc<CachedImage>, Source, Option<OptimizeHeader>), ApiError> {
        if let Some(redis) = &self.redis {
            let hit = Tier::Redis
                .look(timing, redis.get(&key), |hit| Outcome::of(hit.is_some()))
                .await;
            if let Some(bytes) = hit {
                return Ok((CachedImage::new(&key, bytes), Source::Redis, None));
            }
        }

        let stored = Tier::Store
            .look(timing, self.in_store(&key), |stored| match stored {
                Ok(found) => Outcome::of(found.is_some()),
                Err(_) => Outcome::Error,
            })
            .await;
        if let Some(image) = stored? {
            self.fill_redis(key, &image);
            return Ok((image, Source::Store, None));
        }

        let Some(job) = render else {
            return Err(ApiError::NotFound(format!("no result with key {key}")));
        };
        let rendering = Instant::now();
        let rendered = self.upstreams.render(job, RenderPriority::Interactive).await;
        // The whole call: the optimizer's stages are inside it, and the
        // rest is its waiting line, its storage reads and writes, transfer.
        timing.since("render", "optimizer: the whole Render call", rendering);
        let (header, bytes) = rendered?;
        let image = match named(&header, key) {
            Some(name) => {
                let image = CachedImage::new(&name, bytes);
                self.fill_redis(key, &image);
                image
            }
            None => {
                tracing::warn!(
                    optimizer = %header.pipeline_version,
                    gateway = nws_watermark::options::PIPELINE_VERSION,
                    "the optimizer names this result otherwise (another pipeline version); it is not cached here"
                );
                let name = ResultKey::parse(&header.result_key).unwrap_or(key);
                CachedImage::new(&name, bytes)
            }
        };
        Ok((image, Source::Rendered, Some(header)))
    }

    /// Renders `job` when the optimizer has an idle worker, then keeps the
    /// result in L1 and L2 (the optimizer keeps it in L3). Best effort: a
    /// busy optimizer, a full background budget (NWS_BACKGROUND_RENDERS) or
    /// the same job already under way skips it, and a later request asks
    /// again.
    pub fn render_later(&self, job: RenderJob) {
        let key = job.key();
        let Ok(permit) = Arc::clone(&self.background.permits).try_acquire_owned() else {
            tracing::debug!(%key, "background renders at their limit (NWS_BACKGROUND_RENDERS); skipped");
            return;
        };
        if !self
            .background
            .in_flight
            .lock()
            .expect("never poisoned")
            .insert(key)
        {
            return;
        }
        let results = self.clone();
        let span =
            follows_current(tracing::info_span!(parent: None, "render.background", nws.result_key = %key));
        let work = async move {
            let _permit = permit;
            match results.upstreams.render(&job, RenderPriority::Background).await {
                Ok((header, bytes)) if named(&header, key).is_some() => {
                    let image = CachedImage::new(&key, bytes);
                    results.fill_redis(key, &image);
                    results.memory.insert(key, image).await;
                    tracing::info!(%key, format = ?header.format, "compact variant rendered in the background");
                }
                Ok(_) => {
                    tracing::debug!(%key, "background render named otherwise (another pipeline version)")
                }
                Err(error) if error.optimizer_cannot_serve() => {
                    tracing::debug!(%key, %error, "the optimizer cannot take it now; background render skipped");
                }
                Err(error) => tracing::warn!(%key, %error, "background render failed"),
            }
            results
                .background
                .in_flight
                .lock()
                .expect("never poisoned")
                .remove(&key);
        };
        tokio::spawn(work.instrument(span));
    }

    async fn in_store(&self, key: &ResultKey) -> Result<Option<Arc<CachedImage>>, ApiError> {
        match self.upstreams.read(Namespace::Results, &key.to_string()).await {
            Ok(bytes) => Ok(Some(CachedImage::new(key, bytes))),
            Err(error) if error.upstream_code(Upstream::Storage) == Some(Code::NotFound) => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// Copies to Redis in the background: the response does not wait.
    fn fill_redis(&self, key: ResultKey, image: &Arc<CachedImage>) {
        if let Some(redis) = self.redis.clone() {
            let image = Arc::clone(image);
            let span = follows_current(tracing::info_span!(
                parent: None,
                "cache.fill",
                nws.cache.tier = "l2",
                nws.bytes = image.bytes.len()
            ));
            tokio::spawn(async move { redis.set(&key, &image.bytes).await }.instrument(span));
        }
    }
}

/// A cache tier, as lookups name it in `Server-Timing`, spans and metrics.
#[derive(Debug, Clone, Copy)]
enum Tier {
    Memory,
    Redis,
    Store,
}

/// What a tier's lookup found.
#[derive(Debug, Clone, Copy)]
enum Outcome {
    Hit,
    Miss,
    Error,
}

impl Outcome {
    fn of(found: bool) -> Self {
        if found { Outcome::Hit } else { Outcome::Miss }
    }

    fn label(self) -> &'static str {
        match self {
            Outcome::Hit => "hit",
            Outcome::Miss => "miss",
            Outcome::Error => "error",
        }
    }
}

impl Tier {
    /// (`Server-Timing` name and description, metric label)
    fn names(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Tier::Memory => ("l1", "cache: memory", "memory"),
            Tier::Redis => ("l2", "cache: redis", "redis"),
            Tier::Store => ("store", "cache: storage", "storage"),
        }
    }

    /// Runs a lookup in this tier, timed in `Server-Timing`, in a span of
    /// its own with its outcome, and counted.
    async fn look<T>(
        self,
        timing: &mut ServerTiming,
        lookup: impl Future<Output = T>,
        outcome: impl FnOnce(&T) -> Outcome,
    ) -> T {
        let (name, description, label) = self.names();
        // A memory lookup takes a microsecond: a span of its own would cost
        // more than it, on the path that must be fastest. The request's
        // span says where its answer came from (`nws.cache.source`).
        let span = match self {
            Tier::Memory => Span::none(),
            Tier::Redis | Tier::Store => {
                tracing::info_span!("cache.lookup", nws.cache.tier = label, nws.cache.outcome = Empty)
            }
        };
        let started = Instant::now();
        let found = lookup.instrument(span.clone()).await;
        let took = started.elapsed();
        timing.add(name, description, took);
        let outcome = outcome(&found).label();
        span.record("nws.cache.outcome", outcome);
        metrics::counter!(
            "nws_cache_lookups_total",
            "service" => GATEWAY.name,
            "tier" => label,
            "outcome" => outcome
        )
        .increment(1);
        metrics::histogram!("nws_cache_lookup_duration_seconds", "service" => GATEWAY.name, "tier" => label)
            .record(took);
        found
    }
}

impl Found {
    /// A lookup's answer, counted by where it came from (`X-Cache`).
    fn counted(image: Arc<CachedImage>, source: Source, header: Option<OptimizeHeader>) -> Self {
        nws_runtime::telemetry::set_attribute(&Span::current(), "nws.cache.source", source.header_value());
        metrics::counter!(
            "nws_results_total",
            "service" => GATEWAY.name,
            "source" => source.header_value()
        )
        .increment(1);
        Self {
            image,
            source,
            header,
        }
    }
}

/// `Some(key)` when the optimizer named its result as this gateway did:
/// same canonical options, same pipeline version.
fn named(header: &OptimizeHeader, key: ResultKey) -> Option<ResultKey> {
    (header.result_key == key.to_string()).then_some(key)
}

#[cfg(test)]
mod tests {
    use std::{
        collections::HashMap,
        pin::Pin,
        sync::atomic::{AtomicUsize, Ordering},
        time::Duration,
    };

    use futures_util::{Stream, stream};
    use nws_runtime::{grpc::GrpcServer, shutdown::Drain, testing::eventually};
    use nws_watermark::pb::{
        DeleteRequest, DeleteResponse, GetRequest, GetResponse, ObjectInfo, OptimizeOptions, OptimizeRequest,
        OptimizeResponse, ProbeRequest, ProbeResponse, PutRequest, PutResponse, RenderRequest,
        RenderResponse, StatRequest, StatResponse, get_response,
        optimizer_server::{Optimizer, OptimizerServer},
        render_response,
        storage_server::{Storage, StorageServer},
    };
    use tokio_util::sync::CancellationToken;
    use tonic::{Request, Response, Status, Streaming};

    use super::*;

    const ORIGINAL: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    fn options(format: ImageFormat, accept: &str) -> Options {
        Options::try_from(OptimizeOptions {
            format: format as i32,
            accept: vec![accept.to_owned()],
            ..OptimizeOptions::default()
        })
        .unwrap()
    }

    const CHROME: &str =
        "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,image/apng,*/*;q=0.8";

    #[test]
    fn auto_answers_fast_now_and_makes_the_compact_format_later() {
        let plan = Plan::new(ORIGINAL, options(ImageFormat::Unspecified, CHROME), false);
        assert_eq!(plan.now.options().format, ImageFormat::Unspecified);
        assert!(plan.now.options().accept.is_empty());
        let later = plan.later.expect("a compact variant");
        assert_eq!(later.options().format, ImageFormat::Avif);
        // Asking for it by name is the same result.
        let named = Plan::new(ORIGINAL, options(ImageFormat::Avif, CHROME), false);
        assert_eq!(named.now.key(), later.key());
        assert_eq!(named.later, None);
    }

    #[test]
    fn auto_avif_waits_for_the_compact_format_and_plain_accepts_get_one_job() {
        let plan = Plan::new(ORIGINAL, options(ImageFormat::Unspecified, CHROME), true);
        assert_eq!((plan.now.options().format, plan.later), (ImageFormat::Avif, None));
        let plan = Plan::new(
            ORIGINAL,
            options(ImageFormat::Unspecified, "image/webp,*/*"),
            false,
        );
        assert_eq!(plan.later.unwrap().options().format, ImageFormat::Webp);
        let plan = Plan::new(ORIGINAL, options(ImageFormat::Unspecified, "*/*"), false);
        assert_eq!(plan.later, None);
        assert_eq!(
            plan.now.key(),
            Plan::new(ORIGINAL, options(ImageFormat::Unspecified, "image/jpeg"), true)
                .now
                .key()
        );
    }

    #[test]
    fn each_source_has_its_documented_x_cache_value() {
        let values = [
            Source::Memory,
            Source::Redis,
            Source::Store,
            Source::Rendered,
            Source::Coalesced,
        ]
        .map(Source::header_value);
        assert_eq!(values, ["HIT-L1", "HIT-L2", "HIT-STORE", "MISS", "COALESCED"]);
    }

    #[test]
    fn a_cached_image_carries_its_headers() {
        let key = ResultKey::parse(&"ab".repeat(32)).unwrap();
        let image = CachedImage::new(&key, Bytes::from_static(JPEG));
        assert_eq!(image.media_type, "image/jpeg");
        assert_eq!(image.etag, format!("\"{}\"", "ab".repeat(32)));
        assert_eq!(image.location, format!("/v1/images/{}", "ab".repeat(32)));
        assert_eq!(etag(&key), image.etag);
    }

    #[test]
    fn a_rendered_result_is_ours_only_under_our_key() {
        let ours = Plan::new(ORIGINAL, options(ImageFormat::Jpeg, ""), false)
            .now
            .key();
        let theirs = ResultKey::parse(&"0".repeat(64)).unwrap();
        let header = |key: ResultKey| OptimizeHeader {
            result_key: key.to_string(),
            ..OptimizeHeader::default()
        };
        assert_eq!(named(&header(ours), ours), Some(ours));
        assert_eq!(named(&header(theirs), ours), None);
    }

    /// The start of a JPEG: what the media type is judged from.
    const JPEG: &[u8] = &[0xFF, 0xD8, 0xFF, 0xE0, 1, 2, 3, 4];

    /// Tiny inline upstreams: a Storage that keeps results in a map, and an
    /// Optimizer whose Render answers with [`JPEG`] under the job's key (or
    /// the name it is told to use) and keeps it in that Storage, as the
    /// real one does.
    #[derive(Clone, Default)]
    struct Inline {
        results: Arc<Mutex<HashMap<String, Bytes>>>,
        renders: Arc<AtomicUsize>,
        /// Render names its results this instead of the job's key.
        rename: Arc<Mutex<Option<String>>>,
        /// Storage fails every Get with this.
        storage_fails: Arc<Mutex<Option<Code>>>,
    }

    type Messages<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

    #[tonic::async_trait]
    impl Storage for Inline {
        type GetStream = Messages<GetResponse>;

        async fn get(&self, request: Request<GetRequest>) -> Result<Response<Self::GetStream>, Status> {
            if let Some(code) = *self.storage_fails.lock().unwrap() {
                return Err(Status::new(code, "failing on purpose"));
            }
            let request = request.into_inner();
            assert_eq!(request.namespace(), Namespace::Results);
            let Some(bytes) = self.results.lock().unwrap().get(&request.sha256).cloned() else {
                return Err(Status::not_found("no such result"));
            };
            let info = ObjectInfo {
                sha256: request.sha256,
                size: bytes.len() as u64,
                ..ObjectInfo::default()
            };
            let messages = [
                get_response::Payload::Info(info),
                get_response::Payload::Chunk(bytes),
            ]
            .map(|payload| {
                Ok(GetResponse {
                    payload: Some(payload),
                })
            });
            Ok(Response::new(Box::pin(stream::iter(messages))))
        }

        async fn put(&self, _: Request<Streaming<PutRequest>>) -> Result<Response<PutResponse>, Status> {
            Err(Status::unimplemented("not needed"))
        }

        async fn stat(&self, _: Request<StatRequest>) -> Result<Response<StatResponse>, Status> {
            Err(Status::unimplemented("not needed"))
        }

        async fn delete(&self, _: Request<DeleteRequest>) -> Result<Response<DeleteResponse>, Status> {
            Err(Status::unimplemented("not needed"))
        }
    }

    #[tonic::async_trait]
    impl Optimizer for Inline {
        type OptimizeStream = Messages<OptimizeResponse>;
        type RenderStream = Messages<RenderResponse>;

        async fn render(
            &self,
            request: Request<RenderRequest>,
        ) -> Result<Response<Self::RenderStream>, Status> {
            self.renders.fetch_add(1, Ordering::SeqCst);
            let request = request.into_inner();
            let options = Options::try_from(request.options.unwrap_or_default()).unwrap();
            let key = RenderJob::new(request.original_sha256, options).key().to_string();
            let name = self.rename.lock().unwrap().clone().unwrap_or(key);
            let bytes = Bytes::from_static(JPEG);
            self.results.lock().unwrap().insert(name.clone(), bytes.clone());
            let header = OptimizeHeader {
                size: bytes.len() as u64,
                result_key: name,
                ..OptimizeHeader::default()
            };
            let messages = [
                render_response::Payload::Header(header),
                render_response::Payload::Chunk(bytes),
            ]
            .map(|payload| {
                Ok(RenderResponse {
                    payload: Some(payload),
                })
            });
            Ok(Response::new(Box::pin(stream::iter(messages))))
        }

        async fn optimize(
            &self,
            _: Request<Streaming<OptimizeRequest>>,
        ) -> Result<Response<Self::OptimizeStream>, Status> {
            Err(Status::unimplemented("not needed"))
        }

        async fn probe(&self, _: Request<ProbeRequest>) -> Result<Response<ProbeResponse>, Status> {
            Err(Status::unimplemented("not needed"))
        }
    }

    impl Inline {
        fn renders(&self) -> usize {
            self.renders.load(Ordering::SeqCst)
        }

        fn store(&self, key: ResultKey) {
            self.results
                .lock()
                .unwrap()
                .insert(key.to_string(), Bytes::from_static(JPEG));
        }
    }

    /// Results in front of a served [`Inline`]; the server stops with the
    /// returned token.
    async fn results(redis: Option<RedisTier>) -> (Results, Inline, tokio_util::sync::DropGuard) {
        let upstream = Inline::default();
        let server = GrpcServer::bind("upstreams", "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap()
            .add_service(StorageServer::new(upstream.clone()))
            .await
            .add_service(OptimizerServer::new(upstream.clone()))
            .await;
        let uri: http::Uri = format!("http://{}", server.local_addr()).parse().unwrap();
        let stop = CancellationToken::new();
        let drain = Drain {
            delay: Duration::ZERO,
            timeout: Duration::from_secs(1),
        };
        tokio::spawn(server.run_until_stopped(stop.clone().cancelled_owned(), drain));
        let upstreams = Upstreams::connect_lazy(uri.clone(), uri, Duration::from_secs(10));
        (
            Results::new(1 << 20, redis, upstreams, 1),
            upstream,
            stop.drop_guard(),
        )
    }

    fn job(text: &str) -> RenderJob {
        let options = Options::try_from(OptimizeOptions {
            watermark_text: text.to_owned(),
            format: ImageFormat::Jpeg as i32,
            ..OptimizeOptions::default()
        })
        .unwrap();
        RenderJob::new(ORIGINAL.to_owned(), options)
    }

    fn plan(job: &RenderJob) -> Plan {
        Plan {
            now: job.clone(),
            later: None,
        }
    }

    #[tokio::test]
    async fn a_miss_renders_once_and_memory_answers_after() {
        let (results, upstream, _server) = results(None).await;
        let job = job("miss");
        let found = results
            .answer(plan(&job), &mut ServerTiming::start())
            .await
            .unwrap();
        assert_eq!(found.source, Source::Rendered);
        assert_eq!(found.header.unwrap().result_key, job.key().to_string());
        assert_eq!(found.image.bytes, JPEG);
        assert_eq!(found.image.etag, etag(&job.key()));
        let again = results
            .answer(plan(&job), &mut ServerTiming::start())
            .await
            .unwrap();
        assert_eq!((again.source, again.header), (Source::Memory, None));
        let by_key = results.find(job.key(), &mut ServerTiming::start()).await.unwrap();
        assert_eq!(by_key.source, Source::Memory);
        assert_eq!(upstream.renders(), 1);
    }

    #[tokio::test]
    async fn a_result_storage_keeps_is_served_without_rendering_and_unknown_keys_are_not_found() {
        let (results, upstream, _server) = results(None).await;
        let job = job("stored");
        upstream.store(job.key());
        let found = results.find(job.key(), &mut ServerTiming::start()).await.unwrap();
        assert_eq!(
            (found.source, found.image.media_type),
            (Source::Store, "image/jpeg")
        );
        let found = results
            .answer(plan(&job), &mut ServerTiming::start())
            .await
            .unwrap();
        assert_eq!(found.source, Source::Memory);
        assert_eq!(upstream.renders(), 0);

        let unknown = results
            .find(self::job("unknown").key(), &mut ServerTiming::start())
            .await;
        assert!(
            matches!(unknown, Err(ApiError::NotFound(_))),
            "{:?}",
            unknown.err()
        );
    }

    #[tokio::test]
    async fn a_failing_storage_is_an_error_not_a_miss() {
        let (results, upstream, _server) = results(None).await;
        *upstream.storage_fails.lock().unwrap() = Some(Code::Unavailable);
        let failed = results
            .answer(plan(&job("down")), &mut ServerTiming::start())
            .await;
        match failed {
            Err(error) => assert_eq!(error.upstream_code(Upstream::Storage), Some(Code::Unavailable)),
            Ok(found) => panic!("answered from {:?}", found.source),
        }
        assert_eq!(upstream.renders(), 0, "nothing is rendered on a storage outage");
    }

    #[tokio::test]
    async fn a_result_named_otherwise_is_served_under_its_name_and_kept_nowhere_under_ours() {
        let (results, upstream, _server) = results(None).await;
        let theirs = "0".repeat(64);
        *upstream.rename.lock().unwrap() = Some(theirs.clone());
        let job = job("renamed");
        let found = results
            .answer(plan(&job), &mut ServerTiming::start())
            .await
            .unwrap();
        assert_eq!(found.source, Source::Rendered);
        assert_eq!(found.image.etag, format!("\"{theirs}\""));
        let again = results
            .answer(plan(&job), &mut ServerTiming::start())
            .await
            .unwrap();
        assert_eq!(again.source, Source::Rendered, "not kept in memory under our key");
        assert_eq!(upstream.renders(), 2);

        // Nor by a background render.
        results.render_later(self::job("renamed later"));
        eventually("the background render ran", async || {
            (upstream.renders() == 3).then_some(())
        })
        .await;
        eventually("the background render finished", async || {
            results
                .background
                .in_flight
                .lock()
                .unwrap()
                .is_empty()
                .then_some(())
        })
        .await;
        assert_eq!(
            results
                .memory
                .get(&self::job("renamed later").key())
                .await
                .map(|_| ()),
            None
        );
    }

    #[tokio::test]
    async fn a_background_render_fills_memory_once() {
        let (results, upstream, _server) = results(None).await;
        let job = job("later");
        results.render_later(job.clone());
        results.render_later(job.clone());
        eventually("the background render filled memory", async || {
            results.memory.contains_key(&job.key()).then_some(())
        })
        .await;
        let found = results.find(job.key(), &mut ServerTiming::start()).await.unwrap();
        assert_eq!(found.source, Source::Memory);
        assert_eq!(
            upstream.renders(),
            1,
            "the same job is not rendered twice at once"
        );
    }

    #[tokio::test]
    async fn a_rendered_result_is_copied_to_redis_and_redis_answers_another_gateway() {
        let url = nws_runtime::config::SecretUrl::new(
            std::env::var("NWS_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned()),
        );
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let prefix = format!("nws-unit:{}:{nanos}:results:", std::process::id());
        let tier = || {
            RedisTier::new(
                &url,
                Duration::from_secs(2),
                prefix.clone(),
                Duration::from_secs(60),
            )
            .unwrap()
        };
        let (results, upstream, _server) = results(Some(tier())).await;
        assert!(results.redis().is_some());
        let job = job("shared");
        results
            .answer(plan(&job), &mut ServerTiming::start())
            .await
            .unwrap();
        let redis = tier();
        eventually("the result in redis", async || {
            redis.get(&job.key()).await.map(|_| ())
        })
        .await;

        // Another gateway, with its own memory, finds it in Redis.
        let (other, other_upstream, _other_server) = self::results(Some(tier())).await;
        let found = other.find(job.key(), &mut ServerTiming::start()).await.unwrap();
        assert_eq!((found.source, found.image.bytes.as_ref()), (Source::Redis, JPEG));
        assert_eq!(other_upstream.renders() + upstream.renders(), 1);

        // A result found in Storage is copied to Redis too.
        let stored = self::job("stored");
        other_upstream.store(stored.key());
        let found = other
            .find(stored.key(), &mut ServerTiming::start())
            .await
            .unwrap();
        assert_eq!(found.source, Source::Store);
        eventually("the stored result in redis", async || {
            redis.get(&stored.key()).await.map(|_| ())
        })
        .await;
    }
}
