//! The `[join-server]` configuration section.
//!
//! ```toml
//! [join-server]
//! # The key that encrypts root keys and stored session keys at rest (16, 24 or 32 bytes).
//! # Either inline hex, or a file holding the hex; a file that does not exist yet is
//! # created with a random 32-byte key (mode 0600) on first start.
//! root-key-kek-file = "/var/lib/tern/join-server/root-key.kek"
//! # root-key-kek = "000102030405060708090a0b0c0d0e0f"
//! ns-kek-label = "ns:local"       # "" = network keys go to the NS in clear
//! as-kek-label = "as:local"       # never empty: the AppSKey always leaves wrapped
//! join-euis = []                  # served JoinEUI prefixes, e.g. "70b3d57ed0000000/40"; empty = all
//! session-key-lifetime = "0s"     # "0s" = no limit
//!
//! [join-server.keks]
//! "ns:local" = "00112233445566778899aabbccddeeff"
//! "as:local" = { file = "/etc/tern/as-local.kek" }
//! ```
//!
//! Choice for the at-rest key: the Join Server has no data directory of its own, so the key
//! must be given explicitly (`root-key-kek` or `root-key-kek-file`).
//! [`JsConfig::with_local_defaults`] fills in files under a data directory (created on first
//! start) for a zero-configuration `tern start`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use lorawan::Eui64;
use serde::{Deserialize, Serialize};

use crate::kek::Kek;

/// Default KEK label for the network session keys sent to the NS.
pub const DEFAULT_NS_KEK_LABEL: &str = "ns:local";
/// Default KEK label for the AppSKey sent to the AS.
pub const DEFAULT_AS_KEK_LABEL: &str = "as:local";

/// The `[join-server]` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct JsConfig {
    /// The at-rest key for root keys and stored session keys: 16, 24 or 32 bytes in hex.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub root_key_kek: Option<String>,
    /// A file holding the at-rest key in hex; created with a random key when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub root_key_kek_file: Option<PathBuf>,
    /// Key-encryption keys by label, for wrapping session keys (RFC 3394).
    pub keks: BTreeMap<String, KeySource>,
    /// The KEK label the network session keys are wrapped under; empty for clear keys.
    pub ns_kek_label: String,
    /// The KEK label the AppSKey is wrapped under; must name a configured KEK.
    pub as_kek_label: String,
    /// JoinEUI prefixes this Join Server serves (`"70b3d57ed0000000/40"`, or a full EUI);
    /// empty for all.
    pub join_euis: Vec<String>,
    /// How long session keys may be used before the device must rejoin; zero for no limit.
    #[serde(with = "humantime_serde")]
    pub session_key_lifetime: Duration,
}

impl Default for JsConfig {
    fn default() -> Self {
        Self {
            root_key_kek: None,
            root_key_kek_file: None,
            keks: BTreeMap::new(),
            ns_kek_label: DEFAULT_NS_KEK_LABEL.to_owned(),
            as_kek_label: DEFAULT_AS_KEK_LABEL.to_owned(),
            join_euis: Vec::new(),
            session_key_lifetime: Duration::ZERO,
        }
    }
}

/// Where a key comes from: inline hex, or a file holding the hex.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum KeySource {
    /// The key in hex.
    Hex(String),
    /// A file holding the key in hex (whitespace around it is ignored).
    File {
        /// The file.
        file: PathBuf,
        /// Create the file with a random key when it does not exist.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        create: bool,
    },
}

/// A configuration value that is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("join-server.{key}: {reason}")]
pub struct ConfigError {
    /// The configuration key, e.g. `keks."as:local"`.
    pub key: String,
    /// Why.
    pub reason: String,
}

impl ConfigError {
    fn new(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

/// A JoinEUI prefix: the first `bits` bits of `eui`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JoinEuiPrefix {
    /// The EUI (bits after the prefix are ignored).
    pub eui: Eui64,
    /// The prefix length, 0..=64.
    pub bits: u8,
}

impl JoinEuiPrefix {
    /// Whether `eui` starts with this prefix.
    pub fn matches(&self, eui: Eui64) -> bool {
        if self.bits == 0 {
            return true;
        }
        let mask = u64::MAX << (64 - u32::from(self.bits));
        eui.to_u64() & mask == self.eui.to_u64() & mask
    }
}

impl std::str::FromStr for JoinEuiPrefix {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (eui, bits) = match s.split_once('/') {
            Some((eui, bits)) => (
                eui,
                bits.parse::<u8>()
                    .ok()
                    .filter(|b| *b <= 64)
                    .ok_or_else(|| format!("{s:?}: prefix length must be 0..=64"))?,
            ),
            None => (s, 64),
        };
        let eui = eui.parse::<Eui64>().map_err(|e| format!("{s:?}: {e}"))?;
        Ok(Self { eui, bits })
    }
}

