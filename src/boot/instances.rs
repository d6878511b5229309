//! Per-user opencode instances in PID 1's loop (JupyterHub's Spawner, as services of the
//! one supervisor): started on a user's first request, answered to the proxy as a
//! [`View`], asked about busy sessions once quiet, stopped when idle or when the account
//! ends (with every process of that uid), replaced least-recently-used at `max_instances`.

use std::time::{Duration, Instant};

use super::{Boot, Events, Service, ServiceKind};
use crate::instances::{self as pure, View, ViewState};
use crate::supervise::probe::Check;
use crate::supervise::state::{After, Event, Phase, Supervisor};

/// The service name of an instance.
pub fn name_of(s: &Service) -> String {
    pure::service_name(&s.user)
}

/// Being stopped for good (idle, replaced, locked, gated)?
fn stopping(sv: &Supervisor) -> bool {
    matches!(
        sv.phase,
        Phase::Restarting {
            then: After::Gate,
            ..
        }
    )
}

/// Does it count toward `max_instances`: running, starting or about to restart, and not
/// on its way out.
fn live(sv: &Supervisor) -> bool {
    match sv.phase {
        Phase::Gated | Phase::Stopped { .. } => false,
        _ => !stopping(sv),
    }
}

/// A word for status: the supervisor's phase, `stopping` or `failed`.
pub fn state_word(s: &Service) -> &'static str {
    if s.failed.is_some() && s.sv.pid().is_none() {
        "failed"
    } else if stopping(&s.sv) {
        "stopping"
    } else {
        s.sv.phase_name()
    }
}

/// What the proxy gets for one instance.
fn view_of(s: &Service) -> View {
    let mut v = View {
        user: s.user.clone(),
        state: ViewState::Starting,
        upstream: None,
        authorization: None,
        uid: None,
        reason: None,
    };
    match &s.sv.phase {
        Phase::Ready { .. } => {
            v.state = ViewState::Ready;
            v.upstream = Some(format!("127.0.0.1:{}", s.port));
            v.authorization = s.authorization.as_ref().map(|a| a.expose().to_string());
            v.uid = s.runs_as.map(|(uid, _)| uid);
        }
        Phase::Stopped { .. } => {
            v.state = ViewState::Failed;
            v.reason = s.failed.as_ref().map(|(why, _)| why.clone());
        }
        _ if stopping(&s.sv) => {
            v.state = ViewState::Stopping;
            v.reason = Some("your workspace is being stopped".into());
        }
        Phase::Gated if !s.sv.allowed => v.state = ViewState::Stopped,
        _ => {
            v.reason = Some(match s.sv.last_exit {
                Some(e) if s.sv.restarts > 0 => format!(
                    "your opencode is restarting (it exited with status {}; {} restart(s))",
                    e.code, s.sv.restarts
                ),
                _ => "your opencode is starting".into(),
            })
        }
    }
    v
}

/// A view for a user without an instance (none asked for, none allowed).
fn no_instance(user: &str, state: ViewState, reason: String) -> View {
    View {
        user: user.to_string(),
        state,
        upstream: None,
        authorization: None,
        uid: None,
        reason: Some(reason),
    }
}

impl Boot {
    /// The per-user instances.
    pub(super) fn instances(&self) -> impl Iterator<Item = &Service> {
        self.services
            .values()
            .filter(|s| s.kind == ServiceKind::Instance)
    }

    /// The proxy's report: note each user's activity, start `start`'s instance if asked,
    /// and answer with every instance's view.
    pub(super) fn on_report(
        &mut self,
        report: pure::Report,
        now: Instant,
        events: &mut Events,
    ) -> Vec<View> {
        for a in &report.activity {
            if let Some(s) = self.services.get_mut(&pure::service_name(&a.user)) {
                if s.kind == ServiceKind::Instance {
                    s.usage
                        .report(now, Duration::from_millis(a.idle_ms), a.open);
                }
            }
        }
        let wanted = report.start.map(|user| self.want(&user, now, events));
        let mut views: Vec<View> = self.instances().map(view_of).collect();
        if let Some(w) = wanted {
            views.retain(|v| v.user != w.user);
            views.push(w);
        }
        views
    }

