//! Downlinks: the queue over the link (FCnt reservation), class A data, confirmed downlinks
//! with retries, class C, payload limits, and MAC exchanges through tern-mac.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use lorawan::mac::{DevStatusAns, LinkADRAns, NewChannelAns, RXParamSetupAns};
use lorawan::phy::FCtrl;
use lorawan::{Aes128Key, DevAddr, Direction, MacCommand, PhyPayload};
use tern_api::v3;

const NWK: Aes128Key = Aes128Key([0x31; 16]);
const APP: Aes128Key = Aes128Key([0x32; 16]);
const ADDR: DevAddr = DevAddr([0x26, 0x0a, 0x0b, 0x0c]);
const WAIT: Duration = Duration::from_secs(3);

fn item(f_cnt: u32, confirmed: bool, payload: &[u8]) -> v3::ApplicationDownlink {
    let mut frm = payload.to_vec();
    lorawan::crypto::encrypt_frm_payload(&APP, Direction::Downlink, ADDR, f_cnt, &mut frm);
    v3::ApplicationDownlink {
        f_port: 5,
        f_cnt,
        frm_payload: frm,
        confirmed,
        ..Default::default()
    }
}

async fn uplink(h: &Harness, f_cnt: u32, confirmed: bool, f_ctrl: FCtrl, f_opts: &[u8]) {
    let raw = data_up(ADDR, &NWK, &APP, f_cnt, confirmed, f_ctrl, f_opts, 1, b"u");
    h.ns.process_uplink(copy(&raw, "gw-1", 8.0, -60.0))
        .await
        .unwrap();
}

fn up_kind(up: &v3::SequencedApplicationUp) -> &'static str {
    match up.up.as_ref().and_then(|u| u.up.as_ref()) {
        Some(v3::application_up::Up::UplinkMessage(_)) => "uplink",
        Some(v3::application_up::Up::DownlinkAck(_)) => "ack",
        Some(v3::application_up::Up::DownlinkNack(_)) => "nack",
        Some(v3::application_up::Up::DownlinkSent(_)) => "sent",
        Some(v3::application_up::Up::DownlinkFailed(_)) => "failed",
        Some(v3::application_up::Up::DownlinkQueueInvalidated(_)) => "invalidated",
        _ => "other",
    }
}

