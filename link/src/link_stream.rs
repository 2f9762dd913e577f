//! [`LinkStream`]: a link's UNIX stream socket, watched for readability only.
//!
//! Why not `tokio::net::UnixStream`: tokio registers every stream for both
//! readability and writability (edge-triggered). On a UNIX stream socket the
//! kernel signals write space to the *sender* each time the receiver consumes
//! what it sent (`unix_write_space`, with no "was it ever full" check as TCP
//! has), so every record the peer reads wakes this process's epoll with an
//! `EPOLLOUT` nobody waits for: a context switch on each side of the link
//! for each exchange, the largest single cost of a relayed handshake
//! (BENCHMARKS.md). A `LinkStream` asks epoll for readability only, writes
//! straight away, and only when a write finds the socket full does it watch
//! writability, through a second registration of a duplicate descriptor
//! that is dropped again once a write went through. Reading and writing
//! wait on separate registrations, so `tokio::io::split` gives halves that
//! work at the same time (the raw relay and a backend's carrier link).
#![allow(unsafe_code)]

use std::io::{self, IoSlice, Write};
use std::net::Shutdown;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener as StdUnixListener, UnixStream as StdUnixStream};
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use nix::sys::socket::{SockFlag, accept4};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};

/// Registers `fd` with the current runtime for `interest` only.
fn register<T: AsRawFd>(fd: T, interest: Interest) -> io::Result<AsyncFd<T>> {
    // SAFETY: `T` (a std stream or an `OwnedFd`) owns its descriptor, which
    // stays open and the same for as long as the `AsyncFd` holds it.
    unsafe { AsyncFd::register_with_interest(fd, interest) }.map_err(|error| error.into_parts().1)
}

/// A connected UNIX stream socket registered with the runtime for
/// readability only; see the module docs.
#[derive(Debug)]
pub struct LinkStream {
    io: AsyncFd<StdUnixStream>,
    /// A duplicate of the descriptor registered for writability, while a
    /// write waits for room.
    room: Option<AsyncFd<OwnedFd>>,
}

impl LinkStream {
    /// Ready when a read may find bytes (or the end); pending, with the
    /// task's waker registered, when it would find none: a reader that
    /// needs a buffer to read asks this first and takes none for nothing.
    pub fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.io.poll_read_ready(cx).map_ok(|_| ())
    }

    /// Takes a connected socket, set non-blocking here. Must be called
    /// within a tokio runtime.
    pub fn from_std(stream: StdUnixStream) -> io::Result<LinkStream> {
        stream.set_nonblocking(true)?;
        LinkStream::registered(stream)
    }

    /// Registers `stream`, already non-blocking, for readability.
    fn registered(stream: StdUnixStream) -> io::Result<LinkStream> {
        Ok(LinkStream {
            io: register(stream, Interest::READABLE)?,
            room: None,
        })
    }

    /// A connected pair (tests, and in-process links).
    pub fn pair() -> io::Result<(LinkStream, LinkStream)> {
        let (one, other) = StdUnixStream::pair()?;
        Ok((LinkStream::from_std(one)?, LinkStream::from_std(other)?))
    }

    /// Connects to the socket at `path`. A UNIX connect completes or fails
    /// at once on Linux (a full backlog is `EAGAIN`); one still in progress
    /// is waited for.
    pub async fn connect(path: &Path) -> io::Result<LinkStream> {
        let socket = socket2::Socket::new(
            socket2::Domain::UNIX,
            socket2::Type::STREAM.nonblocking(),
            None,
        )?;
        let in_progress = match socket.connect(&socket2::SockAddr::unix(path)?) {
            Ok(()) => false,
            Err(error) if error.raw_os_error() == Some(nix::libc::EINPROGRESS) => true,
            Err(error) => return Err(error),
        };
        let mut stream = LinkStream::from_std(StdUnixStream::from(OwnedFd::from(socket)))?;
        if in_progress {
            stream.writable().await?;
            if let Some(error) = stream.io.get_ref().take_error()? {
                return Err(error);
            }
        }
        Ok(stream)
    }

    /// Runs `io` (a non-blocking operation on the socket) until it does not
    /// end in `WouldBlock`, waiting for readability or room as `interest` says.
    pub async fn async_io<R>(
        &mut self,
        interest: Interest,
        mut io: impl FnMut() -> io::Result<R>,
    ) -> io::Result<R> {
        if interest.is_readable() {
            return self.io.async_io(Interest::READABLE, |_| io()).await;
        }
        std::future::poll_fn(|cx| self.poll_write_with(cx, |_| io())).await
    }

    /// Waits until the socket has room for a write (a connect in progress).
    async fn writable(&mut self) -> io::Result<()> {
        let room = self.room_watch()?;
        let mut guard = room.writable().await?;
        // Consumed: the next wait asks epoll again.
        guard.clear_ready();
        Ok(())
    }

    /// The writability registration, made on first need.
    fn room_watch(&mut self) -> io::Result<&AsyncFd<OwnedFd>> {
        if self.room.is_none() {
            let duplicate = self.io.get_ref().as_fd().try_clone_to_owned()?;
            self.room = Some(register(duplicate, Interest::WRITABLE)?);
        }
        Ok(self.room.as_ref().expect("just made"))
    }

    /// Writes with `write` now, or once there is room: after a write that
    /// found the socket full, the next one waits for writability.
    fn poll_write_with<R>(
        &mut self,
        cx: &mut Context<'_>,
        mut write: impl FnMut(&StdUnixStream) -> io::Result<R>,
    ) -> Poll<io::Result<R>> {
        loop {
            if let Some(room) = &self.room {
                let mut guard = ready!(room.poll_write_ready(cx))?;
                match write(self.io.get_ref()) {
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                        guard.clear_ready();
                        continue;
                    }
                    done => {
                        drop(guard);
                        // Room again: back to watching readability only.
                        self.room = None;
                        return Poll::Ready(done);
                    }
                }
            }
            match write(self.io.get_ref()) {
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    self.room_watch()?;
                }
                done => return Poll::Ready(done),
            }
        }
    }
}

