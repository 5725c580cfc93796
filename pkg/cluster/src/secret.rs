//! Secrets in configuration (cluster keys, KEKs, API keys): masked wherever they are shown.

use std::fmt;

use serde::{Deserialize, Serialize, Serializer};

/// A secret value: readable with [`Secret::expose`], masked in `Debug` and when serialized.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Secret(String);

impl Secret {
    /// What a secret looks like when displayed.
    pub const MASK: &'static str = "********";

    /// The secret in clear; use only where the secret itself is needed.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Secret {
    type Error = &'static str;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        if value.is_empty() {
            return Err("a secret must not be empty");
        }
        Ok(Self(value))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({})", Self::MASK)
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(Self::MASK)
    }
}
