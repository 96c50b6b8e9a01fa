//! TLS on every hop, through the real binaries: HTTPS on the gateway (HTTP/2
//! by ALPN, HTTP/1.1 fallback), mTLS between the gateway, the optimizer
//! and storage, certificates rotated on disk without a restart, and bad
//! TLS settings refused at start.

use std::{net::SocketAddr, path::Path, sync::Arc};

use bytes::Bytes;
use http::{Request, StatusCode, Version};
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use nws_runtime::{
    grpc::client::{Unready, channel_with, check_health},
    testing::{
        Deployment, DeploymentEnv, IssuedCert, ServiceProcess, TestPki, eventually, run_to_exit, test_image,
        tool, workspace_binary,
    },
    tls::UpstreamTlsConfig,
};
use rustls::{
    AlertDescription, ClientConfig, RootCertStore,
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject as _},
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};
use tokio_rustls::{TlsConnector, client::TlsStream};

const ALPN_BOTH: &[&[u8]] = &[b"h2", b"http/1.1"];
const ALPN_H1: &[&[u8]] = &[b"http/1.1"];

/// A client configuration trusting `ca`, presenting `identity` if given.
fn client_config(ca: &Path, identity: Option<&IssuedCert>, alpn: &[&[u8]]) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let builder = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        Some(identity) => builder
            .with_client_auth_cert(
                CertificateDer::pem_file_iter(&identity.cert)
                    .unwrap()
                    .map(Result::unwrap)
                    .collect(),
                PrivateKeyDer::from_pem_file(&identity.key).unwrap(),
            )
            .unwrap(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

async fn tls_connect(addr: SocketAddr, config: Arc<ClientConfig>) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").unwrap();
    TlsConnector::from(config).connect(name, tcp).await
}

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

/// One HTTPS connection to the gateway, with what its handshake said.
struct Https {
    sender: Sender,
    authority: String,
    alpn: Option<Vec<u8>>,
    peer_cert: Vec<u8>,
}

struct Answer {
    status: StatusCode,
    version: Version,
    headers: http::HeaderMap,
    body: Bytes,
}

impl Https {
    async fn open(addr: SocketAddr, ca: &Path, alpn: &[&[u8]]) -> Self {
        let stream = tls_connect(addr, client_config(ca, None, alpn))
            .await
            .expect("TLS handshake with the gateway");
        let (_, session) = stream.get_ref();
        let negotiated = session.alpn_protocol().map(<[u8]>::to_vec);
        let peer_cert = session.peer_certificates().expect("the server's certificate")[0].to_vec();
        let io = TokioIo::new(stream);
        let sender = if negotiated.as_deref() == Some(b"h2") {
            let (sender, connection) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .unwrap();
            tokio::spawn(connection);
            Sender::H2(sender)
        } else {
            let (sender, connection) = hyper::client::conn::http1::handshake(io).await.unwrap();
            tokio::spawn(connection);
            Sender::H1(sender)
        };
        Self {
            sender,
            authority: format!("localhost:{}", addr.port()),
            alpn: negotiated,
            peer_cert,
        }
    }

    async fn send(&mut self, method: &str, path_and_query: &str, body: Vec<u8>) -> Answer {
        let request = Request::builder()
            .method(method)
            .uri(format!("https://{}{path_and_query}", self.authority))
            .header(http::header::HOST, &self.authority)
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let response = match &mut self.sender {
            Sender::H1(sender) => {
                let (mut parts, body) = request.into_parts();
                // HTTP/1.1 asks in origin form, the authority in Host.
                parts.uri = path_and_query.parse().unwrap();
                sender.send_request(Request::from_parts(parts, body)).await
            }
            Sender::H2(sender) => sender.send_request(request).await,
        }
        .expect("an HTTPS response");
        let (parts, body) = response.into_parts();
        Answer {
            status: parts.status,
            version: parts.version,
            headers: parts.headers,
            body: body.collect().await.unwrap().to_bytes(),
        }
    }
}

