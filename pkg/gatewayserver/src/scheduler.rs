//! Downlink timing for one gateway: receive windows, schedule-ahead margin, duty cycle,
//! dwell time, EIRP, collisions and the concentrator clock. Pure: the caller passes the
//! current server time, so every decision is reproducible in tests.
//!
//! Times are µs since the Unix epoch ("server time", `i64`) or the concentrator's 32-bit µs
//! counter (`tmst`, wraps about every 71.6 minutes). Emissions are kept in server time, so
//! collision and duty-cycle checks never see the counter wrap.

use std::collections::VecDeque;
use std::time::Duration;

use band::{DataRate, Direction, FrequencyPlan};
use tern_api::v3::ScheduleError;

/// Seconds between the Unix epoch and the GPS epoch (1980-01-06T00:00:00Z).
const GPS_EPOCH_UNIX_S: i64 = 315_964_800;
/// GPS − UTC in seconds (leap seconds since 1980; unchanged since 2017).
const GPS_LEAP_S: i64 = 18;
/// The rolling duty-cycle window.
const DUTY_CYCLE_WINDOW_US: i64 = 3_600_000_000;
/// RTT samples kept per gateway.
const RTT_SAMPLES: usize = 20;
/// Longer than any LoRaWAN frame's time on air (SF12BW125, 255 bytes: about 9.5 s), so
/// pruning by start time never drops an emission that still ends inside the window.
const MAX_TOA_US: i64 = 15_000_000;

/// Server time (µs since the Unix epoch) → GPS time (µs since the GPS epoch).
pub fn unix_to_gps_us(unix_us: i64) -> i64 {
    unix_us - GPS_EPOCH_UNIX_S * 1_000_000 + GPS_LEAP_S * 1_000_000
}

/// GPS time (µs since the GPS epoch) → server time (µs since the Unix epoch).
pub fn gps_to_unix_us(gps_us: i64) -> i64 {
    gps_us + GPS_EPOCH_UNIX_S * 1_000_000 - GPS_LEAP_S * 1_000_000
}

/// Limits of one gateway's scheduler.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SchedulerConfig {
    /// Smallest lead time; half the largest recent RTT is added.
    pub min_margin: Duration,
    /// Largest lead time the gateway can buffer.
    pub max_ahead: Duration,
}

/// The radio parameters of one window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WindowParams {
    /// Frequency in Hz.
    pub frequency: u64,
    /// Modulation.
    pub data_rate: DataRate,
}

/// The uplink a class A downlink answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UplinkTiming {
    /// Concentrator counter at the end of the uplink.
    pub tmst: u32,
    /// When the GS received it.
    pub server_time_us: i64,
}

/// When to transmit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Timing {
    /// Class A: RX1 `rx1_delay` after the uplink, RX2 one second later.
    ClassA {
        /// The uplink.
        uplink: UplinkTiming,
        /// RX1 delay.
        rx1_delay: Duration,
    },
    /// Class C: as soon as possible, on the RX2 parameters.
    Immediate,
    /// At a given time (class B, or class C at a time), server time µs; needs GPS time.
    Absolute {
        /// When.
        time_us: i64,
    },
}

/// What to schedule.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The current server time.
    pub now_us: i64,
    /// When.
    pub timing: Timing,
    /// RX1 parameters (class A only).
    pub rx1: Option<WindowParams>,
    /// RX2 parameters (class A RX2, class B/C).
    pub rx2: Option<WindowParams>,
    /// PHYPayload length.
    pub payload_len: usize,
    /// The frequency plan whose limits apply.
    pub plan: &'a FrequencyPlan,
    /// Antenna gain in dBi, subtracted from the EIRP.
    pub antenna_gain_db: f32,
    /// Whether to enforce the duty cycle.
    pub enforce_duty_cycle: bool,
    /// Whether the gateway can transmit at a GPS time.
    pub gps_available: bool,
}

/// A successful schedule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scheduled {
    /// 1 or 2 for class A, 0 otherwise.
    pub rx_window: u32,
    /// Server time of the start of transmission.
    pub start_us: i64,
    /// Concentrator counter at which to transmit (None: immediately or at a GPS time).
    pub tmst: Option<u32>,
    /// GPS time at which to transmit, for absolute timing.
    pub gps_time_us: Option<i64>,
    /// Frequency in Hz.
    pub frequency: u64,
    /// Modulation.
    pub data_rate: DataRate,
    /// Data rate index in the plan's region.
    pub dr_index: u8,
    /// EIRP in dBm.
    pub eirp_dbm: f32,
    /// Conducted power in dBm (EIRP minus antenna gain).
    pub tx_power_dbm: f32,
    /// Time on air.
    pub time_on_air: Duration,
}

