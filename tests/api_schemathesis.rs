//! Property-based fuzzing of the server HTTP API against its own OpenAPI document with
//! schemathesis (PyPI; `scripts/setup.sh` installs it): every operation of
//! `docs/openapi.json`, as served by a real `petrel serve` at `/v1/openapi.json`, gets
//! generated valid and invalid requests, and the run fails on any 5xx, any status,
//! content type or header the document does not list, any response body that breaks its
//! schema, and any schema-violating request the server accepts.
//!
//! The seed is fixed so a failure reproduces; `PETREL_SCHEMATHESIS_EXAMPLES` raises the
//! examples per operation (default 50).

#[allow(unused_imports)] // common re-exports TestClient and Dataplane, unused here
mod common;

use std::process::Command;

use common::TestServer;

const KEY: &str = "schemathesis-key-0123456789abcdef";

fn require_schemathesis() {
    let probe = Command::new("python3")
        .args(["-c", "import schemathesis.cli"])
        .status();
    assert!(
        probe.is_ok_and(|s| s.success()),
        "schemathesis is needed: bash scripts/setup.sh (or pip install 'schemathesis>=4.3,<5')"
    );
}

#[test]
fn the_api_keeps_to_its_openapi_document_under_schemathesis() {
    require_schemathesis();
    let dir = tempfile::tempdir().expect("tempdir");
    let key_file = dir.path().join("api.key");
    std::fs::write(&key_file, KEY).expect("key file");
    let server = TestServer::start(&format!(
        "api_addr = \"127.0.0.1:0\"\napi_key_file = {:?}\napi_system_user = 1\n",
        key_file.display().to_string()
    ));
    let api = server.api.expect("api address");
    let examples =
        std::env::var("PETREL_SCHEMATHESIS_EXAMPLES").unwrap_or_else(|_| "50".to_owned());
    let output = Command::new("python3")
        .args([
            "-c",
            "import sys; from schemathesis.cli import schemathesis; \
             sys.argv[0] = 'schemathesis'; sys.exit(schemathesis())",
            "run",
        ])
        .arg(format!("http://{api}/v1/openapi.json"))
        .args(["-H", &format!("Authorization: Bearer {KEY}")])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,\
             response_headers_conformance,response_schema_conformance,negative_data_rejection",
        ])
        .args(["--max-examples", &examples, "--seed", "19", "--no-color"])
        .env("SCHEMATHESIS_TELEMETRY", "false")
        // It writes a .schemathesis/ cache in its working directory.
        .current_dir(dir.path())
        .output()
        .expect("run schemathesis");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "schemathesis found problems:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("passed"), "{stdout}");
}
