//! The CLI subcommands that act on a container: `user …`, `status`, `health`, `restart`.
//! With a running PID 1 (its admin socket exists) they are requests to it; `user …` falls
//! back to acting directly on /etc and the manifest when no occ-init is running.
//! Exit codes: 0 success, 1 failure (with a one-line reason).

use std::io::{self, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};

use crate::config::Config;
use std::time::Duration;

use crate::cli::{SecretArgs, UserCommand};
use crate::secret::{self, SecretString};
use crate::users::{Exposure, NewSecret, Persistence, Users, UsersError};

/// The effective config for user commands; a broken config file is reported but does not
/// block user management (defaults and environment are used instead).
fn config() -> crate::config::Config {
    crate::config::Config::load(None, &crate::config::Overrides::default()).unwrap_or_else(|e| {
        eprintln!("occ-init: warning: {e}; using defaults and environment");
        let env = crate::config::utf8_env();
        crate::config::Config::build(None, &env, &Default::default()).unwrap_or_default()
    })
}

fn users(cfg: &Config, manifest: Option<PathBuf>) -> Users {
    let mut cfg = cfg.clone();
    if let Some(m) = manifest {
        cfg.users_file = m;
    }
    Users::new(crate::boot::users_config(&cfg))
}

/// Report an error and return exit code 1.
fn fail(e: impl std::fmt::Display) -> i32 {
    eprintln!("occ-init: {e}");
    1
}

fn report(cfg: &Config, result: Result<Persistence, UsersError>, done: &str) -> i32 {
    match result {
        Ok(p) => {
            println!("{done}");
            // Direct mode: a running occ-init without a reachable admin socket is told by
            // signal to re-read users, so a gated opencode launches once its first user exists.
            if crate::boot::notify_running_init(cfg) {
                println!("told the running occ-init to re-read users");
            }
            if let Some(note) = p.note() {
                eprintln!("occ-init: {note}");
            }
            0
        }
        Err(e) => fail(e),
    }
}

/// The new secret as the flags ask for it.
fn read_secret(name: &str, args: &SecretArgs) -> io::Result<(NewSecret, Option<SecretString>)> {
    if args.hash_stdin {
        return Ok((
            NewSecret::Hash(secret::read_line(io::stdin().lock())?),
            None,
        ));
    }
    if args.password_stdin {
        return Ok((
            NewSecret::Password(secret::read_line(io::stdin().lock())?),
            None,
        ));
    }
    if args.generate {
        let p = secret::generate_password()?;
        let shown = SecretString::new(p.expose().to_string());
        return Ok((NewSecret::Password(p), Some(shown)));
    }
    if secret::stdin_is_tty() {
        return Ok((
            NewSecret::Password(secret::prompt_new_password(name)?),
            None,
        ));
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidInput,
        "no password given: use --password-stdin, --hash-stdin or --generate (or run on a terminal)",
    ))
}

/// Exposure for the last-user guard, from the effective config.
fn exposure(cfg: &Config) -> Exposure {
    Exposure {
        address: cfg.exposure_address().to_string(),
        exposed: cfg.exposed(),
    }
}

/// A request to the running PID 1; `None` when its socket does not exist.
fn api(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
    timeout: Duration,
) -> Option<Result<(u16, serde_json::Value), String>> {
    if !socket.exists() {
        return None;
    }
    let body = body.map(|b| b.to_string());
    Some(
        crate::admin::client::request(socket, method, path, body.as_deref(), timeout)
            .map_err(|e| e.to_string())
            .map(|(status, text)| {
                (
                    status,
                    serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
                )
            }),
    )
}

/// The `error` text of an API answer.
fn api_error(v: &serde_json::Value) -> String {
    v.get("error")
        .and_then(|e| e.as_str())
        .map(str::to_string)
        .unwrap_or_else(|| format!("request failed: {v}"))
}

/// Print an API result for a user change; 0 on 2xx.
fn api_report(result: Result<(u16, serde_json::Value), String>, done: &str) -> i32 {
    match result {
        Ok((s, v)) if (200..300).contains(&s) => {
            println!("{done}");
            if let Some(note) = v.get("note").and_then(|n| n.as_str()) {
                eprintln!("occ-init: {note}");
            }
            0
        }
        Ok((_, v)) => fail(api_error(&v)),
        Err(e) => fail(e),
    }
}

const API_TIMEOUT: Duration = Duration::from_secs(60);

