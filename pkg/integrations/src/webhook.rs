//! Webhooks: configuration, the durable outbox and the delivery workers.
//!
//! [`enqueue`] only queues the message in memory; [`persist_loop`] writes one outbox record
//! per matching webhook (grouped commits) and wakes the webhook's worker. A worker sends,
//! per device, the oldest pending delivery only, so a device's messages arrive in order; it
//! deletes the record on a 2xx answer and otherwise reschedules it with exponential backoff
//! and jitter (at the slow pace once the webhook is unhealthy) until the retry horizon.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use prost::Message;
use tern_api::v3;
use tern_cluster::role::Shutdown;
use tern_store::{Batch, Expect, StoreError};
use tokio::sync::{Mutex as AsyncMutex, Notify, mpsc};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tonic::Status;
use tracing::{debug, warn};

use crate::metrics::Metrics;
use crate::records::{
    Delivery, WEBHOOK_HEALTH, WEBHOOK_OUTBOX, WEBHOOKS, check_id, config_key, outbox_key,
    outbox_prefix, split_outbox_key,
};
use crate::{Inner, Upstream, UpstreamKind, store_status, timestamp, unix_ms};

/// How many records one outbox scan reads.
const SCAN_PAGE: usize = 128;
/// Messages persisted per grouped commit at most.
const PERSIST_BATCH: usize = 256;
/// A success is written to the stored health at most this often while the webhook is healthy.
const HEALTH_SUCCESS_WRITE_INTERVAL: Duration = Duration::from_secs(10);

/// A running delivery worker.
#[derive(Debug)]
pub(crate) struct WorkerHandle {
    notify: Arc<Notify>,
    task: tokio::task::AbortHandle,
}

impl Drop for WorkerHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The configured webhook, from the cache.
fn cached(inner: &Inner, app: &str, id: &str) -> Option<Arc<v3::ApplicationWebhook>> {
    inner
        .webhooks
        .read()
        .expect("webhooks lock")
        .get(app)
        .and_then(|m| m.get(id))
        .cloned()
}

/// How often the webhook cache is read again from the store: another process of the cluster
/// may have set or deleted a webhook, or left deliveries behind (e.g. killed) that this
/// process's workers must take over.
const RELOAD_INTERVAL: Duration = Duration::from_secs(5);

/// Reloads the webhooks every [`RELOAD_INTERVAL`] until shutdown.
pub(crate) async fn reload_loop(inner: Arc<Inner>, shutdown: Shutdown) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(RELOAD_INTERVAL) => {}
            _ = shutdown.wait() => return,
        }
        if let Err(e) = load(&inner).await {
            warn!(error = %e, "cannot reload the webhooks");
        }
    }
}

/// Reads every webhook into the cache (dropping those deleted meanwhile, whose workers then
/// stop) and starts or wakes their workers.
pub(crate) async fn load(inner: &Arc<Inner>) -> Result<(), StoreError> {
    // What this process set or deleted while the scan ran wins over the scan.
    let before = inner.webhooks.read().expect("webhooks lock").clone();
    let mut after: Option<String> = None;
    let mut loaded = Vec::new();
    loop {
        let page = inner
            .store
            .scan(&WEBHOOKS, "", after.as_deref(), SCAN_PAGE)
            .await?;
        for rec in page.items {
            match v3::ApplicationWebhook::decode(rec.value.as_slice()) {
                Ok(w) => loaded.push(w),
                Err(e) => warn!(key = %rec.key, error = %e, "skipping undecodable webhook"),
            }
        }
        match page.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    let mut fresh: HashMap<String, HashMap<String, Arc<v3::ApplicationWebhook>>> = HashMap::new();
    for w in loaded {
        let (app, id) = ids(&w);
        let (app, id) = (app.to_owned(), id.to_owned());
        fresh.entry(app).or_default().insert(id, Arc::new(w));
    }
    let pairs: Vec<(String, String)> = {
        let mut cache = inner.webhooks.write().expect("webhooks lock");
        let unchanged = |app: &str, id: &str, w: Option<&Arc<v3::ApplicationWebhook>>| {
            let old = before.get(app).and_then(|m| m.get(id));
            match (old, w) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            }
        };
        // Set here during the scan: keep.
        for (app, m) in cache.iter() {
            for (id, w) in m {
                if !unchanged(app, id, Some(w)) {
                    fresh
                        .entry(app.clone())
                        .or_default()
                        .insert(id.clone(), w.clone());
                }
            }
        }
        // Deleted here during the scan: drop.
        for (app, m) in &before {
            for id in m.keys() {
                if cache.get(app).and_then(|c| c.get(id)).is_none()
                    && let Some(f) = fresh.get_mut(app)
                {
                    f.remove(id);
                }
            }
        }
        *cache = fresh;
        cache
            .iter()
            .flat_map(|(app, m)| m.keys().map(|id| (app.clone(), id.clone())))
            .collect()
    };
    for (app, id) in pairs {
        ensure_worker(inner, &app, &id);
    }
    Ok(())
}

