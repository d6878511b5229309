//! Health probing of opencode: `GET /global/health` over HTTP/1.1 with a deadline, Basic
//! credentials when a server password is set, and a parsed JSON answer (opencode answers
//! unknown paths with 200 + HTML, so a status code alone proves nothing). Probes run on a
//! worker thread so PID 1's loop never blocks on the network.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::time::{Duration, Instant};

use crate::init::wake::WakeReader;
use crate::secret::SecretString;

/// Where and how to probe.
#[derive(Debug, Clone)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub path: String,
    pub timeout: Duration,
    /// Upstream opencode's server password (user `opencode`), when one is set.
    pub password: Option<std::sync::Arc<SecretString>>,
    /// Probe over this unix socket instead of `host:port` (the proxy's private health
    /// channel, out of reach of the public port's clients).
    pub unix: Option<std::path::PathBuf>,
    /// The process that must own every listening socket on the port (opencode behind the
    /// proxy): a healthy answer from anyone else is an impostor, not opencode.
    pub owner: Option<Owner>,
}

/// A process and the ids it runs as (to read its descriptors without CAP_SYS_PTRACE).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
}

impl Target {
    /// The address to connect to: a wildcard listen address is probed over loopback.
    pub fn connect_host(&self) -> String {
        match self.host.trim_matches(['[', ']']) {
            "0.0.0.0" | "" => "127.0.0.1".into(),
            "::" => "::1".into(),
            "localhost" => "127.0.0.1".into(),
            h => h.into(),
        }
    }
}

/// A connected stream with timeouts (TCP or unix).
trait Conn: Read + Write {
    fn set_timeouts(&self, read: Duration, write: Duration) -> std::io::Result<()>;
}

impl Conn for TcpStream {
    fn set_timeouts(&self, read: Duration, write: Duration) -> std::io::Result<()> {
        self.set_read_timeout(Some(read))?;
        self.set_write_timeout(Some(write))
    }
}

impl Conn for std::os::unix::net::UnixStream {
    fn set_timeouts(&self, read: Duration, write: Duration) -> std::io::Result<()> {
        self.set_read_timeout(Some(read))?;
        self.set_write_timeout(Some(write))
    }
}

/// One HTTP GET with an overall deadline; returns the raw response.
pub fn get(target: &Target) -> Result<Vec<u8>, String> {
    get_checked(target, |_| Ok(()))
}

/// [`get`], with `connected` (given our local port) run once the TCP connection stands and
/// before anything (the credentials) is sent on it.
fn get_checked(
    target: &Target,
    connected: impl FnOnce(u16) -> Result<(), String>,
) -> Result<Vec<u8>, String> {
    let host = target.connect_host();
    if let Some(path) = &target.unix {
        let stream = std::os::unix::net::UnixStream::connect(path)
            .map_err(|e| format!("connect {}: {e}", path.display()))?;
        return exchange(stream, target, "occ-init");
    }
    let addr: SocketAddr = (host.as_str(), target.port)
        .to_socket_addrs()
        .map_err(|e| format!("bad address {host}: {e}"))?
        .next()
        .ok_or_else(|| format!("no address for {host}"))?;
    let stream = TcpStream::connect_timeout(&addr, target.timeout)
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let local = stream.local_addr().map(|a| a.port()).unwrap_or(0);
    connected(local)?;
    let host_header = if host.contains(':') {
        format!("[{host}]:{}", target.port)
    } else {
        format!("{host}:{}", target.port)
    };
    exchange(stream, target, &host_header)
}

/// Send the GET on a connected stream and read the answer, all before the deadline.
fn exchange(mut stream: impl Conn, target: &Target, host_header: &str) -> Result<Vec<u8>, String> {
    let deadline = Instant::now() + target.timeout;
    let left = || {
        deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1))
    };
    stream
        .set_timeouts(left(), left())
        .map_err(|e| e.to_string())?;
    let mut req = format!(
        "GET {} HTTP/1.1\r\nHost: {host_header}\r\nAccept: application/json\r\nConnection: close\r\nUser-Agent: occ-init\r\n",
        target.path,
    );
    if let Some(p) = &target.password {
        req.push_str(&format!(
            "Authorization: Basic {}\r\n",
            base64(format!("opencode:{}", p.expose()).as_bytes())
        ));
    }
    req.push_str("\r\n");
    stream
        .write_all(req.as_bytes())
        .map_err(|e| format!("send: {e}"))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        stream
            .set_timeouts(left(), left())
            .map_err(|e| e.to_string())?;
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if buf.len() > 64 * 1024 {
                    return Err("response larger than 64 KiB".into());
                }
                if complete(&buf) {
                    break;
                }
            }
            Err(e) => return Err(format!("read: {e}")),
        }
        if Instant::now() >= deadline {
            return Err("timed out".into());
        }
    }
    Ok(buf)
}

