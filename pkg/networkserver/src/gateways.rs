//! Which gateways can carry downlinks, from the connection reports of the Gateway Servers:
//! a gateway reported disconnected (or without a downlink path) is skipped when downlink
//! paths are chosen, until it is reported connected again. A gateway never reported is
//! assumed usable (its uplinks arrive through a GS).
//!
//! In a cluster a gateway is connected to one Gateway Server instance of several: the GS
//! names itself in each copy's rx metadata and in its connection reports, and
//! [`GsRouter`] sends each downlink to the GS owning its paths (the best path's GS first,
//! with the paths it owns, then the next GS's if none of them was feasible).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant, SystemTime};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tern_api::v3;
use tern_api::v3::gateway_connection_event::State;
use tern_cluster::links::{LinkResult, NsGs};
use tonic::Status;

use super::{Labels, best_first};

/// What the NS last heard of one gateway's connection.
#[derive(Debug, Clone)]
pub(crate) struct GatewayState {
    /// The reported state.
    pub state: State,
    /// "semtech-udp" or "basic-station".
    pub protocol: String,
    /// Where the gateway connects from.
    pub remote_address: String,
    /// When the report says it happened (else when it arrived).
    pub since: SystemTime,
}

/// Connection state per gateway ID.
#[derive(Default)]
pub(crate) struct Gateways {
    states: RwLock<HashMap<String, GatewayState>>,
    /// Gateways currently unusable: the hot path skips the map while this is zero.
    unusable: AtomicUsize,
    reports: Family<Labels, Counter>,
    /// Which Gateway Server owns which path, shared with the [`GsRouter`].
    routes: Arc<Routes>,
}

/// How long the GS of an uplink token is remembered: class A windows (and the RX2 retry
/// after a failed RX1) close within seconds of the uplink.
const TOKEN_TTL: Duration = Duration::from_secs(60);

/// At most this many uplink tokens are remembered (the oldest go first).
const MAX_TOKENS: usize = 200_000;

/// The Gateway Server instance that owns each path.
#[derive(Default)]
pub(crate) struct Routes {
    /// Gateway ID → the GS it last connected to or sent an uplink through.
    by_gateway: RwLock<HashMap<String, Arc<str>>>,
    /// Uplink token → the GS that issued it.
    tokens: Mutex<TokenCache>,
    /// Downlinks by how they were routed.
    routed: Family<Labels, Counter>,
}

#[derive(Default)]
struct TokenCache {
    owner: HashMap<Vec<u8>, (Instant, Arc<str>)>,
    order: VecDeque<(Instant, Vec<u8>)>,
}

impl TokenCache {
    fn insert(&mut self, token: Vec<u8>, gs: Arc<str>, now: Instant) {
        while let Some((at, _)) = self.order.front() {
            if now.duration_since(*at) < TOKEN_TTL && self.order.len() < MAX_TOKENS {
                break;
            }
            let (at, old) = self.order.pop_front().expect("front exists");
            if self.owner.get(&old).is_some_and(|(t, _)| *t == at) {
                self.owner.remove(&old);
            }
        }
        self.owner.insert(token.clone(), (now, gs));
        self.order.push_back((now, token));
    }
}

impl Routes {
    /// The GS instance owning `path`; empty when unknown (an older GS, or forgotten).
    fn owner(&self, path: &v3::DownlinkPath) -> Arc<str> {
        match &path.path {
            Some(v3::downlink_path::Path::UplinkToken(token)) => self
                .tokens
                .lock()
                .expect("token cache lock")
                .owner
                .get(token)
                .map(|(_, gs)| gs.clone()),
            Some(v3::downlink_path::Path::Fixed(fixed)) => {
                fixed.gateway_ids.as_ref().and_then(|g| {
                    self.by_gateway
                        .read()
                        .expect("gateway routes lock")
                        .get(&g.gateway_id)
                        .cloned()
                })
            }
            None => None,
        }
        .unwrap_or_else(|| Arc::from(""))
    }

