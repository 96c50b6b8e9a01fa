//! Clients outside the project: grpcurl (by reflection, no proto file) and a
//! Python client generated from proto/ with grpcio-tools.

use std::{path::Path, process::Command};

use nws_runtime::testing::{test_image, test_images_dir};

use crate::{Mesh, base64, sha256_hex, tool};

fn grpcurl(args: &[&str]) -> String {
    let output = Command::new(tool("NWS_GRPCURL"))
        .args(args)
        .output()
        .expect("run grpcurl");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "grpcurl {args:?} failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[test]
fn grpcurl_lists_describes_and_calls_both_services_by_reflection() {
    let mesh = Mesh::start();
    let optimizer = mesh.process.addr("optimizer").to_string();
    let storage = mesh.process.addr("storage").to_string();

    let listed = grpcurl(&["-plaintext", &optimizer, "list"]);
    assert!(
        listed.contains("watermark.v1.Optimizer") && listed.contains("grpc.health.v1.Health"),
        "{listed}"
    );
    assert!(
        !listed.contains("watermark.v1.Storage"),
        "only what this server runs: {listed}"
    );
    let listed = grpcurl(&["-plaintext", &storage, "list"]);
    assert!(
        listed.contains("watermark.v1.Storage") && listed.contains("grpc.health.v1.Health"),
        "{listed}"
    );

    let described = grpcurl(&["-plaintext", &optimizer, "describe", "watermark.v1.Optimizer"]);
    assert!(
        described.contains("rpc Optimize ( stream .watermark.v1.OptimizeRequest )"),
        "{described}"
    );
    let described = grpcurl(&["-plaintext", &storage, "describe", "watermark.v1.PutResponse"]);
    assert!(described.contains("deduplicated"), "{described}");

    let photo = test_image("tiny_16x16.jpg");
    let b64 = base64(&photo);
    let probe = grpcurl(&[
        "-plaintext",
        "-d",
        &format!(r#"{{"header": "{b64}"}}"#),
        &optimizer,
        "watermark.v1.Optimizer/Probe",
    ]);
    let probe: serde_json::Value = serde_json::from_str(&probe).unwrap();
    assert_eq!(probe["format"], "IMAGE_FORMAT_JPEG");
    assert_eq!(
        (probe["width"].as_u64(), probe["height"].as_u64()),
        (Some(16), Some(16))
    );

    // A client stream is a sequence of JSON messages.
    let put = grpcurl(&[
        "-plaintext",
        "-d",
        &format!(
            r#"{{"chunk": "{}"}} {{"chunk": "{}"}}"#,
            base64(&photo[..300]),
            base64(&photo[300..])
        ),
        &storage,
        "watermark.v1.Storage/Put",
    ]);
    let put: serde_json::Value = serde_json::from_str(&put).unwrap();
    assert_eq!(put["sha256"], sha256_hex(&photo));
    let stat = grpcurl(&[
        "-plaintext",
        "-d",
        &format!(r#"{{"sha256": "{}"}}"#, sha256_hex(&photo)),
        &storage,
        "watermark.v1.Storage/Stat",
    ]);
    assert!(stat.contains(r#""mediaType": "image/jpeg""#), "{stat}");

    for (addr, service) in [
        (&optimizer, "watermark.v1.Optimizer"),
        (&storage, "watermark.v1.Storage"),
    ] {
        let health = grpcurl(&[
            "-plaintext",
            "-d",
            &format!(r#"{{"service": "{service}"}}"#),
            addr,
            "grpc.health.v1.Health/Check",
        ]);
        assert!(health.contains("SERVING"), "{service}: {health}");
    }
}

#[test]
fn a_python_client_generated_from_the_protos_streams_through_both_services() {
    let mesh = Mesh::start();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/client.py");
    let proto_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../proto");
    let output = Command::new(tool("NWS_TEST_PYTHON"))
        .arg(&script)
        .args(["--proto-dir", proto_dir.to_str().unwrap()])
        .args(["--optimizer", &mesh.process.addr("optimizer").to_string()])
        .args(["--storage", &mesh.process.addr("storage").to_string()])
        .args([
            "--image",
            test_images_dir().join("kleiber_4000x3000.jpg").to_str().unwrap(),
        ])
        .output()
        .expect("run the Python client");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "Python client failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("optimize ok 1440x1080"), "{stdout}");
    assert!(stdout.contains("put/get ok"), "{stdout}");
}
