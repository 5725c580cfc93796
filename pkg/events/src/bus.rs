//! The event bus: publish, subscribe, and the per-subscriber queues both backends share.

use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, PoisonError, RwLock, Weak};
use std::task::{Context, Poll};

use futures_util::Stream;
use tern_api::v3;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;

use crate::config::{DEFAULT_BUFFER, EventsConfig};
use crate::definitions::{CATALOGUE_NAMES, Definition, EventData};
use crate::error::EventsError;
use crate::event::Event;
use crate::filter::{Compiled, Filter};
use crate::nats::NatsBus;

/// The event bus of a process. Cloning is cheap; all clones are the same bus.
///
/// In-process by default: events reach the subscriptions of this process. With NATS, every
/// event goes through the NATS server and reaches every matching subscription of every
/// process of the cluster, this one included, exactly once.
#[derive(Clone)]
pub struct EventBus {
    inner: Arc<Inner>,
}

struct Inner {
    backend: Backend,
    counters: Arc<Counters>,
    buffer: usize,
}

enum Backend {
    Local(Arc<Hub>),
    // Boxed: the client is large, and the bus lives behind an Arc anyway.
    Nats(Box<NatsBus>),
}

/// Counters of a bus since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Events built and handed to [`EventBus::publish`] (directly, or by
    /// [`EventBus::publish_with`] when someone could receive them). An event published on an
    /// in-process bus counts even if no subscription matches it in the end (e.g. because of
    /// its entities).
    pub published: u64,
    /// Events [`EventBus::publish_with`] did not even build, because no subscription of an
    /// in-process bus could match their name: nobody could have received them.
    pub skipped: u64,
    /// Events lost before reaching any subscriber: the NATS publish queue was full, or an
    /// event could not be sent to or read from NATS.
    pub dropped: u64,
    /// Events that subscribers missed because they fell behind (each reported to its
    /// subscriber as [`RecvError::Lagged`]).
    pub lagged: u64,
}

#[derive(Default)]
pub(crate) struct Counters {
    published: AtomicU64,
    skipped: AtomicU64,
    pub(crate) dropped: AtomicU64,
    lagged: AtomicU64,
}

impl Counters {
    /// Counts one dropped event; says so in the log at the 1st, 2nd, 4th, 8th, ... drop so
    /// that a flood of drops does not flood the log too.
    pub(crate) fn drop_one(&self, why: &str) {
        let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        if n.is_power_of_two() {
            tracing::warn!(dropped_total = n, "events: dropped an event: {why}");
        }
    }
}

impl EventBus {
    /// An in-process bus; each subscriber may have `buffer` events waiting (at least 1).
    pub fn in_process(buffer: usize) -> Self {
        Self::with_backend(
            Backend::Local(Arc::new(Hub::default())),
            buffer.max(1),
            Arc::default(),
        )
    }

    fn with_backend(backend: Backend, buffer: usize, counters: Arc<Counters>) -> Self {
        Self {
            inner: Arc::new(Inner {
                backend,
                counters,
                buffer,
            }),
        }
    }

    /// The bus `config` describes: NATS when `nats` is set (connected before this returns,
    /// so an unreachable server is an error naming its URL), in-process otherwise.
    pub async fn connect(config: &EventsConfig) -> Result<Self, EventsError> {
        config.validate()?;
        match &config.nats {
            None => Ok(Self::in_process(config.buffer)),
            Some(nats) => {
                let counters = Arc::<Counters>::default();
                let backend = NatsBus::connect(nats, config.buffer, counters.clone()).await?;
                Ok(Self::with_backend(
                    Backend::Nats(Box::new(backend)),
                    config.buffer,
                    counters,
                ))
            }
        }
    }

    /// Publishes an event. Never waits: with NATS, an event that does not fit in the
    /// publish queue is dropped and counted in [`Stats::dropped`].
    pub fn publish(&self, event: impl Into<v3::Event>) {
        let event = Arc::new(event.into());
        self.inner
            .counters
            .published
            .fetch_add(1, Ordering::Relaxed);
        match &self.inner.backend {
            Backend::Local(hub) => hub.dispatch(&event),
            Backend::Nats(nats) => nats.publish(event),
        }
    }