fn ids(w: &v3::ApplicationWebhook) -> (&str, &str) {
    let ids = w.ids.as_ref();
    (
        ids.and_then(|i| i.application_ids.as_ref())
            .map(|a| a.application_id.as_str())
            .unwrap_or_default(),
        ids.map(|i| i.webhook_id.as_str()).unwrap_or_default(),
    )
}

/// Starts the worker of a webhook unless it runs (only once the integrations started).
fn ensure_worker(inner: &Arc<Inner>, app: &str, id: &str) {
    let Some(shutdown) = inner.shutdown.lock().expect("shutdown lock").clone() else {
        return;
    };
    let key = config_key(app, id);
    let mut workers = inner.workers.lock().expect("workers lock");
    if let Some(w) = workers.get(&key)
        && !w.task.is_finished()
    {
        w.notify.notify_one();
        return;
    }
    let notify = Arc::new(Notify::new());
    let task = tokio::spawn(run_worker(
        inner.clone(),
        app.to_owned(),
        id.to_owned(),
        notify.clone(),
        shutdown,
    ));
    workers.insert(
        key,
        WorkerHandle {
            notify,
            task: task.abort_handle(),
        },
    );
}

fn wake(inner: &Inner, app: &str, id: &str) {
    if let Some(w) = inner
        .workers
        .lock()
        .expect("workers lock")
        .get(&config_key(app, id))
    {
        w.notify.notify_one();
    }
}

/// The webhooks of `up`'s application that want it.
fn targets(inner: &Inner, up: &Upstream) -> Vec<String> {
    let webhooks = inner.webhooks.read().expect("webhooks lock");
    let Some(app) = webhooks.get(&up.application_id) else {
        return Vec::new();
    };
    app.iter()
        .filter(|(_, w)| !w.paused && up.kind.webhook_path(w).is_some())
        .map(|(id, _)| id.clone())
        .collect()
}

/// Queues `up` for persistence when a webhook of its application wants it.
pub(crate) fn enqueue(inner: &Inner, up: &Upstream) {
    {
        let webhooks = inner.webhooks.read().expect("webhooks lock");
        let wanted = webhooks.get(&up.application_id).is_some_and(|app| {
            app.values()
                .any(|w| !w.paused && up.kind.webhook_path(w).is_some())
        });
        if !wanted {
            return;
        }
    }
    match inner.intake.try_send(up.clone()) {
        Ok(()) => {}
        Err(mpsc::error::TrySendError::Full(_)) => inner.metrics.drop("webhook_queue_full"),
        Err(mpsc::error::TrySendError::Closed(_)) => inner.metrics.drop("stopped"),
    }
}

/// A sequence number larger than every earlier one, also across restarts (it follows the
/// clock in microseconds).
fn next_sequence(inner: &Inner) -> u64 {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0);
    let mut last = inner.sequence.load(Ordering::Relaxed);
    loop {
        let next = now.max(last + 1);
        match inner
            .sequence
            .compare_exchange_weak(last, next, Ordering::Relaxed, Ordering::Relaxed)
        {
            Ok(_) => return next,
            Err(actual) => last = actual,
        }
    }
}

