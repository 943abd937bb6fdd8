//! The writer's recent-id filter: answers "is this `(sender, conversation,
//! client_msg_id)` certainly new?" from memory, so an append reads the `dedup` column
//! family only when the filter cannot answer (a real retry, a fingerprint collision, or
//! a sender whose window overflowed the filter).
//!
//! Per sender it keeps the fingerprints and server times of the ids stored recently, in
//! store order, and a *horizon*: every entry the sender stored with a server time after
//! the horizon is in the list (`None`: every entry is). A sender is loaded on first use
//! from one range scan of its dedup prefix. The answer for `(fingerprint, now)`:
//!
//! - the id is above the sender's *id ceiling* → [`Answer::New`] (no read);
//! - the fingerprint is listed → [`Answer::AskStore`] (probably a retry; the store says
//!   where it was stored, or that it was a collision);
//! - not listed, and every entry that could still be inside the dedup window at `now`
//!   lies after the horizon → [`Answer::New`] (no read);
//! - otherwise → [`Answer::AskStore`].
//!
//! **The id ceiling** is an upper bound of every client message id the sender has stored
//! (known when the sender was loaded from a complete scan, or from the store's per
//! conversation maxima; raised by every id stored since; `None` when unknown). An id above
//! it was never stored, so it is new whatever the list says. It is what keeps a heavy
//! sender off the store: past `max_per_sender` ids within the dedup window the list
//! cannot vouch for anything, but a sender whose ids increase (a persisted counter, a
//! time-based id, the load generator) is still answered from memory. Random ids get no
//! help from it and cost nothing either. Such a sender's list, which covers nothing once
//! it overflowed, is dropped at its next id above the ceiling and not kept while its ids
//! keep rising (the horizon moves with them): no hash work per append and no memory.
//!
//! **Bounds.** At most `max_per_sender` ids per sender: storing one more drops the oldest
//! and moves the horizon up to its time (that sender then asks the store until the
//! dropped ids leave the window). At most `max_ids` ids and senders in total (a sender
//! counts one besides its ids): the least recently used senders are dropped whole (and
//! reloaded by a scan on their next append). The
//! filter never answers `New` for an id it cannot vouch for, so dropping anything only
//! costs reads, never a duplicate.
//!
//! Performance-critical path: one lookup per append, under the writer lock: one hash
//! probe of the sender's fingerprint counts (the list keeps the order for expiry), no
//! allocation once a sender's list and table have grown.

use std::collections::{HashMap, VecDeque};

use foldhash::fast::RandomState;
use lru::LruCache;

use crate::keys;
use crate::model::{ConversationKey, UserId};
use crate::partition::mix;

/// What the filter knows about an id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Certainly not stored within the dedup window: no read needed.
    New,
    /// Possibly stored: read the store.
    AskStore,
}

/// Fingerprint of `(conversation, client_msg_id)` within one sender's list. Collisions
/// only cost a store read.
pub fn fingerprint(c: ConversationKey, client_msg_id: u64) -> u64 {
    let conv = keys::conversation(c);
    let mut h = mix(client_msg_id ^ 0x9E37_79B9_7F4A_7C15);
    h = mix(h ^ u64::from(conv[0]));
    h = mix(h ^ keys::be_u64(&conv[1..9]));
    mix(h ^ keys::be_u64(&conv[9..17]))
}

#[derive(Debug)]
struct SenderIds {
    /// Every entry with a server time after this is listed (`None`: every entry).
    horizon: Option<u64>,
    /// `(fingerprint, server_time_ms)` in the order they were stored or loaded.
    ids: VecDeque<(u64, u64)>,
    /// Upper bound of every client message id the sender stored (`None`: unknown).
    id_ceiling: Option<u64>,
    /// How often each fingerprint of `ids` occurs, so a lookup is one probe instead of a
    /// scan of up to `max_per_sender` entries (it was 10 % of the control-plane routing
    /// benchmark's time).
    counts: HashMap<u64, u32, RandomState>,
}

