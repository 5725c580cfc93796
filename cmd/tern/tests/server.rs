//! `tern start` as a real process: health, readiness, metrics, gRPC health, shutdown.

mod common;

use std::time::Duration;

use common::{Server, get};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

async fn health_client(server: &Server) -> HealthClient<tonic::transport::Channel> {
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", server.grpc))
        .unwrap()
        .connect()
        .await
        .unwrap();
    HealthClient::new(channel)
}

async fn check(
    client: &mut HealthClient<tonic::transport::Channel>,
    service: &str,
) -> Result<i32, tonic::Code> {
    client
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .map(|r| r.into_inner().status)
        .map_err(|s| s.code())
}

#[tokio::test]
async fn healthz_readyz_and_metrics_for_two_roles() {
    let mut server = Server::start("http", &["gs", "ns"], &[]);
    let ready = server.wait_ready().await;
    assert_eq!(
        ready,
        serde_json::json!({
            "ready": true,
            "shutting_down": false,
            "roles": {"gs": {"ready": true}, "ns": {"ready": true}},
            "services": {
                "directory": {"ready": true},
                "events": {"ready": true},
                "store": {"ready": true},
            },
        })
    );
    assert!(
        server.data_dir.is_dir(),
        "the data directory is created at start"
    );

    assert_eq!(get(server.http, "/healthz").await, (200, "ok\n".to_owned()));
    assert_eq!(get(server.http, "/no-such-page").await.0, 404);

    let (status, metrics) = get(server.http, "/metrics").await;
    assert_eq!(status, 200);
    let version = env!("CARGO_PKG_VERSION");
    for expected in [
        &format!("tern_build_info{{version=\"{version}\",commit=\"unknown\"}} 1") as &str,
        "process_start_time_seconds ",
        "process_resident_memory_bytes ",
        "process_open_fds ",
        "tern_role_ready{role=\"gs\"} 1",
        "tern_role_ready{role=\"ns\"} 1",
        "tern_http_requests_total{method=\"GET\",route=\"/healthz\",status=\"200\"} 1",
        "tern_http_requests_total{method=\"GET\",route=\"unmatched\",status=\"404\"} 1",
        "tern_http_requests_total{method=\"GET\",route=\"/readyz\",status=\"200\"}",
        "# EOF",
    ] {
        assert!(
            metrics.contains(expected),
            "missing {expected:?} in\n{metrics}"
        );
    }
}

#[tokio::test]
async fn no_role_all_and_duplicates_select_roles() {
    let mut all = Server::start("all", &[], &[]);
    let mut named_all = Server::start("named-all", &["gs", "all"], &[]);
    let mut dup = Server::start("dup", &["js", "js"], &[]);
    let five = serde_json::json!(["as", "gs", "is", "js", "ns"]);
    for server in [&mut all, &mut named_all] {
        let ready = server.wait_ready().await;
        let roles: Vec<&String> = ready["roles"].as_object().unwrap().keys().collect();
        assert_eq!(serde_json::json!(roles), five);
    }
    let ready = dup.wait_ready().await;
    assert_eq!(ready["roles"], serde_json::json!({"js": {"ready": true}}));
}

