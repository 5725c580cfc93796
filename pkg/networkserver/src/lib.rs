//! Tern's Network Server role.
//!
//! - [`link::LinkHub`]: the NS end of the AS↔NS link (uplinks, join-accepts and downlink
//!   events go out; queue operations come in; messages for unlinked applications are kept).
//! - The uplink pipeline: deduplication ([`dedup`]), session match through the in-memory
//!   DevAddr index ([`devices`]), MIC and 32-bit FCnt, durable FCnt before forwarding, MAC
//!   commands and ADR through `tern-mac`, joins through the Join Server (`NsJs`).
//! - Downlinks: class A (RX1/RX2), class C, confirmed downlinks with retries, the per-device
//!   queue with FCnt reservation, through the Gateway Server (`NsGs`).
//!
//! Wiring: [`NetworkServer::with_deps`], then [`NetworkServer::set_gateway_server`] once
//! the GS (built with [`NetworkServer::gs_link`]) exists.

#![warn(missing_docs)]

pub mod config;
pub mod dedup;
pub mod devices;
pub mod link;
mod mac;
mod registry;
mod server;
mod shared;

use std::sync::Arc;

use async_trait::async_trait;
use tern_api::v3;
use tern_api::v3::as_ns_server::AsNsServer;
use tern_api::v3::gs_ns_server::GsNsServer;
use tern_api::v3::ns_end_device_registry_server::NsEndDeviceRegistryServer;
use tern_cluster::auth::Authenticator;
use tern_cluster::links::grpc::{AsNsService, GsNsService};
use tern_cluster::links::{AsNs, GsNs, NsGs, NsJs};
use tern_cluster::role::{Readiness, Role, RoleContext, RoleService, RunState};
use tern_events::EventBus;
use tern_store::Store;
use tonic::Status;
use tower::Layer;

pub use crate::config::NsConfig;
use crate::link::LinkHub;
use crate::server::Core;

/// What a complete Network Server needs.
pub struct NsDeps {
    /// `[network-server]`.
    pub config: NsConfig,
    /// The store (devices, queues, the link backlog).
    pub store: Store,
    /// The event bus.
    pub events: EventBus,
    /// Authenticates callers of the NS's gRPC services.
    pub auth: Authenticator,
    /// The Join Server.
    pub js: Arc<dyn NsJs>,
    /// A name of this NS instance (in downlink IDs and logs).
    pub instance_id: String,
}

/// The Network Server role.
pub struct NetworkServer {
    links: LinkHub,
    auth: Authenticator,
    state: RunState,
    core: Option<Arc<Core>>,
}

impl NetworkServer {
    /// A Network Server with the AS link only (no pipeline): for wiring that predates
    /// [`NetworkServer::with_deps`].
    pub fn new(auth: Authenticator) -> Self {
        Self {
            links: LinkHub::new(),
            auth,
            state: RunState::new(),
            core: None,
        }
    }

    /// A complete Network Server. Fails when the configuration is invalid (the error names
    /// the field).
    pub fn with_deps(deps: NsDeps) -> anyhow::Result<Self> {
        deps.config
            .validate()
            .map_err(|e| anyhow::anyhow!("[network-server] {e}"))?;
        let links = LinkHub::new();
        let link_options = crate::link::LinkOptions {
            outbox_limit: deps.config.link.outbox_limit,
            instance_id: deps.instance_id.clone(),
            events: deps.events.clone(),
        };
        let core = Arc::new(Core::new(
            deps.config,
            deps.store.clone(),
            deps.events,
            deps.js,
            links.clone(),
            deps.instance_id,
        ));
        links.attach(deps.store, Arc::new(core.clone()), link_options);
        Ok(Self {
            links,
            auth: deps.auth,
            state: RunState::new(),
            core: Some(core),
        })
    }

    /// Sets the Gateway Server link used for downlinks (once; later calls fail). Until it
    /// is set, uplinks are processed but cannot be answered.
    pub fn set_gateway_server(&self, gs: Arc<dyn NsGs>) -> anyhow::Result<()> {
        let core = self.core()?;
        core.gs.set(gs).map_err(|_| {
            anyhow::anyhow!("the Gateway Server link of the Network Server is already set")
        })
    }

    /// The NS end of the GS↔NS link, for a Gateway Server in this process.
    pub fn gs_link(&self) -> Arc<dyn GsNs> {
        match &self.core {
            Some(core) => Arc::new(server::GsEnd(core.clone())),
            None => Arc::new(Unavailable),
        }
    }

