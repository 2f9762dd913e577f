//! The gateway's metrics: one [`Metrics`] registry per `serve`, held in
//! `Shared` (never a static), served in the Prometheus text format on the
//! `--metrics-listen` listener by `lifecycle::metrics_endpoint`.
//! `docs/metrics.md` lists every metric.
//!
//! The other modules report events with one call each (`upgrade`,
//! `backend_accepted`, `authorizer_answered`, ...). A relayed client gets a
//! [`ClientMetrics`] whose counters are looked up once, when it connects;
//! a batch of messages is counted in a local [`Tally`] and added with two
//! atomic additions, with no label look-up. The series of each name are
//! looked up in their families once, by the name's first client, and kept
//! with the name ([`NameSeries`]): a client after that costs one look-up
//! of its name.
//!
//! Label values are bounded whatever clients send: a `name` label is only
//! ever a name that passed the allow/deny check and has a socket, and at
//! most [`MAX_NAME_LABELS`] distinct names get their own series (the rest
//! are counted as `other`); close codes outside the protocol's own are
//! counted by class (`3xxx`, `4xxx`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use lifecycle::metrics_registry::{ProcessMetrics, registered};
use prometheus_client::encoding::{EncodeLabelSet, prometheus_text};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

use crate::backend::LinkOrigin;
use crate::refusal::Refusal;
use crate::relay::Ending;
use crate::tls::HandshakeError;

/// Distinct backend names with series of their own; further names are `other`.
pub(crate) const MAX_NAME_LABELS: usize = 1000;

/// The `name` label of names beyond [`MAX_NAME_LABELS`] (and of plain
/// requests for a name the allow/deny globs refuse).
pub(crate) const OTHER_NAME: &str = "other";

/// How the gateway serves an accepted client: the `mode` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClientMode {
    /// Framed link, messages relayed.
    Relay,
    /// ouistiti's raw mode, bytes relayed.
    Raw,
    /// The client's socket handed to the backend.
    Direct,
}

