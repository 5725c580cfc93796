//! The AS's link to a cluster of Network Servers: one link per listed NS, merged into one
//! stream. Network Server fakes (the edge this crate does not own) are served over real
//! gRPC on loopback with the cluster key; one stands for the NS of the AS's own process and
//! is called in-process.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tern_api::v3;
use tern_cluster::auth::{Authenticator, Caller, ClusterKeys};
use tern_cluster::directory::{DirectoryHealth, Peer, PeerDirectory, PeerRole, PeerSet};
use tern_cluster::links::grpc::{AsNsService, DirectoryAsNs};
use tern_cluster::links::{AsNs, BoxStream, LinkResult};
use tern_cluster::shard;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::TcpIncoming;
use tower::Layer;

const KEY: &str = "as-links-test-cluster-key-0123";
const WAIT: Duration = Duration::from_secs(5);

/// A directory the test changes.
#[derive(Debug)]
struct TestDirectory(watch::Sender<PeerSet>);

#[async_trait]
impl PeerDirectory for TestDirectory {
    fn subscribe(&self) -> watch::Receiver<PeerSet> {
        self.0.subscribe()
    }
    fn health(&self) -> DirectoryHealth {
        DirectoryHealth::ok()
    }
    async fn shutdown(&self) {}
}

/// What one fake NS saw on its current link.
#[derive(Default)]
struct Seen {
    starts: Vec<v3::LinkStart>,
    acks: Vec<(u64, String)>,
    queue_ops: Vec<v3::DownlinkQueueOperation>,
    ended: usize,
    tx: Option<mpsc::Sender<LinkResult<v3::LinkResponse>>>,
}

/// The NS edge: confirms links, answers queue operations, records everything.
#[derive(Default)]
struct FakeNs {
    name: String,
    /// The `ns_instance_id` of its numbering (empty: a Network Server that names none).
    stream: String,
    seen: Arc<Mutex<Seen>>,
}

#[async_trait]
impl AsNs for FakeNs {
    async fn link_application(
        &self,
        _caller: Caller,
        mut requests: BoxStream<LinkResult<v3::LinkRequest>>,
    ) -> LinkResult<BoxStream<LinkResult<v3::LinkResponse>>> {
        let Some(Ok(v3::LinkRequest {
            frame: Some(v3::link_request::Frame::Start(start)),
        })) = requests.next().await
        else {
            return Err(tonic::Status::invalid_argument("LinkStart first"));
        };
        let (tx, rx) = mpsc::channel(64);
        tx.send(Ok(v3::LinkResponse {
            frame: Some(v3::link_response::Frame::Established(v3::LinkEstablished {
                application_ids: Vec::new(),
                ns_instance_id: self.stream.clone(),
            })),
        }))
        .await
        .unwrap();
        {
            let mut seen = self.seen.lock().unwrap();
            seen.starts.push(start);
            seen.tx = Some(tx.clone());
        }
        let seen = self.seen.clone();
        let name = self.name.clone();
        tokio::spawn(async move {
            while let Some(Ok(request)) = requests.next().await {
                match request.frame {
                    Some(v3::link_request::Frame::Ack(a)) => seen
                        .lock()
                        .unwrap()
                        .acks
                        .push((a.sequence, a.ns_instance_id)),
                    Some(v3::link_request::Frame::QueueOperation(op)) => {
                        let id = op.operation_id;
                        seen.lock().unwrap().queue_ops.push(op);
                        let _ = tx
                            .send(Ok(v3::LinkResponse {
                                frame: Some(v3::link_response::Frame::QueueResult(
                                    v3::DownlinkQueueOperationResult {
                                        operation_id: id,
                                        session_key_id: name.clone().into_bytes(),
                                        ..Default::default()
                                    },
                                )),
                            }))
                            .await;
                    }
                    _ => {}
                }
            }
            seen.lock().unwrap().ended += 1;
        });
        Ok(Box::pin(ReceiverStream::new(rx)))
    }

    async fn downlink_queue_list(
        &self,
        _caller: Caller,
        _device: v3::EndDeviceIdentifiers,
    ) -> LinkResult<v3::ApplicationDownlinks> {
        Ok(v3::ApplicationDownlinks {
            downlinks: vec![v3::ApplicationDownlink {
                session_key_id: self.name.clone().into_bytes(),
                ..Default::default()
            }],
        })
    }
}

