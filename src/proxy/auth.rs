//! The proxy's side of PID 1's auth socket: verify a password, look up a user's login
//! fingerprint, read the gate state (with the credentials opencode's current start takes),
//! and keep PID 1's copy of the browser sessions. Plain HTTP/1.1 over a unix socket, one
//! request per connection, every call under a deadline and a bound on how many run at once
//! (so a flood at the proxy queues here instead of filling PID 1's connection slots). Any
//! failure to reach PID 1 fails closed.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::Semaphore;

/// A password check can take PAM's failure delay (about 2 s) plus hashing.
pub const VERIFY_TIMEOUT: Duration = Duration::from_secs(15);
/// Lookups are quick.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(3);
/// Largest answer read from PID 1 (the session list can be long).
const MAX_ANSWER: u64 = 8 * 1024 * 1024;
/// Password checks in flight at PID 1 at once (each may hold a thread there for PAM's delay).
pub const VERIFY_CONCURRENCY: usize = 8;
/// Lookups (gate state, fingerprints, sessions) in flight at once, apart from the checks, so
/// that logged-in users are not queued behind a flood of wrong passwords.
pub const LOOKUP_CONCURRENCY: usize = 8;

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
#[derive(Clone, PartialEq, Eq)]
pub struct GateState {
    pub reason: Option<String>,
    pub ready: bool,
    /// Users who can log in now (0: the login page says how to add one).
    pub users: usize,
    /// What to send upstream as `Authorization` (opencode's per-start password).
    pub upstream_authorization: Option<String>,
    /// Where opencode listens now, when PID 1 says (else `--upstream`).
    pub upstream: Option<std::net::SocketAddr>,
    /// Every user has their own opencode: ask PID 1 for it ([`AuthClient::instances`]).
    pub per_user: bool,
    /// The uid the shared opencode runs as.
    pub upstream_uid: Option<u32>,
}

impl std::fmt::Debug for GateState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GateState")
            .field("reason", &self.reason)
            .field("ready", &self.ready)
            .field("users", &self.users)
            .field("upstream", &self.upstream)
            .field("per_user", &self.per_user)
            .field(
                "upstream_authorization",
                &self.upstream_authorization.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// A session as the proxy and PID 1 hand it to each other (times relative to the call:
/// both processes read the same monotonic clock, but an `Instant` does not travel).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionCopy {
    /// SHA-256 of the cookie's token, never the token.
    pub id: String,
    pub user: String,
    pub fingerprint: String,
    pub created_ms_ago: u64,
    pub seen_ms_ago: u64,
}

/// Changes to PID 1's copy of the sessions.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SessionSync {
    pub put: Vec<SessionCopy>,
    pub remove: Vec<String>,
    pub touch: Vec<String>,
}

impl SessionSync {
    pub fn is_empty(&self) -> bool {
        self.put.is_empty() && self.remove.is_empty() && self.touch.is_empty()
    }
}

#[derive(Debug, Clone)]
pub struct AuthClient {
    pub socket: PathBuf,
    verifies: Arc<Semaphore>,
    lookups: Arc<Semaphore>,
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
    pub fn new(socket: PathBuf) -> AuthClient {
        AuthClient {
            socket,
            verifies: Arc::new(Semaphore::new(VERIFY_CONCURRENCY)),
            lookups: Arc::new(Semaphore::new(LOOKUP_CONCURRENCY)),
        }
    }

