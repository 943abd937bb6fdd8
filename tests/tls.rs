//! End-to-end TLS: `petrel serve` with a `[tls]` certificate on every dataplane (kernel
//! sockets; AF_XDP and DPDK, where rustls runs inside the per-core loop over the
//! userspace TCP stream). Login and chat through TLS, session resumption, a plaintext
//! client and TLS garbage on the TLS port (closed and counted, nothing else affected),
//! a certificate reloaded on SIGHUP while clients chat, none of them dropped, the
//! SDK over TLS through a server restart, and the dispatch directory over HTTPS.

#[macro_use]
mod common;
#[path = "common/sdk_keys.rs"]
#[allow(dead_code)] // shared with tests/sdk.rs; this file mints through providers only
mod sdk_keys;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::client::{single, text_of};
use common::{Dataplane, TestClient, TestServer};
use petrel_proto::pb;

const NAME: &str = "petrel.test";

/// A self-signed certificate for [`NAME`], written as PEM files into `dir`.
struct TestCert {
    cert: PathBuf,
    key: PathBuf,
    der: rustls::pki_types::CertificateDer<'static>,
}

impl TestCert {
    fn generate(dir: &Path, tag: &str) -> TestCert {
        let generated =
            rcgen::generate_simple_self_signed(vec![NAME.to_owned()]).expect("certificate");
        let cert = dir.join(format!("{tag}.crt"));
        let key = dir.join(format!("{tag}.key"));
        std::fs::write(&cert, generated.cert.pem()).expect("write cert");
        std::fs::write(&key, generated.key_pair.serialize_pem()).expect("write key");
        TestCert {
            cert,
            key,
            der: generated.cert.der().clone(),
        }
    }

    /// The server's config lines for this certificate, with metrics on.
    fn server_config(&self) -> String {
        format!(
            "metrics_addr = \"127.0.0.1:0\"\nrate_limit_per_second = 0\n\
             [tls]\ncert = {:?}\nkey = {:?}\n",
            self.cert, self.key
        )
    }

    /// A client configuration that trusts only this certificate and offers ALPN
    /// `petrel`.
    fn client_config(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.der.clone()).expect("trust the test cert");
        petrel_sdk::TlsConfig::with_roots(roots)
            .expect("TLS client config")
            .config
    }
}

/// Every raw byte `stream` receives until the server closes it (a FIN or a reset); fails
/// the test if it is still open after `limit`.
fn raw_until_closed(stream: &mut std::net::TcpStream, limit: Duration) -> Vec<u8> {
    use std::io::Read;
    stream.set_read_timeout(Some(limit)).expect("timeout");
    let mut bytes = Vec::new();
    let end = stream.read_to_end(&mut bytes);
    assert!(
        !matches!(&end, Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)),
        "the server left the connection open: {end:?}, {bytes:02x?}"
    );
    bytes
}

/// A server on `dp` speaking TLS with a fresh certificate (kept in the returned
/// directory), `extra` added to its config.
fn start_tls(dp: Dataplane, extra: &str) -> (tempfile::TempDir, TestCert, TestServer) {
    let dir = tempfile::tempdir().expect("tempdir");
    let cert = TestCert::generate(dir.path(), "server");
    let server = TestServer::start_on(dp, &format!("{extra}{}", cert.server_config()));
    (dir, cert, server)
}

fn tls_login(
    server: &TestServer,
    config: &Arc<rustls::ClientConfig>,
    user: u64,
    device: &str,
) -> TestClient {
    TestClient::connect_tls(server.addr, config.clone(), NAME).log_in(
        &server.token(user, device),
        user,
        device,
    )
}

/// `from` sends `text` to `to`, which must get it pushed.
fn chat(from: &mut TestClient, to: &mut TestClient, text: &str) {
    static NEXT_ID: AtomicU64 = AtomicU64::new(1);
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    // `send_text` fails the test unless the server acks.
    from.send_text(single(to.user), id, text);
    let push = to.push();
    assert_eq!(text_of(&push), text);
}