impl SenderIds {
    fn new(horizon: Option<u64>, id_ceiling: Option<u64>) -> Self {
        SenderIds {
            horizon,
            ids: VecDeque::new(),
            id_ceiling,
            counts: HashMap::default(),
        }
    }

    fn contains(&self, fp: u64) -> bool {
        self.counts.contains_key(&fp)
    }

    fn push(&mut self, fp: u64, t: u64) {
        self.ids.push_back((fp, t));
        *self.counts.entry(fp).or_insert(0) += 1;
    }

    fn pop_front(&mut self) -> Option<(u64, u64)> {
        let (fp, t) = self.ids.pop_front()?;
        if let Some(n) = self.counts.get_mut(&fp) {
            *n -= 1;
            if *n == 0 {
                self.counts.remove(&fp);
            }
        }
        Some((fp, t))
    }
}

/// Counters of the filter, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecentIdsStats {
    /// Senders currently held.
    pub senders: u64,
    /// Ids currently held (bounded by `max_ids`).
    pub ids: u64,
    /// Lookups answered `New` without a read.
    pub answered: u64,
    /// Lookups that had to read the store.
    pub asked_store: u64,
    /// Senders loaded from the store by a scan.
    pub loads: u64,
    /// Senders dropped to stay within `max_ids`.
    pub evictions: u64,
}

impl RecentIdsStats {
    /// Adds `other`'s counts (the filters of several partitions' writers).
    pub fn add(&mut self, other: RecentIdsStats) {
        self.senders += other.senders;
        self.ids += other.ids;
        self.answered += other.answered;
        self.asked_store += other.asked_store;
        self.loads += other.loads;
        self.evictions += other.evictions;
    }
}

/// The filter; see the module doc.
#[derive(Debug)]
pub struct RecentIds {
    senders: LruCache<UserId, SenderIds, RandomState>,
    max_per_sender: usize,
    max_ids: usize,
    window_ms: u64,
    stats: RecentIdsStats,
}

impl RecentIds {
    /// An empty filter for a dedup window of `window_ms`.
    pub fn new(window_ms: u64, max_per_sender: usize, max_ids: usize) -> Self {
        RecentIds {
            senders: LruCache::unbounded_with_hasher(RandomState::default()),
            max_per_sender: max_per_sender.max(1),
            max_ids: max_ids.max(1),
            window_ms,
            stats: RecentIdsStats::default(),
        }
    }

    /// Counters and current sizes.
    pub fn stats(&self) -> RecentIdsStats {
        RecentIdsStats {
            senders: self.senders.len() as u64,
            ..self.stats
        }
    }

    /// Whether `sender` is held (else [`RecentIds::load`] it before asking).
    pub fn is_loaded(&mut self, sender: UserId) -> bool {
        self.senders.contains(&sender)
    }

    /// What the filter knows about `client_msg_id` (fingerprint `fp`) from `sender` at
    /// `now_ms`; `None` if the sender is not loaded.
    pub fn check(
        &mut self,
        sender: UserId,
        fp: u64,
        client_msg_id: u64,
        now_ms: u64,
    ) -> Option<Answer> {
        let window = self.window_ms;
        let s = self.senders.get(&sender)?;
        let above_ceiling = s.id_ceiling.is_some_and(|c| client_msg_id > c);
        let listed = s.contains(fp);
        // Entries that can still be duplicates at `now` have time > now - window; all of
        // them are listed iff horizon <= now - window.
        let covered = s.horizon.is_none_or(|h| h.saturating_add(window) <= now_ms);
        let answer = if above_ceiling || (!listed && covered) {
            self.stats.answered += 1;
            Answer::New
        } else {
            self.stats.asked_store += 1;
            Answer::AskStore
        };
        Some(answer)
    }

