//! Pub/sub integrations: every upstream message published to an external NATS server
//! (subjects `v3.{app}.devices.{dev}.up`, ...) or MQTT broker (topics
//! `v3/{app}/devices/{dev}/up`, ...), and downlinks read from `.../down/push` and
//! `.../down/replace`. Delivery is best effort: each integration has a bounded queue, and
//! what does not fit is dropped and counted, so a slow broker never slows the AS.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use prost::Message;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use tern_api::v3;
use tern_api::v3::application_pub_sub::Provider;
use tern_cluster::role::Shutdown;
use tern_store::{Batch, Expect, StoreError};
use tokio::sync::mpsc;
use tonic::Status;
use tracing::{debug, info, warn};

use crate::metrics::Metrics;
use crate::records::{PUBSUBS, check_id, config_key};
use crate::{Inner, Upstream, store_status, timestamp};

/// The longest wait between two connection attempts.
const MAX_RECONNECT: Duration = Duration::from_secs(60);

/// A running pub/sub integration; dropping it disconnects.
#[derive(Debug)]
pub(crate) struct Handle {
    tx: mpsc::Sender<Upstream>,
    task: tokio::task::AbortHandle,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Queues `up` for every pub/sub integration of its application.
pub(crate) fn publish(inner: &Inner, up: &Upstream) {
    let pubsubs = inner.pubsubs.read().expect("pubsubs lock");
    let Some(app) = pubsubs.get(&up.application_id) else {
        return;
    };
    for handle in app.values() {
        match handle.tx.try_send(up.clone()) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => inner.metrics.drop("pubsub_queue_full"),
            Err(mpsc::error::TrySendError::Closed(_)) => inner.metrics.drop("pubsub_stopped"),
        }
    }
}

fn ids(p: &v3::ApplicationPubSub) -> (&str, &str) {
    let ids = p.ids.as_ref();
    (
        ids.and_then(|i| i.application_ids.as_ref())
            .map(|a| a.application_id.as_str())
            .unwrap_or_default(),
        ids.map(|i| i.pub_sub_id.as_str()).unwrap_or_default(),
    )
}

/// Reads every pub/sub integration and connects it.
pub(crate) async fn load(inner: &Arc<Inner>) -> Result<(), StoreError> {
    let mut after: Option<String> = None;
    loop {
        let page = inner
            .store
            .scan(&PUBSUBS, "", after.as_deref(), 128)
            .await?;
        for rec in page.items {
            match v3::ApplicationPubSub::decode(rec.value.as_slice()) {
                Ok(p) => run(inner, p),
                Err(e) => warn!(key = %rec.key, error = %e, "skipping undecodable pub/sub"),
            }
        }
        match page.next {
            Some(n) => after = Some(n),
            None => return Ok(()),
        }
    }
}

/// Starts (or restarts) the task of `p` once the integrations run.
fn run(inner: &Arc<Inner>, p: v3::ApplicationPubSub) {
    let Some(shutdown) = inner.shutdown.lock().expect("shutdown lock").clone() else {
        return;
    };
    let (app, id) = ids(&p);
    let (app, id) = (app.to_owned(), id.to_owned());
    let (tx, rx) = mpsc::channel(inner.config.queue_size);
    let task = match p.provider.clone() {
        Some(Provider::Nats(nats)) => tokio::spawn(run_nats(
            inner.clone(),
            app.clone(),
            p.base_topic.clone(),
            nats,
            rx,
            shutdown,
        )),
        Some(Provider::Mqtt(mqtt)) => tokio::spawn(run_mqtt(
            inner.clone(),
            app.clone(),
            id.clone(),
            p.base_topic.clone(),
            mqtt,
            rx,
            shutdown,
        )),
        None => return,
    };
    let handle = Handle {
        tx,
        task: task.abort_handle(),
    };
    // Replacing the old handle drops (stops) the old connection.
    inner
        .pubsubs
        .write()
        .expect("pubsubs lock")
        .entry(app)
        .or_default()
        .insert(id, handle);
}

/// NATS subject of a message: the MQTT topic with dots.
pub(crate) fn nats_subject(base: &str, up: &Upstream) -> String {
    format!(
        "{base}v3.{}.devices.{}.{}",
        up.application_id,
        up.device_id,
        up.kind.topic_suffix().replace('/', ".")
    )
}

/// MQTT topic of a message.
pub(crate) fn mqtt_topic(base: &str, up: &Upstream) -> String {
    format!(
        "{base}v3/{}/devices/{}/{}",
        up.application_id,
        up.device_id,
        up.kind.topic_suffix()
    )
}

