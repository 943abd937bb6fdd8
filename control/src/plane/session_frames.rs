//! Session lifecycle frames: `Ping`, `Login`, `RenewToken` and `Logout`.

use std::sync::Arc;

use petrel_proto::{Frame, pb};
use petrel_storage::{Request, UserId};
use sha2::{Digest, Sha256};

use super::Control;
use super::pending::Pending;
use crate::admission::Refusal;
use crate::event::CloseReason;
use crate::session::Session;
use crate::time::Timestamp;
use crate::timers::TimerKind;
use crate::token::{self, TOKEN_ID_LEN, TokenError, TokenSpec};
use petrel_conn::ConnId;

/// How long a client should wait before retrying a login refused during start-up.
const NOT_READY_RETRY_MS: u32 = 1_000;

impl Control {
    pub(super) fn on_ping(&mut self, now: Timestamp, conn: ConnId, rid: u32, ping: pb::Ping) {
        self.send_frame(
            conn,
            Frame::response(
                rid,
                pb::Pong {
                    client_time_ms: ping.client_time_ms,
                    server_time_ms: now.as_millis(),
                },
            ),
        );
    }

    pub(super) fn on_login(&mut self, now: Timestamp, conn: ConnId, rid: u32, login: pb::Login) {
        if self.registry.get(conn).is_some_and(|c| c.session.is_some()) {
            self.counters.logins_failed.already_logged_in += 1;
            self.send_error(
                conn,
                rid,
                pb::ErrorCode::AlreadyLoggedIn,
                "this connection is already logged in",
                0,
            );
            return;
        }
        if self.draining_since.is_some() {
            self.counters.refused_shutting_down += 1;
            let code = pb::ErrorCode::ShuttingDown;
            self.send_error(
                conn,
                rid,
                code,
                "server shutting down; log in again after a back-off",
                0,
            );
            self.close(conn, CloseReason::LoginRejected(code));
            return;
        }
        if !self.revocations_loaded {
            self.counters.logins_failed.not_ready += 1;
            self.send_error(
                conn,
                rid,
                pb::ErrorCode::ServerBusy,
                "server is starting; retry shortly",
                NOT_READY_RETRY_MS,
            );
            return;
        }
        // Before the token's verification, the costly part: refusing is cheap.
        if let Err(refused) = self.admission.admit_login(now, conn.as_u64()) {
            let failures = &mut self.counters.logins_failed;
            match refused.why {
                Refusal::Overloaded => failures.overloaded += 1,
                Refusal::LoginRate => failures.login_rate += 1,
            }
            let code = pb::ErrorCode::ServerBusy;
            self.send_error(
                conn,
                rid,
                code,
                "server busy; log in again after retry_after_ms",
                refused.retry_after_ms,
            );
            // The connection goes too: an overloaded core keeps nothing for a client
            // it cannot serve yet, and the client comes back after its wait.
            self.close(conn, CloseReason::LoginRejected(code));
            return;
        }
        let verified = self
            .token_cache
            .verify(&login.token, now, &self.keys, &self.revoked)
            .and_then(|claims| {
                // The token names the user, device and platform; a Login naming others
                // is refused rather than silently corrected, since the multi-device
                // policy acts on the platform.
                if claims.user == login.user_id
                    && *claims.device == *login.device_id
                    && claims.platform == login.platform
                {
                    Ok(claims)
                } else {
                    Err(TokenError::Mismatch)
                }
            });
        self.counters.token_cache_hits = self.token_cache.hits();
        let claims = match verified {
            Ok(claims) => claims,
            Err(err) => {
                self.counters.logins_failed.record(&err);
                let code = err.error_code();
                self.send_error(conn, rid, code, &err.to_string(), 0);
                self.close(conn, CloseReason::LoginRejected(code));
                return;
            }
        };

        // An attempt the device already gave up on, arriving after its newer login (from
        // another core's connection, or out of the backlog of a server that was stopped),
        // must not replace the session the device uses now.
        let same_device_newer = login.attempt != 0
            && self
                .user_sessions(claims.user)
                .any(|(_, s)| *s.device == *claims.device && s.attempt > login.attempt);
        if same_device_newer {
            self.counters.logins_failed.stale += 1;
            let code = pb::ErrorCode::StaleLogin;
            self.send_error(
                conn,
                rid,
                code,
                "this device has logged in again since this attempt; the newer session stays",
                0,
            );
            self.close(conn, CloseReason::LoginRejected(code));
            return;
        }

        // Replace older sessions: always the same device (a reconnect the server has
        // not noticed yet), and under the one-per-platform policy the same platform.
        let replaced: Vec<ConnId> = self
            .user_sessions(claims.user)
            .filter(|(_, s)| self.policy_excludes(s, &claims.device, claims.platform))
            .map(|(c, _)| c)
            .collect();
        for old in replaced {
            self.counters.kicks.replaced += 1;
            self.kick(
                old,
                pb::KickReason::Replaced,
                "another device of this platform logged in",
            );
        }

        self.next_session += 1;
        // Unique per server process: with several control planes the low byte names the
        // core (one per process otherwise, numbered 1, 2, …).
        let session_id = if self.config.core_count > 1 {
            (self.next_session << 8) | u64::from(self.config.core_index)
        } else {
            self.next_session
        };
        let user = claims.user;
        let expires_at = claims.expires_at;
        self.registry.login(
            conn,
            Session {
                session_id,
                user,
                device: Arc::from(claims.device),
                platform: claims.platform,
                attempt: login.attempt,
                logged_in_at: now,
                tokens: vec![(claims.token_id, expires_at)],
            },
        );
        self.announce_login(conn);
        self.counters.logins_ok += 1;
        if self.config.enforce_token_expiry {
            self.timers.arm(expires_at, TimerKind::SessionExpiry(conn));
        }
        let result = Frame::response(
            rid,
            pb::LoginResult {
                user_id: user,
                session_id,
                server_time_ms: now.as_millis(),
                heartbeat_interval_s: self.config.heartbeat_for(session_id),
                token_expires_at_ms: expires_at.as_millis(),
            },
        );
        self.answer_login(conn, result);
        self.storage(
            Request::TouchActivity {
                user: UserId(user),
                now_ms: now.as_millis(),
            },
            Pending::Background,
        );
    }

