//! The opencode supervision state machine: pure, driven by events and an explicit clock.
//! Its transition table (phase × event → phase, actions):
//!
//! | phase      | event                    | next phase                | actions        |
//! |------------|--------------------------|---------------------------|----------------|
//! | Gated      | Policy(allowed)          | Launching                 | Spawn          |
//! | Launching  | Spawned(pid)             | Starting                  |                |
//! | Launching  | SpawnFailed(code)        | Backoff / Stopped         | (Exit)         |
//! | Starting   | Probe(ok)                | Ready                     |                |
//! | Starting   | Tick ≥ startup timeout   | Restarting                | Signal TERM    |
//! | Ready      | Probe(fail) × K          | Restarting                | Signal TERM    |
//! | Starting/Ready | RestartRequested     | Restarting                | Signal TERM    |
//! | Starting/Ready | Policy(denied)       | Restarting (then Gated)   | Signal TERM    |
//! | Restarting | Tick ≥ grace             | Restarting                | Kill           |
//! | running    | Exited                   | Launching / Backoff / Gated / Stopped | Spawn / Exit |
//! | Backoff    | Tick ≥ until             | Launching or Gated        | Spawn          |
//! | Backoff    | Policy(denied)           | Gated                     |                |
//! | running    | Stop(why)                | Restarting (then Gated)   | Signal TERM    |
//! | Backoff    | Stop(why)                | Gated                     |                |
//! | any live   | Tick ≥ probe time        | (same)                    | Probe          |
//!
//! Stopping the whole container is not in here: PID 1 hands the running child to the
//! stop sequence of `init::state::Lifecycle`.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::config::{Config, CrashLoopAction, RestartPolicy};

/// Probe interval while opencode is starting (readiness).
pub const STARTUP_PROBE_INTERVAL: Duration = Duration::from_millis(250);

/// The knobs of supervision, taken from [`Config`].
#[derive(Debug, Clone)]
pub struct Settings {
    pub restart: RestartPolicy,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    pub stable_after: Duration,
    pub crash_loop_exits: u32,
    pub crash_loop_window: Duration,
    pub crash_loop_action: CrashLoopAction,
    pub health_interval: Duration,
    pub health_failures: u32,
    pub startup_timeout: Duration,
    pub stop_grace: Duration,
    /// How often a starting service is probed for readiness.
    pub startup_probe: Duration,
}

impl From<&Config> for Settings {
    fn from(c: &Config) -> Settings {
        Settings {
            restart: c.restart,
            backoff_initial: c.restart_backoff_initial,
            backoff_max: c.restart_backoff_max,
            stable_after: c.restart_stable_after,
            crash_loop_exits: c.crash_loop_exits,
            crash_loop_window: c.crash_loop_window,
            crash_loop_action: c.crash_loop_action,
            health_interval: c.health_interval,
            health_failures: c.health_failures,
            startup_timeout: c.startup_timeout,
            stop_grace: c.stop_grace,
            startup_probe: STARTUP_PROBE_INTERVAL,
        }
    }
}

/// Why a running opencode is being stopped by the supervisor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum After {
    /// Start it again (liveness failure, startup timeout, restart request).
    Restart,
    /// Keep it stopped: the policy gates it now.
    Gate,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    Gated,
    Launching,
    Starting {
        pid: i32,
        since: Instant,
        probe_at: Instant,
    },
    Ready {
        pid: i32,
        since: Instant,
        probe_at: Instant,
        failures: u32,
    },
    Restarting {
        pid: i32,
        since: Instant,
        then: After,
        killed: bool,
        started: Instant,
    },
    Backoff {
        until: Instant,
    },
    Stopped {
        code: i32,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The bind policy allows (true) or forbids (false) running opencode.
    Policy(bool),
    Spawned(i32),
    /// opencode could not be started (port busy, exec failure): counts as an exit.
    SpawnFailed(i32),
    Exited {
        pid: i32,
        code: i32,
    },
    Probe {
        ok: bool,
    },
    RestartRequested,
    /// Stop it for good (an idle instance, a locked user): TERM, grace, KILL, then Gated.
    Stop(String),
    Tick,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Spawn,
    Probe,
    /// Send a signal to opencode's process group.
    Signal(i32, Signal),
    /// The supervisor is done; PID 1 stops with this code.
    Exit(i32),
    /// Something worth a log line (level info unless `warn`).
    Log {
        warn: bool,
        message: String,
    },
}

