//! PID-1 behaviour of the real binary, as PID 1 of a new PID namespace and as a subreaper:
//! tini's test matrix (exit codes, 128+sig, orphan reaping, child signal state) plus the
//! peers' known bugs (SIGCHLD storms, setsid escapes, TERM-ignoring children, terminals).

mod support;

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use support::{alive, eventually, Init, Mode, CHILD, DEADLINE, OCC_INIT};

const BOTH: [Mode; 2] = [Mode::Pid1, Mode::Subreaper];

#[test]
fn every_exit_code_passes_through() {
    for code in 0..=255 {
        let mut init = Init::run_child(Mode::Pid1, &["exit", &code.to_string()]);
        assert_eq!(init.exit_code(DEADLINE), code, "exit {code}");
    }
    for code in [0, 1, 42, 255] {
        let mut init = Init::run_child(Mode::Subreaper, &["exit", &code.to_string()]);
        assert_eq!(init.exit_code(DEADLINE), code, "subreaper exit {code}");
    }
}

#[test]
fn child_killed_by_a_signal_gives_128_plus_n() {
    for mode in BOTH {
        for (sig, code) in [("SIGKILL", 137), ("SIGSEGV", 139), ("SIGABRT", 134)] {
            let mut init = Init::run_child(mode, &["raise", sig]);
            assert_eq!(init.exit_code(DEADLINE), code, "{mode:?} {sig}");
        }
    }
}

#[test]
fn forwarded_fatal_signals_give_128_plus_n() {
    let cases = [
        (Signal::SIGTERM, 143),
        (Signal::SIGINT, 130),
        (Signal::SIGHUP, 129),
        (Signal::SIGUSR1, 138),
        (Signal::SIGUSR2, 140),
        (Signal::SIGQUIT, 131),
    ];
    for mode in BOTH {
        for (sig, code) in cases {
            let mut init = Init::run_child(mode, &["sleep", "60"]);
            init.expect_line("ready");
            init.signal(sig);
            assert_eq!(init.exit_code(DEADLINE), code, "{mode:?} {sig}");
        }
    }
}

#[test]
fn every_forwardable_signal_reaches_the_child() {
    for mode in BOTH {
        let mut init = Init::run_child(mode, &["report-signals"]);
        init.expect_line("ready");
        // Every forwarded signal but TERM (which ends the child) first; INT starts the stop.
        let mut order: Vec<Signal> = occ_init::init::signals::FORWARDED
            .into_iter()
            .filter(|s| *s != Signal::SIGTERM && *s != Signal::SIGINT)
            .collect();
        order.push(Signal::SIGINT);
        for sig in order {
            init.signal(sig);
            init.expect_line(&format!("child got {}", sig.as_str()));
        }
        init.signal(Signal::SIGTERM);
        init.expect_line("child got SIGTERM");
        // SIGINT above started the stop sequence; the child exits 0 on TERM.
        assert_eq!(init.exit_code(DEADLINE), 0, "{mode:?}");
    }
}

#[test]
fn signals_go_to_the_whole_group_or_only_the_child() {
    let mut init = Init::run_child(Mode::Pid1, &["report-signals", "--fork"]);
    init.expect_line("ready");
    init.signal(Signal::SIGUSR1);
    let lines = init.lines_within(Duration::from_millis(500));
    assert!(
        lines.contains(&"child got SIGUSR1".to_string()),
        "{lines:?}"
    );
    assert!(
        lines.contains(&"grandchild got SIGUSR1".to_string()),
        "{lines:?}"
    );

    let mut init = Init::start(
        Mode::Pid1,
        &[
            "run",
            "--forward-to",
            "child",
            "--",
            CHILD,
            "report-signals",
            "--fork",
        ],
    );
    init.expect_line("ready");
    init.signal(Signal::SIGUSR1);
    let lines = init.lines_within(Duration::from_millis(500));
    assert!(
        lines.contains(&"child got SIGUSR1".to_string()),
        "{lines:?}"
    );
    assert!(
        !lines.iter().any(|l| l.starts_with("grandchild")),
        "{lines:?}"
    );
}

