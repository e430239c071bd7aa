//! Inputs: NMIS `event.log` lines and JSON lines, turned into spool items
//! and stamped (tenant, poller, epoch, seq, event_id) as they are spooled.

use estate_schemas::{State, derive_event_id};
use serde_json::{Map, Value};

use crate::nmis::{Malformed, NmisLine, parse_line};
use crate::state::InputPos;
use crate::tail::Line;
use crate::wire::{EventFields, Stamp, encode_event, json_str};

/// An input line ready to be stamped with a seq.
#[derive(Debug)]
pub enum Item<'a> {
    /// An NMIS event line.
    Nmis {
        /// The parsed line.
        line: NmisLine<'a>,
        /// Its derived event_id.
        event_id: String,
        /// Input position after the line.
        pos: InputPos,
    },
    /// A JSON object: its members after the stamping fields, as `…}`.
    Json {
        /// Serialized members without the opening brace.
        body: Vec<u8>,
        /// Input position after the line.
        pos: InputPos,
    },
}

impl Item<'_> {
    /// Input position after the item.
    pub fn pos(&self) -> InputPos {
        match self {
            Item::Nmis { pos, .. } | Item::Json { pos, .. } => *pos,
        }
    }

    /// Writes the stamped wire message.
    pub fn encode(&self, stamp: &Stamp<'_>, buf: &mut Vec<u8>) {
        match self {
            Item::Nmis { line, event_id, .. } => encode_event(
                buf,
                stamp,
                &EventFields {
                    event_id,
                    time_ms: line.time_ms,
                    node: line.node,
                    node_uuid: None,
                    event: line.event,
                    element: line.element,
                    level: line.level,
                    state: line.state,
                    details: line.details,
                    attrs: None,
                },
            ),
            Item::Json { body, .. } => {
                buf.extend_from_slice(b"{\"v\":1,\"tenant\":");
                json_str(buf, stamp.tenant);
                buf.extend_from_slice(b",\"poller\":");
                json_str(buf, stamp.poller);
                buf.extend_from_slice(format!(",\"epoch\":{},\"seq\":{},", stamp.epoch, stamp.seq).as_bytes());
                buf.extend_from_slice(body);
            }
        }
    }
}

/// Parses NMIS lines into items; malformed ones are returned as
/// `(line number, reason)`.
pub fn parse_nmis<'a>(lines: &'a [Line], tenant: &str, items: &mut Vec<Item<'a>>, bad: &mut Vec<(u64, &'static str)>) {
    for l in lines {
        match parse_line(&l.bytes) {
            Ok(line) => {
                let event_id = derive_event_id(tenant, line.node, line.event, line.element, line.state, line.time_ms);
                items.push(Item::Nmis { line, event_id, pos: l.pos });
            }
            Err(m) => bad.push((l.pos.line, Malformed::code(m))),
        }
    }
}

/// Parses JSON lines into items; malformed ones are returned as
/// `(line number, reason)`.
pub fn parse_json<'a>(lines: &'a [Line], tenant: &str, items: &mut Vec<Item<'a>>, bad: &mut Vec<(u64, &'static str)>) {
    for l in lines {
        let text = l.bytes.strip_suffix(b"\r").unwrap_or(&l.bytes);
        if text.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match stamp_json(text, tenant) {
            Ok(body) => items.push(Item::Json { body, pos: l.pos }),
            Err(reason) => bad.push((l.pos.line, reason)),
        }
    }
}

/// Fields a poller owns: dropped from JSON input and stamped instead.
const STAMPED: [&str; 5] = ["v", "tenant", "poller", "epoch", "seq"];

/// Turns one JSON object into the body of a stamped message: the stamping
/// fields are removed (the agent owns them), `type` defaults to `event`, and
/// an event without `event_id` gets the derived one when its fields allow.
pub fn stamp_json(text: &[u8], tenant: &str) -> Result<Vec<u8>, &'static str> {
    let mut obj: Map<String, Value> = match serde_json::from_slice::<Value>(text) {
        Ok(Value::Object(m)) => m,
        Ok(_) => return Err("not_an_object"),
        Err(_) => return Err("invalid_json"),
    };
    for k in STAMPED {
        obj.remove(k);
    }
    let kind = obj.entry("type").or_insert_with(|| Value::String("event".into())).clone();
    if kind == "event" && !obj.contains_key("event_id")
        && let Some(id) = derive_for(&obj, tenant)
    {
        obj.insert("event_id".into(), Value::String(id));
    }
    let mut body = serde_json::to_vec(&obj).map_err(|_| "invalid_json")?;
    body.remove(0);
    Ok(body)
}

