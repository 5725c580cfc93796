//! Scenario 3: a cluster. Two `tern start` processes (every role) share a PostgreSQL
//! database, an etcd (peer directory, shard ownership by rendezvous hashing) and a NATS
//! server (events), all real and started here. Gateways are connected to different
//! processes; OTAA and ABP devices are chosen so that each Network Server owns some (by
//! DevEUI for joins, by DevAddr for data). Then one process is SIGKILLed while traffic flows:
//! its gateway fails over to the survivor, uplinks and joins keep working, a downlink queued
//! before the kill is delivered, a frame accepted before the kill is not accepted again, and
//! every uplink the application saw reaches the webhook receiver. Finally the killed process
//! is restarted on the same database and data directory, rejoins the cluster and serves again.
//! The application listens on ONE process's MQTT server only and still hears every uplink
//! (the Application Servers relay their MQTT messages to each other through NATS), each
//! exactly once; a downlink pushed through the process that does not own the device goes out.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lorawan::crypto::SessionKeys10;
use lorawan::{Aes128Key, DevAddr, Eui64};
use tern_api::FieldMask;
use tern_api::v3;
use tern_cluster::auth::CallCredentials;
use tern_cluster::shard;
use tern_e2e::services::{Etcd, Nats, PgDatabase, free_port, free_udp_port};
use tern_e2e::webhook::WebhookReceiver;
use tern_e2e::{temp_dir, try_get};
use tern_simulator::{
    Device, DeviceConfig, Keys, RxInfo, UdpGateway, UdpGatewayConfig, Uplink, Version,
};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// The shared cluster key (both processes sign and accept it).
const CLUSTER_KEY: &str = "e2e-cluster-key-0123456789";
/// The instance IDs of the two processes.
const NODES: [&str; 2] = ["node-a", "node-b"];
/// The application.
const APP: &str = "cluster-app";
/// The OTAA devices' AppKey.
const APP_KEY: &str = "2B7E151628AED2A6ABF7158809CF4F3C";
/// The JoinEUI of the OTAA devices.
const JOIN_EUI: &str = "70B3D57ED0000000";
/// The gateways: gateway `i` starts on process `i`.
const GATEWAYS: [[u8; 8]; 2] = [
    [0xB8, 0x27, 0xEB, 0xFF, 0xFE, 0x00, 0x0C, 0x01],
    [0xB8, 0x27, 0xEB, 0xFF, 0xFE, 0x00, 0x0C, 0x02],
];

type Authed = InterceptedService<Channel, CallCredentials>;

// ---------------------------------------------------------------------------------------
// The processes.

/// One `tern start` of the cluster, on fixed loopback ports and a fixed data directory, so
/// that a restart is the same member on the same data.
struct Node {
    id: &'static str,
    dir: PathBuf,
    data_dir: PathBuf,
    config: PathBuf,
    http: u16,
    grpc: u16,
    udp: u16,
    mqtt: u16,
    child: Option<Child>,
    log: Arc<Mutex<Vec<String>>>,
}

