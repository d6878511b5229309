//! Fuzz target: what a client can send as a credential or a tokens-page form (Bearer
//! headers, token-shaped passwords, the tokens form, plain HTTP's redirect target, PEM
//! certificate and key input) must never panic; a token store never accepts what it did
//! not issue.
#![no_main]

use libfuzzer_sys::fuzz_target;
use occ_init::proxy::{request, tls};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = request::bearer_token(&text);
    let _ = request::parse_token_form(&text);
    let _ = tls::https_location(Some(&text), &text);
    let _ = occ_init::tokens::looks_like_token(&text);
    let _ = occ_init::tokens::parse_expiry(&text);
    let _ = occ_init::tls::parse_chain(data);
    let _ = occ_init::tls::parse_key(data);
    let dir = std::env::temp_dir().join(format!("occ-fuzz-tokens-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let mut store = occ_init::tokens::Tokens::load(&dir.join("none.json")).expect("empty store");
    assert!(store.check(&text, 0).is_none());
});
