//! The password-check rate limiter (seed 003): after `attempts` failures within `window`, per
//! key (a user name, a client address), each further attempt must wait 1 s, 5 s, 30 s, then
//! 300 s. Pure over an explicit clock.
//!
//! An attempt is *reserved* before the password is checked ([`RateLimiter::begin`]) and counts
//! as a failure unless [`RateLimiter::succeeded`] clears it, so a burst of concurrent attempts
//! can reach PAM at most `attempts` times. An escalated delay is absolute: failures leaving the
//! window do not shorten it, and the escalation only resets after a whole quiet window.
//!
//! Known clients: a client address where a user logged in successfully is remembered for
//! [`KNOWN_FOR`]. From there her attempts are keyed `user:NAME@ADDR` alone, instead of
//! `user:NAME` and `client:ADDR`, so strangers' failures cannot lock her out: neither those
//! charged to her name from other addresses, nor those charged to a shared address (a NAT, an
//! engine's port forwarding) under other names ([`RateLimiter::keys`]). Guessing her password
//! there is still limited on the pair. Unknown addresses stay under the per-user and
//! per-address limits.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// Progressive delays once the attempts in a window are used up.
pub const DELAYS: [Duration; 4] = [
    Duration::from_secs(1),
    Duration::from_secs(5),
    Duration::from_secs(30),
    Duration::from_secs(300),
];

/// Most keys remembered; beyond, keys with nothing to remember are dropped first.
const MAX_KEYS: usize = 10_000;

/// How long a successful login keeps its client address known for that user.
pub const KNOWN_FOR: Duration = Duration::from_secs(30 * 24 * 3600);
/// Most (user, address) pairs remembered; the oldest goes first beyond.
const MAX_KNOWN: usize = 10_000;

#[derive(Debug, Default, Clone)]
struct Entry {
    /// Attempts not (yet) cleared by a success, within the window.
    recent: VecDeque<Instant>,
    /// How many delays have been imposed since the key was last quiet for a whole window.
    strikes: usize,
    /// No attempt before this instant.
    blocked_until: Option<Instant>,
}

impl Entry {
    fn expire(&mut self, now: Instant, window: Duration) {
        while self
            .recent
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= window)
        {
            self.recent.pop_front();
        }
        let quiet = match self.blocked_until {
            Some(b) => now >= b + window,
            None => true,
        };
        if self.recent.is_empty() && quiet {
            self.strikes = 0;
            self.blocked_until = None;
        }
    }

    fn is_idle(&self) -> bool {
        self.recent.is_empty() && self.blocked_until.is_none()
    }
}

#[derive(Debug, Clone)]
pub struct RateLimiter {
    attempts: usize,
    window: Duration,
    entries: HashMap<String, Entry>,
    /// (user, client address) → last successful login there.
    known: HashMap<(String, String), Instant>,
}

impl RateLimiter {
    pub fn new(attempts: u32, window: Duration) -> RateLimiter {
        RateLimiter {
            attempts: attempts.max(1) as usize,
            window,
            entries: HashMap::new(),
            known: HashMap::new(),
        }
    }

    /// The keys a login attempt of `user` from `client` is limited on: the user name and
    /// the client address from an unknown address, the pair alone from a known one.
    pub fn keys(&self, user: &str, client: &str, now: Instant) -> Vec<String> {
        let known = self
            .known
            .get(&(user.to_string(), client.to_string()))
            .is_some_and(|at| now.saturating_duration_since(*at) < KNOWN_FOR);
        if known {
            vec![format!("user:{user}@{client}")]
        } else {
            vec![format!("user:{user}"), format!("client:{client}")]
        }
    }

    /// `user` logged in from `client`: the keys start afresh and the address becomes known.
    pub fn logged_in(&mut self, user: &str, client: &str, keys: &[String], now: Instant) {
        self.succeeded(keys);
        if self.known.len() >= MAX_KNOWN {
            self.known
                .retain(|_, at| now.saturating_duration_since(*at) < KNOWN_FOR);
            if self.known.len() >= MAX_KNOWN {
                if let Some(oldest) = self
                    .known
                    .iter()
                    .min_by_key(|(_, at)| **at)
                    .map(|(k, _)| k.clone())
                {
                    self.known.remove(&oldest);
                }
            }
        }
        self.known
            .insert((user.to_string(), client.to_string()), now);
    }

    /// New limits (a reload) keep the history.
    pub fn set_limits(&mut self, attempts: u32, window: Duration) {
        self.attempts = attempts.max(1) as usize;
        self.window = window;
    }

