//! The measurements of one step and the stop rule. Pure: no clock, no I/O.

use std::fmt;

/// Nearest-rank percentile (`p` in 0..=100) of ascending `sorted` values:
/// the smallest value with at least `p`% of the values at or below it.
/// `None` for no values.
pub(crate) fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Least-squares slope of `(x, y)` points; `None` for fewer than two
/// distinct x.
pub(crate) fn slope(points: &[(f64, f64)]) -> Option<f64> {
    let n = points.len() as f64;
    if points.len() < 2 {
        return None;
    }
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    if sxx <= f64::EPSILON {
        return None;
    }
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    Some(sxy / sxx)
}

/// The thresholds of the stop rule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Rule {
    /// p99 event-to-queryable latency must not exceed this (ms).
    pub slo_ms: f64,
    /// Ingest's flush interval (s): the lag one flush at the offered rate explains.
    pub flush_interval_s: f64,
    /// Lag is "well above" what flushing explains beyond this many flush
    /// intervals' worth of the offered rate (or the SLO's worth, if more).
    pub lag_flushes: f64,
    /// Lag "grows" when it rises faster than this share of the offered rate.
    pub lag_growth_share: f64,
    /// The generator must send at least this share of the offered rate.
    pub offer_share: f64,
}

impl Rule {
    /// The rule with the default thresholds: lag beyond 3 flush intervals'
    /// (or the SLO's) worth and rising at over 5% of the offered rate; the
    /// generator within 5% of the offered rate.
    pub(crate) fn new(slo_ms: f64, flush_interval_s: f64) -> Rule {
        Rule { slo_ms, flush_interval_s, lag_flushes: 3.0, lag_growth_share: 0.05, offer_share: 0.95 }
    }
}

/// What one step measured.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct StepObs {
    /// Offered rate (messages/s).
    pub offered: f64,
    /// Rate the generator handed to the producer (messages/s).
    pub sent_rate: f64,
    /// `(seconds, consumer lag)` samples within the step, in time order.
    pub lag: Vec<(f64, f64)>,
    /// Marker latencies (ms), ascending. Unseen markers count with their age.
    pub latencies_ms: Vec<f64>,
}

impl StepObs {
    /// p50 and p99 of the marker latencies.
    pub(crate) fn p50_p99(&self) -> (Option<f64>, Option<f64>) {
        (percentile(&self.latencies_ms, 50.0), percentile(&self.latencies_ms, 99.0))
    }
}

/// Why a step does not count as sustained.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Failure {
    /// The p99 latency is above the SLO.
    SloExceeded {
        /// Measured p99 (ms).
        p99_ms: f64,
        /// The SLO (ms).
        slo_ms: f64,
    },
    /// No marker of the step could be judged (none sent in time).
    NoMarkers,
    /// The lag is well above what flushing explains and rising.
    LagUnbounded {
        /// Lag at the end of the step (mean of its last third).
        end: f64,
        /// The allowance it exceeds.
        allowance: f64,
        /// Its growth (messages/s).
        growth_per_s: f64,
    },
    /// The generator could not offer the rate.
    OfferShort {
        /// Rate sent.
        sent_rate: f64,
        /// Rate offered.
        offered: f64,
    },
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::SloExceeded { p99_ms, slo_ms } => write!(f, "p99 {p99_ms:.0} ms > SLO {slo_ms:.0} ms"),
            Failure::NoMarkers => write!(f, "no marker to judge latency by"),
            Failure::LagUnbounded { end, allowance, growth_per_s } => {
                write!(f, "lag grows without bound ({end:.0} > {allowance:.0}, +{growth_per_s:.0}/s)")
            }
            Failure::OfferShort { sent_rate, offered } => {
                write!(f, "generator sent {sent_rate:.0}/s of {offered:.0}/s offered")
            }
        }
    }
}

