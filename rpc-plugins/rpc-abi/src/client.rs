//! [`ClientInfo`]: who a session is for, as the host passes it to
//! `session_open` (JSON text in the C ABI, this struct in a Rust plugin).
//!
//! The host fills it from the gateway's OPEN metadata (`link::OpenMeta`, through `backend::OpenMeta`);
//! what a plugin does with it (a per-address budget, a log line) is the plugin's business.

use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

/// The client of one session. Every field may be empty when the host does not
/// know it; a plugin must not trust `path` or `query` for access decisions.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClientInfo {
    /// The client's address as the gateway saw it, `ip:port` (`[v6]:port` for IPv6).
    pub peer: String,
    /// The request path of the WebSocket, without the query.
    pub path: String,
    /// The query string without `?`, empty when there is none.
    pub query: String,
}

impl ClientInfo {
    /// The IP address of [`ClientInfo::peer`], if it is an `ip:port` or a bare IP.
    pub fn peer_ip(&self) -> Option<IpAddr> {
        self.peer
            .parse::<SocketAddr>()
            .map(|addr| addr.ip())
            .or_else(|_| self.peer.parse::<IpAddr>())
            .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_ip_drops_the_port() {
        let check = |peer: &str, expected: Option<&str>| {
            let client = ClientInfo {
                peer: peer.to_owned(),
                ..ClientInfo::default()
            };
            let expected = expected.map(|ip| ip.parse::<IpAddr>().expect("test IPs parse"));
            assert_eq!(client.peer_ip(), expected, "{peer:?}");
        };
        check("203.0.113.7:51234", Some("203.0.113.7"));
        check("[2001:db8::1]:443", Some("2001:db8::1"));
        check("2001:db8::1", Some("2001:db8::1"));
        check("", None);
        check("unix socket", None);
    }
}
