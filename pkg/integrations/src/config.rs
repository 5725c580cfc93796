//! The integrations' configuration: the `[application-server.integrations]` TOML section.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Delivery settings of webhooks and pub/sub integrations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct IntegrationsConfig {
    /// How long a webhook delivery is retried before it is dropped.
    #[serde(with = "humantime_serde")]
    pub retry_horizon: Duration,
    /// The delay before the first retry; doubled on every failure.
    #[serde(with = "humantime_serde")]
    pub min_backoff: Duration,
    /// The longest delay between two retries of a healthy webhook.
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// A webhook failing for longer than this is unhealthy.
    #[serde(with = "humantime_serde")]
    pub unhealthy_threshold: Duration,
    /// The delay between retries of an unhealthy webhook.
    #[serde(with = "humantime_serde")]
    pub unhealthy_retry_interval: Duration,
    /// The timeout of one webhook request.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Requests in flight per webhook (one per device at a time, to keep device order).
    pub max_in_flight: usize,
    /// Messages waiting to be persisted (webhooks) or published (per pub/sub); past it,
    /// messages are dropped and counted.
    pub queue_size: usize,
}

impl Default for IntegrationsConfig {
    fn default() -> Self {
        Self {
            retry_horizon: Duration::from_secs(24 * 3600),
            min_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(10 * 60),
            unhealthy_threshold: Duration::from_secs(10 * 60),
            unhealthy_retry_interval: Duration::from_secs(5 * 60),
            request_timeout: Duration::from_secs(10),
            max_in_flight: 16,
            queue_size: 4096,
        }
    }
}

impl IntegrationsConfig {
    /// Checks the values that would make delivery misbehave.
    pub fn validate(&self) -> Result<(), String> {
        if self.min_backoff.is_zero() {
            return Err("min-backoff must be positive".into());
        }
        if self.max_backoff < self.min_backoff {
            return Err("max-backoff must not be below min-backoff".into());
        }
        if self.unhealthy_retry_interval.is_zero() {
            return Err("unhealthy-retry-interval must be positive".into());
        }
        if self.request_timeout.is_zero() {
            return Err("request-timeout must be positive".into());
        }
        if self.max_in_flight == 0 {
            return Err("max-in-flight must be at least 1".into());
        }
        if self.queue_size == 0 {
            return Err("queue-size must be at least 1".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_kebab_case_toml_and_refuses_unknown_keys() {
        let c: IntegrationsConfig =
            toml::from_str("retry-horizon = \"2h\"\nmax-in-flight = 4\n").unwrap();
        assert_eq!(c.retry_horizon, Duration::from_secs(7200));
        assert_eq!(c.max_in_flight, 4);
        assert_eq!(c.min_backoff, IntegrationsConfig::default().min_backoff);
        assert!(toml::from_str::<IntegrationsConfig>("retry = \"1h\"").is_err());
        assert!(IntegrationsConfig::default().validate().is_ok());
        let bad = IntegrationsConfig {
            max_backoff: Duration::from_millis(1),
            ..Default::default()
        };
        assert!(bad.validate().unwrap_err().contains("max-backoff"));
    }

    #[test]
    fn backoff_doubles_within_bounds_with_jitter() {
        let c = IntegrationsConfig::default();
        for attempts in 1..40 {
            let d = crate::webhook::backoff(&c, attempts);
            let base = c
                .min_backoff
                .saturating_mul(1 << (attempts - 1).min(30))
                .min(c.max_backoff);
            assert!(d >= base / 2 && d <= base, "{attempts}: {d:?} vs {base:?}");
        }
    }
}
