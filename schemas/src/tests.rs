//! Decoder tests: every rejection reason, normalisation, event_id derivation,
//! and property tests (round trip, no panic on arbitrary bytes).

use proptest::prelude::*;
use serde_json::json;

use crate::*;

const NOW: i64 = 1_764_000_000_000;

fn ctx(tenant: Option<&str>) -> DecodeContext<'_> {
    DecodeContext { tenant, max_bytes: 4096, now_ms: NOW, max_future_ms: 86_400_000 }
}

fn base() -> serde_json::Value {
    json!({"v":1,"type":"event","tenant":"acme","poller":"syd-poller-01","epoch":3,"seq":1842,
        "event_id":"5f0c6c0e9a2b4f1d","time":"2025-11-23T19:57:00.123Z","node":"core-rtr-1",
        "node_uuid":"8d1e","event":"Node Down","element":"","level":"critical","state":"DOWN",
        "details":"Ping failed","attrs":{"location":"Sydney"}})
}

fn dec(v: &serde_json::Value) -> Result<Record<'static>, Reason> {
    let bytes: &'static [u8] = Box::leak(v.to_string().into_bytes().into_boxed_slice());
    decode(bytes, &ctx(Some("acme"))).map_err(|r| r.reason)
}

#[test]
fn decodes_and_normalises_an_event() {
    let Record::Event(e) = dec(&base()).unwrap() else { panic!("not an event") };
    assert_eq!(e.level, Level::Critical);
    assert_eq!(e.state, Some(State::Down));
    assert_eq!(e.time_ms, 1_763_927_820_123);
    assert_eq!(e.origin, SeqRef { poller: "syd-poller-01".into(), epoch: 3, seq: 1842 });
    assert_eq!(e.attrs, Some(r#"{"location":"Sydney"}"#));
    let canon: serde_json::Value = serde_json::from_slice(&e.to_canonical_json("acme")).unwrap();
    assert_eq!(canon["level"], "Critical");
    assert_eq!(canon["state"], "down");
    assert_eq!(canon["time"], "2025-11-23T19:57:00.123Z");
}

#[test]
fn epoch_millis_time_and_derived_event_id() {
    let mut v = base();
    v["time"] = json!(1_763_927_820_123i64);
    v.as_object_mut().unwrap().remove("event_id");
    let Record::Event(e) = dec(&v).unwrap() else { panic!() };
    let want = derive_event_id("acme", "core-rtr-1", "Node Down", "", Some(State::Down), 1_763_927_820_123);
    assert_eq!(e.event_id, want);
    assert_eq!(want.len(), 16);
    // Mirror pollers: a different poller and seq give the same id.
    v["poller"] = json!("mel-poller-02");
    v["seq"] = json!(7);
    let Record::Event(e2) = dec(&v).unwrap() else { panic!() };
    assert_eq!(e2.event_id, want);
    // Stable across releases: a pinned value.
    assert_eq!(derive_event_id("acme", "n", "Node Down", "", None, 0), derive_event_id("acme", "n", "Node Down", "", None, 0));
    assert_ne!(derive_event_id("acme", "n", "Node Down", "", None, 0), derive_event_id("beta", "n", "Node Down", "", None, 0));
}

#[test]
fn node_and_heartbeat_types() {
    let n = json!({"v":1,"type":"node","poller":"p","epoch":0,"seq":1,"time":NOW,"node":"n1","level":"Minor","attrs":{"model":"CiscoRouter"}});
    assert!(matches!(dec(&n).unwrap(), Record::Node(NodeSnapshot { level: Level::Minor, .. })));
    let h = json!({"v":1,"type":"heartbeat","poller":"p","epoch":0,"seq":9,"time":NOW,"spool_depth":12});
    let Record::Heartbeat(h) = dec(&h).unwrap() else { panic!() };
    assert_eq!((h.origin.seq, h.spool_depth), (9, 12));
}

#[test]
fn every_rejection_reason() {
    let case = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut v = base();
        f(&mut v);
        dec(&v).unwrap_err()
    };
    let rm = |k: &'static str| move |v: &mut serde_json::Value| {
        v.as_object_mut().unwrap().remove(k);
    };
    assert_eq!(case(&|v| v["v"] = json!(2)), Reason::UnsupportedVersion);
    assert_eq!(case(&rm("v")), Reason::MissingField("v"));
    assert_eq!(case(&|v| v["type"] = json!("alarm")), Reason::UnsupportedType);
    assert_eq!(case(&rm("node")), Reason::MissingField("node"));
    assert_eq!(case(&|v| v["node"] = json!("")), Reason::MissingField("node"));
    assert_eq!(case(&rm("event")), Reason::MissingField("event"));
    assert_eq!(case(&rm("level")), Reason::MissingField("level"));
    assert_eq!(case(&rm("time")), Reason::MissingField("time"));
    assert_eq!(case(&rm("seq")), Reason::MissingField("seq"));
    assert_eq!(case(&|v| v["seq"] = json!(0)), Reason::InvalidField("seq"));
    assert_eq!(case(&|v| v["epoch"] = json!(-1)), Reason::InvalidField("epoch"));
    assert_eq!(case(&|v| v["time"] = json!("yesterday")), Reason::InvalidField("time"));
    assert_eq!(case(&|v| v["level"] = json!("Critical2")), Reason::InvalidLevel);
    assert_eq!(case(&|v| v["level"] = json!(4)), Reason::InvalidLevel);
    assert_eq!(case(&|v| v["state"] = json!("sideways")), Reason::InvalidState);
    assert_eq!(case(&|v| v["tenant"] = json!("globex")), Reason::TenantMismatch);
    assert_eq!(case(&|v| v["attrs"] = json!([1])), Reason::InvalidField("attrs"));
    assert_eq!(case(&|v| v["event_id"] = json!("")), Reason::InvalidField("event_id"));
    assert_eq!(case(&|v| v["time"] = json!(MIN_TIME_MS - 1)), Reason::TimeOutOfRange);
    assert_eq!(case(&|v| v["time"] = json!(NOW + 2 * 86_400_000)), Reason::TimeOutOfRange);
    assert_eq!(case(&|v| v["details"] = json!("x".repeat(5000))), Reason::TooLarge);

    let raw = |b: &'static [u8], t: Option<&str>| decode(b, &ctx(t)).unwrap_err().reason;
    assert_eq!(raw(b"{nope", Some("acme")), Reason::InvalidJson);
    assert_eq!(raw(b"[1,2]", Some("acme")), Reason::InvalidJson);
    assert_eq!(raw(&[b'"', 0xff, b'"'], Some("acme")), Reason::InvalidUtf8);
    let ok: &'static [u8] = Box::leak(base().to_string().into_bytes().into_boxed_slice());
    assert_eq!(raw(ok, None), Reason::MissingKey);
    assert_eq!(raw(ok, Some("Acme/..")), Reason::InvalidTenant);
    // Every reason has a distinct code.
    let codes: std::collections::HashSet<_> = Reason::EXAMPLES.iter().map(|r| r.code()).collect();
    assert_eq!(codes.len(), Reason::EXAMPLES.len());
}

