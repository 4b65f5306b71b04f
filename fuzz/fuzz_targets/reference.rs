//! Image references: never a panic; what normalizes, normalizes to itself.
#![no_main]

use blink_sdk::image::reference::{MAX_REFERENCE_LEN, normalize};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(n) = normalize(s) {
        assert!(n.len() <= MAX_REFERENCE_LEN, "{n:?}");
        assert_eq!(normalize(&n).ok().as_deref(), Some(n.as_str()));
    }
});
