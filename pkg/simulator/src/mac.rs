//! The MAC layer of a simulated device: its radio settings (data rate, TX power, NbTrans,
//! channels and mask, RX1/RX2 parameters, RX1 delay, duty cycle) and the answers it owes
//! the network for the MAC commands of received downlinks, to send in the next uplink's
//! FOpts.
//!
//! The channel plan is EU868-like (LoRaWAN Regional Parameters RP002 §2.4): three default
//! channels 868.1/868.3/868.5 MHz DR0..5 that cannot be changed, up to 16 channels between
//! 863 and 870 MHz, DR0..7 (DR7 FSK), TX power indexes 0..7, RX1 data rate = uplink data
//! rate − RX1DROffset (at least DR0), RX2 869.525 MHz DR0.

use std::collections::BTreeSet;

use lorawan::MacCommand;
use lorawan::mac::{
    DevStatusAns, DlChannelAns, LinkADRAns, LinkADRReq, NewChannelAns, RXParamSetupAns,
    RejoinParamSetupAns,
};
use lorawan::phy::{CfList, DlSettings};
use serde::{Deserialize, Serialize};

/// The most FOpts bytes an uplink carries (LoRaWAN L2 §4.3.1.6).
pub const MAX_F_OPTS_LEN: usize = 15;

/// Highest data rate index of the plan (DR7, FSK 50 kbps).
pub const MAX_DATA_RATE: u8 = 7;
/// Highest TX power index of the plan (MaxEIRP − 14 dB).
pub const MAX_TX_POWER: u8 = 7;
/// Channels a device of the plan can hold.
pub const MAX_CHANNELS: usize = 16;
/// Channels defined by the plan that MAC commands cannot change.
pub const DEFAULT_CHANNELS: usize = 3;
/// The plan's band, in Hz.
pub const BAND_HZ: std::ops::RangeInclusive<u32> = 863_000_000..=870_000_000;

/// The modulation name of a data rate index as a Semtech `datr` ("SF12BW125"), or the
/// FSK bit rate for DR7.
pub fn data_rate_name(dr: u8) -> Option<String> {
    match dr {
        0..=5 => Some(format!("SF{}BW125", 12 - dr)),
        6 => Some("SF7BW250".to_owned()),
        7 => Some("50000".to_owned()),
        _ => None,
    }
}

/// The data rate index of a Semtech `datr` (string "SF7BW125" or FSK number 50000).
pub fn data_rate_index(datr: &serde_json::Value) -> Option<u8> {
    if datr.as_u64() == Some(50_000) || datr.as_str() == Some("50000") {
        return Some(7);
    }
    (0..=6).find(|&dr| data_rate_name(dr).as_deref() == datr.as_str())
}

/// One uplink channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Channel {
    /// Uplink frequency in Hz.
    pub frequency: u32,
    /// Lowest data rate allowed.
    pub min_dr: u8,
    /// Highest data rate allowed.
    pub max_dr: u8,
    /// RX1 downlink frequency set by DlChannelReq; the uplink frequency otherwise.
    pub dl_frequency: Option<u32>,
}

/// The radio settings of a simulated device, as MAC commands leave them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RadioState {
    /// Uplink data rate index.
    pub data_rate: u8,
    /// TX power index.
    pub tx_power: u8,
    /// Transmissions of each unconfirmed uplink.
    pub nb_trans: u8,
    /// Channels by index (`None`: not defined).
    pub channels: Vec<Option<Channel>>,
    /// Enabled channels: bit n enables channel n.
    pub ch_mask: u16,
    /// RX1 data-rate offset.
    pub rx1_dr_offset: u8,
    /// RX2 data rate index.
    pub rx2_data_rate: u8,
    /// RX2 frequency in Hz.
    pub rx2_frequency: u32,
    /// RX1 delay in seconds (RX2 opens one second later).
    pub rx1_delay: u8,
    /// Aggregated duty cycle limit 1/2^n (0: none beyond the regional one).
    pub max_duty_cycle: u8,
    /// MaxEIRP index from TxParamSetupReq, if one was received.
    pub max_eirp: Option<u8>,
    /// Uplink dwell time limited to 400 ms.
    pub uplink_dwell_time: bool,
    /// Downlink dwell time limited to 400 ms.
    pub downlink_dwell_time: bool,
    /// ADR_ACK_LIMIT and ADR_ACK_DELAY exponents from ADRParamSetupReq.
    pub adr_param_exps: Option<(u8, u8)>,
}

