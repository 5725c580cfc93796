//! The NS end of the AS↔NS link: who holds the link of which application, and the
//! persisted outbox that makes delivery at-least-once across link drops and NS crashes.
//!
//! An Application Server opens the link (a bidirectional gRPC stream, or an in-process call)
//! and names the applications it serves in its first frame. The hub checks the caller may
//! link each of them (cluster peers may link any; an API key only its own application, with
//! `application:link`), refuses an application another AS already holds (naming the
//! holder), and streams that application's messages to it. One AS holds an application at a
//! time; a link for all applications (a cluster AS) serves every application no specific
//! link holds.
//!
//! # Acknowledged delivery
//!
//! Every message for an application (uplink, join-accept, downlink event) gets the next
//! sequence number of its application and is written to the outbox ([`LINK_BACKLOG`]) by one
//! writer task, many messages per group commit, before any link sends it. A pump task per
//! link sends, in sequence order, every stored message of its applications after the last
//! one the AS acknowledged, then the new ones as they are committed. The AS acknowledges
//! cumulatively (`LinkAck`) once it has handed messages on; only then are they deleted,
//! by the writer task with its next batch (the outbox forgets them at once). On (re)link,
//! or after an NS restart on the same store, everything unacknowledged (or acknowledged
//! but not yet deleted) is sent again; the AS drops what it already processed by
//! (`ns_instance_id`, sequence).
//!
//! An accepted uplink is not handed over but staged ([`LinkHub::stage`]): its outbox record
//! is committed in the same batch as the device's new FCnt, so a crash keeps both or neither.
//! Numbers are handed out before commits finish, which may finish out of order: a message
//! is sent only once every lower number of its application is committed or given up.
//!
//! What a crash can lose: only messages handed to [`LinkHub::deliver`] (downlink events,
//! join-accepts) whose outbox commit had not completed (at most one group commit's worth, a
//! few milliseconds; [`LinkHub::flush`] waits for them at shutdown). Nothing committed is deleted unless the AS acknowledged it
//! or the outbox overflowed (`network-server.link.outbox-limit`), which drops the oldest
//! with an `ns.link.drop` event and `tern_ns_link_dropped_total{reason="outbox_full"}`.
//! In-process, frames go through channels as prost structs; only the outbox copy is encoded.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use async_trait::async_trait;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use prost::Message;
use tern_api::v3;
use tern_cluster::auth::{Caller, RIGHT_APPLICATION_LINK};
use tern_cluster::links::{AsNs, BoxStream, LinkResult};
use tern_cluster::role::Shutdown;
use tern_events::{Event, EventBus};
use tern_store::{Batch, Expect, Store, StoreError, Table};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use tracing::{debug, info, warn};

/// How long an AS has to send its `LinkStart` after opening the stream.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);

/// `ns.link.drop`: messages left the outbox without an acknowledgement (outbox full, or
/// the store refused them); the data says how many and why. Defined in the event catalogue.
pub use tern_events::definitions::NS_LINK_DROP;

/// Frames that may wait for a slow AS; beyond, the pump waits (only this link slows down).
const LINK_BUFFER: usize = 1024;
/// Messages per outbox commit at most.
const WRITE_BATCH: usize = 512;
/// Messages waiting for the outbox writer; beyond, `deliver` waits (backpressure).
const WRITE_QUEUE: usize = 8192;
/// Committed messages per linked application kept in memory, so that a live link sends
/// without reading (and decoding) them back from the store. Unlinked applications keep none
/// (their backlog is in the store only), so memory does not grow with them.
const RECENT: usize = 32;
/// Shortest time between two logs of an application's drops (each drop is still counted
/// and published as an event).
const DROP_LOG_EVERY: Duration = Duration::from_secs(1);

/// When drops were last logged, and how many came since.
type DropLog = (Option<std::time::Instant>, u64);
/// Messages read from the store per page when a link catches up.
const READ_PAGE: usize = 256;
/// Waits between attempts to commit an outbox write.
const RETRIES: [Duration; 3] = [
    Duration::from_millis(20),
    Duration::from_millis(200),
    Duration::from_secs(1),
];

/// The outbox: unacknowledged messages, by `{ns instance}/{application_id}/{sequence}`
/// (sequence in 20 digits, so that keys sort by sequence; `/` and `%` of the instance ID
/// escaped).
pub static LINK_BACKLOG: Table = Table {
    name: "ns.link-backlog",
    what: "NS link outbox message",
};

/// Outbox bookkeeping: `{ns instance}` → the epoch of its sequence numbers (random, made
/// once), `{ns instance}/{application_id}` → the last acknowledged sequence (so that
/// numbering continues after every message was acknowledged and deleted).
pub static LINK_OUTBOX_STATE: Table = Table {
    name: "ns.link-outbox-state",
    what: "NS link outbox state",
};

/// Who holds a link.
#[derive(Debug, Clone)]
struct Holder {
    link_id: u64,
    instance_id: String,
    tx: mpsc::Sender<LinkResult<v3::LinkResponse>>,
}

#[derive(Default)]
struct Links {
    by_application: HashMap<String, Holder>,
    all: Option<Holder>,
}

type ReasonFamily = Family<[(&'static str, &'static str); 1], Counter>;

/// Link metrics, registered under `tern_ns_`.
#[derive(Clone, Default)]
struct LinkMetrics {
    active: Gauge,
    refused: ReasonFamily,
    written: Counter,
    acknowledged: Counter,
    dropped: ReasonFamily,
    ack_refused: ReasonFamily,
}

/// Answers the downlink queue operations that arrive on links.
#[async_trait]
pub trait QueueHandler: Send + Sync + 'static {
    /// Applies one operation; failures are in the result's `error`.
    async fn queue_operation(
        &self,
        op: v3::DownlinkQueueOperation,
    ) -> v3::DownlinkQueueOperationResult;
    /// A device's queue.
    async fn queue_list(
        &self,
        device: &v3::EndDeviceIdentifiers,
    ) -> Result<v3::ApplicationDownlinks, Status>;
}

/// How the hub of a running NS keeps its outbox.
#[derive(Clone)]
pub struct LinkOptions {
    /// Messages per application kept until acknowledged (`network-server.link.outbox-limit`).
    pub outbox_limit: usize,
    /// This NS instance's name: outbox keys and sequence numbers are per instance, so that
    /// several NS instances can share a store.
    pub instance_id: String,
    /// Where `ns.link.drop` events go.
    pub events: EventBus,
}

/// The outbox of one application, as the last acknowledgement and commit left it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutboxState {
    /// The last sequence number committed to the outbox (and so sendable).
    pub last: u64,
    /// The last sequence number the AS acknowledged.
    pub acknowledged: u64,
    /// Messages still in the outbox (committed, neither acknowledged nor dropped).
    pub kept: u64,
}

/// What a hub of a running NS has: its store (for the outbox) and its queue handler.
struct Attached {
    store: Store,
    handler: Arc<dyn QueueHandler>,
    options: LinkOptions,
    outbox: tokio::sync::OnceCell<Arc<Outbox>>,
}