fn tls_login_chat_and_resume(dp: Dataplane) {
    let (_dir, cert, server) = start_tls(dp, "");
    let config = cert.client_config();

    let mut alice = tls_login(&server, &config, 1, "phone");
    let mut bob = tls_login(&server, &config, 2, "laptop");
    let alpn = alice
        .tls
        .as_ref()
        .and_then(|t| t.alpn_protocol().map(<[u8]>::to_vec));
    assert_eq!(alpn.as_deref(), Some(&b"petrel"[..]), "ALPN agreed on");
    for i in 0..20 {
        chat(&mut alice, &mut bob, &format!("hello {i}"));
        chat(&mut bob, &mut alice, &format!("hi back {i}"));
    }
    // A large message crosses many TLS records and TCP segments.
    let big = "x".repeat(30_000);
    chat(&mut alice, &mut bob, &big);

    // Bob reconnects with the same client configuration: its ticket resumes the session.
    drop(bob);
    let mut bob = tls_login(&server, &config, 2, "laptop");
    assert_eq!(
        bob.tls.as_ref().and_then(|t| t.handshake_kind()),
        Some(rustls::HandshakeKind::Resumed),
        "the reconnect resumed its session"
    );
    let history = bob.sync_all();
    assert!(
        history.iter().any(|p| text_of(p) == big),
        "the big message is in bob's history"
    );
    chat(&mut alice, &mut bob, "after the resumption");

    // Three handshakes: the first full, the later ones resumed (a client configuration
    // keeps the tickets it got, for the same server name).
    let s = server.scrape_until("three handshakes, the first full", |s| {
        s.sum("petrel_tls_handshakes_total", "") == 3.0
    });
    assert_eq!(s.sum("petrel_tls_handshakes_total", "kind=\"full\""), 1.0);
    assert_eq!(s.sum("petrel_tls_failures_total", ""), 0.0, "no failure");
}

fn a_plaintext_client_and_tls_garbage_are_closed_and_counted(dp: Dataplane) {
    let (_dir, cert, server) = start_tls(dp, "");
    let config = cert.client_config();
    let mut alice = tls_login(&server, &config, 1, "phone");
    let mut bob = tls_login(&server, &config, 2, "laptop");

    // A plaintext client speaking Petrel's protocol to the TLS port: closed, no answer.
    let mut plain = TestClient::connect(server.addr);
    plain.send(&petrel_proto::Frame::new(1, pb::Ping::default()));
    let frames = plain.recv_until_closed(Duration::from_secs(5));
    assert!(
        frames.is_empty(),
        "a plaintext client gets no frame: {frames:?}"
    );

    // A handshake record header followed by garbage: closed after rustls's alert.
    let mut garbage = TestClient::connect(server.addr);
    let mut bytes = vec![0x16, 0x03, 0x01, 0x00, 0x40];
    bytes.extend((0..64).map(|_| rand::random::<u8>()));
    garbage.send_raw(&bytes).expect("write garbage");
    let rest = raw_until_closed(&mut garbage.stream, Duration::from_secs(5));
    assert!(
        rest.first().is_none_or(|&b| b == 0x15),
        "only a TLS alert record comes back: {rest:02x?}"
    );

    // A logged-in TLS client whose stream is corrupted underneath TLS: an application
    // data record that does not decrypt.
    let mut corrupt = tls_login(&server, &config, 3, "tablet");
    let mut record = vec![0x17, 0x03, 0x03, 0x00, 0x20];
    record.extend((0..32).map(|_| rand::random::<u8>()));
    use std::io::Write;
    corrupt.stream.write_all(&record).expect("write raw");
    // Underneath TLS again: the server's answer is an alert record, then the close.
    let answer = raw_until_closed(&mut corrupt.stream, Duration::from_secs(5));
    // TLS 1.3 encrypts alerts: one application-data record of 2 + 1 + 16 bytes.
    assert_eq!(
        (answer.get(..5), answer.len()),
        (Some(&[0x17, 0x03, 0x03, 0x00, 19][..]), 5 + 19),
        "one encrypted alert record: {answer:02x?}"
    );

    let s = server.scrape_until("each failure counted", |s| {
        s.sum("petrel_tls_failures_total", "reason=\"not_tls\"") >= 1.0
            && s.sum("petrel_tls_failures_total", "reason=\"handshake\"") >= 1.0
            && s.sum("petrel_tls_failures_total", "reason=\"bad_record\"") >= 1.0
    });
    assert_eq!(
        s.sum("petrel_tls_failures_total", "reason=\"not_tls\""),
        1.0
    );

    // Nothing else was affected.
    chat(&mut alice, &mut bob, "still here");
    chat(&mut bob, &mut alice, "me too");
}

