//! authorized_keys lines: a parsed key writes back to the same key.
#![no_main]

use blink_sdk::manager::keys::AuthorizedKey;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    for line in text.lines() {
        if let Ok(Some(k)) = AuthorizedKey::parse(line) {
            let again = AuthorizedKey::parse(&k.to_line()).unwrap();
            assert_eq!(again.as_ref(), Some(&k));
        }
    }
});
