//! Test parts shared by the integration tests: an embedded store, a recording downlink sink
//! (the AS's side, which this crate does not own), a static API key verifier (the Identity
//! Server's side), and a real HTTP receiver on a loopback port.

#![allow(dead_code)]

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, Uri};
use tern_api::v3;
use tern_cluster::auth::{ApiKeyError, ApiKeyVerifier, AuthInfo, Entity};
use tern_integrations::{
    DownlinkSink, Integrations, IntegrationsConfig, IntegrationsDeps, Upstream, UpstreamKind,
};
use tern_store::{Store, StoreConfig};

/// How long a test waits for something that should happen.
pub const WAIT: Duration = Duration::from_secs(20);

/// Polls `f` until it is true; panics naming `what` after [`WAIT`].
pub async fn eventually(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Opens the embedded store in `dir`.
pub async fn open_store(dir: &Path) -> Store {
    Store::open(&StoreConfig::default(), dir)
        .await
        .expect("open embedded store")
}

/// A downlink push/replace received from an integration.
#[derive(Debug, Clone, PartialEq)]
pub struct Pushed {
    pub app: String,
    pub dev: String,
    pub replace: bool,
    pub body: serde_json::Value,
}

/// Records the downlinks it is given (stands in for the AS's queue).
#[derive(Debug, Default)]
pub struct RecordingSink {
    pub pushed: Mutex<Vec<Pushed>>,
}

impl RecordingSink {
    pub fn all(&self) -> Vec<Pushed> {
        self.pushed.lock().unwrap().clone()
    }
}

#[async_trait]
impl DownlinkSink for RecordingSink {
    async fn push(
        &self,
        application_id: &str,
        device_id: &str,
        replace: bool,
        body: serde_json::Value,
    ) -> Result<(), tonic::Status> {
        self.pushed.lock().unwrap().push(Pushed {
            app: application_id.into(),
            dev: device_id.into(),
            replace,
            body,
        });
        Ok(())
    }
}

/// API keys known by secret (stands in for the Identity Server).
#[derive(Debug, Default)]
pub struct StaticKeys(pub HashMap<String, AuthInfo>);

#[async_trait]
impl ApiKeyVerifier for StaticKeys {
    async fn verify(&self, api_key: &str) -> Result<AuthInfo, ApiKeyError> {
        self.0.get(api_key).cloned().ok_or(ApiKeyError::Unknown)
    }

    async fn rights_on(
        &self,
        _info: &AuthInfo,
        _entity: &Entity,
    ) -> Result<BTreeSet<String>, ApiKeyError> {
        Ok(BTreeSet::new())
    }
}

/// The keys of the tests: `down-key` (app-1, downlink right), `read-key` (app-1, read
/// only), `other-key` (app-2, downlink right), `admin-key` (app-1, settings).
pub fn keys() -> Arc<StaticKeys> {
    let app = |id: &str, rights: &[&str]| {
        AuthInfo::new(Entity::Application(id.into()), rights.iter().copied())
    };
    Arc::new(StaticKeys(HashMap::from([
        (
            "down-key".to_owned(),
            app("app-1", &["application:traffic:down:write"]),
        ),
        (
            "read-key".to_owned(),
            app("app-1", &["application:traffic:read"]),
        ),
        (
            "other-key".to_owned(),
            app("app-2", &["application:traffic:down:write"]),
        ),
        (
            "settings-key".to_owned(),
            app("app-1", &["application:settings:packages"]),
        ),
    ])))
}

/// Fast retries for tests.
pub fn fast_config() -> IntegrationsConfig {
    IntegrationsConfig {
        min_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(200),
        unhealthy_threshold: Duration::from_secs(3600),
        unhealthy_retry_interval: Duration::from_millis(500),
        request_timeout: Duration::from_secs(5),
        ..IntegrationsConfig::default()
    }
}

/// Builds integrations on `store`.
pub fn integrations(
    store: Store,
    config: IntegrationsConfig,
    sink: Arc<RecordingSink>,
) -> Integrations {
    Integrations::new(IntegrationsDeps {
        config,
        store,
        api_keys: keys(),
        downlinks: sink,
        public_url: "https://tern.example.com/".into(),
    })
    .expect("integrations")
}

/// An upstream message with body `{"n": n}`.
pub fn upstream(app: &str, dev: &str, kind: UpstreamKind, n: u32) -> Upstream {
    Upstream {
        application_id: app.into(),
        device_id: dev.into(),
        kind,
        payload: serde_json::to_vec(&serde_json::json!({
            "end_device_ids": {"device_id": dev, "application_ids": {"application_id": app}},
            "n": n,
        }))
        .unwrap()
        .into(),
        received_at: SystemTime::now(),
    }
}

/// A webhook of `app-1` sending uplinks to `{base}/up` and join-accepts to `{base}/join`.
pub fn webhook(id: &str, base_url: &str) -> v3::ApplicationWebhook {
    v3::ApplicationWebhook {
        ids: Some(v3::ApplicationWebhookIdentifiers {
            application_ids: Some(v3::ApplicationIdentifiers {
                application_id: "app-1".into(),
            }),
            webhook_id: id.into(),
        }),
        base_url: base_url.into(),
        headers: HashMap::from([("X-Custom".to_owned(), "yes".to_owned())]),
        downlink_api_key: "secret-downlink-key".into(),
        uplink_message: Some(v3::ApplicationWebhookMessage { path: "/up".into() }),
        join_accept: Some(v3::ApplicationWebhookMessage {
            path: "join".into(),
        }),
        ..Default::default()
    }
}

/// A request the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub headers: HeaderMap,
    pub body: serde_json::Value,
    /// Whether it was answered with a success.
    pub accepted: bool,
}

/// A real HTTP receiver on a loopback port; answers 503 to the first `fail` requests (and
/// to every request while `fail` is `usize::MAX`).
#[derive(Clone)]
pub struct Receiver {
    pub addr: SocketAddr,
    pub fail: Arc<AtomicUsize>,
    pub received: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    pub async fn start(fail: usize) -> Self {
        let fail = Arc::new(AtomicUsize::new(fail));
        let received: Arc<Mutex<Vec<Received>>> = Arc::default();
        let (f, r) = (fail.clone(), received.clone());
        let app = axum::Router::new().fallback(move |uri: Uri, headers: HeaderMap, body: Bytes| {
            let (fail, received) = (f.clone(), r.clone());
            async move {
                let failing = fail
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| match n {
                        0 => None,
                        usize::MAX => Some(usize::MAX),
                        n => Some(n - 1),
                    })
                    .is_ok();
                received.lock().unwrap().push(Received {
                    path: uri.path().to_owned(),
                    headers,
                    body: serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
                    accepted: !failing,
                });
                if failing {
                    StatusCode::SERVICE_UNAVAILABLE
                } else {
                    StatusCode::NO_CONTENT
                }
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self {
            addr,
            fail,
            received,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hooks", self.addr)
    }

    pub fn all(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    pub fn accepted(&self) -> Vec<Received> {
        self.all().into_iter().filter(|r| r.accepted).collect()
    }
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
