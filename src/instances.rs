//! Per-user opencode instances, the pure part: when an idle instance may stop, which one
//! makes room for a new user, and the view of an instance that PID 1 gives the proxy.
//! PID 1's loop (`boot::instances`) carries the decisions out.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// An instance quiet (no request, no open terminal) this long may make room for another
/// user's, once opencode says none of its sessions is busy.
pub const QUIET: Duration = Duration::from_secs(60);
/// A busy instance is asked again this often whether it is still busy.
pub const BUSY_RECHECK: Duration = Duration::from_secs(30);
/// An instance that gave up (crash loop) is tried again on a request after this long.
pub const RETRY_FAILED: Duration = Duration::from_secs(60);
/// The prefix of an instance's service name (`opencode@alice`).
pub const PREFIX: &str = "opencode@";

/// The service name of `user`'s instance.
pub fn service_name(user: &str) -> String {
    format!("{PREFIX}{user}")
}

/// What opencode last said about its sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BusyCheck {
    pub at: Instant,
    /// A session was busy, or opencode could not say (counts as busy).
    pub busy: bool,
}

/// How an instance is used, as PID 1 knows it (requests and terminals from the proxy's
/// reports, busy sessions from opencode).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Usage {
    pub last_request: Instant,
    /// Terminal WebSockets open now.
    pub open: u32,
    pub busy: Option<BusyCheck>,
    /// A busy check is under way.
    pub checking: bool,
}

impl Usage {
    pub fn new(now: Instant) -> Usage {
        Usage {
            last_request: now,
            open: 0,
            busy: None,
            checking: false,
        }
    }

    /// The proxy reports a request `ago` before `now` and `open` terminals.
    pub fn report(&mut self, now: Instant, ago: Duration, open: u32) {
        let at = now.checked_sub(ago).unwrap_or(now);
        if at > self.last_request {
            self.last_request = at;
        }
        self.open = open;
    }

    /// Quiet long enough to be asked whether it is busy (for a stop or to make room).
    fn quiet_at(&self, idle_timeout: Duration) -> Instant {
        let quiet = if idle_timeout.is_zero() {
            QUIET
        } else {
            QUIET.min(idle_timeout)
        };
        self.last_request + quiet
    }

    /// When opencode should next be asked about busy sessions (`None`: not now). Only for
    /// an instance that is ready.
    pub fn next_check(&self, idle_timeout: Duration) -> Option<Instant> {
        if self.open > 0 || self.checking {
            return None;
        }
        let quiet = self.quiet_at(idle_timeout);
        match self.busy {
            Some(c) if c.at >= quiet && c.busy => Some(c.at + BUSY_RECHECK),
            Some(c) if c.at >= quiet => {
                let stop_at = self.last_request + idle_timeout;
                (!idle_timeout.is_zero() && c.at < stop_at).then_some(stop_at)
            }
            _ => Some(quiet),
        }
    }

    /// Idle for the whole timeout, no terminal open, and opencode said after that that no
    /// session is busy: stop it.
    pub fn should_stop(&self, idle_timeout: Duration) -> bool {
        !idle_timeout.is_zero()
            && self.open == 0
            && matches!(self.busy, Some(c) if !c.busy && c.at >= self.last_request + idle_timeout)
    }

    /// Quiet, no terminal open, and not busy when last asked after going quiet: it may
    /// make room for another user's instance.
    pub fn replaceable(&self, idle_timeout: Duration) -> bool {
        self.open == 0
            && matches!(self.busy, Some(c) if !c.busy && c.at >= self.quiet_at(idle_timeout))
    }
}

/// Which instance makes room for a new one: the least recently used of those that are
/// ready and replaceable. `candidates` are (name, ready, usage).
pub fn pick_victim<'a>(
    candidates: impl IntoIterator<Item = (&'a str, bool, &'a Usage)>,
    idle_timeout: Duration,
) -> Option<&'a str> {
    candidates
        .into_iter()
        .filter(|(_, ready, u)| *ready && u.replaceable(idle_timeout))
        .min_by_key(|(_, _, u)| u.last_request)
        .map(|(name, _, _)| name)
}

/// The state of a user's instance as the proxy sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ViewState {
    /// Being started (or restarted after a crash): wait.
    Starting,
    /// Answers with `upstream` and `authorization`.
    Ready,
    /// Gave up (crash loop, cannot be started): `reason` says why.
    Failed,
    /// `max_instances` run and none is idle: wait.
    Full,
    /// Being stopped (idle, replaced, account locked).
    Stopping,
    /// None runs (and none was asked for).
    Stopped,
}

/// What the proxy gets for one user's instance (over the auth socket, proxy only).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct View {
    pub user: String,
    pub state: ViewState,
    /// `127.0.0.1:PORT` while it runs.
    #[serde(default)]
    pub upstream: Option<String>,
    /// The `Authorization` its current start accepts.
    #[serde(default)]
    pub authorization: Option<String>,
    /// The uid it runs as: the proxy relays only to a port whose listening socket is that
    /// uid's (a process of another user that took a freed port gets nothing).
    #[serde(default)]
    pub uid: Option<u32>,
    /// Why it is not ready, in words for the user.
    #[serde(default)]
    pub reason: Option<String>,
}

