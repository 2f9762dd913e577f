//! Load generator and benchmark driver for wsgate.
//!
//! - [`baseline`]: the no-gateway reference, a minimal tokio-tungstenite echo
//!   and chat server on TCP (and echo on a UNIX socket, behind nginx).
//! - [`system`]: starting each system under test (baseline, wsgate relay,
//!   wsgate direct, nginx) as separate processes and waiting until they answer.
//! - [`scenario`]: the load scenarios; every payload is checked and every
//!   error counted.
//! - [`report`]: the markdown table with ratios to the baseline.
//!
//! `src/main.rs` is the `wsgate-bench` command; BENCHMARKS.md says how to run it.
#![warn(missing_docs)]

pub mod baseline;
pub mod report;
pub mod scenario;
pub mod system;
