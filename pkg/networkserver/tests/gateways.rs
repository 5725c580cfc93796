//! Gateway connection reports and downlink paths: a gateway reported disconnected is
//! skipped for class A and class C downlinks until it is reported connected again; with no
//! path left the downlink fails with `no_gateway_path` and the queue item stays.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use lorawan::phy::FCtrl;
use lorawan::{Aes128Key, DevAddr, Direction};
use tern_api::v3;
use tern_api::v3::gateway_connection_event::State;
use tern_events::Filter;

const NWK: Aes128Key = Aes128Key([0x51; 16]);
const APP: Aes128Key = Aes128Key([0x52; 16]);
const ADDR: DevAddr = DevAddr([0x26, 0x0b, 0x0c, 0x0d]);
const WAIT: Duration = Duration::from_secs(3);

/// One uplink heard by gw-a (the better one) and gw-b.
async fn uplink(h: &Harness, f_cnt: u32, confirmed: bool) {
    let raw = data_up(
        ADDR,
        &NWK,
        &APP,
        f_cnt,
        confirmed,
        FCtrl::default(),
        &[],
        1,
        b"u",
    );
    let mut msg = copy(&raw, "gw-a", 9.0, -60.0);
    msg.rx_metadata
        .extend(copy(&raw, "gw-b", 2.0, -90.0).rx_metadata);
    h.ns.process_uplink(msg).await.unwrap();
}

async fn report(h: &Harness, gateway: &str, state: State) {
    h.ns.gs_link()
        .report_gateway_connection(v3::GatewayConnectionEvent {
            gateway_ids: Some(v3::GatewayIdentifiers::new(gateway, None)),
            state: state as i32,
            protocol: "semtech-udp".into(),
            remote_address: "127.0.0.1:1700".into(),
            ..Default::default()
        })
        .await
        .unwrap();
}

/// The gateways of a downlink's paths (class A tokens are `token-<gateway>`).
fn path_gateways(d: &v3::DownlinkMessage) -> Vec<String> {
    d.request
        .as_ref()
        .unwrap()
        .downlink_paths
        .iter()
        .map(|p| match p.path.as_ref().unwrap() {
            v3::downlink_path::Path::UplinkToken(t) => String::from_utf8(t.clone())
                .unwrap()
                .trim_start_matches("token-")
                .to_owned(),
            v3::downlink_path::Path::Fixed(f) => f.gateway_ids.as_ref().unwrap().gateway_id.clone(),
        })
        .collect()
}

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

fn item(f_cnt: u32, payload: &[u8]) -> v3::ApplicationDownlink {
    let mut frm = payload.to_vec();
    lorawan::crypto::encrypt_frm_payload(&APP, Direction::Downlink, ADDR, f_cnt, &mut frm);
    v3::ApplicationDownlink {
        f_port: 5,
        f_cnt,
        frm_payload: frm,
        ..Default::default()
    }
}

async fn queued(h: &Harness) -> usize {
    h.ns.as_link()
        .downlink_queue_list(
            tern_cluster::auth::Caller::Cluster,
            v3::EndDeviceIdentifiers::new("app-1", "dev-gw"),
        )
        .await
        .unwrap()
        .downlinks
        .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnected_gateways_are_skipped_until_they_reconnect() {
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::start(dir.path(), Arc::new(NoJs), config()).await;
    h.abp("app-1", "dev-gw", ADDR, NWK, v3::MacVersion::MacV103, 0)
        .await;
    // Class C, no periodic MAC requests.
    h.ns.set_device(
        v3::EndDevice {
            ids: Some(v3::EndDeviceIdentifiers::new("app-1", "dev-gw")),
            mac_settings: Some(v3::MacSettings {
                class: Some(v3::DeviceClass::ClassC as i32),
                adr_enabled: Some(false),
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
    let mut as_ = h.link().await;
    let mut fails = h
        .events
        .subscribe(Filter::all().name("ns.down.data.schedule.fail"))
        .await
        .unwrap();

    // Both connected: the confirmed uplink's ACK may go through either, best first.
    uplink(&h, 1, true).await;
    let d = downlinks(&h).await;
    assert_eq!(d.len(), 1);
    assert_eq!(path_gateways(&d[0]), ["gw-a", "gw-b"]);

    // gw-a disconnects: class A and class C go through gw-b only.
    report(&h, "gw-a", State::Disconnected).await;
    uplink(&h, 2, true).await;
    let d = downlinks(&h).await;
    assert_eq!(d.len(), 1);
    assert_eq!(path_gateways(&d[0]), ["gw-b"]);
    let next = as_
        .queue("app-1", "dev-gw", false, vec![])
        .await
        .next_a_f_cnt_down;
    let r = as_
        .queue("app-1", "dev-gw", false, vec![item(next, b"c1")])
        .await;
    assert!(r.error.is_none(), "{r:?}");
    let d = downlinks(&h).await;
    assert_eq!(d.len(), 1, "the class C downlink");
    assert_eq!(
        d[0].request.as_ref().unwrap().class,
        v3::DeviceClass::ClassC as i32
    );
    assert_eq!(path_gateways(&d[0]), ["gw-b"]);

    // gw-b loses its downlink path too: nothing can be sent, the item stays queued.
    report(&h, "gw-b", State::DownlinkPathLost).await;
    let next = as_
        .queue("app-1", "dev-gw", false, vec![])
        .await
        .next_a_f_cnt_down;
    let r = as_
        .queue("app-1", "dev-gw", false, vec![item(next, b"c2")])
        .await;
    assert!(r.error.is_none(), "{r:?}");
    let e = tokio::time::timeout(WAIT, fails.recv())
        .await
        .expect("a schedule failure event")
        .unwrap();
    let json = serde_json::to_string(&e.data).unwrap();
    assert!(json.contains("no_gateway_path"), "{json}");
    assert!(json.contains("gw-b"), "{json}");
    uplink(&h, 3, false).await;
    let e = tokio::time::timeout(WAIT, fails.recv())
        .await
        .expect("a schedule failure event for the class A window")
        .unwrap();
    assert!(
        serde_json::to_string(&e.data)
            .unwrap()
            .contains("no_gateway_path")
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(h.gs.take().is_empty());
    assert_eq!(queued(&h).await, 1, "the queue item is kept");

    // gw-a is back: the kept item goes out through it.
    report(&h, "gw-a", State::Connected).await;
    uplink(&h, 4, false).await;
    let d = downlinks(&h).await;
    assert_eq!(d.len(), 1);
    assert_eq!(path_gateways(&d[0]), ["gw-a"]);
    let phy = check_downlink(&d[0].raw_payload, &NWK, next);
    let mp = phy.mac_payload().unwrap();
    let mut clear = mp.frm_payload.clone();
    lorawan::crypto::decrypt_frm_payload(&APP, Direction::Downlink, ADDR, next, &mut clear);
    assert_eq!(clear, b"c2");
    assert_eq!(queued(&h).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_connection_reports_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::start(dir.path(), Arc::new(NoJs), config()).await;
    let err =
        h.ns.gs_link()
            .report_gateway_connection(v3::GatewayConnectionEvent::default())
            .await
            .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("gateway_ids"), "{}", err.message());
}
