//! `petrel admin backup DIR`: through the running server's admin socket, and directly on
//! the database when no server runs; each checkpoint restores into a working server.

#[allow(unused_imports)] // common re-exports what other test files use
mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::client::{single, text_of};
use common::{Dataplane, TestClient, TestServer, petrel};

fn backup(data_dir: &Path, dir: &Path) -> std::process::Output {
    petrel(&[
        "admin",
        "backup",
        dir.to_str().unwrap(),
        "--data-dir",
        data_dir.to_str().unwrap(),
    ])
}

/// Starts a server on a copy of `checkpoint` and returns what user `user` syncs.
fn restored_history(checkpoint: &Path, keys: &Path, user: u64) -> Vec<String> {
    let restore = tempfile::tempdir().unwrap();
    std::fs::rename(checkpoint, restore.path().join("db")).unwrap();
    std::fs::copy(keys, restore.path().join("keys")).unwrap();
    let mut server = TestServer::start_in(Dataplane::Kernel, restore.path(), "");
    let mut c = TestClient::login(
        server.addr,
        &server.token(user, "restored"),
        user,
        "restored",
    );
    let texts = c.sync_all().iter().map(|m| text_of(m).to_owned()).collect();
    drop(c);
    server.stop();
    texts
}

#[test]
fn backup_while_running_and_while_stopped() {
    let data = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let mut server = TestServer::start_in(Dataplane::Kernel, data.path(), "");
    let socket = data.path().join("admin.sock");
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "admin socket mode {mode:o}");

    let (alice, bob) = (11, 22);
    let mut a = TestClient::login(server.addr, &server.token(alice, "a"), alice, "a");
    for (i, text) in ["one", "two", "three"].iter().enumerate() {
        a.send_text(single(bob), i as u64 + 1, text);
    }

    // Running: the server holds the DB lock, so the checkpoint goes through the socket.
    let live = out.path().join("live");
    let o = backup(data.path(), &live);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(stdout.contains("by the running server"), "{stdout}");
    assert!(live.join("CURRENT").exists());

    // A second backup into the same directory is refused before anything is written.
    let again = backup(data.path(), &live);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));

    a.send_text(single(bob), 4, "four");
    drop(a);
    server.stop();
    assert!(!socket.exists(), "the socket is removed at shutdown");

    // Stopped: the database is opened directly.
    let offline = out.path().join("offline");
    let o = backup(data.path(), &offline);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(stdout.contains("opened the database directly"), "{stdout}");

    // A stale socket file (a killed server) does not stop an offline backup.
    std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let stale = out.path().join("stale");
    let o = backup(data.path(), &stale);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("opened the database directly"));
    std::fs::remove_file(&socket).unwrap();

    let keys = data.path().join("keys");
    assert_eq!(restored_history(&live, &keys, bob), ["one", "two", "three"]);
    assert_eq!(
        restored_history(&offline, &keys, bob),
        ["one", "two", "three", "four"]
    );
}
