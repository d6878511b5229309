//! Command-line interface: the clap definitions of every subcommand and their help texts.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::init::{ForwardTo, RunOptions};

#[derive(Debug, Parser)]
#[command(
    name = "occ-init",
    version = crate::version::SHORT,
    long_version = crate::version::LONG,
    about = "Container init (PID 1) for opencode-cloud",
    long_about = "Container init (PID 1) for opencode-cloud.\n\n\
        Runs as the container's ENTRYPOINT: reaps every zombie, forwards signals to the \
        supervised command's process group, stops it gracefully (TERM, grace period, KILL) \
        and exits with its status (128+N when it died of signal N).\n\n\
        Without arguments (the image's ENTRYPOINT) it restores users from the manifest, \
        decides whether opencode may listen where it is asked to (the bind policy), then \
        launches opencode as the service user and keeps it alive — or keeps it gated until \
        a first user is added with `occ-init user add NAME`.\n\n\
        `occ-init run -- CMD [ARGS...]` supervises any command, like tini. A first argument \
        that is not a subcommand is run the same way, so `docker run IMAGE bash` works.",
    after_help = "Logging: OCC_LOG (or RUST_LOG) sets the level: error, warn, info (default), debug, trace.",
    disable_help_subcommand = true,
    propagate_version = true
)]
pub struct Cli {
    #[command(flatten)]
    pub boot: BootArgs,

    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Settings of the default start (no subcommand) and of `check`; see /etc/occ/init.toml.
#[derive(Debug, Args, Clone, Default)]
pub struct BootArgs {
    /// Config file (default /etc/occ/init.toml; env OCC_CONFIG).
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Address opencode listens on (default 0.0.0.0).
    #[arg(long, value_name = "ADDR")]
    pub host: Option<String>,
    /// Port opencode listens on (default 3000).
    #[arg(long, value_name = "PORT")]
    pub port: Option<u16>,
    /// Where opencode is reachable from outside (e.g. 127.0.0.1 when the host publishes locally).
    #[arg(long, value_name = "ADDR")]
    pub bind_address: Option<String>,
    /// Launch opencode even when it is exposed without any user.
    #[arg(long)]
    pub allow_unauthenticated_network: bool,
    /// Users manifest (default /var/lib/occ/users.toml).
    #[arg(long = "users-file", value_name = "PATH")]
    pub users_file: Option<PathBuf>,
    /// Stop grace period (default 10s).
    #[arg(long = "stop-grace", value_parser = crate::duration::parse, value_name = "DURATION")]
    pub stop_grace: Option<Duration>,
    /// Admin socket (default /run/occ/admin.sock).
    #[arg(long, value_name = "PATH")]
    pub admin_socket: Option<PathBuf>,
}

impl BootArgs {
    pub fn overrides(&self) -> crate::config::Overrides {
        crate::config::Overrides {
            host: self.host.clone(),
            port: self.port,
            bind_address: self.bind_address.clone(),
            allow_unauthenticated_network: self.allow_unauthenticated_network,
            users_file: self.users_file.clone(),
            stop_grace: self.stop_grace,
            admin_socket: self.admin_socket.clone(),
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Supervise CMD as init: reap zombies, forward signals, exit with its status.
    Run(RunArgs),
    /// Validate config and users manifest; print the effective settings (exit 0 or 1).
    Check(BootArgs),
    /// Show opencode's state, the Security section and the users manifest (from PID 1).
    Status {
        /// The same data as JSON, for tools.
        #[arg(long)]
        json: bool,
    },
    /// Exit 0 when PID 1 is up and opencode is ready, 1 otherwise (for HEALTHCHECK / probes).
    Health {
        /// Liveness only: exit 0 when PID 1 answers, even while opencode is gated or
        /// restarting (for Kubernetes livenessProbe, so a gated pod is not restart-looped).
        #[arg(long)]
        live: bool,
    },
    /// Restart opencode (TERM, grace period, KILL, start again).
    Restart,
    /// Manage login users (the manifest and the accounts in /etc).
    #[command(subcommand)]
    User(UserCommand),
    /// The users' own opencode instances (`instances = per-user`).
    #[command(subcommand)]
    Instance(InstanceCommand),
    /// Personal API tokens: a user's second credential for scripts, the TUI and the SDK
    /// (`Authorization: Bearer TOKEN`, or TOKEN as the user's HTTP Basic password).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Any other command line is supervised as with `run`.
    #[command(external_subcommand)]
    External(Vec<OsString>),
}

#[derive(Debug, Subcommand)]
pub enum InstanceCommand {
    /// List each user's opencode: state, pid, port, uptime, last request, memory.
    List {
        /// As JSON, for tools.
        #[arg(long)]
        json: bool,
    },
    /// Stop USER's opencode (TERM, grace, KILL); their data stays, and their next request
    /// starts it again.
    Stop {
        /// The login user.
        user: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// List tokens (of USER, or everyone's): id, user, name, created, last used, expiry.
    /// Never the tokens themselves: only their hashes are kept.
    List {
        /// Only this user's.
        user: Option<String>,
        /// As JSON, for tools.
        #[arg(long)]
        json: bool,
    },
    /// Make a token for USER and print it once (it cannot be shown again).
    Create {
        /// The login user it belongs to.
        user: String,
        /// What it is for (shown in lists).
        #[arg(long)]
        name: String,
        /// Lifetime: 90d (default), 12h, 365d, or never.
        #[arg(long, value_name = "DURATION")]
        expires: Option<String>,
    },
    /// Revoke the token with this id (from `token list`); it stops working within a second.
    Revoke {
        /// The token's id.
        id: String,
    },
}

/// Where forwarded signals go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ForwardArg {
    /// The child's whole process group (default): shells and their pipelines all get it.
    Group,
    /// Only the child process itself.
    Child,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// How long to wait after forwarding TERM/INT before killing everything that is left
    /// (10, 10s, 500ms, 2m). Default: stop_grace from config/OCC_STOP_GRACE, else 10s.
    #[arg(long, short = 'g', value_parser = crate::duration::parse, value_name = "DURATION")]
    pub grace: Option<Duration>,

    /// Send forwarded signals to the child's process group or to the child only.
    #[arg(long, value_enum, env = "OCC_FORWARD_TO", default_value_t = ForwardArg::Group, value_name = "TARGET")]
    pub forward_to: ForwardArg,

    /// Users manifest to restore before starting CMD (default: users_file from config /
    /// OCC_USERS_FILE, else /var/lib/occ/users.toml).
    #[arg(long, value_name = "PATH")]
    pub users: Option<PathBuf>,

    /// The command to supervise and its arguments.
    #[arg(required = true, num_args = 1.., last = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}

/// Where a user command's manifest is.
#[derive(Debug, Args, Clone)]
pub struct ManifestArg {
    /// Users manifest (default /var/lib/occ/users.toml).
    #[arg(long, env = "OCC_USERS_FILE", value_name = "PATH", global = true)]
    pub users: Option<PathBuf>,
}

/// How a new password is given.
#[derive(Debug, Args, Clone, Default)]
#[group(multiple = false)]
pub struct SecretArgs {
    /// Read the password from the first line of stdin.
    #[arg(long)]
    pub password_stdin: bool,
    /// Read a ready shadow hash ($y$..., $6$...) from the first line of stdin.
    #[arg(long)]
    pub hash_stdin: bool,
    /// Generate a strong random password and print it once.
    #[arg(long)]
    pub generate: bool,
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Add a login user (prompts twice on a terminal unless a --*-stdin or --generate is given).
    Add {
        name: String,
        #[command(flatten)]
        secret: SecretArgs,
        /// Fixed uid (1000-59999); default: the next free one.
        #[arg(long)]
        uid: Option<u32>,
        #[command(flatten)]
        manifest: ManifestArg,
    },
    /// Remove a user from the manifest; the account is locked, its home kept.
    Remove {
        name: String,
        /// Remove even the last user while opencode is exposed to the network.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        manifest: ManifestArg,
    },
    /// Change a user's password.
    Passwd {
        name: String,
        #[command(flatten)]
        secret: SecretArgs,
        #[command(flatten)]
        manifest: ManifestArg,
    },
    /// Lock a user (login refused, hash kept).
    Lock {
        name: String,
        #[command(flatten)]
        manifest: ManifestArg,
    },
    /// Unlock a user.
    Unlock {
        name: String,
        #[command(flatten)]
        manifest: ManifestArg,
    },
    /// List users: name, uid, locked, in manifest, present in /etc.
    List {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        manifest: ManifestArg,
    },
    /// Check a password through PAM (service `opencode`); exit 0 or 1.
    Verify {
        name: String,
        /// Read the password from stdin even on a terminal.
        #[arg(long)]
        password_stdin: bool,
        #[command(flatten)]
        manifest: ManifestArg,
    },
    /// Print a manifest of the current users (for a host-side backup).
    Export {
        #[command(flatten)]
        manifest: ManifestArg,
    },
    /// Replace the manifest with FILE (validated first; `-` for stdin) and restore it.
    Import {
        file: PathBuf,
        #[command(flatten)]
        manifest: ManifestArg,
    },
    /// Make /etc match the manifest now; exit 0 when it does.
    Sync {
        #[command(flatten)]
        manifest: ManifestArg,
    },
}

impl RunArgs {
    /// `run` arguments with defaults for a bare command line (`occ-init bash`).
    pub fn for_command(command: Vec<OsString>) -> RunArgs {
        let forward_to = match std::env::var("OCC_FORWARD_TO").as_deref() {
            Ok("child") => ForwardArg::Child,
            _ => ForwardArg::Group,
        };
        RunArgs {
            grace: None,
            forward_to,
            users: None,
            command,
        }
    }

    /// Options for the run loop: flags first, then the effective config.
    pub fn into_options(self, cfg: &crate::config::Config) -> RunOptions {
        let mut users = crate::boot::users_config(cfg);
        if let Some(path) = self.users {
            users.manifest = path;
        }
        RunOptions {
            command: self.command,
            grace: self.grace.unwrap_or(cfg.stop_grace),
            forward_to: match self.forward_to {
                ForwardArg::Group => ForwardTo::Group,
                ForwardArg::Child => ForwardTo::Child,
            },
            users,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_takes_command_after_double_dash() {
        let cli =
            Cli::try_parse_from(["occ-init", "run", "--grace", "3s", "--", "sleep", "1"]).unwrap();
        match cli.command {
            Some(Command::Run(args)) => {
                assert_eq!(args.grace, Some(Duration::from_secs(3)));
                assert_eq!(
                    args.command,
                    vec![OsString::from("sleep"), OsString::from("1")]
                );
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn run_without_command_is_a_usage_error() {
        let err = Cli::try_parse_from(["occ-init", "run"]).unwrap_err();
        assert!(err.use_stderr());
    }

    #[test]
    fn unknown_flag_is_a_usage_error() {
        let err = Cli::try_parse_from(["occ-init", "run", "--bogus", "--", "true"]).unwrap_err();
        assert!(err.to_string().contains("--bogus"));
    }

    #[test]
    fn user_secret_flags_are_exclusive() {
        let err = Cli::try_parse_from([
            "occ-init",
            "user",
            "add",
            "alice",
            "--generate",
            "--hash-stdin",
        ])
        .unwrap_err();
        assert!(err.use_stderr());
        let cli = Cli::try_parse_from([
            "occ-init",
            "user",
            "add",
            "alice",
            "--password-stdin",
            "--users",
            "/x.toml",
        ])
        .unwrap();
        match cli.command {
            Some(Command::User(UserCommand::Add {
                name,
                secret,
                manifest,
                ..
            })) => {
                assert_eq!(name, "alice");
                assert!(secret.password_stdin);
                assert_eq!(manifest.users, Some(PathBuf::from("/x.toml")));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn bare_command_is_external() {
        let cli = Cli::try_parse_from(["occ-init", "bash", "-l"]).unwrap();
        assert!(matches!(cli.command, Some(Command::External(v)) if v.len() == 2));
    }
}
