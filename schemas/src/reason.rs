//! Typed rejection reasons: the `estate-reason` header of DLQ records.

use std::borrow::Cow;
use std::fmt;

/// Why a message was rejected. [`Reason::code`] is the machine-readable form
/// written to the DLQ and used as a metric label; it never contains payload
/// data, so label cardinality is bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Not parseable as a JSON object.
    InvalidJson,
    /// The payload is not UTF-8.
    InvalidUtf8,
    /// `v` is not 1.
    UnsupportedVersion,
    /// `type` is not `event`, `node` or `heartbeat`.
    UnsupportedType,
    /// A required field is absent or null.
    MissingField(&'static str),
    /// A field has the wrong JSON type or an unusable value.
    InvalidField(&'static str),
    /// `level` is not an NMIS level.
    InvalidLevel,
    /// `state` is not `down` or `up`.
    InvalidState,
    /// The payload tenant differs from the topic's or key's tenant.
    TenantMismatch,
    /// The authoritative tenant is not a valid tenant id.
    InvalidTenant,
    /// A message on the shared topic without a key (the tenant).
    MissingKey,
    /// Larger than the configured maximum message size.
    TooLarge,
    /// `time` is before 2000-01-01 or too far in the future.
    TimeOutOfRange,
}

impl Reason {
    /// Every reason without a field parameter, plus one example of each
    /// parameterised reason; used by tests and docs.
    pub const EXAMPLES: [Reason; 13] = [
        Reason::InvalidJson,
        Reason::InvalidUtf8,
        Reason::UnsupportedVersion,
        Reason::UnsupportedType,
        Reason::MissingField("node"),
        Reason::InvalidField("seq"),
        Reason::InvalidLevel,
        Reason::InvalidState,
        Reason::TenantMismatch,
        Reason::InvalidTenant,
        Reason::MissingKey,
        Reason::TooLarge,
        Reason::TimeOutOfRange,
    ];

    /// The machine-readable code, e.g. `missing_field:node`.
    pub fn code(&self) -> Cow<'static, str> {
        match self {
            Reason::InvalidJson => "invalid_json".into(),
            Reason::InvalidUtf8 => "invalid_utf8".into(),
            Reason::UnsupportedVersion => "unsupported_version".into(),
            Reason::UnsupportedType => "unsupported_type".into(),
            Reason::MissingField(f) => format!("missing_field:{f}").into(),
            Reason::InvalidField(f) => format!("invalid_field:{f}").into(),
            Reason::InvalidLevel => "invalid_level".into(),
            Reason::InvalidState => "invalid_state".into(),
            Reason::TenantMismatch => "tenant_mismatch".into(),
            Reason::InvalidTenant => "invalid_tenant".into(),
            Reason::MissingKey => "missing_key".into(),
            Reason::TooLarge => "too_large".into(),
            Reason::TimeOutOfRange => "time_out_of_range".into(),
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.code())
    }
}