impl AsRawFd for LinkStream {
    fn as_raw_fd(&self) -> RawFd {
        self.io.as_raw_fd()
    }
}

impl AsFd for LinkStream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.io.get_ref().as_fd()
    }
}

impl AsyncRead for LinkStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            let mut guard = ready!(this.io.poll_read_ready(cx))?;
            let fd = this.io.as_raw_fd();
            // SAFETY: `recv` writes at most `len` bytes to the unfilled,
            // possibly uninitialised part of `buf`, which is valid for `len`
            // bytes and not otherwise used during the call; nothing reads
            // those bytes before the kernel wrote them.
            let (n, len) = unsafe {
                let unfilled = buf.unfilled_mut();
                let len = unfilled.len();
                let n = nix::libc::recv(fd, unfilled.as_mut_ptr().cast(), len, 0);
                (n, len)
            };
            if n < 0 {
                let error = io::Error::last_os_error();
                if error.kind() == io::ErrorKind::WouldBlock {
                    guard.clear_ready();
                    continue;
                }
                return Poll::Ready(Err(error));
            }
            let n = usize::try_from(n).expect("recv returned a non-negative count");
            // A short read emptied the socket (edge-triggered epoll reports
            // the next arrival): the next poll waits without a system call,
            // as tokio's own streams do.
            if 0 < n && n < len {
                guard.clear_ready();
            }
            // SAFETY: the kernel initialised the first `n` bytes of the
            // unfilled part above.
            unsafe { buf.assume_init(n) };
            buf.advance(n);
            return Poll::Ready(Ok(()));
        }
    }
}

impl AsyncWrite for LinkStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut()
            .poll_write_with(cx, |mut stream| stream.write(buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut()
            .poll_write_with(cx, |mut stream| stream.write_vectored(bufs))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.io.get_ref().shutdown(Shutdown::Write))
    }
}

/// A listening UNIX stream socket whose accepted links are [`LinkStream`]s.
#[derive(Debug)]
pub struct LinkListener {
    io: AsyncFd<StdUnixListener>,
}

impl LinkListener {
    /// Takes a bound, listening socket, set non-blocking here. Must be
    /// called within a tokio runtime.
    pub fn from_std(listener: StdUnixListener) -> io::Result<LinkListener> {
        listener.set_nonblocking(true)?;
        Ok(LinkListener {
            io: register(listener, Interest::READABLE)?,
        })
    }

    /// Waits for the next connection, accepted non-blocking and
    /// close-on-exec in one system call.
    pub async fn accept(&self) -> io::Result<LinkStream> {
        let fd = self
            .io
            .async_io(Interest::READABLE, |listener| {
                accept4(
                    listener.as_raw_fd(),
                    SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
                )
                .map_err(io::Error::from)
            })
            .await?;
        // SAFETY: `accept4` just returned `fd`, a new descriptor that
        // nothing else owns.
        let stream = StdUnixStream::from(unsafe { OwnedFd::from_raw_fd(fd) });
        LinkStream::registered(stream)
    }
}