/// Last exit of opencode, for status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LastExit {
    pub code: i32,
    pub at: Instant,
}

#[derive(Debug, Clone)]
pub struct Supervisor {
    /// The service's name in log lines ("opencode", "proxy", "opencode@alice").
    pub name: String,
    pub settings: Settings,
    pub phase: Phase,
    pub allowed: bool,
    pub restarts: u32,
    pub last_exit: Option<LastExit>,
    backoff_step: u32,
    recent_exits: VecDeque<Instant>,
    probe_in_flight: bool,
}

fn log(message: String) -> Action {
    Action::Log {
        warn: false,
        message,
    }
}

fn warn(message: String) -> Action {
    Action::Log {
        warn: true,
        message,
    }
}

impl Supervisor {
    pub fn new(settings: Settings) -> Supervisor {
        Supervisor::named("opencode", settings)
    }

    /// A supervisor for the service called `name`.
    pub fn named(name: impl Into<String>, settings: Settings) -> Supervisor {
        Supervisor {
            name: name.into(),
            settings,
            phase: Phase::Gated,
            allowed: false,
            restarts: 0,
            last_exit: None,
            backoff_step: 0,
            recent_exits: VecDeque::new(),
            probe_in_flight: false,
        }
    }

    /// opencode's pid while it runs.
    pub fn pid(&self) -> Option<i32> {
        match self.phase {
            Phase::Starting { pid, .. }
            | Phase::Ready { pid, .. }
            | Phase::Restarting { pid, .. } => Some(pid),
            _ => None,
        }
    }

    /// When the running opencode was started.
    pub fn started(&self) -> Option<Instant> {
        match self.phase {
            Phase::Starting { since, .. } | Phase::Ready { since, .. } => Some(since),
            Phase::Restarting { started, .. } => Some(started),
            _ => None,
        }
    }

    pub fn is_ready(&self) -> bool {
        matches!(self.phase, Phase::Ready { .. })
    }

