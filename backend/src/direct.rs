//! Direct mode on the backend side: after ACCEPT the gateway hands over the
//! client's own TCP socket (a HANDOFF record with SCM_RIGHTS, `link::fd_pass`)
//! and this backend speaks WebSocket on it, the gateway out of the data path.
//!
//! [`DirectClient`] makes that socket behave like a relayed session: the same
//! messages come out (`Text`, `Binary`, then one `Close` with the code the
//! gateway would have sent in relay mode), and it keeps the client alive with
//! pings and closes it after the idle timeout, as the gateway does when it
//! relays. `session` wraps it; servers never see the difference.

use std::io;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{Sink, Stream};
use link::LinkStream;
use link::deflate::MessageDeflater;
use link::frames::{FrameReader, Inbound, Parsed, put_frame, put_message, put_prepared};
use link::keepalive::{DEFAULT_IDLE_TIMEOUT, DEFAULT_PING_INTERVAL, IdleTimer, PingTicker};
use link::websocket::{
    OUTPUT_HIGH_WATER, ReadAhead, WRITE_BUFFER, client_reader, consume, poll_write_out,
    read_to_end_dropping, release,
};
use link::{ClientLimits, DeflateParams, LinkError, close_for_read_error, fd_pass};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Control, OpCode};
use tokio_tungstenite::tungstenite::{self, Message, Utf8Bytes};

/// Keepalive and limits of direct clients: the gateway's defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirectOptions {
    /// Largest message from a client; more is closed with 1009.
    pub max_message_size: usize,
    /// Time between pings to the client; `None` sends none.
    pub ping_interval: Option<Duration>,
    /// Silence after which the client is closed with 1001; `None` never.
    pub idle_timeout: Option<Duration>,
}

impl Default for DirectOptions {
    fn default() -> DirectOptions {
        DirectOptions {
            max_message_size: link::DEFAULT_MAX_PAYLOAD,
            ping_interval: Some(DEFAULT_PING_INTERVAL),
            idle_timeout: Some(DEFAULT_IDLE_TIMEOUT),
        }
    }
}

impl DirectOptions {
    /// These options under the gateway's `limits` for the client: its
    /// keepalive, and the smaller of the two maximum message sizes.
    pub fn with_limits(self, limits: ClientLimits) -> DirectOptions {
        let seconds = |secs: u64| (secs != 0).then(|| Duration::from_secs(secs));
        DirectOptions {
            max_message_size: self.max_message_size.min(limits.max_message_size),
            ping_interval: seconds(limits.ping_interval),
            idle_timeout: seconds(limits.idle_timeout),
        }
    }

    /// These options for one direct client: under OPEN's `limits` if it
    /// has them, and with the server's own `max_message_size` (ACCEPT's)
    /// if that is smaller still.
    pub(crate) fn for_client(
        self,
        limits: Option<ClientLimits>,
        server_max: Option<usize>,
    ) -> DirectOptions {
        let mut options = match limits {
            Some(limits) => self.with_limits(limits),
            None => self,
        };
        if let Some(max) = server_max {
            options.max_message_size = options.max_message_size.min(max);
        }
        options
    }
}

/// Receives the client's socket and the bytes the gateway read past the
/// handshake from `link`, and wraps them into a server-role WebSocket that
/// applies the permessage-deflate the gateway agreed, if any (`deflate`
/// from OPEN): the client's compressed messages are inflated before the
/// server sees them, and what the server sends is compressed.
///
/// Returns the client and, when `keep_link` (this backend offered the link
/// for reuse in ACCEPT), the link, whose next record starts another client;
/// otherwise the link is closed.
pub(crate) async fn take_over(
    mut link: LinkStream,
    options: DirectOptions,
    deflate: Option<DeflateParams>,
    keep_link: bool,
) -> Result<(DirectClient, Option<LinkStream>), LinkError> {
    let (client_fd, pending) = fd_pass::recv_handoff(&mut link, options.max_message_size).await?;
    // The link has done its job for this client; closing it tells the
    // gateway it may let go, keeping it lets the gateway send the next OPEN.
    let link = keep_link.then_some(link);
    let client = from_descriptor(client_fd, pending, options, deflate)?;
    Ok((client, link))
}

