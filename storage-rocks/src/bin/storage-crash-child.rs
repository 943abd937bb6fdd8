//! Test helper for `tests/crash.rs`: appends forever through the group-commit queue and
//! prints one line per acknowledged append, `ack <conversation index> <seq> <client_msg_id>`,
//! until it is killed. Not part of the server.
//!
//! Usage: `storage-crash-child <db dir> <first client_msg_id>`

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use petrel_storage::{
    AppendRequest, CommitQueue, CommitQueueConfig, ConversationKey, Reply, Request, StorageConfig,
    UserId,
};
use petrel_storage_rocks::{RocksEngine, RocksEngineExt};

/// Conversations the child writes to; the test uses the same list.
fn conversations() -> [ConversationKey; 3] {
    [
        ConversationKey::single(UserId(1), UserId(2)),
        ConversationKey::single(UserId(3), UserId(1)),
        ConversationKey::single(UserId(2), UserId(3)),
    ]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(args.next().ok_or("missing db dir")?);
    let first: u64 = args.next().ok_or("missing first client_msg_id")?.parse()?;
    let engine = Arc::new(RocksEngine::open(&dir, StorageConfig::default())?);
    let queue = CommitQueue::start(engine, CommitQueueConfig::default())?;
    let (tx, rx) = crossbeam_channel::unbounded();
    let convs = conversations();
    let mut stdout = std::io::stdout().lock();
    let mut cmid = first;
    loop {
        // Keep 32 appends in flight so the writer forms real groups.
        for _ in 0..32 {
            let index = (cmid % convs.len() as u64) as usize;
            let conv = convs[index];
            let sender = match conv {
                ConversationKey::Single { lo, .. } => lo,
                _ => UserId(1),
            };
            let request = Request::Append(AppendRequest {
                sender,
                sender_device: "crash".into(),
                client_msg_id: cmid,
                conversation: conv,
                payload: Bytes::from(cmid.to_be_bytes().to_vec()),
                now_ms: 1_700_000_000_000 + cmid,
                refs: Default::default(),
            });
            queue.submit_to(request, cmid, tx.clone())?;
            cmid += 1;
        }
        for _ in 0..32 {
            let (ticket, reply) = rx.recv()?;
            match reply? {
                Reply::Appended(out) => {
                    let index = (ticket % convs.len() as u64) as usize;
                    writeln!(stdout, "ack {index} {} {ticket}", out.seq)?;
                }
                other => return Err(format!("unexpected reply {other:?}").into()),
            }
        }
        stdout.flush()?;
    }
}
