//! TLS at the front door, PID 1's side: the certificate and key (read from files, or a
//! self-signed pair generated once and kept root-only under the users volume), checked and
//! described for `status`, and handed to the proxy as a sealed memfd over an inherited
//! socket, so the proxy's own user never reads the key files. The proxy's side is
//! [`crate::proxy::tls`].

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Serialize;
use sha2::{Digest, Sha256};
use thiserror::Error;
use zeroize::Zeroizing;

/// Largest certificate or key file read (a chain of a dozen certificates fits many times).
pub const MAX_FILE: u64 = 1024 * 1024;
/// A self-signed certificate is valid this long ...
pub const SELF_SIGNED_DAYS: i64 = 365;
/// ... and renewed when less than this is left (also when a file pair is this close to
/// expiry, status warns).
pub const RENEW_BEFORE_DAYS: i64 = 30;
/// File names of the self-signed pair inside `tls_dir`.
pub const SELF_CERT: &str = "cert.pem";
pub const SELF_KEY: &str = "key.pem";
const DAY: i64 = 24 * 3600;

/// What went wrong with a certificate or key; each names the file and the problem.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum TlsError {
    #[error("{path}: {why}")]
    File { path: String, why: String },
    #[error("{cert} and {key}: {why}")]
    Pair {
        cert: String,
        key: String,
        why: String,
    },
    #[error("cannot make a self-signed certificate in {dir}: {why}")]
    Generate { dir: String, why: String },
}

/// A certificate chain and its private key, both PEM; the key is wiped when dropped.
pub struct Pair {
    pub cert: Vec<u8>,
    pub key: Zeroizing<Vec<u8>>,
}

/// What status shows of a certificate (nothing secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertInfo {
    /// The leaf's subject alternative names (DNS names and IP addresses), else its CN.
    pub names: Vec<String>,
    pub subject: String,
    /// Validity, as Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
    /// SHA-256 of the leaf certificate (DER), upper-case hex pairs joined by `:`, as
    /// browsers show it.
    pub fingerprint_sha256: String,
}

impl CertInfo {
    /// Expired at `now` (Unix seconds)?
    pub fn expired(&self, now: i64) -> bool {
        now > self.not_after
    }

    /// Less than [`RENEW_BEFORE_DAYS`] left at `now`?
    pub fn expiring(&self, now: i64) -> bool {
        self.not_after - now < RENEW_BEFORE_DAYS * DAY
    }

    /// Does the certificate name every one of `names` (case-insensitive)?
    pub fn covers(&self, names: &[String]) -> bool {
        names
            .iter()
            .all(|n| self.names.iter().any(|m| m.eq_ignore_ascii_case(n)))
    }
}