/// The applications linked to this Network Server, and to which AS.
#[derive(Clone, Default)]
pub struct LinkHub {
    links: Arc<Mutex<Links>>,
    next_id: Arc<AtomicU64>,
    metrics: LinkMetrics,
    closing: Shutdown,
    attached: Arc<OnceLock<Attached>>,
    /// Sequence numbers of a hub without a store (nothing is kept).
    unattached_sequences: Arc<Mutex<HashMap<String, u64>>>,
}

type Frame = v3::SequencedApplicationUp;

/// One application's part of the outbox.
#[derive(Default)]
struct AppOutbox {
    /// Last sendable sequence: committed, and so is (or was given up) every lower one.
    last: u64,
    /// Last sequence handed out (`>= last`).
    next: u64,
    /// Sequences handed out above `last` and not yet released: `None` while their commit
    /// runs, the frame once committed (it waits for the lower ones, so that an AS's
    /// cumulative acknowledgement never covers a message it has not been sent).
    inflight: BTreeMap<u64, Option<Arc<Frame>>>,
    /// Last acknowledged sequence.
    acked: u64,
    /// Lowest sequence that may still be stored; the stored ones are `oldest..=last`
    /// (acknowledgements and drops only ever remove the oldest).
    oldest: u64,
    /// The newest committed, unacknowledged messages, in order.
    recent: VecDeque<Arc<v3::SequencedApplicationUp>>,
}

impl AppOutbox {
    fn kept(&self) -> u64 {
        (self.last + 1).saturating_sub(self.oldest.max(self.acked + 1))
    }

    /// Settles a sequence handed out by [`Outbox::reserve`]: committed (with its frame) or
    /// given up (`None`, a gap). Then releases, in order, every committed frame no lower
    /// unsettled sequence holds back.
    fn settle(&mut self, sequence: u64, frame: Option<Arc<Frame>>, linked: bool) {
        match frame {
            Some(f) => {
                self.inflight.insert(sequence, Some(f));
            }
            None => {
                self.inflight.remove(&sequence);
            }
        }
        while let Some(entry) = self.inflight.first_entry() {
            let Some(frame) = entry.get().clone() else {
                self.last = self.last.max(entry.key() - 1);
                return;
            };
            entry.remove();
            self.last = frame.sequence;
            if linked {
                self.recent.push_back(frame);
                if self.recent.len() > RECENT {
                    self.recent.pop_front();
                }
            } else {
                self.recent.clear();
            }
        }
        self.last = self.next;
    }

    /// Forgets everything up to `sequence` (acknowledged or dropped).
    fn forget_through(&mut self, sequence: u64) {
        self.oldest = self.oldest.max(sequence + 1);
        while self.recent.front().is_some_and(|f| f.sequence <= sequence) {
            self.recent.pop_front();
        }
    }
}

// Messages are nearly every input: boxing them would cost an allocation each.
#[allow(clippy::large_enum_variant)]
enum Input {
    Message(String, v3::ApplicationUp),
    /// Acknowledged `from..=through` of an application: delete them from the store.
    Acked(String, u64, u64),
    Flush(oneshot::Sender<()>),
}

