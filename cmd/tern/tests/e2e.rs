//! The whole stack in one process, driven from outside only: `tern start` (every role,
//! embedded store), the admin API key from the bootstrap file, registrations over gRPC,
//! three simulated Semtech UDP gateways and a simulated LoRaWAN 1.0.3 OTAA device, and the
//! application's view through the real `mosquitto_sub`/`mosquitto_pub` clients.

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::Server;
use lorawan::{Aes128Key, Eui64};
use tern_api::FieldMask;
use tern_api::v3;
use tern_cluster::auth::CallCredentials;
use tern_simulator::{Device, DeviceConfig, RxInfo, UdpGateway, UdpGatewayConfig, Uplink, Version};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

const APP: &str = "e2e-app";
const DEV: &str = "e2e-dev";
const APP_KEY: &str = "2B7E151628AED2A6ABF7158809CF4F3C";
const GATEWAYS: [[u8; 8]; 3] = [
    [0xB8, 0x27, 0xEB, 0xFF, 0xFE, 0x00, 0x00, 0x01],
    [0xB8, 0x27, 0xEB, 0xFF, 0xFE, 0x00, 0x00, 0x02],
    [0xB8, 0x27, 0xEB, 0xFF, 0xFE, 0x00, 0x00, 0x03],
];
/// The application's uplink formatter: a codec in the style of the device repositories.
const DECODER: &str = r#"
function decodeUplink(input) {
  var celsius = ((input.bytes[0] << 8) | input.bytes[1]) / 100;
  return { data: { temperature: celsius, port: input.fPort }, warnings: [], errors: [] };
}
"#;

type Authed = InterceptedService<Channel, CallCredentials>;

/// The value of `key = "…"` in the bootstrap file.
fn bootstrap_value(server: &Server, key: &str) -> String {
    let text = std::fs::read_to_string(server.data_dir.join("bootstrap.txt")).unwrap();
    text.lines()
        .find_map(|l| {
            let (k, v) = l.split_once('=')?;
            (k.trim() == key).then(|| v.trim().trim_matches('"').to_owned())
        })
        .unwrap_or_else(|| panic!("no {key} in bootstrap.txt: {text}"))
}

