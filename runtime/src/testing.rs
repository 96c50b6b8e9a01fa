//! Integration-test support: start a real service binary on `127.0.0.1:0`
//! and learn the addresses it bound from its JSON logs.

mod deployment;
mod dns;
mod rabbit;
mod redis;
pub mod tokens;

pub use deployment::{Deployment, DeploymentEnv};
pub use dns::DnsServer;
pub use rabbit::{PrivateRabbit, amqp_url, unique_queue};
pub use redis::{PrivateRedis, redis_command, redis_url};

use std::{
    collections::HashMap,
    io::{BufRead as _, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex, MutexGuard, mpsc},
    time::{Duration, Instant},
};

const START_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a test waits for a process to log what it expects: generous,
/// since it only bounds a failing test (a passing one wakes on the line).
const LOG_TIMEOUT: Duration = Duration::from_secs(30);

/// A running service process, killed when dropped.
pub struct ServiceProcess {
    child: Child,
    addrs: HashMap<String, SocketAddr>,
    logs: Arc<Logs>,
}

/// The lines a process printed, and wake-ups for whoever waits for one.
#[derive(Default)]
struct Logs {
    lines: Mutex<Vec<String>>,
    grew: tokio::sync::Notify,
}

impl Logs {
    fn push(&self, line: String) {
        self.lines().push(line);
        self.grew.notify_waiters();
    }

    fn lines(&self) -> MutexGuard<'_, Vec<String>> {
        self.lines.lock().expect("log lock")
    }
}

impl ServiceProcess {
    /// Starts `binary` with `env` (every inherited `NWS_*` variable is
    /// removed first; logs are forced to JSON) and waits until each service
    /// in `services` has logged its listening address.
    pub fn start(binary: &Path, env: &[(&str, &str)], services: &[&str]) -> Self {
        let mut child = command(binary, env)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));

        let logs = Arc::new(Logs::default());
        let (listening_tx, listening_rx) = mpsc::channel::<(String, SocketAddr)>();
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        let stdout_logs = Arc::clone(&logs);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(listening) = parse_listening(&line) {
                    let _ = listening_tx.send(listening);
                }
                stdout_logs.push(line);
            }
        });
        let stderr_logs = Arc::clone(&logs);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                stderr_logs.push(line);
            }
        });

        let mut process = Self {
            child,
            addrs: HashMap::new(),
            logs,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        while !services.iter().all(|s| process.addrs.contains_key(*s)) {
            let left = deadline.saturating_duration_since(Instant::now());
            match listening_rx.recv_timeout(left) {
                Ok((service, addr)) => {
                    process.addrs.insert(service, addr);
                }
                Err(_) => panic!(
                    "{} did not report {services:?} listening within {START_TIMEOUT:?}; logs:\n{}",
                    binary.display(),
                    process.logs()
                ),
            }
        }
        process
    }

    /// The address `service` reported it listens on.
    pub fn addr(&self, service: &str) -> SocketAddr {
        *self
            .addrs
            .get(service)
            .unwrap_or_else(|| panic!("{service} did not report an address"))
    }

    /// `http://` URL of `service`.
    pub fn url(&self, service: &str) -> String {
        format!("http://{}", self.addr(service))
    }

    /// The process id, for sending signals.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the process printed so far.
    pub fn logs(&self) -> String {
        self.logs.lines().join("\n")
    }

    /// The JSON log events printed so far (other lines skipped).
    pub fn events(&self) -> Vec<serde_json::Value> {
        parse_events(&self.logs.lines())
    }

    /// Waits until `found` picks something out of the JSON events printed
    /// so far (woken by each new line, not by a timer); panics naming
    /// `what` after a generous timeout.
    pub async fn until<T>(&self, what: &str, mut found: impl FnMut(&[serde_json::Value]) -> Option<T>) -> T {
        let deadline = tokio::time::Instant::now() + LOG_TIMEOUT;
        loop {
            // Registered before looking, so a line printed in between
            // still wakes this task.
            let grew = self.logs.grew.notified();
            let mut grew = std::pin::pin!(grew);
            grew.as_mut().enable();
            if let Some(value) = found(&self.events()) {
                return value;
            }
            if tokio::time::timeout_at(deadline, grew).await.is_err() {
                panic!(
                    "{what}: not logged within {LOG_TIMEOUT:?}; logs:\n{}",
                    self.logs()
                );
            }
        }
    }

    /// Waits until the process has logged `message` at least `count`
    /// times; returns those events.
    pub async fn until_logged(&self, message: &str, count: usize) -> Vec<serde_json::Value> {
        self.until(&format!("{count} × {message:?}"), |events| {
            let matching: Vec<_> = events
                .iter()
                .filter(|e| e["message"] == message)
                .cloned()
                .collect();
            (matching.len() >= count).then_some(matching)
        })
        .await
    }

    /// How many times the process has logged `message` so far.
    pub fn count_logged(&self, message: &str) -> usize {
        self.events().iter().filter(|e| e["message"] == message).count()
    }

    /// Kills the process with SIGKILL, as a crash or the OOM killer would,
    /// and reaps it.
    pub fn kill(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reap");
    }

    /// Peak resident memory so far (`VmHWM`), in bytes.
    pub fn peak_rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("read /proc/<pid>/status");
        let kib: u64 = status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc/<pid>/status");
        kib * 1024
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub fn terminate(&mut self) -> ExitStatus {
        self.signal("TERM");
        self.wait(STOP_TIMEOUT)
    }

    /// Sends `signal` (`TERM`, `STOP`, `CONT`, …) without waiting.
    pub fn signal(&self, signal: &str) {
        send_signal(&self.child, signal);
    }

    /// Whether the process has exited (it is reaped if so).
    pub fn has_exited(&mut self) -> bool {
        self.child.try_wait().expect("poll child").is_some()
    }

    /// Waits up to `timeout` for the process to exit by itself.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll child") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "process still running after {timeout:?}; logs:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- logs of the service process ---\n{}", self.logs());
        }
    }
}

