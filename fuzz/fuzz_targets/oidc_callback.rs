//! Fuzz target: what a browser or a provider can send to single sign-on must never panic:
//! callback query strings (a forged `state` is refused before anything is sent anywhere),
//! ID tokens (JWS parsing), identities reaching PID 1's mapping.
#![no_main]

use libfuzzer_sys::fuzz_target;
use occ_init::proxy::oidc::{Oidc, OidcSettings};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = occ_init::proxy::oidc::parses_as_id_token(&text);
    let o = Oidc::new(OidcSettings {
        issuer: "https://idp.example".into(),
        client_id: "occ".into(),
        redirect_uri: "https://ide.example/_occ/oidc/callback".into(),
        scopes: vec!["openid".into()],
        username_claim: "preferred_username".into(),
        groups_claim: "groups".into(),
        provider_name: "IdP".into(),
        password_login: true,
    });
    let auth = occ_init::proxy::auth::AuthClient::new("/nonexistent".into());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let r = rt.block_on(o.finish(&auth, &text, Some(&text)));
    assert!(r.is_err(), "a forged callback was accepted");
    if let Ok(id) = serde_json::from_slice::<occ_init::oidc::Identity>(data) {
        let _ = occ_init::oidc::decide(
            &id,
            "preferred_username",
            &["devs".to_string()],
            |_| occ_init::oidc::UserState::Missing,
            |_| None,
            true,
        );
    }
});
