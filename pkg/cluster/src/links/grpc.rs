//! The gRPC side of the links: clients that implement the link traits over a channel, and
//! adapters that serve a link trait object as the generated tonic service.
//!
//! Every served link requires a cluster caller, except the AS↔NS link, which also admits an
//! application API key with `application:link` for an Application Server outside the
//! cluster: the NS never needs to reach the AS, the AS opens the stream.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use pbjson_types::Empty;
use tern_api::v3;
use tokio_stream::StreamExt;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status, Streaming};

use super::{AsJs, AsNs, BoxStream, GsIs, GsNs, LinkResult, NsGs, NsJs};
use crate::auth::{AuthError, CallCredentials, Caller};
use crate::directory::{PeerDirectory, PeerRole};
use crate::shard;

/// A channel to a peer that sends credentials on every call.
pub type AuthChannel = InterceptedService<Channel, CallCredentials>;

/// How long a connection attempt to a peer may take before the call fails `UNAVAILABLE`.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A lazily connected channel to `address` (`http://host:port`), carrying `credentials`.
///
/// Nothing is dialled until the first call, so a process starts even when its peers do not
/// run yet; a call to a peer that is down fails with `UNAVAILABLE`.
pub fn channel(address: &str, credentials: CallCredentials) -> Result<AuthChannel, Status> {
    let endpoint = Endpoint::from_shared(address.to_owned())
        .map_err(|e| Status::invalid_argument(format!("peer address {address:?}: {e}")))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true);
    Ok(InterceptedService::new(
        endpoint.connect_lazy(),
        credentials,
    ))
}

fn caller<T>(request: &Request<T>) -> Result<Caller, Status> {
    Caller::of(request).cloned().map_err(Status::from)
}

fn cluster_only<T>(request: &Request<T>, method: &str) -> Result<(), Status> {
    let caller = Caller::of(request).map_err(Status::from)?;
    caller
        .require_cluster(method)
        .map_err(|e: AuthError| Status::from(e))
}

// ---- GS → NS ----

/// Serves a [`GsNs`] implementation as `tern.v3.GsNs`.
pub struct GsNsService(pub Arc<dyn GsNs>);

#[async_trait]
impl v3::gs_ns_server::GsNs for GsNsService {
    async fn handle_uplink(
        &self,
        request: Request<v3::UplinkMessage>,
    ) -> Result<Response<Empty>, Status> {
        cluster_only(&request, "tern.v3.GsNs/HandleUplink")?;
        self.0.handle_uplink(request.into_inner()).await?;
        Ok(Response::new(Empty {}))
    }

    async fn report_tx_ack(
        &self,
        request: Request<v3::TxAcknowledgment>,
    ) -> Result<Response<Empty>, Status> {
        cluster_only(&request, "tern.v3.GsNs/ReportTxAck")?;
        self.0.report_tx_ack(request.into_inner()).await?;
        Ok(Response::new(Empty {}))
    }

    async fn report_gateway_connection(
        &self,
        request: Request<v3::GatewayConnectionEvent>,
    ) -> Result<Response<Empty>, Status> {
        cluster_only(&request, "tern.v3.GsNs/ReportGatewayConnection")?;
        self.0
            .report_gateway_connection(request.into_inner())
            .await?;
        Ok(Response::new(Empty {}))
    }
}

/// A [`GsNs`] over gRPC.
#[derive(Clone)]
pub struct GsNsClient(v3::gs_ns_client::GsNsClient<AuthChannel>);

impl GsNsClient {
    /// A client on `channel`.
    pub fn new(channel: AuthChannel) -> Self {
        Self(v3::gs_ns_client::GsNsClient::new(channel))
    }
}

#[async_trait]
impl GsNs for GsNsClient {
    async fn handle_uplink(&self, uplink: v3::UplinkMessage) -> LinkResult<()> {
        self.0.clone().handle_uplink(uplink).await.map(drop)
    }

    async fn report_tx_ack(&self, ack: v3::TxAcknowledgment) -> LinkResult<()> {
        self.0.clone().report_tx_ack(ack).await.map(drop)
    }

