//! The real image, run by a real container engine (podman here; docker where it exists):
//! image config, the gate and its healthcheck, the first user through `exec`, logins through
//! the published port, stop/start, a new container on the same volume, `--init` (occ-init as
//! PID 2) and a read-only root. tests/run builds the image with image/build and sets
//! OCC_TEST_IMAGE; without it these tests say SKIPPED (and fail in CI).

mod support;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::eventually;
use support::http::{basic, http};
use support::sandbox::{free_port, text, wait_output};

struct Engine {
    bin: String,
    image: String,
}

/// A container removed (with its anonymous state) when dropped.
struct Container<'a> {
    engine: &'a Engine,
    name: String,
}

impl Drop for Container<'_> {
    fn drop(&mut self) {
        let _ = self.engine.run(&["rm", "-f", "-t", "0", &self.name]);
    }
}

impl Engine {
    fn get() -> Option<Engine> {
        let Ok(image) = std::env::var("OCC_TEST_IMAGE") else {
            assert!(
                std::env::var_os("CI").is_none(),
                "OCC_TEST_IMAGE is not set in CI (tests/run builds the image)"
            );
            eprintln!("SKIPPED: OCC_TEST_IMAGE is not set (tests/run builds the image)");
            return None;
        };
        let bin = std::env::var("OCC_TEST_ENGINE").unwrap_or_else(|_| "podman".into());
        Some(Engine { bin, image })
    }

    fn run(&self, args: &[&str]) -> Output {
        self.run_in(args, None)
    }

    fn run_in(&self, args: &[&str], input: Option<&str>) -> Output {
        let mut child = Command::new(&self.bin)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("container engine");
        if let (Some(data), Some(mut stdin)) = (input, child.stdin.take()) {
            use std::io::Write;
            let _ = stdin.write_all(data.as_bytes());
        }
        wait_output(child, Duration::from_secs(120))
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "{} {args:?}: {}",
            self.bin,
            text(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn start(&self, name: &str, args: &[&str]) -> Container<'_> {
        let _ = self.run(&["rm", "-f", "-t", "0", name]);
        let mut all = vec!["run", "-d", "--name", name];
        all.extend_from_slice(args);
        all.push(&self.image);
        self.ok(&all);
        let c = Container {
            engine: self,
            name: name.to_string(),
        };
        assert!(
            eventually(Duration::from_secs(30), || self
                .run(&["exec", name, "occ-init", "health", "--live"])
                .status
                .success()),
            "PID 1 never answered; logs:\n{}",
            self.logs(name)
        );
        c
    }

    fn logs(&self, name: &str) -> String {
        text(&self.run(&["logs", name]))
    }

    fn healthy(&self, name: &str) -> bool {
        self.run(&["healthcheck", "run", name]).status.success()
    }
}

fn unique(tag: &str) -> String {
    format!("occ-test-{tag}-{}", std::process::id())
}

#[test]
fn image_config_has_entrypoint_healthcheck_and_stopsignal() {
    let Some(e) = Engine::get() else { return };
    let list: serde_json::Value =
        serde_json::from_str(&e.ok(&["image", "inspect", &e.image])).unwrap();
    let all = &list[0];
    let cfg = &all["Config"];
    assert_eq!(
        cfg["Entrypoint"],
        serde_json::json!(["/usr/local/bin/occ-init"])
    );
    assert_eq!(cfg["StopSignal"], "SIGTERM");
    // podman keeps the healthcheck beside the config, docker inside it.
    let hc = if all["Healthcheck"].is_null() {
        &cfg["Healthcheck"]["Test"]
    } else {
        &all["Healthcheck"]["Test"]
    };
    assert_eq!(
        hc,
        &serde_json::json!(["CMD", "occ-init", "health"]),
        "{all}"
    );
    assert!(cfg["ExposedPorts"].get("3000/tcp").is_some(), "{cfg}");
}

#[test]
fn gate_first_user_logins_stop_start_and_a_new_container_on_the_volume() {
    let Some(e) = Engine::get() else { return };
    let name = unique("main");
    let volume = unique("vol");
    let port = free_port();
    let publish = format!("127.0.0.1:{port}:3000");
    let mount = format!("{volume}:/var/lib/occ");
    let homes = unique("home");
    let home_mount = format!("{homes}:/home");
    let c = e.start(&name, &["-p", &publish, "-v", &mount, "-v", &home_mount]);

    // Exposed inside the container (0.0.0.0) with no user: gated, unhealthy, the gate page.
    assert!(!e.healthy(&name), "gated must be unhealthy");
    assert!(eventually(Duration::from_secs(20), || http(
        port, "GET", "/session", "", ""
    )
    .status
        == 503));
    let r = http(port, "GET", "/", "Accept: text/html\r\n", "");
    assert!(r.body.contains("occ-init user add"), "{r:?}");

    // The first user through exec opens the gate.
    let out = e.run_in(
        &[
            "exec",
            "-i",
            &name,
            "occ-init",
            "user",
            "add",
            "alice",
            "--password-stdin",
        ],
        Some("alice container pw"),
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        eventually(Duration::from_secs(120), || e.healthy(&name)),
        "never healthy; logs:\n{}",
        e.logs(&name)
    );

    // The published port serves opencode only with a valid login.
    assert!(eventually(Duration::from_secs(5), || http(
        port, "GET", "/session", "", ""
    )
    .status
        == 401));
    let r = http(
        port,
        "POST",
        "/pty",
        "Content-Type: application/json\r\n",
        "{}",
    );
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(
        http(port, "GET", "/session", &basic("alice", "nope"), "").status,
        401
    );
    let r = http(
        port,
        "GET",
        "/session",
        &basic("alice", "alice container pw"),
        "",
    );
    assert_eq!(r.status, 200, "{r:?}");
    let r = http(port, "GET", "/global/health", "", "");
    assert!(r.body.contains("\"healthy\":true"), "{r:?}");
    // Her own opencode (per user, the image's default) runs as alice; she keeps a session
    // and a file in her home.
    let out = e.run_in(
        &["exec", &name, "occ-init", "instance", "list", "--json"],
        None,
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["instances"][0]["user"], "alice", "{v}");
    let pid = v["instances"][0]["pid"].to_string();
    let proc_dir = format!("/proc/{pid}");
    let out = e.run_in(&["exec", &name, "stat", "-c", "%U", &proc_dir], None);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "alice",
        "{}",
        text(&out)
    );
    let alice = basic("alice", "alice container pw");
    let r = http(
        port,
        "POST",
        "/session",
        &format!("{alice}Content-Type: application/json\r\n"),
        r#"{"title":"survives the container"}"#,
    );
    assert_eq!(r.status, 200, "{r:?}");
    let sid = serde_json::from_str::<serde_json::Value>(&r.body).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let out = e.run_in(
        &[
            "exec",
            "-u",
            "alice",
            &name,
            "sh",
            "-c",
            "echo kept > ~/workspace/notes.txt",
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out));

