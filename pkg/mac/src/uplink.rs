//! The uplink side: answer device requests, apply answers to pending requests, run ADR.

use band::{ChMaskBlock, ChannelMask};
use lorawan::MacCommand;
use lorawan::mac::{
    DeviceModeClass, DeviceModeConf, DeviceTimeAns, LinkADRReq, LinkCheckAns, RekeyConf, ResetConf,
};
use tern_api::v3::{DeviceClass, MacVersion};

use crate::adr::{self, AdrInput};
use crate::state::{AdrRecord, ChannelParams, DeviceMac, gps_time, unix_ms};
use crate::{MacContext, MacEvent, Rejection, UplinkMac, UplinkMacOutcome};

/// The server's LoRaWAN 1.x minor version for ResetConf/RekeyConf (1.1 §5.1, §5.10).
const SERVER_MINOR: u8 = 1;

impl DeviceMac {
    /// Process one accepted data uplink (see [`UplinkMac`]): answers device-initiated
    /// commands, applies answers to pending requests (the current state changes only for
    /// what the device accepted), times out lost requests, records the ADR history and runs
    /// ADR. Answers are queued for [`DeviceMac::next_commands`].
    pub fn handle_uplink(&mut self, ctx: &MacContext<'_>, up: &UplinkMac<'_>) -> UplinkMacOutcome {
        self.refresh_desired(ctx);
        let mut out = UplinkMacOutcome::default();
        // Answers to an earlier uplink could only go in its receive windows.
        self.answers.clear();
        // A retransmission of the last frame (same FCnt, NbTrans or confirmed retry) carries
        // the same FOpts: it neither counts against pending requests nor as a new uplink.
        let repeat = self.adr_history.last().is_some_and(|r| r.f_cnt == up.f_cnt);
        self.observe_data_rate(up);
        if !repeat {
            // Counted first, so that the uplink carrying DevStatusAns leaves the count at 0.
            self.uplinks_since_dev_status = self.uplinks_since_dev_status.saturating_add(1);
        }

        let mut i = 0;
        while i < up.commands.len() {
            i += self.handle_command(ctx, up, i, &mut out).max(1);
        }

        if repeat {
            // Answers of the first copy were applied already.
            out.events
                .retain(|e| !e.rejected.contains(&Rejection::Unexpected));
        } else {
            self.time_out_pending(ctx, &mut out);
        }
        self.record_history(up);
        self.run_adr(ctx, up, &mut out);

        if !self.answers.is_empty() {
            out.downlink_reasons.push("answer");
        }
        if up.adr_ack_req {
            // 1.0.4 §4.3.1.1: the device needs any downlink within ADR_ACK_DELAY uplinks.
            out.downlink_reasons.push("adr_ack_req");
        }
        out.downlink_required = !out.downlink_reasons.is_empty();
        out
    }

    /// Track the data rate the device really uses; a drop the NS did not command while ADR
    /// is on is the device's ADR back-off, which first restores the default TX power
    /// (1.0.4 §4.3.1.1).
    fn observe_data_rate(&mut self, up: &UplinkMac<'_>) {
        let cur = self.current_mut();
        let dr = u32::from(up.data_rate);
        if dr == cur.data_rate {
            return;
        }
        if up.adr && dr < cur.data_rate {
            cur.tx_power_index = 0;
        }
        cur.data_rate = dr;
        let power = cur.tx_power_index;
        // What the device does on its own is what the NS wants until ADR decides otherwise.
        let d = self.desired_mut();
        d.data_rate = dr;
        d.tx_power_index = power;
        // The SNR seen at another data rate says nothing about this one.
        self.adr_history.clear();
    }

    fn queue_answer(
        &mut self,
        answer: MacCommand,
        request: MacCommand,
        out: &mut UplinkMacOutcome,
    ) {
        if answer.encode(&mut self.answers).is_ok() {
            out.events.push(MacEvent {
                command: answer,
                request: Some(request),
                rejected: Vec::new(),
            });
        }
    }