    /// Remembers that `gateway_id` is reached through `gs`.
    fn set_gateway(&self, gateway_id: &str, gs: &str) {
        if gs.is_empty() || gateway_id.is_empty() {
            return;
        }
        if self
            .by_gateway
            .read()
            .expect("gateway routes lock")
            .get(gateway_id)
            .is_some_and(|known| &**known == gs)
        {
            return;
        }
        self.by_gateway
            .write()
            .expect("gateway routes lock")
            .insert(gateway_id.to_owned(), Arc::from(gs));
    }

    fn gateway(&self, gateway_id: &str) -> Option<Arc<str>> {
        self.by_gateway
            .read()
            .expect("gateway routes lock")
            .get(gateway_id)
            .cloned()
    }
}

fn usable_state(s: State) -> bool {
    s == State::Connected
}

impl Gateways {
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "gateway_connection_reports",
            "Gateway connection reports from Gateway Servers, by state (or rejection reason)",
            self.reports.clone(),
        );
        r.register(
            "downlink_routes",
            "Downlinks handed to Gateway Servers, by how their paths were routed",
            self.routes.routed.clone(),
        );
    }

    /// The routing state, for the [`GsRouter`] of the Gateway Server link.
    pub fn routes(&self) -> Arc<Routes> {
        self.routes.clone()
    }

    /// Takes note of the GS that forwarded each copy of an uplink.
    pub fn heard(&self, md: &[v3::RxMetadata]) {
        for m in md {
            if let Some(g) = &m.gateway_ids {
                self.routes.set_gateway(&g.gateway_id, &m.gateway_server_id);
            }
        }
    }

    /// Takes a GS's report. Bad reports change nothing.
    pub fn report(&self, event: &v3::GatewayConnectionEvent) -> Result<(), Status> {
        let Some(id) = event
            .gateway_ids
            .as_ref()
            .map(|g| g.gateway_id.clone())
            .filter(|g| !g.is_empty())
        else {
            self.reports
                .get_or_create(&[("state", "invalid_gateway_ids")])
                .inc();
            return Err(Status::invalid_argument(
                "gateway_ids.gateway_id: required in a gateway connection event",
            ));
        };
        let Ok(state) = State::try_from(event.state) else {
            self.reports
                .get_or_create(&[("state", "invalid_state")])
                .inc();
            return Err(Status::invalid_argument(format!(
                "state: {} is not a gateway connection state",
                event.state
            )));
        };
        let from = event.gateway_server_id.as_str();
        if state != State::Connected
            && !from.is_empty()
            && self
                .routes
                .gateway(&id)
                .is_some_and(|current| !current.is_empty() && &*current != from)
        {
            // The gateway reconnected to another GS before this one reported it gone.
            self.reports
                .get_or_create(&[("state", "stale_gateway_server")])
                .inc();
            return Ok(());
        }
        let label = match state {
            State::Connected => "connected",
            State::Disconnected => "disconnected",
            State::DownlinkPathLost => "downlink_path_lost",
        };
        self.reports.get_or_create(&[("state", label)]).inc();
        if state == State::Connected {
            self.routes.set_gateway(&id, from);
        }
        let since = event
            .time
            .and_then(|t| t.to_datetime())
            .map_or_else(SystemTime::now, SystemTime::from);
        let mut states = self.states.write().expect("gateway states lock");
        let before = states.get(&id).map(|s| usable_state(s.state));
        let now_usable = usable_state(state);
        match (before, now_usable) {
            (Some(true) | None, false) => {
                self.unusable.fetch_add(1, Ordering::Relaxed);
            }
            (Some(false), true) => {
                self.unusable.fetch_sub(1, Ordering::Relaxed);
            }
            _ => {}
        }
        if now_usable {
            // Usable is the default: no need to remember it.
            states.remove(&id);
        } else {
            states.insert(
                id,
                GatewayState {
                    state,
                    protocol: event.protocol.clone(),
                    remote_address: event.remote_address.clone(),
                    since,
                },
            );
        }
        Ok(())
    }

    /// The last report of a gateway that cannot take downlinks now.
    pub fn unusable(&self, ids: Option<&v3::GatewayIdentifiers>) -> Option<GatewayState> {
        if self.unusable.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let id = ids?.gateway_id.as_str();
        self.states
            .read()
            .expect("gateway states lock")
            .get(id)
            .cloned()
    }

    /// Whether a gateway can take downlinks now.
    pub fn usable(&self, ids: Option<&v3::GatewayIdentifiers>) -> bool {
        self.unusable(ids).is_none()
    }

    /// Class A paths of an uplink: its usable gateways' uplink tokens, best first. The GS of
    /// each is remembered for the [`GsRouter`].
    pub fn class_a_paths(&self, md: &[v3::RxMetadata]) -> Vec<v3::DownlinkPath> {
        let paths: Vec<v3::RxMetadata> = best_first(md)
            .into_iter()
            .filter(|m| !m.uplink_token.is_empty() && self.usable(m.gateway_ids.as_ref()))
            .collect();
        if paths.iter().any(|m| !m.gateway_server_id.is_empty()) {
            let now = Instant::now();
            let mut tokens = self.routes.tokens.lock().expect("token cache lock");
            for m in paths.iter().filter(|m| !m.gateway_server_id.is_empty()) {
                tokens.insert(
                    m.uplink_token.clone(),
                    Arc::from(m.gateway_server_id.as_str()),
                    now,
                );
            }
        }
        paths
            .into_iter()
            .map(|m| v3::DownlinkPath {
                path: Some(v3::downlink_path::Path::UplinkToken(m.uplink_token)),
            })
            .collect()
    }

    /// Fixed paths (class B/C) through the usable ones of `gateways`, in their order.
    pub fn fixed_paths(&self, gateways: Vec<v3::GatewayIdentifiers>) -> Vec<v3::DownlinkPath> {
        gateways
            .into_iter()
            .filter(|g| self.usable(Some(g)))
            .map(|g| v3::DownlinkPath {
                path: Some(v3::downlink_path::Path::Fixed(
                    v3::GatewayAntennaIdentifiers {
                        gateway_ids: Some(g),
                        antenna_index: 0,
                    },
                )),
            })
            .collect()
    }

    /// Why no path was left: one entry per gateway that could have reached the device.
    pub fn no_path_failure(
        &self,
        gateways: &[v3::GatewayIdentifiers],
    ) -> v3::ScheduleDownlinkFailure {
        let path_errors = gateways
            .iter()
            .enumerate()
            .map(|(i, g)| {
                let (error, message) = match self.unusable(Some(g)) {
                    Some(s) if s.state == State::DownlinkPathLost => (
                        v3::ScheduleError::NoDownlinkPath,
                        format!(
                            "gateway {:?} lost its downlink path ({} from {})",
                            g.gateway_id, s.protocol, s.remote_address
                        ),
                    ),
                    Some(s) => (
                        v3::ScheduleError::GatewayNotConnected,
                        format!(
                            "gateway {:?} is disconnected ({} from {}, for {}s)",
                            g.gateway_id,
                            s.protocol,
                            s.remote_address,
                            s.since.elapsed().map_or(0, |d| d.as_secs())
                        ),
                    ),
                    None => (
                        v3::ScheduleError::Unknown,
                        format!("gateway {:?} gave no usable path", g.gateway_id),
                    ),
                };
                v3::PathError {
                    path_index: i as u32,
                    gateway_ids: Some(g.clone()),
                    rx1: error as i32,
                    rx2: error as i32,
                    details: Some(v3::ErrorDetails {
                        code: tonic::Code::Unavailable as u32,
                        name: "no_gateway_path".to_owned(),
                        message,
                        ..Default::default()
                    }),
                }
            })
            .collect();
        v3::ScheduleDownlinkFailure { path_errors }
    }
}

