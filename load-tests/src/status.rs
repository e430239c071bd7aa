//! `estate status`: one screen of estate health.
//!
//! From the query service (operator token): pollers up/late/down with the
//! ones not up listed, the `loss_audit` summary, and freshness per tenant
//! (now minus the newest `ingested_at`). From each ingest instance's
//! Prometheus endpoint, scraped twice `--sample` apart: consumer lag per
//! partition and in total, and the rates of events in, rows written, DLQ
//! records and duplicates. A source that cannot be asked is marked
//! unavailable, everything else is still shown, and the command fails.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use estate_ingest::dlq::Format;
use serde::Serialize;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::verify::{http_get, sql};

/// Options of `estate status`.
#[derive(Debug, Clone, clap::Args)]
pub struct StatusArgs {
    /// Query service base URL (`http://host:port`). Without it the pollers,
    /// loss audit and freshness sections are not shown.
    #[arg(long, env = "ESTATE_QUERY_URL")]
    pub query_url: Option<String>,

    /// Operator bearer token for the query service (a tenant token would
    /// show only its tenant).
    #[arg(long, env = "ESTATE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// An ingest instance's metrics endpoint, `http://host:port` (its
    /// `--metrics-addr`; `/metrics` is implied). Repeatable, one per instance.
    #[arg(long = "ingest-metrics", env = "ESTATE_INGEST_METRICS", value_name = "URL", value_delimiter = ',')]
    pub ingest_metrics: Vec<String>,

    /// Time between the two scrapes of each ingest endpoint that rates are computed from.
    #[arg(long, env = "ESTATE_STATUS_SAMPLE", default_value = "2s", value_parser = estate_poller::parse_duration)]
    pub sample: Duration,

    /// Time limit of each request to a source.
    #[arg(long, env = "ESTATE_STATUS_TIMEOUT", default_value = "30s", value_parser = estate_poller::parse_duration)]
    pub timeout: Duration,

    /// Output format.
    #[arg(long, env = "ESTATE_FORMAT", value_enum, default_value = "table")]
    pub format: Format,
}

/// The estate's health, as far as it could be asked.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// When (RFC 3339, UTC).
    pub at: String,
    /// From the query service (`None`: no `--query-url`).
    pub query: Option<QueryStatus>,
    /// From each ingest instance.
    pub ingest: Vec<IngestStatus>,
    /// Summed over the ingest instances that answered.
    pub ingest_total: Option<IngestTotal>,
    /// Sources that could not be asked, with why.
    pub unavailable: Vec<String>,
}

/// What the query service says.
#[derive(Debug, Clone, Default, Serialize)]
pub struct QueryStatus {
    /// Base URL.
    pub url: String,
    /// The `pollers` view summarised (`None`: unavailable).
    pub pollers: Option<Pollers>,
    /// The `loss_audit` view summarised.
    pub loss: Option<Loss>,
    /// Per tenant.
    pub freshness: Option<Vec<Freshness>>,
    /// Errors of the sections that failed.
    pub errors: Vec<String>,
}

/// Pollers by health.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Pollers {
    /// Heartbeat recent.
    pub up: u64,
    /// Heartbeat late.
    pub late: u64,
    /// No heartbeat for long, or none at all.
    pub down: u64,
    /// Every poller that is not up.
    pub not_up: Vec<PollerRow>,
}

/// One poller that is not up.
#[derive(Debug, Clone, Serialize)]
pub struct PollerRow {
    /// Tenant.
    pub tenant: String,
    /// Poller id.
    pub poller: String,
    /// `late` or `down`.
    pub status: String,
    /// Time of its last heartbeat.
    pub last_heartbeat: Option<String>,
    /// Seconds since it.
    pub seconds_since: Option<f64>,
}

/// The loss audit summarised.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Loss {
    /// Gaps in the receipted seq ranges.
    pub gaps: u64,
    /// Lost tails (heartbeat seq beyond the receipts).
    pub tails: u64,
    /// Messages missing, in all.
    pub missing: i64,
    /// Per (tenant, poller, epoch, kind), most missing first (at most 50).
    pub worst: Vec<LossRow>,
}

/// Loss of one poller incarnation.
#[derive(Debug, Clone, Serialize)]
pub struct LossRow {
    /// Tenant.
    pub tenant: String,
    /// Poller id.
    pub poller: String,
    /// Epoch.
    pub epoch: i64,
    /// `gap` or `tail`.
    pub kind: String,
    /// Ranges missing.
    pub ranges: i64,
    /// Messages missing.
    pub missing: i64,
}

