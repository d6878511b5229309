//! The admin socket inside PID 1: a root-only unix socket (directory 0700, socket 0600,
//! peer uid checked), one thread per connection up to a cap, read/write timeouts and an
//! overall deadline per request. User operations run here, on the connection thread, with
//! the same code as the CLI's direct mode (serialized by the users lock); anything that
//! needs PID 1's own state goes to its loop as a [`Job`] and waits for the reply.

use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

use super::api::{self, ApiError, RateLimiter, Route};
use super::http::{self, Response};
use crate::init::wake::{WakeReader, WakeWriter};
use crate::proxy::session::Sessions;
use crate::secret::SecretString;
use crate::status::Status;
use crate::users::{Exposure, NewSecret, Persistence, Users, UsersError};

/// Concurrent admin connections served at once; more get 503 at once.
pub const MAX_CONNECTIONS: usize = 64;
/// Concurrent auth-socket connections (the proxy's), counted apart from the admin socket's
/// so that a flood at the proxy never takes `occ-init status` down with it.
pub const MAX_AUTH_CONNECTIONS: usize = 64;
/// Per-read/per-write timeout on a connection.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Overall time a client has to send its whole request.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(10);
/// How long a connection waits for PID 1's loop to answer.
pub const LOOP_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a connection waits for a user change (useradd, chpasswd) in PID 1's loop.
pub const USER_OP_TIMEOUT: Duration = Duration::from_secs(60);

/// A user change for PID 1's loop to carry out.
#[derive(Debug)]
pub enum UserOp {
    Add {
        name: String,
        secret: NewSecret,
        uid: Option<u32>,
    },
    Remove {
        name: String,
        force: bool,
    },
    SetPassword {
        name: String,
        secret: NewSecret,
    },
    SetLocked {
        name: String,
        locked: bool,
    },
}

impl UserOp {
    pub fn name(&self) -> &str {
        match self {
            UserOp::Add { name, .. }
            | UserOp::Remove { name, .. }
            | UserOp::SetPassword { name, .. }
            | UserOp::SetLocked { name, .. } => name,
        }
    }

    /// The job for PID 1's user helper process.
    pub fn into_job(self, exposure: &Exposure) -> crate::users::worker::Job {
        use crate::users::worker::Job;
        match self {
            UserOp::Add { name, secret, uid } => Job::add(name, secret, uid),
            UserOp::Remove { name, force } => Job::remove(name, force, exposure),
            UserOp::SetPassword { name, secret } => Job::set_password(name, secret),
            UserOp::SetLocked { name, locked } => Job::SetLocked { name, locked },
        }
    }
}

/// What the server asks of PID 1's loop.
#[derive(Debug)]
pub enum LoopRequest {
    Status,
    Ready,
    Restart,
    User(UserOp),
    /// The proxy's report: activity, and maybe a user whose instance to start.
    Instances(crate::instances::Report),
    ListInstances,
    StopInstance(String),
}

/// PID 1's answers.
#[derive(Debug)]
pub enum LoopReply {
    Status(Box<Status>),
    Ready { ready: bool, state: String },
    Restart(Result<(), String>),
    User(Result<Persistence, ApiError>),
    Instances(Vec<crate::instances::View>),
    InstanceList(Vec<crate::status::Instance>),
    Stopped(Result<(), String>),
}

pub struct Job {
    pub request: LoopRequest,
    pub reply: Option<Sender<LoopReply>>,
}

/// The loop's end: jobs plus a pipe that becomes readable when one arrives.
pub struct Mailbox {
    jobs: Receiver<Job>,
    wake: WakeReader,
}

impl Mailbox {
    /// Jobs that arrived since the last call.
    pub fn drain(&self) -> Vec<Job> {
        self.wake.drain();
        self.jobs.try_iter().collect()
    }
}

impl AsFd for Mailbox {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.wake.as_fd()
    }
}

/// Whether opencode is gated, as the proxy must show it (kept current by PID 1's loop).
#[derive(Debug, Clone, Default)]
pub struct GateView {
    /// Why opencode is held back; `None` when it may run.
    pub reason: Option<String>,
    /// opencode answers health probes.
    pub ready: bool,
    /// How many users can log in now.
    pub users: usize,
    /// Every user has an opencode of their own (`instances = per-user`).
    pub per_user: bool,
    /// The `Authorization` value opencode's current start accepts (its per-start random
    /// password), for the proxy to send upstream.
    pub upstream_authorization: Option<Arc<SecretString>>,
    /// Where opencode listens now (`127.0.0.1:PORT`; a new port at every start).
    pub upstream: Option<String>,
    /// The uid opencode runs as (only its socket on that port may get the proxy's requests).
    pub upstream_uid: Option<u32>,
}

/// Single sign-on as PID 1 holds it (kept current on boot and SIGHUP).
#[derive(Debug)]
pub struct OidcShared {
    pub issuer: Option<String>,
    pub secret: Option<SecretString>,
    /// Why the secret could not be read.
    pub secret_error: Option<String>,
    pub pins: Option<crate::oidc::Pins>,
    pub username_claim: String,
    pub allowed_groups: Vec<String>,
    pub create_users: bool,
    pub password_login: bool,
    /// What the proxy last reported of the provider.
    pub reachable: Option<bool>,
    pub error: Option<String>,
    pub device: bool,
}

