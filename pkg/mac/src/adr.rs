//! Adaptive data rate: the network-side algorithm recommended by the LoRa Alliance
//! (Semtech "LoRaWAN – simple rate adaptation recommended algorithm"), deterministic.
//!
//! 1. SNR margin = max SNR of the last [`HISTORY_LEN`] uplinks − the SNR the current data
//!    rate needs to demodulate − the installation margin (default [`DEFAULT_MARGIN_DB`]).
//! 2. steps = ⌊margin / 3 dB⌋.
//! 3. While steps > 0: raise the data rate up to the highest ADR data rate of the enabled
//!    channels; then lower the TX power (raise the index) up to the region's last index.
//!    While steps < 0: raise the TX power (lower the index) down to index 0. ADR never lowers
//!    the data rate: the device's own ADR back-off (1.0.4 §4.3.1.1) does that.
//! 4. NbTrans from the frame loss over the history (FCnt gaps): below 5 % → 1, below 10 %
//!    → 2, otherwise 3. More repetitions cost more airtime and duty cycle than they win back,
//!    so NbTrans is capped at 3.
//! 5. No decision before [`HISTORY_LEN`] uplinks, unless the device set ADRACKReq (then the
//!    history there is, at least the current uplink, is used).

use band::{DataRate, RegionParams};

pub use crate::state::AdrRecord;

/// Installation margin in dB when neither the device nor the NS sets one.
pub const DEFAULT_MARGIN_DB: f32 = 15.0;
/// Uplinks kept in the history and needed for a decision.
pub const HISTORY_LEN: usize = 20;
/// dB of SNR margin per ADR step (one data rate or one TX power index).
pub const STEP_DB: f32 = 3.0;

/// The SNR a LoRa data rate needs to demodulate, in dB (SX127x/SX130x datasheets:
/// SF7 −7.5 … SF12 −20, 2.5 dB per SF); `None` for FSK and LR-FHSS.
pub fn required_snr_db(dr: &DataRate) -> Option<f32> {
    match dr {
        DataRate::Lora { sf, .. } if (5..=12).contains(sf) => Some(-7.5 - 2.5 * f32::from(sf - 7)),
        _ => None,
    }
}

/// Frame loss over the history from FCnt gaps: 1 − received / (last − first + 1); 0 with
/// fewer than two uplinks.
pub fn packet_loss(history: &[AdrRecord]) -> f32 {
    let (Some(first), Some(last)) = (history.first(), history.last()) else {
        return 0.0;
    };
    let span = u64::from(last.f_cnt.wrapping_sub(first.f_cnt)) + 1;
    if history.len() < 2 || span < history.len() as u64 {
        return 0.0;
    }
    1.0 - history.len() as f32 / span as f32
}

/// NbTrans for a frame loss ratio (see the module documentation).
pub fn nb_trans_for_loss(loss: f32) -> u8 {
    if loss < 0.05 {
        1
    } else if loss < 0.10 {
        2
    } else {
        3
    }
}

/// The highest data rate ADR may choose: the highest LoRa 125 kHz uplink data rate of the
/// region (EU868 DR5, US915 DR3) that one of the enabled `channels` allows.
pub fn max_adr_data_rate(
    params: &RegionParams,
    channels: impl IntoIterator<Item = band::Channel>,
) -> Option<u8> {
    let region_max = params
        .data_rates
        .iter()
        .filter(|e| e.uplink && matches!(e.data_rate, DataRate::Lora { bw_hz: 125_000, .. }))
        .map(|e| e.index)
        .max()?;
    channels
        .into_iter()
        .filter(|c| c.min_dr <= region_max)
        .map(|c| c.max_dr.min(region_max))
        .max()
}

/// What ADR works from.
#[derive(Debug, Clone, Copy)]
pub struct AdrInput<'a> {
    /// The device's region.
    pub params: &'a RegionParams,
    /// The uplink history, oldest first.
    pub history: &'a [AdrRecord],
    /// The data rate the device uses.
    pub data_rate: u8,
    /// The TX power index the device uses.
    pub tx_power_index: u8,
    /// Installation margin in dB.
    pub margin_db: f32,
    /// Highest data rate ADR may choose ([`max_adr_data_rate`]).
    pub max_data_rate: u8,
    /// Highest TX power index of the region (lowest power).
    pub max_tx_power_index: u8,
    /// Data rates the device rejected before.
    pub rejected_data_rates: &'a [u32],
    /// TX power indices the device rejected before.
    pub rejected_tx_powers: &'a [u32],
    /// The last uplink set ADRACKReq.
    pub adr_ack_req: bool,
}

/// The parameters ADR wants the device to use.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdrDecision {
    /// Data rate index.
    pub data_rate: u8,
    /// TX power index.
    pub tx_power_index: u8,
    /// Transmissions per uplink.
    pub nb_trans: u8,
    /// The SNR margin the decision used, dB.
    pub margin_db: f32,
}

/// Run ADR; `None` when there is not enough history or the data rate is not LoRa.
pub fn decide(input: &AdrInput<'_>) -> Option<AdrDecision> {
    let h = input.history;
    if h.is_empty() || (h.len() < HISTORY_LEN && !input.adr_ack_req) {
        return None;
    }
    let required = required_snr_db(&input.params.data_rate(input.data_rate)?)?;
    let max_snr = h.iter().map(|r| r.max_snr).reduce(f32::max)?;
    let margin = max_snr - required - input.margin_db;
    let mut steps = (margin / STEP_DB).floor() as i32;
    let mut dr = input.data_rate;
    let mut power = input.tx_power_index;
    let rejected_dr = |d: u8| input.rejected_data_rates.contains(&u32::from(d));
    let rejected_power = |p: u8| input.rejected_tx_powers.contains(&u32::from(p));
    while steps > 0 && dr < input.max_data_rate && !rejected_dr(dr + 1) {
        dr += 1;
        steps -= 1;
    }
    while steps > 0 && power < input.max_tx_power_index && !rejected_power(power + 1) {
        power += 1;
        steps -= 1;
    }
    while steps < 0 && power > 0 && !rejected_power(power - 1) {
        power -= 1;
        steps += 1;
    }
    Some(AdrDecision {
        data_rate: dr,
        tx_power_index: power,
        nb_trans: nb_trans_for_loss(packet_loss(h)),
        margin_db: margin,
    })
}
