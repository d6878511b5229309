//! The proxy server: hyper 1 on a current-thread tokio runtime. Accepts on the listening
//! sockets PID 1 hands down (or binds one itself when run by hand), refuses requests from
//! pages of other origins, authenticates every request (session cookie or HTTP Basic,
//! passwords checked by PID 1, one check for identical concurrent credentials), and relays
//! to opencode on 127.0.0.1 with the credentials of opencode's current start, streaming
//! bodies, server-sent events and WebSocket upgrades (each on a connection of its own).

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
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
use tokio::net::{TcpListener, TcpStream};

use super::auth::{AuthClient, GateState, SessionCopy, SessionSync, Verdict};
use super::conn::{self, Guarded, Slot, Slots};
use super::flight::Flights;
use super::request::{self, Kind};
use super::session::{self, Session, Sessions};
use super::{instances, oidc, origin, pages, upstream};
use crate::instances::{View, ViewState};
use crate::secret::SecretString;

pub type Body = BoxBody<Bytes, hyper::Error>;

/// A login is re-checked with PID 1 this often (lock, removal, new password end sessions).
pub const REVALIDATE: Duration = Duration::from_secs(1);
/// Verified Basic credentials are trusted without asking PID 1 again for this long (the
/// user's login fingerprint is still re-checked every [`REVALIDATE`]).
pub const BASIC_CACHE_TTL: Duration = Duration::from_secs(60);
/// A verified personal API token (Bearer, or as a Basic password) is trusted this long: a
/// revoked token stops working within it.
pub const TOKEN_CACHE_TTL: Duration = Duration::from_secs(1);
/// A failed login is answered no sooner than this after it began, whatever the reason
/// (unknown user and wrong password look the same).
pub const FAIL_FLOOR: Duration = Duration::from_secs(3);
/// The gate state is re-read from PID 1 this often.
pub const STATE_TTL: Duration = Duration::from_millis(500);
/// Time a client has to send a request's headers (slowloris), and the longest a kept-alive
/// connection may sit idle between requests.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head (request line and headers) accepted; larger ones get 431.
pub const MAX_HEAD: usize = 64 * 1024;
/// Largest login form accepted.
pub const MAX_FORM: usize = 16 * 1024;
/// Time to send a login form.
pub const FORM_TIMEOUT: Duration = Duration::from_secs(10);
/// Used sessions are reported to PID 1 this often (for their idle timeout there).
pub const TOUCH_EVERY: Duration = Duration::from_secs(30);
/// Most Basic credentials cached.
const MAX_BASIC_CACHE: usize = 4096;
/// Most session changes sent to PID 1 in one request (its requests are at most 64 KiB).
const SYNC_CHUNK: usize = 150;

/// The proxy's settings (from its command line; nothing secret).
#[derive(Debug, Clone)]
pub struct Settings {
    /// The shared opencode, when PID 1 does not say where it listens.
    pub upstream: Option<SocketAddr>,
    pub auth_socket: std::path::PathBuf,
    pub public_health: bool,
    pub trust_proxy: bool,
    pub session_idle: Duration,
    pub session_max_age: Duration,
    pub max_connections: usize,
    /// Connections per client address (IPv6: per /64); ignored with `trust_proxy`.
    pub max_connections_per_client: usize,
    /// Extra origins allowed to send requests with a user's credentials (normalized).
    pub trusted_origins: Vec<String>,
    /// How long an API client waits for its user's opencode to start.
    pub instance_start_timeout: Duration,
    /// Serve HTTPS (certificates from PID 1); plain HTTP then only gets a redirect.
    pub tls: bool,
    /// Send Strict-Transport-Security over TLS.
    pub hsts: bool,
}

struct BasicEntry {
    user: String,
    fingerprint: String,
    verified: Instant,
    /// A personal API token (trusted for [`TOKEN_CACHE_TTL`] only).
    token: bool,
}

impl BasicEntry {
    fn fresh(&self) -> bool {
        self.verified.elapsed()
            < if self.token {
                TOKEN_CACHE_TTL
            } else {
                BASIC_CACHE_TTL
            }
    }
}

/// Session changes not yet told to PID 1.
#[derive(Default)]
struct Pending {
    put: Vec<(String, Session)>,
    remove: Vec<String>,
    touch: HashSet<String>,
}

/// Shared by every connection.
pub struct Proxy {
    settings: Settings,
    auth: AuthClient,
    client: Client<upstream::Checked, Incoming>,
    /// Who must own each upstream port (new connections are checked).
    owners: upstream::Owners,
    sessions: Mutex<Sessions>,
    /// user → (current fingerprint, when checked).
    logins: Mutex<HashMap<String, (Option<String>, Instant)>>,
    /// keyed hash of user:password → verified login.
    basic: Mutex<HashMap<(u64, u64), BasicEntry>>,
    basic_keys: (std::hash::RandomState, std::hash::RandomState),
    gate: Mutex<Option<(GateState, Instant)>>,
    /// The connection counts (public sockets).
    pub slots: Arc<Slots>,
    /// Password checks in flight, by keyed hash of the credentials.
    verifying: Flights<(u64, u64), Verdict>,
    /// Bearer token checks in flight, by keyed hash of the token.
    bearers: Flights<(u64, u64), (Verdict, Option<String>)>,
    /// Fingerprint look-ups in flight, by user.
    fingerprints: Flights<String, Result<Option<String>, ()>>,
    /// The gate-state refresh in flight.
    gates: Flights<(), Result<GateState, ()>>,
    pending: Mutex<Pending>,
    sync_wake: tokio::sync::Notify,
    /// PID 1's views of the users' own opencode instances.
    views: Mutex<instances::Views>,
    /// Requests and terminals per user, for PID 1's idle stop.
    usage: Arc<Mutex<instances::Usage>>,
    /// Asks for a user's instance in flight, by user.
    asks: Flights<String, Result<View, ()>>,
    /// Single sign-on, when configured.
    oidc: Option<Arc<oidc::Oidc>>,
    /// Changes made on the tokens page, per user (at most 20 a minute).
    token_changes: PerMinute,
    /// Device codes asked for, per client address (each one is a call to the provider).
    device_asks: PerMinute,
    /// With TLS: the acceptor and the certificate it serves (PID 1 replaces it).
    tls: Option<(tokio_rustls::TlsAcceptor, Arc<super::tls::Certs>)>,
    /// The session cookie's name (`__Host-` prefixed over TLS).
    cookie: &'static str,
}

/// Where one request goes: an opencode's address and the credentials of its current
/// start, and whose instance it is (per user).
struct Relay {
    addr: SocketAddr,
    authorization: Option<String>,
    /// The uid opencode runs as: only a socket of that uid gets the request.
    uid: Option<u32>,
    user: Option<String>,
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

/// The request asks to switch protocols (`Connection: upgrade` and an `Upgrade`).
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

/// The only upgrade relayed: to a WebSocket (opencode's terminals). `h2c` and the rest are
/// dropped, and the request goes on as a plain one.
fn is_websocket(h: &HeaderMap) -> bool {
    is_upgrade(h)
        && h.get_all(header::UPGRADE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .all(|v| v.trim().eq_ignore_ascii_case("websocket"))
}

/// Size of the request head as sent: request line and headers.
fn head_size<B>(req: &Request<B>) -> usize {
    let line = req.method().as_str().len()
        + req.uri().path_and_query().map_or(1, |p| p.as_str().len())
        + 12;
    line + req
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum::<usize>()
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
        "http2-settings",
        "proxy-authorization",
        "proxy-authenticate",
    ] {
        h.remove(n);
    }
}

/// Requests per key (a user, a client address) in the current minute.
#[derive(Default)]
struct PerMinute(Mutex<HashMap<String, (Instant, u32)>>);

impl PerMinute {
    const PER_MINUTE: u32 = 20;

