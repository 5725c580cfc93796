//! The NS → GS link in a cluster: each downlink goes to the Gateway Server instance the
//! Network Server names in `DownlinkMessage.gateway_server_id` (the GS its gateway is
//! connected to), in this process or over gRPC.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tern_api::v3;
use tonic::Status;

use super::grpc::{NsGsClient, channel};
use super::{LinkResult, NsGs};
use crate::auth::CallCredentials;
use crate::directory::{Peer, PeerDirectory, PeerRole};

/// A [`NsGs`] that hands each downlink to the Gateway Server named by its
/// `gateway_server_id`:
///
/// - this process's GS (see [`DirectoryNsGs::with_local`]) when the ID is its instance ID;
/// - else the directory's Gateway Server peer of that instance ID, over gRPC with the
///   cluster credentials (one cached channel per address);
/// - an empty ID (a Network Server or a Gateway Server that does not name instances) goes to
///   the local GS if there is one, else to the first GS peer;
/// - a named GS that is neither fails `UNAVAILABLE`, naming it: its gateways' paths are gone
///   with it, and no other GS could use them.
pub struct DirectoryNsGs {
    directory: Arc<dyn PeerDirectory>,
    credentials: CallCredentials,
    local: Option<(String, Arc<dyn NsGs>)>,
    clients: Mutex<HashMap<String, NsGsClient>>,
}

impl std::fmt::Debug for DirectoryNsGs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectoryNsGs")
            .field("directory", &self.directory)
            .field("local", &self.local.as_ref().map(|(id, _)| id))
            .finish_non_exhaustive()
    }
}

impl DirectoryNsGs {
    /// Routes through the Gateway Server peers of `directory`, authenticating with
    /// `credentials` (the cluster key).
    pub fn new(directory: Arc<dyn PeerDirectory>, credentials: CallCredentials) -> Self {
        Self {
            directory,
            credentials,
            local: None,
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// Calls `gs` in-process for the downlinks of `instance_id` (this process's GS).
    pub fn with_local(mut self, instance_id: impl Into<String>, gs: Arc<dyn NsGs>) -> Self {
        self.local = Some((instance_id.into(), gs));
        self
    }

    fn client(&self, peer: &Peer) -> Result<NsGsClient, Status> {
        let mut clients = self.clients.lock().expect("NsGs client cache lock");
        if let Some(client) = clients.get(&peer.address) {
            return Ok(client.clone());
        }
        let client = NsGsClient::new(channel(&peer.address, self.credentials.clone())?);
        clients.insert(peer.address.clone(), client.clone());
        Ok(client)
    }

    /// The GS to call for `gateway_server_id`.
    fn target(&self, gateway_server_id: &str) -> Result<Arc<dyn NsGs>, Status> {
        if let Some((id, local)) = &self.local
            && (gateway_server_id.is_empty() || id == gateway_server_id)
        {
            return Ok(local.clone());
        }
        let peers = self.directory.peers(PeerRole::GatewayServer);
        if gateway_server_id.is_empty() {
            let peer = peers.first().ok_or_else(|| {
                Status::unavailable(
                    "no Gateway Server is known: check cluster.gateway-server or etcd",
                )
            })?;
            return Ok(Arc::new(self.client(peer)?));
        }
        match peers.iter().find(|p| p.instance_id == gateway_server_id) {
            Some(peer) => Ok(Arc::new(self.client(peer)?)),
            None => Err(Status::unavailable(format!(
                "gateway_server_id: Gateway Server {gateway_server_id:?} is not in the \
                 directory (stopped, or not registered yet)"
            ))),
        }
    }
}

#[async_trait]
impl NsGs for DirectoryNsGs {
    async fn schedule_downlink(
        &self,
        downlink: v3::DownlinkMessage,
    ) -> LinkResult<v3::ScheduleDownlinkResponse> {
        self.target(&downlink.gateway_server_id)?
            .schedule_downlink(downlink)
            .await
    }
}

#[cfg(test)]
mod tests {
    use tokio::net::TcpListener;
    use tonic::transport::server::TcpIncoming;
    use tower::Layer;

    use super::*;
    use crate::auth::{Authenticator, ClusterKeys};
    use crate::directory::StaticDirectory;
    use crate::links::grpc::NsGsService;

    const KEY: &str = "ns-gs-test-cluster-key-012345";

    /// The GS edge: records the downlink IDs it was asked to schedule.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<String>>);

    impl Recorder {
        fn got(&self) -> Vec<String> {
            self.0.lock().unwrap().clone()
        }
    }

    #[async_trait]
    impl NsGs for Recorder {
        async fn schedule_downlink(
            &self,
            downlink: v3::DownlinkMessage,
        ) -> LinkResult<v3::ScheduleDownlinkResponse> {
            self.0.lock().unwrap().push(downlink.downlink_id);
            Ok(v3::ScheduleDownlinkResponse {
                result: Some(v3::schedule_downlink_response::Result::Scheduled(
                    v3::ScheduledDownlink::default(),
                )),
            })
        }
    }

    /// Serves `gs` over gRPC behind the cluster authentication; its address.
    async fn serve(gs: Arc<Recorder>, keys: &ClusterKeys) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let service =
            Authenticator::new(keys.clone())
                .layer()
                .layer(v3::ns_gs_server::NsGsServer::new(NsGsService(
                    gs as Arc<dyn NsGs>,
                )));
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(TcpIncoming::from(listener)),
        );
        format!("http://{addr}")
    }

