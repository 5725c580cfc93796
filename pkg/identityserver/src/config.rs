//! The `[identity-server]` configuration section.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::secrets::HashCost;

/// The `[identity-server]` section.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct IsConfig {
    /// How long an access token issued at login (or refresh) is valid.
    #[serde(with = "humantime_serde")]
    pub access_token_ttl: Duration,
    /// How long a refresh token is valid; each refresh issues a new one.
    #[serde(with = "humantime_serde")]
    pub refresh_token_ttl: Duration,
    /// The HMAC-SHA256 key signing access tokens (at least 32 characters). Empty: a random
    /// key is generated once and kept in the store, shared by every IS of the cluster.
    /// Printed masked.
    #[serde(serialize_with = "masked")]
    pub token_signing_key: String,
    /// Memory of the argon2id hashes of passwords and API keys, in KiB.
    pub hash_memory_kib: u32,
    /// Passes of the argon2id hashes.
    pub hash_iterations: u32,
    /// How long a verified API key is remembered (revocation through the event bus ends it
    /// at once; this bounds the damage of a lost event).
    #[serde(with = "humantime_serde")]
    pub api_key_cache_ttl: Duration,
    /// How long a gateway/device lookup of the hot path is remembered (changes through the
    /// event bus end it at once; this bounds the damage of a lost event).
    #[serde(with = "humantime_serde")]
    pub registry_cache_ttl: Duration,
    /// On a first start with an empty store, create user `admin` and an admin API key and
    /// write them to `<data-dir>/bootstrap.txt`.
    pub bootstrap: bool,
    /// Page size of List calls that ask for none.
    pub default_page_size: u32,
}

impl Default for IsConfig {
    fn default() -> Self {
        let cost = HashCost::default();
        Self {
            access_token_ttl: Duration::from_secs(15 * 60),
            refresh_token_ttl: Duration::from_secs(30 * 24 * 3600),
            token_signing_key: String::new(),
            hash_memory_kib: cost.memory_kib,
            hash_iterations: cost.iterations,
            api_key_cache_ttl: Duration::from_secs(300),
            registry_cache_ttl: Duration::from_secs(300),
            bootstrap: true,
            default_page_size: 100,
        }
    }
}

impl IsConfig {
    /// The argon2id cost.
    pub fn hash_cost(&self) -> HashCost {
        HashCost {
            memory_kib: self.hash_memory_kib,
            iterations: self.hash_iterations,
        }
    }

    /// Checks the values; the error names the key.
    pub fn validate(&self) -> Result<(), String> {
        if !self.token_signing_key.is_empty() && self.token_signing_key.len() < 32 {
            return Err(format!(
                "identity-server.token-signing-key: {} characters, at least 32 are needed",
                self.token_signing_key.len()
            ));
        }
        if self.access_token_ttl.is_zero() {
            return Err("identity-server.access-token-ttl: must be more than 0".into());
        }
        if self.refresh_token_ttl.is_zero() {
            return Err("identity-server.refresh-token-ttl: must be more than 0".into());
        }
        if self.hash_memory_kib < 8 || self.hash_iterations == 0 {
            return Err(
                "identity-server.hash-memory-kib must be at least 8 and hash-iterations at least 1"
                    .into(),
            );
        }
        if self.default_page_size == 0 {
            return Err("identity-server.default-page-size: must be more than 0".into());
        }
        Ok(())
    }
}

impl std::fmt::Debug for IsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IsConfig")
            .field("access_token_ttl", &self.access_token_ttl)
            .field("refresh_token_ttl", &self.refresh_token_ttl)
            .field("token_signing_key", &"<redacted>")
            .field("hash_memory_kib", &self.hash_memory_kib)
            .field("hash_iterations", &self.hash_iterations)
            .field("bootstrap", &self.bootstrap)
            .finish_non_exhaustive()
    }
}

fn masked<S: serde::Serializer>(key: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(if key.is_empty() { "" } else { "<redacted>" })
}
