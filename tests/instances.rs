//! Every user is a real user (`instances = per-user`), tested as the attacker: bob, logged
//! in, goes after alice — her sessions, her files, her opencode's port and environment —
//! and the instances' life: started on demand (once), restarted alone, ended with the
//! account, stopped when idle unless busy, `max_instances`. The real occ-init as PID 1 of a
//! users sandbox, real PAM, the proxy as its own user, the real opencode and real terminals
//! over the proxy's WebSocket. Every request has a deadline.

mod support;

use std::time::{Duration, Instant};

use support::front::{
    add_user, open_pty, opencode_bin, proxied, status_json, websocket, ws_read_until, ws_send,
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
    gate_open(&sb, &init);
    Some((sb, init, port))
}

/// Wait until PID 1 has opened the gate and the proxy's cached gate state (0.5 s) knows.
fn gate_open(sb: &Sandbox, init: &Init) {
    assert!(eventually(Duration::from_secs(20), || status_json(
        sb, init
    )["opencode"]["gate_reason"]
        .is_null()));
    std::thread::sleep(Duration::from_millis(700));
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

/// Host pids of every process in the sandbox's PID namespace.
fn in_namespace(init: &Init) -> Vec<i32> {
    let ns = std::fs::read_link(format!("/proc/{}/ns/pid", init.init_pid())).ok();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|p: &i32| std::fs::read_link(format!("/proc/{p}/ns/pid")).ok() == ns)
        .collect()
}

/// Processes of `uid` in the sandbox that are alive (not zombies waiting to be reaped).
fn running_as(init: &Init, uid: u32) -> Vec<i32> {
    in_namespace(init)
        .into_iter()
        .filter(|p| uid_of(*p) == Some(uid))
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .map(|s| !s.contains(") Z "))
                .unwrap_or(false)
        })
        .collect()
}

/// uid of `user` in the sandbox's /etc/passwd.
fn sandbox_uid(sb: &Sandbox, user: &str) -> u32 {
    let line = sb.passwd_line(user).expect("user in passwd");
    line.split(':').nth(2).unwrap().parse().unwrap()
}

/// Open a terminal as `auth` and return its WebSocket after the shell printed `ready`.
fn terminal(port: u16, auth: &str) -> std::net::TcpStream {
    let id = open_pty(port, auth);
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
    assert!(
        in_namespace(&init)
            .iter()
            .all(|p| uid_of(*p) != Some(opencoder)),
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
    let hers = || running_as(&init, alice_uid);
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

/// alice's instance: ready now, with this host pid.
fn ready_pid(sb: &Sandbox, init: &Init, user: &str) -> Option<i32> {
    instance(sb, init, user)
        .filter(|i| i["state"] == "ready")
        .and_then(|_| instance_pid(sb, init, user))
}

#[test]
fn instances_start_once_stop_when_idle_unless_busy_and_come_back() {
    let Some((sb, mut init, port)) =
        per_user("instance_idle_timeout = '3s'\n", &[("alice", "alice-pw-1")])
    else {
        return;
    };
    let alice = basic("alice", "alice-pw-1");
    // Ten first requests at once start exactly one opencode, and all are answered.
    let codes: Vec<support::http::Resp> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..10)
            .map(|_| s.spawn(|| http(port, "GET", "/session", &alice, "")))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(codes.iter().all(|r| r.status == 200), "{codes:?}");
    assert_eq!(init.count_log("starting alice's own opencode"), 1);
    let r = http(
        port,
        "POST",
        "/session",
        &format!("{alice}Content-Type: application/json\r\n"),
        r#"{"title":"kept across stops"}"#,
    );
    let sid = serde_json::from_str::<serde_json::Value>(&r.body).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();

    // Idle (3 s, nothing busy): stopped; the next request starts it with her session.
    init.expect_log_within(
        "stopping opencode@alice: no request for 3s",
        Duration::from_secs(30),
    );
    assert!(eventually(Duration::from_secs(15), || instance(
        &sb, &init, "alice"
    )
    .is_none()));
    let back = http(port, "GET", "/session", &alice, "");
    assert_eq!(back.status, 200);
    assert!(
        back.body.contains(&sid),
        "her session survived the stop: {back:?}"
    );
    assert_eq!(init.count_log("starting alice's own opencode"), 2);
    let pid = ready_pid(&sb, &init, "alice").expect("running again");

    // An open terminal is activity: no stop while it is open.
    let mut term = terminal(port, &alice);
    std::thread::sleep(Duration::from_secs(8));
    assert_eq!(
        ready_pid(&sb, &init, "alice"),
        Some(pid),
        "stopped under an open terminal"
    );
    assert!(run_in(&mut term, "echo alive").contains("alive"));
    drop(term);

    // A busy session (a shell command the agent runs) keeps it running past the timeout.
    let busy = std::thread::spawn({
        let alice = alice.clone();
        let sid = sid.clone();
        move || {
            http(
                port,
                "POST",
                &format!("/session/{sid}/shell"),
                &format!("{alice}Content-Type: application/json\r\n"),
                r#"{"agent":"build","command":"sleep 12"}"#,
            )
            .status
        }
    });
    std::thread::sleep(Duration::from_secs(9));
    assert_eq!(
        ready_pid(&sb, &init, "alice"),
        Some(pid),
        "a busy agent was stopped"
    );
    assert_eq!(busy.join().unwrap(), 200);
    // Once the work is done it goes (the busy check is repeated every 30 s).
    assert!(
        eventually(Duration::from_secs(60), || instance(&sb, &init, "alice")
            .is_none()),
        "never stopped after the work was done"
    );

    // `occ-init instance list` / `stop`, and the admin API.
    assert_eq!(http(port, "GET", "/session", &alice, "").status, 200);
    let out = sb.exec(&init, &["instance", "list"], None);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("alice"), "{}", text(&out));
    let out = sb.exec(&init, &["instance", "list", "--json"], None);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["instances"][0]["user"], "alice");
    let out = sb.exec(&init, &["instance", "stop", "alice"], None);
    assert!(out.status.success(), "{}", text(&out));
    assert!(eventually(Duration::from_secs(15), || instance(
        &sb, &init, "alice"
    )
    .is_none()));
    let out = sb.exec(&init, &["instance", "stop", "alice"], None);
    assert!(!out.status.success(), "stopping nothing is an error");
    assert!(text(&out).contains("no opencode running"), "{}", text(&out));
    let out = sb.exec(&init, &["instance", "stop", "../users"], None);
    assert!(!out.status.success());
    sb.assert_host_untouched();
}

