//! The opaque uplink token: what the GS needs to answer on the same gateway and antenna.
//!
//! Layout (version 1, big-endian): `01 | eui[8] | antenna u8 | tmst u32 | xtime u64 |
//! rctx u64 | server_time_us i64 | gps_time_us i64 (0 = none) | id_len u8 | instance id`.

use thiserror::Error;

const VERSION: u8 = 1;
const FIXED_LEN: usize = 1 + 8 + 1 + 4 + 8 + 8 + 8 + 8 + 1;

/// What an uplink token carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UplinkToken {
    /// Gateway EUI.
    pub eui: [u8; 8],
    /// Antenna (RF chain).
    pub antenna: u8,
    /// Concentrator timestamp (µs, 32 bits) at the end of the uplink.
    pub tmst: u32,
    /// Basics Station `xtime` of the uplink (0 for Semtech UDP).
    pub xtime: u64,
    /// Basics Station `rctx` of the uplink (0 for Semtech UDP).
    pub rctx: u64,
    /// Server time the uplink arrived, µs since the Unix epoch.
    pub server_time_us: i64,
    /// GPS time of reception, µs since the GPS epoch, if the gateway had one.
    pub gps_time_us: Option<i64>,
    /// The GS instance that received the uplink.
    pub instance_id: String,
}

/// Why a token could not be read.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TokenError {
    /// Too short or wrong length.
    #[error("uplink token: {0} bytes is not a valid length")]
    Length(usize),
    /// Unknown version byte.
    #[error("uplink token: unknown version {0}")]
    Version(u8),
    /// The instance ID is not UTF-8.
    #[error("uplink token: the instance ID is not UTF-8")]
    InstanceId,
}

impl UplinkToken {
    /// Encodes the token.
    pub fn encode(&self) -> Vec<u8> {
        let id = self.instance_id.as_bytes();
        let id = &id[..id.len().min(255)];
        let mut b = Vec::with_capacity(FIXED_LEN + id.len());
        b.push(VERSION);
        b.extend_from_slice(&self.eui);
        b.push(self.antenna);
        b.extend_from_slice(&self.tmst.to_be_bytes());
        b.extend_from_slice(&self.xtime.to_be_bytes());
        b.extend_from_slice(&self.rctx.to_be_bytes());
        b.extend_from_slice(&self.server_time_us.to_be_bytes());
        b.extend_from_slice(&self.gps_time_us.unwrap_or(0).to_be_bytes());
        b.push(id.len() as u8);
        b.extend_from_slice(id);
        b
    }

    /// Decodes a token made by [`UplinkToken::encode`].
    pub fn decode(b: &[u8]) -> Result<Self, TokenError> {
        if b.len() < FIXED_LEN {
            return Err(TokenError::Length(b.len()));
        }
        if b[0] != VERSION {
            return Err(TokenError::Version(b[0]));
        }
        let id_len = b[FIXED_LEN - 1] as usize;
        if b.len() != FIXED_LEN + id_len {
            return Err(TokenError::Length(b.len()));
        }
        let u64_at = |i: usize| u64::from_be_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        let gps = u64_at(38) as i64;
        Ok(Self {
            eui: b[1..9].try_into().expect("8 bytes"),
            antenna: b[9],
            tmst: u32::from_be_bytes(b[10..14].try_into().expect("4 bytes")),
            xtime: u64_at(14),
            rctx: u64_at(22),
            server_time_us: u64_at(30) as i64,
            gps_time_us: (gps != 0).then_some(gps),
            instance_id: std::str::from_utf8(&b[FIXED_LEN..])
                .map_err(|_| TokenError::InstanceId)?
                .to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_errors() {
        let t = UplinkToken {
            eui: [1, 2, 3, 4, 5, 6, 7, 8],
            antenna: 1,
            tmst: u32::MAX - 3,
            xtime: 0x0012_3400_0000_0001,
            rctx: 7,
            server_time_us: 1_700_000_000_000_000,
            gps_time_us: Some(1_400_000_000_000_000),
            instance_id: "gs-1".into(),
        };
        let b = t.encode();
        assert_eq!(UplinkToken::decode(&b).unwrap(), t);
        let none = UplinkToken {
            gps_time_us: None,
            ..t.clone()
        };
        assert_eq!(UplinkToken::decode(&none.encode()).unwrap(), none);
        assert_eq!(UplinkToken::decode(&b[..10]), Err(TokenError::Length(10)));
        assert_eq!(
            UplinkToken::decode(&b[..b.len() - 1]),
            Err(TokenError::Length(b.len() - 1))
        );
        let mut v = b.clone();
        v[0] = 9;
        assert_eq!(UplinkToken::decode(&v), Err(TokenError::Version(9)));
    }
}
