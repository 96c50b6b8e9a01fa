//! The result cache tiers, coalescing, and HTTP caching, against real
//! Redis servers: the shared one (NWS_TEST_REDIS_URL, which the test
//! command provides) with a key prefix per test, and private ones that a
//! test may stop and restart.

use std::time::{Duration, Instant};

use futures_util::future::join_all;
use nws_runtime::testing::{PrivateRedis, eventually, redis_command, test_image};

use crate::{Mesh, assert_json_error};

const TINY: &str = "tiny_16x16.jpg";

fn shared_redis_url() -> String {
    nws_runtime::testing::redis_url()
}

/// A key prefix no other test or run shares.
fn unique_prefix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("nws-test:{}:{nanos}:", std::process::id())
}

/// A command whose reply is an integer (`:42`).
fn redis_integer(url: &str, args: &[&str]) -> i64 {
    let reply = redis_command(url, args);
    reply
        .strip_prefix(':')
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("{args:?}: not an integer reply: {reply:?}"))
}

struct Upload {
    status: u16,
    cache: String,
    etag: String,
    location: String,
    vary: Option<String>,
    content_type: String,
    timing: String,
    body: Vec<u8>,
}

async fn upload(mesh: &Mesh, image: &[u8], query: &str, accept: Option<&str>) -> Upload {
    let mut request = mesh
        .http
        .post(mesh.url(&format!("/v1/watermark?{query}")))
        .body(image.to_vec());
    if let Some(accept) = accept {
        request = request.header("accept", accept);
    }
    let response = request.send().await.expect("upload");
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    Upload {
        status: response.status().as_u16(),
        cache: header("x-cache").unwrap_or_default(),
        etag: header("etag").unwrap_or_default(),
        location: header("content-location").unwrap_or_default(),
        vary: header("vary"),
        content_type: header("content-type").unwrap_or_default(),
        timing: header("server-timing").unwrap_or_default(),
        body: response.bytes().await.unwrap().to_vec(),
    }
}

/// Repeats `attempt` until it returns the `X-Cache` wanted (a background
/// fill may land a moment after the response that caused it).
async fn until_cache(wanted: &str, mut attempt: impl AsyncFnMut() -> Upload) -> Upload {
    eventually(&format!("X-Cache: {wanted}"), async || {
        let got = attempt().await;
        (got.cache == wanted).then_some(got)
    })
    .await
}

/// A mesh on the shared Redis under a key prefix of its own, with no L1,
/// so repeats reach Redis and Storage; returns it, Redis' URL and the
/// prefix.
fn mesh_on_shared_redis(extra: &[(&str, &str)]) -> (Mesh, String, String) {
    let prefix = unique_prefix();
    let redis = shared_redis_url();
    let mut env = vec![
        ("NWS_REDIS_URL", redis.as_str()),
        ("NWS_REDIS_PREFIX", prefix.as_str()),
        ("NWS_CACHE_MEMORY", "0"),
    ];
    env.extend_from_slice(extra);
    let mesh = Mesh::start_with(&env);
    (mesh, redis, prefix)
}

#[tokio::test]
async fn each_tier_misses_then_hits_and_fills_the_tiers_above_it() {
    let (mesh, redis, prefix) = mesh_on_shared_redis(&[]);
    let photo = test_image(TINY);
    let first = upload(&mesh, &photo, "format=jpeg", None).await;
    assert_eq!((first.status, first.cache.as_str()), (200, "MISS"));
    assert!(
        first.timing.contains("decode;") && first.timing.contains("store;"),
        "{}",
        first.timing
    );
    let key = first.etag.trim_matches('"').to_owned();
    assert_eq!(key.len(), 64);
    assert_eq!(first.location, format!("/v1/images/{key}"));

    let from_redis = until_cache("HIT-L2", || upload(&mesh, &photo, "format=jpeg", None)).await;
    assert_eq!(from_redis.body, first.body);
    assert_eq!(from_redis.etag, first.etag);
    assert!(!from_redis.timing.contains("decode;"), "{}", from_redis.timing);
    // Values are the raw image bytes, with the configured TTL.
    let redis_key = format!("{prefix}{key}");
    assert!(redis_command(&redis, &["STRLEN", &redis_key]).starts_with(&format!(":{}", first.body.len())));
    let ttl = redis_integer(&redis, &["TTL", &redis_key]);
    assert!((86_000..=86_400).contains(&ttl), "TTL {ttl}");

    // Gone from Redis: Storage has it, and Redis is filled again.
    mesh.until_result_stored(&key).await;
    redis_command(&redis, &["DEL", &redis_key]);
    let from_store = upload(&mesh, &photo, "format=jpeg", None).await;
    assert_eq!(from_store.cache, "HIT-STORE");
    assert_eq!(from_store.body, first.body);
    until_cache("HIT-L2", || upload(&mesh, &photo, "format=jpeg", None)).await;

    // Other options are another result.
    let other = upload(&mesh, &photo, "format=jpeg&quality=50", None).await;
    assert_eq!(other.cache, "MISS");
    assert_ne!(other.etag, first.etag);
    redis_command(
        &redis,
        &[
            "DEL",
            &redis_key,
            &format!("{prefix}{}", other.etag.trim_matches('"')),
        ],
    );
}

