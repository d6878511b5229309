//! The argument-less start (the image's ENTRYPOINT): config → restore users → bind policy →
//! launch or gate opencode → supervise it until PID 1 is told to stop. With `auth = proxy`
//! (the default) a second service, the authenticating proxy, holds the public address and
//! opencode listens on 127.0.0.1. One loop blocks on the signalfd, the probe worker's and the
//! admin server's wake-up pipes, and the services' next deadline; each service is the same
//! pure [`Supervisor`] state machine.

use std::collections::{BTreeMap, VecDeque};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::Instant;

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::admin::api::RateLimiter;
use crate::admin::server::{self as admin, LoopReply, LoopRequest, Mailbox, Shared};
use crate::config::{AuthMode, Config, Overrides};
use crate::init::signals::{self, SignalReader};
use crate::init::state::Lifecycle;
use crate::init::{self, reap, ForwardTo};
use crate::instances::Usage;
use crate::policy::{self, Decision};
use crate::secret::SecretString;
use crate::supervise::probe::{Check, Prober, Target};
use crate::supervise::spawn as oc;
use crate::supervise::state::{Action, Event, Settings, Supervisor};

mod instances;
mod tls;
use crate::users::{worker, Bootstrap, Exposure, RestoreReport, Users, UsersConfig};

/// A user change in progress in the helper process.
struct UserJob {
    running: worker::Running,
    reply: Option<std::sync::mpsc::Sender<LoopReply>>,
    restore: bool,
}

/// Why opencode waits while the boot's restore runs.
const RESTORING: &str =
    "occ-init is restoring the container's users; opencode starts as soon as that is done";

/// Name of the pid file beside the admin socket, so `occ-init user …` can notify PID 1.
pub const PID_FILE: &str = "init.pid";

/// The shared opencode's service name.
pub const OPENCODE: &str = "opencode";
/// The proxy's service name.
pub const PROXY: &str = "proxy";

/// Which process a service is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceKind {
    /// The one opencode of `instances = shared`, as `service_user`.
    Opencode,
    Proxy,
    /// A login user's own opencode (`instances = per-user`), as that user.
    Instance,
}

/// One supervised process: what it is, its state machine, and where it listens.
pub struct Service {
    pub kind: ServiceKind,
    pub sv: Supervisor,
    /// The Linux user it runs as (an instance's owner; the service user for the shared one).
    pub user: String,
    /// opencode's port (on 127.0.0.1 behind the proxy); 0 for the proxy.
    pub port: u16,
    /// The random password of opencode's current start behind the proxy (only in its
    /// environment and, as the `Authorization` the proxy sends, on the auth socket).
    pub secret: Option<std::sync::Arc<SecretString>>,
    pub authorization: Option<std::sync::Arc<SecretString>>,
    /// uid and gid of its current start (only that process may own its port).
    pub runs_as: Option<(u32, u32)>,
    /// Requests, terminals and busy sessions (instances).
    pub usage: Usage,
    /// Why an instance gave up, and when (shown to its user, retried later).
    pub failed: Option<(String, Instant)>,
}

impl Service {
    fn new(kind: ServiceKind, sv: Supervisor, user: &str, port: u16, now: Instant) -> Service {
        Service {
            kind,
            sv,
            user: user.to_string(),
            port,
            secret: None,
            authorization: None,
            runs_as: None,
            usage: Usage::new(now),
            failed: None,
        }
    }
}

/// Everything PID 1 knows while it supervises opencode.
pub struct Boot {
    pub config_path: Option<PathBuf>,
    pub overrides: Overrides,
    pub cfg: Config,
    pub users: Users,
    pub report: RestoreReport,
    pub decision: Decision,
    /// The services by name: `proxy`, `opencode` (shared) or `opencode@alice`, … (per
    /// user; they come and go at run time).
    pub services: BTreeMap<String, Service>,
    pub started_at: Instant,
    /// The public listening sockets (both address families), held by PID 1 and handed to
    /// each proxy it starts.
    listeners: Vec<std::net::TcpListener>,
    /// The private socket on which PID 1 probes the proxy (root only), handed to it too.
    health: Option<(std::os::unix::net::UnixListener, PathBuf)>,
    /// The signal state occ-init inherited, which its children get.
    pub child_signals: signals::Inherited,
    /// The user helper process running now, and whom to answer when it is done.
    user_job: Option<UserJob>,
    /// User changes waiting for the helper (one runs at a time).
    user_queue: VecDeque<(worker::Job, Option<std::sync::mpsc::Sender<LoopReply>>)>,
    /// The boot's restore has not finished: opencode waits for it.
    restoring: bool,
    /// The decision may have changed outside an event handler: tell the supervisor.
    policy_changed: bool,
    /// Login users present and unlocked in /etc (what PAM accepts), for policy and status.
    pub active_users: Vec<String>,
    /// Their uids (kept after a lock or removal: their processes are ended by uid).
    login_uids: BTreeMap<String, u32>,
    prober: Prober,
    admin: Option<(Mailbox, std::sync::Arc<Shared>)>,
    /// The proxy's certificate (`tls` not off).
    pub tls: Option<tls::TlsState>,
}

/// Events for the services, by name.
type Events = Vec<(String, Event)>;

/// Users that can log in now: present in /etc and unlocked (manifest users, and managed
/// accounts added while the manifest was read-only). Empty when the manifest is invalid.
pub fn active_login_users(users: &Users) -> Vec<String> {
    match users.list() {
        Ok(rows) => rows
            .into_iter()
            .filter(|r| r.in_etc && !r.locked)
            .map(|r| r.name)
            .collect(),
        Err(e) => {
            log::debug!("users: {e}");
            Vec::new()
        }
    }
}

fn exposure(cfg: &Config) -> Exposure {
    Exposure {
        address: cfg.exposure_address().to_string(),
        exposed: cfg.exposed(),
    }
}

/// Seed 003's limiter with the configured limits.
fn limiter(cfg: &Config) -> RateLimiter {
    RateLimiter::new(
        cfg.rate_limit_attempts,
        std::time::Duration::from_secs(cfg.rate_limit_window_seconds),
    )
}

/// Users configuration for a loaded config.
pub fn users_config(cfg: &Config) -> UsersConfig {
    let mut uc = UsersConfig::from_env(Some(cfg.users_file.clone()));
    if !uc.reserved.contains(&cfg.service_user) {
        uc.reserved.push(cfg.service_user.clone());
    }
    uc
}

/// The server password from its file, if one is configured and readable.
pub fn server_password(cfg: &Config) -> Option<SecretString> {
    let path = cfg.server_password_file.as_ref()?;
    match std::fs::read_to_string(path) {
        Ok(t) if !t.trim().is_empty() => Some(SecretString::new(
            t.trim_end_matches(['\n', '\r']).to_string(),
        )),
        Ok(_) => {
            log::warn!("server_password_file {} is empty", path.display());
            None
        }
        Err(e) => {
            log::warn!("server_password_file {}: {e}", path.display());
            None
        }
    }
}

/// The policy facts for a config and the login users that exist.
pub fn facts(cfg: &Config, active_users: &[String]) -> policy::Facts {
    policy::Facts {
        address: cfg.exposure_address().to_string(),
        exposed: cfg.exposed(),
        authenticated: policy::authenticated(
            cfg.auth,
            active_users.len(),
            server_password(cfg).is_some(),
        ),
        allow_unauthenticated_network: cfg.allow_unauthenticated_network,
        users_unchecked: cfg.auth == AuthMode::None && !active_users.is_empty(),
    }
}

