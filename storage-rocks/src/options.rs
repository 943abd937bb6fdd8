//! RocksDB options chosen for Petrel's workload: append-mostly timelines and inboxes read
//! by short range scans from a cursor, point lookups that mostly miss (dedup), and small
//! hot tables (members, cursors). Each choice carries a one-line reason.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rocksdb::compaction_filter::Decision;
use rocksdb::{BlockBasedOptions, Cache, DBCompressionType, Options, SliceTransform};

use petrel_storage::cf::Cf;
use petrel_storage::keys::{self, CONV_LEN};
use petrel_storage::values::DedupEntry;
use petrel_storage::{StorageConfig, SyncMode};

/// Block cache shared by every column family (one budget for the process).
pub const BLOCK_CACHE_BYTES: usize = 256 << 20;

/// Length of the prefix each column family's scans stay within, if it has one.
pub fn prefix_len(cf: Cf) -> Option<usize> {
    match cf {
        // Timelines and member lists are scanned within one conversation.
        Cf::Messages | Cf::Members | Cf::Mutes => Some(CONV_LEN),
        // Inboxes, reverse memberships and cursors are scanned within one user.
        Cf::Inbox | Cf::UserConversations | Cf::Cursors => Some(8),
        // Unread mentions are counted within one user's conversation.
        Cf::Mentions => Some(8 + CONV_LEN),
        Cf::Dedup | Cf::Activity | Cf::Revoked | Cf::Conversations | Cf::Meta | Cf::ReplicaLog => {
            None
        }
    }
}

/// Length of the key prefix after which a column family's new keys usually land right
/// behind the previous key with that prefix, if there is one: a conversation's next
/// message (`conversation|seq`), a user's next inbox entry (`user|…`), a sender's next
/// client id in one conversation (`sender|conversation|id`, for senders whose ids rise).
pub fn insert_hint_len(cf: Cf) -> Option<usize> {
    match cf {
        Cf::Messages => Some(CONV_LEN),
        Cf::Inbox => Some(8),
        Cf::Dedup => Some(8 + CONV_LEN),
        _ => None,
    }
}

/// Database-wide options.
pub fn db_options(config: &StorageConfig) -> Options {
    let mut o = Options::default();
    o.create_if_missing(true);
    o.create_missing_column_families(true);
    // Two cores: one flush and one compaction thread keep up without starving the writer.
    o.increase_parallelism(2);
    // Bound the WAL so cold column families (revoked, meta) get flushed and old logs
    // deleted; also bounds recovery time after a crash.
    o.set_max_total_wal_size(256 << 20);
    // Let the OS write the WAL back incrementally, so a group-commit fsync finds little
    // dirty data and stays short.
    o.set_wal_bytes_per_sync(1 << 20);
    // Batch mode: buffer WAL records in RocksDB until the group's FlushWAL(sync), so a
    // group costs one write(2) + one fsync instead of a write(2) per append; nothing is
    // acknowledged before that flush, so a crash loses only unacknowledged writes.
    // Other modes: flush each write to the OS as it happens, so even `SyncMode::None`
    // survives a process crash (only power loss can lose data).
    o.set_manual_wal_flush(config.sync == SyncMode::Batch);
    o
}

