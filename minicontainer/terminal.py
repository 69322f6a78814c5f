"""The terminal: what `-t` gives a container, and how the host's keyboard reaches it.

A pseudo-terminal (pty) is a pair of files. The *master* is held by whoever plays
keyboard and screen (xterm, sshd, tmux, Docker); the *slave*, /dev/pts/N, is the
terminal the program sees. Between them the kernel's line discipline does what a
terminal does: it echoes, edits lines, and turns Ctrl-C, Ctrl-Z and Ctrl-\\ into
SIGINT, SIGTSTP and SIGQUIT for the terminal's *foreground process group*. Not for
the program holding the master: that is why Ctrl-C in `run -it` interrupts the
`sleep` inside, and neither the shell that waits for it nor the runtime.

A container gets a terminal of its own in its first process, before exec (runc does
the same):

1. open /dev/pts/ptmx in the devpts the container mounted with `newinstance`
   (layer 2), so its ptys count from 0 and only its own show in /dev/pts;
2. unlock the slave (ioctl TIOCSPTLCK) and open it from the master (TIOCGPTPEER: no
   path a process inside could swap for another file);
3. send the master out to the runtime over a unix socket, as SCM_RIGHTS ancillary
   data (runc's --console-socket): no process in the container keeps it;
4. setsid(2), a new session with no terminal, then ioctl(TIOCSCTTY): the slave
   becomes the session's *controlling terminal*, and fds 0, 1 and 2. The shell now
   leads a session with a terminal, so job control works (`sleep 9 &`, `jobs`, `fg`).

On the host side the caller's terminal goes into raw mode while attached (no echo,
no line editing, no signals: every key, Ctrl-C included, becomes a byte for the
container's pty) and is restored afterwards, whatever happens. The window size goes
in with TIOCSWINSZ at start and on every SIGWINCH; the kernel passes it on to the
container's foreground process group as a SIGWINCH of its own. Docker's detach keys
(Ctrl-P Ctrl-Q) are looked for in the stream of keys: the runtime lets go of the
terminal and the container runs on (console.py then holds its master).

Without `-t` a command never gets a terminal of the caller's: it could change the
terminal's settings, read what is typed at it later, or - with CAP_SYS_ADMIN, or as
the terminal's session - push keys into it (TIOCSTI). Where the caller's stdio is a
terminal, the command gets a pipe instead, and a thread here copies (relay_pipes).
"""
from __future__ import annotations

import errno
import fcntl
import os
import re
import select
import selectors
import signal
import socket
import stat
import struct
import termios
import threading
import time
import tty
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

from .errors import InvalidArgument, MinicontainerError
from .syscalls import MS_BIND, mount

# <asm-generic/ioctls.h> (x86-64 and arm64 alike); termios lacks these three.
TIOCGPTN = 0x80045430     # _IOR('T', 0x30, unsigned int): the slave's number N
TIOCSPTLCK = 0x40045431   # _IOW('T', 0x31, int): lock or unlock the slave (unlockpt(3))
TIOCGPTPEER = 0x5441      # _IO('T', 0x41), Linux 4.13: open the slave from the master
PTMX = (5, 2)             # the device number of every devpts instance's ptmx

WINDOW = (24, 80)         # rows, columns: a terminal's size when no one says otherwise
CHUNK = 16 * 1024
MOST_WAITING = 64 * 1024  # typed ahead into a command that does not read: kept, at most


# -- in the container, between fork and exec ----------------------------------------------

