//! The `tern start` process under test: spawned with a temp data dir and loopback ports,
//! its log read for the bound addresses, and its CPU and memory read from /proc.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// A running `tern start`, killed on drop.
pub struct Tern {
    child: Child,
    /// The process ID.
    pub pid: u32,
    /// The HTTP listener (health, metrics).
    pub http: SocketAddr,
    /// The gRPC listener.
    pub grpc: SocketAddr,
    /// The Semtech UDP listener of the Gateway Server.
    pub udp: SocketAddr,
    /// The AS's MQTT listener.
    pub mqtt: SocketAddr,
    /// The data directory.
    pub data_dir: PathBuf,
    log: Arc<Mutex<Vec<String>>>,
}

impl Tern {
    /// Starts `binary start` (every role, embedded store) in a fresh data dir under `dir`,
    /// with every listener on a free loopback port and the NS dedup window set to `dedup`.
    pub fn start(binary: &Path, dir: &Path, dedup: Duration) -> Result<Self> {
        let data_dir = dir.join("data");
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        let any = "127.0.0.1:0";
        let mut cmd = Command::new(binary);
        cmd.current_dir(dir);
        // The stack runs with its defaults: no TERN_* or RUST_LOG from the caller's shell.
        for (key, _) in std::env::vars_os() {
            let k = key.to_string_lossy();
            if k.starts_with("TERN_") || k == "RUST_LOG" {
                cmd.env_remove(&key);
            }
        }
        // For a closer look at a run: its log filter, e.g. "info,tern_networkserver=debug".
        if let Ok(filter) = std::env::var("TERN_BENCH_RUST_LOG") {
            cmd.env("RUST_LOG", filter);
        }
        cmd.arg("start")
            .arg("--data-dir")
            .arg(&data_dir)
            .env("TERN_HTTP__LISTEN", any)
            .env("TERN_GRPC__LISTEN", any)
            .env("TERN_GATEWAY_SERVER__UDP__LISTEN", any)
            .env("TERN_GATEWAY_SERVER__BASIC_STATION__LISTEN", any)
            .env("TERN_APPLICATION_SERVER__MQTT__LISTEN", any)
            .env("TERN_APPLICATION_SERVER__MQTT__TLS_LISTEN", "")
            .env(
                "TERN_NETWORK_SERVER__DEDUP_WINDOW",
                format!("{}ms", dedup.as_millis()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("spawn {} (build it: make bench)", binary.display()))?;
        let pid = child.id();
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().context("tern stderr")?;
        std::thread::spawn({
            let log = log.clone();
            move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    log.lock().expect("log lock").push(line);
                }
            }
        });
        let mut tern = Self {
            child,
            pid,
            http: ([127, 0, 0, 1], 0).into(),
            grpc: ([127, 0, 0, 1], 0).into(),
            udp: ([127, 0, 0, 1], 0).into(),
            mqtt: ([127, 0, 0, 1], 0).into(),
            data_dir,
            log,
        };
        tern.http = tern.logged_addr("tern started", "http")?;
        tern.grpc = tern.logged_addr("tern started", "grpc")?;
        tern.udp = tern.logged_addr("gateway listeners bound", "udp")?;
        tern.mqtt = tern.logged_addr("MQTT server listening", "addr")?;
        Ok(tern)
    }

    /// The whole log so far.
    pub fn log(&self) -> String {
        self.log.lock().expect("log lock").join("\n")
    }

    /// The log lines at WARN or ERROR level, for the report.
    pub fn warnings(&self) -> Vec<String> {
        self.log
            .lock()
            .expect("log lock")
            .iter()
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
            .cloned()
            .collect()
    }

    /// The address after `field=` on the first log line containing `message`.
    fn logged_addr(&mut self, message: &str, field: &str) -> Result<SocketAddr> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let prefix = format!("{field}=");
        loop {
            let found = self
                .log
                .lock()
                .expect("log lock")
                .iter()
                .filter(|l| l.contains(message))
                .find_map(|l| {
                    l.split_whitespace()
                        .find_map(|t| t.strip_prefix(&prefix))?
                        .trim_matches(|c| c == '"' || c == ',')
                        .parse()
                        .ok()
                });
            if let Some(addr) = found {
                return Ok(addr);
            }
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "tern exited with {status} before logging `{message}`:\n{}",
                    self.log()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "tern did not log `{message}` with {field}= in 30 s:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until /readyz answers 200.
    pub async fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if http_status(self.http, "/readyz").await.ok() == Some(200) {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("tern exited with {status}:\n{}", self.log());
            }
            if Instant::now() > deadline {
                bail!("tern was not ready in 30 s:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The admin API key from `<data-dir>/bootstrap.txt`.
    pub fn admin_key(&self) -> Result<String> {
        let path = self.data_dir.join("bootstrap.txt");
        let text =
            std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
        text.lines()
            .find_map(|l| {
                let (k, v) = l.split_once('=')?;
                (k.trim() == "api-key").then(|| v.trim().trim_matches('"').to_owned())
            })
            .with_context(|| format!("no api-key in {}", path.display()))
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Tern {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The status code of `GET path` on `addr` (HTTP/1.0, no body read).
pub async fn http_status(addr: SocketAddr, path: &str) -> Result<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr))
        .await??;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await??;
    let head = String::from_utf8_lossy(&buf[..n]);
    head.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("no status line in {head:?}"))
}

/// Clock ticks per second of the utime/stime fields.
pub fn clock_ticks() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// The number of online cores.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// utime+stime in ticks from the text of a /proc stat file.
pub fn parse_stat_ticks(stat: &str) -> Option<(String, u64)> {
    // The command name is in parentheses and may contain spaces: split after the last ')'.
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_owned();
    let fields: Vec<&str> = stat.get(close + 2..)?.split_whitespace().collect();
    // After the comm: state is field 3, utime field 14, stime field 15 (1-based, man proc).
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((comm, utime + stime))
}

/// utime+stime of a process (all its threads) in ticks.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat_ticks(&stat).map(|(_, t)| t)
}

