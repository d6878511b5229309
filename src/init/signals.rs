//! Signal plumbing of PID 1, with signals as raw numbers (1–64) like tini: which are blocked
//! and read from a signalfd, the state occ-init inherited, and how a child gets that state
//! back before exec.

use std::os::fd::{AsFd, BorrowedFd};

use nix::sys::signal::{self, SigHandler, SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

/// A signal as the kernel numbers it, 1–64 (real-time signals included), like tini.
pub type Sig = i32;

/// The highest signal number on Linux.
pub const MAX_SIG: Sig = 64;

/// The signals users expect an init to pass on (docker stop/kill, terminal resizes, reloads).
/// Every other signal except SIGCHLD is forwarded as well: the fault signals when sent with
/// `kill`, and the real-time signals.
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

/// The set of signals PID 1 blocks and reads from its signalfd: everything but SIGKILL,
/// SIGSTOP and the job-control pair. The synchronous fault signals are blocked too, so that
/// a `kill -ILL` reaches the child; a genuine fault in occ-init still ends it, since the
/// kernel unblocks a synchronous fault signal and applies its default action.
pub fn async_set() -> SigSet {
    let mut set = SigSet::all();
    for s in IGNORED {
        set.remove(s);
    }
    set.remove(Signal::SIGKILL);
    set.remove(Signal::SIGSTOP);
    set
}

/// The signal state occ-init was started with, which its children get back: the blocked mask
/// and the ignored dispositions (`nohup occ-init CMD` keeps SIGHUP ignored for CMD). Bit N-1
/// stands for signal N.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Inherited {
    pub blocked: u64,
    pub ignored: u64,
}

/// The kernel's `struct sigaction` on 64-bit Linux (x86_64, aarch64, riscv64).
#[repr(C)]
struct KernelSigaction {
    handler: usize,
    flags: libc::c_ulong,
    restorer: usize,
    mask: u64,
}

/// The raw `rt_sigaction` system call (glibc's wrapper refuses signals 32 and 33).
/// Async-signal-safe: usable between fork and exec.
///
/// # Safety
/// Each pointer is null or points to a valid, live struct.
unsafe fn rt_sigaction(sig: Sig, act: *const KernelSigaction, old: *mut KernelSigaction) -> bool {
    libc::syscall(libc::SYS_rt_sigaction, sig, act, old, 8usize) == 0
}

/// The current handler of `sig` (`SIG_DFL`, `SIG_IGN` or a function address).
fn disposition(sig: Sig) -> Option<usize> {
    let mut cur = KernelSigaction {
        handler: 0,
        flags: 0,
        restorer: 0,
        mask: 0,
    };
    // SAFETY: no new action; the old one goes into a local struct.
    unsafe { rt_sigaction(sig, std::ptr::null(), &mut cur) }.then_some(cur.handler)
}

/// Install `act` for `sig`.
fn set_disposition(sig: Sig, act: &KernelSigaction) -> bool {
    // SAFETY: a valid struct borrowed for the call; no old action asked for.
    unsafe { rt_sigaction(sig, act, std::ptr::null_mut()) }
}

fn bit(sig: Sig) -> u64 {
    1u64 << (sig - 1)
}

impl Inherited {
    /// Read the calling thread's mask and the process's ignored dispositions. SIGPIPE counts
    /// as default: Rust's runtime ignores it before `main`, so what the parent gave is unknown.
    /// Signals 32 and 33 (glibc's own) always count as default.
    pub fn capture() -> Inherited {
        let mut out = Inherited::default();
        let mut old = SigSet::empty();
        if signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, None, Some(&mut old)).is_ok() {
            for sig in 1..=MAX_SIG {
                // SAFETY: sigismember on a valid set; invalid numbers return -1.
                if unsafe { libc::sigismember(old.as_ref(), sig) } == 1 {
                    out.blocked |= bit(sig);
                }
            }
        }
        for sig in 1..=MAX_SIG {
            // 32 and 33 belong to glibc's threads (cancellation, setxid), never to a parent.
            if sig == libc::SIGKILL
                || sig == libc::SIGSTOP
                || sig == libc::SIGPIPE
                || sig == 32
                || sig == 33
            {
                continue;
            }
            if disposition(sig) == Some(libc::SIG_IGN) {
                out.ignored |= bit(sig);
            }
        }
        out
    }

    pub fn is_ignored(&self, sig: Sig) -> bool {
        (1..=MAX_SIG).contains(&sig) && self.ignored & bit(sig) != 0
    }

    pub fn is_blocked(&self, sig: Sig) -> bool {
        (1..=MAX_SIG).contains(&sig) && self.blocked & bit(sig) != 0
    }
}

/// What [`block_async_signals`] did: the set now blocked (for the signalfd) and the state
/// occ-init started with (for its children, and for the CLI commands to go back to).
#[derive(Debug, Clone)]
pub struct Blocked {
    pub mask: SigSet,
    pub inherited: Inherited,
}

/// Block [`async_set`] in the calling thread (call before any thread exists) and ignore
/// SIGTTIN/SIGTTOU, after recording the inherited state.
pub fn block_async_signals() -> nix::Result<Blocked> {
    let inherited = Inherited::capture();
    let set = async_set();
    signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), None)?;
    for s in IGNORED {
        // SAFETY: installing SIG_IGN involves no handler code.
        unsafe { signal::signal(s, SigHandler::SigIgn)? };
    }
    Ok(Blocked {
        mask: set,
        inherited,
    })
}

