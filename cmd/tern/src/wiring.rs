//! Builds the process from the configuration: the backing services (store, event bus, peer
//! directory), the started roles, and for each link between roles either the in-process
//! handle or a gRPC client. The role code never knows which.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use tern_applicationserver::{ApplicationServer, AsDeps};
use tern_cluster::auth::{
    ApiKeyError, ApiKeyVerifier, AuthInfo, Authenticator, CallCredentials, ClusterKeys, IsAddress,
    RemoteVerifier,
};
use tern_cluster::directory::{self, Peer, PeerDirectory, PeerRole};
use tern_cluster::links::grpc::{DirectoryAsNs, DirectoryGsNs};
use tern_cluster::links::{AsJs, AsNs, DirectoryNsGs, GsIs, GsNs, NsGs, NsJs};
use tern_cluster::role::{Readiness, Role, RoleService};
use tern_events::EventBus;
use tern_gatewayserver::{GatewayServer, GsDeps};
use tern_identityserver::{IdentityServer, IsDeps};
use tern_joinserver::{JoinServer, JsDeps};
use tern_networkserver::{NetworkServer, NsDeps};
use tern_store::Store;
use tracing::{info, warn};

use crate::config::Config;
use crate::readiness::BackingService;
use crate::remote::Remote;

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
    /// Authenticates the callers of every gRPC service of the process.
    pub auth: Authenticator,
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
    let needs = |role: Role| roles.contains(&role);
    let need_store = || {
        store
            .clone()
            .context("a role that needs the store started without one")
    };
    let credentials = keys.credentials();
    // The IS first: its verifier authenticates API keys and tokens for every role here.
    let is = if needs(Role::Is) {
        Some(Arc::new(
            IdentityServer::new(IsDeps {
                config: config.identity_server.clone(),
                store: need_store()?,
                events: events.clone(),
                keys: keys.clone(),
                data_dir: config.data_dir.clone(),
            })
            .context("identity-server")?,
        ))
    } else {
        None
    };
    let verifier = api_key_verifier(config, &keys, is.as_deref(), &directory);
    let auth = match &verifier {
        Some(verifier) => Authenticator::new(keys.clone()).with_api_key_verifier(verifier.clone()),
        // API keys are then refused as not accepted by this server.
        None => Authenticator::new(keys.clone()),
    };
    // The GS and AS check keys themselves too (Basics Station, MQTT): same answer.
    let api_keys: Arc<dyn ApiKeyVerifier> = verifier.unwrap_or_else(|| Arc::new(NoIdentityServer));
    if let Some(is) = &is {
        services.push(is.clone());
    }

    // The JS: with no keys configured, its at-rest key and KEKs live in the data directory.
    let js_config = config
        .join_server
        .clone()
        .with_local_defaults(&config.data_dir);
    let js = if needs(Role::Js) {
        let js = Arc::new(
            JoinServer::new(JsDeps {
                config: js_config.clone(),
                store: need_store()?,
                events: events.clone(),
                auth: auth.clone(),
            })
            .context("join-server")?,
        );
        services.push(js.clone());
        Some(js)
    } else {
        None
    };
    let (ns_js, as_js): (Arc<dyn NsJs>, Arc<dyn AsJs>) = match &js {
        Some(js) => (js.ns_link(), js.as_link()),
        None => {
            let remote = Remote::new(directory.clone(), credentials.clone(), PeerRole::JoinServer);
            (remote.clone(), remote)
        }
    };

    let ns = if needs(Role::Ns) {
        let mut ns_config = config.network_server.clone();
        // An in-process JS wraps the network keys under its NS label: share that KEK.
        if let Some(js) = &js {
            share_kek(
                js,
                &js_config.ns_kek_label,
                &mut ns_config.key_encryption_keys,
            );
        }
        let ns = Arc::new(
            NetworkServer::with_deps(NsDeps {
                config: ns_config,
                store: need_store()?,
                events: events.clone(),
                auth: auth.clone(),
                js: ns_js,
                instance_id: instance_id.clone(),
            })
            .context("network-server")?,
        );
        services.push(ns.clone());
        Some(ns)
    } else {
        None
    };

    let gs = if needs(Role::Gs) {
        // In a cluster each uplink goes to the NS owning its shard; alone, to the local NS.
        let ns_link: Arc<dyn GsNs> = match &ns {
            Some(ns)
                if config.cluster.etcd.is_none() && config.cluster.network_server.is_none() =>
            {
                ns.gs_link()
            }
            local => Arc::new(DirectoryGsNs::new(
                directory.clone(),
                credentials.clone(),
                local.as_ref().map(|ns| (instance_id.clone(), ns.gs_link())),
            )),
        };
        let registry: Arc<dyn GsIs> = match &is {
            Some(is) => is.gs_link(),
            None => Remote::new(
                directory.clone(),
                credentials.clone(),
                PeerRole::IdentityServer,
            ),
        };
        let gs = Arc::new(GatewayServer::new(GsDeps {
            config: config.gateway_server.clone(),
            ns: ns_link,
            registry,
            api_keys: api_keys.clone(),
            events: events.clone(),
            instance_id: instance_id.clone(),
            auth: auth.clone(),
        }));
        services.push(gs.clone());
        Some(gs)
    } else {
        None
    };
    if let Some(ns) = &ns {
        let gs_link: Arc<dyn NsGs> = match &gs {
            // With etcd every GS registers under the instance ID it names in its uplinks:
            // each downlink goes to the GS its gateway is connected to. (A static directory
            // names peers by address, which no GS reports, so it keeps one GS.)
            _ if config.cluster.etcd.is_some() => {
                let link = DirectoryNsGs::new(directory.clone(), credentials.clone());
                Arc::new(match &gs {
                    Some(gs) => link.with_local(instance_id.clone(), gs.ns_link()),
                    None => link,
                })
            }
            Some(gs) => gs.ns_link(),
            None => Remote::new(
                directory.clone(),
                credentials.clone(),
                PeerRole::GatewayServer,
            ),
        };
        ns.set_gateway_server(gs_link)?;
    }

    if needs(Role::As) {
        let link = match &ns {
            Some(ns) => ns.as_link(),
            None => remote_ns_link(config, &keys, keys_configured, &directory)?,
        };
        let mut as_config = config.application_server.clone();
        // An in-process JS wraps AppSKeys under its AS label: share that KEK (never the NS).
        if let Some(js) = &js
            && let Some(kek) = js.kek(&js_config.as_kek_label)
        {
            as_config
                .keks
                .entry(js_config.as_kek_label.clone())
                .or_insert_with(|| {
                    tern_applicationserver::Secret::try_from(hex::encode(kek.expose()))
                        .expect("a KEK is never empty")
                });
        }
        services.push(Arc::new(
            ApplicationServer::with_deps(AsDeps {
                config: as_config,
                store: need_store()?,
                events: events.clone(),
                auth: auth.clone(),
                ns: link,
                js: Some(as_js),
                api_keys: api_keys.clone(),
                instance_id: instance_id.clone(),
            })
            .context("application-server")?,
        ));
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
        auth,
    })
}

