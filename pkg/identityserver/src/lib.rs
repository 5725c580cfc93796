//! Tern's Identity Server (`is`): users, organizations, applications, gateways and the
//! registry part of end devices; API keys, collaborators and rights; login tokens.
//!
//! - [`IdentityServer`] is the role: its gRPC services (and so `/api/v3` REST routes) are
//!   the registries, `EntityAccess` and `Auth`; every method checks a right first.
//! - [`IdentityServer::verifier`] is the [`ApiKeyVerifier`] of the process: API keys
//!   (`TERN.<id>.<secret>`, argon2id hashed) and access tokens (JWT), with a cache of verified
//!   keys that the `is.*` events invalidate in every process.
//! - [`IdentityServer::gs_link`] gives the Gateway Server gateways by EUI from a cache.
//! - [`Admin`] works on the store without a server (`tern admin ...`).
//!
//! See README.md for the rights model, the key format and bootstrap.

#![warn(missing_docs)]

mod admin;
mod bootstrap;
mod cache;
mod config;
mod core;
mod grpc;
mod mask;
mod metrics;
pub mod rights;
pub mod secrets;
mod tokens;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tern_api::v3;
use tern_cluster::auth::{ApiKeyVerifier, Authenticator, ClusterKeys};
use tern_cluster::links::GsIs;
use tern_cluster::role::{Readiness, Role, RoleContext, RoleService, RunState};
use tern_events::{EventBus, Filter};
use tern_store::Store;
use tower::Layer;

pub use admin::{Admin, parse_entity};
pub use bootstrap::{ADMIN_USER, BOOTSTRAP_FILE};
pub use cache::IsGsLink;
pub use config::IsConfig;
pub use core::IsVerifier;
pub use grpc::check_id;

use crate::core::Core;
use crate::grpc::Svc;

/// What the Identity Server is built from.
#[derive(Debug)]
pub struct IsDeps {
    /// The `[identity-server]` section.
    pub config: IsConfig,
    /// The store (shared with the other roles of the process).
    pub store: Store,
    /// The event bus: changes are published on it and read back for cache invalidation.
    pub events: EventBus,
    /// The cluster keys: cluster callers are trusted with every call.
    pub keys: ClusterKeys,
    /// The data directory (for `bootstrap.txt`).
    pub data_dir: PathBuf,
}

/// The Identity Server role.
pub struct IdentityServer {
    core: Arc<Core>,
    state: Arc<RunState>,
    auth: Authenticator,
    data_dir: PathBuf,
    bootstrap: Mutex<Option<PathBuf>>,
}

impl std::fmt::Debug for IdentityServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityServer").finish_non_exhaustive()
    }
}

impl IdentityServer {
    /// Builds the role; fails on an invalid configuration (naming the key).
    pub fn new(deps: IsDeps) -> anyhow::Result<Self> {
        deps.config.validate().map_err(anyhow::Error::msg)?;
        let core = Arc::new(Core::new(deps.store, Some(deps.events), deps.config));
        let verifier: Arc<dyn ApiKeyVerifier> = Arc::new(IsVerifier(core.clone()));
        let auth = Authenticator::new(deps.keys).with_api_key_verifier(verifier);
        Ok(Self {
            core,
            state: Arc::new(RunState::new()),
            auth,
            data_dir: deps.data_dir,
            bootstrap: Mutex::new(None),
        })
    }

    /// The verifier of API keys and access tokens, usable before the role starts.
    pub fn verifier(&self) -> Arc<dyn ApiKeyVerifier> {
        Arc::new(IsVerifier(self.core.clone()))
    }

    /// The authenticator the IS's services use: the cluster keys and [`Self::verifier`].
    pub fn authenticator(&self) -> Authenticator {
        self.auth.clone()
    }

    /// The Gateway Server's link to this IS: gateways by EUI, cached.
    pub fn gs_link(&self) -> Arc<dyn GsIs> {
        Arc::new(IsGsLink(self.core.clone()))
    }

    /// Where the bootstrap credentials were written by this process's start, if it did.
    pub fn bootstrap_file(&self) -> Option<PathBuf> {
        self.bootstrap.lock().expect("bootstrap lock").clone()
    }

    /// How many requests or credentials were refused for `reason` (a metric label).
    pub fn rejected(&self, reason: &'static str) -> u64 {
        self.core.metrics.rejected(reason)
    }

    /// How many calls of the IS services failed with `code` (bad input, missing entities, ...).
    pub fn failed(&self, code: tonic::Code) -> u64 {
        self.core.metrics.failures.count(code)
    }

    /// How many verified API keys are cached now.
    pub fn cached_keys(&self) -> usize {
        self.core.keys.len()
    }

    fn svc(&self) -> Svc {
        Svc {
            core: self.core.clone(),
            state: self.state.clone(),
        }
    }
}

#[async_trait::async_trait]
impl RoleService for IdentityServer {
    fn role(&self) -> Role {
        Role::Is
    }

    fn grpc_services(&self, routes: &mut tonic::service::RoutesBuilder) {
        let auth = self.auth.layer();
        let count = self.core.metrics.failures.clone();
        let svc = self.svc();
        routes.add_service(auth.layer(count.layer(
            v3::user_registry_server::UserRegistryServer::new(grpc::Users(svc.clone())),
        )));
        routes.add_service(auth.layer(count.layer(
            v3::organization_registry_server::OrganizationRegistryServer::new(grpc::Organizations(
                svc.clone(),
            )),
        )));
        routes.add_service(auth.layer(count.layer(
            v3::application_registry_server::ApplicationRegistryServer::new(grpc::Applications(
                svc.clone(),
            )),
        )));
        routes.add_service(auth.layer(count.layer(
            v3::gateway_registry_server::GatewayRegistryServer::new(grpc::Gateways(svc.clone())),
        )));
        routes.add_service(auth.layer(count.layer(
            v3::end_device_registry_server::EndDeviceRegistryServer::new(grpc::EndDevices(
                svc.clone(),
            )),
        )));
        routes.add_service(auth.layer(count.layer(
            v3::entity_access_server::EntityAccessServer::new(grpc::Access(svc.clone())),
        )));
        // Login and refresh come without credentials.
        routes.add_service(
            self.auth
                .optional_layer()
                .layer(count.layer(v3::auth_server::AuthServer::new(grpc::AuthSvc(svc)))),
        );
    }

    async fn start(&self, ctx: &RoleContext) -> anyhow::Result<()> {
        ctx.metrics
            .register_role(Role::Is, |registry| self.core.metrics.register(registry));
        if let Some(bus) = &self.core.events {
            let subscription = bus
                .subscribe(Filter::all().name("is.*"))
                .await
                .map_err(|e| anyhow::anyhow!("subscribing to is.* events: {e}"))?;
            tokio::spawn(cache::follow(
                self.core.clone(),
                subscription,
                ctx.shutdown.clone(),
            ));
        }
        let written = bootstrap::bootstrap(&self.core, &self.data_dir).await?;
        *self.bootstrap.lock().expect("bootstrap lock") = written;
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
