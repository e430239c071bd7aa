//! NMIS stateful event pairs: the event that raises a condition and the
//! event that clears it, in one table.
//!
//! NMIS logs a clear under a different name than the raise (`Node Down` is
//! cleared by `Node Up`, `Proactive CPU` by `Proactive CPU Closed`, `RPS
//! Fail` by `RPS Up`). The query service keys "still active" on the raise
//! name, and the poller maps a log line's event name to a `state` with the
//! same table. Names that are not listed follow the generic NMIS rules:
//! `… Closed` clears `…`, `… Up` clears `… Down`, `… Down` raises.

use crate::State;

/// `(raise, clear)` pairs from NMIS 9's event policy (`Events.nmis`
/// CancelingEvent; clears logged under a differing name use that name).
pub const STATEFUL_PAIRS: &[(&str, &str)] = &[
    ("Node Down", "Node Up"),
    ("SNMP Down", "SNMP Up"),
    ("WMI Down", "WMI Up"),
    ("Interface Down", "Interface Up"),
    ("Node Polling Failover", "Node Polling Failover Closed"),
    ("Backup Host Down", "Backup Host Up"),
    ("Service Down", "Service Up"),
    ("Service Degraded", "Service Up"),
    ("Service Configuration Error", "Service Configuration Error Closed"),
    ("RPS Fail", "RPS Up"),
    ("Planned Outage Open", "Planned Outage Closed"),
    ("Alert: BGP Peer Down", "Alert: BGP Peer Up"),
    ("Alert: OSPF Neighbor Down", "Alert: OSPF Neighbor Up"),
    ("Alert: Fan Status", "Alert: FAN Status Closed"),
    ("Alert: ONU Down", "Alert: ONU Down Closed"),
];

/// The condition key of an event name: the raise name for both halves of a
/// pair (`Node Up` → `Node Down`), so a raise and its clear share one key.
/// `Service Degraded` and `Service Down` share `Service Down`, because one
/// `Service Up` clears both.
pub fn condition_of(event: &str) -> String {
    if event == "Service Degraded" {
        return "Service Down".to_owned();
    }
    if let Some((raise, _)) = STATEFUL_PAIRS.iter().find(|(_, clear)| *clear == event) {
        return (*raise).to_owned();
    }
    if let Some(base) = event.strip_suffix(" Closed") {
        return base.to_owned();
    }
    if let Some(base) = event.strip_suffix(" Up") {
        return format!("{base} Down");
    }
    event.to_owned()
}

/// The state an NMIS event name implies: `Up` for a clear, `Down` for a
/// raise of a stateful pair, `None` for a one-shot (stateless) event.
pub fn state_of(event: &str) -> Option<State> {
    if STATEFUL_PAIRS.iter().any(|(_, clear)| *clear == event) {
        return Some(State::Up);
    }
    if STATEFUL_PAIRS.iter().any(|(raise, _)| *raise == event) {
        return Some(State::Down);
    }
    if event.ends_with(" Closed") || event.ends_with(" Up") {
        return Some(State::Up);
    }
    if event.ends_with(" Down") || event.starts_with("Proactive ") || event.starts_with("Alert: ") {
        return Some(State::Down);
    }
    None
}

/// A SQL `CASE` expression over the column `col` that computes
/// [`condition_of`], for views that key active conditions.
pub fn condition_sql(col: &str) -> String {
    let mut s = format!("CASE WHEN {col} = 'Service Degraded' THEN 'Service Down'");
    for (raise, clear) in STATEFUL_PAIRS {
        s.push_str(&format!(" WHEN {col} = '{}' THEN '{}'", clear.replace('\'', "''"), raise.replace('\'', "''")));
    }
    s.push_str(&format!(
        " WHEN {col} LIKE '% Closed' THEN substr({col}, 1, length({col}) - 7) \
         WHEN {col} LIKE '% Up' THEN concat(substr({col}, 1, length({col}) - 3), ' Down') \
         ELSE {col} END"
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pair_maps_both_ways() {
        for (raise, clear) in STATEFUL_PAIRS {
            assert_eq!(state_of(raise), Some(State::Down), "{raise}");
            assert_eq!(state_of(clear), Some(State::Up), "{clear}");
            let want = if *raise == "Service Degraded" { "Service Down" } else { raise };
            let clear_key = if *clear == "Service Up" { "Service Down" } else { raise };
            assert_eq!(condition_of(clear), clear_key, "{clear}");
            assert_eq!(condition_of(raise), want, "{raise}");
        }
    }

    #[test]
    fn generic_rules() {
        assert_eq!(condition_of("Proactive CPU Closed"), "Proactive CPU");
        assert_eq!(state_of("Proactive CPU"), Some(State::Down));
        assert_eq!(state_of("Proactive CPU Closed"), Some(State::Up));
        assert_eq!(condition_of("Alert: High Disk Usage Closed"), "Alert: High Disk Usage");
        assert_eq!(condition_of("Foo Up"), "Foo Down");
        assert_eq!(state_of("Node Reset"), None);
        assert_eq!(state_of("Node Configuration Change"), None);
        assert_eq!(condition_of("Node Reset"), "Node Reset");
    }
}
