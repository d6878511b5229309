//! The admin endpoint over its real socket, against a real PID 1 in a sandbox: every route's
//! success and error cases checked against docs/api/openapi.json, malformed and hostile
//! clients, connection floods, root-only access, rate-limited PAM checks, and `status`.

mod support;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::{json, Value};
use support::sandbox::{setup, starts, text, Sandbox};
use support::{eventually, Init, DEADLINE};

const H1: &str = "$6$abcdefgh$dTmIYmW/LpvGK/iiDSK9zlcKIRJ33.7YE9DETLAR1zX9/2./Fv6/8dFZ1tCs/Kfp//7QeoJfyRWP7XdDzP87j1";

fn socket(sb: &Sandbox) -> PathBuf {
    sb.path("run/admin.sock")
}

/// Boot a gated container (exposed, no users) and wait for its socket.
fn boot(extra: &str) -> (Sandbox, Init, u16) {
    let (sb, port) = setup("0.0.0.0", "healthy", extra);
    let mut init = sb.boot(&[], &[("OCC_LOG", "debug")]);
    init.expect_log("opencode is not started");
    assert!(eventually(DEADLINE, || socket(&sb).exists()));
    (sb, init, port)
}

fn call(sb: &Sandbox, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let body = body.map(|b| b.to_string());
    let (status, text) = occ_init::admin::client::request(
        &socket(sb),
        method,
        path,
        body.as_deref(),
        Duration::from_secs(30),
    )
    .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// Raw bytes in, raw response out (the server closes after one response).
fn raw(sb: &Sandbox, bytes: &[u8]) -> String {
    let mut s = UnixStream::connect(socket(sb)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let _ = s.write_all(bytes);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

fn status_line(resp: &str) -> u16 {
    resp.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn openapi() -> Value {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/api/openapi.json"),
    )
    .unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The documented status codes of an operation.
fn documented(spec: &Value, path: &str, method: &str) -> Vec<u16> {
    spec["paths"][path][method]["responses"]
        .as_object()
        .unwrap_or_else(|| panic!("{method} {path} is not documented"))
        .keys()
        .map(|k| k.parse().unwrap())
        .collect()
}

#[test]
fn every_route_matches_the_openapi_document() {
    let (sb, mut init, port) = boot("");
    let spec = openapi();
    let mut seen = std::collections::BTreeSet::new();
    let mut check =
        |method: &str, real_path: &str, doc_path: &str, body: Option<Value>, want: u16| {
            let (status, v) = call(&sb, method, real_path, body);
            assert_eq!(status, want, "{method} {real_path}: {v}");
            let docs = documented(&spec, doc_path, &method.to_lowercase());
            assert!(
                docs.contains(&status),
                "{method} {doc_path} answered undocumented {status}"
            );
            if status >= 400 {
                assert!(
                    v["error"].is_string() && v["code"].is_string(),
                    "{method} {real_path}: {v}"
                );
            }
            seen.insert((doc_path.to_string(), method.to_lowercase()));
            v
        };
    // Gated: not ready, health alive, restart refused.
    let v = check("GET", "/v1/ready", "/v1/ready", None, 503);
    assert_eq!(v["opencode"], "gated");
    assert_eq!(
        check("GET", "/v1/health", "/v1/health", None, 200)["alive"],
        true
    );
    check(
        "POST",
        "/v1/opencode/restart",
        "/v1/opencode/restart",
        None,
        409,
    );
    let v = check("GET", "/v1/status", "/v1/status", None, 200);
    assert_eq!(v["security"]["auth_users"], json!([]));
    assert_eq!(v["opencode"]["state"], "gated");
    // Users: errors first, then the happy path (which opens the gate).
    check(
        "POST",
        "/v1/users",
        "/v1/users",
        Some(json!({"name": "root", "password_hash": H1})),
        422,
    );
    check(
        "POST",
        "/v1/users",
        "/v1/users",
        Some(json!({"name": "alice", "password": "short"})),
        422,
    );
    check(
        "POST",
        "/v1/users",
        "/v1/users",
        Some(json!({"name": "alice"})),
        400,
    );
    check(
        "POST",
        "/v1/users/nobody/password",
        "/v1/users/{name}/password",
        Some(json!({"password": "long enough"})),
        404,
    );
    check(
        "POST",
        "/v1/users/nobody/lock",
        "/v1/users/{name}/lock",
        None,
        404,
    );
    check(
        "POST",
        "/v1/users/nobody/unlock",
        "/v1/users/{name}/unlock",
        None,
        404,
    );
    check("DELETE", "/v1/users/nobody", "/v1/users/{name}", None, 404);
    let v = check(
        "POST",
        "/v1/users",
        "/v1/users",
        Some(json!({"name": "alice", "password": "alice password"})),
        201,
    );
    assert_eq!(v["persistence"], "saved");
    check(
        "POST",
        "/v1/users",
        "/v1/users",
        Some(json!({"name": "alice", "password_hash": H1})),
        409,
    );
    init.expect_log("opencode is ready");
    assert_eq!(
        check("GET", "/v1/ready", "/v1/ready", None, 200)["ready"],
        true
    );
    let users = check("GET", "/v1/users", "/v1/users", None, 200);
    assert_eq!(users[0]["name"], "alice");
    check(
        "POST",
        "/v1/users/alice/verify",
        "/v1/users/{name}/verify",
        Some(json!({"password": "alice password"})),
        200,
    );
    check(
        "POST",
        "/v1/users/alice/verify",
        "/v1/users/{name}/verify",
        Some(json!({"password": "wrong"})),
        401,
    );
    check(
        "POST",
        "/v1/users/alice/password",
        "/v1/users/{name}/password",
        Some(json!({"password": "second password"})),
        200,
    );
    check(
        "POST",
        "/v1/users/alice/verify",
        "/v1/users/{name}/verify",
        Some(json!({"password": "second password"})),
        200,
    );
    check(
        "POST",
        "/v1/users/alice/lock",
        "/v1/users/{name}/lock",
        None,
        200,
    );
    // All users locked = none: the policy gates opencode again.
    init.expect_log("stopping opencode: the bind policy gates it now");
    check(
        "POST",
        "/v1/users/alice/unlock",
        "/v1/users/{name}/unlock",
        None,
        200,
    );
    check("DELETE", "/v1/users/alice", "/v1/users/{name}", None, 409);
    check(
        "POST",
        "/v1/users",
        "/v1/users",
        Some(json!({"name": "bob", "password_hash": H1, "uid": 2345})),
        201,
    );
    check("DELETE", "/v1/users/bob", "/v1/users/{name}", None, 200);
    assert!(eventually(DEADLINE, || call(&sb, "GET", "/v1/ready", None)
        .0
        == 200));
    check(
        "POST",
        "/v1/opencode/restart",
        "/v1/opencode/restart",
        None,
        202,
    );
    init.expect_log("restarting opencode on request");
    assert!(eventually(DEADLINE, || starts(&sb).len() >= 3));
    // One shared opencode: listed as the service user's; there is no per-user one to stop.
    let v = check("GET", "/v1/instances", "/v1/instances", None, 200);
    assert_eq!(v["instances"][0]["user"], "opencoder", "{v}");
    let v = check(
        "POST",
        "/v1/instances/alice/stop",
        "/v1/instances/{user}/stop",
        None,
        404,
    );
    assert!(v["error"].as_str().unwrap().contains("shared"), "{v}");

    // Personal API tokens: made for a login user only, listed without the secret, revoked.
    check(
        "POST",
        "/v1/tokens",
        "/v1/tokens",
        Some(json!({"user": "nobody", "name": "x"})),
        404,
    );
    check(
        "POST",
        "/v1/tokens",
        "/v1/tokens",
        Some(json!({"user": "alice", "name": ""})),
        400,
    );
    let made = check(
        "POST",
        "/v1/tokens",
        "/v1/tokens",
        Some(json!({"user": "alice", "name": "api test", "expires": "7d"})),
        201,
    );
    let id = made["id"].as_str().unwrap().to_string();
    assert!(
        made["token"].as_str().unwrap().starts_with("occ_"),
        "{made}"
    );
    let v = check("GET", "/v1/tokens?user=alice", "/v1/tokens", None, 200);
    assert_eq!(v["tokens"][0]["name"], "api test", "{v}");
    assert!(v["tokens"][0].get("token").is_none() && v["tokens"][0].get("hash").is_none());
    check(
        "DELETE",
        &format!("/v1/tokens/{id}"),
        "/v1/tokens/{id}",
        None,
        200,
    );
    check(
        "DELETE",
        &format!("/v1/tokens/{id}"),
        "/v1/tokens/{id}",
        None,
        404,
    );
    check(
        "DELETE",
        "/v1/users/alice?force=true",
        "/v1/users/{name}",
        None,
        200,
    );
    // Every documented operation was exercised.
    let documented_ops: std::collections::BTreeSet<(String, String)> = spec["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(p, ops)| {
            ops.as_object()
                .unwrap()
                .keys()
                .map(move |m| (p.clone(), m.clone()))
        })
        .collect();
    assert_eq!(seen, documented_ops);
    // Undocumented paths and methods.
    assert_eq!(call(&sb, "GET", "/v2/status", None).0, 404);
    assert_eq!(call(&sb, "PUT", "/v1/status", None).0, 405);
    let _ = port;
}

#[test]
fn hostile_clients_never_hurt_pid1() {
    let (sb, init, _) = boot("");
    let pid = init.init_pid().as_raw();
    let before = fd_count(pid);
    let cases: Vec<(Vec<u8>, u16)> = vec![
        (b"NONSENSE\r\n\r\n".to_vec(), 400),
        (b"GET /v1/status HTTP/9.9\r\n\r\n".to_vec(), 400),
        (
            b"GET /v1/status HTTP/1.1\r\nbroken header\r\n\r\n".to_vec(),
            400,
        ),
        (
            b"POST /v1/users HTTP/1.1\r\nContent-Length: 5\r\n\r\n{oops".to_vec(),
            400,
        ),
        (
            b"POST /v1/users HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(),
            411,
        ),
        (
            format!(
                "POST /v1/users HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
                1 << 20
            )
            .into_bytes(),
            413,
        ),
        (
            [
                b"POST /v1/users HTTP/1.1\r\nContent-Length: 70000\r\n\r\n".to_vec(),
                vec![b'x'; 70000],
            ]
            .concat(),
            413,
        ),
        (
            [
                b"GET /v1/status HTTP/1.1\r\nX: ".to_vec(),
                vec![b'a'; 100_000],
                b"\r\n\r\n".to_vec(),
            ]
            .concat(),
            413,
        ),
        (b"\x00\x01\x02\xff\r\n\r\n".to_vec(), 400),
    ];
    for (bytes, want) in cases {
        let resp = raw(&sb, &bytes);
        assert_eq!(
            status_line(&resp),
            want,
            "{:?} -> {resp}",
            String::from_utf8_lossy(&bytes[..bytes.len().min(60)])
        );
        assert!(resp.contains("\"code\""), "{resp}");
    }
    // A client that connects and sends nothing is dropped after the read timeout, and does
    // not block others meanwhile.
    let t = Instant::now();
    let mut silent = UnixStream::connect(socket(&sb)).unwrap();
    assert_eq!(call(&sb, "GET", "/v1/health", None).0, 200);
    silent
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut out = Vec::new();
    let _ = silent.read_to_end(&mut out);
    assert!(
        t.elapsed() < Duration::from_secs(15),
        "silent client held for {:?}",
        t.elapsed()
    );
    // A flood of 1,000 concurrent connections.
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let path = socket(&sb);
            std::thread::spawn(move || {
                let conns: Vec<UnixStream> = (0..125)
                    .filter_map(|_| UnixStream::connect(&path).ok())
                    .collect();
                std::thread::sleep(Duration::from_millis(300));
                conns.len()
            })
        })
        .collect();
    let connected: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
    assert_eq!(connected, 1000);
    // PID 1 is still there and answers the next request.
    assert!(eventually(DEADLINE, || occ_init::admin::client::request(
        &socket(&sb),
        "GET",
        "/v1/health",
        None,
        Duration::from_secs(5)
    )
    .map(|(s, _)| s == 200)
    .unwrap_or(false)));
    assert!(support::alive(pid));
    assert!(
        eventually(Duration::from_secs(20), || fd_count(pid) <= before + 2),
        "fds: {} before, {} after",
        before,
        fd_count(pid)
    );
}

#[test]
fn concurrent_adds_through_the_socket_both_land() {
    let (sb, _init, _) = boot("");
    let path = socket(&sb);
    let handles: Vec<_> = ["carol", "dave"]
        .into_iter()
        .map(|name| {
            let path = path.clone();
            std::thread::spawn(move || {
                let body = json!({"name": name, "password_hash": H1}).to_string();
                occ_init::admin::client::request(
                    &path,
                    "POST",
                    "/v1/users",
                    Some(&body),
                    Duration::from_secs(30),
                )
                .unwrap()
                .0
            })
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), 201);
    }
    let manifest = std::fs::read_to_string(sb.manifest()).unwrap();
    assert!(
        manifest.contains("carol") && manifest.contains("dave"),
        "{manifest}"
    );
    assert_eq!(sb.shadow_of("carol").as_deref(), Some(H1));
    assert_eq!(sb.shadow_of("dave").as_deref(), Some(H1));
}

