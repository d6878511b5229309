//! The status report: one struct that PID 1 fills in, rendered as JSON for tools or as text
//! for people (with the Security section the host CLI shows).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub uptime_seconds: u64,
    pub opencode: Opencode,
    /// The authenticating proxy, when `auth = proxy`.
    #[serde(default)]
    pub proxy: Option<ProxyStatus>,
    pub security: Security,
    pub users: UsersStatus,
    /// `per-user` or `shared`.
    #[serde(default)]
    pub layout: String,
    /// Most per-user instances at once.
    #[serde(default)]
    pub max_instances: u32,
    /// Idle instances stop after this many seconds (0: never).
    #[serde(default)]
    pub instance_idle_timeout_seconds: u64,
    /// The opencode processes: each user's own (per-user), or the shared one.
    #[serde(default)]
    pub instances: Vec<Instance>,
}

/// One opencode process and whom it serves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Instance {
    /// The Linux user it runs as.
    pub user: String,
    /// starting, ready, unhealthy, restarting, backoff, stopping, failed
    pub state: String,
    pub pid: Option<i32>,
    /// Its port on 127.0.0.1 (behind the proxy).
    pub port: u16,
    /// When the running process started (Unix time, seconds).
    pub started: Option<u64>,
    /// When the proxy last relayed a request for it (Unix time, seconds).
    pub last_request: Option<u64>,
    /// Resident memory of its process group.
    pub rss_kib: Option<u64>,
    pub restarts: u32,
    /// Open terminal WebSockets.
    pub terminals: u32,
    /// Why it is not running (it gave up), when it is not.
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Opencode {
    /// gated, starting, ready, unhealthy, restarting, backoff, stopped
    pub state: String,
    pub ready: bool,
    pub pid: Option<i32>,
    pub uptime_seconds: Option<u64>,
    pub restarts: u32,
    pub last_exit_code: Option<i32>,
    pub last_exit_seconds_ago: Option<u64>,
    pub listen: String,
    pub command: Vec<String>,
    /// Why opencode is gated, when it is.
    pub gate_reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProxyStatus {
    /// starting, ready, restarting, backoff, …
    pub state: String,
    pub ready: bool,
    pub pid: Option<i32>,
    pub restarts: u32,
    pub last_exit_code: Option<i32>,
    /// The public address it serves.
    pub listen: String,
    /// The unprivileged user it runs as.
    pub user: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Security {
    pub binding: String,
    pub network_exposed: bool,
    pub auth_users: Vec<String>,
    /// Who checks logins: `proxy` (occ-init's proxy, PAM), `opencode` or `none`.
    #[serde(default)]
    pub auth_enforced_by: String,
    pub server_password: bool,
    pub trust_proxy: bool,
    pub rate_limit_attempts: u32,
    pub rate_limit_window_seconds: u64,
    pub allow_unauthenticated_network: bool,
    /// HTTPS at the proxy.
    #[serde(default)]
    pub tls: TlsStatus,
    /// Personal API tokens that exist (expired ones included).
    #[serde(default)]
    pub tokens: usize,
    /// Single sign-on (OpenID Connect), when configured.
    #[serde(default)]
    pub oidc: Option<OidcStatus>,
    /// Passwords are accepted (false: single sign-on and tokens only).
    #[serde(default = "yes")]
    pub password_login: bool,
}

fn yes() -> bool {
    true
}

/// `security.oidc`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OidcStatus {
    pub issuer: String,
    /// The proxy reached the provider at its last try (`None`: not tried yet).
    pub reachable: Option<bool>,
    pub error: Option<String>,
    /// The provider offers device login.
    pub device: bool,
    pub allowed_groups: Vec<String>,
    pub create_users: bool,
    /// The client secret file could be read.
    pub secret: bool,
}

/// The proxy's TLS (`security.tls`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsStatus {
    /// `off`, `self-signed` or `files`.
    pub mode: String,
    /// The certificate's subject alternative names.
    #[serde(default)]
    pub names: Vec<String>,
    #[serde(default)]
    pub subject: Option<String>,
    /// SHA-256 of the served certificate, `AB:CD:…` as browsers show it.
    #[serde(default)]
    pub fingerprint_sha256: Option<String>,
    /// RFC 3339 (UTC).
    #[serde(default)]
    pub not_after: Option<String>,
    #[serde(default)]
    pub expired: bool,
    /// Less than 30 days left.
    #[serde(default)]
    pub expiring: bool,
    /// The files, or the self-signed certificate's directory.
    #[serde(default)]
    pub source: Option<String>,
    /// HTTPS is served now (a usable certificate is loaded).
    #[serde(default)]
    pub serving: bool,
    /// Why nothing is served, or why the last new certificate was refused.
    #[serde(default)]
    pub error: Option<String>,
}