/// Parses `{base}v3{sep}{app}{sep}devices{sep}{dev}{sep}down{sep}{push|replace}` into the
/// device and whether it replaces.
fn parse_downlink_topic<'a>(
    base: &str,
    app: &str,
    sep: char,
    topic: &'a str,
) -> Option<(&'a str, bool)> {
    let rest = topic.strip_prefix(base)?;
    let mut parts = rest.split(sep);
    let (v3, a, devices, dev, down, op) = (
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
    );
    if parts.next().is_some() || v3 != "v3" || a != app || devices != "devices" || down != "down" {
        return None;
    }
    match op {
        "push" => Some((dev, false)),
        "replace" => Some((dev, true)),
        _ => None,
    }
}

/// Hands a downlink message from an integration to the sink; counts refusals by reason.
pub(crate) async fn push_downlink(
    inner: &Inner,
    source: &'static str,
    app: &str,
    dev: &str,
    replace: bool,
    body: &[u8],
) -> Result<(), Status> {
    if check_id("device_id", dev).is_err() {
        inner.metrics.reject("bad_device_id");
        return Err(Status::invalid_argument(format!(
            "device ID `{dev}` is not a valid ID"
        )));
    }
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
        inner.metrics.reject("bad_json");
        Status::invalid_argument(format!("body is not JSON: {e}"))
    })?;
    if !value.get("downlinks").is_some_and(|d| d.is_array()) {
        inner.metrics.reject("no_downlinks");
        return Err(Status::invalid_argument(
            "body must be an object with a `downlinks` array",
        ));
    }
    inner
        .downlinks
        .push(app, dev, replace, value)
        .await
        .inspect_err(|_| inner.metrics.reject("sink_refused"))?;
    Metrics::inc(&inner.metrics.downlinks, "source", source);
    Ok(())
}

async fn run_nats(
    inner: Arc<Inner>,
    app: String,
    base: String,
    nats: v3::ApplicationPubSubNats,
    mut rx: mpsc::Receiver<Upstream>,
    shutdown: Shutdown,
) {
    // Connects in the background and reconnects by itself; publishes wait in its buffer.
    let client = match async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .name(format!("tern-integrations-{app}"))
        .connect(nats.server_url.as_str())
        .await
    {
        Ok(c) => c,
        Err(e) => {
            warn!(app = %app, error = %e, "NATS pub/sub: cannot connect");
            return;
        }
    };
    let prefix = format!("{base}v3.{app}.devices.*.down.");
    let (mut push, mut replace) = match (
        client.subscribe(format!("{prefix}push")).await,
        client.subscribe(format!("{prefix}replace")).await,
    ) {
        (Ok(p), Ok(r)) => (p, r),
        (Err(e), _) | (_, Err(e)) => {
            warn!(app = %app, error = %e, "NATS pub/sub: cannot subscribe");
            return;
        }
    };
    info!(app = %app, "NATS pub/sub started");
    loop {
        let msg = tokio::select! {
            up = rx.recv() => {
                let Some(up) = up else { return };
                match client.publish(nats_subject(&base, &up), up.payload.clone()).await {
                    Ok(()) => Metrics::inc(&inner.metrics.pubsub_published, "provider", "nats"),
                    Err(e) => {
                        debug!(app = %app, error = %e, "NATS publish failed");
                        inner.metrics.drop("pubsub_publish_error");
                    }
                }
                continue;
            }
            m = push.next() => m,
            m = replace.next() => m,
            _ = shutdown.wait() => {
                let _ = client.flush().await;
                return;
            }
        };
        let Some(msg) = msg else { return };
        let Some((dev, repl)) = parse_downlink_topic(&base, &app, '.', msg.subject.as_str()) else {
            inner.metrics.reject("bad_topic");
            continue;
        };
        let (inner, app, dev) = (inner.clone(), app.clone(), dev.to_owned());
        tokio::spawn(async move {
            if let Err(e) = push_downlink(&inner, "nats", &app, &dev, repl, &msg.payload).await {
                debug!(app = %app, device = %dev, error = %e, "NATS downlink refused");
            }
        });
    }
}

fn qos(q: u32) -> QoS {
    if q == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    }
}

