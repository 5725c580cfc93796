//! The uplink path served from memory: cached device records and application settings,
//! kept right by this AS's own writes (join-accepts, the API) and by the uplink's session key
//! ID when another AS instance wrote the store, within a fixed bound.

mod common;

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use common::*;
use serde_json::Value;
use tern_api::{FieldMask, v3};
use tern_applicationserver::{AppMessage, AsCore, TopicKind};
use tern_cluster::auth::CallCredentials;
use tern_cluster::role::RoleService;
use tern_store::{AsStore, Expect};
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tonic::transport::server::TcpIncoming;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// A TTS v3 uplink decoder that marks what it decoded.
const SCRIPT: &str = r#"
function decodeUplink(input) {
  return { data: { device_level: true, port: input.fPort }, warnings: [] };
}
"#;

async fn next_of(rx: &mut broadcast::Receiver<Arc<AppMessage>>, kind: TopicKind) -> Value {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(20), rx.recv())
            .await
            .expect("message in time")
            .expect("fan-out open");
        if msg.kind == kind {
            return serde_json::from_slice(&msg.json).unwrap();
        }
    }
}

fn count(core: &AsCore, hits: bool, kind: &str) -> u64 {
    let m = core.metrics();
    let family = if hits { &m.cache_hits } else { &m.cache_misses };
    family.get_or_create(&vec![("kind", kind.to_owned())]).get()
}

