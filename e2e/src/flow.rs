//! The flows the scenarios share: provisioning over gRPC with the bootstrap admin key, and
//! a device's traffic through simulated gateways checked on MQTT.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use lorawan::{Aes128Key, Eui64};
use tern_api::FieldMask;
use tern_api::v3;
use tern_cluster::auth::CallCredentials;
use tern_simulator::{Device, DeviceConfig, RxInfo, UdpGateway, UdpGatewayConfig, Uplink, Version};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::mqtt::{messages, publish, subscribe};
use crate::{Server, get};

/// The application of the scenarios.
pub const APP: &str = "e2e-app";
/// The OTAA device of the scenarios.
pub const DEV: &str = "e2e-dev";
/// Its AppKey.
pub const APP_KEY: &str = "2B7E151628AED2A6ABF7158809CF4F3C";
/// The EUIs of the three gateways that hear every uplink.
pub const GATEWAYS: [[u8; 8]; 3] = [
    [0xB8, 0x27, 0xEB, 0xFF, 0xFE, 0x00, 0x00, 0x01],
    [0xB8, 0x27, 0xEB, 0xFF, 0xFE, 0x00, 0x00, 0x02],
    [0xB8, 0x27, 0xEB, 0xFF, 0xFE, 0x00, 0x00, 0x03],
];
/// The application's uplink formatter: a codec in the style of the device repositories.
pub const DECODER: &str = r#"
function decodeUplink(input) {
  var celsius = ((input.bytes[0] << 8) | input.bytes[1]) / 100;
  return { data: { temperature: celsius, port: input.fPort }, warnings: [], errors: [] };
}
"#;

/// A gRPC channel with call credentials.
pub type Authed = InterceptedService<Channel, CallCredentials>;

/// The value of `key = "…"` in the bootstrap file.
pub fn bootstrap_value(server: &Server, key: &str) -> String {
    let text = std::fs::read_to_string(server.data_dir.join("bootstrap.txt")).unwrap();
    text.lines()
        .find_map(|l| {
            let (k, v) = l.split_once('=')?;
            (k.trim() == key).then(|| v.trim().trim_matches('"').to_owned())
        })
        .unwrap_or_else(|| panic!("no {key} in bootstrap.txt: {text}"))
}

/// The address a log line names after `field=`.
pub fn logged_addr(server: &Server, message: &str, field: &str) -> SocketAddr {
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

/// A lazy gRPC channel to `server` with `key` as credentials.
pub fn channel(server: &Server, key: &str) -> (Channel, CallCredentials) {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.grpc))
        .unwrap()
        .connect_lazy();
    (channel, CallCredentials::api_key(key).unwrap())
}

