//! The `occ-init user …` subcommands: reading secrets, calling the user operations and
//! printing their results. Exit codes: 0 success, 1 failure (with a one-line reason).

use std::io::{self, Read, Write};
use std::path::PathBuf;

use crate::cli::{SecretArgs, UserCommand};
use crate::secret::{self, SecretString};
use crate::users::{Exposure, NewSecret, Persistence, Users, UsersError};

/// The effective config for user commands; a broken config file is reported but does not
/// block user management (defaults and environment are used instead).
fn config() -> crate::config::Config {
    crate::config::Config::load(None, &crate::config::Overrides::default()).unwrap_or_else(|e| {
        eprintln!("occ-init: warning: {e}; using defaults and environment");
        let env = std::env::vars().collect();
        crate::config::Config::build(None, &env, &Default::default()).unwrap_or_default()
    })
}

fn users(manifest: Option<PathBuf>) -> Users {
    let mut cfg = config();
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

fn report(result: Result<Persistence, UsersError>, done: &str) -> i32 {
    match result {
        Ok(p) => {
            println!("{done}");
            // Until the admin endpoint exists, tell a running PID 1 to re-read users, so a
            // gated opencode launches as soon as its first user exists.
            if crate::boot::notify_running_init(&config()) {
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
fn exposure() -> Exposure {
    let cfg = config();
    Exposure {
        address: cfg.exposure_address().to_string(),
        exposed: cfg.exposed(),
    }
}

pub fn user(cmd: UserCommand) -> i32 {
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
                users(manifest.users).add(&name, new, uid),
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
                    users(manifest.users).set_password(&name, new),
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
            users(manifest.users).remove(&name, force, &exposure()),
            &format!("removed {name} (account locked, home kept)"),
        ),
        UserCommand::Lock { name, manifest } => report(
            users(manifest.users).set_locked(&name, true),
            &format!("locked {name}"),
        ),
        UserCommand::Unlock { name, manifest } => report(
            users(manifest.users).set_locked(&name, false),
            &format!("unlocked {name}"),
        ),
        UserCommand::List { json, manifest } => match users(manifest.users).list() {
            Ok(rows) if json => match serde_json::to_string_pretty(&rows) {
                Ok(s) => {
                    println!("{s}");
                    0
                }
                Err(e) => fail(e),
            },
            Ok(rows) => {
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
            Err(e) => fail(e),
        },
        UserCommand::Verify {
            name,
            password_stdin,
            manifest,
        } => {
            let password = if password_stdin || !secret::stdin_is_tty() {
                secret::read_line(io::stdin().lock())
            } else {
                secret::prompt_hidden(&format!("Password for {name}: "))
            };
            let Ok(password) = password else {
                return fail(UsersError::AuthFailed);
            };
            match users(manifest.users).verify(&name, &password) {
                Ok(()) => {
                    println!("ok");
                    0
                }
                Err(e) => fail(e),
            }
        }
        UserCommand::Export { manifest } => match users(manifest.users).export() {
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
            match users(manifest.users).import(&text) {
                Ok((p, r)) => {
                    println!("imported {}; {}", file.display(), r.summary);
                    if let Some(note) = p.note() {
                        eprintln!("occ-init: {note}");
                    }
                    0
                }
                Err(e) => fail(e),
            }
        }
        UserCommand::Sync { manifest } => match users(manifest.users).sync() {
            Ok(r) => {
                println!("{}", r.summary);
                for w in r.warnings {
                    eprintln!("occ-init: warning: {w}");
                }
                0
            }
            Err(e) => fail(e),
        },
    }
}
