//! Identifiers and keys: EUI-64, DevAddr, NetID, AES-128 keys and the join nonces.
//!
//! Every type keeps its bytes in display (big-endian, MSB first) order, the order
//! operators read and type. LoRaWAN puts multi-byte fields on the air little-endian, so
//! the codecs use the `*_le_bytes` helpers. Text forms are hex (lowercase on output; input
//! may be upper or lower case, with an optional `0x` prefix and `:`/`-`/space separators).

use std::fmt;
use std::str::FromStr;

/// Why a text value could not be parsed into one of the identifier types.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// A character that is not a hex digit (or allowed separator).
    #[error("{what}: invalid hex character {ch:?} at position {pos}")]
    InvalidHexChar {
        /// Name of the value being parsed.
        what: &'static str,
        /// The offending character.
        ch: char,
        /// Its character position in the input.
        pos: usize,
    },
    /// The right characters but the wrong number of them.
    #[error("{what}: expected {expected} hex digits, got {got}")]
    WrongLength {
        /// Name of the value being parsed.
        what: &'static str,
        /// Hex digits expected.
        expected: usize,
        /// Hex digits found.
        got: usize,
    },
}

/// Parses `N` bytes of hex, ignoring an optional `0x` prefix and `:`, `-`, space separators.
pub(crate) fn parse_hex_array<const N: usize>(
    s: &str,
    what: &'static str,
) -> Result<[u8; N], ParseError> {
    let body = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .unwrap_or(s);
    let mut out = [0u8; N];
    let mut digits = 0usize;
    for (pos, ch) in body.chars().enumerate() {
        if matches!(ch, ':' | '-' | ' ') {
            continue;
        }
        let v = ch
            .to_digit(16)
            .ok_or(ParseError::InvalidHexChar { what, ch, pos })? as u8;
        if digits < 2 * N {
            let b = &mut out[digits / 2];
            *b = (*b << 4) | v;
        }
        digits += 1;
    }
    if digits != 2 * N {
        return Err(ParseError::WrongLength {
            what,
            expected: 2 * N,
            got: digits,
        });
    }
    Ok(out)
}

fn write_hex(f: &mut fmt::Formatter<'_>, bytes: &[u8], upper: bool) -> fmt::Result {
    for b in bytes {
        if upper {
            write!(f, "{b:02X}")?;
        } else {
            write!(f, "{b:02x}")?;
        }
    }
    Ok(())
}

/// Implements hex text, serde and byte conversions for a `[u8; N]` newtype.
macro_rules! hex_bytes_type {
    ($name:ident, $n:expr, $what:expr) => {
        impl $name {
            /// Number of bytes in this value.
            pub const LEN: usize = $n;

            /// Builds the value from bytes in display (big-endian) order.
            pub const fn from_be_bytes(b: [u8; $n]) -> Self {
                Self(b)
            }

            /// Returns the bytes in display (big-endian) order.
            pub const fn to_be_bytes(self) -> [u8; $n] {
                self.0
            }

            /// Builds the value from bytes in LoRaWAN wire (little-endian) order.
            pub fn from_le_bytes(mut b: [u8; $n]) -> Self {
                b.reverse();
                Self(b)
            }

            /// Returns the bytes in LoRaWAN wire (little-endian) order.
            pub fn to_le_bytes(self) -> [u8; $n] {
                let mut b = self.0;
                b.reverse();
                b
            }
        }

        impl FromStr for $name {
            type Err = ParseError;
            fn from_str(s: &str) -> Result<Self, ParseError> {
                parse_hex_array::<$n>(s, $what).map(Self)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write_hex(f, &self.0, false)
            }
        }

        impl fmt::LowerHex for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write_hex(f, &self.0, false)
            }
        }

        impl fmt::UpperHex for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write_hex(f, &self.0, true)
            }
        }

        impl From<[u8; $n]> for $name {
            fn from(b: [u8; $n]) -> Self {
                Self(b)
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

/// An IEEE EUI-64: DevEUI, JoinEUI (AppEUI) or gateway EUI.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Eui64(pub [u8; 8]);
hex_bytes_type!(Eui64, 8, "EUI-64");

impl Eui64 {
    /// Returns the EUI as a number (first displayed byte most significant).
    pub const fn to_u64(self) -> u64 {
        u64::from_be_bytes(self.0)
    }

    /// Builds the EUI from a number (most significant byte displayed first).
    pub const fn from_u64(v: u64) -> Self {
        Self(v.to_be_bytes())
    }
}

impl fmt::Debug for Eui64 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Eui64({self})")
    }
}