fn derive_for(obj: &Map<String, Value>, tenant: &str) -> Option<String> {
    let s = |k: &str| obj.get(k).and_then(Value::as_str);
    let node = s("node")?;
    let event = s("event")?;
    let element = match obj.get("element") {
        None | Some(Value::Null) => "",
        Some(Value::String(e)) => e,
        Some(_) => return None,
    };
    let state = match obj.get("state") {
        None | Some(Value::Null) => None,
        Some(Value::String(st)) => Some(State::parse(st)?),
        Some(_) => return None,
    };
    let time_ms = match obj.get("time")? {
        Value::Number(n) => n.as_i64()?,
        Value::String(t) => chrono::DateTime::parse_from_rfc3339(t).ok()?.timestamp_millis(),
        _ => return None,
    };
    Some(derive_event_id(tenant, node, event, element, state, time_ms))
}

#[cfg(test)]
mod tests {
    use estate_schemas::{DecodeContext, Record, decode};

    use super::*;

    #[test]
    fn json_lines_are_stamped_and_get_the_derived_event_id() {
        let body = stamp_json(
            br#"{"time":"2026-11-23T19:57:00.123Z","node":"r1","event":"Node Down","level":"critical","state":"down","seq":99,"tenant":"evil"}"#,
            "acme",
        )
        .unwrap();
        let item = Item::Json { body, pos: InputPos::default() };
        let mut buf = Vec::new();
        item.encode(&Stamp { tenant: "acme", poller: "p", epoch: 2, seq: 5 }, &mut buf);
        let ctx = DecodeContext { tenant: Some("acme"), max_bytes: 1 << 20, now_ms: 1_900_000_000_000, max_future_ms: 0 };
        let Ok(Record::Event(e)) = decode(&buf, &ctx) else { panic!("{}", String::from_utf8_lossy(&buf)) };
        assert_eq!((e.origin.seq, e.origin.epoch), (5, 2));
        let t = chrono::DateTime::parse_from_rfc3339("2026-11-23T19:57:00.123Z").unwrap().timestamp_millis();
        assert_eq!(e.event_id, derive_event_id("acme", "r1", "Node Down", "", Some(State::Down), t));
    }

    #[test]
    fn nmis_and_json_agree_on_event_id_and_bad_lines_are_reported() {
        let lines = vec![
            Line { bytes: b"1700000000,r1,Node Down,Critical,,Ping failed".to_vec(), pos: InputPos { ino: 1, offset: 10, line: 1 } },
            Line { bytes: b"not a line".to_vec(), pos: InputPos { ino: 1, offset: 20, line: 2 } },
        ];
        let (mut items, mut bad) = (Vec::new(), Vec::new());
        parse_nmis(&lines, "acme", &mut items, &mut bad);
        assert_eq!(bad, vec![(2, "too_few_fields")]);
        let Item::Nmis { event_id, .. } = &items[0] else { panic!() };
        let body = stamp_json(br#"{"time":1700000000000,"node":"r1","event":"Node Down","level":"Critical","state":"down"}"#, "acme").unwrap();
        assert!(String::from_utf8(body).unwrap().contains(event_id.as_str()));
        let (mut items, mut bad) = (Vec::new(), Vec::new());
        let lines = vec![Line { bytes: b"[1,2]".to_vec(), pos: InputPos::default() }, Line { bytes: b"{x".to_vec(), pos: InputPos::default() }];
        parse_json(&lines, "acme", &mut items, &mut bad);
        assert_eq!(bad.iter().map(|b| b.1).collect::<Vec<_>>(), vec!["not_an_object", "invalid_json"]);
    }
}
