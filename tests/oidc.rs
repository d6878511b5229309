//! Single sign-on against a real OpenID provider: panva's `oidc-provider` (npm, certified),
//! started on loopback with a confidential client, development interactions and the device
//! flow; headless Chromium signs in through its real pages. occ-init runs as PID 1 of a users
//! sandbox with real PAM and the proxy as its own user. Every process has a deadline.

mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::front::{add_user, opencode_bin, proxied, status_json};
use support::http::{basic, http};
use support::sandbox::{free_port, text, wait_output, Sandbox};
use support::{eventually, Init, CHILD};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The provider's and the browser's npm packages (tests/deps installs them); `None` skips
/// (outside CI).
fn deps() -> Option<(PathBuf, PathBuf)> {
    let oidc = root().join(".cache/oidc");
    let browser = root().join(".cache/browser");
    // oidc-provider 9 needs Node 20 or later (Debian bookworm's 18 lacks URL.parse).
    let node_major = Command::new("node")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .trim_start_matches('v')
                .split('.')
                .next()
                .and_then(|m| m.parse::<u32>().ok())
        })
        .unwrap_or(0);
    if node_major < 20 {
        assert!(
            std::env::var_os("CI").is_none(),
            "the OIDC tests need Node 20 or later for oidc-provider 9 (node is {node_major})"
        );
        eprintln!("SKIPPED: Node {node_major} is too old for oidc-provider 9");
        return None;
    }
    let ready = oidc.join("node_modules/oidc-provider").exists()
        && browser.join("node_modules/playwright-core").exists()
        && Path::new("/usr/bin/chromium").exists();
    if !ready {
        assert!(
            std::env::var_os("CI").is_none(),
            "tests/deps installs oidc-provider"
        );
        eprintln!("SKIPPED: oidc-provider, playwright-core or chromium missing");
        return None;
    }
    std::fs::copy(
        root().join("tests/oidc/provider.mjs"),
        oidc.join("provider.mjs"),
    )
    .unwrap();
    std::fs::copy(
        root().join("tests/browser/oidc.mjs"),
        browser.join("oidc.mjs"),
    )
    .unwrap();
    Some((oidc, browser))
}

/// The provider, killed on drop.
struct Provider {
    child: Child,
    port: u16,
}

impl Drop for Provider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Provider {
    /// Start it for a proxy at `public` (its callback the only redirect URI); `shift`
    /// moves its clock (seconds).
    fn start(dir: &Path, public: &str, shift: i64) -> Provider {
        Provider::start_on(dir, free_port(), public, shift)
    }