    /// Whether an event of `definition` could reach anyone: with NATS always (subscribers
    /// in other processes are unknown here); in-process, whether some subscription's name
    /// patterns match its name (entities are not considered). Cheap enough for every
    /// uplink: for catalogued definitions one atomic load, no lock, no allocation.
    ///
    /// A subscription made after this returned false only receives later events anyway.
    pub fn wants<M>(&self, definition: &Definition<M>) -> bool {
        match &self.inner.backend {
            Backend::Local(hub) => hub.wants(definition.index(), definition.name()),
            Backend::Nats(_) => true,
        }
    }

    /// Publishes an event of `definition`, built by `build` from [`Event::new`], when
    /// [`wants`](Self::wants) says someone could receive it; otherwise builds nothing (no
    /// ULID, no clock, no data conversion) and counts it in [`Stats::skipped`].
    /// Subscribers see exactly what `publish(build(Event::new(definition)))` gives them.
    ///
    /// ```
    /// use tern_api::v3;
    /// use tern_events::{EventBus, definitions::NS_UP_DATA_RECEIVE};
    ///
    /// let bus = EventBus::in_process(8);
    /// let up = v3::UplinkMessage::default();
    /// bus.publish_with(&NS_UP_DATA_RECEIVE, |e| e.with_data(&up));
    /// assert_eq!(bus.stats().skipped, 1);
    /// ```
    pub fn publish_with<M: EventData>(
        &self,
        definition: &Definition<M>,
        build: impl FnOnce(Event<M>) -> Event<M>,
    ) {
        if let Some(event) = self.prepare(definition, build) {
            self.publish(event);
        }
    }

    /// Like [`publish_with`](Self::publish_with), for an event to publish later (e.g. once
    /// its data is no longer at hand, or once a write succeeded): the event `build` makes
    /// from [`Event::new`] if [`wants`](Self::wants) says someone could receive it; `None`,
    /// counted in [`Stats::skipped`], otherwise.
    pub fn prepare<M: EventData>(
        &self,
        definition: &Definition<M>,
        build: impl FnOnce(Event<M>) -> Event<M>,
    ) -> Option<Event<M>> {
        if self.wants(definition) {
            Some(build(Event::new(definition)))
        } else {
            self.inner.counters.skipped.fetch_add(1, Ordering::Relaxed);
            None
        }
    }

    /// Subscribes to the events that pass `filter`, from now on: every matching event
    /// published after this returns (by any process, with NATS) is delivered.
    pub async fn subscribe(&self, filter: Filter) -> Result<Subscription, EventsError> {
        let filter = filter.compile()?;
        let (tx, rx) = mpsc::channel(self.inner.buffer);
        let missed = Arc::new(AtomicU64::new(0));
        let slot = Slot {
            tx,
            missed: missed.clone(),
            counters: self.inner.counters.clone(),
        };
        let guard = match &self.inner.backend {
            Backend::Local(hub) => Guard::Local {
                hub: Arc::downgrade(hub),
                id: hub.add(filter, slot),
            },
            Backend::Nats(nats) => Guard::Task(nats.subscribe(filter, slot).await?),
        };
        Ok(Subscription {
            rx,
            missed,
            _guard: guard,
        })
    }

    /// Waits until every event published so far has been handed to the NATS server (a
    /// no-op in-process). Call it before a process exits.
    pub async fn flush(&self) -> Result<(), EventsError> {
        match &self.inner.backend {
            Backend::Local(_) => Ok(()),
            Backend::Nats(nats) => nats.flush().await,
        }
    }

    /// Whether the bus can carry events, for `/readyz`: always in-process; with NATS, only
    /// while connected (async-nats reconnects by itself; the error says to what and how).
    pub fn health(&self) -> Result<(), String> {
        match &self.inner.backend {
            Backend::Local(_) => Ok(()),
            Backend::Nats(nats) => nats.health(),
        }
    }

    /// The counters since the bus started.
    pub fn stats(&self) -> Stats {
        let c = &self.inner.counters;
        Stats {
            published: c.published.load(Ordering::Relaxed),
            skipped: c.skipped.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            lagged: c.lagged.load(Ordering::Relaxed),
        }
    }

