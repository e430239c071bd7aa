//! `estate verify`: compares the estate, as the query service and the DLQ
//! topic report it, with a loadgen ground-truth file.
//!
//! Checks: event rows per tenant equal the distinct events sent; no
//! duplicate event_id per tenant; `loss_audit` has no row for the run's
//! tenants; the highest receipted seq of every (poller, epoch) equals the
//! highest sent; DLQ records of this run, counted by distinct source
//! coordinates, equal the rejects by reason.

use std::collections::{BTreeMap, HashSet};
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use estate_ingest::dlq::{self, DlqFilter, DlqSource};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::estate::UNKNOWN_TENANT;
use crate::truth::Truth;

/// Options of `estate verify`.
#[derive(Debug, Clone, clap::Args)]
pub struct VerifyArgs {
    /// Ground-truth file written by `estate loadgen`.
    #[arg(long, env = "ESTATE_TRUTH")]
    pub truth: std::path::PathBuf,

    /// Query service base URL (`http://host:port`).
    #[arg(long, env = "ESTATE_QUERY_URL")]
    pub query_url: String,

    /// Operator bearer token for the query service.
    #[arg(long, env = "ESTATE_TOKEN", hide_env_values = true)]
    pub token: String,

    /// Kafka bootstrap servers, to count the DLQ (the query service has no
    /// DLQ table). Without it the DLQ check is reported as not run, which
    /// fails verification.
    #[arg(long, env = "ESTATE_BROKERS")]
    pub brokers: Option<String>,

    /// Dead-letter topic.
    #[arg(long, env = "ESTATE_DLQ_TOPIC", default_value = "estate.dlq")]
    pub dlq_topic: String,

    /// Keep asking until everything matches or this long has passed (ingest lag).
    #[arg(long, env = "ESTATE_VERIFY_WAIT", default_value = "0s", value_parser = estate_poller::parse_duration)]
    pub wait: Duration,

    /// librdkafka setting passed through (repeatable).
    #[arg(long = "kafka-opt", env = "ESTATE_KAFKA_OPTS", value_parser = estate_poller::parse_kv, value_delimiter = ';', hide_env_values = true)]
    pub kafka_opts: Vec<(String, String)>,
}

/// What the estate reports.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observed {
    /// `tenant → (rows, distinct event_id)` in `events`.
    pub events: BTreeMap<String, (u64, u64)>,
    /// `loss_audit` rows: `(tenant, poller, epoch, first_missing, missing)`.
    pub loss: Vec<(String, String, i64, i64, i64)>,
    /// `(tenant, poller, epoch) → max seq` in `receipts`.
    pub max_seq: BTreeMap<(String, String, i64), i64>,
    /// DLQ records of the run by reason (distinct source coordinates);
    /// `None` when the DLQ could not be read.
    pub dlq: Option<BTreeMap<String, u64>>,
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// What is checked.
    pub check: &'static str,
    /// Of what (tenant, poller, reason).
    pub subject: String,
    /// Expected.
    pub expected: String,
    /// Found.
    pub actual: String,
    /// Whether they agree.
    pub ok: bool,
}

fn check(check: &'static str, subject: impl Into<String>, expected: impl ToString, actual: impl ToString) -> Check {
    let (expected, actual) = (expected.to_string(), actual.to_string());
    Check { check, subject: subject.into(), ok: expected == actual, expected, actual }
}

