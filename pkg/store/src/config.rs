//! The `[store]` section of the configuration.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::StoreError;

/// Which database the store uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    /// SQLite in `<data-dir>/tern.db`: no external service (the default).
    #[default]
    Embedded,
    /// PostgreSQL: shared by every process of a cluster.
    Postgres,
}

impl Backend {
    /// The name used in configuration and messages.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Embedded => "embedded",
            Self::Postgres => "postgres",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The store configuration: `[store]`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Which database: `embedded` (default) or `postgres`.
    pub backend: Backend,
    /// PostgreSQL settings, used when `backend = "postgres"`.
    pub postgres: PostgresConfig,
    /// Batching of the uplink hot path's writes.
    pub group_commit: GroupCommitConfig,
}

impl StoreConfig {
    /// Checks the values that serde cannot: ranges, URL syntax, schema name.
    pub fn validate(&self) -> Result<(), StoreError> {
        if self.group_commit.max_batch == 0 {
            return Err(StoreError::Config {
                key: "store.group-commit.max-batch",
                reason: "must be at least 1".into(),
            });
        }
        if self.group_commit.max_delay > Duration::from_secs(1) {
            return Err(StoreError::Config {
                key: "store.group-commit.max-delay",
                reason: format!(
                    "{} is longer than 1s: every uplink would wait that long",
                    humantime::format_duration(self.group_commit.max_delay)
                ),
            });
        }
        if self.backend == Backend::Postgres {
            self.postgres.validate()?;
        }
        Ok(())
    }

    /// A copy with the PostgreSQL password replaced by `****`, for printing.
    pub fn masked(&self) -> Self {
        let mut c = self.clone();
        c.postgres.url = mask_url(&c.postgres.url);
        c
    }
}

/// PostgreSQL settings: `[store.postgres]`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct PostgresConfig {
    /// Connection URL, e.g. `postgres://tern:secret@db:5432/tern` (or `key=value` form).
    /// TLS as in libpq: `sslmode=disable|prefer|require|verify-ca|verify-full` (default
    /// `prefer`) and `sslrootcert=<CA file>`, e.g. `…/tern?sslmode=verify-full&sslrootcert=/etc/tern/db-ca.pem`.
    pub url: String,
    /// Most connections the pool opens.
    pub pool_size: usize,
    /// Schema for Tern's tables, created if missing; empty for the server's default
    /// `search_path` (usually `public`).
    pub schema: String,
    /// How long to wait for a connection (pool slot or new connection) before failing.
    #[serde(with = "duration")]
    pub connect_timeout: Duration,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            pool_size: 16,
            schema: String::new(),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

impl PostgresConfig {
    /// The URL with its password replaced by `****`.
    pub fn masked_url(&self) -> String {
        mask_url(&self.url)
    }

    fn validate(&self) -> Result<(), StoreError> {
        if self.url.is_empty() {
            return Err(StoreError::Config {
                key: "store.postgres.url",
                reason: "required when store.backend is \"postgres\"".into(),
            });
        }
        let url_error = |reason: String| StoreError::Config {
            key: "store.postgres.url",
            reason: format!("{:?}: {reason}", self.masked_url()),
        };
        let (url, _) = crate::engine::pg_tls::split_url(&self.url).map_err(url_error)?;
        if let Err(e) = url.parse::<tokio_postgres::Config>() {
            return Err(url_error(format!("not a PostgreSQL URL: {e}")));
        }
        if self.pool_size == 0 {
            return Err(StoreError::Config {
                key: "store.postgres.pool-size",
                reason: "must be at least 1".into(),
            });
        }
        if self.connect_timeout.is_zero() {
            return Err(StoreError::Config {
                key: "store.postgres.connect-timeout",
                reason: "must be greater than zero".into(),
            });
        }
        if !self.schema.is_empty() && !valid_schema_name(&self.schema) {
            return Err(StoreError::Config {
                key: "store.postgres.schema",
                reason: format!(
                    "{:?} is not a plain identifier: use lowercase letters, digits and '_', \
                     not starting with a digit, at most 63 characters",
                    self.schema
                ),
            });
        }
        Ok(())
    }
}

fn valid_schema_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some('a'..='z' | '_'))
        && s.len() <= 63
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_'))
}

impl fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("url", &self.masked_url())
            .field("pool_size", &self.pool_size)
            .field("schema", &self.schema)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

impl fmt::Display for PostgresConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (pool {})", self.masked_url(), self.pool_size)?;
        if !self.schema.is_empty() {
            write!(f, " schema {}", self.schema)?;
        }
        Ok(())
    }
}