impl Default for OidcShared {
    fn default() -> OidcShared {
        OidcShared {
            issuer: None,
            secret: None,
            secret_error: None,
            pins: None,
            username_claim: "preferred_username".into(),
            allowed_groups: Vec::new(),
            create_users: false,
            password_login: true,
            reachable: None,
            error: None,
            device: false,
        }
    }
}

impl OidcShared {
    /// From the configuration: reads the client secret file and the pins.
    pub fn configure(&mut self, cfg: &crate::config::Config) {
        self.password_login = cfg.password_login;
        self.username_claim = cfg.oidc_username_claim.clone();
        self.allowed_groups = cfg.oidc_allowed_groups.clone();
        self.create_users = cfg.oidc_create_users;
        if self.issuer != cfg.oidc_issuer {
            self.reachable = None;
            self.error = None;
        }
        self.issuer = cfg.oidc_issuer.clone();
        self.secret = None;
        self.secret_error = None;
        if self.issuer.is_none() {
            self.pins = None;
            return;
        }
        if let Some(path) = &cfg.oidc_client_secret_file {
            match crate::oidc::read_secret(path) {
                Ok(s) => self.secret = Some(s),
                Err(e) => {
                    log::error!("oidc: the client secret: {e}; OpenID sign-in cannot work");
                    self.secret_error = Some(e);
                }
            }
        }
        let pins = crate::oidc::Pins::load(&crate::oidc::default_pins_path(&cfg.users_file));
        if let Some(b) = &pins.broken {
            log::error!("oidc: the pins file: {b}; nobody signs in by OpenID until it is fixed");
        }
        self.pins = Some(pins);
    }
}

/// A unix socket this process bound. At exit it is removed only if the path still names
/// that socket (same device and inode): a second occ-init that found it in use, or a
/// successor that replaced it, keeps its own.
#[derive(Debug, Clone)]
pub struct Bound {
    pub path: PathBuf,
    dev: u64,
    ino: u64,
}

impl Bound {
    fn of(path: &Path) -> io::Result<Bound> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::symlink_metadata(path)?;
        Ok(Bound {
            path: path.to_path_buf(),
            dev: m.dev(),
            ino: m.ino(),
        })
    }

    /// Remove the socket if it is still the one bound here.
    pub fn unlink_if_ours(&self) {
        use std::os::unix::fs::MetadataExt;
        match std::fs::symlink_metadata(&self.path) {
            Ok(m) if m.dev() == self.dev && m.ino() == self.ino => {
                let _ = std::fs::remove_file(&self.path);
            }
            Ok(_) => log::debug!(
                "{} is another process's socket now; left alone",
                self.path.display()
            ),
            Err(_) => {}
        }
    }
}

/// One listener's connection count and cap.
struct Counter {
    active: AtomicUsize,
    cap: usize,
    what: &'static str,
}

/// What connection threads share; PID 1's loop updates it on reload.
pub struct Shared {
    pub users: Mutex<Users>,
    pub limiter: Mutex<RateLimiter>,
    pub gate: Mutex<GateView>,
    /// The uid that may use the auth socket (the proxy's user).
    pub auth_uid: Mutex<Option<u32>>,
    /// The proxy's browser sessions, kept here so that a restarted proxy logs nobody out
    /// (keyed by the hash of the cookie's token; see `proxy::session`).
    pub sessions: Mutex<Sessions>,
    /// Personal API tokens.
    pub tokens: Mutex<crate::tokens::Tokens>,
    /// Single sign-on: the settings PID 1 decides with, the client secret, the pins, and
    /// what the proxy last said of the provider.
    pub oidc: Mutex<OidcShared>,
    /// Sockets bound here, removed at exit if still ours.
    bound: Mutex<Vec<Bound>>,
    jobs: Mutex<Sender<Job>>,
    waker: WakeWriter,
}

impl Shared {
    fn send(&self, request: LoopRequest, reply: Option<Sender<LoopReply>>) -> bool {
        let sent = self
            .jobs
            .lock()
            .map(|tx| tx.send(Job { request, reply }).is_ok())
            .unwrap_or(false);
        self.waker.wake();
        sent
    }

    /// Remember a socket bound here (see [`Bound`]).
    fn bound(&self, b: Bound) {
        if let Ok(mut v) = self.bound.lock() {
            v.push(b);
        }
    }

    /// Remove the sockets bound here that are still ours (at exit).
    pub fn unlink_own(&self) {
        if let Ok(v) = self.bound.lock() {
            v.iter().for_each(Bound::unlink_if_ours);
        }
    }

    fn ask(&self, request: LoopRequest) -> Result<LoopReply, ApiError> {
        self.ask_within(request, LOOP_TIMEOUT)
    }

