//! Logging setup: `log` + `env_logger` to stderr, one line per event, level from `OCC_LOG`
//! (or `RUST_LOG`), default `info`.

use std::io::Write;

/// Install the logger. Safe to call more than once (later calls do nothing).
pub fn init() {
    init_named("occ-init");
}

/// Install the logger, lines prefixed with `program`.
pub fn init_named(program: &'static str) {
    let filter = std::env::var("OCC_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".to_string());
    let _ = env_logger::Builder::new()
        .parse_filters(&filter)
        .target(env_logger::Target::Stderr)
        .format(move |buf, record| {
            writeln!(
                buf,
                "{program} {}: {}",
                record.level().as_str().to_lowercase(),
                record.args()
            )
        })
        .try_init();
}
