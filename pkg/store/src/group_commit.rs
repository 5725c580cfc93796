//! Group commit of the uplink hot path's writes.
//!
//! Many concurrent callers hand their write batches to one committer task, which commits
//! them together in a single transaction (one fsync on SQLite, one round of commit on
//! PostgreSQL) as soon as `max-batch` writes are waiting or `max-delay` has passed since
//! the first of them, whichever comes first. Each batch keeps its own atomicity: it runs
//! under its own savepoint, so one whose version check fails is undone alone and only its
//! caller sees the error. Every caller waits until the transaction holding its write is
//! committed, i.e. durable, before its call returns.
//!
//! # What a crash can lose
//!
//! Nothing that was acknowledged. A crash (process, OS or power) can lose only writes
//! whose calls had not returned yet: those still queued here, or in a transaction that
//! had not committed. Such a write is lost entirely (never half of a batch), and its
//! caller never saw success. "Committed" means on disk: SQLite runs with
//! `synchronous=FULL`; PostgreSQL acknowledges a commit after flushing its WAL as long as
//! the server keeps `synchronous_commit = on` (its default).
//!
//! This is safe for frame counters because the Network Server forwards an uplink (to the
//! Application Server, and answers it with a downlink) only after the write recording its
//! FCnt was acknowledged. If the crash loses that write, the uplink was never forwarded:
//! when the device (or a gateway's retransmission) sends it again, the restarted NS sees
//! the old FCnt, accepts the frame once, and forwards it once. A frame that was forwarded
//! always has its FCnt on disk, so a replay of it is refused after restart too.
//!
//! The reverse can happen: a crash after the commit but before the reply leaves a write
//! on disk that nobody saw acknowledged. The NS then never forwarded that uplink and
//! refuses its retransmission as already seen: the frame is lost once, never delivered
//! twice. FCnt safety (no replay accepted) holds either way.
//!
//! A caller that gives up waiting (its future dropped) does not withdraw its write: it
//! may still commit. Such a caller must treat the outcome as unknown and re-read.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::config::GroupCommitConfig;
use crate::engine::Engine;
use crate::error::{Result, StoreError};
use crate::kv::Batch;

struct Request {
    batch: Batch,
    reply: oneshot::Sender<Result<Vec<u64>>>,
}

/// Counters of the group committer, e.g. for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GroupCommitStats {
    /// Transactions committed (one per group).
    pub groups: u64,
    /// Writes (batches) committed or refused in those transactions.
    pub writes: u64,
}

#[derive(Default)]
struct Counters {
    groups: AtomicU64,
    writes: AtomicU64,
}

/// The handle of the committer task.
pub(crate) struct GroupCommitter {
    tx: Mutex<Option<mpsc::Sender<Request>>>,
    task: tokio::sync::Mutex<Option<JoinHandle<()>>>,
    counters: Arc<Counters>,
}

impl GroupCommitter {
    /// Starts the committer task on the current tokio runtime.
    pub(crate) fn start(engine: Arc<Engine>, config: &GroupCommitConfig) -> Self {
        let max_batch = config.max_batch.max(1);
        // Bounded: under overload callers wait to enqueue instead of growing memory.
        let (tx, rx) = mpsc::channel(max_batch * 4);
        let counters = Arc::new(Counters::default());
        let task = tokio::spawn(run(
            engine,
            rx,
            max_batch,
            config.max_delay,
            Arc::clone(&counters),
        ));
        Self {
            tx: Mutex::new(Some(tx)),
            task: tokio::sync::Mutex::new(Some(task)),
            counters,
        }
    }

    /// The counters so far.
    pub(crate) fn stats(&self) -> GroupCommitStats {
        GroupCommitStats {
            groups: self.counters.groups.load(Ordering::Relaxed),
            writes: self.counters.writes.load(Ordering::Relaxed),
        }
    }

    /// Queues a batch and waits until it is committed (durable) or refused.
    pub(crate) async fn submit(&self, batch: Batch) -> Result<Vec<u64>> {
        let tx = self
            .tx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or(StoreError::Closed)?;
        let (reply, rx) = oneshot::channel();
        tx.send(Request { batch, reply })
            .await
            .map_err(|_| StoreError::Closed)?;
        drop(tx);
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Stops accepting writes, commits everything queued, and waits for the task to end.
    pub(crate) async fn close(&self) {
        drop(self.tx.lock().unwrap_or_else(|e| e.into_inner()).take());
        if let Some(task) = self.task.lock().await.take()
            && let Err(e) = task.await
        {
            tracing::error!(error = %e, "store group-commit task failed");
        }
    }
}

async fn run(
    engine: Arc<Engine>,
    mut rx: mpsc::Receiver<Request>,
    max_batch: usize,
    max_delay: std::time::Duration,
    counters: Arc<Counters>,
) {
    let mut requests = Vec::with_capacity(max_batch);
    // Ends when every sender is gone (close) and the queue is drained.
    while let Some(first) = rx.recv().await {
        requests.push(first);
        let deadline = Instant::now() + max_delay;
        while requests.len() < max_batch {
            // Take what is already queued without waiting, then wait until the deadline.
            match rx.try_recv() {
                Ok(r) => {
                    requests.push(r);
                    continue;
                }
                Err(mpsc::error::TryRecvError::Disconnected) => break,
                Err(mpsc::error::TryRecvError::Empty) => {}
            }
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(r)) => requests.push(r),
                Ok(None) | Err(_) => break,
            }
        }
        let (batches, replies): (Vec<Batch>, Vec<_>) =
            requests.drain(..).map(|r| (r.batch, r.reply)).unzip();
        let n = batches.len() as u64;
        let results = engine.commit_group(batches).await;
        counters.groups.fetch_add(1, Ordering::Relaxed);
        counters.writes.fetch_add(n, Ordering::Relaxed);
        for (reply, result) in replies.into_iter().zip(results) {
            // A caller that stopped waiting has its write committed all the same.
            let _ = reply.send(result);
        }
    }
}
