//! occ-init's settings: defaults < `/etc/occ/init.toml` < `OCC_*` environment < flags, plus
//! opencode-cloud's `OPENCODE_HOST` / `OPENCODE_PORT` / `PORT`. Loading is pure over the
//! file text and an environment map; only [`Config::load`] touches the filesystem.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Default config file.
pub const DEFAULT_CONFIG: &str = "/etc/occ/init.toml";

/// When opencode is restarted after it exits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

/// What to do when opencode crash-loops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CrashLoopAction {
    /// Keep restarting at the maximum backoff.
    KeepTrying,
    /// Stop and exit with opencode's status, so the orchestrator sees the failure.
    Exit,
}

/// What checks passwords in front of opencode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuthMode {
    /// occ-init's authenticating proxy holds the public address; opencode listens on
    /// 127.0.0.1 at `internal_port` and every request needs a container user's login.
    Proxy,
    /// The opencode build authenticates by itself (opencode-cloud's PAM fork, or upstream
    /// with `server_password_file`); opencode listens on the public address.
    Opencode,
    /// Nothing checks passwords.
    None,
}

/// How many opencode processes serve the container's users.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Instances {
    /// Every login user gets an opencode of their own, started on demand as that Linux user
    /// (needs `auth = proxy`: only the proxy knows who is asking).
    PerUser,
    /// One opencode as `service_user` for everyone.
    Shared,
}

/// Whether the proxy serves HTTPS, and with which certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TlsMode {
    /// Plain HTTP (behind a TLS proxy set `trust_proxy`).
    Off,
    /// A certificate occ-init makes once for `tls_names` and keeps in `tls_dir`.
    SelfSigned,
    /// The PEM files `tls_cert_file` and `tls_key_file` (re-read when they change).
    Files,
}

impl TlsMode {
    pub fn as_str(self) -> &'static str {
        match self {
            TlsMode::Off => "off",
            TlsMode::SelfSigned => "self-signed",
            TlsMode::Files => "files",
        }
    }
}

impl Instances {
    pub fn as_str(self) -> &'static str {
        match self {
            Instances::PerUser => "per-user",
            Instances::Shared => "shared",
        }
    }
}

impl AuthMode {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMode::Proxy => "proxy",
            AuthMode::Opencode => "opencode",
            AuthMode::None => "none",
        }
    }
}

/// Durations in config are strings such as "10s", "500ms", "2m" (or plain seconds).
mod dur {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&crate::duration::display(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Secs(u64),
        }
        match Raw::deserialize(d)? {
            Raw::Text(t) => crate::duration::parse(&t).map_err(serde::de::Error::custom),
            Raw::Secs(s) => Ok(Duration::from_secs(s)),
        }
    }
}