    /// Handle `up.commands[i]`; returns how many commands it consumed (a LinkADRAns block
    /// consumes several).
    fn handle_command(
        &mut self,
        ctx: &MacContext<'_>,
        up: &UplinkMac<'_>,
        i: usize,
        out: &mut UplinkMacOutcome,
    ) -> usize {
        use MacCommand as M;
        let cmd = up.commands[i];
        let event = |rejected: Vec<Rejection>, request: Option<MacCommand>| MacEvent {
            command: cmd,
            request,
            rejected,
        };
        match cmd {
            // 1.0.4 §5.2: margin above the demodulation floor of the best reception and the
            // number of gateways.
            M::LinkCheckReq => {
                out.events.push(event(Vec::new(), None));
                let snr = up.max_snr().unwrap_or(0.0);
                let floor = ctx
                    .plan
                    .params()
                    .data_rate(up.data_rate)
                    .and_then(|d| adr::required_snr_db(&d))
                    .unwrap_or(0.0);
                let margin = (snr - floor).floor().clamp(0.0, 254.0) as u8;
                let gw_cnt = up.gateways.len().min(255) as u8;
                self.queue_answer(M::LinkCheckAns(LinkCheckAns { margin, gw_cnt }), cmd, out);
            }
            // 1.0.4 §5.9 (DeviceTimeReq): GPS time at the end of the uplink.
            M::DeviceTimeReq => {
                out.events.push(event(Vec::new(), None));
                let t = up.gps_time.unwrap_or_else(|| gps_time(up.received_at));
                // GPS seconds are sent modulo 2^32.
                let t = std::time::Duration::new(t.as_secs() % (1 << 32), t.subsec_nanos());
                if let Some(ans) = DeviceTimeAns::from_duration(t) {
                    self.queue_answer(M::DeviceTimeAns(ans), cmd, out);
                }
            }
            // 1.1 §5.1: ResetInd is for ABP devices; the network resets the MAC layer to
            // its defaults and confirms.
            M::ResetInd(ind) => {
                if !self.is_1_1() {
                    out.events.push(event(
                        vec![Rejection::NotAllowed("ResetInd exists from LoRaWAN 1.1 on")],
                        None,
                    ));
                } else if self.otaa {
                    out.events.push(event(
                        vec![Rejection::NotAllowed("ResetInd is for ABP devices only")],
                        None,
                    ));
                } else {
                    out.events.push(event(Vec::new(), None));
                    self.reset_to_boot(ctx);
                    out.reset = true;
                    let minor = ind.minor_version.min(SERVER_MINOR);
                    self.queue_answer(
                        M::ResetConf(ResetConf {
                            minor_version: minor,
                        }),
                        cmd,
                        out,
                    );
                }
            }
            // 1.1 §5.10: an OTAA device confirms its new security context; answered each
            // time (the device repeats it until it gets RekeyConf).
            M::RekeyInd(ind) => {
                if !self.is_1_1() || !self.otaa {
                    out.events.push(event(
                        vec![Rejection::NotAllowed(
                            "RekeyInd is for LoRaWAN 1.1 OTAA devices only",
                        )],
                        None,
                    ));
                } else {
                    out.events.push(event(Vec::new(), None));
                    out.rekey = true;
                    let minor = ind.minor_version.min(SERVER_MINOR);
                    self.queue_answer(
                        M::RekeyConf(RekeyConf {
                            minor_version: minor,
                        }),
                        cmd,
                        out,
                    );
                }
            }
            // 1.1 §5.14: the device switched class; the network confirms it.
            M::DeviceModeInd(ind) => {
                if !self.is_1_1() {
                    out.events.push(event(
                        vec![Rejection::NotAllowed(
                            "DeviceModeInd exists from LoRaWAN 1.1 on",
                        )],
                        None,
                    ));
                } else {
                    out.events.push(event(Vec::new(), None));
                    let class = match ind.class {
                        DeviceModeClass::A => DeviceClass::ClassA,
                        DeviceModeClass::C => DeviceClass::ClassC,
                    };
                    if self.current().class() != class {
                        out.class_changed = Some(class);
                    }
                    self.current_mut().device_class = class as i32;
                    self.queue_answer(
                        M::DeviceModeConf(DeviceModeConf { class: ind.class }),
                        cmd,
                        out,
                    );
                }
            }
            // Class B (1.0.4 §13.1): the device announces its ping slot periodicity.
            M::PingSlotInfoReq(req) => {
                out.events.push(event(Vec::new(), None));
                self.current_mut().ping_slot_periodicity = Some(req.periodicity.into());
                self.queue_answer(M::PingSlotInfoAns, cmd, out);
            }
            M::BeaconTimingReq => {
                out.events.push(event(
                    vec![Rejection::NotAllowed(
                        "BeaconTimingReq is deprecated since LoRaWAN 1.0.3",
                    )],
                    None,
                ));
            }
            M::LinkADRAns(ans) => {
                // 1.0.4 §5.3: a block of n LinkADRReq is answered by n identical LinkADRAns
                // (older devices may send one); they all refer to the oldest block.
                let n_ans = up.commands[i..]
                    .iter()
                    .take_while(|c| matches!(c, M::LinkADRAns(_)))
                    .count();
                let Some(pos) = self.pending.iter().position(|p| p.cid() == 0x03) else {
                    out.events.push(event(vec![Rejection::Unexpected], None));
                    return 1;
                };
                let p = self.pending.remove(pos);
                let reqs: Vec<LinkADRReq> = p
                    .decode_commands()
                    .into_iter()
                    .filter_map(|c| match c {
                        M::LinkADRReq(r) => Some(r),
                        _ => None,
                    })
                    .collect();
                let consumed = n_ans.min(reqs.len().max(1));
                let rejected = self.apply_link_adr(ctx, &reqs, ans);
                self.reset_timeouts(0x03);
                out.events
                    .push(event(rejected, reqs.last().copied().map(M::LinkADRReq)));
                return consumed;
            }
            M::RXParamSetupAns(ans) => {
                // Sticky (1.0.2+ and 1.1 §5.4): repeated until a downlink arrives.
                out.downlink_reasons.push("sticky_answer");
                let Some(req) = self.take_pending(0x05) else {
                    return 1;
                };
                let M::RXParamSetupReq(r) = req else { return 1 };
                let mut rejected = Vec::new();
                for (ok, field) in [
                    (ans.rx1_dr_offset_ack, "rx1_dr_offset"),
                    (ans.rx2_data_rate_ack, "rx2_data_rate"),
                    (ans.channel_ack, "frequency"),
                ] {
                    if !ok {
                        rejected.push(Rejection::Nack(field));
                    }
                }
                // 1.0.4 §5.4: any NACK means the device kept all of its previous parameters.
                if rejected.is_empty() {
                    let c = self.current_mut();
                    c.rx1_dr_offset = r.rx1_dr_offset.into();
                    c.rx2_data_rate = r.rx2_data_rate.into();
                    c.rx2_frequency = r.frequency;
                } else {
                    self.remember_rejected(&req);
                }
                out.events.push(event(rejected, Some(req)));
            }
            M::DevStatusAns(ans) => {
                let Some(req) = self.take_pending(0x06) else {
                    out.events.push(event(vec![Rejection::Unexpected], None));
                    return 1;
                };
                self.battery = Some(ans.battery.into());
                self.margin = Some(ans.margin.into());
                self.uplinks_since_dev_status = 0;
                self.last_dev_status_at_ms = unix_ms(up.received_at);
                out.dev_status = Some(ans);
                out.events.push(event(Vec::new(), Some(req)));
            }
            M::NewChannelAns(ans) => {
                let Some(req) = self.take_pending(0x07) else {
                    out.events.push(event(vec![Rejection::Unexpected], None));
                    return 1;
                };
                let M::NewChannelReq(r) = req else { return 1 };
                let mut rejected = Vec::new();
                if !ans.data_rate_range_ok {
                    rejected.push(Rejection::Nack("data_rate_range"));
                }
                if !ans.channel_frequency_ok {
                    rejected.push(Rejection::Nack("frequency"));
                }
                let idx = usize::from(r.ch_index);
                if rejected.is_empty() {
                    // 1.0.4 §5.6: a created channel is enabled; frequency 0 removes it.
                    let c = self.current_mut();
                    if c.channels.len() <= idx {
                        c.channels.resize(idx + 1, ChannelParams::default());
                    }
                    c.channels[idx] = ChannelParams {
                        frequency: r.frequency,
                        min_dr: r.min_dr.into(),
                        max_dr: r.max_dr.into(),
                        dl_frequency: 0,
                    };
                    let mut m = c.mask();
                    m.set(idx, r.frequency != 0);
                    c.set_mask(m);
                } else {
                    self.remember_rejected(&req);
                }
                out.events.push(event(rejected, Some(req)));
            }
            M::DlChannelAns(ans) => {
                out.downlink_reasons.push("sticky_answer");
                let Some(req) = self.take_pending(0x0A) else {
                    return 1;
                };
                let M::DlChannelReq(r) = req else { return 1 };
                let mut rejected = Vec::new();
                if !ans.uplink_frequency_exists {
                    rejected.push(Rejection::Nack("uplink_frequency"));
                }
                if !ans.channel_frequency_ok {
                    rejected.push(Rejection::Nack("frequency"));
                }
                let idx = usize::from(r.ch_index);
                if rejected.is_empty() {
                    if let Some(ch) = self.current_mut().channels.get_mut(idx) {
                        ch.dl_frequency = r.frequency;
                    }
                } else {
                    self.remember_rejected(&req);
                }
                out.events.push(event(rejected, Some(req)));
            }
            M::RXTimingSetupAns => {
                out.downlink_reasons.push("sticky_answer");
                let Some(req) = self.take_pending(0x08) else {
                    return 1;
                };
                if let M::RXTimingSetupReq(r) = req {
                    // 1.0.4 §5.7: Del 0 means 1 s.
                    self.current_mut().rx1_delay = u32::from(r.delay.max(1));
                }
                out.events.push(event(Vec::new(), Some(req)));
            }
            M::TxParamSetupAns => {
                let Some(req) = self.take_pending(0x09) else {
                    out.events.push(event(vec![Rejection::Unexpected], None));
                    return 1;
                };
                if let M::TxParamSetupReq(r) = req {
                    let c = self.current_mut();
                    c.uplink_dwell_time = r.uplink_dwell_time;
                    c.downlink_dwell_time = r.downlink_dwell_time;
                    c.max_eirp_index = r.max_eirp.into();
                }
                out.events.push(event(Vec::new(), Some(req)));
            }
            M::DutyCycleAns => {
                let Some(req) = self.take_pending(0x04) else {
                    out.events.push(event(vec![Rejection::Unexpected], None));
                    return 1;
                };
                if let M::DutyCycleReq(r) = req {
                    self.current_mut().max_duty_cycle = r.max_duty_cycle.into();
                }
                out.events.push(event(Vec::new(), Some(req)));
            }
            M::ADRParamSetupAns => {
                let Some(req) = self.take_pending(0x0C) else {
                    out.events.push(event(vec![Rejection::Unexpected], None));
                    return 1;
                };
                if let M::ADRParamSetupReq(r) = req {
                    let c = self.current_mut();
                    c.adr_ack_limit_exp = r.limit_exp.into();
                    c.adr_ack_delay_exp = r.delay_exp.into();
                }
                out.events.push(event(Vec::new(), Some(req)));
            }
            M::RejoinParamSetupAns(ans) => {
                let Some(req) = self.take_pending(0x0F) else {
                    out.events.push(event(vec![Rejection::Unexpected], None));
                    return 1;
                };
                let mut rejected = Vec::new();
                if let M::RejoinParamSetupReq(r) = req {
                    // 1.1 §5.13: the count limit is always accepted; TimeOK says whether the
                    // time limit is.
                    self.current_mut().rejoin_max_count_n = Some(r.max_count_n.into());
                    if ans.time_ok {
                        self.current_mut().rejoin_max_time_n = Some(r.max_time_n.into());
                    } else {
                        rejected.push(Rejection::Nack("max_time_n"));
                        self.remember_rejected(&req);
                    }
                }
                out.events.push(event(rejected, Some(req)));
            }
            M::PingSlotChannelAns(ans) => {
                let Some(req) = self.take_pending(0x11) else {
                    out.events.push(event(vec![Rejection::Unexpected], None));
                    return 1;
                };
                let mut rejected = Vec::new();
                if !ans.data_rate_ok {
                    rejected.push(Rejection::Nack("data_rate"));
                }
                if !ans.channel_frequency_ok {
                    rejected.push(Rejection::Nack("frequency"));
                }
                if let M::PingSlotChannelReq(r) = req {
                    if rejected.is_empty() {
                        let c = self.current_mut();
                        c.ping_slot_frequency = r.frequency;
                        c.ping_slot_data_rate = r.data_rate.into();
                    } else {
                        self.remember_rejected(&req);
                    }
                }
                out.events.push(event(rejected, Some(req)));
            }
            M::BeaconFreqAns(ans) => {
                let Some(req) = self.take_pending(0x13) else {
                    out.events.push(event(vec![Rejection::Unexpected], None));
                    return 1;
                };
                let rejected = if ans.beacon_frequency_ok {
                    Vec::new()
                } else {
                    vec![Rejection::Nack("frequency")]
                };
                out.events.push(event(rejected, Some(req)));
            }
            // Downlink-only commands cannot arrive on the uplink (the decoder is
            // direction-aware); count them if a caller passes one anyway.
            _ => {
                out.events.push(event(
                    vec![Rejection::NotAllowed("downlink command in an uplink")],
                    None,
                ));
            }
        }
        1
    }