#[test]
fn child_starts_with_empty_signal_mask_and_no_ignored_signals() {
    for mode in BOTH {
        // grep, not a Rust program: Rust's runtime ignores SIGPIPE in its own main().
        let mut init = Init::start(mode, &["run", "--", "grep", "^Sig", "/proc/self/status"]);
        let blk = init.expect_line("SigBlk:");
        assert_eq!(blk, "SigBlk:\t0000000000000000", "{mode:?}");
        let ign = init.expect_line("SigIgn:");
        assert_eq!(ign, "SigIgn:\t0000000000000000", "{mode:?}");
        assert_eq!(init.exit_code(DEADLINE), 0);
    }
}

#[test]
fn a_thousand_orphans_are_all_reaped() {
    for mode in BOTH {
        let mut init = Init::run_child(mode, &["orphans", "1000"]);
        assert_eq!(
            init.exit_code(Duration::from_secs(60)),
            0,
            "{mode:?}: zombies left; stderr: {}",
            init.stderr_text()
        );
    }
}

#[test]
fn sigchld_storm_does_not_hang() {
    // 10 rounds of 300 orphans exiting at the same instant.
    let mut init = Init::run_child(Mode::Pid1, &["orphans", "300", "10"]);
    assert_eq!(init.exit_code(Duration::from_secs(90)), 0);
}

#[test]
fn term_ignoring_child_is_killed_after_the_grace_period() {
    for mode in BOTH {
        let mut init = Init::start(mode, &["run", "--grace", "1s", "--", CHILD, "ignore-term"]);
        init.expect_line("ready");
        let t = Instant::now();
        init.signal(Signal::SIGTERM);
        assert_eq!(init.exit_code(DEADLINE), 137, "{mode:?}");
        let took = t.elapsed();
        assert!(
            took >= Duration::from_millis(900),
            "{mode:?} killed too early: {took:?}"
        );
        assert!(init.stderr_text().contains("grace period over"));
    }
}

#[test]
fn prompt_child_ends_pid1_without_waiting_out_the_grace() {
    // Grace of 60 s: if occ-init waited it out, the deadline below would fire.
    for mode in BOTH {
        let mut init = Init::start(mode, &["run", "--grace", "60s", "--", CHILD, "sleep", "60"]);
        init.expect_line("ready");
        init.signal(Signal::SIGTERM);
        assert_eq!(init.exit_code(Duration::from_secs(20)), 143, "{mode:?}");
    }
}

#[test]
fn setsid_grandchild_is_killed_at_shutdown() {
    for mode in BOTH {
        let mut init = Init::start(
            mode,
            &["run", "--grace", "1s", "--", CHILD, "setsid-grandchild"],
        );
        let line = init.expect_line("grandchild ");
        init.expect_line("ready");
        init.signal(Signal::SIGTERM);
        assert_eq!(init.exit_code(DEADLINE), 143, "{mode:?}");
        if mode == Mode::Subreaper {
            // As PID 1 the kernel would kill it anyway; as a subreaper only occ-init can.
            let pid: i32 = line["grandchild ".len()..].trim().parse().expect("pid");
            assert!(
                eventually(Duration::from_secs(5), || !alive(pid)),
                "setsid grandchild {pid} survived"
            );
        }
    }
}

#[test]
fn leftovers_get_term_when_the_child_exits() {
    // The child exits on its own while a setsid grandchild (TERM ignored) lives on: occ-init
    // waits for the grace period, kills it, and exits with the child's code.
    let mut init = Init::start(
        Mode::Subreaper,
        &[
            "run",
            "--grace",
            "500ms",
            "--",
            "sh",
            "-c",
            &format!("{CHILD} setsid-grandchild & sleep 0.3; exit 5"),
        ],
    );
    let line = init.expect_line("grandchild ");
    let pid: i32 = line["grandchild ".len()..].trim().parse().expect("pid");
    assert_eq!(init.exit_code(DEADLINE), 5);
    assert!(!alive(pid));
}

