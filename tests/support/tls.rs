//! A TLS client for the tests (rustls, blocking): HTTPS requests and WebSockets through the
//! proxy, trusting a test CA (verified for real) or recording whatever certificate is
//! served (the self-signed one, compared with what status says), and test certificates made
//! with the openssl command line, as an admin would.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme, StreamOwned};

use super::front::IO;
use super::http::Resp;

pub type Tls = StreamOwned<ClientConnection, TcpStream>;

/// Which certificates the client accepts.
#[derive(Clone)]
pub enum Trust {
    /// Any (self-signed): the served chain is recorded.
    Any,
    /// Only chains to this CA (PEM), for the name asked for.
    Ca(Vec<u8>),
}

/// What a handshake showed.
#[derive(Debug, Clone)]
pub struct Seen {
    pub version: String,
    pub alpn: Option<String>,
    /// SHA-256 of the served leaf, `AB:CD:…`.
    pub fingerprint: String,
}

#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[allow(deprecated)]
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client config: `trust`, TLS 1.3 and 1.2 (or only `version`), ALPN http/1.1.
pub fn client_config(
    trust: &Trust,
    only: Option<&'static rustls::SupportedProtocolVersion>,
) -> Arc<ClientConfig> {
    let versions: Vec<&'static rustls::SupportedProtocolVersion> = match only {
        Some(v) => vec![v],
        None => vec![&rustls::version::TLS13, &rustls::version::TLS12],
    };
    let b = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&versions)
        .unwrap();
    let mut c = match trust {
        Trust::Any => b
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAny(provider())))
            .with_no_client_auth(),
        Trust::Ca(pem) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(pem) {
                roots.add(c.unwrap()).unwrap();
            }
            b.with_root_certificates(roots).with_no_client_auth()
        }
    };
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(c)
}

/// Connect and finish the handshake with `name` as the server name.
pub fn connect_with(
    port: u16,
    name: &str,
    config: Arc<ClientConfig>,
) -> Result<(Tls, Seen), String> {
    let sock = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(IO)).unwrap();
    sock.set_write_timeout(Some(IO)).unwrap();
    let server = ServerName::try_from(name.to_string()).map_err(|e| e.to_string())?;
    let conn = ClientConnection::new(config, server).map_err(|e| e.to_string())?;
    let mut s = StreamOwned::new(conn, sock);
    while s.conn.is_handshaking() {
        s.conn
            .complete_io(&mut s.sock)
            .map_err(|e| format!("handshake: {e}"))?;
    }
    let leaf = s
        .conn
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| occ_init::tls::fingerprint(c.as_ref()))
        .unwrap_or_default();
    let seen = Seen {
        version: format!("{:?}", s.conn.protocol_version()),
        alpn: s
            .conn
            .alpn_protocol()
            .map(|a| String::from_utf8_lossy(a).into_owned()),
        fingerprint: leaf,
    };
    Ok((s, seen))
}

/// Connect to `localhost` with `trust`.
pub fn connect(port: u16, trust: &Trust) -> Result<(Tls, Seen), String> {
    connect_with(port, "localhost", client_config(trust, None))
}

/// Send one request on `s` and read the answer (Content-Length or to the end).
pub fn request_on<S: Read + Write>(
    s: &mut S,
    port: u16,
    method: &str,
    path: &str,
    headers: &str,
    body: &str,
    close: bool,
) -> Resp {
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost:{port}\r\n{}{headers}Content-Length: {}\r\n\r\n{body}",
        if close { "Connection: close\r\n" } else { "" },
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let _ = s.flush();
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let text = String::from_utf8_lossy(&raw).into_owned();
        if let Some((head, rest)) = text.split_once("\r\n\r\n") {
            let len = head.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse::<usize>().ok())?
            });
            if let Some(n) = len {
                if rest.len() >= n {
                    break;
                }
            }
        }
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    Resp {
        status: head
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0),
        head: head.to_string(),
        body: body.to_string(),
    }
}

/// One HTTPS request on a fresh connection; the answer and what the handshake showed.
pub fn https(
    port: u16,
    trust: &Trust,
    method: &str,
    path: &str,
    headers: &str,
    body: &str,
) -> Result<(Resp, Seen), String> {
    let (mut s, seen) = connect(port, trust)?;
    Ok((
        request_on(&mut s, port, method, path, headers, body, true),
        seen,
    ))
}

/// Make files with the openssl command line in `dir`: a CA (`ca.pem`), and for each
/// `(name, key kind)` a certificate for `localhost`/127.0.0.1 signed by it (`NAME.crt`,
/// `NAME.key`) valid for `days`. Kinds: `ec` (PKCS#8 after openssl's genpkey), `rsa` (PKCS#1
/// "RSA PRIVATE KEY"), `sec1` (SEC1 "EC PRIVATE KEY").
pub fn make_certs(dir: &Path, leaves: &[(&str, &str, u32)]) {
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    if !dir.join("ca.pem").exists() {
        run(&[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            "ca.key",
        ]);
        run(&[
            "req",
            "-x509",
            "-new",
            "-key",
            "ca.key",
            "-sha256",
            "-days",
            "30",
            "-subj",
            "/CN=occ-init test CA",
            "-out",
            "ca.pem",
        ]);
    }
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    for (name, kind, days) in leaves {
        let key = format!("{name}.key");
        match *kind {
            "rsa" => run(&["genrsa", "-traditional", "-out", &key, "2048"]),
            "sec1" => run(&[
                "ecparam",
                "-name",
                "prime256v1",
                "-genkey",
                "-noout",
                "-out",
                &key,
            ]),
            _ => run(&[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
                &key,
            ]),
        }
        let csr = format!("{name}.csr");
        run(&[
            "req",
            "-new",
            "-key",
            &key,
            "-subj",
            "/CN=localhost",
            "-out",
            &csr,
        ]);
        let crt = format!("{name}.crt");
        run(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            &days.to_string(),
            "-sha256",
            "-extfile",
            "ext.cnf",
            "-out",
            &crt,
        ]);
    }
}

/// The SHA-256 fingerprint of the first certificate in a PEM file.
pub fn fingerprint_of(pem_file: &Path) -> String {
    let pem = std::fs::read(pem_file).unwrap();
    let der = CertificateDer::pem_slice_iter(&pem)
        .next()
        .unwrap()
        .unwrap();
    occ_init::tls::fingerprint(der.as_ref())
}