fn secret_json(new: &NewSecret) -> serde_json::Value {
    match new {
        NewSecret::Password(p) => serde_json::json!({"password": p.expose()}),
        NewSecret::Hash(h) => serde_json::json!({"password_hash": h.expose()}),
    }
}

/// One request to PID 1 for status/health/restart (no direct fallback).
fn call(method: &str, path: &str, timeout: Duration) -> Result<(u16, String), String> {
    crate::admin::client::request(&config().admin_socket, method, path, None, timeout)
        .map_err(|e| e.to_string())
}

/// `occ-init status [--json]`
pub fn status(json: bool) -> i32 {
    match call("GET", "/v1/status", Duration::from_secs(5)) {
        Ok((200, body)) if json => {
            println!("{body}");
            0
        }
        Ok((200, body)) => match serde_json::from_str::<crate::status::Status>(&body) {
            Ok(s) => {
                let color = io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
                print!("{}", crate::status::render(&s, color));
                0
            }
            Err(e) => fail(format!("unexpected status answer: {e}")),
        },
        Ok((code, body)) => fail(format!("status failed (HTTP {code}): {body}")),
        Err(e) => fail(e),
    }
}

/// `occ-init health [--live]`: 0 when PID 1 is up and opencode ready (or, with `--live`,
/// when PID 1 answers at all), within 2 s.
pub fn health(live: bool) -> i32 {
    let path = if live { "/v1/health" } else { "/v1/ready" };
    match call("GET", path, Duration::from_secs(2)) {
        Ok((200, _)) => {
            println!("{}", if live { "alive" } else { "ready" });
            0
        }
        Ok((_, body)) => {
            let state = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| {
                    v.get("opencode")
                        .and_then(|s| s.as_str())
                        .map(str::to_string)
                })
                .unwrap_or(body);
            println!("not ready: opencode is {state}");
            1
        }
        Err(e) => fail(e),
    }
}

/// `occ-init instance list|stop`
pub fn instance(cmd: crate::cli::InstanceCommand) -> i32 {
    use crate::cli::InstanceCommand;
    let error_of = |body: String| {
        serde_json::from_str::<serde_json::Value>(&body)
            .map(|v| api_error(&v))
            .unwrap_or(body)
    };
    match cmd {
        InstanceCommand::List { json } => match call("GET", "/v1/status", Duration::from_secs(5)) {
            Ok((200, body)) => match serde_json::from_str::<crate::status::Status>(&body) {
                Ok(s) if json => {
                    println!("{}", serde_json::json!({ "instances": s.instances }));
                    0
                }
                Ok(s) => {
                    print!("{}", crate::status::render_instances(&s, false));
                    0
                }
                Err(e) => fail(format!("unexpected status answer: {e}")),
            },
            Ok((_, body)) => fail(error_of(body)),
            Err(e) => fail(e),
        },
        InstanceCommand::Stop { user } => {
            if let Err(e) = crate::manifest::check_name(&user) {
                return fail(format!("{user:?}: {e}"));
            }
            let path = format!("/v1/instances/{user}/stop");
            match call("POST", &path, Duration::from_secs(5)) {
                Ok((202, _)) => {
                    println!("stopping {user}'s opencode (their next request starts it again)");
                    0
                }
                Ok((_, body)) => fail(error_of(body)),
                Err(e) => fail(e),
            }
        }
    }
}

