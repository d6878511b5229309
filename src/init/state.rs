//! The pure PID-1 lifecycle: turns signals, reaped children and the clock into actions
//! (forward, signal everything, exit). No I/O here; `init::mod` carries the actions out.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use super::signals::is_stop_signal;

/// How long PID 1 waits for processes to disappear after SIGKILL before it gives up and
/// exits anyway (a process stuck in uninterruptible sleep cannot be reaped any sooner).
pub const KILL_WAIT: Duration = Duration::from_secs(2);

/// What the effectful loop must do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Forward the signal to the child (or its process group).
    Forward(Signal),
    /// Send the signal to every remaining descendant of PID 1.
    SignalAll(Signal),
    /// Exit PID 1 with this code.
    Exit(i32),
}

/// Lifecycle of one supervised child and everything it leaves behind.
#[derive(Debug)]
pub struct Lifecycle {
    child: i32,
    grace: Duration,
    /// Exit code of the main child once it has been reaped.
    child_code: Option<i32>,
    /// When stopping began: TERM/INT received, or the main child exited with leftovers.
    stop_since: Option<Instant>,
    /// Leftover descendants have been sent TERM after the main child exited.
    leftovers_termed: bool,
    /// When SIGKILL went out to everything that was left.
    killed_at: Option<Instant>,
}

impl Lifecycle {
    pub fn new(child: i32, grace: Duration) -> Lifecycle {
        Lifecycle {
            child,
            grace,
            child_code: None,
            stop_since: None,
            leftovers_termed: false,
            killed_at: None,
        }
    }

    /// Stopping with no main child left (it already exited with `code`, or never ran):
    /// what remains gets TERM, the grace period, KILL; then exit with `code`.
    pub fn without_child(code: i32, grace: Duration, now: Instant) -> Lifecycle {
        Lifecycle {
            child: 0,
            grace,
            child_code: Some(code),
            stop_since: Some(now),
            leftovers_termed: false,
            killed_at: None,
        }
    }

    pub fn grace(&self) -> Duration {
        self.grace
    }

    /// A signal arrived on PID 1's signalfd.
    pub fn on_signal(&mut self, sig: Signal, now: Instant) -> Vec<Action> {
        if sig == Signal::SIGCHLD {
            return Vec::new();
        }
        let mut actions = Vec::new();
        if self.child_code.is_none() {
            actions.push(Action::Forward(sig));
        }
        if is_stop_signal(sig) && self.stop_since.is_none() {
            self.stop_since = Some(now);
        }
        actions
    }

    /// A child of PID 1 was reaped with this exit code (128+N for signal N).
    pub fn on_reaped(&mut self, pid: i32, code: i32, now: Instant) {
        if pid == self.child && self.child_code.is_none() {
            self.child_code = Some(code);
            if self.stop_since.is_none() {
                self.stop_since = Some(now);
            }
        }
    }

    /// After each wake-up: `no_children` is true when PID 1 has no child process at all.
    pub fn on_tick(&mut self, no_children: bool, now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        if let Some(code) = self.child_code {
            if no_children {
                return vec![Action::Exit(code)];
            }
            if !self.leftovers_termed {
                self.leftovers_termed = true;
                actions.push(Action::SignalAll(Signal::SIGTERM));
            }
        }
        if let (Some(since), None) = (self.stop_since, self.killed_at) {
            if now >= since + self.grace {
                self.killed_at = Some(now);
                actions.push(Action::SignalAll(Signal::SIGKILL));
            }
        }
        if let Some(killed) = self.killed_at {
            if now >= killed + KILL_WAIT {
                actions.push(Action::Exit(
                    self.child_code.unwrap_or(128 + Signal::SIGKILL as i32),
                ));
            }
        }
        actions
    }

    /// The next instant at which [`Lifecycle::on_tick`] has something to do without any event.
    pub fn deadline(&self) -> Option<Instant> {
        match (self.killed_at, self.stop_since) {
            (Some(killed), _) => Some(killed + KILL_WAIT),
            (None, Some(since)) => Some(since + self.grace),
            (None, None) => None,
        }
    }

    pub fn child_code(&self) -> Option<i32> {
        self.child_code
    }

    pub fn is_stopping(&self) -> bool {
        self.stop_since.is_some()
    }
}