#[test]
fn only_root_can_use_the_socket() {
    let (sb, init, _) = boot("");
    // Directory 0700, socket 0600.
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(sb.path("run"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o700
    );
    assert_eq!(
        std::fs::metadata(socket(&sb)).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let as_nobody = |args: &[&str]| {
        use std::os::unix::process::CommandExt;
        std::process::Command::new(support::OCC_INIT)
            .args(args)
            .env("OCC_ADMIN_SOCKET", socket(&sb))
            .env("OCC_CONFIG", "/nonexistent")
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap()
    };
    let out = as_nobody(&["status"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("root only") || text(&out).contains("ermission denied"),
        "{}",
        text(&out)
    );
    // Even with the file modes opened up, the peer-uid check refuses non-root clients.
    std::fs::set_permissions(sb.path("run"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(socket(&sb), std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = as_nobody(&["status"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("403"), "{}", text(&out));
    drop(init);
}

#[test]
fn repeated_wrong_passwords_are_delayed_then_refused() {
    let (sb, _init, _) = boot("rate_limit_attempts = 2\nrate_limit_window_seconds = 600\n");
    assert_eq!(
        call(
            &sb,
            "POST",
            "/v1/users",
            Some(json!({"name": "alice", "password": "alice password"}))
        )
        .0,
        201
    );
    let verify = |pw: &str| {
        call(
            &sb,
            "POST",
            "/v1/users/alice/verify",
            Some(json!({"password": pw})),
        )
    };
    assert_eq!(verify("wrong one").0, 401);
    assert_eq!(verify("wrong two").0, 401);
    // Attempts used up: even the right password must wait.
    let (status, v) = verify("alice password");
    assert_eq!(status, 429, "{v}");
    assert_eq!(v["code"], "rate_limited");
    let resp = raw(
        &sb,
        b"POST /v1/users/alice/verify HTTP/1.1\r\nContent-Length: 15\r\n\r\n{\"password\":\"\"}",
    );
    assert!(resp.contains("Retry-After: 1"), "{resp}");
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(verify("wrong three").0, 401);
    let (status, v) = verify("alice password");
    assert_eq!(status, 429);
    assert!(v["error"].as_str().unwrap().contains("retry in 5s"), "{v}");
}

#[test]
fn status_and_health_cli_speak_for_pid1() {
    let (sb, mut init, _) = boot("");
    let out = sb.exec(&init, &["status"], None);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let t = String::from_utf8_lossy(&out.stdout).into_owned();
    for want in [
        "Security\n--------\n",
        "Binding:     0.0.0.0 [NETWORK EXPOSED]",
        "Auth users:  None configured",
        "Trust proxy: no",
        "Rate limit:  5 attempts / 60s window",
        "Warning: Network exposed without authentication!",
        "State:       gated",
        "Gate:        CLOSED",
    ] {
        assert!(t.contains(want), "missing {want:?} in\n{t}");
    }
    assert!(!t.contains('\x1b'), "colour without a terminal");
    let health = sb.exec(&init, &["health"], None);
    assert_eq!(health.status.code(), Some(1));
    assert!(text(&health).contains("gated"));
    let json = sb.exec(&init, &["status", "--json"], None);
    let v: Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["security"]["network_exposed"], true);
    let add = sb.exec(
        &init,
        &["user", "add", "alice", "--hash-stdin"],
        Some(&format!("{H1}\n")),
    );
    assert_eq!(add.status.code(), Some(0), "{}", text(&add));
    init.expect_log("opencode is ready");
    let health = sb.exec(&init, &["health"], None);
    assert_eq!(health.status.code(), Some(0), "{}", text(&health));
    let t = String::from_utf8_lossy(&sb.exec(&init, &["status"], None).stdout).into_owned();
    assert!(
        t.contains("Auth users:  alice") && t.contains("State:       ready"),
        "{t}"
    );
    assert!(!t.contains("Warning"), "{t}");
    let restart = sb.exec(&init, &["restart"], None);
    assert_eq!(restart.status.code(), Some(0), "{}", text(&restart));
    init.expect_log("restarting opencode on request");
    let list = sb.exec(&init, &["user", "list"], None);
    assert!(String::from_utf8_lossy(&list.stdout).contains("alice"));
    init.signal(Signal::SIGTERM);
    assert_eq!(init.exit_code(DEADLINE), 143);
    // After PID 1 is gone, the CLI says what to do.
    let out = sb.occ(&["status"], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("occ-init is not running as this container's init"),
        "{}",
        text(&out)
    );
}

#[test]
fn a_second_occ_init_refuses_a_live_socket_but_replaces_a_stale_one() {
    let (sb, init, _) = boot("");
    let mut second = sb.boot(&[], &[]);
    assert_eq!(second.exit_code(DEADLINE), 2);
    assert!(
        second
            .stderr_text()
            .contains("another occ-init is already serving"),
        "{}",
        second.stderr_text()
    );
    // Kill the first with SIGKILL: its socket file stays behind, stale.
    drop(init);
    assert!(socket(&sb).exists());
    let mut third = sb.boot(&[], &[]);
    third.expect_log("opencode is not started");
    assert!(eventually(DEADLINE, || call(
        &sb,
        "GET",
        "/v1/health",
        None
    )
    .0 == 200));
}