/// Why an acknowledgement was refused: (metric reason, gRPC code, message).
type AckRefusal = (&'static str, tonic::Code, String);

/// The persisted outbox of one NS instance.
struct Outbox {
    store: Store,
    /// `{escaped instance}/`.
    prefix: String,
    /// What messages carry as `ns_instance_id`: the instance and the epoch of its numbering.
    stream_id: String,
    limit: u64,
    events: EventBus,
    metrics: LinkMetrics,
    /// The hub's link table: which applications an AS holds now.
    links: Arc<Mutex<Links>>,
    apps: Mutex<HashMap<String, AppOutbox>>,
    /// Bumped after each commit, to wake the pumps.
    written: watch::Sender<u64>,
    input: mpsc::Sender<Input>,
    /// Per application and reason: when a drop was last logged, and the drops since.
    drop_log: Mutex<HashMap<(String, &'static str), DropLog>>,
}

impl Outbox {
    /// Loads the outbox of `options.instance_id` from the store and starts its writer.
    async fn open(
        store: Store,
        options: &LinkOptions,
        metrics: LinkMetrics,
        links: Arc<Mutex<Links>>,
    ) -> Result<Arc<Self>, StoreError> {
        let name = if options.instance_id.is_empty() {
            "ns"
        } else {
            &options.instance_id
        };
        let instance = escape(name);
        let epoch = epoch(&store, &instance).await?;
        let prefix = format!("{instance}/");
        let mut apps: HashMap<String, AppOutbox> = HashMap::new();
        // Acknowledged first: a stored message always follows its application's last ack.
        for record in scan_all(&store, &LINK_OUTBOX_STATE, &prefix).await? {
            let app = &record.key[prefix.len()..];
            let acked = std::str::from_utf8(&record.value)
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
                .unwrap_or(0);
            let a = apps.entry(app.to_owned()).or_default();
            a.acked = acked;
            a.last = a.last.max(acked);
            a.oldest = acked + 1;
        }
        let mut stored: HashMap<String, (u64, u64)> = HashMap::new();
        // Page by page: only the keys matter here, the messages stay in the store.
        let mut after: Option<String> = None;
        loop {
            let page = store
                .scan(&LINK_BACKLOG, &prefix, after.as_deref(), 1000)
                .await?;
            for record in &page.items {
                let Some((app, sequence)) = split_key(&record.key[prefix.len()..]) else {
                    continue;
                };
                let range = stored.entry(app.to_owned()).or_insert((sequence, sequence));
                range.0 = range.0.min(sequence);
                range.1 = range.1.max(sequence);
            }
            match page.next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
        // Acknowledged but still stored: the writer records an acknowledgement with the
        // deletes of its batch, and a crash may have cut off the deletes of earlier ones.
        let mut leftovers = Batch::new();
        for (app, (min, max)) in stored {
            let a = apps.entry(app.clone()).or_default();
            delete_backlog(&mut leftovers, &prefix, &app, min..=a.acked.min(max));
            a.oldest = min.max(a.acked + 1);
            a.last = a.last.max(max);
        }
        if !leftovers.ops.is_empty() {
            store.commit(leftovers).await?;
        }
        for a in apps.values_mut() {
            a.oldest = a.oldest.max(1);
            a.next = a.last;
        }
        let (input, rx) = mpsc::channel(WRITE_QUEUE);
        let outbox = Arc::new(Self {
            store,
            prefix,
            stream_id: format!("{name}~{epoch}"),
            limit: options.outbox_limit.max(1) as u64,
            events: options.events.clone(),
            metrics,
            links,
            apps: Mutex::new(apps),
            written: watch::Sender::new(0),
            input,
            drop_log: Mutex::new(HashMap::new()),
        });
        tokio::spawn(write_loop(Arc::downgrade(&outbox), rx));
        Ok(outbox)
    }

    fn key(&self, application_id: &str, sequence: u64) -> String {
        backlog_key(&self.prefix, application_id, sequence)
    }

    fn state(&self, application_id: &str) -> OutboxState {
        let apps = self.apps.lock().expect("outbox lock");
        apps.get(application_id)
            .map_or(OutboxState::default(), |a| OutboxState {
                last: a.last,
                acknowledged: a.acked,
                kept: a.kept(),
            })
    }

    /// Commits, retrying a failing store a few times (not a closed one).
    async fn commit(&self, batch: Batch) -> Result<(), StoreError> {
        let mut waits = RETRIES.iter();
        loop {
            match self.store.commit_grouped(batch.clone()).await {
                Ok(_) => return Ok(()),
                Err(StoreError::Closed) => return Err(StoreError::Closed),
                Err(e) => match waits.next() {
                    Some(wait) => {
                        debug!(error = %e, "outbox commit failed; retrying");
                        tokio::time::sleep(*wait).await;
                    }
                    None => return Err(e),
                },
            }
        }
    }

    /// Hands out the next sequence number of an application. It must be settled
    /// ([`Outbox::settled`]) before any later message of the application can be sent.
    fn reserve(&self, application_id: &str) -> u64 {
        let mut apps = self.apps.lock().expect("outbox lock");
        let a = match apps.get_mut(application_id) {
            Some(a) => a,
            None => apps.entry(application_id.to_owned()).or_default(),
        };
        a.next = a.next.max(a.last) + 1;
        a.inflight.insert(a.next, None);
        a.next
    }

    /// The frame that carries `up` as `sequence`.
    fn frame(&self, sequence: u64, up: v3::ApplicationUp) -> Arc<Frame> {
        Arc::new(Frame {
            sequence,
            up: Some(up),
            ns_instance_id: self.stream_id.clone(),
        })
    }

    /// Adds the outbox record of `frame` to `batch`.
    fn put(&self, batch: &mut Batch, application_id: &str, frame: &Frame) {
        batch.put(
            &LINK_BACKLOG,
            self.key(application_id, frame.sequence),
            frame.encode_to_vec(),
            Expect::Any,
            Vec::new(),
        );
    }

    /// Numbers, commits and publishes one batch of messages (the writer task only).
    async fn write(&self, inputs: Vec<Input>) {
        let mut flushes = Vec::new();
        let mut frames: Vec<(String, Arc<Frame>)> = Vec::new();
        let mut acked: HashMap<String, Vec<(u64, u64)>> = HashMap::new();
        for input in inputs {
            match input {
                Input::Flush(done) => flushes.push(done),
                Input::Message(app, up) => {
                    let sequence = self.reserve(&app);
                    frames.push((app, self.frame(sequence, up)));
                }
                Input::Acked(app, from, through) => {
                    acked.entry(app).or_default().push((from, through));
                }
            }
        }
        if !acked.is_empty() {
            self.forget_acked(acked).await;
        }
        if !frames.is_empty() {
            let mut batch = Batch::new();
            for (app, frame) in &frames {
                self.put(&mut batch, app, frame);
            }
            match self.commit(batch).await {
                Ok(()) => {
                    let settled = frames
                        .into_iter()
                        .map(|(app, f)| (app, f.sequence, Some(f)))
                        .collect();
                    self.settled(settled).await;
                }
                Err(e) => {
                    // Nothing was stored or sent: the numbers become gaps.
                    let mut by_app: HashMap<String, u64> = HashMap::new();
                    for (app, _) in &frames {
                        *by_app.entry(app.clone()).or_default() += 1;
                    }
                    self.settle(
                        frames
                            .iter()
                            .map(|(app, f)| (app.clone(), f.sequence, None))
                            .collect(),
                    );
                    self.written.send_modify(|g| *g += 1);
                    for (app, n) in by_app {
                        self.dropped(
                            &app,
                            "store_error",
                            n,
                            format!(
                                "{n} messages for application {app:?} could not be written to the link outbox: {e}"
                            ),
                        );
                    }
                }
            }
        }
        for done in flushes {
            let _ = done.send(());
        }
    }

    /// Settles reserved sequences (see [`AppOutbox::settle`]); returns the applications
    /// touched. The caller wakes the pumps.
    fn settle(&self, items: Vec<(String, u64, Option<Arc<Frame>>)>) -> Vec<String> {
        let linked: HashMap<String, bool> = {
            let links = self.links.lock().expect("link table lock");
            items
                .iter()
                .map(|(app, _, _)| {
                    let linked = links.all.is_some() || links.by_application.contains_key(app);
                    (app.clone(), linked)
                })
                .collect()
        };
        let mut apps = self.apps.lock().expect("outbox lock");
        for (app, sequence, frame) in items {
            let a = apps.entry(app.clone()).or_default();
            a.oldest = a.oldest.max(1);
            a.settle(sequence, frame, linked.get(&app).copied().unwrap_or(false));
        }
        linked.into_keys().collect()
    }

    /// Settles committed (or given up) sequences, drops the oldest messages beyond the
    /// limit, and wakes the pumps.
    async fn settled(&self, items: Vec<(String, u64, Option<Arc<Frame>>)>) {
        let committed = items.iter().filter(|(_, _, f)| f.is_some()).count();
        self.metrics.written.inc_by(committed as u64);
        let touched = self.settle(items);
        let over: Vec<(String, u64, u64)> = {
            let mut apps = self.apps.lock().expect("outbox lock");
            touched
                .into_iter()
                .filter_map(|app| {
                    let a = apps.get_mut(&app)?;
                    if a.kept() <= self.limit {
                        return None;
                    }
                    let (from, through) = (a.oldest.max(a.acked + 1), a.last - self.limit);
                    // Claimed before the delete commits: concurrent callers see the outbox
                    // within its limit and do not evict (and count) the same messages
                    // again, which under overload made each commit evict a growing range.
                    a.forget_through(through);
                    Some((app, from, through))
                })
                .collect()
        };
        for (app, from, through) in over {
            self.evict(&app, from, through).await;
        }
        self.written.send_modify(|g| *g += 1);
    }

    /// Drops `from..=through` of an application's outbox because it is full.
    async fn evict(&self, application_id: &str, from: u64, through: u64) {
        let mut batch = Batch::new();
        delete_backlog(&mut batch, &self.prefix, application_id, from..=through);
        if let Err(e) = self.commit(batch).await {
            // Already forgotten in memory: the records stay in the store, and a restart
            // sends them after all (at least once holds; only the drop is undone).
            warn!(application_id, error = %e, "cannot delete the oldest messages of a full link outbox from the store");
        }
        self.dropped(
            application_id,
            "outbox_full",
            through - from + 1,
            format!(
                "the link outbox of application {application_id:?} is full ({} messages): \
                 dropped unacknowledged sequences {from}..={through}",
                self.limit
            ),
        );
    }

    /// Counts, logs and publishes a drop.
    fn dropped(&self, application_id: &str, reason: &'static str, n: u64, message: String) {
        self.metrics
            .dropped
            .get_or_create(&[("reason", reason)])
            .inc_by(n);
        // Logged at most once a second per application and reason: an overloaded AS
        // makes every new message evict one, which must not flood the log.
        let unlogged = {
            let mut log = self.drop_log.lock().expect("drop log lock");
            let now = std::time::Instant::now();
            let (last, since) = log
                .entry((application_id.to_owned(), reason))
                .or_insert((None, 0));
            *since += n;
            last.is_none_or(|l| now.duration_since(l) >= DROP_LOG_EVERY)
                .then(|| {
                    *last = Some(now);
                    std::mem::take(since)
                })
        };
        if let Some(total) = unlogged {
            warn!(
                application_id,
                reason,
                dropped = n,
                since_last_report = total,
                "{message}"
            );
        }
        let details = v3::ErrorDetails {
            code: if reason == "outbox_full" {
                tonic::Code::ResourceExhausted as u32
            } else {
                tonic::Code::Unavailable as u32
            },
            name: reason.to_owned(),
            message,
            attributes: [
                ("dropped".to_owned(), n.to_string()),
                ("ns_instance_id".to_owned(), self.stream_id.clone()),
            ]
            .into(),
            ..Default::default()
        };
        self.events.publish(
            Event::new(&NS_LINK_DROP)
                .with_identifiers([v3::ApplicationIdentifiers {
                    application_id: application_id.to_owned(),
                }])
                .with_data(&details),
        );
    }

    /// Up to `limit` committed messages after `cursor`, in order: from memory when it
    /// holds them, else from the store. With them, the last sendable sequence when they
    /// were read: when no message comes back, every number up to it is a gap (a message
    /// given up) or acknowledged, and the cursor may move there; not further, since
    /// messages released after the read are not in the answer.
    async fn read_after(
        &self,
        application_id: &str,
        cursor: u64,
        limit: usize,
    ) -> Result<(Vec<Arc<v3::SequencedApplicationUp>>, u64), StoreError> {
        let last = {
            let apps = self.apps.lock().expect("outbox lock");
            let Some(a) = apps.get(application_id) else {
                return Ok((Vec::new(), cursor));
            };
            if cursor >= a.last {
                return Ok((Vec::new(), cursor));
            }
            if a.recent.front().is_some_and(|f| f.sequence <= cursor + 1) {
                let frames = a
                    .recent
                    .iter()
                    .filter(|f| f.sequence > cursor)
                    .take(limit)
                    .cloned()
                    .collect();
                return Ok((frames, a.last));
            }
            a.last
        };
        let page = self
            .store
            .scan(
                &LINK_BACKLOG,
                &format!("{}{application_id}/", self.prefix),
                Some(&self.key(application_id, cursor)),
                limit,
            )
            .await?;
        // Committed records above `last` wait for a lower message still being committed.
        let frames = page
            .items
            .iter()
            .filter_map(|r| match Frame::decode(r.value.as_slice()) {
                Ok(f) => Some(Arc::new(f)),
                Err(e) => {
                    warn!(key = %r.key, error = %e, "undecodable link outbox record skipped");
                    None
                }
            })
            .take_while(|f| f.sequence <= last)
            .collect();
        Ok((frames, last))
    }

    /// Applies a cumulative acknowledgement: the outbox forgets the acknowledged messages at
    /// once, and the writer deletes them from the store with its next batch. Refuses one
    /// ahead of what was committed (nothing changes).
    ///
    /// An AS acknowledges every few dozen messages: one commit each, awaited in turn, fell
    /// behind at ~10,000 messages/s, and the outbox then evicted (as dropped) messages the AS
    /// had long handled. Until the writer commits, a restart resends them: at least once.
    async fn acknowledge(&self, application_id: &str, sequence: u64) -> Result<(), AckRefusal> {
        let from = {
            let mut apps = self.apps.lock().expect("outbox lock");
            let (last, acked, oldest) = apps
                .get(application_id)
                .map_or((0, 0, 1), |a| (a.last, a.acked, a.oldest));
            if sequence > last {
                return Err((
                    "ahead",
                    tonic::Code::OutOfRange,
                    format!(
                        "LinkAck.sequence {sequence} of application {application_id:?} is ahead \
                         of the last sequence this Network Server sent, {last}"
                    ),
                ));
            }
            if sequence <= acked {
                return Ok(());
            }
            let a = apps.entry(application_id.to_owned()).or_default();
            a.acked = sequence;
            a.forget_through(sequence);
            oldest.max(acked + 1)
        };
        self.metrics.acknowledged.inc_by(sequence + 1 - from);
        // Fails only when the writer is gone (closing): the messages stay stored and a
        // restart resends them.
        let _ = self
            .input
            .send(Input::Acked(application_id.to_owned(), from, sequence))
            .await;
        Ok(())
    }

    /// Deletes acknowledged messages from the store and records each application's last
    /// acknowledgement (the writer task only, so the stored one never goes back).
    async fn forget_acked(&self, acked: HashMap<String, Vec<(u64, u64)>>) {
        let mut batch = Batch::new();
        for (app, ranges) in &acked {
            for &(from, through) in ranges {
                delete_backlog(&mut batch, &self.prefix, app, from..=through);
            }
            let last = {
                let apps = self.apps.lock().expect("outbox lock");
                apps.get(app).map_or(0, |a| a.acked)
            };
            batch.put(
                &LINK_OUTBOX_STATE,
                format!("{}{app}", self.prefix),
                last.to_string().into_bytes(),
                Expect::Any,
                Vec::new(),
            );
        }
        if let Err(e) = self.commit(batch).await {
            // Forgotten in memory already: the records stay stored, and a restart resends
            // them (the AS skips what it handled).
            warn!(error = %e, "cannot delete acknowledged messages from the link outbox store");
        }
    }
}

/// The outbox record key of an application's message: `{escaped instance}/{app}/{seq}`,
/// zero-padded so that keys sort in sequence order.
fn backlog_key(prefix: &str, application_id: &str, sequence: u64) -> String {
    format!("{prefix}{application_id}/{sequence:020}")
}

/// Adds the deletes of an application's outbox records `sequences` to `batch`.
fn delete_backlog(
    batch: &mut Batch,
    prefix: &str,
    application_id: &str,
    sequences: std::ops::RangeInclusive<u64>,
) {
    for sequence in sequences {
        batch.delete(
            &LINK_BACKLOG,
            backlog_key(prefix, application_id, sequence),
            Expect::Any,
        );
    }
}

/// The writer task: commits what `deliver` hands over, in batches, in order.
async fn write_loop(outbox: Weak<Outbox>, mut rx: mpsc::Receiver<Input>) {
    let mut inputs = Vec::with_capacity(WRITE_BATCH);
    while rx.recv_many(&mut inputs, WRITE_BATCH).await > 0 {
        let Some(outbox) = outbox.upgrade() else {
            return;
        };
        outbox.write(std::mem::take(&mut inputs)).await;
    }
}

/// The epoch of an instance's numbering: made once, kept in the store. A new store (or a
/// wiped one) gets a new epoch, so an AS never takes its sequence numbers for old ones.
async fn epoch(store: &Store, instance: &str) -> Result<String, StoreError> {
    if let Some(r) = store.get(&LINK_OUTBOX_STATE, instance).await? {
        return Ok(String::from_utf8_lossy(&r.value).into_owned());
    }
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    h.write_u32(std::process::id());
    let epoch = format!("{:016x}", h.finish());
    let mut batch = Batch::new();
    batch.put(
        &LINK_OUTBOX_STATE,
        instance,
        epoch.clone().into_bytes(),
        Expect::Absent,
        Vec::new(),
    );
    match store.commit(batch).await {
        Ok(_) => Ok(epoch),
        // Another hub of the same instance made it first.
        Err(StoreError::AlreadyExists { .. }) => Ok(store
            .get(&LINK_OUTBOX_STATE, instance)
            .await?
            .map(|r| String::from_utf8_lossy(&r.value).into_owned())
            .unwrap_or(epoch)),
        Err(e) => Err(e),
    }
}

async fn scan_all(
    store: &Store,
    table: &'static Table,
    prefix: &str,
) -> Result<Vec<tern_store::Record>, StoreError> {
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store.scan(table, prefix, after.as_deref(), 1000).await?;
        out.extend(page.items);
        match page.next {
            Some(n) => after = Some(n),
            None => return Ok(out),
        }
    }
}

/// `/` and `%` of an instance ID escaped, so that it is one key segment.
fn escape(instance: &str) -> String {
    instance.replace('%', "%25").replace('/', "%2F")
}

/// `{application_id}/{sequence}` → its parts.
fn split_key(rest: &str) -> Option<(&str, u64)> {
    let (app, sequence) = rest.rsplit_once('/')?;
    Some((app, sequence.parse().ok()?))
}

impl std::fmt::Debug for LinkHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkHub")
            .field("linked", &self.linked_applications())
            .finish()
    }
}

