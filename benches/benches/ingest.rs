//! Criterion benches of ingest's CPU path, on the NMIS mix (about 300-byte
//! messages from a simulated estate, 5 % duplicates):
//! decode, dedup, Arrow building, Parquet encoding, and the whole in-process
//! pipeline (all four, through `PartitionState::process`).
//!
//! `cargo bench -p estate-benches --bench ingest` (figures in docs/performance.md).

use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use deltalake::parquet::arrow::ArrowWriter;
use estate_benches::pipeline::{self, Message};
use estate_ingest::{DedupWindow, TableKind, dedup_key, writer_properties};
use estate_schemas::{DecodeContext, EventsBuilder, Record, Source};

const N: usize = 50_000;
const NOW_MS: i64 = 1_790_000_000_000;

fn messages() -> Vec<Message> {
    pipeline::nmis_messages(N, 11, NOW_MS)
}

fn tenant(m: &Message) -> Option<&str> {
    m.key.as_deref().and_then(|k| std::str::from_utf8(k).ok())
}

fn ctx(tenant: Option<&str>) -> DecodeContext<'_> {
    DecodeContext { tenant, max_bytes: 1 << 20, now_ms: NOW_MS, max_future_ms: 3_600_000 }
}

fn benches(c: &mut Criterion) {
    let msgs = messages();
    let bytes: usize = msgs.iter().map(|m| m.payload.len()).sum();
    println!("{} messages, {:.0} bytes each on average", msgs.len(), bytes as f64 / msgs.len() as f64);
    let mut g = c.benchmark_group("ingest");
    g.throughput(Throughput::Elements(msgs.len() as u64));
    g.sample_size(10);

    g.bench_function("decode", |b| {
        b.iter(|| {
            let mut ok = 0usize;
            for m in &msgs {
                ok += usize::from(estate_schemas::decode(&m.payload, &ctx(tenant(m))).is_ok());
            }
            black_box(ok)
        });
    });

    let keys: Vec<u128> = msgs
        .iter()
        .filter_map(|m| match estate_schemas::decode(&m.payload, &ctx(tenant(m))) {
            Ok(Record::Event(e)) => Some(dedup_key(tenant(m).unwrap_or_default(), &e.event_id)),
            _ => None,
        })
        .collect();
    g.bench_function("dedup", |b| {
        b.iter_batched(
            || DedupWindow::new(3_600_000, 2_000_000),
            |mut w| {
                for (i, k) in keys.iter().enumerate() {
                    black_box(w.check_and_insert(*k, NOW_MS, i as i64));
                }
                w
            },
            BatchSize::LargeInput,
        );
    });

    g.bench_function("arrow_build", |b| {
        b.iter(|| {
            let mut eb = EventsBuilder::with_capacity(msgs.len());
            for (i, m) in msgs.iter().enumerate() {
                let t = tenant(m).unwrap_or_default();
                if let Ok(Record::Event(e)) = estate_schemas::decode(&m.payload, &ctx(Some(t))) {
                    eb.append(t, &e, NOW_MS, Source { topic: "estate.events", partition: 0, offset: i as i64 });
                }
            }
            black_box(eb.finish().expect("batch"))
        });
    });

    let batch = {
        let mut st = pipeline::partition(&pipeline::process_config());
        let cfg = pipeline::process_config();
        for (i, m) in msgs.iter().enumerate() {
            st.process(i as i64, m.key.as_deref(), &m.payload, NOW_MS, &cfg);
        }
        st.events.finish().expect("batch")
    };
    g.throughput(Throughput::Elements(batch.num_rows() as u64));
    g.bench_function("parquet_encode", |b| {
        b.iter(|| {
            let mut buf = Vec::with_capacity(8 << 20);
            let mut w = ArrowWriter::try_new(&mut buf, TableKind::Events.schema(), Some(writer_properties(TableKind::Events))).expect("writer");
            w.write(&batch).expect("write");
            w.close().expect("close");
            black_box(buf.len())
        });
    });

    g.throughput(Throughput::Elements(msgs.len() as u64));
    g.bench_function("pipeline", |b| {
        b.iter(|| {
            let mut buf = Vec::with_capacity(8 << 20);
            black_box(pipeline::run(&msgs, NOW_MS, 25_000, &mut buf).expect("pipeline"))
        });
    });
    g.finish();
}

criterion_group!(ingest, benches);
criterion_main!(ingest);
