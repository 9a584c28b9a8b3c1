//! Arbitrary bytes into the config parser: an error that names a field, or
//! a config that passes validation; never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use spillway::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match Config::from_json(text) {
        Ok(cfg) => assert!(cfg.validate().is_ok()),
        Err(e) => assert!(!e.field.is_empty()),
    }
});
