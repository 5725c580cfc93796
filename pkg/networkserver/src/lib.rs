//! Tern's Network Server role.
//!
//! What is here: the role frame and the NS end of the AS↔NS link ([`link::LinkHub`]). The
//! uplink pipeline (dedup, session match, MIC, FCnt, MAC commands, ADR) and downlink
//! scheduling arrive with the Network Server issue, on these foundations.

#![warn(missing_docs)]

pub mod link;

use std::sync::Arc;

use async_trait::async_trait;
use tern_api::v3::as_ns_server::AsNsServer;
use tern_cluster::auth::Authenticator;
use tern_cluster::links::AsNs;
use tern_cluster::links::grpc::AsNsService;
use tern_cluster::role::{Readiness, Role, RoleContext, RoleService, RunState};
use tower::Layer;

use crate::link::LinkHub;

/// The Network Server role.
pub struct NetworkServer {
    links: LinkHub,
    auth: Authenticator,
    state: RunState,
}

impl NetworkServer {
    /// A Network Server whose gRPC services authenticate callers with `auth`.
    pub fn new(auth: Authenticator) -> Self {
        Self {
            links: LinkHub::new(),
            auth,
            state: RunState::new(),
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
    }

    async fn start(&self, ctx: &RoleContext) -> anyhow::Result<()> {
        ctx.metrics
            .register_role(Role::Ns, |registry| self.links.register_metrics(registry));
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
        Ok(())
    }
}
