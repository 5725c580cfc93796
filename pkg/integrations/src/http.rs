//! The webhook downlink routes: receivers of webhook requests push downlinks back with the
//! URLs of the `X-Downlink-Push`/`X-Downlink-Replace` headers and an API key with
//! `application:traffic:down:write`.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use tern_cluster::auth::{AuthError, Entity, grants};
use tonic::{Code, Status};

use crate::grpc::RIGHT_TRAFFIC_DOWN_WRITE;
use crate::pubsub::push_downlink;
use crate::records::{WEBHOOKS, config_key};
use crate::{Inner, store_status};

/// The largest accepted request body.
const MAX_BODY: usize = 64 * 1024;

pub(crate) fn router(inner: Arc<Inner>) -> Router {
    Router::new()
        .route(
            "/api/v3/as/applications/{app}/webhooks/{wh}/devices/{dev}/down/push",
            post(push),
        )
        .route(
            "/api/v3/as/applications/{app}/webhooks/{wh}/devices/{dev}/down/replace",
            post(replace),
        )
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(inner)
}

async fn push(
    State(inner): State<Arc<Inner>>,
    Path((app, wh, dev)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    handle(&inner, &app, &wh, &dev, false, &headers, &body)
        .await
        .map_or_else(error_response, |()| StatusCode::OK.into_response())
}

async fn replace(
    State(inner): State<Arc<Inner>>,
    Path((app, wh, dev)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    handle(&inner, &app, &wh, &dev, true, &headers, &body)
        .await
        .map_or_else(error_response, |()| StatusCode::OK.into_response())
}

async fn handle(
    inner: &Inner,
    app: &str,
    wh: &str,
    dev: &str,
    replace: bool,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(), Status> {
    authorize(inner, app, headers).await.inspect_err(|s| {
        inner.metrics.reject(if s.code() == Code::Unauthenticated {
            "unauthenticated"
        } else {
            "permission"
        })
    })?;
    let exists = inner
        .store
        .get(&WEBHOOKS, &config_key(app, wh))
        .await
        .map_err(store_status)?
        .is_some();
    if !exists {
        inner.metrics.reject("unknown_webhook");
        return Err(Status::not_found(format!(
            "webhook `{wh}` of application `{app}` not found"
        )));
    }
    push_downlink(inner, "webhook", app, dev, replace, body).await
}

/// Checks `Authorization: Bearer <API key>` for the downlink right on `app`.
async fn authorize(inner: &Inner, app: &str, headers: &HeaderMap) -> Result<(), Status> {
    let mut values = headers.get_all(http::header::AUTHORIZATION).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return Err(AuthError::MissingCredentials.into());
    };
    let key = value
        .to_str()
        .ok()
        .and_then(|v| {
            let (scheme, key) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| key.trim())
        })
        .filter(|k| !k.is_empty())
        .ok_or(AuthError::MalformedCredentials(
            "expected `Authorization: Bearer <API key>`",
        ))?;
    let info = inner.api_keys.verify(key).await.map_err(AuthError::from)?;
    let entity = Entity::Application(app.to_owned());
    if info.is_admin || info.entity == entity {
        return info
            .require(&entity, RIGHT_TRAFFIC_DOWN_WRITE)
            .map_err(Status::from);
    }
    let rights = inner
        .api_keys
        .rights_on(&info, &entity)
        .await
        .map_err(AuthError::from)?;
    if grants(&rights, RIGHT_TRAFFIC_DOWN_WRITE) {
        Ok(())
    } else {
        Err(AuthError::MissingRightOn {
            holder: info.entity.to_string(),
            entity: entity.to_string(),
            right: RIGHT_TRAFFIC_DOWN_WRITE.to_owned(),
        }
        .into())
    }
}

/// The HTTP status of a gRPC code, as the gRPC-gateway maps them.
fn error_response(status: Status) -> Response {
    let code = match status.code() {
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            StatusCode::BAD_REQUEST
        }
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let body = serde_json::json!({
        "code": status.code() as i32,
        "message": status.message(),
    });
    (code, axum::Json(body)).into_response()
}
