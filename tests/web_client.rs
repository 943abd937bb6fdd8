//! The web client (`web/`, docs/WEB.md) in headless Chromium, served the way
//! docs/OPERATIONS.md deploys it: Debian's nginx with the shipped configuration serves
//! the page and proxies its `/ws` to Petrel's WebSocket listeners, and an SDK client
//! connects through nginx's plain stream port.
//!
//! Two browser pages — Alice over `http://` (WebSocket), Bob over `https://` (`wss://`,
//! TLS ended by nginx) — are driven by `web/test/drive.mjs` (puppeteer-core against
//! Debian's `chromium`): Alice syncs a message the SDK user sent while she was offline,
//! the pages chat 1:1 both ways, Alice writes to the SDK user and to a group of the
//! three, her WebSocket is cut and the page reconnects by itself, and a reload brings
//! the history back. The driver measures a screenshot of Alice's page; this test checks
//! it: inside every message bubble on screen, most pixels are that bubble's colour.
//!
//! Everything runs in a network namespace of its own, loopback only, so the browser can
//! reach nothing but the test's servers.
//!
//! Needs root (the namespace), nginx, chromium and the driver's npm packages
//! (`scripts/setup.sh` installs all three: `apt install nginx libnginx-mod-stream
//! chromium`, `npm ci --prefix web`).

#[allow(unused_imports)] // common re-exports `Dataplane`; this runs on kernel sockets only
mod common;
#[allow(dead_code)] // the helpers other SDK tests use
#[path = "common/sdk_keys.rs"]
mod sdk_keys;

use std::collections::HashSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::nginx::{
    Namespace, Nginx, TestCertificate, repo_file, require_nginx, shipped_nginx_config,
    shipped_petrel_config,
};
use common::{Dataplane, TestServer};
use petrel_proto::pb;
use petrel_sdk::{ConversationKey, Event};
use sdk_keys::{Keys, start, test_config};
use tokio::task::block_in_place;
use tokio::time::timeout;

const CHROMIUM: &str = "/usr/bin/chromium";
const ALICE: u64 = 7001;
const BOB: u64 = 7002;
const SDK_USER: u64 = 7003;
const OFFLINE_TEXT: &str = "sent while you were offline";
/// The whole browser run: two browser starts, a reconnect with back-off, a reload.
const DRIVER_LIMIT: Duration = Duration::from_secs(180);
/// The least share of a bubble's pixels in its colour (text and anti-aliasing take the
/// rest: about 7% in the runs here).
const LEAST_COLOUR_SHARE: f64 = 0.8;

/// Panics with the fix unless the browser and the driver's packages are installed.
fn require_browser() {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: run scripts/setup.sh (apt install chromium)"
    );
    assert!(
        repo_file("web/node_modules/puppeteer-core").exists(),
        "web/node_modules is missing: run scripts/setup.sh (npm ci --prefix web)"
    );
}

/// Installs the web client where nginx serves it, as docs/WEB.md says (`cp -rL`: the
/// schema link resolved), readable by nginx's workers.
fn install_web_client(dir: &Path) -> std::path::PathBuf {
    let root = dir.join("web");
    let status = Command::new("cp")
        .arg("-rL")
        .arg(repo_file("web"))
        .arg(&root)
        .status()
        .expect("cp");
    assert!(status.success(), "copy web/: {status}");
    let status = Command::new("chmod")
        .args(["-R", "a+rX"])
        .arg(dir)
        .status()
        .expect("chmod");
    assert!(status.success(), "chmod: {status}");
    root
}