/// Why one window was not possible.
#[derive(Debug, Clone, PartialEq)]
pub enum Reject {
    /// The window was not requested.
    NotRequested,
    /// Starts within the margin (or in the past).
    TooLate {
        /// µs from now until the window.
        lead_us: i64,
        /// The margin needed.
        margin_us: i64,
    },
    /// Starts further ahead than the gateway buffers.
    TooEarly {
        /// µs from now until the window.
        lead_us: i64,
    },
    /// The sub-band's duty cycle would be exceeded.
    DutyCycle {
        /// Air time used in the last hour in the sub-band, µs.
        used_us: i64,
        /// The limit, µs per hour.
        limit_us: i64,
    },
    /// Overlaps a downlink already scheduled on the gateway.
    Conflict {
        /// Start of the other downlink, server time.
        other_start_us: i64,
        /// End of the other downlink, server time.
        other_end_us: i64,
    },
    /// The frequency is outside the region or its sub-bands.
    Frequency(u64),
    /// The data rate is not a downlink data rate of the region.
    DataRate(DataRate),
    /// The payload is too long for the data rate or the dwell time.
    PayloadTooLong {
        /// The payload length.
        len: usize,
        /// The limit (bytes), or 0 when the dwell time is the limit.
        max: usize,
    },
    /// Absolute time without GPS.
    NoTimeSync,
}

impl Reject {
    /// The API code.
    pub fn code(&self) -> ScheduleError {
        match self {
            Self::NotRequested => ScheduleError::NotAttempted,
            Self::TooLate { .. } => ScheduleError::TooLate,
            Self::TooEarly { .. } => ScheduleError::TooEarly,
            Self::DutyCycle { .. } => ScheduleError::DutyCycle,
            Self::Conflict { .. } => ScheduleError::Conflict,
            Self::Frequency(_) => ScheduleError::Frequency,
            Self::DataRate(_) => ScheduleError::DataRate,
            Self::PayloadTooLong { .. } => ScheduleError::PayloadTooLong,
            Self::NoTimeSync => ScheduleError::NoTimeSync,
        }
    }

    /// A sentence with the numbers.
    pub fn message(&self) -> String {
        match self {
            Self::NotRequested => "window not requested".into(),
            Self::TooLate { lead_us, margin_us } => format!(
                "too late: the window starts in {} ms, the gateway needs {} ms",
                lead_us / 1000,
                margin_us / 1000
            ),
            Self::TooEarly { lead_us } => format!(
                "too early: the window starts in {} ms, beyond what the gateway buffers",
                lead_us / 1000
            ),
            Self::DutyCycle { used_us, limit_us } => format!(
                "duty cycle: {} ms of {} ms air time per hour used in the sub-band",
                used_us / 1000,
                limit_us / 1000
            ),
            Self::Conflict { other_start_us, .. } => {
                format!("conflict with a downlink scheduled at {other_start_us} µs (server time)")
            }
            Self::Frequency(f) => format!("frequency {f} Hz is not allowed by the plan"),
            Self::DataRate(dr) => format!("data rate {dr} is not a downlink data rate of the plan"),
            Self::PayloadTooLong { len, max: 0 } => {
                format!("payload of {len} bytes exceeds the 400 ms dwell time")
            }
            Self::PayloadTooLong { len, max } => {
                format!("payload of {len} bytes exceeds {max} bytes at this data rate")
            }
            Self::NoTimeSync => "the gateway has no GPS time to transmit at a given time".into(),
        }
    }
}

/// Why neither window worked.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    /// RX1 (or the single class B/C attempt).
    pub rx1: Reject,
    /// RX2 (class A only).
    pub rx2: Reject,
}

/// The concentrator ↔ server time pairing of the last uplink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockSync {
    /// Concentrator counter.
    pub tmst: u32,
    /// Basics Station xtime (0 for Semtech UDP).
    pub xtime: u64,
    /// Server time.
    pub server_us: i64,
}

impl ClockSync {
    /// The concentrator counter at server time `server_us` (wraps at 2³²).
    pub fn tmst_at(&self, server_us: i64) -> u32 {
        self.tmst.wrapping_add((server_us - self.server_us) as u32)
    }

    /// The Basics Station xtime at `server_us` (session bits kept, 48-bit counter advanced).
    pub fn xtime_at(&self, server_us: i64) -> u64 {
        const MASK: u64 = (1 << 48) - 1;
        let counter = (self.xtime & MASK).wrapping_add((server_us - self.server_us) as u64) & MASK;
        (self.xtime & !MASK) | counter
    }
}

#[derive(Debug, Clone, Copy)]
struct Emission {
    start_us: i64,
    end_us: i64,
    sub_band: Option<u32>,
}

