//! The crate-private parsers of `handshake`, `deflate`, `route` and
//! `first_request`, made public for the fuzz targets in `fuzz/` only.
//! Compiled under `--cfg fuzzing`, which `cargo fuzz` sets; no product code
//! may use it (docs/fuzzing.md).

pub use crate::deflate::{ExtensionOffer, parse_extensions};
pub use crate::first_request::{FirstRequest, HeadReader};
pub use crate::handshake::UpgradeRequest;
pub use crate::route::{MAX_SOCKET_PATH, RouteError, Target, parse_name, resolve};

/// `deflate::negotiate`: the agreed parameters and the response header's value.
pub fn negotiate_deflate(headers: &http::HeaderMap) -> Option<(link::DeflateParams, String)> {
    let agreement = crate::deflate::negotiate(headers)?;
    let response = agreement.response.to_str().ok()?.to_owned();
    Some((agreement.params, response))
}

/// `handshake::validate`, with a refusal reduced to its HTTP status.
pub fn validate_handshake<B>(request: &http::Request<B>) -> Result<UpgradeRequest, u16> {
    crate::handshake::validate(request).map_err(|refusal| refusal.status().as_u16())
}

/// The headers of `handshake::switching_protocols`'s `101` response.
pub fn switching_protocols_headers(
    key: &str,
    protocol: Option<&str>,
    extra_headers: &std::collections::BTreeMap<String, String>,
) -> http::HeaderMap {
    crate::handshake::switching_protocols(key, protocol, None, extra_headers)
        .into_parts()
        .0
        .headers
}
