//! occ-init's authenticating reverse proxy (binary `occ-proxy`): the pure decisions here
//! (what a request needs, forms, cookies, Basic credentials, sessions, pages) and the
//! hyper/tokio server in [`server`]. It runs as its own unprivileged process; PID 1 checks
//! the passwords.

pub mod auth;
pub mod conn;
pub mod flight;
pub mod instances;
pub mod oidc;
pub mod origin;
pub mod pages;
pub mod request;
pub mod server;
pub mod session;
pub mod tls;
pub mod upstream;

/// The cookie that carries a browser session.
pub const SESSION_COOKIE: &str = "occ_session";
/// The same over TLS: only a secure origin can set a `__Host-` cookie, for the whole host.
pub const SECURE_SESSION_COOKIE: &str = "__Host-occ_session";
/// The proxy's own paths live under this prefix.
pub const PREFIX: &str = "/_occ/";

use std::net::SocketAddr;
use std::os::fd::FromRawFd;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Parser;

/// Command line of `occ-proxy` (PID 1 fills it in; nothing on it is secret).
#[derive(Debug, Parser)]
#[command(
    name = "occ-proxy",
    version = crate::version::SHORT,
    about = "occ-init's authenticating reverse proxy: every request needs the login of a \
             container user (checked by occ-init, PID 1); relays to opencode on 127.0.0.1"
)]
pub struct Args {
    /// Serve the listening TCP socket inherited as this file descriptor (how PID 1 starts
    /// it; repeated for each address family PID 1 holds).
    #[arg(long, value_name = "FD", conflicts_with = "listen")]
    pub listen_fd: Vec<i32>,
    /// Answer PID 1's health probe on the unix listening socket inherited as this fd.
    #[arg(long, value_name = "FD")]
    pub health_fd: Option<i32>,
    /// Bind this address instead (running it by hand).
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<SocketAddr>,
    /// The shared opencode's address (PID 1 says where each opencode listens; without
    /// --upstream and without a word from PID 1 nothing is relayed).
    #[arg(long, value_name = "ADDR:PORT")]
    pub upstream: Option<SocketAddr>,
    /// How long an API client's first request waits for its user's opencode to start
    /// (per-user instances); then 503 with Retry-After.
    #[arg(long, default_value = "30s", value_parser = crate::duration::parse)]
    pub instance_start_timeout: std::time::Duration,
    /// PID 1's auth socket.
    #[arg(long, value_name = "PATH", default_value = "/run/occ-proxy/auth.sock")]
    pub auth_socket: PathBuf,
    /// Answer GET /global/health without a login.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub public_health: bool,
    /// Believe X-Forwarded-For / X-Forwarded-Proto from the client (a trusted proxy in front).
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub trust_proxy: bool,
    /// A browser session ends after this long without a request.
    #[arg(long, default_value = "12h", value_parser = crate::duration::parse)]
    pub session_idle: std::time::Duration,
    /// A browser session ends this long after the login.
    #[arg(long, default_value = "7d", value_parser = crate::duration::parse)]
    pub session_max_age: std::time::Duration,
    /// Connections served at once; more get 503.
    #[arg(long, default_value_t = 4096)]
    pub max_connections: usize,
    /// Connections one client address (an IPv6 /64) may hold; more get 503. Not applied
    /// with --trust-proxy true.
    #[arg(long, default_value_t = 256)]
    pub max_connections_per_client: usize,
    /// An origin besides the proxy's own allowed to send requests with a user's
    /// credentials (repeatable).
    #[arg(long, value_name = "ORIGIN")]
    pub trusted_origin: Vec<String>,
    /// Serve HTTPS with the certificates PID 1 sends on this inherited socket (a sealed
    /// memfd per certificate; each replaces the last). Plain HTTP then gets a redirect.
    #[arg(long, value_name = "FD")]
    pub tls_fd: Option<i32>,
    /// Send Strict-Transport-Security over TLS.
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub hsts: bool,
    /// Offer single sign-on with this OpenID provider (its client secret comes from PID 1).
    #[arg(long, value_name = "URL", requires_all = ["oidc_client_id", "public_url"])]
    pub oidc_issuer: Option<String>,
    #[arg(long, value_name = "ID")]
    pub oidc_client_id: Option<String>,
    /// Where people reach the proxy (the redirect URI is <public_url>/_occ/oidc/callback).
    #[arg(long, value_name = "URL")]
    pub public_url: Option<String>,
    /// The button's label.
    #[arg(long, value_name = "NAME")]
    pub oidc_provider_name: Option<String>,
    /// A scope to ask for (repeatable).
    #[arg(long = "oidc-scope", value_name = "SCOPE")]
    pub oidc_scopes: Vec<String>,
    #[arg(long, default_value = "preferred_username")]
    pub oidc_username_claim: String,
    #[arg(long, default_value = "groups")]
    pub oidc_groups_claim: String,
    /// Offer the password form (false: single sign-on and tokens only).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub password_login: bool,
}

