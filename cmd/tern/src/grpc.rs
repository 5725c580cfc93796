//! The gRPC server: the roles' services, and the standard health service reporting each
//! started role.
//!
//! Service `""` is the whole process; `tern.<role>` (e.g. `tern.ns`) is one role. Both follow
//! the readiness tracker: SERVING when ready, NOT_SERVING otherwise and during shutdown.

use std::collections::HashMap;
use std::time::Duration;

use tokio::net::TcpListener;
use tonic::service::{Routes, RoutesBuilder};
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::readiness::{ReadinessTracker, Report};
use crate::shutdown::Shutdown;

/// How often role readiness is polled for the health service between notifications.
const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// The gRPC services of the process: the health service first, the public event stream
/// (behind `auth`), then each role's.
pub fn routes(
    roles: &[std::sync::Arc<dyn crate::lifecycle::RoleService>],
    events: &tern_events::EventBus,
    auth: &tern_cluster::auth::Authenticator,
) -> (Routes, HealthReporter) {
    use tower::Layer;
    let (reporter, health_service) = tonic_health::server::health_reporter();
    let mut builder = RoutesBuilder::default();
    builder.add_service(health_service);
    builder.add_service(
        auth.layer()
            .layer(tern_events::service::EventsService::new(events.clone()).into_server()),
    );
    for role in roles {
        role.grpc_services(&mut builder);
    }
    (builder.routes(), reporter)
}

/// Serves `routes` on `listener` until `shutdown`, then lets in-flight calls finish; keeps
/// the health service in step with `readiness` through `reporter`.
pub async fn serve(
    listener: TcpListener,
    routes: Routes,
    reporter: HealthReporter,
    readiness: ReadinessTracker,
    shutdown: Shutdown,
) -> Result<(), tonic::transport::Error> {
    let mut mirror = HealthMirror::new(reporter);
    // Subscribe before the first report: a change after it is then never missed.
    let changed = readiness.subscribe();
    mirror.apply(&readiness.report()).await;

    let on_shutdown = {
        let mut reporter = mirror.reporter.clone();
        let mut services = vec![String::new()];
        services.extend(readiness.roles().iter().map(|r| r.health_service_name()));
        let shutdown = shutdown.clone();
        async move {
            shutdown.wait().await;
            // NOT_SERVING first, then end every Watch stream so connections can drain.
            for service in &services {
                reporter
                    .set_service_status(service, ServingStatus::NotServing)
                    .await;
            }
            for service in &services {
                reporter.clear_service_status(service).await;
            }
        }
    };
    let follow = tokio::spawn(follow(mirror, readiness, changed, shutdown));
    let result = Server::builder()
        .add_routes(routes)
        .serve_with_incoming_shutdown(TcpIncoming::from(listener), on_shutdown)
        .await;
    follow.abort();
    result
}

/// Keeps the health statuses in step with the tracker until shutdown.
async fn follow(
    mut mirror: HealthMirror,
    readiness: ReadinessTracker,
    mut changed: tokio::sync::watch::Receiver<()>,
    shutdown: Shutdown,
) {
    while !shutdown.is_triggered() {
        tokio::select! {
            _ = changed.changed() => {}
            _ = tokio::time::sleep(POLL_INTERVAL) => {}
            _ = shutdown.wait() => return,
        }
        mirror.apply(&readiness.report()).await;
    }
}

/// Writes readiness reports into the health reporter, only when a status changes.
#[derive(Clone)]
struct HealthMirror {
    reporter: HealthReporter,
    last: HashMap<String, ServingStatus>,
}

impl HealthMirror {
    fn new(reporter: HealthReporter) -> Self {
        Self {
            reporter,
            last: HashMap::new(),
        }
    }

    async fn apply(&mut self, report: &Report) {
        let mut wanted = vec![(String::new(), report.ready)];
        for (role, status) in &report.roles {
            wanted.push((format!("tern.{role}"), status.ready));
        }
        for (service, ready) in wanted {
            let status = if ready {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            if self.last.get(&service) != Some(&status) {
                self.reporter.set_service_status(&service, status).await;
                self.last.insert(service, status);
            }
        }
    }
}
