//! The downlink scheduler, EU868 and US915: window choice, too late / too early, duty
//! cycle, collisions, class C, and the 32-bit concentrator counter rollover.

use std::time::Duration;

use band::{DataRate, FrequencyPlan};
use tern_api::v3::ScheduleError;
use tern_gatewayserver::scheduler::{
    ClockSync, GatewayScheduler, Reject, Request, SchedulerConfig, Timing, UplinkTiming,
    WindowParams,
};

const T0: i64 = 1_700_000_000_000_000;
const MARGIN: Duration = Duration::from_millis(50);

fn scheduler() -> GatewayScheduler {
    GatewayScheduler::new(SchedulerConfig {
        min_margin: MARGIN,
        max_ahead: Duration::from_secs(30),
    })
}

fn eu() -> &'static FrequencyPlan {
    FrequencyPlan::by_id("EU_863_870").unwrap()
}

fn us() -> &'static FrequencyPlan {
    FrequencyPlan::by_id("US_902_928_FSB_2").unwrap()
}

fn w(frequency: u64, sf: u8, bw_hz: u32) -> Option<WindowParams> {
    Some(WindowParams {
        frequency,
        data_rate: DataRate::Lora { sf, bw_hz },
    })
}

fn class_a(
    plan: &'static FrequencyPlan,
    now_us: i64,
    tmst: u32,
    uplink_at: i64,
    rx1: Option<WindowParams>,
    rx2: Option<WindowParams>,
    len: usize,
) -> Request<'static> {
    Request {
        now_us,
        timing: Timing::ClassA {
            uplink: UplinkTiming {
                tmst,
                server_time_us: uplink_at,
            },
            rx1_delay: Duration::from_secs(1),
        },
        rx1,
        rx2,
        payload_len: len,
        plan,
        antenna_gain_db: 0.0,
        enforce_duty_cycle: true,
        gps_available: false,
    }
}

fn eu_a(now_us: i64, tmst: u32, uplink_at: i64) -> Request<'static> {
    class_a(
        eu(),
        now_us,
        tmst,
        uplink_at,
        w(868_100_000, 7, 125_000),
        w(869_525_000, 12, 125_000),
        20,
    )
}

#[test]
fn eu868_rx1_when_in_time() {
    let mut s = scheduler();
    let got = s.schedule(&eu_a(T0 + 100_000, 1_000_000, T0)).unwrap();
    assert_eq!(got.rx_window, 1);
    assert_eq!(got.tmst, Some(2_000_000));
    assert_eq!(got.start_us, T0 + 1_000_000);
    assert_eq!(got.frequency, 868_100_000);
    assert_eq!(got.dr_index, 5);
    // min(plan 16 dBm, sub-band 16.15 dBm).
    assert_eq!(got.eirp_dbm, 16.0);
}

#[test]
fn eu868_rx2_when_rx1_too_late() {
    let mut s = scheduler();
    // 990 ms after the uplink: RX1 is 10 ms away, less than the 50 ms margin.
    let got = s.schedule(&eu_a(T0 + 990_000, 1_000_000, T0)).unwrap();
    assert_eq!(got.rx_window, 2);
    assert_eq!(got.tmst, Some(3_000_000));
    assert_eq!(got.dr_index, 0);
    // The RX2 sub-band (869.4–869.65 MHz) allows more power, but not more than the plan.
    assert_eq!(got.eirp_dbm, 16.0);
}

#[test]
fn eu868_both_too_late_and_too_early() {
    let mut s = scheduler();
    let err = s
        .schedule(&eu_a(T0 + 2_500_000, 1_000_000, T0))
        .unwrap_err();
    assert!(matches!(err.rx1, Reject::TooLate { .. }), "{err:?}");
    assert!(matches!(err.rx2, Reject::TooLate { .. }), "{err:?}");
    assert_eq!(err.rx1.code(), ScheduleError::TooLate);

    let mut s = GatewayScheduler::new(SchedulerConfig {
        min_margin: MARGIN,
        max_ahead: Duration::from_millis(500),
    });
    let err = s.schedule(&eu_a(T0, 1_000_000, T0)).unwrap_err();
    assert!(matches!(err.rx1, Reject::TooEarly { .. }), "{err:?}");
    assert_eq!(err.rx2.code(), ScheduleError::TooEarly);
}

