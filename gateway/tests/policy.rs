//! The policy on every hop, with keys made here: tokens (RSA, P-256,
//! Ed25519) checked by the gateway and by Storage and the Optimizer
//! deployed apart, scopes, signed links, and rate limits, local and shared
//! through Redis.

use std::{process::Command, time::Duration};

use futures_util::future::join_all;
use nws_runtime::testing::{
    Deployment, DeploymentEnv, PrivateRedis, ServiceProcess, eventually, large_png,
    tokens::{self, SigningKey},
    tool, workspace_binary,
};
use nws_watermark::pb::{DeleteRequest, Namespace, StatRequest, storage_client::StorageClient};
use serde_json::{Value, json};
use tonic::{Code, metadata::MetadataValue};

const ISSUER: &str = "https://issuer.test";
const AUDIENCE: &str = "nws-watermark";

/// The issuer's keys, published in a JWKS file.
struct Keys {
    rsa: SigningKey,
    ec: SigningKey,
    ed: SigningKey,
    dir: tempfile::TempDir,
}

impl Keys {
    fn new() -> Self {
        let keys = Self {
            rsa: SigningKey::rsa("rsa-1"),
            ec: SigningKey::ec("ec-1"),
            ed: SigningKey::ed25519("ed-1"),
            dir: tempfile::tempdir().unwrap(),
        };
        keys.publish(&[&keys.rsa, &keys.ec, &keys.ed]);
        keys
    }

    fn jwks_path(&self) -> String {
        self.dir.path().join("jwks.json").to_str().unwrap().to_owned()
    }

    /// Replaces the published set, as an issuer rotating keys does.
    fn publish(&self, keys: &[&SigningKey]) {
        let path = self.dir.path().join("jwks.json");
        let staging = self.dir.path().join("jwks.json.new");
        std::fs::write(&staging, tokens::jwks(keys)).unwrap();
        std::fs::rename(staging, path).unwrap();
    }

    /// Settings every process of a deployment gets.
    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("NWS_AUTH_JWKS", self.jwks_path()),
            ("NWS_AUTH_ISSUER", ISSUER.to_owned()),
            ("NWS_AUTH_AUDIENCE", AUDIENCE.to_owned()),
        ]
    }

    fn token(&self, sub: &str, scope: &str) -> String {
        self.ec.sign(&tokens::claims(sub, scope, ISSUER, AUDIENCE))
    }
}

fn borrowed<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

fn png() -> Vec<u8> {
    large_png(48, 32)
}

async fn upload(http: &reqwest::Client, gateway: &str, token: Option<&str>) -> reqwest::Response {
    let mut request = http
        .post(format!("{gateway}/v1/watermark?format=png"))
        .body(png());
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap()
}

/// A Storage service on its own, with `env`, and its data directory.
fn storage_alone(env: &[(&str, &str)]) -> (tempfile::TempDir, ServiceProcess) {
    let dir = tempfile::tempdir().unwrap();
    let mut all = vec![
        ("NWS_STORAGE_ADDR", "127.0.0.1:0"),
        ("NWS_DATA_DIR", dir.path().to_str().unwrap()),
    ];
    all.extend_from_slice(env);
    let storage = ServiceProcess::start(&workspace_binary("storage-svc"), &all, &["storage"]);
    (dir, storage)
}

async fn storage_client(process: &ServiceProcess) -> StorageClient<tonic::transport::Channel> {
    StorageClient::connect(process.url("storage")).await.unwrap()
}

fn with_token<T>(message: T, token: Option<&str>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(token) = token {
        let value: MetadataValue<_> = format!("Bearer {token}").parse().unwrap();
        request.metadata_mut().insert("authorization", value);
    }
    request
}

fn stat(sha256: &str) -> StatRequest {
    StatRequest {
        sha256: sha256.to_owned(),
        namespace: Namespace::Originals.into(),
    }
}

const ABSENT: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The code of a Storage.Stat call with `token`: NOT_FOUND means it got
/// past the policy (nothing is stored under that hash).
async fn stat_code(client: &mut StorageClient<tonic::transport::Channel>, token: Option<&str>) -> Code {
    match client.stat(with_token(stat(ABSENT), token)).await {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    }
}

