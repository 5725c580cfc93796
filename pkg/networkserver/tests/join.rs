//! OTAA joins through the real Join Server (in process, behind `NsJs`): 1.0.3 and 1.1,
//! DevNonce reuse, and the AppSKey never in clear in the NS's store or link messages.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use lorawan::crypto::{self, FOptsCounterVariant};
use lorawan::phy::{FCtrl, FOpts, Fhdr, JoinRequest, MacPayload, Mhdr, Payload};
use lorawan::{
    Aes128Key, DevAddr, DevNonce, Direction, Eui64, MType, MacCommand, NetId, PhyPayload,
};
use prost::Message;
use tern_api::v3;
use tern_joinserver::JoinServer;

const APP_KEY: Aes128Key = Aes128Key([
    0x2b, 0x7e, 0x15, 0x16, 0x28, 0xae, 0xd2, 0xa6, 0xab, 0xf7, 0x15, 0x88, 0x09, 0xcf, 0x4f, 0x3c,
]);
const NWK_KEY: Aes128Key = Aes128Key([0x44; 16]);
const JOIN_EUI: Eui64 = Eui64([0x70, 0xb3, 0xd5, 0x7e, 0xd0, 0, 0, 0]);
const WAIT: Duration = Duration::from_secs(3);

async fn register(
    js: &JoinServer,
    h: &Harness,
    dev: &str,
    dev_eui: Eui64,
    version: v3::MacVersion,
) {
    let ids = v3::EndDeviceIdentifiers::new("app-1", dev)
        .with_join_eui(JOIN_EUI)
        .with_dev_eui(dev_eui);
    let nwk_key = (version == v3::MacVersion::MacV11).then_some(NWK_KEY);
    register_otaa(
        js,
        &h.ns,
        ids,
        version,
        (APP_KEY, nwk_key),
        Some(quiet_mac()),
    )
    .await;
}

fn join_request(dev_eui: Eui64, dev_nonce: u16, key: &Aes128Key) -> Vec<u8> {
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
    phy.mic = Some(crypto::join_request_mic(key, &msg));
    phy.encode().unwrap()
}

/// Decrypts a join-accept; returns (DevAddr, JoinNonce, NetID, the decrypted bytes).
fn open_accept(raw: &[u8], key: &Aes128Key) -> (lorawan::phy::JoinAccept, Vec<u8>) {
    let clear = crypto::decrypt_join_accept(key, raw).unwrap();
    let phy = PhyPayload::decode(&clear).unwrap();
    let Payload::JoinAccept(ja) = phy.payload else {
        panic!()
    };
    (ja, clear)
}

fn join_accept_up(up: &v3::SequencedApplicationUp) -> v3::ApplicationJoinAccept {
    match up.up.as_ref().and_then(|u| u.up.clone()) {
        Some(v3::application_up::Up::JoinAccept(j)) => j,
        other => panic!("not a join-accept: {other:?}"),
    }
}

