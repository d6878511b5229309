//! Every user is a real user (`instances = per-user`), tested as the attacker: bob, logged
//! in, goes after alice — her sessions, her files, her opencode's port and environment —
//! and the instances' life: started on demand (once), restarted alone, ended with the
//! account, stopped when idle unless busy, `max_instances`. The real occ-init as PID 1 of a
//! users sandbox, real PAM, the proxy as its own user, the real opencode and real terminals
//! over the proxy's WebSocket. Every request has a deadline.

mod support;

use std::time::{Duration, Instant};

use support::front::{
    add_user, opencode_bin, proxied, status_json, websocket, ws_read_until, ws_send,
};
use support::http::{basic, http};
use support::sandbox::{host_pid_of, text, Sandbox};
use support::{eventually, Init};

/// A per-user sandbox with the real opencode, booted, the proxy ready, `users` added.
fn per_user(extra: &str, users: &[(&str, &str)]) -> Option<(Sandbox, Init, u16)> {
    let bin = opencode_bin()?;
    let (sb, port) = proxied(
        &format!("['{bin}', 'serve']"),
        &format!("instances = 'per-user'\ninstance_start_timeout = '60s'\n{extra}"),
    );
    let mut init = sb.boot(&[], &[]);
    init.expect_log_within("proxy is ready", Duration::from_secs(30));
    for (name, pw) in users {
        add_user(&sb, &init, name, pw);
    }
    Some((sb, init, port))
}

/// `user`'s instance in `status --json`.
fn instance(sb: &Sandbox, init: &Init, user: &str) -> Option<serde_json::Value> {
    status_json(sb, init)["instances"]
        .as_array()?
        .iter()
        .find(|i| i["user"] == user)
        .cloned()
}

/// The host pid of `user`'s running opencode.
fn instance_pid(sb: &Sandbox, init: &Init, user: &str) -> Option<i32> {
    let i = instance(sb, init, user)?;
    let pid = i["pid"].as_i64()? as i32;
    Some(host_pid_of(init, pid))
}

/// Real uid of a host pid.
fn uid_of(pid: i32) -> Option<u32> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// uid of `user` in the sandbox's /etc/passwd.
fn sandbox_uid(sb: &Sandbox, user: &str) -> u32 {
    let line = sb.passwd_line(user).expect("user in passwd");
    line.split(':').nth(2).unwrap().parse().unwrap()
}

/// Open a terminal as `auth` and return its WebSocket after the shell printed `ready`.
fn terminal(port: u16, auth: &str) -> std::net::TcpStream {
    let r = http(
        port,
        "POST",
        "/pty",
        &format!("{auth}Content-Type: application/json\r\n"),
        "{}",
    );
    assert_eq!(r.status, 200, "{r:?}");
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    let id = v["id"].as_str().unwrap().to_string();
    let mut ws = websocket(port, &format!("/pty/{id}/connect"), auth).expect("terminal upgrade");
    ws_send(&mut ws, "echo rea''dy\n");
    let seen = ws_read_until(&mut ws, "ready", Duration::from_secs(20));
    assert!(seen.contains("ready"), "no shell: {seen:?}");
    ws
}

/// Run `cmd` in a terminal and return what it printed up to the marker `END`.
fn run_in(ws: &mut std::net::TcpStream, cmd: &str) -> String {
    ws_send(ws, &format!("{cmd}; echo E''ND\n"));
    ws_read_until(ws, "END", Duration::from_secs(20))
}