/// Applies the stop rule; an empty answer means the step is sustained.
///
/// - latency: p99 of the markers above the SLO (or no marker at all);
/// - lag: at the end of the step (the mean of its last third of samples,
///   so one flush's sawtooth peak does not count) above the offered rate
///   times `lag_flushes` flush intervals or the SLO, whichever is longer (a
///   backlog within the latency budget is not runaway), AND its
///   least-squares slope over the step above `lag_growth_share` of the
///   offered rate (ingest falls behind by at least that share). Fewer than
///   three samples: not judged;
/// - offer: the generator sent less than `offer_share` of the offered rate.
pub(crate) fn judge(rule: &Rule, obs: &StepObs) -> Vec<Failure> {
    let mut out = Vec::new();
    match obs.p50_p99().1 {
        None => out.push(Failure::NoMarkers),
        Some(p99) if p99 > rule.slo_ms => out.push(Failure::SloExceeded { p99_ms: p99, slo_ms: rule.slo_ms }),
        Some(_) => {}
    }
    if obs.lag.len() >= 3
        && let Some(growth) = slope(&obs.lag)
    {
        let tail = &obs.lag[obs.lag.len() - obs.lag.len().div_ceil(3)..];
        let end = tail.iter().map(|p| p.1).sum::<f64>() / tail.len() as f64;
        let allowance = obs.offered * (rule.lag_flushes * rule.flush_interval_s).max(rule.slo_ms / 1000.0);
        if end > allowance && growth > rule.lag_growth_share * obs.offered {
            out.push(Failure::LagUnbounded { end, allowance, growth_per_s: growth });
        }
    }
    if obs.sent_rate < rule.offer_share * obs.offered {
        out.push(Failure::OfferShort { sent_rate: obs.sent_rate, offered: obs.offered });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 99.0), Some(99.0));
        assert_eq!(percentile(&v, 100.0), Some(100.0));
        assert_eq!(percentile(&v, 0.0), Some(1.0));
        // Ten values: p99 is the largest, p50 the fifth.
        let w: Vec<f64> = (1..=10).map(|x| f64::from(x) * 10.0).collect();
        assert_eq!(percentile(&w, 99.0), Some(100.0));
        assert_eq!(percentile(&w, 50.0), Some(50.0));
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
        assert_eq!(percentile(&[], 50.0), None);
        // One slow marker in 200 is below p99; three are not.
        let mut x = vec![100.0; 200];
        x[199] = 9000.0;
        assert_eq!(percentile(&x, 99.0), Some(100.0));
        x[197] = 9000.0;
        x[198] = 9000.0;
        assert_eq!(percentile(&x, 99.0), Some(9000.0));
    }

    #[test]
    fn slope_is_least_squares() {
        assert_eq!(slope(&[(0.0, 1.0), (1.0, 3.0), (2.0, 5.0)]), Some(2.0));
        assert_eq!(slope(&[(0.0, 4.0), (1.0, 4.0), (5.0, 4.0)]), Some(0.0));
        assert_eq!(slope(&[(1.0, 4.0)]), None);
        assert_eq!(slope(&[(1.0, 4.0), (1.0, 9.0)]), None);
        let noisy = [(0.0, 10.0), (1.0, 14.0), (2.0, 8.0), (3.0, 12.0)];
        assert!(slope(&noisy).unwrap().abs() < 1.0);
    }

    fn ok_obs() -> StepObs {
        StepObs {
            offered: 10_000.0,
            sent_rate: 9_990.0,
            // One flush worth of lag, steady.
            lag: (0..10).map(|i| (f64::from(i), 10_000.0 + if i % 2 == 0 { 3000.0 } else { -3000.0 })).collect(),
            latencies_ms: (0..100).map(|i| 500.0 + f64::from(i) * 10.0).collect(),
        }
    }

    #[test]
    fn a_healthy_step_is_sustained() {
        let rule = Rule::new(2000.0, 1.0);
        assert_eq!(judge(&rule, &ok_obs()), vec![]);
        assert_eq!(ok_obs().p50_p99(), (Some(990.0), Some(1480.0)));
    }

    #[test]
    fn p99_over_the_slo_stops() {
        let rule = Rule::new(2000.0, 1.0);
        let mut o = ok_obs();
        for l in o.latencies_ms.iter_mut().rev().take(2) {
            *l = 2500.0;
        }
        assert_eq!(judge(&rule, &o), vec![Failure::SloExceeded { p99_ms: 2500.0, slo_ms: 2000.0 }]);
        // Exactly at the SLO is within it.
        o.latencies_ms = vec![2000.0; 10];
        assert_eq!(judge(&rule, &o), vec![]);
        o.latencies_ms.clear();
        assert_eq!(judge(&rule, &o), vec![Failure::NoMarkers]);
    }

    #[test]
    fn lag_stops_only_when_high_and_rising() {
        let rule = Rule::new(2000.0, 1.0);
        let mut o = ok_obs();
        // Rising 1,000/s (10% of offered) from 10k to 40k: its last third
        // (30k..40k, mean 35k) is above 3 flushes' worth.
        o.lag = (0..=30).map(|i| (f64::from(i), 10_000.0 + f64::from(i) * 1000.0)).collect();
        let f = judge(&rule, &o);
        assert!(matches!(f.as_slice(), [Failure::LagUnbounded { end, allowance, growth_per_s }]
            if *end == 35_000.0 && *allowance == 30_000.0 && (*growth_per_s - 1000.0).abs() < 1e-6), "{f:?}");
        assert!(f[0].to_string().contains("lag grows without bound"));
        // With a 5 s SLO the allowance is 5 s worth (50k): a backlog within the latency budget.
        assert_eq!(judge(&Rule::new(5000.0, 1.0), &o), vec![]);
        // One sawtooth peak at the very end does not make the end level.
        o.lag = (0..=30).map(|i| (f64::from(i), if i == 30 { 90_000.0 } else { 10_000.0 + f64::from(i % 3) * 500.0 })).collect();
        assert_eq!(judge(&rule, &o), vec![]);
        // High but flat (a long flush interval): not unbounded.
        o.lag = (0..=30).map(|i| (f64::from(i), 45_000.0)).collect();
        assert_eq!(judge(&rule, &o), vec![]);
        // Rising but still small (its last third averages 22.5k): not yet.
        o.lag = (0..=30).map(|i| (f64::from(i), f64::from(i) * 900.0)).collect();
        assert_eq!(judge(&rule, &o), vec![]);
        // Rising slowly (2% of offered) though high: ingest nearly keeps up.
        o.lag = (0..=30).map(|i| (f64::from(i), 50_000.0 + f64::from(i) * 200.0)).collect();
        assert_eq!(judge(&rule, &o), vec![]);
        // Too few samples: not judged.
        o.lag = vec![(0.0, 0.0), (1.0, 1e9)];
        assert_eq!(judge(&rule, &o), vec![]);
    }

    #[test]
    fn a_generator_that_falls_short_stops() {
        let rule = Rule::new(2000.0, 1.0);
        let mut o = ok_obs();
        o.sent_rate = 9_000.0;
        let f = judge(&rule, &o);
        assert_eq!(f, vec![Failure::OfferShort { sent_rate: 9_000.0, offered: 10_000.0 }]);
        assert_eq!(f[0].to_string(), "generator sent 9000/s of 10000/s offered");
    }

    #[test]
    fn every_failure_is_reported() {
        let rule = Rule::new(2000.0, 1.0);
        let o = StepObs {
            offered: 10_000.0,
            sent_rate: 1.0,
            lag: (0..=30).map(|i| (f64::from(i), f64::from(i) * 5000.0)).collect(),
            latencies_ms: vec![5000.0; 5],
        };
        assert_eq!(judge(&rule, &o).len(), 3);
    }
}
