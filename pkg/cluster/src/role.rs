//! The lifecycle every role implements, and what the process hands each role.
//!
//! A role crate implements [`RoleService`]; `tern start` builds the roles it was asked for,
//! mounts their gRPC services on the shared server, starts them in [`Role::ALL`] order and
//! shuts them down in reverse. What a role needs beyond this context (its configuration, the
//! store, the event bus, its links to other roles) it receives when it is constructed.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, RwLock};

use prometheus_client::collector::Collector;
use prometheus_client::registry::Registry;
use tokio::sync::watch;

/// One of the five roles of the stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Identity Server: registry, API keys and rights.
    Is,
    /// Gateway Server: gateway connections and radio timing.
    Gs,
    /// Network Server: MAC state, dedup, ADR, downlink scheduling.
    Ns,
    /// Join Server: root keys and session key derivation.
    Js,
    /// Application Server: payload crypto, integrations.
    As,
}

impl Role {
    /// All roles, in start order.
    pub const ALL: [Role; 5] = [Role::Is, Role::Gs, Role::Ns, Role::Js, Role::As];

    /// The short name used on the command line and in the peer directory (`ns`).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Is => "is",
            Role::Gs => "gs",
            Role::Ns => "ns",
            Role::Js => "js",
            Role::As => "as",
        }
    }

    /// The long name, as used in configuration keys (`network-server`).
    pub fn long_name(self) -> &'static str {
        match self {
            Role::Is => "identity-server",
            Role::Gs => "gateway-server",
            Role::Ns => "network-server",
            Role::Js => "join-server",
            Role::As => "application-server",
        }
    }

    /// The name under which the gRPC health service reports this role (`tern.ns`).
    pub fn health_service_name(self) -> String {
        format!("tern.{}", self.as_str())
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A role name that is not one of the five.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role {0:?}; valid roles are is, gs, ns, js, as")]
pub struct UnknownRole(pub String);

impl FromStr for Role {
    type Err = UnknownRole;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s || r.long_name() == s)
            .ok_or_else(|| UnknownRole(s.to_owned()))
    }
}

/// A one-way switch: once triggered, every [`Shutdown::wait`] returns.
#[derive(Clone)]
pub struct Shutdown {
    tx: Arc<watch::Sender<bool>>,
}

impl Shutdown {
    /// A switch that has not been triggered.
    pub fn new() -> Self {
        Self {
            tx: Arc::new(watch::Sender::new(false)),
        }
    }

    /// Starts the shutdown; idempotent.
    pub fn trigger(&self) {
        self.tx.send_replace(true);
    }

    /// Whether the shutdown has started.
    pub fn is_triggered(&self) -> bool {
        *self.tx.borrow()
    }

    /// Returns once the shutdown has started.
    pub async fn wait(&self) {
        let mut rx = self.tx.subscribe();
        // The sender lives in `self`, so the channel cannot close while we wait.
        let _ = rx.wait_for(|triggered| *triggered).await;
    }
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Shutdown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shutdown")
            .field("triggered", &self.is_triggered())
            .finish()
    }
}

/// Whether a role (or a backing service) can serve traffic now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    /// It serves traffic.
    Ready,
    /// It does not serve traffic; the reason is shown on `/readyz`.
    NotReady(String),
    /// It serves traffic, but something is wrong that operators should see on `/readyz`
    /// (e.g. etcd is lost and the last known peers are used).
    Degraded(String),
}

impl Readiness {
    /// Whether it serves traffic ([`Readiness::Ready`] or [`Readiness::Degraded`]).
    pub fn is_ready(&self) -> bool {
        !matches!(self, Readiness::NotReady(_))
    }
}

/// Where a role is in its lifecycle: created, started or stopped; its readiness follows.
#[derive(Debug, Default)]
pub struct RunState(std::sync::atomic::AtomicU8);

impl RunState {
    const CREATED: u8 = 0;
    const STARTED: u8 = 1;
    const STOPPED: u8 = 2;

    /// A role not started yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Marks the role started.
    pub fn started(&self) {
        self.0
            .store(Self::STARTED, std::sync::atomic::Ordering::SeqCst);
    }

    /// Marks the role stopped.
    pub fn stopped(&self) {
        self.0
            .store(Self::STOPPED, std::sync::atomic::Ordering::SeqCst);
    }

    /// Ready between start and shutdown; "starting" before, "stopped" after.
    pub fn readiness(&self) -> Readiness {
        match self.0.load(std::sync::atomic::Ordering::SeqCst) {
            Self::STARTED => Readiness::Ready,
            Self::CREATED => Readiness::NotReady("starting".to_owned()),
            _ => Readiness::NotReady("stopped".to_owned()),
        }
    }
}

/// Wakes whoever watches readiness (health service, `/readyz` followers) after a change.
#[derive(Clone, Debug)]
pub struct ReadinessSignal {
    tx: Arc<watch::Sender<()>>,
}

