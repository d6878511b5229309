//! Pure request handling for the proxy: what a request needs ([`classify`]), login forms,
//! safe redirect targets, cookies and Basic credentials.

use super::SESSION_COOKIE;

/// What the proxy does with a request, before any credential is looked at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// `/_occ/health`: the proxy itself is alive (PID 1's probe).
    ProxyHealth,
    /// `GET /_occ/login`: the form.
    LoginForm,
    /// `POST /_occ/login`.
    LoginSubmit,
    /// `POST /_occ/logout`.
    Logout,
    /// Any other `/_occ/` path or method: 404 / 405.
    OwnNotFound,
    /// `GET /global/health` answered without credentials (`public_health`).
    PublicHealth,
    /// Everything else: opencode, with a valid login.
    Opencode,
}

/// Classify by method and path only.
pub fn classify(method: &str, path: &str, public_health: bool) -> Kind {
    match (method, path) {
        (_, "/_occ/health") => Kind::ProxyHealth,
        ("GET" | "HEAD", "/_occ/login") => Kind::LoginForm,
        ("POST", "/_occ/login") => Kind::LoginSubmit,
        ("POST", "/_occ/logout") => Kind::Logout,
        (_, p) if p.starts_with(super::PREFIX) || p == "/_occ" => Kind::OwnNotFound,
        ("GET" | "HEAD", "/global/health") if public_health => Kind::PublicHealth,
        _ => Kind::Opencode,
    }
}

/// A request without valid credentials: browsers navigating to a page are sent to the login
/// form; everything else (API calls, WebSocket upgrades, non-GET) gets 401.
pub fn wants_login_page(method: &str, accept: Option<&str>, upgrade: bool) -> bool {
    method == "GET" && !upgrade && accept.is_some_and(|a| a.contains("text/html"))
}

/// A redirect target that stays on this site: a path starting with one `/`, no scheme, no
/// host (`//evil`, `/\evil`), no control characters. Anything else becomes `/`.
pub fn safe_next(next: &str) -> String {
    let ok = next.starts_with('/')
        && !next.starts_with("//")
        && !next.starts_with("/\\")
        && !next.chars().any(|c| c.is_control() || c == '\\')
        && next.len() <= 2048
        && !next.starts_with("/_occ/login")
        && !next.starts_with("/_occ/logout");
    if ok {
        next.to_string()
    } else {
        "/".to_string()
    }
}

/// `/_occ/login?next=<path and query>` for a request target.
pub fn login_location(path_and_query: &str) -> String {
    format!(
        "/_occ/login?next={}",
        percent_encode(&safe_next(path_and_query))
    )
}

/// Percent-encode everything but unreserved characters and `/`.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decode `application/x-www-form-urlencoded` text (`+` is a space). Invalid escapes are
/// kept literally; invalid UTF-8 is replaced.
pub fn form_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (hex(b[i + 1]), hex(b[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The value of `key` in urlencoded text (a form body or a query string).
pub fn form_value(text: &str, key: &str) -> Option<String> {
    text.split('&')
        .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
        .find(|(k, _)| form_decode(k) == key)
        .map(|(_, v)| form_decode(v))
}

/// A submitted login form.
#[derive(PartialEq, Eq)]
pub struct LoginForm {
    pub username: String,
    pub password: String,
    pub next: String,
}

impl std::fmt::Debug for LoginForm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginForm")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("next", &self.next)
            .finish()
    }
}

/// Parse a login form body; `None` when a field is missing or the name is not plausible.
pub fn parse_login(body: &str) -> Option<LoginForm> {
    let username = form_value(body, "username")?.trim().to_string();
    let password = form_value(body, "password")?;
    if username.is_empty() || username.len() > 64 || password.is_empty() || password.len() > 4096 {
        return None;
    }
    let next = safe_next(&form_value(body, "next").unwrap_or_else(|| "/".into()));
    Some(LoginForm {
        username,
        password,
        next,
    })
}

/// The session token in the `Cookie` header values, if any.
pub fn session_cookie<'a>(cookie_headers: impl Iterator<Item = &'a str>) -> Option<String> {
    for h in cookie_headers {
        for part in h.split(';') {
            if let Some((k, v)) = part.trim().split_once('=') {
                if k == SESSION_COOKIE && !v.is_empty() {
                    return Some(v.trim_matches('"').to_string());
                }
            }
        }
    }
    None
}

