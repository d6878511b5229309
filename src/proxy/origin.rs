//! Cross-origin requests get nothing: the pure check the proxy runs before it lets a
//! request with a user's credentials through. `SameSite=Strict` keeps other *sites* out,
//! but every port of a host name is the same site, and cookies are not port-scoped, so a
//! page served from `http://localhost:45080` would otherwise use a session of
//! `http://localhost:3000` (no-cors posts to `/pty`, terminals over WebSocket, login CSRF).
//!
//! The rules, from the request's `Origin`, `Sec-Fetch-Site` and `Sec-Fetch-Mode`:
//! - an `Origin` that is neither the proxy's own nor in `trusted_origins` (or is `null`):
//!   refused, whatever the method;
//! - without `Origin`, a `Sec-Fetch-Site` other than `same-origin` or `none`: refused for
//!   anything but a safe (`GET`/`HEAD`) top-level navigation; every WebSocket upgrade and
//!   every state-changing method is refused;
//! - neither header (curl, the TUI, the SDK, old browsers): allowed.
//!
//! The proxy's own origin is `scheme://Host`; with `trust_proxy`, the host is the first
//! `X-Forwarded-Host` and the scheme follows `X-Forwarded-Proto`.

/// An origin in canonical form: `scheme://host[:port]`, lower case, default port left out.
/// `None` for anything else (a path, userinfo, another scheme, `null`).
pub fn normalize(origin: &str) -> Option<String> {
    let o = origin.trim().trim_end_matches('/');
    let (scheme, rest) = o.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "http" => "80",
        "https" => "443",
        _ => return None,
    };
    let rest = rest.to_ascii_lowercase();
    if rest.is_empty() || rest.contains(['/', '?', '#', '@', '\\', ' ']) {
        return None;
    }
    let (host, port) = match rest.strip_prefix('[') {
        Some(v6) => {
            let (addr, after) = v6.split_once(']')?;
            addr.parse::<std::net::Ipv6Addr>().ok()?;
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':')?),
            };
            (format!("[{addr}]"), port)
        }
        None => match rest.split_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (rest.clone(), None),
        },
    };
    let host_ok = !host.is_empty()
        && (host.starts_with('[')
            || host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_')));
    if !host_ok {
        return None;
    }
    match port {
        None => Some(format!("{scheme}://{host}")),
        Some(p) if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) => None,
        Some(p) if p.parse::<u32>().ok()? > 65535 => None,
        Some(p) if p.trim_start_matches('0') == default_port => Some(format!("{scheme}://{host}")),
        Some(p) => Some(format!("{scheme}://{host}:{}", p.parse::<u32>().ok()?)),
    }
}

/// The proxy's own origin as the client sees it, from `Host` (or, behind a trusted proxy,
/// the first `X-Forwarded-Host`); `None` when the request names no host.
pub fn own_origin(
    host: Option<&str>,
    forwarded_host: Option<&str>,
    https: bool,
    trust_proxy: bool,
) -> Option<String> {
    let fwd = forwarded_host
        .filter(|_| trust_proxy)
        .and_then(|f| f.split(',').next())
        .map(str::trim)
        .filter(|h| !h.is_empty());
    let host = fwd.or(host.map(str::trim)).filter(|h| !h.is_empty())?;
    normalize(&format!(
        "{}://{host}",
        if https { "https" } else { "http" }
    ))
}

/// What the check looks at.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    pub method: &'a str,
    /// The request asks to upgrade (a WebSocket).
    pub upgrade: bool,
    pub origin: Option<&'a str>,
    pub fetch_site: Option<&'a str>,
    pub fetch_mode: Option<&'a str>,
    /// The proxy's own origin ([`own_origin`]).
    pub own: Option<&'a str>,
    /// `trusted_origins`, each already [`normalize`]d.
    pub trusted: &'a [String],
}

