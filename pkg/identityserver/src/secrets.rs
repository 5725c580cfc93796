//! Secrets: random API keys and refresh tokens, and their hashes.
//!
//! - API keys are `TERN.<key-id>.<secret>`: the ID finds the stored key, so verifying costs
//!   one slow hash (argon2id) however many keys exist. Only the PHC hash string is stored.
//! - Passwords are hashed with argon2id too.
//! - Refresh tokens are `TERNR.<session-id>.<secret>` with 256 random bits: a fast SHA-256
//!   digest is enough against guessing, and they are checked on every refresh.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The prefix of every API key.
pub const API_KEY_PREFIX: &str = "TERN";
/// The prefix of every refresh token.
pub const REFRESH_TOKEN_PREFIX: &str = "TERNR";

/// The cost of argon2id: memory in KiB and passes. Every hash records its own parameters, so
/// changing them affects new hashes only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashCost {
    /// Memory, in KiB.
    pub memory_kib: u32,
    /// Passes over the memory.
    pub iterations: u32,
}

impl Default for HashCost {
    /// The OWASP recommendation for argon2id: 19 MiB, 2 passes, 1 lane.
    fn default() -> Self {
        Self {
            memory_kib: 19 * 1024,
            iterations: 2,
        }
    }
}

impl HashCost {
    fn argon2(self) -> Result<Argon2<'static>, String> {
        let params = Params::new(self.memory_kib, self.iterations, 1, None)
            .map_err(|e| format!("argon2 parameters: {e}"))?;
        Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
    }

    /// The PHC string of an argon2id hash of `secret` with a random salt.
    pub fn hash(self, secret: &str) -> Result<String, String> {
        let mut salt = [0u8; 16];
        fill_random(&mut salt);
        let salt = SaltString::encode_b64(&salt).map_err(|e| e.to_string())?;
        self.argon2()?
            .hash_password(secret.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| format!("hashing: {e}"))
    }
}

/// Whether `secret` matches the PHC hash string `hash` (with the parameters it records).
pub fn verify_hash(secret: &str, hash: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(hash) else {
        return false;
    };
    Argon2::default()
        .verify_password(secret.as_bytes(), &parsed)
        .is_ok()
}

/// Fills `buf` from the operating system's random source.
pub fn fill_random(buf: &mut [u8]) {
    getrandom::fill(buf).expect("the operating system's random source failed");
}

/// `n` random bytes, URL-safe base64 without padding.
pub fn random_token(n: usize) -> String {
    let mut buf = vec![0u8; n];
    fill_random(&mut buf);
    URL_SAFE_NO_PAD.encode(buf)
}

/// A new random ID for an API key or session: 12 random bytes in lowercase hex.
pub fn random_id() -> String {
    let mut buf = [0u8; 12];
    fill_random(&mut buf);
    hex::encode(buf)
}

/// A password of 24 random characters (for bootstrap and `tern admin create-user`).
pub fn random_password() -> String {
    random_token(18)
}

/// A freshly generated API key: its ID and the whole secret to show once.
#[derive(Clone, PartialEq, Eq)]
pub struct NewApiKey {
    /// The key's ID (not secret).
    pub id: String,
    /// The secret part.
    pub secret: String,
}

impl NewApiKey {
    /// A new random key.
    pub fn generate() -> Self {
        Self {
            id: random_id(),
            secret: random_token(32),
        }
    }

    /// What the holder sends: `TERN.<id>.<secret>`.
    pub fn token(&self) -> String {
        format!("{API_KEY_PREFIX}.{}.{}", self.id, self.secret)
    }
}

impl std::fmt::Debug for NewApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NewApiKey({}, redacted)", self.id)
    }
}

/// Splits `<prefix>.<id>.<secret>` into ID and secret; `None` when it has another shape.
pub fn split_token<'a>(prefix: &str, token: &'a str) -> Option<(&'a str, &'a str)> {
    let rest = token.strip_prefix(prefix)?.strip_prefix('.')?;
    let (id, secret) = rest.split_once('.')?;
    let id_ok = !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric());
    (id_ok && !secret.is_empty()).then_some((id, secret))
}

/// The SHA-256 digest of `secret`, lowercase hex.
pub fn sha256_hex(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// The SHA-256 digest of `secret`.
pub fn sha256(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Constant-time equality of two byte strings.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHEAP: HashCost = HashCost {
        memory_kib: 64,
        iterations: 1,
    };

    #[test]
    fn hashes_verify_only_their_secret_and_are_salted() {
        let a = CHEAP.hash("correct horse").unwrap();
        let b = CHEAP.hash("correct horse").unwrap();
        assert!(a.starts_with("$argon2id$"), "{a}");
        assert_ne!(a, b, "salted");
        assert!(verify_hash("correct horse", &a));
        assert!(!verify_hash("correct horsf", &a));
        assert!(!verify_hash("x", "not a hash"));
        assert!(!a.contains("correct"));
    }

    #[test]
    fn api_keys_split_back_into_id_and_secret() {
        let key = NewApiKey::generate();
        let token = key.token();
        assert!(token.starts_with("TERN."));
        assert!(token.bytes().all(|b| b.is_ascii_graphic()));
        assert_eq!(
            split_token(API_KEY_PREFIX, &token),
            Some((key.id.as_str(), key.secret.as_str()))
        );
        assert_eq!(split_token(API_KEY_PREFIX, "TERN..x"), None);
        assert_eq!(split_token(API_KEY_PREFIX, "TERNR.a.b"), None);
        assert_eq!(
            split_token(REFRESH_TOKEN_PREFIX, "TERNR.a.b"),
            Some(("a", "b"))
        );
        assert!(!format!("{key:?}").contains(&key.secret));
        assert_ne!(NewApiKey::generate().id, key.id);
    }
}