/// Who enforces logins, for status: `proxy`, `opencode` or `none`.
pub fn auth_enforced_by(cfg: &Config, active_users: &[String]) -> &'static str {
    match cfg.auth {
        AuthMode::Proxy => "proxy",
        AuthMode::Opencode if !active_users.is_empty() || server_password(cfg).is_some() => {
            "opencode"
        }
        _ => "none",
    }
}

/// The public listening sockets for the proxy (PID 1 binds them as root, so low ports
/// work), holding both address families (see [`crate::listen`]).
fn bind_public(cfg: &Config) -> std::io::Result<Vec<std::net::TcpListener>> {
    crate::listen::bind(&cfg.host, cfg.port)
}

/// The private socket on which PID 1 probes the proxy: beside the admin socket (root only).
fn health_socket_path(cfg: &Config) -> PathBuf {
    cfg.admin_socket
        .parent()
        .unwrap_or(Path::new("/run/occ"))
        .join("proxy-health.sock")
}

/// A fresh random password for one start of opencode behind the proxy.
fn new_upstream_secret() -> Option<std::sync::Arc<SecretString>> {
    match crate::proxy::session::new_token() {
        Ok(t) => Some(std::sync::Arc::new(SecretString::new(t))),
        Err(e) => {
            log::error!("cannot make a password for opencode: {e}");
            None
        }
    }
}

/// The proxy's user: looked up, or created as a system account (no home, no shell) when
/// missing.
fn ensure_proxy_user(name: &str) -> Result<oc::ServiceUser, String> {
    if let Ok(u) = oc::lookup(name) {
        return Ok(u);
    }
    log::info!("creating the proxy's system user {name} (no home, no login shell)");
    crate::users::apply::useradd_system(name)
        .map_err(|e| format!("cannot create the proxy's user {name}: {e}"))?;
    oc::lookup(name)
}

/// The proxy program: `proxy_command`, else `occ-proxy` beside this executable, else PATH.
fn proxy_program(cfg: &Config) -> PathBuf {
    if let Some(p) = &cfg.proxy_command {
        return p.clone();
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join("occ-proxy")))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("occ-proxy"))
}

fn pid_file(cfg: &Config) -> Option<PathBuf> {
    cfg.admin_socket.parent().map(|d| d.join(PID_FILE))
}

/// Record PID 1's pid (host-visible number within this namespace) for the CLI.
fn write_pid_file(cfg: &Config) {
    let Some(path) = pid_file(cfg) else { return };
    if let Some(dir) = path.parent() {
        if !dir.exists() {
            let _ = std::fs::create_dir_all(dir);
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
        }
    }
    if let Err(e) = std::fs::write(&path, format!("{}\n", std::process::id())) {
        log::debug!("cannot write {}: {e}", path.display());
    }
}

/// Ask a running occ-init (found through its pid file) to re-read config and users.
/// Returns true when one was told.
pub fn notify_running_init(cfg: &Config) -> bool {
    let Some(path) = pid_file(cfg) else {
        return false;
    };
    let Ok(text) = std::fs::read_to_string(&path) else {
        return false;
    };
    let Ok(pid) = text.trim().parse::<i32>() else {
        return false;
    };
    if pid == std::process::id() as i32 {
        return false;
    }
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    if comm.trim() != "occ-init" {
        return false;
    }
    kill(Pid::from_raw(pid), Signal::SIGHUP).is_ok()
}

impl Boot {
    /// Load config, restore users and decide; nothing is started yet.
    pub fn new(config_path: Option<PathBuf>, overrides: Overrides) -> Result<Boot, String> {
        let cfg = Config::load(config_path.as_deref(), &overrides).map_err(|e| e.to_string())?;
        let users = Users::new(users_config(&cfg));
        let bootstrap = Bootstrap::from_env().unwrap_or_else(|e| {
            log::error!("users: {e}");
            None
        });
        // The restore runs in the user helper once the loop is up (see `run`): PID 1 handles
        // TERM and answers its sockets meanwhile, and opencode waits for it.
        let report = RestoreReport {
            summary: "users: restore running".into(),
            ..RestoreReport::default()
        };
        let boot_restore = worker::Job::Restore {
            bootstrap: bootstrap.map(|b| (b.name, b.hash.expose().to_string())),
        };
        let active_users = active_login_users(&users);
        let sessions =
            crate::proxy::session::Sessions::new(cfg.session_idle_timeout, cfg.session_max_age);
        let tokens = crate::tokens::Tokens::load(&cfg.tokens_path()).unwrap_or_else(|e| {
            log::error!("tokens: {e}; no personal API token is accepted until it is fixed");
            crate::tokens::Tokens::refusing(&cfg.tokens_path(), &e)
        });
        let admin = match admin::start(
            &cfg.admin_socket,
            users.clone(),
            limiter(&cfg),
            sessions,
            tokens,
        ) {
            Ok(a) => Some(a),
            Err(e @ admin::AdminError::InUse(_)) => return Err(e.to_string()),
            Err(e) => {
                log::error!("{e}; continuing without the admin endpoint (status, health and user changes through it will fail)");
                None
            }
        };
        if let Some((_, shared)) = &admin {
            if let Ok(mut o) = shared.oidc.lock() {
                o.configure(&cfg);
            }
        }
        let decision = policy::decide(&facts(&cfg, &active_users));
        let now = Instant::now();
        let mut services = BTreeMap::new();
        if !cfg.per_user() {
            let port = match cfg.auth {
                // 0: the port opencode binds itself (`--port 0`), found at its first probe.
                AuthMode::Proxy => cfg.internal_port,
                _ => cfg.port,
            };
            let sv = Supervisor::named(OPENCODE, Settings::from(&cfg));
            let shared = Service::new(ServiceKind::Opencode, sv, &cfg.service_user, port, now);
            services.insert(OPENCODE.to_string(), shared);
        }
        let mut health = None;
        if cfg.auth == AuthMode::Proxy {
            // Without its user or its auth socket the proxy cannot let anyone in; it still
            // runs (answering 503), so nothing is ever served unauthenticated.
            match ensure_proxy_user(&cfg.proxy_user) {
                Ok(u) => match &admin {
                    Some((_, shared)) => {
                        if let Err(e) = admin::start_auth(
                            &cfg.auth_socket,
                            shared.clone(),
                            u.credentials.uid,
                            u.credentials.gid,
                        ) {
                            log::error!("{e}: the proxy cannot check logins");
                        }
                    }
                    None => log::error!("no admin endpoint: the proxy cannot check logins"),
                },
                Err(e) => log::error!("{e}"),
            }
            if let Some((_, shared)) = &admin {
                let path = health_socket_path(&cfg);
                match admin::bind_private(&path, shared) {
                    Ok(l) => health = Some((l, path)),
                    Err(e) => log::error!("{e}: the proxy cannot be probed privately"),
                }
            }
            let sv = Supervisor::named(PROXY, proxy_settings(&cfg));
            let proxy = Service::new(ServiceKind::Proxy, sv, &cfg.proxy_user, 0, now);
            services.insert(PROXY.to_string(), proxy);
        }
        let prober = Prober::start().map_err(|e| format!("cannot start the probe thread: {e}"))?;
        let tls = match cfg.auth {
            AuthMode::Proxy => tls::TlsState::new(&cfg, now),
            _ => None,
        };
        Ok(Boot {
            tls,
            active_users,
            login_uids: BTreeMap::new(),
            admin,
            config_path,
            overrides,
            cfg,
            users,
            report,
            decision,
            services,
            started_at: now,
            listeners: Vec::new(),
            health,
            child_signals: signals::Inherited::default(),
            user_job: None,
            user_queue: VecDeque::from([(boot_restore, None)]),
            restoring: true,
            policy_changed: false,
            prober,
        })
    }

