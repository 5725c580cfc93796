//! The at-rest form of root keys and session keys: each key is RFC 3394-wrapped under the
//! at-rest KEK together with the device's JoinEUI and DevEUI, so a sealed key copied onto
//! another device's record does not open.

use lorawan::{Aes128Key, Eui64};
use prost::Message;

use crate::kek::{Kek, KekError};

/// The version of the sealed formats below.
const FORMAT: u32 = 1;

/// Why sealed keys did not open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SealError {
    /// Not a sealed record this version understands.
    #[error("unreadable sealed keys: {0}")]
    Format(String),
    /// The KEK did not open the key (another at-rest key, or corrupted data).
    #[error("{what}: {source}")]
    Kek {
        /// Which key.
        what: &'static str,
        /// Why.
        source: KekError,
    },
    /// The key was sealed for another device.
    #[error("{0}: sealed for another device")]
    OtherDevice(&'static str),
}

/// Root keys as the Join Server stores them (`JsDeviceRecord.encrypted_root_keys`).
#[derive(Clone, PartialEq, Message)]
struct SealedRootKeys {
    #[prost(uint32, tag = "1")]
    format: u32,
    /// AppKey, sealed; empty when the device has none.
    #[prost(bytes = "vec", tag = "2")]
    app_key: Vec<u8>,
    /// NwkKey, sealed; empty when the device has none (1.0.x).
    #[prost(bytes = "vec", tag = "3")]
    nwk_key: Vec<u8>,
}

/// Session keys as the Join Server stores them (`SessionKeysRecord.wrapped_keys`).
#[derive(Clone, PartialEq, Message)]
struct SealedSessionKeys {
    #[prost(uint32, tag = "1")]
    format: u32,
    /// FNwkSIntKey (1.1) or NwkSKey (1.0.x).
    #[prost(bytes = "vec", tag = "2")]
    f_nwk_s_int_key: Vec<u8>,
    /// SNwkSIntKey (1.1 only).
    #[prost(bytes = "vec", tag = "3")]
    s_nwk_s_int_key: Vec<u8>,
    /// NwkSEncKey (1.1 only).
    #[prost(bytes = "vec", tag = "4")]
    nwk_s_enc_key: Vec<u8>,
    /// AppSKey.
    #[prost(bytes = "vec", tag = "5")]
    app_s_key: Vec<u8>,
}

/// A device's root keys in clear (only ever in memory).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct RootKeys {
    /// AppKey.
    pub app_key: Option<Aes128Key>,
    /// NwkKey (1.1).
    pub nwk_key: Option<Aes128Key>,
}

/// A session's keys in clear (only ever in memory). 1.0.x sessions have only
/// `f_nwk_s_int_key` (the NwkSKey) and `app_s_key`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SessionKeys {
    /// FNwkSIntKey, or the NwkSKey of a 1.0.x session.
    pub f_nwk_s_int_key: Aes128Key,
    /// SNwkSIntKey (1.1).
    pub s_nwk_s_int_key: Option<Aes128Key>,
    /// NwkSEncKey (1.1).
    pub nwk_s_enc_key: Option<Aes128Key>,
    /// AppSKey.
    pub app_s_key: Aes128Key,
}

/// Binds a key to its device: `key | JoinEUI | DevEUI`, 32 bytes.
fn bound(key: &Aes128Key, join_eui: Eui64, dev_eui: Eui64) -> [u8; 32] {
    let mut data = [0u8; 32];
    data[..16].copy_from_slice(&key.0);
    data[16..24].copy_from_slice(&join_eui.0);
    data[24..].copy_from_slice(&dev_eui.0);
    data
}

fn seal_key(kek: &Kek, key: Option<&Aes128Key>, join_eui: Eui64, dev_eui: Eui64) -> Vec<u8> {
    // 32 bytes is a valid RFC 3394 input, so wrapping cannot fail.
    key.map(|k| kek.wrap(&bound(k, join_eui, dev_eui)).unwrap_or_default())
        .unwrap_or_default()
}

fn open_key(
    kek: &Kek,
    sealed: &[u8],
    what: &'static str,
    join_eui: Eui64,
    dev_eui: Eui64,
) -> Result<Option<Aes128Key>, SealError> {
    if sealed.is_empty() {
        return Ok(None);
    }
    let data = kek
        .unwrap(sealed)
        .map_err(|source| SealError::Kek { what, source })?;
    if data.len() != 32 || data[16..24] != join_eui.0 || data[24..] != dev_eui.0 {
        return Err(SealError::OtherDevice(what));
    }
    let mut key = [0u8; 16];
    key.copy_from_slice(&data[..16]);
    Ok(Some(Aes128Key(key)))
}

