//! Launching opencode: the service user (looked up before the fork), its environment built
//! from an allow-list (never occ-init's secrets), the explicit `--hostname`/`--port`,
//! `no_new_privs`, and a check that the port is free before opencode would die with
//! "Unexpected error".

use std::ffi::OsString;
use std::net::TcpListener;
use std::path::PathBuf;

use crate::config::Config;
use crate::secret::SecretString;
use crate::spawn::{Credentials, SpawnSpec};

/// Variables of occ-init's environment that opencode always gets when set.
pub const ENV_ALLOW_LIST: &[&str] = &[
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "TERM",
    "COLORTERM",
    "NO_COLOR",
];

/// PATH for opencode when occ-init has none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The account opencode runs as.
#[derive(Debug, Clone)]
pub struct ServiceUser {
    pub name: String,
    pub home: PathBuf,
    pub shell: PathBuf,
    pub credentials: Credentials,
}

/// Look up the service user and its supplementary groups (before any fork).
pub fn lookup(name: &str) -> Result<ServiceUser, String> {
    let user = nix::unistd::User::from_name(name)
        .map_err(|e| format!("cannot look up service user {name}: {e}"))?
        .ok_or_else(|| {
            format!(
                "service user {name} does not exist (create it in the image, or set service_user)"
            )
        })?;
    let cname = std::ffi::CString::new(name).map_err(|_| "bad user name".to_string())?;
    let groups = nix::unistd::getgrouplist(&cname, user.gid)
        .map(|g| g.into_iter().map(|g| g.as_raw()).collect())
        .unwrap_or_else(|_| vec![user.gid.as_raw()]);
    Ok(ServiceUser {
        name: name.to_string(),
        home: user.dir,
        shell: user.shell,
        credentials: Credentials {
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
            groups,
        },
    })
}

/// opencode's argv: the configured command plus `--hostname H --port P`.
pub fn argv(cfg: &Config, host: &str, port: u16) -> Vec<OsString> {
    let mut v: Vec<OsString> = cfg.command.iter().map(OsString::from).collect();
    v.push("--hostname".into());
    v.push(host.trim_matches(['[', ']']).into());
    v.push("--port".into());
    v.push(port.to_string().into());
    v
}

/// opencode's environment: identity of the service user, the allow-list, `pass_env`, the
/// configured `env`, and the server password when one is configured. Pure over `parent`.
pub fn environment(
    cfg: &Config,
    user: &ServiceUser,
    parent: &[(String, String)],
    password: Option<&SecretString>,
) -> Vec<(OsString, OsString)> {
    let get = |k: &str| parent.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let mut env: Vec<(String, String)> = vec![
        ("HOME".into(), user.home.display().to_string()),
        ("USER".into(), user.name.clone()),
        ("LOGNAME".into(), user.name.clone()),
        ("SHELL".into(), user.shell.display().to_string()),
        (
            "PATH".into(),
            get("PATH").unwrap_or_else(|| DEFAULT_PATH.into()),
        ),
    ];
    for name in ENV_ALLOW_LIST
        .iter()
        .copied()
        .chain(cfg.pass_env.iter().map(String::as_str))
    {
        if crate::spawn::is_secret_env(name) {
            continue;
        }
        if let Some(v) = get(name) {
            env.retain(|(k, _)| k != name);
            env.push((name.to_string(), v));
        }
    }
    for (k, v) in &cfg.env {
        if !crate::spawn::is_secret_env(k) {
            env.retain(|(n, _)| n != k);
            env.push((k.clone(), v.clone()));
        }
    }
    if let Some(p) = password {
        env.push(("OPENCODE_SERVER_PASSWORD".into(), p.expose().to_string()));
    }
    env.into_iter().map(|(k, v)| (k.into(), v.into())).collect()
}

/// opencode's working directory: configured, else ~/workspace when it exists, else ~.
pub fn workdir(cfg: &Config, user: &ServiceUser) -> PathBuf {
    if let Some(w) = &cfg.workdir {
        return w.clone();
    }
    let ws = user.home.join("workspace");
    if ws.is_dir() {
        ws
    } else {
        user.home.clone()
    }
}

