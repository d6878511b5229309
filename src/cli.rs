//! Command-line interface: the clap definitions of every subcommand and their help texts.

use std::ffi::OsString;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::init::{ForwardTo, RunOptions};

/// Default stop grace period: TERM, then this long, then KILL.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(10);

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
        `occ-init run -- CMD [ARGS...]` supervises any command, like tini. A first argument \
        that is not a subcommand is run the same way, so `docker run IMAGE bash` works.",
    after_help = "Logging: OCC_LOG (or RUST_LOG) sets the level: error, warn, info (default), debug, trace.",
    disable_help_subcommand = true,
    propagate_version = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Supervise CMD as init: reap zombies, forward signals, exit with its status.
    Run(RunArgs),
    /// Any other command line is supervised as with `run`.
    #[command(external_subcommand)]
    External(Vec<OsString>),
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
    /// How long to wait after forwarding TERM/INT before killing everything that is left.
    /// Accepts 10, 10s, 500ms, 2m.
    #[arg(long, short = 'g', env = "OCC_STOP_GRACE", default_value = "10s",
          value_parser = crate::duration::parse, value_name = "DURATION")]
    pub grace: Duration,

    /// Send forwarded signals to the child's process group or to the child only.
    #[arg(long, value_enum, env = "OCC_FORWARD_TO", default_value_t = ForwardArg::Group, value_name = "TARGET")]
    pub forward_to: ForwardArg,

    /// The command to supervise and its arguments.
    #[arg(required = true, num_args = 1.., last = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}

impl RunArgs {
    /// `run` arguments with defaults for a bare command line (`occ-init bash`).
    pub fn for_command(command: Vec<OsString>) -> RunArgs {
        let grace = std::env::var("OCC_STOP_GRACE")
            .ok()
            .and_then(|g| crate::duration::parse(&g).ok())
            .unwrap_or(DEFAULT_GRACE);
        RunArgs {
            grace,
            forward_to: ForwardArg::Group,
            command,
        }
    }

    pub fn into_options(self) -> RunOptions {
        RunOptions {
            command: self.command,
            grace: self.grace,
            forward_to: match self.forward_to {
                ForwardArg::Group => ForwardTo::Group,
                ForwardArg::Child => ForwardTo::Child,
            },
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
                assert_eq!(args.grace, Duration::from_secs(3));
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
    fn bare_command_is_external() {
        let cli = Cli::try_parse_from(["occ-init", "bash", "-l"]).unwrap();
        assert!(matches!(cli.command, Some(Command::External(v)) if v.len() == 2));
    }
}
