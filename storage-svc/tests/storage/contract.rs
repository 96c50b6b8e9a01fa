//! The backend contract: every test here runs against the filesystem and
//! against a real S3 server, through the gRPC service.

use std::time::Duration;

use futures_util::StreamExt as _;
use nws_runtime::testing::{eventually, test_image};
use nws_watermark::pb::{
    DeleteRequest, GetRequest, Namespace, PutOptions, PutRequest, PutResponse, StatRequest, get_response,
    put_request,
};
use sha2::{Digest as _, Sha256};
use tonic::Code;

use crate::harness::{
    Backend, Storage, get, get_in, messages, pseudo_random_bytes, put, put_with, result_options, sha256_hex,
};

/// One `#[tokio::test]` per backend for each contract test.
macro_rules! contract {
    ($($test:ident),* $(,)?) => {
        mod fs {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() {
                super::$test(super::Backend::Fs).await;
            })*
        }
        mod s3 {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() {
                super::$test(super::Backend::S3).await;
            })*
        }
    };
}

contract!(
    put_get_stat_delete_round_trip,
    the_same_bytes_put_concurrently_are_one_object,
    a_hash_mismatch_keeps_nothing,
    a_put_cut_off_mid_stream_keeps_nothing,
    keys_that_are_not_sha256_hex_are_refused,
    results_live_under_their_own_keys,
    objects_survive_a_restart,
    a_200_mb_object_streams_through_in_flat_memory,
    a_sigkill_during_writes_leaves_no_torn_object,
    objects_at_the_part_size_boundaries_round_trip,
);

/// S3 uploads past this size go multipart (the suite's NWS_S3_PART_SIZE).
const PART: usize = 5 * 1024 * 1024;

fn start(backend: Backend) -> Storage {
    Storage::start_with(backend, &[("NWS_S3_PART_SIZE", "5MiB")])
}

async fn put_get_stat_delete_round_trip(backend: Backend) {
    let storage = start(backend);
    let mut client = storage.client().await;
    let photo = test_image("kleiber_4000x3000.jpg");

    let receipt = put(&mut client, &photo).await.expect("put");
    assert_eq!(receipt.sha256, sha256_hex(&photo));
    assert_eq!(receipt.size, photo.len() as u64);
    assert!(!receipt.deduplicated);
    assert_eq!(receipt.media_type, "image/jpeg");
    assert_eq!(
        storage.stored_objects(),
        [(storage.object_path("originals", &receipt.sha256), photo.clone())]
    );

    assert!(get(&mut client, &receipt.sha256).await.expect("get") == photo);
    let info = client
        .stat(StatRequest {
            sha256: receipt.sha256.clone(),
            namespace: Namespace::Originals.into(),
        })
        .await
        .expect("stat")
        .into_inner()
        .info
        .expect("info");
    assert_eq!(
        (info.size, info.media_type.as_str()),
        (photo.len() as u64, "image/jpeg")
    );
    let created = info.created.expect("created");
    let age = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
        - created.seconds;
    assert!((-5..600).contains(&age), "created {age} s ago");

    let delete = |sha256: String| DeleteRequest {
        sha256,
        namespace: Namespace::Originals.into(),
    };
    let deleted = client.delete(delete(receipt.sha256.clone())).await.unwrap();
    assert!(deleted.into_inner().deleted);
    let deleted_again = client.delete(delete(receipt.sha256.clone())).await.unwrap();
    assert!(!deleted_again.into_inner().deleted);
    let status = get(&mut client, &receipt.sha256).await.expect_err("deleted");
    assert_eq!(status.code(), Code::NotFound);
    assert!(storage.stored_objects().is_empty());
}

async fn the_same_bytes_put_concurrently_are_one_object(backend: Backend) {
    let storage = start(backend);
    let client = storage.client().await;
    // Above the part size, so S3 takes the multipart path.
    let photo = test_image("dragonfly_4224x3168_progressive.jpg");
    let photo = [photo.as_slice(), &pseudo_random_bytes(1, PART)].concat();

    let puts = (0..8).map(|_| {
        let mut client = client.clone();
        let photo = photo.clone();
        async move { put(&mut client, &photo).await }
    });
    let receipts: Vec<PutResponse> = futures_util::future::try_join_all(puts)
        .await
        .expect("every put succeeds");
    let key = sha256_hex(&photo);
    assert!(receipts.iter().all(|r| r.sha256 == key));
    let writers = receipts.iter().filter(|r| !r.deduplicated).count();
    match backend {
        // The hard link lets exactly one writer win.
        Backend::Fs => assert_eq!(writers, 1, "one writer wins"),
        // S3 has no put-if-absent here: racing writers may each write the
        // same bytes, but at least one reports the write.
        Backend::S3 => assert!(writers >= 1),
    }

    let mut client = client.clone();
    assert!(put(&mut client, &photo).await.unwrap().deduplicated);
    assert_eq!(
        storage.stored_objects(),
        [(storage.object_path("originals", &key), photo)]
    );
    let info = client
        .stat(StatRequest {
            sha256: key.clone(),
            namespace: Namespace::Originals.into(),
        })
        .await
        .expect("stat")
        .into_inner()
        .info
        .expect("info");
    assert_eq!(info.media_type, "image/jpeg");
    eventually("no leftovers", async || {
        storage.leftovers().is_empty().then_some(())
    })
    .await;
}

