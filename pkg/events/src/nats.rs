//! The NATS backend.
//!
//! Subjects: `<prefix>.events.<kind>.<id>.<name>`, one token per ID and per segment of the
//! event name (`tern.events.gateway.gw-1.gs.up.receive`); a device's ID is two tokens,
//! application then device (`tern.events.end_device.app-1.dev-1.ns.up.data.receive`), so
//! that `tern.events.end_device.app-1.>` is all of an application's devices. Events about no
//! entity go to `<prefix>.events.none.<name>`.
//!
//! An event about several entities is published once per distinct entity, with the index
//! of that entity in the `Tern-Event-Entity` header. A subscription subscribes to one
//! subject per entity of its filter (none overlapping), so NATS only sends it what may
//! match, and keeps only the copy of the first entity its filter covers: each event once.
//!
//! Publishing goes through a bounded queue to one task that owns the ordering: `publish`
//! never waits on NATS.

use std::sync::Arc;

use async_nats::connection::State;
use async_nats::{Client, ConnectOptions, HeaderMap, Message};
use bytes::Bytes;
use futures_util::StreamExt;
use prost::Message as _;
use tern_api::v3;
use tokio::sync::{mpsc, oneshot};

use crate::bus::{Counters, Slot};
use crate::config::{Encoding, NatsConfig};
use crate::error::EventsError;
use crate::event::origin;
use crate::filter::{Compiled, EntityKey, event_keys};

/// Header with the index of the entity a copy of an event was published for.
const ENTITY_HEADER: &str = "Tern-Event-Entity";
const CONTENT_TYPE: &str = "Content-Type";
const JSON: &str = "application/json";
const PROTOBUF: &str = "application/protobuf";

enum Outgoing {
    Event(Arc<v3::Event>),
    Flush(oneshot::Sender<Result<(), String>>),
}

pub(crate) struct NatsBus {
    client: Client,
    /// `<prefix>`.
    prefix: String,
    /// `<prefix>.events`.
    base: String,
    /// For errors and logs, passwords redacted.
    url: String,
    out: mpsc::Sender<Outgoing>,
    counters: Arc<Counters>,
}

impl NatsBus {
    pub(crate) async fn connect(
        config: &NatsConfig,
        buffer: usize,
        counters: Arc<Counters>,
    ) -> Result<Self, EventsError> {
        let url = config.redacted_url();
        let log_url = url.clone();
        let mut options = ConnectOptions::new()
            .name(format!("tern@{}", origin()))
            .event_callback(move |event| {
                let url = log_url.clone();
                async move {
                    match event {
                        async_nats::Event::Connected => {
                            tracing::info!(%url, "events: NATS connected");
                        }
                        other => tracing::warn!(%url, "events: NATS {other}"),
                    }
                }
            });
        if let Some(path) = &config.credentials {
            options =
                options
                    .credentials_file(path)
                    .await
                    .map_err(|error| EventsError::Credentials {
                        path: path.clone(),
                        error,
                    })?;
        }
        let servers: Vec<&str> = config.url.split(',').map(str::trim).collect();
        let client = options
            .connect(servers)
            .await
            .map_err(|error| EventsError::Connect {
                url: url.clone(),
                error,
            })?;
        let (out, rx) = mpsc::channel(buffer);
        let publisher = Publisher {
            client: client.clone(),
            base: format!("{}.events", config.subject_prefix),
            encoding: config.encoding,
            counters: counters.clone(),
        };
        tokio::spawn(publisher.run(rx));
        tracing::info!(%url, "events: sharing events through NATS");
        Ok(Self {
            client,
            prefix: config.subject_prefix.clone(),
            base: format!("{}.events", config.subject_prefix),
            url,
            out,
            counters,
        })
    }

    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    pub(crate) fn client(&self) -> &Client {
        &self.client
    }

    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    pub(crate) fn publish(&self, event: Arc<v3::Event>) {
        match self.out.try_send(Outgoing::Event(event)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.counters.drop_one("the NATS publish queue is full");
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.counters.drop_one("the NATS publisher stopped");
            }
        }
    }

    pub(crate) async fn flush(&self) -> Result<(), EventsError> {
        let flush_error = |reason: String| EventsError::Flush {
            url: self.url.clone(),
            reason,
        };
        let (done, wait) = oneshot::channel();
        self.out
            .send(Outgoing::Flush(done))
            .await
            .map_err(|_| flush_error("the NATS publisher stopped".to_owned()))?;
        wait.await
            .map_err(|_| flush_error("the NATS publisher stopped".to_owned()))?
            .map_err(flush_error)
    }

    pub(crate) fn health(&self) -> Result<(), String> {
        match self.client.connection_state() {
            State::Connected => Ok(()),
            state => Err(format!(
                "events: NATS at {} is {state} (reconnecting)",
                self.url
            )),
        }
    }

    /// Subscribes to the subjects `filter` needs and feeds `slot` from a task; returns that
    /// task's handle. SUBs are flushed before returning, so that anything published after
    /// this returns is delivered.
    pub(crate) async fn subscribe(
        &self,
        filter: Compiled,
        slot: Slot,
    ) -> Result<tokio::task::AbortHandle, EventsError> {
        let mut subscribers = Vec::new();
        for subject in coarse_subjects(&self.base, &filter) {
            let subscriber = self.client.subscribe(subject.clone()).await.map_err(|e| {
                EventsError::Subscribe {
                    subject: subject.clone(),
                    reason: e.to_string(),
                }
            })?;
            subscribers.push(subscriber);
        }
        self.client
            .flush()
            .await
            .map_err(|e| EventsError::Subscribe {
                subject: format!("{}.>", self.base),
                reason: format!("flushing the subscription failed: {e}"),
            })?;
        let counters = self.counters.clone();
        let task = tokio::spawn(async move {
            let mut messages = futures_util::stream::select_all(subscribers);
            while let Some(message) = messages.next().await {
                let (event, index) = match decode(&message) {
                    Ok(decoded) => decoded,
                    Err(why) => {
                        counters.drop_one(&format!("message on {}: {why}", message.subject));
                        continue;
                    }
                };
                if filter.takes_copy(&event, index) && !slot.offer(Arc::new(event)) {
                    break;
                }
            }
        });
        Ok(task.abort_handle())
    }
}

