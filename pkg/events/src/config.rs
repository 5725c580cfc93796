//! The `[events]` configuration section.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::EventsError;

/// Default per-subscriber queue length (and NATS publish queue length).
pub const DEFAULT_BUFFER: usize = 4096;

/// Default first token(s) of the NATS subjects.
pub const DEFAULT_SUBJECT_PREFIX: &str = "tern";

/// The `[events]` section. The default is the in-process bus.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct EventsConfig {
    /// Share events through this NATS server (`[events.nats]`); unset for in-process only.
    pub nats: Option<NatsConfig>,
    /// How many events each subscriber may have waiting before it lags and misses some;
    /// also the length of the NATS publish queue.
    pub buffer: usize,
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            nats: None,
            buffer: DEFAULT_BUFFER,
        }
    }
}

/// The `[events.nats]` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct NatsConfig {
    /// The server, e.g. `nats://nats.example.com:4222` or `tls://user:password@host:4222`;
    /// several servers of one cluster are comma-separated.
    pub url: String,
    /// First token(s) of every subject: `<prefix>.events.<entity-kind>.<entity-id>.<name>`.
    /// Clusters sharing one NATS server need different prefixes.
    #[serde(default = "default_subject_prefix")]
    pub subject_prefix: String,
    /// A NATS credentials file (`.creds`: JWT and NKey seed); unset for none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<PathBuf>,
    /// How events are encoded on the wire: `json` (proto3 JSON, readable with `nats sub`)
    /// or `protobuf` (smaller, faster). Receivers read both.
    #[serde(default)]
    pub encoding: Encoding,
}

fn default_subject_prefix() -> String {
    DEFAULT_SUBJECT_PREFIX.to_owned()
}

impl NatsConfig {
    /// NATS at `url` with the defaults for everything else.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            subject_prefix: default_subject_prefix(),
            credentials: None,
            encoding: Encoding::default(),
        }
    }

    /// The URL with any password or token replaced by `***`, for logs and errors.
    pub fn redacted_url(&self) -> String {
        redact_url(&self.url)
    }
}

/// The wire encoding of events on NATS.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Encoding {
    /// proto3 JSON mapping (`Content-Type: application/json`).
    #[default]
    Json,
    /// Protobuf binary (`Content-Type: application/protobuf`).
    Protobuf,
}

impl EventsConfig {
    /// Checks every value; the error names the key, the value and why.
    pub fn validate(&self) -> Result<(), EventsError> {
        if self.buffer == 0 {
            return Err(EventsError::config("buffer", "0", "must be at least 1"));
        }
        let Some(nats) = &self.nats else {
            return Ok(());
        };
        let url = nats.redacted_url();
        if nats.url.trim().is_empty() {
            return Err(EventsError::config("nats.url", url, "is empty"));
        }
        for server in nats.url.split(',') {
            if let Err(e) = server.trim().parse::<async_nats::ServerAddr>() {
                return Err(EventsError::config(
                    "nats.url",
                    url,
                    format!("{:?} is not a NATS server address: {e}", redact_url(server)),
                ));
            }
        }
        let prefix = &nats.subject_prefix;
        if prefix.is_empty() {
            return Err(EventsError::config(
                "nats.subject-prefix",
                prefix,
                "is empty",
            ));
        }
        for token in prefix.split('.') {
            if token.is_empty() {
                return Err(EventsError::config(
                    "nats.subject-prefix",
                    prefix,
                    "has an empty token (leading, trailing or double '.')",
                ));
            }
            if let Some(c) = token
                .chars()
                .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
            {
                return Err(EventsError::config(
                    "nats.subject-prefix",
                    prefix,
                    format!("contains {c:?}; only letters, digits, '-', '_' and '.' are allowed"),
                ));
            }
        }
        Ok(())
    }
}

/// Replaces the password (or token) of every `scheme://userinfo@host` entry by `***`.
pub(crate) fn redact_url(url: &str) -> String {
    url.split(',')
        .map(|server| {
            let (scheme, rest) = match server.find("://") {
                Some(i) => server.split_at(i + 3),
                None => ("", server),
            };
            match rest.rsplit_once('@') {
                Some((userinfo, host)) => match userinfo.split_once(':') {
                    Some((user, _)) => format!("{scheme}{user}:***@{host}"),
                    None => format!("{scheme}***@{host}"),
                },
                None => server.to_owned(),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords_and_tokens() {
        assert_eq!(redact_url("nats://127.0.0.1:4222"), "nats://127.0.0.1:4222");
        assert_eq!(
            redact_url("nats://me:secret@a:4222,tls://token@b:4222"),
            "nats://me:***@a:4222,tls://***@b:4222"
        );
    }

    #[test]
    fn validate_names_key_value_and_reason() {
        let mut config = EventsConfig {
            nats: Some(NatsConfig::new("nats://u:pw@127.0.0.1:4222")),
            ..Default::default()
        };
        config.validate().unwrap();

        config.nats.as_mut().unwrap().subject_prefix = "acme..tern".into();
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("events.nats.subject-prefix"), "{err}");
        assert!(err.contains("empty token"), "{err}");

        config.nats.as_mut().unwrap().subject_prefix = "tern>".into();
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("'>'"), "{err}");

        config.nats.as_mut().unwrap().subject_prefix = "tern".into();
        config.nats.as_mut().unwrap().url = "nats://u:pw@127.0.0.1:notaport".into();
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("events.nats.url"), "{err}");
        assert!(!err.contains("pw"), "password leaked: {err}");

        config.buffer = 0;
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("events.buffer"), "{err}");
    }
}
