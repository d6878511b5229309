//! Carrying out a user plan with the system tools: `useradd` per new user and one
//! `chpasswd -e` for every shadow change. Secrets travel only over the tools' stdin; their
//! argv holds names and uids, their environment only PATH and LC_ALL.

use std::io::Write;
use std::process::{Command, Stdio};

use std::path::Path;

use super::accounts::MANAGED_GECOS;
use super::plan::{NewUser, Plan};
use super::UsersError;

/// PATH for the account tools when occ-init's own PATH is unset.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

fn tool(name: &str) -> Command {
    let mut cmd = Command::new(name);
    cmd.env_clear()
        .env(
            "PATH",
            std::env::var_os("PATH").unwrap_or_else(|| DEFAULT_PATH.into()),
        )
        .env("LC_ALL", "C")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

/// Run a tool, feeding `input` on stdin; error with its stderr when it fails.
fn run(mut cmd: Command, what: &'static str, input: Option<&[u8]>) -> Result<(), UsersError> {
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let mut child = cmd.spawn().map_err(|e| UsersError::Tool {
        tool: what,
        message: format!("cannot start: {e}"),
    })?;
    if let (Some(data), Some(mut stdin)) = (input, child.stdin.take()) {
        // A write error shows up as the tool's failure below.
        let _ = stdin.write_all(data);
    }
    let out = child.wait_with_output().map_err(|e| UsersError::Tool {
        tool: what,
        message: e.to_string(),
    })?;
    if out.status.success() {
        Ok(())
    } else {
        let mut message = format!(
            "{} ({})",
            String::from_utf8_lossy(&out.stderr).trim(),
            out.status
        );
        if etc_is_read_only() {
            message.push_str(
                "; /etc is on a read-only filesystem (a --read-only container?): adding or \
                 changing users needs a writable /etc and /home (see docs/deploy.md)",
            );
        }
        Err(UsersError::Tool {
            tool: what,
            message,
        })
    }
}

/// True when /etc cannot be written because its filesystem is mounted read-only.
fn etc_is_read_only() -> bool {
    nix::sys::statvfs::statvfs("/etc")
        .map(|s| s.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY))
        .unwrap_or(false)
}

/// Lowest uid given to a login user (login.defs' UID_MIN).
const UID_MIN: u32 = 1000;

/// The uid for a new login user the manifest gives none: the owner of their existing home
/// when no account holds that uid (after a rebuild on the same `/home` volume the account
/// comes back to its own files, whatever order users are created in), else one above every
/// account's and every home owner's uid (a new user never inherits a departed user's
/// files). `None`: let useradd choose. Pure.
pub fn choose_uid(home_owner: Option<u32>, taken: &[u32], home_owners: &[u32]) -> Option<u32> {
    if let Some(owner) = home_owner.filter(|o| *o >= UID_MIN && !taken.contains(o)) {
        return Some(owner);
    }
    let top = taken
        .iter()
        .chain(home_owners)
        .copied()
        .filter(|u| (UID_MIN..60000).contains(u))
        .max()?;
    Some(top + 1)
}

/// [`choose_uid`] with the facts of /etc/passwd and /home.
fn pick_uid(name: &str) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    let taken: Vec<u32> = std::fs::read_to_string("/etc/passwd")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(':').nth(2)?.parse().ok())
        .collect();
    let home_owners: Vec<u32> = std::fs::read_dir("/home")
        .map(|d| {
            d.flatten()
                .filter_map(|e| std::fs::symlink_metadata(e.path()).ok())
                .map(|m| m.uid())
                .collect()
        })
        .unwrap_or_default();
    let own = std::fs::symlink_metadata(Path::new("/home").join(name))
        .ok()
        .filter(|m| m.is_dir())
        .map(|m| m.uid());
    if let Some(o) = own.filter(|o| taken.contains(o)) {
        log::warn!(
            "users: /home/{name} belongs to uid {o}, which another account holds; {name} gets a new uid and cannot use those files (fix the owner by hand)"
        );
    }
    choose_uid(own, &taken, &home_owners)
}

/// `useradd -m -l -s /bin/bash -c <marker> [-u UID] NAME`
pub fn useradd(user: &NewUser) -> Result<(), UsersError> {
    let mut cmd = tool("useradd");
    // A login user's home is theirs alone: each has an opencode of their own there.
    cmd.args([
        "-m",
        "-K",
        "HOME_MODE=0750",
        "-l",
        "-s",
        "/bin/bash",
        "-c",
        MANAGED_GECOS,
    ]);
    if let Some(uid) = user.uid.or_else(|| pick_uid(&user.name)) {
        cmd.arg("-u").arg(uid.to_string());
    }
    cmd.arg("--").arg(&user.name);
    run(cmd, "useradd", None)
}

/// Make a login user's home unreadable to other users (no bits for others, no group
/// write): each user's opencode keeps their sessions and provider keys there. Opened
/// without following a symlink. Returns the old mode when it changed.
pub fn private_home(path: &std::path::Path) -> Result<Option<u32>, UsersError> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let dir = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| UsersError::io(path, e))?;
    let mode = dir.metadata().map_err(|e| UsersError::io(path, e))?.mode() & 0o7777;
    let private = mode & !0o027;
    if private == mode {
        return Ok(None);
    }
    // SAFETY: fchmod on a descriptor we own.
    if unsafe { libc::fchmod(dir.as_raw_fd(), private) } != 0 {
        return Err(UsersError::io(path, std::io::Error::last_os_error()));
    }
    Ok(Some(mode))
}

