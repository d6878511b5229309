//! The front door holds, tested as the attacker: floods of connections from one address,
//! upgrade and 401 floods, guessing from inside the container (`su` in a terminal), strangers
//! locking a user out, the other address family, empty passwords, a second occ-init, and
//! other local users at opencode's loopback port. The real occ-init as PID 1 of a users
//! sandbox, real PAM, the proxy as its own user, and the real opencode (or the fake one where
//! opencode itself does not matter). Every request has a deadline.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use support::front::{
    add_user, answers, booted, open_pty, opencode_bin, proxied, status_json, websocket,
    ws_read_until, ws_send,
};
use support::http::{basic, http, Resp};
use support::sandbox::{host_pid_of, text};
use support::{eventually, CHILD};

/// A TCP connection to 127.0.0.1:`port` from the source address `src` (any 127.x.y.z).
fn connect_from(src: &str, port: u16) -> std::io::Result<TcpStream> {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    let from: SocketAddr = format!("{src}:0").parse().expect("source address");
    s.bind(&from.into())?;
    let to: SocketAddr = format!("127.0.0.1:{port}").parse().expect("address");
    s.connect_timeout(&to.into(), Duration::from_secs(5))?;
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    s.set_write_timeout(Some(Duration::from_secs(20)))?;
    Ok(s)
}

/// Terminal `id`'s WebSocket from source address `src`, upgraded (101) and held open.
fn open_terminal(src: &str, port: u16, id: &str, auth: &str) -> TcpStream {
    let mut s = connect_from(src, port).unwrap();
    write!(
        s,
        "GET /pty/{id}/connect HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n{auth}\r\n"
    )
    .unwrap();
    let mut buf = [0u8; 12];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"HTTP/1.1 101", "upgrade");
    s
}

fn parse(raw: &[u8]) -> Resp {
    let text = String::from_utf8_lossy(raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    Resp {
        status: head
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0),
        head: head.to_string(),
        body: body.to_string(),
    }
}

/// One request from source address `src`, read to the end.
fn http_from(src: &str, port: u16, method: &str, path: &str, headers: &str, body: &str) -> Resp {
    let Ok(mut s) = connect_from(src, port) else {
        return parse(b"");
    };
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n{headers}Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    if s.write_all(req.as_bytes()).is_err() {
        return parse(b"");
    }
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    parse(&raw)
}

fn pid_of(st: &serde_json::Value, what: &str) -> i32 {
    st[what]["pid"].as_i64().expect("pid") as i32
}

/// Open file descriptors of a host process.
fn fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Resident memory of a host process, in KiB.
fn rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Log in through the form; returns the `Cookie:` header line.
fn form_login(port: u16, user: &str, pw: &str) -> String {
    let r = http(
        port,
        "POST",
        "/_occ/login",
        "Content-Type: application/x-www-form-urlencoded\r\n",
        &format!("username={user}&password={}&next=%2F", pw.replace(' ', "+")),
    );
    assert_eq!(r.status, 303, "{r:?}");
    let cookie = r.header("set-cookie").expect("a session cookie");
    format!("Cookie: {}\r\n", cookie.split(';').next().unwrap())
}

