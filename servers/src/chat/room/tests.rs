//! The room without sockets: clients are in-memory outboxes, and each test
//! reads what landed in them.

use std::time::Duration;

use super::*;

/// A client of a test room: its membership and the outbox its session would drain.
struct TestClient {
    member: Member,
    outbox: Arc<Outbox>,
}

impl TestClient {
    /// Sends `text`, which must be handled at once (no outbox is full).
    fn send_text(&self, text: &str) {
        self.send(Message::text(text));
    }

    /// Sends `message`, which must be handled at once (no outbox is full).
    fn send(&self, message: Message) {
        assert_eq!(
            self.member.try_handle(&message),
            Handling::Done,
            "handling {message:?}"
        );
    }

    /// Everything queued for this client so far.
    fn received(&mut self) -> Vec<Message> {
        self.outbox.take_all()
    }

    /// Everything queued so far, as text (a binary message fails the test).
    fn received_texts(&mut self) -> Vec<String> {
        self.received()
            .into_iter()
            .map(|message| match message {
                Message::Text(text) => text.as_str().to_owned(),
                other => panic!("expected text, got {other:?}"),
            })
            .collect()
    }
}

/// A room whose clients count as not reading as soon as their queue is full
/// and their writer blocked (no stall timeout), so no test waits for a clock.
fn room(commands: bool, queue_capacity: usize) -> Arc<Room> {
    room_with(
        commands,
        queue_capacity,
        DEFAULT_QUEUE_BYTES,
        Duration::ZERO,
    )
}

fn room_with(
    commands: bool,
    queue_capacity: usize,
    queue_bytes: usize,
    stall_timeout: Duration,
) -> Arc<Room> {
    Arc::new(Room::new(RoomOptions {
        commands,
        queue_capacity: NonZeroUsize::new(queue_capacity).expect("tests use a capacity above 0"),
        queue_bytes: NonZeroUsize::new(queue_bytes).expect("tests use a byte limit above 0"),
        stall_timeout,
    }))
}

/// What a sender whose message must wait for a writer that is not blocked gets.
const WAIT_FOR_WRITER: Handling = Handling::Wait { until: None };

fn join(room: &Arc<Room>, peer: &str) -> TestClient {
    let (member, outbox) = room.join(peer);
    TestClient { member, outbox }
}

/// Joins a client and names it, discarding its welcome and what others got.
fn join_named(room: &Arc<Room>, clients: &mut [&mut TestClient], name: &str) -> TestClient {
    let mut client = join(room, "127.0.0.1:1000");
    client.send_text(&format!("WSHello {name}"));
    client.received();
    for other in clients {
        other.received();
    }
    client
}

fn strings(lines: &[&str]) -> Vec<String> {
    lines.iter().map(|line| (*line).to_owned()).collect()
}

#[test]
fn chat_message_reaches_everyone_but_sender_in_order() {
    let room = room(true, 16);
    let mut clients: Vec<TestClient> = (0..4).map(|_| join(&room, "127.0.0.1:1")).collect();
    clients[0].send_text("one");
    clients[0].send(Message::binary(vec![0u8, 255]));
    clients[2].send_text("two");
    clients[0].send_text("three");
    assert_eq!(clients[0].received(), vec![Message::text("(unnamed): two")]);
    assert_eq!(
        clients[1].received(),
        vec![
            Message::text("(unnamed): one"),
            Message::binary(vec![0u8, 255]),
            Message::text("(unnamed): two"),
            Message::text("(unnamed): three"),
        ]
    );
    assert_eq!(
        clients[2].received(),
        vec![
            Message::text("(unnamed): one"),
            Message::binary(vec![0u8, 255]),
            Message::text("(unnamed): three"),
        ]
    );
}

#[test]
fn recipients_share_one_copy_of_the_payload() {
    let room = room(false, 16);
    let sender = join(&room, "127.0.0.1:1");
    let mut first = join(&room, "127.0.0.1:2");
    let mut second = join(&room, "127.0.0.1:3");
    sender.send(Message::binary(vec![7u8; 4096]));
    let (Some(Message::Binary(a)), Some(Message::Binary(b))) =
        (first.received().pop(), second.received().pop())
    else {
        panic!("both recipients get the binary message");
    };
    assert_eq!(a.as_ptr(), b.as_ptr(), "the payload was copied");
}

