//! Two Network Servers on one store (the embedded store file, opened by two `Store`
//! handles): a device created and joined through one is served by the other after its index
//! misses, and an instance whose cached copy is stale reloads it instead of overwriting what
//! the other wrote, so frame counter replays stay rejected across instances.

mod common;

use std::time::Duration;

use common::*;
use lorawan::crypto;
use lorawan::phy::{FCtrl, JoinRequest, Mhdr, Payload};
use lorawan::{Aes128Key, DevAddr, DevNonce, Eui64, MType, PhyPayload};
use tern_api::v3;
use tern_events::Subscription;
use tern_networkserver::devices::RecentSet;

// Test keys of this file only (no published vector is needed: both ends are computed here).
const APP_KEY: Aes128Key = Aes128Key([0x5a; 16]);
const NWK: Aes128Key = Aes128Key([0x21; 16]);
const APP_S: Aes128Key = Aes128Key([0x12; 16]);
const JOIN_EUI: Eui64 = Eui64([0x70, 0xb3, 0xd5, 0x7e, 0xd0, 0, 0, 1]);
const WAIT: Duration = Duration::from_secs(3);

fn join_request(dev_eui: Eui64, dev_nonce: u16) -> Vec<u8> {
    let mut phy = PhyPayload {
        mhdr: Mhdr::new(MType::JoinRequest),
        payload: Payload::JoinRequest(JoinRequest {
            join_eui: JOIN_EUI,
            dev_eui,
            dev_nonce: DevNonce(dev_nonce),
        }),
        mic: Some([0; 4]),
    };
    let msg = phy.encode_mic_input().unwrap();
    phy.mic = Some(crypto::join_request_mic(&APP_KEY, &msg));
    phy.encode().unwrap()
}

fn up(dev_addr: DevAddr, nwk: &Aes128Key, app_s: &Aes128Key, f_cnt: u32) -> v3::UplinkMessage {
    let raw = data_up(
        dev_addr,
        nwk,
        app_s,
        f_cnt,
        false,
        FCtrl::default(),
        &[],
        3,
        &f_cnt.to_be_bytes(),
    );
    copy(&raw, "gw-shared", 7.0, -80.0)
}

fn f_cnt_of(up: &v3::SequencedApplicationUp) -> u32 {
    match up.up.as_ref().and_then(|u| u.up.clone()) {
        Some(v3::application_up::Up::UplinkMessage(m)) => m.f_cnt,
        other => panic!("not an uplink: {other:?}"),
    }
}