/// One gateway's scheduler state.
#[derive(Debug, Clone)]
pub struct GatewayScheduler {
    config: SchedulerConfig,
    clock: Option<ClockSync>,
    emissions: VecDeque<Emission>,
    rtts: VecDeque<Duration>,
}

impl GatewayScheduler {
    /// A scheduler with nothing scheduled.
    pub fn new(config: SchedulerConfig) -> Self {
        Self {
            config,
            clock: None,
            emissions: VecDeque::new(),
            rtts: VecDeque::new(),
        }
    }

    /// Pairs the concentrator clock with server time (on every uplink).
    pub fn sync_clock(&mut self, sync: ClockSync) {
        self.clock = Some(sync);
    }

    /// The last clock pairing.
    pub fn clock(&self) -> Option<ClockSync> {
        self.clock
    }

    /// Records a round-trip time.
    pub fn record_rtt(&mut self, rtt: Duration) {
        if self.rtts.len() == RTT_SAMPLES {
            self.rtts.pop_front();
        }
        self.rtts.push_back(rtt);
    }

    /// (min, max, median, count) of the recent RTTs.
    pub fn rtt_stats(&self) -> Option<(Duration, Duration, Duration, usize)> {
        let mut v: Vec<Duration> = self.rtts.iter().copied().collect();
        v.sort_unstable();
        Some((*v.first()?, *v.last()?, v[v.len() / 2], v.len()))
    }

    /// The schedule-ahead margin: the configured minimum plus half the largest recent RTT
    /// (the time a packet takes to reach the gateway).
    pub fn margin_us(&self) -> i64 {
        let one_way = self.rtts.iter().max().copied().unwrap_or_default() / 2;
        (self.config.min_margin + one_way).as_micros() as i64
    }

    fn one_way_us(&self) -> i64 {
        self.rtts
            .iter()
            .max()
            .map_or(0, |d| (*d / 2).as_micros() as i64)
    }

    /// Picks the first feasible window and books it.
    pub fn schedule(&mut self, req: &Request<'_>) -> Result<Scheduled, Rejection> {
        self.prune(req.now_us);
        match req.timing {
            Timing::ClassA { uplink, rx1_delay } => {
                let delay = rx1_delay.as_micros() as i64;
                // The uplink ended before it reached us: by about the one-way latency.
                let base = uplink.server_time_us - self.one_way_us();
                let rx1 = match req.rx1 {
                    Some(p) => {
                        let tmst = uplink.tmst.wrapping_add(delay as u32);
                        match self.try_window(req, p, 1, base + delay, Some(tmst), None) {
                            Ok(s) => return Ok(self.book(s)),
                            Err(e) => e,
                        }
                    }
                    None => Reject::NotRequested,
                };
                let rx2 = match req.rx2 {
                    Some(p) => {
                        let d2 = delay + 1_000_000;
                        let tmst = uplink.tmst.wrapping_add(d2 as u32);
                        match self.try_window(req, p, 2, base + d2, Some(tmst), None) {
                            Ok(s) => return Ok(self.book(s)),
                            Err(e) => e,
                        }
                    }
                    None => Reject::NotRequested,
                };
                Err(Rejection { rx1, rx2 })
            }
            Timing::Immediate => {
                let Some(p) = req.rx2 else {
                    return Err(Rejection {
                        rx1: Reject::NotRequested,
                        rx2: Reject::NotRequested,
                    });
                };
                // As soon as possible: one margin from now, or right after whatever is
                // already scheduled then.
                let mut start = req.now_us + self.margin_us();
                let mut attempts = 0;
                loop {
                    // With a synced clock, time it on the counter so collisions are exact;
                    // without one, the gateway sends at once.
                    let tmst = self.clock.map(|c| c.tmst_at(start));
                    let r = self.try_window(req, p, 0, start, tmst, None);
                    match r {
                        Err(Reject::Conflict { other_end_us, .. })
                            if attempts < 16 && self.clock.is_some() =>
                        {
                            start = other_end_us;
                            attempts += 1;
                        }
                        r => return self.single(r),
                    }
                }
            }
            Timing::Absolute { time_us } => {
                let Some(p) = req.rx2 else {
                    return Err(Rejection {
                        rx1: Reject::NotRequested,
                        rx2: Reject::NotRequested,
                    });
                };
                if !req.gps_available {
                    return Err(Rejection {
                        rx1: Reject::NoTimeSync,
                        rx2: Reject::NotRequested,
                    });
                }
                let r = self.try_window(req, p, 0, time_us, None, Some(unix_to_gps_us(time_us)));
                self.single(r)
            }
        }
    }