/// True once a full response (by Content-Length or chunked terminator) is in `buf`.
fn complete(buf: &[u8]) -> bool {
    let Some(end) = find(buf, b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    let body = &buf[end + 4..];
    if let Some(len) = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
    {
        return body.len() >= len;
    }
    head.contains("transfer-encoding: chunked") && find(body, b"0\r\n\r\n").is_some()
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The JSON body of a raw 200 response (chunked or not); `not_json` says what else it was.
fn json_200(raw: &[u8], not_json: &str) -> Result<serde_json::Value, String> {
    let (status, head, body) = crate::admin::http::split_response(raw)?;
    if status != 200 {
        return Err(format!("HTTP {status}"));
    }
    let mut body = body.to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body).ok_or("bad chunked body")?;
    }
    serde_json::from_slice(&body).map_err(|_| not_json.to_string())
}

/// Judge a raw response: 200 with a JSON body whose `healthy` is `true`.
pub fn judge(raw: &[u8]) -> Result<(), String> {
    let v = json_200(raw, "answer is not JSON (wrong path or not opencode?)")?;
    match v.get("healthy") {
        Some(serde_json::Value::Bool(true)) => Ok(()),
        _ => Err("answer does not say healthy: true".into()),
    }
}

fn dechunk(mut body: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = find(body, b"\r\n")?;
        let size_text = std::str::from_utf8(&body[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(body.get(..size)?);
        body = body.get(size + 2..)?;
    }
}

/// Standard base64 with padding (for the Basic authorization header).
pub fn base64(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// Probe once: `Ok` when healthy (and, with an `owner`, answered by that process), else
/// why not.
pub fn probe(target: &Target) -> Result<(), String> {
    run(Check::Health, target).map(|_| ())
}

/// The inodes of the IPv4/IPv6 sockets listening on `port` (any local address), from the
/// text of /proc/net/tcp and /proc/net/tcp6.
pub fn listening_inodes(tables: &[String], port: u16) -> Vec<u64> {
    listeners(tables)
        .into_iter()
        .filter(|(p, _, _)| *p == port)
        .map(|(_, _, i)| i)
        .collect()
}

/// The socket inodes among the open files of process `pid`; false when /proc does not let
/// us see them.
fn socket_inodes(pid: i32, into: &mut std::collections::HashSet<u64>) -> bool {
    let dir = match std::fs::read_dir(format!("/proc/{pid}/fd")) {
        Ok(d) => d,
        Err(e) => return e.kind() != std::io::ErrorKind::PermissionDenied,
    };
    for e in dir.flatten() {
        if let Some(inode) = std::fs::read_link(e.path())
            .ok()
            .and_then(|t| t.to_str().map(str::to_string))
            .and_then(|t| t.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok())
        {
            into.insert(inode);
        }
    }
    true
}

/// Run `f` with this thread's filesystem ids set to `uid`:`gid`, restored afterwards.
/// Filesystem ids are per thread (glibc does not broadcast setfsuid), and /proc/PID/fd of a
/// process is readable with its owner's ids: root in a container has no CAP_SYS_PTRACE.
fn with_fs_ids<T>(uid: u32, gid: u32, f: impl FnOnce() -> T) -> T {
    // SAFETY: setfsgid/setfsuid change only this thread's filesystem credentials; the
    // previous values they return are put back before returning.
    let (old_gid, old_uid) = unsafe { (libc::setfsgid(gid), libc::setfsuid(uid)) };
    let r = f();
    unsafe {
        libc::setfsuid(old_uid as libc::uid_t);
        libc::setfsgid(old_gid as libc::gid_t);
    }
    r
}

/// The process group of `pid` (field 5 of /proc/PID/stat).
fn pgid_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(2)?
        .parse()
        .ok()
}

/// Every socket listening on `port` was made by the owner's uid and belongs to process
/// `pid` or a process of its group (a wrapper's child). Terminals opencode spawns have
/// sessions and groups of their own, so a process started there that took the port does not
/// pass; nor does any process of another user.
fn owned_by(port: u16, owner: &Owner) -> Result<(), String> {
    let on_port: Vec<(u16, u32, u64)> = listeners(&tcp_tables())
        .into_iter()
        .filter(|(p, _, _)| *p == port)
        .collect();
    if on_port.is_empty() {
        return Err(format!("nothing listens on port {port}"));
    }
    if let Some((_, uid, _)) = on_port.iter().find(|(_, uid, _)| *uid != owner.uid) {
        return Err(format!(
            "a process of uid {uid}, not opencode's, listens on port {port}"
        ));
    }
    let Some(own) = owner_inodes(owner) else {
        // /proc hides opencode's descriptors even from its own ids (a hardened kernel): the
        // socket's uid above still keeps other users out.
        log::debug!("cannot see opencode's descriptors; only its port's uid is checked");
        return Ok(());
    };
    match on_port.iter().any(|(_, _, i)| !own.contains(i)) {
        false => Ok(()),
        true => Err(format!(
            "another process than opencode (pid {}) listens on port {port}",
            owner.pid
        )),
    }
}

/// What a probe asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// `health_path` says healthy (readiness and liveness).
    Health,
    /// `GET /session/status` says no session is busy (may an idle instance stop?).
    Idle,
}

