//! Where the roles are: the peer directory.
//!
//! A [`PeerDirectory`] answers "which live instances serve role X, at which gRPC address".
//! Two implementations:
//!
//! - [`StaticDirectory`]: fixed addresses from the configuration
//!   (`cluster.network-server = "http://10.0.0.2:1884"`); always healthy.
//! - [`EtcdDirectory`]: each process registers its instance ID, advertised address and roles
//!   in etcd under a lease and watches the others; it includes this process itself. When etcd
//!   is lost it keeps the last known peers and reports it in [`PeerDirectory::health`].
//!
//! [`open`] picks one from a [`DirectoryConfig`].

mod config;
mod etcd;
mod static_dir;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

pub use config::{ConfigError, DirectoryConfig, EtcdConfig};
pub use etcd::EtcdDirectory;
pub use static_dir::StaticDirectory;

/// A role a peer serves. The lead's `Role` will replace it; the short names are the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum PeerRole {
    /// Identity Server (`is`).
    #[serde(rename = "is")]
    IdentityServer,
    /// Gateway Server (`gs`).
    #[serde(rename = "gs")]
    GatewayServer,
    /// Network Server (`ns`).
    #[serde(rename = "ns")]
    NetworkServer,
    /// Join Server (`js`).
    #[serde(rename = "js")]
    JoinServer,
    /// Application Server (`as`).
    #[serde(rename = "as")]
    ApplicationServer,
}

impl PeerRole {
    /// Every role, in start order.
    pub const ALL: [PeerRole; 5] = [
        Self::IdentityServer,
        Self::GatewayServer,
        Self::NetworkServer,
        Self::JoinServer,
        Self::ApplicationServer,
    ];

    /// The short name: `is`, `gs`, `ns`, `js` or `as`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::IdentityServer => "is",
            Self::GatewayServer => "gs",
            Self::NetworkServer => "ns",
            Self::JoinServer => "js",
            Self::ApplicationServer => "as",
        }
    }

    /// The name of the static address option, e.g. `network-server`.
    pub fn config_name(self) -> &'static str {
        match self {
            Self::IdentityServer => "identity-server",
            Self::GatewayServer => "gateway-server",
            Self::NetworkServer => "network-server",
            Self::JoinServer => "join-server",
            Self::ApplicationServer => "application-server",
        }
    }
}

impl fmt::Display for PeerRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown role name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role `{0}`: expected one of is, gs, ns, js, as")]
pub struct UnknownRole(pub String);

impl FromStr for PeerRole {
    type Err = UnknownRole;

    fn from_str(s: &str) -> Result<Self, UnknownRole> {
        Self::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| UnknownRole(s.to_owned()))
    }
}

/// A process of the cluster: its instance ID, the gRPC address it advertises and its roles.
///
/// This is also the JSON value registered in etcd (kebab-case fields); unknown fields are
/// ignored so that newer versions can add some during a rolling upgrade.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Peer {
    /// Unique per process, e.g. the pod name. Letters, digits, `.`, `_` and `-`.
    pub instance_id: String,
    /// gRPC URL, e.g. `http://127.0.0.1:1884`.
    pub address: String,
    /// The roles it serves.
    pub roles: BTreeSet<PeerRole>,
}

impl Peer {
    /// Whether the peer serves `role`.
    pub fn has_role(&self, role: PeerRole) -> bool {
        self.roles.contains(&role)
    }
}

/// The live peers, by instance ID.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerSet {
    peers: BTreeMap<String, Peer>,
}

impl PeerSet {
    /// The peers that serve `role`, ordered by instance ID.
    pub fn with_role(&self, role: PeerRole) -> Vec<Peer> {
        self.peers
            .values()
            .filter(|p| p.has_role(role))
            .cloned()
            .collect()
    }

    /// The peer with this instance ID.
    pub fn get(&self, instance_id: &str) -> Option<&Peer> {
        self.peers.get(instance_id)
    }

    /// Every peer, ordered by instance ID.
    pub fn iter(&self) -> impl Iterator<Item = &Peer> {
        self.peers.values()
    }

    /// How many peers.
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// Whether there is no peer.
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    pub(crate) fn insert(&mut self, peer: Peer) {
        self.peers.insert(peer.instance_id.clone(), peer);
    }

    pub(crate) fn remove(&mut self, instance_id: &str) -> Option<Peer> {
        self.peers.remove(instance_id)
    }
}

impl FromIterator<Peer> for PeerSet {
    fn from_iter<I: IntoIterator<Item = Peer>>(iter: I) -> Self {
        let mut set = Self::default();
        for peer in iter {
            set.insert(peer);
        }
        set
    }
}

/// Whether the directory is up to date, for `/readyz`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectoryHealth {
    /// False when the peers may be stale (e.g. etcd unreachable).
    pub ok: bool,
    /// Why not ok; `None` when ok.
    pub reason: Option<String>,
}

impl DirectoryHealth {
    /// Healthy.
    pub fn ok() -> Self {
        Self {
            ok: true,
            reason: None,
        }
    }

    /// Unhealthy, because of `reason`.
    pub fn unhealthy(reason: impl Into<String>) -> Self {
        Self {
            ok: false,
            reason: Some(reason.into()),
        }
    }
}

impl From<crate::role::Role> for PeerRole {
    fn from(role: crate::role::Role) -> Self {
        // Through the short names, which both enums share.
        role.as_str()
            .parse()
            .expect("every Role has a PeerRole of the same short name")
    }
}

/// Where the live peers of each role are.
#[async_trait]
pub trait PeerDirectory: Send + Sync + fmt::Debug {
    /// The current live set, and every later change: `changed().await` wakes on each change.
    fn subscribe(&self) -> watch::Receiver<PeerSet>;

    /// The live peers that serve `role`, ordered by instance ID.
    fn peers(&self, role: PeerRole) -> Vec<Peer> {
        self.subscribe().borrow().with_role(role)
    }

    /// Whether the live set is up to date.
    fn health(&self) -> DirectoryHealth;

    /// Deregisters this process (if it registered) and stops watching. Idempotent.
    async fn shutdown(&self);
}

/// Why a directory could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The description of this process is invalid.
    #[error("invalid local peer: {0}")]
    InvalidLocalPeer(String),
    /// etcd could not be reached or refused the registration.
    #[error("cannot register in etcd at {endpoints}: {error}")]
    Etcd {
        /// The configured endpoints, comma-separated.
        endpoints: String,
        /// What failed.
        error: String,
    },
}

/// Opens the directory the configuration asks for: etcd when `etcd` is set (registering
/// `local`), otherwise the static addresses (`local` is then not part of the set).
pub async fn open(
    config: &DirectoryConfig,
    local: Peer,
) -> Result<Arc<dyn PeerDirectory>, DirectoryError> {
    config.validate()?;
    match &config.etcd {
        Some(etcd) => Ok(Arc::new(EtcdDirectory::start(etcd.clone(), local).await?)),
        None => Ok(Arc::new(StaticDirectory::from_config(config)?)),
    }
}
