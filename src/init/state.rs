//! The pure PID-1 lifecycle: turns signals, reaped children and the clock into actions
//! (forward, signal everything, exit). No I/O here; `init::mod` carries the actions out.

use std::time::{Duration, Instant};

use super::signals::{is_stop_signal, Sig};

/// How long PID 1 waits for processes to disappear after SIGKILL before it gives up and
/// exits anyway (a process stuck in uninterruptible sleep cannot be reaped any sooner).
pub const KILL_WAIT: Duration = Duration::from_secs(2);

/// What the effectful loop must do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Forward the signal (a raw number, 1–64) to the child (or its process group).
    Forward(Sig),
    /// Send the signal to every remaining descendant of PID 1.
    SignalAll(Sig),
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
    pub fn on_signal(&mut self, sig: Sig, now: Instant) -> Vec<Action> {
        if sig == libc::SIGCHLD {
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
                actions.push(Action::SignalAll(libc::SIGTERM));
            }
        }
        if let (Some(since), None) = (self.stop_since, self.killed_at) {
            if now >= since + self.grace {
                self.killed_at = Some(now);
                actions.push(Action::SignalAll(libc::SIGKILL));
            }
        }
        if let Some(killed) = self.killed_at {
            if now >= killed + KILL_WAIT {
                actions.push(Action::Exit(self.child_code.unwrap_or(128 + libc::SIGKILL)));
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

/// Exit code for a raw `waitpid` status: the exit status, or 128+N when the process died of
/// signal N (any N, real-time signals included); `None` for stops and continues.
pub fn exit_code(status: i32) -> Option<i32> {
    if libc::WIFEXITED(status) {
        Some(libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        Some(128 + libc::WTERMSIG(status))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHILD: i32 = 42;
    const GRACE: Duration = Duration::from_secs(10);

    fn start() -> (Lifecycle, Instant) {
        (Lifecycle::new(CHILD, GRACE), Instant::now())
    }

    #[test]
    fn forwards_signals_while_the_child_lives() {
        let (mut l, t) = start();
        for sig in [libc::SIGHUP, libc::SIGUSR1, libc::SIGWINCH, libc::SIGQUIT] {
            assert_eq!(l.on_signal(sig, t), vec![Action::Forward(sig)]);
        }
        assert!(!l.is_stopping());
        assert_eq!(l.deadline(), None);
        assert!(l.on_signal(libc::SIGCHLD, t).is_empty());
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
            l.on_signal(libc::SIGTERM, t),
            vec![Action::Forward(libc::SIGTERM)]
        );
        assert_eq!(l.deadline(), Some(t + GRACE));
        assert!(l.on_tick(false, t + Duration::from_secs(9)).is_empty());
        assert_eq!(
            l.on_tick(false, t + GRACE),
            vec![Action::SignalAll(libc::SIGKILL)]
        );
        // Killed: exit as soon as the child is reaped, with its status.
        l.on_reaped(CHILD, 137, t + GRACE);
        assert_eq!(l.on_tick(true, t + GRACE), vec![Action::Exit(137)]);
    }

    #[test]
    fn prompt_exit_after_term_does_not_wait_for_grace() {
        let (mut l, t) = start();
        l.on_signal(libc::SIGINT, t);
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
        assert_eq!(l.on_tick(false, t), vec![Action::SignalAll(libc::SIGTERM)]);
        assert!(l.on_tick(false, t + Duration::from_secs(1)).is_empty());
        // Signals are no longer forwarded once the child is gone.
        assert!(l.on_signal(libc::SIGHUP, t).is_empty());
        assert_eq!(
            l.on_tick(false, t + GRACE),
            vec![Action::SignalAll(libc::SIGKILL)]
        );
        assert_eq!(l.on_tick(true, t + GRACE), vec![Action::Exit(0)]);
    }

    #[test]
    fn gives_up_after_kill_wait_when_something_survives_kill() {
        let (mut l, t) = start();
        l.on_signal(libc::SIGTERM, t);
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
        l.on_signal(libc::SIGTERM, t);
        l.on_signal(libc::SIGTERM, t + Duration::from_secs(5));
        assert_eq!(l.deadline(), Some(t + GRACE));
    }

    #[test]
    fn without_child_exits_when_nothing_is_left() {
        let t = Instant::now();
        let mut l = Lifecycle::without_child(143, GRACE, t);
        assert_eq!(l.on_tick(true, t), vec![Action::Exit(143)]);
        let mut l = Lifecycle::without_child(0, GRACE, t);
        assert_eq!(l.on_tick(false, t), vec![Action::SignalAll(libc::SIGTERM)]);
        assert_eq!(
            l.on_tick(false, t + GRACE),
            vec![Action::SignalAll(libc::SIGKILL)]
        );
    }

    #[test]
    fn exit_codes_follow_the_shell_convention() {
        // Raw wait statuses as the kernel builds them: exit code << 8, or the signal number
        // (| 0x80 for a core dump), or 0x7f for a stop.
        let exited = |code: i32| code << 8;
        assert_eq!(exit_code(exited(0)), Some(0));
        assert_eq!(exit_code(exited(255)), Some(255));
        assert_eq!(exit_code(libc::SIGTERM), Some(143));
        assert_eq!(exit_code(libc::SIGKILL | 0x80), Some(137));
        // Every signal 1–64, real-time ones included.
        for sig in 1..=64 {
            if sig == libc::SIGKILL || sig == libc::SIGSTOP || sig == 0x7f {
                continue;
            }
            assert_eq!(exit_code(sig), Some(128 + sig), "signal {sig}");
        }
        assert_eq!(exit_code((libc::SIGSTOP << 8) | 0x7f), None, "stopped");
        assert_eq!(exit_code(0xffff), None, "continued");
    }
}
