//! NMIS `event.log` lines and the stateful-event mapping.
//!
//! A line is `time,node_name,event,level,element,details` with the time in
//! epoch seconds, no quoting, and commas stripped from details by NMIS (so a
//! details field that still holds commas is kept whole: the first five commas
//! split, the rest belongs to details). Clears are logged at `Normal` with
//! ` Time=HH:MM:SS` appended to details.

use estate_schemas::{Level, State};

/// The one table of NMIS stateful pairs lives in `estate-schemas`, shared
/// with the query service's `active_events` view; re-exported here.
pub use estate_schemas::STATEFUL_PAIRS;

/// Events that NMIS clears by logging the same name again at `Normal` with
/// ` Time=` in the details (`clear_logged_as` equal to the event name).
pub const CLEARED_BY_SAME_NAME: &[&str] = &["Service Degraded"];

/// NMIS meta lines (escalations, notifications, deletions) are logged with
/// the event name embedded; they are one-shot records, not transitions.
fn is_meta(event: &str) -> bool {
    event.starts_with("Deleted Event: ")
        || event.ends_with(" UP Notify")
        || event.split_once(" to ").is_some_and(|(_, rest)| rest.split(' ').any(|w| w.starts_with("Esc") && w[3..].parse::<u32>().is_ok()))
}

/// The `state` of an NMIS event line: `Some(Down)` when it raises a
/// stateful condition, `Some(Up)` when it clears one, `None` for stateless
/// (one-shot) events, meta lines and operator acknowledgements. Name rules
/// come from [`estate_schemas::state_of`]; the line adds what only the log
/// shows (acks, clears logged under the raise name).
pub fn state_of(event: &str, level: Level, details: &str) -> Option<State> {
    if details.starts_with("acknowledge=") || is_meta(event) {
        return None;
    }
    if CLEARED_BY_SAME_NAME.contains(&event) && level == Level::Normal && details.contains("Time=") {
        return Some(State::Up);
    }
    estate_schemas::state_of(event)
}

/// One parsed `event.log` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NmisLine<'a> {
    /// Event time, UTC milliseconds.
    pub time_ms: i64,
    /// Node name.
    pub node: &'a str,
    /// Event name as logged.
    pub event: &'a str,
    /// Level.
    pub level: Level,
    /// Element (interface, disk …), empty for node events.
    pub element: &'a str,
    /// Details.
    pub details: &'a str,
    /// Mapped state.
    pub state: Option<State>,
}

/// Why a line was not usable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    /// Not UTF-8.
    NotUtf8,
    /// Fewer than six fields.
    TooFewFields,
    /// The time is not integer epoch seconds.
    BadTime,
    /// Empty node name.
    EmptyNode,
    /// Empty event name.
    EmptyEvent,
    /// Not an NMIS level.
    BadLevel,
}

impl Malformed {
    /// A short machine-readable code for logs and metric labels.
    pub fn code(self) -> &'static str {
        match self {
            Malformed::NotUtf8 => "not_utf8",
            Malformed::TooFewFields => "too_few_fields",
            Malformed::BadTime => "bad_time",
            Malformed::EmptyNode => "empty_node",
            Malformed::EmptyEvent => "empty_event",
            Malformed::BadLevel => "bad_level",
        }
    }
}