#[tokio::test]
async fn results_are_served_by_key_with_immutable_caching_and_304() {
    let mesh = Mesh::start();
    let photo = test_image(TINY);
    let first = upload(&mesh, &photo, "format=png", None).await;
    assert_eq!(first.cache, "MISS");
    assert_eq!(first.vary, None, "an explicit format does not vary with Accept");
    let again = upload(&mesh, &photo, "format=png", None).await;
    assert_eq!(again.cache, "HIT-L1");

    let response = mesh.get(&first.location).await;
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    assert_eq!(headers["etag"], first.etag.as_str());
    assert_eq!(headers["cache-control"], "public, max-age=31536000, immutable");
    assert_eq!(headers["content-type"], "image/png");
    assert_eq!(headers["x-cache"], "HIT-L1");
    // The trace first, then the only step a memory hit takes.
    let timing = headers["server-timing"].to_str().unwrap();
    let trace_id = headers["x-trace-id"].to_str().unwrap();
    assert!(
        timing.starts_with(&format!("trace;desc=\"{trace_id}\", l1;")),
        "{timing}"
    );
    assert_eq!(response.bytes().await.unwrap(), first.body);

    let not_modified = mesh
        .http
        .get(mesh.url(&first.location))
        .header("if-none-match", format!("W/{}, \"other\"", first.etag))
        .send()
        .await
        .unwrap();
    assert_eq!(not_modified.status(), 304);
    assert_eq!(not_modified.headers()["etag"], first.etag.as_str());
    assert!(not_modified.bytes().await.unwrap().is_empty());

    // Keys that name nothing, or are no key at all.
    let key = first.etag.trim_matches('"');
    let unknown = key.chars().rev().collect::<String>();
    let response = mesh.get(&format!("/v1/images/{unknown}")).await;
    assert_json_error(response, 404, "NOT_FOUND").await;
    let response = mesh.get("/v1/images/not-a-key").await;
    assert_json_error(response, 400, "INVALID_ARGUMENT").await;
}

/// Repeats `attempt` until its answer has the content type wanted (a
/// background render lands a moment after the response that asked for it).
async fn until_type(wanted: &str, mut attempt: impl AsyncFnMut() -> Upload) -> Upload {
    eventually(&format!("Content-Type: {wanted}"), async || {
        let got = attempt().await;
        (got.content_type == wanted).then_some(got)
    })
    .await
}

#[tokio::test]
async fn format_auto_answers_at_once_then_serves_the_compact_variant_it_made() {
    let mesh = Mesh::start();
    let photo = test_image(TINY);
    let webp_accept = "image/webp,*/*;q=0.8";
    let first = upload(&mesh, &photo, "", Some(webp_accept)).await;
    assert_eq!(
        (first.status, first.content_type.as_str(), first.cache.as_str()),
        (200, "image/jpeg", "MISS"),
        "the first answer does not wait for WebP"
    );
    assert_eq!(first.vary.as_deref(), Some("accept"));
    let webp = until_type("image/webp", || upload(&mesh, &photo, "", Some(webp_accept))).await;
    assert_eq!(webp.cache, "HIT-L1", "made in the background, kept in memory");
    assert_eq!(webp.vary.as_deref(), Some("accept"));
    assert!(webp.timing.contains("variant;"), "{}", webp.timing);
    let webp_again = upload(&mesh, &photo, "", Some(webp_accept)).await;
    assert_eq!(
        (webp_again.content_type.as_str(), &webp_again.etag),
        ("image/webp", &webp.etag)
    );

    let avif_accept = "image/avif,image/webp,*/*";
    let avif = until_type("image/avif", || {
        upload(&mesh, &photo, "format=auto", Some(avif_accept))
    })
    .await;
    let plain = upload(&mesh, &photo, "", None).await;
    assert_eq!(plain.content_type, "image/jpeg");
    assert_eq!(plain.vary.as_deref(), Some("accept"));
    assert_eq!(
        plain.etag, first.etag,
        "the fast answer is the same result whatever the Accept"
    );
    let keys = [&webp.etag, &avif.etag, &plain.etag];
    assert!(
        keys[0] != keys[1] && keys[1] != keys[2] && keys[0] != keys[2],
        "{keys:?}"
    );
    // The variant made for Accept and the format asked for by name are one result.
    let named = upload(&mesh, &photo, "format=webp", None).await;
    assert_eq!((named.cache.as_str(), &named.etag), ("HIT-L1", &webp.etag));
    assert_eq!(named.vary, None, "an explicit format does not vary with Accept");
    // Both variants were kept in Storage by the optimizer.
    for variant in [&webp, &avif] {
        mesh.until_result_stored(variant.etag.trim_matches('"')).await;
    }
}