impl Default for RadioState {
    fn default() -> Self {
        Self::eu868()
    }
}

impl RadioState {
    /// The state after a reset: the three default channels, DR5, maximum power, RX2
    /// 869.525 MHz DR0, RX1 delay 1 s.
    pub fn eu868() -> Self {
        let mut channels = vec![None; MAX_CHANNELS];
        for (i, f) in [868_100_000, 868_300_000, 868_500_000]
            .into_iter()
            .enumerate()
        {
            channels[i] = Some(Channel {
                frequency: f,
                min_dr: 0,
                max_dr: 5,
                dl_frequency: None,
            });
        }
        Self {
            data_rate: 5,
            tx_power: 0,
            nb_trans: 1,
            channels,
            ch_mask: 0b111,
            rx1_dr_offset: 0,
            rx2_data_rate: 0,
            rx2_frequency: 869_525_000,
            rx1_delay: 1,
            max_duty_cycle: 0,
            max_eirp: None,
            uplink_dwell_time: false,
            downlink_dwell_time: false,
            adr_param_exps: None,
        }
    }

    /// Resets to the plan defaults, then applies a join-accept's DLSettings, RX delay and
    /// CFList (type 0: channels 3..=7 at DR0..5).
    pub fn apply_join_accept(
        &mut self,
        dl_settings: DlSettings,
        rx1_delay: u8,
        cf_list: Option<&CfList>,
    ) {
        *self = Self::eu868();
        self.rx1_dr_offset = dl_settings.rx1_dr_offset;
        self.rx2_data_rate = dl_settings.rx2_data_rate;
        self.rx1_delay = rx1_delay.max(1);
        if let Some(CfList::Frequencies(freqs)) = cf_list {
            for (i, &f) in freqs.iter().enumerate() {
                if f != 0 && BAND_HZ.contains(&f) {
                    self.channels[DEFAULT_CHANNELS + i] = Some(Channel {
                        frequency: f,
                        min_dr: 0,
                        max_dr: 5,
                        dl_frequency: None,
                    });
                    self.ch_mask |= 1 << (DEFAULT_CHANNELS + i);
                }
            }
        }
    }

    /// The enabled, defined channels allowing the current data rate, by index.
    pub fn usable_channels(&self) -> Vec<(u8, Channel)> {
        self.channels
            .iter()
            .enumerate()
            .filter(|(i, _)| self.ch_mask & (1 << i) != 0)
            .filter_map(|(i, c)| c.map(|c| (i as u8, c)))
            .filter(|(_, c)| (c.min_dr..=c.max_dr).contains(&self.data_rate))
            .collect()
    }

    /// The RX1 data rate for an uplink at `uplink_dr`.
    pub fn rx1_data_rate(&self, uplink_dr: u8) -> u8 {
        uplink_dr.saturating_sub(self.rx1_dr_offset)
    }

    /// The RX1 frequency for an uplink on channel `ch` at `uplink_frequency`.
    pub fn rx1_frequency(&self, ch: u8, uplink_frequency: u32) -> u32 {
        self.channels
            .get(ch as usize)
            .copied()
            .flatten()
            .and_then(|c| c.dl_frequency)
            .unwrap_or(uplink_frequency)
    }

    fn channel_defined(&self, i: usize) -> bool {
        self.channels.get(i).is_some_and(Option::is_some)
    }
}

