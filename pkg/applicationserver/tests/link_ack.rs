//! Acknowledged delivery, AS side: a test-side NS (the edge the AS does not own) that, like
//! an NS restarted before it saw the acknowledgements, resends every message on each link.
//! The full AS hands each message to MQTT exactly once (mosquitto_sub sees no duplicate),
//! tells the NS on relink what it processed, and acknowledges with the NS instance.

mod common;

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use common::*;
use serde_json::Value;
use tern_api::v3;
use tern_applicationserver::{ApplicationServer, AsConfig, AsDeps};
use tern_cluster::auth::{ApiKeyVerifier, Authenticator, Caller, ClusterKeys};
use tern_cluster::links::{AsNs, BoxStream, LinkResult};
use tern_cluster::role::{MetricsRegistry, ReadinessSignal, RoleContext, RoleService, Shutdown};
use tern_events::EventBus;
use tern_store::{Store, StoreConfig};
use tokio::process::Command;
use tokio::sync::{Notify, mpsc};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::UnboundedReceiverStream;

const NS_INSTANCE: &str = "ns-x~0123456789abcdef";

#[derive(Default)]
struct State {
    /// Every message so far, in sequence order; all are sent on each new link.
    script: Vec<v3::SequencedApplicationUp>,
    /// The current link's sending half.
    link: Option<mpsc::UnboundedSender<LinkResult<v3::LinkResponse>>>,
    /// The LinkStart of each link.
    starts: Vec<v3::LinkStart>,
    /// Acknowledgements received.
    acks: Vec<v3::LinkAck>,
}

/// An NS that never forgets: it resends its whole script whenever the AS links.
#[derive(Clone, Default)]
struct ResendingNs {
    state: Arc<Mutex<State>>,
    changed: Arc<Notify>,
}

impl ResendingNs {
    /// Numbers `up`, keeps it, and sends it on the current link.
    fn push(&self, up: v3::ApplicationUp) {
        let mut state = self.state.lock().unwrap();
        let frame = v3::SequencedApplicationUp {
            sequence: state.script.len() as u64 + 1,
            up: Some(up),
            ns_instance_id: NS_INSTANCE.into(),
        };
        state.script.push(frame.clone());
        if let Some(link) = &state.link {
            let _ = link.send(Ok(up_frame(frame)));
        }
    }

    /// Ends the current link with an error, as an NS crash does.
    fn break_link(&self) {
        if let Some(link) = self.state.lock().unwrap().link.take() {
            let _ = link.send(Err(tonic::Status::unavailable(
                "the Network Server crashed",
            )));
        }
    }

    async fn wait_for(&self, what: &str, check: impl Fn(&State) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let notified = self.changed.notified();
            if check(&self.state.lock().unwrap()) {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                let state = self.state.lock().unwrap();
                panic!(
                    "timed out waiting for {what}: starts {:?}, acks {:?}",
                    state.starts, state.acks
                );
            }
        }
    }
}

fn up_frame(frame: v3::SequencedApplicationUp) -> v3::LinkResponse {
    v3::LinkResponse {
        frame: Some(v3::link_response::Frame::Up(frame)),
    }
}

#[async_trait]
impl AsNs for ResendingNs {
    async fn link_application(
        &self,
        _caller: Caller,
        mut requests: BoxStream<LinkResult<v3::LinkRequest>>,
    ) -> LinkResult<BoxStream<LinkResult<v3::LinkResponse>>> {
        let Some(Ok(v3::LinkRequest {
            frame: Some(v3::link_request::Frame::Start(start)),
        })) = requests.next().await
        else {
            return Err(tonic::Status::invalid_argument("no LinkStart"));
        };
        let (tx, rx) = mpsc::unbounded_channel();
        {
            let mut state = self.state.lock().unwrap();
            state.starts.push(start);
            let _ = tx.send(Ok(v3::LinkResponse {
                frame: Some(v3::link_response::Frame::Established(v3::LinkEstablished {
                    ns_instance_id: NS_INSTANCE.into(),
                    ..Default::default()
                })),
            }));
            for frame in &state.script {
                let _ = tx.send(Ok(up_frame(frame.clone())));
            }
            state.link = Some(tx);
        }
        self.changed.notify_waiters();
        let this = self.clone();
        tokio::spawn(async move {
            while let Some(Ok(request)) = requests.next().await {
                if let Some(v3::link_request::Frame::Ack(ack)) = request.frame {
                    this.state.lock().unwrap().acks.push(ack);
                    this.changed.notify_waiters();
                }
            }
        });
        Ok(Box::pin(UnboundedReceiverStream::new(rx)))
    }

    async fn downlink_queue_list(
        &self,
        _caller: Caller,
        _device: v3::EndDeviceIdentifiers,
    ) -> LinkResult<v3::ApplicationDownlinks> {
        Ok(v3::ApplicationDownlinks::default())
    }
}

struct Running {
    asrv: Arc<ApplicationServer>,
    ctx: RoleContext,
    _dir: tempfile::TempDir,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.ctx.shutdown.trigger();
    }
}

