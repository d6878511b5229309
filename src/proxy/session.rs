//! Browser sessions in the proxy's memory: random tokens, idle timeout and maximum age, a
//! bound on their number, and the per-user login fingerprints that end sessions when a user
//! is locked, removed or given a new password. Pure over an explicit clock.
//!
//! Sessions are keyed by [`id_of`] the cookie's token (SHA-256), never the token itself, so
//! the copy PID 1 keeps for a restarted proxy (and any memory dump) holds nothing a client
//! could present. The same store runs in the proxy and, as that backup, in PID 1.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Most sessions kept; the least recently used is dropped beyond.
pub const MAX_SESSIONS: usize = 10_000;
/// Most sessions of one user; her least recently used is dropped beyond (so one account
/// logging in over and over cannot push everyone else's sessions out).
pub const MAX_PER_USER: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub user: String,
    /// The user's login fingerprint when the session began.
    pub fingerprint: String,
    pub created: Instant,
    pub last_seen: Instant,
}

#[derive(Debug)]
pub struct Sessions {
    idle: Duration,
    max_age: Duration,
    by_token: HashMap<String, Session>,
}

impl Sessions {
    pub fn new(idle: Duration, max_age: Duration) -> Sessions {
        Sessions {
            idle,
            max_age,
            by_token: HashMap::new(),
        }
    }

    /// Start a session under a fresh id (see [`id_of`]).
    pub fn insert(&mut self, token: String, user: &str, fingerprint: &str, now: Instant) {
        self.restore(
            token,
            Session {
                user: user.to_string(),
                fingerprint: fingerprint.to_string(),
                created: now,
                last_seen: now,
            },
            now,
        );
    }

    /// Keep `session` under `id` as it is (a copy handed over from elsewhere), unless it
    /// has expired by `now`.
    pub fn restore(&mut self, id: String, session: Session, now: Instant) {
        self.expire(now);
        if now.saturating_duration_since(session.last_seen) >= self.idle
            || now.saturating_duration_since(session.created) >= self.max_age
        {
            return;
        }
        let mine: Vec<(&String, &Session)> = self
            .by_token
            .iter()
            .filter(|(_, s)| s.user == session.user)
            .collect();
        if mine.len() >= MAX_PER_USER {
            if let Some(oldest) = mine
                .iter()
                .min_by_key(|(_, s)| s.last_seen)
                .map(|(t, _)| (*t).clone())
            {
                self.by_token.remove(&oldest);
            }
        }
        if self.by_token.len() >= MAX_SESSIONS {
            if let Some(oldest) = self
                .by_token
                .iter()
                .min_by_key(|(_, s)| s.last_seen)
                .map(|(t, _)| t.clone())
            {
                self.by_token.remove(&oldest);
            }
        }
        self.by_token.insert(id, session);
    }

    /// Note that session `id` was used at `now` (never moving back in time).
    pub fn touch(&mut self, id: &str, now: Instant) {
        if let Some(s) = self.by_token.get_mut(id) {
            s.last_seen = s.last_seen.max(now);
        }
    }

    /// Every session kept, with its id.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Session)> {
        self.by_token.iter()
    }

    /// The live session for `token` (touching it), or `None` (an expired one is dropped).
    pub fn get(&mut self, token: &str, now: Instant) -> Option<Session> {
        let s = self.by_token.get_mut(token)?;
        if now.saturating_duration_since(s.last_seen) >= self.idle
            || now.saturating_duration_since(s.created) >= self.max_age
        {
            self.by_token.remove(token);
            return None;
        }
        s.last_seen = now;
        Some(s.clone())
    }

    pub fn remove(&mut self, token: &str) -> Option<Session> {
        self.by_token.remove(token)
    }

    /// End every session of `user` whose fingerprint is not `current` (`None`: all of them);
    /// returns the ids ended.
    pub fn revoke_stale(&mut self, user: &str, current: Option<&str>) -> Vec<String> {
        let ended: Vec<String> = self
            .by_token
            .iter()
            .filter(|(_, s)| s.user == user && Some(s.fingerprint.as_str()) != current)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &ended {
            self.by_token.remove(id);
        }
        ended
    }

    /// Drop expired sessions.
    pub fn expire(&mut self, now: Instant) {
        let (idle, max_age) = (self.idle, self.max_age);
        self.by_token.retain(|_, s| {
            now.saturating_duration_since(s.last_seen) < idle
                && now.saturating_duration_since(s.created) < max_age
        });
    }

    pub fn len(&self) -> usize {
        self.by_token.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_token.is_empty()
    }
}