    fn ask_within(&self, request: LoopRequest, timeout: Duration) -> Result<LoopReply, ApiError> {
        let (tx, rx) = channel();
        if !self.send(request, Some(tx)) {
            return Err(ApiError::new(
                503,
                "unavailable",
                "occ-init's main loop is not running",
            ));
        }
        rx.recv_timeout(timeout).map_err(|_| {
            ApiError::new(
                503,
                "unavailable",
                "occ-init's main loop did not answer in time",
            )
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("another occ-init is already serving {0}")]
    InUse(PathBuf),
    #[error("admin socket {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// Bind the socket (replacing a stale one) and start the accept thread.
pub fn start(
    path: &Path,
    users: Users,
    limiter: RateLimiter,
    sessions: Sessions,
    tokens: crate::tokens::Tokens,
) -> Result<(Mailbox, Arc<Shared>), AdminError> {
    let io_err = |source| AdminError::Io {
        path: path.to_path_buf(),
        source,
    };
    // Only a directory occ-init creates is made 0700: `OCC_ADMIN_SOCKET=/run/admin.sock`
    // must not close /run to everyone. The socket itself is 0600 and checks the peer uid.
    let (listener, bound) = bind_socket(path, 0o700, 0o600, None)?;
    let (wake, waker) = crate::init::wake::pair().map_err(io_err)?;
    let (tx, rx) = channel();
    let shared = Arc::new(Shared {
        users: Mutex::new(users),
        limiter: Mutex::new(limiter),
        gate: Mutex::new(GateView::default()),
        auth_uid: Mutex::new(None),
        sessions: Mutex::new(sessions),
        tokens: Mutex::new(tokens),
        oidc: Mutex::new(OidcShared::default()),
        bound: Mutex::new(vec![bound]),
        jobs: Mutex::new(tx),
        waker,
    });
    let accept_shared = shared.clone();
    let counter = Counter {
        active: AtomicUsize::new(0),
        cap: MAX_CONNECTIONS,
        what: "admin",
    };
    std::thread::Builder::new()
        .name("admin-accept".into())
        .spawn(move || accept_loop(listener, accept_shared, serve, counter))
        .map_err(io_err)?;
    Ok((Mailbox { jobs: rx, wake }, shared))
}

/// A root-only unix socket for a private channel (directory 0700 when created, socket
/// 0600), e.g. the one on which PID 1 probes the proxy; removed at exit if still ours.
pub fn bind_private(path: &Path, shared: &Shared) -> Result<UnixListener, AdminError> {
    let (listener, bound) = bind_socket(path, 0o700, 0o600, None)?;
    shared.bound(bound);
    Ok(listener)
}

/// The auth socket for the proxy: PID 1 verifies passwords (PAM, rate-limited) and answers
/// whether a login is still valid and whether opencode is gated. Only `uid` (and root) may
/// use it: the socket is 0660 root:`gid` in a directory occ-init creates 0750 root:`gid`,
/// and every connection's peer uid is checked.
pub fn start_auth(path: &Path, shared: Arc<Shared>, uid: u32, gid: u32) -> Result<(), AdminError> {
    let io_err = |source| AdminError::Io {
        path: path.to_path_buf(),
        source,
    };
    let (listener, bound) = bind_socket(path, 0o750, 0o660, Some(gid))?;
    shared.bound(bound);
    if let Ok(mut u) = shared.auth_uid.lock() {
        *u = Some(uid);
    }
    let counter = Counter {
        active: AtomicUsize::new(0),
        cap: MAX_AUTH_CONNECTIONS,
        what: "auth",
    };
    std::thread::Builder::new()
        .name("auth-accept".into())
        .spawn(move || accept_loop(listener, shared, serve_auth, counter))
        .map_err(io_err)?;
    Ok(())
}

/// Bind a unix socket at `path`: its directory created (mode `dir_mode`, group `gid`) only
/// when missing, a live socket there refused, a stale one replaced, the socket given `mode`
/// and group `gid` (owner root).
fn bind_socket(
    path: &Path,
    dir_mode: u32,
    mode: u32,
    gid: Option<u32>,
) -> Result<(UnixListener, Bound), AdminError> {
    let io_err = |source| AdminError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        if !dir.exists() {
            std::fs::create_dir_all(dir).map_err(io_err)?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(dir_mode))
                .map_err(io_err)?;
            if gid.is_some() {
                std::os::unix::fs::chown(dir, Some(0), gid).map_err(io_err)?;
            }
        }
    }
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(AdminError::InUse(path.to_path_buf()));
        }
        log::debug!("removing stale socket {}", path.display());
        std::fs::remove_file(path).map_err(io_err)?;
    }
    let listener = UnixListener::bind(path).map_err(io_err)?;
    if gid.is_some() {
        std::os::unix::fs::chown(path, Some(0), gid).map_err(io_err)?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io_err)?;
    let bound = Bound::of(path).map_err(io_err)?;
    Ok((listener, bound))
}

