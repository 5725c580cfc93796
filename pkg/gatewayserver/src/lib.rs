//! Tern's Gateway Server role: Semtech UDP packet forwarders and LoRa Basics Station
//! gateways, uplinks to the Network Server, downlink timing and duty cycle.
//!
//! - [`udp`]: the Semtech UDP protocol v2 (`:1700/udp`); [`udp::packet`] is the pure codec.
//! - [`bs`] and the WebSocket frontend: LoRa Basics Station (`:1887`, TLS when configured).
//! - [`scheduler`]: the pure per-gateway downlink scheduler (windows, margin, duty cycle,
//!   dwell time, collisions, the 32-bit concentrator counter).
//! - [`token`]: the opaque uplink token the NS hands back in downlink paths.
//! - [`uplink`]: rxpk / Basics Station frames → `v3::UplinkMessage`.
//!
//! Wiring: [`GatewayServer::new`] with [`GsDeps`]; it implements
//! [`RoleService`] and, through [`GatewayServer::ns_link`], [`NsGs`].

#![warn(missing_docs)]

pub mod bs;
pub mod config;
mod downlink;
pub mod scheduler;
mod state;
pub mod token;
pub mod udp;
pub mod uplink;
mod ws;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use tern_api::v3;
use tern_api::v3::gs_server::{Gs, GsServer};
use tern_api::v3::ns_gs_server::NsGsServer;
use tern_cluster::auth::{ApiKeyVerifier, Authenticator, Entity, require};
use tern_cluster::links::grpc::NsGsService;
use tern_cluster::links::{GsIs, GsNs, LinkResult, NsGs};
use tern_cluster::role::{Readiness, Role, RoleContext, RoleService, RunState};
use tern_events::{EventBus, Filter, RecvError};
use tokio::net::{TcpListener, UdpSocket};
use tokio::task::JoinHandle;
use tonic::{Request, Response, Status};
use tower::Layer;

pub use config::{BasicStationConfig, GsConfig, RateLimitConfig, UdpConfig};
pub use downlink::txpk;
pub use state::Protocol;
pub use ws::RIGHT_GATEWAY_LINK;

use crate::state::Shared;

/// What the Gateway Server needs from the process.
pub struct GsDeps {
    /// `[gateway-server]`.
    pub config: GsConfig,
    /// The Network Server link (uplinks, TX acknowledgments, connection reports).
    pub ns: Arc<dyn GsNs>,
    /// The gateway registry (Identity Server).
    pub registry: Arc<dyn GsIs>,
    /// Verifies gateway API keys (Basics Station `Authorization`) and API callers.
    pub api_keys: Arc<dyn ApiKeyVerifier>,
    /// The event bus.
    pub events: EventBus,
    /// This instance's ID, carried in uplink tokens so a cluster routes downlinks back.
    pub instance_id: String,
    /// Authenticates gRPC callers of the GS's services.
    pub auth: Authenticator,
}

/// The Gateway Server role.
pub struct GatewayServer {
    shared: Arc<Shared>,
    auth: Authenticator,
    state: RunState,
    tasks: std::sync::Mutex<Vec<JoinHandle<()>>>,
    bound: std::sync::Mutex<Option<(std::net::SocketAddr, std::net::SocketAddr)>>,
}

impl GatewayServer {
    /// A Gateway Server; nothing is bound until [`RoleService::start`].
    pub fn new(deps: GsDeps) -> Self {
        let auth = deps.auth.with_api_key_verifier(deps.api_keys.clone());
        Self {
            shared: Arc::new(Shared::new(
                deps.config,
                deps.ns,
                deps.registry,
                deps.api_keys,
                deps.events,
                deps.instance_id,
            )),
            auth,
            state: RunState::new(),
            tasks: std::sync::Mutex::new(Vec::new()),
            bound: std::sync::Mutex::new(None),
        }
    }

    /// The NS→GS link end, for a Network Server in this process.
    pub fn ns_link(&self) -> Arc<dyn NsGs> {
        Arc::new(NsLink(self.shared.clone()))
    }