/// The next message of one kind, skipping others.
async fn expect_kind(as_: &mut TestAs, kind: &str) -> v3::SequencedApplicationUp {
    loop {
        let up = as_
            .next_up(WAIT)
            .await
            .unwrap_or_else(|| panic!("no {kind}"));
        if up_kind(&up) == kind {
            return up;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_downlink_goes_out_in_rx1_with_its_reserved_counter() {
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::start(dir.path(), Arc::new(NoJs), config()).await;
    h.abp("app-1", "dev-1", ADDR, NWK, v3::MacVersion::MacV103, 0)
        .await;
    let mut as_ = h.link().await;
    // An empty push tells the next counter.
    let r = as_.queue("app-1", "dev-1", false, vec![]).await;
    assert!(r.error.is_none(), "{r:?}");
    assert_eq!(r.next_a_f_cnt_down, 0);
    let r = as_
        .queue(
            "app-1",
            "dev-1",
            false,
            vec![item(0, false, b"one"), item(1, false, b"two")],
        )
        .await;
    assert_eq!(r.next_a_f_cnt_down, 2);
    // A counter already reserved is refused, and changes nothing.
    let r = as_
        .queue("app-1", "dev-1", false, vec![item(1, false, b"x")])
        .await;
    assert_eq!(r.error.unwrap().name, "f_cnt_too_low");
    let listed =
        h.ns.as_link()
            .downlink_queue_list(
                tern_cluster::auth::Caller::Cluster,
                v3::EndDeviceIdentifiers::new("app-1", "dev-1"),
            )
            .await
            .unwrap();
    assert_eq!(listed.downlinks.len(), 2);

    uplink(&h, 1, false, FCtrl::default(), &[]).await;
    expect_kind(&mut as_, "uplink").await;
    let downs = h.gs.take();
    assert_eq!(downs.len(), 1);
    let phy = check_downlink(&downs[0].raw_payload, &NWK, 0);
    let mp = phy.mac_payload().unwrap();
    assert_eq!(mp.f_port, Some(5));
    assert!(mp.fhdr.f_ctrl.f_pending, "a second item waits");
    let mut clear = mp.frm_payload.clone();
    lorawan::crypto::decrypt_frm_payload(&APP, Direction::Downlink, ADDR, 0, &mut clear);
    assert_eq!(clear, b"one");
    // The gateway's TX_ACK: a sent event for the AS.
    h.ns.gs_link()
        .report_tx_ack(v3::TxAcknowledgment {
            downlink_id: downs[0].downlink_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    expect_kind(&mut as_, "sent").await;
    // Next uplink: the second item with FCnt 1.
    uplink(&h, 2, false, FCtrl::default(), &[]).await;
    let downs = h.gs.take();
    let phy = check_downlink(&downs[0].raw_payload, &NWK, 1);
    assert_eq!(phy.mac_payload().unwrap().fhdr.f_cnt, 1);
    assert!(!phy.mac_payload().unwrap().fhdr.f_ctrl.f_pending);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmed_downlink_is_retried_until_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::start(dir.path(), Arc::new(NoJs), config()).await;
    h.abp("app-1", "dev-1", ADDR, NWK, v3::MacVersion::MacV103, 0)
        .await;
    let mut as_ = h.link().await;
    as_.queue("app-1", "dev-1", false, vec![item(0, true, b"conf")])
        .await;
    uplink(&h, 1, false, FCtrl::default(), &[]).await;
    let first = h.gs.take();
    assert_eq!(first.len(), 1);
    assert_eq!(
        PhyPayload::decode(&first[0].raw_payload).unwrap().m_type(),
        lorawan::MType::ConfirmedDataDown
    );
    // No ACK in the next uplink: the same frame again.
    uplink(&h, 2, false, FCtrl::default(), &[]).await;
    let retry = h.gs.take();
    assert_eq!(retry.len(), 1);
    assert_eq!(
        retry[0].raw_payload, first[0].raw_payload,
        "retransmission with the same counter"
    );
    // ACK: the AS hears of it.
    uplink(
        &h,
        3,
        false,
        FCtrl {
            ack: true,
            ..Default::default()
        },
        &[],
    )
    .await;
    let ack = expect_kind(&mut as_, "ack").await;
    let Some(v3::application_up::Up::DownlinkAck(d)) = ack.up.unwrap().up else {
        panic!()
    };
    assert_eq!(d.f_cnt, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmed_downlink_without_ack_is_given_up_with_a_nack() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config();
    c.max_downlink_retries = 1;
    let h = Harness::start(dir.path(), Arc::new(NoJs), c).await;
    h.abp("app-1", "dev-1", ADDR, NWK, v3::MacVersion::MacV103, 0)
        .await;
    let mut as_ = h.link().await;
    as_.queue("app-1", "dev-1", false, vec![item(0, true, b"conf")])
        .await;
    for f_cnt in 1..=3 {
        uplink(&h, f_cnt, false, FCtrl::default(), &[]).await;
    }
    expect_kind(&mut as_, "nack").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn class_c_downlink_goes_out_at_once_on_rx2() {
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::start(dir.path(), Arc::new(NoJs), config()).await;
    h.abp("app-1", "dev-1", ADDR, NWK, v3::MacVersion::MacV103, 0)
        .await;
    h.ns.set_device(
        v3::EndDevice {
            ids: Some(v3::EndDeviceIdentifiers::new("app-1", "dev-1")),
            supports_class_c: true,
            mac_settings: Some(v3::MacSettings {
                class: Some(v3::DeviceClass::ClassC as i32),
                adr_enabled: Some(false),
                status_count_periodicity: Some(0),
                status_time_periodicity: Some(0),
                ..Default::default()
            }),
            ..Default::default()
        },
        &["supports_class_c", "mac_settings"],
    )
    .await
    .unwrap();
    let mut as_ = h.link().await;
    uplink(&h, 1, false, FCtrl::default(), &[]).await;
    h.gs.take();
    let next = as_
        .queue("app-1", "dev-1", false, vec![])
        .await
        .next_a_f_cnt_down;
    as_.queue("app-1", "dev-1", false, vec![item(next, false, b"now")])
        .await;
    let mut downs = Vec::new();
    for _ in 0..50 {
        downs = h.gs.take();
        if !downs.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(downs.len(), 1, "class C downlink without an uplink");
    let req = downs[0].request.clone().unwrap();
    assert_eq!(req.class, v3::DeviceClass::ClassC as i32);
    assert!(req.rx1_data_rate.is_none());
    assert_eq!(req.rx2_frequency, 869_525_000);
    let Some(v3::downlink_path::Path::Fixed(g)) = &req.downlink_paths[0].path else {
        panic!()
    };
    assert_eq!(g.gateway_ids.as_ref().unwrap().gateway_id, "gw-1");
    check_downlink(&downs[0].raw_payload, &NWK, next);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_downlink_too_big_for_the_window_waits() {
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::start(dir.path(), Arc::new(NoJs), config()).await;
    h.abp("app-1", "dev-1", ADDR, NWK, v3::MacVersion::MacV103, 0)
        .await;
    let mut as_ = h.link().await;
    // RX2 (DR0, SF12) carries at most 59 bytes of MACPayload: 100 bytes never fit this window.
    as_.queue("app-1", "dev-1", false, vec![item(0, false, &[7u8; 100])])
        .await;
    uplink(&h, 1, true, FCtrl::default(), &[]).await;
    let downs = h.gs.take();
    assert_eq!(downs.len(), 1, "the ACK still goes out");
    let phy = check_downlink(&downs[0].raw_payload, &NWK, 0);
    let mp = phy.mac_payload().unwrap();
    assert!(mp.fhdr.f_ctrl.ack && mp.fhdr.f_ctrl.f_pending);
    assert_ne!(mp.f_port, Some(5));
    // The item is still queued, whole (its counter was taken by the ACK: sent back).
    let inv = expect_kind(&mut as_, "invalidated").await;
    let Some(v3::application_up::Up::DownlinkQueueInvalidated(i)) = inv.up.unwrap().up else {
        panic!()
    };
    assert_eq!(i.downlinks[0].frm_payload.len(), 100);
    assert_eq!(i.next_a_f_cnt_down, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mac_exchanges_go_through_tern_mac() {
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::start(dir.path(), Arc::new(NoJs), config()).await;
    h.abp("app-1", "dev-1", ADDR, NWK, v3::MacVersion::MacV103, 0)
        .await;
    h.ns.set_device(
        v3::EndDevice {
            ids: Some(v3::EndDeviceIdentifiers::new("app-1", "dev-1")),
            mac_settings: Some(v3::MacSettings {
                adr_enabled: Some(false),
                rx2_data_rate_index: Some(3),
                status_count_periodicity: Some(1),
                status_time_periodicity: Some(0),
                ..Default::default()
            }),
            ..Default::default()
        },
        &["mac_settings"],
    )
    .await
    .unwrap();
    let mut mac_events = h
        .events
        .subscribe(tern_events::Filter::all().name("ns.mac.*"))
        .await
        .unwrap();
    // LinkCheckReq and DeviceTimeReq from the device.
    let f_opts = encode_cmds(&[MacCommand::LinkCheckReq, MacCommand::DeviceTimeReq]);
    uplink(&h, 1, false, FCtrl::default(), &f_opts).await;
    let downs = h.gs.take();
    assert_eq!(downs.len(), 1, "answers need a downlink");
    let cmds = downlink_commands(&downs[0].raw_payload, &NWK, 0);
    assert!(
        cmds.iter()
            .any(|c| matches!(c, MacCommand::LinkCheckAns(a) if a.gw_cnt == 1)),
        "{cmds:?}"
    );
    assert!(
        cmds.iter()
            .any(|c| matches!(c, MacCommand::DeviceTimeAns(_))),
        "{cmds:?}"
    );
    let e = tokio::time::timeout(WAIT, mac_events.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(e.name.starts_with("ns.mac."), "{}", e.name);

    // Collect the NS's requests over the next uplinks and answer them all positively.
    let mut requests: Vec<MacCommand> = cmds;
    let mut saw = (false, false, false);
    for f_cnt in 2..6 {
        let mut answers = Vec::new();
        for c in &requests {
            match c {
                MacCommand::NewChannelReq(_) => {
                    saw.0 = true;
                    answers.push(MacCommand::NewChannelAns(NewChannelAns {
                        data_rate_range_ok: true,
                        channel_frequency_ok: true,
                    }));
                }
                MacCommand::RXParamSetupReq(r) => {
                    saw.1 = true;
                    assert_eq!(r.rx2_data_rate, 3);
                    answers.push(MacCommand::RXParamSetupAns(RXParamSetupAns {
                        rx1_dr_offset_ack: true,
                        rx2_data_rate_ack: true,
                        channel_ack: true,
                    }));
                }
                MacCommand::DevStatusReq => {
                    saw.2 = true;
                    answers.push(MacCommand::DevStatusAns(DevStatusAns {
                        battery: 200,
                        margin: 10,
                    }));
                }
                MacCommand::LinkADRReq(_) => {
                    answers.push(MacCommand::LinkADRAns(LinkADRAns {
                        power_ack: true,
                        data_rate_ack: true,
                        channel_mask_ack: true,
                    }));
                }
                _ => {}
            }
        }
        let bytes = encode_cmds(&answers);
        let raw = if bytes.len() <= 15 {
            data_up(
                ADDR,
                &NWK,
                &APP,
                f_cnt,
                true,
                FCtrl::default(),
                &bytes,
                1,
                b"u",
            )
        } else {
            // Too long for FOpts: FPort 0, encrypted with the NwkSKey.
            data_up(
                ADDR,
                &NWK,
                &NWK,
                f_cnt,
                true,
                FCtrl::default(),
                &[],
                0,
                &bytes,
            )
        };
        h.ns.process_uplink(copy(&raw, "gw-1", 8.0, -60.0))
            .await
            .unwrap();
        let downs = h.gs.take();
        requests = downs
            .first()
            .map(|d| {
                let phy = PhyPayload::decode(&d.raw_payload).unwrap();
                let f = u32::from(phy.mac_payload().unwrap().fhdr.f_cnt);
                downlink_commands(&d.raw_payload, &NWK, f)
            })
            .unwrap_or_default();
    }
    assert!(
        saw.0 && saw.1 && saw.2,
        "NewChannelReq, RXParamSetupReq, DevStatusReq: {saw:?}"
    );
    let d =
        h.ns.get_device(&v3::EndDeviceIdentifiers::new("app-1", "dev-1"))
            .await
            .unwrap();
    assert_eq!(d.battery_level, Some(200));
    let state = d.mac_state.unwrap();
    assert_eq!(
        state.rx2_data_rate_index, 3,
        "RXParamSetup applied after the device's answer"
    );
    assert_eq!(
        state.channel_frequencies.len(),
        8,
        "NewChannel applied: {:?}",
        state.channel_frequencies
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_rx1_transmission_is_retried_in_rx2_then_reported() {
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::start(dir.path(), Arc::new(NoJs), config()).await;
    h.abp("app-1", "dev-1", ADDR, NWK, v3::MacVersion::MacV103, 0)
        .await;
    let mut as_ = h.link().await;
    as_.queue("app-1", "dev-1", false, vec![item(0, false, b"late")])
        .await;
    uplink(&h, 1, false, FCtrl::default(), &[]).await;
    let first = h.gs.take();
    assert_eq!(first.len(), 1);
    let too_late = |id: &str| v3::TxAcknowledgment {
        downlink_id: id.to_owned(),
        result: v3::tx_acknowledgment::Result::TooLate as i32,
        ..Default::default()
    };
    h.ns.gs_link()
        .report_tx_ack(too_late(&first[0].downlink_id))
        .await
        .unwrap();
    let second = h.gs.take();
    assert_eq!(second.len(), 1, "RX2 attempt");
    let req = second[0].request.clone().unwrap();
    assert!(req.rx1_data_rate.is_none() && req.rx2_data_rate.is_some());
    assert_eq!(second[0].raw_payload, first[0].raw_payload);
    h.ns.gs_link()
        .report_tx_ack(too_late(&second[0].downlink_id))
        .await
        .unwrap();
    expect_kind(&mut as_, "failed").await;
    // An unknown downlink ID is refused precisely.
    let err =
        h.ns.gs_link()
            .report_tx_ack(too_late("nope"))
            .await
            .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
}

/// The FCntDown of a downlink is durable before the GS may transmit it: at the moment the GS
/// is asked, the store already holds a next counter beyond the frame's, so a crash right
/// after transmission cannot hand the same counter out again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downlink_counter_is_stored_before_the_gateway_gets_the_frame() {
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::start(dir.path(), Arc::new(NoJs), config()).await;
    *h.gs.store.lock().unwrap() = Some(h.store.clone());
    h.abp("app-1", "dev-1", ADDR, NWK, v3::MacVersion::MacV103, 0)
        .await;
    let mut as_ = h.link().await;
    as_.queue(
        "app-1",
        "dev-1",
        false,
        vec![item(0, false, b"one"), item(1, false, b"two")],
    )
    .await;
    uplink(&h, 1, false, FCtrl::default(), &[]).await;
    uplink(&h, 2, false, FCtrl::default(), &[]).await;
    let sent = h.gs.take();
    let stored = h.gs.stored_n_f_cnt_down.lock().unwrap().clone();
    assert_eq!(sent.len(), 2, "{sent:?}");
    for (downlink, stored) in sent.iter().zip(stored) {
        let f_cnt = u32::from(
            PhyPayload::decode(&downlink.raw_payload)
                .unwrap()
                .f_cnt()
                .unwrap(),
        );
        assert!(
            stored > f_cnt,
            "FCntDown {f_cnt} went to the GS while the store said the next is {stored}"
        );
    }
}
