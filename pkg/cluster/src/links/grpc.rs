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
use tokio::sync::{mpsc, watch};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status, Streaming};
use tracing::debug;

use super::{AsJs, AsNs, BoxStream, GsIs, GsNs, LinkResult, NsGs, NsJs};
use crate::auth::{AuthError, CallCredentials, Caller};
use crate::directory::{Peer, PeerDirectory, PeerRole};
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

/// How long a [`DirectoryAsNs`] waits before opening a failed or ended Network Server link
/// again (doubling up to [`RELINK_MAX`]), while that Network Server is in the directory.
pub const RELINK_MIN: Duration = Duration::from_millis(500);

/// The longest wait between two attempts to link one Network Server.
pub const RELINK_MAX: Duration = Duration::from_secs(10);

/// What a [`DirectoryAsNs`] keeps across links.
#[derive(Default)]
struct MergeMemory {
    /// `ns_instance_id` of messages (a Network Server's numbering) → the directory instance
    /// ID of the Network Server that sends them.
    streams: HashMap<String, String>,
    /// `application_id/device_id` → the NS instance the device's last message came from.
    last_ns: HashMap<String, String>,
}

struct AsNsInner {
    directory: Arc<dyn PeerDirectory>,
    credentials: CallCredentials,
    local: Option<(String, Arc<dyn AsNs>)>,
    clients: Mutex<HashMap<String, AsNsClient>>,
    memory: Mutex<MergeMemory>,
}

/// An [`AsNs`] linking every live Network Server of the peer directory, as one link.
///
/// Devices are spread over the Network Servers by DevAddr, so the messages of one
/// application come from all of them. For each `link_application` this opens one link per
/// Network Server in the directory (a new one gets a link when it appears, a vanished one's
/// link ends; a link that fails is opened again while its NS is listed) and merges their
/// responses into the one stream the AS reads:
///
/// - one `established` frame, when the first Network Server confirmed;
/// - `up` frames as they come: each carries the `ns_instance_id` of the numbering it belongs
///   to (filled with the directory's instance ID when a Network Server leaves it empty), and
///   the AS's acknowledgements go to the Network Server of the `ns_instance_id` they name;
///   `LinkStart.acknowledged` goes to every Network Server, which skips the others' acks;
/// - queue results and refused acknowledgements as they come (the AS chose the IDs).
///
/// Queue operations go to the Network Server owning the device: the DevAddr in the request's
/// identifiers if set (the same rendezvous hashing the Gateway Server routes uplinks with),
/// else the one the device's last message came from, else the application's owner among
/// the linked ones. The same works for an AS outside the cluster, with an API key as
/// `credentials`.
pub struct DirectoryAsNs {
    inner: Arc<AsNsInner>,
}

impl std::fmt::Debug for DirectoryAsNs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectoryAsNs")
            .field("directory", &self.inner.directory)
            .field("local", &self.inner.local.as_ref().map(|(id, _)| id))
            .finish_non_exhaustive()
    }
}

impl DirectoryAsNs {
    /// Links through `directory`, authenticating with `credentials` (a cluster key, or an
    /// application API key for an AS outside the cluster).
    pub fn new(directory: Arc<dyn PeerDirectory>, credentials: CallCredentials) -> Self {
        Self {
            inner: Arc::new(AsNsInner {
                directory,
                credentials,
                local: None,
                clients: Mutex::new(HashMap::new()),
                memory: Mutex::default(),
            }),
        }
    }

    /// Calls the Network Server of this process (instance `instance_id`) in-process.
    pub fn with_local(self, instance_id: String, local: Arc<dyn AsNs>) -> Self {
        let inner = Arc::try_unwrap(self.inner).unwrap_or_else(|_| {
            unreachable!("with_local is called on a DirectoryAsNs that was not shared yet")
        });
        Self {
            inner: Arc::new(AsNsInner {
                local: Some((instance_id, local)),
                ..inner
            }),
        }
    }
}

impl AsNsInner {
    fn network_servers(&self) -> Vec<Peer> {
        self.directory.peers(PeerRole::NetworkServer)
    }

