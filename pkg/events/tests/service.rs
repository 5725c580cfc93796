//! `Events.Stream` over a real gRPC server behind the authentication layer: rights per
//! entity, filters, and live delivery from the bus.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tern_api::v3;
use tern_cluster::auth::{
    ApiKeyError, ApiKeyVerifier, AuthInfo, Authenticator, CallCredentials, ClusterKeys, Entity,
};
use tern_events::service::EventsService;
use tern_events::{Event, EventBus, definitions};
use tokio::net::TcpListener;
use tonic::Code;
use tonic::transport::server::TcpIncoming;
use tower::Layer;

#[derive(Debug)]
struct Keys(HashMap<&'static str, AuthInfo>);

#[async_trait]
impl ApiKeyVerifier for Keys {
    async fn verify(&self, api_key: &str) -> Result<AuthInfo, ApiKeyError> {
        self.0.get(api_key).cloned().ok_or(ApiKeyError::Unknown)
    }
}

async fn serve(bus: EventBus) -> String {
    let keys = Keys(HashMap::from([
        (
            "app1-traffic",
            AuthInfo::new(
                Entity::Application("app1".into()),
                ["application:traffic:read"],
            ),
        ),
        (
            "app1-info",
            AuthInfo::new(Entity::Application("app1".into()), ["application:info"]),
        ),
    ]));
    let auth = Authenticator::new(ClusterKeys::new(&["events-test-cluster-key-01"]).unwrap())
        .with_api_key_verifier(Arc::new(keys));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(auth.layer().layer(EventsService::new(bus).into_server()))
            .serve_with_incoming(TcpIncoming::from(listener)),
    );
    format!("http://{addr}")
}

fn client(
    url: &str,
    key: &str,
) -> v3::events_client::EventsClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, CallCredentials>,
> {
    let channel = tonic::transport::Endpoint::from_shared(url.to_owned())
        .unwrap()
        .connect_lazy();
    v3::events_client::EventsClient::with_interceptor(
        channel,
        CallCredentials::api_key(key).unwrap(),
    )
}

fn app(id: &str) -> v3::EntityIdentifiers {
    v3::EntityIdentifiers {
        ids: Some(v3::entity_identifiers::Ids::ApplicationIds(
            v3::ApplicationIdentifiers {
                application_id: id.into(),
            },
        )),
    }
}

#[tokio::test]
async fn streams_live_events_of_entities_the_caller_may_read() {
    let bus = EventBus::in_process(64);
    let url = serve(bus.clone()).await;

    let request = |ids: Vec<v3::EntityIdentifiers>, names: Vec<String>| v3::StreamEventsRequest {
        identifiers: ids,
        names,
        ..Default::default()
    };

    // Refusals: another application, a key without the traffic right, an empty filter.
    let err = client(&url, "app1-traffic")
        .stream(request(vec![app("app2")], vec![]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = client(&url, "app1-info")
        .stream(request(vec![app("app1")], vec![]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("application:traffic:read"), "{err}");
    let err = client(&url, "app1-traffic")
        .stream(request(vec![], vec![]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = client(&url, "unknown")
        .stream(request(vec![app("app1")], vec![]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);

    // A subscriber of app1's `as.up.*` events gets app1's uplink, not app2's nor a drop.
    let mut stream = client(&url, "app1-traffic")
        .stream(request(vec![app("app1")], vec!["as.up.*".into()]))
        .await
        .unwrap()
        .into_inner();
    // The handler subscribes before it answers, so what is published now is delivered.
    let device = |app: &str| v3::EndDeviceIdentifiers::new(app, "dev1");
    bus.publish(Event::new(&definitions::AS_UP_DATA_FORWARD).with_identifiers([device("app2")]));
    bus.publish(Event::new(&definitions::NS_UP_DATA_DROP).with_identifiers([device("app1")]));
    bus.publish(Event::new(&definitions::AS_UP_DATA_FORWARD).with_identifiers([device("app1")]));
    let event = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(event.name, "as.up.data.forward");
    let ids = &event.identifiers[0];
    let Some(v3::entity_identifiers::Ids::DeviceIds(d)) = &ids.ids else {
        panic!("device identifiers: {ids:?}")
    };
    assert_eq!(d.application_ids.as_ref().unwrap().application_id, "app1");
}
