//! The NMIS event mix, loaded from data (`data/event-mix.json`, derived from
//! NMIS 9's event catalogue by `data/derive-mix.py`), and sampling from it.

use estate_schemas::Level;
use rand::Rng;
use serde::Deserialize;

use crate::error::{Error, Result};

/// The mix shipped with the crate.
pub const DEFAULT_MIX: &str = include_str!("../data/event-mix.json");

/// One event kind of the mix.
#[derive(Debug, Clone, Deserialize)]
pub struct MixEvent {
    /// Event name as NMIS logs the raise.
    pub name: String,
    /// Name NMIS logs the clear under; `None` for one-shot events.
    pub clear: Option<String>,
    /// Kind (node, interface, proactive, alert, service).
    pub kind: String,
    /// Relative weight.
    pub weight: f64,
    /// Level per role, unless `ladder`.
    pub levels: Option<std::collections::BTreeMap<String, String>>,
    /// Threshold event: the level is a threshold ladder step.
    pub ladder: bool,
    /// Example elements (empty: node-level event).
    pub elements: Vec<String>,
    /// Example details of the raise.
    pub details: Vec<String>,
    /// Example details of the clear (before ` Time=`).
    pub clear_details: Vec<String>,
}

/// Ladder steps and their odds.
#[derive(Debug, Clone, Deserialize)]
pub struct Ladder {
    /// Levels, least severe first.
    pub order: Vec<String>,
    /// Odds of each step.
    pub odds: Vec<f64>,
}

/// The whole mix.
#[derive(Debug, Clone, Deserialize)]
pub struct Mix {
    /// Share of nodes per role.
    pub roles: std::collections::BTreeMap<String, f64>,
    /// Threshold ladder.
    pub ladder: Ladder,
    /// Odds that a raise is a flap (down, up, down in quick succession).
    pub flap_probability: f64,
    /// A node snapshot every this many events.
    pub node_snapshot_every: u64,
    /// Event kinds.
    pub events: Vec<MixEvent>,
    #[serde(skip)]
    total_weight: f64,
}

impl Mix {
    /// Parses a mix file's text.
    pub fn parse(text: &str) -> Result<Mix> {
        let mut m: Mix = serde_json::from_str(text).map_err(|e| Error::Config(format!("event mix: {e}")))?;
        m.total_weight = m.events.iter().map(|e| e.weight).sum();
        if m.events.is_empty() || m.total_weight <= 0.0 {
            return Err(Error::Config("event mix has no events".into()));
        }
        for e in &m.events {
            for l in e.levels.iter().flat_map(|l| l.values()) {
                Level::parse(l).ok_or_else(|| Error::Config(format!("event mix: {}: bad level {l}", e.name)))?;
            }
        }
        Ok(m)
    }

    /// Picks an event kind by weight.
    pub fn pick(&self, rng: &mut impl Rng) -> &MixEvent {
        let mut x = rng.random_range(0.0..self.total_weight);
        for e in &self.events {
            if x < e.weight {
                return e;
            }
            x -= e.weight;
        }
        self.events.last().expect("non-empty")
    }

    /// Picks a role by share.
    pub fn role(&self, rng: &mut impl Rng) -> String {
        let total: f64 = self.roles.values().sum();
        let mut x = rng.random_range(0.0..total);
        for (r, w) in &self.roles {
            if x < *w {
                return r.clone();
            }
            x -= w;
        }
        self.roles.keys().next().cloned().unwrap_or_else(|| "access".into())
    }

    /// The level of a raise of `e` on a node with `role`.
    pub fn level(&self, e: &MixEvent, role: &str, rng: &mut impl Rng) -> Level {
        if let Some(l) = e.levels.as_ref().and_then(|l| l.get(role)) {
            return Level::parse(l).unwrap_or(Level::Warning);
        }
        let mut x = rng.random_range(0.0..self.ladder.odds.iter().sum::<f64>());
        for (l, o) in self.ladder.order.iter().zip(&self.ladder.odds) {
            if x < *o {
                return Level::parse(l).unwrap_or(Level::Warning);
            }
            x -= o;
        }
        Level::Warning
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn the_shipped_mix_loads_and_samples_like_nmis() {
        let m = Mix::parse(DEFAULT_MIX).unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let mut stateful = 0;
        let mut interface_down = 0;
        for _ in 0..10_000 {
            let e = m.pick(&mut rng);
            stateful += usize::from(e.clear.is_some());
            interface_down += usize::from(e.name == "Interface Down");
        }
        assert!(stateful > 8_000, "most NMIS events are stateful: {stateful}");
        assert!(interface_down > 500, "Interface Down is a high-frequency event: {interface_down}");
        let nd = m.events.iter().find(|e| e.name == "Node Down").unwrap();
        assert_eq!(m.level(nd, "core", &mut rng), Level::Critical);
        assert_eq!(nd.clear.as_deref(), Some("Node Up"));
    }
}
