//! Fuzz target for the NMIS event-log line parser (harness: `estate_schemas::fuzz`).

mod nmis_line {
    use std::sync::atomic::{AtomicU64, Ordering};

    use estate_schemas::{DecodeContext, Reason, decode};

    use estate_schemas::fuzz::{Mutator, run};
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
