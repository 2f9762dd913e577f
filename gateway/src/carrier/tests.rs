//! The carrier's inboxes and reader without a gateway: bounds, order, ends,
//! and the reader waiting for a full inbox or giving up on it.

use std::future::poll_fn;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::SinkExt;
use futures_util::task::noop_waker_ref;
use link::fanout::{Fanout, FanoutMessage};
use link::{CarrierTerms, CloseInfo, Record, RecordCodec};
use tokio::net::UnixStream;
use tokio_util::codec::Framed;

use super::{Carrier, Drained, InboxEnd, Seat};

fn binary(len: usize, tag: u8) -> FanoutMessage {
    FanoutMessage::Binary(Bytes::from(vec![tag; len]))
}

/// Everything `seat` holds now, as tags (first byte) of binary messages.
fn take_all(seat: &Seat) -> (Vec<u8>, Drained) {
    let mut cx = Context::from_waker(noop_waker_ref());
    let mut tags = Vec::new();
    let drained = seat.drain(&mut cx, |message| {
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
    let seat = carrier.seat(7).expect("seated");
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
    assert!(matches!(
        seat.inbox.offer(&binary(60, 3)),
        super::Offer::Delivered
    ));
    assert!(matches!(
        seat.inbox.offer(&binary(40, 4)),
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
    let seat = carrier.seat(7).expect("seated");
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
    let seat = carrier.seat(7).expect("seated");
    assert_eq!(super::lock(&carrier.seated).inboxes.len(), 1);
    drop(seat);
    assert!(super::lock(&carrier.seated).inboxes.is_empty());
    let seat = carrier.seat(8).expect("seated");
    carrier.end();
    assert!(carrier.seat(9).is_none());
    assert!(!seat.accept_terms(TERMS));
    assert_eq!(take_all(&seat).1, Drained::Ended(InboxEnd::CarrierGone));
}

/// A carrier reading one end of a socket pair; the test writes the other.
async fn reading_carrier() -> (Arc<Carrier>, Framed<UnixStream, RecordCodec>) {
    let (ours, theirs) = UnixStream::pair().expect("socket pair");
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
    poll_fn(|cx| {
        let mut tags = Vec::new();
        let drained = seat.drain(cx, |message| {
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
    let slow = carrier.seat(1).expect("seated");
    let taker = carrier.seat(2).expect("seated");
    assert!(slow.accept_terms(TERMS));
    assert!(taker.accept_terms(TERMS));
    for tag in 0..5 {
        let fanout = Fanout::new(binary(60, tag), &[1, 2]).expect("fanout");
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
