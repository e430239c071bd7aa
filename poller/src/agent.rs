//! The running agent: an input thread (read, parse, stamp, spool), a sender
//! thread (spool to Kafka) and a housekeeping thread (fsync, checkpoints,
//! heartbeats, gauges).

use std::io::BufRead;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use estate_schemas::is_valid_tenant;

use crate::config::{Mode, PollerArgs};
use crate::error::{Error, Result};
use crate::input::{Item, parse_json, parse_nmis};
use crate::metrics::{self, Metrics};
use crate::sender::{self, Control, SenderConfig};
use crate::spool::{Spool, SpoolConfig};
use crate::state::InputPos;
use crate::tail::{Line, Tailer};
use crate::wire::{Stamp, encode_heartbeat};

const READ_BATCH: usize = 4096;
/// Malformed lines logged one by one per read batch; the rest are summarised.
const MALFORMED_LOGGED: usize = 20;

#[derive(Debug)]
enum Source {
    Nmis(PathBuf),
    JsonFile(PathBuf),
    Stdin,
}

#[derive(Debug)]
enum ThreadEvent {
    InputEnded,
    Failed(&'static str, Error),
    SenderDone(Result<()>),
}

/// Runs the agent until `shutdown` resolves (or, for `--json-lines -`, until
/// its input ends and the spool is drained).
pub async fn run(args: PollerArgs, shutdown: impl std::future::Future<Output = ()>) -> Result<()> {
    if !is_valid_tenant(&args.tenant) {
        return Err(Error::Config(format!("--tenant {:?} is not a valid tenant id ([a-z0-9][a-z0-9_-]{{0,62}})", args.tenant)));
    }
    if args.poller_id.is_empty() || args.poller_id.len() > 128 || args.poller_id.chars().any(char::is_control) {
        return Err(Error::Config("--poller-id must be 1 to 128 printable characters".into()));
    }
    if args.spool_max_bytes < 64 << 10 {
        return Err(Error::Config("--spool-max-bytes must be at least 64KiB".into()));
    }
    let source = match (&args.nmis_log, &args.json_lines) {
        (Some(p), None) => Source::Nmis(p.clone()),
        (None, Some(p)) if p == "-" => Source::Stdin,
        (None, Some(p)) => Source::JsonFile(PathBuf::from(p)),
        _ => return Err(Error::Config("give exactly one of --nmis-log and --json-lines".into())),
    };
    let segment_bytes = args.spool_segment_bytes.min(args.spool_max_bytes / 4).max(4096);
    let (spool, rec) = Spool::open(SpoolConfig {
        dir: args.spool_dir.clone(),
        max_bytes: args.spool_max_bytes,
        segment_bytes,
        fsync: args.spool_fsync,
        tenant: args.tenant.clone(),
        poller: args.poller_id.clone(),
    })?;
    tracing::info!(
        tenant = %args.tenant, poller = %args.poller_id, epoch = spool.epoch(), new_epoch = rec.new_epoch,
        last_seq = spool.last_seq(), depth = rec.depth, torn_bytes = rec.torn_bytes,
        input_line = rec.input.line, topic = %args.topic(), mode = ?args.mode, "poller starting"
    );
    if rec.new_epoch {
        tracing::warn!(epoch = spool.epoch(), "no spool state found: starting a new epoch (seq restarts at 1)");
    }
    let spool = Arc::new(spool);
    let metrics = Arc::new(Metrics::default());
    if let Some(addr) = args.metrics_addr.0 {
        let local = metrics::serve(addr, metrics.clone()).await?;
        tracing::info!(addr = %local, "metrics listening");
    }
    let ctl = Arc::new(Control::default());
    let input_stop = Arc::new(AtomicBool::new(false));
    let hk_stop = Arc::new(AtomicBool::new(false));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<ThreadEvent>();

    let input = {
        let (spool, metrics, stop, tx) = (spool.clone(), metrics.clone(), input_stop.clone(), tx.clone());
        let (tenant, poller, poll) = (args.tenant.clone(), args.poller_id.clone(), args.poll_interval);
        let start = rec.input;
        std::thread::Builder::new()
            .name("estate-input".into())
            .spawn(move || {
                let r = input_loop(source, start, &spool, &tenant, &poller, poll, &metrics, &stop);
                let _ = tx.send(match r {
                    Ok(true) => ThreadEvent::InputEnded,
                    Ok(false) => return,
                    Err(e) => ThreadEvent::Failed("input", e),
                });
            })
            .map_err(|e| Error::Internal(format!("spawning the input thread: {e}")))?
    };
    let sender = {
        let (spool, metrics, ctl, tx) = (spool.clone(), metrics.clone(), ctl.clone(), tx.clone());
        let cfg = SenderConfig {
            brokers: args.brokers.clone(),
            topic: args.topic(),
            tenant: args.tenant.clone(),
            poller: args.poller_id.clone(),
            compression: args.compression,
            mode: args.mode,
            sync_interval: args.sync_interval,
            max_inflight: args.max_inflight.max(1),
            kafka_opts: args.kafka_opts.clone(),
        };
        std::thread::Builder::new()
            .name("estate-sender".into())
            .spawn(move || {
                let r = sender::run(&spool, &cfg, &ctl, &metrics);
                let _ = tx.send(ThreadEvent::SenderDone(r));
            })
            .map_err(|e| Error::Internal(format!("spawning the sender thread: {e}")))?
    };
    let hk = {
        let (spool, metrics, stop, tx) = (spool.clone(), metrics.clone(), hk_stop.clone(), tx.clone());
        let (tenant, poller, interval) = (args.tenant.clone(), args.poller_id.clone(), args.heartbeat_interval);
        std::thread::Builder::new()
            .name("estate-housekeeping".into())
            .spawn(move || {
                if let Err(e) = housekeeping(&spool, &tenant, &poller, interval, &metrics, &stop) {
                    let _ = tx.send(ThreadEvent::Failed("housekeeping", e));
                }
            })
            .map_err(|e| Error::Internal(format!("spawning the housekeeping thread: {e}")))?
    };
    drop(tx);
    metrics.set_ready(true);

    tokio::pin!(shutdown);
    let mut outcome: Result<()> = Ok(());
    let mut sender_done = false;
    tokio::select! {
        _ = &mut shutdown => {}
        ev = rx.recv() => match ev {
            Some(ThreadEvent::InputEnded) => {
                tracing::info!("end of input: draining the spool");
                ctl.drain_fully.store(true, Ordering::Relaxed);
            }
            Some(ThreadEvent::Failed(what, e)) => {
                tracing::error!(thread = what, error = %e, "stopping");
                outcome = Err(e);
            }
            Some(ThreadEvent::SenderDone(r)) => {
                sender_done = true;
                outcome = r.and(Err(Error::Internal("the sender stopped unexpectedly".into())));
            }
            None => outcome = Err(Error::Internal("worker threads vanished".into())),
        },
    }
    // Stop reading input; a final heartbeat carries the last seq.
    input_stop.store(true, Ordering::Relaxed);
    spool.close();
    // (stdin may block forever in a read: do not wait long for it.)
    let _ = tokio::time::timeout(Duration::from_secs(2), tokio::task::spawn_blocking(move || input.join())).await;
    if outcome.is_ok()
        && args.mode == Mode::Stream
        && let Err(e) = heartbeat(&spool, &args.tenant, &args.poller_id, &metrics)
    {
        tracing::warn!(error = %e, "final heartbeat not spooled");
    }
    *ctl.deadline.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now() + args.drain_timeout);
    ctl.stop.store(true, Ordering::Relaxed);
    if !sender_done {
        while let Some(ev) = rx.recv().await {
            match ev {
                ThreadEvent::SenderDone(r) => {
                    if let Err(e) = r {
                        outcome = outcome.and(Err(e));
                    }
                    break;
                }
                ThreadEvent::Failed(what, e) => tracing::error!(thread = what, error = %e, "error while stopping"),
                ThreadEvent::InputEnded => {}
            }
        }
    }
    let _ = tokio::task::spawn_blocking(move || sender.join()).await;
    hk_stop.store(true, Ordering::Relaxed);
    let _ = tokio::task::spawn_blocking(move || hk.join()).await;
    spool.checkpoint()?;
    tracing::info!(last_seq = spool.last_seq(), depth = spool.depth(), "poller stopped; unacknowledged records stay in the spool");
    outcome
}

