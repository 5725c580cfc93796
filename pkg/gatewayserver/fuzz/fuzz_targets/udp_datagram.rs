//! Fuzz target: any datagram a gateway might send to the Semtech UDP port is parsed (header,
//! PUSH_DATA JSON, every `rxpk` → uplink, TX_ACK) without panicking, and every uplink made
//! carries exactly the bytes the `rxpk` announced.
//!
//! Run briefly with `make fuzz-smoke`, or with `cargo +nightly fuzz run udp_datagram`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tern_api::v3;
use tern_gatewayserver::udp::packet::{Upstream, parse_datagram, parse_push_data, parse_tx_ack};
use tern_gatewayserver::uplink::{UplinkContext, rxpk_to_uplink};

fuzz_target!(|data: &[u8]| {
    let Ok(d) = parse_datagram(data) else { return };
    match d.kind {
        Upstream::PushData(json) => {
            let Ok(push) = parse_push_data(json) else {
                return;
            };
            let ids = v3::GatewayIdentifiers {
                gateway_id: "fuzz".into(),
                eui: d.eui.to_vec(),
            };
            let plan = band::FrequencyPlan::by_id("EU_863_870").unwrap();
            for rx in &push.rxpk {
                let ctx = UplinkContext {
                    ids: &ids,
                    eui: d.eui,
                    plan,
                    instance_id: "fuzz",
                    received_at_us: 1_763_712_000_000_000,
                    correlation_id: String::new(),
                };
                if let Ok(up) = rxpk_to_uplink(rx, &ctx) {
                    assert_eq!(up.raw_payload.len(), usize::from(rx.size));
                    assert_eq!(rx.stat, 1, "only CRC-OK frames go on");
                }
            }
            if let Some(stat) = &push.stat {
                let _ = stat.metrics();
            }
        }
        Upstream::TxAck(json) => {
            let _ = parse_tx_ack(json);
        }
        Upstream::PullData => {}
    }
});
