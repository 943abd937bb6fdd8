//! The media service with its blobs in an S3-compatible bucket (`[media.s3]`), against
//! moto's S3 server (PyPI `moto[server]`, installed by scripts/setup.sh) on loopback:
//!
//! - an image and a 9 MiB file (a multipart upload) go to the bucket and come back byte
//!   exact, with the same answers as from disk: range requests (206, 416), duplicate
//!   uploads stored once, nothing left in the data directory but the upload staging;
//! - a bucket that does not exist stops `petrel serve` at start with the store's reason.

#[allow(unused_imports)] // common re-exports TestClient, which these tests do not use
#[macro_use]
mod common;
#[allow(dead_code)] // its SDK-client helpers serve other suites; this one mints tokens
#[path = "common/sdk_keys.rs"]
mod sdk_keys;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::TestServer;
use common::http::send;
use common::media::{get, noise, sha256, upload};
use sdk_keys::Keys;

const HOUR: Duration = Duration::from_secs(3600);
const BUCKET: &str = "petrel-media-test";

/// moto's S3 server on a free loopback port, killed when dropped.
struct Moto {
    child: Child,
    addr: SocketAddr,
}

impl Moto {
    fn start() -> Moto {
        let addr = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port");
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &addr.port().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server is needed (pip install 'moto[server]'; scripts/setup.sh does)");
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "moto_server did not listen on {addr}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Moto { child, addr }
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Creates a bucket (moto takes unsigned requests).
    fn create_bucket(&self, name: &str) {
        let r = send(self.addr, "PUT", &format!("/{name}"), &[], b"", None);
        assert_eq!(
            r.status,
            200,
            "create bucket: {}",
            String::from_utf8_lossy(&r.body)
        );
    }

    /// The keys in `bucket`, from a ListObjectsV2 answer.
    fn keys(&self, bucket: &str) -> Vec<String> {
        let r = send(
            self.addr,
            "GET",
            &format!("/{bucket}?list-type=2"),
            &[],
            b"",
            None,
        );
        assert_eq!(r.status, 200);
        let xml = String::from_utf8_lossy(&r.body).into_owned();
        xml.split("<Key>")
            .skip(1)
            .filter_map(|rest| rest.split_once("</Key>").map(|(k, _)| k.to_owned()))
            .collect()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `[media]` tables for a bucket at `endpoint`, with static credentials from a file.
fn media_config(endpoint: &str, bucket: &str, secret_file: &std::path::Path) -> String {
    format!(
        "[media]\naddr = \"127.0.0.1:0\"\n[media.image]\nmax_bytes = 262144\n\
         [media.file]\nmax_bytes = 16777216\n[media.s3]\nbucket = \"{bucket}\"\n\
         endpoint = \"{endpoint}\"\nprefix = \"petrel\"\naccess_key_id = \"testing\"\n\
         secret_access_key_file = {:?}\n",
        secret_file.display().to_string()
    )
}

#[test]
fn blobs_in_a_bucket_upload_dedup_and_download_like_on_disk() {
    let moto = Moto::start();
    moto.create_bucket(BUCKET);
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("s3-secret");
    std::fs::write(&secret, "testing\n").unwrap();
    let keys = Keys::generate();
    let server = TestServer::start(&format!(
        "{}{}",
        keys.server_config(),
        media_config(&moto.endpoint(), BUCKET, &secret)
    ));
    let addr = server.media.expect("the server printed its media address");
    let token = keys.mint(1, "d", HOUR).token;

    // An image: probed (dimensions, thumbnail) and stored in the bucket.
    let png_path = dir.path().join("a.png");
    image::RgbImage::from_fn(64, 48, |x, y| image::Rgb([x as u8, y as u8, 7]))
        .save_with_format(&png_path, image::ImageFormat::Png)
        .unwrap();
    let png = std::fs::read(&png_path).unwrap();
    let up = upload(addr, &token, "kind=image", &png);
    assert_eq!(up.status, 201, "{}", String::from_utf8_lossy(&up.body));
    let answer = up.json();
    assert_eq!(
        (answer["width"].as_u64(), answer["height"].as_u64()),
        (Some(64), Some(48))
    );
    assert!(
        answer["thumbnail_base64"]
            .as_str()
            .is_some_and(|t| !t.is_empty())
    );
    assert_eq!(answer["deduplicated"], false);
    let uri = answer["uri"].as_str().unwrap().to_owned();
    let r = get(addr, &token, &uri, &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("image/png"));
    assert_eq!(sha256(&r.body), sha256(&png));

    // The same bytes again: stored once.
    let again = upload(addr, &token, "kind=image", &png);
    assert_eq!(again.status, 200, "a duplicate adds nothing: 200, not 201");
    assert_eq!(again.json()["deduplicated"], true);

    // 9 MiB: more than one 8 MiB part, so a multipart upload to the bucket.
    let big = noise(9 << 20, 3);
    let up = upload(addr, &token, "kind=file", &big);
    assert_eq!(up.status, 201, "{}", String::from_utf8_lossy(&up.body));
    let big_uri = up.json()["uri"].as_str().unwrap().to_owned();
    let r = get(addr, &token, &big_uri, &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("accept-ranges"), Some("bytes"));
    assert_eq!(r.body.len(), big.len());
    assert_eq!(sha256(&r.body), sha256(&big));

    // Ranges, answered from the bucket as from disk.
    let size = big.len();
    let r = get(addr, &token, &big_uri, &[("Range", "bytes=1000-1999")]);
    assert_eq!(r.status, 206);
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes 1000-1999/{size}").as_str())
    );
    assert_eq!(r.body, &big[1000..2000]);
    let r = get(addr, &token, &big_uri, &[("Range", "bytes=-100")]);
    assert_eq!((r.status, r.body.as_slice()), (206, &big[size - 100..]));
    for bad in [format!("bytes={size}-"), "bytes=0-1,5-6".to_owned()] {
        let r = get(addr, &token, &big_uri, &[("Range", bad.as_str())]);
        assert_eq!(r.status, 416, "{bad}");
        assert_eq!(
            r.header("content-range"),
            Some(format!("bytes */{size}").as_str()),
            "{bad}"
        );
    }
    let missing = get(addr, &token, &format!("/v1/media/{}", "0".repeat(64)), &[]);
    assert_eq!(missing.status, 404);

    // In the bucket: two blobs and their sidecars under the prefix; on disk: no blob.
    let mut stored = moto.keys(BUCKET);
    stored.sort();
    let mut expected = Vec::new();
    for sha in [sha256(&png), sha256(&big)] {
        expected.push(format!("petrel/blobs/{sha}"));
        expected.push(format!("petrel/blobs/{sha}.json"));
    }
    expected.sort();
    assert_eq!(stored, expected);
    let local = server.data_dir().join("media/blobs");
    let on_disk = walk(&local);
    assert!(on_disk.is_empty(), "blobs left on disk: {on_disk:?}");
    assert_eq!(
        std::fs::read_dir(server.data_dir().join("media/tmp"))
            .unwrap()
            .count(),
        0,
        "no temporary file left"
    );
}

/// Every file under `dir` (none if it does not exist).
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        if e.path().is_dir() {
            out.extend(walk(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}

#[test]
fn a_missing_bucket_stops_the_server_at_start_with_the_reason() {
    let moto = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("s3-secret");
    std::fs::write(&secret, "testing\n").unwrap();
    let keys = Keys::generate();
    let config = dir.path().join("petrel.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\nlisten = [\"127.0.0.1:0\"]\n{}{}",
            dir.path().join("data").display().to_string(),
            keys.server_config(),
            media_config(&moto.endpoint(), "no-such-bucket", &secret)
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_petrel"))
        .args(["serve", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run petrel serve");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("petrel serve kept running with a missing bucket");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains("no-such-bucket") && stderr.contains("not usable"),
        "the reason names the bucket: {stderr}"
    );
}