/// One of a listener's connection slots, released on drop.
struct Slot(Arc<Counter>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Accept connections and serve each on its own thread, up to the counter's cap.
fn accept_loop(
    listener: UnixListener,
    shared: Arc<Shared>,
    serve: fn(&mut UnixStream, &Shared),
    counter: Counter,
) {
    let counter = Arc::new(counter);
    for stream in listener.incoming() {
        let mut stream = match stream {
            Ok(s) => s,
            Err(e) => {
                log::warn!("admin: accept failed: {e}");
                // EMFILE and friends: back off instead of spinning.
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
        let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
        if counter.active.fetch_add(1, Ordering::SeqCst) >= counter.cap {
            counter.active.fetch_sub(1, Ordering::SeqCst);
            let _ = stream.set_write_timeout(Some(Duration::from_millis(200)));
            let _ = ApiError::new(
                503,
                "busy",
                format!("too many concurrent {} connections", counter.what),
            )
            .response()
            .write_to(&mut stream);
            continue;
        }
        // The slot is given back when the thread ends, even if it panics.
        let slot = Slot(counter.clone());
        let shared = shared.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("{}-conn", counter.what))
            .stack_size(512 * 1024)
            .spawn(move || {
                serve(&mut stream, &shared);
                drop(slot);
            });
        if let Err(e) = spawned {
            log::warn!("admin: cannot start a connection thread: {e}");
        }
    }
}

/// A reader that gives up once an overall deadline has passed (slow-drip clients).
struct Deadline<'a> {
    inner: &'a mut UnixStream,
    until: Instant,
}

impl Read for Deadline<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if Instant::now() >= self.until {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "request deadline"));
        }
        self.inner.read(buf)
    }
}

fn peer_uid(stream: &UnixStream) -> Option<u32> {
    nix::sys::socket::getsockopt(stream, nix::sys::socket::sockopt::PeerCredentials)
        .ok()
        .map(|c| c.uid())
}

/// One connection: read, authorize, route, answer. Never panics the process: every error
/// becomes a response or a closed connection.
fn serve(stream: &mut UnixStream, shared: &Shared) {
    let uid = peer_uid(stream);
    let Some(req) = read_request(stream) else {
        return;
    };
    let response = if uid != Some(0) {
        ApiError::new(403, "forbidden", "the admin socket is for root only").response()
    } else {
        match api::route(&req) {
            Ok(route) => handle(route, uid.unwrap_or(0), shared),
            Err(e) => e.response(),
        }
    };
    // Method and path only: bodies may hold passwords.
    log::debug!("admin: {} {} -> {}", req.method, req.path, response.status);
    let _ = response.write_to(stream);
}

/// One connection on the auth socket (see [`start_auth`]).
fn serve_auth(stream: &mut UnixStream, shared: &Shared) {
    let uid = peer_uid(stream);
    let allowed = shared.auth_uid.lock().ok().and_then(|u| *u);
    let Some(req) = read_request(stream) else {
        return;
    };
    let response = if uid.is_none() || (uid != Some(0) && uid != allowed) {
        ApiError::new(
            403,
            "forbidden",
            "the auth socket is for occ-init's proxy only",
        )
        .response()
    } else {
        match api::route_auth(&req) {
            Ok(route) => handle_auth(route, shared),
            Err(e) => e.response(),
        }
    };
    log::debug!("auth: {} {} -> {}", req.method, req.path, response.status);
    let _ = response.write_to(stream);
}

