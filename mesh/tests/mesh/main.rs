//! The all-in-one binary (the whole mesh in one process, or pointed at
//! separately started services), driven through the network by real
//! clients.

mod animation;
mod cache;
mod clients;
mod forms;
mod http_api;
mod lifecycle;
mod marks;
mod observability;
mod protocol;
mod web;

use std::path::PathBuf;

use nws_runtime::testing::eventually;
use nws_runtime::testing::{ServiceProcess, workspace_binary};
pub use nws_runtime::testing::{files_under, tool};
use nws_watermark::pb::{
    OptimizeHeader, OptimizeOptions, OptimizeRequest, optimize_request, optimize_response,
    optimizer_client::OptimizerClient,
};
use sha2::{Digest as _, Sha256};

pub const KLEIBER: &str = "kleiber_4000x3000.jpg";

/// A running gateway with its own data directory and HTTP client.
pub struct Mesh {
    pub process: ServiceProcess,
    pub data_dir: tempfile::TempDir,
    pub http: reqwest::Client,
}

impl Mesh {
    /// The whole mesh in one process, every port picked by the system.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// As [`Mesh::start`], with extra settings. Services whose URL is given
    /// are not embedded, so only the gateway's address is awaited for them.
    pub fn start_with(env: &[(&str, &str)]) -> Self {
        let data_dir = tempfile::tempdir().expect("temp dir");
        let dir = data_dir.path().to_str().expect("UTF-8 temp path").to_owned();
        let mut all_env = vec![
            ("NWS_HTTP_ADDR", "127.0.0.1:0"),
            ("NWS_OPTIMIZER_ADDR", "127.0.0.1:0"),
            ("NWS_STORAGE_ADDR", "127.0.0.1:0"),
            ("NWS_DATA_DIR", dir.as_str()),
        ];
        all_env.extend_from_slice(env);
        let given = |name: &str| env.iter().any(|(key, _)| *key == name);
        // The admin listener serves the metrics of the whole process.
        let mut services = vec!["gateway", "admin"];
        if !given("NWS_OPTIMIZER_URL") {
            services.push("optimizer");
        }
        if !given("NWS_STORAGE_URL") {
            services.push("storage");
        }
        let process = ServiceProcess::start(&workspace_binary("nws-mesh"), &all_env, &services);
        Self {
            process,
            data_dir,
            http: reqwest::Client::new(),
        }
    }

    /// `GET path` on the gateway.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(self.url(path))
            .send()
            .await
            .expect("GET reaches the gateway")
    }

    /// `POST path` with `body` (a raw upload, or JSON text).
    pub async fn post(&self, path: &str, body: impl Into<reqwest::Body>) -> reqwest::Response {
        self.http
            .post(self.url(path))
            .body(body)
            .send()
            .await
            .expect("POST reaches the gateway")
    }

    /// `POST path` with a multipart form.
    pub async fn post_form(&self, path: &str, form: reqwest::multipart::Form) -> reqwest::Response {
        self.http
            .post(self.url(path))
            .multipart(form)
            .send()
            .await
            .expect("POST reaches the gateway")
    }

    /// Waits until Storage keeps the result `key` (written in the
    /// background after the response) and returns its description.
    pub async fn until_result_stored(&self, key: &str) -> serde_json::Value {
        let path = format!("/v1/objects/{key}?namespace=NAMESPACE_RESULTS");
        let stored = eventually(&format!("result {key} in storage"), async || {
            let response = self.get(&path).await;
            (response.status() == 200).then_some(response)
        })
        .await;
        stored.json().await.expect("JSON")
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.process.url("gateway"))
    }

    /// Stored originals on disk.
    pub fn stored_originals(&self) -> Vec<PathBuf> {
        files_under(&self.data_dir.path().join("originals"))
    }
}

/// Reads one HTTP/1.1 response from a raw connection: its status and JSON
/// body (framed by Content-Length), within a generous bound.
pub async fn read_json_response(stream: &mut tokio::net::TcpStream) -> (u16, serde_json::Value) {
    use tokio::io::AsyncReadExt as _;
    let mut received = Vec::new();
    let read = async {
        let mut buffer = [0u8; 8192];
        loop {
            if let Some(end) = received.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&received[..end]).to_ascii_lowercase();
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map_or(0, |v| v.trim().parse().unwrap());
                if received.len() >= end + 4 + length {
                    let status = head[9..12].parse().unwrap();
                    let body = serde_json::from_slice(&received[end + 4..end + 4 + length]).unwrap();
                    return (status, body);
                }
            }
            let n = stream.read(&mut buffer).await.expect("read the response");
            assert!(
                n > 0,
                "connection closed before a full response: {:?}",
                String::from_utf8_lossy(&received)
            );
            received.extend_from_slice(&buffer[..n]);
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(30), read)
        .await
        .expect("a response")
}

/// A loopback URL whose port is reserved by a socket that is bound but
/// not listening: connections to it are refused, and no other process can
/// take the port while the socket is held.
pub fn refusing_url() -> (tokio::net::TcpSocket, String) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let url = format!("http://{}", socket.local_addr().unwrap());
    (socket, url)
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// One Optimize call straight to the mesh's optimizer over gRPC: `options`
/// (its `input_size` set here), then `image` in one chunk. Returns the
/// result's header and bytes.
pub async fn optimize_over_grpc(
    mesh: &Mesh,
    options: OptimizeOptions,
    image: Vec<u8>,
) -> (OptimizeHeader, Vec<u8>) {
    let mut optimizer = OptimizerClient::connect(mesh.process.url("optimizer"))
        .await
        .expect("connect to the optimizer");
    let options = OptimizeOptions {
        input_size: image.len() as u64,
        ..options
    };
    let requests = [
        optimize_request::Payload::Options(options),
        optimize_request::Payload::Chunk(image.into()),
    ]
    .map(|payload| OptimizeRequest {
        payload: Some(payload),
    });
    let mut responses = optimizer
        .optimize(tokio_stream::iter(requests))
        .await
        .expect("Optimize")
        .into_inner();
    let (mut header, mut bytes) = (None, Vec::new());
    while let Some(message) = responses.message().await.expect("a response message") {
        match message.payload {
            Some(optimize_response::Payload::Header(first)) => header = Some(first),
            Some(optimize_response::Payload::Chunk(chunk)) => bytes.extend_from_slice(&chunk),
            None => {}
        }
    }
    (header.expect("a header before the bytes"), bytes)
}

/// A multipart form with `image` and then the given text fields.
pub fn form(image: Vec<u8>, fields: &[(&str, &str)]) -> reqwest::multipart::Form {
    let mut form = reqwest::multipart::Form::new().part(
        "image",
        reqwest::multipart::Part::bytes(image).file_name("photo.jpg"),
    );
    for (name, value) in fields {
        form = form.text(name.to_string(), value.to_string());
    }
    form
}

/// Asserts a JSON error body with the given HTTP status and gRPC code name.
pub async fn assert_json_error(response: reqwest::Response, status: u16, code: &str) -> String {
    assert_eq!(response.status().as_u16(), status, "status");
    let body: serde_json::Value = response.json().await.expect("JSON error body");
    assert_eq!(body["code"], code, "{body}");
    body["message"].as_str().expect("message").to_owned()
}

/// Standard base64 with padding, as proto3 JSON and gRPC clients write bytes.
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for group in bytes.chunks(3) {
        let n = group
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= group.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