impl std::fmt::Debug for View {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("View")
            .field("user", &self.user)
            .field("state", &self.state)
            .field("upstream", &self.upstream)
            .field(
                "authorization",
                &self.authorization.as_ref().map(|_| "<redacted>"),
            )
            .field("reason", &self.reason)
            .finish()
    }
}

/// What the proxy reports about one user: their last request and open terminals.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Activity {
    pub user: String,
    /// Milliseconds since their last request.
    pub idle_ms: u64,
    /// Terminal WebSockets open now.
    pub open: u32,
}

/// Body of `POST /v1/auth/instances`: start `start`'s instance (if set) and note activity.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Report {
    pub start: Option<String>,
    pub activity: Vec<Activity>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn an_idle_instance_stops_only_after_opencode_says_it_is_not_busy() {
        let t = Instant::now();
        let idle = s(3600);
        let mut u = Usage::new(t);
        assert_eq!(u.next_check(idle), Some(t + QUIET), "asked once quiet");
        assert!(!u.should_stop(idle) && !u.replaceable(idle));
        u.busy = Some(BusyCheck {
            at: t + QUIET,
            busy: false,
        });
        assert!(u.replaceable(idle), "quiet and not busy");
        assert!(!u.should_stop(idle), "but not idle for the whole hour");
        assert_eq!(
            u.next_check(idle),
            Some(t + idle),
            "asked again at the hour"
        );
        u.busy = Some(BusyCheck {
            at: t + idle,
            busy: true,
        });
        assert!(!u.should_stop(idle), "a busy agent is never stopped");
        assert!(!u.replaceable(idle));
        assert_eq!(u.next_check(idle), Some(t + idle + BUSY_RECHECK));
        u.busy = Some(BusyCheck {
            at: t + idle + BUSY_RECHECK,
            busy: false,
        });
        assert!(u.should_stop(idle));
        assert_eq!(u.next_check(idle), None);
        // A request starts it all over; so does an open terminal.
        u.report(t + idle + s(40), s(0), 0);
        assert!(!u.should_stop(idle) && !u.replaceable(idle));
        u.report(t + idle + s(40), s(0), 1);
        assert_eq!(u.next_check(idle), None);
        u.last_request = t;
        u.busy = Some(BusyCheck {
            at: t + idle + s(60),
            busy: false,
        });
        assert!(!u.should_stop(idle), "terminal open");
        // A check under way is not asked for twice.
        u.open = 0;
        u.busy = None;
        u.checking = true;
        assert_eq!(u.next_check(idle), None);
    }

    #[test]
    fn short_and_zero_timeouts() {
        let t = Instant::now();
        let mut u = Usage::new(t);
        assert_eq!(u.next_check(s(3)), Some(t + s(3)), "quiet = the timeout");
        u.busy = Some(BusyCheck {
            at: t + s(3),
            busy: false,
        });
        assert!(u.should_stop(s(3)));
        assert!(!u.should_stop(Duration::ZERO), "0 = never");
        let u = Usage::new(t);
        assert_eq!(
            u.next_check(Duration::ZERO),
            Some(t + QUIET),
            "still replaceable"
        );
    }

    #[test]
    fn reports_never_move_the_last_request_back() {
        let t = Instant::now();
        let mut u = Usage::new(t + s(10));
        u.report(t + s(20), s(15), 2);
        assert_eq!(u.last_request, t + s(10));
        assert_eq!(u.open, 2);
        u.report(t + s(20), s(1), 0);
        assert_eq!(u.last_request, t + s(19));
    }

    #[test]
    fn the_least_recently_used_idle_instance_makes_room() {
        let t = Instant::now();
        let idle = s(3600);
        let quiet = |last: u64| Usage {
            last_request: t + s(last),
            open: 0,
            busy: Some(BusyCheck {
                at: t + s(last) + QUIET,
                busy: false,
            }),
            checking: false,
        };
        let a = quiet(10);
        let b = quiet(5);
        let busy = Usage {
            busy: Some(BusyCheck {
                at: t + s(200),
                busy: true,
            }),
            ..quiet(0)
        };
        let open = Usage {
            open: 1,
            ..quiet(0)
        };
        let fresh = Usage::new(t);
        let list = [
            ("opencode@a", true, &a),
            ("opencode@b", true, &b),
            ("opencode@busy", true, &busy),
            ("opencode@open", true, &open),
            ("opencode@fresh", true, &fresh),
        ];
        assert_eq!(pick_victim(list, idle), Some("opencode@b"));
        assert_eq!(pick_victim([("x", false, &b)], idle), None, "not ready");
        assert_eq!(
            pick_victim([("x", true, &busy), ("y", true, &open)], idle),
            None,
            "working instances are never killed to make room"
        );
    }

    #[test]
    fn views_hide_credentials_in_debug_output() {
        let v = View {
            user: "alice".into(),
            state: ViewState::Ready,
            upstream: Some("127.0.0.1:1".into()),
            authorization: Some("Basic c2VjcmV0".into()),
            uid: Some(1001),
            reason: None,
        };
        assert!(!format!("{v:?}").contains("c2VjcmV0"));
        let json = serde_json::to_string(&v).unwrap();
        assert!(json.contains("\"ready\""));
    }
}
