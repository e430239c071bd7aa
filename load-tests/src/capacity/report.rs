//! The capacity report: per-step figures derived from the raw samples and
//! marker timings, the JSON shape, and the text table. Pure.

use serde::Serialize;

use super::judge::{Failure, StepObs, percentile, slope};

/// The settings of a run, as recorded in the report.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    /// Kafka bootstrap servers.
    pub brokers: String,
    /// Query service URL.
    pub query_url: String,
    /// Ingest `/metrics` URLs.
    pub ingest_metrics: Vec<String>,
    /// Ingest's consumer group (whose lag is measured).
    pub group: String,
    /// First offered rate (messages/s).
    pub start_rate: f64,
    /// Increment per step.
    pub step_rate: f64,
    /// Last offered rate.
    pub max_rate: f64,
    /// Length of each step (s).
    pub step_duration_s: f64,
    /// p99 latency SLO (ms).
    pub slo_ms: f64,
    /// Ingest's flush interval assumed by the lag rule (s).
    pub flush_interval_s: f64,
    /// Marker events per second.
    pub marker_rate: f64,
    /// Tenant of the markers.
    pub marker_tenant: String,
    /// How often the query service is asked for the markers (ms).
    pub poll_interval_ms: f64,
    /// Simulated tenants.
    pub tenants: usize,
    /// Pollers per tenant.
    pub pollers: usize,
    /// Nodes per poller.
    pub nodes: usize,
    /// Share of duplicate event messages.
    pub duplicates: f64,
    /// Share of steps with a malformed message.
    pub malformed: f64,
    /// Mirror pairs per tenant.
    pub mirror_pairs: usize,
}

/// One sample of the generator's counters and ingest's metrics.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Sample {
    /// Seconds since the run started.
    pub t_s: f64,
    /// The rate offered at that moment.
    pub offered_rate: f64,
    /// Messages handed to the producer so far (markers excluded).
    pub sent: u64,
    /// Messages acknowledged by the broker so far (markers included).
    pub acked: u64,
    /// `estate_ingest_events_in_total` (summed over instances).
    pub events_in: Option<u64>,
    /// `estate_ingest_rows_written_total{table="events"}`.
    pub event_rows: Option<u64>,
    /// The ingest consumer group's lag (from Kafka), over all partitions.
    pub lag: Option<i64>,
    /// `estate_ingest_resident_memory_bytes`, summed over instances.
    pub rss_bytes: Option<u64>,
}

/// One marker event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MarkerRecord {
    /// Step it was sent in (1-based).
    pub step: usize,
    /// Seconds since the run started when it was handed to the producer.
    pub sent_s: f64,
    /// Seconds since the run started when the first query whose answer held
    /// it was sent.
    pub seen_s: Option<f64>,
}

impl MarkerRecord {
    /// Its latency (ms) judged at `now_s`: measured if seen, else its age
    /// (a lower bound).
    pub(crate) fn latency_ms(&self, now_s: f64) -> f64 {
        (self.seen_s.unwrap_or(now_s) - self.sent_s).max(0.0) * 1000.0
    }
}

/// The figures of one step.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct StepReport {
    /// 1-based.
    pub step: usize,
    /// Offered rate (messages/s).
    pub offered_rate: f64,
    /// Start (s since the run started).
    pub start_s: f64,
    /// End.
    pub end_s: f64,
    /// Messages handed to the producer.
    pub sent: u64,
    /// `sent` per second.
    pub sent_rate: f64,
    /// Messages ingest consumed and committed per second.
    pub ingested_rate: Option<f64>,
    /// Rows committed to `events` per second.
    pub event_rows_rate: Option<f64>,
    /// Consumer lag at the first sample of the step.
    pub lag_start: Option<i64>,
    /// At the last.
    pub lag_end: Option<i64>,
    /// Highest.
    pub lag_max: Option<i64>,
    /// Least-squares growth over the step (messages/s).
    pub lag_growth_per_s: Option<f64>,
    /// Highest ingest RSS (bytes).
    pub rss_max_bytes: Option<u64>,
    /// Markers sent.
    pub markers_sent: usize,
    /// Markers seen through the query service.
    pub markers_seen: usize,
    /// Event-to-queryable latency, p50 (ms).
    pub latency_p50_ms: Option<f64>,
    /// p99.
    pub latency_p99_ms: Option<f64>,
    /// Slowest.
    pub latency_max_ms: Option<f64>,
    /// Why the run stopped after this step, as judged when it ended (on the
    /// markers whose outcome was known then); empty: it went on.
    pub failures_at_step_end: Vec<String>,
    /// Why the step is not sustained, judged on every marker at the end of
    /// the run; empty: sustained.
    pub failures: Vec<String>,
    /// Whether the step was sustained.
    pub sustained: bool,
}

