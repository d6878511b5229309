//! Single sign-on at the proxy: OpenID Connect's authorization code flow for browsers (PKCE
//! S256, `state` and `nonce` bound to the browser by a short-lived cookie) and the device flow
//! (RFC 8628) relayed for terminals and scripts. The provider's endpoints come from discovery
//! (retried with backoff; its reachability is told to PID 1 for `status`); ID tokens are
//! checked with `openidconnect` (signature against the JWKS with an algorithm allowlist, `iss`,
//! `aud`, `azp`, `exp`, `iat`, `nonce`; the JWKS re-read when a `kid` is unknown). Which
//! container user an identity becomes is PID 1's decision; the client secret comes from PID 1.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use openidconnect::core::{
    CoreGenderClaim, CoreJsonWebKeySet, CoreJweContentEncryptionAlgorithm, CoreJwsSigningAlgorithm,
};
use openidconnect::{
    AdditionalClaims, ClientId, ClientSecret, IdToken, IdTokenVerifier, IssuerUrl, Nonce,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::auth::AuthClient;

/// Largest answer read from the provider.
const MAX_ANSWER: usize = 1024 * 1024;
/// Time for one call to the provider (connect, send, whole answer).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// A browser has this long from the redirect to the provider to the callback.
pub const FLOW_TTL: Duration = Duration::from_secs(600);
/// Most sign-ins in progress at once (the oldest are dropped beyond).
const MAX_FLOWS: usize = 10_000;
/// Most device logins in progress at once, and per client address.
const MAX_DEVICE_FLOWS: usize = 1_000;
const MAX_DEVICE_FLOWS_PER_CLIENT: usize = 10;
/// The JWKS is re-read for an unknown `kid` at most this often.
const JWKS_REFRESH_MIN: Duration = Duration::from_secs(10);
/// The cookie that binds a sign-in's `state` to the browser that began it.
pub const FLOW_COOKIE: &str = "occ_oidc";

/// What the proxy is told on its command line (nothing secret).
#[derive(Debug, Clone)]
pub struct OidcSettings {
    pub issuer: String,
    pub client_id: String,
    /// `<public_url>/_occ/oidc/callback`.
    pub redirect_uri: String,
    pub scopes: Vec<String>,
    pub username_claim: String,
    pub groups_claim: String,
    pub provider_name: String,
    pub password_login: bool,
}

/// The provider as discovered.
#[derive(Debug, Clone)]
pub struct Provider {
    pub authorization_endpoint: String,
    pub token_endpoint: String,
    pub userinfo_endpoint: Option<String>,
    pub jwks_uri: String,
    pub device_endpoint: Option<String>,
    pub jwks: CoreJsonWebKeySet,
    pub jwks_at: Instant,
    /// It sends `iss` with its answers (RFC 9207): then one without is refused.
    pub iss_parameter: bool,
}

/// A browser sign-in in progress, by `state`.
struct Flow {
    /// SHA-256 of the cookie value that binds it to the browser.
    binding: String,
    nonce: String,
    verifier: String,
    next: String,
    created: Instant,
}

/// A device login in progress, by the proxy's own device code.
struct DeviceFlow {
    provider_code: String,
    client: String,
    expires: Instant,
    interval: Duration,
    last_poll: Option<Instant>,
}

/// Everything the proxy keeps for single sign-on.
pub struct Oidc {
    pub settings: OidcSettings,
    provider: Mutex<Option<Provider>>,
    /// The last discovery problem (shown on the login page and in status).
    pub last_error: Mutex<Option<String>>,
    flows: Mutex<HashMap<String, Flow>>,
    devices: Mutex<HashMap<String, DeviceFlow>>,
    roots: Arc<rustls::RootCertStore>,
}

/// Claims beyond the standard ones (the groups claim, a custom username claim).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Extra {
    #[serde(flatten)]
    pub other: HashMap<String, serde_json::Value>,
}

impl AdditionalClaims for Extra {}

type Token =
    IdToken<Extra, CoreGenderClaim, CoreJweContentEncryptionAlgorithm, CoreJwsSigningAlgorithm>;

/// Who signed in, as the provider says (verified).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Who {
    pub sub: String,
    pub username: Option<String>,
    pub groups: Vec<String>,
}

