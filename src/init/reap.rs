//! Reaping: collect every exited child of PID 1 (its own and re-parented orphans) in one
//! `waitpid(-1, WNOHANG)` loop, since SIGCHLDs coalesce.

use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};

use super::state::exit_code;

/// Result of one reaping round.
#[derive(Debug, Default)]
pub struct Reaped {
    /// `(pid, exit code)` of every child reaped in this round.
    pub exited: Vec<(i32, i32)>,
    /// True when no child at all is left (`ECHILD`).
    pub no_children: bool,
}

/// Reap until nothing is left to reap right now.
pub fn reap_all() -> Reaped {
    let mut reaped = Reaped::default();
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG | WaitPidFlag::__WALL)) {
            Ok(WaitStatus::StillAlive) => break,
            Ok(status) => {
                if let (Some(pid), Some(code)) = (status.pid(), exit_code(status)) {
                    reaped.exited.push((pid.as_raw(), code));
                }
            }
            Err(Errno::EINTR) => continue,
            Err(Errno::ECHILD) => {
                reaped.no_children = true;
                break;
            }
            Err(e) => {
                log::warn!("waitpid failed: {e}");
                break;
            }
        }
    }
    reaped
}