#[test]
fn without_commands_command_strings_are_chat() {
    let room = room(false, 16);
    let sender = join(&room, "127.0.0.1:1");
    let mut other = join(&room, "127.0.0.1:2");
    let lines = [
        "WSHello bob",
        "WSPrivate bob hi",
        "WSWhois bob",
        "WSPrivate x",
    ];
    for line in lines {
        sender.send_text(line);
    }
    assert_eq!(other.received_texts(), strings(&lines));
}

#[test]
fn hello_welcomes_lists_users_and_announces_the_newcomer() {
    let room = room(true, 16);
    let mut unnamed = join(&room, "127.0.0.1:1");
    let mut alice = join_named(&room, &mut [&mut unnamed], "alice");
    let mut bob = join(&room, "127.0.0.1:2");
    bob.send_text("WSHello bob");
    assert_eq!(
        bob.received_texts(),
        strings(&["WSWelcome bob", "WSUsers alice"])
    );
    assert_eq!(alice.received_texts(), strings(&["WSJoin bob"]));
    assert_eq!(unnamed.received_texts(), strings(&["WSJoin bob"]));
    // The first named client sees no one, however many unnamed clients there are.
    let room = self::room(true, 16);
    let _unnamed = join(&room, "127.0.0.1:1");
    let mut first = join(&room, "127.0.0.1:2");
    first.send_text("WSHello first");
    assert_eq!(
        first.received_texts(),
        strings(&["WSWelcome first", "WSUsers"])
    );
}

#[test]
fn taken_names_get_a_numeric_suffix() {
    let room = room(true, 16);
    let mut bob = join_named(&room, &mut [], "bob");
    let mut second = join(&room, "127.0.0.1:2");
    second.send_text("WSHello bob");
    assert_eq!(
        second.received_texts(),
        strings(&["WSWelcome bob1", "WSUsers bob"])
    );
    assert_eq!(bob.received_texts(), strings(&["WSJoin bob1"]));
    let mut third = join(&room, "127.0.0.1:3");
    third.send_text("WSHello bob");
    assert_eq!(
        third.received_texts(),
        strings(&["WSWelcome bob2", "WSUsers bob bob1"])
    );
}

#[test]
fn invalid_names_are_refused_and_the_old_name_kept() {
    let room = room(true, 16);
    let mut other = join(&room, "127.0.0.1:1");
    let mut client = join_named(&room, &mut [&mut other], "carol");
    let cases = [
        ("WSHello ", "WSError invalid name: empty"),
        (
            &format!("WSHello {}", "x".repeat(33)),
            "WSError invalid name: longer than 32 characters",
        ),
        (
            "WSHello two words",
            "WSError invalid name: character ' ' not allowed (only A-Z a-z 0-9 _ . -)",
        ),
    ];
    for (line, error) in cases {
        client.send_text(line);
        assert_eq!(client.received_texts(), strings(&[error]), "after {line:?}");
    }
    assert_eq!(other.received_texts(), Vec::<String>::new());
    other.send_text("WSWhois carol");
    assert_eq!(other.received_texts(), strings(&["WSIs carol 127.0.0.1"]));
}

#[test]
fn second_hello_renames_and_frees_the_old_name() {
    let room = room(true, 16);
    let mut other = join_named(&room, &mut [], "other");
    let mut client = join_named(&room, &mut [&mut other], "dave");
    client.send_text("WSHello eve");
    assert_eq!(
        client.received_texts(),
        strings(&["WSWelcome eve", "WSUsers other"])
    );
    assert_eq!(
        other.received_texts(),
        strings(&["WSLeave dave", "WSJoin eve"])
    );
    let mut newcomer = join(&room, "127.0.0.1:9");
    newcomer.send_text("WSHello dave");
    assert_eq!(
        newcomer.received_texts(),
        strings(&["WSWelcome dave", "WSUsers eve other"])
    );
    // Asking for one's own name again changes nothing for the others.
    other.received();
    client.send_text("WSHello eve");
    assert_eq!(
        client.received_texts(),
        strings(&["WSJoin dave", "WSWelcome eve", "WSUsers dave other"])
    );
    assert_eq!(other.received_texts(), Vec::<String>::new());
}