    /// The NATS backend, if that is what the bus is.
    pub(crate) fn nats(&self) -> Option<&NatsBus> {
        match &self.inner.backend {
            Backend::Local(_) => None,
            Backend::Nats(nats) => Some(nats),
        }
    }

    /// `"in-process"` or `"nats"`.
    pub fn kind(&self) -> &'static str {
        match &self.inner.backend {
            Backend::Local(_) => "in-process",
            Backend::Nats(_) => "nats",
        }
    }
}

impl Default for EventBus {
    /// An in-process bus with the default buffer.
    fn default() -> Self {
        Self::in_process(DEFAULT_BUFFER)
    }
}

impl fmt::Debug for EventBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("EventBus");
        d.field("kind", &self.kind());
        if let Backend::Nats(nats) = &self.inner.backend {
            d.field("url", &nats.url());
        }
        d.field("buffer", &self.inner.buffer)
            .field("stats", &self.stats())
            .finish()
    }
}

/// The queue of one subscription, as its feeder (the hub or a NATS task) sees it.
pub(crate) struct Slot {
    tx: mpsc::Sender<Arc<v3::Event>>,
    missed: Arc<AtomicU64>,
    counters: Arc<Counters>,
}

impl Slot {
    /// Queues `event` without waiting; a full queue counts it as missed. Returns false once
    /// the subscription is gone.
    pub(crate) fn offer(&self, event: Arc<v3::Event>) -> bool {
        match self.tx.try_send(event) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                self.missed.fetch_add(1, Ordering::Relaxed);
                self.counters.lagged.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(TrySendError::Closed(_)) => false,
        }
    }
}

type Subscribers = Vec<(u64, Compiled, Slot)>;

/// The in-process fan-out: every subscription's filter and queue.
struct Hub {
    next_id: AtomicU64,
    subscribers: RwLock<Subscribers>,
    /// Bit `i` (word `i / 64`): some subscription's name patterns match
    /// `CATALOGUE_NAMES[i]`. Rewritten under the write lock of `subscribers` whenever a
    /// subscription comes or goes, so that [`Hub::wants`] is one load, without the lock.
    wanted: Box<[AtomicU64]>,
    /// How many subscriptions there are, for definitions outside the catalogue.
    count: AtomicUsize,
}

impl Default for Hub {
    fn default() -> Self {
        Self {
            next_id: AtomicU64::new(0),
            subscribers: RwLock::default(),
            wanted: (0..CATALOGUE_NAMES.len().div_ceil(64))
                .map(|_| AtomicU64::new(0))
                .collect(),
            count: AtomicUsize::new(0),
        }
    }
}

impl Hub {
    fn add(&self, filter: Compiled, slot: Slot) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut subscribers = self
            .subscribers
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        subscribers.push((id, filter, slot));
        // Before `subscribe` returns: every later event of a matching name is wanted.
        self.refresh(&subscribers);
        id
    }

    fn remove(&self, id: u64) {
        let mut subscribers = self
            .subscribers
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        subscribers.retain(|(i, _, _)| *i != id);
        self.refresh(&subscribers);
    }

    /// Recomputes `wanted` and `count` from `subscribers` (held under the write lock, so
    /// that concurrent changes cannot store an older picture last).
    fn refresh(&self, subscribers: &Subscribers) {
        for (w, word) in self.wanted.iter().enumerate() {
            let mut bits = 0u64;
            for (b, name) in CATALOGUE_NAMES.iter().enumerate().skip(w * 64).take(64) {
                if subscribers.iter().any(|(_, f, _)| f.names_match(name)) {
                    bits |= 1 << (b % 64);
                }
            }
            word.store(bits, Ordering::Release);
        }
        self.count.store(subscribers.len(), Ordering::Release);
    }

    /// Whether a subscription's name patterns match the event `name` (at catalogue
    /// position `index`, if any).
    fn wants(&self, index: Option<usize>, name: &str) -> bool {
        // A definition made with `Definition::new` may still carry a catalogued name (the
        // NS's MAC command events do).
        match index.or_else(|| catalogue_index(name)) {
            Some(i) => self.wanted[i / 64].load(Ordering::Acquire) & (1 << (i % 64)) != 0,
            // A name outside the catalogue: ask the filters.
            None => {
                self.count.load(Ordering::Acquire) > 0
                    && self
                        .subscribers
                        .read()
                        .unwrap_or_else(PoisonError::into_inner)
                        .iter()
                        .any(|(_, f, _)| f.names_match(name))
            }
        }
    }

    fn dispatch(&self, event: &Arc<v3::Event>) {
        let subscribers = self
            .subscribers
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        for (_, filter, slot) in subscribers.iter() {
            if filter.matches(event) {
                slot.offer(event.clone());
            }
        }
    }
}

