//! A LoRa Basics Station, played with tokio-tungstenite over real sockets: discovery,
//! authentication, router_config, every upstream message type, downlinks, timesync, ping
//! timeout and malformed messages.

mod common;

use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tern_api::v3;
use tern_gatewayserver::token::UplinkToken;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

async fn connect(h: &Harness, path: &str, key: Option<&str>) -> Ws {
    let mut req = format!("ws://{}{path}", h.ws)
        .into_client_request()
        .unwrap();
    if let Some(k) = key {
        req.headers_mut()
            .insert("authorization", format!("Bearer {k}").parse().unwrap());
    }
    tokio_tungstenite::connect_async(req).await.unwrap().0
}

async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::text(v.to_string())).await.unwrap();
}

/// The next text message (pings are answered by reading).
async fn next(ws: &mut Ws) -> Value {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("timed out waiting for the LNS")
            .expect("connection open")
            .unwrap();
        match m {
            Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// The close frame's reason, once the LNS closes.
async fn closed(ws: &mut Ws) -> String {
    loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("timed out waiting for the close")
        {
            Some(Ok(Message::Close(f))) => {
                return f.map(|f| f.reason.to_string()).unwrap_or_default();
            }
            Some(Ok(_)) => continue,
            None | Some(Err(_)) => return String::new(),
        }
    }
}

fn upinfo(xtime: i64) -> Value {
    json!({"rctx": 0, "xtime": xtime, "gpstime": 0, "fts": -1, "rssi": -60, "snr": 7.25,
           "rxtime": 1_763_712_000.5})
}

#[tokio::test]
async fn router_info_discovery() {
    let h = start(config()).await;
    for router in [
        json!("b827:ebff:fe61:1234"),
        json!("B827EBFFFE611234"),
        json!(13269834311787418164u64),
    ] {
        let mut ws = connect(&h, "/router-info", None).await;
        send(&mut ws, json!({"router": router})).await;
        let a = next(&mut ws).await;
        assert_eq!(a["router"], "b827:ebff:fe61:1234", "{a}");
        assert_eq!(a["muxs"], "::0");
        assert_eq!(
            a["uri"],
            format!("ws://{}/traffic/eui-B827EBFFFE611234", h.ws)
        );
    }
    let mut ws = connect(&h, "/router-info", None).await;
    send(&mut ws, json!({"router": "::9"})).await;
    let a = next(&mut ws).await;
    assert!(
        a["error"].as_str().unwrap().contains("not registered"),
        "{a}"
    );
    let mut ws = connect(&h, "/router-info", None).await;
    send(&mut ws, json!({"router": "zz"})).await;
    assert!(next(&mut ws).await["error"].is_string());
    // Unknown endpoints are refused at the HTTP upgrade.
    let err = tokio_tungstenite::connect_async(format!("ws://{}/nope", h.ws))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("404"), "{err}");
}

#[tokio::test]
async fn traffic_authentication() {
    let h = start(config()).await;
    // The gateway requires authentication.
    let mut ws = connect(&h, "/traffic/eui-B827EBFFFE611234", None).await;
    assert!(closed(&mut ws).await.contains("authenticated"));
    let mut ws = connect(&h, "/traffic/b827:ebff:fe61:1234", Some("KEY-WRONG")).await;
    assert!(closed(&mut ws).await.contains("API key"));
    let mut ws = connect(&h, "/traffic/B827EBFFFE611234", Some("KEY-UDP")).await;
    assert!(closed(&mut ws).await.contains("gateway:link"));
    let mut ws = connect(&h, "/traffic/B827EBFFFE611234", Some("KEY-BS-INFO")).await;
    assert!(closed(&mut ws).await.contains("gateway:link"));
    // Unknown gateway.
    let mut ws = connect(&h, "/traffic/0909090909090909", None).await;
    assert!(closed(&mut ws).await.contains("not registered"));
    nothing(&h.ns.connections).await;
    assert_eq!(
        h.metric("tern_gs_bs_dropped_total{reason=\"unauthorized\"}"),
        4.0
    );

    let mut ws = connect(&h, "/traffic/eui-B827EBFFFE611234", Some("KEY-BS")).await;
    let c = recv(&h.ns.connections).await;
    assert_eq!(c.state(), v3::gateway_connection_event::State::Connected);
    assert_eq!(
        (
            c.protocol.as_str(),
            c.gateway_ids.unwrap().gateway_id.as_str()
        ),
        ("basic-station", "gw-bs")
    );
    ws.close(None).await.unwrap();
    let c = recv(&h.ns.connections).await;
    assert_eq!(c.state(), v3::gateway_connection_event::State::Disconnected);
}

