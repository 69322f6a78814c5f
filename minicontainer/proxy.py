"""Published ports: a tiny docker-proxy relaying a host port to a container's port.

The container's owner binds the host ports first (bind(), so a port in use is refused
before the container starts), then start() hands the listening sockets to a proxy
process of their own:

    python -m minicontainer.proxy PID ADDRESS FD:PORT [FD:PORT...]

Connections accepted on FD are relayed to ADDRESS:PORT. The proxy ends when process PID
(the container) does: a pidfd becomes readable at that moment.

Anyone who can reach the port can open connections, as many as they like, so the
relay must not fall over when they do. One thread serves them all: a selector
(epoll(7) underneath) says which sockets can be read or written without blocking, and
each connection keeps at most one chunk in flight per direction. What a flood could
exhaust is bounded: file descriptors (RLIMIT_NOFILE; each connection takes two, so
the relay stops accepting before it runs out, and accepts again as connections
close), and memory and processes (the relay runs in a cgroup of its own, LIMITS).

What it costs is counted, not hidden: a Python interpreter, about 8 MiB PSS per
container that publishes ports (bench/cost.py; `stats` shows it as proxy_pss, part
of HOST+). Docker pays the same kind of price, a docker-proxy process per published
port, because DNAT rules alone cannot serve 127.0.0.1 without route_localnet (which
network.py refuses). DNAT for the host's other addresses would spare the relay
those connections' bytes, not its memory: the process would stay for 127.0.0.1.
"""
from __future__ import annotations

import errno
import os
import resource
import selectors
import socket
import sys
import time
from functools import partial
from pathlib import Path

from . import cgroups, process
from .cgroups import Cgroup, Limits

LIMITS = Limits(memory=64 * 1024**2, pids=16)   # one thread; memory: see MAX_CONNECTIONS
CHUNK = 16 * 1024         # bytes read at once, and the most waiting per direction
MAX_CONNECTIONS = 1024    # whatever the fd limit: 1024 x 2 x CHUNK = 32M of buffers
SPARE_FDS = 8             # beyond what we hold at start, for the odd file we open


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
            # Clients we have no room for wait in this queue; once it is full the
            # kernel drops their SYNs, and a dropped SYN is retried only after 1 s.
            listener.listen(socket.SOMAXCONN)     # as long as the host allows (Go does)
    except BaseException:
        for listener in listeners:
            listener.close()
        raise
    return listeners


def start(pid: int, address: str, listeners: list[socket.socket], container_ports: list[int],
          log: Path, cgroup: Cgroup) -> process.Child:
    """Hand the bound sockets to a proxy process, inside `cgroup` (already created),
    that lives as long as process `pid`."""
    pairs = [f"{s.fileno()}:{port}" for s, port in zip(listeners, container_ports, strict=True)]
    output = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    stdio = [os.open(os.devnull, os.O_RDONLY), output, output]   # never our caller's
    procs: list[int] = []
    try:
        procs = cgroup.open_procs()
        # The child joins its group between fork and exec, as a container does: a
        # write to cgroup.procs is a plain system call, safe in a copy of a threaded
        # process (subprocess's preexec_fn is not), and the relay never runs outside
        # its budget (writing its pid in after Popen would leave a moment when it does).
        steps = [os.setsid, partial(os.chdir, "/"), partial(cgroups.join, procs)]
        child = process.spawn([*process.HELPER_PYTHON, "minicontainer.proxy", str(pid),
                               address, *pairs], steps, stdio=stdio,
                              pass_fds=[s.fileno() for s in listeners])
    finally:
        for fd in {*stdio, *procs}:
            os.close(fd)
    for listener in listeners:
        listener.close()                          # the proxy has them now
    return child


# -- the relay, in the proxy process ----------------------------------------------------------

class Connection:
    """A client and the connection we opened for it to the container, relayed both
    ways. `waiting[s]` holds bytes read from the other socket, not yet sent to s."""

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        """Relay between `client` and `upstream` (connecting)."""
        self.upstream = upstream
        self.peer = {client: upstream, upstream: client}
        self.waiting = {client: b"", upstream: b""}
        self.ended: set[socket.socket] = set()     # sockets that sent end-of-file
        self.connected = False                     # upstream's connect(2) has finished

    def wants(self, s: socket.socket) -> int:
        """The events to wait for on socket s: read only when there is room for what
        we read (back-pressure), write only when something waits to be sent."""
        if not self.connected:                     # a connect finishing is "writable"
            return selectors.EVENT_WRITE if s is self.upstream else 0
        events = 0
        if s not in self.ended and not self.waiting[self.peer[s]]:
            events |= selectors.EVENT_READ
        if self.waiting[s]:
            events |= selectors.EVENT_WRITE
        return events

    def done(self) -> bool:
        """Both sides have ended and nothing is left to pass on."""
        return len(self.ended) == 2 and not any(self.waiting.values())

    def on_ready(self, s: socket.socket, events: int) -> None:
        """Move what can be moved on socket s without blocking; OSError ends it all."""
        if not self.connected:
            error = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if error:
                raise OSError(error, os.strerror(error))   # the container refused
            self.connected = True
            return
        if events & selectors.EVENT_WRITE and self.waiting[s]:
            sent = s.send(self.waiting[s])
            self.waiting[s] = self.waiting[s][sent:]
        if events & selectors.EVENT_READ:
            data = s.recv(CHUNK)
            if data:
                self.waiting[self.peer[s]] = data
            else:
                self.ended.add(s)                  # nothing of s's waits (we read
                self.peer[s].shutdown(socket.SHUT_WR)   # only then): pass the end on


