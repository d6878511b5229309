//! HTTPS at the front door, tested with the real occ-init as PID 1 of a users sandbox, real
//! PAM, the proxy as its own user and the real opencode: a self-signed certificate (kept
//! across restarts, its fingerprint in status), PEM files verified against a test CA and
//! rotated (by SIGHUP and by replacing the files), broken pairs refused, plain HTTP
//! redirected, Secure `__Host-` cookies, terminals over `wss://`, the key out of the proxy's
//! reach, and the warning when exposed without TLS. Every request has a deadline.

mod support;

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use support::front::{
    add_user, opencode_bin, proxied, status_json, websocket_on, ws_read_until, ws_send,
};
use support::http::{basic, http};
use support::sandbox::{host_pid_of, text, Sandbox};
use support::tls::{self as client, make_certs, Trust};
use support::{eventually, Init};

/// A sandbox whose proxy serves HTTPS per `extra` (real opencode, shared), booted with
/// alice added and opencode ready.
fn boot_tls(bin: &str, extra: &str, pw: &str) -> (Sandbox, u16, Init) {
    let (sb, port) = proxied(&format!("['{bin}', 'serve']"), extra);
    let mut init = boot_again(&sb);
    init.expect_log_within("started the proxy", Duration::from_secs(30));
    add_user(&sb, &init, "alice", pw);
    init.expect_log_within("opencode is ready", Duration::from_secs(120));
    (sb, port, init)
}

/// Boot the sandbox's occ-init; a self-signed certificate is kept in the sandbox
/// (`tls_dir`), never in the host's /var/lib.
fn boot_again(sb: &Sandbox) -> Init {
    let dir = sb.path("var-lib-occ/tls");
    sb.boot(&[], &[("OCC_TLS_DIR", dir.to_str().unwrap())])
}

