//! Helpers for the tests of the login proxy (tests/proxy.rs, tests/front_door.rs): a
//! sandbox whose occ-init serves the proxy, users, status, WebSocket frames.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use super::http::Resp;
use super::sandbox::{free_port, text, Sandbox};
use super::Init;

pub const IO: Duration = Duration::from_secs(20);

/// Open a WebSocket through the proxy; `Ok(stream)` after a 101, else the response.
pub fn websocket(port: u16, path: &str, headers: &str) -> Result<TcpStream, Resp> {
    let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(IO)).unwrap();
    websocket_on(s, port, path, headers)
}

/// The WebSocket handshake on an open connection (plain or TLS).
pub fn websocket_on<S: Read + Write>(
    mut s: S,
    port: u16,
    path: &str,
    headers: &str,
) -> Result<S, Resp> {
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{headers}\r\n"
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    if head.starts_with("HTTP/1.1 101") {
        return Ok(s);
    }
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    Err(Resp {
        status: head
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0),
        head,
        body: String::from_utf8_lossy(&rest).into_owned(),
    })
}

/// A client stream whose reads can time out (plain TCP, or TLS over it).
pub trait Timed: Read + Write {
    fn read_timeout(&self, d: Duration);
}

impl Timed for TcpStream {
    fn read_timeout(&self, d: Duration) {
        let _ = self.set_read_timeout(Some(d));
    }
}

impl Timed for rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    fn read_timeout(&self, d: Duration) {
        let _ = self.sock.set_read_timeout(Some(d));
    }
}

