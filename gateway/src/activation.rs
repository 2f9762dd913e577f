//! Where the listening sockets come from: bound here with `SO_REUSEPORT`
//! ([`bind_reuseport`]), or inherited as descriptors 3, 4, … from systemd's
//! socket activation or from the `wsgate` that supervises this worker
//! ([`take_inherited_sockets`], the `LISTEN_FDS` protocol).
//!
//! `SO_REUSEPORT` is what lets several gateway processes (`--workers`) and a
//! new gateway taking over from an old one bind the same port, each with its
//! own accept queue. `LISTEN_FDNAMES` tells which inherited socket is TLS:
//! a socket named `https` or `tls` is served with TLS, any other name (or
//! none) as plain HTTP. Serving the sockets is `server`'s job.

use std::io;
use std::net::{SocketAddr, TcpListener};

/// The `listen(2)` backlog of the sockets bound here (the kernel caps it at
/// `net.core.somaxconn`).
const BACKLOG: i32 = 4096;

/// The `LISTEN_FDNAMES` names of TLS sockets.
const TLS_NAMES: [&str; 2] = ["https", "tls"];

/// The `LISTEN_FDNAMES` name the supervisor gives a plain socket.
pub(crate) const PLAIN_NAME: &str = "http";
/// The `LISTEN_FDNAMES` name the supervisor gives a TLS socket.
pub(crate) const TLS_NAME: &str = "https";

/// Listening sockets handed to this process, split by what they serve.
#[derive(Debug)]
pub struct InheritedSockets {
    pub(crate) plain: Vec<TcpListener>,
    pub(crate) tls: Vec<TcpListener>,
}

impl InheritedSockets {
    /// True if some inherited socket is to be served with TLS.
    pub fn has_tls(&self) -> bool {
        !self.tls.is_empty()
    }
}

/// Why the inherited descriptors cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum ActivationError {
    /// `LISTEN_FDS` names a descriptor that is not a listening TCP socket.
    #[error("inherited descriptor {fd} (LISTEN_FDS) is not a listening TCP socket")]
    NotATcpListener {
        /// The descriptor number.
        fd: usize,
        /// What the check found.
        #[source]
        source: io::Error,
    },
    /// `LISTEN_FDS` is set for this process but holds no descriptor.
    #[error("LISTEN_FDS is set but passes no socket")]
    Empty,
}

/// Takes the sockets passed with `LISTEN_FDS` (and `LISTEN_PID`, when set,
/// equal to this process's id), or `None` when nothing was passed.
///
/// Must run before any other thread starts: reading the protocol removes
/// `LISTEN_FDS` and `LISTEN_PID` from the environment, so no child process
/// believes the sockets are its own.
pub fn take_inherited_sockets() -> Result<Option<InheritedSockets>, ActivationError> {
    let passed = std::env::var_os("LISTEN_FDS").is_some();
    let for_some_process = std::env::var_os("LISTEN_PID").is_some();
    let mut listen_fds = listenfd::ListenFd::from_env();
    if listen_fds.len() == 0 {
        return if passed && !for_some_process {
            Err(ActivationError::Empty)
        } else {
            // Absent, or meant for another process (LISTEN_PID differs).
            Ok(None)
        };
    }
    let names = std::env::var("LISTEN_FDNAMES").unwrap_or_default();
    let mut names = names.split(':');
    let mut sockets = InheritedSockets {
        plain: Vec::new(),
        tls: Vec::new(),
    };
    for index in 0..listen_fds.len() {
        let fd = 3 + index;
        let listener = listen_fds
            .take_tcp_listener(index)
            .and_then(|listener| listener.ok_or_else(|| io::Error::other("already taken")))
            .and_then(|listener| {
                if socket2::SockRef::from(&listener).is_listener()? {
                    Ok(listener)
                } else {
                    Err(io::Error::other("the socket does not listen"))
                }
            })
            .map_err(|source| ActivationError::NotATcpListener { fd, source })?;
        listener
            .set_nonblocking(true)
            .map_err(|source| ActivationError::NotATcpListener { fd, source })?;
        if is_tls_name(names.next().unwrap_or("")) {
            sockets.tls.push(listener);
        } else {
            sockets.plain.push(listener);
        }
    }
    Ok(Some(sockets))
}

fn is_tls_name(name: &str) -> bool {
    TLS_NAMES.contains(&name)
}

/// A non-blocking TCP listener on `addr` with `SO_REUSEADDR` and
/// `SO_REUSEPORT`, close-on-exec, listening: other sockets with
/// `SO_REUSEPORT` of the same user may bind the same address, and the kernel
/// spreads new connections over all of them.
pub(crate) fn bind_reuseport(addr: SocketAddr) -> io::Result<TcpListener> {
    let bind = || -> io::Result<TcpListener> {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM.nonblocking(),
            Some(socket2::Protocol::TCP),
        )?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.bind(&addr.into())?;
        socket.listen(BACKLOG)?;
        Ok(socket.into())
    };
    bind().map_err(|error| io::Error::new(error.kind(), format!("binding {addr}: {error}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_sockets_are_named_https_or_tls() {
        for (name, tls) in [
            ("https", true),
            ("tls", true),
            ("http", false),
            ("", false),
            ("wsgate.socket", false),
            ("HTTPS", false),
        ] {
            assert_eq!(is_tls_name(name), tls, "{name:?}");
        }
    }

    #[test]
    fn two_sockets_bind_one_port_with_reuseport() -> io::Result<()> {
        let first = bind_reuseport("127.0.0.1:0".parse().expect("literal address"))?;
        let addr = first.local_addr()?;
        let second = bind_reuseport(addr)?;
        assert_eq!(second.local_addr()?, addr);
        // A socket without SO_REUSEPORT cannot join them.
        assert!(TcpListener::bind(addr).is_err());
        Ok(())
    }
}
