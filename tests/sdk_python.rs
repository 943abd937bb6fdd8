//! Interop: the Python example client (`examples/python/petrel_client.py`, message classes
//! generated from the `.proto` files) chats with a Rust SDK client through `petrel serve`.
//!
//! Needs `python3` with the packages of `examples/python/requirements.txt`; the test fails
//! with the install command if they are missing.

#[allow(unused_imports)] // common re-exports TestClient, which this test does not use
#[macro_use]
mod common;
#[path = "common/sdk_keys.rs"]
mod sdk_keys;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::{Dataplane, TestServer};
use petrel_sdk::{ConversationKey, Event};
use sdk_keys::{Keys, start, test_config};
use tokio::task::block_in_place;
use tokio::time::timeout;

fn a_python_client_and_a_rust_sdk_client_chat(dp: Dataplane) {
    common::server::block_on(dp, async move {
        let probe = Command::new("python3")
            .args(["-c", "import google.protobuf, grpc_tools"])
            .status();
        assert!(
            probe.is_ok_and(|s| s.success()),
            "python3 with protobuf and grpcio-tools is needed: \
         pip install -r examples/python/requirements.txt"
        );
        let keys = Arc::new(Keys::generate());
        let server = TestServer::start_on(dp, &keys.server_config());
        let (py_user, rust_user) = (6001, 6002);
        let (rust, mut events, _) =
            start(&keys, test_config(rust_user, vec![server.addr.to_string()]));
        rust.wait_connected(Duration::from_secs(30)).await.unwrap();

        let token = keys.mint(py_user, "py", Duration::from_secs(3600));
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/examples/python/petrel_client.py"
        );
        let python = Command::new("python3")
            .arg(script)
            .args(["--server", &server.addr.to_string()])
            .args(["--user", &py_user.to_string(), "--device", "py"])
            .args(["--token", &token.token, "--peer", &rust_user.to_string()])
            .args(["--send", "hello from python", "--expect", "hello from rust"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run python3");

        let from_python = timeout(Duration::from_secs(30), async {
            loop {
                match events.recv().await {
                    Some(Event::Message(m)) => return m,
                    Some(_) => {}
                    None => panic!("event stream closed"),
                }
            }
        })
        .await
        .expect("no message from the Python client");
        assert_eq!(from_python.text(), Some("hello from python"));
        assert_eq!(from_python.sender, py_user);
        assert_eq!(from_python.conversation, ConversationKey::single(py_user));

        rust.send_text(ConversationKey::single(py_user), "hello from rust")
            .unwrap();
        let output = block_in_place(|| python.wait_with_output()).expect("python output");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "python client failed: {}\n{stdout}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(stdout.contains("acked: seq 1"), "{stdout}");
        assert!(stdout.contains("got: hello from rust"), "{stdout}");
    })
}

dataplane_tests!(a_python_client_and_a_rust_sdk_client_chat,);
