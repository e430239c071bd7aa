//! A stable-toolchain fuzzer that runs inside the unit tests (no nightly,
//! no extra build): seeded xorshift mutations of a seed corpus, stacked,
//! with a dictionary of format tokens. No coverage feedback, so it finds
//! shallow bugs (panics, overflows, unbounded allocation, hangs), not deep
//! ones.
//!
//! A normal test run does a fixed, fast number of executions with a fixed
//! seed (deterministic). `ESTATE_FUZZ_SECONDS=600` runs each target for that
//! long instead, with a fresh seed unless `ESTATE_FUZZ_SEED` is set;
//! `scripts/fuzz.sh` does that for every target. A target runs on its own
//! thread under a watchdog: a panic or an input that does not return within
//! [`STALL`] fails the test and prints the input, to paste into a regression
//! test. The NMIS line target is here; the spool targets are in
//! `spool_fuzz.rs`. The query crate carries a copy of this harness
//! (`query/src/fuzz.rs`): the crates share no test-only code.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// An input that runs longer than this is reported as a hang.
const STALL: Duration = Duration::from_secs(20);

/// xorshift64*: small, fast, reproducible from its seed.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub(crate) fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// True one time in `n`.
    pub(crate) fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }

    pub(crate) fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }
}

/// Byte values that tend to break parsers.
const INTERESTING: [u8; 12] = [0, 0xff, 0x7f, 0x80, 0xc3, b',', b'\r', b'\n', b' ', b'"', b'\\', b'9'];

/// 32-bit values for length fields and counters.
const INTERESTING_U32: [u32; 8] = [0, 1, 55, 56, 0x7fff_ffff, 0x8000_0000, 0xffff_fffe, 0xffff_ffff];

/// Mutates `seed` copies with 1 to 8 stacked mutations.
#[derive(Debug)]
pub(crate) struct Mutator<'a> {
    pub(crate) seeds: &'a [&'a [u8]],
    pub(crate) dict: &'a [&'a [u8]],
}

impl Mutator<'_> {
    pub(crate) fn input(&self, rng: &mut Rng) -> Vec<u8> {
        if rng.one_in(20) {
            // Pure noise, or a random sentence of dictionary tokens.
            let n = rng.below(64);
            if rng.one_in(2) {
                return (0..n).map(|_| rng.next() as u8).collect();
            }
            return (0..n / 4).flat_map(|_| rng.pick(self.dict).to_vec()).collect();
        }
        let mut data = rng.pick(self.seeds).to_vec();
        for _ in 0..1 + rng.below(8) {
            self.mutate(rng, &mut data);
        }
        data
    }

    pub(crate) fn mutate(&self, rng: &mut Rng, d: &mut Vec<u8>) {
        let at = |rng: &mut Rng, d: &Vec<u8>| rng.below(d.len() + 1);
        match rng.below(11) {
            0 if !d.is_empty() => {
                let i = rng.below(d.len());
                d[i] ^= 1 << rng.below(8);
            }
            1 if !d.is_empty() => {
                let i = rng.below(d.len());
                d[i] = rng.next() as u8;
            }
            2 if !d.is_empty() => {
                let i = rng.below(d.len());
                d[i] = *rng.pick(&INTERESTING);
            }
            3 => {
                let i = at(rng, d);
                let n = 1 + rng.below(8);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                d.splice(i..i, bytes);
            }
            4 if !d.is_empty() => {
                let i = rng.below(d.len());
                let n = 1 + rng.below((d.len() - i).min(16));
                d.drain(i..i + n);
            }
            5 if !d.is_empty() => {
                // Duplicate a range (repeats a field or a separator).
                let i = rng.below(d.len());
                let n = 1 + rng.below((d.len() - i).min(32));
                let copy = d[i..i + n].to_vec();
                let j = at(rng, d);
                d.splice(j..j, copy);
            }
            6 => {
                let i = at(rng, d);
                let tok = rng.pick(self.dict).to_vec();
                d.splice(i..i, tok);
            }
            7 if !d.is_empty() => {
                // Overwrite with a dictionary token.
                let i = rng.below(d.len());
                let tok = rng.pick(self.dict);
                let end = (i + tok.len()).min(d.len());
                d.splice(i..end, tok.iter().copied());
            }
            8 => d.truncate(at(rng, d)),
            9 if d.len() >= 4 => {
                let i = rng.below(d.len() - 3);
                d[i..i + 4].copy_from_slice(&rng.pick(&INTERESTING_U32).to_le_bytes());
            }
            _ => {
                // Splice in part of another seed.
                let other = rng.pick(self.seeds);
                if !other.is_empty() {
                    let i = rng.below(other.len());
                    let n = 1 + rng.below(other.len() - i);
                    let j = at(rng, d);
                    d.splice(j..j, other[i..i + n].iter().copied());
                }
            }
        }
    }
}