/// Send one masked text frame.
pub fn ws_send<S: Write>(s: &mut S, text: &str) {
    let data = text.as_bytes();
    assert!(data.len() < 65536);
    let mask = [1u8, 2, 3, 4];
    let mut f = if data.len() < 126 {
        vec![0x81, 0x80 | data.len() as u8]
    } else {
        let n = (data.len() as u16).to_be_bytes();
        vec![0x81, 0x80 | 126, n[0], n[1]]
    };
    f.extend_from_slice(&mask);
    f.extend(data.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    s.write_all(&f).unwrap();
}

/// Read frames' payloads until `needle` shows up or the deadline passes.
pub fn ws_read_until<S: Timed>(s: &mut S, needle: &str, limit: Duration) -> String {
    let end = Instant::now() + limit;
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    s.read_timeout(Duration::from_millis(500));
    let mut raw = Vec::new();
    while Instant::now() < end && !seen.contains(needle) {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
        // Unmasked server frames: take every payload we can parse.
        loop {
            if raw.len() < 2 {
                break;
            }
            let mut len = (raw[1] & 0x7f) as usize;
            let mut off = 2;
            if len == 126 {
                if raw.len() < 4 {
                    break;
                }
                len = u16::from_be_bytes([raw[2], raw[3]]) as usize;
                off = 4;
            } else if len == 127 {
                if raw.len() < 10 {
                    break;
                }
                len = u64::from_be_bytes(raw[2..10].try_into().unwrap()) as usize;
                off = 10;
            }
            if raw.len() < off + len {
                break;
            }
            seen.push_str(&String::from_utf8_lossy(&raw[off..off + len]));
            raw.drain(..off + len);
        }
    }
    seen
}

pub fn opencode_bin() -> Option<String> {
    match std::env::var_os("OCC_TEST_OPENCODE") {
        Some(b) => Some(b.to_string_lossy().into_owned()),
        None => {
            assert!(
                std::env::var_os("CI").is_none(),
                "OCC_TEST_OPENCODE is not set in CI"
            );
            eprintln!("SKIPPED: OCC_TEST_OPENCODE is not set (tests/run installs opencode-ai)");
            None
        }
    }
}

/// A sandbox whose occ-init serves `port` on all interfaces through the proxy, with
/// `command` as opencode.
pub fn proxied(command: &str, extra: &str) -> (Sandbox, u16) {
    // The suites written for one opencode keep it unless they say otherwise (per-user
    // instances have their own suite, tests/instances.rs).
    let extra = if extra.contains("instances =") {
        extra.to_string()
    } else {
        format!("instances = 'shared'\n{extra}")
    };
    let extra = extra.as_str();
    let sb = Sandbox::new();
    sb.add_service_user();
    let port = free_port();
    for d in [sb.dir.path().to_path_buf(), sb.path("occ")] {
        let _ = std::process::Command::new("chmod")
            .arg("755")
            .arg(d)
            .status();
    }
    std::fs::write(
        sb.path("occ/init.toml"),
        format!(
            "command = {command}\nhost = '0.0.0.0'\nport = {port}\nadmin_socket = '{}'\n\
             auth_socket = '{}'\nrestart_backoff_initial = '300ms'\nstop_grace = '5s'\n\
             startup_timeout = '90s'\nenv = {{ OPENCODE_DISABLE_AUTOUPDATE = 'true' }}\n{extra}",
            sb.path("run/admin.sock").display(),
            sb.path("proxy/auth.sock").display(),
        ),
    )
    .unwrap();
    let mut sb = sb;
    sb.env.push((
        "OCC_CONFIG".into(),
        sb.path("occ/init.toml").display().to_string(),
    ));
    (sb, port)
}

pub fn add_user(sb: &Sandbox, init: &Init, name: &str, pw: &str) {
    let out = sb.exec(init, &["user", "add", name, "--password-stdin"], Some(pw));
    assert!(out.status.success(), "{}", text(&out));
}

pub fn status_json(sb: &Sandbox, init: &Init) -> serde_json::Value {
    let out = sb.exec(init, &["status", "--json"], None);
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Listening sockets on `port` in /proc/net/tcp{,6}: their local addresses (hex).
pub fn listeners_on(port: u16) -> Vec<String> {
    let mut out = Vec::new();
    for f in ["/proc/net/tcp", "/proc/net/tcp6"] {
        for l in std::fs::read_to_string(f)
            .unwrap_or_default()
            .lines()
            .skip(1)
        {
            let cols: Vec<&str> = l.split_whitespace().collect();
            if cols.len() > 3 && cols[3] == "0A" {
                if let Some((addr, p)) = cols[1].split_once(':') {
                    if u16::from_str_radix(p, 16).ok() == Some(port) {
                        out.push(addr.to_string());
                    }
                }
            }
        }
    }
    out
}

/// Does `port` answer `method path` with `want` within `limit`?
pub fn answers(port: u16, path: &str, headers: &str, want: u16, limit: Duration) -> bool {
    super::eventually(limit, || {
        super::http::http(port, "GET", path, headers, "").status == want
    })
}

/// Open a terminal through the proxy (`POST /pty`) with `auth`; its id.
pub fn open_pty(port: u16, auth: &str) -> String {
    let r = super::http::http(
        port,
        "POST",
        "/pty",
        &format!("{auth}Content-Type: application/json\r\n"),
        "{}",
    );
    assert_eq!(r.status, 200, "{r:?}");
    let v: serde_json::Value = serde_json::from_str(&r.body).expect("pty JSON");
    v["id"].as_str().expect("pty id").to_string()
}

/// A sandbox with `command` as opencode behind the proxy, booted, with `users` added and
/// opencode ready; the first user's Basic login already works.
pub fn booted(command: &str, extra: &str, users: &[(&str, &str)]) -> (Sandbox, Init, u16) {
    let (sb, port) = proxied(command, extra);
    let mut init = sb.boot(&[], &[]);
    for (name, pw) in users {
        add_user(&sb, &init, name, pw);
    }
    init.expect_log_within("opencode is ready", Duration::from_secs(120));
    if let Some((name, pw)) = users.first() {
        let auth = super::http::basic(name, pw);
        assert!(
            answers(port, "/session", &auth, 200, Duration::from_secs(20)),
            "{name} cannot log in"
        );
    }
    (sb, init, port)
}
