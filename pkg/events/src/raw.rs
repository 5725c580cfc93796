//! Raw NATS messages under the bus's subject prefix, outside the event subjects: for roles
//! that share something other than events between the processes of a cluster (e.g. the
//! Application Server's MQTT messages on `<prefix>.as.mqtt.<application>`).
//!
//! Only with NATS: an in-process bus has no other process to reach, so these calls fail
//! (callers check [`EventBus::subject_prefix`] first).

use async_nats::{HeaderMap, Subscriber};
use bytes::Bytes;
use futures_util::StreamExt;

use crate::bus::EventBus;
use crate::error::EventsError;

/// One raw message received by a [`RawSubscription`].
#[derive(Debug, Clone)]
pub struct RawMessage {
    /// The full subject, prefix included.
    pub subject: String,
    /// The payload as published.
    pub payload: Bytes,
    headers: Option<HeaderMap>,
}

impl RawMessage {
    /// The value of header `name`, if the publisher set it.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.as_ref()?.get(name).map(|v| v.as_str())
    }
}

/// The messages of one [`EventBus::subscribe_raw`] call; unsubscribes when dropped.
#[derive(Debug)]
pub struct RawSubscription {
    subscriber: Subscriber,
}

impl RawSubscription {
    /// The next message; `None` once the NATS connection is closed for good.
    pub async fn recv(&mut self) -> Option<RawMessage> {
        let message = self.subscriber.next().await?;
        Some(RawMessage {
            subject: message.subject.to_string(),
            payload: message.payload,
            headers: message.headers,
        })
    }
}

const IN_PROCESS: &str = "the event bus is in-process (events.nats.url is not set)";

impl EventBus {
    /// With NATS, the first token(s) of every subject (`events.nats.subject-prefix`);
    /// `None` for an in-process bus.
    pub fn subject_prefix(&self) -> Option<&str> {
        self.nats().map(|n| n.prefix())
    }

    /// Publishes `payload` with `headers` on `<prefix>.<suffix>` (NATS only). Waits only
    /// for room in the client's outgoing buffer, not for the server; messages of one bus
    /// reach each subscriber in the order they were published.
    pub async fn publish_raw(
        &self,
        suffix: &str,
        headers: &[(&str, &str)],
        payload: Bytes,
    ) -> Result<(), EventsError> {
        let Some(nats) = self.nats() else {
            return Err(EventsError::Publish {
                subject: suffix.to_owned(),
                reason: IN_PROCESS.to_owned(),
            });
        };
        let subject = format!("{}.{suffix}", nats.prefix());
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.insert(*name, *value);
        }
        nats.client()
            .publish_with_headers(subject.clone(), map, payload)
            .await
            .map_err(|e| EventsError::Publish {
                subject,
                reason: e.to_string(),
            })
    }

    /// Subscribes to `<prefix>.<suffix>` (NATS wildcards `*` and `>` allowed; NATS only).
    /// The subscription is flushed to the server before this returns, so that anything
    /// published afterwards is delivered.
    pub async fn subscribe_raw(&self, suffix: &str) -> Result<RawSubscription, EventsError> {
        let Some(nats) = self.nats() else {
            return Err(EventsError::Subscribe {
                subject: suffix.to_owned(),
                reason: IN_PROCESS.to_owned(),
            });
        };
        let subject = format!("{}.{suffix}", nats.prefix());
        let subscribe_error = |reason: String| EventsError::Subscribe {
            subject: subject.clone(),
            reason,
        };
        let subscriber = nats
            .client()
            .subscribe(subject.clone())
            .await
            .map_err(|e| subscribe_error(e.to_string()))?;
        nats.client()
            .flush()
            .await
            .map_err(|e| subscribe_error(format!("flushing the subscription failed: {e}")))?;
        Ok(RawSubscription { subscriber })
    }
}

/// `s` as one NATS subject token: letters, digits, `-` and `_` as they are, anything else
/// (dots, wildcards, blanks) escaped, so that an ID never spans or widens a subject.
pub fn subject_token(s: &str) -> String {
    crate::nats::token(s)
}