impl Node {
    fn new(id: &'static str, config: &Path) -> Self {
        let dir = temp_dir(&format!("cluster-{id}"));
        Self {
            id,
            data_dir: dir.join("data"),
            dir,
            config: config.to_owned(),
            http: free_port(),
            grpc: free_port(),
            udp: free_udp_port(),
            mqtt: free_port(),
            child: None,
            log: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// Starts the process and waits until `/readyz` answers 200.
    async fn start(&mut self) {
        let listen = |port: u16| format!("127.0.0.1:{port}");
        let mut cmd = tern_e2e::process::tern(&self.dir);
        cmd.arg("start")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .env("TERN_CONFIG", &self.config)
            .env("TERN_HTTP__LISTEN", listen(self.http))
            .env("TERN_GRPC__LISTEN", listen(self.grpc))
            .env("TERN_GATEWAY_SERVER__UDP__LISTEN", listen(self.udp))
            .env("TERN_GATEWAY_SERVER__BASIC_STATION__LISTEN", "127.0.0.1:0")
            .env("TERN_APPLICATION_SERVER__MQTT__LISTEN", listen(self.mqtt))
            .env("TERN_CLUSTER__INSTANCE_ID", self.id)
            .env(
                "TERN_CLUSTER__ADVERTISE_ADDRESS",
                format!("http://127.0.0.1:{}", self.grpc),
            )
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawning tern");
        let stderr = child.stderr.take().unwrap();
        let log = self.log.clone();
        let file = self.dir.join("tern.log");
        log.lock()
            .unwrap()
            .push(format!("===== {} (re)started =====", self.id));
        std::thread::spawn(move || {
            let mut out = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(file)
                .ok();
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(out) = out.as_mut() {
                    let _ = writeln!(out, "{line}");
                }
                log.lock().unwrap().push(line);
            }
        });
        self.child = Some(child);
        let addr = SocketAddr::from(([127, 0, 0, 1], self.http));
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            if let Ok((200, _)) = try_get(addr, "/readyz").await {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("{} exited early with {status}:\n{}", self.id, self.log());
            }
            if Instant::now() > deadline {
                let readyz = try_get(addr, "/readyz").await;
                panic!(
                    "{} did not become ready: {readyz:?}\n{}",
                    self.id,
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGKILL: no shutdown, no deregistration, nothing flushed.
    fn kill(&mut self) {
        let mut child = self.child.take().expect("a running process");
        let pid = libc::pid_t::try_from(child.id()).unwrap();
        // SAFETY: sending a signal to our own child process.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
        let status = child.wait().unwrap();
        self.log
            .lock()
            .unwrap()
            .push(format!("===== {} killed: {status} =====", self.id));
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    fn http_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.http))
    }

    fn udp_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.udp))
    }

    /// A gRPC client stub's channel with `key` as credentials.
    fn authed(&self, key: &str) -> Authed {
        let channel =
            tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{}", self.grpc))
                .unwrap()
                .connect_lazy();
        InterceptedService::new(channel, CallCredentials::api_key(key).unwrap())
    }

    /// The sum of the samples of metric `name` whose labels contain `label` (e.g.
    /// `reason="f_cnt_replay"`), from `/metrics`.
    async fn metric(&self, name: &str, label: &str) -> f64 {
        let Ok((_, text)) = try_get(self.http_addr(), "/metrics").await else {
            return 0.0;
        };
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| l.split(['{', ' ']).next() == Some(name) && l.contains(label))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Kept for a post-mortem when the scenario failed.
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The survivor's NS drop counters by reason (`uplinks_dropped` samples of `/metrics`).
async fn dropped_by_reason(node: &Node) -> BTreeMap<String, f64> {
    let Ok((_, text)) = try_get(node.http_addr(), "/metrics").await else {
        return BTreeMap::new();
    };
    text.lines()
        .filter(|l| !l.starts_with('#') && l.contains("_ns_uplinks_dropped"))
        .filter_map(|l| {
            let reason = l.split("reason=\"").nth(1)?.split('"').next()?.to_owned();
            Some((reason, l.rsplit(' ').next()?.parse().ok()?))
        })
        .collect()
}

