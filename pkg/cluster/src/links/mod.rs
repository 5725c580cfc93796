//! One trait per link between roles, each with two implementations.
//!
//! - In-process: the serving role itself, as `Arc<dyn Trait>`. Calls are plain async calls
//!   on the prost structs; nothing is encoded.
//! - gRPC: [`grpc`]'s clients, which implement the same traits over a tonic channel that
//!   carries the cluster key (or, for an external Application Server, an API key).
//!
//! In a cluster, routers pick the peer per call: [`grpc::DirectoryGsNs`] sends uplinks to
//! the Network Server owning their shard, [`DirectoryNsGs`] sends downlinks to the Gateway
//! Server their gateway is connected to.
//!
//! `tern start` picks one per link from the configuration and the started roles; the role
//! code only ever sees the trait. Errors are [`tonic::Status`] in both cases, so a caller
//! handles a refused call the same way wherever the other role runs.
//!
//! To serve a link over gRPC, a role wraps its trait object into the generated tonic service
//! behind the authentication layer, e.g.
//! `auth.layer().layer(GsNsServer::new(grpc::GsNsService(ns)))`.

pub mod grpc;
mod ns_gs;

pub use ns_gs::DirectoryNsGs;

use std::pin::Pin;

use async_trait::async_trait;
use tern_api::v3;
use tokio_stream::Stream;
use tonic::Status;

use crate::auth::Caller;

/// The result of a call on a link.
pub type LinkResult<T> = Result<T, Status>;

/// A boxed stream, as the AS↔NS link uses in both directions.
pub type BoxStream<T> = Pin<Box<dyn Stream<Item = T> + Send + 'static>>;

/// What the Network Server offers the Gateway Server.
#[async_trait]
pub trait GsNs: Send + Sync + 'static {
    /// Hands over one received frame with its rx metadata.
    async fn handle_uplink(&self, uplink: v3::UplinkMessage) -> LinkResult<()>;
    /// Reports a gateway's answer to a downlink transmission.
    async fn report_tx_ack(&self, ack: v3::TxAcknowledgment) -> LinkResult<()>;
    /// Reports that a gateway connected, disconnected or lost its downlink path.
    async fn report_gateway_connection(&self, event: v3::GatewayConnectionEvent) -> LinkResult<()>;
}

/// What the Gateway Server offers the Network Server.
#[async_trait]
pub trait NsGs: Send + Sync + 'static {
    /// Schedules a downlink on one of its paths, or says why none worked.
    async fn schedule_downlink(
        &self,
        downlink: v3::DownlinkMessage,
    ) -> LinkResult<v3::ScheduleDownlinkResponse>;
}

/// What the Identity Server offers the Gateway Server: the registry reads of a gateway
/// connection. The GS caches the answers.
#[async_trait]
pub trait GsIs: Send + Sync + 'static {
    /// The registered gateway with this EUI (8 bytes, display order), or `None`.
    async fn gateway_by_eui(&self, eui: [u8; 8]) -> LinkResult<Option<v3::Gateway>>;
}

/// What the Join Server offers the Network Server.
#[async_trait]
pub trait NsJs: Send + Sync + 'static {
    /// Handles a join-request: the join-accept, and the session keys wrapped for NS and AS.
    async fn handle_join(&self, request: v3::JoinRequest) -> LinkResult<v3::JoinResponse>;
}

/// What the Join Server offers the Application Server.
#[async_trait]
pub trait AsJs: Send + Sync + 'static {
    /// The AppSKey of a session, wrapped for the asking AS.
    async fn get_app_s_key(
        &self,
        request: v3::SessionKeyRequest,
    ) -> LinkResult<v3::AppSKeyResponse>;
}

/// What the Network Server offers the Application Server: the link.
#[async_trait]
pub trait AsNs: Send + Sync + 'static {
    /// Opens the link of `caller`: `requests` is what the AS sends (first a `LinkStart`),
    /// the returned stream is what the NS sends. The NS checks the caller may link every
    /// application named in `LinkStart`.
    async fn link_application(
        &self,
        caller: Caller,
        requests: BoxStream<LinkResult<v3::LinkRequest>>,
    ) -> LinkResult<BoxStream<LinkResult<v3::LinkResponse>>>;

    /// Lists a device's downlink queue, as encrypted by the AS.
    async fn downlink_queue_list(
        &self,
        caller: Caller,
        device: v3::EndDeviceIdentifiers,
    ) -> LinkResult<v3::ApplicationDownlinks>;
}