    fn peer(id: &str, address: &str, role: PeerRole) -> Peer {
        Peer {
            instance_id: id.into(),
            address: address.into(),
            roles: [role].into(),
        }
    }

    fn downlink(gs: &str, id: &str) -> v3::DownlinkMessage {
        v3::DownlinkMessage {
            downlink_id: id.into(),
            gateway_server_id: gs.into(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn downlinks_go_to_the_named_gateway_server() {
        let keys = ClusterKeys::new(&[KEY]).unwrap();
        let (a, b, local) = (
            Arc::new(Recorder::default()),
            Arc::new(Recorder::default()),
            Arc::new(Recorder::default()),
        );
        let (addr_a, addr_b) = (serve(a.clone(), &keys).await, serve(b.clone(), &keys).await);
        let directory = Arc::new(StaticDirectory::new([
            peer("gs-a", &addr_a, PeerRole::GatewayServer),
            peer("gs-b", &addr_b, PeerRole::GatewayServer),
            // This process: never dialled, it is called in-process.
            peer("gs-local", "http://127.0.0.1:1", PeerRole::GatewayServer),
            // Not a Gateway Server: never a target.
            peer("ns-c", &addr_a, PeerRole::NetworkServer),
        ]));
        let router = DirectoryNsGs::new(directory.clone(), keys.credentials())
            .with_local("gs-local", local.clone() as Arc<dyn NsGs>);

        for (gs, id) in [
            ("gs-b", "1"),
            ("gs-a", "2"),
            ("gs-local", "3"),
            ("", "4"),
            ("gs-b", "5"),
        ] {
            router.schedule_downlink(downlink(gs, id)).await.unwrap();
        }
        assert_eq!(a.got(), ["2"]);
        assert_eq!(b.got(), ["1", "5"]);
        assert_eq!(local.got(), ["3", "4"]);
        // One channel per remote GS, reused.
        assert_eq!(router.clients.lock().unwrap().len(), 2);

        let err = router
            .schedule_downlink(downlink("ns-c", "6"))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unavailable);
        assert!(err.message().contains("\"ns-c\""), "{err:?}");
        let err = router
            .schedule_downlink(downlink("gs-gone", "7"))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unavailable);
        assert!(err.message().contains("\"gs-gone\""), "{err:?}");
        assert_eq!((a.got().len(), b.got().len(), local.got().len()), (1, 2, 2));

        // Without a GS in this process, an unnamed downlink goes to the first GS peer.
        let remote_only = DirectoryNsGs::new(directory, keys.credentials());
        remote_only
            .schedule_downlink(downlink("", "8"))
            .await
            .unwrap();
        assert_eq!(a.got(), ["2", "8"]);
    }

    #[tokio::test]
    async fn no_gateway_server_at_all() {
        let keys = ClusterKeys::new(&[KEY]).unwrap();
        let router = DirectoryNsGs::new(Arc::new(StaticDirectory::new([])), keys.credentials());
        let err = router
            .schedule_downlink(downlink("", "1"))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unavailable);
    }
}
