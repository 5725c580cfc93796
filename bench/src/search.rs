//! The rate search: offer uplinks at increasing rates until one is not sustained, then
//! narrow the gap between the last sustained and the first failed rate.

use serde::Serialize;

/// What one load step measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StepResult {
    /// The rate asked of the generator, uplinks/s.
    pub offered: f64,
    /// The rate the generator actually sent at, uplinks/s.
    pub achieved: f64,
    /// Uplinks sent (each heard by three gateways).
    pub sent: u64,
    /// Uplinks that reached the MQTT subscriber, decoded, by the end of the drain time.
    pub delivered: u64,
    /// Delivered uplinks per second of sending, counting only those received by the end of
    /// sending plus the dedup window (what the stack kept up with).
    pub delivered_rate: f64,
    /// Uplinks that arrived without a decoded payload.
    pub undecoded: u64,
    /// Uplinks that arrived more than once.
    pub duplicates: u64,
    /// Median latency (beyond the dedup window) of the first quarter of the step, ms.
    pub latency_first_ms: f64,
    /// Median latency (beyond the dedup window) of the last quarter of the step, ms.
    pub latency_last_ms: f64,
    /// p50 latency over the step, ms.
    pub p50_ms: f64,
    /// p99 latency over the step, ms.
    pub p99_ms: f64,
    /// Highest latency over the step, ms.
    pub max_ms: f64,
    /// Share of the machine's cores tern used during the step.
    pub tern_cpu: f64,
    /// Share of the machine's cores the generator (this process) used during the step.
    pub generator_cpu: f64,
    /// The verdict, filled in by [`verdict`].
    pub verdict: Verdict,
}

/// Whether a step was sustained, and if not, why.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Every uplink delivered, once, decoded, and latency flat over the step.
    #[default]
    Sustained,
    /// Some uplinks never reached the subscriber (or arrived undecoded).
    Dropped,
    /// Everything arrived but latency grew over the step: a queue is building up.
    Backlog,
    /// The generator could not send at the offered rate: the step says nothing about tern.
    GeneratorBound,
}

/// Latency of the last quarter may exceed the first quarter's by this factor plus
/// [`BACKLOG_SLACK_MS`] before the step counts as a growing backlog.
pub const BACKLOG_FACTOR: f64 = 1.5;
/// See [`BACKLOG_FACTOR`].
pub const BACKLOG_SLACK_MS: f64 = 20.0;
/// The generator must reach this share of the offered rate for the step to count.
pub const GENERATOR_SHARE: f64 = 0.95;

/// Judges a step.
pub fn verdict(s: &StepResult) -> Verdict {
    if s.achieved < s.offered * GENERATOR_SHARE {
        return Verdict::GeneratorBound;
    }
    if s.delivered < s.sent || s.undecoded > 0 {
        return Verdict::Dropped;
    }
    if s.latency_last_ms > s.latency_first_ms * BACKLOG_FACTOR + BACKLOG_SLACK_MS {
        return Verdict::Backlog;
    }
    // Everything arrived, but not while the step ran: the stack fell behind.
    if s.delivered_rate < s.achieved * GENERATOR_SHARE {
        return Verdict::Backlog;
    }
    Verdict::Sustained
}

/// The search state: geometric steps up, then bisection.
#[derive(Debug, Clone)]
pub struct RateSearch {
    factor: f64,
    max_rate: f64,
    min_rate: f64,
    bisections_left: u32,
    current: Option<f64>,
    passed: Option<f64>,
    failed: Option<f64>,
    /// Set when the generator, not tern, was the limit.
    pub generator_bound: bool,
}

impl RateSearch {
    /// Starts at `start` uplinks/s, multiplies by `factor` while steps pass (up to
    /// `max_rate`), then bisects `bisections` times between the last pass and the first fail.
    pub fn new(start: f64, factor: f64, max_rate: f64, bisections: u32) -> Self {
        Self {
            factor,
            max_rate,
            min_rate: (start / 16.0).max(1.0),
            bisections_left: bisections,
            current: Some(start.min(max_rate)),
            passed: None,
            failed: None,
            generator_bound: false,
        }
    }

    /// The rate to try next; `None` when the search is over.
    pub fn next_rate(&self) -> Option<f64> {
        self.current
    }

    /// Records the verdict of the step at [`Self::next_rate`] and picks the next rate.
    pub fn record(&mut self, verdict: Verdict) {
        let Some(rate) = self.current else { return };
        self.current = match verdict {
            Verdict::GeneratorBound => {
                self.generator_bound = true;
                None
            }
            Verdict::Sustained => {
                self.passed = Some(self.passed.map_or(rate, |p| p.max(rate)));
                match self.failed {
                    None if rate >= self.max_rate => None,
                    None => Some((rate * self.factor).min(self.max_rate)),
                    Some(f) => self.bisect(rate, f),
                }
            }
            Verdict::Dropped | Verdict::Backlog => {
                self.failed = Some(self.failed.map_or(rate, |f| f.min(rate)));
                match self.passed {
                    // Nothing passed yet: halve until something does.
                    None if rate / 2.0 < self.min_rate => None,
                    None => Some(rate / 2.0),
                    Some(p) => self.bisect(p, rate),
                }
            }
        };
    }