/// The Network Server's Gateway Server link, set once.
pub(crate) struct GsSlot {
    link: OnceLock<Arc<dyn NsGs>>,
    routes: Arc<Routes>,
}

impl GsSlot {
    /// An empty slot routing with `routes`.
    pub fn new(routes: Arc<Routes>) -> Self {
        Self {
            link: OnceLock::new(),
            routes,
        }
    }

    /// Sets the link (once), behind a [`GsRouter`].
    pub fn set(&self, gs: Arc<dyn NsGs>) -> Result<(), Arc<dyn NsGs>> {
        self.link.set(Arc::new(GsRouter {
            inner: gs,
            routes: self.routes.clone(),
        }))
    }

    /// The link, if set.
    pub fn get(&self) -> Option<&Arc<dyn NsGs>> {
        self.link.get()
    }
}

/// Splits a downlink's paths by the Gateway Server instance that owns them and hands them
/// to `inner` one GS at a time, naming it in `gateway_server_id`: first the GS of the best
/// path with every path it owns, then, if it found none feasible (or cannot be reached),
/// the GS of the next best path not tried yet. Paths of no known GS form one group too,
/// with an empty ID (the link picks a GS, as before clusters named them).
pub(crate) struct GsRouter {
    inner: Arc<dyn NsGs>,
    routes: Arc<Routes>,
}

