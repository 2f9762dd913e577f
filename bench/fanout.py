#!/usr/bin/env python3
"""Chat fan-out one message at a time, for counting a front's instructions
per delivery under callgrind (BENCHMARKS.md, "Where a message's cost goes").

usage: fanout.py HOST PORT RECEIVERS MESSAGES PATH

Opens RECEIVERS clients and one sender on PATH (a chat: every message goes
to every client), then MESSAGES times sends one masked 8 B binary message
and waits until every receiver has read it (and the sender its own copy,
when the chat sends one), so each delivery is a wake-up of its own, as in
the fixed-rate fan-out scenario. Then closes each client cleanly.
"""
import selectors
import struct
import sys

from wsclient import close, connect, masked


class Reader:
    """Splits a server's unmasked frames; keeps the binary payloads."""

    def __init__(self, connected):
        self.sock, self.buffer = connected

    def read(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            sys.exit("a client's stream ended")
        self.buffer += chunk
        payloads = []
        while len(self.buffer) >= 2:
            length = self.buffer[1] & 0x7F
            if length >= 126:
                sys.exit("unexpected long frame")
            if len(self.buffer) < 2 + length:
                break
            if self.buffer[0] & 0x0F == 2:
                payloads.append(self.buffer[2 : 2 + length])
            self.buffer = self.buffer[2 + length :]
        return payloads


def main():
    host, port = sys.argv[1], int(sys.argv[2])
    receivers, messages, path = int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    readers = [Reader(connect(host, port, path)) for _ in range(receivers)]
    sender_reader = Reader(connect(host, port, path))
    sender = sender_reader.sock
    selector = selectors.DefaultSelector()
    for reader in readers:
        selector.register(reader.sock, selectors.EVENT_READ, reader)
    selector.register(sender, selectors.EVENT_READ, sender_reader)
    # Every receiver must have joined: send probes until each has one.
    joined = set()
    while len(joined) < receivers:
        sender.sendall(masked(2, b"probe..."))
        for key, _ in selector.select(timeout=0.2):
            if key.data.read() and key.data is not sender_reader:
                joined.add(id(key.data))
    # Drain what the probes still bring.
    while selector.select(timeout=0.5):
        for key, _ in selector.select(timeout=0):
            key.data.read()
    for seq in range(messages):
        payload = struct.pack(">Q", seq)
        sender.sendall(masked(2, payload))
        waiting = {id(reader) for reader in readers}
        while waiting:
            for key, _ in selector.select(timeout=10):
                for got in key.data.read():
                    if key.data is not sender_reader and got == payload:
                        waiting.discard(id(key.data))
    for reader in readers + [sender_reader]:
        close(reader.sock)
    print(f"{receivers * messages} deliveries")


if __name__ == "__main__":
    main()