/// A step's place in time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Span {
    /// 1-based.
    pub step: usize,
    /// Offered rate.
    pub offered: f64,
    /// Start (s).
    pub start_s: f64,
    /// End (s).
    pub end_s: f64,
    /// Messages handed to the producer.
    pub sent: u64,
}

impl Span {
    fn sent_rate(&self) -> f64 {
        let d = self.end_s - self.start_s;
        if d > 0.0 { self.sent as f64 / d } else { 0.0 }
    }
}

/// The observation the stop rule judges. Markers: this step's; with a
/// `cutoff`, only those sent at or before it (all of them have an outcome
/// by `now_s` if `cutoff <= now_s - SLO`). Unseen ones count with their age.
pub(crate) fn observe(span: &Span, samples: &[Sample], markers: &[MarkerRecord], now_s: f64, cutoff: Option<f64>) -> StepObs {
    let mut latencies_ms: Vec<f64> = markers
        .iter()
        .filter(|m| m.step == span.step && cutoff.is_none_or(|c| m.sent_s <= c))
        .map(|m| m.latency_ms(now_s))
        .collect();
    latencies_ms.sort_by(f64::total_cmp);
    StepObs { offered: span.offered, sent_rate: span.sent_rate(), lag: lag_points(span, samples), latencies_ms }
}

fn in_span<'a>(span: &'a Span, samples: &'a [Sample]) -> impl Iterator<Item = &'a Sample> + 'a {
    samples.iter().filter(move |s| s.t_s >= span.start_s && s.t_s <= span.end_s)
}

fn lag_points(span: &Span, samples: &[Sample]) -> Vec<(f64, f64)> {
    in_span(span, samples).filter_map(|s| Some((s.t_s, s.lag? as f64))).collect()
}

/// Rate of a counter between its first and last sample within the span.
fn counter_rate(span: &Span, samples: &[Sample], f: impl Fn(&Sample) -> Option<u64>) -> Option<f64> {
    let pts: Vec<(f64, u64)> = in_span(span, samples).filter_map(|s| Some((s.t_s, f(s)?))).collect();
    let (first, last) = (pts.first()?, pts.last()?);
    let dt = last.0 - first.0;
    (dt > 0.0).then(|| last.1.saturating_sub(first.1) as f64 / dt)
}

/// The step's figures; `failures_at_step_end` and `failures` as judged.
pub(crate) fn step_report(span: &Span, samples: &[Sample], markers: &[MarkerRecord], now_s: f64, at_end: &[Failure], fin: &[Failure]) -> StepReport {
    let obs = observe(span, samples, markers, now_s, None);
    let lag = lag_points(span, samples);
    let (p50, p99) = obs.p50_p99();
    let mine = markers.iter().filter(|m| m.step == span.step);
    StepReport {
        step: span.step,
        offered_rate: span.offered,
        start_s: span.start_s,
        end_s: span.end_s,
        sent: span.sent,
        sent_rate: span.sent_rate(),
        ingested_rate: counter_rate(span, samples, |s| s.events_in),
        event_rows_rate: counter_rate(span, samples, |s| s.event_rows),
        lag_start: lag.first().map(|p| p.1 as i64),
        lag_end: lag.last().map(|p| p.1 as i64),
        lag_max: lag.iter().map(|p| p.1 as i64).max(),
        lag_growth_per_s: slope(&lag),
        rss_max_bytes: in_span(span, samples).filter_map(|s| s.rss_bytes).max(),
        markers_sent: mine.clone().count(),
        markers_seen: mine.filter(|m| m.seen_s.is_some()).count(),
        latency_p50_ms: p50,
        latency_p99_ms: p99,
        latency_max_ms: percentile(&obs.latencies_ms, 100.0),
        failures_at_step_end: at_end.iter().map(ToString::to_string).collect(),
        failures: fin.iter().map(ToString::to_string).collect(),
        sustained: fin.is_empty(),
    }
}

/// Counters of the run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Counters {
    /// Messages the broker did not acknowledge.
    pub delivery_failures: u64,
    /// Marker queries answered.
    pub queries: u64,
    /// Marker queries that failed.
    pub query_errors: u64,
    /// Metrics scrapes that failed.
    pub scrape_errors: u64,
}

