//! `estate loadgen --capacity`: capacity benchmarking against a running
//! pipeline (`estate standalone` or a real deployment).
//!
//! The simulated estate is offered at `--start-rate`, then `--step-rate`
//! more every `--step-duration`, up to `--max-rate`. Each step measures the
//! rate the generator sent, the rate ingest consumed and committed and its
//! resident memory (from ingest's `/metrics`), the lag of ingest's consumer
//! group (from Kafka), and the event-to-queryable latency: marker events on a tenant of their
//! own, each timed from the moment it is handed to the producer to the
//! first answer of the query service (`POST /v1/sql`) that holds it. The
//! run stops after the first step whose p99 exceeds `--slo`, whose lag
//! grows without bound, or whose rate the generator could not offer. It
//! prints a table, writes a JSON report (`--out`) and an SVG chart
//! (`--chart`) of rate, lag, latency and RSS against time.
//!
//! Honesty rules: a marker never seen counts with its age at the end of the
//! run (a lower bound), never as fast; a step is judged when it ends on the
//! markers whose outcome is known then, and judged again at the end of the
//! run on all of them; only that final judgement decides what was sustained.

mod chart;
mod judge;
mod probe;
mod report;

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use rdkafka::producer::Producer as _;

pub use chart::render as render_chart;
pub use report::{Counters, MarkerRecord, Report, Sample, Settings, StepReport, render_table};

use crate::error::{Error, Result};
use crate::loadgen::{LoadgenArgs, producer, send, send_due, simulator};
use judge::{Failure, Rule, judge};
use probe::{Marker, MarkerSource, Probes, lock};
use report::{Span, observe, step_report};

/// Options of capacity mode (`estate loadgen --capacity`); the simulated
/// estate is shaped by the usual loadgen options.
#[derive(Debug, Clone, clap::Args)]
pub struct CapacityArgs {
    /// Capacity mode: step the offered rate up against a running pipeline and
    /// measure achieved rate, lag, event-to-queryable latency and ingest RSS.
    /// Needs --query-url, --token and --ingest-metrics; --rate, --duration and
    /// --truth do not apply.
    #[arg(long = "capacity", env = "ESTATE_LOADGEN_CAPACITY", requires_all = ["query_url", "token", "ingest_metrics"])]
    pub enabled: bool,

    /// Query service base URL (`http://host:port`), asked for the markers.
    #[arg(long, env = "ESTATE_QUERY_URL")]
    pub query_url: Option<String>,

    /// Bearer token for the query service: an operator token, or a tenant
    /// token of --marker-tenant.
    #[arg(long, env = "ESTATE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// Ingest's Prometheus endpoint (`http://host:port/metrics`); repeat (or
    /// separate with commas) for several ingest instances: their figures are summed.
    #[arg(long = "ingest-metrics", env = "ESTATE_INGEST_METRICS", value_delimiter = ',')]
    pub ingest_metrics: Vec<String>,

    /// Ingest's consumer group: its lag is read from Kafka (committed
    /// offsets against high watermarks) at every sample. Never joined.
    #[arg(long, env = "ESTATE_GROUP", default_value = "estate-ingest")]
    pub group: String,

    /// First offered rate, messages per second (all kinds).
    #[arg(long, env = "ESTATE_CAPACITY_START_RATE", default_value_t = 10_000.0)]
    pub start_rate: f64,

    /// Added to the offered rate at each step.
    #[arg(long, env = "ESTATE_CAPACITY_STEP_RATE", default_value_t = 10_000.0)]
    pub step_rate: f64,

    /// Highest offered rate.
    #[arg(long, env = "ESTATE_CAPACITY_MAX_RATE", default_value_t = 200_000.0)]
    pub max_rate: f64,

    /// Length of each step. Must exceed --slo: a step is judged when it ends
    /// on the markers sent at least --slo before.
    #[arg(long, env = "ESTATE_CAPACITY_STEP_DURATION", default_value = "30s", value_parser = estate_poller::parse_duration)]
    pub step_duration: Duration,

    /// Event-to-queryable p99 objective: a step whose p99 exceeds it ends the run.
    #[arg(long, env = "ESTATE_CAPACITY_SLO", default_value = "2s", value_parser = estate_poller::parse_duration)]
    pub slo: Duration,