    fn bisect(&mut self, passed: f64, failed: f64) -> Option<f64> {
        // Stop when out of bisections or the gap is within 10%.
        if self.bisections_left == 0 || failed <= passed * 1.1 {
            return None;
        }
        self.bisections_left -= 1;
        Some(((passed + failed) / 2.0).round())
    }

    /// The highest sustained rate found.
    pub fn best(&self) -> Option<f64> {
        self.passed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(offered: f64, sent: u64, delivered: u64, first: f64, last: f64) -> StepResult {
        StepResult {
            offered,
            achieved: offered,
            sent,
            delivered,
            latency_first_ms: first,
            latency_last_ms: last,
            delivered_rate: offered,
            ..Default::default()
        }
    }

    #[test]
    fn verdicts() {
        assert_eq!(
            verdict(&step(100.0, 1000, 1000, 5.0, 6.0)),
            Verdict::Sustained
        );
        assert_eq!(verdict(&step(100.0, 1000, 999, 5.0, 6.0)), Verdict::Dropped);
        // Latency rising from 5 ms to 200 ms over the step: a growing queue.
        assert_eq!(
            verdict(&step(100.0, 1000, 1000, 5.0, 200.0)),
            Verdict::Backlog
        );
        // Within the slack: 5 -> 27 ms is noise at this scale.
        assert_eq!(
            verdict(&step(100.0, 1000, 1000, 5.0, 27.0)),
            Verdict::Sustained
        );
        let mut slow = step(100.0, 1000, 1000, 5.0, 6.0);
        slow.achieved = 80.0;
        assert_eq!(verdict(&slow), Verdict::GeneratorBound);
        // All delivered with flat latency, but seconds late: still behind.
        let mut late = step(100.0, 1000, 1000, 3000.0, 2900.0);
        late.delivered_rate = 10.0;
        assert_eq!(verdict(&late), Verdict::Backlog);
        let mut undecoded = step(100.0, 1000, 1000, 5.0, 6.0);
        undecoded.undecoded = 1;
        assert_eq!(verdict(&undecoded), Verdict::Dropped);
    }

    /// Runs the search against a stack that sustains exactly `capacity` uplinks/s.
    fn search(capacity: f64, search: &mut RateSearch) -> Vec<f64> {
        let mut tried = Vec::new();
        while let Some(rate) = search.next_rate() {
            tried.push(rate);
            search.record(if rate <= capacity {
                Verdict::Sustained
            } else {
                Verdict::Dropped
            });
        }
        tried
    }

    #[test]
    fn steps_up_then_bisects() {
        let mut s = RateSearch::new(1000.0, 2.0, 100_000.0, 3);
        let tried = search(5000.0, &mut s);
        // 1000, 2000, 4000 pass; 8000 fails; then 6000 (fail), 5000 (pass), 5500 (fail).
        assert_eq!(
            tried,
            vec![1000.0, 2000.0, 4000.0, 8000.0, 6000.0, 5000.0, 5500.0]
        );
        assert_eq!(s.best(), Some(5000.0));
    }

    #[test]
    fn stops_at_the_ceiling() {
        let mut s = RateSearch::new(1000.0, 2.0, 3000.0, 3);
        let tried = search(1e9, &mut s);
        assert_eq!(tried, vec![1000.0, 2000.0, 3000.0]);
        assert_eq!(s.best(), Some(3000.0));
    }

    #[test]
    fn halves_when_the_first_step_fails() {
        let mut s = RateSearch::new(1000.0, 2.0, 100_000.0, 1);
        let tried = search(300.0, &mut s);
        // 1000 fails, 500 fails, 250 passes, then one bisection: 375 fails.
        assert_eq!(tried, vec![1000.0, 500.0, 250.0, 375.0]);
        assert_eq!(s.best(), Some(250.0));
    }

    #[test]
    fn gives_up_when_nothing_passes() {
        let mut s = RateSearch::new(64.0, 2.0, 1000.0, 2);
        let tried = search(0.0, &mut s);
        assert_eq!(tried, vec![64.0, 32.0, 16.0, 8.0, 4.0]);
        assert_eq!(s.best(), None);
    }

    #[test]
    fn generator_bound_ends_the_search() {
        let mut s = RateSearch::new(1000.0, 2.0, 100_000.0, 2);
        s.record(Verdict::Sustained);
        assert_eq!(s.next_rate(), Some(2000.0));
        s.record(Verdict::GeneratorBound);
        assert_eq!(s.next_rate(), None);
        assert!(s.generator_bound);
        assert_eq!(s.best(), Some(1000.0));
    }
}
