//! Shared harness for integration tests: runs the real occ-init binary as PID 1 of a new
//! PID namespace (or as a subreaper), with a deadline on everything and a kill on drop.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

pub mod front;
pub mod http;
pub mod sandbox;
pub mod tls;

pub const OCC_INIT: &str = env!("CARGO_BIN_EXE_occ-init");
pub const OCC_PROXY: &str = env!("CARGO_BIN_EXE_occ-proxy");
pub const CHILD: &str = env!("CARGO_BIN_EXE_occ-test-child");

/// Default deadline for anything a test waits for.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// How occ-init is started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// PID 1 of a fresh PID + mount namespace (`unshare --pid --fork --mount-proc`).
    Pid1,
    /// A plain child of the test: occ-init registers as child subreaper.
    Subreaper,
}

/// A running occ-init under test. Dropping it kills it and everything below it.
pub struct Init {
    child: Child,
    mode: Mode,
    lines: Receiver<String>,
    stderr: Receiver<String>,
    stderr_seen: Vec<String>,
}

impl Init {
    /// Start `occ-init ARGS...` in `mode` with extra environment.
    pub fn start_env(mode: Mode, args: &[&str], env: &[(&str, &str)]) -> Init {
        let mut cmd = match mode {
            Mode::Pid1 => {
                let mut c = Command::new("unshare");
                c.args(["--pid", "--fork", "--mount-proc", "--kill-child", OCC_INIT]);
                c
            }
            Mode::Subreaper => Command::new(OCC_INIT),
        };
        cmd.args(args)
            .env("OCC_LOG", "debug")
            // PID-1 tests must never restore users from a real manifest on the host.
            .env("OCC_USERS_FILE", "/nonexistent/occ-test/users.toml")
            .env("OCC_LEGACY_USERS_DIR", "/nonexistent/occ-test/legacy")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        Init::attach(cmd.spawn().expect("start occ-init"), mode)
    }

    /// Wrap an already started process (stdout and stderr piped).
    pub fn attach(mut child: Child, mode: Mode) -> Init {
        let lines = pump(child.stdout.take().expect("stdout"));
        let stderr = pump(child.stderr.take().expect("stderr"));
        Init {
            child,
            mode,
            lines,
            stderr,
            stderr_seen: Vec::new(),
        }
    }

    /// Wait for a stderr (log) line containing `needle`; returns the line.
    pub fn expect_log(&mut self, needle: &str) -> String {
        self.expect_log_within(needle, DEADLINE)
    }

    pub fn expect_log_within(&mut self, needle: &str, limit: Duration) -> String {
        if let Some(l) = self.stderr_seen.iter().find(|l| l.contains(needle)) {
            return l.clone();
        }
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(line) => {
                    self.stderr_seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(e) => panic!(
                    "no log line containing {needle:?} ({e:?}); log so far:\n{}",
                    self.stderr_seen.join("\n")
                ),
            }
        }
    }

    /// How many log lines so far contain `needle` (after collecting what has arrived).
    pub fn count_log(&mut self, needle: &str) -> usize {
        self.stderr_text();
        self.stderr_seen
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    pub fn start(mode: Mode, args: &[&str]) -> Init {
        Init::start_env(mode, args, &[])
    }

    /// `occ-init run -- occ-test-child ARGS...`
    pub fn run_child(mode: Mode, child_args: &[&str]) -> Init {
        let mut args = vec!["run", "--", CHILD];
        args.extend_from_slice(child_args);
        Init::start(mode, &args)
    }

    /// Host pid of the occ-init process itself.
    pub fn init_pid(&self) -> Pid {
        let outer = self.child.id() as i32;
        if self.mode == Mode::Subreaper {
            return Pid::from_raw(outer);
        }
        let deadline = Instant::now() + DEADLINE;
        loop {
            let table = occ_init::init::procs::process_table();
            if let Some(&(pid, _)) = table.iter().find(|&&(_, ppid)| ppid == outer) {
                return Pid::from_raw(pid);
            }
            assert!(
                Instant::now() < deadline,
                "occ-init never started under unshare"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    pub fn signal(&self, sig: Signal) {
        kill(self.init_pid(), sig).expect("signal occ-init");
    }

    /// Wait for a stdout line containing `needle`; returns the line.
    pub fn expect_line(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => continue,
                Err(e) => panic!(
                    "no line containing {needle:?} ({e:?}); stderr: {:?}",
                    self.stderr_text()
                ),
            }
        }
    }

    /// Lines printed on stdout within `wait`.
    pub fn lines_within(&mut self, wait: Duration) -> Vec<String> {
        let deadline = Instant::now() + wait;
        let mut out = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => out.push(line),
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => return out,
            }
        }
    }

    /// Wait for occ-init to exit within `limit`; panics (and kills it) past that.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                self.drain_stderr(Duration::from_secs(2));
                return status;
            }
            if Instant::now() > deadline {
                self.kill_all();
                panic!(
                    "occ-init did not exit within {limit:?}; stderr: {:?}",
                    self.stderr_text()
                );
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Exit code, asserting occ-init exited normally.
    pub fn exit_code(&mut self, limit: Duration) -> i32 {
        let status = self.wait_exit(limit);
        status
            .code()
            .unwrap_or_else(|| panic!("occ-init was killed: {status:?}"))
    }

    /// Everything occ-init (and the child) wrote on stderr so far.
    pub fn stderr_text(&mut self) -> String {
        while let Ok(line) = self.stderr.try_recv() {
            self.stderr_seen.push(line);
        }
        self.stderr_seen.join("\n")
    }

    /// Collect stderr until its writers have all closed it (bounded by `limit`).
    fn drain_stderr(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(line) => self.stderr_seen.push(line),
                Err(_) => return,
            }
        }
    }

    fn kill_all(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let root = self.child.id() as i32;
            for pid in
                occ_init::init::procs::descendants(&occ_init::init::procs::process_table(), root)
            {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Drop for Init {
    fn drop(&mut self) {
        self.kill_all();
    }
}

fn pump<R: Read + Send + 'static>(r: R) -> Receiver<String> {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Is a host process alive (and not a zombie)?
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => occ_init::init::procs::parse_state(&stat) != Some('Z'),
        Err(_) => false,
    }
}

/// Poll `cond` until true or `limit` passes.
pub fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    cond()
}