    fn single(&mut self, r: Result<(Scheduled, Emission), Reject>) -> Result<Scheduled, Rejection> {
        match r {
            Ok(s) => Ok(self.book(s)),
            Err(rx1) => Err(Rejection {
                rx1,
                rx2: Reject::NotRequested,
            }),
        }
    }

    fn book(&mut self, (s, e): (Scheduled, Emission)) -> Scheduled {
        // Keep the queue ordered by start so pruning from the front stays correct.
        let at = self.emissions.partition_point(|x| x.start_us <= e.start_us);
        self.emissions.insert(at, e);
        s
    }

    /// Removes emissions older than the duty-cycle window.
    fn prune(&mut self, now_us: i64) {
        while self
            .emissions
            .front()
            .is_some_and(|e| e.start_us + MAX_TOA_US < now_us - DUTY_CYCLE_WINDOW_US)
        {
            self.emissions.pop_front();
        }
    }

    fn try_window(
        &self,
        req: &Request<'_>,
        p: WindowParams,
        rx_window: u32,
        start_us: i64,
        tmst: Option<u32>,
        gps_time_us: Option<i64>,
    ) -> Result<(Scheduled, Emission), Reject> {
        let params = req.plan.params();
        let freq = u32::try_from(p.frequency).map_err(|_| Reject::Frequency(p.frequency))?;
        if freq < params.min_frequency || freq > params.max_frequency {
            return Err(Reject::Frequency(p.frequency));
        }
        let sub_band = params.sub_bands.iter().position(|b| b.contains(freq));
        if sub_band.is_none() && !params.sub_bands.is_empty() {
            return Err(Reject::Frequency(p.frequency));
        }
        let dr_index = params
            .dr_index_for(&p.data_rate, Direction::Downlink)
            .ok_or(Reject::DataRate(p.data_rate))?;
        let toa = band::toa::time_on_air(&p.data_rate, req.payload_len, Direction::Downlink)
            .map_err(|_| Reject::DataRate(p.data_rate))?;
        if let Some(size) = params.max_payload_size(dr_index, req.plan.downlink_dwell_time, false) {
            // M is the MACPayload; the PHYPayload adds MHDR and MIC.
            let max = usize::from(size.m) + 5;
            if req.payload_len > max {
                return Err(Reject::PayloadTooLong {
                    len: req.payload_len,
                    max,
                });
            }
        }
        if req.plan.downlink_dwell_time && toa > band::MAX_DWELL_TIME {
            return Err(Reject::PayloadTooLong {
                len: req.payload_len,
                max: 0,
            });
        }
        let lead_us = start_us - req.now_us;
        let margin_us = self.margin_us();
        if lead_us < margin_us {
            return Err(Reject::TooLate { lead_us, margin_us });
        }
        if lead_us > self.config.max_ahead.as_micros() as i64 {
            return Err(Reject::TooEarly { lead_us });
        }
        let end_us = start_us + toa.as_micros() as i64;
        if let Some(other) = self
            .emissions
            .iter()
            .find(|e| e.start_us < end_us && start_us < e.end_us)
        {
            return Err(Reject::Conflict {
                other_start_us: other.start_us,
                other_end_us: other.end_us,
            });
        }
        let band = sub_band.map(|i| params.sub_bands[i]);
        if let (true, Some(band), Some(i)) = (req.enforce_duty_cycle, band, sub_band)
            && band.duty_cycle < 1.0
        {
            // Duty cycles are given as f32 fractions (0.01 is 0.00999…): round to parts per
            // million before scaling so 1 % is exactly 36 s per hour.
            let ppm = (f64::from(band.duty_cycle) * 1e6).round() as i64;
            let limit_us = ppm * (DUTY_CYCLE_WINDOW_US / 1_000_000);
            let used_us: i64 = self
                .emissions
                .iter()
                .filter(|e| {
                    e.sub_band == Some(i as u32) && e.end_us > start_us - DUTY_CYCLE_WINDOW_US
                })
                .map(|e| e.end_us - e.start_us)
                .sum();
            if used_us + toa.as_micros() as i64 > limit_us {
                return Err(Reject::DutyCycle { used_us, limit_us });
            }
        }
        let eirp = band.map_or(req.plan.max_eirp_dbm, |b| {
            b.max_eirp_dbm.min(req.plan.max_eirp_dbm)
        });
        let scheduled = Scheduled {
            rx_window,
            start_us,
            tmst,
            gps_time_us,
            frequency: p.frequency,
            data_rate: p.data_rate,
            dr_index,
            eirp_dbm: eirp,
            tx_power_dbm: eirp - req.antenna_gain_db,
            time_on_air: toa,
        };
        let emission = Emission {
            start_us,
            end_us,
            sub_band: sub_band.map(|i| i as u32),
        };
        Ok((scheduled, emission))
    }
}
