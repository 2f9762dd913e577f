//! Fuzzes the JSON bodies of OPEN, ACCEPT and REJECT and the head-and-body
//! payloads of REQUEST and RESPONSE (`link::meta`) on arbitrary bytes.
//!
//! Checked: parsing never panics, and whatever parses serialises to a
//! payload that parses back to the same value (for ACCEPT, the default reply
//! is the empty payload; for REQUEST and RESPONSE, the same head and body).

#![no_main]

use libfuzzer_sys::fuzz_target;
use bytes::Bytes;
use link::{AcceptReply, OpenMeta, RejectReply, RequestHead, ResponseHead};

fuzz_target!(|payload: &[u8]| {
    if let Ok(open) = OpenMeta::from_payload(payload) {
        let again = OpenMeta::from_payload(&open.to_payload()).expect("OPEN re-parses");
        assert_eq!(again, open);
    }
    if let Ok(accept) = AcceptReply::from_payload(payload) {
        let written = accept.to_payload();
        assert_eq!(written.is_empty(), accept == AcceptReply::default());
        let again = AcceptReply::from_payload(&written).expect("ACCEPT re-parses");
        assert_eq!(again, accept);
    }
    if let Ok(reject) = RejectReply::from_payload(payload) {
        let again = RejectReply::from_payload(&reject.to_payload()).expect("REJECT re-parses");
        assert_eq!(again, reject);
    }
    if let Ok((head, body)) = RequestHead::from_payload(Bytes::copy_from_slice(payload)) {
        let again = RequestHead::from_payload(head.to_payload(&body)).expect("REQUEST re-parses");
        assert_eq!(again, (head, body));
    }
    if let Ok((head, body)) = ResponseHead::from_payload(Bytes::copy_from_slice(payload)) {
        let again = ResponseHead::from_payload(head.to_payload(&body)).expect("RESPONSE re-parses");
        assert_eq!(again, (head, body));
    }
});
