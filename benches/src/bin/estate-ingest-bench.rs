//! Ingest's JSON-to-Parquet path on one thread, for the side-by-side with
//! DuckDB's `COPY … TO … (FORMAT parquet)` (`benches/scripts/ingest_compare.py`).
//!
//! `estate-ingest-bench generate --events N --out events.ndjson` writes the
//! NMIS mix as NDJSON (one wire message per line); `estate-ingest-bench
//! convert --input events.ndjson --out events.parquet` runs ingest's
//! pipeline on it (decode, validate, dedup by event_id, Arrow, Parquet with
//! ingest's writer settings) and prints one JSON line of figures. The Kafka
//! key (the tenant) is read from each line's `tenant` field, as a producer
//! would set it; that scan is part of the timed work.

use std::io::{BufWriter, Read, Write};
use std::path::PathBuf;
use std::time::Instant;

use clap::{Parser, Subcommand};
use estate_benches::pipeline::{self, Message, Runner};
use memchr::memchr;

#[derive(Debug, Parser)]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Write the NMIS mix as NDJSON.
    Generate {
        /// Messages.
        #[arg(long, default_value_t = 1_000_000)]
        events: usize,
        /// Output file.
        #[arg(long)]
        out: PathBuf,
        /// Seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// A plain rdkafka producer (idempotent, acks=all, lz4, linger 20 ms):
    /// produces the NMIS mix, or the lines of `--input`, keyed by tenant,
    /// waits for every acknowledgement and prints one JSON line of figures.
    Fill {
        /// Bootstrap servers.
        #[arg(long)]
        brokers: String,
        /// Topic.
        #[arg(long, default_value = "estate.events")]
        topic: String,
        /// Messages (of the generated mix; ignored with `--input`).
        #[arg(long, default_value_t = 200_000)]
        events: usize,
        /// NDJSON file whose lines are produced as they are.
        #[arg(long)]
        input: Option<PathBuf>,
        /// One key for every message instead of its tenant (as one poller
        /// agent, which keys by its own tenant, would send them).
        #[arg(long)]
        key: Option<String>,
        /// Add the three headers a poller agent puts on each record
        /// (`estate-poller`, `estate-epoch`, `estate-seq`), so that the
        /// records are the agent's, byte for byte.
        #[arg(long)]
        poller_headers: bool,
    },
    /// The ceiling: a plain rdkafka consumer that only counts messages from
    /// the start of a topic, until it has seen `--events`; prints messages/s.
    Count {
        /// Bootstrap servers.
        #[arg(long)]
        brokers: String,
        /// Topic.
        #[arg(long, default_value = "estate.events")]
        topic: String,
        /// Messages to wait for.
        #[arg(long)]
        events: u64,
        /// librdkafka consumer settings, `key=value` (repeatable).
        #[arg(long = "consumer-opt")]
        consumer_opts: Vec<String>,
    },
    /// NDJSON to Parquet through ingest's pipeline, one thread.
    Convert {
        /// NDJSON input.
        #[arg(long)]
        input: PathBuf,
        /// Parquet output.
        #[arg(long)]
        out: PathBuf,
        /// Messages per flush (one row group each).
        #[arg(long, default_value_t = 500_000)]
        flush_rows: usize,
    },
}

// The allocator the `estate` binary runs with.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The generated messages' clock, so that the file is the same every time.
const NOW_MS: i64 = 1_790_000_000_000;

fn tenant_of(line: &[u8]) -> Option<&[u8]> {
    static PAT: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\"tenant\":\""));
    let at = PAT.find(line)? + PAT.needle().len();
    let end = memchr(b'"', &line[at..])?;
    Some(&line[at..at + end])
}

