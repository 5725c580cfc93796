//! The webhook downlink routes over real HTTP and the management gRPC services over a real
//! gRPC server, with API keys.

mod common;

use std::sync::Arc;

use common::*;
use tern_api::v3;
use tern_api::v3::application_pub_sub_registry_client::ApplicationPubSubRegistryClient;
use tern_api::v3::application_webhook_registry_client::ApplicationWebhookRegistryClient;
use tern_cluster::auth::{Authenticator, ClusterKeys};
use tern_cluster::role::Shutdown;
use tonic::transport::server::TcpIncoming;

/// A request carrying `Authorization: Bearer <key>`.
fn with_key<T>(key: &str, msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    r
}

/// Serves the downlink routes on a loopback port.
async fn serve_http(router: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    format!("http://{addr}")
}

#[tokio::test]
async fn webhook_downlink_routes_check_the_api_key() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path()).await;
    let sink = Arc::new(RecordingSink::default());
    let integ = integrations(store, fast_config(), sink.clone());
    let shutdown = Shutdown::new();
    integ.start(shutdown.clone()).await.unwrap();
    integ
        .set_webhook(webhook("hook", "http://127.0.0.1:9/"))
        .await
        .unwrap();
    let base = serve_http(integ.router()).await;
    let client = reqwest::Client::new();
    let body = r#"{"downlinks":[{"f_port":15,"frm_payload":"AQI=","confirmed":true}]}"#;
    let post = |path: &str, key: Option<&str>, body: &'static str| {
        let mut r = client
            .post(format!("{base}/api/v3/as/applications/{path}"))
            .body(body);
        if let Some(key) = key {
            r = r.header("Authorization", format!("Bearer {key}"));
        }
        r.send()
    };
    let body: &'static str = Box::leak(body.to_owned().into_boxed_str());

    let ok = post(
        "app-1/webhooks/hook/devices/dev-1/down/push",
        Some("down-key"),
        body,
    )
    .await
    .unwrap();
    assert_eq!(ok.status(), 200);
    let ok = post(
        "app-1/webhooks/hook/devices/dev-1/down/replace",
        Some("down-key"),
        body,
    )
    .await
    .unwrap();
    assert_eq!(ok.status(), 200);
    let pushed = sink.all();
    assert_eq!(pushed.len(), 2);
    assert_eq!(
        pushed[0],
        Pushed {
            app: "app-1".into(),
            dev: "dev-1".into(),
            replace: false,
            body: serde_json::from_str(body).unwrap(),
        }
    );
    assert!(pushed[1].replace);

    // Refusals change nothing.
    let cases = [
        (
            "app-1/webhooks/hook/devices/dev-1/down/push",
            None,
            body,
            401,
        ),
        (
            "app-1/webhooks/hook/devices/dev-1/down/push",
            Some("wrong-key"),
            body,
            401,
        ),
        (
            "app-1/webhooks/hook/devices/dev-1/down/push",
            Some("read-key"),
            body,
            403,
        ),
        (
            "app-1/webhooks/hook/devices/dev-1/down/push",
            Some("other-key"),
            body,
            403,
        ),
        (
            "app-1/webhooks/nohook/devices/dev-1/down/push",
            Some("down-key"),
            body,
            404,
        ),
        (
            "app-1/webhooks/hook/devices/dev-1/down/push",
            Some("down-key"),
            "not json",
            400,
        ),
        (
            "app-1/webhooks/hook/devices/dev-1/down/push",
            Some("down-key"),
            r#"{"x":1}"#,
            400,
        ),
        (
            "app-1/webhooks/hook/devices/Bad_Dev/down/push",
            Some("down-key"),
            body,
            400,
        ),
    ];
    for (path, key, body, status) in cases {
        let response = post(path, key, body).await.unwrap();
        assert_eq!(response.status(), status, "{path} with {key:?}");
        let error: serde_json::Value =
            serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
        assert!(!error["message"].as_str().unwrap().is_empty());
    }
    assert_eq!(sink.all().len(), 2);
    shutdown.trigger();
}

