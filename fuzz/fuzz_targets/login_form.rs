//! Fuzz target: the proxy's login form, Basic and cookie parsers must never panic, and a
//! parsed form's redirect target always stays on the site.
#![no_main]

use libfuzzer_sys::fuzz_target;
use occ_init::proxy::request;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Some(form) = request::parse_login(&text) {
        assert_eq!(request::safe_next(&form.next), form.next);
        assert!(form.next.starts_with('/') && !form.next.starts_with("//"));
    }
    let _ = request::basic_credentials(&text);
    let _ = request::session_cookie(std::iter::once(text.as_ref()));
    let _ = request::strip_session_cookie(&text);
    let _ = request::login_location(&text);
});
