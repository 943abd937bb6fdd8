//! End-to-end tests of the media upload service (`petrel serve` with a `[media]`
//! table; docs/MEDIA.md) against the real binary, on kernel sockets (the media service
//! is HTTP on its own threads whatever the IM dataplane):
//!
//! - an image uploaded through the SDK travels in a message (URI, thumbnail,
//!   dimensions) and the other client downloads exactly the same bytes;
//! - range requests (206 with `Content-Range`, 416 outside the file);
//! - the same bytes uploaded twice are stored once;
//! - chunked uploads: the SDK's large-file path, resuming at the server's offset, and
//!   another user's session refused;
//! - `petrel chat --media URL` sends a picture with `/send-image FILE`;
//! - interop: the Python example (`examples/python/petrel_media.py`) uploads, in one
//!   request and in chunks, what the Rust SDK downloads, and the other way round;
//! - bad input: no/garbage/expired/revoked token, oversize, wrong MIME (from the bytes),
//!   undecodable image, empty and truncated uploads, path tricks — each a 4xx JSON
//!   error with nothing left on disk.

#[allow(unused_imports)] // common re-exports TestClient, which these tests do not use
#[macro_use]
mod common;
#[path = "common/sdk_keys.rs"]
mod sdk_keys;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::http;
use common::media::{get, noise, sha256, upload};
use common::server::block_on;
use common::{Dataplane, TestServer};
use http::{bearer, send};
use petrel_sdk::pb::content::Body;
use petrel_sdk::{ConversationKey, Event, MediaClient, MediaKind, token_fn};
use sdk_keys::{Keys, start, test_config};

const WAIT: Duration = Duration::from_secs(30);
const HOUR: Duration = Duration::from_secs(3600);
const IMAGE_MAX: u64 = 256 * 1024;
const FILE_MAX: u64 = 16 << 20;

fn media_server(keys: &Keys) -> TestServer {
    TestServer::start(&format!(
        "{}[media]\naddr = \"127.0.0.1:0\"\n[media.image]\nmax_bytes = {IMAGE_MAX}\n\
         [media.file]\nmax_bytes = {FILE_MAX}\n",
        keys.server_config()
    ))
}

fn media_addr(server: &TestServer) -> SocketAddr {
    server.media.expect("the server printed its media address")
}

fn png(path: &Path, width: u32, height: u32) -> Vec<u8> {
    image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, 128])
    })
    .save_with_format(path, image::ImageFormat::Png)
    .unwrap();
    std::fs::read(path).unwrap()
}

/// Files under `DATA_DIR/media/blobs` that are blobs (not `.json` sidecars).
fn blobs(server: &TestServer) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let root = server.data_dir().join("media/blobs");
    for shard in std::fs::read_dir(root).unwrap().flatten() {
        for entry in std::fs::read_dir(shard.path()).unwrap().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.len() == 64 {
                found.push(entry.path());
            }
        }
    }
    found
}

fn tmp_files(server: &TestServer) -> usize {
    std::fs::read_dir(server.data_dir().join("media/tmp"))
        .unwrap()
        .count()
}