impl Who {
    /// The identity PID 1 maps onto a container user.
    pub fn identity(&self, issuer: &str) -> crate::oidc::Identity {
        crate::oidc::Identity {
            issuer: issuer.to_string(),
            sub: self.sub.clone(),
            username: self.username.clone(),
            groups: self.groups.clone(),
        }
    }
}

/// An answer from the provider.
pub struct Fetched {
    pub status: u16,
    pub body: Vec<u8>,
}

/// The system's CA bundle (for https providers); empty when there is none.
pub fn system_roots() -> rustls::RootCertStore {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for path in [
        "/etc/ssl/certs/ca-certificates.crt",
        "/etc/pki/tls/certs/ca-bundle.crt",
    ] {
        if let Ok(pem) = std::fs::read(path) {
            for c in rustls::pki_types::CertificateDer::pem_slice_iter(&pem).flatten() {
                let _ = roots.add(c);
            }
            break;
        }
    }
    roots
}

/// One call to the provider: http on loopback or https (verified against the system's CAs),
/// no redirects followed, at most [`MAX_ANSWER`] bytes, within [`CALL_TIMEOUT`].
pub async fn fetch(
    roots: &Arc<rustls::RootCertStore>,
    method: &str,
    url: &str,
    headers: &[(&str, String)],
    body: Option<String>,
) -> Result<Fetched, String> {
    let work = async {
        let uri: hyper::Uri = url.parse().map_err(|_| format!("not a URL: {url}"))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(format!("not http(s): {url}")),
        };
        let host = uri
            .host()
            .ok_or("no host")?
            .trim_matches(['[', ']'])
            .to_string();
        if !https && !crate::oidc_url::is_loopback(&host) {
            return Err(format!("{url}: http only on loopback"));
        }
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| format!("cannot connect to {host}:{port}: {e}"))?;
        let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
        let authority = uri.authority().map(|a| a.to_string()).unwrap_or_default();
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, authority)
            .header(hyper::header::ACCEPT, "application/json");
        for (k, v) in headers {
            req = req.header(*k, v.as_str());
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| e.to_string())?;
        if https {
            let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
                #[allow(deprecated)]
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots.clone())
            .with_no_client_auth();
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            let name =
                rustls::pki_types::ServerName::try_from(host.clone()).map_err(|e| e.to_string())?;
            let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS with {host}: {e}"))?;
            send(TokioIo::new(tls), req).await
        } else {
            send(TokioIo::new(tcp), req).await
        }
    };
    tokio::time::timeout(CALL_TIMEOUT, work)
        .await
        .map_err(|_| format!("no answer from {url} within {}s", CALL_TIMEOUT.as_secs()))?
}

async fn send<I>(io: I, req: hyper::Request<Full<Bytes>>) -> Result<Fetched, String>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let res = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = res.status().as_u16();
    let body = Limited::new(res.into_body(), MAX_ANSWER)
        .collect()
        .await
        .map_err(|_| format!("an answer larger than {} KiB", MAX_ANSWER / 1024))?
        .to_bytes()
        .to_vec();
    Ok(Fetched { status, body })
}

/// Does `raw` parse as an ID token (a JWS with claims)? Nothing is verified; for the fuzz
/// target and tests of hostile input.
pub fn parses_as_id_token(raw: &str) -> bool {
    serde_json::from_value::<Token>(serde_json::Value::String(raw.to_string())).is_ok()
}

/// Base64url without padding of SHA-256 (PKCE S256, cookie bindings).
pub fn s256(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(text.as_bytes()))
}

/// The authorization request URL (pure).
pub fn authorization_url(
    endpoint: &str,
    s: &OidcSettings,
    state: &str,
    nonce: &str,
    verifier: &str,
) -> String {
    let query: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("response_type", "code")
        .append_pair("client_id", &s.client_id)
        .append_pair("redirect_uri", &s.redirect_uri)
        .append_pair("scope", &s.scopes.join(" "))
        .append_pair("state", state)
        .append_pair("nonce", nonce)
        .append_pair("code_challenge", &s256(verifier))
        .append_pair("code_challenge_method", "S256")
        .finish();
    let sep = if endpoint.contains('?') { '&' } else { '?' };
    format!("{endpoint}{sep}{query}")
}

/// A claim as a string.
fn claim_str(v: Option<&serde_json::Value>) -> Option<String> {
    v.and_then(|v| v.as_str()).map(str::to_string)
}

