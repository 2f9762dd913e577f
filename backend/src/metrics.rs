//! A backend's metrics: one [`Metrics`] registry per process, created with
//! its [`crate::ServeOptions`] and kept there and in each [`crate::Session`]
//! (never in a static, so a plugin loaded into the process cannot see a
//! second copy), served in the Prometheus text format on `--metrics-listen`
//! by `lifecycle::metrics_endpoint`. `docs/metrics.md` lists every metric.
//!
//! The library counts sessions (open and total, by mode), messages and
//! payload bytes each way, and links refused; a server counts its own events
//! with a [`Counter`] it registers ([`Metrics::counter`]), such as
//! [`Metrics::slow_client_evictions`]. Counting a message is two atomic
//! additions on counters every session shares; no label is looked up.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use prometheus_client::encoding::{EncodeLabelSet, prometheus_text};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

use lifecycle::metrics_registry::{ProcessMetrics, registered};
use link::LinkMode;

/// The prefix of every backend metric.
pub const PREFIX: &str = "wsgate_backend";

/// Most counters a server may register; past it [`Metrics::counter`] hands
/// out counters that are counted but not served (and logs that once).
pub const MAX_SERVER_COUNTERS: usize = 64;

/// A counter a server registered with [`Metrics::counter`]: cheap to clone
/// (every clone counts into the same series) and to increment.
#[derive(Debug, Clone, Default)]
pub struct Counter(prometheus_client::metrics::counter::Counter);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.0.inc();
    }

    /// Adds `n`.
    pub fn inc_by(&self, n: u64) {
        self.0.inc_by(n);
    }

    /// The value now.
    pub fn get(&self) -> u64 {
        self.0.get()
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModeLabels {
    mode: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

/// Why a link from the gateway did not become a session: the `reason` label
/// of `wsgate_backend_links_refused_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The client limit (`-m`) was reached: closed with 1013.
    ClientLimit,
    /// The server's admission check answered REJECT.
    Admission,
}

/// One backend's metrics; clones share the registry.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Mutex<Registry>,
    /// Counters the server registered, by name.
    server_counters: Mutex<HashMap<String, Counter>>,
    sessions_open: Family<ModeLabels, Gauge>,
    sessions: Family<ModeLabels, prometheus_client::metrics::counter::Counter>,
    links_refused: Family<ReasonLabels, prometheus_client::metrics::counter::Counter>,
    carriers_open: Gauge,
    received: Traffic,
    sent: Traffic,
    process: ProcessMetrics,
}

/// The message and byte counters of one direction.
#[derive(Debug)]
struct Traffic {
    messages: prometheus_client::metrics::counter::Counter,
    bytes: prometheus_client::metrics::counter::Counter,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    /// A registry with the library's metrics at zero.
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let backend = registry.sub_registry_with_prefix(PREFIX);
        let sessions_open = registered(
            backend,
            "sessions_open",
            "Sessions (clients) open now, by mode (relay, direct)",
            None,
            Family::default(),
        );
        let sessions = registered(
            backend,
            "sessions",
            "Sessions opened since start, by mode (relay, direct)",
            None,
            Family::default(),
        );
        let links_refused = registered(
            backend,
            "links_refused",
            "Clients refused before becoming sessions, by reason (client_limit: closed with 1013; admission: REJECT)",
            None,
            Family::default(),
        );
        let carriers_open = registered(
            backend,
            "carriers_open",
            "Carrier links from gateways open now (fan-out: one per gateway process)",
            None,
            Gauge::default(),
        );
        let [received, sent] =
            [("received", "from clients"), ("sent", "to clients")].map(|(direction, what)| {
                Traffic {
                    messages: registered(
                        backend,
                        format!("messages_{direction}"),
                        format!("Text and binary messages {what}"),
                        None,
                        Default::default(),
                    ),
                    bytes: registered(
                        backend,
                        format!("message_{direction}"),
                        format!("Payload bytes of the messages {what}"),
                        Some(Unit::Bytes),
                        Default::default(),
                    ),
                }
            });
        let process = ProcessMetrics::register(&mut registry);
        Metrics {
            inner: Arc::new(Inner {
                registry: Mutex::new(registry),
                server_counters: Mutex::new(HashMap::new()),
                sessions_open,
                sessions,
                links_refused,
                carriers_open,
                received,
                sent,
                process,
            }),
        }
    }

    /// The counter `wsgate_backend_<name>_total`, registered on first use
    /// with `help`; asking again for `name` returns the same counter. `name`
    /// is the server's own constant: letters, digits and `_`. Past
    /// [`MAX_SERVER_COUNTERS`] names, or for a name that is not such, the
    /// counter counts but is not served, and that is logged.
    pub fn counter(&self, name: &str, help: &str) -> Counter {
        let mut counters = self
            .inner
            .server_counters
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(counter) = counters.get(name) {
            return counter.clone();
        }
        let counter = Counter::default();
        let valid = !name.is_empty()
            && name
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || byte == b'_');
        if !valid || counters.len() >= MAX_SERVER_COUNTERS {
            tracing::error!(
                name,
                max = MAX_SERVER_COUNTERS,
                "metric not registered: invalid name or too many server counters"
            );
            return counter;
        }
        self.inner
            .registry
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .sub_registry_with_prefix(PREFIX)
            .register(name, help, counter.0.clone());
        counters.insert(name.to_owned(), counter.clone());
        counter
    }

    /// `wsgate_backend_slow_client_evictions_total`: clients a server closed
    /// because they did not read while their queue was full (the chat's and
    /// the broker's `--stall-timeout`, close code 1008).
    pub fn slow_client_evictions(&self) -> Counter {
        self.counter(
            "slow_client_evictions",
            "Clients closed with 1008 because their queue stayed full while they read nothing (--stall-timeout)",
        )
    }

    /// A session of `mode` opened; it counts as open until the guard drops.
    pub(crate) fn session_opened(&self, mode: LinkMode) -> OpenSession {
        let labels = ModeLabels {
            mode: match mode {
                LinkMode::Framed => "relay",
                LinkMode::Direct => "direct",
                LinkMode::Carrier => "carrier",
            },
        };
        self.inner.sessions.get_or_create(&labels).inc();
        let open = self.inner.sessions_open.get_or_create_owned(&labels);
        open.inc();
        OpenSession(open)
    }

    /// A carrier link opened; it counts as open until the guard drops.
    pub(crate) fn carrier_opened(&self) -> OpenSession {
        self.inner.carriers_open.inc();
        OpenSession(self.inner.carriers_open.clone())
    }

    /// A link was refused before it became a session.
    pub(crate) fn link_refused(&self, refused: Refused) {
        let reason = match refused {
            Refused::ClientLimit => "client_limit",
            Refused::Admission => "admission",
        };
        self.inner
            .links_refused
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// A message of `len` payload bytes came from a client.
    #[inline]
    pub(crate) fn received(&self, len: usize) {
        self.inner.received.messages.inc();
        self.inner.received.bytes.inc_by(len as u64);
    }

    /// A message of `len` payload bytes went to a client.
    #[inline]
    pub(crate) fn sent(&self, len: usize) {
        self.inner.sent.messages.inc();
        self.inner.sent.bytes.inc_by(len as u64);
    }

    /// A message of `len` payload bytes went to `n` clients (one FANOUT).
    #[inline]
    pub(crate) fn sent_to_many(&self, n: usize, len: usize) {
        self.inner.sent.messages.inc_by(n as u64);
        self.inner
            .sent
            .bytes
            .inc_by((n as u64).saturating_mul(len as u64));
    }
}

