//! Fuzz target: admin request parsing and routing must never panic, whatever the bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use occ_init::admin::{api, http};

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = http::read_request(&mut &data[..]) {
        let _ = api::route(&req);
    }
});