/// `binary` with no inherited `NWS_*` or `AWS_*` setting, JSON logs, no
/// rate limits, then `env`.
fn command(binary: &Path, env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(binary);
    for (name, _) in std::env::vars() {
        if name.starts_with("NWS_") || name.starts_with("AWS_") || name.starts_with("OTEL_") {
            command.env_remove(name);
        }
    }
    command
        .env("NWS_LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        // Tests run side by side: no fixed admin port.
        .env("NWS_ADMIN_ADDR", "127.0.0.1:0")
        // Every test talks from 127.0.0.1: the edge's default limits (2
        // uploads/s) would make them wait on each other. The tests of the
        // limits set their own.
        .env("NWS_RATE_LIMIT_RPS", "0")
        .env("NWS_READ_RATE_LIMIT_RPS", "0")
        .envs(env.iter().copied())
        .stdin(Stdio::null());
    command
}

/// Waits until the gateway at `gateway` (a base URL) says on `/readyz`
/// that its job queue is `status` (`SERVING` once its broker is connected).
pub async fn until_job_queue(gateway: &str, status: &str) {
    eventually(&format!("the gateway's job queue {status}"), async || {
        let ready: serde_json::Value = reqwest::get(format!("{gateway}/readyz"))
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (ready["jobs"]["fallback"]["status"] == status).then_some(())
    })
    .await;
}

/// Polls `check` until it gives something, for states no log line
/// announces (a port closing, a file appearing); panics naming `what`
/// after a generous timeout.
pub async fn eventually<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    const POLL: Duration = Duration::from_millis(20);
    let deadline = Instant::now() + LOG_TIMEOUT;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not reached within {LOG_TIMEOUT:?}"
        );
        tokio::time::sleep(POLL).await;
    }
}

fn parse_events(lines: &[String]) -> Vec<serde_json::Value> {
    lines
        .iter()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}