impl LinkHub {
    /// A hub with no links and no outbox (messages go to a linked AS or are dropped,
    /// counted); [`LinkHub::attach`] gives it its outbox.
    pub fn new() -> Self {
        Self::default()
    }

    /// Ends every open link with `UNAVAILABLE` and refuses new ones: at shutdown, so that the
    /// gRPC server can drain (a link stream would otherwise never finish).
    pub fn close_all(&self) {
        self.closing.trigger();
    }

    /// Connects the hub to the NS: messages are kept in the outbox in `store` until
    /// acknowledged (at most `options.outbox_limit` per application), queue operations go
    /// to `handler`. Once only; later calls are ignored. The outbox is loaded on first use.
    pub fn attach(&self, store: Store, handler: Arc<dyn QueueHandler>, options: LinkOptions) {
        let _ = self.attached.set(Attached {
            store,
            handler,
            options,
            outbox: tokio::sync::OnceCell::new(),
        });
    }

    /// The outbox, loaded on first use; `None` without [`LinkHub::attach`].
    async fn outbox(&self) -> Option<Result<Arc<Outbox>, StoreError>> {
        let attached = self.attached.get()?;
        Some(
            attached
                .outbox
                .get_or_try_init(|| {
                    Outbox::open(
                        attached.store.clone(),
                        &attached.options,
                        self.metrics.clone(),
                        self.links.clone(),
                    )
                })
                .await
                .cloned(),
        )
    }

