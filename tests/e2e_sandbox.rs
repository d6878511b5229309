//! End to end through the sandbox boot (image/sandbox): the same root filesystem the image
//! has, occ-init as PID 1 (and as PID 2 under `tini -s`, like Compose's `init: true`), the real
//! opencode, a users manifest directory mounted from the host.
//! Needs root, debootstrap access to Debian's mirror and the opencode npm package (tests/run
//! prepares both); set OCC_SKIP_SANDBOX_E2E=1 to skip it outside CI.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::sandbox::{text, wait_output};
use support::{Init, Mode};

const SANDBOX: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/image/sandbox");

fn skip() -> bool {
    if std::env::var_os("OCC_SKIP_SANDBOX_E2E").is_some() {
        assert!(
            std::env::var_os("CI").is_none(),
            "the sandbox end-to-end test must run in CI"
        );
        eprintln!("SKIPPED: OCC_SKIP_SANDBOX_E2E is set");
        return true;
    }
    false
}

/// `image/sandbox run` in the background, its log readable through Init's helpers.
fn boot(name: &str, users: &Path, extra: &[&str]) -> Init {
    let mut cmd = Command::new(SANDBOX);
    cmd.args(["run", "--name", name, "--users"])
        .arg(users)
        // tests/run built the sandbox's binaries once; no rebuild at every boot.
        .env("OCC_SANDBOX_PREBUILT", "1")
        .args(["-e", "OCC_LOG=info", "-e", "OCC_STOP_GRACE=5s"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    Init::attach(cmd.spawn().expect("image/sandbox run"), Mode::Subreaper)
}

fn exec(name: &str, args: &[&str], input: Option<&str>) -> Output {
    let mut child = Command::new(SANDBOX)
        .args(["exec", name])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("image/sandbox exec");
    if let (Some(mut stdin), Some(data)) = (child.stdin.take(), input) {
        use std::io::Write;
        let _ = stdin.write_all(data.as_bytes());
    }
    wait_output(child, Duration::from_secs(60))
}

fn stop(name: &str) {
    let out = Command::new(SANDBOX).args(["stop", name]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
}

fn shadow_hash(state: &Path, user: &str) -> Option<String> {
    let shadow = std::fs::read_to_string(state.join("upper/etc/shadow")).ok()?;
    shadow
        .lines()
        .find(|l| l.starts_with(&format!("{user}:")))
        .and_then(|l| l.split(':').nth(1).map(str::to_string))
}

fn state_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(".cache/sandbox")
        .join(name)
}

/// `occ-init health` says ready within two minutes (per user: the proxy answers and the gate
/// is open; each user's opencode starts on their first request).
fn healthy(name: &str) -> bool {
    support::eventually(Duration::from_secs(120), || {
        exec(name, &["occ-init", "health"], None).status.code() == Some(0)
    })
}

#[test]
fn gated_boot_first_user_pam_stop_and_restore() {
    if skip() {
        return;
    }
    let name = format!("e2e-{}", std::process::id());
    let users = tempfile::tempdir().unwrap();
    let first_boot = Duration::from_secs(600); // may include debootstrap and a release build
    let mut init = boot(&name, users.path(), &["--fresh"]);
    init.expect_log_within("opencode is not started", first_boot);
    let status = exec(&name, &["occ-init", "status"], None);
    assert!(
        text(&status).contains("Warning: Network exposed without authentication!"),
        "{}",
        text(&status)
    );
    assert_eq!(
        exec(&name, &["occ-init", "health", "--live"], None)
            .status
            .code(),
        Some(0)
    );
    assert_eq!(
        exec(&name, &["occ-init", "health"], None).status.code(),
        Some(1)
    );

    let add = exec(
        &name,
        &["occ-init", "user", "add", "alice", "--password-stdin"],
        Some("alice's password\n"),
    );
    assert_eq!(add.status.code(), Some(0), "{}", text(&add));
    let manifest = std::fs::read_to_string(users.path().join("users.toml")).unwrap();
    assert!(manifest.contains("name = \"alice\""));
    assert!(healthy(&name), "never healthy");
    assert_eq!(
        exec(&name, &["occ-init", "health"], None).status.code(),
        Some(0)
    );
    let verify = exec(
        &name,
        &["occ-init", "user", "verify", "alice"],
        Some("alice's password\n"),
    );
    assert_eq!(verify.status.code(), Some(0), "{}", text(&verify));
    // Her first request starts her own opencode, as alice, in the image's layout.
    let auth = support::http::b64("alice:alice's password");
    let get = exec(
        &name,
        &[
            "bash",
            "-c",
            &format!(
                "exec 3<>/dev/tcp/127.0.0.1/3000; printf 'GET /session HTTP/1.0\\r\\nAuthorization: Basic {auth}\\r\\n\\r\\n' >&3; timeout 60 cat <&3"
            ),
        ],
        None,
    );
    assert!(text(&get).contains(" 200 OK"), "{}", text(&get));
    // Terminals work in the image's layout (a pty of the container's own devpts).
    let pty = exec(
        &name,
        &[
            "bash",
            "-c",
            &format!(
                "exec 3<>/dev/tcp/127.0.0.1/3000; printf 'POST /pty HTTP/1.0\\r\\nAuthorization: Basic {auth}\\r\\nContent-Type: application/json\\r\\nContent-Length: 2\\r\\n\\r\\n{{}}' >&3; timeout 60 cat <&3"
            ),
        ],
        None,
    );
    assert!(text(&pty).contains("\"id\":\"pty_"), "{}", text(&pty));
    let list = exec(&name, &["occ-init", "instance", "list", "--json"], None);
    let v: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(v["instances"][0]["user"], "alice", "{v}");
    assert_eq!(v["instances"][0]["state"], "ready", "{v}");
    let ps = exec(
        &name,
        &[
            "ps",
            "-o",
            "user=",
            "-p",
            &v["instances"][0]["pid"].to_string(),
        ],
        None,
    );
    assert_eq!(
        String::from_utf8_lossy(&ps.stdout).trim(),
        "alice",
        "{}",
        text(&ps)
    );
    let hash =
        shadow_hash(&state_dir(&name), "alice").expect("alice in the container's /etc/shadow");
    assert!(manifest.contains(&hash));

    let t = Instant::now();
    stop(&name);
    let code = init.exit_code(Duration::from_secs(60));
    assert!(code == 143 || code == 137, "exit {code}");
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "stop took {:?}",
        t.elapsed()
    );

    // Same container started again: alice is in sync, nothing re-created.
    let mut init = boot(&name, users.path(), &[]);
    init.expect_log_within(
        "users: 0 created, 0 updated, 0 locked (left the manifest), 1 unchanged",
        Duration::from_secs(120),
    );
    assert!(healthy(&name), "never healthy");
    stop(&name);
    init.exit_code(Duration::from_secs(60));

    // A rebuilt container (fresh /etc) from the same manifest: alice restored with the same hash.
    let mut init = boot(&name, users.path(), &["--fresh"]);
    init.expect_log_within("users: 1 created", Duration::from_secs(120));
    assert!(healthy(&name), "never healthy");
    assert_eq!(
        shadow_hash(&state_dir(&name), "alice").as_deref(),
        Some(hash.as_str())
    );
    let verify = exec(
        &name,
        &["occ-init", "user", "verify", "alice"],
        Some("alice's password\n"),
    );
    assert_eq!(verify.status.code(), Some(0), "{}", text(&verify));
    stop(&name);
    init.exit_code(Duration::from_secs(60));
    let _ = std::fs::remove_dir_all(state_dir(&name));
}

#[test]
fn pid2_under_tini_like_compose_init_true() {
    if skip() {
        return;
    }
    let name = format!("e2e-tini-{}", std::process::id());
    let users = tempfile::tempdir().unwrap();
    let mut init = boot(
        &name,
        users.path(),
        &[
            "--fresh",
            "--init",
            "-e",
            "OCC_BIND_ADDRESS=127.0.0.1",
            "-e",
            "OCC_LOG=debug",
        ],
    );
    init.expect_log_within("registered as child subreaper", Duration::from_secs(600));
    assert!(healthy(&name), "never healthy");
    let ps = exec(&name, &["ps", "-eo", "pid,comm"], None);
    let ps = String::from_utf8_lossy(&ps.stdout).into_owned();
    assert!(
        ps.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["1", "tini"]),
        "{ps}"
    );
    assert_eq!(
        exec(&name, &["occ-init", "health"], None).status.code(),
        Some(0)
    );
    assert!(
        !init.stderr_text().contains("warn"),
        "{}",
        init.stderr_text()
    );
    stop(&name);
    let code = init.exit_code(Duration::from_secs(60));
    assert!(code == 143 || code == 137, "exit {code}");
    let _ = std::fs::remove_dir_all(state_dir(&name));
}
