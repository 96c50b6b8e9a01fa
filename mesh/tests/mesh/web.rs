//! The web page as the gateway serves it, over the network: what a browser
//! and a cache in between get. (The page itself is driven in a real browser
//! by gateway/tests/browser.rs.)

use nws_watermark::params::PARAMS;
use reqwest::header;

use crate::Mesh;

async fn get(mesh: &Mesh, path: &str, headers: &[(&'static str, &str)]) -> reqwest::Response {
    let mut request = mesh.http.get(mesh.url(path));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.expect("GET reaches the gateway")
}

#[tokio::test]
async fn the_page_its_assets_and_its_settings_are_served_with_their_policies() {
    let mesh = Mesh::start_with(&[("NWS_TRACE_VIEWER_URL", "https://traces.example/trace/{trace_id}")]);

    let page = get(&mesh, "/", &[("accept-encoding", "identity")]).await;
    assert_eq!(page.status(), 200);
    let headers = page.headers().clone();
    assert_eq!(headers[header::CONTENT_TYPE], "text/html; charset=utf-8");
    assert_eq!(headers[header::CACHE_CONTROL], "no-cache");
    let policy = headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "frame-ancestors 'none'",
        "require-trusted-types-for 'script'",
    ] {
        assert!(policy.contains(directive), "{policy}");
    }
    assert!(!policy.contains("unsafe"), "{policy}");
    assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
    let html = page.text().await.unwrap();
    let script = html
        .split('"')
        .find(|piece| piece.starts_with("/assets/") && piece.ends_with(".js"))
        .unwrap_or_else(|| panic!("the page loads a hashed script: {html}"))
        .to_owned();

    // A current copy is confirmed without a body.
    let etag = headers[header::ETAG].to_str().unwrap().to_owned();
    let again = get(
        &mesh,
        "/",
        &[("if-none-match", &etag), ("accept-encoding", "identity")],
    )
    .await;
    assert_eq!(again.status(), 304);

    // The script: cached for a year, and sent in the best encoding asked for,
    // precompressed (the compression layer adds nothing on top).
    let plain = get(&mesh, &script, &[("accept-encoding", "identity")]).await;
    assert_eq!(
        plain.headers()[header::CACHE_CONTROL],
        "public, max-age=31536000, immutable"
    );
    assert_eq!(
        plain.headers()[header::CONTENT_TYPE],
        "text/javascript; charset=utf-8"
    );
    assert!(plain.headers().get(header::CONTENT_ENCODING).is_none());
    let plain = plain.bytes().await.unwrap();
    let brotli = get(&mesh, &script, &[("accept-encoding", "gzip, deflate, br, zstd")]).await;
    assert_eq!(brotli.headers()[header::CONTENT_ENCODING], "br");
    assert_eq!(brotli.headers()[header::VARY], "accept-encoding");
    let brotli = brotli.bytes().await.unwrap();
    assert!(
        brotli.len() * 2 < plain.len(),
        "{} bytes in Brotli for {}",
        brotli.len(),
        plain.len()
    );
    let gzip = get(&mesh, &script, &[("accept-encoding", "gzip")]).await;
    assert_eq!(gzip.headers()[header::CONTENT_ENCODING], "gzip");
    let mut inflated = Vec::new();
    std::io::Read::read_to_end(
        &mut flate2::read::GzDecoder::new(&gzip.bytes().await.unwrap()[..]),
        &mut inflated,
    )
    .unwrap();
    assert_eq!(inflated, plain, "the gzip copy is the script");

    // Paths the page does not have are the API's 404.
    let missing = get(&mesh, "/assets/nothing-here.js", &[]).await;
    assert_eq!(missing.status(), 404);
    assert_eq!(missing.headers()[header::CONTENT_TYPE], "application/json");

    // The page's settings: the limits, and every upload option with its schema.
    let config: serde_json::Value = get(&mesh, "/ui/config.json", &[]).await.json().await.unwrap();
    assert_eq!(config["max_upload_bytes"], 25 * 1024 * 1024);
    assert_eq!(config["auth"], false);
    assert_eq!(config["queue"], false);
    assert_eq!(config["trace_viewer"], "https://traces.example/trace/{trace_id}");
    let options = config["options"].as_object().unwrap();
    assert_eq!(options.len(), PARAMS.len());
    for param in PARAMS {
        assert!(
            options[param.name]["type"].is_string(),
            "{}: {}",
            param.name,
            options[param.name]
        );
    }
    assert_eq!(options["wm_position"]["enum"].as_array().unwrap().len(), 9);
    assert_eq!(options["quality"]["maximum"], 100);
}

#[tokio::test]
async fn the_page_can_be_turned_off() {
    let mesh = Mesh::start_with(&[("NWS_WEB_UI", "false")]);
    for path in ["/", "/ui/config.json", "/favicon.svg"] {
        assert_eq!(get(&mesh, path, &[]).await.status(), 404, "{path}");
    }
    assert_eq!(get(&mesh, "/healthz", &[]).await.status(), 200);
}