    /// `user` made a request: their instance's view, started first when there is none
    /// (making room at `max_instances` by stopping the least recently used idle one).
    fn want(&mut self, user: &str, now: Instant, events: &mut Events) -> View {
        if !self.cfg.per_user() {
            let why = "instances = shared: there is no opencode per user".to_string();
            return no_instance(user, ViewState::Failed, why);
        }
        if let Some(why) = self.gate_reason() {
            // Nothing to wait for: the gate opens on an administrator's action.
            return no_instance(user, ViewState::Failed, why);
        }
        if !self.active_users.iter().any(|u| u == user) {
            let why = format!("{user} is not a user who can log in");
            return no_instance(user, ViewState::Failed, why);
        }
        let name = pure::service_name(user);
        if let Some(s) = self.services.get_mut(&name) {
            s.usage.report(now, Duration::ZERO, s.usage.open);
            match &s.failed {
                Some((_, at)) if now >= *at + pure::RETRY_FAILED => {
                    log::info!("{name}: trying again after it gave up");
                    self.services.remove(&name);
                }
                Some(_) => return view_of(s),
                // Stopping or stopped while its user came back: start it again.
                None if !s.sv.allowed => {
                    self.handle(&name, Event::Policy(true), now);
                    return self.services.get(&name).map(view_of).unwrap_or_else(|| {
                        no_instance(user, ViewState::Stopped, "stopped".into())
                    });
                }
                None => return view_of(s),
            }
        }
        let running = self.instances().filter(|s| live(&s.sv)).count();
        if running >= self.cfg.max_instances as usize {
            let idle = self.cfg.instance_idle_timeout;
            let candidates: Vec<(String, bool, pure::Usage)> = self
                .instances()
                .filter(|s| !stopping(&s.sv))
                .map(|s| (name_of(s), s.sv.is_ready(), s.usage.clone()))
                .collect();
            let victim =
                pure::pick_victim(candidates.iter().map(|(n, r, u)| (n.as_str(), *r, u)), idle)
                    .map(str::to_string);
            match victim {
                Some(v) => {
                    let why = format!(
                        "making room for {user}'s (max_instances = {})",
                        self.cfg.max_instances
                    );
                    events.push((v, Event::Stop(why)));
                }
                None => {
                    log::warn!(
                        "{user}'s opencode waits: {running} instances run (max_instances = {}) and none is idle",
                        self.cfg.max_instances
                    );
                    let why = format!(
                        "all {} workspaces of this container are in use; try again in a few minutes",
                        self.cfg.max_instances
                    );
                    return no_instance(user, ViewState::Full, why);
                }
            }
        }
        log::info!("starting {user}'s own opencode (first request)");
        let sv = Supervisor::named(name.clone(), super::instance_settings(&self.cfg));
        let svc = Service::new(ServiceKind::Instance, sv, user, 0, now);
        self.services.insert(name.clone(), svc);
        self.handle(&name, Event::Policy(true), now);
        self.services
            .get(&name)
            .map(view_of)
            .unwrap_or_else(|| no_instance(user, ViewState::Failed, "cannot start".into()))
    }

    /// `occ-init instance stop USER`: stop their instance (or forget one that gave up).
    pub(super) fn stop_instance(
        &mut self,
        user: &str,
        why: &str,
        events: &mut Events,
    ) -> Result<(), String> {
        if !self.cfg.per_user() {
            return Err("instances = shared: there are no per-user instances".into());
        }
        let name = pure::service_name(user);
        match self.services.get(&name) {
            None => Err(format!("{user} has no opencode running")),
            Some(s) if s.sv.pid().is_none() => {
                self.services.remove(&name);
                Ok(())
            }
            Some(_) => {
                events.push((name, Event::Stop(why.to_string())));
                Ok(())
            }
        }
    }

    /// An instance's supervisor gave up (crash loop): its user is told why, and the next
    /// request after [`pure::RETRY_FAILED`] tries again.
    pub(super) fn instance_gave_up(&mut self, name: &str, code: i32, now: Instant) {
        let Some(s) = self.services.get_mut(name) else {
            return;
        };
        let why = format!(
            "your opencode keeps failing (it exited {} times within {}, last with status {code}); \
             occ-init tries again on your next request after {}. An administrator can see more \
             with `occ-init status` and the container's log.",
            s.sv.settings.crash_loop_exits,
            crate::duration::display(s.sv.settings.crash_loop_window),
            crate::duration::display(pure::RETRY_FAILED)
        );
        log::warn!("{name} gave up: {why}");
        s.failed = Some((why, now));
    }

    /// The next idle-check instant of any ready instance.
    pub(super) fn instances_deadline(&self) -> Option<Instant> {
        let idle = self.cfg.instance_idle_timeout;
        self.instances()
            .filter(|s| s.sv.is_ready())
            .filter_map(|s| s.usage.next_check(idle))
            .min()
    }