    /// Hands a message for `application_id` to the outbox, which numbers it, commits it
    /// (grouped with others) and then sends it to the AS holding the link, now or when one
    /// links. Returns once the outbox has taken it, not when it is on disk (see the module
    /// documentation for what a crash can lose). Without an outbox, the message is sent
    /// if an AS is linked and otherwise dropped (counted, logged).
    pub async fn deliver(&self, application_id: &str, up: v3::ApplicationUp) {
        match self.outbox().await {
            Some(Ok(outbox)) => {
                if outbox
                    .input
                    .send(Input::Message(application_id.to_owned(), up))
                    .await
                    .is_err()
                {
                    outbox.dropped(
                        application_id,
                        "store_error",
                        1,
                        format!(
                            "the link outbox writer of application {application_id:?} is gone: message dropped"
                        ),
                    );
                }
            }
            Some(Err(e)) => {
                self.metrics
                    .dropped
                    .get_or_create(&[("reason", "store_error")])
                    .inc();
                warn!(application_id, error = %e, "the link outbox cannot be loaded: message dropped");
                if let Some(attached) = self.attached.get() {
                    attached.options.events.publish(
                        Event::new(&NS_LINK_DROP)
                            .with_identifiers([v3::ApplicationIdentifiers {
                                application_id: application_id.to_owned(),
                            }])
                            .with_data(&v3::ErrorDetails {
                                code: tonic::Code::Unavailable as u32,
                                name: "store_error".to_owned(),
                                message: format!("the link outbox cannot be loaded: {e}"),
                                ..Default::default()
                            }),
                    );
                }
            }
            None => {
                let sequence = {
                    let mut sequences = self.unattached_sequences.lock().expect("sequence lock");
                    let s = sequences.entry(application_id.to_owned()).or_insert(0);
                    *s += 1;
                    *s
                };
                let frame = v3::LinkResponse {
                    frame: Some(v3::link_response::Frame::Up(v3::SequencedApplicationUp {
                        sequence,
                        up: Some(up),
                        ns_instance_id: String::new(),
                    })),
                };
                if !self.send(application_id, frame) {
                    self.metrics
                        .dropped
                        .get_or_create(&[("reason", "no_outbox")])
                        .inc();
                    warn!(
                        application_id,
                        sequence,
                        "no Application Server linked and no outbox to keep the message: dropped"
                    );
                }
            }
        }
    }

    /// Numbers a message for `application_id` for the caller to commit in its own batch
    /// ([`Staged::add_to`]), together with the write that produced it, then to release
    /// ([`Staged::committed`]). Without an outbox, the message is only held and
    /// [`Staged::committed`] delivers it as [`LinkHub::deliver`] does.
    pub async fn stage(&self, application_id: &str, up: v3::ApplicationUp) -> Staged {
        match self.outbox().await {
            Some(Ok(outbox)) => {
                let sequence = outbox.reserve(application_id);
                let frame = outbox.frame(sequence, up);
                Staged(Some(StagedInner::Outbox {
                    outbox,
                    application_id: application_id.to_owned(),
                    frame,
                }))
            }
            _ => Staged(Some(StagedInner::Direct {
                hub: self.clone(),
                application_id: application_id.to_owned(),
                up: Box::new(up),
            })),
        }
    }

    /// Loads the outbox now (at start) instead of at first use, so that a store failure
    /// stops the start. Nothing to do without [`LinkHub::attach`].
    pub async fn open_outbox(&self) -> Result<(), StoreError> {
        match self.outbox().await {
            Some(Err(e)) => Err(e),
            _ => Ok(()),
        }
    }