fn handle_auth(route: api::AuthRoute, shared: &Shared) -> Response {
    let result: Result<Response, ApiError> = (|| match route {
        api::AuthRoute::State => {
            let gate = shared
                .gate
                .lock()
                .map(|g| g.clone())
                .map_err(|_| ApiError::new(500, "internal", "gate state unavailable"))?;
            Ok(ok(
                200,
                json!({"gated": gate.reason.is_some(), "reason": gate.reason, "ready": gate.ready,
                       "users": gate.users, "upstream": gate.upstream, "upstream_uid": gate.upstream_uid, "per_user": gate.per_user,
                       "upstream_authorization": gate.upstream_authorization.as_ref().map(|a| a.expose())}),
            ))
        }
        api::AuthRoute::Users => {
            let all = users_of(shared)?
                .login_fingerprints()
                .map_err(|e| api::users_error(&e))?;
            let map: serde_json::Map<String, serde_json::Value> = all
                .into_iter()
                .map(|(name, fp)| (name, serde_json::Value::String(fp.to_string())))
                .collect();
            Ok(ok(200, json!({ "users": map })))
        }
        api::AuthRoute::Sessions => {
            let now = Instant::now();
            let mut store = shared
                .sessions
                .lock()
                .map_err(|_| ApiError::new(500, "internal", "sessions unavailable"))?;
            store.expire(now);
            let list: Vec<serde_json::Value> = store
                .iter()
                .map(|(id, s)| {
                    json!({"id": id, "user": s.user, "fingerprint": s.fingerprint,
                       "created_ms_ago": now.saturating_duration_since(s.created).as_millis() as u64,
                       "seen_ms_ago": now.saturating_duration_since(s.last_seen).as_millis() as u64})
                })
                .collect();
            Ok(ok(200, json!({ "sessions": list })))
        }
        api::AuthRoute::SyncSessions(sync) => {
            let now = Instant::now();
            let mut store = shared
                .sessions
                .lock()
                .map_err(|_| ApiError::new(500, "internal", "sessions unavailable"))?;
            for p in sync.put {
                let ago = |ms: u64| now.checked_sub(Duration::from_millis(ms)).unwrap_or(now);
                store.restore(
                    p.id,
                    crate::proxy::session::Session {
                        user: p.user,
                        fingerprint: p.fingerprint,
                        created: ago(p.created_ms_ago),
                        last_seen: ago(p.seen_ms_ago),
                    },
                    now,
                );
            }
            for id in &sync.remove {
                store.remove(id);
            }
            for id in &sync.touch {
                store.touch(id, now);
            }
            Ok(ok(200, json!({"ok": true, "sessions": store.len()})))
        }
        api::AuthRoute::User { name } => {
            match users_of(shared)?
                .login_fingerprint(&name)
                .map_err(|e| api::users_error(&e))?
            {
                Some(fp) => Ok(ok(
                    200,
                    json!({"name": name, "fingerprint": fp.to_string()}),
                )),
                None => Err(ApiError::new(404, "no_login", "not a user who can log in")),
            }
        }
        api::AuthRoute::Verify {
            name,
            password,
            client,
        } => verify_login(shared, Limit::Client(&client), &name, password),
        api::AuthRoute::Token { token, client } => verify_bearer(shared, &client, token),
        api::AuthRoute::OidcSecret => {
            let o = shared
                .oidc
                .lock()
                .map_err(|_| ApiError::new(500, "internal", "oidc state unavailable"))?;
            match &o.secret {
                Some(s) => Ok(ok(200, json!({"client_secret": s.expose()}))),
                None => Err(ApiError::new(
                    404,
                    "no_secret",
                    o.secret_error
                        .clone()
                        .unwrap_or_else(|| "no client secret".into()),
                )),
            }
        }
        api::AuthRoute::OidcState(report) => {
            if let Ok(mut o) = shared.oidc.lock() {
                if o.reachable != Some(report.reachable) || o.error != report.error {
                    match (&report.error, report.reachable) {
                        (_, true) => log::info!(
                            "oidc: the provider answers (device login {})",
                            if report.device {
                                "offered"
                            } else {
                                "not offered"
                            }
                        ),
                        (Some(e), false) => log::warn!("oidc: the provider is unreachable: {e}"),
                        (None, false) => log::warn!("oidc: the provider is unreachable"),
                    }
                }
                o.reachable = Some(report.reachable);
                o.error = report.error;
                o.device = report.device;
            }
            Ok(ok(200, json!({"ok": true})))
        }
        api::AuthRoute::OidcLogin(identity) => oidc_login(shared, identity),
        api::AuthRoute::UserTokens { user } => list_tokens(shared, Some(&user)),
        api::AuthRoute::CreateToken(t) => create_token(shared, t),
        api::AuthRoute::RevokeToken { user, id } => revoke_token(shared, &id, Some(&user)),
        api::AuthRoute::Instances(report) => match shared.ask(LoopRequest::Instances(report))? {
            LoopReply::Instances(views) => Ok(Response::json(
                200,
                json!({ "instances": views }).to_string(),
            )),
            _ => Err(ApiError::new(500, "internal", "unexpected reply")),
        },
    })();
    result.unwrap_or_else(|e| e.response())
}

/// Whose attempts a password check is charged to.
enum Limit<'a> {
    /// A network client of the proxy (its address): limited per address and per user, or
    /// per user *at* that address once she logged in there (see `ratelimit`).
    Client(&'a str),
    /// A local caller of the admin socket (its uid).
    Uid(u32),
}

/// Reserve an attempt with the rate limiter (429 with Retry-After when one of the keys must
/// wait), check the password of a login user through PAM, and clear the reservation on
/// success. Unknown names, locked users, empty and wrong passwords give the same answer.
fn verify_login(
    shared: &Shared,
    limit: Limit<'_>,
    name: &str,
    password: crate::secret::SecretString,
) -> Result<Response, ApiError> {
    let now = Instant::now();
    let mut limiter = shared
        .limiter
        .lock()
        .map_err(|_| ApiError::new(500, "internal", "limiter"))?;
    let keys = match limit {
        Limit::Client(client) => limiter.keys(name, client, now),
        Limit::Uid(uid) => vec![format!("client:uid:{uid}"), format!("user:{name}")],
    };
    let keys = &keys;
    let begun = limiter.begin(keys, now);
    drop(limiter);
    if let Err(wait) = begun {
        return Ok(rate_limited(wait));
    }
    let users = users_of(shared)?;
    let passwords = shared.oidc.lock().map(|o| o.password_login).unwrap_or(true);
    let fingerprint = match users.login_fingerprint(name) {
        // An empty password never reaches PAM (which may take it: `nullok`).
        Ok(Some(_)) if password.expose().is_empty() => None,
        // password_login = false: only tokens.
        Ok(Some(_)) if !passwords && !crate::tokens::looks_like_token(password.expose()) => None,
        // A personal API token as the password: checked here, never by PAM.
        Ok(Some(_)) if crate::tokens::looks_like_token(password.expose()) => {
            token_user(shared, &users, password.expose())
                .filter(|(user, _)| user == name)
                .map(|(_, fp)| fp)
        }
        Ok(Some(fp)) => users.verify(name, &password).ok().map(|()| fp),
        Ok(None) => None,
        Err(e) => {
            log::warn!("auth: cannot read the users: {e}");
            None
        }
    };
    drop(password);
    match fingerprint {
        Some(fp) => {
            if let Ok(mut rl) = shared.limiter.lock() {
                match limit {
                    Limit::Client(client) => rl.logged_in(name, client, keys, Instant::now()),
                    Limit::Uid(_) => rl.succeeded(keys),
                }
            }
            Ok(ok(200, json!({"ok": true, "fingerprint": fp.to_string()})))
        }
        None => {
            if let Ok(mut rl) = shared.limiter.lock() {
                rl.failed(keys, Instant::now());
            }
            Err(api::users_error(&UsersError::AuthFailed))
        }
    }
}

