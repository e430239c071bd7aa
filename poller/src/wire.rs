//! Encoding of wire-format v1 messages, fully stamped. Pure and allocation
//! free apart from the output buffer; the inverse of `estate_schemas::decode`
//! (a round-trip test holds the two together).

use std::io::Write as _;

use estate_schemas::{Level, State};

/// The fields a poller stamps on every message.
#[derive(Debug, Clone, Copy)]
pub struct Stamp<'a> {
    /// Tenant id.
    pub tenant: &'a str,
    /// Poller id.
    pub poller: &'a str,
    /// Poller incarnation.
    pub epoch: i64,
    /// Sequence number within (poller, epoch), from 1.
    pub seq: i64,
}

/// An NMIS event's own fields.
#[derive(Debug, Clone, Copy)]
pub struct EventFields<'a> {
    /// Idempotency key (see `estate_schemas::derive_event_id`).
    pub event_id: &'a str,
    /// Event time, UTC milliseconds.
    pub time_ms: i64,
    /// Node name.
    pub node: &'a str,
    /// Node UUID, if known.
    pub node_uuid: Option<&'a str>,
    /// Event name.
    pub event: &'a str,
    /// Element, empty for node-level events.
    pub element: &'a str,
    /// Level.
    pub level: Level,
    /// State of stateful events.
    pub state: Option<State>,
    /// Free text.
    pub details: &'a str,
    /// Attributes: a JSON object as text.
    pub attrs: Option<&'a str>,
}

fn head(buf: &mut Vec<u8>, kind: &str, s: &Stamp<'_>) {
    buf.extend_from_slice(b"{\"v\":1,\"type\":\"");
    buf.extend_from_slice(kind.as_bytes());
    buf.extend_from_slice(b"\",\"tenant\":");
    json_str(buf, s.tenant);
    buf.extend_from_slice(b",\"poller\":");
    json_str(buf, s.poller);
    let _ = write!(buf, ",\"epoch\":{},\"seq\":{}", s.epoch, s.seq);
}

/// Appends a `type: event` message to `buf`.
pub fn encode_event(buf: &mut Vec<u8>, s: &Stamp<'_>, e: &EventFields<'_>) {
    head(buf, "event", s);
    buf.extend_from_slice(b",\"event_id\":");
    json_str(buf, e.event_id);
    let _ = write!(buf, ",\"time\":{},\"node\":", e.time_ms);
    json_str(buf, e.node);
    if let Some(u) = e.node_uuid {
        buf.extend_from_slice(b",\"node_uuid\":");
        json_str(buf, u);
    }
    buf.extend_from_slice(b",\"event\":");
    json_str(buf, e.event);
    buf.extend_from_slice(b",\"element\":");
    json_str(buf, e.element);
    buf.extend_from_slice(b",\"level\":\"");
    buf.extend_from_slice(e.level.as_str().as_bytes());
    buf.push(b'"');
    if let Some(st) = e.state {
        buf.extend_from_slice(b",\"state\":\"");
        buf.extend_from_slice(st.as_str().as_bytes());
        buf.push(b'"');
    }
    buf.extend_from_slice(b",\"details\":");
    json_str(buf, e.details);
    if let Some(a) = e.attrs {
        buf.extend_from_slice(b",\"attrs\":");
        buf.extend_from_slice(a.as_bytes());
    }
    buf.push(b'}');
}

/// Appends a `type: heartbeat` message: its own seq is the poller's last seq.
pub fn encode_heartbeat(buf: &mut Vec<u8>, s: &Stamp<'_>, time_ms: i64, spool_depth: u64, spool_full: bool) {
    head(buf, "heartbeat", s);
    let _ = write!(buf, ",\"time\":{time_ms},\"spool_depth\":{spool_depth},\"spool_full\":{spool_full}}}");
}

/// Appends a `type: node` snapshot.
pub fn encode_node(
    buf: &mut Vec<u8>,
    s: &Stamp<'_>,
    time_ms: i64,
    node: &str,
    node_uuid: Option<&str>,
    level: Level,
    attrs: Option<&str>,
) {
    head(buf, "node", s);
    let _ = write!(buf, ",\"time\":{time_ms},\"node\":");
    json_str(buf, node);
    if let Some(u) = node_uuid {
        buf.extend_from_slice(b",\"node_uuid\":");
        json_str(buf, u);
    }
    buf.extend_from_slice(b",\"level\":\"");
    buf.extend_from_slice(level.as_str().as_bytes());
    buf.push(b'"');
    if let Some(a) = attrs {
        buf.extend_from_slice(b",\"attrs\":");
        buf.extend_from_slice(a.as_bytes());
    }
    buf.push(b'}');
}

/// Appends `s` as a JSON string literal.
pub fn json_str(buf: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    buf.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => {
                buf.extend_from_slice(&bytes[start..i]);
                buf.extend_from_slice(&[b'\\', b'u', b'0', b'0', HEX[(b >> 4) as usize], HEX[(b & 15) as usize]]);
                start = i + 1;
                continue;
            }
            _ => continue,
        };
        buf.extend_from_slice(&bytes[start..i]);
        buf.extend_from_slice(esc);
        start = i + 1;
    }
    buf.extend_from_slice(&bytes[start..]);
    buf.push(b'"');
}

#[cfg(test)]
mod tests {
    use estate_schemas::{DecodeContext, Record, decode, derive_event_id};

    use super::*;

    fn ctx() -> DecodeContext<'static> {
        DecodeContext { tenant: Some("acme"), max_bytes: 1 << 20, now_ms: 1_800_000_000_000, max_future_ms: 0 }
    }

    #[test]
    fn event_round_trips_through_the_decoder() {
        let id = derive_event_id("acme", "r\"1", "Node Down", "", Some(State::Down), 1_700_000_000_000);
        let e = EventFields {
            event_id: &id,
            time_ms: 1_700_000_000_000,
            node: "r\"1",
            node_uuid: Some("u-1"),
            event: "Node Down",
            element: "",
            level: Level::Critical,
            state: Some(State::Down),
            details: "Ping\tfailed \\ \u{1} ünï",
            attrs: Some(r#"{"location":"Sydney"}"#),
        };
        let s = Stamp { tenant: "acme", poller: "p1", epoch: 7, seq: 42 };
        let mut buf = Vec::new();
        encode_event(&mut buf, &s, &e);
        let Ok(Record::Event(d)) = decode(&buf, &ctx()) else { panic!("{}", String::from_utf8_lossy(&buf)) };
        assert_eq!((d.origin.poller.as_ref(), d.origin.epoch, d.origin.seq), ("p1", 7, 42));
        assert_eq!(d.event_id, id.as_str());
        assert_eq!((d.node.as_ref(), d.details.as_ref()), (e.node, e.details));
        assert_eq!((d.level, d.state, d.time_ms), (Level::Critical, Some(State::Down), e.time_ms));
        assert_eq!(d.attrs, e.attrs);
    }

    #[test]
    fn heartbeat_and_node_round_trip() {
        let s = Stamp { tenant: "acme", poller: "p1", epoch: 1, seq: 9 };
        let mut buf = Vec::new();
        encode_heartbeat(&mut buf, &s, 1_700_000_000_000, 12, true);
        let Ok(Record::Heartbeat(h)) = decode(&buf, &ctx()) else { panic!() };
        assert_eq!((h.origin.seq, h.spool_depth), (9, 12));
        buf.clear();
        encode_node(&mut buf, &s, 1_700_000_000_000, "n1", None, Level::Normal, Some("{}"));
        assert!(matches!(decode(&buf, &ctx()), Ok(Record::Node(_))));
    }
}