#[test]
fn max_instances_one_gives_bob_a_page_while_alice_works() {
    let Some((sb, init, port)) = per_user(
        "max_instances = 1\n",
        &[("alice", "alice-pw-1"), ("bob", "bob-pw-22")],
    ) else {
        return;
    };
    let alice = basic("alice", "alice-pw-1");
    let bob = basic("bob", "bob-pw-22");
    assert_eq!(http(port, "GET", "/session", &alice, "").status, 200);
    let page = http(port, "GET", "/", &format!("{bob}Accept: text/html\r\n"), "");
    assert_eq!(page.status, 503, "{page:?}");
    assert!(
        page.body.contains("No room for your workspace"),
        "{}",
        page.body
    );
    assert!(page.body.contains("all 1 workspaces"), "{}", page.body);
    let api = http(port, "GET", "/session", &bob, "");
    assert_eq!(api.status, 503);
    assert!(api.body.contains("instances_full"), "{api:?}");
    assert!(api.header("retry-after").is_some());
    // alice is never stopped to make room, and keeps working.
    assert_eq!(http(port, "GET", "/session", &alice, "").status, 200);
    assert!(instance(&sb, &init, "bob").is_none());
    let st = status_json(&sb, &init);
    assert_eq!(st["instances"].as_array().unwrap().len(), 1, "{st}");
}

/// A sandbox with the fake opencode (`behavior`) per user.
fn fake_per_user(behavior: &str, users: &[(&str, &str)]) -> (Sandbox, Init, u16) {
    let (sb, port) = proxied(
        &format!(
            "['{}', 'fake-opencode', '--behavior', '{behavior}']",
            support::CHILD
        ),
        "instances = 'per-user'\ninstance_start_timeout = '20s'\n",
    );
    let mut init = sb.boot(&[], &[]);
    init.expect_log_within("proxy is ready", Duration::from_secs(30));
    for (name, pw) in users {
        add_user(&sb, &init, name, pw);
    }
    gate_open(&sb, &init);
    (sb, init, port)
}

