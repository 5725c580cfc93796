//! Every AS of a cluster serves every MQTT client of an application.
//!
//! An AS receives only the messages of the Network Server it links to, yet a client may be
//! connected to any AS (e.g. behind a load balancer). With a NATS event bus, every message
//! an AS renders for MQTT is also published on `<prefix>.as.mqtt.<application>`, tagged
//! with the producing instance; every AS delivers what OTHER instances published to its own
//! MQTT clients (same topic, payload and QoS rules). Each client thus sees every message
//! once, whichever AS it is connected to. Integrations (webhooks, pub/sub) run only on the
//! producing AS, so they never deliver twice. Without NATS there is no relay.
//!
//! Best effort, like MQTT itself: a message that does not fit in the publish queue, or that
//! NATS loses, is counted in `tern_as_cluster_mqtt_dropped_total{reason}`.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tern_cluster::role::Shutdown;
use tern_events::{EventBus, RawMessage, subject_token};
use tokio::sync::mpsc;
use tracing::warn;

use crate::fanout::{AppMessage, Sink, TopicKind};

/// Header: the instance ID of the AS that produced the message.
const ORIGIN: &str = "Tern-Origin";
/// Header: the application ID (the subject token is escaped).
const APPLICATION: &str = "Tern-Application";
/// Header: the device ID.
const DEVICE: &str = "Tern-Device";
/// Header: the topic suffix (`up`, `join`, `down/sent`, ...).
const KIND: &str = "Tern-Topic-Kind";
/// Messages waiting for the NATS client, beyond which new ones are dropped.
const QUEUE: usize = 4096;

/// The metrics of the relay.
#[derive(Debug, Clone, Default)]
pub struct RelayMetrics {
    /// Messages published for the other instances.
    pub published: Counter,
    /// Messages of other instances delivered to this AS's MQTT clients.
    pub received: Counter,
    /// Messages not relayed, by reason.
    pub dropped: Family<Vec<(&'static str, String)>, Counter>,
}

impl RelayMetrics {
    fn drop_one(&self, reason: &str) {
        self.dropped
            .get_or_create(&vec![("reason", reason.to_owned())])
            .inc();
    }

    /// Registers the metrics.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "cluster_mqtt_published",
            "MQTT messages published for the other Application Servers of the cluster",
            self.published.clone(),
        );
        registry.register(
            "cluster_mqtt_received",
            "MQTT messages of other Application Servers delivered to this one's clients",
            self.received.clone(),
        );
        registry.register(
            "cluster_mqtt_dropped",
            "MQTT messages not relayed between Application Servers, by reason",
            self.dropped.clone(),
        );
    }
}

/// Shares MQTT messages with the other Application Servers through NATS.
pub struct MqttRelay {
    bus: EventBus,
    instance_id: String,
    local: Arc<dyn Sink>,
    tx: mpsc::Sender<Arc<AppMessage>>,
    rx: Mutex<Option<mpsc::Receiver<Arc<AppMessage>>>>,
    metrics: RelayMetrics,
}

impl std::fmt::Debug for MqttRelay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttRelay")
            .field("instance_id", &self.instance_id)
            .finish_non_exhaustive()
    }
}

impl MqttRelay {
    /// A relay for AS `instance_id` delivering other instances' messages to `local` (the
    /// MQTT server); `None` unless `bus` is NATS. Instance IDs must differ per AS.
    pub fn new(bus: &EventBus, instance_id: String, local: Arc<dyn Sink>) -> Option<Arc<Self>> {
        bus.subject_prefix()?;
        let (tx, rx) = mpsc::channel(QUEUE);
        Some(Arc::new(Self {
            bus: bus.clone(),
            instance_id,
            local,
            tx,
            rx: Mutex::new(Some(rx)),
            metrics: RelayMetrics::default(),
        }))
    }

    /// The relay's metrics.
    pub fn metrics(&self) -> &RelayMetrics {
        &self.metrics
    }

