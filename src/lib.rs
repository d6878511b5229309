//! occ-init: a container init (PID 1) for opencode-cloud.
//!
//! `run()` parses the command line and dispatches; every module below owns one concern.
//! Decisions are pure functions over data (unit-tested); effects live in their own modules.

pub mod admin;
pub mod boot;
pub mod cli;
pub mod commands;
pub mod config;
pub mod duration;
pub mod init;
pub mod instances;
pub mod listen;
pub mod logging;
pub mod manifest;
pub mod oidc;
pub mod oidc_url;
pub mod policy;
pub mod proxy;
pub mod ratelimit;
pub mod secret;
pub mod spawn;
pub mod status;
pub mod supervise;
pub mod tls;
pub mod tokens;
pub mod users;
pub mod version;

use clap::Parser;

/// Exit code for usage and configuration errors (clap uses it as well).
pub const EXIT_USAGE: i32 = 2;

/// Parse the command line, run the chosen subcommand and return the process exit code.
pub fn run() -> i32 {
    // Block the asynchronous signals before anything else, in particular before any thread
    // exists: threads inherit the mask, and signalfd only sees signals blocked in every thread.
    let signals = match init::signals::block_async_signals() {
        Ok(blocked) => blocked,
        Err(e) => {
            eprintln!("occ-init: cannot block signals: {e}");
            return 1;
        }
    };
    // PID 1's user helper process (not a user command: no help, no clap).
    if std::env::args_os().nth(1).as_deref()
        == Some(std::ffi::OsStr::new(users::worker::SUBCOMMAND))
    {
        init::signals::unblock(&signals);
        logging::init();
        return users::worker::main();
    }
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_USAGE } else { 0 };
            let _ = e.print();
            return code;
        }
    };
    logging::init();
    // Only the init modes keep the signals blocked: Ctrl-C must work in `occ-init user add`.
    let init_mode = matches!(
        cli.command,
        None | Some(cli::Command::Run(_)) | Some(cli::Command::External(_))
    );
    if !init_mode {
        init::signals::unblock(&signals);
    }
    match cli.command {
        Some(cli::Command::Run(args)) => match config::Config::load(None, &Default::default()) {
            Ok(cfg) => init::run_command(args.into_options(&cfg), signals),
            Err(e) => {
                log::error!("{e}");
                EXIT_USAGE
            }
        },
        Some(cli::Command::User(cmd)) => commands::user(cmd),
        Some(cli::Command::Status { json }) => commands::status(json),
        Some(cli::Command::Health { live }) => commands::health(live),
        Some(cli::Command::Restart) => commands::restart(),
        Some(cli::Command::Instance(cmd)) => commands::instance(cmd),
        Some(cli::Command::Token(cmd)) => commands::token(cmd),
        Some(cli::Command::Check(args)) => boot::check(args.config.as_deref(), &args.overrides()),
        Some(cli::Command::External(argv)) => match config::Config::load(None, &Default::default())
        {
            Ok(cfg) => {
                init::run_command(cli::RunArgs::for_command(argv).into_options(&cfg), signals)
            }
            Err(e) => {
                log::error!("{e}");
                EXIT_USAGE
            }
        },
        None => boot::start(cli.boot.config.clone(), cli.boot.overrides(), signals),
    }
}
