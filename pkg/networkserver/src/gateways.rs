//! Which gateways can carry downlinks, from the connection reports of the Gateway Servers:
//! a gateway reported disconnected (or without a downlink path) is skipped when downlink
//! paths are chosen, until it is reported connected again. A gateway never reported is
//! assumed usable (its uplinks arrive through a GS).

use std::collections::HashMap;
use std::sync::RwLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::SystemTime;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tern_api::v3;
use tern_api::v3::gateway_connection_event::State;
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
        let label = match state {
            State::Connected => "connected",
            State::Disconnected => "disconnected",
            State::DownlinkPathLost => "downlink_path_lost",
        };
        self.reports.get_or_create(&[("state", label)]).inc();
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

    /// Class A paths of an uplink: its usable gateways' uplink tokens, best first.
    pub fn class_a_paths(&self, md: &[v3::RxMetadata]) -> Vec<v3::DownlinkPath> {
        best_first(md)
            .into_iter()
            .filter(|m| !m.uplink_token.is_empty() && self.usable(m.gateway_ids.as_ref()))
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
