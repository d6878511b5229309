//! Fault injection: an untrusted manifest directory (a FIFO, a symlink to /dev/zero, a 5 MiB
//! file, a lock-file symlink), a missing `useradd`. PID 1 must stay up, fail closed (gated)
//! and say in `status` what is wrong. Each boot runs in a users sandbox with a deadline.

mod support;

use std::time::Duration;

use support::sandbox::{setup, text, Sandbox};

fn status(sb: &Sandbox, init: &support::Init) -> serde_json::Value {
    let out = sb.exec(init, &["status", "--json"], None);
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn boot_with_bad_manifest(make: impl FnOnce(&std::path::Path), want: &str) {
    let (sb, _port) = setup("0.0.0.0", "healthy", "");
    make(&sb.manifest());
    let mut init = sb.boot(&[], &[]);
    init.expect_log_within("opencode is not started", Duration::from_secs(20));
    let st = status(&sb, &init);
    assert_eq!(st["opencode"]["state"], "gated", "{st}");
    let err = st["users"]["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(err.contains(want), "{want:?} not in {err:?}");
    // PID 1 is alive and answers.
    let out = sb.exec(&init, &["health", "--live"], None);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    drop(init);
    sb.assert_host_untouched();
}

#[test]
fn a_fifo_as_the_manifest_does_not_hang_the_boot() {
    boot_with_bad_manifest(
        |p| {
            nix::unistd::mkfifo(p, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        },
        "not a regular file",
    );
}

#[test]
fn a_symlink_to_dev_zero_is_not_read() {
    boot_with_bad_manifest(
        |p| std::os::unix::fs::symlink("/dev/zero", p).unwrap(),
        "not a regular file",
    );
}

#[test]
fn a_5_mib_manifest_is_refused_before_reading() {
    boot_with_bad_manifest(
        |p| std::fs::write(p, vec![b'#'; 5 * 1024 * 1024]).unwrap(),
        "the limit is",
    );
}

#[test]
fn the_lock_file_is_never_created_through_a_symlink() {
    let (sb, _port) = setup("0.0.0.0", "healthy", "");
    let target = sb.path("pwned");
    std::os::unix::fs::symlink(&target, sb.path("occ/.occ-users.lock")).unwrap();
    let mut init = sb.boot(&[], &[]);
    init.expect_log_within("opencode is not started", Duration::from_secs(20));
    let out = sb.exec(
        &init,
        &["user", "add", "alice", "--password-stdin"],
        Some("alice password 1"),
    );
    assert!(!out.status.success(), "{}", text(&out));
    assert!(!target.exists(), "root created a file through the symlink");
    drop(init);
    sb.assert_host_untouched();
}

#[test]
fn useradd_missing_from_path_keeps_pid1_up_and_says_so() {
    let (mut sb, _port) = setup("0.0.0.0", "healthy", "");
    std::fs::write(
        sb.manifest(),
        "version = 1\n\n[[users]]\nname = \"alice\"\n\
         password_hash = \"$y$j9T$F5Jx5fExrKuPp53xLKQ..1$X3DX6M94c7o.9agCG9G317fhZg9SqC.5i5rd.RhAtQ7\"\n",
    )
    .unwrap();
    // Debian keeps useradd in /usr/sbin; unshare, mount and sh stay reachable.
    assert!(!std::path::Path::new("/usr/bin/useradd").exists());
    sb.env.push(("PATH".into(), "/usr/bin:/bin".into()));
    let mut init = sb.boot(&[], &[]);
    init.expect_log_within("useradd", Duration::from_secs(20));
    init.expect_log_within("opencode is not started", Duration::from_secs(20));
    let out = sb.exec(&init, &["health", "--live"], None);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    drop(init);
    sb.assert_host_untouched();
}

/// A manifest of `n` users (user0, user1, …), all with [`HASH`].
fn many_users(n: usize) -> String {
    let mut text = String::from("version = 1\n");
    for i in 0..n {
        text.push_str(&format!(
            "\n[[users]]\nname = \"user{i}\"\npassword_hash = \"{HASH}\"\n"
        ));
    }
    text
}

const HASH: &str = "$y$j9T$F5Jx5fExrKuPp53xLKQ..1$X3DX6M94c7o.9agCG9G317fhZg9SqC.5i5rd.RhAtQ7";

/// `user sync` does what the boot does (legacy records included) and tells PID 1; `user
/// import` reports what it created and tells PID 1; `--users` elsewhere is refused while PID 1
/// runs.
#[test]
fn sync_and_import_do_what_they_say_and_tell_pid1() {
    let (sb, _port) = setup("0.0.0.0", "healthy", "");
    let mut init = sb.boot(&[], &[]);
    init.expect_log_within("opencode is not started", Duration::from_secs(20));
    assert!(!sb.manifest().exists());
    // A legacy opencode-cloud record appears (e.g. a volume from the old image).
    std::fs::write(
        sb.path("legacy/alice.json"),
        format!(r#"{{"username":"alice","password_hash":"{HASH}","locked":false}}"#),
    )
    .unwrap();
    let out = sb.exec(&init, &["user", "sync"], None);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("1 created"), "{}", text(&out));
    assert!(
        text(&out).contains("told the running occ-init"),
        "{}",
        text(&out)
    );
    init.expect_log_within("opencode is ready", Duration::from_secs(20));
    let st = status(&sb, &init);
    assert_eq!(
        st["security"]["auth_users"],
        serde_json::json!(["alice"]),
        "{st}"
    );

    // import: the summary counts what it created.
    let file = sb.path("occ/import.toml");
    std::fs::write(
        &file,
        format!(
            "version = 1\n\n[[users]]\nname = \"alice\"\npassword_hash = \"{HASH}\"\n\n\
             [[users]]\nname = \"bob\"\npassword_hash = \"{HASH}\"\n"
        ),
    )
    .unwrap();
    let out = sb.exec(&init, &["user", "import", file.to_str().unwrap()], None);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("1 created, 0 updated, 0 locked (left the manifest), 1 unchanged"),
        "{}",
        text(&out)
    );
    assert!(support::eventually(Duration::from_secs(10), || status(
        &sb, &init
    )["security"]["auth_users"]
        == serde_json::json!(["alice", "bob"])));

    // --users naming another manifest while PID 1 runs: refused, nothing changed.
    let other = sb.path("occ/other.toml");
    let out = sb.exec(
        &init,
        &["user", "lock", "bob", "--users", other.to_str().unwrap()],
        None,
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("is refused while it runs"),
        "{}",
        text(&out)
    );
    assert!(!other.exists());
    drop(init);
    sb.assert_host_untouched();
}

/// The manifest directory is a full tmpfs: a change fails with a clear error before /etc is
/// touched, the old manifest stays intact, PID 1 stays up.
#[test]
fn a_full_manifest_directory_changes_nothing() {
    let (mut sb, _port) = setup("0.0.0.0", "healthy", "");
    let full = sb.path("full");
    std::fs::create_dir_all(&full).unwrap();
    let seed = sb.path("seed.toml");
    let manifest =
        format!("version = 1\n\n[[users]]\nname = \"alice\"\npassword_hash = \"{HASH}\"\n");
    std::fs::write(&seed, &manifest).unwrap();
    sb.prelude = format!(
        "mount -t tmpfs -o size=64k,mode=0700 tmpfs '{d}' && cp '{seed}' '{d}/users.toml' && \
         chmod 600 '{d}/users.toml' && (dd if=/dev/zero of='{d}/filler' bs=1k 2>/dev/null || true) &&",
        d = full.display(),
        seed = seed.display()
    );
    let users_file = full.join("users.toml").display().to_string();
    sb.env.push(("OCC_USERS_FILE".into(), users_file.clone()));
    let mut init = sb.boot(&[], &[]);
    init.expect_log_within("opencode is ready", Duration::from_secs(20));
    let passwd_before = sb.etc_file("passwd");
    let shadow_before = sb.etc_file("shadow");
    let out = sb.exec(
        &init,
        &["user", "add", "bob", "--password-stdin"],
        Some("bob password 123"),
    );
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("no room to rewrite the manifest"),
        "{}",
        text(&out)
    );
    assert_eq!(sb.etc_file("passwd"), passwd_before, "/etc/passwd changed");
    assert_eq!(sb.etc_file("shadow"), shadow_before, "/etc/shadow changed");
    let cat = sb.exec(&init, &["user", "export"], None);
    assert!(
        text(&cat).contains("alice") && !text(&cat).contains("bob"),
        "{}",
        text(&cat)
    );
    let out = sb.exec(&init, &["health", "--live"], None);
    assert_eq!(out.status.code(), Some(0));
    drop(init);
    sb.assert_host_untouched();
}

/// A long user operation (a 600-user manifest restored on SIGHUP) runs in PID 1's helper
/// process: meanwhile PID 1 answers `health --live` promptly, and TERM stops it at once.
#[test]
fn a_long_user_operation_does_not_freeze_pid1() {
    let (sb, _port) = setup("0.0.0.0", "healthy", "");
    let mut init = sb.boot(&[], &[]);
    init.expect_log_within("opencode is not started", Duration::from_secs(20));
    std::fs::write(sb.manifest(), many_users(600)).unwrap();
    init.signal(nix::sys::signal::Signal::SIGHUP);
    init.expect_log_within(
        "re-reading configuration and users",
        Duration::from_secs(10),
    );
    let started = std::time::Instant::now();
    let mut answered = 0;
    while started.elapsed() < Duration::from_secs(3) {
        let t = std::time::Instant::now();
        let out = sb.exec(&init, &["health", "--live"], None);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "health --live took {:?}",
            t.elapsed()
        );
        answered += 1;
    }
    // The restore was still running meanwhile (it creates 600 accounts with homes).
    let created = sb.etc_file("passwd").matches("\nuser").count();
    assert!(
        created < 600,
        "the restore finished too soon to prove anything ({created})"
    );
    assert!(answered >= 2);
    // TERM is handled now, not after the restore.
    let t = std::time::Instant::now();
    init.signal(nix::sys::signal::Signal::SIGTERM);
    let _ = init.exit_code(Duration::from_secs(30));
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "stop took {:?}",
        t.elapsed()
    );
    drop(init);
    sb.assert_host_untouched();
}