    /// Ingest's --flush-interval: the lag rule allows a few flush intervals'
    /// worth of messages at the offered rate before calling lag unbounded.
    #[arg(long, env = "ESTATE_FLUSH_INTERVAL", default_value = "1s", value_parser = estate_poller::parse_duration)]
    pub flush_interval: Duration,

    /// Marker events per second.
    #[arg(long, env = "ESTATE_CAPACITY_MARKER_RATE", default_value_t = 5.0)]
    pub marker_rate: f64,

    /// Tenant of the marker events (a small partition of its own, so the
    /// marker query stays cheap).
    #[arg(long, env = "ESTATE_CAPACITY_MARKER_TENANT", default_value = "capacity-markers")]
    pub marker_tenant: String,

    /// How often the query service is asked for the markers not yet seen.
    #[arg(long, env = "ESTATE_CAPACITY_POLL_INTERVAL", default_value = "50ms", value_parser = estate_poller::parse_duration)]
    pub poll_interval: Duration,

    /// How often ingest's metrics are scraped and the group's lag is read.
    #[arg(long, env = "ESTATE_CAPACITY_SAMPLE_INTERVAL", default_value = "1s", value_parser = estate_poller::parse_duration)]
    pub sample_interval: Duration,

    /// After the last step, wait up to this long for markers not yet seen.
    #[arg(long, env = "ESTATE_CAPACITY_DRAIN", default_value = "30s", value_parser = estate_poller::parse_duration)]
    pub drain: Duration,

    /// JSON report.
    #[arg(long, env = "ESTATE_CAPACITY_OUT", default_value = "capacity.json")]
    pub out: PathBuf,

    /// SVG chart of rate, lag, latency and RSS against time.
    #[arg(long, env = "ESTATE_CAPACITY_CHART", default_value = "capacity.svg")]
    pub chart: PathBuf,
}

/// The offered rate of each step.
pub(crate) fn plan(c: &CapacityArgs) -> Result<Vec<f64>> {
    let bad = |m: &str| Err(Error::Config(m.to_owned()));
    if !(c.start_rate > 0.0 && c.max_rate >= c.start_rate) {
        return bad("--start-rate must be positive and at most --max-rate");
    }
    if c.step_rate.is_nan() || (c.step_rate <= 0.0 && c.max_rate > c.start_rate) {
        return bad("--step-rate must be positive (or --max-rate equal to --start-rate)");
    }
    if c.step_duration <= c.slo {
        return bad("--step-duration must be longer than --slo (a step is judged on the markers sent at least --slo before it ends)");
    }
    let judged = (c.step_duration - c.slo).as_secs_f64() * c.marker_rate;
    if judged.is_nan() || judged < 3.0 {
        return bad("--marker-rate × (--step-duration − --slo) must give at least 3 markers per step");
    }
    if c.poll_interval.is_zero() || c.sample_interval.is_zero() {
        return bad("--poll-interval and --sample-interval must be positive");
    }
    let steps = if c.step_rate > 0.0 { ((c.max_rate - c.start_rate) / c.step_rate + 1e-9).floor() as usize } else { 0 };
    Ok((0..=steps).map(|i| c.start_rate + i as f64 * c.step_rate).collect())
}

/// `http://host:port` → `http://host:port/metrics`; a URL with a path is kept.
fn metrics_url(u: &str) -> String {
    let u = u.trim_end_matches('/');
    match u.strip_prefix("http://").map(|r| r.contains('/')) {
        Some(false) => format!("{u}/metrics"),
        _ => u.to_owned(),
    }
}