    fn target(&self, peer: &Peer) -> Result<Arc<dyn AsNs>, Status> {
        if let Some((id, local)) = &self.local
            && *id == peer.instance_id
        {
            return Ok(local.clone());
        }
        let mut clients = self.clients.lock().expect("client cache lock");
        if let Some(client) = clients.get(&peer.address) {
            return Ok(Arc::new(client.clone()));
        }
        let client = AsNsClient::new(channel(&peer.address, self.credentials.clone())?);
        clients.insert(peer.address.clone(), client.clone());
        Ok(Arc::new(client))
    }

    /// The NS instance a device's queue belongs to, among `candidates` (instance IDs).
    fn route(&self, ids: Option<&v3::EndDeviceIdentifiers>, candidates: &[Peer]) -> Option<Peer> {
        let ids = ids?;
        if let Ok(addr) = <[u8; 4]>::try_from(ids.dev_addr.as_slice()) {
            // The owner over the whole directory, as the GS routes the device's uplinks.
            let all = self.network_servers();
            if let Some(owner) = shard::by_dev_addr(lorawan::DevAddr(addr), &all)
                && let Some(p) = candidates
                    .iter()
                    .find(|p| p.instance_id == owner.instance_id)
            {
                return Some(p.clone());
            }
        }
        let app = app_of(ids);
        let last = self
            .memory
            .lock()
            .expect("merge memory lock")
            .last_ns
            .get(&format!("{app}/{}", ids.device_id))
            .cloned();
        if let Some(p) = last.and_then(|id| candidates.iter().find(|p| p.instance_id == id)) {
            return Some(p.clone());
        }
        shard::by_application(&app, candidates).cloned()
    }
}

fn app_of(ids: &v3::EndDeviceIdentifiers) -> String {
    ids.application_ids
        .as_ref()
        .map(|a| a.application_id.clone())
        .unwrap_or_default()
}

/// Where a merged link is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for a first Network Server to confirm.
    Opening,
    /// The AS has its `established` frame: frames flow.
    Open,
    /// The AS went away, or no Network Server could be linked.
    Closed,
}

/// One merged link.
struct Merge {
    inner: Arc<AsNsInner>,
    caller: Caller,
    /// The AS's `LinkStart`, sent to every Network Server.
    start: v3::LinkStart,
    out: mpsc::Sender<LinkResult<v3::LinkResponse>>,
    phase: watch::Sender<Phase>,
    /// The request side of each open NS link, by instance ID.
    links: Mutex<HashMap<String, (Peer, LinkTx)>>,
    /// The task of each listed NS, by instance ID.
    tasks: Mutex<HashMap<String, tokio::task::JoinHandle<()>>>,
}

/// The request side of one Network Server's link.
type LinkTx = mpsc::Sender<LinkResult<v3::LinkRequest>>;

type FirstOutcome = mpsc::Sender<Result<Vec<v3::ApplicationIdentifiers>, Status>>;

impl Merge {
    fn closed(&self) -> bool {
        *self.phase.borrow() == Phase::Closed || self.out.is_closed()
    }

    fn close(&self) {
        self.phase.send_replace(Phase::Closed);
        for (_, task) in self.tasks.lock().expect("merge tasks lock").drain() {
            task.abort();
        }
        self.links.lock().expect("merge links lock").clear();
    }

    /// Starts the task of `peer` unless it has one.
    fn spawn(self: &Arc<Self>, peer: Peer, first: Option<FirstOutcome>) {
        let mut tasks = self.tasks.lock().expect("merge tasks lock");
        if tasks
            .get(&peer.instance_id)
            .is_some_and(|t| !t.is_finished())
        {
            return;
        }
        let id = peer.instance_id.clone();
        let this = self.clone();
        tasks.insert(id, tokio::spawn(this.run_link(peer, first)));
    }

