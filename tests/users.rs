//! Users for real, inside a private mount namespace over a copy of /etc (never the host's):
//! restore at boot, idempotence, hash/lock changes, retirement, bad manifests changing
//! nothing, legacy import, bootstrap, PAM verify, secrets hygiene, crash-safe persistence.

mod support;

use std::time::Duration;

use support::sandbox::{text, wait_output, Sandbox};

/// sha512-crypt of "correct horse battery".
const H1: &str = "$6$abcdefgh$dTmIYmW/LpvGK/iiDSK9zlcKIRJ33.7YE9DETLAR1zX9/2./Fv6/8dFZ1tCs/Kfp//7QeoJfyRWP7XdDzP87j1";
/// sha512-crypt of "another secret pw".
const H2: &str = "$6$ijklmnop$5kA6gHGfb5riXJOm8qglmy.fgXDfaPTYuKMecehWN8iIYDTpA7b/c9Xby2eCfNht.ibE9kIf/tPo0s8ZiwhTt1";
const MARK: &str = "occ-init managed user";

fn user(name: &str, hash: &str, extra: &str) -> String {
    format!("[[users]]\nname = \"{name}\"\npassword_hash = '{hash}'\n{extra}")
}

fn write_manifest(sb: &Sandbox, body: &str) {
    std::fs::write(sb.manifest(), format!("version = 1\n{body}")).expect("write manifest");
}

/// Boot occ-init as PID 1 over a trivial command; returns (exit code, stderr).
fn boot(sb: &Sandbox) -> (i32, String) {
    let out = sb.occ(&["run", "--", "true"], None);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn fresh_restore_then_second_boot_spawns_and_changes_nothing() {
    let mut sb = Sandbox::new();
    write_manifest(
        &sb,
        &format!(
            "{}{}{}",
            user("alice", H1, ""),
            user("bob", H2, "locked = true\n"),
            user("carol", H1, "uid = 2345\n")
        ),
    );
    let (code, err) = boot(&sb);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("users: 3 created, 0 updated, 0 locked (left the manifest), 0 unchanged"),
        "{err}"
    );
    assert_eq!(sb.shadow_of("alice").as_deref(), Some(H1));
    assert_eq!(sb.shadow_of("bob"), Some(format!("!{H2}")));
    assert!(sb
        .passwd_line("carol")
        .unwrap()
        .starts_with("carol:x:2345:"));
    assert!(sb.passwd_line("alice").unwrap().contains(MARK));
    assert!(sb.path("home/alice").is_dir());

    // Second boot: nothing to do, no tool spawned, /etc byte-identical.
    sb.install_shims();
    let before = (
        sb.etc_file("passwd"),
        sb.etc_file("shadow"),
        sb.etc_file("group"),
    );
    let (code, err) = boot(&sb);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("0 created, 0 updated, 0 locked (left the manifest), 3 unchanged"),
        "{err}"
    );
    assert_eq!(sb.shim_log(), "", "tools were spawned for users in sync");
    assert_eq!(
        before,
        (
            sb.etc_file("passwd"),
            sb.etc_file("shadow"),
            sb.etc_file("group")
        )
    );
}

#[test]
fn hash_change_lock_unlock_and_retirement() {
    let sb = Sandbox::new();
    write_manifest(
        &sb,
        &format!(
            "{}{}{}",
            user("alice", H1, ""),
            user("bob", H1, "locked = true\n"),
            user("carol", H1, "")
        ),
    );
    assert_eq!(boot(&sb).0, 0);
    // alice: new hash; bob: unlocked; carol: left the manifest.
    write_manifest(
        &sb,
        &format!("{}{}", user("alice", H2, ""), user("bob", H1, "")),
    );
    let (code, err) = boot(&sb);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("0 created, 2 updated, 1 locked (left the manifest), 0 unchanged"),
        "{err}"
    );
    assert_eq!(sb.shadow_of("alice").as_deref(), Some(H2));
    assert_eq!(sb.shadow_of("bob").as_deref(), Some(H1));
    assert_eq!(
        sb.shadow_of("carol"),
        Some(format!("!{H1}")),
        "retired user is locked"
    );
    assert!(
        sb.passwd_line("carol").is_some(),
        "retired user is not deleted"
    );
    assert!(
        sb.path("home/carol").is_dir(),
        "retired user's home is kept"
    );
}

