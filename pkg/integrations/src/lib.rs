//! Application Server integrations: durable webhooks and pub/sub (NATS, MQTT).
//!
//! The AS renders every upstream message as The Things Stack v3 JSON and hands it to
//! [`Integrations::publish`], which only enqueues. Webhook deliveries are persisted in the
//! store before they are attempted, retried with exponential backoff and jitter for the
//! retry horizon, kept in order per device, and resumed after a restart. Pub/sub
//! integrations publish to an external NATS server or MQTT broker and subscribe to downlink
//! push/replace, which, like the webhook downlink routes, go to a [`DownlinkSink`].

#![warn(missing_docs)]

mod config;
mod grpc;
mod http;
mod metrics;
mod pubsub;
pub mod records;
mod webhook;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use prometheus_client::registry::Registry;
use tern_api::v3;
use tern_cluster::auth::{ApiKeyVerifier, Authenticator};
use tern_cluster::role::Shutdown;
use tern_store::Store;
use tokio::sync::mpsc;

pub use config::IntegrationsConfig;
pub use grpc::{RIGHT_INTEGRATIONS, RIGHT_TRAFFIC_DOWN_WRITE};

use metrics::Metrics;

/// The type of an upstream message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum UpstreamKind {
    /// A data uplink (`uplink_message`).
    Uplink,
    /// A join-accept (`join_accept`).
    JoinAccept,
    /// A downlink was queued (`downlink_queued`).
    DownlinkQueued,
    /// A downlink was transmitted (`downlink_sent`).
    DownlinkSent,
    /// A confirmed downlink was acknowledged (`downlink_ack`).
    DownlinkAck,
    /// A confirmed downlink was not acknowledged (`downlink_nack`).
    DownlinkNack,
    /// A downlink could not be transmitted (`downlink_failed`).
    DownlinkFailed,
    /// Queued downlinks were invalidated (`downlink_queue_invalidated`).
    DownlinkQueueInvalidated,
}

impl UpstreamKind {
    /// Every kind.
    pub const ALL: [UpstreamKind; 8] = [
        Self::Uplink,
        Self::JoinAccept,
        Self::DownlinkQueued,
        Self::DownlinkSent,
        Self::DownlinkAck,
        Self::DownlinkNack,
        Self::DownlinkFailed,
        Self::DownlinkQueueInvalidated,
    ];

    /// The field name of the message in The Things Stack v3 JSON (`uplink_message`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Uplink => "uplink_message",
            Self::JoinAccept => "join_accept",
            Self::DownlinkQueued => "downlink_queued",
            Self::DownlinkSent => "downlink_sent",
            Self::DownlinkAck => "downlink_ack",
            Self::DownlinkNack => "downlink_nack",
            Self::DownlinkFailed => "downlink_failed",
            Self::DownlinkQueueInvalidated => "downlink_queue_invalidated",
        }
    }

    /// The kind named by [`UpstreamKind::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// The topic suffix of the MQTT server's layout (`up`, `join`, `down/queued`, ...).
    pub fn topic_suffix(self) -> &'static str {
        match self {
            Self::Uplink => "up",
            Self::JoinAccept => "join",
            Self::DownlinkQueued => "down/queued",
            Self::DownlinkSent => "down/sent",
            Self::DownlinkAck => "down/ack",
            Self::DownlinkNack => "down/nack",
            Self::DownlinkFailed => "down/failed",
            Self::DownlinkQueueInvalidated => "down/invalidated",
        }
    }

    /// The webhook's path for this kind, when the webhook sends it.
    pub fn webhook_path(self, webhook: &v3::ApplicationWebhook) -> Option<&str> {
        let message = match self {
            Self::Uplink => &webhook.uplink_message,
            Self::JoinAccept => &webhook.join_accept,
            Self::DownlinkQueued => &webhook.downlink_queued,
            Self::DownlinkSent => &webhook.downlink_sent,
            Self::DownlinkAck => &webhook.downlink_ack,
            Self::DownlinkNack => &webhook.downlink_nack,
            Self::DownlinkFailed => &webhook.downlink_failed,
            Self::DownlinkQueueInvalidated => &webhook.downlink_queue_invalidated,
        };
        message.as_ref().map(|m| m.path.as_str())
    }
}

