//! The Storage binary, started for real and called over gRPC.

use std::{path::Path, time::Duration};

use nws_watermark::{
    pb::{
        DeleteRequest, GetRequest, PutOptions, PutRequest, PutResponse, StatRequest, get_response,
        put_request, storage_client::StorageClient,
    },
    testing::{ServiceProcess, test_image},
};
use sha2::{Digest as _, Sha256};
use tonic::{Code, transport::Channel};

struct Storage {
    process: ServiceProcess,
    data_dir: tempfile::TempDir,
}

impl Storage {
    fn start() -> Self {
        let data_dir = tempfile::tempdir().expect("temp dir");
        Self::start_in(data_dir)
    }

    fn start_in(data_dir: tempfile::TempDir) -> Self {
        let dir = data_dir.path().to_str().expect("UTF-8 temp path").to_owned();
        let process = ServiceProcess::start(
            Path::new(env!("CARGO_BIN_EXE_storage-svc")),
            &[("NWS_STORAGE_ADDR", "127.0.0.1:0"), ("NWS_DATA_DIR", &dir)],
            &["storage"],
        );
        Self { process, data_dir }
    }

    async fn client(&self) -> StorageClient<Channel> {
        StorageClient::connect(self.process.url("storage"))
            .await
            .expect("connect")
    }

