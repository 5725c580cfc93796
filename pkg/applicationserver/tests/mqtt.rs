//! The MQTT server against Debian's mosquitto clients: authentication failures, ACL
//! isolation between applications, downlink push by publication, and slow subscribers.

mod common;

use std::process::Stdio;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use common::*;
use tern_applicationserver::{AppMessage, TopicKind};
use tokio::process::Command;

fn keys() -> Keys {
    let mut k = Keys::default();
    k.0.insert(
        "read-1".into(),
        ("app-1".into(), vec!["application:traffic:read".into()]),
    );
    k.0.insert(
        "write-1".into(),
        (
            "app-1".into(),
            vec!["application:traffic:down:write".into()],
        ),
    );
    k.0.insert(
        "read-2".into(),
        ("app-2".into(), vec!["application:traffic:read".into()]),
    );
    k.0.insert(
        "info-1".into(),
        ("app-1".into(), vec!["application:info".into()]),
    );
    k
}

fn message(app: &str, dev: &str, body: &str) -> AppMessage {
    AppMessage {
        application_id: app.into(),
        device_id: dev.into(),
        kind: TopicKind::Up,
        json: body.as_bytes().to_vec().into(),
    }
}

/// Runs mosquitto_sub, returning its output once it exits.
fn sub(port: u16, user: &str, password: &str, topic: &str, count: u32) -> tokio::process::Child {
    Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-u",
            user,
            "-P",
            password,
        ])
        .args([
            "-t",
            topic,
            "-C",
            &count.to_string(),
            "-v",
            "-q",
            "1",
            "-W",
            "30",
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_failures_are_refused() {
    let h = start(keys()).await;
    let port = h.asrv.mqtt_addrs()[0].port();
    for (user, password) in [("app-1", "wrong"), ("app-1", "info-1")] {
        let out = sub(port, user, password, "#", 1)
            .wait_with_output()
            .await
            .unwrap();
        assert!(!out.status.success(), "{user}/{password} must be refused");
        let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
        assert!(
            err.contains("not authori") || err.contains("refused") || err.contains("bad user"),
            "{err}"
        );
    }
    // A key of app-2 used as app-1's: it names the wrong application.
    let out = sub(port, "app-1", "read-2", "#", 1)
        .wait_with_output()
        .await
        .unwrap();
    assert!(!out.status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_see_only_their_application() {
    let h = start(keys()).await;
    let port = h.asrv.mqtt_addrs()[0].port();
    let core = h.asrv.core().unwrap().clone();
    // Both subscribe to everything.
    let one = sub(port, "app-1", "read-1", "#", 1);
    let two = sub(port, "app-2", "read-2", "#", 1);
    wait_subscriptions(&h, 2).await;
    core.publish(message("app-1", "dev-a", r#"{"n":1}"#))
        .await
        .unwrap();
    core.publish(message("app-2", "dev-b", r#"{"n":2}"#))
        .await
        .unwrap();
    let out1 = one.wait_with_output().await.unwrap();
    let out2 = two.wait_with_output().await.unwrap();
    assert!(out1.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out1.stdout).trim(),
        r#"v3/app-1/devices/dev-a/up {"n":1}"#
    );
    // app-2's first (and only) message is its own, although app-1's was published first.
    assert_eq!(
        String::from_utf8_lossy(&out2.stdout).trim(),
        r#"v3/app-2/devices/dev-b/up {"n":2}"#
    );
    // A filter naming another application never matches anything of it. The first two
    // clients must be gone first, or their subscriptions would count as the new ones.
    for _ in 0..400 {
        if h.asrv.mqtt().unwrap().subscriptions() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let spy = sub(port, "app-2", "read-2", "v3/app-1/#", 1);
    let own = sub(port, "app-2", "read-2", "v3/app-2/devices/+/up", 1);
    wait_subscriptions(&h, 2).await;
    core.publish(message("app-1", "dev-a", r#"{"n":3}"#))
        .await
        .unwrap();
    core.publish(message("app-2", "dev-b", r#"{"n":4}"#))
        .await
        .unwrap();
    let out = own.wait_with_output().await.unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains(r#"{"n":4}"#));
    drop(spy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downlink_push_by_mqtt_reaches_the_link_encrypted() {
    let h = start(keys()).await;
    let port = h.asrv.mqtt_addrs()[0].port();
    let sk = b"session-1".to_vec();
    let mut rx = h.asrv.subscribe().unwrap();
    h.ns.send(join_accept("app-1", "dev-1", &sk));
    loop {
        if rx.recv().await.unwrap().kind == TopicKind::Join {
            break;
        }
    }
    *h.ns.expect.lock().unwrap() = (sk.clone(), 0);
    let body = format!(
        r#"{{"downlinks":[{{"f_port":15,"frm_payload":"{}","confirmed":true,"priority":"HIGH"}}]}}"#,
        B64.encode([1, 2, 3])
    );
    let out = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-u",
            "app-1",
            "-P",
            "write-1",
        ])
        .args([
            "-t",
            "v3/app-1/devices/dev-1/down/push",
            "-q",
            "1",
            "-m",
            &body,
            "-d",
        ])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(20), out)
        .await
        .expect("mosquitto_pub returns")
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    h.ns.wait_for("the pushed downlink", |s| !s.accepted.is_empty())
        .await;
    let seen = h.ns.seen.lock().unwrap();
    let d = &seen.accepted[0].downlinks[0];
    assert_eq!((d.f_port, d.f_cnt, d.confirmed), (15, 0, true));
    let mut clear = d.frm_payload.clone();
    lorawan::crypto::decrypt_frm_payload(
        &app_s_key(),
        lorawan::Direction::Downlink,
        lorawan::DevAddr(DEV_ADDR),
        0,
        &mut clear,
    );
    assert_eq!(clear, [1, 2, 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_key_cannot_push() {
    let h = start(keys()).await;
    let port = h.asrv.mqtt_addrs()[0].port();
    // The server drops the connection instead of acknowledging the publication.
    let out = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-u",
            "app-1",
            "-P",
            "read-1",
        ])
        .args(["-t", "v3/app-1/devices/dev-1/down/push", "-q", "1"])
        .args(["-m", r#"{"downlinks":[{"f_port":1,"frm_payload":"AQ=="}]}"#])
        .kill_on_drop(true)
        .output();
    let _ = tokio::time::timeout(Duration::from_secs(20), out).await;
    assert!(h.ns.seen.lock().unwrap().accepted.is_empty());
    assert!(h.ns.seen.lock().unwrap().refused.is_empty());
    let refused = h
        .asrv
        .mqtt()
        .unwrap()
        .metrics()
        .rejected
        .get_or_create(&vec![("reason", "publish_without_write_right".to_owned())])
        .get();
    assert_eq!(refused, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_subscriber_is_disconnected_without_slowing_others() {
    use bytes::BytesMut;
    use mqttbytes::QoS;
    use mqttbytes::v4::{Connect, Subscribe};
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

    let h = start(keys()).await;
    let port = h.asrv.mqtt_addrs()[0].port();
    let core = h.asrv.core().unwrap().clone();

    // A client that subscribes and then never reads.
    let mut slow = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let mut out = BytesMut::new();
    let mut connect = Connect::new("slow");
    connect.set_login("app-1", "read-1");
    connect.write(&mut out).unwrap();
    Subscribe::new("#", QoS::AtMostOnce)
        .write(&mut out)
        .unwrap();
    slow.write_all(&out).await.unwrap();
    let count = 200u32;
    let mut fast = sub(port, "app-1", "read-1", "v3/app-1/devices/+/up", count);
    let mut lines = tokio::io::BufReader::new(fast.stdout.take().unwrap()).lines();
    wait_subscriptions(&h, 2).await;

    // Far more than the slow client's queue (8) and its socket buffers hold; the fast client
    // is paced by what it printed, so only the slow one can fall behind.
    let big = format!("{{\"pad\":\"{}\"}}", "x".repeat(128 * 1024));
    let mut received = 0;
    for i in 0..count {
        core.publish(message("app-1", &format!("dev-{i}"), &big))
            .await
            .unwrap();
        if i % 4 == 3 {
            while received <= i {
                let line = lines
                    .next_line()
                    .await
                    .unwrap()
                    .expect("the fast client keeps up");
                assert!(line.starts_with("v3/app-1/devices/dev-"), "{line}");
                received += 1;
            }
        }
    }
    assert_eq!(received, count);
    assert!(fast.wait().await.unwrap().success());

    // The slow client was cut off: reading its socket ends (after what was buffered).
    let mut sink = vec![0u8; 1 << 20];
    let closed = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match slow.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the slow client must be disconnected");
    let kicked = h
        .asrv
        .mqtt()
        .unwrap()
        .metrics()
        .rejected
        .get_or_create(&vec![("reason", "slow_client".to_owned())])
        .get();
    assert!(kicked >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_listener_serves_mosquitto_clients() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let status = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(Stdio::null())
        .status()
        .expect("openssl is installed");
    assert!(status.success());
    let h = start_with(keys(), |c| {
        c.mqtt.cert = Some(cert.clone());
        c.mqtt.key = Some(key.clone());
        c.mqtt.tls_listen = "127.0.0.1:0".into();
    })
    .await;
    let tls_port = h.asrv.mqtt_addrs()[1].port();
    let client = Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &tls_port.to_string(),
            "-u",
            "app-1",
            "-P",
            "read-1",
        ])
        .arg("--cafile")
        .arg(&cert)
        .args(["-t", "#", "-C", "1", "-W", "30"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    wait_subscriptions(&h, 1).await;
    h.asrv
        .core()
        .unwrap()
        .publish(message("app-1", "dev-a", r#"{"tls":true}"#))
        .await
        .unwrap();
    let out = client.wait_with_output().await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        r#"{"tls":true}"#
    );
}
