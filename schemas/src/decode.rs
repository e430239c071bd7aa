//! Wire format v1: decode, validate, normalise.

use std::borrow::Cow;

use crate::level::{Level, State};
use crate::reason::Reason;
use crate::scan::{RawMessage, Scalar, scan};
use crate::tenant::is_valid_tenant;

/// 2000-01-01T00:00:00Z: anything earlier is `time_out_of_range`.
pub const MIN_TIME_MS: i64 = 946_684_800_000;

const MAX_ID_BYTES: usize = 128;
const MAX_NAME_BYTES: usize = 1024;

/// What the decoder needs besides the payload. No clock is read inside the
/// decoder: the caller passes `now_ms`.
#[derive(Debug, Clone, Copy)]
pub struct DecodeContext<'a> {
    /// The authoritative tenant, from the topic or the message key; `None`
    /// when the message had neither (a key-less message on the shared topic).
    pub tenant: Option<&'a str>,
    /// Payloads larger than this are rejected as `too_large`.
    pub max_bytes: usize,
    /// Wall clock, in UTC milliseconds.
    pub now_ms: i64,
    /// How far past `now_ms` an event time may lie.
    pub max_future_ms: i64,
}

/// The sender's coordinates: which poller incarnation sent the message, and
/// its sequence number.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SeqRef<'a> {
    /// Poller id.
    pub poller: Cow<'a, str>,
    /// Poller incarnation.
    pub epoch: i64,
    /// Sequence number within (poller, epoch), from 1.
    pub seq: i64,
}

impl SeqRef<'_> {
    /// Detaches from the payload buffer.
    pub fn into_owned(self) -> SeqRef<'static> {
        SeqRef {
            poller: Cow::Owned(self.poller.into_owned()),
            epoch: self.epoch,
            seq: self.seq,
        }
    }
}

/// A rejected message: the reason, and the sender's coordinates where the
/// payload was readable enough to carry them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection<'a> {
    /// Why.
    pub reason: Reason,
    /// `(poller, epoch, seq)`, when they could be read.
    pub origin: Option<SeqRef<'a>>,
}

/// A decoded NMIS event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event<'a> {
    /// Sender coordinates.
    pub origin: SeqRef<'a>,
    /// Idempotency key: as sent, or derived by [`derive_event_id`].
    pub event_id: Cow<'a, str>,
    /// Event time, UTC milliseconds.
    pub time_ms: i64,
    /// Node name.
    pub node: Cow<'a, str>,
    /// Node UUID, if sent.
    pub node_uuid: Option<Cow<'a, str>>,
    /// Event name (`Node Down`, `Proactive CPU`, …).
    pub event: Cow<'a, str>,
    /// Element (interface, disk …), empty for node-level events.
    pub element: Cow<'a, str>,
    /// NMIS level.
    pub level: Level,
    /// `down`/`up` for stateful events.
    pub state: Option<State>,
    /// Free text.
    pub details: Cow<'a, str>,
    /// A JSON object, as text.
    pub attrs: Option<&'a str>,
}

/// A node status/inventory snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeSnapshot<'a> {
    /// Sender coordinates.
    pub origin: SeqRef<'a>,
    /// Snapshot time, UTC milliseconds.
    pub time_ms: i64,
    /// Node name.
    pub node: Cow<'a, str>,
    /// Node UUID, if sent.
    pub node_uuid: Option<Cow<'a, str>>,
    /// Node status level.
    pub level: Level,
    /// Inventory attributes (model, location, group, role) as JSON text.
    pub attrs: Option<&'a str>,
}

/// A poller heartbeat; its own `seq` is the last seq the poller has sent.
#[derive(Debug, Clone, PartialEq)]
pub struct Heartbeat<'a> {
    /// Sender coordinates.
    pub origin: SeqRef<'a>,
    /// Heartbeat time, UTC milliseconds.
    pub time_ms: i64,
    /// Records waiting in the poller's spool.
    pub spool_depth: i64,
}

