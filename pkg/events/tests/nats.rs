//! The NATS bus against a real `nats-server` (Debian's package), started per test on a free
//! loopback port and killed on drop.

use std::collections::HashSet;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tern_api::v3;
use tern_events::definitions;
use tern_events::{
    Encoding, Event, EventBus, EventsConfig, Filter, NatsConfig, RecvError, Subscription,
};

/// Set (to the NATS URL) in the child process of `two_processes_share_events`.
const CHILD_ENV: &str = "TERN_EVENTS_TEST_CHILD_NATS_URL";
/// How many events the child publishes.
const CHILD_EVENTS: u32 = 5;
const WAIT: Duration = Duration::from_secs(20);

/// A `nats-server` on a free loopback port; killed on drop.
struct NatsServer {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl NatsServer {
    fn start() -> Self {
        let binary = nats_server_binary();
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("nats.log");
        let port = free_port();
        let mut child = Command::new(&binary)
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .arg("-l")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait().expect("nats-server status") {
                panic!(
                    "nats-server on port {port} exited with {status}:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            // Our own server's log, not only the port: another test's listener may have
            // taken the port, and then this server exits instead.
            let ready = std::fs::read_to_string(&log).is_ok_and(|l| l.contains("Server is ready"));
            if ready && TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "nats-server did not listen on 127.0.0.1:{port} within 10 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            child,
            url: format!("nats://127.0.0.1:{port}"),
            _dir: dir,
        }
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn nats_server_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("TERN_NATS_SERVER") {
        return path.into();
    }
    for candidate in ["/usr/sbin/nats-server", "/usr/bin/nats-server"] {
        if Path::new(candidate).exists() {
            return candidate.into();
        }
    }
    panic!(
        "nats-server not found at /usr/sbin/nats-server: these tests need Debian's \
         nats-server package (apt-get install nats-server), or TERN_NATS_SERVER set to the binary"
    );
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

fn config(url: &str, encoding: Encoding, buffer: usize) -> EventsConfig {
    EventsConfig {
        nats: Some(NatsConfig {
            encoding,
            ..NatsConfig::new(url)
        }),
        buffer,
    }
}

async fn connect(url: &str, encoding: Encoding) -> EventBus {
    let bus = EventBus::connect(&config(url, encoding, 1024))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(bus.kind(), "nats");
    bus
}

async fn next(sub: &mut Subscription) -> Arc<v3::Event> {
    match tokio::time::timeout(WAIT, sub.recv()).await {
        Ok(Ok(event)) => event,
        Ok(Err(e)) => panic!("subscription: {e}"),
        Err(_) => panic!("no event within {WAIT:?}"),
    }
}

/// Asserts nothing more arrives for a while (no duplicates, nothing unwanted).
async fn assert_quiet(sub: &mut Subscription, what: &str) {
    if let Ok(result) = tokio::time::timeout(Duration::from_millis(500), sub.recv()).await {
        panic!("{what}: unexpected {result:?}");
    }
}

fn device(app: &str, dev: &str) -> v3::EndDeviceIdentifiers {
    v3::EndDeviceIdentifiers::new(app, dev)
}

fn app(id: &str) -> v3::ApplicationIdentifiers {
    v3::ApplicationIdentifiers {
        application_id: id.into(),
    }
}

fn gateway(id: &str) -> v3::GatewayIdentifiers {
    v3::GatewayIdentifiers {
        gateway_id: id.into(),
        eui: Vec::new(),
    }
}

fn seq(event: &v3::Event) -> String {
    String::from_utf8(event.context["seq"].clone()).unwrap()
}

/// Two processes share one NATS server: this test re-executes its own binary as a child
/// ([`child_process`]) that publishes events this process receives, then waits for one
/// event from this process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_share_events() {
    let server = NatsServer::start();
    let bus = connect(&server.url, Encoding::Json).await;
    let mut from_child = bus
        .subscribe(Filter::all().application("child-app"))
        .await
        .unwrap();
    let mut own = bus
        .subscribe(Filter::all().application("parent-app"))
        .await
        .unwrap();

    let exe = std::env::current_exe().expect("test binary path");
    let child = tokio::process::Command::new(exe)
        .args([
            "--exact",
            "child_process",
            "--include-ignored",
            "--nocapture",
        ])
        .env(CHILD_ENV, &server.url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn the child test process");
    let child_pid = child.id();

    // The child's events, each once, in order. Each is about a device, its application
    // and a gateway: published three times, taken once.
    let mut result = Ok(());
    for i in 0..CHILD_EVENTS {
        match tokio::time::timeout(WAIT, from_child.recv()).await {
            Ok(Ok(event)) => {
                assert_eq!(event.name, "gs.up.receive");
                assert_eq!(seq(&event), i.to_string());
                assert_eq!(event.correlation_ids, [format!("test:child:{i}")]);
                assert_eq!(event.identifiers.len(), 3);
                assert_ne!(child_pid, Some(std::process::id()));
                let uplink: v3::UplinkMessage = event.data_as().unwrap().unwrap();
                assert_eq!(uplink.raw_payload, [0x40, i as u8]);
            }
            Ok(Err(e)) => {
                result = Err(format!("event {i} from the child: {e}"));
                break;
            }
            Err(_) => {
                result = Err(format!(
                    "event {i} from the child did not come within {WAIT:?}"
                ));
                break;
            }
        }
    }
    if result.is_ok() {
        assert_quiet(&mut from_child, "after the child's events").await;
        // Now the other way round; the child's subscription exists, it published after it.
        bus.publish(
            Event::new(&definitions::AS_DOWN_DATA_RECEIVE)
                .with_identifiers([app("parent-app")])
                .with_data(&v3::ApplicationDownlink {
                    f_port: 42,
                    ..Default::default()
                }),
        );
        bus.flush().await.unwrap();
        // This process sees its own event too, through NATS, once.
        let mine = next(&mut own).await;
        assert_eq!(mine.name, "as.down.data.receive");
        assert_quiet(&mut own, "own events").await;
    }

    let output = match tokio::time::timeout(WAIT, child.wait_with_output()).await {
        Ok(output) => output.expect("child output"),
        Err(_) => panic!("the child process did not exit within {WAIT:?}"),
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let report = format!(
        "child {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status
    );
    if let Err(e) = result {
        panic!("{e}\n{report}");
    }
    assert!(output.status.success(), "{report}");
    assert!(
        stdout.contains("child: received the parent's event on port 42"),
        "{report}"
    );
    assert!(
        stdout.contains("1 passed"),
        "the child test did not run: {report}"
    );
}

/// The child side of [`two_processes_share_events`]; only meaningful when run by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run as a child process by two_processes_share_events"]
async fn child_process() {
    let url = std::env::var(CHILD_ENV)
        .unwrap_or_else(|_| panic!("{CHILD_ENV} is not set: run two_processes_share_events"));
    // The child speaks protobuf, the parent JSON: receivers read both.
    let bus = connect(&url, Encoding::Protobuf).await;
    let mut from_parent = bus
        .subscribe(Filter::all().application("parent-app"))
        .await
        .unwrap();
    for i in 0..CHILD_EVENTS {
        bus.publish(
            Event::new(&definitions::GS_UP_RECEIVE)
                .with_identifiers([device("child-app", &format!("dev-{i}"))])
                .with_identifiers([app("child-app")])
                .with_identifiers([gateway("child-gw")])
                .with_correlation_ids([format!("test:child:{i}")])
                .with_context("seq", i.to_string().into_bytes())
                .with_data(&v3::UplinkMessage {
                    raw_payload: vec![0x40, i as u8],
                    ..Default::default()
                }),
        );
    }
    bus.flush().await.unwrap();
    let event = next(&mut from_parent).await;
    assert_eq!(event.name, "as.down.data.receive");
    let downlink: v3::ApplicationDownlink = event.data_as().unwrap().unwrap();
    println!(
        "child: received the parent's event on port {}",
        downlink.f_port
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_over_nats() {
    let server = NatsServer::start();
    let publisher = connect(&server.url, Encoding::Json).await;
    let other = connect(&server.url, Encoding::Protobuf).await;
    let sub = |filter: Filter| {
        let bus = other.clone();
        async move { bus.subscribe(filter).await.unwrap() }
    };
    let mut all = sub(Filter::all()).await;
    let mut app1 = sub(Filter::all().application("app-1")).await;
    let mut dev1 = sub(Filter::all().device("app-1", "dev-1")).await;
    let mut gw1_up = sub(Filter::all().gateway("gw-1").name("gs.up.*")).await;
    let mut drops = sub(Filter::all().name("*.drop")).await;
    let mut overlapping = sub(Filter::all()
        .device("app-1", "dev-1")
        .application("app-1")
        .gateway("gw-1"))
    .await;
    let mut other_app = sub(Filter::all()
        .application("app-2")
        .name("ns.up.data.receive"))
    .await;

    let uplink = v3::UplinkMessage::default();
    let events: Vec<v3::Event> = vec![
        Event::new(&definitions::GS_UP_RECEIVE)
            .with_identifiers([gateway("gw-1")])
            .with_data(&uplink)
            .into(),
        Event::new(&definitions::GS_STATUS_RECEIVE)
            .with_identifiers([gateway("gw-1")])
            .into(),
        Event::new(&definitions::NS_UP_DATA_RECEIVE)
            .with_identifiers([device("app-1", "dev-1")])
            .with_data(&uplink)
            .into(),
        Event::new(&definitions::NS_UP_DATA_DROP)
            .with_identifiers([device("app-1", "dev-2")])
            .into(),
        Event::new(&definitions::IS_APPLICATION_UPDATE)
            .with_identifiers([app("app-1")])
            .into(),
        Event::new(&definitions::NS_UP_DATA_RECEIVE)
            .with_identifiers([device("app-2", "dev-1")])
            .into(),
        // About a gateway, a device and its application at once.
        Event::new(&definitions::GS_UP_DROP)
            .with_identifiers([gateway("gw-1")])
            .with_identifiers([device("app-1", "dev-1")])
            .with_identifiers([app("app-1")])
            .into(),
        // About nothing.
        Event::new(&definitions::JS_JOIN_REJECT).into(),
    ];
    for event in &events {
        publisher.publish(event.clone());
    }
    // The other bus publishes one in protobuf.
    other.publish(
        Event::new(&definitions::NS_UP_JOIN_RECEIVE).with_identifiers([device("app-1", "dev-1")]),
    );
    publisher.flush().await.unwrap();
    other.flush().await.unwrap();

    async fn take(sub: &mut Subscription, n: usize, what: &str) -> Vec<String> {
        let mut names = Vec::new();
        let mut ids = HashSet::new();
        for _ in 0..n {
            let event = next(sub).await;
            assert!(
                ids.insert(event.unique_id.clone()),
                "{what}: duplicate {event:?}"
            );
            names.push(event.name.clone());
        }
        assert_quiet(sub, what).await;
        names
    }

    // Per publisher, in publish order; the two publishers interleave.
    let mut got = take(&mut all, 9, "all").await;
    got.sort();
    let mut want: Vec<String> = events.iter().map(|e| e.name.clone()).collect();
    want.push("ns.up.join.receive".into());
    want.sort();
    assert_eq!(got, want);

    let mut got = take(&mut app1, 5, "app-1").await;
    got.sort();
    assert_eq!(
        got,
        [
            "gs.up.drop",
            "is.application.update",
            "ns.up.data.drop",
            "ns.up.data.receive",
            "ns.up.join.receive"
        ]
    );
    let mut got = take(&mut dev1, 3, "dev-1").await;
    got.sort();
    assert_eq!(
        got,
        ["gs.up.drop", "ns.up.data.receive", "ns.up.join.receive"]
    );
    assert_eq!(
        take(&mut gw1_up, 2, "gw-1 gs.up.*").await,
        ["gs.up.receive", "gs.up.drop"]
    );
    assert_eq!(
        take(&mut drops, 2, "*.drop").await,
        ["ns.up.data.drop", "gs.up.drop"]
    );
    assert_eq!(take(&mut overlapping, 7, "overlapping").await.len(), 7);
    assert_eq!(
        take(&mut other_app, 1, "app-2").await,
        ["ns.up.data.receive"]
    );
    assert_eq!(publisher.stats().dropped, 0);
    assert_eq!(other.stats().dropped, 0);
    assert_eq!(other.stats().lagged, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_subscriber_lags_over_nats() {
    let server = NatsServer::start();
    let bus = EventBus::connect(&config(&server.url, Encoding::Protobuf, 8))
        .await
        .unwrap();
    let mut slow = bus.subscribe(Filter::all().gateway("gw-1")).await.unwrap();
    for i in 0..50u32 {
        bus.publish(
            Event::new(&definitions::GS_STATUS_RECEIVE)
                .with_identifiers([gateway("gw-1")])
                .with_context("seq", i.to_string().into_bytes()),
        );
        // Stay under the publish queue's 8 slots: this test is about the subscriber.
        if i % 4 == 3 {
            bus.flush().await.unwrap();
        }
    }
    bus.flush().await.unwrap();
    let deadline = Instant::now() + WAIT;
    while bus.stats().lagged < 42 {
        assert!(Instant::now() < deadline, "stats: {:?}", bus.stats());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(slow.recv().await.unwrap_err(), RecvError::Lagged(42));
    for i in 0..8u32 {
        assert_eq!(seq(&*next(&mut slow).await), i.to_string());
    }
    assert_quiet(&mut slow, "after the lag").await;
    assert_eq!(bus.stats().dropped, 0);
    assert_eq!(bus.stats().published, 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_always_wants_events() {
    // Subscribers in other processes are unknown to this one: every event is wanted.
    let server = NatsServer::start();
    let bus = connect(&server.url, Encoding::Json).await;
    assert!(bus.wants(&definitions::NS_UP_DATA_RECEIVE));
    let other_bus = connect(&server.url, Encoding::Json).await;
    let mut other = other_bus
        .subscribe(Filter::all().name("ns.up.*"))
        .await
        .unwrap();
    bus.publish_with(&definitions::NS_UP_DATA_RECEIVE, |e| {
        e.with_identifiers([device("app-1", "dev-1")])
    });
    bus.flush().await.unwrap();
    assert_eq!(next(&mut other).await.name, "ns.up.data.receive");
    let stats = bus.stats();
    assert_eq!((stats.published, stats.skipped), (1, 0));
}

#[tokio::test]
async fn unreachable_nats_fails_naming_the_url() {
    let url = format!("nats://user:s3cret@127.0.0.1:{}", free_port());
    let err = EventBus::connect(&config(&url, Encoding::Json, 16))
        .await
        .unwrap_err()
        .to_string();
    let redacted = url.replace("s3cret", "***");
    assert!(
        err.starts_with(&format!(
            "events.nats.url = {redacted:?}: cannot connect to NATS:"
        )),
        "{err}"
    );
    assert!(!err.contains("s3cret"), "password in {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_the_connection() {
    let mut server = NatsServer::start();
    let bus = connect(&server.url, Encoding::Json).await;
    assert_eq!(bus.health(), Ok(()));
    server.stop();
    let deadline = Instant::now() + WAIT;
    let err = loop {
        if let Err(e) = bus.health() {
            break e;
        }
        assert!(Instant::now() < deadline, "still healthy without a server");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(err.contains(&server.url), "{err}");
    // Publishing without a server neither fails nor waits.
    bus.publish(Event::new(&definitions::GS_STATUS_RECEIVE));
}

#[tokio::test]
async fn missing_credentials_file_is_named() {
    let mut config = config("nats://127.0.0.1:4222", Encoding::Json, 16);
    config.nats.as_mut().unwrap().credentials = Some("/nonexistent/tern.creds".into());
    let err = EventBus::connect(&config).await.unwrap_err().to_string();
    assert!(
        err.starts_with(
            "events.nats.credentials = \"/nonexistent/tern.creds\": cannot read the NATS credentials file:"
        ),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_messages_cross_buses_under_the_prefix() {
    let server = NatsServer::start();
    let a = connect(&server.url, Encoding::Json).await;
    let b = connect(&server.url, Encoding::Protobuf).await;
    assert_eq!(a.subject_prefix(), Some("tern"));
    let mut sub = b.subscribe_raw("as.mqtt.>").await.unwrap();
    let app = tern_events::subject_token("app.1");
    assert_eq!(app, "app~2E1", "a dot would add a subject token");
    for n in 0..3u8 {
        a.publish_raw(
            &format!("as.mqtt.{app}"),
            &[("Tern-Origin", "as-a")],
            vec![n].into(),
        )
        .await
        .unwrap();
    }
    // Event subscriptions never see raw messages, and raw ones never see events.
    let mut events = b.subscribe(Filter::all()).await.unwrap();
    for n in 0..3u8 {
        let message = tokio::time::timeout(WAIT, sub.recv())
            .await
            .expect("a raw message within the wait")
            .expect("the subscription is open");
        assert_eq!(message.subject, "tern.as.mqtt.app~2E1");
        assert_eq!(message.header("Tern-Origin"), Some("as-a"));
        assert_eq!(message.header("Other"), None);
        assert_eq!(&message.payload[..], [n], "in publication order");
    }
    assert_quiet(&mut events, "raw messages on an event subscription").await;

    // In-process, both calls say why they cannot work.
    let local = EventBus::in_process(8);
    assert_eq!(local.subject_prefix(), None);
    let err = local
        .publish_raw("as.mqtt.x", &[], Default::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("in-process"), "{err}");
    let err = local
        .subscribe_raw("as.mqtt.>")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("in-process"), "{err}");
}
