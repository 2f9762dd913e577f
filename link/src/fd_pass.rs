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
use tracing::warn;

use crate::record::{HEADER_LEN, RecordKind, decode_header, encode_header};
use crate::{LinkError, LinkStream};

/// How many descriptors one receive makes room for: the kernel's `SCM_MAX_FD`,
/// the most one SCM_RIGHTS message can carry, and one stream `recvmsg` never
/// returns more than one such message. A HANDOFF carries one descriptor; room
/// for every one a peer can send means the kernel never truncates them
/// (`MSG_CTRUNC`), so each one that arrives is owned here and the extras closed.
const MAX_FDS: usize = 253;

/// Sends the HANDOFF record on `link`: `client` as SCM_RIGHTS on its first
/// byte, `pending` as its payload. The caller closes its own copy afterwards.
pub async fn send_handoff(
    link: &mut LinkStream,
    client: BorrowedFd<'_>,
    pending: &[u8],
) -> Result<(), LinkError> {
    send_with_descriptor(link, client, RecordKind::Handoff, pending).await
}

/// Sends the OPEN_HANDOFF record on `link`: `client` as SCM_RIGHTS on its
/// first byte; the payload is `open` (the client's OPEN JSON) after its u32
/// big-endian length, then `pending`, the bytes read past the handshake (the
/// layout of REQUEST, [`crate::meta::split_head`]). Only on a link whose
/// backend offered it (ACCEPT's `open_handoff`). The caller closes its copy.
pub async fn send_open_handoff(
    link: &mut LinkStream,
    client: BorrowedFd<'_>,
    open: &[u8],
    pending: &[u8],
) -> Result<(), LinkError> {
    let payload = crate::meta::join_head(open, pending);
    send_with_descriptor(link, client, RecordKind::OpenHandoff, &payload).await
}

/// Sends one record of `kind` with `payload`, and `client` as SCM_RIGHTS on
/// its first byte.
async fn send_with_descriptor(
    link: &mut LinkStream,
    client: BorrowedFd<'_>,
    kind: RecordKind,
    payload: &[u8],
) -> Result<(), LinkError> {
    let len = u32::try_from(payload.len()).map_err(|_| LinkError::TooLong {
        len: payload.len() as u64,
        max: u32::MAX as usize,
    })?;
    let header = encode_header(kind, len);
    let fds = [client.as_raw_fd()];
    let raw_link = link.as_raw_fd();
    let sent = link
        .async_io(Interest::WRITABLE, || {
            let iov = [IoSlice::new(&header), IoSlice::new(payload)];
            let cmsg = [ControlMessage::ScmRights(&fds)];
            sendmsg::<()>(raw_link, &iov, &cmsg, MsgFlags::MSG_NOSIGNAL, None)
                .map_err(io::Error::from)
        })
        .await?;
    // The descriptor went with the first byte; the rest is plain data.
    let rest: Vec<u8> = header.iter().chain(payload).skip(sent).copied().collect();
    link.write_all(&rest).await?;
    link.flush().await?;
    Ok(())
}

/// Receives the HANDOFF record from `link`: the client socket (close-on-exec)
/// and the bytes the gateway had read past the handshake. Extra descriptors are closed.
pub async fn recv_handoff(
    link: &mut LinkStream,
    max_pending: usize,
) -> Result<(OwnedFd, Bytes), LinkError> {
    let head = recv_head(link, max_pending).await?;
    if head.kind != RecordKind::Handoff {
        return Err(LinkError::Unexpected("non-HANDOFF"));
    }
    let Some(client) = head.descriptor else {
        return Err(LinkError::NoDescriptor);
    };
    let mut pending = vec![0u8; head.len];
    link.read_exact(&mut pending)
        .await
        .map_err(|_| LinkError::Truncated)?;
    Ok((client, Bytes::from(pending)))
}

/// The header of the next record on a link, read so that a descriptor
/// that came with its first byte is kept: see [`recv_head`].
#[derive(Debug)]
pub struct RecordHead {
    /// The record's kind.
    pub kind: RecordKind,
    /// Its payload length, within the limit given to [`recv_head`].
    pub len: usize,
    /// The header's bytes as they came.
    pub header: [u8; HEADER_LEN],
    /// The descriptor that came with the record's first byte (close-on-exec);
    /// extra ones are closed.
    pub descriptor: Option<OwnedFd>,
}