fn parse_listening(line: &str) -> Option<(String, SocketAddr)> {
    let event: serde_json::Value = serde_json::from_str(line).ok()?;
    if event.get("message")?.as_str()? != "listening" {
        return None;
    }
    let service = event.get("service")?.as_str()?.to_owned();
    let addr = event.get("addr")?.as_str()?.parse().ok()?;
    Some((service, addr))
}

/// Runs `binary` with `env` and returns its exit status and standard error,
/// for start-up failures.
pub fn run_to_exit(binary: &Path, env: &[(&str, &str)]) -> (ExitStatus, String) {
    let output = command(binary, env).output().expect("run binary");
    (
        output.status,
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A binary of this workspace, built beside the running test (cargo puts
/// test executables in `deps/`, binaries one level up).
pub fn workspace_binary(name: &str) -> PathBuf {
    let test = std::env::current_exe().expect("the test executable's path");
    let path = test
        .parent()
        .and_then(Path::parent)
        .expect("tests run from target/<profile>/deps")
        .join(name);
    assert!(
        path.exists(),
        "{} is not built: run `cargo test --workspace` (as scripts/test.sh does)",
        path.display()
    );
    path
}

/// Sends `signal` (`TERM`, `INT`, `STOP`, `CONT`, `KILL`) to `child`, with
/// no `kill` program needed.
pub fn send_signal(child: &Child, signal: &str) {
    use rustix::process::{Pid, Signal, kill_process};
    let number = match signal {
        "TERM" => Signal::TERM,
        "INT" => Signal::INT,
        "STOP" => Signal::STOP,
        "CONT" => Signal::CONT,
        "KILL" => Signal::KILL,
        other => panic!("no such signal in the tests: {other}"),
    };
    let pid = Pid::from_child(child);
    kill_process(pid, number).unwrap_or_else(|e| panic!("kill -{signal} {}: {e}", child.id()));
}

/// A test tool's path from an environment variable set by scripts/test.sh
/// (`NWS_TEST_PYTHON`, `NWS_GRPCURL`, …).
pub fn tool(variable: &str) -> PathBuf {
    std::env::var_os(variable).map(PathBuf::from).unwrap_or_else(|| {
        panic!("{variable} is not set: run the suite with scripts/test.sh, which installs it")
    })
}

/// Every file under `dir`, at any depth (none when it does not exist).
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// The shared test photos: `NWS_TEST_IMAGES`, or
/// `../shared/testdata/images` beside the clone.
pub fn test_images_dir() -> PathBuf {
    let dir = std::env::var_os("NWS_TEST_IMAGES").map_or_else(
        // This crate is one level inside the clone.
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/testdata/images"),
        PathBuf::from,
    );
    assert!(dir.is_dir(), "test photos not found at {}", dir.display());
    dir
}

/// The bounding box of some pixel positions, as (min x, min y, max x,
/// max y): where a drawing changed an image. Panics on no points.
pub fn bounds(points: &[(u32, u32)]) -> (u32, u32, u32, u32) {
    let xs = points.iter().map(|p| p.0);
    let ys = points.iter().map(|p| p.1);
    (
        xs.clone().min().expect("at least one point"),
        ys.clone().min().expect("at least one point"),
        xs.max().expect("at least one point"),
        ys.max().expect("at least one point"),
    )
}

/// Reads one test photo by file name.
pub fn test_image(name: &str) -> Vec<u8> {
    let path = test_images_dir().join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// A PNG of `width` × `height` RGB pixels that compresses to almost
/// nothing (each row repeats the one above), yet every pixel has to be
/// inflated and unfiltered: at tens of megapixels, kilobytes to send and
/// a decode and resize long enough for a test to cancel the job while
/// they run.
pub fn large_png(width: u32, height: u32) -> Vec<u8> {
    use image::ImageEncoder as _;
    let row: Vec<u8> = (0..width)
        .flat_map(|x| [(x / 7) as u8, (x / 3) as u8, (x % 251) as u8])
        .collect();
    let pixels = row.repeat(height as usize);
    let mut png = Vec::new();
    image::codecs::png::PngEncoder::new_with_quality(
        &mut png,
        image::codecs::png::CompressionType::Default,
        image::codecs::png::FilterType::Up,
    )
    .write_image(&pixels, width, height, image::ExtendedColorType::Rgb8)
    .expect("encode a PNG");
    png
}

/// A real S3-protocol server (`s3s-fs`, from crates.io) over a temporary
/// directory, on loopback; killed when dropped. The binary is
/// `NWS_S3S_FS`, or `s3s-fs` on the PATH.
pub struct S3Server {
    child: Option<Child>,
    root: tempfile::TempDir,
    port: u16,
}

impl S3Server {
    pub const ACCESS_KEY: &str = "nws-test-access-key";
    pub const SECRET_KEY: &str = "nws-test-secret-key";
    pub const BUCKET: &str = "nws-test";
    pub const REGION: &str = "us-east-1";

    /// Starts on a free port, with an empty root (no bucket).
    pub fn start() -> Self {
        let root = tempfile::tempdir().expect("temp dir for s3s-fs");
        let (child, port) = spawn_s3s(root.path(), 0);
        Self {
            child: Some(child),
            root,
            port,
        }
    }

    /// The endpoint URL.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Settings that point a Storage service at this server.
    pub fn storage_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("NWS_STORAGE_BACKEND", "s3".to_owned()),
            ("NWS_S3_ENDPOINT", self.endpoint()),
            ("NWS_S3_REGION", Self::REGION.to_owned()),
            ("NWS_S3_BUCKET", Self::BUCKET.to_owned()),
            ("AWS_ACCESS_KEY_ID", Self::ACCESS_KEY.to_owned()),
            ("AWS_SECRET_ACCESS_KEY", Self::SECRET_KEY.to_owned()),
        ]
    }

    /// The directory behind the server: a bucket is a directory in it, an
    /// object a file under its key.
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// Kills the server, as an outage would.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, over the same data.
    pub fn restart(&mut self) {
        self.stop();
        let deadline = Instant::now() + START_TIMEOUT;
        // The old listener's port can take a moment to be free again.
        loop {
            match std::net::TcpListener::bind(("127.0.0.1", self.port)) {
                Ok(probe) => {
                    drop(probe);
                    break;
                }
                Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
                Err(e) => panic!("port {} stays busy: {e}", self.port),
            }
        }
        let (child, _) = spawn_s3s(self.root.path(), self.port);
        self.child = Some(child);
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}

fn spawn_s3s(root: &Path, port: u16) -> (Child, u16) {
    let binary = std::env::var("NWS_S3S_FS").unwrap_or_else(|_| "s3s-fs".to_owned());
    let mut child = Command::new(&binary)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args([
            "--access-key",
            S3Server::ACCESS_KEY,
            "--secret-key",
            S3Server::SECRET_KEY,
        ])
        .arg(root)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot start {binary} (cargo install s3s-fs@0.14.1 --features binary --locked): {e}")
        });
    let (port_tx, port_rx) = mpsc::channel::<u16>();
    let outputs: [Box<dyn std::io::Read + Send>; 2] = [
        Box::new(child.stdout.take().expect("stdout is piped")),
        Box::new(child.stderr.take().expect("stderr is piped")),
    ];
    for output in outputs {
        let port_tx = port_tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(output).lines().map_while(Result::ok) {
                if let Some((_, address)) = line.split_once("server is running at http://127.0.0.1:")
                    && let Ok(port) = address.trim().parse()
                {
                    let _ = port_tx.send(port);
                }
            }
        });
    }
    match port_rx.recv_timeout(START_TIMEOUT) {
        Ok(port) => (child, port),
        Err(_) => {
            let _ = child.kill();
            panic!("{binary} did not report its address within {START_TIMEOUT:?}");
        }
    }
}