#[test]
fn bad_manifests_change_nothing_and_say_why() {
    let sb = Sandbox::new();
    let cases = [
        (user("eve:0:0", H1, ""), "not a valid user name"),
        (
            format!(
                "[[users]]\nname = \"alice\"\npassword_hash = \"{H1}\\nroot::0:0:99999:7:::\"\n"
            ),
            "forbidden character",
        ),
        (user("root", H1, ""), "built-in account"),
        (user("daemon", H1, ""), "system account"),
        (user("opencoder", H1, ""), "built-in account"),
        (
            format!(
                "{}{}",
                user("alice", H1, "uid = 3000\n"),
                user("bob", H1, "uid = 3000\n")
            ),
            "also given to alice",
        ),
        (
            format!("{}shell = '/bin/sh'\n", user("alice", H1, "")),
            "unknown field `shell`",
        ),
        (user("alice", "plaintext", ""), "well-formed crypt"),
        (user("ubuntu", H1, ""), "built-in account"),
        (user("nobody", H1, ""), "system account"),
        (user(&"a".repeat(33), H1, ""), "longer than 32"),
        (user("Alice", H1, ""), "not a valid user name"),
        (user("", H1, ""), "name is empty"),
        (
            format!("{}{}", user("alice", H1, ""), user("alice", H1, "")),
            "duplicate user name",
        ),
        (user("alice", "", ""), "is empty"),
        (user("alice", "$y$ j9T$abc$def", ""), "forbidden character"),
        (
            user("alice", "$1$salt$abcdefghijklmnopqrstuv", ""),
            "too weak",
        ),
        (user("alice", "$6$salt$tooshort", ""), "86 characters"),
        (user("alice", H1, "uid = 999\n"), "outside 1000..=59999"),
        (user("alice", H1, "uid = 0\n"), "outside 1000..=59999"),
        (user("alice", H1, "uid = -5\n"), "invalid value"),
        (user("alice", H1, "locked = 'yes'\n"), "invalid type"),
        ("users = 'alice'\n".to_string(), "invalid type"),
        ("colour = 'red'\n".to_string(), "unknown field `colour`"),
        (
            "[[users]]\nname = 'alice'\n".to_string(),
            "missing field `password_hash`",
        ),
        ("this is not toml".to_string(), "TOML"),
    ];
    assert!(cases.len() >= 25);
    let before = (sb.etc_file("passwd"), sb.etc_file("shadow"));
    for (body, want) in cases {
        write_manifest(&sb, &body);
        let out = sb.occ(&["user", "sync"], None);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        assert!(text(&out).contains(want), "want {want:?}: {}", text(&out));
        assert!(
            !text(&out).contains("dTmIYmW"),
            "hash leaked: {}",
            text(&out)
        );
        // A boot with the same manifest goes on, restores no one.
        let (code, err) = boot(&sb);
        assert_eq!(code, 0);
        assert!(err.contains("restore failed"), "{err}");
        assert_eq!(
            before,
            (sb.etc_file("passwd"), sb.etc_file("shadow")),
            "/etc changed for {want}"
        );
    }
    for (raw, want) in [
        (String::new(), "missing field `version`"),
        ("version = 2\n".to_string(), "unsupported version 2"),
        ("x".repeat(5 << 20), "limit is"),
    ] {
        std::fs::write(sb.manifest(), raw).expect("write");
        let out = sb.occ(&["user", "sync"], None);
        assert_eq!(out.status.code(), Some(1));
        assert!(text(&out).contains(want), "{}", text(&out));
        assert_eq!(before, (sb.etc_file("passwd"), sb.etc_file("shadow")));
    }
}