    pub(super) fn on_renew(&mut self, now: Timestamp, conn: ConnId, rid: u32) {
        let token_id = self.new_token_id();
        let Some(session) = self.registry.get(conn).and_then(|c| c.session.as_ref()) else {
            return;
        };
        let platform =
            pb::Platform::try_from(session.platform).unwrap_or(pb::Platform::Unspecified);
        let issued = token::mint(
            &self.keys,
            &TokenSpec {
                user: session.user,
                device: &session.device,
                platform,
                issued_at: now,
                ttl: self.config.renew_ttl,
                token_id,
            },
        );
        match issued {
            Ok(issued) => {
                if let Some(session) = self.registry.get_mut(conn).and_then(|c| c.session.as_mut())
                {
                    session.tokens.retain(|(_, exp)| *exp > now);
                    session.tokens.push((token_id, issued.claims.expires_at));
                }
                self.send_frame(
                    conn,
                    Frame::response(
                        rid,
                        pb::RenewResult {
                            token: issued.token,
                            expires_at_ms: issued.claims.expires_at.as_millis(),
                        },
                    ),
                );
            }
            Err(err) => {
                // Only reachable if the session's device id could not be re-encoded,
                // which login already checked.
                self.send_error(conn, rid, pb::ErrorCode::Internal, &err.to_string(), 0);
            }
        }
    }

    pub(super) fn on_logout(&mut self, now: Timestamp, conn: ConnId, logout: pb::Logout) {
        if logout.revoke_token {
            let Some(session) = self.registry.get(conn).and_then(|c| c.session.clone()) else {
                return;
            };
            for &(id, expires_at) in &session.tokens {
                self.revoke_token(now, id, expires_at);
            }
            // Other sessions that logged in with one of these tokens end too.
            let others: Vec<ConnId> = self
                .registry
                .user_conns(session.user)
                .iter()
                .copied()
                .filter(|&c| c != conn)
                .filter(|&c| {
                    self.registry
                        .get(c)
                        .and_then(|c| c.session.as_ref())
                        .is_some_and(|s| {
                            s.tokens
                                .iter()
                                .any(|(id, _)| session.tokens.iter().any(|(r, _)| r == id))
                        })
                })
                .collect();
            for other in others {
                self.counters.kicks.token_revoked += 1;
                self.kick(
                    other,
                    pb::KickReason::TokenRevoked,
                    "token revoked by logout",
                );
            }
        }
        self.close(conn, CloseReason::Logout);
    }

    /// A fresh token id: SHA-256 of the configured seed and a counter, truncated.
    pub(super) fn new_token_id(&mut self) -> [u8; TOKEN_ID_LEN] {
        self.next_token_seq += 1;
        let digest = Sha256::new()
            .chain_update(self.config.id_seed.to_le_bytes())
            .chain_update(self.next_token_seq.to_le_bytes())
            .finalize();
        let mut id = [0u8; TOKEN_ID_LEN];
        id.copy_from_slice(&digest[..TOKEN_ID_LEN]);
        id
    }
}