    /// Ends the links of Network Servers no longer listed, and links new ones.
    fn follow(self: &Arc<Self>, peers: &[Peer]) {
        {
            let mut tasks = self.tasks.lock().expect("merge tasks lock");
            tasks.retain(|id, task| {
                let listed = peers.iter().any(|p| p.instance_id == *id);
                if !listed {
                    debug!(ns = %id, "the Network Server left the directory: its link ends");
                    task.abort();
                }
                listed
            });
            self.links
                .lock()
                .expect("merge links lock")
                .retain(|id, _| tasks.contains_key(id));
        }
        for p in peers {
            self.spawn(p.clone(), None);
        }
    }

    /// Links one Network Server, again after a failure, while it is listed.
    async fn run_link(self: Arc<Self>, peer: Peer, mut first: Option<FirstOutcome>) {
        let mut backoff = RELINK_MIN;
        let mut phase = self.phase.subscribe();
        loop {
            if self.closed() {
                return;
            }
            match self.link_once(&peer, &mut first, &mut phase).await {
                Ok(()) => backoff = RELINK_MIN,
                Err(status) => {
                    debug!(ns = %peer.instance_id, error = %status, "linking a Network Server failed");
                    if let Some(f) = first.take() {
                        let _ = f.send(Err(status)).await;
                    }
                }
            }
            let listed = self
                .inner
                .network_servers()
                .iter()
                .any(|p| p.instance_id == peer.instance_id);
            if !listed || self.closed() {
                return;
            }
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                _ = phase.wait_for(|p| *p == Phase::Closed) => return,
            }
            backoff = (backoff * 2).min(RELINK_MAX);
        }
    }

    /// One link to `peer`, until it ends. `Ok` when it was established.
    async fn link_once(
        &self,
        peer: &Peer,
        first: &mut Option<FirstOutcome>,
        phase: &mut watch::Receiver<Phase>,
    ) -> Result<(), Status> {
        let (tx, rx) = mpsc::channel(256);
        tx.send(Ok(v3::LinkRequest {
            frame: Some(v3::link_request::Frame::Start(self.start.clone())),
        }))
        .await
        .map_err(|_| Status::cancelled("the link closed"))?;
        let mut responses = self
            .inner
            .target(peer)?
            .link_application(self.caller.clone(), Box::pin(ReceiverStream::new(rx)))
            .await?;
        let apps = match responses.next().await {
            Some(Ok(v3::LinkResponse {
                frame: Some(v3::link_response::Frame::Established(e)),
            })) => {
                if !e.ns_instance_id.is_empty() {
                    self.inner
                        .memory
                        .lock()
                        .expect("merge memory lock")
                        .streams
                        .insert(e.ns_instance_id, peer.instance_id.clone());
                }
                e.application_ids
            }
            Some(Err(status)) => return Err(status),
            Some(Ok(_)) => {
                return Err(Status::internal(format!(
                    "Network Server {:?} did not confirm the link",
                    peer.instance_id
                )));
            }
            None => {
                return Err(Status::unavailable(format!(
                    "Network Server {:?} closed the link",
                    peer.instance_id
                )));
            }
        };
        debug!(ns = %peer.instance_id, "linked a Network Server");
        self.links
            .lock()
            .expect("merge links lock")
            .insert(peer.instance_id.clone(), (peer.clone(), tx.clone()));
        if let Some(f) = first.take() {
            let _ = f.send(Ok(apps)).await;
        }
        // Nothing reaches the AS before its `established` frame.
        if phase.wait_for(|p| *p != Phase::Opening).await.is_err()
            || *phase.borrow() == Phase::Closed
        {
            return Ok(());
        }
        while let Some(frame) = responses.next().await {
            match frame {
                Ok(v3::LinkResponse {
                    frame: Some(v3::link_response::Frame::Up(up)),
                }) => self.forward_up(&peer.instance_id, up).await,
                Ok(
                    frame @ v3::LinkResponse {
                        frame:
                            Some(
                                v3::link_response::Frame::QueueResult(_)
                                | v3::link_response::Frame::AckRefused(_),
                            ),
                    },
                ) => {
                    let _ = self.out.send(Ok(frame)).await;
                }
                Ok(_) => {}
                Err(status) => {
                    debug!(ns = %peer.instance_id, error = %status, "a Network Server link ended");
                    break;
                }
            }
            if self.closed() {
                break;
            }
        }
        let none_left = {
            let mut links = self.links.lock().expect("merge links lock");
            if links
                .get(&peer.instance_id)
                .is_some_and(|(_, t)| t.same_channel(&tx))
            {
                links.remove(&peer.instance_id);
            }
            links.is_empty()
        };
        if none_left && *self.phase.borrow() == Phase::Open {
            // No Network Server is linked any more: end the AS's link, so that it reports
            // itself not ready and links anew (the relinks here could take a while).
            let _ = self
                .out
                .send(Err(Status::unavailable(format!(
                    "Network Server {:?} closed the link and no other is linked",
                    peer.instance_id
                ))))
                .await;
            self.close();
        }
        Ok(())
    }

    /// Hands an `up` frame to the AS, remembering which Network Server sent it.
    async fn forward_up(&self, ns: &str, mut up: v3::SequencedApplicationUp) {
        if up.ns_instance_id.is_empty() {
            // The AS tells numberings apart by this ID: one per Network Server at least.
            up.ns_instance_id = ns.to_owned();
        }
        {
            let mut memory = self.inner.memory.lock().expect("merge memory lock");
            if let Some(ids) = up.up.as_ref().and_then(|u| u.end_device_ids.as_ref()) {
                memory
                    .last_ns
                    .insert(format!("{}/{}", app_of(ids), ids.device_id), ns.to_owned());
            }
            if !memory.streams.contains_key(&up.ns_instance_id) {
                memory
                    .streams
                    .insert(up.ns_instance_id.clone(), ns.to_owned());
            }
        }
        let _ = self
            .out
            .send(Ok(v3::LinkResponse {
                frame: Some(v3::link_response::Frame::Up(up)),
            }))
            .await;
    }

    /// Sends the AS's acknowledgement to the Network Server whose numbering it names.
    async fn acknowledge(&self, mut ack: v3::LinkAck) {
        let (ns, named_by_ns) = {
            let memory = self.inner.memory.lock().expect("merge memory lock");
            let Some(ns) = memory.streams.get(&ack.ns_instance_id).cloned() else {
                // Without a known numbering it could acknowledge another instance's
                // messages; unacknowledged messages are resent at the next link instead.
                debug!(ns_instance_id = %ack.ns_instance_id, "acknowledgement of an unknown numbering: not forwarded");
                return;
            };
            let named = memory
                .streams
                .iter()
                .any(|(stream, peer)| *peer == ns && *stream != ns);
            (ns, named)
        };
        if ack.ns_instance_id == ns && !named_by_ns {
            // Filled in by `forward_up` for a Network Server that names none.
            ack.ns_instance_id.clear();
        }
        let tx = self
            .links
            .lock()
            .expect("merge links lock")
            .get(&ns)
            .map(|(_, tx)| tx.clone());
        if let Some(tx) = tx {
            let _ = tx
                .send(Ok(v3::LinkRequest {
                    frame: Some(v3::link_request::Frame::Ack(ack)),
                }))
                .await;
        }
    }

    /// Sends a queue operation to the Network Server owning the device.
    async fn queue_operation(&self, op: v3::DownlinkQueueOperation) {
        let linked: Vec<Peer> = self
            .links
            .lock()
            .expect("merge links lock")
            .values()
            .map(|(p, _)| p.clone())
            .collect();
        let target = self
            .inner
            .route(op.end_device_ids.as_ref(), &linked)
            .and_then(|p| {
                self.links
                    .lock()
                    .expect("merge links lock")
                    .get(&p.instance_id)
                    .map(|(_, tx)| tx.clone())
            });
        let operation_id = op.operation_id;
        let sent = match target {
            Some(tx) => tx
                .send(Ok(v3::LinkRequest {
                    frame: Some(v3::link_request::Frame::QueueOperation(op)),
                }))
                .await
                .is_ok(),
            None => false,
        };
        if !sent {
            let _ = self
                .out
                .send(Ok(v3::LinkResponse {
                    frame: Some(v3::link_response::Frame::QueueResult(
                        v3::DownlinkQueueOperationResult {
                            operation_id,
                            error: Some(v3::ErrorDetails {
                                code: tonic::Code::Unavailable as u32,
                                name: "no_network_server".to_owned(),
                                message: "no Network Server is linked right now: try again"
                                    .to_owned(),
                                ..Default::default()
                            }),
                            ..Default::default()
                        },
                    )),
                }))
                .await;
        }
    }

    /// Reads the AS's frames until it closes the link, and follows the directory.
    async fn serve(self: Arc<Self>, mut requests: BoxStream<LinkResult<v3::LinkRequest>>) {
        let mut directory = self.inner.directory.subscribe();
        // Whoever appeared since the link started.
        let peers = directory
            .borrow_and_update()
            .with_role(PeerRole::NetworkServer);
        self.follow(&peers);
        loop {
            tokio::select! {
                request = requests.next() => match request {
                    Some(Ok(v3::LinkRequest { frame: Some(frame) })) => match frame {
                        v3::link_request::Frame::QueueOperation(op) => self.queue_operation(op).await,
                        v3::link_request::Frame::Ack(ack) => self.acknowledge(ack).await,
                        // Only the first frame starts the link.
                        v3::link_request::Frame::Start(_) => {}
                    },
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => break,
                },
                changed = directory.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let peers = directory.borrow_and_update().with_role(PeerRole::NetworkServer);
                    self.follow(&peers);
                }
                () = self.out.closed() => break,
            }
        }
        self.close();
    }
}

