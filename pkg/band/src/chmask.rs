//! LinkADRReq channel mask (ChMask / ChMaskCntl) semantics.

use serde::{Deserialize, Serialize};

use crate::error::BandError;
use crate::region::{ChannelLayout, Region, RegionParams};

/// Bitmap of enabled uplink channels: bit `i` set = channel `i` enabled (up to 128 channels).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct ChannelMask(pub u128);

impl ChannelMask {
    /// No channel enabled.
    pub const fn empty() -> Self {
        ChannelMask(0)
    }

    /// Channels `0..n` enabled.
    pub const fn first_n(n: usize) -> Self {
        if n >= 128 {
            ChannelMask(u128::MAX)
        } else {
            ChannelMask((1u128 << n) - 1)
        }
    }

    /// Channels `start..start + len` enabled.
    pub const fn range(start: usize, len: usize) -> Self {
        ChannelMask(Self::first_n(len).0 << start)
    }

    /// Whether channel `i` is enabled.
    pub const fn is_enabled(&self, i: usize) -> bool {
        i < 128 && self.0 & (1u128 << i) != 0
    }

    /// Enable or disable channel `i` (ignored beyond 127).
    pub fn set(&mut self, i: usize, enabled: bool) {
        if i >= 128 {
            return;
        }
        if enabled {
            self.0 |= 1u128 << i;
        } else {
            self.0 &= !(1u128 << i);
        }
    }

    /// Number of enabled channels.
    pub const fn count(&self) -> u32 {
        self.0.count_ones()
    }

    /// True if no channel is enabled.
    pub const fn is_empty(&self) -> bool {
        self.0 == 0
    }

    /// Indices of the enabled channels, ascending.
    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        (0..128).filter(move |&i| self.is_enabled(i))
    }

    /// Replace the 16 channels starting at `start` with `bits`.
    fn put16(&mut self, start: usize, bits: u16) {
        self.put(start, 16, u128::from(bits));
    }

    /// Replace `len` channels starting at `start` with the low `len` bits of `bits`.
    fn put(&mut self, start: usize, len: usize, bits: u128) {
        let field = Self::range(start, len).0;
        self.0 = (self.0 & !field) | ((bits << start) & field);
    }
}

/// One (ChMask, ChMaskCntl) pair of a LinkADRReq.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ChMaskBlock {
    /// The 16-bit ChMask field.
    pub ch_mask: u16,
    /// The 3-bit ChMaskCntl field.
    pub ch_mask_cntl: u8,
}

impl ChMaskBlock {
    /// Shorthand constructor.
    pub const fn new(ch_mask: u16, ch_mask_cntl: u8) -> Self {
        ChMaskBlock {
            ch_mask,
            ch_mask_cntl,
        }
    }
}

impl RegionParams {
    /// Apply the ChMask blocks of a (possibly contiguous) LinkADRReq, in order, to `current`.
    ///
    /// `defined` is the set of channels the device has defined (dynamic regions: default
    /// channels plus CFList/NewChannelReq channels; fixed regions: pass
    /// [`RegionParams::default_channel_mask`]). Returns the new mask, or an error (and the
    /// caller keeps `current`) when a ChMaskCntl is reserved, an undefined channel would be
    /// enabled, or no channel would remain enabled.
    ///
    /// Rules (RP002-1.0.4):
    /// - dynamic regions: 0 = ChMask applies to channels 0–15; 6 = all defined channels on;
    ///   anything else is RFU.
    /// - US915/AU915: 0–3 = ChMask applies to channels 16·n…16·n+15; 4 = channels 64–71;
    ///   5 = bits 0–7 each switch one FSB (8 × 125 kHz channels and 500 kHz channel 64+bit);
    ///   6 = all 125 kHz channels on, ChMask applies to 64–71; 7 = all 125 kHz off, ChMask
    ///   applies to 64–71.
    /// - CN470 (96 channels): 0–5 = ChMask applies to channels 16·n…16·n+15; 6 = all on;
    ///   7 is RFU.
    /// - RP002 CN470 20 MHz plans (64 channels): 0–3 = ChMask applies to channels
    ///   16·n…16·n+15; 4, 5 are RFU; 6 = all channels on; 7 = all channels off (a later block
    ///   of the same request re-enables some).
    /// - RP002 CN470 26 MHz plans (48 channels): 0–2 = ChMask applies to channels
    ///   16·n…16·n+15; 3 = all channels on; 4 = all channels off; 5–7 are RFU.
    pub fn apply_ch_mask(
        &self,
        current: ChannelMask,
        defined: ChannelMask,
        blocks: &[ChMaskBlock],
    ) -> Result<ChannelMask, BandError> {
        if blocks.is_empty() {
            return Err(BandError::EmptyChMask);
        }
        let region = self.region;
        let mut mask = current;
        for block in blocks {
            let bits = block.ch_mask;
            let cntl = block.ch_mask_cntl;
            let invalid = BandError::InvalidChMaskCntl { region, cntl };
            match (region, self.channel_layout) {
                (Region::Us915 | Region::Au915, _) => match cntl {
                    0..=3 => mask.put16(16 * cntl as usize, bits),
                    4 => mask.put(64, 8, u128::from(bits & 0xff)),
                    5 => {
                        for fsb in 0..8 {
                            let on = bits & (1 << fsb) != 0;
                            let narrow = if on { 0xff } else { 0 };
                            mask.put(8 * fsb, 8, narrow);
                            mask.set(64 + fsb, on);
                        }
                    }
                    6 | 7 => {
                        let narrow = if cntl == 6 { u128::MAX } else { 0 };
                        mask.put(0, 64, narrow);
                        mask.put(64, 8, u128::from(bits & 0xff));
                    }
                    _ => return Err(invalid),
                },
                (Region::Cn470A20 | Region::Cn470B20, _) => match cntl {
                    0..=3 => mask.put16(16 * cntl as usize, bits),
                    6 => mask = defined,
                    7 => mask = ChannelMask::empty(),
                    _ => return Err(invalid),
                },
                (Region::Cn470A26 | Region::Cn470B26, _) => match cntl {
                    0..=2 => mask.put16(16 * cntl as usize, bits),
                    3 => mask = defined,
                    4 => mask = ChannelMask::empty(),
                    _ => return Err(invalid),
                },
                (_, ChannelLayout::Fixed { .. }) => match cntl {
                    0..=5 => mask.put16(16 * cntl as usize, bits),
                    6 => mask = defined,
                    _ => return Err(invalid),
                },
                (_, ChannelLayout::Dynamic { .. }) => match cntl {
                    0 => mask.put16(0, bits),
                    6 => mask = defined,
                    _ => return Err(invalid),
                },
            }
        }
        if let Some(channel) = ChannelMask(mask.0 & !defined.0).iter().next() {
            return Err(BandError::UndefinedChannelEnabled {
                region,
                channel: channel as u8,
            });
        }
        if mask.is_empty() {
            return Err(BandError::NoChannelEnabled { region });
        }
        Ok(mask)
    }
}
