//! The WebSocket configuration of a client and the buffer sizes of a client
//! and a link, for the gateway's relay and a backend's direct session alike.
//!
//! Most clients idle, so buffers start small and grow only for the messages
//! that actually come; BENCHMARKS.md has the measurements behind each size.
//! [`ReadAhead`] goes under a client's WebSocket on either side: tungstenite
//! zero-fills its whole read buffer before every read, so that buffer stays
//! small, while the socket is read [`READ_CHUNK`] bytes at a time.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::io::poll_read_buf;

use crate::deflate::{DeflateParams, FrameInflater, Step};

/// WebSocket read buffer of a relayed client, and the most one read takes
/// from its socket. With 1 KiB a relayed idle client costs the gateway about
/// 7 KiB (4 KiB gives 64 KiB messages fewer reads, at 3 KiB more per client).
/// tungstenite grows it to hold larger frames.
pub const RELAY_READ_BUFFER: usize = 1024;

/// Initial read buffer of a link during the handshake (OPEN to ACCEPT); it
/// grows only for larger records.
pub const LINK_READ_BUFFER: usize = 512;

/// The most bytes one read takes from a busy link, or from a relayed client
/// in the gateway. A buffer this size exists only while data flows: the
/// readers drop it whenever a read finds nothing and nothing is held, so an
/// idle client or link holds no read buffer (see `gateway::relay::read_ahead`
/// and `backend::session`).
pub const READ_CHUNK: usize = 16 * 1024;

/// Bytes of outgoing frames gathered before tungstenite writes them: the
/// messages fed between two flushes go out in one write (a larger message
/// is written at once). The buffer is allocated only when something is sent.
pub const WRITE_BUFFER: usize = 8 * 1024;

/// Bytes of outgoing frames that may wait for a slow client before a send
/// fails, at least: the bound beyond one whole message.
const WRITE_BUFFER_LIMIT: usize = 256 * 1024;

/// Room for frame headers on top of the largest message.
const FRAME_OVERHEAD: usize = 64 * 1024;

/// The configuration of a server-role WebSocket to a client: messages and
/// frames up to `max_message_size` (more is `1009`), messages fed between
/// two flushes gathered into one write (up to [`WRITE_BUFFER`]), and outgoing frames held for a slow client are
/// bounded by whichever is larger of 256 KiB and one whole message.
pub fn client_config(max_message_size: usize, read_buffer_size: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(read_buffer_size)
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(
            WRITE_BUFFER_LIMIT.max(max_message_size.saturating_add(FRAME_OVERHEAD)),
        )
        .max_message_size(Some(max_message_size))
        .max_frame_size(Some(max_message_size))
}

/// Bytes of frames waiting for a client at which it is no longer read (the
/// gateway's relay also stops reading its backend): what a client that does
/// not read, or pings and never reads its pongs, can make anyone hold.
pub const OUTPUT_HIGH_WATER: usize = 64 * 1024;

/// The reader of a client's socket and the bytes to parse first, given the
/// bytes read past the handshake (`pending`): with permessage-deflate
/// agreed, `pending` goes through the inflater with everything after it;
/// without, it is where parsing starts.
pub fn client_reader<S>(
    stream: S,
    pending: &[u8],
    deflate: Option<DeflateParams>,
    max_message_size: usize,
) -> (ReadAhead<S>, BytesMut) {
    match deflate {
        Some(params) => (
            ReadAhead::inflating(stream, pending, params, max_message_size),
            BytesMut::new(),
        ),
        None => (ReadAhead::new(stream), BytesMut::from(pending)),
    }
}

/// Empty buffers kept per thread for the next burst of any client.
const MAX_SPARE_BUFFERS: usize = 64;

/// The size of a small buffer: what a fanned-out client's inbox collects
/// between two drains, usually a message or a few ([`provision_small`]).
pub const SMALL_CHUNK: usize = 512;

/// Empty small buffers kept per thread: with a message fanned out to
/// thousands of clients, thousands of inboxes take one at once (at most
/// 512 KiB to 1 MiB kept per thread).
const MAX_SMALL_SPARES: usize = 1024;