    fn start_on(dir: &Path, port: u16, public: &str, shift: i64) -> Provider {
        let mut child = Command::new("node")
            .arg(dir.join("provider.mjs"))
            .arg(port.to_string())
            .arg(format!("{public}/_occ/oidc/callback"))
            .arg(shift.to_string())
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("node");
        let out = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            match rx.recv_timeout(end.saturating_duration_since(Instant::now())) {
                Ok(l) if l.starts_with("READY") => break,
                Ok(_) => {}
                Err(_) => {
                    let _ = child.kill();
                    panic!("the provider did not start");
                }
            }
        }
        Provider { child, port }
    }

    fn issuer(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// A proxied sandbox (opencode: `command`) with single sign-on against `issuer`, alice a
/// password user; returns the sandbox, its port and its public URL (the proxy's).
fn sso_sandbox(command: &str, extra: &str) -> (Sandbox, u16, String) {
    let (sb, port) = proxied(command, extra);
    let public = format!("http://localhost:{port}");
    (sb, port, public)
}

/// Add the OIDC settings for `issuer` and boot.
fn boot_sso(sb: &Sandbox, public: &str, issuer: &str, more: &str) -> Init {
    let secret = sb.path("occ/oidc-secret");
    std::fs::write(&secret, "occ-test-secret\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let conf = sb.path("occ/init.toml");
    let mut t = std::fs::read_to_string(&conf).unwrap();
    t.push_str(&format!(
        "oidc_issuer = '{issuer}'\noidc_client_id = 'occ'\noidc_client_secret_file = '{}'\n\
         public_url = '{public}'\noidc_provider_name = 'Test IdP'\n{more}",
        secret.display()
    ));
    std::fs::write(&conf, t).unwrap();
    sb.boot(&[], &[])
}

/// Run the browser script; its JSON.
fn browse(dir: &Path, mode: &str, url: &str, login: &str, prefix: &str) -> serde_json::Value {
    let shots = root().join("target/browser-shots");
    std::fs::create_dir_all(&shots).unwrap();
    let child = Command::new("node")
        .arg(dir.join("oidc.mjs"))
        .args([mode, url, login])
        .arg(&shots)
        .arg(prefix)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node");
    let out = wait_output(child, Duration::from_secs(120));
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.lines().last().unwrap_or("{}"))
        .unwrap_or_else(|e| panic!("oidc.mjs printed no JSON ({e}): {}", text(&out)))
}

fn fake() -> String {
    format!("['{CHILD}', 'fake-opencode', '--behavior', 'healthy']")
}

/// Did the browser end up with a session?
fn signed_in(seen: &serde_json::Value) -> bool {
    seen["cookies"]
        .as_array()
        .is_some_and(|cs| cs.iter().any(|c| c["name"] == "occ_session"))
}

/// Until status says the provider answers (or not).
/// (Right after a boot the admin socket may not be there yet: that is "not yet", not a
/// failure.)
fn provider_seen(sb: &Sandbox, init: &Init, reachable: bool) -> bool {
    eventually(Duration::from_secs(30), || {
        let out = sb.exec(init, &["status", "--json"], None);
        out.status.success()
            && serde_json::from_slice::<serde_json::Value>(&out.stdout)
                .is_ok_and(|v| v["security"]["oidc"]["reachable"] == reachable)
    })
}

/// The browser flow with the real opencode: alice (an existing user, in the allowed group)
/// signs in at the provider and lands in opencode's UI with a session; ghost (no such user)
/// gets the refusal page that says how to add him; eve (not in an allowed group) is refused;
/// a replayed callback and a tampered `state` give no session; password logins still work;
/// status shows the provider and the sign-in method.
#[test]
fn sign_in_with_the_provider_lands_in_opencode_and_refuses_the_rest() {
    let Some(bin) = opencode_bin() else { return };
    let Some((pdir, bdir)) = deps() else { return };
    let (sb, port, public) = sso_sandbox(&format!("['{bin}', 'serve']"), "");
    let provider = Provider::start(&pdir, &public, 0);
    let mut init = boot_sso(
        &sb,
        &public,
        &provider.issuer(),
        "oidc_allowed_groups = ['devs']\n",
    );
    add_user(&sb, &init, "alice", "alice sso pw 1");
    init.expect_log_within("opencode is ready", Duration::from_secs(120));
    assert!(provider_seen(&sb, &init, true), "{}", init.stderr_text());

    let seen = browse(
        &bdir,
        "browser",
        &format!("{public}/"),
        "alice",
        "oidc-alice-",
    );
    assert!(
        seen["loginPage"]
            .as_str()
            .unwrap_or("")
            .contains("Sign in with Test IdP"),
        "{seen}"
    );
    assert_eq!(
        seen["title"],
        "OpenCode",
        "{seen}\nlog:\n{}",
        init.stderr_text()
    );
    assert!(signed_in(&seen), "{seen}");
    init.expect_log("\"alice\" signed in with Test IdP");

    // The callback, replayed with the browser's own flow cookie: used up, no session.
    let cb = seen["callbackUrl"]
        .as_str()
        .expect("the callback URL")
        .to_string();
    let path = cb
        .split_once(&format!("localhost:{port}"))
        .unwrap()
        .1
        .to_string();
    let cookie = seen["callbackCookie"].as_str().unwrap_or("").to_string();
    let r = http(port, "GET", &path, &format!("Cookie: {cookie}\r\n"), "");
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.body.contains("already used"), "{}", r.body);
    assert!(
        !r.head.contains("occ_session=") || r.head.contains("occ_session=;"),
        "{r:?}"
    );
    // A tampered state.
    let tampered = path.replace("state=", "state=x");
    let r = http(port, "GET", &tampered, &format!("Cookie: {cookie}\r\n"), "");
    assert_eq!(r.status, 400, "{r:?}");

    // ghost: no such user here.
    let seen = browse(
        &bdir,
        "browser",
        &format!("{public}/"),
        "ghost",
        "oidc-ghost-",
    );
    let t = seen["text"].as_str().unwrap_or("");
    assert!(t.contains("occ-init user add ghost"), "{seen}");
    assert!(!signed_in(&seen), "{seen}");
    // eve: not in an allowed group.
    let seen = browse(&bdir, "browser", &format!("{public}/"), "eve", "oidc-eve-");
    assert!(
        seen["text"]
            .as_str()
            .unwrap_or("")
            .contains("not in a group allowed here"),
        "{seen}"
    );
    assert!(!signed_in(&seen), "{seen}");

    // Passwords still work; status names the provider and the methods.
    assert_eq!(
        http(
            port,
            "GET",
            "/session",
            &basic("alice", "alice sso pw 1"),
            ""
        )
        .status,
        200
    );
    let out = sb.exec(&init, &["status"], None);
    let shown = text(&out);
    assert!(
        shown.contains(&format!("OIDC:        {} — reachable", provider.issuer())),
        "{shown}"
    );
    assert!(shown.contains("PAM passwords, OIDC ("), "{shown}");
    // No token or secret in the log.
    let log = init.stderr_text();
    assert!(
        !log.contains("occ-test-secret"),
        "the client secret in the log"
    );
    // Nor in any process's argv or environment (the proxy gets it over the auth socket).
    for (p, _) in occ_init::init::procs::process_table() {
        for f in ["cmdline", "environ"] {
            let b = std::fs::read(format!("/proc/{p}/{f}")).unwrap_or_default();
            assert!(
                !String::from_utf8_lossy(&b).contains("occ-test-secret"),
                "the client secret in the {f} of {p}"
            );
        }
    }
    assert!(!log.contains("eyJ"), "a JWT in the log");
    drop(init);
    drop(provider);
    sb.assert_host_untouched();
}

