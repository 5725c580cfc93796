//! The GS's gRPC services on a real server: the public `Gs` service with API key rights, and
//! the cluster-only `NsGs` service.

mod common;

use std::time::Duration;

use common::*;
use tern_api::v3;
use tern_api::v3::gs_client::GsClient;
use tern_api::v3::ns_gs_client::NsGsClient;
use tern_cluster::role::RoleService;
use tokio::net::{TcpListener, UdpSocket};
use tonic::Code;

const CLUSTER_KEY: &str = "a-cluster-key-of-at-least-32-chars!!";

fn with_auth<T>(msg: T, value: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("authorization", value.parse().unwrap());
    r
}

fn ids(id: &str) -> v3::GatewayIdentifiers {
    v3::GatewayIdentifiers {
        gateway_id: id.into(),
        eui: Vec::new(),
    }
}

#[tokio::test]
async fn gs_and_ns_gs_services() {
    let h = start(config()).await;
    let mut routes = tonic::service::RoutesBuilder::default();
    h.gs.grpc_services(&mut routes);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_routes(routes.routes())
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap();
    let mut gs = GsClient::new(channel.clone());

    // Connect gw-udp with a PULL_DATA.
    let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    udp.send_to(&[&[2u8, 0, 1, 2][..], &UDP_EUI].concat(), h.udp)
        .await
        .unwrap();
    recv(&h.ns.connections).await;

    let stats = gs
        .get_gateway_connection_stats(with_auth(ids("gw-udp"), "Bearer KEY-UDP"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stats.protocol, "semtech-udp");
    assert_eq!(stats.remote_address, udp.local_addr().unwrap().to_string());
    assert!(stats.connected_at.is_some());
    // The cluster may read every gateway.
    gs.get_gateway_connection_stats(with_auth(
        ids("gw-udp"),
        &format!("ClusterKey {CLUSTER_KEY}"),
    ))
    .await
    .unwrap();
    // gateway:info is enough; gw-bs is not connected.
    let err = gs
        .get_gateway_connection_stats(with_auth(ids("gw-bs"), "Bearer KEY-BS-INFO"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err}");
    // gateway:link is not; another gateway's key is not; no key is not.
    for key in ["Bearer KEY-BS", "Bearer KEY-UDP"] {
        let err = gs
            .get_gateway_connection_stats(with_auth(ids("gw-bs"), key))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{key}: {err}");
    }
    let err = gs
        .get_gateway_connection_stats(tonic::Request::new(ids("gw-udp")))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);

    // NsGs: cluster only.
    let mut ns_gs = NsGsClient::new(channel);
    let dl = class_c("gw-udp", &[0x60, 1], "dl");
    let err = ns_gs
        .schedule_downlink(with_auth(dl.clone(), "Bearer KEY-UDP"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let res = ns_gs
        .schedule_downlink(with_auth(dl, &format!("ClusterKey {CLUSTER_KEY}")))
        .await
        .unwrap()
        .into_inner();
    assert!(
        matches!(
            res.result,
            Some(v3::schedule_downlink_response::Result::Scheduled(_))
        ),
        "{res:?}"
    );
    let mut buf = [0u8; 2048];
    let (n, _) = tokio::time::timeout(Duration::from_secs(5), udp.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    // PULL_ACK first, then PULL_RESP.
    assert_eq!(&buf[..n], &[2, 0, 1, 4]);
    let (n, _) = udp.recv_from(&mut buf).await.unwrap();
    assert_eq!(buf[3], 3, "{:?}", &buf[..n]);
}