#[test]
fn private_message_reaches_only_its_recipient() {
    let room = room(true, 16);
    let mut bystander = join(&room, "127.0.0.1:1");
    let mut bob = join_named(&room, &mut [&mut bystander], "bob");
    let mut sender = join(&room, "127.0.0.1:2");
    sender.send_text("WSPrivate bob psst, a secret");
    assert_eq!(
        bob.received_texts(),
        strings(&["(private) (unnamed): psst, a secret"])
    );
    assert_eq!(sender.received_texts(), Vec::<String>::new());
    assert_eq!(bystander.received_texts(), Vec::<String>::new());
    sender.send_text("WSPrivate nobody hello");
    sender.send_text("WSPrivate bob");
    assert_eq!(
        sender.received_texts(),
        strings(&[
            "WSError unknown name nobody",
            "WSError usage: WSPrivate <name> <message>",
        ])
    );
    assert_eq!(bob.received_texts(), Vec::<String>::new());
    assert_eq!(bystander.received_texts(), Vec::<String>::new());
}

#[test]
fn with_commands_lines_from_clients_name_their_sender() {
    let room = room(true, 16);
    let mut watcher = join(&room, "127.0.0.1:1");
    let mut alice = join_named(&room, &mut [&mut watcher], "alice");
    let mallory = join_named(&room, &mut [&mut watcher, &mut alice], "mallory");
    for forgery in ["WSWelcome mallory", "WSJoin ghost", "bob: hello"] {
        mallory.send_text(forgery);
        let line = format!("mallory: {forgery}");
        assert_eq!(alice.received_texts(), strings(&[&line]));
        assert_eq!(watcher.received_texts(), strings(&[&line]));
    }
    mallory.send_text("WSPrivate alice WSLeave bob");
    assert_eq!(
        alice.received_texts(),
        strings(&["(private) mallory: WSLeave bob"])
    );
    watcher.send_text("alice: hi");
    assert_eq!(alice.received_texts(), strings(&["(unnamed): alice: hi"]));
    // Binary messages go out as they came.
    mallory.send(Message::binary(b"WSJoin ghost".to_vec()));
    assert_eq!(
        alice.received(),
        vec![Message::binary(b"WSJoin ghost".to_vec())]
    );
}

#[test]
fn whois_answers_the_ip_address_or_undefined() {
    let room = room(true, 16);
    let frank = join(&room, "192.0.2.7:51000");
    frank.send_text("WSHello frank");
    let grace = join(&room, "[2001:db8::1]:443");
    grace.send_text("WSHello grace");
    let odd = join(&room, "not an address");
    odd.send_text("WSHello odd");
    let mut asker = join(&room, "127.0.0.1:3");
    for name in ["frank", "grace", "odd", "nobody"] {
        asker.send_text(&format!("WSWhois {name}"));
    }
    assert_eq!(
        asker.received_texts(),
        strings(&[
            "WSIs frank 192.0.2.7",
            "WSIs grace 2001:db8::1",
            "WSIs odd not an address",
            "WSIs nobody undefined",
        ])
    );
    drop(grace);
    asker.send_text("WSWhois grace");
    assert_eq!(
        asker.received_texts(),
        strings(&["WSLeave grace", "WSIs grace undefined"])
    );
}

#[test]
fn leaving_frees_the_name_and_tells_the_others() {
    let room = room(true, 16);
    let mut watcher = join(&room, "127.0.0.1:1");
    let henry = join_named(&room, &mut [&mut watcher], "henry");
    let unnamed = join(&room, "127.0.0.1:2");
    drop(unnamed);
    assert_eq!(watcher.received_texts(), Vec::<String>::new());
    drop(henry);
    assert_eq!(watcher.received_texts(), strings(&["WSLeave henry"]));
    assert_eq!(room.n_clients(), 1);
    let mut again = join(&room, "127.0.0.1:3");
    again.send_text("WSHello henry");
    assert_eq!(
        again.received_texts(),
        strings(&["WSWelcome henry", "WSUsers"])
    );
}

