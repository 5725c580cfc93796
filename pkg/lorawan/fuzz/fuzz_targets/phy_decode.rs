//! Fuzz target: decoding any byte string never panics, and every frame that decodes
//! re-encodes to the same bytes and decodes again to the same value.
//!
//! Run briefly with `make fuzz-smoke`, or with `cargo +nightly fuzz run phy_decode`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use lorawan::PhyPayload;

fuzz_target!(|data: &[u8]| {
    if let Ok(phy) = PhyPayload::decode(data) {
        let raw = phy.encode().expect("a decoded frame must re-encode");
        assert_eq!(raw, data, "re-encoding changed the bytes");
        let again = PhyPayload::decode(&raw).expect("re-encoded frame must decode");
        assert_eq!(again, phy, "decode(encode(decode(x))) != decode(x)");
    }
});
