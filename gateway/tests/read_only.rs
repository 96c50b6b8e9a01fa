//! The three services run as the image and the manifests run them: as uid
//! 10001, with the root filesystem read-only and only `/tmp` (a tmpfs) and
//! Storage's data directory (a volume) writable. No container engine is
//! needed: bubblewrap (`NWS_BWRAP`, Debian's `bubblewrap`) gives each
//! process that view of the machine. A write anywhere else would fail the
//! upload, or the start.

use std::path::{Path, PathBuf};

use nws_runtime::testing::{ServiceProcess, test_image, tool, workspace_binary};

/// A script that runs `binary` as uid 10001 under a read-only root, a
/// fresh `/tmp`, and `writable` (if any) as the one other writable path.
fn sandboxed(dir: &Path, binary: &str, writable: Option<&Path>) -> PathBuf {
    let bind = writable
        .map(|path| format!("--bind {0} {0}", path.display()))
        .unwrap_or_default();
    let script = format!(
        "#!/bin/sh\nexec {bwrap} --ro-bind / / --tmpfs /tmp --dev /dev --proc /proc {bind} \
         --unshare-user --uid 10001 --gid 10001 --die-with-parent --setenv TMPDIR /tmp -- {binary} \"$@\"\n",
        bwrap = tool("NWS_BWRAP").display(),
        binary = if binary.starts_with('/') {
            binary.to_owned()
        } else {
            workspace_binary(binary).display().to_string()
        },
    );
    let path = dir.join(binary.rsplit('/').next().unwrap());
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    path
}

#[tokio::test]
async fn the_services_serve_an_upload_as_a_non_root_user_on_a_read_only_root() {
    let scripts = tempfile::tempdir().unwrap();
    // Outside /tmp, which is the sandbox's own: this stands for a volume.
    let data = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();

    // The sandbox is what it claims: the root refuses writes, /tmp takes
    // them, and the user is 10001.
    let probe = sandboxed(scripts.path(), "/bin/sh", None);
    let output = std::process::Command::new(&probe)
        .args(["-c", "id -u; touch /etc/nws-probe 2>/dev/null && echo root-writable; touch /tmp/x && echo tmp-writable"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&output.stdout), "10001\ntmp-writable\n");

    let storage = ServiceProcess::start(
        &sandboxed(scripts.path(), "storage-svc", Some(data.path())),
        &[
            ("NWS_STORAGE_ADDR", "127.0.0.1:0"),
            ("NWS_DATA_DIR", data.path().to_str().unwrap()),
        ],
        &["storage"],
    );
    let storage_url = storage.url("storage");
    let optimizer = ServiceProcess::start(
        &sandboxed(scripts.path(), "optimizer-svc", None),
        &[
            ("NWS_OPTIMIZER_ADDR", "127.0.0.1:0"),
            ("NWS_STORAGE_URL", &storage_url),
        ],
        &["optimizer"],
    );
    let gateway = ServiceProcess::start(
        &sandboxed(scripts.path(), "gateway", None),
        &[
            ("NWS_HTTP_ADDR", "127.0.0.1:0"),
            ("NWS_OPTIMIZER_URL", &optimizer.url("optimizer")),
            ("NWS_STORAGE_URL", &storage_url),
        ],
        &["gateway"],
    );

    let http = reqwest::Client::new();
    let response = http
        .post(format!("{}/v1/watermark?format=png", gateway.url("gateway")))
        .body(test_image("picos_orient6.jpg"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    let location = response.headers()["content-location"]
        .to_str()
        .unwrap()
        .to_owned();
    let rendered = response.bytes().await.unwrap();
    assert!(rendered.starts_with(b"\x89PNG"));

    // Kept by Storage under its volume, and served back from it.
    let again = http
        .get(format!("{}{location}", gateway.url("gateway")))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 200);
    assert_eq!(again.bytes().await.unwrap(), rendered);
    assert!(!nws_runtime::testing::files_under(&data.path().join("originals")).is_empty());
}
