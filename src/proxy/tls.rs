//! The proxy's side of TLS: the certificate PID 1 hands over (a sealed memfd on the
//! inherited socket, see [`crate::tls::send`]) is swapped in for new handshakes without
//! touching open connections; a connection's first byte tells a TLS handshake from plain
//! HTTP, which only ever gets a redirect to https (or, with no certificate yet, a 503 that
//! says why), never opencode.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, RwLock};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// The first byte of a TLS record carrying a handshake (a ClientHello).
pub const HANDSHAKE: u8 = 0x16;

/// The certificate in use (none until PID 1 sends a good one).
#[derive(Debug, Default)]
pub struct Certs {
    current: RwLock<Option<Arc<CertifiedKey>>>,
}

impl Certs {
    /// Is there a certificate to serve?
    pub fn ready(&self) -> bool {
        self.current.read().map(|c| c.is_some()).unwrap_or(false)
    }

    fn set(&self, ck: CertifiedKey) {
        if let Ok(mut c) = self.current.write() {
            *c = Some(Arc::new(ck));
        }
    }
}

impl ResolvesServerCert for Certs {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok()?.clone()
    }
}

/// rustls (ring) for the public port: TLS 1.3 and 1.2, ALPN `http/1.1`, stateless session
/// tickets, certificates from `certs`.
pub fn server_config(certs: Arc<Certs>) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    // ring, as chosen for this project (pure Rust to build; aws-lc-rs needs cmake and a C
    // toolchain). rustls 0.23.48 marks it deprecated only for its lack of post-quantum
    // key exchange.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(certs);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.ticketer = rustls::crypto::ring::Ticketer::new()?;
    Ok(Arc::new(config))
}

/// Turn a handed-over pair into a signing key (the buffers are wiped when dropped).
fn certified(pair: &crate::tls::Pair) -> Result<(CertifiedKey, String), String> {
    let chain = crate::tls::parse_chain(&pair.cert)?;
    let info = crate::tls::describe(&chain[0])?;
    let key = crate::tls::parse_key(&pair.key)?;
    let ck = crate::tls::certified_key(chain, &key)?;
    Ok((
        ck,
        format!(
            "{} (SHA-256 {}, valid until {})",
            info.names.join(", "),
            info.fingerprint_sha256,
            crate::tls::rfc3339(info.not_after)
        ),
    ))
}

/// Receive certificates from PID 1 on `channel` until it closes, each replacing the last
/// (a thread of its own: the reads block).
pub fn receive(channel: OwnedFd, certs: Arc<Certs>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("tls-certs".into())
        .spawn(move || {
            while let Some(fd) = next_handover(&channel) {
                let pair = match crate::tls::read_handed(fd) {
                    Ok(p) => p,
                    Err(e) => {
                        log::error!("cannot read the certificate occ-init sent: {e}");
                        continue;
                    }
                };
                match certified(&pair) {
                    Ok((ck, what)) => {
                        let first = !certs.ready();
                        certs.set(ck);
                        log::info!(
                            "{} certificate for {what}",
                            if first {
                                "serving HTTPS with the"
                            } else {
                                "now serving the new"
                            }
                        );
                    }
                    Err(e) => log::error!("refused the certificate occ-init sent: {e}"),
                }
            }
            log::debug!("occ-init closed the certificate channel");
        })
        .map(|_| ())
}

/// Block for the next hand-over: the memfd attached to a message, `None` once PID 1's end
/// is closed.
fn next_handover(channel: &OwnedFd) -> Option<OwnedFd> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    loop {
        let mut buf = [0u8; 16];
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        let mut space = nix::cmsg_space!([std::os::fd::RawFd; 4]);
        let msg = match recvmsg::<()>(
            channel.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(m) => m,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                log::error!("the certificate channel failed: {e}");
                return None;
            }
        };
        let mut got = Vec::new();
        if let Ok(cmsgs) = msg.cmsgs() {
            for c in cmsgs {
                if let ControlMessageOwned::ScmRights(fds) = c {
                    // SAFETY: the kernel just installed these descriptors for us.
                    got.extend(
                        fds.into_iter()
                            .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                    );
                }
            }
        }
        if msg.bytes == 0 && got.is_empty() {
            return None;
        }
        // One descriptor per message; any extra ones are closed here.
        if let Some(fd) = got.into_iter().next() {
            return Some(fd);
        }
    }
}

/// Where a plain-HTTP request to the TLS port is sent: the same host and path over https.
/// `None` without a usable `Host` (then 400).
pub fn https_location(host: Option<&str>, path_and_query: &str) -> Option<String> {
    let host = host?.trim();
    let valid = !host.is_empty()
        && host.len() <= 255
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-:[]_".contains(c));
    if !valid {
        return None;
    }
    let path = if path_and_query.starts_with('/') {
        path_and_query
    } else {
        "/"
    };
    Some(format!("https://{host}{path}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_is_sent_to_the_same_place_over_https() {
        assert_eq!(
            https_location(Some("localhost:3000"), "/session?x=1").as_deref(),
            Some("https://localhost:3000/session?x=1")
        );
        assert_eq!(
            https_location(Some("[::1]:8443"), "/").as_deref(),
            Some("https://[::1]:8443/")
        );
        assert_eq!(https_location(None, "/"), None);
        assert_eq!(https_location(Some(""), "/"), None);
        // Nothing that could break out of the header or the host.
        assert_eq!(https_location(Some("evil.com/x"), "/"), None);
        assert_eq!(https_location(Some("a b"), "/"), None);
        assert_eq!(https_location(Some("a@b"), "/"), None);
        assert_eq!(
            https_location(Some("h"), "*").as_deref(),
            Some("https://h/")
        );
    }

    #[test]
    fn a_handed_pair_becomes_the_served_certificate() {
        let pair = crate::tls::generate(&["localhost".into()], crate::tls::now_unix()).unwrap();
        let (ours, theirs) = crate::tls::channel().unwrap();
        let certs = Arc::new(Certs::default());
        assert!(!certs.ready());
        receive(theirs, certs.clone()).unwrap();
        crate::tls::send(&ours, &pair).unwrap();
        let t = std::time::Instant::now();
        while !certs.ready() && t.elapsed() < std::time::Duration::from_secs(5) {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(certs.ready());
        assert!(server_config(certs).is_ok());
    }
}