#[test]
fn an_uploaded_image_travels_in_a_message_and_downloads_byte_exact() {
    let keys = Arc::new(Keys::generate());
    let server = media_server(&keys);
    let base = format!("http://{}", media_addr(&server));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("photo.png");
    let original = png(&path, 640, 480);
    let endpoint = vec![server.addr.to_string()];
    block_on(Dataplane::Kernel, async {
        let (alice, _alice_events, _) = start(&keys, test_config(1, endpoint.clone()));
        let (bob, mut bob_events, _) = start(&keys, test_config(2, endpoint));
        alice.wait_connected(WAIT).await.unwrap();
        bob.wait_connected(WAIT).await.unwrap();

        let alice_media = MediaClient::new(&base, keys.mint(1, "dev-1", HOUR).token).unwrap();
        let uploaded = alice_media.upload(&path, MediaKind::Image).await.unwrap();
        assert_eq!(uploaded.sha256, sha256(&original));
        assert_eq!(uploaded.size, original.len() as u64);
        assert_eq!(uploaded.mime, "image/png");
        assert_eq!((uploaded.width, uploaded.height), (Some(640), Some(480)));
        assert_eq!(uploaded.uri, format!("/v1/media/{}", uploaded.sha256));
        let thumb = base64::engine::general_purpose::STANDARD
            .decode(uploaded.thumbnail_base64.as_deref().unwrap())
            .unwrap();
        let thumb = image::load_from_memory_with_format(&thumb, image::ImageFormat::Jpeg).unwrap();
        assert_eq!((thumb.width(), thumb.height()), (160, 120));

        alice
            .send_image_ref(ConversationKey::single(2), &uploaded)
            .unwrap();
        let message = tokio::time::timeout(WAIT, async {
            loop {
                if let Some(Event::Message(m)) = bob_events.recv().await {
                    break m;
                }
            }
        })
        .await
        .expect("bob gets the image message");
        let Some(Body::Image(image)) = message.content.body else {
            panic!("not an image: {:?}", message.content)
        };
        assert_eq!((image.width, image.height), (640, 480));
        let media = image.media.unwrap();
        assert_eq!(media.uri, uploaded.uri);
        assert_eq!(media.mime_type, "image/png");
        assert_eq!(
            Some(media.thumbnail_base64.as_str()),
            uploaded.thumbnail_base64.as_deref()
        );
        assert_eq!(media.thumbnail_mime_type, "image/jpeg");

        let bob_media = MediaClient::new(&base, keys.mint(2, "dev-2", HOUR).token).unwrap();
        let bytes = bob_media.download(&media.uri).await.unwrap();
        assert_eq!(
            sha256(&bytes),
            sha256(&original),
            "bob gets the exact bytes"
        );
        let copy = dir.path().join("copy.png");
        let len = bob_media.download_to(&media.uri, &copy).await.unwrap();
        assert_eq!(len, original.len() as u64);
        assert_eq!(std::fs::read(&copy).unwrap(), original);
        alice.shutdown(false).await;
        bob.shutdown(false).await;
    });
}

#[test]
fn range_requests_answer_206_and_416() {
    let keys = Keys::generate();
    let server = media_server(&keys);
    let addr = media_addr(&server);
    let token = keys.mint(1, "d", HOUR).token;
    let bytes = noise(100_000, 1);
    let up = upload(addr, &token, "kind=file", &bytes);
    assert_eq!(up.status, 201, "{:?}", String::from_utf8_lossy(&up.body));
    let uri = up.json()["uri"].as_str().unwrap().to_owned();

    let r = get(addr, &token, &uri, &[("Range", "bytes=1000-1999")]);
    assert_eq!(r.status, 206);
    assert_eq!(r.header("content-range"), Some("bytes 1000-1999/100000"));
    assert_eq!(r.body, &bytes[1000..2000]);

    let r = get(addr, &token, &uri, &[("Range", "bytes=-100")]);
    assert_eq!(r.status, 206);
    assert_eq!(r.body, &bytes[99_900..]);

    let r = get(addr, &token, &uri, &[("Range", "bytes=99990-")]);
    assert_eq!(r.status, 206);
    assert_eq!(r.header("content-range"), Some("bytes 99990-99999/100000"));

    for bad in ["bytes=100000-", "bytes=200000-300000", "bytes=0-1,5-6"] {
        let r = get(addr, &token, &uri, &[("Range", bad)]);
        assert_eq!(r.status, 416, "{bad}");
        assert_eq!(r.header("content-range"), Some("bytes */100000"), "{bad}");
        assert_eq!(r.error_code(), "range_not_satisfiable");
    }

    let r = get(addr, &token, &uri, &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("accept-ranges"), Some("bytes"));
    assert_eq!(r.header("content-type"), Some("application/octet-stream"));
    assert_eq!(r.body, bytes);
}