/// A real OTLP/gRPC trace receiver on loopback (the official protocol's
/// generated tonic server): what the services under test export.
pub struct OtlpReceiver {
    addr: SocketAddr,
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
    grew: Arc<tokio::sync::Notify>,
    _stop: tokio_util::sync::DropGuard,
}

/// A span as the receiver got it, with its resource's `service.name`.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    pub service_name: String,
    pub name: String,
    /// Lowercase hex, as in `traceparent`.
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    /// OTLP's SpanKind: 2 server, 3 client.
    pub kind: i32,
    /// OTLP's status code: 0 unset, 1 ok, 2 error.
    pub status_code: i32,
    pub status_message: String,
    /// Attribute values as text.
    pub attributes: HashMap<String, String>,
}

impl ReceivedSpan {
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

#[derive(Clone)]
struct Collect {
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
    grew: Arc<tokio::sync::Notify>,
}

#[tonic::async_trait]
impl opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceService for Collect {
    async fn export(
        &self,
        request: tonic::Request<opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest>,
    ) -> Result<
        tonic::Response<opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse>,
        tonic::Status,
    > {
        use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
        let text = |value: &Option<AnyValue>| match value.as_ref().and_then(|v| v.value.as_ref()) {
            Some(Value::StringValue(s)) => s.clone(),
            Some(Value::BoolValue(b)) => b.to_string(),
            Some(Value::IntValue(i)) => i.to_string(),
            Some(Value::DoubleValue(d)) => d.to_string(),
            Some(other) => format!("{other:?}"),
            None => String::new(),
        };
        let attributes = |attributes: &[KeyValue]| -> HashMap<String, String> {
            attributes
                .iter()
                .map(|kv| (kv.key.clone(), text(&kv.value)))
                .collect()
        };
        let mut received = Vec::new();
        for resource_spans in request.into_inner().resource_spans {
            let resource = resource_spans
                .resource
                .map(|resource| attributes(&resource.attributes))
                .unwrap_or_default();
            let service_name = resource.get("service.name").cloned().unwrap_or_default();
            for scope_spans in resource_spans.scope_spans {
                for span in scope_spans.spans {
                    received.push(ReceivedSpan {
                        service_name: service_name.clone(),
                        name: span.name,
                        trace_id: hex::encode(&span.trace_id),
                        span_id: hex::encode(&span.span_id),
                        parent_span_id: hex::encode(&span.parent_span_id),
                        kind: span.kind,
                        status_code: span.status.as_ref().map_or(0, |status| status.code),
                        status_message: span.status.map(|status| status.message).unwrap_or_default(),
                        attributes: attributes(&span.attributes),
                    });
                }
            }
        }
        self.spans.lock().expect("spans lock").extend(received);
        self.grew.notify_waiters();
        Ok(tonic::Response::new(
            opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse::default(),
        ))
    }
}

impl OtlpReceiver {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the OTLP receiver");
        let addr = listener.local_addr().expect("receiver address");
        let collect = Collect {
            spans: Arc::default(),
            grew: Arc::default(),
        };
        let stop = tokio_util::sync::CancellationToken::new();
        let server = tonic::transport::Server::builder()
            .add_service(
                opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceServiceServer::new(
                    collect.clone(),
                ),
            )
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener),
                stop.clone().cancelled_owned(),
            );
        tokio::spawn(server);
        Self {
            addr,
            spans: collect.spans,
            grew: collect.grew,
            _stop: stop.drop_guard(),
        }
    }

    /// The value for OTEL_EXPORTER_OTLP_ENDPOINT.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.lock().expect("spans lock").clone()
    }

    /// Waits until `check` finds what it wants in the spans received.
    pub async fn until<T>(&self, what: &str, check: impl Fn(&[ReceivedSpan]) -> Option<T>) -> T {
        let deadline = Instant::now() + LOG_TIMEOUT;
        loop {
            let grew = self.grew.notified();
            if let Some(found) = check(&self.spans()) {
                return found;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if tokio::time::timeout(left, grew).await.is_err() {
                let names: Vec<_> = self
                    .spans()
                    .iter()
                    .map(|s| {
                        format!(
                            "{} {} {}<-{}",
                            s.service_name, s.name, s.span_id, s.parent_span_id
                        )
                    })
                    .collect();
                panic!(
                    "no {what} within {LOG_TIMEOUT:?}; spans received:\n{}",
                    names.join("\n")
                );
            }
        }
    }
}