/// `not_after` as an RFC 3339 UTC date (`2027-12-07T06:00:00Z`).
pub fn rfc3339(unix: i64) -> String {
    let days = unix.div_euclid(DAY);
    let secs = unix.rem_euclid(DAY);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// The current time as Unix seconds.
pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// SHA-256 of `der` as `AB:CD:…`.
pub fn fingerprint(der: &[u8]) -> String {
    Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The names a self-signed certificate gets by default: the container's host name,
/// `localhost`, `127.0.0.1` and `::1`.
pub fn default_names(hostname: Option<&str>) -> Vec<String> {
    let mut v: Vec<String> = hostname
        .map(str::trim)
        .filter(|h| !h.is_empty() && *h != "localhost")
        .map(|h| vec![h.to_string()])
        .unwrap_or_default();
    v.extend(["localhost", "127.0.0.1", "::1"].map(String::from));
    v
}

/// This machine's host name (`/proc/sys/kernel/hostname`, the container's).
pub fn hostname() -> Option<String> {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
}

/// Read one certificate or key file: it must be a regular file (symlinks to one are fine:
/// Kubernetes secrets and certbot use them) of at most [`MAX_FILE`] bytes.
pub fn read_file(path: &Path) -> Result<Zeroizing<Vec<u8>>, TlsError> {
    let err = |why: String| TlsError::File {
        path: path.display().to_string(),
        why,
    };
    let f = std::fs::File::open(path).map_err(|e| err(e.to_string()))?;
    let meta = f.metadata().map_err(|e| err(e.to_string()))?;
    if meta.is_dir() {
        return Err(err("is a directory, not a file".into()));
    }
    if !meta.is_file() {
        return Err(err("is not a regular file".into()));
    }
    if meta.len() > MAX_FILE {
        return Err(err(format!(
            "is {} bytes; at most {MAX_FILE} are read",
            meta.len()
        )));
    }
    let mut buf = Zeroizing::new(Vec::with_capacity(meta.len() as usize));
    // A file that grows while read is cut at the limit, and refused below.
    f.take(MAX_FILE + 1)
        .read_to_end(&mut buf)
        .map_err(|e| err(e.to_string()))?;
    if buf.len() as u64 > MAX_FILE {
        return Err(err(format!("is larger than {MAX_FILE} bytes")));
    }
    Ok(buf)
}

/// Read a certificate file and a key file.
pub fn read_pair(cert: &Path, key: &Path) -> Result<Pair, TlsError> {
    let c = read_file(cert)?;
    let k = read_file(key)?;
    Ok(Pair {
        cert: c.to_vec(),
        key: k,
    })
}

/// The certificates of a PEM chain, leaf first.
pub fn parse_chain(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("not a PEM certificate chain ({e})"))?;
    if certs.is_empty() {
        return Err("holds no certificate (a PEM block 'BEGIN CERTIFICATE')".into());
    }
    Ok(certs)
}

/// The private key of a PEM file (PKCS#8, RSA or EC).
pub fn parse_key(pem: &[u8]) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => {
            "holds no private key (a PEM block 'BEGIN PRIVATE KEY', 'BEGIN RSA PRIVATE KEY' or 'BEGIN EC PRIVATE KEY')".to_string()
        }
        e => format!("not a PEM private key ({e})"),
    })
}

/// The key, ready to sign handshakes with (ring).
pub fn certified_key(
    chain: Vec<CertificateDer<'static>>,
    key: &PrivateKeyDer<'static>,
) -> Result<rustls::sign::CertifiedKey, String> {
    let signing = rustls::crypto::ring::sign::any_supported_type(key).map_err(|e| {
        format!("the key is not usable ({e}); use an ECDSA P-256/P-384, Ed25519 or RSA key")
    })?;
    let ck = rustls::sign::CertifiedKey::new(chain, signing);
    ck.keys_match().map_err(|_| {
        "the key does not belong to the certificate (their public keys differ)".to_string()
    })?;
    Ok(ck)
}

/// Check a pair (the chain parses, the key parses and belongs to the leaf) and describe
/// its leaf. `cert_name` and `key_name` name the files in errors.
pub fn check(pair: &Pair, cert_name: &str, key_name: &str) -> Result<CertInfo, TlsError> {
    let file = |path: &str, why: String| TlsError::File {
        path: path.to_string(),
        why,
    };
    let chain = parse_chain(&pair.cert).map_err(|w| file(cert_name, w))?;
    let key = parse_key(&pair.key).map_err(|w| file(key_name, w))?;
    let info = describe(&chain[0]).map_err(|w| file(cert_name, w))?;
    certified_key(chain, &key).map_err(|why| TlsError::Pair {
        cert: cert_name.to_string(),
        key: key_name.to_string(),
        why,
    })?;
    Ok(info)
}

/// Names, subject, validity and fingerprint of one certificate.
pub fn describe(der: &CertificateDer<'_>) -> Result<CertInfo, String> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|e| format!("the certificate does not parse ({e})"))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                GeneralName::DNSName(d) => names.push(d.to_string()),
                GeneralName::IPAddress(ip) => match ip.len() {
                    4 => names.push(
                        std::net::Ipv4Addr::from(<[u8; 4]>::try_from(*ip).unwrap_or_default())
                            .to_string(),
                    ),
                    16 => names.push(
                        std::net::Ipv6Addr::from(<[u8; 16]>::try_from(*ip).unwrap_or_default())
                            .to_string(),
                    ),
                    _ => {}
                },
                _ => {}
            }
        }
    }
    let subject = cert.subject().to_string();
    if names.is_empty() {
        if let Some(cn) = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|c| c.as_str().ok())
        {
            names.push(cn.to_string());
        }
    }
    Ok(CertInfo {
        names,
        subject,
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
        fingerprint_sha256: fingerprint(der.as_ref()),
    })
}