/// Runs a capacity benchmark; prints the table and writes the report and chart.
pub fn run(args: &LoadgenArgs) -> Result<Report> {
    let c = &args.capacity;
    if args.truth.is_some() {
        return Err(Error::Config("--truth does not apply to --capacity (no ground truth is kept at these rates)".into()));
    }
    let (Some(query_url), Some(token)) = (c.query_url.as_deref(), c.token.as_deref()) else {
        return Err(Error::Config("--capacity needs --query-url and --token".into()));
    };
    let metrics: Vec<String> = c.ingest_metrics.iter().map(|u| metrics_url(u)).collect();
    if metrics.is_empty() {
        return Err(Error::Config("--capacity needs --ingest-metrics (ingest's /metrics URL)".into()));
    }
    if !estate_schemas::is_valid_tenant(&c.marker_tenant) {
        return Err(Error::Config(format!("--marker-tenant {:?} is not a valid tenant id", c.marker_tenant)));
    }
    let rates = plan(c)?;
    // Fail fast on a wrong URL or token rather than after the first step.
    crate::verify::sql(query_url, token, "SELECT 1 AS ok", Duration::from_secs(10))?;
    let first = probe::scrape(&metrics)?;
    if first.events_in.is_none() {
        return Err(Error::Http { url: metrics.join(","), detail: "no estate_ingest_events_in_total: is this estate ingest's /metrics?".into() });
    }
    if first.rss.is_none() {
        tracing::warn!("ingest reports no estate_ingest_resident_memory_bytes; RSS will be missing");
    }

    let started = chrono::Utc::now();
    let (mut estate, run_id) = simulator(args, started.timestamp())?;
    let producer = producer(&args.brokers, &args.kafka_opts, args.too_large_bytes)?;
    let topics: Vec<String> = if args.per_tenant_topic {
        (1..=args.tenants).map(|t| format!("{}-t{t:02}", args.tenant_prefix)).chain([c.marker_tenant.clone()]).map(|t| format!("{}.{t}", args.topic)).collect()
    } else {
        vec![args.topic.clone()]
    };
    let lag = probe::GroupLag::new(&args.brokers, &args.kafka_opts, &c.group, topics)?;
    let mut markers = MarkerSource::new(&c.marker_tenant, &run_id, started.timestamp(), &args.topic, args.per_tenant_topic);
    let rule = Rule::new(c.slo.as_secs_f64() * 1000.0, c.flush_interval.as_secs_f64());
    let probes = Probes::new();
    tracing::info!(run_id, steps = rates.len(), first = rates[0], last = rates[rates.len() - 1], "capacity run starting");

    let driven = std::thread::scope(|s| {
        s.spawn(|| probe::poll_markers(&probes, query_url, token, &c.marker_tenant, c.poll_interval));
        s.spawn(|| probe::sample(&probes, &metrics, &lag, c.sample_interval));
        let r = drive(args, &rates, &rule, &probes, &mut estate, &producer, &mut markers);
        if r.is_ok() {
            drain(c.drain, &probes, &producer);
        }
        probes.stop.store(true, Ordering::Relaxed);
        r
    })?;
    let (spans, stopped) = driven;
    if let Err(e) = producer.flush(Duration::from_secs(30)) {
        tracing::warn!(error = %e, "flushing the producer at the end");
    }

    let now_s = probes.now_s();
    let samples = std::mem::take(&mut *lock(&probes.samples));
    let marker_recs: Vec<MarkerRecord> = lock(&probes.markers).iter().map(|m| m.rec.clone()).collect();
    let steps: Vec<StepReport> = spans
        .iter()
        .map(|(span, at_end)| {
            let fin = judge(&rule, &observe(span, &samples, &marker_recs, now_s, None));
            step_report(span, &samples, &marker_recs, now_s, at_end, &fin)
        })
        .collect();
    let report = Report {
        run_id,
        started_at: started.to_rfc3339(),
        settings: Settings {
            brokers: args.brokers.clone(),
            query_url: query_url.to_owned(),
            ingest_metrics: metrics.clone(),
            group: c.group.clone(),
            start_rate: c.start_rate,
            step_rate: c.step_rate,
            max_rate: c.max_rate,
            step_duration_s: c.step_duration.as_secs_f64(),
            slo_ms: rule.slo_ms,
            flush_interval_s: rule.flush_interval_s,
            marker_rate: c.marker_rate,
            marker_tenant: c.marker_tenant.clone(),
            poll_interval_ms: c.poll_interval.as_secs_f64() * 1000.0,
            tenants: args.tenants,
            pollers: args.pollers,
            nodes: args.nodes,
            duplicates: args.duplicates,
            malformed: args.malformed,
            mirror_pairs: args.mirror_pairs,
        },
        max_sustained_rate: steps.iter().filter(|s| s.sustained).map(|s| s.offered_rate).reduce(f64::max),
        steps,
        stopped,
        counters: Counters {
            delivery_failures: producer.context().failed.load(Ordering::Relaxed),
            queries: probes.queries.load(Ordering::Relaxed),
            query_errors: probes.query_errors.load(Ordering::Relaxed),
            scrape_errors: probes.scrape_errors.load(Ordering::Relaxed),
        },
        samples,
        markers: marker_recs,
    };
    print!("{}", render_table(&report));
    let json = serde_json::to_vec_pretty(&report).map_err(|e| Error::Config(format!("encoding the report: {e}")))?;
    std::fs::write(&c.out, json).map_err(Error::io("writing the report", &c.out))?;
    std::fs::write(&c.chart, render_chart(&report)).map_err(Error::io("writing the chart", &c.chart))?;
    tracing::info!(report = %c.out.display(), chart = %c.chart.display(), max_sustained = ?report.max_sustained_rate, "capacity run done");
    Ok(report)
}

