//! The directory of fixed addresses from the configuration.

use async_trait::async_trait;
use tokio::sync::watch;

use super::{ConfigError, DirectoryConfig, DirectoryHealth, Peer, PeerDirectory, PeerSet};

/// Fixed peers: never changes, always healthy.
#[derive(Debug)]
pub struct StaticDirectory {
    // Kept so that subscribers wait forever instead of seeing a closed channel.
    peers: watch::Sender<PeerSet>,
}

impl StaticDirectory {
    /// A directory of exactly these peers.
    pub fn new(peers: impl IntoIterator<Item = Peer>) -> Self {
        Self {
            peers: watch::Sender::new(peers.into_iter().collect()),
        }
    }

    /// The peers of the static addresses of `config` (see [`DirectoryConfig::static_peers`]).
    pub fn from_config(config: &DirectoryConfig) -> Result<Self, ConfigError> {
        Ok(Self {
            peers: watch::Sender::new(config.static_peers()?),
        })
    }
}

#[async_trait]
impl PeerDirectory for StaticDirectory {
    fn subscribe(&self) -> watch::Receiver<PeerSet> {
        self.peers.subscribe()
    }

    fn health(&self) -> DirectoryHealth {
        DirectoryHealth::ok()
    }

    async fn shutdown(&self) {}
}
