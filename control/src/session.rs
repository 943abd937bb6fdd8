//! Connections and sessions: who is on which connection, and which connections each
//! user has.
//!
//! A connection ([`Conn`]) exists from `Opened` until it closes. Once its Login
//! succeeds it carries a [`Session`] (user, device, platform, tokens) and is listed under
//! its user in the [`Registry`], which is how routing finds every online device of a
//! user. Lookups are O(1); a user's device list is a short vector.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::Arc;

use foldhash::fast::RandomState;

use crate::chatroom::Seats;
use crate::conn_table::ConnTable;
use crate::rate_limit::TokenBucket;
use crate::time::Timestamp;
use crate::token::TOKEN_ID_LEN;
use petrel_conn::ConnId;

/// A logged-in session's identity.
#[derive(Debug, Clone)]
pub struct Session {
    /// Server-assigned session id (unique per process).
    pub session_id: u64,
    /// The user.
    pub user: u64,
    /// The device id (shared with pending storage operations, so no copy per message).
    pub device: Arc<str>,
    /// Platform class (`pb::Platform` value).
    pub platform: i32,
    /// The login's `Login.attempt` (0: not given). A later login of the same device with
    /// a smaller non-zero attempt is stale and refused.
    pub attempt: u64,
    /// When it logged in (orders it against logins on other cores).
    pub logged_in_at: Timestamp,
    /// Ids and expiries of every token this session used or was issued (the login token
    /// first, then renewals); revoked together on `Logout{revoke_token}`.
    pub tokens: Vec<([u8; TOKEN_ID_LEN], Timestamp)>,
}

impl Session {
    /// When the newest token of the session expires.
    pub fn expires_at(&self) -> Timestamp {
        self.tokens
            .iter()
            .map(|&(_, exp)| exp)
            .max()
            .unwrap_or_default()
    }
}

/// One transport connection.
#[derive(Debug)]
pub struct Conn {
    /// When it opened.
    pub opened_at: Timestamp,
    /// When a frame last arrived (liveness for the idle timeout).
    pub last_activity: Timestamp,
    /// `Some` once logged in.
    pub session: Option<Session>,
    /// The transport reported it congested ([`crate::Event::Congested`]) and not drained
    /// since: nothing is pushed to it.
    pub congested: bool,
    /// Request rate limit.
    pub bucket: TokenBucket,
    /// Typing-indicator limit (its own, so typing never eats the request budget).
    pub typing_bucket: TokenBucket,
    /// Chatrooms this connection has joined, and the gaps it is owed.
    pub rooms: Seats,
}

/// Every connection, and each user's logged-in connections. Connections are found by
/// their id's slab slot ([`ConnTable`]); users through foldhash (user ids come from
/// tokens this server signed, and a keyed hash keeps even those from colliding on
/// purpose), never SipHash on the per-message path.
#[derive(Debug, Default)]
pub struct Registry {
    conns: ConnTable<Conn>,
    users: HashMap<u64, Vec<ConnId>, RandomState>,
    sessions: u64,
}

impl Registry {
    /// Adds a connection that has not logged in. Returns false if the id is in use.
    pub fn open(&mut self, id: ConnId, conn: Conn) -> bool {
        self.conns.insert(id, conn)
    }

    /// The connection, if open.
    pub fn get(&self, id: ConnId) -> Option<&Conn> {
        self.conns.get(id)
    }

    /// The connection, if open.
    pub fn get_mut(&mut self, id: ConnId) -> Option<&mut Conn> {
        self.conns.get_mut(id)
    }

    /// Marks `id` logged in as `session`. The connection must be open and not yet
    /// logged in; returns false otherwise.
    pub fn login(&mut self, id: ConnId, session: Session) -> bool {
        let Some(conn) = self.conns.get_mut(id) else {
            return false;
        };
        if conn.session.is_some() {
            return false;
        }
        self.users.entry(session.user).or_default().push(id);
        conn.session = Some(session);
        self.sessions += 1;
        true
    }

    /// Removes a connection (and its session), returning it.
    pub fn remove(&mut self, id: ConnId) -> Option<Conn> {
        let conn = self.conns.remove(id)?;
        if let Some(session) = &conn.session {
            self.sessions -= 1;
            if let Entry::Occupied(mut e) = self.users.entry(session.user) {
                e.get_mut().retain(|&c| c != id);
                if e.get().is_empty() {
                    e.remove();
                }
            }
        }
        Some(conn)
    }

    /// The logged-in connections of `user` (empty if offline).
    pub fn user_conns(&self, user: u64) -> &[ConnId] {
        self.users.get(&user).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Open connections.
    pub fn conn_count(&self) -> usize {
        self.conns.len()
    }

    /// Logged-in sessions.
    pub fn session_count(&self) -> u64 {
        self.sessions
    }

    /// Users with at least one session.
    pub fn online_users(&self) -> usize {
        self.users.len()
    }

    /// Every open connection id (for shutdown).
    pub fn conn_ids(&self) -> Vec<ConnId> {
        self.conns.iter().map(|(id, _)| id).collect()
    }

    /// Every logged-in connection with its session.
    pub fn sessions(&self) -> impl Iterator<Item = (ConnId, &Session)> + '_ {
        self.conns
            .iter()
            .filter_map(|(id, c)| c.session.as_ref().map(|s| (id, s)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RateLimit;

    fn conn() -> Conn {
        Conn {
            opened_at: Timestamp(0),
            last_activity: Timestamp(0),
            session: None,
            congested: false,
            bucket: TokenBucket::new(
                RateLimit {
                    burst: 1,
                    per_second: 1,
                },
                Timestamp(0),
            ),
            typing_bucket: TokenBucket::new(
                RateLimit {
                    burst: 1,
                    per_second: 1,
                },
                Timestamp(0),
            ),
            rooms: Seats::default(),
        }
    }

    fn session(user: u64) -> Session {
        Session {
            session_id: 1,
            user,
            device: "d".into(),
            platform: 1,
            attempt: 0,
            logged_in_at: Timestamp(0),
            tokens: Vec::new(),
        }
    }

    #[test]
    fn login_lists_and_remove_unlists() {
        let mut r = Registry::default();
        let (a, b) = (ConnId::new(0, 1), ConnId::new(1, 1));
        assert!(r.open(a, conn()));
        assert!(!r.open(a, conn()));
        assert!(r.open(b, conn()));
        assert!(r.login(a, session(7)));
        assert!(!r.login(a, session(7)));
        assert!(r.login(b, session(7)));
        assert_eq!(r.user_conns(7), [a, b]);
        assert_eq!(r.session_count(), 2);
        r.remove(a).unwrap();
        assert_eq!(r.user_conns(7), [b]);
        r.remove(b).unwrap();
        assert!(r.user_conns(7).is_empty());
        assert_eq!(
            (r.session_count(), r.online_users(), r.conn_count()),
            (0, 0, 0)
        );
        assert!(r.remove(b).is_none());
    }
}