#[test]
fn a_browser_sees_its_workspace_start_and_why_it_cannot() {
    let (_sb, _init, port) = fake_per_user("slow", &[("carol", "carol-pw-3")]);
    let carol = basic("carol", "carol-pw-3");
    let nav = format!("{carol}Accept: text/html\r\n");
    let first = http(port, "GET", "/", &nav, "");
    assert_eq!(first.status, 503, "{first:?}");
    assert!(
        first.body.contains("Starting your workspace"),
        "{}",
        first.body
    );
    assert!(first.body.contains("http-equiv=\"refresh\""));
    assert_eq!(first.header("retry-after").as_deref(), Some("2"));
    // The page's reload lands in opencode once it is up.
    assert!(eventually(Duration::from_secs(20), || {
        let r = http(port, "GET", "/", &nav, "");
        r.status == 200 && r.body.contains("fake opencode")
    }));

    let (sb, mut init, port) =
        fake_per_user("crash", &[("dave", "dave-pw-44"), ("erin", "erin-pw-5")]);
    let dave = basic("dave", "dave-pw-44");
    let api = http(port, "GET", "/session", &dave, "");
    assert_eq!(api.status, 503, "{api:?}");
    init.expect_log_within("opencode@dave gave up", Duration::from_secs(60));
    let page = http(
        port,
        "GET",
        "/",
        &format!("{dave}Accept: text/html\r\n"),
        "",
    );
    assert_eq!(page.status, 503);
    assert!(
        page.body.contains("Your workspace cannot start"),
        "{}",
        page.body
    );
    assert!(page.body.contains("keeps failing"), "{}", page.body);
    let api = http(port, "GET", "/session", &dave, "");
    assert!(api.body.contains("instance_failed"), "{api:?}");
    assert_eq!(instance(&sb, &init, "dave").unwrap()["state"], "failed");
    // Other users are not affected by dave's trouble: erin's is asked for and tried too.
    let erin = http(port, "GET", "/session", &basic("erin", "erin-pw-5"), "");
    assert_eq!(erin.status, 503);
    assert!(instance(&sb, &init, "erin").is_some());
}

