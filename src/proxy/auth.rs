//! The proxy's side of PID 1's auth socket: verify a password, look up a user's login
//! fingerprint, read the gate state. Plain HTTP/1.1 over a unix socket, one request per
//! connection, every call under a deadline. Any failure to reach PID 1 fails closed.

use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// A password check can take PAM's failure delay (about 2 s) plus hashing.
pub const VERIFY_TIMEOUT: Duration = Duration::from_secs(15);
/// Lookups are quick.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(3);
/// Largest answer read from PID 1.
const MAX_ANSWER: u64 = 64 * 1024;

/// PID 1's answer to a password check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The login is valid; its fingerprint changes when the user is locked, removed or
    /// given a new password.
    Valid { fingerprint: String },
    /// Unknown user, locked user or wrong password (indistinguishable).
    Denied,
    /// Too many failures: retry after this many seconds.
    Limited { retry_after: u64 },
    /// PID 1 could not be asked.
    Unavailable,
}

/// Whether opencode is gated, as PID 1 sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GateState {
    pub reason: Option<String>,
    pub ready: bool,
    /// Users who can log in now (0: the login page says how to add one).
    pub users: usize,
}

#[derive(Debug, Clone)]
pub struct AuthClient {
    pub socket: PathBuf,
}

/// A raw answer: status, Retry-After, body.
struct Answer {
    status: u16,
    retry_after: Option<u64>,
    body: Vec<u8>,
}

fn parse_answer(raw: &[u8]) -> Option<Answer> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let retry_after = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("retry-after"))
        .and_then(|(_, v)| v.trim().parse().ok());
    Some(Answer {
        status,
        retry_after,
        body: raw[end + 4..].to_vec(),
    })
}

impl AuthClient {
    async fn call(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
        deadline: Duration,
    ) -> Option<Answer> {
        let work = async {
            let mut s = UnixStream::connect(&self.socket).await.ok()?;
            let mut req = format!(
                "{method} {path} HTTP/1.1\r\nHost: occ-init\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .into_bytes();
            req.extend_from_slice(body);
            s.write_all(&req).await.ok()?;
            // Wipe our copy of a body that may hold a password.
            req.iter_mut().for_each(|b| *b = 0);
            let mut raw = Vec::new();
            (&mut s).take(MAX_ANSWER).read_to_end(&mut raw).await.ok()?;
            parse_answer(&raw)
        };
        tokio::time::timeout(deadline, work).await.ok().flatten()
    }

    /// Check `name`'s password; `client` is the address the rate limiter keys on.
    pub async fn verify(&self, name: &str, password: &str, client: &str) -> Verdict {
        let mut body = serde_json::to_vec(&serde_json::json!({
            "name": name, "password": password, "client": client,
        }))
        .unwrap_or_default();
        let answer = self
            .call("POST", "/v1/auth/verify", &body, VERIFY_TIMEOUT)
            .await;
        body.iter_mut().for_each(|b| *b = 0);
        let Some(a) = answer else {
            return Verdict::Unavailable;
        };
        match a.status {
            200 => match fingerprint_of(&a.body) {
                Some(fingerprint) => Verdict::Valid { fingerprint },
                None => Verdict::Unavailable,
            },
            401 => Verdict::Denied,
            429 => Verdict::Limited {
                retry_after: a.retry_after.unwrap_or(1),
            },
            _ => Verdict::Unavailable,
        }
    }

    /// `Ok(Some(fp))` when `name` can log in now, `Ok(None)` when not, `Err` when PID 1
    /// could not be asked.
    pub async fn fingerprint(&self, name: &str) -> Result<Option<String>, ()> {
        let path = format!("/v1/auth/users/{}", super::request::percent_encode(name));
        let a = self
            .call("GET", &path, b"", LOOKUP_TIMEOUT)
            .await
            .ok_or(())?;
        match a.status {
            200 => fingerprint_of(&a.body).map(Some).ok_or(()),
            404 => Ok(None),
            _ => Err(()),
        }
    }

    /// The gate state.
    pub async fn state(&self) -> Result<GateState, ()> {
        let a = self
            .call("GET", "/v1/auth/state", b"", LOOKUP_TIMEOUT)
            .await
            .ok_or(())?;
        if a.status != 200 {
            return Err(());
        }
        let v: serde_json::Value = serde_json::from_slice(&a.body).map_err(|_| ())?;
        Ok(GateState {
            reason: if v["gated"].as_bool().ok_or(())? {
                Some(
                    v["reason"]
                        .as_str()
                        .unwrap_or("opencode is gated")
                        .to_string(),
                )
            } else {
                None
            },
            ready: v["ready"].as_bool().unwrap_or(false),
            users: v["users"].as_u64().unwrap_or(1) as usize,
        })
    }
}

fn fingerprint_of(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    v["fingerprint"].as_str().map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_answers() {
        let a = parse_answer(
            b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 5\r\nContent-Length: 2\r\n\r\n{}",
        )
        .unwrap();
        assert_eq!((a.status, a.retry_after), (429, Some(5)));
        assert_eq!(a.body, b"{}");
        assert!(parse_answer(b"HTTP/1.1 200 OK\r\n").is_none());
        assert!(parse_answer(b"garbage\r\n\r\n").is_none());
        assert_eq!(
            fingerprint_of(br#"{"fingerprint":"123"}"#).as_deref(),
            Some("123")
        );
        assert_eq!(fingerprint_of(br#"{"ok":true}"#), None);
    }
}
