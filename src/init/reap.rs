//! Reaping: collect every exited child of PID 1 (its own and re-parented orphans) in one
//! `waitpid(-1, WNOHANG)` loop, since SIGCHLDs coalesce.

use nix::errno::Errno;

use super::state::exit_code;

/// Result of one reaping round.
#[derive(Debug, Default)]
pub struct Reaped {
    /// `(pid, exit code)` of every child reaped in this round.
    pub exited: Vec<(i32, i32)>,
    /// True when no child at all is left (`ECHILD`).
    pub no_children: bool,
}

/// Reap until nothing is left to reap right now. The raw status is decoded here, so a child
/// killed by a real-time signal is recorded like any other (nix's `WaitStatus` cannot
/// express those).
pub fn reap_all() -> Reaped {
    let mut reaped = Reaped::default();
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: waitpid with a valid pointer to a local status word.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG | libc::__WALL) };
        if pid > 0 {
            if let Some(code) = exit_code(status) {
                reaped.exited.push((pid, code));
            }
            continue;
        }
        if pid == 0 {
            break;
        }
        match Errno::last() {
            Errno::EINTR => continue,
            Errno::ECHILD => {
                reaped.no_children = true;
                break;
            }
            e => {
                log::warn!("waitpid failed: {e}");
                break;
            }
        }
    }
    reaped
}