#[test]
fn measured_rtt_widens_the_margin() {
    let mut s = scheduler();
    // 600 ms round trips: 300 ms one way plus the 50 ms minimum. The uplink is also assumed
    // to have ended 300 ms before it reached the GS.
    s.record_rtt(Duration::from_millis(600));
    assert_eq!(s.margin_us(), 350_000);
    let mut rx1_only = eu_a(T0 + 400_000, 1_000_000, T0);
    rx1_only.rx2 = None;
    let err = s.schedule(&rx1_only).unwrap_err();
    // RX1 at T0 - 300 ms + 1 s = 300 ms from now < 350 ms.
    assert!(
        matches!(
            err.rx1,
            Reject::TooLate {
                lead_us: 300_000,
                margin_us: 350_000
            }
        ),
        "{err:?}"
    );
    // RX2 fits.
    let ok = s.schedule(&eu_a(T0 + 400_000, 1_000_000, T0)).unwrap();
    assert_eq!(ok.rx_window, 2);
}

#[test]
fn eu868_duty_cycle_exhausted_then_recovers() {
    let mut s = scheduler();
    // SF12 RX1 on 868.1 MHz: 1 % sub-band, 36 s of air time per hour.
    let req = |now: i64| {
        class_a(
            eu(),
            now,
            now as u32,
            now,
            w(868_100_000, 12, 125_000),
            None,
            51,
        )
    };
    let mut used = Duration::ZERO;
    let mut now = T0;
    let err = loop {
        match s.schedule(&req(now)) {
            Ok(got) => used += got.time_on_air,
            Err(e) => break e,
        }
        now += 10_000_000;
        assert!(used < Duration::from_secs(37), "never limited");
    };
    assert!(
        matches!(
            err.rx1,
            Reject::DutyCycle {
                limit_us: 36_000_000,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.rx2, Reject::NotRequested);
    assert!(
        used <= Duration::from_secs(36) && used > Duration::from_secs(33),
        "{used:?}"
    );
    // Other sub-bands are not affected: RX2 (10 %) still works.
    let mut both = req(now);
    both.rx2 = w(869_525_000, 12, 125_000);
    assert_eq!(s.schedule(&both).unwrap().rx_window, 2);
    // An hour later the budget is back.
    let later = now + 3_600_000_000 + 20_000_000;
    assert_eq!(s.schedule(&req(later)).unwrap().rx_window, 1);
    // Without enforcement (a region or gateway without duty cycle) nothing is limited.
    let mut free = scheduler();
    for i in 0..40 {
        let mut r = req(T0 + i * 10_000_000);
        r.enforce_duty_cycle = false;
        free.schedule(&r).unwrap();
    }
}

#[test]
fn collision_moves_to_rx2_then_fails() {
    let mut s = scheduler();
    // Two devices whose uplinks ended at the same time on the same gateway.
    assert_eq!(s.schedule(&eu_a(T0, 1_000_000, T0)).unwrap().rx_window, 1);
    assert_eq!(s.schedule(&eu_a(T0, 1_000_000, T0)).unwrap().rx_window, 2);
    let err = s.schedule(&eu_a(T0, 1_000_000, T0)).unwrap_err();
    assert!(
        matches!(err.rx1, Reject::Conflict { other_start_us, .. } if other_start_us == T0 + 1_000_000)
    );
    assert_eq!(err.rx2.code(), ScheduleError::Conflict);
    // 100 ms later RX1 no longer overlaps the first (SF7, 20 bytes: about 57 ms).
    assert_eq!(
        s.schedule(&eu_a(T0, 1_100_000, T0 + 100_000))
            .unwrap()
            .rx_window,
        1
    );
}

#[test]
fn class_c_immediate_on_rx2() {
    let mut s = scheduler();
    let req = |now| Request {
        now_us: now,
        timing: Timing::Immediate,
        rx1: None,
        rx2: w(869_525_000, 9, 125_000),
        payload_len: 12,
        plan: eu(),
        antenna_gain_db: 2.0,
        enforce_duty_cycle: true,
        gps_available: false,
    };
    // No uplink yet: no clock, the gateway sends at once.
    let got = s.schedule(&req(T0)).unwrap();
    assert_eq!((got.rx_window, got.tmst), (0, None));
    assert_eq!(got.tx_power_dbm, 14.0);
    // With a clock: timed on the counter, one margin ahead.
    s.sync_clock(ClockSync {
        tmst: 5_000_000,
        xtime: 0,
        server_us: T0 + 1_000_000,
    });
    let got = s.schedule(&req(T0 + 1_100_000)).unwrap();
    assert_eq!(got.tmst, Some(5_150_000));
    assert_eq!(got.start_us, T0 + 1_150_000);
    // As soon as possible means after what is already scheduled.
    let next = s.schedule(&req(T0 + 1_100_000)).unwrap();
    assert_eq!(
        next.start_us,
        got.start_us + got.time_on_air.as_micros() as i64
    );
    // Without RX2 parameters there is nothing to do.
    let mut r = req(T0 + 2_000_000);
    r.rx2 = None;
    assert_eq!(s.schedule(&r).unwrap_err().rx1, Reject::NotRequested);
}

#[test]
fn counter_rollover() {
    let mut s = scheduler();
    let tmst = u32::MAX - 199_999; // 200 ms before the counter wraps
    let got = s.schedule(&eu_a(T0 + 100_000, tmst, T0)).unwrap();
    assert_eq!(got.tmst, Some(800_000));
    // A second downlink on the far side of the wrap still collides in server time.
    let err = s.schedule(&class_a(
        eu(),
        T0 + 100_000,
        tmst,
        T0,
        w(868_100_000, 7, 125_000),
        None,
        20,
    ));
    assert!(matches!(err.unwrap_err().rx1, Reject::Conflict { .. }));
    // Class C across the wrap.
    s.sync_clock(ClockSync {
        tmst: u32::MAX - 10_000,
        xtime: 0,
        server_us: T0,
    });
    let got = s
        .schedule(&Request {
            now_us: T0 + 5_000_000,
            timing: Timing::Immediate,
            rx1: None,
            rx2: w(869_525_000, 12, 125_000),
            payload_len: 12,
            plan: eu(),
            antenna_gain_db: 0.0,
            enforce_duty_cycle: true,
            gps_available: false,
        })
        .unwrap();
    assert_eq!(got.tmst, Some(5_050_000 - 10_001));
    // xtime keeps its session bits and advances 48 bits.
    let c = ClockSync {
        tmst: 0,
        xtime: 0x0100_FFFF_FFFF_FFF0,
        server_us: T0,
    };
    assert_eq!(c.xtime_at(T0 + 0x20), 0x0100_0000_0000_0010);
}

#[test]
fn us915_rx1_rx2_power_and_limits() {
    let mut s = scheduler();
    // Uplink DR0 on 903.9 MHz → RX1 923.3 MHz SF10BW500 (DR10), RX2 923.3 MHz SF12BW500 (DR8).
    let mut req = class_a(
        us(),
        T0 + 100_000,
        1_000_000,
        T0,
        w(923_300_000, 10, 500_000),
        w(923_300_000, 12, 500_000),
        30,
    );
    req.antenna_gain_db = 3.0;
    let got = s.schedule(&req).unwrap();
    assert_eq!((got.rx_window, got.dr_index), (1, 10));
    assert_eq!((got.eirp_dbm, got.tx_power_dbm), (30.0, 27.0));
    // RX1 taken: RX2 at DR8.
    let got = s.schedule(&req).unwrap();
    assert_eq!((got.rx_window, got.dr_index), (2, 8));
    // DR8 carries at most 61 + 5 bytes.
    let mut long = class_a(
        us(),
        T0,
        9_000_000,
        T0 + 8_000_000,
        None,
        w(923_900_000, 12, 500_000),
        100,
    );
    long.now_us = T0 + 8_100_000;
    let err = s.schedule(&long).unwrap_err();
    assert_eq!(err.rx2, Reject::PayloadTooLong { len: 100, max: 66 });
    // No duty cycle in US915: many downlinks in a row are fine.
    for i in 0..50 {
        let at = T0 + 20_000_000 + i * 1_000_000;
        s.schedule(&class_a(
            us(),
            at,
            at as u32,
            at,
            w(923_300_000, 7, 500_000),
            None,
            50,
        ))
        .unwrap();
    }
    // A downlink data rate that US915 does not have, and a frequency outside the band.
    let bad = class_a(
        us(),
        T0 + 200_000_000,
        1,
        T0 + 200_000_000,
        w(923_300_000, 7, 125_000),
        w(868_100_000, 12, 500_000),
        10,
    );
    let err = s.schedule(&bad).unwrap_err();
    assert_eq!(err.rx1.code(), ScheduleError::DataRate);
    assert_eq!(err.rx2, Reject::Frequency(868_100_000));
}

#[test]
fn absolute_time_needs_gps() {
    let mut s = scheduler();
    let mut req = Request {
        now_us: T0,
        timing: Timing::Absolute {
            time_us: T0 + 2_000_000,
        },
        rx1: None,
        rx2: w(869_525_000, 9, 125_000),
        payload_len: 12,
        plan: eu(),
        antenna_gain_db: 0.0,
        enforce_duty_cycle: true,
        gps_available: false,
    };
    assert_eq!(s.schedule(&req).unwrap_err().rx1, Reject::NoTimeSync);
    req.gps_available = true;
    let got = s.schedule(&req).unwrap();
    assert_eq!(
        got.gps_time_us,
        Some(tern_gatewayserver::scheduler::unix_to_gps_us(
            T0 + 2_000_000
        ))
    );
    assert_eq!(got.tmst, None);
}