thread_local! {
    /// Buffers of [`READ_CHUNK`] to twice that, given back by idle clients
    /// ([`release`]): a client that goes idle between bursts frees its
    /// buffers, and its next burst takes them back without `malloc`.
    static SPARE_BUFFERS: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
    /// Buffers of [`SMALL_CHUNK`] to twice that, for [`provision_small`].
    static SMALL_SPARES: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
}

/// Gives an output `buffer` that has no allocation one of this thread's
/// spares, if there is one (else it grows as frames are put in it).
#[inline]
pub fn provision(buffer: &mut BytesMut) {
    if buffer.capacity() == 0 {
        take_spare(buffer);
    }
}

/// [`provision`]'s slow path, kept out of line: it runs once per burst, the
/// capacity check before it once per message.
#[inline(never)]
fn take_spare(buffer: &mut BytesMut) {
    if let Some(spare) = SPARE_BUFFERS.with_borrow_mut(Vec::pop) {
        *buffer = spare;
    }
}

/// [`provision`] for an output about to take a burst that was just read:
/// a spare, or else a new buffer of the spares' size ([`READ_CHUNK`]),
/// which goes to them when emptied. Grown from nothing, a relay's output
/// would take several reallocations per burst and, smaller than a spare,
/// never be kept. (An inbox, which may hold one small message for each of
/// thousands of clients, takes a small one: [`provision_small`].)
#[inline]
pub fn provision_burst(buffer: &mut BytesMut) {
    if buffer.capacity() == 0 {
        take_spare(buffer);
        if buffer.capacity() == 0 {
            *buffer = BytesMut::with_capacity(READ_CHUNK);
        }
    }
}

/// [`provision`] for a buffer that usually takes a message or a few, for
/// each of many clients at once (a fanned-out message's inboxes): a small
/// spare of this thread, or else a new small buffer, which [`release`]
/// keeps for the next. Grown from nothing, each would be allocated and
/// reallocated for every message and freed after it.
#[inline]
pub fn provision_small(buffer: &mut BytesMut) {
    if buffer.capacity() == 0 {
        take_small_spare(buffer);
    }
}

/// [`provision_small`]'s slow path.
#[inline(never)]
fn take_small_spare(buffer: &mut BytesMut) {
    *buffer = SMALL_SPARES
        .with_borrow_mut(Vec::pop)
        .unwrap_or_else(|| BytesMut::with_capacity(SMALL_CHUNK));
}

/// Frees `buffer` if it is empty, so an idle client holds no memory: a
/// buffer of [`READ_CHUNK`] to twice that goes to this thread's spares (at
/// most [`MAX_SPARE_BUFFERS`] of them), one of [`SMALL_CHUNK`] to twice
/// that to its small spares (at most [`MAX_SMALL_SPARES`]), any other back
/// to the allocator.
pub fn release(buffer: &mut BytesMut) {
    release_all([buffer]);
}

/// [`release`] for several buffers, looking at this thread's spares once:
/// what a relay does with its four at the end of every pass.
pub fn release_all<const N: usize>(buffers: [&mut BytesMut; N]) {
    let idle = |buffer: &BytesMut| buffer.is_empty() && buffer.capacity() > 0;
    if !buffers.iter().any(|buffer| idle(buffer)) {
        return;
    }
    SPARE_BUFFERS.with_borrow_mut(|spares| {
        for buffer in buffers {
            if !idle(buffer) {
                continue;
            }
            let mut buffer = std::mem::take(buffer);
            // A buffer read from gets its whole allocation back (no copy:
            // it is empty); one cleared whole (`consume`) has it already.
            if buffer.try_reclaim(READ_CHUNK) {
                if buffer.capacity() <= 2 * READ_CHUNK && spares.len() < MAX_SPARE_BUFFERS {
                    spares.push(buffer);
                }
            } else if buffer.try_reclaim(SMALL_CHUNK) && buffer.capacity() < 2 * SMALL_CHUNK {
                keep_small(buffer);
            }
        }
    });
}