    /// Remove and return the oldest pending request with this CID.
    fn take_pending(&mut self, cid: u8) -> Option<MacCommand> {
        let pos = self.pending.iter().position(|p| p.cid() == cid)?;
        let p = self.pending.remove(pos);
        self.reset_timeouts(cid);
        p.decode_commands().into_iter().next()
    }

    fn reset_timeouts(&mut self, cid: u8) {
        self.timeouts.retain(|t| t.cid != u32::from(cid));
    }

    /// Apply a LinkADRAns to the block it answers. 1.0.4 §5.3 / 1.1 §5.3: if any of the
    /// three ACK bits is 0 the device kept its previous state entirely, so the current state
    /// changes only when all are set. Rejected values are remembered so that the NS stops
    /// asking for them.
    fn apply_link_adr(
        &mut self,
        ctx: &MacContext<'_>,
        reqs: &[LinkADRReq],
        ans: lorawan::mac::LinkADRAns,
    ) -> Vec<Rejection> {
        let Some(last) = reqs.last().copied() else {
            return vec![Rejection::Unexpected];
        };
        let params = ctx.plan.params();
        let cur = self.current().clone();
        let mut rejected = Vec::new();
        if !ans.data_rate_ack {
            rejected.push(Rejection::Nack("data_rate"));
            if last.data_rate != 15 && !self.rejected_data_rates.contains(&last.data_rate.into()) {
                self.rejected_data_rates.push(last.data_rate.into());
            }
            self.desired_mut().data_rate = cur.data_rate;
        }
        if !ans.power_ack {
            rejected.push(Rejection::Nack("tx_power"));
            if last.tx_power != 15 && !self.rejected_tx_powers.contains(&last.tx_power.into()) {
                self.rejected_tx_powers.push(last.tx_power.into());
            }
            self.desired_mut().tx_power_index = cur.tx_power_index;
        }
        if !ans.channel_mask_ack {
            rejected.push(Rejection::Nack("channel_mask"));
            let blocks: Vec<ChMaskBlock> = reqs
                .iter()
                .map(|r| ChMaskBlock::new(r.ch_mask, r.ch_mask_cntl))
                .collect();
            if let Ok(m) = params.apply_ch_mask(cur.mask(), cur.defined(params), &blocks) {
                let b = crate::state::mask_to_bytes(m);
                if m != cur.mask() && !self.rejected_ch_masks.contains(&b) {
                    self.rejected_ch_masks.push(b);
                }
            }
        }
        if !rejected.is_empty() {
            return rejected;
        }
        let blocks: Vec<ChMaskBlock> = reqs
            .iter()
            .map(|r| ChMaskBlock::new(r.ch_mask, r.ch_mask_cntl))
            .collect();
        let mask = params
            .apply_ch_mask(cur.mask(), cur.defined(params), &blocks)
            .unwrap_or_else(|_| cur.mask());
        let keep_allowed = self.at_least(MacVersion::MacV104);
        let c = self.current_mut();
        let before = (c.data_rate, c.tx_power_index);
        c.set_mask(mask);
        if !(keep_allowed && last.data_rate == 15) {
            c.data_rate = last.data_rate.into();
        }
        if !(keep_allowed && last.tx_power == 15) {
            c.tx_power_index = last.tx_power.into();
        }
        // NbTrans 0: the default (1) in 1.0.x; keep the current value in 1.0.4/1.1.
        if last.nb_trans != 0 {
            c.nb_trans = last.nb_trans.into();
        } else if !keep_allowed {
            c.nb_trans = 1;
        }
        if before != (c.data_rate, c.tx_power_index) {
            self.adr_history.clear();
        }
        rejected
    }