/// The client on the socket `client_fd` the gateway handed over (HANDOFF or
/// OPEN_HANDOFF), starting with the `pending` bytes.
///
/// The socket is used as the gateway left it (docs/link-protocol.md): its
/// peer is OPEN's `peer`, and TCP_NODELAY, a socket option, is already set.
/// Only non-blocking mode is set again, at the cost of one system call: a
/// blocking descriptor, from whoever may connect to this backend's socket,
/// would stall every client of this thread.
pub(crate) fn from_descriptor(
    client_fd: OwnedFd,
    pending: Bytes,
    options: DirectOptions,
    deflate: Option<DeflateParams>,
) -> io::Result<DirectClient> {
    let std_stream = std::net::TcpStream::from(client_fd);
    std_stream.set_nonblocking(true)?;
    let tcp = TcpStream::from_std(std_stream)?;
    Ok(DirectClient::new(tcp, pending, options, deflate))
}

/// A WebSocket client on its own socket, behaving like a relayed session.
///
/// It speaks WebSocket itself, as the gateway's relay does (`link::frames`):
/// the client's frames are parsed and unmasked in place in one read buffer,
/// what the server sends is formatted into one output buffer written once
/// per flush, and both buffers are dropped whenever they are empty, so an
/// idle client holds none.
#[derive(Debug)]
pub(crate) struct DirectClient {
    io: ReadAhead<TcpStream>,
    /// Read from the client, not yet handed out.
    input: BytesMut,
    /// Frames for the client, not yet written.
    output: BytesMut,
    frames: FrameReader,
    pings: PingTicker,
    idle: IdleTimer,
    /// The one `Close` was yielded; the stream ends now.
    closed: bool,
    /// A close frame went into `output`: nothing more may be sent.
    close_sent: bool,
    /// This side started the close (a failed frame, a compressed message
    /// past the limit, the idle timeout): the client may still be sending,
    /// so its socket lingers when this is dropped (`linger`).
    linger: bool,
    /// The payload of the server's last ping, until the client's pong to it.
    asked: Option<Bytes>,
    /// Compresses outgoing messages when permessage-deflate was agreed.
    deflater: Option<MessageDeflater>,
}

impl DirectClient {
    /// The client on `tcp`, starting with the bytes the gateway read past the
    /// handshake (`pending`), inflating its compressed messages and
    /// compressing the server's if `deflate` was agreed.
    fn new(
        tcp: TcpStream,
        pending: Bytes,
        options: DirectOptions,
        deflate: Option<DeflateParams>,
    ) -> DirectClient {
        let (io, input) = client_reader(tcp, &pending, deflate, options.max_message_size);
        DirectClient {
            io,
            input,
            output: BytesMut::new(),
            frames: FrameReader::new(options.max_message_size),
            pings: PingTicker::new(options.ping_interval),
            idle: IdleTimer::new(options.idle_timeout),
            closed: false,
            close_sent: false,
            linger: false,
            asked: None,
            deflater: deflate.map(MessageDeflater::new),
        }
    }

    /// Writes what is buffered as far as the socket takes it now.
    fn poll_write(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), tungstenite::Error>> {
        let written = poll_write_out(&mut self.io, &mut self.output, cx);
        release(&mut self.output);
        written.map_err(tungstenite::Error::Io)
    }

    /// Sends a ping when one is due; never waits.
    fn poll_keepalive(&mut self, cx: &mut Context<'_>) {
        let mut due = false;
        while self.pings.poll_tick(cx).is_ready() {
            due = true;
        }
        if due && !self.close_sent {
            put_frame(&mut self.output, OpCode::Control(Control::Ping), &[]);
            let _ = self.poll_write(cx);
        }
    }

