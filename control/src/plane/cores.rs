//! This control plane's side of the other cores ([`crate::remote`]): what it tells them
//! (logins, a user's last session closing, revoked tokens) and what it does with what
//! they tell it (chatroom messages go on to `room_owner`). Nothing here runs on a
//! one-core server (`core_count` 1).

use petrel_proto::{Frame, FrameType, pb};

use super::Control;
use crate::event::Action;
use crate::remote::{CoreMessage, RemoteLogin};
use crate::time::Timestamp;
use crate::token::TOKEN_ID_LEN;
use petrel_conn::ConnId;

/// Where a login stands among the logins of one user, the same on every core.
#[derive(Clone, Copy, Debug)]
struct LoginOrder {
    /// `Login.attempt` (0: not numbered).
    attempt: u64,
    at_ms: u64,
    core: u8,
}

impl LoginOrder {
    /// Whether this login came after `other`: by attempt for two numbered logins of one
    /// device (its own count, which a late delivery cannot reorder), else by login time
    /// and then core index (a total order every core computes alike).
    fn later_than(self, other: LoginOrder, same_device: bool) -> bool {
        if same_device && self.attempt != 0 && other.attempt != 0 && self.attempt != other.attempt {
            return self.attempt > other.attempt;
        }
        (self.at_ms, self.core) > (other.at_ms, other.core)
    }
}

impl Control {
    /// The other cores' indices (those that can be reached).
    fn other_cores(&self) -> impl Iterator<Item = u8> + use<> {
        let me = self.config.core_index;
        let unreachable = self.unreachable;
        (0..self.config.core_count).filter(move |&c| c != me && unreachable & (1u64 << c) == 0)
    }

    /// The bitmask of every core but this one.
    fn others_mask(&self) -> u64 {
        let all = 1u64
            .checked_shl(u32::from(self.config.core_count))
            .map_or(u64::MAX, |b| b - 1);
        all & !(1u64 << self.config.core_index)
    }

    /// `cores` cannot be reached (their cluster node is down, or not heard from yet):
    /// their users no longer count as online there, and the logins held for their
    /// answers are released.
    pub(super) fn on_cores_down(&mut self, cores: u64) {
        let cores = cores & self.others_mask();
        if cores == 0 {
            return;
        }
        self.unreachable |= cores;
        // Their connections are gone: out of the rooms this core owns.
        self.rooms.drop_cores(cores);
        // And the rooms they own forgot this core's members: each is told it was
        // removed (and may join again once the owner is back).
        let mut lost = Vec::new();
        for conn in self.registry.conn_ids() {
            if let Some(c) = self.registry.get(conn) {
                lost.extend(
                    c.rooms
                        .rooms()
                        .filter(|&room| {
                            let owner = crate::chatroom::room_owner(room, self.config.core_count);
                            cores & 1u64.checked_shl(u32::from(owner)).unwrap_or(0) != 0
                        })
                        .map(|room| (room, conn)),
                );
            }
        }
        for (room, conn) in lost {
            self.removed_from_room(room, conn, pb::ConversationEventKind::MembersRemoved);
        }
        // Nor will they answer the requests they have of this core's connections.
        self.room_answers_unreachable(cores);
        self.presence.retain(|_, bits| {
            *bits &= !cores;
            *bits != 0
        });
        let mut released = std::mem::take(&mut self.scratch_conns);
        released.clear();
        for (conn, (waiting, _)) in &mut self.held_logins {
            *waiting &= !cores;
            if *waiting == 0 {
                released.push(*conn);
            }
        }
        for &conn in &released {
            if let Some((_, bytes)) = self.held_logins.remove(&conn) {
                self.send_bytes(conn, bytes, FrameType::LoginResult);
            }
        }
        released.clear();
        self.scratch_conns = released;
    }

    /// `cores` can be reached again: their node (re)started, with no sessions, and
    /// learns of every session here as if each had just logged in, and of every token
    /// revoked here.
    pub(super) fn on_cores_up(&mut self, cores: u64) {
        let cores = cores & self.others_mask();
        if cores == 0 {
            return;
        }
        self.unreachable &= !cores;
        let logins: Vec<RemoteLogin> = self
            .registry
            .sessions()
            .map(|(conn, s)| remote_login(conn, s))
            .collect();
        let revoked = self.revoked.entries();
        for core in (0..self.config.core_count).filter(|c| cores & (1u64 << c) != 0) {
            for login in &logins {
                self.actions.push_back(Action::ToCore {
                    core,
                    message: CoreMessage::LoggedIn(login.clone()),
                });
            }
            // And of the revocations it may have missed while away.
            for &(token_id, expires) in &revoked {
                self.actions.push_back(Action::ToCore {
                    core,
                    message: CoreMessage::Revoked {
                        token_id,
                        expires_at_ms: expires.as_millis(),
                    },
                });
            }
        }
    }