/// Make a new self-signed pair (ECDSA P-256) for `names`, valid from an hour before `now`
/// for [`SELF_SIGNED_DAYS`].
pub fn generate(names: &[String], now: i64) -> Result<Pair, String> {
    let mut params =
        rcgen::CertificateParams::new(names.to_vec()).map_err(|e| format!("names: {e}"))?;
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(
        rcgen::DnType::CommonName,
        format!(
            "occ-init self-signed ({})",
            names.first().map_or("localhost", String::as_str)
        ),
    );
    params.distinguished_name = dn;
    let at = |t: i64| {
        time::OffsetDateTime::from_unix_timestamp(t).map_err(|e| format!("the clock: {e}"))
    };
    params.not_before = at(now - 3600)?;
    params.not_after = at(now + SELF_SIGNED_DAYS * DAY)?;
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| format!("key: {e}"))?;
    let cert = params
        .self_signed(&key)
        .map_err(|e| format!("certificate: {e}"))?;
    Ok(Pair {
        cert: cert.pem().into_bytes(),
        key: Zeroizing::new(key.serialize_pem().into_bytes()),
    })
}

/// The self-signed pair kept in `dir`: the stored one while it is good (it parses, is not
/// within [`RENEW_BEFORE_DAYS`] of expiry and, when `names` were set explicitly, names them
/// all), else a new one, written there root-only first. `true` when it was made now.
pub fn self_signed(
    dir: &Path,
    names: &[String],
    explicit: bool,
    now: i64,
) -> Result<(Pair, CertInfo, bool), TlsError> {
    let (cert_path, key_path) = (dir.join(SELF_CERT), dir.join(SELF_KEY));
    let stored = read_pair(&cert_path, &key_path).and_then(|p| {
        let info = check(
            &p,
            &cert_path.display().to_string(),
            &key_path.display().to_string(),
        )?;
        Ok((p, info))
    });
    match stored {
        Ok((p, info)) if !info.expiring(now) && (!explicit || info.covers(names)) => {
            return Ok((p, info, false))
        }
        Ok(_) => {}
        Err(TlsError::File { ref why, .. }) if why.contains("No such file") => {}
        Err(e) => log::warn!("replacing the stored self-signed certificate: {e}"),
    }
    let gen_err = |why: String| TlsError::Generate {
        dir: dir.display().to_string(),
        why,
    };
    make_private_dir(dir).map_err(|e| gen_err(e.to_string()))?;
    let pair = generate(names, now).map_err(gen_err)?;
    let info = check(&pair, SELF_CERT, SELF_KEY)?;
    crate::users::store::atomic_write(&key_path, &pair.key)
        .map_err(|e| gen_err(format!("{}: {e}", key_path.display())))?;
    crate::users::store::atomic_write(&cert_path, &pair.cert)
        .map_err(|e| gen_err(format!("{}: {e}", cert_path.display())))?;
    Ok((pair, info, true))
}

/// Create `dir` (and parents) root-only; an existing one is put to 0700 only when it is
/// ours and not a symlink.
fn make_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let meta = std::fs::symlink_metadata(dir)?;
    if !meta.is_dir() {
        return Err(std::io::Error::other("is not a directory"));
    }
    if meta.uid() == nix::unistd::geteuid().as_raw() && meta.mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// What identifies the current content of a file without reading it (following symlinks):
/// a replacement in place, a rename over it or a swapped symlink all change it.
pub fn stamp(path: &Path) -> Option<(u64, u64, i64, i64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino(), m.mtime(), m.mtime_nsec(), m.size()))
}

/// Where the pair comes from, and the files to watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Files {
        cert: PathBuf,
        key: PathBuf,
    },
    SelfSigned {
        dir: PathBuf,
        names: Vec<String>,
        explicit: bool,
    },
}

