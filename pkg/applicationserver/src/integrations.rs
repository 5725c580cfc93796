//! The AS's side of webhooks and pub/sub ([`tern_integrations`]): every rendered message goes
//! to the integrations, and their downlinks come back into the AS's downlink queue.

use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use tern_api::v3;
use tern_integrations::{DownlinkSink, Integrations, Upstream, UpstreamKind};

use crate::core::{AsCore, QueueOp};
use crate::fanout::{AppMessage, Sink, TopicKind};

/// Hands every message of the AS to the integrations (which queue it and never wait).
pub(crate) struct IntegrationsSink(pub(crate) Integrations);

#[async_trait]
impl Sink for IntegrationsSink {
    async fn deliver(&self, message: Arc<AppMessage>) -> anyhow::Result<()> {
        let kind = match message.kind {
            TopicKind::Up => UpstreamKind::Uplink,
            TopicKind::Join => UpstreamKind::JoinAccept,
            TopicKind::DownQueued => UpstreamKind::DownlinkQueued,
            TopicKind::DownSent => UpstreamKind::DownlinkSent,
            TopicKind::DownAck => UpstreamKind::DownlinkAck,
            TopicKind::DownNack => UpstreamKind::DownlinkNack,
            TopicKind::DownFailed => UpstreamKind::DownlinkFailed,
            TopicKind::DownInvalidated => UpstreamKind::DownlinkQueueInvalidated,
        };
        self.0.publish(&Upstream {
            application_id: message.application_id.clone(),
            device_id: message.device_id.clone(),
            kind,
            payload: message.json.clone(),
            received_at: SystemTime::now(),
        });
        Ok(())
    }
}

/// Puts downlinks from webhooks and pub/sub into the AS's queue, like MQTT `down/push`.
pub(crate) struct CoreDownlinks(pub(crate) Arc<AsCore>);

impl std::fmt::Debug for CoreDownlinks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CoreDownlinks")
    }
}

#[async_trait]
impl DownlinkSink for CoreDownlinks {
    async fn push(
        &self,
        application_id: &str,
        device_id: &str,
        replace: bool,
        body: serde_json::Value,
    ) -> Result<(), tonic::Status> {
        let bytes = serde_json::to_vec(&body)
            .map_err(|e| tonic::Status::invalid_argument(format!("downlinks: {e}")))?;
        let downlinks =
            crate::render::parse_downlinks(&bytes).map_err(tonic::Status::invalid_argument)?;
        let ids = v3::EndDeviceIdentifiers::new(application_id, device_id);
        let op = if replace {
            QueueOp::Replace
        } else {
            QueueOp::Push
        };
        self.0.queue(&ids, op, downlinks).await
    }
}
