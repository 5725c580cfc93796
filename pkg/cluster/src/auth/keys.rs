//! Cluster keys from the configuration, and the credentials a client puts on its calls.

use std::fmt;

use serde::{Deserialize, Serialize, Serializer};
use sha2::{Digest, Sha256};
use subtle::{Choice, ConstantTimeEq};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::{Interceptor, InterceptorLayer};
use tonic::{Request, Status};

use super::AUTHORIZATION;

/// The shortest cluster key accepted: shorter keys are guessable.
pub const MIN_CLUSTER_KEY_LEN: usize = 16;

/// Why a cluster key or API key cannot be used. Never contains the key itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// No cluster key was configured.
    #[error("no cluster key configured: at least one is needed to sign calls between roles")]
    NoClusterKey,
    /// A cluster key is shorter than [`MIN_CLUSTER_KEY_LEN`].
    #[error(
        "cluster key #{index} is too short: {len} characters, at least {MIN_CLUSTER_KEY_LEN} needed"
    )]
    TooShort {
        /// Position of the key in the list, from 1.
        index: usize,
        /// Its length in characters.
        len: usize,
    },
    /// A key contains a character that cannot be sent as gRPC metadata.
    #[error(
        "{what} has an invalid character at position {position}: only visible ASCII without spaces is allowed"
    )]
    InvalidCharacter {
        /// Which key, e.g. `cluster key #2` or `API key`.
        what: String,
        /// Position of the character, from 1.
        position: usize,
    },
    /// An API key is empty.
    #[error("API key is empty")]
    EmptyApiKey,
}

/// The shared secrets of the cluster.
///
/// The first key signs outgoing calls; every key is accepted on incoming calls, so keys can be
/// rotated: add the new key second everywhere, then move it first everywhere, then remove the
/// old one. Only SHA-256 digests of the accepted keys are kept, and comparing digests (of fixed
/// length) in constant time leaks neither the keys nor their lengths.
///
/// Deserializes from a list of strings; serializes as a list of `"<redacted>"`, so printing the
/// effective configuration never shows a key.
#[derive(Clone, Deserialize)]
#[serde(try_from = "Vec<String>")]
pub struct ClusterKeys {
    signing: MetadataValue<Ascii>,
    accepted: Vec<[u8; 32]>,
}

impl ClusterKeys {
    /// Validates the keys: at least one, each at least [`MIN_CLUSTER_KEY_LEN`] characters of
    /// visible ASCII without spaces.
    pub fn new<S: AsRef<str>>(keys: &[S]) -> Result<Self, KeyError> {
        let first = keys.first().ok_or(KeyError::NoClusterKey)?;
        for (i, key) in keys.iter().enumerate() {
            let key = key.as_ref();
            check_chars(key, || format!("cluster key #{}", i + 1))?;
            if key.len() < MIN_CLUSTER_KEY_LEN {
                return Err(KeyError::TooShort {
                    index: i + 1,
                    len: key.len(),
                });
            }
        }
        Ok(Self {
            signing: sensitive_value(&format!("ClusterKey {}", first.as_ref())),
            accepted: keys.iter().map(|k| digest(k.as_ref())).collect(),
        })
    }

    /// Whether `presented` is one of the accepted keys, compared in constant time.
    pub fn accepts(&self, presented: &str) -> bool {
        let presented = digest(presented);
        // Compare with every key, without stopping at the first match, so timing does not
        // tell which key (or whether an old one) matched.
        let mut matched = Choice::from(0);
        for key in &self.accepted {
            matched |= key.ct_eq(&presented);
        }
        matched.into()
    }

    /// How many keys are accepted.
    pub fn len(&self) -> usize {
        self.accepted.len()
    }

    /// Always false: a `ClusterKeys` holds at least one key.
    pub fn is_empty(&self) -> bool {
        self.accepted.is_empty()
    }

    /// The credentials that sign outgoing calls with the first key.
    pub fn credentials(&self) -> CallCredentials {
        CallCredentials {
            value: self.signing.clone(),
        }
    }
}

impl TryFrom<Vec<String>> for ClusterKeys {
    type Error = KeyError;

    fn try_from(keys: Vec<String>) -> Result<Self, KeyError> {
        Self::new(&keys)
    }
}

impl Serialize for ClusterKeys {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.accepted.iter().map(|_| "<redacted>"))
    }
}

impl fmt::Debug for ClusterKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClusterKeys({} keys, redacted)", self.accepted.len())
    }
}

/// The `authorization` metadata a client adds to every call: a cluster key, or the API key of
/// an external Application Server.
///
/// Use it as a tonic interceptor (`XClient::with_interceptor(channel, creds)`) or as a tower
/// layer ([`CallCredentials::layer`]).
#[derive(Clone)]
pub struct CallCredentials {
    value: MetadataValue<Ascii>,
}

impl CallCredentials {
    /// Credentials of a caller outside the cluster: `authorization: Bearer <api_key>`.
    pub fn api_key(api_key: &str) -> Result<Self, KeyError> {
        if api_key.is_empty() {
            return Err(KeyError::EmptyApiKey);
        }
        check_chars(api_key, || "API key".to_owned())?;
        Ok(Self {
            value: sensitive_value(&format!("Bearer {api_key}")),
        })
    }

    /// A tower layer adding these credentials to every request of a tonic client.
    pub fn layer(&self) -> InterceptorLayer<Self> {
        InterceptorLayer::new(self.clone())
    }
}

impl Interceptor for CallCredentials {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request
            .metadata_mut()
            .insert(AUTHORIZATION, self.value.clone());
        Ok(request)
    }
}

impl fmt::Debug for CallCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CallCredentials(redacted)")
    }
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

fn check_chars(key: &str, what: impl FnOnce() -> String) -> Result<(), KeyError> {
    match key.bytes().position(|b| !b.is_ascii_graphic()) {
        Some(i) => Err(KeyError::InvalidCharacter {
            what: what(),
            position: i + 1,
        }),
        None => Ok(()),
    }
}

/// Builds a metadata value from checked visible ASCII, marked sensitive so HTTP/2 header
/// compression never indexes it.
fn sensitive_value(s: &str) -> MetadataValue<Ascii> {
    let mut v = MetadataValue::try_from(s).expect("checked: visible ASCII and one space");
    v.set_sensitive(true);
    v
}