/// The checked configuration: keys loaded, labels resolved.
#[derive(Debug, Clone)]
pub(crate) struct Resolved {
    pub root_kek: Kek,
    pub keks: BTreeMap<String, Kek>,
    pub ns_kek_label: String,
    pub as_kek_label: String,
    pub join_euis: Vec<JoinEuiPrefix>,
    pub lifetime: Option<Duration>,
}

impl JsConfig {
    /// Fills in what a single-process `tern start` needs under `data_dir`: the at-rest key
    /// file (`join-server/root-key.kek`) when no at-rest key is set, and a file per default
    /// NS/AS KEK label that has no key (`join-server/<label>.kek`, `:` as `_`), each created
    /// with a random key on first start.
    pub fn with_local_defaults(mut self, data_dir: &Path) -> Self {
        let dir = data_dir.join("join-server");
        if self.root_key_kek.is_none() && self.root_key_kek_file.is_none() {
            self.root_key_kek_file = Some(dir.join("root-key.kek"));
        }
        for label in [self.ns_kek_label.clone(), self.as_kek_label.clone()] {
            if !label.is_empty() && !self.keks.contains_key(&label) {
                let file = dir.join(format!("{}.kek", label.replace([':', '/'], "_")));
                self.keks
                    .insert(label, KeySource::File { file, create: true });
            }
        }
        self
    }

    /// Checks the section and loads its keys (creating key files marked for creation).
    pub(crate) fn resolve(&self) -> Result<Resolved, ConfigError> {
        let root_kek = match (&self.root_key_kek, &self.root_key_kek_file) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::new(
                    "root-key-kek",
                    "set either root-key-kek or root-key-kek-file, not both",
                ));
            }
            (Some(hex), None) => load(&KeySource::Hex(hex.clone()), "root-key-kek")?,
            (None, Some(file)) => load_or_create(file, ROOT_KEK_LEN, "root-key-kek-file")?,
            (None, None) => {
                return Err(ConfigError::new(
                    "root-key-kek",
                    "required: the key that encrypts root keys at rest (root-key-kek in hex, \
                     or root-key-kek-file)",
                ));
            }
        };
        let mut keks = BTreeMap::new();
        for (label, source) in &self.keks {
            let key = format!("keks.{label:?}");
            if label.is_empty() {
                return Err(ConfigError::new(key, "a KEK label must not be empty"));
            }
            keks.insert(label.clone(), load(source, &key)?);
        }
        if !self.ns_kek_label.is_empty() && !keks.contains_key(&self.ns_kek_label) {
            return Err(ConfigError::new(
                "ns-kek-label",
                format!(
                    "no KEK {:?} in join-server.keks (set ns-kek-label = \"\" to send the network \
                     keys in clear)",
                    self.ns_kek_label
                ),
            ));
        }
        if self.as_kek_label.is_empty() {
            return Err(ConfigError::new(
                "as-kek-label",
                "must not be empty: the AppSKey never leaves the Join Server in clear",
            ));
        }
        if !keks.contains_key(&self.as_kek_label) {
            return Err(ConfigError::new(
                "as-kek-label",
                format!("no KEK {:?} in join-server.keks", self.as_kek_label),
            ));
        }
        let join_euis = self
            .join_euis
            .iter()
            .map(|s| s.parse().map_err(|e| ConfigError::new("join-euis", e)))
            .collect::<Result<_, _>>()?;
        Ok(Resolved {
            root_kek,
            keks,
            ns_kek_label: self.ns_kek_label.clone(),
            as_kek_label: self.as_kek_label.clone(),
            join_euis,
            lifetime: (!self.session_key_lifetime.is_zero()).then_some(self.session_key_lifetime),
        })
    }
}

/// Length of a generated at-rest key: AES-256.
const ROOT_KEK_LEN: usize = 32;
/// Length of a generated link KEK: AES-128, which every peer's RFC 3394 unwrap accepts
/// (`lorawan::crypto::unwrap_key` takes 128-bit KEKs only).
const LINK_KEK_LEN: usize = 16;

/// Loads a key from its source, creating a file marked for creation.
pub(crate) fn load(source: &KeySource, key: &str) -> Result<Kek, ConfigError> {
    match source {
        KeySource::Hex(hex) => parse(hex, key),
        KeySource::File { file, create: true } => load_or_create(file, LINK_KEK_LEN, key),
        KeySource::File {
            file,
            create: false,
        } => {
            let text = std::fs::read_to_string(file)
                .map_err(|e| ConfigError::new(key, format!("reading {}: {e}", file.display())))?;
            parse(&text, key)
        }
    }
}

