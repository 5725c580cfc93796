//! The fan-out point of rendered application messages: the MQTT server, and the integrations
//! (webhooks, pub/sub) that another crate plugs in as [`Sink`]s.

use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::broadcast;

/// What an application message is about; its MQTT topic suffix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TopicKind {
    /// A data uplink: `up`.
    Up,
    /// A join-accept: `join`.
    Join,
    /// A downlink was queued: `down/queued`.
    DownQueued,
    /// A downlink was transmitted: `down/sent`.
    DownSent,
    /// A confirmed downlink was acknowledged: `down/ack`.
    DownAck,
    /// A confirmed downlink was not acknowledged: `down/nack`.
    DownNack,
    /// A downlink could not be transmitted: `down/failed`.
    DownFailed,
    /// Queued downlinks were invalidated and re-encrypted: `down/invalidated`.
    DownInvalidated,
}

impl TopicKind {
    /// Every kind.
    pub const ALL: [TopicKind; 8] = [
        Self::Up,
        Self::Join,
        Self::DownQueued,
        Self::DownSent,
        Self::DownAck,
        Self::DownNack,
        Self::DownFailed,
        Self::DownInvalidated,
    ];

    /// The topic suffix after `v3/{app}/devices/{dev}/`.
    pub fn suffix(self) -> &'static str {
        match self {
            Self::Up => "up",
            Self::Join => "join",
            Self::DownQueued => "down/queued",
            Self::DownSent => "down/sent",
            Self::DownAck => "down/ack",
            Self::DownNack => "down/nack",
            Self::DownFailed => "down/failed",
            Self::DownInvalidated => "down/invalidated",
        }
    }
}

/// One rendered message for an application's integrations.
#[derive(Debug, Clone, PartialEq)]
pub struct AppMessage {
    /// The application.
    pub application_id: String,
    /// The device.
    pub device_id: String,
    /// What it is about.
    pub kind: TopicKind,
    /// The message as JSON (The Things Stack v3 field names).
    pub json: Bytes,
}

impl AppMessage {
    /// The MQTT topic: `v3/{app}/devices/{dev}/{suffix}`.
    pub fn topic(&self) -> String {
        format!(
            "v3/{}/devices/{}/{}",
            self.application_id,
            self.device_id,
            self.kind.suffix()
        )
    }
}

/// A consumer of application messages. `deliver` returns once the message is durably in
/// the sink's hands (persisted for retry, or handed over): only then does the AS
/// acknowledge it to the Network Server. An error keeps it unacknowledged, so the NS
/// resends it after a relink.
#[async_trait]
pub trait Sink: Send + Sync + 'static {
    /// Takes one message.
    async fn deliver(&self, message: Arc<AppMessage>) -> anyhow::Result<()>;
}

/// Hands each message to every sink, and to every broadcast subscriber.
pub struct Fanout {
    sinks: RwLock<Vec<Arc<dyn Sink>>>,
    broadcast: broadcast::Sender<Arc<AppMessage>>,
}

impl Fanout {
    /// A fan-out whose broadcast keeps `capacity` messages for slow receivers.
    pub fn new(capacity: usize) -> Self {
        Self {
            sinks: RwLock::new(Vec::new()),
            broadcast: broadcast::Sender::new(capacity.max(1)),
        }
    }

    /// Adds a durable sink.
    pub fn add_sink(&self, sink: Arc<dyn Sink>) {
        self.sinks.write().expect("sinks lock").push(sink);
    }

    /// A receiver of every message from now on (best effort: a lagging receiver misses
    /// messages; use a [`Sink`] for durable delivery).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<AppMessage>> {
        self.broadcast.subscribe()
    }

    /// Delivers to every sink (all must accept), then broadcasts.
    pub async fn publish(&self, message: AppMessage) -> anyhow::Result<()> {
        let message = Arc::new(message);
        let sinks = self.sinks.read().expect("sinks lock").clone();
        for sink in sinks {
            sink.deliver(message.clone()).await?;
        }
        // No receivers is fine: nobody listens.
        let _ = self.broadcast.send(message);
        Ok(())
    }
}
