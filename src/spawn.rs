//! Starting the supervised child: its own process group, the terminal's foreground when
//! stdin is a tty, default signal state, an environment without occ-init's secrets.

use std::ffi::OsString;
use std::io;
use std::os::unix::process::CommandExt;
use std::process::Command;

use nix::unistd::Pid;
use thiserror::Error;

/// Environment variables that carry secrets meant for occ-init only; never passed on.
pub const SECRET_ENV_PREFIXES: [&str; 2] = ["OCC_BOOTSTRAP_", "OCC_SERVER_PASSWORD"];

/// Why a child could not be started.
#[derive(Debug, Error)]
pub enum SpawnError {
    #[error("no command given")]
    Empty,
    #[error("cannot run '{cmd}': command not found")]
    NotFound { cmd: String },
    #[error("cannot run '{cmd}': not executable ({source})")]
    NotExecutable { cmd: String, source: io::Error },
    #[error("cannot run '{cmd}': {source}")]
    Other { cmd: String, source: io::Error },
}

impl SpawnError {
    /// Shell-compatible exit code: 127 not found, 126 not executable, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            SpawnError::NotFound { .. } => 127,
            SpawnError::NotExecutable { .. } => 126,
            SpawnError::Empty | SpawnError::Other { .. } => 1,
        }
    }

    fn from_io(cmd: &OsString, e: io::Error) -> SpawnError {
        let cmd = cmd.to_string_lossy().into_owned();
        match e.raw_os_error() {
            Some(libc::ENOENT) => SpawnError::NotFound { cmd },
            Some(libc::EACCES) | Some(libc::ENOEXEC) | Some(libc::EISDIR) | Some(libc::EPERM) => {
                SpawnError::NotExecutable { cmd, source: e }
            }
            _ => SpawnError::Other { cmd, source: e },
        }
    }
}

