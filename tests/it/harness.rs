//! Test harness: real brokers (librdkafka's mock cluster in this process,
//! or a tansu process), the real `estate` binary as a child process, a real
//! store directory, and checks through DataFusion over the Delta tables.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use deltalake::DeltaTableBuilder;
use deltalake::arrow::array::RecordBatch;
use deltalake::arrow::util::pretty::pretty_format_batches;
use deltalake::datafusion::prelude::SessionContext;
use rdkafka::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Milliseconds since the epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

/// One wire-format v1 event.
pub fn event_json(tenant: &str, poller: &str, seq: i64, event_id: &str, node: usize, t: i64) -> String {
    format!(
        r#"{{"v":1,"type":"event","tenant":"{tenant}","poller":"{poller}","epoch":1,"seq":{seq},"event_id":"{event_id}","time":{t},"node":"node-{node:04}","node_uuid":"uuid-{node}","event":"Interface Down","element":"Gi0/{seq_mod}","level":"Major","state":"down","details":"Uplink to dist-sw-02 down for testing purposes only","attrs":{{"location":"Sydney","role":"core"}}}}"#,
        seq_mod = seq % 48
    )
}

/// A message to produce.
#[derive(Debug, Clone)]
pub struct Msg {
    pub topic: String,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
}

/// Produces messages with an idempotent, acks=all producer and waits for all.
pub fn produce(brokers: &str, msgs: &[Msg]) {
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "120000")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .expect("producer");
    for m in msgs {
        loop {
            let mut r = BaseRecord::<[u8], [u8]>::to(&m.topic).payload(&m.payload);
            if let Some(k) = &m.key {
                r = r.key(k);
            }
            match p.send(r) {
                Ok(()) => break,
                Err((e, _)) => {
                    assert!(
                        matches!(e, rdkafka::error::KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull)),
                        "produce failed: {e}"
                    );
                    p.poll(Duration::from_millis(50));
                }
            }
        }
        p.poll(Duration::ZERO);
    }
    p.flush(Duration::from_secs(120)).expect("flush producer");
}

/// A running `estate ingest` process.
pub struct Ingest {
    pub child: Child,
    pub metrics_port: u16,
    pub log: PathBuf,
}

impl Ingest {
    /// Starts the real binary.
    pub fn start(brokers: &str, store: &Path, group: &str, extra: &[&str], log_dir: &Path, n: usize) -> Ingest {
        let metrics_port = free_port();
        let log = log_dir.join(format!("ingest-{n}.log"));
        let logf = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_estate"))
            .arg("ingest")
            .args(["--brokers", brokers, "--group", group])
            .arg("--store")
            .arg(store)
            .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
            .args(["--flush-interval", "300ms"])
            .args(extra)
            .env("ESTATE_LOG", std::env::var("ESTATE_TEST_LOG").unwrap_or_else(|_| "info,buoyant_kernel=warn,deltalake_core=warn,librdkafka=warn".into()))
            .stdout(Stdio::null())
            .stderr(logf)
            .spawn()
            .expect("spawning estate ingest");
        Ingest { child, metrics_port, log }
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait for a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < deadline, "ingest did not exit after SIGTERM; log: {}", self.log_tail());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The last lines of its log.
    pub fn log_tail(&self) -> String {
        let s = std::fs::read_to_string(&self.log).unwrap_or_else(|e| format!("(cannot read log: {e})"));
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// The `/metrics` text.
    pub fn metrics(&self) -> String {
        http_get(self.metrics_port, "/metrics").unwrap_or_default()
    }
}

impl Drop for Ingest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A tiny HTTP/1.0 GET over loopback.
pub fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out.split_once("\r\n\r\n").map(|x| x.1.to_owned()).unwrap_or(out))
}

/// An HTTP/1.0 POST over loopback; returns (status, content type, body).
pub fn http_post(port: u16, path: &str, token: Option<&str>, body: &str, accept: &str) -> (u16, String, Vec<u8>) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(
        s,
        "POST {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n{auth}Accept: {accept}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let split = out.windows(4).position(|w| w == b"\r\n\r\n").expect("HTTP header end");
    let head = String::from_utf8_lossy(&out[..split]).to_string();
    let status: u16 = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let ctype = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-type:").map(|v| v.trim().to_owned()))
        .unwrap_or_default();
    (status, ctype, out[split + 4..].to_vec())
}

/// A Flight SQL client on loopback carrying a bearer token.
pub async fn flight_client(port: u16, token: &str) -> arrow_flight::sql::client::FlightSqlServiceClient<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut c = arrow_flight::sql::client::FlightSqlServiceClient::new(channel);
    c.set_token(token.to_owned());
    c
}

/// Every batch of every endpoint of a Flight SQL answer.
pub async fn flight_fetch(
    c: &mut arrow_flight::sql::client::FlightSqlServiceClient<tonic::transport::Channel>,
    info: arrow_flight::FlightInfo,
) -> Vec<RecordBatch> {
    use futures::TryStreamExt;
    let mut out = Vec::new();
    for ep in info.endpoint {
        let stream = c.do_get(ep.ticket.unwrap()).await.unwrap();
        out.extend(stream.try_collect::<Vec<_>>().await.unwrap());
    }
    out
}

/// A consumer assigned every partition of `topic` from the beginning, with
/// a group of its own that commits nothing.
pub fn reader_from_start(brokers: &str, topic: &str, partitions: i32) -> rdkafka::consumer::BaseConsumer {
    use rdkafka::consumer::Consumer as _;
    let c: rdkafka::consumer::BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("test-reader-{}", rand::random::<u32>()))
        .set("enable.auto.commit", "false")
        .create()
        .expect("test reader");
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, rdkafka::Offset::Beginning).unwrap();
    }
    c.assign(&tpl).unwrap();
    c
}