fn a_certificate_reloaded_on_sighup_drops_no_connection(dp: Dataplane) {
    let (dir, first, server) = start_tls(dp, "");
    let old_config = first.client_config();
    let mut alice = tls_login(&server, &old_config, 1, "phone");
    let mut bob = tls_login(&server, &old_config, 2, "laptop");
    chat(&mut alice, &mut bob, "before");

    // A new certificate and key in the same files, then SIGHUP, while the two chat.
    let second = TestCert::generate(dir.path(), "next");
    std::fs::copy(&second.cert, &first.cert).expect("replace cert");
    std::fs::copy(&second.key, &first.key).expect("replace key");
    let status = std::process::Command::new("kill")
        .args(["-HUP", &server.pid().to_string()])
        .status()
        .expect("kill -HUP");
    assert!(status.success());
    for i in 0..50 {
        chat(&mut alice, &mut bob, &format!("during {i}"));
    }
    server.scrape_until("the reload", |s| {
        s.sum("petrel_tls_reloads_total", "result=\"ok\"") >= 1.0
    });

    // New handshakes present the new certificate: a client trusting only it gets in,
    // one trusting only the old one is refused.
    let new_config = second.client_config();
    let mut carol = tls_login(&server, &new_config, 3, "desk");
    // A fresh configuration: one that held a ticket would resume without any certificate.
    let mut stale = TestClient::connect_tls(server.addr, first.client_config(), NAME);
    stale
        .stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    // The first write runs the handshake, which checks the server's certificate.
    assert!(
        stale.send_raw(b"PT").is_err(),
        "a client that trusts only the old certificate fails its handshake"
    );

    // The connections of before the reload are all still there.
    chat(&mut alice, &mut bob, "after");
    chat(&mut bob, &mut carol, "hello carol");
    chat(&mut carol, &mut alice, "hello alice");

    // A broken file leaves the current certificate in place.
    std::fs::write(&first.key, "not a key").expect("break the key");
    let status = std::process::Command::new("kill")
        .args(["-HUP", &server.pid().to_string()])
        .status()
        .expect("kill -HUP");
    assert!(status.success());
    server.scrape_until("the failed reload", |s| {
        s.sum("petrel_tls_reloads_total", "result=\"failed\"") >= 1.0
    });
    let mut dave = tls_login(&server, &new_config, 4, "desk");
    chat(&mut dave, &mut carol, "the new certificate stays");
}

/// Waits for the message `text` among `events`.
async fn expect(events: &mut petrel_sdk::Events, text: &str) {
    loop {
        match tokio::time::timeout(Duration::from_secs(30), events.recv()).await {
            Ok(Some(petrel_sdk::Event::Message(m))) if m.text() == Some(text) => return,
            Ok(Some(_)) => {}
            other => panic!("no {text:?}: {other:?}"),
        }
    }
}

fn the_sdk_chats_over_tls_and_reconnects_after_a_restart(dp: Dataplane) {
    use petrel_sdk::{ConversationKey, TlsConfig};
    use sdk_keys::{Keys, start, test_config};
    const WAIT: Duration = Duration::from_secs(30);

    let keys = Arc::new(Keys::generate());
    let (_dir, cert, mut server) = start_tls(dp, &keys.server_config());
    common::server::block_on(dp, async move {
        let tls = TlsConfig {
            config: cert.client_config(),
            // The endpoint is an IP address; the certificate names `NAME`.
            server_name: Some(NAME.to_owned()),
        };
        let endpoints = vec![server.addr.to_string()];
        let (alice, bob) = (7001, 7002);
        let config = |user: u64| {
            let mut c = test_config(user, endpoints.clone());
            c.tls = Some(tls.clone());
            c
        };
        let (a, _a_events, _) = start(&keys, config(alice));
        let (b, mut b_events, _) = start(&keys, config(bob));
        a.wait_connected(WAIT)
            .await
            .expect("alice connects over TLS");
        b.wait_connected(WAIT).await.expect("bob connects over TLS");
        a.send_text(ConversationKey::single(bob), "over TLS")
            .unwrap();
        expect(&mut b_events, "over TLS").await;

        tokio::task::block_in_place(|| server.restart());
        a.wait_connected(WAIT).await.expect("alice reconnects");
        b.wait_connected(WAIT).await.expect("bob reconnects");
        a.send_text(ConversationKey::single(bob), "after the restart")
            .unwrap();
        expect(&mut b_events, "after the restart").await;
    });
}

fn the_login_deadline_closes_tls_clients_with_their_reason_and_silent_ones_too(dp: Dataplane) {
    let (_dir, cert, server) = start_tls(dp, "login_deadline_secs = 1\n");
    // A TLS client that never logs in: its LoginTimeout error arrives before the close
    // (the close_notify goes after the frames queued before it).
    let mut idle = TestClient::connect_tls(server.addr, cert.client_config(), NAME);
    let frames = idle.recv_until_closed(Duration::from_secs(10));
    let codes: Vec<i32> = frames
        .iter()
        .filter_map(|f| match &f.body {
            petrel_proto::Body::Error(e) => Some(e.code),
            _ => None,
        })
        .collect();
    assert_eq!(codes, [pb::ErrorCode::LoginTimeout as i32], "{frames:?}");
    // A TCP client that never even sends its TLS hello is closed at the deadline too.
    let mut silent = std::net::TcpStream::connect(server.addr).expect("connect");
    raw_until_closed(&mut silent, Duration::from_secs(8));
}