    /// The bound UDP and Basics Station addresses, once started (port 0 in the configuration
    /// picks a free port).
    pub fn local_addrs(&self) -> Option<(std::net::SocketAddr, std::net::SocketAddr)> {
        *self.bound.lock().expect("bound lock")
    }

    /// Connection statistics of a connected gateway.
    pub fn connection_stats(&self, gateway_id: &str) -> Option<v3::GatewayConnectionStats> {
        let conn = self.shared.conn_by_id(gateway_id)?;
        Some(self.shared.stats(&conn))
    }

    fn tls(&self) -> anyhow::Result<Option<tokio_rustls::TlsAcceptor>> {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        let c = &self.shared.config.basic_station;
        let (Some(cert), Some(key)) = (&c.tls_cert, &c.tls_key) else {
            return Ok(None);
        };
        let certs = CertificateDer::pem_file_iter(cert)
            .with_context(|| format!("gateway-server.basic-station.tls-cert {}", cert.display()))?
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("gateway-server.basic-station.tls-cert {}", cert.display()))?;
        let key = PrivateKeyDer::from_pem_file(key)
            .with_context(|| format!("gateway-server.basic-station.tls-key {}", key.display()))?;
        let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(Arc::new(
            tokio_rustls::rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .context("gateway-server.basic-station: TLS versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("gateway-server.basic-station: TLS certificate and key")?;
        Ok(Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))))
    }
}

/// The [`NsGs`] end served by this GS.
struct NsLink(Arc<Shared>);

#[async_trait]
impl NsGs for NsLink {
    async fn schedule_downlink(
        &self,
        downlink: v3::DownlinkMessage,
    ) -> LinkResult<v3::ScheduleDownlinkResponse> {
        if !self.0.started.load(Ordering::SeqCst) {
            return Err(Status::unavailable("the Gateway Server is not running"));
        }
        downlink::schedule(&self.0, downlink).await
    }
}

/// The public `tern.v3.Gs` service.
struct GsService(Arc<Shared>);

#[async_trait]
impl Gs for GsService {
    async fn get_gateway_connection_stats(
        &self,
        request: Request<v3::GatewayIdentifiers>,
    ) -> Result<Response<v3::GatewayConnectionStats>, Status> {
        if !self.0.started.load(Ordering::SeqCst) {
            return Err(Status::unavailable("the Gateway Server is not running"));
        }
        let id = request.get_ref().gateway_id.clone();
        if id.is_empty() {
            return Err(Status::invalid_argument("gateway_id: empty"));
        }
        let entity = Entity::Gateway(id.clone());
        if let Err(e) = require(&request, &entity, "gateway:status").await {
            require(&request, &entity, "gateway:info")
                .await
                .map_err(|_| Status::from(e))?;
        }
        let conn = self
            .0
            .conn_by_id(&id)
            .ok_or_else(|| Status::not_found(format!("gateway {id:?} is not connected")))?;
        Ok(Response::new(self.0.stats(&conn)))
    }
}

#[async_trait]
impl RoleService for GatewayServer {
    fn role(&self) -> Role {
        Role::Gs
    }

    fn grpc_services(&self, routes: &mut tonic::service::RoutesBuilder) {
        routes.add_service(
            self.auth
                .layer()
                .layer(NsGsServer::new(NsGsService(self.ns_link()))),
        );
        routes.add_service(
            self.auth
                .layer()
                .layer(GsServer::new(GsService(self.shared.clone()))),
        );
    }

