"""Who holds a detached container's terminal: a small keeper process, and `attach`.

A pty lives as long as someone holds its master. When the runtime that started a
`-t` container goes away (`run -dit`, or the detach keys), someone else must: were
the master closed, the kernel would hang up the container's terminal and its shell
would get SIGHUP and end. Docker's containerd-shim and Podman's conmon are that
someone; here it is this module, run as a process of its own:

    python -m minicontainer.console PIDFD MASTER LISTENER LOG

(all four are fds it inherits). It copies everything the container writes to the
log (so `logs` works, as Docker's does for a tty), serves one `attach` at a time on a
unix socket in the container's record directory, and ends when the container's
first process does (its pidfd becomes readable) or its terminal hangs up.

The socket speaks in messages (SOCK_SEQPACKET: one send is one receive, no framing to
write). The first byte says what a message is:

    keeper -> client   b"+"               attached (the first message)
                       b"!" + reason      refused (another client is attached), then EOF
                       b"o" + bytes       what the container wrote to its terminal
    client -> keeper   b"k" + bytes       keys typed
                       b"w" + rows, cols  the window's size (struct "HH")

End-of-file from the keeper means the container's side is gone. Whoever can connect
can type into the container, so the socket is root's (the record directory is 0700).
The keeper is not dumpable and holds no directory fd: nothing in the container
reaches the host through it.
"""
from __future__ import annotations

import os
import selectors
import socket
import struct
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

from . import process
from .errors import MinicontainerError
from .syscalls import set_dumpable
from .terminal import CHUNK, MOST_WAITING, Master, set_window

SOCKET = "attach.sock"    # in the container's record directory
CLIENT_BUFFER = 1024 * 1024   # output kept for a client that reads slowly; then dropped


