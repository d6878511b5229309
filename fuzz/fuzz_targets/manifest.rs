//! Fuzz target: manifest parsing + validation must never panic, and whatever validates must
//! survive a round trip through `to_toml`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use occ_init::manifest::{self, SystemFacts};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let facts = SystemFacts::with_reserved(["opencoder", "ubuntu"]);
    if let Ok(m) = manifest::load(text, &facts) {
        let again = manifest::load(&m.to_toml(), &facts).expect("a valid manifest re-validates");
        assert_eq!(again, m);
    }
});