/// A `Cookie` header value without the proxy's own cookie (`None` when nothing is left).
pub fn strip_session_cookie(value: &str) -> Option<String> {
    let kept: Vec<&str> = value
        .split(';')
        .map(str::trim)
        .filter(|p| !p.is_empty() && p.split_once('=').map(|(k, _)| k) != Some(SESSION_COOKIE))
        .collect();
    (!kept.is_empty()).then(|| kept.join("; "))
}

/// User and password from an `Authorization: Basic …` value.
pub fn basic_credentials(value: &str) -> Option<(String, String)> {
    let (scheme, rest) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64_decode(rest.trim())?;
    let text = String::from_utf8(raw).ok()?;
    let (user, pass) = text.split_once(':')?;
    if user.is_empty() || user.len() > 64 || pass.len() > 4096 {
        return None;
    }
    Some((user.to_string(), pass.to_string()))
}

/// Standard base64 (padding optional).
pub fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let s = s.trim_end_matches('=');
    if s.len() % 4 == 1 || s.len() > 8192 {
        return None;
    }
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    for chunk in s.as_bytes().chunks(4) {
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            n |= val(*c)? << (18 - 6 * i);
        }
        out.push((n >> 16) as u8);
        if chunk.len() > 2 {
            out.push((n >> 8) as u8);
        }
        if chunk.len() > 3 {
            out.push(n as u8);
        }
    }
    Some(out)
}

/// The client address to rate-limit on: the peer, or with `trust_proxy` the address the
/// trusted proxy in front appended last to `X-Forwarded-For`.
pub fn client_address(peer: &str, forwarded_for: Option<&str>, trust_proxy: bool) -> String {
    if trust_proxy {
        if let Some(last) = forwarded_for
            .and_then(|f| f.rsplit(',').next())
            .map(str::trim)
            .filter(|a| !a.is_empty() && a.parse::<std::net::IpAddr>().is_ok())
        {
            return last.to_string();
        }
    }
    peer.to_string()
}