    /// Feed one event; returns what to do.
    pub fn on(&mut self, event: Event, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        match (self.phase.clone(), event) {
            (_, Event::Policy(allowed)) => {
                self.allowed = allowed;
                match self.phase.clone() {
                    Phase::Gated if allowed => self.launch(&mut out),
                    Phase::Backoff { .. } if !allowed => self.phase = Phase::Gated,
                    // Re-opened while a gated stop is under way: start again once it is down.
                    Phase::Restarting {
                        pid,
                        since,
                        then: After::Gate,
                        killed,
                        started,
                    } if allowed => {
                        self.phase = Phase::Restarting {
                            pid,
                            since,
                            then: After::Restart,
                            killed,
                            started,
                        }
                    }
                    Phase::Starting { pid, since, .. } | Phase::Ready { pid, since, .. }
                        if !allowed =>
                    {
                        out.push(warn(format!(
                            "stopping {}: the bind policy gates it now",
                            self.name
                        )));
                        self.restart(pid, since, After::Gate, now, &mut out);
                    }
                    _ => {}
                }
            }
            (_, Event::Stop(why)) => {
                self.allowed = false;
                match self.phase.clone() {
                    Phase::Starting { pid, since, .. } | Phase::Ready { pid, since, .. } => {
                        out.push(log(format!("stopping {}: {why}", self.name)));
                        self.restart(pid, since, After::Gate, now, &mut out);
                    }
                    Phase::Restarting {
                        pid,
                        since,
                        killed,
                        started,
                        ..
                    } => {
                        self.phase = Phase::Restarting {
                            pid,
                            since,
                            then: After::Gate,
                            killed,
                            started,
                        }
                    }
                    Phase::Backoff { .. } | Phase::Launching => self.phase = Phase::Gated,
                    Phase::Gated | Phase::Stopped { .. } => {}
                }
            }
            (Phase::Launching, Event::Spawned(pid)) => {
                self.phase = Phase::Starting {
                    pid,
                    since: now,
                    probe_at: now + self.settings.startup_probe,
                };
                self.probe_in_flight = false;
            }
            (Phase::Launching, Event::SpawnFailed(code)) => self.exited(code, now, None, &mut out),
            (Phase::Starting { pid, since, .. }, Event::Probe { ok }) => {
                self.probe_in_flight = false;
                if ok {
                    out.push(log(format!("{} is ready (pid {pid})", self.name)));
                    self.phase = Phase::Ready {
                        pid,
                        since,
                        probe_at: now + self.settings.health_interval,
                        failures: 0,
                    };
                } else {
                    self.phase = Phase::Starting {
                        pid,
                        since,
                        probe_at: now + self.settings.startup_probe,
                    };
                }
            }
            (
                Phase::Ready {
                    pid,
                    since,
                    failures,
                    ..
                },
                Event::Probe { ok },
            ) => {
                self.probe_in_flight = false;
                if ok {
                    if failures > 0 {
                        out.push(log(format!("{} answers health probes again", self.name)));
                    }
                    if now.duration_since(since) >= self.settings.stable_after {
                        self.backoff_step = 0;
                    }
                    self.phase = Phase::Ready {
                        pid,
                        since,
                        probe_at: now + self.settings.health_interval,
                        failures: 0,
                    };
                } else if failures + 1 >= self.settings.health_failures {
                    out.push(warn(format!(
                        "{} failed {} health probes in a row: restarting it",
                        self.name,
                        failures + 1
                    )));
                    self.restart(pid, since, After::Restart, now, &mut out);
                } else {
                    self.phase = Phase::Ready {
                        pid,
                        since,
                        probe_at: now + self.settings.health_interval,
                        failures: failures + 1,
                    };
                }
            }
            (
                Phase::Starting { pid, since, .. } | Phase::Ready { pid, since, .. },
                Event::RestartRequested,
            ) => {
                out.push(log(format!("restarting {} on request", self.name)));
                self.restart(pid, since, After::Restart, now, &mut out);
            }
            (
                Phase::Starting { pid, .. }
                | Phase::Ready { pid, .. }
                | Phase::Restarting { pid, .. },
                Event::Exited { pid: p, code },
            ) if p == pid => {
                let then = match self.phase {
                    Phase::Restarting { then, .. } => Some(then),
                    _ => None,
                };
                let ran = self.started().map(|s| now.duration_since(s));
                if ran.is_some_and(|r| r >= self.settings.stable_after) {
                    self.backoff_step = 0;
                }
                self.exited(code, now, then, &mut out);
            }
            (_, Event::Probe { .. }) => self.probe_in_flight = false,
            (_, Event::Tick) => self.tick(now, &mut out),
            _ => {}
        }
        // Probes are due on any wake-up, not only on ticks.
        if let Some(at) = self.probe_due() {
            if now >= at && !self.probe_in_flight {
                self.probe_in_flight = true;
                out.push(Action::Probe);
            }
        }
        out
    }

    fn probe_due(&self) -> Option<Instant> {
        match self.phase {
            Phase::Starting { probe_at, .. } | Phase::Ready { probe_at, .. } => Some(probe_at),
            _ => None,
        }
    }

    fn tick(&mut self, now: Instant, out: &mut Vec<Action>) {
        match self.phase.clone() {
            Phase::Starting { pid, since, .. } if now >= since + self.settings.startup_timeout => {
                out.push(warn(format!(
                    "{} did not become ready within {}: restarting it",
                    self.name,
                    crate::duration::display(self.settings.startup_timeout)
                )));
                self.restart(pid, since, After::Restart, now, out);
            }
            Phase::Restarting {
                pid,
                since,
                then,
                killed: false,
                started,
            } if now >= since + self.settings.stop_grace => {
                out.push(warn(format!(
                    "{} ignored TERM for the whole grace period: killing it",
                    self.name
                )));
                out.push(Action::Signal(pid, Signal::SIGKILL));
                self.phase = Phase::Restarting {
                    pid,
                    since,
                    then,
                    killed: true,
                    started,
                };
            }
            Phase::Backoff { until } if now >= until => {
                if self.allowed {
                    self.launch(out);
                } else {
                    self.phase = Phase::Gated;
                }
            }
            _ => {}
        }
    }

    fn launch(&mut self, out: &mut Vec<Action>) {
        self.phase = Phase::Launching;
        out.push(Action::Spawn);
    }

    fn restart(
        &mut self,
        pid: i32,
        started: Instant,
        then: After,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        out.push(Action::Signal(pid, Signal::SIGTERM));
        self.phase = Phase::Restarting {
            pid,
            since: now,
            then,
            killed: false,
            started,
        };
    }