    async fn start(&self, ctx: &RoleContext) -> anyhow::Result<()> {
        let shared = &self.shared;
        shared.config.validate().map_err(anyhow::Error::msg)?;
        let udp_addr = shared.config.udp.listen;
        let socket = Arc::new(
            bind_udp(udp_addr).with_context(|| format!("gateway-server.udp.listen {udp_addr}"))?,
        );
        let ws_addr = shared.config.basic_station.listen;
        let listener = TcpListener::bind(ws_addr)
            .await
            .with_context(|| format!("gateway-server.basic-station.listen {ws_addr}"))?;
        let tls = self.tls()?;
        let (udp_bound, ws_bound) = (socket.local_addr()?, listener.local_addr()?);
        let udp_buffer = socket2::SockRef::from(&*socket)
            .recv_buffer_size()
            .unwrap_or(0);
        tracing::info!(udp = %udp_bound, basic_station = %ws_bound, udp_receive_buffer = udp_buffer, "gateway listeners bound");
        *self.bound.lock().expect("bound lock") = Some((udp_bound, ws_bound));
        *shared.udp_socket.lock().expect("socket lock") = Some(socket.clone());
        ctx.metrics
            .register_role(Role::Gs, |r| shared.metrics.register(r));

        let mut tasks = Vec::new();
        tasks.push(tokio::spawn(udp::serve(shared.clone(), socket)));
        tasks.push(tokio::spawn(udp::janitor(shared.clone())));
        tasks.push(tokio::spawn(ws::serve(shared.clone(), listener, tls)));
        // Registry changes invalidate the cache at once instead of after the TTL.
        match shared
            .events
            .subscribe(Filter::all().name("is.gateway.*"))
            .await
        {
            Ok(mut sub) => {
                let shared = shared.clone();
                tasks.push(tokio::spawn(async move {
                    loop {
                        tokio::select! {
                            _ = shared.stop.wait() => break,
                            ev = sub.recv() => match ev {
                                Ok(_) | Err(RecvError::Lagged(_)) => shared.registry.invalidate(),
                                Err(RecvError::Closed) => break,
                            },
                        }
                    }
                }));
            }
            Err(e) => {
                tracing::warn!("gs: no registry change events, the cache expires by TTL: {e}")
            }
        }
        let (stop, process) = (shared.stop.clone(), ctx.shutdown.clone());
        tasks.push(tokio::spawn(async move {
            tokio::select! {
                _ = process.wait() => stop.trigger(),
                _ = stop.wait() => {}
            }
        }));
        self.tasks.lock().expect("tasks lock").extend(tasks);
        shared.started.store(true, Ordering::SeqCst);
        self.state.started();
        ctx.readiness.notify();
        Ok(())
    }

    fn readiness(&self) -> Readiness {
        self.state.readiness()
    }

    async fn shutdown(&self) -> anyhow::Result<()> {
        let shared = &self.shared;
        shared.started.store(false, Ordering::SeqCst);
        shared.stop.trigger();
        let tasks: Vec<JoinHandle<()>> =
            std::mem::take(&mut *self.tasks.lock().expect("tasks lock"));
        for t in tasks {
            // Every task watches `stop`; a stuck one must not hold up the process.
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
        // Basics Station connections end on `stop` and report themselves; UDP gateways have
        // no connection to end, so report them here.
        let conns: Vec<_> = shared
            .gateways
            .lock()
            .expect("gateways lock")
            .values()
            .cloned()
            .collect();
        for conn in conns {
            shared.disconnect(&conn).await;
        }
        *shared.udp_socket.lock().expect("socket lock") = None;
        self.state.stopped();
        Ok(())
    }
}

/// Receive buffer asked of the kernel for the UDP socket. Packet forwarders send in bursts
/// (many gateways' PUSH_DATA at once, up to ~8 KB each), so a short stall of the reader
/// must not overflow it: the kernel drops what does not fit, unseen and uncounted by tern
/// (`RcvbufErrors` in /proc/net/snmp). Linux caps it at `net.core.rmem_max`.
const UDP_RECEIVE_BUFFER: usize = 4 << 20;

/// The gateway UDP socket, with a receive buffer of [`UDP_RECEIVE_BUFFER`] when the kernel
/// allows it.
fn bind_udp(addr: std::net::SocketAddr) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if let Err(e) = socket.set_recv_buffer_size(UDP_RECEIVE_BUFFER) {
        tracing::warn!(error = %e, "cannot enlarge the gateway UDP receive buffer; bursts may overflow it");
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}