#[tokio::test]
async fn station_every_message_type() {
    let h = start(config()).await;
    let mut ws = connect(&h, "/traffic/eui-B827EBFFFE611234", Some("KEY-BS")).await;
    assert_eq!(
        recv(&h.ns.connections).await.state(),
        v3::gateway_connection_event::State::Connected
    );

    // version → router_config from the gateway's plan (EU_863_870).
    send(
        &mut ws,
        json!({"msgtype": "version", "station": "2.0.6", "firmware": "1.0",
                         "package": "p", "model": "rpi", "protocol": 2, "features": "rmtsh"}),
    )
    .await;
    let rc = next(&mut ws).await;
    assert_eq!(rc["msgtype"], "router_config");
    assert_eq!(rc["region"], "EU863");
    assert_eq!(rc["freq_range"], json!([863_000_000, 870_000_000]));
    assert_eq!(rc["DRs"][5], json!([7, 125, 0]));
    assert_eq!(rc["DRs"][6], json!([7, 250, 0]));
    assert_eq!(rc["upchannels"][0], json!([868_100_000, 0, 5]));
    assert_eq!(rc["max_eirp"], 16.0);
    let conf = &rc["sx1301_conf"][0];
    assert_eq!(conf["radio_0"]["enable"], true);
    assert_eq!(conf["chan_Lora_std"]["bandwidth"], 250_000);
    assert_eq!(conf["chan_FSK"]["enable"], true);
    for i in 0..8 {
        let c = &conf[format!("chan_multiSF_{i}")];
        let radio = c["radio"].as_u64().unwrap() as usize;
        let centre = conf[format!("radio_{radio}")]["freq"].as_i64().unwrap();
        let freq = rc["upchannels"][i][0].as_i64().unwrap();
        assert_eq!(centre + c["if"].as_i64().unwrap(), freq, "channel {i}");
    }
    let stats = h.gs.connection_stats("gw-bs").unwrap();
    assert_eq!(stats.last_status.unwrap().versions["station"], "2.0.6");

    // updf → the exact PHYPayload.
    send(
        &mut ws,
        json!({"msgtype": "updf", "MHdr": 128, "DevAddr": 0x01020304, "FCtrl": 0x81,
        "FCnt": 0x0102, "FOpts": "06", "FPort": 10, "FRMPayload": "CAFE", "MIC": -559038737,
        "RefTime": 0.0, "DR": 5, "Freq": 868_300_000, "upinfo": upinfo(0x0001_0000_0100_0000)}),
    )
    .await;
    let up = recv(&h.ns.uplinks).await;
    assert_eq!(
        up.raw_payload,
        vec![
            0x80, 4, 3, 2, 1, 0x81, 0x02, 0x01, 0x06, 10, 0xCA, 0xFE, 0xEF, 0xBE, 0xAD, 0xDE
        ]
    );
    let md = &up.rx_metadata[0];
    assert_eq!((md.rssi, md.snr, md.timestamp), (-60.0, 7.25, 0x0100_0000));
    assert_eq!(up.settings.as_ref().unwrap().frequency, 868_300_000);
    assert_eq!(up.settings.as_ref().unwrap().data_rate_index, Some(5));
    let token = UplinkToken::decode(&md.uplink_token).unwrap();
    assert_eq!((token.eui, token.xtime), (BS_EUI, 0x0001_0000_0100_0000));

    // jreq with both spellings and both EUI forms; rejoin; propdf.
    for (je, de) in [("JoinEui", "DevEui"), ("JoinEUI", "DevEUI")] {
        send(
            &mut ws,
            json!({"msgtype": "jreq", "MHdr": 0, je: "70-B3-D5-7E-D0-00-00-01",
            de: "0004:a30b:001c:0530", "DevNonce": 0x1234, "MIC": 0x01020304, "DR": 0,
            "Freq": 868_100_000, "upinfo": upinfo(0x0001_0000_0200_0000)}),
        )
        .await;
        let up = recv(&h.ns.uplinks).await;
        assert_eq!(
            up.raw_payload,
            vec![
                0x00, 0x01, 0x00, 0x00, 0xD0, 0x7E, 0xD5, 0xB3, 0x70, 0x30, 0x05, 0x1C, 0x00, 0x0B,
                0xA3, 0x04, 0x00, 0x34, 0x12, 0x04, 0x03, 0x02, 0x01
            ]
        );
    }
    send(
        &mut ws,
        json!({"msgtype": "rejoin", "MHdr": 0xC0, "JoinEui": 1, "DevEui": 2,
        "DevNonce": 3, "MIC": 4, "DR": 0, "Freq": 868_100_000, "upinfo": upinfo(5)}),
    )
    .await;
    assert_eq!(recv(&h.ns.uplinks).await.raw_payload[0], 0xC0);
    send(
        &mut ws,
        json!({"msgtype": "propdf", "FRMPayload": "E0010203", "DR": 5,
        "Freq": 868_500_000, "upinfo": upinfo(6)}),
    )
    .await;
    assert_eq!(recv(&h.ns.uplinks).await.raw_payload, vec![0xE0, 1, 2, 3]);

    // timesync → the same txtime and a GPS time.
    send(&mut ws, json!({"msgtype": "timesync", "txtime": 1234.5})).await;
    let ts = next(&mut ws).await;
    assert_eq!(
        (ts["msgtype"].as_str(), ts["txtime"].as_f64()),
        (Some("timesync"), Some(1234.5))
    );
    let gps = ts["gpstime"].as_i64().unwrap();
    assert!(gps > 1_400_000_000_000_000, "{gps}");

    // A class A downlink answering the updf: xtime, rctx, RxDelay, RX1 and RX2.
    let res = h
        .link
        .schedule_downlink(class_a(md.uplink_token.clone(), &[0x60, 1, 2], "dl-a"))
        .await
        .unwrap();
    assert!(
        matches!(
            res.result,
            Some(v3::schedule_downlink_response::Result::Scheduled(_))
        ),
        "{res:?}"
    );
    let dn = next(&mut ws).await;
    assert_eq!(dn["msgtype"], "dnmsg");
    assert_eq!(dn["dC"], 0);
    assert_eq!(dn["xtime"], 0x0001_0000_0100_0000i64);
    assert_eq!(dn["rctx"], 0);
    assert_eq!(dn["RxDelay"], 1);
    assert_eq!(
        (dn["RX1DR"].as_u64(), dn["RX1Freq"].as_u64()),
        (Some(5), Some(868_100_000))
    );
    assert_eq!(
        (dn["RX2DR"].as_u64(), dn["RX2Freq"].as_u64()),
        (Some(0), Some(869_525_000))
    );
    assert_eq!(dn["pdu"], "600102");
    send(
        &mut ws,
        json!({"msgtype": "dntxed", "diid": dn["diid"], "DevEui": "00-00-00-00-00-00-00-00",
        "rctx": 0, "xtime": 1, "txtime": 2.0, "gpstime": 0}),
    )
    .await;
    let ack = recv(&h.ns.acks).await;
    assert_eq!(
        (ack.downlink_id.as_str(), ack.result()),
        ("dl-a", v3::tx_acknowledgment::Result::Success)
    );

    // Class C: dC 2 on RX2, timed on xtime.
    h.link
        .schedule_downlink(class_c("gw-bs", &[0x60, 4], "dl-c"))
        .await
        .unwrap();
    let dn = next(&mut ws).await;
    assert_eq!(dn["dC"], 2);
    assert_eq!(
        (dn["RX2DR"].as_u64(), dn["RX2Freq"].as_u64()),
        (Some(0), Some(869_525_000))
    );
    assert!(dn.get("RX1DR").is_none());
    // The last uplink (propdf) had xtime 6; the downlink is timed after it.
    assert!(dn["xtime"].as_i64().unwrap() > 6);

    // Malformed messages are counted, and the connection goes on.
    ws.send(Message::text("{not json")).await.unwrap();
    send(&mut ws, json!({"msgtype": "getxtime"})).await;
    send(
        &mut ws,
        json!({"msgtype": "updf", "MHdr": 64, "DevAddr": 1, "FCtrl": 0, "FCnt": 1,
        "FOpts": "zz", "FPort": 1, "FRMPayload": "00", "MIC": 0, "DR": 5, "Freq": 868_100_000}),
    )
    .await;
    send(
        &mut ws,
        json!({"msgtype": "updf", "MHdr": 64, "DevAddr": 1, "FCtrl": 2, "FCnt": 1,
        "FOpts": "", "FPort": 1, "FRMPayload": "00", "MIC": 0, "DR": 5, "Freq": 868_100_000}),
    )
    .await;
    send(
        &mut ws,
        json!({"msgtype": "jreq", "MHdr": 0, "JoinEui": "not-an-eui", "DevEui": 1,
        "DevNonce": 1, "MIC": 1, "DR": 0, "Freq": 868_100_000}),
    )
    .await;
    send(
        &mut ws,
        json!({"msgtype": "propdf", "FRMPayload": "E0", "DR": 99, "Freq": 868_100_000}),
    )
    .await;
    send(&mut ws, json!({"msgtype": "dntxed", "diid": 999_999})).await;
    ws.send(Message::binary(vec![1, 2, 3])).await.unwrap();
    send(
        &mut ws,
        json!({"msgtype": "propdf", "FRMPayload": "E0", "DR": 5, "Freq": 868_100_000}),
    )
    .await;
    assert_eq!(recv(&h.ns.uplinks).await.raw_payload, vec![0xE0]);
    for (reason, n) in [
        ("bad_json", 2.0),
        ("unknown_msgtype", 1.0),
        ("bad_field", 3.0),
        ("unknown_diid", 1.0),
        ("binary", 1.0),
    ] {
        assert_eq!(
            h.metric(&format!("tern_gs_bs_dropped_total{{reason=\"{reason}\"}}")),
            n,
            "{reason}\n{}",
            h.metrics_text()
        );
    }
    let stats = h.gs.connection_stats("gw-bs").unwrap();
    assert_eq!((stats.uplink_count, stats.downlink_count), (6, 2));
}