    /// The shared opencode's supervisor (`instances = shared`).
    pub fn opencode(&self) -> Option<&Supervisor> {
        self.services.get(OPENCODE).map(|s| &s.sv)
    }

    /// The proxy's supervisor, when there is one.
    pub fn proxy(&self) -> Option<&Supervisor> {
        self.services.get(PROXY).map(|s| &s.sv)
    }

    /// Is the front door ready: the shared opencode answers, or (per user, where
    /// instances start on demand) the proxy does and the gate is open.
    fn ready(&self) -> (bool, String) {
        if self.tls.as_ref().is_some_and(|t| !t.ready()) {
            return (false, "no usable TLS certificate".into());
        }
        match self.opencode() {
            Some(sv) => (sv.is_ready(), sv.phase_name().to_string()),
            None if self.gate_reason().is_some() => (false, "gated".into()),
            None => match self.proxy() {
                Some(p) if p.is_ready() => (true, "per-user".into()),
                Some(p) => (false, format!("proxy {}", p.phase_name())),
                None => (false, "no proxy".into()),
            },
        }
    }

    /// Log the decision the way an operator needs to read it.
    fn announce(&self) {
        match &self.decision {
            Decision::Launch => log::info!(
                "launching opencode on {}:{} ({})",
                self.cfg.host,
                self.cfg.port,
                match (self.cfg.exposed(), self.cfg.auth) {
                    (true, AuthMode::Proxy) =>
                        "network exposed, logins checked by occ-init's proxy",
                    (true, _) => "network exposed, logins checked by opencode",
                    (false, AuthMode::Proxy) => "local only, logins checked by occ-init's proxy",
                    (false, _) => "local only",
                }
            ),
            Decision::LaunchWithWarning(w) => log::warn!("WARNING: {w}"),
            Decision::Gate(why) => log::warn!("{why}"),
        }
        if self.cfg.exposed()
            && self.cfg.auth == AuthMode::Proxy
            && self.cfg.tls == crate::config::TlsMode::Off
            && !self.cfg.trust_proxy
        {
            log::warn!(
                "{} {}",
                crate::status::CLEARTEXT_WARNING,
                crate::status::CLEARTEXT_FIX
            );
        }
    }

    /// SIGHUP: re-read config and manifest, re-decide.
    fn reload(&mut self) {
        match Config::load(self.config_path.as_deref(), &self.overrides) {
            Ok(mut cfg) => {
                if cfg != self.cfg {
                    log::info!("configuration reloaded");
                }
                if cfg.layout() != self.cfg.layout() {
                    log::warn!(
                        "instances = {} is kept until the container restarts (asked for {})",
                        self.cfg.layout().as_str(),
                        cfg.layout().as_str()
                    );
                    cfg.instances = Some(self.cfg.layout());
                }
                if cfg.tls != self.cfg.tls {
                    log::warn!(
                        "tls = {} is kept until the container restarts (asked for {})",
                        self.cfg.tls.as_str(),
                        cfg.tls.as_str()
                    );
                    cfg.tls = self.cfg.tls;
                    if cfg.tls == crate::config::TlsMode::Files
                        && (cfg.tls_cert_file.is_none() || cfg.tls_key_file.is_none())
                    {
                        cfg.tls_cert_file = self.cfg.tls_cert_file.clone();
                        cfg.tls_key_file = self.cfg.tls_key_file.clone();
                    }
                }

                for s in self.services.values_mut() {
                    s.sv.settings = match s.kind {
                        ServiceKind::Opencode => Settings::from(&cfg),
                        ServiceKind::Proxy => proxy_settings(&cfg),
                        ServiceKind::Instance => instance_settings(&cfg),
                    };
                }
                self.users = Users::new(users_config(&cfg)).keep_unsaved_from(&self.users);
                self.cfg = cfg;
            }
            Err(e) => log::error!("configuration not reloaded, keeping the old one: {e}"),
        }
        if let Some((_, shared)) = &self.admin {
            if let Ok(mut o) = shared.oidc.lock() {
                o.configure(&self.cfg);
            }
        }
        // The certificate files are re-read on every SIGHUP (rotation by hand).
        if let Some(t) = &mut self.tls {
            t.reconfigure(&self.cfg);
        }
        // The restore runs in the helper process; the loop goes on meanwhile.
        self.user_queue
            .push_back((worker::Job::Restore { bootstrap: None }, None));
        self.start_user_job();
        if let Some((_, shared)) = &self.admin {
            if let Ok(mut u) = shared.users.lock() {
                *u = self.users.clone();
            }
            // New limits, same history: a reload must not forgive failed logins.
            if let Ok(mut l) = shared.limiter.lock() {
                l.set_limits(
                    self.cfg.rate_limit_attempts,
                    std::time::Duration::from_secs(self.cfg.rate_limit_window_seconds),
                );
            }
        }
        self.reevaluate();
    }

    /// Users or config changed: recompute the login users and the decision (logged when it
    /// changed, or always with `announce`).
    fn reevaluate(&mut self) {
        self.decide(false);
    }

    fn decide(&mut self, announce: bool) {
        if self.restoring {
            // The boot's restore decides first (`restore_done`).
            self.publish_gate();
            return;
        }
        self.active_users = active_login_users(&self.users);
        let decision = policy::decide(&facts(&self.cfg, &self.active_users));
        if announce || decision != self.decision {
            self.decision = decision;
            self.announce();
        }
        self.end_departed_users();
        self.publish_gate();
    }

    /// Why opencode is held back now, if it is.
    fn gate_reason(&self) -> Option<String> {
        match &self.decision {
            _ if self.restoring => Some(RESTORING.to_string()),
            Decision::Gate(why) => Some(why.clone()),
            _ => None,
        }
    }

    /// Tell the proxy (through the auth socket's shared state) whether opencode is gated,
    /// and where the shared one listens with which credentials.
    fn publish_gate(&self) {
        let Some((_, shared)) = &self.admin else {
            return;
        };
        let oc = self.services.get(OPENCODE);
        let view = admin::GateView {
            reason: self.gate_reason(),
            ready: self.ready().0,
            users: self.active_users.len(),
            per_user: self.cfg.per_user(),
            upstream_authorization: oc.and_then(|s| s.authorization.clone()),
            upstream: oc
                .filter(|s| self.cfg.auth == AuthMode::Proxy && s.port != 0)
                .map(|s| format!("127.0.0.1:{}", s.port)),
            upstream_uid: oc.and_then(|s| s.runs_as).map(|(uid, _)| uid),
        };
        if let Ok(mut g) = shared.gate.lock() {
            *g = view;
        }
    }