/// Parses one line (without its newline; a trailing `\r` is ignored).
pub fn parse_line(line: &[u8]) -> Result<NmisLine<'_>, Malformed> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let text = std::str::from_utf8(line).map_err(|_| Malformed::NotUtf8)?;
    let mut it = text.splitn(6, ',');
    let (Some(time), Some(node), Some(event), Some(level), Some(element), Some(details)) =
        (it.next(), it.next(), it.next(), it.next(), it.next(), it.next())
    else {
        return Err(Malformed::TooFewFields);
    };
    let secs: i64 = time.trim().parse().map_err(|_| Malformed::BadTime)?;
    let time_ms = secs.checked_mul(1000).ok_or(Malformed::BadTime)?;
    let node = node.trim();
    if node.is_empty() {
        return Err(Malformed::EmptyNode);
    }
    let event = event.trim();
    if event.is_empty() {
        return Err(Malformed::EmptyEvent);
    }
    let level = Level::parse(level.trim()).ok_or(Malformed::BadLevel)?;
    let element = element.trim();
    Ok(NmisLine { time_ms, node, event, level, element, details, state: state_of(event, level, details) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(event: &str) -> Option<State> {
        state_of(event, Level::Major, "")
    }

    fn clear(event: &str) -> Option<State> {
        state_of(event, Level::Normal, "x Time=00:00:47")
    }

    #[test]
    fn node_down_up() {
        assert_eq!(st("Node Down"), Some(State::Down));
        assert_eq!(clear("Node Up"), Some(State::Up));
    }

    #[test]
    fn interface_down_up() {
        assert_eq!(st("Interface Down"), Some(State::Down));
        assert_eq!(clear("Interface Up"), Some(State::Up));
    }

    #[test]
    fn rps_fail_up() {
        assert_eq!(st("RPS Fail"), Some(State::Down));
        assert_eq!(clear("RPS Up"), Some(State::Up));
    }

    #[test]
    fn proactive_and_closed() {
        for e in ["Proactive CPU", "Proactive Interface Input Utilisation", "Proactive QoS no buffer Packet Drops"] {
            assert_eq!(st(e), Some(State::Down), "{e}");
            assert_eq!(clear(&format!("{e} Closed")), Some(State::Up), "{e}");
        }
    }

    #[test]
    fn alert_and_closed() {
        for e in ["Alert: BGP Peer Down", "Alert: FAN Status", "Alert: High Disk Usage"] {
            assert_eq!(st(e), Some(State::Down), "{e}");
            assert_eq!(clear(&format!("{e} Closed")), Some(State::Up), "{e}");
        }
    }

    #[test]
    fn snmp_service_planned_outage_pairs() {
        for (down, up) in [("SNMP Down", "SNMP Up"), ("Service Down", "Service Up"), ("Planned Outage Open", "Planned Outage Closed")] {
            assert_eq!(st(down), Some(State::Down), "{down}");
            assert_eq!(clear(up), Some(State::Up), "{up}");
        }
    }

    #[test]
    fn every_fixed_pair_maps() {
        for (down, up) in STATEFUL_PAIRS {
            assert_eq!(st(down), Some(State::Down), "{down}");
            assert_eq!(clear(up), Some(State::Up), "{up}");
        }
    }

    #[test]
    fn service_degraded_clears_under_its_own_name() {
        assert_eq!(state_of("Service Degraded", Level::Warning, "slow"), Some(State::Down));
        assert_eq!(state_of("Service Degraded", Level::Normal, "ok Time=00:01:00"), Some(State::Up));
    }

    #[test]
    fn stateless_and_acks_have_no_state() {
        for e in [
            "Node Reset",
            "Node Configuration Change",
            "Selftest Failed",
            "email to netops Esc1 Node Down",
            "email to netops UP Notify",
            "Deleted Event: Node Down",
        ] {
            assert_eq!(st(e), None, "{e}");
        }
        assert_eq!(state_of("Node Down", Level::Normal, "acknowledge=1 (alice)"), None);
    }

    #[test]
    fn parses_the_documented_examples() {
        let l = parse_line(b"1700000000,core-rtr-01,Interface Down,Major,GigabitEthernet0/1,Uplink to dist-sw-02").unwrap();
        assert_eq!(l.time_ms, 1_700_000_000_000);
        assert_eq!((l.node, l.event, l.level, l.element), ("core-rtr-01", "Interface Down", Level::Major, "GigabitEthernet0/1"));
        assert_eq!(l.state, Some(State::Down));
        let l = parse_line(b"1700000300,branch-sw-14,Node Down,Major,,Ping failed: fping reported 100% ping loss").unwrap();
        assert_eq!(l.element, "");
        let l = parse_line(b"1700000047,core-rtr-01,Interface Up,Normal,GigabitEthernet0/1,Uplink Time=00:00:47\r").unwrap();
        assert_eq!((l.state, l.details), (Some(State::Up), "Uplink Time=00:00:47"));
        let l = parse_line(b"1700000047,n,Node Reset,warning,,a,b").unwrap();
        assert_eq!((l.level, l.details, l.state), (Level::Warning, "a,b", None));
    }

    #[test]
    fn malformed_lines_are_classified() {
        assert_eq!(parse_line(b"garbage"), Err(Malformed::TooFewFields));
        assert_eq!(parse_line(b"x,n,e,Major,,d"), Err(Malformed::BadTime));
        assert_eq!(parse_line(b"1,,e,Major,,d"), Err(Malformed::EmptyNode));
        assert_eq!(parse_line(b"1,n,,Major,,d"), Err(Malformed::EmptyEvent));
        assert_eq!(parse_line(b"1,n,e,Loud,,d"), Err(Malformed::BadLevel));
        assert_eq!(parse_line(b"1,n,e,Major,,\xff"), Err(Malformed::NotUtf8));
    }
}
