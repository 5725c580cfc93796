//! `tern start is` and `tern admin ...` through the real binary: bootstrap credentials,
//! REST login and API keys, and offline administration on the configured store.

mod common;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::{Server, run, temp_dir};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// A cheap argon2 cost: a debug build hashes slowly.
const CHEAP: &[(&str, &str)] = &[
    ("TERN_IDENTITY_SERVER__HASH_MEMORY_KIB", "64"),
    ("TERN_IDENTITY_SERVER__HASH_ITERATIONS", "1"),
];

/// `method http://addr/path` with an optional bearer token and JSON body.
async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut request = hyper::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    if let Some(token) = bearer {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let request = request
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let response = client.request(request).await.unwrap();
    let status = response.status().as_u16();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    (status, json)
}

/// `tern start is --data-dir data_dir` on loopback ports; returns the child and its HTTP
/// address once it logged "tern started" and answers `/readyz`.
fn start_on(dir: &Path, data_dir: &str) -> (std::process::Child, SocketAddr) {
    use std::io::{BufRead, BufReader};
    let mut cmd = common::tern(dir);
    cmd.args(["start", "is", "--data-dir", data_dir])
        .env("TERN_HTTP__LISTEN", "127.0.0.1:0")
        .env("TERN_GRPC__LISTEN", "127.0.0.1:0")
        .envs(CHEAP.iter().copied())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("tern started") {
                let http = line
                    .split_whitespace()
                    .find_map(|t| t.strip_prefix("http="))
                    .and_then(|a| a.parse::<SocketAddr>().ok());
                let _ = tx.send(http);
            }
        }
    });
    let http = rx
        .recv_timeout(std::time::Duration::from_secs(30))
        .expect("tern start is did not start")
        .expect("an http= address in the start line");
    (child, http)
}

fn bootstrap_value(data_dir: &Path, key: &str) -> String {
    let text = std::fs::read_to_string(data_dir.join("bootstrap.txt")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key} = \"")))
        .and_then(|v| v.strip_suffix('"'))
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn start_is_bootstraps_and_serves_the_registry_over_rest() {
    let mut server = Server::start("is-bootstrap", &["is"], CHEAP);
    server.wait_ready().await;
    let file = server.data_dir.join("bootstrap.txt");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let key = bootstrap_value(&server.data_dir, "api-key");
    let password = bootstrap_value(&server.data_dir, "password");
    let log = server.log();
    assert!(log.contains("bootstrap.txt"), "{log}");
    assert!(
        !log.contains(&key) && !log.contains(&password),
        "secrets in the log"
    );

    let http = server.http;
    let (status, info) = send(http, "GET", "/api/v3/auth/info", Some(&key), None).await;
    assert_eq!(status, 200, "{info}");
    assert_eq!(info["is_admin"], true, "{info}");

    let (status, _) = send(http, "GET", "/api/v3/applications", None, None).await;
    assert_eq!(status, 401);

    let (status, tokens) = send(
        http,
        "POST",
        "/api/v3/auth/login",
        None,
        Some(serde_json::json!({"user_id": "admin", "password": password})),
    )
    .await;
    assert_eq!(status, 200, "{tokens}");
    let access = tokens["access_token"].as_str().unwrap().to_owned();

    let (status, app) = send(
        http,
        "POST",
        "/api/v3/users/admin/applications",
        Some(&access),
        Some(
            serde_json::json!({"application": {"ids": {"application_id": "app-1"}, "name": "App"}}),
        ),
    )
    .await;
    assert_eq!(status, 200, "{app}");
    let (status, list) = send(http, "GET", "/api/v3/applications", Some(&key), None).await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["applications"][0]["ids"]["application_id"], "app-1");

    // An application key without devices:write is refused, naming the right.
    let (status, created) = send(
        http,
        "POST",
        "/api/v3/applications/app-1/api-keys",
        Some(&key),
        Some(serde_json::json!({"name": "ro", "rights": ["RIGHT_APPLICATION_DEVICES_READ"]})),
    )
    .await;
    assert_eq!(status, 200, "{created}");
    let app_key = created["key"].as_str().unwrap().to_owned();
    let (status, err) = send(
        http,
        "POST",
        "/api/v3/applications/app-1/devices",
        Some(&app_key),
        Some(serde_json::json!({"end_device": {"ids": {"device_id": "dev-1", "application_ids": {"application_id": "app-1"}}}})),
    )
    .await;
    assert_eq!(status, 403, "{err}");
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains("application:devices:write"),
        "{err}"
    );
}

#[tokio::test]
async fn admin_commands_work_offline_on_the_configured_store() {
    let dir = temp_dir("is-admin");
    let data = dir.join("data");
    let data_arg = data.to_str().unwrap();
    let admin = |args: &[&str]| {
        let mut all = vec!["admin"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--data-dir", data_arg]);
        run(&dir, &all, CHEAP)
    };

    let out = admin(&["create-user", "bob", "--admin"]);
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let password = stdout
        .lines()
        .find_map(|l| l.strip_prefix("password: "))
        .expect("a generated password is printed")
        .to_owned();

    let out = admin(&["create-user", "bob"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already exists"),
        "{out:?}"
    );

    let out = admin(&[
        "create-api-key",
        "--entity",
        "user:bob",
        "--rights",
        "user:info,nonsense",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("\"nonsense\" is not a right"),
        "{out:?}"
    );
    let out = admin(&["create-api-key", "--entity", "user:bob", "--name", "ops"]);
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let key = stdout
        .lines()
        .find(|l| l.starts_with("TERN."))
        .expect("the key is printed")
        .to_owned();

    let out = admin(&["set-password", "bob", "--password", "a-new-password"]);
    assert!(out.status.success(), "{out:?}");
    let out = admin(&["set-password", "nobody", "--password", "a-new-password"]);
    assert_eq!(out.status.code(), Some(1));

    // A server on that store: no bootstrap (the store has a user), the key and the new
    // password work, the old one does not.
    let (mut child, http) = start_on(&dir, data_arg);
    assert!(!data.join("bootstrap.txt").exists());
    let (status, info) = send(http, "GET", "/api/v3/auth/info", Some(&key), None).await;
    assert_eq!(status, 200, "{info}");
    assert_eq!(info["is_admin"], true, "{info}");
    for (pw, expected) in [(password.as_str(), 401), ("a-new-password", 200)] {
        let (status, body) = send(
            http,
            "POST",
            "/api/v3/auth/login",
            None,
            Some(serde_json::json!({"user_id": "bob", "password": pw})),
        )
        .await;
        assert_eq!(status, expected, "{body}");
    }
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
}