/// How fresh a tenant's events are.
#[derive(Debug, Clone, Serialize)]
pub struct Freshness {
    /// Tenant.
    pub tenant: String,
    /// Newest `ingested_at`.
    pub last_ingested_at: Option<String>,
    /// Now minus that, in seconds.
    pub age_seconds: Option<f64>,
}

/// What one ingest instance says.
#[derive(Debug, Clone, Default, Serialize)]
pub struct IngestStatus {
    /// Metrics URL.
    pub url: String,
    /// Why it is unavailable.
    pub error: Option<String>,
    /// Partitions assigned to it.
    pub partitions_assigned: Option<f64>,
    /// Consumer lag per partition (latest scrape).
    pub lag: Vec<Lag>,
    /// Their sum.
    pub lag_total: Option<i64>,
    /// Assigned partitions whose lag is not reported (librdkafka knows it
    /// only once the partition's offset has been committed since start).
    pub lag_unknown: Option<i64>,
    /// Rates between the two scrapes.
    pub rates: Option<Rates>,
}

/// Lag of one partition.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Lag {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i64,
    /// Messages behind the high watermark.
    pub lag: i64,
}

/// Rates between two scrapes.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Rates {
    /// Seconds between the scrapes.
    pub seconds: f64,
    /// Kafka messages consumed per second.
    pub events_in_per_s: f64,
    /// Rows committed to the `events` table per second.
    pub events_stored_per_s: f64,
    /// Events dropped as duplicates per second.
    pub duplicates_per_s: f64,
    /// Records published to the DLQ per second.
    pub dlq_per_s: f64,
    /// Records published to the DLQ between the scrapes.
    pub dlq_records: f64,
}

/// Summed over the ingest instances that answered.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct IngestTotal {
    /// Lag over every partition.
    pub lag_total: i64,
    /// Messages consumed per second.
    pub events_in_per_s: f64,
    /// DLQ records per second.
    pub dlq_per_s: f64,
}

/// Runs `estate status`: prints the report; fails when a source was unavailable.
pub fn run(args: &StatusArgs) -> Result<()> {
    let status = collect(args)?;
    match args.format {
        Format::Table => print!("{}", render(&status)),
        Format::Json => println!("{}", serde_json::to_string_pretty(&status).expect("serialising a report")),
    }
    if status.unavailable.is_empty() { Ok(()) } else { Err(Error::Unavailable(status.unavailable)) }
}

/// Asks every source (the query service while the ingest endpoints are sampled).
pub fn collect(args: &StatusArgs) -> Result<Status> {
    if args.query_url.is_none() && args.ingest_metrics.is_empty() {
        return Err(Error::Config("nothing to report on: give --query-url and/or --ingest-metrics".into()));
    }
    let query_src = match (&args.query_url, &args.token) {
        (Some(u), Some(t)) => Some((u.clone(), t.clone())),
        (Some(_), None) => return Err(Error::Config("--query-url needs --token (an operator token; or ESTATE_TOKEN)".into())),
        (None, _) => None,
    };
    let urls: Vec<String> = args.ingest_metrics.iter().map(|u| metrics_url(u)).collect();
    let at = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string();
    let (query, ingest) = std::thread::scope(|s| {
        let q = s.spawn(|| query_src.map(|(u, t)| ask_query(&u, &t, args.timeout)));
        let ingest = sample_ingest(&urls, args.sample, args.timeout);
        (q.join().expect("query status thread panicked"), ingest)
    });
    let mut unavailable = Vec::new();
    if let Some(q) = &query
        && !q.errors.is_empty()
    {
        unavailable.push(format!("query service {}: {}", q.url, q.errors.join("; ")));
    }
    for i in &ingest {
        if let Some(e) = &i.error {
            unavailable.push(format!("ingest {}: {e}", i.url));
        }
    }
    let answered: Vec<&IngestStatus> = ingest.iter().filter(|i| i.lag_total.is_some()).collect();
    let ingest_total = (!answered.is_empty()).then(|| IngestTotal {
        lag_total: answered.iter().filter_map(|i| i.lag_total).sum(),
        events_in_per_s: answered.iter().filter_map(|i| i.rates.as_ref()).map(|r| r.events_in_per_s).sum(),
        dlq_per_s: answered.iter().filter_map(|i| i.rates.as_ref()).map(|r| r.dlq_per_s).sum(),
    });
    Ok(Status { at, query, ingest, ingest_total, unavailable })
}

