//! Cluster authentication: every refusal and its message, then real gRPC round trips over a
//! loopback socket.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;
use pbjson_types::Empty;
use tern_api::v3::as_ns_client::AsNsClient;
use tern_api::v3::as_ns_server::{AsNs, AsNsServer};
use tern_api::v3::gs_ns_client::GsNsClient;
use tern_api::v3::gs_ns_server::{GsNs, GsNsServer};
use tern_api::v3::{
    ApplicationDownlinks, ApplicationIdentifiers, EndDeviceIdentifiers, GatewayConnectionEvent,
    LinkRequest, LinkResponse, TxAcknowledgment, UplinkMessage,
};
use tern_cluster::auth::{
    ApiKeyError, ApiKeyVerifier, AuthError, AuthInfo, Authenticator, CallCredentials, Caller,
    ClusterKeys, Entity, KeyError, RIGHT_APPLICATION_LINK,
};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::metadata::MetadataMap;
use tonic::service::Interceptor;
use tonic::transport::Channel;
use tonic::transport::server::TcpIncoming;
use tonic::{Code, Request, Response, Status};
use tower::Layer;

const KEY_OLD: &str = "old-cluster-key-0123456789";
const KEY_NEW: &str = "new-cluster-key-9876543210";
const KEY_WRONG: &str = "wrong-cluster-key-000000000";

/// The Identity Server stand-in: a fixed table of API keys.
#[derive(Debug, Default)]
struct TableVerifier(HashMap<String, Result<AuthInfo, ApiKeyError>>);

#[async_trait]
impl ApiKeyVerifier for TableVerifier {
    async fn verify(&self, api_key: &str) -> Result<AuthInfo, ApiKeyError> {
        self.0
            .get(api_key)
            .cloned()
            .unwrap_or(Err(ApiKeyError::Unknown))
    }
}

fn verifier() -> Arc<TableVerifier> {
    let mut table = HashMap::new();
    table.insert(
        "key-app-1-link".to_owned(),
        Ok(AuthInfo::new(
            Entity::Application("app-1".into()),
            [RIGHT_APPLICATION_LINK, "application:info"],
        )),
    );
    table.insert(
        "key-app-1-info".to_owned(),
        Ok(AuthInfo::new(
            Entity::Application("app-1".into()),
            ["application:info"],
        )),
    );
    table.insert(
        "key-app-2-link".to_owned(),
        Ok(AuthInfo::new(
            Entity::Application("app-2".into()),
            [RIGHT_APPLICATION_LINK],
        )),
    );
    table.insert("key-expired".to_owned(), Err(ApiKeyError::Expired));
    table.insert(
        "key-is-down".to_owned(),
        Err(ApiKeyError::Unavailable(
            "Identity Server unreachable".into(),
        )),
    );
    Arc::new(TableVerifier(table))
}

/// Accepts the new key and, during the rotation, the old one.
fn authenticator() -> Authenticator {
    Authenticator::new(ClusterKeys::new(&[KEY_NEW, KEY_OLD]).unwrap())
        .with_api_key_verifier(verifier())
}

fn metadata(values: &[&str]) -> MetadataMap {
    let mut md = MetadataMap::new();
    for v in values {
        md.append("authorization", v.parse().unwrap());
    }
    md
}

async fn auth(values: &[&str]) -> Result<Caller, AuthError> {
    authenticator().authenticate(&metadata(values)).await
}

fn assert_refused(result: Result<Caller, AuthError>, code: Code, message: &str) {
    let err = result.expect_err("should be refused");
    let status = Status::from(err);
    assert_eq!(status.code(), code, "{status:?}");
    assert_eq!(status.message(), message);
}

// ---- cluster keys ----