/// Every setting, with its default. Field names are the keys of init.toml and, in capitals
/// behind `OCC_`, the environment variables.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// opencode's command and arguments; `--hostname` and `--port` are always appended.
    pub command: Vec<String>,
    /// The unprivileged user opencode runs as.
    pub service_user: String,
    /// opencode's working directory (default: ~service_user/workspace, else the home).
    pub workdir: Option<PathBuf>,
    /// Address opencode listens on inside the container.
    pub host: String,
    /// Port opencode listens on.
    pub port: u16,
    /// Where the service is reachable from outside, when the host declares it.
    pub bind_address: Option<String>,
    /// Launch even when exposed to the network with no authentication.
    pub allow_unauthenticated_network: bool,
    /// What checks passwords: `proxy` (occ-init's authenticating proxy), `opencode`, `none`.
    pub auth: AuthMode,
    /// opencode's port on 127.0.0.1 behind the proxy (0: a free port picked at boot).
    pub internal_port: u16,
    /// The unprivileged system user the proxy runs as (created at boot when missing).
    pub proxy_user: String,
    /// The proxy program (default: `occ-proxy` beside the occ-init executable).
    pub proxy_command: Option<PathBuf>,
    /// Unix socket on which PID 1 verifies passwords for the proxy (only its uid may connect).
    pub auth_socket: PathBuf,
    /// Answer `GET /global/health` without credentials (for load balancers).
    pub public_health: bool,
    /// A browser session ends after this long without a request.
    #[serde(with = "dur")]
    pub session_idle_timeout: Duration,
    /// A browser session ends this long after the login, used or not.
    #[serde(with = "dur")]
    pub session_max_age: Duration,
    /// opencode sits behind a trusted reverse proxy (shown in status).
    pub trust_proxy: bool,
    /// Origins besides the proxy's own whose pages may send state-changing requests and
    /// open terminals with a user's session (`https://ide.example.com`).
    pub trusted_origins: Vec<String>,
    /// Connections one client address (an IPv6 /64) may hold at the proxy at once, plain
    /// and upgraded alike; more get 503. Not applied with `trust_proxy` (all connections
    /// then come from the proxy in front).
    pub max_connections_per_client: u32,
    /// Connections the proxy serves at once in all; more get 503.
    pub max_connections: u32,
    /// `per-user` (one opencode per login user, as that user) or `shared` (one opencode as
    /// `service_user`). Unset: `per-user` with `auth = proxy`, else `shared`.
    pub instances: Option<Instances>,
    /// A user's opencode is stopped after this long without a request (and without a busy
    /// session or an open terminal); `0` never stops it.
    #[serde(with = "dur")]
    pub instance_idle_timeout: Duration,
    /// Most per-user opencode instances running at once.
    pub max_instances: u32,
    /// How long an API client's first request waits for its user's opencode to start.
    #[serde(with = "dur")]
    pub instance_start_timeout: Duration,
    /// HTTPS on the public port, served by the proxy: `off`, `self-signed` or `files`.
    pub tls: TlsMode,
    /// The certificate chain (PEM) with `tls = files`.
    pub tls_cert_file: Option<PathBuf>,
    /// Its private key (PEM: PKCS#8, RSA or EC), readable by root only.
    pub tls_key_file: Option<PathBuf>,
    /// Names of the self-signed certificate (default: the host name, localhost, 127.0.0.1,
    /// ::1).
    pub tls_names: Vec<String>,
    /// Where the self-signed certificate is kept (root only, on the users volume).
    pub tls_dir: PathBuf,
    /// Send Strict-Transport-Security over TLS.
    pub hsts: bool,
    /// Personal API tokens (hashes only, root-only); default `tokens.json` beside
    /// `users_file`.
    pub tokens_file: Option<PathBuf>,
    /// OpenID Connect sign-in at the proxy (docs/sso.md): the provider's issuer URL.
    pub oidc_issuer: Option<String>,
    pub oidc_client_id: Option<String>,
    /// The client secret, only ever from this file (root-only).
    pub oidc_client_secret_file: Option<PathBuf>,
    /// The button's label ("Sign in with …"); default: the issuer's host.
    pub oidc_provider_name: Option<String>,
    /// Where people reach the proxy; the redirect URI is `<public_url>/_occ/oidc/callback`.
    pub public_url: Option<String>,
    pub oidc_username_claim: String,
    pub oidc_groups_claim: String,
    /// Groups allowed to sign in (empty: everyone the provider authenticates).
    pub oidc_allowed_groups: Vec<String>,
    pub oidc_scopes: Vec<String>,
    /// Create a login user (with no usable password) at an identity's first sign-in.
    pub oidc_create_users: bool,
    /// Passwords at the login page and as HTTP Basic (off: OIDC and tokens only).
    pub password_login: bool,
    pub rate_limit_attempts: u32,
    pub rate_limit_window_seconds: u64,
    pub restart: RestartPolicy,
    #[serde(with = "dur")]
    pub restart_backoff_initial: Duration,
    #[serde(with = "dur")]
    pub restart_backoff_max: Duration,
    /// Running this long resets the backoff.
    #[serde(with = "dur")]
    pub restart_stable_after: Duration,
    /// This many exits within `crash_loop_window` is a crash loop.
    pub crash_loop_exits: u32,
    #[serde(with = "dur")]
    pub crash_loop_window: Duration,
    pub crash_loop_action: CrashLoopAction,
    /// Path of opencode's health endpoint (JSON `{"healthy":true}`).
    pub health_path: String,
    #[serde(with = "dur")]
    pub health_interval: Duration,
    #[serde(with = "dur")]
    pub health_timeout: Duration,
    /// Failed probes in a row that make a running opencode count as hung (then restarted).
    pub health_failures: u32,
    /// How long opencode may take to become ready before it is restarted.
    #[serde(with = "dur")]
    pub startup_timeout: Duration,
    /// TERM, then this long, then KILL.
    #[serde(with = "dur")]
    pub stop_grace: Duration,
    /// The users manifest.
    pub users_file: PathBuf,
    /// The admin API's unix socket.
    pub admin_socket: PathBuf,
    /// A file holding upstream opencode's server password (passed as OPENCODE_SERVER_PASSWORD).
    pub server_password_file: Option<PathBuf>,
    /// Extra environment for opencode.
    pub env: BTreeMap<String, String>,
    /// Names of occ-init's own environment variables passed on to opencode.
    pub pass_env: Vec<String>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            command: vec!["opencode".into(), "serve".into()],
            service_user: "opencoder".into(),
            workdir: None,
            host: "0.0.0.0".into(),
            port: 3000,
            bind_address: None,
            allow_unauthenticated_network: false,
            auth: AuthMode::Proxy,
            internal_port: 0,
            proxy_user: "occ-proxy".into(),
            proxy_command: None,
            auth_socket: PathBuf::from("/run/occ-proxy/auth.sock"),
            public_health: true,
            session_idle_timeout: Duration::from_secs(12 * 3600),
            session_max_age: Duration::from_secs(7 * 24 * 3600),
            trust_proxy: false,
            trusted_origins: Vec::new(),
            max_connections_per_client: 256,
            max_connections: 4096,
            instances: None,
            instance_idle_timeout: Duration::from_secs(3600),
            max_instances: 16,
            instance_start_timeout: Duration::from_secs(30),
            tls: TlsMode::Off,
            tls_cert_file: None,
            tls_key_file: None,
            tls_names: Vec::new(),
            tls_dir: PathBuf::from("/var/lib/occ/tls"),
            hsts: false,
            tokens_file: None,
            oidc_issuer: None,
            oidc_client_id: None,
            oidc_client_secret_file: None,
            oidc_provider_name: None,
            public_url: None,
            oidc_username_claim: "preferred_username".into(),
            oidc_groups_claim: "groups".into(),
            oidc_allowed_groups: Vec::new(),
            oidc_scopes: vec![
                "openid".into(),
                "profile".into(),
                "email".into(),
                "groups".into(),
            ],
            oidc_create_users: false,
            password_login: true,
            rate_limit_attempts: 5,
            rate_limit_window_seconds: 60,
            restart: RestartPolicy::Always,
            restart_backoff_initial: Duration::from_secs(1),
            restart_backoff_max: Duration::from_secs(60),
            restart_stable_after: Duration::from_secs(60),
            crash_loop_exits: 5,
            crash_loop_window: Duration::from_secs(120),
            crash_loop_action: CrashLoopAction::KeepTrying,
            health_path: "/global/health".into(),
            health_interval: Duration::from_secs(10),
            health_timeout: Duration::from_secs(2),
            health_failures: 3,
            startup_timeout: Duration::from_secs(60),
            stop_grace: Duration::from_secs(10),
            users_file: PathBuf::from(crate::users::DEFAULT_MANIFEST),
            admin_socket: PathBuf::from("/run/occ/admin.sock"),
            server_password_file: None,
            env: BTreeMap::new(),
            pass_env: Vec::new(),
        }
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("environment variable {name}: {message}")]
    Env { name: String, message: String },
    #[error("invalid setting {key}: {message}")]
    Invalid { key: &'static str, message: String },
}