/// A gateway serving HTTPS with `cert`, in front of upstreams that are not
/// there (its liveness needs none).
fn https_gateway(cert: &IssuedCert) -> ServiceProcess {
    ServiceProcess::start(
        &workspace_binary("gateway"),
        &[
            ("NWS_HTTP_ADDR", "127.0.0.1:0"),
            ("NWS_OPTIMIZER_URL", "http://127.0.0.1:9"),
            ("NWS_STORAGE_URL", "http://127.0.0.1:9"),
            ("NWS_TLS_CERT", cert.cert.to_str().unwrap()),
            ("NWS_TLS_KEY", cert.key.to_str().unwrap()),
        ],
        &["gateway"],
    )
}

#[tokio::test]
async fn the_gateway_serves_https_with_http2_by_alpn_and_http1_otherwise() {
    let pki = TestPki::new("NWS test CA");
    let cert = pki.issue("gateway", "gateway");
    let gateway = https_gateway(&cert);
    assert_eq!(listening_tls(&gateway, "gateway").await, "on");
    let addr = gateway.addr("gateway");

    let mut h2 = Https::open(addr, &pki.ca_path(), ALPN_BOTH).await;
    assert_eq!(h2.alpn.as_deref(), Some(&b"h2"[..]));
    assert_eq!(h2.peer_cert, cert.der);
    let answer = h2.send("GET", "/healthz", Vec::new()).await;
    assert_eq!((answer.status, answer.version), (StatusCode::OK, Version::HTTP_2));

    let mut h1 = Https::open(addr, &pki.ca_path(), ALPN_H1).await;
    assert_eq!(h1.alpn.as_deref(), Some(&b"http/1.1"[..]));
    let answer = h1.send("GET", "/healthz", Vec::new()).await;
    assert_eq!(
        (answer.status, answer.version),
        (StatusCode::OK, Version::HTTP_11)
    );

    // The port speaks TLS only: a plain-text request gets no HTTP answer.
    let mut plain = TcpStream::connect(addr).await.unwrap();
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut reply = Vec::new();
    let _ = plain.read_to_end(&mut reply).await;
    assert!(
        !reply.starts_with(b"HTTP/"),
        "{:?}",
        String::from_utf8_lossy(&reply)
    );
}

/// The three services as separate processes, with mTLS on every hop: each
/// gRPC server requires a client certificate from the test CA, the gateway
/// and the optimizer present one, and the gateway serves HTTPS.
struct Deployed {
    pki: TestPki,
    services: Deployment,
}

impl std::ops::Deref for Deployed {
    type Target = Deployment;

    fn deref(&self) -> &Deployment {
        &self.services
    }
}

impl Deployed {
    fn start() -> Self {
        let pki = TestPki::new("NWS test CA");
        let server = pki.issue("server", "nws service");
        let client = pki.issue("client", "nws client");
        let ca = pki.ca_path();
        let ca = ca.to_str().unwrap();
        let client_tls = vec![
            ("NWS_UPSTREAM_TLS_CA", ca),
            ("NWS_UPSTREAM_TLS_CERT", client.cert.to_str().unwrap()),
            ("NWS_UPSTREAM_TLS_KEY", client.key.to_str().unwrap()),
        ];
        let services = Deployment::start_with(&DeploymentEnv {
            every: vec![
                ("NWS_TLS_CERT", server.cert.to_str().unwrap()),
                ("NWS_TLS_KEY", server.key.to_str().unwrap()),
            ],
            storage: vec![("NWS_TLS_CLIENT_CA", ca)],
            optimizer: [vec![("NWS_TLS_CLIENT_CA", ca)], client_tls.clone()].concat(),
            gateway: client_tls,
            upstream_scheme: Some("https"),
        });
        Self { pki, services }
    }
}

/// What `service`'s "listening" line says of TLS.
async fn listening_tls(process: &ServiceProcess, service: &str) -> String {
    process
        .until(&format!("{service} listening"), |events| {
            events
                .iter()
                .find(|e| e["message"] == "listening" && e["service"] == service)
                .and_then(|e| e["tls"].as_str().map(str::to_owned))
        })
        .await
}