/// 429 with Retry-After: the limiter says to wait `wait`.
fn rate_limited(wait: Duration) -> Response {
    let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
    let mut r = ApiError::new(
        429,
        "rate_limited",
        format!("too many failed attempts; retry in {secs}s"),
    )
    .response();
    r.headers.push(("Retry-After".into(), secs.to_string()));
    r
}

/// The user of a good token who can still log in (with the uid the token was made for),
/// and her login fingerprint.
fn token_user(shared: &Shared, users: &Users, token: &str) -> Option<(String, u64)> {
    let now = crate::tls::now_unix();
    let (user, uid, _) = shared.tokens.lock().ok()?.check(token, now)?;
    let fp = users.login_fingerprint(&user).ok()??;
    (users.login_uid(&user).ok()?? == uid).then_some((user, fp))
}

/// A Bearer token from the proxy's client at `client`: rate-limited per address (failures
/// count like wrong passwords), its user and fingerprint when good.
fn verify_bearer(
    shared: &Shared,
    client: &str,
    token: crate::secret::SecretString,
) -> Result<Response, ApiError> {
    let now = Instant::now();
    // Limited per token id (guesses at one token, from any address) and per address; from
    // an address where the token was used before, on that pair alone (strangers sharing a
    // NAT address cannot lock its user out). A success clears only the token's own keys.
    let tag = format!(
        "token:{}",
        crate::tokens::token_id(token.expose()).unwrap_or("-")
    );
    let (keys, begun) = {
        let mut l = shared
            .limiter
            .lock()
            .map_err(|_| ApiError::new(500, "internal", "limiter"))?;
        let keys = l.keys(&tag, client, now);
        let begun = l.begin(&keys, now);
        (keys, begun)
    };
    if let Err(wait) = begun {
        return Ok(rate_limited(wait));
    }
    let users = users_of(shared)?;
    let found = crate::tokens::looks_like_token(token.expose())
        .then(|| token_user(shared, &users, token.expose()))
        .flatten();
    drop(token);
    let Ok(mut rl) = shared.limiter.lock() else {
        return Err(ApiError::new(500, "internal", "limiter"));
    };
    match found {
        Some((user, fp)) => {
            let own: Vec<String> = keys
                .iter()
                .filter(|k| !k.starts_with("client:"))
                .cloned()
                .collect();
            rl.logged_in(&tag, client, &own, Instant::now());
            Ok(ok(
                200,
                json!({"ok": true, "user": user, "fingerprint": fp.to_string()}),
            ))
        }
        None => {
            rl.failed(&keys, Instant::now());
            Err(api::users_error(&UsersError::AuthFailed))
        }
    }
}

/// A verified identity from the proxy: which user it signs in as (created at first sign-in
/// with `oidc_create_users`), her `sub` pinned; or why not (403 with the reason).
fn oidc_login(shared: &Shared, id: crate::oidc::Identity) -> Result<Response, ApiError> {
    use crate::oidc::{Mapping, UserState};
    let users = users_of(shared)?;
    let accounts = crate::users::accounts::Accounts::read(std::path::Path::new("/etc")).ok();
    let state = |name: &str| match users.login_uid(name) {
        Ok(Some(_)) => UserState::Active,
        _ if accounts.as_ref().is_some_and(|a| a.get(name).is_some()) => UserState::Locked,
        _ => UserState::Missing,
    };
    let mapping = {
        let o = shared
            .oidc
            .lock()
            .map_err(|_| ApiError::new(500, "internal", "oidc state unavailable"))?;
        if o.issuer.as_deref() != Some(id.issuer.as_str()) {
            return Err(ApiError::new(
                403,
                "wrong_issuer",
                "not the configured provider",
            ));
        }
        let Some(pins) = &o.pins else {
            return Err(ApiError::new(503, "no_pins", "sign-in is not configured"));
        };
        if let Some(b) = &pins.broken {
            return Err(ApiError::new(503, "no_pins", b.clone()));
        }
        crate::oidc::decide(
            &id,
            &o.username_claim,
            &o.allowed_groups,
            state,
            |n| pins.get(n),
            o.create_users,
        )
    };
    let name = match mapping {
        Mapping::Refused(r) => {
            return Err(ApiError::new(403, r.code(), r.to_string()));
        }
        Mapping::Existing(name) => name,
        Mapping::Create(name) => {
            // No usable password: a random one nobody ever sees (sign-in by OIDC or tokens).
            let pw = crate::proxy::session::new_token()
                .map_err(|e| ApiError::new(500, "random", e.to_string()))?;
            mutate(
                shared,
                UserOp::Add {
                    name: name.clone(),
                    secret: crate::users::NewSecret::Password(SecretString::new(pw)),
                    uid: None,
                },
                201,
            )?;
            log::info!(
                "oidc: created user {name:?} at the first sign-in of {:?}",
                id.sub
            );
            name
        }
    };
    if let Ok(mut o) = shared.oidc.lock() {
        if let Some(pins) = o.pins.as_mut() {
            let pin = crate::oidc::Pin {
                issuer: id.issuer.clone(),
                sub: id.sub.clone(),
            };
            if let Err(e) = pins.pin(&name, pin) {
                return Err(ApiError::new(500, "pins", e.to_string()));
            }
        }
    }
    let fp = users_of(shared)?
        .login_fingerprint(&name)
        .map_err(|e| api::users_error(&e))?
        .ok_or_else(|| ApiError::new(403, "locked", format!("the user {name} cannot log in")))?;
    Ok(ok(
        200,
        json!({"ok": true, "user": name, "fingerprint": fp.to_string()}),
    ))
}