/// Reads a key file, or creates it with a random key of `len` bytes when it does not exist.
fn load_or_create(file: &Path, len: usize, key: &str) -> Result<Kek, ConfigError> {
    let text = match std::fs::read_to_string(file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => create_key_file(file, len)
            .map_err(|e| ConfigError::new(key, format!("creating {}: {e}", file.display())))?,
        Err(e) => {
            return Err(ConfigError::new(
                key,
                format!("reading {}: {e}", file.display()),
            ));
        }
    };
    parse(&text, key)
}

/// A key from its hex text.
fn parse(text: &str, key: &str) -> Result<Kek, ConfigError> {
    let bytes = hex::decode(text.trim())
        .map_err(|e| ConfigError::new(key, format!("not a hex key: {e}")))?;
    Kek::new(&bytes).map_err(|e| ConfigError::new(key, e.to_string()))
}

/// Writes a random key of `len` bytes in hex to a new file (mode 0600) and returns the hex.
fn create_key_file(file: &Path, len: usize) -> std::io::Result<String> {
    use std::io::Read;
    let mut key = vec![0u8; len];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut key)?;
    let text = hex::encode(key);
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options.open(file)?;
    f.write_all(text.as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()?;
    tracing::info!(file = %file.display(), "join server: generated a new key file");
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_match() {
        let p: JoinEuiPrefix = "70b3d57ed0000000/40".parse().unwrap();
        assert!(p.matches("70b3d57ed0123456".parse().unwrap()));
        assert!(!p.matches("70b3d57ed1000000".parse().unwrap()));
        let all: JoinEuiPrefix = "0000000000000000/0".parse().unwrap();
        assert!(all.matches("ffffffffffffffff".parse().unwrap()));
        let exact: JoinEuiPrefix = "0102030405060708".parse().unwrap();
        assert!(exact.matches("0102030405060708".parse().unwrap()));
        assert!(!exact.matches("0102030405060709".parse().unwrap()));
        assert!("0102/65".parse::<JoinEuiPrefix>().is_err());
    }

    #[test]
    fn toml_section_parses_and_resolves() {
        let dir = tempfile::tempdir().unwrap();
        let as_file = dir.path().join("as.kek");
        std::fs::write(
            &as_file,
            "000102030405060708090a0b0c0d0e0f1011121314151617\n",
        )
        .unwrap();
        let text = format!(
            r#"
root-key-kek = "000102030405060708090a0b0c0d0e0f"
ns-kek-label = ""
as-kek-label = "as:eu1"
join-euis = ["70b3d57ed0000000/40"]
session-key-lifetime = "30d"
[keks]
"as:eu1" = {{ file = "{}" }}
"#,
            as_file.display()
        );
        let config: JsConfig = toml::from_str(&text).unwrap();
        let r = config.resolve().unwrap();
        assert_eq!(r.keks["as:eu1"].len(), 24);
        assert_eq!(r.lifetime, Some(Duration::from_secs(30 * 86400)));
        assert!(toml::from_str::<JsConfig>("unknown = 1").is_err());
    }

    #[test]
    fn resolve_names_the_bad_key() {
        let err = JsConfig::default().resolve().unwrap_err();
        assert_eq!(err.key, "root-key-kek");
        let config = JsConfig {
            root_key_kek: Some("00".repeat(16)),
            ..Default::default()
        };
        assert_eq!(config.resolve().unwrap_err().key, "ns-kek-label");
        let config = JsConfig {
            root_key_kek: Some("00".repeat(16)),
            ns_kek_label: String::new(),
            as_kek_label: String::new(),
            ..Default::default()
        };
        assert_eq!(config.resolve().unwrap_err().key, "as-kek-label");
        let mut config = JsConfig {
            root_key_kek: Some("00".repeat(15)),
            ..Default::default()
        };
        let err = config.resolve().unwrap_err();
        assert!(err.reason.contains("15"), "{err}");
        config.root_key_kek = Some("zz".into());
        assert!(config.resolve().unwrap_err().reason.contains("hex"));
    }

    #[test]
    fn local_defaults_create_key_files_once() {
        let dir = tempfile::tempdir().unwrap();
        let config = JsConfig::default().with_local_defaults(dir.path());
        let first = config.resolve().unwrap();
        let second = config.resolve().unwrap();
        assert_eq!(first.root_kek, second.root_kek);
        assert_eq!(first.keks, second.keks);
        assert!(dir.path().join("join-server/root-key.kek").exists());
        assert!(dir.path().join("join-server/as_local.kek").exists());
        assert!(dir.path().join("join-server/ns_local.kek").exists());
        assert_eq!(first.root_kek.len(), 32);
        assert_eq!(first.keks["as:local"].len(), 16);
    }
}