/// Sums a Prometheus metric over all its label sets.
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Runs SQL over the store's Delta tables (every table that exists).
pub fn sql(store: &Path, query: &str) -> Vec<RecordBatch> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let ctx = SessionContext::new();
        for t in ["events", "nodes", "heartbeats", "receipts"] {
            let dir = store.join(t);
            if !dir.join("_delta_log").exists() {
                continue;
            }
            let url = url::Url::from_directory_path(&dir).unwrap();
            let table = DeltaTableBuilder::from_url(url).unwrap().load().await.unwrap();
            table.update_datafusion_session(&ctx.state()).unwrap();
            let provider = table.table_provider().await.unwrap();
            ctx.register_table(t, Arc::clone(&provider)).unwrap();
        }
        ctx.sql(query).await.unwrap_or_else(|e| panic!("{query}: {e}")).collect().await.unwrap()
    })
}

/// A single integer from a query (0 for an empty result).
pub fn sql_i64(store: &Path, query: &str) -> i64 {
    let b = sql(store, query);
    let Some(first) = b.iter().find(|b| b.num_rows() > 0) else { return 0 };
    let col = deltalake::arrow::compute::cast(first.column(0), &deltalake::arrow::datatypes::DataType::Int64).unwrap();
    col.as_any().downcast_ref::<deltalake::arrow::array::Int64Array>().unwrap().value(0)
}

/// Pretty text of a query result, for assertion messages.
pub fn sql_text(store: &Path, query: &str) -> String {
    pretty_format_batches(&sql(store, query)).map(|d| d.to_string()).unwrap_or_default()
}

/// Waits until `f` is true, or panics with `what` after `timeout`.
pub fn wait_for(timeout: Duration, what: &str, f: impl FnMut() -> bool) {
    wait_for_logged(timeout, what, &[], f);
}

/// Like [`wait_for`], printing the ingest logs on timeout.
pub fn wait_for_logged(timeout: Duration, what: &str, logs: &[&Ingest], mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        if Instant::now() >= deadline {
            let tails: Vec<String> = logs.iter().map(|i| format!("--- {}\n{}", i.log.display(), i.log_tail())).collect();
            panic!("timed out after {timeout:?} waiting for {what}\n{}", tails.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Rows in `events` (0 before the table exists).
pub fn events_count(store: &Path) -> i64 {
    if !store.join("events/_delta_log").exists() {
        return 0;
    }
    sql_i64(store, "SELECT count(*) FROM events")
}

/// A tansu broker process on a free port, durable on SQLite in `dir`.
pub struct Tansu {
    pub child: Child,
    pub port: u16,
    dir: PathBuf,
}

/// Where the tansu binary is, or a loud failure naming the install command.
pub fn tansu_bin() -> PathBuf {
    let home = std::env::var("HOME").unwrap_or_default();
    let cands = [PathBuf::from(&home).join(".cargo/bin/tansu"), PathBuf::from("/usr/local/bin/tansu")];
    if let Some(p) = cands.iter().find(|p| p.exists()) {
        return p.clone();
    }
    if let Ok(out) = Command::new("which").arg("tansu").output()
        && out.status.success()
    {
        return PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    }
    panic!(
        "the tansu broker is not installed; these tests need it. Install it with: scripts/install-test-deps.sh \
         (or: cargo install tansu --version 0.6.0 --locked --no-default-features --features libsql)"
    );
}

impl Tansu {
    /// Starts tansu in `dir` (created) on a free port and waits until it accepts connections.
    pub fn start(dir: &Path) -> Tansu {
        std::fs::create_dir_all(dir).unwrap();
        let port = free_port();
        let t = Tansu { child: Self::spawn(dir, port), port, dir: dir.to_owned() };
        t.wait_ready();
        t
    }

    fn spawn(dir: &Path, port: u16) -> Child {
        let url = format!("tcp://127.0.0.1:{port}");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("tansu.log")).unwrap();
        Command::new(tansu_bin())
            .current_dir(dir)
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url, "--storage-engine", "sqlite://tansu.db"])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawning tansu")
    }

    /// Waits until the broker accepts connections. (Called once the child is
    /// owned by `self`, so a failure still kills it on drop.)
    fn wait_ready(&self) {
        let port = self.port;
        wait_for(Duration::from_secs(20), "tansu to accept connections", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
    }

    /// SIGKILLs the broker process.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the broker again on the same port, with the same data.
    pub fn restart(&mut self) {
        self.kill();
        self.child = Self::spawn(&self.dir, self.port);
        self.wait_ready();
    }

    /// `127.0.0.1:PORT`.
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Creates topics through the Kafka admin API.
    pub fn create_topics(&self, topics: &[(&str, i32)]) {
        use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
        use rdkafka::client::DefaultClientContext;
        let admin: AdminClient<DefaultClientContext> =
            ClientConfig::new().set("bootstrap.servers", self.brokers()).create().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let new: Vec<NewTopic<'_>> = topics.iter().map(|(n, p)| NewTopic::new(n, *p, TopicReplication::Fixed(1))).collect();
        let res = rt.block_on(admin.create_topics(&new, &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))))).unwrap();
        for r in res {
            if let Err((t, e)) = r {
                assert!(matches!(e, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists), "creating {t}: {e}");
            }
        }
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        self.kill();
    }
}