/// A decoded, valid message.
#[derive(Debug, Clone, PartialEq)]
pub enum Record<'a> {
    /// `type: event`.
    Event(Event<'a>),
    /// `type: node`.
    Node(NodeSnapshot<'a>),
    /// `type: heartbeat`.
    Heartbeat(Heartbeat<'a>),
}

impl<'a> Record<'a> {
    /// The sender coordinates of any record.
    pub fn origin(&self) -> &SeqRef<'a> {
        match self {
            Record::Event(e) => &e.origin,
            Record::Node(n) => &n.origin,
            Record::Heartbeat(h) => &h.origin,
        }
    }
}

/// Derives the idempotency key from (tenant, node, event, element, state,
/// time): 16 lowercase hex digits of XXH3-64 over the fields joined by the
/// unit separator (0x1f). Stable across releases: changing it would break
/// deduplication between pollers of different versions.
pub fn derive_event_id(
    tenant: &str,
    node: &str,
    event: &str,
    element: &str,
    state: Option<State>,
    time_ms: i64,
) -> String {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for part in [tenant, node, event, element, state.map_or("", State::as_str)] {
        h.update(part.as_bytes());
        h.update(&[0x1f]);
    }
    h.update(time_ms.to_string().as_bytes());
    format!("{:016x}", h.digest())
}

/// Decodes one Kafka message payload.
pub fn decode<'a>(payload: &'a [u8], ctx: &DecodeContext<'_>) -> Result<Record<'a>, Rejection<'a>> {
    let text = std::str::from_utf8(payload).map_err(|_| reject(Reason::InvalidUtf8, None))?;
    let raw = scan(text).map_err(|_| reject(Reason::InvalidJson, None))?;
    let origin = raw.origin();
    if payload.len() > ctx.max_bytes {
        return Err(reject(Reason::TooLarge, origin.ok()));
    }
    match validate(&raw, ctx, origin.clone()) {
        Ok(rec) => Ok(rec),
        Err(reason) => Err(reject(reason, origin.ok())),
    }
}

fn reject(reason: Reason, origin: Option<SeqRef<'_>>) -> Rejection<'_> {
    Rejection { reason, origin }
}

fn validate<'a>(
    raw: &RawMessage<'a>,
    ctx: &DecodeContext<'_>,
    origin: Result<SeqRef<'a>, Reason>,
) -> Result<Record<'a>, Reason> {
    match &raw.v {
        None | Some(Scalar::Null) => return Err(Reason::MissingField("v")),
        Some(Scalar::Int(1)) => {}
        Some(_) => return Err(Reason::UnsupportedVersion),
    }
    let kind = required_str(&raw.r#type, "type")?;
    let tenant = ctx.tenant.ok_or(Reason::MissingKey)?;
    if !is_valid_tenant(tenant) {
        return Err(Reason::InvalidTenant);
    }
    match &raw.tenant {
        None | Some(Scalar::Null) => {}
        Some(Scalar::Str(t)) if t == tenant => {}
        Some(_) => return Err(Reason::TenantMismatch),
    }
    let origin = origin?;
    match kind.as_ref() {
        "event" => {
            let time_ms = time(&raw.time, ctx)?;
            let node = name(&raw.node, "node")?;
            let event = name(&raw.event, "event")?;
            let level = level(&raw.level)?;
            let element = optional_str(&raw.element, "element")?.unwrap_or(Cow::Borrowed(""));
            let state = match optional_str(&raw.state, "state").map_err(|_| Reason::InvalidState)? {
                None => None,
                Some(s) => Some(State::parse(&s).ok_or(Reason::InvalidState)?),
            };
            let event_id = match optional_str(&raw.event_id, "event_id")? {
                Some(id) if valid_id(&id) => id,
                Some(_) => return Err(Reason::InvalidField("event_id")),
                None => Cow::Owned(derive_event_id(tenant, &node, &event, &element, state, time_ms)),
            };
            Ok(Record::Event(Event {
                origin,
                event_id,
                time_ms,
                node,
                node_uuid: optional_name(&raw.node_uuid, "node_uuid")?,
                event,
                element,
                level,
                state,
                details: optional_str(&raw.details, "details")?.unwrap_or(Cow::Borrowed("")),
                attrs: attrs(raw.attrs)?,
            }))
        }
        "node" => Ok(Record::Node(NodeSnapshot {
            time_ms: time(&raw.time, ctx)?,
            node: name(&raw.node, "node")?,
            node_uuid: optional_name(&raw.node_uuid, "node_uuid")?,
            level: level(&raw.level)?,
            attrs: attrs(raw.attrs)?,
            origin,
        })),
        "heartbeat" => Ok(Record::Heartbeat(Heartbeat {
            time_ms: time(&raw.time, ctx)?,
            spool_depth: match &raw.spool_depth {
                None | Some(Scalar::Null) => 0,
                Some(Scalar::Int(n)) if *n >= 0 => *n,
                Some(_) => return Err(Reason::InvalidField("spool_depth")),
            },
            origin,
        })),
        _ => Err(Reason::UnsupportedType),
    }
}