impl Default for TlsStatus {
    fn default() -> TlsStatus {
        TlsStatus {
            mode: "off".into(),
            names: Vec::new(),
            subject: None,
            fingerprint_sha256: None,
            not_after: None,
            expired: false,
            expiring: false,
            source: None,
            serving: false,
            error: None,
        }
    }
}

/// Logins cross the network in cleartext: exposed, the proxy checks passwords, no TLS and
/// no TLS proxy in front.
pub fn cleartext_logins(sec: &Security) -> bool {
    sec.network_exposed
        && sec.auth_enforced_by == "proxy"
        && sec.tls.mode == "off"
        && !sec.trust_proxy
}

/// The warning (status and boot log) when logins travel unencrypted, with the fix.
pub const CLEARTEXT_WARNING: &str = "Warning: logins travel unencrypted (exposed without TLS)!";
pub const CLEARTEXT_FIX: &str = "Fix: set OCC_TLS=self-signed (or OCC_TLS=files with OCC_TLS_CERT_FILE and OCC_TLS_KEY_FILE), or put a TLS proxy in front and set OCC_TRUST_PROXY=true";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsersStatus {
    pub manifest: String,
    pub persisted: bool,
    /// The manifest's problem, when it was refused.
    pub error: Option<String>,
}

/// The table of opencode instances (user, state, pid, port, uptime, last request, memory).
pub fn render_instances(s: &Status, color: bool) -> String {
    let paint = |code: &str, t: &str| {
        if color {
            format!("\x1b[{code}m{t}\x1b[0m")
        } else {
            t.to_string()
        }
    };
    let green = |t: &str| paint("32", t);
    let yellow = |t: &str| paint("33", t);
    let red = |t: &str| paint("1;31", t);
    if s.instances.is_empty() {
        return match s.layout.as_str() {
            "per-user" => "no instance runs (each starts on its user's first request)\n".into(),
            _ => "no instance runs\n".into(),
        };
    }
    let mut out = String::new();
    {
        out.push_str(&format!(
            "{:<16} {:<11} {:>8} {:>6} {:>8} {:>13} {:>9}\n",
            "USER", "STATE", "PID", "PORT", "UP", "LAST REQUEST", "RSS"
        ));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let dash = || "-".to_string();
        for i in &s.instances {
            let state = match i.state.as_str() {
                "ready" => green("ready"),
                "failed" => red("failed"),
                other => yellow(other),
            };
            // Padding counts the colour codes too: pad the word, then paint it.
            let pad = 11usize.saturating_sub(i.state.len());
            out.push_str(&format!(
                "{:<16} {state}{} {:>8} {:>6} {:>8} {:>13} {:>9}\n",
                i.user,
                " ".repeat(pad),
                i.pid.map(|p| p.to_string()).unwrap_or_else(dash),
                if i.port == 0 {
                    dash()
                } else {
                    i.port.to_string()
                },
                i.started
                    .map(|t| ago(now.saturating_sub(t)))
                    .unwrap_or_else(dash),
                i.last_request
                    .map(|t| format!("{} ago", ago(now.saturating_sub(t))))
                    .unwrap_or_else(dash),
                i.rss_kib
                    .map(|k| format!("{} MiB", k / 1024))
                    .unwrap_or_else(dash),
            ));
            if let Some(why) = &i.reason {
                out.push_str(&format!("{:<16} {why}\n", ""));
            }
        }
    }
    out
}

