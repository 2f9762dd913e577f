//! The JSON bodies of the OPEN, ACCEPT and REJECT records, and the heads of
//! the REQUEST and RESPONSE records with their bodies.
//!
//! OPEN tells a backend who connected; ACCEPT and REJECT are its answer.
//! REQUEST carries one plain HTTP request and RESPONSE its answer: a u32
//! big-endian head length, the JSON head, then the body as raw bytes. Field
//! names are part of the wire format (`docs/link-protocol.md`); unknown fields
//! are ignored on reading so either side can add some without a version bump.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::LinkError;
use crate::deflate::DeflateParams;

/// How the gateway and the backend exchange a client's messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkMode {
    /// One record per whole message, relayed by the gateway.
    Framed,
    /// The client's socket is handed to the backend after ACCEPT (HANDOFF).
    Direct,
    /// Not a client: the gateway's carrier link to this backend, on which the
    /// backend sends FANOUT records for the gateway's clients that its ACCEPT
    /// put on the carrier (`docs/link-protocol.md`, *Fan-out*). OPEN's `id` is
    /// then the carrier's key.
    Carrier,
}

/// The gateway's limits for a client it hands over (OPEN's `limits`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientLimits {
    /// Largest message from the client, in bytes; more is closed with 1009.
    pub max_message_size: usize,
    /// Seconds between pings to the client; 0 sends none.
    #[serde(default)]
    pub ping_interval: u64,
    /// Seconds of silence before the client is closed with 1001; 0 never.
    #[serde(default)]
    pub idle_timeout: u64,
}

/// Metadata of a new client, sent as the OPEN record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenMeta {
    /// The link protocol version of the gateway ([`crate::LINK_VERSION`]).
    pub version: u32,
    /// How messages will travel after ACCEPT.
    pub mode: LinkMode,
    /// A connection id, unique within one gateway process, for correlating logs.
    pub id: u64,
    /// The backend name the request resolved to (the socket file's name).
    pub name: String,
    /// The request path as the client sent it, without the query.
    pub path: String,
    /// The query string without `?`, empty when there is none.
    #[serde(default)]
    pub query: String,
    /// Subprotocols the client offered in `Sec-WebSocket-Protocol`, in order.
    #[serde(default)]
    pub protocols: Vec<String>,
    /// The client's address as the gateway saw it (`ip:port`).
    pub peer: String,
    /// Selected request headers, names in lower case.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Direct mode: the gateway's limits and keepalive for this client, which
    /// the backend applies once it holds the socket, as the gateway would.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<ClientLimits>,
    /// Present when the client reached the gateway over TLS (`wss://`); absent
    /// for a plain connection. Older backends ignore it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsInfo>,
    /// What the gateway's authorizer answered about this client (the JSON body of its 200), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<serde_json::Value>,
    /// Direct mode: the permessage-deflate parameters the gateway agreed with
    /// the client, which the backend then applies on the socket. Absent when
    /// none was agreed, and always in framed mode (the gateway inflates and
    /// deflates itself: a relayed backend never sees compression).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deflate: Option<DeflateParams>,
    /// Framed mode: the key of this gateway's carrier link to this backend,
    /// when it has one, on which the backend may send this client's messages
    /// (ACCEPT's `carrier`). Absent when the gateway has no carrier here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub carrier: Option<u64>,
}

/// What the gateway learnt from a client's TLS handshake (OPEN's `tls`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsInfo {
    /// The server name the client asked for (SNI), if it sent one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    /// With mutual TLS, the subject of the client's verified certificate
    /// (RFC 4514 style, e.g. `CN=alice, O=Example`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_subject: Option<String>,
}