/// Compares the estate with the ground truth. Pure.
pub fn compare(truth: &Truth, obs: &Observed) -> Vec<Check> {
    let mut out = Vec::new();
    for (t, tt) in &truth.tenants {
        let (rows, distinct) = obs.events.get(t).copied().unwrap_or((0, 0));
        out.push(check("events per tenant", t, tt.distinct_events, rows));
        out.push(check("duplicate event_id", t, 0, rows - distinct.min(rows)));
    }
    let ours: HashSet<&str> = truth.tenants.keys().map(String::as_str).chain([UNKNOWN_TENANT]).collect();
    let pollers: HashSet<&str> = truth.pollers.iter().map(|p| p.poller.as_str()).collect();
    let gaps: Vec<_> = obs.loss.iter().filter(|l| ours.contains(l.0.as_str()) && (l.0 != UNKNOWN_TENANT || pollers.contains(l.1.as_str()))).collect();
    out.push(check("loss_audit rows", "all", 0, gaps.len()));
    for (t, p, e, first, missing) in gaps.iter().take(20) {
        out.push(check("loss_audit gap", format!("{t}/{p}/{e}"), "none", format!("{missing} missing from seq {first}")));
    }
    for p in &truth.pollers {
        let got = obs.max_seq.get(&(p.tenant.clone(), p.poller.clone(), p.epoch)).copied().unwrap_or(0);
        out.push(check("max seq", format!("{}/{}/{}", p.tenant, p.poller, p.epoch), p.max_seq, got));
    }
    match &obs.dlq {
        None => out.push(check("dlq", "all", "counted", "not read (give --brokers)")),
        Some(dlq) => {
            let reasons: std::collections::BTreeSet<&String> = truth.rejects.keys().chain(dlq.keys()).collect();
            for r in reasons {
                out.push(check("dlq by reason", r.as_str(), truth.rejects.get(r).copied().unwrap_or(0), dlq.get(r).copied().unwrap_or(0)));
            }
        }
    }
    out
}

/// Renders the report as a text table.
pub fn render(checks: &[Check]) -> String {
    let w = |f: &dyn Fn(&Check) -> usize, h: &str| checks.iter().map(f).max().unwrap_or(0).max(h.len());
    let (a, b, c, d) = (
        w(&|x| x.check.len(), "check"),
        w(&|x| x.subject.len(), "subject"),
        w(&|x| x.expected.len(), "expected"),
        w(&|x| x.actual.len(), "actual"),
    );
    let mut s = format!("{:a$}  {:b$}  {:>c$}  {:>d$}  result\n", "check", "subject", "expected", "actual");
    s.push_str(&format!("{}\n", "-".repeat(a + b + c + d + 14)));
    for x in checks {
        let r = if x.ok { "ok" } else { "MISMATCH" };
        s.push_str(&format!("{:a$}  {:b$}  {:>c$}  {:>d$}  {r}\n", x.check, x.subject, x.expected, x.actual));
    }
    s
}

/// Runs `estate verify`: prints the table; `Err(Mismatch)` on any mismatch.
pub fn run(args: &VerifyArgs) -> Result<()> {
    let truth = Truth::read(&args.truth)?;
    let deadline = Instant::now() + args.wait;
    loop {
        let obs = observe(args, &truth)?;
        let checks = compare(&truth, &obs);
        let bad = checks.iter().filter(|c| !c.ok).count();
        if bad == 0 || Instant::now() >= deadline {
            print!("{}", render(&checks));
            println!("{} checks, {} mismatching", checks.len(), bad);
            return if bad == 0 { Ok(()) } else { Err(Error::Mismatch(bad)) };
        }
        tracing::info!(mismatching = bad, "not yet consistent; asking again");
        std::thread::sleep(Duration::from_secs(2));
    }
}

fn sql_list(items: impl Iterator<Item = String>) -> String {
    items.map(|t| format!("'{}'", t.replace('\'', "''"))).collect::<Vec<_>>().join(", ")
}

fn query(args: &VerifyArgs, q: &str) -> Result<Vec<Value>> {
    sql(&args.query_url, &args.token, q, Duration::from_secs(120))
}

