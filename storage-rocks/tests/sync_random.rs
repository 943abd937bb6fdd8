//! Randomised sync check: random appends, activity changes, joins, new devices and
//! partial syncs (devices that stop mid-paging) under every diffusion mode. Every sync
//! must deliver, per conversation, ascending seqs with no gap after the device's cursor;
//! at the end every device must hold every message of every conversation its user
//! belongs to. Deterministic by seed.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use petrel_storage::config::DAY_MS;
use petrel_storage::{
    AppendRequest, ConversationKey, DiffusionMode, Engine, InboxCursor, MemEngine, Role,
    StorageConfig, SyncMode, SyncRequest, UserId,
};
use petrel_storage_rocks::{RocksEngine, RocksEngineExt};

/// splitmix64: a tiny deterministic generator, enough for choosing test actions.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

struct Device {
    user: UserId,
    inbox: InboxCursor,
    cursors: BTreeMap<ConversationKey, u64>,
}

impl Device {
    fn new(user: UserId) -> Self {
        Device {
            user,
            inbox: InboxCursor::default(),
            cursors: BTreeMap::new(),
        }
    }

    /// One sync page; returns has_more.
    fn page(&mut self, e: &impl Engine, limit: usize, now_ms: u64) -> bool {
        let page = e
            .sync(&SyncRequest {
                user: self.user,
                inbox: self.inbox.clone(),
                cursors: self.cursors.iter().map(|(c, s)| (*c, *s)).collect(),
                limit,
                now_ms,
            })
            .expect("sync");
        assert!(page.messages.len() <= limit);
        for m in &page.messages {
            let cur = self.cursors.entry(m.conversation).or_insert(0);
            assert_eq!(
                m.seq,
                *cur + 1,
                "user {:?}: gap or duplicate in {:?}",
                self.user,
                m.conversation
            );
            *cur = m.seq;
        }
        self.inbox = page.inbox;
        page.has_more
    }

    fn sync_all(&mut self, e: &impl Engine, limit: usize, now_ms: u64) {
        for _ in 0..100_000 {
            if !self.page(e, limit, now_ms) {
                return;
            }
        }
        panic!("sync never finished");
    }
}

const USERS: u64 = 8;

fn run<E: Engine>(e: &E, seed: u64, steps: usize) {
    let mut rng = Rng(seed);
    let mut now = 1_700_000_000_000u64;
    let mut convs: Vec<ConversationKey> = Vec::new();
    for a in 1..=4 {
        for b in (a + 1)..=5 {
            convs.push(ConversationKey::single(UserId(a), UserId(b)));
        }
    }
    for owner in 1..=3 {
        let members: Vec<UserId> = (1..=USERS)
            .filter(|_| rng.below(2) == 0)
            .map(UserId)
            .collect();
        convs.push(e.create_group(UserId(owner), "g", &members, now).unwrap());
    }
    let public = e.create_public_account(UserId(6), "p", now).unwrap();
    convs.push(public);
    let public_id = match public {
        ConversationKey::PublicAccount(id) => id,
        _ => unreachable!("created a public account"),
    };
    let mut devices: Vec<Device> = (1..=USERS)
        .flat_map(|u| [Device::new(UserId(u)), Device::new(UserId(u))])
        .collect();
    let mut cmid = 0u64;
    for _ in 0..steps {
        now += rng.below(3 * DAY_MS / 2);
        match rng.below(10) {
            0..=4 => {
                let conv = convs[rng.below(convs.len() as u64) as usize];
                let members = e.members(conv).unwrap();
                let sender = match conv {
                    ConversationKey::PublicAccount(_) => {
                        members
                            .iter()
                            .find(|m| m.role == Role::Owner)
                            .expect("owner")
                            .user
                    }
                    _ => members[rng.below(members.len() as u64) as usize].user,
                };
                cmid += 1;
                e.append(AppendRequest {
                    sender,
                    sender_device: "r".into(),
                    client_msg_id: cmid,
                    conversation: conv,
                    payload: Bytes::from(cmid.to_be_bytes().to_vec()),
                    now_ms: now,
                    refs: Default::default(),
                })
                .unwrap();
            }
            5 => {
                e.touch_activity(UserId(1 + rng.below(USERS)), now).unwrap();
            }
            6 => {
                // Join: a group owner adds someone, or someone follows the account.
                let user = UserId(1 + rng.below(USERS));
                if rng.below(2) == 0 {
                    let gi = rng.below(3);
                    e.add_members(UserId(1 + gi), 1 + gi, &[user], now).unwrap();
                } else {
                    e.follow(user, public_id, now).unwrap();
                }
            }
            7 => {
                // A device is replaced by a new one.
                let d = rng.below(devices.len() as u64) as usize;
                devices[d] = Device::new(devices[d].user);
            }
            _ => {
                // A device syncs one page, or to the end.
                let d = rng.below(devices.len() as u64) as usize;
                let limit = 1 + rng.below(7) as usize;
                if rng.below(2) == 0 {
                    devices[d].page(e, limit, now);
                } else {
                    devices[d].sync_all(e, limit, now);
                }
            }
        }
    }
    // Everyone catches up; each device must now hold every message of every
    // conversation its user belongs to.
    let mut last: BTreeMap<ConversationKey, u64> = BTreeMap::new();
    for c in &convs {
        let who = e.members(*c).unwrap()[0].user;
        let newest = e.history(who, *c, u64::MAX, 1).unwrap();
        last.insert(*c, newest.messages.first().map_or(0, |m| m.seq));
    }
    for d in &mut devices {
        d.sync_all(e, 5, now);
        let mine: BTreeSet<ConversationKey> =
            e.conversations_of(d.user).unwrap().into_iter().collect();
        for c in &convs {
            let want = if mine.contains(c) { last[c] } else { 0 };
            let got = d.cursors.get(c).copied().unwrap_or(0);
            assert_eq!(got, want, "seed {seed}: user {:?} in {c:?}", d.user);
        }
    }
}

fn config(diffusion: DiffusionMode, partitions: u16) -> StorageConfig {
    StorageConfig {
        diffusion,
        sync: SyncMode::None,
        large_group_threshold: 4,
        partitions,
        ..StorageConfig::default()
    }
}

/// One partition (a database from before partitions: one inbox sequence per user), a
/// few (a user's conversations often share one), and the default.
const PARTITIONS: [u16; 3] = [1, 3, 16];

const MODES: [DiffusionMode; 3] = [
    DiffusionMode::Read,
    DiffusionMode::Write,
    DiffusionMode::Hybrid,
];

#[test]
fn random_histories_in_memory() {
    for mode in MODES {
        for partitions in PARTITIONS {
            for seed in 0..40 {
                run(&MemEngine::new(config(mode, partitions)), seed, 400);
            }
        }
    }
}

#[test]
fn random_histories_rocksdb() {
    for mode in MODES {
        for (seed, partitions) in (100..).zip(PARTITIONS) {
            let dir = tempfile::tempdir().expect("tempdir");
            let e = RocksEngine::open(dir.path(), config(mode, partitions)).expect("open");
            run(&e, seed, 300);
        }
    }
}