/// `host:port` as a socket address string (IPv6 hosts bracketed, with or without brackets
/// given).
pub fn socket_addr(host: &str, port: u16) -> String {
    let h = host.trim_matches(['[', ']']);
    if h.contains(':') {
        format!("[{h}]:{port}")
    } else {
        format!("{h}:{port}")
    }
}

/// Is something already listening on host:port? (Binding as root to find out.)
pub fn port_in_use(host: &str, port: u16) -> bool {
    matches!(TcpListener::bind(socket_addr(host, port)), Err(e) if e.kind() == std::io::ErrorKind::AddrInUse)
}

/// Everything needed to spawn opencode now.
pub fn spec(
    cfg: &Config,
    user: &ServiceUser,
    password: Option<&SecretString>,
    listen: (&str, u16),
) -> SpawnSpec {
    // Non-UTF-8 variables are skipped, never a panic.
    let parent: Vec<(String, String)> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect();
    SpawnSpec {
        argv: argv(cfg, listen.0, listen.1),
        env: Some(environment(cfg, user, &parent, password)),
        cwd: Some(workdir(cfg, user)),
        credentials: Some(user.credentials.clone()),
        // opencode and everything its terminals and agent run can never gain privileges:
        // no setuid `su`/`sudo` checking passwords behind the rate limiter's back.
        no_new_privs: true,
        ..SpawnSpec::default()
    }
}

/// The private temporary directory of a user's opencode, under their home (opencode's
/// `/tmp/opencode` would be shared by every user otherwise).
pub const INSTANCE_TMP: &str = ".tmp";

