//! User changes in a helper process (`occ-init __user-op`), so PID 1's loop never waits for
//! useradd or chpasswd: it keeps reaping, handling TERM and answering the admin socket while a
//! 500-user restore runs. The helper is PID 1's child (reaped by its loop like any other); the
//! tools are the helper's children (reaped by the helper). The request, secrets included,
//! travels over the helper's stdin as JSON, never its argv or environment; the answer comes
//! back on its stdout. PID 1 runs one helper at a time, so changes stay serialized.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{Exposure, NewSecret, Persistence, RestoreReport, Users, UsersConfig, UsersError};
use crate::secret::SecretString;

/// The hidden subcommand that runs a helper.
pub const SUBCOMMAND: &str = "__user-op";
/// A helper still running after this long is killed and its change reported as failed.
pub const HELPER_TIMEOUT: Duration = Duration::from_secs(300);
/// Largest request or answer.
const MAX_MESSAGE: u64 = 16 * 1024 * 1024;

/// One user change.
#[derive(Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Job {
    Add {
        name: String,
        password: Option<String>,
        hash: Option<String>,
        uid: Option<u32>,
    },
    Remove {
        name: String,
        force: bool,
        address: String,
        exposed: bool,
    },
    SetPassword {
        name: String,
        password: Option<String>,
        hash: Option<String>,
    },
    SetLocked {
        name: String,
        locked: bool,
    },
    /// What the boot does: legacy import, the bootstrap user (name, hash) when given, then
    /// /etc made to match the manifest.
    Restore {
        bootstrap: Option<(String, String)>,
    },
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Job::Add { .. } => "Add",
            Job::Remove { .. } => "Remove",
            Job::SetPassword { .. } => "SetPassword",
            Job::SetLocked { .. } => "SetLocked",
            Job::Restore { .. } => "Restore",
        })
    }
}

fn split(secret: NewSecret) -> (Option<String>, Option<String>) {
    match secret {
        NewSecret::Password(p) => (Some(p.expose().to_string()), None),
        NewSecret::Hash(h) => (None, Some(h.expose().to_string())),
    }
}

fn join(password: Option<String>, hash: Option<String>) -> Result<NewSecret, UsersError> {
    match (password, hash) {
        (Some(p), None) => Ok(NewSecret::Password(SecretString::new(p))),
        (None, Some(h)) => Ok(NewSecret::Hash(SecretString::new(h))),
        _ => Err(UsersError::Invalid {
            what: "request",
            message: "give a password or a hash".into(),
        }),
    }
}

impl Job {
    pub fn add(name: String, secret: NewSecret, uid: Option<u32>) -> Job {
        let (password, hash) = split(secret);
        Job::Add {
            name,
            password,
            hash,
            uid,
        }
    }

    pub fn set_password(name: String, secret: NewSecret) -> Job {
        let (password, hash) = split(secret);
        Job::SetPassword {
            name,
            password,
            hash,
        }
    }

    pub fn remove(name: String, force: bool, exposure: &Exposure) -> Job {
        Job::Remove {
            name,
            force,
            address: exposure.address.clone(),
            exposed: exposure.exposed,
        }
    }
}

/// The users configuration, the unsaved overlay and the job.
#[derive(Serialize, Deserialize, Debug)]
pub struct Request {
    pub manifest: PathBuf,
    pub legacy_dir: PathBuf,
    pub etc: PathBuf,
    pub reserved: Vec<String>,
    pub overlay: Option<super::OverlayWire>,
    pub job: Job,
}

/// A failed change, as the admin API shows it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub status: u16,
    pub code: String,
    pub message: String,
}

/// The helper's answer.
#[derive(Serialize, Deserialize, Debug, Default)]
pub struct Answer {
    pub persistence: Option<Persistence>,
    pub failure: Option<Failure>,
    pub report: Option<RestoreReport>,
    pub overlay: Option<super::OverlayWire>,
}

impl Answer {
    fn failed(status: u16, code: &str, message: String) -> Answer {
        Answer {
            failure: Some(Failure {
                status,
                code: code.into(),
                message,
            }),
            ..Answer::default()
        }
    }

    /// The change's result for the admin API.
    pub fn result(&self) -> Result<Persistence, crate::admin::api::ApiError> {
        match (&self.failure, self.persistence) {
            (Some(f), _) => Err(crate::admin::api::ApiError::new(
                f.status,
                crate::admin::api::known_code(&f.code),
                f.message.clone(),
            )),
            (None, Some(p)) => Ok(p),
            (None, None) => Ok(Persistence::Saved),
        }
    }
}

/// Build the request for `users` (its configuration and unsaved overlay).
pub fn request(users: &Users, job: Job) -> Request {
    Request {
        manifest: users.cfg.manifest.clone(),
        legacy_dir: users.cfg.legacy_dir.clone(),
        etc: users.cfg.etc.clone(),
        reserved: users.cfg.reserved.clone(),
        overlay: users.overlay_wire(),
        job,
    }
}

