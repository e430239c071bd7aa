//! A simulated estate: tenants × pollers × nodes raising and clearing NMIS
//! events from the mix, with flaps, node snapshots, heartbeats, mirror
//! pairs, exact duplicates and malformed messages for every DLQ reason. It
//! keeps the ground truth as it goes. Deterministic for a seed and clock.

use std::collections::{BTreeMap, HashMap, HashSet};

use estate_poller::nmis::state_of;
use estate_poller::wire::{EventFields, Stamp, encode_event, encode_heartbeat, encode_node};
use estate_schemas::{Level, derive_event_id};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::mix::Mix;
use crate::truth::{PollerTruth, Sent, TenantTruth, Truth};

/// Tenant the ingest receipts messages without a valid tenant under.
pub const UNKNOWN_TENANT: &str = "_unknown";

/// Every DLQ reason the generator covers, in the order it cycles through them.
pub const REASONS: [&str; 13] = [
    "invalid_json",
    "invalid_utf8",
    "unsupported_version",
    "unsupported_type",
    "missing_field:node",
    "invalid_field:seq",
    "invalid_level",
    "invalid_state",
    "tenant_mismatch",
    "invalid_tenant",
    "missing_key",
    "too_large",
    "time_out_of_range",
];

/// Shape of the estate.
#[derive(Debug, Clone)]
pub struct EstateConfig {
    /// Tenants.
    pub tenants: usize,
    /// Pollers (sites) per tenant.
    pub pollers: usize,
    /// Nodes per poller.
    pub nodes: usize,
    /// Share of event messages re-sent as exact duplicates.
    pub duplicates: f64,
    /// Share of steps that also send one malformed message.
    pub malformed: f64,
    /// The first this-many pollers of each tenant are mirror pairs.
    pub mirror_pairs: usize,
    /// Tenant id prefix (`<prefix>-t01` …).
    pub tenant_prefix: String,
    /// Run id (lowercase alphanumeric).
    pub run_id: String,
    /// Epoch of every simulated poller.
    pub epoch: i64,
    /// Shared topic, or the per-tenant topic prefix.
    pub topic: String,
    /// Use `<topic>.<tenant>`.
    pub per_tenant_topic: bool,
    /// Size of the `too_large` messages (above ingest's --max-message-bytes).
    pub too_large_bytes: usize,
    /// Random seed.
    pub seed: u64,
}

/// One message to produce.
#[derive(Debug, Clone)]
pub struct Msg {
    /// Topic.
    pub topic: String,
    /// Key (the tenant), `None` for the `missing_key` case.
    pub key: Option<Vec<u8>>,
    /// Payload.
    pub payload: Vec<u8>,
}

#[derive(Debug)]
struct Node {
    name: String,
    uuid: String,
    role: String,
}

#[derive(Debug)]
struct Site {
    tenant: String,
    pollers: Vec<(String, i64)>,
    nodes: Vec<Node>,
    open: HashMap<(usize, usize, String), i64>,
    clock_ms: i64,
    events: u64,
}

/// The simulated estate.
#[derive(Debug)]
pub struct Estate {
    cfg: EstateConfig,
    mix: Mix,
    rng: StdRng,
    sites: Vec<Site>,
    junk: BTreeMap<String, (String, i64)>,
    distinct: BTreeMap<String, HashSet<u64>>,
    event_messages: BTreeMap<String, u64>,
    rejects: BTreeMap<String, u64>,
    sent: Sent,
    next_reason: usize,
    buf: Vec<u8>,
}

