//! Scenario 4: a LoRa Basics Station gateway and a class C device through the same flows.
//! `tern start` (every role, embedded store); a simulated station authenticates with a gateway
//! API key (discovery, `router_config`, `timesync`); the LoRaWAN 1.0.3 OTAA device joins
//! through it (`jreq` → `dnmsg` in RX1), its uplinks (`updf`) reach MQTT decoded, and a
//! downlink pushed over MQTT while the device is idle goes out at once as a class C `dnmsg`
//! on RX2 parameters; the station's `dntxed` becomes `down/sent`. A confirmed class C
//! downlink is acknowledged on the device's next uplink: `down/ack`.

use std::time::Duration;

use lorawan::{Aes128Key, Eui64};
use tern_e2e::Server;
use tern_e2e::flow::{
    APP, APP_KEY, DEV, GATEWAYS, bootstrap_value, logged_addr, provision, set_formatter,
};
use tern_e2e::mqtt::{messages, publish, subscribe};
use tern_e2e::station::{connect_station, gateway_link_key, set_class_c};
use tern_simulator::station::eui_string;
use tern_simulator::{Device, DeviceConfig, Uplink, Version};

/// EU868 uplink channel 0 and data rate index 5 (SF7BW125).
const FREQ: u64 = 868_100_000;
const DR: u8 = 5;
/// The EU863-870 RX2 default frequency (LoRaWAN Regional Parameters RP002-1.0.3, 2.4.7).
const RX2_FREQ: u64 = 869_525_000;

