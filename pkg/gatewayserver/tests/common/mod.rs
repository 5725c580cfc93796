//! Test harness: a Gateway Server on loopback ports, a recording NS, a fixed registry and
//! fixed API keys (the NS and IS are not the GS's; fakes at that edge are fine).

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tern_api::v3;
use tern_cluster::auth::{
    ApiKeyError, ApiKeyVerifier, AuthInfo, Authenticator, ClusterKeys, Entity,
};
use tern_cluster::links::{GsIs, GsNs, LinkResult, NsGs};
use tern_cluster::role::{MetricsRegistry, ReadinessSignal, RoleContext, RoleService, Shutdown};
use tern_events::EventBus;
use tern_gatewayserver::{GatewayServer, GsConfig, GsDeps};
use tokio::sync::{Mutex, mpsc};

pub const UDP_EUI: [u8; 8] = [1, 1, 1, 1, 1, 1, 1, 1];
pub const UDP2_EUI: [u8; 8] = [4, 4, 4, 4, 4, 4, 4, 4];
pub const BS_EUI: [u8; 8] = [0xb8, 0x27, 0xeb, 0xff, 0xfe, 0x61, 0x12, 0x34];
pub const BS_OPEN_EUI: [u8; 8] = [2, 2, 2, 2, 2, 2, 2, 2];
pub const US_EUI: [u8; 8] = [3, 3, 3, 3, 3, 3, 3, 3];
pub const INSTANCE: &str = "gs-test";

/// What the GS told the NS.
pub struct NsRecorder {
    pub uplinks: Mutex<mpsc::UnboundedReceiver<v3::UplinkMessage>>,
    pub acks: Mutex<mpsc::UnboundedReceiver<v3::TxAcknowledgment>>,
    pub connections: Mutex<mpsc::UnboundedReceiver<v3::GatewayConnectionEvent>>,
}

struct TestNs {
    uplinks: mpsc::UnboundedSender<v3::UplinkMessage>,
    acks: mpsc::UnboundedSender<v3::TxAcknowledgment>,
    connections: mpsc::UnboundedSender<v3::GatewayConnectionEvent>,
}

#[async_trait]
impl GsNs for TestNs {
    async fn handle_uplink(&self, uplink: v3::UplinkMessage) -> LinkResult<()> {
        let _ = self.uplinks.send(uplink);
        Ok(())
    }
    async fn report_tx_ack(&self, ack: v3::TxAcknowledgment) -> LinkResult<()> {
        let _ = self.acks.send(ack);
        Ok(())
    }
    async fn report_gateway_connection(&self, event: v3::GatewayConnectionEvent) -> LinkResult<()> {
        let _ = self.connections.send(event);
        Ok(())
    }
}

struct TestRegistry(Vec<v3::Gateway>);

#[async_trait]
impl GsIs for TestRegistry {
    async fn gateway_by_eui(&self, eui: [u8; 8]) -> LinkResult<Option<v3::Gateway>> {
        Ok(self
            .0
            .iter()
            .find(|g| g.ids.as_ref().is_some_and(|i| i.eui == eui))
            .cloned())
    }
}

#[derive(Debug)]
struct TestKeys;

#[async_trait]
impl ApiKeyVerifier for TestKeys {
    async fn verify(&self, api_key: &str) -> Result<AuthInfo, ApiKeyError> {
        let gw = |id: &str, rights: &[&str]| {
            Ok(AuthInfo::new(
                Entity::Gateway(id.into()),
                rights.iter().copied(),
            ))
        };
        match api_key {
            "KEY-BS" => gw("gw-bs", &["gateway:link"]),
            "KEY-BS-INFO" => gw("gw-bs", &["gateway:info"]),
            "KEY-UDP" => gw("gw-udp", &["gateway:link", "gateway:status"]),
            _ => Err(ApiKeyError::Unknown),
        }
    }

    async fn rights_on(&self, _: &AuthInfo, _: &Entity) -> Result<BTreeSet<String>, ApiKeyError> {
        Ok(BTreeSet::new())
    }
}

fn gateway(id: &str, eui: [u8; 8], plan: &str, require_auth: bool) -> v3::Gateway {
    v3::Gateway {
        ids: Some(v3::GatewayIdentifiers {
            gateway_id: id.into(),
            eui: eui.to_vec(),
        }),
        frequency_plan_ids: vec![plan.into()],
        enforce_duty_cycle: true,
        require_authenticated_connection: require_auth,
        antennas: vec![v3::GatewayAntenna {
            gain: 2.0,
            location: None,
        }],
        ..Default::default()
    }
}

pub struct Harness {
    pub gs: GatewayServer,
    pub ns: Arc<NsRecorder>,
    pub link: Arc<dyn NsGs>,
    pub udp: SocketAddr,
    pub ws: SocketAddr,
    pub metrics: MetricsRegistry,
    pub events: EventBus,
}

/// A config listening on free loopback ports.
pub fn config() -> GsConfig {
    let mut c = GsConfig::default();
    c.udp.listen = "127.0.0.1:0".parse().unwrap();
    c.basic_station.listen = "127.0.0.1:0".parse().unwrap();
    c
}

