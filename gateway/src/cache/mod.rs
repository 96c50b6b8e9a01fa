//! Results by key, from the fastest place that has them: L1 in this
//! process (byte-bounded, TinyLFU admission), L2 in Redis (shared by every
//! gateway), L3 in Storage (durable), and only then the optimizer. A hit
//! fills the tiers above it; a computed result fills all three.
//!
//! Identical lookups in flight at the same time are coalesced: one of them
//! (the leader) walks the tiers and computes, the rest wait for its result.
//! If the leader's client goes away, a waiting caller takes over.

mod key;
mod redis;

use std::{sync::Arc, time::Instant};

use bytes::Bytes;
use http::HeaderValue;
use moka::future::Cache;
use nws_watermark::{
    media,
    options::PIPELINE_VERSION,
    pb::{Namespace, OptimizeHeader},
};

pub use self::{key::ResultKey, redis::RedisTier};
use crate::{
    error::{ApiError, Upstream},
    timing::ServerTiming,
    transfer,
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

impl CachedImage {
    pub fn new(key: &ResultKey, bytes: Bytes) -> Arc<Self> {
        Arc::new(Self {
            media_type: media::sniff_media_type(&bytes),
            etag: key.etag(),
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
    Computed,
    /// Waited for an identical request's result.
    Coalesced,
}

impl Source {
    pub fn header_value(self) -> &'static str {
        match self {
            Source::Memory => "HIT-L1",
            Source::Redis => "HIT-L2",
            Source::Store => "HIT-STORE",
            Source::Computed => "MISS",
            Source::Coalesced => "COALESCED",
        }
    }
}

/// A result the optimizer just made.
pub struct Computed {
    pub image: Arc<CachedImage>,
    pub header: OptimizeHeader,
}

/// What a lookup found.
pub struct Found {
    pub image: Arc<CachedImage>,
    pub source: Source,
    /// The optimizer's description, when this request computed the result.
    pub header: Option<OptimizeHeader>,
}

#[derive(Clone)]
pub struct ResultCache {
    memory: Cache<ResultKey, Arc<CachedImage>>,
    redis: Option<RedisTier>,
    upstreams: Upstreams,
}

impl ResultCache {
    pub fn new(memory_bytes: u64, redis: Option<RedisTier>, upstreams: Upstreams) -> Self {
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
        }
    }

    pub fn redis(&self) -> Option<&RedisTier> {
        self.redis.as_ref()
    }

    /// The result for `key` from the first tier that has it; failing all,
    /// from `compute` when given (an upload), else NOT_FOUND.
    pub async fn find<F>(
        &self,
        key: ResultKey,
        timing: &mut ServerTiming,
        compute: Option<F>,
    ) -> Result<Found, ApiError>
    where
        F: Future<Output = Result<Computed, ApiError>> + Send,
    {
        let started = Instant::now();
        let in_memory = self.memory.get(&key).await;
        timing.since("l1", "cache: memory", started);
        if let Some(image) = in_memory {
            return Ok(Found {
                image,
                source: Source::Memory,
                header: None,
            });
        }

        // Set only when this call is the one that walks the tiers.
        let mut led: Option<(Source, Option<OptimizeHeader>)> = None;
        let waiting = Instant::now();
        let lead = async {
            let (image, source, header) = self.below_memory(key, timing, compute).await?;
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
            return Ok(Found {
                image,
                source: Source::Coalesced,
                header: None,
            });
        };
        if header
            .as_ref()
            .is_some_and(|h| h.pipeline_version != PIPELINE_VERSION)
        {
            // An optimizer of another version made it: serve it, keep it nowhere.
            self.memory.invalidate(&key).await;
        }
        Ok(Found {
            image,
            source,
            header,
        })
    }

    async fn below_memory<F>(
        &self,
        key: ResultKey,
        timing: &mut ServerTiming,
        compute: Option<F>,
    ) -> Result<(Arc<CachedImage>, Source, Option<OptimizeHeader>), ApiError>
    where
        F: Future<Output = Result<Computed, ApiError>> + Send,
    {
        if let Some(redis) = &self.redis {
            let started = Instant::now();
            let hit = redis.get(&key).await;
            timing.since("l2", "cache: redis", started);
            if let Some(bytes) = hit {
                return Ok((CachedImage::new(&key, bytes), Source::Redis, None));
            }
        }

        let started = Instant::now();
        let stored = self.in_store(&key).await;
        timing.since("store", "cache: storage", started);
        if let Some(image) = stored? {
            self.fill_redis(key, &image);
            return Ok((image, Source::Store, None));
        }

        let Some(compute) = compute else {
            return Err(ApiError::NotFound(format!("no result with key {key}")));
        };
        let Computed { image, header } = compute.await?;
        if header.pipeline_version == PIPELINE_VERSION {
            self.fill_redis(key, &image);
            self.fill_store(key, &image);
        } else {
            tracing::warn!(
                optimizer = %header.pipeline_version,
                gateway = PIPELINE_VERSION,
                "the optimizer runs another pipeline version; its result is not cached"
            );
        }
        Ok((image, Source::Computed, Some(header)))
    }

    async fn in_store(&self, key: &ResultKey) -> Result<Option<Arc<CachedImage>>, ApiError> {
        match transfer::read_object(&self.upstreams, Namespace::Results, &key.to_string()).await {
            Ok(bytes) => Ok(Some(CachedImage::new(key, bytes))),
            Err(ApiError::Upstream { status, .. }) if status.code() == tonic::Code::NotFound => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// Copies to Redis in the background: the response does not wait.
    fn fill_redis(&self, key: ResultKey, image: &Arc<CachedImage>) {
        if let Some(redis) = self.redis.clone() {
            let image = Arc::clone(image);
            tokio::spawn(async move { redis.set(&key, &image.bytes).await });
        }
    }

    /// Keeps a computed result in Storage, in the background: the response
    /// does not wait for the write, and a result lost to a crash is only
    /// computed again.
    fn fill_store(&self, key: ResultKey, image: &Arc<CachedImage>) {
        let upstreams = self.upstreams.clone();
        let image = Arc::clone(image);
        tokio::spawn(async move {
            if let Err(error) =
                transfer::write_result(&upstreams, &key.to_string(), image.bytes.clone()).await
            {
                tracing::warn!(%key, %error, upstream = %Upstream::Storage, "could not keep a result in storage");
            }
        });
    }
}