impl ClientMode {
    fn label(self) -> &'static str {
        match self {
            ClientMode::Relay => "relay",
            ClientMode::Raw => "raw",
            ClientMode::Direct => "direct",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClientLabels {
    name: String,
    mode: &'static str,
    tls: bool,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TrafficLabels {
    name: String,
    direction: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NameLabels {
    name: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CloseLabels {
    direction: &'static str,
    code: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LinkLabels {
    link: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    name: String,
    status: u16,
}

/// Seconds buckets from 0.5 ms to about 16 s, doubling.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// Every metric of one gateway.
pub(crate) struct Metrics {
    registry: Registry,
    /// Names given a label of their own so far (at most
    /// [`MAX_NAME_LABELS`]), and `other`, with their series.
    named: Mutex<HashMap<String, Arc<NameSeries>>>,
    connections_open: Family<ClientLabels, Gauge>,
    connections: Family<ClientLabels, Counter>,
    upgrades: Family<StatusLabels, Counter>,
    /// `upgrades{status="101"}`, the one every client counts, once looked up.
    upgrades_switched: OnceLock<Counter>,
    messages: Family<TrafficLabels, Counter>,
    message_bytes: Family<TrafficLabels, Counter>,
    close_codes: Family<CloseLabels, Counter>,
    backend_accept: Family<NameLabels, Histogram, fn() -> Histogram>,
    authorizer_latency: Histogram,
    authorizer_answers: Family<OutcomeLabels, Counter>,
    tls_handshakes: Family<OutcomeLabels, Counter>,
    http_requests: Family<HttpLabels, Counter>,
    carrier_links: Gauge,
    backend_link_opens: Family<LinkLabels, Counter>,
    /// `backend_link_opens` by [`LinkOrigin`], once looked up.
    backend_link_opens_by_origin: [OnceLock<Counter>; 2],
    backend_links_idle: Gauge,
    process: ProcessMetrics,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("Metrics")
    }
}

impl Metrics {
    /// A registry with every gateway metric at zero.
    pub(crate) fn new() -> Metrics {
        let mut registry = Registry::default();
        let gateway = registry.sub_registry_with_prefix("wsgate");
        let connections_open = registered(
            gateway,
            "connections_open",
            "WebSocket clients relayed now, by backend name, mode (relay, raw) and tls",
            None,
            Family::default(),
        );
        let connections = registered(
            gateway,
            "connections",
            "WebSocket clients accepted (101), by backend name, mode (relay, raw, direct) and tls",
            None,
            Family::default(),
        );
        let upgrades = registered(
            gateway,
            "upgrades",
            "WebSocket upgrade requests by the status answered (101 or the refusal's)",
            None,
            Family::default(),
        );
        let messages = registered(
            gateway,
            "messages",
            "Messages relayed, by backend name and direction (to_backend, to_client)",
            None,
            Family::default(),
        );
        let message_bytes = registered(
            gateway,
            "message",
            "Payload bytes of the messages relayed, by backend name and direction",
            Some(Unit::Bytes),
            Family::default(),
        );
        let close_codes = registered(
            gateway,
            "close_codes",
            "Close codes sent to and received from relayed clients (direction to_client, from_client); \
             1006 received: the connection ended without a close frame",
            None,
            Family::default(),
        );
        let backend_accept = registered(
            gateway,
            "backend_accept",
            "Time from connecting to a backend to its ACCEPT, by backend name",
            Some(Unit::Seconds),
            Family::new_with_constructor(latency_histogram as fn() -> Histogram),
        );
        let authorizer_latency = registered(
            gateway,
            "authorizer",
            "Time the authorizer took to answer (answers and timeouts)",
            Some(Unit::Seconds),
            latency_histogram(),
        );
        let authorizer_answers = registered(
            gateway,
            "authorizer_answers",
            "Authorizer answers by outcome (allowed, refused, timeout, failed)",
            None,
            Family::default(),
        );
        let tls_handshakes = registered(
            gateway,
            "tls_handshakes",
            "TLS handshakes by outcome (ok, failed, timeout)",
            None,
            Family::default(),
        );
        let http_requests = registered(
            gateway,
            "http_requests",
            "Plain HTTP requests forwarded to backends (--http), by backend name and status",
            None,
            Family::default(),
        );
        let carrier_links = registered(
            gateway,
            "carrier_links_open",
            "Carrier links open to backends (fan-out, docs/link-protocol.md)",
            None,
            Gauge::default(),
        );
        let backend_link_opens = registered(
            gateway,
            "backend_link_opens",
            "Clients' OPEN records (and OPEN_HANDOFFs) sent to backends, by link: \
             new (connected for it) or reused (an idle link the backend offered)",
            None,
            Family::default(),
        );
        let backend_links_idle = registered(
            gateway,
            "backend_links_idle",
            "Idle links to backends kept for the next client (docs/link-protocol.md, Link reuse)",
            None,
            Gauge::default(),
        );
        let process = ProcessMetrics::register(&mut registry);
        Metrics {
            registry,
            named: Mutex::new(HashMap::new()),
            connections_open,
            connections,
            upgrades,
            upgrades_switched: OnceLock::new(),
            messages,
            message_bytes,
            close_codes,
            backend_accept,
            authorizer_latency,
            authorizer_answers,
            tls_handshakes,
            http_requests,
            carrier_links,
            backend_link_opens,
            backend_link_opens_by_origin: Default::default(),
            backend_links_idle,
            process,
        }
    }

    /// The `name` label for `name`, which passed the allow/deny check: the
    /// name itself while fewer than [`MAX_NAME_LABELS`] names have one.
    fn name_label(&self, name: &str) -> String {
        self.series(name).label.clone()
    }

    /// The series of `name`'s label ([`Metrics::name_label`]).
    fn series(&self, name: &str) -> Arc<NameSeries> {
        let mut named = self
            .named
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(series) = named.get(name) {
            return Arc::clone(series);
        }
        // `other` is kept beside the names and not counted among them.
        let n_names = named.len() - usize::from(named.contains_key(OTHER_NAME));
        let label = if n_names < MAX_NAME_LABELS {
            name
        } else {
            OTHER_NAME
        };
        Arc::clone(
            named
                .entry(label.to_owned())
                .or_insert_with(|| Arc::new(NameSeries::new(label))),
        )
    }

    /// An upgrade request answered with `status` (`101` or a refusal's).
    pub(crate) fn upgrade(&self, status: u16) {
        if status == 101 {
            self.upgrades_switched
                .get_or_init(|| self.upgrades.get_or_create_owned(&StatusLabels { status }))
                .inc();
        } else {
            self.upgrades.get_or_create(&StatusLabels { status }).inc();
        }
    }

    /// A client of `name` got its `101`: the counters of its relay (a
    /// direct-mode client only counts as accepted; the gateway forgets it).
    pub(crate) fn client(&self, name: &str, mode: ClientMode, tls: bool) -> ClientMetrics {
        let series = self.series(name);
        let clients = series.clients[mode as usize][usize::from(tls)].get_or_init(|| {
            let labels = ClientLabels {
                name: series.label.clone(),
                mode: mode.label(),
                tls,
            };
            ClientSeries {
                connections: self.connections.get_or_create_owned(&labels),
                open: (mode != ClientMode::Direct)
                    .then(|| self.connections_open.get_or_create_owned(&labels)),
            }
        });
        clients.connections.inc();
        let open = clients.open.clone();
        if let Some(open) = &open {
            open.inc();
        }
        let [to_backend, to_client] = series
            .traffic
            .get_or_init(|| {
                ["to_backend", "to_client"].map(|direction| {
                    let labels = TrafficLabels {
                        name: series.label.clone(),
                        direction,
                    };
                    Traffic {
                        messages: self.messages.get_or_create_owned(&labels),
                        bytes: self.message_bytes.get_or_create_owned(&labels),
                    }
                })
            })
            .clone();
        ClientMetrics {
            open,
            to_backend,
            to_client,
            close_codes: self.close_codes.clone(),
        }
    }

    /// The gauge of carrier links open.
    pub(crate) fn carrier_links(&self) -> Gauge {
        self.carrier_links.clone()
    }

    /// The gauge of idle links kept for the next client, which the link pool sets.
    pub(crate) fn backend_links_idle(&self) -> Gauge {
        self.backend_links_idle.clone()
    }

    /// A client's OPEN (or OPEN_HANDOFF) went on a link from `origin`.
    pub(crate) fn backend_link_opened(&self, origin: LinkOrigin) {
        self.backend_link_opens_by_origin[origin as usize]
            .get_or_init(|| {
                self.backend_link_opens.get_or_create_owned(&LinkLabels {
                    link: origin.label(),
                })
            })
            .inc();
    }

    /// A backend of `name` accepted a client `elapsed` after the gateway
    /// started connecting to it.
    pub(crate) fn backend_accepted(&self, name: &str, elapsed: Duration) {
        let series = self.series(name);
        series
            .backend_accept
            .get_or_init(|| {
                self.backend_accept.get_or_create_owned(&NameLabels {
                    name: series.label.clone(),
                })
            })
            .observe(elapsed.as_secs_f64());
    }

    /// The authorizer answered (or failed to) after `elapsed`.
    pub(crate) fn authorizer_answered<T>(&self, answer: &Result<T, Refusal>, elapsed: Duration) {
        let outcome = match answer {
            Ok(_) => "allowed",
            Err(Refusal::AuthorizerRefused { .. }) => "refused",
            Err(Refusal::AuthorizerFailed {
                cause: crate::authorizer::AuthorizerError::Timeout(_),
                ..
            }) => "timeout",
            Err(_) => "failed",
        };
        self.authorizer_latency.observe(elapsed.as_secs_f64());
        self.authorizer_answers
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    /// A TLS handshake ended.
    pub(crate) fn tls_handshake<T>(&self, handshake: &Result<T, HandshakeError>) {
        let outcome = match handshake {
            Ok(_) => "ok",
            Err(HandshakeError::Timeout(_)) => "timeout",
            Err(HandshakeError::Failed(_)) => "failed",
        };
        self.tls_handshakes
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    /// A plain request for `name` (`--http`) was answered with `status`;
    /// `allowed` says whether the name passed the allow/deny check.
    pub(crate) fn http_request(&self, name: &str, allowed: bool, status: u16) {
        let name = if allowed {
            self.name_label(name)
        } else {
            OTHER_NAME.to_owned()
        };
        self.http_requests
            .get_or_create(&HttpLabels { name, status })
            .inc();
    }
}

impl lifecycle::metrics_endpoint::Render for Metrics {
    fn render(&self) -> String {
        self.process.update();
        lifecycle::metrics_registry::encode(&self.registry)
    }

    fn content_type(&self) -> &'static str {
        prometheus_text::CONTENT_TYPE
    }
}

/// The series of one `name` label, each looked up in its family by the
/// first client that needs it and shared by the name's clients after that.
/// A family never drops a series, so these stay the ones it exposes.
#[derive(Debug)]
struct NameSeries {
    /// The label itself: the name, or `other`.
    label: String,
    /// `connections` and `connections_open` by mode ([`ClientMode`] as an
    /// index) and TLS.
    clients: [[OnceLock<ClientSeries>; 2]; 3],
    /// `messages` and `message_bytes`, to the backend and to the client.
    traffic: OnceLock<[Traffic; 2]>,
    backend_accept: OnceLock<Histogram>,
}

impl NameSeries {
    fn new(label: &str) -> NameSeries {
        NameSeries {
            label: label.to_owned(),
            clients: Default::default(),
            traffic: OnceLock::new(),
            backend_accept: OnceLock::new(),
        }
    }
}

/// The connection series of one name, mode and TLS.
#[derive(Debug)]
struct ClientSeries {
    connections: Counter,
    /// None for direct mode, whose clients the gateway does not keep.
    open: Option<Gauge>,
}

/// What one relayed client counts, looked up once when it connected. The
/// open-connections gauge goes down when this is dropped.
#[derive(Debug)]
pub(crate) struct ClientMetrics {
    open: Option<Gauge>,
    /// Messages from the client to its backend.
    pub(crate) to_backend: Traffic,
    /// Messages from the backend to the client.
    pub(crate) to_client: Traffic,
    close_codes: Family<CloseLabels, Counter>,
}

impl ClientMetrics {
    /// Counts the close codes of how the relay ended.
    pub(crate) fn ended(&self, ending: &Ending) {
        let count = |direction, code| {
            self.close_codes
                .get_or_create(&CloseLabels { direction, code })
                .inc();
        };
        let frame_code = |frame: &Option<CloseFrame>| {
            close_code_label(frame.as_ref().map(|frame| u16::from(frame.code)))
        };
        match ending {
            Ending::ClientClosed(frame) => {
                // tungstenite answers with the client's own code.
                count("from_client", frame_code(frame));
                count("to_client", frame_code(frame));
            }
            Ending::ClientGone(_) => count("from_client", "1006"),
            Ending::ClientFailed { code, .. } => {
                count("to_client", close_code_label(Some(u16::from(*code))));
            }
            Ending::Idle | Ending::Shutdown => count("to_client", "1001"),
            Ending::BackendClosed(frame) => count("to_client", frame_code(frame)),
            Ending::BackendGone(_) => count("to_client", "1011"),
            Ending::TooSlow => count("to_client", "1008"),
        }
    }
}

impl Drop for ClientMetrics {
    fn drop(&mut self) {
        if let Some(open) = &self.open {
            open.dec();
        }
    }
}

/// The message and byte counters of one direction of one client's relay.
#[derive(Debug, Clone)]
pub(crate) struct Traffic {
    messages: Counter,
    bytes: Counter,
}

impl Traffic {
    /// One message of `len` payload bytes crossed.
    #[inline]
    pub(crate) fn count(&self, len: usize) {
        self.messages.inc();
        self.bytes.inc_by(len as u64);
    }

    /// A local tally for one batch, added to these counters when it drops.
    pub(crate) fn tally(&self) -> Tally<'_> {
        Tally {
            traffic: self,
            n_messages: 0,
            n_bytes: 0,
        }
    }
}

/// Messages of one batch counted locally: one pair of atomic additions per
/// batch instead of per message, whichever way the batch ends.
#[derive(Debug)]
pub(crate) struct Tally<'a> {
    traffic: &'a Traffic,
    n_messages: u64,
    n_bytes: u64,
}

impl Tally<'_> {
    /// One message of `len` payload bytes crossed.
    #[inline]
    pub(crate) fn count(&mut self, len: usize) {
        self.n_messages += 1;
        self.n_bytes += len as u64;
    }

    /// `n_messages` messages of `n_bytes` payload bytes in all crossed.
    #[inline]
    pub(crate) fn count_many(&mut self, n_messages: u64, n_bytes: u64) {
        self.n_messages += n_messages;
        self.n_bytes += n_bytes;
    }
}

impl Drop for Tally<'_> {
    fn drop(&mut self) {
        if self.n_messages != 0 {
            self.traffic.messages.inc_by(self.n_messages);
            self.traffic.bytes.inc_by(self.n_bytes);
        }
    }
}

/// The `code` label of a close code: the protocol's own codes as they are,
/// the application ranges by class, `none` for a close without a code.
fn close_code_label(code: Option<u16>) -> &'static str {
    const CODES: [&str; 16] = [
        "1000", "1001", "1002", "1003", "1004", "1005", "1006", "1007", "1008", "1009", "1010",
        "1011", "1012", "1013", "1014", "1015",
    ];
    match code {
        None => "none",
        Some(code @ 1000..=1015) => CODES[usize::from(code - 1000)],
        Some(3000..=3999) => "3xxx",
        Some(4000..=4999) => "4xxx",
        Some(_) => "other",
    }
}

#[cfg(test)]
mod tests {
    use lifecycle::metrics_endpoint::Render;

