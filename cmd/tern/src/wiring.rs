//! Builds the process from the configuration: the backing services (store, event bus, peer
//! directory), the started roles, and for each link between roles either the in-process
//! handle or a gRPC client. The role code never knows which.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use tern_applicationserver::ApplicationServer;
use tern_cluster::auth::{Authenticator, CallCredentials, ClusterKeys};
use tern_cluster::directory::{self, Peer, PeerDirectory, PeerRole};
use tern_cluster::links::AsNs;
use tern_cluster::links::grpc::DirectoryAsNs;
use tern_cluster::role::{Readiness, Role, RoleService};
use tern_events::EventBus;
use tern_networkserver::NetworkServer;
use tern_store::Store;
use tracing::{info, warn};

use crate::config::Config;
use crate::lifecycle::FrameRole;
use crate::readiness::BackingService;

/// How often the store is pinged for `/readyz`.
const STORE_PING_INTERVAL: Duration = Duration::from_secs(5);

/// Everything a started process is made of.
pub struct Process {
    /// The started roles, in start order.
    pub roles: Vec<Arc<dyn RoleService>>,
    /// The backing services `/readyz` reports on.
    pub backing: Vec<Arc<dyn BackingService>>,
    /// The store, when a started role needs one.
    pub store: Option<Store>,
    /// The event bus.
    pub events: EventBus,
    /// The peer directory.
    pub directory: Arc<dyn PeerDirectory>,
    /// This process's name in the cluster.
    pub instance_id: String,
}

impl Process {
    /// Stops what the roles no longer need: the directory, the event bus and the store, in
    /// that order (deregister first, flush last).
    pub async fn close(&self) -> anyhow::Result<()> {
        self.directory.shutdown().await;
        if let Err(e) = self.events.flush().await {
            warn!("flushing events: {e}");
        }
        if let Some(store) = &self.store {
            store.close().await.context("flushing the store")?;
        }
        Ok(())
    }
}

/// The instance ID and advertised gRPC address of this process.
fn identity(config: &Config, grpc_addr: SocketAddr) -> (String, String) {
    let host = gethostname::gethostname().to_string_lossy().into_owned();
    let port = grpc_addr.port();
    let instance_id = if config.cluster.instance_id.is_empty() {
        format!("{host}:{port}")
    } else {
        config.cluster.instance_id.clone()
    };
    let address = if config.cluster.advertise_address.is_empty() {
        format!("http://{host}:{port}")
    } else {
        config.cluster.advertise_address.clone()
    };
    (instance_id, address)
}

/// The cluster keys, or a random key of this process alone when none is configured: nothing
/// outside the process can then call its internal services, which is right for a process
/// with every role (and a clear refusal for anyone who forgot to configure keys).
fn cluster_keys(config: &Config) -> anyhow::Result<(ClusterKeys, bool)> {
    if config.cluster.keys.is_empty() {
        let mut random = [0u8; 24];
        getrandom::fill(&mut random).context("cannot generate a process cluster key")?;
        let key = hex::encode(random);
        return Ok((ClusterKeys::new(&[key])?, false));
    }
    let keys: Vec<&str> = config.cluster.keys.iter().map(|k| k.expose()).collect();
    let keys = ClusterKeys::new(&keys).map_err(|e| anyhow::anyhow!("cluster.keys: {e}"))?;
    Ok((keys, true))
}

