//! What the IS tests share: a store on either backend, a running IS on a loopback gRPC
//! port, clients with credentials, and a `nats-server`.

#![allow(dead_code)]

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tern_cluster::auth::{CallCredentials, ClusterKeys};
use tern_cluster::role::{MetricsRegistry, ReadinessSignal, RoleContext, RoleService, Shutdown};
use tern_events::{EventBus, EventsConfig, NatsConfig};
use tern_identityserver::{IdentityServer, IsConfig, IsDeps};
use tern_store::{Backend, Store, StoreConfig};
use tokio::net::TcpListener;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Endpoint, Server};

/// The cluster key of the tests.
pub const CLUSTER_KEY: &str = "is-test-cluster-key-0123456789";

/// A cheap argon2 cost, so that tests creating many keys stay fast.
pub fn config() -> IsConfig {
    IsConfig {
        hash_memory_kib: 64,
        hash_iterations: 1,
        ..Default::default()
    }
}

pub fn keys() -> ClusterKeys {
    ClusterKeys::new(&[CLUSTER_KEY]).unwrap()
}

/// Where a store lives: the embedded one in a temp dir, or a fresh PostgreSQL schema.
pub struct StoreSpec {
    pub dir: tempfile::TempDir,
    pub config: StoreConfig,
}

impl StoreSpec {
    pub fn embedded() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
            config: StoreConfig::default(),
        }
    }

    /// A fresh schema on `TERN_TEST_POSTGRES_URL`; `None` (and a loud note) when it is not
    /// set, a failure when `CI` is set.
    pub fn postgres(case: &str) -> Option<Self> {
        let url = match std::env::var("TERN_TEST_POSTGRES_URL") {
            Ok(u) if !u.is_empty() => u,
            _ => {
                if std::env::var_os("CI").is_some_and(|v| !v.is_empty()) {
                    panic!(
                        "TERN_TEST_POSTGRES_URL is not set but CI is: export \
                         TERN_TEST_POSTGRES_URL=\"$(scripts/test-postgres.sh start)\""
                    );
                }
                eprintln!(
                    "\n!!!!!!!! SKIPPED postgres::{case}: TERN_TEST_POSTGRES_URL is not set !!!!!!!!\n"
                );
                return None;
            }
        };
        static N: AtomicU32 = AtomicU32::new(0);
        let mut schema = format!(
            "is_{}_{}_{case}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        schema.truncate(63);
        let mut config = StoreConfig {
            backend: Backend::Postgres,
            ..Default::default()
        };
        config.postgres.url = url;
        config.postgres.schema = schema;
        config.postgres.pool_size = 4;
        Some(Self {
            dir: tempfile::tempdir().unwrap(),
            config,
        })
    }

    pub async fn open(&self) -> Store {
        Store::open(&self.config, self.dir.path()).await.unwrap()
    }
}

/// Both backends (PostgreSQL when configured).
pub fn backends(case: &str) -> Vec<StoreSpec> {
    let mut out = vec![StoreSpec::embedded()];
    out.extend(StoreSpec::postgres(case));
    out
}

/// A started IS serving gRPC on a loopback port.
pub struct Running {
    pub is: Arc<IdentityServer>,
    pub channel: Channel,
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    pub data_dir: PathBuf,
    pub shutdown: Shutdown,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

pub async fn start(store: Store, events: EventBus, data_dir: &Path, config: IsConfig) -> Running {
    let is = Arc::new(
        IdentityServer::new(IsDeps {
            config,
            store,
            events,
            keys: keys(),
            data_dir: data_dir.to_owned(),
        })
        .unwrap(),
    );
    let shutdown = Shutdown::new();
    let mut routes = tonic::service::RoutesBuilder::default();
    is.grpc_services(&mut routes);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn({
        let shutdown = shutdown.clone();
        let routes = routes.routes();
        async move {
            Server::builder()
                .add_routes(routes)
                .serve_with_incoming_shutdown(TcpIncoming::from(listener), shutdown.wait())
                .await
                .unwrap();
        }
    });
    let ctx = RoleContext {
        data_dir: data_dir.to_owned(),
        metrics: MetricsRegistry::new(),
        shutdown: shutdown.clone(),
        readiness: ReadinessSignal::new(),
    };
    is.start(&ctx).await.unwrap();
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_lazy();
    Running {
        is,
        channel,
        url: format!("http://{addr}"),
        data_dir: data_dir.to_owned(),
        shutdown,
    }
}

/// The credentials of a call: an API key or token, or the cluster key.
#[derive(Clone, Debug)]
pub enum Cred {
    Bearer(String),
    Cluster,
}

impl Cred {
    pub fn creds(&self) -> CallCredentials {
        match self {
            Cred::Bearer(t) => CallCredentials::api_key(t).unwrap(),
            Cred::Cluster => keys().credentials(),
        }
    }
}

/// A channel carrying `cred`.
pub fn with(channel: &Channel, cred: &Cred) -> InterceptedService<Channel, CallCredentials> {
    InterceptedService::new(channel.clone(), cred.creds())
}

/// The admin API key and password from `bootstrap.txt`.
pub fn bootstrap_credentials(data_dir: &Path) -> (String, String) {
    let text = std::fs::read_to_string(data_dir.join("bootstrap.txt")).unwrap();
    let value = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{key} = \"")))
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or_else(|| panic!("no {key} in bootstrap.txt:\n{text}"))
            .to_owned()
    };
    (value("password"), value("api-key"))
}

/// Waits up to `within` for `f` to be true.
pub async fn eventually<F, Fut>(within: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if f().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A `nats-server` on a free loopback port; killed on drop.
pub struct NatsServer {
    child: Child,
    pub url: String,
    _dir: tempfile::TempDir,
}

impl NatsServer {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let binary = ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .unwrap_or("nats-server");
        let mut child = Command::new(binary)
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {binary}: {e}"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(child.try_wait().unwrap().is_none(), "nats-server exited");
            assert!(Instant::now() < deadline, "nats-server did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            child,
            url: format!("nats://127.0.0.1:{port}"),
            _dir: dir,
        }
    }

    pub fn events_config(&self) -> EventsConfig {
        EventsConfig {
            nats: Some(NatsConfig::new(&self.url)),
            ..Default::default()
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