/// `http://h:p` → `http://h:p/metrics`; a URL with a path is kept.
fn metrics_url(u: &str) -> String {
    let u = u.trim_end_matches('/');
    let has_path = u.strip_prefix("http://").or_else(|| u.strip_prefix("https://")).is_some_and(|r| r.contains('/'));
    if has_path { u.to_owned() } else { format!("{u}/metrics") }
}

fn ask_query(url: &str, token: &str, timeout: Duration) -> QueryStatus {
    let mut q = QueryStatus { url: url.to_owned(), ..QueryStatus::default() };
    let mut run = |what: &str, sql_text: &str| match sql(url, token, sql_text, timeout) {
        Ok(rows) => Some(rows),
        Err(e) => {
            q.errors.push(format!("{what}: {e}"));
            None
        }
    };
    let pollers = run(
        "pollers",
        "SELECT tenant, poller, status, CAST(last_heartbeat AS VARCHAR) AS last_heartbeat, \
         CAST(seconds_since AS DOUBLE) AS seconds_since FROM pollers ORDER BY status, tenant, poller",
    );
    let loss_kinds = run("loss_audit", "SELECT kind, count(*) AS n, coalesce(sum(missing), 0) AS missing FROM loss_audit GROUP BY kind");
    let loss_rows = loss_kinds.as_ref().and_then(|_| {
        run(
            "loss_audit",
            "SELECT tenant, poller, epoch, kind, count(*) AS ranges, sum(missing) AS missing FROM loss_audit \
             GROUP BY tenant, poller, epoch, kind ORDER BY missing DESC, tenant, poller, epoch LIMIT 50",
        )
    });
    let fresh = run(
        "freshness",
        "SELECT tenant, CAST(max(ingested_at) AS VARCHAR) AS last_ingested_at, \
         date_part('epoch', now()) - date_part('epoch', max(ingested_at)) AS age_seconds \
         FROM events GROUP BY tenant ORDER BY tenant",
    );
    q.pollers = pollers.map(|rows| {
        let mut p = Pollers::default();
        for r in rows {
            let status = text(&r, "status");
            match status.as_str() {
                "up" => p.up += 1,
                "late" => p.late += 1,
                _ => p.down += 1,
            }
            if status != "up" {
                p.not_up.push(PollerRow {
                    tenant: text(&r, "tenant"),
                    poller: text(&r, "poller"),
                    status,
                    last_heartbeat: opt_text(&r, "last_heartbeat"),
                    seconds_since: num(&r, "seconds_since"),
                });
            }
        }
        p
    });
    if let (Some(kinds), Some(rows)) = (loss_kinds, loss_rows) {
        let mut l = Loss::default();
        for k in kinds {
            let n = num(&k, "n").unwrap_or(0.0) as u64;
            match text(&k, "kind").as_str() {
                "tail" => l.tails += n,
                _ => l.gaps += n,
            }
            l.missing += num(&k, "missing").unwrap_or(0.0) as i64;
        }
        l.worst = rows
            .iter()
            .map(|r| LossRow {
                tenant: text(r, "tenant"),
                poller: text(r, "poller"),
                epoch: num(r, "epoch").unwrap_or(0.0) as i64,
                kind: text(r, "kind"),
                ranges: num(r, "ranges").unwrap_or(0.0) as i64,
                missing: num(r, "missing").unwrap_or(0.0) as i64,
            })
            .collect();
        q.loss = Some(l);
    }
    q.freshness = fresh.map(|rows| {
        rows.iter()
            .map(|r| Freshness {
                tenant: text(r, "tenant"),
                last_ingested_at: opt_text(r, "last_ingested_at"),
                age_seconds: num(r, "age_seconds"),
            })
            .collect()
    });
    q
}

fn opt_text(r: &Value, k: &str) -> Option<String> {
    match &r[k] {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        v => Some(v.to_string()),
    }
}

fn text(r: &Value, k: &str) -> String {
    opt_text(r, k).unwrap_or_default()
}

