//! What the integrations persist: webhook and pub/sub configurations, webhook health, and
//! the webhook outbox (one record per pending delivery).
//!
//! Outbox keys are `{app}/{webhook}/{device}/{sequence:020}`, so a prefix scan of a webhook
//! yields each device's deliveries together and in the order they were queued.

use serde::{Deserialize, Serialize};
use tern_store::Table;

/// Webhook configurations (`tern.v3.ApplicationWebhook`), keyed `{app}/{webhook}`.
pub static WEBHOOKS: Table = Table {
    name: "integrations_webhooks",
    what: "webhook",
};

/// Webhook health (`tern.v3.ApplicationWebhookHealth`), keyed `{app}/{webhook}`.
pub static WEBHOOK_HEALTH: Table = Table {
    name: "integrations_webhook_health",
    what: "webhook health",
};

/// Pending webhook deliveries ([`Delivery`] as JSON), keyed
/// `{app}/{webhook}/{device}/{sequence:020}`.
pub static WEBHOOK_OUTBOX: Table = Table {
    name: "integrations_webhook_outbox",
    what: "webhook delivery",
};

/// Pub/sub configurations (`tern.v3.ApplicationPubSub`), keyed `{app}/{pubsub}`.
pub static PUBSUBS: Table = Table {
    name: "integrations_pubsubs",
    what: "pub/sub integration",
};

/// A pending webhook delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Delivery {
    /// The message type (see `UpstreamKind::as_str`).
    pub kind: String,
    /// The JSON body.
    pub body: String,
    /// When the message was queued (Unix ms); the retry horizon counts from here.
    pub queued_at_ms: i64,
    /// Failed attempts so far.
    pub attempts: u32,
    /// Not before (Unix ms).
    pub next_attempt_ms: i64,
}

/// `{app}/{id}`.
pub(crate) fn config_key(app: &str, id: &str) -> String {
    format!("{app}/{id}")
}

/// The outbox prefix of one webhook.
pub(crate) fn outbox_prefix(app: &str, webhook: &str) -> String {
    format!("{app}/{webhook}/")
}

/// The outbox key of one delivery.
pub(crate) fn outbox_key(app: &str, webhook: &str, device: &str, sequence: u64) -> String {
    format!("{app}/{webhook}/{device}/{sequence:020}")
}

/// The device and sequence of an outbox key below `prefix`.
pub(crate) fn split_outbox_key<'a>(prefix: &str, key: &'a str) -> Option<(&'a str, u64)> {
    let rest = key.strip_prefix(prefix)?;
    let (device, seq) = rest.rsplit_once('/')?;
    Some((device, seq.parse().ok()?))
}

/// Checks an ID: 2..=36 lowercase letters, digits and dashes, not starting or ending with a
/// dash (the entity ID rules of the Identity Server).
pub(crate) fn check_id(field: &'static str, id: &str) -> Result<(), String> {
    let ok = (2..=36).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !id.starts_with('-')
        && !id.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{field} `{id}` must be 2 to 36 lowercase letters, digits or dashes, not starting or ending with a dash"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outbox_keys_round_trip_and_sort_by_sequence() {
        let p = outbox_prefix("app-1", "wh");
        let a = outbox_key("app-1", "wh", "dev-1", 9);
        let b = outbox_key("app-1", "wh", "dev-1", 10);
        assert!(a < b);
        assert_eq!(split_outbox_key(&p, &b), Some(("dev-1", 10)));
        assert!(check_id("webhook_id", "my-hook1").is_ok());
        assert!(check_id("webhook_id", "My/hook").is_err());
        assert!(check_id("webhook_id", "-x").is_err());
    }
}