    /// The status report.
    pub fn status(&self) -> crate::status::Status {
        use crate::status::*;
        let now = Instant::now();
        let (ready, phase) = self.ready();
        let oc = self.services.get(OPENCODE);
        let opencode = match oc {
            Some(svc) => {
                let sv = &svc.sv;
                let (host, port) = self.cfg.opencode_listen(svc.port);
                Opencode {
                    state: sv.phase_name().to_string(),
                    ready: sv.is_ready(),
                    pid: sv.pid(),
                    uptime_seconds: sv.started().map(|s| now.duration_since(s).as_secs()),
                    restarts: sv.restarts,
                    last_exit_code: sv.last_exit.map(|e| e.code),
                    last_exit_seconds_ago: sv.last_exit.map(|e| now.duration_since(e.at).as_secs()),
                    listen: format!("{host}:{port}"),
                    command: self.cfg.command.clone(),
                    gate_reason: self.gate_reason(),
                }
            }
            None => Opencode {
                state: phase,
                ready,
                pid: None,
                uptime_seconds: None,
                restarts: self.instances().map(|s| s.sv.restarts).sum(),
                last_exit_code: None,
                last_exit_seconds_ago: None,
                listen: "127.0.0.1 (a port per user)".into(),
                command: self.cfg.command.clone(),
                gate_reason: self.gate_reason(),
            },
        };
        let wall = |at: Instant| {
            let t = std::time::SystemTime::now()
                .checked_sub(now.saturating_duration_since(at))
                .unwrap_or(std::time::UNIX_EPOCH);
            t.duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
        };
        let instances = self
            .services
            .values()
            .filter(|s| s.kind != ServiceKind::Proxy)
            .map(|s| Instance {
                user: s.user.clone(),
                state: instances::state_word(s).to_string(),
                pid: s.sv.pid(),
                port: if s.sv.pid().is_some() { s.port } else { 0 },
                started: s.sv.started().map(wall),
                last_request: (s.kind == ServiceKind::Instance).then(|| wall(s.usage.last_request)),
                rss_kib: s.sv.pid().and_then(crate::init::procs::group_rss_kib),
                restarts: s.sv.restarts,
                terminals: s.usage.open,
                reason: s.failed.as_ref().map(|(why, _)| why.clone()),
            })
            .collect();
        Status {
            version: crate::version::SHORT.to_string(),
            uptime_seconds: now.duration_since(self.started_at).as_secs(),
            proxy: self.proxy().map(|p| ProxyStatus {
                state: p.phase_name().to_string(),
                ready: p.is_ready(),
                pid: p.pid(),
                restarts: p.restarts,
                last_exit_code: p.last_exit.map(|e| e.code),
                listen: format!("{}:{}", self.cfg.host, self.cfg.port),
                user: self.cfg.proxy_user.clone(),
            }),
            opencode,
            security: Security {
                binding: self.cfg.exposure_address().to_string(),
                network_exposed: self.cfg.exposed(),
                // Read now: an account whose password field was emptied or locked behind
                // occ-init's back is not a login user, whatever the last decision saw.
                auth_users: active_login_users(&self.users),
                auth_enforced_by: auth_enforced_by(&self.cfg, &self.active_users).to_string(),
                server_password: server_password(&self.cfg).is_some(),
                trust_proxy: self.cfg.trust_proxy,
                rate_limit_attempts: self.cfg.rate_limit_attempts,
                rate_limit_window_seconds: self.cfg.rate_limit_window_seconds,
                allow_unauthenticated_network: self.cfg.allow_unauthenticated_network,
                tls: self
                    .tls
                    .as_ref()
                    .map(tls::TlsState::status)
                    .unwrap_or_default(),
                tokens: self
                    .admin
                    .as_ref()
                    .and_then(|(_, s)| s.tokens.lock().ok().map(|t| t.count()))
                    .unwrap_or(0),
                oidc: self.admin.as_ref().and_then(|(_, s)| {
                    let o = s.oidc.lock().ok()?;
                    Some(OidcStatus {
                        issuer: o.issuer.clone()?,
                        reachable: o.reachable,
                        error: o.error.clone(),
                        device: o.device,
                        allowed_groups: o.allowed_groups.clone(),
                        create_users: o.create_users,
                        secret: o.secret.is_some(),
                    })
                }),
                password_login: self.cfg.password_login,
            },
            users: UsersStatus {
                manifest: self.cfg.users_file.display().to_string(),
                persisted: self.users.store().writable(),
                error: self.report.manifest_error.clone(),
            },
            layout: self.cfg.layout().as_str().to_string(),
            max_instances: self.cfg.max_instances,
            instance_idle_timeout_seconds: self.cfg.instance_idle_timeout.as_secs(),
            instances,
        }
    }

    /// Answer what the admin server asked; adds events for the services.
    fn serve_jobs(&mut self, now: Instant, events: &mut Events) {
        let jobs = match &self.admin {
            Some((mailbox, _)) => mailbox.drain(),
            None => return,
        };
        for job in jobs {
            let mut job_reply = job.reply;
            let reply = match job.request {
                LoopRequest::Status => Some(LoopReply::Status(Box::new(self.status()))),
                LoopRequest::Ready => {
                    let (ready, state) = self.ready();
                    Some(LoopReply::Ready { ready, state })
                }
                LoopRequest::Restart => Some(LoopReply::Restart(
                    match self.opencode().map(|sv| (sv.pid(), sv.phase_name())) {
                        Some((Some(_), _)) => {
                            events.push((OPENCODE.into(), Event::RestartRequested));
                            Ok(())
                        }
                        Some((None, phase)) => Err(format!("opencode is not running ({phase})")),
                        None => Err("instances = per-user: restart one user's opencode with `occ-init instance stop USER` (their next request starts it again)".into()),
                    },
                )),
                LoopRequest::User(op) => {
                    // Answered when the helper is done (see `finish_user_job`).
                    let job = op.into_job(&exposure(&self.cfg));
                    self.user_queue.push_back((job, job_reply.take()));
                    self.start_user_job();
                    None
                }
                LoopRequest::Instances(report) => {
                    Some(LoopReply::Instances(self.on_report(report, now, events)))
                }
                LoopRequest::ListInstances => {
                    Some(LoopReply::InstanceList(self.status().instances))
                }
                LoopRequest::StopInstance(user) => {
                    Some(LoopReply::Stopped(self.stop_instance(&user, "stopped on request", events)))
                }
            };
            if let (Some(tx), Some(reply)) = (job_reply, reply) {
                let _ = tx.send(reply);
            }
        }
    }