fn step_bar(step: usize, steps: usize, rate: f64, d: Duration) -> Result<ProgressBar> {
    let pb = ProgressBar::new(d.as_millis() as u64);
    pb.set_style(
        ProgressStyle::with_template("{prefix} [{bar:24}] {elapsed:>3} {msg}")
            .map_err(|e| Error::Config(e.to_string()))?
            .progress_chars("=> "),
    );
    pb.set_prefix(format!("step {step}/{steps} {:>5}/s", chart::si(rate)));
    Ok(pb)
}

/// One line about a step (live, or when it ends).
fn brief(r: &StepReport) -> String {
    let o = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), chart::si);
    let ms = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |x| format!("{x:.0} ms"));
    format!(
        "sent {}/s · ingested {}/s · lag {} · p50 {} · p99 {} ({}/{} markers) · RSS {} MiB",
        chart::si(r.sent_rate.round()),
        o(r.ingested_rate.map(f64::round)),
        o(r.lag_end.map(|x| x as f64)),
        ms(r.latency_p50_ms),
        ms(r.latency_p99_ms),
        r.markers_seen,
        r.markers_sent,
        r.rss_max_bytes.map_or_else(|| "-".to_owned(), |b| (b >> 20).to_string()),
    )
}

/// The figures of a step so far (or at its end), and the failures a
/// judgement at `cutoff` would find.
fn snapshot(span: &Span, probes: &Probes, rule: &Rule, cutoff: Option<f64>) -> (StepReport, Vec<Failure>) {
    let now = probes.now_s();
    let samples = lock(&probes.samples).clone();
    let markers: Vec<MarkerRecord> = lock(&probes.markers).iter().filter(|m| m.rec.step == span.step).map(|m| m.rec.clone()).collect();
    let failures = judge(rule, &observe(span, &samples, &markers, now, cutoff));
    (step_report(span, &samples, &markers, now, &[], &[]), failures)
}

type Driven = (Vec<(Span, Vec<Failure>)>, String);

