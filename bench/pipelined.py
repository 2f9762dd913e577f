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
import sys

from wsclient import close, connect, masked, recv_exactly

PAYLOAD = b"x" * 64


def main():
    host, port = sys.argv[1], int(sys.argv[2])
    connections, rounds, path = int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    in_flight = int(sys.argv[6]) if len(sys.argv) > 6 else 16
    socks = [connect(host, port, path)[0] for _ in range(connections)]
    batch = masked(2, PAYLOAD) * in_flight
    answer = (bytes([0x82, 64]) + PAYLOAD) * in_flight
    for _ in range(rounds):
        for sock in socks:
            sock.sendall(batch)
        for sock in socks:
            if recv_exactly(sock, len(answer)) != answer:
                sys.exit("wrong echo")
    for sock in socks:
        close(sock)
    print(f"{connections * rounds * in_flight} messages")


if __name__ == "__main__":
    main()