/// The spans of one upload, as the three services report them: complete
/// once the optimizer's stages and its write of the result to Storage are
/// in. `services` are the `service.name`s of gateway, optimizer, storage.
pub fn upload_trace(
    spans: &[ReceivedSpan],
    trace_id: &str,
    services: [&str; 3],
) -> Option<Vec<ReceivedSpan>> {
    let ours: Vec<ReceivedSpan> = spans.iter().filter(|s| s.trace_id == trace_id).cloned().collect();
    let storage_puts = ours
        .iter()
        .filter(|s| s.service_name == services[2] && s.name == "storage.put")
        .count();
    let complete = ours.iter().any(|s| s.name == "pipeline.encode") && storage_puts == 2;
    complete.then_some(ours)
}

/// Asserts that `spans` (one upload's, from [`upload_trace`]) form one tree
/// under the caller's span `caller_span_id`: gateway → storage (the
/// original), gateway → optimizer → its stages, optimizer → storage (the
/// original read, the result kept), each hop a client span and the
/// server span it caused.
pub fn assert_upload_tree(spans: &[ReceivedSpan], caller_span_id: &str, services: [&str; 3]) {
    let [gateway, optimizer, storage] = services;
    let describe = || {
        spans
            .iter()
            .map(|s| {
                format!(
                    "{} {:?} {}<-{} {:?}",
                    s.service_name, s.name, s.span_id, s.parent_span_id, s.attributes
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    let one = |service: &str, name: &str, parent: Option<&str>| -> &ReceivedSpan {
        let found: Vec<&ReceivedSpan> = spans
            .iter()
            .filter(|s| s.service_name == service && s.name == name)
            .filter(|s| parent.is_none_or(|parent| s.parent_span_id == parent))
            .collect();
        assert_eq!(
            found.len(),
            1,
            "expected one {service} span {name:?} under {parent:?}; spans:\n{}",
            describe()
        );
        found[0]
    };
    let descends = |span: &ReceivedSpan, ancestor: &str| {
        let mut parent = span.parent_span_id.clone();
        while !parent.is_empty() {
            if parent == ancestor {
                return true;
            }
            parent = spans
                .iter()
                .find(|s| s.span_id == parent)
                .map(|s| s.parent_span_id.clone())
                .unwrap_or_default();
        }
        false
    };

    let http = one(gateway, "POST /v1/watermark", Some(caller_span_id));
    assert_eq!(http.kind, 2, "the gateway's span is a server span");
    assert_eq!(http.attribute("http.request.method"), Some("POST"));
    assert_eq!(http.attribute("http.route"), Some("/v1/watermark"));
    assert_eq!(http.attribute("http.response.status_code"), Some("200"));

    // Each hop: the caller's client span, and the server span it caused.
    let hop = |client_service: &str, server_service: &str, method: &str, count: usize| {
        let clients: Vec<&ReceivedSpan> = spans
            .iter()
            .filter(|s| s.service_name == client_service && s.kind == 3 && s.name == method)
            .collect();
        assert_eq!(
            clients.len(),
            count,
            "{client_service} → {method}; spans:\n{}",
            describe()
        );
        for client in &clients {
            assert!(
                descends(client, &http.span_id),
                "{method} is under the request; spans:\n{}",
                describe()
            );
            assert_eq!(client.attribute("rpc.system"), Some("grpc"));
            let server = one(server_service, method, Some(&client.span_id));
            assert_eq!(server.kind, 2);
            let (service, rpc_method) = method.split_once('/').unwrap();
            assert_eq!(server.attribute("rpc.service"), Some(service));
            assert_eq!(server.attribute("rpc.method"), Some(rpc_method));
        }
    };
    hop(gateway, storage, "watermark.v1.Storage/Put", 1);
    hop(gateway, optimizer, "watermark.v1.Optimizer/Render", 1);
    hop(optimizer, storage, "watermark.v1.Storage/Put", 1);

    let render = one(optimizer, "watermark.v1.Optimizer/Render", None);
    assert_eq!(render.attribute("rpc.grpc.status_code"), Some("0"));
    let optimize = one(optimizer, "optimize", Some(&render.span_id));
    for stage in ["decode", "resize", "watermark", "encode"] {
        one(optimizer, &format!("pipeline.{stage}"), Some(&optimize.span_id));
    }
    let decode = one(optimizer, "pipeline.decode", None);
    assert_eq!(decode.attribute("nws.image.source_format"), Some("image/jpeg"));
    assert!(decode.attribute("nws.decode.scale").is_some(), "{decode:?}");
    let encode = one(optimizer, "pipeline.encode", None);
    assert!(encode.attribute("nws.output.bytes").is_some(), "{encode:?}");

    // The original's read and the result's write, by the optimizer.
    let reads: Vec<&ReceivedSpan> = spans
        .iter()
        .filter(|s| s.service_name == storage && s.name == "storage.get")
        .collect();
    assert!(
        reads
            .iter()
            .any(|s| s.attribute("nws.storage.namespace") == Some("originals")),
        "the optimizer read the original; spans:\n{}",
        describe()
    );
    let kept = one(optimizer, "result.keep", None);
    assert!(
        descends(kept, &render.span_id),
        "keeping the result belongs to the render"
    );

    let lookups: Vec<(&str, &str)> = spans
        .iter()
        .filter(|s| s.name == "cache.lookup")
        .map(|s| {
            (
                s.attribute("nws.cache.tier").unwrap_or_default(),
                s.attribute("nws.cache.outcome").unwrap_or_default(),
            )
        })
        .collect();
    assert!(lookups.contains(&("storage", "miss")), "{lookups:?}");
    assert_eq!(http.attribute("nws.cache.source"), Some("MISS"));
}

/// A `/metrics` page as Prometheus reads it: parsed by the official Python
/// client's parser (`prometheus_client`, from the test tools), not by us.
pub struct Scrape {
    samples: Vec<serde_json::Value>,
}

impl Scrape {
    /// Fetches `url` and parses it.
    pub async fn fetch(url: &str) -> Self {
        let response = reqwest::get(url).await.expect("scrape");
        assert_eq!(response.status(), 200, "{url}");
        let text = response.text().await.expect("scrape body");
        Self::parse(&text)
    }

    pub fn parse(text: &str) -> Self {
        const PARSE: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
samples = []
for family in text_string_to_metric_families(sys.stdin.read()):
    for sample in family.samples:
        samples.append({"family": family.name, "type": family.type, "help": family.documentation,
                        "name": sample.name, "labels": sample.labels, "value": sample.value})
json.dump(samples, sys.stdout)
"#;
        let mut child = Command::new(tool("NWS_TEST_PYTHON"))
            .args(["-c", PARSE])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run the Prometheus parser");
        {
            use std::io::Write as _;
            let mut stdin = child.stdin.take().expect("stdin is piped");
            stdin.write_all(text.as_bytes()).expect("feed the parser");
        }
        let output = child.wait_with_output().expect("the Prometheus parser");
        assert!(
            output.status.success(),
            "not valid Prometheus text: {}\n{text}",
            String::from_utf8_lossy(&output.stderr)
        );
        Self {
            samples: serde_json::from_slice(&output.stdout).expect("the parser's JSON"),
        }
    }

    /// The sum of the samples named `name` whose labels include `labels`
    /// (0 when there are none).
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels)
            .filter_map(|sample| sample["value"].as_f64())
            .sum()
    }

    /// The values label `label` takes among the samples named `name`.
    pub fn label_values(&self, name: &str, label: &str) -> Vec<String> {
        let mut values: Vec<String> = self
            .matching(name, &[])
            .filter_map(|sample| sample["labels"][label].as_str().map(str::to_owned))
            .collect();
        values.sort();
        values.dedup();
        values
    }

    /// Whether a series is named `name`, or belongs to the family `name`
    /// (a histogram's `_bucket`, `_sum` and `_count`).
    pub fn has(&self, name: &str) -> bool {
        self.samples
            .iter()
            .any(|sample| sample["family"] == name || sample["name"] == name)
    }

    /// The `# HELP` text of the series `name` (a family, or a counter's
    /// `_total` name).
    pub fn help(&self, name: &str) -> Option<String> {
        let family = name.strip_suffix("_total").unwrap_or(name);
        self.samples
            .iter()
            .find(|sample| sample["family"] == family)
            .and_then(|sample| sample["help"].as_str().map(str::to_owned))
            .filter(|help| !help.is_empty())
    }

    /// The type Prometheus gives the family `family` (`counter`, `histogram`…).
    pub fn family_type(&self, family: &str) -> Option<String> {
        self.samples
            .iter()
            .find(|sample| sample["family"] == family)
            .and_then(|sample| sample["type"].as_str().map(str::to_owned))
    }

    fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&str, &str)],
    ) -> impl Iterator<Item = &'a serde_json::Value> {
        self.samples.iter().filter(move |sample| {
            sample["name"] == name
                && labels
                    .iter()
                    .all(|(key, value)| sample["labels"][*key].as_str() == Some(*value))
        })
    }
}

