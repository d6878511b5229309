//! Per-user instances at the proxy: PID 1's views of each user's opencode (cached briefly),
//! what the proxy tells PID 1 about each user's requests and open terminals, and the
//! pages a user sees while their opencode starts or cannot.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::instances::{Activity, View, ViewState};

/// A ready view is used this long before PID 1 is asked again (a stopped or restarted
/// instance is noticed within it).
pub const FRESH: Duration = Duration::from_millis(500);
/// While an instance starts, PID 1 is asked this often (its user is waiting).
pub const POLL: Duration = Duration::from_millis(20);
/// Activity goes to PID 1 this often.
pub const REPORT_EVERY: Duration = Duration::from_secs(1);
/// A browser's page load waits this long for a starting instance, then gets the
/// "Starting your workspace…" page (which reloads itself).
pub const BROWSER_WAIT: Duration = Duration::from_secs(2);

/// Where to relay a ready instance's requests, with which credentials, to which uid.
pub fn upstream_of(v: &View) -> Option<(SocketAddr, Option<String>, Option<u32>)> {
    if v.state != ViewState::Ready {
        return None;
    }
    let addr = v.upstream.as_deref()?.parse().ok()?;
    Some((addr, v.authorization.clone(), v.uid))
}

/// PID 1's last word on each user's instance, and when it came.
#[derive(Default)]
pub struct Views {
    map: HashMap<String, (View, Instant)>,
}

impl Views {
    /// A ready view of `user`'s instance that is fresh enough to use.
    pub fn fresh(&self, user: &str, now: Instant) -> Option<&View> {
        self.map
            .get(user)
            .filter(|(v, at)| v.state == ViewState::Ready && now.duration_since(*at) < FRESH)
            .map(|(v, _)| v)
    }

    /// PID 1 answered with every instance's view: those it did not name are gone.
    pub fn replace(&mut self, views: Vec<View>, now: Instant) {
        self.map = views
            .into_iter()
            .map(|v| (v.user.clone(), (v, now)))
            .collect();
    }

    pub fn forget(&mut self, user: &str) {
        self.map.remove(user);
    }
}

#[derive(Debug, Clone, Copy)]
struct Use {
    last: Instant,
    open: u32,
    reported: bool,
}

/// Requests and open terminals per user since the last report.
#[derive(Default)]
pub struct Usage {
    map: HashMap<String, Use>,
}

impl Usage {
    /// `user` made a request now.
    pub fn request(&mut self, user: &str, now: Instant) {
        let u = self.map.entry(user.to_string()).or_insert(Use {
            last: now,
            open: 0,
            reported: false,
        });
        u.last = now;
        u.reported = false;
    }

    /// A terminal of `user` opened (+1) or closed (-1).
    fn terminal(&mut self, user: &str, opened: bool, now: Instant) {
        self.request(user, now);
        if let Some(u) = self.map.get_mut(user) {
            u.open = if opened {
                u.open.saturating_add(1)
            } else {
                u.open.saturating_sub(1)
            };
        }
    }

    /// What to tell PID 1: users with a request since the last report or a terminal
    /// open. Reported users without a terminal are forgotten.
    pub fn report(&mut self, now: Instant) -> Vec<Activity> {
        let out = self
            .map
            .iter()
            .filter(|(_, u)| !u.reported || u.open > 0)
            .map(|(user, u)| Activity {
                user: user.clone(),
                idle_ms: now.saturating_duration_since(u.last).as_millis() as u64,
                open: u.open,
            })
            .collect();
        self.map.retain(|_, u| !u.reported || u.open > 0);
        for u in self.map.values_mut() {
            u.reported = true;
        }
        out
    }
}

/// Counts an open terminal of a user for as long as it lives.
pub struct Terminal {
    usage: Arc<Mutex<Usage>>,
    user: String,
}

impl Terminal {
    pub fn open(usage: Arc<Mutex<Usage>>, user: &str) -> Terminal {
        if let Ok(mut u) = usage.lock() {
            u.terminal(user, true, Instant::now());
        }
        Terminal {
            usage,
            user: user.to_string(),
        }
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        if let Ok(mut u) = self.usage.lock() {
            u.terminal(&self.user, false, Instant::now());
        }
    }
}

