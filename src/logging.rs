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
        // rustls warns about what any client can send (a renegotiation attempt): the proxy
        // answers it with an alert; it is no operator's concern.
        .filter_module("rustls", log::LevelFilter::Error)
        .parse_filters(&filter)
        .target(env_logger::Target::Pipe(Box::new(Stderr)))
        .write_style(env_logger::WriteStyle::Never)
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

/// Standard error for log lines: plain `write(2)`, and a line that cannot be written (stderr
/// closed or broken) is dropped instead of becoming an error anywhere. (The SIGPIPE such a
/// write raises in PID 1 is discarded by the signal reader, never forwarded.)
struct Stderr;

impl Write for Stderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // SAFETY: write(2) from a valid buffer of the given length to fd 2.
        let n = unsafe { libc::write(libc::STDERR_FILENO, buf.as_ptr().cast(), buf.len()) };
        if n > 0 {
            return Ok(n as usize);
        }
        if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            return Err(std::io::ErrorKind::Interrupted.into());
        }
        // Closed or broken: drop the rest of this line.
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