/// Registers the application, three gateways, the device in every registry, and an
/// application API key for MQTT (and `application:link` when `link`); returns that key.
pub async fn provision(server: &Server, admin_key: &str, link: bool) -> String {
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
pub async fn set_formatter(server: &Server, admin_key: &str) {
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

/// Joins the device through three simulated gateways on the GS of `gs`, sends ten uplinks
/// heard by all three and checks them on the MQTT server of `asrv`, then pushes a downlink
/// there and checks that the device receives it in RX1 and the application hears `down/sent`.
/// Returns the joined device.
pub async fn traffic(gs: &Server, asrv: &Server, app_key: &str) -> Device {
    traffic_through(gs, asrv, app_key).await.device
}

/// A device after [`traffic_through`], with the gateways that heard it, for further steps.
pub struct Traffic {
    /// The joined device.
    pub device: Device,
    /// The three gateways, in the order of [`GATEWAYS`]; the first has the best signal.
    pub gateways: Vec<UdpGateway>,
    /// The MQTT server of the AS.
    pub mqtt: SocketAddr,
    /// The application API key (MQTT password).
    pub app_key: String,
}

/// What [`traffic`] does, keeping the gateways and the MQTT address for further steps.
pub async fn traffic_through(gs: &Server, asrv: &Server, app_key: &str) -> Traffic {
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
    let heard = heard_by;

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
    let ups = subscribe(mqtt, APP, &app_key, &format!("v3/{APP}/devices/+/up"), 10);
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
    let (_, metrics) = get(gs.http, "/metrics").await;
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
        r#"{"downlinks":[{"f_port":3,"frm_payload":"AQID","priority":"NORMAL"}]}"#,
    );
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
    Traffic {
        device,
        gateways,
        mqtt,
        app_key,
    }
}

/// How gateway `i` of [`GATEWAYS`] hears the device: the first best, the others weaker.
pub fn heard_by(i: usize) -> RxInfo {
    RxInfo {
        rssi: -50 - 10 * i as i32,
        snr: 9.0 - 3.0 * i as f64,
        ..RxInfo::eu868_default()
    }
}

/// Registers webhook `id` of the application on the AS of `server` with the real
/// `ternctl applications webhooks set`: uplinks to `<base_url>/up`, join-accepts to `/join`,
/// `down/sent` to `/sent` and `down/ack` to `/ack`, each request with the header
/// `Authorization: <auth>`; then reads it back over gRPC.
pub async fn set_webhook(server: &Server, admin_key: &str, id: &str, base_url: &str, auth: &str) {
    // Its own config directory: no `~/.config/ternctl` of the machine is read or written.
    let config_home = server.dir.join("ternctl-config");
    let out = std::process::Command::new(crate::process::ternctl_bin())
        .env_remove("TERN_SERVER")
        .env("XDG_CONFIG_HOME", &config_home)
        .env("HOME", &config_home)
        .env("TERN_API_KEY", admin_key)
        .args(["--server", &format!("http://{}", server.grpc), "-o", "json"])
        .args(["applications", "webhooks", "set", APP, id])
        .args([
            "--base-url",
            base_url,
            "--header",
            &format!("Authorization={auth}"),
        ])
        .args([
            "--uplink-message-path",
            "/up",
            "--join-accept-path",
            "/join",
        ])
        .args([
            "--downlink-sent-path",
            "/sent",
            "--downlink-ack-path",
            "/ack",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ternctl applications webhooks set: {}\n{}{}\n--- tern's log:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        server.log()
    );
    let (ch, creds) = channel(server, admin_key);
    let stored = v3::application_webhook_registry_client::ApplicationWebhookRegistryClient::new(
        InterceptedService::new(ch, creds),
    )
    .get(v3::ApplicationWebhookIdentifiers {
        application_ids: Some(v3::ApplicationIdentifiers {
            application_id: APP.into(),
        }),
        webhook_id: id.into(),
    })
    .await
    .unwrap_or_else(|e| panic!("reading webhook {id} back: {e}"))
    .into_inner();
    assert_eq!(stored.base_url, base_url, "{stored:?}");
    assert_eq!(
        stored.uplink_message.map(|m| m.path).as_deref(),
        Some("/up"),
        "the uplink path as ternctl set it"
    );
}

/// Waits until the device's downlink queue on the AS of `asrv` is not empty.
pub async fn wait_queued(asrv: &Server, app_key: &str) {
    let (ch, creds) = channel(asrv, app_key);
    let mut queue = v3::app_as_client::AppAsClient::new(InterceptedService::new(ch, creds));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let listed = queue
            .downlink_queue_list(v3::EndDeviceIdentifiers::new(APP, DEV))
            .await
            .unwrap()
            .into_inner();
        if !listed.downlinks.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the pushed downlink was not queued:\n{}",
            asrv.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A confirmed downlink pushed over MQTT (`"confirmed": true`, FPort 4, payload 04 05 06)
/// reaches the device in RX1 after its next uplink (`down/sent`), the device acknowledges it
/// on the uplink after that, and the application hears `down/ack`. Returns the `down/ack`
/// message.
pub async fn confirmed_downlink(t: &mut Traffic, gs: &Server, asrv: &Server) -> serde_json::Value {
    let topic = |event: &str| format!("v3/{APP}/devices/{DEV}/{event}");
    let sent = subscribe(t.mqtt, APP, &t.app_key, &topic("down/sent"), 1);
    let acked = subscribe(t.mqtt, APP, &t.app_key, &topic("down/ack"), 1);
    publish(
        t.mqtt,
        APP,
        &t.app_key,
        &topic("down/push"),
        r#"{"downlinks":[{"f_port":4,"frm_payload":"BAUG","confirmed":true}]}"#,
    );
    wait_queued(asrv, &t.app_key).await;
    let logs = || format!("--- tern's logs:\n{}\n---\n{}", gs.log(), asrv.log());

    // The uplink that opens RX1 for it.
    let frame = t
        .device
        .uplink(&Uplink {
            f_port: Some(2),
            payload: vec![0x07, 0xD1],
            ..Default::default()
        })
        .unwrap();
    for (i, gw) in t.gateways.iter().enumerate() {
        gw.send_uplink(&frame, &heard_by(i)).await.unwrap();
    }
    let downlink = t.gateways[0]
        .next_downlink(Duration::from_secs(10))
        .await
        .unwrap_or_else(|e| panic!("the confirmed downlink in RX1: {e}\n{}", logs()));
    let margin = downlink.margin_us().expect("a timed class A downlink");
    assert!(
        margin > 0,
        "the confirmed downlink arrived {margin} µs too late"
    );
    let received = t.device.downlink(&downlink.payload).unwrap();
    assert!(
        received.confirmed,
        "the downlink is not confirmed: {received:?}"
    );
    assert_eq!(received.f_port, Some(4), "{received:?}");
    assert_eq!(received.payload, vec![4, 5, 6], "{received:?}");
    let sent = messages(sent, &[gs, asrv]);
    assert_eq!(sent[0]["downlink_sent"]["f_port"], 4, "{sent:?}");
    assert_eq!(sent[0]["downlink_sent"]["confirmed"], true, "{sent:?}");

    // The next uplink carries the ACK bit (the simulated device sets it after a confirmed
    // downlink); the dedup window must have closed on the previous one first.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let frame = t
        .device
        .uplink(&Uplink {
            f_port: Some(2),
            payload: vec![0x07, 0xD2],
            ..Default::default()
        })
        .unwrap();
    assert_ne!(
        frame[5] & 0x20,
        0,
        "the uplink after a confirmed downlink sets ACK"
    );
    for (i, gw) in t.gateways.iter().enumerate() {
        gw.send_uplink(&frame, &heard_by(i)).await.unwrap();
    }
    let acked = messages(acked, &[gs, asrv]);
    let ack = acked[0].clone();
    assert_eq!(ack["end_device_ids"]["device_id"], DEV, "{ack}");
    assert_eq!(ack["downlink_ack"]["f_port"], 4, "{ack}");
    assert_eq!(ack["downlink_ack"]["frm_payload"], "BAUG", "{ack}");
    assert_eq!(ack["downlink_ack"]["confirmed"], true, "{ack}");
    ack
}

/// Every file under `dir`, recursively.
pub fn files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
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
