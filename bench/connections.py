#!/usr/bin/env python3
"""Sequential WebSocket connections, for counting a front's instructions per
connection under callgrind (BENCHMARKS.md, "Where a connection's cost goes").

usage: connections.py HOST PORT COUNT PATH [echo]

Each connection: connect, upgrade, (with `echo`) one masked 64 B binary
message and its echo checked, a close frame and the close answered, then the
end of the stream. Deliberately simple and sequential: what is measured is
the front's work per connection, not a rate.
"""
import socket
import sys

KEY = "dGhlIHNhbXBsZSBub25jZQ=="
MASK = b"\x01\x02\x03\x04"


def recv_until(sock, done):
    data = b""
    while not done(data):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def masked(opcode, payload):
    body = bytes(byte ^ MASK[index % 4] for index, byte in enumerate(payload))
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + MASK + body


def main():
    host, port, count, path = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    echo = len(sys.argv) > 5 and sys.argv[5] == "echo"
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: Upgrade\r\n"
        f"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {KEY}\r\n\r\n"
    ).encode()
    for _ in range(count):
        sock = socket.create_connection((host, port))
        sock.sendall(request)
        head = recv_until(sock, lambda data: b"\r\n\r\n" in data)
        if not head.startswith(b"HTTP/1.1 101"):
            sys.exit(f"no 101: {head[:80]!r}")
        if echo:
            sock.sendall(masked(2, b"x" * 64))
            answer = recv_until(sock, lambda data: len(data) >= 66)
            if answer[2:66] != b"x" * 64:
                sys.exit(f"wrong echo: {answer[:80]!r}")
        sock.sendall(masked(8, b"\x03\xe8"))
        recv_until(sock, lambda data: len(data) >= 2 and len(data) >= 2 + (data[1] & 0x7F))
        while sock.recv(65536):
            pass
        sock.close()
    print(f"{count} connections")


if __name__ == "__main__":
    main()
