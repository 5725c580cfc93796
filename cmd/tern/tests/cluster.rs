//! Two `tern` processes that reach each other over gRPC: `tern start gs ns js` and
//! `tern start as`, through a static peer directory and through a real etcd. The AS's link to
//! the NS is authenticated; wrong or missing credentials are refused with a clear message.

mod common;

use std::net::TcpListener;
use std::time::{Duration, Instant};

use common::{Server, get, run, temp_dir};
use tern_e2e::services::Etcd;

const KEY: &str = r#"["cluster-key-for-tests-0001"]"#;

/// Polls `/readyz` until `pred` holds for its JSON, or panics with the last answer.
async fn wait_readyz(
    server: &Server,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, body) = get(server.http, "/readyz").await;
        let json: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        if pred(&json) {
            return json;
        }
        assert!(
            Instant::now() < deadline,
            "readyz never matched: {body}\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn as_reason(json: &serde_json::Value) -> String {
    json["roles"]["as"]["reason"]
        .as_str()
        .unwrap_or("")
        .to_owned()
}

#[tokio::test]
async fn external_as_links_to_ns_through_static_directory() {
    let mut ns = Server::start(
        "static-ns",
        &["gs", "ns", "js"],
        &[("TERN_CLUSTER__KEYS", KEY)],
    );
    ns.wait_ready().await;
    let ns_address = format!("http://{}", ns.grpc);

    let mut app_server = Server::start(
        "static-as",
        &["as"],
        &[
            ("TERN_CLUSTER__KEYS", KEY),
            ("TERN_CLUSTER__NETWORK_SERVER", &ns_address),
        ],
    );
    let ready = app_server.wait_ready().await;
    assert_eq!(ready["roles"]["as"]["ready"], true, "{ready}");
    assert!(
        ns.log().contains("application link established"),
        "{}",
        ns.log()
    );
    let (_, metrics) = get(ns.http, "/metrics").await;
    assert!(metrics.contains("tern_ns_links_active 1"), "{metrics}");

    // The NS goes away: the AS is no longer ready and says why.
    ns.signal(libc::SIGTERM);
    ns.wait_exit(Duration::from_secs(8)).await;
    let json = wait_readyz(&app_server, |j| j["ready"] == false).await;
    assert!(
        as_reason(&json).starts_with("not linked to the Network Server"),
        "{json}"
    );
}

#[tokio::test]
async fn wrong_or_missing_credentials_are_refused_with_a_clear_message() {
    let mut ns = Server::start("creds-ns", &["ns"], &[("TERN_CLUSTER__KEYS", KEY)]);
    ns.wait_ready().await;
    let ns_address = format!("http://{}", ns.grpc);

    let wrong = Server::start(
        "creds-wrong",
        &["as"],
        &[
            ("TERN_CLUSTER__KEYS", r#"["another-cluster-key-0002"]"#),
            ("TERN_CLUSTER__NETWORK_SERVER", &ns_address),
        ],
    );
    let json = wait_readyz(&wrong, |j| as_reason(j).contains("Unauthenticated")).await;
    assert!(
        as_reason(&json).contains("cluster key not accepted"),
        "{json}"
    );

    // An API key needs an Identity Server to check it; this NS has none and says so.
    let api_key = Server::start(
        "creds-apikey",
        &["as"],
        &[
            (
                "TERN_APPLICATION_SERVER__NETWORK_SERVER_API_KEY",
                "NNSXS.some-key.secret",
            ),
            (
                "TERN_APPLICATION_SERVER__LINK__APPLICATIONS",
                r#"["app-1"]"#,
            ),
            ("TERN_CLUSTER__NETWORK_SERVER", &ns_address),
        ],
    );
    let json = wait_readyz(&api_key, |j| as_reason(j).contains("Unauthenticated")).await;
    assert!(
        as_reason(&json).contains("API keys are not accepted"),
        "{json}"
    );

    // No credentials at all: the AS does not start, and says what to configure.
    let dir = temp_dir("creds-missing");
    let out = run(
        &dir,
        &["start", "as"],
        &[
            ("TERN_CLUSTER__NETWORK_SERVER", &ns_address),
            ("TERN_HTTP__LISTEN", "127.0.0.1:0"),
            ("TERN_GRPC__LISTEN", "127.0.0.1:0"),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("set cluster.keys"), "{stderr}");
}

#[tokio::test]
async fn external_as_finds_the_ns_through_etcd() {
    let etcd = Etcd::start();
    let endpoints = format!(r#"["{}"]"#, etcd.url);
    // The NS registers the address it listens on: a free port chosen here, and another one
    // when a test running in parallel takes it between the choice and the bind.
    let mut attempts = 0;
    let mut ns = loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let ns_address = format!("http://127.0.0.1:{port}");
        match Server::try_start(
            "etcd-ns",
            &["gs", "ns", "js"],
            &[
                ("TERN_CLUSTER__KEYS", KEY),
                ("TERN_CLUSTER__ETCD__ENDPOINTS", &endpoints),
                ("TERN_CLUSTER__INSTANCE_ID", "ns-1"),
                ("TERN_CLUSTER__ADVERTISE_ADDRESS", &ns_address),
                ("TERN_GRPC__LISTEN", &ns_address["http://".len()..]),
            ],
        ) {
            Ok(ns) => break ns,
            Err(e) if e.contains("Address already in use") && attempts < 5 => attempts += 1,
            Err(e) => panic!("{e}"),
        }
    };
    ns.wait_ready().await;

    let mut app_server = Server::start(
        "etcd-as",
        &["as"],
        &[
            ("TERN_CLUSTER__KEYS", KEY),
            ("TERN_CLUSTER__ETCD__ENDPOINTS", &endpoints),
            ("TERN_CLUSTER__INSTANCE_ID", "as-1"),
        ],
    );
    let ready = app_server.wait_ready().await;
    assert_eq!(ready["roles"]["as"]["ready"], true, "{ready}");
    assert_eq!(ready["services"]["directory"]["ready"], true, "{ready}");
    assert!(
        ns.log().contains("application link established"),
        "{}",
        ns.log()
    );
}
