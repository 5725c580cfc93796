//! Scenario 1: the whole stack in one process, driven from outside only: `tern start` (every
//! role, embedded store), the admin API key from the bootstrap file, registrations over gRPC,
//! three simulated Semtech UDP gateways and a simulated LoRaWAN 1.0.3 OTAA device, the
//! application's view through the real `mosquitto_sub`/`mosquitto_pub` clients, and a real
//! HTTP webhook receiver registered for the application.

use std::time::Duration;

use tern_e2e::Server;
use tern_e2e::flow::{
    APP, DEV, bootstrap_value, confirmed_downlink, provision, set_formatter, set_webhook,
    traffic_through,
};
use tern_e2e::webhook::WebhookReceiver;

#[tokio::test(flavor = "multi_thread")]
async fn otaa_join_uplinks_through_three_gateways_a_webhook_and_mqtt_downlinks() {
    let mut server = Server::start(
        "e2e",
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
    let hook = WebhookReceiver::start().await;
    let auth = "Bearer e2e-webhook-secret";
    set_webhook(&server, &admin_key, "e2e-hook", &hook.url("/hook"), auth).await;

    let mut t = traffic_through(&server, &server, &app_key).await;

    // The webhook got the join-accept and the same ten uplinks as MQTT (plus the one that
    // fetched the downlink), in order, with the configured header and decoded payloads.
    let limit = Duration::from_secs(15);
    let joins = hook.wait_for("/hook/join", 1, limit, &[&server]).await;
    assert_eq!(
        joins[0].body["end_device_ids"]["device_id"], DEV,
        "{joins:?}"
    );
    assert!(
        joins[0].body["join_accept"]["session_key_id"].is_string(),
        "{joins:?}"
    );
    let ups = hook.wait_for("/hook/up", 11, limit, &[&server]).await;
    for (n, req) in ups.iter().take(10).enumerate() {
        assert_eq!(req.method, "POST", "{req:?}");
        assert_eq!(req.header("authorization"), Some(auth), "{req:?}");
        assert_eq!(
            req.header("content-type"),
            Some("application/json"),
            "{req:?}"
        );
        assert!(
            req.header("x-downlink-push")
                .is_some_and(|u| u.contains(APP) && u.contains(DEV)),
            "X-Downlink-Push names the device: {req:?}"
        );
        let body = &req.body;
        assert_eq!(body["end_device_ids"]["device_id"], DEV, "{body}");
        assert_eq!(
            body["end_device_ids"]["application_ids"]["application_id"], APP,
            "{body}"
        );
        let up = &body["uplink_message"];
        assert_eq!(up["f_cnt"], n, "webhook uplink {n} out of order: {body}");
        assert_eq!(up["f_port"], 2, "{body}");
        let expected = f64::from(2000 + n as u16) / 100.0;
        assert_eq!(up["decoded_payload"]["temperature"], expected, "{body}");
        assert_eq!(
            up["rx_metadata"].as_array().map(Vec::len),
            Some(3),
            "{body}"
        );
    }
    assert_eq!(ups[10].body["uplink_message"]["f_cnt"], 10, "{:?}", ups[10]);
    let sent = hook.wait_for("/hook/sent", 1, limit, &[&server]).await;
    assert_eq!(sent[0].body["downlink_sent"]["f_port"], 3, "{sent:?}");

    // A confirmed downlink over MQTT: RX1, `down/sent`, ACK on the next uplink, `down/ack`
    // on MQTT and on the webhook.
    confirmed_downlink(&mut t, &server, &server).await;
    let acks = hook.wait_for("/hook/ack", 1, limit, &[&server]).await;
    assert_eq!(acks[0].body["downlink_ack"]["f_port"], 4, "{acks:?}");
    assert_eq!(
        acks[0].body["downlink_ack"]["frm_payload"], "BAUG",
        "{acks:?}"
    );
}