/// Settings given as command-line flags (highest precedence).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub host: Option<String>,
    pub port: Option<u16>,
    pub bind_address: Option<String>,
    pub allow_unauthenticated_network: bool,
    pub users_file: Option<PathBuf>,
    pub stop_grace: Option<Duration>,
    pub admin_socket: Option<PathBuf>,
}

/// Every setting's key, for the `OCC_*` environment names.
const KEYS: &[&str] = &[
    "command",
    "service_user",
    "workdir",
    "host",
    "port",
    "bind_address",
    "allow_unauthenticated_network",
    "auth",
    "internal_port",
    "proxy_user",
    "proxy_command",
    "auth_socket",
    "public_health",
    "session_idle_timeout",
    "session_max_age",
    "trust_proxy",
    "trusted_origins",
    "max_connections_per_client",
    "max_connections",
    "instances",
    "instance_idle_timeout",
    "max_instances",
    "instance_start_timeout",
    "tls",
    "tls_cert_file",
    "tls_key_file",
    "tls_names",
    "tls_dir",
    "hsts",
    "tokens_file",
    "oidc_issuer",
    "oidc_client_id",
    "oidc_client_secret_file",
    "oidc_provider_name",
    "public_url",
    "oidc_username_claim",
    "oidc_groups_claim",
    "oidc_allowed_groups",
    "oidc_scopes",
    "oidc_create_users",
    "password_login",
    "rate_limit_attempts",
    "rate_limit_window_seconds",
    "restart",
    "restart_backoff_initial",
    "restart_backoff_max",
    "restart_stable_after",
    "crash_loop_exits",
    "crash_loop_window",
    "crash_loop_action",
    "health_path",
    "health_interval",
    "health_timeout",
    "health_failures",
    "startup_timeout",
    "stop_grace",
    "users_file",
    "admin_socket",
    "server_password_file",
    "env",
    "pass_env",
];

/// The environment name of a setting: `OCC_` + key in capitals.
pub fn env_name(key: &str) -> String {
    format!("OCC_{}", key.to_ascii_uppercase())
}