/// `Err(why)` when the request comes from a page of another origin.
pub fn check(f: &Facts<'_>) -> Result<(), &'static str> {
    let safe = matches!(f.method, "GET" | "HEAD") && !f.upgrade;
    if let Some(origin) = f.origin {
        return match normalize(origin) {
            Some(o) if Some(o.as_str()) == f.own || f.trusted.contains(&o) => Ok(()),
            _ => Err("a page of another origin sent this request"),
        };
    }
    match f
        .fetch_site
        .map(|s| s.trim().to_ascii_lowercase())
        .as_deref()
    {
        None | Some("same-origin") | Some("none") => Ok(()),
        Some(_) if safe && f.fetch_mode.map(str::trim) == Some("navigate") => Ok(()),
        Some(_) => Err("a page of another origin sent this request"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_normalize() {
        for (i, o) in [
            ("http://localhost:3000", Some("http://localhost:3000")),
            ("HTTP://LocalHost:3000/", Some("http://localhost:3000")),
            ("http://localhost:80", Some("http://localhost")),
            ("https://x.example:443", Some("https://x.example")),
            ("https://x.example:0443", Some("https://x.example")),
            ("http://[::1]:3000", Some("http://[::1]:3000")),
            ("http://127.0.0.1", Some("http://127.0.0.1")),
            ("null", None),
            ("", None),
            ("ftp://x", None),
            ("http://", None),
            ("http://x/path", None),
            ("http://user@x", None),
            ("http://x:99999", None),
            ("http://x:", None),
            ("http://[zz]:1", None),
            ("http://x y", None),
        ] {
            assert_eq!(normalize(i).as_deref(), o, "{i:?}");
        }
        assert_eq!(
            own_origin(Some("LOCALHOST:3000"), None, false, false).as_deref(),
            Some("http://localhost:3000")
        );
        assert_eq!(
            own_origin(Some("10.0.0.1:3000"), Some("ide.example, lb"), true, true).as_deref(),
            Some("https://ide.example")
        );
        assert_eq!(
            own_origin(Some("10.0.0.1:3000"), Some("ide.example"), false, false).as_deref(),
            Some("http://10.0.0.1:3000"),
            "X-Forwarded-Host only behind a trusted proxy"
        );
        assert_eq!(own_origin(None, None, false, false), None);
    }

    fn facts<'a>(method: &'a str, origin: Option<&'a str>, site: Option<&'a str>) -> Facts<'a> {
        Facts {
            method,
            upgrade: false,
            origin,
            fetch_site: site,
            fetch_mode: None,
            own: Some("http://localhost:3000"),
            trusted: &[],
        }
    }

    #[test]
    fn another_port_of_the_same_host_gets_nothing() {
        let evil = Some("http://localhost:45080");
        // The no-cors POST to /pty, the terminal's WebSocket, login CSRF.
        assert!(check(&facts("POST", evil, Some("same-site"))).is_err());
        let ws = Facts {
            upgrade: true,
            ..facts("GET", evil, Some("same-site"))
        };
        assert!(check(&ws).is_err());
        assert!(check(&facts("GET", evil, None)).is_err(), "a CORS GET");
        assert!(check(&facts("POST", Some("null"), None)).is_err());
        // No Origin but fetch metadata saying another origin: only navigations pass.
        assert!(check(&facts("POST", None, Some("same-site"))).is_err());
        assert!(
            check(&facts("GET", None, Some("cross-site"))).is_err(),
            "<img src>"
        );
        let nav = Facts {
            fetch_mode: Some("navigate"),
            ..facts("GET", None, Some("cross-site"))
        };
        assert!(
            check(&nav).is_ok(),
            "a link from elsewhere still opens the page"
        );
        let ws_nav = Facts {
            upgrade: true,
            ..nav
        };
        assert!(check(&ws_nav).is_err());
    }

    #[test]
    fn the_own_origin_and_trusted_ones_pass() {
        let own = Some("http://localhost:3000");
        assert!(check(&facts("POST", own, Some("same-origin"))).is_ok());
        let ws = Facts {
            upgrade: true,
            ..facts("GET", own, Some("same-origin"))
        };
        assert!(check(&ws).is_ok());
        assert!(check(&facts("POST", None, Some("same-origin"))).is_ok());
        assert!(
            check(&facts("POST", None, Some("none"))).is_ok(),
            "typed URL"
        );
        assert!(
            check(&facts("POST", None, None)).is_ok(),
            "curl, the TUI, the SDK"
        );
        let trusted = vec!["https://ide.example".to_string()];
        let t = Facts {
            trusted: &trusted,
            ..facts("POST", Some("https://IDE.example:443"), Some("cross-site"))
        };
        assert!(check(&t).is_ok());
        let no_host = Facts {
            own: None,
            ..facts("POST", own, None)
        };
        assert!(check(&no_host).is_err(), "no Host: nothing is our origin");
    }
}
