//! The Join Server's gRPC services over a loopback socket, behind the real authentication
//! layer: rights on JsEndDeviceRegistry, cluster-only NsJs, AsJs for external AS keys,
//! metrics, and UNAVAILABLE before start.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use common::*;
use lorawan::Aes128Key;
use tern_api::FieldMask;
use tern_api::v3::{self, MacVersion};
use tern_cluster::auth::{
    ApiKeyError, ApiKeyVerifier, AuthInfo, CallCredentials, ClusterKeys, Entity,
};
use tern_cluster::role::RoleService;
use tern_joinserver::{JoinServer, JsDeps};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::Code;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::transport::server::TcpIncoming;

type Ch = InterceptedService<Channel, CallCredentials>;

/// The Identity Server stand-in: a fixed table of API keys.
#[derive(Debug)]
struct TableVerifier(HashMap<&'static str, AuthInfo>);

#[async_trait]
impl ApiKeyVerifier for TableVerifier {
    async fn verify(&self, api_key: &str) -> Result<AuthInfo, ApiKeyError> {
        self.0.get(api_key).cloned().ok_or(ApiKeyError::Unknown)
    }
}

fn verifier() -> Arc<TableVerifier> {
    let app = |id: &str, rights: &[&'static str]| {
        AuthInfo::new(Entity::Application(id.into()), rights.iter().copied())
    };
    Arc::new(TableVerifier(HashMap::from([
        ("key-read", app("app-1", &["application:devices:read"])),
        (
            "key-read-keys",
            app(
                "app-1",
                &["application:devices:read", "application:devices:read-keys"],
            ),
        ),
        ("key-write", app("app-1", &["application:devices:write"])),
        ("key-link", app("app-1", &["application:link"])),
        ("key-link-app-2", app("app-2", &["application:link"])),
    ])))
}

struct Server {
    addr: SocketAddr,
    _stop: oneshot::Sender<()>,
}

async fn serve(js: &JoinServer) -> Server {
    let mut routes = tonic::service::RoutesBuilder::default();
    js.grpc_services(&mut routes);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let router = tonic::transport::Server::builder().add_routes(routes.routes());
    tokio::spawn(async move {
        router
            .serve_with_incoming_shutdown(TcpIncoming::from(listener), async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    });
    Server { addr, _stop: stop }
}

async fn channel(server: &Server, credentials: CallCredentials) -> Ch {
    let ch = Channel::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    InterceptedService::new(ch, credentials)
}

fn api(key: &str) -> CallCredentials {
    CallCredentials::api_key(key).unwrap()
}

fn cluster() -> CallCredentials {
    ClusterKeys::new(&[CLUSTER_KEY]).unwrap().credentials()
}

fn registry(ch: Ch) -> v3::js_end_device_registry_client::JsEndDeviceRegistryClient<Ch> {
    v3::js_end_device_registry_client::JsEndDeviceRegistryClient::new(ch)
}

fn assert_code<T: std::fmt::Debug>(r: Result<T, tonic::Status>, code: Code, contains: &str) {
    let status = r.expect_err("should be refused");
    assert_eq!(status.code(), code, "{status:?}");
    assert!(
        status.message().contains(contains),
        "{:?} does not contain {contains:?}",
        status.message()
    );
}

#[tokio::test]
async fn registry_rights_links_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let auth = authenticator().with_api_key_verifier(verifier());
    let env = open_with_auth(dir.path(), config("ns:test"), auth).await;
    let server = serve(&env.js).await;

    let (join_eui, dev_eui) = (eui("70B3D57ED0000000"), eui("0004A30B001C0540"));
    let app_key = key("2B7E151628AED2A6ABF7158809CF4F3C");
    let ids = v3::EndDeviceIdentifiers::new("app-1", "dev-1")
        .with_join_eui(join_eui)
        .with_dev_eui(dev_eui);
    // The AppKey arrives wrapped under a KEK the JS knows.
    let device = v3::EndDevice {
        ids: Some(ids.clone()),
        lorawan_version: MacVersion::MacV103 as i32,
        root_keys: Some(v3::RootKeys {
            app_key: Some(v3::KeyEnvelope::wrapped(
                "as:test",
                as_kek().wrap_key(&app_key),
            )),
            nwk_key: None,
        }),
        ..Default::default()
    };
    let set = |device: v3::EndDevice, paths: &[&str]| v3::UpdateEndDeviceRequest {
        end_device: Some(device),
        field_mask: Some(FieldMask::new(paths.iter().copied())),
    };

    // Writing needs application:devices:write.
    let mut reader = registry(channel(&server, api("key-read")).await);
    assert_code(
        reader
            .set(set(device.clone(), &["root_keys", "lorawan_version"]))
            .await,
        Code::PermissionDenied,
        "application:devices:write",
    );
    let mut writer = registry(channel(&server, api("key-write")).await);
    assert_code(
        writer.set(set(device.clone(), &["name"])).await,
        Code::InvalidArgument,
        "\"name\" is not a Join Server field",
    );
    let mut bad = device.clone();
    bad.root_keys.as_mut().unwrap().app_key =
        Some(v3::KeyEnvelope::wrapped("as:nope", vec![0; 24]));
    assert_code(
        writer.set(set(bad, &["root_keys"])).await,
        Code::InvalidArgument,
        "root_keys.app_key.kek_label",
    );
    let written = writer
        .set(set(device.clone(), &["root_keys", "lorawan_version"]))
        .await
        .unwrap()
        .into_inner();
    assert!(written.root_keys.is_none(), "Set does not echo keys");

    // Reading keys needs application:devices:read-keys on top of read.
    let get = |paths: &[&str]| v3::GetEndDeviceRequest {
        end_device_ids: Some(v3::EndDeviceIdentifiers::new("app-1", "dev-1")),
        field_mask: Some(FieldMask::new(paths.iter().copied())),
    };
    let plain = reader.get(get(&[])).await.unwrap().into_inner();
    assert!(plain.root_keys.is_none());
    assert_eq!(plain.lorawan_version, MacVersion::MacV103 as i32);
    assert_code(
        reader.get(get(&["root_keys"])).await,
        Code::PermissionDenied,
        "application:devices:read-keys",
    );
    let mut key_reader = registry(channel(&server, api("key-read-keys")).await);
    let with_keys = key_reader
        .get(get(&["root_keys.app_key"]))
        .await
        .unwrap()
        .into_inner();
    let clear = with_keys
        .root_keys
        .unwrap()
        .app_key
        .unwrap()
        .clear_key()
        .unwrap();
    assert_eq!(clear, Some(app_key));
    // Another application's key sees nothing of app-1.
    let mut other = registry(channel(&server, api("key-link-app-2")).await);
    assert_code(other.get(get(&[])).await, Code::PermissionDenied, "app-1");

    // NsJs is for the cluster only.
    let join = request(
        join_request(&app_key, join_eui, dev_eui, 1),
        [0, 0, 0x13],
        MacVersion::MacV103,
    );
    let mut ns_as_api = v3::ns_js_client::NsJsClient::new(channel(&server, api("key-link")).await);
    assert_code(
        ns_as_api.handle_join(join.clone()).await,
        Code::PermissionDenied,
        "tern.v3.NsJs/HandleJoin",
    );
    let mut ns = v3::ns_js_client::NsJsClient::new(channel(&server, cluster()).await);
    let response = ns.handle_join(join).await.unwrap().into_inner();
    let session = response.session_keys.unwrap();

    // AsJs: the cluster, or a key with application:link on the device's application.
    let key_request = v3::SessionKeyRequest {
        session_key_id: session.session_key_id.clone(),
        dev_eui: dev_eui.0.to_vec(),
        join_eui: join_eui.0.to_vec(),
    };
    let mut external_as =
        v3::as_js_client::AsJsClient::new(channel(&server, api("key-link")).await);
    let fetched = external_as
        .get_app_s_key(key_request.clone())
        .await
        .unwrap()
        .into_inner();
    let app_s_key: Aes128Key = as_key(&fetched.app_s_key);
    assert_eq!(app_s_key, as_key(&session.app_s_key));
    let mut wrong_as =
        v3::as_js_client::AsJsClient::new(channel(&server, api("key-link-app-2")).await);
    assert_code(
        wrong_as.get_app_s_key(key_request.clone()).await,
        Code::PermissionDenied,
        "application:link",
    );
    let mut no_link = v3::as_js_client::AsJsClient::new(channel(&server, api("key-read")).await);
    assert_code(
        no_link.get_app_s_key(key_request.clone()).await,
        Code::PermissionDenied,
        "application:link",
    );
    let mut cluster_as = v3::as_js_client::AsJsClient::new(channel(&server, cluster()).await);
    cluster_as.get_app_s_key(key_request.clone()).await.unwrap();

    // Delete needs write; afterwards the device, its nonces and sessions are gone.
    assert_code(
        reader.delete(ids.clone()).await,
        Code::PermissionDenied,
        "application:devices:write",
    );
    writer.delete(ids.clone()).await.unwrap();
    assert_code(reader.get(get(&[])).await, Code::NotFound, "app-1/dev-1");
    assert_code(
        cluster_as.get_app_s_key(key_request).await,
        Code::NotFound,
        "session key ID",
    );

    // Metrics, registered at start under tern_js_.
    let text = env.metrics.with_registry(|r| {
        let mut s = String::new();
        prometheus_client::encoding::text::encode(&mut s, r).unwrap();
        s
    });
    assert!(
        text.contains("tern_js_joins_total{result=\"accepted\"} 1"),
        "{text}"
    );
    assert!(
        text.contains(
            "tern_js_registry_requests_total{method=\"get\",result=\"permission_denied\"} 2"
        ),
        "{text}"
    );
}

#[tokio::test]
async fn services_are_unavailable_before_start() {
    let dir = tempfile::tempdir().unwrap();
    let store = tern_store::Store::open(&tern_store::StoreConfig::default(), dir.path())
        .await
        .unwrap();
    let js = JoinServer::new(JsDeps {
        config: config(""),
        store,
        events: tern_events::EventBus::in_process(16),
        auth: authenticator(),
    })
    .unwrap();
    let server = serve(&js).await;
    let mut ns = v3::ns_js_client::NsJsClient::new(channel(&server, cluster()).await);
    assert_code(
        ns.handle_join(v3::JoinRequest::default()).await,
        Code::Unavailable,
        "not serving",
    );
}
