//! A Semtech UDP packet forwarder, played over a real socket, through every message type,
//! including malformed datagrams, downlinks, TX_ACKs, expiry and rate limits.

mod common;

use std::time::Duration;

use base64::Engine;
use common::*;
use serde_json::{Value, json};
use tern_api::v3;
use tern_gatewayserver::token::UplinkToken;
use tokio::net::UdpSocket;

struct Forwarder {
    socket: UdpSocket,
    eui: [u8; 8],
}

impl Forwarder {
    async fn new(gs: std::net::SocketAddr, eui: [u8; 8]) -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        socket.connect(gs).await.unwrap();
        Self { socket, eui }
    }

    async fn send(&self, kind: u8, token: [u8; 2], json: Option<&Value>) {
        let mut b = vec![2, token[0], token[1], kind];
        b.extend_from_slice(&self.eui);
        if let Some(j) = json {
            b.extend_from_slice(j.to_string().as_bytes());
        }
        self.socket.send(&b).await.unwrap();
    }

    async fn recv(&self) -> Vec<u8> {
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), self.socket.recv(&mut buf))
            .await
            .expect("timed out waiting for a datagram")
            .unwrap();
        buf.truncate(n);
        buf
    }

    async fn nothing(&self) {
        let mut buf = vec![0u8; 4096];
        if let Ok(r) =
            tokio::time::timeout(Duration::from_millis(300), self.socket.recv(&mut buf)).await
        {
            panic!("unexpected datagram: {:?}", &buf[..r.unwrap()]);
        }
    }

    async fn pull(&self, token: [u8; 2]) {
        self.send(2, token, None).await;
        assert_eq!(
            self.recv().await,
            vec![2, token[0], token[1], 4],
            "PULL_ACK"
        );
    }

    async fn push(&self, token: [u8; 2], json: &Value) {
        self.send(0, token, Some(json)).await;
        assert_eq!(
            self.recv().await,
            vec![2, token[0], token[1], 1],
            "PUSH_ACK"
        );
    }
}