    /// Load `sender` from its stored entries `(fingerprint, server_time_ms)` at `now_ms`.
    /// `complete` says whether `entries` are all of them; entries already outside the
    /// window are skipped. If more than `max_per_sender` remain, the sender is held with
    /// no coverage (only ids above the ceiling are answered) until it is dropped.
    /// `id_ceiling`: an upper bound of every client message id the sender ever stored,
    /// if the caller knows one.
    pub fn load(
        &mut self,
        sender: UserId,
        entries: impl IntoIterator<Item = (u64, u64)>,
        complete: bool,
        id_ceiling: Option<u64>,
        now_ms: u64,
    ) {
        let window = self.window_ms;
        let mut ids = SenderIds::new(None, id_ceiling);
        let mut overflow = !complete;
        for (fp, t) in entries {
            if t.saturating_add(window) <= now_ms {
                continue;
            }
            if ids.ids.len() == self.max_per_sender {
                overflow = true;
                break;
            }
            ids.push(fp, t);
        }
        ids.horizon = overflow.then_some(u64::MAX);
        self.stats.loads += 1;
        self.stats.ids += ids.ids.len() as u64;
        if let Some(old) = self.senders.put(sender, ids) {
            self.stats.ids -= old.ids.len() as u64;
        }
        self.enforce_budget(sender);
    }

    /// Record that `sender` stored `client_msg_id` (fingerprint `fp`) at `server_time_ms`
    /// (call for every stored append, including ones whose group write later fails: a
    /// listed id only causes a read, a raised ceiling only a read later).
    pub fn record(&mut self, sender: UserId, fp: u64, client_msg_id: u64, server_time_ms: u64) {
        let max = self.max_per_sender;
        let window = self.window_ms;
        let Some(s) = self.senders.get_mut(&sender) else {
            return;
        };
        let above_ceiling = s.id_ceiling.is_some_and(|c| client_msg_id > c);
        if let Some(c) = &mut s.id_ceiling {
            *c = (*c).max(client_msg_id);
        }
        let covered = s
            .horizon
            .is_none_or(|h| h.saturating_add(window) <= server_time_ms);
        if above_ceiling && !covered {
            // A sender past its bound whose ids increase: the ceiling answers its new ids
            // and the list, which covers nothing, would only cost a hash insert and
            // removal per append. Forget the list; the horizon moves past everything it
            // held (their times, which need not be below this one: clocks step back)
            // and past this unlisted id.
            let mut horizon = s.horizon.map_or(server_time_ms, |h| h.max(server_time_ms));
            if !s.ids.is_empty() {
                horizon = s.ids.iter().fold(horizon, |h, &(_, t)| h.max(t));
                self.stats.ids -= s.ids.len() as u64;
                s.ids = VecDeque::new();
                s.counts = HashMap::default();
            }
            s.horizon = Some(horizon);
            return;
        }
        s.push(fp, server_time_ms);
        self.stats.ids += 1;
        if s.ids.len() > max
            && let Some((_, t)) = s.pop_front()
        {
            self.stats.ids -= 1;
            s.horizon = Some(s.horizon.map_or(t, |h| h.max(t)));
        }
        self.enforce_budget(sender);
    }

    /// Ids plus senders held: what `max_ids` bounds (a sender costs its record even with
    /// no id listed).
    fn held(&self) -> u64 {
        self.stats.ids + self.senders.len() as u64
    }

