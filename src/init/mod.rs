//! PID 1 proper: the event loop that waits on the signalfd, forwards signals, reaps zombies
//! and runs the stop sequence, carrying out what [`state::Lifecycle`] decides.

pub mod procs;
pub mod reap;
pub mod signals;
pub mod state;
pub mod wake;

use std::ffi::OsString;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::unistd::Pid;

use signals::SignalReader;
use state::{Action, Lifecycle};

/// Where forwarded signals go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardTo {
    /// The child's process group (the child and everything in its group).
    Group,
    /// The child process only.
    Child,
}

/// What `occ-init run` supervises and how.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub command: Vec<OsString>,
    pub grace: Duration,
    pub forward_to: ForwardTo,
    /// Where the users to restore before the command starts are.
    pub users: crate::users::UsersConfig,
}

/// Run `opts.command` under PID-1 supervision and return occ-init's exit code.
/// `blocked` is what [`signals::block_async_signals`] did.
pub fn run_command(opts: RunOptions, blocked: signals::Blocked) -> i32 {
    let mut reader = match SignalReader::new(&blocked.mask) {
        Ok(r) => r,
        Err(e) => {
            log::error!("cannot create signalfd: {e}");
            return 1;
        }
    };
    become_subreaper();
    restore_users(&opts);
    let child = match crate::spawn::spawn(&opts.command, blocked.inherited) {
        Ok(pid) => pid,
        Err(e) => {
            log::error!("{e}");
            // The failed child (if any) is reaped by std before spawn returns.
            return e.exit_code();
        }
    };
    log::debug!("started {:?} as pid {child}", opts.command);
    leave_working_directory();
    drive(
        &mut reader,
        Lifecycle::new(child.as_raw(), opts.grace),
        child,
        opts.forward_to,
    )
}

/// Boot-time user restore (every boot, `run` included). Never fatal: problems are logged.
fn restore_users(opts: &RunOptions) {
    let users = crate::users::Users::new(opts.users.clone());
    let bootstrap = match crate::users::Bootstrap::from_env() {
        Ok(b) => b,
        Err(e) => {
            log::error!("users: {e}");
            None
        }
    };
    let nothing_to_do =
        bootstrap.is_none() && !users.cfg.manifest.exists() && !users.cfg.legacy_dir.exists();
    if nothing_to_do {
        log::debug!(
            "users: no manifest at {}, nothing to restore",
            users.cfg.manifest.display()
        );
        return;
    }
    users.restore_at_boot(bootstrap);
}

/// PID 1 lives as long as the container: do not hold the directory it was started in (and
/// its mount) busy. Called once the child has started in that directory.
pub fn leave_working_directory() {
    if let Err(e) = std::env::set_current_dir("/") {
        log::debug!("cannot change to /: {e}");
    }
}

/// PID 1 handles passwords (PAM, the admin API): no core dumps, no ptrace by non-root.
pub fn protect_memory() {
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } != 0 {
        log::debug!(
            "cannot clear the dumpable flag: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// When not PID 1 (Docker's `init: true`, a test harness), orphans would go to the real init
/// instead of us: become a child subreaper so they are re-parented here and reaped.
pub fn become_subreaper() {
    if std::process::id() == 1 {
        return;
    }
    // SAFETY: prctl with integer arguments only.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    if rc == 0 {
        log::debug!(
            "running as pid {}, registered as child subreaper",
            std::process::id()
        );
    } else {
        log::warn!(
            "not PID 1 and cannot become a child subreaper ({}): orphans will not be reaped here",
            std::io::Error::last_os_error()
        );
    }
}

/// The loop: block until a signal or the next deadline, act, reap, repeat until exit.
/// Once the child runs nothing here returns early on an error: it is logged and the loop
/// carries on. Also finishes the stop sequence of the opencode supervisor.
pub fn drive(
    reader: &mut SignalReader,
    mut life: Lifecycle,
    child: Pid,
    forward_to: ForwardTo,
) -> i32 {
    let grace = life.grace();
    loop {
        wait_readable(reader, life.deadline());
        let now = Instant::now();
        loop {
            match reader.pending() {
                Ok(Some(sig)) => {
                    if signals::is_stop_signal(sig) && !life.is_stopping() {
                        log::info!(
                            "received {}, stopping (grace period {})",
                            signals::name(sig),
                            crate::duration::display(grace)
                        );
                    }
                    for action in life.on_signal(sig, now) {
                        perform(action, child, forward_to);
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
        let reaped = reap::reap_all();
        for (pid, code) in reaped.exited {
            if pid == child.as_raw() {
                log::debug!("child {pid} exited with code {code}");
            } else {
                log::trace!("reaped {pid} (code {code})");
            }
            life.on_reaped(pid, code, now);
        }
        for action in life.on_tick(reaped.no_children, Instant::now()) {
            if let Action::Exit(code) = action {
                return code;
            }
            perform(action, child, forward_to);
        }
    }
}

/// Carry out one non-exit action.
pub fn perform(action: Action, child: Pid, forward_to: ForwardTo) {
    match action {
        Action::Forward(sig) => forward(sig, child, forward_to),
        Action::SignalAll(sig) => {
            let n = procs::signal_descendants(sig);
            if sig == libc::SIGKILL && n > 0 {
                log::warn!("grace period over: killing the processes that are left");
            } else {
                log::debug!("sent {} to remaining processes", signals::name(sig));
            }
        }
        Action::Exit(_) => {}
    }
}

/// Forward a signal to the child's process group (or the child). A child that left its
/// group (setsid) still gets it directly.
pub fn forward(sig: signals::Sig, child: Pid, forward_to: ForwardTo) {
    let pid = child.as_raw();
    if pid <= 0 {
        return;
    }
    let raw_kill = |target: i32| {
        // SAFETY: kill with integer arguments; any signal number 1–64 is valid.
        if unsafe { libc::kill(target, sig) } == 0 {
            Ok(())
        } else {
            Err(Errno::last())
        }
    };
    let result = match forward_to {
        ForwardTo::Group => raw_kill(-pid).or_else(|e| match e {
            Errno::ESRCH => raw_kill(pid),
            e => Err(e),
        }),
        ForwardTo::Child => raw_kill(pid),
    };
    match result {
        Ok(()) => log::debug!("forwarded {} to {child}", signals::name(sig)),
        Err(e) => log::debug!("could not forward {} to {child}: {e}", signals::name(sig)),
    }
}

/// Block until the signalfd is readable or `deadline` passes.
fn wait_readable(reader: &SignalReader, deadline: Option<Instant>) {
    let mut fds = [PollFd::new(reader.as_fd(), PollFlags::POLLIN)];
    wait_any(&mut fds, deadline);
}

/// Block until one of `fds` is ready or `deadline` passes (EINTR and errors just return).
pub fn wait_any(fds: &mut [PollFd], deadline: Option<Instant>) {
    let timeout = match deadline {
        None => PollTimeout::NONE,
        Some(d) => {
            let left = d.saturating_duration_since(Instant::now());
            // Round up so we do not wake a millisecond early and spin.
            let ms = left.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
            PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
        }
    };
    match poll(fds, timeout) {
        Ok(_) | Err(Errno::EINTR) => {}
        Err(e) => log::warn!("poll failed: {e}"),
    }
}
