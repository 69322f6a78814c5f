"""A helper process that keeps pyroute2 loaded, so a command-line run need not.

Wiring a container (network.py) takes the kernel ~25 ms, but loading pyroute2 takes a
new Python process ~150 ms: a `minicontainer run --network` would spend most of its
time importing. So the first such run starts this helper, which imports the library
once and then does the netlink work for every run that follows, and exits by itself
once nobody has asked for IDLE_SECONDS. A notebook kernel loads pyroute2 once anyway:
only the CLI asks the helper.

How it stays safe and leaves nothing behind:
- It listens on a Unix socket file in our state directory (/run/minicontainer), as
  dockerd does on /var/run/docker.sock, not on an abstract socket: a path outside
  every container's root cannot be reached from inside one (an abstract name can, by
  any process sharing the host's network namespace). It serves only its own user
  (SO_PEERCRED).
- A request names the container by an open fd of its network namespace, passed with
  SCM_RIGHTS, not by a pid that could be reused meanwhile; the helper checks it is
  not the host's own.
- The client binds the socket and hands it to the helper already listening (as
  systemd's socket activation does): a client never waits for a helper to be ready.
- The helper says "accepted" before it acts: a client that gets no such word may do
  the work itself; one that lost the helper after it may not (the veth could exist).
- Socket file and exit change under state.locked(): the socket is unlinked first, the
  connections already queued are served, then it exits; the last user's lock removes
  the state directory. After a crash, a client finds nobody listening and starts a
  new helper over the stale file; `cleanup` asks a live one to exit.
"""
from __future__ import annotations

import array
import importlib
import json
import os
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from . import state
from .errors import MinicontainerError

IDLE_SECONDS = float(os.environ.get("MINICONTAINER_HELPER_IDLE", "5"))
ACCEPTED = b"+"


class HelperUnavailable(MinicontainerError):
    """No helper took the request: the caller may do the work itself."""


def socket_path() -> Path:
    """Where the helper listens: beside the records it serves."""
    return state.containers_dir().parent / "network-helper.sock"


def ask(request: dict, fd: int | None = None, start: bool = True) -> None:
    """Have the helper carry out `request` (with `fd` passed along); raise what it raised.

    HelperUnavailable if no helper accepted it; if none listens, one is started (unless
    not `start`: then OSError)."""
    try:
        connection = _connect()
    except OSError:
        if not start:
            raise
        connection = _start()
    with connection:
        connection.settimeout(30)
        fds = [fd] if fd is not None else []
        try:
            socket.send_fds(connection, [json.dumps(request).encode()], fds)
            accepted = connection.recv(1)
        except OSError:
            accepted = b""
        if accepted != ACCEPTED:                    # an exiting helper: nothing was done
            raise HelperUnavailable("the network helper did not take the request")
        reply = connection.makefile("rb").read()
    if not reply:
        raise MinicontainerError("the network helper ended during a request: see "
                                 "`minicontainer cleanup`")
    answer = json.loads(reply)
    if answer.get("error"):
        raise MinicontainerError(f"network helper: {answer['error']}")


def _connect() -> socket.socket:
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        connection.connect(str(socket_path()))
    except OSError:
        connection.close()
        raise
    return connection


def _start() -> socket.socket:
    """Start a helper on a socket bound here, and connect to it (it answers once loaded)."""
    with state.locked():
        try:
            return _connect()                       # another client started one meanwhile
        except OSError:
            pass
        path = socket_path()
        path.unlink(missing_ok=True)                # a crashed helper's: nobody listens
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(path))
        os.chmod(path, 0o600)
        listener.listen(64)
        with listener:
            subprocess.Popen([sys.executable, "-P", "-m", "minicontainer.network_helper",
                              str(listener.fileno()), HANDLER],
                             pass_fds=[listener.fileno()], start_new_session=True,
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, cwd="/")
            return _connect()


HANDLER = "minicontainer.network:handle_helper_request"   # imported by name: no cycle


def serve(listener: socket.socket, handle: Callable[[dict, int | None], None]) -> None:
    """Answer requests with `handle` until idle for IDLE_SECONDS; then leave nothing."""
    listener.settimeout(IDLE_SECONDS)
    while True:
        try:
            connection, _ = listener.accept()
        except TimeoutError:
            break
        if _answer(connection, handle) == "exit":
            break
    with state.locked():
        socket_path().unlink(missing_ok=True)       # no new client can connect now
        listener.setblocking(False)
        while True:                                 # but those already queued are served
            try:
                connection, _ = listener.accept()
            except BlockingIOError:
                break
            connection.setblocking(True)
            _answer(connection, handle)
        listener.close()


def _answer(connection: socket.socket, handle: Callable[[dict, int | None], None]) -> str:
    """One request: checked, accepted, done, answered; the connection closed. Its op."""
    with connection:
        connection.settimeout(5)
        fds: list[int] = []
        try:
            uid = struct.unpack("3i", connection.getsockopt(
                socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))[1]
            message, fds, _, _ = socket.recv_fds(connection, 4096, 1)
            if uid != os.getuid():
                return ""                           # not our user: not a word
            connection.sendall(ACCEPTED)
            request, answer = {}, {}
            try:
                request = json.loads(message)
                if not isinstance(request, dict):   # untrusted: `[1]` must not end us
                    request = {}
                    raise ValueError("a request is a JSON object")
                if request.get("op") != "exit":     # `cleanup`: served, then gone
                    handle(request, fds[0] if fds else None)
            except Exception as e:                  # the client raises it, as if its own
                answer = {"error": str(e) or type(e).__name__}
            connection.sendall(json.dumps(answer).encode())
            return str(request.get("op"))
        except OSError:
            return ""                               # the client left: its loss
        finally:
            for fd in array.array("i", fds):
                os.close(fd)


def stop() -> list[str]:
    """Ask a running helper to exit and wait until it has, or remove the socket file a
    crashed one left; what was removed."""
    if not socket_path().exists():
        return []
    try:
        ask({"op": "exit"}, start=False)
        deadline = time.monotonic() + 5
        while socket_path().exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        with state.locked():                    # its last steps, under this lock, are done
            pass                                # (and the directory goes if it is empty)
        return ["network helper"]
    except (HelperUnavailable, OSError):
        with state.locked():
            try:
                _connect().close()              # a new one came meanwhile: it idles out
                return []
            except OSError:
                socket_path().unlink(missing_ok=True)
        return ["stale network helper socket"]


def main() -> None:
    """`python -m minicontainer.network_helper FD MODULE:FUNCTION`: serve on listener FD."""
    fd, handler = int(sys.argv[1]), sys.argv[2]
    module, function = handler.split(":")
    handle = getattr(importlib.import_module(module), function)
    serve(socket.socket(fileno=fd), handle)


if __name__ == "__main__":
    main()