    /// The AS↔NS link end, for an Application Server in this process.
    pub fn as_link(&self) -> Arc<dyn AsNs> {
        Arc::new(self.links.clone())
    }

    /// The link hub.
    pub fn links(&self) -> &LinkHub {
        &self.links
    }

    fn core(&self) -> anyhow::Result<&Arc<Core>> {
        self.core
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("this Network Server was built without its dependencies (use NetworkServer::with_deps)"))
    }

    /// Loads the stored devices into memory (done by [`RoleService::start`]); returns how
    /// many were loaded.
    pub async fn load(&self) -> anyhow::Result<usize> {
        Ok(self.core()?.load().await?)
    }

    /// Creates or updates the NS fields of a device named in `paths` (top-level `EndDevice`
    /// fields), as `NsEndDeviceRegistry.Set` does without the rights check.
    pub async fn set_device(
        &self,
        device: v3::EndDevice,
        paths: &[&str],
    ) -> Result<v3::EndDevice, Status> {
        let core = self
            .core()
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let paths: Vec<String> = paths.iter().map(|p| (*p).to_owned()).collect();
        core.set_device(device, &paths).await
    }

    /// The NS fields of a device, session keys included.
    pub async fn get_device(
        &self,
        ids: &v3::EndDeviceIdentifiers,
    ) -> Result<v3::EndDevice, Status> {
        let core = self
            .core()
            .map_err(|e| Status::unavailable(e.to_string()))?;
        core.get_device(ids, true).await
    }

    /// Processes an already deduplicated uplink at once (the pipeline after the dedup
    /// window; for tools and benchmarks).
    pub async fn process_uplink(&self, uplink: v3::UplinkMessage) -> anyhow::Result<()> {
        self.core()?.process(uplink).await;
        Ok(())
    }
}

/// The GS link end of a Network Server without dependencies.
struct Unavailable;

#[async_trait]
impl GsNs for Unavailable {
    async fn handle_uplink(&self, _: v3::UplinkMessage) -> Result<(), Status> {
        Err(Status::unavailable(
            "the Network Server has no uplink pipeline in this process",
        ))
    }
    async fn report_tx_ack(&self, _: v3::TxAcknowledgment) -> Result<(), Status> {
        Err(Status::unavailable(
            "the Network Server has no uplink pipeline in this process",
        ))
    }
    async fn report_gateway_connection(&self, _: v3::GatewayConnectionEvent) -> Result<(), Status> {
        Ok(())
    }
}

#[async_trait]
impl RoleService for NetworkServer {
    fn role(&self) -> Role {
        Role::Ns
    }

    fn grpc_services(&self, routes: &mut tonic::service::RoutesBuilder) {
        // The link admits API keys (an external AS); the layer only authenticates, the hub
        // checks each application's rights.
        routes.add_service(
            self.auth
                .layer()
                .layer(AsNsServer::new(AsNsService(self.as_link()))),
        );
        if let Some(core) = &self.core {
            // GsNs checks for cluster callers itself.
            routes.add_service(
                self.auth
                    .layer()
                    .layer(GsNsServer::new(GsNsService(self.gs_link()))),
            );
            routes.add_service(self.auth.layer().layer(NsEndDeviceRegistryServer::new(
                registry::RegistryService(core.clone()),
            )));
        }
    }

    async fn start(&self, ctx: &RoleContext) -> anyhow::Result<()> {
        ctx.metrics.register_role(Role::Ns, |registry| {
            self.links.register_metrics(registry);
            if let Some(core) = &self.core {
                core.register_metrics(registry);
            }
        });
        if let Some(core) = &self.core {
            let n = core.load().await?;
            tracing::info!(devices = n, "Network Server devices loaded");
        }
        self.links.open_outbox().await?;
        let (links, shutdown) = (self.links.clone(), ctx.shutdown.clone());
        tokio::spawn(async move {
            shutdown.wait().await;
            links.close_all();
        });
        self.state.started();
        Ok(())
    }

    fn readiness(&self) -> Readiness {
        self.state.readiness()
    }

    async fn shutdown(&self) -> anyhow::Result<()> {
        self.state.stopped();
        // What `deliver` took is committed to the outbox before the store closes.
        self.links.flush().await;
        Ok(())
    }
}
