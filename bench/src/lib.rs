//! Load generator and benchmark driver for wsgate.
//!
//! - [`baseline`]: the no-gateway reference, a minimal tokio-tungstenite echo
//!   and chat server on TCP (and echo on a UNIX socket, behind nginx).
//! - [`system`]: starting each system under test (baseline, wsgate relay,
//!   wsgate direct, nginx; and baseline, relay and nginx over TLS) as separate
//!   processes and waiting until they answer; their memory and CPU time.
//! - [`tls`]: the run's certificate and the pinned TLS 1.3 configurations.
//! - [`scenario`]: the load scenarios; every payload is checked and every
//!   error counted.
//! - [`pipeline`]: the echo scenarios' client, prebuilt frames written in
//!   batches and echoes parsed in place, fast enough not to be the bottleneck.
//! - [`exec`]: `wsgate-bench exec`, websocket_exec against websocketd.
//! - [`broker`]: `websocket_broker`'s channel fan-out next to the chat's, behind one gateway.
//! - [`hold`]: `wsgate-bench hold`, 30,000 idle relayed clients on one port through `wsgate --workers`.
//! - [`redis`]: the chat's fan-out over two instances sharing one Redis, against one instance alone.
//! - [`deflate`]: `wsgate-bench deflate`, permessage-deflate on a JSON chat workload.
//! - [`report`]: the markdown tables with ratios to the baseline and CPU per operation.
//!
//! `src/main.rs` is the `wsgate-bench` command; BENCHMARKS.md says how to run it.
#![warn(missing_docs)]

pub mod baseline;
pub mod broker;
pub mod deflate;
pub mod exec;
pub mod hold;
pub mod pipeline;
pub mod redis;
pub mod report;
pub mod scenario;
pub mod system;
pub mod tls;