/// Asks the query service (and the DLQ topic) what the estate holds for
/// the truth's tenants.
pub fn observe(args: &VerifyArgs, truth: &Truth) -> Result<Observed> {
    let tenants = sql_list(truth.tenants.keys().cloned().chain([UNKNOWN_TENANT.to_owned()]));
    let mut obs = Observed::default();
    let rows = query(args, &format!(
        "SELECT tenant, count(*) AS n, count(DISTINCT event_id) AS d FROM events WHERE tenant IN ({tenants}) GROUP BY tenant"
    ))?;
    for r in rows {
        obs.events.insert(str_of(&r, "tenant"), (int_of(&r, "n") as u64, int_of(&r, "d") as u64));
    }
    let rows = query(args, &format!(
        "SELECT tenant, poller, epoch, first_missing, missing FROM loss_audit WHERE tenant IN ({tenants})"
    ))?;
    obs.loss = rows
        .iter()
        .map(|r| (str_of(r, "tenant"), str_of(r, "poller"), int_of(r, "epoch"), int_of(r, "first_missing"), int_of(r, "missing")))
        .collect();
    let rows = query(args, &format!(
        "SELECT tenant, poller, epoch, max(seq_end) AS max_seq FROM receipts WHERE tenant IN ({tenants}) GROUP BY tenant, poller, epoch"
    ))?;
    for r in rows {
        obs.max_seq.insert((str_of(&r, "tenant"), str_of(&r, "poller"), int_of(&r, "epoch")), int_of(&r, "max_seq"));
    }
    obs.dlq = match &args.brokers {
        Some(b) => Some(count_dlq(b, &args.dlq_topic, &truth.dlq_marker, &args.kafka_opts)?),
        None => None,
    };
    Ok(obs)
}

fn str_of(r: &Value, k: &str) -> String {
    match &r[k] {
        Value::String(s) => s.clone(),
        v => v.to_string(),
    }
}

fn int_of(r: &Value, k: &str) -> i64 {
    match &r[k] {
        Value::Number(n) => n.as_i64().unwrap_or(0),
        Value::String(s) => s.parse().unwrap_or(0),
        _ => 0,
    }
}

/// `POST {query_url}/v1/sql` over plain HTTP/1.0 with a bearer token;
/// returns the JSON rows. `timeout` bounds connecting, sending and reading.
pub fn sql(query_url: &str, token: &str, sql: &str, timeout: Duration) -> Result<Vec<Value>> {
    let url = query_url.trim_end_matches('/');
    let err = |detail: String| Error::Query { url: url.to_owned(), detail };
    let body = serde_json::json!({ "sql": sql }).to_string();
    let headers = format!("Authorization: Bearer {token}\r\nContent-Type: application/json\r\nAccept: application/json\r\n");
    let (status, body) = exchange(&format!("{url}/v1/sql"), "POST", &headers, &body, timeout).map_err(err)?;
    if status != 200 {
        return Err(err(format!("HTTP {status} for {sql:?}: {body}")));
    }
    match serde_json::from_str::<Value>(&body) {
        Ok(Value::Array(rows)) => Ok(rows),
        _ => Err(err(format!("expected a JSON array of rows, got {}", &body[..body.floor_char_boundary(200)]))),
    }
}

/// `GET {url}` over plain HTTP/1.0 (e.g. a `/metrics` endpoint); the body
/// of a 200 answer.
pub fn http_get(url: &str, timeout: Duration) -> Result<String> {
    let err = |detail: String| Error::Http { url: url.to_owned(), detail };
    let (status, body) = exchange(url, "GET", "", "", timeout).map_err(err)?;
    if status != 200 {
        return Err(err(format!("HTTP {status}: {}", &body[..body.floor_char_boundary(200)])));
    }
    Ok(body)
}

/// One plain HTTP/1.0 request (`url` = `http://host:port/path`): status and body.
fn exchange(url: &str, method: &str, headers: &str, body: &str, timeout: Duration) -> Result<(u16, String), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| "only http:// URLs are supported (terminate TLS in front of this client)".to_owned())?;
    let (hostport, path) = rest.split_once('/').map_or((rest, "/".to_owned()), |(h, p)| (h, format!("/{p}")));
    let addr = hostport
        .to_socket_addrs()
        .map_err(|e| format!("resolving {hostport}: {e}"))?
        .next()
        .ok_or_else(|| format!("{hostport} resolves to no address"))?;
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connecting: {e}"))?;
    s.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    write!(s, "{method} {path} HTTP/1.0\r\nHost: {hostport}\r\n{headers}Content-Length: {}\r\n\r\n{body}", body.len())
        .map_err(|e| format!("sending: {e}"))?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).map_err(|e| format!("reading: {e}"))?;
    let text = String::from_utf8_lossy(&resp);
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| "malformed HTTP answer".to_owned())?;
    let status: u16 = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    Ok((status, body.to_owned()))
}