/// Judge `GET /session/status`: `Ok` when opencode lists no session that is not idle
/// (`{}` or only `{"type":"idle"}`), else why not. Anything unexpected counts as busy: an
/// agent working unattended must never be stopped on a doubt.
pub fn judge_idle(raw: &[u8]) -> Result<(), String> {
    let v = json_200(raw, "session status is not JSON")?;
    let map = v.as_object().ok_or("session status is not an object")?;
    let busy = map
        .values()
        .filter(|s| s.get("type").and_then(|t| t.as_str()) != Some("idle"))
        .count();
    match busy {
        0 => Ok(()),
        n => Err(format!("{n} busy session(s)")),
    }
}

/// Run one check on `target`; returns the port it was answered on.
///
/// With an `owner` its credentials only ever go to that process: every socket listening on
/// the port must be the owner's (by the socket's uid and by the owner's descriptors) before
/// connecting and again once connected, before the request is written. A process of
/// another user that took the port learns nothing. Port 0 means "the port the owner
/// listens on" (opencode started with `--port 0` binds one the kernel picks, which nobody
/// can know, let alone take, before it is bound).
pub fn run(check: Check, target: &Target) -> Result<u16, String> {
    let mut target = target.clone();
    if let Some(owner) = &target.owner {
        if target.port == 0 {
            target.port = owned_port(owner)?;
        }
        owned_by(target.port, owner)?;
    }
    // Which listener a connection to 127.0.0.1 lands on is the kernel's choice among those
    // that can take it (127.0.0.1, 0.0.0.0, their IPv4-mapped forms); all are checked, and
    // again once connected: a listener that appeared in between is seen, and one bound after
    // our connection was queued cannot have it.
    let raw = get_checked(&target, |_| match &target.owner {
        Some(owner) => owned_by(target.port, owner),
        None => Ok(()),
    })?;
    match check {
        Check::Health => judge(&raw)?,
        Check::Idle => judge_idle(&raw)?,
    }
    Ok(target.port)
}

/// /proc/net/tcp{,6} address columns that a connection to 127.0.0.1 can reach: 127.0.0.1,
/// 0.0.0.0, and their IPv4-mapped forms. (A socket of another user on 127.0.0.2, [::1] or
/// an IPv6-only [::] never gets such a connection, so it must not count either way.)
fn reaches_v4_loopback(addr: &str) -> bool {
    matches!(
        addr,
        "0100007F"
            | "00000000"
            | "0000000000000000FFFF00000100007F"
            | "0000000000000000FFFF000000000000"
    )
}

/// Listening sockets in the text of /proc/net/tcp{,6} that a connection to 127.0.0.1 can
/// reach: (port, uid, inode).
pub fn listeners(tables: &[String]) -> Vec<(u16, u32, u64)> {
    let mut out = Vec::new();
    for table in tables {
        for line in table.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() < 10 || cols[3] != "0A" {
                continue;
            }
            let Some((addr, port)) = cols[1].rsplit_once(':') else {
                continue;
            };
            if !reaches_v4_loopback(addr) {
                continue;
            }
            let port = u16::from_str_radix(port, 16).ok();
            if let (Some(port), Ok(uid), Ok(inode)) = (port, cols[7].parse(), cols[9].parse()) {
                out.push((port, uid, inode));
            }
        }
    }
    out
}

/// The text of /proc/net/tcp and /proc/net/tcp6 (those that can be read).
pub fn tcp_tables() -> Vec<String> {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .collect()
}

