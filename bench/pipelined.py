#!/usr/bin/env python3
"""Pipelined WebSocket echo, for counting a front's instructions per message
under callgrind (BENCHMARKS.md, "Where a message's cost goes").

usage: pipelined.py HOST PORT CONNECTIONS ROUNDS PATH [IN_FLIGHT]

Opens CONNECTIONS clients (upgrade to PATH), then ROUNDS times writes
IN_FLIGHT (default 16) masked 64 B binary messages to every client in one
write each and reads every echo back, checked. Then closes each cleanly.
Deliberately simple: what is measured is the front's work per message with
IN_FLIGHT messages arriving together, not a rate.
"""
import socket
import sys

KEY = "dGhlIHNhbXBsZSBub25jZQ=="
MASK = b"\x01\x02\x03\x04"
PAYLOAD = b"x" * 64


def recv_exactly(sock, size):
    data = b""
    while len(data) < size:
        chunk = sock.recv(65536)
        if not chunk:
            sys.exit(f"stream ended after {len(data)} of {size} bytes")
        data += chunk
    return data


def masked(opcode, payload):
    body = bytes(byte ^ MASK[index % 4] for index, byte in enumerate(payload))
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + MASK + body


def main():
    host, port = sys.argv[1], int(sys.argv[2])
    connections, rounds, path = int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    in_flight = int(sys.argv[6]) if len(sys.argv) > 6 else 16
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: Upgrade\r\n"
        f"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {KEY}\r\n\r\n"
    ).encode()
    socks = []
    for _ in range(connections):
        sock = socket.create_connection((host, port))
        sock.sendall(request)
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(1)
        if not head.startswith(b"HTTP/1.1 101"):
            sys.exit(f"no 101: {head[:80]!r}")
        socks.append(sock)
    batch = masked(2, PAYLOAD) * in_flight
    answer = (bytes([0x82, 64]) + PAYLOAD) * in_flight
    for _ in range(rounds):
        for sock in socks:
            sock.sendall(batch)
        for sock in socks:
            if recv_exactly(sock, len(answer)) != answer:
                sys.exit("wrong echo")
    for sock in socks:
        sock.sendall(masked(8, b"\x03\xe8"))
        data = b""
        while len(data) < 2 or len(data) < 2 + (data[1] & 0x7F):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        while sock.recv(65536):
            pass
        sock.close()
    print(f"{connections * rounds * in_flight} messages")


if __name__ == "__main__":
    main()
