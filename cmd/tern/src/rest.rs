//! `/api/v3/…`: the REST mapping of the public gRPC API, served by calling the gRPC services
//! of this process in-process.
//!
//! The routes come from the `google.api.http` bindings ([`tern_api::rest`]); each request is
//! transcoded to the method's protobuf request, framed as a gRPC call and sent through the
//! same tonic routes the gRPC server serves (no socket, no second implementation), so
//! authentication, rights checks and errors are the gRPC ones. `Authorization` and
//! `Grpc-Metadata-*` headers travel as gRPC metadata.
//!
//! Errors are `{"code": <gRPC code>, "message": "…", "details": []}` with the HTTP status of
//! the gRPC code, as gRPC gateways do. Server-streaming methods answer with one JSON object
//! per line: `{"result": …}` per message, or `{"error": …}` if the stream fails.

use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use http_body_util::{BodyExt, BodyStream, Full};
use tern_api::rest::{RestApi, RestError, RestRoute};
use tonic::Code;
use tower::ServiceExt;

/// The matched REST template, set on responses for the request metrics' `route` label.
#[derive(Debug, Clone)]
pub struct RouteLabel(pub String);

/// Largest gRPC message the gateway accepts back from a service.
const MAX_RESPONSE: usize = 16 * 1024 * 1024;

/// What the REST handlers share: the routes and the process's gRPC services.
#[derive(Clone)]
pub struct RestGateway {
    api: Arc<RestApi>,
    grpc: tonic::service::Routes,
}

impl RestGateway {
    /// A gateway calling `grpc`, the routes the gRPC server serves.
    pub fn new(grpc: tonic::service::Routes) -> Self {
        Self {
            api: Arc::new(RestApi::new()),
            grpc,
        }
    }

    /// The `/api/v3` routes.
    pub fn router(self) -> Router {
        Router::new()
            .route("/api/v3", axum::routing::any(handle))
            .route("/api/v3/{*rest}", axum::routing::any(handle))
            .with_state(self)
    }
}

async fn handle(
    State(gateway): State<RestGateway>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (route, vars) = match gateway.api.find(method.as_str(), uri.path()) {
        Ok(found) => found,
        Err(e) => return rest_error(&e),
    };
    let label = RouteLabel(route.template().to_owned());
    let mut response = match route.build_request(&vars, uri.query(), &body) {
        Ok(message) => call(&gateway, route, &headers, message).await,
        Err(e) => rest_error(&e),
    };
    response.extensions_mut().insert(label);
    response
}

/// Calls the route's gRPC method with `message` and renders its answer.
async fn call(
    gateway: &RestGateway,
    route: &RestRoute,
    headers: &HeaderMap,
    message: Vec<u8>,
) -> Response {
    let request = match grpc_request(route, headers, &message) {
        Ok(request) => request,
        Err(status) => return status_error(&status),
    };
    let Ok(response) = gateway.grpc.clone().oneshot(request).await;
    let (parts, body) = response.into_parts();
    // A trailers-only answer (an error before any message) carries the status in headers.
    if let Some(status) = tonic::Status::from_header_map(&parts.headers)
        && status.code() != Code::Ok
    {
        return status_error(&status);
    }
    if route.server_streaming() {
        return stream_response(route.clone(), body);
    }
    let collected = match body.collect().await {
        Ok(collected) => collected,
        Err(e) => return status_error(&tonic::Status::unavailable(e.to_string())),
    };
    if let Some(status) = collected
        .trailers()
        .and_then(tonic::Status::from_header_map)
        && status.code() != Code::Ok
    {
        return status_error(&status);
    }
    let mut data = collected.to_bytes();
    let message = match next_frame(&mut data) {
        Ok(Some(message)) => message,
        Ok(None) => return status_error(&tonic::Status::internal("no response message")),
        Err(status) => return status_error(&status),
    };
    match route.render_response(&message) {
        Ok(json) => (StatusCode::OK, axum::Json(json)).into_response(),
        Err(e) => status_error(&tonic::Status::internal(e.to_string())),
    }
}

/// Frames `message` as a gRPC request to the route's method, with the caller's metadata.
fn grpc_request(
    route: &RestRoute,
    headers: &HeaderMap,
    message: &[u8],
) -> Result<http::Request<Full<Bytes>>, tonic::Status> {
    let mut framed = Vec::with_capacity(message.len() + 5);
    framed.push(0); // not compressed
    let len = u32::try_from(message.len())
        .map_err(|_| tonic::Status::invalid_argument("request too large"))?;
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(message);
    let mut request = http::Request::builder()
        .method(Method::POST)
        .uri(route.grpc_path())
        .header(header::CONTENT_TYPE, "application/grpc")
        .header(header::TE, "trailers")
        .body(Full::new(Bytes::from(framed)))
        .map_err(|e| tonic::Status::internal(e.to_string()))?;
    let metadata = request.headers_mut();
    if let Some(auth) = headers.get(header::AUTHORIZATION) {
        metadata.insert(header::AUTHORIZATION, auth.clone());
    }
    for (name, value) in headers {
        if let Some(key) = name.as_str().strip_prefix("grpc-metadata-")
            && let Ok(key) = HeaderName::from_bytes(key.as_bytes())
        {
            metadata.append(key, value.clone());
        }
    }
    Ok(request)
}