/// `[tls] listen`: plaintext listeners and TLS listeners in one server (kernel sockets),
/// each refusing the other kind of client.
#[test]
fn plaintext_and_tls_listeners_side_by_side_serve_the_same_users() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cert = TestCert::generate(dir.path(), "server");
    let server = TestServer::start(&format!(
        "{}listen = [\"127.0.0.1:0\"]\n",
        cert.server_config()
    ));
    assert_eq!(server.tls_addrs.len(), 1, "one TLS listener printed");
    let tls_addr = server.tls_addrs[0];
    assert_ne!(tls_addr, server.addr);
    let config = cert.client_config();
    let mut plain = TestClient::login(server.addr, &server.token(1, "desk"), 1, "desk");
    let mut secure = TestClient::connect_tls(tls_addr, config.clone(), NAME).log_in(
        &server.token(2, "phone"),
        2,
        "phone",
    );
    chat(&mut plain, &mut secure, "from the plaintext port");
    chat(&mut secure, &mut plain, "from the TLS port");

    // A TLS client on the plaintext port: the server answers its hello as a bad frame.
    let mut wrong = TestClient::connect_tls(server.addr, config, NAME);
    wrong
        .stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    assert!(
        wrong.send_raw(b"PT").is_err(),
        "no TLS on the plaintext port"
    );
    // A plaintext client on the TLS port: closed, counted.
    let mut plain_on_tls = TestClient::connect(tls_addr);
    plain_on_tls.send(&petrel_proto::Frame::new(1, pb::Ping::default()));
    assert!(
        plain_on_tls
            .recv_until_closed(Duration::from_secs(5))
            .is_empty()
    );
    server.scrape_until("the plaintext client on the TLS port", |s| {
        s.sum("petrel_tls_failures_total", "reason=\"not_tls\"") == 1.0
    });
    chat(&mut plain, &mut secure, "both still here");
}

/// The dispatch directory over HTTPS with the server's certificate (`[dispatch] tls`
/// follows `[tls]`): SDK clients that speak TLS, configured with an endpoint where
/// nothing listens, ask it, connect where it answers and chat; a plaintext request to
/// the directory gets no HTTP answer.
#[test]
fn the_sdk_asks_an_https_directory_and_connects_where_it_answers() {
    use petrel_sdk::{ConversationKey, TlsConfig};
    use sdk_keys::{Keys, start, test_config};
    const WAIT: Duration = Duration::from_secs(30);

    let keys = Arc::new(Keys::generate());
    let dir = tempfile::tempdir().expect("tempdir");
    let cert = TestCert::generate(dir.path(), "server");
    let server = TestServer::start(&format!(
        "{}{}[dispatch]\naddr = \"127.0.0.1:0\"\n",
        keys.server_config(),
        cert.server_config()
    ));
    let directory = server.dispatch.expect("the directory's address is printed");

    // Plain HTTP on the HTTPS port: the handshake fails, the connection is closed.
    let mut plain = std::net::TcpStream::connect(directory).expect("connect");
    std::io::Write::write_all(&mut plain, b"GET /v1/dispatch HTTP/1.1\r\nhost: x\r\n\r\n")
        .expect("write");
    let answer = raw_until_closed(&mut plain, Duration::from_secs(10));
    assert!(!answer.starts_with(b"HTTP/"), "answered in plain HTTP");

    common::server::block_on(Dataplane::Kernel, async move {
        let tls = TlsConfig {
            config: cert.client_config(),
            server_name: Some(NAME.to_owned()),
        };
        let config = |user: u64| {
            // Nothing listens on port 1: only the directory's answer leads to the server.
            let mut c = test_config(user, vec!["127.0.0.1:1".to_owned()]);
            c.directory = vec![format!("https://{directory}")];
            c.tls = Some(tls.clone());
            c
        };
        let (alice, bob) = (7101, 7102);
        let (a, _a_events, _) = start(&keys, config(alice));
        let (b, mut b_events, _) = start(&keys, config(bob));
        a.wait_connected(WAIT)
            .await
            .expect("alice connects where the directory says");
        b.wait_connected(WAIT)
            .await
            .expect("bob connects where the directory says");
        a.send_text(ConversationKey::single(bob), "found through https")
            .unwrap();
        expect(&mut b_events, "found through https").await;
        drop(server);
    });
}

dataplane_tests!(
    tls_login_chat_and_resume,
    the_login_deadline_closes_tls_clients_with_their_reason_and_silent_ones_too,
    the_sdk_chats_over_tls_and_reconnects_after_a_restart,
    a_plaintext_client_and_tls_garbage_are_closed_and_counted,
    a_certificate_reloaded_on_sighup_drops_no_connection,
);