/// Runs the driver with `config`; its JSON report, or a panic with what went wrong.
fn drive(config: &serde_json::Value, dir: &Path) -> serde_json::Value {
    let path = dir.join("drive.json");
    std::fs::write(&path, config.to_string()).expect("write driver config");
    let mut child = Command::new("node")
        .arg(repo_file("web/test/drive.mjs"))
        .arg(&path)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run node (the machine's Node.js)");
    let deadline = Instant::now() + DRIVER_LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the driver") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the browser driver ran past {DRIVER_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut out = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().expect("stdout"), &mut out)
        .expect("read the driver's report");
    let report: serde_json::Value = serde_json::from_str(out.trim())
        .unwrap_or_else(|e| panic!("the driver's report is no JSON ({e}): {out}"));
    assert!(status.success(), "the browser driver failed: {report:#}");
    report
}

#[test]
#[ignore = "needs root (a network namespace), nginx, chromium and web/node_modules; scripts/test.sh runs it as root and in CI"]
fn two_browsers_and_an_sdk_client_chat_through_nginx() {
    require_nginx();
    require_browser();
    let ns = Namespace::create("petrel-web", None);
    // This thread, and every process, thread and socket it starts from here on, is
    // inside: the browser reaches only loopback.
    ns.enter();

    let dir = tempfile::tempdir().expect("tempdir");
    let certificate = TestCertificate::write(dir.path());
    let keys = Arc::new(Keys::generate());
    let mut config = shipped_petrel_config(&certificate);
    let key_file: toml::Table = keys.server_config().parse().expect("key_file line");
    config.extend(key_file);
    let server = TestServer::start(&toml::to_string(&config).expect("serialize"));
    let web_root = install_web_client(dir.path());
    let nginx_config = shipped_nginx_config(dir.path(), &certificate, &web_root);
    let nginx = Nginx::start(&nginx_config, dir.path(), "127.0.0.1:9580");

    common::server::block_on(Dataplane::Kernel, async {
        // The SDK user, through nginx's plain stream port, writes to Alice before she
        // is online.
        let (sdk, mut events, _) = start(
            &keys,
            test_config(SDK_USER, vec!["127.0.0.1:9500".to_owned()]),
        );
        sdk.wait_connected(Duration::from_secs(30))
            .await
            .expect("the SDK client connects through nginx");
        let offline_id = sdk
            .send_text(ConversationKey::single(ALICE), OFFLINE_TEXT)
            .expect("send");
        timeout(Duration::from_secs(30), async {
            loop {
                match events.recv().await {
                    Some(Event::Acked { client_msg_id, .. }) if client_msg_id == offline_id => {
                        return;
                    }
                    Some(_) => {}
                    None => panic!("the SDK client stopped"),
                }
            }
        })
        .await
        .expect("the offline message was acked");

        let page_token = |user| {
            keys.mint_on(user, "web", pb::Platform::Web, Duration::from_secs(3600))
                .token
        };
        let driver = serde_json::json!({
            "chromium": CHROMIUM,
            "screenshot": dir.path().join("alice.png"),
            "alice": { "base": "http://127.0.0.1:9580", "user": ALICE, "token": page_token(ALICE) },
            "bob": { "base": "https://127.0.0.1:9581", "user": BOB, "token": page_token(BOB) },
            "sdkUser": SDK_USER,
            "sdkText": OFFLINE_TEXT,
        });
        let report = block_in_place(|| drive(&driver, dir.path()));
        for step in ["synced", "chatted", "reconnected", "history"] {
            assert_eq!(report[step], true, "step {step}: {report:#}");
        }
        assert_eq!(
            report["pageErrors"].as_array().map(Vec::len),
            Some(0),
            "{report:#}"
        );
        let group = report["group"].as_u64().expect("the group's id");

        // The screenshot shows the conversation: several bubbles of each side on screen,
        // each painted in its colour where the page laid it out.
        let bubbles = report["screenshot"]["bubbles"]
            .as_array()
            .expect("bubbles measured");
        let mine = bubbles.iter().filter(|b| b["mine"] == true).count();
        assert!(
            mine >= 1 && bubbles.len() - mine >= 2,
            "Alice's own and Bob's messages on screen: {report:#}"
        );
        for bubble in bubbles {
            let share = bubble["share"].as_f64().expect("share");
            assert!(
                share >= LEAST_COLOUR_SHARE,
                "a bubble is not painted in its colour ({share:.2}): {bubble}"
            );
        }
        let on_screen: HashSet<&str> = bubbles.iter().filter_map(|b| b["text"].as_str()).collect();
        assert!(
            on_screen.contains("after your reconnect"),
            "the newest message is on screen: {on_screen:?}"
        );

        // The SDK client heard Alice in 1:1 and in the group.
        let mut expected: HashSet<(ConversationKey, &str)> = [
            (ConversationKey::single(ALICE), "hello SDK, from a browser"),
            (ConversationKey::group(group), "hello group"),
        ]
        .into();
        timeout(Duration::from_secs(30), async {
            while !expected.is_empty() {
                match events.recv().await {
                    Some(Event::Message(m)) if m.sender == ALICE => {
                        let text = m.text().unwrap_or_default().to_owned();
                        expected.retain(|(c, t)| !(*c == m.conversation && *t == text));
                    }
                    Some(_) => {}
                    None => panic!("the SDK client stopped"),
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("the SDK client never got {expected:?}"));
        sdk.shutdown(false).await;
    });

    // Every browser connection came through nginx's http server, which named the
    // client in X-Forwarded-For: Alice's first, reconnected and reloaded page, and Bob's.
    let s = server.scrape_until("the browsers' upgrades counted", |s| {
        s.sum("petrel_websocket_upgrades_total", "") >= 4.0
    });
    assert_eq!(
        s.sum("petrel_proxy_headers_total", "result=\"forwarded\""),
        s.sum("petrel_websocket_upgrades_total", ""),
        "nginx log:\n{}",
        nginx.log()
    );
    assert_eq!(s.sum("petrel_websocket_failures_total", ""), 0.0);
    drop(nginx);
}