    /// Count the uplink against every request still pending; give up those that stayed
    /// unanswered for `pending_timeout_uplinks` uplinks (they are sent again later, up to
    /// `max_attempts` times).
    fn time_out_pending(&mut self, ctx: &MacContext<'_>, out: &mut UplinkMacOutcome) {
        let limit = ctx.config.pending_timeout_uplinks.max(1);
        let mut lost = Vec::new();
        self.pending.retain_mut(|p| {
            p.uplinks_since += 1;
            if p.uplinks_since >= limit {
                lost.push(p.cid());
                false
            } else {
                true
            }
        });
        for cid in lost {
            let count = match self.timeouts.iter_mut().find(|t| t.cid == u32::from(cid)) {
                Some(t) => {
                    t.count += 1;
                    t.count
                }
                None => {
                    self.timeouts.push(crate::state::TimeoutCount {
                        cid: cid.into(),
                        count: 1,
                    });
                    1
                }
            };
            if ctx.config.max_attempts > 0 && count >= ctx.config.max_attempts {
                out.timed_out.push(crate::state::pending_name(cid));
            }
        }
    }

    fn record_history(&mut self, up: &UplinkMac<'_>) {
        let Some(snr) = up.max_snr() else { return };
        let tx_power_index = self.current().tx_power_index;
        if let Some(last) = self.adr_history.last_mut()
            && last.f_cnt == up.f_cnt
        {
            // A repetition (NbTrans > 1) of the same frame: keep the best reception.
            last.max_snr = last.max_snr.max(snr);
            last.gateway_count = last.gateway_count.max(up.gateways.len() as u32);
            return;
        }
        self.adr_history.push(AdrRecord {
            f_cnt: up.f_cnt,
            max_snr: snr,
            gateway_count: up.gateways.len() as u32,
            data_rate: up.data_rate.into(),
            tx_power_index,
        });
        let n = self.adr_history.len();
        if n > adr::HISTORY_LEN {
            self.adr_history.drain(..n - adr::HISTORY_LEN);
        }
    }