async fn a_hash_mismatch_keeps_nothing(backend: Backend) {
    let storage = start(backend);
    let mut client = storage.client().await;
    let small = test_image("tiny_16x16.jpg");
    let large = pseudo_random_bytes(2, PART + PART / 2);
    let wrong = sha256_hex(b"something else");
    for bytes in [&small, &large] {
        let status = put_with(
            &mut client,
            bytes,
            Some(PutOptions {
                expected_sha256: wrong.clone(),
                ..Default::default()
            }),
        )
        .await
        .expect_err("mismatch");
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert!(status.message().contains(&wrong), "{}", status.message());
        assert!(
            status.message().contains(&sha256_hex(bytes)),
            "{}",
            status.message()
        );
    }
    assert!(storage.stored_objects().is_empty());
    eventually("no leftovers", async || {
        storage.leftovers().is_empty().then_some(())
    })
    .await;

    // The right expectation passes, straight to the final key.
    for bytes in [&small, &large] {
        let right = put_with(
            &mut client,
            bytes,
            Some(PutOptions {
                expected_sha256: sha256_hex(bytes),
                ..Default::default()
            }),
        )
        .await
        .expect("matching hash");
        assert_eq!(right.sha256, sha256_hex(bytes));
        assert!(get(&mut client, &right.sha256).await.unwrap() == *bytes);
    }
    assert_eq!(storage.stored_objects().len(), 2);
}

