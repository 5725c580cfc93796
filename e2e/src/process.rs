//! Real `tern` processes: spawned on free loopback ports, read through their log, signalled,
//! and killed when dropped.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// The directory of the workspace's binaries: the test executable runs from
/// `target/<profile>/deps/`.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    let deps = exe.parent().expect("the executable's directory");
    deps.parent().unwrap_or(deps).to_path_buf()
}

/// The path of a workspace binary (`tern`, `ternctl`), or of `$<VAR>` when set; panics with
/// the command that builds it when it is missing.
pub fn binary(name: &str, var: &str) -> PathBuf {
    let path = std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| profile_dir().join(name));
    assert!(
        path.exists(),
        "{} is missing: build it first with `cargo build -p {name}` (`make e2e` does), or set {var}",
        path.display()
    );
    path
}

/// The `tern` binary under test.
pub fn tern_bin() -> PathBuf {
    binary("tern", "TERN_BIN")
}

/// The `ternctl` binary under test.
pub fn ternctl_bin() -> PathBuf {
    binary("ternctl", "TERNCTL_BIN")
}

/// A fresh, empty directory for one test, under `target/<profile>/e2e-tmp/`.
pub fn temp_dir(name: &str) -> PathBuf {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let dir = profile_dir().join("e2e-tmp").join(format!(
        "tern-{name}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A `tern` command run in `dir` (so no `config/tern.toml` is found by accident), with every
/// `TERN_*` and `RUST_LOG` variable of the test environment removed.
pub fn tern(dir: &Path) -> Command {
    let mut cmd = Command::new(tern_bin());
    cmd.current_dir(dir);
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy();
        if k.starts_with("TERN_") || k == "RUST_LOG" {
            cmd.env_remove(&key);
        }
    }
    cmd
}

/// Runs `tern args...` in `dir` to completion.
pub fn run(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = tern(dir);
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

/// A running `tern start`, killed when dropped.
pub struct Server {
    /// The child process.
    pub child: Child,
    /// Its HTTP address, as it logged it.
    pub http: SocketAddr,
    /// Its gRPC address, as it logged it.
    pub grpc: SocketAddr,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// Its working directory.
    pub dir: PathBuf,
    log: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    /// Starts `tern start <roles>` on ports the kernel picks (`127.0.0.1:0`), with its own data
    /// directory, and waits for its "tern started" log line to learn the ports.
    pub fn start(name: &str, roles: &[&str], env: &[(&str, &str)]) -> Self {
        Self::try_start(name, roles, env).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like [`Server::start`], but an early exit is an error with its stderr (e.g. a port
    /// taken by a test running in parallel), for the caller to retry.
    pub fn try_start(name: &str, roles: &[&str], env: &[(&str, &str)]) -> Result<Self, String> {
        let mut server = Self::spawn(name, roles, env);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some((http, grpc)) = server.log().lines().find_map(started_addrs) {
                server.http = http;
                server.grpc = grpc;
                return Ok(server);
            }
            if let Some(status) = server.child.try_wait().unwrap() {
                return Err(format!(
                    "tern exited early with {status}: {}",
                    server.stderr()
                ));
            }
            assert!(
                Instant::now() < deadline,
                "tern did not start: {}",
                server.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Spawns `tern start <roles>` without waiting for it.
    pub fn spawn(name: &str, roles: &[&str], env: &[(&str, &str)]) -> Self {
        let dir = temp_dir(name);
        let data_dir = dir.join("data");
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        let mut cmd = tern(&dir);
        cmd.arg("start")
            .args(roles)
            .arg("--data-dir")
            .arg(&data_dir)
            .env("TERN_HTTP__LISTEN", any.to_string())
            .env("TERN_GRPC__LISTEN", any.to_string())
            // The gateway and MQTT listeners too: tests run in parallel.
            .env("TERN_GATEWAY_SERVER__UDP__LISTEN", any.to_string())
            .env(
                "TERN_GATEWAY_SERVER__BASIC_STATION__LISTEN",
                any.to_string(),
            )
            .env("TERN_APPLICATION_SERVER__MQTT__LISTEN", any.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let reader = std::thread::spawn({
            let log = log.clone();
            move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    log.lock().unwrap().push(line);
                }
            }
        });
        Self {
            child,
            http: any,
            grpc: any,
            data_dir,
            dir,
            log,
            reader: Some(reader),
        }
    }

    /// The stderr lines so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Waits until `/readyz` answers 200, and returns its body.
    pub async fn wait_ready(&mut self) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok((200, body)) = try_get(self.http, "/readyz").await {
                return serde_json::from_str(&body).unwrap();
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("tern exited early with {status}: {}", self.stderr());
            }
            assert!(Instant::now() < deadline, "tern did not become ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends `signal` (e.g. `libc::SIGTERM`) to the process.
    pub fn signal(&self, signal: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).unwrap();
        // SAFETY: sending a signal to our own child process.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
    }

    /// Waits up to `limit` for the process to exit and returns its status and how long it took.
    pub async fn wait_exit(&mut self, limit: Duration) -> (ExitStatus, Duration) {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status, start.elapsed());
            }
            assert!(
                start.elapsed() < limit,
                "tern did not exit within {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Everything the process wrote to stderr, complete once it has exited.
    pub fn stderr(&mut self) -> String {
        if matches!(self.child.try_wait(), Ok(Some(_)))
            && let Some(reader) = self.reader.take()
        {
            let _ = reader.join();
        }
        self.log()
    }
}

/// The addresses in a "tern started" log line, text (`http=… grpc=…`) or JSON.
fn started_addrs(line: &str) -> Option<(SocketAddr, SocketAddr)> {
    if !line.contains("tern started") {
        return None;
    }
    if let Ok(json) = serde_json::from_str::<serde_json::Value>(line) {
        let field = |k: &str| json["fields"][k].as_str()?.parse().ok();
        return Some((field("http")?, field("grpc")?));
    }
    let field = |k: &str| {
        line.split_whitespace()
            .find_map(|t| t.strip_prefix(k))?
            .parse()
            .ok()
    };
    Some((field("http=")?, field("grpc=")?))
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `GET http://addr/path`: status and body, or the connection error.
pub async fn try_get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let uri = format!("http://{addr}{path}").parse().unwrap();
    let response = client.get(uri).await.map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, String::from_utf8(body.to_vec()).unwrap()))
}

/// `GET http://addr/path`, which must succeed; returns status and body.
pub async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    try_get(addr, path).await.unwrap()
}