/// The long TTL keeps application hits deterministic on a slow machine.
async fn harness(keys: Keys, devices: usize) -> Harness {
    start_with(keys, |c| {
        c.cache.devices = devices;
        c.cache.application_ttl = Duration::from_secs(600);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uplinks_after_the_first_do_not_read_the_store() {
    let h = harness(Keys::default(), 1000).await;
    let core = h.asrv.core().unwrap().clone();
    let mut rx = h.asrv.subscribe().unwrap();
    let sk = b"session-1".to_vec();
    h.ns.send(join_accept("app-1", "dev-1", &sk));
    next_of(&mut rx, TopicKind::Join).await;
    // The join-accept read the store and cached what it wrote.
    assert_eq!(core.cached_devices(), 1);
    let misses = count(&core, false, "device");

    for f_port in 1..=3 {
        h.ns.send(uplink("app-1", "dev-1", &sk, f_port));
        let up = next_of(&mut rx, TopicKind::Up).await;
        assert_eq!(up["uplink_message"]["frm_payload"], B64.encode(b"test"));
    }
    assert_eq!(
        count(&core, false, "device"),
        misses,
        "no device read per uplink"
    );
    assert_eq!(count(&core, true, "device"), 3);
    // The application's settings: read at the first uplink only.
    assert_eq!(count(&core, false, "application"), 1);
    assert_eq!(count(&core, true, "application"), 2);
    assert_eq!(core.metrics().cache_session_reloads.get(), 0);

    let bytes = core.cache_entry_bytes();
    println!("bytes per cached device entry: {bytes}");
    assert!(bytes > 0 && bytes < 1024, "{bytes} bytes per entry");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_updated_through_the_api_is_seen_at_the_next_uplink() {
    let mut keys = Keys::default();
    keys.0.insert(
        "admin-1".into(),
        ("app-1".into(), vec!["application:devices:write".into()]),
    );
    let h = harness(keys, 1000).await;
    let core = h.asrv.core().unwrap().clone();
    let mut routes = tonic::service::RoutesBuilder::default();
    h.asrv.grpc_services(&mut routes);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = tonic::transport::Server::builder().add_routes(routes.routes());
    let shutdown = h.ctx.shutdown.clone();
    tokio::spawn(async move {
        let _ = router
            .serve_with_incoming_shutdown(TcpIncoming::from(listener), shutdown.wait())
            .await;
    });
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut registry =
        v3::as_end_device_registry_client::AsEndDeviceRegistryClient::with_interceptor(
            channel,
            CallCredentials::api_key("admin-1").unwrap(),
        );

    let mut rx = h.asrv.subscribe().unwrap();
    let sk = b"session-1".to_vec();
    h.ns.send(join_accept("app-1", "dev-1", &sk));
    next_of(&mut rx, TopicKind::Join).await;
    h.ns.send(uplink("app-1", "dev-1", &sk, 1));
    let up = next_of(&mut rx, TopicKind::Up).await;
    assert!(
        up["uplink_message"].get("decoded_payload").is_none(),
        "{up}"
    );

    // The device gets its own formatter through the API: the next uplink uses it.
    registry
        .set(v3::UpdateEndDeviceRequest {
            end_device: Some(v3::EndDevice {
                ids: Some(ids("app-1", "dev-1")),
                formatters: Some(v3::MessagePayloadFormatters {
                    up_formatter: v3::PayloadFormatter::FormatterJavascript as i32,
                    up_formatter_parameter: SCRIPT.into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            field_mask: Some(FieldMask::new(["formatters"])),
        })
        .await
        .unwrap();
    let misses = count(&core, false, "device");
    h.ns.send(uplink("app-1", "dev-1", &sk, 5));
    let up = next_of(&mut rx, TopicKind::Up).await;
    assert_eq!(
        up["uplink_message"]["decoded_payload"]["device_level"],
        true
    );
    assert_eq!(up["uplink_message"]["decoded_payload"]["port"], 5);
    assert_eq!(
        count(&core, false, "device"),
        misses,
        "served from the cache"
    );

    // Deleted through the API: the next uplink finds no session.
    registry.delete(ids("app-1", "dev-1")).await.unwrap();
    assert_eq!(core.cached_devices(), 0);
    h.ns.send(uplink("app-1", "dev-1", &sk, 1));
    h.ns.wait_for("the uplink after the delete acknowledged", |s| {
        s.acks.last() == Some(&4)
    })
    .await;
    assert_eq!(
        core.metrics()
            .up_dropped
            .get_or_create(&vec![("reason", "no_app_s_key".to_owned())])
            .get(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_written_by_another_instance_is_read_when_an_uplink_names_it() {
    let h = harness(Keys::default(), 1000).await;
    let core = h.asrv.core().unwrap().clone();
    let mut rx = h.asrv.subscribe().unwrap();
    let (old, new) = (b"session-old".to_vec(), b"session-new".to_vec());
    h.ns.send(join_accept("app-1", "dev-1", &old));
    next_of(&mut rx, TopicKind::Join).await;
    h.ns.send(uplink("app-1", "dev-1", &old, 1));
    next_of(&mut rx, TopicKind::Up).await;

    // Another AS instance handled a rejoin: it wrote the store, not this AS's cache. The key
    // is the vector's again so that the payload proves which session decrypted it.
    let mut record = core
        .store()
        .get_as_device("app-1", "dev-1")
        .await
        .unwrap()
        .unwrap()
        .value;
    let session = record.session.as_mut().unwrap();
    session.session_key_id = new.clone();
    core.store()
        .set_as_device(&record, Expect::Any)
        .await
        .unwrap();

    h.ns.send(uplink("app-1", "dev-1", &new, 1));
    let up = next_of(&mut rx, TopicKind::Up).await;
    assert_eq!(up["uplink_message"]["frm_payload"], B64.encode(b"test"));
    assert_eq!(up["uplink_message"]["session_key_id"], B64.encode(&new));
    assert_eq!(core.metrics().cache_session_reloads.get(), 1);
    // Read once: the next uplink of the new session is a hit again.
    let misses = count(&core, false, "device");
    h.ns.send(uplink("app-1", "dev-1", &new, 1));
    next_of(&mut rx, TopicKind::Up).await;
    assert_eq!(count(&core, false, "device"), misses);
    assert_eq!(core.metrics().cache_session_reloads.get(), 1);

    // An unknown session is read once more and then dropped, not looped on.
    h.ns.send(uplink("app-1", "dev-1", b"session-unknown", 1));
    h.ns.wait_for("the unknown session's uplink acknowledged", |s| {
        s.acks.last() == Some(&5)
    })
    .await;
    assert_eq!(core.metrics().cache_session_reloads.get(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eviction_keeps_the_bound_and_evicted_devices_still_work() {
    let h = harness(Keys::default(), 3).await;
    let core = h.asrv.core().unwrap().clone();
    let mut rx = h.asrv.subscribe().unwrap();
    let sk = b"session-1".to_vec();
    for i in 0..8 {
        let dev = format!("dev-{i}");
        h.ns.send(join_accept("app-1", &dev, &sk));
        next_of(&mut rx, TopicKind::Join).await;
        assert!(core.cached_devices() <= 3, "{}", core.cached_devices());
    }
    assert_eq!(core.cached_devices(), 3);
    assert!(core.metrics().cache_evictions.get() >= 5);
    assert_eq!(core.metrics().cache_devices.get(), 3);
    // Every device, cached or evicted, gets its uplink decrypted.
    for i in 0..8 {
        h.ns.send(uplink("app-1", &format!("dev-{i}"), &sk, 1));
        let up = next_of(&mut rx, TopicKind::Up).await;
        assert_eq!(up["uplink_message"]["frm_payload"], B64.encode(b"test"));
        assert!(core.cached_devices() <= 3);
    }
}

/// Before/after: uplinks through the pipeline with the cache off (every uplink reads the
/// device and the application from the store and unwraps the AppSKey, as before the cache)
/// and on. Prints the rates; asserts nothing about time. Run with
/// `cargo test -p tern-applicationserver --release --test cache -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a check"]
async fn measure_uplinks_with_and_without_the_cache() {
    const DEVICES: usize = 100;
    const UPLINKS: usize = 5000;
    for devices in [0, 1000] {
        let h = start_with(Keys::default(), |c| {
            c.cache.devices = devices;
            c.cache.application_ttl = if devices == 0 {
                Duration::ZERO
            } else {
                Duration::from_secs(600)
            };
        })
        .await;
        let core = h.asrv.core().unwrap().clone();
        core.set_application_formatters(
            "app-1",
            v3::MessagePayloadFormatters {
                up_formatter: v3::PayloadFormatter::FormatterCayennelpp as i32,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        let mut rx = h.asrv.subscribe().unwrap();
        let sk = b"session-1".to_vec();
        for i in 0..DEVICES {
            h.ns.send(join_accept("app-1", &format!("dev-{i}"), &sk));
            next_of(&mut rx, TopicKind::Join).await;
        }
        let started = std::time::Instant::now();
        for n in 0..UPLINKS {
            h.ns.send(uplink("app-1", &format!("dev-{}", n % DEVICES), &sk, 1));
        }
        // Counted at the pipeline: a broadcast receiver would lag behind.
        while core.metrics().uplinks_forwarded.get() < UPLINKS as u64 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let elapsed = started.elapsed();
        println!(
            "cache {}: {UPLINKS} uplinks in {elapsed:?}: {:.0} uplinks/s, {:.1} µs each; device misses {}",
            if devices == 0 { "off" } else { "on" },
            UPLINKS as f64 / elapsed.as_secs_f64(),
            elapsed.as_secs_f64() * 1e6 / UPLINKS as f64,
            count(&core, false, "device"),
        );
    }
}