/// The address a log line names after `field=`.
fn logged_addr(server: &Server, message: &str, field: &str) -> SocketAddr {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let log = server.log();
        if let Some(addr) = log.lines().filter(|l| l.contains(message)).find_map(|l| {
            l.split_whitespace()
                .find_map(|t| t.strip_prefix(&format!("{field}=")))?
                .parse()
                .ok()
        }) {
            return addr;
        }
        assert!(
            Instant::now() < deadline,
            "no `{message}` in the log:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn channel(server: &Server, key: &str) -> (Channel, CallCredentials) {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.grpc))
        .unwrap()
        .connect_lazy();
    (channel, CallCredentials::api_key(key).unwrap())
}

/// Registers the application, its formatter, three gateways, the device in every registry,
/// and an application API key for MQTT; returns that key.
async fn provision(server: &Server, admin_key: &str) -> String {
    let (ch, creds) = channel(server, admin_key);
    let app_ids = v3::ApplicationIdentifiers {
        application_id: APP.into(),
    };
    let authed = |c: &Channel| -> Authed { InterceptedService::new(c.clone(), creds.clone()) };

    v3::application_registry_client::ApplicationRegistryClient::new(authed(&ch))
        .create(v3::CreateApplicationRequest {
            application: Some(v3::Application {
                ids: Some(app_ids.clone()),
                name: "End-to-end".into(),
                ..Default::default()
            }),
            collaborator: None,
        })
        .await
        .unwrap();
    let mut gateways = v3::gateway_registry_client::GatewayRegistryClient::new(authed(&ch));
    for (i, eui) in GATEWAYS.iter().enumerate() {
        gateways
            .create(v3::CreateGatewayRequest {
                gateway: Some(v3::Gateway {
                    ids: Some(v3::GatewayIdentifiers {
                        gateway_id: format!("e2e-gw-{i}"),
                        eui: eui.to_vec(),
                    }),
                    frequency_plan_ids: vec!["EU_863_870".into()],
                    enforce_duty_cycle: true,
                    ..Default::default()
                }),
                collaborator: None,
            })
            .await
            .unwrap();
    }
    v3::as_formatters_client::AsFormattersClient::new(authed(&ch))
        .set_application_formatters(v3::ApplicationFormatters {
            application_ids: Some(app_ids.clone()),
            formatters: Some(v3::MessagePayloadFormatters {
                up_formatter: v3::PayloadFormatter::FormatterJavascript as i32,
                up_formatter_parameter: DECODER.into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap();

    // The device: registry in the IS, root key in the JS, MAC settings in the NS.
    let ids = v3::EndDeviceIdentifiers {
        application_ids: Some(app_ids.clone()),
        device_id: DEV.into(),
        dev_eui: hex::decode("70B3D57ED0000001").unwrap(),
        join_eui: hex::decode("70B3D57ED0000000").unwrap(),
        dev_addr: Vec::new(),
    };
    let device = v3::EndDevice {
        ids: Some(ids.clone()),
        frequency_plan_id: "EU_863_870".into(),
        lorawan_version: v3::MacVersion::MacV103 as i32,
        lorawan_phy_version: v3::PhyVersion::Rp002V103 as i32,
        supports_join: true,
        ..Default::default()
    };
    v3::end_device_registry_client::EndDeviceRegistryClient::new(authed(&ch))
        .create(v3::CreateEndDeviceRequest {
            end_device: Some(device.clone()),
        })
        .await
        .unwrap();
    let set = |dev: v3::EndDevice, paths: &[&str]| v3::UpdateEndDeviceRequest {
        end_device: Some(dev),
        field_mask: Some(FieldMask::new(paths.iter().copied())),
    };
    v3::js_end_device_registry_client::JsEndDeviceRegistryClient::new(authed(&ch))
        .set(set(
            v3::EndDevice {
                ids: Some(ids.clone()),
                root_keys: Some(v3::RootKeys {
                    app_key: Some(v3::KeyEnvelope {
                        key: hex::decode(APP_KEY).unwrap(),
                        ..Default::default()
                    }),
                    nwk_key: None,
                }),
                ..Default::default()
            },
            &["root_keys.app_key"],
        ))
        .await
        .unwrap();
    v3::ns_end_device_registry_client::NsEndDeviceRegistryClient::new(authed(&ch))
        .set(set(
            device,
            &[
                "frequency_plan_id",
                "lorawan_version",
                "lorawan_phy_version",
                "supports_join",
            ],
        ))
        .await
        .unwrap();

    let key = v3::entity_access_client::EntityAccessClient::new(authed(&ch))
        .create_api_key(v3::CreateApiKeyRequest {
            entity_ids: Some(v3::EntityIdentifiers {
                ids: Some(v3::entity_identifiers::Ids::ApplicationIds(app_ids)),
            }),
            name: "mqtt".into(),
            rights: vec![
                v3::Right::ApplicationTrafficRead as i32,
                v3::Right::ApplicationTrafficDownWrite as i32,
            ],
            expires_at: None,
        })
        .await
        .unwrap()
        .into_inner();
    key.key
}

/// `mosquitto_sub` printing `topic payload` lines until it has `count` messages.
fn subscribe(mqtt: SocketAddr, key: &str, topic: &str, count: usize) -> Child {
    Command::new("mosquitto_sub")
        .args(["-h", &mqtt.ip().to_string(), "-p", &mqtt.port().to_string()])
        .args(["-u", APP, "-P", key, "-t", topic, "-v", "-q", "1"])
        .args(["-C", &count.to_string(), "-W", "30"])
        // Protocol trace on stdout too, shown when the test fails; messages start with `v3/`.
        .arg("-d")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mosquitto_sub (Debian package mosquitto-clients) is installed")
}

/// The JSON payloads of the messages `mosquitto_sub -v` printed; shows the server's log when
/// it did not get them all.
fn messages(child: Child, server: &Server) -> Vec<serde_json::Value> {
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "mosquitto_sub: {}{stdout}\n--- tern's log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        server.log()
    );
    stdout
        .lines()
        .filter(|l| l.starts_with("v3/"))
        .map(|l| {
            let (_, json) = l.split_once(' ').unwrap();
            serde_json::from_str(json).unwrap()
        })
        .collect()
}

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
    let udp = logged_addr(&server, "gateway listeners bound", "udp");
    let mqtt = logged_addr(&server, "MQTT server listening", "addr");
    let admin_key = bootstrap_value(&server, "api-key");
    let app_key = provision(&server, &admin_key).await;

    let mut gateways = Vec::new();
    for eui in GATEWAYS {
        let udp = SocketAddr::from(([127, 0, 0, 1], udp.port()));
        gateways.push(
            UdpGateway::connect(UdpGatewayConfig::new(eui, udp))
                .await
                .unwrap(),
        );
    }
    let heard = |i: usize| RxInfo {
        rssi: -50 - 10 * i as i32,
        snr: 9.0 - 3.0 * i as f64,
        ..RxInfo::eu868_default()
    };

    // OTAA join: the join-request heard by all three; the accept comes through the best.
    let mut device = Device::new(DeviceConfig::otaa(
        "70B3D57ED0000001".parse::<Eui64>().unwrap(),
        "70B3D57ED0000000".parse::<Eui64>().unwrap(),
        Version::V1_0,
        Aes128Key(hex::decode(APP_KEY).unwrap().try_into().unwrap()),
    ));
    let join_request = device.join_request().unwrap();
    for (i, gw) in gateways.iter().enumerate() {
        gw.send_uplink(&join_request, &heard(i)).await.unwrap();
    }
    let accept = gateways[0]
        .next_downlink(Duration::from_secs(10))
        .await
        .expect("a join-accept through the gateway with the best signal");
    let margin = accept.margin_us().expect("a timed class A downlink");
    assert!(margin > 0, "the join-accept arrived {margin} µs too late");
    let session = device.accept_join(&accept.payload).unwrap().clone();

    // Ten uplinks, each heard by three gateways: ten messages with three rx_metadata each.
    let ups = subscribe(mqtt, &app_key, &format!("v3/{APP}/devices/+/up"), 10);
    tokio::time::sleep(Duration::from_millis(500)).await; // mosquitto_sub connects
    for n in 0..10u16 {
        let celsius = 2000 + n;
        let frame = device
            .uplink(&Uplink {
                f_port: Some(2),
                payload: celsius.to_be_bytes().to_vec(),
                ..Default::default()
            })
            .unwrap();
        for (i, gw) in gateways.iter().enumerate() {
            gw.send_uplink(&frame, &heard(i)).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let (_, metrics) = common::get(server.http, "/metrics").await;
    let counters: String = metrics
        .lines()
        .filter(|l| !l.starts_with('#') && (l.contains("_total") || l.contains("drop")))
        .collect::<Vec<_>>()
        .join("\n");
    eprintln!("metrics after the uplinks:\n{counters}");
    let received = messages(ups, &server);
    assert_eq!(received.len(), 10, "{received:#?}");
    for (n, msg) in received.iter().enumerate() {
        let ids = &msg["end_device_ids"];
        assert_eq!(ids["device_id"], DEV);
        assert_eq!(ids["application_ids"]["application_id"], APP);
        let up = &msg["uplink_message"];
        assert_eq!(up["f_port"], 2);
        assert_eq!(up["f_cnt"], n);
        assert_eq!(up["rx_metadata"].as_array().unwrap().len(), 3, "{msg}");
        let expected = f64::from(2000 + n as u16) / 100.0;
        assert_eq!(up["decoded_payload"]["temperature"], expected, "{msg}");
        assert!(msg["received_at"].is_string());
    }

    // A downlink pushed over MQTT reaches the device in RX1 after its next uplink, and the
    // application hears `down/sent`.
    let sent = subscribe(
        mqtt,
        &app_key,
        &format!("v3/{APP}/devices/{DEV}/down/sent"),
        1,
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let push = Command::new("mosquitto_pub")
        .args(["-h", &mqtt.ip().to_string(), "-p", &mqtt.port().to_string()])
        .args(["-u", APP, "-P", &app_key, "-q", "1"])
        .args(["-t", &format!("v3/{APP}/devices/{DEV}/down/push")])
        .args([
            "-m",
            r#"{"downlinks":[{"f_port":3,"frm_payload":"AQID","priority":"NORMAL"}]}"#,
        ])
        .output()
        .unwrap();
    assert!(push.status.success(), "{push:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let frame = device
        .uplink(&Uplink {
            f_port: Some(2),
            payload: vec![0x07, 0xD0],
            ..Default::default()
        })
        .unwrap();
    for (i, gw) in gateways.iter().enumerate() {
        gw.send_uplink(&frame, &heard(i)).await.unwrap();
    }
    let downlink = gateways[0]
        .next_downlink(Duration::from_secs(10))
        .await
        .expect("the pushed downlink in RX1");
    let margin = downlink.margin_us().unwrap();
    assert!(margin > 0, "the downlink arrived {margin} µs too late");
    let received = device.downlink(&downlink.payload).unwrap();
    assert_eq!(received.f_port, Some(3));
    assert_eq!(received.payload, vec![1, 2, 3]);
    let sent = messages(sent, &server);
    assert_eq!(sent[0]["end_device_ids"]["device_id"], DEV, "{sent:?}");
    assert_eq!(session.dev_addr, device.session().unwrap().dev_addr);
}