/// `oidc_create_users`: newbie is created at her first sign-in (no usable password) and her
/// `sub` is pinned; another identity calling itself newbie is refused; a locked user is
/// refused; an ID token the provider issued already expired (its clock 2 h behind) gives no
/// session; with `password_login = false` the password form is gone and Basic passwords are
/// refused while tokens still work.
#[test]
fn created_users_are_pinned_and_bad_tokens_give_no_session() {
    let Some((pdir, bdir)) = deps() else { return };
    let (sb, port, public) = sso_sandbox(&fake(), "");
    let provider = Provider::start(&pdir, &public, 0);
    let mut init = boot_sso(
        &sb,
        &public,
        &provider.issuer(),
        "oidc_create_users = true\npassword_login = false\n",
    );
    add_user(&sb, &init, "alice", "alice sso pw 2");
    assert!(provider_seen(&sb, &init, true), "{}", init.stderr_text());
    let seen = browse(
        &bdir,
        "browser",
        &format!("{public}/"),
        "newbie",
        "oidc-newbie-",
    );
    assert!(signed_in(&seen), "{seen}\n{}", init.stderr_text());
    assert!(sb.passwd_line("newbie").is_some(), "newbie was not created");
    init.expect_log("created user \"newbie\"");
    // The login page offers only the provider.
    assert!(
        !seen["loginPage"].as_str().unwrap().contains("Password"),
        "{seen}"
    );
    let pins = std::fs::read_to_string(sb.manifest().with_file_name("oidc.json")).unwrap();
    assert!(
        pins.contains("\"newbie\"") && pins.contains("\"sub\": \"newbie\""),
        "{pins}"
    );
    // Another identity (sub "impostor") with the same preferred_username.
    let seen = browse(
        &bdir,
        "browser",
        &format!("{public}/"),
        "impostor",
        "oidc-impostor-",
    );
    assert!(!signed_in(&seen), "{seen}");
    assert!(
        seen["text"]
            .as_str()
            .unwrap()
            .contains("bound to another identity"),
        "{seen}"
    );
    // A user name that is no user name.
    let seen = browse(
        &bdir,
        "browser",
        &format!("{public}/"),
        "badname",
        "oidc-badname-",
    );
    assert!(!signed_in(&seen), "{seen}");
    // Locked.
    assert!(sb
        .exec(&init, &["user", "lock", "alice"], None)
        .status
        .success());
    let seen = browse(
        &bdir,
        "browser",
        &format!("{public}/"),
        "alice",
        "oidc-locked-",
    );
    assert!(!signed_in(&seen), "{seen}");
    assert!(seen["text"].as_str().unwrap().contains("locked"), "{seen}");
    assert!(sb
        .exec(&init, &["user", "unlock", "alice"], None)
        .status
        .success());
    // Passwords refused (password_login = false); a token still works.
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(
        http(port, "GET", "/x", &basic("alice", "alice sso pw 2"), "").status,
        401
    );
    let out = sb.exec(&init, &["token", "create", "alice", "--name", "t"], None);
    let token = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(
        http(
            port,
            "GET",
            "/x",
            &format!("Authorization: Bearer {token}\r\n"),
            ""
        )
        .status,
        200
    );
    drop(provider);

    // A provider whose clock is two hours behind issues ID tokens that expired long ago.
    let behind = Provider::start(&pdir, &public, -7200);
    point_to(&sb, &behind.issuer());
    drop(init);
    let mut init = sb.boot(&[], &[]);
    assert!(provider_seen(&sb, &init, true), "{}", init.stderr_text());
    let seen = browse(
        &bdir,
        "browser",
        &format!("{public}/"),
        "alice",
        "oidc-expired-",
    );
    assert!(!signed_in(&seen), "an expired ID token signed in: {seen}");
    assert!(
        seen["text"].as_str().unwrap().contains("did not verify"),
        "{seen}"
    );
    init.expect_log("ID token refused");
    drop(init);
    drop(behind);
    sb.assert_host_untouched();
}