    /// Every file under the data directory, relative to it.
    fn files(&self) -> Vec<String> {
        fn walk(dir: &Path, root: &Path, out: &mut Vec<String>) {
            for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
                let path = entry.path();
                if path.is_dir() {
                    walk(&path, root, out);
                } else {
                    out.push(path.strip_prefix(root).unwrap().display().to_string());
                }
            }
        }
        let mut out = Vec::new();
        walk(self.data_dir.path(), self.data_dir.path(), &mut out);
        out.sort();
        out
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn chunks(bytes: &[u8], options: Option<PutOptions>) -> Vec<PutRequest> {
    let mut messages: Vec<PutRequest> = options
        .map(|o| PutRequest {
            payload: Some(put_request::Payload::Options(o)),
        })
        .into_iter()
        .collect();
    messages.extend(bytes.chunks(64 * 1024).map(|c| PutRequest {
        payload: Some(put_request::Payload::Chunk(c.to_vec().into())),
    }));
    messages
}

async fn put(client: &mut StorageClient<Channel>, bytes: &[u8]) -> Result<PutResponse, tonic::Status> {
    Ok(client
        .put(tokio_stream::iter(chunks(bytes, None)))
        .await?
        .into_inner())
}

async fn get(client: &mut StorageClient<Channel>, sha256: &str) -> Result<Vec<u8>, tonic::Status> {
    let mut stream = client
        .get(GetRequest {
            sha256: sha256.to_owned(),
        })
        .await?
        .into_inner();
    let info = match stream.message().await?.and_then(|m| m.payload) {
        Some(get_response::Payload::Info(info)) => info,
        other => panic!("expected info first, got {other:?}"),
    };
    let mut bytes = Vec::new();
    while let Some(message) = stream.message().await? {
        match message.payload {
            Some(get_response::Payload::Chunk(chunk)) => {
                assert!(chunk.len() <= 64 * 1024);
                bytes.extend_from_slice(&chunk);
            }
            other => panic!("expected chunks after the info, got {other:?}"),
        }
    }
    assert_eq!(info.size, bytes.len() as u64);
    Ok(bytes)
}

#[tokio::test]
async fn put_get_stat_delete_round_trip() {
    let storage = Storage::start();
    let mut client = storage.client().await;
    let photo = test_image("kleiber_4000x3000.jpg");

    let receipt = put(&mut client, &photo).await.expect("put");
    assert_eq!(receipt.sha256, sha256_hex(&photo));
    assert_eq!(receipt.size, photo.len() as u64);
    assert!(!receipt.deduplicated);
    assert_eq!(receipt.media_type, "image/jpeg");

    assert!(get(&mut client, &receipt.sha256).await.expect("get") == photo);
    let info = client
        .stat(StatRequest {
            sha256: receipt.sha256.clone(),
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
    assert!(info.created.is_some());

    let delete = |sha256: String| DeleteRequest { sha256 };
    assert!(
        client
            .delete(delete(receipt.sha256.clone()))
            .await
            .unwrap()
            .into_inner()
            .deleted
    );
    assert!(
        !client
            .delete(delete(receipt.sha256.clone()))
            .await
            .unwrap()
            .into_inner()
            .deleted
    );
    let status = get(&mut client, &receipt.sha256).await.expect_err("deleted");
    assert_eq!(status.code(), Code::NotFound);
}

#[tokio::test]
async fn the_same_bytes_are_stored_once_even_when_put_concurrently() {
    let storage = Storage::start();
    let client = storage.client().await;
    let photo = test_image("dragonfly_4224x3168_progressive.jpg");

    let puts = (0..8).map(|_| {
        let mut client = client.clone();
        let photo = photo.clone();
        async move { put(&mut client, &photo).await }
    });
    let receipts: Vec<PutResponse> = futures_util::future::try_join_all(puts)
        .await
        .expect("every put succeeds");
    assert!(receipts.iter().all(|r| r.sha256 == sha256_hex(&photo)));
    assert_eq!(
        receipts.iter().filter(|r| !r.deduplicated).count(),
        1,
        "one writer wins"
    );

    let mut client = client.clone();
    assert!(put(&mut client, &photo).await.unwrap().deduplicated);
    let key = sha256_hex(&photo);
    assert_eq!(
        storage.files(),
        [format!("originals/{}/{}/{key}", &key[..2], &key[2..4])]
    );
}

#[tokio::test]
async fn a_hash_mismatch_keeps_nothing() {
    let storage = Storage::start();
    let mut client = storage.client().await;
    let photo = test_image("tiny_16x16.jpg");
    let wrong = sha256_hex(b"something else");
    let status = client
        .put(tokio_stream::iter(chunks(
            &photo,
            Some(PutOptions {
                expected_sha256: wrong.clone(),
            }),
        )))
        .await
        .expect_err("mismatch");
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(status.message().contains(&wrong), "{}", status.message());
    assert!(storage.files().is_empty(), "{:?}", storage.files());

    // The right expectation passes.
    let right = client
        .put(tokio_stream::iter(chunks(
            &photo,
            Some(PutOptions {
                expected_sha256: sha256_hex(&photo),
            }),
        )))
        .await
        .expect("matching hash")
        .into_inner();
    assert_eq!(right.sha256, sha256_hex(&photo));
}

#[tokio::test]
async fn a_put_cut_off_mid_stream_keeps_nothing() {
    let storage = Storage::start();
    let client = storage.client().await;
    let photo = test_image("kleiber_4000x3000.jpg");

    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut call_client = client.clone();
    let call = tokio::spawn(async move {
        call_client
            .put(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
    });
    for message in chunks(&photo, None).into_iter().take(10) {
        tx.send(message).await.expect("send");
    }
    // Wait until the half-written object is on disk, then vanish mid-stream.
    wait_until(|| storage.files().iter().any(|f| f.starts_with("tmp/"))).await;
    call.abort();
    drop(tx);

    wait_until(|| storage.files().is_empty()).await;
    let mut client = client.clone();
    let status = get(&mut client, &sha256_hex(&photo))
        .await
        .expect_err("nothing kept");
    assert_eq!(status.code(), Code::NotFound);
}

#[tokio::test]
async fn keys_that_are_not_sha256_hex_are_refused() {
    let storage = Storage::start();
    let mut client = storage.client().await;
    let good = sha256_hex(b"x");
    for bad in [
        "../../../../etc/passwd".to_owned(),
        format!("../{}", &good[3..]),
        good.to_uppercase(),
        good[..63].to_owned(),
        format!("{}/{}", &good[..2], &good[3..]),
        String::new(),
    ] {
        let status = get(&mut client, &bad).await.expect_err(&bad);
        assert_eq!(status.code(), Code::InvalidArgument, "{bad}");
        assert!(
            status.message().contains("64 lowercase hex"),
            "{}",
            status.message()
        );
        let status = client
            .stat(StatRequest { sha256: bad.clone() })
            .await
            .expect_err(&bad);
        assert_eq!(status.code(), Code::InvalidArgument);
        let status = client
            .delete(DeleteRequest { sha256: bad.clone() })
            .await
            .expect_err(&bad);
        assert_eq!(status.code(), Code::InvalidArgument);
    }
}

#[tokio::test]
async fn unfinished_writes_from_a_dead_process_are_cleaned_at_start() {
    let data_dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(data_dir.path().join("tmp")).unwrap();
    std::fs::write(data_dir.path().join("tmp/put-1-0"), b"half an object").unwrap();
    let storage = Storage::start_in(data_dir);
    assert!(storage.files().is_empty(), "{:?}", storage.files());
}

async fn wait_until(mut condition: impl FnMut() -> bool) {
    for _ in 0..500 {
        if condition() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition not met within 5 s");
}