/// Writes queued messages to the outbox and wakes the workers, until shutdown; then writes
/// what is still queued.
pub(crate) async fn persist_loop(
    inner: Arc<Inner>,
    mut rx: mpsc::Receiver<Upstream>,
    shutdown: Shutdown,
) {
    let mut buf = Vec::with_capacity(PERSIST_BATCH);
    loop {
        tokio::select! {
            n = rx.recv_many(&mut buf, PERSIST_BATCH) => {
                if n == 0 {
                    return;
                }
            }
            _ = shutdown.wait() => {
                rx.close();
                while let Ok(up) = rx.try_recv() {
                    buf.push(up);
                }
                persist(&inner, std::mem::take(&mut buf)).await;
                return;
            }
        }
        persist(&inner, std::mem::take(&mut buf)).await;
    }
}

async fn persist(inner: &Inner, ups: Vec<Upstream>) {
    if ups.is_empty() {
        return;
    }
    let mut batch = Batch::new();
    let mut woken: Vec<(String, String)> = Vec::new();
    for up in &ups {
        let body = match std::str::from_utf8(&up.payload) {
            Ok(s) => s.to_owned(),
            Err(_) => {
                inner.metrics.drop("payload_not_utf8");
                continue;
            }
        };
        // The horizon counts from when the message was queued here.
        let now_ms = unix_ms(SystemTime::now());
        for id in targets(inner, up) {
            let delivery = Delivery {
                kind: up.kind.as_str().to_owned(),
                body: body.clone(),
                queued_at_ms: now_ms,
                attempts: 0,
                next_attempt_ms: 0,
            };
            let value = serde_json::to_vec(&delivery).expect("delivery serializes");
            let key = outbox_key(&up.application_id, &id, &up.device_id, next_sequence(inner));
            batch.put(&WEBHOOK_OUTBOX, key, value, Expect::Absent, Vec::new());
            let pair = (up.application_id.clone(), id);
            if !woken.contains(&pair) {
                woken.push(pair);
            }
        }
    }
    let count = batch.ops.len();
    if count == 0 {
        return;
    }
    if let Err(e) = inner.store.commit_grouped(batch).await {
        warn!(error = %e, deliveries = count, "cannot persist webhook deliveries; dropped");
        for _ in 0..count {
            inner.metrics.drop("store_error");
        }
        return;
    }
    for (app, id) in woken {
        wake(inner, &app, &id);
    }
}

/// Delivers one webhook's outbox until the webhook is deleted or shutdown.
async fn run_worker(
    inner: Arc<Inner>,
    app: String,
    id: String,
    notify: Arc<Notify>,
    shutdown: Shutdown,
) {
    let health = match load_health(&inner, &app, &id).await {
        Ok(h) => h,
        Err(e) => {
            warn!(app = %app, webhook = %id, error = %e, "cannot read webhook health");
            v3::ApplicationWebhookHealth::default()
        }
    };
    let health = Arc::new(AsyncMutex::new(HealthState {
        health,
        persisted_success_at: None,
    }));
    loop {
        let Some(webhook) = cached(&inner, &app, &id) else {
            return;
        };
        let wake_at = if webhook.paused {
            None
        } else {
            match pass(&inner, &webhook, &app, &id, &health).await {
                Ok(w) => w,
                Err(e) => {
                    warn!(app = %app, webhook = %id, error = %e, "webhook outbox scan failed");
                    Some(Instant::now() + Duration::from_secs(1))
                }
            }
        };
        let sleep = async {
            match wake_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = notify.notified() => {}
            _ = sleep => {}
            _ = shutdown.wait() => return,
        }
    }
}

struct HealthState {
    health: v3::ApplicationWebhookHealth,
    persisted_success_at: Option<std::time::Instant>,
}

