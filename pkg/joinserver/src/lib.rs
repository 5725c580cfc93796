//! Tern's Join Server role.
//!
//! - Root keys (AppKey, NwkKey) per JoinEUI/DevEUI, sealed at rest under the configured
//!   at-rest key ([`JsConfig`], `[join-server]`), served by `JsEndDeviceRegistry`.
//! - `HandleJoin` ([`NsJs`]): join-requests of LoRaWAN 1.0.x and 1.1 and rejoin-requests
//!   types 0, 1 and 2: MIC, DevNonce (1.0.x never reused, 1.1 strictly increasing) or
//!   RJcount, a persisted JoinNonce, session keys (OptNeg), the encrypted join-accept; the
//!   network keys go to the NS wrapped under its KEK (clear only when it has none), the
//!   AppSKey always wrapped under the AS KEK (RFC 3394).
//! - `GetAppSKey` ([`AsJs`]): the AppSKey of a session, wrapped for the AS.
//!
//! Metrics (`tern_js_…`): `joins_total{result}`, `app_s_key_requests_total{result}`,
//! `registry_requests_total{method,result}`.

#![warn(missing_docs)]

mod config;
mod error;
mod grpc;
mod join;
mod kek;
mod registry;
mod seal;

use std::sync::Arc;

use async_trait::async_trait;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tern_api::v3;
use tern_api::v3::as_js_server::AsJsServer;
use tern_api::v3::js_end_device_registry_server::JsEndDeviceRegistryServer;
use tern_api::v3::ns_js_server::NsJsServer;
use tern_cluster::auth::Authenticator;
use tern_cluster::links::{AsJs, LinkResult, NsJs};
use tern_cluster::role::{Readiness, Role, RoleContext, RoleService, RunState};
use tern_events::EventBus;
use tern_store::{JoinStore, Store};
use tonic::Status;
use tower::Layer;

pub use config::{
    ConfigError, DEFAULT_AS_KEK_LABEL, DEFAULT_NS_KEK_LABEL, JoinEuiPrefix, JsConfig, KeySource,
};
pub use error::JoinError;
pub use join::REJOIN_STATE;
pub use kek::{Kek, KekError};

/// The right to read a device's root keys.
pub const RIGHT_READ_KEYS: &str = "application:devices:read-keys";
/// The right to read a device.
pub const RIGHT_READ: &str = "application:devices:read";
/// The right to create, change and delete a device.
pub const RIGHT_WRITE: &str = "application:devices:write";

/// What the Join Server is built from.
pub struct JsDeps {
    /// The `[join-server]` section.
    pub config: JsConfig,
    /// The store (root keys, nonces, session keys).
    pub store: Store,
    /// The event bus.
    pub events: EventBus,
    /// Authenticates callers of the gRPC services.
    pub auth: Authenticator,
}

type Labels = Vec<(&'static str, &'static str)>;

/// The Join Server's Prometheus metrics.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    joins: Family<Labels, Counter>,
    app_s_key_requests: Family<Labels, Counter>,
    registry_requests: Family<Labels, Counter>,
}

impl Metrics {
    fn join(&self, result: &'static str) {
        self.joins.get_or_create(&vec![("result", result)]).inc();
    }

    fn app_s_key(&self, result: &'static str) {
        self.app_s_key_requests
            .get_or_create(&vec![("result", result)])
            .inc();
    }

    fn registry(&self, method: &'static str, result: &'static str) {
        self.registry_requests
            .get_or_create(&vec![("method", method), ("result", result)])
            .inc();
    }

    fn register(&self, registry: &mut Registry) {
        registry.register(
            "joins",
            "Join-requests and rejoin-requests handled, by result (accepted or the reason)",
            self.joins.clone(),
        );
        registry.register(
            "app_s_key_requests",
            "GetAppSKey requests, by result",
            self.app_s_key_requests.clone(),
        );
        registry.register(
            "registry_requests",
            "JsEndDeviceRegistry requests, by method and result",
            self.registry_requests.clone(),
        );
    }
}

/// The shared state behind the role, its links and its services.
pub(crate) struct Inner {
    config: config::Resolved,
    store: Store,
    events: EventBus,
    metrics: Metrics,
    state: RunState,
}

/// The Join Server role.
pub struct JoinServer {
    inner: Arc<Inner>,
    auth: Authenticator,
}

impl std::fmt::Debug for JoinServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinServer")
            .field("ns_kek_label", &self.inner.config.ns_kek_label)
            .field("as_kek_label", &self.inner.config.as_kek_label)
            .finish_non_exhaustive()
    }
}

impl JoinServer {
    /// Checks the configuration and loads its keys (creating key files marked for creation).
    pub fn new(deps: JsDeps) -> anyhow::Result<JoinServer> {
        let config = deps.config.resolve()?;
        Ok(JoinServer {
            inner: Arc::new(Inner {
                config,
                store: deps.store,
                events: deps.events,
                metrics: Metrics::default(),
                state: RunState::new(),
            }),
            auth: deps.auth,
        })
    }

    /// `HandleJoin` for a Network Server in this process.
    pub fn ns_link(&self) -> Arc<dyn NsJs> {
        Arc::new(Link(Arc::clone(&self.inner)))
    }