impl Config {
    /// Build from config file text (if any), an environment and flags.
    pub fn build(
        file: Option<(&str, &str)>,
        env: &BTreeMap<String, String>,
        flags: &Overrides,
    ) -> Result<Config, ConfigError> {
        let mut table = match file {
            Some((path, text)) => {
                let file_err = |e: toml::de::Error| ConfigError::File {
                    path: path.to_string(),
                    message: crate::manifest::toml_error(text, &e),
                };
                // Parse the file on its own first: its errors then carry line numbers.
                toml::from_str::<Config>(text).map_err(file_err)?;
                text.parse::<toml::Table>().map_err(file_err)?
            }
            None => toml::Table::new(),
        };
        // opencode-cloud's variables, below our own OCC_* ones.
        if let Some(h) = env.get("OPENCODE_HOST").filter(|v| !is_service_link(v)) {
            table.insert("host".into(), toml::Value::String(h.clone()));
        }
        if let Some((name, p)) = ["PORT", "OPENCODE_PORT"]
            .iter()
            .rev()
            .find_map(|n| env.get(*n).filter(|v| !is_service_link(v)).map(|v| (*n, v)))
        {
            table.insert("port".into(), env_value(name, "port", p)?);
        }
        for key in KEYS {
            let name = env_name(key);
            if let Some(raw) = env.get(&name).filter(|v| !is_service_link(v)) {
                table.insert(key.to_string(), env_value(&name, key, raw)?);
            }
        }
        let mut cfg: Config =
            toml::Value::Table(table)
                .try_into()
                .map_err(|e: toml::de::Error| ConfigError::File {
                    path: "environment".to_string(),
                    message: e.message().to_string(),
                })?;
        if let Some(h) = &flags.host {
            cfg.host = h.clone();
        }
        if let Some(p) = flags.port {
            cfg.port = p;
        }
        if let Some(b) = &flags.bind_address {
            cfg.bind_address = Some(b.clone());
        }
        if flags.allow_unauthenticated_network {
            cfg.allow_unauthenticated_network = true;
        }
        if let Some(u) = &flags.users_file {
            cfg.users_file = u.clone();
        }
        if let Some(g) = flags.stop_grace {
            cfg.stop_grace = g;
        }
        if let Some(s) = &flags.admin_socket {
            cfg.admin_socket = s.clone();
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// Load from the real file and process environment.
    pub fn load(path: Option<&Path>, flags: &Overrides) -> Result<Config, ConfigError> {
        let env: BTreeMap<String, String> = crate::config::utf8_env();
        let explicit = path
            .map(Path::to_path_buf)
            .or_else(|| env.get("OCC_CONFIG").map(PathBuf::from));
        let path = explicit
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG));
        let shown = path.display().to_string();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => Some(t),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && explicit.is_none() => None,
            Err(e) => {
                return Err(ConfigError::File {
                    path: shown,
                    message: e.to_string(),
                })
            }
        };
        Config::build(text.as_deref().map(|t| (shown.as_str(), t)), &env, flags)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key, message: String| Err(ConfigError::Invalid { key, message });
        if self.command.is_empty() || self.command[0].is_empty() {
            return bad("command", "must name a program".into());
        }
        if let Err(e) = crate::policy::parse_address(&self.host) {
            return bad("host", e.to_string());
        }
        if let Some(b) = &self.bind_address {
            if let Err(e) = crate::policy::parse_address(b) {
                return bad("bind_address", e.to_string());
            }
        }
        if self.port == 0 {
            return bad(
                "port",
                "must be 1-65535 (opencode's port 0 silently picks a random port)".into(),
            );
        }
        if crate::manifest::check_name(&self.service_user).is_err() {
            return bad(
                "service_user",
                format!("'{}' is not a valid user name", self.service_user),
            );
        }
        if crate::manifest::check_name(&self.proxy_user).is_err() {
            return bad(
                "proxy_user",
                format!("'{}' is not a valid user name", self.proxy_user),
            );
        }
        if self.auth == AuthMode::Proxy {
            if self.proxy_user == self.service_user || self.proxy_user == "root" {
                return bad(
                    "proxy_user",
                    "must be a user of its own (not root, not the service user)".into(),
                );
            }
            if self.internal_port != 0 && self.internal_port == self.port {
                return bad(
                    "internal_port",
                    "must differ from port (the proxy listens there)".into(),
                );
            }
        }
        if self.session_idle_timeout.is_zero() || self.session_max_age.is_zero() {
            return bad(
                "session_idle_timeout",
                "session_idle_timeout and session_max_age must be above zero".into(),
            );
        }
        for o in &self.trusted_origins {
            if crate::proxy::origin::normalize(o).is_none() {
                return bad(
                    "trusted_origins",
                    format!("'{o}' is not an origin (scheme://host[:port], no path)"),
                );
            }
        }
        if self.max_connections_per_client == 0 || self.max_connections == 0 {
            return bad(
                "max_connections_per_client",
                "max_connections and max_connections_per_client must be at least 1".into(),
            );
        }
        if self.instances == Some(Instances::PerUser) && self.auth != AuthMode::Proxy {
            return bad(
                "instances",
                format!(
                    "per-user needs auth = proxy (with auth = {} nothing knows which user is asking); use shared",
                    self.auth.as_str()
                ),
            );
        }
        if self.max_instances == 0 {
            return bad("max_instances", "must be at least 1".into());
        }
        if self.instance_start_timeout.is_zero() {
            return bad("instance_start_timeout", "must be above zero".into());
        }
        if self.tls != TlsMode::Off && self.auth != AuthMode::Proxy {
            return bad(
                "tls",
                format!(
                    "{} needs auth = proxy (occ-init's proxy serves HTTPS; with auth = {} opencode holds the port)",
                    self.tls.as_str(),
                    self.auth.as_str()
                ),
            );
        }
        match (self.tls, &self.tls_cert_file, &self.tls_key_file) {
            (TlsMode::Files, None, _) => {
                return bad(
                    "tls_cert_file",
                    "tls = files needs tls_cert_file and tls_key_file".into(),
                )
            }
            (TlsMode::Files, _, None) => {
                return bad(
                    "tls_key_file",
                    "tls = files needs tls_cert_file and tls_key_file".into(),
                )
            }
            _ => {}
        }
        for n in &self.tls_names {
            let ok = !n.is_empty()
                && n.len() <= 253
                && (n.parse::<std::net::IpAddr>().is_ok()
                    || n.split('.').all(|l| {
                        !l.is_empty()
                            && l.len() <= 63
                            && (l == "*"
                                || l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
                    }));
            if !ok {
                return bad(
                    "tls_names",
                    format!("'{n}' is not a host name or an IP address"),
                );
            }
        }
        if !self.tls_dir.is_absolute() {
            return bad("tls_dir", "must be an absolute path".into());
        }
        self.validate_oidc()?;
        if !self.health_path.starts_with('/') {
            return bad("health_path", "must start with /".into());
        }
        if self.restart_backoff_initial > self.restart_backoff_max {
            return bad(
                "restart_backoff_initial",
                "is larger than restart_backoff_max".into(),
            );
        }
        if self.health_failures == 0 || self.crash_loop_exits == 0 || self.rate_limit_attempts == 0
        {
            return bad("health_failures", "counts must be at least 1".into());
        }
        // Deadlines are computed as now + duration: keep them far from overflow.
        let year = Duration::from_secs(365 * 24 * 3600);
        for (key, d) in [
            ("restart_backoff_initial", self.restart_backoff_initial),
            ("restart_backoff_max", self.restart_backoff_max),
            ("restart_stable_after", self.restart_stable_after),
            ("crash_loop_window", self.crash_loop_window),
            ("health_interval", self.health_interval),
            ("health_timeout", self.health_timeout),
            ("startup_timeout", self.startup_timeout),
            ("stop_grace", self.stop_grace),
            ("session_idle_timeout", self.session_idle_timeout),
            ("session_max_age", self.session_max_age),
            ("instance_idle_timeout", self.instance_idle_timeout),
            ("instance_start_timeout", self.instance_start_timeout),
        ] {
            if d > year {
                return bad(key, "must be at most a year".into());
            }
        }
        if self.health_timeout.is_zero() || self.health_interval.is_zero() {
            return bad(
                "health_interval",
                "health_interval and health_timeout must be above zero".into(),
            );
        }
        if self.rate_limit_window_seconds > 365 * 24 * 3600 {
            return bad("rate_limit_window_seconds", "must be at most a year".into());
        }
        Ok(())
    }

    /// The instance layout in effect: as set, else `per-user` behind the proxy.
    pub fn layout(&self) -> Instances {
        match (self.instances, self.auth) {
            (Some(i), _) => i,
            (None, AuthMode::Proxy) => Instances::PerUser,
            (None, _) => Instances::Shared,
        }
    }

    /// One opencode per user?
    pub fn per_user(&self) -> bool {
        self.layout() == Instances::PerUser
    }

    /// Address and port opencode itself listens on: 127.0.0.1 and `port` (the internal
    /// one, filled in at boot) behind the proxy, else `host`:`port`.
    pub fn opencode_listen(&self, internal_port: u16) -> (String, u16) {
        match self.auth {
            AuthMode::Proxy => ("127.0.0.1".into(), internal_port),
            _ => (self.host.clone(), self.port),
        }
    }

