//! API v1 of the admin endpoint, as pure functions: routing a request to a [`Route`],
//! decoding JSON bodies, error bodies, and the rate limiter for password checks.
//! Documented in docs/api/openapi.json (tests check the server against it).

use serde::Deserialize;
use serde_json::json;

use super::http::{Request, Response};
use crate::secret::SecretString;

/// What a request asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    Status,
    Health,
    Ready,
    ListUsers,
    AddUser {
        name: String,
        secret: Secret,
        uid: Option<u32>,
    },
    RemoveUser {
        name: String,
        force: bool,
    },
    SetPassword {
        name: String,
        secret: Secret,
    },
    Lock {
        name: String,
    },
    Unlock {
        name: String,
    },
    Verify {
        name: String,
        password: Secret,
    },
    Restart,
    ListInstances,
    StopInstance {
        user: String,
    },
    ListTokens {
        user: Option<String>,
    },
    CreateToken(NewToken),
    RevokeToken {
        id: String,
    },
}

/// Body of `POST /v1/tokens` (and the auth socket's): whose, its name, its lifetime
/// (`90d`, `12h`, `never`; default 90 days).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    pub user: String,
    pub name: String,
    #[serde(default)]
    pub expires: Option<String>,
}

/// A secret from a request body (never printed).
#[derive(PartialEq, Eq)]
pub enum Secret {
    Password(String),
    Hash(String),
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Secret::Password(_) => "Password(<redacted>)",
            Secret::Hash(_) => "Hash(<redacted>)",
        })
    }
}

impl Secret {
    pub fn into_new_secret(self) -> crate::users::NewSecret {
        match self {
            Secret::Password(p) => crate::users::NewSecret::Password(SecretString::new(p)),
            Secret::Hash(h) => crate::users::NewSecret::Hash(SecretString::new(h)),
        }
    }
}