    /// `Err(wait)` when one of `keys` must wait; otherwise reserve one attempt on each key
    /// (counted as a failure until [`RateLimiter::succeeded`]). Check and reserve are one step.
    pub fn begin(&mut self, keys: &[String], now: Instant) -> Result<(), Duration> {
        let window = self.window;
        let mut wait = Duration::ZERO;
        for k in keys {
            if let Some(e) = self.entries.get_mut(k) {
                e.expire(now, window);
                if let Some(b) = e.blocked_until.filter(|b| *b > now) {
                    wait = wait.max(b - now);
                }
            }
        }
        if !wait.is_zero() {
            return Err(wait);
        }
        if self.entries.len() + keys.len() > MAX_KEYS {
            self.entries.retain(|_, e| {
                e.expire(now, window);
                !e.is_idle()
            });
        }
        for k in keys {
            let attempts = self.attempts;
            let e = self.entries.entry(k.clone()).or_default();
            e.recent.push_back(now);
            // Once delays have begun, every further attempt gets the next one until the key
            // has been quiet for a whole window.
            if e.recent.len() >= attempts || e.strikes > 0 {
                e.blocked_until = Some(now + DELAYS[e.strikes.min(DELAYS.len() - 1)]);
                e.strikes += 1;
            }
        }
        Ok(())
    }

    /// The reserved attempt failed (known only now, after PAM's own delay): a delay it
    /// imposed runs from now, not from when the attempt began.
    pub fn failed(&mut self, keys: &[String], now: Instant) {
        for k in keys {
            if let Some(e) = self.entries.get_mut(k) {
                if let (Some(b), true) = (e.blocked_until, e.strikes > 0) {
                    let delay = DELAYS[(e.strikes - 1).min(DELAYS.len() - 1)];
                    e.blocked_until = Some(b.max(now + delay));
                }
            }
        }
    }

    /// The reserved attempt succeeded: the keys start afresh.
    pub fn succeeded(&mut self, keys: &[String]) {
        for k in keys {
            self.entries.remove(k);
        }
    }

    /// Keys remembered (for tests and memory checks).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(s: &str) -> Vec<String> {
        vec![s.to_string()]
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn allows_then_delays_progressively() {
        let t = Instant::now();
        let mut rl = RateLimiter::new(3, secs(60));
        for i in 0..3 {
            assert_eq!(rl.begin(&k("u"), t), Ok(()), "attempt {i}");
        }
        assert_eq!(rl.begin(&k("u"), t), Err(secs(1)));
        assert_eq!(rl.begin(&k("u"), t + secs(1)), Ok(()));
        assert_eq!(rl.begin(&k("u"), t + secs(1)), Err(secs(5)));
        assert_eq!(rl.begin(&k("u"), t + secs(6)), Ok(()));
        assert_eq!(rl.begin(&k("u"), t + secs(6)), Err(secs(30)));
        assert_eq!(rl.begin(&k("u"), t + secs(36)), Ok(()));
        assert_eq!(rl.begin(&k("u"), t + secs(36)), Err(secs(300)));
        assert_eq!(rl.begin(&k("u"), t + secs(336)), Ok(()));
        assert_eq!(
            rl.begin(&k("u"), t + secs(336)),
            Err(secs(300)),
            "stays at 300 s"
        );
        // Other keys are independent.
        assert_eq!(rl.begin(&k("other"), t), Ok(()));
    }

    #[test]
    fn success_clears_the_reservation() {
        let t = Instant::now();
        let mut rl = RateLimiter::new(2, secs(60));
        for _ in 0..10 {
            assert_eq!(rl.begin(&k("u"), t), Ok(()));
            rl.succeeded(&k("u"));
        }
        assert!(rl.is_empty());
    }

    #[test]
    fn a_concurrent_burst_gets_at_most_attempts_reservations() {
        // Reservations are made before any result is known: the burst is cut at `attempts`.
        let t = Instant::now();
        let mut rl = RateLimiter::new(5, secs(60));
        let passed = (0..50).filter(|_| rl.begin(&k("u"), t).is_ok()).count();
        assert_eq!(passed, 5);
    }

    #[test]
    fn an_escalated_delay_is_not_cut_short_by_the_window() {
        let t = Instant::now();
        let mut rl = RateLimiter::new(2, secs(10));
        rl.begin(&k("u"), t).unwrap();
        rl.begin(&k("u"), t).unwrap(); // blocked 1 s
        rl.begin(&k("u"), t + secs(1)).unwrap(); // blocked 5 s
        rl.begin(&k("u"), t + secs(6)).unwrap(); // blocked 30 s, until t+36
                                                 // At t+20 every failure has left the 10 s window, but the 30 s delay still holds.
        assert_eq!(rl.begin(&k("u"), t + secs(20)), Err(secs(16)));
        // And the next imposed delay escalates further, not back to 1 s.
        rl.begin(&k("u"), t + secs(36)).unwrap();
        assert_eq!(rl.begin(&k("u"), t + secs(36)), Err(secs(300)));
    }

    #[test]
    fn escalation_resets_after_a_quiet_window() {
        let t = Instant::now();
        let mut rl = RateLimiter::new(2, secs(60));
        rl.begin(&k("u"), t).unwrap();
        rl.begin(&k("u"), t).unwrap(); // blocked until t+1
        let later = t + secs(1) + secs(60);
        assert_eq!(rl.begin(&k("u"), later), Ok(()));
        assert_eq!(
            rl.begin(&k("u"), later),
            Ok(()),
            "fresh allowance after a quiet window"
        );
        assert_eq!(
            rl.begin(&k("u"), later),
            Err(secs(1)),
            "and the first delay again"
        );
    }