fn ago(secs: u64) -> String {
    match secs {
        0..=59 => format!("{secs}s"),
        60..=3599 => format!("{}m{:02}s", secs / 60, secs % 60),
        _ => format!("{}h{:02}m", secs / 3600, (secs % 3600) / 60),
    }
}

/// The report for people. `color` adds ANSI colours (only on a terminal without NO_COLOR).
pub fn render(s: &Status, color: bool) -> String {
    let paint = |code: &str, t: &str| {
        if color {
            format!("\x1b[{code}m{t}\x1b[0m")
        } else {
            t.to_string()
        }
    };
    let green = |t: &str| paint("32", t);
    let yellow = |t: &str| paint("33", t);
    let red = |t: &str| paint("1;31", t);
    let mut out = String::new();
    let o = &s.opencode;
    out.push_str(&format!(
        "occ-init {} (up {})\n\nopencode\n--------\n",
        s.version,
        ago(s.uptime_seconds)
    ));
    if s.layout == "per-user" {
        let idle = match s.instance_idle_timeout_seconds {
            0 => "never stopped when idle".to_string(),
            n => format!("stopped after {} idle", ago(n)),
        };
        out.push_str(&format!(
            "Instances:   per-user: each login user's own opencode, as that user, started on demand\n             {} running, at most {}, {idle}\n",
            s.instances.iter().filter(|i| i.pid.is_some()).count(),
            s.max_instances
        ));
    } else if !s.layout.is_empty() {
        out.push_str("Instances:   shared: one opencode for every user\n");
    }
    let state = match o.state.as_str() {
        "ready" => green("ready"),
        "gated" | "stopped" => red(&o.state),
        other => yellow(other),
    };
    let mut line = format!("State:       {state}");
    if let Some(pid) = o.pid {
        line.push_str(&format!(" (pid {pid}"));
        if let Some(up) = o.uptime_seconds {
            line.push_str(&format!(", up {}", ago(up)));
        }
        line.push(')');
    }
    out.push_str(&line);
    out.push('\n');
    out.push_str(&format!("Listen:      {}\n", o.listen));
    out.push_str(&format!(
        "Health:      {}\n",
        if o.ready {
            green("healthy")
        } else {
            yellow("not ready")
        }
    ));
    let last = match (o.last_exit_code, o.last_exit_seconds_ago) {
        (Some(c), Some(a)) => format!(" (last exit: status {c}, {} ago)", ago(a)),
        _ => String::new(),
    };
    out.push_str(&format!("Restarts:    {}{last}\n", o.restarts));
    if let Some(why) = &o.gate_reason {
        out.push_str(&format!("Gate:        {}\n", red("CLOSED")));
        out.push_str(&format!("             {why}\n"));
    }
    if !s.instances.is_empty() {
        out.push('\n');
        out.push_str(&render_instances(s, color));
    }
    if let Some(p) = &s.proxy {
        let state = match p.state.as_str() {
            "ready" => green("ready"),
            "stopped" => red(&p.state),
            other => yellow(other),
        };
        out.push_str("\nproxy\n-----\n");
        let pid = p.pid.map(|pid| format!(" (pid {pid})")).unwrap_or_default();
        out.push_str(&format!("State:       {state}{pid}\n"));
        out.push_str(&format!("Listen:      {} (as user {})\n", p.listen, p.user));
        let last = p
            .last_exit_code
            .map(|c| format!(" (last exit: status {c})"))
            .unwrap_or_default();
        out.push_str(&format!("Restarts:    {}{last}\n", p.restarts));
    }
    let sec = &s.security;
    out.push_str("\nSecurity\n--------\n");
    let badge = if sec.network_exposed {
        yellow("[NETWORK EXPOSED]")
    } else {
        green("[LOCAL ONLY]")
    };
    out.push_str(&format!("Binding:     {} {badge}\n", sec.binding));
    let users = if sec.auth_users.is_empty() {
        yellow("None configured")
    } else {
        sec.auth_users.join(", ")
    };
    out.push_str(&format!("Auth users:  {users}\n"));
    let n = sec.auth_users.len();
    let auth = match sec.auth_enforced_by.as_str() {
        "proxy" => format!(
            "occ-init proxy: {}{}personal API tokens ({}); {n} user{}",
            if sec.password_login {
                "PAM passwords, "
            } else {
                ""
            },
            sec.oidc
                .as_ref()
                .map(|o| format!("OIDC ({}), ", o.issuer))
                .unwrap_or_default(),
            sec.tokens,
            if n == 1 { "" } else { "s" }
        ),
        "opencode" => "opencode (its own login)".to_string(),
        _ => yellow("none — opencode is unsecured"),
    };
    out.push_str(&format!("Auth:        {auth}\n"));
    if sec.server_password {
        out.push_str("Server pw:   set (OPENCODE_SERVER_PASSWORD from file)\n");
    }
    if let Some(o) = &sec.oidc {
        let state = match (o.reachable, &o.error, o.secret) {
            (_, _, false) => red("no client secret (see the boot log)"),
            (Some(true), _, true) => green("reachable"),
            (Some(false), Some(e), true) => red(&format!("unreachable: {e}")),
            (Some(false), None, true) => red("unreachable"),
            (None, _, true) => yellow("not tried yet"),
        };
        out.push_str(&format!(
            "OIDC:        {} — {state}{}\n",
            o.issuer,
            if o.device { ", device login" } else { "" }
        ));
    }
    out.push_str(&format!(
        "TLS:         {}\n",
        tls_line(&sec.tls, &red, &yellow)
    ));
    if let (true, Some(e)) = (sec.tls.serving, &sec.tls.error) {
        out.push_str(&format!(
            "TLS error:   {} (the certificate above stays)\n",
            red(e)
        ));
    }
    out.push_str(&format!(
        "Trust proxy: {}\n",
        if sec.trust_proxy { "yes" } else { "no" }
    ));
    out.push_str(&format!(
        "Rate limit:  {} attempts / {}s window\n",
        sec.rate_limit_attempts, sec.rate_limit_window_seconds
    ));
    out.push_str(&format!(
        "\nUsers manifest: {} ({})\n",
        s.users.manifest,
        if s.users.persisted {
            "changes persist".to_string()
        } else {
            yellow("not persisted: manifest is read-only")
        }
    ));
    if let Some(e) = &s.users.error {
        out.push_str(&format!("Manifest error: {}\n", red(e)));
    }
    let unprotected = match sec.auth_enforced_by.as_str() {
        "proxy" => sec.auth_users.is_empty(),
        "opencode" => false,
        _ => true,
    };
    if sec.network_exposed && unprotected {
        out.push_str(&format!(
            "\n{}\nAdd users: docker exec <container> occ-init user add NAME\n",
            red("Warning: Network exposed without authentication!")
        ));
    }
    if cleartext_logins(sec) {
        out.push_str(&format!(
            "\n{}\n{CLEARTEXT_FIX}\n",
            yellow(CLEARTEXT_WARNING)
        ));
    }
    out
}