    async fn report_gateway_connection(&self, event: v3::GatewayConnectionEvent) -> LinkResult<()> {
        self.0
            .clone()
            .report_gateway_connection(event)
            .await
            .map(drop)
    }
}

// ---- GS → IS ----

/// A [`GsIs`] over gRPC: the Identity Server's public `GatewayRegistry`, called with the
/// cluster key (the IS serves cluster callers every gateway).
#[derive(Clone)]
pub struct GsIsClient(v3::gateway_registry_client::GatewayRegistryClient<AuthChannel>);

impl GsIsClient {
    /// A client on `channel`.
    pub fn new(channel: AuthChannel) -> Self {
        Self(v3::gateway_registry_client::GatewayRegistryClient::new(
            channel,
        ))
    }
}

#[async_trait]
impl GsIs for GsIsClient {
    async fn gateway_by_eui(&self, eui: [u8; 8]) -> LinkResult<Option<v3::Gateway>> {
        let mut client = self.0.clone();
        let ids = match client
            .get_identifiers_for_eui(v3::GetGatewayIdentifiersForEuiRequest { eui: eui.to_vec() })
            .await
        {
            Ok(ids) => ids.into_inner(),
            Err(status) if status.code() == tonic::Code::NotFound => return Ok(None),
            Err(status) => return Err(status),
        };
        match client
            .get(v3::GetGatewayRequest {
                gateway_ids: Some(ids),
                field_mask: None,
            })
            .await
        {
            Ok(gateway) => Ok(Some(gateway.into_inner())),
            // Deleted between the two calls.
            Err(status) if status.code() == tonic::Code::NotFound => Ok(None),
            Err(status) => Err(status),
        }
    }
}

// ---- NS → GS ----

/// Serves a [`NsGs`] implementation as `tern.v3.NsGs`.
pub struct NsGsService(pub Arc<dyn NsGs>);

#[async_trait]
impl v3::ns_gs_server::NsGs for NsGsService {
    async fn schedule_downlink(
        &self,
        request: Request<v3::DownlinkMessage>,
    ) -> Result<Response<v3::ScheduleDownlinkResponse>, Status> {
        cluster_only(&request, "tern.v3.NsGs/ScheduleDownlink")?;
        self.0
            .schedule_downlink(request.into_inner())
            .await
            .map(Response::new)
    }
}

/// A [`NsGs`] over gRPC.
#[derive(Clone)]
pub struct NsGsClient(v3::ns_gs_client::NsGsClient<AuthChannel>);

impl NsGsClient {
    /// A client on `channel`.
    pub fn new(channel: AuthChannel) -> Self {
        Self(v3::ns_gs_client::NsGsClient::new(channel))
    }
}

#[async_trait]
impl NsGs for NsGsClient {
    async fn schedule_downlink(
        &self,
        downlink: v3::DownlinkMessage,
    ) -> LinkResult<v3::ScheduleDownlinkResponse> {
        self.0
            .clone()
            .schedule_downlink(downlink)
            .await
            .map(Response::into_inner)
    }
}

// ---- NS → JS ----

/// Serves a [`NsJs`] implementation as `tern.v3.NsJs`.
pub struct NsJsService(pub Arc<dyn NsJs>);

#[async_trait]
impl v3::ns_js_server::NsJs for NsJsService {
    async fn handle_join(
        &self,
        request: Request<v3::JoinRequest>,
    ) -> Result<Response<v3::JoinResponse>, Status> {
        cluster_only(&request, "tern.v3.NsJs/HandleJoin")?;
        self.0
            .handle_join(request.into_inner())
            .await
            .map(Response::new)
    }
}

/// A [`NsJs`] over gRPC.
#[derive(Clone)]
pub struct NsJsClient(v3::ns_js_client::NsJsClient<AuthChannel>);

impl NsJsClient {
    /// A client on `channel`.
    pub fn new(channel: AuthChannel) -> Self {
        Self(v3::ns_js_client::NsJsClient::new(channel))
    }
}

#[async_trait]
impl NsJs for NsJsClient {
    async fn handle_join(&self, request: v3::JoinRequest) -> LinkResult<v3::JoinResponse> {
        self.0
            .clone()
            .handle_join(request)
            .await
            .map(Response::into_inner)
    }
}

// ---- AS → JS ----