#[tokio::test]
async fn an_upload_goes_through_mtls_on_every_hop() {
    let mesh = Deployed::start();
    assert_eq!(listening_tls(&mesh.storage, "storage").await, "mtls");
    assert_eq!(listening_tls(&mesh.optimizer, "optimizer").await, "mtls");
    assert_eq!(listening_tls(&mesh.gateway, "gateway").await, "on");
    assert_eq!(listening_tls(&mesh.storage, "admin").await, "off");

    let mut https = Https::open(mesh.gateway.addr("gateway"), &mesh.pki.ca_path(), ALPN_BOTH).await;
    // Both upstreams answer their health checks over mTLS (storage once its
    // first backend check has passed).
    eventually("the gateway ready", async || {
        let ready = https.send("GET", "/readyz", Vec::new()).await;
        (ready.status == StatusCode::OK).then_some(())
    })
    .await;

    let answer = https
        .send(
            "POST",
            "/v1/watermark?wm_position=center",
            test_image("picos_orient6.jpg"),
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    assert_eq!(answer.headers["content-type"], "image/jpeg");
    assert_eq!(answer.headers["x-image-width"], "1440");
    assert!(answer.body.starts_with(&[0xff, 0xd8]), "a JPEG");
    let key = answer.headers["etag"]
        .to_str()
        .unwrap()
        .trim_matches('"')
        .to_owned();

    // The gateway stored the original, the optimizer read it and kept the
    // result: each over its own mTLS channel to storage.
    assert_eq!(mesh.stored("originals").len(), 1);
    mesh.until_result_kept(&key).await;
    mesh.optimizer.until_logged("optimized", 1).await;
}

/// A balanced name over mTLS: each address is dialled by its own channel,
/// and its certificate checked against the name (`localhost` here, the
/// name the test certificates carry), not the address. (The resolver
/// answers `localhost` itself, RFC 6761; the test's DNS server stands by.)
#[tokio::test]
async fn a_balanced_optimizer_name_is_reached_over_mtls() {
    let mesh = Deployed::start();
    let dns = nws_runtime::testing::DnsServer::start("localhost", &[std::net::Ipv4Addr::LOCALHOST]);
    let optimizer = dns.url(mesh.optimizer.addr("optimizer").port());
    let ca = mesh.pki.ca_path();
    let client = mesh.pki.issue("balanced-client", "nws client");
    let gateway = mesh.another_gateway(&[
        ("NWS_OPTIMIZER_URL", optimizer.as_str()),
        ("NWS_UPSTREAM_TLS_CA", ca.to_str().unwrap()),
        ("NWS_UPSTREAM_TLS_CERT", client.cert.to_str().unwrap()),
        ("NWS_UPSTREAM_TLS_KEY", client.key.to_str().unwrap()),
    ]);
    let response = reqwest::Client::new()
        .post(format!("{}/v1/watermark?format=png", gateway.url("gateway")))
        .body(test_image("tiny_16x16.jpg"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    let endpoints = gateway.until_logged("upstream endpoints", 1).await;
    let address = mesh.optimizer.addr("optimizer").to_string();
    assert!(
        endpoints[0]["added"].as_str().unwrap().contains(&address),
        "{endpoints:?}"
    );
    mesh.optimizer.until_logged("optimized", 1).await;
}

/// The alert the server sent, if the connection ended on one.
fn alert(error: &std::io::Error) -> Option<AlertDescription> {
    match error.get_ref()?.downcast_ref::<rustls::Error>()? {
        rustls::Error::AlertReceived(alert) => Some(*alert),
        _ => None,
    }
}

/// Completes a handshake with `config` and reads the server's first
/// bytes: in TLS 1.3 the server judges the client's certificate after the
/// client's side of the handshake is done, so its verdict comes as the
/// first thing read. `Ok` once the server speaks HTTP/2 (whose server
/// sends its SETTINGS frame first, unasked).
async fn server_verdict(addr: SocketAddr, config: Arc<ClientConfig>) -> Result<(), std::io::Error> {
    let mut stream = tls_connect(addr, config).await?;
    let mut first = [0u8; 9];
    stream.read_exact(&mut first).await?;
    assert_eq!(first[3], 4, "a SETTINGS frame: {first:?}");
    Ok(())
}

#[tokio::test]
async fn mtls_refuses_a_client_without_a_certificate_or_with_one_from_another_ca() {
    let mesh = Deployed::start();
    let storage = mesh.storage.addr("storage");
    let ca = mesh.pki.ca_path();
    let client = mesh.pki.issue("tester", "tester");
    let other_pki = TestPki::new("another CA");
    let stranger = other_pki.issue("stranger", "tester");

    server_verdict(storage, client_config(&ca, Some(&client), &[b"h2"]))
        .await
        .expect("a certificate from the CA is accepted");
    let without = server_verdict(storage, client_config(&ca, None, &[b"h2"]))
        .await
        .expect_err("no certificate");
    assert_eq!(
        alert(&without),
        Some(AlertDescription::CertificateRequired),
        "{without:?}"
    );
    let foreign = server_verdict(storage, client_config(&ca, Some(&stranger), &[b"h2"]))
        .await
        .expect_err("a certificate from another CA");
    assert_eq!(alert(&foreign), Some(AlertDescription::UnknownCA), "{foreign:?}");

    // The same through the runtime's upstream channel, as the services call
    // each other: a gRPC health check passes only with the right identity.
    let uri: http::Uri = format!("https://{storage}").parse().unwrap();
    let health = async |cert: Option<&IssuedCert>| {
        let tls = UpstreamTlsConfig {
            upstream_tls_ca: Some(ca.clone()),
            upstream_tls_cert: cert.map(|c| c.cert.clone()),
            upstream_tls_key: cert.map(|c| c.key.clone()),
        }
        .load()
        .unwrap();
        check_health(channel_with(uri.clone(), "tester", &tls).unwrap(), "").await
    };
    assert_eq!(health(Some(&client)).await, Ok(()));
    assert_eq!(health(None).await, Err(Unready::Unreachable));
    assert_eq!(health(Some(&stranger)).await, Err(Unready::Unreachable));

    // And with another TLS stack: grpcurl (Go), which insists on ALPN h2.
    let grpcurl = |identity: Option<&IssuedCert>| {
        let mut command = std::process::Command::new(tool("NWS_GRPCURL"));
        command.args(["-connect-timeout", "3", "-cacert", ca.to_str().unwrap()]);
        if let Some(identity) = identity {
            command.args(["-cert", identity.cert.to_str().unwrap()]);
            command.args(["-key", identity.key.to_str().unwrap()]);
        }
        let output = command
            .args([&storage.to_string(), "grpc.health.v1.Health/Check"])
            .output()
            .expect("run grpcurl");
        (
            output.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ),
        )
    };
    let (passed, said) = grpcurl(Some(&client));
    assert!(passed && said.contains("SERVING"), "{said}");
    // Go's gRPC client retries a connection refused after its side of the
    // handshake until its deadline, and then names only the deadline.
    let (passed, said) = grpcurl(None);
    assert!(!passed, "{said}");
    let (passed, said) = grpcurl(Some(&stranger));
    assert!(!passed, "{said}");
}

#[tokio::test]
async fn a_rotated_certificate_is_served_without_a_restart() {
    let pki = TestPki::new("NWS test CA");
    let first = pki.issue("gateway", "gateway one");
    let mut gateway = https_gateway(&first);
    let addr = gateway.addr("gateway");
    let ca = pki.ca_path();

    let mut old = Https::open(addr, &ca, ALPN_BOTH).await;
    assert_eq!(old.peer_cert, first.der);
    assert_eq!(
        old.send("GET", "/healthz", Vec::new()).await.status,
        StatusCode::OK
    );

    // A broken file is refused, said so, and the certificate in use stays.
    let broken = IssuedCert {
        cert: pki.dir().join("broken.pem"),
        key: pki.dir().join("broken.key"),
        cert_pem: "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n".to_owned(),
        key_pem: first.key_pem.clone(),
        der: Vec::new(),
    };
    broken.install_over(&first);
    gateway
        .until_logged("TLS certificates not reloaded; the previous ones stay in use", 1)
        .await;
    let during = Https::open(addr, &ca, ALPN_BOTH).await;
    assert_eq!(during.peer_cert, first.der);

    let second = pki.issue("next", "gateway two");
    second.install_over(&first);
    eventually("the new certificate on a new connection", async || {
        let fresh = Https::open(addr, &ca, ALPN_BOTH).await;
        (fresh.peer_cert == second.der).then_some(())
    })
    .await;
    gateway.until_logged("TLS certificates reloaded", 1).await;

    // The connection opened before goes on, on its old session.
    assert_eq!(
        old.send("GET", "/healthz", Vec::new()).await.status,
        StatusCode::OK
    );
    let started = gateway
        .events()
        .iter()
        .filter(|e| e["message"] == "listening" && e["service"] == "gateway")
        .count();
    assert_eq!(started, 1, "no restart");
    assert!(!gateway.has_exited());
}

#[test]
fn bad_tls_settings_stop_start_up_with_one_line_naming_them() {
    let pki = TestPki::new("NWS test CA");
    let good = pki.issue("good", "good");
    let other = pki.issue("other", "other");
    let not_pem = pki.dir().join("not-pem.txt");
    std::fs::write(&not_pem, "hello").unwrap();
    let missing = pki.dir().join("missing.pem");
    let path = |p: &Path| p.to_str().unwrap().to_owned();
    let gateway_base = [
        ("NWS_HTTP_ADDR", "127.0.0.1:0".to_owned()),
        ("NWS_OPTIMIZER_URL", "http://127.0.0.1:9".to_owned()),
        ("NWS_STORAGE_URL", "http://127.0.0.1:9".to_owned()),
    ];
    // (binary, settings, the setting the message must name)
    type Case<'a> = (&'a str, Vec<(&'a str, String)>, &'a str);
    let cases: Vec<Case> = vec![
        (
            "gateway",
            vec![("NWS_TLS_CERT", path(&missing)), ("NWS_TLS_KEY", path(&good.key))],
            "NWS_TLS_CERT",
        ),
        (
            "gateway",
            vec![("NWS_TLS_CERT", path(&not_pem)), ("NWS_TLS_KEY", path(&good.key))],
            "NWS_TLS_CERT",
        ),
        (
            "gateway",
            vec![
                ("NWS_TLS_CERT", path(&good.cert)),
                ("NWS_TLS_KEY", path(&other.key)),
            ],
            "NWS_TLS_KEY",
        ),
        ("gateway", vec![("NWS_TLS_CERT", path(&good.cert))], "NWS_TLS_KEY"),
        (
            "gateway",
            vec![("NWS_STORAGE_URL", "https://127.0.0.1:9".to_owned())],
            "NWS_UPSTREAM_TLS_CA",
        ),
        (
            "storage-svc",
            vec![
                ("NWS_STORAGE_ADDR", "127.0.0.1:0".to_owned()),
                ("NWS_TLS_CLIENT_CA", path(&pki.ca_path())),
            ],
            "NWS_TLS_CERT",
        ),
        (
            "optimizer-svc",
            vec![
                ("NWS_OPTIMIZER_ADDR", "127.0.0.1:0".to_owned()),
                ("NWS_UPSTREAM_TLS_CA", path(&not_pem)),
            ],
            "NWS_UPSTREAM_TLS_CA",
        ),
    ];
    for (program, settings, named) in cases {
        let mut env: Vec<(&str, String)> = if program == "gateway" {
            gateway_base.to_vec()
        } else {
            Vec::new()
        };
        for (name, value) in settings {
            env.retain(|(n, _)| *n != name);
            env.push((name, value));
        }
        let env: Vec<(&str, &str)> = env.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let (status, stderr) = run_to_exit(&workspace_binary(program), &env);
        assert_eq!(status.code(), Some(64), "{program} {env:?}: {stderr}");
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{program} {env:?}: {stderr}");
        assert!(lines[0].contains(named), "{program} {env:?}: {}", lines[0]);
    }
}