/// Kubernetes service links (`OPENCODE_PORT=tcp://…` for a Service named `opencode`) are
/// ignored with a warning, never fatal.
#[test]
fn kubernetes_service_links_do_not_stop_the_boot() {
    let (sb, _port) = setup("127.0.0.1", "healthy", "");
    let mut init = sb.boot(
        &[],
        &[
            ("OPENCODE_PORT", "tcp://10.96.0.12:3000"),
            ("OCC_PORT", "tcp://10.96.0.13:3000"),
        ],
    );
    init.expect_log_within("Kubernetes service link", Duration::from_secs(20));
    init.expect_log_within("opencode is ready", Duration::from_secs(30));
    drop(init);
    sb.assert_host_untouched();
}

/// opencode's working directory is entered as the service user, after privileges are dropped:
/// a workdir only root may enter (here /root) is refused, never opencode's cwd.
#[test]
fn a_workdir_only_root_can_enter_is_refused() {
    let (sb, _port) = setup("127.0.0.1", "healthy", "workdir = '/root'\n");
    let mut init = sb.boot(&[], &[]);
    init.expect_log_within("cannot run", Duration::from_secs(20));
    let starts = support::sandbox::starts(&sb);
    assert!(starts.is_empty(), "opencode started in /root: {starts:?}");
    drop(init);
    sb.assert_host_untouched();
}

