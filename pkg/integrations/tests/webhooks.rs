//! Webhooks against a real HTTP receiver on a loopback port: durable delivery across a
//! restart, order per device, health, and the downlink routes.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use tern_cluster::role::Shutdown;
use tern_integrations::UpstreamKind;

#[tokio::test]
async fn delivery_arrives_once_after_failures_and_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(3).await;
    let sink = Arc::new(RecordingSink::default());

    // First life: the receiver fails the first attempts.
    let store = open_store(dir.path()).await;
    let first = integrations(store.clone(), fast_config(), sink.clone());
    let shutdown = Shutdown::new();
    first.start(shutdown.clone()).await.unwrap();
    first
        .set_webhook(webhook("hook", &receiver.url()))
        .await
        .unwrap();
    first.publish(&upstream("app-1", "dev-1", UpstreamKind::Uplink, 7));
    // Not wanted by this webhook (no path for it): never sent.
    first.publish(&upstream("app-1", "dev-1", UpstreamKind::DownlinkSent, 8));
    eventually("two failed attempts", async || receiver.all().len() >= 2).await;
    shutdown.trigger();
    drop(first);
    store.close().await.unwrap();
    let attempts_before = receiver.all().len();
    assert!(
        receiver.accepted().is_empty(),
        "{attempts_before} attempts, none accepted yet"
    );

    // Second life on the reopened store: the pending delivery is resumed.
    let store = open_store(dir.path()).await;
    let second = integrations(store.clone(), fast_config(), sink);
    let shutdown = Shutdown::new();
    second.start(shutdown.clone()).await.unwrap();
    eventually("the delivery", async || !receiver.accepted().is_empty()).await;
    eventually("an empty outbox", async || {
        second
            .get_webhook("app-1", "hook")
            .await
            .unwrap()
            .pending_deliveries
            == 0
    })
    .await;
    // Give a duplicate the chance to show up.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let accepted = receiver.accepted();
    assert_eq!(accepted.len(), 1, "delivered exactly once: {accepted:?}");
    let got = &accepted[0];
    assert_eq!(got.path, "/hooks/up");
    assert_eq!(got.body["n"], 7);
    assert_eq!(got.headers["x-custom"], "yes");
    assert_eq!(got.headers["content-type"], "application/json");
    assert_eq!(got.headers["x-downlink-apikey"], "secret-downlink-key");
    assert_eq!(
        got.headers["x-downlink-push"],
        "https://tern.example.com/api/v3/as/applications/app-1/webhooks/hook/devices/dev-1/down/push"
    );
    assert_eq!(
        got.headers["x-downlink-replace"],
        "https://tern.example.com/api/v3/as/applications/app-1/webhooks/hook/devices/dev-1/down/replace"
    );
    assert!(receiver.all().iter().all(|r| r.path == "/hooks/up"));
    let health = second
        .get_webhook("app-1", "hook")
        .await
        .unwrap()
        .health
        .unwrap();
    assert!(health.healthy);
    assert_eq!(health.failed_attempts, 0);
    assert!(health.last_success_at.is_some());
    shutdown.trigger();
}

#[tokio::test]
async fn order_per_device_is_kept_through_retries() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(4).await;
    let store = open_store(dir.path()).await;
    let integ = integrations(store, fast_config(), Arc::new(RecordingSink::default()));
    let shutdown = Shutdown::new();
    integ.start(shutdown.clone()).await.unwrap();
    integ
        .set_webhook(webhook("hook", &receiver.url()))
        .await
        .unwrap();
    for n in 0..6 {
        integ.publish(&upstream("app-1", "dev-a", UpstreamKind::Uplink, n));
        integ.publish(&upstream("app-1", "dev-b", UpstreamKind::JoinAccept, n));
    }
    eventually("12 deliveries", async || receiver.accepted().len() >= 12).await;
    let accepted = receiver.accepted();
    assert_eq!(accepted.len(), 12);
    for (dev, path) in [("dev-a", "/hooks/up"), ("dev-b", "/hooks/join")] {
        let ns: Vec<u64> = accepted
            .iter()
            .filter(|r| r.body["end_device_ids"]["device_id"] == dev)
            .map(|r| {
                assert_eq!(r.path, path);
                r.body["n"].as_u64().unwrap()
            })
            .collect();
        assert_eq!(ns, vec![0, 1, 2, 3, 4, 5], "order of {dev}");
    }
    shutdown.trigger();
}

