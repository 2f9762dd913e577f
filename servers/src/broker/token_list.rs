//! The tokens dialect's preloaded tokens (`--tokens FILE|URL`): a JSON
//! object whose keys with the value `true` are the registered tokens
//! (`{"abc1": true, "group/item1": true}`), as websockets_pro's
//! `RegisteredTokensUrl` serves them. Read at start-up and on SIGHUP; a list
//! that does not load leaves the one in use.

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::Uri;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// The largest token list read, in bytes.
pub const MAX_LIST_BYTES: usize = 4 << 20;

/// How long fetching a list from a URL may take.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a token list did not load.
#[derive(Debug, thiserror::Error)]
pub enum TokenListError {
    /// The file cannot be read.
    #[error("cannot read {source_name}: {error}")]
    Read {
        /// The file or URL.
        source_name: String,
        /// What went wrong.
        error: String,
    },
    /// Larger than [`MAX_LIST_BYTES`].
    #[error("{0} is larger than {MAX_LIST_BYTES} bytes")]
    TooLarge(String),
    /// Not a JSON object of booleans.
    #[error("{source_name} is not a JSON object of tokens: {error}")]
    Malformed {
        /// The file or URL.
        source_name: String,
        /// What is wrong.
        error: String,
    },
}

/// The tokens in `json` whose value is `true`.
pub fn parse(json: &[u8], source_name: &str) -> Result<BTreeSet<String>, TokenListError> {
    let malformed = |error: String| TokenListError::Malformed {
        source_name: source_name.to_owned(),
        error,
    };
    let object: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(json).map_err(|error| malformed(error.to_string()))?;
    let mut tokens = BTreeSet::new();
    for (token, value) in object {
        match value {
            serde_json::Value::Bool(true) => {
                tokens.insert(token);
            }
            serde_json::Value::Bool(false) => {}
            other => {
                return Err(malformed(format!(
                    "{token:?} is {other}, not true or false"
                )));
            }
        }
    }
    Ok(tokens)
}

/// Reads the list from `source`: an `http://` URL or a file path.
pub async fn load(source: &str) -> Result<BTreeSet<String>, TokenListError> {
    let read_error = |error: String| TokenListError::Read {
        source_name: source.to_owned(),
        error,
    };
    let bytes = if source.starts_with("http://") {
        tokio::time::timeout(FETCH_TIMEOUT, fetch(source))
            .await
            .map_err(|_| read_error(format!("no answer within {FETCH_TIMEOUT:?}")))??
    } else {
        let metadata = tokio::fs::metadata(source)
            .await
            .map_err(|error| read_error(error.to_string()))?;
        if metadata.len() > MAX_LIST_BYTES as u64 {
            return Err(TokenListError::TooLarge(source.to_owned()));
        }
        Bytes::from(
            tokio::fs::read(source)
                .await
                .map_err(|error| read_error(error.to_string()))?,
        )
    };
    parse(&bytes, source)
}

async fn fetch(url: &str) -> Result<Bytes, TokenListError> {
    let read_error = |error: String| TokenListError::Read {
        source_name: url.to_owned(),
        error,
    };
    let uri: Uri = url
        .parse()
        .map_err(|_| read_error("not a URL".to_owned()))?;
    let client: Client<HttpConnector, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let response = client
        .get(uri)
        .await
        .map_err(|error| read_error(error.to_string()))?;
    if !response.status().is_success() {
        return Err(read_error(format!("answered {}", response.status())));
    }
    let body = Limited::new(response.into_body(), MAX_LIST_BYTES)
        .collect()
        .await
        .map_err(|error| read_error(error.to_string()))?;
    Ok(body.to_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn true_keys_are_the_tokens() -> Result<(), TokenListError> {
        let tokens = parse(br#"{"abc1":true,"abc2":false,"group\/item1":true}"#, "test")?;
        assert_eq!(
            tokens.into_iter().collect::<Vec<_>>(),
            ["abc1", "group/item1"]
        );
        Ok(())
    }

    #[test]
    fn anything_but_an_object_of_booleans_is_refused() {
        for bad in [&br#"["abc1"]"#[..], br#"{"abc1":1}"#, b"nope"] {
            assert!(parse(bad, "test").is_err());
        }
    }
}