/// Reads the next record's header from `link` with `recvmsg`, keeping a
/// descriptor sent with it (HANDOFF, OPEN_HANDOFF), where a plain read would
/// have dropped it; the payload is left on the link. A payload longer than
/// `max_len` is an error, as in the codec.
pub async fn recv_head(link: &mut LinkStream, max_len: usize) -> Result<RecordHead, LinkError> {
    let mut header = [0u8; HEADER_LEN];
    let raw_link = link.as_raw_fd();
    let (n_read, raw_fds, truncated) = link
        .async_io(Interest::READABLE, || {
            let mut iov = [IoSliceMut::new(&mut header)];
            // Room for credentials too, though this socket never asks for them.
            let mut space = nix::cmsg_space!([RawFd; MAX_FDS], nix::libc::ucred);
            let message = recvmsg::<()>(
                raw_link,
                &mut iov,
                Some(&mut space),
                MsgFlags::MSG_CMSG_CLOEXEC,
            )
            .map_err(io::Error::from)?;
            let truncated = message.flags.contains(MsgFlags::MSG_CTRUNC);
            // nix refuses to parse a truncated control buffer (ENOBUFS); with
            // the room above that cannot happen for SCM_RIGHTS, and if it ever
            // did, the descriptors that did arrive would be unreachable, so it
            // is reported as a truncation, not as an I/O error.
            let mut raw_fds = Vec::new();
            if let Ok(cmsgs) = message.cmsgs() {
                for cmsg in cmsgs {
                    if let ControlMessageOwned::ScmRights(fds) = cmsg {
                        raw_fds.extend(fds);
                    }
                }
            }
            Ok((message.bytes, raw_fds, truncated))
        })
        .await?;
    let mut fds = raw_fds.into_iter().map(|raw| {
        // SAFETY: recvmsg's SCM_RIGHTS just installed `raw` in this process's
        // descriptor table; nothing else refers to it, so we are its only owner.
        unsafe { OwnedFd::from_raw_fd(raw) }
    });
    let descriptor = fds.next();
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
    let (kind, len) = decode_header(header, max_len)?;
    Ok(RecordHead {
        kind,
        len,
        header,
        descriptor,
    })
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use tokio::net::UnixStream;

    use super::*;

    #[tokio::test]
    async fn handoff_carries_the_socket_and_pending_bytes() {
        let (mut gateway_side, mut backend_side) = LinkStream::pair().expect("pair");
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
    async fn open_handoff_carries_the_socket_the_open_and_pending_bytes() {
        let (mut gateway_side, mut backend_side) = LinkStream::pair().expect("pair");
        let (mut client_ours, client_theirs) = UnixStream::pair().expect("pair");
        let client_theirs = client_theirs.into_std().expect("std");
        let open = br#"{"version":1,"mode":"direct","id":9}"#;
        send_open_handoff(&mut gateway_side, client_theirs.as_fd(), open, b"frame")
            .await
            .expect("sent");
        drop(client_theirs);
        let head = recv_head(&mut backend_side, 1024).await.expect("head");
        assert_eq!(head.kind, RecordKind::OpenHandoff);
        assert_eq!(head.len, 4 + open.len() + 5);
        let mut payload = vec![0u8; head.len];
        backend_side
            .read_exact(&mut payload)
            .await
            .expect("payload");
        let (open_got, pending) =
            crate::meta::split_head("OPEN_HANDOFF", Bytes::from(payload)).expect("split");
        assert_eq!((&open_got[..], &pending[..]), (&open[..], &b"frame"[..]));
        let received = std::os::unix::net::UnixStream::from(head.descriptor.expect("socket"));
        received.set_nonblocking(true).expect("nonblocking");
        let mut received = UnixStream::from_std(received).expect("tokio");
        received.write_all(b"hi").await.expect("write");
        let mut buf = [0u8; 2];
        client_ours.read_exact(&mut buf).await.expect("read");
        assert_eq!(&buf, b"hi");
    }

    #[test]
    fn the_codec_refuses_an_open_handoff_whose_descriptor_it_cannot_keep() {
        use tokio_util::codec::Decoder;
        let mut codec = crate::RecordCodec::default();
        let mut bytes = bytes::BytesMut::from(&encode_header(RecordKind::OpenHandoff, 3)[..]);
        assert!(matches!(
            codec.decode(&mut bytes),
            Err(LinkError::Unexpected(_))
        ));
    }

    /// How many of this process's descriptors refer to `path`.
    fn n_fds_open_on(path: &std::path::Path) -> usize {
        std::fs::read_dir("/proc/self/fd")
            .expect("/proc/self/fd")
            .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
            .filter(|target| target == path)
            .count()
    }

    #[tokio::test]
    async fn every_extra_descriptor_is_closed() {
        // Ten descriptors of one file that nothing else in this process opens,
        // so other tests running at the same time do not disturb the count.
        let marker = tempfile::NamedTempFile::new()
            .expect("tempfile")
            .into_temp_path();
        let marker_path = marker.canonicalize().expect("canonical path");
        let files: Vec<std::fs::File> = (0..10)
            .map(|_| std::fs::File::open(&marker_path).expect("open"))
            .collect();
        let raw_fds: Vec<RawFd> = files.iter().map(AsRawFd::as_raw_fd).collect();
        let (mut gateway_side, mut backend_side) = LinkStream::pair().expect("pair");
        let header = encode_header(RecordKind::Handoff, 0);
        let iov = [IoSlice::new(&header)];
        let cmsg = [ControlMessage::ScmRights(&raw_fds)];
        sendmsg::<()>(
            gateway_side.as_raw_fd(),
            &iov,
            &cmsg,
            MsgFlags::empty(),
            None,
        )
        .expect("sendmsg");
        drop(files);
        assert_eq!(n_fds_open_on(&marker_path), 0, "only the link holds them");
        let received = recv_handoff(&mut backend_side, 1024).await;
        let n_held = n_fds_open_on(&marker_path);
        let outcome = format!("{received:?}");
        let pending_is_empty = matches!(&received, Ok((_, pending)) if pending.is_empty());
        drop(received);
        assert_eq!(
            n_fds_open_on(&marker_path),
            0,
            "every received descriptor is closed with the result: {outcome}"
        );
        assert!(
            pending_is_empty,
            "the first descriptor is the client: {outcome}"
        );
        assert_eq!(n_held, 1, "only the client is kept");
        gateway_side.shutdown().await.expect("shutdown");
    }

    #[tokio::test]
    async fn handoff_without_descriptor_is_an_error() {
        let (mut gateway_side, mut backend_side) = LinkStream::pair().expect("pair");
        gateway_side
            .write_all(b"\x04\0\0\0\0")
            .await
            .expect("write");
        let result = recv_handoff(&mut backend_side, 1024).await;
        assert!(matches!(result, Err(LinkError::NoDescriptor)), "{result:?}");
    }

    #[tokio::test]
    async fn oversize_pending_bytes_are_refused() {
        let (mut gateway_side, mut backend_side) = LinkStream::pair().expect("pair");
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