/// A setting the simulated device refuses, to test how the network copes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Reject {
    /// LinkADRReq data rate (DataRateACK = 0).
    LinkAdrDataRate,
    /// LinkADRReq TX power (PowerACK = 0).
    LinkAdrTxPower,
    /// LinkADRReq channel mask (ChannelMaskACK = 0).
    LinkAdrChannelMask,
    /// RXParamSetupReq RX1 data-rate offset.
    Rx1DrOffset,
    /// RXParamSetupReq RX2 data rate.
    Rx2DataRate,
    /// RXParamSetupReq RX2 frequency.
    Rx2Frequency,
    /// NewChannelReq frequency.
    NewChannelFrequency,
    /// NewChannelReq data-rate range.
    NewChannelDataRate,
    /// DlChannelReq frequency.
    DlChannelFrequency,
    /// RejoinParamSetupReq time limit.
    RejoinTime,
}

/// What one received MAC command did to the device.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MacOutcome {
    /// The request (or answer) received.
    pub received: MacCommand,
    /// The answer queued for the next uplink, if the command has one.
    pub answer: Option<MacCommand>,
    /// Whether the device applied it (false: refused, nothing changed).
    pub applied: bool,
}

/// The MAC layer of a simulated device: radio state plus the answers owed to the network.
#[derive(Debug, Clone)]
pub struct MacResponder {
    /// The radio settings.
    pub state: RadioState,
    /// Settings the device refuses.
    pub reject: BTreeSet<Reject>,
    /// Battery level reported in DevStatusAns (0 external power, 1..=254, 255 unknown).
    pub battery: u8,
    /// Answers for the next uplink.
    pending: Vec<MacCommand>,
    /// Answers repeated in every uplink until a downlink arrives (RXParamSetupAns,
    /// RXTimingSetupAns, DlChannelAns: LoRaWAN 1.0.3+ §5.4, §5.7, §5.6).
    sticky: Vec<MacCommand>,
    /// The last DeviceTimeAns received.
    pub device_time: Option<lorawan::mac::DeviceTimeAns>,
    /// The last LinkCheckAns received.
    pub link_check: Option<lorawan::mac::LinkCheckAns>,
}

impl Default for MacResponder {
    fn default() -> Self {
        Self::new(RadioState::eu868())
    }
}

impl MacResponder {
    /// A responder starting from `state`, accepting every valid setting.
    pub fn new(state: RadioState) -> Self {
        Self {
            state,
            reject: BTreeSet::new(),
            battery: 255,
            pending: Vec::new(),
            sticky: Vec::new(),
            device_time: None,
            link_check: None,
        }
    }

    /// Drops the answers owed and what was learnt from answers (a new session starts).
    pub fn forget_answers(&mut self) {
        self.pending.clear();
        self.sticky.clear();
        self.device_time = None;
        self.link_check = None;
    }

    /// Queues a device-initiated request (LinkCheckReq, DeviceTimeReq) for the next uplink.
    pub fn request(&mut self, command: MacCommand) {
        self.pending.push(command);
    }

    /// Answers waiting for the next uplink, in order, without taking them.
    pub fn pending(&self) -> Vec<MacCommand> {
        self.sticky
            .iter()
            .chain(self.pending.iter())
            .copied()
            .collect()
    }

    /// Takes the answers for the next uplink, at most `budget` bytes of them; what does not
    /// fit waits for the uplink after. Sticky answers stay until a downlink arrives.
    pub fn take_for_uplink(&mut self, budget: usize) -> Vec<MacCommand> {
        let mut out = Vec::new();
        let mut used = 0;
        for c in &self.sticky {
            if used + c.encoded_len() <= budget {
                used += c.encoded_len();
                out.push(*c);
            }
        }
        let mut rest = Vec::new();
        for c in self.pending.drain(..) {
            if used + c.encoded_len() <= budget {
                used += c.encoded_len();
                out.push(c);
            } else {
                rest.push(c);
            }
        }
        self.pending = rest;
        out
    }

