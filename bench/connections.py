#!/usr/bin/env python3
"""Sequential WebSocket connections, for counting a front's instructions per
connection under callgrind (BENCHMARKS.md, "Where a connection's cost goes").

usage: connections.py HOST PORT COUNT PATH [echo]

Each connection: connect, upgrade, (with `echo`) one masked 64 B binary
message and its echo checked, a close frame and the close answered, then the
end of the stream. Deliberately simple and sequential: what is measured is
the front's work per connection, not a rate.
"""
import sys

from wsclient import close, connect, masked, recv_exactly


def main():
    host, port, count, path = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    echo = len(sys.argv) > 5 and sys.argv[5] == "echo"
    for _ in range(count):
        sock, rest = connect(host, port, path)
        if echo:
            sock.sendall(masked(2, b"x" * 64))
            answer = recv_exactly(sock, 66, rest)
            if answer[2:66] != b"x" * 64:
                sys.exit(f"wrong echo: {answer[:80]!r}")
        close(sock)
    print(f"{count} connections")


if __name__ == "__main__":
    main()