#[test]
fn the_same_bytes_uploaded_twice_are_stored_once() {
    let keys = Keys::generate();
    let server = media_server(&keys);
    let addr = media_addr(&server);
    let bytes = noise(50_000, 2);
    let first = upload(addr, &keys.mint(1, "a", HOUR).token, "kind=file", &bytes);
    let second = upload(addr, &keys.mint(2, "b", HOUR).token, "kind=file", &bytes);
    assert_eq!(first.status, 201);
    assert_eq!(second.status, 200, "a duplicate adds nothing: 200, not 201");
    assert_eq!(first.json()["uri"], second.json()["uri"]);
    assert_eq!(first.json()["deduplicated"], false);
    assert_eq!(second.json()["deduplicated"], true);
    assert_eq!(first.json()["sha256"], sha256(&bytes));
    let stored = blobs(&server);
    assert_eq!(stored.len(), 1, "one file on disk: {stored:?}");
    assert_eq!(std::fs::read(&stored[0]).unwrap(), bytes);
    assert_eq!(tmp_files(&server), 0);
}

#[test]
fn large_files_go_in_resumable_chunks() {
    let keys = Arc::new(Keys::generate());
    let server = media_server(&keys);
    let addr = media_addr(&server);
    let base = format!("http://{addr}");

    // The SDK's own chunked path (over its 4 MiB single-request size).
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.bin");
    let bytes = noise(9 << 20, 3);
    std::fs::write(&big, &bytes).unwrap();
    block_on(Dataplane::Kernel, async {
        let media = MediaClient::new(&base, keys.mint(1, "d", HOUR).token).unwrap();
        let r = media.upload(&big, MediaKind::File).await.unwrap();
        assert_eq!(r.sha256, sha256(&bytes));
        assert_eq!(r.size, bytes.len() as u64);
        let copy = dir.path().join("copy.bin");
        assert_eq!(
            media.download_to(&r.uri, &copy).await.unwrap(),
            bytes.len() as u64
        );
        assert_eq!(sha256(&std::fs::read(&copy).unwrap()), r.sha256);
    });

    // A session by hand: wrong offsets, another user, a cut chunk, then done.
    let alice = keys.mint(1, "d", HOUR).token;
    let mallory = keys.mint(66, "m", HOUR).token;
    let (a, m) = (bearer(&alice), bearer(&mallory));
    let data = noise(300, 4);
    let created = send(
        addr,
        "POST",
        "/v1/uploads",
        &[(a.0, &a.1), ("Content-Type", "application/json")],
        br#"{"kind": "file", "size": 300, "name": "notes.bin"}"#,
        None,
    );
    assert_eq!(created.status, 201);
    let id = created.json()["upload_id"].as_str().unwrap().to_owned();
    let put =
        |token: &(&'static str, String), offset: u64, body: &[u8], declared: Option<usize>| {
            send(
                addr,
                "PUT",
                &format!("/v1/uploads/{id}?offset={offset}"),
                &[(token.0, &token.1)],
                body,
                declared,
            )
        };
    let r = put(&a, 0, &data[..100], None);
    assert_eq!((r.status, r.json()["offset"].as_u64()), (200, Some(100)));
    let r = put(&a, 0, &data[..100], None);
    assert_eq!(r.status, 409);
    assert_eq!(r.error_code(), "offset_mismatch");
    assert_eq!(r.json()["offset"], 100);
    for (method, path) in [
        ("GET", format!("/v1/uploads/{id}")),
        ("PUT", format!("/v1/uploads/{id}?offset=100")),
        ("POST", format!("/v1/uploads/{id}/complete")),
        ("DELETE", format!("/v1/uploads/{id}")),
    ] {
        let r = send(addr, method, &path, &[(m.0, &m.1)], b"", None);
        assert_eq!(r.status, 403, "another user's {method} {path}");
        assert_eq!(r.error_code(), "forbidden");
    }
    let r = send(
        addr,
        "POST",
        &format!("/v1/uploads/{id}/complete"),
        &[(a.0, &a.1)],
        b"",
        None,
    );
    assert_eq!((r.status, r.error_code()), (409, "incomplete".into()));
    // A chunk announcing 200 bytes that delivers 50: cut back to where it started.
    let r = put(&a, 100, &data[100..150], Some(200));
    assert!(
        r.status == 400 || r.status == 0,
        "a cut chunk is refused (or the connection dropped): {r:?}"
    );
    let status = get(addr, &alice, &format!("/v1/uploads/{id}"), &[]);
    assert_eq!(
        status.json()["offset"],
        100,
        "resume where the last whole chunk ended"
    );
    let r = put(&a, 100, &noise(201, 5), None);
    assert_eq!((r.status, r.error_code()), (413, "too_large".into()));
    let r = put(&a, 100, &data[100..], None);
    assert_eq!(r.json()["offset"], 300);
    let done = send(
        addr,
        "POST",
        &format!("/v1/uploads/{id}/complete"),
        &[(a.0, &a.1)],
        b"",
        None,
    );
    assert_eq!(done.status, 201);
    assert_eq!(done.json()["sha256"], sha256(&data));
    assert_eq!(done.json()["name"], "notes.bin");
    let r = get(addr, &alice, &format!("/v1/uploads/{id}"), &[]);
    assert_eq!(r.status, 404, "a completed session is gone");
    let uploads = std::fs::read_dir(server.data_dir().join("media/uploads"))
        .unwrap()
        .count();
    assert_eq!(uploads, 0);
    assert_eq!(tmp_files(&server), 0);
}