    // stop: well within the grace period, status 0 or 143.
    let t = Instant::now();
    e.ok(&["stop", "-t", "30", &name]);
    let took = t.elapsed();
    assert!(took < Duration::from_secs(15), "stop took {took:?}");
    let code = e.ok(&["inspect", "--format", "{{.State.ExitCode}}", &name]);
    assert!(
        ["0", "143"].contains(&code.trim()),
        "exit {code}; logs:\n{}",
        e.logs(&name)
    );

    // start again: the same /etc, alice unchanged.
    e.ok(&["start", &name]);
    assert!(eventually(Duration::from_secs(60), || e
        .logs(&name)
        .contains("1 unchanged")));
    assert!(eventually(Duration::from_secs(120), || e.healthy(&name)));
    drop(c);

    // A new container on the same volumes: alice re-created, PAM accepts her password, and
    // her sessions and files are back.
    let name2 = unique("again");
    let port2 = free_port();
    let publish2 = format!("127.0.0.1:{port2}:3000");
    let c2 = e.start(&name2, &["-p", &publish2, "-v", &mount, "-v", &home_mount]);
    assert!(eventually(Duration::from_secs(30), || e
        .logs(&name2)
        .contains("users: 1 created")));
    let out = e.run_in(
        &["exec", "-i", &name2, "occ-init", "user", "verify", "alice"],
        Some("alice container pw\n"),
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(eventually(Duration::from_secs(120), || e.healthy(&name2)));
    assert!(
        eventually(Duration::from_secs(60), || {
            let r = http(port2, "GET", "/session", &alice, "");
            r.status == 200 && r.body.contains(&sid)
        }),
        "alice's session is gone in the new container"
    );
    let out = e.run_in(
        &[
            "exec",
            "-u",
            "alice",
            &name2,
            "cat",
            "/home/alice/workspace/notes.txt",
        ],
        None,
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "kept",
        "{}",
        text(&out)
    );
    drop(c2);
    let _ = e.run(&["volume", "rm", "-f", &volume]);
    let _ = e.run(&["volume", "rm", "-f", &homes]);
}

#[test]
fn init_flag_puts_occ_init_at_pid_2() {
    let Some(e) = Engine::get() else { return };
    let name = unique("init");
    let c = e.start(&name, &["--init"]);
    let comm = e.ok(&["exec", &name, "cat", "/proc/1/comm"]);
    assert_ne!(comm.trim(), "occ-init", "the engine's init is PID 1");
    // occ-init is PID 1's child (PID 2 when nothing else started first).
    let found = e.ok(&[
        "exec",
        &name,
        "sh",
        "-c",
        "for p in /proc/[0-9]*; do [ \"$(cat $p/comm 2>/dev/null)\" = occ-init ] && grep PPid $p/status; done; true",
    ]);
    assert_eq!(found.trim(), "PPid:\t1", "{found}");
    let t = Instant::now();
    e.ok(&["stop", "-t", "30", &name]);
    assert!(t.elapsed() < Duration::from_secs(15));
    assert!(!e.logs(&name).contains("cannot become a child subreaper"));
    drop(c);
}

#[test]
fn read_only_root_with_tmpfs_run_and_tmp() {
    let Some(e) = Engine::get() else { return };
    let name = unique("ro");
    let port = free_port();
    let publish = format!("127.0.0.1:{port}:3000");
    let c = e.start(
        &name,
        &[
            "--read-only",
            "--tmpfs",
            "/run",
            "--tmpfs",
            "/tmp",
            "-p",
            &publish,
        ],
    );
    // PID 1, the admin socket, the proxy and its gate page work on a read-only root.
    assert!(eventually(Duration::from_secs(20), || http(
        port, "GET", "/session", "", ""
    )
    .status
        == 503));
    // Adding a user needs a writable /etc: refused with a clear error, PID 1 stays up.
    let out = e.run_in(
        &[
            "exec",
            "-i",
            &name,
            "occ-init",
            "user",
            "add",
            "alice",
            "--password-stdin",
        ],
        Some("alice container pw"),
    );
    assert!(!out.status.success());
    assert!(
        text(&out).contains("/etc is on a read-only filesystem"),
        "{}",
        text(&out)
    );
    assert!(e
        .run(&["exec", &name, "occ-init", "health", "--live"])
        .status
        .success());
    drop(c);
}

/// HTTPS in the real image (`OCC_TLS=self-signed`): logins over TLS through the published
/// port, plain HTTP redirected, the certificate kept root-only in the users volume (the
/// proxy's user cannot read it) and the same one served after `stop`/`start` and by a new
/// container on the same volume; its fingerprint is the one `status` shows.
#[test]
fn tls_self_signed_in_the_image_survives_restarts_and_new_containers() {
    use support::tls::{self as client, Trust};
    let Some(e) = Engine::get() else { return };
    let name = unique("tls");
    let volume = unique("tlsvol");
    let port = free_port();
    let publish = format!("127.0.0.1:{port}:3000");
    let mount = format!("{volume}:/var/lib/occ");
    let args = ["-p", &publish, "-v", &mount, "-e", "OCC_TLS=self-signed"];
    let c = e.start(&name, &args);
    let out = e.run_in(
        &[
            "exec",
            "-i",
            &name,
            "occ-init",
            "user",
            "add",
            "alice",
            "--password-stdin",
        ],
        Some("alice tls pw"),
    );
    assert!(out.status.success(), "{}", text(&out));
    let alice = basic("alice", "alice tls pw");
    let served = |port: u16| {
        let mut fp = String::new();
        let ok = eventually(Duration::from_secs(120), || {
            match client::https(port, &Trust::Any, "GET", "/session", &alice, "") {
                Ok((r, seen)) if r.status == 200 => {
                    fp = seen.fingerprint;
                    true
                }
                _ => false,
            }
        });
        assert!(ok, "never served over HTTPS; logs:\n{}", e.logs(&name));
        fp
    };
    let first = served(port);
    let status: serde_json::Value =
        serde_json::from_str(&e.ok(&["exec", &name, "occ-init", "status", "--json"])).unwrap();
    assert_eq!(
        status["security"]["tls"]["fingerprint_sha256"],
        first.as_str()
    );
    let r = http(port, "GET", "/session", &alice, "");
    assert_eq!(r.status, 308, "{r:?}");
    let out = e.run(&[
        "exec",
        "-u",
        "occ-proxy",
        &name,
        "cat",
        "/var/lib/occ/tls/key.pem",
    ]);
    assert!(
        !out.status.success(),
        "the proxy's user read the key: {}",
        text(&out)
    );
    let mode = e.ok(&[
        "exec",
        &name,
        "stat",
        "-c",
        "%a %U",
        "/var/lib/occ/tls/key.pem",
    ]);
    assert_eq!(mode.trim(), "600 root");

    e.ok(&["stop", "-t", "30", &name]);
    e.ok(&["start", &name]);
    assert_eq!(served(port), first, "a new certificate after stop/start");
    drop(c);
    let name2 = unique("tls2");
    let port2 = free_port();
    let publish2 = format!("127.0.0.1:{port2}:3000");
    let args2 = ["-p", &publish2, "-v", &mount, "-e", "OCC_TLS=self-signed"];
    let c2 = e.start(&name2, &args2);
    assert_eq!(served(port2), first, "a new certificate in a new container");
    drop(c2);
    let _ = e.run(&["volume", "rm", "-f", &volume]);
}
