//! Every scenario for a fraction of a second against every system, plain and
//! wss (debug builds; nginx only where it is installed), so the benchmark
//! code cannot rot: checks that the run completes with every payload
//! verified and no error, never how fast it was.

use std::process::Command;

/// `wsgate-bench <args>`'s stdout, once it exited with success.
fn run_bench(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_wsgate-bench"))
        .args(args)
        .output()
        .expect("wsgate-bench starts");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "wsgate-bench {} failed (build the workspace first: cargo build --workspace)\n{stdout}\n{stderr}",
        args.join(" ")
    );
    stdout.into_owned()
}

#[test]
fn every_scenario_runs_without_errors_against_every_system() {
    let stdout = run_bench(&["all", "--smoke"]);
    for system in [
        "baseline (no gateway)",
        "wsgate relay",
        "wsgate direct",
        "baseline (wss, no gateway)",
        "wsgate relay (wss)",
    ] {
        assert!(stdout.contains(system), "no column for {system}:\n{stdout}");
    }
    // Both tables (plain and wss), whichever columns nginx adds: every cell 0.
    for figure in ["| errors, all scenarios |", "| … messages lost |"] {
        let lines: Vec<&str> = stdout
            .lines()
            .filter(|line| line.starts_with(figure))
            .collect();
        assert_eq!(lines.len(), 2, "{figure} once per table:\n{stdout}");
        for line in lines {
            let cells: Vec<&str> = line[figure.len()..]
                .split('|')
                .map(str::trim)
                .filter(|cell| !cell.is_empty())
                .collect();
            assert!(
                cells.len() >= 2 && cells.iter().all(|cell| *cell == "0"),
                "{line}\n{stdout}"
            );
        }
    }
}

#[test]
fn hold_keeps_idle_clients_through_workers() {
    let stdout = run_bench(&["hold", "--smoke"]);
    assert!(
        stdout.contains("400 idle relayed clients held") && stdout.contains("(0 failed)"),
        "{stdout}"
    );
    for process in ["wsgate worker 0", "wsgate worker 1", "websocket_echo hold1"] {
        assert!(stdout.contains(process), "no row for {process}:\n{stdout}");
    }
}
