//! Browser sessions in the proxy's memory: random tokens, idle timeout and maximum age, a
//! bound on their number, and the per-user login fingerprints that end sessions when a user
//! is locked, removed or given a new password. Pure over an explicit clock.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Most sessions kept; the least recently used is dropped beyond.
pub const MAX_SESSIONS: usize = 10_000;

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

    /// Start a session under a fresh `token`.
    pub fn insert(&mut self, token: String, user: &str, fingerprint: &str, now: Instant) {
        self.expire(now);
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
        self.by_token.insert(
            token,
            Session {
                user: user.to_string(),
                fingerprint: fingerprint.to_string(),
                created: now,
                last_seen: now,
            },
        );
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

    /// End every session of `user` whose fingerprint is not `current` (`None`: all of them).
    pub fn revoke_stale(&mut self, user: &str, current: Option<&str>) -> usize {
        let before = self.by_token.len();
        self.by_token
            .retain(|_, s| s.user != user || Some(s.fingerprint.as_str()) == current);
        before - self.by_token.len()
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
        assert_eq!(s.revoke_stale("alice", Some("f1")), 0);
        assert_eq!(s.revoke_stale("alice", Some("f2")), 2);
        assert!(s.get("c", t).is_some());
        assert_eq!(s.revoke_stale("bob", None), 1);
        assert!(s.is_empty());
    }

    #[test]
    fn bounded() {
        let t = Instant::now();
        let mut s = Sessions::new(secs(100), secs(100));
        for i in 0..(MAX_SESSIONS + 10) {
            s.insert(
                format!("t{i}"),
                "u",
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