    #[test]
    fn the_delay_runs_from_the_failure_not_the_start() {
        let t = Instant::now();
        let mut rl = RateLimiter::new(1, secs(60));
        rl.begin(&k("u"), t).unwrap();
        // PAM took 2 s to say no: the 1 s delay starts then.
        rl.failed(&k("u"), t + secs(2));
        assert_eq!(rl.begin(&k("u"), t + secs(2)), Err(secs(1)));
        assert_eq!(rl.begin(&k("u"), t + secs(3)), Ok(()));
    }

    #[test]
    fn any_blocked_key_blocks_and_nothing_is_reserved_then() {
        let t = Instant::now();
        let mut rl = RateLimiter::new(1, secs(60));
        rl.begin(&k("user:alice"), t).unwrap();
        let both = vec!["user:alice".to_string(), "client:10.0.0.9".to_string()];
        assert_eq!(rl.begin(&both, t), Err(secs(1)));
        // The client key was not charged for the refused attempt.
        assert_eq!(rl.begin(&k("client:10.0.0.9"), t), Ok(()));
    }

    #[test]
    fn new_limits_keep_the_history() {
        let t = Instant::now();
        let mut rl = RateLimiter::new(2, secs(60));
        rl.begin(&k("u"), t).unwrap();
        rl.begin(&k("u"), t).unwrap();
        rl.set_limits(5, secs(60));
        assert_eq!(rl.begin(&k("u"), t), Err(secs(1)));
    }

    #[test]
    fn strangers_cannot_lock_out_a_user_where_she_logged_in_before() {
        let t = Instant::now();
        let mut rl = RateLimiter::new(5, secs(60));
        // carol logs in from 10.0.0.5.
        let home = rl.keys("carol", "10.0.0.5", t);
        assert_eq!(home[0], "user:carol");
        rl.begin(&home, t).unwrap();
        rl.logged_in("carol", "10.0.0.5", &home, t);
        // Seven strangers from seven addresses guess wrong.
        for i in 0..7 {
            let keys = rl.keys("carol", &format!("192.0.2.{i}"), t);
            if rl.begin(&keys, t).is_ok() {
                rl.failed(&keys, t);
            }
        }
        // A new address is limited on the user name: locked out.
        let fresh = rl.keys("carol", "198.51.100.1", t);
        assert!(rl.begin(&fresh, t).is_err());
        // Her known address is not.
        let home = rl.keys("carol", "10.0.0.5", t);
        assert_eq!(home[0], "user:carol@10.0.0.5");
        assert_eq!(rl.begin(&home, t), Ok(()));
        // Guessing from her address is still limited there (on the pair).
        for _ in 0..4 {
            rl.begin(&home, t).unwrap();
        }
        assert!(rl.begin(&home, t).is_err());
        // Everyone behind one address (a NAT): a spray of other names blocks the address,
        // not carol where she logged in before.
        let mut rl = RateLimiter::new(5, secs(60));
        let nat = "10.88.0.1";
        let keys = rl.keys("carol", nat, t);
        rl.begin(&keys, t).unwrap();
        rl.logged_in("carol", nat, &keys, t);
        for i in 0..20 {
            let keys = rl.keys(&format!("m{i}"), nat, t);
            if rl.begin(&keys, t).is_ok() {
                rl.failed(&keys, t);
            }
        }
        assert!(rl.begin(&rl.keys("newcomer", nat, t), t).is_err());
        assert_eq!(rl.begin(&rl.keys("carol", nat, t), t), Ok(()));
        // Known expires.
        let later = t + KNOWN_FOR + secs(1);
        assert_eq!(rl.keys("carol", "10.0.0.5", later)[0], "user:carol");
    }

    #[test]
    fn known_addresses_stay_bounded() {
        let t = Instant::now();
        let mut rl = RateLimiter::new(5, secs(60));
        for i in 0..(MAX_KNOWN + 50) {
            let now = t + Duration::from_millis(i as u64);
            let keys = rl.keys("u", &format!("c{i}"), now);
            rl.logged_in("u", &format!("c{i}"), &keys, now);
        }
        assert!(rl.known.len() <= MAX_KNOWN);
        let last = format!("c{}", MAX_KNOWN + 49);
        assert_eq!(
            rl.keys("u", &last, t + secs(20))[0],
            format!("user:u@{last}")
        );
    }

    #[test]
    fn memory_stays_bounded() {
        let t = Instant::now();
        let mut rl = RateLimiter::new(5, secs(1));
        for i in 0..(3 * MAX_KEYS) {
            let now = t + Duration::from_millis(i as u64);
            let _ = rl.begin(&k(&format!("client:{i}")), now);
        }
        assert!(rl.len() <= MAX_KEYS + 1, "{}", rl.len());
    }
}
