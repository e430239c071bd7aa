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
//! test. The targets live next to the code they test (the poller's NMIS
//! line parser and spool reader, the query service's statement guard); this
//! harness is shared through the `fuzzing` feature, which only their
//! dev-dependencies turn on.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// An input that runs longer than this is reported as a hang.
const STALL: Duration = Duration::from_secs(20);

/// xorshift64*: small, fast, reproducible from its seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// True one time in `n`.
    pub fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }

    pub fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }
}

/// Byte values that tend to break parsers.
const INTERESTING: [u8; 12] = [0, 0xff, 0x7f, 0x80, 0xc3, b',', b'\r', b'\n', b' ', b'"', b'\\', b'9'];

/// 32-bit values for length fields and counters.
const INTERESTING_U32: [u32; 8] = [0, 1, 55, 56, 0x7fff_ffff, 0x8000_0000, 0xffff_fffe, 0xffff_ffff];

/// Mutates `seed` copies with 1 to 8 stacked mutations.
#[derive(Debug)]
pub struct Mutator<'a> {
    pub seeds: &'a [&'a [u8]],
    pub dict: &'a [&'a [u8]],
}

impl Mutator<'_> {
    pub fn input(&self, rng: &mut Rng) -> Vec<u8> {
        if rng.one_in(20) {
            // Pure noise, or a random sentence of dictionary tokens.
            let n = rng.below(64);
            if rng.one_in(2) {
                return (0..n).map(|_| rng.next_u64() as u8).collect();
            }
            return (0..n / 4).flat_map(|_| rng.pick(self.dict).to_vec()).collect();
        }
        let mut data = rng.pick(self.seeds).to_vec();
        for _ in 0..1 + rng.below(8) {
            self.mutate(rng, &mut data);
        }
        data
    }

    pub fn mutate(&self, rng: &mut Rng, d: &mut Vec<u8>) {
        let at = |rng: &mut Rng, d: &Vec<u8>| rng.below(d.len() + 1);
        match rng.below(11) {
            0 if !d.is_empty() => {
                let i = rng.below(d.len());
                d[i] ^= 1 << rng.below(8);
            }
            1 if !d.is_empty() => {
                let i = rng.below(d.len());
                d[i] = rng.next_u64() as u8;
            }
            2 if !d.is_empty() => {
                let i = rng.below(d.len());
                d[i] = *rng.pick(&INTERESTING);
            }
            3 => {
                let i = at(rng, d);
                let n = 1 + rng.below(8);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
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
pub fn run(
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
pub fn show(input: &[u8]) -> String {
    format!("b\"{}\" ({} bytes)", input.escape_ascii(), input.len())
}
