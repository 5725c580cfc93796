//! The downlink side: which MAC commands go into the next downlink.

use band::{ChannelLayout, ChannelMask};
use lorawan::mac::{
    ADRParamSetupReq, DlChannelReq, DutyCycleReq, LinkADRReq, NewChannelReq, PingSlotChannelReq,
    RXParamSetupReq, RXTimingSetupReq, RejoinParamSetupReq, TxParamSetupReq,
};
use lorawan::{Direction, MacCommand};
use tern_api::v3::MacVersion;

use crate::chmask::ch_mask_blocks;
use crate::state::{DeviceMac, PendingRequest, unix_ms};
use crate::{MacContext, MacStateError};

/// Commands chosen so far and the bytes they take.
struct Frame {
    cmds: Vec<MacCommand>,
    used: usize,
    budget: usize,
}

impl Frame {
    /// Add `unit` (one command, or a LinkADRReq block) whole if it fits and encodes.
    fn try_push(&mut self, unit: &[MacCommand]) -> Option<Vec<u8>> {
        let len = MacCommand::encoded_len_all(unit);
        if self.used + len > self.budget {
            return None;
        }
        let mut bytes = Vec::with_capacity(len);
        MacCommand::encode_all(unit, &mut bytes).ok()?;
        self.cmds.extend_from_slice(unit);
        self.used += len;
        Some(bytes)
    }
}

