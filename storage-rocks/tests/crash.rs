//! Crash test: a child process appends through the group-commit queue and prints every
//! acknowledged append; we SIGKILL it mid-stream, reopen the database and check that every
//! acknowledged append is there with its seq, timelines have no gap, retries are
//! duplicates, and new appends continue at last + 1. Several iterations, same database.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use bytes::Bytes;
use petrel_storage::{AppendRequest, ConversationKey, Engine, StorageConfig, UserId};
use petrel_storage_rocks::{RocksEngine, RocksEngineExt};

fn conversations() -> [ConversationKey; 3] {
    [
        ConversationKey::single(UserId(1), UserId(2)),
        ConversationKey::single(UserId(3), UserId(1)),
        ConversationKey::single(UserId(2), UserId(3)),
    ]
}

/// (conversation index, seq, client_msg_id) per acknowledged append.
fn run_child_and_kill(
    dir: &std::path::Path,
    first_cmid: u64,
    kill_after: usize,
) -> Vec<(usize, u64, u64)> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_storage-crash-child"))
        .arg(dir)
        .arg(first_cmid.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().expect("child stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut acks = Vec::new();
    let parse = |line: &str| -> (usize, u64, u64) {
        let f: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(f.len(), 4, "bad line {line:?}");
        assert_eq!(f[0], "ack");
        (
            f[1].parse().unwrap(),
            f[2].parse().unwrap(),
            f[3].parse().unwrap(),
        )
    };
    while acks.len() < kill_after {
        match lines.next() {
            Some(Ok(line)) => acks.push(parse(&line)),
            other => panic!("child stopped early: {other:?}"),
        }
    }
    // SIGKILL mid-stream: the child is busy appending with requests in flight.
    child.kill().expect("kill child");
    // Acks already written to the pipe before the kill are acks too.
    for line in lines {
        match line {
            Ok(l) if l.split_whitespace().count() == 4 => acks.push(parse(&l)),
            _ => break, // a torn last line was never a complete ack
        }
    }
    child.wait().expect("reap child");
    acks
}

#[test]
fn acknowledged_appends_survive_sigkill() {
    let dir = tempfile::tempdir().expect("tempdir");
    let convs = conversations();
    let mut all_acked: BTreeMap<(usize, u64), u64> = BTreeMap::new();
    let mut cmid_base = 1u64;
    for iteration in 0..4usize {
        let kill_after = 150 + 97 * iteration;
        let acks = run_child_and_kill(dir.path(), cmid_base, kill_after);
        assert!(acks.len() >= kill_after);
        for &(index, seq, cmid) in &acks {
            let previous = all_acked.insert((index, seq), cmid);
            assert_eq!(
                previous, None,
                "seq {seq} of conversation {index} acked twice"
            );
        }
        cmid_base += 1_000_000;

        let engine = RocksEngine::open(dir.path(), StorageConfig::default()).expect("reopen");
        for (index, conv) in convs.iter().enumerate() {
            let reader = match conv {
                ConversationKey::Single { lo, .. } => *lo,
                _ => UserId(1),
            };
            // Whole timeline, gap-free from 1.
            let mut timeline = Vec::new();
            let mut before = u64::MAX;
            loop {
                let page = engine
                    .history(reader, *conv, before, 1000)
                    .expect("history")
                    .messages;
                let Some(first) = page.first() else { break };
                before = first.seq;
                timeline.splice(0..0, page);
            }
            for (i, m) in timeline.iter().enumerate() {
                assert_eq!(m.seq, i as u64 + 1, "gap in conversation {index}");
            }
            // Every acknowledged append is there, with the seq it was acknowledged with.
            for (&(_, seq), &cmid) in all_acked.range((index, 0)..=(index, u64::MAX)) {
                let m = timeline
                    .get((seq - 1) as usize)
                    .unwrap_or_else(|| panic!("acked seq {seq} of conversation {index} lost"));
                assert_eq!(m.client_msg_id, cmid);
                assert_eq!(m.payload, Bytes::from(cmid.to_be_bytes().to_vec()));
            }
            // A retried acked message is a duplicate with its original seq.
            if let Some((&(_, seq), &cmid)) =
                all_acked.range((index, 0)..=(index, u64::MAX)).next_back()
            {
                let retry = engine
                    .append(AppendRequest {
                        sender: reader,
                        sender_device: "crash".into(),
                        client_msg_id: cmid,
                        conversation: *conv,
                        payload: Bytes::new(),
                        now_ms: 1_700_000_000_000 + cmid + 1,
                        refs: Default::default(),
                    })
                    .expect("retry");
                assert!(retry.duplicate);
                assert_eq!(retry.seq, seq);
            }
            // New appends continue right after the last stored seq: no gap, no reuse.
            let last = timeline.last().map_or(0, |m| m.seq);
            let cmid = cmid_base - 1 - index as u64;
            let next = engine
                .append(AppendRequest {
                    sender: reader,
                    sender_device: "parent".into(),
                    client_msg_id: cmid,
                    conversation: *conv,
                    payload: Bytes::from(cmid.to_be_bytes().to_vec()),
                    now_ms: 1_700_000_000_000,
                    refs: Default::default(),
                })
                .expect("append after crash");
            assert!(!next.duplicate);
            assert_eq!(next.seq, last + 1);
            all_acked.insert((index, next.seq), cmid);
        }
    }
}

#[test]
fn checkpoint_opens_as_a_consistent_copy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = RocksEngine::open(&dir.path().join("db"), StorageConfig::default()).expect("open");
    let conv = ConversationKey::single(UserId(1), UserId(2));
    for cmid in 0..10u64 {
        engine
            .append(AppendRequest {
                sender: UserId(1),
                sender_device: "d".into(),
                client_msg_id: cmid,
                conversation: conv,
                payload: Bytes::from_static(b"x"),
                now_ms: 1,
                refs: Default::default(),
            })
            .expect("append");
    }
    let copy = dir.path().join("checkpoint");
    engine.checkpoint(&copy).expect("checkpoint");
    // Writes after the checkpoint are not in it.
    engine
        .append(AppendRequest {
            sender: UserId(2),
            sender_device: "d".into(),
            client_msg_id: 99,
            conversation: conv,
            payload: Bytes::from_static(b"later"),
            now_ms: 2,
            refs: Default::default(),
        })
        .expect("append");
    let restored = RocksEngine::open(&copy, StorageConfig::default()).expect("open checkpoint");
    let hist = restored
        .history(UserId(2), conv, u64::MAX, 100)
        .expect("history")
        .messages;
    assert_eq!(hist.len(), 10);
    assert_eq!(hist.last().map(|m| m.seq), Some(10));
    assert!(
        engine.checkpoint(&copy).is_err(),
        "existing directory is refused"
    );
}