    /// Drop least recently used senders (never `keep`) until within `max_ids`.
    fn enforce_budget(&mut self, keep: UserId) {
        while self.held() > self.max_ids as u64 {
            if self.senders.peek_lru().is_some_and(|(u, _)| *u == keep) {
                // Only the current sender is left over budget: trim its own list.
                let Some(s) = self.senders.peek_mut(&keep) else {
                    return;
                };
                let Some((_, t)) = s.pop_front() else {
                    return;
                };
                s.horizon = Some(s.horizon.map_or(t, |h| h.max(t)));
                self.stats.ids -= 1;
                continue;
            }
            let Some((_, dropped)) = self.senders.pop_lru() else {
                return;
            };
            self.stats.ids -= dropped.ids.len() as u64;
            self.stats.evictions += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 86_400_000;

    fn fp(id: u64) -> u64 {
        fingerprint(ConversationKey::Group(1), id)
    }

    #[test]
    fn fingerprints_separate_conversations_and_ids() {
        let a = fingerprint(ConversationKey::Group(1), 7);
        assert_ne!(a, fingerprint(ConversationKey::Group(2), 7));
        assert_ne!(a, fingerprint(ConversationKey::PublicAccount(1), 7));
        assert_ne!(a, fingerprint(ConversationKey::Group(1), 8));
        assert_eq!(a, fingerprint(ConversationKey::Group(1), 7));
    }

    #[test]
    fn unknown_sender_must_be_loaded_first() {
        let mut f = RecentIds::new(DAY, 8, 100);
        assert_eq!(f.check(UserId(1), fp(1), 1, 10), None);
        f.load(UserId(1), [], true, None, 10);
        assert_eq!(f.check(UserId(1), fp(1), 1, 10), Some(Answer::New));
    }

    #[test]
    fn a_stored_id_asks_the_store_and_others_do_not() {
        let mut f = RecentIds::new(DAY, 8, 100);
        f.load(UserId(1), [(fp(1), 5)], true, None, 10);
        assert_eq!(f.check(UserId(1), fp(1), 1, 10), Some(Answer::AskStore));
        assert_eq!(f.check(UserId(1), fp(2), 2, 10), Some(Answer::New));
        f.record(UserId(1), fp(2), 2, 10);
        assert_eq!(f.check(UserId(1), fp(2), 2, 11), Some(Answer::AskStore));
        let s = f.stats();
        assert_eq!((s.answered, s.asked_store, s.ids), (1, 2, 2));
    }

    #[test]
    fn expired_entries_are_not_loaded() {
        let mut f = RecentIds::new(DAY, 1, 100);
        // The expired one does not count against the per-sender bound either.
        f.load(
            UserId(1),
            [(fp(1), 0), (fp(2), DAY + 5)],
            true,
            None,
            DAY + 10,
        );
        assert_eq!(f.stats().ids, 1);
        assert_eq!(f.check(UserId(1), fp(1), 1, DAY + 10), Some(Answer::New));
    }

    #[test]
    fn overflowing_a_sender_moves_the_horizon_and_asks_until_it_leaves_the_window() {
        let mut f = RecentIds::new(DAY, 2, 100);
        f.load(UserId(1), [], true, None, 0);
        f.record(UserId(1), fp(1), 1, 100);
        f.record(UserId(1), fp(2), 2, 200);
        f.record(UserId(1), fp(3), 3, 300); // drops id 1 (time 100)
        assert_eq!(f.stats().ids, 2);
        // Id 1 may still be a duplicate: the filter cannot vouch for any unlisted id.
        assert_eq!(f.check(UserId(1), fp(1), 1, 400), Some(Answer::AskStore));
        assert_eq!(f.check(UserId(1), fp(9), 9, 400), Some(Answer::AskStore));
        // Once time 100 is out of the window, unlisted ids are new again.
        assert_eq!(f.check(UserId(1), fp(9), 9, 100 + DAY), Some(Answer::New));
    }

    #[test]
    fn ids_above_the_ceiling_are_new_even_past_the_per_sender_bound() {
        let mut f = RecentIds::new(DAY, 2, 100);
        // Incomplete, so the list vouches for nothing; the ceiling still does.
        f.load(UserId(1), [(fp(5), 1), (fp(7), 2)], false, Some(7), 10);
        assert_eq!(f.check(UserId(1), fp(8), 8, 10), Some(Answer::New));
        assert_eq!(f.check(UserId(1), fp(6), 6, 10), Some(Answer::AskStore));
        assert_eq!(f.check(UserId(1), fp(7), 7, 10), Some(Answer::AskStore));
        // Storing raises it, also for ids the full list drops again.
        for id in [8, 9, 10] {
            f.record(UserId(1), fp(id), id, 20);
        }
        assert_eq!(f.check(UserId(1), fp(8), 8, 30), Some(Answer::AskStore));
        assert_eq!(f.check(UserId(1), fp(11), 11, 30), Some(Answer::New));
        // Without a ceiling an incomplete load answers nothing from memory.
        f.load(UserId(2), [], false, None, 10);
        assert_eq!(
            f.check(UserId(2), fp(u64::MAX), u64::MAX, 10),
            Some(Answer::AskStore)
        );
    }

    #[test]
    fn a_rising_sender_past_its_bound_keeps_no_list() {
        let mut f = RecentIds::new(DAY, 2, 100);
        f.load(UserId(1), [], true, Some(0), 0);
        for id in 1..=3 {
            f.record(UserId(1), fp(id), id, id);
        }
        // Overflowed at id 3 (horizon 1): the list holds 2 and 3.
        assert_eq!(f.stats().ids, 2);
        f.record(UserId(1), fp(4), 4, 4);
        assert_eq!(f.stats().ids, 0, "the list went");
        for id in 5..=100 {
            assert_eq!(f.check(UserId(1), fp(id), id, id), Some(Answer::New));
            f.record(UserId(1), fp(id), id, id);
        }
        assert_eq!(f.stats().ids, 0);
        // Every stored id is at or below the ceiling and uncovered: the store is asked.
        for id in [1, 3, 4, 50, 100] {
            assert_eq!(f.check(UserId(1), fp(id), id, 101), Some(Answer::AskStore));
        }
        // A window after its last append the sender is covered again.
        assert_eq!(f.check(UserId(1), fp(7), 7, 100 + DAY), Some(Answer::New));
    }

    #[test]
    fn dropping_the_list_keeps_the_horizon_past_its_entries_when_the_clock_steps_back() {
        let mut f = RecentIds::new(DAY, 2, 100);
        f.load(UserId(1), [], true, Some(0), 0);
        for id in 1..=3 {
            f.record(UserId(1), fp(id), id, 1_000 + id);
        }
        // The clock steps back 500 ms; id 4 is above the ceiling, the list (1002, 1003)
        // goes.
        f.record(UserId(1), fp(4), 4, 504);
        assert_eq!(f.stats().ids, 0);
        // A day after 504 but not after 1003: id 3 may still be inside its window.
        assert_eq!(
            f.check(UserId(1), fp(3), 3, 504 + DAY),
            Some(Answer::AskStore)
        );
        assert_eq!(f.check(UserId(1), fp(3), 3, 1_003 + DAY), Some(Answer::New));
    }

    #[test]
    fn an_incomplete_load_never_answers_new() {
        let mut f = RecentIds::new(DAY, 2, 100);
        f.load(
            UserId(1),
            [(fp(1), 1), (fp(2), 2), (fp(3), 3)],
            true,
            None,
            10,
        );
        assert_eq!(
            f.check(UserId(1), fp(9), 9, 10 * DAY),
            Some(Answer::AskStore)
        );
        f.load(UserId(2), [], false, None, 10);
        assert_eq!(f.check(UserId(2), fp(9), 9, 10), Some(Answer::AskStore));
    }

    #[test]
    fn the_total_budget_drops_least_recently_used_senders() {
        let mut f = RecentIds::new(DAY, 8, 4);
        for u in 1..=3 {
            f.load(UserId(u), [], true, None, 0);
            f.record(UserId(u), fp(u), u, 1);
            f.record(UserId(u), fp(u + 10), u + 10, 1);
        }
        // The budget counts each sender held as well as its ids.
        let s = f.stats();
        assert!(s.ids + s.senders <= 4, "{s:?}");
        assert_eq!(s.evictions, 2);
        assert!(
            !f.is_loaded(UserId(1)),
            "the least recently used sender went"
        );
        assert!(f.is_loaded(UserId(3)));
        // A single sender over the whole budget trims its own list.
        let mut g = RecentIds::new(DAY, 100, 2);
        g.load(UserId(1), [], true, None, 0);
        for id in 0..5 {
            g.record(UserId(1), fp(id), id, 1);
        }
        assert_eq!(g.stats().ids, 1);
        assert_eq!(g.check(UserId(1), fp(99), 99, 2), Some(Answer::AskStore));
    }
}