/// An API error: HTTP status, machine code, human message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn response(&self) -> Response {
        Response::json(
            self.status,
            json!({"error": self.message, "code": self.code}).to_string(),
        )
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewUserBody {
    name: String,
    password: Option<String>,
    password_hash: Option<String>,
    uid: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretBody {
    password: Option<String>,
    password_hash: Option<String>,
}

fn json_body<'a, T: Deserialize<'a>>(req: &'a Request) -> Result<T, ApiError> {
    // serde_json's messages can quote a value ("invalid type: integer `12345678`"), and
    // bodies hold passwords: say only what kind of problem and where.
    serde_json::from_slice(&req.body).map_err(|e| {
        let kind = match e.classify() {
            serde_json::error::Category::Io => "unreadable",
            serde_json::error::Category::Syntax => "malformed",
            serde_json::error::Category::Eof => "truncated",
            serde_json::error::Category::Data => "wrong fields or field types in",
        };
        ApiError::new(
            400,
            "bad_json",
            format!(
                "{kind} JSON body (line {}, column {}); see docs/api/openapi.json",
                e.line(),
                e.column()
            ),
        )
    })
}

/// What the proxy asks on the auth socket.
#[derive(Debug)]
pub enum AuthRoute {
    /// Is opencode gated (and why), is it ready?
    State,
    /// Can `name` log in now, and with which login fingerprint?
    User {
        name: String,
    },
    /// Everyone who can log in now, with their fingerprints.
    Users,
    /// Check a password (rate-limited per user and per client address).
    Verify {
        name: String,
        password: SecretString,
        client: String,
    },
    /// The browser sessions kept for the proxy (a restarted proxy takes them back).
    Sessions,
    /// Sessions the proxy started, ended or used.
    SyncSessions(SessionSync),
    /// Users' activity, and a user whose instance to start (per-user instances).
    Instances(crate::instances::Report),
    /// Check a personal API token given as `Authorization: Bearer` (rate-limited per
    /// client address).
    Token {
        token: SecretString,
        client: String,
    },
    /// The signed-in user's own tokens: list, create, revoke (the tokens page).
    UserTokens {
        user: String,
    },
    CreateToken(NewToken),
    RevokeToken {
        user: String,
        id: String,
    },
    /// The OIDC client secret (read by PID 1 from its root-only file).
    OidcSecret,
    /// What the proxy knows of the provider now.
    OidcState(OidcReport),
    /// A verified identity: which user does it sign in as?
    OidcLogin(crate::oidc::Identity),
}

/// Body of `POST /v1/auth/oidc/state`.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct OidcReport {
    pub reachable: bool,
    pub error: Option<String>,
    #[serde(default)]
    pub device: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthTokenBody {
    token: String,
    client: String,
}

pub use crate::proxy::auth::SessionCopy;

/// Body of `POST /v1/auth/sessions`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionSync {
    pub put: Vec<SessionCopy>,
    pub remove: Vec<String>,
    pub touch: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthVerifyBody {
    name: String,
    password: String,
    client: String,
}

/// Map a request on the auth socket to a route.
pub fn route_auth(req: &Request) -> Result<AuthRoute, ApiError> {
    let segs: Vec<&str> = req.path.trim_end_matches('/').split('/').skip(1).collect();
    let m = req.method.as_str();
    let not_found = || ApiError::new(404, "not_found", format!("no such resource {}", req.path));
    match (m, segs.as_slice()) {
        ("GET", ["v1", "auth", "state"]) => Ok(AuthRoute::State),
        ("GET", ["v1", "auth", "sessions"]) => Ok(AuthRoute::Sessions),
        ("POST", ["v1", "auth", "sessions"]) => Ok(AuthRoute::SyncSessions(json_body(req)?)),
        ("GET", ["v1", "auth", "users"]) => Ok(AuthRoute::Users),
        ("POST", ["v1", "auth", "instances"]) => Ok(AuthRoute::Instances(json_body(req)?)),
        ("GET", ["v1", "auth", "users", name]) => Ok(AuthRoute::User {
            name: name.to_string(),
        }),
        ("POST", ["v1", "auth", "token"]) => {
            let b: AuthTokenBody = json_body(req)?;
            Ok(AuthRoute::Token {
                token: SecretString::new(b.token),
                client: b.client.chars().take(64).collect(),
            })
        }
        ("GET", ["v1", "auth", "oidc"]) => Ok(AuthRoute::OidcSecret),
        ("POST", ["v1", "auth", "oidc", "state"]) => Ok(AuthRoute::OidcState(json_body(req)?)),
        ("POST", ["v1", "auth", "oidc", "login"]) => Ok(AuthRoute::OidcLogin(json_body(req)?)),
        ("GET", ["v1", "auth", "tokens", user]) => Ok(AuthRoute::UserTokens {
            user: user.to_string(),
        }),
        ("POST", ["v1", "auth", "tokens"]) => Ok(AuthRoute::CreateToken(json_body(req)?)),
        ("DELETE", ["v1", "auth", "tokens", user, id]) => Ok(AuthRoute::RevokeToken {
            user: user.to_string(),
            id: id.to_string(),
        }),
        ("POST", ["v1", "auth", "verify"]) => {
            let b: AuthVerifyBody = json_body(req)?;
            // Bounded keys for the limiter, whatever the client sends.
            Ok(AuthRoute::Verify {
                name: b.name.chars().take(64).collect(),
                password: SecretString::new(b.password),
                client: b.client.chars().take(64).collect(),
            })
        }
        _ => Err(not_found()),
    }
}

fn secret(password: Option<String>, hash: Option<String>) -> Result<Secret, ApiError> {
    match (password, hash) {
        (Some(p), None) => Ok(Secret::Password(p)),
        (None, Some(h)) => Ok(Secret::Hash(h)),
        _ => Err(ApiError::new(
            400,
            "bad_json",
            "give exactly one of password, password_hash",
        )),
    }
}

fn is_true(v: Option<&str>) -> bool {
    matches!(v, Some("1") | Some("true") | Some("yes"))
}

/// Map a request to a route.
pub fn route(req: &Request) -> Result<Route, ApiError> {
    let segs: Vec<&str> = req.path.trim_end_matches('/').split('/').skip(1).collect();
    let m = req.method.as_str();
    let wrong_method = || {
        ApiError::new(
            405,
            "method_not_allowed",
            format!("{m} is not allowed on {}", req.path),
        )
    };
    match segs.as_slice() {
        ["v1", "status"] => (m == "GET")
            .then_some(Route::Status)
            .ok_or_else(wrong_method),
        ["v1", "health"] => (m == "GET")
            .then_some(Route::Health)
            .ok_or_else(wrong_method),
        ["v1", "ready"] => (m == "GET")
            .then_some(Route::Ready)
            .ok_or_else(wrong_method),
        ["v1", "opencode", "restart"] => (m == "POST")
            .then_some(Route::Restart)
            .ok_or_else(wrong_method),
        ["v1", "instances"] => (m == "GET")
            .then_some(Route::ListInstances)
            .ok_or_else(wrong_method),
        ["v1", "instances", user, "stop"] => (m == "POST")
            .then(|| Route::StopInstance {
                user: user.to_string(),
            })
            .ok_or_else(wrong_method),
        ["v1", "tokens"] => match m {
            "GET" => Ok(Route::ListTokens {
                user: req.query_param("user").map(str::to_string),
            }),
            "POST" => Ok(Route::CreateToken(json_body(req)?)),
            _ => Err(wrong_method()),
        },
        ["v1", "tokens", id] => match m {
            "DELETE" => Ok(Route::RevokeToken { id: id.to_string() }),
            _ => Err(wrong_method()),
        },
        ["v1", "users"] => match m {
            "GET" => Ok(Route::ListUsers),
            "POST" => {
                let b: NewUserBody = json_body(req)?;
                Ok(Route::AddUser {
                    name: b.name,
                    secret: secret(b.password, b.password_hash)?,
                    uid: b.uid,
                })
            }
            _ => Err(wrong_method()),
        },
        ["v1", "users", name] => match m {
            "DELETE" => Ok(Route::RemoveUser {
                name: name.to_string(),
                force: is_true(req.query_param("force")),
            }),
            _ => Err(wrong_method()),
        },
        ["v1", "users", name, action] => {
            if m != "POST" {
                return Err(wrong_method());
            }
            let name = name.to_string();
            match *action {
                "password" => {
                    let b: SecretBody = json_body(req)?;
                    Ok(Route::SetPassword {
                        name,
                        secret: secret(b.password, b.password_hash)?,
                    })
                }
                "lock" => Ok(Route::Lock { name }),
                "unlock" => Ok(Route::Unlock { name }),
                "verify" => {
                    let b: SecretBody = json_body(req)?;
                    match (b.password, b.password_hash) {
                        (Some(p), None) => Ok(Route::Verify {
                            name,
                            password: Secret::Password(p),
                        }),
                        _ => Err(ApiError::new(
                            400,
                            "bad_json",
                            "verify takes {\"password\": \"...\"}",
                        )),
                    }
                }
                _ => Err(ApiError::new(
                    404,
                    "not_found",
                    format!("no such resource {}", req.path),
                )),
            }
        }
        _ => Err(ApiError::new(
            404,
            "not_found",
            format!("no such resource {}", req.path),
        )),
    }
}

/// The `'static` form of an error code that crossed a process boundary.
pub fn known_code(code: &str) -> &'static str {
    [
        "no_such_user",
        "already_exists",
        "invalid",
        "last_user",
        "auth_failed",
        "manifest_invalid",
        "rate_limited",
        "timeout",
        "unavailable",
    ]
    .into_iter()
    .find(|c| *c == code)
    .unwrap_or("internal")
}