/// The logs of every node, for failure messages.
fn logs(nodes: &[Node]) -> String {
    nodes
        .iter()
        .map(|n| format!("--- {} ({}):\n{}", n.id, n.dir.display(), n.log()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The directory of the shared configuration, removed on drop.
struct ConfigDir(PathBuf);

impl Drop for ConfigDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The configuration both processes share: the store, etcd, NATS, the cluster key, and the
/// keys that must be the same everywhere (the JS's at-rest key, the KEKs the JS wraps session
/// keys under and the NS and AS unwrap with); only ports, instance IDs and data directories
/// differ (environment).
fn shared_config(dir: &Path, pg: &str, etcd: &str, nats: &str) -> PathBuf {
    let path = dir.join("cluster.toml");
    let text = format!(
        r#"
[log]
level = "info"

[cluster]
keys = ["{CLUSTER_KEY}"]

[cluster.etcd]
endpoints = ["{etcd}"]
prefix = "/tern-e2e"
# Short, so that a killed member leaves the directory quickly.
lease-ttl = "3s"

[store]
backend = "postgres"

[store.postgres]
url = "{pg}"
pool-size = 8

[events.nats]
url = "{nats}"

[network-server]
# Shorter than the default only to keep the scenario quick.
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
    );
    std::fs::write(&path, text).unwrap();
    path
}

// ---------------------------------------------------------------------------------------
// What the application sees.

/// A `mosquitto_sub` on one process's MQTT server collecting `(device, f_cnt)` of uplinks.
struct MqttCollector {
    child: Child,
}

impl MqttCollector {
    /// Subscribes to every uplink of the application on `port` and returns once subscribed.
    fn start(port: u16, key: &str, seen: Arc<Mutex<Vec<(String, u32)>>>) -> Self {
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
                        && let Some(up) = uplink_of(&json)
                    {
                        seen.lock().unwrap().push(up);
                    }
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        while !*subscribed.lock().unwrap() {
            assert!(
                Instant::now() < deadline,
                "mosquitto_sub did not subscribe on port {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child }
    }
}

impl Drop for MqttCollector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `(device ID, f_cnt)` of an uplink message (MQTT or webhook body), `None` for others.
fn uplink_of(json: &serde_json::Value) -> Option<(String, u32)> {
    let device = json["end_device_ids"]["device_id"].as_str()?.to_owned();
    let up = json.get("uplink_message")?;
    // proto3 JSON may leave out a zero counter.
    let f_cnt = up["f_cnt"].as_u64().unwrap_or(0);
    Some((device, u32::try_from(f_cnt).ok()?))
}

/// What the application saw: uplinks on MQTT (one process's server) and at the webhook
/// receiver.
struct Seen {
    mqtt: Arc<Mutex<Vec<(String, u32)>>>,
    webhook: WebhookReceiver,
}

impl Seen {
    fn mqtt_count(&self, up: &(String, u32)) -> usize {
        self.mqtt
            .lock()
            .unwrap()
            .iter()
            .filter(|u| *u == up)
            .count()
    }

    fn webhook_ups(&self) -> Vec<(String, u32)> {
        self.webhook
            .requests()
            .iter()
            .filter(|r| r.path.ends_with("/up"))
            .filter_map(|r| uplink_of(&r.body))
            .collect()
    }

    /// Accepted: the application heard it, on MQTT or through the webhook.
    fn accepted(&self, up: &(String, u32)) -> bool {
        self.mqtt_count(up) > 0 || self.webhook_ups().contains(up)
    }

    /// Every uplink the application heard of (on either channel).
    fn all_accepted(&self) -> BTreeSet<(String, u32)> {
        let mut all: BTreeSet<_> = self.mqtt.lock().unwrap().iter().cloned().collect();
        all.extend(self.webhook_ups());
        all
    }

    /// Waits until every one of `ups` is on MQTT and at the webhook receiver.
    async fn wait_all(&self, ups: &[(String, u32)], limit: Duration, nodes: &[Node], step: &str) {
        let deadline = Instant::now() + limit;
        loop {
            let hooks: BTreeSet<_> = self.webhook_ups().into_iter().collect();
            let mqtt: BTreeSet<_> = self.mqtt.lock().unwrap().iter().cloned().collect();
            let missing_mqtt: Vec<_> = ups.iter().filter(|u| !mqtt.contains(u)).collect();
            let missing_hook: Vec<_> = ups.iter().filter(|u| !hooks.contains(u)).collect();
            if missing_mqtt.is_empty() && missing_hook.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{step}: not heard within {limit:?}: on MQTT {missing_mqtt:?}, at the webhook \
                 {missing_hook:?}\n{}",
                logs(nodes)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

// ---------------------------------------------------------------------------------------
// Devices.

/// A simulated device and the gateway that hears it.
struct Dev {
    id: String,
    device: Device,
    gateway: usize,
    /// Every frame sent: `(f_cnt, PHYPayload)`.
    sent: Vec<(u32, Vec<u8>)>,
}

impl Dev {
    fn dev_addr(&self) -> DevAddr {
        self.device.session().expect("an active session").dev_addr
    }

    /// The instance that owns the device's data uplinks.
    fn owner(&self) -> &'static str {
        owner_of(&[b"dev-addr:".as_slice(), &self.dev_addr().0].concat())
    }

    /// Sends the next uplink through its gateway; returns its `(device, f_cnt)` when the
    /// gateway's GS acknowledged the PUSH_DATA.
    async fn send(&mut self, gateways: &[UdpGateway]) -> Result<(String, u32), String> {
        let f_cnt = self.device.session().expect("an active session").f_cnt_up;
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
            .map_err(|e| format!("{}: PUSH_DATA of f_cnt {f_cnt}: {e}", self.id))?;
        Ok((self.id.clone(), f_cnt))
    }
}

/// The instance of [`NODES`] that owns shard `key` (rendezvous hashing, as every process
/// computes it).
fn owner_of(key: &[u8]) -> &'static str {
    NODES
        .iter()
        .max_by_key(|id| (shard::score(key, id), **id))
        .copied()
        .unwrap()
}

/// The first DevEUI from `base` up that `node` owns (join-requests are sharded by DevEUI).
fn dev_eui_owned_by(node: &str, base: u64) -> Eui64 {
    (base..)
        .map(|n| Eui64(n.to_be_bytes()))
        .find(|eui| owner_of(&[b"dev-eui:".as_slice(), &eui.0].concat()) == node)
        .unwrap()
}

/// The first DevAddr (NetID 000013's range) from `base` up that `node` owns.
fn dev_addr_owned_by(node: &str, base: u32) -> DevAddr {
    (base..)
        .map(|n| DevAddr(n.to_be_bytes()))
        .find(|addr| owner_of(&[b"dev-addr:".as_slice(), &addr.0].concat()) == node)
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

fn clear_key(key: [u8; 16]) -> Option<v3::KeyEnvelope> {
    Some(v3::KeyEnvelope {
        key: key.to_vec(),
        ..Default::default()
    })
}

/// Registers an OTAA device (IS, JS root key, NS settings) through `node`.
async fn register_otaa(node: &Node, admin: &str, id: &str, dev_eui: Eui64) {
    let ids = v3::EndDeviceIdentifiers {
        application_ids: Some(app_ids()),
        device_id: id.into(),
        dev_eui: dev_eui.0.to_vec(),
        join_eui: hex::decode(JOIN_EUI).unwrap(),
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
                    app_key: clear_key(hex::decode(APP_KEY).unwrap().try_into().unwrap()),
                    nwk_key: None,
                }),
                ..Default::default()
            },
            &["root_keys.app_key"],
        ))
        .await
        .unwrap();
    v3::ns_end_device_registry_client::NsEndDeviceRegistryClient::new(node.authed(admin))
        .set(update(
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
}

/// Registers an ABP device (IS, NS session, AS AppSKey) through `node`.
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
    let device = v3::EndDevice {
        ids: Some(ids.clone()),
        frequency_plan_id: "EU_863_870".into(),
        lorawan_version: v3::MacVersion::MacV103 as i32,
        lorawan_phy_version: v3::PhyVersion::Rp002V103 as i32,
        supports_join: false,
        ..Default::default()
    };
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
    v3::ns_end_device_registry_client::NsEndDeviceRegistryClient::new(node.authed(admin))
        .set(update(
            v3::EndDevice {
                session: Some(session(v3::SessionKeys {
                    f_nwk_s_int_key: clear_key(keys.nwk_s_key.0),
                    ..Default::default()
                })),
                ..device.clone()
            },
            &[
                "frequency_plan_id",
                "lorawan_version",
                "lorawan_phy_version",
                "supports_join",
                "session.dev_addr",
                "session.keys.f_nwk_s_int_key",
            ],
        ))
        .await
        .unwrap();
    v3::as_end_device_registry_client::AsEndDeviceRegistryClient::new(node.authed(admin))
        .set(update(
            v3::EndDevice {
                ids: Some(ids),
                lorawan_version: v3::MacVersion::MacV103 as i32,
                session: Some(session(v3::SessionKeys {
                    app_s_key: clear_key(keys.app_s_key.0),
                    ..Default::default()
                })),
                ..Default::default()
            },
            &["session.dev_addr", "session.keys.app_s_key"],
        ))
        .await
        .unwrap();
}

/// Joins an OTAA device through its gateway; panics with the logs when no accept comes.
async fn join(dev: &mut Dev, gateways: &[UdpGateway], nodes: &[Node], step: &str) {
    let request = dev.device.join_request().unwrap();
    gateways[dev.gateway]
        .send_uplink(&request, &RxInfo::eu868_default())
        .await
        .unwrap_or_else(|e| panic!("{step}: join-request of {}: {e}", dev.id));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(down) = gateways[dev.gateway].next_downlink(left).await else {
            panic!(
                "{step}: no join-accept for {} through gateway {}\n{}",
                dev.id,
                dev.gateway,
                logs(nodes)
            );
        };
        if dev.device.accept_join(&down.payload).is_ok() {
            return;
        }
    }
}

/// Sends uplinks from `dev` (one per second) until the application hears one; returns it.
async fn uplink_until_accepted(
    dev: &mut Dev,
    gateways: &[UdpGateway],
    seen: &Seen,
    limit: Duration,
    nodes: &[Node],
    step: &str,
) -> (String, u32) {
    let deadline = Instant::now() + limit;
    let mut errors = Vec::new();
    loop {
        match dev.send(gateways).await {
            Ok(up) => {
                let heard = Instant::now() + Duration::from_secs(1);
                while Instant::now() < heard {
                    if seen.accepted(&up) {
                        return up;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            Err(e) => errors.push(e),
        }
        assert!(
            Instant::now() < deadline,
            "{step}: no uplink of {} (via gateway {}) accepted within {limit:?}; gateway \
             errors: {errors:?}\n{}",
            dev.id,
            dev.gateway,
            logs(nodes)
        );
    }
}

/// Waits on `dev`'s gateway for the downlink with `payload` on FPort 3 (skipping others,
/// e.g. MAC-only answers) and checks that it is timed for RX1.
async fn expect_downlink(
    dev: &mut Dev,
    gateways: &[UdpGateway],
    payload: &[u8],
    nodes: &[Node],
    step: &str,
) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(down) = gateways[dev.gateway].next_downlink(left).await else {
            panic!(
                "{step}: the downlink queued for {} ({}) never reached gateway {}\n{}",
                dev.id,
                payload.len(),
                dev.gateway,
                logs(nodes)
            );
        };
        if let Ok(got) = dev.device.downlink(&down.payload)
            && got.f_port == Some(3)
        {
            assert_eq!(got.payload, payload, "{step}: {}'s downlink", dev.id);
            if let Some(margin) = down.margin_us() {
                assert!(
                    margin > 0,
                    "{step}: the downlink arrived {margin} µs too late"
                );
            }
            return;
        }
    }
}

/// Queues a downlink for `dev` through the AS API of `node` and waits until it is listed.
async fn queue_downlink(node: &Node, key: &str, dev: &Dev, payload: &[u8]) {
    let ids = v3::EndDeviceIdentifiers::new(APP, &dev.id);
    let mut client = v3::app_as_client::AppAsClient::new(node.authed(key));
    client
        .downlink_queue_push(v3::DownlinkQueueRequest {
            end_device_ids: Some(ids.clone()),
            downlinks: vec![v3::ApplicationDownlink {
                f_port: 3,
                frm_payload: payload.to_vec(),
                ..Default::default()
            }],
        })
        .await
        .unwrap_or_else(|s| panic!("queueing a downlink for {}: {s:?}", dev.id));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let listed = client
            .downlink_queue_list(ids.clone())
            .await
            .unwrap()
            .into_inner();
        if !listed.downlinks.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{}'s downlink was not queued",
            dev.id
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------------------
// The scenario.

/// How far the scenario goes.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Upto {
    /// Two members: joins and uplinks through both, every device's traffic seen.
    BothMembers,
    /// The kill, fail-over, queued downlinks, replays, a join through the survivor, the
    /// restart and webhook completeness.
    KillAndRestart,
}

async fn scenario(upto: Upto) {
    let Some(db) = PgDatabase::create("cluster") else {
        return;
    };
    let etcd = Etcd::start();
    let nats = Nats::start();
    let dir = ConfigDir(temp_dir("cluster-config"));
    let config = shared_config(&dir.0, &db.url, &etcd.url, &nats.url);

    // The first member migrates the database and bootstraps the Identity Server; the second
    // joins an initialised store (started one after the other so that exactly one writes
    // bootstrap.txt).
    let mut nodes = vec![Node::new(NODES[0], &config), Node::new(NODES[1], &config)];
    nodes[0].start().await;
    nodes[1].start().await;
    let admin = nodes
        .iter()
        .find_map(|n| {
            let text = std::fs::read_to_string(n.data_dir.join("bootstrap.txt")).ok()?;
            text.lines().find_map(|l| {
                let (k, v) = l.split_once('=')?;
                (k.trim() == "api-key").then(|| v.trim().trim_matches('"').to_owned())
            })
        })
        .unwrap_or_else(|| panic!("no bootstrap.txt with an api-key\n{}", logs(&nodes)));
    assert!(
        !nodes[1].data_dir.join("bootstrap.txt").exists(),
        "the second member bootstrapped the shared store again"
    );

    // Provisioning through the first member: application, API key, gateways, webhook.
    let node = &nodes[0];
    v3::application_registry_client::ApplicationRegistryClient::new(node.authed(&admin))
        .create(v3::CreateApplicationRequest {
            application: Some(v3::Application {
                ids: Some(app_ids()),
                name: "Cluster".into(),
                ..Default::default()
            }),
            collaborator: None,
        })
        .await
        .unwrap();
    let app_key = v3::entity_access_client::EntityAccessClient::new(node.authed(&admin))
        .create_api_key(v3::CreateApiKeyRequest {
            entity_ids: Some(v3::EntityIdentifiers {
                ids: Some(v3::entity_identifiers::Ids::ApplicationIds(app_ids())),
            }),
            name: "traffic".into(),
            rights: [
                v3::Right::ApplicationTrafficRead,
                v3::Right::ApplicationTrafficDownWrite,
            ]
            .map(|r| r as i32)
            .to_vec(),
            expires_at: None,
        })
        .await
        .unwrap()
        .into_inner()
        .key;
    let mut registry = v3::gateway_registry_client::GatewayRegistryClient::new(node.authed(&admin));
    for (i, eui) in GATEWAYS.iter().enumerate() {
        registry
            .create(v3::CreateGatewayRequest {
                gateway: Some(v3::Gateway {
                    ids: Some(v3::GatewayIdentifiers {
                        gateway_id: format!("cluster-gw-{i}"),
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
    let webhook = WebhookReceiver::start().await;
    v3::application_webhook_registry_client::ApplicationWebhookRegistryClient::new(
        node.authed(&admin),
    )
    .set(v3::SetApplicationWebhookRequest {
        webhook: Some(v3::ApplicationWebhook {
            ids: Some(v3::ApplicationWebhookIdentifiers {
                application_ids: Some(app_ids()),
                webhook_id: "receiver".into(),
            }),
            base_url: webhook.url("/hook"),
            format: "json".into(),
            uplink_message: Some(v3::ApplicationWebhookMessage { path: "/up".into() }),
            ..Default::default()
        }),
    })
    .await
    .unwrap();
    // The other member loads a webhook set elsewhere at its next reload (every 5 s): until
    // then it has none to deliver to.
    let webhook_everywhere = Instant::now() + Duration::from_secs(6);
    let seen = Seen {
        mqtt: Arc::new(Mutex::new(Vec::new())),
        webhook,
    };
    // One MQTT client, on the member that survives the kill: it hears the uplinks that
    // either member's NS handled (relayed between the ASes through NATS).
    let mqtt = MqttCollector::start(nodes[0].mqtt, &app_key, seen.mqtt.clone());

    // Devices: for each member, an OTAA device whose join it owns and an ABP device whose
    // data it owns; each heard by one gateway, crossing processes both ways.
    let mut devs = Vec::new();
    for (i, owner) in NODES.iter().enumerate() {
        let eui = dev_eui_owned_by(owner, 0x70B3_D57E_D000_1000 + 0x100 * i as u64);
        let id = format!("otaa-{owner}");
        register_otaa(&nodes[0], &admin, &id, eui).await;
        devs.push(Dev {
            device: Device::new(DeviceConfig::otaa(
                eui,
                JOIN_EUI.parse().unwrap(),
                Version::V1_0,
                Aes128Key(hex::decode(APP_KEY).unwrap().try_into().unwrap()),
            )),
            id,
            gateway: i,
            sent: Vec::new(),
        });
    }
    // ABP: one per member on the gateway of the other member (these get the downlinks
    // queued before the kill), and one more that the victim owns on the survivor's gateway,
    // which keeps sending while the victim is killed.
    let abp = [
        (NODES[0], 1, "abp-node-a"),
        (NODES[1], 0, "abp-node-b"),
        (NODES[1], 0, "abp-flow"),
    ];
    for (i, (owner, gateway, id)) in abp.into_iter().enumerate() {
        let addr = dev_addr_owned_by(owner, 0x2601_0000 + 0x100 * i as u32);
        let keys = SessionKeys10 {
            nwk_s_key: Aes128Key([0x10 + i as u8; 16]),
            app_s_key: Aes128Key([0x20 + i as u8; 16]),
        };
        let dev_eui = Eui64((0x70B3_D57E_D000_2000u64 + i as u64).to_be_bytes());
        register_abp(&nodes[1], &admin, id, dev_eui, addr, keys).await;
        let config = DeviceConfig::otaa(dev_eui, Eui64([0; 8]), Version::V1_0, Aes128Key([0; 16]));
        devs.push(Dev {
            device: Device::abp(config, addr, Keys::V1_0(keys)),
            id: id.into(),
            gateway,
            sent: Vec::new(),
        });
    }

    let mut gateways = Vec::new();
    for (i, eui) in GATEWAYS.iter().enumerate() {
        gateways.push(
            UdpGateway::connect(UdpGatewayConfig::new(*eui, nodes[i].udp_addr()))
                .await
                .unwrap(),
        );
    }

    // Both members: joins (each NS owns one), then three uplinks per device.
    for dev in devs.iter_mut().filter(|d| d.id.starts_with("otaa")) {
        join(dev, &gateways, &nodes, "join with both members").await;
    }
    let owners: BTreeMap<String, &str> = devs.iter().map(|d| (d.id.clone(), d.owner())).collect();
    eprintln!("data uplink owners: {owners:?}");
    tokio::time::sleep_until(webhook_everywhere.into()).await;
    let mut ups = Vec::new();
    for _ in 0..3 {
        for dev in devs.iter_mut() {
            ups.push(dev.send(&gateways).await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    seen.wait_all(
        &ups,
        Duration::from_secs(30),
        &nodes,
        "uplinks with both members",
    )
    .await;
    // Exactly once on the one MQTT connection, whichever member handled the uplink.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for up in &ups {
        assert_eq!(
            seen.mqtt_count(up),
            1,
            "{up:?} (data owner {}) on node-a's MQTT\n{}",
            owners[&up.0],
            logs(&nodes)
        );
    }
    assert!(
        ups.iter().any(|(dev, _)| owners[dev] == NODES[1]),
        "no uplink handled by node-b: the relay was not exercised"
    );

    // A downlink pushed through node-b's AS for a device whose data node-a owns goes out in
    // RX1 of the device's next uplink (the queue is in the shared store).
    let cross = devs.iter().position(|d| d.id == "abp-node-a").unwrap();
    assert_eq!(devs[cross].owner(), NODES[0]);
    queue_downlink(&nodes[1], &app_key, &devs[cross], b"via-node-b").await;
    let dev = &mut devs[cross];
    let step = "downlink pushed through the non-owner";
    uplink_until_accepted(dev, &gateways, &seen, Duration::from_secs(20), &nodes, step).await;
    expect_downlink(dev, &gateways, b"via-node-b", &nodes, step).await;
    if upto == Upto::BothMembers {
        return;
    }

    // SIGKILL the second member while traffic flows from every device through both
    // gateways. Just before the kill, downlinks are queued for the ABP devices (one owned by
    // the victim, one by the survivor), which then stay silent until after the kill.
    let victim = 1;
    let queued: Vec<(usize, Vec<u8>)> = devs
        .iter()
        .enumerate()
        .filter(|(_, d)| d.id == "abp-node-a" || d.id == "abp-node-b")
        .map(|(i, d)| (i, d.id.as_bytes().to_vec()))
        .collect();
    let mut flowing = Vec::new();
    let mut sent_before_kill = Vec::new();
    for k in 0..10 {
        if k == 2 {
            for (i, payload) in &queued {
                queue_downlink(&nodes[0], &app_key, &devs[*i], payload).await;
            }
        }
        if k == 3 {
            sent_before_kill = devs.iter().map(|d| d.sent.len()).collect();
            nodes[victim].kill();
        }
        for (i, dev) in devs.iter_mut().enumerate() {
            if k >= 2 && queued.iter().any(|(q, _)| *q == i) {
                continue;
            }
            // PUSH_DATA to the killed process goes unanswered: not sent, as for a real gateway.
            if let Ok(up) = dev.send(&gateways).await {
                flowing.push(up);
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    eprintln!(
        "while killing: {} of {} uplinks heard so far",
        flowing.iter().filter(|u| seen.accepted(u)).count(),
        flowing.len()
    );

    // The victim's gateway fails over to the survivor, as a real packet forwarder would.
    gateways[victim] =
        UdpGateway::connect(UdpGatewayConfig::new(GATEWAYS[victim], nodes[0].udp_addr()))
            .await
            .unwrap();

    // Every device's uplinks are accepted again through the survivor; the queued downlinks
    // go out in RX1 of the first accepted uplink.
    for (i, dev) in devs.iter_mut().enumerate() {
        let step = format!("after the kill, {}", dev.id);
        uplink_until_accepted(
            dev,
            &gateways,
            &seen,
            Duration::from_secs(40),
            &nodes,
            &step,
        )
        .await;
        if let Some((_, payload)) = queued.iter().find(|(q, _)| *q == i) {
            expect_downlink(dev, &gateways, payload, &nodes, &step).await;
        }
    }

    // Replays of frames accepted before the kill are not accepted again: the last frame of
    // each device the application heard before the kill, and its first frame.
    let dropped_before = dropped_by_reason(&nodes[0]).await;
    for (i, dev) in devs.iter().enumerate() {
        let before_kill = &dev.sent[..sent_before_kill[i]];
        let last_heard = before_kill
            .iter()
            .rev()
            .find(|(f_cnt, _)| seen.accepted(&(dev.id.clone(), *f_cnt)))
            .unwrap_or_else(|| panic!("no uplink of {} was heard before the kill", dev.id));
        for (f_cnt, frame) in [&before_kill[0], last_heard] {
            let up = (dev.id.clone(), *f_cnt);
            let before = seen.mqtt_count(&up);
            gateways[dev.gateway]
                .send_uplink(frame, &RxInfo::eu868_default())
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(1500)).await;
            assert_eq!(
                seen.mqtt_count(&up),
                before,
                "the replayed frame {up:?} (owner before the kill: {}) was accepted again\n{}",
                owners[&dev.id],
                logs(&nodes)
            );
        }
    }
    eprintln!(
        "survivor's drops by reason before the replays: {dropped_before:?}, after: {:?}",
        dropped_by_reason(&nodes[0]).await
    );

    // A join owned by the victim's shard (by DevEUI) through the survivor.
    let eui = dev_eui_owned_by(NODES[victim], 0x70B3_D57E_D000_3000);
    register_otaa(&nodes[0], &admin, "otaa-late", eui).await;
    let mut late = Dev {
        device: Device::new(DeviceConfig::otaa(
            eui,
            JOIN_EUI.parse().unwrap(),
            Version::V1_0,
            Aes128Key(hex::decode(APP_KEY).unwrap().try_into().unwrap()),
        )),
        id: "otaa-late".into(),
        gateway: victim,
        sent: Vec::new(),
    };
    join(&mut late, &gateways, &nodes, "join through the survivor").await;
    uplink_until_accepted(
        &mut late,
        &gateways,
        &seen,
        Duration::from_secs(20),
        &nodes,
        "late device",
    )
    .await;
    devs.push(late);

    // Restart the victim on the same database and data directory: it rejoins the cluster
    // (etcd) and serves again; its gateway comes back to it.
    nodes[victim].start().await;
    let (_, readyz) = try_get(nodes[victim].http_addr(), "/readyz").await.unwrap();
    let readyz: serde_json::Value = serde_json::from_str(&readyz).unwrap();
    assert_eq!(readyz["services"]["directory"]["ready"], true, "{readyz}");
    gateways[victim] = UdpGateway::connect(UdpGatewayConfig::new(
        GATEWAYS[victim],
        nodes[victim].udp_addr(),
    ))
    .await
    .unwrap();
    for dev in devs.iter_mut() {
        let step = format!("after the restart, {}", dev.id);
        uplink_until_accepted(
            dev,
            &gateways,
            &seen,
            Duration::from_secs(30),
            &nodes,
            &step,
        )
        .await;
    }
    let received_after = nodes[victim]
        .metric("tern_ns_uplinks_received_total", "")
        .await;
    assert!(
        received_after > 0.0,
        "the restarted member's NS handled no uplink\n{}",
        logs(&nodes)
    );

    // No webhook delivery lost: every uplink the application heard (on MQTT, from either
    // member, before, during and after the kill) reaches the receiver at least once.
    let all = seen.all_accepted();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let hooks: BTreeSet<_> = seen.webhook_ups().into_iter().collect();
        let missing: Vec<_> = all.difference(&hooks).collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "webhook deliveries lost: {missing:?} were heard on MQTT but never reached the \
             webhook receiver\n{}",
            logs(&nodes)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Frames whose PUSH_DATA a GS acknowledged but the application never heard: uplinks in
    // flight in the killed process (not accepted, so nothing to deliver), for the record.
    let unheard: Vec<_> = flowing.iter().filter(|u| !all.contains(u)).collect();
    let mqtt_seen = seen.mqtt.lock().unwrap().len();
    eprintln!(
        "accepted {} uplinks; {mqtt_seen} MQTT deliveries; acknowledged by a gateway during \
         the kill but never heard: {unheard:?}",
        all.len()
    );
    drop(mqtt);
}

#[tokio::test(flavor = "multi_thread")]
async fn two_members_share_joins_and_uplinks_across_processes() {
    scenario(Upto::BothMembers).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sigkilled_member_fails_over_and_rejoins_without_losing_or_replaying_traffic() {
    scenario(Upto::KillAndRestart).await;
}