#[test]
fn exec_failures_give_126_and_127() {
    for mode in BOTH {
        let mut init = Init::start(mode, &["run", "--", "/nonexistent/cmd"]);
        assert_eq!(init.exit_code(DEADLINE), 127);
        assert!(init.stderr_text().contains("command not found"));
        let dir = tempfile::tempdir().expect("tempdir");
        let plain = dir.path().join("not-executable");
        std::fs::write(&plain, "#!/bin/sh\nexit 0\n").expect("write");
        let mut init = Init::start(mode, &["run", "--", plain.to_str().expect("utf-8")]);
        assert_eq!(init.exit_code(DEADLINE), 126);
        assert!(init.stderr_text().contains("not executable"));
    }
}

#[test]
fn usage_errors_exit_2_with_a_message() {
    for args in [
        &["run"][..],
        &["run", "--bogus", "--", "true"],
        &["--port", "x"],
        &["user"],
    ] {
        let mut init = Init::start(Mode::Subreaper, args);
        assert_eq!(init.exit_code(DEADLINE), 2, "{args:?}");
        assert!(!init.stderr_text().is_empty());
    }
}

#[test]
fn subreaper_mode_prints_no_warning() {
    let mut init = Init::run_child(Mode::Subreaper, &["exit", "0"]);
    assert_eq!(init.exit_code(DEADLINE), 0);
    let err = init.stderr_text();
    assert!(err.contains("registered as child subreaper"), "{err}");
    assert!(!err.contains("warn"), "{err}");
}

#[test]
fn secrets_are_not_passed_to_the_child() {
    let mut init = Init::start_env(
        Mode::Subreaper,
        &["run", "--", "env"],
        &[
            ("OCC_BOOTSTRAP_PASSWORD_HASH", "$6$canary"),
            ("KEEP_ME", "1"),
        ],
    );
    init.expect_line("KEEP_ME=1");
    assert_eq!(init.exit_code(DEADLINE), 0);
    let lines = init.lines_within(Duration::from_millis(100));
    assert!(!lines.iter().any(|l| l.contains("canary")));
}

#[test]
fn version_names_commit_date_and_rustc() {
    let mut init = Init::start(Mode::Subreaper, &["--version"]);
    init.expect_line("occ-init ");
    init.expect_line("commit:");
    init.expect_line("build date:");
    init.expect_line("rustc:");
    assert_eq!(init.exit_code(DEADLINE), 0);
}

/// Raw `kill(2)` of PID 1 with any signal number.
fn raw_signal(init: &Init, sig: i32) {
    // SAFETY: kill with integer arguments.
    assert_eq!(unsafe { libc::kill(init.init_pid().as_raw(), sig) }, 0);
}

#[test]
fn death_by_a_real_time_signal_gives_128_plus_n() {
    for mode in BOTH {
        for (name, sig) in [("RTMIN", libc::SIGRTMIN()), ("RTMAX", libc::SIGRTMAX())] {
            let script = format!("kill -s {name} $$");
            let mut init = Init::start(mode, &["run", "--", "sh", "-c", &script]);
            assert_eq!(init.exit_code(DEADLINE), 128 + sig, "{mode:?} {name}");
        }
    }
}

#[test]
fn real_time_and_kill_sent_fault_signals_are_forwarded() {
    for mode in BOTH {
        let mut init = Init::run_child(mode, &["report-signals"]);
        init.expect_line("ready");
        let rt3 = libc::SIGRTMIN() + 3;
        for sig in [
            rt3,
            libc::SIGRTMAX(),
            libc::SIGILL,
            libc::SIGABRT,
            libc::SIGSEGV,
        ] {
            raw_signal(&init, sig);
            init.expect_line(&format!("child got {}", occ_init::init::signals::name(sig)));
        }
        init.signal(Signal::SIGTERM);
        init.expect_line("child got SIGTERM");
        assert_eq!(
            init.exit_code(DEADLINE),
            0,
            "{mode:?}: occ-init survived kill -ILL"
        );
    }
}

#[test]
fn the_child_inherits_ignored_signals_like_under_tini() {
    // `trap '' HUP USR2` is what nohup and scripts do; the child must see them ignored.
    let out = std::process::Command::new("sh")
        .args([
            "-c",
            &format!("trap '' HUP USR2; exec {OCC_INIT} run -- grep ^SigIgn /proc/self/status"),
        ])
        .env("OCC_USERS_FILE", "/nonexistent/occ-test/users.toml")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let want = (1u64 << (libc::SIGHUP - 1)) | (1u64 << (libc::SIGUSR2 - 1));
    assert_eq!(text.trim(), format!("SigIgn:\t{want:016x}"), "{out:?}");
}