/// One pass over the outbox: sends each device's oldest due delivery. Returns when to look
/// again (`None`: only when woken).
async fn pass(
    inner: &Arc<Inner>,
    webhook: &Arc<v3::ApplicationWebhook>,
    app: &str,
    id: &str,
    health: &Arc<AsyncMutex<HealthState>>,
) -> Result<Option<Instant>, StoreError> {
    let prefix = outbox_prefix(app, id);
    let now_ms = unix_ms(SystemTime::now());
    let horizon_ms = inner.config.retry_horizon.as_millis() as i64;
    let mut earliest: Option<i64> = None;
    // While unhealthy, nothing (not even a new device's first delivery) goes out before the
    // slow pace allows.
    let gate_ms = {
        let state = health.lock().await;
        (!state.health.healthy)
            .then(|| state.health.last_failed_attempt_at.as_ref().map(ts_ms))
            .flatten()
            .map(|last| last + inner.config.unhealthy_retry_interval.as_millis() as i64)
    };
    let mut due: Vec<(String, String, Delivery)> = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = inner
            .store
            .scan(&WEBHOOK_OUTBOX, &prefix, after.as_deref(), SCAN_PAGE)
            .await?;
        let mut last_device: Option<String> = None;
        for rec in page.items {
            let Some(device) = split_outbox_key(&prefix, &rec.key).map(|(d, _)| d.to_owned())
            else {
                continue;
            };
            if last_device.as_deref() == Some(device.as_str()) {
                continue;
            }
            last_device = Some(device.clone());
            let delivery: Delivery = match serde_json::from_slice(&rec.value) {
                Ok(d) => d,
                Err(e) => {
                    warn!(key = %rec.key, error = %e, "dropping undecodable webhook delivery");
                    inner.metrics.drop("corrupt_delivery");
                    delete_delivery(inner, &rec.key).await;
                    continue;
                }
            };
            if now_ms - delivery.queued_at_ms > horizon_ms {
                debug!(key = %rec.key, "webhook delivery expired");
                inner.metrics.drop("retry_horizon_exceeded");
                delete_delivery(inner, &rec.key).await;
                // The device's next delivery may be due now.
                earliest = Some(now_ms);
                continue;
            }
            let not_before = delivery.next_attempt_ms.max(gate_ms.unwrap_or(0));
            if not_before <= now_ms {
                due.push((rec.key, device, delivery));
            } else {
                earliest = Some(earliest.map_or(not_before, |e| e.min(not_before)));
            }
        }
        // Skip the rest of the last device's deliveries: only its head matters.
        after = match (page.next, last_device) {
            (Some(_), Some(dev)) => Some(format!("{prefix}{dev}/~")),
            (Some(n), None) => Some(n),
            (None, _) => None,
        };
        if after.is_none() {
            break;
        }
    }

    let mut tasks = JoinSet::new();
    let mut due = due.into_iter();
    let mut sent_any = false;
    loop {
        while tasks.len() < inner.config.max_in_flight {
            let Some((key, device, delivery)) = due.next() else {
                break;
            };
            tasks.spawn(attempt(
                inner.clone(),
                webhook.clone(),
                app.to_owned(),
                id.to_owned(),
                device,
                key,
                delivery,
                health.clone(),
            ));
        }
        let Some(result) = tasks.join_next().await else {
            break;
        };
        match result {
            Ok(Outcome::Delivered) => sent_any = true,
            Ok(Outcome::Retry(at)) => {
                earliest = Some(earliest.map_or(at, |e| e.min(at)));
            }
            Err(e) => warn!(error = %e, "webhook delivery task failed"),
        }
    }
    if sent_any {
        // The devices' next deliveries are due now.
        return Ok(Some(Instant::now()));
    }
    Ok(earliest.map(|at| {
        let wait = (at - unix_ms(SystemTime::now())).max(0) as u64;
        Instant::now() + Duration::from_millis(wait)
    }))
}

enum Outcome {
    Delivered,
    /// Retry at this Unix ms.
    Retry(i64),
}

async fn delete_delivery(inner: &Inner, key: &str) {
    let mut batch = Batch::new();
    batch.delete(&WEBHOOK_OUTBOX, key, Expect::Any);
    if let Err(e) = inner.store.commit(batch).await {
        warn!(key, error = %e, "cannot delete webhook delivery");
    }
}

/// The URL of `path` below `base`.
fn join_url(base: &str, path: &str) -> String {
    if path.is_empty() {
        base.to_owned()
    } else if path.starts_with('/') {
        format!("{}{path}", base.trim_end_matches('/'))
    } else {
        format!("{}/{path}", base.trim_end_matches('/'))
    }
}

/// The downlink URL given to the receiver.
pub(crate) fn downlink_url(inner: &Inner, app: &str, id: &str, dev: &str, op: &str) -> String {
    format!(
        "{}/api/v3/as/applications/{app}/webhooks/{id}/devices/{dev}/down/{op}",
        inner.public_url
    )
}

