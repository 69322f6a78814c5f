"""Published ports: a tiny docker-proxy relaying a host port to a container's port.

The container's owner binds the host ports first (bind(), so a port in use is refused
before the container starts), then start() hands the listening sockets to a proxy
process of their own:

    python -m minicontainer.proxy PID ADDRESS FD:PORT [FD:PORT...]

Connections accepted on FD are relayed to ADDRESS:PORT. The proxy ends when process PID
(the container) does: a pidfd becomes readable at that moment.
"""
from __future__ import annotations

import os
import select
import socket
import subprocess
import sys
import threading
from pathlib import Path


def bind(ports: list[tuple[str, int, int]]) -> list[socket.socket]:
    """Listening sockets for [(host ip, host port, container port)], or a clear error."""
    from .errors import MinicontainerError
    listeners: list[socket.socket] = []
    try:
        for host_ip, host_port, _ in ports:
            listener = socket.socket()
            listeners.append(listener)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                listener.bind((host_ip, host_port))
            except OSError as e:
                raise MinicontainerError(f"cannot publish port {host_port}: {e.strerror} "
                                         "(is it in use? choose another)") from None
            listener.listen(128)
    except BaseException:
        for listener in listeners:
            listener.close()
        raise
    return listeners


def start(pid: int, address: str, listeners: list[socket.socket], container_ports: list[int],
          log: Path) -> subprocess.Popen:
    """Hand the bound sockets to a proxy process that lives as long as process `pid`."""
    pairs = [f"{s.fileno()}:{port}" for s, port in zip(listeners, container_ports, strict=True)]
    with open(log, "ab") as output:               # never our caller's pipes
        process = subprocess.Popen(
            [sys.executable, "-m", "minicontainer.proxy", str(pid), address, *pairs],
            pass_fds=[s.fileno() for s in listeners], start_new_session=True,
            stdin=subprocess.DEVNULL, stdout=output, stderr=output)
    for listener in listeners:
        listener.close()                          # the proxy has them now
    return process


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