/// Keeps an empty small buffer for [`provision_small`], if there is room.
#[inline(never)]
fn keep_small(buffer: BytesMut) {
    SMALL_SPARES.with_borrow_mut(|spares| {
        if spares.len() < MAX_SMALL_SPARES {
            spares.push(buffer);
        }
    });
}

/// Takes `n` bytes from the front of `buffer`. A buffer taken whole is
/// cleared rather than advanced, so it keeps its allocation from the start
/// and goes back to the spares (or reads again) without being reclaimed
/// first: what a burst's reader and writer do once per burst.
pub fn consume(buffer: &mut BytesMut, n: usize) {
    if n >= buffer.len() {
        buffer.clear();
    } else {
        buffer.advance(n);
    }
}

/// Makes room in `buffer` for at least `need` more bytes, and a whole
/// chunk's worth whenever it reads at all (from this thread's spares when
/// it has no allocation and there is one).
pub fn reserve_for(buffer: &mut BytesMut, need: usize) {
    provision(buffer);
    let spare = buffer.capacity() - buffer.len();
    if spare < need.max(READ_CHUNK / 4) {
        buffer.reserve(need.max(READ_CHUNK));
    }
}

/// Reads `io` to its end (or its first error), dropping what comes, with
/// `buffer` as the room to read into (empty again after). For a side whose
/// bytes are of no more use that must still be read: closing a socket with
/// unread bytes in it resets the connection instead of ending it.
pub async fn read_to_end_dropping<R: AsyncRead + Unpin>(io: &mut R, buffer: &mut BytesMut) {
    while let Ok(1..) = std::future::poll_fn(|cx| {
        buffer.clear();
        reserve_for(buffer, 1);
        poll_read_buf(Pin::new(&mut *io), cx, buffer)
    })
    .await
    {}
    buffer.clear();
}