/// Point the sandbox's config at another issuer (for its next boot).
fn point_to(sb: &Sandbox, issuer: &str) {
    let conf = sb.path("occ/init.toml");
    let t = std::fs::read_to_string(&conf).unwrap();
    let t = t.replace(&format!("http://127.0.0.1:{}", provider_port(&t)), issuer);
    std::fs::write(conf, t).unwrap();
}

/// The port of the issuer in a config text.
fn provider_port(conf: &str) -> u16 {
    conf.lines()
        .find_map(|l| l.strip_prefix("oidc_issuer = 'http://127.0.0.1:"))
        .and_then(|r| r.trim_end_matches('\'').parse().ok())
        .expect("issuer port")
}

/// Device login (RFC 8628, relayed): a device code, `authorization_pending` until the person
/// approves at the provider (in chromium), polling too fast is `slow_down`, then a personal
/// API token of the container user that works as Bearer and as her Basic password; the
/// device code is usable once; revoking the token ends it.
#[test]
fn device_login_gives_a_token_that_works_until_revoked() {
    let Some((pdir, bdir)) = deps() else { return };
    let (sb, port, public) = sso_sandbox(&fake(), "");
    let provider = Provider::start(&pdir, &public, 0);
    let mut init = boot_sso(&sb, &public, &provider.issuer(), "");
    add_user(&sb, &init, "alice", "alice device pw 1");
    assert!(provider_seen(&sb, &init, true), "{}", init.stderr_text());
    let r = http(port, "POST", "/_occ/device/code", "", "");
    assert_eq!(r.status, 200, "{r:?}\n{}", init.stderr_text());
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    let code = v["device_code"].as_str().unwrap().to_string();
    let complete = v["verification_uri_complete"].as_str().unwrap().to_string();
    assert!(v["user_code"].is_string() && v["interval"] == 5, "{v}");
    let poll = || {
        http(
            port,
            "POST",
            "/_occ/device/token",
            "Content-Type: application/x-www-form-urlencoded\r\n",
            &format!("device_code={code}"),
        )
    };
    let r = poll();
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.body.contains("authorization_pending"), "{r:?}");
    let r = poll();
    assert!(r.body.contains("slow_down"), "{r:?}");
    let seen = browse(&bdir, "device", &complete, "alice", "oidc-device-");
    assert!(seen["error"].is_null(), "{seen}");
    // Wait out the interval (5 s + the slow_down's 5 s), then the token.
    let mut answer = None;
    let end = Instant::now() + Duration::from_secs(40);
    while Instant::now() < end {
        std::thread::sleep(Duration::from_secs(11));
        let r = poll();
        if r.status == 200 {
            answer = Some(r);
            break;
        }
        assert!(
            r.body.contains("authorization_pending") || r.body.contains("slow_down"),
            "{r:?}"
        );
    }
    let r = answer.unwrap_or_else(|| panic!("no token; {seen}\n{}", init.stderr_text()));
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["user"], "alice");
    assert_eq!(v["token_type"], "Bearer");
    let token = v["access_token"].as_str().unwrap().to_string();
    assert_eq!(
        http(
            port,
            "GET",
            "/x",
            &format!("Authorization: Bearer {token}\r\n"),
            ""
        )
        .status,
        200
    );
    assert_eq!(
        http(port, "GET", "/x", &basic("alice", &token), "").status,
        200
    );
    // Usable once.
    let r = poll();
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.body.contains("invalid_grant"), "{r:?}");
    // Revoked: gone.
    let out = sb.exec(&init, &["token", "list", "alice", "--json"], None);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = list["tokens"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(list["tokens"][0]["name"], "device login");
    assert!(sb
        .exec(&init, &["token", "revoke", &id], None)
        .status
        .success());
    assert!(eventually(Duration::from_secs(5), || http(
        port,
        "GET",
        "/x",
        &format!("Authorization: Bearer {token}\r\nAccept: application/json\r\n"),
        ""
    )
    .status
        == 401));
    let log = init.stderr_text();
    assert!(!log.contains(&token[16..]), "the token in the log");
    drop(init);
    drop(provider);
    sb.assert_host_untouched();
}