#[tokio::test]
async fn every_token_gets_the_right_answer_on_every_hop() {
    let keys = Keys::new();
    let env = keys.env();
    let mesh = Deployment::start_with(&DeploymentEnv {
        every: borrowed(&env),
        storage: vec![("RUST_LOG", "info,nws_runtime::policy=debug")],
        ..DeploymentEnv::default()
    });
    let http = reqwest::Client::new();
    let gateway = mesh.gateway_url();
    let mut storage = storage_client(&mesh.storage).await;

    let write = |sub: &str| tokens::claims(sub, "images:write", ISSUER, AUDIENCE);
    let stranger = SigningKey::rsa("rsa-1");
    let mut confused_claims = write("mallory");
    confused_claims["scope"] = json!("images:write storage:admin");
    let cases: Vec<(&str, Option<String>, u16)> = vec![
        ("RS256", Some(keys.rsa.sign(&write("alice"))), 200),
        ("ES256", Some(keys.ec.sign(&write("alice"))), 200),
        ("EdDSA", Some(keys.ed.sign(&write("alice"))), 200),
        ("no token", None, 401),
        ("expired", Some(keys.ec.sign(&json!({"sub": "a", "scope": "images:write", "iss": ISSUER, "aud": AUDIENCE, "exp": tokens::at(-3600)}))), 401),
        ("not yet valid", Some(keys.ec.sign(&json!({"sub": "a", "scope": "images:write", "iss": ISSUER, "aud": AUDIENCE, "nbf": tokens::at(3600), "exp": tokens::at(7200)}))), 401),
        ("another audience", Some(keys.ec.sign(&tokens::claims("a", "images:write", ISSUER, "someone-else"))), 401),
        ("another issuer", Some(keys.ec.sign(&tokens::claims("a", "images:write", "https://evil.test", AUDIENCE))), 401),
        ("signed by another key under a known kid", Some(stranger.sign(&write("mallory"))), 401),
        ("an unknown kid", Some(stranger.sign_as("rsa-9", &write("mallory"))), 401),
        ("alg none", Some(tokens::unsigned(&write("mallory"))), 401),
        (
            "RS256 key used as an HS256 secret",
            Some(tokens::hs256(keys.rsa.public_pem.as_ref().unwrap().as_bytes(), Some("rsa-1"), &write("mallory"))),
            401,
        ),
        ("tampered payload", Some(tokens::tampered(&keys.ed.sign(&write("alice")), &confused_claims)), 401),
        ("without the scope", Some(keys.rsa.sign(&tokens::claims("reader", "images:read", ISSUER, AUDIENCE))), 403),
    ];
    for (case, token, status) in &cases {
        let response = upload(&http, &gateway, token.as_deref()).await;
        assert_eq!(response.status().as_u16(), *status, "HTTP, {case}");
        let challenge = response
            .headers()
            .get("www-authenticate")
            .map(|v| v.to_str().unwrap().to_owned());
        match status {
            200 => assert_eq!(challenge, None, "{case}"),
            401 if token.is_none() => {
                assert_eq!(challenge.as_deref(), Some("Bearer realm=\"nws-watermark\""))
            }
            401 => assert!(
                challenge.as_deref().unwrap().contains("error=\"invalid_token\""),
                "{case}: {challenge:?}"
            ),
            _ => assert!(
                challenge
                    .as_deref()
                    .unwrap()
                    .contains("error=\"insufficient_scope\""),
                "{case}: {challenge:?}"
            ),
        }
        if *status != 200 {
            let body: Value = response.json().await.unwrap();
            let code = if *status == 401 {
                "UNAUTHENTICATED"
            } else {
                "PERMISSION_DENIED"
            };
            assert_eq!(body["code"], code, "{case}: {body}");
            assert!(!body["message"].as_str().unwrap().is_empty());
        }
        // The same token, straight to Storage over gRPC: Stat needs
        // `images:read`, which `images:write` includes.
        let expected = match status {
            200 | 403 => Code::NotFound,
            _ => Code::Unauthenticated,
        };
        assert_eq!(
            stat_code(&mut storage, token.as_deref()).await,
            expected,
            "gRPC, {case}"
        );
    }

    // Deleting needs storage:admin, which an uploader does not have.
    let uploader = keys.token("alice", "images:write");
    let delete = DeleteRequest {
        sha256: ABSENT.to_owned(),
        namespace: Namespace::Originals.into(),
    };
    let refused = storage
        .delete(with_token(delete.clone(), Some(&uploader)))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    let admin = keys.token("ops", "storage:admin");
    let allowed = storage.delete(with_token(delete, Some(&admin))).await;
    assert!(
        allowed.is_ok() || allowed.as_ref().unwrap_err().code() == Code::NotFound,
        "{allowed:?}"
    );

    // The uploads went through on alice's token, forwarded: the gateway's
    // Put, and the optimizer's Get of the original and Put of the result.
    let forwarded = mesh
        .storage
        .until("storage to see alice on three calls", |events| {
            let seen = events
                .iter()
                .filter(|e| e["message"] == "caller authenticated" && e["sub"] == "alice")
                .count();
            (seen >= 3).then_some(seen)
        })
        .await;
    assert!(forwarded >= 3);
}