/// The `TLS:` line: mode, names, expiry and fingerprint, or why nothing is served.
fn tls_line(
    t: &TlsStatus,
    red: &dyn Fn(&str) -> String,
    yellow: &dyn Fn(&str) -> String,
) -> String {
    if t.mode == "off" {
        return "off (plain HTTP)".into();
    }
    if !t.serving {
        return format!(
            "{} — {}",
            t.mode,
            red(&format!(
                "NOT SERVING: {}",
                t.error.as_deref().unwrap_or("no certificate yet")
            ))
        );
    }
    let until = t.not_after.as_deref().unwrap_or("?");
    let until = if t.expired {
        red(&format!("EXPIRED {until}"))
    } else if t.expiring {
        yellow(&format!("expires {until}"))
    } else {
        format!("until {until}")
    };
    format!(
        "{} — {} ({until})\n             SHA-256 {}",
        t.mode,
        t.names.join(", "),
        t.fingerprint_sha256.as_deref().unwrap_or("?")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Status {
        Status {
            version: "0.1.0".into(),
            uptime_seconds: 75,
            opencode: Opencode {
                state: "gated".into(),
                ready: false,
                pid: None,
                uptime_seconds: None,
                restarts: 0,
                last_exit_code: None,
                last_exit_seconds_ago: None,
                listen: "0.0.0.0:3000".into(),
                command: vec!["opencode".into(), "serve".into()],
                gate_reason: Some("no user".into()),
            },
            proxy: Some(ProxyStatus {
                state: "ready".into(),
                ready: true,
                pid: Some(7),
                restarts: 0,
                last_exit_code: None,
                listen: "0.0.0.0:3000".into(),
                user: "occ-proxy".into(),
            }),
            security: Security {
                binding: "0.0.0.0".into(),
                network_exposed: true,
                auth_users: vec![],
                auth_enforced_by: "proxy".into(),
                server_password: false,
                trust_proxy: false,
                rate_limit_attempts: 5,
                rate_limit_window_seconds: 60,
                allow_unauthenticated_network: false,
                tls: TlsStatus::default(),
                tokens: 0,
                oidc: None,
                password_login: true,
            },
            users: UsersStatus {
                manifest: "/var/lib/occ/users.toml".into(),
                persisted: true,
                error: None,
            },
            layout: "shared".into(),
            max_instances: 16,
            instance_idle_timeout_seconds: 3600,
            instances: Vec::new(),
        }
    }

    #[test]
    fn per_user_instances_are_listed_with_their_memory() {
        let mut s = sample();
        s.layout = "per-user".into();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        s.instances = vec![
            Instance {
                user: "alice".into(),
                state: "ready".into(),
                pid: Some(41),
                port: 40001,
                started: Some(now - 300),
                last_request: Some(now - 10),
                rss_kib: Some(300 * 1024),
                restarts: 0,
                terminals: 1,
                reason: None,
            },
            Instance {
                user: "bob".into(),
                state: "failed".into(),
                pid: None,
                port: 0,
                started: None,
                last_request: Some(now - 70),
                rss_kib: None,
                restarts: 5,
                terminals: 0,
                reason: Some("crash loop".into()),
            },
        ];
        let text = render(&s, false);
        assert!(text.contains("Instances:   per-user"), "{text}");
        assert!(
            text.contains("1 running, at most 16, stopped after 1h00m idle"),
            "{text}"
        );
        let alice = text.lines().find(|l| l.starts_with("alice")).unwrap();
        for want in ["ready", "41", "40001", "5m00s", "10s ago", "300 MiB"] {
            assert!(alice.contains(want), "{want} in {alice:?}");
        }
        assert!(text.contains("crash loop"));
        let back: Status = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
        let v: serde_json::Value = serde_json::to_value(&s).unwrap();
        for key in [
            "user",
            "state",
            "pid",
            "port",
            "started",
            "last_request",
            "rss_kib",
        ] {
            assert!(v["instances"][0].get(key).is_some(), "{key}");
        }
    }

    #[test]
    fn security_section_uses_the_seed_wording() {
        let text = render(&sample(), false);
        for want in [
            "Security\n--------\n",
            "Binding:     0.0.0.0 [NETWORK EXPOSED]",
            "Auth users:  None configured",
            "Trust proxy: no",
            "Rate limit:  5 attempts / 60s window",
            "Warning: Network exposed without authentication!",
            "Add users: docker exec <container> occ-init user add NAME",
            "State:       gated",
            "(changes persist)",
            "Auth:        occ-init proxy: PAM passwords, personal API tokens (0); 0 users",
            "proxy\n-----\nState:       ready (pid 7)",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
        assert!(!text.contains('\x1b'));
    }

    #[test]
    fn local_with_users_has_no_warning() {
        let mut s = sample();
        s.security.binding = "127.0.0.1".into();
        s.security.network_exposed = false;
        s.security.auth_users = vec!["alice".into(), "bob".into()];
        s.users.persisted = false;
        s.opencode.state = "ready".into();
        s.opencode.ready = true;
        s.opencode.pid = Some(7);
        s.opencode.uptime_seconds = Some(3700);
        s.opencode.gate_reason = None;
        let text = render(&s, true);
        assert!(text.contains("[LOCAL ONLY]"));
        assert!(text.contains("Auth users:  alice, bob"));
        assert!(text.contains("(pid 7, up 1h01m)"));
        assert!(text.contains("not persisted: manifest is read-only"));
        assert!(!text.contains("Warning"));
        assert!(text.contains('\x1b'));
    }

    #[test]
    fn tls_is_shown_with_its_fingerprint_or_why_it_is_not_served() {
        let mut s = sample();
        s.security.auth_users = vec!["alice".into()];
        let text = render(&s, false);
        assert!(text.contains("TLS:         off (plain HTTP)"), "{text}");
        assert!(text.contains(CLEARTEXT_WARNING), "{text}");
        assert!(text.contains("OCC_TLS=self-signed"), "{text}");
        // Behind a TLS proxy, or local only: no warning.
        s.security.trust_proxy = true;
        assert!(!render(&s, false).contains(CLEARTEXT_WARNING));
        s.security.trust_proxy = false;
        s.security.tls = TlsStatus {
            mode: "self-signed".into(),
            names: vec!["localhost".into(), "127.0.0.1".into()],
            fingerprint_sha256: Some("AB:CD".into()),
            not_after: Some("2027-12-07T06:00:00Z".into()),
            serving: true,
            ..TlsStatus::default()
        };
        let text = render(&s, false);
        assert!(
            text.contains("TLS:         self-signed — localhost, 127.0.0.1 (until 2027-12-07T06:00:00Z)\n             SHA-256 AB:CD"),
            "{text}"
        );
        assert!(!text.contains(CLEARTEXT_WARNING), "{text}");
        s.security.tls.error = Some("/c.pem: holds no certificate".into());
        let text = render(&s, false);
        assert!(
            text.contains(
                "TLS error:   /c.pem: holds no certificate (the certificate above stays)"
            ),
            "{text}"
        );
        s.security.tls.serving = false;
        let text = render(&s, false);
        assert!(
            text.contains("TLS:         self-signed — NOT SERVING: /c.pem: holds no certificate"),
            "{text}"
        );
        let v: serde_json::Value = serde_json::to_value(&s).unwrap();
        assert_eq!(v["security"]["tls"]["mode"], "self-signed");
        assert_eq!(v["security"]["tls"]["fingerprint_sha256"], "AB:CD");
        assert_eq!(v["security"]["tls"]["names"][0], "localhost");
        assert_eq!(v["security"]["tls"]["not_after"], "2027-12-07T06:00:00Z");
    }

    #[test]
    fn json_round_trips() {
        let s = sample();
        let back: Status = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn users_without_a_password_check_are_still_a_warning() {
        let mut s = sample();
        s.security.auth_users = vec!["alice".into()];
        s.security.auth_enforced_by = "none".into();
        let text = render(&s, false);
        assert!(
            text.contains("Auth:        none — opencode is unsecured"),
            "{text}"
        );
        assert!(
            text.contains("Network exposed without authentication!"),
            "{text}"
        );
        s.security.auth_enforced_by = "proxy".into();
        let text = render(&s, false);
        assert!(
            text.contains(
                "Auth:        occ-init proxy: PAM passwords, personal API tokens (0); 1 user\n"
            ),
            "{text}"
        );
        assert!(!text.contains("without authentication"), "{text}");
    }
}