/// True when `s` holds a control character (C0, DEL or C1). Printable ASCII,
/// the common case, is settled by one byte pass.
fn has_control(s: &str) -> bool {
    // A fold, not `any`: it vectorises, and names are short.
    s.bytes().fold(false, |odd, b| odd | !(0x20..0x7f).contains(&b)) && s.chars().any(char::is_control)
}

fn valid_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_ID_BYTES && !has_control(s)
}

fn required_str<'a>(v: &Option<Scalar<'a>>, field: &'static str) -> Result<Cow<'a, str>, Reason> {
    optional_str(v, field)?.ok_or(Reason::MissingField(field))
}

fn optional_str<'a>(
    v: &Option<Scalar<'a>>,
    field: &'static str,
) -> Result<Option<Cow<'a, str>>, Reason> {
    match v {
        None | Some(Scalar::Null) => Ok(None),
        Some(Scalar::Str(s)) => Ok(Some(s.clone())),
        Some(_) => Err(Reason::InvalidField(field)),
    }
}

/// A required, non-empty, bounded name without control characters.
fn name<'a>(v: &Option<Scalar<'a>>, field: &'static str) -> Result<Cow<'a, str>, Reason> {
    optional_name(v, field)?.ok_or(Reason::MissingField(field))
}

fn optional_name<'a>(
    v: &Option<Scalar<'a>>,
    field: &'static str,
) -> Result<Option<Cow<'a, str>>, Reason> {
    match optional_str(v, field)? {
        None => Ok(None),
        Some(s) if s.is_empty() => Err(Reason::MissingField(field)),
        Some(s) if s.len() > MAX_NAME_BYTES || has_control(&s) => {
            Err(Reason::InvalidField(field))
        }
        Some(s) => Ok(Some(s)),
    }
}

fn level(v: &Option<Scalar<'_>>) -> Result<Level, Reason> {
    match v {
        None | Some(Scalar::Null) => Err(Reason::MissingField("level")),
        Some(Scalar::Str(s)) => Level::parse(s).ok_or(Reason::InvalidLevel),
        Some(_) => Err(Reason::InvalidLevel),
    }
}

fn attrs(v: Option<&str>) -> Result<Option<&str>, Reason> {
    match v {
        None => Ok(None),
        Some(s) if s.starts_with('{') => Ok(Some(s)),
        Some(_) => Err(Reason::InvalidField("attrs")),
    }
}

fn time(v: &Option<Scalar<'_>>, ctx: &DecodeContext<'_>) -> Result<i64, Reason> {
    let ms = match v {
        None | Some(Scalar::Null) => return Err(Reason::MissingField("time")),
        Some(Scalar::Int(ms)) => *ms,
        Some(Scalar::Str(s)) => chrono::DateTime::parse_from_rfc3339(s)
            .map_err(|_| Reason::InvalidField("time"))?
            .timestamp_millis(),
        Some(_) => return Err(Reason::InvalidField("time")),
    };
    if ms < MIN_TIME_MS || ms > ctx.now_ms.saturating_add(ctx.max_future_ms) {
        return Err(Reason::TimeOutOfRange);
    }
    Ok(ms)
}

impl<'a> RawMessage<'a> {
    fn origin(&self) -> Result<SeqRef<'a>, Reason> {
        let poller = name(&self.poller, "poller")?;
        let epoch = match &self.epoch {
            None | Some(Scalar::Null) => return Err(Reason::MissingField("epoch")),
            Some(Scalar::Int(e)) if *e >= 0 => *e,
            Some(_) => return Err(Reason::InvalidField("epoch")),
        };
        let seq = match &self.seq {
            None | Some(Scalar::Null) => return Err(Reason::MissingField("seq")),
            Some(Scalar::Int(s)) if *s >= 1 => *s,
            Some(_) => return Err(Reason::InvalidField("seq")),
        };
        Ok(SeqRef { poller, epoch, seq })
    }
}