#[tokio::test]
async fn failing_webhook_becomes_unhealthy_then_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(usize::MAX).await;
    let store = open_store(dir.path()).await;
    let config = tern_integrations::IntegrationsConfig {
        unhealthy_threshold: Duration::from_millis(300),
        ..fast_config()
    };
    let integ = integrations(store, config, Arc::new(RecordingSink::default()));
    let shutdown = Shutdown::new();
    integ.start(shutdown.clone()).await.unwrap();
    integ
        .set_webhook(webhook("hook", &receiver.url()))
        .await
        .unwrap();
    integ.publish(&upstream("app-1", "dev-1", UpstreamKind::Uplink, 1));

    eventually("an unhealthy webhook", async || {
        let w = integ.get_webhook("app-1", "hook").await.unwrap();
        !w.health.unwrap().healthy
    })
    .await;
    let w = integ.get_webhook("app-1", "hook").await.unwrap();
    let health = w.health.unwrap();
    assert!(health.failed_attempts >= 1);
    assert!(health.first_failed_attempt_at.is_some());
    assert!(
        health.last_error.contains("503"),
        "last error names the status: {}",
        health.last_error
    );
    assert_eq!(w.pending_deliveries, 1);
    // Listed with the same health.
    assert!(
        !integ.list_webhooks("app-1").await.unwrap()[0]
            .health
            .as_ref()
            .unwrap()
            .healthy
    );

    // The receiver comes back: the delivery arrives and the webhook is healthy again.
    receiver.fail.store(0, Ordering::SeqCst);
    eventually("the delivery", async || receiver.accepted().len() == 1).await;
    eventually("a healthy webhook", async || {
        let h = integ
            .get_webhook("app-1", "hook")
            .await
            .unwrap()
            .health
            .unwrap();
        h.healthy && h.failed_attempts == 0
    })
    .await;
    shutdown.trigger();
}

#[tokio::test]
async fn paused_and_deleted_webhooks_send_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(0).await;
    let store = open_store(dir.path()).await;
    let integ = integrations(store, fast_config(), Arc::new(RecordingSink::default()));
    let shutdown = Shutdown::new();
    integ.start(shutdown.clone()).await.unwrap();
    let mut paused = webhook("hook", &receiver.url());
    paused.paused = true;
    integ.set_webhook(paused).await.unwrap();
    integ.publish(&upstream("app-1", "dev-1", UpstreamKind::Uplink, 1));
    // Another application's messages never reach app-1's webhooks.
    integ.publish(&upstream("app-2", "dev-1", UpstreamKind::Uplink, 2));
    integ
        .set_webhook(webhook("hook", &receiver.url()))
        .await
        .unwrap();
    integ.publish(&upstream("app-1", "dev-1", UpstreamKind::Uplink, 3));
    eventually("one delivery", async || receiver.accepted().len() == 1).await;
    assert_eq!(receiver.accepted()[0].body["n"], 3);

    integ.delete_webhook("app-1", "hook").await.unwrap();
    let err = integ.get_webhook("app-1", "hook").await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    integ.publish(&upstream("app-1", "dev-1", UpstreamKind::Uplink, 4));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.all().len(), 1);

    // Bad input is refused, naming the field, and changes nothing.
    let mut bad = webhook("hook", "ftp://example.com");
    let err = integ.set_webhook(bad.clone()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("base_url"), "{}", err.message());
    bad.base_url = receiver.url();
    bad.headers.insert("bad header".into(), "x".into());
    let err = integ.set_webhook(bad).await.unwrap_err();
    assert!(err.message().contains("headers"), "{}", err.message());
    assert!(integ.list_webhooks("app-1").await.unwrap().is_empty());
    shutdown.trigger();
}
