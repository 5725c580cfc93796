//! Scenario 1: the whole stack in one process, driven from outside only: `tern start` (every
//! role, embedded store), the admin API key from the bootstrap file, registrations over gRPC,
//! three simulated Semtech UDP gateways and a simulated LoRaWAN 1.0.3 OTAA device, and the
//! application's view through the real `mosquitto_sub`/`mosquitto_pub` clients.

use tern_e2e::Server;
use tern_e2e::flow::{bootstrap_value, provision, set_formatter, traffic};

#[tokio::test(flavor = "multi_thread")]
async fn otaa_join_uplinks_through_three_gateways_and_an_mqtt_downlink() {
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
    traffic(&server, &server, &app_key).await;
}
