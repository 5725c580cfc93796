//! ADR over a scripted uplink history, through tern-mac: the LinkADRReq the NS sends, and
//! the device state after the device accepts or rejects it.

mod common;

use std::sync::Arc;

use common::*;
use lorawan::mac::LinkADRAns;
use lorawan::phy::FCtrl;
use lorawan::{Aes128Key, DevAddr, MacCommand, PhyPayload};
use tern_api::v3;

const NWK: Aes128Key = Aes128Key([0x51; 16]);
const APP: Aes128Key = Aes128Key([0x52; 16]);
const ADDR: DevAddr = DevAddr([0x26, 0x0d, 0x0e, 0x0f]);

/// Runs `n` ADR uplinks at SF12 with a good SNR, answering every LinkADRReq with `accept`;
/// returns the LinkADRReqs the NS sent.
async fn scripted(h: &Harness, n: u32, accept: bool) -> Vec<lorawan::mac::LinkADRReq> {
    let mut sent = Vec::new();
    let mut answers: Vec<MacCommand> = Vec::new();
    // EU868: DR0..DR5 are SF12..SF7; the device switches once it accepted a new rate.
    let mut sf = 12u8;
    for f_cnt in 1..=n {
        let f_opts = encode_cmds(&answers);
        answers.clear();
        let f_ctrl = FCtrl {
            adr: true,
            ..Default::default()
        };
        let raw = data_up(ADDR, &NWK, &APP, f_cnt, false, f_ctrl, &f_opts, 1, b"x");
        h.ns.process_uplink(copy_sf(&raw, "gw-1", 10.0, sf))
            .await
            .unwrap();
        for d in h.gs.take() {
            let f = u32::from(
                PhyPayload::decode(&d.raw_payload)
                    .unwrap()
                    .mac_payload()
                    .unwrap()
                    .fhdr
                    .f_cnt,
            );
            for c in downlink_commands(&d.raw_payload, &NWK, f) {
                if let MacCommand::LinkADRReq(r) = c {
                    sent.push(r);
                    if accept && r.data_rate <= 5 {
                        sf = 12 - r.data_rate;
                    }
                    answers.push(MacCommand::LinkADRAns(LinkADRAns {
                        power_ack: true,
                        data_rate_ack: accept,
                        channel_mask_ack: true,
                    }));
                }
            }
        }
    }
    sent
}

async fn adr_device(h: &Harness) {
    h.abp("app-1", "dev-1", ADDR, NWK, v3::MacVersion::MacV103, 0)
        .await;
    h.ns.set_device(
        v3::EndDevice {
            ids: Some(v3::EndDeviceIdentifiers::new("app-1", "dev-1")),
            mac_settings: Some(v3::MacSettings {
                adr_enabled: Some(true),
                status_count_periodicity: Some(0),
                status_time_periodicity: Some(0),
                ..Default::default()
            }),
            ..Default::default()
        },
        &["mac_settings"],
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adr_raises_the_data_rate_after_a_history_of_good_uplinks() {
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::start(dir.path(), Arc::new(NoJs), config()).await;
    adr_device(&h).await;
    let sent = scripted(&h, 24, true).await;
    let raise = sent
        .iter()
        .find(|r| r.data_rate > 0)
        .expect("a LinkADRReq raising the data rate");
    // SNR 10 dB at SF12 (needs -20 dB) with a 15 dB margin: 15 dB to spare, 5 steps of 3 dB.
    assert!(raise.data_rate >= 4, "{raise:?}");
    let d =
        h.ns.get_device(&v3::EndDeviceIdentifiers::new("app-1", "dev-1"))
            .await
            .unwrap();
    assert_eq!(
        d.mac_state.unwrap().adr_data_rate_index,
        u32::from(raise.data_rate)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_link_adr_req_leaves_the_device_state_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::start(dir.path(), Arc::new(NoJs), config()).await;
    adr_device(&h).await;
    let mut answers = h
        .events
        .subscribe(tern_events::Filter::all().name("ns.mac.link_adr.answer"))
        .await
        .unwrap();
    let sent = scripted(&h, 24, false).await;
    assert!(sent.iter().any(|r| r.data_rate > 0), "{sent:?}");
    let d =
        h.ns.get_device(&v3::EndDeviceIdentifiers::new("app-1", "dev-1"))
            .await
            .unwrap();
    assert_eq!(
        d.mac_state.unwrap().adr_data_rate_index,
        0,
        "the device kept DR0"
    );
    let e = answers.recv().await.unwrap();
    let data = serde_json::to_string(&e.data).unwrap();
    assert!(data.contains("rejected"), "{data}");
}