/// Until `port` answers an HTTPS `GET /session` with alice's login with 200 (the proxy
/// reads the opened gate within half a second); the handshake then.
fn until_served(port: u16, trust: &Trust, auth: &str) -> client::Seen {
    let t = Instant::now();
    loop {
        match client::https(port, trust, "GET", "/session", auth, "") {
            Ok((r, seen)) if r.status == 200 => return seen,
            other if t.elapsed() > Duration::from_secs(30) => {
                panic!("HTTPS never served alice: {:?}", other.map(|(r, _)| r))
            }
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// The pid (on the host) of the proxy the sandbox's PID 1 runs now.
fn proxy_pid(sb: &Sandbox, init: &Init) -> i32 {
    let st = status_json(sb, init);
    host_pid_of(init, st["proxy"]["pid"].as_i64().expect("proxy pid") as i32)
}

/// Everything an attacker in the proxy's shoes could read of its process: argv, environment
/// and its open descriptors (no memfd with the key stays open once read).
fn proxy_holds_no_key(sb: &Sandbox, init: &Init) {
    let pid = proxy_pid(sb, init);
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    for (what, bytes) in [("argv", &cmdline), ("environment", &environ)] {
        let t = String::from_utf8_lossy(bytes);
        assert!(
            !t.contains("PRIVATE KEY") && !t.contains("BEGIN"),
            "{what}: {t}"
        );
    }
    let fds: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .map(|l| l.display().to_string())
        .collect();
    assert!(
        !fds.iter().any(|l| l.contains("memfd:")),
        "the proxy keeps the hand-over open: {fds:?}"
    );
    // Not dumpable: its memory is closed even to other processes of its own uid (the
    // kernel then gives its /proc files to root), and it makes no core dump.
    use std::os::unix::fs::MetadataExt;
    let mem = std::fs::metadata(format!("/proc/{pid}/mem")).unwrap();
    assert_eq!(
        mem.uid(),
        0,
        "the proxy is dumpable: /proc/{pid}/mem is its user's"
    );
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap();
    assert!(
        core.split_whitespace().filter(|w| *w == "0").count() == 2,
        "{core}"
    );
}

/// The proxy's own user cannot read `path` (run as that user inside the sandbox).
fn proxy_user_cannot_read(sb: &Sandbox, path: &std::path::Path) {
    let out = sb.run(
        &[
            "runuser",
            "-u",
            "occ-proxy",
            "--",
            "cat",
            &path.display().to_string(),
        ],
        None,
        &[],
    );
    assert!(
        !out.status.success(),
        "occ-proxy read {}: {}",
        path.display(),
        text(&out)
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("PRIVATE"));
}

/// Self-signed: logins over HTTPS (TLS 1.3 by default, 1.2 too, ALPN http/1.1), the served
/// certificate is the one status names by fingerprint and the one kept root-only in
/// `tls_dir` (the proxy's user cannot read it, nor is it in the proxy's argv, environment or
/// descriptors); no login, a wrong password and a plain-HTTP cookie get nothing; the login
/// form sets a `Secure` `__Host-` cookie that works; plain HTTP on the port gets a 308 to
/// https and never opencode; a terminal opens over `wss://`; after a restart of the whole
/// container the same certificate is served.
#[test]
fn self_signed_https_with_its_fingerprint_in_status_kept_across_restarts() {
    let Some(bin) = opencode_bin() else { return };
    let pw = "tls self signed 1";
    let dir_extra = "tls = 'self-signed'\nhsts = true\n";
    let (sb, port, mut init) = boot_tls(&bin, dir_extra, pw);
    let alice = basic("alice", pw);
    let seen = until_served(port, &Trust::Any, &alice);
    assert_eq!(seen.version, "Some(TLSv1_3)", "{seen:?}");
    assert_eq!(seen.alpn.as_deref(), Some("http/1.1"));
    let st = status_json(&sb, &init);
    let tls = &st["security"]["tls"];
    assert_eq!(tls["mode"], "self-signed", "{st}");
    assert_eq!(tls["fingerprint_sha256"], seen.fingerprint.as_str(), "{st}");
    let names: Vec<&str> = tls["names"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n.as_str())
        .collect();
    for n in ["localhost", "127.0.0.1", "::1"] {
        assert!(names.contains(&n), "{names:?}");
    }
    assert!(tls["not_after"].as_str().unwrap().ends_with('Z'), "{st}");
    let out = sb.exec(&init, &["status"], None);
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.contains("TLS:         self-signed"), "{shown}");
    assert!(shown.contains(&seen.fingerprint), "{shown}");
    assert!(!shown.contains("unencrypted"), "{shown}");

    // Kept root-only in tls_dir (the sandbox default is /var/lib/occ/tls inside it).
    let dir = std::path::PathBuf::from(tls["source"].as_str().expect("the self-signed directory"));
    let key = dir.join("key.pem");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        client::fingerprint_of(&dir.join("cert.pem")),
        seen.fingerprint
    );
    proxy_user_cannot_read(&sb, &key);
    proxy_holds_no_key(&sb, &init);

    // TLS 1.2 works too.
    let (mut s12, seen12) = client::connect_with(
        port,
        "localhost",
        client::client_config(&Trust::Any, Some(&rustls::version::TLS12)),
    )
    .unwrap();
    assert_eq!(seen12.version, "Some(TLSv1_2)");
    let r = client::request_on(&mut s12, port, "GET", "/session", &alice, "", true);
    assert_eq!(r.status, 200, "{r:?}");
    // HSTS over TLS.
    assert!(
        r.head
            .to_ascii_lowercase()
            .contains("strict-transport-security: max-age=31536000"),
        "{r:?}"
    );

    // Nothing without the password, with a wrong one, or through the plain-HTTP cookie name.
    let (r, _) = client::https(
        port,
        &Trust::Any,
        "GET",
        "/session",
        "Accept: application/json\r\n",
        "",
    )
    .unwrap();
    assert_eq!(r.status, 401, "{r:?}");
    let (r, _) = client::https(
        port,
        &Trust::Any,
        "GET",
        "/session",
        &basic("alice", "wrong"),
        "",
    )
    .unwrap();
    assert_eq!(r.status, 401, "{r:?}");

    // The login form: a Secure, __Host- cookie that works over HTTPS.
    let form = format!("username=alice&password={}&next=%2F", pw.replace(' ', "+"));
    let (r, _) = client::https(
        port,
        &Trust::Any,
        "POST",
        "/_occ/login",
        "Content-Type: application/x-www-form-urlencoded\r\nOrigin: https://localhost:PORT\r\n"
            .replace("PORT", &port.to_string())
            .as_str(),
        &form,
    )
    .unwrap();
    assert_eq!(r.status, 303, "{r:?}");
    let set = r
        .head
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
        .unwrap_or_else(|| panic!("{r:?}"))
        .to_string();
    assert!(set.contains("__Host-occ_session="), "{set}");
    assert!(
        set.contains("; Secure") && set.contains("HttpOnly") && set.contains("Path=/"),
        "{set}"
    );
    assert!(!set.to_ascii_lowercase().contains("domain="), "{set}");
    let token = set
        .split("__Host-occ_session=")
        .nth(1)
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let (r, _) = client::https(
        port,
        &Trust::Any,
        "GET",
        "/session",
        &format!("Cookie: __Host-occ_session={token}\r\n"),
        "",
    )
    .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    // The same token under the plain name (a cookie any plain-HTTP server of this host
    // could have set) is not a session here.
    let (r, _) = client::https(
        port,
        &Trust::Any,
        "GET",
        "/session",
        &format!("Cookie: occ_session={token}\r\nAccept: application/json\r\n"),
        "",
    )
    .unwrap();
    assert_eq!(r.status, 401, "{r:?}");

    // Plain HTTP on the TLS port: a redirect, never opencode, with or without a login.
    let r = http(port, "GET", "/session?x=1", &alice, "");
    assert_eq!(r.status, 308, "{r:?}");
    assert!(
        r.head
            .contains(&format!("location: https://127.0.0.1:{port}/session?x=1")),
        "{r:?}"
    );
    assert!(!r.body.contains('['), "{r:?}");
    let r = http(
        port,
        "POST",
        "/pty",
        &format!("{alice}Content-Type: application/json\r\n"),
        "{}",
    );
    assert_eq!(r.status, 308, "{r:?}");

    // A terminal over wss://.
    let (r, _) = client::https(
        port,
        &Trust::Any,
        "POST",
        "/pty",
        &format!("{alice}Content-Type: application/json\r\n"),
        "{}",
    )
    .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    let pty: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    let id = pty["id"].as_str().unwrap();
    let (s, _) = client::connect(port, &Trust::Any).unwrap();
    let mut ws = websocket_on(s, port, &format!("/pty/{id}/connect"), &alice)
        .unwrap_or_else(|r| panic!("no terminal over wss: {r:?}"));
    ws_send(&mut ws, "echo TLS-$((6*7))\n");
    let out = ws_read_until(&mut ws, "TLS-42", Duration::from_secs(20));
    assert!(out.contains("TLS-42"), "{out}");
    drop(ws);

    // The whole container restarts (same volume): the same certificate.
    init.signal(Signal::SIGTERM);
    init.wait_exit(Duration::from_secs(30));
    drop(init);
    let mut init = boot_again(&sb);
    init.expect_log_within("opencode is ready", Duration::from_secs(120));
    let again = until_served(port, &Trust::Any, &alice);
    assert_eq!(again.fingerprint, seen.fingerprint);
    assert!(
        init.count_log("made a self-signed certificate") == 0,
        "{}",
        init.stderr_text()
    );
    drop(init);
    sb.assert_host_untouched();
}

/// PEM files from a test CA: the chain verifies for `localhost`; the key file (root, 0600)
/// is out of the proxy's reach. Rotation: new files in place are picked up without a
/// signal and without dropping an open connection; SIGHUP picks up the next pair at once;
/// a broken key, a key of another certificate, a directory and a 10 MB file are each
/// refused by name while the working certificate stays; an expired certificate is served
/// with a warning (status says it expired).
#[test]
fn files_verify_against_the_ca_rotate_and_refuse_broken_pairs() {
    let Some(bin) = opencode_bin() else { return };
    let pw = "tls files 2";
    let certs = tempfile::tempdir().unwrap();
    let d = certs.path();
    make_certs(
        d,
        &[("one", "ec", 30), ("two", "rsa", 30), ("three", "sec1", 30)],
    );
    let (crt, key) = (d.join("tls.crt"), d.join("tls.key"));
    std::fs::copy(d.join("one.crt"), &crt).unwrap();
    std::fs::copy(d.join("one.key"), &key).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    let extra = format!(
        "tls = 'files'\ntls_cert_file = '{}'\ntls_key_file = '{}'\n",
        crt.display(),
        key.display()
    );
    let (sb, port, mut init) = boot_tls(&bin, &extra, pw);
    let alice = basic("alice", pw);
    let ca = Trust::Ca(std::fs::read(d.join("ca.pem")).unwrap());
    let seen = until_served(port, &ca, &alice);
    assert_eq!(seen.fingerprint, client::fingerprint_of(&d.join("one.crt")));
    // A name the certificate does not have fails verification (the check is real).
    let e = client::connect_with(port, "other.example", client::client_config(&ca, None));
    assert!(e.is_err(), "verified for a name it lacks");
    proxy_user_cannot_read(&sb, &key);
    proxy_holds_no_key(&sb, &init);

    // A kept-alive connection from before the rotation.
    let (mut kept, _) = client::connect(port, &ca).unwrap();
    let r = client::request_on(&mut kept, port, "GET", "/session", &alice, "", false);
    assert_eq!(r.status, 200, "{r:?}");

    // Replaced in place (as certbot or cert-manager do): picked up without a signal.
    let two = client::fingerprint_of(&d.join("two.crt"));
    std::fs::write(&key, std::fs::read(d.join("two.key")).unwrap()).unwrap();
    std::fs::write(&crt, std::fs::read(d.join("two.crt")).unwrap()).unwrap();
    assert!(
        eventually(Duration::from_secs(20), || client::connect(port, &ca)
            .map(|(_, s)| s.fingerprint == two)
            .unwrap_or(false)),
        "the replaced files were not picked up: {}",
        init.stderr_text()
    );
    let r = client::request_on(&mut kept, port, "GET", "/session", &alice, "", false);
    assert_eq!(r.status, 200, "the open connection was dropped: {r:?}");
    assert_eq!(
        status_json(&sb, &init)["security"]["tls"]["fingerprint_sha256"],
        two.as_str()
    );

    // Broken inputs, each with SIGHUP: refused by name, and "two" stays.
    let mismatched = std::fs::read(d.join("one.key")).unwrap();
    let big = vec![b'A'; 10 * 1024 * 1024];
    type Breaks<'a> = Vec<(&'a str, Box<dyn Fn() + 'a>, &'a str)>;
    let cases: Breaks = vec![
        (
            "garbage key",
            Box::new(|| std::fs::write(&key, "not a key at all\n").unwrap()),
            "holds no private key",
        ),
        (
            "mismatched key",
            Box::new(|| std::fs::write(&key, &mismatched).unwrap()),
            "does not belong to the certificate",
        ),
        (
            "10 MB key",
            Box::new(|| std::fs::write(&key, &big).unwrap()),
            "at most",
        ),
        (
            "directory",
            Box::new(|| {
                std::fs::remove_file(&key).unwrap();
                std::fs::create_dir(&key).unwrap();
            }),
            "is a directory",
        ),
    ];
    for (what, break_it, why) in cases {
        break_it();
        let before = init.count_log("refused the new TLS certificate");
        init.signal(Signal::SIGHUP);
        assert!(
            eventually(Duration::from_secs(10), || init
                .count_log("refused the new TLS certificate")
                > before),
            "{what}: not refused: {}",
            init.stderr_text()
        );
        let line = init.expect_log(why);
        assert!(
            line.contains(&key.display().to_string()),
            "{what}: the file is not named: {line}"
        );
        let (r, s) = client::https(port, &ca, "GET", "/session", &alice, "").unwrap();
        assert_eq!(
            (r.status, s.fingerprint.as_str()),
            (200, two.as_str()),
            "{what}"
        );
        let st = status_json(&sb, &init);
        assert!(
            st["security"]["tls"]["error"]
                .as_str()
                .unwrap_or("")
                .contains(why),
            "{what}: {st}"
        );
        assert_eq!(st["security"]["tls"]["serving"], true);
        if key.is_dir() {
            std::fs::remove_dir(&key).unwrap();
        }
    }

    // SIGHUP with a good pair: served at once.
    std::fs::write(&key, std::fs::read(d.join("three.key")).unwrap()).unwrap();
    std::fs::write(&crt, std::fs::read(d.join("three.crt")).unwrap()).unwrap();
    init.signal(Signal::SIGHUP);
    let three = client::fingerprint_of(&d.join("three.crt"));
    assert!(eventually(Duration::from_secs(5), || client::connect(
        port, &ca
    )
    .map(|(_, s)| s.fingerprint == three)
    .unwrap_or(false)));
    assert!(status_json(&sb, &init)["security"]["tls"]["error"].is_null());

    // Expired: served with a warning (it is the admin's certificate), status says so.
    let old = occ_init::tls::generate(
        &["localhost".into()],
        occ_init::tls::now_unix() - 400 * 24 * 3600,
    )
    .unwrap();
    std::fs::write(&key, &*old.key).unwrap();
    std::fs::write(&crt, &old.cert).unwrap();
    init.signal(Signal::SIGHUP);
    init.expect_log("expired on");
    assert!(eventually(Duration::from_secs(5), || status_json(
        &sb, &init
    )["security"]["tls"]["expired"]
        == true));
    let out = sb.exec(&init, &["status"], None);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("EXPIRED"),
        "{}",
        text(&out)
    );
    drop(kept);
    drop(init);
    sb.assert_host_untouched();
}