#[test]
fn a_non_utf8_environment_is_no_reason_to_panic() {
    use std::os::unix::ffi::OsStrExt;
    let out = std::process::Command::new(OCC_INIT)
        .args(["run", "--", "sh", "-c", "exit 7"])
        .env("X", std::ffi::OsStr::from_bytes(b"\xe9t\xe9"))
        .env("OCC_USERS_FILE", "/nonexistent/occ-test/users.toml")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(7), "{out:?}");
}

#[test]
fn pid1_leaves_its_starting_directory() {
    for mode in BOTH {
        let mut init = Init::run_child(mode, &["sleep", "60"]);
        init.expect_line("ready");
        let pid = init.init_pid().as_raw();
        assert!(
            eventually(DEADLINE, || std::fs::read_link(format!("/proc/{pid}/cwd"))
                .ok()
                == Some(std::path::PathBuf::from("/"))),
            "{mode:?}"
        );
        init.signal(Signal::SIGTERM);
        init.exit_code(DEADLINE);
    }
}

#[test]
fn cli_commands_do_not_keep_pid1s_blocked_signals() {
    // `occ-init user add NAME --password-stdin` waits for stdin: Ctrl-C must work there.
    let mut child = std::process::Command::new(OCC_INIT)
        .args(["user", "add", "someone", "--password-stdin"])
        .env("OCC_USERS_FILE", "/nonexistent/occ-test/users.toml")
        .env("OCC_ADMIN_SOCKET", "/nonexistent/occ-test/admin.sock")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut blocked = String::new();
    assert!(support::eventually(DEADLINE, || {
        blocked = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("SigBlk:"))
            .unwrap_or_default()
            .to_string();
        std::fs::read_link(format!("/proc/{pid}/fd/0")).is_ok() && !blocked.is_empty()
    }));
    std::thread::sleep(Duration::from_millis(200));
    let blocked = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("SigBlk:"))
        .unwrap_or_default()
        .to_string();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(blocked, "SigBlk:\t0000000000000000");
}

#[test]
fn a_sigpipe_occ_init_raised_itself_is_not_forwarded() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    // occ-init logs every forwarded signal at debug level to stderr; with its stderr closed
    // that write raises SIGPIPE in occ-init itself, which must not reach the child.
    let mut child = Command::new(OCC_INIT)
        .args(["run", "--", CHILD, "report-signals"])
        .env("OCC_LOG", "debug")
        .env("OCC_USERS_FILE", "/nonexistent/occ-test/users.toml")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    drop(child.stderr.take());
    let out = child.stdout.take().unwrap();
    // Whatever happens below, occ-init and its child are killed (a hung occ-init must not
    // outlive the test).
    struct KillTree(std::process::Child);
    impl Drop for KillTree {
        fn drop(&mut self) {
            let pid = self.0.id();
            let kids = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
                .unwrap_or_default();
            for kid in kids
                .split_whitespace()
                .filter_map(|k| k.parse::<i32>().ok())
            {
                // SAFETY: kill with integer arguments.
                unsafe {
                    libc::kill(-kid, libc::SIGKILL);
                    libc::kill(kid, libc::SIGKILL);
                }
            }
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let guard = KillTree(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    assert_eq!(rx.recv_timeout(DEADLINE).unwrap(), "ready");
    for _ in 0..3 {
        // SAFETY: kill with integer arguments.
        unsafe { libc::kill(pid, libc::SIGUSR1) };
        assert_eq!(rx.recv_timeout(DEADLINE).unwrap(), "child got SIGUSR1");
    }
    let late: Vec<String> = rx.try_iter().collect();
    std::thread::sleep(Duration::from_millis(300));
    let late: Vec<String> = late.into_iter().chain(rx.try_iter()).collect();
    drop(guard);
    assert!(
        !late.iter().any(|l| l.contains("SIGPIPE")),
        "occ-init forwarded its own SIGPIPE: {late:?}"
    );
}