#[test]
fn full_queue_makes_the_sender_wait_instead_of_evicting() {
    let room = room(true, 4);
    let mut reader = join_named(&room, &mut [], "reader");
    let mut other = join(&room, "127.0.0.1:2");
    let sender = join(&room, "127.0.0.1:3");
    for message_idx in 0..4 {
        sender.send_text(&format!("message {message_idx}"));
    }
    // The reader's outbox is full, but its writer is not stuck: wait.
    assert_eq!(
        sender.member.try_handle(&Message::text("message 4")),
        WAIT_FOR_WRITER
    );
    assert!(!reader.member.evicted().is_cancelled());
    assert_eq!(room.n_clients(), 3);
    // Nobody got it, so every recipient still gets the same order.
    assert_eq!(other.received_texts().len(), 4);
    // Commands wait as well: they may answer, or announce, to everyone.
    assert_eq!(
        sender.member.try_handle(&Message::text("WSHello sender")),
        WAIT_FOR_WRITER
    );
    // Once the writer took its messages out, the message goes to everyone.
    let expected: Vec<String> = (0..4)
        .map(|idx| format!("(unnamed): message {idx}"))
        .collect();
    assert_eq!(reader.received_texts(), expected);
    sender.send_text("message 4");
    assert_eq!(reader.received_texts(), strings(&["(unnamed): message 4"]));
    assert_eq!(other.received_texts(), strings(&["(unnamed): message 4"]));
}

#[test]
fn full_queue_of_a_client_that_does_not_read_evicts_only_it() {
    let room = room(true, 4);
    let mut fast = join(&room, "127.0.0.1:1");
    let mut slow = join_named(&room, &mut [&mut fast], "slow");
    let sender = join(&room, "127.0.0.1:2");
    for message_idx in 0..4 {
        sender.send_text(&format!("message {message_idx}"));
        assert_eq!(fast.received().len(), 1);
    }
    assert!(!slow.member.evicted().is_cancelled());
    // Its writer waits for a socket that takes nothing more.
    slow.outbox.writer_blocked(Instant::now());
    sender.send_text("message 4");
    assert!(slow.member.evicted().is_cancelled());
    assert_eq!(
        fast.received_texts(),
        strings(&["WSLeave slow", "(unnamed): message 4"])
    );
    // The slow client's outbox holds what fitted, and nothing after its eviction.
    let expected: Vec<String> = (0..4)
        .map(|idx| format!("(unnamed): message {idx}"))
        .collect();
    assert_eq!(slow.received_texts(), expected);
    sender.send_text("message 5");
    assert_eq!(slow.received_texts(), Vec::<String>::new());
    assert_eq!(fast.received_texts(), strings(&["(unnamed): message 5"]));
    assert_eq!(room.n_clients(), 2);
    // Its name is free again.
    let mut next = join(&room, "127.0.0.1:3");
    next.send_text("WSHello slow");
    assert_eq!(
        next.received_texts(),
        strings(&["WSWelcome slow", "WSUsers"])
    );
}

#[test]
fn a_blocked_writer_with_room_left_is_not_evicted() {
    let room = room(false, 4);
    let mut reader = join(&room, "127.0.0.1:1");
    let sender = join(&room, "127.0.0.1:2");
    reader.outbox.writer_blocked(Instant::now());
    for message_idx in 0..4 {
        sender.send_text(&format!("message {message_idx}"));
    }
    assert!(!reader.member.evicted().is_cancelled());
    assert_eq!(reader.received_texts().len(), 4);
}

#[test]
fn a_full_queue_whose_socket_took_something_recently_is_waited_for() {
    const STALL_TIMEOUT: Duration = Duration::from_secs(3600);
    let room = room_with(false, 2, DEFAULT_QUEUE_BYTES, STALL_TIMEOUT);
    let mut reader = join(&room, "127.0.0.1:1");
    let sender = join(&room, "127.0.0.1:2");
    sender.send_text("one");
    sender.send_text("two");
    let blocked_since = Instant::now();
    reader.outbox.writer_blocked(blocked_since);
    // Blocked, but not for the stall timeout yet: wait, at most until then.
    assert_eq!(
        sender.member.try_handle(&Message::text("three")),
        Handling::Wait {
            until: Some(blocked_since + STALL_TIMEOUT)
        }
    );
    assert!(!reader.member.evicted().is_cancelled());
    // A message written starts the clock again: the writer is no longer blocked.
    reader.outbox.writer_progressed();
    assert_eq!(
        sender.member.try_handle(&Message::text("three")),
        WAIT_FOR_WRITER
    );
    assert_eq!(reader.received_texts(), strings(&["one", "two"]));
    sender.send_text("three");
    assert_eq!(reader.received_texts(), strings(&["three"]));
}