    /// opencode is gone (or never started): decide between restart, gate and giving up.
    fn exited(&mut self, code: i32, now: Instant, then: Option<After>, out: &mut Vec<Action>) {
        self.last_exit = Some(LastExit { code, at: now });
        self.probe_in_flight = false;
        if then == Some(After::Gate) || !self.allowed {
            self.phase = Phase::Gated;
            return;
        }
        if then == Some(After::Restart) {
            self.restarts += 1;
            self.launch(out);
            return;
        }
        let wanted = match self.settings.restart {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => code != 0,
            RestartPolicy::Never => false,
        };
        if !wanted {
            out.push(log(format!(
                "{} exited with status {code}; restart policy says stop",
                self.name
            )));
            self.phase = Phase::Stopped { code };
            out.push(Action::Exit(code));
            return;
        }
        self.recent_exits.push_back(now);
        while self
            .recent_exits
            .front()
            .is_some_and(|t| now.duration_since(*t) > self.settings.crash_loop_window)
        {
            self.recent_exits.pop_front();
        }
        let crash_loop = self.recent_exits.len() as u32 >= self.settings.crash_loop_exits;
        let delay = if crash_loop {
            match self.settings.crash_loop_action {
                CrashLoopAction::Exit => {
                    out.push(warn(format!(
                        "{} crash-looped ({} exits within {}): giving up (crash_loop_action = exit)",
                        self.name,
                        self.recent_exits.len(),
                        crate::duration::display(self.settings.crash_loop_window)
                    )));
                    self.phase = Phase::Stopped { code };
                    out.push(Action::Exit(code));
                    return;
                }
                CrashLoopAction::KeepTrying => self.settings.backoff_max,
            }
        } else {
            let factor = 2u32.saturating_pow(self.backoff_step.min(20));
            self.settings
                .backoff_initial
                .saturating_mul(factor)
                .min(self.settings.backoff_max)
        };
        self.backoff_step = self.backoff_step.saturating_add(1);
        self.restarts += 1;
        out.push(warn(format!(
            "{} exited with status {code}{}; restarting in {}",
            self.name,
            if crash_loop { " (crash loop)" } else { "" },
            crate::duration::display(delay)
        )));
        self.phase = Phase::Backoff { until: now + delay };
    }

    /// The next instant at which a Tick has something to do.
    pub fn deadline(&self) -> Option<Instant> {
        let timer = match self.phase {
            Phase::Starting { since, .. } => Some(since + self.settings.startup_timeout),
            Phase::Restarting {
                since,
                killed: false,
                ..
            } => Some(since + self.settings.stop_grace),
            Phase::Backoff { until } => Some(until),
            _ => None,
        };
        let probe = if self.probe_in_flight {
            None
        } else {
            self.probe_due()
        };
        match (timer, probe) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// A short word for status: gated, starting, ready, restarting, backoff, stopped.
    pub fn phase_name(&self) -> &'static str {
        match self.phase {
            Phase::Gated => "gated",
            Phase::Launching | Phase::Starting { .. } => "starting",
            Phase::Ready { failures: 0, .. } => "ready",
            Phase::Ready { .. } => "unhealthy",
            Phase::Restarting { .. } => "restarting",
            Phase::Backoff { .. } => "backoff",
            Phase::Stopped { .. } => "stopped",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            restart: RestartPolicy::Always,
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            stable_after: Duration::from_secs(60),
            crash_loop_exits: 5,
            crash_loop_window: Duration::from_secs(120),
            crash_loop_action: CrashLoopAction::KeepTrying,
            health_interval: Duration::from_secs(10),
            health_failures: 3,
            startup_timeout: Duration::from_secs(30),
            stop_grace: Duration::from_secs(10),
            startup_probe: STARTUP_PROBE_INTERVAL,
        }
    }

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn stop_ends_it_for_good() {
        let t = Instant::now();
        let mut sv = Supervisor::named("opencode@alice", settings());
        sv.on(Event::Policy(true), t);
        sv.on(Event::Spawned(42), t);
        sv.on(Event::Probe { ok: true }, t + s(1));
        assert!(sv.is_ready());
        let a = only_effects(sv.on(Event::Stop("idle".into()), t + s(2)));
        assert_eq!(a, vec![Action::Signal(42, Signal::SIGTERM)]);
        assert_eq!(sv.phase_name(), "restarting");
        // TERM ignored: KILL after the grace period, then gated, never restarted.
        let a = only_effects(sv.on(Event::Tick, t + s(12)));
        assert_eq!(a, vec![Action::Signal(42, Signal::SIGKILL)]);
        let a = only_effects(sv.on(Event::Exited { pid: 42, code: 137 }, t + s(13)));
        assert!(a.is_empty(), "{a:?}");
        assert_eq!(sv.phase, Phase::Gated);
        assert!(sv.pid().is_none());
        // A stop during a restart's grace keeps it down; one during backoff too.
        let mut sv = Supervisor::named("x", settings());
        sv.on(Event::Policy(true), t);
        sv.on(Event::Spawned(7), t);
        sv.on(Event::RestartRequested, t);
        sv.on(Event::Stop("locked".into()), t);
        assert!(only_effects(sv.on(Event::Exited { pid: 7, code: 143 }, t)).is_empty());
        assert_eq!(sv.phase, Phase::Gated);
        let mut sv = Supervisor::named("x", settings());
        sv.on(Event::Policy(true), t);
        sv.on(Event::Spawned(8), t);
        sv.on(Event::Exited { pid: 8, code: 1 }, t);
        assert!(matches!(sv.phase, Phase::Backoff { .. }));
        sv.on(Event::Stop("idle".into()), t);
        assert_eq!(sv.phase, Phase::Gated);
        assert!(only_effects(sv.on(Event::Tick, t + s(100))).is_empty());
    }

