//! Uplinks reach the Network Server that owns their shard: one NS in this process (called
//! in-process) and one served over real gRPC with the cluster key.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tern_api::v3;
use tern_cluster::auth::{Authenticator, ClusterKeys};
use tern_cluster::directory::{Peer, PeerRole, StaticDirectory};
use tern_cluster::links::grpc::{DirectoryGsNs, GsNsService, UplinkShard, uplink_shard};
use tern_cluster::links::{GsNs, LinkResult};
use tern_cluster::shard;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tower::Layer;

const KEY: &str = "routing-test-cluster-key-0123";

/// The NS edge: records what reaches it.
#[derive(Default)]
struct Recorder {
    uplinks: Mutex<Vec<Vec<u8>>>,
    acks: Mutex<Vec<String>>,
    connections: Mutex<usize>,
}

#[async_trait]
impl GsNs for Recorder {
    async fn handle_uplink(&self, uplink: v3::UplinkMessage) -> LinkResult<()> {
        self.uplinks.lock().unwrap().push(uplink.raw_payload);
        Ok(())
    }

    async fn report_tx_ack(&self, ack: v3::TxAcknowledgment) -> LinkResult<()> {
        self.acks.lock().unwrap().push(ack.downlink_id);
        Ok(())
    }

    async fn report_gateway_connection(&self, _: v3::GatewayConnectionEvent) -> LinkResult<()> {
        *self.connections.lock().unwrap() += 1;
        Ok(())
    }
}

fn data_uplink(dev_addr: [u8; 4]) -> Vec<u8> {
    let mut frame = vec![0x40];
    frame.extend(dev_addr.iter().rev());
    frame.extend_from_slice(&[0, 1, 0, 1, 0xAA, 0, 0, 0, 0]);
    frame
}

#[test]
fn shard_keys_of_every_uplink_kind() {
    // Join-request: JoinEUI 0101…, DevEUI 0202… (ChirpStack lrwn vector, vectors.md).
    let join = hex::decode("0001010101010101010202020202020202030309B97B32").unwrap();
    assert_eq!(
        uplink_shard(&join),
        Some(UplinkShard::DevEui(lorawan::Eui64([2; 8])))
    );
    // Data uplink of DevAddr 49BE7DF1 (lora-packet vector, vectors.md).
    let data = hex::decode("40F17DBE4900020001954378762B11FF0D").unwrap();
    assert_eq!(
        uplink_shard(&data),
        Some(UplinkShard::DevAddr("49BE7DF1".parse().unwrap()))
    );
    // Rejoin type 0: MHDR | 0 | NetID (3) | DevEUI (8, little-endian) | RJcount0 | MIC.
    let mut rejoin = vec![0xC0, 0, 1, 2, 3];
    rejoin.extend([8, 7, 6, 5, 4, 3, 2, 1]);
    rejoin.extend([0, 0, 0, 0, 0, 0]);
    assert_eq!(
        uplink_shard(&rejoin),
        Some(UplinkShard::DevEui(lorawan::Eui64([
            1, 2, 3, 4, 5, 6, 7, 8
        ])))
    );
    assert_eq!(uplink_shard(&[0xE0, 1, 2]), None, "proprietary");
    assert_eq!(uplink_shard(&[0x40, 1]), None, "truncated");
    assert_eq!(uplink_shard(&[]), None);
}

#[tokio::test]
async fn uplinks_go_to_the_shard_owner_in_process_or_over_grpc() {
    let keys = ClusterKeys::new(&[KEY]).unwrap();
    let auth = Authenticator::new(keys.clone());
    let remote = Arc::new(Recorder::default());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = auth
        .layer()
        .layer(v3::gs_ns_server::GsNsServer::new(GsNsService(
            remote.clone() as Arc<dyn GsNs>,
        )));
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(TcpIncoming::from(listener)),
    );

    let peers = vec![
        Peer {
            instance_id: "ns-local".into(),
            address: "http://127.0.0.1:1".into(),
            roles: [PeerRole::NetworkServer].into(),
        },
        Peer {
            instance_id: "ns-remote".into(),
            address: format!("http://{addr}"),
            roles: [PeerRole::NetworkServer].into(),
        },
    ];
    let local = Arc::new(Recorder::default());
    let router = DirectoryGsNs::new(
        Arc::new(StaticDirectory::new(peers.clone())),
        keys.credentials(),
        Some(("ns-local".into(), local.clone() as Arc<dyn GsNs>)),
    );

    let (mut to_local, mut to_remote) = (Vec::new(), Vec::new());
    for i in 0u32..64 {
        let addr = (0x2601_0000 + i * 7919).to_be_bytes();
        let frame = data_uplink(addr);
        let owner = shard::by_dev_addr(lorawan::DevAddr(addr), &peers).unwrap();
        if owner.instance_id == "ns-local" {
            to_local.push(frame.clone());
        } else {
            to_remote.push(frame.clone());
        }
        router
            .handle_uplink(v3::UplinkMessage {
                raw_payload: frame,
                ..Default::default()
            })
            .await
            .unwrap();
    }
    assert!(
        !to_local.is_empty() && !to_remote.is_empty(),
        "both shards used"
    );
    assert_eq!(*local.uplinks.lock().unwrap(), to_local);
    assert_eq!(*remote.uplinks.lock().unwrap(), to_remote);

    // TX acknowledgments go to the NS named in the downlink ID; connection events to all.
    router
        .report_tx_ack(v3::TxAcknowledgment {
            downlink_id: "ns-remote/01J0000000000000000000000".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(remote.acks.lock().unwrap().len(), 1);
    let err = router
        .report_tx_ack(v3::TxAcknowledgment {
            downlink_id: "gone/1".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    router
        .report_gateway_connection(v3::GatewayConnectionEvent::default())
        .await
        .unwrap();
    assert_eq!(*local.connections.lock().unwrap(), 1);
    assert_eq!(*remote.connections.lock().unwrap(), 1);
}

#[tokio::test]
async fn no_network_server_is_unavailable() {
    let keys = ClusterKeys::new(&[KEY]).unwrap();
    let router = DirectoryGsNs::new(
        Arc::new(StaticDirectory::new(Vec::new())),
        keys.credentials(),
        None,
    );
    let err = router
        .handle_uplink(v3::UplinkMessage::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable);
}
