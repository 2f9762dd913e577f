//! Fuzzes the JSON bodies of OPEN, ACCEPT and REJECT (`link::meta`) on
//! arbitrary bytes.
//!
//! Checked: parsing never panics, and whatever parses serialises to a
//! payload that parses back to the same value (for ACCEPT, the default reply
//! is the empty payload).

#![no_main]

use libfuzzer_sys::fuzz_target;
use link::{AcceptReply, OpenMeta, RejectReply};

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
});
