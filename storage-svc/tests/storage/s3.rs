//! What only the S3 backend meets: outages, a server that never answers,
//! a missing bucket, bad settings, and clients outside the project.

use std::{path::Path, process::Command, time::Duration};

use nws_runtime::testing::{S3Server, eventually, run_to_exit, test_image};
use nws_watermark::pb::Namespace;
use tonic::Code;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::harness::{Backend, Storage, get, get_in, put, put_with, result_options, sha256_hex};

async fn health(storage: &Storage) -> ServingStatus {
    let channel = tonic::transport::Endpoint::from_shared(storage.process.url("storage"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut client = HealthClient::new(channel);
    client
        .check(HealthCheckRequest {
            service: "watermark.v1.Storage".to_owned(),
        })
        .await
        .expect("health check")
        .into_inner()
        .status()
}

async fn wait_for_health(storage: &Storage, wanted: ServingStatus) {
    eventually(&format!("health {wanted:?}"), async || {
        (health(storage).await == wanted).then_some(())
    })
    .await;
}

#[tokio::test]
async fn an_outage_gives_unavailable_and_storage_recovers_by_itself() {
    let mut storage = Storage::start_with(Backend::S3, &[("NWS_STORAGE_TIMEOUT", "3s")]);
    let mut client = storage.client().await;
    let photo = test_image("tiny_16x16.jpg");
    let kept = put(&mut client, &photo).await.expect("put while up");
    wait_for_health(&storage, ServingStatus::Serving).await;

    storage.s3.as_mut().unwrap().stop();
    let other = test_image("life_gray_3088x2056.jpg");
    let status = put(&mut client, &other).await.expect_err("S3 is down");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("storage backend"),
        "{}",
        status.message()
    );
    let status = get(&mut client, &kept.sha256).await.expect_err("S3 is down");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    wait_for_health(&storage, ServingStatus::NotServing).await;

    // The same process, once S3 is back.
    storage.s3.as_mut().unwrap().restart();
    wait_for_health(&storage, ServingStatus::Serving).await;
    assert!(get(&mut client, &kept.sha256).await.expect("get after recovery") == photo);
    let stored = put(&mut client, &other).await.expect("put after recovery");
    assert_eq!(stored.sha256, sha256_hex(&other));
    // The outage and its end are both logged (logs arrive through a pipe).
    let recovered = || {
        let logs = storage.process.logs();
        logs.find("dependency down")
            .is_some_and(|down| logs[down..].contains("dependency reachable"))
    };
    eventually("recovery", async || recovered().then_some(())).await;
}

#[tokio::test]
async fn a_server_that_never_answers_times_out_instead_of_hanging() {
    // Accepts connections and never says a word.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", silent.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    let storage = Storage::start_with(
        Backend::Fs,
        &[
            ("NWS_STORAGE_BACKEND", "s3"),
            ("NWS_S3_ENDPOINT", &endpoint),
            ("AWS_ACCESS_KEY_ID", S3Server::ACCESS_KEY),
            ("AWS_SECRET_ACCESS_KEY", S3Server::SECRET_KEY),
            ("NWS_STORAGE_TIMEOUT", "1s"),
        ],
    );
    let mut client = storage.client().await;
    let calls = async {
        let status = put(&mut client, b"some bytes").await.expect_err("no answer");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(
            status.message().contains("NWS_STORAGE_TIMEOUT"),
            "{}",
            status.message()
        );
        let status = get_in(&mut client, Namespace::Results, &sha256_hex(b"k"))
            .await
            .expect_err("no answer");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    };
    tokio::time::timeout(Duration::from_secs(30), calls)
        .await
        .expect("calls end with UNAVAILABLE instead of hanging");
    eventually("dependency down", async || {
        storage.process.logs().contains("dependency down").then_some(())
    })
    .await;
    assert_eq!(health(&storage).await, ServingStatus::NotServing);
}

#[tokio::test]
async fn a_missing_bucket_is_created_unless_told_not_to() {
    let storage = Storage::start(Backend::S3);
    wait_for_health(&storage, ServingStatus::Serving).await;
    put(&mut storage.client().await, b"bytes").await.expect("put");
    let bucket = storage.s3.as_ref().unwrap().root().join(S3Server::BUCKET);
    assert!(bucket.is_dir(), "bucket created at start");

    let storage = Storage::start_with(Backend::S3, &[("NWS_S3_CREATE_BUCKET", "false")]);
    // NOT_SERVING from the start, and the first check says why.
    assert_eq!(health(&storage).await, ServingStatus::NotServing);
    eventually("NWS_S3_CREATE_BUCKET is false", async || {
        storage
            .process
            .logs()
            .contains("NWS_S3_CREATE_BUCKET is false")
            .then_some(())
    })
    .await;
    assert_eq!(health(&storage).await, ServingStatus::NotServing);
    let bucket = storage.s3.as_ref().unwrap().root().join(S3Server::BUCKET);
    assert!(!bucket.exists());
}

#[tokio::test]
async fn bad_s3_settings_stop_the_start_with_one_line() {
    let binary = Path::new(env!("CARGO_BIN_EXE_storage-svc"));
    let base = [("NWS_STORAGE_ADDR", "127.0.0.1:0"), ("NWS_STORAGE_BACKEND", "s3")];
    let keys = [
        ("AWS_ACCESS_KEY_ID", "access"),
        ("AWS_SECRET_ACCESS_KEY", "secret"),
    ];
    let cases: [(Vec<(&str, &str)>, &str); 4] = [
        (vec![], "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"),
        (
            [&keys[..], &[("NWS_S3_ENDPOINT", "minio:9000")]].concat(),
            "NWS_S3_ENDPOINT must start with http",
        ),
        (
            [&keys[..], &[("NWS_S3_PART_SIZE", "1MiB")]].concat(),
            "NWS_S3_PART_SIZE",
        ),
        (
            [&keys[..], &[("NWS_STORAGE_BACKEND", "tape")]].concat(),
            "NWS_STORAGE_BACKEND",
        ),
    ];
    for (extra, expected) in cases {
        let env = [&base[..], &extra].concat();
        let (status, stderr) = run_to_exit(binary, &env);
        assert!(!status.success(), "{env:?}");
        assert!(stderr.contains(expected), "{env:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[tokio::test]
async fn an_outside_s3_client_sees_the_objects_where_the_readme_says() {
    let storage = Storage::start(Backend::S3);
    let mut client = storage.client().await;
    let photo = test_image("kleiber_4000x3000.jpg");
    let original = put(&mut client, &photo).await.unwrap();
    let result_key = sha256_hex(b"a cache key");
    put_with(
        &mut client,
        &test_image("tiny_16x16.jpg"),
        Some(result_options(&result_key)),
    )
    .await
    .unwrap();

    let s3 = storage.s3.as_ref().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/outside_s3_client.py");
    let python = std::env::var("NWS_TEST_PYTHON")
        .expect("NWS_TEST_PYTHON is not set: run the suite with scripts/test.sh, which installs boto3");
    let output = Command::new(python)
        .arg(&script)
        .args(["--endpoint", &s3.endpoint(), "--bucket", S3Server::BUCKET])
        .args(["--original", &original.sha256, "--result", &result_key])
        .env("AWS_ACCESS_KEY_ID", S3Server::ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", S3Server::SECRET_KEY)
        .env("AWS_DEFAULT_REGION", S3Server::REGION)
        .output()
        .expect("run the boto3 client");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "boto3 client failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains(&format!(
            "originals/{} image/jpeg {} sha256-ok",
            original.sha256,
            photo.len()
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("results/{result_key} image/jpeg")),
        "{stdout}"
    );
}