#[async_trait::async_trait]
impl NsGs for GsRouter {
    async fn schedule_downlink(
        &self,
        mut message: v3::DownlinkMessage,
    ) -> LinkResult<v3::ScheduleDownlinkResponse> {
        use v3::schedule_downlink_response::Result as Outcome;
        let Some(mut request) = message.request.take() else {
            return self.inner.schedule_downlink(message).await;
        };
        // Groups in the order of their best path (the paths are best first).
        let mut groups: Vec<(Arc<str>, Vec<usize>)> = Vec::new();
        for (i, path) in request.downlink_paths.iter().enumerate() {
            let owner = self.routes.owner(path);
            match groups.iter_mut().find(|(gs, _)| *gs == owner) {
                Some((_, members)) => members.push(i),
                None => groups.push((owner, vec![i])),
            }
        }
        if groups.len() <= 1 {
            let label = if groups.first().is_some_and(|(gs, _)| !gs.is_empty()) {
                "one_gateway_server"
            } else {
                "unnamed_gateway_server"
            };
            self.routes.routed.get_or_create(&[("route", label)]).inc();
            message.gateway_server_id = groups
                .first()
                .map(|(gs, _)| gs.to_string())
                .unwrap_or_default();
            message.request = Some(request);
            return self.inner.schedule_downlink(message).await;
        }
        self.routes
            .routed
            .get_or_create(&[("route", "several_gateway_servers")])
            .inc();
        let paths = std::mem::take(&mut request.downlink_paths);
        let mut path_errors = Vec::new();
        let mut first_error = None;
        for (n, (gs, members)) in groups.iter().enumerate() {
            let mut attempt = message.clone();
            attempt.gateway_server_id = gs.to_string();
            attempt.request = Some(v3::TxRequest {
                downlink_paths: members.iter().map(|&i| paths[i].clone()).collect(),
                ..request.clone()
            });
            // Indices in the GS's answer are into its group: map them back.
            let original = |i: u32| members.get(i as usize).map_or(i, |&o| o as u32);
            match self.inner.schedule_downlink(attempt).await {
                Ok(v3::ScheduleDownlinkResponse {
                    result: Some(Outcome::Scheduled(mut scheduled)),
                }) => {
                    if n > 0 {
                        self.routes
                            .routed
                            .get_or_create(&[("route", "next_gateway_server")])
                            .inc();
                    }
                    scheduled.path_index = original(scheduled.path_index);
                    return Ok(v3::ScheduleDownlinkResponse {
                        result: Some(Outcome::Scheduled(scheduled)),
                    });
                }
                Ok(v3::ScheduleDownlinkResponse {
                    result: Some(Outcome::Failed(failed)),
                }) => path_errors.extend(failed.path_errors.into_iter().map(|mut e| {
                    e.path_index = original(e.path_index);
                    e
                })),
                Ok(v3::ScheduleDownlinkResponse { result: None }) => {
                    first_error.get_or_insert_with(|| {
                        Status::internal(format!("Gateway Server {gs:?} answered without a result"))
                    });
                }
                Err(status) => {
                    // The paths of an unreachable GS fail too; the next GS may still work.
                    path_errors.extend(members.iter().map(|&i| v3::PathError {
                        path_index: i as u32,
                        gateway_ids: None,
                        rx1: v3::ScheduleError::Unknown as i32,
                        rx2: v3::ScheduleError::Unknown as i32,
                        details: Some(v3::ErrorDetails {
                            code: status.code() as u32,
                            name: "gateway_server_unavailable".to_owned(),
                            message: format!("Gateway Server {gs:?}: {}", status.message()),
                            ..Default::default()
                        }),
                    }));
                    first_error.get_or_insert(status);
                }
            }
        }
        match first_error {
            // No GS answered at all.
            Some(status)
                if path_errors.len() == paths.len()
                    && path_errors.iter().all(|e| {
                        e.details
                            .as_ref()
                            .is_some_and(|d| d.name == "gateway_server_unavailable")
                    }) =>
            {
                Err(status)
            }
            _ => {
                path_errors.sort_by_key(|e| e.path_index);
                Ok(v3::ScheduleDownlinkResponse {
                    result: Some(Outcome::Failed(v3::ScheduleDownlinkFailure { path_errors })),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str, state: State) -> v3::GatewayConnectionEvent {
        v3::GatewayConnectionEvent {
            gateway_ids: Some(v3::GatewayIdentifiers::new(id, None)),
            state: state as i32,
            ..Default::default()
        }
    }

    /// A test-side Gateway Server link: records what each named GS was asked, and
    /// schedules on `feasible` gateways only.
    #[derive(Default)]
    struct RecordingGs {
        calls: Mutex<Vec<(String, Vec<v3::DownlinkPath>)>>,
        feasible: Vec<Vec<u8>>,
    }

    #[async_trait::async_trait]
    impl NsGs for RecordingGs {
        async fn schedule_downlink(
            &self,
            m: v3::DownlinkMessage,
        ) -> LinkResult<v3::ScheduleDownlinkResponse> {
            use v3::schedule_downlink_response::Result as Outcome;
            let paths = m.request.unwrap().downlink_paths;
            self.calls
                .lock()
                .unwrap()
                .push((m.gateway_server_id.clone(), paths.clone()));
            if m.gateway_server_id == "gs-down" {
                return Err(Status::unavailable("gs-down is gone"));
            }
            let ok = paths.iter().position(|p| match &p.path {
                Some(v3::downlink_path::Path::UplinkToken(t)) => self.feasible.contains(t),
                _ => true,
            });
            Ok(v3::ScheduleDownlinkResponse {
                result: Some(match ok {
                    Some(i) => Outcome::Scheduled(v3::ScheduledDownlink {
                        path_index: i as u32,
                        ..Default::default()
                    }),
                    None => Outcome::Failed(v3::ScheduleDownlinkFailure {
                        path_errors: (0..paths.len())
                            .map(|i| v3::PathError {
                                path_index: i as u32,
                                ..Default::default()
                            })
                            .collect(),
                    }),
                }),
            })
        }
    }

    fn md(gateway: &str, gs: &str, snr: f32) -> v3::RxMetadata {
        v3::RxMetadata {
            gateway_ids: Some(v3::GatewayIdentifiers::new(gateway, None)),
            uplink_token: format!("token-{gateway}").into_bytes(),
            gateway_server_id: gs.into(),
            snr,
            ..Default::default()
        }
    }

    fn message(paths: Vec<v3::DownlinkPath>) -> v3::DownlinkMessage {
        v3::DownlinkMessage {
            request: Some(v3::TxRequest {
                downlink_paths: paths,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn token(p: &v3::DownlinkPath) -> String {
        match &p.path {
            Some(v3::downlink_path::Path::UplinkToken(t)) => String::from_utf8(t.clone()).unwrap(),
            Some(v3::downlink_path::Path::Fixed(f)) => {
                f.gateway_ids.as_ref().unwrap().gateway_id.clone()
            }
            None => String::new(),
        }
    }

    #[tokio::test]
    async fn class_a_goes_to_the_best_paths_gateway_server_then_the_next() {
        let g = Gateways::default();
        // Best first: gw-1 (gs-a), gw-2 (gs-b), gw-3 (gs-a). gs-a can use none of its paths.
        let paths = g.class_a_paths(&[
            md("gw-2", "gs-b", 5.0),
            md("gw-3", "gs-a", 1.0),
            md("gw-1", "gs-a", 9.0),
        ]);
        let gs = Arc::new(RecordingGs {
            feasible: vec![b"token-gw-2".to_vec()],
            ..Default::default()
        });
        let slot = GsSlot::new(g.routes());
        assert!(slot.set(gs.clone()).is_ok());
        let answer = slot
            .get()
            .unwrap()
            .schedule_downlink(message(paths))
            .await
            .unwrap();
        let calls = gs.calls.lock().unwrap().clone();
        let seen: Vec<(String, Vec<String>)> = calls
            .iter()
            .map(|(gs, p)| (gs.clone(), p.iter().map(token).collect()))
            .collect();
        assert_eq!(
            seen,
            vec![
                (
                    "gs-a".to_owned(),
                    vec!["token-gw-1".to_owned(), "token-gw-3".to_owned()]
                ),
                ("gs-b".to_owned(), vec!["token-gw-2".to_owned()]),
            ]
        );
        // The index is into the request's paths, not gs-b's share of them.
        match answer.result {
            Some(v3::schedule_downlink_response::Result::Scheduled(s)) => {
                assert_eq!(s.path_index, 1)
            }
            other => panic!("not scheduled: {other:?}"),
        }
    }

    #[tokio::test]
    async fn failures_of_every_gateway_server_are_merged() {
        let g = Gateways::default();
        let paths = g.class_a_paths(&[md("gw-1", "gs-a", 9.0), md("gw-2", "gs-down", 5.0)]);
        let gs = Arc::new(RecordingGs::default());
        let slot = GsSlot::new(g.routes());
        assert!(slot.set(gs.clone()).is_ok());
        let answer = slot
            .get()
            .unwrap()
            .schedule_downlink(message(paths))
            .await
            .unwrap();
        let Some(v3::schedule_downlink_response::Result::Failed(f)) = answer.result else {
            panic!("expected a failure: {answer:?}");
        };
        let indices: Vec<u32> = f.path_errors.iter().map(|e| e.path_index).collect();
        assert_eq!(indices, vec![0, 1]);
        assert_eq!(
            f.path_errors[1].details.as_ref().unwrap().name,
            "gateway_server_unavailable"
        );
    }

    #[tokio::test]
    async fn old_gateway_servers_and_single_ones_keep_one_call() {
        let g = Gateways::default();
        let paths = g.class_a_paths(&[md("gw-1", "", 9.0), md("gw-2", "", 5.0)]);
        let gs = Arc::new(RecordingGs {
            feasible: vec![b"token-gw-2".to_vec()],
            ..Default::default()
        });
        let slot = GsSlot::new(g.routes());
        assert!(slot.set(gs.clone()).is_ok());
        slot.get()
            .unwrap()
            .schedule_downlink(message(paths))
            .await
            .unwrap();
        let calls = gs.calls.lock().unwrap().clone();
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].0, "");
        assert_eq!(calls[0].1.len(), 2);
    }

    #[tokio::test]
    async fn class_c_follows_the_last_connection_or_uplink() {
        let g = Gateways::default();
        let gs = Arc::new(RecordingGs::default());
        let slot = GsSlot::new(g.routes());
        assert!(slot.set(gs.clone()).is_ok());
        let fixed = |ids: &[&str]| {
            g.fixed_paths(
                ids.iter()
                    .map(|i| v3::GatewayIdentifiers::new(*i, None))
                    .collect(),
            )
        };
        let mut connected = event("gw-c", State::Connected);
        connected.gateway_server_id = "gs-a".into();
        g.report(&connected).unwrap();
        slot.get()
            .unwrap()
            .schedule_downlink(message(fixed(&["gw-c"])))
            .await
            .unwrap();
        // Then its uplinks come through gs-b: it moved.
        g.heard(&[md("gw-c", "gs-b", 0.0)]);
        slot.get()
            .unwrap()
            .schedule_downlink(message(fixed(&["gw-c"])))
            .await
            .unwrap();
        // gs-a's late report of the old connection changes nothing.
        let mut gone = event("gw-c", State::Disconnected);
        gone.gateway_server_id = "gs-a".into();
        g.report(&gone).unwrap();
        assert!(g.usable(Some(&v3::GatewayIdentifiers::new("gw-c", None))));
        // A gateway never heard of goes to whichever GS the link picks.
        slot.get()
            .unwrap()
            .schedule_downlink(message(fixed(&["gw-x"])))
            .await
            .unwrap();
        let named: Vec<String> = gs
            .calls
            .lock()
            .unwrap()
            .iter()
            .map(|c| c.0.clone())
            .collect();
        assert_eq!(named, vec!["gs-a", "gs-b", ""]);
        // Its current GS's report counts.
        gone.gateway_server_id = "gs-b".into();
        g.report(&gone).unwrap();
        assert!(!g.usable(Some(&v3::GatewayIdentifiers::new("gw-c", None))));
    }

    #[test]
    fn token_cache_forgets_the_oldest() {
        let mut cache = TokenCache::default();
        let start = Instant::now();
        cache.insert(b"old".to_vec(), Arc::from("gs-a"), start);
        cache.insert(b"new".to_vec(), Arc::from("gs-b"), start + TOKEN_TTL);
        assert!(!cache.owner.contains_key(b"old".as_slice()));
        assert_eq!(&*cache.owner[b"new".as_slice()].1, "gs-b");
        assert_eq!(cache.order.len(), 1);
    }

    #[test]
    fn disconnect_and_reconnect() {
        let g = Gateways::default();
        let a = v3::GatewayIdentifiers::new("gw-a", None);
        assert!(g.usable(Some(&a)));
        g.report(&event("gw-a", State::Disconnected)).unwrap();
        assert!(!g.usable(Some(&a)));
        g.report(&event("gw-a", State::DownlinkPathLost)).unwrap();
        assert!(!g.usable(Some(&a)));
        assert_eq!(g.unusable.load(Ordering::Relaxed), 1);
        g.report(&event("gw-a", State::Connected)).unwrap();
        assert!(g.usable(Some(&a)));
        assert_eq!(g.unusable.load(Ordering::Relaxed), 0);
        // Bad reports change nothing.
        assert!(g.report(&v3::GatewayConnectionEvent::default()).is_err());
        let mut bad = event("gw-a", State::Connected);
        bad.state = 9;
        assert!(g.report(&bad).is_err());
        assert!(g.usable(Some(&a)));
    }
}
