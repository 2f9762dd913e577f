//! Fan-out through a carrier link (docs/link-protocol.md, *Fan-out*) against
//! the real gateway, with the test playing the backend byte by byte: the
//! gateway opens a carrier when an ACCEPT says `carrier_wanted`, offers its
//! key in later OPENs, delivers each FANOUT to the clients it names in the
//! carrier's order (unknown ids skipped), ends a carried client on its FANOUT
//! CLOSE (not on the end of its own link), gives carried clients `1011` when
//! the carrier ends or breaks, and closes a carried client that reads nothing
//! with `1008` while the others go on; `wsgate_carrier_links_open` counts
//! the carrier.

use std::path::Path;

use anyhow::{Context, bail};
use harness::wire::{read_record, write_record};
use harness::{AcceptReply, Client, CloseCode, Gateway, Message, OpenMeta, Record};
use link::fanout::{Fanout, FanoutMessage};
use link::{CarrierTerms, CloseInfo, LinkMode};
use tempfile::TempDir;
use tokio::net::{UnixListener, UnixStream};
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// The test's backend: a listener on `<docroot>/room` it answers by hand.
struct Script {
    listener: UnixListener,
}

/// A client's link as the backend sees it.
struct ClientLink {
    stream: UnixStream,
    open: OpenMeta,
}

impl Script {
    fn bind(docroot: &Path) -> anyhow::Result<Script> {
        Ok(Script {
            listener: UnixListener::bind(docroot.join("room"))?,
        })
    }

    /// Accepts the next link and reads its OPEN.
    async fn next_open(&self) -> anyhow::Result<(UnixStream, OpenMeta)> {
        let (mut stream, _) = tokio::time::timeout(harness::EVENT_DEADLINE, self.listener.accept())
            .await
            .context("no link from the gateway")??;
        let Some(Record::Open(payload)) = read_record(&mut stream).await? else {
            bail!("the link did not start with OPEN");
        };
        Ok((stream, OpenMeta::from_payload(&payload)?))
    }

    /// Connects a client to `/room`, answering its OPEN with `reply`.
    async fn client(
        &self,
        gateway: &Gateway,
        reply: impl FnOnce(&OpenMeta) -> AcceptReply,
    ) -> anyhow::Result<(Client, ClientLink)> {
        let backend = async {
            let (mut stream, open) = self.next_open().await?;
            write_record(&mut stream, &Record::Accept(reply(&open).to_payload())).await?;
            anyhow::Ok(ClientLink { stream, open })
        };
        let (client, link) = tokio::join!(gateway.connect("/room"), backend);
        Ok((client?, link?))
    }

    /// A first client whose ACCEPT wants a carrier; then the carrier's OPEN,
    /// accepted; then clients until one is offered that carrier (the gateway
    /// marks it open once it has read the ACCEPT). Returns the carrier, its
    /// key, and the first client (not carried).
    async fn open_carrier(
        &self,
        gateway: &Gateway,
    ) -> anyhow::Result<(UnixStream, u64, (Client, ClientLink))> {
        let first = self
            .client(gateway, |_| AcceptReply {
                carrier_wanted: true,
                ..AcceptReply::default()
            })
            .await?;
        let (mut carrier, open) = self.next_open().await?;
        assert_eq!(open.mode, LinkMode::Carrier, "the gateway opens a carrier");
        assert_eq!(open.name, "room");
        write_record(&mut carrier, &Record::Accept(Default::default())).await?;
        Ok((carrier, open.id, first))
    }