#[async_trait]
impl AsNs for DirectoryAsNs {
    async fn link_application(
        &self,
        caller: Caller,
        mut requests: BoxStream<LinkResult<v3::LinkRequest>>,
    ) -> LinkResult<BoxStream<LinkResult<v3::LinkResponse>>> {
        let first = requests
            .next()
            .await
            .ok_or_else(|| Status::cancelled("the link closed before LinkStart"))??;
        let Some(v3::link_request::Frame::Start(start)) = first.frame else {
            return Err(Status::invalid_argument(
                "the first frame of a link must be LinkStart",
            ));
        };
        let peers = self.inner.network_servers();
        if peers.is_empty() {
            return Err(Status::unavailable(
                "no Network Server is known: check cluster.network-server or etcd",
            ));
        }
        let (out, out_rx) = mpsc::channel(1024);
        let merge = Arc::new(Merge {
            inner: self.inner.clone(),
            caller,
            start,
            out,
            phase: watch::Sender::new(Phase::Opening),
            links: Mutex::default(),
            tasks: Mutex::default(),
        });
        let (first_tx, mut first_rx) = mpsc::channel(peers.len());
        for p in &peers {
            merge.spawn(p.clone(), Some(first_tx.clone()));
        }
        drop(first_tx);
        let mut first_error = None;
        let apps = loop {
            match first_rx.recv().await {
                Some(Ok(apps)) => break Some(apps),
                Some(Err(status)) => {
                    first_error.get_or_insert(status);
                }
                None => break None,
            }
        };
        let Some(apps) = apps else {
            merge.close();
            return Err(first_error
                .unwrap_or_else(|| Status::unavailable("no Network Server could be linked")));
        };
        let _ = merge
            .out
            .send(Ok(v3::LinkResponse {
                frame: Some(v3::link_response::Frame::Established(v3::LinkEstablished {
                    application_ids: apps,
                    ..Default::default()
                })),
            }))
            .await;
        merge.phase.send_replace(Phase::Open);
        tokio::spawn(merge.clone().serve(requests));
        Ok(Box::pin(ReceiverStream::new(out_rx)))
    }

    async fn downlink_queue_list(
        &self,
        caller: Caller,
        device: v3::EndDeviceIdentifiers,
    ) -> LinkResult<v3::ApplicationDownlinks> {
        let peers = self.inner.network_servers();
        let peer = self.inner.route(Some(&device), &peers).ok_or_else(|| {
            Status::unavailable("no Network Server is known: check cluster.network-server or etcd")
        })?;
        self.inner
            .target(&peer)?
            .downlink_queue_list(caller, device)
            .await
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