#[tokio::test]
async fn with_auto_avif_the_request_waits_for_the_compact_format() {
    let mesh = Mesh::start_with(&[("NWS_AUTO_AVIF", "true")]);
    let photo = test_image(TINY);
    let avif = upload(&mesh, &photo, "", Some("image/avif,image/webp,*/*")).await;
    assert_eq!(
        (avif.cache.as_str(), avif.content_type.as_str()),
        ("MISS", "image/avif")
    );
    let webp = upload(&mesh, &photo, "", Some("image/webp,*/*")).await;
    assert_eq!(
        (webp.cache.as_str(), webp.content_type.as_str()),
        ("MISS", "image/webp")
    );
}

#[tokio::test]
async fn two_hundred_identical_uploads_run_the_optimizer_once() {
    let mesh = Mesh::start();
    // Small to send (flat 50-pixel blocks: about 100 KB of PNG), slow to
    // render (12 MP to decode and fit, then AVIF): the uploads all arrive
    // while the first one is being computed. (A 2400×1600 gradient of a
    // few MB let the last uploads arrive after the render on a loaded
    // machine, to be answered from memory, and none coalesced.)
    let pixels = image::RgbImage::from_fn(4000, 3000, |x, y| {
        let (column, row) = (x / 50, y / 50);
        image::Rgb([column as u8 * 3, row as u8 * 4, (column ^ row) as u8 * 2])
    });
    let mut photo = Vec::new();
    image::DynamicImage::ImageRgb8(pixels)
        .write_to(&mut std::io::Cursor::new(&mut photo), image::ImageFormat::Png)
        .unwrap();
    assert!(photo.len() < 400_000, "{} bytes of PNG", photo.len());
    let uploads = (0..200).map(|_| upload(&mesh, &photo, "format=avif&wm_text=coalesced", None));
    let results = join_all(uploads).await;
    let mut sources = std::collections::BTreeMap::<String, usize>::new();
    for result in &results {
        assert_eq!(result.status, 200, "{}", String::from_utf8_lossy(&result.body));
        assert_eq!(result.body, results[0].body);
        *sources.entry(result.cache.clone()).or_default() += 1;
    }
    assert_eq!(sources.get("MISS"), Some(&1), "{sources:?}");
    assert!(
        sources
            .keys()
            .all(|s| ["MISS", "COALESCED", "HIT-L1"].contains(&s.as_str())),
        "{sources:?}"
    );
    assert!(sources.get("COALESCED").is_some_and(|n| *n > 0), "{sources:?}");
    let optimized = mesh.process.logs().matches("\"optimized\"").count();
    assert_eq!(optimized, 1, "the optimizer ran {optimized} times");
}

async fn readiness(mesh: &Mesh) -> (u16, serde_json::Value) {
    let response = mesh.get("/readyz").await;
    (response.status().as_u16(), response.json().await.unwrap())
}

/// Waits for Redis to be reported `wanted`; once the upstreams are ready,
/// Redis' state never makes the gateway unready.
async fn until_redis(mesh: &Mesh, wanted: &str) -> serde_json::Value {
    eventually(&format!("redis {wanted}"), async || {
        let (status, body) = readiness(mesh).await;
        let upstreams_ready = ["optimizer", "storage"]
            .iter()
            .all(|name| body["upstreams"][name]["status"] == "SERVING");
        assert_eq!(status == 200, upstreams_ready, "{body}");
        (upstreams_ready && body["cache"]["redis"]["status"] == wanted).then_some(body)
    })
    .await
}

