//! The proxy's certificate in PID 1's loop: loaded at boot, re-read on SIGHUP and whenever
//! the files change (checked every [`CHECK_EVERY`] by their metadata, so cert-manager's and
//! certbot's in-place and symlink replacements are seen), a self-signed one renewed before
//! it expires, and handed to each proxy PID 1 starts and to the running one on every change.
//! A broken pair is refused by name and the working one stays; with none, nothing is served.

use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::tls::{self, CertInfo, Pair, Source};

/// How often the files' metadata (and a self-signed certificate's expiry) are checked.
pub const CHECK_EVERY: Duration = Duration::from_secs(5);

type Stamp = Option<(u64, u64, i64, i64, u64)>;

/// TLS as PID 1 holds it.
pub struct TlsState {
    pub mode: crate::config::TlsMode,
    source: Source,
    /// The pair in use and what it is.
    current: Option<(Pair, CertInfo)>,
    /// The last problem: why there is no certificate, or why a new one was refused.
    pub error: Option<String>,
    /// The files' metadata when last read.
    stamps: Vec<Stamp>,
    next_check: Instant,
    /// PID 1's end of the running proxy's certificate socket.
    channel: Option<OwnedFd>,
}

impl TlsState {
    /// TLS per `cfg`, loaded now (`None` with `tls = off`). A failure is logged and kept:
    /// the proxy then serves nothing until a good pair arrives.
    pub fn new(cfg: &Config, now: Instant) -> Option<TlsState> {
        let source = cfg.tls_source(tls::hostname().as_deref())?;
        let mut state = TlsState {
            mode: cfg.tls,
            stamps: stamps(&source),
            source,
            current: None,
            error: None,
            next_check: now + CHECK_EVERY,
            channel: None,
        };
        state.reload("at boot");
        Some(state)
    }

    /// A new source from a reloaded configuration (same mode; the mode itself is kept
    /// until a restart).
    pub fn reconfigure(&mut self, cfg: &Config) {
        if let Some(source) = cfg.tls_source(tls::hostname().as_deref()) {
            if cfg.tls == self.mode {
                self.source = source;
            }
        }
        self.reload("on SIGHUP");
    }

    /// Is there a usable certificate?
    pub fn ready(&self) -> bool {
        self.current.is_some()
    }

    /// Re-read the pair; a good one replaces the current one (and goes to the proxy), a bad
    /// one is refused with the file and the problem named, and the current one stays.
    pub fn reload(&mut self, when: &str) {
        self.stamps = stamps(&self.source);
        let loaded = tls::load(&self.source, tls::now_unix());
        if matches!(self.source, Source::SelfSigned { .. }) {
            // It may have just been written.
            self.stamps = stamps(&self.source);
        }
        match loaded {
            Ok((pair, info)) => {
                let same = self
                    .current
                    .as_ref()
                    .is_some_and(|(_, c)| c.fingerprint_sha256 == info.fingerprint_sha256);
                let now = tls::now_unix();
                if info.expired(now) {
                    log::warn!(
                        "the TLS certificate for {} expired on {}: browsers will refuse it",
                        info.names.join(", "),
                        tls::rfc3339(info.not_after)
                    );
                } else if info.expiring(now) && self.mode == crate::config::TlsMode::Files {
                    log::warn!(
                        "the TLS certificate for {} expires on {}: renew it",
                        info.names.join(", "),
                        tls::rfc3339(info.not_after)
                    );
                }
                if !same {
                    log::info!(
                        "TLS certificate {when}: {} (SHA-256 {}, valid until {})",
                        info.names.join(", "),
                        info.fingerprint_sha256,
                        tls::rfc3339(info.not_after)
                    );
                }
                self.error = None;
                self.current = Some((pair, info));
                if !same {
                    self.send();
                }
            }
            Err(e) => {
                match &self.current {
                    Some((_, c)) => log::error!(
                        "refused the new TLS certificate {when}: {e}; still serving {} (SHA-256 {})",
                        c.names.join(", "),
                        c.fingerprint_sha256
                    ),
                    None => log::error!(
                        "no usable TLS certificate {when}: {e}; the proxy serves nothing until one is (HTTPS only, never plain HTTP)"
                    ),
                }
                self.error = Some(e.to_string());
            }
        }
    }

    /// Every [`CHECK_EVERY`]: re-read when a file changed, renew a self-signed certificate
    /// close to expiry.
    pub fn tick(&mut self, now: Instant) {
        if now < self.next_check {
            return;
        }
        self.next_check = now + CHECK_EVERY;
        let changed = stamps(&self.source) != self.stamps;
        let renew = matches!(self.source, Source::SelfSigned { .. })
            && self
                .current
                .as_ref()
                .is_some_and(|(_, c)| c.expiring(tls::now_unix()));
        if changed || renew {
            self.reload(if renew {
                "renewed"
            } else {
                "after the files changed"
            });
        }
    }

    /// When the next check is due.
    pub fn deadline(&self) -> Instant {
        self.next_check
    }

    /// A certificate socket for a proxy about to start: PID 1 keeps its end (the current
    /// pair goes out on it at once, queued until the proxy reads), the proxy gets the
    /// returned one.
    pub fn channel_for_proxy(&mut self) -> std::io::Result<OwnedFd> {
        let (ours, theirs) = tls::channel()?;
        self.channel = Some(ours);
        self.send();
        Ok(theirs)
    }

    /// Send the current pair to the running proxy (if both exist).
    fn send(&mut self) {
        if let (Some(ch), Some((pair, _))) = (&self.channel, &self.current) {
            if let Err(e) = tls::send(ch, pair) {
                log::warn!("cannot hand the certificate to the proxy: {e}");
            }
        }
    }

    /// What status shows.
    pub fn status(&self) -> crate::status::TlsStatus {
        let now = tls::now_unix();
        let info = self.current.as_ref().map(|(_, i)| i);
        crate::status::TlsStatus {
            mode: self.mode.as_str().to_string(),
            names: info.map(|i| i.names.clone()).unwrap_or_default(),
            subject: info.map(|i| i.subject.clone()),
            fingerprint_sha256: info.map(|i| i.fingerprint_sha256.clone()),
            not_after: info.map(|i| tls::rfc3339(i.not_after)),
            expired: info.is_some_and(|i| i.expired(now)),
            expiring: info.is_some_and(|i| i.expiring(now)),
            source: Some(match &self.source {
                Source::Files { cert, key } => format!("{} + {}", cert.display(), key.display()),
                Source::SelfSigned { dir, .. } => dir.display().to_string(),
            }),
            serving: self.current.is_some(),
            error: self.error.clone(),
        }
    }
}

/// The metadata of the files a source reads.
fn stamps(source: &Source) -> Vec<Stamp> {
    match source {
        Source::Files { cert, key } => vec![tls::stamp(cert), tls::stamp(key)],
        Source::SelfSigned { dir, .. } => vec![
            tls::stamp(&dir.join(tls::SELF_CERT)),
            tls::stamp(&dir.join(tls::SELF_KEY)),
        ],
    }
}
