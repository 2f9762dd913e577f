//! Moving a client's TCP socket across the link (direct mode) with
//! SCM_RIGHTS ancillary data, through nix.
//!
//! The HANDOFF record is an ordinary record (kind 0x04, payload: the bytes the
//! gateway read past the handshake) whose first byte carries the descriptor.
//! Its header is the codec's ([`crate::record::encode_header`]). This is the
//! only module of the crate with `unsafe`: taking ownership of a descriptor the
//! kernel just installed. What the backend does with the socket afterwards is
//! the backend library's business.
#![allow(unsafe_code)]

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use bytes::Bytes;
use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::UnixStream;
use tracing::warn;

use crate::LinkError;
use crate::record::{HEADER_LEN, RecordKind, decode_header, encode_header};

/// How many descriptors one receive makes room for; a HANDOFF carries one,
/// the room for more lets us see, and close, any extra a peer sends.
const MAX_FDS: usize = 4;

/// Sends the HANDOFF record on `link`: `client` as SCM_RIGHTS on its first
/// byte, `pending` as its payload. The caller closes its own copy afterwards.
pub async fn send_handoff(
    link: &mut UnixStream,
    client: BorrowedFd<'_>,
    pending: &[u8],
) -> Result<(), LinkError> {
    let len = u32::try_from(pending.len()).map_err(|_| LinkError::TooLong {
        len: pending.len() as u64,
        max: u32::MAX as usize,
    })?;
    let header = encode_header(RecordKind::Handoff, len);
    let fds = [client.as_raw_fd()];
    let raw_link = link.as_raw_fd();
    let sent = link
        .async_io(Interest::WRITABLE, || {
            let iov = [IoSlice::new(&header), IoSlice::new(pending)];
            let cmsg = [ControlMessage::ScmRights(&fds)];
            sendmsg::<()>(raw_link, &iov, &cmsg, MsgFlags::MSG_NOSIGNAL, None)
                .map_err(io::Error::from)
        })
        .await?;
    // The descriptor went with the first byte; the rest is plain data.
    let rest: Vec<u8> = header.iter().chain(pending).skip(sent).copied().collect();
    link.write_all(&rest).await?;
    link.flush().await?;
    Ok(())
}

/// Receives the HANDOFF record from `link`: the client socket (close-on-exec)
/// and the bytes the gateway had read past the handshake. Extra descriptors are closed.
pub async fn recv_handoff(
    link: &mut UnixStream,
    max_pending: usize,
) -> Result<(OwnedFd, Bytes), LinkError> {
    let mut header = [0u8; HEADER_LEN];
    let raw_link = link.as_raw_fd();
    let (n_read, raw_fds, truncated) = link
        .async_io(Interest::READABLE, || {
            let mut iov = [IoSliceMut::new(&mut header)];
            let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
            let message = recvmsg::<()>(
                raw_link,
                &mut iov,
                Some(&mut space),
                MsgFlags::MSG_CMSG_CLOEXEC,
            )
            .map_err(io::Error::from)?;
            let mut raw_fds = Vec::new();
            for cmsg in message.cmsgs().map_err(io::Error::from)? {
                if let ControlMessageOwned::ScmRights(fds) = cmsg {
                    raw_fds.extend(fds);
                }
            }
            let truncated = message.flags.contains(MsgFlags::MSG_CTRUNC);
            Ok((message.bytes, raw_fds, truncated))
        })
        .await?;
    let mut fds = raw_fds.into_iter().map(|raw| {
        // SAFETY: recvmsg's SCM_RIGHTS just installed `raw` in this process's
        // descriptor table; nothing else refers to it, so we are its only owner.
        unsafe { OwnedFd::from_raw_fd(raw) }
    });
    let client = fds.next();
    let n_extra = fds.count(); // Dropping them closes them.
    if n_extra > 0 {
        warn!(n_extra, "closed unexpected extra descriptors on the link");
    }
    if n_read == 0 {
        return Err(LinkError::Io(io::ErrorKind::UnexpectedEof.into()));
    }
    if truncated {
        return Err(LinkError::DescriptorsTruncated);
    }
    link.read_exact(&mut header[n_read..])
        .await
        .map_err(|_| LinkError::Truncated)?;
    let (kind, len) = decode_header(header, max_pending)?;
    if kind != RecordKind::Handoff {
        return Err(LinkError::Unexpected("non-HANDOFF"));
    }
    let Some(client) = client else {
        return Err(LinkError::NoDescriptor);
    };
    let mut pending = vec![0u8; len];
    link.read_exact(&mut pending)
        .await
        .map_err(|_| LinkError::Truncated)?;
    Ok((client, Bytes::from(pending)))
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::*;

    #[tokio::test]
    async fn handoff_carries_the_socket_and_pending_bytes() {
        let (mut gateway_side, mut backend_side) = UnixStream::pair().expect("pair");
        let (mut client_ours, client_theirs) = UnixStream::pair().expect("pair");
        let client_theirs = client_theirs.into_std().expect("std");
        send_handoff(&mut gateway_side, client_theirs.as_fd(), b"pipelined frame")
            .await
            .expect("sent");
        drop(client_theirs);
        let (received, pending) = recv_handoff(&mut backend_side, 1024)
            .await
            .expect("received");
        assert_eq!(&pending[..], b"pipelined frame");
        let flags = nix::fcntl::fcntl(&received, nix::fcntl::FcntlArg::F_GETFD).expect("fcntl");
        assert!(
            flags & nix::libc::FD_CLOEXEC != 0,
            "received descriptor is close-on-exec"
        );
        let received = std::os::unix::net::UnixStream::from(received);
        received.set_nonblocking(true).expect("nonblocking");
        let mut received = UnixStream::from_std(received).expect("tokio");
        received.write_all(b"hello").await.expect("write");
        let mut buf = [0u8; 5];
        client_ours.read_exact(&mut buf).await.expect("read");
        assert_eq!(&buf, b"hello");
    }

    #[tokio::test]
    async fn handoff_without_descriptor_is_an_error() {
        let (mut gateway_side, mut backend_side) = UnixStream::pair().expect("pair");
        gateway_side
            .write_all(b"\x04\0\0\0\0")
            .await
            .expect("write");
        let result = recv_handoff(&mut backend_side, 1024).await;
        assert!(matches!(result, Err(LinkError::NoDescriptor)), "{result:?}");
    }

    #[tokio::test]
    async fn oversize_pending_bytes_are_refused() {
        let (mut gateway_side, mut backend_side) = UnixStream::pair().expect("pair");
        let (_client_ours, client_theirs) = UnixStream::pair().expect("pair");
        send_handoff(&mut gateway_side, client_theirs.as_fd(), &[7u8; 100])
            .await
            .expect("sent");
        let result = recv_handoff(&mut backend_side, 10).await;
        assert!(
            matches!(result, Err(LinkError::TooLong { len: 100, max: 10 })),
            "{result:?}"
        );
    }
}