/// Certificates for the TLS tests, made here with rcgen: a CA, and leaves
/// it signs for `localhost` and `127.0.0.1`, usable by servers and clients
/// alike, written as PEM files in a directory of their own.
pub struct TestPki {
    dir: tempfile::TempDir,
    ca: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

/// A certificate and its key, as files and as bytes.
pub struct IssuedCert {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub cert_pem: String,
    pub key_pem: String,
    /// The leaf's DER, as a peer sees it in a handshake.
    pub der: Vec<u8>,
}

impl TestPki {
    /// A new CA named `name`; its certificate is in [`TestPki::ca_path`].
    pub fn new(name: &str) -> Self {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
        let ca = rcgen::CertifiedIssuer::self_signed(params, KeyPair::generate().expect("CA key"))
            .expect("self-signed CA");
        let pki = Self {
            dir: tempfile::tempdir().expect("a directory for certificates"),
            ca,
        };
        std::fs::write(pki.ca_path(), pki.ca.pem()).expect("write the CA");
        pki
    }

    /// The CA certificate, PEM.
    pub fn ca_path(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// A new leaf named `common_name` (a new key and serial each time),
    /// written to `<stem>.pem` and `<stem>.key` in this PKI's directory.
    pub fn issue(&self, stem: &str, common_name: &str) -> IssuedCert {
        use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair, KeyUsagePurpose};
        let mut params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .expect("leaf parameters");
        params.distinguished_name.push(DnType::CommonName, common_name);
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.ca).expect("sign the leaf");
        let issued = IssuedCert {
            cert: self.dir.path().join(format!("{stem}.pem")),
            key: self.dir.path().join(format!("{stem}.key")),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        };
        std::fs::write(&issued.cert, &issued.cert_pem).expect("write the certificate");
        std::fs::write(&issued.key, &issued.key_pem).expect("write the key");
        issued
    }

    /// The directory holding this PKI's files, for files of a test's own.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl IssuedCert {
    /// Puts this certificate and key in place of the files `target` names,
    /// each by an atomic rename, as a certificate manager would.
    pub fn install_over(&self, target: &IssuedCert) {
        for (content, path) in [(&self.key_pem, &target.key), (&self.cert_pem, &target.cert)] {
            let staging = path.with_extension("new");
            std::fs::write(&staging, content).expect("write the new file");
            std::fs::rename(&staging, path).expect("move the new file in place");
        }
    }
}