async fn a_put_cut_off_mid_stream_keeps_nothing(backend: Backend) {
    let storage = start(backend);
    let client = storage.client().await;
    let bytes = pseudo_random_bytes(3, 2 * PART);

    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut call_client = client.clone();
    let call = tokio::spawn(async move {
        call_client
            .put(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
    });
    // More than a part, so that S3 has received one.
    let sent = messages(&bytes, None);
    for message in sent.into_iter().take(PART / (64 * 1024) + 8) {
        tx.send(message).await.expect("send");
    }
    // The half-written object exists somewhere; then the client vanishes.
    eventually("a part landing", async || {
        (!storage.leftovers().is_empty()).then_some(())
    })
    .await;
    call.abort();
    drop(tx);

    eventually("no leftovers", async || {
        storage.leftovers().is_empty().then_some(())
    })
    .await;
    assert!(storage.stored_objects().is_empty());
    let mut client = client.clone();
    let status = get(&mut client, &sha256_hex(&bytes))
        .await
        .expect_err("nothing kept");
    assert_eq!(status.code(), Code::NotFound);
}

async fn keys_that_are_not_sha256_hex_are_refused(backend: Backend) {
    let storage = start(backend);
    let mut client = storage.client().await;
    let good = sha256_hex(b"x");
    for bad in [
        "../../../../etc/passwd".to_owned(),
        format!("../{}", &good[3..]),
        good.to_uppercase(),
        good[..63].to_owned(),
        format!("{}/{}", &good[..2], &good[3..]),
        format!("tmp/{}", &good[4..]),
        String::new(),
    ] {
        for namespace in [Namespace::Originals, Namespace::Results] {
            let status = get_in(&mut client, namespace, &bad).await.expect_err(&bad);
            assert_eq!(status.code(), Code::InvalidArgument, "{bad}");
            assert!(
                status.message().contains("64 lowercase hex"),
                "{}",
                status.message()
            );
            let status = client
                .stat(StatRequest {
                    sha256: bad.clone(),
                    namespace: namespace.into(),
                })
                .await
                .expect_err(&bad);
            assert_eq!(status.code(), Code::InvalidArgument);
            let status = client
                .delete(DeleteRequest {
                    sha256: bad.clone(),
                    namespace: namespace.into(),
                })
                .await
                .expect_err(&bad);
            assert_eq!(status.code(), Code::InvalidArgument);
        }
        if !bad.is_empty() {
            let status = put_with(&mut client, b"bytes", Some(result_options(&bad)))
                .await
                .expect_err(&bad);
            assert_eq!(status.code(), Code::InvalidArgument, "{bad}");
        }
    }
    assert!(storage.stored_objects().is_empty());
}

async fn results_live_under_their_own_keys(backend: Backend) {
    let storage = start(backend);
    let mut client = storage.client().await;
    let key = sha256_hex(b"original hash + options + pipeline version");
    let rendered = test_image("tiny_16x16.jpg");
    let other = test_image("seeding_alpha_2000x1125.png");

    let stored = put_with(&mut client, &rendered, Some(result_options(&key)))
        .await
        .expect("put result");
    assert_eq!(
        (stored.sha256.as_str(), stored.deduplicated),
        (key.as_str(), false)
    );
    assert_eq!(stored.media_type, "image/jpeg");
    assert!(get_in(&mut client, Namespace::Results, &key).await.unwrap() == rendered);
    let status = get(&mut client, &key).await.expect_err("not an original");
    assert_eq!(status.code(), Code::NotFound);

    // A result is never replaced: the first one stays.
    let again = put_with(&mut client, &other, Some(result_options(&key)))
        .await
        .expect("put again");
    assert!(again.deduplicated);
    assert!(get_in(&mut client, Namespace::Results, &key).await.unwrap() == rendered);
    assert_eq!(
        storage.stored_objects(),
        [(storage.object_path("results", &key), rendered.clone())]
    );

    // Options that cannot name a place are refused.
    let status = put_with(
        &mut client,
        &rendered,
        Some(PutOptions {
            namespace: Namespace::Results.into(),
            ..Default::default()
        }),
    )
    .await
    .expect_err("no key");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("key"), "{}", status.message());
    let status = put_with(
        &mut client,
        &rendered,
        Some(PutOptions {
            key: key.clone(),
            ..Default::default()
        }),
    )
    .await
    .expect_err("original with a key");
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = client
        .get(GetRequest {
            sha256: key.clone(),
            namespace: 7,
        })
        .await
        .expect_err("unknown namespace");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("namespace"), "{}", status.message());

    let deleted = client
        .delete(DeleteRequest {
            sha256: key.clone(),
            namespace: Namespace::Results.into(),
        })
        .await
        .unwrap();
    assert!(deleted.into_inner().deleted);
    assert!(storage.stored_objects().is_empty());
}

async fn objects_survive_a_restart(backend: Backend) {
    let mut storage = start(backend);
    let mut client = storage.client().await;
    let photo = test_image("life_gray_3088x2056.jpg");
    let key = sha256_hex(b"a cache key");
    let original = put(&mut client, &photo).await.unwrap();
    put_with(&mut client, &photo, Some(result_options(&key)))
        .await
        .unwrap();

    storage.process.terminate();
    storage.restart();
    let mut client = storage.client().await;
    assert!(get(&mut client, &original.sha256).await.unwrap() == photo);
    assert!(get_in(&mut client, Namespace::Results, &key).await.unwrap() == photo);
    assert!(put(&mut client, &photo).await.unwrap().deduplicated);
}

async fn a_200_mb_object_streams_through_in_flat_memory(backend: Backend) {
    const SIZE: usize = 200 * 1024 * 1024;
    const CHUNK: usize = 64 * 1024;
    let storage = start(backend);
    let mut client = storage.client().await;
    let baseline = storage.process.peak_rss();

    // Generated as it is sent and hashed as it is read: neither side of the
    // test holds the object.
    let chunk = |i: usize| pseudo_random_bytes(i as u64 + 1000, CHUNK);
    let mut expected = Sha256::new();
    for i in 0..SIZE / CHUNK {
        expected.update(chunk(i));
    }
    let expected = hex::encode(expected.finalize());
    let upload = futures_util::stream::iter(0..SIZE / CHUNK).map(move |i| PutRequest {
        payload: Some(put_request::Payload::Chunk(chunk(i).into())),
    });
    let receipt = client.put(upload).await.expect("put 200 MB").into_inner();
    assert_eq!(
        (receipt.sha256.as_str(), receipt.size),
        (expected.as_str(), SIZE as u64)
    );

    let mut stream = client
        .get(GetRequest {
            sha256: expected.clone(),
            namespace: Namespace::Originals.into(),
        })
        .await
        .expect("get")
        .into_inner();
    let mut read = Sha256::new();
    let mut size = 0;
    while let Some(message) = stream.message().await.expect("read") {
        if let Some(get_response::Payload::Chunk(chunk)) = message.payload {
            size += chunk.len();
            read.update(&chunk);
        }
    }
    assert_eq!((hex::encode(read.finalize()), size), (expected, SIZE));

    let peak = storage.process.peak_rss();
    eprintln!(
        "{backend:?}: storage-svc peak RSS {:.1} MiB (at start {:.1} MiB) for a 200 MiB put and get",
        peak as f64 / 1048576.0,
        baseline as f64 / 1048576.0
    );
    assert!(
        peak < 100 * 1024 * 1024,
        "peak RSS {peak} bytes: the object is being held in memory"
    );
}

