//! The AS end of the AS↔NS link: open it, keep it open, and say how it is doing.
//!
//! The AS always dials (the NS never needs its address), so an AS behind NAT or under
//! another operator links the same way as one in the same process. A refused or broken link
//! is retried with exponential backoff; its state is the AS's readiness, so `/readyz` shows
//! why an AS is not linked (e.g. the NS's `PERMISSION_DENIED` message).

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tern_api::v3;
use tern_cluster::auth::Caller;
use tern_cluster::links::{AsNs, LinkResult};
use tern_cluster::role::{ReadinessSignal, Shutdown};
use tokio::sync::{mpsc, watch};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tracing::{debug, info, warn};

/// What the AS links.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct LinkConfig {
    /// The applications to link; empty links every application (cluster peers only).
    pub applications: Vec<String>,
    /// Shortest wait before relinking after a failure.
    #[serde(with = "humantime_serde")]
    pub min_backoff: Duration,
    /// Longest wait before relinking after repeated failures.
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
}

impl Default for LinkConfig {
    fn default() -> Self {
        Self {
            applications: Vec::new(),
            min_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(15),
        }
    }
}

/// The state of the link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkState {
    /// Not tried yet.
    Starting,
    /// The NS accepted the link for these applications (empty: all of them).
    Linked(Vec<String>),
    /// The link is down, with the reason; it is being retried.
    Down(String),
}

/// Keeps the link to the Network Server open until shutdown.
pub struct Linker {
    ns: Arc<dyn AsNs>,
    config: LinkConfig,
    instance_id: String,
    state: watch::Sender<LinkState>,
}

impl Linker {
    /// A linker to `ns` (in-process or gRPC) for `config`, naming itself `instance_id`.
    pub fn new(ns: Arc<dyn AsNs>, config: LinkConfig, instance_id: String) -> Self {
        Self {
            ns,
            config,
            instance_id,
            state: watch::Sender::new(LinkState::Starting),
        }
    }

    /// The current state.
    pub fn state(&self) -> LinkState {
        self.state.borrow().clone()
    }

    /// A receiver of state changes.
    pub fn subscribe(&self) -> watch::Receiver<LinkState> {
        self.state.subscribe()
    }

    fn set(&self, state: LinkState, readiness: &ReadinessSignal) {
        let changed = self.state.send_if_modified(|current| {
            if *current == state {
                return false;
            }
            *current = state.clone();
            true
        });
        if changed {
            match &state {
                LinkState::Linked(apps) if apps.is_empty() => {
                    info!("linked to the Network Server for all applications")
                }
                LinkState::Linked(apps) => {
                    info!(applications = ?apps, "linked to the Network Server")
                }
                LinkState::Down(reason) => warn!(%reason, "link to the Network Server is down"),
                LinkState::Starting => {}
            }
            readiness.notify();
        }
    }

    /// Links, relinks with backoff, and returns at shutdown.
    pub async fn run(self: Arc<Self>, shutdown: Shutdown, readiness: ReadinessSignal) {
        let mut backoff = self.config.min_backoff;
        while !shutdown.is_triggered() {
            let linked_once = tokio::select! {
                linked = self.link_once(&readiness) => linked,
                () = shutdown.wait() => return,
            };
            if linked_once {
                backoff = self.config.min_backoff;
            }
            debug!(backoff = ?backoff, "relinking after backoff");
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = shutdown.wait() => return,
            }
            backoff = (backoff * 2).min(self.config.max_backoff);
        }
    }

    /// One link: open, wait for `LinkEstablished`, then read until it ends. Returns whether
    /// the link was established.
    async fn link_once(&self, readiness: &ReadinessSignal) -> bool {
        let (tx, rx) = mpsc::channel::<LinkResult<v3::LinkRequest>>(16);
        let start = v3::LinkStart {
            application_ids: self
                .config
                .applications
                .iter()
                .map(|id| v3::ApplicationIdentifiers {
                    application_id: id.clone(),
                })
                .collect(),
            all_applications: self.config.applications.is_empty(),
            instance_id: self.instance_id.clone(),
            acknowledged: Vec::new(),
        };
        let _ = tx
            .send(Ok(v3::LinkRequest {
                frame: Some(v3::link_request::Frame::Start(start)),
            }))
            .await;
        // In-process the AS is a cluster peer; over gRPC the channel's credentials decide.
        let mut responses = match self
            .ns
            .link_application(Caller::Cluster, Box::pin(ReceiverStream::new(rx)))
            .await
        {
            Ok(responses) => responses,
            Err(status) => {
                self.set(LinkState::Down(describe(&status)), readiness);
                return false;
            }
        };
        match responses.next().await {
            Some(Ok(v3::LinkResponse {
                frame: Some(v3::link_response::Frame::Established(established)),
            })) => {
                let apps = established
                    .application_ids
                    .into_iter()
                    .map(|a| a.application_id)
                    .collect();
                self.set(LinkState::Linked(apps), readiness);
            }
            Some(Err(status)) => {
                self.set(LinkState::Down(describe(&status)), readiness);
                return false;
            }
            Some(Ok(_)) => {
                self.set(
                    LinkState::Down("the Network Server did not confirm the link".to_owned()),
                    readiness,
                );
                return false;
            }
            None => {
                self.set(
                    LinkState::Down("the Network Server closed the link".to_owned()),
                    readiness,
                );
                return false;
            }
        }
        // Frames for the applications (uplinks, queue results) are handled by the AS
        // pipeline, which arrives with the Application Server issue.
        let reason = loop {
            match responses.next().await {
                Some(Ok(_frame)) => {}
                Some(Err(status)) => break describe(&status),
                None => break "the Network Server closed the link".to_owned(),
            }
        };
        drop(tx);
        self.set(LinkState::Down(reason), readiness);
        true
    }
}

/// `PERMISSION_DENIED: API key of application `b` may not act on application `a``.
fn describe(status: &tonic::Status) -> String {
    format!("{:?}: {}", status.code(), status.message())
}