/// Serves an [`AsJs`] implementation as `tern.v3.AsJs`.
pub struct AsJsService(pub Arc<dyn AsJs>);

#[async_trait]
impl v3::as_js_server::AsJs for AsJsService {
    async fn get_app_s_key(
        &self,
        request: Request<v3::SessionKeyRequest>,
    ) -> Result<Response<v3::AppSKeyResponse>, Status> {
        cluster_only(&request, "tern.v3.AsJs/GetAppSKey")?;
        self.0
            .get_app_s_key(request.into_inner())
            .await
            .map(Response::new)
    }
}

/// An [`AsJs`] over gRPC.
#[derive(Clone)]
pub struct AsJsClient(v3::as_js_client::AsJsClient<AuthChannel>);

impl AsJsClient {
    /// A client on `channel`.
    pub fn new(channel: AuthChannel) -> Self {
        Self(v3::as_js_client::AsJsClient::new(channel))
    }
}

#[async_trait]
impl AsJs for AsJsClient {
    async fn get_app_s_key(
        &self,
        request: v3::SessionKeyRequest,
    ) -> LinkResult<v3::AppSKeyResponse> {
        self.0
            .clone()
            .get_app_s_key(request)
            .await
            .map(Response::into_inner)
    }
}

// ---- AS → NS (the link) ----

/// Serves an [`AsNs`] implementation as `tern.v3.AsNs`, to cluster peers and to API keys.
pub struct AsNsService(pub Arc<dyn AsNs>);

#[async_trait]
impl v3::as_ns_server::AsNs for AsNsService {
    type LinkApplicationStream = BoxStream<LinkResult<v3::LinkResponse>>;

    async fn link_application(
        &self,
        request: Request<Streaming<v3::LinkRequest>>,
    ) -> Result<Response<Self::LinkApplicationStream>, Status> {
        let caller = caller(&request)?;
        let requests: BoxStream<LinkResult<v3::LinkRequest>> = Box::pin(request.into_inner());
        self.0
            .link_application(caller, requests)
            .await
            .map(Response::new)
    }

    async fn downlink_queue_list(
        &self,
        request: Request<v3::EndDeviceIdentifiers>,
    ) -> Result<Response<v3::ApplicationDownlinks>, Status> {
        let caller = caller(&request)?;
        self.0
            .downlink_queue_list(caller, request.into_inner())
            .await
            .map(Response::new)
    }
}

/// An [`AsNs`] over gRPC. The `caller` argument is ignored: over gRPC the caller is whoever
/// the channel's credentials say.
#[derive(Clone)]
pub struct AsNsClient(v3::as_ns_client::AsNsClient<AuthChannel>);

impl AsNsClient {
    /// A client on `channel`.
    pub fn new(channel: AuthChannel) -> Self {
        Self(v3::as_ns_client::AsNsClient::new(channel))
    }
}

#[async_trait]
impl AsNs for AsNsClient {
    async fn link_application(
        &self,
        _caller: Caller,
        requests: BoxStream<LinkResult<v3::LinkRequest>>,
    ) -> LinkResult<BoxStream<LinkResult<v3::LinkResponse>>> {
        // A local error on the AS side ends the outgoing stream; the NS sees the link close.
        // (Forwarded through a channel: tonic's generic streaming request would otherwise
        // make this future's Send bound unprovable.)
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            let mut requests = requests;
            while let Some(Ok(request)) = requests.next().await {
                if tx.send(request).await.is_err() {
                    break;
                }
            }
        });
        let outgoing = tokio_stream::wrappers::ReceiverStream::new(rx);
        let mut client = self.0.clone();
        let responses = client
            .link_application(Request::new(outgoing))
            .await?
            .into_inner();
        Ok(Box::pin(responses))
    }

    async fn downlink_queue_list(
        &self,
        _caller: Caller,
        device: v3::EndDeviceIdentifiers,
    ) -> LinkResult<v3::ApplicationDownlinks> {
        self.0
            .clone()
            .downlink_queue_list(device)
            .await
            .map(Response::into_inner)
    }
}

