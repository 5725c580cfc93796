//! Shared state: connected gateways, the registry cache, metrics, rate limits.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use band::FrequencyPlan;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tern_api::{Timestamp, v3};
use tern_cluster::auth::ApiKeyVerifier;
use tern_cluster::links::{GsIs, GsNs};
use tern_events::{Event, EventBus, definitions};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use crate::config::GsConfig;
use crate::scheduler::{GatewayScheduler, SchedulerConfig};
use crate::udp::packet::DropReason;

/// The current server time, µs since the Unix epoch.
pub fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// The protocol a gateway speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// Semtech UDP packet forwarder.
    Udp,
    /// LoRa Basics Station.
    BasicStation,
}

impl Protocol {
    /// The name used in events, stats and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Udp => "semtech-udp",
            Self::BasicStation => "basic-station",
        }
    }
}

type Labels = Vec<(&'static str, String)>;

/// The GS's Prometheus metrics.
#[derive(Default)]
pub struct Metrics {
    pub(crate) udp_dropped: Family<Labels, Counter>,
    pub(crate) bs_dropped: Family<Labels, Counter>,
    pub(crate) uplink_received: Family<Labels, Counter>,
    pub(crate) uplink_dropped: Family<Labels, Counter>,
    pub(crate) downlink_scheduled: Family<Labels, Counter>,
    pub(crate) downlink_failed: Family<Labels, Counter>,
    pub(crate) tx_ack: Family<Labels, Counter>,
    pub(crate) status_received: Family<Labels, Counter>,
    pub(crate) connected: Family<Labels, Gauge>,
    pub(crate) rtt_ms: Family<Labels, Gauge>,
}

impl Metrics {
    pub(crate) fn register(&self, r: &mut Registry) {
        r.register(
            "udp_dropped",
            "Semtech UDP datagrams dropped, by reason",
            self.udp_dropped.clone(),
        );
        r.register(
            "bs_dropped",
            "Basics Station messages dropped, by reason",
            self.bs_dropped.clone(),
        );
        r.register(
            "uplink_received",
            "Uplink frames received and forwarded to the Network Server",
            self.uplink_received.clone(),
        );
        r.register(
            "uplink_dropped",
            "Uplink frames dropped, by protocol and reason",
            self.uplink_dropped.clone(),
        );
        r.register(
            "downlink_scheduled",
            "Downlinks sent to gateways, by protocol and receive window",
            self.downlink_scheduled.clone(),
        );
        r.register(
            "downlink_failed",
            "Downlinks that no path could carry, by the first path's reason",
            self.downlink_failed.clone(),
        );
        r.register(
            "tx_ack",
            "Transmission acknowledgments, by protocol and result",
            self.tx_ack.clone(),
        );
        r.register(
            "status_received",
            "Gateway status messages received",
            self.status_received.clone(),
        );
        r.register(
            "gateways_connected",
            "Gateways connected now, by protocol",
            self.connected.clone(),
        );
        r.register(
            "rtt_max_ms",
            "Largest recent round-trip time to a gateway in ms (by protocol, or gateway)",
            self.rtt_ms.clone(),
        );
    }
}

/// Logs at the 1st, 2nd, 4th, 8th, ... occurrence of each reason, so a flood of bad
/// datagrams does not flood the log.
#[derive(Default)]
pub struct LogLimiter(Mutex<HashMap<&'static str, u64>>);

impl LogLimiter {
    /// Counts one occurrence; true when this one should be logged.
    pub fn should_log(&self, reason: &'static str) -> bool {
        let mut m = self.0.lock().expect("log limiter lock");
        let n = m.entry(reason).or_default();
        *n += 1;
        n.is_power_of_two()
    }
}

/// A token bucket per gateway EUI.
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<[u8; 8], (f64, Instant)>>,
}

impl RateLimiter {
    /// `rate` per second, `burst` at once.
    pub fn new(rate: f64, burst: u32) -> Self {
        Self {
            rate,
            burst: f64::from(burst),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token of `eui`'s bucket; false when empty.
    pub fn allow(&self, eui: [u8; 8], now: Instant) -> bool {
        let mut m = self.buckets.lock().expect("rate limiter lock");
        let (tokens, last) = m.entry(eui).or_insert((self.burst, now));
        let elapsed = now.saturating_duration_since(*last).as_secs_f64();
        *tokens = (*tokens + elapsed * self.rate).min(self.burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Forgets buckets that are full again (idle gateways), so the map stays small.
    pub fn prune(&self, now: Instant) {
        let full = Duration::from_secs_f64(self.burst / self.rate);
        self.buckets
            .lock()
            .expect("rate limiter lock")
            .retain(|_, (_, last)| now.saturating_duration_since(*last) < full);
    }
}

/// When an answer was cached, and the answer.
type CacheEntry = (Instant, Option<Arc<v3::Gateway>>);

/// Cached registry answers.
pub struct RegistryCache {
    inner: Arc<dyn GsIs>,
    ttl: Duration,
    map: Mutex<HashMap<[u8; 8], CacheEntry>>,
}

impl RegistryCache {
    /// A cache in front of `inner`.
    pub fn new(inner: Arc<dyn GsIs>, ttl: Duration) -> Self {
        Self {
            inner,
            ttl,
            map: Mutex::new(HashMap::new()),
        }
    }

    /// The gateway with `eui`, from the cache when fresh.
    pub async fn get(&self, eui: [u8; 8]) -> Result<Option<Arc<v3::Gateway>>, tonic::Status> {
        if let Some((at, g)) = self.map.lock().expect("cache lock").get(&eui)
            && at.elapsed() < self.ttl
        {
            return Ok(g.clone());
        }
        let g = self.inner.gateway_by_eui(eui).await?.map(Arc::new);
        self.map
            .lock()
            .expect("cache lock")
            .insert(eui, (Instant::now(), g.clone()));
        Ok(g)
    }

    /// Drops every cached answer (a gateway was created, updated or deleted).
    pub fn invalidate(&self) {
        self.map.lock().expect("cache lock").clear();
    }
}

/// How the GS reaches a gateway.
pub enum Link {
    /// Semtech UDP: the address of the last PULL_DATA.
    Udp {
        /// Downlink address.
        pull_addr: Option<SocketAddr>,
        /// When the last PULL_DATA arrived.
        last_pull: Option<Instant>,
        /// Whether the loss of the downlink path was reported.
        path_lost: bool,
    },
    /// Basics Station: the connection's outgoing queue.
    Ws(mpsc::UnboundedSender<String>),
}

/// A downlink sent and not yet acknowledged.
#[derive(Debug, Clone)]
pub struct PendingTx {
    /// The NS's ID.
    pub downlink_id: String,
    /// Its correlation IDs.
    pub correlation_ids: Vec<String>,
    /// When it was sent.
    pub sent_at: Instant,
}

/// Connection statistics.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub(crate) connected_at: Option<Timestamp>,
    pub(crate) last_uplink: Option<Timestamp>,
    pub(crate) uplink_count: u64,
    pub(crate) last_downlink: Option<Timestamp>,
    pub(crate) downlink_count: u64,
    pub(crate) last_status_at: Option<Timestamp>,
    pub(crate) last_status: Option<v3::GatewayStatus>,
}

/// Mutable state of one connection.
pub struct ConnState {
    pub(crate) link: Link,
    pub(crate) remote: SocketAddr,
    pub(crate) last_seen: Instant,
    pub(crate) scheduler: GatewayScheduler,
    pub(crate) stats: Stats,
    pub(crate) pending: HashMap<u64, PendingTx>,
    pub(crate) gps: bool,
    pub(crate) last_rctx: u64,
}

/// One connected gateway.
pub struct GatewayConn {
    pub(crate) eui: [u8; 8],
    pub(crate) ids: v3::GatewayIdentifiers,
    pub(crate) gateway: Option<Arc<v3::Gateway>>,
    pub(crate) plan: &'static FrequencyPlan,
    pub(crate) protocol: Protocol,
    pub(crate) created: Instant,
    pub(crate) state: Mutex<ConnState>,
}

impl GatewayConn {
    /// Locks the state.
    pub fn lock(&self) -> std::sync::MutexGuard<'_, ConnState> {
        self.state.lock().expect("gateway state lock")
    }
}

/// A resolved gateway: registered or (when allowed) not.
pub struct Resolved {
    pub(crate) ids: v3::GatewayIdentifiers,
    pub(crate) gateway: Option<Arc<v3::Gateway>>,
    pub(crate) plan: &'static FrequencyPlan,
}

/// Everything the GS's tasks share.
pub struct Shared {
    pub(crate) config: GsConfig,
    pub(crate) ns: Arc<dyn GsNs>,
    pub(crate) registry: RegistryCache,
    pub(crate) api_keys: Arc<dyn ApiKeyVerifier>,
    pub(crate) events: EventBus,
    pub(crate) instance_id: String,
    pub(crate) metrics: Metrics,
    pub(crate) gateways: Mutex<HashMap<[u8; 8], Arc<GatewayConn>>>,
    pub(crate) log: LogLimiter,
    pub(crate) rate: RateLimiter,
    pub(crate) udp_socket: Mutex<Option<Arc<UdpSocket>>>,
    pub(crate) stop: tern_cluster::role::Shutdown,
    pub(crate) started: std::sync::atomic::AtomicBool,
    counter: AtomicU64,
}

impl Shared {
    pub(crate) fn new(
        config: GsConfig,
        ns: Arc<dyn GsNs>,
        registry: Arc<dyn GsIs>,
        api_keys: Arc<dyn ApiKeyVerifier>,
        events: EventBus,
        instance_id: String,
    ) -> Self {
        Self {
            registry: RegistryCache::new(registry, config.registry_cache_ttl),
            rate: RateLimiter::new(
                config.rate_limit.messages_per_second,
                config.rate_limit.burst,
            ),
            config,
            ns,
            api_keys,
            events,
            instance_id,
            metrics: Metrics::default(),
            gateways: Mutex::new(HashMap::new()),
            log: LogLimiter::default(),
            udp_socket: Mutex::new(None),
            stop: tern_cluster::role::Shutdown::new(),
            started: std::sync::atomic::AtomicBool::new(false),
            counter: AtomicU64::new(0),
        }
    }

    /// A fresh ID, unique in this process.
    pub(crate) fn next_id(&self) -> u64 {
        self.counter.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// A correlation ID for an uplink.
    pub(crate) fn uplink_correlation_id(&self) -> String {
        format!("gs:uplink:{}:{}", self.instance_id, self.next_id())
    }

    pub(crate) fn scheduler_config(&self) -> SchedulerConfig {
        SchedulerConfig {
            min_margin: self.config.schedule_ahead,
            max_ahead: self.config.max_schedule_ahead,
        }
    }

    /// Labels of per-gateway metrics: the protocol, and the gateway ID when configured.
    pub(crate) fn labels(&self, protocol: Protocol, gateway_id: &str) -> Labels {
        let mut l = vec![("protocol", protocol.as_str().to_owned())];
        if self.config.metrics_per_gateway {
            l.push(("gateway_id", gateway_id.to_owned()));
        }
        l
    }

    /// Counts a dropped UDP datagram (or frame) and logs it, rate-limited.
    pub(crate) fn drop_udp(&self, reason: DropReason, from: SocketAddr, eui: Option<[u8; 8]>) {
        self.metrics
            .udp_dropped
            .get_or_create(&vec![("reason", reason.as_str().to_owned())])
            .inc();
        if self.log.should_log(reason.as_str()) {
            tracing::warn!(
                reason = reason.as_str(),
                %from,
                eui = eui.map(hex::encode).unwrap_or_default(),
                "gs: dropped a Semtech UDP datagram"
            );
        }
    }

    /// Counts a dropped Basics Station message and logs it, rate-limited.
    pub(crate) fn drop_bs(&self, reason: &'static str, eui: [u8; 8], detail: &str) {
        self.metrics
            .bs_dropped
            .get_or_create(&vec![("reason", reason.to_owned())])
            .inc();
        if self.log.should_log(reason) {
            tracing::warn!(
                reason,
                eui = hex::encode(eui),
                detail,
                "gs: dropped a Basics Station message"
            );
        }
    }

    /// Counts a dropped uplink frame and publishes `gs.up.drop`.
    pub(crate) fn drop_uplink(&self, conn: &GatewayConn, reason: DropReason) {
        self.metrics
            .uplink_dropped
            .get_or_create(&vec![
                ("protocol", conn.protocol.as_str().to_owned()),
                ("reason", reason.as_str().to_owned()),
            ])
            .inc();
        self.events.publish_with(&definitions::GS_UP_DROP, |e| {
            let details = v3::ErrorDetails {
                code: 3,
                name: reason.as_str().to_owned(),
                message: format!("uplink dropped: {}", reason.as_str()),
                ..Default::default()
            };
            e.with_identifiers([&conn.ids]).with_data(&details)
        });
    }

    /// The registered gateway of `eui`, or an unregistered stand-in when allowed.
    pub(crate) async fn resolve(&self, eui: [u8; 8]) -> Result<Resolved, DropReason> {
        let gateway = self
            .registry
            .get(eui)
            .await
            .map_err(|_| DropReason::RegistryUnavailable)?;
        let default_plan = || {
            FrequencyPlan::by_id(&self.config.default_frequency_plan)
                .expect("validated default frequency plan")
        };
        match gateway {
            Some(g) => {
                let mut ids = g.ids.clone().unwrap_or_default();
                ids.eui = eui.to_vec();
                let plan = g
                    .frequency_plan_ids
                    .first()
                    .and_then(|id| FrequencyPlan::by_id(id))
                    .unwrap_or_else(default_plan);
                Ok(Resolved {
                    ids,
                    gateway: Some(g),
                    plan,
                })
            }
            None if self.config.require_registered_gateways => Err(DropReason::UnknownEui),
            None => Ok(Resolved {
                ids: v3::GatewayIdentifiers {
                    gateway_id: format!("eui-{}", hex::encode(eui)),
                    eui: eui.to_vec(),
                },
                gateway: None,
                plan: default_plan(),
            }),
        }
    }

    /// The connection of `eui`, if connected.
    pub(crate) fn conn(&self, eui: &[u8; 8]) -> Option<Arc<GatewayConn>> {
        self.gateways
            .lock()
            .expect("gateways lock")
            .get(eui)
            .cloned()
    }

    /// The connection of the gateway with this ID, if connected.
    pub(crate) fn conn_by_id(&self, gateway_id: &str) -> Option<Arc<GatewayConn>> {
        self.gateways
            .lock()
            .expect("gateways lock")
            .values()
            .find(|c| c.ids.gateway_id == gateway_id)
            .cloned()
    }

    /// Registers a new connection (replacing any other of the same gateway, except that a
    /// UDP gateway keeps its connection), publishes the connect event and tells the NS.
    pub(crate) async fn connect(
        &self,
        resolved: Resolved,
        eui: [u8; 8],
        protocol: Protocol,
        link: Link,
        remote: SocketAddr,
    ) -> Arc<GatewayConn> {
        let conn = Arc::new(GatewayConn {
            eui,
            ids: resolved.ids,
            gateway: resolved.gateway,
            plan: resolved.plan,
            protocol,
            created: Instant::now(),
            state: Mutex::new(ConnState {
                link,
                remote,
                last_seen: Instant::now(),
                scheduler: GatewayScheduler::new(self.scheduler_config()),
                stats: Stats {
                    connected_at: Some(Timestamp::now()),
                    ..Default::default()
                },
                pending: HashMap::new(),
                gps: false,
                last_rctx: 0,
            }),
        });
        let old = {
            let mut m = self.gateways.lock().expect("gateways lock");
            // Two datagrams of a new UDP gateway may race here: the first one wins, so the
            // NS does not see a connect, a disconnect and a connect again.
            if protocol == Protocol::Udp
                && let Some(existing) = m.get(&eui).filter(|c| c.protocol == Protocol::Udp)
            {
                return existing.clone();
            }
            m.insert(eui, conn.clone())
        };
        if let Some(old) = old {
            self.announce_disconnect(&old).await;
        }
        self.metrics
            .connected
            .get_or_create(&vec![("protocol", protocol.as_str().to_owned())])
            .inc();
        self.announce(
            &conn,
            v3::gateway_connection_event::State::Connected,
            remote,
        )
        .await;
        conn
    }

    /// Removes `conn` if it is still the gateway's connection; announces the disconnect.
    pub(crate) async fn disconnect(&self, conn: &Arc<GatewayConn>) {
        let removed = {
            let mut m = self.gateways.lock().expect("gateways lock");
            match m.get(&conn.eui) {
                Some(c) if Arc::ptr_eq(c, conn) => m.remove(&conn.eui).is_some(),
                _ => false,
            }
        };
        if removed {
            self.announce_disconnect(conn).await;
        }
    }

    async fn announce_disconnect(&self, conn: &GatewayConn) {
        self.metrics
            .connected
            .get_or_create(&vec![("protocol", conn.protocol.as_str().to_owned())])
            .dec();
        let remote = conn.lock().remote;
        self.announce(
            conn,
            v3::gateway_connection_event::State::Disconnected,
            remote,
        )
        .await;
    }

    /// Publishes a connection event and reports it to the NS.
    pub(crate) async fn announce(
        &self,
        conn: &GatewayConn,
        state: v3::gateway_connection_event::State,
        remote: SocketAddr,
    ) {
        use v3::gateway_connection_event::State;
        let event = v3::GatewayConnectionEvent {
            gateway_ids: Some(conn.ids.clone()),
            state: state as i32,
            protocol: conn.protocol.as_str().to_owned(),
            remote_address: remote.to_string(),
            time: Some(Timestamp::now()),
            // Where the Network Servers send class B/C downlinks for this gateway.
            gateway_server_id: self.instance_id.clone(),
        };
        let definition = match state {
            State::Connected => &definitions::GS_GATEWAY_CONNECT,
            State::Disconnected => &definitions::GS_GATEWAY_DISCONNECT,
            State::DownlinkPathLost => &definitions::GS_GATEWAY_DOWNLINK_PATH_LOST,
        };
        self.events.publish(
            Event::new(definition)
                .with_identifiers([&conn.ids])
                .with_data(&event),
        );
        if let Err(status) = self.ns.report_gateway_connection(event).await {
            tracing::warn!(gateway_id = %conn.ids.gateway_id, %status,
                "gs: the Network Server did not take a gateway connection report");
        }
    }

    /// Hands an uplink to the NS; counts it.
    pub(crate) async fn forward_uplink(&self, conn: &GatewayConn, up: v3::UplinkMessage) {
        {
            let mut st = conn.lock();
            st.stats.uplink_count += 1;
            st.stats.last_uplink = Some(Timestamp::now());
        }
        self.metrics
            .uplink_received
            .get_or_create(&self.labels(conn.protocol, &conn.ids.gateway_id))
            .inc();
        self.events.publish_with(&definitions::GS_UP_RECEIVE, |e| {
            e.with_identifiers([&conn.ids])
                .with_correlation_ids(up.correlation_ids.iter().cloned())
                .with_data(&up)
        });
        if let Err(status) = self.ns.handle_uplink(up).await {
            self.drop_uplink(conn, DropReason::NsUnavailable);
            tracing::warn!(gateway_id = %conn.ids.gateway_id, %status,
                "gs: the Network Server did not take an uplink");
        }
    }

    /// Reports a transmission result to the NS and the event bus.
    pub(crate) async fn report_tx_ack(
        &self,
        conn: &GatewayConn,
        pending: PendingTx,
        result: v3::tx_acknowledgment::Result,
        warning: String,
    ) {
        let rtt = pending.sent_at.elapsed();
        {
            let mut st = conn.lock();
            if conn.protocol == Protocol::Udp {
                st.scheduler.record_rtt(rtt);
            }
        }
        self.metrics
            .tx_ack
            .get_or_create(&vec![
                ("protocol", conn.protocol.as_str().to_owned()),
                ("result", result.as_str_name().to_lowercase()),
            ])
            .inc();
        let ack = v3::TxAcknowledgment {
            correlation_ids: pending.correlation_ids,
            downlink_id: pending.downlink_id,
            gateway_ids: Some(conn.ids.clone()),
            result: result as i32,
            received_at: Some(Timestamp::now()),
            warning,
        };
        let definition = if result == v3::tx_acknowledgment::Result::Success {
            &definitions::GS_DOWN_TX_SUCCESS
        } else {
            &definitions::GS_DOWN_TX_FAIL
        };
        self.events.publish_with(definition, |e| {
            e.with_identifiers([&conn.ids])
                .with_correlation_ids(ack.correlation_ids.iter().cloned())
                .with_data(&ack)
        });
        if let Err(status) = self.ns.report_tx_ack(ack).await {
            tracing::warn!(gateway_id = %conn.ids.gateway_id, %status,
                "gs: the Network Server did not take a TX acknowledgment");
        }
    }

    /// Connection statistics of a connected gateway.
    pub(crate) fn stats(&self, conn: &GatewayConn) -> v3::GatewayConnectionStats {
        let st = conn.lock();
        let rtt = st.scheduler.rtt_stats().map(|(min, max, median, count)| {
            let d = |d: Duration| pbjson_types::Duration {
                seconds: d.as_secs() as i64,
                nanos: d.subsec_nanos() as i32,
            };
            v3::RoundTripTimes {
                min: Some(d(min)),
                max: Some(d(max)),
                median: Some(d(median)),
                count: count as u32,
            }
        });
        v3::GatewayConnectionStats {
            gateway_ids: Some(conn.ids.clone()),
            connected_at: st.stats.connected_at,
            disconnected_at: None,
            protocol: conn.protocol.as_str().to_owned(),
            remote_address: st.remote.to_string(),
            last_uplink_received_at: st.stats.last_uplink,
            uplink_count: st.stats.uplink_count,
            last_downlink_received_at: st.stats.last_downlink,
            downlink_count: st.stats.downlink_count,
            last_status_received_at: st.stats.last_status_at,
            last_status: st.stats.last_status.clone(),
            round_trip_times: rtt,
        }
    }

    /// Records a status report: stats, metric, event.
    pub(crate) fn record_status(&self, conn: &GatewayConn, status: v3::GatewayStatus) {
        {
            let mut st = conn.lock();
            st.stats.last_status_at = Some(Timestamp::now());
            st.stats.last_status = Some(status.clone());
        }
        self.metrics
            .status_received
            .get_or_create(&self.labels(conn.protocol, &conn.ids.gateway_id))
            .inc();
        self.events
            .publish_with(&definitions::GS_STATUS_RECEIVE, |e| {
                e.with_identifiers([&conn.ids]).with_data(&status)
            });
    }

    /// Updates the RTT gauge of a gateway.
    pub(crate) fn record_rtt_metric(&self, conn: &GatewayConn) {
        if let Some((_, max, _, _)) = conn.lock().scheduler.rtt_stats() {
            self.metrics
                .rtt_ms
                .get_or_create(&self.labels(conn.protocol, &conn.ids.gateway_id))
                .set(max.as_millis() as i64);
        }
    }
}