/// The whole report (`--out`).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Run id (also in the marker poller's name).
    pub run_id: String,
    /// RFC 3339 start time.
    pub started_at: String,
    /// Settings.
    pub settings: Settings,
    /// Per step.
    pub steps: Vec<StepReport>,
    /// Highest offered rate of a sustained step.
    pub max_sustained_rate: Option<f64>,
    /// Why the run ended.
    pub stopped: String,
    /// Counters.
    pub counters: Counters,
    /// Raw samples, one per `--sample-interval`.
    pub samples: Vec<Sample>,
    /// Every marker.
    pub markers: Vec<MarkerRecord>,
}

fn opt(v: Option<f64>, scale: f64, digits: usize) -> String {
    v.map_or_else(|| "-".to_owned(), |x| format!("{:.digits$}", x / scale))
}

/// The report as a text table, with a closing line.
pub fn render_table(r: &Report) -> String {
    let head = [
        "step", "offered/s", "sent/s", "ingested/s", "rows/s", "lag end", "lag max", "lag +/s", "p50 ms", "p99 ms", "max ms", "markers", "RSS MiB",
        "result",
    ];
    let rows: Vec<Vec<String>> = r
        .steps
        .iter()
        .map(|s| {
            vec![
                s.step.to_string(),
                format!("{:.0}", s.offered_rate),
                format!("{:.0}", s.sent_rate),
                opt(s.ingested_rate, 1.0, 0),
                opt(s.event_rows_rate, 1.0, 0),
                opt(s.lag_end.map(|x| x as f64), 1.0, 0),
                opt(s.lag_max.map(|x| x as f64), 1.0, 0),
                opt(s.lag_growth_per_s, 1.0, 0),
                opt(s.latency_p50_ms, 1.0, 0),
                opt(s.latency_p99_ms, 1.0, 0),
                opt(s.latency_max_ms, 1.0, 0),
                format!("{}/{}", s.markers_seen, s.markers_sent),
                opt(s.rss_max_bytes.map(|x| x as f64), 1024.0 * 1024.0, 0),
                if s.sustained { "ok".to_owned() } else { s.failures.join("; ") },
            ]
        })
        .collect();
    let widths: Vec<usize> = (0..head.len()).map(|i| rows.iter().map(|r| r[i].len()).chain([head[i].len()]).max().unwrap_or(0)).collect();
    let line = |cells: Vec<String>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:>w$}  ", w = widths[i]));
            }
        }
        s.trim_end().to_owned() + "\n"
    };
    let mut out = line(head.iter().map(|h| (*h).to_owned()).collect());
    out.push_str(&"-".repeat(widths.iter().sum::<usize>() + 2 * (widths.len() - 1)));
    out.push('\n');
    for r in rows {
        out.push_str(&line(r));
    }
    match r.max_sustained_rate {
        Some(x) => out.push_str(&format!("max sustained: {x:.0} messages/s; stopped: {}\n", r.stopped)),
        None => out.push_str(&format!("no step was sustained; stopped: {}\n", r.stopped)),
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::capacity::judge::{Rule, judge};

    /// Two steps of 10 s at 1,000 and 2,000/s: the first healthy, the
    /// second with lag running away and slow markers.
    pub(crate) fn report() -> Report {
        let spans = [
            Span { step: 1, offered: 1000.0, start_s: 0.0, end_s: 10.0, sent: 10_000 },
            Span { step: 2, offered: 2000.0, start_s: 10.0, end_s: 20.0, sent: 20_000 },
        ];
        let samples: Vec<Sample> = (0..=20)
            .map(|t| {
                let t = f64::from(t);
                let (offered, sent, lag) =
                    if t <= 10.0 { (1000.0, t * 1000.0, 800.0) } else { (2000.0, 10_000.0 + (t - 10.0) * 2000.0, 800.0 + (t - 10.0) * 1500.0) };
                let ingested = 10_000.0 + sent - lag;
                Sample {
                    t_s: t,
                    offered_rate: offered,
                    sent: sent as u64,
                    acked: sent as u64,
                    events_in: Some(ingested as u64),
                    event_rows: Some((ingested * 0.98) as u64),
                    lag: Some(lag as i64),
                    rss_bytes: Some(200 << 20),
                }
            })
            .collect();
        let mut markers = Vec::new();
        for i in 0..50 {
            let sent_s = f64::from(i) * 0.2;
            markers.push(MarkerRecord { step: 1, sent_s, seen_s: Some(sent_s + 0.4 + f64::from(i % 5) * 0.1) });
        }
        for i in 0..50 {
            let sent_s = 10.0 + f64::from(i) * 0.2;
            markers.push(MarkerRecord { step: 2, sent_s, seen_s: (i < 30).then_some(sent_s + 1.0 + f64::from(i) * 0.1) });
        }
        let rule = Rule::new(2000.0, 1.0);
        let steps = spans
            .iter()
            .map(|s| {
                let at_end = judge(&rule, &observe(s, &samples, &markers, s.end_s, Some(s.end_s - 2.0)));
                let fin = judge(&rule, &observe(s, &samples, &markers, 30.0, None));
                step_report(s, &samples, &markers, 30.0, &at_end, &fin)
            })
            .collect();
        Report {
            run_id: "t1".into(),
            started_at: "2026-11-24T00:00:00Z".into(),
            settings: Settings {
                brokers: "b".into(),
                query_url: "http://q".into(),
                ingest_metrics: vec!["http://m/metrics".into()],
                group: "estate-ingest".into(),
                start_rate: 1000.0,
                step_rate: 1000.0,
                max_rate: 2000.0,
                step_duration_s: 10.0,
                slo_ms: 2000.0,
                flush_interval_s: 1.0,
                marker_rate: 5.0,
                marker_tenant: "capacity-markers".into(),
                poll_interval_ms: 200.0,
                tenants: 3,
                pollers: 2,
                nodes: 100,
                duplicates: 0.0,
                malformed: 0.0,
                mirror_pairs: 0,
            },
            steps,
            max_sustained_rate: Some(1000.0),
            stopped: "step 2".into(),
            counters: Counters::default(),
            samples,
            markers,
        }
    }

    #[test]
    fn steps_are_summarised_from_samples_and_markers() {
        let r = report();
        let s1 = &r.steps[0];
        assert_eq!((s1.sent_rate, s1.ingested_rate, s1.markers_sent, s1.markers_seen), (1000.0, Some(1000.0), 50, 50));
        assert_eq!((s1.lag_start, s1.lag_end, s1.lag_max, s1.rss_max_bytes), (Some(800), Some(800), Some(800), Some(200 << 20)));
        assert_eq!(s1.lag_growth_per_s, Some(0.0));
        // Latencies 400..800 ms, ten of each.
        assert_eq!((s1.latency_p50_ms.map(f64::round), s1.latency_p99_ms.map(f64::round), s1.latency_max_ms.map(f64::round)), (Some(600.0), Some(800.0), Some(800.0)));
        assert!(s1.sustained && s1.failures.is_empty() && s1.failures_at_step_end.is_empty(), "{s1:?}");
        let s2 = &r.steps[1];
        assert_eq!((s2.markers_sent, s2.markers_seen), (50, 30));
        // The step's samples run from t=10 (lag 800) to t=20 (lag 15,800); ingest fell behind.
        assert_eq!((s2.lag_start, s2.lag_end, s2.ingested_rate), (Some(800), Some(15_800), Some(500.0)));
        assert!((s2.lag_growth_per_s.unwrap() - 1500.0).abs() < 1e-6);
        assert!(!s2.sustained);
        assert!(s2.failures.iter().any(|f| f.starts_with("p99")), "{:?}", s2.failures);
        assert!(s2.failures.iter().any(|f| f.starts_with("lag grows")), "{:?}", s2.failures);
        // At the step's end only markers sent before 18 s were judged; unseen ones count with their age.
        assert!(s2.failures_at_step_end.iter().any(|f| f.starts_with("p99")), "{:?}", s2.failures_at_step_end);
    }

    #[test]
    fn the_table_has_a_row_per_step_and_a_verdict() {
        let t = render_table(&report());
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 5, "{t}");
        assert!(lines[0].starts_with("step") && lines[0].ends_with("result"), "{t}");
        assert!(lines[2].trim_start().starts_with("1 ") && lines[2].ends_with("ok"), "{t}");
        assert!(lines[3].contains("p99") && lines[3].contains("lag grows"), "{t}");
        assert!(lines[4].starts_with("max sustained: 1000 messages/s"), "{t}");
    }

    #[test]
    fn a_marker_never_seen_counts_with_its_age() {
        let m = MarkerRecord { step: 1, sent_s: 3.0, seen_s: None };
        assert_eq!(m.latency_ms(5.5), 2500.0);
        let m = MarkerRecord { step: 1, sent_s: 3.0, seen_s: Some(3.25) };
        assert_eq!(m.latency_ms(99.0), 250.0);
    }
}