/// Undo [`block_async_signals`] in the calling thread (the CLI commands: Ctrl-C must work
/// at a password prompt). Call before any thread exists.
pub fn unblock(blocked: &Blocked) {
    let _ = restore(&blocked.inherited);
}

/// A printable name: `SIGTERM`, `SIGRTMIN+3`, or `signal N`.
pub fn name(sig: Sig) -> String {
    if let Ok(s) = Signal::try_from(sig) {
        return s.as_str().to_string();
    }
    let rtmin = libc::SIGRTMIN();
    if (rtmin..=MAX_SIG).contains(&sig) {
        format!("SIGRTMIN+{}", sig - rtmin)
    } else {
        format!("signal {sig}")
    }
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

    /// Next pending signal, or `None` when none is pending. Signals PID 1 caused itself (a
    /// SIGPIPE from its own write to a closed stderr) are dropped, never forwarded.
    pub fn pending(&mut self) -> nix::Result<Option<Sig>> {
        let me = std::process::id();
        loop {
            match self.fd.read_signal()? {
                None => return Ok(None),
                Some(info) => {
                    let sig = info.ssi_signo as Sig;
                    // Dropped silently: logging it would write to the closed stderr that
                    // raised it, and so raise the next one.
                    if info.ssi_pid == me && sig != libc::SIGCHLD {
                        continue;
                    }
                    return Ok(Some(sig));
                }
            }
        }
    }
}

impl AsFd for SignalReader {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Give the calling process the signal state occ-init started with: dispositions to
/// `SIG_DFL`, or `SIG_IGN` where `inherited` had them ignored, and the inherited mask. Only
/// async-signal-safe calls: usable between fork and exec.
///
/// Uses raw system calls so that the real-time signals glibc reserves for itself (32, 33),
/// which its `signal()` refuses to touch, are reset as well.
pub fn restore(inherited: &Inherited) -> nix::Result<()> {
    for sig in 1..=MAX_SIG {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        let act = KernelSigaction {
            handler: if inherited.is_ignored(sig) {
                libc::SIG_IGN
            } else {
                libc::SIG_DFL
            },
            flags: 0,
            restorer: 0,
            mask: 0,
        };
        // SIG_DFL and SIG_IGN run no handler code. Failures for single signals are harmless.
        set_disposition(sig, &act);
    }
    let mask: u64 = inherited.blocked;
    // SAFETY: rt_sigprocmask with a valid 8-byte kernel sigset.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &mask as *const u64,
            std::ptr::null_mut::<u64>(),
            8usize,
        )
    };
    if rc != 0 {
        return Err(nix::errno::Errno::last());
    }
    Ok(())
}

/// Signals that, sent to PID 1, start the stop sequence (after being forwarded).
pub fn is_stop_signal(sig: Sig) -> bool {
    sig == libc::SIGTERM || sig == libc::SIGINT
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn async_set_blocks_everything_but_kill_stop_and_job_control() {
        let set = async_set();
        for s in IGNORED
            .iter()
            .chain([Signal::SIGKILL, Signal::SIGSTOP].iter())
        {
            assert!(!set.contains(*s), "{s} must not be blocked");
        }
        for s in FORWARDED.iter().chain(
            [
                Signal::SIGCHLD,
                Signal::SIGILL,
                Signal::SIGSEGV,
                Signal::SIGABRT,
                Signal::SIGPIPE,
            ]
            .iter(),
        ) {
            assert!(set.contains(*s), "{s} must be blocked");
        }
        for rt in libc::SIGRTMIN()..=MAX_SIG {
            // SAFETY: sigismember on a valid set.
            assert_eq!(
                unsafe { libc::sigismember(set.as_ref(), rt) },
                1,
                "real-time signal {rt} must be blocked"
            );
        }
    }

    #[test]
    fn only_term_and_int_stop() {
        assert!(is_stop_signal(libc::SIGTERM));
        assert!(is_stop_signal(libc::SIGINT));
        assert!(!is_stop_signal(libc::SIGHUP));
        assert!(!is_stop_signal(libc::SIGQUIT));
    }

    #[test]
    fn names() {
        assert_eq!(name(libc::SIGTERM), "SIGTERM");
        assert_eq!(name(libc::SIGRTMIN() + 3), "SIGRTMIN+3");
        assert_eq!(name(64), format!("SIGRTMIN+{}", 64 - libc::SIGRTMIN()));
        assert_eq!(name(0), "signal 0");
    }

    #[test]
    fn inherited_bits() {
        let i = Inherited {
            blocked: 1 << (libc::SIGUSR1 - 1),
            ignored: (1 << (libc::SIGHUP - 1)) | (1 << 63),
        };
        assert!(i.is_ignored(libc::SIGHUP) && i.is_ignored(64));
        assert!(!i.is_ignored(libc::SIGINT) && !i.is_ignored(0) && !i.is_ignored(65));
        assert!(i.is_blocked(libc::SIGUSR1) && !i.is_blocked(libc::SIGUSR2));
    }
}