impl DeviceMac {
    /// The MAC commands for the next downlink, at most `budget_bytes` long (encoded): first
    /// the answers to the last uplink, then the requests that move the device from its
    /// current towards its desired parameters, ADR's LinkADRReq, ForceRejoinReq and
    /// RejoinParamSetupReq when asked, and DevStatusReq when due. A request is never split
    /// and never sent again while it is pending; the returned requests become pending.
    ///
    /// Call it once per downlink actually built; answers not included are dropped (they
    /// answer an uplink whose receive windows are now used).
    pub fn next_commands(&mut self, ctx: &MacContext<'_>, budget_bytes: usize) -> Vec<MacCommand> {
        self.refresh_desired(ctx);
        let mut f = Frame {
            cmds: Vec::new(),
            used: 0,
            budget: budget_bytes,
        };
        if !self.answers.is_empty() {
            let answers =
                MacCommand::decode_all(Direction::Downlink, &self.answers).unwrap_or_default();
            self.answers.clear();
            for a in answers {
                f.try_push(&[a]);
            }
        }

        let params = ctx.plan.params();
        let cur = self.current();
        let d = self.desired();
        let now_ms = unix_ms(ctx.now);
        let mut sent: Vec<Vec<u8>> = Vec::new();
        let dynamic = matches!(params.channel_layout, ChannelLayout::Dynamic { .. });

        // NewChannelReq (1.0.4 §5.6) before LinkADRReq: a mask may enable the new channels.
        // Default channels cannot be changed by NewChannelReq (RP002), only masked.
        let mut created = ChannelMask::empty();
        let mut removed = ChannelMask::empty();
        if dynamic && self.may_send(ctx, 0x07) {
            let first = params.default_channels.len();
            let n = cur.channels.len().max(d.channels.len());
            for idx in first..n {
                let c = cur.channels.get(idx).copied().unwrap_or_default();
                let w = d.channels.get(idx).copied().unwrap_or_default();
                if (c.frequency, c.min_dr, c.max_dr) == (w.frequency, w.min_dr, w.max_dr) {
                    continue;
                }
                let Ok(ch_index) = u8::try_from(idx) else {
                    break;
                };
                let req = MacCommand::NewChannelReq(NewChannelReq {
                    ch_index,
                    frequency: w.frequency,
                    min_dr: w.min_dr as u8,
                    max_dr: w.max_dr as u8,
                });
                if self.rejected_before(&req) {
                    continue;
                }
                if let Some(b) = f.try_push(&[req]) {
                    sent.push(b);
                    if w.frequency == 0 {
                        removed.set(idx, true);
                    } else {
                        created.set(idx, true);
                    }
                }
            }
        }

        // LinkADRReq (1.0.4 §5.3): ADR's data rate, TX power, NbTrans and the channel mask.
        if self.may_send(ctx, 0x03) {
            let defined = ChannelMask((cur.defined(params).0 | created.0) & !removed.0);
            let mask_after_new = ChannelMask((cur.mask().0 | created.0) & !removed.0);
            let mut target = ChannelMask(d.mask().0 & defined.0);
            let rejected = self
                .rejected_ch_masks
                .iter()
                .any(|b| crate::state::mask_from_bytes(b) == target);
            if target.is_empty() || rejected {
                target = mask_after_new;
            }
            let differs = target != mask_after_new
                || d.data_rate != cur.data_rate
                || d.tx_power_index != cur.tx_power_index
                || d.nb_trans != cur.nb_trans;
            if differs && let Some(blocks) = ch_mask_blocks(params, mask_after_new, target, defined)
            {
                // 0xF keeps the current value (1.0.4 §5.3, 1.1 §5.3).
                let keep = self.at_least(MacVersion::MacV104);
                let data_rate = if keep && d.data_rate == cur.data_rate {
                    15
                } else {
                    d.data_rate as u8
                };
                let tx_power = if keep && d.tx_power_index == cur.tx_power_index {
                    15
                } else {
                    d.tx_power_index as u8
                };
                let nb_trans = d.nb_trans.clamp(1, 15) as u8;
                let unit: Vec<MacCommand> = blocks
                    .iter()
                    .map(|b| {
                        MacCommand::LinkADRReq(LinkADRReq {
                            data_rate,
                            tx_power,
                            ch_mask: b.ch_mask,
                            ch_mask_cntl: b.ch_mask_cntl,
                            nb_trans,
                        })
                    })
                    .collect();
                if let Some(b) = f.try_push(&unit) {
                    sent.push(b);
                }
            }
        }

        // RXParamSetupReq (1.0.4 §5.4).
        if (cur.rx1_dr_offset, cur.rx2_data_rate, cur.rx2_frequency)
            != (d.rx1_dr_offset, d.rx2_data_rate, d.rx2_frequency)
            && self.may_send(ctx, 0x05)
        {
            let req = MacCommand::RXParamSetupReq(RXParamSetupReq {
                rx1_dr_offset: d.rx1_dr_offset as u8,
                rx2_data_rate: d.rx2_data_rate as u8,
                frequency: d.rx2_frequency,
            });
            if !self.rejected_before(&req) {
                sent.extend(f.try_push(&[req]));
            }
        }

        // RXTimingSetupReq (1.0.4 §5.7).
        if cur.rx1_delay != d.rx1_delay && self.may_send(ctx, 0x08) {
            let req = MacCommand::RXTimingSetupReq(RXTimingSetupReq {
                delay: d.rx1_delay as u8,
            });
            sent.extend(f.try_push(&[req]));
        }

        // TxParamSetupReq (1.0.4 §5.8): only where the region defines it (RP002: AS923…).
        if params.tx_param_setup_req
            && self.at_least(MacVersion::MacV102)
            && (
                cur.uplink_dwell_time,
                cur.downlink_dwell_time,
                cur.max_eirp_index,
            ) != (d.uplink_dwell_time, d.downlink_dwell_time, d.max_eirp_index)
            && self.may_send(ctx, 0x09)
        {
            let req = MacCommand::TxParamSetupReq(TxParamSetupReq {
                downlink_dwell_time: d.downlink_dwell_time,
                uplink_dwell_time: d.uplink_dwell_time,
                max_eirp: d.max_eirp_index as u8,
            });
            sent.extend(f.try_push(&[req]));
        }

        // DlChannelReq (1.0.4 §5.10): dynamic-channel regions, defined channels only.
        if dynamic && self.at_least(MacVersion::MacV102) && self.may_send(ctx, 0x0A) {
            for (idx, w) in d.channels.iter().enumerate() {
                let Some(c) = cur.channels.get(idx) else {
                    continue;
                };
                if c.frequency == 0 || c.dl_frequency == w.dl_frequency || w.dl_frequency == 0 {
                    continue;
                }
                let req = MacCommand::DlChannelReq(DlChannelReq {
                    ch_index: idx as u8,
                    frequency: w.dl_frequency,
                });
                if !self.rejected_before(&req) {
                    sent.extend(f.try_push(&[req]));
                }
            }
        }

        // DutyCycleReq (1.0.4 §5.5).
        if cur.max_duty_cycle != d.max_duty_cycle && self.may_send(ctx, 0x04) {
            let req = MacCommand::DutyCycleReq(DutyCycleReq {
                max_duty_cycle: d.max_duty_cycle as u8,
            });
            sent.extend(f.try_push(&[req]));
        }

        // ADRParamSetupReq (1.1 §5.11).
        if self.is_1_1()
            && (cur.adr_ack_limit_exp, cur.adr_ack_delay_exp)
                != (d.adr_ack_limit_exp, d.adr_ack_delay_exp)
            && self.may_send(ctx, 0x0C)
        {
            let req = MacCommand::ADRParamSetupReq(ADRParamSetupReq {
                limit_exp: d.adr_ack_limit_exp as u8,
                delay_exp: d.adr_ack_delay_exp as u8,
            });
            sent.extend(f.try_push(&[req]));
        }

        // RejoinParamSetupReq (1.1 §5.13), when asked for.
        if self.is_1_1()
            && let (Some(t), Some(n)) = (d.rejoin_max_time_n, d.rejoin_max_count_n)
            && (cur.rejoin_max_time_n, cur.rejoin_max_count_n) != (Some(t), Some(n))
            && self.may_send(ctx, 0x0F)
        {
            let req = MacCommand::RejoinParamSetupReq(RejoinParamSetupReq {
                max_time_n: t as u8,
                max_count_n: n as u8,
            });
            if !self.rejected_before(&req) {
                sent.extend(f.try_push(&[req]));
            }
        }

        // ForceRejoinReq (1.1 §5.12): no answer; sent once when asked for.
        let force_rejoin_sent = !self.force_rejoin.is_empty()
            && MacCommand::decode_all(Direction::Downlink, &self.force_rejoin)
                .is_ok_and(|cmds| f.try_push(&cmds).is_some());

        // DevStatusReq (1.0.4 §5.5) by uplink count or time since the last answer.
        if self.dev_status_due(ctx) && self.may_send(ctx, 0x06) {
            sent.extend(f.try_push(&[MacCommand::DevStatusReq]));
        }

        // PingSlotChannelReq (class B, 1.0.4 §13.2).
        if (cur.ping_slot_frequency, cur.ping_slot_data_rate)
            != (d.ping_slot_frequency, d.ping_slot_data_rate)
            && self.may_send(ctx, 0x11)
        {
            let req = MacCommand::PingSlotChannelReq(PingSlotChannelReq {
                frequency: d.ping_slot_frequency,
                data_rate: d.ping_slot_data_rate as u8,
            });
            if !self.rejected_before(&req) {
                sent.extend(f.try_push(&[req]));
            }
        }

        if force_rejoin_sent {
            self.force_rejoin.clear();
        }
        for commands in sent {
            self.pending.push(PendingRequest {
                commands,
                uplinks_since: 0,
                sent_at_ms: now_ms,
            });
        }
        f.cmds
    }

