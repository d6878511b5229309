//! The proxy server: hyper 1 on a current-thread tokio runtime. Accepts on the listening
//! socket PID 1 hands down (or binds one itself when run by hand), authenticates every
//! request (session cookie or HTTP Basic, passwords checked by PID 1), and relays to opencode
//! on 127.0.0.1 with streaming bodies, server-sent events and WebSocket upgrades.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use super::auth::{AuthClient, GateState, Verdict};
use super::request::{self, Kind};
use super::session::{self, Sessions};
use super::{pages, SESSION_COOKIE};

pub type Body = BoxBody<Bytes, hyper::Error>;

/// A login is re-checked with PID 1 this often (lock, removal, new password end sessions).
pub const REVALIDATE: Duration = Duration::from_secs(1);
/// Verified Basic credentials are trusted without asking PID 1 again for this long (the
/// user's login fingerprint is still re-checked every [`REVALIDATE`]).
pub const BASIC_CACHE_TTL: Duration = Duration::from_secs(60);
/// A failed login is answered no sooner than this after it began, whatever the reason
/// (unknown user and wrong password look the same).
pub const FAIL_FLOOR: Duration = Duration::from_secs(3);
/// The gate state is re-read from PID 1 this often.
pub const STATE_TTL: Duration = Duration::from_millis(500);
/// Time a client has to send a request's headers (slowloris).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest login form accepted.
pub const MAX_FORM: usize = 16 * 1024;
/// Time to send a login form.
pub const FORM_TIMEOUT: Duration = Duration::from_secs(10);
/// Most Basic credentials cached.
const MAX_BASIC_CACHE: usize = 4096;

/// The proxy's settings (from its command line; nothing secret).
#[derive(Debug, Clone)]
pub struct Settings {
    pub upstream: SocketAddr,
    pub auth_socket: std::path::PathBuf,
    pub public_health: bool,
    pub trust_proxy: bool,
    pub session_idle: Duration,
    pub session_max_age: Duration,
    pub max_connections: usize,
}

struct BasicEntry {
    user: String,
    fingerprint: String,
    verified: Instant,
}

/// Shared by every connection.
pub struct Proxy {
    settings: Settings,
    auth: AuthClient,
    client: Client<HttpConnector, Incoming>,
    sessions: Mutex<Sessions>,
    /// user → (current fingerprint, when checked).
    logins: Mutex<HashMap<String, (Option<String>, Instant)>>,
    /// keyed hash of user:password → verified login.
    basic: Mutex<HashMap<(u64, u64), BasicEntry>>,
    basic_keys: (std::hash::RandomState, std::hash::RandomState),
    gate: Mutex<Option<(GateState, Instant)>>,
    connections: AtomicUsize,
}