    fn only_effects(a: Vec<Action>) -> Vec<Action> {
        a.into_iter()
            .filter(|a| !matches!(a, Action::Log { .. }))
            .collect()
    }

    /// Launch and make ready at t0; returns the supervisor and t0.
    fn ready() -> (Supervisor, Instant) {
        let t0 = Instant::now();
        let mut sv = Supervisor::new(settings());
        assert_eq!(sv.on(Event::Policy(true), t0), vec![Action::Spawn]);
        assert!(sv.on(Event::Spawned(100), t0).is_empty());
        assert_eq!(
            sv.on(Event::Tick, t0 + STARTUP_PROBE_INTERVAL),
            vec![Action::Probe]
        );
        sv.on(Event::Probe { ok: true }, t0 + s(1));
        assert!(sv.is_ready());
        (sv, t0)
    }

    #[test]
    fn gated_until_policy_allows() {
        let t = Instant::now();
        let mut sv = Supervisor::new(settings());
        assert!(sv.on(Event::Policy(false), t).is_empty());
        assert!(sv.on(Event::Tick, t + s(100)).is_empty());
        assert_eq!(sv.phase_name(), "gated");
        assert_eq!(sv.deadline(), None);
        assert_eq!(sv.on(Event::Policy(true), t + s(101)), vec![Action::Spawn]);
    }

    #[test]
    fn readiness_probes_until_healthy() {
        let t = Instant::now();
        let mut sv = Supervisor::new(settings());
        sv.on(Event::Policy(true), t);
        sv.on(Event::Spawned(7), t);
        assert_eq!(sv.deadline(), Some(t + STARTUP_PROBE_INTERVAL));
        assert_eq!(
            sv.on(Event::Tick, t + STARTUP_PROBE_INTERVAL),
            vec![Action::Probe]
        );
        // In flight: no second probe.
        assert!(sv.on(Event::Tick, t + s(1)).is_empty());
        sv.on(Event::Probe { ok: false }, t + s(1));
        assert_eq!(sv.phase_name(), "starting");
        assert_eq!(sv.on(Event::Tick, t + s(2)), vec![Action::Probe]);
        sv.on(Event::Probe { ok: true }, t + s(2));
        assert_eq!(sv.phase_name(), "ready");
        assert_eq!(sv.deadline(), Some(t + s(12)));
    }

    #[test]
    fn crash_restarts_with_doubling_backoff() {
        let (mut sv, t) = ready();
        let mut now = t + s(2);
        for expected in [1, 2, 4, 8] {
            let pid = sv.pid().unwrap();
            sv.on(Event::Exited { pid, code: 137 }, now);
            assert_eq!(
                sv.phase,
                Phase::Backoff {
                    until: now + s(expected)
                }
            );
            assert!(
                only_effects(sv.on(Event::Tick, now + s(expected) - Duration::from_millis(1)))
                    .is_empty()
            );
            now += s(expected);
            assert_eq!(only_effects(sv.on(Event::Tick, now)), vec![Action::Spawn]);
            sv.on(Event::Spawned(200 + expected as i32), now);
            now += s(1);
            if sv.recent_exits.len() >= 4 {
                break;
            }
        }
        assert_eq!(sv.restarts, 4);
        assert_eq!(sv.last_exit.unwrap().code, 137);
    }

