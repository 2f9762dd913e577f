"""The few WebSocket client pieces the callgrind clients share
(connections.py, pipelined.py, fanout.py): an upgrade and masked frames,
with nothing in between, so what is measured is the server's work."""
import socket
import sys

KEY = "dGhlIHNhbXBsZSBub25jZQ=="
MASK = b"\x01\x02\x03\x04"


def masked(opcode, payload):
    """One client frame (FIN set) of `opcode` carrying `payload`, masked."""
    body = bytes(byte ^ MASK[index % 4] for index, byte in enumerate(payload))
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + MASK + body


def connect(host, port, path):
    """Connects and upgrades on `path`; exits unless the answer is a 101.
    Returns the socket and what came after the 101's head."""
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: Upgrade\r\n"
        f"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {KEY}\r\n\r\n"
    ).encode()
    sock = socket.create_connection((host, port))
    sock.sendall(request)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            sys.exit("the connection ended before the 101")
        data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    if not head.startswith(b"HTTP/1.1 101"):
        sys.exit(f"no 101: {head[:80]!r}")
    return sock, rest


def recv_exactly(sock, size, data=b""):
    """Reads until `data` holds `size` bytes; exits if the stream ends first."""
    while len(data) < size:
        chunk = sock.recv(65536)
        if not chunk:
            sys.exit(f"stream ended after {len(data)} of {size} bytes")
        data += chunk
    return data


def close(sock):
    """Sends a close frame (1000), reads to the end of the stream, closes."""
    sock.sendall(masked(8, b"\x03\xe8"))
    while sock.recv(65536):
        pass
    sock.close()