    /// Start the next queued user change in a helper process, unless one is running.
    fn start_user_job(&mut self) {
        if self.user_job.is_some() {
            return;
        }
        let Some((job, reply)) = self.user_queue.pop_front() else {
            return;
        };
        let restore = matches!(job, worker::Job::Restore { .. });
        // /proc/self/exe: still this binary even if the file was replaced on disk meanwhile.
        let exe = PathBuf::from("/proc/self/exe");
        let job_bootstrap = match &job {
            worker::Job::Restore { bootstrap } => bootstrap.clone(),
            _ => None,
        };
        let req = worker::request(&self.users, job);
        match worker::Running::start(&exe, &req) {
            Ok(running) => {
                self.user_job = Some(UserJob {
                    running,
                    reply,
                    restore,
                })
            }
            Err(e) if restore => {
                // Never leave opencode waiting for a restore that cannot run elsewhere.
                log::error!("users: cannot start the user helper ({e}); restoring in PID 1");
                let bootstrap = job_bootstrap.map(|(name, hash)| Bootstrap {
                    name,
                    hash: crate::secret::SecretString::new(hash),
                });
                self.report = self.users.restore_at_boot(bootstrap);
                self.restore_done();
            }
            Err(e) => {
                log::error!("users: cannot start the user helper: {e}");
                if let Some(tx) = reply {
                    let _ = tx.send(LoopReply::User(Err(crate::admin::api::ApiError::new(
                        500,
                        "internal",
                        format!("cannot start the user helper: {e}"),
                    ))));
                }
            }
        }
    }

    /// The boot's restore is over: decide, say so, let the supervisor act.
    fn restore_done(&mut self) {
        self.restoring = false;
        self.decide(true);
        self.policy_changed = true;
    }

    /// Collect the helper's answer when it is there (or kill an overdue helper); then answer
    /// the caller, re-evaluate the policy (the services hear of it through
    /// `policy_changed`) and start the next change.
    fn poll_user_job(&mut self) {
        let Some(job) = self.user_job.as_mut() else {
            return;
        };
        let answer = match job.running.poll() {
            Some(a) => a,
            None if job.running.started.elapsed() >= worker::HELPER_TIMEOUT => job.running.expire(),
            None => return,
        };
        let Some(job) = self.user_job.take() else {
            return;
        };
        // A helper that answered hands back the unsaved overlay (maybe none); one that died
        // without an answer leaves PID 1's as it was.
        if answer.overlay.is_some() || answer.persistence.is_some() || answer.report.is_some() {
            self.users.set_overlay_wire(answer.overlay.clone());
        }
        if job.restore {
            if let Some(report) = answer.report.clone() {
                self.report = report;
            }
            if self.restoring {
                self.restore_done();
            }
        }
        let result = answer.result();
        if let Err(e) = &result {
            if job.reply.is_none() {
                log::error!("users: {}", e.message);
            }
        }
        if let Some(tx) = job.reply {
            let _ = tx.send(LoopReply::User(result));
        }
        if !self.restoring {
            self.reevaluate();
            self.policy_changed = true;
        }
        self.start_user_job();
    }

    /// What the bind policy says to every opencode: the shared one is let run or gated;
    /// per-user instances are stopped when the gate closes (they start on request).
    fn policy_events(&self) -> Events {
        let allowed = self.decision.allows_launch() && !self.restoring;
        let mut out = Vec::new();
        if self.services.contains_key(OPENCODE) {
            out.push((OPENCODE.to_string(), Event::Policy(allowed)));
        }
        if !allowed {
            for s in self.instances().filter(|s| s.sv.pid().is_some()) {
                let why = "the bind policy gates opencode now".to_string();
                out.push((instances::name_of(s), Event::Stop(why)));
            }
        }
        out
    }

    fn probe_target(&self, name: &str, check: Check) -> Option<Target> {
        let svc = self.services.get(name)?;
        Some(match svc.kind {
            ServiceKind::Opencode | ServiceKind::Instance => {
                let (host, port) = self.cfg.opencode_listen(svc.port);
                Target {
                    host,
                    port,
                    path: match check {
                        Check::Health => self.cfg.health_path.clone(),
                        Check::Idle => "/session/status".into(),
                    },
                    timeout: self.cfg.health_timeout,
                    password: match self.cfg.auth {
                        AuthMode::Proxy => svc.secret.clone(),
                        _ => server_password(&self.cfg).map(std::sync::Arc::new),
                    },
                    unix: None,
                    // Behind the proxy, an answer counts only from opencode itself: a
                    // process from one of its terminals could kill it and take the port.
                    owner: match (self.cfg.auth, svc.sv.pid(), svc.runs_as) {
                        (AuthMode::Proxy, Some(pid), Some((uid, gid))) => {
                            Some(crate::supervise::probe::Owner { pid, uid, gid })
                        }
                        _ => None,
                    },
                }
            }
            // Over the private socket when there is one: a flood on the public port must not
            // make PID 1 restart a busy proxy.
            ServiceKind::Proxy => Target {
                host: self.cfg.host.clone(),
                port: self.cfg.port,
                path: "/_occ/health".into(),
                timeout: self.cfg.health_timeout,
                password: None,
                unix: self.health.as_ref().map(|(_, p)| p.clone()),
                owner: None,
            },
        })
    }

    /// Start service `name` now.
    fn spawn(&mut self, name: &str) -> Event {
        match self.services.get(name).map(|s| s.kind) {
            Some(ServiceKind::Proxy) => self.spawn_proxy(),
            Some(_) => self.spawn_opencode(name),
            None => Event::SpawnFailed(1),
        }
    }

    /// Start an opencode (the shared one or a user's): port check, its user, a fresh
    /// password behind the proxy, spawn.
    fn spawn_opencode(&mut self, name: &str) -> Event {
        let auth = self.cfg.auth;
        let fixed_port = self.cfg.internal_port != 0;
        let Some(svc) = self.services.get_mut(name) else {
            return Event::SpawnFailed(1);
        };
        let instance = svc.kind == ServiceKind::Instance;
        // Behind the proxy opencode binds a port the kernel picks (`--port 0`), found by its
        // first probe among the sockets of opencode's own process: no other process can know
        // the port before it is bound, so none can take it first (to catch the first probe's
        // credentials, or to make every start fail). Only a fixed `internal_port` is given.
        if auth == AuthMode::Proxy && (instance || !fixed_port) {
            svc.port = 0;
        }
        let (host, port) = self.cfg.opencode_listen(svc.port);
        if port != 0 && oc::port_in_use(&host, port) {
            log::error!(
                "port {port} on {host} is already in use by another process: opencode cannot listen there"
            );
            return Event::SpawnFailed(1);
        }
        let user = match oc::lookup(&svc.user) {
            Ok(u) => u,
            Err(e) => {
                log::error!("{name}: {e}");
                return Event::SpawnFailed(1);
            }
        };
        // Behind the proxy every start gets a new random password, so that no other process
        // in the container (any uid sharing the network namespace) can use its loopback
        // port; the proxy sends the matching credentials upstream.
        let password = match auth {
            AuthMode::Proxy => {
                svc.secret = new_upstream_secret();
                svc.authorization = svc.secret.as_ref().map(|s| {
                    let pair = SecretString::new(format!("opencode:{}", s.expose()));
                    let basic = crate::supervise::probe::base64(pair.expose().as_bytes());
                    std::sync::Arc::new(SecretString::new(format!("Basic {basic}")))
                });
                match &svc.secret {
                    Some(s) => Some(SecretString::new(s.expose().to_string())),
                    None => return Event::SpawnFailed(1),
                }
            }
            _ => server_password(&self.cfg),
        };
        svc.runs_as = Some((user.credentials.uid, user.credentials.gid));
        let mut spec = match (&password, instance) {
            (Some(pw), true) => oc::instance_spec(&self.cfg, &user, pw, (&host, port)),
            _ => oc::spec(&self.cfg, &user, password.as_ref(), (&host, port)),
        };
        spec.signals = self.child_signals;
        let result = crate::spawn::spawn_spec(&spec);
        self.publish_gate();
        match result {
            Ok(pid) => {
                log::info!(
                    "started {name} (pid {pid}) as {} on {host}:{port}",
                    user.name
                );
                Event::Spawned(pid.as_raw())
            }
            Err(e) => {
                log::error!("{name}: {e}");
                Event::SpawnFailed(e.exit_code())
            }
        }
    }

