//! LoRaWAN 1.1 rejoin-requests through the real Join Server (in process, behind `NsJs`),
//! answered to a simulated 1.1 device (tern-simulator); RJcount0 replays; 1.0.x devices;
//! and the per-device FOpts counter variant of 1.1 devices.

mod common;

use std::time::Duration;

use common::*;
use lorawan::crypto::{self, FOptsCounterVariant};
use lorawan::phy::{Mhdr, Payload, RejoinRequest};
use lorawan::{Aes128Key, Direction, Eui64, MType, MacCommand, NetId, PhyPayload};
use tern_api::v3;
use tern_cluster::role::{MetricsRegistry, ReadinessSignal, RoleContext, RoleService, Shutdown};
use tern_events::Filter;
use tern_joinserver::JoinServer;
use tern_simulator::{Device, DeviceConfig, Uplink, Version};

const APP_KEY: Aes128Key = Aes128Key([
    0x2b, 0x7e, 0x15, 0x16, 0x28, 0xae, 0xd2, 0xa6, 0xab, 0xf7, 0x15, 0x88, 0x09, 0xcf, 0x4f, 0x3c,
]);
const NWK_KEY: Aes128Key = Aes128Key([0x44; 16]);
const JOIN_EUI: Eui64 = Eui64([0x70, 0xb3, 0xd5, 0x7e, 0xd0, 0, 0, 0]);
const WAIT: Duration = Duration::from_secs(3);

/// Registers an OTAA device on the JS and the NS.
async fn register(
    js: &JoinServer,
    h: &Harness,
    dev: &str,
    dev_eui: Eui64,
    version: v3::MacVersion,
    variant: Option<v3::FOptsCounterVariant>,
) {
    let ids = v3::EndDeviceIdentifiers::new("app-1", dev)
        .with_join_eui(JOIN_EUI)
        .with_dev_eui(dev_eui);
    let nwk_key = (version == v3::MacVersion::MacV11).then_some(NWK_KEY);
    let mac = v3::MacSettings {
        f_opts_counter_variant: variant.map(|v| v as i32),
        ..quiet_mac()
    };
    register_otaa(js, &h.ns, ids, version, (APP_KEY, nwk_key), Some(mac)).await;
}

fn sim(dev_eui: Eui64, version: Version, variant: FOptsCounterVariant) -> Device {
    let mut c = DeviceConfig::otaa(dev_eui, JOIN_EUI, version, APP_KEY);
    if version == Version::V1_1 {
        c.nwk_key = Some(NWK_KEY);
    }
    c.f_opts_variant = variant;
    Device::new(c)
}

/// A data uplink at DR5 on channel 0 (what `copy` says it was received with).
fn data(f_opts: Vec<MacCommand>) -> Uplink {
    Uplink {
        f_port: Some(2),
        payload: b"hi".to_vec(),
        f_opts,
        tx_dr: 5,
        tx_ch: 0,
        ..Default::default()
    }
}