/// Group commit of hot-path writes: `[store.group-commit]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct GroupCommitConfig {
    /// Longest time the first write of a batch waits for others, e.g. "2ms" ("0ms": commit
    /// whatever is queued without waiting).
    #[serde(with = "duration")]
    pub max_delay: Duration,
    /// Most writes committed in one transaction.
    pub max_batch: usize,
}

impl Default for GroupCommitConfig {
    fn default() -> Self {
        Self {
            max_delay: Duration::from_millis(2),
            max_batch: 128,
        }
    }
}

/// Replaces the password of a `postgres://user:password@host` URL, or of a `password=...`
/// key/value connection string, with `****`.
pub fn mask_url(url: &str) -> String {
    if let Some(scheme_end) = url.find("://") {
        let rest = &url[scheme_end + 3..];
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let authority = &rest[..authority_end];
        if let Some(at) = authority.rfind('@') {
            let userinfo = &authority[..at];
            if let Some(colon) = userinfo.find(':') {
                return format!(
                    "{}{}:****{}",
                    &url[..scheme_end + 3],
                    &userinfo[..colon],
                    &url[scheme_end + 3 + at..]
                );
            }
        }
        // The password can also be a query parameter.
        return mask_query_password(url);
    }
    url.split(' ')
        .map(|part| {
            if part.starts_with("password=") {
                "password=****"
            } else {
                part
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn mask_query_password(url: &str) -> String {
    let Some(q) = url.find('?') else {
        return url.to_owned();
    };
    let (head, query) = url.split_at(q + 1);
    let masked: Vec<String> = query
        .split('&')
        .map(|p| {
            if p.starts_with("password=") {
                "password=****".to_owned()
            } else {
                p.to_owned()
            }
        })
        .collect();
    format!("{head}{}", masked.join("&"))
}

/// Serde for durations written like `2ms` or `5s`.
mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*d))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(|e| {
            serde::de::Error::custom(format!(
                "invalid duration {text:?}: {e}; expected e.g. \"2ms\" or \"5s\""
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_embedded() {
        let c = StoreConfig::default();
        assert_eq!(c.backend, Backend::Embedded);
        assert_eq!(c.group_commit.max_delay, Duration::from_millis(2));
        c.validate().unwrap();
    }

    #[test]
    fn parses_kebab_case_toml() {
        let c: StoreConfig = toml::from_str(
            r#"
            backend = "postgres"
            [postgres]
            url = "postgres://tern:s3cret@db:5432/tern"
            pool-size = 4
            schema = "tern"
            [group-commit]
            max-delay = "5ms"
            max-batch = 10
            "#,
        )
        .unwrap();
        assert_eq!(c.backend, Backend::Postgres);
        assert_eq!(c.postgres.pool_size, 4);
        assert_eq!(c.group_commit.max_delay, Duration::from_millis(5));
        assert_eq!(c.group_commit.max_batch, 10);
        c.validate().unwrap();
        let printed = format!("{c:?} {}", c.postgres);
        assert!(!printed.contains("s3cret"), "{printed}");
        assert!(
            printed.contains("postgres://tern:****@db:5432/tern"),
            "{printed}"
        );
        assert!(!toml::to_string(&c.masked()).unwrap().contains("s3cret"));
    }

    #[test]
    fn rejects_unknown_keys_and_bad_values() {
        let err = toml::from_str::<StoreConfig>("backnd = \"embedded\"").unwrap_err();
        assert!(err.to_string().contains("backnd"), "{err}");
        let err =
            toml::from_str::<StoreConfig>("[group-commit]\nmax-delay = \"2 parsecs\"").unwrap_err();
        assert!(err.to_string().contains("2 parsecs"), "{err}");
        let mut c = StoreConfig {
            backend: Backend::Postgres,
            ..Default::default()
        };
        let err = c.validate().unwrap_err();
        assert!(err.to_string().contains("store.postgres.url"), "{err}");
        c.postgres.url = "postgres://localhost/x".into();
        c.postgres.schema = "Bad-Name".into();
        let err = c.validate().unwrap_err();
        assert!(err.to_string().contains("store.postgres.schema"), "{err}");
        c.postgres.schema = String::new();
        c.group_commit.max_batch = 0;
        let err = c.validate().unwrap_err();
        assert!(err.to_string().contains("max-batch"), "{err}");
    }

    #[test]
    fn masks_passwords() {
        assert_eq!(
            mask_url("postgres://u:p@h/db?sslmode=disable"),
            "postgres://u:****@h/db?sslmode=disable"
        );
        assert_eq!(mask_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(
            mask_url("postgres://h/db?user=u&password=p"),
            "postgres://h/db?user=u&password=****"
        );
        assert_eq!(
            mask_url("host=h user=u password=p dbname=d"),
            "host=h user=u password=**** dbname=d"
        );
    }
}