class Relay:
    """Every connection of every published port of one container, in one loop."""

    def __init__(self, address: str, listeners: dict[socket.socket, int]) -> None:
        """Relay connections from `listeners` (socket → container port) to `address`."""
        self.address, self.listeners = address, listeners
        self.selector = selectors.DefaultSelector()
        self.connections: dict[socket.socket, Connection] = {}   # both sockets → theirs
        self.listening = False
        self.retry_at = 0.0                   # after EMFILE: when to try accept() again
        for listener in listeners:
            listener.setblocking(False)
        # What we hold before the first client (stdio, listeners, pidfd, epoll), and spare.
        self.reserved = len(os.listdir("/proc/self/fd")) + SPARE_FDS

    def room(self) -> int:
        """How many more connections we may hold: two fds each, within RLIMIT_NOFILE
        (read each time: `prlimit --pid` may change it while we run)."""
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        most = min(MAX_CONNECTIONS, (soft - self.reserved) // 2)
        return most - len(self.connections) // 2

    def run(self, container: int) -> None:
        """Relay until the container's pidfd becomes readable: it has exited."""
        self.selector.register(container, selectors.EVENT_READ)
        while True:
            self.listen_while_there_is_room()
            timeout = None if self.listening else 0.1   # paused: look again soon
            for key, events in self.selector.select(timeout):
                if key.fileobj == container:
                    return
                if key.fileobj in self.listeners:
                    self.accept(key.fileobj)
                elif key.fileobj in self.connections:    # not closed earlier this round
                    self.step(self.connections[key.fileobj], key.fileobj, events)

    def listen_while_there_is_room(self) -> None:
        """Watch the listeners only while we can take a connection: beyond that, new
        ones wait in the kernel's queue (listen backlog), not in our fd table."""
        wanted = self.room() > 0 and time.monotonic() >= self.retry_at
        if wanted != self.listening:
            for listener in self.listeners:
                if wanted:
                    self.selector.register(listener, selectors.EVENT_READ)
                else:
                    self.selector.unregister(listener)
            self.listening = wanted

    def accept(self, listener: socket.socket) -> None:
        """Take the waiting clients, as many as there is room for, and start connecting
        to the container for each (a full accept queue drops new clients' SYNs)."""
        while self.room() > 0:
            try:
                client, _ = listener.accept()
            except BlockingIOError:           # none left waiting
                return
            except ConnectionAbortedError:    # that one went away meanwhile
                continue
            except OSError as e:      # EMFILE, ENFILE, ENOBUFS: out of fds or memory
                print(f"proxy: accept: {e.strerror}; pausing", file=sys.stderr, flush=True)
                self.retry_at = time.monotonic() + 0.1
                return
            if client.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                client.close()        # it reset while it waited: do not bother the container
                continue
            self.connect(client, self.listeners[listener])

    def connect(self, client: socket.socket, port: int) -> None:
        """Begin the connection to the container's `port`, without waiting for it."""
        try:
            upstream = socket.socket()
        except OSError:
            client.close()            # the next accept() hits the same wall and pauses
            return
        for s in (client, upstream):
            s.setblocking(False)
        if upstream.connect_ex((self.address, port)) not in (0, errno.EINPROGRESS):
            client.close()            # the container cannot be reached at all
            upstream.close()
            return
        connection = Connection(client, upstream)
        for s in (client, upstream):
            self.connections[s] = connection
        self.watch(connection)

    def step(self, connection: Connection, s: socket.socket, events: int) -> None:
        """Let `connection` use what socket s is ready for; whatever fails closes it."""
        try:
            connection.on_ready(s, events)
        except BlockingIOError:   # a spurious wake-up: nothing to move after all
            pass
        except OSError:           # reset, refused, unreachable: this connection only
            self.close(connection)
            return
        except Exception as e:    # a bug: it must not take the port down for everyone
            print(f"proxy: {e!r}; connection closed", file=sys.stderr, flush=True)
            self.close(connection)
            return
        if connection.done():
            self.close(connection)
        else:
            self.watch(connection)

    def watch(self, connection: Connection) -> None:
        """Tell the selector what each socket of `connection` waits for now."""
        for s in connection.peer:
            events = connection.wants(s)
            registered = s in self.selector.get_map()
            if events and registered:
                self.selector.modify(s, events)
            elif events:
                self.selector.register(s, events)
            elif registered:
                self.selector.unregister(s)

    def close(self, connection: Connection) -> None:
        """Forget both sockets: their two fds make room for the next client."""
        for s in connection.peer:
            if s in self.selector.get_map():
                self.selector.unregister(s)
            del self.connections[s]
            s.close()


def main(argv: list[str]) -> int:
    """The proxy process: relay until the container's process ends."""
    pid, address, pairs = int(argv[0]), argv[1], [p.split(":") for p in argv[2:]]
    listeners = {socket.socket(fileno=int(fd)): int(port) for fd, port in pairs}
    try:
        container = os.pidfd_open(pid)
    except ProcessLookupError:             # it ended before we started
        return 0
    Relay(address, listeners).run(container)
    return 0                               # the container is gone, and so are we


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