/// Load the pair `source` names (making a self-signed one when needed).
pub fn load(source: &Source, now: i64) -> Result<(Pair, CertInfo), TlsError> {
    match source {
        Source::Files { cert, key } => {
            let pair = read_pair(cert, key)?;
            let info = check(
                &pair,
                &cert.display().to_string(),
                &key.display().to_string(),
            )?;
            Ok((pair, info))
        }
        Source::SelfSigned {
            dir,
            names,
            explicit,
        } => {
            let (pair, info, made) = self_signed(dir, names, *explicit, now)?;
            if made {
                log::info!(
                    "made a self-signed certificate for {} (SHA-256 {}), kept in {}",
                    info.names.join(", "),
                    info.fingerprint_sha256,
                    dir.display()
                );
            }
            Ok((pair, info))
        }
    }
}

/// A socket pair for handing certificates to the proxy: PID 1 keeps the first end, the
/// proxy inherits the second (`--tls-fd`).
pub fn channel() -> std::io::Result<(OwnedFd, OwnedFd)> {
    use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
    socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(std::io::Error::from)
}

/// Hand `pair` to the proxy: the two PEM texts (chain, then key) in a sealed memfd, sent as
/// one message with the descriptor attached; never blocks.
pub fn send(to: &impl AsFd, pair: &Pair) -> std::io::Result<()> {
    use nix::sys::memfd::{memfd_create, MFdFlags};
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let fd = memfd_create(
        "occ-tls",
        MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
    )?;
    let mut file = std::fs::File::from(fd);
    // Length-prefixed: the chain, then the key.
    file.write_all(&(pair.cert.len() as u64).to_le_bytes())?;
    file.write_all(&pair.cert)?;
    file.write_all(&pair.key)?;
    // SAFETY: fcntl on our own memfd with plain integer arguments.
    unsafe {
        libc::fcntl(
            file.as_raw_fd(),
            libc::F_ADD_SEALS,
            libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE,
        );
    }
    let fds = [file.as_raw_fd()];
    sendmsg::<()>(
        to.as_fd().as_raw_fd(),
        &[std::io::IoSlice::new(b"pair")],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
        None,
    )?;
    Ok(())
}