    /// Not pending and not given up after too many lost attempts.
    fn may_send(&self, ctx: &MacContext<'_>, cid: u8) -> bool {
        if self.is_pending(cid) {
            return false;
        }
        let max = ctx.config.max_attempts;
        max == 0
            || !self
                .timeouts
                .iter()
                .any(|t| t.cid == u32::from(cid) && t.count >= max)
    }

    /// Whether DevStatusReq is due by count or time periodicity (settings, else NS defaults).
    pub fn dev_status_due(&self, ctx: &MacContext<'_>) -> bool {
        let s = ctx.settings;
        let count = s
            .and_then(|s| s.status_count_periodicity)
            .unwrap_or(ctx.config.status_count_periodicity);
        let secs = s
            .and_then(|s| s.status_time_periodicity)
            .unwrap_or(ctx.config.status_time_periodicity);
        let by_count = count > 0 && self.uplinks_since_dev_status >= count;
        let elapsed_ms = unix_ms(ctx.now).saturating_sub(self.last_dev_status_at_ms);
        let by_time = secs > 0 && elapsed_ms >= i64::from(secs) * 1000;
        by_count || by_time
    }

    /// Validate and adopt new MAC settings for the session (the NS calls this when the
    /// device's `mac_settings` change); desired parameters follow at once.
    pub fn apply_settings(&mut self, ctx: &MacContext<'_>) -> Result<(), MacStateError> {
        if let Some(s) = ctx.settings {
            crate::validate_settings(ctx.plan, s)?;
        }
        self.refresh_desired(ctx);
        // A new wish deserves new attempts.
        self.timeouts.clear();
        self.rejected_requests.clear();
        self.rejected_ch_masks.clear();
        Ok(())
    }
}