/// The MQTT options of an integration.
fn mqtt_options(app: &str, id: &str, m: &v3::ApplicationPubSubMqtt) -> Result<MqttOptions, String> {
    let url = reqwest::Url::parse(&m.server_url).map_err(|e| format!("mqtt.server_url: {e}"))?;
    let tls = match url.scheme() {
        "mqtt" | "tcp" => false,
        "mqtts" | "ssl" => true,
        s => {
            return Err(format!(
                "mqtt.server_url: scheme `{s}` is not mqtt or mqtts"
            ));
        }
    };
    let host = url
        .host_str()
        .ok_or("mqtt.server_url: no host")?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = url.port().unwrap_or(if tls { 8883 } else { 1883 });
    let client_id = if m.client_id.is_empty() {
        format!("tern-{app}-{id}")
    } else {
        m.client_id.clone()
    };
    let mut opts = MqttOptions::new(client_id, host, port);
    opts.set_keep_alive(Duration::from_secs(30));
    if !m.username.is_empty() || !m.password.is_empty() {
        opts.set_credentials(m.username.clone(), m.password.clone());
    }
    if tls {
        if m.tls_ca.is_empty() {
            return Err("mqtt.tls_ca: required for mqtts".into());
        }
        let client_auth = match (m.tls_client_cert.is_empty(), m.tls_client_key.is_empty()) {
            (true, true) => None,
            (false, false) => Some((m.tls_client_cert.clone(), m.tls_client_key.clone())),
            _ => {
                return Err("mqtt.tls_client_cert and mqtt.tls_client_key go together".into());
            }
        };
        opts.set_transport(Transport::Tls(TlsConfiguration::Simple {
            ca: m.tls_ca.clone(),
            alpn: None,
            client_auth,
        }));
    }
    Ok(opts)
}

async fn run_mqtt(
    inner: Arc<Inner>,
    app: String,
    id: String,
    base: String,
    mqtt: v3::ApplicationPubSubMqtt,
    mut rx: mpsc::Receiver<Upstream>,
    shutdown: Shutdown,
) {
    let opts = match mqtt_options(&app, &id, &mqtt) {
        Ok(o) => o,
        Err(e) => {
            warn!(app = %app, pubsub = %id, error = %e, "MQTT pub/sub: bad options");
            return;
        }
    };
    let (client, mut eventloop) = AsyncClient::new(opts, 256);
    let (pub_qos, sub_qos) = (qos(mqtt.publish_qos), qos(mqtt.subscribe_qos));
    let prefix = format!("{base}v3/{app}/devices/+/down/");
    let mut retry = Duration::from_millis(250);
    loop {
        tokio::select! {
            event = eventloop.poll() => match event {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    retry = Duration::from_millis(250);
                    info!(app = %app, pubsub = %id, "MQTT pub/sub connected");
                    // Clean sessions: subscribe again on every connection.
                    for op in ["push", "replace"] {
                        if let Err(e) = client.try_subscribe(format!("{prefix}{op}"), sub_qos) {
                            warn!(app = %app, error = %e, "MQTT pub/sub: cannot subscribe");
                        }
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let Some((dev, repl)) = parse_downlink_topic(&base, &app, '/', &p.topic) else {
                        inner.metrics.reject("bad_topic");
                        continue;
                    };
                    let (inner, app, dev) = (inner.clone(), app.clone(), dev.to_owned());
                    tokio::spawn(async move {
                        if let Err(e) = push_downlink(&inner, "mqtt", &app, &dev, repl, &p.payload).await {
                            debug!(app = %app, device = %dev, error = %e, "MQTT downlink refused");
                        }
                    });
                }
                Ok(_) => {}
                Err(e) => {
                    debug!(app = %app, pubsub = %id, error = %e, "MQTT pub/sub connection failed");
                    tokio::select! {
                        _ = tokio::time::sleep(retry) => {}
                        _ = shutdown.wait() => return,
                    }
                    retry = (retry * 2).min(MAX_RECONNECT);
                }
            },
            up = rx.recv() => {
                let Some(up) = up else { return };
                match client.try_publish(mqtt_topic(&base, &up), pub_qos, false, up.payload.to_vec()) {
                    Ok(()) => Metrics::inc(&inner.metrics.pubsub_published, "provider", "mqtt"),
                    Err(_) => inner.metrics.drop("pubsub_queue_full"),
                }
            }
            _ = shutdown.wait() => {
                let _ = client.try_disconnect();
                return;
            }
        }
    }
}