    /// Start the proxy as its own user, handing it the public listening sockets as fds 3,
    /// 4, … and the private health socket after them.
    fn spawn_proxy(&mut self) -> Event {
        if self.listeners.is_empty() {
            match bind_public(&self.cfg) {
                Ok(l) => self.listeners = l,
                Err(e) => {
                    let why = if e.kind() == std::io::ErrorKind::AddrInUse {
                        "already in use by another process".to_string()
                    } else {
                        e.to_string()
                    };
                    log::error!(
                        "cannot listen on {}:{}: {why}; the proxy will retry",
                        self.cfg.host,
                        self.cfg.port
                    );
                    return Event::SpawnFailed(1);
                }
            }
        }
        let user = match oc::lookup(&self.cfg.proxy_user) {
            Ok(u) => u,
            Err(e) => {
                log::error!("{e}");
                return Event::SpawnFailed(1);
            }
        };
        use std::os::fd::AsRawFd;
        let mut pass_fds: Vec<i32> = self.listeners.iter().map(|l| l.as_raw_fd()).collect();
        let listen_fds = pass_fds.len();
        if let Some((h, _)) = &self.health {
            pass_fds.push(h.as_raw_fd());
        }
        // Its end of the certificate socket (dropped here once it is started).
        let tls_channel = match self.tls.as_mut().map(tls::TlsState::channel_for_proxy) {
            Some(Ok(fd)) => Some(fd),
            Some(Err(e)) => {
                log::error!("cannot make the proxy's certificate socket: {e}");
                return Event::SpawnFailed(1);
            }
            None => None,
        };
        if let Some(fd) = &tls_channel {
            pass_fds.push(fd.as_raw_fd());
        }
        let upstream = self.services.get(OPENCODE).map(|s| s.port);
        let argv = proxy_argv(
            &self.cfg,
            upstream,
            listen_fds,
            self.health.is_some(),
            tls_channel.is_some(),
        );
        let spec = crate::spawn::SpawnSpec {
            argv,
            env: Some(proxy_env()),
            cwd: Some(PathBuf::from("/")),
            credentials: Some(crate::spawn::Credentials {
                uid: user.credentials.uid,
                gid: user.credentials.gid,
                groups: vec![user.credentials.gid],
            }),
            pass_fds,
            no_new_privs: true,
            signals: self.child_signals,
            make_dirs: Vec::new(),
        };
        match crate::spawn::spawn_spec(&spec) {
            Ok(pid) => {
                log::info!(
                    "started the proxy (pid {pid}) as {} on {}:{}",
                    user.name,
                    self.cfg.host,
                    self.cfg.port
                );
                Event::Spawned(pid.as_raw())
            }
            Err(e) => {
                log::error!("proxy: {e}");
                Event::SpawnFailed(e.exit_code())
            }
        }
    }

    /// Feed one event to service `name` and carry out what it asks; `Some(code)` to stop.
    fn handle(&mut self, name: &str, event: Event, now: Instant) -> Option<i32> {
        let svc = self.services.get_mut(name)?;
        let kind = svc.kind;
        let mut queue: VecDeque<Action> = svc.sv.on(event, now).into();
        while let Some(action) = queue.pop_front() {
            match action {
                Action::Spawn => {
                    let ev = self.spawn(name);
                    let svc = self.services.get_mut(name)?;
                    queue.extend(svc.sv.on(ev, Instant::now()));
                }
                Action::Probe => {
                    if let Some(t) = self.probe_target(name, Check::Health) {
                        self.prober.request(name, Check::Health, t);
                    }
                }
                Action::Signal(pid, sig) => {
                    if kill(Pid::from_raw(-pid), sig).is_err() {
                        let _ = kill(Pid::from_raw(pid), sig);
                    }
                }
                // The shared opencode's end ends the container; the proxy is always
                // restarted; an instance that gives up waits for its user's next request.
                Action::Exit(code) => match kind {
                    ServiceKind::Opencode => return Some(code),
                    ServiceKind::Proxy => {}
                    ServiceKind::Instance => self.instance_gave_up(name, code, now),
                },
                Action::Log {
                    warn: true,
                    message,
                } => log::warn!("{message}"),
                Action::Log {
                    warn: false,
                    message,
                } => log::info!("{message}"),
            }
        }
        None
    }

    /// The earliest deadline of any service (and of the instances' idle checks).
    fn deadline(&self) -> Option<Instant> {
        let services = self.services.values().filter_map(|s| s.sv.deadline());
        let tls = self.tls.as_ref().map(tls::TlsState::deadline);
        services.chain(self.instances_deadline()).chain(tls).min()
    }

    /// Hand over to the PID-1 stop sequence and return the exit code.
    fn finish(&self, reader: &mut SignalReader, stop_signal: Option<i32>, code: i32) -> i32 {
        let now = Instant::now();
        let grace = self.cfg.stop_grace;
        // The proxy goes first (no new requests while opencode stops), then every user's
        // opencode gets TERM. Whatever is left when the grace period ends is killed with the
        // rest of the descendants.
        let group_term = |pid: i32| {
            let _ = kill(Pid::from_raw(-pid), Signal::SIGTERM);
        };
        if let Some(pid) = self.proxy().and_then(Supervisor::pid) {
            group_term(pid);
        }
        for pid in self.instances().filter_map(|s| s.sv.pid()) {
            group_term(pid);
        }
        match (self.opencode().and_then(Supervisor::pid), stop_signal) {
            (Some(pid), Some(sig)) => {
                let mut life = Lifecycle::new(pid, grace);
                for action in life.on_signal(sig, now) {
                    init::perform(action, Pid::from_raw(pid), ForwardTo::Group);
                }
                init::drive(reader, life, Pid::from_raw(pid), ForwardTo::Group)
            }
            // Per user there is no one child whose status to return: a stop by signal
            // exits 128+N, as it would with the shared opencode.
            (None, Some(sig)) if self.cfg.per_user() => init::drive(
                reader,
                Lifecycle::without_child(128 + sig, grace, now),
                Pid::from_raw(0),
                ForwardTo::Group,
            ),
            _ => init::drive(
                reader,
                Lifecycle::without_child(code, grace, now),
                Pid::from_raw(0),
                ForwardTo::Group,
            ),
        }
    }