impl lifecycle::metrics_endpoint::Render for Metrics {
    fn render(&self) -> String {
        self.inner.process.update();
        let registry = self
            .inner
            .registry
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        lifecycle::metrics_registry::encode(&registry)
    }

    fn content_type(&self) -> &'static str {
        prometheus_text::CONTENT_TYPE
    }
}

/// An open session (or carrier link), counted in `wsgate_backend_sessions_open`
/// (or `wsgate_backend_carriers_open`) until dropped.
#[derive(Debug)]
pub(crate) struct OpenSession(Gauge);

impl Drop for OpenSession {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use lifecycle::metrics_endpoint::Render;

    use super::*;

    #[test]
    fn sessions_messages_and_server_counters_are_served() {
        let metrics = Metrics::new();
        let session = metrics.session_opened(LinkMode::Direct);
        metrics.received(3);
        metrics.sent(4);
        metrics.link_refused(Refused::ClientLimit);
        let carrier = metrics.carrier_opened();
        metrics.sent_to_many(3, 10);
        let evictions = metrics.slow_client_evictions();
        evictions.inc();
        metrics.slow_client_evictions().inc();
        let text = metrics.render();
        for line in [
            "wsgate_backend_sessions_open{mode=\"direct\"} 1",
            "wsgate_backend_sessions_total{mode=\"direct\"} 1",
            "wsgate_backend_messages_received_total 1",
            "wsgate_backend_messages_sent_total 4",
            "wsgate_backend_message_sent_bytes_total 34",
            "wsgate_backend_carriers_open 1",
            "wsgate_backend_links_refused_total{reason=\"client_limit\"} 1",
            "wsgate_backend_slow_client_evictions_total 2",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
        assert_eq!(
            text.matches("# TYPE wsgate_backend_slow_client_evictions_total")
                .count(),
            1,
            "registered once"
        );
        drop(session);
        drop(carrier);
        assert!(metrics.render().contains("wsgate_backend_carriers_open 0"));
        assert!(
            metrics
                .render()
                .contains("wsgate_backend_sessions_open{mode=\"direct\"} 0")
        );
    }

    #[test]
    fn bad_names_and_too_many_counters_count_unserved() {
        let metrics = Metrics::new();
        let bad = metrics.counter("no spaces", "help");
        bad.inc();
        assert_eq!(bad.get(), 1);
        for index in 0..MAX_SERVER_COUNTERS {
            metrics.counter(&format!("c{index}"), "help");
        }
        metrics.counter("one_too_many", "help").inc();
        let text = metrics.render();
        assert!(!text.contains("no spaces"));
        assert!(!text.contains("one_too_many"));
        assert!(text.contains("wsgate_backend_c63_total 0"));
    }
}