#[test]
fn bob_cannot_reach_alice_through_his_own_opencode() {
    let Some((sb, mut init, port)) = per_user("", &[("alice", "alice-pw-1"), ("bob", "bob-pw-22")])
    else {
        return;
    };
    let alice = basic("alice", "alice-pw-1");
    let bob = basic("bob", "bob-pw-22");
    // First requests start each user's own opencode; the API client waits for it.
    assert_eq!(http(port, "GET", "/session", &alice, "").status, 200);
    assert_eq!(http(port, "GET", "/session", &bob, "").status, 200);
    let (apid, bpid) = (
        instance_pid(&sb, &init, "alice").expect("alice's opencode"),
        instance_pid(&sb, &init, "bob").expect("bob's opencode"),
    );
    assert_eq!(
        uid_of(apid),
        Some(sandbox_uid(&sb, "alice")),
        "runs as alice"
    );
    assert_eq!(uid_of(bpid), Some(sandbox_uid(&sb, "bob")), "runs as bob");
    let st = status_json(&sb, &init);
    assert_eq!(st["layout"], "per-user");
    assert!(
        st["instances"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["user"] != "opencoder"),
        "{st}"
    );
    let opencoder = sandbox_uid(&sb, "opencoder");
    let ns_pids: Vec<i32> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|p: &i32| {
            std::fs::read_link(format!("/proc/{p}/ns/pid")).ok()
                == std::fs::read_link(format!("/proc/{}/ns/pid", init.init_pid())).ok()
        })
        .collect();
    assert!(
        ns_pids.iter().all(|p| uid_of(*p) != Some(opencoder)),
        "nothing runs as opencoder"
    );
    for i in st["instances"].as_array().unwrap() {
        for key in [
            "user",
            "state",
            "pid",
            "port",
            "started",
            "last_request",
            "rss_kib",
        ] {
            assert!(i.get(key).is_some(), "{key} in {i}");
        }
        assert!(i["rss_kib"].as_u64().unwrap() > 10_000, "{i}");
    }

    // alice's session is hers alone.
    let r = http(
        port,
        "POST",
        "/session",
        &format!("{alice}Content-Type: application/json\r\n"),
        r#"{"title":"alice's plans"}"#,
    );
    assert_eq!(r.status, 200, "{r:?}");
    let sid = serde_json::from_str::<serde_json::Value>(&r.body).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let mine = http(port, "GET", "/session", &alice, "");
    assert!(mine.body.contains(&sid));
    let theirs = http(port, "GET", "/session", &bob, "");
    assert_eq!(theirs.status, 200);
    assert!(!theirs.body.contains(&sid), "bob lists alice's session");
    assert!(!theirs.body.contains("alice's plans"));
    let direct = http(port, "GET", &format!("/session/{sid}"), &bob, "");
    assert_ne!(direct.status, 200, "bob opens alice's session: {direct:?}");
    assert!(!direct.body.contains("alice's plans"));

    // Terminals run as their user; alice's files are closed to bob.
    let mut at = terminal(port, &alice);
    let out = run_in(
        &mut at,
        "whoami; echo s3cret > ~/notes.txt; pwd; echo $TMPDIR",
    );
    assert!(out.contains("alice"), "{out}");
    assert!(out.contains("/home/alice/workspace"), "{out}");
    assert!(out.contains("/home/alice/.tmp"), "{out}");
    let mut bt = terminal(port, &bob);
    let out = run_in(&mut bt, "whoami; cat /home/alice/notes.txt; ls /home/alice");
    assert!(out.contains("bob"), "{out}");
    assert!(!out.contains("s3cret"), "bob read alice's file: {out}");
    assert!(out.contains("Permission denied"), "{out}");
    // Her opencode's port wants its own password; her process's environment is closed.
    let aport = instance(&sb, &init, "alice").unwrap()["port"]
        .as_u64()
        .unwrap();
    let ans = instance(&sb, &init, "alice").unwrap()["pid"]
        .as_i64()
        .unwrap();
    let out = run_in(
        &mut bt,
        &format!(
            "curl -s -o /dev/null -w 'code=%{{http_code}}\\n' http://127.0.0.1:{aport}/session; \
             cat /proc/{ans}/environ | tr '\\0' '\\n' | grep -c PASSWORD"
        ),
    );
    assert!(out.contains("code=401"), "alice's port answered bob: {out}");
    assert!(out.contains("Permission denied"), "{out}");
    let home = std::fs::metadata(sb.path("home/alice")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        home.permissions().mode() & 0o007,
        0,
        "home closed to others"
    );
    let tmp = std::fs::metadata(sb.path("home/alice/.tmp")).unwrap();
    assert_eq!(tmp.permissions().mode() & 0o777, 0o700);

    // kill -9 of alice's opencode restarts hers; bob's is untouched.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(apid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    init.expect_log_within("opencode@alice exited", Duration::from_secs(10));
    assert!(
        eventually(Duration::from_secs(60), || {
            instance(&sb, &init, "alice").is_some_and(|i| i["state"] == "ready")
                && instance_pid(&sb, &init, "alice").is_some_and(|p| p != apid)
        }),
        "alice's opencode came back"
    );
    assert_eq!(
        instance_pid(&sb, &init, "bob"),
        Some(bpid),
        "bob's untouched"
    );
    assert_eq!(http(port, "GET", "/session", &alice, "").status, 200);
    let out = run_in(&mut bt, "echo still-here");
    assert!(out.contains("still-here"), "bob's terminal lives on: {out}");

    // Locking alice ends her opencode and everything she left running, within 5 s.
    drop(at);
    let mut at = terminal(port, &alice);
    run_in(&mut at, "nohup sleep 1000 >/dev/null 2>&1 &");
    let alice_uid = sandbox_uid(&sb, "alice");
    let ns = std::fs::read_link(format!("/proc/{}/ns/pid", init.init_pid())).unwrap();
    let hers = || -> Vec<i32> {
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .filter(|p: &i32| {
                std::fs::read_link(format!("/proc/{p}/ns/pid")).ok() == Some(ns.clone())
            })
            .filter(|p| uid_of(*p) == Some(alice_uid))
            .filter(|p| {
                std::fs::read_to_string(format!("/proc/{p}/stat"))
                    .map(|s| !s.contains(") Z "))
                    .unwrap_or(false)
            })
            .collect()
    };
    assert!(hers().len() >= 2, "her opencode and her sleep run");
    let out = sb.exec(&init, &["user", "lock", "alice"], None);
    assert!(out.status.success(), "{}", text(&out));
    let locked = Instant::now();
    assert!(
        eventually(Duration::from_secs(5), || hers().is_empty()),
        "alice's processes outlived her lock: {:?}",
        hers()
    );
    eprintln!(
        "alice's processes ended {:?} after the lock",
        locked.elapsed()
    );
    assert_ne!(http(port, "GET", "/session", &alice, "").status, 200);
    assert_eq!(
        instance_pid(&sb, &init, "bob"),
        Some(bpid),
        "bob's untouched"
    );
    let out = run_in(&mut bt, "echo bob-still-here");
    assert!(out.contains("bob-still-here"), "{out}");
    sb.assert_host_untouched();
}