/// Runs `target` on inputs made by `generate` for `quick` executions, or for
/// `ESTATE_FUZZ_SECONDS` when set, under the watchdog. Prints and returns the
/// number of executions.
pub(crate) fn run(
    name: &str,
    quick: u64,
    mut generate: impl FnMut(&mut Rng) -> Vec<u8> + Send + 'static,
    mut target: impl FnMut(&[u8]) + Send + 'static,
) -> u64 {
    let seconds = std::env::var("ESTATE_FUZZ_SECONDS").ok().map(|s| s.parse::<u64>().expect("ESTATE_FUZZ_SECONDS: whole seconds"));
    let seed = match std::env::var("ESTATE_FUZZ_SEED") {
        Ok(s) => s.parse().expect("ESTATE_FUZZ_SEED: a u64"),
        Err(_) if seconds.is_some() => std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_nanos() as u64,
        Err(_) => 0x5eed_0000_0000_0001,
    };
    let deadline = seconds.map(|s| Instant::now() + Duration::from_secs(s));
    let current = Arc::new(Mutex::new(Vec::new()));
    let execs = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let worker = {
        let (current, execs, done) = (current.clone(), execs.clone(), done.clone());
        std::thread::Builder::new()
            .name(format!("fuzz-{name}"))
            .spawn(move || {
                let mut rng = Rng::new(seed);
                let mut n = 0u64;
                loop {
                    let more = match deadline {
                        Some(d) => !n.is_multiple_of(64) || Instant::now() < d,
                        None => n < quick,
                    };
                    if !more {
                        break;
                    }
                    let input = generate(&mut rng);
                    current.lock().unwrap_or_else(|p| p.into_inner()).clone_from(&input);
                    target(&input);
                    n += 1;
                    execs.store(n, Ordering::Relaxed);
                }
                done.store(true, Ordering::Relaxed);
            })
            .expect("spawning the fuzz thread")
    };
    let (mut last, mut since) = (0, Instant::now());
    while !worker.is_finished() {
        std::thread::sleep(Duration::from_millis(20));
        let n = execs.load(Ordering::Relaxed);
        if n != last {
            (last, since) = (n, Instant::now());
        } else if since.elapsed() > STALL {
            let input = current.lock().unwrap_or_else(|p| p.into_inner()).clone();
            panic!("fuzz {name}: an input ran longer than {STALL:?} (seed {seed}, execution {n}): {}", show(&input));
        }
    }
    if let Err(e) = worker.join() {
        let input = current.lock().unwrap_or_else(|p| p.into_inner()).clone();
        eprintln!("fuzz {name}: FAILED at execution {} (seed {seed}) on input {}", execs.load(Ordering::Relaxed), show(&input));
        std::panic::resume_unwind(e);
    }
    assert!(done.load(Ordering::Relaxed));
    let n = execs.load(Ordering::Relaxed);
    println!("fuzz {name}: {n} executions in {:.1} s (seed {seed})", started.elapsed().as_secs_f64());
    n
}

/// An input as a Rust byte-string literal, ready for a regression test.
pub(crate) fn show(input: &[u8]) -> String {
    format!("b\"{}\" ({} bytes)", input.escape_ascii(), input.len())
}

mod nmis_line {
    use std::sync::atomic::{AtomicU64, Ordering};

    use estate_schemas::{DecodeContext, Reason, decode};

    use super::{Mutator, run};
    use crate::input::{Item, parse_nmis};
    use crate::nmis::parse_line;
    use crate::state::InputPos;
    use crate::tail::Line;
    use crate::wire::Stamp;

    /// Inputs that parsed, so the deeper checks are known to run.
    static PARSED: AtomicU64 = AtomicU64::new(0);

    const SEEDS: &[&[u8]] = &[
        b"1700000000,core-rtr-01,Interface Down,Major,GigabitEthernet0/1,Uplink to dist-sw-02",
        b"1700000300,branch-sw-14,Node Down,Major,,Ping failed: fping reported 100% ping loss",
        b"1700000047,core-rtr-01,Interface Up,Normal,GigabitEthernet0/1,Uplink Time=00:00:47\r",
        b"1700000047,n,Node Reset,warning,,a,b",
        b"1700000100,r1,Service Degraded,Normal,http,ok Time=00:01:00",
        b"1700000100,r1,email to netops Esc1 Node Down,Critical,,x",
        b"1700000100,r1,Node Down,Normal,,acknowledge=1 (alice)",
        b"1700000100,r1,Proactive CPU Closed,Normal,,cpu 12 Time=00:10:00",
        b"1700000100,r1,Deleted Event: Node Down,Fatal,,",
        b"-9223372036854775,r1,Node Down,Minor,,",
    ];

