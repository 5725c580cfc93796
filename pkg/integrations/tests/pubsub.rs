//! Pub/sub against a real `nats-server` and a real `mosquitto` broker (Debian packages),
//! started per test on free loopback ports: upstream messages out, downlinks in.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use tern_api::v3;
use tern_api::v3::application_pub_sub::Provider;
use tern_cluster::role::Shutdown;
use tern_integrations::UpstreamKind;

/// A child process on a loopback port; killed on drop.
struct Daemon {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn binary(env: &str, candidates: &[&str]) -> PathBuf {
    if let Some(path) = std::env::var_os(env) {
        return path.into();
    }
    candidates
        .iter()
        .find(|c| Path::new(c).exists())
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("none of {candidates:?} exists; set {env}"))
}

fn wait_listening(child: &mut Child, port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("{what} exited with {status}");
        }
        assert!(Instant::now() < deadline, "{what} did not listen on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn nats_server() -> Daemon {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = Command::new(binary(
        "TERN_NATS_SERVER",
        &["/usr/sbin/nats-server", "/usr/bin/nats-server"],
    ))
    .args(["-a", "127.0.0.1", "-p", &port.to_string()])
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .expect("start nats-server");
    wait_listening(&mut child, port, "nats-server");
    Daemon {
        child,
        port,
        _dir: dir,
    }
}

/// mosquitto with a password file: user `tern`, password `s3cret`.
fn mosquitto() -> Daemon {
    mosquitto_with("")
}

/// mosquitto with a password file and `extra` configuration lines for its listener.
fn mosquitto_with(extra: &str) -> Daemon {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let passwords = dir.path().join("passwords");
    let status = Command::new("mosquitto_passwd")
        .args(["-b", "-c"])
        .arg(&passwords)
        .args(["tern", "s3cret"])
        .status()
        .expect("mosquitto_passwd is installed (Debian package mosquitto)");
    assert!(status.success());
    let conf = dir.path().join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\n{extra}allow_anonymous false\npassword_file {}\npersistence false\n",
            passwords.display()
        ),
    )
    .unwrap();
    let mut child = Command::new(binary(
        "TERN_MOSQUITTO",
        &["/usr/sbin/mosquitto", "/usr/bin/mosquitto"],
    ))
    .arg("-c")
    .arg(&conf)
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .expect("start mosquitto");
    wait_listening(&mut child, port, "mosquitto");
    Daemon {
        child,
        port,
        _dir: dir,
    }
}

fn pubsub(id: &str, base_topic: &str, provider: Provider) -> v3::ApplicationPubSub {
    v3::ApplicationPubSub {
        ids: Some(v3::ApplicationPubSubIdentifiers {
            application_ids: Some(v3::ApplicationIdentifiers {
                application_id: "app-1".into(),
            }),
            pub_sub_id: id.into(),
        }),
        base_topic: base_topic.into(),
        provider: Some(provider),
        ..Default::default()
    }
}

const DOWNLINK: &str = r#"{"downlinks":[{"f_port":1,"frm_payload":"AQ=="}]}"#;

