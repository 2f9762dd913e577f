//! Unit tests of the routing core: names, prefixes, groups, delivery into
//! bounded outboxes (waiting and eviction), registered names and answers.

use std::collections::VecDeque;
use std::time::Duration;

use super::*;

fn core() -> LocalCore {
    LocalCore::new(CoreLimits {
        queue_capacity: NonZeroUsize::new(2).expect("2 is not zero"),
        stall_timeout: Duration::from_millis(50),
        max_groups_per_client: 2,
        max_pending_per_client: 2,
        ..CoreLimits::default()
    })
}

fn delivered(core: &LocalCore, targets: &[Target<'_>], text: &str) -> usize {
    match core.try_deliver(targets, &Message::text(text)) {
        Delivery::Delivered(n_delivered) => n_delivered,
        Delivery::Wait { .. } => usize::MAX,
    }
}

fn drain(connected: &Connected) -> Vec<Message> {
    connected.outbox.take_all()
}

#[test]
fn names_prefixes_and_groups_reach_their_clients_once() -> Result<(), CoreError> {
    let core = LocalCore::new(CoreLimits::default());
    let a = core.connect("a");
    let b = core.connect("b");
    let c = core.connect("c");
    core.claim_name(a.id, "group/item1", Claim::Exclusive)?;
    core.claim_name(b.id, "group/item2", Claim::Exclusive)?;
    core.claim_name(c.id, "abc1", Claim::Exclusive)?;
    assert_eq!(delivered(&core, &[Target::NamePrefix("group/")], "1"), 2);
    assert_eq!(delivered(&core, &[Target::Name("abc")], "2"), 0);
    assert_eq!(delivered(&core, &[Target::NamePrefix("abc")], "3"), 1);
    // A client reached by two targets gets the message once.
    assert_eq!(
        delivered(&core, &[Target::Name("abc1"), Target::NamePrefix("a")], "4"),
        1
    );
    core.join(a.id, "room")?;
    core.join(c.id, "room")?;
    assert_eq!(delivered(&core, &[Target::Group("room")], "5"), 2);
    assert_eq!(delivered(&core, &[Target::NameOrGroup("room")], "6"), 2);
    assert_eq!(drain(&a).len(), 3);
    assert_eq!(drain(&b).len(), 1);
    assert_eq!(drain(&c).len(), 4);
    Ok(())
}

#[test]
fn exclusive_names_are_refused_and_takeover_displaces() -> Result<(), CoreError> {
    let core = core();
    let a = core.connect("a");
    let b = core.connect("b");
    core.claim_name(a.id, "x", Claim::Exclusive)?;
    assert_eq!(
        core.claim_name(b.id, "x", Claim::Exclusive),
        Err(CoreError::Taken("x".to_owned()))
    );
    assert_eq!(core.claim_name(b.id, "x", Claim::TakeOver), Ok(Some(a.id)));
    assert_eq!(core.name_of(a.id), None);
    assert_eq!(core.name_of(b.id).as_deref(), Some("x"));
    // Shared names reach every holder.
    core.claim_name(a.id, "x", Claim::Shared)?;
    assert_eq!(delivered(&core, &[Target::Name("x")], "hi"), 2);
    // A name is freed with its client.
    core.disconnect(b.id);
    assert_eq!(core.resolve(&[Target::Name("x")]), vec![a.id]);
    Ok(())
}

#[test]
fn labels_and_group_counts_are_bounded() -> Result<(), CoreError> {
    let core = core();
    let a = core.connect("a");
    assert!(core.claim_name(a.id, "", Claim::Shared).is_err());
    assert!(
        core.claim_name(a.id, &"x".repeat(129), Claim::Shared)
            .is_err()
    );
    assert!(core.claim_name(a.id, "a\u{7}b", Claim::Shared).is_err());
    core.join(a.id, "one")?;
    core.join(a.id, "two")?;
    assert_eq!(core.join(a.id, "two"), Ok(false));
    assert_eq!(core.join(a.id, "three"), Err(CoreError::TooManyGroups(2)));
    assert!(core.leave(a.id, "one"));
    assert!(!core.leave(a.id, "one"));
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_full_outbox_makes_the_sender_wait_and_a_stalled_reader_is_evicted() {
    let core = core();
    let reader = core.connect("reader");
    let other = core.connect("other");
    let both = [Target::Client(reader.id), Target::Client(other.id)];
    assert_eq!(delivered(&core, &both, "1"), 2);
    assert_eq!(delivered(&core, &both, "2"), 2);
    assert_eq!(drain(&other), ["1", "2"].map(Message::text));
    // The reader's outbox is full but its writer is not blocked: wait, deliver nothing.
    assert_eq!(
        core.try_deliver(&both, &Message::text("3")),
        Delivery::Wait { until: None }
    );
    assert_eq!(other.outbox.n_waiting().0, 0);
    // Its writer blocks on the socket and stays blocked past the stall timeout.
    reader.outbox.writer_blocked(Instant::now());
    tokio::time::advance(Duration::from_millis(60)).await;
    assert_eq!(delivered(&core, &both, "3"), 1);
    assert!(reader.evicted.is_cancelled());
    assert!(core.resolve(&[Target::Client(reader.id)]).is_empty());
    // The other client got everything.
    assert_eq!(drain(&other), [Message::text("3")]);
}

#[tokio::test]
async fn deliver_waits_until_the_outbox_drains() {
    let core = Arc::new(core());
    let reader = core.connect("reader");
    let target = [Target::Client(reader.id)];
    assert_eq!(delivered(&core, &target, "1"), 1);
    assert_eq!(delivered(&core, &target, "2"), 1);
    let sender = {
        let core = Arc::clone(&core);
        tokio::spawn(async move {
            deliver(core.as_ref(), &[Target::Client(0)], &Message::text("3")).await
        })
    };
    let mut batch = VecDeque::new();
    assert!(reader.outbox.next_batch(&mut batch, 10).await);
    assert_eq!(sender.await.ok(), Some(1));
}

#[test]
fn registered_names_are_bounded_and_replaceable() -> Result<(), CoreError> {
    let core = LocalCore::new(CoreLimits {
        max_registered: 2,
        ..CoreLimits::default()
    });
    assert_eq!(core.register("a"), Ok(true));
    assert_eq!(core.register("a"), Ok(false));
    assert_eq!(core.register("b"), Ok(true));
    assert_eq!(core.register("c"), Err(CoreError::TooManyRegistered(2)));
    assert!(core.unregister("a"));
    assert!(core.is_registered("b") && !core.is_registered("a"));
    core.set_registered(["x".to_owned(), "y".to_owned()].into())?;
    assert_eq!(core.registered(), ["x", "y"]);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn the_first_answer_wins_and_acks_expire() -> Result<(), CoreError> {
    let core = core();
    let asker = core.connect("asker");
    let one = core.connect("one");
    let two = core.connect("two");
    let stranger = core.connect("stranger");
    let ttl = Duration::from_secs(10);
    core.expect_answer("k", asker.id, &[one.id, two.id], ttl)?;
    assert_eq!(core.take_answer("k", stranger.id), Answer::Unknown);
    assert_eq!(core.take_answer("k", two.id), Answer::To(asker.id));
    assert_eq!(core.take_answer("k", one.id), Answer::AlreadyAnswered);
    // Another client cannot reuse a live key; the asker's count is bounded.
    assert_eq!(
        core.expect_answer("k", stranger.id, &[one.id], ttl),
        Err(CoreError::KeyInUse("k".to_owned()))
    );
    core.expect_answer("l", asker.id, &[one.id], ttl)?;
    assert_eq!(
        core.expect_answer("m", asker.id, &[one.id], ttl),
        Err(CoreError::TooManyPending(2))
    );
    tokio::time::advance(ttl).await;
    assert_eq!(core.take_answer("l", one.id), Answer::Unknown);
    core.expect_answer("m", asker.id, &[one.id], ttl)?;
    Ok(())
}