/// A broken pair at boot: the proxy serves nothing — no plain HTTP with a right login (a
/// 503 that says HTTPS only), no TLS handshake — `status` says why and `health` fails; once
/// good files are in place, HTTPS is served within seconds without a restart.
#[test]
fn a_broken_pair_at_boot_serves_no_plain_http() {
    let Some(bin) = opencode_bin() else { return };
    let pw = "tls broken 3";
    let certs = tempfile::tempdir().unwrap();
    let d = certs.path();
    make_certs(d, &[("good", "ec", 30)]);
    let (crt, key) = (d.join("tls.crt"), d.join("tls.key"));
    std::fs::write(
        &crt,
        "-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    std::fs::write(&key, std::fs::read(d.join("good.key")).unwrap()).unwrap();
    let extra = format!(
        "tls = 'files'\ntls_cert_file = '{}'\ntls_key_file = '{}'\n",
        crt.display(),
        key.display()
    );
    let (sb, port, mut init) = boot_tls(&bin, &extra, pw);
    init.expect_log("no usable TLS certificate at boot");
    let alice = basic("alice", pw);
    std::thread::sleep(Duration::from_millis(700));
    for path in ["/session", "/", "/global/health"] {
        let r = http(port, "GET", path, &alice, "");
        assert_eq!(r.status, 503, "{path}: {r:?}");
        assert!(r.body.contains("HTTPS only"), "{path}: {r:?}");
    }
    assert!(
        client::connect(port, &Trust::Any).is_err(),
        "a TLS handshake succeeded without a certificate"
    );
    let st = status_json(&sb, &init);
    assert_eq!(st["security"]["tls"]["serving"], false, "{st}");
    assert!(
        st["security"]["tls"]["error"]
            .as_str()
            .unwrap()
            .contains(&crt.display().to_string()),
        "{st}"
    );
    let out = sb.exec(&init, &["status"], None);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("NOT SERVING"),
        "{}",
        text(&out)
    );
    let out = sb.exec(&init, &["health"], None);
    assert!(
        !out.status.success(),
        "healthy without a certificate: {}",
        text(&out)
    );

    // Fixed in place: served without a restart.
    std::fs::write(&crt, std::fs::read(d.join("good.crt")).unwrap()).unwrap();
    let ca = Trust::Ca(std::fs::read(d.join("ca.pem")).unwrap());
    let seen = until_served(port, &ca, &alice);
    assert_eq!(
        seen.fingerprint,
        client::fingerprint_of(&d.join("good.crt"))
    );
    let out = sb.exec(&init, &["health"], None);
    assert!(out.status.success(), "{}", text(&out));
    drop(init);
    sb.assert_host_untouched();
}