class Pty:
    """A terminal made inside a container: open_inside() and take_as_controlling()
    are steps for process.spawn; master() then receives its master here."""

    def __init__(self, window: tuple[int, int] = WINDOW, console: bool = False) -> None:
        """A pty of `window` (rows, columns), shown at /dev/console too if `console`."""
        self.window = window
        self.console = console      # also show it at /dev/console (Docker's first process)
        self._here, self._there = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._slave = -1

    def open_inside(self) -> None:
        """A step: a pty from the container's devpts; the master goes out, the slave stays."""
        # Not /dev/ptmx: that is a symlink, which anyone inside may replace.
        master = os.open("/dev/pts/ptmx", os.O_RDWR | os.O_NOCTTY)
        info = os.fstat(master)
        if not stat.S_ISCHR(info.st_mode) or (os.major(info.st_rdev),
                                              os.minor(info.st_rdev)) != PTMX:
            raise OSError(errno.ENOTTY, "/dev/pts/ptmx is not a devpts multiplexer")
        fcntl.ioctl(master, TIOCSPTLCK, struct.pack("i", 0))
        self._slave = fcntl.ioctl(master, TIOCGPTPEER, os.O_RDWR | os.O_NOCTTY)
        set_window(self._slave, self.window)
        if self.console:
            number = struct.unpack("I", fcntl.ioctl(master, TIOCGPTN, bytes(4)))[0]
            Path("/dev/console").touch()
            mount(f"/dev/pts/{number}", "/dev/console", None, MS_BIND)
        socket.send_fds(self._there, [b"master"], [master])
        os.close(master)
        self._here.close()
        self._there.close()

    def take_as_controlling(self) -> None:
        """A step, the last before exec: lead a new session whose controlling terminal
        is the slave, and make the slave fds 0, 1 and 2."""
        if os.getsid(0) != os.getpid():     # a fork of a session leader leads nothing
            os.setsid()
        fcntl.ioctl(self._slave, termios.TIOCSCTTY, 0)
        for fd in (0, 1, 2):
            os.dup2(self._slave, fd)
        os.close(self._slave)

    def master(self) -> int:
        """Here, once the command runs: the master the container sent (ours to close)."""
        self._there.close()         # else recv would wait for ourselves, should none come
        try:
            _, fds, _, _ = socket.recv_fds(self._here, 16, 1, socket.MSG_CMSG_CLOEXEC)
        finally:
            self._here.close()
        if not fds:
            raise MinicontainerError("the container sent no terminal")
        return fds[0]

    def close(self) -> None:
        """Drop the socket (the container never started)."""
        self._here.close()
        self._there.close()


def check_tty(namespaces: Sequence[str] | set[str]) -> None:
    """A container's own terminal needs its own devpts, which needs a mount namespace."""
    if "mnt" not in namespaces:
        raise InvalidArgument("-t needs the mnt namespace (a /dev/pts of the container's own)")


# -- on the host --------------------------------------------------------------------------

def window_size(fd: int) -> tuple[int, int]:
    """The rows and columns of the terminal `fd` (TIOCGWINSZ); WINDOW if it is none."""
    try:
        rows, columns, _, _ = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ,
                                                                 bytes(8)))
    except OSError:
        return WINDOW
    return (rows, columns) if rows and columns else WINDOW


def set_window(fd: int, window: tuple[int, int]) -> None:
    """Tell the terminal `fd` its size; its foreground process group gets SIGWINCH."""
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", *window, 0, 0))


@contextmanager
def raw_mode(fd: int) -> Iterator[None]:
    """The terminal `fd` in raw mode inside the block; its settings as before after it,
    however the block ends (an exception, a signal's, included)."""
    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd, termios.TCSANOW)   # keys typed ahead are kept
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def parse_detach_keys(spec: str) -> bytes:
    """Docker's --detach-keys: "ctrl-p,ctrl-q" is b"\\x10\\x11"; a single character
    stands for itself; ctrl- goes with a-z, @, [, \\, ], ^ or _. "" detaches never."""
    keys = bytearray()
    for key in filter(None, spec.split(",")):
        name = key[5:] if key.startswith("ctrl-") and len(key) == 6 else None
        if name is not None and (name.isalpha() and name.isascii() or name in "@[\\]^_"):
            keys.append(ord(name.upper()) & 0x1F)
        elif len(key) == 1 and key.isascii() and key.isprintable():
            keys.append(ord(key))
        else:
            raise InvalidArgument(f"detach keys {spec!r}: {key!r} is neither a character "
                                  "nor ctrl-<a-z, @, [, \\, ], ^, _> (e.g. ctrl-p,ctrl-q)")
    return bytes(keys)


