//! The directory kept in etcd: registration under a lease, and a watched live set.
//!
//! Each process puts `<prefix>/peers/<instance-id>` = JSON [`Peer`] under a lease of
//! `lease-ttl`, renews the lease every third of it, and watches `<prefix>/peers/`. A process
//! that stops without deregistering disappears when its lease expires.
//!
//! When etcd is lost (a stream breaks, or keep-alives go unanswered for two thirds of the TTL)
//! the last known peers stay in place, [`PeerDirectory::health`] says why, and one warning is
//! logged; the directory retries with backoff, and on success registers again under a new
//! lease (the old one may have expired meanwhile), reloads the live set and logs once more.

use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use etcd_client::{
    Client, ConnectOptions, EventType, GetOptions, KeyValue, LeaseKeepAliveStream, LeaseKeeper,
    PutOptions, WatchOptions, WatchStream,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::config::grpc_address;
use super::{DirectoryError, DirectoryHealth, EtcdConfig, Peer, PeerDirectory, PeerSet};

/// First retry delay after losing etcd; doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Longest retry delay while etcd is unreachable.
const MAX_BACKOFF: Duration = Duration::from_secs(3);

/// A [`PeerDirectory`] kept in etcd, including this process.
pub struct EtcdDirectory {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    task: tokio::sync::Mutex<Option<JoinHandle<()>>>,
}

/// What the directory and its background task share.
struct Shared {
    config: EtcdConfig,
    endpoints: Vec<String>,
    local: Peer,
    /// `<prefix>/peers/<instance-id>`.
    key: String,
    /// `<prefix>/peers/`.
    peers_prefix: String,
    /// The registration, JSON.
    value: String,
    peers: watch::Sender<PeerSet>,
    link: Mutex<Link>,
}

/// Whether etcd is reachable.
enum Link {
    Up,
    Down { since: Instant, error: String },
}

impl EtcdDirectory {
    /// Registers `local` in etcd, loads the live set, and keeps both up to date in a
    /// background task until [`PeerDirectory::shutdown`] (or drop, which deregisters in the
    /// background).
    ///
    /// Fails when the configuration or `local` is invalid, or when etcd cannot be reached now:
    /// a process should not start serving without ever having seen its peers.
    pub async fn start(config: EtcdConfig, local: Peer) -> Result<Self, DirectoryError> {
        config.validate()?;
        let endpoints = config.endpoint_urls()?;
        let local = check_local(local)?;
        let peers_prefix = format!("{}/peers/", config.prefix);
        let shared = Arc::new(Shared {
            key: format!("{peers_prefix}{}", local.instance_id),
            value: serde_json::to_string(&local).expect("a Peer always serializes"),
            peers_prefix,
            endpoints,
            local,
            config,
            peers: watch::Sender::new(PeerSet::default()),
            link: Mutex::new(Link::Up),
        });
        let (session, peers) =
            Session::open(&shared)
                .await
                .map_err(|error| DirectoryError::Etcd {
                    endpoints: shared.endpoints.join(", "),
                    error,
                })?;
        shared.publish(peers);
        tracing::info!(
            key = %shared.key,
            address = %shared.local.address,
            peers = shared.peers.borrow().len(),
            "registered in etcd"
        );
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(run(shared.clone(), session, stop_rx));
        Ok(Self {
            shared,
            stop,
            task: tokio::sync::Mutex::new(Some(task)),
        })
    }

    /// This process, as registered.
    pub fn local(&self) -> &Peer {
        &self.shared.local
    }
}

impl fmt::Debug for EtcdDirectory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdDirectory")
            .field("key", &self.shared.key)
            .field("endpoints", &self.shared.endpoints)
            .field("health", &self.health())
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl PeerDirectory for EtcdDirectory {
    fn subscribe(&self) -> watch::Receiver<PeerSet> {
        self.shared.peers.subscribe()
    }

    fn health(&self) -> DirectoryHealth {
        match &*self.shared.link() {
            Link::Up => DirectoryHealth::ok(),
            Link::Down { since, error } => DirectoryHealth::unhealthy(format!(
                "etcd unreachable for {}s ({error}); serving with the last known {} peers",
                since.elapsed().as_secs(),
                self.shared.peers.borrow().len()
            )),
        }
    }

    async fn shutdown(&self) {
        self.stop.send_replace(true);
        let task = self.task.lock().await.take();
        if let Some(task) = task
            && let Err(e) = task.await
        {
            tracing::warn!(error = %e, "etcd directory task failed");
        }
    }
}

/// Checks what will be registered: the instance ID is part of the key.
fn check_local(mut local: Peer) -> Result<Peer, DirectoryError> {
    let id = &local.instance_id;
    let id_ok = !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !id_ok {
        return Err(DirectoryError::InvalidLocalPeer(format!(
            "instance ID {id:?}: 1 to 128 letters, digits, `.`, `_` or `-`"
        )));
    }
    local.address = grpc_address("advertised address", &local.address)
        .map_err(|e| DirectoryError::InvalidLocalPeer(e.to_string()))?;
    if local.roles.is_empty() {
        return Err(DirectoryError::InvalidLocalPeer(format!(
            "instance {id:?} has no role to register"
        )));
    }
    Ok(local)
}

impl Shared {
    fn link(&self) -> std::sync::MutexGuard<'_, Link> {
        // The state stays consistent even if a holder panicked: it is replaced whole.
        self.link.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn publish(&self, peers: PeerSet) {
        self.peers.send_if_modified(|current| {
            let changed = *current != peers;
            *current = peers;
            changed
        });
    }

    /// Records that etcd is unreachable; logs only when it was reachable until now.
    fn link_down(&self, error: String) {
        let mut link = self.link();
        match &mut *link {
            Link::Up => {
                tracing::warn!(
                    %error,
                    key = %self.key,
                    endpoints = %self.endpoints.join(","),
                    peers = self.peers.borrow().len(),
                    "lost etcd: serving with the last known peers until it is back"
                );
                *link = Link::Down {
                    since: Instant::now(),
                    error,
                };
            }
            Link::Down { error: last, .. } => {
                tracing::debug!(%error, key = %self.key, "etcd still unreachable");
                *last = error;
            }
        }
    }

    /// Records that etcd is reachable again; `cause` is why the last session ended.
    fn link_up(&self, cause: &str) {
        let mut link = self.link();
        match &*link {
            Link::Down { since, .. } => tracing::info!(
                after_secs = since.elapsed().as_secs(),
                key = %self.key,
                endpoints = %self.endpoints.join(","),
                "etcd reachable again: registered anew and reloaded the peers"
            ),
            Link::Up => tracing::info!(
                %cause,
                key = %self.key,
                endpoints = %self.endpoints.join(","),
                "registered in etcd anew"
            ),
        }
        *link = Link::Up;
    }

    /// The peer registered under `key`, if it is a readable registration under our prefix.
    fn parse(&self, kv: &KeyValue) -> Option<Peer> {
        let key = kv.key_str().ok()?;
        let id = key.strip_prefix(&self.peers_prefix)?;
        match serde_json::from_slice::<Peer>(kv.value()) {
            Ok(peer) if peer.instance_id == id => Some(peer),
            Ok(peer) => {
                tracing::warn!(key, instance_id = %peer.instance_id, "ignoring peer registered under another instance ID");
                None
            }
            Err(e) => {
                tracing::warn!(key, error = %e, "ignoring unreadable peer registration");
                None
            }
        }
    }
}

/// One registration: a client, a lease kept alive and a watch.
struct Session {
    client: Client,
    lease_id: i64,
    keeper: LeaseKeeper,
    keep_alives: LeaseKeepAliveStream,
    watch: WatchStream,
}

/// Why [`Session::serve`] returned.
enum End {
    Stopped,
    Failed(String),
}

impl Session {
    /// Connects, registers under a new lease, and loads the live set.
    async fn open(shared: &Shared) -> Result<(Self, PeerSet), String> {
        let config = &shared.config;
        let timeout = config.request_timeout();
        let mut options = ConnectOptions::new().with_connect_timeout(timeout);
        if let (Some(user), Some(password)) = (&config.username, &config.password) {
            options = options.with_user(user.clone(), password.clone());
        }
        let mut client = step(
            "connect",
            timeout,
            Client::connect(&shared.endpoints, Some(options)),
        )
        .await?;
        let ttl = i64::try_from(config.lease_ttl.as_secs()).unwrap_or(i64::MAX);
        let lease_id = step("grant lease", timeout, client.lease_grant(ttl, None))
            .await?
            .id();
        let put = PutOptions::new().with_lease(lease_id);
        step(
            "register",
            timeout,
            client.put(shared.key.as_str(), shared.value.as_str(), Some(put)),
        )
        .await?;
        let prefix = shared.peers_prefix.as_str();
        let current = step(
            "list peers",
            timeout,
            client.get(prefix, Some(GetOptions::new().with_prefix())),
        )
        .await?;
        let revision = current.header().map_or(0, |h| h.revision());
        let peers = current
            .kvs()
            .iter()
            .filter_map(|kv| shared.parse(kv))
            .collect();
        // Watch from just after the listing, so no change falls in between.
        let watch_options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(revision + 1);
        let watch = step(
            "watch peers",
            timeout,
            client.watch(prefix, Some(watch_options)),
        )
        .await?;
        let (keeper, keep_alives) = step(
            "keep lease alive",
            timeout,
            client.lease_keep_alive(lease_id),
        )
        .await?;
        let session = Self {
            client,
            lease_id,
            keeper,
            keep_alives,
            watch,
        };
        Ok((session, peers))
    }

    /// Keeps the lease alive and applies watched changes until stopped or broken.
    async fn serve(&mut self, shared: &Shared, stop: &mut watch::Receiver<bool>) -> End {
        let interval = shared.config.lease_ttl / 3;
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_answer = Instant::now();
        loop {
            tokio::select! {
                () = stopped(stop) => return End::Stopped,
                _ = tick.tick() => {
                    // Two unanswered rounds leave a third of the TTL: give up before the
                    // lease expires under us, so health turns bad before peers drop us.
                    if last_answer.elapsed() > interval * 2 {
                        return End::Failed(format!(
                            "no answer to lease keep-alives for {}ms",
                            last_answer.elapsed().as_millis()
                        ));
                    }
                    if let Err(e) = self.keeper.keep_alive().await {
                        return End::Failed(format!("lease keep-alive: {e}"));
                    }
                }
                answer = self.keep_alives.message() => match answer {
                    Ok(Some(a)) if a.ttl() > 0 => last_answer = Instant::now(),
                    Ok(Some(_)) => return End::Failed("the lease expired".to_owned()),
                    Ok(None) => return End::Failed("etcd closed the keep-alive stream".to_owned()),
                    Err(e) => return End::Failed(format!("lease keep-alive: {e}")),
                },
                response = self.watch.message() => match response {
                    Ok(Some(r)) if r.canceled() => {
                        return End::Failed(format!("etcd canceled the watch: {}", r.cancel_reason()));
                    }
                    Ok(Some(r)) => {
                        if let Some(end) = apply(shared, r.events()) {
                            return end;
                        }
                    }
                    Ok(None) => return End::Failed("etcd closed the watch stream".to_owned()),
                    Err(e) => return End::Failed(format!("watch: {e}")),
                },
            }
        }
    }

    /// Revokes the lease, which deletes the registration at once.
    async fn deregister(mut self, shared: &Shared) {
        let timeout = shared.config.request_timeout();
        match step(
            "revoke lease",
            timeout,
            self.client.lease_revoke(self.lease_id),
        )
        .await
        {
            Ok(_) => tracing::info!(key = %shared.key, "deregistered from etcd"),
            Err(error) => tracing::warn!(
                %error,
                key = %shared.key,
                "could not deregister from etcd: the registration expires with its lease"
            ),
        }
    }
}

/// Applies watched events to the live set; ends the session if our own registration vanished.
fn apply(shared: &Shared, events: &[etcd_client::Event]) -> Option<End> {
    let mut end = None;
    shared.peers.send_if_modified(|peers| {
        let mut changed = false;
        for event in events {
            let Some(kv) = event.kv() else { continue };
            let Some(id) = kv
                .key_str()
                .ok()
                .and_then(|k| k.strip_prefix(&shared.peers_prefix))
            else {
                continue;
            };
            match (event.event_type(), shared.parse(kv)) {
                (EventType::Put, Some(peer)) => {
                    changed |= peers.get(id) != Some(&peer);
                    peers.insert(peer);
                }
                // An unreadable registration counts as absent.
                (EventType::Put, None) | (EventType::Delete, _) => {
                    changed |= peers.remove(id).is_some();
                    if id == shared.local.instance_id {
                        end = Some(End::Failed("our registration was deleted".to_owned()));
                    }
                }
            }
        }
        changed
    });
    end
}

/// The background task: serve sessions, reconnect when one breaks, deregister when stopped.
async fn run(shared: Arc<Shared>, mut session: Session, mut stop: watch::Receiver<bool>) {
    loop {
        let cause = match session.serve(&shared, &mut stop).await {
            End::Stopped => return session.deregister(&shared).await,
            End::Failed(cause) => cause,
        };
        drop(session);
        match reconnect(&shared, &mut stop, cause).await {
            Some(next) => session = next,
            None => return,
        }
    }
}

/// Opens a new session, retrying with backoff; `None` when stopped meanwhile.
async fn reconnect(
    shared: &Shared,
    stop: &mut watch::Receiver<bool>,
    cause: String,
) -> Option<Session> {
    let mut backoff = MIN_BACKOFF;
    // Try at once: an expired lease or a dropped connection may need no outage.
    let mut first = true;
    loop {
        let attempt = tokio::select! {
            () = stopped(stop) => return None,
            attempt = Session::open(shared) => attempt,
        };
        match attempt {
            Ok((session, peers)) => {
                shared.publish(peers);
                shared.link_up(&cause);
                return Some(session);
            }
            Err(error) if first => shared.link_down(format!("{cause}; reconnecting: {error}")),
            Err(error) => shared.link_down(error),
        }
        first = false;
        tokio::select! {
            () = stopped(stop) => return None,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Completes when the directory is shut down or dropped.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    // An error means the sender (the directory) was dropped: stop too.
    let _ = stop.wait_for(|&s| s).await;
}

/// Runs one etcd call with a deadline; the error says which call failed.
async fn step<T>(
    what: &str,
    timeout: Duration,
    call: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, String> {
    match tokio::time::timeout(timeout, call).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Err(_) => Err(format!(
            "{what}: no answer within {}ms",
            timeout.as_millis()
        )),
    }
}
