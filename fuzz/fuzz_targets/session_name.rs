//! Session names: a valid name is one plain path component.
#![no_main]

use blink_sdk::manager::names::validate;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if validate(s).is_ok() {
        assert!(!s.contains(['/', '\0']) && s != "." && s != ".." && !s.contains(".."));
    }
});
