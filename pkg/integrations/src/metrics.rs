//! Prometheus metrics of the integrations.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

type Labeled = Family<[(&'static str, &'static str); 1], Counter>;

/// Counters, cheap to clone (shared).
#[derive(Clone, Default, Debug)]
pub(crate) struct Metrics {
    /// Webhook delivery attempts by result (`ok`, `failed`).
    pub webhook_attempts: Labeled,
    /// Messages not delivered, by reason.
    pub dropped: Labeled,
    /// Messages published to pub/sub servers, by provider.
    pub pubsub_published: Labeled,
    /// Downlinks accepted by the downlink sink, by source (`webhook`, `nats`, `mqtt`).
    pub downlinks: Labeled,
    /// Refused input (downlink requests, management calls), by reason.
    pub rejected: Labeled,
}

impl Metrics {
    pub(crate) fn register(&self, registry: &mut Registry) {
        registry.register(
            "integrations_webhook_attempts",
            "Webhook delivery attempts, by result",
            self.webhook_attempts.clone(),
        );
        registry.register(
            "integrations_dropped",
            "Upstream messages not delivered to an integration, by reason",
            self.dropped.clone(),
        );
        registry.register(
            "integrations_pubsub_published",
            "Messages published to pub/sub servers, by provider",
            self.pubsub_published.clone(),
        );
        registry.register(
            "integrations_downlinks",
            "Downlinks received from integrations and accepted, by source",
            self.downlinks.clone(),
        );
        registry.register(
            "integrations_rejected",
            "Refused integration input (downlinks, management calls), by reason",
            self.rejected.clone(),
        );
    }

    pub(crate) fn inc(family: &Labeled, label: &'static str, value: &'static str) {
        family.get_or_create(&[(label, value)]).inc();
    }

    pub(crate) fn drop(&self, reason: &'static str) {
        Self::inc(&self.dropped, "reason", reason);
    }

    pub(crate) fn reject(&self, reason: &'static str) {
        Self::inc(&self.rejected, "reason", reason);
    }
}