fn main() -> anyhow::Result<()> {
    match Args::parse().cmd {
        Cmd::Generate { events, out, seed } => {
            let msgs = pipeline::nmis_messages(events, seed, NOW_MS);
            let mut w = BufWriter::new(std::fs::File::create(&out)?);
            for m in &msgs {
                w.write_all(&m.payload)?;
                w.write_all(b"\n")?;
            }
            w.flush()?;
            eprintln!("wrote {} messages to {}", msgs.len(), out.display());
        }
        Cmd::Fill { brokers, topic, events, input, key, poller_headers } => {
            let mut msgs = match input {
                Some(path) => std::fs::read(path)?
                    .split(|b| *b == b'\n')
                    .filter(|l| !l.is_empty())
                    .map(|l| Message { key: tenant_of(l).map(<[u8]>::to_vec), payload: l.to_vec() })
                    .collect(),
                None => pipeline::nmis_messages(events, 1, NOW_MS),
            };
            if let Some(k) = key {
                msgs.iter_mut().for_each(|m| m.key = Some(k.clone().into_bytes()));
            }
            fill(&brokers, &topic, &msgs, poller_headers)?;
        }
        Cmd::Count { brokers, topic, events, consumer_opts } => count(&brokers, &topic, events, &consumer_opts)?,
        Cmd::Convert { input, out, flush_rows } => {
            let started = Instant::now();
            let mut file = std::fs::File::open(&input)?;
            let mut runner = Runner::new(BufWriter::with_capacity(1 << 20, std::fs::File::create(&out)?))?;
            let mut json_bytes = 0u64;
            // The file is read in blocks and each whole line is processed
            // where it lies, as ingest processes the records of a fetch in
            // the consumer's buffer: no copy per message.
            let mut buf = vec![0u8; 8 << 20];
            let mut filled = 0;
            loop {
                if filled == buf.len() {
                    buf.resize(buf.len() * 2, 0); // a line longer than the block
                }
                let n = file.read(&mut buf[filled..])?;
                filled += n;
                let mut start = 0;
                while let Some(nl) = memchr(b'\n', &buf[start..filled]) {
                    let line = &buf[start..start + nl];
                    start += nl + 1;
                    json_bytes += line.len() as u64 + 1;
                    if !line.is_empty() {
                        runner.process(tenant_of(line), line, NOW_MS);
                        if runner.held() >= flush_rows {
                            runner.write()?;
                        }
                    }
                }
                if n == 0 {
                    let line = &buf[start..filled]; // a last line without a newline
                    if !line.is_empty() {
                        json_bytes += line.len() as u64;
                        runner.process(tenant_of(line), line, NOW_MS);
                    }
                    break;
                }
                buf.copy_within(start..filled, 0);
                filled -= start;
            }
            runner.write()?;
            let (r, state) = runner.finish()?;
            let secs = started.elapsed().as_secs_f64();
            let report = serde_json::json!({
                "messages": r.messages,
                "events_stored": r.events,
                "duplicates": r.duplicates,
                "seconds": secs,
                "messages_per_s": r.messages as f64 / secs,
                "json_bytes": json_bytes,
                "parquet_bytes": r.parquet_bytes,
                "dedup_keys": state.dedup.len(),
                "peak_rss_bytes": pipeline::peak_rss(),
            });
            println!("{report}");
        }
    }
    Ok(())
}

fn fill(brokers: &str, topic: &str, msgs: &[Message], poller_headers: bool) -> anyhow::Result<()> {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let p: BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "20")
        .set("compression.type", "lz4")
        .create()?;
    let started = Instant::now();
    for (i, m) in msgs.iter().enumerate() {
        let mut rec = BaseRecord::to(topic).payload(&m.payload);
        if let Some(k) = &m.key {
            rec = rec.key(k);
        }
        if poller_headers {
            let seq = (i + 1).to_string();
            rec = rec.headers(
                OwnedHeaders::new_with_capacity(3)
                    .insert(Header { key: estate_poller::HEADER_POLLER, value: Some("bench") })
                    .insert(Header { key: estate_poller::HEADER_EPOCH, value: Some("1") })
                    .insert(Header { key: estate_poller::HEADER_SEQ, value: Some(seq.as_str()) }),
            );
        }
        loop {
            match p.send(rec) {
                Ok(()) => break,
                Err((rdkafka::error::KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull), r)) => {
                    rec = r;
                    p.poll(std::time::Duration::from_millis(10));
                }
                Err((e, _)) => anyhow::bail!("producing: {e}"),
            }
        }
    }
    p.flush(std::time::Duration::from_secs(300))?;
    let secs = started.elapsed().as_secs_f64();
    eprintln!("produced {} messages in {secs:.1} s", msgs.len());
    let bytes: usize = msgs.iter().map(|m| m.payload.len()).sum();
    let report = serde_json::json!({
        "messages": msgs.len(),
        "payload_bytes": bytes,
        "seconds": secs,
        "messages_per_s": msgs.len() as f64 / secs,
    });
    println!("{report}");
    Ok(())
}

fn count(brokers: &str, topic: &str, events: u64, opts: &[String]) -> anyhow::Result<()> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let mut cfg = rdkafka::ClientConfig::new();
    cfg.set("bootstrap.servers", brokers)
        .set("group.id", format!("estate-bench-count-{}", std::process::id()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false");
    for o in opts {
        let (k, v) = o.split_once('=').ok_or_else(|| anyhow::anyhow!("--consumer-opt {o:?}: expected key=value"))?;
        cfg.set(k, v);
    }
    let c: BaseConsumer = cfg.create()?;
    c.subscribe(&[topic])?;
    let started = Instant::now();
    let mut n = 0u64;
    let mut bytes = 0u64;
    let mut first = None;
    while n < events {
        if started.elapsed() > std::time::Duration::from_secs(1800) {
            anyhow::bail!("counted only {n} of {events} messages in 30 minutes");
        }
        match c.poll(std::time::Duration::from_millis(100)) {
            Some(Ok(m)) => {
                first.get_or_insert_with(|| started.elapsed().as_secs_f64());
                n += 1;
                bytes += rdkafka::Message::payload(&m).map_or(0, <[u8]>::len) as u64;
            }
            Some(Err(e)) => eprintln!("consumer error: {e}"),
            None => {}
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!("{}", serde_json::json!({"messages": n, "bytes": bytes, "seconds": secs, "first_message_s": first, "messages_per_s": n as f64 / secs}));
    Ok(())
}
