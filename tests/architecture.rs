//! The rules of ARCHITECTURE.md, checked on the real dependency graph
//! (`cargo tree`, normal dependencies, this platform): a change that makes
//! the edge link a codec, or the contracts a server framework, fails here.

use std::{collections::BTreeSet, process::Command};

/// Every package `package` links, itself included.
fn links(package: &str) -> BTreeSet<String> {
    let output = Command::new(env!("CARGO"))
        .args([
            "tree",
            "--locked",
            "--offline",
            "-e",
            "normal",
            "--prefix",
            "none",
            "--format",
            "{p}",
            "-p",
        ])
        .arg(package)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo tree");
    assert!(
        output.status.success(),
        "cargo tree -p {package}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

fn assert_links_none(package: &str, forbidden: &[&str]) {
    let linked = links(package);
    assert!(
        linked.contains(package),
        "{package} is not in its own tree: {linked:?}"
    );
    let found: Vec<&&str> = forbidden.iter().filter(|name| linked.contains(**name)).collect();
    assert!(
        found.is_empty(),
        "{package} links {found:?}, which ARCHITECTURE.md forbids"
    );
}

/// Codecs and storage clients: what only the services may link.
const HEAVY: &[&str] = &[
    "image",
    "turbojpeg",
    "turbojpeg-sys",
    "nws-jpeg",
    "nws-webp",
    "webp",
    "libwebp-sys",
    "rav1e",
    "ravif",
    "moxcms",
    "libavif",
    "libavif-sys",
    "libaom-sys",
    "libheif-rs",
    "libheif-sys",
    "jxl-oxide",
    "rust-s3",
];

#[test]
fn the_edge_links_no_codec_no_storage_client_and_no_service() {
    let mut forbidden = HEAVY.to_vec();
    forbidden.extend(["optimizer-svc", "storage-svc", "nws-mesh"]);
    assert_links_none("gateway", &forbidden);
}

#[test]
fn the_contracts_link_no_server_plumbing() {
    let mut forbidden = HEAVY.to_vec();
    forbidden.extend([
        "nws-runtime",
        "axum",
        "tower-http",
        "clap",
        "tracing-subscriber",
        "gateway",
        "optimizer-svc",
        "storage-svc",
    ]);
    assert_links_none("nws-watermark", &forbidden);
}

#[test]
fn the_runtime_and_each_service_stay_in_their_lane() {
    let mut forbidden = HEAVY.to_vec();
    forbidden.extend(["gateway", "optimizer-svc", "storage-svc", "nws-mesh"]);
    assert_links_none("nws-runtime", &forbidden);
    assert_links_none(
        "storage-svc",
        &[
            "optimizer-svc",
            "gateway",
            "nws-mesh",
            "nws-jpeg",
            "turbojpeg",
            "image",
            "webp",
            "rav1e",
        ],
    );
    assert_links_none(
        "optimizer-svc",
        &["storage-svc", "gateway", "nws-mesh", "rust-s3"],
    );
    assert_links_none("nws-jpeg", &["nws-watermark", "nws-runtime", "image"]);
    assert_links_none("nws-webp", &["nws-watermark", "nws-runtime", "image", "webp"]);
}