/// The socket inodes of `owner`'s process and its process group, read with its ids.
/// `None` when /proc hides them.
fn owner_inodes(owner: &Owner) -> Option<std::collections::HashSet<u64>> {
    let mut own = std::collections::HashSet::new();
    let visible = with_fs_ids(owner.uid, owner.gid, || {
        let visible = socket_inodes(owner.pid, &mut own);
        if visible {
            for (p, _) in crate::init::procs::process_table() {
                if p != owner.pid && pgid_of(p) == Some(owner.pid) {
                    socket_inodes(p, &mut own);
                }
            }
        }
        visible
    });
    visible.then_some(own)
}

/// The port `owner` listens on: a listening socket of its own process (the lowest port if
/// several; a helper in its process group that listens too is not opencode's server).
fn owned_port(owner: &Owner) -> Result<u16, String> {
    let mut own = std::collections::HashSet::new();
    let visible = with_fs_ids(owner.uid, owner.gid, || socket_inodes(owner.pid, &mut own));
    if !visible {
        return Err("cannot see opencode's descriptors".into());
    }
    listeners(&tcp_tables())
        .into_iter()
        .filter(|(_, uid, inode)| *uid == owner.uid && own.contains(inode))
        .map(|(port, _, _)| port)
        .min()
        .ok_or_else(|| "opencode listens on no port yet".to_string())
}

/// Probe requests: which service, what to check, where.
type Request = (String, Check, Target);
/// A result: which service, what was checked, for which process (the owner's pid), how it
/// went (the port it was answered on).
pub type Outcome = (String, Check, Option<i32>, Result<u16, String>);

/// How many probes run at once: one instance that hangs until its timeout must not hold
/// up the others' probes.
const WORKERS: usize = 4;

/// Worker threads that run probes and wake PID 1's loop when a result is ready.
pub struct Prober {
    requests: Sender<Request>,
    results: Receiver<Outcome>,
    wake: WakeReader,
}

impl Prober {
    pub fn start() -> std::io::Result<Prober> {
        let (wake, waker) = crate::init::wake::pair()?;
        let waker = std::sync::Arc::new(waker);
        let (req_tx, req_rx) = channel::<Request>();
        let req_rx = std::sync::Arc::new(std::sync::Mutex::new(req_rx));
        let (res_tx, res_rx) = channel();
        for n in 0..WORKERS {
            let (rx, tx, waker) = (req_rx.clone(), res_tx.clone(), waker.clone());
            std::thread::Builder::new()
                .name(format!("probe-{n}"))
                .spawn(move || loop {
                    let next = match rx.lock() {
                        Ok(r) => r.recv(),
                        Err(_) => return,
                    };
                    let Ok((tag, check, target)) = next else {
                        return;
                    };
                    let result = run(check, &target);
                    let pid = target.owner.as_ref().map(|o| o.pid);
                    if tx.send((tag, check, pid, result)).is_err() {
                        return;
                    }
                    waker.wake();
                })?;
        }
        Ok(Prober {
            requests: req_tx,
            results: res_rx,
            wake,
        })
    }

    /// Run `check` on `target`; the result comes back with `tag` (the service's name).
    pub fn request(&self, tag: &str, check: Check, target: Target) {
        let _ = self.requests.send((tag.to_string(), check, target));
    }

    /// Results that arrived since the last call (drains the wake-up pipe too).
    pub fn results(&self) -> Vec<Outcome> {
        self.wake.drain();
        self.results.try_iter().collect()
    }
}

impl AsFd for Prober {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.wake.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_a_connection_to_127_0_0_1_can_reach_counts() {
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1004 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1002        0 111 1
   1: 0200007F:1004 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1003        0 222 1
   2: 0100007F:1004 0100007F:9C40 01 00000000:00000000 00:00000000 00000000  1002        0 0 1
   3: 0100007F:9C40 0100007F:1004 01 00000000:00000000 00:00000000 00000000     0        0 333 1
".to_string();
        let tcp6 = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:1004 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1003        0 444 1
".to_string();
        let t = [tcp, tcp6];
        // 127.0.0.2 and [::1] are bob's, on alice's port: they never see her connections.
        assert_eq!(listeners(&t), vec![(4100, 1002, 111)]);
    }