impl ReadinessSignal {
    /// A signal nobody watches yet.
    pub fn new() -> Self {
        Self {
            tx: Arc::new(watch::Sender::new(())),
        }
    }

    /// Says that some readiness may have changed.
    pub fn notify(&self) {
        self.tx.send_replace(());
    }

    /// A receiver that wakes on [`ReadinessSignal::notify`].
    pub fn subscribe(&self) -> watch::Receiver<()> {
        self.tx.subscribe()
    }
}

impl Default for ReadinessSignal {
    fn default() -> Self {
        Self::new()
    }
}

/// The process's Prometheus registry, shared by the roles.
#[derive(Clone, Default)]
pub struct MetricsRegistry {
    registry: Arc<RwLock<Registry>>,
}

impl MetricsRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Lets a role register its metrics under the prefix `tern_<role>_`.
    pub fn register_role(&self, role: Role, register: impl FnOnce(&mut Registry)) {
        self.register_prefixed(role.as_str(), register);
    }

    /// Registers metrics under the prefix `tern_<prefix>_` (e.g. `store`, `events`).
    pub fn register_prefixed(&self, prefix: &str, register: impl FnOnce(&mut Registry)) {
        let mut registry = self.registry.write().expect("metrics registry lock");
        let sub = registry
            .sub_registry_with_prefix("tern")
            .sub_registry_with_prefix(prefix);
        register(sub);
    }

    /// Registers metrics at the top level, with their full names.
    pub fn register_root(&self, register: impl FnOnce(&mut Registry)) {
        register(&mut self.registry.write().expect("metrics registry lock"));
    }

    /// Adds a collector that produces metrics on each scrape.
    pub fn register_collector(&self, collector: Box<dyn Collector>) {
        self.registry
            .write()
            .expect("metrics registry lock")
            .register_collector(collector);
    }

    /// Runs `f` with read access to the registry, e.g. to encode it.
    pub fn with_registry<T>(&self, f: impl FnOnce(&Registry) -> T) -> T {
        f(&self.registry.read().expect("metrics registry lock"))
    }
}

impl fmt::Debug for MetricsRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MetricsRegistry")
    }
}

/// What the process hands each role when it starts it.
#[derive(Clone, Debug)]
pub struct RoleContext {
    /// The data directory, already created.
    pub data_dir: PathBuf,
    /// The process's metrics.
    pub metrics: MetricsRegistry,
    /// Fires when the process begins to shut down; long-lived work (streams) ends then.
    pub shutdown: Shutdown,
    /// Lets a role say its readiness changed, so health reports update at once.
    pub readiness: ReadinessSignal,
}

/// A role's lifecycle, driven by `tern start`.
#[async_trait::async_trait]
pub trait RoleService: Send + Sync {
    /// Which role this is.
    fn role(&self) -> Role;

    /// Adds the role's gRPC services to the process's shared gRPC server. Called once,
    /// before the server starts and before [`RoleService::start`]; a service must answer
    /// `UNAVAILABLE` until the role has started.
    fn grpc_services(&self, _routes: &mut tonic::service::RoutesBuilder) {}

    /// HTTP routes the role serves on the process's shared HTTP server (e.g. the webhook
    /// downlink API), merged at the root; paths must not collide with `/api/v3` routes derived
    /// from the gRPC API, `/healthz`, `/readyz` or `/metrics`. Called once, before start.
    fn http_routes(&self) -> Option<axum::Router> {
        None
    }

    /// Starts the role; returns once it can serve, or with the reason it cannot.
    async fn start(&self, ctx: &RoleContext) -> anyhow::Result<()>;

    /// Reports whether the role serves traffic; called often, so it must be cheap.
    fn readiness(&self) -> Readiness;

    /// Finishes in-flight work and flushes state; called after the servers have drained.
    /// Also called, in reverse start order, for a role whose start was cut short.
    async fn shutdown(&self) -> anyhow::Result<()>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_names_parse_both_ways() {
        for role in Role::ALL {
            assert_eq!(role.as_str().parse::<Role>(), Ok(role));
            assert_eq!(role.long_name().parse::<Role>(), Ok(role));
        }
        let err = "xs".parse::<Role>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown role \"xs\"; valid roles are is, gs, ns, js, as"
        );
        assert_eq!(Role::Js.health_service_name(), "tern.js");
    }

    #[tokio::test]
    async fn shutdown_wait_returns_after_trigger_even_if_late() {
        let s = Shutdown::new();
        assert!(!s.is_triggered());
        let waiter = tokio::spawn({
            let s = s.clone();
            async move { s.wait().await }
        });
        s.trigger();
        waiter.await.unwrap();
        s.wait().await;
        assert!(s.is_triggered());
    }
}