/// An upstream message for integrations, rendered by the AS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// The application.
    pub application_id: String,
    /// The device.
    pub device_id: String,
    /// What it is.
    pub kind: UpstreamKind,
    /// The message as The Things Stack v3 JSON.
    pub payload: Bytes,
    /// When the AS received it.
    pub received_at: SystemTime,
}

/// Where downlinks from integrations go: the AS's downlink queue.
#[async_trait]
pub trait DownlinkSink: Send + Sync + std::fmt::Debug {
    /// Pushes (or, with `replace`, replaces the queue with) the downlinks of `body`,
    /// `{"downlinks":[...]}` in The Things Stack v3 JSON.
    async fn push(
        &self,
        application_id: &str,
        device_id: &str,
        replace: bool,
        body: serde_json::Value,
    ) -> Result<(), tonic::Status>;
}

/// What [`Integrations::new`] needs.
#[derive(Debug, Clone)]
pub struct IntegrationsDeps {
    /// Delivery settings.
    pub config: IntegrationsConfig,
    /// Where configurations and the webhook outbox live.
    pub store: Store,
    /// Verifies the API keys of webhook downlink requests.
    pub api_keys: Arc<dyn ApiKeyVerifier>,
    /// Where downlinks from integrations go.
    pub downlinks: Arc<dyn DownlinkSink>,
    /// The public base URL of the HTTP server (e.g. `https://tern.example.com`), for the
    /// `X-Downlink-Push`/`X-Downlink-Replace` URLs sent with webhook requests.
    pub public_url: String,
}

/// Webhooks and pub/sub integrations of the Application Server. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Integrations {
    inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub config: IntegrationsConfig,
    pub store: Store,
    pub api_keys: Arc<dyn ApiKeyVerifier>,
    pub downlinks: Arc<dyn DownlinkSink>,
    pub public_url: String,
    pub metrics: Metrics,
    pub http: reqwest::Client,
    /// Webhook configurations by application, then ID.
    pub webhooks: RwLock<HashMap<String, HashMap<String, Arc<v3::ApplicationWebhook>>>>,
    /// Running pub/sub integrations by application, then ID.
    pub pubsubs: RwLock<HashMap<String, HashMap<String, pubsub::Handle>>>,
    /// Messages waiting to be persisted in the webhook outbox.
    pub intake: mpsc::Sender<Upstream>,
    intake_rx: Mutex<Option<mpsc::Receiver<Upstream>>>,
    /// Running webhook workers by `{app}/{webhook}`.
    pub workers: Mutex<HashMap<String, webhook::WorkerHandle>>,
    /// Set by `start`.
    pub shutdown: Mutex<Option<Shutdown>>,
    /// The last outbox sequence number handed out.
    pub sequence: std::sync::atomic::AtomicU64,
}