/// Carry out a request (in the helper process).
pub fn execute(req: Request) -> Answer {
    let users = Users::new(UsersConfig {
        manifest: req.manifest,
        legacy_dir: req.legacy_dir,
        etc: req.etc,
        reserved: req.reserved,
    });
    users.set_overlay_wire(req.overlay);
    let mut answer = Answer::default();
    let result = match req.job {
        Job::Add {
            name,
            password,
            hash,
            uid,
        } => join(password, hash).and_then(|s| users.add(&name, s, uid)),
        Job::Remove {
            name,
            force,
            address,
            exposed,
        } => users.remove(&name, force, &Exposure { address, exposed }),
        Job::SetPassword {
            name,
            password,
            hash,
        } => join(password, hash).and_then(|s| users.set_password(&name, s)),
        Job::SetLocked { name, locked } => users.set_locked(&name, locked),
        Job::Restore { bootstrap } => {
            let bootstrap = bootstrap.map(|(name, hash)| super::Bootstrap {
                name,
                hash: SecretString::new(hash),
            });
            answer.report = Some(users.restore_at_boot(bootstrap));
            Ok(Persistence::Saved)
        }
    };
    match result {
        Ok(p) => answer.persistence = Some(p),
        Err(e) => {
            let api = crate::admin::api::users_error(&e);
            answer.failure = Some(Failure {
                status: api.status,
                code: api.code.to_string(),
                message: api.message,
            });
        }
    }
    answer.overlay = users.overlay_wire();
    answer
}

/// The `occ-init __user-op` subcommand: a request on stdin, the answer on stdout.
pub fn main() -> i32 {
    let mut input = Vec::new();
    let read = std::io::stdin()
        .lock()
        .take(MAX_MESSAGE)
        .read_to_end(&mut input);
    let answer = match read.map_err(|e| e.to_string()).and_then(|_| {
        serde_json::from_slice::<Request>(&input).map_err(|e| format!("bad request: {e}"))
    }) {
        Ok(req) => execute(req),
        Err(e) => Answer::failed(500, "internal", format!("user helper: {e}")),
    };
    super::apply::wipe(&mut input);
    let mut out = serde_json::to_vec(&answer).unwrap_or_default();
    let ok = std::io::stdout().write_all(&out).is_ok();
    super::apply::wipe(&mut out);
    if ok {
        0
    } else {
        1
    }
}

/// A helper PID 1 started and is waiting for.
pub struct Running {
    pub pid: i32,
    out: File,
    buf: Vec<u8>,
    pub started: Instant,
}

impl Running {
    /// Start `exe __user-op` and hand it `req`.
    pub fn start(exe: &std::path::Path, req: &Request) -> std::io::Result<Running> {
        let mut body = serde_json::to_vec(req).map_err(std::io::Error::other)?;
        let mut cmd = Command::new(exe);
        cmd.arg(SUBCOMMAND)
            .env_clear()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for name in ["PATH", "OCC_LOG", "RUST_LOG", "LANG", "LC_ALL"] {
            if let Some(v) = std::env::var_os(name) {
                cmd.env(name, v);
            }
        }
        let spawned = cmd.spawn();
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => {
                super::apply::wipe(&mut body);
                return Err(e);
            }
        };
        let pid = child.id() as i32;
        // The helper reads its whole request before doing anything, so this returns promptly.
        let written = child
            .stdin
            .take()
            .map(|mut stdin| stdin.write_all(&body))
            .unwrap_or(Ok(()));
        super::apply::wipe(&mut body);
        let out = child
            .stdout
            .take()
            .ok_or_else(|| std::io::Error::other("the helper has no stdout"))?;
        // PID 1's loop reaps the helper; the Child handle is never waited on.
        drop(child);
        written?;
        let out = File::from(std::os::fd::OwnedFd::from(out));
        let flags = nix::fcntl::fcntl(&out, nix::fcntl::FcntlArg::F_GETFL)?;
        let flags = nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK;
        nix::fcntl::fcntl(&out, nix::fcntl::FcntlArg::F_SETFL(flags))?;
        Ok(Running {
            pid,
            out,
            buf: Vec::new(),
            started: Instant::now(),
        })
    }

    /// Read what is there; the answer once the helper closed its stdout.
    pub fn poll(&mut self) -> Option<Answer> {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match self.out.read(&mut chunk) {
                Ok(0) => {
                    let answer = serde_json::from_slice(&self.buf).unwrap_or_else(|_| {
                        Answer::failed(
                            500,
                            "internal",
                            "the user helper ended without an answer (see the log)".into(),
                        )
                    });
                    super::apply::wipe(&mut self.buf);
                    return Some(answer);
                }
                Ok(n) => {
                    if self.buf.len() as u64 + n as u64 > MAX_MESSAGE {
                        return Some(Answer::failed(
                            500,
                            "internal",
                            "the user helper's answer is too large".into(),
                        ));
                    }
                    self.buf.extend_from_slice(&chunk[..n]);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return None,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Some(Answer::failed(
                        500,
                        "internal",
                        format!("reading the user helper's answer: {e}"),
                    ))
                }
            }
        }
    }

    /// Past [`HELPER_TIMEOUT`]: kill it and fail the change.
    pub fn expire(&self) -> Answer {
        // SAFETY: kill with integer arguments.
        unsafe { libc::kill(self.pid, libc::SIGKILL) };
        Answer::failed(
            504,
            "timeout",
            format!(
                "the user change took longer than {}s and was stopped",
                HELPER_TIMEOUT.as_secs()
            ),
        )
    }
}

impl AsFd for Running {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.out.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_and_answers_round_trip_without_showing_secrets() {
        let job = Job::add(
            "alice".into(),
            NewSecret::Password(SecretString::new("hunter2-secret".into())),
            None,
        );
        assert!(!format!("{job:?}").contains("hunter2"));
        let text = serde_json::to_string(&job).unwrap();
        let back: Job = serde_json::from_str(&text).unwrap();
        assert!(matches!(back, Job::Add { ref name, .. } if name == "alice"));
        let a = Answer::failed(404, "no_such_user", "no user bob".into());
        let e = a.result().unwrap_err();
        assert_eq!((e.status, e.code), (404, "no_such_user"));
        let ok = Answer {
            persistence: Some(Persistence::NotPersistedReadOnly),
            ..Answer::default()
        };
        assert_eq!(ok.result().unwrap(), Persistence::NotPersistedReadOnly);
    }
}