fn check_format(format: u32) -> Result<(), SealError> {
    if format == FORMAT {
        Ok(())
    } else {
        Err(SealError::Format(format!(
            "format {format}, this version reads {FORMAT}"
        )))
    }
}

/// Seals root keys for `JsDeviceRecord.encrypted_root_keys`.
pub(crate) fn seal_root_keys(
    kek: &Kek,
    keys: &RootKeys,
    join_eui: Eui64,
    dev_eui: Eui64,
) -> Vec<u8> {
    SealedRootKeys {
        format: FORMAT,
        app_key: seal_key(kek, keys.app_key.as_ref(), join_eui, dev_eui),
        nwk_key: seal_key(kek, keys.nwk_key.as_ref(), join_eui, dev_eui),
    }
    .encode_to_vec()
}

/// Opens root keys sealed by [`seal_root_keys`]; empty input is a device without keys.
pub(crate) fn open_root_keys(
    kek: &Kek,
    sealed: &[u8],
    join_eui: Eui64,
    dev_eui: Eui64,
) -> Result<RootKeys, SealError> {
    if sealed.is_empty() {
        return Ok(RootKeys::default());
    }
    let s = SealedRootKeys::decode(sealed).map_err(|e| SealError::Format(e.to_string()))?;
    check_format(s.format)?;
    Ok(RootKeys {
        app_key: open_key(kek, &s.app_key, "AppKey", join_eui, dev_eui)?,
        nwk_key: open_key(kek, &s.nwk_key, "NwkKey", join_eui, dev_eui)?,
    })
}

/// Seals session keys for `SessionKeysRecord.wrapped_keys`.
pub(crate) fn seal_session_keys(
    kek: &Kek,
    keys: &SessionKeys,
    join_eui: Eui64,
    dev_eui: Eui64,
) -> Vec<u8> {
    SealedSessionKeys {
        format: FORMAT,
        f_nwk_s_int_key: seal_key(kek, Some(&keys.f_nwk_s_int_key), join_eui, dev_eui),
        s_nwk_s_int_key: seal_key(kek, keys.s_nwk_s_int_key.as_ref(), join_eui, dev_eui),
        nwk_s_enc_key: seal_key(kek, keys.nwk_s_enc_key.as_ref(), join_eui, dev_eui),
        app_s_key: seal_key(kek, Some(&keys.app_s_key), join_eui, dev_eui),
    }
    .encode_to_vec()
}

/// Opens session keys sealed by [`seal_session_keys`].
pub(crate) fn open_session_keys(
    kek: &Kek,
    sealed: &[u8],
    join_eui: Eui64,
    dev_eui: Eui64,
) -> Result<SessionKeys, SealError> {
    let s = SealedSessionKeys::decode(sealed).map_err(|e| SealError::Format(e.to_string()))?;
    check_format(s.format)?;
    let required =
        |k: Option<Aes128Key>, what| k.ok_or(SealError::Format(format!("{what} missing")));
    Ok(SessionKeys {
        f_nwk_s_int_key: required(
            open_key(kek, &s.f_nwk_s_int_key, "FNwkSIntKey", join_eui, dev_eui)?,
            "FNwkSIntKey",
        )?,
        s_nwk_s_int_key: open_key(kek, &s.s_nwk_s_int_key, "SNwkSIntKey", join_eui, dev_eui)?,
        nwk_s_enc_key: open_key(kek, &s.nwk_s_enc_key, "NwkSEncKey", join_eui, dev_eui)?,
        app_s_key: required(
            open_key(kek, &s.app_s_key, "AppSKey", join_eui, dev_eui)?,
            "AppSKey",
        )?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eui(n: u64) -> Eui64 {
        Eui64::from_u64(n)
    }

    #[test]
    fn root_keys_round_trip_and_bind_to_the_device() {
        let kek = Kek::new(&[7; 32]).unwrap();
        let keys = RootKeys {
            app_key: Some(Aes128Key([1; 16])),
            nwk_key: None,
        };
        let sealed = seal_root_keys(&kek, &keys, eui(1), eui(2));
        assert!(
            !sealed.windows(16).any(|w| w == [1; 16]),
            "clear key at rest"
        );
        assert_eq!(open_root_keys(&kek, &sealed, eui(1), eui(2)).unwrap(), keys);
        assert_eq!(
            open_root_keys(&kek, &sealed, eui(1), eui(3)).unwrap_err(),
            SealError::OtherDevice("AppKey")
        );
        let other = Kek::new(&[8; 16]).unwrap();
        assert!(matches!(
            open_root_keys(&other, &sealed, eui(1), eui(2)).unwrap_err(),
            SealError::Kek {
                source: KekError::Integrity,
                ..
            }
        ));
    }
}