fn hz(mhz: &Value) -> u64 {
    (mhz.as_f64().unwrap() * 1e6).round() as u64
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

// An unconfirmed data uplink, DevAddr 01020304, FCnt 1, FPort 1, two payload bytes.
const PHY: [u8; 16] = [
    0x40, 0x04, 0x03, 0x02, 0x01, 0x00, 0x01, 0x00, 0x01, 0xAA, 0xBB, 0x11, 0x22, 0x33, 0x44, 0x00,
];

fn rxpk(tmst: u32, stat: i8) -> Value {
    json!({
        "time": "2026-11-21T08:00:00.123456Z", "tmms": 1_447_000_000_000u64, "tmst": tmst,
        "chan": 2, "rfch": 1, "freq": 868.1, "mid": 8, "stat": stat, "modu": "LORA",
        "datr": "SF7BW125", "codr": "4/5", "rssi": -50, "rssis": -52, "rssic": -49,
        "lsnr": 9.5, "foff": -120, "ftime": 123456, "size": PHY.len(), "data": b64(&PHY)
    })
}

fn pull_resp_txpk(b: &[u8]) -> ([u8; 2], Value) {
    assert_eq!((b[0], b[3]), (2, 3), "PULL_RESP header: {b:?}");
    let v: Value = serde_json::from_slice(&b[4..]).unwrap();
    ([b[1], b[2]], v["txpk"].clone())
}

#[tokio::test]
async fn udp_forwarder_every_message_type() {
    let h = start(config()).await;
    let gw = Forwarder::new(h.udp, UDP_EUI).await;

    // PULL_DATA → PULL_ACK with the token; the gateway connects.
    gw.pull([0x12, 0x34]).await;
    let c = recv(&h.ns.connections).await;
    assert_eq!(c.state(), v3::gateway_connection_event::State::Connected);
    assert_eq!(c.protocol, "semtech-udp");
    assert_eq!(c.gateway_ids.unwrap().gateway_id, "gw-udp");
    assert_eq!(
        c.remote_address,
        gw.socket.local_addr().unwrap().to_string()
    );

    // PUSH_DATA: one good frame, one with a bad CRC, one without CRC, plus a status.
    let push = json!({
        "rxpk": [rxpk(1_000_000, 1), rxpk(1_000_001, -1), rxpk(1_000_002, 0)],
        "stat": {"time": "2026-11-21 08:00:00 GMT", "lati": 52.1, "long": 5.2, "alti": 10,
                 "rxnb": 3, "rxok": 1, "rxfw": 1, "ackr": 100.0, "dwnb": 0, "txnb": 0,
                 "temp": 40.5}
    });
    gw.push([0, 1], &push).await;
    let up = recv(&h.ns.uplinks).await;
    assert_eq!(up.raw_payload, PHY);
    let md = &up.rx_metadata[0];
    assert_eq!(md.gateway_ids.as_ref().unwrap().gateway_id, "gw-udp");
    assert_eq!(md.gateway_ids.as_ref().unwrap().eui, UDP_EUI);
    assert_eq!(
        (md.antenna_index, md.channel_index, md.timestamp),
        (1, 2, 1_000_000)
    );
    assert_eq!((md.rssi, md.channel_rssi, md.snr), (-52.0, -49.0, 9.5));
    assert_eq!((md.frequency_offset, md.fine_timestamp), (-120, 123_456));
    assert!(md.gps_time.is_some() && md.time.is_some() && md.received_at.is_some());
    let settings = up.settings.as_ref().unwrap();
    assert_eq!(settings.frequency, 868_100_000);
    assert_eq!(settings.data_rate_index, Some(5));
    match settings
        .data_rate
        .as_ref()
        .unwrap()
        .modulation
        .as_ref()
        .unwrap()
    {
        v3::data_rate::Modulation::Lora(l) => {
            assert_eq!(
                (l.spreading_factor, l.bandwidth, l.coding_rate.as_str()),
                (7, 125_000, "4/5")
            )
        }
        m => panic!("{m:?}"),
    }
    let token = UplinkToken::decode(&md.uplink_token).unwrap();
    assert_eq!(
        (token.eui, token.antenna, token.tmst),
        (UDP_EUI, 1, 1_000_000)
    );
    assert_eq!(token.instance_id, INSTANCE);
    nothing(&h.ns.uplinks).await; // the CRC-failed and CRC-less frames went nowhere
    assert_eq!(
        h.metric("tern_gs_udp_dropped_total{reason=\"crc_failed\"}"),
        1.0
    );
    assert_eq!(
        h.metric("tern_gs_udp_dropped_total{reason=\"no_crc\"}"),
        1.0
    );

    let stats = h.gs.connection_stats("gw-udp").unwrap();
    assert_eq!(stats.uplink_count, 1);
    assert_eq!(stats.protocol, "semtech-udp");
    let status = stats.last_status.unwrap();
    assert_eq!(status.metrics["rxnb"], 3.0);
    assert_eq!(status.antenna_locations[0].latitude, 52.1);

    // A class A downlink on that uplink: RX1, one second after the uplink's tmst.
    let res = h
        .link
        .schedule_downlink(class_a(
            md.uplink_token.clone(),
            &[0x60, 1, 2, 3, 4, 5],
            "dl-1",
        ))
        .await
        .unwrap();
    let Some(v3::schedule_downlink_response::Result::Scheduled(s)) = res.result else {
        panic!("{res:?}")
    };
    assert_eq!((s.rx_window, s.path_index), (1, 0));
    let (tok, txpk) = pull_resp_txpk(&gw.recv().await);
    assert_eq!(txpk["imme"], false);
    assert_eq!(txpk["tmst"], 2_000_000);
    assert_eq!(hz(&txpk["freq"]), 868_100_000);
    assert_eq!(txpk["rfch"], 0);
    assert_eq!(txpk["powe"], 14); // 16 dBm EIRP − 2 dBi antenna gain
    assert_eq!(txpk["modu"], "LORA");
    assert_eq!(txpk["datr"], "SF7BW125");
    assert_eq!(txpk["codr"], "4/5");
    assert_eq!(txpk["ipol"], true);
    assert_eq!(txpk["ncrc"], true);
    assert_eq!(txpk["size"], 6);
    assert_eq!(txpk["data"], b64(&[0x60, 1, 2, 3, 4, 5]));

    // Empty TX_ACK = transmitted.
    gw.send(5, tok, None).await;
    let ack = recv(&h.ns.acks).await;
    assert_eq!(ack.downlink_id, "dl-1");
    assert_eq!(ack.result(), v3::tx_acknowledgment::Result::Success);
    assert_eq!(ack.correlation_ids, vec!["test:dl-1"]);

    // The next downlink on the same uplink goes to RX2 (RX1 is taken); the gateway says TOO_LATE.
    h.link
        .schedule_downlink(class_a(md.uplink_token.clone(), &[0x60, 9], "dl-2"))
        .await
        .unwrap();
    let (tok, txpk) = pull_resp_txpk(&gw.recv().await);
    assert_eq!(
        (txpk["tmst"].as_u64(), txpk["datr"].as_str()),
        (Some(3_000_000), Some("SF12BW125"))
    );
    gw.send(5, tok, Some(&json!({"txpk_ack": {"error": "TOO_LATE"}})))
        .await;
    let ack = recv(&h.ns.acks).await;
    assert_eq!(
        (ack.downlink_id.as_str(), ack.result()),
        ("dl-2", v3::tx_acknowledgment::Result::TooLate)
    );

    // Class C, at once on RX2 parameters; sx1302 `warn` is still a success.
    h.link
        .schedule_downlink(class_c("gw-udp", &[0x60, 7], "dl-3"))
        .await
        .unwrap();
    let (tok, txpk) = pull_resp_txpk(&gw.recv().await);
    assert_eq!(hz(&txpk["freq"]), 869_525_000);
    gw.send(
        5,
        tok,
        Some(&json!({"txpk_ack": {"warn": "TX_POWER", "value": 14}})),
    )
    .await;
    let ack = recv(&h.ns.acks).await;
    assert_eq!(ack.result(), v3::tx_acknowledgment::Result::Success);
    assert_eq!(ack.warning, "TX_POWER (14)");

    // Every named TX_ACK error maps to its result.
    for (name, want) in [
        ("TOO_EARLY", v3::tx_acknowledgment::Result::TooEarly),
        (
            "COLLISION_PACKET",
            v3::tx_acknowledgment::Result::CollisionPacket,
        ),
        (
            "COLLISION_BEACON",
            v3::tx_acknowledgment::Result::CollisionBeacon,
        ),
        ("TX_FREQ", v3::tx_acknowledgment::Result::TxFreq),
        ("GPS_UNLOCKED", v3::tx_acknowledgment::Result::GpsUnlocked),
        (
            "SOMETHING_ELSE",
            v3::tx_acknowledgment::Result::UnknownError,
        ),
    ] {
        h.link
            .schedule_downlink(class_c("gw-udp", &[0x60, 8], name))
            .await
            .unwrap();
        let (tok, _) = pull_resp_txpk(&gw.recv().await);
        gw.send(5, tok, Some(&json!({"txpk_ack": {"error": name}})))
            .await;
        let ack = recv(&h.ns.acks).await;
        assert_eq!((ack.downlink_id.as_str(), ack.result()), (name, want));
    }
    let stats = h.gs.connection_stats("gw-udp").unwrap();
    assert_eq!(stats.downlink_count, 9);
    assert!(stats.round_trip_times.unwrap().count >= 1);
    assert_eq!(
        h.metric("tern_gs_gateways_connected{protocol=\"semtech-udp\"}"),
        1.0
    );
    assert_eq!(
        h.metric("tern_gs_uplink_received_total{protocol=\"semtech-udp\"}"),
        1.0
    );
}

#[tokio::test]
async fn udp_malformed_datagrams_are_counted_and_dropped() {
    let h = start(config()).await;
    let raw = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    raw.connect(h.udp).await.unwrap();
    let gw = Forwarder::new(h.udp, UDP_EUI).await;

    raw.send(&[2, 0]).await.unwrap(); // short
    raw.send(&[1, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1])
        .await
        .unwrap(); // version 1
    raw.send(&[2, 0, 0, 7, 1, 1, 1, 1, 1, 1, 1, 1])
        .await
        .unwrap(); // unknown type
    raw.send(&[2, 0, 0, 0, 1, 1]).await.unwrap(); // PUSH_DATA without a full EUI
    gw.send(0, [0, 1], None).await; // PUSH_DATA, empty JSON
    assert_eq!(gw.recv().await, vec![2, 0, 1, 1]);
    gw.socket
        .send(&[&[2u8, 0, 2, 0][..], &UDP_EUI, b"{not json"].concat())
        .await
        .unwrap();
    assert_eq!(gw.recv().await, vec![2, 0, 2, 1]);
    let mut bad = rxpk(1, 1);
    bad["data"] = json!("***not base64***");
    gw.push([0, 3], &json!({"rxpk": [bad]})).await;
    let mut short = rxpk(1, 1);
    short["size"] = json!(3);
    let mut wrong_datr = rxpk(1, 1);
    wrong_datr["datr"] = json!("SF13BW125");
    gw.push([0, 4], &json!({"rxpk": [short, wrong_datr]})).await;
    // A gateway nobody registered: acknowledged, then dropped.
    let stranger = Forwarder::new(h.udp, [9; 8]).await;
    stranger.push([0, 5], &json!({"rxpk": [rxpk(1, 1)]})).await;
    // TX_ACK for nothing we sent.
    gw.send(5, [7, 7], None).await;

    tokio::time::sleep(Duration::from_millis(300)).await;
    for (reason, n) in [
        ("short", 2.0),
        ("version", 1.0),
        ("unknown_type", 1.0),
        ("bad_json", 2.0),
        ("bad_base64", 1.0),
        ("bad_field", 3.0),
        ("unknown_eui", 1.0),
    ] {
        assert_eq!(
            h.metric(&format!("tern_gs_udp_dropped_total{{reason=\"{reason}\"}}")),
            n,
            "{reason}\n{}",
            h.metrics_text()
        );
    }
    nothing(&h.ns.uplinks).await;
    // The GS still works.
    gw.push([0, 6], &json!({"rxpk": [rxpk(5, 1)]})).await;
    assert_eq!(recv(&h.ns.uplinks).await.raw_payload, PHY);
}

#[tokio::test]
async fn udp_pull_expiry_reports_lost_path_and_fails_schedules() {
    let mut c = config();
    c.udp.pull_expiry = Duration::from_millis(300);
    c.udp.connection_expiry = Duration::from_millis(1500);
    let h = start(c).await;
    let gw = Forwarder::new(h.udp, UDP_EUI).await;
    gw.pull([0, 1]).await;
    assert_eq!(
        recv(&h.ns.connections).await.state(),
        v3::gateway_connection_event::State::Connected
    );
    gw.push([0, 2], &json!({"rxpk": [rxpk(10_000_000, 1)]}))
        .await;
    let up = recv(&h.ns.uplinks).await;
    let token = up.rx_metadata[0].uplink_token.clone();

    // No PULL_DATA within the expiry: the NS hears about it without being asked.
    let lost = recv(&h.ns.connections).await;
    assert_eq!(
        lost.state(),
        v3::gateway_connection_event::State::DownlinkPathLost
    );
    let res = h
        .link
        .schedule_downlink(class_a(token, &[0x60, 1], "dl"))
        .await
        .unwrap();
    let Some(v3::schedule_downlink_response::Result::Failed(f)) = res.result else {
        panic!("{res:?}")
    };
    assert_eq!(f.path_errors[0].rx1(), v3::ScheduleError::NoDownlinkPath);
    assert!(
        f.path_errors[0]
            .details
            .as_ref()
            .unwrap()
            .message
            .contains("PULL_DATA")
    );

    // A new PULL_DATA restores the path.
    gw.pull([0, 3]).await;
    assert_eq!(
        recv(&h.ns.connections).await.state(),
        v3::gateway_connection_event::State::Connected
    );
    // Silence beyond the connection expiry disconnects.
    let mut state = recv(&h.ns.connections).await.state();
    if state == v3::gateway_connection_event::State::DownlinkPathLost {
        state = recv(&h.ns.connections).await.state();
    }
    assert_eq!(state, v3::gateway_connection_event::State::Disconnected);
    assert!(h.gs.connection_stats("gw-udp").is_none());
}

#[tokio::test]
async fn udp_flooding_gateway_does_not_starve_others() {
    let mut c = config();
    c.rate_limit.burst = 10;
    c.rate_limit.messages_per_second = 1.0;
    let h = start(c).await;
    let flood = Forwarder::new(h.udp, UDP_EUI).await;
    let calm = Forwarder::new(h.udp, UDP2_EUI).await;
    for i in 0..200u16 {
        flood.send(2, i.to_be_bytes(), None).await;
    }
    calm.pull([9, 9]).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let limited = h.metric("tern_gs_udp_dropped_total{reason=\"rate_limited\"}");
    assert!((185.0..=190.0).contains(&limited), "{limited}");
    calm.pull([9, 10]).await;
}

#[tokio::test]
async fn udp_schedule_errors_per_path() {
    let h = start(config()).await;
    let gw = Forwarder::new(h.udp, UDP_EUI).await;
    gw.pull([0, 1]).await;
    gw.push([0, 2], &json!({"rxpk": [rxpk(1_000, 1)]})).await;
    let up = recv(&h.ns.uplinks).await;
    let good = up.rx_metadata[0].uplink_token.clone();
    let mut foreign = UplinkToken::decode(&good).unwrap();
    foreign.instance_id = "gs-other".into();

    // Three paths: garbage, another instance's token, then a good one → the third is used.
    let mut dl = class_a(good.clone(), &[0x60, 1], "dl");
    let req = dl.request.as_mut().unwrap();
    let path = |t: Vec<u8>| v3::DownlinkPath {
        path: Some(v3::downlink_path::Path::UplinkToken(t)),
    };
    req.downlink_paths = vec![
        path(vec![1, 2, 3]),
        path(foreign.encode()),
        path(good.clone()),
    ];
    let res = h.link.schedule_downlink(dl.clone()).await.unwrap();
    let Some(v3::schedule_downlink_response::Result::Scheduled(s)) = res.result else {
        panic!("{res:?}")
    };
    assert_eq!(s.path_index, 2);
    let _ = gw.recv().await;

    // The uplink is long gone: too late in both windows.
    let mut stale = UplinkToken::decode(&good).unwrap();
    stale.server_time_us -= 10_000_000;
    let res = h
        .link
        .schedule_downlink(class_a(stale.encode(), &[0x60, 1], "late"))
        .await
        .unwrap();
    let Some(v3::schedule_downlink_response::Result::Failed(f)) = res.result else {
        panic!("{res:?}")
    };
    assert_eq!(f.path_errors[0].rx1(), v3::ScheduleError::TooLate);
    assert_eq!(f.path_errors[0].rx2(), v3::ScheduleError::TooLate);
    assert_eq!(
        f.path_errors[0].gateway_ids.as_ref().unwrap().gateway_id,
        "gw-udp"
    );
    gw.nothing().await;

    // Malformed requests are refused outright.
    let mut empty = class_a(good.clone(), &[], "x");
    assert_eq!(
        h.link
            .schedule_downlink(empty.clone())
            .await
            .unwrap_err()
            .code(),
        tonic::Code::InvalidArgument
    );
    empty.raw_payload = vec![1];
    empty.request.as_mut().unwrap().downlink_paths.clear();
    let err = h.link.schedule_downlink(empty).await.unwrap_err();
    assert!(err.message().contains("downlink_paths"), "{err}");
    // Not connected.
    let res = h
        .link
        .schedule_downlink(class_c("gw-us", &[0x60], "c"))
        .await
        .unwrap();
    let Some(v3::schedule_downlink_response::Result::Failed(f)) = res.result else {
        panic!("{res:?}")
    };
    assert_eq!(
        f.path_errors[0].rx1(),
        v3::ScheduleError::GatewayNotConnected
    );
}