impl FakeNs {
    /// Sends an `up` frame (this NS's own `sequence`) for `device` of `app-1`.
    async fn up(&self, device: &str, sequence: u64) {
        let tx = self.seen.lock().unwrap().tx.clone().expect("linked");
        tx.send(Ok(v3::LinkResponse {
            frame: Some(v3::link_response::Frame::Up(v3::SequencedApplicationUp {
                sequence,
                ns_instance_id: self.stream.clone(),
                up: Some(v3::ApplicationUp {
                    end_device_ids: Some(v3::EndDeviceIdentifiers::new("app-1", device)),
                    ..Default::default()
                }),
            })),
        }))
        .await
        .unwrap();
    }

    fn links(&self) -> usize {
        self.seen.lock().unwrap().starts.len()
    }
}

async fn serve(name: &str, stream: &str, auth: &Authenticator) -> (Arc<FakeNs>, Peer) {
    let fake = Arc::new(FakeNs {
        name: name.to_owned(),
        stream: stream.to_owned(),
        ..Default::default()
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = auth
        .layer()
        .layer(v3::as_ns_server::AsNsServer::new(AsNsService(
            fake.clone() as Arc<dyn AsNs>
        )));
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(TcpIncoming::from(listener)),
    );
    let peer = Peer {
        instance_id: name.to_owned(),
        address: format!("http://{addr}"),
        roles: BTreeSet::from([PeerRole::NetworkServer]),
    };
    (fake, peer)
}

async fn until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

struct As {
    tx: mpsc::Sender<LinkResult<v3::LinkRequest>>,
    responses: BoxStream<LinkResult<v3::LinkResponse>>,
}

impl As {
    async fn next(&mut self) -> v3::link_response::Frame {
        tokio::time::timeout(WAIT, self.responses.next())
            .await
            .expect("a frame in time")
            .expect("the link is open")
            .expect("not an error")
            .frame
            .expect("a frame")
    }

    async fn ack(&mut self, sequence: u64, ns_instance_id: &str) {
        self.tx
            .send(Ok(v3::LinkRequest {
                frame: Some(v3::link_request::Frame::Ack(v3::LinkAck {
                    application_ids: Some(v3::ApplicationIdentifiers {
                        application_id: "app-1".into(),
                    }),
                    sequence,
                    ns_instance_id: ns_instance_id.to_owned(),
                })),
            }))
            .await
            .unwrap();
    }

    async fn up(&mut self) -> v3::SequencedApplicationUp {
        match self.next().await {
            v3::link_response::Frame::Up(up) => up,
            other => panic!("expected an up frame, got {other:?}"),
        }
    }

    async fn queue(&mut self, id: u64, ids: v3::EndDeviceIdentifiers) -> String {
        self.tx
            .send(Ok(v3::LinkRequest {
                frame: Some(v3::link_request::Frame::QueueOperation(
                    v3::DownlinkQueueOperation {
                        operation_id: id,
                        end_device_ids: Some(ids),
                        ..Default::default()
                    },
                )),
            }))
            .await
            .unwrap();
        match self.next().await {
            v3::link_response::Frame::QueueResult(r) => {
                assert_eq!(r.operation_id, id);
                String::from_utf8(r.session_key_id).unwrap()
            }
            other => panic!("expected a queue result, got {other:?}"),
        }
    }
}

fn device_of(up: &v3::SequencedApplicationUp) -> String {
    up.up
        .as_ref()
        .and_then(|u| u.end_device_ids.as_ref())
        .map(|i| i.device_id.clone())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_link_per_network_server_merged_into_one_stream() {
    let keys = ClusterKeys::new(&[KEY]).unwrap();
    let auth = Authenticator::new(keys.clone());
    let (ns1, mut p1) = serve("ns-1", "ns-1.epoch-1", &auth).await;
    // ns-1 runs in this process: called in-process, never at its (unreachable) address.
    p1.address = "http://127.0.0.1:1".into();
    let (ns2, p2) = serve("ns-2", "ns-2.epoch-1", &auth).await;
    let (ns3, p3) = serve("ns-3", "", &auth).await;
    let directory = Arc::new(TestDirectory(watch::Sender::new(PeerSet::from_iter([
        p1.clone(),
        p2.clone(),
    ]))));
    let link = DirectoryAsNs::new(directory.clone(), keys.credentials())
        .with_local("ns-1".into(), ns1.clone() as Arc<dyn AsNs>);

    let (tx, rx) = mpsc::channel(16);
    tx.send(Ok(v3::LinkRequest {
        frame: Some(v3::link_request::Frame::Start(v3::LinkStart {
            all_applications: true,
            instance_id: "as-test".into(),
            acknowledged: vec![v3::LinkAck {
                application_ids: Some(v3::ApplicationIdentifiers {
                    application_id: "app-1".into(),
                }),
                sequence: 6,
                ns_instance_id: "ns-1.epoch-1".into(),
            }],
            ..Default::default()
        })),
    }))
    .await
    .unwrap();
    let responses = link
        .link_application(Caller::Cluster, Box::pin(ReceiverStream::new(rx)))
        .await
        .unwrap();
    let mut as_ = As { tx, responses };
    assert!(matches!(
        as_.next().await,
        v3::link_response::Frame::Established(_)
    ));
    until("both Network Servers linked", || {
        ns1.links() == 1 && ns2.links() == 1
    })
    .await;
    for ns in [&ns1, &ns2] {
        let start = ns.seen.lock().unwrap().starts[0].clone();
        assert!(start.all_applications);
        assert_eq!(start.instance_id, "as-test");
        assert_eq!(
            start.acknowledged.len(),
            1,
            "every NS gets the AS's acknowledgements (and skips the others')"
        );
    }

    // Both deliver into the one stream, each message naming its numbering.
    ns1.up("dev-a", 7).await;
    let first = as_.up().await;
    ns2.up("dev-b", 3).await;
    let second = as_.up().await;
    assert_eq!(
        (
            device_of(&first),
            first.sequence,
            first.ns_instance_id.as_str()
        ),
        ("dev-a".into(), 7, "ns-1.epoch-1")
    );
    assert_eq!(
        (
            device_of(&second),
            second.sequence,
            second.ns_instance_id.as_str()
        ),
        ("dev-b".into(), 3, "ns-2.epoch-1")
    );
    // Each acknowledgement reaches the Network Server of the numbering it names.
    as_.ack(3, "ns-2.epoch-1").await;
    as_.ack(7, "ns-1.epoch-1").await;
    as_.ack(9, "unknown.epoch").await;
    until("acknowledgements routed", || {
        ns1.seen.lock().unwrap().acks == [(7, "ns-1.epoch-1".to_owned())]
            && ns2.seen.lock().unwrap().acks == [(3, "ns-2.epoch-1".to_owned())]
    })
    .await;

    // Queue operations: by the DevAddr of the request, else where the device's last
    // message came from.
    let peers = [p1.clone(), p2.clone()];
    let addr_of = |owner: &str| {
        (0u32..)
            .map(|i| lorawan::DevAddr::from_u32(0x2601_0000 + i))
            .find(|a| shard::by_dev_addr(*a, &peers).unwrap().instance_id == owner)
            .unwrap()
    };
    for owner in ["ns-1", "ns-2"] {
        let mut ids = v3::EndDeviceIdentifiers::new("app-1", "dev-a");
        ids.dev_addr = addr_of(owner).to_be_bytes().to_vec();
        assert_eq!(as_.queue(1, ids).await, owner, "routed by DevAddr");
    }
    assert_eq!(
        as_.queue(2, v3::EndDeviceIdentifiers::new("app-1", "dev-a"))
            .await,
        "ns-1",
        "routed to the NS of dev-a's last message"
    );
    assert_eq!(
        as_.queue(3, v3::EndDeviceIdentifiers::new("app-1", "dev-b"))
            .await,
        "ns-2",
        "routed to the NS of dev-b's last message"
    );
    let listed = link
        .downlink_queue_list(
            Caller::Cluster,
            v3::EndDeviceIdentifiers::new("app-1", "dev-b"),
        )
        .await
        .unwrap();
    assert_eq!(listed.downlinks[0].session_key_id, b"ns-2");

    // A third Network Server appears: it gets a link, and its messages come through.
    directory
        .0
        .send_replace(PeerSet::from_iter([p1.clone(), p2.clone(), p3.clone()]));
    until("the new Network Server linked", || ns3.links() == 1).await;
    ns3.up("dev-c", 1).await;
    let third = as_.up().await;
    assert_eq!(
        (
            device_of(&third),
            third.sequence,
            third.ns_instance_id.as_str()
        ),
        ("dev-c".into(), 1, "ns-3"),
        "a Network Server naming no numbering gets its instance ID"
    );
    as_.ack(1, "ns-3").await;
    until("acknowledged in the NS's own terms", || {
        ns3.seen.lock().unwrap().acks == [(1, String::new())]
    })
    .await;

    // One leaves: its link ends, the others stay.
    directory
        .0
        .send_replace(PeerSet::from_iter([p2.clone(), p3.clone()]));
    until("the vanished Network Server's link ended", || {
        ns1.seen.lock().unwrap().ended == 1
    })
    .await;
    ns2.up("dev-b", 4).await;
    assert_eq!(as_.up().await.sequence, 4);
    assert_eq!(ns2.seen.lock().unwrap().ended, 0);
    assert_eq!(ns3.seen.lock().unwrap().ended, 0);
}

#[tokio::test]
async fn no_network_server_is_unavailable() {
    let keys = ClusterKeys::new(&[KEY]).unwrap();
    let directory = Arc::new(TestDirectory(watch::Sender::new(PeerSet::default())));
    let link = DirectoryAsNs::new(directory, keys.credentials());
    let (tx, rx) = mpsc::channel(1);
    tx.send(Ok(v3::LinkRequest {
        frame: Some(v3::link_request::Frame::Start(v3::LinkStart {
            all_applications: true,
            ..Default::default()
        })),
    }))
    .await
    .unwrap();
    let err = link
        .link_application(Caller::Cluster, Box::pin(ReceiverStream::new(rx)))
        .await
        .err()
        .expect("no NS to link");
    assert_eq!(err.code(), tonic::Code::Unavailable);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listed_network_server_that_is_down_is_linked_once_it_is_up() {
    let keys = ClusterKeys::new(&[KEY]).unwrap();
    let auth = Authenticator::new(keys.clone());
    let (ns1, p1) = serve("ns-1", "ns-1.e", &auth).await;
    // ns-2 is listed but not listening yet.
    let late = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let late_addr = late.local_addr().unwrap();
    drop(late);
    let p2 = Peer {
        instance_id: "ns-2".into(),
        address: format!("http://{late_addr}"),
        roles: BTreeSet::from([PeerRole::NetworkServer]),
    };
    let directory = Arc::new(TestDirectory(watch::Sender::new(PeerSet::from_iter([
        p1, p2,
    ]))));
    let link = DirectoryAsNs::new(directory, keys.credentials());
    let (tx, rx) = mpsc::channel(16);
    tx.send(Ok(v3::LinkRequest {
        frame: Some(v3::link_request::Frame::Start(v3::LinkStart {
            all_applications: true,
            ..Default::default()
        })),
    }))
    .await
    .unwrap();
    let responses = link
        .link_application(Caller::Cluster, Box::pin(ReceiverStream::new(rx)))
        .await
        .expect("linked through the Network Server that is up");
    let mut as_ = As { tx, responses };
    assert!(matches!(
        as_.next().await,
        v3::link_response::Frame::Established(_)
    ));
    until("ns-1 linked", || ns1.links() == 1).await;

    // ns-2 comes up at its listed address: the merged link picks it up on a retry.
    let ns2 = Arc::new(FakeNs {
        name: "ns-2".into(),
        stream: "ns-2.e".into(),
        ..Default::default()
    });
    let listener = TcpListener::bind(late_addr).await.unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(
                auth.layer()
                    .layer(v3::as_ns_server::AsNsServer::new(AsNsService(
                        ns2.clone() as Arc<dyn AsNs>
                    ))),
            )
            .serve_with_incoming(TcpIncoming::from(listener)),
    );
    until("ns-2 linked after it came up", || ns2.links() == 1).await;
    ns2.up("dev-z", 1).await;
    let up = as_.up().await;
    assert_eq!(
        (device_of(&up), up.ns_instance_id.as_str()),
        ("dev-z".into(), "ns-2.e")
    );
}