/// Checks a pub/sub integration from the API; the error names the field.
fn validate(p: &v3::ApplicationPubSub) -> Result<(String, String), String> {
    let (app, id) = ids(p);
    check_id("ids.application_ids.application_id", app)?;
    check_id("ids.pub_sub_id", id)?;
    if !matches!(p.format.as_str(), "" | "json") {
        return Err(format!("format `{}` is not supported (json)", p.format));
    }
    if p.base_topic
        .chars()
        .any(|c| matches!(c, '+' | '#' | '*' | '>') || c.is_whitespace())
    {
        return Err("base_topic: no wildcards or whitespace".into());
    }
    match &p.provider {
        None => return Err("provider: nats or mqtt is required".into()),
        Some(Provider::Nats(n)) => {
            let url =
                reqwest::Url::parse(&n.server_url).map_err(|e| format!("nats.server_url: {e}"))?;
            if !matches!(url.scheme(), "nats" | "tls") {
                return Err(format!(
                    "nats.server_url: scheme `{}` is not nats or tls",
                    url.scheme()
                ));
            }
        }
        Some(Provider::Mqtt(m)) => {
            if m.publish_qos > 1 || m.subscribe_qos > 1 {
                return Err("mqtt: QoS must be 0 or 1".into());
            }
            mqtt_options(app, id, m)?;
        }
    }
    Ok((app.to_owned(), id.to_owned()))
}

/// Creates or replaces a pub/sub integration and reconnects it.
pub(crate) async fn set(
    inner: &Arc<Inner>,
    mut p: v3::ApplicationPubSub,
) -> Result<v3::ApplicationPubSub, Status> {
    let (app, id) = validate(&p).map_err(|e| {
        inner.metrics.reject("invalid_pubsub");
        Status::invalid_argument(e)
    })?;
    let key = config_key(&app, &id);
    let existing = inner
        .store
        .get(&PUBSUBS, &key)
        .await
        .map_err(store_status)?;
    let now = timestamp(SystemTime::now());
    let (expect, created_at) = match &existing {
        Some(rec) => (
            Expect::Version(rec.version),
            v3::ApplicationPubSub::decode(rec.value.as_slice())
                .ok()
                .and_then(|old| old.created_at)
                .or(Some(now)),
        ),
        None => (Expect::Absent, Some(now)),
    };
    p.created_at = created_at;
    p.updated_at = Some(now);
    if p.format.is_empty() {
        p.format = "json".into();
    }
    let mut batch = Batch::new();
    batch.put(&PUBSUBS, key, p.encode_to_vec(), expect, Vec::new());
    inner.store.commit(batch).await.map_err(store_status)?;
    run(inner, p.clone());
    Ok(p)
}

/// A pub/sub integration.
pub(crate) async fn get(
    inner: &Inner,
    app: &str,
    id: &str,
) -> Result<v3::ApplicationPubSub, Status> {
    let key = config_key(app, id);
    let rec = inner
        .store
        .get(&PUBSUBS, &key)
        .await
        .map_err(store_status)?
        .ok_or_else(|| {
            Status::not_found(format!("pub/sub `{id}` of application `{app}` not found"))
        })?;
    v3::ApplicationPubSub::decode(rec.value.as_slice())
        .map_err(|e| Status::internal(format!("stored pub/sub `{key}`: {e}")))
}

/// An application's pub/sub integrations.
pub(crate) async fn list(inner: &Inner, app: &str) -> Result<Vec<v3::ApplicationPubSub>, Status> {
    let prefix = format!("{app}/");
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = inner
            .store
            .scan(&PUBSUBS, &prefix, after.as_deref(), 128)
            .await
            .map_err(store_status)?;
        for rec in page.items {
            out.push(
                v3::ApplicationPubSub::decode(rec.value.as_slice())
                    .map_err(|e| Status::internal(format!("stored pub/sub `{}`: {e}", rec.key)))?,
            );
        }
        match page.next {
            Some(n) => after = Some(n),
            None => return Ok(out),
        }
    }
}

/// Deletes a pub/sub integration and disconnects it.
pub(crate) async fn delete(inner: &Inner, app: &str, id: &str) -> Result<(), Status> {
    let mut batch = Batch::new();
    batch.delete(&PUBSUBS, config_key(app, id), Expect::Exists);
    inner.store.commit(batch).await.map_err(|e| {
        if e.is_not_found() {
            Status::not_found(format!("pub/sub `{id}` of application `{app}` not found"))
        } else {
            store_status(e)
        }
    })?;
    if let Some(m) = inner.pubsubs.write().expect("pubsubs lock").get_mut(app) {
        m.remove(id);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn downlink_topics() {
        assert_eq!(
            parse_downlink_topic("", "app-1", '/', "v3/app-1/devices/dev-1/down/push"),
            Some(("dev-1", false))
        );
        assert_eq!(
            parse_downlink_topic("t.", "app-1", '.', "t.v3.app-1.devices.dev-1.down.replace"),
            Some(("dev-1", true))
        );
        assert_eq!(
            parse_downlink_topic("", "app-1", '/', "v3/app-2/devices/dev-1/down/push"),
            None
        );
        assert_eq!(
            parse_downlink_topic("", "app-1", '/', "v3/app-1/devices/dev-1/down/queued"),
            None
        );
    }
}