/// An [`AsNs`] reaching whichever Network Server the peer directory names: the owner of the
/// (first) linked application by rendezvous hashing, so every AS instance of a cluster links
/// the same application to the same NS. The peer is looked up on every link attempt, so a
/// relink after a membership change follows the new owner.
pub struct DirectoryAsNs {
    directory: Arc<dyn PeerDirectory>,
    credentials: CallCredentials,
    clients: Mutex<HashMap<String, AsNsClient>>,
}

impl std::fmt::Debug for DirectoryAsNs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectoryAsNs")
            .field("directory", &self.directory)
            .finish_non_exhaustive()
    }
}

impl DirectoryAsNs {
    /// Links through `directory`, authenticating with `credentials` (a cluster key, or an
    /// application API key for an AS outside the cluster).
    pub fn new(directory: Arc<dyn PeerDirectory>, credentials: CallCredentials) -> Self {
        Self {
            directory,
            credentials,
            clients: Mutex::new(HashMap::new()),
        }
    }

    fn client(&self, shard_key: &str) -> Result<AsNsClient, Status> {
        let peers = self.directory.peers(PeerRole::NetworkServer);
        let peer = shard::by_application(shard_key, &peers).ok_or_else(|| {
            Status::unavailable("no Network Server is known: check cluster.network-server or etcd")
        })?;
        let mut clients = self.clients.lock().expect("client cache lock");
        if let Some(client) = clients.get(&peer.address) {
            return Ok(client.clone());
        }
        let client = AsNsClient::new(channel(&peer.address, self.credentials.clone())?);
        clients.insert(peer.address.clone(), client.clone());
        Ok(client)
    }
}

#[async_trait]
impl AsNs for DirectoryAsNs {
    async fn link_application(
        &self,
        caller: Caller,
        mut requests: BoxStream<LinkResult<v3::LinkRequest>>,
    ) -> LinkResult<BoxStream<LinkResult<v3::LinkResponse>>> {
        // The first frame names the applications, and so the NS that owns them.
        let first = requests
            .next()
            .await
            .ok_or_else(|| Status::cancelled("the link closed before LinkStart"))??;
        let shard_key = match &first.frame {
            Some(v3::link_request::Frame::Start(start)) => start
                .application_ids
                .first()
                .map(|a| a.application_id.clone())
                .unwrap_or_default(),
            _ => String::new(),
        };
        let client = self.client(&shard_key)?;
        let requests = Box::pin(tokio_stream::once(Ok(first)).chain(requests));
        client.link_application(caller, requests).await
    }

    async fn downlink_queue_list(
        &self,
        caller: Caller,
        device: v3::EndDeviceIdentifiers,
    ) -> LinkResult<v3::ApplicationDownlinks> {
        let app = device
            .application_ids
            .as_ref()
            .map(|a| a.application_id.clone())
            .unwrap_or_default();
        self.client(&app)?.downlink_queue_list(caller, device).await
    }
}

/// The shard key of an uplink: the DevEUI of a join- or rejoin-request, the DevAddr of a data
/// frame, `None` for frames no Network Server can use (too short, proprietary).
pub fn uplink_shard(raw_payload: &[u8]) -> Option<UplinkShard> {
    let mhdr = *raw_payload.first()?;
    match mhdr >> 5 {
        // Join-request: MHDR | JoinEUI | DevEUI | DevNonce | MIC, EUIs little-endian.
        0b000 => {
            let mut eui: [u8; 8] = raw_payload.get(9..17)?.try_into().ok()?;
            eui.reverse();
            Some(UplinkShard::DevEui(lorawan::Eui64(eui)))
        }
        // Rejoin-request type 0/2: MHDR | type | NetID | DevEUI; type 1: MHDR | type | JoinEUI | DevEUI.
        0b110 => {
            let range = match raw_payload.get(1)? {
                0 | 2 => 5..13,
                1 => 10..18,
                _ => return None,
            };
            let mut eui: [u8; 8] = raw_payload.get(range)?.try_into().ok()?;
            eui.reverse();
            Some(UplinkShard::DevEui(lorawan::Eui64(eui)))
        }
        // Data uplinks: MHDR | DevAddr (little-endian) | ...
        0b010 | 0b100 => {
            let mut addr: [u8; 4] = raw_payload.get(1..5)?.try_into().ok()?;
            addr.reverse();
            Some(UplinkShard::DevAddr(lorawan::DevAddr(addr)))
        }
        _ => None,
    }
}