/// Map a users error to an API error.
pub fn users_error(e: &crate::users::UsersError) -> ApiError {
    use crate::users::UsersError as E;
    let (status, code) = match e {
        E::NoSuchUser(_) => (404, "no_such_user"),
        E::AlreadyExists(_) => (409, "already_exists"),
        E::Invalid { .. } => (422, "invalid"),
        E::LastUser(..) => (409, "last_user"),
        E::AuthFailed => (401, "auth_failed"),
        E::Manifest { .. } => (409, "manifest_invalid"),
        E::Io { .. } | E::Tool { .. } | E::OutOfSync(_) => (500, "internal"),
    };
    ApiError::new(status, code, e.to_string())
}

pub use crate::ratelimit::RateLimiter;

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, path: &str, body: &str) -> Request {
        let (path, query) = match path.split_once('?') {
            Some((p, q)) => (p.to_string(), Some(q.to_string())),
            None => (path.to_string(), None),
        };
        Request {
            method: method.into(),
            path,
            query,
            headers: vec![],
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn routes_every_endpoint() {
        let table: Vec<(&str, &str, &str, Route)> = vec![
            ("GET", "/v1/status", "", Route::Status),
            ("GET", "/v1/health", "", Route::Health),
            ("GET", "/v1/ready/", "", Route::Ready),
            ("GET", "/v1/users", "", Route::ListUsers),
            (
                "POST",
                "/v1/users",
                r#"{"name":"a","password":"pw"}"#,
                Route::AddUser {
                    name: "a".into(),
                    secret: Secret::Password("pw".into()),
                    uid: None,
                },
            ),
            (
                "POST",
                "/v1/users",
                r#"{"name":"a","password_hash":"h","uid":1500}"#,
                Route::AddUser {
                    name: "a".into(),
                    secret: Secret::Hash("h".into()),
                    uid: Some(1500),
                },
            ),
            (
                "DELETE",
                "/v1/users/a",
                "",
                Route::RemoveUser {
                    name: "a".into(),
                    force: false,
                },
            ),
            (
                "DELETE",
                "/v1/users/a?force=true",
                "",
                Route::RemoveUser {
                    name: "a".into(),
                    force: true,
                },
            ),
            (
                "POST",
                "/v1/users/a/password",
                r#"{"password":"x"}"#,
                Route::SetPassword {
                    name: "a".into(),
                    secret: Secret::Password("x".into()),
                },
            ),
            (
                "POST",
                "/v1/users/a/lock",
                "",
                Route::Lock { name: "a".into() },
            ),
            (
                "POST",
                "/v1/users/a/unlock",
                "",
                Route::Unlock { name: "a".into() },
            ),
            (
                "POST",
                "/v1/users/a/verify",
                r#"{"password":"x"}"#,
                Route::Verify {
                    name: "a".into(),
                    password: Secret::Password("x".into()),
                },
            ),
            ("POST", "/v1/opencode/restart", "", Route::Restart),
            ("GET", "/v1/instances", "", Route::ListInstances),
            ("GET", "/v1/tokens", "", Route::ListTokens { user: None }),
            (
                "GET",
                "/v1/tokens?user=alice",
                "",
                Route::ListTokens {
                    user: Some("alice".into()),
                },
            ),
            (
                "POST",
                "/v1/tokens",
                r#"{"user":"alice","name":"ci","expires":"30d"}"#,
                Route::CreateToken(NewToken {
                    user: "alice".into(),
                    name: "ci".into(),
                    expires: Some("30d".into()),
                }),
            ),
            (
                "DELETE",
                "/v1/tokens/0123456789ab",
                "",
                Route::RevokeToken {
                    id: "0123456789ab".into(),
                },
            ),
            (
                "POST",
                "/v1/instances/alice/stop",
                "",
                Route::StopInstance {
                    user: "alice".into(),
                },
            ),
        ];
        for (m, p, b, want) in table {
            assert_eq!(route(&req(m, p, b)).unwrap(), want, "{m} {p}");
        }
    }

    #[test]
    fn errors_have_status_and_code() {
        let table = [
            ("GET", "/nope", "", 404, "not_found"),
            (
                "GET",
                "/v1/users/a/frobnicate",
                "",
                405,
                "method_not_allowed",
            ),
            ("POST", "/v1/users/a/frobnicate", "", 404, "not_found"),
            ("PUT", "/v1/status", "", 405, "method_not_allowed"),
            ("POST", "/v1/users", "not json", 400, "bad_json"),
            ("POST", "/v1/users", r#"{"name":"a"}"#, 400, "bad_json"),
            (
                "POST",
                "/v1/users",
                r#"{"name":"a","password":"x","password_hash":"y"}"#,
                400,
                "bad_json",
            ),
            (
                "POST",
                "/v1/users",
                r#"{"name":"a","password":"x","shell":"/bin/sh"}"#,
                400,
                "bad_json",
            ),
            (
                "POST",
                "/v1/users/a/verify",
                r#"{"password_hash":"x"}"#,
                400,
                "bad_json",
            ),
            ("GET", "/v1/users/a/lock", "", 405, "method_not_allowed"),
            ("GET", "/v1/instances/a/stop", "", 405, "method_not_allowed"),
            ("DELETE", "/v1/instances", "", 405, "method_not_allowed"),
        ];
        for (m, p, b, status, code) in table {
            let e = route(&req(m, p, b)).unwrap_err();
            assert_eq!((e.status, e.code), (status, code), "{m} {p}");
            let r = e.response();
            let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
            assert_eq!(v["code"], code);
            assert!(v["error"].is_string());
        }
    }

    #[test]
    fn bad_json_errors_do_not_echo_secrets() {
        let e = route(&req(
            "POST",
            "/v1/users",
            r#"{"name":"a","password":"hunter2-secret","bogus":1}"#,
        ))
        .unwrap_err();
        assert!(!e.message.contains("hunter2-secret"), "{}", e.message);
        assert!(!format!("{:?}", Secret::Password("hunter2".into())).contains("hunter2"));
        // A password of the wrong JSON type is not quoted back either.
        for body in [
            r#"{"name":"a","password":12345678}"#,
            r#"{"name":"a","password":["87654321"]}"#,
            r#"{"name":"a","password":"x"#,
        ] {
            let e = route(&req("POST", "/v1/users", body)).unwrap_err();
            assert!(
                !e.message.contains("12345678") && !e.message.contains("87654321"),
                "{}",
                e.message
            );
            assert!(e.message.contains("line 1"), "{}", e.message);
        }
    }
}

/// Stable-toolchain stand-in for the `admin_request` cargo-fuzz target: mutated requests go
/// through parsing and routing without a panic.
#[cfg(test)]
mod mutation_tests {
    use super::super::http;
    use super::*;

    #[test]
    fn mutated_requests_never_panic() {
        let seeds: [&[u8]; 4] = [
            b"GET /v1/status HTTP/1.1\r\nHost: x\r\n\r\n",
            b"POST /v1/users HTTP/1.1\r\nContent-Length: 42\r\n\r\n{\"name\":\"alice\",\"password\":\"longenough\"}",
            b"DELETE /v1/users/alice?force=true HTTP/1.1\r\n\r\n",
            b"POST /v1/users/a/verify HTTP/1.1\r\nContent-Length: 15\r\n\r\n{\"password\":\"\"}",
        ];
        let mut x: u64 = 0x2545F4914F6CDD1D;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for i in 0..50_000 {
            let mut bytes = seeds[i % seeds.len()].to_vec();
            for _ in 0..1 + next() % 4 {
                let pos = (next() as usize) % (bytes.len() + 1);
                match next() % 3 {
                    0 if !bytes.is_empty() => {
                        bytes.remove(pos.min(bytes.len() - 1));
                    }
                    1 => bytes.insert(pos, (next() & 0xff) as u8),
                    _ => {
                        if let Some(b) = bytes.get_mut(pos) {
                            *b = (next() & 0xff) as u8;
                        }
                    }
                }
            }
            if let Ok(req) = http::read_request(&mut &bytes[..]) {
                let _ = route(&req);
            }
        }
    }
}