fn num(r: &Value, k: &str) -> Option<f64> {
    match &r[k] {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// Scrapes every endpoint, waits `sample`, scrapes them again.
fn sample_ingest(urls: &[String], sample: Duration, timeout: Duration) -> Vec<IngestStatus> {
    if urls.is_empty() {
        return Vec::new();
    }
    let scrape = |u: &String| (Instant::now(), http_get(u, timeout).map(|t| parse_metrics(&t)));
    let first: Vec<_> = urls.iter().map(scrape).collect();
    std::thread::sleep(sample.saturating_sub(first[0].0.elapsed()));
    urls.iter()
        .zip(first)
        .map(|(u, (t0, a))| {
            let mut st = IngestStatus { url: u.clone(), ..IngestStatus::default() };
            let a = match a {
                Ok(a) => a,
                Err(e) => {
                    st.error = Some(e.to_string());
                    return st;
                }
            };
            let (t1, b) = scrape(u);
            let latest = match &b {
                Ok(b) => b,
                Err(e) => {
                    st.error = Some(format!("second scrape: {e}"));
                    &a
                }
            };
            st.partitions_assigned = value(latest, "estate_ingest_partitions_assigned", &[]);
            st.lag = lags(latest);
            st.lag_total = Some(st.lag.iter().map(|l| l.lag).sum());
            st.lag_unknown = st.partitions_assigned.map(|a| (a as i64 - st.lag.len() as i64).max(0));
            if let Ok(b) = &b {
                st.rates = Some(rates(&a, b, (t1 - t0).as_secs_f64()));
            }
            st
        })
        .collect()
}

/// One sample of the Prometheus text format.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricSample {
    /// Metric name.
    pub name: String,
    /// Labels.
    pub labels: Vec<(String, String)>,
    /// Value.
    pub value: f64,
}

/// Parses the Prometheus text exposition format (comments and malformed
/// lines are skipped).
pub fn parse_metrics(text: &str) -> Vec<MetricSample> {
    text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()).filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<MetricSample> {
    let (name, rest) = match line.find(['{', ' ']) {
        Some(i) => line.split_at(i),
        None => return None,
    };
    let mut labels = Vec::new();
    let rest = if let Some(mut r) = rest.strip_prefix('{') {
        loop {
            r = r.trim_start_matches([',', ' ']);
            if let Some(after) = r.strip_prefix('}') {
                break after;
            }
            let (k, v) = r.split_once("=\"")?;
            let mut val = String::new();
            let mut chars = v.char_indices();
            let end = loop {
                match chars.next()? {
                    (_, '\\') => match chars.next()?.1 {
                        'n' => val.push('\n'),
                        c => val.push(c),
                    },
                    (i, '"') => break i,
                    (_, c) => val.push(c),
                }
            };
            labels.push((k.trim().to_owned(), val));
            r = &v[end + 1..];
        }
    } else {
        rest
    };
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some(MetricSample { name: name.to_owned(), labels, value })
}

fn has_labels(s: &MetricSample, want: &[(&str, &str)]) -> bool {
    want.iter().all(|(k, v)| s.labels.iter().any(|(a, b)| a == k && b == v))
}

/// The sum of a metric over the label sets that carry `want`.
fn value(samples: &[MetricSample], name: &str, want: &[(&str, &str)]) -> Option<f64> {
    let mut it = samples.iter().filter(|s| s.name == name && has_labels(s, want)).peekable();
    it.peek()?;
    Some(it.map(|s| s.value).sum())
}

fn lags(samples: &[MetricSample]) -> Vec<Lag> {
    let mut out: Vec<Lag> = samples
        .iter()
        .filter(|s| s.name == "estate_ingest_consumer_lag")
        .map(|s| {
            let get = |k: &str| s.labels.iter().find(|(a, _)| a == k).map(|(_, v)| v.clone()).unwrap_or_default();
            Lag { topic: get("topic"), partition: get("partition").parse().unwrap_or(-1), lag: s.value as i64 }
        })
        .collect();
    out.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
    out
}

fn rates(a: &[MetricSample], b: &[MetricSample], seconds: f64) -> Rates {
    let delta = |name: &str, want: &[(&str, &str)]| {
        // A counter that went down means the instance restarted: count from zero.
        let (x, y) = (value(a, name, want).unwrap_or(0.0), value(b, name, want).unwrap_or(0.0));
        if y >= x { y - x } else { y }
    };
    let per_s = |d: f64| if seconds > 0.0 { d / seconds } else { 0.0 };
    let dlq = delta("estate_ingest_dlq_records_total", &[]);
    Rates {
        seconds,
        events_in_per_s: per_s(delta("estate_ingest_events_in_total", &[])),
        events_stored_per_s: per_s(delta("estate_ingest_rows_written_total", &[("table", "events")])),
        duplicates_per_s: per_s(delta("estate_ingest_duplicates_total", &[])),
        dlq_per_s: per_s(dlq),
        dlq_records: dlq,
    }
}

/// The table form.
pub fn render(s: &Status) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "estate status at {}", s.at);
    if let Some(q) = &s.query {
        let _ = writeln!(o, "\nquery service {}", q.url);
        match &q.pollers {
            Some(p) => {
                let _ = writeln!(o, "  pollers: {} up, {} late, {} down", p.up, p.late, p.down);
                for r in &p.not_up {
                    let since = r.seconds_since.map_or_else(|| "never".to_owned(), |x| format!("{x:.0} s ago"));
                    let _ = writeln!(
                        o,
                        "    {:5} {}/{}  last heartbeat {} ({since})",
                        r.status,
                        r.tenant,
                        r.poller,
                        r.last_heartbeat.as_deref().unwrap_or("-")
                    );
                }
            }
            None => o.push_str("  pollers: UNAVAILABLE\n"),
        }
        match &q.loss {
            Some(l) => {
                let _ = writeln!(o, "  loss audit: {} gaps, {} lost tails, {} messages missing", l.gaps, l.tails, l.missing);
                for r in &l.worst {
                    let _ = writeln!(o, "    {}/{} epoch {}  {}  {} ranges, {} missing", r.tenant, r.poller, r.epoch, r.kind, r.ranges, r.missing);
                }
            }
            None => o.push_str("  loss audit: UNAVAILABLE\n"),
        }
        match &q.freshness {
            Some(f) if f.is_empty() => o.push_str("  freshness: no events stored yet\n"),
            Some(f) => {
                o.push_str("  freshness (now - newest ingested_at):\n");
                let w = f.iter().map(|x| x.tenant.len()).max().unwrap_or(0);
                for x in f {
                    let age = x.age_seconds.map_or_else(|| "-".to_owned(), |a| format!("{a:.1} s"));
                    let _ = writeln!(o, "    {:w$}  {:>10}  newest {}", x.tenant, age, x.last_ingested_at.as_deref().unwrap_or("-"));
                }
            }
            None => o.push_str("  freshness: UNAVAILABLE\n"),
        }
    }
    for i in &s.ingest {
        let _ = writeln!(o, "\ningest {}", i.url);
        match i.lag_total {
            None => {
                o.push_str("  UNAVAILABLE\n");
                continue;
            }
            Some(total) => {
                let assigned = i.partitions_assigned.map_or_else(|| "?".to_owned(), |p| format!("{p:.0}"));
                let unknown = match i.lag_unknown {
                    Some(n) if n > 0 => format!(" (not yet reported for {n} partitions)"),
                    _ => String::new(),
                };
                let _ = writeln!(o, "  partitions assigned {assigned}, consumer lag {total}{unknown}");
                for l in &i.lag {
                    let _ = writeln!(o, "    {}/{}  lag {}", l.topic, l.partition, l.lag);
                }
            }
        }
        match &i.rates {
            Some(r) => {
                let _ = writeln!(
                    o,
                    "  over {:.1} s: {:.1} events/s in, {:.1} events/s stored, {:.1} duplicates/s, {:.2} DLQ records/s ({} records)",
                    r.seconds, r.events_in_per_s, r.events_stored_per_s, r.duplicates_per_s, r.dlq_per_s, r.dlq_records
                );
            }
            None => o.push_str("  rates: UNAVAILABLE\n"),
        }
    }
    if let Some(t) = &s.ingest_total
        && s.ingest.len() > 1
    {
        let _ = writeln!(
            o,
            "\ningest total: consumer lag {}, {:.1} events/s in, {:.2} DLQ records/s",
            t.lag_total, t.events_in_per_s, t.dlq_per_s
        );
    }
    if !s.unavailable.is_empty() {
        o.push_str("\nUNAVAILABLE:\n");
        for u in &s.unavailable {
            let _ = writeln!(o, "  {u}");
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCRAPE_A: &str = "# HELP estate_ingest_events_in Kafka messages consumed\n\
        # TYPE estate_ingest_events_in counter\n\
        estate_ingest_events_in_total 100\n\
        estate_ingest_rows_written_total{table=\"events\"} 80\n\
        estate_ingest_rows_written_total{table=\"receipts\"} 7\n\
        estate_ingest_dlq_records_total 2\n\
        estate_ingest_consumer_lag{topic=\"estate.events\",partition=\"1\"} 5\n\
        estate_ingest_consumer_lag{topic=\"estate.events\",partition=\"0\"} 3\n\
        estate_ingest_partitions_assigned 2\n\
        # EOF\n";

    #[test]
    fn prometheus_text_is_parsed() {
        let s = parse_metrics(SCRAPE_A);
        assert_eq!(s.len(), 7);
        assert_eq!(value(&s, "estate_ingest_rows_written_total", &[("table", "events")]), Some(80.0));
        assert_eq!(value(&s, "estate_ingest_rows_written_total", &[]), Some(87.0));
        assert_eq!(value(&s, "estate_ingest_duplicates_total", &[]), None);
        let odd = parse_metrics("m{a=\"x\\\"y,z\",b=\"\"} 1.5e3\nbroken{a=\"x} 1\n");
        assert_eq!(odd, vec![MetricSample { name: "m".into(), labels: vec![("a".into(), "x\"y,z".into()), ("b".into(), String::new())], value: 1500.0 }]);
        assert_eq!(
            lags(&s),
            vec![
                Lag { topic: "estate.events".into(), partition: 0, lag: 3 },
                Lag { topic: "estate.events".into(), partition: 1, lag: 5 }
            ]
        );
    }

    #[test]
    fn rates_come_from_two_scrapes() {
        let a = parse_metrics(SCRAPE_A);
        let b = parse_metrics(&SCRAPE_A.replace(" 100\n", " 300\n").replace("} 80\n", "} 260\n").replace("records_total 2", "records_total 6"));
        let r = rates(&a, &b, 2.0);
        assert_eq!((r.events_in_per_s, r.events_stored_per_s, r.dlq_per_s, r.dlq_records, r.duplicates_per_s), (100.0, 90.0, 2.0, 4.0, 0.0));
        // A restart (counter reset) counts from zero rather than going negative.
        let r = rates(&b, &a, 1.0);
        assert_eq!(r.events_in_per_s, 100.0);
    }

    #[test]
    fn urls_and_the_report() {
        assert_eq!(metrics_url("http://h:1"), "http://h:1/metrics");
        assert_eq!(metrics_url("http://h:1/"), "http://h:1/metrics");
        assert_eq!(metrics_url("http://h:1/custom/metrics"), "http://h:1/custom/metrics");
        let s = Status {
            at: "2026-01-01T00:00:00Z".into(),
            query: Some(QueryStatus {
                url: "http://q:1".into(),
                pollers: Some(Pollers {
                    up: 3,
                    late: 1,
                    down: 0,
                    not_up: vec![PollerRow { tenant: "acme".into(), poller: "p1".into(), status: "late".into(), last_heartbeat: Some("t".into()), seconds_since: Some(75.2) }],
                }),
                loss: None,
                freshness: Some(vec![Freshness { tenant: "acme".into(), last_ingested_at: Some("t".into()), age_seconds: Some(1.34) }]),
                errors: vec!["loss_audit: boom".into()],
            }),
            ingest: vec![IngestStatus { url: "http://i:1/metrics".into(), error: Some("connecting: refused".into()), ..Default::default() }],
            ingest_total: None,
            unavailable: vec!["query service http://q:1: loss_audit: boom".into(), "ingest http://i:1/metrics: connecting: refused".into()],
        };
        let t = render(&s);
        for want in [
            "pollers: 3 up, 1 late, 0 down",
            "late  acme/p1  last heartbeat t (75 s ago)",
            "loss audit: UNAVAILABLE",
            "1.3 s  newest t",
            "ingest http://i:1/metrics\n  UNAVAILABLE",
            "UNAVAILABLE:\n  query service http://q:1: loss_audit: boom\n  ingest http://i:1/metrics: connecting: refused",
        ] {
            assert!(t.contains(want), "{want:?} not in\n{t}");
        }
    }
}