    /// Drain the signalfd: a stop signal is returned; SIGHUP reloads; others are forwarded
    /// to the opencode processes' groups.
    fn read_signals(&mut self, reader: &mut SignalReader) -> Option<i32> {
        loop {
            match reader.pending() {
                Ok(Some(sig)) if signals::is_stop_signal(sig) => {
                    log::info!(
                        "received {}, stopping (grace period {})",
                        signals::name(sig),
                        crate::duration::display(self.cfg.stop_grace)
                    );
                    return Some(sig);
                }
                Ok(Some(libc::SIGHUP)) => {
                    log::info!("received SIGHUP: re-reading configuration and users");
                    self.reload();
                    self.policy_changed = true;
                }
                Ok(Some(libc::SIGCHLD)) => {}
                // Forwarded like tini does, to the opencode processes' groups: the shared
                // one, or every user's.
                Ok(Some(sig)) => {
                    let pids = self
                        .services
                        .values()
                        .filter(|s| s.kind != ServiceKind::Proxy);
                    for pid in pids.filter_map(|s| s.sv.pid()) {
                        init::forward(sig, Pid::from_raw(pid), ForwardTo::Group);
                    }
                }
                Ok(None) => return None,
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    log::warn!("reading signalfd failed: {e}");
                    return None;
                }
            }
        }
    }

    /// Block until a signal, a probe result, an admin request, the user helper or the next
    /// deadline.
    fn wait(&self, reader: &SignalReader) {
        let mut fds = vec![
            PollFd::new(reader.as_fd(), PollFlags::POLLIN),
            PollFd::new(self.prober.as_fd(), PollFlags::POLLIN),
        ];
        if let Some((mailbox, _)) = &self.admin {
            fds.push(PollFd::new(mailbox.as_fd(), PollFlags::POLLIN));
        }
        if let Some(job) = &self.user_job {
            fds.push(PollFd::new(job.running.as_fd(), PollFlags::POLLIN));
        }
        let helper = self
            .user_job
            .as_ref()
            .map(|j| j.running.started + worker::HELPER_TIMEOUT);
        init::wait_any(&mut fds, self.deadline().into_iter().chain(helper).min());
    }

    /// The loop: every wake-up turns signals, exits, probe results, admin requests and
    /// the user helper's answer into events for the services, by name.
    pub fn run(&mut self, reader: &mut SignalReader) -> i32 {
        write_pid_file(&self.cfg);
        // The boot's restore first (in the helper); opencode's first Policy event follows it.
        self.start_user_job();
        self.publish_gate();
        // The proxy runs whatever the policy says: while gated it shows how to add a user.
        self.handle(PROXY, Event::Policy(true), Instant::now());
        loop {
            self.wait(reader);
            if let Some(sig) = self.read_signals(reader) {
                let code = self
                    .opencode()
                    .and_then(|sv| sv.last_exit)
                    .map_or(0, |e| e.code);
                return self.finish(reader, Some(sig), code);
            }
            let now = Instant::now();
            let mut events: Events = Vec::new();
            for (pid, code) in reap::reap_all().exited {
                if let Some((name, _)) = self.services.iter().find(|(_, s)| s.sv.pid() == Some(pid))
                {
                    events.push((name.clone(), Event::Exited { pid, code }));
                }
            }
            for (name, check, pid, result) in self.prober.results() {
                self.probed(name, check, pid, result, now, &mut events);
            }
            self.serve_jobs(now, &mut events);
            self.poll_user_job();
            if std::mem::take(&mut self.policy_changed) {
                events.extend(self.policy_events());
            }
            self.instances_tick(now, &mut events);
            self.tls.iter_mut().for_each(|t| t.tick(now));
            events.extend(self.services.keys().map(|n| (n.clone(), Event::Tick)));
            for (name, ev) in events {
                if let Some(code) = self.handle(&name, ev, now) {
                    return self.finish(reader, None, code);
                }
            }
            self.remove_stopped_instances();
            // Readiness may have changed: what the proxy shows follows, once per wake-up.
            self.publish_gate();
        }
    }
}

/// Supervision settings for the proxy: always restarted, never a reason to stop the
/// container, probed on its own `/_occ/health`.
fn proxy_settings(cfg: &Config) -> Settings {
    let mut s = Settings::from(cfg);
    s.restart = crate::config::RestartPolicy::Always;
    s.crash_loop_action = crate::config::CrashLoopAction::KeepTrying;
    s.startup_timeout = std::time::Duration::from_secs(15);
    s.backoff_max = s.backoff_max.min(std::time::Duration::from_secs(10));
    s.backoff_initial = s.backoff_initial.min(s.backoff_max);
    s.stop_grace = s.stop_grace.min(std::time::Duration::from_secs(5));
    s
}

/// Supervision settings for a user's opencode: like the shared one's, but a crash loop
/// gives up (its user is told why; other users are unaffected) instead of ending the
/// container.
fn instance_settings(cfg: &Config) -> Settings {
    let mut s = Settings::from(cfg);
    s.restart = crate::config::RestartPolicy::Always;
    s.crash_loop_action = crate::config::CrashLoopAction::Exit;
    // Its user is waiting for the first answer: readiness is noticed within 20 ms.
    s.startup_probe = std::time::Duration::from_millis(20);
    s
}

/// The proxy's command line (nothing secret on it): `listen_fds` public sockets from fd 3
/// on, then the health socket when there is one, then the certificate socket with TLS.
pub fn proxy_argv(
    cfg: &Config,
    upstream: Option<u16>,
    listen_fds: usize,
    health: bool,
    tls: bool,
) -> Vec<std::ffi::OsString> {
    let mut v: Vec<std::ffi::OsString> = vec![proxy_program(cfg).into()];
    for fd in 0..listen_fds {
        v.push("--listen-fd".into());
        v.push((3 + fd).to_string().into());
    }
    if health {
        v.push("--health-fd".into());
        v.push((3 + listen_fds).to_string().into());
    }
    if tls {
        v.push("--tls-fd".into());
        v.push((3 + listen_fds + usize::from(health)).to_string().into());
        v.push("--hsts".into());
        v.push(cfg.hsts.to_string().into());
    }
    if let Some(port) = upstream {
        v.push("--upstream".into());
        v.push(format!("127.0.0.1:{port}").into());
    }
    for (k, val) in [
        ("--auth-socket", cfg.auth_socket.display().to_string()),
        ("--public-health", cfg.public_health.to_string()),
        ("--trust-proxy", cfg.trust_proxy.to_string()),
        (
            "--session-idle",
            crate::duration::display(cfg.session_idle_timeout),
        ),
        (
            "--session-max-age",
            crate::duration::display(cfg.session_max_age),
        ),
        (
            "--max-connections-per-client",
            cfg.max_connections_per_client.to_string(),
        ),
        ("--max-connections", cfg.max_connections.to_string()),
        (
            "--instance-start-timeout",
            crate::duration::display(cfg.instance_start_timeout),
        ),
    ] {
        v.push(k.into());
        v.push(val.into());
    }
    for o in &cfg.trusted_origins {
        v.push("--trusted-origin".into());
        v.push(o.into());
    }
    if let (Some(issuer), Some(id), Some(public)) =
        (&cfg.oidc_issuer, &cfg.oidc_client_id, &cfg.public_url)
    {
        for (k, val) in [
            ("--oidc-issuer", issuer.clone()),
            ("--oidc-client-id", id.clone()),
            ("--public-url", public.clone()),
            ("--oidc-username-claim", cfg.oidc_username_claim.clone()),
            ("--oidc-groups-claim", cfg.oidc_groups_claim.clone()),
            ("--password-login", cfg.password_login.to_string()),
        ] {
            v.push(k.into());
            v.push(val.into());
        }
        if let Some(n) = &cfg.oidc_provider_name {
            v.push("--oidc-provider-name".into());
            v.push(n.into());
        }
        for s in &cfg.oidc_scopes {
            v.push("--oidc-scope".into());
            v.push(s.into());
        }
    }
    v
}

