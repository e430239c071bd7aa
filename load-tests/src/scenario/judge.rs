//! Judging a finished run: the ground truth it offered, what the estate
//! holds, and the outcome (accounting, RSS slopes, queries) it reports.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::driver::{Offered, QueryStats, slope_mib_per_min};
use super::plan::{Name, Plan};
use super::report::{Outcome, PollerOutcome};
use super::{INGEST_INSTANCES, OPERATOR_TOKEN, RSS_FLAT_MIB_PER_MIN, Run};
use crate::error::Result;
use crate::truth::{PollerTruth, TenantTruth, Truth};
use crate::verify::{self, VerifyArgs};

impl Run {
    pub(super) fn truth(&self, offered: &Offered, lg: Option<&Truth>, pollers: Vec<PollerTruth>) -> Truth {
        let mut t = Truth { run_id: self.run_id.clone(), dlq_marker: String::new(), pollers, ..Truth::default() };
        for (tenant, n) in &offered.events {
            t.tenants.insert(tenant.clone(), TenantTruth { distinct_events: *n, event_messages: *n });
        }
        if offered.far_future > 0 {
            t.rejects.insert("time_out_of_range".into(), offered.far_future);
        }
        if let Some(lg) = lg {
            t.tenants.extend(lg.tenants.clone());
            t.pollers.extend(lg.pollers.iter().cloned());
            for (r, n) in &lg.rejects {
                *t.rejects.entry(r.clone()).or_default() += n;
            }
        }
        t
    }

    pub(super) fn verify(&self, truth: &Truth) -> Result<(Vec<verify::Check>, verify::Observed)> {
        let args = VerifyArgs {
            truth: PathBuf::new(),
            query_url: self.query_url.clone(),
            token: OPERATOR_TOKEN.into(),
            brokers: Some(self.brokers.clone()),
            dlq_topic: "estate.dlq".into(),
            wait: Duration::ZERO,
            kafka_opts: Vec::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            let obs = verify::observe(&args, truth);
            if let Ok(obs) = &obs {
                let checks = verify::compare(truth, obs);
                if checks.iter().all(|c| c.ok) || Instant::now() >= deadline {
                    return Ok((checks, obs.clone()));
                }
            } else if Instant::now() >= deadline {
                return obs.map(|o| (Vec::new(), o));
            }
            std::thread::sleep(Duration::from_secs(2));
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn outcome(
        &self,
        truth: &Truth,
        obs: &verify::Observed,
        checks: &[verify::Check],
        per_poller: BTreeMap<String, PollerOutcome>,
        queries: Option<QueryStats>,
        rss: &BTreeMap<String, Vec<(f64, u64)>>,
    ) -> Outcome {
        let expected: u64 = truth.tenants.values().map(|t| t.distinct_events).sum();
        let stored: u64 = truth.tenants.keys().filter_map(|t| obs.events.get(t)).map(|e| e.0).sum();
        let mut lost: u64 = truth.tenants.iter().map(|(t, tt)| tt.distinct_events.saturating_sub(obs.events.get(t).map_or(0, |e| e.1))).sum();
        lost += obs.loss.iter().filter(|l| truth.tenants.contains_key(&l.0)).map(|l| l.4.max(0) as u64).sum::<u64>();
        let duplicated: u64 = truth.tenants.keys().filter_map(|t| obs.events.get(t)).map(|e| e.0.saturating_sub(e.1)).sum();
        let mismatches: Vec<String> =
            checks.iter().filter(|c| !c.ok).map(|c| format!("{} {}: expected {}, found {}", c.check, c.subject, c.expected, c.actual)).collect();
        let rss: Vec<(String, f64, f64, f64)> = rss
            .iter()
            .map(|(p, s)| {
                let mib = |b: u64| b as f64 / (1 << 20) as f64;
                let half = &s[s.len() / 2..];
                (p.clone(), s.first().map_or(0.0, |x| mib(x.1)), s.last().map_or(0.0, |x| mib(x.1)), slope_mib_per_min(half))
            })
            .collect();
        let mut mismatches = mismatches;
        if self.plan.name == Name::Soak {
            for (p, _, _, slope) in rss.iter().filter(|r| r.3 > RSS_FLAT_MIB_PER_MIN) {
                mismatches.push(format!("rss of {p} not flat: {slope:+.2} MiB/min over the second half (limit {RSS_FLAT_MIB_PER_MIN})"));
            }
        }
        let q_ok = queries.as_ref().is_none_or(|q| q.failed == 0 && q.breaches == 0 && q.ok > 0);
        let passed = !checks.is_empty() && mismatches.is_empty() && self.unexpected.is_empty() && q_ok;
        Outcome {
            scenario: self.plan.name,
            seed: self.seed,
            short: self.short,
            command: self.reproduce_command(),
            duration_s: self.plan.duration.as_secs(),
            faults: self.faults.clone(),
            offered_events: expected,
            offered_rejects: truth.rejects.values().sum(),
            stored,
            rejected: obs.dlq.clone().unwrap_or_default(),
            lost,
            duplicated,
            max_delay_s: per_poller.values().map(|p| p.max_delay_s).fold(0.0, f64::max),
            pollers: per_poller,
            queries,
            rss,
            unexpected_exits: self.unexpected.clone(),
            mismatches,
            passed,
        }
    }

    /// The command that runs this scenario again, with every flag that
    /// changed what was run.
    fn reproduce_command(&self) -> String {
        let mut command = format!("estate scenario {} --seed {} --rate {}", self.plan.name.label(), self.seed, self.rate);
        if self.short {
            command.push_str(" --short");
        }
        if self.plan.duration != Plan::new(self.plan.name, self.short, None).duration {
            command.push_str(&format!(" --duration {}s", self.plan.duration.as_secs()));
        }
        if self.ingest_instances != INGEST_INSTANCES {
            command.push_str(&format!(" --ingest-instances {}", self.ingest_instances));
        }
        command
    }
}