/// A 24-bit LoRa Alliance NetID: 3-bit type and 21-bit ID.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct NetId(pub [u8; 3]);
hex_bytes_type!(NetId, 3, "NetID");

/// NwkID width in bits for each NetID/DevAddr type 0..=7 (LoRaWAN Backend Interfaces TS002-1.1.0 §6.1).
const NWK_ID_BITS: [u32; 8] = [6, 6, 9, 11, 12, 13, 15, 17];

impl NetId {
    /// Returns the NetID as a 24-bit number.
    pub const fn to_u32(self) -> u32 {
        u32::from_be_bytes([0, self.0[0], self.0[1], self.0[2]])
    }

    /// Builds a NetID from the low 24 bits of `v`.
    pub const fn from_u32(v: u32) -> Self {
        let b = v.to_be_bytes();
        Self([b[1], b[2], b[3]])
    }

    /// The NetID type (0..=7), the top three bits.
    pub const fn net_type(self) -> u8 {
        self.0[0] >> 5
    }

    /// The 21-bit NetID ID (the NetID without its type bits).
    pub const fn id(self) -> u32 {
        self.to_u32() & 0x1F_FFFF
    }

    /// The NwkID that DevAddrs of this network carry: the NetID's low bits, as many as its
    /// type allows.
    pub const fn nwk_id(self) -> u32 {
        let bits = NWK_ID_BITS[self.net_type() as usize];
        self.to_u32() & ((1 << bits) - 1)
    }
}

impl fmt::Debug for NetId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NetId({self})")
    }
}

/// A 32-bit device address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct DevAddr(pub [u8; 4]);
hex_bytes_type!(DevAddr, 4, "DevAddr");

impl DevAddr {
    /// Returns the address as a number (first displayed byte most significant).
    pub const fn to_u32(self) -> u32 {
        u32::from_be_bytes(self.0)
    }

    /// Builds the address from a number.
    pub const fn from_u32(v: u32) -> Self {
        Self(v.to_be_bytes())
    }

    /// The address type (0..=7): the number of leading 1 bits of the prefix, or `None` for
    /// the reserved prefix `11111111`.
    pub const fn netid_type(self) -> Option<u8> {
        let ones = self.0[0].leading_ones();
        if ones >= 8 { None } else { Some(ones as u8) }
    }

    /// Width in bits of the NwkID field, if the type is valid.
    pub const fn nwk_id_bits(self) -> Option<u32> {
        match self.netid_type() {
            Some(t) => Some(NWK_ID_BITS[t as usize]),
            None => None,
        }
    }

    /// The NwkID field: the bits after the type prefix.
    pub const fn nwk_id(self) -> Option<u32> {
        match self.netid_type() {
            Some(t) => {
                let prefix = t as u32 + 1;
                let bits = NWK_ID_BITS[t as usize];
                Some((self.to_u32() << prefix) >> (32 - bits))
            }
            None => None,
        }
    }

    /// The NwkAddr field: the bits after prefix and NwkID.
    pub const fn nwk_addr(self) -> Option<u32> {
        match self.netid_type() {
            Some(t) => {
                let used = t as u32 + 1 + NWK_ID_BITS[t as usize];
                Some(self.to_u32() & (u32::MAX >> used))
            }
            None => None,
        }
    }

    /// True when this address belongs to the given network (same type and NwkID).
    pub const fn is_net_id(self, net_id: NetId) -> bool {
        match (self.netid_type(), self.nwk_id()) {
            (Some(t), Some(id)) => t == net_id.net_type() && id == net_id.nwk_id(),
            _ => false,
        }
    }

    /// The address prefix of a network: its type prefix and NwkID, with a zero NwkAddr.
    pub const fn prefix_for(net_id: NetId) -> Self {
        let t = net_id.net_type() as u32;
        let bits = NWK_ID_BITS[t as usize];
        // `t` ones followed by a zero, then the NwkID.
        let type_prefix: u32 = if t == 0 { 0 } else { !(u32::MAX >> t) };
        let nwk = net_id.nwk_id() << (32 - (t + 1) - bits);
        Self::from_u32(type_prefix | nwk)
    }