/// The backend's ACCEPT answer. An empty ACCEPT payload means the default value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcceptReply {
    /// One of the offered subprotocols, echoed to the client in `Sec-WebSocket-Protocol`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// Extra response headers for the `101` response.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// The largest message this backend takes from the client, when it is
    /// smaller than the gateway's: a client that sends more is closed with
    /// `1009` before the message is read whole (by the gateway when it
    /// relays, by the backend library in direct mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_message_size: Option<usize>,
    /// Direct mode (and framed mode with `reuse_framed`): after the HANDOFF
    /// (after the client's CLOSEs) this backend keeps the link open and
    /// reads it as a new link, for another client's OPEN, for this many
    /// milliseconds (docs/link-protocol.md, *Link reuse*). `None`: the
    /// backend closes the link after the HANDOFF, and so does the gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reuse_ms: Option<u64>,
    /// Direct mode only, with `reuse_ms`: the gateway may hand this link's
    /// next clients over without asking, OPEN and socket in one OPEN_HANDOFF
    /// record (docs/link-protocol.md, *Hand-over without ACCEPT*): the backend
    /// takes every such client as if it had answered an empty ACCEPT, and
    /// closes one it cannot serve with a close code.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub open_handoff: bool,
    /// Framed mode only, with `reuse_ms`, for a client not on a carrier:
    /// after this client's end, once each side has sent and received one
    /// CLOSE, the link starts over for another client's OPEN
    /// (docs/link-protocol.md, *Link reuse in framed mode*). The backend
    /// answers the gateway's CLOSE with its own, and after its own CLOSE
    /// reads on until the gateway's.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reuse_framed: bool,
    /// Framed mode: every message and the close for this client travel on
    /// the carrier link OPEN's `carrier` named, as FANOUT records, under
    /// these terms; none on the client's own link. Only for a carrier the
    /// backend holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub carrier: Option<CarrierTerms>,
    /// Framed mode: the backend would send this client's messages on a
    /// carrier link if the gateway had one here: the gateway opens one for
    /// later clients.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub carrier_wanted: bool,
}

/// How the gateway treats a client whose messages come on a carrier link
/// (ACCEPT's `carrier`): how much it queues for the client, and when a
/// client that does not read is closed instead of holding the carrier up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CarrierTerms {
    /// Payload bytes the gateway queues for this client before it stops
    /// reading the carrier until the client takes some; a single larger
    /// message still goes into an empty queue.
    pub queue_bytes: usize,
    /// How long, in milliseconds, a full queue's client may take nothing from
    /// its socket before the gateway closes it with `1008` and reads on.
    pub stall_ms: u64,
}

/// The backend's REJECT answer: the HTTP status and one-line reason the client gets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectReply {
    /// An HTTP status code from 400 to 599.
    pub status: u16,
    /// A one-line reason for the response body.
    #[serde(default)]
    pub reason: String,
}

/// The head of a REQUEST record: one plain HTTP request for a backend
/// (`--http GLOB`). The body follows the head in the same record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestHead {
    /// The link protocol version of the gateway ([`crate::LINK_VERSION`]).
    pub version: u32,
    /// A connection id, unique within one gateway process, for correlating logs.
    pub id: u64,
    /// The backend name the request resolved to (the socket file's name).
    pub name: String,
    /// The request method, e.g. `GET` or `POST`.
    pub method: String,
    /// The request path as the client sent it (the name and anything below it), without the query.
    pub path: String,
    /// The query string without `?`, empty when there is none.
    #[serde(default)]
    pub query: String,
    /// The client's address as the gateway saw it (`ip:port`).
    pub peer: String,
    /// Every request header but the hop-by-hop ones, in order, names in
    /// lower case; a repeated header appears once per value.
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    /// Present when the client reached the gateway over TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsInfo>,
}

/// The head of a RESPONSE record: the backend's answer to a REQUEST. The
/// body follows the head in the same record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponseHead {
    /// The HTTP status, 200 to 599.
    pub status: u16,
    /// Response headers in order; a repeated header appears once per value.
    #[serde(default)]
    pub headers: Vec<(String, String)>,
}

/// Bytes before the JSON head of a REQUEST, RESPONSE or OPEN_HANDOFF payload: its length, u32 big-endian.
pub const HEAD_LEN_SIZE: usize = 4;