#[tokio::test]
async fn registries_over_grpc_need_the_right() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path()).await;
    let integ = integrations(store, fast_config(), Arc::new(RecordingSink::default()));
    let shutdown = Shutdown::new();
    integ.start(shutdown.clone()).await.unwrap();

    let auth =
        Authenticator::new(ClusterKeys::new(&["a-cluster-key-of-sufficient-length"]).unwrap())
            .with_api_key_verifier(keys());
    let mut routes = tonic::service::RoutesBuilder::default();
    integ.grpc_services(&mut routes, &auth);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = tonic::transport::Server::builder().add_routes(routes.routes());
    tokio::spawn(router.serve_with_incoming(TcpIncoming::from(listener)));
    let url = format!("http://{addr}");

    let mut hooks = ApplicationWebhookRegistryClient::connect(url.clone())
        .await
        .unwrap();
    let set = v3::SetApplicationWebhookRequest {
        webhook: Some(webhook("hook", "https://receiver.example.com/tern")),
    };
    let err = hooks
        .set(with_key("down-key", set.clone()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert!(
        err.message().contains("application:settings:packages"),
        "{}",
        err.message()
    );
    let err = hooks.set(with_key("wrong", set.clone())).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);

    let created = hooks
        .set(with_key("settings-key", set))
        .await
        .unwrap()
        .into_inner();
    assert!(created.created_at.is_some());
    assert_eq!(created.format, "json");
    let ids = created.ids.clone().unwrap();
    let got = hooks
        .get(with_key("settings-key", ids.clone()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.base_url, "https://receiver.example.com/tern");
    assert!(got.health.unwrap().healthy);
    let app = v3::ApplicationIdentifiers {
        application_id: "app-1".into(),
    };
    let list = hooks
        .list(with_key("settings-key", app.clone()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.webhooks.len(), 1);
    hooks
        .delete(with_key("settings-key", ids.clone()))
        .await
        .unwrap();
    let err = hooks.get(with_key("settings-key", ids)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);

    let mut pubsubs = ApplicationPubSubRegistryClient::connect(url).await.unwrap();
    let pubsub = v3::ApplicationPubSub {
        ids: Some(v3::ApplicationPubSubIdentifiers {
            application_ids: Some(app.clone()),
            pub_sub_id: "ps".into(),
        }),
        provider: Some(v3::application_pub_sub::Provider::Mqtt(
            v3::ApplicationPubSubMqtt {
                server_url: "mqtts://broker.example.com".into(),
                ..Default::default()
            },
        )),
        ..Default::default()
    };
    // mqtts without a CA is refused, naming the field.
    let err = pubsubs
        .set(with_key(
            "settings-key",
            v3::SetApplicationPubSubRequest {
                pubsub: Some(pubsub.clone()),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("mqtt.tls_ca"), "{}", err.message());
    let mut nats = pubsub;
    nats.provider = Some(v3::application_pub_sub::Provider::Nats(
        v3::ApplicationPubSubNats {
            server_url: format!("nats://127.0.0.1:{}", free_port()),
        },
    ));
    pubsubs
        .set(with_key(
            "settings-key",
            v3::SetApplicationPubSubRequest { pubsub: Some(nats) },
        ))
        .await
        .unwrap();
    let list = pubsubs
        .list(with_key("settings-key", app.clone()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.pubsubs.len(), 1);
    let err = pubsubs.list(with_key("other-key", app)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    shutdown.trigger();
}

#[test]
fn rest_bindings_map_to_the_registries() {
    use prost::Message;
    let api = tern_api::rest::RestApi::new();
    let (route, vars) = api.find("PUT", "/api/v3/as/webhooks/app-1/hook").unwrap();
    assert_eq!(route.grpc_path(), "/tern.v3.ApplicationWebhookRegistry/Set");
    let body = br#"{"webhook":{"base_url":"https://x.example.com","uplink_message":{"path":"/up"},"headers":{"A":"b"}}}"#;
    let encoded = route.build_request(&vars, None, body).unwrap();
    let req = v3::SetApplicationWebhookRequest::decode(encoded.as_slice()).unwrap();
    let w = req.webhook.unwrap();
    let ids = w.ids.unwrap();
    assert_eq!(ids.application_ids.unwrap().application_id, "app-1");
    assert_eq!(ids.webhook_id, "hook");
    assert_eq!(w.uplink_message.unwrap().path, "/up");
    assert_eq!(w.headers["A"], "b");

    for (verb, path, grpc) in [
        (
            "GET",
            "/api/v3/as/webhooks/app-1",
            "/tern.v3.ApplicationWebhookRegistry/List",
        ),
        (
            "GET",
            "/api/v3/as/webhooks/app-1/hook",
            "/tern.v3.ApplicationWebhookRegistry/Get",
        ),
        (
            "DELETE",
            "/api/v3/as/webhooks/app-1/hook",
            "/tern.v3.ApplicationWebhookRegistry/Delete",
        ),
        (
            "GET",
            "/api/v3/as/pubsub/app-1",
            "/tern.v3.ApplicationPubSubRegistry/List",
        ),
        (
            "PUT",
            "/api/v3/as/pubsub/app-1/ps",
            "/tern.v3.ApplicationPubSubRegistry/Set",
        ),
    ] {
        assert_eq!(
            api.find(verb, path).unwrap().0.grpc_path(),
            grpc,
            "{verb} {path}"
        );
    }
    // The webhook downlink routes are served by `Integrations::router`, not the gRPC mapping.
    assert!(
        api.find(
            "POST",
            "/api/v3/as/applications/app-1/webhooks/hook/devices/dev-1/down/push"
        )
        .is_err()
    );
}