#[test]
fn legacy_records_are_imported_once() {
    let sb = Sandbox::new();
    let rec = |n: &str, h: &str, l: bool| {
        format!("{{\"username\":\"{n}\",\"password_hash\":\"{h}\",\"locked\":{l}}}")
    };
    std::fs::write(sb.path("legacy/alice.json"), rec("alice", H1, false)).unwrap();
    std::fs::write(sb.path("legacy/bob.json"), rec("bob", H2, true)).unwrap();
    std::fs::write(
        sb.path("legacy/opencoder.json"),
        rec("opencoder", H1, false),
    )
    .unwrap();
    std::fs::write(sb.path("legacy/broken.json"), "{not json").unwrap();
    let (code, err) = boot(&sb);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("imported 2 user(s)"), "{err}");
    let manifest = std::fs::read_to_string(sb.manifest()).unwrap();
    assert!(manifest.contains("name = \"alice\"") && manifest.contains("name = \"bob\""));
    assert!(!manifest.contains("opencoder"));
    assert_eq!(sb.shadow_of("alice").as_deref(), Some(H1));
    assert_eq!(sb.shadow_of("bob"), Some(format!("!{H2}")));
    // Once: the manifest now exists, so a new legacy record is not imported.
    std::fs::write(sb.path("legacy/carol.json"), rec("carol", H1, false)).unwrap();
    let (_, err) = boot(&sb);
    assert!(!err.contains("imported"), "{err}");
    assert!(sb.shadow_of("carol").is_none());
}