    /// Builds the address of `nwk_addr` in the given network. Bits of `nwk_addr` beyond the
    /// NwkAddr width are ignored.
    pub const fn from_net_id(net_id: NetId, nwk_addr: u32) -> Self {
        let t = net_id.net_type() as u32;
        let used = t + 1 + NWK_ID_BITS[t as usize];
        let mask = u32::MAX >> used;
        Self::from_u32(Self::prefix_for(net_id).to_u32() | (nwk_addr & mask))
    }
}

impl fmt::Debug for DevAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DevAddr({self})")
    }
}

/// An AES-128 key: root keys (AppKey, NwkKey), session keys, key-encryption keys.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Aes128Key(pub [u8; 16]);
hex_bytes_type!(Aes128Key, 16, "AES-128 key");

impl fmt::Debug for Aes128Key {
    // Keys must not end up in logs by accident: Debug shows only the first two bytes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Aes128Key({:02x}{:02x}…)", self.0[0], self.0[1])
    }
}

/// The 16-bit DevNonce of a join-request or rejoin-request (RJcount for rejoins).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Debug)]
pub struct DevNonce(pub u16);

impl DevNonce {
    /// Wire (little-endian) bytes.
    pub const fn to_le_bytes(self) -> [u8; 2] {
        self.0.to_le_bytes()
    }

    /// From wire (little-endian) bytes.
    pub const fn from_le_bytes(b: [u8; 2]) -> Self {
        Self(u16::from_le_bytes(b))
    }
}

/// The 24-bit JoinNonce (AppNonce in 1.0) of a join-accept.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Debug)]
pub struct JoinNonce(u32);

impl JoinNonce {
    /// The largest JoinNonce (24 bits).
    pub const MAX: u32 = 0xFF_FFFF;

    /// Builds a JoinNonce, or `None` if `v` does not fit in 24 bits.
    pub const fn new(v: u32) -> Option<Self> {
        if v <= Self::MAX { Some(Self(v)) } else { None }
    }

    /// The nonce as a number.
    pub const fn get(self) -> u32 {
        self.0
    }

    /// Wire (little-endian) bytes.
    pub const fn to_le_bytes(self) -> [u8; 3] {
        let b = self.0.to_le_bytes();
        [b[0], b[1], b[2]]
    }

    /// From wire (little-endian) bytes.
    pub const fn from_le_bytes(b: [u8; 3]) -> Self {
        Self(u32::from_le_bytes([b[0], b[1], b[2], 0]))
    }
}

