//! Two `tern start` processes with every role share one PostgreSQL store (a schema of its
//! own), one real etcd and the cluster key. Devices are chosen so that each Network Server
//! owns some DevAddrs (and one OTAA join goes to each side of the hashing); a simulated UDP
//! gateway talks to each Gateway Server. Every uplink reaches the application on MQTT (either
//! process's AS, as each links its Network Server), and both Network Servers processed some.
//! A device heard only by A's gateway whose join and DevAddr B owns gets its join-accept
//! and the ACK of a confirmed uplink in RX1 through A's Gateway Server.
//! Then one process stops (SIGTERM), etcd drops it, its gateway moves to the survivor, and
//! every device's uplinks keep reaching the application through the survivor, whose cached
//! copies of devices the other instance served are reloaded, so that replays stay rejected.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Server, get, temp_dir};
use lorawan::crypto::SessionKeys10;
use lorawan::{Aes128Key, DevAddr, Eui64};
use tern_api::FieldMask;
use tern_api::v3;
use tern_cluster::auth::CallCredentials;
use tern_cluster::shard;
use tern_e2e::services::{Etcd, free_port, free_udp_port};
use tern_simulator::{
    Device, DeviceConfig, Keys, RxInfo, UdpGateway, UdpGatewayConfig, Uplink, Version,
};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

const CLUSTER_KEY: &str = "sharding-test-cluster-key-0123";
const NODES: [&str; 2] = ["shard-a", "shard-b"];
const APP: &str = "sharded-app";
const APP_KEY: [u8; 16] = [0x3c; 16];
const JOIN_EUI: Eui64 = Eui64([0x70, 0xb3, 0xd5, 0x7e, 0xd0, 0, 0, 0x5a]);
const GATEWAYS: [[u8; 8]; 2] = [
    [0xB8, 0x27, 0xEB, 0xFF, 0xFE, 0x00, 0x5A, 0x01],
    [0xB8, 0x27, 0xEB, 0xFF, 0xFE, 0x00, 0x5A, 0x02],
];

/// The configuration both processes share; ports and instance IDs come from the environment.
fn shared_config(dir: &Path, pg: &str, schema: &str, etcd: &str) -> String {
    let path = dir.join("tern.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[cluster]
keys = ["{CLUSTER_KEY}"]

[cluster.etcd]
endpoints = ["{etcd}"]
prefix = "/tern-sharding"
lease-ttl = "3s"

[store]
backend = "postgres"

[store.postgres]
url = "{pg}"
schema = "{schema}"

[network-server]
dedup-window = "100ms"

[network-server.key-encryption-keys]
"ns:local" = "000102030405060708090A0B0C0D0E0F"

[join-server]
root-key-kek = "101112131415161718191A1B1C1D1E1F202122232425262728292A2B2C2D2E2F"

[join-server.keks]
"ns:local" = "000102030405060708090A0B0C0D0E0F"
"as:local" = "F0E0D0C0B0A090807060504030201000"

[application-server.keks]
"as:local" = "F0E0D0C0B0A090807060504030201000"
"#
        ),
    )
    .unwrap();
    path.to_string_lossy().into_owned()
}

/// One member: the process and the ports it was given.
struct Node {
    server: Server,
    grpc: u16,
    udp: u16,
    mqtt: u16,
}

impl Node {
    async fn start(id: &str, config: &str) -> Self {
        let (grpc, udp, mqtt) = (free_port(), free_udp_port(), free_port());
        let listen = |p: u16| format!("127.0.0.1:{p}");
        let mut server = Server::start(
            id,
            &[],
            &[
                ("TERN_CONFIG", config),
                ("TERN_CLUSTER__INSTANCE_ID", id),
                ("TERN_GRPC__LISTEN", &listen(grpc)),
                (
                    "TERN_CLUSTER__ADVERTISE_ADDRESS",
                    &format!("http://127.0.0.1:{grpc}"),
                ),
                ("TERN_GATEWAY_SERVER__UDP__LISTEN", &listen(udp)),
                ("TERN_APPLICATION_SERVER__MQTT__LISTEN", &listen(mqtt)),
                ("RUST_LOG", "info"),
            ],
        );
        server.wait_ready().await;
        Self {
            server,
            grpc,
            udp,
            mqtt,
        }
    }