impl Event<'_> {
    /// Writes the canonical, normalised wire form of this event (as published
    /// on `estate.deduped`): every field present, keys in sorted order, level
    /// canonical, time as RFC 3339 UTC milliseconds, `attrs` re-serialised
    /// compactly with sorted keys (`null` when absent or not JSON).
    ///
    /// Written field by field: this runs once per stored event on ingest's
    /// consumer thread, where building a `serde_json::Value` (a map, an
    /// allocation per field) and formatting the time through `strftime` cost
    /// more than the rest of the record.
    pub fn to_canonical_json(&self, tenant: &str) -> Vec<u8> {
        let attrs: Option<serde_json::Value> = self.attrs.and_then(|a| serde_json::from_str(a).ok());
        let mut out = Vec::with_capacity(
            200 + tenant.len() + self.origin.poller.len() + self.event_id.len() + self.node.len()
                + self.event.len() + self.element.len() + self.details.len() + self.attrs.map_or(0, str::len),
        );
        out.extend_from_slice(b"{\"attrs\":");
        match &attrs {
            // Writing a Value to a Vec cannot fail.
            Some(v) => serde_json::to_writer(&mut out, v).unwrap_or_default(),
            None => out.extend_from_slice(b"null"),
        }
        json_field(&mut out, "details", Some(&self.details));
        json_field(&mut out, "element", Some(&self.element));
        int_field(&mut out, "epoch", self.origin.epoch);
        json_field(&mut out, "event", Some(&self.event));
        json_field(&mut out, "event_id", Some(&self.event_id));
        json_field(&mut out, "level", Some(self.level.as_str()));
        json_field(&mut out, "node", Some(&self.node));
        json_field(&mut out, "node_uuid", self.node_uuid.as_deref());
        json_field(&mut out, "poller", Some(&self.origin.poller));
        int_field(&mut out, "seq", self.origin.seq);
        json_field(&mut out, "state", self.state.map(State::as_str));
        json_field(&mut out, "tenant", Some(tenant));
        out.extend_from_slice(b",\"time\":\"");
        write_rfc3339_ms(&mut out, self.time_ms);
        out.extend_from_slice(b"\",\"type\":\"event\",\"v\":1}");
        out
    }
}

/// `,"key":"value"` (or `,"key":null`), the value escaped as JSON.
fn json_field(out: &mut Vec<u8>, key: &str, value: Option<&str>) {
    out.extend_from_slice(b",\"");
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(b"\":");
    match value {
        Some(v) => write_json_str(out, v),
        None => out.extend_from_slice(b"null"),
    }
}

/// `,"key":123`.
fn int_field(out: &mut Vec<u8>, key: &str, value: i64) {
    out.extend_from_slice(b",\"");
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(b"\":");
    out.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
}

/// A JSON string literal, escaped as `serde_json` escapes it: `"` and `\`,
/// the short forms `\b \t \n \f \r`, other control characters as
/// `\u00xx`; everything else, non-ASCII included, as is.
pub(crate) fn write_json_str(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let short = match b {
            b'"' => b'"',
            b'\\' => b'\\',
            0x08 => b'b',
            b'\t' => b't',
            b'\n' => b'n',
            0x0c => b'f',
            b'\r' => b'r',
            0x00..=0x1f => 0,
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if short == 0 {
            out.extend_from_slice(&[b'\\', b'u', b'0', b'0', HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)]]);
        } else {
            out.extend_from_slice(&[b'\\', short]);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// UTC milliseconds as `YYYY-MM-DDTHH:MM:SS.mmmZ` (chrono's
/// `%Y-%m-%dT%H:%M:%S%.3fZ`; nothing for a time chrono cannot represent).
fn write_rfc3339_ms(out: &mut Vec<u8>, ms: i64) {
    use chrono::{Datelike as _, Timelike as _};
    let Some(t) = chrono::DateTime::from_timestamp_millis(ms) else { return };
    let year = t.year();
    if !(0..=9999).contains(&year) {
        // Signed, wider years: rare enough for chrono's own formatter.
        out.extend_from_slice(t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string().as_bytes());
        return;
    }
    // (value, digits, the character after it)
    let fields = [
        (year as u32, 4, b'-'),
        (t.month(), 2, b'-'),
        (t.day(), 2, b'T'),
        (t.hour(), 2, b':'),
        (t.minute(), 2, b':'),
        (t.second(), 2, b'.'),
        (t.timestamp_subsec_millis(), 3, b'Z'),
    ];
    for (v, width, after) in fields {
        for k in (0..width).rev() {
            out.push(b'0' + (v / 10u32.pow(k) % 10) as u8);
        }
        out.push(after);
    }
}