fn token_error(e: &crate::tokens::TokenError) -> ApiError {
    use crate::tokens::TokenError as T;
    match e {
        T::NotFound(_) => ApiError::new(404, "no_token", e.to_string()),
        T::NoSuchUser(_) => ApiError::new(404, "no_login", e.to_string()),
        T::BadName | T::BadExpiry(_) => ApiError::new(400, "bad_request", e.to_string()),
        T::TooMany(_) => ApiError::new(409, "too_many", e.to_string()),
        T::Store { .. } => ApiError::new(500, "store", e.to_string()),
    }
}

fn list_tokens(shared: &Shared, user: Option<&str>) -> Result<Response, ApiError> {
    let list = shared
        .tokens
        .lock()
        .map_err(|_| ApiError::new(500, "internal", "tokens unavailable"))?
        .list(user, crate::tls::now_unix());
    Ok(ok(200, json!({ "tokens": list })))
}

/// Make a token for a user who can log in now; the token is in this answer only.
fn create_token(shared: &Shared, t: api::NewToken) -> Result<Response, ApiError> {
    let lifetime = match &t.expires {
        Some(e) => crate::tokens::parse_expiry(e).map_err(|e| token_error(&e))?,
        None => Some(crate::tokens::DEFAULT_DAYS * 86_400),
    };
    let uid = users_of(shared)?
        .login_uid(&t.user)
        .map_err(|e| api::users_error(&e))?
        .ok_or_else(|| token_error(&crate::tokens::TokenError::NoSuchUser(t.user.clone())))?;
    let (info, token) = shared
        .tokens
        .lock()
        .map_err(|_| ApiError::new(500, "internal", "tokens unavailable"))?
        .create(&t.user, uid, &t.name, lifetime, crate::tls::now_unix())
        .map_err(|e| token_error(&e))?;
    log::info!(
        "token {} ({:?}) made for {:?}",
        info.id,
        info.name,
        info.user
    );
    let mut body = serde_json::to_value(&info).unwrap_or_default();
    body["token"] = json!(token.expose());
    Ok(ok(201, body))
}

fn revoke_token(shared: &Shared, id: &str, user: Option<&str>) -> Result<Response, ApiError> {
    let info = shared
        .tokens
        .lock()
        .map_err(|_| ApiError::new(500, "internal", "tokens unavailable"))?
        .revoke(id, user, crate::tls::now_unix())
        .map_err(|e| token_error(&e))?;
    log::info!(
        "token {} ({:?}) of {:?} revoked",
        info.id,
        info.name,
        info.user
    );
    Ok(ok(200, json!({"revoked": info})))
}

/// Read one request within [`REQUEST_DEADLINE`]; on a bad one answer the error and give `None`.
fn read_request(stream: &mut UnixStream) -> Option<http::Request> {
    let req = {
        let mut reader = Deadline {
            inner: stream,
            until: Instant::now() + REQUEST_DEADLINE,
        };
        http::read_request(&mut reader)
    };
    match req {
        Ok(r) => Some(r),
        Err(http::HttpError::Incomplete) => {
            let _ = ApiError::new(400, "bad_request", "incomplete request")
                .response()
                .write_to(stream);
            None
        }
        Err(e) => {
            let code = if e.status() == 413 {
                "too_large"
            } else {
                "bad_request"
            };
            let msg = match &e {
                http::HttpError::Bad(m) => m.clone(),
                http::HttpError::TooLarge => {
                    format!("request larger than {} bytes", http::MAX_REQUEST)
                }
                http::HttpError::LengthRequired => "Content-Length required".into(),
                http::HttpError::Incomplete => "incomplete request".into(),
            };
            let _ = ApiError::new(e.status(), code, msg)
                .response()
                .write_to(stream);
            None
        }
    }
}

fn ok(status: u16, v: serde_json::Value) -> Response {
    Response::json(status, v.to_string())
}

fn users_of(shared: &Shared) -> Result<Users, ApiError> {
    shared
        .users
        .lock()
        .map(|u| u.clone())
        .map_err(|_| ApiError::new(500, "internal", "users state unavailable"))
}