/// Assembles the process for `roles`, its gRPC server listening on `grpc_addr`.
pub async fn assemble(
    config: &Config,
    roles: &[Role],
    grpc_addr: SocketAddr,
) -> anyhow::Result<Process> {
    let (instance_id, address) = identity(config, grpc_addr);
    let (keys, keys_configured) = cluster_keys(config)?;
    let auth = Authenticator::new(keys.clone());

    let mut backing: Vec<Arc<dyn BackingService>> = Vec::new();
    let needs_store = roles
        .iter()
        .any(|r| matches!(r, Role::Is | Role::Ns | Role::Js | Role::As));
    let store = if needs_store {
        let store = Store::open(&config.store, &config.data_dir)
            .await
            .with_context(|| format!("opening the {} store", config.store.backend))?;
        backing.push(Arc::new(StoreHealth::spawn(store.clone())));
        Some(store)
    } else {
        None
    };
    let events = EventBus::connect(&config.events).await?;
    backing.push(Arc::new(EventsHealth(events.clone())));

    let local = Peer {
        instance_id: instance_id.clone(),
        address,
        roles: roles.iter().map(|&r| PeerRole::from(r)).collect(),
    };
    let directory = directory::open(&config.cluster.directory(), local).await?;
    backing.push(Arc::new(DirectoryHealth(directory.clone())));

    let mut services: Vec<Arc<dyn RoleService>> = Vec::new();
    let mut ns_link: Option<Arc<dyn AsNs>> = None;
    if roles.contains(&Role::Ns) {
        let ns = NetworkServer::new(auth.clone());
        ns_link = Some(ns.as_link());
        services.push(Arc::new(ns));
    }
    for &role in roles {
        match role {
            Role::Ns => {}
            Role::As => {
                let link = match &ns_link {
                    Some(local) => local.clone(),
                    None => remote_ns_link(config, &keys, keys_configured, &directory)?,
                };
                services.push(Arc::new(ApplicationServer::new(
                    link,
                    config.application_server.link.clone(),
                    instance_id.clone(),
                )));
            }
            other => services.push(Arc::new(FrameRole::new(other))),
        }
    }
    // Start order is Role::ALL order whatever order they were built in.
    services.sort_by_key(|s| s.role());
    Ok(Process {
        roles: services,
        backing,
        store,
        events,
        directory,
        instance_id,
    })
}

/// The AS's link to a Network Server in another process, authenticated by the application
/// API key when one is configured (an AS outside the cluster), else by the cluster key.
fn remote_ns_link(
    config: &Config,
    keys: &ClusterKeys,
    keys_configured: bool,
    directory: &Arc<dyn PeerDirectory>,
) -> anyhow::Result<Arc<dyn AsNs>> {
    let credentials = match &config.application_server.network_server_api_key {
        Some(key) => CallCredentials::api_key(key.expose())
            .map_err(|e| anyhow::anyhow!("application-server.network-server-api-key: {e}"))?,
        None if keys_configured => keys.credentials(),
        None => bail!(
            "the Application Server needs a Network Server, which is not started in this process: \
             set cluster.keys (shared with the Network Server's process) or \
             application-server.network-server-api-key (an application API key with \
             application:link)"
        ),
    };
    if config.cluster.etcd.is_none() && config.cluster.network_server.is_none() {
        bail!(
            "the Application Server needs a Network Server, which is not started in this process: \
             set cluster.network-server = \"http://host:1884\" or configure cluster.etcd"
        );
    }
    info!("the Application Server links to a Network Server in another process");
    Ok(Arc::new(DirectoryAsNs::new(directory.clone(), credentials)))
}

/// The store's health, pinged in the background so that `/readyz` stays cheap.
struct StoreHealth {
    state: Arc<Mutex<Readiness>>,
}

impl StoreHealth {
    fn spawn(store: Store) -> Self {
        let state = Arc::new(Mutex::new(Readiness::Ready));
        let shared = state.clone();
        tokio::spawn(async move {
            let mut last_ok = true;
            loop {
                tokio::time::sleep(STORE_PING_INTERVAL).await;
                let result = store.health().await;
                let readiness = match &result {
                    Ok(()) => Readiness::Ready,
                    Err(e) => Readiness::NotReady(e.to_string()),
                };
                match (&result, last_ok) {
                    (Err(e), true) => warn!("the store is not reachable: {e}"),
                    (Ok(()), false) => info!("the store is reachable again"),
                    _ => {}
                }
                last_ok = result.is_ok();
                *shared.lock().expect("store health lock") = readiness;
            }
        });
        Self { state }
    }
}

impl BackingService for StoreHealth {
    fn name(&self) -> &'static str {
        "store"
    }

    fn readiness(&self) -> Readiness {
        self.state.lock().expect("store health lock").clone()
    }
}

struct EventsHealth(EventBus);

impl BackingService for EventsHealth {
    fn name(&self) -> &'static str {
        "events"
    }

    fn readiness(&self) -> Readiness {
        match self.0.health() {
            Ok(()) => Readiness::Ready,
            Err(reason) => Readiness::NotReady(reason),
        }
    }
}

struct DirectoryHealth(Arc<dyn PeerDirectory>);

impl BackingService for DirectoryHealth {
    fn name(&self) -> &'static str {
        "directory"
    }

    fn readiness(&self) -> Readiness {
        // A lost etcd does not stop the process: it serves with the last known peers.
        let health = self.0.health();
        if health.ok {
            Readiness::Ready
        } else {
            Readiness::Degraded(health.reason.unwrap_or_else(|| "unhealthy".to_owned()))
        }
    }
}