#[test]
fn bad_input_gets_clear_4xx_errors_and_leaves_nothing_behind() {
    let keys = Arc::new(Keys::generate());
    let server = media_server(&keys);
    let addr = media_addr(&server);
    let token = keys.mint(1, "d", HOUR).token;
    let dir = tempfile::tempdir().unwrap();
    let photo = png(&dir.path().join("p.png"), 64, 64);

    // Tokens.
    let r = send(addr, "POST", "/v1/media?kind=image", &[], &photo, None);
    assert_eq!((r.status, r.error_code()), (401, "unauthorized".into()));
    assert!(r.header("www-authenticate").is_some());
    let r = upload(addr, "not-a-token", "kind=image", &photo);
    assert_eq!(r.status, 401);
    let expired = keys.mint(1, "d", Duration::from_millis(1)).token;
    std::thread::sleep(Duration::from_millis(20));
    let r = upload(addr, &expired, "kind=image", &photo);
    assert_eq!(r.status, 401);
    assert!(r.json()["message"].as_str().unwrap().contains("expired"));
    let other_key = Keys::generate().mint(1, "d", HOUR).token;
    assert_eq!(upload(addr, &other_key, "kind=image", &photo).status, 401);

    // Size: announced over the limit, and an upload session declaring too much.
    let r = upload(
        addr,
        &token,
        "kind=image",
        &vec![0xff; IMAGE_MAX as usize + 1],
    );
    assert_eq!((r.status, r.error_code()), (413, "too_large".into()));
    let a = bearer(&token);
    let r = send(
        addr,
        "POST",
        "/v1/uploads",
        &[(a.0, &a.1), ("Content-Type", "application/json")],
        format!(r#"{{"kind": "image", "size": {}}}"#, IMAGE_MAX + 1).as_bytes(),
        None,
    );
    assert_eq!(r.status, 413);

    // MIME from the bytes: text claiming to be a PNG, a PNG as a voice message, and
    // bytes with a PNG signature that do not decode.
    let auth = bearer(&token);
    let r = send(
        addr,
        "POST",
        "/v1/media?kind=image",
        &[(auth.0, &auth.1), ("Content-Type", "image/png")],
        b"<html><script>alert(1)</script></html>",
        None,
    );
    assert_eq!(
        (r.status, r.error_code()),
        (415, "unsupported_media_type".into())
    );
    let r = upload(addr, &token, "kind=voice", &photo);
    assert_eq!(r.status, 415);
    let r = upload(
        addr,
        &token,
        "kind=image",
        b"\x89PNG\r\n\x1a\n\0\0\0\rIHDRbroken",
    );
    assert_eq!((r.status, r.error_code()), (422, "bad_image".into()));
    let r = upload(addr, &token, "kind=image", b"");
    assert_eq!((r.status, r.error_code()), (400, "empty".into()));
    let r = upload(addr, &token, "kind=sticker", &photo);
    assert_eq!((r.status, r.error_code()), (400, "bad_query".into()));

    // Truncated: 50,000 bytes announced, 1,000 sent, then the client hangs up.
    let r = send(
        addr,
        "POST",
        "/v1/media?kind=file",
        &[(auth.0, &auth.1)],
        &noise(1000, 6),
        Some(50_000),
    );
    assert!(r.status == 400 || r.status == 0, "truncated upload: {r:?}");
    if r.status == 400 {
        assert_eq!(r.error_code(), "truncated");
    }

    // Path tricks: names and ids never become paths.
    let r = upload(addr, &token, "kind=image&name=..%2F..%2Fkeys", &photo);
    assert_eq!((r.status, r.error_code()), (400, "bad_name".into()));
    for path in [
        "/v1/media/..%2F..%2Fkeys",
        "/v1/media/..",
        "/v1/media/KEYS",
        "/v1/uploads/..%2F..%2Fkeys",
    ] {
        let r = get(addr, &token, path, &[]);
        assert_eq!(r.status, 400, "{path}");
        assert!(!String::from_utf8_lossy(&r.body).contains("k1"), "{path}");
    }
    let r = get(addr, &token, "/v1/media/../../keys", &[]);
    assert!((400..500).contains(&r.status), "{r:?}");
    let r = get(addr, &token, &format!("/v1/media/{}", "0".repeat(64)), &[]);
    assert_eq!((r.status, r.error_code()), (404, "not_found".into()));

    // Nothing of any refused upload is on disk.
    let deadline = Instant::now() + Duration::from_secs(5);
    while tmp_files(&server) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(tmp_files(&server), 0, "no half-written upload left behind");
    assert!(blobs(&server).is_empty(), "{:?}", blobs(&server));

    // A revoked token (logout with revoke) is refused within the refresh interval.
    let revoked = keys.mint(7, "dev-7", HOUR);
    let revoked_text = revoked.token.clone();
    assert_eq!(
        upload(addr, &revoked_text, "kind=image", &photo).status,
        201
    );
    let endpoint = vec![server.addr.to_string()];
    block_on(Dataplane::Kernel, async {
        let provided = revoked.clone();
        let (client, _events) = petrel_sdk::Client::start(
            test_config(7, endpoint),
            token_fn(move || Ok(provided.clone())),
        )
        .unwrap();
        client.wait_connected(WAIT).await.unwrap();
        client.shutdown(true).await;
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = get(
            addr,
            &revoked_text,
            &format!("/v1/media/{}", sha256(&photo)),
            &[],
        );
        if r.status == 401 {
            assert!(r.json()["message"].as_str().unwrap().contains("revoked"));
            break;
        }
        assert_eq!(r.status, 200);
        assert!(Instant::now() < deadline, "the revoked token still works");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn petrel_chat_sends_an_image_with_send_image() {
    use std::io::{BufRead, BufReader, Write};
    use std::process::{Command, Stdio};

    let keys = Arc::new(Keys::generate());
    let server = media_server(&keys);
    let base = format!("http://{}", media_addr(&server));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cat.png");
    let original = png(&path, 300, 200);
    let (chat_user, sdk_user) = (12_001, 12_002);
    let endpoint = vec![server.addr.to_string()];
    block_on(Dataplane::Kernel, async {
        let (sdk, mut events, _) = start(&keys, test_config(sdk_user, endpoint));
        sdk.wait_connected(WAIT).await.unwrap();
        let token = keys.mint(chat_user, &format!("chat-{chat_user}"), HOUR);
        let mut chat = Command::new(env!("CARGO_BIN_EXE_petrel"))
            .args(["chat", "--user", &chat_user.to_string()])
            .args([
                "--server",
                &server.addr.to_string(),
                "--token",
                &token.token,
            ])
            .args(["--media", &base])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("run petrel chat");
        let mut stdin = chat.stdin.take().unwrap();
        let stdout = chat.stdout.take().unwrap();
        let (lines_tx, lines) = std::sync::mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = lines_tx.send(line);
            }
        });
        let wait_for = |needle: &str| {
            tokio::task::block_in_place(|| {
                loop {
                    let line = lines
                        .recv_timeout(WAIT)
                        .unwrap_or_else(|_| panic!("petrel chat never printed {needle:?}"));
                    if line.contains(needle) {
                        return line;
                    }
                }
            })
        };
        wait_for("* connected to");
        writeln!(stdin, "/to single:{sdk_user}").unwrap();
        writeln!(stdin, "/send-image {}", path.display()).unwrap();
        let line = wait_for("* uploaded");
        assert!(line.contains("300x200"), "{line}");
        let message = tokio::time::timeout(WAIT, async {
            loop {
                if let Some(Event::Message(m)) = events.recv().await {
                    break m;
                }
            }
        })
        .await
        .expect("the SDK client gets the picture");
        assert_eq!(message.sender, chat_user);
        let Some(Body::Image(image)) = message.content.body else {
            panic!("not an image: {:?}", message.content)
        };
        assert_eq!((image.width, image.height), (300, 200));
        let media = image.media.unwrap();
        assert!(!media.thumbnail_base64.is_empty());
        let client = MediaClient::new(&base, keys.mint(sdk_user, "d", HOUR).token).unwrap();
        assert_eq!(client.download(&media.uri).await.unwrap(), original);
        writeln!(stdin, "/quit").unwrap();
        let status = tokio::task::block_in_place(|| chat.wait()).unwrap();
        assert!(status.success(), "petrel chat exited with {status}");
        sdk.shutdown(false).await;
    });
}

fn python_media(base: &str, token: &str, args: &[&str]) -> String {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/python/petrel_media.py"
    );
    let out = std::process::Command::new("python3")
        .arg(script)
        .args(["--media", base, "--token", token])
        .args(args)
        .output()
        .expect("run python3 (the media example needs only the standard library)");
    assert!(
        out.status.success(),
        "petrel_media.py {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn the_python_example_and_the_rust_sdk_exchange_media() {
    let keys = Keys::generate();
    let server = media_server(&keys);
    let base = format!("http://{}", media_addr(&server));
    let token = keys.mint(1, "py", HOUR).token;
    let dir = tempfile::tempdir().unwrap();
    let photo = dir.path().join("photo.png");
    let photo_bytes = png(&photo, 200, 100);
    let blob = dir.path().join("blob.bin");
    let blob_bytes = noise(300_000, 9);
    std::fs::write(&blob, &blob_bytes).unwrap();

    let one = python_media(
        &base,
        &token,
        &["upload", photo.to_str().unwrap(), "--kind", "image"],
    );
    let one: serde_json::Value = serde_json::from_str(one.trim()).unwrap();
    assert_eq!(one["sha256"], sha256(&photo_bytes));
    assert_eq!(
        (one["width"].as_u64(), one["height"].as_u64()),
        (Some(200), Some(100))
    );
    assert!(
        one["thumbnail_base64"]
            .as_str()
            .is_some_and(|t| !t.is_empty())
    );
    // 100,000-byte chunks: a session of three PUTs.
    let chunked = python_media(
        &base,
        &token,
        &[
            "upload",
            blob.to_str().unwrap(),
            "--chunk",
            "100000",
            "--name",
            "blob.bin",
        ],
    );
    let chunked: serde_json::Value = serde_json::from_str(chunked.trim()).unwrap();
    assert_eq!(chunked["sha256"], sha256(&blob_bytes));
    assert_eq!(chunked["name"], "blob.bin");

    let sdk_upload = dir.path().join("sdk.bin");
    let sdk_bytes = noise(12_345, 10);
    std::fs::write(&sdk_upload, &sdk_bytes).unwrap();
    let sdk_uri = block_on(Dataplane::Kernel, async {
        let media = MediaClient::new(&base, keys.mint(2, "rs", HOUR).token).unwrap();
        for (answer, original) in [(&one, &photo_bytes), (&chunked, &blob_bytes)] {
            let got = media
                .download(answer["uri"].as_str().unwrap())
                .await
                .unwrap();
            assert_eq!(&got, original, "the SDK downloads what Python uploaded");
        }
        media
            .upload(&sdk_upload, MediaKind::File)
            .await
            .unwrap()
            .uri
    });
    let out = dir.path().join("from-sdk.bin");
    let said = python_media(
        &base,
        &token,
        &["download", &sdk_uri, "--out", out.to_str().unwrap()],
    );
    assert!(said.contains(&sha256(&sdk_bytes)), "{said}");
    assert_eq!(std::fs::read(&out).unwrap(), sdk_bytes);
}
