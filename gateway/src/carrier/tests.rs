//! The carrier's inboxes and reader without a gateway: bounds, order, ends,
//! and the reader waiting for a full inbox or giving up on it.

use std::future::poll_fn;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use futures_util::SinkExt;
use futures_util::task::noop_waker_ref;
use link::LinkStream;
use link::fanout::{Fanout, FanoutMessage};
use link::{CarrierTerms, CloseInfo, Record, RecordCodec};
use tokio_util::codec::Framed;

use super::{Carrier, Drained, InboxEnd, Seat};
use crate::metrics::{ClientMode, Metrics};

fn binary(len: usize, tag: u8) -> FanoutMessage {
    FanoutMessage::Binary(Bytes::from(vec![tag; len]))
}

/// Everything `seat` (a client with compression, which takes messages)
/// holds now, as tags (first byte) of binary messages.
fn take_all(seat: &Seat) -> (Vec<u8>, Drained) {
    let mut cx = Context::from_waker(noop_waker_ref());
    let metrics = Metrics::new();
    let client = metrics.client("room", ClientMode::Relay, false);
    let mut tally = client.to_client.tally();
    let mut tags = Vec::new();
    let drained = seat.drain(&mut cx, &mut BytesMut::new(), &mut tally, |_, message| {
        if let FanoutMessage::Binary(payload) = message {
            tags.push(payload[0]);
        }
        true
    });
    (tags, drained)
}

const TERMS: CarrierTerms = CarrierTerms {
    queue_bytes: 100,
    stall_ms: 50,
};

#[test]
fn an_inbox_takes_one_oversized_message_when_empty_and_then_waits_for_room() {
    let carrier = Arc::new(Carrier::new(1));
    let seat = carrier.seat(7, false).expect("seated");
    assert!(seat.accept_terms(TERMS));
    assert!(matches!(
        seat.inbox.offer(&binary(500, 1)),
        super::Offer::Delivered
    ));
    assert!(matches!(
        seat.inbox.offer(&binary(1, 2)),
        super::Offer::Full { drains: 0 }
    ));
    assert_eq!(take_all(&seat), (vec![1], Drained::Empty));
    // 44 + 16 and 24 + 16 bytes (payload and per-message overhead) of the 100 allowed.
    assert!(matches!(
        seat.inbox.offer(&binary(44, 3)),
        super::Offer::Delivered
    ));
    assert!(matches!(
        seat.inbox.offer(&binary(24, 4)),
        super::Offer::Delivered
    ));
    assert!(matches!(
        seat.inbox.offer(&binary(1, 5)),
        super::Offer::Full { drains: 1 }
    ));
    assert_eq!(take_all(&seat), (vec![3, 4], Drained::Empty));
}

#[test]
fn the_close_comes_after_everything_queued_and_nothing_goes_in_after_it() {
    let carrier = Arc::new(Carrier::new(1));
    let seat = carrier.seat(7, false).expect("seated");
    let close = FanoutMessage::Close(Some(CloseInfo {
        code: 4000,
        reason: "bye".into(),
    }));
    assert!(matches!(
        seat.inbox.offer(&binary(1, 1)),
        super::Offer::Delivered
    ));
    assert!(matches!(seat.inbox.offer(&close), super::Offer::Delivered));
    assert!(matches!(
        seat.inbox.offer(&binary(1, 2)),
        super::Offer::Gone
    ));
    let (tags, drained) = take_all(&seat);
    assert_eq!(tags, [1]);
    assert_eq!(
        drained,
        Drained::Ended(InboxEnd::Closed(Some(CloseInfo {
            code: 4000,
            reason: "bye".into()
        })))
    );
}

#[test]
fn a_seat_leaves_on_drop_and_an_ended_carrier_seats_no_one() {
    let carrier = Arc::new(Carrier::new(1));
    let seat = carrier.seat(7, false).expect("seated");
    assert_eq!(super::lock(&carrier.seated).inboxes.len(), 1);
    drop(seat);
    assert!(super::lock(&carrier.seated).inboxes.is_empty());
    let seat = carrier.seat(8, false).expect("seated");
    carrier.end();
    assert!(carrier.seat(9, false).is_none());
    assert!(!seat.accept_terms(TERMS));
    assert_eq!(take_all(&seat).1, Drained::Ended(InboxEnd::CarrierGone));
}

