//! The AS end of the AS↔NS link: open it, keep it open, and say how it is doing.
//!
//! The AS always dials (the NS never needs its address), so an AS behind NAT or under
//! another operator links the same way as one in the same process. A refused or broken link
//! is retried with exponential backoff; its state is the AS's readiness, so `/readyz` shows
//! why an AS is not linked (e.g. the NS's `PERMISSION_DENIED` message).
//!
//! Delivery is at least once from the NS, exactly once to the integrations while this
//! process lives: every message carries its NS instance and a sequence number per
//! application; the AS remembers the last one it handed on per (NS instance, application),
//! skips resends up to it, and acknowledges cumulatively (every [`ACK_EVERY`] messages or
//! after [`ACK_INTERVAL`]) so that the NS deletes them from its outbox. An acknowledgement
//! lost with a link only means a resend, which is skipped.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tern_api::v3;
use tern_cluster::auth::Caller;
use tern_cluster::links::{AsNs, LinkResult};
use tern_cluster::role::{ReadinessSignal, Shutdown};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::UnboundedReceiverStream;
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

/// Processes what the Network Server sends for an application. `handle` returns once the
/// message is durably handed on (stored or published); only then is it acknowledged, so an
/// error makes the NS resend it after a relink.
#[async_trait::async_trait]
pub trait UpHandler: Send + Sync + 'static {
    /// Handles one message.
    async fn handle(&self, up: v3::ApplicationUp) -> anyhow::Result<()>;
}

/// How long a queue operation may wait for its result.
const QUEUE_OPERATION_TIMEOUT: Duration = Duration::from_secs(15);

/// Handed-on messages after which the AS acknowledges at once.
pub const ACK_EVERY: usize = 64;
/// Longest wait before a handed-on message is acknowledged.
pub const ACK_INTERVAL: Duration = Duration::from_millis(100);

/// (NS instance, application): the scope of a sequence number.
type Stream = (String, String);

type Requests = mpsc::UnboundedSender<LinkResult<v3::LinkRequest>>;

/// Keeps the link to the Network Server open until shutdown.
pub struct Linker {
    ns: Arc<dyn AsNs>,
    config: LinkConfig,
    instance_id: String,
    state: watch::Sender<LinkState>,
    handler: Option<Arc<dyn UpHandler>>,
    current: Mutex<Option<Requests>>,
    pending: Mutex<HashMap<u64, oneshot::Sender<v3::DownlinkQueueOperationResult>>>,
    next_operation: AtomicU64,
    /// The last sequence handed on, per (NS instance, application).
    processed: Mutex<HashMap<Stream, u64>>,
}

impl Linker {
    /// A linker to `ns` (in-process or gRPC) for `config`, naming itself `instance_id`, that
    /// drops what the NS sends (no pipeline).
    pub fn new(ns: Arc<dyn AsNs>, config: LinkConfig, instance_id: String) -> Self {
        Self::with_handler(ns, config, instance_id, None)
    }

