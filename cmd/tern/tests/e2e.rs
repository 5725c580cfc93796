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

/// Registers the application, three gateways, the device in every registry, and an
/// application API key for MQTT (and `application:link` when `link`); returns that key.
async fn provision(server: &Server, admin_key: &str, link: bool) -> String {
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
            rights: [
                v3::Right::ApplicationTrafficRead,
                v3::Right::ApplicationTrafficDownWrite,
            ]
            .into_iter()
            .chain(link.then_some(v3::Right::ApplicationLink))
            .map(|r| r as i32)
            .collect(),
            expires_at: None,
        })
        .await
        .unwrap()
        .into_inner();
    key.key
}

/// Sets the application's uplink formatter on the AS of `server`.
async fn set_formatter(server: &Server, admin_key: &str) {
    let (ch, creds) = channel(server, admin_key);
    let app_ids = v3::ApplicationIdentifiers {
        application_id: APP.into(),
    };
    v3::as_formatters_client::AsFormattersClient::new(InterceptedService::new(ch, creds))
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
}

/// A running `mosquitto_sub` printing `topic payload` lines until it has its messages; with
/// `-d`, its protocol trace too (shown when a test fails).
struct Subscriber {
    child: Child,
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    reader: std::thread::JoinHandle<()>,
}

/// Subscribes to `topic` for `count` messages and returns once the broker granted the
/// subscription, so that nothing published afterwards is missed.
fn subscribe(mqtt: SocketAddr, key: &str, topic: &str, count: usize) -> Subscriber {
    use std::io::BufRead;
    // Line-buffered (coreutils `stdbuf`): a pipe would hold the trace back until exit.
    let mut child = Command::new("stdbuf")
        .args(["-oL", "mosquitto_sub"])
        .args(["-h", &mqtt.ip().to_string(), "-p", &mqtt.port().to_string()])
        .args(["-u", APP, "-P", key, "-t", topic, "-v", "-q", "1", "-d"])
        .args(["-C", &count.to_string(), "-W", "30"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("mosquitto_sub (Debian package mosquitto-clients) is installed");
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn({
        let lines = lines.clone();
        move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                lines.lock().unwrap().push(line);
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    while !lines
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.starts_with("Subscribed (mid"))
    {
        assert!(
            Instant::now() < deadline,
            "mosquitto_sub did not subscribe: {:?}",
            lines.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Subscriber {
        child,
        lines,
        reader,
    }
}

/// The JSON payloads of the messages `mosquitto_sub -v` printed; shows its trace and the
/// servers' logs when it did not get them all.
fn messages(mut sub: Subscriber, servers: &[&Server]) -> Vec<serde_json::Value> {
    let status = sub.child.wait().unwrap();
    sub.reader.join().unwrap();
    let lines = sub.lines.lock().unwrap().clone();
    assert!(
        status.success(),
        "mosquitto_sub: {status}\n{}\n--- tern's logs:\n{}",
        lines.join("\n"),
        servers
            .iter()
            .map(|s| s.log())
            .collect::<Vec<_>>()
            .join("\n---\n")
    );
    lines
        .iter()
        .filter(|l| l.starts_with("v3/"))
        .map(|l| {
            let (_, json) = l.split_once(' ').unwrap();
            serde_json::from_str(json).unwrap()
        })
        .collect()
}

/// Joins the device through three simulated gateways on the GS of `gs`, sends ten uplinks
/// heard by all three and checks them on the MQTT server of `asrv`, then pushes a downlink
/// there and checks that the device receives it in RX1 and the application hears `down/sent`.
/// Returns the joined device.
async fn traffic(gs: &Server, asrv: &Server, app_key: &str) -> Device {
    let udp = logged_addr(gs, "gateway listeners bound", "udp");
    let mqtt = logged_addr(asrv, "MQTT server listening", "addr");
    let app_key = app_key.to_owned();
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
    let (_, metrics) = common::get(gs.http, "/metrics").await;
    let counters: String = metrics
        .lines()
        .filter(|l| !l.starts_with('#') && (l.contains("_total") || l.contains("drop")))
        .collect::<Vec<_>>()
        .join("\n");
    eprintln!("metrics after the uplinks:\n{counters}");
    let received = messages(ups, &[gs, asrv]);
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
    // The AS encrypts it and queues it at the NS; wait until the queue shows it.
    let (ch, creds) = channel(asrv, &app_key);
    let mut queue = v3::app_as_client::AppAsClient::new(InterceptedService::new(ch, creds));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let listed = queue
            .downlink_queue_list(v3::EndDeviceIdentifiers::new(APP, DEV))
            .await
            .unwrap()
            .into_inner();
        if !listed.downlinks.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the pushed downlink was not queued"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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
    let sent = messages(sent, &[gs, asrv]);
    assert_eq!(sent[0]["end_device_ids"]["device_id"], DEV, "{sent:?}");
    assert_eq!(session.dev_addr, device.session().unwrap().dev_addr);
    device
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
    let admin_key = bootstrap_value(&server, "api-key");
    let app_key = provision(&server, &admin_key, false).await;
    set_formatter(&server, &admin_key).await;
    traffic(&server, &server, &app_key).await;
}

/// Every file under `dir`, recursively.
fn files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn external_application_server_links_with_an_api_key_and_keeps_the_app_s_key() {
    // The AS operator's key-encryption key: the JS wraps AppSKeys under it, the NS never has it.
    const AS_KEK: &str = "00112233445566778899AABBCCDDEEFF";
    let dir = common::temp_dir("split-config");
    let network = dir.join("network.toml");
    std::fs::write(
        &network,
        format!(
            "[join-server]\nas-kek-label = \"as:operator-b\"\n\
             [join-server.keks]\n\"as:operator-b\" = \"{AS_KEK}\"\n"
        ),
    )
    .unwrap();
    let mut network = Server::start(
        "split-network",
        &["is", "gs", "ns", "js"],
        &[
            ("TERN_CONFIG", network.to_str().unwrap()),
            ("TERN_NETWORK_SERVER__DEDUP_WINDOW", "100ms"),
        ],
    );
    network.wait_ready().await;
    let admin_key = bootstrap_value(&network, "api-key");
    let app_key = provision(&network, &admin_key, true).await;

    // The other operator's AS: no cluster key, only the application's API key.
    let external = dir.join("external.toml");
    let grpc = format!("http://{}", network.grpc);
    std::fs::write(
        &external,
        format!(
            "[cluster]\nnetwork-server = \"{grpc}\"\nidentity-server = \"{grpc}\"\n\
             [application-server]\nkek-label = \"as:operator-b\"\n\
             network-server-api-key = \"{app_key}\"\n\
             [application-server.keks]\n\"as:operator-b\" = \"{AS_KEK}\"\n\
             [application-server.link]\napplications = [\"{APP}\"]\n"
        ),
    )
    .unwrap();
    let mut application = Server::start(
        "split-as",
        &["as"],
        &[("TERN_CONFIG", external.to_str().unwrap())],
    );
    application.wait_ready().await;
    set_formatter(&application, &admin_key).await;

    let device = traffic(&network, &application, &app_key).await;

    // The network's data (store, key files) never holds the clear AppSKey.
    let app_s_key = device.session().unwrap().keys.app_s_key().0;
    let hex_upper = hex::encode_upper(app_s_key);
    let hex_lower = hex::encode(app_s_key);
    for file in files(&network.data_dir) {
        let bytes = std::fs::read(&file).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            !bytes.windows(16).any(|w| w == app_s_key)
                && !text.contains(&hex_upper)
                && !text.contains(&hex_lower),
            "{} holds the clear AppSKey",
            file.display()
        );
    }
}