/// Counts this run's DLQ records by reason, each distinct source coordinate
/// once (every record when `marker` is empty).
fn count_dlq(brokers: &str, topic: &str, marker: &str, opts: &[(String, String)]) -> Result<BTreeMap<String, u64>> {
    let src = DlqSource { brokers: brokers.to_owned(), dlq_topic: topic.to_owned(), kafka_opts: opts.to_vec(), timeout: Duration::from_secs(120) };
    let mut seen: HashSet<u128> = HashSet::new();
    let mut by_reason: BTreeMap<String, u64> = BTreeMap::new();
    let marker = marker.as_bytes();
    let report = dlq::scan(&src, &DlqFilter::default(), |r| {
        if (marker.is_empty() || r.value.windows(marker.len()).any(|w| w == marker)) && seen.insert(r.source_id()) {
            *by_reason.entry(r.reason).or_default() += 1;
        }
        ControlFlow::Continue(())
    })
    .map_err(|e| Error::Dlq(Box::new(e)))?;
    if !report.complete {
        return Err(Error::Dlq(Box::new(report.incomplete(topic, src.timeout))));
    }
    Ok(by_reason)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::truth::{PollerTruth, TenantTruth};

    fn truth() -> Truth {
        Truth {
            tenants: [("lg-t01".to_owned(), TenantTruth { distinct_events: 10, event_messages: 12 })].into(),
            pollers: vec![PollerTruth { tenant: "lg-t01".into(), poller: "lg-t01-p01".into(), epoch: 5, max_seq: 14 }],
            rejects: [("invalid_json".to_owned(), 2)].into(),
            ..Truth::default()
        }
    }

    fn good() -> Observed {
        Observed {
            events: [("lg-t01".to_owned(), (10, 10))].into(),
            loss: vec![("other".into(), "p".into(), 1, 3, 1)],
            max_seq: [(("lg-t01".to_owned(), "lg-t01-p01".to_owned(), 5), 14)].into(),
            dlq: Some([("invalid_json".to_owned(), 2)].into()),
        }
    }

    #[test]
    fn a_consistent_estate_passes() {
        let c = compare(&truth(), &good());
        assert!(c.iter().all(|c| c.ok), "{}", render(&c));
        assert!(render(&c).contains("events per tenant"));
    }

    #[test]
    fn each_kind_of_mismatch_is_caught() {
        type Tamper = Box<dyn Fn(&mut Observed)>;
        let cases: Vec<(&str, Tamper)> = vec![
            ("events per tenant", Box::new(|o| o.events.insert("lg-t01".into(), (9, 9)).map(|_| ()).unwrap_or(()))),
            ("duplicate event_id", Box::new(|o| o.events.insert("lg-t01".into(), (10, 9)).map(|_| ()).unwrap_or(()))),
            ("loss_audit rows", Box::new(|o| o.loss.push(("lg-t01".into(), "lg-t01-p01".into(), 5, 7, 2)))),
            ("max seq", Box::new(|o| o.max_seq.insert(("lg-t01".into(), "lg-t01-p01".into(), 5), 13).map(|_| ()).unwrap_or(()))),
            ("dlq by reason", Box::new(|o| o.dlq = Some([("invalid_json".to_owned(), 1)].into()))),
            ("dlq by reason", Box::new(|o| o.dlq = Some([("invalid_json".to_owned(), 2), ("too_large".to_owned(), 1)].into()))),
            ("dlq", Box::new(|o| o.dlq = None)),
            ("events per tenant", Box::new(|o| o.events.clear())),
        ];
        for (name, f) in cases {
            let mut o = good();
            f(&mut o);
            let c = compare(&truth(), &o);
            let bad: Vec<&Check> = c.iter().filter(|c| !c.ok).collect();
            assert!(bad.iter().any(|c| c.check == name), "{name} not caught:\n{}", render(&c));
            assert!(render(&c).contains("MISMATCH"));
        }
    }
}
