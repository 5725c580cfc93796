//! Fuzz target: any text a Basics Station might send is parsed without panicking; frames
//! that parse rebuild into a PHYPayload of the length their fields imply, and EUIs that
//! parse survive a round trip through the ID6 form.
//!
//! Run briefly with `make fuzz-smoke`, or with `cargo +nightly fuzz run bs_message`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tern_gatewayserver::bs::{
    RouterInfoRequest, Upstream, format_id6, jreq_phy_payload, parse_eui, parse_upstream,
    updf_phy_payload,
};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(eui) = parse_eui(text) {
        assert_eq!(parse_eui(&format_id6(eui)), Ok(eui));
    }
    let _ = serde_json::from_str::<RouterInfoRequest>(text);
    match parse_upstream(text) {
        Ok(Upstream::Updf(u)) => {
            if let Ok(raw) = updf_phy_payload(&u) {
                let port = usize::from(u.fport >= 0);
                assert_eq!(
                    raw.len(),
                    1 + 4
                        + 1
                        + 2
                        + usize::from(u.fctrl & 0x0F)
                        + port
                        + u.frm_payload.len() / 2
                        + 4
                );
            }
        }
        Ok(Upstream::Jreq(j)) | Ok(Upstream::Rejoin(j)) => {
            if let Ok(raw) = jreq_phy_payload(&j) {
                assert_eq!(raw.len(), 23);
            }
        }
        _ => {}
    }
});
