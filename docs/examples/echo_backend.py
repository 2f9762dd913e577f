#!/usr/bin/env python3
"""A complete wsgate echo backend in framed mode, standard library only.

Usage: echo_backend.py SOCKET_PATH      (e.g. /var/run/websocket/pyecho)

Then ws://host/pyecho echoes every message. The link protocol is described
byte for byte in docs/link-protocol.md: records of [kind u8][length u32 BE][payload].
"""
import json
import os
import signal
import socket
import struct
import sys
import threading

OPEN, ACCEPT, REJECT = 0x01, 0x02, 0x03
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


def serve_client(conn):
    with conn:
        try:
            kind, payload = read_record(conn)
            if kind != OPEN:
                return
            meta = json.loads(payload)
            if meta["version"] != 1 or meta["mode"] != "framed":
                reply = {"status": 501, "reason": "this backend speaks link version 1, framed mode"}
                write_record(conn, REJECT, json.dumps(reply).encode())
                return
            write_record(conn, ACCEPT)  # an empty ACCEPT: no subprotocol, no extra headers
            while True:
                kind, payload = read_record(conn)
                if kind in (TEXT, BINARY):
                    write_record(conn, kind, payload)
                elif kind == CLOSE:  # the client closed: answer with the same code
                    write_record(conn, CLOSE, payload)
                    return
        except (EOFError, ConnectionError):
            pass  # the gateway closed the link (a readiness probe does this before OPEN)


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
