#!/usr/bin/env python3
"""A complete wsgate echo backend, standard library only.

Usage: echo_backend.py SOCKET_PATH      (e.g. /var/run/websocket/pyecho)

Then ws://host/pyecho echoes every message. The link protocol is described
byte for byte in docs/link-protocol.md: records of [kind u8][length u32 BE][payload].
In framed mode messages arrive as records; in direct mode (wsgate --direct)
the gateway hands over the client's own socket after ACCEPT, and this script
speaks WebSocket on it (a minimal RFC 6455 server: no UTF-8 validation, no
pings of its own, one size limit). With `wsgate --http pyecho` it also
answers plain HTTP requests (one REQUEST record, one RESPONSE record): a JSON
description of the request, with its body echoed.
"""
import json
import os
import signal
import socket
import struct
import sys
import threading

OPEN, ACCEPT, REJECT, HANDOFF, REQUEST, RESPONSE = 0x01, 0x02, 0x03, 0x04, 0x05, 0x06
TEXT, BINARY, CLOSE = 0x10, 0x11, 0x12
MAX_PAYLOAD = 16 * 1024 * 1024  # the gateway's default maximum message size


def read_exact(conn, n):
    data = bytearray()
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise EOFError("link closed")
        data += chunk
    return bytes(data)


def read_record(conn):
    kind, length = struct.unpack(">BI", read_exact(conn, 5))
    if length > MAX_PAYLOAD:
        raise ValueError(f"record of {length} bytes is over the limit")
    return kind, read_exact(conn, length)


def write_record(conn, kind, payload=b""):
    conn.sendall(struct.pack(">BI", kind, len(payload)) + payload)


def split_head(payload):
    """A REQUEST or RESPONSE payload: [head length u32 BE][JSON head][body]."""
    (head_length,) = struct.unpack(">I", payload[:4])
    if 4 + head_length > len(payload):
        raise ValueError("head length exceeds the payload")
    return json.loads(payload[4 : 4 + head_length]), payload[4 + head_length :]


def answer_request(conn, payload):
    """One plain HTTP request (wsgate --http): describe it and echo its body."""
    head, body = split_head(payload)
    description = {
        "method": head["method"],
        "path": head["path"],
        "query": head.get("query", ""),
        "peer": head["peer"],
        "tls": "tls" in head,
        "body": body.decode("utf-8", "replace"),
    }
    response_head = json.dumps({
        "status": 200,
        "headers": [["content-type", "application/json"]],
    }).encode()
    response_body = json.dumps(description).encode()
    write_record(conn, RESPONSE, struct.pack(">I", len(response_head)) + response_head + response_body)


def receive_handoff(conn):
    """The HANDOFF record: the client's socket (SCM_RIGHTS) and the bytes the
    gateway read past the handshake."""
    # Only the 5-byte header, which carries the descriptor; close-on-exec at once.
    header, fds, _flags, _addr = socket.recv_fds(conn, 5, 4, socket.MSG_CMSG_CLOEXEC)
    header += read_exact(conn, 5 - len(header)) if header else b""
    for extra in fds[1:]:
        os.close(extra)  # only one descriptor is expected
    if len(header) != 5 or header[0] != HANDOFF or not fds:
        raise EOFError("expected a HANDOFF record carrying the client's socket")
    (length,) = struct.unpack(">I", header[1:])
    client = socket.socket(fileno=fds[0])
    client.setblocking(True)  # it comes in the gateway's non-blocking mode
    return client, read_exact(conn, length)


class Frames:
    """WebSocket frames from a client socket, starting with `pending` bytes."""

    def __init__(self, sock, pending):
        self.sock, self.buffer = sock, bytearray(pending)

    def take(self, n):
        while len(self.buffer) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("client closed")
            self.buffer += chunk
        data, self.buffer = bytes(self.buffer[:n]), self.buffer[n:]
        return data

    def next(self):
        """(fin, opcode, payload) of the next frame; client frames are masked."""
        first, second = self.take(2)
        length = second & 0x7F
        if length == 126:
            (length,) = struct.unpack(">H", self.take(2))
        elif length == 127:
            (length,) = struct.unpack(">Q", self.take(8))
        if length > MAX_PAYLOAD or not second & 0x80:
            raise ConnectionError("frame too long or not masked")
        mask = self.take(4)
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(self.take(length)))
        return first & 0x80, first & 0x0F, payload


def send_frame(sock, opcode, payload):
    if len(payload) < 126:
        header = struct.pack(">BB", 0x80 | opcode, len(payload))
    elif len(payload) < 65536:
        header = struct.pack(">BBH", 0x80 | opcode, 126, len(payload))
    else:
        header = struct.pack(">BBQ", 0x80 | opcode, 127, len(payload))
    sock.sendall(header + payload)


def echo_direct(sock, pending):
    """Echoes whole messages on the client's own socket until it closes."""
    frames, message, message_opcode = Frames(sock, pending), bytearray(), None
    with sock:
        while True:
            fin, opcode, payload = frames.next()
            if opcode == 0x8:  # close: answer with the same code and reason
                send_frame(sock, 0x8, payload)
                return
            if opcode == 0x9:  # ping
                send_frame(sock, 0xA, payload)
            elif opcode in (0x1, 0x2, 0x0):  # text, binary, continuation
                message_opcode = opcode if opcode else message_opcode
                message += payload
                if len(message) > MAX_PAYLOAD:
                    send_frame(sock, 0x8, struct.pack(">H", 1009))
                    return
                if fin:
                    send_frame(sock, message_opcode, bytes(message))
                    message = bytearray()


def serve_client(conn):
    with conn:
        try:
            kind, payload = read_record(conn)
            if kind == REQUEST:
                answer_request(conn, payload)
                return
            if kind != OPEN:
                return
            meta = json.loads(payload)
            if meta["version"] != 1 or meta["mode"] not in ("framed", "direct"):
                reply = {"status": 501, "reason": "this backend speaks link version 1"}
                write_record(conn, REJECT, json.dumps(reply).encode())
                return
            write_record(conn, ACCEPT)  # an empty ACCEPT: no subprotocol, no extra headers
            if meta["mode"] == "direct":
                client, pending = receive_handoff(conn)
                conn.close()  # the link has done its job
                echo_direct(client, pending)
                return
            while True:
                kind, payload = read_record(conn)
                if kind in (TEXT, BINARY):
                    write_record(conn, kind, payload)
                elif kind == CLOSE:  # the client closed: answer with the same code
                    write_record(conn, CLOSE, payload)
                    return
        except (EOFError, ConnectionError, OSError, ValueError):
            pass  # the link or client closed (a readiness probe closes before OPEN)


def main():
    path = sys.argv[1]
    if os.path.exists(path):
        os.unlink(path)  # a stale socket left by a crash
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        while True:
            conn, _ = server.accept()
            threading.Thread(target=serve_client, args=(conn,), daemon=True).start()
    finally:
        os.unlink(path)


if __name__ == "__main__":
    main()
