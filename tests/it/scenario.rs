//! The short whole-pipeline fault scenarios (issue 6): SIGKILLed ingest
//! instances, a SIGKILLed broker, and hostile input, each verified exactly by
//! the scenario runner against the real processes. The full set is
//! `estate scenario all` (docs/reliability.md).

use std::process::Command;

use crate::harness::tansu_bin;

#[test]
fn short_fault_scenarios_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report.jsonl");
    let seed = std::env::var("ESTATE_SCENARIO_SEED").unwrap_or_else(|_| rand::random::<u32>().to_string());
    let out = Command::new(env!("CARGO_BIN_EXE_estate"))
        .args(["--log", "info,librdkafka=off,rdkafka=off", "scenario", "kill-ingest", "kill-broker", "hostile-input", "--short"])
        .args(["--seed", &seed])
        .arg("--work-dir")
        .arg(dir.path().join("runs"))
        .arg("--report")
        .arg(&report)
        .arg("--tansu")
        .arg(tansu_bin())
        .output()
        .expect("running estate scenario");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(out.status.success(), "scenarios failed (seed {seed}):\n{stdout}\n{}", &stderr[stderr.len().saturating_sub(20_000)..]);
    // The report has one passing line per scenario, with the exact accounting.
    let lines: Vec<serde_json::Value> =
        std::fs::read_to_string(&report).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 3, "{lines:?}");
    for l in &lines {
        let name = l["scenario"].as_str().unwrap();
        assert_eq!(l["passed"], true, "{name}: {l}");
        assert_eq!((l["lost"].as_u64(), l["duplicated"].as_u64()), (Some(0), Some(0)), "{name}");
        assert!(l["offered_events"].as_u64().unwrap() > 0, "{name} offered nothing");
        assert_eq!(l["stored"], l["offered_events"], "{name}");
    }
    let kills = |name: &str| lines.iter().find(|l| l["scenario"] == name).unwrap()["faults"].as_array().unwrap().len();
    assert!(kills("kill-ingest") >= 3, "kill-ingest injected too few kills");
    assert_eq!(kills("kill-broker"), 4, "two broker kills and two restarts");
    let hostile = lines.iter().find(|l| l["scenario"] == "hostile-input").unwrap();
    let reasons = hostile["rejected"].as_object().unwrap();
    assert!(reasons.len() >= 13, "every DLQ reason is exercised: {reasons:?}");
}