    /// Returns once every message handed to [`LinkHub::deliver`] before the call is
    /// committed to the outbox (or dropped, counted): at shutdown, and for tests.
    pub async fn flush(&self) {
        let Some(outbox) = self.attached.get().and_then(|a| a.outbox.get()) else {
            return;
        };
        let (done, wait) = oneshot::channel();
        if outbox.input.send(Input::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }

    /// An application's outbox: last sequence, last acknowledgement, messages kept.
    /// `None` without an outbox (or when it cannot be loaded).
    pub async fn outbox_state(&self, application_id: &str) -> Option<OutboxState> {
        match self.outbox().await {
            Some(Ok(outbox)) => Some(outbox.state(application_id)),
            _ => None,
        }
    }

    /// The `ns_instance_id` this hub's messages carry (`None` without an outbox).
    pub async fn ns_instance_id(&self) -> Option<String> {
        match self.outbox().await {
            Some(Ok(outbox)) => Some(outbox.stream_id.clone()),
            _ => None,
        }
    }

    /// Registers `tern_ns_links_active`, `tern_ns_link_refused_total{reason}`,
    /// `tern_ns_link_outbox_written_total`, `tern_ns_link_acknowledged_total`,
    /// `tern_ns_link_dropped_total{reason}` and `tern_ns_link_ack_refused_total{reason}`.
    pub fn register_metrics(&self, registry: &mut Registry) {
        registry.register(
            "links_active",
            "Application Server links currently open",
            self.metrics.active.clone(),
        );
        registry.register(
            "link_refused",
            "Application Server links refused, by reason",
            self.metrics.refused.clone(),
        );
        registry.register(
            "link_outbox_written",
            "Messages for Application Servers written to the link outbox",
            self.metrics.written.clone(),
        );
        registry.register(
            "link_acknowledged",
            "Outbox messages acknowledged by Application Servers and deleted",
            self.metrics.acknowledged.clone(),
        );
        registry.register(
            "link_dropped",
            "Messages for Application Servers dropped unacknowledged, by reason (outbox_full, store_error, no_outbox)",
            self.metrics.dropped.clone(),
        );
        registry.register(
            "link_ack_refused",
            "Link acknowledgements refused, by reason (malformed, other_instance, not_linked, ahead)",
            self.metrics.ack_refused.clone(),
        );
    }

    /// The applications with a link of their own, sorted.
    pub fn linked_applications(&self) -> Vec<String> {
        let links = self.links.lock().expect("link table lock");
        let mut ids: Vec<String> = links.by_application.keys().cloned().collect();
        ids.sort();
        ids
    }

    /// Whether an AS would receive this application's messages now.
    pub fn is_linked(&self, application_id: &str) -> bool {
        let links = self.links.lock().expect("link table lock");
        links.by_application.contains_key(application_id) || links.all.is_some()
    }

    /// Sends `frame` on the link serving `application_id` now, outside the outbox (not
    /// numbered, not resent); `false` when no AS holds it or its link is full or gone.
    pub fn send(&self, application_id: &str, frame: v3::LinkResponse) -> bool {
        let holder = {
            let links = self.links.lock().expect("link table lock");
            links
                .by_application
                .get(application_id)
                .or(links.all.as_ref())
                .cloned()
        };
        holder.is_some_and(|h| h.tx.try_send(Ok(frame)).is_ok())
    }

    /// Whether link `link_id` is the one serving `application_id`.
    fn serves(&self, link_id: u64, application_id: &str) -> bool {
        let links = self.links.lock().expect("link table lock");
        match links
            .by_application
            .get(application_id)
            .filter(|h| !h.tx.is_closed())
        {
            Some(h) => h.link_id == link_id,
            None => links.all.as_ref().is_some_and(|h| h.link_id == link_id),
        }
    }

    /// Checks and applies an acknowledgement received on link `link_id`.
    async fn apply_ack(
        &self,
        link_id: u64,
        outbox: Option<&Outbox>,
        ack: &v3::LinkAck,
    ) -> Result<(), AckRefusal> {
        let app = ack
            .application_ids
            .as_ref()
            .map_or("", |a| a.application_id.as_str());
        if app.is_empty() {
            return Err((
                "malformed",
                tonic::Code::InvalidArgument,
                "LinkAck.application_ids.application_id is empty".to_owned(),
            ));
        }
        // Without an outbox nothing is kept, so there is nothing to forget.
        let Some(outbox) = outbox else {
            return Ok(());
        };
        // Empty: the instance serving this link (a client that routes acks per NS itself).
        if !ack.ns_instance_id.is_empty() && ack.ns_instance_id != outbox.stream_id {
            return Err((
                "other_instance",
                tonic::Code::FailedPrecondition,
                format!(
                    "LinkAck.ns_instance_id {:?} is not this Network Server's {:?}",
                    ack.ns_instance_id, outbox.stream_id
                ),
            ));
        }
        if !self.serves(link_id, app) {
            return Err((
                "not_linked",
                tonic::Code::PermissionDenied,
                format!("application {app:?} is not linked on this link"),
            ));
        }
        outbox.acknowledge(app, ack.sequence).await
    }

    /// Counts a refused acknowledgement and makes the frame that says why.
    fn ack_refused(&self, ack: &v3::LinkAck, refusal: AckRefusal) -> v3::LinkResponse {
        let (reason, code, message) = refusal;
        self.metrics
            .ack_refused
            .get_or_create(&[("reason", reason)])
            .inc();
        // The AS remembers more than this NS sent (a store restored from a backup): it
        // learns where the numbering really is, so that it does not skip new messages.
        let mut attributes = std::collections::HashMap::new();
        if reason == "ahead"
            && let Some(outbox) = self.attached.get().and_then(|a| a.outbox.get())
            && let Some(app) = ack.application_ids.as_ref()
        {
            attributes.insert(
                "last".to_owned(),
                outbox.state(&app.application_id).last.to_string(),
            );
        }
        warn!(reason, error = %message, "link acknowledgement refused");
        v3::LinkResponse {
            frame: Some(v3::link_response::Frame::AckRefused(v3::LinkAckRefused {
                ack: Some(ack.clone()),
                error: Some(v3::ErrorDetails {
                    code: code as u32,
                    name: reason.to_owned(),
                    message,
                    attributes,
                    ..Default::default()
                }),
            })),
        }
    }

    fn refuse(&self, reason: &'static str, status: Status) -> Status {
        self.metrics
            .refused
            .get_or_create(&[("reason", reason)])
            .inc();
        warn!(reason, error = %status.message(), "application link refused");
        status
    }

    /// Checks and registers a `LinkStart`; returns the link id and the linked applications.
    fn register(
        &self,
        caller: &Caller,
        start: &v3::LinkStart,
        tx: &mpsc::Sender<LinkResult<v3::LinkResponse>>,
    ) -> Result<(u64, Vec<v3::ApplicationIdentifiers>), Status> {
        if start.all_applications && !start.application_ids.is_empty() {
            return Err(self.refuse(
                "invalid_start",
                Status::invalid_argument(
                    "LinkStart names applications and asks for all applications: choose one",
                ),
            ));
        }
        if !start.all_applications && start.application_ids.is_empty() {
            return Err(self.refuse(
                "invalid_start",
                Status::invalid_argument("LinkStart names no application"),
            ));
        }
        if start.all_applications && !caller.is_cluster() {
            return Err(self.refuse(
                "permission_denied",
                Status::permission_denied(
                    "only roles of the cluster may link all applications; an API key links \
                     its own application",
                ),
            ));
        }
        for ids in &start.application_ids {
            if ids.application_id.is_empty() {
                return Err(self.refuse(
                    "invalid_start",
                    Status::invalid_argument("LinkStart has an empty application_id"),
                ));
            }
            caller
                .require_application(&ids.application_id, RIGHT_APPLICATION_LINK)
                .map_err(|e| self.refuse(e.reason(), Status::from(e)))?;
        }
        let instance_id = if start.instance_id.is_empty() {
            "unnamed".to_owned()
        } else {
            start.instance_id.clone()
        };
        let link_id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let holder = Holder {
            link_id,
            instance_id,
            tx: tx.clone(),
        };
        let mut links = self.links.lock().expect("link table lock");
        if start.all_applications {
            if let Some(other) = links.all.as_ref().filter(|h| !h.tx.is_closed()) {
                let message = format!(
                    "all applications are already linked by Application Server instance {:?}",
                    other.instance_id
                );
                drop(links);
                return Err(self.refuse("already_linked", Status::failed_precondition(message)));
            }
            links.all = Some(holder);
            return Ok((link_id, Vec::new()));
        }
        for ids in &start.application_ids {
            if let Some(other) = links
                .by_application
                .get(&ids.application_id)
                .filter(|h| !h.tx.is_closed())
            {
                let message = format!(
                    "application {:?} is already linked by Application Server instance {:?}",
                    ids.application_id, other.instance_id
                );
                drop(links);
                return Err(self.refuse("already_linked", Status::failed_precondition(message)));
            }
        }
        for ids in &start.application_ids {
            links
                .by_application
                .insert(ids.application_id.clone(), holder.clone());
        }
        Ok((link_id, start.application_ids.clone()))
    }

    /// Forgets every entry of link `link_id` (and only those: a newer link stays).
    fn unregister(&self, link_id: u64) {
        let mut links = self.links.lock().expect("link table lock");
        links.by_application.retain(|_, h| h.link_id != link_id);
        if links.all.as_ref().is_some_and(|h| h.link_id == link_id) {
            links.all = None;
        }
    }

    /// Answers one queue operation: through the attached NS, else as unknown device.
    async fn queue_result(
        &self,
        caller: &Caller,
        op: v3::DownlinkQueueOperation,
    ) -> v3::LinkResponse {
        let app = op
            .end_device_ids
            .as_ref()
            .and_then(|d| d.application_ids.as_ref())
            .map(|a| a.application_id.clone())
            .unwrap_or_default();
        if let Err(e) = caller.require_application(&app, RIGHT_APPLICATION_LINK) {
            return v3::LinkResponse {
                frame: Some(v3::link_response::Frame::QueueResult(
                    v3::DownlinkQueueOperationResult {
                        operation_id: op.operation_id,
                        error: Some(v3::ErrorDetails {
                            code: tonic::Code::PermissionDenied as u32,
                            name: e.reason().to_owned(),
                            message: e.to_string(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                )),
            };
        }
        if let Some(attached) = self.attached.get() {
            return v3::LinkResponse {
                frame: Some(v3::link_response::Frame::QueueResult(
                    attached.handler.queue_operation(op).await,
                )),
            };
        }
        Self::unknown_device(&op)
    }

    fn unknown_device(op: &v3::DownlinkQueueOperation) -> v3::LinkResponse {
        let device = op
            .end_device_ids
            .as_ref()
            .map_or("?", |ids| ids.device_id.as_str());
        v3::LinkResponse {
            frame: Some(v3::link_response::Frame::QueueResult(
                v3::DownlinkQueueOperationResult {
                    operation_id: op.operation_id,
                    error: Some(v3::ErrorDetails {
                        code: tonic::Code::NotFound as u32,
                        name: "unknown_session".to_owned(),
                        message: format!("device {device:?} has no session on this Network Server"),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            )),
        }
    }
}

/// A message numbered by [`LinkHub::stage`], not yet committed. Its outbox record goes into
/// the batch that records what produced it (the device write of an accepted uplink), so
/// that after a crash both are in the store or neither is: an uplink whose FCnt was taken
/// is always delivered. Dropped without [`Staged::committed`] (the commit failed), its
/// number becomes a gap that later messages do not wait for.
#[must_use = "a staged message is sent only after `committed`"]
pub struct Staged(Option<StagedInner>);

enum StagedInner {
    Outbox {
        outbox: Arc<Outbox>,
        application_id: String,
        frame: Arc<Frame>,
    },
    Direct {
        hub: LinkHub,
        application_id: String,
        up: Box<v3::ApplicationUp>,
    },
}

impl Staged {
    /// Adds the message's outbox record to `batch` (nothing without an outbox).
    pub fn add_to(&self, batch: &mut Batch) {
        if let Some(StagedInner::Outbox {
            outbox,
            application_id,
            frame,
        }) = &self.0
        {
            outbox.put(batch, application_id, frame);
        }
    }

    /// The batch with [`Staged::add_to`] was committed: the message may be sent (once
    /// every lower sequence of its application is settled).
    pub async fn committed(mut self) {
        match self.0.take() {
            Some(StagedInner::Outbox {
                outbox,
                application_id,
                frame,
            }) => {
                outbox
                    .settled(vec![(application_id, frame.sequence, Some(frame))])
                    .await
            }
            Some(StagedInner::Direct {
                hub,
                application_id,
                up,
            }) => hub.deliver(&application_id, *up).await,
            None => {}
        }
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if let Some(StagedInner::Outbox {
            outbox,
            application_id,
            frame,
        }) = self.0.take()
        {
            outbox.settle(vec![(application_id, frame.sequence, None)]);
            outbox.written.send_modify(|g| *g += 1);
        }
    }
}

impl std::fmt::Debug for Staged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sequence = match &self.0 {
            Some(StagedInner::Outbox { frame, .. }) => Some(frame.sequence),
            _ => None,
        };
        f.debug_struct("Staged")
            .field("sequence", &sequence)
            .finish()
    }
}

/// Sends link `link_id` its applications' outbox in sequence order: first everything after
/// the last acknowledgement, then each commit as it happens. Ends with the link.
async fn pump(
    hub: LinkHub,
    outbox: Arc<Outbox>,
    link_id: u64,
    tx: mpsc::Sender<LinkResult<v3::LinkResponse>>,
    stop: Shutdown,
) {
    let mut written = outbox.written.subscribe();
    // Last sequence sent on this link, per application.
    let mut cursors: HashMap<String, u64> = HashMap::new();
    loop {
        written.borrow_and_update();
        let work: Vec<String> = {
            let apps = outbox.apps.lock().expect("outbox lock");
            apps.iter()
                .filter_map(|(app, a)| {
                    let cursor = cursors.entry(app.clone()).or_insert(a.acked);
                    // Acknowledged elsewhere (another link, LinkStart): no need to send.
                    *cursor = (*cursor).max(a.acked);
                    (a.last > *cursor && hub.serves(link_id, app)).then(|| app.clone())
                })
                .collect()
        };
        for app in work {
            loop {
                let cursor = cursors.get(&app).copied().unwrap_or(0);
                let (frames, upto) = match outbox.read_after(&app, cursor, READ_PAGE).await {
                    Ok(read) => read,
                    Err(e) => {
                        warn!(application_id = %app, error = %e, "cannot read the link outbox; retrying on the next message");
                        break;
                    }
                };
                let Some(last) = frames.last().map(|f| f.sequence) else {
                    // Gaps or acknowledged up to `upto`: skip them, then read on (messages
                    // released meanwhile are above it, and still to send).
                    if upto > cursor {
                        cursors.insert(app.clone(), upto);
                        continue;
                    }
                    break;
                };
                for frame in frames {
                    let response = v3::LinkResponse {
                        frame: Some(v3::link_response::Frame::Up((*frame).clone())),
                    };
                    tokio::select! {
                        sent = tx.send(Ok(response)) => if sent.is_err() { return },
                        () = stop.wait() => return,
                    }
                }
                cursors.insert(app.clone(), last);
                if !hub.serves(link_id, &app) {
                    break;
                }
            }
        }
        tokio::select! {
            changed = written.changed() => if changed.is_err() { return },
            () = stop.wait() => return,
            () = tx.closed() => return,
        }
    }
}

#[async_trait]
impl AsNs for LinkHub {
    async fn link_application(
        &self,
        caller: Caller,
        mut requests: BoxStream<LinkResult<v3::LinkRequest>>,
    ) -> LinkResult<BoxStream<LinkResult<v3::LinkResponse>>> {
        if self.closing.is_triggered() {
            return Err(Status::unavailable("the Network Server is shutting down"));
        }
        let first = tokio::time::timeout(START_TIMEOUT, requests.next())
            .await
            .map_err(|_| {
                self.refuse(
                    "no_start",
                    Status::deadline_exceeded(format!(
                        "no LinkStart within {}s of opening the link",
                        START_TIMEOUT.as_secs()
                    )),
                )
            })?;
        let start = match first {
            Some(Ok(v3::LinkRequest {
                frame: Some(v3::link_request::Frame::Start(start)),
            })) => start,
            Some(Err(status)) => return Err(status),
            None => return Err(Status::cancelled("the link closed before LinkStart")),
            Some(Ok(_)) => {
                return Err(self.refuse(
                    "invalid_start",
                    Status::invalid_argument("the first frame of a link must be LinkStart"),
                ));
            }
        };
        let outbox = match self.outbox().await {
            Some(Ok(outbox)) => Some(outbox),
            Some(Err(e)) => {
                return Err(self.refuse(
                    "store_error",
                    Status::unavailable(format!("the link outbox cannot be loaded: {e}")),
                ));
            }
            None => None,
        };
        let (tx, rx) = mpsc::channel(LINK_BUFFER);
        let (link_id, application_ids) = self.register(&caller, &start, &tx)?;
        self.metrics.active.inc();
        info!(
            link_id,
            instance = %start.instance_id,
            all = start.all_applications,
            applications = ?application_ids.iter().map(|a| a.application_id.as_str()).collect::<Vec<_>>(),
            "application link established"
        );
        let established = v3::LinkResponse {
            frame: Some(v3::link_response::Frame::Established(v3::LinkEstablished {
                application_ids,
                ns_instance_id: outbox
                    .as_ref()
                    .map(|o| o.stream_id.clone())
                    .unwrap_or_default(),
            })),
        };
        // The channel is new and large: the first frame always fits.
        let _ = tx.try_send(Ok(established));
        // What the AS processed before: the pump starts after it.
        for ack in &start.acknowledged {
            // A sharded AS sends every NS all its acknowledgements: others' are not ours.
            if outbox.as_ref().is_some_and(|o| {
                !ack.ns_instance_id.is_empty() && ack.ns_instance_id != o.stream_id
            }) {
                continue;
            }
            if let Err(refusal) = self.apply_ack(link_id, outbox.as_deref(), ack).await {
                let _ = tx.send(Ok(self.ack_refused(ack, refusal))).await;
            }
        }
        let stop = Shutdown::new();
        if let Some(outbox) = outbox.clone() {
            tokio::spawn(pump(
                self.clone(),
                outbox,
                link_id,
                tx.clone(),
                stop.clone(),
            ));
        }

        let hub = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    request = requests.next() => match request {
                        Some(Ok(v3::LinkRequest { frame: Some(v3::link_request::Frame::QueueOperation(op)) })) => {
                            if tx.send(Ok(hub.queue_result(&caller, op).await)).await.is_err() {
                                break;
                            }
                        }
                        // The AS handed messages on: the outbox forgets them.
                        Some(Ok(v3::LinkRequest { frame: Some(v3::link_request::Frame::Ack(ack)) })) => {
                            if let Err(refusal) = hub.apply_ack(link_id, outbox.as_deref(), &ack).await
                                && tx.send(Ok(hub.ack_refused(&ack, refusal))).await.is_err()
                            {
                                break;
                            }
                        }
                        Some(Ok(_)) => {
                            let _ = tx
                                .send(Err(Status::invalid_argument(
                                    "LinkStart may only be sent once, first",
                                )))
                                .await;
                            break;
                        }
                        Some(Err(_)) | None => break,
                    },
                    // The AS stopped reading: the link is gone.
                    () = tx.closed() => break,
                    () = hub.closing.wait() => {
                        let _ = tx.try_send(Err(Status::unavailable(
                            "the Network Server is shutting down",
                        )));
                        break;
                    }
                }
            }
            stop.trigger();
            hub.unregister(link_id);
            hub.metrics.active.dec();
            info!(link_id, "application link closed");
        });
        Ok(Box::pin(ReceiverStream::new(rx)))
    }

    async fn downlink_queue_list(
        &self,
        caller: Caller,
        device: v3::EndDeviceIdentifiers,
    ) -> LinkResult<v3::ApplicationDownlinks> {
        let app = device
            .application_ids
            .as_ref()
            .map(|a| a.application_id.clone())
            .unwrap_or_default();
        caller
            .require_application(&app, RIGHT_APPLICATION_LINK)
            .map_err(Status::from)?;
        if let Some(attached) = self.attached.get() {
            return attached.handler.queue_list(&device).await;
        }
        Err(Status::not_found(format!(
            "device {:?} of application {app:?} has no session on this Network Server",
            device.device_id
        )))
    }
}