struct Publisher {
    client: Client,
    base: String,
    encoding: Encoding,
    counters: Arc<Counters>,
}

impl Publisher {
    async fn run(self, mut rx: mpsc::Receiver<Outgoing>) {
        while let Some(item) = rx.recv().await {
            match item {
                Outgoing::Event(event) => self.send(&event).await,
                Outgoing::Flush(done) => {
                    let result = self.client.flush().await.map_err(|e| e.to_string());
                    let _ = done.send(result);
                }
            }
        }
        // The bus is gone: hand over what was queued before it went.
        let _ = self.client.flush().await;
    }

    async fn send(&self, event: &v3::Event) {
        let (payload, content_type) = match self.encoding {
            Encoding::Json => match serde_json::to_vec(event) {
                Ok(json) => (Bytes::from(json), JSON),
                Err(e) => {
                    self.counters
                        .drop_one(&format!("event {} does not encode: {e}", event.name));
                    return;
                }
            },
            Encoding::Protobuf => (Bytes::from(event.encode_to_vec()), PROTOBUF),
        };
        let keys = event_keys(event);
        let subjects: Vec<String> = if keys.is_empty() {
            vec![format!("{}.none.{}", self.base, name_tokens(&event.name))]
        } else {
            keys.iter()
                .map(|key| {
                    format!(
                        "{}.{}.{}",
                        self.base,
                        key_tokens(key),
                        name_tokens(&event.name)
                    )
                })
                .collect()
        };
        for (index, subject) in subjects.into_iter().enumerate() {
            let mut headers = HeaderMap::new();
            headers.insert(ENTITY_HEADER, index.to_string());
            headers.insert(CONTENT_TYPE, content_type);
            if let Err(e) = self
                .client
                .publish_with_headers(subject, headers, payload.clone())
                .await
            {
                self.counters
                    .drop_one(&format!("event {} not published: {e}", event.name));
            }
        }
    }
}

fn decode(message: &Message) -> Result<(v3::Event, usize), String> {
    let headers = message.headers.as_ref().ok_or("no headers")?;
    let index = headers
        .get(ENTITY_HEADER)
        .ok_or_else(|| format!("no {ENTITY_HEADER} header"))?
        .as_str()
        .parse::<usize>()
        .map_err(|e| format!("bad {ENTITY_HEADER} header: {e}"))?;
    let event = match headers.get(CONTENT_TYPE).map(|v| v.as_str()) {
        Some(JSON) => serde_json::from_slice(&message.payload).map_err(|e| e.to_string())?,
        Some(PROTOBUF) => v3::Event::decode(message.payload.clone()).map_err(|e| e.to_string())?,
        Some(other) => return Err(format!("unknown {CONTENT_TYPE} {other:?}")),
        None => return Err(format!("no {CONTENT_TYPE} header")),
    };
    Ok((event, index))
}