    fn allow(&self, key: &str, now: Instant) -> bool {
        let Ok(mut m) = self.0.lock() else {
            return false;
        };
        m.retain(|_, (start, _)| now.duration_since(*start) < Duration::from_secs(60));
        if m.len() >= 100_000 {
            m.clear();
        }
        let e = m.entry(key.to_string()).or_insert((now, 0));
        e.1 += 1;
        e.1 <= Self::PER_MINUTE
    }
}

/// A user name for the log: quoted, or `<not a user name>` when it is no valid one (a
/// token or a password typed in the wrong field must not land in the log).
fn shown_name(name: &str) -> String {
    if crate::manifest::check_name(name).is_ok() {
        format!("{name:?}")
    } else {
        "<not a user name>".into()
    }
}

/// Does the request carry a personal API token (Bearer, or as the Basic password)?
fn by_token(h: &HeaderMap) -> bool {
    let Some(a) = header_str(h, header::AUTHORIZATION) else {
        return false;
    };
    request::bearer_token(a).is_some()
        || request::basic_credentials(a).is_some_and(|(_, p)| crate::tokens::looks_like_token(&p))
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
        let owners = upstream::Owners::default();
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(upstream::Checked::new(connector, owners.clone()));
        let per_client = (!settings.trust_proxy).then_some(settings.max_connections_per_client);
        Proxy {
            auth: AuthClient::new(settings.auth_socket.clone()),
            sessions: Mutex::new(Sessions::new(
                settings.session_idle,
                settings.session_max_age,
            )),
            slots: Slots::new(settings.max_connections, per_client),
            settings,
            client,
            owners,
            logins: Mutex::new(HashMap::new()),
            basic: Mutex::new(HashMap::new()),
            basic_keys: (std::hash::RandomState::new(), std::hash::RandomState::new()),
            gate: Mutex::new(None),
            verifying: Flights::default(),
            bearers: Flights::default(),
            fingerprints: Flights::default(),
            gates: Flights::default(),
            pending: Mutex::new(Pending::default()),
            sync_wake: tokio::sync::Notify::new(),
            views: Mutex::new(instances::Views::default()),
            usage: Arc::new(Mutex::new(instances::Usage::default())),
            asks: Flights::default(),
            tls: None,
            cookie: request::cookie_name(false),
            oidc: None,
            token_changes: PerMinute::default(),
            device_asks: PerMinute::default(),
        }
    }

    /// Offer single sign-on with these settings.
    pub fn with_oidc(mut self, settings: oidc::OidcSettings) -> Proxy {
        self.oidc = Some(Arc::new(oidc::Oidc::new(settings)));
        self
    }

    /// Does it serve HTTPS?
    pub fn serves_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The shared opencode given on the command line, if any.
    pub fn upstream(&self) -> Option<SocketAddr> {
        self.settings.upstream
    }

    /// Serve HTTPS with the certificates in `certs` (plain HTTP gets a redirect).
    pub fn with_tls(mut self, certs: Arc<super::tls::Certs>) -> Result<Proxy, rustls::Error> {
        let config = super::tls::server_config(certs.clone())?;
        self.tls = Some((tokio_rustls::TlsAcceptor::from(config), certs));
        self.cookie = request::cookie_name(true);
        self.settings.tls = true;
        Ok(self)
    }

    /// Ask PID 1 for `user`'s instance (starting it when there is none), one ask per user
    /// at a time; the views of all instances that come back are kept.
    async fn ask_instance(self: &Arc<Self>, user: &str) -> Result<View, ()> {
        let me = self.clone();
        let name = user.to_string();
        self.asks
            .run(name.clone(), move || async move {
                let report = crate::instances::Report {
                    start: Some(name.clone()),
                    activity: Vec::new(),
                };
                let views = me.auth.instances(&report).await?;
                let mine = views.iter().find(|v| v.user == name).cloned().ok_or(())?;
                if let Ok(mut v) = me.views.lock() {
                    v.replace(views, Instant::now());
                }
                Ok(mine)
            })
            .await
            .unwrap_or(Err(()))
    }

