//! The application's view through the real MQTT clients of Debian's `mosquitto-clients`.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::Server;

/// A running `mosquitto_sub` printing `topic payload` lines until it has its messages; with
/// `-d`, its protocol trace too (shown when a test fails).
pub struct Subscriber {
    child: Child,
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    reader: std::thread::JoinHandle<()>,
}

/// Subscribes to `topic` for `count` messages and returns once the broker granted the
/// subscription, so that nothing published afterwards is missed.
pub fn subscribe(mqtt: SocketAddr, user: &str, key: &str, topic: &str, count: usize) -> Subscriber {
    use std::io::BufRead;
    // Line-buffered (coreutils `stdbuf`): a pipe would hold the trace back until exit.
    let mut child = Command::new("stdbuf")
        .args(["-oL", "mosquitto_sub"])
        .args(["-h", &mqtt.ip().to_string(), "-p", &mqtt.port().to_string()])
        .args(["-u", user, "-P", key, "-t", topic, "-v", "-q", "1", "-d"])
        // No `-W`: its timeout follows the wall clock, which may jump on a test machine;
        // `messages` enforces the limit on the monotonic clock instead.
        .args(["-C", &count.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("mosquitto_sub (Debian package mosquitto-clients) is installed");
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn({
        let lines = lines.clone();
        move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                lines.lock().unwrap().push(line);
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    while !lines
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.starts_with("Subscribed (mid"))
    {
        assert!(
            Instant::now() < deadline,
            "mosquitto_sub did not subscribe: {:?}",
            lines.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Subscriber {
        child,
        lines,
        reader,
    }
}

/// The JSON payloads of the messages `mosquitto_sub -v` printed; shows its trace and the
/// servers' logs when it did not get them all.
pub fn messages(mut sub: Subscriber, servers: &[&Server]) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = sub.child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            // Killed: the assertion below shows what arrived before the limit.
            let _ = sub.child.kill();
            break sub.child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    sub.reader.join().unwrap();
    let lines = sub.lines.lock().unwrap().clone();
    assert!(
        status.success(),
        "mosquitto_sub: {status}\n{}\n--- tern's logs:\n{}",
        lines.join("\n"),
        servers
            .iter()
            .map(|s| s.log())
            .collect::<Vec<_>>()
            .join("\n---\n")
    );
    lines
        .iter()
        .filter(|l| l.starts_with("v3/"))
        .map(|l| {
            let (_, json) = l.split_once(' ').unwrap();
            serde_json::from_str(json).unwrap()
        })
        .collect()
}

/// Publishes `payload` on `topic` with `mosquitto_pub` (QoS 1) and asserts it succeeded.
pub fn publish(mqtt: SocketAddr, user: &str, key: &str, topic: &str, payload: &str) {
    let out = Command::new("mosquitto_pub")
        .args(["-h", &mqtt.ip().to_string(), "-p", &mqtt.port().to_string()])
        .args(["-u", user, "-P", key, "-q", "1", "-t", topic, "-m", payload])
        .output()
        .expect("mosquitto_pub (Debian package mosquitto-clients) is installed");
    assert!(out.status.success(), "mosquitto_pub: {out:?}");
}