/// Read a pair handed over by [`send`] from the memfd `fd` (the proxy's side).
pub fn read_handed(fd: OwnedFd) -> std::io::Result<Pair> {
    use std::io::{Seek, SeekFrom};
    let mut file = std::fs::File::from(fd);
    file.seek(SeekFrom::Start(0))?;
    let mut all = Zeroizing::new(Vec::new());
    file.take(4 * MAX_FILE).read_to_end(&mut all)?;
    let bad = || {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "not a certificate hand-over",
        )
    };
    let len: [u8; 8] = all
        .get(..8)
        .ok_or_else(bad)?
        .try_into()
        .map_err(|_| bad())?;
    let len = usize::try_from(u64::from_le_bytes(len)).map_err(|_| bad())?;
    let cert = all
        .get(8..8usize.checked_add(len).ok_or_else(bad)?)
        .ok_or_else(bad)?;
    let key = all.get(8 + len..).ok_or_else(bad)?;
    Ok(Pair {
        cert: cert.to_vec(),
        key: Zeroizing::new(key.to_vec()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<String> {
        default_names(Some("box1"))
    }

    #[test]
    fn default_names_lead_with_the_host_name() {
        assert_eq!(names(), ["box1", "localhost", "127.0.0.1", "::1"]);
        assert_eq!(
            default_names(Some("localhost")),
            ["localhost", "127.0.0.1", "::1"]
        );
        assert_eq!(default_names(None).len(), 3);
    }

    #[test]
    fn a_generated_pair_checks_out_and_names_its_names() {
        let now = now_unix();
        let p = generate(&names(), now).unwrap();
        let info = check(&p, "c", "k").unwrap();
        assert!(info.covers(&names()), "{info:?}");
        assert!(info.names.contains(&"::1".to_string()), "{info:?}");
        assert!(!info.expiring(now) && !info.expired(now));
        assert!(info.expiring(now + (SELF_SIGNED_DAYS - 10) * DAY));
        assert!(info.expired(now + (SELF_SIGNED_DAYS + 1) * DAY));
        assert_eq!(info.fingerprint_sha256.len(), 32 * 3 - 1);
        assert!(!info.covers(&["other.example".to_string()]));
    }

    #[test]
    fn a_key_of_another_pair_is_refused_by_name() {
        let now = now_unix();
        let a = generate(&names(), now).unwrap();
        let b = generate(&names(), now).unwrap();
        let mixed = Pair {
            cert: a.cert.clone(),
            key: b.key.clone(),
        };
        let e = check(&mixed, "/x/tls.crt", "/x/tls.key")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/x/tls.crt and /x/tls.key") && e.contains("does not belong"),
            "{e}"
        );
    }

    #[test]
    fn garbage_is_refused_with_the_file_named() {
        let now = now_unix();
        let good = generate(&names(), now).unwrap();
        let garbage = Pair {
            cert: b"hello".to_vec(),
            key: good.key.clone(),
        };
        let e = check(&garbage, "/c.pem", "/k.pem").unwrap_err().to_string();
        assert!(e.starts_with("/c.pem: holds no certificate"), "{e}");
        let no_key = Pair {
            cert: good.cert.clone(),
            key: Zeroizing::new(good.cert.clone()),
        };
        let e = check(&no_key, "/c.pem", "/k.pem").unwrap_err().to_string();
        assert!(e.starts_with("/k.pem: holds no private key"), "{e}");
        let broken = Pair {
            cert: b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".to_vec(),
            key: good.key.clone(),
        };
        let e = check(&broken, "/c.pem", "/k.pem").unwrap_err().to_string();
        assert!(e.starts_with("/c.pem: "), "{e}");
    }

    #[test]
    fn files_that_are_not_small_regular_files_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let e = read_file(d.path()).unwrap_err().to_string();
        assert!(e.contains("is a directory"), "{e}");
        let big = d.path().join("big.pem");
        std::fs::write(&big, vec![b'A'; (MAX_FILE + 1) as usize]).unwrap();
        let e = read_file(&big).unwrap_err().to_string();
        assert!(e.contains("at most"), "{e}");
        let e = read_file(&d.path().join("missing"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing"), "{e}");
    }

    #[test]
    fn the_self_signed_pair_is_kept_and_renewed() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("tls");
        let now = now_unix();
        let (_, first, made) = self_signed(&dir, &names(), false, now).unwrap();
        assert!(made);
        for f in [SELF_CERT, SELF_KEY] {
            let mode = std::fs::metadata(dir.join(f)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{f}");
        }
        assert_eq!(
            std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        // Kept: another host name (a new container) does not replace it by default.
        let (_, again, made) =
            self_signed(&dir, &default_names(Some("box2")), false, now + DAY).unwrap();
        assert!(!made);
        assert_eq!(again.fingerprint_sha256, first.fingerprint_sha256);
        // Names set explicitly that it lacks: a new one.
        let want = vec!["ide.example.com".to_string()];
        let (_, named, made) = self_signed(&dir, &want, true, now + DAY).unwrap();
        assert!(made && named.covers(&want));
        // Close to expiry: renewed.
        let later = now + (SELF_SIGNED_DAYS - 5) * DAY;
        let (_, renewed, made) = self_signed(&dir, &want, true, later).unwrap();
        assert!(made && !renewed.expiring(later));
        assert_ne!(renewed.fingerprint_sha256, named.fingerprint_sha256);
        // A broken stored pair is replaced.
        std::fs::write(dir.join(SELF_KEY), "junk").unwrap();
        let (_, fixed, made) = self_signed(&dir, &want, true, later).unwrap();
        assert!(made && fixed.covers(&want));
    }

    #[test]
    fn a_pair_travels_through_the_channel() {
        use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
        use std::os::fd::FromRawFd;
        let (ours, theirs) = channel().unwrap();
        let p = generate(&names(), now_unix()).unwrap();
        send(&ours, &p).unwrap();
        let mut buf = [0u8; 16];
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
        let msg = recvmsg::<()>(
            theirs.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .unwrap();
        let mut got = None;
        for c in msg.cmsgs().unwrap() {
            if let ControlMessageOwned::ScmRights(fds) = c {
                got = Some(unsafe { OwnedFd::from_raw_fd(fds[0]) });
            }
        }
        let back = read_handed(got.unwrap()).unwrap();
        assert_eq!(back.cert, p.cert);
        assert_eq!(*back.key, *p.key);
    }

    #[test]
    fn dates_render_as_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_796_630_400), "2026-12-07T08:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }
}