/// True when an environment variable name must not reach a child.
pub fn is_secret_env(name: &str) -> bool {
    SECRET_ENV_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// Credentials to drop to in the child (looked up before the fork).
#[derive(Debug, Clone)]
pub struct Credentials {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

/// What to start and how.
#[derive(Debug, Clone, Default)]
pub struct SpawnSpec {
    pub argv: Vec<OsString>,
    /// The complete environment; `None` inherits occ-init's, minus its secrets.
    pub env: Option<Vec<(OsString, OsString)>>,
    pub cwd: Option<std::path::PathBuf>,
    pub credentials: Option<Credentials>,
    /// Descriptors handed to the child as 3, 4, … (e.g. a listening socket).
    pub pass_fds: Vec<std::os::fd::RawFd>,
    /// Set no_new_privs: the child and its descendants can never gain privileges.
    pub no_new_privs: bool,
    /// The signal state the child starts with (what occ-init itself inherited).
    pub signals: crate::init::signals::Inherited,
    /// Directories made (as the child's user, once privileges are dropped, so nothing of
    /// the user's can redirect root's hand) before it enters `cwd`: path and mode. One that
    /// exists already is kept, and put to the mode when `private` (the user's TMPDIR).
    pub make_dirs: Vec<DirSpec>,
}

/// A directory the child makes for itself (see [`SpawnSpec::make_dirs`]).
#[derive(Debug, Clone)]
pub struct DirSpec {
    pub path: std::path::PathBuf,
    pub mode: u32,
    pub private: bool,
}

/// Start `argv` as a child in its own process group (inheriting the environment minus
/// secrets) and return its pid.
pub fn spawn(
    argv: &[OsString],
    signals: crate::init::signals::Inherited,
) -> Result<Pid, SpawnError> {
    spawn_spec(&SpawnSpec {
        argv: argv.to_vec(),
        signals,
        ..SpawnSpec::default()
    })
}

/// Start a child as described by `spec`.
pub fn spawn_spec(spec: &SpawnSpec) -> Result<Pid, SpawnError> {
    let (program, args) = spec.argv.split_first().ok_or(SpawnError::Empty)?;
    let mut cmd = Command::new(program);
    cmd.args(args);
    match &spec.env {
        Some(env) => {
            cmd.env_clear();
            cmd.envs(env.iter().map(|(k, v)| (k, v)));
        }
        None => {
            for (name, _) in std::env::vars_os() {
                if is_secret_env(&name.to_string_lossy()) {
                    cmd.env_remove(name);
                }
            }
        }
    }
    // The working directory is entered after privileges are dropped (below), so a workspace
    // symlinked somewhere only root may enter is refused instead of becoming the cwd.
    let cwd = match &spec.cwd {
        Some(dir) => Some(
            std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).map_err(|_| {
                SpawnError::Other {
                    cmd: program.to_string_lossy().into_owned(),
                    source: io::Error::new(io::ErrorKind::InvalidInput, "NUL in working directory"),
                }
            })?,
        ),
        None => None,
    };
    let mut dirs = Vec::new();
    for d in &spec.make_dirs {
        let c = std::ffi::CString::new(d.path.as_os_str().as_encoded_bytes()).map_err(|_| {
            SpawnError::Other {
                cmd: program.to_string_lossy().into_owned(),
                source: io::Error::new(io::ErrorKind::InvalidInput, "NUL in a directory"),
            }
        })?;
        dirs.push((c, d.mode as libc::mode_t, d.private));
    }
    let creds = spec.credentials.clone();
    let pass_fds = spec.pass_fds.clone();
    let no_new_privs = spec.no_new_privs;
    let inherited = spec.signals;
    // SAFETY: the closure only makes async-signal-safe system calls (setpgid, isatty,
    // tcsetpgrp, rt_sigaction, sigprocmask, dup2, fcntl, prctl, setgroups, setgid, setuid,
    // mkdir, chmod, chdir);
    // the group and descriptor lists were allocated before the fork.
    unsafe {
        cmd.pre_exec(move || {
            isolate_child();
            crate::init::signals::restore(&inherited).map_err(io::Error::from)?;
            for (i, fd) in pass_fds.iter().enumerate() {
                let target = 3 + i as libc::c_int;
                if *fd == target {
                    // dup2 onto itself keeps close-on-exec: clear it instead.
                    if libc::fcntl(target, libc::F_SETFD, 0) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                } else if libc::dup2(*fd, target) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            if no_new_privs && libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            if let Some(c) = &creds {
                let groups: &[libc::gid_t] = &c.groups;
                if libc::setgroups(groups.len(), groups.as_ptr()) != 0
                    || libc::setgid(c.gid) != 0
                    || libc::setuid(c.uid) != 0
                {
                    return Err(io::Error::last_os_error());
                }
            }
            for (dir, mode, private) in &dirs {
                if libc::mkdir(dir.as_ptr(), *mode) != 0
                    && *libc::__errno_location() != libc::EEXIST
                {
                    return Err(io::Error::last_os_error());
                }
                if *private && libc::chmod(dir.as_ptr(), *mode) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            if let Some(dir) = &cwd {
                if libc::chdir(dir.as_ptr()) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|e| SpawnError::from_io(program, e))?;
    Ok(Pid::from_raw(child.id() as i32))
}

/// In the child, before exec: a process group of its own and, on a terminal, the foreground.
/// SIGTTOU is still ignored here (inherited from PID 1), so `tcsetpgrp` cannot stop us.
fn isolate_child() {
    // SAFETY: plain system calls on our own process and fd 0.
    unsafe {
        libc::setpgid(0, 0);
        if libc::isatty(libc::STDIN_FILENO) == 1 {
            // Failure (no controlling tty, e.g. a redirected terminal) is harmless.
            libc::tcsetpgrp(libc::STDIN_FILENO, libc::getpgrp());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_env_names() {
        assert!(is_secret_env("OCC_BOOTSTRAP_PASSWORD_HASH"));
        assert!(is_secret_env("OCC_BOOTSTRAP_USER"));
        assert!(is_secret_env("OCC_SERVER_PASSWORD_FILE"));
        assert!(!is_secret_env("OCC_LOG"));
        assert!(!is_secret_env("PATH"));
    }

    #[test]
    fn exec_errors_map_to_shell_codes() {
        let cmd = OsString::from("x");
        let nf = SpawnError::from_io(&cmd, io::Error::from_raw_os_error(libc::ENOENT));
        assert_eq!(nf.exit_code(), 127);
        let ne = SpawnError::from_io(&cmd, io::Error::from_raw_os_error(libc::EACCES));
        assert_eq!(ne.exit_code(), 126);
        let other = SpawnError::from_io(&cmd, io::Error::from_raw_os_error(libc::E2BIG));
        assert_eq!(other.exit_code(), 1);
    }
}
