//! Every scenario for a fraction of a second against every system (debug
//! builds), so the benchmark code cannot rot: checks that the run completes
//! with every payload verified and no error, never how fast it was.

use std::process::Command;

#[test]
fn every_scenario_runs_without_errors_against_every_system() {
    let output = Command::new(env!("CARGO_BIN_EXE_wsgate-bench"))
        .args(["all", "--smoke"])
        .output()
        .expect("wsgate-bench starts");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "wsgate-bench all --smoke failed (build the workspace first: cargo build --workspace)\n{stdout}\n{stderr}"
    );
    for system in ["baseline (no gateway)", "wsgate relay", "wsgate direct"] {
        assert!(stdout.contains(system), "no column for {system}:\n{stdout}");
    }
    assert!(
        stdout.contains("| errors, all scenarios | 0 | 0 | 0 |"),
        "{stdout}"
    );
    assert!(
        stdout.contains("| … messages lost | 0 | 0 | 0 |"),
        "{stdout}"
    );
}