/// A claim as a list of strings (a single string counts as one group).
fn claim_list(v: Option<&serde_json::Value>) -> Vec<String> {
    match v {
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_str().map(str::to_string))
            .collect(),
        Some(serde_json::Value::String(s)) => vec![s.clone()],
        _ => Vec::new(),
    }
}

/// Why a sign-in failed: what the person is shown, and whether the provider is to blame.
#[derive(Debug)]
pub struct Failure {
    pub status: u16,
    pub message: String,
}

fn fail(status: u16, message: impl Into<String>) -> Failure {
    Failure {
        status,
        message: message.into(),
    }
}

impl Oidc {
    pub fn new(settings: OidcSettings) -> Oidc {
        Oidc {
            settings,
            provider: Mutex::new(None),
            last_error: Mutex::new(None),
            flows: Mutex::new(HashMap::new()),
            devices: Mutex::new(HashMap::new()),
            roots: Arc::new(system_roots()),
        }
    }

    /// The provider, when discovered.
    pub fn provider(&self) -> Option<Provider> {
        self.provider.lock().ok().and_then(|p| p.clone())
    }

    /// Is the provider usable now (discovered and answering)?
    pub fn available(&self) -> bool {
        self.provider().is_some() && self.last_error.lock().map(|e| e.is_none()).unwrap_or(false)
    }

    /// Discover now and keep what was found (for tests; the proxy runs
    /// [`Oidc::keep_discovered`]).
    pub async fn discover_now(&self) -> Result<(), String> {
        let p = self.discover().await?;
        if let Ok(mut slot) = self.provider.lock() {
            *slot = Some(p);
        }
        Ok(())
    }

    /// Read discovery and the JWKS.
    async fn discover(&self) -> Result<Provider, String> {
        let url = format!(
            "{}/.well-known/openid-configuration",
            self.settings.issuer.trim_end_matches('/')
        );
        let a = fetch(&self.roots, "GET", &url, &[], None).await?;
        if a.status != 200 {
            return Err(format!("{url} answered {}", a.status));
        }
        let v: serde_json::Value =
            serde_json::from_slice(&a.body).map_err(|e| format!("{url}: not JSON ({e})"))?;
        if v["issuer"].as_str() != Some(self.settings.issuer.as_str()) {
            return Err(format!(
                "{url} names issuer {:?}, not {:?}",
                v["issuer"], self.settings.issuer
            ));
        }
        let endpoint = |key: &str| -> Result<Option<String>, String> {
            match v[key].as_str() {
                None => Ok(None),
                Some(e) => crate::oidc_url::check(e).map(|()| Some(e.to_string())),
            }
        };
        let need = |key: &str| endpoint(key)?.ok_or_else(|| format!("discovery has no {key}"));
        let jwks_uri = need("jwks_uri")?;
        let jwks = self.read_jwks(&jwks_uri).await?;
        Ok(Provider {
            authorization_endpoint: need("authorization_endpoint")?,
            token_endpoint: need("token_endpoint")?,
            userinfo_endpoint: endpoint("userinfo_endpoint")?,
            device_endpoint: endpoint("device_authorization_endpoint")?,
            iss_parameter: v["authorization_response_iss_parameter_supported"] == true,
            jwks_uri,
            jwks,
            jwks_at: Instant::now(),
        })
    }

    async fn read_jwks(&self, uri: &str) -> Result<CoreJsonWebKeySet, String> {
        let a = fetch(&self.roots, "GET", uri, &[], None).await?;
        if a.status != 200 {
            return Err(format!("{uri} answered {}", a.status));
        }
        serde_json::from_slice(&a.body).map_err(|e| format!("{uri}: not a JWKS ({e})"))
    }