/// Exposed (0.0.0.0) with TLS off and no TLS proxy in front: the boot log and status warn
/// that logins travel unencrypted, with the fix; with TLS on there is no such warning.
#[test]
fn exposed_without_tls_is_a_warning_with_the_fix() {
    let Some(bin) = opencode_bin() else { return };
    let pw = "tls warn 4";
    let (sb, _port, mut init) = boot_tls(&bin, "", pw);
    let line = init.expect_log("logins travel unencrypted");
    assert!(line.contains("OCC_TLS=self-signed"), "{line}");
    let out = sb.exec(&init, &["status"], None);
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains("Warning: logins travel unencrypted"),
        "{shown}"
    );
    assert!(shown.contains("TLS:         off"), "{shown}");
    drop(init);
    let (sb2, _port, mut init) = boot_tls(&bin, "tls = 'self-signed'\n", pw);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(init.count_log("unencrypted"), 0, "{}", init.stderr_text());
    let out = sb2.exec(&init, &["status"], None);
    assert!(!String::from_utf8_lossy(&out.stdout).contains("unencrypted"));
    drop(init);
    sb.assert_host_untouched();
    sb2.assert_host_untouched();
}

/// A flood of silent connections from one address (the red team's: podman shows every
/// client as one address) must not lock out a login from there: connections still waiting
/// for their first byte or their handshake make room at once when asked, as after a login.
#[test]
fn silent_connections_in_the_handshake_make_room_for_a_login() {
    let pw = "tls flood 5";
    let (sb, port) = proxied(
        &format!(
            "['{}', 'fake-opencode', '--behavior', 'healthy']",
            support::CHILD
        ),
        "tls = 'self-signed'\nmax_connections_per_client = 8\n",
    );
    let mut init = boot_again(&sb);
    add_user(&sb, &init, "alice", pw);
    init.expect_log_within("opencode is ready", Duration::from_secs(30));
    let alice = basic("alice", pw);
    until_served(port, &Trust::Any, &alice);
    // More silent connections than the per-address cap and the room kept for closing ones
    // together (8 + 1024): half send nothing, half one byte of a TLS record.
    let mut held = Vec::new();
    for i in 0..1200 {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            if i % 2 == 1 {
                use std::io::Write;
                let _ = s.write_all(&[0x16]);
            }
            held.push(s);
        }
    }
    let mut ok = 0;
    for _ in 0..5 {
        if let Ok((r, _)) = client::https(port, &Trust::Any, "GET", "/x", &alice, "") {
            if r.status == 200 {
                ok += 1;
            }
        }
    }
    assert_eq!(
        ok,
        5,
        "alice was locked out by silent connections; log:\n{}",
        init.stderr_text()
    );
    drop(held);
    drop(init);
    sb.assert_host_untouched();
}