/// D2, W8, W2: one address cannot take every slot; upgraded connections count; a full
/// public port does not make PID 1 restart the proxy (it probes privately); refused
/// connections get the 503 page, not a reset; fds and memory come back; and a restarted
/// proxy logs nobody out.
#[test]
fn one_address_cannot_take_the_front_door_and_a_restart_logs_nobody_out() {
    let Some(bin) = opencode_bin() else { return };
    let (sb, port) = proxied(
        &format!("['{bin}', 'serve']"),
        "max_connections = 160\nmax_connections_per_client = 40\n\
         health_interval = '300ms'\nhealth_timeout = '1s'\nhealth_failures = 2\n",
    );
    let mut init = sb.boot(&[], &[]);
    add_user(&sb, &init, "alice", "alice password 1");
    add_user(&sb, &init, "bob", "bobs own secret");
    init.expect_log_within("opencode is ready", Duration::from_secs(120));
    let alice = basic("alice", "alice password 1");
    assert!(answers(
        port,
        "/session",
        &alice,
        200,
        Duration::from_secs(20)
    ));
    let bob = form_login(port, "bob", "bobs own secret");
    assert_eq!(http(port, "GET", "/session", &bob, "").status, 200);
    let st = status_json(&sb, &init);
    let proxy = host_pid_of(&init, pid_of(&st, "proxy"));
    let (fds_idle, rss_idle) = (fds(proxy), rss_kib(proxy));

    // One address opening half-sent requests: it never holds more than its 40 places
    // (the oldest make room for the newest), and whoever closes gets no reset.
    let mut held = Vec::new();
    for _ in 0..120 {
        if let Ok(mut s) = connect_from("127.0.0.2", port) {
            let _ = s.write_all(b"GET /session HTTP/1.1\r\nHost: x\r\n");
            held.push(s);
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    let (mut alive, mut closed) = (0, 0);
    for s in &mut held {
        s.set_read_timeout(Some(Duration::from_millis(10))).unwrap();
        let mut buf = [0u8; 512];
        match s.read(&mut buf) {
            Ok(0) => closed += 1,
            Ok(n) => {
                let r = parse(&buf[..n]);
                assert_eq!(r.status, 503, "{r:?}");
                closed += 1;
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                panic!("a connection was reset")
            }
            Err(_) => alive += 1,
        }
    }
    assert!(alive <= 40 + 2, "{alive} alive, {closed} closed");
    assert!(alive >= 30, "{alive} alive, {closed} closed");
    // Everyone else is served meanwhile, and so is a user with a login behind the same
    // address (a NAT): a stranger's connection makes room for her.
    for i in 0..20 {
        let r = http_from("127.0.0.3", port, "GET", "/session", &alice, "");
        assert_eq!(r.status, 200, "request {i}: {r:?}");
        let r = http_from("127.0.0.2", port, "GET", "/session", &alice, "");
        assert_eq!(
            r.status, 200,
            "behind the flooding address, request {i}: {r:?}"
        );
    }

    // Upgraded connections (terminals) hold their slots too.
    let id = open_pty(port, &alice);
    let mut terminals = Vec::new();
    for _ in 0..40 {
        terminals.push(open_terminal("127.0.0.4", port, &id, &alice));
    }
    let r = http_from("127.0.0.4", port, "GET", "/session", &alice, "");
    assert_eq!(
        r.status, 503,
        "40 terminals use up the address's slots: {r:?}"
    );

    // Fill every remaining place with logged-in terminals from other addresses: now the
    // public port refuses everyone, yet PID 1 (probing privately) does not restart the
    // proxy, and status answers.
    drop(std::mem::take(&mut held));
    for a in 5..8 {
        for _ in 0..40 {
            terminals.push(open_terminal(&format!("127.0.0.{a}"), port, &id, &alice));
        }
    }
    let r = http_from("127.0.0.9", port, "GET", "/session", &alice, "");
    assert_eq!(r.status, 503, "the proxy is full: {r:?}");
    assert!(r.body.contains("too many connections"), "{r:?}");
    let (fds_full, rss_full) = (fds(proxy), rss_kib(proxy));
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(3) {
        let out = sb.exec(&init, &["status", "--json"], None);
        assert!(out.status.success(), "{}", text(&out));
        std::thread::sleep(Duration::from_millis(200));
    }
    let st = status_json(&sb, &init);
    assert_eq!(st["proxy"]["restarts"], 0, "busy is not dead: {st}");
    assert!(!init.stderr_text().contains("health probes in a row"));

    // The flood ends: fds and memory come back.
    drop(held);
    drop(terminals);
    assert!(
        eventually(Duration::from_secs(15), || fds(proxy) <= fds_idle + 8),
        "fds: idle {fds_idle}, full {fds_full}, after {}",
        fds(proxy)
    );
    let rss_after = rss_kib(proxy);
    eprintln!(
        "proxy: fds idle {fds_idle} full {fds_full}; RSS KiB idle {rss_idle} full {rss_full} after {rss_after}"
    );
    assert!(rss_full < 64 * 1024, "RSS under the flood: {rss_full} KiB");
    assert_eq!(http(port, "GET", "/session", &alice, "").status, 200);

    // The proxy is killed: restarted, and bob's browser session still works.
    kill(Pid::from_raw(proxy), Signal::SIGKILL).unwrap();
    init.expect_log_within("proxy exited with status 137", Duration::from_secs(10));
    assert!(
        eventually(Duration::from_secs(20), || http(
            port,
            "GET",
            "/_occ/health",
            "",
            ""
        )
        .status
            == 200),
        "restarted"
    );
    let r = http(port, "GET", "/session", &bob, "");
    assert_eq!(r.status, 200, "a proxy restart logs nobody out: {r:?}");
    assert!(init.stderr_text().contains("took back 1 session(s)"));
    // Logging out still ends it, on the new proxy and its successor.
    assert_eq!(http(port, "POST", "/_occ/logout", &bob, "").status, 303);
    assert_eq!(http(port, "GET", "/session", &bob, "").status, 401);
    drop(init);
    sb.assert_host_untouched();
}

/// W1, W2: floods of unauthenticated requests (upgrade headers on the public health path,
/// requests without or with wrong credentials) cost a logged-in user no request, and
/// `occ-init status` answers throughout.
#[test]
fn unauthenticated_floods_cost_logged_in_users_nothing() {
    let Some(bin) = opencode_bin() else { return };
    let (sb, init, port) = booted(
        &format!("['{bin}', 'serve']"),
        "",
        &[("alice", "alice password 1")],
    );
    let alice = basic("alice", "alice password 1");
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let mut flood = Vec::new();
    for t in 0..48 {
        let (stop, sent) = (stop.clone(), sent.clone());
        flood.push(std::thread::spawn(move || {
            let src = format!("127.0.1.{}", t + 1);
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                i += 1;
                let _ = match t % 3 {
                    // Keep-alive upgrade requests on the public path.
                    0 => http_from(
                        &src,
                        port,
                        "GET",
                        "/global/health",
                        "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n",
                        "",
                    ),
                    1 => http_from(&src, port, "GET", "/session", "", ""),
                    _ => http_from(
                        &src,
                        port,
                        "GET",
                        "/config",
                        &basic(&format!("nobody{i}"), "guess"),
                        "",
                    ),
                };
                sent.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    std::thread::sleep(Duration::from_millis(500));
    let mut failures = Vec::new();
    let mut status_failures = 0;
    let t = Instant::now();
    let mut n = 0;
    while t.elapsed() < Duration::from_secs(12) {
        for _ in 0..10 {
            let r = http(port, "GET", "/session", &alice, "");
            n += 1;
            if r.status != 200 {
                failures.push(format!("{} {}", r.status, r.body));
            }
        }
        let out = sb.exec(&init, &["status"], None);
        if !out.status.success() {
            status_failures += 1;
            eprintln!("status failed: {}", text(&out));
        }
    }
    stop.store(true, Ordering::SeqCst);
    for f in flood {
        let _ = f.join();
    }
    eprintln!(
        "{n} requests by alice during {} flood requests",
        sent.load(Ordering::SeqCst)
    );
    assert!(
        failures.is_empty(),
        "{} of {n} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert_eq!(status_failures, 0);
    drop(init);
    sb.assert_host_untouched();
}

/// D3 and W9: from an opencode terminal, `su` cannot check a password (no_new_privs); and
/// other local users (`nobody`) get 401 from opencode's loopback port, whose password is in
/// no command line.
#[test]
fn inside_the_container_there_is_no_side_door() {
    let Some(bin) = opencode_bin() else { return };
    let (sb, init, port) = booted(
        &format!("['{bin}', 'serve']"),
        "",
        &[("alice", "alice password 1"), ("carol", "carols secret 1")],
    );
    let alice = basic("alice", "alice password 1");

    // A terminal through the proxy, as a user would open one.
    let id = open_pty(port, &alice);
    let mut ws = websocket(port, &format!("/pty/{id}/connect"), &alice).expect("101");
    ws_send(
        &mut ws,
        "grep NoNewPrivs /proc/self/status; echo NNP-$((40+2))\n",
    );
    // Markers the shell computes: the terminal's echo of the command line has none.
    let out = ws_read_until(&mut ws, "NNP-42", Duration::from_secs(20));
    assert!(out.contains("NoNewPrivs:\t1"), "{out}");
    ws_send(
        &mut ws,
        "su carol -c 'echo SU-AS-$(id -un)'; echo SU-EXIT-$((6*7))-$?\n",
    );
    let out = ws_read_until(&mut ws, "assword", Duration::from_secs(20));
    if out.contains("assword") {
        ws_send(&mut ws, "carols secret 1\n");
    }
    let out = ws_read_until(&mut ws, "SU-EXIT-42-", Duration::from_secs(30));
    assert!(out.contains("SU-EXIT-42-"), "{out}");
    assert!(
        !out.contains("SU-AS-carol"),
        "su checked carol's password: {out}"
    );
    drop(ws);

    // opencode's own port: other local users need its per-start password.
    let st = status_json(&sb, &init);
    let listen = st["opencode"]["listen"].as_str().unwrap().to_string();
    for (method, path) in [
        ("GET", "/session"),
        ("POST", "/pty"),
        ("GET", "/global/health"),
    ] {
        let out = std::process::Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-m",
                "10",
                "-X",
                method,
            ])
            .args([
                "-H",
                "Content-Type: application/json",
                "--data-binary",
                "{}",
            ])
            .arg(format!("http://{listen}{path}"))
            .uid(65534)
            .gid(65534)
            .output()
            .expect("curl");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "401",
            "{method} {path} as nobody"
        );
    }
    // The secret is in no command line (the proxy's, opencode's).
    for what in ["proxy", "opencode"] {
        let pid = host_pid_of(&init, pid_of(&st, what));
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
        let cmdline = String::from_utf8_lossy(&cmdline).to_lowercase();
        assert!(
            !cmdline.contains("password") && !cmdline.contains("authorization"),
            "{cmdline}"
        );
    }
    // And the proxy still gets everyone in, public health included; credentials of a
    // client's own in opencode's `auth_token` query parameter never reach it.
    assert_eq!(http(port, "GET", "/session", &alice, "").status, 200);
    assert_eq!(http(port, "GET", "/global/health", "", "").status, 200);
    let wrong = support::http::b64("opencode:wrong");
    let r = http(
        port,
        "GET",
        &format!("/global/health?auth_token={wrong}"),
        "",
        "",
    );
    assert_eq!(r.status, 200, "{r:?}");
    // opencode's pages cannot be framed by another origin.
    let r = http(port, "GET", "/", &alice, "");
    assert_eq!(
        r.header("x-frame-options").as_deref(),
        Some("SAMEORIGIN"),
        "{}",
        r.head
    );
    assert!(r.head.contains("frame-ancestors 'self'"), "{}", r.head);
    drop(init);
    sb.assert_host_untouched();
}

/// Guess (`guess(i)` is the i-th wrong login) and wait out each delay, until a 429 says to
/// wait at least 25 s; returns that wait (0 when it never came).
fn guess_until_blocked(mut guess: impl FnMut(usize) -> Resp) -> u64 {
    for i in 0..12 {
        let r = guess(i);
        match r.status {
            401 => {}
            429 => {
                let wait = r.header("retry-after").unwrap().parse::<u64>().unwrap();
                if wait >= 25 {
                    return wait;
                }
                std::thread::sleep(Duration::from_secs(wait));
            }
            _ => panic!("{r:?}"),
        }
    }
    0
}

/// W3: seven strangers guessing carol's password from seven addresses do not lock her out
/// where she logged in before (a new address stays limited); identical concurrent wrong
/// guesses are one check.
#[test]
fn strangers_cannot_lock_out_a_user_where_she_logged_in_before() {
    let (sb, port) = proxied(
        &format!("['{CHILD}', 'fake-opencode', '--behavior', 'healthy']"),
        "rate_limit_attempts = 2\n",
    );
    let mut init = sb.boot(&[], &[]);
    add_user(&sb, &init, "carol", "carols secret 1");
    init.expect_log_within("opencode is ready", Duration::from_secs(30));
    let form = move |src: &str, pw: &str| {
        http_from(
            src,
            port,
            "POST",
            "/_occ/login",
            "Content-Type: application/x-www-form-urlencoded\r\n",
            &format!("username=carol&password={}", pw.replace(' ', "+")),
        )
    };
    assert_eq!(form("127.0.0.10", "carols secret 1").status, 303);
    // Strangers guess from address after address, waiting out each delay, until carol's
    // name is blocked for 30 s a try.
    let blocked_for =
        guess_until_blocked(|i| form(&format!("127.0.2.{}", i + 1), &format!("guess {i}")));
    assert!(
        blocked_for >= 25,
        "carol's name is not blocked: {blocked_for}"
    );
    // The limit on her name holds for strangers...
    let r = form("127.0.2.100", "carols secret 1");
    assert_eq!(
        r.status, 429,
        "a new address is limited on the user name: {r:?}"
    );
    // ...but not where she logged in before.
    let r = form("127.0.0.10", "carols secret 1");
    assert_eq!(
        r.status, 303,
        "carol is locked out at her own address: {r:?}"
    );
    // Everyone behind one address (a NAT, the engine's port forwarding): a spray of other
    // names from there blocks the address for newcomers, not carol where she logged in.
    let other = move |name: String| {
        http_from(
            "127.0.0.10",
            port,
            "POST",
            "/_occ/login",
            "Content-Type: application/x-www-form-urlencoded\r\n",
            &format!("username={name}&password=guess"),
        )
    };
    let blocked_for = guess_until_blocked(|i| other(format!("m{i}")));
    assert!(
        blocked_for >= 25,
        "the address is not blocked: {blocked_for}"
    );
    assert_eq!(other("newcomer".into()).status, 429);
    let r = form("127.0.0.10", "carols secret 1");
    assert_eq!(
        r.status, 303,
        "a spray from her address locks carol out: {r:?}"
    );

    // A burst of 10 identical wrong guesses is one check: with 2 attempts allowed, none of
    // them is rate-limited (checked one by one, the third would be).
    add_user(&sb, &init, "frank", "franks secret 1");
    let burst: Vec<_> = (0..10)
        .map(|_| {
            std::thread::spawn(move || {
                http_from(
                    "127.0.3.1",
                    port,
                    "GET",
                    "/x",
                    &basic("frank", "the same wrong guess"),
                    "",
                )
                .status
            })
        })
        .collect();
    let statuses: Vec<u16> = burst.into_iter().map(|b| b.join().unwrap()).collect();
    assert_eq!(statuses, [401; 10]);
    let log = init.stderr_text();
    assert_eq!(
        log.matches("login failed for user \"frank\"").count(),
        1,
        "one check for ten identical guesses: {log}"
    );
    let out = sb.exec(&init, &["status", "--json"], None);
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out),
        init.stderr_text()
    );
    drop(init);
    sb.assert_host_untouched();
}

/// Can uid `uid` bind `addr` (`v6only` for IPv6)? Asked of python3 running as that uid.
fn can_bind(uid: u32, addr: &str, port: u16, v6only: bool) -> bool {
    let family = if addr.contains(':') {
        "AF_INET6"
    } else {
        "AF_INET"
    };
    let script = format!(
        "import socket\ns=socket.socket(socket.{family})\n{}\ntry:\n s.bind(('{addr}',{port})); s.listen(); print('BOUND')\nexcept OSError as e:\n print('REFUSED', e)\n",
        if v6only {
            "s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)"
        } else {
            "pass"
        }
    );
    let out = std::process::Command::new("python3")
        .args(["-c", &script])
        .uid(uid)
        .gid(uid)
        .output()
        .expect("python3");
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("uid {uid} bind {addr}:{port} v6only={v6only}: {said}");
    said.starts_with("BOUND")
}

fn ipv6_loopback() -> bool {
    std::net::TcpListener::bind("[::1]:0").is_ok()
}

/// W4: the service user (anything an opencode terminal runs) cannot take the public port in
/// the other address family, with a wildcard host or a loopback one; IPv6 clients reach the
/// real proxy.
#[test]
fn both_address_families_are_held() {
    for host in ["0.0.0.0", "127.0.0.1"] {
        let (sb, port) = proxied(
            &format!("['{CHILD}', 'fake-opencode', '--behavior', 'healthy']"),
            "",
        );
        let mut init = sb.boot(&[], &[("OCC_HOST", host)]);
        init.expect_log_within("started the proxy", Duration::from_secs(30));
        assert!(answers(
            port,
            "/_occ/health",
            "",
            200,
            Duration::from_secs(10)
        ));
        let uid: u32 = sb
            .passwd_line("opencoder")
            .expect("service user")
            .split(':')
            .nth(2)
            .unwrap()
            .parse()
            .unwrap();
        assert!(!can_bind(uid, "127.0.0.1", port, false), "{host}");
        if host == "0.0.0.0" {
            assert!(!can_bind(uid, "0.0.0.0", port, false));
        }
        if ipv6_loopback() {
            assert!(!can_bind(uid, "::1", port, true), "{host}: [::1]:{port}");
            assert!(!can_bind(uid, "::", port, true), "{host}: [::]:{port}");
            // IPv6 clients get the real proxy.
            let mut s = TcpStream::connect(("::1", port)).expect("connect [::1]");
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s.write_all(b"GET /_occ/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .unwrap();
            let mut raw = Vec::new();
            let _ = s.read_to_end(&mut raw);
            let r = parse(&raw);
            assert_eq!(r.status, 200, "{r:?}");
            assert!(r.body.contains("\"proxy\":true"));
        } else {
            eprintln!("no IPv6 loopback here: only the IPv4 side was checked");
        }
        drop(init);
        sb.assert_host_untouched();
    }
}

/// W5 and the header limit: Basic with an empty password is refused before PAM, even where
/// /etc/pam.d/opencode is missing (PAM would fall back to `other`, whose pam_unix takes
/// `nullok`), and an account whose password field is empty counts as unable to log in.
#[test]
fn empty_passwords_get_nobody_in() {
    let (sb, port) = proxied(
        &format!("['{CHILD}', 'fake-opencode', '--behavior', 'healthy']"),
        "",
    );
    std::fs::remove_file(sb.path("etc/pam.d/opencode")).unwrap();
    let mut init = sb.boot(&[], &[]);
    add_user(&sb, &init, "alice", "alice password 1");
    add_user(&sb, &init, "dave", "dave password 1");
    init.expect_log_within("opencode is ready", Duration::from_secs(30));
    assert!(eventually(Duration::from_secs(10), || http(
        port,
        "GET",
        "/x",
        &basic("dave", "dave password 1"),
        ""
    )
    .status
        == 200));
    // dave's password field emptied behind occ-init's back (`passwd -d dave`).
    let shadow = sb.etc_file("shadow");
    let emptied: String = shadow
        .lines()
        .map(|l| match l.split_once(':') {
            Some(("dave", rest)) => {
                let rest = rest.split_once(':').map(|(_, r)| r).unwrap_or("");
                format!("dave::{rest}\n")
            }
            _ => format!("{l}\n"),
        })
        .collect();
    std::fs::write(sb.path("etc/shadow"), emptied).unwrap();
    assert_eq!(sb.shadow_of("dave").as_deref(), Some(""));
    for (who, pw) in [("dave", ""), ("dave", "anything"), ("alice", "")] {
        let r = http(port, "GET", "/x", &basic(who, pw), "");
        assert_eq!(r.status, 401, "{who}:{pw:?} -> {r:?}");
    }
    let r = http(
        port,
        "POST",
        "/_occ/login",
        "Content-Type: application/x-www-form-urlencoded\r\n",
        "username=dave&password=",
    );
    assert_ne!(r.status, 303, "{r:?}");
    assert!(r.header("set-cookie").is_none());
    let st = status_json(&sb, &init);
    assert_eq!(
        st["security"]["auth_users"],
        serde_json::json!(["alice"]),
        "{st}"
    );
    // alice still logs in (through PAM's `other` service here).
    assert_eq!(
        http(port, "GET", "/x", &basic("alice", "alice password 1"), "").status,
        200
    );

    // Headers: 64 KiB in all, as documented.
    let big = |n: usize| format!("X-Pad: {}\r\n", "a".repeat(n));
    let r = http(port, "GET", "/x", &big(70 * 1024), "");
    assert_eq!(r.status, 431, "{}", r.head);
    let r = http(
        port,
        "GET",
        "/x",
        &format!("{}{}", basic("alice", "alice password 1"), big(50 * 1024)),
        "",
    );
    assert_eq!(r.status, 200, "{}", r.head);
    drop(init);
    sb.assert_host_untouched();
}

/// W6: a second occ-init started with the same auth-socket path leaves the first one's
/// live socket alone when it exits; the first one's proxy keeps letting users in.
#[test]
fn a_second_occ_init_leaves_the_first_ones_socket_alone() {
    let (sb, port) = proxied(
        &format!("['{CHILD}', 'fake-opencode', '--behavior', 'healthy']"),
        "",
    );
    let mut first = sb.boot(&[], &[]);
    add_user(&sb, &first, "alice", "alice password 1");
    first.expect_log_within("opencode is ready", Duration::from_secs(30));
    let alice = basic("alice", "alice password 1");
    assert!(answers(port, "/x", &alice, 200, Duration::from_secs(10)));
    let other_port = support::sandbox::free_port();
    let admin2 = sb.path("run2/admin.sock").display().to_string();
    let port2 = other_port.to_string();
    let mut second = sb.boot(&[], &[("OCC_ADMIN_SOCKET", &admin2), ("OCC_PORT", &port2)]);
    second.expect_log_within("already serving", Duration::from_secs(20));
    second.signal(Signal::SIGTERM);
    let _ = second.exit_code(Duration::from_secs(30));
    drop(second);
    assert!(
        sb.path("proxy/auth.sock").exists(),
        "the first one's socket is gone"
    );
    // A login nobody checked before still works through the first one.
    let r = http(
        port,
        "GET",
        "/x",
        &basic("alice", "alice password 1"),
        "X-Fresh: 1\r\n",
    );
    assert_eq!(r.status, 200, "{r:?}");
    let out = sb.exec(
        &first,
        &["user", "add", "erin", "--password-stdin"],
        Some("erin password 1"),
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(eventually(Duration::from_secs(10), || http(
        port,
        "GET",
        "/x",
        &basic("erin", "erin password 1"),
        ""
    )
    .status
        == 200));
    drop(first);
    sb.assert_host_untouched();
}

/// Locking a user ends her sessions even while she sends nothing: a lock, a pause and an
/// unlock (after a stolen session, say) do not bring the old session back.
#[test]
fn a_lock_ends_idle_sessions_for_good() {
    let (sb, port) = proxied(
        &format!("['{CHILD}', 'fake-opencode', '--behavior', 'healthy']"),
        "",
    );
    let mut init = sb.boot(&[], &[]);
    add_user(&sb, &init, "alice", "alice password 1");
    // bob keeps the gate open while alice is locked.
    add_user(&sb, &init, "bob", "bobs own secret");
    init.expect_log_within("opencode is ready", Duration::from_secs(30));
    assert!(answers(
        port,
        "/_occ/login",
        "",
        200,
        Duration::from_secs(10)
    ));
    let cookie = form_login(port, "alice", "alice password 1");
    assert!(answers(port, "/x", &cookie, 200, Duration::from_secs(10)));
    let out = sb.exec(&init, &["user", "lock", "alice"], None);
    assert!(out.status.success(), "{}", text(&out));
    // No request of hers meanwhile.
    std::thread::sleep(Duration::from_secs(3));
    let out = sb.exec(&init, &["user", "unlock", "alice"], None);
    assert!(out.status.success(), "{}", text(&out));
    let r = http(port, "GET", "/x", &cookie, "");
    assert_eq!(
        r.status, 401,
        "the session from before the lock is back: {r:?}"
    );
    assert!(init
        .stderr_text()
        .contains("ended 1 session(s) of \"alice\""));
    // She logs in again as usual.
    let fresh = form_login(port, "alice", "alice password 1");
    assert_eq!(http(port, "GET", "/x", &fresh, "").status, 200);
    drop(init);
    sb.assert_host_untouched();
}

/// A process started from an opencode terminal (same uid as opencode) kills opencode and
/// takes its loopback port to serve its own pages at the real origin. The proxy gives it
/// nothing: no request, no credentials; opencode comes back on a new port and users get the
/// real one again.
#[test]
fn an_impostor_on_opencodes_port_gets_nothing() {
    let Some(bin) = opencode_bin() else { return };
    let (sb, mut init, port) = booted(
        &format!("['{bin}', 'serve']"),
        "",
        &[("alice", "alice password 1")],
    );
    let alice = basic("alice", "alice password 1");
    let st = status_json(&sb, &init);
    let old = st["opencode"]["listen"].as_str().unwrap().to_string();
    let old_port: u16 = old.rsplit(':').next().unwrap().parse().unwrap();
    let log = sb.path("impostor.log");
    std::fs::write(&log, "").unwrap();
    // Files the impostor writes (the sandbox's directory is root's).
    std::fs::write(sb.path("impostor.log.err"), "").unwrap();
    std::fs::write(
        sb.path("impostor.py"),
        r#"import os, signal, socket, sys, time
port, log, victim = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
os.closerange(3, 4096)
os.kill(victim, signal.SIGKILL)
s = None
for i in range(15000):
    try:
        s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port)); s.listen(64); break
    except OSError:
        s.close(); s = None; time.sleep(0.002)
open(log, "a").write("BOUND %s\n" % (s is not None))
if s is None: sys.exit(1)
s.settimeout(20)
while True:
    try: c, _ = s.accept()
    except OSError: break
    data = c.recv(65536)
    open(log, "a").write("GOT %r\n" % data[:300])
    c.sendall(b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 20\r\nConnection: close\r\n\r\n{"impostor":"here"}\n')
    c.close()
"#,
    )
    .unwrap();
    for f in ["impostor.log", "impostor.log.err", "impostor.py"] {
        let _ = std::process::Command::new("chmod")
            .arg("666")
            .arg(sb.path(f))
            .status();
    }
    let id = open_pty(port, &alice);
    let mut ws = websocket(port, &format!("/pty/{id}/connect"), &alice).expect("101");
    std::fs::write(
        sb.path("imp.sh"),
        format!(
            "setsid nohup /usr/bin/python3 {} {old_port} {} \"$1\" >{}.err 2>&1 &\n",
            sb.path("impostor.py").display(),
            log.display(),
            log.display()
        ),
    )
    .unwrap();
    let _ = std::process::Command::new("chmod")
        .arg("644")
        .arg(sb.path("imp.sh"))
        .status();
    // Let the shell come up first, then start the impostor in the background.
    ws_send(&mut ws, "echo READY-$((6*7))\n");
    let up = ws_read_until(&mut ws, "READY-42", Duration::from_secs(20));
    assert!(up.contains("READY-42"), "{up}");
    ws_send(
        &mut ws,
        &format!("sh {} $PPID\n", sb.path("imp.sh").display()),
    );
    let _ = ws_read_until(&mut ws, "never", Duration::from_secs(2));
    drop(ws);
    let err_file = format!("{}.err", log.display());
    assert!(
        eventually(Duration::from_secs(20), || init
            .stderr_text()
            .contains("opencode exited")),
        "opencode was not killed: {} {}",
        std::fs::read_to_string(&err_file).unwrap_or_default(),
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    // While opencode is down and coming back, alice gets 503 or the real opencode, never
    // the impostor.
    let t = Instant::now();
    let mut real = 0;
    while t.elapsed() < Duration::from_secs(60) && real < 5 {
        let r = http(port, "GET", "/session", &alice, "");
        assert!(!r.body.contains("impostor"), "the impostor answered: {r:?}");
        match r.status {
            200 => {
                assert!(r.body.trim_start().starts_with('['), "{r:?}");
                real += 1;
            }
            503 => {}
            _ => panic!("{r:?}"),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(real, 5, "opencode did not come back");
    assert!(
        eventually(Duration::from_secs(45), || std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("BOUND")),
        "the impostor is still trying"
    );
    // Once more, with the impostor holding the old port.
    for _ in 0..5 {
        let r = http(port, "GET", "/session", &alice, "");
        assert_eq!(r.status, 200, "{r:?}");
        assert!(r.body.trim_start().starts_with('['), "{r:?}");
    }
    let seen = std::fs::read_to_string(&log).unwrap();
    let err = std::fs::read_to_string(format!("{}.err", log.display())).unwrap_or_default();
    let seen = format!("{seen}{err}");
    assert!(
        seen.contains("BOUND True"),
        "the impostor never got the port: {seen}\n{}\n{}",
        init.stderr_text(),
        status_json(&sb, &init)
    );
    assert!(!seen.contains("GOT"), "the impostor got requests: {seen}");
    let st = status_json(&sb, &init);
    // opencode binds a port the kernel picks at every start: the impostor's is not it.
    assert_ne!(st["opencode"]["listen"].as_str().unwrap(), old, "{st}");
    drop(init);
    sb.assert_host_untouched();
}