    fn tell_others(&mut self, message: impl Fn() -> CoreMessage) {
        for core in self.other_cores() {
            self.actions.push_back(Action::ToCore {
                core,
                message: message(),
            });
        }
    }

    /// Tells every other core of the session that just logged in on `conn`.
    pub(super) fn announce_login(&mut self, conn: ConnId) {
        if self.config.core_count <= 1 {
            return;
        }
        let Some(s) = self.registry.get(conn).and_then(|c| c.session.as_ref()) else {
            return;
        };
        let login = remote_login(conn, s);
        self.tell_others(|| CoreMessage::LoggedIn(login.clone()));
    }

    /// Sends a login's `LoginResult` — on a server of several cores, once every other
    /// core has acknowledged the login ([`crate::remote`], "the held `LoginResult`").
    pub(super) fn answer_login(&mut self, conn: ConnId, result: Frame) {
        if self.config.core_count <= 1 {
            self.send_frame(conn, result);
            return;
        }
        let Some(bytes) = self.encode(&result) else {
            return;
        };
        let others = self.other_cores().fold(0u64, |all, c| all | (1 << c));
        if others == 0 {
            // No other core can be reached (a cluster node whose peers are all down).
            self.send_bytes(conn, bytes, FrameType::LoginResult);
            return;
        }
        self.held_logins.insert(conn, (others, bytes));
        if let Some(at) = self
            .registry
            .get(conn)
            .and_then(|c| c.session.as_ref())
            .map(|s| s.logged_in_at)
        {
            self.timers.arm(
                at.saturating_add(crate::remote::LOGIN_HOLD_LIMIT),
                crate::timers::TimerKind::HeldLogin(conn),
            );
        }
    }

    /// Core `core` knows of the login on `conn` now; the last one to say so releases
    /// its `LoginResult`.
    fn on_login_seen(&mut self, core: u8, conn: ConnId) {
        let Some((waiting, _)) = self.held_logins.get_mut(&conn) else {
            return;
        };
        *waiting &= !(1u64 << core);
        if *waiting == 0
            && let Some((_, bytes)) = self.held_logins.remove(&conn)
        {
            self.send_bytes(conn, bytes, FrameType::LoginResult);
        }
    }

    /// The login on `conn` waited its limit: its `LoginResult` goes out now, whoever has
    /// not answered.
    pub(super) fn release_held_login(&mut self, conn: ConnId) {
        if let Some((_, bytes)) = self.held_logins.remove(&conn) {
            self.send_bytes(conn, bytes, FrameType::LoginResult);
        }
    }

    /// Whether `conn`'s `LoginResult` is still held (it gets no pushes meanwhile).
    pub(super) fn login_held(&self, conn: ConnId) -> bool {
        !self.held_logins.is_empty() && self.held_logins.contains_key(&conn)
    }

    /// Tells every other core that this one has no session of `user` left.
    pub(super) fn announce_offline(&mut self, user: u64) {
        self.tell_others(|| CoreMessage::Offline { user });
    }

    /// Tells every other core of a token this one revoked (and stored).
    pub(super) fn announce_revoked(&mut self, token_id: [u8; TOKEN_ID_LEN], expires: Timestamp) {
        self.tell_others(|| CoreMessage::Revoked {
            token_id,
            expires_at_ms: expires.as_millis(),
        });
    }