fn full(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(
        Full::new(body.into())
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = status;
    if let Ok(v) = HeaderValue::from_str(content_type) {
        r.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn json(status: StatusCode, v: serde_json::Value) -> Response<Body> {
    full(status, "application/json", v.to_string())
}

fn html(status: StatusCode, page: String) -> Response<Body> {
    let mut r = full(status, "text/html; charset=utf-8", page);
    r.headers_mut()
        .insert("x-frame-options", HeaderValue::from_static("DENY"));
    r
}

fn redirect(to: &str) -> Response<Body> {
    let mut r = full(StatusCode::SEE_OTHER, "text/plain", "");
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

fn unauthorized() -> Response<Body> {
    let mut r = json(
        StatusCode::UNAUTHORIZED,
        serde_json::json!({"error": "unauthorized", "message": "log in with a user of this container"}),
    );
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"opencode\", charset=\"UTF-8\""),
    );
    r
}

fn too_many(retry_after: u64, page: Option<String>) -> Response<Body> {
    let mut r = match page {
        Some(p) => html(StatusCode::TOO_MANY_REQUESTS, p),
        None => json(
            StatusCode::TOO_MANY_REQUESTS,
            serde_json::json!({"error": "rate_limited",
                "message": format!("too many failed logins; retry in {retry_after}s")}),
        ),
    };
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
    r
}

fn unavailable(message: &str) -> Response<Body> {
    let mut r = json(
        StatusCode::SERVICE_UNAVAILABLE,
        serde_json::json!({"healthy": false, "error": "unavailable", "message": message}),
    );
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
    r
}

fn header_str(h: &HeaderMap, name: HeaderName) -> Option<&str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

fn is_upgrade(h: &HeaderMap) -> bool {
    h.contains_key(header::UPGRADE)
        && h.get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
}

/// Remove hop-by-hop headers (and those the Connection header names).
fn strip_hop_by_hop(h: &mut HeaderMap) {
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for n in named {
        h.remove(n);
    }
    for n in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-authorization",
        "proxy-authenticate",
    ] {
        h.remove(n);
    }
}

/// Who is asking, once authenticated.
enum Auth {
    User(String),
    Denied,
    Limited(u64),
    Unavailable,
}

impl Proxy {
    pub fn new(settings: Settings) -> Proxy {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Proxy {
            auth: AuthClient {
                socket: settings.auth_socket.clone(),
            },
            sessions: Mutex::new(Sessions::new(
                settings.session_idle,
                settings.session_max_age,
            )),
            settings,
            client,
            logins: Mutex::new(HashMap::new()),
            basic: Mutex::new(HashMap::new()),
            basic_keys: (std::hash::RandomState::new(), std::hash::RandomState::new()),
            gate: Mutex::new(None),
            connections: AtomicUsize::new(0),
        }
    }

    /// The gate state, re-read from PID 1 at most every [`STATE_TTL`].
    async fn gate(&self) -> Result<GateState, ()> {
        let now = Instant::now();
        if let Ok(g) = self.gate.lock() {
            if let Some((state, at)) = g.as_ref() {
                if now.duration_since(*at) < STATE_TTL {
                    return Ok(state.clone());
                }
            }
        }
        let state = self.auth.state().await?;
        if let Ok(mut g) = self.gate.lock() {
            *g = Some((state.clone(), now));
        }
        Ok(state)
    }

    /// `user`'s current login fingerprint (re-checked every [`REVALIDATE`]); a change ends
    /// the user's sessions. `Err` when PID 1 cannot be asked.
    async fn current_fingerprint(&self, user: &str) -> Result<Option<String>, ()> {
        let now = Instant::now();
        if let Ok(l) = self.logins.lock() {
            if let Some((fp, at)) = l.get(user) {
                if now.duration_since(*at) < REVALIDATE {
                    return Ok(fp.clone());
                }
            }
        }
        let fp = self.auth.fingerprint(user).await?;
        self.remember_login(user, fp.clone());
        if let Ok(mut s) = self.sessions.lock() {
            let ended = s.revoke_stale(user, fp.as_deref());
            if ended > 0 {
                log::info!("ended {ended} session(s) of {user:?}: the login changed or is gone");
            }
        }
        Ok(fp)
    }

    /// Note `user`'s current login fingerprint (`None`: cannot log in) as of now.
    fn remember_login(&self, user: &str, fingerprint: Option<String>) {
        if let Ok(mut l) = self.logins.lock() {
            if l.len() > 10_000 {
                l.clear();
            }
            l.insert(user.to_string(), (fingerprint, Instant::now()));
        }
    }

    /// Ask PID 1 to check a password (`via` says how it came, for the log). A valid login's
    /// fingerprint is remembered; a failure is logged with user and client and answered no
    /// sooner than [`FAIL_FLOOR`] after the attempt began, whatever the reason.
    async fn verify(&self, user: &str, password: &str, client: &str, via: &str) -> Verdict {
        let started = Instant::now();
        let verdict = self.auth.verify(user, password, client).await;
        match &verdict {
            Verdict::Valid { fingerprint } => self.remember_login(user, Some(fingerprint.clone())),
            Verdict::Denied => {
                log::warn!("login failed for user {user:?} from {client} ({via})");
                tokio::time::sleep_until((started + FAIL_FLOOR).into()).await;
            }
            Verdict::Limited { .. } => {
                log::warn!("login refused for user {user:?} from {client}: rate limited")
            }
            Verdict::Unavailable => {}
        }
        verdict
    }

    fn basic_key(&self, user: &str, password: &str) -> (u64, u64) {
        let hash = |rs: &std::hash::RandomState| {
            let mut h = rs.build_hasher();
            h.write(user.as_bytes());
            h.write_u8(0);
            h.write(password.as_bytes());
            h.finish()
        };
        (hash(&self.basic_keys.0), hash(&self.basic_keys.1))
    }

    /// Authenticate by session cookie, else by Basic credentials.
    async fn authenticate(&self, headers: &HeaderMap, client: &str) -> Auth {
        let cookies = headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok());
        if let Some(token) = request::session_cookie(cookies) {
            let session = self
                .sessions
                .lock()
                .ok()
                .and_then(|mut s| s.get(&token, Instant::now()));
            if let Some(s) = session {
                match self.current_fingerprint(&s.user).await {
                    Ok(Some(fp)) if fp == s.fingerprint => return Auth::User(s.user),
                    Ok(_) => {}
                    Err(()) => return Auth::Unavailable,
                }
            }
        }
        let Some((user, password)) =
            header_str(headers, header::AUTHORIZATION).and_then(request::basic_credentials)
        else {
            return Auth::Denied;
        };
        let key = self.basic_key(&user, &password);
        let cached = self.basic.lock().ok().and_then(|b| {
            b.get(&key)
                .filter(|e| e.user == user && e.verified.elapsed() < BASIC_CACHE_TTL)
                .map(|e| e.fingerprint.clone())
        });
        if let Some(fp) = cached {
            match self.current_fingerprint(&user).await {
                Ok(Some(cur)) if cur == fp => return Auth::User(user),
                Ok(_) => {
                    if let Ok(mut b) = self.basic.lock() {
                        b.remove(&key);
                    }
                }
                Err(()) => return Auth::Unavailable,
            }
        }
        match self.verify(&user, &password, client, "HTTP Basic").await {
            Verdict::Valid { fingerprint } => {
                if let Ok(mut b) = self.basic.lock() {
                    if b.len() >= MAX_BASIC_CACHE {
                        b.clear();
                    }
                    b.insert(
                        key,
                        BasicEntry {
                            user: user.clone(),
                            fingerprint: fingerprint.clone(),
                            verified: Instant::now(),
                        },
                    );
                }
                Auth::User(user)
            }
            Verdict::Denied => Auth::Denied,
            Verdict::Limited { retry_after } => Auth::Limited(retry_after),
            Verdict::Unavailable => Auth::Unavailable,
        }
    }

    /// Answer one request.
    async fn handle(self: Arc<Self>, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        let path = req.uri().path().to_string();
        let kind = request::classify(req.method().as_str(), &path, self.settings.public_health);
        let h = req.headers();
        let client = request::client_address(
            &peer.ip().to_string(),
            header_str(h, HeaderName::from_static("x-forwarded-for")),
            self.settings.trust_proxy,
        );
        let https = request::is_https(
            header_str(h, HeaderName::from_static("x-forwarded-proto")),
            self.settings.trust_proxy,
        );
        let wants_html = request::wants_login_page(
            req.method().as_str(),
            header_str(h, header::ACCEPT),
            is_upgrade(h),
        );
        if kind == Kind::ProxyHealth {
            return json(
                StatusCode::OK,
                serde_json::json!({"healthy": true, "proxy": true}),
            );
        }
        // While gated nothing but the gate page is served, and no password is checked.
        let gate = self.gate().await;
        let no_users = matches!(&gate, Ok(g) if g.users == 0);
        match gate {
            Ok(GateState {
                reason: Some(why), ..
            }) => {
                let mut r = if wants_html {
                    html(StatusCode::SERVICE_UNAVAILABLE, pages::gate_html(&why))
                } else {
                    full(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "application/json",
                        pages::gate_json(&why),
                    )
                };
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
                return r;
            }
            Ok(_) => {}
            Err(()) => return unavailable("occ-init is not answering; try again shortly"),
        }
        match kind {
            Kind::ProxyHealth => json(
                StatusCode::OK,
                serde_json::json!({"healthy": true, "proxy": true}),
            ),
            Kind::LoginForm => {
                let next = req
                    .uri()
                    .query()
                    .and_then(|q| request::form_value(q, "next"))
                    .map(|n| request::safe_next(&n))
                    .unwrap_or_else(|| "/".into());
                html(StatusCode::OK, pages::login(&next, None, no_users))
            }
            Kind::LoginSubmit => self.login(req, &client, https, no_users).await,
            Kind::Logout => self.logout(&req, https),
            Kind::OwnNotFound => json(
                StatusCode::NOT_FOUND,
                serde_json::json!({"error": "not_found"}),
            ),
            Kind::PublicHealth => self.forward(req, https, peer).await,
            Kind::Opencode => match self.authenticate(req.headers(), &client).await {
                Auth::User(user) => {
                    log::trace!("{} {path} as {user:?}", req.method());
                    self.forward(req, https, peer).await
                }
                Auth::Denied if wants_html => {
                    let target = req
                        .uri()
                        .path_and_query()
                        .map(|p| p.as_str().to_string())
                        .unwrap_or_else(|| "/".into());
                    redirect(&request::login_location(&target))
                }
                Auth::Denied => unauthorized(),
                Auth::Limited(s) => too_many(s, None),
                Auth::Unavailable => unavailable("cannot check the login right now"),
            },
        }
    }

    async fn login(
        &self,
        req: Request<Incoming>,
        client: &str,
        https: bool,
        no_users: bool,
    ) -> Response<Body> {
        let body = tokio::time::timeout(
            FORM_TIMEOUT,
            Limited::new(req.into_body(), MAX_FORM).collect(),
        )
        .await;
        let mut bytes = match body {
            Ok(Ok(c)) => c.to_bytes().to_vec(),
            Ok(Err(_)) => {
                return html(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    pages::login("/", Some("That form was too large."), no_users),
                )
            }
            Err(_) => {
                return html(
                    StatusCode::REQUEST_TIMEOUT,
                    pages::login("/", Some("The form took too long to arrive."), no_users),
                )
            }
        };
        let form = request::parse_login(&String::from_utf8_lossy(&bytes));
        bytes.iter_mut().for_each(|b| *b = 0);
        let Some(form) = form else {
            return html(
                StatusCode::BAD_REQUEST,
                pages::login("/", Some("Enter a username and a password."), no_users),
            );
        };
        let verdict = self
            .verify(&form.username, &form.password, client, "login form")
            .await;
        match verdict {
            Verdict::Valid { fingerprint } => {
                let Ok(token) = session::new_token() else {
                    return unavailable("cannot create a session");
                };
                if let Ok(mut s) = self.sessions.lock() {
                    s.insert(token.clone(), &form.username, &fingerprint, Instant::now());
                }
                log::info!("{:?} logged in from {client}", form.username);
                let mut r = redirect(&form.next);
                let cookie = format!(
                    "{SESSION_COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}{}",
                    self.settings.session_max_age.as_secs(),
                    if https { "; Secure" } else { "" }
                );
                if let Ok(v) = HeaderValue::from_str(&cookie) {
                    r.headers_mut().insert(header::SET_COOKIE, v);
                }
                r
            }
            Verdict::Denied => html(
                StatusCode::UNAUTHORIZED,
                pages::login(&form.next, Some("Invalid username or password."), no_users),
            ),
            Verdict::Limited { retry_after } => too_many(
                retry_after,
                Some(pages::login(
                    &form.next,
                    Some(&format!(
                        "Too many failed attempts. Try again in {retry_after} seconds."
                    )),
                    no_users,
                )),
            ),
            Verdict::Unavailable => unavailable("cannot check the login right now"),
        }
    }

    fn logout(&self, req: &Request<Incoming>, https: bool) -> Response<Body> {
        let cookies = req
            .headers()
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok());
        if let Some(token) = request::session_cookie(cookies) {
            if let Ok(mut s) = self.sessions.lock() {
                if let Some(old) = s.remove(&token) {
                    log::info!("{:?} logged out", old.user);
                }
            }
        }
        let mut r = redirect("/_occ/login");
        let cookie = format!(
            "{SESSION_COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0{}",
            if https { "; Secure" } else { "" }
        );
        if let Ok(v) = HeaderValue::from_str(&cookie) {
            r.headers_mut().insert(header::SET_COOKIE, v);
        }
        r
    }

    /// Relay to opencode: credentials stripped, X-Forwarded-* set, bodies streamed,
    /// upgrades (WebSocket) spliced both ways.
    async fn forward(
        &self,
        mut req: Request<Incoming>,
        https: bool,
        peer: SocketAddr,
    ) -> Response<Body> {
        let upgrade = is_upgrade(req.headers());
        let upgrade_value = req.headers().get(header::UPGRADE).cloned();
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        let pq = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".into());
        let Ok(uri) = format!("http://{}{pq}", self.settings.upstream).parse::<hyper::Uri>() else {
            return json(
                StatusCode::BAD_REQUEST,
                serde_json::json!({"error": "bad_request"}),
            );
        };
        parts.uri = uri;
        parts.version = hyper::Version::HTTP_11;
        parts.extensions = Default::default();
        let h = &mut parts.headers;
        let original_host = h.get(header::HOST).cloned();
        let forwarded_for = h
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        strip_hop_by_hop(h);
        h.remove(header::AUTHORIZATION);
        let cookies: Vec<String> = h
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter_map(request::strip_session_cookie)
            .collect();
        h.remove(header::COOKIE);
        if !cookies.is_empty() {
            if let Ok(v) = HeaderValue::from_str(&cookies.join("; ")) {
                h.insert(header::COOKIE, v);
            }
        }
        let xff = match (self.settings.trust_proxy, forwarded_for) {
            (true, Some(prev)) => format!("{prev}, {}", peer.ip()),
            _ => peer.ip().to_string(),
        };
        if let Ok(v) = HeaderValue::from_str(&xff) {
            h.insert("x-forwarded-for", v);
        }
        h.insert(
            "x-forwarded-proto",
            HeaderValue::from_static(if https { "https" } else { "http" }),
        );
        if let Some(host) = original_host {
            h.insert("x-forwarded-host", host);
        }
        if let (true, Some(u)) = (upgrade, upgrade_value) {
            h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            h.insert(header::UPGRADE, u);
        }
        let up_req = Request::from_parts(parts, body);
        let mut resp = match self.client.request(up_req).await {
            Ok(r) => r,
            Err(e) => {
                log::debug!("upstream request failed: {e}");
                return unavailable("opencode is not answering (starting or restarting?)");
            }
        };
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            if let Some(client_upgrade) = client_upgrade {
                let upstream_upgrade = hyper::upgrade::on(&mut resp);
                tokio::spawn(async move {
                    match (client_upgrade.await, upstream_upgrade.await) {
                        (Ok(a), Ok(b)) => {
                            let mut a = TokioIo::new(a);
                            let mut b = TokioIo::new(b);
                            let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
                        }
                        (a, b) => log::debug!(
                            "upgrade failed: client {:?}, upstream {:?}",
                            a.err(),
                            b.err()
                        ),
                    }
                });
            }
            let (parts, _) = resp.into_parts();
            return Response::from_parts(
                parts,
                Full::new(Bytes::new()).map_err(|n| match n {}).boxed(),
            );
        }
        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        Response::from_parts(parts, body.boxed())
    }
}

/// Answer a connection beyond the cap with 503 and close it.
async fn refuse(mut stream: TcpStream) {
    let body = r#"{"error":"busy","message":"too many connections"}"#;
    let msg = format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: {}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(msg.as_bytes())).await;
}

/// A connection slot, given back on drop.
struct Slot(Arc<Proxy>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Accept and serve until the process is killed.
pub async fn serve(listener: TcpListener, proxy: Arc<Proxy>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                log::warn!("accept failed: {e}");
                // EMFILE and friends: back off instead of spinning.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if proxy.connections.fetch_add(1, Ordering::SeqCst) >= proxy.settings.max_connections {
            proxy.connections.fetch_sub(1, Ordering::SeqCst);
            tokio::spawn(refuse(stream));
            continue;
        }
        let _ = stream.set_nodelay(true);
        let slot = Slot(proxy.clone());
        tokio::spawn(async move {
            let p = slot.0.clone();
            let service = service_fn(move |req| {
                let p = p.clone();
                async move { Ok::<_, std::convert::Infallible>(p.handle(req, peer).await) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(64 * 1024)
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            if let Err(e) = conn.await {
                log::debug!("connection from {peer}: {e}");
            }
            drop(slot);
        });
    }
}
