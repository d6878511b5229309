//! The argument-less start (the image's ENTRYPOINT): config → restore users → bind policy →
//! launch or gate opencode → supervise it until PID 1 is told to stop. One loop blocks on the
//! signalfd, the probe worker's and the admin server's wake-up pipes, and the supervisor's next
//! deadline.

use std::collections::VecDeque;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::Instant;

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags};
use nix::sys::signal::{kill, SigSet, Signal};
use nix::unistd::Pid;

use crate::admin::api::RateLimiter;
use crate::admin::server::{self as admin, LoopReply, LoopRequest, Mailbox, Shared};
use crate::config::{Config, Overrides};
use crate::init::signals::{self, SignalReader};
use crate::init::state::Lifecycle;
use crate::init::{self, reap, ForwardTo};
use crate::policy::{self, Decision};
use crate::secret::SecretString;
use crate::supervise::probe::{Prober, Target};
use crate::supervise::spawn as oc;
use crate::supervise::state::{Action, Event, Settings, Supervisor};
use crate::users::{Bootstrap, Exposure, RestoreReport, Users, UsersConfig};

/// Name of the pid file beside the admin socket, so `occ-init user …` can notify PID 1.
pub const PID_FILE: &str = "init.pid";

/// Everything PID 1 knows while it supervises opencode.
pub struct Boot {
    pub config_path: Option<PathBuf>,
    pub overrides: Overrides,
    pub cfg: Config,
    pub users: Users,
    pub report: RestoreReport,
    pub decision: Decision,
    pub sv: Supervisor,
    pub started_at: Instant,
    /// Login users present and unlocked in /etc (what PAM accepts), for policy and status.
    pub active_users: Vec<String>,
    prober: Prober,
    admin: Option<(Mailbox, std::sync::Arc<Shared>)>,
}

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
        authenticated: !active_users.is_empty() || server_password(cfg).is_some(),
        allow_unauthenticated_network: cfg.allow_unauthenticated_network,
    }
}

fn pid_file(cfg: &Config) -> Option<PathBuf> {
    cfg.admin_socket.parent().map(|d| d.join(PID_FILE))
}

