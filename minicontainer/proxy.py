"""A tiny docker-proxy: relay TCP connections from a host port to a container's port.

    python -m minicontainer.proxy PID ADDRESS FD:PORT [FD:PORT...]

The listening sockets are bound by the parent (so a port in use is refused before
the container starts) and inherited as file descriptors; connections accepted on FD
are relayed to ADDRESS:PORT. The proxy ends when process PID (the container) does:
a pidfd becomes readable at that moment.
"""
from __future__ import annotations

import os
import select
import socket
import sys
import threading


def relay(source: socket.socket, target: socket.socket) -> None:
    """Copy bytes one way until end-of-file, then pass the end-of-file on."""
    try:
        while data := source.recv(65536):
            target.sendall(data)
        target.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def serve(client: socket.socket, address: str, port: int) -> None:
    try:
        upstream = socket.create_connection((address, port), timeout=10)
    except OSError:
        client.close()
        return
    upstream.settimeout(None)
    back = threading.Thread(target=relay, args=(upstream, client), daemon=True)
    back.start()
    relay(client, upstream)
    back.join()
    client.close()
    upstream.close()


def main(argv: list[str]) -> int:
    pid, address, pairs = int(argv[0]), argv[1], [p.split(":") for p in argv[2:]]
    listeners = {socket.socket(fileno=int(fd)): int(port) for fd, port in pairs}
    try:
        container = os.pidfd_open(pid)
    except ProcessLookupError:             # it ended before we started
        return 0
    while True:
        ready, _, _ = select.select([container, *listeners], [], [])
        if container in ready:
            return 0                       # the container is gone, and so are we
        for listener in ready:
            client, _ = listener.accept()
            threading.Thread(target=serve, args=(client, address, listeners[listener]),
                             daemon=True).start()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