pub async fn start(config: GsConfig) -> Harness {
    let (up_tx, up_rx) = mpsc::unbounded_channel();
    let (ack_tx, ack_rx) = mpsc::unbounded_channel();
    let (conn_tx, conn_rx) = mpsc::unbounded_channel();
    let registry = TestRegistry(vec![
        gateway("gw-udp", UDP_EUI, "EU_863_870", false),
        gateway("gw-udp-2", UDP2_EUI, "EU_863_870", false),
        gateway("gw-bs", BS_EUI, "EU_863_870", true),
        gateway("gw-bs-open", BS_OPEN_EUI, "EU_863_870", false),
        gateway("gw-us", US_EUI, "US_902_928_FSB_2", false),
    ]);
    let events = EventBus::in_process(256);
    let gs = GatewayServer::new(GsDeps {
        config,
        ns: Arc::new(TestNs {
            uplinks: up_tx,
            acks: ack_tx,
            connections: conn_tx,
        }),
        registry: Arc::new(registry),
        api_keys: Arc::new(TestKeys),
        events: events.clone(),
        instance_id: INSTANCE.into(),
        auth: Authenticator::new(
            ClusterKeys::new(&["a-cluster-key-of-at-least-32-chars!!"]).unwrap(),
        ),
    });
    let metrics = MetricsRegistry::new();
    let ctx = RoleContext {
        data_dir: std::env::temp_dir(),
        metrics: metrics.clone(),
        shutdown: Shutdown::new(),
        readiness: ReadinessSignal::new(),
    };
    assert!(!gs.readiness().is_ready());
    gs.start(&ctx).await.unwrap();
    assert!(gs.readiness().is_ready());
    let (udp, ws) = gs.local_addrs().unwrap();
    let link = gs.ns_link();
    Harness {
        gs,
        ns: Arc::new(NsRecorder {
            uplinks: Mutex::new(up_rx),
            acks: Mutex::new(ack_rx),
            connections: Mutex::new(conn_rx),
        }),
        link,
        udp,
        ws,
        metrics,
        events,
    }
}

pub async fn recv<T>(rx: &Mutex<mpsc::UnboundedReceiver<T>>) -> T {
    tokio::time::timeout(Duration::from_secs(5), rx.lock().await.recv())
        .await
        .expect("timed out waiting for the GS")
        .expect("channel open")
}

/// Nothing arrives within 300 ms.
pub async fn nothing<T: std::fmt::Debug>(rx: &Mutex<mpsc::UnboundedReceiver<T>>) {
    if let Ok(Some(v)) =
        tokio::time::timeout(Duration::from_millis(300), rx.lock().await.recv()).await
    {
        panic!("unexpected: {v:?}");
    }
}

impl Harness {
    /// The Prometheus text of the process registry.
    pub fn metrics_text(&self) -> String {
        let mut s = String::new();
        self.metrics
            .with_registry(|r| prometheus_client::encoding::text::encode(&mut s, r))
            .unwrap();
        s
    }

    /// The value of one sample line, 0 when absent.
    pub fn metric(&self, line_prefix: &str) -> f64 {
        self.metrics_text()
            .lines()
            .find(|l| l.starts_with(line_prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }
}

/// A class A downlink answering `token`.
pub fn class_a(token: Vec<u8>, payload: &[u8], id: &str) -> v3::DownlinkMessage {
    let lora = |sf: u32| v3::DataRate {
        modulation: Some(v3::data_rate::Modulation::Lora(v3::LoRaDataRate {
            bandwidth: 125_000,
            spreading_factor: sf,
            coding_rate: "4/5".into(),
        })),
    };
    v3::DownlinkMessage {
        raw_payload: payload.to_vec(),
        correlation_ids: vec![format!("test:{id}")],
        request: Some(v3::TxRequest {
            class: v3::DeviceClass::ClassA as i32,
            downlink_paths: vec![v3::DownlinkPath {
                path: Some(v3::downlink_path::Path::UplinkToken(token)),
            }],
            rx1_delay: 1,
            rx1_data_rate: Some(lora(7)),
            rx1_frequency: 868_100_000,
            rx2_data_rate: Some(lora(12)),
            rx2_frequency: 869_525_000,
            ..Default::default()
        }),
        downlink_id: id.into(),
        end_device_ids: None,
        gateway_server_id: String::new(),
    }
}

/// A class C downlink on the gateway's fixed antenna.
pub fn class_c(gateway_id: &str, payload: &[u8], id: &str) -> v3::DownlinkMessage {
    let mut m = class_a(Vec::new(), payload, id);
    let req = m.request.as_mut().unwrap();
    req.class = v3::DeviceClass::ClassC as i32;
    req.downlink_paths = vec![v3::DownlinkPath {
        path: Some(v3::downlink_path::Path::Fixed(
            v3::GatewayAntennaIdentifiers {
                gateway_ids: Some(v3::GatewayIdentifiers {
                    gateway_id: gateway_id.into(),
                    eui: Vec::new(),
                }),
                antenna_index: 0,
            },
        )),
    }];
    m
}
