//! The HTTP server: `/healthz`, `/readyz`, `/metrics` and the REST API under `/api/v3`,
//! shared by the roles of a process.

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;

use crate::metrics::{self, Metrics};
use crate::readiness::ReadinessTracker;
use crate::rest::{RestGateway, RouteLabel};
use crate::shutdown::Shutdown;

/// What the HTTP handlers share.
#[derive(Clone)]
pub struct HttpState {
    /// Readiness of the started roles.
    pub readiness: ReadinessTracker,
    /// The process's metrics.
    pub metrics: Metrics,
    /// The REST mapping of the gRPC services.
    pub rest: RestGateway,
}

/// The HTTP routes, each request counted in `tern_http_requests_total`.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(state.clone())
        .merge(state.rest.clone().router())
        .layer(middleware::from_fn_with_state(
            state.clone(),
            count_requests,
        ))
}

/// Serves `router` on `listener` until `shutdown`, then lets in-flight requests finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: Shutdown,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { shutdown.wait().await })
        .await
}

/// 200 while the process runs.
async fn healthz() -> &'static str {
    "ok\n"
}

/// 200 with the report when every started role is ready; 503 with it otherwise.
async fn readyz(State(state): State<HttpState>) -> Response {
    let report = state.readiness.report();
    let status = if report.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(report)).into_response()
}

/// Every metric in OpenMetrics text format.
async fn metrics_text(State(state): State<HttpState>) -> Response {
    (
        [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
        state.metrics.encode(),
    )
        .into_response()
}

/// Counts each request by method, matched route (not raw path) and status.
async fn count_requests(State(state): State<HttpState>, request: Request, next: Next) -> Response {
    let method = request.method().as_str().to_owned();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let response = next.run(request).await;
    // REST calls are counted by their API template, not by the catch-all route.
    let route = response
        .extensions()
        .get::<RouteLabel>()
        .map_or(route, |label| label.0.clone());
    state
        .metrics
        .http_request(&method, &route, response.status().as_u16());
    response
}