/// The position of `name` in the catalogue, by binary search over a sorted copy.
fn catalogue_index(name: &str) -> Option<usize> {
    static SORTED: OnceLock<Vec<(&'static str, usize)>> = OnceLock::new();
    let sorted = SORTED.get_or_init(|| {
        let mut v: Vec<_> = CATALOGUE_NAMES.iter().copied().zip(0..).collect();
        v.sort_unstable();
        v
    });
    sorted
        .binary_search_by(|(n, _)| (*n).cmp(name))
        .ok()
        .map(|i| sorted[i].1)
}

/// Ends a subscription's feed when the subscription is dropped.
enum Guard {
    Local { hub: Weak<Hub>, id: u64 },
    Task(tokio::task::AbortHandle),
}

impl Drop for Guard {
    fn drop(&mut self) {
        match self {
            Guard::Local { hub, id } => {
                if let Some(hub) = hub.upgrade() {
                    hub.remove(*id);
                }
            }
            // Dropping the task's NATS subscribers unsubscribes them.
            Guard::Task(task) => task.abort(),
        }
    }
}

/// Why [`Subscription::recv`] returned no event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RecvError {
    /// The subscriber fell behind and this many matching events were dropped since the
    /// last report; the subscription goes on with the events still queued.
    #[error("the subscriber fell behind and missed {0} events")]
    Lagged(u64),
    /// The bus is gone (in-process) or its NATS connection closed for good.
    #[error("the event bus is closed")]
    Closed,
}

/// The events of one [`EventBus::subscribe`] call; unsubscribes when dropped.
///
/// Also a [`Stream`] of `Result<Arc<Event>, RecvError>` that yields only
/// [`RecvError::Lagged`] errors and ends when the bus closes.
pub struct Subscription {
    rx: mpsc::Receiver<Arc<v3::Event>>,
    missed: Arc<AtomicU64>,
    _guard: Guard,
}

impl Subscription {
    /// The next event, or how many were missed since the last call.
    pub async fn recv(&mut self) -> Result<Arc<v3::Event>, RecvError> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// The next event if one is queued, without waiting.
    pub fn try_recv(&mut self) -> Result<Option<Arc<v3::Event>>, RecvError> {
        if let Some(n) = self.take_missed() {
            return Err(RecvError::Lagged(n));
        }
        match self.rx.try_recv() {
            Ok(event) => Ok(Some(event)),
            Err(mpsc::error::TryRecvError::Empty) => Ok(None),
            Err(mpsc::error::TryRecvError::Disconnected) => Err(RecvError::Closed),
        }
    }

    fn take_missed(&self) -> Option<u64> {
        match self.missed.swap(0, Ordering::Relaxed) {
            0 => None,
            n => Some(n),
        }
    }

    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Result<Arc<v3::Event>, RecvError>> {
        if let Some(n) = self.take_missed() {
            return Poll::Ready(Err(RecvError::Lagged(n)));
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(event)) => Poll::Ready(Ok(event)),
            // Drops that raced with the close are still worth reporting.
            Poll::Ready(None) => Poll::Ready(Err(match self.take_missed() {
                Some(n) => RecvError::Lagged(n),
                None => RecvError::Closed,
            })),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Stream for Subscription {
    type Item = Result<Arc<v3::Event>, RecvError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.get_mut().poll_recv(cx) {
            Poll::Ready(Err(RecvError::Closed)) => Poll::Ready(None),
            Poll::Ready(item) => Poll::Ready(Some(item)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("queued", &self.rx.len())
            .field("missed", &self.missed.load(Ordering::Relaxed))
            .finish()
    }
}