    use super::*;

    #[test]
    fn names_beyond_the_cap_share_the_other_label() {
        let metrics = Metrics::new();
        for index in 0..MAX_NAME_LABELS {
            assert_eq!(
                metrics.name_label(&format!("n{index}")),
                format!("n{index}")
            );
        }
        assert_eq!(metrics.name_label("one-too-many"), OTHER_NAME);
        assert_eq!(
            metrics.name_label("n7"),
            "n7",
            "a known name keeps its label"
        );
    }

    #[test]
    fn close_codes_are_bounded_labels() {
        assert_eq!(close_code_label(Some(1000)), "1000");
        assert_eq!(close_code_label(Some(1015)), "1015");
        assert_eq!(close_code_label(Some(3001)), "3xxx");
        assert_eq!(close_code_label(Some(4999)), "4xxx");
        assert_eq!(close_code_label(Some(2000)), "other");
        assert_eq!(close_code_label(None), "none");
    }

    #[test]
    fn a_relayed_client_is_open_until_its_metrics_are_dropped() {
        let metrics = Metrics::new();
        metrics.upgrade(101);
        let client = metrics.client("chat", ClientMode::Relay, false);
        client.to_backend.count(5);
        client.to_client.count(7);
        client.ended(&Ending::Idle);
        let text = metrics.render();
        for line in [
            "wsgate_connections_open{name=\"chat\",mode=\"relay\",tls=\"false\"} 1",
            "wsgate_connections_total{name=\"chat\",mode=\"relay\",tls=\"false\"} 1",
            "wsgate_upgrades_total{status=\"101\"} 1",
            "wsgate_messages_total{name=\"chat\",direction=\"to_backend\"} 1",
            "wsgate_message_bytes_total{name=\"chat\",direction=\"to_client\"} 7",
            "wsgate_close_codes_total{direction=\"to_client\",code=\"1001\"} 1",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
        assert!(text.contains("process_open_fds "), "{text}");
        drop(client);
        assert!(
            metrics
                .render()
                .contains("wsgate_connections_open{name=\"chat\",mode=\"relay\",tls=\"false\"} 0")
        );
    }
}
