//! The backend side of wsgate, and the link protocol it shares with the gateway.
//!
//! - [`link`]: the wire format between the gateway and a backend (records, OPEN metadata).
//!
//! The gateway depends on this crate for [`link`] only; nothing here depends on the gateway.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod link;
