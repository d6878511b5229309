//! The Containerfile, rootfs/ and deploy/ agree with each other and with the binary: every path
//! the image copies exists, its ENTRYPOINT and HEALTHCHECK (and the Kubernetes probes) name real
//! subcommands, and grace periods line up. Linting (hadolint, kubernetes-validate) is in tests/run.

mod support;

use std::path::Path;
use std::process::Command;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn read(rel: &str) -> String {
    std::fs::read_to_string(Path::new(ROOT).join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Instructions of the final stage (after the last FROM), continuation lines joined.
fn instructions(text: &str) -> Vec<String> {
    let joined = text.replace("\\\n", " ");
    joined
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

fn json_array(rest: &str) -> Vec<String> {
    serde_json::from_str(rest.trim()).unwrap_or_else(|e| panic!("not a JSON array: {rest}: {e}"))
}

/// `occ-init ARGS --help` succeeds: the subcommand and flags exist.
fn assert_real_command(argv: &[String]) {
    let name = Path::new(&argv[0]).file_name().unwrap().to_str().unwrap();
    assert_eq!(name, "occ-init", "{argv:?}");
    let out = Command::new(support::OCC_INIT)
        .args(&argv[1..])
        .arg("--help")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{argv:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn containerfile_copies_existing_paths_and_names_real_commands() {
    let text = read("Containerfile");
    let ins = instructions(&text);
    let mut copies = 0;
    for i in &ins {
        if let Some(rest) = i.strip_prefix("COPY ") {
            if rest.starts_with("--from=") {
                continue;
            }
            let parts: Vec<&str> = rest.split_whitespace().collect();
            for src in &parts[..parts.len() - 1] {
                assert!(
                    Path::new(ROOT).join(src).exists(),
                    "COPY source {src} does not exist"
                );
                copies += 1;
            }
        }
    }
    assert!(
        copies >= 5,
        "expected the crate sources and rootfs/ to be copied"
    );
    let entry = ins
        .iter()
        .find_map(|i| i.strip_prefix("ENTRYPOINT "))
        .expect("ENTRYPOINT");
    let entry = json_array(entry);
    assert_eq!(entry, vec!["/usr/local/bin/occ-init"]);
    assert!(ins
        .iter()
        .any(|i| i.contains("COPY --from=build /out/occ-init /out/occ-proxy /usr/local/bin/")));
    // PID 1 built for size, the proxy for speed (its own profile), both installed.
    let build = ins
        .iter()
        .find(|i| i.contains("cargo build"))
        .expect("a cargo build");
    assert!(
        build.contains("cargo build --release --locked --bin occ-init"),
        "{build}"
    );
    assert!(
        build.contains("cargo build --profile proxy --locked --bin occ-proxy"),
        "{build}"
    );
    assert!(
        build.contains("target/release/occ-init target/proxy/occ-proxy"),
        "{build}"
    );
    let manifest = read("Cargo.toml");
    assert!(
        manifest.contains("[profile.proxy]"),
        "Cargo.toml has no proxy profile"
    );
    // The proxy's user ships in the image, with the name the config expects.
    let proxy_user = occ_init::config::Config::default().proxy_user;
    assert!(ins.iter().any(|i| i.starts_with("RUN ")
        && i.contains(&format!("useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin --user-group {proxy_user}"))));
    let health = ins
        .iter()
        .find_map(|i| i.strip_prefix("HEALTHCHECK "))
        .expect("HEALTHCHECK");
    let cmd = json_array(&health[health.find("CMD ").expect("CMD") + 4..]);
    assert_real_command(&cmd);
    assert!(ins.iter().any(|i| i == "STOPSIGNAL SIGTERM"));
    assert!(ins
        .iter()
        .any(|i| i.starts_with("VOLUME") && i.contains("/var/lib/occ")));
    // The bases are ARGs whose defaults are the real images (stand-ins only by build-arg).
    for (arg, real) in [
        ("BASE_IMAGE", "ubuntu:24.04"),
        ("RUST_IMAGE", "rust:1-bookworm"),
        ("NODE_IMAGE", "node:20-bookworm-slim"),
    ] {
        assert!(
            ins.iter().any(|i| *i == format!("ARG {arg}={real}")),
            "{arg}"
        );
        assert!(
            ins.iter()
                .any(|i| i.starts_with(&format!("FROM ${{{arg}}}"))),
            "{arg}"
        );
    }
    // The default port matches the config default.
    let cfg = occ_init::config::Config::default();
    assert!(ins.iter().any(|i| *i == format!("EXPOSE {}", cfg.port)));
}

#[test]
fn rootfs_has_what_the_image_relies_on() {
    for f in [
        "rootfs/etc/occ/init.toml",
        "rootfs/etc/pam.d/opencode",
        "rootfs/etc/occ/users.example.toml",
    ] {
        assert!(Path::new(ROOT).join(f).is_file(), "{f}");
    }
    // The example manifest is valid (against an empty system).
    let facts = occ_init::manifest::SystemFacts::with_reserved(["opencoder", "ubuntu"]);
    occ_init::manifest::load(&read("rootfs/etc/occ/users.example.toml"), &facts)
        .expect("example manifest is valid");
    // pam_unix for both auth and account, as opencode-cloud's service file.
    let pam = read("rootfs/etc/pam.d/opencode");
    assert!(pam
        .lines()
        .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["auth", "required", "pam_unix.so"]));
    assert!(pam.lines().any(
        |l| l.split_whitespace().collect::<Vec<_>>() == ["account", "required", "pam_unix.so"]
    ));
}

#[test]
fn kubernetes_probes_and_grace_match_occ_init() {
    let text = read("deploy/kubernetes/opencode.yaml");
    let mut probes = 0;
    for line in text.lines() {
        if let Some(rest) = line.trim().strip_prefix("command: ") {
            assert_real_command(&json_array(rest));
            probes += 1;
        }
    }
    assert_eq!(probes, 1, "the liveness exec probe");
    // Readiness goes through the proxy's public, login-free health path.
    let cfg = occ_init::config::Config::default();
    assert!(cfg.public_health);
    assert!(text.contains(&format!("path: {}", cfg.health_path)));
    assert!(text.contains("enableServiceLinks: false"));
    let grace: u64 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("terminationGracePeriodSeconds: "))
        .expect("terminationGracePeriodSeconds")
        .parse()
        .unwrap();
    assert!(
        grace > occ_init::config::Config::default().stop_grace.as_secs(),
        "kubelet would kill before occ-init's grace ends"
    );
    assert!(
        text.contains("readOnly: true"),
        "users from a read-only Secret"
    );
}

#[test]
fn compose_example_uses_the_documented_volumes() {
    let text = read("deploy/compose/docker-compose.yml");
    assert!(text.contains("occ-users:/var/lib/occ"));
    assert!(text.contains("stop_grace_period: 15s"));
}
