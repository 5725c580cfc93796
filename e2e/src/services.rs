//! The external services of a cluster scenario, each from its Debian package: etcd and
//! nats-server on free loopback ports in their own directories (killed on drop), and a fresh
//! PostgreSQL database per scenario in the server at `TERN_TEST_POSTGRES_URL` (dropped on drop).

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::temp_dir;

/// A free TCP port on 127.0.0.1 (free when this returns; the caller binds it soon after).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// A free UDP port on 127.0.0.1.
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("a free loopback UDP port")
        .port()
}

/// The first of `candidates` that exists, or `$var` when set; panics naming the package.
fn find_binary(var: &str, candidates: &[&str], package: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(var) {
        return path.into();
    }
    candidates
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| {
            panic!(
                "{} not found: install Debian's {package} package, or set {var} to the binary",
                candidates[0]
            )
        })
}

/// Waits until 127.0.0.1:`port` accepts TCP connections and, when `ready` is given, `log`
/// holds that line (so the listener is this child's, not another test's that took the port);
/// panics with `log` if `child` exits or 15 s pass.
fn wait_listening(child: &mut Child, name: &str, port: u16, log: &Path, ready: Option<&str>) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = child.try_wait().expect("child status") {
            panic!(
                "{name} exited with {status}:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        let own = ready
            .is_none_or(|line| std::fs::read_to_string(log).is_ok_and(|text| text.contains(line)));
        if own && TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} did not listen on 127.0.0.1:{port} within 15 s:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A single-member etcd on free loopback ports, its data in a temp directory; killed on drop.
pub struct Etcd {
    child: Child,
    dir: PathBuf,
    /// The client URL, e.g. `http://127.0.0.1:40123`.
    pub url: String,
}

impl Etcd {
    /// Starts etcd (`/usr/bin/etcd`, or `$TERN_TEST_ETCD`) and waits for its client port.
    pub fn start() -> Self {
        let binary = find_binary("TERN_TEST_ETCD", &["/usr/bin/etcd"], "etcd-server");
        let (client, peer) = (free_port(), free_port());
        let dir = temp_dir("etcd");
        let log = dir.join("etcd.log");
        let url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let mut child = Command::new(binary)
            .arg("--data-dir")
            .arg(dir.join("data"))
            .args(["--name", "e2e"])
            .args([
                "--listen-client-urls",
                &url,
                "--advertise-client-urls",
                &url,
            ])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("e2e={peer_url}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawning etcd");
        wait_listening(&mut child, "etcd", client, &log, None);
        Self { child, dir, url }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A nats-server on a free loopback port, logging to a temp directory; killed on drop.
pub struct Nats {
    child: Child,
    dir: PathBuf,
    /// The client URL, e.g. `nats://127.0.0.1:40124`.
    pub url: String,
}

impl Nats {
    /// Starts nats-server (`/usr/sbin/nats-server`, or `$TERN_NATS_SERVER`) and waits for it.
    pub fn start() -> Self {
        let binary = find_binary(
            "TERN_NATS_SERVER",
            &["/usr/sbin/nats-server", "/usr/bin/nats-server"],
            "nats-server",
        );
        let port = free_port();
        let dir = temp_dir("nats");
        let log = dir.join("nats.log");
        let mut child = Command::new(binary)
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .arg("-l")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawning nats-server");
        wait_listening(
            &mut child,
            "nats-server",
            port,
            &log,
            Some("Server is ready"),
        );
        Self {
            child,
            dir,
            url: format!("nats://127.0.0.1:{port}"),
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A fresh database in the PostgreSQL server at `TERN_TEST_POSTGRES_URL`, dropped (with its
/// connections) on drop. Created and dropped with Debian's `psql`.
pub struct PgDatabase {
    admin_url: String,
    name: String,
    /// The URL of the new database.
    pub url: String,
}

impl PgDatabase {
    /// Creates database `e2e_<name>_<pid>_<n>`; `None` (after saying why on stderr) when
    /// `TERN_TEST_POSTGRES_URL` is unset, except under CI (`CI` set), where that panics.
    pub fn create(name: &str) -> Option<Self> {
        let Ok(server) = std::env::var("TERN_TEST_POSTGRES_URL") else {
            assert!(
                std::env::var_os("CI").is_none(),
                "TERN_TEST_POSTGRES_URL is not set: start one with \
                 `export TERN_TEST_POSTGRES_URL=$(scripts/test-postgres.sh start)`"
            );
            eprintln!(
                "skipped: TERN_TEST_POSTGRES_URL is not set \
                 (`export TERN_TEST_POSTGRES_URL=$(scripts/test-postgres.sh start)`)"
            );
            return None;
        };
        // postgres://user@host:port/<database>[?params]: same server and params, other database.
        let (server, query) = match server.split_once('?') {
            Some((s, q)) => (s.to_owned(), format!("?{q}")),
            None => (server, String::new()),
        };
        let (base, _db) = server
            .rsplit_once('/')
            .expect("TERN_TEST_POSTGRES_URL ends with /<database>");
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "e2e_{name}_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let admin_url = format!("{base}/postgres{query}");
        let db = Self {
            url: format!("{base}/{name}{query}"),
            admin_url,
            name,
        };
        db.psql(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", db.name));
        db.psql(&format!("CREATE DATABASE {}", db.name));
        Some(db)
    }

    /// Runs one SQL statement on the server's `postgres` database; panics with psql's output
    /// when it fails.
    fn psql(&self, sql: &str) {
        let out = Command::new("psql")
            .args([
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                &self.admin_url,
                "-c",
                sql,
            ])
            .output()
            .expect("psql (Debian package postgresql-client) is installed");
        assert!(
            out.status.success(),
            "psql `{sql}`: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .args(["-X", "-q", "-d", &self.admin_url, "-c"])
            .arg(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .output();
    }
}