#[tokio::test]
async fn nats_publishes_upstream_and_takes_downlinks() {
    let server = nats_server();
    let url = format!("nats://127.0.0.1:{}", server.port);
    let dir = tempfile::tempdir().unwrap();
    let sink = Arc::new(RecordingSink::default());
    let integ = integrations(open_store(dir.path()).await, fast_config(), sink.clone());
    let shutdown = Shutdown::new();
    integ.start(shutdown.clone()).await.unwrap();

    let test = async_nats::connect(url.as_str()).await.unwrap();
    let mut sub = test.subscribe("tenant.v3.app-1.>").await.unwrap();
    test.flush().await.unwrap();
    integ
        .set_pubsub(pubsub(
            "ps",
            "tenant.",
            Provider::Nats(v3::ApplicationPubSubNats {
                server_url: url.clone(),
            }),
        ))
        .await
        .unwrap();
    let sent = [
        (UpstreamKind::Uplink, "tenant.v3.app-1.devices.dev-1.up"),
        (
            UpstreamKind::JoinAccept,
            "tenant.v3.app-1.devices.dev-1.join",
        ),
        (
            UpstreamKind::DownlinkQueued,
            "tenant.v3.app-1.devices.dev-1.down.queued",
        ),
        (
            UpstreamKind::DownlinkSent,
            "tenant.v3.app-1.devices.dev-1.down.sent",
        ),
        (
            UpstreamKind::DownlinkAck,
            "tenant.v3.app-1.devices.dev-1.down.ack",
        ),
        (
            UpstreamKind::DownlinkNack,
            "tenant.v3.app-1.devices.dev-1.down.nack",
        ),
        (
            UpstreamKind::DownlinkFailed,
            "tenant.v3.app-1.devices.dev-1.down.failed",
        ),
        (
            UpstreamKind::DownlinkQueueInvalidated,
            "tenant.v3.app-1.devices.dev-1.down.invalidated",
        ),
    ];
    // Another application's messages do not go to app-1's integration.
    integ.publish(&upstream("app-2", "dev-1", UpstreamKind::Uplink, 99));
    for (n, (kind, _)) in sent.iter().enumerate() {
        integ.publish(&upstream("app-1", "dev-1", *kind, n as u32));
    }
    for (n, (_, subject)) in sent.iter().enumerate() {
        let msg = tokio::time::timeout(WAIT, sub.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(msg.subject.as_str(), *subject);
        let body: serde_json::Value = serde_json::from_slice(&msg.payload).unwrap();
        assert_eq!(body["n"], n);
    }

    // The integration subscribed before it published, so it now receives downlinks.
    test.publish("tenant.v3.app-1.devices.dev-1.down.push", DOWNLINK.into())
        .await
        .unwrap();
    test.publish(
        "tenant.v3.app-1.devices.dev-2.down.replace",
        DOWNLINK.into(),
    )
    .await
    .unwrap();
    test.publish("tenant.v3.app-1.devices.dev-3.down.push", "not json".into())
        .await
        .unwrap();
    test.flush().await.unwrap();
    // The test's own subscription sees the three downlink messages too.
    for _ in 0..3 {
        let msg = tokio::time::timeout(WAIT, sub.next())
            .await
            .unwrap()
            .unwrap();
        assert!(msg.subject.as_str().contains(".down."), "{}", msg.subject);
    }
    eventually("two downlinks", async || sink.all().len() >= 2).await;
    let mut pushed = sink.all();
    pushed.sort_by(|a, b| a.dev.cmp(&b.dev));
    assert_eq!(pushed[0].dev, "dev-1");
    assert!(!pushed[0].replace);
    assert_eq!(pushed[0].body["downlinks"][0]["f_port"], 1);
    assert_eq!(pushed[1].dev, "dev-2");
    assert!(pushed[1].replace);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(sink.all().len(), 2, "the bad body is refused");

    // Deleted: disconnected, nothing more published.
    integ.delete_pubsub("app-1", "ps").await.unwrap();
    integ.publish(&upstream("app-1", "dev-1", UpstreamKind::Uplink, 100));
    assert!(
        tokio::time::timeout(Duration::from_millis(300), sub.next())
            .await
            .is_err()
    );
    shutdown.trigger();
}

/// `mosquitto_sub` on `v3/app-1/#`, printing `topic payload` lines.
struct MosquittoSub {
    _child: tokio::process::Child,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
}

impl MosquittoSub {
    /// Starts it and returns once it is subscribed (a probe message reached it).
    async fn start(port: u16) -> Self {
        Self::start_with(port, &[]).await
    }

    /// Starts it with extra `mosquitto_sub` arguments (e.g. `--cafile`).
    async fn start_with(port: u16, extra: &[&str]) -> Self {
        use tokio::io::AsyncBufReadExt;
        let mut child = tokio::process::Command::new("mosquitto_sub")
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(extra)
            .args(["-u", "tern", "-P", "s3cret", "-v", "-t", "v3/app-1/#"])
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("mosquitto_sub is installed (Debian package mosquitto-clients)");
        let stdout = child.stdout.take().unwrap();
        let mut sub = Self {
            _child: child,
            lines: tokio::io::BufReader::new(stdout).lines(),
        };
        let deadline = Instant::now() + WAIT;
        loop {
            mosquitto_pub_with(port, extra, "v3/app-1/probe", "{}");
            if let Ok(Ok(Some(line))) =
                tokio::time::timeout(Duration::from_millis(200), sub.lines.next_line()).await
            {
                assert!(line.starts_with("v3/app-1/probe"), "{line}");
                break;
            }
            assert!(Instant::now() < deadline, "mosquitto_sub did not subscribe");
        }
        sub
    }

    /// The next line that is not a probe.
    async fn next(&mut self) -> (String, serde_json::Value) {
        loop {
            let line = tokio::time::timeout(WAIT, self.lines.next_line())
                .await
                .expect("a message within the wait")
                .unwrap()
                .expect("mosquitto_sub still running");
            let (topic, body) = line.split_once(' ').unwrap();
            if topic != "v3/app-1/probe" {
                return (topic.to_owned(), serde_json::from_str(body).unwrap());
            }
        }
    }
}

fn mosquitto_pub(port: u16, topic: &str, message: &str) {
    mosquitto_pub_with(port, &[], topic, message)
}

fn mosquitto_pub_with(port: u16, extra: &[&str], topic: &str, message: &str) {
    let status = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(extra)
        .args([
            "-u", "tern", "-P", "s3cret", "-q", "1", "-t", topic, "-m", message,
        ])
        .status()
        .expect("mosquitto_pub is installed");
    assert!(status.success());
}

#[tokio::test]
async fn mqtt_publishes_upstream_and_takes_downlinks() {
    let broker = mosquitto();
    let dir = tempfile::tempdir().unwrap();
    let sink = Arc::new(RecordingSink::default());
    let integ = integrations(open_store(dir.path()).await, fast_config(), sink.clone());
    let shutdown = Shutdown::new();
    integ.start(shutdown.clone()).await.unwrap();

    let mut sub = MosquittoSub::start(broker.port).await;
    let mqtt = |password: &str| {
        Provider::Mqtt(v3::ApplicationPubSubMqtt {
            server_url: format!("mqtt://127.0.0.1:{}", broker.port),
            username: "tern".into(),
            password: password.into(),
            publish_qos: 1,
            subscribe_qos: 1,
            ..Default::default()
        })
    };
    // A wrong password: the broker refuses the connection, nothing is published.
    integ
        .set_pubsub(pubsub("ps", "", mqtt("wrong")))
        .await
        .unwrap();
    integ.publish(&upstream("app-1", "dev-1", UpstreamKind::DownlinkQueued, 0));
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The right password (replacing the integration reconnects it).
    integ
        .set_pubsub(pubsub("ps", "", mqtt("s3cret")))
        .await
        .unwrap();
    integ.publish(&upstream("app-1", "dev-1", UpstreamKind::Uplink, 1));
    integ.publish(&upstream("app-1", "dev-1", UpstreamKind::DownlinkFailed, 2));
    integ.publish(&upstream("app-1", "dev-2", UpstreamKind::JoinAccept, 3));
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(sub.next().await);
    }
    let topics: Vec<&str> = got.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(
        topics,
        [
            "v3/app-1/devices/dev-1/up",
            "v3/app-1/devices/dev-1/down/failed",
            "v3/app-1/devices/dev-2/join"
        ]
    );
    assert_eq!(got[0].1["n"], 1);

    // The integration subscribes once connected; publish until it has taken each downlink.
    for (op, replace) in [("push", false), ("replace", true)] {
        let deadline = Instant::now() + WAIT;
        loop {
            mosquitto_pub(
                broker.port,
                &format!("v3/app-1/devices/dev-1/down/{op}"),
                DOWNLINK,
            );
            let seen = async || sink.all().iter().any(|p| p.replace == replace);
            let wait = Instant::now() + Duration::from_millis(500);
            while !seen().await && Instant::now() < wait {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if seen().await {
                break;
            }
            assert!(Instant::now() < deadline, "no {op} downlink");
        }
    }
    let pushed = sink.all();
    assert!(pushed.iter().all(|p| p.app == "app-1" && p.dev == "dev-1"));
    assert_eq!(pushed[0].body["downlinks"][0]["frm_payload"], "AQ==");
    shutdown.trigger();
}

/// A test CA and a server certificate for 127.0.0.1 it signed, made with openssl.
fn test_pki(dir: &Path) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl is installed");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    std::fs::write(dir.join("ext.cnf"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    run(&[
        &["req", "-x509"],
        &ec[..],
        &[
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=tern-test-ca",
        ],
    ]
    .concat());
    run(&[
        &["req"],
        &ec[..],
        &[
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    ]
    .concat());
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
    // mosquitto started as root reads its key after switching to its own user.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    for f in ["ca.pem", "server.pem", "server.key"] {
        std::fs::set_permissions(dir.join(f), std::fs::Permissions::from_mode(0o644)).unwrap();
    }
}