#[test]
fn bootstrap_user_from_env_file_never_reaches_the_child() {
    let sb = Sandbox::new();
    let hash_file = sb.path("occ/bootstrap.hash");
    std::fs::write(&hash_file, format!("{H1}\n")).unwrap();
    let out = sb.occ_env(
        &["run", "--", "env"],
        None,
        &[
            ("OCC_BOOTSTRAP_USER", "admin"),
            (
                "OCC_BOOTSTRAP_PASSWORD_HASH_FILE",
                hash_file.to_str().unwrap(),
            ),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(sb.shadow_of("admin").as_deref(), Some(H1));
    assert!(std::fs::read_to_string(sb.manifest())
        .unwrap()
        .contains("name = \"admin\""));
    let child_env = String::from_utf8_lossy(&out.stdout);
    assert!(!child_env.contains("OCC_BOOTSTRAP"), "{child_env}");
    // With users in the manifest, the bootstrap variables are ignored.
    let out = sb.occ_env(
        &["run", "--", "true"],
        None,
        &[
            ("OCC_BOOTSTRAP_USER", "other"),
            ("OCC_BOOTSTRAP_PASSWORD_HASH", H2),
        ],
    );
    assert_eq!(out.status.code(), Some(0));
    assert!(sb.shadow_of("other").is_none());
}

#[test]
fn add_verify_passwd_lock_remove_through_the_cli_and_pam() {
    let sb = Sandbox::new();
    let out = sb.occ(
        &["user", "add", "alice", "--password-stdin"],
        Some("first password\n"),
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stored = sb.shadow_of("alice").expect("alice in shadow");
    assert!(
        stored.starts_with('$'),
        "system hash expected, got a non-crypt field"
    );
    let manifest = std::fs::read_to_string(sb.manifest()).unwrap();
    assert!(
        manifest.contains(&stored),
        "manifest holds the hash read back from /etc/shadow"
    );
    assert!(!manifest.contains("first password"));

    let verify = |pw: &str| sb.occ(&["user", "verify", "alice"], Some(&format!("{pw}\n")));
    assert_eq!(verify("first password").status.code(), Some(0));
    let bad = verify("wrong password");
    assert_eq!(bad.status.code(), Some(1));
    assert!(text(&bad).contains("Authentication failed"));
    let ghost = sb.occ(&["user", "verify", "nobody-here"], Some("whatever1\n"));
    assert_eq!(ghost.status.code(), Some(1));
    assert!(text(&ghost).contains("Authentication failed"));

    let out = sb.occ(
        &["user", "passwd", "alice", "--password-stdin"],
        Some("second password\n"),
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(verify("first password").status.code(), Some(1));
    assert_eq!(verify("second password").status.code(), Some(0));

    assert_eq!(
        sb.occ(&["user", "lock", "alice"], None).status.code(),
        Some(0)
    );
    assert!(sb.shadow_of("alice").unwrap().starts_with('!'));
    assert_eq!(verify("second password").status.code(), Some(1));
    assert_eq!(
        sb.occ(&["user", "unlock", "alice"], None).status.code(),
        Some(0)
    );
    assert_eq!(verify("second password").status.code(), Some(0));

    // Duplicate, reserved and invalid names; short passwords; hashes through --hash-stdin.
    let dup = sb.occ(
        &["user", "add", "alice", "--hash-stdin"],
        Some(&format!("{H1}\n")),
    );
    assert_eq!(dup.status.code(), Some(1));
    assert!(text(&dup).contains("already exists"));
    assert!(text(&sb.occ(
        &["user", "add", "root", "--hash-stdin"],
        Some(&format!("{H1}\n"))
    ))
    .contains("built-in"));
    assert!(text(&sb.occ(
        &["user", "add", "Bad:Name", "--hash-stdin"],
        Some(&format!("{H1}\n"))
    ))
    .contains("not a valid user name"));
    assert!(
        text(&sb.occ(&["user", "add", "bob", "--password-stdin"], Some("short\n")))
            .contains("at least 8")
    );
    assert!(
        text(&sb.occ(&["user", "add", "bob", "--hash-stdin"], Some("nonsense\n")))
            .contains("well-formed")
    );
    assert!(
        sb.passwd_line("bob").is_none(),
        "rejected add left an account behind"
    );
    let out = sb.occ(
        &["user", "add", "bob", "--hash-stdin"],
        Some(&format!("{H2}\n")),
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        sb.occ(&["user", "verify", "bob"], Some("another secret pw\n"))
            .status
            .code(),
        Some(0)
    );

    // list / export
    let list = sb.occ(&["user", "list", "--json"], None);
    let rows: serde_json::Value = serde_json::from_slice(&list.stdout).expect("json");
    assert_eq!(rows.as_array().unwrap().len(), 2);
    assert_eq!(rows[0]["name"], "alice");
    assert_eq!(rows[0]["in_etc"], true);
    let export = sb.occ(&["user", "export"], None);
    let exported = String::from_utf8_lossy(&export.stdout).into_owned();
    assert!(exported.contains(H2) && exported.contains("version = 1"));

    // Remove: the last user is protected while exposed (default 0.0.0.0).
    assert_eq!(
        sb.occ(&["user", "remove", "bob"], None).status.code(),
        Some(0)
    );
    let last = sb.occ(&["user", "remove", "alice"], None);
    assert_eq!(last.status.code(), Some(1));
    assert!(text(&last).contains("last user"), "{}", text(&last));
    let local = sb.occ_env(
        &["user", "remove", "alice"],
        None,
        &[("OCC_BIND_ADDRESS", "127.0.0.1")],
    );
    assert_eq!(local.status.code(), Some(0), "{}", text(&local));
    assert!(
        sb.shadow_of("alice").unwrap().starts_with('!'),
        "removed user is locked"
    );
    assert!(sb.path("home/alice").is_dir());

    // Import the earlier export: both users back.
    let file = sb.path("occ/backup.toml");
    std::fs::write(&file, &exported).unwrap();
    let out = sb.occ(&["user", "import", file.to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        sb.occ(&["user", "verify", "bob"], Some("another secret pw\n"))
            .status
            .code(),
        Some(0)
    );
}

#[test]
fn canary_password_never_in_argv_env_or_logs() {
    const CANARY: &str = "Canary-7f3a9c-Secret";
    let mut sb = Sandbox::new();
    sb.install_shims();
    // Watch every process's cmdline and environ while the commands run.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let watcher = {
        let (stop, seen) = (stop.clone(), seen.clone());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
                    for f in ["cmdline", "environ"] {
                        if let Ok(b) = std::fs::read(entry.path().join(f)) {
                            if String::from_utf8_lossy(&b).contains(CANARY) {
                                seen.lock().unwrap().push(format!("{:?}/{f}", entry.path()));
                            }
                        }
                    }
                }
            }
        })
    };
    let mut outputs = Vec::new();
    outputs.push(sb.occ(
        &["user", "add", "alice", "--password-stdin"],
        Some(&format!("{CANARY}\n")),
    ));
    outputs.push(sb.occ(
        &["user", "passwd", "alice", "--password-stdin"],
        Some(&format!("{CANARY}-2\n")),
    ));
    outputs.push(sb.occ(&["user", "verify", "alice"], Some(&format!("{CANARY}-2\n"))));
    outputs.push(sb.occ_env(
        &["user", "verify", "alice"],
        Some("wrong\n"),
        &[("OCC_LOG", "trace")],
    ));
    outputs.push(sb.occ_env(&["run", "--", "true"], None, &[("OCC_LOG", "trace")]));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    watcher.join().unwrap();
    assert_eq!(outputs[0].status.code(), Some(0), "{}", text(&outputs[0]));
    assert_eq!(outputs[2].status.code(), Some(0), "{}", text(&outputs[2]));
    for out in &outputs {
        assert!(
            !text(out).contains(CANARY),
            "canary in output: {}",
            text(out)
        );
    }
    let log = sb.shim_log();
    assert!(log.contains("CALL chpasswd"), "shims were not used: {log}");
    assert!(
        !log.contains(CANARY),
        "canary in a tool's argv or environment"
    );
    assert!(
        seen.lock().unwrap().is_empty(),
        "canary seen in {:?}",
        seen.lock().unwrap()
    );
    let manifest = std::fs::read_to_string(sb.manifest()).unwrap();
    assert!(!manifest.contains(CANARY));
}