async fn drop_reason(drops: &mut Subscription) -> String {
    let e = tokio::time::timeout(WAIT, drops.recv())
        .await
        .expect("a drop event")
        .unwrap();
    match e
        .data
        .clone()
        .unwrap()
        .fields
        .get("name")
        .and_then(|v| v.kind.clone())
    {
        Some(pbjson_types::value::Kind::StringValue(s)) => s,
        other => panic!("drop without a reason name: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_other_instance_serves_a_joined_device_and_replays_stay_rejected() {
    let js_dir = tempfile::tempdir().unwrap();
    let ns_dir = tempfile::tempdir().unwrap();
    let js = join_server(js_dir.path()).await;
    // Both instances start before the device exists: neither has it in its index.
    let a = Harness::start(ns_dir.path(), js.ns_link(), ns_config()).await;
    let b = Harness::start(ns_dir.path(), js.ns_link(), ns_config()).await;
    let mut as_a = a.link().await;
    let mut as_b = b.link().await;

    let dev_eui = Eui64::from_u64(0x0004_a30b_001c_0531);
    let ids = v3::EndDeviceIdentifiers::new("app-1", "otaa-shared")
        .with_join_eui(JOIN_EUI)
        .with_dev_eui(dev_eui);
    register_otaa(
        &js,
        &a.ns,
        ids.clone(),
        v3::MacVersion::MacV103,
        (APP_KEY, None),
        Some(quiet_mac()),
    )
    .await;

    // A: the join and the first uplink of the session.
    a.ns.process_uplink(copy(&join_request(dev_eui, 7), "gw-shared", 7.0, -80.0))
        .await
        .unwrap();
    let accept = a.gs.take();
    assert_eq!(accept.len(), 1, "join-accept scheduled by A");
    let clear = crypto::decrypt_join_accept(&APP_KEY, &accept[0].raw_payload).unwrap();
    let Payload::JoinAccept(ja) = PhyPayload::decode(&clear).unwrap().payload else {
        panic!("not a join-accept")
    };
    let keys =
        crypto::derive_session_keys_1_0(&APP_KEY, ja.join_nonce, ja.home_net_id, DevNonce(7));
    let (addr, nwk, app_s) = (ja.dev_addr, keys.nwk_s_key, keys.app_s_key);
    assert!(
        as_a.next_up(WAIT).await.is_some(),
        "join-accept on A's link"
    );
    a.ns.process_uplink(up(addr, &nwk, &app_s, 0))
        .await
        .unwrap();
    assert_eq!(f_cnt_of(&as_a.next_up(WAIT).await.unwrap()), 0);

    // B: its DevAddr index misses, the store has the session; B serves the device.
    for f_cnt in 1..=3 {
        b.ns.process_uplink(up(addr, &nwk, &app_s, f_cnt))
            .await
            .unwrap();
        let got = as_b.next_up(WAIT).await.expect("uplink delivered by B");
        assert_eq!(f_cnt_of(&got), f_cnt);
    }

    // A again (its cached copy says FCnt 0): FCnt 2 is a replay of what B accepted.
    // Recording it finds the stored version moved: A reloads the device and rejects it.
    let mut drops = a.drops().await;
    a.ns.process_uplink(up(addr, &nwk, &app_s, 2))
        .await
        .unwrap();
    assert_eq!(drop_reason(&mut drops).await, "f_cnt_replay");
    // B's last FCnt is now a retransmission for A: answered, never delivered again.
    a.ns.process_uplink(up(addr, &nwk, &app_s, 3))
        .await
        .unwrap();
    assert!(
        as_a.next_up(Duration::from_millis(300)).await.is_none(),
        "replays are not delivered"
    );
    // The next frame goes through A, continuing from what B stored.
    a.ns.process_uplink(up(addr, &nwk, &app_s, 4))
        .await
        .unwrap();
    assert_eq!(f_cnt_of(&as_a.next_up(WAIT).await.unwrap()), 4);
    assert_eq!(
        b.ns.get_device(&ids)
            .await
            .unwrap()
            .session
            .unwrap()
            .last_f_cnt_up,
        4
    );

    // B, stale in turn (it cached FCnt 3), takes FCnt 5 after reloading instead of
    // overwriting A's write, and stores it.
    b.ns.process_uplink(up(addr, &nwk, &app_s, 5))
        .await
        .unwrap();
    assert_eq!(f_cnt_of(&as_b.next_up(WAIT).await.unwrap()), 5);
    assert_eq!(
        a.ns.get_device(&ids)
            .await
            .unwrap()
            .session
            .unwrap()
            .last_f_cnt_up,
        5
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abp_device_created_through_the_other_instance_and_unknown_dev_addrs() {
    let ns_dir = tempfile::tempdir().unwrap();
    let a = Harness::start(ns_dir.path(), std::sync::Arc::new(NoJs), config()).await;
    let b = Harness::start(ns_dir.path(), std::sync::Arc::new(NoJs), config()).await;
    let mut as_b = b.link().await;
    let addr = DevAddr::from_u32(0x2601_0a0b);

    // Unknown everywhere: dropped, and again from B's brief negative cache.
    let mut drops = b.drops().await;
    for f_cnt in 0..2 {
        b.ns.process_uplink(up(addr, &NWK, &APP_S, f_cnt))
            .await
            .unwrap();
        assert_eq!(drop_reason(&mut drops).await, "unknown_dev_addr");
    }

    a.abp(
        "app-2",
        "abp-shared",
        addr,
        NWK,
        v3::MacVersion::MacV103,
        10,
    )
    .await;
    // B's negative answer expires, then its index miss loads the device A created.
    tokio::time::sleep(tern_networkserver::devices::RECENT_TTL + Duration::from_millis(100)).await;
    b.ns.process_uplink(up(addr, &NWK, &APP_S, 11))
        .await
        .unwrap();
    assert_eq!(f_cnt_of(&as_b.next_up(WAIT).await.unwrap()), 11);

    // The registry of A sees what B stored, and its next write builds on it.
    let ids = v3::EndDeviceIdentifiers::new("app-2", "abp-shared");
    assert_eq!(
        a.ns.get_device(&ids)
            .await
            .unwrap()
            .session
            .unwrap()
            .last_f_cnt_up,
        11
    );
    a.ns.set_device(
        v3::EndDevice {
            ids: Some(ids.clone()),
            name: "renamed through A".into(),
            ..Default::default()
        },
        &["name"],
    )
    .await
    .expect("A's write is based on the stored version, not its stale copy");
    let d = b.ns.get_device(&ids).await.unwrap();
    assert_eq!(d.name, "renamed through A");
    assert_eq!(d.session.unwrap().last_f_cnt_up, 11);
}

#[tokio::test]
async fn recent_set_is_bounded_and_forgets() {
    let set = RecentSet::new(Duration::from_millis(50), 2);
    for i in 0..5 {
        set.insert(DevAddr::from_u32(i));
    }
    assert_eq!(set.len(), 2, "never more than its capacity");
    assert!(set.contains(DevAddr::from_u32(4)), "the newest is kept");
    tokio::time::sleep(Duration::from_millis(80)).await;
    assert!(
        !set.contains(DevAddr::from_u32(4)),
        "forgotten after its TTL"
    );
    set.insert(DevAddr::from_u32(9));
    set.remove(DevAddr::from_u32(9));
    assert!(!set.contains(DevAddr::from_u32(9)));
}