    /// The address exposure is judged on (see [`crate::policy::exposure_address`]).
    pub fn exposure_address(&self) -> &str {
        crate::policy::exposure_address(self.bind_address.as_deref(), &self.host)
    }

    /// Where the proxy's certificate comes from (`None`: plain HTTP). `hostname` fills in
    /// the default names of a self-signed certificate.
    pub fn tls_source(&self, hostname: Option<&str>) -> Option<crate::tls::Source> {
        use crate::tls::Source;
        match (self.tls, &self.tls_cert_file, &self.tls_key_file) {
            (TlsMode::Off, ..) => None,
            (TlsMode::Files, Some(cert), Some(key)) => Some(Source::Files {
                cert: cert.clone(),
                key: key.clone(),
            }),
            // validate() refuses files without both paths.
            (TlsMode::Files, ..) => None,
            (TlsMode::SelfSigned, ..) => Some(Source::SelfSigned {
                dir: self.tls_dir.clone(),
                names: if self.tls_names.is_empty() {
                    crate::tls::default_names(hostname)
                } else {
                    self.tls_names.clone()
                },
                explicit: !self.tls_names.is_empty(),
            }),
        }
    }

    /// The OIDC settings hang together: an issuer needs a client id, a secret file and the
    /// public URL; URLs are https (http only on loopback); `password_login = false` needs OIDC.
    fn validate_oidc(&self) -> Result<(), ConfigError> {
        let bad = |key, message: String| Err(ConfigError::Invalid { key, message });
        let Some(issuer) = &self.oidc_issuer else {
            if !self.password_login {
                return bad(
                    "password_login",
                    "false needs oidc_issuer (else nobody could sign in)".into(),
                );
            }
            return Ok(());
        };
        if let Err(e) = crate::oidc_url::check(issuer) {
            return bad("oidc_issuer", e);
        }
        if self.auth != AuthMode::Proxy {
            return bad(
                "oidc_issuer",
                "OpenID Connect sign-in needs auth = proxy".into(),
            );
        }
        if self.oidc_client_id.as_deref().is_none_or(str::is_empty) {
            return bad("oidc_client_id", "is needed with oidc_issuer".into());
        }
        if self.oidc_client_secret_file.is_none() {
            return bad(
                "oidc_client_secret_file",
                "is needed with oidc_issuer (the secret is only ever read from a file)".into(),
            );
        }
        match &self.public_url {
            None => return bad(
                "public_url",
                "is needed with oidc_issuer (the redirect URI is <public_url>/_occ/oidc/callback)"
                    .into(),
            ),
            Some(u) => {
                if let Err(e) = crate::oidc_url::check(u) {
                    return bad("public_url", e);
                }
            }
        }
        if !self.oidc_scopes.iter().any(|s| s == "openid") {
            return bad("oidc_scopes", "must include openid".into());
        }
        for (key, v) in [
            ("oidc_username_claim", &self.oidc_username_claim),
            ("oidc_groups_claim", &self.oidc_groups_claim),
        ] {
            if v.is_empty() || v.len() > 64 || v.contains(char::is_whitespace) {
                return bad(key, format!("'{v}' is not a claim name"));
            }
        }
        Ok(())
    }

    /// Where the personal API tokens are kept.
    pub fn tokens_path(&self) -> PathBuf {
        self.tokens_file
            .clone()
            .unwrap_or_else(|| crate::tokens::default_path(&self.users_file))
    }

    /// True when opencode would be reachable from the network.
    pub fn exposed(&self) -> bool {
        crate::policy::parse_address(self.exposure_address())
            .map(|a| crate::policy::is_exposed(&a))
            .unwrap_or(true)
    }

