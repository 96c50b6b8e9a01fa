//! A Storage process over a chosen backend, and what its backend holds.

use std::path::{Path, PathBuf};

use nws_runtime::testing::{S3Server, ServiceProcess};
use nws_watermark::pb::{
    GetRequest, Namespace, PutOptions, PutRequest, PutResponse, get_response, put_request,
    storage_client::StorageClient,
};
use sha2::{Digest as _, Sha256};
use tonic::transport::Channel;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Fs,
    S3,
}

pub struct Storage {
    pub process: ServiceProcess,
    pub backend: Backend,
    data_dir: tempfile::TempDir,
    pub s3: Option<S3Server>,
    env: Vec<(String, String)>,
}

impl Storage {
    pub fn start(backend: Backend) -> Self {
        Self::start_with(backend, &[])
    }

    /// Starts with `extra` settings on top of the backend's; health is
    /// checked every 200 ms so that tests see changes quickly.
    pub fn start_with(backend: Backend, extra: &[(&str, &str)]) -> Self {
        let data_dir = tempfile::tempdir().expect("temp dir");
        let s3 = (backend == Backend::S3).then(S3Server::start);
        let mut env: Vec<(String, String)> = vec![
            ("NWS_STORAGE_ADDR".into(), "127.0.0.1:0".into()),
            (
                "NWS_DATA_DIR".into(),
                data_dir.path().to_str().expect("UTF-8 path").into(),
            ),
            ("NWS_STORAGE_HEALTH_INTERVAL".into(), "200ms".into()),
        ];
        if let Some(s3) = &s3 {
            env.extend(s3.storage_env().into_iter().map(|(k, v)| (k.to_owned(), v)));
        }
        env.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
        let process = launch(&env);
        Self {
            process,
            backend,
            data_dir,
            s3,
            env,
        }
    }

    /// Starts a new process over the same data (after `process.kill()`).
    pub fn restart(&mut self) {
        self.process = launch(&self.env);
    }

    pub async fn client(&self) -> StorageClient<Channel> {
        StorageClient::connect(self.process.url("storage"))
            .await
            .expect("connect")
    }

    pub fn data_dir(&self) -> &Path {
        self.data_dir.path()
    }

    /// Where the backend keeps its objects: the data directory, or the
    /// bucket's directory inside the S3 server's root.
    fn object_root(&self) -> PathBuf {
        match &self.s3 {
            None => self.data_dir.path().to_path_buf(),
            Some(s3) => s3.root().join(S3Server::BUCKET),
        }
    }

    /// Every object the backend holds, as `namespace/…/key` paths relative
    /// to its root, with its bytes.
    pub fn stored_objects(&self) -> Vec<(String, Vec<u8>)> {
        let root = self.object_root();
        ["originals", "results"]
            .iter()
            .flat_map(|namespace| files_under(&root.join(namespace), &root))
            .map(|path| {
                let bytes = std::fs::read(root.join(&path)).expect("read object");
                (path, bytes)
            })
            .collect()
    }

    /// Anything left behind by unfinished writes: the filesystem's `tmp/`
    /// (but for health probes), or the bucket's `tmp/` and the S3 server's
    /// stored parts of multipart uploads.
    pub fn leftovers(&self) -> Vec<String> {
        let mut found = files_under(&self.object_root().join("tmp"), &self.object_root());
        found.retain(|path| !path.starts_with("tmp/health-"));
        if let Some(s3) = &self.s3 {
            found.extend(
                files_under(s3.root(), s3.root())
                    .into_iter()
                    .filter(|path| path.starts_with(".upload")),
            );
        }
        found
    }

    /// The path of an object inside the backend's root.
    pub fn object_path(&self, namespace: &str, key: &str) -> String {
        match self.backend {
            Backend::Fs => format!("{namespace}/{}/{}/{key}", &key[..2], &key[2..4]),
            Backend::S3 => format!("{namespace}/{key}"),
        }
    }
}

fn launch(env: &[(String, String)]) -> ServiceProcess {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    ServiceProcess::start(Path::new(env!("CARGO_BIN_EXE_storage-svc")), &env, &["storage"])
}

fn files_under(dir: &Path, root: &Path) -> Vec<String> {
    fn walk(dir: &Path, root: &Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, root, out);
            } else {
                out.push(path.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, root, &mut out);
    out.sort();
    out
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Deterministic bytes that do not repeat, so every object is distinct.
pub fn pseudo_random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

pub fn messages(bytes: &[u8], options: Option<PutOptions>) -> Vec<PutRequest> {
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

pub async fn put(client: &mut StorageClient<Channel>, bytes: &[u8]) -> Result<PutResponse, tonic::Status> {
    put_with(client, bytes, None).await
}

pub async fn put_with(
    client: &mut StorageClient<Channel>,
    bytes: &[u8],
    options: Option<PutOptions>,
) -> Result<PutResponse, tonic::Status> {
    Ok(client
        .put(tokio_stream::iter(messages(bytes, options)))
        .await?
        .into_inner())
}

pub fn result_options(key: &str) -> PutOptions {
    PutOptions {
        namespace: Namespace::Results.into(),
        key: key.to_owned(),
        ..Default::default()
    }
}

pub async fn get(client: &mut StorageClient<Channel>, sha256: &str) -> Result<Vec<u8>, tonic::Status> {
    get_in(client, Namespace::Originals, sha256).await
}

pub async fn get_in(
    client: &mut StorageClient<Channel>,
    namespace: Namespace,
    key: &str,
) -> Result<Vec<u8>, tonic::Status> {
    let mut stream = client
        .get(GetRequest {
            sha256: key.to_owned(),
            namespace: namespace.into(),
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
