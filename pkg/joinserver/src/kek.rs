//! Key-encryption keys of any AES size and RFC 3394 wrapping with them.
//!
//! `lorawan::crypto::wrap_key` takes 128-bit KEKs only; the Join Server accepts 128, 192
//! and 256-bit KEKs (operators often provision 256-bit ones), so the wrapping lives here.

use std::fmt;

use aes_kw::{KekAes128, KekAes192, KekAes256};
use lorawan::Aes128Key;

/// Why a KEK operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KekError {
    /// A KEK that is not 16, 24 or 32 bytes.
    #[error("a KEK must be 16, 24 or 32 bytes, got {0}")]
    KekLength(usize),
    /// Data to wrap that is not a multiple of 8 bytes of at least 16, or wrapped data of
    /// the wrong length.
    #[error("{what}: invalid length {got}")]
    DataLength {
        /// Which input.
        what: &'static str,
        /// Its length.
        got: usize,
    },
    /// The integrity check of an unwrap failed: another KEK, or corrupted data.
    #[error("key unwrap: integrity check failed (wrong KEK or corrupted data)")]
    Integrity,
}

/// An AES key-encryption key (128, 192 or 256 bits). Its bytes are never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Kek(Vec<u8>);

impl fmt::Debug for Kek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Kek(AES-{})", self.0.len() * 8)
    }
}

impl Kek {
    /// A KEK from 16, 24 or 32 bytes.
    pub fn new(bytes: &[u8]) -> Result<Self, KekError> {
        match bytes.len() {
            16 | 24 | 32 => Ok(Self(bytes.to_vec())),
            n => Err(KekError::KekLength(n)),
        }
    }

    /// The KEK's length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The key itself, to hand the same KEK to a Network or Application Server in this
    /// process; never log it.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// Always false: a KEK has 16, 24 or 32 bytes.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Wraps `data` (a multiple of 8 bytes, at least 16) with RFC 3394: 8 bytes longer.
    pub fn wrap(&self, data: &[u8]) -> Result<Vec<u8>, KekError> {
        if data.len() < 16 || !data.len().is_multiple_of(8) {
            return Err(KekError::DataLength {
                what: "data to wrap",
                got: data.len(),
            });
        }
        let out = match self.0.len() {
            16 => KekAes128::try_from(self.0.as_slice()).map(|k| k.wrap_vec(data)),
            24 => KekAes192::try_from(self.0.as_slice()).map(|k| k.wrap_vec(data)),
            _ => KekAes256::try_from(self.0.as_slice()).map(|k| k.wrap_vec(data)),
        };
        // The lengths were checked above, so neither step can fail.
        out.ok().and_then(Result::ok).ok_or(KekError::DataLength {
            what: "data to wrap",
            got: data.len(),
        })
    }

    /// Unwraps RFC 3394 data (a multiple of 8 bytes, at least 24).
    pub fn unwrap(&self, wrapped: &[u8]) -> Result<Vec<u8>, KekError> {
        if wrapped.len() < 24 || !wrapped.len().is_multiple_of(8) {
            return Err(KekError::DataLength {
                what: "wrapped data",
                got: wrapped.len(),
            });
        }
        let out = match self.0.len() {
            16 => KekAes128::try_from(self.0.as_slice()).map(|k| k.unwrap_vec(wrapped)),
            24 => KekAes192::try_from(self.0.as_slice()).map(|k| k.unwrap_vec(wrapped)),
            _ => KekAes256::try_from(self.0.as_slice()).map(|k| k.unwrap_vec(wrapped)),
        };
        out.ok()
            .ok_or(KekError::KekLength(self.0.len()))?
            .map_err(|_| KekError::Integrity)
    }

    /// Wraps an AES-128 key: 24 bytes.
    pub fn wrap_key(&self, key: &Aes128Key) -> Vec<u8> {
        // 16 bytes is a valid input length, so this cannot fail.
        self.wrap(&key.0).unwrap_or_default()
    }

    /// Unwraps a 24-byte wrapped AES-128 key.
    pub fn unwrap_key(&self, wrapped: &[u8]) -> Result<Aes128Key, KekError> {
        if wrapped.len() != 24 {
            return Err(KekError::DataLength {
                what: "wrapped key",
                got: wrapped.len(),
            });
        }
        let clear = self.unwrap(wrapped)?;
        let mut key = [0u8; 16];
        key.copy_from_slice(&clear);
        Ok(Aes128Key(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }

    /// Vectors: RFC 3394 §4.1 (128-bit KEK, also in /work/shared/vectors.md), §4.2 (192-bit
    /// KEK) and §4.3 (256-bit KEK), each wrapping 128 bits of key data.
    #[test]
    fn rfc3394_vectors() {
        let data = h("00112233445566778899AABBCCDDEEFF");
        for (kek, wrapped) in [
            (
                "000102030405060708090A0B0C0D0E0F",
                "1FA68B0A8112B447AEF34BD8FB5A7B829D3E862371D2CFE5",
            ),
            (
                "000102030405060708090A0B0C0D0E0F1011121314151617",
                "96778B25AE6CA435F92B5B97C050AED2468AB8A17AD84E5D",
            ),
            (
                "000102030405060708090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F",
                "64E8C3F9CE0F5BA263E9777905818A2A93C8191E7D6E8AE7",
            ),
        ] {
            let kek = Kek::new(&h(kek)).unwrap();
            assert_eq!(hex::encode_upper(kek.wrap(&data).unwrap()), wrapped);
            assert_eq!(kek.unwrap(&h(wrapped)).unwrap(), data);
            let key = Aes128Key(data.clone().try_into().unwrap());
            assert_eq!(kek.unwrap_key(&kek.wrap_key(&key)).unwrap(), key);
        }
    }

    #[test]
    fn bad_lengths_and_wrong_kek_are_errors() {
        assert_eq!(Kek::new(&[0; 15]).unwrap_err(), KekError::KekLength(15));
        let kek = Kek::new(&[1; 16]).unwrap();
        assert!(matches!(
            kek.wrap(&[0; 12]),
            Err(KekError::DataLength { got: 12, .. })
        ));
        let wrapped = kek.wrap(&[9; 16]).unwrap();
        let other = Kek::new(&[2; 32]).unwrap();
        assert_eq!(other.unwrap(&wrapped).unwrap_err(), KekError::Integrity);
        assert!(matches!(
            kek.unwrap_key(&wrapped[..16]),
            Err(KekError::DataLength { .. })
        ));
        assert_eq!(format!("{other:?}"), "Kek(AES-256)");
    }
}