    /// Queues a close frame (unless one went already) and writes what the
    /// socket takes now.
    fn send_close(&mut self, cx: &mut Context<'_>, frame: Option<CloseFrame>) {
        if !self.close_sent {
            self.close_sent = true;
            put_prepared(&mut self.output, Frame::close(frame));
        }
        let _ = self.poll_write(cx);
    }

    /// Sends the client a close frame if the socket takes it now, and returns
    /// the same frame as the session's last message.
    fn close_with(
        &mut self,
        cx: &mut Context<'_>,
        code: CloseCode,
        reason: &'static str,
    ) -> Message {
        let frame = CloseFrame {
            code,
            reason: Utf8Bytes::from_static(reason),
        };
        self.send_close(cx, Some(frame.clone()));
        self.closed = true;
        self.linger = true;
        Message::Close(Some(frame))
    }
}

/// Longest a closed client's socket lingers (`linger`).
const LINGER_TIMEOUT: Duration = Duration::from_secs(5);

/// Most sockets lingering at once in this process; past it, a socket just closes.
const MAX_LINGERING: usize = 1024;

static LINGERING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(MAX_LINGERING);

/// Closes a client whose close this side started, without losing the close
/// frame to a reset: closing a socket with unread bytes in it sends RST,
/// and the client may still be sending the message that failed. The rest
/// of `output` (the close frame) is written, the sending side shut, and what
/// the client still sends read and dropped until it closes, for at most
/// [`LINGER_TIMEOUT`], on a duplicate of `tcp` (the original closes with
/// its `DirectClient`).
fn linger(tcp: &TcpStream, output: BytesMut) {
    let Ok(permit) = LINGERING.try_acquire() else {
        return;
    };
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let Some(dup) = std::os::fd::AsFd::as_fd(tcp)
        .try_clone_to_owned()
        .ok()
        .map(std::net::TcpStream::from)
        .and_then(|std_stream| TcpStream::from_std(std_stream).ok())
    else {
        return;
    };
    runtime.spawn(async move {
        let _permit = permit;
        let mut tcp = dup;
        let mut room = BytesMut::new();
        let _ = tokio::time::timeout(LINGER_TIMEOUT, async {
            use tokio::io::AsyncWriteExt;
            tcp.write_all(&output).await?;
            tcp.shutdown().await?;
            read_to_end_dropping(&mut tcp, &mut room).await;
            Ok::<_, io::Error>(())
        })
        .await;
        release(&mut room);
    });
}

impl Drop for DirectClient {
    fn drop(&mut self) {
        if self.linger {
            linger(self.io.get_mut(), std::mem::take(&mut self.output));
        }
    }
}

