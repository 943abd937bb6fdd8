//! A recalled message's content, and an edited message's previous version, are gone from
//! the database files after the scrubber ran — not only hidden from readers: no SST,
//! write-ahead log or manifest file holds the bytes any more.

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use petrel_storage::{AppendRequest, ConversationKey, Engine, StorageConfig, UserId};
use petrel_storage_rocks::{RocksEngine, RocksEngineExt};

const T0: u64 = 1_700_000_000_000;
const WINDOW: u64 = 3_600_000;

/// Files under `dir` whose bytes contain `needle`.
fn files_holding(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(files_holding(&path, needle));
        } else if let Ok(bytes) = std::fs::read(&path)
            && bytes.windows(needle.len()).any(|w| w == needle)
        {
            found.push(path.display().to_string());
        }
    }
    found
}

/// Waits (RocksDB deletes obsolete files in the background) until no file holds
/// `needle`; returns the files that still do after 10 s.
fn until_gone(dir: &Path, needle: &[u8]) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = files_holding(dir, needle);
        if left.is_empty() || Instant::now() > deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn recalled_and_edited_away_content_leaves_the_files() {
    let dir = tempfile::tempdir().unwrap();
    let engine = RocksEngine::open(dir.path(), StorageConfig::default()).unwrap();
    let (a, b) = (UserId(1), UserId(2));
    let conv = ConversationKey::single(a, b);
    let send = |cmid: u64, text: &str| {
        engine
            .append(AppendRequest {
                sender: a,
                sender_device: "phone".into(),
                client_msg_id: cmid,
                conversation: conv,
                payload: Bytes::from(text.to_owned()),
                now_ms: T0,
                refs: Default::default(),
            })
            .unwrap()
    };
    send(1, "RECALL-ME-7f3a9c");
    send(2, "EDIT-ME-41d0be");
    send(3, "KEEP-ME-99e2a1");
    // Some writes to other column families, so the logs hold more than messages.
    engine.mark_read(b, conv, 3).unwrap();
    for marker in ["RECALL-ME-7f3a9c", "EDIT-ME-41d0be"] {
        assert!(
            !files_holding(dir.path(), marker.as_bytes()).is_empty(),
            "the check sees {marker} on disk before the scrub (or it would prove nothing)"
        );
    }

    engine.recall(a, conv, 1, WINDOW, T0 + 1).unwrap();
    engine
        .edit(
            a,
            conv,
            2,
            Bytes::from_static(b"EDITED-5c8e"),
            WINDOW,
            T0 + 2,
        )
        .unwrap();
    // Readers never see the old bytes, from the moment of the write.
    let history = engine.history(b, conv, u64::MAX, 10).unwrap().messages;
    assert!(
        history
            .iter()
            .all(|m| &m.payload[..] != b"RECALL-ME-7f3a9c")
    );
    assert_eq!(engine.scrub().unwrap(), 2, "two keys purged");

    for marker in ["RECALL-ME-7f3a9c", "EDIT-ME-41d0be"] {
        let left = until_gone(dir.path(), marker.as_bytes());
        assert!(left.is_empty(), "{marker} is still in {left:?}");
    }
    // What was not recalled or replaced is still there, on disk and to readers.
    assert!(!files_holding(dir.path(), b"KEEP-ME-99e2a1").is_empty());
    assert!(!files_holding(dir.path(), b"EDITED-5c8e").is_empty());
    let history = engine.history(b, conv, u64::MAX, 10).unwrap().messages;
    let texts: Vec<&[u8]> = history.iter().map(|m| &m.payload[..]).collect();
    assert_eq!(texts, [&b""[..], b"EDITED-5c8e", b"KEEP-ME-99e2a1"]);
    // Nothing queued any more: the next scrub has nothing to do.
    assert_eq!(engine.scrub().unwrap(), 0);
    // And the database reopens with the same answers.
    drop(engine);
    let engine = RocksEngine::open(dir.path(), StorageConfig::default()).unwrap();
    assert_eq!(
        engine
            .history(b, conv, u64::MAX, 10)
            .unwrap()
            .messages
            .len(),
        3
    );
}
