//! The README quickstart: `estate standalone --demo` in a fresh directory,
//! queried over HTTP and Flight SQL, then Ctrl-C and a restart on the same
//! data directory.
//!
//! The command line is exactly the README's; only the listen ports are moved
//! off their defaults, through the documented `ESTATE_*` variables, so tests
//! can run side by side.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deltalake::arrow::array::{Array, AsArray};

use crate::harness::{self, free_port, wait_for};

const TENANTS: [&str; 3] = ["demo-t01", "demo-t02", "demo-t03"];

struct Standalone {
    child: Child,
    stdout: Arc<Mutex<String>>,
    http: u16,
    flight: u16,
}

impl Standalone {
    /// Runs the quickstart command in `dir` and waits for its banner.
    fn start(dir: &Path, http: u16, flight: u16, metrics: u16) -> Standalone {
        let mut child = Command::new(env!("CARGO_BIN_EXE_estate"))
            .args(["standalone", "--demo"])
            .current_dir(dir)
            .env("ESTATE_HTTP_ADDR", format!("127.0.0.1:{http}"))
            .env("ESTATE_FLIGHT_ADDR", format!("127.0.0.1:{flight}"))
            .env("ESTATE_METRICS_ADDR", format!("127.0.0.1:{metrics}"))
            .env("ESTATE_LOG", "info,librdkafka=warn,deltalake_core=warn,buoyant_kernel=warn")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.join(format!("standalone-{http}.log"))).unwrap())
            .spawn()
            .expect("spawning estate standalone");
        let stdout = Arc::new(Mutex::new(String::new()));
        let pipe = child.stdout.take().unwrap();
        let sink = stdout.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        let s = Standalone { child, stdout, http, flight };
        wait_for(Duration::from_secs(60), "the standalone banner", || s.out().contains("estate standalone is running"));
        s
    }

    fn out(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    fn rows(&self, token: &str, sql: &str) -> Vec<serde_json::Value> {
        let body = serde_json::json!({ "sql": sql }).to_string();
        let (status, _, body) = harness::http_post(self.http, "/v1/sql", Some(token), &body, "application/json");
        assert_eq!(status, 200, "{sql}: {}", String::from_utf8_lossy(&body));
        serde_json::from_slice(&body).unwrap()
    }

    fn counts(&self, token: &str) -> BTreeMap<String, i64> {
        self.rows(token, "SELECT tenant, count(*) AS n FROM events GROUP BY tenant")
            .iter()
            .map(|r| (r["tenant"].as_str().unwrap().to_owned(), r["n"].as_i64().unwrap()))
            .collect()
    }

    /// Ctrl-C, then waits for a clean exit.
    fn interrupt(mut self) -> String {
        let pid = self.child.id().to_string();
        let ok = Command::new("kill").args(["-INT", &pid]).status().expect("running kill").success();
        assert!(ok, "kill -INT {pid}");
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "standalone exited with {status} after Ctrl-C");
                break;
            }
            assert!(std::time::Instant::now() < deadline, "standalone did not exit within 60 s of Ctrl-C");
            std::thread::sleep(Duration::from_millis(100));
        }
        std::thread::sleep(Duration::from_millis(200));
        self.out()
    }
}

