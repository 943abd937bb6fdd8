//! Control-plane routing throughput: 1:1 messages per second through `Control` with the
//! in-memory storage engine, everything on one thread.
//!
//! One iteration element is one message: the `SendMessage` frame event, the storage
//! append it emits (run on `MemEngine`), the completion event, the ack to the sender
//! and the push to the recipient's device. Run by the lead with `cargo bench -p
//! petrel-control --bench routing`; results go to docs/PERFORMANCE.md.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use petrel_control::token::{self, TokenSpec};
use petrel_control::{Action, Config, ConnId, Control, Event, KeyRing, RateLimit, Timestamp};
use petrel_proto::{Frame, pb};
use petrel_storage::{Engine, MemEngine, StorageConfig, SyncMode};

const USERS: u64 = 1_000;
const BATCH: u64 = 1_000;

struct Bench {
    now: Timestamp,
    control: Control,
    storage: MemEngine,
    conns: Vec<ConnId>,
    next_msg: u64,
}

impl Bench {
    fn drain(&mut self) -> u64 {
        let mut sent = 0;
        loop {
            let mut completions = Vec::new();
            while let Some(action) = self.control.poll_action() {
                match action {
                    Action::Send { bytes, .. } => {
                        // Written at once: no congestion, so no event goes back.
                        sent += 1;
                        black_box(bytes);
                    }
                    Action::Close { conn, .. } => {
                        self.control.handle(self.now, Event::Closed { conn });
                    }
                    Action::NoteCongestion { .. }
                    | Action::OfflineMessage(_)
                    | Action::ToCore { .. } => {}
                    Action::Storage { ticket, request } => {
                        completions.push((ticket, self.storage.execute(request)));
                    }
                }
            }
            if completions.is_empty() {
                return sent;
            }
            for (ticket, result) in completions {
                self.control
                    .handle(self.now, Event::Storage { ticket, result });
            }
        }
    }

    fn new() -> Bench {
        let keys = KeyRing::single("bench", &[7; 32]).expect("key");
        let now = Timestamp(1_764_000_000_000);
        let config = Config {
            rate_limit: RateLimit {
                burst: 0,
                per_second: 0,
            },
            ..Config::default()
        };
        let storage = MemEngine::new(StorageConfig {
            sync: SyncMode::None,
            ..StorageConfig::default()
        });
        let mut b = Bench {
            now,
            control: Control::new(config, keys.clone(), now),
            storage,
            conns: Vec::new(),
            next_msg: 0,
        };
        b.drain();
        for user in 1..=USERS {
            let conn = ConnId::new((user % 4) as u8, user);
            let token = token::mint(
                &keys,
                &TokenSpec {
                    user,
                    device: "d",
                    platform: pb::Platform::Ios,
                    issued_at: now,
                    ttl: Duration::from_secs(24 * 3600),
                    token_id: [user as u8; 16],
                },
            )
            .expect("mint")
            .token;
            b.control.handle(now, Event::Opened { conn });
            b.control.handle(
                now,
                Event::Frame {
                    conn,
                    frame: Frame::new(
                        1,
                        pb::Login {
                            token,
                            user_id: user,
                            device_id: "d".into(),
                            platform: pb::Platform::Ios as i32,
                            client_version: "bench".into(),
                            attempt: 0,
                        },
                    ),
                },
            );
            b.drain();
            b.conns.push(conn);
        }
        assert_eq!(b.control.session_count(), USERS);
        b
    }

    /// Sends one batch of 1:1 messages, user i to user i+1, and routes them fully.
    fn batch(&mut self) -> u64 {
        let mut sent = 0;
        for _ in 0..BATCH {
            self.next_msg += 1;
            let from = self.next_msg % USERS;
            let to = (from + 1) % USERS + 1;
            let conn = self.conns[from as usize];
            self.control.handle(
                self.now,
                Event::Frame {
                    conn,
                    frame: Frame::new(
                        2,
                        pb::SendMessage {
                            client_msg_id: self.next_msg,
                            conversation: Some(pb::ConversationId {
                                kind: pb::ConversationKind::Single as i32,
                                id: to,
                            }),
                            content: petrel_proto::wire::encode_content(&pb::Content {
                                body: Some(pb::content::Body::Text(pb::Text {
                                    text: "a short chat message of typical length".into(),
                                    mentions: Vec::new(),
                                })),
                            }),
                            ..Default::default()
                        },
                    ),
                },
            );
            sent += self.drain();
        }
        sent
    }
}

fn routing(c: &mut Criterion) {
    let mut bench = Bench::new();
    let mut group = c.benchmark_group("control_routing");
    group.throughput(Throughput::Elements(BATCH));
    group.bench_function("one_to_one_mem_engine", |b| {
        b.iter(|| black_box(bench.batch()));
    });
    group.finish();
}

criterion_group!(benches, routing);
criterion_main!(benches);