    const DICT: &[&[u8]] = &[
        b",", b",,", b" ", b"\t", b"\r", b"Node Down", b"Node Up", b"Interface Down", b" Closed", b"Alert: ",
        b"Deleted Event: ", b" UP Notify", b" to ", b"Esc", b"Esc99999999999", b"Time=", b"acknowledge=", b"Normal",
        b"Warning", b"Minor", b"Major", b"Critical", b"Fatal", b"9223372036854775807", b"-9223372036854775808",
        b"9223372036854776", b"+", b"-", b"\xc3\xa9", b"\xe2\x80\xa8", b"\xf0\x9f\x92\xa5", b"\\", b"\"", b"\0", b"\x7f",
    ];

    /// Any bytes: parsed or classified, never a panic. A parsed line keeps
    /// its invariants, reads back the same from its canonical form, and
    /// encodes to a wire message the decoder accepts, or rejects only for
    /// its time or for a name the parser lets through (see below).
    fn check(data: &[u8]) {
        let Ok(l) = parse_line(data) else { return };
        PARSED.fetch_add(1, Ordering::Relaxed);
        assert!(!l.node.is_empty() && !l.event.is_empty(), "empty node or event accepted");
        assert_eq!(l.time_ms % 1000, 0);
        for f in [l.node, l.event, l.element] {
            assert_eq!(f, f.trim(), "untrimmed field");
            assert!(!f.contains(','), "field holds the separator");
        }
        // (A details field ending in `\r` cannot round-trip: the line's
        // last `\r` is taken as the CRLF ending.)
        if !l.details.ends_with('\r') {
            let canonical = format!("{},{},{},{},{},{}", l.time_ms / 1000, l.node, l.event, l.level.as_str(), l.element, l.details);
            assert_eq!(parse_line(canonical.as_bytes()).as_ref(), Ok(&l), "canonical form {canonical:?}");
        }

        let lines = [Line { bytes: data.to_vec(), pos: InputPos::default() }];
        let (mut items, mut bad) = (Vec::new(), Vec::new());
        parse_nmis(&lines, "acme", &mut items, &mut bad);
        assert!(bad.is_empty() && items.len() == 1);
        let mut buf = Vec::new();
        items[0].encode(&Stamp { tenant: "acme", poller: "p1", epoch: 1, seq: 1 }, &mut buf);
        let ctx = DecodeContext { tenant: Some("acme"), max_bytes: 1 << 20, now_ms: 1_800_000_000_000, max_future_ms: i64::MAX / 4 };
        // The parser passes node and event names the decoder refuses
        // (control characters, over 1024 bytes): ingest sends those to the
        // DLQ with `invalid_field:<name>`, so nothing is lost. Anything else
        // a parsed line gets refused for is a bug.
        let name_ok = |s: &str| s.len() <= 1024 && !s.chars().any(char::is_control);
        match decode(&buf, &ctx) {
            Ok(_) => assert!(name_ok(l.node) && name_ok(l.event)),
            Err(r) if r.reason == Reason::TimeOutOfRange => {}
            Err(r) if r.reason == Reason::InvalidField("node") && !name_ok(l.node) => {}
            Err(r) if r.reason == Reason::InvalidField("event") && !name_ok(l.event) => {}
            Err(r) => panic!("the decoder rejects a parsed line ({}): {}", r.reason, String::from_utf8_lossy(&buf)),
        }
        let Item::Nmis { event_id, .. } = &items[0] else { panic!("not an NMIS item") };
        assert!(!event_id.is_empty());
    }

    #[test]
    fn fuzz_nmis_line() {
        let m = Mutator { seeds: SEEDS, dict: DICT };
        let n = run("nmis_line", 200_000, move |rng| m.input(rng), check);
        println!("fuzz nmis_line: {} of {n} inputs parsed as lines", PARSED.load(Ordering::Relaxed));
    }

    #[test]
    fn seeds_parse() {
        for s in SEEDS {
            parse_line(s).unwrap_or_else(|e| panic!("{}: {e:?}", String::from_utf8_lossy(s)));
            check(s);
        }
    }
}