/// Takes one gRPC frame off the front of `data`: `Ok(None)` when `data` holds no full frame.
fn next_frame(data: &mut Bytes) -> Result<Option<Bytes>, tonic::Status> {
    if data.len() < 5 {
        return Ok(None);
    }
    if data[0] != 0 {
        return Err(tonic::Status::internal(
            "compressed response frames are not supported",
        ));
    }
    let len = u32::from_be_bytes([data[1], data[2], data[3], data[4]]) as usize;
    if len > MAX_RESPONSE {
        return Err(tonic::Status::resource_exhausted(format!(
            "response message of {len} bytes exceeds {MAX_RESPONSE}"
        )));
    }
    if data.len() < 5 + len {
        return Ok(None);
    }
    let mut frame = data.split_to(5 + len);
    Ok(Some(frame.split_off(5)))
}

/// Streams each message as a `{"result": …}` line, then an `{"error": …}` line if the call
/// ends with an error.
fn stream_response(route: RestRoute, body: tonic::body::Body) -> Response {
    let lines = async_stream(route, body);
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .body(Body::from_stream(lines))
        .unwrap_or_else(|e| status_error(&tonic::Status::internal(e.to_string())))
}

fn async_stream(
    route: RestRoute,
    body: tonic::body::Body,
) -> impl futures_util::Stream<Item = Result<Bytes, std::convert::Infallible>> + Send {
    struct St {
        frames: BodyStream<tonic::body::Body>,
        buffer: Bytes,
        route: RestRoute,
        done: bool,
    }
    let state = St {
        frames: BodyStream::new(body),
        buffer: Bytes::new(),
        route,
        done: false,
    };
    futures_util::stream::unfold(state, |mut st| async move {
        loop {
            if st.done {
                return None;
            }
            match next_frame(&mut st.buffer) {
                Ok(Some(message)) => {
                    let line = match st.route.render_response(&message) {
                        Ok(json) => serde_json::json!({ "result": json }),
                        Err(e) => {
                            st.done = true;
                            error_json(&tonic::Status::internal(e.to_string()), "error")
                        }
                    };
                    return Some((Ok(json_line(&line)), st));
                }
                Ok(None) => {}
                Err(status) => {
                    st.done = true;
                    return Some((Ok(json_line(&error_json(&status, "error"))), st));
                }
            }
            match st.frames.next().await {
                Some(Ok(frame)) => {
                    if let Some(trailers) = frame.trailers_ref() {
                        st.done = true;
                        if let Some(status) = tonic::Status::from_header_map(trailers)
                            && status.code() != Code::Ok
                        {
                            return Some((Ok(json_line(&error_json(&status, "error"))), st));
                        }
                        return None;
                    }
                    if let Ok(data) = frame.into_data() {
                        let mut joined = Vec::with_capacity(st.buffer.len() + data.len());
                        joined.extend_from_slice(&st.buffer);
                        joined.extend_from_slice(&data);
                        st.buffer = Bytes::from(joined);
                    }
                }
                Some(Err(e)) => {
                    st.done = true;
                    let status = tonic::Status::unavailable(e.to_string());
                    return Some((Ok(json_line(&error_json(&status, "error"))), st));
                }
                None => return None,
            }
        }
    })
}

fn json_line(value: &serde_json::Value) -> Bytes {
    let mut line = serde_json::to_vec(value).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

/// The HTTP status gRPC gateways use for each gRPC code.
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            StatusCode::BAD_REQUEST
        }
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn error_json(status: &tonic::Status, key: &str) -> serde_json::Value {
    let body = serde_json::json!({
        "code": status.code() as i32,
        "message": status.message(),
        "details": [],
    });
    if key.is_empty() {
        body
    } else {
        serde_json::json!({ key: body })
    }
}

fn status_error(status: &tonic::Status) -> Response {
    let mut response = (
        http_status(status.code()),
        axum::Json(error_json(status, "")),
    )
        .into_response();
    if status.code() == Code::Unauthenticated {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"tern\""),
        );
    }
    response
}

fn rest_error(e: &RestError) -> Response {
    let code = match e {
        RestError::NotFound { .. } => Code::NotFound,
        RestError::MethodNotAllowed { .. } => Code::Unimplemented,
        RestError::InvalidArgument(_) => Code::InvalidArgument,
    };
    let mut response = status_error(&tonic::Status::new(code, e.to_string()));
    if let RestError::MethodNotAllowed { allowed, .. } = e {
        *response.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
        if let Ok(value) = HeaderValue::from_str(&allowed.join(", ")) {
            response.headers_mut().insert(header::ALLOW, value);
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_across_reads() {
        let mut data = Bytes::from_static(&[0, 0, 0, 0, 2, 7]);
        assert_eq!(next_frame(&mut data).unwrap(), None);
        let mut data = Bytes::from_static(&[0, 0, 0, 0, 2, 7, 8, 0, 0]);
        assert_eq!(
            next_frame(&mut data).unwrap(),
            Some(Bytes::from_static(&[7, 8]))
        );
        assert_eq!(&data[..], &[0, 0]);
        let mut compressed = Bytes::from_static(&[1, 0, 0, 0, 0]);
        assert!(next_frame(&mut compressed).is_err());
    }

    #[test]
    fn grpc_codes_map_to_http_statuses() {
        assert_eq!(http_status(Code::NotFound), StatusCode::NOT_FOUND);
        assert_eq!(http_status(Code::PermissionDenied), StatusCode::FORBIDDEN);
        assert_eq!(http_status(Code::Unauthenticated), StatusCode::UNAUTHORIZED);
        assert_eq!(http_status(Code::AlreadyExists), StatusCode::CONFLICT);
        assert_eq!(
            http_status(Code::Unavailable),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
}