#[allow(clippy::too_many_arguments)]
async fn attempt(
    inner: Arc<Inner>,
    webhook: Arc<v3::ApplicationWebhook>,
    app: String,
    id: String,
    device: String,
    key: String,
    mut delivery: Delivery,
    health: Arc<AsyncMutex<HealthState>>,
) -> Outcome {
    let path = UpstreamKind::parse(&delivery.kind).and_then(|k| k.webhook_path(&webhook));
    let result = match path {
        // The message type was turned off since: nothing to send.
        None => Ok(()),
        Some(path) => send(&inner, &webhook, &app, &id, &device, path, &delivery).await,
    };
    match result {
        Ok(()) => {
            Metrics::inc(&inner.metrics.webhook_attempts, "result", "ok");
            delete_delivery(&inner, &key).await;
            record_success(&inner, &app, &id, &health).await;
            Outcome::Delivered
        }
        Err(error) => {
            Metrics::inc(&inner.metrics.webhook_attempts, "result", "failed");
            debug!(app = %app, webhook = %id, device = %device, error = %error, "webhook delivery failed");
            let healthy = record_failure(&inner, &app, &id, &health, &error).await;
            delivery.attempts = delivery.attempts.saturating_add(1);
            let delay = if healthy {
                backoff(&inner.config, delivery.attempts)
            } else {
                inner.config.unhealthy_retry_interval
            };
            let at = unix_ms(SystemTime::now()) + delay.as_millis() as i64;
            delivery.next_attempt_ms = at;
            let mut batch = Batch::new();
            // Exists: a webhook deleted meanwhile took its deliveries with it.
            batch.put(
                &WEBHOOK_OUTBOX,
                key.clone(),
                serde_json::to_vec(&delivery).expect("delivery serializes"),
                Expect::Exists,
                Vec::new(),
            );
            if let Err(e) = inner.store.commit(batch).await
                && !e.is_not_found()
            {
                warn!(key = %key, error = %e, "cannot reschedule webhook delivery");
            }
            Outcome::Retry(at)
        }
    }
}

/// Exponential backoff with jitter: `min * 2^(attempts-1)` capped at `max`, then a uniform
/// draw in its upper half so that many failing devices do not retry in lockstep.
pub(crate) fn backoff(config: &crate::IntegrationsConfig, attempts: u32) -> Duration {
    let exp = attempts.saturating_sub(1).min(30);
    let base = config
        .min_backoff
        .saturating_mul(1u32 << exp)
        .min(config.max_backoff);
    base.mul_f64(0.5 + fastrand::f64() * 0.5)
}

async fn send(
    inner: &Inner,
    webhook: &v3::ApplicationWebhook,
    app: &str,
    id: &str,
    device: &str,
    path: &str,
    delivery: &Delivery,
) -> Result<(), String> {
    let url = join_url(&webhook.base_url, path);
    let mut request = inner
        .http
        .post(&url)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(
            "X-Downlink-Push",
            downlink_url(inner, app, id, device, "push"),
        )
        .header(
            "X-Downlink-Replace",
            downlink_url(inner, app, id, device, "replace"),
        );
    if !webhook.downlink_api_key.is_empty() {
        request = request.header("X-Downlink-Apikey", &webhook.downlink_api_key);
    }
    for (name, value) in &webhook.headers {
        request = request.header(name, value);
    }
    match request.body(delivery.body.clone()).send().await {
        Ok(response) if response.status().is_success() => Ok(()),
        Ok(response) => Err(format!("{url} answered HTTP {}", response.status())),
        Err(e) => {
            let mut msg = format!("POST {url}: {e}");
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                msg.push_str(&format!(": {s}"));
                source = s.source();
            }
            Err(msg)
        }
    }
}

async fn load_health(
    inner: &Inner,
    app: &str,
    id: &str,
) -> Result<v3::ApplicationWebhookHealth, StoreError> {
    Ok(
        match inner
            .store
            .get(&WEBHOOK_HEALTH, &config_key(app, id))
            .await?
        {
            Some(rec) => {
                v3::ApplicationWebhookHealth::decode(rec.value.as_slice()).unwrap_or_default()
            }
            None => v3::ApplicationWebhookHealth {
                healthy: true,
                ..Default::default()
            },
        },
    )
}