/// The proxy's environment: only what it needs (never occ-init's secrets).
fn proxy_env() -> Vec<(std::ffi::OsString, std::ffi::OsString)> {
    let mut env = vec![("PATH".into(), oc::DEFAULT_PATH.into())];
    for name in ["OCC_LOG", "RUST_LOG", "LANG", "TZ"] {
        if let Some(v) = std::env::var_os(name) {
            env.push((name.into(), v));
        }
    }
    env
}

/// Whatever descriptors above stderr occ-init inherited (a build tool's lock, an engine's
/// leftovers) are closed on exec: no child — the proxy, a user's opencode and what it runs —
/// gets them. PID 1 hands its children only what it means to (`pass_fds`).
fn cloexec_inherited() {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets flags on our descriptors.
    let done = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC as libc::c_uint,
        )
    } == 0;
    if done {
        return;
    }
    // Older kernels: one fcntl per open descriptor.
    let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .filter(|fd| *fd > 2)
                .collect()
        })
        .unwrap_or_default();
    for fd in fds {
        // SAFETY: F_SETFD on a descriptor number; a closed one just fails.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags >= 0 {
                libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
            }
        }
    }
}

/// Entry point of the default start.
pub fn start(config_path: Option<PathBuf>, overrides: Overrides, blocked: signals::Blocked) -> i32 {
    cloexec_inherited();
    let mut reader = match SignalReader::new(&blocked.mask) {
        Ok(r) => r,
        Err(e) => {
            log::error!("cannot create signalfd: {e}");
            return 1;
        }
    };
    init::become_subreaper();
    init::protect_memory();
    // One malloc arena: the connection and probe threads come and go, and per-thread arenas
    // would keep what each once used (PID 1's RSS must not grow with the instances it served).
    // SAFETY: mallopt with integer arguments, before any thread of ours exists.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
    let mut boot = match Boot::new(config_path, overrides) {
        Ok(b) => b,
        Err(e) => {
            log::error!("{e}");
            return crate::EXIT_USAGE;
        }
    };
    boot.child_signals = blocked.inherited;
    init::leave_working_directory();
    let code = boot.run(&mut reader);
    // Only sockets bound here, and only if they are still ours.
    if let Some((_, shared)) = &boot.admin {
        shared.unlink_own();
    }
    if let Some(pid_file) = pid_file(&boot.cfg) {
        let _ = std::fs::remove_file(pid_file);
    }
    code
}

/// `occ-init check`: validate config and manifest, print the effective settings.
pub fn check(config_path: Option<&Path>, overrides: &Overrides) -> i32 {
    let cfg = match Config::load(config_path, overrides) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("occ-init: {e}");
            return 1;
        }
    };
    println!(
        "# effective settings (defaults < {} < OCC_* environment < flags)",
        crate::config::DEFAULT_CONFIG
    );
    print!("{}", cfg.render());
    let users = Users::new(users_config(&cfg));
    let accounts = crate::users::accounts::Accounts::read(Path::new("/etc"));
    let manifest = accounts
        .map_err(|(path, e)| format!("{}: {e}", path.display()))
        .and_then(|a| users.load(&a).map_err(|e| e.to_string()));
    println!();
    let ok = match &manifest {
        Ok(m) => {
            println!(
                "# users manifest {}: {} user(s), {} active{}",
                cfg.users_file.display(),
                m.users.len(),
                m.active_users().count(),
                if cfg.users_file.exists() {
                    ""
                } else {
                    " (file does not exist yet)"
                }
            );
            true
        }
        Err(e) => {
            println!("# users manifest: INVALID");
            eprintln!("occ-init: {e}");
            false
        }
    };
    let active: Vec<String> = manifest
        .as_ref()
        .map(|m| m.active_users().map(|u| u.name.clone()).collect())
        .unwrap_or_default();
    let decision = policy::decide(&facts(&cfg, &active));
    println!(
        "# binding {} [{}]: {}",
        cfg.exposure_address(),
        if cfg.exposed() {
            "NETWORK EXPOSED"
        } else {
            "LOCAL ONLY"
        },
        match &decision {
            Decision::Launch => "opencode will be launched".to_string(),
            Decision::LaunchWithWarning(w) => format!("launch with warning: {w}"),
            Decision::Gate(g) => format!("gated: {g}"),
        }
    );
    let tls_ok = check_tls(&cfg);
    let oidc_ok = match (&cfg.oidc_issuer, &cfg.oidc_client_secret_file) {
        (Some(issuer), Some(file)) => match crate::oidc::read_secret(file) {
            Ok(_) => {
                println!(
                    "# OIDC: {issuer} (client {}), redirect URI {}/_occ/oidc/callback, client secret readable",
                    cfg.oidc_client_id.as_deref().unwrap_or("?"),
                    cfg.public_url.as_deref().unwrap_or("?").trim_end_matches('/')
                );
                true
            }
            Err(e) => {
                println!("# OIDC: {issuer} — the client secret is UNREADABLE");
                eprintln!("occ-init: {e}");
                false
            }
        },
        _ => {
            println!("# OIDC: off");
            true
        }
    };
    match crate::tokens::Tokens::load(&cfg.tokens_path()) {
        Ok(t) => println!(
            "# personal API tokens {}: {}",
            cfg.tokens_path().display(),
            t.count()
        ),
        Err(e) => {
            println!("# personal API tokens: UNREADABLE (none would be accepted)");
            eprintln!("occ-init: {e}");
        }
    }
    if ok && tls_ok && oidc_ok {
        0
    } else {
        1
    }
}

/// `check`'s TLS line: the pair the proxy would serve, or why there would be none.
fn check_tls(cfg: &Config) -> bool {
    use crate::tls::Source;
    let Some(source) = cfg.tls_source(crate::tls::hostname().as_deref()) else {
        println!("# TLS: off (plain HTTP)");
        return true;
    };
    let now = crate::tls::now_unix();
    let loaded = match &source {
        Source::Files { cert, key } => crate::tls::read_pair(cert, key).and_then(|p| {
            crate::tls::check(&p, &cert.display().to_string(), &key.display().to_string())
        }),
        Source::SelfSigned { dir, .. } => {
            let (cert, key) = (
                dir.join(crate::tls::SELF_CERT),
                dir.join(crate::tls::SELF_KEY),
            );
            if !cert.exists() {
                println!(
                    "# TLS: self-signed, made at boot in {} (none yet)",
                    dir.display()
                );
                return true;
            }
            crate::tls::read_pair(&cert, &key).and_then(|p| {
                crate::tls::check(&p, &cert.display().to_string(), &key.display().to_string())
            })
        }
    };
    match loaded {
        Ok(info) => {
            println!(
                "# TLS: {} for {} until {}{}, SHA-256 {}",
                cfg.tls.as_str(),
                info.names.join(", "),
                crate::tls::rfc3339(info.not_after),
                if info.expired(now) { " (EXPIRED)" } else { "" },
                info.fingerprint_sha256
            );
            true
        }
        Err(e) => {
            println!(
                "# TLS: {} — UNUSABLE: nothing would be served",
                cfg.tls.as_str()
            );
            eprintln!("occ-init: {e}");
            // A self-signed pair that does not check out is replaced at boot.
            matches!(source, Source::SelfSigned { .. })
        }
    }
}
