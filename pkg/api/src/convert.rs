//! Conversions between the contracts' `bytes` fields and the `lorawan` and `band` types.
//!
//! The contracts carry EUIs, DevAddr, NetID and keys as `bytes` in display (big-endian)
//! order; these helpers check the length and name the field when it is wrong. An empty
//! `bytes` field means "not set" and reads as `None`.

use crate::v3;
use lorawan::{Aes128Key, DevAddr, Eui64, NetId};

/// Why a contract value could not be converted to a `lorawan`/`band` type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConvertError {
    /// A `bytes` field of the wrong length.
    #[error("{field}: expected {expected} bytes, got {got}")]
    WrongLength {
        /// The field, e.g. "dev_eui".
        field: &'static str,
        /// The length it must have.
        expected: usize,
        /// The length it has.
        got: usize,
    },
    /// A required field is not set.
    #[error("{field}: required")]
    Missing {
        /// The field.
        field: &'static str,
    },
    /// A value outside what the field allows.
    #[error("{field}: {reason}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// Why it is not valid.
        reason: String,
    },
}

/// Reads exactly `N` bytes, or `None` for an empty field.
fn array<const N: usize>(field: &'static str, b: &[u8]) -> Result<Option<[u8; N]>, ConvertError> {
    if b.is_empty() {
        return Ok(None);
    }
    <[u8; N]>::try_from(b)
        .map(Some)
        .map_err(|_| ConvertError::WrongLength {
            field,
            expected: N,
            got: b.len(),
        })
}

/// Reads an optional EUI-64 (8 bytes, empty for unset).
pub fn eui64(field: &'static str, b: &[u8]) -> Result<Option<Eui64>, ConvertError> {
    Ok(array::<8>(field, b)?.map(Eui64::from_be_bytes))
}

/// Reads an optional DevAddr (4 bytes, empty for unset).
pub fn dev_addr(field: &'static str, b: &[u8]) -> Result<Option<DevAddr>, ConvertError> {
    Ok(array::<4>(field, b)?.map(DevAddr::from_be_bytes))
}

/// Reads an optional NetID (3 bytes, empty for unset).
pub fn net_id(field: &'static str, b: &[u8]) -> Result<Option<NetId>, ConvertError> {
    Ok(array::<3>(field, b)?.map(NetId::from_be_bytes))
}

/// Reads an optional AES-128 key (16 bytes, empty for unset).
pub fn aes128_key(field: &'static str, b: &[u8]) -> Result<Option<Aes128Key>, ConvertError> {
    Ok(array::<16>(field, b)?.map(Aes128Key::from_be_bytes))
}

/// Makes a value required: `None` becomes [`ConvertError::Missing`].
pub fn required<T>(field: &'static str, v: Option<T>) -> Result<T, ConvertError> {
    v.ok_or(ConvertError::Missing { field })
}

impl v3::EndDeviceIdentifiers {
    /// The DevEUI, if set.
    pub fn dev_eui(&self) -> Result<Option<Eui64>, ConvertError> {
        eui64("dev_eui", &self.dev_eui)
    }

    /// The JoinEUI, if set.
    pub fn join_eui(&self) -> Result<Option<Eui64>, ConvertError> {
        eui64("join_eui", &self.join_eui)
    }

    /// The DevAddr, if set.
    pub fn dev_addr(&self) -> Result<Option<DevAddr>, ConvertError> {
        dev_addr("dev_addr", &self.dev_addr)
    }

    /// Identifiers of device `device_id` in application `application_id`.
    pub fn new(application_id: impl Into<String>, device_id: impl Into<String>) -> Self {
        Self {
            application_ids: Some(v3::ApplicationIdentifiers {
                application_id: application_id.into(),
            }),
            device_id: device_id.into(),
            ..Default::default()
        }
    }

    /// The same identifiers with the DevEUI set.
    pub fn with_dev_eui(mut self, eui: Eui64) -> Self {
        self.dev_eui = eui.to_be_bytes().to_vec();
        self
    }

    /// The same identifiers with the JoinEUI set.
    pub fn with_join_eui(mut self, eui: Eui64) -> Self {
        self.join_eui = eui.to_be_bytes().to_vec();
        self
    }

    /// The same identifiers with the DevAddr set.
    pub fn with_dev_addr(mut self, addr: DevAddr) -> Self {
        self.dev_addr = addr.to_be_bytes().to_vec();
        self
    }
}

impl v3::GatewayIdentifiers {
    /// The gateway EUI, if set.
    pub fn eui(&self) -> Result<Option<Eui64>, ConvertError> {
        eui64("eui", &self.eui)
    }

    /// Identifiers of gateway `gateway_id`, with its EUI if known.
    pub fn new(gateway_id: impl Into<String>, eui: Option<Eui64>) -> Self {
        Self {
            gateway_id: gateway_id.into(),
            eui: eui.map(|e| e.to_be_bytes().to_vec()).unwrap_or_default(),
        }
    }
}

impl v3::KeyEnvelope {
    /// An envelope holding a key in clear (no KEK).
    pub fn clear(key: Aes128Key) -> Self {
        Self {
            key: key.to_be_bytes().to_vec(),
            ..Default::default()
        }
    }

