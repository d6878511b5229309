//! A users sandbox: a private copy of the whole /etc and an empty /home, bind-mounted over
//! the real ones inside a new mount + PID namespace for each command, so tests can create
//! users for real without touching the host. Host /etc/passwd and /etc/shadow are checked
//! to be unchanged when the sandbox is dropped.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::{CHILD, OCC_INIT};

pub struct Sandbox {
    pub dir: tempfile::TempDir,
    host_passwd: Vec<u8>,
    host_shadow: Vec<u8>,
    /// Extra environment for every command.
    pub env: Vec<(String, String)>,
    /// Extra shell run inside the namespaces before occ-init (e.g. read-only mounts).
    pub prelude: String,
}

impl Sandbox {
    pub fn new() -> Sandbox {
        let dir = tempfile::tempdir().expect("tempdir");
        let host_passwd = std::fs::read("/etc/passwd").expect("read /etc/passwd");
        let host_shadow = std::fs::read("/etc/shadow").expect("read /etc/shadow");
        let status = Command::new("cp")
            .args(["-a", "/etc"])
            .arg(dir.path().join("etc"))
            .status()
            .expect("cp /etc");
        assert!(status.success());
        let pam = Path::new(env!("CARGO_MANIFEST_DIR")).join("rootfs/etc/pam.d/opencode");
        std::fs::copy(&pam, dir.path().join("etc/pam.d/opencode")).expect("install pam service");
        for d in ["home", "occ", "legacy", "shims"] {
            std::fs::create_dir_all(dir.path().join(d)).expect("mkdir");
        }
        Sandbox {
            dir,
            host_passwd,
            host_shadow,
            env: Vec::new(),
            prelude: String::new(),
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn manifest(&self) -> PathBuf {
        self.path("occ/users.toml")
    }

    pub fn etc_file(&self, name: &str) -> String {
        std::fs::read_to_string(self.path("etc").join(name)).expect("read sandbox etc")
    }

    /// The shadow field of `user` in the sandbox, if present.
    pub fn shadow_of(&self, user: &str) -> Option<String> {
        self.etc_file("shadow")
            .lines()
            .find(|l| l.split(':').next() == Some(user))
            .and_then(|l| l.split(':').nth(1).map(str::to_string))
    }

    pub fn passwd_line(&self, user: &str) -> Option<String> {
        self.etc_file("passwd")
            .lines()
            .find(|l| l.split(':').next() == Some(user))
            .map(str::to_string)
    }

    /// Put logging wrappers for useradd/chpasswd first on PATH: each call appends its argv
    /// and environment to shims/calls.log, then runs the real tool.
    pub fn install_shims(&mut self) {
        let log = self.path("shims/calls.log");
        for tool in ["useradd", "chpasswd"] {
            let real = which(tool);
            let script = format!(
                "#!/bin/sh\n{{ echo \"CALL {tool} $*\"; env; }} >> '{}'\nexec {} \"$@\"\n",
                log.display(),
                real.display()
            );
            let p = self.path("shims").join(tool);
            std::fs::write(&p, script).expect("write shim");
            let _ = Command::new("chmod").arg("+x").arg(&p).status();
        }
        self.env.push((
            "PATH".into(),
            format!(
                "{}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                self.path("shims").display()
            ),
        ));
    }

    pub fn shim_log(&self) -> String {
        std::fs::read_to_string(self.path("shims/calls.log")).unwrap_or_default()
    }

    /// `occ-init ARGS` inside the sandbox, stdin fed from `input`, with a deadline.
    pub fn occ(&self, args: &[&str], input: Option<&str>) -> Output {
        let mut all = vec![OCC_INIT];
        all.extend_from_slice(args);
        self.run(&all, input, &[])
    }

    pub fn occ_env(&self, args: &[&str], input: Option<&str>, env: &[(&str, &str)]) -> Output {
        let mut all = vec![OCC_INIT];
        all.extend_from_slice(args);
        self.run(&all, input, env)
    }

    /// Boot `occ-init ARGS` as PID 1 of the sandbox (stdin closed), for supervision tests.
    pub fn boot(&self, args: &[&str], env: &[(&str, &str)]) -> super::Init {
        let mut all = vec![OCC_INIT];
        all.extend_from_slice(args);
        let mut child = self.spawn(&all, env);
        drop(child.stdin.take());
        super::Init::attach(child, super::Mode::Pid1)
    }

    /// `docker exec`: run `occ-init ARGS` inside the namespaces of a running sandbox PID 1.
    pub fn exec(&self, init: &super::Init, args: &[&str], input: Option<&str>) -> Output {
        let pid = init.init_pid().as_raw().to_string();
        let mut cmd = Command::new("nsenter");
        cmd.args(["--target", &pid, "--pid", "--mount", "--", OCC_INIT])
            .args(args)
            .env("OCC_USERS_FILE", self.manifest())
            .env("OCC_LEGACY_USERS_DIR", self.path("legacy"))
            .env("OCC_ADMIN_SOCKET", self.path("run/admin.sock"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("nsenter");
        if let Some(mut stdin) = child.stdin.take() {
            if let Some(data) = input {
                let _ = stdin.write_all(data.as_bytes());
            }
        }
        wait_output(child, Duration::from_secs(60))
    }

    /// Create the service user `opencoder` in the sandbox's /etc, as the image does.
    pub fn add_service_user(&self) {
        let out = self.run(
            &["useradd", "-m", "-l", "-s", "/bin/bash", "opencoder"],
            None,
            &[],
        );
        assert!(out.status.success(), "{}", text(&out));
    }

    /// Start `occ-init ARGS` in the sandbox with a pty as its controlling terminal; returns the
    /// child and the pty's master side (to type into and read from).
    pub fn spawn_on_pty(&self, args: &[&str]) -> (std::process::Child, std::fs::File) {
        use std::os::unix::process::CommandExt;
        let pty = nix::pty::openpty(None, None).expect("openpty");
        let mut all = vec![OCC_INIT];
        all.extend_from_slice(args);
        let mut cmd = self.command(&all, &[]);
        let slave = pty.slave;
        cmd.stdin(Stdio::from(slave.try_clone().expect("dup")))
            .stdout(Stdio::from(slave.try_clone().expect("dup")))
            .stderr(Stdio::from(slave));
        // SAFETY: setsid and ioctl are async-signal-safe; they make the pty our terminal.
        unsafe {
            cmd.pre_exec(|| {
                nix::unistd::setsid().map_err(std::io::Error::from)?;
                if libc::ioctl(0, libc::TIOCSCTTY, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        (
            cmd.spawn().expect("spawn on pty"),
            std::fs::File::from(pty.master),
        )
    }

    /// Start a command inside the sandbox without waiting (for concurrency and kill tests).
    pub fn spawn(&self, argv: &[&str], env: &[(&str, &str)]) -> std::process::Child {
        let mut cmd = self.command(argv, env);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd.spawn().expect("spawn in sandbox")
    }

    /// The command that runs `argv` inside the sandbox's namespaces (stdio not set).
    fn command(&self, argv: &[&str], env: &[(&str, &str)]) -> Command {
        let script = format!(
            "mount --bind \"$1\" /etc && mount --bind \"$2\" /home && shift 2 && {} exec \"$@\"",
            self.prelude
        );
        let mut cmd = Command::new("unshare");
        cmd.args([
            "--mount",
            "--propagation",
            "private",
            "--pid",
            "--fork",
            "--mount-proc",
            "--kill-child",
        ])
        .args(["sh", "-c", &script, "sh"])
        .arg(self.path("etc"))
        .arg(self.path("home"))
        .args(argv)
        .env("OCC_USERS_FILE", self.manifest())
        .env("OCC_LEGACY_USERS_DIR", self.path("legacy"))
        .env("OCC_ADMIN_SOCKET", self.path("run/admin.sock"))
        .env("OCC_LOG", "info");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd
    }

    pub fn run(&self, argv: &[&str], input: Option<&str>, env: &[(&str, &str)]) -> Output {
        let mut child = self.spawn(argv, env);
        if let Some(mut stdin) = child.stdin.take() {
            if let Some(data) = input {
                let _ = stdin.write_all(data.as_bytes());
            }
        }
        wait_output(child, Duration::from_secs(60))
    }

    /// Host files must be exactly as they were.
    pub fn assert_host_untouched(&self) {
        assert_eq!(
            std::fs::read("/etc/passwd").expect("passwd"),
            self.host_passwd,
            "host /etc/passwd changed"
        );
        assert_eq!(
            std::fs::read("/etc/shadow").expect("shadow"),
            self.host_shadow,
            "host /etc/shadow changed"
        );
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            self.assert_host_untouched();
        }
    }
}

fn which(tool: &str) -> PathBuf {
    for dir in ["/usr/sbin", "/usr/bin", "/sbin", "/bin"] {
        let p = Path::new(dir).join(tool);
        if p.exists() {
            return p;
        }
    }
    panic!("{tool} not installed");
}

/// Wait for a child with a deadline; kill it (and fail) past the deadline.
pub fn wait_output(child: std::process::Child, limit: Duration) -> Output {
    let pid = child.id() as i32;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out.expect("wait"),
        Err(_) => {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            let _ = rx.recv_timeout(Duration::from_secs(5));
            panic!("command did not finish within {limit:?}");
        }
    }
}

/// stdout + stderr as one string, for messages.
pub fn text(out: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The host pid of the process that is `ns_pid` inside the PID namespace of `init`.
pub fn host_pid_of(init: &super::Init, ns_pid: i32) -> i32 {
    let root = init.init_pid().as_raw();
    let ns = std::fs::read_link(format!("/proc/{root}/ns/pid")).expect("pid ns of init");
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if std::fs::read_link(format!("/proc/{pid}/ns/pid")).ok() != Some(ns.clone()) {
            continue;
        }
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let inner = status
            .lines()
            .find_map(|l| l.strip_prefix("NSpid:"))
            .and_then(|v| v.split_whitespace().last())
            .and_then(|v| v.parse::<i32>().ok());
        if inner == Some(ns_pid) {
            return pid;
        }
    }
    panic!("no process {ns_pid} in the namespace of {root}");
}

/// Deadline helper for loops in tests.
pub fn until(limit: Duration) -> impl Fn() -> bool {
    let end = Instant::now() + limit;
    move || Instant::now() < end
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A sandbox with the service user and a config file; returns (sandbox, port). opencode
/// listens on `port` itself (`auth = 'opencode'`) unless `extra` sets `auth`; the proxy's
/// auth socket is inside the sandbox either way.
pub fn setup(host: &str, behavior: &str, extra: &str) -> (Sandbox, u16) {
    let mut extra = extra.to_string();
    if !extra.lines().any(|l| l.trim_start().starts_with("auth =")) {
        extra.push_str("\nauth = 'opencode'\n");
    }
    let sb = Sandbox::new();
    let extra = format!(
        "{extra}\nauth_socket = '{}'\n",
        sb.path("proxy/auth.sock").display()
    );
    setup_in(sb, host, behavior, &extra)
}

fn setup_in(mut sb: Sandbox, host: &str, behavior: &str, extra: &str) -> (Sandbox, u16) {
    sb.add_service_user();
    let port = free_port();
    let starts = sb.path("occ/starts.log");
    std::fs::write(
        sb.path("occ/init.toml"),
        format!(
            "command = ['{CHILD}', 'fake-opencode', '--behavior', '{behavior}', '--starts', '{}']\n\
             host = '{host}'\nport = {port}\nadmin_socket = '{}'\n\
             restart_backoff_initial = '200ms'\nstop_grace = '2s'\n{extra}",
            starts.display(),
            sb.path("run/admin.sock").display()
        ),
    )
    .unwrap();
    // The service user must be able to append to the starts log.
    std::fs::write(&starts, "").unwrap();
    let _ = std::process::Command::new("chmod")
        .args(["666"])
        .arg(&starts)
        .status();
    let _ = std::process::Command::new("chmod")
        .args(["755"])
        .arg(sb.path("occ"))
        .status();
    let _ = std::process::Command::new("chmod")
        .args(["755"])
        .arg(sb.dir.path())
        .status();
    sb.env.push((
        "OCC_CONFIG".into(),
        sb.path("occ/init.toml").display().to_string(),
    ));
    (sb, port)
}

pub fn starts(sb: &Sandbox) -> Vec<(i32, u32)> {
    std::fs::read_to_string(sb.path("occ/starts.log"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some((f.get(1)?.parse().ok()?, f.get(2)?.parse().ok()?))
        })
        .collect()
}
