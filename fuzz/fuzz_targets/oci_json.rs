//! OCI index, manifest and config JSON; digests.
#![no_main]

use blink_sdk::image::oci::{self, ImageConfig, Index, Manifest};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = serde_json::from_slice::<Manifest>(data) {
        let again = serde_json::to_vec(&m).unwrap();
        assert_eq!(serde_json::from_slice::<Manifest>(&again).unwrap(), m);
        let _ = oci::digest_hex("fuzz", &m.config.digest);
        for l in &m.layers {
            let _ = oci::layer_compression(&l.media_type);
        }
    }
    let _ = serde_json::from_slice::<Index>(data);
    let _ = serde_json::from_slice::<ImageConfig>(data);
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(hex) = oci::digest_hex("fuzz", s) {
            assert_eq!(hex.len(), 64);
        }
    }
});