def start(pidfd: int, master: int, directory: Path, log: Path) -> process.Child:
    """Start the keeper of `master` (the container's terminal; `pidfd` its first
    process), listening at directory/SOCKET; return it once it runs."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        (directory / SOCKET).unlink(missing_ok=True)
        with _short_path(directory) as path:
            listener.bind(path)
        listener.listen(4)
        out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        errors = os.open(log.with_name("console.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND,
                         0o600)
        stdio = [os.open(os.devnull, os.O_RDONLY), errors, errors]
        try:
            return process.spawn(
                [*process.HELPER_PYTHON, "minicontainer.console", str(pidfd), str(master),
                 str(listener.fileno()), str(out)], [os.setsid, partial(os.chdir, "/")],
                stdio=stdio, pass_fds=[pidfd, master, listener.fileno(), out])
        finally:
            for fd in {out, *stdio}:
                os.close(fd)
    finally:
        listener.close()


@contextmanager
def _short_path(directory: Path) -> Iterator[str]:
    """directory/SOCKET by a path short enough for a unix socket (at most 107 bytes; a
    rootless user's long container name in /run/user/UID would not fit): through an
    fd of the directory, /proc/self/fd/N/attach.sock."""
    fd = os.open(directory, os.O_PATH | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{SOCKET}"
    finally:
        os.close(fd)


class Client:
    """A connection to a keeper, as a terminal.Console for terminal.attach()."""

    def __init__(self, directory: Path, name: str) -> None:
        """Connect to the keeper of container `name` (its record `directory`)."""
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            with _short_path(directory) as path:
                self.socket.connect(path)
            answer = self.socket.recv(CHUNK + 1)
        except OSError:
            self.socket.close()
            raise MinicontainerError(f"container {name} has no terminal to attach to "
                                     "(it has exited, or its `run -it` holds it)") from None
        if answer[:1] != b"+":
            self.socket.close()
            raise MinicontainerError(f"container {name}: {answer[1:].decode(errors='replace')}")
        self.socket.setblocking(False)

    def fileno(self) -> int:
        """The socket, for a selector."""
        return self.socket.fileno()

    def read(self) -> bytes | None:
        """The container's output (b"": the keeper is gone; None: nothing yet)."""
        try:
            message = self.socket.recv(CHUNK + 1)
        except BlockingIOError:
            return None
        except OSError:          # ECONNRESET: the keeper is gone
            return b""
        return message[1:] if message[:1] == b"o" else b"" if not message else None

    def write(self, data: bytes) -> int:
        """Send typed keys; how many were taken."""
        try:
            self.socket.send(b"k" + data[:CHUNK])
        except BlockingIOError:
            return 0
        except OSError:          # the keeper is gone: read() says so next
            pass
        return min(len(data), CHUNK)

    def resize(self, window: tuple[int, int]) -> None:
        """Tell the keeper the window's size."""
        try:
            self.socket.send(b"w" + struct.pack("HH", *window))
        except OSError:
            pass            # full: the next SIGWINCH says it again; gone: read() says so

    def close(self) -> None:
        """Let go (the keeper goes on holding the terminal)."""
        self.socket.close()


# -- the keeper process -------------------------------------------------------------------

def keep(pidfd: int, master: int, listener: socket.socket, log: int) -> None:
    """Hold the terminal until the container ends: log its output, serve attach.

    The keeper never waits for anyone: it reads the container's output whenever there
    is some (all of it goes to the log), and a client that does not keep up loses
    what is beyond CLIENT_BUFFER, so neither a stuck `attach` nor a flood stops it.
    """
    console = Master(master)
    client: socket.socket | None = None
    to_client = b""       # output a slow client has not taken yet
    typed = b""           # keys not yet taken by the container
    hung_up = False       # the container closed its terminal (it may run on)
    selector = selectors.DefaultSelector()
    selector.register(pidfd, selectors.EVENT_READ)
    selector.register(listener, selectors.EVENT_READ)
    while True:
        _watch(selector, master, 0 if hung_up else selectors.EVENT_READ
               | selectors.EVENT_WRITE * bool(typed))
        if client is not None:
            _watch(selector, client, selectors.EVENT_READ * (len(typed) < MOST_WAITING)
                   | selectors.EVENT_WRITE * bool(to_client))
        for key, events in selector.select():
            if key.fileobj == pidfd:
                _drain(console, log, client, hung_up)
                return
            if key.fileobj is listener:
                client = _welcome(listener, client, selector)
            elif key.fileobj == master and events & selectors.EVENT_READ:
                data = console.read()
                if data == b"":
                    hung_up, typed = True, b""
                elif data:
                    os.write(log, data)
                    if client is not None and len(to_client) < CLIENT_BUFFER:
                        to_client += data
            elif key.fileobj is client and events & selectors.EVENT_READ:
                message = _receive(client)
                if not message:                      # detached, or gone
                    selector.unregister(client)
                    client.close()
                    client, to_client = None, b""
                elif message[:1] == b"k" and not hung_up:
                    typed += message[1:]
                elif message[:1] == b"w" and len(message) == 5 and not hung_up:
                    set_window(master, struct.unpack("HH", message[1:]))
        if typed:
            typed = typed[console.write(typed):]
        if client is not None and to_client:
            to_client = _send(client, to_client)


def _send(client: socket.socket, output: bytes) -> bytes:
    """Send what the client takes now, a message of at most CHUNK bytes at a time;
    return the rest (nothing, if the client has gone)."""
    while output:
        try:
            client.send(b"o" + output[:CHUNK])
        except BlockingIOError:
            return output
        except OSError:
            return b""
        output = output[CHUNK:]
    return b""


def _watch(selector: selectors.BaseSelector, fileobj, events: int) -> None:
    """Register, modify or unregister `fileobj` so that exactly `events` are watched."""
    known = fileobj in {key.fileobj for key in selector.get_map().values()}
    if events and known:
        selector.modify(fileobj, events)
    elif events:
        selector.register(fileobj, events)
    elif known:
        selector.unregister(fileobj)


def _welcome(listener: socket.socket, client: socket.socket | None,
             selector: selectors.BaseSelector) -> socket.socket | None:
    """Accept a connection: the new client, or a refusal if one is attached already."""
    connection, _ = listener.accept()
    if client is not None:
        connection.send(b"!is attached to another terminal already")
        connection.close()
        return client
    connection.send(b"+")
    connection.setblocking(False)
    return connection


def _receive(client: socket.socket) -> bytes:
    try:
        return client.recv(CHUNK + 1)
    except BlockingIOError:
        return b"?"             # nothing after all; not the end
    except OSError:
        return b""


def _drain(console: Master, log: int, client: socket.socket | None, hung_up: bool) -> None:
    """The container's first process has ended: log what it wrote last, and pass on
    to the client what it takes now (never waiting for it)."""
    while not hung_up and (data := console.read()):
        os.write(log, data)
        if client is not None:
            _send(client, data)


def main(argv: list[str]) -> int:
    """The keeper process: PIDFD MASTER LISTENER LOG, all inherited fds."""
    pidfd, master, listener, log = (int(arg) for arg in argv)
    set_dumpable(False)      # it holds the container's terminal: not for ptrace or /proc/PID/fd
    keep(pidfd, master, socket.socket(fileno=listener), log)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
