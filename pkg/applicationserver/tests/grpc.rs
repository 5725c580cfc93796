//! The public gRPC API over a real tonic server behind the authentication layer: rights per
//! call, ABP sessions (AppSKey kept wrapped), formatter management and the downlink queue.

mod common;

use common::*;
use tern_api::{FieldMask, v3};
use tern_cluster::auth::CallCredentials;
use tern_cluster::role::RoleService;
use tokio::net::TcpListener;
use tonic::transport::Channel;
use tonic::transport::server::TcpIncoming;

fn keys() -> Keys {
    let mut k = Keys::default();
    let all = [
        "application:settings",
        "application:info",
        "application:devices:read",
        "application:devices:read-keys",
        "application:devices:write",
        "application:traffic:read",
        "application:traffic:down:write",
    ];
    k.0.insert(
        "admin-1".into(),
        ("app-1".into(), all.iter().map(|s| s.to_string()).collect()),
    );
    k.0.insert(
        "read-1".into(),
        (
            "app-1".into(),
            vec!["application:traffic:read".into(), "application:info".into()],
        ),
    );
    k
}

async fn serve(h: &Harness) -> Channel {
    let mut routes = tonic::service::RoutesBuilder::default();
    h.asrv.grpc_services(&mut routes);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = tonic::transport::Server::builder().add_routes(routes.routes());
    let shutdown = h.ctx.shutdown.clone();
    tokio::spawn(async move {
        let _ = router
            .serve_with_incoming_shutdown(TcpIncoming::from(listener), shutdown.wait())
            .await;
    });
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

fn creds(key: &str) -> CallCredentials {
    CallCredentials::api_key(key).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abp_session_formatters_and_downlink_queue() {
    let h = start(keys()).await;
    let channel = serve(&h).await;
    let mut formatters = v3::as_formatters_client::AsFormattersClient::with_interceptor(
        channel.clone(),
        creds("admin-1"),
    );
    let mut formatters_ro = v3::as_formatters_client::AsFormattersClient::with_interceptor(
        channel.clone(),
        creds("read-1"),
    );
    let mut registry =
        v3::as_end_device_registry_client::AsEndDeviceRegistryClient::with_interceptor(
            channel.clone(),
            creds("admin-1"),
        );
    let mut queue =
        v3::app_as_client::AppAsClient::with_interceptor(channel.clone(), creds("admin-1"));
    let mut queue_ro =
        v3::app_as_client::AppAsClient::with_interceptor(channel.clone(), creds("read-1"));
    let app = v3::ApplicationIdentifiers {
        application_id: "app-1".into(),
    };

    // Formatters: a script that does not compile is refused, naming the field.
    let broken = v3::ApplicationFormatters {
        application_ids: Some(app.clone()),
        formatters: Some(v3::MessagePayloadFormatters {
            up_formatter: v3::PayloadFormatter::FormatterJavascript as i32,
            up_formatter_parameter: "function decodeUplink(input) { return {".into(),
            ..Default::default()
        }),
    };
    let err = formatters
        .set_application_formatters(broken)
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("formatters.up_formatter"),
        "{}",
        err.message()
    );
    let cayenne = v3::ApplicationFormatters {
        application_ids: Some(app.clone()),
        formatters: Some(v3::MessagePayloadFormatters {
            up_formatter: v3::PayloadFormatter::FormatterCayennelpp as i32,
            down_formatter: v3::PayloadFormatter::FormatterCayennelpp as i32,
            ..Default::default()
        }),
    };
    let err = formatters_ro
        .set_application_formatters(cayenne.clone())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    formatters
        .set_application_formatters(cayenne)
        .await
        .unwrap();
    let got = formatters_ro
        .get_application_formatters(app.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        got.formatters.unwrap().up_formatter,
        v3::PayloadFormatter::FormatterCayennelpp as i32
    );

    // The test-formatter call: CayenneLPP temperature on channel 3, 27.2 °C.
    let decoded = formatters
        .test_decode_uplink(v3::TestDecodeUplinkRequest {
            end_device_ids: Some(ids("app-1", "dev-1")),
            f_port: 1,
            frm_payload: vec![0x03, 0x67, 0x01, 0x10],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(decoded.error.is_empty(), "{}", decoded.error);
    let json = serde_json::to_string(&decoded.decoded_payload).unwrap();
    assert!(json.contains("27.2"), "{json}");

    // An ABP session with the AppSKey in clear: stored wrapped under the AS's KEK.
    registry
        .set(v3::UpdateEndDeviceRequest {
            end_device: Some(v3::EndDevice {
                ids: Some(ids("app-1", "dev-1")),
                session: Some(v3::Session {
                    dev_addr: DEV_ADDR.to_vec(),
                    keys: Some(v3::SessionKeys {
                        app_s_key: Some(v3::KeyEnvelope {
                            key: app_s_key().0.to_vec(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            field_mask: Some(FieldMask::new(["session"])),
        })
        .await
        .unwrap();
    let device = registry
        .get(v3::GetEndDeviceRequest {
            end_device_ids: Some(ids("app-1", "dev-1")),
            field_mask: Some(FieldMask::new(["session.keys.app_s_key"])),
        })
        .await
        .unwrap()
        .into_inner();
    let envelope = device.session.unwrap().keys.unwrap().app_s_key.unwrap();
    assert_eq!(envelope.kek_label, "as:test");
    assert!(envelope.key.is_empty());
    let err = registry
        .set(v3::UpdateEndDeviceRequest {
            end_device: Some(v3::EndDevice {
                ids: Some(ids("app-1", "dev-1")),
                ..Default::default()
            }),
            field_mask: Some(FieldMask::new(["root_keys"])),
        })
        .await
        .unwrap_err();
    assert!(err.message().contains("root_keys"), "{}", err.message());

    // Downlinks: a decoded payload encoded by CayenneLPP, encrypted for the ABP session.
    *h.ns.expect.lock().unwrap() = (Vec::new(), 0);
    let request = v3::DownlinkQueueRequest {
        end_device_ids: Some(ids("app-1", "dev-1")),
        downlinks: vec![v3::ApplicationDownlink {
            f_port: 2,
            decoded_payload: Some(
                serde_json::from_value(serde_json::json!({"digital_out_4": 1})).unwrap(),
            ),
            ..Default::default()
        }],
    };
    let err = queue_ro
        .downlink_queue_push(request.clone())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert!(
        err.message().contains("application:traffic:down:write"),
        "{}",
        err.message()
    );
    queue.downlink_queue_push(request).await.unwrap();
    let listed = queue_ro
        .downlink_queue_list(ids("app-1", "dev-1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.downlinks.len(), 1);
    assert_eq!(listed.downlinks[0].frm_payload, [0x04, 0x01, 0x01]);
    let sent = h.ns.seen.lock().unwrap().accepted[0].downlinks[0].clone();
    assert_ne!(
        sent.frm_payload,
        [0x04, 0x01, 0x01],
        "the NS only sees it encrypted"
    );
}
