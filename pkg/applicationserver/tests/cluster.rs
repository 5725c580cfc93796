//! Two Application Servers of one cluster sharing a real `nats-server` (Debian's package)
//! as their event bus: an MQTT client (Debian's `mosquitto_sub`) connected to either AS
//! receives every message of its application exactly once, whichever AS produced it, while
//! the durable sinks (integrations) run only on the producing AS.

mod common;

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use common::*;
use tern_applicationserver::{AppMessage, Sink, TopicKind};
use tern_e2e::services::Nats;
use tern_events::{EventBus, EventsConfig, NatsConfig};

/// A durable sink like the integrations: records the topics it was handed.
#[derive(Default)]
struct Recorder(Mutex<Vec<String>>);

#[async_trait]
impl Sink for Recorder {
    async fn deliver(&self, message: Arc<AppMessage>) -> anyhow::Result<()> {
        self.0.lock().unwrap().push(message.topic());
        Ok(())
    }
}

fn keys() -> Keys {
    let mut k = Keys::default();
    k.0.insert(
        "read-1".into(),
        ("app-1".into(), vec!["application:traffic:read".into()]),
    );
    k.0.insert(
        "read-2".into(),
        ("app-2".into(), vec!["application:traffic:read".into()]),
    );
    k
}

/// `mosquitto_sub` of `app`'s `#` at QoS 1, exiting after `count` messages or 20 s.
fn sub(port: u16, app: &str, key: &str, count: u32) -> tokio::process::Child {
    tokio::process::Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-u",
            app,
            "-P",
            key,
        ])
        .args([
            "-t",
            "#",
            "-C",
            &count.to_string(),
            "-v",
            "-q",
            "1",
            "-W",
            "20",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("mosquitto_sub is installed (Debian package mosquitto-clients)")
}

async fn wait_subscriptions(h: &Harness, n: usize) {
    let mqtt = h.asrv.mqtt().unwrap();
    for _ in 0..400 {
        if mqtt.subscriptions() >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{n} MQTT subscriptions never appeared");
}

/// The topics a finished `mosquitto_sub -v` printed, sorted.
async fn topics(child: tokio::process::Child, what: &str) -> Vec<String> {
    let out = child.wait_with_output().await.unwrap();
    assert!(
        out.status.success(),
        "{what}: mosquitto_sub failed: {}\nstdout: {}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    let mut topics: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.split_once(' ').map_or(l, |(t, _)| t).to_owned())
        .collect();
    topics.sort();
    topics
}

async fn nats_bus(url: &str) -> EventBus {
    EventBus::connect(&EventsConfig {
        nats: Some(NatsConfig::new(url)),
        ..Default::default()
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_client_sees_every_message_once_on_any_as() {
    let nats = Nats::start();
    let h1 = start_cluster(keys(), nats_bus(&nats.url).await, "as-1").await;
    let h2 = start_cluster(keys(), nats_bus(&nats.url).await, "as-2").await;
    let sinks = [Arc::new(Recorder::default()), Arc::new(Recorder::default())];
    h1.asrv.add_sink(sinks[0].clone());
    h2.asrv.add_sink(sinks[1].clone());
    let port = |h: &Harness| h.asrv.mqtt_addrs()[0].port();

    // One client of app-1 on each AS; one client of app-2 on AS-2 must see nothing of app-1.
    let on1 = sub(port(&h1), "app-1", "read-1", 3);
    let on2 = sub(port(&h2), "app-1", "read-1", 3);
    let other = sub(port(&h2), "app-2", "read-2", 1);
    wait_subscriptions(&h1, 1).await;
    wait_subscriptions(&h2, 2).await;

    // AS-1's Network Server hands it a join and an uplink (the real pipeline renders them);
    // AS-2 renders one message itself (as if its own NS had sent it).
    let sk = b"session-1".to_vec();
    h1.ns.send(join_accept("app-1", "dev-1", &sk));
    h1.ns.send(uplink("app-1", "dev-1", &sk, 1));
    h2.asrv
        .core()
        .unwrap()
        .publish(AppMessage {
            application_id: "app-1".into(),
            device_id: "dev-2".into(),
            kind: TopicKind::Up,
            json: r#"{"from":"as-2"}"#.as_bytes().to_vec().into(),
        })
        .await
        .unwrap();
    h2.asrv
        .core()
        .unwrap()
        .publish(AppMessage {
            application_id: "app-2".into(),
            device_id: "dev-3".into(),
            kind: TopicKind::DownSent,
            json: r#"{"app":2}"#.as_bytes().to_vec().into(),
        })
        .await
        .unwrap();

    let all = [
        "v3/app-1/devices/dev-1/join",
        "v3/app-1/devices/dev-1/up",
        "v3/app-1/devices/dev-2/up",
    ];
    assert_eq!(topics(on1, "client on AS-1").await, all);
    assert_eq!(topics(on2, "client on AS-2").await, all);
    assert_eq!(
        topics(other, "app-2's client on AS-2").await,
        ["v3/app-2/devices/dev-3/down/sent"]
    );

    // Exactly once: each server sent its app-1 client three messages and no more, a third
    // of them (or two thirds) relayed from the other AS.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let published = |h: &Harness| h.asrv.mqtt().unwrap().metrics().published.get();
    assert_eq!(published(&h1), 3, "AS-1's MQTT deliveries");
    assert_eq!(
        published(&h2),
        4,
        "AS-2's MQTT deliveries (3 of app-1, 1 of app-2)"
    );
    let relay = |h: &Harness| {
        h.asrv
            .relay()
            .expect("a relay on a NATS bus")
            .metrics()
            .clone()
    };
    assert_eq!(relay(&h1).published.get(), 2);
    assert_eq!(relay(&h1).received.get(), 2, "AS-2's two messages");
    assert_eq!(relay(&h2).published.get(), 2);
    assert_eq!(relay(&h2).received.get(), 2, "AS-1's join and uplink");

    // The durable sinks (integrations) ran once, on the AS that produced each message.
    let mut got = sinks[0].0.lock().unwrap().clone();
    got.sort();
    assert_eq!(got, all[..2]);
    assert_eq!(
        *sinks[1].0.lock().unwrap(),
        [
            "v3/app-1/devices/dev-2/up",
            "v3/app-2/devices/dev-3/down/sent"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_process_bus_relays_nothing() {
    let h = start_cluster(keys(), EventBus::in_process(64), "as-1").await;
    assert!(h.asrv.relay().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_relayed_messages_are_counted_and_dropped() {
    let nats = Nats::start();
    let h = start_cluster(keys(), nats_bus(&nats.url).await, "as-1").await;
    let client = sub(h.asrv.mqtt_addrs()[0].port(), "app-1", "read-1", 1);
    wait_subscriptions(&h, 1).await;
    let other = nats_bus(&nats.url).await;
    let good = [
        ("Tern-Origin", "as-9"),
        ("Tern-Application", "app-1"),
        ("Tern-Device", "dev-1"),
        ("Tern-Topic-Kind", "up"),
    ];
    let without = |name: &str| -> Vec<(&str, &str)> {
        good.iter().copied().filter(|(n, _)| *n != name).collect()
    };
    let mut bad_kind = good.to_vec();
    bad_kind[3].1 = "down/push";
    let mut bad_device = good.to_vec();
    bad_device[2].1 = "a/b";
    let cases: [(&str, Vec<(&str, &str)>); 6] = [
        ("no_origin", without("Tern-Origin")),
        ("no_application", without("Tern-Application")),
        ("no_device", without("Tern-Device")),
        ("no_kind", without("Tern-Topic-Kind")),
        ("unknown_kind", bad_kind),
        ("bad_device", bad_device),
    ];
    for (_, headers) in &cases {
        other
            .publish_raw("as.mqtt.app-1", headers, "{}".into())
            .await
            .unwrap();
    }
    // Then a well-formed one: the client's first (and only) message.
    other
        .publish_raw("as.mqtt.app-1", &good, r#"{"ok":true}"#.into())
        .await
        .unwrap();
    assert_eq!(
        topics(client, "client after malformed messages").await,
        ["v3/app-1/devices/dev-1/up"]
    );
    let metrics = h.asrv.relay().unwrap().metrics().clone();
    for (reason, _) in &cases {
        assert_eq!(
            metrics
                .dropped
                .get_or_create(&vec![("reason", (*reason).to_owned())])
                .get(),
            1,
            "{reason}"
        );
    }
    assert_eq!(metrics.received.get(), 1);
}