/// Whether the client spoke HTTPS to the proxy in front (only believed with `trust_proxy`).
pub fn is_https(forwarded_proto: Option<&str>, trust_proxy: bool) -> bool {
    trust_proxy
        && forwarded_proto
            .and_then(|p| p.split(',').next())
            .is_some_and(|p| p.trim().eq_ignore_ascii_case("https"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_paths() {
        assert_eq!(classify("GET", "/_occ/health", true), Kind::ProxyHealth);
        assert_eq!(classify("GET", "/_occ/login", true), Kind::LoginForm);
        assert_eq!(classify("POST", "/_occ/login", true), Kind::LoginSubmit);
        assert_eq!(classify("POST", "/_occ/logout", true), Kind::Logout);
        assert_eq!(classify("GET", "/_occ/logout", true), Kind::OwnNotFound);
        assert_eq!(classify("GET", "/_occ/x", true), Kind::OwnNotFound);
        assert_eq!(classify("GET", "/global/health", true), Kind::PublicHealth);
        assert_eq!(classify("GET", "/global/health", false), Kind::Opencode);
        assert_eq!(classify("POST", "/global/health", true), Kind::Opencode);
        assert_eq!(classify("POST", "/pty", true), Kind::Opencode);
        assert_eq!(classify("GET", "/", true), Kind::Opencode);
        assert_eq!(classify("GET", "/_occfoo", true), Kind::Opencode);
    }

    #[test]
    fn only_browser_navigations_get_the_login_page() {
        assert!(wants_login_page(
            "GET",
            Some("text/html,application/xhtml+xml"),
            false
        ));
        assert!(!wants_login_page("GET", Some("application/json"), false));
        assert!(!wants_login_page("GET", None, false));
        assert!(
            !wants_login_page("GET", Some("text/html"), true),
            "WebSocket"
        );
        assert!(!wants_login_page("POST", Some("text/html"), false));
    }

    #[test]
    fn redirect_targets_stay_on_site() {
        for good in ["/", "/session", "/a/b?x=1&y=%2F", "/project/abc#top"] {
            assert_eq!(safe_next(good), good);
        }
        for bad in [
            "",
            "http://evil.example/",
            "//evil.example/",
            "/\\evil.example",
            "https:/x",
            "javascript:alert(1)",
            "/a\r\nSet-Cookie: x=1",
            "evil",
            "/_occ/login?next=/",
        ] {
            assert_eq!(safe_next(bad), "/", "{bad:?}");
        }
        assert_eq!(
            login_location("/a b?c=1"),
            "/_occ/login?next=/a%20b%3Fc%3D1"
        );
        assert_eq!(
            form_value(&login_location("/a b?c=1")["/_occ/login?".len()..], "next").as_deref(),
            Some("/a b?c=1")
        );
    }

    #[test]
    fn parses_login_forms() {
        let f = parse_login("username=alice&password=p%40ss+word%26&next=%2Fsession").unwrap();
        assert_eq!(f.username, "alice");
        assert_eq!(f.password, "p@ss word&");
        assert_eq!(f.next, "/session");
        let f = parse_login("password=x&username=bob&next=http%3A%2F%2Fevil").unwrap();
        assert_eq!(f.next, "/");
        assert!(parse_login("username=alice").is_none());
        assert!(parse_login("username=&password=x").is_none());
        assert!(parse_login("password=x").is_none());
        assert!(!format!("{f:?}").contains("\"x\""));
        assert_eq!(form_decode("%zz%4"), "%zz%4");
        assert_eq!(form_decode("%"), "%");
        assert_eq!(form_decode("%e9"), "\u{fffd}");
    }

    #[test]
    fn cookies_are_found_and_stripped() {
        let h = ["a=1; occ_session=tok123; b=2"];
        assert_eq!(session_cookie(h.iter().copied()).as_deref(), Some("tok123"));
        assert_eq!(session_cookie(["x=1"].iter().copied()), None);
        assert_eq!(session_cookie(["occ_session="].iter().copied()), None);
        assert_eq!(strip_session_cookie(h[0]).as_deref(), Some("a=1; b=2"));
        assert_eq!(strip_session_cookie("occ_session=t"), None);
        assert_eq!(
            strip_session_cookie("occ_sessionx=1").as_deref(),
            Some("occ_sessionx=1")
        );
    }

    #[test]
    fn basic_credentials_decode() {
        // "alice:s3cret:with:colons"
        let v = format!(
            "Basic {}",
            crate::supervise::probe::base64(b"alice:s3cret:with:colons")
        );
        assert_eq!(
            basic_credentials(&v),
            Some(("alice".into(), "s3cret:with:colons".into()))
        );
        assert_eq!(
            basic_credentials(&format!("basic {}", crate::supervise::probe::base64(b"a:"))),
            Some(("a".into(), "".into()))
        );
        for bad in [
            "Bearer abc",
            "Basic",
            "Basic !!!",
            "Basic YWxpY2U=",
            "Basic Og==",
        ] {
            assert_eq!(basic_credentials(bad), None, "{bad}");
        }
        for n in 0..40 {
            let data: Vec<u8> = (0..n).map(|i| (i * 37 + 11) as u8).collect();
            let enc = crate::supervise::probe::base64(&data);
            assert_eq!(base64_decode(&enc), Some(data));
        }
    }

    #[test]
    fn client_address_trusts_forwarded_for_only_when_told() {
        assert_eq!(
            client_address("10.0.0.1", Some("1.2.3.4"), false),
            "10.0.0.1"
        );
        assert_eq!(
            client_address("10.0.0.1", Some("9.9.9.9, 1.2.3.4"), true),
            "1.2.3.4"
        );
        assert_eq!(client_address("10.0.0.1", Some("junk"), true), "10.0.0.1");
        assert!(is_https(Some("https"), true));
        assert!(!is_https(Some("https"), false));
        assert!(!is_https(Some("http"), true));
    }

    /// Stable stand-in for the `login_form` cargo-fuzz target: mutated bodies never panic,
    /// and whatever is parsed keeps a safe redirect target.
    #[test]
    fn mutated_login_forms_never_panic() {
        let seeds = [
            "username=alice&password=secret&next=%2Fsession",
            "username=%e9%ff&password=%00&next=%2F%2Fevil",
            "next=/&&&==&username=a=b&password=%",
        ];
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut rnd = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let alphabet = b"%+&=/\\:?#abcAZ09\x00\xff\xc3\xa9";
        for i in 0..50_000 {
            let mut b = seeds[i % seeds.len()].as_bytes().to_vec();
            for _ in 0..(rnd() % 6) {
                let pos = (rnd() as usize) % (b.len() + 1);
                match rnd() % 3 {
                    0 if pos < b.len() => {
                        b.remove(pos);
                    }
                    1 if pos < b.len() => b[pos] = alphabet[(rnd() as usize) % alphabet.len()],
                    _ => b.insert(pos, alphabet[(rnd() as usize) % alphabet.len()]),
                }
            }
            let text = String::from_utf8_lossy(&b);
            if let Some(f) = parse_login(&text) {
                assert_eq!(safe_next(&f.next), f.next);
            }
            let _ = basic_credentials(&text);
            let _ = session_cookie(std::iter::once(text.as_ref()));
        }
    }
}
