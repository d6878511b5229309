//! Real clients through the login proxy: opencode's own TUI (`opencode attach`, in a real
//! terminal under tmux), opencode's JS SDK (`@opencode-ai/sdk`), and a real browser
//! (Debian's chromium, driven by playwright-core) visited by a page of another port of the
//! same host. Each test boots its own sandbox: the real occ-init as PID 1, real PAM, the real
//! opencode (npm `opencode-ai`) behind the proxy. Every process has a deadline and is killed
//! when a test fails.

mod support;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use support::front::{add_user, opencode_bin, proxied, status_json};
use support::http::{basic, http, Resp};
use support::sandbox::{text, wait_output, Sandbox};
use support::Init;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `Some(())` when `ready`; otherwise skip (outside CI) or fail (in CI), naming what is missing.
fn need(ready: bool, what: &str) -> Option<()> {
    if ready {
        return Some(());
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{what} is missing in CI (tests/deps installs it)"
    );
    eprintln!("SKIPPED: {what} is missing (tests/deps installs it)");
    None
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false)
}

/// Boot a proxied sandbox over the real opencode, add `users`, wait until opencode is ready.
/// No request with anyone's credentials has been made when this returns.
fn boot_with(bin: &str, extra: &str, users: &[(&str, &str)]) -> (Sandbox, u16, Init) {
    boot_env(bin, extra, users, &[])
}

fn boot_env(
    bin: &str,
    extra: &str,
    users: &[(&str, &str)],
    env: &[(&str, &str)],
) -> (Sandbox, u16, Init) {
    let (sb, port) = proxied(&format!("['{bin}', 'serve']"), extra);
    let mut init = sb.boot(&[], env);
    init.expect_log_within("started the proxy", Duration::from_secs(30));
    for (name, pw) in users {
        add_user(&sb, &init, name, pw);
    }
    if extra.contains("per-user") {
        // Nothing runs yet: each user's opencode starts on their first request. The proxy
        // reads the opened gate within 0.5 s.
        init.expect_log_within("proxy is ready", Duration::from_secs(30));
        std::thread::sleep(Duration::from_millis(700));
    } else {
        init.expect_log_within("opencode is ready", Duration::from_secs(120));
    }
    (sb, port, init)
}

/// Run `node SCRIPT ARGS` from `dir` (ES modules find their packages beside the script), with
/// `env`, killed past `limit`; its last stdout line parsed as JSON.
fn node(
    dir: &Path,
    script: &str,
    args: &[&str],
    env: &[(&str, &str)],
    limit: Duration,
) -> (serde_json::Value, Output) {
    let mut cmd = Command::new("node");
    cmd.arg(dir.join(script))
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = wait_output(cmd.spawn().expect("node"), limit);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let seen = serde_json::from_str(stdout.lines().last().unwrap_or("{}"))
        .unwrap_or_else(|e| panic!("{script} printed no JSON ({e}): {}", text(&out)));
    (seen, out)
}

/// The ids in a JSON array of objects (`GET /pty`, `GET /session`).
fn ids(r: &Resp) -> BTreeSet<String> {
    assert_eq!(r.status, 200, "{r:?}");
    let v: serde_json::Value =
        serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{e}: {r:?}"));
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {r:?}"))
        .iter()
        .map(|x| x["id"].as_str().expect("an id").to_string())
        .collect()
}

// ---------------------------------------------------------------------------------------
// 1. opencode's TUI
// ---------------------------------------------------------------------------------------

/// A private tmux server (its own socket, config and environment); dropping it kills the
/// server and every process below it.
struct Tmux {
    socket: PathBuf,
    server: Option<i32>,
}

impl Tmux {
    fn cmd(&self) -> Command {
        let mut c = Command::new("tmux");
        c.arg("-S").arg(&self.socket);
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        let mut c = self.cmd();
        c.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        wait_output(c.spawn().expect("tmux"), Duration::from_secs(10))
    }