/// A REQUEST, RESPONSE or OPEN_HANDOFF payload: the head's length, the JSON head, the body.
pub fn join_head(head: &[u8], body: &[u8]) -> Bytes {
    let head_len = u32::try_from(head.len()).expect("a JSON head is far below 4 GiB");
    let mut payload = Vec::with_capacity(HEAD_LEN_SIZE + head.len() + body.len());
    payload.extend_from_slice(&head_len.to_be_bytes());
    payload.extend_from_slice(head);
    payload.extend_from_slice(body);
    Bytes::from(payload)
}

/// Splits a REQUEST, RESPONSE or OPEN_HANDOFF payload into its JSON head and its body,
/// without copying either.
pub fn split_head(kind: &'static str, mut payload: Bytes) -> Result<(Bytes, Bytes), LinkError> {
    let malformed = |reason| LinkError::Malformed { kind, reason };
    let Some(&head_len) = payload.first_chunk::<HEAD_LEN_SIZE>() else {
        return Err(malformed("shorter than its head length"));
    };
    let head_len = usize::try_from(u32::from_be_bytes(head_len))
        .map_err(|_| malformed("head length does not fit in memory"))?;
    let body_start = HEAD_LEN_SIZE
        .checked_add(head_len)
        .filter(|end| *end <= payload.len())
        .ok_or_else(|| malformed("head length exceeds the payload"))?;
    let body = payload.split_off(body_start);
    let head = payload.split_off(HEAD_LEN_SIZE);
    Ok((head, body))
}

impl RequestHead {
    /// A REQUEST payload: this head and `body`.
    pub fn to_payload(&self, body: &[u8]) -> Bytes {
        join_head(
            &serde_json::to_vec(self).expect("RequestHead always serialises"),
            body,
        )
    }

    /// Parses a REQUEST payload into its head and its body.
    pub fn from_payload(payload: Bytes) -> Result<(RequestHead, Bytes), LinkError> {
        let (head, body) = split_head("REQUEST", payload)?;
        let head = serde_json::from_slice(&head).map_err(|source| LinkError::BadJson {
            kind: "REQUEST",
            source,
        })?;
        Ok((head, body))
    }
}

impl ResponseHead {
    /// A RESPONSE payload: this head and `body`.
    pub fn to_payload(&self, body: &[u8]) -> Bytes {
        join_head(
            &serde_json::to_vec(self).expect("ResponseHead always serialises"),
            body,
        )
    }

    /// Parses a RESPONSE payload into its head and its body.
    pub fn from_payload(payload: Bytes) -> Result<(ResponseHead, Bytes), LinkError> {
        let (head, body) = split_head("RESPONSE", payload)?;
        let head = serde_json::from_slice(&head).map_err(|source| LinkError::BadJson {
            kind: "RESPONSE",
            source,
        })?;
        Ok((head, body))
    }
}

impl OpenMeta {
    /// Parses an OPEN payload.
    pub fn from_payload(payload: &[u8]) -> Result<OpenMeta, LinkError> {
        let meta: OpenMeta =
            serde_json::from_slice(payload).map_err(|source| LinkError::BadJson {
                kind: "OPEN",
                source,
            })?;
        if meta.deflate.is_some_and(|params| !params.is_valid()) {
            return Err(LinkError::Malformed {
                kind: "OPEN",
                reason: "deflate window bits outside 8 to 15",
            });
        }
        Ok(meta)
    }

    /// Serialises this metadata as an OPEN payload.
    pub fn to_payload(&self) -> Bytes {
        // Room for a usual OPEN from the start: grown from serde_json's
        // 128 bytes, it was reallocated twice for every client.
        let mut payload = Vec::with_capacity(512);
        serde_json::to_writer(&mut payload, self).expect("OpenMeta always serialises");
        Bytes::from(payload)
    }
}

impl AcceptReply {
    /// Parses an ACCEPT payload; an empty payload is the default reply.
    pub fn from_payload(payload: &[u8]) -> Result<AcceptReply, LinkError> {
        if payload.is_empty() {
            return Ok(AcceptReply::default());
        }
        serde_json::from_slice(payload).map_err(|source| LinkError::BadJson {
            kind: "ACCEPT",
            source,
        })
    }

