//! The decoder's former front end, kept as the reference the scanner is
//! tested against: the wire struct read by `serde_json` through a derived
//! `Deserialize`. Test-only.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

use crate::scan::{RawMessage, Scalar};

/// What serde makes of `text`, or `None` where it refuses it.
pub(crate) fn parse(text: &str) -> Option<RawMessage<'_>> {
    fn s<'a>(v: Option<Wrapped<'a>>) -> Option<Scalar<'a>> {
        v.map(|w| w.0)
    }
    // A derived struct also accepts a JSON array of its fields; the wire
    // format does not.
    if !text.trim_start_matches([' ', '\t', '\n', '\r']).starts_with('{') {
        return None;
    }
    let m: Message<'_> = serde_json::from_str(text).ok()?;
    Some(RawMessage {
        v: s(m.v),
        r#type: s(m.r#type),
        tenant: s(m.tenant),
        poller: s(m.poller),
        epoch: s(m.epoch),
        seq: s(m.seq),
        event_id: s(m.event_id),
        time: s(m.time),
        node: s(m.node),
        node_uuid: s(m.node_uuid),
        event: s(m.event),
        element: s(m.element),
        level: s(m.level),
        state: s(m.state),
        details: s(m.details),
        attrs: m.attrs.map(RawValue::get),
        spool_depth: s(m.spool_depth),
    })
}

#[derive(Deserialize)]
struct Message<'a> {
    #[serde(default, borrow)]
    v: Option<Wrapped<'a>>,
    #[serde(default, borrow)]
    r#type: Option<Wrapped<'a>>,
    #[serde(default, borrow)]
    tenant: Option<Wrapped<'a>>,
    #[serde(default, borrow)]
    poller: Option<Wrapped<'a>>,
    #[serde(default, borrow)]
    epoch: Option<Wrapped<'a>>,
    #[serde(default, borrow)]
    seq: Option<Wrapped<'a>>,
    #[serde(default, borrow)]
    event_id: Option<Wrapped<'a>>,
    #[serde(default, borrow)]
    time: Option<Wrapped<'a>>,
    #[serde(default, borrow)]
    node: Option<Wrapped<'a>>,
    #[serde(default, borrow)]
    node_uuid: Option<Wrapped<'a>>,
    #[serde(default, borrow)]
    event: Option<Wrapped<'a>>,
    #[serde(default, borrow)]
    element: Option<Wrapped<'a>>,
    #[serde(default, borrow)]
    level: Option<Wrapped<'a>>,
    #[serde(default, borrow)]
    state: Option<Wrapped<'a>>,
    #[serde(default, borrow)]
    details: Option<Wrapped<'a>>,
    #[serde(default, borrow)]
    attrs: Option<&'a RawValue>,
    #[serde(default, borrow)]
    spool_depth: Option<Wrapped<'a>>,
}

struct Wrapped<'a>(Scalar<'a>);

impl<'de: 'a, 'a> Deserialize<'de> for Wrapped<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ScalarVisitor(std::marker::PhantomData)).map(Wrapped)
    }
}

struct ScalarVisitor<'a>(std::marker::PhantomData<&'a ()>);

impl<'de: 'a, 'a> Visitor<'de> for ScalarVisitor<'a> {
    type Value = Scalar<'a>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Scalar::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Scalar::Null)
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Scalar::Bool)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Scalar::Int(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(i64::try_from(v).map_or(Scalar::Other, Scalar::Int))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Scalar::Other)
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Owned(v)))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Scalar::Other)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Scalar::Other)
    }
}
