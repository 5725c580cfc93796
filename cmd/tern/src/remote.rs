//! Links to roles in other processes, resolved through the peer directory at each call, so
//! that a process starts before its peers and follows them when etcd membership changes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tern_api::v3;
use tern_cluster::auth::CallCredentials;
use tern_cluster::directory::{PeerDirectory, PeerRole};
use tern_cluster::links::grpc::{
    AsJsClient, AuthChannel, GsIsClient, NsGsClient, NsJsClient, channel,
};
use tern_cluster::links::{AsJs, GsIs, LinkResult, NsGs, NsJs};
use tonic::Status;

/// A peer of one role, reached over gRPC with the cluster credentials.
pub struct Remote {
    directory: Arc<dyn PeerDirectory>,
    credentials: CallCredentials,
    role: PeerRole,
    channels: Mutex<HashMap<String, AuthChannel>>,
}

impl Remote {
    /// The peers of `role` in `directory`, called with `credentials`.
    pub fn new(
        directory: Arc<dyn PeerDirectory>,
        credentials: CallCredentials,
        role: PeerRole,
    ) -> Arc<Self> {
        Arc::new(Self {
            directory,
            credentials,
            role,
            channels: Mutex::new(HashMap::new()),
        })
    }

    /// A channel to the first known peer of the role.
    fn channel(&self) -> Result<AuthChannel, Status> {
        let peer = self
            .directory
            .peers(self.role)
            .into_iter()
            .next()
            .ok_or_else(|| {
                Status::unavailable(format!(
                    "no {} is known: set its address under [cluster] or configure etcd",
                    self.role
                ))
            })?;
        let mut channels = self.channels.lock().expect("channel cache lock");
        if let Some(channel) = channels.get(&peer.address) {
            return Ok(channel.clone());
        }
        let ch = channel(&peer.address, self.credentials.clone())?;
        channels.insert(peer.address, ch.clone());
        Ok(ch)
    }
}

#[async_trait]
impl NsJs for Remote {
    async fn handle_join(&self, request: v3::JoinRequest) -> LinkResult<v3::JoinResponse> {
        NsJsClient::new(self.channel()?).handle_join(request).await
    }
}

#[async_trait]
impl AsJs for Remote {
    async fn get_app_s_key(
        &self,
        request: v3::SessionKeyRequest,
    ) -> LinkResult<v3::AppSKeyResponse> {
        AsJsClient::new(self.channel()?)
            .get_app_s_key(request)
            .await
    }
}

#[async_trait]
impl GsIs for Remote {
    async fn gateway_by_eui(&self, eui: [u8; 8]) -> LinkResult<Option<v3::Gateway>> {
        GsIsClient::new(self.channel()?).gateway_by_eui(eui).await
    }
}

#[async_trait]
impl NsGs for Remote {
    async fn schedule_downlink(
        &self,
        downlink: v3::DownlinkMessage,
    ) -> LinkResult<v3::ScheduleDownlinkResponse> {
        NsGsClient::new(self.channel()?)
            .schedule_downlink(downlink)
            .await
    }
}