    /// Handles the MAC commands of one received downlink; `snr` is the SNR the device
    /// measured it at (for DevStatusAns). Returns what each command did.
    pub fn handle(&mut self, commands: &[MacCommand], snr: f64) -> Vec<MacOutcome> {
        // Any downlink ends the repetition of sticky answers.
        self.sticky.clear();
        let mut outcomes = Vec::new();
        let mut i = 0;
        while i < commands.len() {
            if let MacCommand::LinkADRReq(_) = commands[i] {
                // Contiguous LinkADRReqs form one block, applied or refused as a whole.
                let block: Vec<LinkADRReq> = commands[i..]
                    .iter()
                    .map_while(|c| match c {
                        MacCommand::LinkADRReq(r) => Some(*r),
                        _ => None,
                    })
                    .collect();
                i += block.len();
                outcomes.extend(self.link_adr(&block));
                continue;
            }
            outcomes.push(self.one(commands[i], snr));
            i += 1;
        }
        outcomes
    }

    fn answer(&mut self, received: MacCommand, answer: MacCommand, applied: bool) -> MacOutcome {
        self.pending.push(answer);
        MacOutcome {
            received,
            answer: Some(answer),
            applied,
        }
    }

    fn sticky_answer(
        &mut self,
        received: MacCommand,
        answer: MacCommand,
        applied: bool,
    ) -> MacOutcome {
        self.sticky.push(answer);
        MacOutcome {
            received,
            answer: Some(answer),
            applied,
        }
    }

    fn link_adr(&mut self, block: &[LinkADRReq]) -> Vec<MacOutcome> {
        let mut mask = self.state.ch_mask;
        let mut mask_ok = !self.reject.contains(&Reject::LinkAdrChannelMask);
        for req in block {
            match req.ch_mask_cntl {
                0 => mask = req.ch_mask,
                // All defined channels on, regardless of the mask.
                6 => {
                    mask = (0..MAX_CHANNELS)
                        .filter(|&i| self.state.channel_defined(i))
                        .fold(0, |m, i| m | (1 << i))
                }
                _ => mask_ok = false,
            }
        }
        let undefined_enabled =
            (0..MAX_CHANNELS).any(|i| mask & (1 << i) != 0 && !self.state.channel_defined(i));
        mask_ok &= mask != 0 && !undefined_enabled;
        let last = block.last().copied().expect("a block has one command");
        let new_dr = if last.data_rate == 15 {
            self.state.data_rate
        } else {
            last.data_rate
        };
        // The data rate must be allowed on at least one channel the new mask enables.
        let dr_ok = !self.reject.contains(&Reject::LinkAdrDataRate)
            && new_dr <= MAX_DATA_RATE
            && self.state.channels.iter().enumerate().any(|(i, c)| {
                mask & (1 << i) != 0 && c.is_some_and(|c| (c.min_dr..=c.max_dr).contains(&new_dr))
            });
        let power_ok = !self.reject.contains(&Reject::LinkAdrTxPower)
            && (last.tx_power == 15 || last.tx_power <= MAX_TX_POWER);
        let applied = mask_ok && dr_ok && power_ok;
        if applied {
            self.state.ch_mask = mask;
            self.state.data_rate = new_dr;
            if last.tx_power != 15 {
                self.state.tx_power = last.tx_power;
            }
            if last.nb_trans != 0 {
                self.state.nb_trans = last.nb_trans;
            }
        }
        let ans = MacCommand::LinkADRAns(LinkADRAns {
            power_ack: power_ok,
            data_rate_ack: dr_ok,
            channel_mask_ack: mask_ok,
        });
        // One answer per request of the block (LoRaWAN 1.0.4 §5.3).
        block
            .iter()
            .map(|r| self.answer(MacCommand::LinkADRReq(*r), ans, applied))
            .collect()
    }