fn uplink_of(up: &v3::SequencedApplicationUp) -> v3::ApplicationUplink {
    match up.up.as_ref().and_then(|u| u.up.clone()) {
        Some(v3::application_up::Up::UplinkMessage(m)) => m,
        other => panic!("not an uplink: {other:?}"),
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Every byte of every file under `dir` (the embedded store and its WAL).
fn all_bytes(dir: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            out.extend(std::fs::read(p).unwrap());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otaa_1_0_3_join_then_uplink_with_the_new_session() {
    let js_dir = tempfile::tempdir().unwrap();
    let ns_dir = tempfile::tempdir().unwrap();
    let js = join_server(js_dir.path()).await;
    let h = Harness::start(ns_dir.path(), js.ns_link(), ns_config()).await;
    let dev_eui = Eui64::from_u64(0x0004a30b001c0530);
    register(&js, &h, "otaa-10", dev_eui, v3::MacVersion::MacV103).await;
    let mut as_ = h.link().await;
    let mut link_bytes = Vec::new();

    let raw = join_request(dev_eui, 0x0102, &APP_KEY);
    h.ns.gs_link()
        .handle_uplink(copy(&raw, "gw-a", 5.0, -70.0))
        .await
        .unwrap();
    let up = as_.next_up(WAIT).await.expect("join-accept for the AS");
    link_bytes.extend(up.encode_to_vec());
    let ja_up = join_accept_up(&up);
    assert!(ja_up.pending_session);
    let wrapped = ja_up.app_s_key.clone().unwrap();
    assert_eq!(wrapped.kek_label, "as:local");
    assert!(wrapped.key.is_empty(), "AppSKey wrapped, never clear");

    let downs = h.gs.take();
    assert_eq!(downs.len(), 1);
    let req = downs[0].request.clone().unwrap();
    assert_eq!(req.rx1_delay, 5, "JOIN_ACCEPT_DELAY1");
    assert_eq!(req.priority, v3::TxSchedulePriority::Highest as i32);
    let (ja, clear) = open_accept(&downs[0].raw_payload, &APP_KEY);
    let mic = crypto::join_accept_mic_1_0(&APP_KEY, PhyPayload::mic_input(&clear));
    assert_eq!(&clear[clear.len() - 4..], &mic);
    assert!(ja.dev_addr.is_net_id(NetId([0, 0, 0x13])));
    let keys =
        crypto::derive_session_keys_1_0(&APP_KEY, ja.join_nonce, ja.home_net_id, DevNonce(0x0102));
    let as_kek: Aes128Key = AS_KEK.parse().unwrap();
    assert_eq!(
        crypto::unwrap_key(&as_kek, &wrapped.encrypted_key).unwrap(),
        keys.app_s_key
    );

    // The first uplink of the new session.
    let data = data_up(
        ja.dev_addr,
        &keys.nwk_s_key,
        &keys.app_s_key,
        0,
        false,
        FCtrl::default(),
        &[],
        2,
        b"hi",
    );
    h.ns.process_uplink(copy(&data, "gw-a", 5.0, -70.0))
        .await
        .unwrap();
    let up = as_.next_up(WAIT).await.expect("uplink");
    link_bytes.extend(up.encode_to_vec());
    let m = uplink_of(&up);
    assert_eq!(m.session_key_id, ja_up.session_key_id);
    assert_eq!(m.f_cnt, 0);
    let d =
        h.ns.get_device(&v3::EndDeviceIdentifiers::new("app-1", "otaa-10"))
            .await
            .unwrap();
    assert_eq!(
        d.session.unwrap().dev_addr,
        ja.dev_addr.to_be_bytes().to_vec()
    );

    // DevNonce reuse: refused by the JS, no new session.
    let mut rejects = h
        .events
        .subscribe(tern_events::Filter::all().name("ns.up.join.reject"))
        .await
        .unwrap();
    h.ns.process_uplink(copy(&raw, "gw-a", 5.0, -70.0))
        .await
        .unwrap();
    let e = tokio::time::timeout(WAIT, rejects.recv())
        .await
        .unwrap()
        .unwrap();
    let name = e.data.clone().unwrap().fields.get("name").cloned().unwrap();
    assert_eq!(
        name.kind,
        Some(pbjson_types::value::Kind::StringValue(
            "dev_nonce_reused".into()
        ))
    );
    assert!(h.gs.take().is_empty());

    // The AppSKey is nowhere in clear: not in the NS's store files, not on the link.
    h.store.close().await.unwrap();
    let stored = all_bytes(ns_dir.path());
    assert!(!stored.is_empty());
    assert!(
        !contains(&stored, &keys.app_s_key.0),
        "clear AppSKey in the NS store"
    );
    assert!(
        contains(&stored, &wrapped.encrypted_key),
        "the wrapped AppSKey is stored"
    );
    assert!(
        !contains(&link_bytes, &keys.app_s_key.0),
        "clear AppSKey on the link"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otaa_1_1_join_rekey_and_first_uplink() {
    let js_dir = tempfile::tempdir().unwrap();
    let ns_dir = tempfile::tempdir().unwrap();
    let js = join_server(js_dir.path()).await;
    let h = Harness::start(ns_dir.path(), js.ns_link(), ns_config()).await;
    let dev_eui = Eui64::from_u64(0x0004a30b001c0531);
    register(&js, &h, "otaa-11", dev_eui, v3::MacVersion::MacV11).await;
    let mut as_ = h.link().await;

    let raw = join_request(dev_eui, 1, &NWK_KEY);
    h.ns.process_uplink(copy(&raw, "gw-a", 5.0, -70.0))
        .await
        .unwrap();
    let ja_up = join_accept_up(&as_.next_up(WAIT).await.unwrap());
    let downs = h.gs.take();
    assert_eq!(downs.len(), 1);
    let (ja, clear) = open_accept(&downs[0].raw_payload, &NWK_KEY);
    assert!(ja.dl_settings.opt_neg, "OptNeg for a 1.1 device");
    let js_int = crypto::derive_js_int_key(&NWK_KEY, dev_eui);
    let mic = crypto::join_accept_mic_1_1(
        &js_int,
        0xFF,
        JOIN_EUI,
        DevNonce(1),
        PhyPayload::mic_input(&clear),
    );
    assert_eq!(&clear[clear.len() - 4..], &mic);
    let k =
        crypto::derive_session_keys_1_1(&NWK_KEY, &APP_KEY, ja.join_nonce, JOIN_EUI, DevNonce(1));

    // First uplink: RekeyInd in encrypted FOpts, 1.1 MIC (DR5, channel 0).
    let addr: DevAddr = ja.dev_addr;
    let mut f_opts = Vec::new();
    MacCommand::RekeyInd(lorawan::mac::RekeyInd { minor_version: 1 })
        .encode(&mut f_opts)
        .unwrap();
    crypto::encrypt_f_opts(
        &k.nwk_s_enc_key,
        Direction::Uplink,
        addr,
        0,
        &mut f_opts,
        FOptsCounterVariant::Original,
    )
    .unwrap();
    let mut frm = b"up".to_vec();
    crypto::encrypt_frm_payload(&k.app_s_key, Direction::Uplink, addr, 0, &mut frm);
    let mut phy = PhyPayload {
        mhdr: Mhdr::new(MType::UnconfirmedDataUp),
        payload: Payload::MacPayload(MacPayload {
            fhdr: Fhdr {
                dev_addr: addr,
                f_ctrl: FCtrl::default(),
                f_cnt: 0,
                f_opts: FOpts::new(&f_opts).unwrap(),
            },
            f_port: Some(3),
            frm_payload: frm,
        }),
        mic: Some([0; 4]),
    };
    let msg = phy.encode_mic_input().unwrap();
    phy.mic = Some(crypto::uplink_mic_1_1(
        &k.f_nwk_s_int_key,
        &k.s_nwk_s_int_key,
        0,
        5,
        0,
        addr,
        0,
        &msg,
    ));
    h.ns.process_uplink(copy(&phy.encode().unwrap(), "gw-a", 5.0, -70.0))
        .await
        .unwrap();
    let m = uplink_of(&as_.next_up(WAIT).await.expect("uplink"));
    assert_eq!(m.session_key_id, ja_up.session_key_id);

    // RekeyConf in the downlink, FOpts encrypted with the NwkSEncKey, MIC with SNwkSIntKey.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let downs = h.gs.take();
    assert_eq!(downs.len(), 1, "RekeyConf downlink");
    let raw = &downs[0].raw_payload;
    let phy = PhyPayload::decode(raw).unwrap();
    let mp = phy.mac_payload().unwrap();
    let mic = crypto::downlink_mic(&k.s_nwk_s_int_key, 0, addr, 0, PhyPayload::mic_input(raw));
    assert_eq!(Some(mic), phy.mic);
    let mut opts = mp.fhdr.f_opts.as_slice().to_vec();
    if opts.is_empty() {
        opts = mp.frm_payload.clone();
        crypto::decrypt_frm_payload(&k.nwk_s_enc_key, Direction::Downlink, addr, 0, &mut opts);
    } else {
        crypto::encrypt_f_opts(
            &k.nwk_s_enc_key,
            Direction::Downlink,
            addr,
            0,
            &mut opts,
            FOptsCounterVariant::Original,
        )
        .unwrap();
    }
    let cmds = MacCommand::decode_all(Direction::Downlink, &opts).unwrap();
    assert!(
        cmds.iter().any(|c| matches!(c, MacCommand::RekeyConf(_))),
        "{cmds:?}"
    );
}

// ---- bursts: admission, deadlines, group commit ----

/// A GS that accepts every downlink and records when it was handed each one.
#[derive(Default)]
struct TimingGs {
    downlinks: std::sync::Mutex<Vec<(v3::DownlinkMessage, std::time::SystemTime)>>,
}

#[async_trait::async_trait]
impl tern_cluster::links::NsGs for TimingGs {
    async fn schedule_downlink(
        &self,
        downlink: v3::DownlinkMessage,
    ) -> tern_cluster::links::LinkResult<v3::ScheduleDownlinkResponse> {
        let now = std::time::SystemTime::now();
        self.downlinks.lock().unwrap().push((downlink, now));
        Ok(v3::ScheduleDownlinkResponse {
            result: Some(v3::schedule_downlink_response::Result::Scheduled(
                v3::ScheduledDownlink {
                    rx_window: 1,
                    ..Default::default()
                },
            )),
        })
    }
}

/// A real NS (embedded store in `dir`) in front of `js`, answering through a [`TimingGs`].
async fn timed_ns(
    dir: &Path,
    js: &JoinServer,
    config: tern_networkserver::NsConfig,
) -> (
    std::sync::Arc<tern_networkserver::NetworkServer>,
    std::sync::Arc<TimingGs>,
    tern_events::EventBus,
) {
    let store = tern_store::Store::open(&tern_store::StoreConfig::default(), dir)
        .await
        .unwrap();
    let events = tern_events::EventBus::in_process(8192);
    let ns = tern_networkserver::NetworkServer::with_deps(tern_networkserver::NsDeps {
        config,
        store,
        events: events.clone(),
        auth: tern_cluster::auth::Authenticator::new(
            tern_cluster::auth::ClusterKeys::new(&["cluster-key-0123456789"]).unwrap(),
        ),
        js: js.ns_link(),
        instance_id: "ns-burst".into(),
    })
    .unwrap();
    let gs = std::sync::Arc::new(TimingGs::default());
    ns.set_gateway_server(gs.clone()).unwrap();
    ns.load().await.unwrap();
    (std::sync::Arc::new(ns), gs, events)
}

/// Registers `n` fresh 1.0.3 devices on both servers; returns their DevEUIs.
async fn fresh_devices(
    js: &JoinServer,
    ns: &tern_networkserver::NetworkServer,
    base: u64,
    n: usize,
) -> Vec<Eui64> {
    let mut out = Vec::new();
    for i in 0..n {
        let dev_eui = Eui64::from_u64(base + i as u64);
        let dev = format!("burst-{:x}", base + i as u64);
        let ids = v3::EndDeviceIdentifiers::new("app-1", &dev)
            .with_join_eui(JOIN_EUI)
            .with_dev_eui(dev_eui);
        register_otaa(js, ns, ids, v3::MacVersion::MacV103, (APP_KEY, None), None).await;
        out.push(dev_eui);
    }
    out
}

/// A join-request heard by three gateways, as the NS sees it after dedup, received `age` ago.
fn heard(dev_eui: Eui64, dev_nonce: u16, age: Duration) -> v3::UplinkMessage {
    let raw = join_request(dev_eui, dev_nonce, &APP_KEY);
    let mut up = copy(&raw, "gw-a", 7.0, -60.0);
    for (gw, snr) in [("gw-b", 3.0), ("gw-c", -2.0)] {
        up.rx_metadata
            .extend(copy(&raw, gw, snr, -90.0).rx_metadata);
    }
    up.received_at = Some((std::time::SystemTime::now() - age).into());
    up
}

/// Processes every uplink at once (each as its own dedup window would).
async fn burst(
    ns: &std::sync::Arc<tern_networkserver::NetworkServer>,
    ups: Vec<v3::UplinkMessage>,
) {
    let mut tasks = tokio::task::JoinSet::new();
    for up in ups {
        let ns = ns.clone();
        tasks.spawn(async move { ns.process_uplink(up).await.unwrap() });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
}

/// The `name` of every `ns.up.join.reject` event waiting in `sub`.
fn reject_names(sub: &mut tern_events::Subscription) -> Vec<String> {
    let mut out = Vec::new();
    while let Ok(Some(e)) = sub.try_recv() {
        if let Some(pbjson_types::value::Kind::StringValue(name)) = e
            .data
            .clone()
            .and_then(|d| d.fields.get("name").cloned())
            .and_then(|v| v.kind)
        {
            out.push(name);
        }
    }
    out
}

/// Checks an accept the NS handed over: it decrypts and its MIC verifies with the AppKey,
/// and it reached the GS before the window it asks for opens. Returns (DevAddr, whether RX1).
fn check_accept(
    msg: &v3::DownlinkMessage,
    at: std::time::SystemTime,
    received_at: std::time::SystemTime,
) -> (DevAddr, bool) {
    let (ja, clear) = open_accept(&msg.raw_payload, &APP_KEY);
    let mic = crypto::join_accept_mic_1_0(&APP_KEY, PhyPayload::mic_input(&clear));
    assert_eq!(&clear[clear.len() - 4..], &mic, "join-accept MIC");
    let req = msg.request.as_ref().unwrap();
    assert_eq!(req.rx1_delay, 5, "JOIN_ACCEPT_DELAY1");
    assert!(req.rx2_data_rate.is_some() && req.rx2_frequency > 0);
    let rx1 = req.rx1_data_rate.is_some();
    assert_eq!(rx1, req.rx1_frequency > 0);
    let opens = received_at + Duration::from_secs(if rx1 { 5 } else { 6 });
    assert!(
        at < opens,
        "accept handed over {:?} after its window opened",
        at.duration_since(opens).unwrap_or_default()
    );
    (ja.dev_addr, rx1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_of_fresh_joins_is_answered_in_its_windows_or_dropped_too_late() {
    let js_dir = tempfile::tempdir().unwrap();
    let ns_dir = tempfile::tempdir().unwrap();
    let js = join_server(js_dir.path()).await;
    let mut config = ns_config();
    config.join_concurrency = 8;
    let (ns, gs, events) = timed_ns(ns_dir.path(), &js, config).await;
    let devs = fresh_devices(&js, &ns, 0x00a0_0000_0000_0000, 60).await;
    let mut rejects = events
        .subscribe(tern_events::Filter::all().name("ns.up.join.reject"))
        .await
        .unwrap();

    // 40 fresh requests (the first 10 sent twice at once, as a device retrying would),
    // 10 received 4.95 s ago (too late for RX1, not for RX2), 10 received 6.5 s ago (too
    // late for both: dropped before the Join Server sees them).
    let mut ups = Vec::new();
    let mut sent_at = std::collections::HashMap::new();
    for (i, d) in devs.iter().enumerate() {
        let age = match i {
            0..40 => Duration::ZERO,
            40..50 => Duration::from_millis(4_950),
            _ => Duration::from_millis(6_500),
        };
        let up = heard(*d, 0x100 + i as u16, age);
        let received = up.received_at.unwrap().to_datetime().unwrap();
        sent_at.insert(
            up.raw_payload.clone(),
            std::time::SystemTime::from(received),
        );
        if i < 10 {
            ups.push(up.clone());
        }
        ups.push(up);
    }
    burst(&ns, ups).await;

    let downs = std::mem::take(&mut *gs.downlinks.lock().unwrap());
    let names = reject_names(&mut rejects);
    let mut addrs = std::collections::HashSet::new();
    let (mut rx1, mut rx2_only) = (0, 0);
    for (msg, at) in &downs {
        let dev_eui = devs
            .iter()
            .find(|d| msg.end_device_ids.as_ref().unwrap().dev_eui == d.to_be_bytes())
            .copied()
            .expect("accept for a burst device");
        let i = devs.iter().position(|d| *d == dev_eui).unwrap();
        let raw = join_request(dev_eui, 0x100 + i as u16, &APP_KEY);
        let (addr, in_rx1) = check_accept(msg, *at, sent_at[&raw]);
        assert!(addrs.insert(addr), "DevAddr {addr} handed out twice");
        assert!(i < 50, "device {i} was received after its RX2 window");
        if in_rx1 {
            assert!(i < 40, "device {i} got RX1 with 50 ms left");
            rx1 += 1;
        } else {
            assert!(i >= 40, "fresh device {i} answered in RX2 only");
            rx2_only += 1;
        }
    }
    // Each DevNonce was accepted once: the duplicates were refused by the JS.
    assert_eq!(rx1, 40, "every fresh request answered in RX1");
    let reused = names.iter().filter(|n| *n == "dev_nonce_reused").count();
    assert_eq!(reused, 10, "{names:?}");
    let too_late = names.iter().filter(|n| *n == "too_late").count();
    // The 6.5 s old ones always; those 4.95 s old only if the machine was too slow for RX2.
    assert_eq!(rx2_only + too_late, 20, "{names:?}");
    assert!(too_late >= 10, "{names:?}");
    assert_eq!(names.len(), reused + too_late, "{names:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_answers_the_first_in_time_and_drops_the_rest_too_late() {
    let js_dir = tempfile::tempdir().unwrap();
    let ns_dir = tempfile::tempdir().unwrap();
    let js = join_server(js_dir.path()).await;
    let mut config = ns_config();
    config.join_concurrency = 1;
    let (ns, gs, events) = timed_ns(ns_dir.path(), &js, config).await;
    let n = 250;
    let devs = fresh_devices(&js, &ns, 0x00b0_0000_0000_0000, n).await;
    let mut rejects = events
        .subscribe(tern_events::Filter::all().name("ns.up.join.reject"))
        .await
        .unwrap();

    // All received 5 s ago: RX1 opens now, RX2 in 1 s, 200 ms of it margin. One at a time,
    // each with at least three durable writes (each waiting the 2 ms group commit delay),
    // not all of them can be answered: the first are, in RX2.
    let age = Duration::from_millis(5_000);
    let ups: Vec<_> = devs.iter().map(|d| heard(*d, 7, age)).collect();
    let received: std::time::SystemTime = ups[0].received_at.unwrap().to_datetime().unwrap().into();
    burst(&ns, ups).await;

    let downs = std::mem::take(&mut *gs.downlinks.lock().unwrap());
    let names = reject_names(&mut rejects);
    assert!(!downs.is_empty(), "the first requests are answered");
    for (msg, at) in &downs {
        // Every request was received within microseconds of the first: the same window.
        let (_, in_rx1) = check_accept(msg, *at, received);
        assert!(!in_rx1, "RX1 opened as the burst began");
    }
    let too_late = names.iter().filter(|n| *n == "too_late").count();
    assert_eq!(downs.len() + too_late, n, "{names:?}");
    assert!(too_late > 0, "250 joins, one at a time, within 800 ms");
    assert_eq!(names.len(), too_late, "{names:?}");
}