#[test]
fn outboxes_are_bounded_in_bytes_too() {
    let room = room_with(false, 100, 100, Duration::ZERO);
    let mut reader = join(&room, "127.0.0.1:1");
    let sender = join(&room, "127.0.0.1:2");
    let forty = Message::binary(vec![1u8; 40]);
    sender.send(forty.clone());
    sender.send(forty.clone());
    // 120 bytes would not fit.
    assert_eq!(sender.member.try_handle(&forty), WAIT_FOR_WRITER);
    // 100 bytes exactly do.
    sender.send(Message::binary(vec![2u8; 20]));
    assert_eq!(reader.outbox.n_waiting(), (3, 100));
    assert_eq!(reader.received().len(), 3);
    // An empty outbox takes one message larger than the limit, alone.
    let big = Message::binary(vec![3u8; 1000]);
    sender.send(big.clone());
    assert_eq!(
        sender.member.try_handle(&Message::binary(vec![4u8])),
        WAIT_FOR_WRITER
    );
    assert_eq!(reader.received(), vec![big]);
}

#[tokio::test]
async fn waiting_sender_goes_on_when_the_outbox_drains_or_the_reader_leaves() {
    let room = room(false, 2);
    let mut reader = join(&room, "127.0.0.1:1");
    let sender = join(&room, "127.0.0.1:2");
    sender.send_text("one");
    sender.send_text("two");
    let mut handled = std::pin::pin!(sender.member.handle(Message::text("three")));
    assert!(futures_util::poll!(handled.as_mut()).is_pending());
    // The writer takes its batch out: the sender is woken and delivers.
    let mut batch = std::collections::VecDeque::new();
    assert!(reader.outbox.next_batch(&mut batch, 64).await);
    assert_eq!(batch.len(), 2);
    tokio::time::timeout(std::time::Duration::from_secs(10), handled.as_mut())
        .await
        .expect("the sender was woken when the outbox drained");
    assert_eq!(reader.received_texts(), strings(&["three"]));
    // Full again; this time the reader leaves instead.
    sender.send_text("four");
    sender.send_text("five");
    let mut handled = std::pin::pin!(sender.member.handle(Message::text("six")));
    assert!(futures_util::poll!(handled.as_mut()).is_pending());
    drop(reader);
    tokio::time::timeout(std::time::Duration::from_secs(10), handled.as_mut())
        .await
        .expect("the sender was woken when the reader left");
    assert_eq!(room.n_clients(), 1);
}

#[tokio::test]
async fn waiting_sender_evicts_a_reader_whose_writer_then_blocks() {
    let room = room(false, 2);
    let reader = join(&room, "127.0.0.1:1");
    let mut other = join(&room, "127.0.0.1:2");
    let sender = join(&room, "127.0.0.1:3");
    sender.send_text("one");
    sender.send_text("two");
    other.received();
    let mut handled = std::pin::pin!(sender.member.handle(Message::text("three")));
    assert!(futures_util::poll!(handled.as_mut()).is_pending());
    reader.outbox.writer_blocked(Instant::now());
    tokio::time::timeout(std::time::Duration::from_secs(10), handled.as_mut())
        .await
        .expect("the sender was woken when the writer blocked");
    assert!(reader.member.evicted().is_cancelled());
    assert_eq!(other.received_texts(), strings(&["three"]));
}

#[test]
fn peer_ip_drops_the_port() {
    assert_eq!(peer_ip("127.0.0.1:5000"), "127.0.0.1");
    assert_eq!(peer_ip("[::1]:5000"), "::1");
    assert_eq!(peer_ip("unix"), "unix");
}