/// Who verifies API keys and access tokens for this process: the IS of this process, else a
/// remote IS when one is configured (static address or etcd), else nobody.
fn api_key_verifier(
    config: &Config,
    keys: &ClusterKeys,
    is: Option<&IdentityServer>,
    directory: &Arc<dyn PeerDirectory>,
) -> Option<Arc<dyn ApiKeyVerifier>> {
    if let Some(is) = is {
        return Some(is.verifier());
    }
    if config.cluster.identity_server.is_some() || config.cluster.etcd.is_some() {
        info!("API keys are verified by the Identity Server in another process");
        return Some(Arc::new(RemoteVerifier::new(
            IsAddress::Directory(directory.clone()),
            keys.credentials(),
        )));
    }
    None
}

/// The verifier of a process that knows no Identity Server.
#[derive(Debug)]
struct NoIdentityServer;

#[async_trait::async_trait]
impl ApiKeyVerifier for NoIdentityServer {
    async fn verify(&self, _api_key: &str) -> Result<AuthInfo, ApiKeyError> {
        Err(ApiKeyError::Unavailable(
            "no Identity Server: start `is` in this process, or set cluster.identity-server \
             or cluster.etcd"
                .to_owned(),
        ))
    }
}

/// Puts the JS's KEK `label` into an NS's key-encryption keys, unless configured there.
fn share_kek(js: &JoinServer, label: &str, keks: &mut std::collections::BTreeMap<String, String>) {
    if label.is_empty() || keks.contains_key(label) {
        return;
    }
    if let Some(kek) = js.kek(label) {
        keks.insert(label.to_owned(), hex::encode(kek.expose()));
    }
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