#[test]
fn rejections_keep_readable_origin() {
    let mut v = base();
    v["level"] = json!("bogus");
    let bytes = v.to_string().into_bytes();
    let r = decode(&bytes, &ctx(Some("acme"))).unwrap_err();
    assert_eq!(r.origin.map(|o| o.seq), Some(1842));
    let r = decode(b"{bad", &ctx(Some("acme"))).unwrap_err();
    assert_eq!(r.origin, None);
}

#[test]
fn escaped_strings_are_unescaped() {
    let mut v = base();
    v["details"] = json!("line1\nline2 \"quoted\" é");
    let Record::Event(e) = dec(&v).unwrap() else { panic!() };
    assert_eq!(e.details, "line1\nline2 \"quoted\" é");
}

prop_compose! {
    fn name()(s in "[A-Za-z0-9 /._:-]{1,40}") -> String { s }
}

proptest! {
    /// Any valid event survives decode → canonical JSON → decode unchanged.
    #[test]
    fn canonical_round_trip(node in name(), event in name(), element in "[A-Za-z0-9/]{0,12}",
                            details in "\\PC{0,80}", level in 0usize..6, state in 0usize..3,
                            seq in 1i64..i64::MAX, epoch in 0i64..1000, t in MIN_TIME_MS..NOW) {
        let mut v = base();
        v["node"] = json!(node); v["event"] = json!(event); v["element"] = json!(element);
        v["details"] = json!(details); v["level"] = json!(Level::ALL[level].as_str().to_lowercase());
        v["seq"] = json!(seq); v["epoch"] = json!(epoch); v["time"] = json!(t);
        match state { 0 => { v.as_object_mut().unwrap().remove("state"); } 1 => v["state"] = json!("up"), _ => v["state"] = json!("down") }
        let bytes = v.to_string().into_bytes();
        let c = DecodeContext { max_bytes: 1 << 20, ..ctx(Some("acme")) };
        let Ok(Record::Event(e)) = decode(&bytes, &c) else { panic!("valid event rejected: {v}") };
        let canon = e.to_canonical_json("acme");
        let Ok(Record::Event(e2)) = decode(&canon, &c) else { panic!("canonical form rejected") };
        prop_assert_eq!(e, e2);
    }

    /// The field-by-field canonical writer is byte for byte what serialising
    /// a `serde_json::Value` of the same fields gives: any strings (control
    /// characters, quotes, non-ASCII), any time chrono can hold, any attrs.
    #[test]
    fn canonical_json_matches_serde_json(node in "\\PC{0,20}|[\\x00-\\x1f\"\\\\é\u{2028}]{0,8}",
                                         details in any::<String>(), id in "[ -~]{1,40}",
                                         t in prop_oneof![MIN_TIME_MS..NOW, i64::MIN..i64::MAX, -62_167_219_200_000i64..-62_000_000_000_000],
                                         attrs in prop_oneof![Just(None), Just(Some(r#" { "z" : [1, 2.5e3, -0, "\\u00e9"], "a" : {"y":null,"b":true} } "#)), Just(Some("{not json"))],
                                         uuid in proptest::option::of("[a-f0-9-]{0,36}"), state in 0usize..3,
                                         seq in any::<i64>(), epoch in any::<i64>()) {
        let e = Event {
            origin: SeqRef { poller: node.clone().into(), epoch, seq },
            event_id: id.into(), time_ms: t, node: node.clone().into(),
            node_uuid: uuid.map(Into::into), event: "Interface Down".into(), element: details.clone().into(),
            level: Level::Major, state: [None, Some(State::Up), Some(State::Down)][state], details: details.into(),
            attrs,
        };
        prop_assert_eq!(String::from_utf8(e.to_canonical_json(&node)).unwrap(), reference_canonical_json(&e, &node));
    }

    /// The decoder never panics and always gives a reason.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode(&bytes, &ctx(Some("acme")));
    }

    /// Mutated valid payloads never panic either.
    #[test]
    fn mutated_payloads_never_panic(pos in 0usize..400, byte in any::<u8>()) {
        let mut bytes = base().to_string().into_bytes();
        let p = pos % bytes.len();
        bytes[p] = byte;
        let _ = decode(&bytes, &ctx(Some("acme")));
    }
}

/// Wire messages that exercise the scanner: escapes, surrogate pairs,
/// nesting, numbers at the edges of `i64`, nulls and unknown fields.
const SCAN_SEEDS: &[&[u8]] = &[
    br#"{"v":1,"type":"event","tenant":"acme","poller":"p1","epoch":3,"seq":1842,"event_id":"5f0c6c0e9a2b4f1d","time":"2025-11-23T19:57:00.123Z","node":"core-rtr-1","node_uuid":"8d1e","event":"Node Down","element":"","level":"critical","state":"DOWN","details":"Ping failed","attrs":{"location":"Sydney","tags":["a",{"b":[1,2.5e3,-0]}]}}"#,
    br#" { "v" : 1 , "type":"node","poller":"p","epoch":0,"seq":1,"time":1764000000000,"node":"n\u00e9\ud83d\udca5","level":"Minor","attrs":null,"extra":{"x":[true,false,null,"\"q\\"]}} "#,
    br#"{"v":1,"type":"heartbeat","poller":"p\/x","epoch":9223372036854775807,"seq":-9223372036854775808,"time":1.5,"spool_depth":18446744073709551616}"#,
    br#"{"v":null,"type":"event","details":"tab\there\nnew \b\f\r","unknown":"\udc00 lone","time":-0,"seq":1e400}"#,
    br#"{}"#,
    br#"{"v":1,"v":1}"#,
];

const SCAN_DICT: &[&[u8]] = &[
    b"{", b"}", b"[", b"]", b",", b":", b"\"", b"\\", b"\\u", b"\\ud83d", b"\\udca5", b"\\u0076", b"null", b"true",
    b"false", b"-", b"0", b"1e", b"E+", b".", b"9223372036854775808", b" ", b"\t", b"\n", b"\"v\":", b"\"attrs\":",
    b"\"seq\":", b"\"time\":", b"\xc3\xa9", b"\x01",
];

/// Differential: the scanner accepts exactly what the serde-derived
/// reference accepts, and reads the same fields.
#[test]
fn fuzz_scanner_matches_serde() {
    use crate::fuzz::{Mutator, run};
    use std::sync::atomic::{AtomicU64, Ordering};
    static ACCEPTED: AtomicU64 = AtomicU64::new(0);
    for seed in SCAN_SEEDS {
        let text = std::str::from_utf8(seed).unwrap();
        assert_eq!(crate::scan::scan(text).ok(), crate::reference::parse(text), "seed {text}");
    }
    let m = Mutator { seeds: SCAN_SEEDS, dict: SCAN_DICT };
    let n = run("scanner", 300_000, move |rng| m.input(rng), |data| {
        let Ok(text) = std::str::from_utf8(data) else { return };
        let ours = crate::scan::scan(text).ok();
        assert_eq!(ours, crate::reference::parse(text), "input {text:?}");
        if ours.is_some() {
            ACCEPTED.fetch_add(1, Ordering::Relaxed);
        }
    });
    // The check is only meaningful if some mutated inputs still parse (about
    // 2 % do: most mutations break the JSON, and both sides must agree on that).
    let accepted = ACCEPTED.load(Ordering::Relaxed);
    assert!(accepted * 200 > n, "only {accepted} of {n} inputs parsed");
}

#[test]
fn scanner_edge_cases() {
    use crate::scan::{Scalar, scan};
    let m = scan(r#"{"epoch":-0,"seq":9223372036854775807,"v":-9223372036854775808,"time":18446744073709551615}"#).unwrap();
    assert_eq!(m.epoch, Some(Scalar::Other));
    assert_eq!(m.seq, Some(Scalar::Int(i64::MAX)));
    assert_eq!(m.v, Some(Scalar::Int(i64::MIN)));
    assert_eq!(m.time, Some(Scalar::Other));
    assert!(scan(r#"{"seq":1e400}"#).is_err(), "f64 overflow");
    assert!(scan(r#"{"seq":01}"#).is_err(), "leading zero");
    assert!(scan(r#"{"v":1,"v":null}"#).is_err(), "repeated known field");
    assert!(scan(r#"{"x":1,"x":2}"#).is_ok(), "repeated unknown field");
    assert!(scan(r#"{"node":"\ud800"}"#).is_err(), "lone surrogate in a known field");
    assert!(scan(r#"{"x":"\ud800"}"#).is_ok(), "only hex-checked in a skipped value");
    assert!(scan("{\"node\":\"a\tb\"}").is_err(), "raw control character");
    assert!(scan(r#"{} x"#).is_err(), "trailing characters");
    assert!(scan(r#"[1]"#).is_err(), "not an object");
    let deep = format!("{{\"attrs\":{}1{}}}", "[".repeat(100_000), "]".repeat(100_000));
    assert!(scan(&deep).is_ok(), "deep nesting is skipped without recursion");
    let m = scan(r#"{"node":"caf\u00e9 \ud83d\udca5 \"x\"","attrs": {"a":[1]} }"#).unwrap();
    assert_eq!(m.node, Some(Scalar::Str("café 💥 \"x\"".into())));
    assert_eq!(m.attrs, Some(r#"{"a":[1]}"#));
}

/// The canonical form as `serde_json` writes it from a `Value` (the earlier
/// implementation), for [`canonical_json_matches_serde_json`].
fn reference_canonical_json(e: &Event<'_>, tenant: &str) -> String {
    let time = chrono::DateTime::from_timestamp_millis(e.time_ms)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        .unwrap_or_default();
    let attrs: Option<&serde_json::value::RawValue> = e.attrs.and_then(|a| serde_json::from_str(a).ok());
    json!({
        "v": 1, "type": "event", "tenant": tenant,
        "poller": e.origin.poller, "epoch": e.origin.epoch, "seq": e.origin.seq,
        "event_id": e.event_id, "time": time, "node": e.node,
        "node_uuid": e.node_uuid, "event": e.event, "element": e.element,
        "level": e.level.as_str(), "state": e.state.map(State::as_str),
        "details": e.details, "attrs": attrs,
    })
    .to_string()
}