    /// A client seated on carrier `key` with `terms`. Clients that come
    /// before the gateway has marked the carrier open are accepted plainly
    /// and dropped; every attempt is a real connection, so this waits on
    /// the gateway, never on a clock.
    async fn carried_client(
        &self,
        gateway: &Gateway,
        key: u64,
        terms: CarrierTerms,
    ) -> anyhow::Result<(Client, ClientLink)> {
        for _ in 0..1000 {
            let (client, link) = self
                .client(gateway, |open| AcceptReply {
                    carrier: (open.carrier == Some(key)).then_some(terms),
                    ..AcceptReply::default()
                })
                .await?;
            if link.open.carrier == Some(key) {
                return Ok((client, link));
            }
        }
        bail!("the gateway never offered carrier {key}")
    }
}

const TERMS: CarrierTerms = CarrierTerms {
    queue_bytes: 64 * 1024,
    stall_ms: 300,
};

fn text(text: &'static str) -> FanoutMessage {
    FanoutMessage::Text(Utf8Bytes::from_static(text))
}

async fn fanout(
    carrier: &mut UnixStream,
    message: FanoutMessage,
    ids: &[u64],
) -> anyhow::Result<()> {
    write_record(carrier, &Record::Fanout(Fanout::new(message, ids)?)).await
}

async fn start() -> anyhow::Result<(TempDir, Gateway, Script)> {
    let docroot = tempfile::tempdir()?;
    let script = Script::bind(docroot.path())?;
    let gateway = Gateway::start_with_metrics(docroot.path(), &[]).await?;
    Ok((docroot, gateway, script))
}

#[tokio::test]
async fn fanouts_reach_the_clients_they_name_in_order_and_close_them() -> anyhow::Result<()> {
    let (_docroot, gateway, script) = start().await?;
    let (mut carrier, key, (mut plain, mut plain_link)) = script.open_carrier(&gateway).await?;
    assert_eq!(
        plain_link.open.carrier, None,
        "no carrier before it is open"
    );
    let (mut b, mut b_link) = script.carried_client(&gateway, key, TERMS).await?;
    let (mut c, c_link) = script.carried_client(&gateway, key, TERMS).await?;
    let (b_id, c_id) = (b_link.open.id, c_link.open.id);

    // One record for both, one with an id no client has, one for b alone.
    fanout(&mut carrier, text("one"), &[b_id, 999_999, c_id]).await?;
    fanout(&mut carrier, text("two"), &[b_id]).await?;
    fanout(
        &mut carrier,
        FanoutMessage::Binary(vec![0, 255].into()),
        &[c_id, b_id],
    )
    .await?;
    b.expect_text("one").await?;
    b.expect_text("two").await?;
    assert_eq!(b.recv().await?, Message::Binary(vec![0, 255].into()));
    c.expect_text("one").await?;
    assert_eq!(c.recv().await?, Message::Binary(vec![0, 255].into()));

    // The client's messages still come on its own link.
    b.send(Message::text("from b")).await?;
    assert_eq!(
        read_record(&mut b_link.stream).await?,
        Some(Record::Text(Utf8Bytes::from_static("from b")))
    );

    // Ending b's own link is not b's end: the carrier's CLOSE is, after
    // what the carrier brings before it.
    drop(b_link);
    fanout(&mut carrier, text("three"), &[b_id]).await?;
    fanout(
        &mut carrier,
        FanoutMessage::Close(Some(CloseInfo {
            code: 4000,
            reason: "bye".into(),
        })),
        &[b_id],
    )
    .await?;
    b.expect_text("three").await?;
    b.expect_close_with(CloseCode::from(4000), "bye").await?;

    // c and the plain client are unaffected.
    fanout(&mut carrier, text("four"), &[c_id]).await?;
    c.expect_text("four").await?;
    write_record(
        &mut plain_link.stream,
        &Record::Text(Utf8Bytes::from_static("plain")),
    )
    .await?;
    plain.expect_text("plain").await?;
    Ok(())
}