    /// A linker that hands every message of the NS to `handler`.
    pub fn with_handler(
        ns: Arc<dyn AsNs>,
        config: LinkConfig,
        instance_id: String,
        handler: Option<Arc<dyn UpHandler>>,
    ) -> Self {
        Self {
            ns,
            config,
            instance_id,
            state: watch::Sender::new(LinkState::Starting),
            handler,
            current: Mutex::new(None),
            pending: Mutex::new(HashMap::new()),
            next_operation: AtomicU64::new(1),
            processed: Mutex::new(HashMap::new()),
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

    /// Sends a downlink queue operation on the link and waits for its result.
    /// `UNAVAILABLE` when the link is down or breaks before the result arrives.
    pub async fn queue_operation(
        &self,
        mut operation: v3::DownlinkQueueOperation,
    ) -> Result<v3::DownlinkQueueOperationResult, tonic::Status> {
        let id = self.next_operation.fetch_add(1, Ordering::Relaxed);
        operation.operation_id = id;
        let (tx, rx) = oneshot::channel();
        let sender = self.current.lock().expect("link lock").clone();
        let Some(sender) = sender else {
            return Err(tonic::Status::unavailable(
                "not linked to the Network Server",
            ));
        };
        self.pending.lock().expect("pending lock").insert(id, tx);
        let frame = v3::LinkRequest {
            frame: Some(v3::link_request::Frame::QueueOperation(operation)),
        };
        if sender.send(Ok(frame)).is_err() {
            self.pending.lock().expect("pending lock").remove(&id);
            return Err(tonic::Status::unavailable(
                "the link to the Network Server closed",
            ));
        }
        match tokio::time::timeout(QUEUE_OPERATION_TIMEOUT, rx).await {
            Ok(Ok(result)) => Ok(result),
            Ok(Err(_)) => Err(tonic::Status::unavailable(
                "the link to the Network Server closed before the queue operation was answered",
            )),
            Err(_) => {
                self.pending.lock().expect("pending lock").remove(&id);
                Err(tonic::Status::deadline_exceeded(format!(
                    "the Network Server did not answer the queue operation within {}s",
                    QUEUE_OPERATION_TIMEOUT.as_secs()
                )))
            }
        }
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
                linked = self.clone().link_once(&readiness) => linked,
                () = shutdown.wait() => {
                    self.close_link();
                    return;
                }
            };
            self.close_link();
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

    /// Forgets the link's sender and fails the operations waiting on it.
    fn close_link(&self) {
        self.current.lock().expect("link lock").take();
        self.pending.lock().expect("pending lock").clear();
    }

    /// One link: open, wait for `LinkEstablished`, then read until it ends. Returns whether
    /// the link was established.
    async fn link_once(self: Arc<Self>, readiness: &ReadinessSignal) -> bool {
        let (tx, rx) = mpsc::unbounded_channel::<LinkResult<v3::LinkRequest>>();
        // Each NS skips what it sent and this AS handed on; it ignores other instances'.
        let acknowledged = self
            .processed
            .lock()
            .expect("ack lock")
            .iter()
            .filter(|((ns, _), _)| !ns.is_empty())
            .map(|((ns, app), seq)| link_ack(ns, app, *seq))
            .collect();
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
            acknowledged,
        };
        let _ = tx.send(Ok(v3::LinkRequest {
            frame: Some(v3::link_request::Frame::Start(start)),
        }));
        // In-process the AS is a cluster peer; over gRPC the channel's credentials decide.
        let mut responses = match self
            .ns
            .link_application(Caller::Cluster, Box::pin(UnboundedReceiverStream::new(rx)))
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
                *self.current.lock().expect("link lock") = Some(tx.clone());
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
        // Messages are processed in order by one task, so that the read loop stays free to
        // deliver queue results the processing may wait for.
        let (up_tx, mut up_rx) = mpsc::unbounded_channel::<v3::SequencedApplicationUp>();
        let (failed_tx, mut failed_rx) = mpsc::channel::<String>(1);
        let processor = {
            let this = self.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                // Acknowledgements not sent yet, cumulative per stream.
                let mut unsent: HashMap<Stream, u64> = HashMap::new();
                let mut count = 0;
                let mut deadline: Option<tokio::time::Instant> = None;
                let flush = |unsent: &mut HashMap<Stream, u64>| {
                    for ((ns, app), sequence) in unsent.drain() {
                        let _ = tx.send(Ok(v3::LinkRequest {
                            frame: Some(v3::link_request::Frame::Ack(link_ack(
                                &ns, &app, sequence,
                            ))),
                        }));
                    }
                };
                loop {
                    let next = match deadline {
                        Some(at) => tokio::select! {
                            next = up_rx.recv() => next,
                            () = tokio::time::sleep_until(at) => {
                                flush(&mut unsent);
                                (count, deadline) = (0, None);
                                continue;
                            }
                        },
                        None => up_rx.recv().await,
                    };
                    let Some(sequenced) = next else {
                        flush(&mut unsent);
                        return;
                    };
                    let Some(up) = sequenced.up else { continue };
                    let app = up
                        .end_device_ids
                        .as_ref()
                        .and_then(|ids| ids.application_ids.as_ref())
                        .map(|a| a.application_id.clone())
                        .unwrap_or_default();
                    let stream = (sequenced.ns_instance_id, app);
                    let done = sequenced.sequence != 0
                        && this
                            .processed
                            .lock()
                            .expect("ack lock")
                            .get(&stream)
                            .is_some_and(|&seq| sequenced.sequence <= seq);
                    if done {
                        debug!(ns = %stream.0, application_id = %stream.1, sequence = sequenced.sequence, "resent message already handed on: skipped");
                    } else {
                        if let Some(handler) = &this.handler
                            && let Err(e) = handler.handle(up).await
                        {
                            // Not acknowledged: the NS resends it after the relink.
                            flush(&mut unsent);
                            let _ = failed_tx
                                .send(format!(
                                    "processing a message of `{}` failed: {e:#}",
                                    stream.1
                                ))
                                .await;
                            return;
                        }
                        this.processed
                            .lock()
                            .expect("ack lock")
                            .insert(stream.clone(), sequenced.sequence);
                    }
                    let acked = unsent.entry(stream).or_default();
                    *acked = (*acked).max(sequenced.sequence);
                    count += 1;
                    deadline.get_or_insert_with(|| tokio::time::Instant::now() + ACK_INTERVAL);
                    if count >= ACK_EVERY {
                        flush(&mut unsent);
                        (count, deadline) = (0, None);
                    }
                }
            })
        };
        let reason = loop {
            tokio::select! {
                frame = responses.next() => match frame {
                    Some(Ok(v3::LinkResponse { frame: Some(v3::link_response::Frame::Up(up)) })) => {
                        let _ = up_tx.send(up);
                    }
                    Some(Ok(v3::LinkResponse { frame: Some(v3::link_response::Frame::QueueResult(result)) })) => {
                        let waiter = self.pending.lock().expect("pending lock").remove(&result.operation_id);
                        if let Some(waiter) = waiter {
                            let _ = waiter.send(result);
                        }
                    }
                    Some(Ok(v3::LinkResponse { frame: Some(v3::link_response::Frame::AckRefused(refused)) })) => {
                        // The NS keeps the messages and resends them.
                        let error = refused.error.unwrap_or_default();
                        warn!(reason = %error.name, error = %error.message, "the Network Server refused an acknowledgement");
                        // Remembered beyond what the NS sent (its store was restored): what
                        // it sends next is new, so the memory goes back to its last number.
                        if let (Some(ack), Some(last)) = (
                            refused.ack.filter(|_| error.name == "ahead"),
                            error.attributes.get("last").and_then(|l| l.parse::<u64>().ok()),
                        ) {
                            let app = ack.application_ids.map(|a| a.application_id).unwrap_or_default();
                            let mut processed = self.processed.lock().expect("ack lock");
                            if let Some(seq) = processed.get_mut(&(ack.ns_instance_id, app)) {
                                *seq = (*seq).min(last);
                            }
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(status)) => break describe(&status),
                    None => break "the Network Server closed the link".to_owned(),
                },
                Some(reason) = failed_rx.recv() => break reason,
            }
        };
        processor.abort();
        let _ = processor.await;
        drop(tx);
        self.set(LinkState::Down(reason), readiness);
        true
    }
}

/// An acknowledgement of `application_id`'s messages of NS instance `ns` up to `sequence`.
fn link_ack(ns: &str, application_id: &str, sequence: u64) -> v3::LinkAck {
    v3::LinkAck {
        application_ids: Some(v3::ApplicationIdentifiers {
            application_id: application_id.to_owned(),
        }),
        sequence,
        ns_instance_id: ns.to_owned(),
    }
}

/// `PERMISSION_DENIED: API key of application `b` may not act on application `a``.
fn describe(status: &tonic::Status) -> String {
    format!("{:?}: {}", status.code(), status.message())
}