impl Drop for Standalone {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The token printed on the banner line `    <who>   <token>`.
fn printed_token(banner: &str, who: &str) -> String {
    banner
        .lines()
        .find_map(|l| {
            let mut it = l.split_whitespace();
            (it.next() == Some(who)).then(|| it.next().map(str::to_owned)).flatten()
        })
        .unwrap_or_else(|| panic!("no {who} token on the banner:\n{banner}"))
}

/// Events per tenant read straight from the Delta tables.
fn stored_counts(store: &Path) -> BTreeMap<String, i64> {
    let batches = harness::sql(store, "SELECT CAST(tenant AS VARCHAR) AS tenant, count(*) AS n FROM events GROUP BY 1");
    let mut out = BTreeMap::new();
    for b in batches {
        let t = deltalake::arrow::compute::cast(b.column(0), &deltalake::arrow::datatypes::DataType::Utf8).unwrap();
        let t = t.as_string::<i32>();
        let n = b.column(1).as_primitive::<deltalake::arrow::datatypes::Int64Type>();
        for i in 0..b.num_rows() {
            out.insert(t.value(i).to_owned(), n.value(i));
        }
    }
    out
}

#[test]
fn quickstart_demo_then_restart_keeps_data() {
    let dir = tempfile::tempdir().unwrap();
    let (http, flight, metrics) = (free_port(), free_port(), free_port());
    let s = Standalone::start(dir.path(), http, flight, metrics);
    let banner = s.out();
    let store = dir.path().join("estate-data");
    let operator = printed_token(&banner, "operator");
    let t01 = printed_token(&banner, "demo-t01");
    let tokens_file = std::fs::read_to_string(store.join("tokens.toml")).unwrap();
    assert!(tokens_file.contains(&operator) && tokens_file.contains(&t01), "printed tokens are the stored ones");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(store.join("tokens.toml")).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "tokens.toml is private");
    }
    assert!(banner.contains(&format!("http://127.0.0.1:{http}/v1/sql")), "{banner}");
    assert!(banner.contains(&format!("grpc://127.0.0.1:{flight}")), "{banner}");
    let log = std::fs::read_to_string(dir.path().join(format!("standalone-{http}.log"))).unwrap();
    assert!(!log.contains(&operator), "a token reached the log");

    // Every demo tenant's events are queryable over HTTP by the operator.
    wait_for(Duration::from_secs(60), "events of every demo tenant over HTTP", || {
        let c = s.counts(&operator);
        TENANTS.iter().all(|t| c.get(*t).copied().unwrap_or(0) > 0)
    });
    // A tenant token sees its own tenant only.
    let own = s.counts(&t01);
    assert_eq!(own.keys().collect::<Vec<_>>(), vec!["demo-t01"], "{own:?}");
    // The pollers view is live: every tenant's pollers report up (their
    // heartbeats are at most 10 s apart; the view says late after 30 s).
    wait_for(Duration::from_secs(60), "every demo tenant's pollers up in the pollers view", || {
        s.rows(&operator, "SELECT tenant, count(*) AS n FROM pollers WHERE status = 'up' GROUP BY tenant").len() == 3
    });

    // And over Flight SQL.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let flight_tenants = rt.block_on(async {
        let mut c = harness::flight_client(s.flight, &operator).await;
        let info = c.execute("SELECT DISTINCT CAST(tenant AS VARCHAR) AS t FROM events ORDER BY t".into(), None).await.unwrap();
        let batches = harness::flight_fetch(&mut c, info).await;
        let mut out = Vec::new();
        for b in batches {
            let col = deltalake::arrow::compute::cast(b.column(0), &deltalake::arrow::datatypes::DataType::Utf8).unwrap();
            let col = col.as_string::<i32>();
            out.extend((0..col.len()).map(|i| col.value(i).to_owned()));
        }
        out
    });
    assert_eq!(flight_tenants, TENANTS.to_vec());

    // Ctrl-C: the demo stops, ingest drains the embedded broker and commits.
    let http_before = s.counts(&operator);
    let out = s.interrupt();
    assert!(out.contains("estate standalone stopped"), "{out}");
    let stopped = stored_counts(&store);
    for t in TENANTS {
        assert!(stopped[t] >= http_before[t], "{t}: committed {} < seen before Ctrl-C {}", stopped[t], http_before[t]);
    }
    let log = std::fs::read_to_string(dir.path().join(format!("standalone-{http}.log"))).unwrap();
    assert!(log.contains("ingest has read everything the embedded broker holds"), "drain did not finish:\n{log}");

    // A second start on the same data directory carries on.
    let s = Standalone::start(dir.path(), http, flight, metrics);
    let banner = s.out();
    assert!(!banner.contains("tokens generated now"), "tokens are generated once:\n{banner}");
    assert_eq!(std::fs::read_to_string(store.join("tokens.toml")).unwrap(), tokens_file);
    let first = s.counts(&operator);
    for t in TENANTS {
        assert!(first[t] >= stopped[t], "{t}: {} after restart < {} before", first[t], stopped[t]);
    }
    wait_for(Duration::from_secs(60), "new events after the restart", || {
        let c = s.counts(&operator);
        TENANTS.iter().all(|t| c[*t] > stopped[*t])
    });
    // The earlier data is there exactly once: no event id stored twice.
    let dups = s.rows(&operator, "SELECT count(*) AS n FROM (SELECT tenant, event_id FROM events GROUP BY 1, 2 HAVING count(*) > 1)");
    assert_eq!(dups[0]["n"].as_i64(), Some(0), "duplicates after restart");
    s.interrupt();
}

/// `docs/cli.md` is exactly what the binary's clap definitions generate.
#[test]
fn cli_reference_matches_docs() {
    let out = Command::new(env!("CARGO_BIN_EXE_estate")).arg("cli-reference").output().expect("running estate cli-reference");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let generated = String::from_utf8(out.stdout).unwrap();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/cli.md");
    let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
    if generated != on_disk {
        let line = generated.lines().zip(on_disk.lines()).position(|(a, b)| a != b).map_or_else(
            || generated.lines().count().min(on_disk.lines().count()) + 1,
            |i| i + 1,
        );
        panic!(
            "docs/cli.md is out of date (first difference at line {line}); regenerate it with\n  \
             cargo run -- cli-reference > docs/cli.md"
        );
    }
    for sub in ["standalone", "ingest", "query", "poller", "loadgen", "verify"] {
        assert!(generated.contains(&format!("## estate {sub}\n")), "{sub} is missing from the reference");
    }
}