impl AsRawFd for LinkListener {
    fn as_raw_fd(&self) -> RawFd {
        self.io.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn bytes_go_both_ways_and_eof_is_seen() {
        let (mut one, mut other) = LinkStream::pair().expect("pair");
        one.write_all(b"ping").await.expect("write");
        let mut buf = [0u8; 4];
        other.read_exact(&mut buf).await.expect("read");
        assert_eq!(&buf, b"ping");
        other.write_all(b"pong").await.expect("write");
        one.read_exact(&mut buf).await.expect("read");
        assert_eq!(&buf, b"pong");
        one.shutdown().await.expect("shutdown");
        assert_eq!(
            other.read(&mut buf).await.expect("read"),
            0,
            "end of stream"
        );
    }

    #[tokio::test]
    async fn a_read_that_emptied_the_socket_still_wakes_for_later_data() {
        let (mut one, mut other) = LinkStream::pair().expect("pair");
        let mut buf = [0u8; 64];
        one.write_all(b"ab").await.expect("write");
        assert_eq!(other.read(&mut buf).await.expect("read"), 2);
        // The reader waits (the short read cleared readiness) and is woken
        // by the next arrival, written from another task.
        let writer = tokio::spawn(async move {
            one.write_all(b"cd").await.expect("write");
            one
        });
        assert_eq!(other.read(&mut buf).await.expect("read"), 2);
        assert_eq!(&buf[..2], b"cd");
        writer.await.expect("writer");
    }

    #[tokio::test]
    async fn a_full_socket_makes_the_writer_wait_until_the_peer_reads() {
        let (mut writer, mut reader) = LinkStream::pair().expect("pair");
        // Fill the socket: a write that cannot go through at once is pending.
        let chunk = vec![7u8; 64 * 1024];
        let mut written = 0usize;
        while let Ok(result) = tokio::time::timeout(Duration::ZERO, writer.write(&chunk)).await {
            written += result.expect("write");
        }
        assert!(written > 0);
        assert!(
            writer.room.is_some(),
            "waiting for room registers writability"
        );
        // A pending write of the rest completes once the reader drains.
        let total = written + chunk.len();
        let drain = tokio::spawn(async move {
            let mut seen = 0usize;
            let mut buf = vec![0u8; 16 * 1024];
            while seen < total {
                let n = reader.read(&mut buf).await.expect("read");
                assert!(n > 0, "data until all was read");
                assert!(buf[..n].iter().all(|&byte| byte == 7));
                seen += n;
            }
            seen
        });
        writer.write_all(&chunk).await.expect("write after room");
        assert!(writer.room.is_none(), "room again: readability only");
        assert_eq!(drain.await.expect("drain"), total);
    }

    #[tokio::test]
    async fn split_halves_read_and_write_at_the_same_time() {
        let (one, mut other) = LinkStream::pair().expect("pair");
        let (mut reader, mut writer) = tokio::io::split(one);
        // The reader waits while the writer fills the socket and waits too;
        // the peer then answers and drains, and both halves complete.
        let chunk = vec![1u8; 256 * 1024];
        let read = async {
            let mut buf = [0u8; 5];
            reader.read_exact(&mut buf).await.expect("read");
            buf
        };
        let write = async {
            writer.write_all(&chunk).await.expect("write");
        };
        let peer = async {
            other.write_all(b"hello").await.expect("answer");
            let mut drained = vec![0u8; chunk.len()];
            other.read_exact(&mut drained).await.expect("drain");
            assert!(drained.iter().all(|&byte| byte == 1));
        };
        let (buf, (), ()) = tokio::join!(read, write, peer);
        assert_eq!(&buf, b"hello");
    }

    #[tokio::test]
    async fn accepted_links_connect_and_a_missing_socket_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("link");
        let listener =
            LinkListener::from_std(StdUnixListener::bind(&path).expect("bind")).expect("listener");
        let (accepted, connected) = tokio::join!(listener.accept(), LinkStream::connect(&path));
        let (mut accepted, mut connected) =
            (accepted.expect("accept"), connected.expect("connect"));
        connected.write_all(b"open").await.expect("write");
        let mut buf = [0u8; 4];
        accepted.read_exact(&mut buf).await.expect("read");
        assert_eq!(&buf, b"open");
        let error = LinkStream::connect(&dir.path().join("missing"))
            .await
            .expect_err("no socket there");
        assert_eq!(error.kind(), io::ErrorKind::NotFound);
    }
}
