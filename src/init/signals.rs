//! Signal plumbing of PID 1: which signals are blocked and read from a signalfd, which are
//! left to the kernel, and how a child's signal state is reset before exec.

use std::os::fd::{AsFd, BorrowedFd};

use nix::sys::signal::{self, SigHandler, SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

/// Synchronous fault signals (and the unblockable ones) stay with the kernel: blocking a
/// fault signal would hang or kill PID 1 in confusing ways.
const LEFT_ALONE: [Signal; 8] = [
    Signal::SIGSEGV,
    Signal::SIGBUS,
    Signal::SIGFPE,
    Signal::SIGILL,
    Signal::SIGABRT,
    Signal::SIGSYS,
    Signal::SIGTRAP,
    Signal::SIGKILL,
];

/// The signals users expect an init to pass on (docker stop/kill, terminal resizes, reloads).
/// Every other asynchronous signal except SIGCHLD is forwarded as well.
pub const FORWARDED: [Signal; 8] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
    Signal::SIGCONT,
];

/// Terminal job-control signals PID 1 ignores, so a child can own the terminal's foreground.
const IGNORED: [Signal; 2] = [Signal::SIGTTIN, Signal::SIGTTOU];

/// The set of signals PID 1 blocks and reads from its signalfd: every asynchronous signal.
pub fn async_set() -> SigSet {
    let mut set = SigSet::all();
    for s in LEFT_ALONE.iter().chain(IGNORED.iter()) {
        set.remove(*s);
    }
    set.remove(Signal::SIGSTOP);
    set
}

/// Block [`async_set`] in the calling thread (call before any thread exists) and ignore
/// SIGTTIN/SIGTTOU. Returns the blocked set, to build the signalfd from.
pub fn block_async_signals() -> nix::Result<SigSet> {
    let set = async_set();
    signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), None)?;
    for s in IGNORED {
        // SAFETY: installing SIG_IGN involves no handler code.
        unsafe { signal::signal(s, SigHandler::SigIgn)? };
    }
    Ok(set)
}

/// Non-blocking signalfd over the blocked set.
pub struct SignalReader {
    fd: SignalFd,
}

impl SignalReader {
    pub fn new(set: &SigSet) -> nix::Result<SignalReader> {
        let fd = SignalFd::with_flags(set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)?;
        Ok(SignalReader { fd })
    }

    /// Next pending signal, or `None` when none is pending.
    pub fn pending(&mut self) -> nix::Result<Option<Signal>> {
        loop {
            match self.fd.read_signal()? {
                None => return Ok(None),
                Some(info) => match Signal::try_from(info.ssi_signo as i32) {
                    Ok(sig) => return Ok(Some(sig)),
                    // Real-time signals have no `Signal` value; nothing in occ-init uses them.
                    Err(_) => {
                        log::debug!("ignoring signal {}", info.ssi_signo);
                        continue;
                    }
                },
            }
        }
    }
}

impl AsFd for SignalReader {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Put the calling process back into the default signal state: every disposition to
/// `SIG_DFL`, empty mask. Only async-signal-safe calls: usable between fork and exec.
///
/// Uses the raw `rt_sigaction` system call so that the real-time signals glibc reserves
/// for itself (32, 33), which its `signal()` refuses to touch, are reset as well.
pub fn reset_for_exec() -> nix::Result<()> {
    /// The kernel's `struct sigaction` on 64-bit Linux (x86_64, aarch64, riscv64).
    #[repr(C)]
    struct KernelSigaction {
        handler: usize,
        flags: libc::c_ulong,
        restorer: usize,
        mask: u64,
    }
    let dfl = KernelSigaction {
        handler: libc::SIG_DFL,
        flags: 0,
        restorer: 0,
        mask: 0,
    };
    for sig in 1..=64 {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: rt_sigaction with a valid struct and no old-action pointer; SIG_DFL runs
        // no handler code. Failures for individual signals are harmless and ignored.
        unsafe {
            libc::syscall(
                libc::SYS_rt_sigaction,
                sig,
                &dfl as *const KernelSigaction,
                std::ptr::null_mut::<KernelSigaction>(),
                8usize,
            );
        }
    }
    signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)
}

/// Signals that, sent to PID 1, start the stop sequence (after being forwarded).
pub fn is_stop_signal(sig: Signal) -> bool {
    matches!(sig, Signal::SIGTERM | Signal::SIGINT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn async_set_excludes_fault_and_job_control_signals() {
        let set = async_set();
        for s in LEFT_ALONE.iter().chain(IGNORED.iter()) {
            assert!(!set.contains(*s), "{s} must not be blocked");
        }
        for s in FORWARDED.iter().chain([Signal::SIGCHLD].iter()) {
            assert!(set.contains(*s), "{s} must be blocked");
        }
    }

    #[test]
    fn only_term_and_int_stop() {
        assert!(is_stop_signal(Signal::SIGTERM));
        assert!(is_stop_signal(Signal::SIGINT));
        assert!(!is_stop_signal(Signal::SIGHUP));
        assert!(!is_stop_signal(Signal::SIGQUIT));
    }
}