impl Estate {
    /// Builds the estate.
    pub fn new(cfg: EstateConfig, mix: Mix) -> Estate {
        let mut rng = StdRng::seed_from_u64(cfg.seed);
        let mut sites = Vec::new();
        let mut junk = BTreeMap::new();
        for t in 0..cfg.tenants {
            let tenant = format!("{}-t{:02}", cfg.tenant_prefix, t + 1);
            junk.insert(tenant.clone(), (format!("{tenant}-junk-{}", cfg.run_id), 0));
            for p in 0..cfg.pollers {
                let id = format!("{tenant}-p{:02}", p + 1);
                let mut pollers = vec![(id.clone(), 0)];
                if p < cfg.mirror_pairs {
                    pollers.push((format!("{id}-mirror"), 0));
                }
                let nodes = (0..cfg.nodes)
                    .map(|n| {
                        let role = mix.role(&mut rng);
                        Node { name: format!("{id}-{role}-{n:04}"), uuid: format!("{:032x}", rng.random::<u128>()), role }
                    })
                    .collect();
                sites.push(Site { tenant: tenant.clone(), pollers, nodes, open: HashMap::new(), clock_ms: 0, events: 0 });
            }
        }
        junk.insert(UNKNOWN_TENANT.into(), (format!("{}-junk-unknown-{}", cfg.tenant_prefix, cfg.run_id), 0));
        Estate {
            cfg,
            mix,
            rng,
            sites,
            junk,
            distinct: BTreeMap::new(),
            event_messages: BTreeMap::new(),
            rejects: BTreeMap::new(),
            sent: Sent::default(),
            next_reason: 0,
            buf: Vec::with_capacity(1024),
        }
    }

    fn topic(&self, tenant: &str) -> String {
        if self.cfg.per_tenant_topic { format!("{}.{tenant}", self.cfg.topic) } else { self.cfg.topic.clone() }
    }

