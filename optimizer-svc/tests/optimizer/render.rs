//! Render: the original read from a real Storage service by its hash, and
//! the result kept there.

use nws_runtime::testing::workspace_binary;
use nws_watermark::{
    options::Options,
    pb::{
        Namespace, PutRequest, RenderPriority, RenderRequest, StatRequest, put_request,
        storage_client::StorageClient,
    },
    render::RenderJob,
    stream::{self as framed, StreamError},
};

use crate::*;

/// A Storage service of the test's own, over a temporary directory.
struct Storage {
    process: ServiceProcess,
    _dir: tempfile::TempDir,
}

impl Storage {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let process = ServiceProcess::start(
            &workspace_binary("storage-svc"),
            &[
                ("NWS_STORAGE_ADDR", "127.0.0.1:0"),
                ("NWS_DATA_DIR", dir.path().to_str().unwrap()),
            ],
            &["storage"],
        );
        Self { process, _dir: dir }
    }

    fn url(&self) -> String {
        self.process.url("storage")
    }

    async fn client(&self) -> StorageClient<Channel> {
        StorageClient::connect(self.url())
            .await
            .expect("connect to storage")
    }

    /// The description of the result `key`, if Storage keeps one.
    async fn result(&self, key: &str) -> Result<u64, tonic::Status> {
        let stat = self
            .client()
            .await
            .stat(StatRequest {
                sha256: key.to_owned(),
                namespace: Namespace::Results.into(),
            })
            .await?
            .into_inner();
        Ok(stat.info.expect("info").size)
    }

    /// Stores `bytes` as an original and returns its hash.
    async fn put(&self, bytes: &[u8]) -> String {
        let chunks: Vec<PutRequest> = bytes
            .chunks(64 * 1024)
            .map(|chunk| PutRequest {
                payload: Some(put_request::Payload::Chunk(chunk.to_vec().into())),
            })
            .collect();
        self.client()
            .await
            .put(tokio_stream::iter(chunks))
            .await
            .expect("put")
            .into_inner()
            .sha256
    }
}

/// Renders through the contracts' own reader of described streams, which
/// holds the bytes to the size the header announces.
async fn render(
    client: &mut OptimizerClient<Channel>,
    request: RenderRequest,
) -> Result<(OptimizeHeader, Vec<u8>), tonic::Status> {
    let read = async {
        let responses = client.render(request).await?.into_inner();
        let (header, mut rest) = framed::open(responses).await?;
        let bytes = framed::collect(&mut rest, header.size, u64::MAX).await?;
        framed::finish(rest).await?;
        Ok((header, bytes.to_vec()))
    };
    read.await.map_err(|error| match error {
        StreamError::Status(status) => status,
        StreamError::Protocol(what) => panic!("the optimizer broke the stream: {what}"),
    })
}

fn job(sha256: &str, options: OptimizeOptions) -> RenderJob {
    RenderJob::new(sha256.to_owned(), Options::try_from(options).unwrap())
}

#[tokio::test]
async fn render_reads_the_original_from_storage_and_keeps_the_result_there() {
    let storage = Storage::start();
    let process = start(&[("NWS_STORAGE_URL", &storage.url())]);
    let mut client = client(&process).await;
    let photo = test_image("picos_orient6.jpg");
    let sha256 = storage.put(&photo).await;

    let options = OptimizeOptions {
        format: ImageFormat::Webp as i32,
        max_width: 800,
        ..OptimizeOptions::default()
    };
    let job = job(&sha256, options.clone());
    let (header, bytes) = render(&mut client, job.request(true, RenderPriority::Interactive))
        .await
        .expect("render");
    assert_eq!(header.result_key, job.key().to_string());
    assert_eq!((header.width, header.height), (800, 600));
    assert_eq!(header.size, bytes.len() as u64);

    // The same pixels as when the image is sent in the call.
    let (_, sent) = optimize(&mut client, options, &photo).await.unwrap();
    assert_eq!(bytes, sent);

    // The stream ended once the result was kept: it is there now.
    let stored = storage
        .result(&job.key().to_string())
        .await
        .expect("the result is stored");
    assert_eq!(stored, bytes.len() as u64);

    // Without store_result nothing more is kept.
    let other = self::job(
        &sha256,
        OptimizeOptions {
            quality: 40,
            ..OptimizeOptions::default()
        },
    );
    render(&mut client, other.request(false, RenderPriority::Interactive))
        .await
        .unwrap();
    let status = storage.result(&other.key().to_string()).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
}

#[tokio::test]
async fn render_names_what_it_cannot_do() {
    let storage = Storage::start();
    let process = start(&[("NWS_STORAGE_URL", &storage.url())]);
    let mut client = client(&process).await;

    let absent = job(&"0".repeat(64), OptimizeOptions::default());
    let status = render(&mut client, absent.request(true, RenderPriority::Interactive))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert!(status.message().contains(&"0".repeat(64)), "{}", status.message());

    let malformed = RenderRequest {
        original_sha256: "../etc/passwd".into(),
        ..RenderRequest::default()
    };
    let status = render(&mut client, malformed).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");

    // Stored bytes that are no image the optimizer reads.
    let text = storage.put(b"plain text, not an image at all").await;
    let status = render(
        &mut client,
        job(&text, OptimizeOptions::default()).request(true, RenderPriority::Interactive),
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");

    // An optimizer without Storage says so.
    let alone = start(&[]);
    let status = render(
        &mut super::client(&alone).await,
        job(&text, OptimizeOptions::default()).request(true, RenderPriority::Interactive),
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(
        status.message().contains("NWS_STORAGE_URL"),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn background_renders_take_only_an_idle_worker() {
    let storage = Storage::start();
    let process = start(&[
        ("NWS_STORAGE_URL", &storage.url()),
        ("NWS_OPTIMIZER_WORKERS", "1"),
    ]);
    let client = client(&process).await;
    let tiny = storage.put(&test_image("tiny_16x16.jpg")).await;
    let photo = storage.put(&test_image("kleiber_4000x3000.jpg")).await;

    // The only worker encodes AVIF for about a second.
    let mut busy = client.clone();
    let slow = job(
        &photo,
        OptimizeOptions {
            format: ImageFormat::Avif as i32,
            ..OptimizeOptions::default()
        },
    );
    let slow =
        tokio::spawn(
            async move { render(&mut busy, slow.request(false, RenderPriority::Interactive)).await },
        );

    // Background renders run while the worker is idle and are refused at
    // once as soon as it is taken.
    let mut background = client.clone();
    let refused = loop {
        let attempt = render(
            &mut background,
            job(&tiny, OptimizeOptions::default()).request(false, RenderPriority::Background),
        )
        .await;
        match attempt {
            Ok(_) => assert!(!slow.is_finished(), "the slow render never took the worker"),
            Err(status) => break status,
        }
    };
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("idle"), "{}", refused.message());
    assert!(!slow.is_finished(), "refused while the worker was busy");

    // A caller that waits gets its turn.
    let mut waiting = client.clone();
    render(
        &mut waiting,
        job(&tiny, OptimizeOptions::default()).request(false, RenderPriority::Interactive),
    )
    .await
    .expect("an interactive render waits for the worker");
    slow.await.unwrap().expect("the slow render finishes");
}