    /// The effective settings as TOML, for `occ-init check` (holds no secret: the server
    /// password is only ever referenced by file path).
    pub fn render(&self) -> String {
        toml::to_string(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

/// The process environment as text. Variables whose name or value is not UTF-8 are skipped
/// (with a warning naming them lossily), never a panic.
pub fn utf8_env() -> BTreeMap<String, String> {
    std::env::vars_os()
        .filter_map(|(k, v)| match (k.into_string(), v.into_string()) {
            (Ok(k), Ok(v)) => Some((k, v)),
            (k, _) => {
                let name = match k {
                    Ok(k) => k,
                    Err(k) => k.to_string_lossy().into_owned(),
                };
                log::warn!("ignoring environment variable {name}: not UTF-8");
                None
            }
        })
        .collect()
}

/// A Kubernetes service link (`OPENCODE_PORT=tcp://10.96.0.12:3000`, injected for a Service
/// named `opencode` or `occ`): not a setting, ignored with a warning.
fn is_service_link(value: &str) -> bool {
    let link = ["tcp://", "udp://", "sctp://"]
        .iter()
        .any(|p| value.trim().starts_with(p));
    if link {
        log::warn!(
            "ignoring '{value}' in the environment: a Kubernetes service link, not a setting (set enableServiceLinks: false)"
        );
    }
    link
}

/// Convert an environment variable's text into the TOML value its key expects.
fn env_value(name: &str, key: &str, raw: &str) -> Result<toml::Value, ConfigError> {
    let err = |message: String| ConfigError::Env {
        name: name.to_string(),
        message,
    };
    Ok(match key {
        "port"
        | "internal_port"
        | "rate_limit_attempts"
        | "rate_limit_window_seconds"
        | "crash_loop_exits"
        | "max_connections_per_client"
        | "max_connections"
        | "max_instances"
        | "health_failures" => toml::Value::Integer(
            raw.trim()
                .parse::<i64>()
                .map_err(|_| err(format!("'{raw}' is not a number")))?,
        ),
        "allow_unauthenticated_network"
        | "trust_proxy"
        | "public_health"
        | "hsts"
        | "oidc_create_users"
        | "password_login" => {
            toml::Value::Boolean(match raw.trim().to_ascii_lowercase().as_str() {
                "1" | "true" | "yes" | "on" => true,
                "0" | "false" | "no" | "off" | "" => false,
                _ => return Err(err(format!("'{raw}' is not true/false"))),
            })
        }
        "command"
        | "pass_env"
        | "trusted_origins"
        | "tls_names"
        | "oidc_allowed_groups"
        | "oidc_scopes" => toml::Value::Array(
            raw.split(if key == "command" || key == "oidc_scopes" {
                ' '
            } else {
                ','
            })
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| toml::Value::String(s.to_string()))
            .collect(),
        ),
        "env" => {
            let mut t = toml::Table::new();
            for pair in raw
                .split([',', '\n'])
                .map(str::trim)
                .filter(|s| !s.is_empty())
            {
                let (k, v) = pair
                    .split_once('=')
                    .ok_or_else(|| err(format!("'{pair}' is not NAME=VALUE")))?;
                t.insert(k.trim().to_string(), toml::Value::String(v.to_string()));
            }
            toml::Value::Table(t)
        }
        _ => toml::Value::String(raw.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn tls_settings_from_file_and_environment() {
        let c = Config::build(None, &env(&[]), &Overrides::default()).unwrap();
        assert_eq!(c.tls, TlsMode::Off);
        assert!(c.tls_source(Some("h")).is_none());
        let c = Config::build(
            None,
            &env(&[
                ("OCC_TLS", "self-signed"),
                ("OCC_TLS_NAMES", "ide.example.com, 10.0.0.5"),
            ]),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(
            c.tls_source(Some("h")),
            Some(crate::tls::Source::SelfSigned {
                dir: PathBuf::from("/var/lib/occ/tls"),
                names: vec!["ide.example.com".into(), "10.0.0.5".into()],
                explicit: true
            })
        );
        let c = Config::build(
            Some(("f", "tls = 'self-signed'\nhsts = true\n")),
            &env(&[]),
            &Overrides::default(),
        )
        .unwrap();
        assert!(c.hsts);
        match c.tls_source(Some("box")) {
            Some(crate::tls::Source::SelfSigned {
                names, explicit, ..
            }) => {
                assert_eq!(names, ["box", "localhost", "127.0.0.1", "::1"]);
                assert!(!explicit);
            }
            other => panic!("{other:?}"),
        }
        let files = env(&[
            ("OCC_TLS", "files"),
            ("OCC_TLS_CERT_FILE", "/c.pem"),
            ("OCC_TLS_KEY_FILE", "/k.pem"),
        ]);
        let c = Config::build(None, &files, &Overrides::default()).unwrap();
        assert_eq!(
            c.tls_source(None),
            Some(crate::tls::Source::Files {
                cert: "/c.pem".into(),
                key: "/k.pem".into()
            })
        );
    }

    #[test]
    fn bad_tls_settings_are_refused_clearly() {
        for (pairs, want) in [
            (vec![("OCC_TLS", "maybe")], "maybe"),
            (vec![("OCC_TLS", "files")], "tls_cert_file"),
            (
                vec![("OCC_TLS", "files"), ("OCC_TLS_CERT_FILE", "/c")],
                "tls_key_file",
            ),
            (
                vec![("OCC_TLS", "self-signed"), ("OCC_TLS_NAMES", "a b")],
                "'a b' is not a host name",
            ),
            (
                vec![("OCC_TLS", "self-signed"), ("OCC_AUTH", "none")],
                "needs auth = proxy",
            ),
            (vec![("OCC_TLS_DIR", "rel/dir")], "absolute"),
            (vec![("OCC_HSTS", "sometimes")], "not true/false"),
        ] {
            let e = Config::build(None, &env(&pairs), &Overrides::default())
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{pairs:?}: {e}");
        }
    }

    #[test]
    fn oidc_settings_hang_together() {
        let ok = [
            ("OCC_OIDC_ISSUER", "https://idp.example/realms/main"),
            ("OCC_OIDC_CLIENT_ID", "opencode"),
            ("OCC_OIDC_CLIENT_SECRET_FILE", "/etc/occ/oidc-secret"),
            ("OCC_PUBLIC_URL", "https://ide.example"),
            ("OCC_OIDC_ALLOWED_GROUPS", "devs, ops"),
            ("OCC_OIDC_SCOPES", "openid profile groups"),
        ];
        let c = Config::build(None, &env(&ok), &Overrides::default()).unwrap();
        assert_eq!(c.oidc_allowed_groups, ["devs", "ops"]);
        assert_eq!(c.oidc_scopes, ["openid", "profile", "groups"]);
        assert!(c.password_login && !c.oidc_create_users);
        for (drop, add, want) in [
            ("OCC_OIDC_CLIENT_ID", None, "oidc_client_id"),
            (
                "OCC_OIDC_CLIENT_SECRET_FILE",
                None,
                "oidc_client_secret_file",
            ),
            ("OCC_PUBLIC_URL", None, "public_url"),
            (
                "",
                Some(("OCC_OIDC_ISSUER", "http://idp.example")),
                "loopback",
            ),
            ("", Some(("OCC_PUBLIC_URL", "ide.example")), "not a URL"),
            ("", Some(("OCC_OIDC_SCOPES", "profile")), "openid"),
            ("", Some(("OCC_AUTH", "none")), "auth = proxy"),
            ("", Some(("OCC_OIDC_USERNAME_CLAIM", "a b")), "claim"),
        ] {
            let mut e: Vec<(&str, &str)> = ok.iter().copied().filter(|(k, _)| *k != drop).collect();
            if let Some((k, v)) = add {
                e.retain(|(x, _)| *x != k);
                e.push((k, v));
            }
            let err = Config::build(None, &env(&e), &Overrides::default())
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{drop} {add:?}: {err}");
        }
        let e = Config::build(
            None,
            &env(&[("OCC_PASSWORD_LOGIN", "false")]),
            &Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("needs oidc_issuer"), "{e}");
        // Loopback http is allowed (a provider on this machine).
        let mut local = ok.to_vec();
        local.retain(|(k, _)| *k != "OCC_OIDC_ISSUER");
        local.push(("OCC_OIDC_ISSUER", "http://127.0.0.1:4000"));
        assert!(Config::build(None, &env(&local), &Overrides::default()).is_ok());
    }

    #[test]
    fn defaults_match_opencode_cloud() {
        let c = Config::build(None, &env(&[]), &Overrides::default()).unwrap();
        assert_eq!(c, Config::default());
        assert_eq!((c.host.as_str(), c.port), ("0.0.0.0", 3000));
        assert_eq!(c.command, vec!["opencode", "serve"]);
        assert!(c.exposed());
    }

    #[test]
    fn precedence_defaults_file_env_flags() {
        let file = "port = 4000\nhost = '127.0.0.1'\nstop_grace = '3s'\ntrust_proxy = true\n";
        let c = Config::build(Some(("init.toml", file)), &env(&[]), &Overrides::default()).unwrap();
        assert_eq!(
            (c.port, c.host.as_str(), c.stop_grace),
            (4000, "127.0.0.1", Duration::from_secs(3))
        );
        assert!(c.trust_proxy);
        let e = env(&[("OCC_PORT", "5000"), ("OCC_STOP_GRACE", "500ms")]);
        let c = Config::build(Some(("init.toml", file)), &e, &Overrides::default()).unwrap();
        assert_eq!((c.port, c.stop_grace), (5000, Duration::from_millis(500)));
        let flags = Overrides {
            port: Some(6000),
            ..Default::default()
        };
        let c = Config::build(Some(("init.toml", file)), &e, &flags).unwrap();
        assert_eq!(c.port, 6000);
    }

    #[test]
    fn honours_opencode_cloud_variables_below_occ_ones() {
        let c = Config::build(None, &env(&[("PORT", "8080")]), &Overrides::default()).unwrap();
        assert_eq!(c.port, 8080);
        let c = Config::build(
            None,
            &env(&[("PORT", "8080"), ("OPENCODE_PORT", "9090")]),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(c.port, 9090);
        let c = Config::build(
            None,
            &env(&[("OPENCODE_PORT", "9090"), ("OCC_PORT", "7070")]),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(c.port, 7070);
        let c = Config::build(
            None,
            &env(&[("OPENCODE_HOST", "127.0.0.1")]),
            &Overrides::default(),
        )
        .unwrap();
        assert!(!c.exposed());
        let c = Config::build(
            None,
            &env(&[("OPENCODE_HOST", "127.0.0.1"), ("OCC_HOST", "::")]),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(c.host, "::");
    }

    #[test]
    fn kubernetes_service_links_are_ignored_not_fatal() {
        let c = Config::build(
            None,
            &env(&[
                ("OPENCODE_PORT", "tcp://10.96.0.12:3000"),
                ("OCC_PORT", "tcp://10.96.0.13:3000"),
                ("OCC_HOST", "tcp://10.96.0.13"),
            ]),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!((c.host.as_str(), c.port), ("0.0.0.0", 3000));
        // A real value next to a link still counts.
        let c = Config::build(
            None,
            &env(&[("OPENCODE_PORT", "tcp://10.96.0.12:3000"), ("PORT", "4000")]),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(c.port, 4000, "a link is skipped: PORT, below it, counts");
    }

    #[test]
    fn auth_settings_parse_and_validate() {
        let c = Config::build(
            None,
            &env(&[
                ("OCC_AUTH", "none"),
                ("OCC_PUBLIC_HEALTH", "false"),
                ("OCC_INTERNAL_PORT", "4096"),
                ("OCC_SESSION_MAX_AGE", "1d"),
            ]),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(c.auth, AuthMode::None);
        assert!(!c.public_health);
        assert_eq!(c.internal_port, 4096);
        assert_eq!(c.session_max_age, Duration::from_secs(86400));
        assert_eq!(c.opencode_listen(4096), ("0.0.0.0".to_string(), 3000));
        let d = Config::default();
        assert_eq!(d.auth, AuthMode::Proxy);
        assert_eq!(d.opencode_listen(4567), ("127.0.0.1".to_string(), 4567));
        for (pairs, key) in [
            (vec![("OCC_AUTH", "pam")], "environment"),
            (vec![("OCC_PROXY_USER", "opencoder")], "proxy_user"),
            (vec![("OCC_PROXY_USER", "root")], "proxy_user"),
            (vec![("OCC_INTERNAL_PORT", "3000")], "internal_port"),
            (
                vec![("OCC_SESSION_IDLE_TIMEOUT", "0")],
                "session_idle_timeout",
            ),
        ] {
            let e = Config::build(None, &env(&pairs), &Overrides::default()).unwrap_err();
            assert!(e.to_string().contains(key), "{pairs:?}: {e}");
        }
    }

    #[test]
    fn env_forms_of_every_kind() {
        let e = env(&[
            ("OCC_ALLOW_UNAUTHENTICATED_NETWORK", "true"),
            ("OCC_COMMAND", "opencode web"),
            ("OCC_PASS_ENV", "ANTHROPIC_API_KEY, OPENAI_API_KEY"),
            ("OCC_ENV", "A=1,B=two=2"),
            ("OCC_RESTART", "on-failure"),
            ("OCC_CRASH_LOOP_ACTION", "exit"),
            ("OCC_BIND_ADDRESS", "[::1]"),
        ]);
        let c = Config::build(None, &e, &Overrides::default()).unwrap();
        assert!(c.allow_unauthenticated_network);
        assert_eq!(c.command, vec!["opencode", "web"]);
        assert_eq!(c.pass_env, vec!["ANTHROPIC_API_KEY", "OPENAI_API_KEY"]);
        assert_eq!(c.env["B"], "two=2");
        assert_eq!(c.restart, RestartPolicy::OnFailure);
        assert_eq!(c.crash_loop_action, CrashLoopAction::Exit);
        assert!(
            !c.exposed(),
            "bind address 127.0.0.1-like wins over host 0.0.0.0"
        );
    }

    #[test]
    fn per_user_is_the_default_behind_the_proxy_and_needs_it() {
        let c = Config::build(None, &env(&[]), &Overrides::default()).unwrap();
        assert_eq!(c.layout(), Instances::PerUser);
        let c = Config::build(
            None,
            &env(&[("OCC_AUTH", "opencode")]),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(
            c.layout(),
            Instances::Shared,
            "only the proxy knows who asks"
        );
        let c = Config::build(
            None,
            &env(&[("OCC_INSTANCES", "shared")]),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(c.layout(), Instances::Shared);
        let e = Config::build(
            None,
            &env(&[("OCC_INSTANCES", "per-user"), ("OCC_AUTH", "none")]),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("per-user needs auth = proxy"), "{e}");
        let c = Config::build(
            None,
            &env(&[
                ("OCC_MAX_INSTANCES", "3"),
                ("OCC_INSTANCE_IDLE_TIMEOUT", "0"),
                ("OCC_INSTANCE_START_TIMEOUT", "5s"),
            ]),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(c.max_instances, 3);
        assert!(c.instance_idle_timeout.is_zero());
        assert_eq!(c.instance_start_timeout, Duration::from_secs(5));
        for bad in [("OCC_MAX_INSTANCES", "0"), ("OCC_INSTANCES", "per-group")] {
            assert!(
                Config::build(None, &env(&[bad]), &Overrides::default()).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn every_key_has_an_env_form() {
        let rendered: toml::Table = Config {
            workdir: Some("/w".into()),
            bind_address: Some("::1".into()),
            server_password_file: Some("/p".into()),
            proxy_command: Some("/usr/local/bin/occ-proxy".into()),
            instances: Some(Instances::Shared),
            tls_cert_file: Some("/c".into()),
            tls_key_file: Some("/k".into()),
            tokens_file: Some("/t".into()),
            oidc_issuer: Some("https://idp.example".into()),
            oidc_client_id: Some("occ".into()),
            oidc_client_secret_file: Some("/s".into()),
            oidc_provider_name: Some("IdP".into()),
            public_url: Some("https://ide.example".into()),
            ..Config::default()
        }
        .render()
        .parse()
        .unwrap();
        let mut keys: Vec<&str> = rendered.keys().map(String::as_str).collect();
        keys.sort();
        let mut known = KEYS.to_vec();
        known.sort();
        assert_eq!(keys, known);
    }

    #[test]
    fn errors_are_clear() {
        type Case<'a> = (Option<&'a str>, &'a [(&'a str, &'a str)], &'a str);
        let cases: &[Case] = &[
            (
                Some("prot = 1\n"),
                &[],
                "init.toml: line 1: unknown field `prot`",
            ),
            (Some("\n\nport = 'x'\n"), &[], "init.toml: line 3"),
            (Some("port = [\n"), &[], "init.toml: line 2: invalid array"),
            (
                None,
                &[("OCC_PORT", "abc")],
                "OCC_PORT: 'abc' is not a number",
            ),
            (
                None,
                &[("OCC_TRUST_PROXY", "maybe")],
                "OCC_TRUST_PROXY: 'maybe' is not true/false",
            ),
            (None, &[("OCC_HOST", "example.com")], "invalid setting host"),
            (None, &[("OCC_PORT", "0")], "random port"),
            (None, &[("OCC_PORT", "70000")], "environment"),
            (None, &[("OCC_STOP_GRACE", "10 parsecs")], "unknown unit"),
            (None, &[("OCC_RESTART", "sometimes")], "unknown variant"),
            (None, &[("OCC_SERVICE_USER", "Bad User")], "service_user"),
            (None, &[("OCC_ENV", "novalue")], "not NAME=VALUE"),
            (
                Some("stop_grace = 9223372036854775807\n"),
                &[],
                "stop_grace: must be at most a year",
            ),
            (None, &[("OCC_HEALTH_TIMEOUT", "0")], "above zero"),
        ];
        for (file, e, want) in cases {
            let err = Config::build(
                file.map(|f| ("init.toml", f)),
                &env(e),
                &Overrides::default(),
            )
            .expect_err(want)
            .to_string();
            assert!(err.contains(want), "got {err:?}, want {want:?}");
        }
    }

    #[test]
    fn render_round_trips() {
        let c = Config {
            port: 1234,
            env: [("K".to_string(), "V".to_string())].into(),
            ..Config::default()
        };
        let back =
            Config::build(Some(("x", &c.render())), &env(&[]), &Overrides::default()).unwrap();
        assert_eq!(back, c);
    }
}

#[cfg(test)]
mod rootfs_tests {
    use super::*;

    /// The shipped rootfs/etc/occ/init.toml parses and equals the built-in defaults, and
    /// mentions every setting (commented or not).
    #[test]
    fn shipped_config_is_the_defaults_and_documents_every_key() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/rootfs/etc/occ/init.toml");
        let text = std::fs::read_to_string(path).unwrap();
        let cfg =
            Config::build(Some((path, &text)), &BTreeMap::new(), &Overrides::default()).unwrap();
        assert_eq!(cfg, Config::default());
        for key in KEYS {
            assert!(
                text.lines().any(|l| l
                    .trim_start_matches(['#', ' '])
                    .starts_with(&format!("{key} ="))
                    || (*key == "env" && l.trim() == "[env]")),
                "{key} is not documented in {path}"
            );
        }
    }
}
