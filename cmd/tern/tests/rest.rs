//! The REST gateway against real tonic services: a unary method (`Gs`) and a
//! server-streaming one (`Events.Stream`), mounted the way roles mount theirs.

use std::pin::Pin;

use axum::body::Body;
use http_body_util::BodyExt;
use tern::rest::RestGateway;
use tern_api::v3;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};
use tower::ServiceExt;

/// Answers stats for gateway `gw-1` when the caller sends `authorization: Bearer good`.
struct StatsService;

#[tonic::async_trait]
impl v3::gs_server::Gs for StatsService {
    async fn get_gateway_connection_stats(
        &self,
        request: Request<v3::GatewayIdentifiers>,
    ) -> Result<Response<v3::GatewayConnectionStats>, Status> {
        let auth = request.metadata().get("authorization").cloned();
        if auth.as_ref().and_then(|v| v.to_str().ok()) != Some("Bearer good") {
            return Err(Status::unauthenticated("no valid API key"));
        }
        let ids = request.into_inner();
        if ids.gateway_id != "gw-1" {
            return Err(Status::not_found(format!(
                "gateway {:?} is not connected",
                ids.gateway_id
            )));
        }
        Ok(Response::new(v3::GatewayConnectionStats {
            gateway_ids: Some(v3::GatewayIdentifiers {
                gateway_id: ids.gateway_id,
                eui: vec![0xB8, 0x27, 0xEB, 0xFF, 0xFE, 0x00, 0x00, 0x01],
            }),
            protocol: "udp".to_owned(),
            uplink_count: 42,
            ..Default::default()
        }))
    }
}

/// Streams three events named after the request's first name pattern, then fails.
struct EventsService;

#[tonic::async_trait]
impl v3::events_server::Events for EventsService {
    type StreamStream = Pin<Box<dyn Stream<Item = Result<v3::Event, Status>> + Send>>;

    async fn stream(
        &self,
        request: Request<v3::StreamEventsRequest>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let name = request
            .into_inner()
            .names
            .first()
            .cloned()
            .unwrap_or_default();
        let mut items: Vec<Result<v3::Event, Status>> = (0..3)
            .map(|i| {
                Ok(v3::Event {
                    name: name.clone(),
                    unique_id: format!("id-{i}"),
                    ..Default::default()
                })
            })
            .collect();
        items.push(Err(Status::resource_exhausted("subscriber too slow")));
        Ok(Response::new(Box::pin(tokio_stream::iter(items))))
    }
}

fn gateway() -> axum::Router {
    let mut builder = tonic::service::RoutesBuilder::default();
    builder.add_service(v3::gs_server::GsServer::new(StatsService));
    builder.add_service(v3::events_server::EventsServer::new(EventsService));
    RestGateway::new(builder.routes()).router()
}

async fn send(
    method: &str,
    uri: &str,
    auth: Option<&str>,
    body: &str,
) -> (u16, axum::http::HeaderMap, String) {
    let mut request = axum::http::Request::builder().method(method).uri(uri);
    if let Some(auth) = auth {
        request = request.header("authorization", auth);
    }
    let response = gateway()
        .oneshot(request.body(Body::from(body.to_owned())).unwrap())
        .await
        .unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, headers, String::from_utf8(bytes.to_vec()).unwrap())
}

#[tokio::test]
async fn unary_call_renders_proto_json_with_hex_euis() {
    let (status, _, body) = send(
        "GET",
        "/api/v3/gs/gateways/gw-1/connection/stats",
        Some("Bearer good"),
        "",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "gateway_ids": {"gateway_id": "gw-1", "eui": "B827EBFFFE000001"},
            "protocol": "udp",
            "uplink_count": "42",
        })
    );
}

#[tokio::test]
async fn grpc_errors_become_http_errors_with_the_grpc_code() {
    let (status, headers, body) =
        send("GET", "/api/v3/gs/gateways/gw-1/connection/stats", None, "").await;
    assert_eq!(status, 401, "{body}");
    assert!(headers.contains_key("www-authenticate"));
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["code"], 16);
    assert_eq!(json["message"], "no valid API key");

    let (status, _, body) = send(
        "GET",
        "/api/v3/gs/gateways/gw-2/connection/stats",
        Some("Bearer good"),
        "",
    )
    .await;
    assert_eq!(status, 404, "{body}");
    assert!(
        body.contains("gateway \\\"gw-2\\\" is not connected"),
        "{body}"
    );
}

#[tokio::test]
async fn routing_errors_are_precise() {
    let (status, _, body) = send("GET", "/api/v3/no/such/thing", None, "").await;
    assert_eq!(status, 404, "{body}");
    assert!(
        body.contains("no API route for GET /api/v3/no/such/thing"),
        "{body}"
    );

    let (status, headers, _) = send(
        "DELETE",
        "/api/v3/gs/gateways/gw-1/connection/stats",
        None,
        "",
    )
    .await;
    assert_eq!(status, 405);
    assert_eq!(headers["allow"], "GET");

    let (status, _, body) = send("POST", "/api/v3/events", None, "{not json").await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("body is not JSON"), "{body}");
}

#[tokio::test]
async fn server_streams_are_json_lines_ending_with_the_error() {
    let (status, headers, body) = send(
        "POST",
        "/api/v3/events",
        None,
        r#"{"identifiers":[{"application_ids":{"application_id":"app-1"}}],"names":["ns.up.*"]}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["content-type"], "application/x-ndjson");
    let lines: Vec<serde_json::Value> = body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4, "{body}");
    for (i, line) in lines[..3].iter().enumerate() {
        assert_eq!(line["result"]["name"], "ns.up.*");
        assert_eq!(line["result"]["unique_id"], format!("id-{i}"));
    }
    assert_eq!(lines[3]["error"]["code"], 8);
    assert_eq!(lines[3]["error"]["message"], "subscriber too slow");
}
