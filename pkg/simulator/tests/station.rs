//! The simulated Basics Station over real WebSockets; the test plays the LNS side:
//! discovery, `version` → `router_config`, `updf`/`jreq` field formats, `dnmsg` → `dntxed`,
//! and `timesync`.

// The handshake callback's error type is tungstenite's own (a whole HTTP response).
#![allow(clippy::result_large_err)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tern_simulator::station::{Station, StationConfig, eui_string, id6_string};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

const EUI: [u8; 8] = [0xB8, 0x27, 0xEB, 0xFF, 0xFE, 0x61, 0x12, 0x34];

#[derive(Default)]
struct Seen {
    discovery: Option<Value>,
    authorization: Option<String>,
    version: Option<Value>,
    uplinks: Vec<Value>,
    dntxed: Vec<Value>,
}

/// A minimal LNS on a free port: one listener serves `/router-info` and `/traffic/…`.
async fn lns(seen: Arc<Mutex<Seen>>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("ws://{}", listener.local_addr().unwrap());
    let traffic = format!("{base}/traffic/{}", id6_string(EUI));
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let seen = seen.clone();
            let traffic = traffic.clone();
            tokio::spawn(async move {
                let path = Arc::new(Mutex::new(String::new()));
                let ws = tokio_tungstenite::accept_hdr_async(tcp, {
                    let path = path.clone();
                    let seen = seen.clone();
                    move |req: &Request, res: Response| {
                        *path.lock().unwrap() = req.uri().path().to_owned();
                        if let Some(auth) = req.headers().get("authorization") {
                            seen.lock().unwrap().authorization =
                                Some(auth.to_str().unwrap().to_owned());
                        }
                        Ok(res)
                    }
                })
                .await
                .unwrap();
                let (mut sink, mut stream) = ws.split();
                let path = path.lock().unwrap().clone();
                while let Some(Ok(Message::Text(text))) = stream.next().await {
                    let msg: Value = serde_json::from_str(&text).unwrap();
                    if path == "/router-info" {
                        seen.lock().unwrap().discovery = Some(msg.clone());
                        let answer =
                            json!({"router": msg["router"], "muxs": "::0", "uri": traffic});
                        sink.send(Message::Text(answer.to_string().into()))
                            .await
                            .unwrap();
                        continue;
                    }
                    match msg["msgtype"].as_str().unwrap() {
                        "version" => {
                            seen.lock().unwrap().version = Some(msg.clone());
                            let rc = json!({"msgtype": "router_config", "region": "EU863",
                                "freq_range": [863000000, 870000000], "DRs": [[12,125,0]]});
                            sink.send(Message::Text(rc.to_string().into()))
                                .await
                                .unwrap();
                        }
                        "updf" | "jreq" => {
                            let xtime = msg["upinfo"]["xtime"].as_i64().unwrap();
                            seen.lock().unwrap().uplinks.push(msg.clone());
                            let dn = json!({"msgtype": "dnmsg", "DevEui": "00-00-00-00-00-00-00-01",
                                "dC": 0, "diid": 42, "pdu": "A0B1C2", "RxDelay": 1, "RX1DR": 5,
                                "RX1Freq": 868100000, "RX2DR": 0, "RX2Freq": 869525000,
                                "priority": 0, "xtime": xtime, "rctx": 0});
                            sink.send(Message::Text(dn.to_string().into()))
                                .await
                                .unwrap();
                        }
                        "dntxed" => seen.lock().unwrap().dntxed.push(msg),
                        "timesync" => {
                            let answer = json!({"msgtype": "timesync", "txtime": msg["txtime"],
                                "gpstime": 1_300_000_000_000_000i64});
                            sink.send(Message::Text(answer.to_string().into()))
                                .await
                                .unwrap();
                        }
                        other => panic!("unexpected {other}"),
                    }
                }
            });
        }
    });
    base
}

#[tokio::test]
async fn discovery_uplinks_downlinks_and_timesync() {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let base = lns(seen.clone()).await;
    let station = Station::connect(StationConfig {
        eui: EUI,
        lns: base,
        api_key: Some("gateway-key".into()),
        timeout: Duration::from_secs(5),
    })
    .await
    .unwrap();
    assert_eq!(station.router_config()["region"], "EU863");
    {
        let seen = seen.lock().unwrap();
        assert_eq!(
            seen.discovery.as_ref().unwrap()["router"],
            "b827:ebff:fe61:1234"
        );
        assert_eq!(seen.version.as_ref().unwrap()["protocol"], 2);
        assert_eq!(seen.authorization.as_deref(), Some("Bearer gateway-key"));
    }

    // A data uplink (lora-packet vector from vectors.md: DevAddr 49BE7DF1, FCnt 2, FPort 1).
    let data = hex::decode("40F17DBE4900020001954378762B11FF0D").unwrap();
    let xtime = station
        .send_uplink(&data, 5, 868_100_000, -50.0, 9.0)
        .await
        .unwrap();
    let down = station.next_downlink(Duration::from_secs(5)).await.unwrap();
    assert_eq!(down.payload, vec![0xA0, 0xB1, 0xC2]);
    let margin = down.rx1_margin_us().unwrap();
    assert!(margin > 0 && margin <= 1_000_000, "margin {margin}");

    // A join-request (ChirpStack lrwn vector: JoinEUI 0101…, DevEUI 0202…, DevNonce 771).
    let join = hex::decode("0001010101010101010202020202020202030309B97B32").unwrap();
    station
        .send_uplink(&join, 0, 868_300_000, -80.0, -2.5)
        .await
        .unwrap();
    station.next_downlink(Duration::from_secs(5)).await.unwrap();

    let gpstime = station.timesync().await.unwrap();
    assert_eq!(gpstime, 1_300_000_000_000_000);

    let seen = seen.lock().unwrap();
    let updf = &seen.uplinks[0];
    assert_eq!(updf["msgtype"], "updf");
    assert_eq!(updf["MHdr"], 0x40);
    assert_eq!(updf["DevAddr"], 0x49BE7DF1);
    assert_eq!(updf["FCtrl"], 0);
    assert_eq!(updf["FCnt"], 2);
    assert_eq!(updf["FOpts"], "");
    assert_eq!(updf["FPort"], 1);
    assert_eq!(updf["FRMPayload"], "95437876");
    assert_eq!(updf["MIC"], i32::from_le_bytes([0x2B, 0x11, 0xFF, 0x0D]));
    assert_eq!(updf["DR"], 5);
    assert_eq!(updf["Freq"], 868_100_000);
    assert_eq!(updf["upinfo"]["xtime"], xtime);
    let jreq = &seen.uplinks[1];
    assert_eq!(jreq["msgtype"], "jreq");
    assert_eq!(jreq["JoinEui"], eui_string([1; 8]));
    assert_eq!(jreq["DevEui"], "02-02-02-02-02-02-02-02");
    assert_eq!(jreq["DevNonce"], 771);
    assert_eq!(jreq["MIC"], i32::from_le_bytes([0x09, 0xB9, 0x7B, 0x32]));
    assert_eq!(seen.dntxed.len(), 2);
    assert_eq!(seen.dntxed[0]["diid"], 42);
    assert_eq!(seen.dntxed[0]["xtime"], xtime);
}