#[allow(clippy::too_many_arguments)]
fn input_loop(
    source: Source,
    start: InputPos,
    spool: &Spool,
    tenant: &str,
    poller: &str,
    poll: Duration,
    metrics: &Metrics,
    stop: &AtomicBool,
) -> Result<bool> {
    let (path, json) = match source {
        Source::Nmis(p) => (p, false),
        Source::JsonFile(p) => (p, true),
        Source::Stdin => return stdin_loop(spool, tenant, poller, metrics, stop),
    };
    let mut tailer = Tailer::new(path.clone(), start);
    let mut lines: Vec<Line> = Vec::with_capacity(READ_BATCH);
    while !stop.load(Ordering::Relaxed) {
        lines.clear();
        tailer.poll(READ_BATCH, &mut lines)?;
        if lines.is_empty() {
            std::thread::sleep(poll);
            continue;
        }
        if !spool_lines(&lines, json, &path.display().to_string(), spool, tenant, poller, metrics)? {
            return Ok(false);
        }
    }
    Ok(false)
}

/// Parses, stamps and spools lines. False when the spool was closed while
/// waiting for space (shutting down).
fn spool_lines(lines: &[Line], json: bool, file: &str, spool: &Spool, tenant: &str, poller: &str, metrics: &Metrics) -> Result<bool> {
    let mut items: Vec<Item<'_>> = Vec::with_capacity(lines.len());
    let mut bad = Vec::new();
    if json {
        parse_json(lines, tenant, &mut items, &mut bad);
    } else {
        parse_nmis(lines, tenant, &mut items, &mut bad);
    }
    for (line, reason) in bad.iter().take(MALFORMED_LOGGED) {
        tracing::warn!(file, line, reason, "malformed input line skipped");
    }
    if bad.len() > MALFORMED_LOGGED {
        tracing::warn!(file, more = bad.len() - MALFORMED_LOGGED, "more malformed input lines skipped in this read");
    }
    let n = spool.append(
        &items,
        |it| Some(it.pos()),
        |it, seq, epoch, buf| it.encode(&Stamp { tenant, poller, epoch, seq }, buf),
        false,
    )?;
    metrics.lines_read.inc_by(lines.len() as u64);
    metrics.malformed.inc_by(bad.len() as u64);
    metrics.records_spooled.inc_by(n as u64);
    if n < items.len() {
        return Ok(false);
    }
    if let Some(last) = lines.last() {
        spool.note_input(last.pos);
    }
    Ok(true)
}