/// The page a browser gets while its user's opencode is not ready: it reloads itself
/// while the instance starts, and says why when it cannot.
pub fn page(view: &View) -> String {
    use super::pages::escape;
    let (title, text, refresh) = match view.state {
        ViewState::Starting | ViewState::Stopping | ViewState::Stopped => (
            "Starting your workspace…",
            "Your own opencode is being started. This page reloads itself when it is ready."
                .to_string(),
            true,
        ),
        ViewState::Full => (
            "No room for your workspace right now",
            view.reason
                .clone()
                .unwrap_or_else(|| "all workspaces are in use".into()),
            true,
        ),
        ViewState::Failed | ViewState::Ready => (
            "Your workspace cannot start",
            view.reason
                .clone()
                .unwrap_or_else(|| "opencode did not start".into()),
            false,
        ),
    };
    let detail = match (view.state, &view.reason) {
        (ViewState::Starting, Some(r)) => format!("<p class=\"why\">{}.</p>", escape(r)),
        _ => String::new(),
    };
    let meta = if refresh {
        format!(
            "<meta http-equiv=\"refresh\" content=\"{}\">",
            if view.state == ViewState::Full { 30 } else { 2 }
        )
    } else {
        String::new()
    };
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">{meta}\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{t}</title><style>body{{font-family:system-ui,sans-serif;max-width:36rem;\
         margin:4rem auto;padding:0 1rem;color:#222}}h1{{font-size:1.4rem}}.why{{color:#666}}\
         </style></head><body><h1>{t}</h1><p>{x}</p>{detail}\
         <p><a href=\"/_occ/logout\">Log out</a></p></body></html>",
        t = escape(title),
        x = escape(&text),
    )
}

/// The JSON an API client gets instead (with 503 and Retry-After).
pub fn json(view: &View) -> serde_json::Value {
    let code = match view.state {
        ViewState::Full => "instances_full",
        ViewState::Failed => "instance_failed",
        _ => "instance_starting",
    };
    serde_json::json!({
        "error": code,
        "message": view.reason.clone().unwrap_or_else(|| "your opencode is starting".into()),
        "state": view.state,
    })
}

/// Seconds for Retry-After.
pub fn retry_after(view: &View) -> u64 {
    match view.state {
        ViewState::Full | ViewState::Failed => 30,
        _ => 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(user: &str, state: ViewState) -> View {
        View {
            user: user.into(),
            state,
            upstream: Some("127.0.0.1:4100".into()),
            authorization: Some("Basic eA==".into()),
            uid: Some(1001),
            reason: Some("why <b>".into()),
        }
    }

    #[test]
    fn only_fresh_ready_views_are_used() {
        let t = Instant::now();
        let mut v = Views::default();
        v.replace(
            vec![
                view("alice", ViewState::Ready),
                view("bob", ViewState::Starting),
            ],
            t,
        );
        assert!(v.fresh("alice", t + Duration::from_millis(100)).is_some());
        assert!(v.fresh("alice", t + FRESH).is_none(), "stale");
        assert!(v.fresh("bob", t).is_none(), "not ready");
        v.replace(vec![view("bob", ViewState::Ready)], t);
        assert!(v.fresh("alice", t).is_none(), "gone from PID 1's list");
        v.forget("bob");
        assert!(v.fresh("bob", t).is_none());
        let (addr, auth, uid) = upstream_of(&view("a", ViewState::Ready)).unwrap();
        assert_eq!(uid, Some(1001));
        assert_eq!(addr.port(), 4100);
        assert_eq!(auth.as_deref(), Some("Basic eA=="));
        assert!(upstream_of(&view("a", ViewState::Starting)).is_none());
    }

    #[test]
    fn activity_reports_requests_once_and_terminals_while_open() {
        let t = Instant::now();
        let usage = Arc::new(Mutex::new(Usage::default()));
        usage.lock().unwrap().request("alice", t);
        let r = usage.lock().unwrap().report(t + Duration::from_millis(300));
        assert_eq!(r.len(), 1);
        assert_eq!((r[0].idle_ms, r[0].open), (300, 0));
        assert!(usage.lock().unwrap().report(t).is_empty(), "reported once");
        let term = Terminal::open(usage.clone(), "bob");
        assert_eq!(usage.lock().unwrap().report(t).len(), 1);
        let again = usage.lock().unwrap().report(t);
        assert_eq!(again.len(), 1, "an open terminal is reported every time");
        assert_eq!(again[0].open, 1);
        drop(term);
        let closed = usage.lock().unwrap().report(t);
        assert_eq!(closed[0].open, 0, "the close is reported");
        assert!(usage.lock().unwrap().report(t).is_empty());
    }

    #[test]
    fn pages_say_why_and_escape_it() {
        let starting = page(&view("a", ViewState::Starting));
        assert!(starting.contains("Starting your workspace"));
        assert!(starting.contains("http-equiv=\"refresh\""));
        assert!(!starting.contains("<b>"));
        let failed = page(&view("a", ViewState::Failed));
        assert!(failed.contains("cannot start") && failed.contains("why &lt;b&gt;"));
        assert!(!failed.contains("refresh"));
        let full = page(&view("a", ViewState::Full));
        assert!(full.contains("No room"));
        assert_eq!(json(&view("a", ViewState::Full))["error"], "instances_full");
        assert_eq!(retry_after(&view("a", ViewState::Starting)), 2);
    }
}