#[tokio::test]
async fn grpc_health_reports_started_roles_only() {
    let mut server = Server::start("grpc", &["gs", "ns"], &[]);
    server.wait_ready().await;
    let mut client = health_client(&server).await;
    let serving = ServingStatus::Serving as i32;
    // The health service follows the readiness tracker; give it a moment to catch up.
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while check(&mut client, "").await != Ok(serving) {
        assert!(
            std::time::Instant::now() < deadline,
            "process never SERVING"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(check(&mut client, "tern.gs").await, Ok(serving));
    assert_eq!(check(&mut client, "tern.ns").await, Ok(serving));
    assert_eq!(
        check(&mut client, "tern.js").await,
        Err(tonic::Code::NotFound)
    );
}

#[tokio::test]
async fn sigterm_stops_cleanly_even_with_open_connections() {
    let mut server = Server::start("sigterm", &["ns"], &[]);
    server.wait_ready().await;

    // A Watch stream and an idle keep-alive connection must not hold the shutdown up.
    let mut client = health_client(&server).await;
    let mut watch = client
        .watch(HealthCheckRequest {
            service: "tern.ns".to_owned(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(first.status, ServingStatus::Serving as i32);
    let idle = tokio::net::TcpStream::connect(server.http).await.unwrap();

    server.signal(libc::SIGTERM);
    // Watchers hear NOT_SERVING before the stream ends.
    let next = tokio::time::timeout(Duration::from_secs(5), watch.message())
        .await
        .unwrap();
    assert_eq!(
        next.unwrap().map(|m| m.status),
        Some(ServingStatus::NotServing as i32)
    );
    let (status, took) = server.wait_exit(Duration::from_secs(8)).await;
    assert_eq!(status.code(), Some(0), "{}", server.stderr());
    assert!(took < Duration::from_secs(5), "shutdown took {took:?}");
    let log = server.stderr();
    assert!(
        log.contains("SIGTERM") && log.contains("tern stopped"),
        "{log}"
    );
    drop(idle);

    // The ports are free again.
    std::net::TcpListener::bind(server.http).unwrap();
    std::net::TcpListener::bind(server.grpc).unwrap();
}

#[tokio::test]
async fn sigint_stops_cleanly() {
    let mut server = Server::start("sigint", &["js", "as", "ns"], &[]);
    server.wait_ready().await;
    server.signal(libc::SIGINT);
    let (status, _) = server.wait_exit(Duration::from_secs(8)).await;
    assert_eq!(status.code(), Some(0), "{}", server.stderr());
}

#[tokio::test]
async fn json_logs_when_configured() {
    let mut server = Server::start("json", &["gs"], &[("TERN_LOG__FORMAT", "json")]);
    server.wait_ready().await;
    server.signal(libc::SIGTERM);
    server.wait_exit(Duration::from_secs(8)).await;
    let log = server.stderr();
    // Every line is a JSON object; one of them announces the start.
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let started = lines
        .iter()
        .find(|l| l["fields"]["message"] == "tern started")
        .unwrap_or_else(|| panic!("no start line: {log}"));
    assert_eq!(started["fields"]["roles"], "gs", "{log}");
}

#[tokio::test]
async fn a_port_in_use_fails_naming_the_key() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let mut server = Server::spawn("port", &["gs"], &[("TERN_GRPC__LISTEN", &addr)]);
    let (status, _) = server.wait_exit(Duration::from_secs(8)).await;
    assert_eq!(status.code(), Some(1));
    let log = server.stderr();
    assert!(log.contains("grpc.listen") && log.contains(&addr), "{log}");
}

/// Opens a connection to `server`'s HTTP port and sends a request head without its final
/// blank line: to the server that is a request in flight.
async fn half_sent_request(server: &Server) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(server.http).await.unwrap();
    stream
        .write_all(b"GET /readyz HTTP/1.1\r\nHost: tern\r\n")
        .await
        .unwrap();
    // Give the server time to read the partial head; until then the connection looks idle.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stream
}

/// Waits until the HTTP listener refuses connections, i.e. the shutdown has begun.
async fn wait_listener_closed(server: &Server) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while tokio::net::TcpStream::connect(server.http).await.is_ok() {
        assert!(std::time::Instant::now() < deadline, "listener still open");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn in_flight_request_completes_during_shutdown_and_sees_503() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut server = Server::start("in-flight", &["gs", "js"], &[]);
    server.wait_ready().await;
    let mut stream = half_sent_request(&server).await;

    server.signal(libc::SIGTERM);
    wait_listener_closed(&server).await;
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "waits for the request"
    );

    stream.write_all(b"\r\n").await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 503"), "{response}");
    let body: serde_json::Value =
        serde_json::from_str(response.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(body["ready"], false);
    assert_eq!(body["shutting_down"], true);
    assert_eq!(body["not_ready"], serde_json::json!(["gs", "js"]));

    let (status, _) = server.wait_exit(Duration::from_secs(8)).await;
    assert_eq!(status.code(), Some(0), "{}", server.stderr());
}

#[tokio::test]
async fn shutdown_past_its_timeout_exits_non_zero_with_a_log_line() {
    let mut server = Server::start("overrun", &["ns"], &[("TERN_SHUTDOWN__TIMEOUT", "500ms")]);
    server.wait_ready().await;
    let _stuck = half_sent_request(&server).await;

    server.signal(libc::SIGTERM);
    let (status, took) = server.wait_exit(Duration::from_secs(8)).await;
    assert_eq!(status.code(), Some(1));
    assert!(took >= Duration::from_millis(450), "exited after {took:?}");
    let log = server.stderr();
    assert!(
        log.contains("did not finish within shutdown.timeout"),
        "{log}"
    );
}

#[tokio::test]
async fn a_second_signal_during_shutdown_exits_at_once() {
    let mut server = Server::start("second", &["is"], &[("TERN_SHUTDOWN__TIMEOUT", "1m")]);
    server.wait_ready().await;
    let _stuck = half_sent_request(&server).await;

    server.signal(libc::SIGTERM);
    wait_listener_closed(&server).await;
    server.signal(libc::SIGINT);
    let (status, took) = server.wait_exit(Duration::from_secs(8)).await;
    assert_eq!(status.code(), Some(1));
    assert!(took < Duration::from_secs(5), "took {took:?}");
    let log = server.stderr();
    assert!(log.contains("second signal"), "{log}");
}