    /// Discover at start and keep the provider fresh: retries with backoff (1 s to 60 s)
    /// while it is unreachable, a new look every 10 minutes once it answers; every change of
    /// reachability is told to PID 1 (status).
    pub async fn keep_discovered(self: Arc<Self>, auth: AuthClient) {
        let mut backoff = Duration::from_secs(1);
        let mut told: Option<(bool, Option<String>)> = None;
        loop {
            let result = self.discover().await;
            let (wait, now) = match result {
                Ok(p) => {
                    let device = p.device_endpoint.is_some();
                    if let Ok(mut slot) = self.provider.lock() {
                        *slot = Some(p);
                    }
                    if let Ok(mut e) = self.last_error.lock() {
                        *e = None;
                    }
                    backoff = Duration::from_secs(1);
                    (Duration::from_secs(600), (true, None, device))
                }
                Err(e) => {
                    if let Ok(mut slot) = self.last_error.lock() {
                        *slot = Some(e.clone());
                    }
                    let device = self.provider().is_some_and(|p| p.device_endpoint.is_some());
                    let w = backoff;
                    backoff = (backoff * 2).min(Duration::from_secs(60));
                    (w, (false, Some(e), device))
                }
            };
            let state = (now.0, now.1.clone());
            if told.as_ref() != Some(&state) {
                match &now.1 {
                    None => log::info!("oidc: {} answers", self.settings.issuer),
                    Some(e) => log::warn!("oidc: {} unreachable: {e}", self.settings.issuer),
                }
                if auth
                    .oidc_state(now.0, now.1.as_deref(), now.2)
                    .await
                    .is_ok()
                {
                    told = Some(state);
                }
            }
            tokio::time::sleep(wait).await;
        }
    }

    /// Begin a browser sign-in: the URL to send it to, and the binding cookie's value.
    pub fn begin(&self, next: &str) -> Result<(String, String), Failure> {
        let p = self.provider().ok_or_else(|| {
            fail(
                503,
                format!(
                    "{} cannot be reached right now; sign in with your password, or try again shortly",
                    self.settings.provider_name
                ),
            )
        })?;
        let rnd = || super::session::new_token().map_err(|e| fail(500, e.to_string()));
        let (state, nonce, verifier, binding) = (rnd()?, rnd()?, rnd()?, rnd()?);
        let url = authorization_url(
            &p.authorization_endpoint,
            &self.settings,
            &state,
            &nonce,
            &verifier,
        );
        if let Ok(mut f) = self.flows.lock() {
            let now = Instant::now();
            f.retain(|_, fl| now.duration_since(fl.created) < FLOW_TTL);
            if f.len() >= MAX_FLOWS {
                if let Some(oldest) = f
                    .iter()
                    .min_by_key(|(_, fl)| fl.created)
                    .map(|(k, _)| k.clone())
                {
                    f.remove(&oldest);
                }
            }
            f.insert(
                state,
                Flow {
                    binding: s256(&binding),
                    nonce,
                    verifier,
                    next: next.to_string(),
                    created: now,
                },
            );
        }
        Ok((url, binding))
    }