/// `OCC_ADMIN_SOCKET` in an existing directory: occ-init leaves that directory's mode alone.
#[test]
fn an_existing_admin_socket_directory_keeps_its_mode() {
    use std::os::unix::fs::PermissionsExt;
    let (sb, _port) = setup("127.0.0.1", "healthy", "");
    let shared = sb.path("shared");
    std::fs::create_dir_all(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o755)).unwrap();
    let sock = shared.join("admin.sock").display().to_string();
    let mut init = sb.boot(&["--admin-socket", &sock], &[]);
    init.expect_log_within("opencode is ready", Duration::from_secs(20));
    let mode = std::fs::metadata(&shared).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o755);
    let sock_mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(sock_mode, 0o600, "the socket itself is root-only");
    drop(init);
    sb.assert_host_untouched();
}

/// The boot's own restore of a large manifest runs in the helper too: PID 1 answers and stops
/// at once meanwhile, and opencode waits for the restore (status says why).
#[test]
fn a_long_boot_restore_does_not_freeze_pid1() {
    let (sb, _port) = setup("0.0.0.0", "healthy", "");
    std::fs::write(sb.manifest(), many_users(600)).unwrap();
    let mut init = sb.boot(&[], &[]);
    let sock = sb.path("run/admin.sock");
    assert!(support::eventually(Duration::from_secs(10), || sock.exists()));
    let t = std::time::Instant::now();
    let out = sb.exec(&init, &["status", "--json"], None);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "status took {:?}",
        t.elapsed()
    );
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(st["opencode"]["state"], "gated", "{st}");
    assert!(
        st["opencode"]["gate_reason"]
            .as_str()
            .unwrap_or_default()
            .contains("restoring"),
        "{st}"
    );
    let t = std::time::Instant::now();
    init.signal(nix::sys::signal::Signal::SIGTERM);
    let _ = init.exit_code(Duration::from_secs(30));
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "stop took {:?}",
        t.elapsed()
    );
    assert!(
        sb.etc_file("passwd").matches("\nuser").count() < 600,
        "the restore finished too soon to prove anything"
    );
    drop(init);
    sb.assert_host_untouched();
}