/// Writes `output` to `io` until it is empty (then flushes, for TLS) or the
/// socket is full.
pub fn poll_write_out<W: AsyncWrite + Unpin>(
    io: &mut W,
    output: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<io::Result<()>> {
    if output.is_empty() {
        return Poll::Ready(Ok(()));
    }
    while !output.is_empty() {
        let n = ready!(Pin::new(&mut *io).poll_write(cx, output))?;
        if n == 0 {
            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
        }
        consume(output, n);
    }
    Pin::new(io).poll_flush(cx)
}

/// A stream whose reads take up to [`READ_CHUNK`] bytes from the socket at
/// once and hand them out in the (smaller) pieces the reader asks for.
/// Writes pass through.
///
/// With permessage-deflate agreed ([`ReadAhead::inflating`]) it also turns
/// the client's compressed messages into plain frames before tungstenite
/// reads them (`deflate::FrameInflater`); without, that costs one branch.
#[derive(Debug)]
pub struct ReadAhead<S> {
    inner: S,
    /// Read from `inner`, not yet handed out; no capacity while idle.
    buffer: BytesMut,
    /// Only with permessage-deflate.
    inflating: Option<Box<Inflating>>,
}

/// The deflate side of a [`ReadAhead`].
#[derive(Debug)]
struct Inflating {
    frames: FrameInflater,
    /// Rewritten frames not yet handed out; no capacity while idle.
    output: BytesMut,
    /// A compressed message failed; every later read fails too.
    failed: bool,
}

impl<S> ReadAhead<S> {
    /// Reads `inner` ahead, holding nothing yet.
    pub fn new(inner: S) -> ReadAhead<S> {
        ReadAhead {
            inner,
            buffer: BytesMut::new(),
            inflating: None,
        }
    }

    /// Reads `inner` ahead, starting with `read`: bytes already taken from
    /// it, which come out before anything `inner` still holds.
    pub fn starting_with(inner: S, read: BytesMut) -> ReadAhead<S> {
        ReadAhead {
            inner,
            buffer: read,
            inflating: None,
        }
    }

    /// The stream beneath, to read past what this one can still hand out
    /// (to drop what a failed client still sends, say).
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// This reader holds nothing of its own (no inflater, nothing read
    /// ahead): a read goes to the stream beneath, which alone says whether
    /// it would find bytes.
    fn holds_nothing(&self) -> bool {
        self.inflating.is_none() && self.buffer.is_empty()
    }

    /// The stream, and what was read from it but not handed out yet. Only
    /// for a `ReadAhead` that does not inflate (whose buffer holds raw bytes).
    pub fn into_parts(self) -> (S, BytesMut) {
        debug_assert!(self.inflating.is_none(), "an inflating ReadAhead");
        (self.inner, self.buffer)
    }

    /// Reads `inner` ahead, starting with `pending` (bytes already read past
    /// the handshake), and inflates the client's compressed messages as
    /// `params` say, failing a read with a `deflate::DeflateError` once a
    /// message inflates past `max_message_size` or is not valid deflate.
    pub fn inflating(
        inner: S,
        pending: &[u8],
        params: DeflateParams,
        max_message_size: usize,
    ) -> ReadAhead<S> {
        ReadAhead {
            inner,
            buffer: BytesMut::from(pending),
            inflating: Some(Box::new(Inflating {
                frames: FrameInflater::new(params, max_message_size),
                output: BytesMut::new(),
                failed: false,
            })),
        }
    }
}

impl<S: AsyncRead + Unpin> ReadAhead<S> {
    /// Reads into the end of `buffer` (which the caller sized, see
    /// [`reserve_for`]): straight from the socket when nothing is inflated and
    /// nothing is held here, so the bytes are copied once and no buffer of
    /// this reader's own is allocated; through [`AsyncRead::poll_read`]
    /// otherwise.
    pub fn poll_read_into(
        &mut self,
        cx: &mut Context<'_>,
        buffer: &mut BytesMut,
    ) -> Poll<io::Result<usize>> {
        if self.holds_nothing() {
            return poll_read_buf(Pin::new(&mut self.inner), cx, buffer);
        }
        poll_read_buf(Pin::new(self), cx, buffer)
    }

    /// The next read of a burst into `buffer`, room for `need` more bytes
    /// made first ([`reserve_for`]): unless `buffer` is empty and the
    /// stream surely has nothing (`read_ready`, the stream's readiness:
    /// pending with the waker registered, as a read's would be), when it is
    /// pending without taking a buffer, so a wake-up meant for something
    /// else costs none. What the framed relay and a direct session read with.
    #[inline]
    pub fn poll_read_burst(
        &mut self,
        cx: &mut Context<'_>,
        buffer: &mut BytesMut,
        need: usize,
        read_ready: impl FnOnce(&S, &mut Context<'_>) -> Poll<io::Result<()>>,
    ) -> Poll<io::Result<usize>> {
        if buffer.is_empty() && self.holds_nothing() && read_ready(&self.inner, cx).is_pending() {
            return Poll::Pending;
        }
        reserve_for(buffer, need);
        self.poll_read_into(cx, buffer)
    }

    /// `poll_read` with permessage-deflate: rewritten frames come from
    /// `inflating.output`, refilled from `buffer`, refilled from the socket.
    fn poll_read_inflating(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let Some(inflating) = self.inflating.as_deref_mut() else {
            return Poll::Ready(Ok(()));
        };
        loop {
            if inflating.failed {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "compressed message refused",
                )));
            }
            if !inflating.output.is_empty() {
                let n = out.remaining().min(inflating.output.len());
                out.put_slice(&inflating.output[..n]);
                inflating.output.advance(n);
                return Poll::Ready(Ok(()));
            }
            match inflating
                .frames
                .step(&mut self.buffer, &mut inflating.output)
            {
                Ok(Step::Progress) => continue,
                Ok(Step::NeedInput) => {}
                Err(error) => {
                    inflating.failed = true;
                    return Poll::Ready(Err(error));
                }
            }
            if self.buffer.capacity() - self.buffer.len() < READ_CHUNK / 4 {
                self.buffer.reserve(READ_CHUNK);
            }
            match poll_read_buf(Pin::new(&mut self.inner), cx, &mut self.buffer) {
                Poll::Pending => {
                    if self.buffer.is_empty() {
                        // Nothing held: an idle client holds no buffers.
                        self.buffer = BytesMut::new();
                        inflating.output = BytesMut::new();
                    }
                    return Poll::Pending;
                }
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                // The end of the stream: `out` stays empty.
                Poll::Ready(Ok(0)) => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(_)) => {}
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ReadAhead<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.inflating.is_some() {
            return this.poll_read_inflating(cx, out);
        }
        if this.buffer.is_empty() {
            if out.remaining() >= READ_CHUNK {
                // As large a read as ours: no need to go through the buffer.
                return Pin::new(&mut this.inner).poll_read(cx, out);
            }
            this.buffer.reserve(READ_CHUNK);
            match poll_read_buf(Pin::new(&mut this.inner), cx, &mut this.buffer) {
                Poll::Pending => {
                    // Nothing to read: an idle connection holds no buffer.
                    this.buffer = BytesMut::new();
                    return Poll::Pending;
                }
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                // The end of the stream: `out` stays empty.
                Poll::Ready(Ok(0)) => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(_)) => {}
            }
        }
        let n = out.remaining().min(this.buffer.len());
        out.put_slice(&this.buffer[..n]);
        this.buffer.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ReadAhead<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bytes: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, bytes)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_clients_buffers_go_to_the_next_burst_without_a_new_allocation() {
        let mut read = BytesMut::new();
        reserve_for(&mut read, 1);
        assert!(read.capacity() >= READ_CHUNK);
        read.extend_from_slice(&[7; 100]);
        read.advance(100);
        let allocation = read.as_ptr() as usize - 100;
        release(&mut read);
        assert_eq!(read.capacity(), 0, "an idle client holds nothing");

        let mut output = BytesMut::new();
        provision(&mut output);
        assert_eq!(output.as_ptr() as usize, allocation, "the spare is reused");
        assert!(output.capacity() >= READ_CHUNK);

        // Small or oversized buffers are not kept; full ones are not released.
        let mut small = BytesMut::with_capacity(64);
        release(&mut small);
        let mut full = BytesMut::from(&b"x"[..]);
        release(&mut full);
        assert_eq!(full.len(), 1);
        let mut next = BytesMut::new();
        provision(&mut next);
        assert_eq!(next.capacity(), 0, "no spare was left");
        // An output taking a burst gets a buffer the spares will keep.
        provision_burst(&mut next);
        assert_eq!(next.capacity(), READ_CHUNK);
        release(&mut next);
        let mut again = BytesMut::new();
        provision(&mut again);
        assert_eq!(again.capacity(), READ_CHUNK, "the burst's buffer was kept");
    }

    #[test]
    fn small_buffers_go_round_without_a_new_allocation() {
        let mut inbox = BytesMut::new();
        provision_small(&mut inbox);
        assert!(inbox.capacity() >= SMALL_CHUNK);
        let allocation = inbox.as_ptr() as usize;
        inbox.extend_from_slice(&[1; 10]);
        // Taken whole by a relay, written, emptied and released.
        let mut output = std::mem::take(&mut inbox);
        consume(&mut output, 10);
        release(&mut output);
        assert_eq!(output.capacity(), 0, "an idle client holds nothing");
        let mut next = BytesMut::new();
        provision_small(&mut next);
        assert_eq!(
            next.as_ptr() as usize,
            allocation,
            "the small spare is reused"
        );
        // A small buffer is not a burst's: `provision` does not take it.
        release(&mut next);
        let mut burst = BytesMut::new();
        provision(&mut burst);
        assert_ne!(burst.as_ptr() as usize, allocation);
        // A grown one (over twice the size) is not kept.
        let mut grown = BytesMut::with_capacity(4 * SMALL_CHUNK);
        release(&mut grown);
        let mut again = BytesMut::new();
        provision_small(&mut again);
        assert!(again.capacity() < 2 * SMALL_CHUNK);
    }
}