/// `occ-init check` shows the pair the proxy would serve (names, expiry, fingerprint) and
/// fails on an unusable one, naming the file.
#[test]
fn check_shows_the_certificate_or_why_it_is_unusable() {
    let certs = tempfile::tempdir().unwrap();
    let d = certs.path();
    make_certs(d, &[("good", "ec", 30)]);
    let sb = Sandbox::new();
    let env = |cert: &str| {
        vec![
            ("OCC_TLS", "files".to_string()),
            ("OCC_TLS_CERT_FILE", d.join(cert).display().to_string()),
            ("OCC_TLS_KEY_FILE", d.join("good.key").display().to_string()),
        ]
    };
    let run = |cert: &str| {
        let e = env(cert);
        let e: Vec<(&str, &str)> = e.iter().map(|(k, v)| (*k, v.as_str())).collect();
        sb.occ_env(&["check"], None, &e)
    };
    let out = run("good.crt");
    assert!(out.status.success(), "{}", text(&out));
    let fp = client::fingerprint_of(&d.join("good.crt"));
    assert!(
        text(&out).contains("# TLS: files for localhost, 127.0.0.1 until"),
        "{}",
        text(&out)
    );
    assert!(text(&out).contains(&fp), "{}", text(&out));
    let out = run("ca.pem");
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("UNUSABLE") && text(&out).contains("does not belong"),
        "{}",
        text(&out)
    );
    let out = run("missing.crt");
    assert!(!out.status.success());
    assert!(text(&out).contains("missing.crt"), "{}", text(&out));
}