/// Offers each rate in turn until a step fails; the steps and why it stopped.
fn drive(
    args: &LoadgenArgs,
    rates: &[f64],
    rule: &Rule,
    probes: &Probes,
    estate: &mut crate::estate::Estate,
    producer: &rdkafka::producer::BaseProducer<crate::loadgen::Ctx>,
    markers: &mut MarkerSource,
) -> Result<Driven> {
    let c = &args.capacity;
    let marker_every = Duration::from_secs_f64(1.0 / c.marker_rate);
    let slo_s = c.slo.as_secs_f64();
    let mut spans = Vec::new();
    let mut out = Vec::new();
    let mut next_hb = Instant::now() + args.heartbeat_interval;
    let mut next_marker = Instant::now();
    let mut last_forget = Instant::now();
    let mut markers_sent = 0u64;
    for (i, &rate) in rates.iter().enumerate() {
        let step = i + 1;
        probes.offered.store(rate.to_bits(), Ordering::Relaxed);
        let pb = step_bar(step, rates.len(), rate, c.step_duration)?;
        let t0 = Instant::now();
        let start_s = probes.now_s();
        let mut sent = 0u64;
        let mut last_ui = Instant::now();
        loop {
            let elapsed = t0.elapsed();
            if elapsed >= c.step_duration {
                break;
            }
            let now_ms = chrono::Utc::now().timestamp_millis();
            let due = (rate * elapsed.as_secs_f64()) as u64;
            sent += send_due(estate, producer, &mut out, now_ms, sent, due, (&mut next_hb, args.heartbeat_interval))?;
            probes.sent.fetch_add(out.len() as u64, Ordering::Relaxed);
            while Instant::now() >= next_marker {
                let sent_s = probes.now_s();
                let now_ms = chrono::Utc::now().timestamp_millis();
                let (msg, event_id) = markers.next(now_ms);
                lock(&probes.markers).push(Marker { event_id, time_ms: now_ms, rec: MarkerRecord { step, sent_s, seen_s: None } });
                send(producer, &msg)?;
                markers_sent += 1;
                next_marker += marker_every;
            }
            producer.poll(Duration::ZERO);
            let failed = producer.context().failed.load(Ordering::Relaxed);
            let handed = probes.sent.load(Ordering::Relaxed) + markers_sent;
            probes.acked.store(handed.saturating_sub(producer.in_flight_count().max(0) as u64 + failed), Ordering::Relaxed);
            if last_forget.elapsed() >= Duration::from_secs(1) {
                // No ground truth in capacity mode: keep the simulator's memory flat.
                estate.forget_distinct();
                last_forget = Instant::now();
            }
            if last_ui.elapsed() >= Duration::from_millis(250) {
                let span = Span { step, offered: rate, start_s, end_s: probes.now_s(), sent };
                pb.set_position(elapsed.as_millis() as u64);
                pb.set_message(brief(&snapshot(&span, probes, rule, None).0));
                last_ui = Instant::now();
            }
            if out.is_empty() {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        let end_s = probes.now_s();
        let span = Span { step, offered: rate, start_s, end_s, sent };
        let (r, failures) = snapshot(&span, probes, rule, Some(end_s - slo_s));
        let verdict = if failures.is_empty() { "ok".to_owned() } else { failures.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ") };
        pb.finish_with_message(format!("{} · {verdict}", brief(&r)));
        tracing::info!(step, offered = rate, summary = %brief(&r), verdict, "capacity step done");
        let stop = !failures.is_empty();
        spans.push((span, failures));
        if stop {
            return Ok((spans, format!("step {step} at {rate:.0}/s: {verdict}")));
        }
    }
    Ok((spans, format!("reached --max-rate ({:.0}/s)", c.max_rate)))
}

/// No more load: waits for the markers still unseen (up to `limit`) while
/// the sampler records the lag draining.
fn drain(limit: Duration, probes: &Probes, producer: &rdkafka::producer::BaseProducer<crate::loadgen::Ctx>) {
    probes.offered.store(0f64.to_bits(), Ordering::Relaxed);
    let deadline = Instant::now() + limit;
    let pb = ProgressBar::new_spinner();
    while Instant::now() < deadline {
        producer.poll(Duration::from_millis(100));
        let unseen = lock(&probes.markers).iter().filter(|m| m.rec.seen_s.is_none()).count();
        if unseen == 0 {
            break;
        }
        pb.set_message(format!("draining: {unseen} markers not yet queryable"));
        pb.tick();
    }
    pb.finish_and_clear();
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        c: CapacityArgs,
    }

    fn args(extra: &[&str]) -> CapacityArgs {
        let base = ["x", "--capacity", "--query-url", "http://q:1", "--token", "t", "--ingest-metrics", "http://m:2"];
        Cli::try_parse_from(base.iter().chain(extra)).unwrap().c
    }

    #[test]
    fn the_plan_steps_up_to_the_max() {
        assert_eq!(plan(&args(&[])).unwrap().len(), 20);
        let p = plan(&args(&["--start-rate", "200", "--step-rate", "200", "--max-rate", "700"])).unwrap();
        assert_eq!(p, vec![200.0, 400.0, 600.0]);
        assert_eq!(plan(&args(&["--start-rate", "5", "--step-rate", "0", "--max-rate", "5"])).unwrap(), vec![5.0]);
        for bad in [
            &["--start-rate", "0"][..],
            &["--start-rate", "10", "--max-rate", "5"],
            &["--step-rate", "0"],
            &["--step-duration", "2s", "--slo", "2s"],
            &["--step-duration", "3s", "--slo", "2s", "--marker-rate", "2"],
            &["--poll-interval", "0s"],
        ] {
            assert!(matches!(plan(&args(bad)), Err(Error::Config(_))), "{bad:?} accepted");
        }
    }

    #[test]
    fn capacity_needs_its_endpoints() {
        let e = Cli::try_parse_from(["x", "--capacity", "--query-url", "http://q:1"]).unwrap_err();
        assert!(e.to_string().contains("--token"), "{e}");
        let c = args(&["--ingest-metrics", "http://n:3/metrics,http://o:4"]);
        assert_eq!(c.ingest_metrics.len(), 3);
        assert_eq!(metrics_url("http://m:2"), "http://m:2/metrics");
        assert_eq!(metrics_url("http://m:2/"), "http://m:2/metrics");
        assert_eq!(metrics_url("http://m:2/x/metrics"), "http://m:2/x/metrics");
    }
}