#[tokio::test]
async fn grpcurl_calls_with_a_token_and_lists_without_one() {
    let keys = Keys::new();
    let env = keys.env();
    let (_dir, storage) = storage_alone(&borrowed(&env));
    let addr = storage.addr("storage").to_string();
    let grpcurl = |args: &[&str]| {
        let output = Command::new(tool("NWS_GRPCURL")).args(args).output().unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    };
    // Reflection is open: a client can learn the API before it has a token.
    let listed = grpcurl(&["-plaintext", &addr, "list"]);
    assert!(listed.contains("watermark.v1.Storage"), "{listed}");
    let request = format!(r#"{{"sha256": "{ABSENT}", "namespace": "NAMESPACE_ORIGINALS"}}"#);
    let refused = grpcurl(&["-plaintext", "-d", &request, &addr, "watermark.v1.Storage/Stat"]);
    assert!(refused.contains("Code: Unauthenticated"), "{refused}");
    let header = format!("authorization: Bearer {}", keys.token("cli", "images:read"));
    let answered = grpcurl(&[
        "-plaintext",
        "-H",
        &header,
        "-d",
        &request,
        &addr,
        "watermark.v1.Storage/Stat",
    ]);
    assert!(answered.contains("Code: NotFound"), "{answered}");

    // NWS_REFLECTION=false: the API is not described to anyone.
    let (_dir, hidden) = storage_alone(&[("NWS_REFLECTION", "false")]);
    let listed = grpcurl(&["-plaintext", &hidden.addr("storage").to_string(), "list"]);
    assert!(listed.contains("does not support the reflection API"), "{listed}");
}

/// A static file server (Python's) publishing `dir`, as an issuer's
/// `/.well-known/jwks.json` would be; killed on drop.
struct FileServer(std::process::Child, u16);

impl FileServer {
    fn start(dir: &std::path::Path) -> Self {
        use std::io::BufRead as _;
        let mut child = Command::new(tool("NWS_TEST_PYTHON"))
            .args(["-u", "-m", "http.server", "--bind", "127.0.0.1", "0"])
            .current_dir(dir)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        // "Serving HTTP on 127.0.0.1 port 40123 (http://127.0.0.1:40123/) ..."
        let port = line
            .split(" port ")
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .unwrap();
        Self(child, port.parse().unwrap())
    }
}

impl Drop for FileServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn a_rotated_key_is_picked_up_without_a_restart() {
    let keys = Keys::new();
    let issuer = FileServer::start(keys.dir.path());
    let url = format!("http://127.0.0.1:{}/jwks.json", issuer.1);
    let mut env = keys.env();
    env[0] = ("NWS_AUTH_JWKS", url);
    let (_dir, storage) = storage_alone(&borrowed(&env));
    let mut client = storage_client(&storage).await;
    let next = SigningKey::ed25519("ed-2");
    let token = next.sign(&tokens::claims("rotated", "images:read", ISSUER, AUDIENCE));
    assert_eq!(stat_code(&mut client, Some(&token)).await, Code::Unauthenticated);

    keys.publish(&[&keys.ec, &next]);
    // The unknown kid makes the service fetch the set again (at most every
    // few seconds), without a restart.
    eventually("the new key to be accepted", async || {
        (stat_code(&mut client, Some(&token)).await == Code::NotFound).then_some(())
    })
    .await;
    // The retired key is gone with the set that held it.
    let retired = keys
        .rsa
        .sign(&tokens::claims("old", "images:read", ISSUER, AUDIENCE));
    assert_eq!(
        stat_code(&mut client, Some(&retired)).await,
        Code::Unauthenticated
    );
}

const LINK_KEY_2: &str = "k2:0123456789abcdef0123456789abcdef-two";
const LINK_KEY_1: &str = "k1:0123456789abcdef0123456789abcdef-one";

#[tokio::test]
async fn signed_links_open_images_to_img_tags_until_they_expire() {
    let keys = Keys::new();
    let env = keys.env();
    let signing = format!("{LINK_KEY_2},{LINK_KEY_1}");
    // A link's holder sends no token: the gateway reads from Storage with
    // its own.
    let own = keys.token("gateway", "images:read");
    let mesh = Deployment::start_with(&DeploymentEnv {
        every: borrowed(&env),
        gateway: vec![
            ("NWS_URL_SIGNING_KEY", signing.as_str()),
            ("NWS_URL_TTL", "4s"),
            ("NWS_UPSTREAM_TOKEN", own.as_str()),
        ],
        ..DeploymentEnv::default()
    });
    let http = reqwest::Client::new();
    let gateway = mesh.gateway_url();
    let uploaded = upload(&http, &gateway, Some(&keys.token("alice", "images:write"))).await;
    assert_eq!(uploaded.status(), 200);
    let result = uploaded.headers()["content-location"]
        .to_str()
        .unwrap()
        .to_owned();
    let link = uploaded.headers()["link"].to_str().unwrap().to_owned();
    let original = link.trim_start_matches('<').split('>').next().unwrap().to_owned();
    assert!(
        result.starts_with("/v1/images/") && result.contains("kid=k2"),
        "{result}"
    );
    assert!(
        original.starts_with("/image/") && original.contains("&sig="),
        "{original}"
    );

    let get = async |path: &str| http.get(format!("{gateway}{path}")).send().await.unwrap();
    // No token needed, as an <img> tag sends none.
    assert_eq!(get(&result).await.status(), 200);
    let response = get(&original).await;
    assert_eq!(response.status(), 200, "{original}: {:?}", response.text().await);
    // Unsigned, without a token: refused, since authentication is on.
    let (path, query) = result.split_once('?').unwrap();
    assert_eq!(get(path).await.status(), 401);

    let refused = async |path: &str| {
        let response = get(path).await;
        assert_eq!(response.status(), 403, "{path}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["code"], "PERMISSION_DENIED");
        body["message"].as_str().unwrap().to_owned()
    };
    let other_image = format!("/v1/images/{}?{query}", "f".repeat(64));
    assert!(refused(&other_image).await.contains("does not match"));
    let expires: u64 = query
        .split('&')
        .find_map(|p| p.strip_prefix("expires="))
        .unwrap()
        .parse()
        .unwrap();
    let extended = result.replace(
        &format!("expires={expires}"),
        &format!("expires={}", expires + 3600),
    );
    assert!(refused(&extended).await.contains("does not match"));

    // After a rotation that retired k2, its links stop working; a gateway
    // that still lists it accepts them.
    let mut retired_env = borrowed(&env);
    retired_env.push(("NWS_URL_SIGNING_KEY", "k3:0123456789abcdef0123456789abcdef-three"));
    let retired = mesh.another_gateway(&retired_env);
    let response = http
        .get(format!("{}{result}", retired.url("gateway")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    let body: Value = response.json().await.unwrap();
    assert!(body["message"].as_str().unwrap().contains("\"k2\""), "{body}");

    eventually("the link to expire", async || {
        let response = get(&result).await;
        (response.status() == 403).then_some(())
    })
    .await;
    assert!(refused(&result).await.contains("expired"));
}

/// `n` uploads at once with `token`; their statuses.
async fn burst(http: &reqwest::Client, gateway: &str, token: &str, n: usize) -> Vec<reqwest::Response> {
    join_all((0..n).map(|_| upload(http, gateway, Some(token)))).await
}

fn count(responses: &[reqwest::Response], status: u16) -> usize {
    responses.iter().filter(|r| r.status().as_u16() == status).count()
}

#[tokio::test]
async fn a_burst_from_one_caller_gets_exactly_its_allowance() {
    let keys = Keys::new();
    let env = keys.env();
    let mesh = Deployment::start_with(&DeploymentEnv {
        every: borrowed(&env),
        // A token every 20 s: nothing refills while the test runs.
        gateway: vec![("NWS_RATE_LIMIT_RPS", "0.05"), ("NWS_RATE_LIMIT_BURST", "10")],
        ..DeploymentEnv::default()
    });
    let http = reqwest::Client::new();
    let gateway = mesh.gateway_url();
    let alice = keys.token("alice", "images:write");
    let responses = burst(&http, &gateway, &alice, 50).await;
    assert_eq!((count(&responses, 200), count(&responses, 429)), (10, 40));
    let limited = responses.iter().find(|r| r.status() == 429).unwrap();
    let headers = limited.headers();
    let retry_after: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=20).contains(&retry_after), "{retry_after}");
    assert_eq!(headers["ratelimit-policy"], "\"upload\";q=10;w=200");
    assert!(
        headers["ratelimit"]
            .to_str()
            .unwrap()
            .starts_with("\"upload\";r=0;t=")
    );
    let passed = responses.iter().find(|r| r.status() == 200).unwrap();
    assert!(
        passed.headers()["ratelimit"]
            .to_str()
            .unwrap()
            .starts_with("\"upload\";r=")
    );

    // Another caller has a bucket of its own.
    let bob = keys.token("bob", "images:write");
    assert_eq!(upload(&http, &gateway, Some(&bob)).await.status(), 200);
    assert_eq!(upload(&http, &gateway, Some(&alice)).await.status(), 429);
}

#[tokio::test]
async fn retry_after_is_honest() {
    // Over gRPC the delay is exact (google.rpc.RetryInfo).
    let (_dir, storage) = storage_alone(&[
        ("NWS_READ_RATE_LIMIT_RPS", "1"),
        ("NWS_READ_RATE_LIMIT_BURST", "2"),
    ]);
    let mut client = storage_client(&storage).await;
    assert_eq!(stat_code(&mut client, None).await, Code::NotFound);
    assert_eq!(stat_code(&mut client, None).await, Code::NotFound);
    let retry = async |client: &mut StorageClient<_>| -> Option<Duration> {
        let status = client.stat(stat(ABSENT)).await.unwrap_err();
        if status.code() != Code::ResourceExhausted {
            return None;
        }
        use tonic_types::StatusExt as _;
        Some(status.get_details_retry_info().unwrap().retry_delay.unwrap())
    };
    let delay = retry(&mut client).await.expect("the third read is limited");
    assert!(delay <= Duration::from_secs(1), "{delay:?}");
    // Half the wait is not enough...
    tokio::time::sleep(delay / 2).await;
    let rest = retry(&mut client).await.expect("still limited halfway");
    // ...the whole of it is.
    tokio::time::sleep(rest).await;
    assert_eq!(stat_code(&mut client, None).await, Code::NotFound);

    // Over HTTP, the same through the gateway: Retry-After in whole seconds.
    let keys = Keys::new();
    let env = keys.env();
    let mesh = Deployment::start_with(&DeploymentEnv {
        every: borrowed(&env),
        gateway: vec![
            ("NWS_READ_RATE_LIMIT_RPS", "1"),
            ("NWS_READ_RATE_LIMIT_BURST", "2"),
        ],
        ..DeploymentEnv::default()
    });
    let http = reqwest::Client::new();
    let reader = keys.token("reader", "images:read");
    let status = async || {
        http.get(format!("{}/status/{ABSENT}", mesh.gateway_url()))
            .bearer_auth(&reader)
            .send()
            .await
            .unwrap()
    };
    assert_eq!(status().await.status(), 404);
    assert_eq!(status().await.status(), 404);
    let limited = status().await;
    assert_eq!(limited.status(), 429);
    let retry_after: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(retry_after, 1);
    assert_eq!(status().await.status(), 429, "no time waited");
    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    assert_eq!(status().await.status(), 404, "after Retry-After");
}

#[tokio::test]
async fn replicas_share_one_limit_through_redis_and_fall_back_when_it_fails() {
    let keys = Keys::new();
    let env = keys.env();
    let mut redis = PrivateRedis::start();
    let url = redis.url();
    let shared = [
        ("NWS_REDIS_URL", url.as_str()),
        ("NWS_RATE_LIMIT_REDIS", "true"),
        ("NWS_RATE_LIMIT_RPS", "0.05"),
        ("NWS_RATE_LIMIT_BURST", "4"),
    ];
    let mesh = Deployment::start_with(&DeploymentEnv {
        every: borrowed(&env),
        gateway: shared.to_vec(),
        ..DeploymentEnv::default()
    });
    let second = mesh.another_gateway(&[&borrowed(&env)[..], &shared[..]].concat());
    let gateways = [mesh.gateway_url(), second.url("gateway")];
    let http = reqwest::Client::new();
    let alice = keys.token("alice", "images:write");
    let mut statuses = Vec::new();
    for round in 0..10 {
        statuses.push(
            upload(&http, &gateways[round % 2], Some(&alice))
                .await
                .status()
                .as_u16(),
        );
    }
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 4, "{statuses:?}");

    redis.stop();
    // Each replica now limits alone, from fresh buckets of its own: neither
    // refuses everyone nor lets everyone through.
    let readiness = async |gateway: &str| -> Value {
        http.get(format!("{gateway}/readyz"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    };
    let bob = keys.token("bob", "images:write");
    let responses = burst(&http, &gateways[0], &bob, 8).await;
    assert_eq!((count(&responses, 200), count(&responses, 429)), (4, 4));
    let ready = readiness(&gateways[0]).await;
    assert_eq!(ready["status"], "degraded", "{ready}");
    assert_eq!(ready["rate_limits"]["status"], "UNAVAILABLE", "{ready}");
    assert_eq!(ready["rate_limits"]["scope"], "this replica only", "{ready}");

    redis.restart();
    eventually("the shared limits to be back", async || {
        let ready = readiness(&gateways[0]).await;
        (ready["status"] == "ready").then_some(())
    })
    .await;
}

#[tokio::test]
async fn cross_origin_calls_only_from_listed_origins() {
    let mesh = Deployment::start(&[], &[("NWS_CORS_ORIGINS", "https://app.example")]);
    let http = reqwest::Client::new();
    let preflight = async |origin: &str| {
        http.request(
            reqwest::Method::OPTIONS,
            format!("{}/v1/watermark", mesh.gateway_url()),
        )
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "authorization, content-type")
        .send()
        .await
        .unwrap()
    };
    let allowed = preflight("https://app.example").await;
    assert!(allowed.status().is_success(), "{}", allowed.status());
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    assert_eq!(allowed.headers()["access-control-allow-credentials"], "true");
    let methods = allowed.headers()["access-control-allow-methods"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(methods.contains("POST"), "{methods}");
    let stranger = preflight("https://evil.example").await;
    assert!(stranger.headers().get("access-control-allow-origin").is_none());

    let response = http
        .post(format!("{}/v1/watermark", mesh.gateway_url()))
        .header("origin", "https://app.example")
        .body(png())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    let exposed = response.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap();
    assert!(
        exposed.contains("server-timing") && exposed.contains("ratelimit"),
        "{exposed}"
    );
}

#[test]
fn bad_policy_settings_stop_the_start_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("absent.json");
    for (env, named) in [
        (
            vec![("NWS_AUTH_JWKS", missing.to_str().unwrap())],
            "NWS_AUTH_JWKS",
        ),
        (
            vec![("NWS_AUTH_HS256_SECRET", "tiny-secret")],
            "NWS_AUTH_HS256_SECRET",
        ),
        (
            vec![("NWS_URL_SIGNING_KEY", "k1:tiny-secret")],
            "NWS_URL_SIGNING_KEY",
        ),
        (vec![("NWS_RATE_LIMIT_RPS", "fast")], "NWS_RATE_LIMIT_RPS"),
        (
            vec![("NWS_TRUSTED_PROXIES", "10.0.0.0/99")],
            "NWS_TRUSTED_PROXIES",
        ),
        (vec![("NWS_CORS_ORIGINS", "app.example")], "NWS_CORS_ORIGINS"),
        (vec![("NWS_RATE_LIMIT_REDIS", "true")], "NWS_RATE_LIMIT_REDIS"),
    ] {
        let mut all = vec![
            ("NWS_HTTP_ADDR", "127.0.0.1:0"),
            ("NWS_OPTIMIZER_URL", "http://127.0.0.1:1"),
            ("NWS_STORAGE_URL", "http://127.0.0.1:1"),
        ];
        all.extend(env);
        let (status, stderr) = nws_runtime::testing::run_to_exit(&workspace_binary("gateway"), &all);
        assert!(!status.success(), "{named}");
        assert!(stderr.contains(named), "{named}: {stderr}");
        assert!(!stderr.contains("tiny-secret"), "a secret was echoed: {stderr}");
    }
}