macro_rules! hex_number_type {
    ($name:ident, $bytes:expr, $what:expr, $ctor:expr, $get:expr) => {
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:0width$x}", $get(*self), width = 2 * $bytes)
            }
        }

        impl FromStr for $name {
            type Err = ParseError;
            fn from_str(s: &str) -> Result<Self, ParseError> {
                let b = parse_hex_array::<$bytes>(s, $what)?;
                let mut v = 0u32;
                for x in b {
                    v = (v << 8) | x as u32;
                }
                Ok($ctor(v))
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

hex_number_type!(
    DevNonce,
    2,
    "DevNonce",
    |v| DevNonce(v as u16),
    |n: DevNonce| n.0 as u32
);
hex_number_type!(JoinNonce, 3, "JoinNonce", JoinNonce, |n: JoinNonce| n.0);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eui_text_and_wire_order() {
        let e: Eui64 = "70B3D57ED0000001".parse().unwrap();
        assert_eq!(e.to_string(), "70b3d57ed0000001");
        assert_eq!(format!("{e:X}"), "70B3D57ED0000001");
        assert_eq!(e.to_le_bytes()[0], 0x01);
        assert_eq!(Eui64::from_le_bytes(e.to_le_bytes()), e);
        assert_eq!("70-b3-d5-7e-d0-00-00-01".parse::<Eui64>().unwrap(), e);
        assert_eq!("0x70b3d57ed0000001".parse::<Eui64>().unwrap(), e);
        assert_eq!(e.to_u64(), 0x70b3d57ed0000001);
    }

    #[test]
    fn hex_errors_are_precise() {
        assert_eq!(
            "70B3".parse::<Eui64>(),
            Err(ParseError::WrongLength {
                what: "EUI-64",
                expected: 16,
                got: 4
            })
        );
        assert_eq!(
            "0102030g".parse::<DevAddr>(),
            Err(ParseError::InvalidHexChar {
                what: "DevAddr",
                ch: 'g',
                pos: 7
            })
        );
        assert!("010203040".parse::<DevAddr>().is_err());
    }

    #[test]
    fn serde_as_hex_strings() {
        let k: Aes128Key = "000102030405060708090A0B0C0D0E0F".parse().unwrap();
        let j = serde_json::to_string(&k).unwrap();
        assert_eq!(j, "\"000102030405060708090a0b0c0d0e0f\"");
        assert_eq!(serde_json::from_str::<Aes128Key>(&j).unwrap(), k);
        let n = DevNonce(0x0102);
        assert_eq!(serde_json::to_string(&n).unwrap(), "\"0102\"");
        let jn = JoinNonce::new(0xAE3B1C).unwrap();
        assert_eq!(serde_json::to_string(&jn).unwrap(), "\"ae3b1c\"");
        assert_eq!(serde_json::from_str::<JoinNonce>("\"AE3B1C\"").unwrap(), jn);
        assert!(serde_json::from_str::<DevAddr>("\"xyz\"").is_err());
    }

    #[test]
    fn key_debug_does_not_leak() {
        let k = Aes128Key([0xAB; 16]);
        assert_eq!(format!("{k:?}"), "Aes128Key(abab…)");
    }

    #[test]
    fn nonces_wire_order() {
        assert_eq!(DevNonce(0x0102).to_le_bytes(), [0x02, 0x01]);
        let jn = JoinNonce::new(0x010203).unwrap();
        assert_eq!(jn.to_le_bytes(), [0x03, 0x02, 0x01]);
        assert_eq!(JoinNonce::from_le_bytes([0x03, 0x02, 0x01]), jn);
        assert_eq!(JoinNonce::new(0x0100_0000), None);
    }

    // DevAddr / NetID layout from LoRaWAN Backend Interfaces TS002-1.1.0 §6.1 (Table 3).
    #[test]
    fn devaddr_netid_types() {
        // Type 0: prefix 0, 6-bit NwkID, 25-bit NwkAddr. The Things Network's NetID 000013
        // gives DevAddrs 26xxxxxx/27xxxxxx (NwkID 0x13).
        let ttn = NetId::from_u32(0x000013);
        assert_eq!(ttn.net_type(), 0);
        assert_eq!(ttn.nwk_id(), 0x13);
        let a: DevAddr = "26011234".parse().unwrap();
        assert_eq!(a.netid_type(), Some(0));
        assert_eq!(a.nwk_id(), Some(0x13));
        assert_eq!(a.nwk_addr(), Some(0x0011234));
        assert!(a.is_net_id(ttn));
        assert_eq!(DevAddr::prefix_for(ttn), DevAddr::from_u32(0x2600_0000));
        assert_eq!(DevAddr::from_net_id(ttn, 0x0011234), a);

        // Type 3 NetID 0x600010: prefix 1110, NwkID 11 bits.
        let n3 = NetId::from_u32(0x60_0010);
        assert_eq!(n3.net_type(), 3);
        assert_eq!(n3.nwk_id(), 0x10);
        let a3 = DevAddr::from_net_id(n3, 0x1ABCD);
        assert_eq!(a3.netid_type(), Some(3));
        assert_eq!(a3.nwk_id(), Some(0x10));
        assert_eq!(a3.nwk_addr(), Some(0x1ABCD));
        assert_eq!(a3.to_u32() >> 28, 0b1110);

        // Every type round-trips through from_net_id.
        for t in 0u32..8 {
            let net = NetId::from_u32((t << 21) | 0x15);
            let addr = DevAddr::from_net_id(net, 0x5);
            assert_eq!(addr.netid_type(), Some(t as u8), "type {t}");
            assert!(addr.is_net_id(net), "type {t}");
            assert_eq!(addr.nwk_addr(), Some(0x5));
        }
        assert_eq!(DevAddr::from_u32(0xFF00_0000).netid_type(), None);
    }
}