/// Record PID 1's pid (host-visible number within this namespace) for the CLI.
fn write_pid_file(cfg: &Config) {
    let Some(path) = pid_file(cfg) else { return };
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
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
        let report = users.restore_at_boot(bootstrap);
        let active_users = active_login_users(&users);
        let admin = match admin::start(&cfg.admin_socket, users.clone(), limiter(&cfg)) {
            Ok(a) => Some(a),
            Err(e @ admin::AdminError::InUse(_)) => return Err(e.to_string()),
            Err(e) => {
                log::error!("{e}; continuing without the admin endpoint (status, health and user changes through it will fail)");
                None
            }
        };
        let decision = policy::decide(&facts(&cfg, &active_users));
        let sv = Supervisor::new(Settings::from(&cfg));
        let prober = Prober::start().map_err(|e| format!("cannot start the probe thread: {e}"))?;
        Ok(Boot {
            active_users,
            admin,
            config_path,
            overrides,
            cfg,
            users,
            report,
            decision,
            sv,
            started_at: Instant::now(),
            prober,
        })
    }

    /// Log the decision the way an operator needs to read it.
    fn announce(&self) {
        match &self.decision {
            Decision::Launch => log::info!(
                "launching opencode on {}:{} ({})",
                self.cfg.host,
                self.cfg.port,
                if self.cfg.exposed() {
                    "network exposed, authentication configured"
                } else {
                    "local only"
                }
            ),
            Decision::LaunchWithWarning(w) => log::warn!("WARNING: {w}"),
            Decision::Gate(why) => log::warn!("{why}"),
        }
    }

    /// SIGHUP: re-read config and manifest, re-decide.
    fn reload(&mut self) {
        match Config::load(self.config_path.as_deref(), &self.overrides) {
            Ok(cfg) => {
                if cfg != self.cfg {
                    log::info!("configuration reloaded");
                }
                self.sv.settings = Settings::from(&cfg);
                self.users = Users::new(users_config(&cfg));
                self.cfg = cfg;
            }
            Err(e) => log::error!("configuration not reloaded, keeping the old one: {e}"),
        }
        self.report = self.users.restore_at_boot(None);
        if let Some((_, shared)) = &self.admin {
            if let Ok(mut u) = shared.users.lock() {
                *u = self.users.clone();
            }
            if let Ok(mut l) = shared.limiter.lock() {
                *l = limiter(&self.cfg);
            }
        }
        self.reevaluate();
    }

    /// Users or config changed: recompute the login users and the decision.
    fn reevaluate(&mut self) {
        self.active_users = active_login_users(&self.users);
        let decision = policy::decide(&facts(&self.cfg, &self.active_users));
        if decision != self.decision {
            self.decision = decision;
            self.announce();
        }
    }

    /// The status report.
    pub fn status(&self) -> crate::status::Status {
        use crate::status::*;
        let now = Instant::now();
        Status {
            version: crate::version::SHORT.to_string(),
            uptime_seconds: now.duration_since(self.started_at).as_secs(),
            opencode: Opencode {
                state: self.sv.phase_name().to_string(),
                ready: self.sv.is_ready(),
                pid: self.sv.pid(),
                uptime_seconds: self.sv.started().map(|s| now.duration_since(s).as_secs()),
                restarts: self.sv.restarts,
                last_exit_code: self.sv.last_exit.map(|e| e.code),
                last_exit_seconds_ago: self
                    .sv
                    .last_exit
                    .map(|e| now.duration_since(e.at).as_secs()),
                listen: format!("{}:{}", self.cfg.host, self.cfg.port),
                command: self.cfg.command.clone(),
                gate_reason: match &self.decision {
                    Decision::Gate(why) => Some(why.clone()),
                    _ => None,
                },
            },
            security: Security {
                binding: self.cfg.exposure_address().to_string(),
                network_exposed: self.cfg.exposed(),
                auth_users: self.active_users.clone(),
                server_password: server_password(&self.cfg).is_some(),
                trust_proxy: self.cfg.trust_proxy,
                rate_limit_attempts: self.cfg.rate_limit_attempts,
                rate_limit_window_seconds: self.cfg.rate_limit_window_seconds,
                allow_unauthenticated_network: self.cfg.allow_unauthenticated_network,
            },
            users: UsersStatus {
                manifest: self.cfg.users_file.display().to_string(),
                persisted: self.users.store().writable(),
                error: self.report.manifest_error.clone(),
            },
        }
    }

    /// Answer what the admin server asked; returns events for the supervisor.
    fn serve_jobs(&mut self, now: Instant, events: &mut Vec<Event>) {
        let jobs = match &self.admin {
            Some((mailbox, _)) => mailbox.drain(),
            None => return,
        };
        for job in jobs {
            let reply = match job.request {
                LoopRequest::Status => Some(LoopReply::Status(Box::new(self.status()))),
                LoopRequest::Ready => Some(LoopReply::Ready {
                    ready: self.sv.is_ready(),
                    state: self.sv.phase_name().to_string(),
                }),
                LoopRequest::Restart => Some(LoopReply::Restart(if self.sv.pid().is_some() {
                    events.push(Event::RestartRequested);
                    Ok(())
                } else {
                    Err(format!(
                        "opencode is not running ({})",
                        self.sv.phase_name()
                    ))
                })),
                LoopRequest::User(op) => {
                    let result = op.apply(&self.users, &exposure(&self.cfg));
                    if result.is_ok() {
                        self.reevaluate();
                        events.push(Event::Policy(self.decision.allows_launch()));
                    }
                    Some(LoopReply::User(result))
                }
            };
            if let (Some(tx), Some(reply)) = (job.reply, reply) {
                let _ = tx.send(reply);
            }
        }
        let _ = now;
    }

    fn probe_target(&self) -> Target {
        Target {
            host: self.cfg.host.clone(),
            port: self.cfg.port,
            path: self.cfg.health_path.clone(),
            timeout: self.cfg.health_timeout,
            password: server_password(&self.cfg).map(std::sync::Arc::new),
        }
    }

    /// Start opencode now: port check, service user, spawn.
    fn spawn(&self) -> Event {
        if oc::port_in_use(&self.cfg.host, self.cfg.port) {
            log::error!(
                "port {} on {} is already in use by another process: opencode cannot listen there",
                self.cfg.port,
                self.cfg.host
            );
            return Event::SpawnFailed(1);
        }
        let user = match oc::lookup(&self.cfg.service_user) {
            Ok(u) => u,
            Err(e) => {
                log::error!("{e}");
                return Event::SpawnFailed(1);
            }
        };
        let password = server_password(&self.cfg);
        let spec = oc::spec(&self.cfg, &user, password.as_ref());
        match crate::spawn::spawn_spec(&spec) {
            Ok(pid) => {
                log::info!(
                    "started opencode (pid {pid}) as {} on {}:{}",
                    user.name,
                    self.cfg.host,
                    self.cfg.port
                );
                Event::Spawned(pid.as_raw())
            }
            Err(e) => {
                log::error!("{e}");
                Event::SpawnFailed(e.exit_code())
            }
        }
    }

    /// Feed one event to the supervisor and carry out what it asks; `Some(code)` to stop.
    fn handle(&mut self, event: Event, now: Instant) -> Option<i32> {
        let mut queue: VecDeque<Action> = self.sv.on(event, now).into();
        while let Some(action) = queue.pop_front() {
            match action {
                Action::Spawn => {
                    let ev = self.spawn();
                    queue.extend(self.sv.on(ev, Instant::now()));
                }
                Action::Probe => self.prober.request(self.probe_target()),
                Action::Signal(pid, sig) => {
                    if kill(Pid::from_raw(-pid), sig).is_err() {
                        let _ = kill(Pid::from_raw(pid), sig);
                    }
                }
                Action::Exit(code) => return Some(code),
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

    /// Hand over to the PID-1 stop sequence and return the exit code.
    fn finish(&self, reader: &mut SignalReader, stop_signal: Option<Signal>, code: i32) -> i32 {
        let now = Instant::now();
        let grace = self.cfg.stop_grace;
        match (self.sv.pid(), stop_signal) {
            (Some(pid), Some(sig)) => {
                let mut life = Lifecycle::new(pid, grace);
                for action in life.on_signal(sig, now) {
                    init::perform(action, Pid::from_raw(pid), ForwardTo::Group);
                }
                init::drive(reader, life, Pid::from_raw(pid), ForwardTo::Group)
            }
            _ => init::drive(
                reader,
                Lifecycle::without_child(code, grace, now),
                Pid::from_raw(0),
                ForwardTo::Group,
            ),
        }
    }

    /// The loop.
    pub fn run(&mut self, reader: &mut SignalReader) -> i32 {
        write_pid_file(&self.cfg);
        self.announce();
        let allowed = self.decision.allows_launch();
        if let Some(code) = self.handle(Event::Policy(allowed), Instant::now()) {
            return self.finish(reader, None, code);
        }
        loop {
            {
                let mut fds = vec![
                    PollFd::new(reader.as_fd(), PollFlags::POLLIN),
                    PollFd::new(self.prober.as_fd(), PollFlags::POLLIN),
                ];
                if let Some((mailbox, _)) = &self.admin {
                    fds.push(PollFd::new(mailbox.as_fd(), PollFlags::POLLIN));
                }
                init::wait_any(&mut fds, self.sv.deadline());
            }
            let now = Instant::now();
            let mut events = Vec::new();
            loop {
                match reader.pending() {
                    Ok(Some(sig)) if signals::is_stop_signal(sig) => {
                        log::info!(
                            "received {sig}, stopping (grace period {})",
                            crate::duration::display(self.cfg.stop_grace)
                        );
                        let code = self.sv.last_exit.map(|e| e.code).unwrap_or(0);
                        return self.finish(reader, Some(sig), code);
                    }
                    Ok(Some(Signal::SIGHUP)) => {
                        log::info!("received SIGHUP: re-reading configuration and users");
                        self.reload();
                        events.push(Event::Policy(self.decision.allows_launch()));
                    }
                    Ok(Some(Signal::SIGCHLD)) => {}
                    Ok(Some(sig)) => {
                        if let Some(pid) = self.sv.pid() {
                            let _ = kill(Pid::from_raw(-pid), sig);
                        }
                    }
                    Ok(None) => break,
                    Err(Errno::EINTR) => continue,
                    Err(e) => {
                        log::warn!("reading signalfd failed: {e}");
                        break;
                    }
                }
            }
            for (pid, code) in reap::reap_all().exited {
                if Some(pid) == self.sv.pid() {
                    events.push(Event::Exited { pid, code });
                }
            }
            for result in self.prober.results() {
                if let Err(why) = &result {
                    log::debug!("health probe failed: {why}");
                }
                events.push(Event::Probe { ok: result.is_ok() });
            }
            self.serve_jobs(now, &mut events);
            events.push(Event::Tick);
            for ev in events {
                if let Some(code) = self.handle(ev, now) {
                    return self.finish(reader, None, code);
                }
            }
        }
    }
}

/// Entry point of the default start.
pub fn start(config_path: Option<PathBuf>, overrides: Overrides, mask: SigSet) -> i32 {
    let mut reader = match SignalReader::new(&mask) {
        Ok(r) => r,
        Err(e) => {
            log::error!("cannot create signalfd: {e}");
            return 1;
        }
    };
    init::become_subreaper();
    let mut boot = match Boot::new(config_path, overrides) {
        Ok(b) => b,
        Err(e) => {
            log::error!("{e}");
            return crate::EXIT_USAGE;
        }
    };
    let code = boot.run(&mut reader);
    if boot.admin.is_some() {
        let _ = std::fs::remove_file(&boot.cfg.admin_socket);
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
    if ok {
        0
    } else {
        1
    }
}