    #[test]
    fn backoff_caps_at_max_and_resets_after_a_stable_run() {
        let mut st = settings();
        st.crash_loop_exits = 100;
        let t = Instant::now();
        let mut sv = Supervisor::new(st);
        sv.on(Event::Policy(true), t);
        let mut now = t;
        for _ in 0..10 {
            sv.on(Event::Spawned(1), now);
            sv.on(Event::Exited { pid: 1, code: 1 }, now + s(1));
            let Phase::Backoff { until } = sv.phase else {
                panic!()
            };
            assert!(until - (now + s(1)) <= s(60));
            now = until;
            sv.on(Event::Tick, now);
        }
        let (Phase::Backoff { .. } | Phase::Launching) = sv.phase else {
            panic!("{:?}", sv.phase)
        };
        // A run of 2 minutes resets the backoff: the next crash restarts after 1 s.
        sv.on(Event::Spawned(2), now);
        sv.on(Event::Exited { pid: 2, code: 1 }, now + s(120));
        assert_eq!(
            sv.phase,
            Phase::Backoff {
                until: now + s(121)
            }
        );
    }

    #[test]
    fn crash_loop_exit_action_gives_up() {
        let mut st = settings();
        st.crash_loop_exits = 3;
        st.crash_loop_action = CrashLoopAction::Exit;
        let t = Instant::now();
        let mut sv = Supervisor::new(st);
        sv.on(Event::Policy(true), t);
        let mut now = t;
        let mut last = Vec::new();
        for i in 0..3 {
            sv.on(Event::Spawned(i), now);
            last = only_effects(sv.on(Event::Exited { pid: i, code: 2 }, now));
            now += s(5);
            sv.on(Event::Tick, now);
        }
        assert_eq!(last, vec![Action::Exit(2)]);
        assert_eq!(sv.phase, Phase::Stopped { code: 2 });
    }

    #[test]
    fn crash_loop_keep_trying_uses_max_backoff() {
        let mut st = settings();
        st.crash_loop_exits = 2;
        let t = Instant::now();
        let mut sv = Supervisor::new(st);
        sv.on(Event::Policy(true), t);
        sv.on(Event::Spawned(1), t);
        sv.on(Event::Exited { pid: 1, code: 1 }, t);
        sv.on(Event::Tick, t + s(1));
        sv.on(Event::Spawned(2), t + s(1));
        sv.on(Event::Exited { pid: 2, code: 1 }, t + s(2));
        assert_eq!(sv.phase, Phase::Backoff { until: t + s(62) });
    }

    #[test]
    fn restart_policies() {
        for (policy, code, restarts) in [
            (RestartPolicy::Never, 1, false),
            (RestartPolicy::Never, 0, false),
            (RestartPolicy::OnFailure, 0, false),
            (RestartPolicy::OnFailure, 3, true),
            (RestartPolicy::Always, 0, true),
        ] {
            let mut st = settings();
            st.restart = policy;
            let t = Instant::now();
            let mut sv = Supervisor::new(st);
            sv.on(Event::Policy(true), t);
            sv.on(Event::Spawned(1), t);
            let acts = only_effects(sv.on(Event::Exited { pid: 1, code }, t));
            if restarts {
                assert!(
                    matches!(sv.phase, Phase::Backoff { .. }),
                    "{policy:?} {code}"
                );
            } else {
                assert_eq!(acts, vec![Action::Exit(code)], "{policy:?} {code}");
            }
        }
    }

    #[test]
    fn liveness_failures_restart_with_term_then_kill() {
        let (mut sv, t) = ready();
        let mut now = t + s(11);
        for i in 0..3 {
            assert_eq!(only_effects(sv.on(Event::Tick, now)), vec![Action::Probe]);
            let acts = only_effects(sv.on(Event::Probe { ok: false }, now));
            if i < 2 {
                assert!(acts.is_empty());
                assert_eq!(sv.phase_name(), "unhealthy");
            } else {
                assert_eq!(acts, vec![Action::Signal(100, Signal::SIGTERM)]);
            }
            now += s(10);
        }
        assert_eq!(sv.phase_name(), "restarting");
        let term_at = now - s(10);
        assert_eq!(sv.deadline(), Some(term_at + s(10)));
        assert_eq!(
            only_effects(sv.on(Event::Tick, term_at + s(10))),
            vec![Action::Signal(100, Signal::SIGKILL)]
        );
        // Exit after a supervisor restart: respawn at once, counted.
        assert_eq!(
            only_effects(sv.on(
                Event::Exited {
                    pid: 100,
                    code: 137
                },
                term_at + s(10)
            )),
            vec![Action::Spawn]
        );
        assert_eq!(sv.restarts, 1);
    }