/// The downlinks the GS got, waiting up to `WAIT` for at least one.
async fn downlinks(h: &Harness) -> Vec<v3::DownlinkMessage> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let d = h.gs.take();
        if !d.is_empty() || tokio::time::Instant::now() > deadline {
            return d;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The next message of the AS of one kind, skipping others.
async fn next_of(as_: &mut TestAs, want: &str) -> v3::application_up::Up {
    loop {
        let up = as_
            .next_up(WAIT)
            .await
            .unwrap_or_else(|| panic!("no {want} for the AS"));
        let up = up.up.and_then(|u| u.up).expect("an up message");
        let kind = match &up {
            v3::application_up::Up::JoinAccept(_) => "join_accept",
            v3::application_up::Up::UplinkMessage(_) => "uplink",
            _ => "other",
        };
        if kind == want {
            return up;
        }
    }
}

async fn join_accept(as_: &mut TestAs) -> v3::ApplicationJoinAccept {
    match next_of(as_, "join_accept").await {
        v3::application_up::Up::JoinAccept(j) => j,
        _ => unreachable!(),
    }
}

async fn uplink_session(as_: &mut TestAs) -> Vec<u8> {
    match next_of(as_, "uplink").await {
        v3::application_up::Up::UplinkMessage(m) => m.session_key_id,
        _ => unreachable!(),
    }
}

/// Joins `device` and sends the first uplink of its session (RekeyInd → RekeyConf).
async fn join(h: &Harness, as_: &mut TestAs, device: &mut Device) -> Vec<u8> {
    let raw = device.join_request().unwrap();
    h.ns.process_uplink(copy(&raw, "gw-a", 5.0, -70.0))
        .await
        .unwrap();
    let ja = join_accept(as_).await;
    let downs = downlinks(h).await;
    assert_eq!(downs.len(), 1, "one join-accept");
    device.accept_join(&downs[0].raw_payload).unwrap();
    first_uplink(h, as_, device, &ja.session_key_id).await;
    ja.session_key_id
}

/// The first uplink of a new session: it reaches the AS with that session, and the device
/// accepts the RekeyConf downlink.
async fn first_uplink(h: &Harness, as_: &mut TestAs, device: &mut Device, session_key_id: &[u8]) {
    let raw = device.uplink(&data(Vec::new())).unwrap();
    h.ns.process_uplink(copy(&raw, "gw-a", 5.0, -70.0))
        .await
        .unwrap();
    assert_eq!(uplink_session(as_).await, session_key_id);
    let downs = downlinks(h).await;
    assert_eq!(downs.len(), 1, "the RekeyConf downlink");
    let d = device.downlink(&downs[0].raw_payload).unwrap();
    assert!(
        d.commands
            .iter()
            .any(|c| matches!(c, MacCommand::RekeyConf(_))),
        "{:?}",
        d.commands
    );
}

fn reason(e: &v3::Event) -> (String, String) {
    let fields = e.data.clone().unwrap().fields;
    let get = |k: &str| match fields.get(k).and_then(|v| v.kind.clone()) {
        Some(pbjson_types::value::Kind::StringValue(s)) => s,
        other => panic!("{k}: {other:?}"),
    };
    (get("name"), get("message"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejoin_types_0_2_and_1_rekey_a_1_1_device() {
    let js_dir = tempfile::tempdir().unwrap();
    let ns_dir = tempfile::tempdir().unwrap();
    let js = join_server(js_dir.path()).await;
    let h = Harness::start(ns_dir.path(), js.ns_link(), ns_config()).await;
    let dev_eui = Eui64::from_u64(0x0004a30b001c0600);
    register(&js, &h, "rj-11", dev_eui, v3::MacVersion::MacV11, None).await;
    let mut as_ = h.link().await;
    let mut device = sim(dev_eui, Version::V1_1, FOptsCounterVariant::Original);
    let first = join(&h, &mut as_, &mut device).await;

    // Type 0: a new session, a new DevAddr, the accept in the data receive windows.
    let raw = device.rejoin_request(0).unwrap();
    assert_eq!(raw.len(), 19);
    h.ns.process_uplink(copy(&raw, "gw-a", 5.0, -70.0))
        .await
        .unwrap();
    let ja = join_accept(&mut as_).await;
    assert!(ja.pending_session);
    assert_ne!(ja.session_key_id, first);
    let downs = downlinks(&h).await;
    assert_eq!(downs.len(), 1, "one rejoin-accept");
    let req = downs[0].request.clone().unwrap();
    assert_eq!(
        req.rx1_delay, 1,
        "RECEIVE_DELAY1 of the session, not JOIN_ACCEPT_DELAY1"
    );
    assert_eq!(req.priority, v3::TxSchedulePriority::Highest as i32);
    assert_eq!(req.rx1_frequency, 868_100_000);
    assert_eq!(req.rx2_frequency, 869_525_000);
    let session = device.accept_rejoin(&downs[0].raw_payload).unwrap().clone();
    assert!(session.dev_addr.is_net_id(NetId([0, 0, 0x13])));
    first_uplink(&h, &mut as_, &mut device, &ja.session_key_id).await;
    let stored =
        h.ns.get_device(&v3::EndDeviceIdentifiers::new("app-1", "rj-11"))
            .await
            .unwrap();
    assert_eq!(
        stored.session.unwrap().dev_addr,
        session.dev_addr.to_be_bytes().to_vec()
    );

    // Type 2: new keys, same DevAddr.
    let raw = device.rejoin_request(2).unwrap();
    h.ns.process_uplink(copy(&raw, "gw-a", 5.0, -70.0))
        .await
        .unwrap();
    let ja2 = join_accept(&mut as_).await;
    assert_ne!(ja2.session_key_id, ja.session_key_id);
    let downs = downlinks(&h).await;
    assert_eq!(downs.len(), 1, "one rejoin-accept");
    assert_eq!(downs[0].request.as_ref().unwrap().rx1_delay, 1);
    let after = device.accept_rejoin(&downs[0].raw_payload).unwrap().clone();
    assert_eq!(after.dev_addr, session.dev_addr, "type 2 keeps the DevAddr");
    assert_ne!(after.keys, session.keys);
    first_uplink(&h, &mut as_, &mut device, &ja2.session_key_id).await;

    // Type 1 (JoinEUI + DevEUI, verified by the JS): a new session again.
    let raw = device.rejoin_request(1).unwrap();
    assert_eq!(raw.len(), 24);
    h.ns.process_uplink(copy(&raw, "gw-a", 5.0, -70.0))
        .await
        .unwrap();
    let ja3 = join_accept(&mut as_).await;
    let downs = downlinks(&h).await;
    assert_eq!(downs.len(), 1, "one rejoin-accept");
    device.accept_rejoin(&downs[0].raw_payload).unwrap();
    first_uplink(&h, &mut as_, &mut device, &ja3.session_key_id).await;
    assert_eq!(device.rj_counts(), (0, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_rj_count0_is_dropped_with_a_reason_and_a_metric() {
    let js_dir = tempfile::tempdir().unwrap();
    let ns_dir = tempfile::tempdir().unwrap();
    let js = join_server(js_dir.path()).await;
    let h = Harness::start(ns_dir.path(), js.ns_link(), ns_config()).await;
    let metrics = MetricsRegistry::new();
    h.ns.start(&RoleContext {
        data_dir: ns_dir.path().to_owned(),
        metrics: metrics.clone(),
        shutdown: Shutdown::new(),
        readiness: ReadinessSignal::new(),
    })
    .await
    .unwrap();
    let dev_eui = Eui64::from_u64(0x0004a30b001c0601);
    register(&js, &h, "rj-replay", dev_eui, v3::MacVersion::MacV11, None).await;
    let mut as_ = h.link().await;
    let mut device = sim(dev_eui, Version::V1_1, FOptsCounterVariant::Original);
    join(&h, &mut as_, &mut device).await;
    let mut rejects = h
        .events
        .subscribe(Filter::all().name("ns.up.join.reject"))
        .await
        .unwrap();

    let raw = device.rejoin_request(0).unwrap();
    h.ns.process_uplink(copy(&raw, "gw-a", 5.0, -70.0))
        .await
        .unwrap();
    join_accept(&mut as_).await;
    assert_eq!(downlinks(&h).await.len(), 1);
    // The same RJcount0 again (the accept was lost, say): dropped, nothing scheduled.
    h.ns.process_uplink(copy(&raw, "gw-a", 5.0, -70.0))
        .await
        .unwrap();
    let e = tokio::time::timeout(WAIT, rejects.recv())
        .await
        .unwrap()
        .unwrap();
    let (name, message) = reason(&e);
    assert_eq!(name, "rj_count_replay");
    assert!(message.contains("RJcount0 0"), "{message}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(h.gs.take().is_empty());
    let text = metrics.with_registry(|r| {
        let mut s = String::new();
        prometheus_client::encoding::text::encode(&mut s, r).unwrap();
        s
    });
    assert!(
        text.contains("tern_ns_uplinks_dropped_total{reason=\"rj_count_replay\"} 1"),
        "{text}"
    );
    assert!(text.contains("tern_ns_rejoins_total{outcome=\"rj_count_replay\"} 1"));
    assert!(text.contains("tern_ns_rejoins_total{outcome=\"accepted\"} 1"));

    // RJcount0 is durable: after a restart the replay is still refused.
    h.store.close().await.unwrap();
    drop(as_);
    drop(h);
    let h = Harness::start(ns_dir.path(), js.ns_link(), ns_config()).await;
    let mut as_ = h.link().await;
    let mut rejects = h
        .events
        .subscribe(Filter::all().name("ns.up.join.reject"))
        .await
        .unwrap();
    h.ns.process_uplink(copy(&raw, "gw-a", 5.0, -70.0))
        .await
        .unwrap();
    let e = tokio::time::timeout(WAIT, rejects.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reason(&e).0, "rj_count_replay");

    // The next RJcount0 is fine; the device takes the accept.
    let raw = device.rejoin_request(0).unwrap();
    h.ns.process_uplink(copy(&raw, "gw-a", 5.0, -70.0))
        .await
        .unwrap();
    let ja = join_accept(&mut as_).await;
    let downs = downlinks(&h).await;
    assert_eq!(downs.len(), 1);
    device.accept_rejoin(&downs[0].raw_payload).unwrap();
    first_uplink(&h, &mut as_, &mut device, &ja.session_key_id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejoin_of_a_1_0_device_is_dropped_with_a_precise_reason() {
    let js_dir = tempfile::tempdir().unwrap();
    let ns_dir = tempfile::tempdir().unwrap();
    let js = join_server(js_dir.path()).await;
    let h = Harness::start(ns_dir.path(), js.ns_link(), ns_config()).await;
    let dev_eui = Eui64::from_u64(0x0004a30b001c0602);
    register(&js, &h, "rj-10", dev_eui, v3::MacVersion::MacV103, None).await;
    let mut as_ = h.link().await;
    let mut device = sim(dev_eui, Version::V1_0, FOptsCounterVariant::Original);
    let raw = device.join_request().unwrap();
    h.ns.process_uplink(copy(&raw, "gw-a", 5.0, -70.0))
        .await
        .unwrap();
    join_accept(&mut as_).await;
    device
        .accept_join(&downlinks(&h).await[0].raw_payload)
        .unwrap();
    assert!(
        device.rejoin_request(0).is_err(),
        "1.0 devices cannot rejoin"
    );
    let mut rejects = h
        .events
        .subscribe(Filter::all().name("ns.up.join.reject"))
        .await
        .unwrap();
    let nwk_s_key = match device.session().unwrap().keys {
        tern_simulator::Keys::V1_0(k) => k.nwk_s_key,
        _ => unreachable!(),
    };
    for payload in [
        RejoinRequest::Type0Or2 {
            rejoin_type: 0,
            net_id: NetId([0, 0, 0x13]),
            dev_eui,
            rj_count0: 0,
        },
        RejoinRequest::Type1 {
            join_eui: JOIN_EUI,
            dev_eui,
            rj_count1: 0,
        },
    ] {
        let phy = PhyPayload {
            mhdr: Mhdr::new(MType::RejoinRequest),
            payload: Payload::RejoinRequest(payload),
            mic: Some([0; 4]),
        };
        let mut raw = phy.encode_mic_input().unwrap();
        let mic = crypto::rejoin_request_mic(&nwk_s_key, &raw);
        raw.extend_from_slice(&mic);
        h.ns.process_uplink(copy(&raw, "gw-a", 5.0, -70.0))
            .await
            .unwrap();
        let e = tokio::time::timeout(WAIT, rejects.recv())
            .await
            .unwrap()
            .unwrap();
        let (name, message) = reason(&e);
        assert_eq!(name, "rejoin_not_supported", "{message}");
        assert!(message.contains("MAC_V1_0_3"), "{message}");
        assert!(message.contains("only in LoRaWAN 1.1"), "{message}");
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(h.gs.take().is_empty());
}

/// One 1.1 device per FOpts variant: the NS reads RekeyInd/LinkCheckReq in the uplink's
/// FOpts and the device reads RekeyConf (NFCntDown frame) and LinkCheckAns (in an
/// application downlink: AFCntDown frame) with its own variant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f_opts_counter_variant_per_device() {
    let js_dir = tempfile::tempdir().unwrap();
    let ns_dir = tempfile::tempdir().unwrap();
    let js = join_server(js_dir.path()).await;
    let h = Harness::start(ns_dir.path(), js.ns_link(), ns_config()).await;
    let mut as_ = h.link().await;
    for (i, (setting, variant)) in [
        (
            Some(v3::FOptsCounterVariant::Errata),
            FOptsCounterVariant::ErrataNFCnt,
        ),
        (
            Some(v3::FOptsCounterVariant::Original11),
            FOptsCounterVariant::Original,
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let name = format!("fopts-{i}");
        let dev_eui = Eui64::from_u64(0x0004a30b001c0700 + i as u64);
        register(&js, &h, &name, dev_eui, v3::MacVersion::MacV11, setting).await;
        let mut device = sim(dev_eui, Version::V1_1, variant);
        let session_key_id = join(&h, &mut as_, &mut device).await;

        // An application downlink (AFCntDown 0) waits; the uplink asks for a LinkCheck.
        let s = device.session().unwrap().clone();
        let mut frm = b"down".to_vec();
        crypto::encrypt_frm_payload(
            &s.keys.app_s_key(),
            Direction::Downlink,
            s.dev_addr,
            0,
            &mut frm,
        );
        let r = as_
            .queue(
                "app-1",
                &name,
                false,
                vec![v3::ApplicationDownlink {
                    session_key_id: session_key_id.clone(),
                    f_port: 5,
                    f_cnt: 0,
                    frm_payload: frm,
                    ..Default::default()
                }],
            )
            .await;
        assert!(r.error.is_none(), "{r:?}");
        let raw = device
            .uplink(&data(vec![MacCommand::LinkCheckReq]))
            .unwrap();
        h.ns.process_uplink(copy(&raw, "gw-a", 5.0, -70.0))
            .await
            .unwrap();
        uplink_session(&mut as_).await;
        let downs = downlinks(&h).await;
        assert_eq!(downs.len(), 1);
        let d = device.downlink(&downs[0].raw_payload).unwrap();
        assert_eq!(d.f_port, Some(5));
        assert_eq!(d.payload, b"down");
        assert!(
            d.commands
                .iter()
                .any(|c| matches!(c, MacCommand::LinkCheckAns(_))),
            "{variant:?}: {:?}",
            d.commands
        );
    }
}

/// A (re)join-accept has no path when every gateway that heard the request is disconnected:
/// it fails with `no_gateway_path` and nothing reaches the GS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_accept_without_a_connected_gateway_fails_with_no_gateway_path() {
    let js_dir = tempfile::tempdir().unwrap();
    let ns_dir = tempfile::tempdir().unwrap();
    let js = join_server(js_dir.path()).await;
    let h = Harness::start(ns_dir.path(), js.ns_link(), ns_config()).await;
    let dev_eui = Eui64::from_u64(0x0004a30b001c0603);
    register(&js, &h, "rj-nopath", dev_eui, v3::MacVersion::MacV11, None).await;
    let mut fails = h
        .events
        .subscribe(Filter::all().name("ns.down.join.schedule.fail"))
        .await
        .unwrap();
    h.ns.gs_link()
        .report_gateway_connection(v3::GatewayConnectionEvent {
            gateway_ids: Some(v3::GatewayIdentifiers::new("gw-a", None)),
            state: v3::gateway_connection_event::State::Disconnected as i32,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut device = sim(dev_eui, Version::V1_1, FOptsCounterVariant::Original);
    let raw = device.join_request().unwrap();
    h.ns.process_uplink(copy(&raw, "gw-a", 5.0, -70.0))
        .await
        .unwrap();
    let e = tokio::time::timeout(WAIT, fails.recv())
        .await
        .expect("a join schedule failure")
        .unwrap();
    let json = serde_json::to_string(&e.data).unwrap();
    assert!(json.contains("no_gateway_path"), "{json}");
    assert!(json.contains("gw-a"), "{json}");
    assert!(h.gs.take().is_empty());
}