    /// Idle instances: ask opencode about busy sessions when due; stop those idle for
    /// the whole timeout with nothing busy.
    pub(super) fn instances_tick(&mut self, now: Instant, events: &mut Events) {
        let idle = self.cfg.instance_idle_timeout;
        let mut checks = Vec::new();
        for (name, s) in self.services.iter_mut() {
            if s.kind != ServiceKind::Instance || !s.sv.is_ready() || stopping(&s.sv) {
                continue;
            }
            if s.usage.should_stop(idle) {
                let why = format!(
                    "no request for {} and no busy session",
                    crate::duration::display(idle)
                );
                events.push((name.clone(), Event::Stop(why)));
                s.usage.busy = None;
            } else if s.usage.next_check(idle).is_some_and(|t| t <= now) {
                s.usage.checking = true;
                checks.push(name.clone());
            }
        }
        for name in checks {
            if let Some(t) = self.probe_target(&name, Check::Idle) {
                self.prober.request(&name, Check::Idle, t);
            }
        }
    }

    /// A probe's result: health goes to the supervisor, a busy check to the usage.
    pub(super) fn probed(
        &mut self,
        name: String,
        check: Check,
        pid: Option<i32>,
        result: Result<u16, String>,
        now: Instant,
        events: &mut Events,
    ) {
        let Some(s) = self.services.get_mut(&name) else {
            return;
        };
        // A probe of a process that is gone (it was restarted meanwhile) says nothing.
        if pid.is_some() && pid != s.sv.pid() {
            if check == Check::Idle {
                s.usage.checking = false;
            }
            return;
        }
        // Found on the probe's way: the port opencode (`--port 0`) bound.
        if let Ok(port) = result {
            if s.port == 0 && port != 0 && s.kind != ServiceKind::Proxy {
                log::debug!("{name} listens on 127.0.0.1:{port}");
                s.port = port;
            }
        }
        let result = result.map(|_| ());
        match check {
            Check::Health => {
                if let Err(why) = &result {
                    log::debug!("{name} health probe failed: {why}");
                }
                events.push((name, Event::Probe { ok: result.is_ok() }));
            }
            Check::Idle => {
                if let Err(why) = &result {
                    log::debug!("{name} stays up: {why}");
                }
                s.usage.checking = false;
                s.usage.busy = Some(pure::BusyCheck {
                    at: now,
                    busy: result.is_err(),
                });
            }
        }
    }

    /// Forget instances that were stopped for good (their process is gone).
    pub(super) fn remove_stopped_instances(&mut self) {
        self.services.retain(|_, s| {
            s.kind != ServiceKind::Instance
                || s.sv.pid().is_some()
                || !matches!(s.sv.phase, Phase::Gated)
                || s.sv.allowed
        });
    }

    /// Login users that were locked or removed since the last look: their instance stops
    /// and every process of their uid is killed (terminal leftovers, `nohup` jobs). Then
    /// note the uids of who can log in now.
    pub(super) fn end_departed_users(&mut self) {
        let now = Instant::now();
        let gone: Vec<(String, u32)> = self
            .login_uids
            .iter()
            .filter(|(name, _)| !self.active_users.contains(name))
            .map(|(n, u)| (n.clone(), *u))
            .collect();
        let proxy_uid = crate::supervise::spawn::lookup(&self.cfg.proxy_user)
            .ok()
            .map(|u| u.credentials.uid);
        for (user, uid) in gone {
            let name = pure::service_name(&user);
            if self.services.contains_key(&name) {
                self.handle(
                    &name,
                    Event::Stop(format!("{user} can no longer log in")),
                    now,
                );
            }
            if uid != 0 && Some(uid) != proxy_uid {
                match crate::init::procs::kill_uid(uid) {
                    Ok(0) => log::info!("{user} can no longer log in; no process of uid {uid} ran"),
                    Ok(_) => log::info!("{user} can no longer log in: ended every process of uid {uid}"),
                    Err(e) => log::error!("{user} can no longer log in, but their processes (uid {uid}) could not be ended: {e}"),
                }
            }
            self.login_uids.remove(&user);
        }
        for user in &self.active_users {
            if !self.login_uids.contains_key(user) {
                if let Ok(u) = crate::supervise::spawn::lookup(user) {
                    self.login_uids.insert(user.clone(), u.credentials.uid);
                }
            }
        }
    }
}