/// Raise the soft open-files limit to the hard one (many idle connections).
fn raise_nofile() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain get/setrlimit on our own process with a valid struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// Entry point of the `occ-proxy` binary.
pub fn main() -> i32 {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            let code = if e.use_stderr() { crate::EXIT_USAGE } else { 0 };
            let _ = e.print();
            return code;
        }
    };
    crate::logging::init_named("occ-proxy");
    if nix::unistd::geteuid().is_root() {
        log::error!("refusing to run as root: the proxy faces the network (occ-init starts it as its own user)");
        return 1;
    }
    raise_nofile();
    // It holds the TLS key in memory: no core dumps, and /proc/PID/mem and friends closed to
    // other processes of its own uid.
    crate::init::protect_memory();
    // SAFETY: setrlimit on our own process with a valid struct.
    unsafe {
        let none = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        libc::setrlimit(libc::RLIMIT_CORE, &none);
    }
    let mut trusted = Vec::new();
    for o in &args.trusted_origin {
        match origin::normalize(o) {
            Some(n) => trusted.push(n),
            None => {
                log::error!("--trusted-origin {o:?} is not an origin (scheme://host[:port])");
                return crate::EXIT_USAGE;
            }
        }
    }
    let settings = server::Settings {
        upstream: args.upstream,
        auth_socket: args.auth_socket,
        public_health: args.public_health,
        trust_proxy: args.trust_proxy,
        session_idle: args.session_idle,
        session_max_age: args.session_max_age,
        max_connections: args.max_connections.max(1),
        max_connections_per_client: args.max_connections_per_client.max(1),
        trusted_origins: trusted,
        instance_start_timeout: args.instance_start_timeout,
        tls: false,
        hsts: args.hsts,
    };
    let mut proxy = server::Proxy::new(settings);
    if let (Some(issuer), Some(client_id), Some(public_url)) =
        (&args.oidc_issuer, &args.oidc_client_id, &args.public_url)
    {
        for (what, url) in [("--oidc-issuer", issuer), ("--public-url", public_url)] {
            if let Err(e) = crate::oidc_url::check(url) {
                log::error!("{what}: {e}");
                return crate::EXIT_USAGE;
            }
        }
        let name = args.oidc_provider_name.clone().unwrap_or_else(|| {
            issuer
                .split("://")
                .nth(1)
                .and_then(|r| r.split('/').next())
                .unwrap_or(issuer)
                .to_string()
        });
        let scopes = if args.oidc_scopes.is_empty() {
            vec![
                "openid".into(),
                "profile".into(),
                "email".into(),
                "groups".into(),
            ]
        } else {
            args.oidc_scopes.clone()
        };
        proxy = proxy.with_oidc(oidc::OidcSettings {
            issuer: issuer.clone(),
            client_id: client_id.clone(),
            redirect_uri: format!("{}/_occ/oidc/callback", public_url.trim_end_matches('/')),
            scopes,
            username_claim: args.oidc_username_claim.clone(),
            groups_claim: args.oidc_groups_claim.clone(),
            provider_name: name,
            password_login: args.password_login,
        });
    }
    if let Some(fd) = args.tls_fd {
        // SAFETY: PID 1 passes its certificate socket at this descriptor, owned by nobody
        // else here.
        let channel = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        let certs = Arc::new(tls::Certs::default());
        if let Err(e) = tls::receive(channel, certs.clone()) {
            log::error!("cannot receive certificates: {e}");
            return 1;
        }
        proxy = match proxy.with_tls(certs) {
            Ok(p) => p,
            Err(e) => {
                log::error!("cannot set up TLS: {e}");
                return 1;
            }
        };
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            log::error!("cannot start the runtime: {e}");
            return 1;
        }
    };
    rt.block_on(async move {
        let std_listeners = match (args.listen_fd.is_empty(), args.listen) {
            // SAFETY: PID 1 passes open listening sockets at these descriptors, and nothing
            // else in this process owns them.
            (false, _) => args
                .listen_fd
                .iter()
                .map(|fd| unsafe { std::net::TcpListener::from_raw_fd(*fd) })
                .collect::<Vec<_>>(),
            (true, Some(addr)) => match std::net::TcpListener::bind(addr) {
                Ok(l) => vec![l],
                Err(e) => {
                    log::error!("cannot listen on {addr}: {e}");
                    return 1;
                }
            },
            (true, None) => {
                log::error!("give --listen-fd FD or --listen ADDR:PORT");
                return crate::EXIT_USAGE;
            }
        };
        let mut listeners = Vec::new();
        for l in std_listeners {
            match l
                .set_nonblocking(true)
                .and_then(|()| tokio::net::TcpListener::from_std(l))
            {
                Ok(l) => listeners.push(l),
                Err(e) => {
                    log::error!("a listening socket is not usable: {e}");
                    return 1;
                }
            }
        }
        // SAFETY: as above, PID 1's private health socket.
        let health = args.health_fd.and_then(|fd| {
            let l = unsafe { std::os::unix::net::UnixListener::from_raw_fd(fd) };
            l.set_nonblocking(true)
                .and_then(|()| tokio::net::UnixListener::from_std(l))
                .map_err(|e| log::error!("the health socket is not usable: {e}"))
                .ok()
        });
        let local: Vec<String> = listeners
            .iter()
            .map(|l| {
                l.local_addr()
                    .map(|a| a.to_string())
                    .unwrap_or_else(|_| "?".into())
            })
            .collect();
        log::info!(
            "listening on {}{}, relaying to {} (logins checked by occ-init)",
            local.join(" and "),
            if proxy.serves_tls() { " (HTTPS)" } else { "" },
            proxy
                .upstream()
                .map(|u| format!("opencode at {u}"))
                .unwrap_or_else(|| "the opencode PID 1 names for each user".into())
        );
        server::serve(listeners, health, Arc::new(proxy)).await;
        0
    })
}