#[test]
fn shared_still_behaves_as_before() {
    let Some(bin) = opencode_bin() else { return };
    let (sb, port) = proxied(&format!("['{bin}', 'serve']"), "instances = 'shared'\n");
    let mut init = sb.boot(&[], &[]);
    add_user(&sb, &init, "alice", "alice-pw-1");
    add_user(&sb, &init, "bob", "bob-pw-22");
    init.expect_log_within("opencode is ready", Duration::from_secs(120));
    let alice = basic("alice", "alice-pw-1");
    assert!(eventually(Duration::from_secs(20), || http(
        port, "GET", "/session", &alice, ""
    )
    .status
        == 200));
    let st = status_json(&sb, &init);
    assert_eq!(st["layout"], "shared");
    let list = st["instances"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{st}");
    assert_eq!(list[0]["user"], "opencoder");
    let pid = host_pid_of(&init, list[0]["pid"].as_i64().unwrap() as i32);
    assert_eq!(uid_of(pid), Some(sandbox_uid(&sb, "opencoder")));
    let out = sb.exec(&init, &["instance", "stop", "alice"], None);
    assert!(!out.status.success());
    assert!(text(&out).contains("shared"), "{}", text(&out));
}

/// `argv` as `user` (setpriv, no_new_privs, like a process from their terminal) inside the
/// running sandbox's namespaces, in the background.
fn spawn_as(init: &Init, user: &str, argv: &[&str]) -> KillOnDrop {
    let pid = init.init_pid().as_raw().to_string();
    let child = std::process::Command::new("nsenter")
        .args(["--target", &pid, "--pid", "--mount", "--", "setpriv"])
        .args([
            "--reuid",
            user,
            "--regid",
            user,
            "--init-groups",
            "--no-new-privs",
            "--",
        ])
        .args(argv)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("nsenter");
    KillOnDrop(child)
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A file anyone in the sandbox may write (the sandbox dir itself is root's).
fn shared_file(sb: &Sandbox, name: &str) -> std::path::PathBuf {
    let p = sb.path(name);
    std::fs::write(&p, "").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o666)).unwrap();
    p
}

fn attack(script: &str) -> String {
    format!("{}/tests/attack/{script}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn bob_cannot_catch_alices_credentials_or_take_over_her_port() {
    let Some((sb, mut init, port)) = per_user(
        "health_interval = '1s'\n",
        &[("alice", "alice-pw-1"), ("bob", "bob-pw-22")],
    ) else {
        return;
    };
    let alice = basic("alice", "alice-pw-1");
    let log = shared_file(&sb, "thief.log");
    let uid = sandbox_uid(&sb, "alice").to_string();
    let _thief = spawn_as(
        &init,
        "bob",
        &[
            "/usr/bin/python3",
            &attack("thief.py"),
            &uid,
            &log.display().to_string(),
            "120",
        ],
    );
    assert!(eventually(Duration::from_secs(10), || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("START")
    }));
    // Her instance starts while bob watches every process for its port.
    let first = http(port, "GET", "/session", &alice, "");
    assert_eq!(first.status, 200, "{first:?}\n{}", init.stderr_text());
    let mut answers = Vec::new();
    // Her opencode dies (kill -9) and is stopped on request: each time bob binds the port it
    // freed at once, and her next requests come right after, while the proxy may still
    // believe the old port.
    for round in 0..2 {
        let pid = instance_pid(&sb, &init, "alice").expect("alice's opencode");
        let old = instance(&sb, &init, "alice").unwrap()["port"]
            .as_u64()
            .unwrap();
        if round == 0 {
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            )
            .unwrap();
        } else {
            let out = sb.exec(&init, &["instance", "stop", "alice"], None);
            assert!(out.status.success(), "{}", text(&out));
        }
        assert!(
            eventually(Duration::from_secs(10), || std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains(&format!("BOUND {old} (follow)"))),
            "the attack did not happen: bob never got the freed port {old}:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let r = http(port, "GET", "/session", &alice, "");
            answers.push((r.status, r.body.clone()));
            if r.status == 200 || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(
            answers.last().unwrap().0,
            200,
            "alice is served again: {answers:?}"
        );
    }
    init.expect_log_within("opencode@alice is ready", Duration::from_secs(5));
    // bob's sockets on 127.0.0.2 and [::1] at her port (no connection to 127.0.0.1 reaches
    // them) do not make her probes fail: she is not restarted, and stays served.
    std::thread::sleep(Duration::from_secs(5));
    for _ in 0..5 {
        let r = http(port, "GET", "/session", &alice, "");
        assert_eq!(r.status, 200, "{r:?}");
        answers.push((r.status, r.body));
    }
    let seen = std::fs::read_to_string(&log).unwrap();
    assert!(
        seen.contains("SHADOW 127.0.0.2"),
        "no shadow sockets:\n{seen}"
    );
    let text_log = init.stderr_text();
    assert!(
        !text_log.contains("health probes in a row") && !text_log.contains("did not become ready"),
        "bob's shadow sockets restarted alice's opencode:\n{text_log}"
    );
    assert!(
        !seen.contains("REQUEST"),
        "bob's socket got a request:\n{seen}"
    );
    assert!(
        !seen.contains("Authorization"),
        "bob caught credentials:\n{seen}"
    );
    assert!(
        !seen.contains("(squat"),
        "a port was visible before opencode bound it:\n{seen}"
    );
    assert!(
        answers.iter().all(|(_, b)| !b.contains("THIEF")),
        "alice got bob's page: {answers:?}"
    );
    sb.assert_host_untouched();
}

#[test]
fn a_lock_ends_a_process_chain_that_forks_faster_than_a_scan() {
    let Some((sb, init, port)) = per_user("", &[("alice", "alice-pw-1")]) else {
        return;
    };
    assert_eq!(
        http(port, "GET", "/session", &basic("alice", "alice-pw-1"), "").status,
        200
    );
    let beat = shared_file(&sb, "hopper.beat");
    let _hopper = spawn_as(
        &init,
        "alice",
        &[
            "setsid",
            "/usr/bin/python3",
            &attack("hopper.py"),
            &beat.display().to_string(),
            "120",
        ],
    );
    let read = || std::fs::read_to_string(&beat).unwrap_or_default();
    assert!(
        eventually(Duration::from_secs(10), || !read().is_empty()),
        "hopper never ran"
    );
    let out = sb.exec(&init, &["user", "lock", "alice"], None);
    assert!(out.status.success(), "{}", text(&out));
    std::thread::sleep(Duration::from_secs(5));
    let after = read();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        read(),
        after,
        "alice's process chain outlived her lock by 5 s"
    );
    let uid = sandbox_uid(&sb, "alice");
    let alive = running_as(&init, uid);
    assert!(alive.is_empty(), "alice still runs {alive:?}");
    sb.assert_host_untouched();
}