/// Exit code for a finished process: its status, or 128+N when it died of signal N.
pub fn exit_code(status: nix::sys::wait::WaitStatus) -> Option<i32> {
    use nix::sys::wait::WaitStatus;
    match status {
        WaitStatus::Exited(_, code) => Some(code),
        WaitStatus::Signaled(_, sig, _) => Some(128 + sig as i32),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::wait::WaitStatus;
    use nix::unistd::Pid;

    const CHILD: i32 = 42;
    const GRACE: Duration = Duration::from_secs(10);

    fn start() -> (Lifecycle, Instant) {
        (Lifecycle::new(CHILD, GRACE), Instant::now())
    }

    #[test]
    fn forwards_signals_while_the_child_lives() {
        let (mut l, t) = start();
        for sig in [
            Signal::SIGHUP,
            Signal::SIGUSR1,
            Signal::SIGWINCH,
            Signal::SIGQUIT,
        ] {
            assert_eq!(l.on_signal(sig, t), vec![Action::Forward(sig)]);
        }
        assert!(!l.is_stopping());
        assert_eq!(l.deadline(), None);
        assert!(l.on_signal(Signal::SIGCHLD, t).is_empty());
    }

    #[test]
    fn child_exit_without_leftovers_exits_at_once() {
        let (mut l, t) = start();
        l.on_reaped(CHILD, 3, t);
        assert_eq!(l.on_tick(true, t), vec![Action::Exit(3)]);
    }

    #[test]
    fn other_reaped_pids_do_not_count() {
        let (mut l, t) = start();
        l.on_reaped(7, 9, t);
        assert_eq!(l.child_code(), None);
        assert!(l.on_tick(false, t).is_empty());
    }

    #[test]
    fn term_forwards_then_kills_after_grace() {
        let (mut l, t) = start();
        assert_eq!(
            l.on_signal(Signal::SIGTERM, t),
            vec![Action::Forward(Signal::SIGTERM)]
        );
        assert_eq!(l.deadline(), Some(t + GRACE));
        assert!(l.on_tick(false, t + Duration::from_secs(9)).is_empty());
        assert_eq!(
            l.on_tick(false, t + GRACE),
            vec![Action::SignalAll(Signal::SIGKILL)]
        );
        // Killed: exit as soon as the child is reaped, with its status.
        l.on_reaped(CHILD, 137, t + GRACE);
        assert_eq!(l.on_tick(true, t + GRACE), vec![Action::Exit(137)]);
    }

    #[test]
    fn prompt_exit_after_term_does_not_wait_for_grace() {
        let (mut l, t) = start();
        l.on_signal(Signal::SIGINT, t);
        l.on_reaped(CHILD, 130, t + Duration::from_millis(5));
        assert_eq!(
            l.on_tick(true, t + Duration::from_millis(5)),
            vec![Action::Exit(130)]
        );
    }

    #[test]
    fn leftovers_get_term_then_kill_then_exit() {
        let (mut l, t) = start();
        l.on_reaped(CHILD, 0, t);
        assert_eq!(
            l.on_tick(false, t),
            vec![Action::SignalAll(Signal::SIGTERM)]
        );
        assert!(l.on_tick(false, t + Duration::from_secs(1)).is_empty());
        // Signals are no longer forwarded once the child is gone.
        assert!(l.on_signal(Signal::SIGHUP, t).is_empty());
        assert_eq!(
            l.on_tick(false, t + GRACE),
            vec![Action::SignalAll(Signal::SIGKILL)]
        );
        assert_eq!(l.on_tick(true, t + GRACE), vec![Action::Exit(0)]);
    }

    #[test]
    fn gives_up_after_kill_wait_when_something_survives_kill() {
        let (mut l, t) = start();
        l.on_signal(Signal::SIGTERM, t);
        l.on_tick(false, t + GRACE);
        assert_eq!(l.deadline(), Some(t + GRACE + KILL_WAIT));
        assert_eq!(
            l.on_tick(false, t + GRACE + KILL_WAIT),
            vec![Action::Exit(137)]
        );
    }

    #[test]
    fn second_term_does_not_restart_grace() {
        let (mut l, t) = start();
        l.on_signal(Signal::SIGTERM, t);
        l.on_signal(Signal::SIGTERM, t + Duration::from_secs(5));
        assert_eq!(l.deadline(), Some(t + GRACE));
    }

    #[test]
    fn without_child_exits_when_nothing_is_left() {
        let t = Instant::now();
        let mut l = Lifecycle::without_child(143, GRACE, t);
        assert_eq!(l.on_tick(true, t), vec![Action::Exit(143)]);
        let mut l = Lifecycle::without_child(0, GRACE, t);
        assert_eq!(
            l.on_tick(false, t),
            vec![Action::SignalAll(Signal::SIGTERM)]
        );
        assert_eq!(
            l.on_tick(false, t + GRACE),
            vec![Action::SignalAll(Signal::SIGKILL)]
        );
    }

    #[test]
    fn exit_codes_follow_the_shell_convention() {
        let pid = Pid::from_raw(5);
        assert_eq!(exit_code(WaitStatus::Exited(pid, 0)), Some(0));
        assert_eq!(exit_code(WaitStatus::Exited(pid, 255)), Some(255));
        assert_eq!(
            exit_code(WaitStatus::Signaled(pid, Signal::SIGTERM, false)),
            Some(143)
        );
        assert_eq!(
            exit_code(WaitStatus::Signaled(pid, Signal::SIGKILL, true)),
            Some(137)
        );
        assert_eq!(exit_code(WaitStatus::StillAlive), None);
    }
}