impl Integrations {
    /// Builds the integrations; nothing runs until [`Integrations::start`].
    pub fn new(deps: IntegrationsDeps) -> Result<Self, BuildError> {
        deps.config
            .validate()
            .map_err(|e| BuildError(format!("integrations config: {e}")))?;
        let http = reqwest::Client::builder()
            .timeout(deps.config.request_timeout)
            .user_agent(concat!("tern-integrations/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| BuildError(format!("webhook HTTP client: {e}")))?;
        let (intake, intake_rx) = mpsc::channel(deps.config.queue_size);
        Ok(Self {
            inner: Arc::new(Inner {
                config: deps.config,
                store: deps.store,
                api_keys: deps.api_keys,
                downlinks: deps.downlinks,
                public_url: deps.public_url.trim_end_matches('/').to_owned(),
                metrics: Metrics::default(),
                http,
                webhooks: RwLock::default(),
                pubsubs: RwLock::default(),
                intake,
                intake_rx: Mutex::new(Some(intake_rx)),
                workers: Mutex::default(),
                shutdown: Mutex::default(),
                sequence: std::sync::atomic::AtomicU64::new(0),
            }),
        })
    }

    /// Loads the configurations, resumes pending webhook deliveries and connects the pub/sub
    /// integrations; background work ends when `shutdown` fires. Call once.
    pub async fn start(&self, shutdown: Shutdown) -> Result<(), tern_store::StoreError> {
        let rx = self
            .inner
            .intake_rx
            .lock()
            .expect("intake lock")
            .take()
            .ok_or_else(|| tern_store::StoreError::InvalidArgument {
                field: "integrations",
                reason: "started twice".into(),
            })?;
        *self.inner.shutdown.lock().expect("shutdown lock") = Some(shutdown.clone());
        webhook::load(&self.inner).await?;
        pubsub::load(&self.inner).await?;
        tokio::spawn(webhook::reload_loop(self.inner.clone(), shutdown.clone()));
        tokio::spawn(webhook::persist_loop(self.inner.clone(), rx, shutdown));
        Ok(())
    }

    /// Hands an upstream message to the integrations of its application. Never waits: the
    /// message is queued, or dropped and counted when the queues are full.
    pub fn publish(&self, up: &Upstream) {
        pubsub::publish(&self.inner, up);
        webhook::enqueue(&self.inner, up);
    }

    /// Registers the metrics (the lead puts them under the AS prefix).
    pub fn register_metrics(&self, registry: &mut Registry) {
        self.inner.metrics.register(registry);
    }

    /// Adds the `ApplicationWebhookRegistry` and `ApplicationPubSubRegistry` services, behind
    /// `auth`'s layer.
    pub fn grpc_services(&self, routes: &mut tonic::service::RoutesBuilder, auth: &Authenticator) {
        grpc::add_to(self.inner.clone(), routes, auth);
    }

    /// The webhook downlink routes
    /// (`POST /api/v3/as/applications/{app}/webhooks/{wh}/devices/{dev}/down/push|replace`).
    pub fn router(&self) -> axum::Router {
        http::router(self.inner.clone())
    }

    /// Creates or replaces a webhook (health and creation time are kept) and returns it as
    /// stored. The gRPC `Set` calls this after checking rights.
    pub async fn set_webhook(
        &self,
        webhook: v3::ApplicationWebhook,
    ) -> Result<v3::ApplicationWebhook, tonic::Status> {
        webhook::set(&self.inner, webhook).await
    }

    /// A webhook with its health and pending deliveries.
    pub async fn get_webhook(
        &self,
        application_id: &str,
        webhook_id: &str,
    ) -> Result<v3::ApplicationWebhook, tonic::Status> {
        webhook::get(&self.inner, application_id, webhook_id).await
    }

    /// An application's webhooks, with health and pending deliveries.
    pub async fn list_webhooks(
        &self,
        application_id: &str,
    ) -> Result<Vec<v3::ApplicationWebhook>, tonic::Status> {
        webhook::list(&self.inner, application_id).await
    }

    /// Deletes a webhook and its pending deliveries.
    pub async fn delete_webhook(
        &self,
        application_id: &str,
        webhook_id: &str,
    ) -> Result<(), tonic::Status> {
        webhook::delete(&self.inner, application_id, webhook_id).await
    }

    /// Creates or replaces a pub/sub integration and (re)connects it.
    pub async fn set_pubsub(
        &self,
        pubsub: v3::ApplicationPubSub,
    ) -> Result<v3::ApplicationPubSub, tonic::Status> {
        pubsub::set(&self.inner, pubsub).await
    }

    /// A pub/sub integration.
    pub async fn get_pubsub(
        &self,
        application_id: &str,
        pubsub_id: &str,
    ) -> Result<v3::ApplicationPubSub, tonic::Status> {
        pubsub::get(&self.inner, application_id, pubsub_id).await
    }

    /// An application's pub/sub integrations.
    pub async fn list_pubsubs(
        &self,
        application_id: &str,
    ) -> Result<Vec<v3::ApplicationPubSub>, tonic::Status> {
        pubsub::list(&self.inner, application_id).await
    }

    /// Deletes a pub/sub integration and disconnects it.
    pub async fn delete_pubsub(
        &self,
        application_id: &str,
        pubsub_id: &str,
    ) -> Result<(), tonic::Status> {
        pubsub::delete(&self.inner, application_id, pubsub_id).await
    }
}

/// Why [`Integrations::new`] failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BuildError(pub String);

/// Converts a store error to a gRPC status.
pub(crate) fn store_status(e: tern_store::StoreError) -> tonic::Status {
    if e.is_not_found() {
        tonic::Status::not_found(e.to_string())
    } else if e.is_already_exists() {
        tonic::Status::already_exists(e.to_string())
    } else {
        tonic::Status::unavailable(format!("store: {e}"))
    }
}

/// Milliseconds since the Unix epoch.
pub(crate) fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A protobuf timestamp.
pub(crate) fn timestamp(t: SystemTime) -> tern_api::Timestamp {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    tern_api::Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}
