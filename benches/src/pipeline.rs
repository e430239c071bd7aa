//! Ingest's in-process pipeline without Kafka or Delta: wire messages
//! through `PartitionState::process` (decode, validate, tenant rule, dedup,
//! Arrow building) and the finished batches through ingest's Parquet writer
//! settings. The criterion benches and `estate-ingest-bench` both run it.

use std::io::Write;
use std::sync::Arc;

use deltalake::arrow::array::RecordBatch;
use deltalake::parquet::arrow::ArrowWriter;
use estate_ingest::{DedupWindow, PartitionState, ProcessConfig, TableKind, TopicPartition, Watermarks, writer_properties};
use estate_loadgen::estate::{Estate, EstateConfig};
use estate_loadgen::mix::{DEFAULT_MIX, Mix};

/// One wire message: the Kafka key (the tenant) and the payload.
#[derive(Debug, Clone)]
pub struct Message {
    /// Kafka key.
    pub key: Option<Vec<u8>>,
    /// Wire-format JSON.
    pub payload: Vec<u8>,
}

/// `n` messages of the NMIS mix from a simulated estate of 10 tenants × 4
/// pollers × 50 nodes, with mirror pairs, node snapshots and 5 % exact
/// duplicates (no malformed messages), all timed at `now_ms`. Deterministic
/// for a seed.
pub fn nmis_messages(n: usize, seed: u64, now_ms: i64) -> Vec<Message> {
    let cfg = EstateConfig {
        tenants: 10,
        pollers: 4,
        nodes: 50,
        duplicates: 0.05,
        malformed: 0.0,
        mirror_pairs: 1,
        tenant_prefix: "bench".into(),
        run_id: "b1".into(),
        epoch: 1,
        topic: "estate.events".into(),
        per_tenant_topic: false,
        too_large_bytes: 2 << 20,
        seed,
    };
    let mix = Mix::parse(DEFAULT_MIX).expect("the shipped mix parses");
    let mut estate = Estate::new(cfg, mix);
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        estate.step(now_ms, &mut out);
    }
    out.truncate(n);
    out.into_iter().map(|m| Message { key: m.key, payload: m.payload }).collect()
}

/// The settings ingest runs with by default (1 h window, 2M keys).
pub fn process_config() -> ProcessConfig {
    ProcessConfig {
        max_message_bytes: 1 << 20,
        max_future_ms: 3_600_000,
        deduped_enabled: false,
        dedup_window_ms: 3_600_000,
        dedup_max_keys: 2_000_000,
    }
}

/// A fresh partition state for `estate.events`/0.
pub fn partition(cfg: &ProcessConfig) -> PartitionState {
    let tp = TopicPartition { topic: Arc::from("estate.events"), partition: 0 };
    let marks = Watermarks { committed: [-1; 4], deduped: -1 };
    PartitionState::new(tp, marks, DedupWindow::new(cfg.dedup_window_ms, cfg.dedup_max_keys))
}

/// What a pipeline run produced.
#[derive(Debug, Default, Clone, Copy)]
pub struct PipelineOut {
    /// Messages in.
    pub messages: u64,
    /// Event rows written.
    pub events: u64,
    /// Duplicates dropped.
    pub duplicates: u64,
    /// Parquet bytes written.
    pub parquet_bytes: u64,
}

/// One partition's pipeline writing the `events` rows as Parquet to a sink,
/// one row group per flush (node snapshots and heartbeats are built but
/// only events are encoded).
pub struct Runner<W: Write + Send> {
    /// The partition's state (dedup window, builders, counts).
    pub state: PartitionState,
    writer: ArrowWriter<W>,
    cfg: ProcessConfig,
    next_offset: i64,
    held: usize,
    out: PipelineOut,
}

impl<W: Write + Send> std::fmt::Debug for Runner<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runner").field("next_offset", &self.next_offset).field("out", &self.out).finish_non_exhaustive()
    }
}

impl<W: Write + Send> Runner<W> {
    /// A fresh partition writing to `sink`.
    pub fn new(sink: W) -> anyhow::Result<Self> {
        let cfg = process_config();
        let writer = ArrowWriter::try_new(sink, TableKind::Events.schema(), Some(writer_properties(TableKind::Events)))?;
        Ok(Runner { state: partition(&cfg), writer, cfg, next_offset: 0, held: 0, out: PipelineOut::default() })
    }

    /// Processes one message at the next offset; it is held until [`Self::write`].
    pub fn process(&mut self, key: Option<&[u8]>, payload: &[u8], now_ms: i64) {
        self.state.process(self.next_offset, key, payload, now_ms, &self.cfg);
        self.next_offset += 1;
        self.held += 1;
    }

    /// Messages processed since the last write.
    pub fn held(&self) -> usize {
        self.held
    }

    /// Processes `messages` (the next offsets) and flushes them as one row group.
    pub fn flush(&mut self, messages: &[Message], now_ms: i64) -> anyhow::Result<()> {
        for m in messages {
            self.process(m.key.as_deref(), &m.payload, now_ms);
        }
        self.write()
    }

    /// Writes the rows held as one row group.
    pub fn write(&mut self) -> anyhow::Result<()> {
        let batch: RecordBatch = self.state.events.finish()?;
        let _ = self.state.nodes.finish()?;
        let _ = self.state.heartbeats.finish()?;
        self.out.messages += std::mem::take(&mut self.held) as u64;
        self.out.events += batch.num_rows() as u64;
        self.writer.write(&batch)?;
        self.writer.flush()?;
        Ok(())
    }

    /// Closes the Parquet file.
    pub fn finish(mut self) -> anyhow::Result<(PipelineOut, PartitionState)> {
        self.writer.finish()?;
        self.out.parquet_bytes = self.writer.bytes_written() as u64;
        self.out.duplicates = self.state.counts.duplicates;
        Ok((self.out, self.state))
    }
}

/// Runs `messages` through a fresh partition, flushing every `flush_rows`.
pub fn run<W: Write + Send>(messages: &[Message], now_ms: i64, flush_rows: usize, sink: W) -> anyhow::Result<PipelineOut> {
    let mut r = Runner::new(sink)?;
    for chunk in messages.chunks(flush_rows.max(1)) {
        r.flush(chunk, now_ms)?;
    }
    Ok(r.finish()?.0)
}

/// Peak resident set of this process (`VmHWM`), in bytes.
pub fn peak_rss() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: u64 = s.lines().find_map(|l| l.strip_prefix("VmHWM:"))?.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipeline_stores_distinct_events_and_writes_parquet() {
        let now = 1_790_000_000_000;
        let msgs = nmis_messages(5_000, 3, now);
        let avg = msgs.iter().map(|m| m.payload.len()).sum::<usize>() / msgs.len();
        assert!((200..600).contains(&avg), "realistic message size, got {avg} bytes");
        let mut buf = Vec::new();
        let out = run(&msgs, now, 1_000, &mut buf).unwrap();
        assert_eq!(out.messages, 5_000);
        assert!(out.duplicates > 0, "the mix has duplicates");
        assert!(out.events > 3_000 && out.events + out.duplicates <= 5_000, "{out:?}");
        assert_eq!(out.parquet_bytes as usize, buf.len());
        assert_eq!(&buf[..4], b"PAR1");
    }
}