#[test]
fn concurrent_adds_both_land() {
    let sb = Sandbox::new();
    let a = sb.spawn(
        &[support::OCC_INIT, "user", "add", "alice", "--hash-stdin"],
        &[],
    );
    let b = sb.spawn(
        &[support::OCC_INIT, "user", "add", "bob", "--hash-stdin"],
        &[],
    );
    let feed = |mut c: std::process::Child, h: &str| {
        use std::io::Write;
        c.stdin
            .take()
            .unwrap()
            .write_all(format!("{h}\n").as_bytes())
            .unwrap();
        wait_output(c, Duration::from_secs(60))
    };
    let (oa, ob) = (feed(a, H1), feed(b, H2));
    assert_eq!(oa.status.code(), Some(0), "{}", text(&oa));
    assert_eq!(ob.status.code(), Some(0), "{}", text(&ob));
    let manifest = std::fs::read_to_string(sb.manifest()).unwrap();
    assert!(
        manifest.contains("alice") && manifest.contains("bob"),
        "{manifest}"
    );
    assert_eq!(sb.shadow_of("alice").as_deref(), Some(H1));
    assert_eq!(sb.shadow_of("bob").as_deref(), Some(H2));
}

#[test]
fn writer_killed_mid_rewrite_never_leaves_a_partial_manifest() {
    let sb = Sandbox::new();
    write_manifest(
        &sb,
        &(0..40)
            .map(|i| user(&format!("user{i}"), H1, ""))
            .collect::<String>(),
    );
    assert_eq!(boot(&sb).0, 0);
    for round in 0..40u64 {
        let verb = if round % 2 == 0 { "lock" } else { "unlock" };
        let mut child = sb.spawn(&[support::OCC_INIT, "user", verb, "user7"], &[]);
        std::thread::sleep(Duration::from_micros(500 + (round * 2654435761) % 15000));
        let _ = child.kill(); // SIGKILL to unshare; --kill-child takes the namespace down
        let _ = wait_output(child, Duration::from_secs(30));
        let text = std::fs::read_to_string(sb.manifest()).expect("manifest exists");
        let m = occ_init::manifest::parse(&text)
            .unwrap_or_else(|e| panic!("round {round}: {e}\n{text}"));
        assert_eq!(m.users.len(), 40, "round {round}");
    }
}