/// `useradd --system` for a service account: no home, no login shell, a group of its own.
pub fn useradd_system(name: &str) -> Result<(), UsersError> {
    let nologin = ["/usr/sbin/nologin", "/sbin/nologin", "/bin/false"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .unwrap_or("/bin/false");
    let mut cmd = tool("useradd");
    cmd.args([
        "--system",
        "--no-create-home",
        "--home-dir",
        "/nonexistent",
        "--shell",
        nologin,
        "--user-group",
        "--",
        name,
    ]);
    run(cmd, "useradd", None)
}

/// One `chpasswd -e` for a batch of `(name, shadow field)` pairs. The fields were validated
/// (no `:`, newline or whitespace), so each line is exactly one record.
pub fn chpasswd_encrypted(batch: &[(String, String)]) -> Result<(), UsersError> {
    if batch.is_empty() {
        return Ok(());
    }
    let mut input = Vec::with_capacity(batch.len() * 128);
    for (name, shadow) in batch {
        input.extend_from_slice(name.as_bytes());
        input.push(b':');
        input.extend_from_slice(shadow.as_bytes());
        input.push(b'\n');
    }
    let mut cmd = tool("chpasswd");
    cmd.arg("-e");
    let result = run(cmd, "chpasswd -e", Some(&input));
    wipe(&mut input);
    result
}

/// Set a plaintext password with `chpasswd`, letting the system hash it (yescrypt on
/// Ubuntu 24.04). The caller reads the resulting hash back from /etc/shadow.
pub fn chpasswd_plain(name: &str, password: &str) -> Result<(), UsersError> {
    let mut input = Vec::with_capacity(name.len() + password.len() + 2);
    input.extend_from_slice(name.as_bytes());
    input.push(b':');
    input.extend_from_slice(password.as_bytes());
    input.push(b'\n');
    let result = run(tool("chpasswd"), "chpasswd", Some(&input));
    wipe(&mut input);
    result
}

/// Overwrite a buffer that held a secret.
pub fn wipe(buf: &mut [u8]) {
    for b in buf.iter_mut() {
        // SAFETY: a volatile write to a valid &mut u8, so the compiler keeps it.
        unsafe { std::ptr::write_volatile(b, 0) };
    }
}

/// Apply a plan, failing closed: locks of existing users first (one `chpasswd -e`), then
/// every `useradd`, then the remaining shadow changes for the users that exist. A failing
/// tool does not stop the rest: whatever can be applied is, and the first error is returned.
pub fn apply(plan: &Plan) -> Result<(), UsersError> {
    let (first, rest) = order(plan);
    let mut first_error = None;
    if let Err(e) = chpasswd_encrypted(&first) {
        first_error.get_or_insert(e);
    }
    let mut failed = std::collections::HashSet::new();
    for user in &plan.create {
        if let Err(e) = useradd(user) {
            log::error!("users: {e}");
            failed.insert(user.name.as_str());
            first_error.get_or_insert(e);
        }
    }
    let rest: Vec<(String, String)> = rest
        .into_iter()
        .filter(|(name, _)| !failed.contains(name.as_str()))
        .collect();
    if let Err(e) = chpasswd_encrypted(&rest) {
        first_error.get_or_insert(e);
    }
    first_error.map_or(Ok(()), Err)
}

/// `(name, shadow field)` lines for one `chpasswd -e`.
pub type ShadowBatch = Vec<(String, String)>;

/// Split the shadow changes: locks of users that already exist (applied before anything
/// else), and the rest (after the users are created). Pure.
pub fn order(plan: &Plan) -> (ShadowBatch, ShadowBatch) {
    let new: std::collections::HashSet<&str> =
        plan.create.iter().map(|u| u.name.as_str()).collect();
    plan.set_shadow.iter().cloned().partition(|(name, shadow)| {
        crate::manifest::is_locked_hash(shadow) && !new.contains(name.as_str())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uids_follow_homes_and_never_reuse_a_departed_users() {
        // alice (1002) was removed; bob's home is 1003's: bob gets 1003 back, not 1002.
        assert_eq!(
            choose_uid(Some(1003), &[0, 1001], &[1001, 1002, 1003]),
            Some(1003)
        );
        // A new user: above every account and every home owner.
        assert_eq!(
            choose_uid(None, &[0, 1001], &[1001, 1002, 1003]),
            Some(1004)
        );
        // A home owned by an account's uid is not taken over.
        assert_eq!(choose_uid(Some(1001), &[1001], &[1001]), Some(1002));
        // Root-owned or system homes do not pick the uid.
        assert_eq!(choose_uid(Some(0), &[1001], &[]), Some(1002));
        // Nothing in range: useradd's own choice.
        assert_eq!(choose_uid(None, &[0, 65534], &[]), None);
    }

    #[test]
    fn locks_of_existing_users_go_first() {
        let plan = Plan {
            create: vec![NewUser {
                name: "carol".into(),
                uid: None,
            }],
            set_shadow: vec![
                ("alice".into(), "!$y$j9T$a".into()),
                ("bob".into(), "$y$j9T$b".into()),
                ("carol".into(), "!$y$j9T$c".into()),
            ],
            ..Plan::default()
        };
        let (first, rest) = order(&plan);
        assert_eq!(first, vec![("alice".to_string(), "!$y$j9T$a".to_string())]);
        assert_eq!(rest.len(), 2);
    }
}
