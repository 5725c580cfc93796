//! Readiness of the process: the started roles' own reports, the backing services (store,
//! event bus, peer directory), and whether it is shutting down.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use serde::Serialize;
use tern_cluster::role::ReadinessSignal;
use tokio::sync::watch;

use crate::lifecycle::{Readiness, RoleService};
use crate::roles::Role;

/// A service the process depends on (the store, the event bus, the peer directory).
pub trait BackingService: Send + Sync {
    /// Its name on `/readyz`, e.g. `store`.
    fn name(&self) -> &'static str;

    /// Whether it is usable now; called often, so it must be cheap (report a cached state).
    fn readiness(&self) -> Readiness;
}

/// Collects readiness from the started roles; shared by `/readyz` and the gRPC health service.
#[derive(Clone)]
pub struct ReadinessTracker {
    inner: Arc<Inner>,
}

struct Inner {
    roles: Vec<Arc<dyn RoleService>>,
    backing: Vec<Arc<dyn BackingService>>,
    draining: AtomicBool,
    changed: ReadinessSignal,
}

/// One role's line in the readiness report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RoleStatus {
    /// Whether the role serves traffic.
    pub ready: bool,
    /// Why not, when it does not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl From<Readiness> for RoleStatus {
    fn from(readiness: Readiness) -> Self {
        let ready = readiness.is_ready();
        let reason = match readiness {
            Readiness::Ready => None,
            Readiness::NotReady(reason) | Readiness::Degraded(reason) => Some(reason),
        };
        Self { ready, reason }
    }
}

/// The readiness report, as served on `/readyz`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// True only when every started role and every backing service is ready and the process
    /// is not shutting down.
    pub ready: bool,
    /// True once a shutdown has begun.
    pub shutting_down: bool,
    /// Every started role by short name.
    pub roles: BTreeMap<&'static str, RoleStatus>,
    /// Every configured backing service by name.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub services: BTreeMap<&'static str, RoleStatus>,
    /// The roles and services that are not ready, if any.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_ready: Vec<&'static str>,
}

impl Report {
    /// The status of one role, if it was started.
    pub fn role(&self, role: Role) -> Option<&RoleStatus> {
        self.roles.get(role.as_str())
    }
}

impl std::fmt::Debug for ReadinessTracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadinessTracker")
            .field("roles", &self.roles())
            .field("draining", &self.inner.draining.load(Ordering::SeqCst))
            .finish()
    }
}

/// Exports `tern_role_ready{role="…"}`: 1 when the role is ready, else 0.
impl Collector for ReadinessTracker {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let family = Family::<[(&'static str, &'static str); 1], Gauge>::default();
        for (role, status) in self.report().roles {
            family
                .get_or_create(&[("role", role)])
                .set(i64::from(status.ready));
        }
        let metric = encoder.encode_descriptor(
            "tern_role_ready",
            "Whether each started role is ready (1) or not (0).",
            None,
            family.metric_type(),
        )?;
        family.encode(metric)
    }
}

impl ReadinessTracker {
    /// A tracker over the roles this process starts and the services it depends on.
    pub fn new(roles: Vec<Arc<dyn RoleService>>, backing: Vec<Arc<dyn BackingService>>) -> Self {
        Self {
            inner: Arc::new(Inner {
                roles,
                backing,
                draining: AtomicBool::new(false),
                changed: ReadinessSignal::new(),
            }),
        }
    }

    /// The signal roles use to say their readiness changed.
    pub fn signal(&self) -> ReadinessSignal {
        self.inner.changed.clone()
    }

    /// The started roles, in start order.
    pub fn roles(&self) -> Vec<Role> {
        self.inner.roles.iter().map(|r| r.role()).collect()
    }

    /// Asks every role for its readiness now.
    pub fn report(&self) -> Report {
        let shutting_down = self.inner.draining.load(Ordering::SeqCst);
        let mut roles = BTreeMap::new();
        let mut not_ready = Vec::new();
        for service in &self.inner.roles {
            let name = service.role().as_str();
            let status = if shutting_down {
                RoleStatus {
                    ready: false,
                    reason: Some("shutting down".to_owned()),
                }
            } else {
                RoleStatus::from(service.readiness())
            };
            if !status.ready {
                not_ready.push(name);
            }
            roles.insert(name, status);
        }
        let mut services = BTreeMap::new();
        for service in &self.inner.backing {
            let status = RoleStatus::from(service.readiness());
            if !status.ready {
                not_ready.push(service.name());
            }
            services.insert(service.name(), status);
        }
        Report {
            ready: !roles.is_empty() && not_ready.is_empty() && !shutting_down,
            shutting_down,
            roles,
            services,
            not_ready,
        }
    }

    /// Marks the process as shutting down: from now on nothing reports ready.
    pub fn begin_shutdown(&self) {
        self.inner.draining.store(true, Ordering::SeqCst);
        self.notify();
    }

    /// Tells subscribers that some readiness may have changed.
    pub fn notify(&self) {
        self.inner.changed.notify();
    }

    /// A receiver that wakes on [`ReadinessTracker::notify`].
    pub fn subscribe(&self) -> watch::Receiver<()> {
        self.inner.changed.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle::FrameRole;

    #[test]
    fn ready_only_when_all_roles_ready_and_not_shutting_down() {
        let gs = Arc::new(FrameRole::new(Role::Gs));
        let tracker = ReadinessTracker::new(
            vec![gs.clone(), Arc::new(FrameRole::new(Role::Ns))],
            Vec::new(),
        );
        let report = tracker.report();
        assert!(!report.ready);
        assert_eq!(report.not_ready, vec!["gs", "ns"]);
        assert_eq!(
            report.role(Role::Gs).unwrap().reason.as_deref(),
            Some("starting")
        );
        tracker.begin_shutdown();
        let report = tracker.report();
        assert!(report.shutting_down && !report.ready);
        assert_eq!(
            report.role(Role::Ns).unwrap().reason.as_deref(),
            Some("shutting down")
        );
    }

    #[test]
    fn report_serializes_as_documented() {
        let tracker = ReadinessTracker::new(vec![Arc::new(FrameRole::new(Role::Js))], Vec::new());
        let json = serde_json::to_value(tracker.report()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "ready": false,
                "shutting_down": false,
                "roles": {"js": {"ready": false, "reason": "starting"}},
                "not_ready": ["js"],
            })
        );
    }
}