/// utime+stime of this process in ticks.
pub fn self_ticks() -> Option<u64> {
    cpu_ticks(std::process::id())
}

/// VmRSS of a process in bytes.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_rss(&status)
}

/// VmRSS in bytes from the text of /proc/PID/status.
pub fn parse_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// CPU use of tern and of the generator between two samples.
#[derive(Debug, Clone, Copy)]
pub struct CpuSample {
    at: Instant,
    tern: u64,
    generator: u64,
}

impl CpuSample {
    /// Samples both processes now.
    pub fn now(tern_pid: u32) -> Self {
        Self {
            at: Instant::now(),
            tern: cpu_ticks(tern_pid).unwrap_or(0),
            generator: self_ticks().unwrap_or(0),
        }
    }

    /// (tern, generator) CPU since `self`, each as a share of the machine (1.0 = every core).
    pub fn shares_since(&self, tern_pid: u32) -> (f64, f64) {
        let now = Self::now(tern_pid);
        let wall = now.at.duration_since(self.at).as_secs_f64().max(1e-3);
        let machine = wall * cores() as f64 * clock_ticks();
        (
            now.tern.saturating_sub(self.tern) as f64 / machine,
            now.generator.saturating_sub(self.generator) as f64 / machine,
        )
    }
}

/// The non-zero counters of drops, refusals and failures from tern's `/metrics`.
pub async fn failure_counters(http: SocketAddr) -> Result<std::collections::BTreeMap<String, f64>> {
    let text = reqwest::Client::new()
        .get(format!("http://{http}/metrics"))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .context("GET /metrics")?
        .text()
        .await
        .context("read /metrics")?;
    Ok(text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            ["drop", "reject", "fail", "refus", "too_late", "conflict"]
                .iter()
                .any(|k| l.contains(k))
        })
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            let value: f64 = value.parse().ok()?;
            (value != 0.0).then(|| (name.to_owned(), value))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_ticks_even_with_spaces_in_the_name() {
        let stat = "4242 (tokio-rt worker) S 1 4242 4242 0 -1 4194560 500 0 0 0 150 25 0 0 20 0 9 0 100 2000000 3000 18446744073709551615";
        assert_eq!(
            parse_stat_ticks(stat),
            Some(("tokio-rt worker".to_owned(), 175))
        );
        assert_eq!(parse_stat_ticks("garbage"), None);
    }

    #[test]
    fn rss_from_status() {
        let status = "Name:\ttern\nVmPeak:\t  200000 kB\nVmRSS:\t   51234 kB\nThreads:\t9\n";
        assert_eq!(parse_rss(status), Some(51234 * 1024));
        assert_eq!(parse_rss("Name:\ttern\n"), None);
    }

    #[test]
    fn this_process_is_visible_in_proc() {
        assert!(self_ticks().is_some());
        assert!(rss_bytes(std::process::id()).unwrap() > 0);
    }
}
