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
    let ready = oidc.join("node_modules/oidc-provider").exists()
        && browser.join("node_modules/playwright-core").exists()
        && Path::new("/usr/bin/chromium").exists();
    if !ready {
        assert!(std::env::var_os("CI").is_none(), "tests/deps installs oidc-provider");
        eprintln!("SKIPPED: oidc-provider, playwright-core or chromium missing");
        return None;
    }
    std::fs::copy(root().join("tests/oidc/provider.mjs"), oidc.join("provider.mjs")).unwrap();
    std::fs::copy(root().join("tests/browser/oidc.mjs"), browser.join("oidc.mjs")).unwrap();
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

/// Until status says the provider answers (or not).
fn provider_seen(sb: &Sandbox, init: &Init, reachable: bool) -> bool {
    eventually(Duration::from_secs(30), || {
        status_json(sb, init)["security"]["oidc"]["reachable"] == reachable
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
    let mut init = boot_sso(&sb, &public, &provider.issuer(), "oidc_allowed_groups = ['devs']\n");
    add_user(&sb, &init, "alice", "alice sso pw 1");
    init.expect_log_within("opencode is ready", Duration::from_secs(120));
    assert!(provider_seen(&sb, &init, true), "{}", init.stderr_text());

    let seen = browse(&bdir, "browser", &format!("{public}/"), "alice", "oidc-alice-");
    assert!(seen["loginPage"].as_str().unwrap_or("").contains("Sign in with Test IdP"), "{seen}");
    assert_eq!(seen["title"], "OpenCode", "{seen}\nlog:\n{}", init.stderr_text());
    assert!(seen["cookies"].as_array().unwrap().iter().any(|c| c["name"] == "occ_session"), "{seen}");
    init.expect_log("\"alice\" signed in with Test IdP");

    // The callback, replayed with the browser's own flow cookie: used up, no session.
    let cb = seen["callbackUrl"].as_str().expect("the callback URL").to_string();
    let path = cb.split_once(&format!("localhost:{port}")).unwrap().1.to_string();
    let cookie = seen["callbackCookie"].as_str().unwrap_or("").to_string();
    let r = http(port, "GET", &path, &format!("Cookie: {cookie}\r\n"), "");
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.body.contains("already used"), "{}", r.body);
    assert!(!r.head.contains("occ_session=") || r.head.contains("occ_session=;"), "{r:?}");
    // A tampered state.
    let tampered = path.replace("state=", "state=x");
    let r = http(port, "GET", &tampered, &format!("Cookie: {cookie}\r\n"), "");
    assert_eq!(r.status, 400, "{r:?}");

    // ghost: no such user here.
    let seen = browse(&bdir, "browser", &format!("{public}/"), "ghost", "oidc-ghost-");
    let t = seen["text"].as_str().unwrap_or("");
    assert!(t.contains("occ-init user add ghost"), "{seen}");
    assert!(!seen["cookies"].as_array().unwrap().iter().any(|c| c["name"] == "occ_session"), "{seen}");
    // eve: not in an allowed group.
    let seen = browse(&bdir, "browser", &format!("{public}/"), "eve", "oidc-eve-");
    assert!(seen["text"].as_str().unwrap_or("").contains("not in a group allowed here"), "{seen}");
    assert!(!seen["cookies"].as_array().unwrap().iter().any(|c| c["name"] == "occ_session"), "{seen}");

    // Passwords still work; status names the provider and the methods.
    assert_eq!(http(port, "GET", "/session", &basic("alice", "alice sso pw 1"), "").status, 200);
    let out = sb.exec(&init, &["status"], None);
    let shown = text(&out);
    assert!(shown.contains(&format!("OIDC:        {} — reachable", provider.issuer())), "{shown}");
    assert!(shown.contains("PAM passwords, OIDC ("), "{shown}");
    // No token or secret in the log.
    let log = init.stderr_text();
    assert!(!log.contains("occ-test-secret"), "the client secret in the log");
    assert!(!log.contains("eyJ"), "a JWT in the log");
    drop(init);
    drop(provider);
    sb.assert_host_untouched();
}