    /// The callback: check `state` (once, bound to this browser), `iss`, exchange the code,
    /// verify the ID token and read userinfo. The identity and where to go next.
    pub async fn finish(
        &self,
        auth: &AuthClient,
        query: &str,
        binding: Option<&str>,
    ) -> Result<(Who, String), Failure> {
        let param = |k: &str| super::request::form_value(query, k);
        let too_long = query.len() > 8192;
        let state = param("state").filter(|s| !too_long && s.len() <= 512);
        // One use: the flow is gone whatever happens next.
        let flow = state
            .as_deref()
            .and_then(|s| self.flows.lock().ok().and_then(|mut f| f.remove(s)))
            .filter(|f| f.created.elapsed() < FLOW_TTL)
            .ok_or_else(|| {
                fail(
                    400,
                    "This sign-in link has expired or was already used. Start again.",
                )
            })?;
        if binding.map(s256).as_deref() != Some(flow.binding.as_str()) {
            return Err(fail(
                400,
                "This sign-in was started in another browser (or its cookie is gone). Start again.",
            ));
        }
        if let Some(e) = param("error") {
            let why = param("error_description").unwrap_or_default();
            // What the provider (or anyone with a flow) put there goes to the page and the
            // log: no line breaks or other control characters.
            let plain = |s: &str, n: usize| -> String {
                s.chars().filter(|c| !c.is_control()).take(n).collect()
            };
            return Err(fail(
                403,
                format!(
                    "{} said: {} {}",
                    self.settings.provider_name,
                    plain(&e, 100),
                    plain(&why, 300)
                ),
            ));
        }
        // RFC 9207: a provider that says it sends `iss` must send the right one.
        let iss_required = self.provider().is_some_and(|p| p.iss_parameter);
        match param("iss") {
            Some(iss) if iss != self.settings.issuer => {
                return Err(fail(400, "The answer came from another provider."));
            }
            None if iss_required => {
                return Err(fail(
                    400,
                    "The answer did not say which provider it came from.",
                ));
            }
            _ => {}
        }
        let code = param("code")
            .filter(|c| !c.is_empty() && c.len() <= 4096)
            .ok_or_else(|| fail(400, "The provider sent no authorization code."))?;
        let form = form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "authorization_code")
            .append_pair("code", &code)
            .append_pair("redirect_uri", &self.settings.redirect_uri)
            .append_pair("code_verifier", &flow.verifier)
            .finish();
        let tokens = self.token_request(auth, form).await?;
        let who = self.verify(auth, &tokens, Some(&flow.nonce)).await?;
        Ok((who, flow.next))
    }

    /// POST `form` to one of the provider's endpoints (`what`, for errors) with the client's
    /// credentials (client_secret_basic; the secret comes from PID 1).
    async fn post_form(
        &self,
        auth: &AuthClient,
        url: &str,
        form: String,
        what: &str,
    ) -> Result<Fetched, Failure> {
        let secret = auth.oidc_secret().await.map_err(|()| {
            fail(
                503,
                "occ-init has no client secret for the provider (see `occ-init status`).",
            )
        })?;
        let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        let basic = crate::supervise::probe::base64(
            format!("{}:{}", enc(&self.settings.client_id), enc(secret.expose())).as_bytes(),
        );
        fetch(
            &self.roots,
            "POST",
            url,
            &[
                (
                    "content-type",
                    "application/x-www-form-urlencoded".to_string(),
                ),
                ("authorization", format!("Basic {basic}")),
            ],
            Some(form),
        )
        .await
        .map_err(|e| fail(502, format!("The provider's {what} failed: {e}")))
    }

    /// POST to the token endpoint with the client's credentials (client_secret_basic).
    async fn token_request(
        &self,
        auth: &AuthClient,
        form: String,
    ) -> Result<serde_json::Value, Failure> {
        let p = self
            .provider()
            .ok_or_else(|| fail(503, "The provider cannot be reached right now."))?;
        let a = self
            .post_form(auth, &p.token_endpoint, form, "token endpoint")
            .await?;
        let v: serde_json::Value = serde_json::from_slice(&a.body).map_err(|_| {
            fail(
                502,
                format!(
                    "The provider's token endpoint answered {} without JSON.",
                    a.status
                ),
            )
        })?;
        if a.status != 200 {
            return Err(Failure {
                status: if a.status == 400 { 400 } else { 502 },
                message: v["error"]
                    .as_str()
                    .unwrap_or("token request refused")
                    .chars()
                    .take(100)
                    .collect(),
            });
        }
        Ok(v)
    }

    /// Verify the ID token of a token answer (and read userinfo for claims it lacks).
    async fn verify(
        &self,
        auth: &AuthClient,
        tokens: &serde_json::Value,
        nonce: Option<&str>,
    ) -> Result<Who, Failure> {
        let secret = auth
            .oidc_secret()
            .await
            .map_err(|()| fail(503, "no client secret"))?;
        self.verify_with(secret.expose(), tokens, nonce).await
    }

    /// [`Oidc::verify`] with the client secret given.
    pub async fn verify_with(
        &self,
        secret: &str,
        tokens: &serde_json::Value,
        nonce: Option<&str>,
    ) -> Result<Who, Failure> {
        let raw = tokens["id_token"]
            .as_str()
            .filter(|t| t.len() <= 64 * 1024)
            .ok_or_else(|| fail(502, "The provider sent no ID token."))?;
        let token: Token = serde_json::from_value(serde_json::Value::String(raw.to_string()))
            .map_err(|_| fail(502, "The provider's ID token does not parse."))?;
        let mut provider = self
            .provider()
            .ok_or_else(|| fail(503, "The provider cannot be reached."))?;
        let mut refreshed = false;
        let claims = loop {
            let verifier: IdTokenVerifier<openidconnect::core::CoreJsonWebKey> =
                IdTokenVerifier::new_confidential_client(
                    ClientId::new(self.settings.client_id.clone()),
                    ClientSecret::new(secret.to_string()),
                    IssuerUrl::new(self.settings.issuer.clone())
                        .map_err(|_| fail(500, "issuer"))?,
                    provider.jwks.clone(),
                )
                .set_allowed_algs([
                    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
                    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha384,
                    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha512,
                    CoreJwsSigningAlgorithm::RsaSsaPssSha256,
                    CoreJwsSigningAlgorithm::RsaSsaPssSha384,
                    CoreJwsSigningAlgorithm::RsaSsaPssSha512,
                    CoreJwsSigningAlgorithm::EcdsaP256Sha256,
                    CoreJwsSigningAlgorithm::EcdsaP384Sha384,
                    CoreJwsSigningAlgorithm::EdDsa,
                ])
                // 60 s of leeway on both sides of the provider's clock.
                .set_time_fn(|| chrono::Utc::now() - chrono::Duration::seconds(60))
                .set_issue_time_verifier_fn(|iat| {
                    if iat > chrono::Utc::now() + chrono::Duration::seconds(60) {
                        Err(format!("issued in the future ({iat})"))
                    } else {
                        Ok(())
                    }
                });
            let checked = match nonce {
                Some(n) => token.claims(&verifier, &Nonce::new(n.to_string())).cloned(),
                None => token.claims(&verifier, |_: Option<&Nonce>| Ok(())).cloned(),
            };
            match checked {
                Ok(c) => break c,
                Err(openidconnect::ClaimsVerificationError::SignatureVerification(
                    openidconnect::SignatureVerificationError::NoMatchingKey,
                )) if !refreshed && provider.jwks_at.elapsed() >= JWKS_REFRESH_MIN => {
                    // An unknown kid: the provider rotated its keys.
                    refreshed = true;
                    log::info!(
                        "oidc: an ID token names an unknown key; re-reading the provider's keys"
                    );
                    let jwks = self.read_jwks(&provider.jwks_uri).await.map_err(|e| {
                        fail(502, format!("cannot re-read the provider's keys: {e}"))
                    })?;
                    provider.jwks = jwks;
                    provider.jwks_at = Instant::now();
                    if let Ok(mut slot) = self.provider.lock() {
                        *slot = Some(provider.clone());
                    }
                }
                Err(e) => {
                    log::warn!("oidc: ID token refused: {e}");
                    return Err(fail(
                        403,
                        "The provider's ID token did not verify (see the log).",
                    ));
                }
            }
        };
        let sub = claims.subject().as_str().to_string();
        let extra = &claims.additional_claims().other;
        let claim = |name: &str| -> Option<String> {
            match name {
                "preferred_username" => claims.preferred_username().map(|u| u.as_str().to_string()),
                "email" => claims.email().map(|e| e.as_str().to_string()),
                "sub" => Some(sub.clone()),
                other => claim_str(extra.get(other)),
            }
        };
        let mut username = claim(&self.settings.username_claim);
        let mut groups = claim_list(extra.get(&self.settings.groups_claim));
        let has_groups = extra.contains_key(&self.settings.groups_claim);
        if username.is_none() || !has_groups {
            if let (Some(ui), Some(at)) = (
                provider.userinfo_endpoint.as_deref(),
                tokens["access_token"].as_str(),
            ) {
                let a = fetch(
                    &self.roots,
                    "GET",
                    ui,
                    &[("authorization", format!("Bearer {at}"))],
                    None,
                )
                .await
                .map_err(|e| fail(502, format!("The provider's userinfo failed: {e}")))?;
                let v: serde_json::Value = serde_json::from_slice(&a.body)
                    .map_err(|_| fail(502, "The provider's userinfo is not JSON."))?;
                if a.status != 200 || v["sub"].as_str() != Some(sub.as_str()) {
                    return Err(fail(
                        502,
                        "The provider's userinfo does not match the ID token.",
                    ));
                }
                if username.is_none() {
                    username = claim_str(v.get(&self.settings.username_claim));
                }
                if !has_groups {
                    groups = claim_list(v.get(&self.settings.groups_claim));
                }
            }
        }
        Ok(Who {
            sub,
            username,
            groups,
        })
    }

    /// `POST /_occ/device/code`: ask the provider for a device code; answer with the proxy's
    /// own code (the provider's stays here) and what the person needs.
    pub async fn device_code(
        &self,
        auth: &AuthClient,
        client: &str,
    ) -> Result<serde_json::Value, Failure> {
        let p = self
            .provider()
            .ok_or_else(|| fail(503, "The provider cannot be reached right now."))?;
        let Some(endpoint) = p.device_endpoint.clone() else {
            return Err(fail(
                501,
                "The provider offers no device login (no device_authorization_endpoint).",
            ));
        };
        {
            let mut d = self.devices.lock().map_err(|_| fail(500, "device flows"))?;
            let now = Instant::now();
            d.retain(|_, f| f.expires > now);
            // Full for this address (every local client shares one): the oldest of its
            // flows makes room, so nobody can keep everyone else out by asking for codes.
            let mine: Vec<(String, Instant)> = d
                .iter()
                .filter(|(_, f)| f.client == client)
                .map(|(k, f)| (k.clone(), f.expires))
                .collect();
            if mine.len() >= MAX_DEVICE_FLOWS_PER_CLIENT {
                if let Some((oldest, _)) = mine.iter().min_by_key(|(_, e)| *e) {
                    d.remove(oldest);
                }
            }
            if d.len() >= MAX_DEVICE_FLOWS {
                return Err(fail(
                    429,
                    "Too many device logins in progress; try again later.",
                ));
            }
        }
        let form = form_urlencoded::Serializer::new(String::new())
            .append_pair("client_id", &self.settings.client_id)
            .append_pair("scope", &self.settings.scopes.join(" "))
            .finish();
        let a = self
            .post_form(auth, &endpoint, form, "device endpoint")
            .await?;
        let v: serde_json::Value = serde_json::from_slice(&a.body)
            .map_err(|_| fail(502, "The provider's device endpoint did not answer JSON."))?;
        let provider_code = v["device_code"].as_str().filter(|c| c.len() <= 4096);
        let (Some(provider_code), Some(user_code), Some(uri)) = (
            provider_code,
            v["user_code"].as_str(),
            v["verification_uri"].as_str(),
        ) else {
            return Err(fail(
                502,
                format!(
                    "The provider's device endpoint answered {} without a device code.",
                    a.status
                ),
            ));
        };
        let expires_in = v["expires_in"].as_u64().unwrap_or(600).clamp(30, 3600);
        // oidc-provider sends no interval: RFC 8628's default is 5 s.
        let interval = v["interval"].as_u64().unwrap_or(5).clamp(1, 60);
        let own = super::session::new_token().map_err(|e| fail(500, e.to_string()))?;
        if let Ok(mut d) = self.devices.lock() {
            d.insert(
                s256(&own),
                DeviceFlow {
                    provider_code: provider_code.to_string(),
                    client: client.to_string(),
                    expires: Instant::now() + Duration::from_secs(expires_in),
                    interval: Duration::from_secs(interval),
                    last_poll: None,
                },
            );
        }
        Ok(serde_json::json!({
            "device_code": own,
            "user_code": user_code,
            "verification_uri": uri,
            "verification_uri_complete": v["verification_uri_complete"],
            "interval": interval,
            "expires_in": expires_in,
        }))
    }

    /// `POST /_occ/device/token`: poll the provider once for `device_code`. `Ok(Some(who))`
    /// when approved (the code is used up), `Err` with RFC 8628's error otherwise.
    pub async fn device_token(
        &self,
        auth: &AuthClient,
        device_code: &str,
    ) -> Result<Who, (u16, &'static str, String)> {
        let key = s256(device_code);
        let provider_code = {
            let mut d = self
                .devices
                .lock()
                .map_err(|_| (500, "server_error", String::new()))?;
            let now = Instant::now();
            let Some(f) = d.get_mut(&key) else {
                return Err((400, "invalid_grant", "unknown or used device code".into()));
            };
            if f.expires <= now {
                d.remove(&key);
                return Err((400, "expired_token", "the device code expired".into()));
            }
            if f.last_poll
                .is_some_and(|t| now.duration_since(t) < f.interval)
            {
                f.interval += Duration::from_secs(5);
                f.last_poll = Some(now);
                return Err((
                    400,
                    "slow_down",
                    format!("poll at most every {} s", f.interval.as_secs()),
                ));
            }
            f.last_poll = Some(now);
            f.provider_code.clone()
        };
        let form = form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "urn:ietf:params:oauth:grant-type:device_code")
            .append_pair("device_code", &provider_code)
            .append_pair("client_id", &self.settings.client_id)
            .finish();
        match self.token_request(auth, form).await {
            Ok(tokens) => {
                // Usable once, whatever the ID token says.
                if let Ok(mut d) = self.devices.lock() {
                    d.remove(&key);
                }
                self.verify(auth, &tokens, None)
                    .await
                    .map_err(|f| (403, "access_denied", f.message))
            }
            Err(f) if f.status == 400 => {
                let code = match f.message.as_str() {
                    "authorization_pending" => "authorization_pending",
                    "slow_down" => "slow_down",
                    "expired_token" => "expired_token",
                    "access_denied" => "access_denied",
                    _ => "invalid_grant",
                };
                if matches!(code, "expired_token" | "access_denied" | "invalid_grant") {
                    if let Ok(mut d) = self.devices.lock() {
                        d.remove(&key);
                    }
                }
                if code == "slow_down" {
                    if let Ok(mut d) = self.devices.lock() {
                        if let Some(f) = d.get_mut(&key) {
                            f.interval += Duration::from_secs(5);
                        }
                    }
                }
                Err((400, code, f.message))
            }
            Err(f) => Err((502, "server_error", f.message)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> OidcSettings {
        OidcSettings {
            issuer: "https://idp.example".into(),
            client_id: "occ".into(),
            redirect_uri: "https://ide.example/_occ/oidc/callback".into(),
            scopes: vec!["openid".into(), "groups".into()],
            username_claim: "preferred_username".into(),
            groups_claim: "groups".into(),
            provider_name: "IdP".into(),
            password_login: true,
        }
    }

    #[test]
    fn the_authorization_request_carries_pkce_state_and_nonce() {
        let url = authorization_url("https://idp.example/auth", &settings(), "st", "no", "ver");
        assert!(
            url.starts_with("https://idp.example/auth?response_type=code&client_id=occ"),
            "{url}"
        );
        assert!(
            url.contains("redirect_uri=https%3A%2F%2Fide.example%2F_occ%2Foidc%2Fcallback"),
            "{url}"
        );
        assert!(
            url.contains("scope=openid+groups&state=st&nonce=no"),
            "{url}"
        );
        assert!(
            url.contains(&format!(
                "code_challenge={}&code_challenge_method=S256",
                s256("ver")
            )),
            "{url}"
        );
        // RFC 7636's example.
        assert_eq!(
            s256("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn claims_as_strings_and_lists() {
        assert_eq!(
            claim_list(Some(&serde_json::json!(["a", 1, "b"]))),
            ["a", "b"]
        );
        assert_eq!(claim_list(Some(&serde_json::json!("solo"))), ["solo"]);
        assert!(claim_list(None).is_empty());
        assert_eq!(
            claim_str(Some(&serde_json::json!("x"))).as_deref(),
            Some("x")
        );
        assert_eq!(claim_str(Some(&serde_json::json!(3))), None);
    }

    #[test]
    fn a_callback_without_its_flow_is_refused_before_anything_is_sent() {
        let o = Oidc::new(settings());
        let auth = AuthClient::new("/nonexistent".into());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let e = rt
            .block_on(o.finish(&auth, "state=forged&code=x", Some("b")))
            .unwrap_err();
        assert_eq!(e.status, 400);
        assert!(
            e.message.contains("expired or was already used"),
            "{}",
            e.message
        );
        // A state of this browser's flow, but another browser's cookie.
        o.provider.lock().unwrap().replace(Provider {
            authorization_endpoint: "https://idp.example/auth".into(),
            token_endpoint: "https://idp.example/token".into(),
            userinfo_endpoint: None,
            jwks_uri: "https://idp.example/jwks".into(),
            device_endpoint: None,
            iss_parameter: false,
            jwks: CoreJsonWebKeySet::new(vec![]),
            jwks_at: Instant::now(),
        });
        let (url, binding) = o.begin("/after").unwrap();
        let state =
            super::super::request::form_value(url.split_once('?').unwrap().1, "state").unwrap();
        let q = format!("state={state}&code=x");
        let e = rt
            .block_on(o.finish(&auth, &q, Some("not-the-binding")))
            .unwrap_err();
        assert!(e.message.contains("another browser"), "{}", e.message);
        // ... and the flow is used up: the right cookie now gets nothing either.
        let e = rt
            .block_on(o.finish(&auth, &q, Some(&binding)))
            .unwrap_err();
        assert!(e.message.contains("already used"), "{}", e.message);
        // No device endpoint at the provider: 501, said clearly, nothing sent.
        let e = rt.block_on(o.device_code(&auth, "10.0.0.1")).unwrap_err();
        assert_eq!(e.status, 501);
        assert!(e.message.contains("no device login"), "{}", e.message);
        // An unknown device code.
        let e = rt.block_on(o.device_token(&auth, "nope")).unwrap_err();
        assert_eq!((e.0, e.1), (400, "invalid_grant"));
    }
}