class DetachKeys:
    """Finds the detach keys in a stream of typed bytes: what was held back as a
    possible start of them is passed on once the next key shows it was not."""

    def __init__(self, keys: bytes) -> None:
        """Watch for `keys` (b"": none)."""
        self.keys = keys
        self.held = b""

    def feed(self, data: bytes) -> tuple[bytes, bool]:
        """The bytes to pass on, and whether the whole sequence has been typed."""
        out = bytearray()
        for byte in data:
            key = bytes([byte])
            if self.keys and self.keys.startswith(self.held + key):
                self.held += key
                if self.held == self.keys:
                    self.held = b""
                    return bytes(out), True
                continue
            out += self.held
            self.held = b""
            if self.keys and self.keys.startswith(key):
                self.held = key
            else:
                out += key
        return bytes(out), False


class Console(Protocol):
    """The far end of a container's terminal: its pty's master, or console.py's socket."""

    def fileno(self) -> int:
        """The fd to wait on."""

    def read(self) -> bytes | None:
        """The container's output; None: nothing yet; b"": its side is gone."""

    def write(self, data: bytes) -> int:
        """Type keys in; how many it took (0: full for now)."""

    def resize(self, window: tuple[int, int]) -> None:
        """Tell it the window's size (rows, columns)."""


class Master:
    """A pty's master as a Console, never blocking (the caller closes the fd)."""

    def __init__(self, fd: int) -> None:
        """Use the master `fd` (made non-blocking)."""
        self.fd = fd
        os.set_blocking(fd, False)    # a command that does not read must not stop us

    def fileno(self) -> int:
        """The fd to wait on."""
        return self.fd

    def read(self) -> bytes | None:
        """The container's output (b"": its side hung up; None: nothing yet)."""
        try:
            return os.read(self.fd, CHUNK)
        except BlockingIOError:
            return None
        except OSError as e:           # EIO: every slave fd is closed, the command is gone
            if e.errno == errno.EIO:
                return b""
            raise

    def write(self, data: bytes) -> int:
        """Type keys in; how many were taken (0: full for now)."""
        try:
            return os.write(self.fd, data)
        except BlockingIOError:
            return 0

    def resize(self, window: tuple[int, int]) -> None:
        """Set the terminal's window size (rows, columns)."""
        set_window(self.fd, window)