/// Yields `Text`, `Binary` and one final `Close`, never an error: a failing
/// client becomes the `Close` with the code the gateway would have sent.
impl Stream for DirectClient {
    type Item = Message;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.closed {
            return Poll::Ready(None);
        }
        loop {
            let (message, used) = match this.frames.read(&mut this.input) {
                Err(error) => {
                    let (code, reason) = error.close();
                    return Poll::Ready(Some(this.close_with(cx, code, reason)));
                }
                Ok(Parsed::Need(need)) => {
                    // The timers are asked once the messages read are out,
                    // before the socket is: once a burst, not once a
                    // message. Every `Pending` below comes after them, so
                    // they always hold the task's waker while it waits.
                    this.poll_keepalive(cx);
                    if this.idle.poll_expired(cx).is_ready() {
                        let close = this.close_with(cx, CloseCode::Away, "idle timeout");
                        return Poll::Ready(Some(close));
                    }
                    // The pongs to its pings wait in the output: a client that
                    // pings and never reads is not read either.
                    if this.output.len() >= OUTPUT_HIGH_WATER && this.poll_write(cx).is_pending() {
                        return Poll::Pending;
                    }
                    match this.io.poll_read_burst(
                        cx,
                        &mut this.input,
                        need,
                        TcpStream::poll_read_ready,
                    ) {
                        Poll::Pending => {
                            // Nothing held: an idle client holds no buffer.
                            release(&mut this.input);
                            return Poll::Pending;
                        }
                        Poll::Ready(Ok(0)) => {
                            // Gone without a close frame: as the gateway reports it in relay mode.
                            this.closed = true;
                            return Poll::Ready(Some(Message::Close(None)));
                        }
                        // Heard per read, not per message: one clock read for a burst.
                        Poll::Ready(Ok(_)) => {
                            this.idle.heard();
                            continue;
                        }
                        Poll::Ready(Err(error)) => {
                            let close = match close_for_read_error(&error) {
                                Some((code, reason)) => this.close_with(cx, code, reason),
                                None => {
                                    this.closed = true;
                                    Message::Close(None)
                                }
                            };
                            return Poll::Ready(Some(close));
                        }
                    }
                }
                Ok(Parsed::Frame(inbound, used)) => {
                    let message = match inbound {
                        Inbound::Text(text) => Some(Message::Text(Utf8Bytes::from(text))),
                        Inbound::Binary(payload) => {
                            Some(Message::Binary(Bytes::copy_from_slice(payload)))
                        }
                        // Pings are answered here, as the gateway does.
                        Inbound::Ping(payload) => {
                            if !this.close_sent {
                                put_frame(
                                    &mut this.output,
                                    OpCode::Control(Control::Pong),
                                    payload,
                                );
                            }
                            None
                        }
                        // The answer to the server's own ping, as a relayed session yields it.
                        Inbound::Pong(payload) if this.asked.as_deref() == Some(payload) => {
                            this.asked = None;
                            Some(Message::Pong(Bytes::copy_from_slice(payload)))
                        }
                        // Other pongs are keepalive.
                        Inbound::Pong(_) | Inbound::Fragment => None,
                        Inbound::Close(frame) => Some(Message::Close(frame)),
                    };
                    (message, used)
                }
            };
            consume(&mut this.input, used);
            this.frames.finish();
            match message {
                None => {
                    if !this.output.is_empty() {
                        let _ = this.poll_write(cx);
                    }
                }
                Some(Message::Close(frame)) => {
                    // The reply echoes the client's code; it goes now.
                    this.send_close(cx, frame.clone());
                    this.closed = true;
                    return Poll::Ready(Some(Message::Close(frame)));
                }
                Some(message) => return Poll::Ready(Some(message)),
            }
        }
    }
}

impl Sink<Message> for DirectClient {
    type Error = tungstenite::Error;

    /// Ready while fewer than [`WRITE_BUFFER`] bytes wait for the client.
    fn poll_ready(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), tungstenite::Error>> {
        if self.output.len() >= WRITE_BUFFER {
            ready!(self.poll_write(cx))?;
        }
        Poll::Ready(Ok(()))
    }

    fn start_send(mut self: Pin<&mut Self>, message: Message) -> Result<(), tungstenite::Error> {
        let this = &mut *self;
        if this.close_sent {
            return Err(tungstenite::Error::Protocol(
                ProtocolError::SendAfterClosing,
            ));
        }
        let message = match (&mut this.deflater, message) {
            (Some(deflater), message @ (Message::Text(_) | Message::Binary(_))) => {
                deflater.compress(message)
            }
            (_, message) => message,
        };
        match &message {
            Message::Ping(payload) => this.asked = Some(payload.clone()),
            Message::Close(_) => this.close_sent = true,
            _ => {}
        }
        put_message(&mut this.output, message);
        Ok(())
    }

    fn poll_flush(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), tungstenite::Error>> {
        self.poll_write(cx)
    }

    /// Sends a close frame unless one went already, and writes everything.
    fn poll_close(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), tungstenite::Error>> {
        let this = &mut *self;
        if !this.close_sent {
            this.close_sent = true;
            put_prepared(&mut this.output, Frame::close(None));
        }
        match ready!(this.poll_write(cx)) {
            // Closing a socket the client already closed is not a failure.
            Err(tungstenite::Error::Io(error))
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::BrokenPipe
                        | std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::NotConnected
                ) =>
            {
                Poll::Ready(Ok(()))
            }
            other => Poll::Ready(other),
        }
    }
}
