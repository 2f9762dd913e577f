//! What the gateway and every backend do alike with the prometheus-client
//! `Registry` each of them owns: register a metric and keep it
//! ([`registered`]), the `process_*` descriptor gauges set at scrape time
//! ([`ProcessMetrics`]), and the text of one scrape ([`encode`]).
//!
//! The registry and which metrics it holds stay the caller's (never a
//! static); serving the text is [`crate::metrics_endpoint`]'s job.

use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Metric, Registry, Unit};

use crate::metrics_endpoint::descriptor_usage;

/// Registers a clone of `metric` in `registry` as `name` with `help` (in
/// `unit`, which prometheus-client appends to the name, if given) and
/// returns `metric`, which shares its values with the registered clone.
pub fn registered<M: Metric + Clone>(
    registry: &mut Registry,
    name: impl Into<String>,
    help: impl Into<String>,
    unit: Option<Unit>,
    metric: M,
) -> M {
    match unit {
        Some(unit) => registry.register_with_unit(name, help, unit, metric.clone()),
        None => registry.register(name, help, metric.clone()),
    }
    metric
}

/// `process_open_fds` and `process_max_fds`, set from
/// [`descriptor_usage`] by [`ProcessMetrics::update`] before each scrape
/// (`-1` where a figure cannot be read).
#[derive(Debug)]
pub struct ProcessMetrics {
    open_fds: Gauge,
    max_fds: Gauge,
}

impl ProcessMetrics {
    /// Registers both gauges in `registry` under the `process` prefix.
    pub fn register(registry: &mut Registry) -> ProcessMetrics {
        let process = registry.sub_registry_with_prefix("process");
        ProcessMetrics {
            open_fds: registered(
                process,
                "open_fds",
                "Open file descriptors (read from /proc/self/fd at scrape time)",
                None,
                Gauge::default(),
            ),
            max_fds: registered(
                process,
                "max_fds",
                "The soft limit on open file descriptors (RLIMIT_NOFILE)",
                None,
                Gauge::default(),
            ),
        }
    }

    /// Reads the descriptor figures into the gauges.
    pub fn update(&self) {
        let (open, limit) = descriptor_usage();
        let as_gauge = |value: u64| i64::try_from(value).unwrap_or(i64::MAX);
        self.open_fds.set(open.map_or(-1, as_gauge));
        self.max_fds.set(limit.map_or(-1, as_gauge));
    }
}

/// `registry` in the Prometheus text format; a failure to encode is logged
/// and leaves what was written so far.
pub fn encode(registry: &Registry) -> String {
    let mut text = String::new();
    if let Err(error) = prometheus_text::encode(&mut text, registry) {
        tracing::error!(%error, "cannot encode the metrics");
    }
    text
}

#[cfg(test)]
mod tests {
    use prometheus_client::metrics::counter::Counter;

    use super::*;

    #[test]
    fn registered_metrics_and_process_gauges_are_encoded() {
        let mut registry = Registry::default();
        let prefixed = registry.sub_registry_with_prefix("wsgate");
        let counter: Counter =
            registered(prefixed, "things", "Things seen", None, Counter::default());
        let bytes: Counter = registered(
            prefixed,
            "thing",
            "Bytes of the things seen",
            Some(Unit::Bytes),
            Counter::default(),
        );
        let process = ProcessMetrics::register(&mut registry);
        counter.inc_by(3);
        bytes.inc_by(7);
        process.update();
        let text = encode(&registry);
        assert!(
            text.contains("# HELP wsgate_things_total Things seen.\n"),
            "{text}"
        );
        assert!(text.contains("\nwsgate_things_total 3\n"), "{text}");
        assert!(text.contains("\nwsgate_thing_bytes_total 7\n"), "{text}");
        let open_fds = text
            .lines()
            .find_map(|line| line.strip_prefix("process_open_fds "))
            .and_then(|value| value.parse::<i64>().ok())
            .expect("process_open_fds is served");
        assert!(open_fds >= 3, "{text}");
        assert!(
            text.contains("\n# TYPE process_max_fds gauge\nprocess_max_fds "),
            "{text}"
        );
    }
}
