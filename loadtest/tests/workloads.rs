//! Each workload, run end to end at a tiny size against a real release broker: it must
//! complete and write complete JSON. Never a timing assertion.
//!
//! Needs `target/<profile>/strata` beside the load tester (`cargo build --release` first,
//! as `scripts/test.sh` does).

use std::process::Command;

fn run(workload: &str, extra: &[&str]) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let out = Command::new(env!("CARGO_BIN_EXE_strata-loadtest"))
        .args([
            "run",
            workload,
            "--partitions",
            "2",
            "--producers",
            "1",
            "--consumers",
            "1",
        ])
        .args(["--record-size", "512", "--json"])
        .arg(&json)
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{workload} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap()
}

fn check_phase(phase: &serde_json::Value) {
    for field in [
        "workload",
        "protocol",
        "records",
        "bytes",
        "seconds",
        "mb_per_s",
        "records_per_s",
        "latency_ms",
        "e2e_latency_ms",
        "object_store",
        "broker_peak_rss_bytes",
    ] {
        assert!(phase.get(field).is_some(), "{phase} lacks {field}");
    }
    assert!(phase["broker_peak_rss_bytes"].as_u64().unwrap() > 0);
    assert!(phase["object_store"]["put"].is_u64());
}

#[test]
fn w1_ingest() {
    let r = run("W1", &["--duration", "2"]);
    let phase = &r[0];
    check_phase(phase);
    assert!(phase["records"].as_u64().unwrap() > 0);
    assert!(phase["latency_ms"]["p99"].is_f64());
    assert!(phase["object_store"]["put"].as_u64().unwrap() > 0);
}

#[test]
fn w3_cold_replay_reads_everything_back() {
    let r = run("W3", &["--bytes", "2000000"]);
    let (write, replay) = (&r[0], &r[1]);
    check_phase(write);
    check_phase(replay);
    assert_eq!(write["records"], replay["records"]);
    assert!(
        replay["object_store"]["get"].as_u64().unwrap() > 0,
        "a cold replay reads the store"
    );
}

#[test]
fn w4_latency_under_simulated_store() {
    let r = run("W4", &["--duration", "2", "--rate", "1"]);
    check_phase(&r[0]);
    assert!(r[0]["e2e_latency_ms"]["p50"].is_f64());
}

#[test]
fn w5_cost_and_idle() {
    let r = run(
        "W5",
        &[
            "--duration",
            "1",
            "--idle-seconds",
            "2",
            "--bytes",
            "1000000",
        ],
    );
    assert_eq!(r.as_array().unwrap().len(), 4);
    let idle = &r[1];
    check_phase(idle);
    assert_eq!(
        idle["object_store"]["put"], 0,
        "an idle broker writes nothing"
    );
    assert!(r[0]["extra"]["puts_per_gib"].is_f64());
    assert!(r[3]["extra"]["gets_per_gib_replayed"].is_f64());
}

#[test]
fn w6_memory() {
    let r = run("W6", &["--duration", "1", "--bytes", "1000000"]);
    assert_eq!(r.as_array().unwrap().len(), 3);
    for phase in r.as_array().unwrap() {
        check_phase(phase);
    }
}
