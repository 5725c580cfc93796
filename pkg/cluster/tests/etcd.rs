//! The etcd directory against a real etcd (Debian's `etcd-server`, `/usr/bin/etcd`, or the
//! binary named by `TERN_TEST_ETCD`), started by each test on free loopback ports.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use etcd_client::{Client, GetOptions};
use lorawan::DevAddr;
use tern_cluster::directory::{
    DirectoryError, EtcdConfig, EtcdDirectory, Peer, PeerDirectory, PeerRole,
};
use tern_cluster::shard;
use tracing_subscriber::layer::SubscriberExt;

/// A single-member etcd in a temporary directory, killed on drop.
struct Etcd {
    child: Option<Child>,
    dir: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn etcd_binary() -> PathBuf {
    let path =
        std::env::var_os("TERN_TEST_ETCD").map_or_else(|| "/usr/bin/etcd".into(), PathBuf::from);
    assert!(
        path.exists(),
        "etcd not found at {}: install Debian's `etcd-server` package or set TERN_TEST_ETCD",
        path.display()
    );
    path
}

impl Etcd {
    async fn start() -> Self {
        let mut etcd = Self {
            child: None,
            dir: tempfile::tempdir().unwrap(),
            client_port: free_port(),
            peer_port: free_port(),
        };
        etcd.launch().await;
        etcd
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// Starts etcd on the same data directory and ports, and waits until it answers.
    async fn launch(&mut self) {
        let client = self.url();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("etcd.log"))
            .unwrap();
        let child = Command::new(etcd_binary())
            .arg("--name=test")
            .arg(format!(
                "--data-dir={}",
                self.dir.path().join("data").display()
            ))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=test={peer}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("cannot start etcd");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if self.answers().await {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("etcd exited with {status}:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "etcd did not answer within 20s:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn answers(&self) -> bool {
        let attempt = async {
            let mut client = Client::connect([self.url()], None).await.ok()?;
            client.get("probe", None).await.ok()
        };
        matches!(
            tokio::time::timeout(Duration::from_secs(1), attempt).await,
            Ok(Some(_))
        )
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }

    fn config(&self, lease_ttl_secs: u64) -> EtcdConfig {
        EtcdConfig {
            endpoints: vec![self.url()],
            prefix: "/tern-test".into(),
            lease_ttl: Duration::from_secs(lease_ttl_secs),
            ..EtcdConfig::default()
        }
    }

    /// The instance IDs registered in etcd right now, with their lease IDs.
    async fn registrations(&self) -> Vec<(String, i64)> {
        let mut client = Client::connect([self.url()], None).await.unwrap();
        let found = client
            .get("/tern-test/peers/", Some(GetOptions::new().with_prefix()))
            .await
            .unwrap();
        found
            .kvs()
            .iter()
            .map(|kv| {
                let key = kv.key_str().unwrap();
                (
                    key.trim_start_matches("/tern-test/peers/").to_owned(),
                    kv.lease(),
                )
            })
            .collect()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Every log event of `tern_cluster` in this binary, as `LEVEL message=… field=value …`.
static LOGS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Records log events into [`LOGS`]; installed once for the whole binary.
struct Recorder;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Recorder {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        struct Line(String);
        impl tracing::field::Visit for Line {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                use std::fmt::Write;
                let _ = write!(self.0, " {}={value:?}", field.name());
            }
        }
        // Only ours: the HTTP/2 stack traces every frame.
        if !event.metadata().target().starts_with("tern_cluster") {
            return;
        }
        let mut line = Line(event.metadata().level().to_string());
        event.record(&mut line);
        LOGS.lock().unwrap().push(line.0);
    }
}

fn record_logs() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        tracing::subscriber::set_global_default(tracing_subscriber::registry().with(Recorder))
            .unwrap();
    });
}

/// How many recorded events contain every one of `parts`.
fn logged(parts: &[&str]) -> usize {
    let logs = LOGS.lock().unwrap();
    logs.iter()
        .filter(|line| parts.iter().all(|p| line.contains(p)))
        .count()
}

fn peer(id: &str, port: u16, roles: &[PeerRole]) -> Peer {
    Peer {
        instance_id: id.into(),
        address: format!("http://127.0.0.1:{port}"),
        roles: roles.iter().copied().collect(),
    }
}

fn ids(dir: &dyn PeerDirectory, role: PeerRole) -> Vec<String> {
    dir.peers(role).into_iter().map(|p| p.instance_id).collect()
}

/// Polls `check` every 50ms until it holds; panics with `what` after `within`.
async fn eventually(what: &str, within: Duration, mut check: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < within, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directories_see_each_other_and_stopped_peers_leave() {
    let etcd = Etcd::start().await;
    let ns_a = EtcdDirectory::start(
        etcd.config(2),
        peer("ns-a", 1884, &[PeerRole::NetworkServer]),
    )
    .await
    .unwrap();
    assert_eq!(ns_a.local().instance_id, "ns-a");

    // ns-b runs on its own runtime so that it can "crash": dropping the runtime stops its
    // keep-alives without deregistering.
    let crashing = tokio::runtime::Runtime::new().unwrap();
    let ns_b = crashing
        .spawn(EtcdDirectory::start(
            etcd.config(2),
            peer(
                "ns-b",
                1885,
                &[PeerRole::NetworkServer, PeerRole::GatewayServer],
            ),
        ))
        .await
        .unwrap()
        .unwrap();

    let both = ["ns-a".to_owned(), "ns-b".to_owned()];
    eventually("ns-a sees ns-b", Duration::from_secs(5), || {
        ids(&ns_a, PeerRole::NetworkServer) == both
    })
    .await;
    assert_eq!(ids(&ns_b, PeerRole::NetworkServer), both);
    assert_eq!(ids(&ns_a, PeerRole::GatewayServer), ["ns-b"]);
    assert!(ns_a.health().ok && ns_b.health().ok);

    // Both compute the same shard owners from the same live set.
    for i in 0..100u32 {
        let addr = DevAddr::from_u32(i.wrapping_mul(0x9E37_79B9));
        let a = shard::by_dev_addr(addr, &ns_a.peers(PeerRole::NetworkServer)).cloned();
        let b = shard::by_dev_addr(addr, &ns_b.peers(PeerRole::NetworkServer)).cloned();
        assert_eq!(a, b);
    }

    // A change wakes subscribers.
    let mut changes = ns_a.subscribe();
    changes.borrow_and_update();
    let gs = EtcdDirectory::start(
        etcd.config(2),
        peer("gs-c", 1886, &[PeerRole::GatewayServer]),
    )
    .await
    .unwrap();
    tokio::time::timeout(Duration::from_secs(5), changes.changed())
        .await
        .expect("no change notified")
        .unwrap();
    eventually("ns-a sees gs-c", Duration::from_secs(5), || {
        ids(&ns_a, PeerRole::GatewayServer) == ["gs-c", "ns-b"]
    })
    .await;

    // A graceful stop deregisters at once, well before the lease would expire.
    gs.shutdown().await;
    let took = eventually("gs-c leaves", Duration::from_secs(5), || {
        ids(&ns_a, PeerRole::GatewayServer) == ["ns-b"]
    })
    .await;
    assert!(
        took < Duration::from_secs(2),
        "deregistration took {took:?}"
    );

    // A crash leaves the registration until its lease (2s) expires.
    crashing.shutdown_background();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        ids(&ns_a, PeerRole::NetworkServer),
        both,
        "gone before its lease expired"
    );
    eventually("crashed ns-b expires", Duration::from_secs(8), || {
        ids(&ns_a, PeerRole::NetworkServer) == ["ns-a"]
    })
    .await;
    drop(ns_b);
    assert!(ns_a.health().ok);

    ns_a.shutdown().await;
    assert!(etcd.registrations().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_etcd_keeps_last_peers_then_recovers() {
    record_logs();
    let mut etcd = Etcd::start().await;
    let ns_a = EtcdDirectory::start(
        etcd.config(2),
        peer("ns-a", 1884, &[PeerRole::NetworkServer]),
    )
    .await
    .unwrap();
    let ns_b = EtcdDirectory::start(
        etcd.config(2),
        peer("ns-b", 1885, &[PeerRole::NetworkServer]),
    )
    .await
    .unwrap();
    let both = ["ns-a".to_owned(), "ns-b".to_owned()];
    eventually("ns-a sees ns-b", Duration::from_secs(5), || {
        ids(&ns_a, PeerRole::NetworkServer) == both
    })
    .await;

    etcd.kill();
    eventually("ns-a reports etcd lost", Duration::from_secs(5), || {
        !ns_a.health().ok
    })
    .await;
    let health = ns_a.health();
    let reason = health.reason.unwrap();
    assert!(reason.starts_with("etcd unreachable for "), "{reason}");
    assert!(
        reason.ends_with("serving with the last known 2 peers"),
        "{reason}"
    );
    // Longer than the lease: the last known peers stay.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(ids(&ns_a, PeerRole::NetworkServer), both);
    assert_eq!(ids(&ns_b, PeerRole::NetworkServer), both);
    assert!(!ns_b.health().ok);
    // Retried many times meanwhile, but said once.
    let url = etcd.url();
    let lost = ["WARN", "lost etcd", "/tern-test/peers/ns-a", url.as_str()];
    assert_eq!(logged(&lost), 1, "{:#?}", LOGS.lock().unwrap());

    etcd.launch().await;
    eventually("ns-a recovers", Duration::from_secs(10), || {
        ns_a.health().ok
    })
    .await;
    eventually("ns-b recovers", Duration::from_secs(10), || {
        ns_b.health().ok
    })
    .await;
    assert_eq!(ids(&ns_a, PeerRole::NetworkServer), both);
    let back = [
        "INFO",
        "etcd reachable again",
        "/tern-test/peers/ns-a",
        url.as_str(),
    ];
    assert_eq!(logged(&back), 1);
    // Registered anew under live leases: they survive well past the old leases' TTL.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let registered = etcd.registrations().await;
    assert_eq!(
        registered
            .iter()
            .map(|(id, _)| id.as_str())
            .collect::<Vec<_>>(),
        ["ns-a", "ns-b"]
    );
    assert!(registered.iter().all(|(_, lease)| *lease != 0));
    assert_eq!(ids(&ns_a, PeerRole::NetworkServer), both);
    assert!(ns_a.health().ok);
    assert_eq!(logged(&lost), 1);
    assert_eq!(logged(&back), 1);

    ns_a.shutdown().await;
    ns_b.shutdown().await;
    assert!(etcd.registrations().await.is_empty());
}

#[tokio::test]
async fn start_fails_clearly_without_etcd() {
    let config = EtcdConfig {
        endpoints: vec![format!("127.0.0.1:{}", free_port())],
        lease_ttl: Duration::from_secs(2),
        ..EtcdConfig::default()
    };
    let err = EtcdDirectory::start(config, peer("ns-a", 1884, &[PeerRole::NetworkServer]))
        .await
        .unwrap_err();
    assert!(matches!(err, DirectoryError::Etcd { .. }), "{err}");
    let message = err.to_string();
    assert!(
        message.starts_with("cannot register in etcd at http://127.0.0.1:"),
        "{message}"
    );
}

#[tokio::test]
async fn local_peer_is_checked_before_registering() {
    let config = EtcdConfig {
        endpoints: vec!["127.0.0.1:1".into()],
        ..EtcdConfig::default()
    };
    let err = EtcdDirectory::start(
        config.clone(),
        peer("ns/a", 1884, &[PeerRole::NetworkServer]),
    )
    .await
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid local peer: instance ID \"ns/a\": 1 to 128 letters, digits, `.`, `_` or `-`"
    );
    let err = EtcdDirectory::start(config, peer("ns-a", 1884, &[]))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid local peer: instance \"ns-a\" has no role to register"
    );
}