    fn one(&mut self, cmd: MacCommand, snr: f64) -> MacOutcome {
        let r = &self.reject;
        match cmd {
            MacCommand::DevStatusReq => {
                let margin = snr.round().clamp(-32.0, 31.0) as i8;
                let battery = self.battery;
                self.answer(
                    cmd,
                    MacCommand::DevStatusAns(DevStatusAns { battery, margin }),
                    true,
                )
            }
            MacCommand::RXParamSetupReq(req) => {
                let offset_ok = !r.contains(&Reject::Rx1DrOffset) && req.rx1_dr_offset <= 5;
                let dr_ok = !r.contains(&Reject::Rx2DataRate) && req.rx2_data_rate <= MAX_DATA_RATE;
                let freq_ok =
                    !r.contains(&Reject::Rx2Frequency) && BAND_HZ.contains(&req.frequency);
                let applied = offset_ok && dr_ok && freq_ok;
                if applied {
                    self.state.rx1_dr_offset = req.rx1_dr_offset;
                    self.state.rx2_data_rate = req.rx2_data_rate;
                    self.state.rx2_frequency = req.frequency;
                }
                self.sticky_answer(
                    cmd,
                    MacCommand::RXParamSetupAns(RXParamSetupAns {
                        rx1_dr_offset_ack: offset_ok,
                        rx2_data_rate_ack: dr_ok,
                        channel_ack: freq_ok,
                    }),
                    applied,
                )
            }
            MacCommand::RXTimingSetupReq(req) => {
                self.state.rx1_delay = req.delay.max(1);
                self.sticky_answer(cmd, MacCommand::RXTimingSetupAns, true)
            }
            MacCommand::NewChannelReq(req) => {
                let i = req.ch_index as usize;
                // The default channels cannot be changed (RP002 §2.4.7).
                let index_ok = (DEFAULT_CHANNELS..MAX_CHANNELS).contains(&i);
                let disable = req.frequency == 0;
                let freq_ok = !r.contains(&Reject::NewChannelFrequency)
                    && index_ok
                    && (disable || BAND_HZ.contains(&req.frequency));
                let dr_ok = !r.contains(&Reject::NewChannelDataRate)
                    && index_ok
                    && (disable || (req.min_dr <= req.max_dr && req.max_dr <= MAX_DATA_RATE));
                let applied = freq_ok && dr_ok;
                if applied {
                    if disable {
                        self.state.channels[i] = None;
                        self.state.ch_mask &= !(1 << i);
                    } else {
                        self.state.channels[i] = Some(Channel {
                            frequency: req.frequency,
                            min_dr: req.min_dr,
                            max_dr: req.max_dr,
                            dl_frequency: None,
                        });
                        self.state.ch_mask |= 1 << i;
                    }
                }
                self.answer(
                    cmd,
                    MacCommand::NewChannelAns(NewChannelAns {
                        data_rate_range_ok: dr_ok,
                        channel_frequency_ok: freq_ok,
                    }),
                    applied,
                )
            }
            MacCommand::DlChannelReq(req) => {
                let i = req.ch_index as usize;
                let exists = self.state.channel_defined(i);
                let freq_ok =
                    !r.contains(&Reject::DlChannelFrequency) && BAND_HZ.contains(&req.frequency);
                let applied = exists && freq_ok;
                if applied && let Some(Some(c)) = self.state.channels.get_mut(i) {
                    c.dl_frequency = Some(req.frequency);
                }
                self.sticky_answer(
                    cmd,
                    MacCommand::DlChannelAns(DlChannelAns {
                        uplink_frequency_exists: exists,
                        channel_frequency_ok: freq_ok,
                    }),
                    applied,
                )
            }
            MacCommand::DutyCycleReq(req) => {
                self.state.max_duty_cycle = req.max_duty_cycle;
                self.answer(cmd, MacCommand::DutyCycleAns, true)
            }
            MacCommand::TxParamSetupReq(req) => {
                self.state.max_eirp = Some(req.max_eirp);
                self.state.uplink_dwell_time = req.uplink_dwell_time;
                self.state.downlink_dwell_time = req.downlink_dwell_time;
                self.answer(cmd, MacCommand::TxParamSetupAns, true)
            }
            MacCommand::ADRParamSetupReq(req) => {
                self.state.adr_param_exps = Some((req.limit_exp, req.delay_exp));
                self.answer(cmd, MacCommand::ADRParamSetupAns, true)
            }
            MacCommand::RejoinParamSetupReq(_) => {
                let time_ok = !r.contains(&Reject::RejoinTime);
                self.answer(
                    cmd,
                    MacCommand::RejoinParamSetupAns(RejoinParamSetupAns { time_ok }),
                    true,
                )
            }
            MacCommand::DeviceTimeAns(ans) => {
                self.device_time = Some(ans);
                self.received(cmd, true)
            }
            MacCommand::LinkCheckAns(ans) => {
                self.link_check = Some(ans);
                self.received(cmd, true)
            }
            // The device layer handles RekeyConf; ResetConf and DeviceModeConf only confirm.
            MacCommand::RekeyConf(_) | MacCommand::ResetConf(_) | MacCommand::DeviceModeConf(_) => {
                self.received(cmd, true)
            }
            // Class B and rejoins are not simulated: nothing changes, nothing is answered.
            _ => self.received(cmd, false),
        }
    }

