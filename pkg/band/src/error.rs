//! Errors of this crate.

use crate::region::Region;

/// Everything that can go wrong when applying the regional parameters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BandError {
    /// The data rate index is not defined in this region.
    #[error("{region}: data rate DR{dr} is not defined")]
    UnknownDataRate {
        /// Region asked.
        region: Region,
        /// Data rate index asked.
        dr: u8,
    },
    /// The data rate exists but may not be used in the given direction or configuration.
    #[error("{region}: data rate DR{dr} cannot be used {reason}")]
    DataRateNotAllowed {
        /// Region asked.
        region: Region,
        /// Data rate index asked.
        dr: u8,
        /// Why it cannot be used (e.g. "for uplink").
        reason: &'static str,
    },
    /// The RX1DROffset is out of range for this region.
    #[error("{region}: RX1DROffset {offset} is invalid (valid: 0..={max})")]
    InvalidRx1DrOffset {
        /// Region asked.
        region: Region,
        /// Offset given.
        offset: u8,
        /// Largest valid offset.
        max: u8,
    },
    /// The uplink frequency is not a channel of this region.
    #[error("{region}: {frequency} Hz is not an uplink channel")]
    UnknownUplinkFrequency {
        /// Region asked.
        region: Region,
        /// Frequency given, in Hz.
        frequency: u32,
    },
    /// The ChMaskCntl value is reserved (RFU) in this region.
    #[error("{region}: ChMaskCntl {cntl} is reserved in this region")]
    InvalidChMaskCntl {
        /// Region asked.
        region: Region,
        /// ChMaskCntl given.
        cntl: u8,
    },
    /// A LinkADRReq block would enable a channel that is not defined.
    #[error("{region}: ChMask enables channel {channel}, which is not defined")]
    UndefinedChannelEnabled {
        /// Region asked.
        region: Region,
        /// Index of the undefined channel.
        channel: u8,
    },
    /// A LinkADRReq sequence would leave no channel enabled.
    #[error("{region}: the channel mask would disable every channel")]
    NoChannelEnabled {
        /// Region asked.
        region: Region,
    },
    /// A LinkADRReq sequence was empty.
    #[error("LinkADRReq channel mask: no ChMask block given")]
    EmptyChMask,
    /// The frequency plan ID is unknown.
    #[error("unknown frequency plan {id:?}; valid IDs: {valid}")]
    UnknownFrequencyPlan {
        /// ID asked.
        id: String,
        /// Comma-separated list of valid IDs.
        valid: String,
    },
    /// The region name is unknown.
    #[error("unknown region {name:?}; valid regions: {valid}")]
    UnknownRegion {
        /// Name asked.
        name: String,
        /// Comma-separated list of valid names.
        valid: String,
    },
    /// A LoRa parameter is out of the range the time-on-air formula supports.
    #[error("time on air: {0}")]
    InvalidModulation(&'static str),
    /// The channels of a frequency plan do not fit on two gateway radios.
    #[error("channels need more than two radios: {0}")]
    RadioLayout(String),
}