/// `occ-init token list|create|revoke`
pub fn token(cmd: crate::cli::TokenCommand) -> i32 {
    use crate::cli::TokenCommand;
    let error_of = |body: String| {
        serde_json::from_str::<serde_json::Value>(&body)
            .map(|v| api_error(&v))
            .unwrap_or(body)
    };
    let date = |t: Option<i64>| {
        t.map_or("-".to_string(), |t| {
            crate::tls::rfc3339(t)[..16].replace('T', " ")
        })
    };
    match cmd {
        TokenCommand::List { user, json } => {
            if let Some(u) = &user {
                if let Err(e) = crate::manifest::check_name(u) {
                    return fail(format!("{u:?}: {e}"));
                }
            }
            let path = match &user {
                Some(u) => format!("/v1/tokens?user={u}"),
                None => "/v1/tokens".into(),
            };
            match call("GET", &path, Duration::from_secs(5)) {
                Ok((200, body)) if json => {
                    println!("{body}");
                    0
                }
                Ok((200, body)) => {
                    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                    let list: Vec<crate::tokens::TokenInfo> =
                        serde_json::from_value(v["tokens"].clone()).unwrap_or_default();
                    if list.is_empty() {
                        println!("no tokens");
                        return 0;
                    }
                    println!(
                        "{:<12}  {:<12}  {:<20}  {:<16}  {:<16}  EXPIRES",
                        "ID", "USER", "NAME", "CREATED", "LAST USED"
                    );
                    for t in list {
                        let expires = if t.expired {
                            format!("{} (expired)", date(t.expires))
                        } else if t.expires.is_none() {
                            "never".into()
                        } else {
                            date(t.expires)
                        };
                        println!(
                            "{:<12}  {:<12}  {:<20}  {:<16}  {:<16}  {expires}",
                            t.id,
                            t.user,
                            t.name,
                            date(Some(t.created)),
                            date(t.last_used)
                        );
                    }
                    0
                }
                Ok((_, body)) => fail(error_of(body)),
                Err(e) => fail(e),
            }
        }
        TokenCommand::Create {
            user,
            name,
            expires,
        } => {
            if let Err(e) = crate::manifest::check_name(&user) {
                return fail(format!("{user:?}: {e}"));
            }
            if let Some(e) = &expires {
                if let Err(e) = crate::tokens::parse_expiry(e) {
                    return fail(e.to_string());
                }
            }
            let body = serde_json::json!({"user": user, "name": name, "expires": expires});
            match crate::admin::client::request(
                &config().admin_socket,
                "POST",
                "/v1/tokens",
                Some(&body.to_string()),
                Duration::from_secs(5),
            ) {
                Ok((201, body)) => {
                    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                    eprintln!(
                        "token {} for {user} ({}), expires {}; shown once, keep it like a password:",
                        v["id"].as_str().unwrap_or("?"),
                        v["name"].as_str().unwrap_or("?"),
                        v["expires"].as_i64().map_or("never".to_string(), |t| date(Some(t)))
                    );
                    println!("{}", v["token"].as_str().unwrap_or(""));
                    0
                }
                Ok((_, body)) => fail(error_of(body)),
                Err(e) => fail(e.to_string()),
            }
        }
        TokenCommand::Revoke { id } => {
            if id.is_empty() || id.len() > 32 || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
                return fail(format!(
                    "{id:?} is not a token id (see `occ-init token list`)"
                ));
            }
            match call(
                "DELETE",
                &format!("/v1/tokens/{id}"),
                Duration::from_secs(5),
            ) {
                Ok((200, _)) => {
                    println!("revoked token {id}");
                    0
                }
                Ok((_, body)) => fail(error_of(body)),
                Err(e) => fail(e),
            }
        }
    }
}

/// `occ-init restart`
pub fn restart() -> i32 {
    match call("POST", "/v1/opencode/restart", Duration::from_secs(5)) {
        Ok((202, _)) => {
            println!("restarting opencode");
            0
        }
        Ok((_, body)) => fail(
            serde_json::from_str::<serde_json::Value>(&body)
                .map(|v| api_error(&v))
                .unwrap_or(body),
        ),
        Err(e) => fail(e),
    }
}

/// The new secret, then the API call for `add` / `passwd`.
fn secret_call(
    socket: &Path,
    name: &str,
    args: &SecretArgs,
    path: &str,
    extra: serde_json::Value,
    done: &str,
) -> i32 {
    let (new, generated) = match read_secret(name, args) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let mut body = secret_json(&new);
    if let (Some(b), Some(x)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(x.clone());
    }
    let code = match api(socket, "POST", path, Some(body), API_TIMEOUT) {
        Some(r) => api_report(r, done),
        None => fail("occ-init's admin socket went away"),
    };
    if let (0, Some(p)) = (code, generated) {
        println!("generated password (shown once): {}", p.expose());
    }
    code
}