#[tokio::test]
async fn redis_stopping_slowing_and_returning_never_fails_a_request() {
    let mut redis = PrivateRedis::start();
    let mesh = Mesh::start_with(&[
        ("NWS_REDIS_URL", &redis.url()),
        ("NWS_CACHE_MEMORY", "0"),
        ("NWS_REDIS_TIMEOUT", "200ms"),
    ]);
    let photo = test_image(TINY);
    let body = until_redis(&mesh, "SERVING").await;
    assert_eq!(body["status"], "ready");
    let first = upload(&mesh, &photo, "format=jpeg", None).await;
    assert_eq!(first.cache, "MISS");
    until_cache("HIT-L2", || upload(&mesh, &photo, "format=jpeg", None)).await;
    mesh.until_result_stored(first.etag.trim_matches('"')).await;

    // Redis gone: served from storage, ready but degraded.
    redis.stop();
    let started = Instant::now();
    let served = upload(&mesh, &photo, "format=jpeg", None).await;
    assert_eq!((served.status, served.cache.as_str()), (200, "HIT-STORE"));
    assert!(started.elapsed() < Duration::from_secs(5));
    let body = until_redis(&mesh, "UNAVAILABLE").await;
    assert_eq!(body["status"], "degraded");

    // Back, empty: picked up without a restart, and filled again.
    redis.restart();
    until_redis(&mesh, "SERVING").await;
    assert_eq!(
        upload(&mesh, &photo, "format=jpeg", None).await.cache,
        "HIT-STORE"
    );
    until_cache("HIT-L2", || upload(&mesh, &photo, "format=jpeg", None)).await;

    // Frozen (accepts connections, answers nothing): the short timeout
    // turns it into a miss, then Redis is skipped until it answers again.
    redis.signal("STOP");
    for _ in 0..3 {
        let served = upload(&mesh, &photo, "format=jpeg", None).await;
        assert_eq!(
            (served.status, served.cache.as_str()),
            (200, "HIT-STORE"),
            "{}",
            served.timing
        );
    }
    until_redis(&mesh, "UNAVAILABLE").await;
    redis.signal("CONT");
    until_redis(&mesh, "SERVING").await;
    until_cache("HIT-L2", || upload(&mesh, &photo, "format=jpeg", None)).await;
    let logs = mesh.process.logs();
    assert!(
        logs.contains("redis failed") && logs.contains("redis answers again"),
        "{logs}"
    );
}

#[tokio::test]
async fn the_memory_tier_stays_within_its_budget() {
    // 4 KiB of L1 and no Redis: a handful of these small results fit.
    let mesh = Mesh::start_with(&[("NWS_CACHE_MEMORY", "4KiB")]);
    let photo = test_image(TINY);
    let query = |i: usize| format!("format=jpeg&wm_text=n{i}");
    let mut results = Vec::new();
    for i in 0..60 {
        let made = upload(&mesh, &photo, &query(i), None).await;
        assert_eq!((made.status, made.cache.as_str()), (200, "MISS"));
        results.push(made);
    }
    assert!(results.iter().map(|r| r.body.len()).sum::<usize>() > 4 * 4 * 1024);
    for (i, made) in results.iter().enumerate() {
        mesh.until_result_stored(made.etag.trim_matches('"')).await;
        let again = upload(&mesh, &photo, &query(i), None).await;
        assert_eq!(again.body, made.body, "result {i}");
    }
    // Asked again, most come from Storage: L1 kept at most what fits.
    let mut from_memory = 0;
    for i in 0..60 {
        let again = upload(&mesh, &photo, &query(i), None).await;
        assert!(
            ["HIT-L1", "HIT-STORE"].contains(&again.cache.as_str()),
            "{}",
            again.cache
        );
        from_memory += usize::from(again.cache == "HIT-L1");
    }
    let fits = 4 * 1024 / results.iter().map(|r| r.body.len()).min().unwrap();
    assert!(
        from_memory <= fits,
        "{from_memory} served from memory; {fits} fit"
    );
}

#[tokio::test]
async fn redis_entries_expire_after_nws_cache_ttl() {
    let (mesh, redis, prefix) = mesh_on_shared_redis(&[("NWS_CACHE_TTL", "2s")]);
    let photo = test_image(TINY);
    let first = upload(&mesh, &photo, "format=jpeg", None).await;
    let key = first.etag.trim_matches('"').to_owned();
    let redis_key = format!("{prefix}{key}");
    until_cache("HIT-L2", || upload(&mesh, &photo, "format=jpeg", None)).await;
    let ttl = redis_integer(&redis, &["PTTL", &redis_key]);
    assert!((1..=2000).contains(&ttl), "PTTL {ttl} ms");

    // Redis drops it when the TTL runs out; the next request finds the
    // result in Storage and writes it back with a fresh TTL.
    mesh.until_result_stored(&key).await;
    eventually("the Redis entry expiring", async || {
        (redis_integer(&redis, &["EXISTS", &redis_key]) == 0).then_some(())
    })
    .await;
    let after = upload(&mesh, &photo, "format=jpeg", None).await;
    assert_eq!((after.cache.as_str(), &after.body), ("HIT-STORE", &first.body));
    until_cache("HIT-L2", || upload(&mesh, &photo, "format=jpeg", None)).await;
    redis_command(&redis, &["DEL", &redis_key]);
}