    /// What another core's control plane said.
    pub(super) fn handle_from_core(&mut self, core: u8, message: CoreMessage) {
        match message {
            CoreMessage::LoggedIn(login) => self.on_remote_login(core, login),
            CoreMessage::LoginSeen { conn } => self.on_login_seen(core, conn),
            CoreMessage::Offline { user } => {
                let bit = 1u64.checked_shl(u32::from(core)).unwrap_or(0);
                if let Some(cores) = self.presence.get_mut(&user) {
                    *cores &= !bit;
                    if *cores == 0 {
                        self.presence.remove(&user);
                    }
                }
            }
            CoreMessage::Replace { conn } => {
                if self.registry.get(conn).is_some_and(|c| c.session.is_some()) {
                    self.counters.kicks.replaced += 1;
                    self.kick(
                        conn,
                        pb::KickReason::Replaced,
                        "a later login of this device or platform replaced this session",
                    );
                }
            }
            CoreMessage::Revoked {
                token_id,
                expires_at_ms,
            } => self.on_remote_revoked(token_id, Timestamp::from_millis(expires_at_ms)),
            CoreMessage::Push(push) => self.deliver_forwarded(push),
            room => self.handle_room_message(room),
        }
    }

    /// A login on `core`: the user is online there; this core's sessions that the
    /// multi-device policy does not let live beside it and that it came after are kicked
    /// here, and if one of ours came after it, `core` is told to kick it.
    fn on_remote_login(&mut self, core: u8, login: RemoteLogin) {
        let bit = 1u64.checked_shl(u32::from(core)).unwrap_or(0);
        *self.presence.entry(login.user).or_insert(0) |= bit;
        let theirs = LoginOrder {
            attempt: login.attempt,
            at_ms: login.at_ms,
            core,
        };
        let me = self.config.core_index;
        let mut losers = std::mem::take(&mut self.scratch_conns);
        losers.clear();
        let mut theirs_loses = false;
        for (conn, s) in self.user_sessions(login.user) {
            if !self.policy_excludes(s, &login.device, login.platform) {
                continue;
            }
            let same_device = *s.device == *login.device;
            let ours = LoginOrder {
                attempt: s.attempt,
                at_ms: s.logged_in_at.as_millis(),
                core: me,
            };
            if theirs.later_than(ours, same_device) {
                losers.push(conn);
            } else {
                theirs_loses = true;
            }
        }
        for &conn in &losers {
            self.counters.kicks.replaced += 1;
            self.kick(
                conn,
                pb::KickReason::Replaced,
                "a later login of this device or platform replaced this session",
            );
        }
        losers.clear();
        self.scratch_conns = losers;
        if theirs_loses {
            self.actions.push_back(Action::ToCore {
                core,
                message: CoreMessage::Replace { conn: login.conn },
            });
        }
        // Known here from now on: pushes of appends completing after this reach it.
        self.actions.push_back(Action::ToCore {
            core,
            message: CoreMessage::LoginSeen { conn: login.conn },
        });
    }

    /// A token another core revoked (and stored): refused here from now on, and this
    /// core's sessions that use it end.
    fn on_remote_revoked(&mut self, token_id: [u8; TOKEN_ID_LEN], expires_at: Timestamp) {
        if self.revoked.contains(token_id) {
            // Known already (a node re-announcing its list): its sessions ended then.
            return;
        }
        self.revoked.insert(token_id, expires_at);
        for conn in self.sessions_using(token_id) {
            self.end_revoked(conn);
        }
    }
}

/// What the other cores are told of the session `s` on `conn`.
fn remote_login(conn: ConnId, s: &crate::session::Session) -> RemoteLogin {
    RemoteLogin {
        user: s.user,
        device: s.device.clone(),
        platform: s.platform,
        attempt: s.attempt,
        at_ms: s.logged_in_at.as_millis(),
        conn,
    }
}

#[cfg(test)]
mod tests {
    use super::LoginOrder;

    fn at(attempt: u64, at_ms: u64, core: u8) -> LoginOrder {
        LoginOrder {
            attempt,
            at_ms,
            core,
        }
    }

    #[test]
    fn a_devices_numbered_attempts_order_its_logins_whatever_the_clock() {
        // Attempt 8 handled at t=100 on core 0, attempt 7 delivered late at t=105 on 1.
        let newer = at(8, 100, 0);
        let late = at(7, 105, 1);
        assert!(newer.later_than(late, true));
        assert!(!late.later_than(newer, true));
        // Across devices attempts mean nothing: time decides, then the core.
        assert!(late.later_than(newer, false));
        assert!(at(0, 100, 1).later_than(at(0, 100, 0), true));
        assert!(!at(0, 100, 0).later_than(at(0, 100, 1), true));
        // One numbered and one not: time decides.
        assert!(at(0, 101, 0).later_than(at(9, 100, 1), true));
    }
}
