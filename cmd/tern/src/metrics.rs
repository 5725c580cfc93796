//! The process's Prometheus registry: build and process metrics, HTTP requests, and room for
//! each role's own metrics.

use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, text::encode};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use tern_cluster::role::MetricsRegistry;

use crate::roles::Role;

/// The content type of [`Metrics::encode`]'s output (OpenMetrics text, which Prometheus reads).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Labels of `tern_http_requests_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    method: String,
    route: String,
    status: String,
}

/// A cheap, cloneable handle to the process's metrics.
#[derive(Clone)]
pub struct Metrics {
    registry: MetricsRegistry,
    http_requests: Family<HttpLabels, Counter>,
}

impl Metrics {
    /// A registry with build info, process metrics and the HTTP request counter.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        registry.register(
            "tern_build",
            "Version and commit of this tern binary",
            Info::new(vec![
                ("version", crate::VERSION),
                ("commit", crate::COMMIT.unwrap_or("unknown")),
            ]),
        );
        registry.register_collector(Box::new(ProcessCollector::new()));
        let http_requests = Family::<HttpLabels, Counter>::default();
        registry.register(
            "tern_http_requests",
            "HTTP requests served, by method, route and status",
            http_requests.clone(),
        );
        let shared = MetricsRegistry::new();
        shared.register_root(|root| *root = registry);
        Self {
            registry: shared,
            http_requests,
        }
    }

    /// Lets a role register its metrics under the prefix `tern_<role>_`.
    pub fn register_role(&self, role: Role, register: impl FnOnce(&mut Registry)) {
        self.registry.register_role(role, register);
    }

    /// Adds a collector that produces metrics on each scrape.
    pub fn register_collector(&self, collector: Box<dyn Collector>) {
        self.registry.register_collector(collector);
    }

    /// The shared registry, as handed to the roles.
    pub fn registry(&self) -> MetricsRegistry {
        self.registry.clone()
    }

    /// Counts one HTTP request; `route` is the matched route pattern, never the raw path.
    pub fn http_request(&self, method: &str, route: &str, status: u16) {
        self.http_requests
            .get_or_create(&HttpLabels {
                method: method.to_owned(),
                route: route.to_owned(),
                status: status.to_string(),
            })
            .inc();
    }

    /// Every metric, in OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        self.registry.with_registry(|registry| {
            encode(&mut out, registry).expect("writing to a String cannot fail");
        });
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Standard `process_*` metrics, read from `/proc` on each scrape (Linux; absent elsewhere).
#[derive(Debug)]
struct ProcessCollector {
    start_time: f64,
    ticks_per_second: f64,
    page_size: f64,
}

impl ProcessCollector {
    fn new() -> Self {
        let start_time = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        // SAFETY: sysconf only reads system constants.
        let (ticks, page) = unsafe {
            (
                libc::sysconf(libc::_SC_CLK_TCK),
                libc::sysconf(libc::_SC_PAGESIZE),
            )
        };
        Self {
            start_time,
            ticks_per_second: if ticks > 0 { ticks as f64 } else { 100.0 },
            page_size: if page > 0 { page as f64 } else { 4096.0 },
        }
    }
}

/// Fields of `/proc/self/stat` after the command name: (user+system ticks, threads).
fn parse_stat(stat: &str) -> Option<(f64, f64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ")": field 3 (state) is index 0, so utime (14) is 11, stime (15) 12, threads (20) 17.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    let threads: f64 = fields.get(17)?.parse().ok()?;
    Some((utime + stime, threads))
}

fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: f64) -> std::fmt::Result {
    let gauge = ConstGauge::new(value);
    let metric = encoder.encode_descriptor(name, help, None, gauge.metric_type())?;
    gauge.encode(metric)
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        gauge(
            &mut encoder,
            "process_start_time_seconds",
            "Start time of the process since the Unix epoch, in seconds.",
            self.start_time,
        )?;
        if let Some((ticks, threads)) = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|s| parse_stat(&s))
        {
            let cpu = ConstCounter::new(ticks / self.ticks_per_second);
            let metric = encoder.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent, in seconds.",
                None,
                cpu.metric_type(),
            )?;
            cpu.encode(metric)?;
            gauge(
                &mut encoder,
                "process_threads",
                "Number of OS threads.",
                threads,
            )?;
        }
        if let Some((virt, rss)) = std::fs::read_to_string("/proc/self/statm")
            .ok()
            .and_then(|s| {
                let mut it = s.split_whitespace().map(|f| f.parse::<f64>().ok());
                Some((it.next()??, it.next()??))
            })
        {
            gauge(
                &mut encoder,
                "process_virtual_memory_bytes",
                "Virtual memory size, in bytes.",
                virt * self.page_size,
            )?;
            gauge(
                &mut encoder,
                "process_resident_memory_bytes",
                "Resident memory size, in bytes.",
                rss * self.page_size,
            )?;
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            gauge(
                &mut encoder,
                "process_open_fds",
                "Number of open file descriptors.",
                fds.count() as f64,
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::gauge::Gauge;

    #[test]
    fn stat_line_parses_with_spaces_in_the_name() {
        let line = "42 (tern (x) y) S 1 2 3 4 5 6 7 8 9 10 150 50 0 0 20 0 7 0 100 200 300";
        assert_eq!(parse_stat(line), Some((200.0, 7.0)));
    }

    #[test]
    fn encodes_build_process_http_and_role_metrics() {
        let metrics = Metrics::new();
        metrics.http_request("GET", "/healthz", 200);
        metrics.register_role(Role::Ns, |r| {
            let g = Gauge::<i64>::default();
            g.set(3);
            r.register("devices", "Devices", g);
        });
        let text = metrics.encode();
        assert!(text.contains("tern_build_info{version=\""), "{text}");
        assert!(text.contains("process_start_time_seconds "), "{text}");
        assert!(text.contains("process_resident_memory_bytes "), "{text}");
        assert!(
            text.contains(
                "tern_http_requests_total{method=\"GET\",route=\"/healthz\",status=\"200\"} 1"
            ),
            "{text}"
        );
        assert!(text.contains("tern_ns_devices 3"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