#[test]
fn cluster_keys_are_validated_without_showing_them() {
    let none: [&str; 0] = [];
    assert_eq!(
        ClusterKeys::new(&none).unwrap_err().to_string(),
        "no cluster key configured: at least one is needed to sign calls between roles"
    );
    let err = ClusterKeys::new(&[KEY_NEW, "short-key"]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "cluster key #2 is too short: 9 characters, at least 16 needed"
    );
    let err = ClusterKeys::new(&["s3cret value-0123456789"]).unwrap_err();
    assert_eq!(
        err,
        KeyError::InvalidCharacter {
            what: "cluster key #1".into(),
            position: 7
        }
    );
    assert!(!err.to_string().contains("s3cret"));
    let err = ClusterKeys::new(&["clé-de-cluster-non-ascii"]).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("cluster key #1 has an invalid character at position 3")
    );
}

#[test]
fn cluster_keys_never_print() {
    let keys: ClusterKeys = serde_json::from_str(&format!(r#"["{KEY_NEW}","{KEY_OLD}"]"#)).unwrap();
    assert_eq!(keys.len(), 2);
    assert_eq!(format!("{keys:?}"), "ClusterKeys(2 keys, redacted)");
    assert_eq!(
        serde_json::to_string(&keys).unwrap(),
        r#"["<redacted>","<redacted>"]"#
    );
    assert!(!format!("{:?}", keys.credentials()).contains(KEY_NEW));
    let err = serde_json::from_str::<ClusterKeys>(r#"["tiny"]"#).unwrap_err();
    assert!(
        err.to_string().contains("cluster key #1 is too short"),
        "{err}"
    );
}

#[test]
fn accepts_every_configured_key_only() {
    let keys = ClusterKeys::new(&[KEY_NEW, KEY_OLD]).unwrap();
    assert!(keys.accepts(KEY_NEW));
    assert!(keys.accepts(KEY_OLD));
    assert!(!keys.accepts(KEY_WRONG));
    assert!(!keys.accepts(""));
    assert!(!keys.accepts(&KEY_NEW[..KEY_NEW.len() - 1]));
}

#[test]
fn credentials_sign_with_the_first_key() {
    let mut creds = ClusterKeys::new(&[KEY_NEW, KEY_OLD]).unwrap().credentials();
    let req = creds.call(Request::new(())).unwrap();
    let value = req.metadata().get("authorization").unwrap();
    assert_eq!(value.to_str().unwrap(), format!("ClusterKey {KEY_NEW}"));
    assert!(value.is_sensitive(), "must not be indexed by HPACK");

    let mut creds = CallCredentials::api_key("key-app-1-link").unwrap();
    let req = creds.call(Request::new(())).unwrap();
    assert_eq!(
        req.metadata().get("authorization").unwrap(),
        "Bearer key-app-1-link"
    );
    assert_eq!(
        CallCredentials::api_key("").unwrap_err(),
        KeyError::EmptyApiKey
    );
    assert!(CallCredentials::api_key("two words").is_err());
}

// ---- refusals: UNAUTHENTICATED ----

#[tokio::test]
async fn missing_credentials() {
    assert_refused(
        auth(&[]).await,
        Code::Unauthenticated,
        "no credentials: expected `authorization: ClusterKey …` or `Bearer …`",
    );
}

#[tokio::test]
async fn malformed_credentials() {
    assert_refused(
        auth(&[""]).await,
        Code::Unauthenticated,
        "malformed `authorization` metadata: the value is empty",
    );
    // A bare secret without a scheme is not echoed back.
    assert_refused(
        auth(&[KEY_NEW]).await,
        Code::Unauthenticated,
        "malformed `authorization` metadata: expected `<scheme> <credentials>`, e.g. `ClusterKey …` or `Bearer …`",
    );
    assert_refused(
        auth(&[
            &format!("ClusterKey {KEY_NEW}"),
            &format!("ClusterKey {KEY_OLD}"),
        ])
        .await,
        Code::Unauthenticated,
        "malformed `authorization` metadata: more than one `authorization` value",
    );
    assert_refused(
        auth(&[&format!("ClusterKey {KEY_NEW} extra")]).await,
        Code::Unauthenticated,
        "malformed `authorization` metadata: the credentials contain whitespace",
    );
}

#[tokio::test]
async fn unsupported_scheme() {
    assert_refused(
        auth(&["Basic dXNlcjpwYXNz"]).await,
        Code::Unauthenticated,
        "unsupported authorization scheme `Basic`: expected `ClusterKey …` or `Bearer …`",
    );
}

#[tokio::test]
async fn wrong_cluster_key() {
    let result = auth(&[&format!("ClusterKey {KEY_WRONG}")]).await;
    assert_eq!(result, Err(AuthError::ClusterKeyRejected));
    assert_eq!(result.unwrap_err().reason(), "cluster_key_rejected");
    assert_refused(
        auth(&[&format!("ClusterKey {KEY_WRONG}")]).await,
        Code::Unauthenticated,
        "cluster key not accepted",
    );
}

#[tokio::test]
async fn unknown_and_expired_api_keys() {
    assert_refused(
        auth(&["Bearer key-nobody-issued"]).await,
        Code::Unauthenticated,
        "API key not accepted: unknown API key",
    );
    assert_refused(
        auth(&["Bearer key-expired"]).await,
        Code::Unauthenticated,
        "API key not accepted: the API key has expired",
    );
}

#[tokio::test]
async fn api_keys_refused_without_verifier() {
    let auth = Authenticator::new(ClusterKeys::new(&[KEY_NEW]).unwrap());
    let result = auth
        .authenticate(&metadata(&["Bearer key-app-1-link"]))
        .await;
    assert_refused(
        result,
        Code::Unauthenticated,
        "API keys are not accepted by this server: use `authorization: ClusterKey …`",
    );
}

#[tokio::test]
async fn verifier_down_is_unavailable_not_unauthenticated() {
    assert_refused(
        auth(&["Bearer key-is-down"]).await,
        Code::Unavailable,
        "cannot verify the API key now: Identity Server unreachable",
    );
}

// ---- accepted, then PERMISSION_DENIED ----

#[tokio::test]
async fn cluster_keys_accepted_during_rotation() {
    assert_eq!(
        auth(&[&format!("ClusterKey {KEY_NEW}")]).await,
        Ok(Caller::Cluster)
    );
    assert_eq!(
        auth(&[&format!("ClusterKey {KEY_OLD}")]).await,
        Ok(Caller::Cluster)
    );
    // Schemes are case-insensitive, as in HTTP.
    assert_eq!(
        auth(&[&format!("clusterkey  {KEY_OLD}")]).await,
        Ok(Caller::Cluster)
    );
}

#[tokio::test]
async fn api_key_limited_to_its_application_and_rights() {
    let caller = auth(&["Bearer key-app-1-link"]).await.unwrap();
    assert!(!caller.is_cluster());
    caller
        .require_application("app-1", RIGHT_APPLICATION_LINK)
        .unwrap();

    let err = caller
        .require_application("app-2", RIGHT_APPLICATION_LINK)
        .unwrap_err();
    assert_eq!(err.reason(), "wrong_entity");
    assert_refused(
        Err(err),
        Code::PermissionDenied,
        "API key of application `app-1` may not act on application `app-2`",
    );

    let caller = auth(&["bearer key-app-1-info"]).await.unwrap();
    let err = caller
        .require_application("app-1", RIGHT_APPLICATION_LINK)
        .unwrap_err();
    assert_eq!(err.reason(), "missing_right");
    assert_refused(
        Err(err),
        Code::PermissionDenied,
        "API key of application `app-1` lacks the right `application:link`",
    );

    assert_refused(
        caller
            .require_cluster("tern.v3.GsNs/HandleUplink")
            .map(|()| caller.clone()),
        Code::PermissionDenied,
        "tern.v3.GsNs/HandleUplink is reserved to the roles of the cluster: use `authorization: ClusterKey …`",
    );
}

#[test]
fn cluster_may_act_on_any_application() {
    Caller::Cluster
        .require_application("any-app", RIGHT_APPLICATION_LINK)
        .unwrap();
    Caller::Cluster.require_cluster("anything").unwrap();
}

#[test]
fn reasons_are_distinct() {
    let errors = [
        AuthError::MissingCredentials,
        AuthError::MalformedCredentials("x"),
        AuthError::UnsupportedScheme("x".into()),
        AuthError::ClusterKeyRejected,
        AuthError::ApiKeysNotAccepted,
        AuthError::ApiKeyUnknown,
        AuthError::ApiKeyExpired,
        AuthError::VerifierUnavailable("x".into()),
        AuthError::WrongEntity {
            expected: "a".into(),
            actual: "b".into(),
        },
        AuthError::MissingRight {
            entity: "a".into(),
            right: "r".into(),
        },
        AuthError::ClusterOnly("x".into()),
        AuthError::NotAuthenticated,
    ];
    let reasons: std::collections::HashSet<_> = errors.iter().map(AuthError::reason).collect();
    assert_eq!(reasons.len(), errors.len());
}

#[test]
fn caller_without_layer_is_an_internal_error() {
    let err = Caller::of(&Request::new(())).unwrap_err();
    assert_eq!(err, AuthError::NotAuthenticated);
    assert_eq!(Status::from(err).code(), Code::Internal);
}

// ---- gRPC round trips ----

/// A Network Server stand-in that only checks who calls.
struct Ns;

#[async_trait]
impl GsNs for Ns {
    async fn handle_uplink(
        &self,
        request: Request<UplinkMessage>,
    ) -> Result<Response<Empty>, Status> {
        Caller::of(&request)?.require_cluster("tern.v3.GsNs/HandleUplink")?;
        Ok(Response::new(Empty {}))
    }

    async fn report_tx_ack(&self, _: Request<TxAcknowledgment>) -> Result<Response<Empty>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    async fn report_gateway_connection(
        &self,
        _: Request<GatewayConnectionEvent>,
    ) -> Result<Response<Empty>, Status> {
        Err(Status::unimplemented("not in this test"))
    }
}

type LinkStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<LinkResponse, Status>> + Send + 'static>>;

#[async_trait]
impl AsNs for Ns {
    type LinkApplicationStream = LinkStream;

    async fn link_application(
        &self,
        _: Request<tonic::Streaming<LinkRequest>>,
    ) -> Result<Response<LinkStream>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    async fn downlink_queue_list(
        &self,
        request: Request<EndDeviceIdentifiers>,
    ) -> Result<Response<ApplicationDownlinks>, Status> {
        let app = request
            .get_ref()
            .application_ids
            .as_ref()
            .map(|a| a.application_id.clone())
            .unwrap_or_default();
        Caller::of(&request)?.require_application(&app, RIGHT_APPLICATION_LINK)?;
        Ok(Response::new(ApplicationDownlinks::default()))
    }
}

/// A server on a free loopback port, stopped on drop.
struct TestServer {
    addr: SocketAddr,
    _stop: oneshot::Sender<()>,
}

async fn serve(auth: Authenticator) -> TestServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let (_reporter, health) = tonic_health::server::health_reporter();
    let layer = auth.layer();
    let router = tonic::transport::Server::builder()
        // Public: reachable without credentials, but wrong credentials are still refused.
        .add_service(auth.optional_layer().layer(health))
        .add_service(layer.layer(GsNsServer::new(Ns)))
        .add_service(layer.layer(AsNsServer::new(Ns)));
    tokio::spawn(async move {
        router
            .serve_with_incoming_shutdown(TcpIncoming::from(listener), async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    });
    TestServer { addr, _stop: stop }
}

async fn channel(server: &TestServer) -> Channel {
    Channel::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

fn cluster(key: &str) -> CallCredentials {
    ClusterKeys::new(&[key]).unwrap().credentials()
}

fn end_device(app: &str) -> EndDeviceIdentifiers {
    EndDeviceIdentifiers {
        application_ids: Some(ApplicationIdentifiers {
            application_id: app.into(),
        }),
        device_id: "dev-1".into(),
        ..Default::default()
    }
}

fn assert_status<T: std::fmt::Debug>(result: Result<T, Status>, code: Code, message: &str) {
    let status = result.expect_err("should be refused");
    assert_eq!(status.code(), code, "{status:?}");
    assert_eq!(status.message(), message);
}

#[tokio::test]
async fn grpc_cluster_key_round_trip() {
    let server = serve(authenticator()).await;
    let ch = channel(&server).await;

    let mut bare = GsNsClient::new(ch.clone());
    assert_status(
        bare.handle_uplink(UplinkMessage::default()).await,
        Code::Unauthenticated,
        "no credentials: expected `authorization: ClusterKey …` or `Bearer …`",
    );

    let mut wrong = GsNsClient::with_interceptor(ch.clone(), cluster(KEY_WRONG));
    assert_status(
        wrong.handle_uplink(UplinkMessage::default()).await,
        Code::Unauthenticated,
        "cluster key not accepted",
    );

    let mut new = GsNsClient::with_interceptor(ch.clone(), cluster(KEY_NEW));
    new.handle_uplink(UplinkMessage::default()).await.unwrap();

    // A process not yet given the new key still gets through during the rotation.
    let mut old = GsNsClient::with_interceptor(ch.clone(), cluster(KEY_OLD));
    old.handle_uplink(UplinkMessage::default()).await.unwrap();

    // The tower-layer form of the credentials works the same.
    let layered = tower::ServiceBuilder::new()
        .layer(cluster(KEY_NEW).layer())
        .service(ch.clone());
    GsNsClient::new(layered)
        .handle_uplink(UplinkMessage::default())
        .await
        .unwrap();

    // An application API key may not feed uplinks.
    let mut app =
        GsNsClient::with_interceptor(ch, CallCredentials::api_key("key-app-1-link").unwrap());
    assert_status(
        app.handle_uplink(UplinkMessage::default()).await,
        Code::PermissionDenied,
        "tern.v3.GsNs/HandleUplink is reserved to the roles of the cluster: use `authorization: ClusterKey …`",
    );
}

#[tokio::test]
async fn grpc_api_key_round_trip() {
    let server = serve(authenticator()).await;
    let ch = channel(&server).await;
    let as_client = |key: &str| {
        AsNsClient::with_interceptor(ch.clone(), CallCredentials::api_key(key).unwrap())
    };

    as_client("key-app-1-link")
        .downlink_queue_list(end_device("app-1"))
        .await
        .unwrap();
    assert_status(
        as_client("key-app-1-link")
            .downlink_queue_list(end_device("app-2"))
            .await,
        Code::PermissionDenied,
        "API key of application `app-1` may not act on application `app-2`",
    );
    assert_status(
        as_client("key-app-1-info")
            .downlink_queue_list(end_device("app-1"))
            .await,
        Code::PermissionDenied,
        "API key of application `app-1` lacks the right `application:link`",
    );
    assert_status(
        as_client("key-unknown")
            .downlink_queue_list(end_device("app-1"))
            .await,
        Code::Unauthenticated,
        "API key not accepted: unknown API key",
    );
    // The cluster may act on every application.
    AsNsClient::with_interceptor(ch.clone(), cluster(KEY_OLD))
        .downlink_queue_list(end_device("app-2"))
        .await
        .unwrap();
}

#[tokio::test]
async fn grpc_optional_layer_lets_anonymous_calls_through() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;

    let server = serve(authenticator()).await;
    let ch = channel(&server).await;
    HealthClient::new(ch.clone())
        .check(HealthCheckRequest::default())
        .await
        .unwrap();
    assert_status(
        HealthClient::with_interceptor(ch, cluster(KEY_WRONG))
            .check(HealthCheckRequest::default())
            .await,
        Code::Unauthenticated,
        "cluster key not accepted",
    );
}