    /// `GetAppSKey` for an Application Server in this process.
    pub fn as_link(&self) -> Arc<dyn AsJs> {
        Arc::new(Link(Arc::clone(&self.inner)))
    }

    /// Creates or updates a device's Join Server fields named in `mask` (`root_keys`,
    /// `root_keys.app_key`, `root_keys.nwk_key`, `lorawan_version`), as
    /// `JsEndDeviceRegistry.Set` does but without a rights check: for in-process callers
    /// that checked rights themselves, and for tests.
    pub async fn set_device(
        &self,
        device: v3::EndDevice,
        mask: tern_api::FieldMask,
    ) -> Result<v3::EndDevice, Status> {
        self.inner.set_device(device, Some(mask)).await
    }

    /// The KEK configured under `label`, e.g. to hand the same key to an NS or AS in this
    /// process.
    pub fn kek(&self, label: &str) -> Option<&Kek> {
        self.inner.config.keks.get(label)
    }
}

/// The in-process end of the NS↔JS and AS↔JS links.
struct Link(Arc<Inner>);

#[async_trait]
impl NsJs for Link {
    async fn handle_join(&self, request: v3::JoinRequest) -> LinkResult<v3::JoinResponse> {
        self.0.handle_join(request).await
    }
}

#[async_trait]
impl AsJs for Link {
    async fn get_app_s_key(
        &self,
        request: v3::SessionKeyRequest,
    ) -> LinkResult<v3::AppSKeyResponse> {
        self.0.get_app_s_key(request).await
    }
}

impl Inner {
    /// GetAppSKey, counted in the metrics.
    pub(crate) async fn get_app_s_key(
        &self,
        request: v3::SessionKeyRequest,
    ) -> Result<v3::AppSKeyResponse, Status> {
        let result = self.app_s_key(request).await;
        self.metrics.app_s_key(match &result {
            Ok(_) => "ok",
            Err(s) if s.code() == tonic::Code::InvalidArgument => "invalid_request",
            Err(s) if s.code() == tonic::Code::NotFound => "not_found",
            Err(_) => "error",
        });
        result
    }

    async fn app_s_key(
        &self,
        request: v3::SessionKeyRequest,
    ) -> Result<v3::AppSKeyResponse, Status> {
        use tern_api::convert::{eui64, required};
        let bad = |e: tern_api::convert::ConvertError| Status::invalid_argument(e.to_string());
        if request.session_key_id.is_empty() {
            return Err(Status::invalid_argument("session_key_id: required"));
        }
        let dev_eui =
            required("dev_eui", eui64("dev_eui", &request.dev_eui).map_err(bad)?).map_err(bad)?;
        let join_eui = required(
            "join_eui",
            eui64("join_eui", &request.join_eui).map_err(bad)?,
        )
        .map_err(bad)?;
        let id = hex::encode(&request.session_key_id);
        let not_found = || {
            Status::not_found(format!(
                "no session key ID {id} of JoinEUI {join_eui} DevEUI {dev_eui}"
            ))
        };
        let record = self
            .store
            .get_session_keys(&request.session_key_id)
            .await
            .map_err(error::store_status)?
            .ok_or_else(not_found)?;
        if record.join_eui != join_eui.0 || record.dev_eui != dev_eui.0 {
            return Err(not_found());
        }
        let keys = seal::open_session_keys(
            &self.config.root_kek,
            &record.wrapped_keys,
            join_eui,
            dev_eui,
        )
        .map_err(|e| Status::internal(format!("session key ID {id}: {e}")))?;
        Ok(v3::AppSKeyResponse {
            app_s_key: Some(self.app_s_key_for_as(&keys.app_s_key)),
        })
    }

    fn check_started(&self) -> Result<(), Status> {
        match self.state.readiness() {
            Readiness::NotReady(why) => Err(Status::unavailable(format!(
                "the Join Server is not serving: {why}"
            ))),
            _ => Ok(()),
        }
    }
}

#[async_trait]
impl RoleService for JoinServer {
    fn role(&self) -> Role {
        Role::Js
    }

    fn grpc_services(&self, routes: &mut tonic::service::RoutesBuilder) {
        let layer = self.auth.layer();
        routes
            .add_service(layer.layer(NsJsServer::new(grpc::NsJsService(Arc::clone(&self.inner)))));
        routes
            .add_service(layer.layer(AsJsServer::new(grpc::AsJsService(Arc::clone(&self.inner)))));
        routes.add_service(
            layer.layer(JsEndDeviceRegistryServer::new(registry::Registry(
                Arc::clone(&self.inner),
            ))),
        );
    }

    async fn start(&self, ctx: &RoleContext) -> anyhow::Result<()> {
        ctx.metrics
            .register_role(Role::Js, |registry| self.inner.metrics.register(registry));
        self.inner.state.started();
        ctx.readiness.notify();
        Ok(())
    }

    fn readiness(&self) -> Readiness {
        self.inner.state.readiness()
    }

    async fn shutdown(&self) -> anyhow::Result<()> {
        self.inner.state.stopped();
        Ok(())
    }
}