async fn store_health(inner: &Inner, app: &str, id: &str, health: &v3::ApplicationWebhookHealth) {
    let mut batch = Batch::new();
    // Only while the webhook exists: a deleted webhook leaves no health behind.
    batch.check(&WEBHOOKS, config_key(app, id), Expect::Exists);
    batch.put(
        &WEBHOOK_HEALTH,
        config_key(app, id),
        health.encode_to_vec(),
        Expect::Any,
        Vec::new(),
    );
    if let Err(e) = inner.store.commit(batch).await
        && !e.is_not_found()
    {
        warn!(app, webhook = id, error = %e, "cannot store webhook health");
    }
}

async fn record_success(inner: &Inner, app: &str, id: &str, state: &AsyncMutex<HealthState>) {
    let mut state = state.lock().await;
    let was_failing = state.health.failed_attempts > 0 || !state.health.healthy;
    state.health.healthy = true;
    state.health.last_success_at = Some(timestamp(SystemTime::now()));
    state.health.failed_attempts = 0;
    state.health.first_failed_attempt_at = None;
    let stale = state
        .persisted_success_at
        .is_none_or(|t| t.elapsed() >= HEALTH_SUCCESS_WRITE_INTERVAL);
    if was_failing || stale {
        state.persisted_success_at = Some(std::time::Instant::now());
        store_health(inner, app, id, &state.health).await;
    }
}

/// Records a failure; returns whether the webhook is still healthy.
async fn record_failure(
    inner: &Inner,
    app: &str,
    id: &str,
    state: &AsyncMutex<HealthState>,
    error: &str,
) -> bool {
    let mut state = state.lock().await;
    let now = SystemTime::now();
    let h = &mut state.health;
    h.failed_attempts += 1;
    let first = *h.first_failed_attempt_at.get_or_insert(timestamp(now));
    h.last_failed_attempt_at = Some(timestamp(now));
    h.last_error = error.to_owned();
    h.healthy = is_healthy(inner, Some(&first), now);
    let healthy = h.healthy;
    store_health(inner, app, id, &state.health).await;
    healthy
}

/// A timestamp in Unix ms.
fn ts_ms(t: &tern_api::Timestamp) -> i64 {
    t.seconds * 1000 + i64::from(t.nanos) / 1_000_000
}

/// Healthy unless failing since longer than the unhealthy threshold.
fn is_healthy(inner: &Inner, first_failed: Option<&tern_api::Timestamp>, now: SystemTime) -> bool {
    let Some(first) = first_failed else {
        return true;
    };
    unix_ms(now) - ts_ms(first) < inner.config.unhealthy_threshold.as_millis() as i64
}

/// Checks a webhook from the API; the error names the field.
fn validate(w: &v3::ApplicationWebhook) -> Result<(String, String), String> {
    let (app, id) = ids(w);
    check_id("ids.application_ids.application_id", app)?;
    check_id("ids.webhook_id", id)?;
    let url = reqwest::Url::parse(&w.base_url).map_err(|e| format!("base_url: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "base_url: scheme `{}` is not http or https",
            url.scheme()
        ));
    }
    if !matches!(w.format.as_str(), "" | "json") {
        return Err(format!("format `{}` is not supported (json)", w.format));
    }
    for (name, value) in &w.headers {
        http::HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("headers: `{name}` is not a valid header name"))?;
        http::HeaderValue::from_str(value)
            .map_err(|_| format!("headers: the value of `{name}` is not a valid header value"))?;
    }
    if !w.downlink_api_key.is_empty() && http::HeaderValue::from_str(&w.downlink_api_key).is_err() {
        return Err("downlink_api_key: not a valid header value".into());
    }
    for kind in UpstreamKind::ALL {
        if let Some(path) = kind.webhook_path(w) {
            reqwest::Url::parse(&join_url(&w.base_url, path))
                .map_err(|e| format!("{}.path: {e}", kind.as_str()))?;
        }
    }
    Ok((app.to_owned(), id.to_owned()))
}

