//! The ABP uplink path end to end: dedup, MIC, FCnt, durability, forwarding, drops.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use lorawan::phy::FCtrl;
use lorawan::{Aes128Key, DevAddr};
use tern_api::v3;

const NWK: Aes128Key = Aes128Key([0x11; 16]);
const APP: Aes128Key = Aes128Key([0x22; 16]);
const ADDR: DevAddr = DevAddr([0x26, 0x01, 0x02, 0x03]);
const WAIT: Duration = Duration::from_secs(3);

fn up(f_cnt: u32, confirmed: bool) -> Vec<u8> {
    data_up(
        ADDR,
        &NWK,
        &APP,
        f_cnt,
        confirmed,
        FCtrl::default(),
        &[],
        10,
        b"hello",
    )
}

fn uplink_of(up: &v3::SequencedApplicationUp) -> v3::ApplicationUplink {
    match up.up.as_ref().and_then(|u| u.up.clone()) {
        Some(v3::application_up::Up::UplinkMessage(m)) => m,
        other => panic!("not an uplink: {other:?}"),
    }
}

async fn next_drop(sub: &mut tern_events::Subscription) -> String {
    let e = tokio::time::timeout(WAIT, sub.recv())
        .await
        .unwrap()
        .unwrap();
    let data = e.data.clone().unwrap();
    match data.fields.get("name").and_then(|v| v.kind.clone()) {
        Some(pbjson_types::value::Kind::StringValue(s)) => s,
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_gateway_copies_make_one_uplink_with_three_rx_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::start(dir.path(), Arc::new(NoJs), config()).await;
    h.abp("app-1", "dev-1", ADDR, NWK, v3::MacVersion::MacV103, 0)
        .await;
    let mut as_ = h.link().await;
    let raw = up(1, false);
    let gs = h.ns.gs_link();
    for (gw, snr) in [("gw-a", 5.0), ("gw-b", 9.5), ("gw-c", -3.0)] {
        gs.handle_uplink(copy(&raw, gw, snr, -80.0)).await.unwrap();
    }
    let got = as_.next_up(WAIT).await.expect("forwarded uplink");
    let m = uplink_of(&got);
    assert_eq!(m.rx_metadata.len(), 3);
    assert_eq!(m.f_cnt, 1);
    assert_eq!(m.f_port, 10);
    // Still encrypted: the NS has no AppSKey.
    let mut clear = m.frm_payload.clone();
    lorawan::crypto::decrypt_frm_payload(&APP, lorawan::Direction::Uplink, ADDR, 1, &mut clear);
    assert_eq!(clear, b"hello");
    assert_ne!(m.frm_payload, b"hello");
    assert_eq!(
        got.up
            .as_ref()
            .unwrap()
            .end_device_ids
            .as_ref()
            .unwrap()
            .device_id,
        "dev-1"
    );
    // One uplink only; a late copy is a duplicate.
    assert!(as_.next_up(Duration::from_millis(300)).await.is_none());
    let mut drops = h.drops().await;
    gs.handle_uplink(copy(&raw, "gw-late", 1.0, -90.0))
        .await
        .unwrap();
    assert_eq!(next_drop(&mut drops).await, "duplicate");
    // Unconfirmed: no ACK; a downlink, if any, carries only MAC requests of tern-mac.
    for d in h.gs.take() {
        let phy = check_downlink(&d.raw_payload, &NWK, 0);
        let mp = phy.mac_payload().unwrap();
        assert!(!mp.fhdr.f_ctrl.ack);
        assert!(matches!(mp.f_port, None | Some(0)));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmed_uplink_is_acknowledged_in_rx1_of_the_best_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::start(dir.path(), Arc::new(NoJs), config()).await;
    h.abp("app-1", "dev-1", ADDR, NWK, v3::MacVersion::MacV103, 0)
        .await;
    let mut as_ = h.link().await;
    let raw = up(3, true);
    let gs = h.ns.gs_link();
    gs.handle_uplink(copy(&raw, "gw-a", 1.0, -100.0))
        .await
        .unwrap();
    gs.handle_uplink(copy(&raw, "gw-b", 7.0, -90.0))
        .await
        .unwrap();
    let m = uplink_of(&as_.next_up(WAIT).await.unwrap());
    assert!(m.confirmed);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let downs = h.gs.take();
    assert_eq!(downs.len(), 1, "{downs:?}");
    let d = &downs[0];
    let req = d.request.as_ref().unwrap();
    assert_eq!(req.rx1_delay, 1);
    assert_eq!(req.rx1_frequency, 868_100_000);
    assert_eq!(req.rx2_frequency, 869_525_000);
    let Some(v3::downlink_path::Path::UplinkToken(t)) = &req.downlink_paths[0].path else {
        panic!()
    };
    assert_eq!(t, b"token-gw-b", "best SNR first");
    let phy = check_downlink(&d.raw_payload, &NWK, 0);
    assert!(phy.mac_payload().unwrap().fhdr.f_ctrl.ack);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_are_dropped_and_retransmissions_not_delivered_again() {
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::start(dir.path(), Arc::new(NoJs), config()).await;
    h.abp("app-1", "dev-1", ADDR, NWK, v3::MacVersion::MacV103, 0)
        .await;
    let mut as_ = h.link().await;
    let mut drops = h.drops().await;
    h.ns.process_uplink(copy(&up(5, false), "gw", 1.0, -80.0))
        .await
        .unwrap();
    assert_eq!(uplink_of(&as_.next_up(WAIT).await.unwrap()).f_cnt, 5);
    // The same frame again: a retransmission, not delivered.
    h.ns.process_uplink(copy(&up(5, false), "gw", 1.0, -80.0))
        .await
        .unwrap();
    assert!(as_.next_up(Duration::from_millis(200)).await.is_none());
    // An older frame: a replay.
    h.ns.process_uplink(copy(&up(4, false), "gw", 1.0, -80.0))
        .await
        .unwrap();
    assert_eq!(next_drop(&mut drops).await, "f_cnt_replay");
    // A wrong key: MIC mismatch; an unknown address.
    let bad = data_up(
        ADDR,
        &Aes128Key([9; 16]),
        &APP,
        6,
        false,
        FCtrl::default(),
        &[],
        1,
        b"x",
    );
    h.ns.process_uplink(copy(&bad, "gw", 1.0, -80.0))
        .await
        .unwrap();
    assert_eq!(next_drop(&mut drops).await, "mic_mismatch");
    let other = data_up(
        DevAddr([1, 2, 3, 4]),
        &NWK,
        &APP,
        1,
        false,
        FCtrl::default(),
        &[],
        1,
        b"x",
    );
    h.ns.process_uplink(copy(&other, "gw", 1.0, -80.0))
        .await
        .unwrap();
    assert_eq!(next_drop(&mut drops).await, "unknown_dev_addr");
    // A 1.0.x counter jump beyond MAX_FCNT_GAP.
    h.ns.process_uplink(copy(&up(5 + 20_000, false), "gw", 1.0, -80.0))
        .await
        .unwrap();
    assert_eq!(next_drop(&mut drops).await, "f_cnt_gap");
    // The next frame still goes through.
    h.ns.process_uplink(copy(&up(6, false), "gw", 1.0, -80.0))
        .await
        .unwrap();
    assert_eq!(uplink_of(&as_.next_up(WAIT).await.unwrap()).f_cnt, 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_frame_counter_rolls_over_past_65535() {
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::start(dir.path(), Arc::new(NoJs), config()).await;
    h.abp("app-1", "dev-1", ADDR, NWK, v3::MacVersion::MacV103, 65_534)
        .await;
    let mut as_ = h.link().await;
    for f_cnt in [65_535u32, 65_536, 65_537] {
        h.ns.process_uplink(copy(&up(f_cnt, false), "gw", 1.0, -80.0))
            .await
            .unwrap();
        assert_eq!(uplink_of(&as_.next_up(WAIT).await.unwrap()).f_cnt, f_cnt);
    }
    let d =
        h.ns.get_device(&v3::EndDeviceIdentifiers::new("app-1", "dev-1"))
            .await
            .unwrap();
    assert_eq!(d.session.unwrap().last_f_cnt_up, 65_537);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_loses_no_accepted_frame_counter() {
    let dir = tempfile::tempdir().unwrap();
    {
        let h = Harness::start(dir.path(), Arc::new(NoJs), config()).await;
        h.abp("app-1", "dev-1", ADDR, NWK, v3::MacVersion::MacV103, 0)
            .await;
        let mut as_ = h.link().await;
        h.ns.process_uplink(copy(&up(10, false), "gw", 1.0, -80.0))
            .await
            .unwrap();
        // Forwarded only after the FCnt is durable.
        assert_eq!(uplink_of(&as_.next_up(WAIT).await.unwrap()).f_cnt, 10);
        h.store.close().await.unwrap();
    }
    let h = Harness::start(dir.path(), Arc::new(NoJs), config()).await;
    let mut as_ = h.link().await;
    // The test AS never acknowledged FCnt 10: the outbox resends it, same sequence.
    let resent = as_.next_up(WAIT).await.unwrap();
    assert_eq!((uplink_of(&resent).f_cnt, resent.sequence), (10, 1));
    let mut drops = h.drops().await;
    h.ns.process_uplink(copy(&up(9, false), "gw", 1.0, -80.0))
        .await
        .unwrap();
    assert_eq!(next_drop(&mut drops).await, "f_cnt_replay");
    h.ns.process_uplink(copy(&up(10, false), "gw", 1.0, -80.0))
        .await
        .unwrap();
    assert!(
        as_.next_up(Duration::from_millis(200)).await.is_none(),
        "replay of an accepted frame"
    );
    h.ns.process_uplink(copy(&up(11, false), "gw", 1.0, -80.0))
        .await
        .unwrap();
    assert_eq!(uplink_of(&as_.next_up(WAIT).await.unwrap()).f_cnt, 11);
}

/// The outbox record of an uplink is committed with its FCnt: the moment the NS has
/// accepted a frame, a crash can no longer lose it (its replay would be rejected).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accepted_uplink_is_stored_for_the_as_together_with_its_frame_counter() {
    let dir = tempfile::tempdir().unwrap();
    {
        let h = Harness::start(dir.path(), Arc::new(NoJs), config()).await;
        h.abp("app-1", "dev-1", ADDR, NWK, v3::MacVersion::MacV103, 0)
            .await;
        h.ns.process_uplink(copy(&up(7, false), "gw", 1.0, -80.0))
            .await
            .unwrap();
        // No flush, no wait: the FCnt and the outbox record are in the store already.
        let device =
            h.ns.get_device(&v3::EndDeviceIdentifiers::new("app-1", "dev-1"))
                .await
                .unwrap();
        assert_eq!(device.session.unwrap().last_f_cnt_up, 7);
        let kept = h
            .store
            .scan(&tern_networkserver::link::LINK_BACKLOG, "", None, 10)
            .await
            .unwrap();
        assert_eq!(kept.items.len(), 1, "{kept:?}");
        // The crash: the store closes under the NS, nothing is flushed.
        h.store.close().await.unwrap();
    }
    let h = Harness::start(dir.path(), Arc::new(NoJs), config()).await;
    let mut as_ = h.link().await;
    let m = as_.next_up(WAIT).await.expect("the accepted uplink");
    assert_eq!((uplink_of(&m).f_cnt, m.sequence), (7, 1));
    h.ns.process_uplink(copy(&up(7, false), "gw", 1.0, -80.0))
        .await
        .unwrap();
    assert!(
        as_.next_up(Duration::from_millis(200)).await.is_none(),
        "replay of an accepted frame"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uplinks_for_an_unlinked_application_wait_for_the_link() {
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::start(dir.path(), Arc::new(NoJs), config()).await;
    h.abp("app-1", "dev-1", ADDR, NWK, v3::MacVersion::MacV103, 0)
        .await;
    for f_cnt in [1, 2] {
        h.ns.process_uplink(copy(&up(f_cnt, false), "gw", 1.0, -80.0))
            .await
            .unwrap();
    }
    let mut as_ = h.link().await;
    let a = as_.next_up(WAIT).await.unwrap();
    let b = as_.next_up(WAIT).await.unwrap();
    assert_eq!((uplink_of(&a).f_cnt, uplink_of(&b).f_cnt), (1, 2));
    assert!(b.sequence > a.sequence);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_resets_its_counter_is_followed_when_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::start(dir.path(), Arc::new(NoJs), config()).await;
    h.abp("app-1", "dev-1", ADDR, NWK, v3::MacVersion::MacV103, 0)
        .await;
    let mut as_ = h.link().await;
    let mut drops = h.drops().await;
    h.ns.process_uplink(copy(&up(100, false), "gw", 1.0, -80.0))
        .await
        .unwrap();
    assert_eq!(uplink_of(&as_.next_up(WAIT).await.unwrap()).f_cnt, 100);
    // Without resets_f_cnt, a restarted counter is a replay.
    h.ns.process_uplink(copy(&up(1, false), "gw", 1.0, -80.0))
        .await
        .unwrap();
    assert_eq!(next_drop(&mut drops).await, "f_cnt_replay");
    h.ns.set_device(
        v3::EndDevice {
            ids: Some(v3::EndDeviceIdentifiers::new("app-1", "dev-1")),
            mac_settings: Some(v3::MacSettings {
                resets_f_cnt: Some(true),
                adr_enabled: Some(false),
                ..Default::default()
            }),
            ..Default::default()
        },
        &["mac_settings"],
    )
    .await
    .unwrap();
    h.ns.process_uplink(copy(&up(2, false), "gw", 1.0, -80.0))
        .await
        .unwrap();
    assert_eq!(uplink_of(&as_.next_up(WAIT).await.unwrap()).f_cnt, 2);
}