/// `user …` through PID 1's admin socket when it runs; `None` to act directly instead.
fn user_via_api(cmd: &UserCommand, socket: &Path) -> Option<i32> {
    if !socket.exists() {
        return None;
    }
    Some(match cmd {
        UserCommand::Add {
            name,
            secret: args,
            uid,
            ..
        } => {
            let mut extra = serde_json::json!({"name": name});
            if let Some(u) = uid {
                extra["uid"] = serde_json::json!(u);
            }
            secret_call(
                socket,
                name,
                args,
                "/v1/users",
                extra,
                &format!("added user {name}"),
            )
        }
        UserCommand::Passwd {
            name, secret: args, ..
        } => secret_call(
            socket,
            name,
            args,
            &format!("/v1/users/{name}/password"),
            serde_json::json!({}),
            &format!("password changed for {name}"),
        ),
        UserCommand::Remove { name, force, .. } => {
            let path = format!(
                "/v1/users/{name}{}",
                if *force { "?force=true" } else { "" }
            );
            api_report(
                api(socket, "DELETE", &path, None, API_TIMEOUT)?,
                &format!("removed {name} (account locked, home kept)"),
            )
        }
        UserCommand::Lock { name, .. } => api_report(
            api(
                socket,
                "POST",
                &format!("/v1/users/{name}/lock"),
                None,
                API_TIMEOUT,
            )?,
            &format!("locked {name}"),
        ),
        UserCommand::Unlock { name, .. } => api_report(
            api(
                socket,
                "POST",
                &format!("/v1/users/{name}/unlock"),
                None,
                API_TIMEOUT,
            )?,
            &format!("unlocked {name}"),
        ),
        UserCommand::List { json, .. } => match api(socket, "GET", "/v1/users", None, API_TIMEOUT)?
        {
            Ok((200, v)) => match serde_json::from_value::<Vec<crate::users::UserInfo>>(v) {
                Ok(rows) => print_users(rows, *json),
                Err(e) => fail(e),
            },
            Ok((_, v)) => fail(api_error(&v)),
            Err(e) => fail(e),
        },
        UserCommand::Verify {
            name,
            password_stdin,
            ..
        } => {
            let Ok(password) = read_verify_password(name, *password_stdin) else {
                return Some(fail(UsersError::AuthFailed));
            };
            let body = serde_json::json!({"password": password.expose()});
            match api(
                socket,
                "POST",
                &format!("/v1/users/{name}/verify"),
                Some(body),
                API_TIMEOUT,
            )? {
                Ok((200, _)) => {
                    println!("ok");
                    0
                }
                Ok((429, v)) => fail(api_error(&v)),
                Ok(_) => fail(UsersError::AuthFailed),
                Err(e) => fail(e),
            }
        }
        // Manifest-level operations always act directly (then notify PID 1).
        UserCommand::Export { .. } | UserCommand::Import { .. } | UserCommand::Sync { .. } => {
            return None
        }
    })
}

fn read_verify_password(name: &str, from_stdin: bool) -> io::Result<SecretString> {
    if from_stdin || !secret::stdin_is_tty() {
        secret::read_line(io::stdin().lock())
    } else {
        secret::prompt_hidden(&format!("Password for {name}: "))
    }
}

fn print_users(rows: Vec<crate::users::UserInfo>, json: bool) -> i32 {
    if json {
        return match serde_json::to_string_pretty(&rows) {
            Ok(s) => {
                println!("{s}");
                0
            }
            Err(e) => fail(e),
        };
    }
    let mut out = io::stdout().lock();
    let _ = writeln!(
        out,
        "{:<32} {:>6}  {:<6}  {:<8}  {:<4}",
        "NAME", "UID", "LOCKED", "MANIFEST", "ETC"
    );
    for r in rows {
        let yn = |b: bool| if b { "yes" } else { "no" };
        let uid = r.uid.map(|u| u.to_string()).unwrap_or_else(|| "-".into());
        let _ = writeln!(
            out,
            "{:<32} {:>6}  {:<6}  {:<8}  {:<4}",
            r.name,
            uid,
            yn(r.locked),
            yn(r.in_manifest),
            yn(r.in_etc)
        );
    }
    0
}

/// The `--users PATH` of a user command.
fn users_flag(cmd: &UserCommand) -> Option<&PathBuf> {
    match cmd {
        UserCommand::Add { manifest, .. }
        | UserCommand::Remove { manifest, .. }
        | UserCommand::Passwd { manifest, .. }
        | UserCommand::Lock { manifest, .. }
        | UserCommand::Unlock { manifest, .. }
        | UserCommand::List { manifest, .. }
        | UserCommand::Verify { manifest, .. }
        | UserCommand::Export { manifest, .. }
        | UserCommand::Import { manifest, .. }
        | UserCommand::Sync { manifest, .. } => manifest.users.as_ref(),
    }
}