    /// Where `user`'s requests go: their own opencode once it is ready. While it starts
    /// the request waits up to `wait`; then (or when it cannot start, or there is no room)
    /// the answer is a page for a browser or JSON with Retry-After.
    async fn instance_for(
        self: &Arc<Self>,
        user: &str,
        wait: Duration,
        wants_html: bool,
    ) -> Result<Relay, Response<Body>> {
        let deadline = Instant::now() + wait;
        if let Ok(mut u) = self.usage.lock() {
            u.request(user, Instant::now());
        }
        loop {
            let cached = self.views.lock().ok().and_then(|v| {
                v.fresh(user, Instant::now())
                    .and_then(instances::upstream_of)
            });
            let view = match cached {
                Some((addr, authorization, uid)) => {
                    return Ok(Relay {
                        addr,
                        authorization,
                        uid,
                        user: Some(user.to_string()),
                    })
                }
                None => match self.ask_instance(user).await {
                    Ok(v) => v,
                    Err(()) => {
                        return Err(unavailable("occ-init is not answering; try again shortly"))
                    }
                },
            };
            if let Some((addr, authorization, uid)) = instances::upstream_of(&view) {
                return Ok(Relay {
                    addr,
                    authorization,
                    uid,
                    user: Some(user.to_string()),
                });
            }
            let waiting = matches!(
                view.state,
                ViewState::Starting | ViewState::Stopping | ViewState::Stopped
            );
            if !waiting || Instant::now() + instances::POLL > deadline {
                let mut r = if wants_html {
                    html(StatusCode::SERVICE_UNAVAILABLE, instances::page(&view))
                } else {
                    json(StatusCode::SERVICE_UNAVAILABLE, instances::json(&view))
                };
                r.headers_mut().insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(instances::retry_after(&view)),
                );
                return Err(r);
            }
            tokio::time::sleep(instances::POLL).await;
        }
    }

    /// Forget `user`'s instance view (it refused our credentials or is gone).
    fn forget_instance(&self, user: &str) {
        if let Ok(mut v) = self.views.lock() {
            v.forget(user);
        }
    }

    /// Every [`instances::REPORT_EVERY`], tell PID 1 who made requests and who holds
    /// terminals open (its idle stop counts them as activity).
    async fn report_activity(self: Arc<Self>) {
        loop {
            tokio::time::sleep(instances::REPORT_EVERY).await;
            let activity = match self.usage.lock() {
                Ok(mut u) => u.report(Instant::now()),
                Err(_) => continue,
            };
            if activity.is_empty() {
                continue;
            }
            let report = crate::instances::Report {
                start: None,
                activity,
            };
            match self.auth.instances(&report).await {
                Ok(views) => {
                    if let Ok(mut v) = self.views.lock() {
                        v.replace(views, Instant::now());
                    }
                }
                Err(()) => log::debug!("cannot reach occ-init to report activity"),
            }
        }
    }

    /// The gate state, re-read from PID 1 at most every [`STATE_TTL`], by one request at
    /// a time however many wait for it.
    async fn gate(self: &Arc<Self>) -> Result<GateState, ()> {
        self.gate_within(STATE_TTL).await
    }

    /// The gate state, re-read from PID 1 when the copy is older than `ttl`.
    async fn gate_within(self: &Arc<Self>, ttl: Duration) -> Result<GateState, ()> {
        if let Ok(g) = self.gate.lock() {
            if let Some((state, at)) = g.as_ref() {
                if at.elapsed() < ttl {
                    return Ok(state.clone());
                }
            }
        }
        let me = self.clone();
        self.gates
            .run((), move || async move {
                let state = me.auth.state().await;
                if let (Ok(s), Ok(mut g)) = (&state, me.gate.lock()) {
                    *g = Some((s.clone(), Instant::now()));
                }
                state
            })
            .await
            .unwrap_or(Err(()))
    }

    /// The gate state once the shared opencode is ready: while it starts or restarts, a
    /// logged-in request waits up to `wait` (re-read every [`instances::POLL`], one read for
    /// all who wait), as it would for a user's own instance. `None` past `wait`.
    async fn shared_ready(
        self: &Arc<Self>,
        mut gate: GateState,
        wait: Duration,
    ) -> Option<GateState> {
        let deadline = Instant::now() + wait;
        while !gate.ready || gate.reason.is_some() {
            if gate.reason.is_some() || Instant::now() + instances::POLL > deadline {
                return None;
            }
            tokio::time::sleep(instances::POLL).await;
            gate = self.gate_within(instances::POLL).await.ok()?;
        }
        Some(gate)
    }

    /// Where the shared opencode is and which credentials it takes (from the gate state).
    fn shared_relay(&self, gate: &GateState) -> Option<Relay> {
        Some(Relay {
            addr: gate.upstream.or(self.settings.upstream)?,
            authorization: gate.upstream_authorization.clone(),
            uid: gate.upstream_uid,
            user: None,
        })
    }

    /// Forget the cached gate state (opencode refused our credentials: it restarted).
    fn forget_gate(&self) {
        if let Ok(mut g) = self.gate.lock() {
            *g = None;
        }
    }

    /// `user`'s current login fingerprint (re-checked every [`REVALIDATE`], one look-up
    /// per user at a time); a change ends the user's sessions. `Err` when PID 1 cannot be
    /// asked.
    async fn current_fingerprint(self: &Arc<Self>, user: &str) -> Result<Option<String>, ()> {
        if let Ok(l) = self.logins.lock() {
            if let Some((fp, at)) = l.get(user) {
                if at.elapsed() < REVALIDATE {
                    return Ok(fp.clone());
                }
            }
        }
        let me = self.clone();
        let name = user.to_string();
        self.fingerprints
            .run(name.clone(), move || async move {
                let fp = me.auth.fingerprint(&name).await?;
                me.apply_fingerprint(&name, fp.clone());
                Ok(fp)
            })
            .await
            .unwrap_or(Err(()))
    }

    /// `user`'s login fingerprint is `fp` now (`None`: she cannot log in): remembered, and
    /// her sessions and cached Basic logins from before a change end.
    fn apply_fingerprint(&self, user: &str, fp: Option<String>) {
        self.remember_login(user, fp.clone());
        let ended = self
            .sessions
            .lock()
            .map(|mut s| s.revoke_stale(user, fp.as_deref()))
            .unwrap_or_default();
        if !ended.is_empty() {
            log::info!(
                "ended {} session(s) of {user:?}: the login changed or is gone",
                ended.len()
            );
            self.queue(|p| p.remove.extend(ended));
        }
        if let Ok(mut b) = self.basic.lock() {
            b.retain(|_, e| e.user != user || Some(&e.fingerprint) == fp.as_ref());
        }
    }

    /// Every [`REVALIDATE`], one look-up of everyone's fingerprint for the users who hold a
    /// session or a cached Basic login: a lock ends them within about a second even while
    /// they are idle (a lock then an unlock would otherwise bring them back unchanged).
    async fn revalidate(self: Arc<Self>) {
        loop {
            tokio::time::sleep(REVALIDATE).await;
            let mut users: HashSet<String> = self
                .sessions
                .lock()
                .map(|s| s.iter().map(|(_, s)| s.user.clone()).collect())
                .unwrap_or_default();
            if let Ok(b) = self.basic.lock() {
                users.extend(b.values().map(|e| e.user.clone()));
            }
            if users.is_empty() {
                continue;
            }
            let Ok(all) = self.auth.fingerprints().await else {
                continue;
            };
            for user in users {
                let fp = all.get(&user).cloned();
                let unchanged = self
                    .logins
                    .lock()
                    .ok()
                    .and_then(|l| l.get(&user).map(|(old, _)| *old == fp))
                    .unwrap_or(false);
                if unchanged {
                    self.remember_login(&user, fp);
                } else {
                    self.apply_fingerprint(&user, fp);
                }
            }
        }
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

    /// Ask PID 1 to check a password (`via` says how it came, for the log). Identical
    /// credentials being checked already wait for that check instead of making their own.
    /// A valid login's fingerprint is remembered; a failure is logged with user and client
    /// and answered no sooner than [`FAIL_FLOOR`] after the attempt began.
    async fn verify(
        self: &Arc<Self>,
        user: &str,
        password: &str,
        client: &str,
        via: &str,
    ) -> Verdict {
        let started = Instant::now();
        let key = self.basic_key(user, password);
        let me = self.clone();
        let (name, secret, from) = (
            user.to_string(),
            SecretString::new(password.to_string()),
            client.to_string(),
        );
        let via = via.to_string();
        // A user name field holding something secret-looking (a token typed in the wrong
        // field) is not logged as it is.
        let shown = shown_name(user);
        // One check, one log line, however many requests wait for it.
        let verdict = self
            .verifying
            .run(key, move || async move {
                let v = me.auth.verify(&name, secret.expose(), &from).await;
                match &v {
                    Verdict::Denied => {
                        log::warn!("login failed for user {shown} from {from} ({via})")
                    }
                    Verdict::Limited { .. } => {
                        log::warn!("login refused for user {shown} from {from}: rate limited")
                    }
                    Verdict::Valid { .. } | Verdict::Unavailable => {}
                }
                v
            })
            .await
            .unwrap_or(Verdict::Unavailable);
        match &verdict {
            Verdict::Valid { fingerprint } => {
                self.apply_fingerprint(user, Some(fingerprint.clone()))
            }
            Verdict::Denied => tokio::time::sleep_until((started + FAIL_FLOOR).into()).await,
            Verdict::Limited { .. } | Verdict::Unavailable => {}
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

    /// Record a session change for PID 1 and wake the sync task (touches wait for it).
    fn queue(&self, f: impl FnOnce(&mut Pending)) {
        let urgent = match self.pending.lock() {
            Ok(mut p) => {
                let before = (p.put.len(), p.remove.len());
                f(&mut p);
                // Bounded whatever PID 1 does.
                if p.put.len() > session::MAX_SESSIONS {
                    let extra = p.put.len() - session::MAX_SESSIONS;
                    p.put.drain(..extra);
                }
                if p.remove.len() > session::MAX_SESSIONS {
                    let extra = p.remove.len() - session::MAX_SESSIONS;
                    p.remove.drain(..extra);
                }
                if p.touch.len() > session::MAX_SESSIONS {
                    p.touch.clear();
                }
                (p.put.len(), p.remove.len()) != before
            }
            Err(_) => false,
        };
        if urgent {
            self.sync_wake.notify_one();
        }
    }

    /// Authenticate by session cookie, else by Basic credentials.
    async fn authenticate(self: &Arc<Self>, headers: &HeaderMap, client: &str) -> Auth {
        let cookies = headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok());
        if let Some(token) = request::session_cookie_named(cookies, self.cookie) {
            let id = session::id_of(&token);
            let found = self
                .sessions
                .lock()
                .ok()
                .and_then(|mut s| s.get(&id, Instant::now()));
            if let Some(s) = found {
                match self.current_fingerprint(&s.user).await {
                    Ok(Some(fp)) if fp == s.fingerprint => {
                        self.queue(|p| {
                            p.touch.insert(id);
                        });
                        return Auth::User(s.user);
                    }
                    Ok(_) => {}
                    Err(()) => return Auth::Unavailable,
                }
            }
        }
        let authorization = header_str(headers, header::AUTHORIZATION);
        if let Some(token) = authorization.and_then(request::bearer_token) {
            return self.authenticate_bearer(&token, client).await;
        }
        let Some((user, password)) = authorization.and_then(request::basic_credentials) else {
            return Auth::Denied;
        };
        let key = self.basic_key(&user, &password);
        let cached = self.basic.lock().ok().and_then(|b| {
            b.get(&key)
                .filter(|e| e.user == user && e.fresh())
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
                let token = crate::tokens::looks_like_token(&password);
                self.remember(key, &user, fingerprint, token);
                Auth::User(user)
            }
            Verdict::Denied => Auth::Denied,
            Verdict::Limited { retry_after } => Auth::Limited(retry_after),
            Verdict::Unavailable => Auth::Unavailable,
        }
    }

    /// Keep a verified credential (a password, or a `token`) for the cache's time.
    fn remember(&self, key: (u64, u64), user: &str, fingerprint: String, token: bool) {
        if let Ok(mut b) = self.basic.lock() {
            if b.len() >= MAX_BASIC_CACHE {
                b.clear();
            }
            b.insert(
                key,
                BasicEntry {
                    user: user.to_string(),
                    fingerprint,
                    verified: Instant::now(),
                    token,
                },
            );
        }
    }

    /// `Authorization: Bearer TOKEN`: a personal API token, checked by PID 1 (one check for
    /// identical concurrent tokens, trusted for [`TOKEN_CACHE_TTL`]).
    async fn authenticate_bearer(self: &Arc<Self>, token: &str, client: &str) -> Auth {
        let key = self.basic_key("", token);
        let cached = self.basic.lock().ok().and_then(|b| {
            b.get(&key)
                .filter(|e| e.token && e.fresh())
                .map(|e| (e.user.clone(), e.fingerprint.clone()))
        });
        if let Some((user, fp)) = cached {
            match self.current_fingerprint(&user).await {
                Ok(Some(cur)) if cur == fp => return Auth::User(user),
                Ok(_) => {}
                Err(()) => return Auth::Unavailable,
            }
        }
        let me = self.clone();
        let (t, c) = (token.to_string(), client.to_string());
        let (verdict, user) = self
            .bearers
            .run(
                key,
                move || async move { me.auth.verify_token(&t, &c).await },
            )
            .await
            .unwrap_or((Verdict::Unavailable, None));
        match (verdict, user) {
            (Verdict::Valid { fingerprint }, Some(user)) => {
                self.remember(key, &user, fingerprint, true);
                Auth::User(user)
            }
            // One line per check at PID 1 (which logs nothing for these) would let anyone
            // flood the log: debug only.
            (Verdict::Limited { retry_after }, _) => {
                log::debug!("token refused from {client}: rate limited");
                Auth::Limited(retry_after)
            }
            (Verdict::Unavailable, _) => Auth::Unavailable,
            _ => {
                log::debug!("token refused from {client}");
                Auth::Denied
            }
        }
    }

    /// The tokens page of `user`: GET lists; POST creates (the token shown once) or revokes.
    async fn tokens_page(self: &Arc<Self>, req: Request<Incoming>, user: &str) -> Response<Body> {
        let mut fresh = None;
        let mut error = None;
        if req.method() == hyper::Method::POST && !self.token_changes.allow(user, Instant::now()) {
            let mut r = html(
                StatusCode::TOO_MANY_REQUESTS,
                pages::tokens(user, &[], None, Some("Too many changes; wait a minute.")),
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("60"));
            return r;
        }
        if req.method() == hyper::Method::POST {
            let body = tokio::time::timeout(
                FORM_TIMEOUT,
                Limited::new(req.into_body(), MAX_FORM).collect(),
            )
            .await;
            let form = match body {
                Ok(Ok(c)) => request::parse_token_form(&String::from_utf8_lossy(&c.to_bytes())),
                _ => None,
            };
            match form {
                Some(request::TokenForm::Create { name, expires }) => {
                    match self.auth.create_token(user, &name, &expires).await {
                        Ok(t) => {
                            log::info!("{user:?} made a token ({name:?}) on the tokens page");
                            fresh = Some(t);
                        }
                        Err(e) => error = Some(e),
                    }
                }
                Some(request::TokenForm::Revoke { id })
                    if id.len() != 12 || !id.bytes().all(|b| b.is_ascii_hexdigit()) =>
                {
                    error = Some("No such token.".into());
                }
                Some(request::TokenForm::Revoke { id }) => {
                    if let Err(e) = self.auth.revoke_token(user, &id).await {
                        error = Some(e);
                    }
                }
                None => error = Some("That form was not understood.".into()),
            }
        }
        let Ok(list) = self.auth.tokens(user).await else {
            return unavailable("cannot list the tokens right now");
        };
        let page = pages::tokens(
            user,
            &list,
            fresh.as_ref().map(|t| t.expose()),
            error.as_deref(),
        );
        let status = if error.is_some() {
            StatusCode::BAD_REQUEST
        } else {
            StatusCode::OK
        };
        html(status, page)
    }

    /// `Err` when a page of another origin sent the request (see [`origin`]).
    fn same_origin(&self, h: &HeaderMap, method: &str, https: bool) -> Result<(), &'static str> {
        let own = origin::own_origin(
            header_str(h, header::HOST),
            header_str(h, HeaderName::from_static("x-forwarded-host")),
            https,
            self.settings.trust_proxy,
        );
        origin::check(&origin::Facts {
            method,
            upgrade: is_upgrade(h),
            origin: header_str(h, header::ORIGIN),
            fetch_site: header_str(h, HeaderName::from_static("sec-fetch-site")),
            fetch_mode: header_str(h, HeaderName::from_static("sec-fetch-mode")),
            own: own.as_deref(),
            trusted: &self.settings.trusted_origins,
        })
    }

    /// Answer one request.
    async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: SocketAddr,
        slot: Arc<Slot>,
    ) -> Response<Body> {
        if head_size(&req) > MAX_HEAD {
            return json(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                serde_json::json!({"error": "headers_too_large",
                    "message": format!("request headers larger than {} KiB", MAX_HEAD / 1024)}),
            );
        }
        let path = req.uri().path().to_string();
        let kind = request::classify(req.method().as_str(), &path, self.settings.public_health);
        let h = req.headers();
        let client = request::client_address(
            &peer.ip().to_string(),
            header_str(h, HeaderName::from_static("x-forwarded-for")),
            self.settings.trust_proxy,
        );
        let https = self.settings.tls
            || request::is_https(
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
        // Pages of other origins (another port of this host is the same *site*) get
        // nothing: no login, no logout, no request with a user's credentials.
        if matches!(
            kind,
            Kind::LoginSubmit
                | Kind::Logout
                | Kind::Opencode
                | Kind::Tokens
                | Kind::DeviceCode
                | Kind::DeviceToken
        ) {
            if let Err(why) = self.same_origin(h, req.method().as_str(), https) {
                log::debug!(
                    "refused {} {path} from {client}: {why} (Origin {:?})",
                    req.method(),
                    header_str(h, header::ORIGIN)
                );
                return json(
                    StatusCode::FORBIDDEN,
                    serde_json::json!({"error": "cross_origin", "message": why}),
                );
            }
        }
        // While gated nothing but the gate page is served, and no password is checked.
        let gate = match self.gate().await {
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
            Ok(g) => g,
            Err(()) => return unavailable("occ-init is not answering; try again shortly"),
        };
        let no_users = gate.users == 0;
        // Only the opencode PID 1 started and found healthy gets requests: while it starts,
        // restarts or is replaced (a process that killed it and took its port gets nothing
        // from here), clients wait.
        let not_ready = || unavailable("opencode is starting; try again shortly");
        // How long a logged-in request waits for its opencode to start: a browser gets
        // the starting page soon, an API client waits longer.
        let wait = if wants_html {
            instances::BROWSER_WAIT.min(self.settings.instance_start_timeout)
        } else {
            self.settings.instance_start_timeout
        };
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
                html(StatusCode::OK, self.login_page(&next, None, no_users))
            }
            Kind::LoginSubmit => {
                let r = self.login(req, &client, https, no_users).await;
                if r.status() == StatusCode::SEE_OTHER {
                    slot.authenticated();
                }
                r
            }
            Kind::Logout => self.logout(&req, https),
            Kind::OidcLogin => self.oidc_begin(&req, https),
            Kind::OidcCallback => self.oidc_callback(&req, https, &client).await,
            Kind::DeviceCode | Kind::DeviceToken => self.device(req, kind, &client).await,
            Kind::Tokens => match self.authenticate(req.headers(), &client).await {
                // Tokens are managed with the password (a leaked token must not mint more).
                Auth::User(_) if by_token(req.headers()) => json(
                    StatusCode::FORBIDDEN,
                    serde_json::json!({"error": "password_required",
                        "message": "sign in with your password to manage tokens"}),
                ),
                Auth::User(user) => {
                    slot.authenticated();
                    self.tokens_page(req, &user).await
                }
                Auth::Denied if wants_html => redirect(&request::login_location("/_occ/tokens")),
                Auth::Denied => unauthorized(),
                Auth::Limited(s) => too_many(s, None),
                Auth::Unavailable => unavailable("cannot check the login right now"),
            },
            Kind::OwnNotFound => json(
                StatusCode::NOT_FOUND,
                serde_json::json!({"error": "not_found"}),
            ),
            // Per user there is no one opencode to ask: the proxy answers for the door.
            Kind::PublicHealth if gate.per_user => json(
                if gate.ready {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                },
                serde_json::json!({"healthy": gate.ready, "instances": "per-user"}),
            ),
            // Never upgraded: upgrade headers on the public path are dropped.
            Kind::PublicHealth if !gate.ready => not_ready(),
            Kind::PublicHealth => match self.shared_relay(&gate) {
                Some(to) => self.forward(req, https, peer, to, slot, false).await,
                None => not_ready(),
            },
            Kind::Opencode => match self.authenticate(req.headers(), &client).await {
                Auth::User(_) if !gate.ready && gate.per_user => {
                    slot.authenticated();
                    not_ready()
                }
                Auth::User(user) if gate.per_user => {
                    slot.authenticated();
                    match self.instance_for(&user, wait, wants_html).await {
                        Ok(to) => self.forward(req, https, peer, to, slot, true).await,
                        Err(r) => r,
                    }
                }
                Auth::User(user) => {
                    slot.authenticated();
                    log::trace!("{} {path} as {user:?}", req.method());
                    let Some(gate) = self.shared_ready(gate, wait).await else {
                        return not_ready();
                    };
                    match self.shared_relay(&gate) {
                        Some(to) => self.forward(req, https, peer, to, slot, true).await,
                        None => not_ready(),
                    }
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

    /// A new browser session for `user`: kept here and (queued) at PID 1; its Set-Cookie.
    fn open_session(&self, user: &str, fingerprint: &str, https: bool) -> Option<String> {
        let token = session::new_token().ok()?;
        let id = session::id_of(&token);
        let now = Instant::now();
        if let Ok(mut s) = self.sessions.lock() {
            s.insert(id.clone(), user, fingerprint, now);
        }
        let copy = Session {
            user: user.to_string(),
            fingerprint: fingerprint.to_string(),
            created: now,
            last_seen: now,
        };
        self.queue(|p| p.put.push((id, copy)));
        Some(format!(
            "{}={token}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}{}",
            self.cookie,
            self.settings.session_max_age.as_secs(),
            if https { "; Secure" } else { "" }
        ))
    }

    /// The name and path of the cookie that binds a sign-in to its browser: over TLS with the
    /// `__Host-` prefix (a server on another port of the host cannot plant one).
    fn flow_cookie(&self) -> (&'static str, &'static str) {
        if self.tls.is_some() {
            ("__Host-occ_oidc", "/")
        } else {
            (oidc::FLOW_COOKIE, "/_occ/oidc/")
        }
    }

    /// The login page, with single sign-on when it is configured.
    fn login_page(&self, next: &str, error: Option<&str>, no_users: bool) -> String {
        match &self.oidc {
            Some(o) => pages::login_sso(
                next,
                error,
                no_users,
                Some(&pages::Sso {
                    name: &o.settings.provider_name,
                    available: o.available(),
                    passwords: o.settings.password_login,
                }),
            ),
            None => pages::login(next, error, no_users),
        }
    }

    /// `GET /_occ/oidc/login?next=…`: to the provider, with the flow bound to this browser.
    fn oidc_begin(&self, req: &Request<Incoming>, https: bool) -> Response<Body> {
        let Some(o) = &self.oidc else {
            return json(
                StatusCode::NOT_FOUND,
                serde_json::json!({"error": "not_found"}),
            );
        };
        let next = req
            .uri()
            .query()
            .and_then(|q| request::form_value(q, "next"))
            .map(|n| request::safe_next(&n))
            .unwrap_or_else(|| "/".into());
        match o.begin(&next) {
            Ok((url, binding)) => {
                let mut r = redirect(&url);
                let (name, path) = self.flow_cookie();
                let cookie = format!(
                    "{name}={binding}; HttpOnly; SameSite=Lax; Path={path}; Max-Age={}{}",
                    oidc::FLOW_TTL.as_secs(),
                    if https { "; Secure" } else { "" }
                );
                if let Ok(v) = HeaderValue::from_str(&cookie) {
                    r.headers_mut().insert(header::SET_COOKIE, v);
                }
                r
            }
            Err(f) => html(
                StatusCode::from_u16(f.status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
                pages::sso_failed(&f.message),
            ),
        }
    }

    /// `GET /_occ/oidc/callback`: verify, ask PID 1 which user this is, open her session.
    async fn oidc_callback(
        &self,
        req: &Request<Incoming>,
        https: bool,
        client: &str,
    ) -> Response<Body> {
        let Some(o) = &self.oidc else {
            return json(
                StatusCode::NOT_FOUND,
                serde_json::json!({"error": "not_found"}),
            );
        };
        let query = req.uri().query().unwrap_or("");
        let binding = req
            .headers()
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(|c| request::session_cookie_named(std::iter::once(c), self.flow_cookie().0));
        let (name, path) = self.flow_cookie();
        let clear = format!(
            "{name}=; HttpOnly; SameSite=Lax; Path={path}; Max-Age=0{}",
            if https { "; Secure" } else { "" }
        );
        let failed = |status: u16, message: &str| {
            let mut r = html(
                StatusCode::from_u16(status).unwrap_or(StatusCode::FORBIDDEN),
                pages::sso_failed(message),
            );
            if let Ok(v) = HeaderValue::from_str(&clear) {
                r.headers_mut().append(header::SET_COOKIE, v);
            }
            r
        };
        let (who, next) = match o.finish(&self.auth, query, binding.as_deref()).await {
            Ok(w) => w,
            Err(f) => {
                log::warn!("oidc: sign-in from {client} refused: {}", f.message);
                return failed(f.status, &f.message);
            }
        };
        let identity = who.identity(&o.settings.issuer);
        let (user, fingerprint) = match self.auth.oidc_login(&identity).await {
            Ok(u) => u,
            Err(why) => {
                log::warn!(
                    "oidc: {:?} (sub {:?}) from {client} gets no session: {why}",
                    who.username,
                    who.sub
                );
                return failed(403, &format!("You cannot sign in here: {why}."));
            }
        };
        let Some(cookie) = self.open_session(&user, &fingerprint, https) else {
            return unavailable("cannot create a session");
        };
        log::info!(
            "{user:?} signed in with {} from {client}",
            o.settings.provider_name
        );
        let mut r = html(StatusCode::OK, pages::signed_in(&user, &next));
        for c in [cookie, clear] {
            if let Ok(v) = HeaderValue::from_str(&c) {
                r.headers_mut().append(header::SET_COOKIE, v);
            }
        }
        r
    }

    /// The device endpoints: a device code (relayed from the provider), then polls until the
    /// person approved; the answer is a personal API token of the container user.
    async fn device(
        self: &Arc<Self>,
        req: Request<Incoming>,
        kind: Kind,
        client: &str,
    ) -> Response<Body> {
        let Some(o) = self.oidc.clone() else {
            return json(
                StatusCode::NOT_FOUND,
                serde_json::json!({"error": "not_found"}),
            );
        };
        let oauth_error = |status: u16, code: &str, description: &str| {
            json(
                StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
                serde_json::json!({"error": code, "error_description": description}),
            )
        };
        if kind == Kind::DeviceCode && !self.device_asks.allow(client, Instant::now()) {
            let mut r = oauth_error(
                429,
                "temporarily_unavailable",
                "too many device codes asked for from this address; try again in a minute",
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("60"));
            return r;
        }
        if kind == Kind::DeviceCode {
            return match o.device_code(&self.auth, client).await {
                Ok(v) => json(StatusCode::OK, v),
                Err(f) => oauth_error(
                    f.status,
                    match f.status {
                        501 => "unsupported",
                        429 | 503 => "temporarily_unavailable",
                        _ => "server_error",
                    },
                    &f.message,
                ),
            };
        }
        let body = tokio::time::timeout(
            FORM_TIMEOUT,
            Limited::new(req.into_body(), MAX_FORM).collect(),
        )
        .await;
        let code = match body {
            Ok(Ok(c)) => {
                request::form_value(&String::from_utf8_lossy(&c.to_bytes()), "device_code")
            }
            _ => None,
        };
        let Some(code) = code.filter(|c| !c.is_empty() && c.len() <= 256) else {
            return oauth_error(400, "invalid_request", "send device_code=… as a form");
        };
        let who = match o.device_token(&self.auth, &code).await {
            Ok(w) => w,
            Err((status, code, why)) => return oauth_error(status, code, &why),
        };
        let identity = who.identity(&o.settings.issuer);
        let user = match self.auth.oidc_login(&identity).await {
            Ok((u, _)) => u,
            Err(why) => {
                log::warn!(
                    "oidc: device login of {:?} from {client} refused: {why}",
                    who.username
                );
                return oauth_error(403, "access_denied", &why);
            }
        };
        match self.auth.create_token(&user, "device login", "90d").await {
            Ok(token) => {
                log::info!(
                    "{user:?} signed in by device login with {} from {client}",
                    o.settings.provider_name
                );
                json(
                    StatusCode::OK,
                    serde_json::json!({"access_token": token.expose(), "token_type": "Bearer",
                        "expires_in": 90 * 86_400, "user": user}),
                )
            }
            Err(why) => oauth_error(500, "server_error", &why),
        }
    }

    async fn login(
        self: &Arc<Self>,
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
                    self.login_page("/", Some("That form was too large."), no_users),
                )
            }
            Err(_) => {
                return html(
                    StatusCode::REQUEST_TIMEOUT,
                    self.login_page("/", Some("The form took too long to arrive."), no_users),
                )
            }
        };
        let form = request::parse_login(&String::from_utf8_lossy(&bytes));
        bytes.iter_mut().for_each(|b| *b = 0);
        let Some(form) = form else {
            return html(
                StatusCode::BAD_REQUEST,
                self.login_page("/", Some("Enter a username and a password."), no_users),
            );
        };
        // A token opens no browser session: it would outlive its revocation and could mint
        // more tokens on the tokens page.
        if crate::tokens::looks_like_token(&form.password) {
            return html(
                StatusCode::UNAUTHORIZED,
                self.login_page(
                    &form.next,
                    Some("That is a personal API token: sign in here with your password."),
                    no_users,
                ),
            );
        }
        let verdict = self
            .verify(&form.username, &form.password, client, "login form")
            .await;
        match verdict {
            Verdict::Valid { fingerprint } => {
                let Some(cookie) = self.open_session(&form.username, &fingerprint, https) else {
                    return unavailable("cannot create a session");
                };
                log::info!("{:?} logged in from {client}", form.username);
                let mut r = redirect(&form.next);
                if let Ok(v) = HeaderValue::from_str(&cookie) {
                    r.headers_mut().insert(header::SET_COOKIE, v);
                }
                r
            }
            Verdict::Denied => html(
                StatusCode::UNAUTHORIZED,
                self.login_page(&form.next, Some("Invalid username or password."), no_users),
            ),
            Verdict::Limited { retry_after } => too_many(
                retry_after,
                Some(self.login_page(
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
        if let Some(token) = request::session_cookie_named(cookies, self.cookie) {
            let id = session::id_of(&token);
            let old = self.sessions.lock().ok().and_then(|mut s| s.remove(&id));
            if let Some(old) = old {
                log::info!("{:?} logged out", old.user);
                self.queue(|p| p.remove.push(id));
            }
        }
        let mut r = redirect("/_occ/login");
        let cookie = format!(
            "{}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0{}",
            self.cookie,
            if https { "; Secure" } else { "" }
        );
        if let Ok(v) = HeaderValue::from_str(&cookie) {
            r.headers_mut().insert(header::SET_COOKIE, v);
        }
        r
    }

    /// Relay to opencode: the client's credentials stripped and opencode's own sent,
    /// X-Forwarded-* set, bodies streamed. A WebSocket upgrade (only where `upgrades`) goes
    /// on a fresh upstream connection and is spliced both ways, holding the client's slot;
    /// other upgrade requests are relayed as plain requests, so no pooled connection is ever
    /// handed to a protocol switch.
    async fn forward(
        &self,
        mut req: Request<Incoming>,
        https: bool,
        peer: SocketAddr,
        to: Relay,
        slot: Arc<Slot>,
        upgrades: bool,
    ) -> Response<Body> {
        // Requests (and credentials) go only to a socket of the uid PID 1 started opencode as.
        match to.uid {
            Some(uid) => self.owners.expect(to.addr.port(), uid),
            None => {
                return unavailable("occ-init did not say who runs opencode; try again shortly")
            }
        }
        let websocket = upgrades && is_websocket(req.headers());
        let client_upgrade = websocket.then(|| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        // Credentials in the query (opencode's `auth_token`) are the client's: dropped.
        let pq = match parts
            .uri
            .query()
            .map(|q| request::strip_query_param(q, "auth_token"))
        {
            Some(Some(q)) => format!("{}?{q}", parts.uri.path()),
            Some(None) | None => parts.uri.path().to_string(),
        };
        let upstream = to.addr;
        let Ok(uri) = format!("http://{upstream}{pq}").parse::<hyper::Uri>() else {
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
        if let Some(v) = to
            .authorization
            .as_deref()
            .and_then(|a| HeaderValue::from_str(a).ok())
        {
            h.insert(header::AUTHORIZATION, v);
        }
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
        if websocket {
            h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        }
        let up_req = Request::from_parts(parts, body);
        let sent = if websocket {
            self.send_alone(up_req, upstream).await
        } else {
            self.client.request(up_req).await.map_err(|e| e.to_string())
        };
        let mut resp = match sent {
            Ok(r) => r,
            Err(e) => {
                log::debug!("upstream request failed: {e}");
                if let Some(user) = &to.user {
                    self.forget_instance(user);
                }
                return unavailable("opencode is not answering (starting or restarting?)");
            }
        };
        if resp.status() == StatusCode::UNAUTHORIZED {
            // opencode restarted with a new password since the gate state was read.
            match &to.user {
                Some(user) => self.forget_instance(user),
                None => self.forget_gate(),
            }
            return unavailable("opencode is restarting; try again shortly");
        }
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            if let Some(client_upgrade) = client_upgrade {
                let upstream_upgrade = hyper::upgrade::on(&mut resp);
                // An open terminal keeps its user's instance from stopping as idle.
                let terminal = to
                    .user
                    .as_deref()
                    .map(|u| instances::Terminal::open(self.usage.clone(), u));
                tokio::spawn(async move {
                    let _slot = slot;
                    let _terminal = terminal;
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
        parts.headers.remove(header::WWW_AUTHENTICATE);
        // opencode's pages may be framed by no other origin (another port of this host
        // included): no clickjacking of a logged-in UI.
        parts
            .headers
            .entry("x-frame-options")
            .or_insert(HeaderValue::from_static("SAMEORIGIN"));
        parts.headers.append(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("frame-ancestors 'self'"),
        );
        Response::from_parts(parts, body.boxed())
    }

    /// Send one request on an upstream connection of its own (for an upgrade).
    async fn send_alone(
        &self,
        req: Request<Incoming>,
        upstream: SocketAddr,
    ) -> Result<Response<Incoming>, String> {
        let stream = upstream::connect_checked(upstream, &self.owners).await?;
        let _ = stream.set_nodelay(true);
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        sender.send_request(req).await.map_err(|e| e.to_string())
    }

    /// Take back PID 1's copy of the sessions (a restarted proxy logs nobody out).
    async fn load_sessions(&self) {
        for attempt in 0..4 {
            match self.auth.sessions().await {
                Ok(list) => {
                    let now = Instant::now();
                    let n = list.len();
                    if let Ok(mut s) = self.sessions.lock() {
                        for c in list {
                            let ago =
                                |ms| now.checked_sub(Duration::from_millis(ms)).unwrap_or(now);
                            let copy = Session {
                                user: c.user,
                                fingerprint: c.fingerprint,
                                created: ago(c.created_ms_ago),
                                last_seen: ago(c.seen_ms_ago),
                            };
                            s.restore(c.id, copy, now);
                        }
                    }
                    if n > 0 {
                        log::info!("took back {n} session(s) kept by occ-init");
                    }
                    return;
                }
                Err(()) if attempt < 3 => tokio::time::sleep(Duration::from_millis(250)).await,
                Err(()) => log::warn!("occ-init's copy of the sessions is out of reach"),
            }
        }
    }

    /// Tell PID 1 about session changes: new and ended ones at once, used ones every
    /// [`TOUCH_EVERY`]. New and ended ones that cannot be sent are tried again later.
    async fn sync_sessions(self: Arc<Self>) {
        loop {
            tokio::select! {
                _ = self.sync_wake.notified() => {}
                _ = tokio::time::sleep(TOUCH_EVERY) => {}
            }
            let Ok(mut pending) = self.pending.lock().map(|mut p| std::mem::take(&mut *p)) else {
                continue;
            };
            let mut touch: Vec<String> = pending.touch.drain().collect();
            while !(pending.put.is_empty() && pending.remove.is_empty() && touch.is_empty()) {
                let now = Instant::now();
                let ms = |t: Instant| now.saturating_duration_since(t).as_millis() as u64;
                let n = |len: usize| len.min(SYNC_CHUNK);
                let chunk = SessionSync {
                    put: pending.put[..n(pending.put.len())]
                        .iter()
                        .map(|(id, s)| SessionCopy {
                            id: id.clone(),
                            user: s.user.clone(),
                            fingerprint: s.fingerprint.clone(),
                            created_ms_ago: ms(s.created),
                            seen_ms_ago: ms(s.last_seen),
                        })
                        .collect(),
                    remove: pending.remove[..n(pending.remove.len())].to_vec(),
                    touch: touch.drain(..n(touch.len())).collect(),
                };
                if self.auth.sync_sessions(&chunk).await.is_err() {
                    log::debug!("cannot reach occ-init to keep the sessions; trying later");
                    self.queue(|p| {
                        p.put.splice(0..0, pending.put.drain(..));
                        p.remove.splice(0..0, pending.remove.drain(..));
                    });
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    break;
                }
                pending.put.drain(..chunk.put.len());
                pending.remove.drain(..chunk.remove.len());
            }
        }
    }
}

/// Serve one accepted client connection, holding `slot` until it and anything spliced
/// from it end.
async fn serve_conn(proxy: Arc<Proxy>, stream: TcpStream, peer: SocketAddr, slot: Slot) {
    let _ = stream.set_nodelay(true);
    let evicted = slot.evicted();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&stream);
    let slot = Arc::new(slot);
    let Some((acceptor, certs)) = proxy.tls.clone() else {
        let io = TokioIo::new(Guarded::new(stream, conn::WRITE_STALL, conn::IDLE));
        return serve_http(proxy, io, peer, slot, evicted, fd).await;
    };
    // TLS: the first byte says whether a handshake begins; anything else is plain HTTP,
    // which gets a redirect to https (never a hang, never a raw TLS alert). Until a login
    // is served, a newcomer that needs the place ends the wait at once (as in `serve_http`).
    let mut first = [0u8; 1];
    let tls = tokio::select! {
        r = tokio::time::timeout(HEADER_TIMEOUT, stream.peek(&mut first)) => match r {
            Ok(Ok(1)) => first[0] == super::tls::HANDSHAKE,
            _ => return,
        },
        _ = evicted.notified() => return,
    };
    let guarded = Guarded::new(stream, conn::WRITE_STALL, conn::IDLE);
    if !tls {
        tokio::select! {
            _ = serve_plain_on_tls(guarded, certs.ready(), peer) => {}
            _ = evicted.notified() => {}
        }
        return;
    }
    let accepted = tokio::select! {
        r = tokio::time::timeout(HEADER_TIMEOUT, acceptor.accept(guarded)) => r,
        _ = evicted.notified() => {
            log::debug!("closing a TLS handshake from {peer} to make room");
            return;
        }
    };
    match accepted {
        Ok(Ok(s)) => serve_http(proxy, TokioIo::new(s), peer, slot, evicted, fd).await,
        Ok(Err(e)) => log::debug!("TLS handshake with {peer} failed: {e}"),
        Err(_) => log::debug!("TLS handshake with {peer} timed out"),
    }
}

/// Plain HTTP on the TLS port: every request is sent to the same host and path over https
/// (308), or told to use https when it names no usable host (400); while there is no
/// certificate yet, 503 says so. The connection then closes.
async fn serve_plain_on_tls<S>(io: S, ready: bool, peer: SocketAddr)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req: Request<Incoming>| async move {
        let location = super::tls::https_location(
            header_str(req.headers(), header::HOST),
            req.uri().path_and_query().map_or("/", |p| p.as_str()),
        );
        let mut r = match (ready, location) {
            (false, _) => full(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain; charset=utf-8",
                "This server speaks HTTPS only, and has no usable certificate yet (see `occ-init status`).\n",
            ),
            (true, Some(to)) => {
                let mut r = full(
                    StatusCode::PERMANENT_REDIRECT,
                    "text/plain; charset=utf-8",
                    format!("Use HTTPS: {to}\n"),
                );
                if let Ok(v) = HeaderValue::from_str(&to) {
                    r.headers_mut().insert(header::LOCATION, v);
                }
                r
            }
            (true, None) => full(
                StatusCode::BAD_REQUEST,
                "text/plain; charset=utf-8",
                "This server speaks HTTPS only: use https://\n",
            ),
        };
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        Ok::<_, std::convert::Infallible>(r)
    });
    let served = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .keep_alive(false)
        .max_buf_size(MAX_HEAD + 8 * 1024)
        .serve_connection(TokioIo::new(io), service);
    if let Ok(Err(e)) = tokio::time::timeout(HEADER_TIMEOUT * 2, served).await {
        log::debug!("plain HTTP from {peer} on the TLS port: {e}");
    }
}

/// Serve HTTP/1.1 (plain, or inside TLS) on one client connection until it ends or is
/// evicted to make room.
async fn serve_http<I>(
    proxy: Arc<Proxy>,
    io: I,
    peer: SocketAddr,
    slot: Arc<Slot>,
    evicted: Arc<tokio::sync::Notify>,
    fd: std::os::fd::RawFd,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let hsts = proxy.settings.tls && proxy.settings.hsts;
    let service = service_fn(move |req| {
        let (p, slot) = (proxy.clone(), slot.clone());
        async move {
            let mut r = p.handle(req, peer, slot).await;
            if hsts {
                r.headers_mut().insert(
                    header::STRICT_TRANSPORT_SECURITY,
                    HeaderValue::from_static("max-age=31536000"),
                );
            }
            Ok::<_, std::convert::Infallible>(r)
        }
    });
    let served = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_HEAD + 8 * 1024)
        .serve_connection(io, service)
        .with_upgrades();
    // A connection that never carried a login is closed when a newcomer needs its place: a
    // FIN first (a client that reads sees the end, not a reset), then it goes within
    // [`conn::EVICT_GRACE`].
    tokio::pin!(served);
    tokio::select! {
        r = &mut served => if let Err(e) = r {
            log::debug!("connection from {peer}: {e}");
        },
        _ = evicted.notified() => {
            log::debug!("closing a connection from {peer} without a login to make room");
            // The socket is still open: it lives inside `served`, dropped only below.
            let _ = nix::sys::socket::shutdown(fd, nix::sys::socket::Shutdown::Write);
            let _ = tokio::time::timeout(conn::EVICT_GRACE, served).await;
        }
    }
}

/// Accept on one public socket until the process is killed.
async fn accept_loop(listener: TcpListener, proxy: Arc<Proxy>) {
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
        // Clients of the dual-stack socket: IPv4 as IPv4, in the limiter and the log.
        let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
        match proxy.slots.take(peer.ip()) {
            Ok(slot) => {
                tokio::spawn(serve_conn(proxy.clone(), stream, peer, slot));
            }
            Err(why) => {
                log::debug!("refused a connection from {peer}: {}", why.message());
                tokio::spawn(conn::refuse(proxy.slots.clone(), stream, why));
            }
        }
    }
}

/// PID 1's private probe: `/_occ/health` on the unix socket it handed down (root only),
/// out of reach of the public port's clients.
async fn serve_health(listener: tokio::net::UnixListener, proxy: Arc<Proxy>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let p = proxy.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let connections = p.slots.total();
                async move {
                    Ok::<_, std::convert::Infallible>(if req.uri().path() == "/_occ/health" {
                        json(
                            StatusCode::OK,
                            serde_json::json!({"healthy": true, "proxy": true,
                                "connections": connections}),
                        )
                    } else {
                        json(
                            StatusCode::NOT_FOUND,
                            serde_json::json!({"error": "not_found"}),
                        )
                    })
                }
            });
            let _ = tokio::time::timeout(
                Duration::from_secs(10),
                http1::Builder::new().serve_connection(TokioIo::new(stream), service),
            )
            .await;
        });
    }
}