#[tokio::test(flavor = "multi_thread")]
async fn basics_station_otaa_join_uplinks_and_a_class_c_downlink() {
    let mut server = Server::start(
        "station",
        &[],
        &[
            // Shorter than the default window only to keep the test quick.
            ("TERN_NETWORK_SERVER__DEDUP_WINDOW", "100ms"),
            ("RUST_LOG", "info"),
        ],
    );
    server.wait_ready().await;
    let admin_key = bootstrap_value(&server, "api-key");
    let app_key = provision(&server, &admin_key, false).await;
    set_formatter(&server, &admin_key).await;
    set_class_c(&server, &admin_key).await;
    let mqtt = logged_addr(&server, "MQTT server listening", "addr");
    let logs = |s: &Server| format!("--- tern's log:\n{}", s.log());

    // The station: the gateway e2e-gw-0, authenticated with its own link key.
    let gw_key = gateway_link_key(&server, &admin_key, "e2e-gw-0").await;
    let station = connect_station(&server, GATEWAYS[0], &gw_key).await;
    let config = station.router_config();
    assert_eq!(config["region"], "EU863", "{config}");
    let gps = station
        .timesync()
        .await
        .unwrap_or_else(|e| panic!("timesync: {e}\n{}", logs(&server)));
    assert!(gps > 0, "timesync answered gpstime {gps}");

    // OTAA join: jreq → the join-accept as a class A dnmsg in RX1.
    let mut device = Device::new(DeviceConfig::otaa(
        "70B3D57ED0000001".parse::<Eui64>().unwrap(),
        "70B3D57ED0000000".parse::<Eui64>().unwrap(),
        Version::V1_0,
        Aes128Key(hex::decode(APP_KEY).unwrap().try_into().unwrap()),
    ));
    let join_request = device.join_request().unwrap();
    station
        .send_uplink(&join_request, DR, FREQ, -50.0, 9.0)
        .await
        .unwrap();
    let accept = station
        .next_downlink(Duration::from_secs(10))
        .await
        .unwrap_or_else(|e| panic!("the join-accept dnmsg: {e}\n{}", logs(&server)));
    let msg = &accept.message;
    assert_eq!(msg["dC"], 0, "the join-accept is class A: {msg}");
    assert_eq!(
        msg["DevEui"],
        eui_string([0x70, 0xB3, 0xD5, 0x7E, 0xD0, 0, 0, 1]),
        "{msg}"
    );
    assert_eq!(msg["RX1Freq"], FREQ, "RX1 on the uplink's channel: {msg}");
    let margin = accept.rx1_margin_us().expect("a timed class A dnmsg");
    assert!(
        margin > 0,
        "the join-accept arrived {margin} µs too late: {msg}"
    );
    let session = device
        .accept_join(&accept.payload)
        .unwrap_or_else(|e| panic!("the device refused the join-accept: {e}: {msg}"))
        .clone();

    // Uplinks through the station, decoded on MQTT with the station's metadata.
    let ups = subscribe(mqtt, APP, &app_key, &format!("v3/{APP}/devices/+/up"), 3);
    for n in 0..3u16 {
        let celsius = 1500 + n;
        let frame = device
            .uplink(&Uplink {
                f_port: Some(2),
                payload: celsius.to_be_bytes().to_vec(),
                ..Default::default()
            })
            .unwrap();
        station
            .send_uplink(&frame, DR, FREQ, -50.0, 9.0)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let received = messages(ups, &[&server]);
    assert_eq!(received.len(), 3, "{received:#?}");
    for (n, msg) in received.iter().enumerate() {
        assert_eq!(msg["end_device_ids"]["device_id"], DEV, "{msg}");
        let up = &msg["uplink_message"];
        assert_eq!(up["f_cnt"], n, "{msg}");
        assert_eq!(up["f_port"], 2, "{msg}");
        let expected = f64::from(1500 + n as u16) / 100.0;
        assert_eq!(up["decoded_payload"]["temperature"], expected, "{msg}");
        let md = up["rx_metadata"].as_array().expect("rx_metadata");
        assert_eq!(md.len(), 1, "{msg}");
        assert_eq!(md[0]["gateway_ids"]["gateway_id"], "e2e-gw-0", "{msg}");
    }
    // No downlink was due: the uplinks were unconfirmed and the queue empty.
    if let Ok(unexpected) = station.next_downlink(Duration::from_millis(300)).await {
        panic!(
            "an unexpected dnmsg after the uplinks: {}\n{}",
            unexpected.message,
            logs(&server)
        );
    }

    // The device is idle; a downlink pushed over MQTT goes out at once as class C on RX2.
    let sent = subscribe(
        mqtt,
        APP,
        &app_key,
        &format!("v3/{APP}/devices/{DEV}/down/sent"),
        1,
    );
    publish(
        mqtt,
        APP,
        &app_key,
        &format!("v3/{APP}/devices/{DEV}/down/push"),
        r#"{"downlinks":[{"f_port":5,"frm_payload":"CgsM","priority":"NORMAL"}]}"#,
    );
    let class_c = station
        .next_downlink(Duration::from_secs(10))
        .await
        .unwrap_or_else(|e| panic!("the class C dnmsg: {e}\n{}", logs(&server)));
    let msg = &class_c.message;
    assert_eq!(msg["dC"], 2, "a class C dnmsg: {msg}");
    assert_eq!(msg["RX2Freq"], RX2_FREQ, "RX2 frequency: {msg}");
    assert_eq!(
        msg["RX2DR"], session.dl_settings.rx2_data_rate,
        "the RX2 data rate of the join-accept's DLSettings: {msg}"
    );
    assert!(msg.get("RX1Freq").is_none(), "no RX1 for class C: {msg}");
    let down = device
        .downlink(&class_c.payload)
        .unwrap_or_else(|e| panic!("the device refused the class C downlink: {e}: {msg}"));
    assert_eq!(down.f_port, Some(5), "{down:?}");
    assert_eq!(down.payload, vec![10, 11, 12], "{down:?}");
    assert!(!down.confirmed, "{down:?}");

    // The simulated station answered with dntxed: the application hears `down/sent`.
    let sent = messages(sent, &[&server]);
    assert_eq!(sent[0]["end_device_ids"]["device_id"], DEV, "{sent:?}");
    assert_eq!(sent[0]["downlink_sent"]["f_port"], 5, "{sent:?}");
    assert_eq!(sent[0]["downlink_sent"]["frm_payload"], "CgsM", "{sent:?}");

    // A confirmed class C downlink: sent at once, acknowledged by the device's next uplink
    // through the station, and the application hears `down/ack`.
    let acked = subscribe(
        mqtt,
        APP,
        &app_key,
        &format!("v3/{APP}/devices/{DEV}/down/ack"),
        1,
    );
    publish(
        mqtt,
        APP,
        &app_key,
        &format!("v3/{APP}/devices/{DEV}/down/push"),
        r#"{"downlinks":[{"f_port":6,"frm_payload":"DQ4P","confirmed":true}]}"#,
    );
    let confirmed = station
        .next_downlink(Duration::from_secs(10))
        .await
        .unwrap_or_else(|e| panic!("the confirmed class C dnmsg: {e}\n{}", logs(&server)));
    let msg = &confirmed.message;
    assert_eq!(msg["dC"], 2, "a class C dnmsg: {msg}");
    let down = device
        .downlink(&confirmed.payload)
        .unwrap_or_else(|e| panic!("the device refused the confirmed downlink: {e}: {msg}"));
    assert!(down.confirmed, "{down:?}");
    assert_eq!(down.f_port, Some(6), "{down:?}");
    assert_eq!(down.payload, vec![13, 14, 15], "{down:?}");
    let frame = device
        .uplink(&Uplink {
            f_port: Some(2),
            payload: 1600u16.to_be_bytes().to_vec(),
            ..Default::default()
        })
        .unwrap();
    assert_ne!(
        frame[5] & 0x20,
        0,
        "the uplink after a confirmed downlink sets ACK"
    );
    station
        .send_uplink(&frame, DR, FREQ, -50.0, 9.0)
        .await
        .unwrap();
    let acked = messages(acked, &[&server]);
    let ack = &acked[0];
    assert_eq!(ack["end_device_ids"]["device_id"], DEV, "{ack}");
    assert_eq!(ack["downlink_ack"]["f_port"], 6, "{ack}");
    assert_eq!(ack["downlink_ack"]["frm_payload"], "DQ4P", "{ack}");
}