/// A carrier reading one end of a socket pair; the test writes the other.
async fn reading_carrier() -> (Arc<Carrier>, Framed<LinkStream, RecordCodec>) {
    let (ours, theirs) = LinkStream::pair().expect("socket pair");
    let carrier = Arc::new(Carrier::new(1));
    let reader = Arc::clone(&carrier);
    tokio::spawn(async move {
        let link = Framed::new(theirs, RecordCodec::new(1 << 20));
        let _ = reader.read(link).await;
        reader.end();
    });
    (carrier, Framed::new(ours, RecordCodec::new(1 << 20)))
}

/// Waits until `seat` has something (or its end) and takes it.
async fn next(seat: &Seat) -> (Vec<u8>, Drained) {
    let metrics = Metrics::new();
    let client = metrics.client("room", ClientMode::Relay, false);
    poll_fn(|cx| {
        let mut tally = client.to_client.tally();
        let mut tags = Vec::new();
        let drained = seat.drain(cx, &mut BytesMut::new(), &mut tally, |_, message| {
            if let FanoutMessage::Binary(payload) = message {
                tags.push(payload[0]);
            }
            true
        });
        if tags.is_empty() && drained == Drained::Empty {
            Poll::Pending
        } else {
            Poll::Ready((tags, drained))
        }
    })
    .await
}

#[tokio::test]
async fn the_reader_waits_for_a_client_that_takes_and_evicts_one_that_does_not() {
    let (carrier, mut link) = reading_carrier().await;
    let slow = carrier.seat(1, false).expect("seated");
    let taker = carrier.seat(2, false).expect("seated");
    assert!(slow.accept_terms(TERMS));
    assert!(taker.accept_terms(TERMS));
    for tag in 0..5 {
        let fanout = Fanout::new(binary(44, tag), &[1, 2]).expect("fanout");
        link.send(Record::Fanout(fanout)).await.expect("written");
    }
    // The taker gets all five, one by one (its inbox holds only one of
    // them); the slow one takes nothing, is evicted after its stall time,
    // and the reader goes on.
    let mut got = Vec::new();
    while got.len() < 5 {
        got.extend(next(&taker).await.0);
    }
    assert_eq!(got, [0, 1, 2, 3, 4]);
    assert_eq!(
        take_all(&slow),
        (Vec::new(), Drained::Ended(InboxEnd::TooSlow))
    );
    drop(link);
    assert_eq!(next(&taker).await.1, Drained::Ended(InboxEnd::CarrierGone));
}

#[test]
fn a_client_without_compression_takes_its_frames_whole_and_counted() {
    let carrier = Arc::new(Carrier::new(1));
    let seat = carrier.seat(7, true).expect("seated");
    assert!(seat.accept_terms(TERMS));
    let text = FanoutMessage::Text(tokio_tungstenite::tungstenite::Utf8Bytes::from_static("hi"));
    assert!(matches!(seat.inbox.offer(&text), super::Offer::Delivered));
    assert!(matches!(
        seat.inbox.offer(&binary(3, 9)),
        super::Offer::Delivered
    ));
    let metrics = Metrics::new();
    let client = metrics.client("room", ClientMode::Relay, false);
    let mut cx = Context::from_waker(noop_waker_ref());
    // Into an output that holds something: appended after it.
    let mut output = BytesMut::from(&b"old"[..]);
    {
        let mut tally = client.to_client.tally();
        let drained = seat.drain(&mut cx, &mut output, &mut tally, |_, _| {
            unreachable!("frames are taken whole")
        });
        assert_eq!(drained, Drained::Empty);
    }
    assert_eq!(&output[..], b"old\x81\x02hi\x82\x03\x09\x09\x09");
    // The frames went into the relay's counters: two messages, five bytes.
    let text = lifecycle::metrics_endpoint::Render::render(&metrics);
    assert!(
        text.contains("wsgate_messages_total{name=\"room\",direction=\"to_client\"} 2"),
        "{text}"
    );
    // Into an empty output: the buffers change places, nothing is left queued.
    assert!(matches!(
        seat.inbox.offer(&binary(1, 4)),
        super::Offer::Delivered
    ));
    let mut empty = BytesMut::new();
    let mut tally = client.to_client.tally();
    let drained = seat.drain(&mut cx, &mut empty, &mut tally, |_, _| unreachable!());
    assert_eq!(drained, Drained::Empty);
    assert_eq!(&empty[..], b"\x82\x01\x04");
    assert_eq!(super::lock(&seat.inbox.state).bytes, 0);
}