/// A started full AS (embedded store, MQTT on a free port) linked to `ns`.
async fn start(ns: ResendingNs) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&StoreConfig::default(), dir.path())
        .await
        .unwrap();
    let mut config = AsConfig {
        kek_label: "as:test".into(),
        ..Default::default()
    };
    config.keks.insert(
        "as:test".into(),
        serde_json::from_value(serde_json::json!(hex::encode(KEK))).unwrap(),
    );
    config.mqtt.listen = "127.0.0.1:0".into();
    config.mqtt.tls_listen = String::new();
    config.link.min_backoff = Duration::from_millis(50);
    let mut keys = Keys::default();
    keys.0.insert(
        "read-1".into(),
        ("app-1".into(), vec!["application:traffic:read".into()]),
    );
    let keys: Arc<dyn ApiKeyVerifier> = Arc::new(keys);
    let auth = Authenticator::new(ClusterKeys::new(&["0123456789abcdef0123"]).unwrap())
        .with_api_key_verifier(keys.clone());
    let asrv = Arc::new(
        ApplicationServer::with_deps(AsDeps {
            config,
            store,
            events: EventBus::in_process(64),
            auth,
            ns: Arc::new(ns.clone()),
            js: None,
            api_keys: keys,
            instance_id: "as-test".into(),
        })
        .unwrap(),
    );
    let ctx = RoleContext {
        data_dir: dir.path().to_path_buf(),
        metrics: MetricsRegistry::new(),
        shutdown: Shutdown::new(),
        readiness: ReadinessSignal::new(),
    };
    asrv.start(&ctx).await.unwrap();
    ns.wait_for("the first link", |s| s.link.is_some()).await;
    Running {
        asrv,
        ctx,
        _dir: dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resent_messages_reach_mqtt_exactly_once() {
    let ns = ResendingNs::default();
    let r = start(ns.clone()).await;
    let port = r.asrv.mqtt_addrs()[0].port();
    // Joins and uplinks of app-1, four messages in all.
    let sub = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-u", "app-1", "-P", "read-1", "-q", "1", "-W", "30", "-v"])
        .args([
            "-t",
            "v3/app-1/devices/+/join",
            "-t",
            "v3/app-1/devices/+/up",
        ])
        .args(["-C", "4"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("mosquitto_sub is installed (Debian package mosquitto-clients)");
    let mqtt = r.asrv.mqtt().unwrap().clone();
    for _ in 0..400 {
        if mqtt.subscriptions() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(mqtt.subscriptions() >= 2, "mosquitto_sub did not subscribe");

    let sk = b"session-1".to_vec();
    ns.push(join_accept("app-1", "dev-1", &sk));
    ns.push(uplink("app-1", "dev-1", &sk, 1));
    ns.push(uplink("app-1", "dev-1", &sk, 3));
    // Handed on and acknowledged, cumulatively, naming the NS instance.
    ns.wait_for("ack of 3", |s| {
        s.acks.iter().any(|a| {
            a.sequence == 3
                && a.ns_instance_id == NS_INSTANCE
                && a.application_ids.as_ref().unwrap().application_id == "app-1"
        })
    })
    .await;

    // The NS crashes before it recorded the acks: the next link resends 1..=3.
    ns.break_link();
    ns.wait_for("the relink", |s| s.starts.len() == 2 && s.link.is_some())
        .await;
    {
        // The AS said what it processed; this NS ignores it, a real one skips ahead.
        let state = ns.state.lock().unwrap();
        let said = &state.starts[1].acknowledged;
        assert!(
            said.iter().any(|a| a.sequence == 3
                && a.ns_instance_id == NS_INSTANCE
                && a.application_ids.as_ref().unwrap().application_id == "app-1"),
            "{said:?}"
        );
    }
    ns.push(uplink("app-1", "dev-1", &sk, 4));

    let out = sub.wait_with_output().await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<(String, Value)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let (topic, json) = l.split_once(' ').unwrap();
            (topic.to_owned(), serde_json::from_str(json).unwrap())
        })
        .collect();
    let seen: Vec<(&str, Option<u64>)> = lines
        .iter()
        .map(|(topic, json)| (topic.as_str(), json["uplink_message"]["f_port"].as_u64()))
        .collect();
    // Without deduplication the fourth would be the resent join or FPort 1.
    assert_eq!(
        seen,
        vec![
            ("v3/app-1/devices/dev-1/join", None),
            ("v3/app-1/devices/dev-1/up", Some(1)),
            ("v3/app-1/devices/dev-1/up", Some(3)),
            ("v3/app-1/devices/dev-1/up", Some(4)),
        ]
    );
    // Resends are acknowledged too (so that a real NS forgets them), up to 4.
    ns.wait_for("ack of 4", |s| {
        s.acks
            .iter()
            .any(|a| a.sequence == 4 && a.ns_instance_id == NS_INSTANCE)
    })
    .await;
    assert!(
        ns.state
            .lock()
            .unwrap()
            .acks
            .iter()
            .all(|a| a.sequence <= 4)
    );
}
