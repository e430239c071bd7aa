//! Fuzzes the wire-format decoder: any bytes, with and without an
//! authoritative tenant, must decode or be rejected with a reason, never
//! panic; an accepted event must re-encode to JSON that decodes to the same
//! event.
#![no_main]

use estate_schemas::{DecodeContext, Record, decode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (tenant, payload) = match data.split_first() {
        Some((b, rest)) if b % 3 == 0 => (None, rest),
        Some((b, rest)) if b % 3 == 1 => (Some("acme"), rest),
        _ => (Some("t-1"), data),
    };
    let ctx = DecodeContext { tenant, max_bytes: 64 * 1024, now_ms: 1_800_000_000_000, max_future_ms: 86_400_000 };
    if let Ok(Record::Event(e)) = decode(payload, &ctx) {
        let t = tenant.unwrap_or("acme");
        let json = e.to_canonical_json(t);
        let ctx2 = DecodeContext { tenant: Some(t), ..ctx };
        match decode(&json, &ctx2) {
            Ok(Record::Event(again)) => assert_eq!(again.event_id, e.event_id),
            other => panic!("canonical JSON did not decode back: {} -> {other:?}", String::from_utf8_lossy(&json)),
        }
    }
});