    fn run_adr(&mut self, ctx: &MacContext<'_>, up: &UplinkMac<'_>, out: &mut UplinkMacOutcome) {
        let enabled = ctx
            .settings
            .and_then(|s| s.adr_enabled)
            .unwrap_or(ctx.config.adr_enabled);
        if !enabled || !up.adr || self.is_pending(0x03) {
            return;
        }
        if self.adr_history.len() < adr::HISTORY_LEN && !up.adr_ack_req {
            return;
        }
        let params = ctx.plan.params();
        let margin_db = ctx
            .settings
            .and_then(|s| s.adr_margin)
            .unwrap_or(ctx.config.adr_margin);
        let d = self.desired();
        let cur = self.current();
        // The channels the device will have enabled once the desired mask is applied.
        let mask = ChannelMask(d.mask().0 & (cur.defined(params).0 | d.defined(params).0));
        // Walk the set bits only (ChannelMask::iter tests all 128).
        let channels = std::iter::successors(Some(mask.0).filter(|m| *m != 0), |m| {
            let rest = m & (m - 1);
            (rest != 0).then_some(rest)
        })
        .map(|m| m.trailing_zeros() as usize)
        .filter_map(|i| d.channel(params, i).or_else(|| cur.channel(params, i)));
        let Some(max_data_rate) = adr::max_adr_data_rate(params, channels) else {
            return;
        };
        let max_tx_power_index = params.tx_power_offsets_db.len().saturating_sub(1) as u8;
        let input = AdrInput {
            params,
            history: &self.adr_history,
            data_rate: cur.data_rate as u8,
            tx_power_index: cur.tx_power_index as u8,
            margin_db,
            max_data_rate,
            max_tx_power_index,
            rejected_data_rates: &self.rejected_data_rates,
            rejected_tx_powers: &self.rejected_tx_powers,
            adr_ack_req: up.adr_ack_req,
        };
        let Some(decision) = adr::decide(&input) else {
            return;
        };
        let d = self.desired();
        let changed = (d.data_rate, d.tx_power_index, d.nb_trans)
            != (
                decision.data_rate.into(),
                decision.tx_power_index.into(),
                decision.nb_trans.into(),
            );
        let dm = self.desired_mut();
        dm.data_rate = decision.data_rate.into();
        dm.tx_power_index = decision.tx_power_index.into();
        dm.nb_trans = decision.nb_trans.into();
        if changed {
            out.adr = Some(decision);
        }
    }
}