    fn received(&self, cmd: MacCommand, applied: bool) -> MacOutcome {
        MacOutcome {
            received: cmd,
            answer: None,
            applied,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lorawan::mac::{DlChannelReq, NewChannelReq, RXParamSetupReq, RXTimingSetupReq};

    fn adr(data_rate: u8, tx_power: u8, ch_mask: u16, ch_mask_cntl: u8) -> MacCommand {
        MacCommand::LinkADRReq(LinkADRReq {
            data_rate,
            tx_power,
            ch_mask,
            ch_mask_cntl,
            nb_trans: 2,
        })
    }

    #[test]
    fn link_adr_block_is_applied_whole_and_answered_per_request() {
        let mut mac = MacResponder::default();
        let out = mac.handle(&[adr(3, 2, 0b011, 0), adr(3, 2, 0b110, 0)], 5.0);
        assert_eq!(out.len(), 2);
        assert!(out.iter().all(|o| o.applied));
        assert_eq!(mac.state.ch_mask, 0b110);
        assert_eq!(
            (mac.state.data_rate, mac.state.tx_power, mac.state.nb_trans),
            (3, 2, 2)
        );
        let ans = mac.take_for_uplink(MAX_F_OPTS_LEN);
        let ok = MacCommand::LinkADRAns(LinkADRAns {
            power_ack: true,
            data_rate_ack: true,
            channel_mask_ack: true,
        });
        assert_eq!(ans, vec![ok, ok]);
        assert!(mac.take_for_uplink(MAX_F_OPTS_LEN).is_empty());
    }

    #[test]
    fn link_adr_refusals_change_nothing() {
        let mut mac = MacResponder::default();
        // Channel 5 is not defined: the mask is refused, so is the whole request.
        let out = mac.handle(&[adr(2, 1, 0b10_0001, 0)], 5.0);
        assert!(!out[0].applied);
        assert_eq!(mac.state, RadioState::eu868());
        assert_eq!(
            out[0].answer,
            Some(MacCommand::LinkADRAns(LinkADRAns {
                power_ack: true,
                data_rate_ack: true,
                channel_mask_ack: false,
            }))
        );
        // A rejection chosen by the test.
        mac.reject.insert(Reject::LinkAdrTxPower);
        mac.take_for_uplink(MAX_F_OPTS_LEN);
        let out = mac.handle(&[adr(15, 3, 0, 6)], 5.0);
        assert!(!out[0].applied);
        assert_eq!(mac.state.tx_power, 0);
        // DR6 is not allowed on the default channels.
        mac.reject.clear();
        let out = mac.handle(&[adr(6, 15, 0b111, 0)], 5.0);
        assert!(!out[0].applied);
        assert_eq!(mac.state.data_rate, 5);
    }

    #[test]
    fn rx_settings_and_sticky_answers() {
        let mut mac = MacResponder::default();
        mac.handle(
            &[
                MacCommand::RXParamSetupReq(RXParamSetupReq {
                    rx1_dr_offset: 2,
                    rx2_data_rate: 3,
                    frequency: 869_525_000,
                }),
                MacCommand::RXTimingSetupReq(RXTimingSetupReq { delay: 0 }),
                MacCommand::DevStatusReq,
            ],
            40.0,
        );
        assert_eq!(mac.state.rx1_data_rate(5), 3);
        assert_eq!(mac.state.rx1_data_rate(1), 0);
        assert_eq!(mac.state.rx2_data_rate, 3);
        assert_eq!(mac.state.rx1_delay, 1);
        let first = mac.take_for_uplink(MAX_F_OPTS_LEN);
        assert_eq!(first.len(), 3);
        assert_eq!(
            first[2],
            MacCommand::DevStatusAns(DevStatusAns {
                battery: 255,
                margin: 31
            })
        );
        // Repeated until a downlink arrives; DevStatusAns is not.
        let second = mac.take_for_uplink(MAX_F_OPTS_LEN);
        assert_eq!(second, first[..2].to_vec());
        mac.handle(&[], 0.0);
        assert!(mac.take_for_uplink(MAX_F_OPTS_LEN).is_empty());
        // A refused RX2 frequency (outside the band) changes nothing.
        mac.handle(
            &[MacCommand::RXParamSetupReq(RXParamSetupReq {
                rx1_dr_offset: 0,
                rx2_data_rate: 0,
                frequency: 915_000_000,
            })],
            0.0,
        );
        assert_eq!(mac.state.rx1_dr_offset, 2);
    }

    #[test]
    fn channels_and_budget() {
        let mut mac = MacResponder::default();
        let out = mac.handle(
            &[
                MacCommand::NewChannelReq(NewChannelReq {
                    ch_index: 3,
                    frequency: 867_100_000,
                    min_dr: 0,
                    max_dr: 5,
                }),
                MacCommand::NewChannelReq(NewChannelReq {
                    ch_index: 0,
                    frequency: 867_300_000,
                    min_dr: 0,
                    max_dr: 5,
                }),
                MacCommand::DlChannelReq(DlChannelReq {
                    ch_index: 3,
                    frequency: 869_100_000,
                }),
                MacCommand::DlChannelReq(DlChannelReq {
                    ch_index: 9,
                    frequency: 869_100_000,
                }),
            ],
            0.0,
        );
        assert_eq!(
            out.iter().map(|o| o.applied).collect::<Vec<_>>(),
            [true, false, true, false]
        );
        assert_eq!(mac.state.ch_mask, 0b1111);
        assert_eq!(mac.state.rx1_frequency(3, 867_100_000), 869_100_000);
        assert_eq!(mac.state.rx1_frequency(0, 868_100_000), 868_100_000);
        // 2 + 2 (NewChannelAns) + 2 + 2 (DlChannelAns): a 5-byte budget takes the sticky
        // ones first, then what fits.
        let some = mac.take_for_uplink(5);
        assert_eq!(some.len(), 2);
        assert!(matches!(some[0], MacCommand::DlChannelAns(_)));
        let rest = mac.take_for_uplink(MAX_F_OPTS_LEN);
        assert_eq!(rest.len(), 4);
    }

    #[test]
    fn join_accept_resets_and_adds_cf_list_channels() {
        let mut state = RadioState::eu868();
        state.data_rate = 0;
        state.apply_join_accept(
            DlSettings {
                opt_neg: false,
                rx1_dr_offset: 1,
                rx2_data_rate: 2,
            },
            5,
            Some(&CfList::Frequencies([867_100_000, 867_300_000, 0, 0, 0])),
        );
        assert_eq!(state.data_rate, 5);
        assert_eq!(state.ch_mask, 0b11111);
        assert_eq!(state.usable_channels().len(), 5);
        assert_eq!((state.rx1_delay, state.rx2_data_rate), (5, 2));
        assert_eq!(data_rate_name(0).as_deref(), Some("SF12BW125"));
        assert_eq!(data_rate_index(&serde_json::json!("SF9BW125")), Some(3));
        assert_eq!(data_rate_index(&serde_json::json!(50000)), Some(7));
    }
}
