//! The connections that have not upgraded yet (plain HTTP, or a handshake in
//! progress): how many each IP address holds, and which of them to close
//! first when the process runs out of descriptors.
//!
//! A connection registers when it is accepted and leaves when hyper is done
//! with it: when it closes, or when it upgrades (a WebSocket client no longer
//! counts here; `--max-connections` bounds those). Serving the connection is
//! `connection`'s job; this module only counts and picks.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio_util::sync::CancellationToken;

/// Every connection that has not upgraded, per address and in accept order.
#[derive(Debug)]
pub(crate) struct HttpConnections {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// The limit per address; `None`: no limit.
    max_per_ip: Option<usize>,
    next_seq: u64,
    per_ip: HashMap<IpAddr, usize>,
    /// Oldest first, so shedding drops the connections that waited longest.
    by_age: BTreeMap<u64, Entry>,
}

#[derive(Debug)]
struct Entry {
    /// Requests being answered now; a connection with none is idle.
    in_flight: Arc<AtomicUsize>,
    /// Cancelled to close the connection.
    shed: CancellationToken,
}

impl HttpConnections {
    /// Connections from one address are limited to `max_per_ip` (`None`: no limit).
    pub(crate) fn new(max_per_ip: Option<usize>) -> HttpConnections {
        HttpConnections {
            inner: Mutex::new(Inner {
                max_per_ip,
                ..Inner::default()
            }),
        }
    }

    /// Changes the limit (a reload): addresses over the new one keep their
    /// connections, and get new ones once they are under it.
    pub(crate) fn set_max_per_ip(&self, max_per_ip: Option<usize>) {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner.max_per_ip = max_per_ip;
    }

    /// Registers a new connection from `ip`, or `None` when that address
    /// holds its limit already.
    pub(crate) fn register(self: &Arc<Self>, ip: IpAddr) -> Option<HttpConnection> {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let max_per_ip = inner.max_per_ip;
        let n_from_ip = inner.per_ip.entry(ip).or_insert(0);
        if max_per_ip.is_some_and(|max| *n_from_ip >= max) {
            return None;
        }
        *n_from_ip += 1;
        let seq = inner.next_seq;
        inner.next_seq += 1;
        let in_flight = Arc::new(AtomicUsize::new(0));
        let shed = CancellationToken::new();
        inner.by_age.insert(
            seq,
            Entry {
                in_flight: Arc::clone(&in_flight),
                shed: shed.clone(),
            },
        );
        Some(HttpConnection {
            registry: Arc::clone(self),
            ip,
            seq,
            in_flight,
            shed,
        })
    }

    /// Closes up to `max` idle connections (no request being answered),
    /// oldest first, and returns how many it asked to close.
    pub(crate) fn shed_idle(&self, max: usize) -> usize {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let mut n_shed = 0;
        for entry in inner.by_age.values() {
            if n_shed == max {
                break;
            }
            if entry.in_flight.load(Ordering::Acquire) == 0 && !entry.shed.is_cancelled() {
                entry.shed.cancel();
                n_shed += 1;
            }
        }
        n_shed
    }

    /// Connections registered now.
    #[cfg(test)]
    fn len(&self) -> usize {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner.by_age.len()
    }
}

/// One registered connection; dropping it unregisters it.
#[derive(Debug)]
pub(crate) struct HttpConnection {
    registry: Arc<HttpConnections>,
    ip: IpAddr,
    seq: u64,
    in_flight: Arc<AtomicUsize>,
    shed: CancellationToken,
}

impl HttpConnection {
    /// Cancelled when the gateway needs this connection's descriptor back.
    pub(crate) fn shed_token(&self) -> &CancellationToken {
        &self.shed
    }

    /// Marks a request as being answered until the returned guard drops;
    /// a connection with a request in flight is never shed.
    pub(crate) fn request(&self) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(Arc::clone(&self.in_flight))
    }
}

impl Drop for HttpConnection {
    fn drop(&mut self) {
        let mut inner = self
            .registry
            .inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        inner.by_age.remove(&self.seq);
        if let Some(n_from_ip) = inner.per_ip.get_mut(&self.ip) {
            *n_from_ip -= 1;
            if *n_from_ip == 0 {
                inner.per_ip.remove(&self.ip);
            }
        }
    }
}

/// A request being answered; see [`HttpConnection::request`].
#[derive(Debug)]
pub(crate) struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2));

    #[test]
    fn each_address_holds_at_most_its_limit() {
        let registry = Arc::new(HttpConnections::new(Some(2)));
        let first = registry.register(A).expect("first");
        let _second = registry.register(A).expect("second");
        assert!(registry.register(A).is_none(), "third from A refused");
        let _other = registry.register(B).expect("B has its own count");
        drop(first);
        assert!(registry.register(A).is_some(), "room again once one left");
    }

    #[test]
    fn without_a_limit_every_connection_registers() {
        let registry = Arc::new(HttpConnections::new(None));
        let held: Vec<_> = (0..1000).filter_map(|_| registry.register(A)).collect();
        assert_eq!(held.len(), 1000);
        drop(held);
        assert_eq!(registry.len(), 0);
    }

    #[test]
    fn shedding_takes_the_oldest_idle_connections_and_spares_busy_ones() {
        let registry = Arc::new(HttpConnections::new(None));
        let oldest = registry.register(A).expect("oldest");
        let busy = registry.register(A).expect("busy");
        let younger = registry.register(B).expect("younger");
        let youngest = registry.register(B).expect("youngest");
        let _request = busy.request();
        assert_eq!(registry.shed_idle(2), 2);
        assert!(oldest.shed_token().is_cancelled());
        assert!(!busy.shed_token().is_cancelled(), "a request is in flight");
        assert!(younger.shed_token().is_cancelled());
        assert!(!youngest.shed_token().is_cancelled());
        assert_eq!(registry.shed_idle(10), 1, "only the youngest was left idle");
    }
}