/// Take back the sessions, then accept on every public socket (and the health socket)
/// until the process is killed.
pub async fn serve(
    listeners: Vec<TcpListener>,
    health: Option<tokio::net::UnixListener>,
    proxy: Arc<Proxy>,
) {
    proxy.load_sessions().await;
    if let Some(o) = proxy.oidc.clone() {
        tokio::spawn(o.keep_discovered(proxy.auth.clone()));
    }
    tokio::spawn(proxy.clone().sync_sessions());
    tokio::spawn(proxy.clone().revalidate());
    tokio::spawn(proxy.clone().report_activity());
    if let Some(h) = health {
        tokio::spawn(serve_health(h, proxy.clone()));
    }
    let tasks: Vec<_> = listeners
        .into_iter()
        .map(|l| tokio::spawn(accept_loop(l, proxy.clone())))
        .collect();
    for t in tasks {
        let _ = t.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn only_websocket_upgrades_are_relayed() {
        let ws = headers(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
        ]);
        assert!(is_websocket(&ws));
        let h2c = headers(&[("connection", "upgrade"), ("upgrade", "h2c")]);
        assert!(is_upgrade(&h2c) && !is_websocket(&h2c));
        let no_conn = headers(&[("upgrade", "websocket")]);
        assert!(!is_websocket(&no_conn));
        let mut h = headers(&[
            ("connection", "Upgrade, HTTP2-Settings"),
            ("upgrade", "h2c"),
            ("http2-settings", "AAMAAABkAARAAAAAAAIAAAAA"),
            ("x-keep", "1"),
        ]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
    }

    #[test]
    fn head_size_counts_line_and_headers() {
        let mut b = Request::builder().uri("/abc?x=1");
        for i in 0..10 {
            b = b.header(format!("x-h{i}"), "v".repeat(100));
        }
        let r = b.body(()).unwrap();
        let n = head_size(&r);
        assert!((10 * 104..10 * 110 + 40).contains(&n), "{n}");
    }
}