def attach(console: Console, keyboard: int | None, screen: int,
           detach_keys: bytes = b"", ended: int | None = None) -> bool:
    """Relay keys from `keyboard` to the console and its output to `screen` until the
    container's side ends (False) or the detach keys are typed (True). The console
    follows the size of `screen`'s terminal. `ended`, a pidfd, ends it too when its
    process does (whatever it left holding the terminal). Put the keyboard in
    raw_mode() first."""
    keys = DetachKeys(detach_keys)
    waiting = b""                     # typed, not yet taken by the container's pty
    woken, wake = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def resized(sig: int, frame) -> None:
        """SIGWINCH's handler: wake the loop (a signal handler does no more)."""
        try:
            os.write(wake, b"w")
        except BlockingIOError:
            pass                      # a wake-up is waiting already: one resize will do
    in_main_thread = threading.current_thread() is threading.main_thread()
    before = signal.signal(signal.SIGWINCH, resized) if in_main_thread else None
    selector = selectors.DefaultSelector()
    try:
        selector.register(woken, selectors.EVENT_READ)
        selector.register(console, selectors.EVENT_READ)
        if keyboard is not None:
            try:
                selector.register(keyboard, selectors.EVENT_READ)
            except PermissionError:     # a file or /dev/null: nothing to wait for, as
                keyboard = None         # at its end (epoll watches only what can block)
        if ended is not None:
            selector.register(ended, selectors.EVENT_READ)
        console.resize(window_size(screen))
        hung_up = False     # its side closed the terminal; with `ended`, it may run on
        while True:
            for key, events in selector.select():
                if key.fileobj is console and events & selectors.EVENT_READ:
                    data = console.read()
                    if data == b"" and ended is None:
                        return False
                    if data == b"":             # keys go nowhere now; detach keys still work
                        selector.unregister(console)
                        hung_up, waiting = True, b""
                        break
                    _write_all(screen, data or b"")
                elif key.fileobj == keyboard:
                    data = os.read(keyboard, CHUNK)
                    if not data:                    # no more keys; the output goes on
                        selector.unregister(keyboard)
                        continue
                    data, detached = keys.feed(data)
                    if detached:
                        return True
                    waiting = b"" if hung_up else (waiting + data)[:MOST_WAITING]
                elif key.fileobj == woken:
                    os.read(woken, 64)
                    if not hung_up:
                        console.resize(window_size(screen))
                elif key.fileobj == ended:
                    while not hung_up and (data := console.read()):   # what it wrote last
                        _write_all(screen, data)
                    return False
            if hung_up:
                continue
            if waiting:
                waiting = waiting[console.write(waiting):]
            selector.modify(console, selectors.EVENT_READ | (
                selectors.EVENT_WRITE if waiting else 0))
    finally:
        if in_main_thread:                    # only there may signal handlers be set
            signal.signal(signal.SIGWINCH, before)
        selector.close()
        os.close(woken)
        os.close(wake)


ESCAPES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\r")   # cursor moves and queries, carriage returns


def converse(master: int, keys: bytes | str = b"", settle: float = 0.5,
             timeout: float = 10) -> str:
    """Type `keys` into a terminal through its master and return what it shows until
    it has been quiet for `settle` seconds, without escape sequences (for lessons:
    a person at the keyboard, driven from Python)."""
    _write_all(master, keys.encode() if isinstance(keys, str) else keys)
    shown = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not select.select([master], [], [], settle)[0]:
            break
        try:
            chunk = os.read(master, CHUNK)
        except BlockingIOError:
            continue
        except OSError:             # EIO: the other side is gone
            break
        if not chunk:
            break
        shown += chunk
    return ESCAPES.sub("", shown.decode(errors="replace"))


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


# -- without -t: pipes, never the caller's terminal ------------------------------------

def stdio_for(interactive: bool) -> tuple[list[int], list[threading.Thread]]:
    """The command's fds 0, 1, 2 for a caller in the foreground: the caller's own where
    they are files or pipes, a pipe relayed by a thread where they are a terminal;
    stdin only with `interactive` (else /dev/null, as `docker run` without -i).
    Start the threads once the command runs; close the fds after spawn."""
    stdio: list[int] = []
    relays: list[threading.Thread] = []
    for fd in (0, 1, 2):
        if fd == 0 and not interactive:
            stdio.append(os.open(os.devnull, os.O_RDONLY))
        elif not os.isatty(fd):
            stdio.append(os.dup(fd))
        else:
            read_end, write_end = os.pipe()
            ours, theirs = (write_end, read_end) if fd == 0 else (read_end, write_end)
            source, target = (fd, ours) if fd == 0 else (ours, fd)
            stdio.append(theirs)
            relays.append(threading.Thread(target=_copy, args=(source, target, ours),
                                           daemon=True, name=f"relay-{fd}"))
    return stdio, relays


def _copy(source: int, target: int, ours: int) -> None:
    """Copy until end-of-file, then close our end of the pipe (the command sees EOF)."""
    try:
        while data := os.read(source, CHUNK):
            _write_all(target, data)
    except OSError:
        pass                 # the command closed its end (EPIPE), or our terminal went
    finally:
        os.close(ours)


def finish(relays: Sequence[threading.Thread], timeout: float = 5) -> None:
    """Let the output relays copy what is left (the keyboard's may wait forever)."""
    for relay in relays:
        if relay.name != "relay-0":
            relay.join(timeout)