/// Creates or replaces a webhook.
pub(crate) async fn set(
    inner: &Arc<Inner>,
    mut w: v3::ApplicationWebhook,
) -> Result<v3::ApplicationWebhook, Status> {
    let (app, id) = validate(&w).map_err(|e| {
        inner.metrics.reject("invalid_webhook");
        Status::invalid_argument(e)
    })?;
    let key = config_key(&app, &id);
    let existing = inner
        .store
        .get(&WEBHOOKS, &key)
        .await
        .map_err(store_status)?;
    let now = timestamp(SystemTime::now());
    let (expect, created_at) = match &existing {
        Some(rec) => (
            Expect::Version(rec.version),
            v3::ApplicationWebhook::decode(rec.value.as_slice())
                .ok()
                .and_then(|old| old.created_at)
                .or(Some(now)),
        ),
        None => (Expect::Absent, Some(now)),
    };
    w.created_at = created_at;
    w.updated_at = Some(now);
    w.health = None;
    w.pending_deliveries = 0;
    if w.format.is_empty() {
        w.format = "json".into();
    }
    let mut batch = Batch::new();
    batch.put(&WEBHOOKS, key, w.encode_to_vec(), expect, Vec::new());
    inner.store.commit(batch).await.map_err(store_status)?;
    inner
        .webhooks
        .write()
        .expect("webhooks lock")
        .entry(app.clone())
        .or_default()
        .insert(id.clone(), Arc::new(w));
    ensure_worker(inner, &app, &id);
    get(inner, &app, &id).await
}

/// A webhook with health and pending count.
pub(crate) async fn get(
    inner: &Inner,
    app: &str,
    id: &str,
) -> Result<v3::ApplicationWebhook, Status> {
    let key = config_key(app, id);
    let rec = inner
        .store
        .get(&WEBHOOKS, &key)
        .await
        .map_err(store_status)?
        .ok_or_else(|| {
            Status::not_found(format!("webhook `{id}` of application `{app}` not found"))
        })?;
    let mut w = v3::ApplicationWebhook::decode(rec.value.as_slice())
        .map_err(|e| Status::internal(format!("stored webhook `{key}`: {e}")))?;
    let mut health = load_health(inner, app, id).await.map_err(store_status)?;
    health.healthy = is_healthy(
        inner,
        health.first_failed_attempt_at.as_ref(),
        SystemTime::now(),
    );
    w.health = Some(health);
    w.pending_deliveries = inner
        .store
        .count(&WEBHOOK_OUTBOX, &outbox_prefix(app, id))
        .await
        .map_err(store_status)?;
    Ok(w)
}

/// An application's webhooks.
pub(crate) async fn list(inner: &Inner, app: &str) -> Result<Vec<v3::ApplicationWebhook>, Status> {
    let prefix = format!("{app}/");
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = inner
            .store
            .scan(&WEBHOOKS, &prefix, after.as_deref(), SCAN_PAGE)
            .await
            .map_err(store_status)?;
        for rec in page.items {
            let id = rec.key[prefix.len()..].to_owned();
            out.push(get(inner, app, &id).await?);
        }
        match page.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    Ok(out)
}

/// Deletes a webhook, its health and its pending deliveries.
pub(crate) async fn delete(inner: &Inner, app: &str, id: &str) -> Result<(), Status> {
    let key = config_key(app, id);
    let mut batch = Batch::new();
    batch.delete(&WEBHOOKS, key.clone(), Expect::Exists);
    batch.delete(&WEBHOOK_HEALTH, key.clone(), Expect::Any);
    inner.store.commit(batch).await.map_err(|e| {
        if e.is_not_found() {
            Status::not_found(format!("webhook `{id}` of application `{app}` not found"))
        } else {
            store_status(e)
        }
    })?;
    if let Some(m) = inner.webhooks.write().expect("webhooks lock").get_mut(app) {
        m.remove(id);
    }
    // Dropping the handle stops the worker.
    inner.workers.lock().expect("workers lock").remove(&key);
    let prefix = outbox_prefix(app, id);
    loop {
        let page = inner
            .store
            .scan(&WEBHOOK_OUTBOX, &prefix, None, SCAN_PAGE)
            .await
            .map_err(store_status)?;
        if page.items.is_empty() {
            break;
        }
        let mut batch = Batch::new();
        for rec in page.items {
            batch.delete(&WEBHOOK_OUTBOX, rec.key, Expect::Any);
        }
        inner.store.commit(batch).await.map_err(store_status)?;
    }
    Ok(())
}