    fn authed(&self, key: &str) -> InterceptedService<Channel, CallCredentials> {
        let channel =
            tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{}", self.grpc))
                .unwrap()
                .connect_lazy();
        InterceptedService::new(channel, CallCredentials::api_key(key).unwrap())
    }

    /// A counter of `/metrics`, summed over the label sets that contain `labels`.
    async fn counter(&self, name: &str, labels: &str) -> f64 {
        let (_, metrics) = get(self.server.http, "/metrics").await;
        metrics
            .lines()
            .filter(|l| l.starts_with(name) && l.contains(labels))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

fn logs(nodes: &[&Node]) -> String {
    nodes
        .iter()
        .map(|n| n.server.log())
        .collect::<Vec<_>>()
        .join("\n-----\n")
}

/// `(device, f_cnt)` of every uplink the application's MQTT subscribers printed.
type Heard = Arc<Mutex<Vec<(String, u32)>>>;

/// `mosquitto_sub` on one member's MQTT server, killed on drop.
struct Mqtt(Child);

impl Mqtt {
    fn start(port: u16, key: &str, heard: Heard) -> Self {
        let mut child = Command::new("stdbuf")
            .args([
                "-oL",
                "mosquitto_sub",
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .args([
                "-u",
                APP,
                "-P",
                key,
                "-t",
                &format!("v3/{APP}/devices/+/up"),
            ])
            .args(["-v", "-q", "1", "-d"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto_sub (Debian package mosquitto-clients) is installed");
        let stdout = child.stdout.take().unwrap();
        let subscribed = Arc::new(Mutex::new(false));
        std::thread::spawn({
            let subscribed = subscribed.clone();
            move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if line.starts_with("Subscribed (mid") {
                        *subscribed.lock().unwrap() = true;
                    }
                    if let Some((_, json)) = line.split_once(' ')
                        && line.starts_with("v3/")
                        && let Ok(json) = serde_json::from_str::<serde_json::Value>(json)
                        && let Some(device) = json["end_device_ids"]["device_id"].as_str()
                        && let Some(up) = json.get("uplink_message")
                    {
                        // proto3 JSON leaves a zero counter out.
                        let f_cnt = up["f_cnt"].as_u64().unwrap_or(0) as u32;
                        heard.lock().unwrap().push((device.to_owned(), f_cnt));
                    }
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        while !*subscribed.lock().unwrap() {
            assert!(Instant::now() < deadline, "mosquitto_sub did not subscribe");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self(child)
    }
}

impl Drop for Mqtt {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The member owning shard `key` of the two.
fn owner_of(key: &[u8]) -> &'static str {
    NODES
        .iter()
        .max_by_key(|id| (shard::score(key, id), **id))
        .copied()
        .unwrap()
}

fn dev_addr_owned_by(node: &str, base: u32) -> DevAddr {
    (base..)
        .map(|n| DevAddr(n.to_be_bytes()))
        .find(|a| owner_of(&[b"dev-addr:".as_slice(), &a.0].concat()) == node)
        .unwrap()
}

fn app_ids() -> v3::ApplicationIdentifiers {
    v3::ApplicationIdentifiers {
        application_id: APP.into(),
    }
}

fn update(dev: v3::EndDevice, paths: &[&str]) -> v3::UpdateEndDeviceRequest {
    v3::UpdateEndDeviceRequest {
        end_device: Some(dev),
        field_mask: Some(FieldMask::new(paths.iter().copied())),
    }
}

fn clear(key: [u8; 16]) -> Option<v3::KeyEnvelope> {
    Some(v3::KeyEnvelope {
        key: key.to_vec(),
        ..Default::default()
    })
}

fn base_device(ids: &v3::EndDeviceIdentifiers, join: bool) -> v3::EndDevice {
    v3::EndDevice {
        ids: Some(ids.clone()),
        frequency_plan_id: "EU_863_870".into(),
        lorawan_version: v3::MacVersion::MacV103 as i32,
        lorawan_phy_version: v3::PhyVersion::Rp002V103 as i32,
        supports_join: join,
        ..Default::default()
    }
}

const BASE_PATHS: [&str; 4] = [
    "frequency_plan_id",
    "lorawan_version",
    "lorawan_phy_version",
    "supports_join",
];

/// An ABP device in the IS, the NS (session) and the AS (AppSKey), through `node`.
async fn register_abp(
    node: &Node,
    admin: &str,
    id: &str,
    dev_eui: Eui64,
    addr: DevAddr,
    keys: SessionKeys10,
) {
    let ids = v3::EndDeviceIdentifiers {
        application_ids: Some(app_ids()),
        device_id: id.into(),
        dev_eui: dev_eui.0.to_vec(),
        join_eui: Vec::new(),
        dev_addr: addr.0.to_vec(),
    };
    let device = base_device(&ids, false);
    v3::end_device_registry_client::EndDeviceRegistryClient::new(node.authed(admin))
        .create(v3::CreateEndDeviceRequest {
            end_device: Some(device.clone()),
        })
        .await
        .unwrap();
    let session = |keys: v3::SessionKeys| v3::Session {
        dev_addr: addr.0.to_vec(),
        keys: Some(keys),
        ..Default::default()
    };
    let mut paths = BASE_PATHS.to_vec();
    paths.extend(["session.dev_addr", "session.keys.f_nwk_s_int_key"]);
    v3::ns_end_device_registry_client::NsEndDeviceRegistryClient::new(node.authed(admin))
        .set(update(
            v3::EndDevice {
                session: Some(session(v3::SessionKeys {
                    f_nwk_s_int_key: clear(keys.nwk_s_key.0),
                    ..Default::default()
                })),
                ..device
            },
            &paths,
        ))
        .await
        .unwrap();
    v3::as_end_device_registry_client::AsEndDeviceRegistryClient::new(node.authed(admin))
        .set(update(
            v3::EndDevice {
                ids: Some(ids),
                lorawan_version: v3::MacVersion::MacV103 as i32,
                session: Some(session(v3::SessionKeys {
                    app_s_key: clear(keys.app_s_key.0),
                    ..Default::default()
                })),
                ..Default::default()
            },
            &["session.dev_addr", "session.keys.app_s_key"],
        ))
        .await
        .unwrap();
}

/// An OTAA device in the IS, the JS (AppKey) and the NS, through `node`.
async fn register_otaa(node: &Node, admin: &str, id: &str, dev_eui: Eui64) {
    let ids = v3::EndDeviceIdentifiers {
        application_ids: Some(app_ids()),
        device_id: id.into(),
        dev_eui: dev_eui.0.to_vec(),
        join_eui: JOIN_EUI.0.to_vec(),
        dev_addr: Vec::new(),
    };
    let device = base_device(&ids, true);
    v3::end_device_registry_client::EndDeviceRegistryClient::new(node.authed(admin))
        .create(v3::CreateEndDeviceRequest {
            end_device: Some(device.clone()),
        })
        .await
        .unwrap();
    v3::js_end_device_registry_client::JsEndDeviceRegistryClient::new(node.authed(admin))
        .set(update(
            v3::EndDevice {
                ids: Some(ids),
                root_keys: Some(v3::RootKeys {
                    app_key: clear(APP_KEY),
                    nwk_key: None,
                }),
                ..Default::default()
            },
            &["root_keys.app_key"],
        ))
        .await
        .unwrap();
    v3::ns_end_device_registry_client::NsEndDeviceRegistryClient::new(node.authed(admin))
        .set(update(device, &BASE_PATHS))
        .await
        .unwrap();
}

/// A simulated device, the gateway that hears it, and every frame it sent.
struct Dev {
    id: String,
    device: Device,
    gateway: usize,
    sent: Vec<(u32, Vec<u8>)>,
}

impl Dev {
    async fn send(&mut self, gateways: &[UdpGateway]) -> (String, u32) {
        let f_cnt = self.device.session().expect("a session").f_cnt_up;
        let frame = self
            .device
            .uplink(&Uplink {
                f_port: Some(2),
                payload: (f_cnt as u16).to_be_bytes().to_vec(),
                ..Default::default()
            })
            .unwrap();
        self.sent.push((f_cnt, frame.clone()));
        gateways[self.gateway]
            .send_uplink(&frame, &RxInfo::eu868_default())
            .await
            .unwrap();
        (self.id.clone(), f_cnt)
    }

    fn owner(&self) -> &'static str {
        let addr = self.device.session().expect("a session").dev_addr;
        owner_of(&[b"dev-addr:".as_slice(), &addr.0].concat())
    }
}

async fn wait_heard(heard: &Heard, ups: &[(String, u32)], nodes: &[&Node], step: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got: BTreeSet<_> = heard.lock().unwrap().iter().cloned().collect();
        let missing: Vec<_> = ups.iter().filter(|u| !got.contains(u)).collect();
        if missing.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{step}: the application did not hear {missing:?}\n{}",
            logs(nodes)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_network_servers_share_devices_and_the_survivor_takes_over() {
    let Ok(pg) = std::env::var("TERN_TEST_POSTGRES_URL") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "TERN_TEST_POSTGRES_URL is not set: \
             `export TERN_TEST_POSTGRES_URL=$(scripts/test-postgres.sh start)`"
        );
        eprintln!("skipped: TERN_TEST_POSTGRES_URL is not set");
        return;
    };
    let etcd = Etcd::start();
    let dir = temp_dir("sharding");
    let schema = format!("sharding_{}", std::process::id());
    let config = shared_config(&dir, &pg, &schema, &etcd.url);

    // One after the other: the first migrates and bootstraps the Identity Server.
    let a = Node::start(NODES[0], &config).await;
    let mut b = Node::start(NODES[1], &config).await;
    let admin = [&a, &b]
        .iter()
        .find_map(|n| {
            let text = std::fs::read_to_string(n.server.data_dir.join("bootstrap.txt")).ok()?;
            text.lines().find_map(|l| {
                let (k, v) = l.split_once('=')?;
                (k.trim() == "api-key").then(|| v.trim().trim_matches('"').to_owned())
            })
        })
        .unwrap_or_else(|| panic!("no bootstrap.txt with an api-key\n{}", logs(&[&a, &b])));

    v3::application_registry_client::ApplicationRegistryClient::new(a.authed(&admin))
        .create(v3::CreateApplicationRequest {
            application: Some(v3::Application {
                ids: Some(app_ids()),
                name: "Sharded".into(),
                ..Default::default()
            }),
            collaborator: None,
        })
        .await
        .unwrap();
    let app_key = v3::entity_access_client::EntityAccessClient::new(a.authed(&admin))
        .create_api_key(v3::CreateApiKeyRequest {
            entity_ids: Some(v3::EntityIdentifiers {
                ids: Some(v3::entity_identifiers::Ids::ApplicationIds(app_ids())),
            }),
            name: "traffic".into(),
            rights: vec![v3::Right::ApplicationTrafficRead as i32],
            expires_at: None,
        })
        .await
        .unwrap()
        .into_inner()
        .key;
    let mut registry = v3::gateway_registry_client::GatewayRegistryClient::new(a.authed(&admin));
    for (i, eui) in GATEWAYS.iter().enumerate() {
        registry
            .create(v3::CreateGatewayRequest {
                gateway: Some(v3::Gateway {
                    ids: Some(v3::GatewayIdentifiers {
                        gateway_id: format!("shard-gw-{i}"),
                        eui: eui.to_vec(),
                    }),
                    frequency_plan_ids: vec!["EU_863_870".into()],
                    ..Default::default()
                }),
                collaborator: None,
            })
            .await
            .unwrap();
    }

    // Two ABP devices per owner, all registered through A (so A caches every one of them),
    // each heard by the gateway of the other member half of the time.
    let mut devs = Vec::new();
    for (i, owner) in NODES.iter().enumerate() {
        for j in 0..2u32 {
            let addr = dev_addr_owned_by(owner, 0x2601_5a00 + 0x100 * (2 * i as u32 + j));
            let k = (2 * i) as u8 + j as u8;
            let keys = SessionKeys10 {
                nwk_s_key: Aes128Key([0x40 + k; 16]),
                app_s_key: Aes128Key([0x50 + k; 16]),
            };
            let id = format!("abp-{owner}-{j}");
            let dev_eui = Eui64((0x70B3_D57E_D05A_0000u64 + u64::from(k)).to_be_bytes());
            register_abp(&a, &admin, &id, dev_eui, addr, keys).await;
            let config =
                DeviceConfig::otaa(dev_eui, Eui64([0; 8]), Version::V1_0, Aes128Key([0; 16]));
            devs.push(Dev {
                device: Device::abp(config, addr, Keys::V1_0(keys)),
                id,
                gateway: j as usize,
                sent: Vec::new(),
            });
        }
    }
    // One OTAA device heard by B's gateway, whose join B's NS owns; its DevAddr may then
    // belong to either Network Server.
    let otaa_eui = (0x70B3_D57E_D05A_1000u64..)
        .map(|n| Eui64(n.to_be_bytes()))
        .find(|e| owner_of(&[b"dev-eui:".as_slice(), &e.0].concat()) == NODES[1])
        .unwrap();
    register_otaa(&a, &admin, "otaa", otaa_eui).await;
    let mut otaa = Dev {
        device: Device::new(DeviceConfig::otaa(
            otaa_eui,
            JOIN_EUI,
            Version::V1_0,
            Aes128Key(APP_KEY),
        )),
        id: "otaa".into(),
        gateway: 1,
        sent: Vec::new(),
    };

    let heard: Heard = Arc::default();
    let mqtt_a = Mqtt::start(a.mqtt, &app_key, heard.clone());
    let mqtt_b = Mqtt::start(b.mqtt, &app_key, heard.clone());
    let mut gateways = Vec::new();
    for (i, node) in [&a, &b].iter().enumerate() {
        let addr = SocketAddr::from(([127, 0, 0, 1], node.udp));
        gateways.push(
            UdpGateway::connect(UdpGatewayConfig::new(GATEWAYS[i], addr))
                .await
                .unwrap(),
        );
    }

    let request = otaa.device.join_request().unwrap();
    gateways[otaa.gateway]
        .send_uplink(&request, &RxInfo::eu868_default())
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let down = gateways[otaa.gateway]
            .next_downlink(left)
            .await
            .unwrap_or_else(|e| panic!("no join-accept: {e}\n{}", logs(&[&a, &b])));
        if otaa.device.accept_join(&down.payload).is_ok() {
            break;
        }
    }
    devs.push(otaa);

    // A second OTAA device, heard only by A's gateway, whose DevEUI (so its join) B's
    // Network Server owns: B sends the join-accept through A's Gateway Server, named in the
    // uplink's rx metadata. It joins again until its DevAddr is B's too (one in two), so
    // that B also answers its data uplinks through A.
    let cross_eui = (0x70B3_D57E_D05A_2000u64..)
        .map(|n| Eui64(n.to_be_bytes()))
        .find(|e| owner_of(&[b"dev-eui:".as_slice(), &e.0].concat()) == NODES[1])
        .unwrap();
    register_otaa(&a, &admin, "otaa-cross", cross_eui).await;
    let mut cross = Device::new(DeviceConfig::otaa(
        cross_eui,
        JOIN_EUI,
        Version::V1_0,
        Aes128Key(APP_KEY),
    ));
    let rx1 = |down: &tern_simulator::ReceivedDownlink, what: &str| {
        // EU868 RX1 with offset 0: the uplink's channel and data rate (RX2 is 869.525 MHz).
        assert!(
            (down.txpk.freq - 868.1).abs() < 1e-6 && down.txpk.datr == "SF7BW125",
            "{what} not in RX1: {:?}",
            down.txpk
        );
    };
    let mut joins = 0;
    loop {
        joins += 1;
        assert!(joins <= 12, "no DevAddr owned by {} in 12 joins", NODES[1]);
        let request = cross.join_request().unwrap();
        gateways[0]
            .send_uplink(&request, &RxInfo::eu868_default())
            .await
            .unwrap();
        let down = gateways[0]
            .next_downlink(Duration::from_secs(10))
            .await
            .unwrap_or_else(|e| panic!("no cross-process join-accept: {e}\n{}", logs(&[&a, &b])));
        let dev_addr = cross
            .accept_join(&down.payload)
            .unwrap_or_else(|e| panic!("not our join-accept: {e}"))
            .dev_addr;
        rx1(&down, "the join-accept");
        if owner_of(&[b"dev-addr:".as_slice(), &dev_addr.0].concat()) == NODES[1] {
            break;
        }
    }
    eprintln!(
        "otaa-cross got a DevAddr of {} in {joins} join(s)",
        NODES[1]
    );
    let f_cnt = cross.session().unwrap().f_cnt_up;
    let frame = cross
        .uplink(&Uplink {
            f_port: Some(2),
            payload: vec![0xC0, 0x55],
            confirmed: true,
            ..Default::default()
        })
        .unwrap();
    gateways[0]
        .send_uplink(&frame, &RxInfo::eu868_default())
        .await
        .unwrap();
    let down = gateways[0]
        .next_downlink(Duration::from_secs(5))
        .await
        .unwrap_or_else(|e| {
            panic!(
                "no cross-process class A downlink: {e}\n{}",
                logs(&[&a, &b])
            )
        });
    rx1(&down, "the ACK of the confirmed uplink");
    assert!(cross.downlink(&down.payload).unwrap().ack);
    wait_heard(
        &heard,
        &[("otaa-cross".to_owned(), f_cnt)],
        &[&a, &b],
        "cross-process device",
    )
    .await;
    // B named A's Gateway Server for each (its own has no path to the gateway).
    let named = b
        .counter("tern_ns_downlink_routes", "route=\"one_gateway_server\"")
        .await;
    assert!(named >= 2.0, "downlinks routed by named GS on B: {named}");

    // Both members: three uplinks per device reach the application.
    let mut ups = Vec::new();
    for _ in 0..3 {
        for dev in devs.iter_mut() {
            ups.push(dev.send(&gateways).await);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    wait_heard(&heard, &ups, &[&a, &b], "with both members").await;
    let owners: Vec<_> = devs.iter().map(|d| (d.id.clone(), d.owner())).collect();
    eprintln!("DevAddr owners: {owners:?}");
    assert!(
        owners.iter().any(|(_, o)| *o == NODES[0]) && owners.iter().any(|(_, o)| *o == NODES[1])
    );
    for node in [&a, &b] {
        let forwarded = node.counter("tern_ns_uplinks_forwarded", "").await;
        assert!(
            forwarded >= 6.0,
            "each Network Server processed the uplinks of the DevAddrs it owns: {forwarded}\n{}",
            node.server.log()
        );
    }

    // B stops; etcd drops it; its gateway moves to A, as a packet forwarder would.
    b.server.signal(libc::SIGTERM);
    b.server.wait_exit(Duration::from_secs(15)).await;
    drop(mqtt_b);
    tokio::time::sleep(Duration::from_secs(4)).await;
    gateways[1] = UdpGateway::connect(UdpGatewayConfig::new(
        GATEWAYS[1],
        SocketAddr::from(([127, 0, 0, 1], a.udp)),
    ))
    .await
    .unwrap();

    // Replays first: A's cached copies of B's devices are stale (A cached them at
    // registration), and B's last frames must still be refused.
    let before = heard.lock().unwrap().len();
    for dev in devs.iter() {
        let (_, frame) = dev.sent.last().unwrap().clone();
        gateways[dev.gateway]
            .send_uplink(&frame, &RxInfo::eu868_default())
            .await
            .unwrap();
    }
    // Then every device's next uplinks, through the survivor.
    let mut after = Vec::new();
    for _ in 0..2 {
        for dev in devs.iter_mut() {
            after.push(dev.send(&gateways).await);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    wait_heard(&heard, &after, &[&a], "through the survivor").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let heard_now = heard.lock().unwrap().clone();
    assert_eq!(
        heard_now.len() - before,
        after.len(),
        "replays were not delivered again: {:?}",
        &heard_now[before..]
    );
    let unique: BTreeSet<_> = heard_now.iter().cloned().collect();
    assert_eq!(unique.len(), heard_now.len(), "no uplink heard twice");
    // A reloaded the devices B had moved on instead of overwriting them.
    let reloaded = a
        .counter("tern_ns_device_index_lookups", "outcome=\"reloaded\"")
        .await;
    assert!(reloaded >= 2.0, "stale devices reloaded: {reloaded}");
    drop(mqtt_a);
}