#[tokio::test]
async fn carried_clients_get_1011_when_the_carrier_ends_or_breaks() -> anyhow::Result<()> {
    let (_docroot, gateway, script) = start().await?;
    let (carrier, key, (mut plain, mut plain_link)) = script.open_carrier(&gateway).await?;
    let (mut b, _b_link) = script.carried_client(&gateway, key, TERMS).await?;
    let open_carriers =
        |scrape: harness::metrics::Scrape| scrape.value("wsgate_carrier_links_open", &[]);
    assert_eq!(open_carriers(gateway.scrape().await?)?, 1.0);
    drop(carrier);
    b.expect_close_code(CloseCode::Error).await?;
    // The gauge goes down before the carrier's clients are ended.
    assert_eq!(open_carriers(gateway.scrape().await?)?, 0.0);
    // The plain client is not the carrier's.
    write_record(
        &mut plain_link.stream,
        &Record::Text(Utf8Bytes::from_static("still here")),
    )
    .await?;
    plain.expect_text("still here").await?;

    // The next carrier_wanted opens a new carrier; a TEXT record on it is a
    // protocol error that ends it, and its clients get 1011.
    let (mut carrier, key, _first) = script.open_carrier(&gateway).await?;
    let (mut c, _c_link) = script.carried_client(&gateway, key, TERMS).await?;
    write_record(&mut carrier, &Record::Text(Utf8Bytes::from_static("x"))).await?;
    c.expect_close_code(CloseCode::Error).await?;
    Ok(())
}

#[tokio::test]
async fn a_message_on_a_carried_clients_own_link_is_a_protocol_error() -> anyhow::Result<()> {
    let (_docroot, gateway, script) = start().await?;
    let (_carrier, key, _first) = script.open_carrier(&gateway).await?;
    let (mut b, mut b_link) = script.carried_client(&gateway, key, TERMS).await?;
    write_record(
        &mut b_link.stream,
        &Record::Text(Utf8Bytes::from_static("out of order")),
    )
    .await?;
    b.expect_close_code(CloseCode::Error).await?;
    Ok(())
}

#[tokio::test]
async fn a_carried_client_that_reads_nothing_is_closed_with_1008_and_the_others_go_on()
-> anyhow::Result<()> {
    let (_docroot, gateway, script) = start().await?;
    let (mut carrier, key, _first) = script.open_carrier(&gateway).await?;
    let (stalled, stalled_link) = script.carried_client(&gateway, key, TERMS).await?;
    let (mut reader, reader_link) = script.carried_client(&gateway, key, TERMS).await?;
    let ids = [stalled_link.open.id, reader_link.open.id];
    // More than the stalled client's socket buffers, output and queue hold
    // (loopback buffers grow to a few MiB): the carrier must wait for it,
    // then give up on it, while the reader gets every message in order.
    const N: usize = 2000;
    let payload = vec![7u8; 16 * 1024];
    let send = async {
        for i in 0..N {
            let mut message = payload.clone();
            message[..8].copy_from_slice(&(i as u64).to_be_bytes());
            fanout(&mut carrier, FanoutMessage::Binary(message.into()), &ids).await?;
        }
        anyhow::Ok(())
    };
    let read = async {
        for i in 0..N {
            match reader.recv().await? {
                Message::Binary(data) if data[..8] == (i as u64).to_be_bytes() => {}
                other => bail!("message {i}: got {}", harness::client::describe(&other)),
            }
        }
        anyhow::Ok(())
    };
    let (sent, read) = tokio::join!(send, read);
    sent?;
    read?;
    // The stalled client, reading at last, finds a prefix and then 1008.
    let mut stalled = stalled;
    let mut got = 0;
    loop {
        match stalled.recv_any().await? {
            Message::Binary(_) => got += 1,
            Message::Close(Some(frame)) => {
                assert_eq!(frame.code, CloseCode::Policy);
                assert_eq!(frame.reason.as_str(), "too slow: message queue full");
                break;
            }
            other => bail!("stalled client got {}", harness::client::describe(&other)),
        }
    }
    assert!(
        got < N,
        "the stalled client was closed before the end ({got} of {N})"
    );
    Ok(())
}
