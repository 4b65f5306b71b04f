//! BLIN frames (sdk/src/vhub/frame.rs): arbitrary bytes never panic the
//! decoder, and whatever it accepts encodes back to the same bytes.
#![no_main]

use blink_sdk::vhub::{Frame, FrameCodec};
use libfuzzer_sys::fuzz_target;
use tokio_util::bytes::BytesMut;
use tokio_util::codec::Decoder;

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    let mut used = 0;
    while let Ok(Some(frame)) = FrameCodec.decode(&mut buf) {
        let bytes = Frame::to_bytes(&frame).expect("a decoded frame encodes");
        assert_eq!(&bytes[..], &data[used..used + bytes.len()]);
        used += bytes.len();
        if let Ok(request) = serde_json::from_slice::<blink_sdk::vhub::messages::Request>(&frame.payload) {
            let _ = blink_sdk::vhub::messages::check_name("method", &request.method);
        }
    }
});