async fn a_sigkill_during_writes_leaves_no_torn_object(backend: Backend) {
    const OBJECTS: u64 = 8;
    let mut storage = start(backend);
    let client = storage.client().await;
    let payloads: Vec<Vec<u8>> = (0..OBJECTS)
        .map(|i| pseudo_random_bytes(100 + i, PART + PART / 4))
        .collect();

    // Puts trickle in, staggered, so that the kill finds some finished,
    // some mid-stream and some committing.
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
    for (i, payload) in payloads.iter().enumerate() {
        let mut client = client.clone();
        let done_tx = done_tx.clone();
        let chunks = messages(payload, None);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(60 * i as u64)).await;
            let upload = futures_util::stream::iter(chunks).then(|m| async {
                tokio::time::sleep(Duration::from_millis(2)).await;
                m
            });
            if let Ok(receipt) = client.put(upload).await {
                let _ = done_tx.send(receipt.into_inner().sha256);
            }
        });
    }
    let mut acknowledged = vec![
        tokio::time::timeout(Duration::from_secs(60), done_rx.recv())
            .await
            .expect("a put finishes")
            .expect("sender alive"),
    ];
    storage.process.kill();
    while let Ok(key) = done_rx.try_recv() {
        acknowledged.push(key);
    }

    storage.restart();
    let mut client = storage.client().await;
    let mut kept = 0;
    for payload in &payloads {
        let key = sha256_hex(payload);
        match get(&mut client, &key).await {
            Ok(bytes) => {
                assert!(bytes == *payload, "object {key} is torn");
                kept += 1;
            }
            Err(status) => {
                assert_eq!(status.code(), Code::NotFound);
                assert!(!acknowledged.contains(&key), "acknowledged put {key} was lost");
            }
        }
    }
    assert!(
        kept >= 1 && kept < OBJECTS as usize,
        "kept {kept}: the kill came too late to test anything"
    );
    for (path, bytes) in storage.stored_objects() {
        let name = path.rsplit('/').next().unwrap();
        assert_eq!(name, sha256_hex(&bytes), "{path} is torn");
    }
    if backend == Backend::Fs {
        // A new process removes what the killed one left half-written. (On
        // S3 those are invisible parts of incomplete uploads, expired by the
        // bucket's lifecycle rule.)
        assert_eq!(storage.leftovers(), Vec::<String>::new());
    }
}

/// Sizes where S3's single-request and multipart paths meet: nothing at
/// all, one byte short of a part, exactly one part, one byte over,
/// exactly two parts.
async fn objects_at_the_part_size_boundaries_round_trip(backend: Backend) {
    let storage = start(backend);
    let mut client = storage.client().await;
    let sizes = [0, PART - 1, PART, PART + 1, 2 * PART];
    for (seed, size) in (10..).zip(sizes) {
        let object = pseudo_random_bytes(seed, size);
        let receipt = put(&mut client, &object)
            .await
            .unwrap_or_else(|e| panic!("{size}: {e:?}"));
        assert_eq!(
            (receipt.sha256.clone(), receipt.size),
            (sha256_hex(&object), size as u64)
        );
        assert!(
            get(&mut client, &receipt.sha256).await.unwrap() == object,
            "{size} bytes read back"
        );
        let info = client
            .stat(StatRequest {
                sha256: receipt.sha256.clone(),
                namespace: Namespace::Originals.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .info
            .unwrap();
        assert_eq!(info.size, size as u64);
        let path = storage.object_path("originals", &receipt.sha256);
        assert!(
            storage
                .stored_objects()
                .iter()
                .any(|(p, bytes)| *p == path && *bytes == object),
            "{size} bytes stored whole"
        );
    }
    assert_eq!(storage.stored_objects().len(), sizes.len());
    assert!(storage.leftovers().is_empty(), "{:?}", storage.leftovers());
}