    #[test]
    fn judges_busy_sessions() {
        let ok = |body: &str| {
            judge_idle(
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            )
        };
        assert!(ok("{}").is_ok());
        assert!(ok(r#"{"ses_1":{"type":"idle"}}"#).is_ok());
        assert!(ok(r#"{"ses_1":{"type":"busy"}}"#).is_err());
        assert!(ok(r#"{"ses_1":{"type":"idle"},"ses_2":{"type":"retry"}}"#).is_err());
        assert!(ok("[]").is_err(), "unexpected shapes count as busy");
        assert!(ok("<html>").is_err());
        assert!(judge_idle(b"HTTP/1.1 401 Unauthorized\r\n\r\n").is_err());
    }

    #[test]
    fn judges_answers() {
        let ok = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 36\r\n\r\n{\"healthy\":true,\"version\":\"1.18.33\"}";
        assert_eq!(judge(ok), Ok(()));
        let html = b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n\r\n<html>opencode</html>";
        assert!(judge(html).unwrap_err().contains("not JSON"));
        let sick = b"HTTP/1.1 200 OK\r\n\r\n{\"healthy\":false}";
        assert!(judge(sick).is_err());
        let auth = b"HTTP/1.1 401 Unauthorized\r\n\r\n";
        assert_eq!(judge(auth), Err("HTTP 401".into()));
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n7\r\n{\"healt\r\n9\r\nhy\":true}\r\n0\r\n\r\n";
        assert_eq!(judge(chunked), Ok(()));
        assert!(judge(b"garbage").is_err());
    }

    #[test]
    fn knows_when_a_response_is_complete() {
        assert!(!complete(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab"));
        assert!(complete(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nab"));
        assert!(complete(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        ));
    }

    #[test]
    fn base64_matches_rfc4648() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foobar", "Zm9vYmFy"),
            ("opencode:pw", "b3BlbmNvZGU6cHc="),
        ] {
            assert_eq!(base64(i.as_bytes()), o);
        }
    }

    #[test]
    fn an_answer_from_another_process_is_not_opencode() {
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   \
            0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1001        0 4242 1 0 100 0 0 10 0\n   \
            1: 0100007F:1F90 0100007F:9C40 01 00000000:00000000 00:00000000 00000000  1001        0 4343 1 0 100 0 0 10 0\n   \
            2: 00000000:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 77 1 0 100 0 0 10 0\n";
        assert_eq!(listening_inodes(&[tcp.to_string()], 8080), vec![4242]);
        assert_eq!(listening_inodes(&[tcp.to_string()], 80), vec![77]);
        assert!(listening_inodes(&[tcp.to_string()], 81).is_empty());
        // For real: this process owns its listener, and not one of another process.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let me = |pid| Owner {
            pid,
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
        };
        assert_eq!(owned_by(port, &me(std::process::id() as i32)), Ok(()));
        assert!(owned_by(port, &me(1)).is_err());
        drop(l);
        assert!(owned_by(port, &me(std::process::id() as i32)).is_err());
    }

    #[test]
    fn wildcard_addresses_are_probed_over_loopback() {
        let t = |h: &str| Target {
            host: h.into(),
            port: 1,
            path: "/".into(),
            timeout: Duration::from_secs(1),
            password: None,
            unix: None,
            owner: None,
        };
        assert_eq!(t("0.0.0.0").connect_host(), "127.0.0.1");
        assert_eq!(t("::").connect_host(), "::1");
        assert_eq!(t("[::]").connect_host(), "::1");
        assert_eq!(t("10.0.0.2").connect_host(), "10.0.0.2");
    }

    #[test]
    fn probes_a_real_socket_with_basic_auth() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut req = [0u8; 2048];
            let n = s.read(&mut req).unwrap();
            let req = String::from_utf8_lossy(&req[..n]).to_string();
            let body = "{\"healthy\":true}";
            write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .unwrap();
            req
        });
        let target = Target {
            host: "0.0.0.0".into(),
            port,
            path: "/global/health".into(),
            timeout: Duration::from_secs(5),
            password: Some(std::sync::Arc::new(SecretString::new("pw".into()))),
            unix: None,
            owner: None,
        };
        assert_eq!(probe(&target), Ok(()));
        let req = server.join().unwrap();
        assert!(req.starts_with("GET /global/health HTTP/1.1\r\n"), "{req}");
        assert!(
            req.contains("Authorization: Basic b3BlbmNvZGU6cHc="),
            "{req}"
        );
    }

    #[test]
    fn silent_server_times_out() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let target = Target {
            host: "127.0.0.1".into(),
            port,
            path: "/".into(),
            timeout: Duration::from_millis(300),
            password: None,
            unix: None,
            owner: None,
        };
        let t = Instant::now();
        assert!(probe(&target).is_err());
        assert!(t.elapsed() < Duration::from_secs(5));
        drop(listener);
    }
}