    /// One request, waiting for a permit of `pool` first; the deadline covers both.
    async fn call(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
        deadline: Duration,
    ) -> Option<Answer> {
        let pool = if path == "/v1/auth/verify" || path == "/v1/auth/token" {
            &self.verifies
        } else {
            &self.lookups
        };
        let work = async {
            let _permit = pool.acquire().await.ok()?;
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

    /// Check a Bearer token: the verdict, and whose token it is when valid.
    pub async fn verify_token(&self, token: &str, client: &str) -> (Verdict, Option<String>) {
        let mut body = serde_json::to_vec(&serde_json::json!({
            "token": token, "client": client,
        }))
        .unwrap_or_default();
        let answer = self
            .call("POST", "/v1/auth/token", &body, VERIFY_TIMEOUT)
            .await;
        body.iter_mut().for_each(|b| *b = 0);
        let Some(a) = answer else {
            return (Verdict::Unavailable, None);
        };
        match a.status {
            200 => {
                let v: serde_json::Value = serde_json::from_slice(&a.body).unwrap_or_default();
                match (fingerprint_of(&a.body), v["user"].as_str()) {
                    (Some(fingerprint), Some(user)) => {
                        (Verdict::Valid { fingerprint }, Some(user.to_string()))
                    }
                    _ => (Verdict::Unavailable, None),
                }
            }
            401 => (Verdict::Denied, None),
            429 => (
                Verdict::Limited {
                    retry_after: a.retry_after.unwrap_or(1),
                },
                None,
            ),
            _ => (Verdict::Unavailable, None),
        }
    }

    /// The OIDC client secret, from PID 1 (it reads the root-only file).
    pub async fn oidc_secret(&self) -> Result<crate::secret::SecretString, ()> {
        let body = self.get_ok("/v1/auth/oidc").await?;
        let mut v: serde_json::Value = serde_json::from_slice(&body).map_err(|_| ())?;
        match v["client_secret"].take() {
            serde_json::Value::String(s) => Ok(crate::secret::SecretString::new(s)),
            _ => Err(()),
        }
    }

    /// Tell PID 1 whether the provider answers (for `status`).
    pub async fn oidc_state(
        &self,
        reachable: bool,
        error: Option<&str>,
        device: bool,
    ) -> Result<(), ()> {
        let body = serde_json::to_vec(&serde_json::json!({
            "reachable": reachable, "error": error, "device": device,
        }))
        .unwrap_or_default();
        let a = self
            .call("POST", "/v1/auth/oidc/state", &body, LOOKUP_TIMEOUT)
            .await
            .ok_or(())?;
        (a.status == 200).then_some(()).ok_or(())
    }

    /// Which user a verified identity signs in as: `(user, fingerprint)`, or PID 1's reason.
    pub async fn oidc_login(
        &self,
        identity: &crate::oidc::Identity,
    ) -> Result<(String, String), String> {
        let body = serde_json::to_vec(identity).unwrap_or_default();
        // Creating a user runs useradd: allow for it.
        let a = self
            .call("POST", "/v1/auth/oidc/login", &body, VERIFY_TIMEOUT)
            .await
            .ok_or_else(|| "occ-init is not answering".to_string())?;
        let v: serde_json::Value = serde_json::from_slice(&a.body).unwrap_or_default();
        match (a.status, v["user"].as_str(), fingerprint_of(&a.body)) {
            (200, Some(user), Some(fp)) => Ok((user.to_string(), fp)),
            _ => Err(v["error"].as_str().unwrap_or("refused").to_string()),
        }
    }

    /// `user`'s tokens (never the tokens themselves).
    pub async fn tokens(&self, user: &str) -> Result<Vec<crate::tokens::TokenInfo>, ()> {
        let path = format!("/v1/auth/tokens/{}", super::request::percent_encode(user));
        let v: serde_json::Value =
            serde_json::from_slice(&self.get_ok(&path).await?).map_err(|_| ())?;
        serde_json::from_value(v["tokens"].clone()).map_err(|_| ())
    }

    /// Make a token for `user`: the new token, or PID 1's message why not.
    pub async fn create_token(
        &self,
        user: &str,
        name: &str,
        expires: &str,
    ) -> Result<crate::secret::SecretString, String> {
        let body = serde_json::to_vec(&serde_json::json!({
            "user": user, "name": name, "expires": expires,
        }))
        .unwrap_or_default();
        let a = self
            .call("POST", "/v1/auth/tokens", &body, LOOKUP_TIMEOUT)
            .await
            .ok_or_else(|| "occ-init is not answering".to_string())?;
        let mut v: serde_json::Value = serde_json::from_slice(&a.body).unwrap_or_default();
        match (a.status, v["token"].take()) {
            (201, serde_json::Value::String(t)) => Ok(crate::secret::SecretString::new(t)),
            _ => Err(v["error"]
                .as_str()
                .unwrap_or("the token was not made")
                .to_string()),
        }
    }

    /// Revoke `user`'s token `id`.
    pub async fn revoke_token(&self, user: &str, id: &str) -> Result<(), String> {
        let path = format!(
            "/v1/auth/tokens/{}/{}",
            super::request::percent_encode(user),
            super::request::percent_encode(id)
        );
        let a = self
            .call("DELETE", &path, b"", LOOKUP_TIMEOUT)
            .await
            .ok_or_else(|| "occ-init is not answering".to_string())?;
        if a.status == 200 {
            return Ok(());
        }
        let v: serde_json::Value = serde_json::from_slice(&a.body).unwrap_or_default();
        Err(v["error"].as_str().unwrap_or("not revoked").to_string())
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

    /// The body of a `GET` that PID 1 answered 200.
    async fn get_ok(&self, path: &str) -> Result<Vec<u8>, ()> {
        let a = self
            .call("GET", path, b"", LOOKUP_TIMEOUT)
            .await
            .ok_or(())?;
        (a.status == 200).then_some(a.body).ok_or(())
    }

    /// Everyone who can log in now, with their fingerprints (one call for all).
    pub async fn fingerprints(&self) -> Result<std::collections::HashMap<String, String>, ()> {
        #[derive(serde::Deserialize)]
        struct All {
            users: std::collections::HashMap<String, String>,
        }
        serde_json::from_slice::<All>(&self.get_ok("/v1/auth/users").await?)
            .map(|a| a.users)
            .map_err(|_| ())
    }

    /// The gate state.
    pub async fn state(&self) -> Result<GateState, ()> {
        let body = self.get_ok("/v1/auth/state").await?;
        let v: serde_json::Value = serde_json::from_slice(&body).map_err(|_| ())?;
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
            upstream_authorization: v["upstream_authorization"].as_str().map(str::to_string),
            upstream: v["upstream"].as_str().and_then(|a| a.parse().ok()),
            per_user: v["per_user"].as_bool().unwrap_or(false),
            upstream_uid: v["upstream_uid"].as_u64().map(|u| u as u32),
        })
    }

    /// Report users' activity and maybe ask for `report.start`'s instance; every
    /// instance's view comes back.
    pub async fn instances(
        &self,
        report: &crate::instances::Report,
    ) -> Result<Vec<crate::instances::View>, ()> {
        #[derive(serde::Deserialize)]
        struct List {
            instances: Vec<crate::instances::View>,
        }
        let body = serde_json::to_vec(report).map_err(|_| ())?;
        let a = self
            .call("POST", "/v1/auth/instances", &body, LOOKUP_TIMEOUT)
            .await
            .ok_or(())?;
        if a.status != 200 {
            return Err(());
        }
        serde_json::from_slice::<List>(&a.body)
            .map(|l| l.instances)
            .map_err(|_| ())
    }

    /// PID 1's copy of the sessions (at the proxy's start).
    pub async fn sessions(&self) -> Result<Vec<SessionCopy>, ()> {
        #[derive(serde::Deserialize)]
        struct List {
            sessions: Vec<SessionCopy>,
        }
        serde_json::from_slice::<List>(&self.get_ok("/v1/auth/sessions").await?)
            .map(|l| l.sessions)
            .map_err(|_| ())
    }

    /// Tell PID 1 what changed.
    pub async fn sync_sessions(&self, sync: &SessionSync) -> Result<(), ()> {
        let body = serde_json::to_vec(sync).map_err(|_| ())?;
        let a = self
            .call("POST", "/v1/auth/sessions", &body, LOOKUP_TIMEOUT)
            .await
            .ok_or(())?;
        (a.status == 200).then_some(()).ok_or(())
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