    #[test]
    fn a_good_probe_resets_failures() {
        let (mut sv, t) = ready();
        sv.on(Event::Tick, t + s(11));
        sv.on(Event::Probe { ok: false }, t + s(11));
        sv.on(Event::Tick, t + s(21));
        sv.on(Event::Probe { ok: true }, t + s(21));
        assert_eq!(sv.phase_name(), "ready");
    }

    #[test]
    fn startup_timeout_restarts() {
        let t = Instant::now();
        let mut sv = Supervisor::new(settings());
        sv.on(Event::Policy(true), t);
        sv.on(Event::Spawned(9), t);
        let acts = only_effects(sv.on(Event::Tick, t + s(30)));
        assert!(
            acts.contains(&Action::Signal(9, Signal::SIGTERM)),
            "{acts:?}"
        );
    }

    #[test]
    fn restart_request_and_policy_gate_while_running() {
        let (mut sv, t) = ready();
        assert_eq!(
            only_effects(sv.on(Event::RestartRequested, t + s(5))),
            vec![Action::Signal(100, Signal::SIGTERM)]
        );
        assert_eq!(
            only_effects(sv.on(
                Event::Exited {
                    pid: 100,
                    code: 143
                },
                t + s(6)
            )),
            vec![Action::Spawn]
        );
        sv.on(Event::Spawned(101), t + s(6));
        // The policy closes (e.g. the last user was locked): stop and stay gated.
        assert_eq!(
            only_effects(sv.on(Event::Policy(false), t + s(7))),
            vec![Action::Signal(101, Signal::SIGTERM)]
        );
        assert!(only_effects(sv.on(
            Event::Exited {
                pid: 101,
                code: 143
            },
            t + s(8)
        ))
        .is_empty());
        assert_eq!(sv.phase_name(), "gated");
        assert_eq!(
            only_effects(sv.on(Event::Policy(true), t + s(9))),
            vec![Action::Spawn]
        );
    }

    #[test]
    fn spawn_failure_counts_as_a_crash() {
        let t = Instant::now();
        let mut sv = Supervisor::new(settings());
        sv.on(Event::Policy(true), t);
        sv.on(Event::SpawnFailed(1), t);
        assert_eq!(sv.phase, Phase::Backoff { until: t + s(1) });
        assert_eq!(sv.last_exit.unwrap().code, 1);
    }

    #[test]
    fn unrelated_exits_are_ignored() {
        let (mut sv, t) = ready();
        assert!(sv
            .on(Event::Exited { pid: 555, code: 0 }, t + s(2))
            .is_empty());
        assert!(sv.is_ready());
    }

    #[test]
    fn gate_reopened_during_the_stop_starts_again() {
        // `user lock alice` then `user unlock alice` within the grace period.
        let t = Instant::now();
        let mut sv = Supervisor::new(settings());
        assert_eq!(sv.on(Event::Policy(true), t), vec![Action::Spawn]);
        sv.on(Event::Spawned(42), t);
        let acts = sv.on(Event::Policy(false), t);
        assert!(acts.contains(&Action::Signal(42, Signal::SIGTERM)));
        assert!(sv.on(Event::Policy(true), t).is_empty());
        let acts = sv.on(
            Event::Exited { pid: 42, code: 143 },
            t + Duration::from_secs(1),
        );
        assert_eq!(acts, vec![Action::Spawn], "relaunched, not left gated");
        assert_eq!(sv.phase, Phase::Launching);
    }

    #[test]
    fn gate_closed_during_a_restart_stays_gated() {
        let t = Instant::now();
        let mut sv = Supervisor::new(settings());
        sv.on(Event::Policy(true), t);
        sv.on(Event::Spawned(42), t);
        sv.on(Event::RestartRequested, t);
        sv.on(Event::Policy(false), t);
        let acts = sv.on(Event::Exited { pid: 42, code: 143 }, t);
        assert!(!acts.contains(&Action::Spawn));
        assert_eq!(sv.phase, Phase::Gated);
    }
}
