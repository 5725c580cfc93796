//! The AS's key-encryption keys: unwrapping the AppSKeys the Join Server wraps for it.

use std::collections::HashMap;

use lorawan::Aes128Key;
use lorawan::crypto::unwrap_key;
use tern_api::v3;

use crate::config::AsConfig;

/// Why an AppSKey could not be had in clear.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The envelope is empty.
    #[error("the key envelope holds no key")]
    Empty,
    /// The key is wrapped under a KEK this AS does not have.
    #[error("the key is wrapped under KEK `{0}`, which this Application Server does not have")]
    UnknownKek(String),
    /// Wrong KEK or corrupted data.
    #[error("the key wrapped under KEK `{label}` does not unwrap: {reason}")]
    Unwrap {
        /// The KEK label.
        label: String,
        /// Why.
        reason: String,
    },
    /// A clear key of the wrong length.
    #[error("the clear key has {0} bytes, expected 16")]
    Length(usize),
}

/// Key-encryption keys by label.
#[derive(Clone, Default)]
pub struct KeyVault {
    keks: HashMap<String, Aes128Key>,
}

impl std::fmt::Debug for KeyVault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Labels only: the keys never reach logs.
        f.debug_struct("KeyVault")
            .field("labels", &self.keks.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl KeyVault {
    /// The KEKs of the configuration; an invalid key is an error naming its label.
    pub fn from_config(config: &AsConfig) -> Result<Self, String> {
        let mut keks = HashMap::new();
        for (label, hex_key) in &config.keks {
            let key: Aes128Key = hex_key.expose().parse().map_err(|e| {
                format!("application-server.keks.{label:?}: not a 16-byte hex key: {e}")
            })?;
            keks.insert(label.clone(), key);
        }
        Ok(Self { keks })
    }

    /// A vault with these KEKs.
    pub fn new(keks: impl IntoIterator<Item = (String, Aes128Key)>) -> Self {
        Self {
            keks: keks.into_iter().collect(),
        }
    }

    /// The key of `envelope` in clear.
    pub fn unwrap(&self, envelope: &v3::KeyEnvelope) -> Result<Aes128Key, KeyError> {
        if !envelope.kek_label.is_empty() {
            let kek = self
                .keks
                .get(&envelope.kek_label)
                .ok_or_else(|| KeyError::UnknownKek(envelope.kek_label.clone()))?;
            return unwrap_key(kek, &envelope.encrypted_key).map_err(|e| KeyError::Unwrap {
                label: envelope.kek_label.clone(),
                reason: e.to_string(),
            });
        }
        match envelope.key.len() {
            0 => Err(KeyError::Empty),
            16 => {
                let mut k = [0u8; 16];
                k.copy_from_slice(&envelope.key);
                Ok(Aes128Key(k))
            }
            n => Err(KeyError::Length(n)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unwraps_with_the_labelled_kek_only() {
        let kek = Aes128Key([7; 16]);
        let key = Aes128Key([0x42; 16]);
        let vault = KeyVault::new([("as:a".to_owned(), kek)]);
        let env = v3::KeyEnvelope {
            kek_label: "as:a".into(),
            encrypted_key: lorawan::crypto::wrap_key(&kek, &key).to_vec(),
            key: Vec::new(),
        };
        assert_eq!(vault.unwrap(&env).unwrap(), key);
        let other = v3::KeyEnvelope {
            kek_label: "as:b".into(),
            ..env.clone()
        };
        assert_eq!(
            vault.unwrap(&other),
            Err(KeyError::UnknownKek("as:b".into()))
        );
        let bad = KeyVault::new([("as:a".to_owned(), Aes128Key([8; 16]))]);
        assert!(matches!(bad.unwrap(&env), Err(KeyError::Unwrap { .. })));
        assert_eq!(
            vault.unwrap(&v3::KeyEnvelope::default()),
            Err(KeyError::Empty)
        );
    }
}