/// A login user's own opencode: their uid, gid and groups, `HOME` their home, working
/// directory `~/workspace`, a private `TMPDIR`, XDG directories under the home (whatever
/// `env` says: they hold the user's sessions and provider keys) and the instance's own
/// random password. Both directories are made by the child as the user.
pub fn instance_spec(
    cfg: &Config,
    user: &ServiceUser,
    password: &SecretString,
    listen: (&str, u16),
) -> SpawnSpec {
    let parent: Vec<(String, String)> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect();
    let home = &user.home;
    let workspace = home.join("workspace");
    let tmp = home.join(INSTANCE_TMP);
    let mut env = environment(cfg, user, &parent, Some(password));
    let own = [
        ("TMPDIR", tmp.clone()),
        ("XDG_DATA_HOME", home.join(".local/share")),
        ("XDG_CONFIG_HOME", home.join(".config")),
        ("XDG_STATE_HOME", home.join(".local/state")),
        ("XDG_CACHE_HOME", home.join(".cache")),
    ];
    env.retain(|(k, _)| !own.iter().any(|(n, _)| k == n));
    env.extend(own.into_iter().map(|(k, v)| (k.into(), v.into_os_string())));
    SpawnSpec {
        argv: argv(cfg, listen.0, listen.1),
        env: Some(env),
        cwd: Some(workspace.clone()),
        credentials: Some(user.credentials.clone()),
        no_new_privs: true,
        make_dirs: vec![
            crate::spawn::DirSpec {
                path: workspace,
                mode: 0o755,
                private: false,
            },
            crate::spawn::DirSpec {
                path: tmp,
                mode: 0o700,
                private: true,
            },
        ],
        ..SpawnSpec::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user() -> ServiceUser {
        ServiceUser {
            name: "opencoder".into(),
            home: "/home/opencoder".into(),
            shell: "/bin/bash".into(),
            credentials: Credentials {
                uid: 1001,
                gid: 1001,
                groups: vec![1001],
            },
        }
    }

    #[test]
    fn argv_always_has_hostname_and_port() {
        let cfg = Config {
            host: "[::]".into(),
            port: 4096,
            ..Config::default()
        };
        let (host, port) = cfg.opencode_listen(5555);
        assert_eq!(
            (host.as_str(), port),
            ("127.0.0.1", 5555),
            "behind the proxy"
        );
        let cfg = Config {
            auth: crate::config::AuthMode::Opencode,
            ..cfg
        };
        let (host, port) = cfg.opencode_listen(5555);
        let v: Vec<String> = argv(&cfg, &host, port)
            .into_iter()
            .map(|s| s.into_string().unwrap())
            .collect();
        assert_eq!(
            v,
            ["opencode", "serve", "--hostname", "::", "--port", "4096"]
        );
    }

    #[test]
    fn environment_is_an_allow_list_without_secrets() {
        let cfg = Config {
            pass_env: vec![
                "ANTHROPIC_API_KEY".into(),
                "OCC_BOOTSTRAP_PASSWORD_HASH".into(),
            ],
            env: [("OPENCODE_CONFIG".to_string(), "/etc/oc.json".to_string())].into(),
            ..Config::default()
        };
        let parent: Vec<(String, String)> = [
            ("PATH", "/bin"),
            ("LANG", "C.UTF-8"),
            ("ANTHROPIC_API_KEY", "k"),
            ("OCC_BOOTSTRAP_PASSWORD_HASH", "$6$secret"),
            ("OCC_BOOTSTRAP_USER", "admin"),
            ("RANDOM_VAR", "x"),
            ("HOME", "/root"),
        ]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        let env: Vec<(String, String)> = environment(&cfg, &user(), &parent, None)
            .into_iter()
            .map(|(k, v)| (k.into_string().unwrap(), v.into_string().unwrap()))
            .collect();
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("HOME"), Some("/home/opencoder"));
        assert_eq!(get("USER"), Some("opencoder"));
        assert_eq!(get("PATH"), Some("/bin"));
        assert_eq!(get("LANG"), Some("C.UTF-8"));
        assert_eq!(get("ANTHROPIC_API_KEY"), Some("k"));
        assert_eq!(get("OPENCODE_CONFIG"), Some("/etc/oc.json"));
        assert_eq!(get("RANDOM_VAR"), None);
        assert!(
            env.iter()
                .all(|(k, v)| !k.starts_with("OCC_") && !v.contains("$6$")),
            "{env:?}"
        );
        assert_eq!(get("OPENCODE_SERVER_PASSWORD"), None);
        let with_pw = environment(
            &cfg,
            &user(),
            &parent,
            Some(&SecretString::new("pw".into())),
        );
        assert!(with_pw
            .iter()
            .any(|(k, v)| k == "OPENCODE_SERVER_PASSWORD" && v == "pw"));
    }

    #[test]
    fn an_instance_lives_in_its_users_home() {
        let cfg = Config {
            env: [
                ("XDG_DATA_HOME".to_string(), "/shared".to_string()),
                ("TMPDIR".to_string(), "/tmp".to_string()),
            ]
            .into(),
            ..Config::default()
        };
        let alice = ServiceUser {
            name: "alice".into(),
            home: "/home/alice".into(),
            shell: "/bin/bash".into(),
            credentials: Credentials {
                uid: 1002,
                gid: 1002,
                groups: vec![1002, 27],
            },
        };
        let spec = instance_spec(
            &cfg,
            &alice,
            &SecretString::new("pw".into()),
            ("127.0.0.1", 4100),
        );
        let env: std::collections::HashMap<String, String> = spec
            .env
            .unwrap()
            .into_iter()
            .map(|(k, v)| (k.into_string().unwrap(), v.into_string().unwrap()))
            .collect();
        assert_eq!(env["HOME"], "/home/alice");
        assert_eq!(env["USER"], "alice");
        assert_eq!(env["TMPDIR"], "/home/alice/.tmp", "env cannot share it");
        assert_eq!(env["XDG_DATA_HOME"], "/home/alice/.local/share");
        assert_eq!(env["XDG_CONFIG_HOME"], "/home/alice/.config");
        assert_eq!(env["OPENCODE_SERVER_PASSWORD"], "pw");
        assert_eq!(env.keys().filter(|k| *k == "TMPDIR").count(), 1);
        assert_eq!(spec.cwd.unwrap(), PathBuf::from("/home/alice/workspace"));
        assert_eq!(spec.credentials.unwrap().groups, vec![1002, 27]);
        assert!(spec.no_new_privs);
        let dirs: Vec<(String, u32, bool)> = spec
            .make_dirs
            .iter()
            .map(|d| (d.path.display().to_string(), d.mode, d.private))
            .collect();
        assert_eq!(
            dirs,
            vec![
                ("/home/alice/workspace".into(), 0o755, false),
                ("/home/alice/.tmp".into(), 0o700, true)
            ]
        );
        assert!(spec.argv.iter().any(|a| a == "4100"));
    }

    #[test]
    fn detects_a_busy_port() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        assert!(port_in_use("127.0.0.1", port));
        drop(l);
        assert!(!port_in_use("127.0.0.1", port));
    }
}