    /// Subscribes to the other instances' messages (returning once subscribed) and starts
    /// the publisher and the receiver, both ending at `shutdown`. Once only.
    pub async fn start(self: &Arc<Self>, shutdown: Shutdown) -> anyhow::Result<()> {
        let Some(mut rx) = self.rx.lock().expect("relay lock").take() else {
            anyhow::bail!("the MQTT relay is already started");
        };
        let mut sub = self.bus.subscribe_raw("as.mqtt.>").await.map_err(|e| {
            anyhow::anyhow!("relaying MQTT messages between the cluster's ASes: {e}")
        })?;
        // One publisher keeps each application's messages in the order they were rendered.
        let relay = self.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            loop {
                let message = tokio::select! {
                    m = rx.recv() => match m { Some(m) => m, None => return },
                    () = stop.wait() => return,
                };
                relay.publish(&message).await;
            }
        });
        let relay = self.clone();
        tokio::spawn(async move {
            loop {
                let message = tokio::select! {
                    m = sub.recv() => match m { Some(m) => m, None => return },
                    () = shutdown.wait() => return,
                };
                relay.receive(message).await;
            }
        });
        Ok(())
    }

    async fn publish(&self, message: &AppMessage) {
        let subject = format!("as.mqtt.{}", subject_token(&message.application_id));
        let headers = [
            (ORIGIN, self.instance_id.as_str()),
            (APPLICATION, message.application_id.as_str()),
            (DEVICE, message.device_id.as_str()),
            (KIND, message.kind.suffix()),
        ];
        match self
            .bus
            .publish_raw(&subject, &headers, message.json.clone())
            .await
        {
            Ok(()) => {
                self.metrics.published.inc();
            }
            Err(e) => {
                self.metrics.drop_one("publish_failed");
                warn!(error = %e, "an MQTT message was not shared with the cluster");
            }
        }
    }

    async fn receive(&self, message: RawMessage) {
        match decode(&message) {
            // This instance's own messages went to its clients already.
            Ok((origin, _)) if origin == self.instance_id => {}
            Ok((_, app_message)) => {
                self.metrics.received.inc();
                // The MQTT server never fails a delivery (slow clients are kicked).
                let _ = self.local.deliver(Arc::new(app_message)).await;
            }
            Err(reason) => {
                self.metrics.drop_one(reason);
                warn!(subject = %message.subject, reason, "an MQTT message from the cluster was dropped");
            }
        }
    }
}

/// The producing instance and the message, or the metric reason it is malformed.
fn decode(message: &RawMessage) -> Result<(&str, AppMessage), &'static str> {
    let origin = message.header(ORIGIN).ok_or("no_origin")?;
    let application_id = message.header(APPLICATION).ok_or("no_application")?;
    let device_id = message.header(DEVICE).ok_or("no_device")?;
    let kind = message.header(KIND).ok_or("no_kind")?;
    let kind = TopicKind::ALL
        .into_iter()
        .find(|k| k.suffix() == kind)
        .ok_or("unknown_kind")?;
    if application_id.is_empty() || application_id.contains('/') {
        return Err("bad_application");
    }
    if device_id.is_empty() || device_id.contains('/') {
        return Err("bad_device");
    }
    Ok((
        origin,
        AppMessage {
            application_id: application_id.to_owned(),
            device_id: device_id.to_owned(),
            kind,
            json: message.payload.clone(),
        },
    ))
}

#[async_trait]
impl Sink for MqttRelay {
    /// Queues the message for the other instances; never waits (a full queue drops it).
    async fn deliver(&self, message: Arc<AppMessage>) -> anyhow::Result<()> {
        match self.tx.try_send(message) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => self.metrics.drop_one("queue_full"),
            Err(mpsc::error::TrySendError::Closed(_)) => self.metrics.drop_one("stopped"),
        }
        Ok(())
    }
}