pub fn user(cmd: UserCommand) -> i32 {
    // Loaded once: a broken config file is warned about once, not per step.
    let cfg = config();
    // A running PID 1 owns its manifest: another one named with --users would be changed
    // behind its back (or silently ignored). Refuse, and say what to do.
    if let Some(other) = users_flag(&cmd).filter(|p| **p != cfg.users_file) {
        if cfg.admin_socket.exists()
            && std::os::unix::net::UnixStream::connect(&cfg.admin_socket).is_ok()
        {
            eprintln!(
                "occ-init: a running occ-init manages {}; --users {} is refused while it runs \
                 (change users through it without --users, or point its users_file there and \
                 restart it)",
                cfg.users_file.display(),
                other.display()
            );
            return crate::EXIT_USAGE;
        }
    }
    if let Some(code) = user_via_api(&cmd, &cfg.admin_socket) {
        return code;
    }
    match cmd {
        UserCommand::Add {
            name,
            secret: args,
            uid,
            manifest,
        } => {
            let (new, generated) = match read_secret(&name, &args) {
                Ok(s) => s,
                Err(e) => return fail(e),
            };
            let code = report(
                &cfg,
                users(&cfg, manifest.users).add(&name, new, uid),
                &format!("added user {name}"),
            );
            if code == 0 {
                if let Some(p) = generated {
                    println!("generated password (shown once): {}", p.expose());
                }
            }
            code
        }
        UserCommand::Passwd {
            name,
            secret: args,
            manifest,
        } => match read_secret(&name, &args) {
            Ok((new, generated)) => {
                let code = report(
                    &cfg,
                    users(&cfg, manifest.users).set_password(&name, new),
                    &format!("password changed for {name}"),
                );
                if let (0, Some(p)) = (code, generated) {
                    println!("generated password (shown once): {}", p.expose());
                }
                code
            }
            Err(e) => fail(e),
        },
        UserCommand::Remove {
            name,
            force,
            manifest,
        } => report(
            &cfg,
            users(&cfg, manifest.users).remove(&name, force, &exposure(&cfg)),
            &format!("removed {name} (account locked, home kept)"),
        ),
        UserCommand::Lock { name, manifest } => report(
            &cfg,
            users(&cfg, manifest.users).set_locked(&name, true),
            &format!("locked {name}"),
        ),
        UserCommand::Unlock { name, manifest } => report(
            &cfg,
            users(&cfg, manifest.users).set_locked(&name, false),
            &format!("unlocked {name}"),
        ),
        UserCommand::List { json, manifest } => match users(&cfg, manifest.users).list() {
            Ok(rows) => print_users(rows, json),
            Err(e) => fail(e),
        },
        UserCommand::Verify {
            name,
            password_stdin,
            manifest,
        } => {
            let Ok(password) = read_verify_password(&name, password_stdin) else {
                return fail(UsersError::AuthFailed);
            };
            match users(&cfg, manifest.users).verify(&name, &password) {
                Ok(()) => {
                    println!("ok");
                    0
                }
                Err(e) => fail(e),
            }
        }
        UserCommand::Export { manifest } => match users(&cfg, manifest.users).export() {
            Ok(text) => {
                print!("{text}");
                0
            }
            Err(e) => fail(e),
        },
        UserCommand::Import { file, manifest } => {
            let mut text = String::new();
            let read = if file.as_os_str() == "-" {
                io::stdin().read_to_string(&mut text)
            } else {
                std::fs::File::open(&file).and_then(|mut f| f.read_to_string(&mut text))
            };
            if let Err(e) = read {
                return fail(format!("{}: {e}", file.display()));
            }
            match users(&cfg, manifest.users).import(&text) {
                Ok((p, r)) => {
                    println!("imported {}; {}", file.display(), r.summary);
                    if crate::boot::notify_running_init(&cfg) {
                        println!("told the running occ-init to re-read users");
                    }
                    if let Some(note) = p.note() {
                        eprintln!("occ-init: {note}");
                    }
                    0
                }
                Err(e) => fail(e),
            }
        }
        // What the boot does: the one-time import of legacy records, the bootstrap user
        // from the environment, then /etc made to match the manifest.
        UserCommand::Sync { manifest } => {
            let bootstrap = match crate::users::Bootstrap::from_env() {
                Ok(b) => b,
                Err(e) => return fail(e),
            };
            let r = users(&cfg, manifest.users).restore_at_boot(bootstrap);
            if crate::boot::notify_running_init(&cfg) {
                println!("told the running occ-init to re-read users");
            }
            match r.manifest_error {
                Some(e) => fail(e),
                None => {
                    println!("{}", r.summary);
                    for w in r.warnings {
                        eprintln!("occ-init: warning: {w}");
                    }
                    0
                }
            }
        }
    }
}