/// The id a session is kept under: SHA-256 of the cookie's token, hex-encoded.
pub fn id_of(token: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A new session token: 256 random bits from the kernel, hex-encoded.
pub fn new_token() -> std::io::Result<String> {
    let mut buf = [0u8; 32];
    let mut filled = 0;
    while filled < buf.len() {
        // SAFETY: writes at most the remaining length into our own buffer.
        let n =
            unsafe { libc::getrandom(buf[filled..].as_mut_ptr().cast(), buf.len() - filled, 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        filled += n as usize;
    }
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn idle_timeout_and_max_age() {
        let t = Instant::now();
        let mut s = Sessions::new(secs(10), secs(30));
        s.insert("a".into(), "alice", "f1", t);
        assert!(s.get("a", t + secs(9)).is_some());
        assert!(s.get("a", t + secs(18)).is_some(), "use keeps it alive");
        assert!(s.get("a", t + secs(27)).is_some());
        assert!(s.get("a", t + secs(30)).is_none(), "max age is absolute");
        s.insert("b".into(), "alice", "f1", t);
        assert!(s.get("b", t + secs(10)).is_none(), "idle");
        assert!(s.get("zzz", t).is_none());
    }

    #[test]
    fn revocation_by_fingerprint() {
        let t = Instant::now();
        let mut s = Sessions::new(secs(100), secs(100));
        s.insert("a".into(), "alice", "f1", t);
        s.insert("b".into(), "alice", "f1", t);
        s.insert("c".into(), "bob", "g1", t);
        assert!(s.revoke_stale("alice", Some("f1")).is_empty());
        let mut ended = s.revoke_stale("alice", Some("f2"));
        ended.sort();
        assert_eq!(ended, ["a", "b"]);
        assert!(s.get("c", t).is_some());
        assert_eq!(s.revoke_stale("bob", None), ["c"]);
        assert!(s.is_empty());
    }

    #[test]
    fn restored_copies_keep_their_times() {
        let t = Instant::now();
        let mut s = Sessions::new(secs(10), secs(30));
        let copy = |created, last_seen| Session {
            user: "alice".into(),
            fingerprint: "f".into(),
            created,
            last_seen,
        };
        s.restore("old".into(), copy(t, t), t + secs(10));
        assert!(s.is_empty(), "idle too long already");
        s.restore("a".into(), copy(t, t + secs(5)), t + secs(6));
        assert!(
            s.get("a", t + secs(14)).is_some(),
            "idle counts from last use"
        );
        s.touch("a", t + secs(20));
        s.touch("a", t + secs(1));
        assert_eq!(s.iter().next().unwrap().1.last_seen, t + secs(20));
        assert!(
            s.get("a", t + secs(30)).is_none(),
            "max age from the original login"
        );
    }

    #[test]
    fn ids_are_sha256_of_the_token() {
        assert_eq!(
            id_of("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn one_user_cannot_push_the_others_out() {
        let t = Instant::now();
        let mut s = Sessions::new(secs(100), secs(100));
        s.insert("alice".into(), "alice", "f", t);
        for i in 0..(MAX_SESSIONS + 10) {
            s.insert(
                format!("c{i}"),
                "carol",
                "f",
                t + Duration::from_millis(i as u64),
            );
        }
        assert_eq!(s.len(), MAX_PER_USER + 1);
        assert!(s.get("alice", t + secs(20)).is_some());
        assert!(s.get("c0", t + secs(20)).is_none(), "carol's oldest went");
    }

    #[test]
    fn bounded() {
        let t = Instant::now();
        let mut s = Sessions::new(secs(100), secs(100));
        for i in 0..(MAX_SESSIONS + 10) {
            s.insert(
                format!("t{i}"),
                &format!("u{}", i % 200),
                "f",
                t + Duration::from_millis(i as u64),
            );
        }
        assert_eq!(s.len(), MAX_SESSIONS);
        assert!(s.get("t0", t + secs(20)).is_none(), "the oldest went first");
    }

    #[test]
    fn tokens_are_long_and_distinct() {
        let a = new_token().unwrap();
        let b = new_token().unwrap();
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
    }
}
