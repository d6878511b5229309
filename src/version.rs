//! Build information (version, git commit, build date, rustc) for `occ-init --version`.

shadow_rs::shadow!(build);

/// Short version line, e.g. `0.1.0`.
pub const SHORT: &str = build::PKG_VERSION;

/// The long `--version` text: version, commit, build date and compiler, one per line.
pub const LONG: &str = shadow_rs::formatcp!(
    "{}\ncommit:     {}{}\nbuild date: {}\nrustc:      {}\ntarget:     {}",
    build::PKG_VERSION,
    build::SHORT_COMMIT,
    if build::GIT_CLEAN { "" } else { " (modified)" },
    build::BUILD_TIME,
    build::RUST_VERSION,
    build::BUILD_TARGET,
);
