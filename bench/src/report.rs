//! The results of one run as markdown tables (one for the plain systems, one
//! for the wss ones): a column per system, a row per figure, throughput
//! figures with their ratio to the table's first column (its baseline), and
//! the CPU time per operation of each process.

use std::fmt::Write;

use crate::scenario::{CpuPerOp, IdleCost, Rate};
use crate::system::Kind;

/// Everything measured for one system.
#[derive(Debug, Clone, Default)]
pub struct Results {
    /// Echo, 64 B, one in flight per connection.
    pub round_trips: Rate,
    /// Echo, 64 B, 16 in flight per connection.
    pub pipelined: Rate,
    /// Echo, 64 KiB messages.
    pub large: Rate,
    /// Connect, handshake, one echo, close.
    pub churn: Rate,
    /// Idle connections.
    pub idle: IdleCost,
    /// Chat fan-out at a fixed rate.
    pub fanout: Rate,
    /// Chat fan-out with a window of messages in flight.
    pub fanout_pipelined: Rate,
    /// Connect, (TLS,) upgrade, close: no message.
    pub handshakes: Rate,
}

impl Results {
    /// Errors of every scenario.
    pub fn errors(&self) -> u64 {
        self.round_trips.errors
            + self.pipelined.errors
            + self.large.errors
            + self.churn.errors
            + self.idle.errors
            + self.fanout.errors
            + self.fanout_pipelined.errors
            + self.handshakes.errors
    }
}

/// The markdown table; the first system is the baseline the ratios refer to.
pub fn table(systems: &[(Kind, Results)], labels: &Labels) -> String {
    let mut out = String::new();
    let _ = write!(out, "| figure |");
    for (kind, _) in systems {
        let _ = write!(out, " {} |", kind.label());
    }
    let _ = write!(out, "\n|---|");
    for _ in systems {
        let _ = write!(out, "---:|");
    }
    out.push('\n');
    let baseline = systems
        .first()
        .map(|(_, results)| results.clone())
        .unwrap_or_default();
    let cpu_row = |out: &mut String, name: &str, cpu: &dyn Fn(&Results) -> CpuPerOp| {
        let _ = write!(
            out,
            "| … CPU per {name}, µs: front / server / load generator |"
        );
        for (_, results) in systems {
            let cpu = cpu(results);
            let front = cpu
                .front
                .map_or("–".to_owned(), |front| format!("{front:.2}"));
            let _ = write!(out, " {front} / {:.2} / {:.2} |", cpu.server, cpu.generator);
        }
        out.push('\n');
    };
    let row = |out: &mut String,
               name: &str,
               value: &dyn Fn(&Results) -> f64,
               ratio: bool,
               digits: usize| {
        let _ = write!(out, "| {name} |");
        let base = value(&baseline);
        for (_, results) in systems {
            let v = value(results);
            if ratio && base > 0.0 {
                let _ = write!(out, " {v:.digits$} ({:.2}×) |", v / base);
            } else {
                let _ = write!(out, " {v:.digits$} |");
            }
        }
        out.push('\n');
    };
    row(
        &mut out,
        &format!("{}: round trips/s", labels.round_trips),
        &|r| r.round_trips.per_second,
        true,
        0,
    );
    row(
        &mut out,
        "… p50 latency, µs",
        &|r| r.round_trips.latency.p50 as f64,
        false,
        0,
    );
    row(
        &mut out,
        "… p99 latency, µs",
        &|r| r.round_trips.latency.p99 as f64,
        false,
        0,
    );
    row(
        &mut out,
        "… p99.9 latency, µs",
        &|r| r.round_trips.latency.p999 as f64,
        false,
        0,
    );
    cpu_row(&mut out, "round trip", &|r| r.round_trips.cpu);
    row(
        &mut out,
        &format!("{}: messages/s", labels.pipelined),
        &|r| r.pipelined.per_second,
        true,
        0,
    );
    row(&mut out, "… MB/s", &|r| r.pipelined.mb_per_second, true, 1);
    cpu_row(&mut out, "message", &|r| r.pipelined.cpu);
    row(
        &mut out,
        &format!("{}: messages/s", labels.large),
        &|r| r.large.per_second,
        true,
        0,
    );
    row(&mut out, "… MB/s", &|r| r.large.mb_per_second, true, 1);
    cpu_row(&mut out, "64 KiB message", &|r| r.large.cpu);
    row(
        &mut out,
        &format!("{}: handshakes/s", labels.churn),
        &|r| r.churn.per_second,
        true,
        0,
    );
    row(
        &mut out,
        "… p99, µs",
        &|r| r.churn.latency.p99 as f64,
        false,
        0,
    );
    cpu_row(&mut out, "connection", &|r| r.churn.cpu);
    row(
        &mut out,
        &format!("{}: handshakes/s", labels.handshakes),
        &|r| r.handshakes.per_second,
        true,
        0,
    );
    row(
        &mut out,
        "… p99, µs",
        &|r| r.handshakes.latency.p99 as f64,
        false,
        0,
    );
    cpu_row(&mut out, "handshake", &|r| r.handshakes.cpu);
    row(
        &mut out,
        &format!("{}: connections held", labels.idle),
        &|r| r.idle.connections as f64,
        false,
        0,
    );
    row(
        &mut out,
        "… front (gateway/nginx) RSS per connection, B",
        &|r| r.idle.front_per_connection,
        false,
        0,
    );
    row(
        &mut out,
        "… echo server RSS per connection, B",
        &|r| r.idle.echo_per_connection,
        false,
        0,
    );
    row(
        &mut out,
        &format!("{}: deliveries/s", labels.fanout),
        &|r| r.fanout.per_second,
        true,
        0,
    );
    row(
        &mut out,
        "… p99 delivery latency, µs",
        &|r| r.fanout.latency.p99 as f64,
        false,
        0,
    );
    row(
        &mut out,
        "… messages lost",
        &|r| r.fanout.errors as f64,
        false,
        0,
    );
    cpu_row(&mut out, "delivery", &|r| r.fanout.cpu);
    row(
        &mut out,
        &format!("{}: deliveries/s", labels.fanout_pipelined),
        &|r| r.fanout_pipelined.per_second,
        true,
        0,
    );
    row(
        &mut out,
        "… p99 delivery latency, µs",
        &|r| r.fanout_pipelined.latency.p99 as f64,
        false,
        0,
    );
    cpu_row(&mut out, "delivery", &|r| r.fanout_pipelined.cpu);
    row(
        &mut out,
        "errors, all scenarios",
        &|r| r.errors() as f64,
        false,
        0,
    );
    out
}

/// The scenario names with their settings, for the table.
#[derive(Debug, Clone)]
pub struct Labels {
    /// Echo request/response.
    pub round_trips: String,
    /// Echo with many in flight.
    pub pipelined: String,
    /// Echo of large messages.
    pub large: String,
    /// Connection churn.
    pub churn: String,
    /// Idle connections.
    pub idle: String,
    /// Chat fan-out at a fixed rate.
    pub fanout: String,
    /// Chat fan-out with messages in flight.
    pub fanout_pipelined: String,
    /// Handshakes without a message.
    pub handshakes: String,
}