    fn screen(&self, target: &str) -> String {
        let out = self.run(&["capture-pane", "-p", "-t", target]);
        if out.status.success() {
            String::from_utf8_lossy(&out.stdout).into_owned()
        } else {
            format!("(capture-pane failed: {})", text(&out))
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let below = self
            .server
            .map(|pid| {
                let mut all = occ_init::init::procs::descendants(
                    &occ_init::init::procs::process_table(),
                    pid,
                );
                all.push(pid);
                all
            })
            .unwrap_or_default();
        // Never panics (this runs while a failing test unwinds): a bounded wait, then a kill.
        if let Ok(mut child) = self
            .cmd()
            .arg("kill-server")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        {
            let end = Instant::now() + Duration::from_secs(5);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < end {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        for pid in below {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

/// opencode's TUI attaches through the proxy with a container login on first contact (the
/// burst of parallel requests it sends with one Basic header, nothing verified before): it
/// shows its prompt, never "too many failed logins" nor an error, and the proxy logs no
/// failed or refused login. The password reaches the TUI through its environment
/// (`OPENCODE_SERVER_PASSWORD`), never its argv.
#[test]
fn opencodes_tui_attaches_on_first_contact() {
    tui_first_contact("");
}

/// Per user, the TUI's first requests also start alice's own opencode: they wait for it.
#[test]
fn opencodes_tui_attaches_to_its_users_own_opencode_on_first_contact() {
    tui_first_contact("instances = 'per-user'\n");
}

/// Over HTTPS (`tls = files`, a test CA the TUI trusts through `NODE_EXTRA_CA_CERTS`), to
/// the user's own opencode: the TUI attaches on first contact.
#[test]
fn opencodes_tui_attaches_over_https() {
    let certs = tempfile::tempdir().unwrap();
    support::tls::make_certs(certs.path(), &[("leaf", "ec", 30)]);
    tui_first_contact(&tls_extra(certs.path()));
}

/// `tls = files` with the test CA's `leaf` pair in `dir` (made by `make_certs`).
fn tls_extra(dir: &Path) -> String {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    format!(
        "instances = 'per-user'\ntls = 'files'\ntls_cert_file = '{}'\ntls_key_file = '{}'\n",
        dir.join("leaf.crt").display(),
        dir.join("leaf.key").display()
    )
}

/// The base URL for `extra`'s TLS setting and the environment a Node/Bun client needs to
/// trust the test CA.
fn client_url(extra: &str, port: u16) -> (String, Vec<(String, String)>) {
    match extra
        .lines()
        .find_map(|l| l.strip_prefix("tls_cert_file = '"))
        .and_then(|c| c.strip_suffix('\''))
    {
        Some(cert) => {
            let ca = Path::new(cert).with_file_name("ca.pem");
            (
                format!("https://localhost:{port}"),
                vec![("NODE_EXTRA_CA_CERTS".into(), ca.display().to_string())],
            )
        }
        None => (format!("http://127.0.0.1:{port}"), Vec::new()),
    }
}

/// With a personal API token instead of the password (`opencode attach -u alice -p TOKEN`,
/// here through OPENCODE_SERVER_PASSWORD), to her own opencode.
#[test]
fn opencodes_tui_attaches_with_a_token() {
    tui_attach("instances = 'per-user'\n", true);
}

fn tui_first_contact(extra: &str) {
    tui_attach(extra, false);
}

/// The TUI attaches as alice, with her password or (`token`) a token made for her.
fn tui_attach(extra: &str, token: bool) {
    let Some(bin) = opencode_bin() else { return };
    let Some(()) = need(on_path("tmux") && on_path("timeout"), "tmux") else {
        return;
    };
    let password = "tui first contact 7";
    let (sb, port, mut init) = boot_with(&bin, extra, &[("alice", password)]);
    let made;
    let pw = if token {
        let out = sb.exec(&init, &["token", "create", "alice", "--name", "tui"], None);
        assert!(out.status.success(), "{}", text(&out));
        made = String::from_utf8_lossy(&out.stdout).trim().to_string();
        made.as_str()
    } else {
        password
    };
    let (url, client_env) = client_url(extra, port);

    // The TUI's own home, config, data and cache: a temp dir, never the real home.
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    for d in ["config", "data", "cache", "state"] {
        std::fs::create_dir_all(h.join(d)).unwrap();
    }
    let conf = h.join("tmux.conf");
    std::fs::write(
        &conf,
        "set -g remain-on-exit on\nset -g history-limit 5000\n",
    )
    .unwrap();
    let mut tmux = Tmux {
        socket: h.join("tmux.sock"),
        server: None,
    };
    // Runs in the pane: the TUI with a deadline; the shell then says how it ended.
    let line = format!(
        "timeout --foreground 90 '{bin}' attach {url} -u alice; \
         echo \"[attach exited: $?]\"; sleep 90"
    );
    let mut c = tmux.cmd();
    // The server is new (its own socket): it hands this environment to the pane.
    c.arg("-f")
        .arg(&conf)
        .args([
            "new-session",
            "-d",
            "-s",
            "tui",
            "-x",
            "200",
            "-y",
            "50",
            "-c",
        ])
        .arg(h)
        .arg(&line)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", h)
        .env("XDG_CONFIG_HOME", h.join("config"))
        .env("XDG_DATA_HOME", h.join("data"))
        .env("XDG_CACHE_HOME", h.join("cache"))
        .env("XDG_STATE_HOME", h.join("state"))
        .env("TERM", "xterm-256color")
        .env("LANG", "C.UTF-8")
        .env("OPENCODE_DISABLE_AUTOUPDATE", "true")
        .env("OPENCODE_SERVER_USERNAME", "alice")
        .env("OPENCODE_SERVER_PASSWORD", pw)
        .envs(client_env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let out = wait_output(c.spawn().expect("tmux"), Duration::from_secs(10));
    assert!(out.status.success(), "tmux new-session: {}", text(&out));
    let pid = tmux.run(&["display-message", "-p", "-t", "tui", "#{pid}"]);
    tmux.server = String::from_utf8_lossy(&pid.stdout).trim().parse().ok();
    assert!(tmux.server.is_some(), "tmux server pid: {}", text(&pid));

    // What must never show: the limiter refusing a right password, or any error.
    let bad = [
        "too many failed logins",
        "Error",
        "Unauthorized",
        "[attach exited",
    ];
    let check = |screen: &str, init: &mut Init| {
        for b in bad {
            assert!(
                !screen.contains(b),
                "the TUI shows {b:?}; screen:\n{screen}\nproxy log:\n{}",
                init.stderr_text()
            );
        }
    };
    let t = Instant::now();
    let mut screen = String::new();
    let mut attached = None;
    // Alone it attaches in 5-10 s; a loaded machine gets more.
    while t.elapsed() < Duration::from_secs(60) {
        screen = tmux.screen("tui");
        check(&screen, &mut init);
        if screen.contains("Ask anything") {
            attached = Some(t.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let Some(after) = attached else {
        panic!(
            "the TUI never showed its prompt within {:?}; screen:\n{screen}\nproxy log:\n{}",
            t.elapsed(),
            init.stderr_text()
        );
    };
    eprintln!("the TUI attached after {after:?}");
    // It stays attached: a few more seconds of whatever it loads next.
    let end = Instant::now() + Duration::from_secs(4);
    while Instant::now() < end {
        screen = tmux.screen("tui");
        check(&screen, &mut init);
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(screen.contains("Ask anything"), "screen:\n{screen}");
    let log = init.stderr_text();
    for bad in ["login failed", "rate limited", "login refused"] {
        assert!(
            !log.contains(bad),
            "the proxy logged {bad:?}; screen:\n{screen}\nlog:\n{log}"
        );
    }
    // The password was in no process's argv.
    let cmdlines: Vec<String> = occ_init::init::procs::process_table()
        .iter()
        .filter_map(|(p, _)| std::fs::read(format!("/proc/{p}/cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(pw))
        .collect();
    assert!(cmdlines.is_empty(), "the password in argv: {cmdlines:?}");
    drop(tmux);
    drop(init);
    sb.assert_host_untouched();
}

// ---------------------------------------------------------------------------------------
// 2. opencode's JS SDK, and a burst of raw requests
// ---------------------------------------------------------------------------------------

/// The directory tests/deps installs `@opencode-ai/sdk` into.
fn sdk_dir() -> Option<PathBuf> {
    let dir = root().join(".cache/sdk");
    need(
        dir.join("node_modules/@opencode-ai/sdk/package.json")
            .exists()
            && on_path("node"),
        "node or @opencode-ai/sdk (.cache/sdk)",
    )?;
    Some(dir)
}

/// On first contact, opencode's SDK fires ten `session.list()` and a `session.create()` at
/// once with one Basic header, then subscribes to events: every call succeeds (no 401, no
/// 429) and `server.connected` arrives. Ten parallel raw `GET /session` with a second user's
/// right password, also on first contact, all answer 200. Nothing is logged as failed.
#[test]
fn the_sdk_works_with_parallel_calls_on_first_contact() {
    sdk_first_contact("");
}

/// Per user: the SDK's and the raw burst's first requests each start their user's own
/// opencode (one each) and all succeed.
#[test]
fn the_sdk_works_with_its_users_own_opencode_on_first_contact() {
    sdk_first_contact("instances = 'per-user'\ninstance_start_timeout = '60s'\n");
}

/// Over HTTPS (a test CA trusted through `NODE_EXTRA_CA_CERTS`), to the user's own
/// opencode: the SDK's parallel first calls, a create and the event stream all succeed,
/// with the password and with a personal API token as `Authorization: Bearer`.
#[test]
fn the_sdk_works_over_https() {
    let Some(bin) = opencode_bin() else { return };
    let Some(dir) = sdk_dir() else { return };
    std::fs::copy(root().join("tests/clients/sdk.mjs"), dir.join("sdk.mjs")).unwrap();
    let certs = tempfile::tempdir().unwrap();
    support::tls::make_certs(certs.path(), &[("leaf", "ec", 30)]);
    let extra = format!(
        "{}instance_start_timeout = '60s'\n",
        tls_extra(certs.path())
    );
    let pw = "sdk over https 5";
    let (sb, port, mut init) = boot_with(&bin, &extra, &[("alice", pw)]);
    let (url, client_env) = client_url(&extra, port);
    assert!(url.starts_with("https://"));
    let mut env: Vec<(&str, &str)> = vec![("OCC_USER", "alice"), ("OCC_PW", pw)];
    env.extend(client_env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let (seen, out) = node(&dir, "sdk.mjs", &[&url], &env, Duration::from_secs(60));
    let why = format!("{seen}\n{}\nlog:\n{}", text(&out), init.stderr_text());
    assert!(out.status.success(), "{why}");
    assert_eq!(seen["list"], serde_json::json!(vec![200; 10]), "{why}");
    assert_eq!(seen["create"], 200, "{why}");
    assert_eq!(seen["firstEvent"], "server.connected", "{why}");
    // With a personal API token as Bearer instead of the password.
    let out = sb.exec(&init, &["token", "create", "alice", "--name", "sdk"], None);
    assert!(out.status.success(), "{}", text(&out));
    let token = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let mut env: Vec<(&str, &str)> = vec![("OCC_BEARER", token.as_str())];
    env.extend(client_env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let (seen, out) = node(&dir, "sdk.mjs", &[&url], &env, Duration::from_secs(60));
    let why = format!("{seen}\n{}\nlog:\n{}", text(&out), init.stderr_text());
    assert!(out.status.success(), "bearer: {why}");
    assert_eq!(
        seen["list"],
        serde_json::json!(vec![200; 10]),
        "bearer: {why}"
    );
    assert_eq!(seen["firstEvent"], "server.connected", "bearer: {why}");
    // Without the CA the same client refuses the certificate (the check is real).
    let (seen, out) = node(
        &dir,
        "sdk.mjs",
        &[&url],
        &[("OCC_USER", "alice"), ("OCC_PW", pw)],
        Duration::from_secs(60),
    );
    assert!(
        !out.status.success() || seen["list"] != serde_json::json!(vec![200; 10]),
        "trusted without the CA: {seen}"
    );
    drop(init);
    sb.assert_host_untouched();
}

fn sdk_first_contact(extra: &str) {
    let Some(bin) = opencode_bin() else { return };
    let Some(dir) = sdk_dir() else { return };
    std::fs::copy(root().join("tests/clients/sdk.mjs"), dir.join("sdk.mjs")).unwrap();
    let alice_pw = "sdk first contact 1";
    let bob_pw = "raw first contact 2";
    let (sb, port, mut init) = boot_with(&bin, extra, &[("alice", alice_pw), ("bob", bob_pw)]);

    // Raw: bob's first requests, ten at once.
    let burst: Vec<_> = (0..10)
        .map(|_| {
            std::thread::spawn(move || {
                http(port, "GET", "/session", &basic("bob", bob_pw), "").status
            })
        })
        .collect();
    let statuses: Vec<u16> = burst.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(
        statuses,
        vec![200; 10],
        "bob's parallel first contact; log:\n{}",
        init.stderr_text()
    );

    // The SDK: alice's first requests.
    let (seen, out) = node(
        &dir,
        "sdk.mjs",
        &[&format!("http://127.0.0.1:{port}")],
        &[("OCC_USER", "alice"), ("OCC_PW", alice_pw)],
        Duration::from_secs(60),
    );
    let why = format!("{seen}\n{}\nlog:\n{}", text(&out), init.stderr_text());
    assert!(out.status.success(), "{why}");
    assert_eq!(seen["list"], serde_json::json!(vec![200; 10]), "{why}");
    assert_eq!(seen["listErrors"], serde_json::json!([]), "{why}");
    assert_eq!(seen["create"], 200, "{why}");
    let created = seen["createdId"]
        .as_str()
        .unwrap_or_else(|| panic!("{why}"));
    assert_eq!(seen["firstEvent"], "server.connected", "{why}");
    assert!(seen["sseError"].is_null(), "{why}");
    // The session it created is opencode's, seen by anyone with a login.
    let r = http(port, "GET", "/session", &basic("alice", alice_pw), "");
    assert!(ids(&r).contains(created), "{r:?}");
    if extra.contains("per-user") {
        // One opencode each, started once each however many first requests came at once.
        assert_eq!(init.count_log("starting alice's own opencode"), 1);
        assert_eq!(init.count_log("starting bob's own opencode"), 1);
        let r = http(port, "GET", "/session", &basic("bob", bob_pw), "");
        assert!(
            !ids(&r).contains(created),
            "bob sees alice's session: {r:?}"
        );
    }

    let log = init.stderr_text();
    for bad in ["login failed", "rate limited", "login refused"] {
        assert!(!log.contains(bad), "the proxy logged {bad:?}:\n{log}");
    }
    drop(init);
    sb.assert_host_untouched();
}

// ---------------------------------------------------------------------------------------
// 3. A page of another port of the same host (D1), in a real browser
// ---------------------------------------------------------------------------------------

/// A tiny web server on another port of localhost serving the attacker's page at
/// `/evil.html` (everything else 404), until dropped or its deadline passes.
struct Attacker {
    port: u16,
    stop: Arc<AtomicBool>,
    served: Arc<Mutex<Vec<String>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Attacker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Attacker {
    /// Serve `page` on `listener` (bound early, so its port can go in the config).
    fn serve(listener: TcpListener, page: String, limit: Duration) -> Attacker {
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(Mutex::new(Vec::new()));
        let (s, log) = (stop.clone(), served.clone());
        let thread = std::thread::spawn(move || {
            let end = Instant::now() + limit;
            while !s.load(Ordering::Relaxed) && Instant::now() < end {
                match listener.accept() {
                    Ok((conn, _)) => {
                        if let Some(path) = answer(conn, &page) {
                            log.lock().unwrap().push(path);
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Attacker {
            port,
            stop,
            served,
            thread: Some(thread),
        }
    }
}

/// One request, one answer, connection closed; returns the request's path.
fn answer(mut conn: TcpStream, page: &str) -> Option<String> {
    conn.set_nonblocking(false).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    conn.set_write_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 * 1024 {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let head = String::from_utf8_lossy(&head);
    let path = head.split_whitespace().nth(1)?.to_string();
    let (status, body) = if path == "/evil.html" {
        ("200 OK", page)
    } else {
        ("404 Not Found", "not here\n")
    };
    let _ = write!(
        conn,
        "HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    Some(path)
}

/// For an HTML attribute or a JS string literal in the page.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// What the attack left behind.
struct Attack {
    /// What the browser script printed.
    seen: serde_json::Value,
    why: String,
    ptys_before: BTreeSet<String>,
    ptys_after: BTreeSet<String>,
    sessions_before: BTreeSet<String>,
    sessions_after: BTreeSet<String>,
    logins: usize,
    marker_pty: bool,
    marker_ws: bool,
    marker_json: bool,
    marker_ws_api: bool,
    /// `GET /session` with the browser's cookie after the attack.
    cookie_status: u16,
    served: Vec<String>,
    /// The proxy's log (and occ-init's), debug level.
    log: String,
    evil_port: u16,
    /// The terminal that existed before (its id given to the page).
    pty: String,
    /// A CORS preflight from the attacker's origin for `POST /pty`, sent after the browser.
    preflight: Resp,
}

/// The browser is ready: Debian's chromium and playwright-core (tests/deps).
fn browser_dir() -> Option<PathBuf> {
    let dir = root().join(".cache/browser");
    need(
        dir.join("node_modules/playwright-core").exists()
            && Path::new("/usr/bin/chromium").exists()
            && on_path("node"),
        "chromium or playwright-core (.cache/browser)",
    )?;
    Some(dir)
}

/// Boot, log alice in with the browser, send it to the attacker's page on another port, then
/// to the proxy's own origin; `trusted` lists the attacker's origin in `trusted_origins` (the
/// control that shows the page's attacks are real).
fn cross_origin_attack(bin: &str, dir: &Path, trusted: bool) -> Attack {
    std::fs::copy(
        root().join("tests/browser/cross_origin.mjs"),
        dir.join("cross_origin.mjs"),
    )
    .unwrap();
    let shots = root().join("target/browser-shots");
    std::fs::create_dir_all(&shots).unwrap();
    let pw = "cross origin victim 9";
    let nonce = format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let marker = format!("/tmp/occ-xorigin-{nonce}");
    let _markers = Markers(marker.clone());
    // The attacker's port is held from now on: it goes in the config (for `trusted`).
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the attacker's port");
    let evil_port = listener.local_addr().unwrap().port();
    let extra = if trusted {
        format!("trusted_origins = ['http://localhost:{evil_port}']\n")
    } else {
        String::new()
    };
    // At debug level the proxy logs each request it refuses as cross-origin.
    let (sb, port, mut init) = boot_env(bin, &extra, &[("alice", pw)], &[("OCC_LOG", "debug")]);
    let alice = basic("alice", pw);

    // A terminal that exists (the page is given its id, as if the attacker had learned it).
    let r = http(
        port,
        "POST",
        "/pty",
        &format!("{alice}Content-Type: application/json\r\n"),
        "{}",
    );
    assert_eq!(r.status, 200, "{r:?}");
    let pty: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    let pty = pty["id"].as_str().unwrap().to_string();
    let ptys_before = ids(&http(port, "GET", "/pty", &alice, ""));
    let sessions_before = ids(&http(port, "GET", "/session", &alice, ""));
    assert!(ptys_before.contains(&pty));

    let page = include_str!("clients/evil.html")
        .replace("{{TARGET}}", &format!("http://localhost:{port}"))
        .replace("{{WS}}", &format!("ws://localhost:{port}"))
        .replace("{{PTY}}", &escape(&pty))
        .replace("{{MARKER}}", &escape(&marker))
        .replace("{{USER}}", "alice")
        .replace("{{PW}}", &escape(pw));
    let evil = Attacker::serve(listener, page, Duration::from_secs(150));

    let (seen, out) = node(
        dir,
        "cross_origin.mjs",
        &[
            &format!("http://localhost:{port}/"),
            &format!("http://localhost:{}/evil.html", evil.port),
            "alice",
            &shots.display().to_string(),
            if trusted { "no-control" } else { "control" },
        ],
        &[("OCC_PW", pw)],
        Duration::from_secs(130),
    );
    // Let anything the page started reach opencode and the log.
    std::thread::sleep(Duration::from_millis(1500));
    let log = init.stderr_text();
    let why = format!("{seen:#}\n{}\nproxy log:\n{log}", text(&out));
    assert!(out.status.success(), "the browser script failed: {why}");
    let cookie = seen["cookieAfter"].as_str().unwrap_or_default().to_string();
    let cookie_status = http(
        port,
        "GET",
        "/session",
        &format!("Cookie: occ_session={cookie}\r\n"),
        "",
    )
    .status;
    // What a CORS preflight from the attacker's origin gets (browsers send no credentials).
    let preflight = http(
        port,
        "OPTIONS",
        "/pty",
        &format!(
            "Origin: http://localhost:{evil_port}\r\nAccess-Control-Request-Method: POST\r\n\
             Access-Control-Request-Headers: content-type\r\n"
        ),
        "",
    );
    let attack = Attack {
        preflight,
        ptys_after: ids(&http(port, "GET", "/pty", &alice, "")),
        sessions_after: ids(&http(port, "GET", "/session", &alice, "")),
        logins: init.count_log("logged in from"),
        marker_pty: Path::new(&format!("{marker}-pty")).exists(),
        marker_ws: Path::new(&format!("{marker}-ws")).exists(),
        marker_json: Path::new(&format!("{marker}-json")).exists(),
        marker_ws_api: Path::new(&format!("{marker}-ws-api")).exists(),
        seen,
        why,
        ptys_before,
        sessions_before,
        cookie_status,
        served: evil.served.lock().unwrap().clone(),
        log: init.stderr_text(),
        evil_port,
        pty,
    };
    drop(evil);
    drop(init);
    sb.assert_host_untouched();
    attack
}

/// The files the attacker's commands would create; removed on drop.
struct Markers(String);

impl Drop for Markers {
    fn drop(&mut self) {
        for end in ["pty", "json", "ws", "ws-api"] {
            let _ = std::fs::remove_file(format!("{}-{end}", self.0));
        }
    }
}

/// The proxy's answers to the attacker's page, as the browser saw them (phase "attack").
fn attack_answers(seen: &serde_json::Value) -> Vec<serde_json::Value> {
    seen["responses"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|r| r["phase"] == "attack" && r["by"] == "attacker")
        .collect()
}

/// D1: alice is logged in (her `SameSite=Strict` cookie is sent to every port of
/// `localhost`: the same site). A page served from another port of localhost tries, in her
/// browser: a no-cors `POST /pty` running its own command, the same as JSON (preflighted), a
/// text/plain `POST /session` and `/api/session`, a credentialed read of `/session`, the
/// WebSocket of an existing terminal on both of opencode's paths (`/pty/ID/connect`,
/// `/api/pty/ID/connect`), a connect-token for it, and auto-submitted login and logout forms.
/// None gets anything: no pty, no opencode session, no WebSocket opens, no marker file is
/// touched, no new login, her cookie unchanged and still good; the proxy logs each as refused
/// from the attacker's origin and every answer the browser saw was 403 `cross_origin`. The
/// control: the same browser on the proxy's own origin opens a terminal (and talks to it over
/// its WebSocket), and opencode's web UI still renders.
#[test]
fn a_page_of_another_port_gets_no_shell_and_no_terminal() {
    let Some(bin) = opencode_bin() else { return };
    let Some(dir) = browser_dir() else { return };
    let a = cross_origin_attack(&bin, &dir, false);
    let (seen, why) = (&a.seen, &a.why);
    assert!(a.served.iter().any(|p| p == "/evil.html"), "{why}");
    assert_eq!(
        seen["evilOrigin"].as_str().map(|o| o.contains("localhost")),
        Some(true)
    );
    // The victim was logged in and the page ran to its end.
    assert!(seen["cookieBefore"].is_string(), "{why}");
    let attack = &seen["attack"];
    assert!(attack.is_object(), "{why}");

    // No shell: no new pty but the control's, no command run.
    let control = &seen["control"];
    let control_pty = control["ptyId"].as_str().unwrap_or_else(|| panic!("{why}"));
    let new: BTreeSet<_> = a.ptys_after.difference(&a.ptys_before).cloned().collect();
    assert_eq!(
        new,
        BTreeSet::from([control_pty.to_string()]),
        "a pty was created by the attacker's page: {why}"
    );
    assert!(
        !a.marker_pty,
        "the attacker's POST /pty ran its command: {why}"
    );
    assert!(
        !a.marker_json,
        "the attacker's JSON POST /pty ran its command: {why}"
    );
    assert!(attack["ptyJson"]["error"].is_string(), "{why}");
    assert_eq!(
        a.preflight.status, 403,
        "a preflight from the attacker: {:?}",
        a.preflight
    );
    // No terminal: the WebSocket never opened, nothing came back, nothing ran.
    assert_eq!(
        attack["ws"]["opened"], false,
        "the attacker's WebSocket opened: {why}"
    );
    assert_eq!(attack["ws"]["messages"], 0, "{why}");
    assert_eq!(
        attack["wsApi"]["opened"], false,
        "the attacker's WebSocket opened: {why}"
    );
    assert_eq!(attack["wsApi"]["messages"], 0, "{why}");
    assert!(
        !a.marker_ws_api,
        "the attacker typed into the terminal: {why}"
    );
    assert!(!a.marker_ws, "the attacker typed into the terminal: {why}");
    // No opencode session made, nothing read.
    assert_eq!(
        a.sessions_after, a.sessions_before,
        "opencode's sessions changed: {why}"
    );
    assert!(
        attack["readSessions"]["error"].is_string(),
        "the attacker's page read /session: {why}"
    );
    // No login CSRF, no logout CSRF: one login (hers, in the form), her cookie unchanged and good.
    assert_eq!(a.logins, 1, "a login from the attacker's form: {why}");
    assert_eq!(seen["cookieAfter"], seen["cookieBefore"], "{why}");
    assert_eq!(a.cookie_status, 200, "her session ended: {why}");

    // Each attempt reached the proxy and was refused as cross-origin: the proxy says so, naming
    // the attacker's origin, and whatever answer the browser saw was a 403.
    let evil_origin = format!("\"http://localhost:{}\"", a.evil_port);
    for (method, path) in [
        ("POST", "/pty".to_string()),
        ("OPTIONS", "/pty".to_string()),
        ("POST", "/session".to_string()),
        ("GET", "/session".to_string()),
        ("POST", "/api/session".to_string()),
        ("GET", format!("/pty/{}/connect", a.pty)),
        ("GET", format!("/api/pty/{}/connect", a.pty)),
        ("POST", format!("/pty/{}/connect-token", a.pty)),
        ("POST", "/_occ/login".to_string()),
        ("POST", "/_occ/logout".to_string()),
    ] {
        let needle = format!("refused {method} {path} from ");
        assert!(
            a.log
                .lines()
                .any(|l| l.contains(&needle) && l.contains(&evil_origin)),
            "the proxy did not refuse {method} {path} from {evil_origin}: {why}"
        );
    }
    let answers = attack_answers(seen);
    assert!(!answers.is_empty(), "{why}");
    for r in &answers {
        assert_eq!(r["status"], 403, "{r} {why}");
        let body = r["body"].as_str().unwrap_or_default();
        assert!(
            body.is_empty() || body.contains("cross_origin"),
            "{r} {why}"
        );
    }
    let sockets = seen["attackWebSockets"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(sockets.len(), 2, "{why}");
    for ws in sockets {
        assert!(
            ws["error"].as_str().unwrap_or_default().contains("403"),
            "{ws} {why}"
        );
    }

    // The control, on the proxy's own origin: a terminal, its output, opencode's UI.
    assert_eq!(control["ptyStatus"], 200, "{why}");
    assert_eq!(control["sessionStatus"], 200, "{why}");
    assert_eq!(control["ws"]["opened"], true, "{why}");
    assert!(
        control["ws"]["output"]
            .as_str()
            .unwrap_or_default()
            .contains("own-origin-42"),
        "{why}"
    );
    assert_eq!(seen["appTitle"], "OpenCode", "{why}");
    let shots = root().join("target/browser-shots");
    for s in ["1-logged-in", "2-attacker", "3-own-origin"] {
        assert!(shots.join(format!("cross-origin-{s}.png")).exists(), "{s}");
    }
}

/// The control that shows the attacker's page is real: with its origin in `trusted_origins`
/// the very same page does get a terminal — the WebSocket opens and runs its command — and
/// its login form logs the browser in anew. So the other test fails if the Origin check
/// goes.
#[test]
fn the_same_page_from_a_trusted_origin_does_get_a_terminal() {
    let Some(bin) = opencode_bin() else { return };
    let Some(dir) = browser_dir() else { return };
    let a = cross_origin_attack(&bin, &dir, true);
    let (seen, why) = (&a.seen, &a.why);
    let attack = &seen["attack"];
    assert_eq!(attack["ws"]["opened"], true, "{why}");
    assert!(a.marker_ws, "the trusted page's command did not run: {why}");
    // A text/plain POST creates an opencode session. (opencode itself refuses the page's
    // /api/pty WebSocket and connect-token: those are not counted on.)
    assert!(
        a.sessions_after.len() > a.sessions_before.len(),
        "the trusted page made no session: {why}"
    );
    assert!(
        a.logins >= 2,
        "the trusted page's login form did not log in: {why}"
    );
    eprintln!(
        "trusted origin: POST /pty made {} pty(s), markers no-cors {} json {}; JSON POST {}; \
         preflight {} {:?}; sessions {} -> {}; answers {:#}",
        a.ptys_after.difference(&a.ptys_before).count(),
        a.marker_pty,
        a.marker_json,
        attack["ptyJson"],
        a.preflight.status,
        a.preflight.body,
        a.sessions_before.len(),
        a.sessions_after.len(),
        serde_json::Value::Array(attack_answers(seen))
    );
}

#[test]
fn two_people_in_two_browsers_each_see_only_their_own_sessions() {
    let Some(bin) = opencode_bin() else { return };
    let Some(dir) = browser_dir() else { return };
    std::fs::copy(
        root().join("tests/browser/two_users.mjs"),
        dir.join("two_users.mjs"),
    )
    .unwrap();
    let shots = root().join("target/browser-shots/two-users");
    std::fs::create_dir_all(&shots).unwrap();
    let (sb, port) = proxied(
        &format!("['{bin}', 'serve']"),
        "instances = 'per-user'\ninstance_start_timeout = '60s'\n",
    );
    let mut init = sb.boot(&[], &[]);
    init.expect_log_within("proxy is ready", Duration::from_secs(30));
    add_user(&sb, &init, "alice", "alice in chromium 1");
    add_user(&sb, &init, "bob", "bob in chromium 22");
    std::thread::sleep(Duration::from_millis(700));
    let (seen, out) = node(
        &dir,
        "two_users.mjs",
        &[
            &format!("http://127.0.0.1:{port}/"),
            "alice",
            "alice in chromium 1",
            "bob",
            "bob in chromium 22",
            &shots.display().to_string(),
        ],
        &[],
        Duration::from_secs(240),
    );
    assert!(out.status.success(), "{seen}\n{}", text(&out));
    for (me, other) in [("alice", "bob"), ("bob", "alice")] {
        let v = &seen[me];
        assert_eq!(v["appTitle"], "OpenCode", "{seen}");
        assert_eq!(v["created"], 200, "{seen}");
        let titles: Vec<&str> = v["titles"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|t| t.as_str())
            .collect();
        assert!(
            titles.contains(&format!("{me}-private-plans").as_str()),
            "{seen}"
        );
        assert!(
            !titles.iter().any(|t| t.starts_with(other)),
            "{me} sees {other}'s sessions: {titles:?}"
        );
        assert!(!v["text"]
            .as_str()
            .unwrap_or("")
            .contains(&format!("{other}-private")));
        assert!(shots.join(format!("{me}.png")).exists());
    }
    let st = status_json(&sb, &init);
    let users: Vec<&str> = st["instances"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["user"].as_str())
        .collect();
    assert_eq!(users, vec!["alice", "bob"], "{st}");
}