#[tokio::test]
async fn mqtt_over_tls_verifies_the_broker_with_the_configured_ca() {
    let pki = tempfile::tempdir().unwrap();
    test_pki(pki.path());
    let file = |name: &str| pki.path().join(name).display().to_string();
    let broker = mosquitto_with(&format!(
        "cafile {}\ncertfile {}\nkeyfile {}\n",
        file("ca.pem"),
        file("server.pem"),
        file("server.key")
    ));
    let dir = tempfile::tempdir().unwrap();
    let sink = Arc::new(RecordingSink::default());
    let integ = integrations(open_store(dir.path()).await, fast_config(), sink.clone());
    let shutdown = Shutdown::new();
    integ.start(shutdown.clone()).await.unwrap();
    let ca_file = file("ca.pem");
    let tls_args = ["--cafile", ca_file.as_str()];
    let mut sub = MosquittoSub::start_with(broker.port, &tls_args).await;

    integ
        .set_pubsub(pubsub(
            "tls",
            "",
            Provider::Mqtt(v3::ApplicationPubSubMqtt {
                server_url: format!("mqtts://127.0.0.1:{}", broker.port),
                username: "tern".into(),
                password: "s3cret".into(),
                tls_ca: std::fs::read(pki.path().join("ca.pem")).unwrap(),
                ..Default::default()
            }),
        ))
        .await
        .unwrap();
    integ.publish(&upstream("app-1", "dev-9", UpstreamKind::DownlinkAck, 5));
    let (topic, body) = sub.next().await;
    assert_eq!(topic, "v3/app-1/devices/dev-9/down/ack");
    assert_eq!(body["n"], 5);

    let deadline = Instant::now() + WAIT;
    while sink.all().is_empty() {
        mosquitto_pub_with(
            broker.port,
            &tls_args,
            "v3/app-1/devices/dev-9/down/push",
            DOWNLINK,
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(Instant::now() < deadline, "no downlink over TLS");
    }
    assert_eq!(sink.all()[0].dev, "dev-9");
    shutdown.trigger();
}
