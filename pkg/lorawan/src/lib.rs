//! LoRaWAN L2 1.0.x and 1.1 in pure Rust: identifiers, PHYPayload codec, MAC commands,
//! cryptography and frame-counter helpers. No I/O and no async: every other Tern crate that
//! needs LoRaWAN's bytes goes through this one.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod crypto;
pub mod fcnt;
pub mod mac;
pub mod phy;
pub mod types;

pub use crypto::{CryptoError, Direction};
pub use fcnt::reconstruct_f_cnt;
pub use mac::{MacCommand, MacError};
pub use phy::{MType, PhyPayload};
pub use types::{Aes128Key, DevAddr, DevNonce, Eui64, JoinNonce, NetId, ParseError};