/// The provider down: status says so with the last error, the login page says so, password
/// logins work; back up, it is found again. A provider that answers 10 MB or hangs is
/// refused with a clear error and nothing hangs.
#[test]
fn a_provider_that_is_down_or_hostile_costs_password_logins_nothing() {
    let Some((pdir, _)) = deps() else { return };
    let (sb, port, public) = sso_sandbox(&fake(), "");
    let pport = free_port();
    let provider = Provider::start_on(&pdir, pport, &public, 0);
    let mut init = boot_sso(&sb, &public, &provider.issuer(), "");
    add_user(&sb, &init, "alice", "alice down pw 1");
    assert!(provider_seen(&sb, &init, true), "{}", init.stderr_text());
    drop(provider);
    // Discovery is re-read every 10 minutes once it worked; a sign-in meanwhile fails at the
    // provider. Restart occ-init so it looks now (backoff 1 s, 2 s, 4 s …).
    drop(init);
    let mut init = sb.boot(&[], &[]);
    assert!(provider_seen(&sb, &init, false), "{}", init.stderr_text());
    let st = status_json(&sb, &init);
    assert!(
        st["security"]["oidc"]["error"]
            .as_str()
            .unwrap()
            .contains("cannot connect"),
        "{st}"
    );
    let r = http(port, "GET", "/_occ/login", "", "");
    assert!(
        r.body.contains("Test IdP cannot be reached right now"),
        "{}",
        r.body
    );
    assert!(support::front::answers(
        port,
        "/x",
        &basic("alice", "alice down pw 1"),
        200,
        Duration::from_secs(10)
    ));
    let r = http(port, "GET", "/_occ/oidc/login?next=/", "", "");
    assert_eq!(r.status, 503, "{r:?}");
    // Back: found again within the backoff.
    let provider = Provider::start_on(&pdir, pport, &public, 0);
    assert!(provider_seen(&sb, &init, true), "{}", init.stderr_text());
    drop(provider);
    drop(init);

    // A hostile "provider": 10 MB of discovery, or no answer at all.
    for hostile in ["huge", "hang"] {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let hport = l.local_addr().unwrap().port();
        let kind = hostile.to_string();
        std::thread::spawn(move || {
            for c in l.incoming().take(20) {
                let Ok(mut c) = c else { continue };
                let kind = kind.clone();
                std::thread::spawn(move || {
                    use std::io::{Read, Write};
                    let mut buf = [0u8; 4096];
                    let _ = c.read(&mut buf);
                    if kind == "huge" {
                        let _ = c.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 10485760\r\n\r\n");
                        let chunk = vec![b' '; 65536];
                        for _ in 0..160 {
                            if c.write_all(&chunk).is_err() {
                                break;
                            }
                        }
                    } else {
                        std::thread::sleep(Duration::from_secs(30));
                    }
                });
            }
        });
        point_to(&sb, &format!("http://127.0.0.1:{hport}"));
        let init = sb.boot(&[], &[]);
        assert!(provider_seen(&sb, &init, false));
        let st = status_json(&sb, &init);
        let err = st["security"]["oidc"]["error"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let want = if hostile == "huge" {
            "larger than"
        } else {
            "no answer"
        };
        assert!(
            eventually(Duration::from_secs(30), || status_json(&sb, &init)
                ["security"]["oidc"]["error"]
                .as_str()
                .unwrap_or("")
                .contains(want)),
            "{hostile}: {err}"
        );
        assert!(support::front::answers(
            port,
            "/x",
            &basic("alice", "alice down pw 1"),
            200,
            Duration::from_secs(10)
        ));
        drop(init);
    }
    sb.assert_host_untouched();
}

/// A real ID token of the same provider, signed with its real key, but issued to another
/// client (`aud` = other): occ-init's check refuses it; the same check takes it for the
/// client it was issued to (the control). The token comes from a device login of client
/// `other`, approved in chromium.
#[test]
fn an_id_token_for_another_audience_is_refused() {
    let Some((pdir, bdir)) = deps() else { return };
    let provider = Provider::start(&pdir, "http://localhost:9", 0);
    let issuer = provider.issuer();
    let other = format!(
        "Authorization: Basic {}\r\nContent-Type: application/x-www-form-urlencoded\r\n",
        support::http::b64("other:other-test-secret")
    );
    let r = http(
        provider.port,
        "POST",
        "/device/auth",
        &other,
        "client_id=other&scope=openid+profile",
    );
    assert_eq!(r.status, 200, "{r:?}");
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    let device_code = v["device_code"].as_str().unwrap().to_string();
    let seen = browse(
        &bdir,
        "device",
        v["verification_uri_complete"].as_str().unwrap(),
        "alice",
        "oidc-aud-",
    );
    assert!(seen["error"].is_null(), "{seen}");
    let mut tokens = None;
    for _ in 0..10 {
        let r = http(
            provider.port,
            "POST",
            "/token",
            &other,
            &format!("grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Adevice_code&device_code={device_code}"),
        );
        if r.status == 200 {
            tokens = Some(serde_json::from_str::<serde_json::Value>(&r.body).unwrap());
            break;
        }
        std::thread::sleep(Duration::from_secs(5));
    }
    let tokens = tokens.expect("an ID token for client other");
    assert!(tokens["id_token"].is_string(), "{tokens}");
    let settings = |client: &str| occ_init::proxy::oidc::OidcSettings {
        issuer: issuer.clone(),
        client_id: client.into(),
        redirect_uri: "http://localhost:9/_occ/oidc/callback".into(),
        scopes: vec!["openid".into()],
        username_claim: "preferred_username".into(),
        groups_claim: "groups".into(),
        provider_name: "Test IdP".into(),
        password_login: true,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let ours = occ_init::proxy::oidc::Oidc::new(settings("occ"));
    rt.block_on(ours.discover_now()).unwrap();
    let e = rt
        .block_on(ours.verify_with("occ-test-secret", &tokens, None))
        .expect_err("a token for another audience was taken");
    assert!(e.message.contains("did not verify"), "{}", e.message);
    // The control: for its own client the same token checks out (so the refusal was the aud).
    let theirs = occ_init::proxy::oidc::Oidc::new(settings("other"));
    rt.block_on(theirs.discover_now()).unwrap();
    let who = rt
        .block_on(theirs.verify_with("other-test-secret", &tokens, None))
        .unwrap_or_else(|f| panic!("{}", f.message));
    assert_eq!(who.sub, "alice");
}

/// The provider rotates its signing keys (here: restarted with new ones on the same port):
/// the next sign-in names an unknown `kid`, the proxy re-reads the JWKS and the sign-in works.
#[test]
fn a_rotated_signing_key_is_fetched_on_demand() {
    let Some((pdir, bdir)) = deps() else { return };
    let (sb, _port, public) = sso_sandbox(&fake(), "");
    let pport = free_port();
    let provider = Provider::start_on(&pdir, pport, &public, 0);
    let mut init = boot_sso(&sb, &public, &provider.issuer(), "");
    add_user(&sb, &init, "alice", "alice rot pw 1");
    assert!(provider_seen(&sb, &init, true), "{}", init.stderr_text());
    let seen = browse(
        &bdir,
        "browser",
        &format!("{public}/"),
        "alice",
        "oidc-rot1-",
    );
    assert!(signed_in(&seen), "{seen}");
    drop(provider);
    let provider = Provider::start_on(&pdir, pport, &public, 0);
    // The JWKS is re-read at most every 10 s.
    std::thread::sleep(Duration::from_secs(11));
    let seen = browse(
        &bdir,
        "browser",
        &format!("{public}/"),
        "alice",
        "oidc-rot2-",
    );
    assert!(signed_in(&seen), "{seen}\n{}", init.stderr_text());
    assert_eq!(
        init.count_log("ID token refused"),
        0,
        "{}",
        init.stderr_text()
    );
    assert_eq!(
        init.count_log("re-reading the provider's keys"),
        1,
        "{}",
        init.stderr_text()
    );
    drop(init);
    drop(provider);
    sb.assert_host_untouched();
}

/// The red team's findings stay fixed: the provider's error text cannot forge log lines; an
/// answer without `iss` from a provider that sends it is refused; asking for device codes
/// from one address cannot keep others out (the oldest code of that address makes room).
#[test]
fn callbacks_cannot_forge_log_lines_and_device_codes_cannot_be_hoarded() {
    let Some((pdir, _)) = deps() else { return };
    let (sb, port, public) = sso_sandbox(&fake(), "");
    let provider = Provider::start(&pdir, &public, 0);
    let mut init = boot_sso(&sb, &public, &provider.issuer(), "");
    add_user(&sb, &init, "alice", "alice rt3 pw 1");
    assert!(provider_seen(&sb, &init, true), "{}", init.stderr_text());
    // A flow of our own: its state (from the redirect) and its cookie.
    let begin = || {
        let r = http(port, "GET", "/_occ/oidc/login?next=/", "", "");
        assert_eq!(r.status, 303, "{r:?}");
        let location = r
            .head
            .lines()
            .find_map(|l| l.strip_prefix("location: "))
            .unwrap()
            .to_string();
        let state = location
            .split("state=")
            .nth(1)
            .unwrap()
            .split('&')
            .next()
            .unwrap()
            .to_string();
        let cookie = r
            .head
            .split("occ_oidc=")
            .nth(1)
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_string();
        (state, cookie)
    };
    let (state, cookie) = begin();
    let forged =
        "y%0Aocc-proxy%20info%3A%20%22alice%22%20signed%20in%20with%20Test%20IdP%20from%2010.9.9.9";
    let r = http(
        port,
        "GET",
        &format!("/_occ/oidc/callback?state={state}&error=x&error_description={forged}"),
        &format!("Cookie: occ_oidc={cookie}\r\n"),
        "",
    );
    assert_eq!(r.status, 403, "{r:?}");
    std::thread::sleep(Duration::from_millis(300));
    let log = init.stderr_text();
    assert!(
        !log.lines()
            .any(|l| l.starts_with("occ-proxy info: \"alice\" signed in")),
        "a forged log line:\n{log}"
    );
    // No iss from a provider that announces it.
    let (state, cookie) = begin();
    let r = http(
        port,
        "GET",
        &format!("/_occ/oidc/callback?state={state}&code=abc"),
        &format!("Cookie: occ_oidc={cookie}\r\n"),
        "",
    );
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.body.contains("did not say which provider"), "{}", r.body);
    // Twelve device codes from one address: all answered (the oldest make room); past 20 a
    // minute the address is told to wait (each ask is a call to the provider).
    let codes: Vec<u16> = (0..22)
        .map(|_| http(port, "POST", "/_occ/device/code", "", "").status)
        .collect();
    assert_eq!(codes[..20], vec![200; 20]);
    assert_eq!(codes[20..], [429, 429]);
    drop(init);
    drop(provider);
    sb.assert_host_untouched();
}