/// What an uplink is sharded by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UplinkShard {
    /// A join- or rejoin-request, by DevEUI.
    DevEui(lorawan::Eui64),
    /// A data uplink, by DevAddr.
    DevAddr(lorawan::DevAddr),
}

/// A [`GsNs`] that hands each uplink to the Network Server owning its shard (DevAddr for
/// data, DevEUI for joins; rendezvous hashing over the directory's Network Servers), so each
/// device has one writer. The Network Server of this process, when there is one, is called
/// in-process. TX acknowledgments go to the NS named before the first `/` of the
/// `downlink_id` (Network Servers make their IDs so), connection events to every NS.
pub struct DirectoryGsNs {
    directory: Arc<dyn PeerDirectory>,
    credentials: CallCredentials,
    local: Option<(String, Arc<dyn GsNs>)>,
    clients: Mutex<HashMap<String, GsNsClient>>,
}

impl std::fmt::Debug for DirectoryGsNs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectoryGsNs")
            .field("directory", &self.directory)
            .field("local", &self.local.as_ref().map(|(id, _)| id))
            .finish_non_exhaustive()
    }
}

impl DirectoryGsNs {
    /// Routes through `directory` with `credentials` (the cluster key); `local` is this
    /// process's instance ID and Network Server, if it runs one.
    pub fn new(
        directory: Arc<dyn PeerDirectory>,
        credentials: CallCredentials,
        local: Option<(String, Arc<dyn GsNs>)>,
    ) -> Self {
        Self {
            directory,
            credentials,
            local,
            clients: Mutex::new(HashMap::new()),
        }
    }

    fn target(&self, peer: &crate::directory::Peer) -> Result<Arc<dyn GsNs>, Status> {
        if let Some((id, local)) = &self.local
            && *id == peer.instance_id
        {
            return Ok(local.clone());
        }
        let mut clients = self.clients.lock().expect("client cache lock");
        if let Some(client) = clients.get(&peer.address) {
            return Ok(Arc::new(client.clone()));
        }
        let client = GsNsClient::new(channel(&peer.address, self.credentials.clone())?);
        clients.insert(peer.address.clone(), client.clone());
        Ok(Arc::new(client))
    }

    fn network_servers(&self) -> Result<Vec<crate::directory::Peer>, Status> {
        let peers = self.directory.peers(PeerRole::NetworkServer);
        if peers.is_empty() {
            return Err(Status::unavailable(
                "no Network Server is known: check cluster.network-server or etcd",
            ));
        }
        Ok(peers)
    }
}

#[async_trait]
impl GsNs for DirectoryGsNs {
    async fn handle_uplink(&self, uplink: v3::UplinkMessage) -> LinkResult<()> {
        let peers = self.network_servers()?;
        let peer = match uplink_shard(&uplink.raw_payload) {
            Some(UplinkShard::DevAddr(addr)) => shard::by_dev_addr(addr, &peers),
            Some(UplinkShard::DevEui(eui)) => shard::by_dev_eui(eui, &peers),
            // Let a Network Server reject it with its reason.
            None => peers.first(),
        }
        .expect("peers is not empty");
        self.target(peer)?.handle_uplink(uplink).await
    }

    async fn report_tx_ack(&self, ack: v3::TxAcknowledgment) -> LinkResult<()> {
        let peers = self.network_servers()?;
        let owner = ack.downlink_id.split_once('/').map(|(id, _)| id);
        match peers.iter().find(|p| Some(p.instance_id.as_str()) == owner) {
            Some(peer) => self.target(peer)?.report_tx_ack(ack).await,
            None => Err(Status::not_found(format!(
                "no Network Server scheduled downlink `{}`",
                ack.downlink_id
            ))),
        }
    }

    async fn report_gateway_connection(&self, event: v3::GatewayConnectionEvent) -> LinkResult<()> {
        let mut first_error = None;
        for peer in self.network_servers()? {
            if let Err(e) = self
                .target(&peer)?
                .report_gateway_connection(event.clone())
                .await
            {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}