/// The subjects a subscription needs: a superset of what its filter matches, pairwise
/// disjoint so that no message arrives twice.
fn coarse_subjects(base: &str, filter: &Compiled) -> Vec<String> {
    if filter.entities.is_empty() {
        // Devices have one more ID token than other entities, so a name tail cannot follow
        // a fixed number of wildcards: take everything, filter here.
        return vec![format!("{base}.>")];
    }
    let tail = name_tail(&filter.names);
    let mut subjects = Vec::new();
    for key in &filter.entities {
        match key {
            EntityKey::Application(a) => {
                let a = token(a);
                subjects.push(format!("{base}.application.{a}.{tail}"));
                subjects.push(format!("{base}.end_device.{a}.*.{tail}"));
            }
            // Its application's subjects already bring it.
            EntityKey::Device(a, _)
                if filter
                    .entities
                    .iter()
                    .any(|e| matches!(e, EntityKey::Application(x) if x == a)) => {}
            key => subjects.push(format!("{base}.{}.{tail}", key_tokens(key))),
        }
    }
    subjects
}

/// The subject tail for the name patterns: the pattern itself when it is one literal name,
/// `<prefix>.>` for one `<prefix>.*`, otherwise `>`.
fn name_tail(patterns: &[String]) -> String {
    let [pattern] = patterns else {
        return ">".to_owned();
    };
    if !pattern.contains('*') {
        return name_tokens(pattern);
    }
    match pattern.strip_suffix(".*") {
        Some(prefix) if !prefix.contains('*') => format!("{}.>", name_tokens(prefix)),
        _ => ">".to_owned(),
    }
}

fn key_tokens(key: &EntityKey<'_>) -> String {
    match key {
        EntityKey::Application(a) => format!("application.{}", token(a)),
        EntityKey::Device(a, d) => format!("end_device.{}.{}", token(a), token(d)),
        EntityKey::Gateway(g) => format!("gateway.{}", token(g)),
        EntityKey::Organization(o) => format!("organization.{}", token(o)),
        EntityKey::User(u) => format!("user.{}", token(u)),
    }
}

fn name_tokens(name: &str) -> String {
    name.split('.').map(token).collect::<Vec<_>>().join(".")
}

/// One subject token: letters, digits, `-` and `_` as they are; anything else (dots,
/// wildcards, blanks) as `~XX` hex, and an empty string as `~`. IDs and event names are
/// already plain, so this only guards against the malformed.
pub(crate) fn token(s: &str) -> String {
    if s.is_empty() {
        return "~".to_owned();
    }
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("~{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::Filter;

    fn subjects(filter: Filter) -> Vec<String> {
        coarse_subjects("tern.events", &filter.compile().unwrap())
    }

    #[test]
    fn subjects_follow_the_filter() {
        assert_eq!(subjects(Filter::all()), ["tern.events.>"]);
        assert_eq!(
            subjects(Filter::all().name("gs.up.receive")),
            ["tern.events.>"]
        );
        assert_eq!(
            subjects(Filter::all().application("app").name("ns.up.*")),
            [
                "tern.events.application.app.ns.up.>",
                "tern.events.end_device.app.*.ns.up.>"
            ]
        );
        assert_eq!(
            subjects(
                Filter::all()
                    .device("app", "dev")
                    .gateway("gw")
                    .name("gs.up.receive")
            ),
            [
                "tern.events.end_device.app.dev.gs.up.receive",
                "tern.events.gateway.gw.gs.up.receive"
            ]
        );
        // The device is covered by its application; two patterns cannot go in one subject.
        assert_eq!(
            subjects(
                Filter::all()
                    .device("app", "dev")
                    .application("app")
                    .names(["*.drop", "gs.*"])
            ),
            [
                "tern.events.application.app.>",
                "tern.events.end_device.app.*.>"
            ]
        );
    }

    #[test]
    fn tokens_escape_what_subjects_cannot_hold() {
        assert_eq!(token("gw-1_a"), "gw-1_a");
        assert_eq!(token("a.b c>*"), "a~2Eb~20c~3E~2A");
        assert_eq!(token(""), "~");
        assert_eq!(token("~"), "~7E");
        assert_eq!(name_tokens("ns..x"), "ns.~.x");
    }
}