    /// An envelope holding a key wrapped (RFC 3394) under the KEK `kek_label`.
    pub fn wrapped(kek_label: impl Into<String>, encrypted_key: Vec<u8>) -> Self {
        Self {
            kek_label: kek_label.into(),
            encrypted_key,
            key: Vec::new(),
        }
    }

    /// True when the key is wrapped under a KEK.
    pub fn is_wrapped(&self) -> bool {
        !self.kek_label.is_empty()
    }

    /// The clear key, if the envelope holds one (checks it is 16 bytes).
    pub fn clear_key(&self) -> Result<Option<Aes128Key>, ConvertError> {
        aes128_key("key", &self.key)
    }

    /// The wrapped key, if any: 24 bytes for an AES-128 key (checked).
    pub fn wrapped_key(&self) -> Result<Option<[u8; 24]>, ConvertError> {
        array::<24>("encrypted_key", &self.encrypted_key)
    }
}

impl From<lorawan::MType> for v3::MType {
    fn from(m: lorawan::MType) -> Self {
        use lorawan::MType as L;
        match m {
            L::JoinRequest => Self::JoinRequest,
            L::JoinAccept => Self::JoinAccept,
            L::UnconfirmedDataUp => Self::UnconfirmedDataUp,
            L::UnconfirmedDataDown => Self::UnconfirmedDataDown,
            L::ConfirmedDataUp => Self::ConfirmedDataUp,
            L::ConfirmedDataDown => Self::ConfirmedDataDown,
            L::RejoinRequest => Self::RejoinRequest,
            L::Proprietary => Self::Proprietary,
        }
    }
}

impl From<v3::MType> for lorawan::MType {
    fn from(m: v3::MType) -> Self {
        use v3::MType as V;
        match m {
            V::JoinRequest => Self::JoinRequest,
            V::JoinAccept => Self::JoinAccept,
            V::UnconfirmedDataUp => Self::UnconfirmedDataUp,
            V::UnconfirmedDataDown => Self::UnconfirmedDataDown,
            V::ConfirmedDataUp => Self::ConfirmedDataUp,
            V::ConfirmedDataDown => Self::ConfirmedDataDown,
            V::RejoinRequest => Self::RejoinRequest,
            V::Proprietary => Self::Proprietary,
        }
    }
}

impl From<band::DataRate> for v3::DataRate {
    fn from(dr: band::DataRate) -> Self {
        use v3::data_rate::Modulation;
        let modulation = match dr {
            band::DataRate::Lora { sf, bw_hz } => Modulation::Lora(v3::LoRaDataRate {
                bandwidth: bw_hz,
                spreading_factor: u32::from(sf),
                coding_rate: "4/5".into(),
            }),
            band::DataRate::Fsk { bitrate } => {
                Modulation::Fsk(v3::FskDataRate { bit_rate: bitrate })
            }
            band::DataRate::LrFhss {
                coding_rate,
                ocw_hz,
            } => Modulation::Lrfhss(v3::LrFhssDataRate {
                modulation_type: 0,
                operating_channel_width: ocw_hz,
                coding_rate: match coding_rate {
                    band::LrFhssCodingRate::Cr1_3 => "1/3",
                    band::LrFhssCodingRate::Cr2_3 => "2/3",
                }
                .into(),
            }),
        };
        Self {
            modulation: Some(modulation),
        }
    }
}

impl TryFrom<&v3::DataRate> for band::DataRate {
    type Error = ConvertError;

    /// Reads the modulation; the LoRa coding rate is not part of `band::DataRate` and is
    /// ignored.
    fn try_from(dr: &v3::DataRate) -> Result<Self, ConvertError> {
        use v3::data_rate::Modulation;
        match dr.modulation.as_ref() {
            None => Err(ConvertError::Missing {
                field: "data_rate.modulation",
            }),
            Some(Modulation::Lora(l)) => {
                let sf = u8::try_from(l.spreading_factor)
                    .ok()
                    .filter(|sf| (5..=12).contains(sf))
                    .ok_or_else(|| ConvertError::Invalid {
                        field: "data_rate.lora.spreading_factor",
                        reason: format!("{} is not 5..12", l.spreading_factor),
                    })?;
                Ok(band::DataRate::Lora {
                    sf,
                    bw_hz: l.bandwidth,
                })
            }
            Some(Modulation::Fsk(f)) => Ok(band::DataRate::Fsk {
                bitrate: f.bit_rate,
            }),
            Some(Modulation::Lrfhss(l)) => {
                let coding_rate = match l.coding_rate.as_str() {
                    "1/3" | "2/6" => band::LrFhssCodingRate::Cr1_3,
                    "2/3" | "4/6" => band::LrFhssCodingRate::Cr2_3,
                    other => {
                        return Err(ConvertError::Invalid {
                            field: "data_rate.lrfhss.coding_rate",
                            reason: format!("{other:?} is not \"1/3\" or \"2/3\""),
                        });
                    }
                };
                Ok(band::DataRate::LrFhss {
                    coding_rate,
                    ocw_hz: l.operating_channel_width,
                })
            }
        }
    }
}