/// A user change, carried out by PID 1's loop: it spawns useradd/chpasswd, and only the
/// thread that reaps children may wait for them (PID 1 reaps every child it sees).
fn mutate(shared: &Shared, op: UserOp, status: u16) -> Result<Response, ApiError> {
    let name = op.name().to_string();
    match shared.ask_within(LoopRequest::User(op), USER_OP_TIMEOUT)? {
        LoopReply::User(Ok(p)) => Ok(ok(
            status,
            json!({"name": name, "persistence": p, "note": p.note()}),
        )),
        LoopReply::User(Err(e)) => Err(e),
        _ => Err(ApiError::new(500, "internal", "unexpected reply")),
    }
}

fn handle(route: Route, uid: u32, shared: &Shared) -> Response {
    let result: Result<Response, ApiError> = (|| match route {
        Route::Health => match shared.ask(LoopRequest::Ready)? {
            LoopReply::Ready { state, .. } => {
                Ok(ok(200, json!({"alive": true, "opencode": state})))
            }
            _ => Err(ApiError::new(500, "internal", "unexpected reply")),
        },
        Route::Ready => match shared.ask(LoopRequest::Ready)? {
            LoopReply::Ready { ready: true, state } => {
                Ok(ok(200, json!({"ready": true, "opencode": state})))
            }
            LoopReply::Ready {
                ready: false,
                state,
            } => Ok(ok(
                503,
                json!({"ready": false, "opencode": state, "code": "not_ready",
                       "error": format!("opencode is not ready ({state})")}),
            )),
            _ => Err(ApiError::new(500, "internal", "unexpected reply")),
        },
        Route::Status => match shared.ask(LoopRequest::Status)? {
            LoopReply::Status(s) => Ok(Response::json(
                200,
                serde_json::to_string(&s).unwrap_or_default(),
            )),
            _ => Err(ApiError::new(500, "internal", "unexpected reply")),
        },
        Route::Restart => match shared.ask(LoopRequest::Restart)? {
            LoopReply::Restart(Ok(())) => Ok(ok(202, json!({"restarting": true}))),
            LoopReply::Restart(Err(why)) => Err(ApiError::new(409, "not_running", why)),
            _ => Err(ApiError::new(500, "internal", "unexpected reply")),
        },
        Route::ListInstances => match shared.ask(LoopRequest::ListInstances)? {
            LoopReply::InstanceList(list) => Ok(Response::json(
                200,
                json!({ "instances": list }).to_string(),
            )),
            _ => Err(ApiError::new(500, "internal", "unexpected reply")),
        },
        Route::StopInstance { user } => {
            match shared.ask(LoopRequest::StopInstance(user.clone()))? {
                LoopReply::Stopped(Ok(())) => Ok(ok(202, json!({"stopping": true, "user": user}))),
                LoopReply::Stopped(Err(why)) => Err(ApiError::new(404, "no_instance", why)),
                _ => Err(ApiError::new(500, "internal", "unexpected reply")),
            }
        }
        Route::ListUsers => {
            let rows = users_of(shared)?.list().map_err(|e| api::users_error(&e))?;
            Ok(Response::json(
                200,
                serde_json::to_string(&rows).unwrap_or_default(),
            ))
        }
        Route::AddUser {
            name,
            secret,
            uid: new_uid,
        } => mutate(
            shared,
            UserOp::Add {
                name,
                secret: secret.into_new_secret(),
                uid: new_uid,
            },
            201,
        ),
        Route::RemoveUser { name, force } => {
            let r = mutate(
                shared,
                UserOp::Remove {
                    name: name.clone(),
                    force,
                },
                200,
            )?;
            // Her tokens go with the account (a later user of the name gets none of them),
            // and so does her pinned identity.
            if let Ok(mut t) = shared.tokens.lock() {
                if let Err(e) = t.remove_user(&name) {
                    log::warn!("tokens of {name:?}: {e}");
                }
            }
            if let Ok(mut o) = shared.oidc.lock() {
                if let Some(p) = o.pins.as_mut() {
                    if let Err(e) = p.remove(&name) {
                        log::warn!("oidc pin of {name:?}: {e}");
                    }
                }
            }
            Ok(r)
        }
        Route::ListTokens { user } => list_tokens(shared, user.as_deref()),
        Route::CreateToken(t) => create_token(shared, t),
        Route::RevokeToken { id } => revoke_token(shared, &id, None),
        Route::SetPassword { name, secret } => mutate(
            shared,
            UserOp::SetPassword {
                name,
                secret: secret.into_new_secret(),
            },
            200,
        ),
        Route::Lock { name } => mutate(shared, UserOp::SetLocked { name, locked: true }, 200),
        Route::Unlock { name } => mutate(
            shared,
            UserOp::SetLocked {
                name,
                locked: false,
            },
            200,
        ),
        Route::Verify { name, password } => verify(shared, uid, &name, password),
    })();
    result.unwrap_or_else(|e| e.response())
}

/// PAM check behind the rate limiter (per client uid and per user name).
fn verify(
    shared: &Shared,
    uid: u32,
    name: &str,
    password: api::Secret,
) -> Result<Response, ApiError> {
    let api::Secret::Password(p) = password else {
        return Err(ApiError::new(400, "bad_json", "verify takes a password"));
    };
    verify_login(
        shared,
        Limit::Uid(uid),
        name,
        crate::secret::SecretString::new(p),
    )
}