#[tokio::test]
async fn ping_measures_rtt_and_silence_times_out() {
    let mut c = config();
    c.basic_station.ping_interval = Duration::from_millis(100);
    c.basic_station.ping_timeout = Duration::from_millis(400);
    let h = start(c).await;
    let mut ws = connect(&h, "/traffic/eui-0202020202020202", None).await;
    recv(&h.ns.connections).await;
    // Reading answers the LNS's pings.
    let deadline = tokio::time::Instant::now() + Duration::from_millis(500);
    while tokio::time::Instant::now() < deadline {
        let _ = tokio::time::timeout(Duration::from_millis(50), ws.next()).await;
    }
    let rtt =
        h.gs.connection_stats("gw-bs-open")
            .unwrap()
            .round_trip_times
            .unwrap();
    assert!(rtt.count >= 2, "{rtt:?}");
    // Stop reading: no pongs, no traffic → the LNS drops the station.
    let c = recv(&h.ns.connections).await;
    assert_eq!(c.state(), v3::gateway_connection_event::State::Disconnected);
    assert_eq!(
        h.metric("tern_gs_bs_dropped_total{reason=\"ping_timeout\"}"),
        1.0
    );
    drop(ws);
}

#[tokio::test]
async fn shutdown_disconnects_stations() {
    let h = start(config()).await;
    let mut ws = connect(&h, "/traffic/eui-0202020202020202", None).await;
    recv(&h.ns.connections).await;
    tern_cluster::role::RoleService::shutdown(&h.gs)
        .await
        .unwrap();
    assert!(closed(&mut ws).await.contains("shutting down"));
    assert_eq!(
        recv(&h.ns.connections).await.state(),
        v3::gateway_connection_event::State::Disconnected
    );
    assert!(!tern_cluster::role::RoleService::readiness(&h.gs).is_ready());
    let err = h
        .link
        .schedule_downlink(class_c("gw-bs-open", &[0x60], "x"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable);
}

#[tokio::test]
async fn flooding_station_is_rate_limited() {
    let mut c = config();
    c.rate_limit.burst = 5;
    c.rate_limit.messages_per_second = 1.0;
    let h = start(c).await;
    let mut ws = connect(&h, "/traffic/eui-0202020202020202", None).await;
    recv(&h.ns.connections).await;
    for i in 0..20 {
        send(&mut ws, json!({"msgtype": "timesync", "txtime": i})).await;
    }
    for _ in 0..5 {
        assert_eq!(next(&mut ws).await["msgtype"], "timesync");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let limited = h.metric("tern_gs_bs_dropped_total{reason=\"rate_limited\"}");
    assert!((14.0..=15.0).contains(&limited), "{limited}");
}