fn stdin_loop(spool: &Spool, tenant: &str, poller: &str, metrics: &Metrics, stop: &AtomicBool) -> Result<bool> {
    let stdin = std::io::stdin();
    let mut r = std::io::BufReader::with_capacity(1 << 20, stdin.lock());
    let mut pos = InputPos::default();
    let mut lines = Vec::with_capacity(READ_BATCH);
    let mut buf = Vec::new();
    loop {
        lines.clear();
        let mut eof = false;
        // Read one line (blocking), then whatever else is already buffered.
        while lines.len() < READ_BATCH {
            buf.clear();
            let n = r.read_until(b'\n', &mut buf).map_err(Error::io("reading", "stdin"))?;
            if n == 0 {
                eof = true;
                break;
            }
            pos.offset += n as u64;
            pos.line += 1;
            let bytes = buf.strip_suffix(b"\n").unwrap_or(&buf).to_vec();
            lines.push(Line { bytes, pos });
            if r.buffer().is_empty() {
                break;
            }
        }
        if !spool_lines(&lines, true, "stdin", spool, tenant, poller, metrics)? || stop.load(Ordering::Relaxed) {
            return Ok(false);
        }
        if eof {
            return Ok(true);
        }
    }
}

fn heartbeat(spool: &Spool, tenant: &str, poller: &str, metrics: &Metrics) -> Result<()> {
    let depth = spool.depth();
    let full = spool.is_full();
    let now = chrono::Utc::now().timestamp_millis();
    spool.append(
        &[()],
        |_| None,
        |_, seq, epoch, buf| encode_heartbeat(buf, &Stamp { tenant, poller, epoch, seq }, now, depth, full),
        true,
    )?;
    metrics.heartbeats.inc();
    metrics.records_spooled.inc();
    let (_, acked, _) = spool.acked();
    tracing::info!(
        seq = spool.last_seq(), acked_seq = acked.map_or(0, |a| a.1), spool_depth = depth,
        spool_bytes = spool.bytes(), spool_full = full, "heartbeat"
    );
    Ok(())
}

fn housekeeping(spool: &Spool, tenant: &str, poller: &str, interval: Duration, metrics: &Metrics, stop: &AtomicBool) -> Result<()> {
    let mut next_hb = Instant::now() + interval;
    // On a full disk, housekeeping keeps going (a checkpoint is what deletes
    // acknowledged segments and frees space); the failed step is retried.
    let mut last_warn: Option<Instant> = None;
    let mut tolerate = |r: Result<()>| -> Result<()> {
        match r {
            Err(e) if e.is_disk_full() => {
                if last_warn.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                    tracing::warn!(error = %e, "spool disk full: will retry");
                    last_warn = Some(Instant::now());
                }
                Ok(())
            }
            r => r,
        }
    };
    while !stop.load(Ordering::Relaxed) {
        tolerate(spool.sync())?;
        tolerate(spool.checkpoint().map(|_| ()))?;
        if Instant::now() >= next_hb {
            tolerate(heartbeat(spool, tenant, poller, metrics))?;
            next_hb += interval;
            if next_hb < Instant::now() {
                next_hb = Instant::now() + interval;
            }
        }
        publish_gauges(spool, metrics);
        std::thread::sleep(Duration::from_millis(50));
    }
    publish_gauges(spool, metrics);
    Ok(())
}

fn publish_gauges(spool: &Spool, m: &Metrics) {
    let (_, acked, _) = spool.acked();
    m.spool_depth.set(spool.depth() as i64);
    m.spool_bytes.set(spool.bytes() as i64);
    m.spool_full.set(i64::from(spool.is_full()));
    m.last_seq.set(spool.last_seq());
    m.acked_seq.set(acked.map_or(0, |a| a.1));
    m.epoch.set(spool.epoch());
}