    /// One step at wall clock `now_ms`: a site raises or clears an event (a
    /// flap is down, up, down), seen by both pollers of a mirror pair; maybe
    /// a duplicate, a node snapshot, and a malformed message.
    pub fn step(&mut self, now_ms: i64, out: &mut Vec<Msg>) {
        let n0 = out.len();
        let si = self.rng.random_range(0..self.sites.len());
        let ei = {
            let e = self.mix.pick(&mut self.rng);
            self.mix.events.iter().position(|x| std::ptr::eq(x, e)).expect("from the mix")
        };
        let ni = self.rng.random_range(0..self.sites[si].nodes.len());
        let ev = self.mix.events[ei].clone();
        let element = if ev.elements.is_empty() { String::new() } else { ev.elements[self.rng.random_range(0..ev.elements.len())].clone() };
        let key = (ni, ei, element.clone());
        let transitions: Vec<bool> = match (&ev.clear, self.sites[si].open.contains_key(&key)) {
            (None, _) => vec![true],
            (Some(_), true) => vec![false],
            (Some(_), false) if self.rng.random_bool(self.mix.flap_probability) => vec![true, false, true],
            (Some(_), false) => vec![true],
        };
        for raise in transitions {
            let site = &mut self.sites[si];
            site.clock_ms = (site.clock_ms + 1).max(now_ms);
            let t = site.clock_ms;
            let node = &site.nodes[ni];
            let (name, level, details) = if raise {
                let d = ev.details[self.rng.random_range(0..ev.details.len())].clone();
                (ev.name.clone(), self.mix.level(&ev, &node.role, &mut self.rng), d)
            } else {
                let opened = site.open.get(&key).copied().unwrap_or(t);
                let secs = (t - opened).max(0) / 1000;
                let base = if ev.clear_details.is_empty() {
                    ev.details[0].clone()
                } else {
                    ev.clear_details[self.rng.random_range(0..ev.clear_details.len())].clone()
                };
                let d = format!("{base} Time={:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60);
                (ev.clear.clone().unwrap_or_default(), Level::Normal, d)
            };
            if ev.clear.is_some() {
                if raise {
                    site.open.insert(key.clone(), t);
                } else {
                    site.open.remove(&key);
                }
            }
            let state = state_of(&name, level, &details);
            let tenant = site.tenant.clone();
            let event_id = derive_event_id(&tenant, &node.name, &name, &element, state, t);
            let fields = EventFields {
                event_id: &event_id,
                time_ms: t,
                node: &node.name,
                node_uuid: Some(&node.uuid),
                event: &name,
                element: &element,
                level,
                state,
                details: &details,
                attrs: None,
            };
            let topic = if self.cfg.per_tenant_topic { format!("{}.{tenant}", self.cfg.topic) } else { self.cfg.topic.clone() };
            let dup = self.rng.random_bool(self.cfg.duplicates);
            for (i, (poller, seq)) in site.pollers.iter_mut().enumerate() {
                *seq += 1;
                self.buf.clear();
                encode_event(&mut self.buf, &Stamp { tenant: &tenant, poller, epoch: self.cfg.epoch, seq: *seq }, &fields);
                out.push(Msg { topic: topic.clone(), key: Some(tenant.as_bytes().to_vec()), payload: self.buf.clone() });
                *self.event_messages.entry(tenant.clone()).or_default() += 1;
                if i == 0 {
                    self.sent.events += 1;
                } else {
                    self.sent.mirror_copies += 1;
                }
                if dup && i == 0 {
                    out.push(out.last().expect("just pushed").clone());
                    *self.event_messages.entry(tenant.clone()).or_default() += 1;
                    self.sent.duplicates += 1;
                }
            }
            let id = u64::from_str_radix(&event_id, 16).expect("hex event id");
            self.distinct.entry(tenant).or_default().insert(id);
            site.events += 1;
        }
        let site = &self.sites[si];
        if site.events.is_multiple_of(self.mix.node_snapshot_every.max(1)) {
            self.node_snapshot(si, ni, now_ms, out);
        }
        if self.cfg.malformed > 0.0 && self.rng.random_bool(self.cfg.malformed) {
            self.malformed(si, now_ms, out);
        }
        self.sent.messages += (out.len() - n0) as u64;
    }

    fn node_snapshot(&mut self, si: usize, ni: usize, now_ms: i64, out: &mut Vec<Msg>) {
        let topic = self.topic(&self.sites[si].tenant);
        let site = &mut self.sites[si];
        let node = &site.nodes[ni];
        let attrs = format!(r#"{{"role":"{}","location":"site-{si}","model":"CiscoRouter"}}"#, node.role);
        for (poller, seq) in site.pollers.iter_mut() {
            *seq += 1;
            self.buf.clear();
            let s = Stamp { tenant: &site.tenant, poller, epoch: self.cfg.epoch, seq: *seq };
            encode_node(&mut self.buf, &s, now_ms, &node.name, Some(&node.uuid), Level::Normal, Some(&attrs));
            out.push(Msg { topic: topic.clone(), key: Some(site.tenant.as_bytes().to_vec()), payload: self.buf.clone() });
            self.sent.node_snapshots += 1;
        }
    }

    /// One heartbeat per poller, carrying its last seq (as its own seq).
    pub fn heartbeats(&mut self, now_ms: i64, out: &mut Vec<Msg>) {
        let n0 = out.len();
        for si in 0..self.sites.len() {
            let topic = self.topic(&self.sites[si].tenant);
            let site = &mut self.sites[si];
            for (poller, seq) in site.pollers.iter_mut() {
                *seq += 1;
                self.buf.clear();
                encode_heartbeat(&mut self.buf, &Stamp { tenant: &site.tenant, poller, epoch: self.cfg.epoch, seq: *seq }, now_ms, 0, false);
                out.push(Msg { topic: topic.clone(), key: Some(site.tenant.as_bytes().to_vec()), payload: self.buf.clone() });
                self.sent.heartbeats += 1;
            }
        }
        self.sent.messages += (out.len() - n0) as u64;
    }

    /// One malformed message, cycling through [`REASONS`]. Rejects whose seq
    /// ingest can read use a junk poller of their own (per receipt tenant),
    /// so they never open a gap in a real poller's seq.
    fn malformed(&mut self, si: usize, now_ms: i64, out: &mut Vec<Msg>) {
        let reason = REASONS[self.next_reason % REASONS.len()];
        self.next_reason += 1;
        let tenant = self.sites[si].tenant.clone();
        let topic = self.topic(&tenant);
        let marker = format!("lg-{}", self.cfg.run_id);
        let receipt_tenant = if matches!(reason, "invalid_tenant" | "missing_key") { UNKNOWN_TENANT.to_owned() } else { tenant.clone() };
        let seq_readable = !matches!(reason, "invalid_json" | "invalid_utf8" | "invalid_field:seq");
        let (poller, seq) = {
            let j = self.junk.get_mut(&receipt_tenant).expect("junk poller per tenant");
            if seq_readable {
                j.1 += 1;
            }
            (j.0.clone(), j.1.max(1))
        };
        let ok = |extra: &str| {
            format!(
                r#"{{"v":1,"type":"event","tenant":"{tenant}","poller":"{poller}","epoch":{},"seq":{seq},"time":{now_ms},"node":"junk","event":"Node Down","level":"Major","state":"down","details":"{marker}"{extra}}}"#,
                self.cfg.epoch
            )
        };
        let set = |field: &str, value: serde_json::Value| -> Vec<u8> {
            let mut v: serde_json::Value = serde_json::from_str(&ok("")).expect("valid template");
            if value.is_null() {
                v.as_object_mut().expect("object").remove(field);
            } else {
                v[field] = value;
            }
            v.to_string().into_bytes()
        };
        let key = Some(tenant.as_bytes().to_vec());
        let (key, payload, topic) = match reason {
            "invalid_json" => (key, format!("{{not json {marker}").into_bytes(), topic),
            "invalid_utf8" => (key, [format!("{{\"details\":\"{marker}").as_bytes(), &[0xff, 0xfe], b"\"}"].concat(), topic),
            "unsupported_version" => (key, set("v", 2.into()), topic),
            "unsupported_type" => (key, set("type", "alarm".into()), topic),
            "missing_field:node" => (key, set("node", serde_json::Value::Null), topic),
            "invalid_field:seq" => (key, set("seq", "six".into()), topic),
            "invalid_level" => (key, set("level", "Critical2".into()), topic),
            "invalid_state" => (key, set("state", "sideways".into()), topic),
            "tenant_mismatch" => (key, set("tenant", "zz-somebody-else".into()), topic),
            // On the shared topic: a bad key. (Per-tenant topics take the tenant from the topic.)
            "invalid_tenant" => (Some(b"../Bad".to_vec()), set("tenant", serde_json::Value::Null), self.cfg.topic.clone()),
            "missing_key" => (None, set("tenant", serde_json::Value::Null), self.cfg.topic.clone()),
            "too_large" => (key, set("details", format!("{marker} {}", "x".repeat(self.cfg.too_large_bytes)).into()), topic),
            _ => (key, set("time", 631_152_000_000i64.into()), topic),
        };
        out.push(Msg { topic, key, payload });
        *self.rejects.entry(reason.to_owned()).or_default() += 1;
        self.sent.malformed += 1;
    }

    /// Forgets the distinct event ids kept for the ground truth, so that a
    /// simulation without end (the standalone demo) runs in bounded memory.
    pub fn forget_distinct(&mut self) {
        self.distinct.clear();
    }

    /// The ground truth so far.
    pub fn truth(&self, started_at: String) -> Truth {
        let mut pollers: Vec<PollerTruth> = self
            .sites
            .iter()
            .flat_map(|s| s.pollers.iter().map(|(p, seq)| (s.tenant.clone(), p.clone(), *seq)))
            .chain(self.junk.iter().map(|(t, (p, seq))| (t.clone(), p.clone(), *seq)))
            .filter(|(_, _, seq)| *seq > 0)
            .map(|(tenant, poller, max_seq)| PollerTruth { tenant, poller, epoch: self.cfg.epoch, max_seq })
            .collect();
        pollers.sort();
        let tenants = self
            .sites
            .iter()
            .map(|s| s.tenant.clone())
            .collect::<HashSet<_>>()
            .into_iter()
            .map(|t| {
                let tt = TenantTruth {
                    distinct_events: self.distinct.get(&t).map_or(0, |d| d.len() as u64),
                    event_messages: self.event_messages.get(&t).copied().unwrap_or(0),
                };
                (t, tt)
            })
            .collect();
        Truth {
            run_id: self.cfg.run_id.clone(),
            dlq_marker: format!("lg-{}", self.cfg.run_id),
            started_at,
            topic: self.cfg.topic.clone(),
            per_tenant_topic: self.cfg.per_tenant_topic,
            tenants,
            pollers,
            rejects: self.rejects.clone(),
            sent: self.sent.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use estate_schemas::{DecodeContext, Record, decode};

    use super::*;
    use crate::mix::DEFAULT_MIX;

    fn cfg() -> EstateConfig {
        EstateConfig {
            tenants: 2,
            pollers: 2,
            nodes: 5,
            duplicates: 0.1,
            malformed: 0.2,
            mirror_pairs: 1,
            tenant_prefix: "lg".into(),
            run_id: "r1".into(),
            epoch: 7,
            topic: "estate.events".into(),
            per_tenant_topic: false,
            too_large_bytes: 2000,
            seed: 3,
        }
    }

    /// Decodes every message the way ingest does and checks the truth
    /// against it: distinct event ids, seq continuity per poller, rejects.
    #[test]
    fn truth_matches_what_ingest_would_decode() {
        let mut e = Estate::new(cfg(), Mix::parse(DEFAULT_MIX).unwrap());
        let now = 1_800_000_000_000;
        let mut out = Vec::new();
        for i in 0..3000 {
            e.step(now + i, &mut out);
        }
        e.heartbeats(now + 5000, &mut out);
        let truth = e.truth("t".into());
        let mut ids: BTreeMap<String, HashSet<String>> = BTreeMap::new();
        let mut seqs: BTreeMap<(String, String), Vec<i64>> = BTreeMap::new();
        let mut rejects: BTreeMap<String, u64> = BTreeMap::new();
        for m in &out {
            let key = m.key.as_deref().map(|k| String::from_utf8_lossy(k).into_owned());
            let ctx = DecodeContext { tenant: key.as_deref(), max_bytes: 1000, now_ms: now, max_future_ms: 86_400_000 };
            let valid_tenant = key.as_deref().is_some_and(estate_schemas::is_valid_tenant);
            let rt = if valid_tenant { key.clone().unwrap() } else { UNKNOWN_TENANT.to_owned() };
            match decode(&m.payload, &ctx) {
                Ok(r) => {
                    let o = r.origin().clone();
                    seqs.entry((rt.clone(), o.poller.to_string())).or_default().push(o.seq);
                    if let Record::Event(ev) = r {
                        ids.entry(rt).or_default().insert(ev.event_id.to_string());
                    }
                }
                Err(rej) => {
                    *rejects.entry(rej.reason.code().into_owned()).or_default() += 1;
                    if let Some(o) = rej.origin {
                        seqs.entry((rt, o.poller.to_string())).or_default().push(o.seq);
                    }
                }
            }
        }
        assert_eq!(rejects, truth.rejects);
        assert_eq!(truth.rejects.len(), REASONS.len(), "every DLQ reason covered");
        for (t, tt) in &truth.tenants {
            assert_eq!(ids[t].len() as u64, tt.distinct_events, "{t}");
        }
        for p in &truth.pollers {
            let mut s = seqs[&(p.tenant.clone(), p.poller.clone())].clone();
            s.sort_unstable();
            s.dedup();
            assert_eq!(s, (1..=p.max_seq).collect::<Vec<_>>(), "{} has no gap", p.poller);
        }
        assert!(truth.sent.duplicates > 0 && truth.sent.mirror_copies > 0 && truth.sent.node_snapshots > 0);
        assert_eq!(truth.sent.messages, out.len() as u64);
    }
}