#[test]
fn read_only_manifest_still_restores_and_reports_not_persisted() {
    let mut sb = Sandbox::new();
    write_manifest(&sb, &user("alice", H1, ""));
    sb.prelude = format!(
        "mount --bind -o ro '{0}' '{0}' &&",
        sb.path("occ").display()
    );
    let (code, err) = boot(&sb);
    assert_eq!(code, 0, "{err}");
    assert_eq!(sb.shadow_of("alice").as_deref(), Some(H1));
    let out = sb.occ(
        &["user", "add", "bob", "--hash-stdin"],
        Some(&format!("{H2}\n")),
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("not persisted: manifest is read-only"),
        "{}",
        text(&out)
    );
    assert!(!std::fs::read_to_string(sb.manifest())
        .unwrap()
        .contains("bob"));
}

#[test]
fn bind_mounted_single_file_manifest_is_rewritten_in_place() {
    let mut sb = Sandbox::new();
    let outside = sb.path("outside.toml");
    std::fs::write(&outside, format!("version = 1\n{}", user("alice", H1, ""))).unwrap();
    std::fs::write(sb.manifest(), "").unwrap();
    sb.prelude = format!(
        "mount --bind '{}' '{}' &&",
        outside.display(),
        sb.manifest().display()
    );
    let out = sb.occ(
        &["user", "add", "bob", "--hash-stdin"],
        Some(&format!("{H2}\n")),
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let written = std::fs::read_to_string(&outside).unwrap();
    assert!(
        written.contains("bob") && written.contains("alice"),
        "{written}"
    );
}

/// Read from the pty master until `needle` shows up (or fail after the deadline).
fn read_until(master: &mut std::fs::File, seen: &mut String, needle: &str) {
    use std::io::Read;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let fd = std::os::fd::AsRawFd::as_raw_fd(master);
    // SAFETY: fcntl on our own fd.
    unsafe { libc::fcntl(fd, libc::F_SETFL, libc::O_NONBLOCK) };
    let mut buf = [0u8; 1024];
    while !seen.contains(needle) {
        assert!(
            std::time::Instant::now() < deadline,
            "no {needle:?} on the terminal: {seen:?}"
        );
        match master.read(&mut buf) {
            Ok(n) if n > 0 => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
            _ => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// `occ-init user add NAME` on a terminal, typing `first` and `second` at the two prompts and
/// waiting for `outcome`; returns the exit code and everything the terminal showed.
fn add_on_terminal(
    sb: &Sandbox,
    name: &str,
    first: &str,
    second: &str,
    outcome: &str,
) -> (Option<i32>, String) {
    use std::io::Write;
    let (child, mut master) = sb.spawn_on_pty(&["user", "add", name]);
    let mut seen = String::new();
    read_until(
        &mut master,
        &mut seen,
        &format!("New password for {name}: "),
    );
    master.write_all(format!("{first}\n").as_bytes()).unwrap();
    read_until(&mut master, &mut seen, "Repeat it: ");
    master.write_all(format!("{second}\n").as_bytes()).unwrap();
    read_until(&mut master, &mut seen, outcome);
    let out = wait_output(child, Duration::from_secs(30));
    (out.status.code(), seen)
}

#[test]
fn interactive_add_prompts_twice_without_echo() {
    let sb = Sandbox::new();
    let (code, seen) = add_on_terminal(
        &sb,
        "bob",
        "typed-secret-1",
        "typed-secret-1",
        "added user bob",
    );
    assert_eq!(code, Some(0));
    assert!(
        !seen.contains("typed-secret-1"),
        "password echoed: {seen:?}"
    );
    let verify = sb.occ(&["user", "verify", "bob"], Some("typed-secret-1\n"));
    assert_eq!(verify.status.code(), Some(0), "{}", text(&verify));

    // Mismatched confirmation: nothing changes.
    let (code, _) = add_on_terminal(
        &sb,
        "carol",
        "first-entry-1",
        "other-entry-2",
        "passwords do not match",
    );
    assert_eq!(code, Some(1));
    assert!(sb.passwd_line("carol").is_none());
}

/// With a read-only manifest (a Kubernetes Secret), changes made through PID 1 live in an
/// overlay until the next boot: a second change or a reload does not undo the first.
#[test]
fn read_only_manifest_keeps_unsaved_changes_until_the_next_boot() {
    let (mut sb, _port) = support::sandbox::setup("0.0.0.0", "healthy", "");
    write_manifest(&sb, &user("alice", H1, ""));
    sb.prelude = format!(
        "mount --bind -o ro '{0}' '{0}' &&",
        sb.path("occ").display()
    );
    let mut init = sb.boot(&[], &[]);
    init.expect_log_within("opencode is ready", Duration::from_secs(30));
    for (name, hash) in [("bob", H2), ("carol", H1)] {
        let out = sb.exec(
            &init,
            &["user", "add", name, "--hash-stdin"],
            Some(&format!("{hash}\n")),
        );
        assert!(out.status.success(), "{}", text(&out));
        assert!(text(&out).contains("not persisted"), "{}", text(&out));
    }
    assert_eq!(
        sb.shadow_of("bob").as_deref(),
        Some(H2),
        "bob was not locked by carol's add"
    );
    init.signal(nix::sys::signal::Signal::SIGHUP);
    init.expect_log_within(
        "re-reading configuration and users",
        Duration::from_secs(10),
    );
    init.expect_log_within("users:", Duration::from_secs(10));
    assert_eq!(sb.shadow_of("bob").as_deref(), Some(H2), "nor by a reload");
    assert_eq!(sb.shadow_of("carol").as_deref(), Some(H1));
    let out = sb.exec(&init, &["status", "--json"], None);
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        st["security"]["auth_users"],
        serde_json::json!(["alice", "bob", "carol"]),
        "{st}"
    );
    assert!(!std::fs::read_to_string(sb.manifest())
        .unwrap()
        .contains("bob"));
    drop(init);
    sb.assert_host_untouched();
}

/// A rebuild: the container's /etc comes fresh from the image, /home and the manifest stay.
fn rebuild(sb: &Sandbox) {
    let etc = sb.path("etc");
    std::fs::remove_dir_all(&etc).unwrap();
    let ok = std::process::Command::new("cp")
        .args(["-a", "/etc"])
        .arg(&etc)
        .status()
        .unwrap();
    assert!(ok.success());
    let pam = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("rootfs/etc/pam.d/opencode");
    std::fs::copy(pam, etc.join("pam.d/opencode")).unwrap();
}

fn uid_in(sb: &Sandbox, name: &str) -> Option<u32> {
    sb.passwd_line(name)?.split(':').nth(2)?.parse().ok()
}

fn home_owner(sb: &Sandbox, name: &str) -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(sb.path("home").join(name)).unwrap().uid()
}

#[test]
fn after_a_rebuild_every_user_owns_their_own_home_and_nobody_elses() {
    let sb = Sandbox::new();
    write_manifest(
        &sb,
        &format!("{}{}", user("alice", H1, ""), user("bob", H2, "")),
    );
    let (code, err) = boot(&sb);
    assert_eq!(code, 0, "{err}");
    let (alice_uid, bob_uid) = (uid_in(&sb, "alice").unwrap(), uid_in(&sb, "bob").unwrap());
    assert_eq!(home_owner(&sb, "alice"), alice_uid);
    // alice leaves; the next container restores only bob, on the same /home.
    write_manifest(&sb, &user("bob", H2, ""));
    rebuild(&sb);
    let (code, err) = boot(&sb);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        uid_in(&sb, "bob"),
        Some(bob_uid),
        "bob comes back to his own files"
    );
    assert_eq!(home_owner(&sb, "bob"), bob_uid);
    // A newcomer never inherits alice's files.
    write_manifest(
        &sb,
        &format!("{}{}", user("bob", H2, ""), user("carol", H1, "")),
    );
    rebuild(&sb);
    let (code, err) = boot(&sb);
    assert_eq!(code, 0, "{err}");
    let carol = uid_in(&sb, "carol").unwrap();
    assert_ne!(carol, alice_uid, "carol got alice's uid and her files");
    assert_eq!(uid_in(&sb, "bob"), Some(bob_uid));
    assert_eq!(home_owner(&sb, "carol"), carol);
    sb.assert_host_untouched();
}