    /// Serialises this reply; the default reply becomes an empty payload.
    pub fn to_payload(&self) -> Bytes {
        if *self == AcceptReply::default() {
            return Bytes::new();
        }
        Bytes::from(serde_json::to_vec(self).expect("AcceptReply always serialises"))
    }
}

impl RejectReply {
    /// Parses a REJECT payload.
    pub fn from_payload(payload: &[u8]) -> Result<RejectReply, LinkError> {
        serde_json::from_slice(payload).map_err(|source| LinkError::BadJson {
            kind: "REJECT",
            source,
        })
    }

    /// Serialises this reply.
    pub fn to_payload(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(self).expect("RejectReply always serialises"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLAIN_OPEN: &str = r#"{"version":1,"mode":"framed","id":7,"name":"echo","path":"/echo","peer":"127.0.0.1:50312"}"#;

    #[test]
    fn open_without_tls_has_none_and_writes_no_tls_field() {
        let open = OpenMeta::from_payload(PLAIN_OPEN.as_bytes()).expect("valid OPEN");
        assert_eq!(open.tls, None);
        let written = String::from_utf8(open.to_payload().to_vec()).expect("JSON is UTF-8");
        assert!(!written.contains("tls"), "{written}");
    }

    #[test]
    fn open_with_tls_carries_sni_and_subject_both_ways() {
        let text = PLAIN_OPEN.replace(
            "}",
            r#","tls":{"sni":"example.com","client_subject":"CN=alice"}}"#,
        );
        let open = OpenMeta::from_payload(text.as_bytes()).expect("valid OPEN");
        let tls = TlsInfo {
            sni: Some("example.com".to_owned()),
            client_subject: Some("CN=alice".to_owned()),
        };
        assert_eq!(open.tls.as_ref(), Some(&tls));
        let again = OpenMeta::from_payload(&open.to_payload()).expect("round trip");
        assert_eq!(again, open);
        // A TLS client without SNI or certificate is `"tls":{}`.
        let bare = PLAIN_OPEN.replace("}", r#","tls":{}}"#);
        let open = OpenMeta::from_payload(bare.as_bytes()).expect("valid OPEN");
        assert_eq!(open.tls, Some(TlsInfo::default()));
    }

    #[test]
    fn identity_is_absent_unless_an_authorizer_gave_one() {
        let open = OpenMeta::from_payload(PLAIN_OPEN.as_bytes()).expect("valid OPEN");
        assert_eq!(open.identity, None);
        let written = String::from_utf8(open.to_payload().to_vec()).expect("JSON is UTF-8");
        assert!(!written.contains("identity"), "{written}");
        let text = PLAIN_OPEN.replace("}", r#","identity":{"user":"alice","roles":["admin"]}}"#);
        let open = OpenMeta::from_payload(text.as_bytes()).expect("valid OPEN");
        assert_eq!(
            open.identity,
            Some(serde_json::json!({"user": "alice", "roles": ["admin"]}))
        );
    }

    #[test]
    fn deflate_is_absent_unless_agreed_and_its_windows_are_checked() {
        let open = OpenMeta::from_payload(PLAIN_OPEN.as_bytes()).expect("valid OPEN");
        assert_eq!(open.deflate, None);
        let text = PLAIN_OPEN.replace(
            "}",
            r#","deflate":{"server_no_context_takeover":true,"client_no_context_takeover":true,"server_max_window_bits":10,"client_max_window_bits":15}}"#,
        );
        let open = OpenMeta::from_payload(text.as_bytes()).expect("valid OPEN");
        let params = open.deflate.expect("deflate agreed");
        assert!(params.server_no_context_takeover && params.client_no_context_takeover);
        assert_eq!(params.server_max_window_bits, 10);
        assert_eq!(
            OpenMeta::from_payload(&open.to_payload()).expect("round trip"),
            open
        );
        // Omitted window sizes are RFC 7692's default, 15 bits.
        let text = PLAIN_OPEN.replace("}", r#","deflate":{}}"#);
        let params = OpenMeta::from_payload(text.as_bytes())
            .expect("valid OPEN")
            .deflate
            .expect("agreed");
        assert_eq!(
            (params.server_max_window_bits, params.client_max_window_bits),
            (15, 15)
        );
        assert!(!params.server_no_context_takeover);
        for bits in [0, 7, 16, 255] {
            let text = PLAIN_OPEN.replace(
                "}",
                &format!(r#","deflate":{{"server_max_window_bits":{bits}}}}}"#),
            );
            assert!(
                OpenMeta::from_payload(text.as_bytes()).is_err(),
                "{bits} bits"
            );
        }
    }

    #[test]
    fn a_request_payload_is_head_length_head_and_binary_body() {
        let head = RequestHead {
            version: 1,
            id: 3,
            name: "api".to_owned(),
            method: "POST".to_owned(),
            path: "/api/publish".to_owned(),
            query: "a=1".to_owned(),
            peer: "127.0.0.1:4000".to_owned(),
            headers: vec![("content-type".to_owned(), "text/plain".to_owned())],
            tls: None,
        };
        let body = [0u8, 255, b'{', 0];
        let payload = head.to_payload(&body);
        let json = serde_json::to_vec(&head).expect("serialises");
        assert_eq!(payload[..4], (json.len() as u32).to_be_bytes());
        assert_eq!(payload[4..4 + json.len()], json[..]);
        assert_eq!(payload[4 + json.len()..], body);
        let (parsed, parsed_body) = RequestHead::from_payload(payload).expect("parses");
        assert_eq!(parsed, head);
        assert_eq!(parsed_body[..], body);
    }

    #[test]
    fn a_response_without_body_round_trips_and_bad_lengths_are_errors() {
        let head = ResponseHead {
            status: 204,
            headers: Vec::new(),
        };
        let (parsed, body) = ResponseHead::from_payload(head.to_payload(&[])).expect("parses");
        assert_eq!(parsed, head);
        assert!(body.is_empty());
        for payload in [&b""[..], &[0, 0, 1], &[0, 0, 0, 9, b'{', b'}']] {
            let error =
                ResponseHead::from_payload(Bytes::copy_from_slice(payload)).expect_err("malformed");
            assert!(matches!(error, LinkError::Malformed { .. }), "{error}");
        }
        let error = ResponseHead::from_payload(join_head(b"{\"status\":\"x\"}", b""))
            .expect_err("bad JSON");
        assert!(matches!(error, LinkError::BadJson { .. }), "{error}");
    }

    #[test]
    fn accept_reuse_is_optional_both_ways() {
        // An older backend's ACCEPT: no reuse.
        let old = AcceptReply::from_payload(br#"{"protocol":"chat"}"#).expect("valid ACCEPT");
        assert_eq!(old.reuse_ms, None);
        assert_eq!(
            AcceptReply::from_payload(b"").expect("empty").reuse_ms,
            None
        );
        let reply = AcceptReply {
            reuse_ms: Some(3000),
            ..AcceptReply::default()
        };
        assert_eq!(&reply.to_payload()[..], br#"{"reuse_ms":3000}"#);
        assert_eq!(
            AcceptReply::from_payload(&reply.to_payload()).expect("round trip"),
            reply
        );
        // A negative or fractional value is malformed, not a silent default.
        for bad in [&br#"{"reuse_ms":-1}"#[..], br#"{"reuse_ms":1.5}"#] {
            assert!(AcceptReply::from_payload(bad).is_err());
        }
        // Framed reuse is a separate promise, absent unless made.
        assert!(!old.reuse_framed);
        let framed = AcceptReply {
            reuse_ms: Some(3000),
            reuse_framed: true,
            ..AcceptReply::default()
        };
        assert_eq!(
            &framed.to_payload()[..],
            br#"{"reuse_ms":3000,"reuse_framed":true}"#
        );
        assert_eq!(
            AcceptReply::from_payload(&framed.to_payload()).expect("round trip"),
            framed
        );
    }
}