/// Per-column-family options.
///
/// `clock` is the engine's latest request time ([`petrel_storage::Store::clock`]): the expiry
/// filters judge entries by it rather than by a wall clock, so they agree with the dedup
/// window the engine applies to requests; before the first request it is 0 and nothing
/// expires.
pub fn cf_options(
    cf: Cf,
    cache: &Cache,
    config: &StorageConfig,
    clock: &Arc<AtomicU64>,
) -> Result<Options, rocksdb::Error> {
    let mut o = match insert_hint_len(cf) {
        // Insert hints: the memtable remembers, per key prefix, where its last insert
        // went and starts the next skip-list search there instead of at the top (the
        // search was ≈ 27 % of a flat-out 1:1 message's server CPU). RocksDB uses them
        // for writes that are not applied concurrently, which is every write of a
        // one-core server and every write group of one. Neither RocksDB's C API nor the
        // `rocksdb` crate has a setter; the option string is RocksDB's own, documented
        // way to set any option, so no C++ shim is needed. It is applied to a fresh
        // `Options` first, because the options it returns do not carry the Rust-side
        // objects (filters, caches) set on the base.
        Some(len) => Options::default().get_options_from_string(format!(
            "memtable_insert_with_hint_prefix_extractor=rocksdb.FixedPrefix.{len}"
        ))?,
        None => Options::default(),
    };
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(cache);
    // 10 bits/key ≈ 1% false positives: a point lookup for an absent key (the common
    // dedup case, and pointer reads of other conversations) skips the SST read.
    table.set_bloom_filter(10.0, false);
    // Filters and indexes compete for the same cache budget instead of growing unbounded.
    table.set_cache_index_and_filter_blocks(true);
    o.set_block_based_table_factory(&table);
    // Size the levels from the bottom up so ~90% of data sits in the last level and
    // space amplification stays near 1.1x.
    o.set_level_compaction_dynamic_level_bytes(true);
    // Recent levels are hot (active users sync them) and small: no compression saves CPU
    // on two cores; the middle levels use cheap LZ4; the bottom level (cold history,
    // most of the bytes) uses ZSTD for the best ratio.
    o.set_compression_per_level(&[
        DBCompressionType::None,
        DBCompressionType::None,
        DBCompressionType::Lz4,
        DBCompressionType::Lz4,
        DBCompressionType::Lz4,
        DBCompressionType::Lz4,
        DBCompressionType::Zstd,
    ]);
    o.set_bottommost_compression_type(DBCompressionType::Zstd);
    if let Some(len) = prefix_len(cf) {
        // Prefix blooms let a cursor seek skip every SST file that holds nothing for this
        // conversation / user, which is most of them.
        o.set_prefix_extractor(SliceTransform::create_fixed_prefix(len));
        // The same for the memtable, where fresh messages (the ones being synced) live.
        o.set_memtable_prefix_bloom_ratio(0.1);
    }
    if cf == Cf::Dedup {
        // Dedup reads are point reads of keys that are almost never there (they happen
        // for senders past the recent-id filter's bound, a bot or a load generator, on
        // every append): a whole-key bloom answers "absent" for the memtables without
        // walking their skip lists (that walk was 8 % of a flat-out 1:1 profile).
        o.set_memtable_prefix_bloom_ratio(0.1);
        o.set_memtable_whole_key_filtering(true);
    }
    match cf {
        // Timelines and inboxes take every append: a 64 MiB memtable absorbs bursts and
        // makes L0 files large enough to compact efficiently.
        Cf::Messages | Cf::Inbox => o.set_write_buffer_size(64 << 20),
        // Dedup entries are written once, read only on retries and expire after a day:
        // a modest memtable is enough.
        Cf::Dedup => o.set_write_buffer_size(32 << 20),
        // The rest is small; small memtables keep memory for the block cache.
        _ => o.set_write_buffer_size(8 << 20),
    }
    match cf {
        // Expired dedup entries are garbage: compaction drops them for free instead of
        // a purge job rewriting the table. Undecodable values are kept for inspection.
        Cf::Dedup => {
            let window = config.dedup_window_ms;
            let clock = Arc::clone(clock);
            o.set_compaction_filter("petrel-dedup-expiry", move |_, _: &[u8], v: &[u8]| {
                let now = clock.load(Ordering::Relaxed);
                match DedupEntry::server_time_of(v) {
                    Ok(t) if now > 0 && t.saturating_add(window) <= now => Decision::Remove,
                    _ => Decision::Keep,
                }
            });
        }
        // A revoked token past its own expiry cannot be presented any more.
        Cf::Revoked => {
            let clock = Arc::clone(clock);
            o.set_compaction_filter("petrel-revoked-expiry", move |_, _: &[u8], v: &[u8]| {
                let now = clock.load(Ordering::Relaxed);
                match keys::decode_u64("revoked expiry", v) {
                    Ok(expires) if now > 0 && expires <= now => Decision::Remove,
                    _ => Decision::Keep,
                }
            });
        }
        _ => {}
    }
    Ok(o)
}
